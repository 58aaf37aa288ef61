//! Faults: companion kills, Redis restarts, a lost feed, a Redis Cluster failover, a key rotation.

use super::*;

/// Waits until every token gets at the edge what Redis says of it (200 if live, 401 if not),
/// then checks it a few more times on both workers: once the system has recovered, nothing
/// revoked is accepted and nothing live is lost.
fn edge_agrees_with_redis(s: &Stack, tokens: &[String], limit: Duration) -> (usize, usize) {
    let (mut live, mut revoked) = (0, 0);
    for token in tokens {
        let out = support::companion(
            &["whoami", token],
            &[
                ("MULTITOKENS_REDIS_URL", &s.url()),
                ("MULTITOKENS_HASH_KEY", TEST_HASH_KEY),
                ("MULTITOKENS_SIGNING_KEY", support::TEST_SIGNING_KEY),
            ],
            None,
        );
        let expected = match out.status.code() {
            Some(0) => 200,
            Some(1) => 401,
            other => panic!("whoami: {other:?} {}", String::from_utf8_lossy(&out.stderr)),
        };
        s.wait_for_status("/api/whoami", &bearer(token), expected, limit);
        for _ in 0..4 {
            assert_eq!(s.get("/api/whoami", Some(&bearer(token))).status, expected, "the edge disagrees with Redis");
        }
        if expected == 200 {
            live += 1
        } else {
            revoked += 1
        }
    }
    (live, revoked)
}

