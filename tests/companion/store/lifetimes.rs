//! Index and record lifetimes, garbage and outages, the feed, outboxes a dead companion left, and
//! what a login costs Redis at any number of tokens.

use super::*;

#[tokio::test]
async fn the_index_outlives_every_record() {
    let redis = RedisServer::start();
    let mut p = policy();
    p.reset_ttl_on_login = false;
    let store = store_at(&redis.url(), p, None);
    let long = store
        .issue(
            IssueRequest { user: "pat".into(), ttl: Some(TokenTtl::Seconds(5000)), ..Default::default() },
            &Origin::companion(),
        )
        .await
        .unwrap()
        .token;
    store
        .issue(
            IssueRequest { user: "pat".into(), ttl: Some(TokenTtl::Seconds(10)), ..Default::default() },
            &Origin::companion(),
        )
        .await
        .unwrap();
    let index_ttl: i64 = redis.conn().pttl(store.layout().index_key("pat")).unwrap();
    assert!(index_ttl >= pttl_of_token(&redis, &store, &long), "index {index_ttl}");
    // a sliding refresh past the index's TTL extends the index too
    let (tag, digest) = store.digest_of(&long).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(store.refresh(tag, &digest, TokenTtl::Seconds(9000)).await.unwrap());
    assert!(pttl_of_token(&redis, &store, &long) <= 5_000_000, "capped at the issued lifetime");
    let index_ttl: i64 = redis.conn().pttl(store.layout().index_key("pat")).unwrap();
    assert!(index_ttl >= pttl_of_token(&redis, &store, &long) + 900, "index {index_ttl}");
    assert!(!store.refresh(tag, &digest, TokenTtl::Seconds(100)).await.unwrap(), "refresh never shortens");
}

#[tokio::test]
async fn garbage_in_redis_and_redis_down_are_errors_not_verdicts() {
    let mut redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), None);
    let t = store.issue(req("quinn", "a"), &Origin::companion()).await.unwrap().token;
    let (tag, digest) = store.digest_of(&t).unwrap();
    let _: () = redis.conn().set(store.layout().record_key(tag, &digest), "\u{1}garbage").unwrap();
    assert!(matches!(store.whoami(&t).await, Err(StoreError::Record(_))));
    redis.kill();
    assert!(matches!(store.whoami(&t).await, Err(StoreError::Unavailable(_))));
    assert!(matches!(store.issue(req("quinn", "b"), &Origin::companion()).await, Err(StoreError::Unavailable(_))));
    assert!(store.ping().await.is_err());
    // bad input is refused before Redis is asked
    assert!(matches!(store.issue(req("", "a"), &Origin::companion()).await, Err(StoreError::Input(_))));
    assert!(matches!(store.issue(req("a\nb", "a"), &Origin::companion()).await, Err(StoreError::Input(_))));
}

#[tokio::test]
async fn the_revocation_feed_pages_and_detects_loss() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), None);
    let start = store.revocations_after(None).await.unwrap();
    assert_eq!((start.cursor.as_str(), start.digests.len(), start.reset), ("0-0", 0, false));
    let a = store.issue(req("sam", "a"), &Origin::companion()).await.unwrap().token;
    let b = store.issue(req("sam", "b"), &Origin::companion()).await.unwrap().token;
    store.revoke(&a, &Origin::companion()).await.unwrap();
    let page = store.revocations_after(Some(&start.cursor)).await.unwrap();
    assert_eq!(page.digests, vec![store.digest_of(&a).unwrap().1.to_hex()]);
    assert!(!page.reset);
    let again = store.revocations_after(Some(&page.cursor)).await.unwrap();
    assert!(again.digests.is_empty() && again.cursor == page.cursor);
    store.revoke(&b, &Origin::companion()).await.unwrap();
    let next = store.revocations_after(Some(&page.cursor)).await.unwrap();
    assert_eq!(next.digests, vec![store.digest_of(&b).unwrap().1.to_hex()]);
    // entries the poller never saw are trimmed away: it is told to reset
    redis.cli(&["XTRIM", "mt:revoked", "MAXLEN", "0"]);
    assert!(store.revocations_after(Some(&page.cursor)).await.unwrap().reset);
    // the feed is gone entirely (Redis flushed): reset too
    redis.cli(&["FLUSHALL"]);
    assert!(store.revocations_after(Some(&next.cursor)).await.unwrap().reset);
    assert!(matches!(store.revocations_after(Some("garbage")).await, Err(StoreError::BadInput(_))));
}

