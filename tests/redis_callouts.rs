//! Both filter builds in the proxy-wasm test host (tests/host), held to one behaviour: the stock
//! build over HTTP callouts to the real companion, the Redis-callout build over Redis callouts to
//! a real redis-server, with tokens issued by the real companion. Plus the Redis failure modes,
//! upstream Envoy refusing the Redis-callout build, and a real Redis Cluster behind Envoy's
//! redis_proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod host;
mod support;

use host::{Decision, Outcome, TestHost, Upstreams};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use support::{companion, wasm_path, CompanionServer, RedisServer};

const INTERNAL_KEY: &str = "host-internal-key-0123456789";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    Stock,
    Redis,
}

struct Stack {
    redis: RedisServer,
    companion: Option<CompanionServer>,
    build: Build,
    /// The companion's and the CLI's extra environment (keys).
    env: Vec<(&'static str, String)>,
}

impl Stack {
    fn start(build: Build) -> Stack {
        Self::start_with_env(build, Vec::new())
    }

    /// A stack whose companion and CLI get `env` too (a hash key, a signing key).
    fn start_with_env(build: Build, env: Vec<(&'static str, String)>) -> Stack {
        let redis = RedisServer::start();
        let mut vars =
            vec![("MULTITOKENS_ADMIN_KEY", "host-admin-key-0123456789"), ("MULTITOKENS_INTERNAL_KEY", INTERNAL_KEY)];
        vars.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
        let companion = CompanionServer::start(&redis.url(), &vars);
        Stack { redis, companion: Some(companion), build, env }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn upstreams(&self) -> Upstreams {
        let mut u = Upstreams::default();
        if let Some(c) = &self.companion {
            u.http.insert("companion".into(), addr(c.port));
        }
        u.redis.insert("redis".into(), addr(self.redis.port));
        u
    }

    fn config(&self, extra: Value) -> String {
        filter_config(self.build, extra)
    }

    fn load(&self, extra: Value) -> TestHost {
        let wasm = match self.build {
            Build::Stock => wasm_path("multitokens_filter.wasm"),
            Build::Redis => wasm_path("multitokens_filter_redis.wasm"),
        };
        let mut host = TestHost::load(&wasm, &self.config(extra), self.upstreams())
            .unwrap_or_else(|logs| panic!("load failed:\n{logs}"));
        host.tick(); // follow the revocation feed from now on
        host
    }

    fn cli(&self, args: &[&str]) -> String {
        let url = self.redis.url();
        let mut env = vec![("MULTITOKENS_REDIS_URL", url.as_str())];
        env.extend(self.env());
        let out = companion(args, &env, None);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn issue(&self, user: &str, device: &str, extra: &[&str]) -> String {
        let mut args = vec!["--device", device];
        args.extend_from_slice(extra);
        support::issue_token_with(&self.redis.url(), user, &args, &self.env())
    }
}

/// The plugin configuration of the tests for one build, with `extra` fields set.
fn filter_config(build: Build, extra: Value) -> String {
    let mut config = json!({
        "exclude": [{"path": "/healthz"}],
        "required_scopes": [{"prefix": "/admin/", "scopes": ["admin"]}],
        "cache": {"ttl_ms": 600000},
    });
    match build {
        // the test host performs callouts synchronously, so no long polls here: those are
        // tested through real Envoy (tests/envoy_e2e/)
        Build::Stock => {
            config["companion"] = json!({"cluster": "companion", "api_key": INTERNAL_KEY});
            config["revocation_wait_ms"] = json!(0);
        }
        Build::Redis => config["redis"] = json!({"cluster": "redis", "timeout_ms": 500}),
    }
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config.to_string()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn get(host: &mut TestHost, path: &str, token: &str) -> Outcome {
    host.request("GET", path, &[("authorization", &format!("Bearer {token}"))])
}

fn assert_invalid(outcome: &Outcome) {
    let r = outcome.reply();
    assert_eq!(r.status, 401, "{outcome:?}");
    assert_eq!(r.json()["detail"], "Invalid token.");
    assert!(r.header("www-authenticate").unwrap().contains("invalid_token"));
}

/// The behaviour matrix of the stock-Envoy issue, for one build.
fn behaviour_matrix(build: Build) {
    let stack = Stack::start(build);
    let mut host = stack.load(json!({}));

    // missing credential
    let r = host.request("GET", "/api", &[]);
    assert_eq!(r.reply().status, 401);
    assert_eq!(r.reply().json()["detail"], "Authentication credentials were not provided.");
    // malformed: no lookup at all
    let alice = stack.issue("alice", "laptop", &[]);
    let misses = host.metric("multitokens.cache_miss");
    let mut flipped = alice.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    for bad in
        [&alice[..alice.len() - 1], &alice[1..], &format!("xx{}", &alice[2..]), &String::from_utf8(flipped).unwrap()]
    {
        assert_invalid(&get(&mut host, "/api", bad));
    }
    assert_eq!(host.metric("multitokens.cache_miss"), misses, "malformed tokens caused a lookup");
    // valid: identity injected, credential stripped, spoofed headers replaced
    let r =
        host.request("GET", "/api", &[("authorization", &format!("Bearer {alice}")), ("x-multitokens-user", "root")]);
    assert_eq!(r.upstream_header("x-multitokens-user").as_deref(), Some("alice"));
    assert_eq!(r.upstream_header("x-multitokens-device").as_deref(), Some("laptop"));
    assert_eq!(r.upstream_header("authorization"), None);
    // excluded path: no token needed, spoofed identity removed
    let r = host.request("GET", "/healthz", &[("x-multitokens-user", "root")]);
    assert!(matches!(r, Outcome::Forwarded(_)));
    assert_eq!(r.upstream_header("x-multitokens-user"), None);
    // another device of the same user; revoke one, the other stays (through the feed, cache on)
    let phone = stack.issue("alice", "phone", &[]);
    assert_eq!(get(&mut host, "/api", &phone).upstream_header("x-multitokens-device").as_deref(), Some("phone"));
    let hits = host.metric("multitokens.cache_hit");
    assert!(matches!(get(&mut host, "/api", &alice), Outcome::Forwarded(_)));
    assert!(host.metric("multitokens.cache_hit") > hits, "served from the cache");
    stack.cli(&["revoke", &alice]);
    host.tick();
    assert!(host.metric("multitokens.revocations_applied") >= 1);
    assert_invalid(&get(&mut host, "/api", &alice));
    assert!(matches!(get(&mut host, "/api", &phone), Outcome::Forwarded(_)));
    // revoke-all
    let tablet = stack.issue("alice", "tablet", &[]);
    assert!(matches!(get(&mut host, "/api", &tablet), Outcome::Forwarded(_)));
    assert_eq!(stack.cli(&["revoke-all", "--user", "alice"]), "2");
    host.tick();
    assert_invalid(&get(&mut host, "/api", &phone));
    assert_invalid(&get(&mut host, "/api", &tablet));
    // expired: a positive verdict never outlives the token
    let brief = stack.issue("bob", "watch", &["--ttl", "1"]);
    assert!(matches!(get(&mut host, "/api", &brief), Outcome::Forwarded(_)));
    std::thread::sleep(Duration::from_millis(1100));
    host.tick();
    assert_invalid(&get(&mut host, "/api", &brief));
    // scopes
    let plain = stack.issue("carol", "laptop", &[]);
    let r = get(&mut host, "/admin/users", &plain);
    assert_eq!(r.reply().status, 403);
    assert!(r.reply().header("www-authenticate").unwrap().contains("insufficient_scope"));
    let admin = stack.issue("carol", "console", &["--scope", "admin"]);
    assert!(matches!(get(&mut host, "/admin/users", &admin), Outcome::Forwarded(_)));
    assert!(host.metric("multitokens.allowed") >= 6 && host.metric("multitokens.denied_scope") == 1);
    host.tick();
    assert!(host.metric("multitokens.cache_entries") >= 1, "gauge of cached verdicts");
    assert!(host.metric("multitokens.vm_memory_bytes") >= 65_536, "gauge of the VM's memory");
}

/// What a cache hit costs is its host calls (bench/README.md: Envoy's side of each call is most of
/// the filter's cost): the hit path makes exactly these, in this order, in both builds. One more is
/// a regression to explain (and then this list changes with it), not noise.
#[test]
fn a_cache_hit_makes_the_host_calls_it_makes_today_and_no_more() {
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start(build);
        let mut host = stack.load(json!({}));
        let alice = stack.issue("alice", "laptop", &[]);
        assert!(matches!(get(&mut host, "/api", &alice), Outcome::Forwarded(_)), "{build:?}: the lookup");
        host.take_host_calls();
        assert!(matches!(get(&mut host, "/api", &alice), Outcome::Forwarded(_)), "{build:?}: the hit");
        let calls = host.take_host_calls();
        assert_eq!(
            calls,
            [
                "proxy_get_current_time_nanoseconds", // the request path's own clock
                "proxy_get_header_map_pairs",         // every request header, in one call
                "proxy_replace_header_map_value",     // x-multitokens-user
                "proxy_replace_header_map_value",     // -device
                "proxy_replace_header_map_value",     // -scopes
                "proxy_replace_header_map_value",     // -token-id
                "proxy_remove_header_map_value",      // authorization
            ],
            "{build:?}"
        );
    }
}

#[test]
fn the_stock_build_in_the_test_host() {
    behaviour_matrix(Build::Stock);
}

#[test]
fn the_redis_callout_build_in_the_test_host() {
    behaviour_matrix(Build::Redis);
}

/// The store going away: both builds answer 503, never allow.
/// Header bytes that are not UTF-8 (Envoy forwards them as sent) never trap the VM: a credential
/// made of them is malformed (401, no lookup), any other header is never decoded.
#[test]
fn header_bytes_that_are_not_utf8_never_trap_either_build() {
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start(build);
        let mut host = stack.load(json!({"cookie": "session"}));
        let token = stack.issue("alice", "laptop", &[]);
        let raw = |path: &[u8], extra: &[(&[u8], &[u8])]| {
            let mut h: Vec<(Vec<u8>, Vec<u8>)> =
                vec![(b":method".to_vec(), b"GET".to_vec()), (b":path".to_vec(), path.to_vec())];
            h.extend(extra.iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
            h
        };
        let bearer = format!("Bearer {token}");
        let misses = host.metric("multitokens.cache_miss");
        let hostile: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![
            raw(b"/api", &[(b"authorization", bearer.as_bytes()), (b"user-agent", b"\xff\xfe")]),
            raw(b"/api", &[(b"authorization", b"Bearer \xff\xfe"), (b"x-other", b"\xc3\x28")]),
            raw(b"/api", &[(b"authorization", &[bearer.as_bytes(), b"\xff"].concat())]),
            raw(b"/api", &[(b"authorization", b"\xff\xfe \xfd")]),
            raw(b"/api", &[(b"cookie", b"a=\xff; session=\xfe\xfd")]),
            raw(b"/\xff/api", &[(b"authorization", bearer.as_bytes())]),
            raw(b"/healthz", &[(b"\xff\xfe", b"\xff"), (b"x-multitokens-user", b"\xff")]),
        ];
        let statuses: Vec<u32> = hostile.into_iter().map(|h| host.request_raw(h).status()).collect();
        assert_eq!(
            statuses,
            [200, 401, 401, 401, 401, 400, 200],
            "{build:?}: a path that is not UTF-8 is not canonical"
        );
        assert_eq!(
            host.metric("multitokens.cache_miss"),
            misses + 1,
            "{build:?}: only the well-formed token was looked up"
        );
        // the VM is alive and still decides
        assert_eq!(get(&mut host, "/api", &token).upstream_header("x-multitokens-user").as_deref(), Some("alice"));
        assert_invalid(&get(&mut host, "/api", &token[1..]));
    }
}

/// Forged tokens: a client over its budget gets 429 and causes no lookup; other clients and
/// cached valid tokens are unaffected; a forged flood never evicts a valid verdict.
#[test]
fn forged_token_floods_are_throttled_in_both_builds() {
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start(build);
        let mut host = stack.load(json!({"throttle": {"max_failures": 5, "window_ms": 60000}, "cache": {"ttl_ms": 600000, "max_entries": 100, "max_negative_entries": 10}}));
        let alice = stack.issue("alice", "laptop", &[]);
        host.set_client_address("192.0.2.10:5000");
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
        // without a hash key no token can be checked before its lookup: the address's budget of
        // such lookups (charged when sent) is what shields the store
        let misses = host.metric("multitokens.cache_miss");
        let mut statuses = Vec::new();
        for i in 0..40 {
            host.set_client_address(&format!("198.51.100.66:{}", 1000 + i)); // new connections, same client
            let forged = multitokens_core::token::generate("mt", "mallory").unwrap();
            statuses.push(get(&mut host, "/api", &forged).status());
        }
        assert_eq!(statuses[..5], [401; 5], "{build:?}");
        assert!(statuses[5..].iter().all(|s| *s == 429), "{build:?}: {statuses:?}");
        assert_eq!(host.metric("multitokens.cache_miss"), misses + 5, "{build:?}: no lookup once throttled");
        let r = get(&mut host, "/api", &multitokens_core::token::generate("mt", "mallory").unwrap());
        assert_eq!(r.reply().header("retry-after"), Some("60"));
        assert!(r.reply().json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("Request was throttled. Expected available in"));
        assert_eq!(
            get(&mut host, "/api", "mt_whatever").status(),
            401,
            "{build:?}: malformed costs nothing, so is not throttled"
        );
        // another client, and a valid cached token from the throttled one
        host.set_client_address("192.0.2.10:5001");
        assert_eq!(get(&mut host, "/api", &format!("{alice}x")).status(), 401);
        host.set_client_address("198.51.100.66:2000");
        assert_eq!(get(&mut host, "/api", &alice).upstream_header("x-multitokens-user").as_deref(), Some("alice"));
        assert!(host.metric("multitokens.denied_throttled") >= 36);
        // many clients each under budget: negatives evict only negatives
        for i in 0..200 {
            host.set_client_address(&format!("203.0.113.{}:1", i % 250));
            let forged = multitokens_core::token::generate("mt", "mallory").unwrap();
            assert_eq!(get(&mut host, "/api", &forged).status(), 401);
        }
        let hits = host.metric("multitokens.cache_hit");
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
        assert_eq!(host.metric("multitokens.cache_hit"), hits + 1, "{build:?}: the valid verdict is still cached");
    }
}

/// The Redis-callout build sends a sliding refresh only after a positive answer: a forged token
/// costs Redis one call.
/// Requests that arrive together with one token (a page load) make one lookup: the first sends
/// it, the others wait for its answer; if the first one's stream goes away, the others look up
/// again rather than wait for an answer that will never come.
#[test]
fn concurrent_requests_with_one_token_share_one_lookup_in_both_builds() {
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start(build);
        let mut host = stack.load(json!({}));
        let request = |t: &str| {
            vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b":path".to_vec(), b"/api".to_vec()),
                (b"authorization".to_vec(), format!("Bearer {t}").into_bytes()),
            ]
        };
        let user_of = |d: Decision| match d {
            Decision::Forwarded(headers) => {
                headers.into_iter().find(|(k, _)| k == b"x-multitokens-user").map(|(_, v)| v)
            }
            other => panic!("{build:?}: not forwarded: {other:?}"),
        };
        let alice = stack.issue("alice", "laptop", &[]);
        let page: Vec<u32> = (0..5).map(|_| host.try_begin(request(&alice), "192.0.2.1:1000").unwrap()).collect();
        assert_eq!(host.pending_callouts(), 1, "{build:?}: one lookup for five requests");
        host.run_callouts();
        for &ctx in &page {
            assert_eq!(user_of(host.decision_of(ctx)), Some(b"alice".to_vec()), "{build:?}");
        }
        // a forged token: all refused on one lookup
        let forged = multitokens_core::token::generate("mt", "mallory").unwrap();
        let page: Vec<u32> = (0..3).map(|_| host.try_begin(request(&forged), "192.0.2.2:1000").unwrap()).collect();
        assert_eq!(host.pending_callouts(), 1, "{build:?}");
        host.run_callouts();
        for &ctx in &page {
            assert_eq!(host.decision_of(ctx), Decision::Replied(401), "{build:?}");
        }
        // the leader's client goes away: the others look up again, one of them for all
        let bob = stack.issue("bob", "phone", &[]);
        let page: Vec<u32> = (0..3).map(|_| host.try_begin(request(&bob), "192.0.2.3:1000").unwrap()).collect();
        assert_eq!(host.pending_callouts(), 1, "{build:?}");
        host.try_end(page[0]).unwrap();
        assert_eq!(host.pending_callouts(), 2, "{build:?}: the gone leader's lookup and the new one");
        host.run_callouts();
        for &ctx in &page[1..] {
            assert_eq!(user_of(host.decision_of(ctx)), Some(b"bob".to_vec()), "{build:?}");
        }
        // a lookup the host never answers: past its timeout and a second, the tick sends the
        // requests that followed it to look up again
        let carol = stack.issue("carol", "phone", &[]);
        let stuck = host.try_begin(request(&carol), "192.0.2.4:1000").unwrap();
        let waiting = host.try_begin(request(&carol), "192.0.2.4:1001").unwrap();
        let unanswered = host.take_calls();
        assert_eq!(unanswered.len(), 1, "{build:?}");
        assert_eq!(host.decision_of(waiting), Decision::Pending);
        std::thread::sleep(Duration::from_millis(500 + 1100)); // the lookup timeout (500 ms) and a second
        host.try_tick().unwrap();
        host.run_callouts(); // (the unanswered lookup was taken away: only the follower's new one is answered)
        assert_eq!(user_of(host.decision_of(waiting)), Some(b"carol".to_vec()), "{build:?}");
        assert_eq!(host.decision_of(stuck), Decision::Pending, "{build:?}: its own lookup is still unanswered");
        host.try_end(stuck).unwrap();
        host.tick();
        assert_eq!(host.metric("multitokens.lookup_shared"), 4 + 2 + 3 + 1, "{build:?}: followers counted (one twice)");
    }
}

