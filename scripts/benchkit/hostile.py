"""The parts of a run that send what an attacker or a careful client sends: invalid and forged
tokens flooding one Envoy, forged tokens mixed with valid traffic, DPoP-bound tokens with a fresh
proof per request."""
import os
import subprocess
import sys
import time
from .settings import ADMIN_KEY, ROOT, ROUNDS, SECONDS, WARMUP, WORK
from .processes import cpu_seconds, redis_commands, envoy_stats, http_json, log, median_of, mint_tokens, write_lines, wrk
from .envoy import Envoy, filter_config, jwt_filter, jwt_tokens, native_filter, wasm_filter


def invalid_flood(flood, redis_port, files):
    """Invalid tokens flooding one Envoy (`files`: (name, tokens file) pairs): bad checksums and
    forged tokens (a right checksum, a made-up MAC) must not reach the companion or Redis; genuine
    but unknown tokens (revoked, expired) are looked up once and remembered, in a bounded cache."""
    flood_results = {}
    for name, path in files:
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
    return flood_results


def forged_mixed(mixed, tokens, valid_file):
    """Forged tokens mixed with valid traffic (one forged, one valid, ...) from one client: the
    valid tokens keep their cache hits, the forged ones are refused without a lookup, nothing is
    throttled."""
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
    log(f"forged_mixed: {result['rps']:.0f} req/s, {mixed_results['valid_passed']} valid passed, "
        f"{mixed_results['forged_throttled']} throttled, {mixed_results['lookups']} lookups")
    return mixed_results


def dpop_client(*args):
    """Runs tests/clients/dpop_client.mjs (panva's dpop and jose): the output."""
    env = {**os.environ, "NODE_TOOLS": str(ROOT / ".tools/node/node_modules")}
    out = subprocess.run(["node", str(ROOT / "tests/clients/dpop_client.mjs"), *map(str, args)],
                         capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        sys.exit(f"bench: dpop_client {args[0]} failed: {out.stderr}")
    return out.stdout


def dpop_hit(companion_port, wasm):
    """DPoP-bound tokens with a fresh proof per request (BENCH_ONLY=dpop): 1,000 tokens bound to
    one key per scenario, every request with its own proof made by panva's `dpop`, verdicts
    cached (the cost is the proof's check): the wasm build with ES256 and with Ed25519 (the wasm
    builds take no RSA keys), the native module with RS256 (the algorithm `dpop_jwt_rs256` verifies: jwt_authn
    without its cache, one signature verification per request, as here) and with ES256. Proofs are
    made before each run for the Envoy's own URL, more than the run can send (a proof is accepted
    once); runs last at most 3 s, so that making them stays quick."""
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    seconds = min(SECONDS, 3)

    def bound_tokens(alg):
        keyfile = WORK / f"dpop-key-{alg}.json"
        jkt = dpop_client("key", alg, keyfile)
        tokens = []
        for i in range(1000):
            status, body = http_json(companion_port, "POST", "/v1/tokens",
                                     {"user": f"dpop-{alg}-{i % 100}", "device": f"d{i}", "dpop_jkt": jkt}, auth)
            if status != 201:
                sys.exit(f"bench: issuing bound tokens failed: {status} {body}")
            tokens.append(body["token"])
        return keyfile, write_lines(f"dpop-tokens-{alg}.txt", tokens)

    keys = {"dpop_hit": bound_tokens("ES256"), "dpop_hit_ed25519": bound_tokens("Ed25519"),
            "dpop_hit_native": bound_tokens("RS256")}
    keys["dpop_hit_native_es256"] = keys["dpop_hit"]
    rs_tokens, _, jwks = jwt_tokens(1000)
    rs_file = str(write_lines("dpop-jwt.txt", rs_tokens))
    config = filter_config(10000, dpop={"max_remembered": 2_000_000})
    envoys = {
        "dpop_hit": Envoy("dpop_hit", wasm_filter("multitokens", wasm, config), companion_port),
        "dpop_hit_ed25519": Envoy("dpop_hit_ed25519", wasm_filter("multitokens", wasm, config), companion_port),
        "dpop_hit_native": Envoy("dpop_hit_native", native_filter(config), companion_port),
        "dpop_hit_native_es256": Envoy("dpop_hit_native_es256", native_filter(config), companion_port),
        "dpop_jwt_rs256": Envoy("dpop_jwt_rs256", jwt_filter(jwks, cached=False), companion_port),
    }
    for e in envoys.values():
        e.ready()
    time.sleep(2.5)

    def proofs(name, e, run_seconds, rps):
        keyfile, tokens_file = keys[name]
        out = WORK / f"dpop-proofs-{e.port}.txt"
        dpop_client("bench", keyfile, f"http://127.0.0.1:{e.port}/api/bench", tokens_file, int(rps * run_seconds * 1.3) + 500, out)
        return {"PROOFS_FILE": str(out)}

    runs = {name: [] for name in envoys}
    for r in range(ROUNDS):
        for name, e in envoys.items():
            if name == "dpop_jwt_rs256":
                env, script = {"TOKENS_FILE": rs_file}, "tokens.lua"
                wrk(e.port, 1, script, env)
            else:
                script = "dpop.lua"
                warm = wrk(e.port, 1, script, proofs(name, e, 1, 25000))
                env = proofs(name, e, seconds, warm["rps"])
            cpu_before = cpu_seconds(e.proc.pid)
            result = wrk(e.port, seconds, script, env)
            result["envoy_cpu_us_per_req"] = (cpu_seconds(e.proc.pid) - cpu_before) * 1e6 / max(result["requests"], 1)
            runs[name].append(result)
            log(f"round {r + 1}/{ROUNDS} {name}: {result['rps']:.0f} req/s, {result['status_errors']} refused")
    for e in envoys.values():
        e.proc.terminate()
    return {name: median_of(rs) for name, rs in runs.items()}