#[tokio::test]
async fn max_lifetime_caps_every_ttl_and_is_never_extended() {
    let redis = RedisServer::start();
    let mut p = policy();
    p.token_ttl = TokenTtl::Seconds(1000);
    p.max_lifetime = Some(100);
    let store = store_at(&redis.url(), p, None);
    let immortal = store
        .issue(
            IssueRequest { user: "uma".into(), ttl: Some(TokenTtl::Never), ..Default::default() },
            &Origin::companion(),
        )
        .await
        .unwrap();
    assert_eq!(immortal.expires_in, Some(100), "an absolute lifetime makes every token mortal");
    let pttl = pttl_of_token(&redis, &store, &immortal.token);
    assert!((99_000..=100_000).contains(&pttl), "{pttl}");
    // a later login resets the TTL of the others to token_ttl: capped by their absolute expiry
    store.issue(req("uma", "second"), &Origin::companion()).await.unwrap();
    let pttl = pttl_of_token(&redis, &store, &immortal.token);
    assert!((98_000..=100_000).contains(&pttl), "reset must not pass expires_at: {pttl}");
    // a sliding refresh cannot extend it either
    let (tag, digest) = store.digest_of(&immortal.token).unwrap();
    assert!(!store.refresh(tag, &digest, TokenTtl::Seconds(5000)).await.unwrap());
    assert!(pttl_of_token(&redis, &store, &immortal.token) <= 100_000);
    // and the record carries the absolute expiry that the verdict enforces
    let who = store.whoami(&immortal.token).await.unwrap();
    assert!(who.expires_in.unwrap() <= 100);
    let raw: String = redis.conn().get(store.layout().record_key(tag, &digest)).unwrap();
    assert!(raw.contains("\"expires_at\":"), "{raw}");
}

#[tokio::test]
async fn reset_on_login_and_refresh_never_stretch_a_token_past_its_issued_lifetime() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), None); // reset on login to 30 days
    let short = store
        .issue(
            IssueRequest { user: "ivy".into(), ttl: Some(TokenTtl::Seconds(60)), ..Default::default() },
            &Origin::companion(),
        )
        .await
        .unwrap()
        .token;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let issued = store.issue(req("ivy", "phone"), &Origin::companion()).await.unwrap();
    assert_eq!(issued.ttl_reset, 1, "the login still re-arms the other token's lifetime (the seed's semantics)");
    let left = pttl_of_token(&redis, &store, &short);
    assert!((58_000..=60_000).contains(&left), "re-armed to its own 60 s, not to token_ttl: {left} ms");
    // a sliding refresh asking for a day is capped at the issued 60 s too
    let (tag, digest) = store.digest_of(&short).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(store.refresh(tag, &digest, TokenTtl::Seconds(86_400)).await.unwrap());
    let left = pttl_of_token(&redis, &store, &short);
    assert!((58_000..=60_000).contains(&left), "refreshed to 60 s at most: {left} ms");
    // reset-to-never (token_ttl never) re-arms a mortal token to its lifetime, never makes it immortal
    let mut p = policy();
    p.token_ttl = TokenTtl::Never;
    let never = store_at(&redis.url(), p, None);
    never.issue(req("ivy", "tablet"), &Origin::companion()).await.unwrap();
    let left = pttl_of_token(&redis, &store, &short);
    assert!((0..=60_000).contains(&left), "still mortal, at most 60 s: {left} ms");
}

#[tokio::test]
async fn a_revocation_is_published_even_when_its_companion_dies_before_publishing() {
    let redis = RedisServer::start();
    let store = store_at(&redis.url(), policy(), None);
    let tokens = futures_tokens(&store, "olga", 3).await;
    let ids = revoke_all_then_die(&store, "olga").await;
    let digests: Vec<_> = tokens.iter().map(|t| store.digest_of(t).unwrap().1).collect();
    assert_eq!(ids, digests.iter().map(|d| d.public_id()).collect::<Vec<_>>(), "the script answers the public ids");
    let revoked: Vec<String> = digests.iter().map(|d| d.to_hex()).collect();
    for t in &tokens {
        assert!(store.whoami(t).await.is_err(), "revoked in Redis");
    }
    let feed: redis::streams::StreamRangeReply = redis.conn().xrange_all("mt:revoked").unwrap();
    assert!(feed.ids.is_empty(), "not published yet: the companion died");
    // the revocation sits in the user's outbox, written by the same script
    let outbox: Vec<String> = redis
        .conn()
        .lrange(store.layout().outbox_key(multitokens_core::token::RoutingTag::for_user("olga")), 0, -1)
        .unwrap();
    assert_eq!(outbox, revoked);
    // any companion's sweep publishes it
    assert_eq!(
        store.publish_abandoned_outboxes().await.unwrap(),
        0,
        "announced just now: its companion may still publish it"
    );
    assert_eq!(store.publish_outboxes_announced_before(now_ms()).await.unwrap(), 1);
    let feed: redis::streams::StreamRangeReply = redis.conn().xrange_all("mt:revoked").unwrap();
    let published: Vec<String> =
        feed.ids.iter().map(|e| redis::from_redis_value(e.map["d"].clone()).unwrap()).collect();
    assert_eq!(published, revoked);
    assert_eq!(store.publish_outboxes_announced_before(now_ms()).await.unwrap(), 0, "the outbox is empty now");
    let index: u64 = redis.conn().zcard("mt:outboxes").unwrap();
    assert_eq!(index, 0, "and left the index");
    // a revoke that returns has published already: nothing left behind
    let t = store.issue(req("olga", "again"), &Origin::companion()).await.unwrap().token;
    store.revoke(&t, &Origin::companion()).await.unwrap();
    assert_eq!(store.publish_outboxes_announced_before(now_ms()).await.unwrap(), 0);
}