#[test]
fn sliding_refresh_only_after_a_positive_answer() {
    let stack = Stack::start(Build::Redis);
    let mut host = stack.load(json!({"refresh_on_use": {"ttl": 600, "min_interval_ms": 1000}}));
    let is_refresh = |q: &Vec<u8>| q.windows(7).any(|w| w == b"PEXPIRE");
    let before = host.redis_queries().len();
    let forged = multitokens_core::token::generate("mt", "mallory").unwrap();
    assert_eq!(get(&mut host, "/api", &forged).status(), 401);
    let sent: Vec<Vec<u8>> = host.redis_queries()[before..].to_vec();
    assert_eq!(sent.len(), 1, "one lookup, no refresh");
    let alice = stack.issue("alice", "laptop", &["--ttl", "600"]);
    std::thread::sleep(std::time::Duration::from_millis(1500)); // 598.5 s left
    let before = host.redis_queries().len();
    assert_eq!(get(&mut host, "/api", &alice).status(), 200);
    let sent: Vec<Vec<u8>> = host.redis_queries()[before..].to_vec();
    assert_eq!(sent.len(), 2, "the lookup, then the refresh");
    assert!(!is_refresh(&sent[0]) && is_refresh(&sent[1]));
    host.tick(); // the refresh's answer is not waited for: let the host perform it
    let pttl: i64 = stack
        .redis
        .cli(&["--scan", "--pattern", "mt:*:t:*"])
        .lines()
        .map(|k| stack.redis.cli(&["PTTL", k]).trim().parse::<i64>().unwrap())
        .max()
        .unwrap();
    assert!((599_000..=600_000).contains(&pttl), "re-armed to its 600 s, never past it: {pttl} ms");
}

