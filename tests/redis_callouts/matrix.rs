//! One behaviour in both builds: the matrix, the hit path's host calls, hostile header bytes,
//! shared lookups, sliding refresh, full feed pages.

use super::*;

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
                "proxy_add_header_map_value",         // x-multitokens-user
                "proxy_add_header_map_value",         // -device
                "proxy_add_header_map_value",         // -scopes
                "proxy_add_header_map_value",         // -token-id
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
