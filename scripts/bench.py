#!/usr/bin/env python3
"""`make bench`: the multitokens filter against the floor and against what users would pick instead.

One run on this machine, side by side: real Envoy 1.40 (`--concurrency 1`, loopback) answering
with a direct response behind (a) no auth filter, (b) a no-op wasm filter, (c) the multitokens
filter served from its cache, (d) the filter with the cache off, (e) Envoy's own ext_authz calling
the companion (HTTP/1.1, HTTP/2 and gRPC); Envoy's jwt_authn and a minimal wasm authentication
fixture; a flood of invalid tokens; page-load bursts; the realistic mix; memory per cached
verdict; revocation latency under load (two workers, until every worker refuses); and the
companion alone against redis-benchmark. The
Envoy scenarios run in alternating rounds and report medians. Writes bench/results.json.

Settings (environment): BENCH_SECONDS (measured seconds per run, default 10), BENCH_WARMUP (2),
BENCH_ROUNDS (3), BENCH_CONNECTIONS (16), ENVOY_BIN; BENCH_ONLY=memory|mix|miss|hit|burst runs that part
alone and prints it (no results.json), for working on one figure; with BENCH_BASELINE_WASM=<a
filter .wasm> the hit, miss and burst parts also run that build side by side (before and after a change).
"""

import atexit
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
# bench.sh links the native module and the no-op module fixture (bench/noop-module) here: Envoy
# finds both in its one module search path
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


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            p.terminate()
    for p in PROCS:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


atexit.register(stop_all)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: {what} did not start on port {port} (logs in {WORK})")


def start(name, argv, env=None):
    out = open(WORK / f"{name}.log", "w")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT)
    PROCS.append(p)
    return p


def mint_tokens(count, bad_checksum=False, forged=False):
    """Well-formed tokens no store knows, minted by the core's own code (examples/mint_tokens.rs):
    genuine ones under the bench's hash key (as revoked or expired tokens are), or forged ones
    (a right checksum, a made-up MAC), or with a broken checksum."""
    argv = [str(MINT), str(count)] + (["--bad-checksum"] if bad_checksum else []) + (["--forged"] if forged else [])
    env = {**os.environ, "MULTITOKENS_HASH_KEY": HASH_KEY}
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.split()


def write_lines(name, lines):
    path = WORK / name
    path.write_text("\n".join(lines) + "\n")
    return path


def http_json(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    data = json.dumps(body) if body is not None else None
    conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
    r = conn.getresponse()
    text = r.read()
    conn.close()
    return r.status, (json.loads(text) if text else None)


def envoy_stats(admin_port, prefix=""):
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    conn.request("GET", "/stats?filter=" + prefix)
    text = conn.getresponse().read().decode()
    conn.close()
    stats = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            try:
                stats[k] = int(v)
            except ValueError:
                pass
    return stats


def redis_commands(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "stats"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":")[1])
    return 0


# ---------- Envoy configurations ----------

def wasm_filter(name, wasm, configuration=None):
    config = ""
    if configuration is not None:
        value = json.dumps(configuration)
        config = f"""
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{value}'"""
    return f"""
          - name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}
                fail_open: false
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}{config}"""


def native_filter(configuration, module="multitokens_filter", filter_name="multitokens"):
    """The native dynamic module (`make module`) with the wasm filter's plugin JSON."""
    value = json.dumps(configuration)
    return f"""
          - name: {filter_name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{ name: {module} }}
              filter_name: {filter_name}
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{value}'"""


def jwt_tokens(count):
    """`count` distinct RS256 and HS256 tokens (PyJWT), and the local JWKS of both keys."""
    import base64
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()
    b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    secret = os.urandom(32)
    jwks = {"keys": [
        {"kty": "RSA", "alg": "RS256", "kid": "rs", "use": "sig", "n": b64(numbers.n), "e": b64(numbers.e)},
        {"kty": "oct", "alg": "HS256", "kid": "hs", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()},
    ]}
    now = int(time.time())
    claims = lambda i: {"iss": "bench", "sub": f"user-{i % 100}", "iat": now, "exp": now + 3600, "jti": str(i)}
    rs = [jwt.encode(claims(i), key, algorithm="RS256", headers={"kid": "rs"}) for i in range(count)]
    hs = [jwt.encode(claims(i), secret, algorithm="HS256", headers={"kid": "hs"}) for i in range(count)]
    return rs, hs, json.dumps(jwks)


def jwt_filter(jwks, cached):
    """Envoy's own jwt_authn with a local JWKS, the subject forwarded as a header; `cached`: its
    JWT cache on (verified tokens remembered), else every token verified (the default)."""
    cache = "\n                  jwt_cache_config: { jwt_cache_size: 2000 }" if cached else ""
    return f"""
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: bench
                  local_jwks: {{ inline_string: '{jwks}' }}
                  forward: false
                  claim_to_headers: [{{ header_name: x-user, claim_name: sub }}]{cache}
              rules:
              - match: {{ prefix: "/" }}
                requires: {{ provider_name: bench }}"""


def ext_authz_filter(service=None):
    """Envoy's own ext_authz asking the companion: over HTTP (`/v1/ext_authz`), or with
    `service="grpc"` over gRPC (envoy.service.auth.v3.Authorization, HTTP/2)."""
    if service == "grpc":
        service = """grpc_service:
                envoy_grpc: { cluster_name: multitokens_companion }
                timeout: 0.5s"""
    else:
        service = """http_service:
                server_uri: { uri: "http://multitokens_companion", cluster: multitokens_companion, timeout: 0.5s }
                path_prefix: /v1/ext_authz
                authorization_request:
                  allowed_headers:
                    patterns: [{ exact: authorization, ignore_case: true }]
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{ prefix: x-multitokens- }]"""
    return f"""
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              {service}"""