/// A full feed page triggers the next read at once: thousands of revocations are applied in one
/// tick, so the last one is enforced right away.
#[test]
fn a_full_feed_page_is_followed_by_the_next_at_once_in_both_builds() {
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start(build);
        let mut host = stack.load(json!({}));
        let alice = stack.issue("alice", "laptop", &[]);
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
        let hits = host.metric("multitokens.cache_hit");
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
        assert_eq!(host.metric("multitokens.cache_hit"), hits + 1, "{build:?}: cached");
        // 2,500 revocations of other tokens, then alice's
        let mut conn = stack.redis.conn();
        let mut pipe = redis::pipe();
        for i in 0..2500u32 {
            pipe.cmd("XADD").arg("mt:revoked").arg("*").arg("d").arg(format!("{i:064x}")).ignore();
        }
        pipe.query::<()>(&mut conn).unwrap();
        stack.cli(&["revoke", &alice]);
        host.tick();
        assert_invalid(&get(&mut host, "/api", &alice));
        assert!(host.metric("multitokens.revocations_applied") >= 1, "{build:?}");
    }
}

#[test]
fn store_down_fails_closed_in_both_builds() {
    for build in [Build::Stock, Build::Redis] {
        let mut stack = Stack::start(build);
        let mut host = stack.load(json!({}));
        let token = stack.issue("dora", "laptop", &[]);
        match build {
            Build::Stock => stack.companion = None,
            Build::Redis => stack.redis.kill(),
        }
        let r = get(&mut host, "/api", &token);
        assert_eq!(r.reply().status, 503, "{build:?}");
        assert_eq!(r.reply().json()["detail"], "Authentication service unavailable.");
        assert!(host.metric("multitokens.denied_unavailable") >= 1, "{build:?}");
    }
}

