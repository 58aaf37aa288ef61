//! The store's semantics through the library, against a real redis-server.

use crate::support::RedisServer;
use crate::{policy, store_at};
use multitokens::audit::Origin;
use multitokens::clock::now_ms;
use multitokens::error::StoreError;
use multitokens::settings::MaxTokensPolicy;
use multitokens::store::IssueRequest;
use multitokens_core::ttl::TokenTtl;
use redis::Commands;

mod batch;
mod lifetimes;

fn req(user: &str, device: &str) -> IssueRequest {
    IssueRequest { user: user.into(), device: Some(device.into()), ..Default::default() }
}

fn pttl_of_token(server: &RedisServer, store: &multitokens::store::TokenStore, token: &str) -> i64 {
    let (tag, digest) = store.digest_of(token).unwrap();
    let key = store.layout().record_key(tag, &digest);
    server.conn().pttl(key).unwrap()
}

#[tokio::test]
async fn issue_whoami_and_the_first_flag() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), None);
    let a = store
        .issue(
            IssueRequest {
                user: "alice".into(),
                device: Some("laptop".into()),
                ttl: None,
                scopes: vec!["read".into(), "write".into()],
                bound_to: None,
            },
            &Origin::companion(),
        )
        .await
        .unwrap();
    assert!(a.first, "first login of the user");
    assert_eq!(a.expires_in, Some(30 * 24 * 3600));
    let b = store.issue(req("alice", "phone"), &Origin::companion()).await.unwrap();
    assert!(!b.first, "alice was already logged in elsewhere");
    assert!(store.issue(req("bob", "phone"), &Origin::companion()).await.unwrap().first, "other users are independent");

    let who = store.whoami(&a.token).await.unwrap();
    assert_eq!((who.user.as_str(), who.device.as_str(), who.id.as_str()), ("alice", "laptop", a.id.as_str()));
    assert_eq!(who.scopes, vec!["read", "write"]);
    assert!(who.expires_in.unwrap() > 30 * 24 * 3600 - 5);

    assert_eq!(store.revoke_all("alice", None, &Origin::companion()).await.unwrap().revoked, 2);
    assert!(
        store.issue(req("alice", "laptop"), &Origin::companion()).await.unwrap().first,
        "first again after log out everywhere"
    );
}

#[tokio::test]
async fn damaged_or_foreign_tokens_are_rejected() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), None);
    let t = store.issue(req("carol", "tv"), &Origin::companion()).await.unwrap().token;
    for bad in [
        t[1..].to_string(),
        t[..t.len() - 1].to_string(),
        format!("{t}x"),
        t.replacen("mt_", "xx_", 1),
        String::new(),
        "mt_".to_string(),
        format!("{}{}", &t[..10], if &t[10..11] == "A" { "B" } else { "A" }) + &t[11..],
    ] {
        assert!(matches!(store.whoami(&bad).await, Err(StoreError::InvalidToken)), "accepted {bad:?}");
    }
    // well-formed but never issued: valid checksum, unknown digest
    let unknown = multitokens_core::token::generate("mt", "carol").unwrap();
    assert!(matches!(store.whoami(&unknown).await, Err(StoreError::InvalidToken)));
    assert!(store.whoami(&t).await.is_ok());
}

#[tokio::test]
async fn revoke_logs_out_one_device_only() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), None);
    let laptop = store.issue(req("dave", "laptop"), &Origin::companion()).await.unwrap().token;
    let phone = store.issue(req("dave", "phone"), &Origin::companion()).await.unwrap().token;
    let other = store.issue(req("erin", "laptop"), &Origin::companion()).await.unwrap().token;
    store.revoke(&laptop, &Origin::companion()).await.unwrap();
    assert!(matches!(store.whoami(&laptop).await, Err(StoreError::InvalidToken)));
    assert!(
        matches!(store.revoke(&laptop, &Origin::companion()).await, Err(StoreError::InvalidToken)),
        "second revoke finds nothing"
    );
    assert_eq!(store.whoami(&phone).await.unwrap().device, "phone");
    assert_eq!(store.whoami(&other).await.unwrap().user, "erin");
    let listed: Vec<String> = store.list("dave").await.unwrap().into_iter().map(|t| t.device).collect();
    assert_eq!(listed, vec!["phone"]);
}

