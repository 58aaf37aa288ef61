//! When things break: throttled floods, the store down, Redis errors and garbage, a build given the
//! transport it cannot serve, a Redis Cluster behind Envoy's redis_proxy.

use super::*;

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