#[test]
fn redis_errors_and_garbage_map_to_the_failure_mode() {
    // -NOAUTH: Redis wants a password the filter does not have
    let locked = RedisServer::start_with(&["--requirepass", "sesame"], false);
    let config = json!({"redis": {"cluster": "redis"}}).to_string();
    let mut upstreams = Upstreams::default();
    upstreams.redis.insert("redis".into(), addr(locked.port));
    let mut host = TestHost::load(&wasm_path("multitokens_filter_redis.wasm"), &config, upstreams.clone()).unwrap();
    let token = multitokens_core::token::generate("mt", "eve").unwrap();
    let r = get(&mut host, "/api", &token);
    assert_eq!(r.reply().status, 503);
    assert!(host.metric("multitokens.callout_error") >= 1);
    assert!(host.logs().iter().any(|l| l.contains("NOAUTH")), "{:?}", host.logs());
    // with the password (AUTH sent by the host after proxy_redis_init) it works
    let config = json!({"redis": {"cluster": "redis?db=3", "password": "sesame"}}).to_string();
    let mut host = TestHost::load(&wasm_path("multitokens_filter_redis.wasm"), &config, upstreams).unwrap();
    assert_eq!(host.redis_init().unwrap().0, "redis?db=3");
    assert_invalid(&get(&mut host, "/api", &token));

    // garbage: the "Redis" is an HTTP server
    let redis = RedisServer::start();
    let http = CompanionServer::start(&redis.url(), &[("MULTITOKENS_ADMIN_KEY", "host-admin-key-0123456789")]);
    let mut upstreams = Upstreams::default();
    upstreams.redis.insert("redis".into(), addr(http.port));
    let mut host = TestHost::load(
        &wasm_path("multitokens_filter_redis.wasm"),
        &json!({"redis": {"cluster": "redis"}}).to_string(),
        upstreams,
    )
    .unwrap();
    assert_eq!(get(&mut host, "/api", &token).reply().status, 503);
    // and allow_cached never lets an unverified token in
    let redis = RedisServer::start();
    let stack_redis_url = redis.url();
    let mut upstreams = Upstreams::default();
    upstreams.redis.insert("redis".into(), addr(redis.port));
    let config = json!({"redis": {"cluster": "redis"}, "failure_mode": "allow_cached"}).to_string();
    let mut host = TestHost::load(&wasm_path("multitokens_filter_redis.wasm"), &config, upstreams).unwrap();
    let known = support::issue_token(&stack_redis_url, "frank", &[]);
    assert!(matches!(get(&mut host, "/api", &known), Outcome::Forwarded(_)));
    drop(redis);
    assert!(matches!(get(&mut host, "/api", &known), Outcome::Forwarded(_)), "recently verified: accepted");
    assert_eq!(get(&mut host, "/api", &token).reply().status, 503, "never verified: refused");
}