#[tokio::test]
async fn revoke_all_and_revoke_others() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), None);
    let tokens: Vec<String> = futures_tokens(&store, "frank", 4).await;
    let bystander = store.issue(req("grace", "laptop"), &Origin::companion()).await.unwrap().token;
    // everywhere else: keep tokens[0]
    assert_eq!(store.revoke_all("frank", Some(&tokens[0]), &Origin::companion()).await.unwrap().revoked, 3);
    assert!(store.whoami(&tokens[0]).await.is_ok());
    for t in &tokens[1..] {
        assert!(store.whoami(t).await.is_err());
    }
    // an --except token of another user is refused and revokes nothing
    assert!(matches!(
        store.revoke_all("frank", Some(&bystander), &Origin::companion()).await,
        Err(StoreError::InvalidToken)
    ));
    assert!(store.whoami(&tokens[0]).await.is_ok());
    // everywhere
    assert_eq!(store.revoke_all("frank", None, &Origin::companion()).await.unwrap().revoked, 1);
    assert!(store.whoami(&tokens[0]).await.is_err());
    assert_eq!(store.revoke_all("frank", None, &Origin::companion()).await.unwrap().revoked, 0);
    assert!(store.whoami(&bystander).await.is_ok(), "other users untouched");
    // the revocation feed carries every revoked digest
    let feed: redis::streams::StreamRangeReply = redis.conn().xrange_all("mt:revoked").unwrap();
    assert_eq!(feed.ids.len(), 4);
}

pub async fn futures_tokens(store: &multitokens::store::TokenStore, user: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(store.issue(req(user, &format!("device-{i}")), &Origin::companion()).await.unwrap().token);
    }
    out
}

#[tokio::test]
async fn immortal_tokens_and_ttl_reset_with_overwrite_none_ttl() {
    let redis = RedisServer::start();
    let mut p = policy();
    p.token_ttl = TokenTtl::Seconds(1000);
    let store = store_at(&redis.url(), p, None);
    let immortal = store
        .issue(
            IssueRequest { user: "hank".into(), ttl: Some(TokenTtl::Never), ..Default::default() },
            &Origin::companion(),
        )
        .await
        .unwrap();
    assert_eq!(immortal.expires_in, None);
    assert_eq!(pttl_of_token(&redis, &store, &immortal.token), -1);
    assert_eq!(store.whoami(&immortal.token).await.unwrap().expires_in, None);
    let short = store
        .issue(
            IssueRequest { user: "hank".into(), ttl: Some(TokenTtl::Seconds(50)), ..Default::default() },
            &Origin::companion(),
        )
        .await
        .unwrap();
    assert!(pttl_of_token(&redis, &store, &short.token) <= 50_000);
    // the next login resets the immortal one to token_ttl (overwrite_none_ttl), and re-arms the
    // short one to the 50 s it was issued with, never stretching it to token_ttl
    store.issue(req("hank", "third"), &Origin::companion()).await.unwrap();
    let pttl = pttl_of_token(&redis, &store, &immortal.token);
    assert!((990_000..=1_000_000).contains(&pttl), "pttl {pttl}");
    let pttl = pttl_of_token(&redis, &store, &short.token);
    assert!((40_000..=50_000).contains(&pttl), "pttl {pttl}");
}