#[tokio::test]
async fn expired_tokens_are_pruned_by_score_and_an_old_index_is_scored_once() {
    let redis = RedisServer::start();
    let mut p = policy();
    p.reset_ttl_on_login = false;
    p.max_tokens_per_user = Some(100);
    let store = store_at(&redis.url(), p, None);
    for i in 0..50 {
        let short = IssueRequest {
            user: "pam".into(),
            device: Some(format!("d{i}")),
            ttl: Some(TokenTtl::Seconds(1)),
            ..Default::default()
        };
        store.issue(short, &Origin::companion()).await.unwrap();
    }
    let (index, expiry) = (store.layout().index_key("pam"), store.layout().expiry_key("pam"));
    assert_eq!(
        (redis.conn().zcard::<_, i64>(&index).unwrap(), redis.conn().zcard::<_, i64>(&expiry).unwrap()),
        (50, 50)
    );
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let immortal = IssueRequest { user: "pam".into(), ttl: Some(TokenTtl::Never), ..Default::default() };
    assert!(store.issue(immortal, &Origin::companion()).await.unwrap().first, "the 50 expired tokens do not count");
    assert_eq!((redis.conn().zcard::<_, i64>(&index).unwrap(), redis.conn().zcard::<_, i64>(&expiry).unwrap()), (1, 1));
    let scores: Vec<(String, String)> = redis.conn().zrange_withscores(&expiry, 0, -1).unwrap();
    assert_eq!(scores[0].1, "inf", "an immortal token is scored inf");
    assert_eq!(redis.conn().pttl::<_, i64>(&index).unwrap(), -1, "the index of an immortal token persists");
    // an index written before the expiry index existed is scored once, record by record
    let _: () = redis.conn().del(&expiry).unwrap();
    store.issue(req("pam", "later"), &Origin::companion()).await.unwrap();
    assert_eq!(redis.conn().zcard::<_, i64>(&expiry).unwrap(), 2);
    assert_eq!(store.list("pam").await.unwrap().len(), 2);
}

/// What one command costs Redis, by the commands its scripts ran.
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    let line = stats.lines().find(|l| l.starts_with(&format!("cmdstat_{command}:"))).unwrap_or("calls=0,");
    line.split("calls=").nth(1).and_then(|v| v.split(',').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn a_user_logging_in_again_and_again_costs_redis_the_same_at_any_number_of_tokens() {
    let redis = RedisServer::start();
    let mut p = policy(); // reset TTL on login, as shipped
    p.max_tokens_per_user = Some(10_000);
    let store = store_at(&redis.url(), p, None);
    for i in 0..1000 {
        store.issue(req("loop", &format!("d{i}")), &Origin::companion()).await.unwrap();
    }
    // the last logins re-armed every token a moment ago: the next ones walk nothing
    let (pttl, pexpire, get) = (calls(&redis, "pttl"), calls(&redis, "pexpire"), calls(&redis, "get"));
    for i in 0..10 {
        assert_eq!(
            store.issue(req("loop", &format!("again{i}")), &Origin::companion()).await.unwrap().ttl_reset,
            1000 + i
        );
    }
    let walked = (calls(&redis, "pttl") - pttl) + (calls(&redis, "pexpire") - pexpire) + (calls(&redis, "get") - get);
    assert!(walked < 50, "10 logins of a user with 1,000 tokens visited {walked} records");
    // an expired index entry is pruned by score, and the limit evicts the oldest at the cap
    let capped = store_at(
        &redis.url(),
        multitokens::store::StorePolicy {
            max_tokens_per_user: Some(1010),
            max_tokens_policy: MaxTokensPolicy::EvictOldest,
            ..policy()
        },
        None,
    );
    let issued = capped.issue(req("loop", "over"), &Origin::companion()).await.unwrap();
    assert_eq!(issued.ttl_reset, 1009, "the oldest token was evicted to make room");
    assert_eq!(capped.list("loop").await.unwrap().len(), 1010);
}
