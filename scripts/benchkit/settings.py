"""The benchmark's settings (environment), paths and keys, and its scratch folder."""
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
ONLY = os.environ.get("BENCH_ONLY", "")
BASELINE = os.environ.get("BENCH_BASELINE_WASM", "")
ENVOY = os.environ.get("ENVOY_BIN", str(ROOT / ".tools/bin/envoy"))
COMPANION = ROOT / "target/release/multitokens"
MINT = ROOT / "target/release/examples/mint_tokens"
WASM_DIR = ROOT / "target/wasm32-wasip1/wasm-release"
NATIVE_DIR = ROOT / "target/native"
NOOP_WASM = ROOT / "target/bench-noop/wasm32-wasip1/release/noop_filter.wasm"
# the filter's stats in Envoy, by mix scenario: the wasm filter's and the native module's names
STAT_PREFIX = {"mix_filter": "wasmcustom.multitokens.", "mix_native": "dynamicmodulescustom.multitokens."}
# bench.sh links the native module and the module fixtures (bench/noop-module, bench/minimal-auth-module)
# here: Envoy finds them all in its one module search path
MODULES_DIR = ROOT / "target/bench-modules"
MINIMAL_WASM = ROOT / "target/bench-minimal/wasm32-wasip1/release/minimal_auth_filter.wasm"
WRK_DIR = ROOT / "bench/wrk"
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
INTERNAL_KEY = "bench-internal-key-0123456789abcdef"
# the bench's keys, as every shipped stack has them: a hash key (tokens carry a MAC under it) and
# a record signing key (only the companion holds it)
HASH_KEY = "bench-hash-key-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"
SIGNING_KEY = "_BdNUo1RQweo72UX4siHEp3FtdzIjnYNd8U0XQcRGiE"

WORK = Path(tempfile.mkdtemp(prefix="multitokens-bench."))
PROCS = []
# the long-lived processes by name ("redis", "companion"): their CPU is measured beside Envoy's
NAMED = {}
