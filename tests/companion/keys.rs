//! Sealed records and hash key rotation, against a real redis-server and a real Redis Cluster.

use crate::support::{RedisCluster, RedisServer};
use crate::{policy, store_at, store_with_keys};
use multitokens::audit::Origin;
use multitokens::error::StoreError;
use multitokens::store::{IssueRequest, RekeyReport, TokenStore};
use multitokens_core::digest::TokenHasher;
use multitokens_core::keyring::HashKeys;
use multitokens_core::record::TokenRecord;
use redis::Commands;

fn req(user: &str, device: &str) -> IssueRequest {
    IssueRequest { user: user.into(), device: Some(device.into()), ..Default::default() }
}

/// A store whose current hash key is `current`, still accepting `previous`.
/// A store after a rotation: `current`, and `retired` only for the MACs of the tokens minted under it.
fn retired_store(url: &str, current: &str, retired: &str) -> TokenStore {
    store_with_keys(url, policy(), HashKeys::single(Some(current.as_bytes())).retiring(&[retired.as_bytes()]).unwrap())
}

fn rotating_store(url: &str, current: &str, previous: &[&str]) -> TokenStore {
    let previous: Vec<&[u8]> = previous.iter().map(|k| k.as_bytes()).collect();
    store_with_keys(url, policy(), HashKeys::new(Some(current.as_bytes()), &previous).unwrap())
}

/// Rewrites a token's record as a release before sealing wrote it: the same fields, no seal.
fn as_written_before_sealing(conn: &mut redis::Connection, key: &str) {
    let plain = TokenRecord::from_json(conn.get::<_, String>(key).unwrap().as_bytes()).unwrap().to_json().unwrap();
    let _: () = redis::cmd("SET").arg(key).arg(plain).arg("KEEPTTL").query(conn).unwrap();
}

/// Rewrites a token's record as records were before they kept the token's hash (sealed with
/// `pepper`): only its next use can re-key it.
fn as_written_before_token_hashes(conn: &mut redis::Connection, key: &str, token: &str, pepper: &str) {
    let mut record = TokenRecord::from_json(conn.get::<_, String>(key).unwrap().as_bytes()).unwrap();
    record.token_hash = None;
    let hasher = TokenHasher::new(Some(pepper.as_bytes()));
    let resealed = hasher.seal(&hasher.digest(token), record.to_json().unwrap());
    let _: () = redis::cmd("SET").arg(key).arg(resealed).arg("KEEPTTL").query(conn).unwrap();
}

fn record_key(store: &TokenStore, token: &str, key: &str) -> String {
    let (tag, _) = store.digest_of(token).unwrap();
    store.layout().record_key(tag, &TokenHasher::new(Some(key.as_bytes())).digest(token))
}

