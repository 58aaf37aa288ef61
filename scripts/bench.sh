#!/usr/bin/env bash
# `make bench`: installs wrk when missing, builds the no-op (wasm and native) and minimal-auth fixtures and the
# micro-benchmark, installs PyJWT (the jwt_authn anchors' tokens), runs
# scripts/bench.py (the companion and both filter builds are built by the Makefile first).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk with apt-get"
  if [ "$(id -u)" -ne 0 ]; then echo "bench: wrk is missing: run 'sudo apt-get install wrk'" >&2; exit 1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
fi
cargo build --quiet --manifest-path bench/noop-filter/Cargo.toml --target wasm32-wasip1 --release --target-dir target/bench-noop
cargo build --quiet --manifest-path bench/minimal-auth-filter/Cargo.toml --target wasm32-wasip1 --release --target-dir target/bench-minimal
cargo build --quiet --manifest-path bench/noop-module/Cargo.toml --release --target-dir target/bench-noop-module
# Envoy has one module search path: the native module and the no-op module side by side
mkdir -p target/bench-modules
ln -sf "$root/target/native/libmultitokens_filter.so" target/bench-modules/libmultitokens_filter.so
ln -sf "$root/target/bench-noop-module/release/libnoop_module.so" target/bench-modules/libnoop_module.so
cargo build --quiet --manifest-path bench/minimal-auth-module/Cargo.toml --release --target-dir target/bench-minimal-auth-module
ln -sf "$root/target/bench-minimal-auth-module/release/libminimal_auth_module.so" target/bench-modules/libminimal_auth_module.so
# PyJWT and cryptography sign the jwt_authn anchors' tokens
if ! PYTHONPATH=.tools/bench python3 -c "import jwt, cryptography" 2>/dev/null; then
  echo "bench: installing PyJWT and cryptography from PyPI into .tools/bench"
  rm -rf .tools/bench
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/bench "PyJWT==2.10.1" "cryptography==46.0.3"
fi
export PYTHONPATH="$root/.tools/bench${PYTHONPATH:+:$PYTHONPATH}"
cargo build --quiet --release --example hit_path --example mint_tokens
exec python3 scripts/bench.py