#[test]
fn each_build_refuses_the_transport_it_cannot_serve() {
    let config = json!({"redis": {"cluster": "redis"}}).to_string();
    let mut upstreams = Upstreams::default();
    upstreams.redis.insert("redis".into(), addr(1));
    let err = TestHost::load(&wasm_path("multitokens_filter.wasm"), &config, upstreams.clone())
        .err()
        .expect("stock build must refuse redis");
    assert!(err.contains("stock build") && err.contains("multitokens_filter_redis.wasm"), "{err}");
    // an unknown Redis cluster is refused at configure time (proxy_redis_init answers BadArgument)
    let config = json!({"redis": {"cluster": "nowhere"}}).to_string();
    let err =
        TestHost::load(&wasm_path("multitokens_filter_redis.wasm"), &config, upstreams).err().expect("unknown cluster");
    assert!(err.contains("redis.cluster"), "{err}");
}

#[test]
fn upstream_envoy_refuses_the_redis_callout_build() {
    let config = support::EnvoyConfig::load("envoy/envoy.yaml")
        .use_wasm(&wasm_path("multitokens_filter_redis.wasm"))
        .move_port(10000, support::free_port(false))
        .move_port(19901, support::free_port(false))
        .to_yaml();
    let (ok, log) = support::envoy_run_expecting_exit(&config);
    assert!(!ok);
    assert!(log.contains("missing import: env.proxy_redis_"), "{log}");
}

/// A real 3-node Redis Cluster behind stock Envoy's redis_proxy (envoy/redis-cluster-proxy.yaml),
/// the Redis-callout build's callouts going through it, tokens issued by the companion straight
/// into the cluster for users spread over the slots.
#[test]
fn redis_cluster_through_envoys_redis_proxy() {
    let cluster = support::RedisCluster::start();
    let listen = support::free_port(false);
    let mut config = support::EnvoyConfig::load("envoy/redis-cluster-proxy.yaml")
        .move_port(16400, listen)
        .move_port(19902, support::free_port(false));
    for (i, node) in cluster.nodes.iter().enumerate() {
        config = config.move_port(7000 + i as u16, node.port);
    }
    let _envoy = support::Envoy::start(&config.to_yaml(), listen, 1);
    wait_for_redis_proxy(listen);
    // Envoy's redis_proxy does not know EVAL_RO
    let plugin =
        json!({"redis": {"cluster": "redis_cluster_proxy", "timeout_ms": 1000, "eval_ro": false}, "cache": {"ttl_ms": 600000}}).to_string();
    let mut host =
        TestHost::load(&wasm_path("multitokens_filter_redis.wasm"), &plugin, host_upstreams(listen)).unwrap();
    host.tick();
    assert_eq!(
        host.metric("multitokens.callout_error") + host.metric("multitokens.callout_failed"),
        0,
        "{:?}",
        host.logs()
    );

    let url = cluster.url();
    let issue = |user: &str| support::issue_token(&url, user, &[]);
    let tokens: Vec<(String, String)> = (0..30).map(|i| format!("user-{i}")).map(|u| (issue(&u), u)).collect();
    for node in &cluster.nodes {
        let size: i64 = node.cli(&["DBSIZE"]).trim().parse().unwrap();
        assert!(size > 0, "users are spread over every master");
    }
    for (token, user) in &tokens {
        let r = get(&mut host, "/api", token);
        assert_eq!(r.upstream_header("x-multitokens-user").as_deref(), Some(user.as_str()), "{r:?}");
    }
    // revoke half through the companion (cluster mode); the feed travels through the proxy too
    for (token, _) in tokens.iter().step_by(2) {
        let out = companion(&["revoke", token], &[("MULTITOKENS_REDIS_URL", &url)], None);
        assert!(out.status.success());
    }
    host.tick();
    let applied = host.metric("multitokens.revocations_applied");
    assert!(applied >= 15, "{applied}");
    for (i, (token, user)) in tokens.iter().enumerate() {
        let r = get(&mut host, "/api", token);
        if i % 2 == 0 {
            assert_invalid(&r);
        } else {
            assert_eq!(r.upstream_header("x-multitokens-user").as_deref(), Some(user.as_str()));
        }
    }
}

