#!/usr/bin/env bash
# `make bench`: installs wrk when missing, builds the no-op and minimal-auth fixtures and the
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
# PyJWT and cryptography sign the jwt_authn anchors' tokens
if ! PYTHONPATH=.tools/bench python3 -c "import jwt, cryptography" 2>/dev/null; then
  echo "bench: installing PyJWT and cryptography from PyPI into .tools/bench"
  rm -rf .tools/bench
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/bench "PyJWT==2.10.1" "cryptography==46.0.3"
fi
export PYTHONPATH="$root/.tools/bench${PYTHONPATH:+:$PYTHONPATH}"
cargo build --quiet --release --example hit_path --example mint_tokens
exec python3 scripts/bench.py
