#!/usr/bin/env bash
# `make bench-instructions`: the instructions one cache hit costs the filter's decision
# (HttpFlow::on_request_headers and everything it calls, with the in-memory host), counted by
# valgrind's callgrind: exact and repeatable where timings on a shared machine move by several
# per cent between runs. Two runs of examples/hit_path.rs (`--hits`), 10,000 and 30,000 hits
# after the same 1,000 lookups; their difference over 20,000 is one hit. Prints one JSON line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if ! command -v valgrind >/dev/null 2>&1; then
  echo "bench-instructions: installing valgrind with apt-get" >&2
  if [ "$(id -u)" -ne 0 ]; then echo "bench-instructions: valgrind is missing: run 'sudo apt-get install valgrind'" >&2; exit 1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
fi
cargo build --quiet --release --example hit_path
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
count() {
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1" \
    --toggle-collect='multitokens_filter::flow::HttpFlow::on_request_headers' \
    target/release/examples/hit_path --hits "$1" >/dev/null 2>"$work/log.$1" || { cat "$work/log.$1" >&2; exit 1; }
  # the collected total: "summary: N" (or "totals: N") in callgrind's output file
  awk '/^(summary|totals):/ { print $2; exit }' "$work/cg.$1"
}
few="$(count 10000)"
many="$(count 30000)"
if [ -z "$few" ] || [ -z "$many" ]; then echo "bench-instructions: callgrind reported no count" >&2; exit 1; fi
echo "{\"hit_instructions\": $(( (many - few) / 20000 ))}"