/// Waits until Envoy has learnt the cluster's slots and runs a script through the proxy.
fn wait_for_redis_proxy(port: u16) {
    let started = std::time::Instant::now();
    loop {
        let ok = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("EVAL").arg("return 1").arg(1).arg("{probe}").query::<i64>(&mut c));
        if ok == Ok(1) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "redis_proxy not ready: {ok:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn host_upstreams(port: u16) -> Upstreams {
    let mut upstreams = Upstreams::default();
    upstreams.redis.insert("redis_cluster_proxy".into(), addr(port));
    upstreams
}

/// Sealed records and a hash key rotation, in both builds: a record rewritten in Redis is refused
/// (the Redis-callout build counts it as `denied_tampered`; the stock build's companion refuses
/// it); during a rotation a token stored under the previous key is accepted and cached by the
/// digest it is stored under; its re-keying (on use by the companion, or by `multitokens rekey`)
/// is published like a revocation of the old digest; after the sweep the old key can be dropped
/// from both the companion and the filter.
#[test]
fn tampered_records_are_refused_and_a_key_rotation_logs_nobody_out_in_both_builds() {
    for build in [Build::Stock, Build::Redis] {
        let redis = RedisServer::start();
        let env = |current: &str, previous: &str| {
            vec![
                ("MULTITOKENS_ADMIN_KEY", "host-admin-key-0123456789".to_string()),
                ("MULTITOKENS_INTERNAL_KEY", INTERNAL_KEY.to_string()),
                ("MULTITOKENS_REDIS_URL", redis.url()),
                ("MULTITOKENS_HASH_KEY", current.to_string()),
                ("MULTITOKENS_PREVIOUS_HASH_KEYS", previous.to_string()),
            ]
        };
        let run = |env: &[(&str, String)], args: &[&str]| {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let out = companion(args, &env, None);
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let start = |env: &[(&str, String)]| {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            CompanionServer::start(&redis.url(), &env)
        };
        let host_for = |companion: &CompanionServer, keys: Value| {
            let mut upstreams = Upstreams::default();
            upstreams.http.insert("companion".into(), addr(companion.port));
            upstreams.redis.insert("redis".into(), addr(redis.port));
            let wasm = wasm_path(if build == Build::Stock {
                "multitokens_filter.wasm"
            } else {
                "multitokens_filter_redis.wasm"
            });
            let mut host = TestHost::load(&wasm, &filter_config(build, keys), upstreams)
                .unwrap_or_else(|logs| panic!("load failed:\n{logs}"));
            host.tick();
            host
        };
        let one = env("key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "");
        let companion_one = start(&one);
        let mut host = host_for(&companion_one, json!({"hash_key": "key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"}));
        let alice = run(&one, &["issue", "--user", "alice"]);
        let mallory = run(&one, &["issue", "--user", "mallory"]);
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
        // mallory rewrites her record in Redis to become alice
        let key = redis
            .cli(&["--scan", "--pattern", "mt:*:t:*"])
            .lines()
            .map(str::to_string)
            .find(|k| redis.cli(&["GET", k]).contains("mallory"))
            .unwrap();
        let record = redis.cli(&["GET", &key]).trim().replace("mallory", "alice");
        redis.cli(&["SET", &key, &record, "KEEPTTL"]);
        assert_invalid(&get(&mut host, "/api", &mallory));
        if build == Build::Redis {
            assert_eq!(host.metric("multitokens.denied_tampered"), 1);
        }
        drop(host);
        drop(companion_one);

        // rotation: key two is current, key one still accepted, in the companion and the filter
        let rotating =
            env("key-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE");
        let companion_two = start(&rotating);
        let mut host = host_for(
            &companion_two,
            json!({"hash_key": "key-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "previous_hash_keys": ["key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"]}),
        );
        let bob = run(&rotating, &["issue", "--user", "bob"]);
        for token in [&alice, &alice, &bob, &bob] {
            assert_eq!(get(&mut host, "/api", token).status(), 200, "{build:?}");
        }
        let misses = host.metric("multitokens.cache_miss");
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
        assert_eq!(host.metric("multitokens.cache_miss"), misses, "{build:?}: cached");
        assert_eq!(
            run(&rotating, &["revoke-all", "--user", "mallory"]),
            "1",
            "her rewritten record can still be logged out"
        );
        let report: Value =
            serde_json::from_str(&run(&rotating, &["rekey", "--json"])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((report["scanned"].as_u64(), report["unsealed_or_tampered"].as_u64()), (Some(2), Some(0)));
        let rekeyed = if build == Build::Redis { 1 } else { 0 };
        assert_eq!(
            report["rekeyed"].as_u64(),
            Some(rekeyed),
            "{build:?}: alice unless the companion re-keyed her on use"
        );
        // the sweep's move reaches the filter like a revocation of the old digest: the cached
        // verdict under it goes, and the next request finds her under the new one
        let applied = host.metric("multitokens.revocations_applied");
        host.tick();
        if build == Build::Redis {
            assert!(host.metric("multitokens.revocations_applied") > applied, "the old digest's entry dropped");
        }
        let misses = host.metric("multitokens.cache_miss");
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
        assert_eq!(host.metric("multitokens.cache_miss"), misses + i64::from(build == Build::Redis));
        drop(host);
        drop(companion_two);

        // the old key retired everywhere: alice and bob still logged in; a revocation still lands
        let mut two = env("key-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "");
        two.push(("MULTITOKENS_RETIRED_HASH_KEYS", "key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE".to_string()));
        let companion_three = start(&two);
        // a filter that dropped the old key outright: alice's token (minted under it) no longer
        // passes the MAC check, refused without a lookup; bob's, minted under the new key, does
        let mut dropped =
            host_for(&companion_three, json!({"hash_key": "key-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"}));
        let misses = dropped.metric("multitokens.cache_miss");
        assert_invalid(&get(&mut dropped, "/api", &alice));
        assert_eq!(dropped.metric("multitokens.cache_miss"), misses, "{build:?}: no lookup for a MAC no key made");
        assert_eq!(get(&mut dropped, "/api", &bob).status(), 200);
        drop(dropped);
        let mut host = host_for(
            &companion_three,
            json!({"hash_key": "key-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "retired_hash_keys": ["key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"]}),
        );
        for token in [&alice, &bob] {
            assert_eq!(get(&mut host, "/api", token).status(), 200, "{build:?}");
        }
        run(&two, &["revoke", &alice]);
        host.tick();
        assert_invalid(&get(&mut host, "/api", &alice));
        assert_eq!(get(&mut host, "/api", &bob).status(), 200);
    }
}

/// With a hash key, in both builds: a forged token (right checksum, made-up MAC) costs no lookup
/// and no throttling, a valid token from the same address is served, a revoked one re-sent costs
/// one lookup and is never answered 429.
#[test]
fn forged_tokens_cost_nothing_and_valid_ones_are_never_throttled_in_both_builds() {
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start_with_env(build, vec![("MULTITOKENS_HASH_KEY", support::TEST_HASH_KEY.to_string())]);
        let config = json!({"hash_key": support::TEST_HASH_KEY, "accept_legacy_tokens": false,
                            "throttle": {"max_failures": 3, "window_ms": 60000}});
        let mut host = stack.load(config);
        host.set_client_address("198.51.100.66:1000");
        let misses = host.metric("multitokens.cache_miss");
        for i in 0..50 {
            let forged = if i % 2 == 0 {
                multitokens_core::token::forge("mt", "mallory").unwrap()
            } else {
                multitokens_core::token::generate("mt", "mallory").unwrap() // old format: no MAC
            };
            assert_invalid(&get(&mut host, "/api", &forged));
        }
        assert_eq!(host.metric("multitokens.cache_miss"), misses, "{build:?}: no lookup for a forged token");
        assert_eq!(host.metric("multitokens.denied_forged"), 50);
        let stale = stack.issue("alice", "laptop", &[]);
        stack.cli(&["revoke", &stale]);
        for _ in 0..10 {
            assert_invalid(&get(&mut host, "/api", &stale));
        }
        assert_eq!(host.metric("multitokens.cache_miss"), misses + 1, "{build:?}: one lookup, then the negative cache");
        let bob = stack.issue("bob", "phone", &[]);
        for _ in 0..5 {
            assert_eq!(get(&mut host, "/api", &bob).status(), 200, "{build:?}");
        }
        assert_eq!(host.metric("multitokens.denied_throttled"), 0);
    }
}

/// Redis write access plus everything a gateway's plugin configuration holds (the hash key, so
/// the token MAC key and the HMAC seal key; the internal key; the public signing key): an attacker
/// makes up a token with a valid MAC, writes a record for it naming `admin` with every scope,
/// HMAC-sealed, or signed with a key pair of their own. With records signed by the companion,
/// both builds refuse it and count it as tampered.
#[test]
fn a_record_forged_with_everything_a_gateway_holds_is_refused_in_both_builds() {
    use multitokens_core::{digest::TokenHasher, record::TokenRecord, signing::RecordSigner, token::RoutingTag};
    for build in [Build::Stock, Build::Redis] {
        let (seed, public) = RecordSigner::generate().unwrap();
        let env = vec![("MULTITOKENS_HASH_KEY", support::TEST_HASH_KEY.to_string()), ("MULTITOKENS_SIGNING_KEY", seed)];
        let stack = Stack::start_with_env(build, env);
        let gateway =
            json!({"hash_key": support::TEST_HASH_KEY, "accept_legacy_tokens": false, "record_public_keys": [public]});
        let mut host = stack.load(gateway.clone());
        let alice = stack.issue("alice", "laptop", &["--scope", "read"]);
        assert_eq!(get(&mut host, "/api", &alice).status(), 200, "{build:?}: a signed record is honoured");
        // the attacker's side: only what the gateway config holds
        let hasher = TokenHasher::new(Some(gateway["hash_key"].as_str().unwrap().as_bytes()));
        let mut forged_tokens = Vec::new();
        for (n, seal) in ["hmac", "own-key-pair"].into_iter().enumerate() {
            let token = hasher.mint("mt", "admin").unwrap();
            let digest = hasher.digest(&token);
            let record = TokenRecord {
                id: digest.public_id(),
                user: "admin".into(),
                device: "forged".into(),
                created: 1,
                scopes: vec!["admin".into(), "read".into(), "write".into()],
                expires_at: None,
                lifetime_ms: None,
                token_hash: Some(hex::encode(multitokens_core::digest::token_hash(&token))),
            }
            .to_json()
            .unwrap();
            let value = match seal {
                "hmac" => hasher.seal(&digest, record),
                _ => RecordSigner::from_text(&RecordSigner::generate().unwrap().0).unwrap().sign(&digest, record),
            };
            let key = format!("mt:{{{}}}:t:{}", RoutingTag::for_user("admin").to_hex(), digest.to_hex());
            stack.redis.cli(&["SET", &key, &value, "PX", "600000"]);
            assert_invalid(&get(&mut host, "/admin/stats", &token));
            assert_invalid(&get(&mut host, "/api", &token));
            forged_tokens.push((n, token));
        }
        let tampered = match build {
            Build::Redis => host.metric("multitokens.denied_tampered") as u64,
            Build::Stock => {
                let port = stack.companion.as_ref().unwrap().port;
                let text = support::http_agent()
                    .get(format!("http://127.0.0.1:{port}/metrics"))
                    .call()
                    .unwrap()
                    .into_body()
                    .read_to_string()
                    .unwrap();
                text.lines()
                    .find_map(|l| l.strip_prefix("multitokens_companion_tampered_records_total "))
                    .map(|v| v.trim().parse::<u64>().unwrap())
                    .unwrap_or_else(|| panic!("no tampered count:\n{text}"))
            }
        };
        assert!(tampered >= 2, "{build:?}: both counted as tampered, {tampered}");
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
    }
}

/// Least privilege: the Redis-callout build runs as the shipped gateway users
/// (envoy/redis/users.acl, created with `ACL SETUSER`): lookups and the revocation feed work as the
/// read-only user, sliding refreshes as the refresh user; neither can issue, rewrite or delete a
/// record, not even from a script, and the read-only one cannot change a TTL either.
#[test]
fn the_redis_callout_build_runs_as_the_gateway_users_which_cannot_write_records() {
    for (user, refresh) in [("mt-gateway", false), ("mt-gateway-refresh", true)] {
        let stack = Stack::start(Build::Redis);
        assert!(stack.redis.apply_shipped_acl().contains(&user.to_string()));
        let mut config = json!({"redis": {"cluster": "redis", "username": user, "password": "change-me-gateway", "timeout_ms": 500}});
        if refresh {
            config["refresh_on_use"] = json!({"ttl": 600, "min_interval_ms": 1000});
        }
        let mut host = stack.load(config);
        let alice = stack.issue("alice", "laptop", &["--ttl", "600"]);
        let phone = stack.issue("alice", "phone", &[]);
        std::thread::sleep(Duration::from_millis(1100));
        let r = get(&mut host, "/api", &alice);
        assert_eq!(r.upstream_header("x-multitokens-user").as_deref(), Some("alice"), "{user}: {:?}", host.logs());
        assert_eq!(get(&mut host, "/api", &phone).status(), 200);
        host.tick(); // the refresh goes out, and the feed is read
        let records: Vec<String> =
            stack.redis.cli(&["--scan", "--pattern", "mt:*:t:*"]).lines().map(str::to_string).collect();
        let key = records
            .iter()
            .find(|k| stack.redis.cli(&["PTTL", k]).trim().parse::<i64>().unwrap() <= 600_000)
            .unwrap()
            .clone();
        let pttl: i64 = stack.redis.cli(&["PTTL", &key]).trim().parse().unwrap();
        assert_eq!(pttl > 599_000, refresh, "{user}: refreshed iff refresh_on_use ({pttl} ms left)");
        stack.cli(&["revoke", &alice]);
        host.tick();
        assert_invalid(&get(&mut host, "/api", &alice));
        assert_eq!(get(&mut host, "/api", &phone).status(), 200);
        assert_eq!(host.metric("multitokens.callout_error"), 0, "{user}: {:?}", host.logs());

        // what the gateway users cannot do
        let mut conn =
            redis::Client::open(stack.redis.url_as(user, "change-me-gateway")).unwrap().get_connection().unwrap();
        let key = records.iter().find(|k| stack.redis.cli(&["EXISTS", k]).trim() == "1").unwrap().clone();
        let record = stack.redis.cli(&["GET", &key]).trim().to_string();
        let forged = record.replace("alice", "root");
        let index = format!("{}alice", key.split(":t:").next().unwrap().to_string() + ":u:");
        let mut attempts: Vec<redis::Cmd> = vec![
            redis::cmd("SET").arg(&key).arg(&forged).clone(),
            redis::cmd("DEL").arg(&key).clone(),
            redis::cmd("RENAME").arg(&key).arg(format!("{key}x")).clone(),
            redis::cmd("PERSIST").arg(&key).clone(),
            redis::cmd("EVAL").arg("return redis.call('SET', KEYS[1], ARGV[1])").arg(1).arg(&key).arg(&forged).clone(),
            redis::cmd("EVAL").arg("return redis.call('DEL', KEYS[1])").arg(1).arg(&key).clone(),
            redis::cmd("EVAL_RO").arg("return redis.call('DEL', KEYS[1])").arg(1).arg(&key).clone(),
            redis::cmd("EVAL")
                .arg(multitokens_core::scripts::REVOKE_ALL)
                .arg(3)
                .arg(&index)
                .arg("mt:{x}:o")
                .arg("mt:{x}:x:u")
                .arg("mt:")
                .arg("")
                .clone(),
            redis::cmd("FLUSHALL").clone(),
            redis::cmd("GET").arg("other:key").clone(),
        ];
        if !refresh {
            attempts.push(redis::cmd("PEXPIRE").arg(&key).arg(1).clone());
            attempts.push(redis::cmd("PEXPIRE").arg(&index).arg(1).clone());
        }
        for cmd in attempts {
            let result: redis::RedisResult<redis::Value> = cmd.query(&mut conn);
            let sent = String::from_utf8_lossy(&cmd.get_packed_command()).chars().take(60).collect::<String>();
            assert!(result.is_err(), "{user}: {sent:?} was allowed: {result:?}");
        }
        assert_eq!(stack.redis.cli(&["GET", &key]).trim(), record, "{user}: the record is untouched");
        assert_eq!(stack.redis.cli(&["EXISTS", &index]).trim(), "1", "{user}: the index is untouched");
    }
}