/// Faults around revocations: the companion SIGKILLed at points of revokes in flight and
/// restarted; Redis SIGKILLed (append-only file, fsync always) and restarted; the feed trimmed,
/// then deleted. After each, the edge agrees with Redis for every token, and a revoke that
/// returned success is refused at once.
#[test]
fn revoked_tokens_stay_refused_through_companion_kills_redis_restarts_and_a_lost_feed() {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"], false);
    let unthrottled = |c: &mut Value| {
        c.as_object_mut().unwrap().remove("throttle");
        c["cache"]["ttl_ms"] = json!(600_000);
    };
    let mut s = Stack::start_on(redis, unthrottled, |c| c);
    let tokens: Vec<String> = (0..40).map(|i| s.login(&format!("f-{i}"), "laptop", &[])).collect();
    for t in &tokens {
        for _ in 0..4 {
            assert_eq!(s.get("/api/whoami", Some(&bearer(t))).status, 200); // cached on both workers
        }
    }
    let companion = format!("http://127.0.0.1:{}", s.companion_port);

    // 1. the companion killed while revokes are in flight, at a different point each round: the
    //    round's first revoke is answered, then the kill comes 2 to 17 ms into the others
    for (round, chunk) in tokens[..20].chunks(5).enumerate() {
        let (chunk, base) = (chunk.to_vec(), companion.clone());
        let (first_done, wait_first) = std::sync::mpsc::channel();
        let inflight = std::thread::spawn(move || {
            let agent = support::http_agent();
            for (i, t) in chunk.into_iter().enumerate() {
                let url = format!("{base}/v1/tokens/current");
                let _ = agent.delete(&url).header("authorization", &format!("Bearer {t}")).call();
                if i == 0 {
                    let _ = first_done.send(());
                }
            }
        });
        let _ = wait_first.recv_timeout(Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2 + 5 * round as u64));
        s.companion = None; // SIGKILL
        let _ = inflight.join();
        s.companion = Some(Stack::companion(&s.url(), s.companion_port, &s.companion_env));
    }
    let (live, revoked) = edge_agrees_with_redis(&s, &tokens, Duration::from_secs(10));
    assert!(revoked >= 4 && live >= 20, "{revoked} revoked, {live} live");

    // 2. Redis killed and restarted: revokes fail while it is down, nothing committed is lost
    s.redis().kill();
    assert_eq!(s.revoke_at_companion(&tokens[20]).status, 503, "no revoke can succeed without Redis");
    s.redis().restart();
    wait_until(Duration::from_secs(10), || {
        support::http_call(&s.agent, "GET", &format!("{companion}/readyz"), &[], None).status == 200
    });
    for t in &tokens[20..25] {
        let r = s.revoke_at_companion(t);
        assert_eq!((r.status, r.body["edges"]["pending"].clone()), (200, json!(0)), "{}", r.body);
        assert_eq!(s.get("/api/whoami", Some(&bearer(t))).status, 401, "refused as soon as the revoke returned");
    }
    edge_agrees_with_redis(&s, &tokens, Duration::from_secs(10));

    // 3. the feed trimmed to nothing, then deleted: the edges start over, revokes still hold at once
    for lose in [&["XTRIM", "mt:revoked", "MAXLEN", "0"][..], &["DEL", "mt:revoked"][..]] {
        s.redis().cli(lose);
        std::thread::sleep(Duration::from_millis(1500));
        let (from, to) = if lose[0] == "DEL" { (30, 35) } else { (25, 30) };
        for t in &tokens[from..to] {
            let r = s.revoke_at_companion(t);
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(
                s.get("/api/whoami", Some(&bearer(t))).status,
                401,
                "{lose:?}: refused as soon as the revoke returned"
            );
        }
    }
    let (live, revoked) = edge_agrees_with_redis(&s, &tokens, Duration::from_secs(10));
    assert!(live >= 5 && revoked >= 15, "{revoked} revoked, {live} live");
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Redis Cluster shard holding the revocation feed fails over (its master SIGKILLed, its
/// replica promoted with `CLUSTER FAILOVER FORCE`) while tokens are cached at the edge: revokes
/// after the failover hold at once, and once it has recovered the edge agrees with Redis for every
/// token.
#[test]
fn revocations_hold_when_the_feeds_shard_fails_over() {
    let cluster = support::RedisCluster::start_with_replicas();
    let unthrottled = |c: &mut Value| {
        c.as_object_mut().unwrap().remove("throttle");
        c["cache"]["ttl_ms"] = json!(600_000);
    };
    let mut s = Stack::start_on_store(Store::Cluster(cluster), unthrottled, |c| c);
    let tokens: Vec<String> = (0..30).map(|i| s.login(&format!("shard-{i}"), "laptop", &[])).collect();
    for t in &tokens {
        for _ in 0..4 {
            assert_eq!(s.get("/api/whoami", Some(&bearer(t))).status, 200);
        }
    }
    for t in &tokens[..10] {
        let r = s.revoke_at_companion(t);
        assert_eq!((r.status, r.body["edges"]["pending"].clone()), (200, json!(0)), "{}", r.body);
        assert_eq!(s.get("/api/whoami", Some(&bearer(t))).status, 401, "{}", r.body);
        let edges = Build::under_test().edges_per_envoy();
        assert!(r.body["edges"]["acknowledged"].as_u64().unwrap() >= edges, "{}", r.body);
    }
    let Store::Cluster(cluster) = &mut s.store else { unreachable!() };
    let feed_master = cluster.master_of("mt:revoked");
    cluster.fail_over(feed_master);
    // revokes may fail while the cluster settles (a retry may then find the token already
    // revoked: 401); once one succeeds it holds at once
    for t in &tokens[10..20] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = s.revoke_at_companion(t);
            if r.status == 200 {
                break;
            }
            if r.status == 401 {
                s.wait_for_status("/api/whoami", &bearer(t), 401, Duration::from_secs(10));
                break;
            }
            assert!(Instant::now() < deadline, "revokes never recovered: {} {}", r.status, r.body);
            std::thread::sleep(Duration::from_millis(200));
        }
        // never accepted once the revoke returned: refused, or 503 while a lookup still meets the
        // settling cluster (the revoke dropped the cached verdict)
        let status = s.get("/api/whoami", Some(&bearer(t))).status;
        assert!(status == 401 || status == 503, "refused as soon as the revoke returned: {status}");
    }
    let (live, revoked) = edge_agrees_with_redis(&s, &tokens, Duration::from_secs(15));
    assert_eq!((live, revoked), (10, 20));
}