#[tokio::test]
async fn overwrite_none_ttl_false_keeps_immortal_tokens_immortal() {
    let redis = RedisServer::start();
    let mut p = policy();
    p.token_ttl = TokenTtl::Seconds(1000);
    p.overwrite_none_ttl = false;
    let store = store_at(&redis.url(), p, None);
    let immortal = store
        .issue(
            IssueRequest { user: "ivy".into(), ttl: Some(TokenTtl::Never), ..Default::default() },
            &Origin::companion(),
        )
        .await
        .unwrap()
        .token;
    let short = store
        .issue(
            IssueRequest { user: "ivy".into(), ttl: Some(TokenTtl::Seconds(50)), ..Default::default() },
            &Origin::companion(),
        )
        .await
        .unwrap()
        .token;
    store.issue(req("ivy", "third"), &Origin::companion()).await.unwrap();
    assert_eq!(pttl_of_token(&redis, &store, &immortal), -1);
    assert!(
        (40_000..=50_000).contains(&pttl_of_token(&redis, &store, &short)),
        "mortal tokens are re-armed to their own lifetime"
    );
}

#[tokio::test]
async fn reset_disabled_and_reset_to_never() {
    let redis = RedisServer::start();
    let mut p = policy();
    p.reset_ttl_on_login = false;
    let store = store_at(&redis.url(), p.clone(), None);
    let short = store
        .issue(
            IssueRequest { user: "jack".into(), ttl: Some(TokenTtl::Seconds(50)), ..Default::default() },
            &Origin::companion(),
        )
        .await
        .unwrap()
        .token;
    store.issue(req("jack", "b"), &Origin::companion()).await.unwrap();
    assert!(pttl_of_token(&redis, &store, &short) <= 50_000, "no reset when disabled");

    // token_ttl = never: a login re-arms the user's other tokens, but a mortal one stays mortal
    p.reset_ttl_on_login = true;
    p.token_ttl = TokenTtl::Never;
    let store = store_at(&redis.url(), p, None);
    store.issue(req("jack", "c"), &Origin::companion()).await.unwrap();
    assert!((40_000..=50_000).contains(&pttl_of_token(&redis, &store, &short)), "never stretched to immortal");
    let index = store.layout().index_key("jack");
    assert_eq!(redis.conn().pttl::<_, i64>(index).unwrap(), -1, "index of immortal tokens is persistent");
}

#[tokio::test]
async fn limit_with_reject_and_evict_oldest() {
    let redis = RedisServer::start();
    let mut p = policy();
    p.max_tokens_per_user = Some(2);
    let store = store_at(&redis.url(), p.clone(), None);
    let a = store.issue(req("kim", "a"), &Origin::companion()).await.unwrap().token;
    store.issue(req("kim", "b"), &Origin::companion()).await.unwrap();
    assert!(matches!(store.issue(req("kim", "c"), &Origin::companion()).await, Err(StoreError::LimitReached(2))));
    assert_eq!(store.list("kim").await.unwrap().len(), 2);
    store.revoke(&a, &Origin::companion()).await.unwrap();
    store.issue(req("kim", "c"), &Origin::companion()).await.unwrap();

    p.max_tokens_policy = MaxTokensPolicy::EvictOldest;
    let store = store_at(&redis.url(), p, None);
    let d = store.issue(req("kim", "d"), &Origin::companion()).await.unwrap();
    assert!(!d.first);
    let devices: Vec<String> = store.list("kim").await.unwrap().into_iter().map(|t| t.device).collect();
    assert_eq!(devices, vec!["c", "d"], "the oldest (b) was evicted");
    let feed: redis::streams::StreamRangeReply = redis.conn().xrange_all("mt:revoked").unwrap();
    assert_eq!(feed.ids.len(), 2, "revoke of a, eviction of b");
}

#[tokio::test]
async fn expired_tokens_are_invalid_and_pruned() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), None);
    let t = store
        .issue(
            IssueRequest { user: "leo".into(), ttl: Some(TokenTtl::Seconds(1)), ..Default::default() },
            &Origin::companion(),
        )
        .await
        .unwrap()
        .token;
    assert!(store.whoami(&t).await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert!(matches!(store.whoami(&t).await, Err(StoreError::InvalidToken)));
    assert!(store.list("leo").await.unwrap().is_empty());
    assert!(
        store.issue(req("leo", "again"), &Origin::companion()).await.unwrap().first,
        "an expired token does not count"
    );
    let members: Vec<String> = redis.conn().zrange(store.layout().index_key("leo"), 0, -1).unwrap();
    assert_eq!(members.len(), 1, "the expired member was pruned from the index");
}

