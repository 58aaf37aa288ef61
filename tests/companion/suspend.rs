//! Suspend and resume against a real redis-server: a suspended token is refused as a revoked one
//! is, stays in the device list marked, is published to the feed, and comes back on resume; the
//! flag is under the seal; the audit trail has both.

use crate::support::RedisServer;
use crate::{policy, store_at};
use multitokens::audit::Origin;
use multitokens::error::StoreError;
use multitokens::store::IssueRequest;
use redis::Commands;

fn req(user: &str, device: &str) -> IssueRequest {
    IssueRequest { user: user.into(), device: Some(device.into()), ..Default::default() }
}

#[tokio::test]
async fn suspend_refuses_resume_accepts_and_the_list_shows_which() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), Some("suspend-pepper"));
    let o = Origin::companion();
    let laptop = store.issue(req("alice", "laptop"), &o).await.unwrap();
    let phone = store.issue(req("alice", "phone"), &o).await.unwrap();

    // one device by id: refused, the other still accepted, both listed
    let change = store.set_suspended("alice", Some(&laptop.id), true, &o).await.unwrap();
    assert_eq!(change.revoked, 1);
    assert!(change.feed_position.is_some(), "published to the feed: the edges drop what they cached");
    assert!(matches!(store.whoami(&laptop.token).await, Err(StoreError::InvalidToken)));
    assert_eq!(store.whoami(&phone.token).await.unwrap().device, "phone");
    let listed: Vec<(String, bool)> =
        store.list("alice").await.unwrap().into_iter().map(|t| (t.device, t.suspended)).collect();
    assert_eq!(listed, [("laptop".to_string(), true), ("phone".to_string(), false)]);
    // again: nothing changes; an unknown id is an error
    assert_eq!(store.set_suspended("alice", Some(&laptop.id), true, &o).await.unwrap().revoked, 0);
    assert!(matches!(
        store.set_suspended("alice", Some("0000000000000000"), true, &o).await,
        Err(StoreError::NotFound(_))
    ));

    // every device of the user, then all back; the TTL is kept throughout
    let ttl_before: i64 = redis.conn().ttl(store.layout().index_key("alice")).unwrap();
    assert_eq!(store.set_suspended("alice", None, true, &o).await.unwrap().revoked, 1, "only the phone changed");
    assert!(matches!(store.whoami(&phone.token).await, Err(StoreError::InvalidToken)));
    assert_eq!(store.set_suspended("alice", None, false, &o).await.unwrap().revoked, 2);
    assert_eq!(store.whoami(&laptop.token).await.unwrap().user, "alice");
    assert_eq!(store.whoami(&phone.token).await.unwrap().user, "alice");
    let ttl_after: i64 = redis.conn().ttl(store.layout().index_key("alice")).unwrap();
    assert!((ttl_before - ttl_after).abs() <= 2, "{ttl_before} {ttl_after}");

    // a revoke wins over a suspended state: the token is gone, not resumable
    store.set_suspended("alice", Some(&phone.id), true, &o).await.unwrap();
    store.revoke_by_id("alice", &phone.id, &o).await.unwrap();
    assert!(matches!(store.set_suspended("alice", Some(&phone.id), false, &o).await, Err(StoreError::NotFound(_))));

    let (events, _) = store.audit_events(Some("alice"), None, 0, 100).await.unwrap();
    let seen: Vec<(&str, Option<u64>)> = events
        .iter()
        .filter(|e| e.event == "suspend" || e.event == "resume")
        .map(|e| (e.event.as_str(), e.count))
        .collect();
    assert_eq!(seen, [("suspend", Some(1)), ("suspend", Some(1)), ("resume", Some(2)), ("suspend", Some(1))]);
}

#[tokio::test]
async fn lifting_a_suspension_in_redis_without_the_key_is_tampering() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), Some("suspend-pepper"));
    let o = Origin::companion();
    let t = store.issue(req("mallory", "laptop"), &o).await.unwrap();
    store.set_suspended("mallory", None, true, &o).await.unwrap();
    let mut conn = redis.conn();
    let keys: Vec<String> = conn.keys("mt:*:t:*").unwrap();
    let key = keys.iter().find(|k| conn.get::<_, String>(k.as_str()).unwrap().contains("\"suspended\":true")).unwrap();
    let stored: String = conn.get(key).unwrap();
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(stored.replace(",\"suspended\":true", ""))
        .arg("KEEPTTL")
        .query(&mut conn)
        .unwrap();
    assert!(matches!(store.whoami(&t.token).await, Err(StoreError::InvalidToken)));
    assert_eq!(store.tampered_records(), 1);
}
