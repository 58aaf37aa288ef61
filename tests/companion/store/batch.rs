//! A batch of lookups (`TokenStore::lookup_many`, behind `POST /v1/internal/lookups`): read from
//! one node in one pipeline, from a cluster one by one; each answered as a lookup on its own.

use crate::support::{RedisCluster, RedisServer};
use crate::{policy, store_at, store_with_keys};
use multitokens::audit::Origin;
use multitokens::store::{IssueRequest, Lookup, TokenStore};
use multitokens_core::digest::TokenHasher;
use multitokens_core::keyring::HashKeys;
use multitokens_core::token::RoutingTag;
use redis::Commands;

fn req(user: &str, device: &str) -> IssueRequest {
    IssueRequest { user: user.into(), device: Some(device.into()), ..Default::default() }
}

/// The lookup an edge sends for `token`: every digest it may be stored under, re-keyed on use.
fn lookup<'a>(store: &TokenStore, token: &str, origin: &'a Origin) -> Lookup<'a> {
    let (tag, digests) = store.digests_of(token).unwrap();
    Lookup { tag, digests, rekey: Some(origin) }
}

/// Who each lookup of a batch found, in order (`None`: not live).
async fn users(store: &TokenStore, lookups: &[Lookup<'_>]) -> Vec<Option<(String, usize)>> {
    let found = store.lookup_many(lookups).await.unwrap();
    found.into_iter().map(|f| f.map(|f| (f.info.user, f.stored_under))).collect()
}

#[tokio::test]
async fn a_batch_in_one_pipeline_answers_each_lookup_as_it_would_be_answered_alone() {
    let redis = RedisServer::start();
    let old = store_at(&redis.url(), policy(), Some("key-2025"));
    let store = store_with_keys(&redis.url(), policy(), HashKeys::new(Some(b"key-2026"), &[b"key-2025"]).unwrap());
    let origin = Origin::companion();
    let ann = store.issue(req("ann", "phone"), &origin).await.unwrap().token;
    let ben = store.issue(req("ben", "laptop"), &origin).await.unwrap().token;
    let carol = store.issue(req("carol", "tablet"), &origin).await.unwrap().token;
    let dave = old.issue(req("dave", "phone"), &origin).await.unwrap().token; // under the previous key
    store.revoke(&ben, &origin).await.unwrap();
    // carol's record rewritten in Redis to another user: its seal no longer verifies
    let mut conn = redis.conn();
    let (tag, digest) = store.digest_of(&carol).unwrap();
    let carol_key = store.layout().record_key(tag, &digest);
    let stored: String = conn.get(&carol_key).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&carol_key)
        .arg(stored.replace(r#""user":"carol""#, r#""user":"ann""#))
        .arg("KEEPTTL")
        .query(&mut conn)
        .unwrap();
    let unknown = Lookup { tag: RoutingTag::for_user("nobody"), digests: vec![digest], rekey: None };

    let batch = [
        lookup(&store, &ann, &origin),
        unknown,
        lookup(&store, &ben, &origin),
        lookup(&store, &carol, &origin),
        lookup(&store, &dave, &origin),
    ];
    let expected = [Some(("ann".to_string(), 0)), None, None, None, Some(("dave".to_string(), 0))];
    assert_eq!(users(&store, &batch).await, expected);
    assert_eq!(store.tampered_records(), 1, "the rewritten record is refused and counted");
    // dave's record was found under the previous key and moved to the current one, as alone
    let (dave_tag, _) = store.digest_of(&dave).unwrap();
    let old_key = store.layout().record_key(dave_tag, &TokenHasher::new(Some(b"key-2025")).digest(&dave));
    assert!(!conn.exists::<_, bool>(&old_key).unwrap(), "re-keyed on use");
    // each answer is the single lookup's
    for (lookup, expected) in batch.iter().zip(&expected) {
        let alone = store.lookup_digests(lookup.tag, &lookup.digests, lookup.rekey).await.unwrap();
        assert_eq!(alone.map(|f| (f.info.user, f.stored_under)).as_ref(), expected.as_ref());
    }
    // Redis forgot its scripts (a restart, SCRIPT FLUSH): the batch loads them and is answered
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    assert_eq!(users(&store, &batch).await, expected);
    assert!(store.lookup_many(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_across_a_clusters_slots_is_answered_in_order() {
    let cluster = RedisCluster::start();
    let store = store_at(&cluster.url(), policy(), Some("cluster-pepper"));
    let origin = Origin::companion();
    let mut tokens = Vec::new();
    for i in 0..24 {
        tokens.push(store.issue(req(&format!("user-{i}"), "phone"), &origin).await.unwrap().token);
    }
    store.revoke(&tokens[5], &origin).await.unwrap();
    let batch: Vec<Lookup> = tokens.iter().map(|t| lookup(&store, t, &origin)).collect();
    let expected: Vec<_> = (0..24).map(|i| (i != 5).then(|| (format!("user-{i}"), 0))).collect();
    assert_eq!(users(&store, &batch).await, expected);
}
