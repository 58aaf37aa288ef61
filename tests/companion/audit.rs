//! The audit trail against a real redis-server (and a Redis Cluster): every issue, revoke,
//! revoke-all, revoke-others, eviction and re-keying, with who did it and the request id; never a
//! token or a digest. Read back through the API, the library and the CLI.

use crate::support::{companion, CompanionServer, RedisCluster, RedisServer};
use crate::{policy, store_at};
use multitokens::audit::Origin;
use multitokens::settings::MaxTokensPolicy;
use multitokens::store::IssueRequest;
use serde_json::{json, Value};

const ADMIN: &str = "audit-admin-key-0123456789";

fn req(user: &str, device: &str) -> IssueRequest {
    IssueRequest { user: user.into(), device: Some(device.into()), ..Default::default() }
}

#[test]
fn every_mutation_through_the_api_is_audited_with_its_actor_and_request_id() {
    let redis = RedisServer::start();
    let server = CompanionServer::start(
        &redis.url(),
        &[
            ("MULTITOKENS_ADMIN_KEY", ADMIN),
            ("MULTITOKENS_HASH_KEY", "audit-pepper-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"),
        ],
    );
    let agent = crate::support::http_agent();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", server.port);
    let admin = format!("Bearer {ADMIN}");
    let call = |method: &str, path: &str, auth: &str, request_id: &str, body: Option<Value>| {
        crate::support::http_call(
            &agent,
            method,
            &url(path),
            &[("authorization", auth), ("x-request-id", request_id)],
            body,
        )
    };
    let issue = |device: &str, rid: &str| {
        call("POST", "/v1/tokens", &admin, rid, Some(json!({"user": "alice", "device": device}))).body
    };
    let laptop = issue("laptop", "req-1");
    let phone = issue("phone", "req-2");
    let tablet = issue("tablet", "req-3");
    let bearer = |t: &Value| format!("Bearer {}", t["token"].as_str().unwrap());
    assert_eq!(call("DELETE", "/v1/tokens/current", &bearer(&phone), "req-4", None).status, 200);
    assert_eq!(
        call("DELETE", &format!("/v1/users/alice/tokens/{}", tablet["id"].as_str().unwrap()), &admin, "req-5", None)
            .status,
        200
    );
    issue("tv", "req-6");
    assert_eq!(call("DELETE", "/v1/tokens/others", &bearer(&laptop), "req-7", None).status, 200);
    assert_eq!(call("DELETE", "/v1/users/alice/tokens", &admin, "req-8", None).status, 200);
    call("POST", "/v1/tokens", &admin, "req-9", Some(json!({"user": "bob"})));

    let r = call("GET", "/v1/events?user=alice", &admin, "x", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen: Vec<(String, String, String, String)> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().into(),
                e["actor"].as_str().unwrap().into(),
                e["request_id"].as_str().unwrap().into(),
                e["user"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected: Vec<(&str, &str, &str)> = vec![
        ("issue", "admin", "req-1"),
        ("issue", "admin", "req-2"),
        ("issue", "admin", "req-3"),
        ("revoke", "token", "req-4"),
        ("revoke", "admin", "req-5"),
        ("issue", "admin", "req-6"),
        ("revoke_others", "token", "req-7"),
        ("revoke_all", "admin", "req-8"),
    ];
    assert_eq!(seen.len(), expected.len(), "{seen:?}");
    for ((event, actor, rid, user), (e, a, q)) in seen.iter().zip(expected) {
        assert_eq!((event.as_str(), actor.as_str(), rid.as_str(), user.as_str()), (e, a, q, "alice"));
    }
    let events = r.body["events"].as_array().unwrap();
    assert_eq!(
        (events[0]["first"].clone(), events[0]["device"].clone(), events[0]["id"].clone()),
        (json!(true), json!("laptop"), laptop["id"].clone())
    );
    assert_eq!(events[1]["first"], json!(false));
    assert_eq!(events[3]["id"], phone["id"], "the revoked token's public id");
    assert_eq!((events[6]["count"].clone(), events[7]["count"].clone()), (json!(1), json!(1)));
    assert!(events[0]["time"].as_str().unwrap().ends_with('Z'));
    // pages: the next page starts after the cursor
    let first = call("GET", "/v1/events?limit=2", &admin, "x", None).body;
    assert_eq!(first["events"].as_array().unwrap().len(), 2);
    let next =
        call("GET", &format!("/v1/events?limit=100&after={}", first["next"].as_str().unwrap()), &admin, "x", None).body;
    assert_eq!(next["events"].as_array().unwrap().len(), 7, "the other 6 of alice and bob's issue");
    // the admin role only, and bad queries name the parameter
    assert_eq!(call("GET", "/v1/events", &bearer(&laptop), "x", None).status, 401);
    let bad = call("GET", "/v1/events?since=yesterday", &admin, "x", None);
    assert_eq!(bad.status, 400);
    assert!(bad.body["detail"].as_str().unwrap().contains("since"));
    // never a token or a digest in the stream
    let raw = redis.cli(&["XRANGE", "mt:audit", "-", "+"]);
    for t in [&laptop, &phone, &tablet] {
        let token = t["token"].as_str().unwrap();
        assert!(!raw.contains(&token[3..]), "a token in the audit trail");
    }
    let digests = redis.cli(&["--scan", "--pattern", "mt:*:t:*"]);
    for d in digests.lines().filter_map(|k| k.rsplit(':').next()) {
        assert!(!raw.contains(d), "a digest in the audit trail");
    }
}

#[tokio::test]
async fn evictions_and_rekeys_are_audited_and_a_cluster_keeps_the_trail_too() {
    let redis = RedisServer::start();
    let mut p = policy();
    p.max_tokens_per_user = Some(2);
    p.max_tokens_policy = MaxTokensPolicy::EvictOldest;
    let store = store_at(&redis.url(), p, Some("k1"));
    let first = store.issue(req("carol", "a"), &Origin::companion()).await.unwrap();
    store.issue(req("carol", "b"), &Origin::companion()).await.unwrap();
    store.issue(req("carol", "c"), &Origin::companion()).await.unwrap();
    let (events, _) = store.audit_events(Some("carol"), None, 0, 100).await.unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["issue", "issue", "evict", "issue"]);
    assert_eq!((events[2].id.as_str(), events[2].actor.as_str()), (first.id.as_str(), "companion"));
    // a rotation's sweep: one rekey event per token moved
    let keys = multitokens_core::keyring::HashKeys::new(Some(b"k2"), &[b"k1"]).unwrap();
    let rotating = crate::store_with_keys(&redis.url(), policy(), keys);
    assert_eq!(rotating.rekey_all(false, &Origin::companion()).await.unwrap().rekeyed, 2);
    let (events, _) = store.audit_events(Some("carol"), None, 0, 100).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.event == "rekey").count(), 2);

    let cluster = RedisCluster::start();
    let store = store_at(&cluster.url(), policy(), Some("k1"));
    for i in 0..10 {
        let t = store.issue(req(&format!("u{i}"), "a"), &Origin::companion()).await.unwrap().token;
        store.revoke(&t, &Origin::companion()).await.unwrap();
    }
    let (events, _) = store.audit_events(None, None, 0, 100).await.unwrap();
    assert_eq!(events.len(), 20);
    assert_eq!(store.audit_events(Some("u3"), None, 0, 100).await.unwrap().0.len(), 2);
}

