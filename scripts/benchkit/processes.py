"""The processes a run starts (Redis, the companion, Envoy, wrk) and what is read from them."""
import atexit
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from .settings import CONNECTIONS, ENVOY, HASH_KEY, MINT, NAMED, PROCS, ROOT, SECONDS, WORK, WRK_DIR


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
    NAMED[name] = p
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


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    for key in ("envoy_cpu_us_per_req", "companion_cpu_us_per_req", "redis_cpu_us_per_req"):
        if all(key in r for r in runs):
            out[key] = round(statistics.median(r[key] for r in runs), 2)
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