#[tokio::test]
async fn a_record_rewritten_in_redis_is_refused_counted_and_never_honoured() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), Some("seal-pepper"));
    let mallory = store.issue(req("mallory", "laptop"), &Origin::companion()).await.unwrap();
    let admin = store
        .issue(IssueRequest { scopes: vec!["admin".into()], ..req("root", "console") }, &Origin::companion())
        .await
        .unwrap();
    let mut conn = redis.conn();
    let key = record_key(&store, &mallory.token, "seal-pepper");
    let stored: String = conn.get(&key).unwrap();
    assert!(stored.contains(r#""seal":""#), "records are sealed: {stored}");

    // someone with write access rewrites mallory's record to another user with a scope
    let rewritten =
        stored.replace(r#""user":"mallory""#, r#""user":"root""#).replace(r#""scopes":[]"#, r#""scopes":["admin"]"#);
    assert_ne!(rewritten, stored);
    let _: () = redis::cmd("SET").arg(&key).arg(&rewritten).arg("KEEPTTL").query(&mut conn).unwrap();
    assert!(matches!(store.whoami(&mallory.token).await, Err(StoreError::InvalidToken)));
    assert_eq!(store.tampered_records(), 1);
    // or copies root's sealed record onto mallory's digest: the seal names the digest
    let root_record: String = conn.get(record_key(&store, &admin.token, "seal-pepper")).unwrap();
    let _: () = redis::cmd("SET").arg(&key).arg(&root_record).arg("KEEPTTL").query(&mut conn).unwrap();
    assert!(matches!(store.whoami(&mallory.token).await, Err(StoreError::InvalidToken)));
    // or strips the seal off a record
    let unsealed = TokenRecord::from_json(rewritten.as_bytes()).unwrap().to_json().unwrap();
    let _: () = redis::cmd("SET").arg(&key).arg(&unsealed).arg("KEEPTTL").query(&mut conn).unwrap();
    assert!(matches!(store.whoami(&mallory.token).await, Err(StoreError::InvalidToken)));
    assert_eq!(store.tampered_records(), 3);
    // listing skips it too; the untouched record is still honoured
    assert!(store.list("mallory").await.unwrap().is_empty());
    assert_eq!(store.tampered_records(), 4);
    assert_eq!(store.whoami(&admin.token).await.unwrap().scopes, vec!["admin"]);
    // the user can still log it out
    assert_eq!(store.revoke_all("mallory", None, &Origin::companion()).await.unwrap().revoked, 1);
    // the trail (and the record.tampered webhook) has it once, however often it was refused,
    // under its id and without the user the rewritten record claims
    let (events, _) = store.audit_events(None, None, 0, 100).await.unwrap();
    let tampered: Vec<_> = events.iter().filter(|e| e.event == "tampered").collect();
    assert_eq!(tampered.len(), 1, "{events:?}");
    assert_eq!((tampered[0].id.as_str(), tampered[0].user.as_str()), (mallory.id.as_str(), ""));
}

#[tokio::test]
async fn rotating_the_hash_key_logs_nobody_out() {
    let redis = RedisServer::start();
    let old = store_at(&redis.url(), policy(), Some("key-2025"));
    let tokens: Vec<String> = crate::store::futures_tokens(&old, "alice", 3).await;
    let bob = old.issue(req("bob", "phone"), &Origin::companion()).await.unwrap().token;
    // a record without the token's hash (as written before records kept it): re-keyed on use only
    let carol = old.issue(req("carol", "tablet"), &Origin::companion()).await.unwrap().token;
    let carol_key = record_key(&old, &carol, "key-2025");
    let mut conn = redis.conn();
    as_written_before_token_hashes(&mut conn, &carol_key, &carol, "key-2025");

    // the new key, the old one still accepted
    let rotating = rotating_store(&redis.url(), "key-2026", &["key-2025"]);
    assert_eq!(rotating.check_hash_key().await.unwrap(), multitokens::store::KeyCheck::Matches);
    // used: found under the old digest, re-keyed in place, and still one token of the user
    let pttl_before: i64 = conn.pttl(record_key(&old, &bob, "key-2025")).unwrap();
    assert_eq!(rotating.whoami(&bob).await.unwrap().user, "bob");
    assert!(!conn.exists::<_, bool>(record_key(&old, &bob, "key-2025")).unwrap(), "moved away from the old digest");
    let pttl_after: i64 = conn.pttl(record_key(&old, &bob, "key-2026")).unwrap();
    assert!(pttl_after > 0 && pttl_after <= pttl_before, "the TTL moved with it: {pttl_before} -> {pttl_after}");
    assert_eq!(rotating.list("bob").await.unwrap().len(), 1);
    // the move is published like a revocation of the old digest: filters drop what they cached
    let feed = rotating.revocations_after(Some("0")).await.unwrap();
    assert_eq!(feed.digests, vec![TokenHasher::new(Some(b"key-2025")).digest(&bob).to_hex()]);
    assert_eq!(rotating.whoami(&carol).await.unwrap().user, "carol", "re-keyed on use without the token's hash");
    // the sweep re-keys the rest: alice's three
    let report = rotating.rekey_all(false, &Origin::companion()).await.unwrap();
    assert_eq!(report, RekeyReport { scanned: 5, current: 2, rekeyed: 3, ..Default::default() });
    assert_eq!(
        rotating.rekey_all(false, &Origin::companion()).await.unwrap().current,
        5,
        "a second sweep has nothing to do"
    );
    // the old key retired: everyone still logged in, every operation works
    let new = retired_store(&redis.url(), "key-2026", "key-2025");
    for t in tokens.iter().chain([&bob, &carol]) {
        assert!(new.whoami(t).await.is_ok());
    }
    assert_eq!(new.list("alice").await.unwrap().len(), 3);
    new.revoke(&tokens[0], &Origin::companion()).await.unwrap();
    assert_eq!(new.revoke_all("alice", Some(&tokens[1]), &Origin::companion()).await.unwrap().revoked, 1);
    assert!(new.whoami(&tokens[1]).await.is_ok() && new.whoami(&tokens[2]).await.is_err());
    assert_eq!(new.tampered_records(), 0);
}

#[tokio::test]
async fn a_token_never_used_during_the_rotation_and_without_its_hash_is_reported_by_the_sweep() {
    let redis = RedisServer::start();
    let old = store_at(&redis.url(), policy(), Some("k1"));
    let t = old.issue(req("dan", "a"), &Origin::companion()).await.unwrap().token;
    let key = record_key(&old, &t, "k1");
    let mut conn = redis.conn();
    as_written_before_token_hashes(&mut conn, &key, &t, "k1");
    // an unsealed one (written before sealing): sealed by the sweep only when asked
    let u = old.issue(req("erin", "a"), &Origin::companion()).await.unwrap().token;
    let ukey = record_key(&old, &u, "k1");
    as_written_before_sealing(&mut conn, &ukey);
    assert!(old.whoami(&u).await.is_err(), "unsealed: refused");

    let rotating = rotating_store(&redis.url(), "k2", &["k1"]);
    let report = rotating.rekey_all(false, &Origin::companion()).await.unwrap();
    assert_eq!((report.rekeyed_on_use_only, report.unsealed_or_tampered), (1, 1));
    assert_eq!(
        report.unsealed_or_tampered_ids,
        vec![rotating.digest_of(&u).map(|_| TokenHasher::new(Some(b"k1")).digest(&u).public_id()).unwrap()]
    );
    assert!(rotating.whoami(&t).await.is_ok(), "still accepted under the previous key");
    let sealed = old.rekey_all(true, &Origin::companion()).await.unwrap();
    assert_eq!(sealed.sealed, 1);
    assert_eq!(old.whoami(&u).await.unwrap().user, "erin");
}

#[tokio::test]
async fn rotation_and_the_sweep_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let old = store_at(&cluster.url(), policy(), Some("cluster-2025"));
    let mut tokens = Vec::new();
    for i in 0..30usize {
        tokens.push(old.issue(req(&format!("user-{i}"), "a"), &Origin::companion()).await.unwrap().token);
    }
    let rotating = rotating_store(&cluster.url(), "cluster-2026", &["cluster-2025"]);
    for t in &tokens[..5] {
        assert!(rotating.whoami(t).await.is_ok());
    }
    let report = rotating.rekey_all(false, &Origin::companion()).await.unwrap();
    assert_eq!((report.scanned, report.current, report.rekeyed), (30, 5, 25));
    let new = retired_store(&cluster.url(), "cluster-2026", "cluster-2025");
    // log out other devices by the kept token's id, on every shard
    for (i, token) in tokens.iter_mut().enumerate().take(5) {
        let user = format!("user-{i}");
        let extra = new.issue(req(&user, "b"), &Origin::companion()).await.unwrap();
        let origin = multitokens::audit::Origin::new(multitokens::audit::Actor::Admin);
        assert_eq!(new.revoke_others_by_id(&user, &extra.id, &origin).await.unwrap().revoked, 1);
        assert!(new.whoami(token).await.is_err() && new.whoami(&extra.token).await.is_ok());
        *token = extra.token;
    }
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(new.whoami(t).await.unwrap().user, format!("user-{i}"));
        assert_eq!(new.revoke_all(&format!("user-{i}"), None, &Origin::companion()).await.unwrap().revoked, 1);
    }
}