def envoy_config(listen, admin, filters, companion_port, http2=False):
    # gRPC to the companion needs HTTP/2 (cleartext, on its API port); callouts may use it too
    http2 = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }""" if http2 or "grpc_service" in filters else ""
    return f"""
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
          common_http_protocol_options: {{ headers_with_underscores_action: REJECT_REQUEST }}
          route_config:
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: multitokens_companion
    type: STATIC
    connect_timeout: 0.25s{http2}
    load_assignment:
      cluster_name: multitokens_companion
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {companion_port} }} }} }}
"""


def filter_config(cache_entries, **extra):
    return {
        "companion": {"cluster": "multitokens_companion", "api_key": INTERNAL_KEY, "timeout_ms": 1000},
        "hash_key": HASH_KEY,
        "accept_legacy_tokens": False,
        "cache": {"max_entries": cache_entries, "ttl_ms": 600000, "negative_ttl_ms": 60000},
        "revocation_poll_ms": 1000,
        **extra,
    }


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Envoy:
    def __init__(self, name, filters, companion_port, concurrency=1, http2=False):
        self.name = name
        self.port, self.admin = free_port(), free_port()
        path = WORK / f"envoy-{name}.yaml"
        path.write_text(envoy_config(self.port, self.admin, filters, companion_port, http2))
        self.proc = start(f"envoy-{name}", [ENVOY, "-c", str(path), "--concurrency", str(concurrency), "--disable-hot-restart", "--log-level", "warn"],
                          {"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(MODULES_DIR)})

    def ready(self):
        wait_port(self.port, f"envoy ({self.name})")


# ---------- load ----------

def wrk(port, seconds, script="tokens.lua", env=None):
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "2s", "--latency", "-s", str(WRK_DIR / script), f"http://127.0.0.1:{port}"]
    env = {**os.environ, "BENCH_WRK_DIR": str(WRK_DIR), **(env or {})}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"bench: wrk failed: {out.stdout}{out.stderr}")
    r = json.loads(lines[-1])
    secs = max(r["duration_us"], 1) / 1e6
    return {
        "rps": r["requests"] / secs,
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "requests": r["requests"],
        "socket_errors": r["socket_errors"],
        "status_errors": r["status_errors"],
    }


def median_of(runs):
    out = {
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
        "errors": sum(r["socket_errors"] + r["status_errors"] for r in runs),
        "rounds": len(runs),
    }
    if all("envoy_cpu_us_per_req" in r for r in runs):
        out["envoy_cpu_us_per_req"] = round(statistics.median(r["envoy_cpu_us_per_req"] for r in runs), 2)
    return out


def redis_benchmark(port):
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get,set", "-n", str(40000 * SECONDS // 10 or 40000),
         "-c", str(CONNECTIONS), "--csv"],
        capture_output=True, text=True, timeout=300).stdout
    rows = [l.replace('"', "").split(",") for l in out.splitlines() if l.strip()]
    header, results = rows[0], {}
    for row in rows[1:]:
        rec = dict(zip(header, row))
        name = rec.get("test", "").lower()
        results[f"redis_{name}"] = {
            "rps": round(float(rec["rps"]), 1),
            "p50_ms": float(rec.get("p50_latency_ms", "nan")),
            "p99_ms": float(rec.get("p99_latency_ms", "nan")),
            "errors": 0,
        }
    return results


def machine():
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    envoy = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip().split("version: ")[-1]
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(), "envoy": envoy}


def main_scenarios(stock, jwks):
    """The Envoy scenarios of the main run: name -> (HTTP filters, HTTP/2 to the companion)."""
    return {
        "no_auth": ("", False),
        "noop_wasm": (wasm_filter("noop", NOOP_WASM), False),
        # the floor of any native module: a dynamic module whose hooks do nothing
        "noop_native": (native_filter({}, module="noop_module", filter_name="noop"), False),
        "filter_hit": (wasm_filter("multitokens", stock, filter_config(10000)), False),
        "filter_hit_lean": (wasm_filter("multitokens", stock, filter_config(
            10000, device_header=None, scopes_header=None, token_id_header=None)), False),
        "filter_miss": (wasm_filter("multitokens", stock, filter_config(0)), False),
        # the same filter logic as a native Envoy dynamic module (one cache per process)
        "native_hit": (native_filter(filter_config(10000)), False),
        "native_hit_lean": (native_filter(filter_config(
            10000, device_header=None, scopes_header=None, token_id_header=None)), False),
        "native_miss": (native_filter(filter_config(0)), False),
        "ext_authz": (ext_authz_filter(), False),
        "ext_authz_grpc": (ext_authz_filter("grpc"), False),
        # the miss path with HTTP/2 to the companion, for both (one connection, multiplexed)
        "filter_miss_h2": (wasm_filter("multitokens", stock, filter_config(0)), True),
        "native_miss_h2": (native_filter(filter_config(0)), True),
        "ext_authz_h2": (ext_authz_filter(), True),
        "minimal_auth_wasm": (wasm_filter("minimal_auth", MINIMAL_WASM), False),
        "jwt_rs256": (jwt_filter(jwks, cached=False), False),
        "jwt_rs256_cached": (jwt_filter(jwks, cached=True), False),
        "jwt_hs256": (jwt_filter(jwks, cached=False), False),
        "jwt_hs256_cached": (jwt_filter(jwks, cached=True), False),
        "invalid_flood": (wasm_filter("multitokens", stock, filter_config(10000)), False),
        # the shipped defaults: throttling on, negatives bounded apart from positives
        "forged_mixed": (wasm_filter("multitokens", stock, filter_config(
            10000, throttle={"max_failures": 20, "window_ms": 60000})), False),
    }


def write_configs(directory):
    """`bench.py --configs DIR`: writes the Envoy config of every main-run scenario whose files
    exist here (the fixtures and the JWT anchors' keys are made by `make bench` only), for
    `envoy --mode validate` (tests/configs.rs)."""
    directory = Path(directory)
    stock = WASM_DIR / "multitokens_filter.wasm"
    for name, (filters, http2) in main_scenarios(stock, jwks=None).items():
        if name.startswith("jwt_") or name == "noop_native" or (
                name in ("noop_wasm", "minimal_auth_wasm") and not (NOOP_WASM.exists() and MINIMAL_WASM.exists())):
            continue
        (directory / f"{name}.yaml").write_text(envoy_config(10000, 10001, filters, 10002, http2))
        print(name)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--configs":
        write_configs(sys.argv[2])
        return
    for path in [COMPANION, WASM_DIR / "multitokens_filter.wasm", WASM_DIR / "multitokens_filter_redis.wasm", NOOP_WASM, MINIMAL_WASM,
                 MODULES_DIR / "libmultitokens_filter.so", MODULES_DIR / "libnoop_module.so"]:
        if not path.exists():
            sys.exit(f"bench: {path} is missing (make bench builds it)")
    log(f"work dir {WORK}; {SECONDS}s runs, {WARMUP}s warm-up, {ROUNDS} rounds, {CONNECTIONS} connections")

    redis_port, companion_port = free_port(), free_port()
    start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(WORK), "--save", "", "--appendonly", "no"])
    wait_port(redis_port, "redis-server")
    start("companion", [str(COMPANION), "serve", "--listen", f"127.0.0.1:{companion_port}"], {
        "MULTITOKENS_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "MULTITOKENS_ADMIN_KEY": ADMIN_KEY,
        "MULTITOKENS_INTERNAL_KEY": INTERNAL_KEY,
        "MULTITOKENS_HASH_KEY": HASH_KEY,
        "MULTITOKENS_SIGNING_KEY": SIGNING_KEY,
        "MULTITOKENS_LOG": "warn",
    })
    wait_port(companion_port, "the companion")
    stock = WASM_DIR / "multitokens_filter.wasm"
    if ONLY:
        parts = {"memory": lambda: memory_per_verdict(companion_port, stock), "mix": lambda: realistic_mix(companion_port, stock),
                 "miss": lambda: miss_path(companion_port, stock), "hit": lambda: hit_path(companion_port, stock),
                 "native": lambda: native_hit_path(companion_port),
                 "burst": lambda: burst(companion_port, stock)}
        if ONLY not in parts:
            sys.exit(f"bench: BENCH_ONLY must be one of {', '.join(parts)}")
        print(json.dumps(parts[ONLY](), indent=2))
        return

    # 1,000 valid tokens of 100 users, issued by the companion
    tokens = issue_tokens(companion_port, "user")
    valid_file = write_lines("valid.txt", tokens)
    bad_file = write_lines("bad-checksum.txt", mint_tokens(50000, bad_checksum=True))
    forged_file = write_lines("forged.txt", mint_tokens(50000, forged=True))
    unknown_file = write_lines("unknown.txt", mint_tokens(50000))

    stock = WASM_DIR / "multitokens_filter.wasm"
    rs_tokens, hs_tokens, jwks = jwt_tokens(1000)
    token_files = {
        "jwt_rs256": write_lines("jwt-rs256.txt", rs_tokens),
        "jwt_rs256_cached": write_lines("jwt-rs256.txt", rs_tokens),
        "jwt_hs256": write_lines("jwt-hs256.txt", hs_tokens),
        "jwt_hs256_cached": write_lines("jwt-hs256.txt", hs_tokens),
    }
    scenarios = main_scenarios(stock, jwks)
    envoys = {name: Envoy(name, filters, companion_port, http2=http2)
              for name, (filters, http2) in scenarios.items() if name not in ("invalid_flood", "forged_mixed")}
    flood = Envoy("invalid_flood", scenarios["invalid_flood"][0], companion_port)
    mixed = Envoy("forged_mixed", scenarios["forged_mixed"][0], companion_port)
    for e in list(envoys.values()) + [flood, mixed]:
        e.ready()
    time.sleep(2.5)  # filters follow the revocation feed

    # sanity: every scenario authenticates as expected before it is measured
    first_token = {name: path.read_text().split("\n", 1)[0] for name, path in token_files.items()}
    for name, e in envoys.items():
        conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=5)
        conn.request("GET", "/api/bench", headers={"authorization": f"Bearer {first_token.get(name, tokens[0])}"})
        status = conn.getresponse().status
        conn.close()
        if status != 200:
            sys.exit(f"bench: {name} answered {status} to a valid token (logs in {WORK})")
        if name in ("filter_hit", "filter_hit_lean", "filter_miss", "filter_miss_h2", "native_hit", "native_hit_lean", "native_miss",
                    "native_miss_h2") or name.startswith(("jwt_", "ext_authz")):
            conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=5)
            conn.request("GET", "/api/bench", headers={"authorization": f"Bearer {mint_tokens(1)[0]}"})
            if conn.getresponse().status != 401:
                sys.exit(f"bench: {name} let an unknown token in")
            conn.close()

    scenarios = alternating(envoys, lambda name: {"TOKENS_FILE": str(token_files.get(name, valid_file))}, keep=True)
    time.sleep(1.2)  # the filter hands its counts to Envoy on its 1 s tick
    hit_stats = envoy_stats(envoys["filter_hit"].admin, "multitokens")
    scenarios["filter_hit"]["cache_hits"] = hit_stats.get("wasmcustom.multitokens.cache_hit", 0)
    scenarios["filter_hit"]["cache_misses"] = hit_stats.get("wasmcustom.multitokens.cache_miss", 0)

    # invalid flood: bad checksums and forged tokens (a right checksum, a made-up MAC) must not
    # reach the companion or Redis; genuine but unknown tokens (revoked, expired) are looked up
    # once and remembered, in a bounded cache
    flood_results = {}
    for name, path in [("invalid_bad_checksum", bad_file), ("invalid_forged", forged_file), ("invalid_unknown", unknown_file)]:
        before_stats = envoy_stats(flood.admin)
        before_redis = redis_commands(redis_port)
        wrk(flood.port, WARMUP, env={"TOKENS_FILE": str(path)})
        started = time.time()
        result = wrk(flood.port, SECONDS, env={"TOKENS_FILE": str(path)})
        elapsed = time.time() - started + WARMUP
        time.sleep(1.2)  # the filter hands its counts to Envoy on its 1 s tick
        after_stats = envoy_stats(flood.admin)
        after_redis = redis_commands(redis_port)
        delta = lambda k: after_stats.get(k, 0) - before_stats.get(k, 0)
        lookups = delta("wasmcustom.multitokens.cache_miss")
        feed_polls = delta("cluster.multitokens_companion.upstream_rq_total") - lookups
        flood_results[name] = {
            "rps": round(result["rps"], 1),
            "p50_ms": round(result["p50_ms"], 3),
            "p99_ms": round(result["p99_ms"], 3),
            # every answer must be 401: anything else (5xx, 200) or a socket error is an error;
            # the companion's other requests in that time are the filter's feed polls
            "errors": result["socket_errors"] + delta("http.bench.downstream_rq_5xx") + delta("http.bench.downstream_rq_2xx"),
            "denied_401": delta("http.bench.downstream_rq_4xx"),
            "lookups": lookups,
            "companion_requests": delta("cluster.multitokens_companion.upstream_rq_total"),
            "feed_polls": feed_polls,
            "redis_commands": after_redis - before_redis,
            "seconds": round(elapsed, 1),
        }
        log(f"{name}: {result['rps']:.0f} req/s, lookups {lookups}, Redis commands {after_redis - before_redis}")
    time.sleep(1.5)  # let the filter's tick record its gauges
    gauges = envoy_stats(flood.admin, "multitokens")
    flood_results["cache_entries_after"] = gauges.get("wasmcustom.multitokens.cache_entries", -1)
    flood_results["vm_memory_bytes_after"] = gauges.get("wasmcustom.multitokens.vm_memory_bytes", -1)
    scenarios["invalid_flood"] = {k: flood_results["invalid_forged"][k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
    scenarios["invalid_flood_unknown"] = {k: flood_results["invalid_unknown"][k] for k in ("rps", "p50_ms", "p99_ms", "errors")}

    # forged tokens mixed with valid traffic (one forged, one valid, ...) from one client: the
    # valid tokens keep their cache hits, the forged ones are refused without a lookup, nothing is
    # throttled
    mixed_file = write_lines("mixed.txt", [t for pair in zip(tokens, mint_tokens(len(tokens), forged=True)) for t in pair])
    wrk(mixed.port, WARMUP, env={"TOKENS_FILE": str(valid_file)})  # warm the cache with the valid tokens
    time.sleep(1.2)
    before = envoy_stats(mixed.admin)
    result = wrk(mixed.port, SECONDS, env={"TOKENS_FILE": str(mixed_file)})
    time.sleep(1.2)
    after = envoy_stats(mixed.admin)
    d = lambda k: after.get(k, 0) - before.get(k, 0)
    mixed_results = {
        "rps": round(result["rps"], 1), "p50_ms": round(result["p50_ms"], 3), "p99_ms": round(result["p99_ms"], 3),
        "errors": result["socket_errors"] + d("http.bench.downstream_rq_5xx"),
        "valid_passed": d("http.bench.downstream_rq_2xx"),
        "forged_refused": d("wasmcustom.multitokens.denied_forged") + d("wasmcustom.multitokens.denied_invalid"),
        "forged_throttled": d("wasmcustom.multitokens.denied_throttled"),
        "cache_hits": d("wasmcustom.multitokens.cache_hit"),
        "lookups": d("wasmcustom.multitokens.cache_miss"),
        "seconds": SECONDS,
    }
    mixed_results["lookups_per_second"] = round(mixed_results["lookups"] / max(SECONDS, 1), 1)
    scenarios["forged_mixed"] = {k: mixed_results[k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
    log(f"forged_mixed: {result['rps']:.0f} req/s, {mixed_results['valid_passed']} valid passed, "
        f"{mixed_results['forged_throttled']} throttled, {mixed_results['lookups']} lookups")
    scenarios["invalid_flood_bad_checksum"] = {k: flood_results["invalid_bad_checksum"][k] for k in ("rps", "p50_ms", "p99_ms", "errors")}

    memory = memory_per_verdict(companion_port, stock)
    by_concurrency = verdict_memory_by_concurrency(companion_port, stock, valid_file, len(tokens))
    bursts = burst(companion_port, stock)
    scenarios.update(bursts)
    mix = realistic_mix(companion_port, stock)
    scenarios["mix_filter"] = {k: mix["mix_filter"][k] for k in ("rps", "p50_ms", "p99_ms", "errors", "envoy_cpu_us_per_req")}
    scenarios["mix_native"] = {k: mix["mix_native"][k] for k in ("rps", "p50_ms", "p99_ms", "errors", "envoy_cpu_us_per_req")}
    scenarios["mix_ext_authz"] = {k: mix["mix_ext_authz"][k] for k in ("rps", "p50_ms", "p99_ms", "errors", "envoy_cpu_us_per_req")}
    revocation = revocation_latency(companion_port, stock, valid_file)
    per_user = per_user_cost(redis_port)

    # the companion alone, and Redis as its floor
    wrk(companion_port, WARMUP, "companion.lua", {"BENCH_MODE": "issue", "ADMIN_KEY": ADMIN_KEY})
    r = wrk(companion_port, SECONDS, "companion.lua", {"BENCH_MODE": "issue", "ADMIN_KEY": ADMIN_KEY})
    scenarios["companion_issue"] = median_of([r])
    r = wrk(companion_port, SECONDS, "companion.lua", {"BENCH_MODE": "introspect", "ADMIN_KEY": ADMIN_KEY, "TOKENS_FILE": str(valid_file)})
    scenarios["companion_introspect"] = median_of([r])
    scenarios.update(redis_benchmark(redis_port))

    hit_memory = envoy_stats(envoys["filter_hit"].admin, "multitokens").get("wasmcustom.multitokens.vm_memory_bytes", -1)
    micro = subprocess.run([str(ROOT / "target/release/examples/hit_path")], capture_output=True, text=True).stdout.strip()
    s = scenarios
    ratio = lambda a, b: round(s[a]["rps"] / s[b]["rps"], 3) if s[b]["rps"] else None
    results = {
        "scenarios": s,
        "ratios": {
            "filter_hit_vs_noop_wasm": ratio("filter_hit", "noop_wasm"),
            "native_hit_vs_jwt_rs256_cached": ratio("native_hit", "jwt_rs256_cached"),
            "native_hit_vs_jwt_rs256": ratio("native_hit", "jwt_rs256"),
            "native_hit_vs_no_auth": ratio("native_hit", "no_auth"),
            "native_hit_vs_filter_hit": ratio("native_hit", "filter_hit"),
            "native_miss_vs_ext_authz": ratio("native_miss", "ext_authz"),
            "native_miss_vs_filter_miss": ratio("native_miss", "filter_miss"),
            "native_hit_vs_noop_native": ratio("native_hit", "noop_native"),
            "noop_native_vs_no_auth": ratio("noop_native", "no_auth"),
            "native_miss_best_vs_ext_authz_best": round(max(s[k]["rps"] for k in ("native_miss", "native_miss_h2"))
                                                        / max(s[k]["rps"] for k in ("ext_authz", "ext_authz_h2", "ext_authz_grpc")), 3),
            "mix_native_vs_mix_ext_authz": ratio("mix_native", "mix_ext_authz"),
            "filter_hit_vs_minimal_auth_wasm": ratio("filter_hit", "minimal_auth_wasm"),
            "filter_hit_vs_jwt_rs256": ratio("filter_hit", "jwt_rs256"),
            "filter_hit_vs_jwt_rs256_cached": ratio("filter_hit", "jwt_rs256_cached"),
            "filter_hit_vs_jwt_hs256": ratio("filter_hit", "jwt_hs256"),
            "filter_hit_vs_jwt_hs256_cached": ratio("filter_hit", "jwt_hs256_cached"),
            "minimal_auth_wasm_vs_jwt_rs256": ratio("minimal_auth_wasm", "jwt_rs256"),
            "minimal_auth_wasm_vs_jwt_rs256_cached": ratio("minimal_auth_wasm", "jwt_rs256_cached"),
            "filter_hit_lean_vs_noop_wasm": ratio("filter_hit_lean", "noop_wasm"),
            "noop_wasm_vs_ext_authz": ratio("noop_wasm", "ext_authz"),
            "filter_hit_vs_no_auth": ratio("filter_hit", "no_auth"),
            "filter_hit_vs_ext_authz": ratio("filter_hit", "ext_authz"),
            "filter_miss_vs_ext_authz": ratio("filter_miss", "ext_authz"),
            "filter_miss_vs_ext_authz_grpc": ratio("filter_miss", "ext_authz_grpc"),
            "ext_authz_grpc_vs_ext_authz": ratio("ext_authz_grpc", "ext_authz"),
            "mix_filter_vs_mix_ext_authz": ratio("mix_filter", "mix_ext_authz"),
            "filter_miss_h2_vs_ext_authz_h2": ratio("filter_miss_h2", "ext_authz_h2"),
            "filter_miss_h2_vs_filter_miss": ratio("filter_miss_h2", "filter_miss"),
            "ext_authz_h2_vs_ext_authz": ratio("ext_authz_h2", "ext_authz"),
            "filter_miss_best_vs_ext_authz_best": round(max(s[k]["rps"] for k in ("filter_miss", "filter_miss_h2"))
                                                        / max(s[k]["rps"] for k in ("ext_authz", "ext_authz_h2", "ext_authz_grpc")), 3),
            "burst_filter_vs_burst_ext_authz": ratio("burst_filter", "burst_ext_authz"),
            "filter_hit_lean_vs_minimal_auth_wasm": ratio("filter_hit_lean", "minimal_auth_wasm"),
            "noop_wasm_vs_no_auth": ratio("noop_wasm", "no_auth"),
            "invalid_flood_vs_filter_hit": ratio("invalid_flood", "filter_hit"),
            "invalid_flood_vs_invalid_flood_bad_checksum": ratio("invalid_flood", "invalid_flood_bad_checksum"),
            "filter_hit_vs_minimal_auth_wasm": ratio("filter_hit", "minimal_auth_wasm"),
            "companion_introspect_vs_redis_get": ratio("companion_introspect", "redis_get"),
            "companion_issue_vs_redis_set": ratio("companion_issue", "redis_set"),
        },
        "wasm_bytes": {
            "stock": (WASM_DIR / "multitokens_filter.wasm").stat().st_size,
            "redis": (WASM_DIR / "multitokens_filter_redis.wasm").stat().st_size,
            "noop": NOOP_WASM.stat().st_size,
            "minimal_auth": MINIMAL_WASM.stat().st_size,
        },
        "filter_vm_bytes_per_cached_verdict": memory,
        "verdict_memory_by_concurrency": by_concurrency,
        "mix": mix,
        "filter_vm_memory_bytes": {"filter_hit": hit_memory, "after_invalid_flood": flood_results["vm_memory_bytes_after"]},
        "invalid_flood": flood_results,
        "forged_mixed": mixed_results,
        "revocation": revocation,
        "per_user_cost": per_user,
        "hit_path_native_ns": json.loads(micro) if micro.startswith("{") else None,
        "machine": machine(),
        "settings": {"seconds": SECONDS, "warmup": WARMUP, "rounds": ROUNDS, "connections": CONNECTIONS, "envoy_concurrency": 1},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    rt = results["ratios"]
    cpu = lambda name: s[name]["envoy_cpu_us_per_req"]
    results["envoy_cpu_us_over_no_auth"] = {name: round(cpu(name) - cpu("no_auth"), 1)
                                            for name in ("noop_native", "native_hit", "noop_wasm", "filter_hit", "jwt_rs256_cached")}
    results["targets"] = {
        # the native module (issue 23)
        "native_hit_at_least_1.10x_jwt_rs256_cached": rt["native_hit_vs_jwt_rs256_cached"] >= 1.10,
        "native_hit_at_least_0.82x_no_auth": rt["native_hit_vs_no_auth"] >= 0.82,
        "native_hit_envoy_cpu_at_most_9_us_over_no_auth": results["envoy_cpu_us_over_no_auth"]["native_hit"] <= 9,
        "native_miss_at_least_1.2x_ext_authz_best_transport_each": rt["native_miss_best_vs_ext_authz_best"] >= 1.2,
        "mix_native_at_least_3x_ext_authz_on_the_same_mix": rt["mix_native_vs_mix_ext_authz"] >= 3.0,
        "native_verdict_memory_concurrency_4_at_most_1.1x_concurrency_1": (by_concurrency["native"]["ratio"] or 99) <= 1.1,
        "envoy_cpu_per_request_filter_hit_at_most_3_percent_over_minimal_auth_wasm":
            s["filter_hit"]["envoy_cpu_us_per_req"] <= 1.03 * s["minimal_auth_wasm"]["envoy_cpu_us_per_req"],
        "filter_hit_at_least_1.55x_jwt_rs256": rt["filter_hit_vs_jwt_rs256"] is not None and rt["filter_hit_vs_jwt_rs256"] >= 1.55,
        "filter_hit_at_least_0.83x_jwt_rs256_cached": rt["filter_hit_vs_jwt_rs256_cached"] is not None and rt["filter_hit_vs_jwt_rs256_cached"] >= 0.83,
        "mix_at_least_2.5x_ext_authz_on_the_same_mix": rt["mix_filter_vs_mix_ext_authz"] is not None and rt["mix_filter_vs_mix_ext_authz"] >= 2.5,
        "revocation_p99_under_the_mix_at_most_50_ms": mix["mix_filter"]["revoke_p99_ms"] is not None and mix["mix_filter"]["revoke_p99_ms"] <= 50,
        "at_most_200_bytes_per_cached_verdict": all(v <= 200 for v in memory.values() if v is not None),
        "filter_hit_at_least_0.95_of_noop_wasm": rt["filter_hit_vs_noop_wasm"] is not None and rt["filter_hit_vs_noop_wasm"] >= 0.95,
        "filter_hit_at_least_3x_ext_authz": rt["filter_hit_vs_ext_authz"] is not None and rt["filter_hit_vs_ext_authz"] >= 3,
        "filter_miss_at_least_ext_authz": rt["filter_miss_vs_ext_authz"] is not None and rt["filter_miss_vs_ext_authz"] >= 1,
        "filter_miss_best_transport_at_least_ext_authz_best": rt["filter_miss_best_vs_ext_authz_best"] >= 1,
        # page loads: one lookup per burst and worker
        "burst_one_lookup_per_burst": s["burst_filter"]["lookups_per_request"] <= 1.5 / s["burst_filter"]["repeat"],
        "stock_build_under_250_kb": results["wasm_bytes"]["stock"] < 250_000,
        "bad_checksums_never_reach_redis": flood_results["invalid_bad_checksum"]["lookups"] == 0,
        "forged_tokens_never_reach_redis": flood_results["invalid_forged"]["lookups"] == 0,
        "invalid_flood_at_least_0.9x_bad_checksum": rt["invalid_flood_vs_invalid_flood_bad_checksum"] is not None
                                                    and rt["invalid_flood_vs_invalid_flood_bad_checksum"] >= 0.9,
        "memory_bounded_during_flood": 0 <= flood_results["cache_entries_after"] <= 10000,
        # forged tokens cost no lookup: only the valid tokens' own misses
        "forged_flood_lookups_bounded": mixed_results["lookups"] <= len(tokens),
        "valid_tokens_never_throttled": mixed_results["forged_throttled"] == 0,
        "revoked_token_never_accepted_after_the_revoke_returned": revocation["accepted_after_return"] == 0,
        "revocation_p99_at_most_50_ms": revocation["p99_ms"] <= 50,
        # a user at the documented maximum makes a login cost a bounded amount (a few ms per 100 tokens)
        "issue_at_100_tokens_under_5_ms": per_user["100"]["issue_p50_ms"] < 5,
        "valid_tokens_keep_passing_in_the_flood": mixed_results["valid_passed"] >= 0.45 * (mixed_results["valid_passed"] + mixed_results["forged_refused"] + mixed_results["forged_throttled"]),
    }

    out = ROOT / "bench/results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {out.relative_to(ROOT)}")


def realistic_mix(companion_port, wasm):
    """The realistic mix, on the filter and on HTTP ext_authz alike (two Envoy workers each):
    10,000 live tokens of 1,000 users; of every 100 requests 98 on those (cached after first use),
    1 on a token never used before, 1 forged; 10 revocations a second meanwhile (admin revoke by
    id, timed until it returns: for the filter that is when every worker has applied it)."""
    import threading
    import urllib.parse

    auth = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    issuer = http.client.HTTPConnection("127.0.0.1", companion_port, timeout=10)

    def issue(count, prefix):
        out = []
        for i in range(count):
            issuer.request("POST", "/v1/tokens", json.dumps({"user": f"{prefix}-{i % 1000}", "device": f"d{i}"}), auth)
            body = json.loads(issuer.getresponse().read())
            out.append((body["token"], body["user"], body["id"]))
        return out

    hot = issue(10000, "mix")
    fresh = issue(6000, "fresh")
    hot_file = write_lines("mix-hot.txt", [t for t, _, _ in hot])
    new_file = write_lines("mix-new.txt", [t for t, _, _ in fresh])
    bad_file = write_lines("mix-bad.txt", mint_tokens(10000))
    order = list(range(len(hot)))
    results = {}
    mixes = [("mix_filter", wasm_filter("multitokens", wasm, filter_config(20000))),
             ("mix_native", native_filter(filter_config(20000))), ("mix_ext_authz", ext_authz_filter())]
    for name, filters in mixes:
        e = Envoy(name, filters, companion_port, concurrency=2)
        e.ready()
        time.sleep(2.5)  # the filter follows the revocation feed
        # the hot tokens are cached before measuring: on both workers for the wasm filter (a
        # connection lands on one worker, so the rotation runs until both hold nearly all of them),
        # once for the native module (one cache per process); ext_authz caches nothing
        stat = STAT_PREFIX.get(name, "")
        caches = 2 if name == "mix_filter" else 1
        warmed = 0
        for _ in range(8):
            wrk(e.port, max(WARMUP, 3), env={"TOKENS_FILE": str(hot_file)})
            if not stat:
                break
            time.sleep(1.2)  # the tick hands the gauge over
            warmed = envoy_stats(e.admin, "multitokens").get(f"{stat}cache_entries", 0)
            if warmed >= 0.98 * caches * len(hot):
                break
        log(f"{name}: warmed, {warmed} verdicts cached")
        before = envoy_stats(e.admin)
        stop = threading.Event()
        latencies = []

        def revoker():
            conn = http.client.HTTPConnection("127.0.0.1", companion_port, timeout=10)
            while not stop.is_set() and order:
                started = time.time()
                _, user, tid = hot[order.pop()]
                conn.request("DELETE", f"/v1/users/{urllib.parse.quote(user)}/tokens/{tid}", headers=auth)
                conn.getresponse().read()
                latencies.append((time.time() - started) * 1000)
                time.sleep(max(0.0, 0.1 - (time.time() - started)))

        thread = threading.Thread(target=revoker)
        thread.start()
        env = {"HOT_FILE": str(hot_file), "NEW_FILE": str(new_file), "BAD_FILE": str(bad_file)}
        cpu_before = cpu_seconds(e.proc.pid)
        result = wrk(e.port, SECONDS, "mix.lua", env)
        cpu = cpu_seconds(e.proc.pid) - cpu_before
        stop.set()
        thread.join()
        time.sleep(1.2)
        after = envoy_stats(e.admin)
        d = lambda k: after.get(k, 0) - before.get(k, 0)
        latencies.sort()
        pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None
        results[name] = {
            "rps": round(result["rps"], 1), "p50_ms": round(result["p50_ms"], 3), "p99_ms": round(result["p99_ms"], 3),
            "errors": result["socket_errors"] + d("http.bench.downstream_rq_5xx"),
            "allowed": d("http.bench.downstream_rq_2xx"), "refused": d("http.bench.downstream_rq_4xx"),
            "envoy_cpu_us_per_req": round(cpu * 1e6 / max(result["requests"], 1), 1),
            "revocations": len(latencies), "revoke_p50_ms": pick(0.5), "revoke_p99_ms": pick(0.99), "revoke_max_ms": pick(1.0),
            "lookups": d(f"{stat}cache_miss") - d(f"{stat}lookup_shared"),
            "cached_before": warmed,
        }
        log(f"{name}: {result['rps']:.0f} req/s, p99 {result['p99_ms']:.2f} ms, {len(latencies)} revocations, revoke p99 {pick(0.99)} ms")
        e.proc.terminate()
    return results


def side_by_side(envoys, env, companion_port, baseline_config, keep=False):
    """With BENCH_BASELINE_WASM, adds that build (configured with `baseline_config`) as
    `<first scenario>_baseline`; waits until every Envoy is up and follows the feed; then
    `alternating`."""
    if BASELINE:
        name = f"{next(iter(envoys))}_baseline"
        envoys[name] = Envoy(name, wasm_filter("multitokens", BASELINE, baseline_config), companion_port)
    for e in envoys.values():
        e.ready()
    time.sleep(2.5)
    return alternating(envoys, env, keep)


def issue_tokens(companion_port, prefix, count=1000):
    """`count` tokens of 100 users named `<prefix>-<n>`, issued by the companion."""
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    tokens = []
    for i in range(count):
        status, body = http_json(companion_port, "POST", "/v1/tokens", {"user": f"{prefix}-{i % 100}", "device": f"d{i}"}, auth)
        if status != 201:
            sys.exit(f"bench: issuing failed: {status} {body}")
        tokens.append(body["token"])
    return tokens


def alternating(envoys, env_of, keep=False):
    """Each Envoy under its load (`env`: the wrk settings, or a function of the scenario's name
    giving them) in alternating rounds; medians with Envoy CPU per request. The Envoys are
    stopped after, unless `keep`."""
    runs = {name: [] for name in envoys}
    for r in range(ROUNDS):
        for name, e in envoys.items():
            env = env_of(name) if callable(env_of) else env_of
            wrk(e.port, WARMUP, env=env)
            cpu_before = cpu_seconds(e.proc.pid)
            result = wrk(e.port, SECONDS, env=env)
            result["envoy_cpu_us_per_req"] = (cpu_seconds(e.proc.pid) - cpu_before) * 1e6 / max(result["requests"], 1)
            runs[name].append(result)
            log(f"round {r + 1}/{ROUNDS} {name}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms")
    for e in envoys.values():
        if not keep:
            e.proc.terminate()
    return {name: median_of(rs) for name, rs in runs.items()}


def hit_path(companion_port, wasm):
    """The cache-hit path alone (BENCH_ONLY=hit): the filter against the minimal wasm
    authentication fixture and the no-op fixture on the same 1,000 tokens."""
    tokens = issue_tokens(companion_port, "hit")
    env = {"TOKENS_FILE": str(write_lines("hit.txt", tokens))}
    envoys = {
        "filter_hit": Envoy("filter_hit", wasm_filter("multitokens", wasm, filter_config(10000)), companion_port),
        "minimal_auth_wasm": Envoy("minimal_auth_wasm", wasm_filter("minimal_auth", MINIMAL_WASM), companion_port),
        "noop_wasm": Envoy("noop_wasm", wasm_filter("noop", NOOP_WASM), companion_port),
        "native_hit": Envoy("native_hit", native_filter(filter_config(10000)), companion_port),
        "native_hit_lean": Envoy("native_hit_lean", native_filter(filter_config(
            10000, device_header=None, scopes_header=None, token_id_header=None)), companion_port),
        "noop_native": Envoy("noop_native", native_filter({}, module="noop_module", filter_name="noop"), companion_port),
        "no_auth": Envoy("no_auth", "", companion_port),
    }
    return side_by_side(envoys, env, companion_port, filter_config(10000))


def native_hit_path(companion_port):
    """The native module's cache hits alone (BENCH_ONLY=native): beside its floor (the no-op
    module), cached `jwt_authn` and no filter at all, on the same connections and load."""
    tokens = issue_tokens(companion_port, "native")
    rs_tokens, _, jwks = jwt_tokens(1000)
    files = {"jwt_rs256_cached": str(write_lines("native-jwt.txt", rs_tokens))}
    envoys = {
        "native_hit": Envoy("native_hit", native_filter(filter_config(10000)), companion_port),
        "native_hit_lean": Envoy("native_hit_lean", native_filter(filter_config(
            10000, device_header=None, scopes_header=None, token_id_header=None)), companion_port),
        "noop_native": Envoy("noop_native", native_filter({}, module="noop_module", filter_name="noop"), companion_port),
        "jwt_rs256_cached": Envoy("jwt_rs256_cached", jwt_filter(jwks, cached=True), companion_port),
        "no_auth": Envoy("no_auth", "", companion_port),
    }
    valid = str(write_lines("native.txt", tokens))
    for e in envoys.values():
        e.ready()
    time.sleep(2.5)
    return alternating(envoys, lambda name: {"TOKENS_FILE": files.get(name, valid)})


def burst(companion_port, wasm, repeat=16):
    """Page loads (BENCH_ONLY=burst): each token sent `repeat` times in a row over the 16
    connections, 1,000 tokens whose cached verdicts last 1 s, so a token's burst comes back after
    its verdict expired: every burst starts with a miss. The filter sends one lookup per burst and
    worker (the rest wait for it, or hit); ext_authz asks for every request."""
    tokens = issue_tokens(companion_port, "burst")
    env = {"TOKENS_FILE": str(write_lines("burst.txt", tokens)), "BENCH_REPEAT": str(repeat)}
    config = filter_config(10000)
    config["cache"]["ttl_ms"] = 1000
    envoys = {
        "burst_filter": Envoy("burst_filter", wasm_filter("multitokens", wasm, config), companion_port),
        "burst_ext_authz": Envoy("burst_ext_authz", ext_authz_filter(), companion_port),
    }
    envoys["burst_filter"].ready()
    before = envoy_stats(envoys["burst_filter"].admin, "multitokens")
    out = side_by_side(envoys, env, companion_port, config, keep=True)
    time.sleep(1.5)  # the tick hands the counts to Envoy
    after = envoy_stats(envoys["burst_filter"].admin, "multitokens")
    for e in envoys.values():
        e.proc.terminate()
    d = lambda k: after.get(f"wasmcustom.multitokens.{k}", 0) - before.get(f"wasmcustom.multitokens.{k}", 0)
    requests = d("allowed") + d("denied_invalid")
    out["burst_filter"]["lookups_per_request"] = round((d("cache_miss") - d("lookup_shared")) / max(requests, 1), 4)
    out["burst_filter"]["shared_per_request"] = round(d("lookup_shared") / max(requests, 1), 4)
    out["burst_filter"]["repeat"] = repeat
    log(f"burst: {out['burst_filter']['lookups_per_request']} lookups per request, {out['burst_filter']['shared_per_request']} shared")
    return out


def miss_path(companion_port, wasm):
    """The cache-miss path alone (BENCH_ONLY=miss): the filter with its cache off against both
    ext_authz transports on the same 1,000 tokens, in alternating rounds, medians."""
    tokens = issue_tokens(companion_port, "miss")
    env = {"TOKENS_FILE": str(write_lines("miss.txt", tokens))}
    envoys = {
        "filter_miss": Envoy("filter_miss", wasm_filter("multitokens", wasm, filter_config(0)), companion_port),
        "filter_miss_h2": Envoy("filter_miss_h2", wasm_filter("multitokens", wasm, filter_config(0)), companion_port, http2=True),
        "native_miss": Envoy("native_miss", native_filter(filter_config(0)), companion_port),
        "native_miss_h2": Envoy("native_miss_h2", native_filter(filter_config(0)), companion_port, http2=True),
        "ext_authz": Envoy("ext_authz", ext_authz_filter(), companion_port),
        "ext_authz_h2": Envoy("ext_authz_h2", ext_authz_filter(), companion_port, http2=True),
        "ext_authz_grpc": Envoy("ext_authz_grpc", ext_authz_filter("grpc"), companion_port),
    }
    return side_by_side(envoys, env, companion_port, filter_config(0))


def memory_per_verdict(companion_port, wasm, levels=(10000, 50000)):
    """The filter VM's memory per cached verdict: one worker, the cache sized for 60,000 of each
    kind; each token sent once, the `vm_memory_bytes` and `cache_entries` gauges read before and
    after. Positive (issued tokens) and negative (unknown tokens) verdicts apart."""
    e = Envoy("memory", wasm_filter("multitokens", wasm, filter_config(60000, cache={
        "max_entries": 60000, "ttl_ms": 3600000, "negative_ttl_ms": 3600000, "max_negative_entries": 60000})), companion_port)
    e.ready()
    time.sleep(2.5)
    auth = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    issuer = http.client.HTTPConnection("127.0.0.1", companion_port, timeout=10)
    valid = []
    for i in range(max(levels)):
        issuer.request("POST", "/v1/tokens", json.dumps({"user": f"mem-{i % 5000}", "device": f"d{i}"}), auth)
        r = issuer.getresponse()
        body = json.loads(r.read())
        valid.append(body["token"])
    unknown = mint_tokens(max(levels))
    out = {}
    for kind, pool in (("positive", valid), ("negative", unknown)):
        conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
        sent = 0
        # growth from before the first token of this kind: wasm memory grows in 64 KiB pages and
        # the tables double, so a step between two levels alone says little
        time.sleep(1.5)
        before = envoy_stats(e.admin, "multitokens")
        for level in levels:
            for token in pool[sent:level]:
                conn.request("GET", "/api/bench", headers={"authorization": f"Bearer {token}"})
                conn.getresponse().read()
            sent = level
            time.sleep(1.5)  # the tick hands the gauges to Envoy
            after = envoy_stats(e.admin, "multitokens")
            grew = after.get("wasmcustom.multitokens.cache_entries", 0) - before.get("wasmcustom.multitokens.cache_entries", 0)
            memory = after.get("wasmcustom.multitokens.vm_memory_bytes", 0) - before.get("wasmcustom.multitokens.vm_memory_bytes", 0)
            out[f"{kind}_at_{level}"] = round(memory / grew) if grew > 0 else None
            log(f"memory: {kind} verdicts up to {level}: {grew} more entries, {memory} more bytes")
    e.proc.terminate()
    return out


def verdict_memory_by_concurrency(companion_port, wasm, tokens_file, count):
    """Cached verdicts at `--concurrency 1` and `4` for the same `count` tokens, for the wasm
    filter (one cache per worker VM) and the native module (one per process): each Envoy serves
    the tokens over 16 connections until every worker has seen them all, then the
    `cache_entries` gauge (summed over VMs) is read. Every verdict costs the same bytes in one
    build, so the ratio of entries is the ratio of verdict memory."""
    out = {}
    for build, filters, stat in [("filter", wasm_filter("multitokens", wasm, filter_config(10000)), "wasmcustom.multitokens."),
                                 ("native", native_filter(filter_config(10000)), "dynamicmodulescustom.multitokens.")]:
        entries = {}
        for concurrency in (1, 4):
            e = Envoy(f"memory-{build}-{concurrency}", filters, companion_port, concurrency=concurrency)
            e.ready()
            time.sleep(2.5)
            cached = 0
            for _ in range(4):
                wrk(e.port, max(WARMUP, 2), env={"TOKENS_FILE": str(tokens_file)})
                time.sleep(1.2)  # the tick hands the gauge over
                now = envoy_stats(e.admin, "multitokens").get(f"{stat}cache_entries", 0)
                if now >= concurrency * count or now == cached:
                    cached = now
                    break
                cached = now
            entries[concurrency] = cached
            e.proc.terminate()
        out[build] = {"entries_concurrency_1": entries[1], "entries_concurrency_4": entries[4],
                      "ratio": round(entries[4] / entries[1], 3) if entries[1] else None}
        log(f"verdict memory ({build}): {entries[1]} verdicts at --concurrency 1, {entries[4]} at 4")
    return out


def status_on_fresh_connection(port, token):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/api/bench", headers={"authorization": f"Bearer {token}"})
    status = conn.getresponse().status
    conn.close()
    return status


def revocation_latency(companion_port, wasm, load_tokens, samples=60):
    """Revocation latency under load: a two-worker Envoy serves cached tokens at full speed while
    each sample revokes one token cached on both workers. The revoke returns once every worker
    applied it, so its duration is the latency until every worker refuses; probes on fresh
    connections right after it returned must all be refused."""
    envoy = Envoy("revocation", wasm_filter("multitokens", wasm, filter_config(10000)), companion_port, concurrency=2)
    envoy.ready()
    time.sleep(2.5)
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    victims = [http_json(companion_port, "POST", "/v1/tokens", {"user": f"revoked-{i}"}, auth)[1]["token"] for i in range(samples)]
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", "-d600s", "-s", str(WRK_DIR / "tokens.lua"), f"http://127.0.0.1:{envoy.port}"]
    load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "BENCH_WRK_DIR": str(WRK_DIR), "TOKENS_FILE": str(load_tokens)})
    time.sleep(WARMUP)
    latencies, accepted_after, pending = [], 0, 0
    try:
        for token in victims:
            for _ in range(8):
                if status_on_fresh_connection(envoy.port, token) != 200:
                    sys.exit("bench: a victim token was not accepted before its revocation")
            started = time.perf_counter()
            status, body = http_json(companion_port, "DELETE", "/v1/tokens/current", headers={"authorization": f"Bearer {token}"})
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                sys.exit(f"bench: revoke failed: {status} {body}")
            pending += body["edges"]["pending"]
            accepted_after += sum(status_on_fresh_connection(envoy.port, token) == 200 for _ in range(8))
    finally:
        load.terminate()
        load.wait()
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)
    result = {"samples": len(latencies), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(latencies[-1], 2),
              "accepted_after_return": accepted_after, "pending_edges": pending, "envoy_workers": 2}
    log(f"revocation under load: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms, "
        f"{accepted_after} accepted after the revoke returned")
    return result


def per_user_cost(redis_port, levels=(1, 100, 10000), samples=20):
    """Issue and revoke-all latency for one user holding 1, 100 and 10,000 live tokens (the
    documented maximum of max_tokens_per_user), with the shipped policy (reset TTL on login).
    The tokens are put in place by a companion with the TTL reset off, so filling is linear."""
    fill_port, measure_port = free_port(), free_port()
    common = {"MULTITOKENS_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "MULTITOKENS_ADMIN_KEY": ADMIN_KEY,
              "MULTITOKENS_LOG": "warn", "MULTITOKENS_MAX_TOKENS_PER_USER": "10000",
              "MULTITOKENS_HASH_KEY": HASH_KEY, "MULTITOKENS_SIGNING_KEY": SIGNING_KEY}
    start("companion-fill", [str(COMPANION), "serve", "--listen", f"127.0.0.1:{fill_port}"],
          {**common, "MULTITOKENS_RESET_TTL_ON_LOGIN": "false"})
    start("companion-measure", [str(COMPANION), "serve", "--listen", f"127.0.0.1:{measure_port}"], common)
    wait_port(fill_port, "the fill companion")
    wait_port(measure_port, "the measuring companion")
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    out = {}
    for n in levels:
        user = f"heavy-{n}"
        for i in range(n - 1):
            status, body = http_json(fill_port, "POST", "/v1/tokens", {"user": user, "device": f"d{i}"}, auth)
            if status != 201:
                sys.exit(f"bench: filling failed: {status} {body}")
        issue = []
        for i in range(samples):
            started = time.perf_counter()
            status, body = http_json(measure_port, "POST", "/v1/tokens", {"user": user, "device": f"m{i}"}, auth)
            issue.append((time.perf_counter() - started) * 1000)
            if status != 201:
                sys.exit(f"bench: issue failed: {status} {body}")
        started = time.perf_counter()
        status, body = http_json(measure_port, "DELETE", f"/v1/users/{user}/tokens", headers=auth)
        revoke_all = (time.perf_counter() - started) * 1000
        issue.sort()
        out[str(n)] = {"issue_p50_ms": round(issue[len(issue) // 2], 2), "issue_max_ms": round(issue[-1], 2),
                       "revoke_all_ms": round(revoke_all, 2), "revoked": body["revoked"] if body else None}
        log(f"one user with {n} tokens: issue p50 {out[str(n)]['issue_p50_ms']} ms, revoke-all of "
            f"{out[str(n)]['revoked']} in {out[str(n)]['revoke_all_ms']} ms")
    return out


def print_table(results):
    s, base, noop = results["scenarios"], results["scenarios"]["no_auth"]["rps"], results["scenarios"]["noop_wasm"]["rps"]
    print(f"\n{'scenario':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs no_auth':>12}{'vs noop_wasm':>14}{'envoy us/req':>14}")
    for name, r in s.items():
        envoy = "envoy_cpu_us_per_req" in r or name in ("invalid_flood", "invalid_flood_unknown", "invalid_flood_bad_checksum", "forged_mixed")
        vs_base = f"{r['rps'] / base:.3f}" if envoy and base else "-"
        vs_noop = f"{r['rps'] / noop:.3f}" if envoy and noop else "-"
        cpu = f"{r['envoy_cpu_us_per_req']:.1f}" if "envoy_cpu_us_per_req" in r else "-"
        print(f"{name:<28}{r['rps']:>10.0f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['errors']:>8}{vs_base:>12}{vs_noop:>14}{cpu:>14}")
    print()
    for k, v in results["ratios"].items():
        print(f"  {k:<38} {v}")
    w = results["wasm_bytes"]
    print(f"  wasm bytes: stock {w['stock']}, redis {w['redis']} (no-op fixture {w['noop']}, minimal auth fixture {w['minimal_auth']})")
    print(f"  filter VM bytes per cached verdict: {results['filter_vm_bytes_per_cached_verdict']}")
    for build, c in results["verdict_memory_by_concurrency"].items():
        print(f"  {build} cached verdicts, same tokens: {c['entries_concurrency_1']} at --concurrency 1, "
              f"{c['entries_concurrency_4']} at 4 ({c['ratio']}x)")
    print(f"  Envoy CPU us per request over no_auth: {results['envoy_cpu_us_over_no_auth']}")
    m = results["filter_vm_memory_bytes"]
    f = results["invalid_flood"]
    print(f"  filter VM memory: {m['filter_hit']} B after filter_hit, {m['after_invalid_flood']} B after the invalid flood "
          f"({f['cache_entries_after']} cached verdicts)")
    for key, what in (("invalid_bad_checksum", "bad-checksum"), ("invalid_forged", "forged (right checksum, made-up MAC)")):
        b = f[key]
        print(f"  {what} flood: {b['lookups']} token lookups; Redis saw {b['redis_commands']} commands in {b['seconds']} s, "
              f"all from the filters' {b['feed_polls']} revocation-feed polls")
    x = results["forged_mixed"]
    print(f"  forged flood mixed with valid traffic: {x['valid_passed']} valid passed, {x['forged_refused']} forged refused, "
          f"{x['forged_throttled']} throttled (429), {x['lookups']} lookups in {x['seconds']} s")
    v = results["revocation"]
    print(f"  revocation under load ({v['envoy_workers']} workers): p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms, max {v['max_ms']} ms "
          f"until every worker refuses; {v['accepted_after_return']} accepted after the revoke returned")
    for n, c in results["per_user_cost"].items():
        print(f"  one user with {n} tokens: issue p50 {c['issue_p50_ms']} ms (max {c['issue_max_ms']}), revoke-all of {c['revoked']} in {c['revoke_all_ms']} ms")
    if results["hit_path_native_ns"]:
        print(f"  native hit path: {results['hit_path_native_ns']}")
    for k, v in results["targets"].items():
        print(f"  target {k}: {'met' if v else 'MISSED'}")


if __name__ == "__main__":
    main()
