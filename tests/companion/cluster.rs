//! The store against a real 3-node Redis Cluster: users spread over the slots.

use crate::support::RedisCluster;
use crate::{policy, store_at};
use multitokens::audit::Origin;
use multitokens::error::StoreError;
use multitokens::store::IssueRequest;

#[tokio::test]
async fn every_operation_works_across_the_slots() {
    let cluster = RedisCluster::start();
    let store = store_at(&cluster.url(), policy(), Some("cluster-pepper"));
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let mut tokens = Vec::new();
    for user in &users {
        let a = store
            .issue(
                IssueRequest { user: user.clone(), device: Some("a".into()), ..Default::default() },
                &Origin::companion(),
            )
            .await
            .unwrap();
        let b = store
            .issue(
                IssueRequest { user: user.clone(), device: Some("b".into()), ..Default::default() },
                &Origin::companion(),
            )
            .await
            .unwrap();
        assert!(a.first && !b.first);
        tokens.push((user.clone(), a.token, b.token));
    }
    // the keys really are spread over all three masters
    for node in &cluster.nodes {
        let size: i64 = node.cli(&["DBSIZE"]).trim().parse().unwrap();
        assert!(size > 0, "node {} holds no keys", node.port);
    }
    for (user, a, b) in &tokens {
        assert_eq!(&store.whoami(a).await.unwrap().user, user);
        assert_eq!(store.list(user).await.unwrap().len(), 2);
        store.revoke(a, &Origin::companion()).await.unwrap();
        assert!(matches!(store.whoami(a).await, Err(StoreError::InvalidToken)));
        assert!(store.whoami(b).await.is_ok());
    }
    for (user, _, b) in tokens.iter().take(20) {
        let c = store
            .issue(
                IssueRequest { user: user.clone(), device: Some("c".into()), ..Default::default() },
                &Origin::companion(),
            )
            .await
            .unwrap();
        assert_eq!(store.revoke_all(user, Some(&c.token), &Origin::companion()).await.unwrap().revoked, 1);
        assert!(store.whoami(b).await.is_err());
        assert_eq!(store.revoke_all(user, None, &Origin::companion()).await.unwrap().revoked, 1);
        assert!(store.whoami(&c.token).await.is_err());
        assert!(store.list(user).await.unwrap().is_empty());
    }
    for (user, _, b) in tokens.iter().skip(20) {
        assert_eq!(&store.whoami(b).await.unwrap().user, user, "other users untouched");
        // suspend and resume: one script over the user's records, in their slot, published to the feed
        let suspended = store.set_suspended(user, None, true, &Origin::companion()).await.unwrap();
        assert!(suspended.revoked == 1 && suspended.feed_position.is_some());
        assert!(matches!(store.whoami(b).await, Err(StoreError::InvalidToken)));
        assert!(store.list(user).await.unwrap()[0].suspended);
        assert_eq!(store.set_suspended(user, None, false, &Origin::companion()).await.unwrap().revoked, 1);
        assert_eq!(&store.whoami(b).await.unwrap().user, user);
    }
}

#[tokio::test]
async fn outboxes_left_behind_are_found_on_every_master() {
    let cluster = RedisCluster::start();
    let store = store_at(&cluster.url(), policy(), None);
    let users: Vec<String> = (0..12).map(|i| format!("left-{i}")).collect();
    for user in &users {
        store.issue(IssueRequest { user: user.clone(), ..Default::default() }, &Origin::companion()).await.unwrap();
        assert_eq!(crate::store::revoke_all_then_die(&store, user).await.len(), 1);
    }
    let now = multitokens::clock::now_ms();
    assert_eq!(
        store.publish_outboxes_announced_before(now).await.unwrap(),
        users.len(),
        "every master's outboxes were published"
    );
    let page = store.revocations_after(Some("0")).await.unwrap();
    assert_eq!(page.digests.len(), users.len());
}

#[tokio::test]
async fn a_revocation_reports_its_feed_position_and_the_fan_out_follows_it() {
    let cluster = RedisCluster::start();
    let store = store_at(&cluster.url(), policy(), None);
    let t = store
        .issue(IssueRequest { user: "pos".into(), ..Default::default() }, &Origin::companion())
        .await
        .unwrap()
        .token;
    let revocation = store.revoke(&t, &Origin::companion()).await.unwrap();
    let position = revocation.feed_position.expect("published: a feed position");
    let page = store.revocations_after(Some("0")).await.unwrap();
    assert_eq!(page.cursor, position);
    let mut conn = store.redis().dedicated(std::time::Duration::from_millis(300)).await.unwrap();
    let entries = store.feed_entries_after(&mut conn, "0-0", std::time::Duration::from_millis(300)).await.unwrap();
    assert_eq!(entries.len(), 1, "the blocking read sees the feed on a cluster too");
}

#[tokio::test]
async fn the_store_follows_a_failover() {
    let mut cluster = RedisCluster::start_with_replicas();
    let store = store_at(&cluster.url(), policy(), None);
    let users: Vec<String> = (0..12).map(|i| format!("fo-{i}")).collect();
    for user in &users {
        store.issue(IssueRequest { user: user.clone(), ..Default::default() }, &Origin::companion()).await.unwrap();
    }
    let master = cluster.master_of("mt:revoked");
    cluster.fail_over(master);
    // the store built before the failover reaches the promoted replica (after a retry or two)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for user in &users {
        while let Err(e) =
            store.issue(IssueRequest { user: user.clone(), ..Default::default() }, &Origin::companion()).await
        {
            assert!(std::time::Instant::now() < deadline, "never recovered: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    let revocation = store.revoke_all("fo-0", None, &Origin::companion()).await.unwrap();
    assert_eq!(revocation.revoked, 2);
    assert!(revocation.feed_position.is_some(), "the feed is served by the promoted replica");
}