#[tokio::test]
async fn an_upgrade_from_unsealed_records_logs_nobody_out() {
    let redis = RedisServer::start();
    let old = store_at(&redis.url(), policy(), Some("upgrade-key"));
    let t = old.issue(req("ivan", "a"), &Origin::companion()).await.unwrap().token;
    let key = record_key(&old, &t, "upgrade-key");
    let mut conn = redis.conn();
    as_written_before_sealing(&mut conn, &key);
    assert!(old.whoami(&t).await.is_err(), "refused once sealing is in force");
    let upgrading =
        store_with_keys(&redis.url(), policy(), HashKeys::single(Some(b"upgrade-key")).accepting_unsealed(true));
    assert_eq!(upgrading.whoami(&t).await.unwrap().user, "ivan", "honoured during the upgrade");
    // a broken seal is refused even then
    let other = old.issue(req("judy", "a"), &Origin::companion()).await.unwrap().token;
    let other_key = record_key(&old, &other, "upgrade-key");
    let forged = conn.get::<_, String>(&other_key).unwrap().replace("judy", "ivan");
    let _: () = redis::cmd("SET").arg(&other_key).arg(&forged).arg("KEEPTTL").query(&mut conn).unwrap();
    assert!(upgrading.whoami(&other).await.is_err());
    // the sweep seals what has no seal; then the flag can go
    assert_eq!(upgrading.rekey_all(true, &Origin::companion()).await.unwrap().sealed, 1);
    assert_eq!(old.whoami(&t).await.unwrap().user, "ivan");
}