#[test]
fn the_cli_prints_and_follows_the_trail() {
    let redis = RedisServer::start();
    let env = [("MULTITOKENS_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = |args: &[&str]| {
        let out = companion(args, &env, None);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let token = run(&["issue", "--user", "dave", "--device", "laptop"]).trim().to_string();
    run(&["issue", "--user", "erin"]);
    run(&["revoke", &token]);
    let lines: Vec<Value> =
        run(&["events", "--user", "dave", "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["event"].clone(), lines[0]["actor"].clone(), lines[1]["event"].clone()),
        (json!("issue"), json!("cli"), json!("revoke"))
    );
    let text = run(&["events"]);
    assert_eq!(text.lines().count(), 3);
    assert!(text.lines().next().unwrap().split('\t').collect::<Vec<_>>()[1..3] == ["issue", "dave"], "{text}");
    assert_eq!(run(&["events", "--since", "2000-01-01T00:00:00Z", "--limit", "1"]).lines().count(), 1);
    let out = companion(&["events", "--since", "soon"], &env, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("since"));
    // --follow prints what happens next
    let mut follow = std::process::Command::new(crate::support::companion_bin())
        .args(["events", "--follow", "--json", "--user", "frank"])
        .env("MULTITOKENS_REDIS_URL", redis.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    run(&["issue", "--user", "frank"]);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(follow.stdout.take().unwrap()), &mut line).unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!((event["event"].clone(), event["user"].clone()), (json!("issue"), json!("frank")));
}
