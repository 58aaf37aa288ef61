//! Least privilege: the shipped Redis ACL users (envoy/redis/users.acl), created with
//! `ACL SETUSER` on a real redis-server, let the companion do everything it does and nothing else.
//! (The gateway user is driven by the Redis-callout filter in tests/redis_callouts.rs.)

use crate::support::RedisServer;
use crate::{policy, store_at};
use multitokens::audit::Origin;
use multitokens::store::IssueRequest;
use std::time::Duration;

fn req(user: &str, device: &str) -> IssueRequest {
    IssueRequest { user: user.into(), device: Some(device.into()), ..Default::default() }
}

/// The error Redis answers a command with, as user `user`.
fn refused(redis: &RedisServer, user: &str, password: &str, args: &[&str]) -> String {
    let mut conn = redis::Client::open(redis.url_as(user, password)).unwrap().get_connection().unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<redis::Value>(&mut conn) {
        Ok(v) => panic!("{user} may run {args:?}: {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn the_companion_user_can_do_everything_the_companion_does_and_nothing_else() {
    let redis = RedisServer::start();
    assert_eq!(redis.apply_shipped_acl(), ["mt-companion", "mt-gateway", "mt-gateway-refresh"]);
    let url = redis.url_as("mt-companion", "change-me-companion");
    let store = store_at(&url, policy(), Some("acl-pepper"));
    assert_eq!(store.check_hash_key().await.unwrap(), multitokens::store::KeyCheck::Matches);
    // every operation, every script
    let a = store.issue(req("alice", "laptop"), &Origin::companion()).await.unwrap();
    let b = store.issue(req("alice", "phone"), &Origin::companion()).await.unwrap();
    let c = store.issue(req("alice", "tablet"), &Origin::companion()).await.unwrap();
    assert!(a.first && b.ttl_reset == 1);
    assert_eq!(store.whoami(&a.token).await.unwrap().user, "alice");
    let (tag, digest) = store.digest_of(&b.token).unwrap();
    store.refresh(tag, &digest, multitokens_core::ttl::TokenTtl::Seconds(3600)).await.unwrap();
    assert_eq!(store.list("alice").await.unwrap().len(), 3);
    store.revoke_by_id("alice", &c.id, &Origin::companion()).await.unwrap();
    store.revoke(&b.token, &Origin::companion()).await.unwrap();
    assert_eq!(store.revoke_all("alice", Some(&a.token), &Origin::companion()).await.unwrap().revoked, 0);
    assert_eq!(store.revoke_all("alice", None, &Origin::companion()).await.unwrap().revoked, 1);
    let page = store.revocations_after(Some("0")).await.unwrap();
    assert_eq!(page.digests.len(), 3);
    let mut dedicated = store.redis().dedicated(Duration::from_millis(200)).await.unwrap();
    assert_eq!(store.feed_entries_after(&mut dedicated, "0-0", Duration::from_millis(10)).await.unwrap().len(), 3);
    store.write_edges(&[("edge-1".into(), r#"{"acked":"0-0","due_ms":1}"#.into())]).await.unwrap();
    store.read_edges().await.unwrap();
    store.forget_edges(u64::MAX).await.unwrap();
    store.publish_outboxes_announced_before(multitokens::clock::now_ms()).await.unwrap();
    store.publish_unindexed_outboxes().await.unwrap();
    // a rotation's sweep, with this user
    let bob = store.issue(req("bob", "a"), &Origin::companion()).await.unwrap().token;
    let keys = multitokens_core::keyring::HashKeys::new(Some(b"acl-pepper-2"), &[b"acl-pepper"]).unwrap();
    let rotating = crate::store_with_keys(&url, policy(), keys);
    assert_eq!(rotating.rekey_all(false, &Origin::companion()).await.unwrap().rekeyed, 1);
    assert_eq!(rotating.whoami(&bob).await.unwrap().user, "bob");

    // nothing outside its namespace, nothing administrative
    for args in [
        &["GET", "other:key"][..],
        &["SET", "session:1", "x"],
        &["FLUSHALL"],
        &["CONFIG", "GET", "*"],
        &["KEYS", "*"],
        &["ACL", "LIST"],
        &["EVAL", "return redis.call('GET', 'other:key')", "0"],
    ] {
        let e = refused(&redis, "mt-companion", "change-me-companion", args);
        assert!(e.contains("NOPERM") || e.contains("permission") || e.contains("can't access"), "{args:?}: {e}");
    }
}

#[test]
fn serve_runs_as_the_companion_user() {
    let redis = RedisServer::start();
    redis.apply_shipped_acl();
    let url = redis.url_as("mt-companion", "change-me-companion");
    let companion = crate::support::CompanionServer::start(
        &url,
        &[
            ("MULTITOKENS_ADMIN_KEY", "acl-admin-key-0123456789"),
            ("MULTITOKENS_HASH_KEY", "acl-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"),
        ],
    );
    let agent = crate::support::http_agent();
    let base = format!("http://127.0.0.1:{}", companion.port);
    assert_eq!(crate::support::http_call(&agent, "GET", &format!("{base}/readyz"), &[], None).status, 200);
    let auth = [("authorization", "Bearer acl-admin-key-0123456789")];
    let issued = crate::support::http_call(
        &agent,
        "POST",
        &format!("{base}/v1/tokens"),
        &auth,
        Some(serde_json::json!({"user": "alice"})),
    );
    assert_eq!(issued.status, 201, "{}", issued.body);
    for suspended in [true, false] {
        let body = Some(serde_json::json!({"suspended": suspended}));
        let r = crate::support::http_call(&agent, "PATCH", &format!("{base}/v1/users/alice/tokens"), &auth, body);
        assert_eq!((r.status, r.body["changed"].as_u64()), (200, Some(1)), "{}", r.body);
    }
    let out = crate::support::http_call(&agent, "DELETE", &format!("{base}/v1/users/alice/tokens"), &auth, None);
    assert_eq!((out.status, out.body["revoked"].as_u64()), (200, Some(1)), "{}", out.body);
}