/// The upgrade to signed records, nobody logged out: companions sign new records and still honour
/// HMAC-sealed ones while told to; `rekey` signs the rest; then an HMAC seal (which anyone holding
/// a gateway's hash key can make) no longer makes a record valid.
#[tokio::test]
async fn upgrading_to_signed_records_logs_nobody_out_and_then_hmac_seals_are_refused() {
    use multitokens_core::signing::RecordSigner;
    let redis = RedisServer::start();
    let key = b"signing-test-hash-key".as_slice();
    let hmac_only = store_with_keys(&redis.url(), policy(), HashKeys::single(Some(key)));
    let alice = hmac_only.issue(req("alice", "laptop"), &Origin::companion()).await.unwrap().token;
    let (seed, _) = RecordSigner::generate().unwrap();
    let signing = |accept_hmac: bool| {
        let keys = HashKeys::single(Some(key))
            .with_record_keys(Some(RecordSigner::from_text(&seed).unwrap()), vec![])
            .accepting_hmac_seals(accept_hmac);
        store_with_keys(&redis.url(), policy(), keys)
    };
    let upgrading = signing(true);
    assert_eq!(upgrading.whoami(&alice).await.unwrap().user, "alice", "HMAC-sealed: honoured during the upgrade");
    let bob = upgrading.issue(req("bob", "phone"), &Origin::companion()).await.unwrap().token;
    // before the sweep, a companion that requires signatures refuses alice's record as tampered
    assert!(matches!(signing(false).whoami(&alice).await, Err(StoreError::InvalidToken)));
    assert_eq!(signing(false).whoami(&bob).await.unwrap().user, "bob");
    let report = upgrading.rekey_all(false, &Origin::companion()).await.unwrap();
    assert_eq!((report.scanned, report.sealed, report.current), (2, 1, 1), "{report:?}");
    assert_eq!(
        upgrading.rekey_all(false, &Origin::companion()).await.unwrap().current,
        2,
        "a second sweep has nothing to do"
    );
    let signed = signing(false);
    for (t, user) in [(&alice, "alice"), (&bob, "bob")] {
        assert_eq!(signed.whoami(t).await.unwrap().user, user);
    }
    // an HMAC seal made with the hash key alone is refused now, and counted
    let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let record_key = record_key(&signed, &alice, "signing-test-hash-key");
    let stored: String = conn.get(&record_key).unwrap();
    let record = TokenRecord::from_json(stored.as_bytes()).unwrap();
    let hasher = TokenHasher::new(Some(key));
    let resealed =
        hasher.seal(&hasher.digest(&alice), TokenRecord { scopes: vec!["admin".into()], ..record }.to_json().unwrap());
    let _: () = conn.set(&record_key, resealed).unwrap();
    assert!(matches!(signed.whoami(&alice).await, Err(StoreError::InvalidToken)));
    assert!(signed.tampered_records() >= 1);
}
