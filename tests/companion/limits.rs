//! Nobody who can reach the companion grows it without bound: made-up methods get no metric labels
//! of their own, and made-up edge ids neither pile up nor hold every revoke (the real binary on a
//! real Redis, its memory and Redis's state measured).

use crate::support::{http_agent, http_call, CompanionServer, RedisServer};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const ADMIN: &str = "limits-admin-key-0123456789";
const INTERNAL: &str = "limits-internal-key-0123456789";

/// The resident memory of a process (kB), from /proc.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn metrics(server: &CompanionServer) -> String {
    http_agent().get(format!("{}/metrics", server.base())).call().unwrap().into_body().read_to_string().unwrap()
}

/// One request with a made-up method on a connection of its own; the status.
fn request_with_method(port: u16, method: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "{method} /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Issues a token to user `u` and logs `u` out everywhere; the log-out's answer.
fn issue_and_log_out_everywhere(server: &CompanionServer) -> serde_json::Value {
    let (agent, admin) = (http_agent(), format!("Bearer {ADMIN}"));
    let issued = http_call(
        &agent,
        "POST",
        &format!("{}/v1/tokens", server.base()),
        &[("authorization", &admin)],
        Some(serde_json::json!({"user": "u"})),
    );
    assert_eq!(issued.status, 201);
    let r = http_call(
        &agent,
        "DELETE",
        &format!("{}/v1/users/u/tokens", server.base()),
        &[("authorization", &admin)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[test]
fn made_up_methods_get_no_metric_labels_of_their_own() {
    let redis = RedisServer::start();
    let server = CompanionServer::start(
        &redis.url(),
        &[("MULTITOKENS_ADMIN_KEY", ADMIN), ("MULTITOKENS_INTERNAL_KEY", INTERNAL)],
    );
    for _ in 0..200 {
        request_with_method(server.port, "GET");
    }
    let (before_rss, before_len) = (rss_kb(server.pid()), metrics(&server).len());
    for i in 0..5000 {
        let status = request_with_method(server.port, &format!("M{i:05}"));
        assert!(status >= 400, "a made-up method is refused ({status})");
    }
    let text = metrics(&server);
    let after_rss = rss_kb(server.pid());
    assert!(!text.contains("M0"), "no label per made-up method");
    assert!(text.contains("method=\"other\""), "counted together as other");
    assert!(text.len() < before_len + 4096, "the metrics grew from {before_len} to {} bytes", text.len());
    assert!(after_rss < before_rss + 16 * 1024, "RSS grew from {before_rss} kB to {after_rss} kB");
}

#[test]
fn made_up_edges_are_bounded_and_hold_one_revoke_at_most() {
    let redis = RedisServer::start();
    let server = CompanionServer::start(
        &redis.url(),
        &[
            ("MULTITOKENS_ADMIN_KEY", ADMIN),
            ("MULTITOKENS_INTERNAL_KEY", INTERNAL),
            ("MULTITOKENS_REVOKE_WAIT_MS", "1500"),
            ("MULTITOKENS_MAX_EDGES", "500"),
        ],
    );
    let agent = http_agent();
    let internal = format!("Bearer {INTERNAL}");
    let poll = |edge: &str| {
        let url = format!("{}/v1/internal/revocations?edge={edge}&wait_ms=25000", server.base());
        http_call(&agent, "GET", &url, &[("authorization", &internal)], None).status
    };
    // an internal-key holder registers edges that will never acknowledge anything (each is live
    // for the 25 s its poll asked for: registering them takes far less, on any machine)
    let max = 500;
    for i in 0..max {
        assert_eq!(poll(&format!("fake{i}")), 200);
    }
    assert_eq!(poll("one-too-many"), 503, "no edge past the bound");
    assert_eq!(poll("fake7"), 200, "a known edge keeps polling");
    std::thread::sleep(Duration::from_millis(200));
    let shared: usize = redis::cmd("HLEN").arg("mt:edges").query(&mut redis.conn()).unwrap();
    assert!(shared <= max, "the shared hash holds {shared} edges");
    // a revoke waits for them once, and reports them pending; the next one does not wait again
    let revoke = || {
        let started = Instant::now();
        let r = issue_and_log_out_everywhere(&server);
        (started.elapsed(), r["edges"]["pending"].as_u64().unwrap())
    };
    let (first, pending) = revoke();
    assert!(first >= Duration::from_millis(1400), "the first revoke waits for every edge ({first:?})");
    assert_eq!(pending, max as u64);
    let (second, pending) = revoke();
    assert!(second < Duration::from_millis(1000), "stuck edges hold no second revoke ({second:?})");
    assert_eq!(pending, max as u64, "still reported pending");
}

/// Calls of one command Redis has served (`INFO commandstats`).
fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut redis.conn()).unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// The sweep for outboxes a dead companion left reads the index of announced outboxes, never
/// the keyspace: a million keys cost it nothing, and an abandoned outbox is still published.
#[test]
fn the_outbox_sweep_reads_only_pending_outboxes_and_still_finds_abandoned_ones() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"], false);
    let mut conn = redis.conn();
    // a keyspace the size of a real deployment's (the sweep used to SCAN all of it every 5 s)
    let _: () = redis::cmd("DEBUG").arg("POPULATE").arg(1_000_000).arg("other:key").query(&mut conn).unwrap();
    let server = CompanionServer::start(
        &redis.url(),
        &[("MULTITOKENS_ADMIN_KEY", ADMIN), ("MULTITOKENS_INTERNAL_KEY", INTERNAL)],
    );
    // the one scan at start (for outboxes from before the index) runs to its end
    let mut scans_after_start = command_calls(&redis, "scan");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = command_calls(&redis, "scan");
        if now == scans_after_start && now > 0 {
            break;
        }
        scans_after_start = now;
    }
    // a companion died between a revocation's script and its publication: the outbox holds a
    // digest, announced in the index 20 s ago
    let outbox = "mt:{00ab}:o";
    let digest = "ff".repeat(32);
    let _: () = redis::cmd("RPUSH").arg(outbox).arg(&digest).query(&mut conn).unwrap();
    let announced =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 - 20_000;
    let _: () = redis::cmd("ZADD").arg("mt:outboxes").arg(announced).arg(outbox).query(&mut conn).unwrap();
    // and one revoke through the API announces its own outbox
    assert_eq!(issue_and_log_out_everywhere(&server)["revoked"], 1);
    let pending: u64 = redis::cmd("ZCARD").arg("mt:outboxes").query(&mut conn).unwrap();
    assert_eq!(pending, 2, "the revoke announced its outbox before its script ran");
    // two sweeps later (every 5 s): the abandoned digest is in the feed, the index drained of it
    std::thread::sleep(Duration::from_millis(11_000));
    let feed: Vec<redis::Value> = redis::cmd("XRANGE").arg("mt:revoked").arg("-").arg("+").query(&mut conn).unwrap();
    let text = format!("{feed:?}");
    assert!(text.contains(&digest), "the abandoned revocation reached the feed");
    let left: Vec<String> = redis::cmd("ZRANGE").arg("mt:outboxes").arg(0).arg(-1).query(&mut conn).unwrap();
    assert!(!left.contains(&outbox.to_string()), "a drained outbox leaves the index");
    let outbox_len: u64 = redis::cmd("LLEN").arg(outbox).query(&mut conn).unwrap();
    assert_eq!(outbox_len, 0);
    assert_eq!(command_calls(&redis, "scan"), scans_after_start, "no SCAN after the one at start");
}
