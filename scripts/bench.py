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
BENCH_ROUNDS (3), BENCH_CONNECTIONS (16), ENVOY_BIN; BENCH_ONLY=memory|mix|miss|hit|native|burst|dpop runs that part
alone and prints it (no results.json), for working on one figure; with BENCH_BASELINE_WASM=<a
filter .wasm> the hit, miss and burst parts also run that build side by side (before and after a change).

The pieces are in benchkit/: settings (environment, paths, keys), processes (Redis, the companion,
wrk), envoy (the scenarios' configs and the Envoy process), parts (each measurement), report
(ratios, targets, the table; tested by benchkit/test_report.py).
"""
import http.client
import json
import subprocess
import sys
import time

from benchkit.envoy import Envoy, jwt_tokens, main_scenarios, write_configs
from benchkit.parts import (alternating, burst, hit_path, issue_tokens, memory_per_verdict, miss_path, native_hit_path,
                            per_user_cost, realistic_mix, revocation_latency, verdict_memory_by_concurrency)
from benchkit.hostile import dpop_hit, forged_mixed, invalid_flood
from benchkit.processes import (envoy_stats, free_port, log, machine, median_of, mint_tokens, redis_benchmark,
                                start, wait_port, write_lines, wrk)
from benchkit.report import envoy_cpu_over_no_auth, print_table, ratios, targets
from benchkit.settings import (ADMIN_KEY, COMPANION, CONNECTIONS, HASH_KEY, INTERNAL_KEY, MINIMAL_WASM, MODULES_DIR,
                               NOOP_WASM, ONLY, ROOT, ROUNDS, SECONDS, SIGNING_KEY, WARMUP, WASM_DIR, WORK)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--configs":
        write_configs(sys.argv[2])
        return
    for path in [COMPANION, WASM_DIR / "multitokens_filter.wasm", WASM_DIR / "multitokens_filter_redis.wasm", NOOP_WASM, MINIMAL_WASM,
                 MODULES_DIR / "libmultitokens_filter.so", MODULES_DIR / "libnoop_module.so",
                 MODULES_DIR / "libminimal_auth_module.so"]:
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
                 "revocation": lambda: {build: revocation_latency(companion_port, stock, write_lines(
                     "revocation.txt", issue_tokens(companion_port, "load")), native=build == "native")
                     for build in ("wasm", "native")},
                 "burst": lambda: burst(companion_port, stock), "dpop": lambda: dpop_hit(companion_port, stock)}
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

    files = [("invalid_bad_checksum", bad_file), ("invalid_forged", forged_file), ("invalid_unknown", unknown_file)]
    flood_results = invalid_flood(flood, redis_port, files)
    scenarios["invalid_flood"] = {k: flood_results["invalid_forged"][k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
    scenarios["invalid_flood_unknown"] = {k: flood_results["invalid_unknown"][k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
    mixed_results = forged_mixed(mixed, tokens, valid_file)
    scenarios["forged_mixed"] = {k: mixed_results[k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
    scenarios["invalid_flood_bad_checksum"] = {k: flood_results["invalid_bad_checksum"][k] for k in ("rps", "p50_ms", "p99_ms", "errors")}

    memory = memory_per_verdict(companion_port, stock)
    by_concurrency = verdict_memory_by_concurrency(companion_port, stock, valid_file, len(tokens))
    bursts = burst(companion_port, stock)
    scenarios.update(bursts)
    mix = realistic_mix(companion_port, stock)
    for name, result in mix.items():
        scenarios[name] = {k: result[k] for k in ("rps", "p50_ms", "p99_ms", "errors", "envoy_cpu_us_per_req")}
    scenarios.update(dpop_hit(companion_port, stock))
    revocation = revocation_latency(companion_port, stock, valid_file)
    revocation_native = revocation_latency(companion_port, stock, valid_file, native=True)
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
    results = {
        "scenarios": s,
        "ratios": ratios(s),
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
        "revocation_native": revocation_native,
        "per_user_cost": per_user,
        "hit_path_native_ns": json.loads(micro) if micro.startswith("{") else None,
        "machine": machine(),
        "settings": {"seconds": SECONDS, "warmup": WARMUP, "rounds": ROUNDS, "connections": CONNECTIONS, "envoy_concurrency": 1},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    results["envoy_cpu_us_over_no_auth"] = envoy_cpu_over_no_auth(s)
    results["targets"] = targets(results, len(tokens))

    out = ROOT / "bench/results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