#[tokio::test]
async fn list_and_revoke_by_id() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), None);
    let a = store.issue(req("mia", "laptop"), &Origin::companion()).await.unwrap();
    let b = store.issue(req("mia", "phone"), &Origin::companion()).await.unwrap();
    let listed = store.list("mia").await.unwrap();
    assert_eq!(listed.iter().map(|t| t.id.clone()).collect::<Vec<_>>(), vec![a.id.clone(), b.id.clone()]);
    store.revoke_by_id("mia", &a.id, &Origin::companion()).await.unwrap();
    assert!(store.whoami(&a.token).await.is_err());
    assert!(store.whoami(&b.token).await.is_ok());
    assert!(matches!(store.revoke_by_id("mia", &a.id, &Origin::companion()).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.revoke_by_id("nobody", &b.id, &Origin::companion()).await, Err(StoreError::NotFound(_))));
    assert!(store.list("nobody").await.unwrap().is_empty());
}

#[tokio::test]
async fn redis_holds_no_token_nor_its_secret() {
    let redis = RedisServer::start();
    for hash_key in [None, Some("pepper-pepper-pepper")] {
        let store = store_at(&redis.url(), policy(), hash_key);
        let mut tokens = Vec::new();
        for i in 0..3 {
            let t = store.issue(req("nina", &format!("d{i}")), &Origin::companion()).await.unwrap().token;
            tokens.push(t);
        }
        store.revoke(&tokens[0], &Origin::companion()).await.unwrap();
        let mut conn = redis.conn();
        let keys: Vec<String> = conn.keys("*").unwrap();
        let mut everything = keys.join("\n");
        for key in &keys {
            let kind: String = redis::cmd("TYPE").arg(key).query(&mut conn).unwrap();
            let dump = match kind.as_str() {
                "string" => conn.get::<_, String>(key).unwrap(),
                "zset" => conn.zrange::<_, Vec<String>>(key, 0, -1).unwrap().join(","),
                "stream" => format!("{:?}", conn.xrange_all::<_, redis::streams::StreamRangeReply>(key).unwrap()),
                other => panic!("unexpected key type {other}"),
            };
            everything.push_str(&dump);
        }
        for t in &tokens {
            let body = &t[3..];
            assert!(!everything.contains(body), "token body found in Redis");
            // the secret part: base64 chars 7..49 of the body carry only random bytes
            assert!(!everything.contains(&body[7..49]), "secret found in Redis");
        }
        redis.cli(&["FLUSHALL"]);
    }
}

#[tokio::test]
async fn the_hash_key_must_match() {
    let redis = RedisServer::start();
    let peppered = store_at(&redis.url(), policy(), Some("server-secret-one"));
    let t = peppered.issue(req("olga", "a"), &Origin::companion()).await.unwrap().token;
    assert!(peppered.whoami(&t).await.is_ok());
    assert!(store_at(&redis.url(), policy(), Some("server-secret-two")).whoami(&t).await.is_err());
    assert!(store_at(&redis.url(), policy(), None).whoami(&t).await.is_err());
}

/// Revokes everything of `user` the way a companion does, then dies before publishing: only the
/// script runs.
/// Runs the revoke-all script as a companion would, then "dies" before publishing; returns the
/// public ids it revoked.
pub async fn revoke_all_then_die(store: &multitokens::store::TokenStore, user: &str) -> Vec<String> {
    use multitokens_core::token::RoutingTag;
    let tag = RoutingTag::for_user(user);
    // as the companion does: announce the outbox, run the script, then (here) die
    store.announce_outbox(&store.layout().outbox_key(tag)).await.unwrap();
    let mut conn = store.redis().conn().await.unwrap();
    redis::Script::new(multitokens_core::scripts::REVOKE_ALL)
        .key(store.layout().index_key(user))
        .key(store.layout().outbox_key(tag))
        .key(store.layout().expiry_key(user))
        .arg(store.layout().record_prefix(tag))
        .arg("")
        .invoke_async(&mut conn)
        .await
        .unwrap()
}
