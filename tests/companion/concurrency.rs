//! The seed's race: a login running concurrently with "log out everywhere" must not escape it.

use crate::support::RedisServer;
use crate::{policy, store_at};
use multitokens::audit::Origin;
use multitokens::store::IssueRequest;
use redis::Commands;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_cannot_escape_revoke_all() {
    let redis = RedisServer::start();
    let store = Arc::new(store_at(&redis.url(), policy(), None));
    let mut issues = Vec::new();
    let mut revokes = Vec::new();
    for i in 0..200 {
        let issuer = store.clone();
        issues.push(tokio::spawn(async move {
            let issued = issuer
                .issue(
                    IssueRequest { user: "rita".into(), device: Some(format!("d{i}")), ..Default::default() },
                    &Origin::companion(),
                )
                .await
                .unwrap();
            (issued.token, Instant::now())
        }));
        if i % 40 == 20 {
            let revoker = store.clone();
            revokes.push(tokio::spawn(async move {
                let started = Instant::now();
                revoker.revoke_all("rita", None, &Origin::companion()).await.unwrap();
                started
            }));
        }
    }
    let mut issued = Vec::new();
    for h in issues {
        issued.push(h.await.unwrap());
    }
    let mut revoke_starts = Vec::new();
    for h in revokes {
        revoke_starts.push(h.await.unwrap());
    }
    let last_revoke = *revoke_starts.iter().max().unwrap();

    let mut live = BTreeSet::new();
    for (token, done) in &issued {
        let valid = store.whoami(token).await.is_ok();
        if *done < last_revoke {
            assert!(!valid, "a token issued before a revoke-all survived it");
        }
        if valid {
            live.insert(store.digest_of(token).unwrap().1.to_hex());
        }
    }
    // the index and the records agree exactly
    let mut conn = redis.conn();
    let index: BTreeSet<String> =
        conn.zrange::<_, Vec<String>>(store.layout().index_key("rita"), 0, -1).unwrap().into_iter().collect();
    let record_keys: Vec<String> = conn
        .keys(format!("{}*", store.layout().record_prefix(multitokens_core::token::RoutingTag::for_user("rita"))))
        .unwrap();
    let records: BTreeSet<String> = record_keys.iter().map(|k| k.rsplit(':').next().unwrap().to_string()).collect();
    assert_eq!(index, records, "index and records disagree");
    assert_eq!(records, live, "stored records are exactly the tokens that validate");
    assert_eq!(store.list("rita").await.unwrap().len(), live.len());
}
