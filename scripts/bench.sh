#!/usr/bin/env bash
# `make bench`: installs wrk when missing, builds the no-op fixture and the micro-benchmark, runs
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
cargo build --quiet --release --example hit_path --example mint_tokens
exec python3 scripts/bench.py