/// The hash key rotation runbook (docs/operating.md) through real Envoy: every step keeps every
/// user logged in, and a revocation still lands after it.
#[test]
fn rotating_the_hash_key_through_envoy_logs_nobody_out() {
    let keys = |current: &str, previous: &str| {
        vec![
            ("MULTITOKENS_HASH_KEY", current.to_string()),
            ("MULTITOKENS_PREVIOUS_HASH_KEYS", previous.to_string()),
            ("MULTITOKENS_SIGNING_KEY", support::TEST_SIGNING_KEY.to_string()),
        ]
    };
    let mut s = Stack::start_full(
        Store::Single(RedisServer::start()),
        keys("key-2025-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", ""),
        |c| c["hash_key"] = json!("key-2025-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"),
        |c| c,
    );
    let users = ["alice", "bob", "carol"];
    let mut tokens: Vec<String> = users.iter().map(|u| s.login(u, "laptop", &[])).collect();
    let all_in = |s: &Stack, tokens: &[String], step: &str| {
        for (t, user) in tokens.iter().zip(users) {
            let r = s.get("/api/whoami", Some(&bearer(t)));
            assert_eq!((r.status, r.body["user"].clone()), (200, json!(user)), "{step}: {}", r.body);
        }
    };
    all_in(&s, &tokens, "before");
    // someone who logged in before the rotation and comes back only after it
    let erin = s.login("erin", "tablet", &[]);
    // 1. the filters accept the new key before anything is written with it
    s.restart_envoy(|c| c["previous_hash_keys"] = json!(["key-2026-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"]));
    all_in(&s, &tokens, "filters accept the new key");
    // 2. the companions write with the new key, still accepting the old one
    s.restart_companion(keys(
        "key-2026-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE",
        "key-2025-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE",
    ));
    let dave = s.login("dave", "phone", &[]);
    assert_eq!(s.get("/api/whoami", Some(&bearer(&dave))).status, 200, "a token issued under the new key");
    all_in(&s, &tokens, "companions on the new key");
    // 3. the filters digest with the new key, still accepting the old one
    s.restart_envoy(|c| {
        c["hash_key"] = json!("key-2026-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE");
        c["previous_hash_keys"] = json!(["key-2025-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"]);
    });
    all_in(&s, &tokens, "filters on the new key");
    // 4. the sweep re-keys what is left
    let env: Vec<(&str, String)> = [("MULTITOKENS_REDIS_URL", s.url())]
        .into_iter()
        .chain(keys(
            "key-2026-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE",
            "key-2025-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE",
        ))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = support::companion(&["rekey", "--json"], &env, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["scanned"].as_u64(), report["unsealed_or_tampered"].as_u64()), (Some(5), Some(0)), "{report}");
    assert_eq!(report["rekeyed"].as_u64(), Some(1), "erin, the only one not re-keyed on use: {report}");
    all_in(&s, &tokens, "after the sweep");
    // 5. the old key retired everywhere: no digest is tried under it, its tokens' MACs still verify
    let mut env = keys("key-2026-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "");
    env.push(("MULTITOKENS_RETIRED_HASH_KEYS", "key-2025-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE".to_string()));
    s.restart_companion(env);
    s.restart_envoy(|c| {
        c.as_object_mut().unwrap().remove("previous_hash_keys");
        c["retired_hash_keys"] = json!(["key-2025-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"]);
    });
    all_in(&s, &tokens, "old key dropped");
    assert_eq!(s.get("/api/whoami", Some(&bearer(&dave))).status, 200);
    assert_eq!(s.get("/api/whoami", Some(&bearer(&erin))).body["user"], "erin", "re-keyed by the sweep");
    // and logging out still logs out at once
    let r = s.request("POST", "/logout", &[("authorization", &bearer(&tokens[0]))], None);
    assert!(r.status < 300, "logout: {} {}", r.status, r.body);
    assert_eq!(s.get("/api/whoami", Some(&bearer(&tokens[0]))).status, 401);
    tokens.remove(0);
    assert!(s.envoy.alive());
}
