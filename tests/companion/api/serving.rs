//! The real binary serving, Envoy's ext_authz check, the feed's fan-out and revokes waiting for
//! the edges.

use super::*;

#[test]
fn the_serve_binary_starts_and_answers() {
    let redis = RedisServer::start();
    let server = CompanionServer::start(&redis.url(), &[("MULTITOKENS_ADMIN_KEY", ADMIN)]);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let response = agent
        .post(format!("{}/v1/tokens", server.base()))
        .header("authorization", &format!("Bearer {ADMIN}"))
        .send_json(json!({"user": "eve"}))
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let ready = agent.get(format!("{}/readyz", server.base())).call().unwrap();
    assert_eq!(ready.status().as_u16(), 200);
}

#[test]
fn ext_authz_check_for_envoys_ext_authz_filter() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let (_, issued, _) =
        api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "fay", "device": "tv", "scopes": ["a", "b"]})));
    let token = issued["token"].as_str().unwrap();
    let bearer = format!("Bearer {token}");
    let ok = api.request("GET", "/v1/ext_authz/api/orders?x=1", &[("authorization", &bearer)], Vec::new());
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["x-multitokens-user"], "fay");
    assert_eq!(ok.headers["x-multitokens-scopes"], "a b");
    let denied = api.request("POST", "/v1/ext_authz/api", &[("authorization", "Bearer mt_nope")], Vec::new());
    assert_eq!(denied.status, 401);
    assert_eq!(api.request("GET", "/v1/ext_authz/api", &[], Vec::new()).status, 401);
    // identity values outside ASCII go out as their UTF-8 bytes (as the filter sets them), never dropped
    let (_, issued, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "José", "device": "Zoë's ☎"})));
    let bearer = format!("Bearer {}", issued["token"].as_str().unwrap());
    let ok = api.request("GET", "/v1/ext_authz/api", &[("authorization", &bearer)], Vec::new());
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["x-multitokens-user"].as_bytes(), "José".as_bytes());
    assert_eq!(ok.headers["x-multitokens-device"].as_bytes(), "Zoë's ☎".as_bytes());
    // user ids and devices with whitespace at either end are refused at issuance
    for body in [json!({"user": " root"}), json!({"user": "root\t"}), json!({"user": "bob", "device": "tv "})] {
        let (status, answer, _) = api.call("POST", "/v1/tokens", admin(), Some(body.clone()));
        assert_eq!(status, 400, "{body}: {answer}");
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.contains("whitespace") || detail.contains("control"), "{answer}");
    }
    // and so are labels that would not show as what they are: a bidi override, a line separator
    for body in [
        json!({"user": "alice\u{202e}nimda"}),
        json!({"user": "bob", "device": "phone\u{2028}2026-12-04 revoked everything"}),
        json!({"user": "bob", "device": "pho\u{200b}ne"}),
    ] {
        let (status, answer, _) = api.call("POST", "/v1/tokens", admin(), Some(body.clone()));
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains("format or line separator"), "{answer}");
    }
}

/// One companion holds one blocking read on Redis and fans it out: 60 long-polling edges get a
/// revocation at once, the revoke returns when all 60 acknowledged it, and Redis sees a handful
/// of commands, not one per edge.
#[test]
fn the_feed_fans_out_to_long_polls_and_the_revoke_waits_for_every_edge() {
    let redis = RedisServer::start();
    fan_out(&redis.url(), Some(&redis));
}

/// The same on a Redis Cluster (the feed on one master, the edge table on another).
#[test]
fn the_feed_fans_out_on_a_redis_cluster_too() {
    let cluster = crate::support::RedisCluster::start();
    fan_out(&cluster.url(), None);
}

fn fan_out(url: &str, single: Option<&RedisServer>) {
    let api = Api::start(url);
    let (_, issued, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "fan"})));
    let token = issued["token"].as_str().unwrap().to_string();
    let tail = api.follow_feed();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let received = api.long_poll_edges("edge", 60, &tail, &stop);
    std::thread::sleep(std::time::Duration::from_millis(500)); // every edge has polled once
    let commands = || -> u64 {
        let Some(redis) = single else { return 0 };
        let info = redis.cli(&["INFO", "stats"]);
        info.lines().find_map(|l| l.strip_prefix("total_commands_processed:")).unwrap().trim().parse().unwrap()
    };
    let before = commands();
    let started = std::time::Instant::now();
    let (status, report, _) = api.call("DELETE", "/v1/tokens/current", Some(&format!("Bearer {token}")), None);
    let took = started.elapsed();
    let used = commands() - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!((status, report["revoked"].clone()), (200, json!(1)));
    assert_eq!(report["edges"], json!({"acknowledged": 60, "pending": 0}), "every edge applied it before the answer");
    assert_eq!(received.load(std::sync::atomic::Ordering::Relaxed), 60);
    assert!(took < std::time::Duration::from_millis(900), "the edges acknowledged in {took:?}");
    assert!(used < 60, "Redis load does not grow with the edges: {used} commands for 60 edges");
}

/// Companions behind one Redis share what they know of the edges: edges long-poll one
/// companion, a revoke through another still waits for them and counts them.
#[test]
fn a_revoke_through_another_companion_waits_for_the_same_edges() {
    let redis = RedisServer::start();
    let (polled, revoking) = (Api::start(&redis.url()), Api::start(&redis.url()));
    let (_, issued, _) = revoking.call("POST", "/v1/tokens", admin(), Some(json!({"user": "shared"})));
    let token = issued["token"].as_str().unwrap().to_string();
    let tail = polled.follow_feed();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    polled.long_poll_edges("other", 3, &tail, &stop);
    std::thread::sleep(std::time::Duration::from_millis(300)); // the edge table reached Redis
    let (status, report, _) = revoking.call("DELETE", "/v1/tokens/current", Some(&format!("Bearer {token}")), None);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!((status, report["edges"].clone()), (200, json!({"acknowledged": 3, "pending": 0})));
}
