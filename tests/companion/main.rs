//! Companion integration tests against real `redis-server` processes (single node and cluster).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod acl;
mod api;
mod audit;
mod cli;
mod cluster;
mod concurrency;
mod keys;
mod limits;
mod openapi;
mod store;
mod suspend;
mod webhooks;

use multitokens::connection::{Redis, RedisAddress};
use multitokens::settings::MaxTokensPolicy;
use multitokens::store::{StorePolicy, TokenStore};
use multitokens_core::keyring::HashKeys;
use multitokens_core::ttl::TokenTtl;
use std::time::Duration;

/// The seed's defaults: 30-day TTL, reset on login, overwrite immortal TTLs, no limit.
pub fn policy() -> StorePolicy {
    StorePolicy {
        prefix: "mt".into(),
        token_ttl: TokenTtl::Seconds(30 * 24 * 3600),
        reset_ttl_on_login: true,
        overwrite_none_ttl: true,
        max_tokens_per_user: None,
        max_tokens_policy: MaxTokensPolicy::Reject,
        max_lifetime: None,
    }
}

/// A store over a Redis URL.
pub fn store_at(url: &str, policy: StorePolicy, hash_key: Option<&str>) -> TokenStore {
    store_with_keys(url, policy, HashKeys::single(hash_key.map(str::as_bytes)))
}

/// A store over a Redis URL with a set of hash keys (a rotation, an upgrade).
pub fn store_with_keys(url: &str, policy: StorePolicy, keys: HashKeys) -> TokenStore {
    let redis = Redis::open(&RedisAddress::parse(url).unwrap(), Duration::from_millis(1500)).unwrap();
    TokenStore::new(redis, policy, keys)
}
