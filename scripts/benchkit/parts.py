"""The parts of a run beyond the main side-by-side rounds: the mix, bursts, the miss and hit paths
alone, memory, revocation latency, the cost of one user's many tokens."""
import http.client
import json
import os
import subprocess
import sys
import time
from .settings import NAMED, ADMIN_KEY, BASELINE, COMPANION, CONNECTIONS, HASH_KEY, MINIMAL_WASM, NOOP_WASM, ROUNDS, SECONDS, SIGNING_KEY, STAT_PREFIX, WARMUP, WRK_DIR
from .processes import cpu_seconds, envoy_stats, free_port, http_json, log, median_of, mint_tokens, start, wait_port, write_lines, wrk
from .envoy import MINIMAL_NATIVE, Envoy, ext_authz_filter, filter_config, jwt_filter, jwt_tokens, native_filter, wasm_filter


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
    # device activity is on by default (5 min); `*_activity_off` is the same filter without it
    off = filter_config(20000, activity_interval_ms=0)
    mixes = [("mix_filter", wasm_filter("multitokens", wasm, filter_config(20000))),
             ("mix_filter_activity_off", wasm_filter("multitokens", wasm, off)),
             ("mix_native", native_filter(filter_config(20000))),
             ("mix_native_activity_off", native_filter(off)), ("mix_ext_authz", ext_authz_filter())]
    for name, filters in mixes:
        e = Envoy(name, filters, companion_port, concurrency=2)
        e.ready()
        time.sleep(2.5)  # the filter follows the revocation feed
        # the hot tokens are cached before measuring: on both workers for the wasm filter (a
        # connection lands on one worker, so the rotation runs until both hold nearly all of them),
        # once for the native module (one cache per process); ext_authz caches nothing
        stat = STAT_PREFIX.get(name.removesuffix("_activity_off"), "")
        caches = 2 if name.startswith("mix_filter") else 1
        warmed = 0
        for _ in range(8):
            wrk(e.port, max(WARMUP, 3), env={"TOKENS_FILE": str(hot_file)})
            if not stat:
                break
            time.sleep(1.2)  # the tick hands the gauge over
            warmed = envoy_stats(e.admin, "multitokens").get(f"{stat}cache_entries", 0)
            if warmed >= 0.98 * caches * len(hot):
                break
        # device activity: each hot token's first use is reported, at most 1,024 a second per worker
        # (the rest are reported on a later use); keep the load on until that backlog is sent, as
        # a gateway is after its first seconds, and measure from there
        backlog = envoy_stats(e.admin, "multitokens").get(f"{stat}activity_reported", 0) if stat else 0
        for _ in range(12):
            if not stat:
                break
            wrk(e.port, 3, env={"TOKENS_FILE": str(hot_file)})
            time.sleep(1.2)
            now = envoy_stats(e.admin, "multitokens").get(f"{stat}activity_reported", 0)
            if now - backlog < 30:
                break
            backlog = now
        log(f"{name}: warmed, {warmed} verdicts cached, {backlog} activity reports sent")
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
            "activity_reported": d(f"{stat}activity_reported"),
            "activity_reported_before": backlog,
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
            others = {n: p.pid for n, p in NAMED.items() if n in ("companion", "redis") and p.poll() is None}
            before = {n: cpu_seconds(pid) for n, pid in {"envoy": e.proc.pid, **others}.items()}
            result = wrk(e.port, SECONDS, env=env)
            for n, pid in {"envoy": e.proc.pid, **others}.items():
                result[f"{n}_cpu_us_per_req"] = (cpu_seconds(pid) - before[n]) * 1e6 / max(result["requests"], 1)
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
        "minimal_auth_native": Envoy("minimal_auth_native", MINIMAL_NATIVE, companion_port),
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
        "minimal_auth_native": Envoy("minimal_auth_native", MINIMAL_NATIVE, companion_port),
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


def unbatched():
    """The miss path's filter config with every lookup sent on its own."""
    config = filter_config(0)
    config["companion"] = {**config["companion"], "max_lookups_in_flight": 0}
    return config


def miss_path(companion_port, wasm):
    """The cache-miss path alone (BENCH_ONLY=miss): the filter with its cache off against both
    ext_authz transports on the same 1,000 tokens, in alternating rounds, medians (with the
    companion's and Redis's CPU per request beside Envoy's)."""
    tokens = issue_tokens(companion_port, "miss")
    env = {"TOKENS_FILE": str(write_lines("miss.txt", tokens))}
    envoys = {
        "filter_miss": Envoy("filter_miss", wasm_filter("multitokens", wasm, filter_config(0)), companion_port),
        "filter_miss_h2": Envoy("filter_miss_h2", wasm_filter("multitokens", wasm, filter_config(0)), companion_port, http2=True),
        "native_miss": Envoy("native_miss", native_filter(filter_config(0)), companion_port),
        "native_miss_h2": Envoy("native_miss_h2", native_filter(filter_config(0)), companion_port, http2=True),
        # every lookup on its own (`max_lookups_in_flight` 0): what the batches save
        "native_miss_unbatched": Envoy("native_miss_unbatched", native_filter(unbatched()), companion_port),
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


def revocation_latency(companion_port, wasm, load_tokens, samples=60, native=False):
    """Revocation latency under load: a two-worker Envoy (the wasm filter, or with `native` the
    module) serves cached tokens at full speed while each sample revokes one token cached on both
    workers. The revoke returns once every worker (for the module: the process) applied it, so its
    duration is the latency until every worker refuses; probes on fresh connections right after it
    returned must all be refused."""
    filters = native_filter(filter_config(10000)) if native else wasm_filter("multitokens", wasm, filter_config(10000))
    envoy = Envoy("revocation-native" if native else "revocation", filters, companion_port, concurrency=2)
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
    log(f"revocation under load ({'native' if native else 'wasm'}): p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms, "
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
