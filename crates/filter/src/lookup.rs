//! What a lookup asks and what it gets, whichever transport carries it (the companion over HTTP,
//! [`super::companion_transport`], or Redis callouts, [`super::redis_transport`]).

use super::identity::Identity;
use multitokens_core::contract::LookupQuery;
use multitokens_core::digest::TokenDigest;
use multitokens_core::token::RoutingTag;

pub use multitokens_core::contract::FeedPage;

/// The lookup request: routing tag and digest, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupRequest {
    /// Routing tag.
    pub tag: RoutingTag,
    /// Token digest under the current hash key.
    pub digest: TokenDigest,
    /// Its digests under the previous hash keys (a rotation in progress), tried after it.
    pub previous: Vec<TokenDigest>,
    /// With `previous`: the fingerprint of the current key, so the companion may re-key the
    /// record to `digest` on use.
    pub key_id: Option<String>,
    /// Sliding refresh to apply, seconds.
    pub refresh_ttl: Option<u64>,
}

impl LookupRequest {
    /// This request as the companion reads it.
    pub fn query(&self) -> LookupQuery {
        let previous = (!self.previous.is_empty())
            .then(|| self.previous.iter().map(TokenDigest::to_hex).collect::<Vec<_>>().join(","));
        LookupQuery {
            tag: self.tag.to_hex(),
            digest: self.digest.to_hex(),
            previous,
            key_id: self.key_id.clone(),
            refresh_ttl: self.refresh_ttl,
        }
    }

    /// The companion's lookup path for this request (a bodiless GET).
    pub fn path(&self) -> String {
        self.query().path()
    }

    /// Every digest tried, the current key's first.
    pub fn candidates(&self) -> impl Iterator<Item = &TokenDigest> {
        std::iter::once(&self.digest).chain(&self.previous)
    }
}

/// What the store said about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Valid, with milliseconds left (`None`: immortal).
    Valid(Identity, Option<u64>),
    /// Valid, and stored under the n-th (from 0) of the request's `previous` digests: its
    /// revocation or re-keying is published under that digest, so it is cached by it.
    ValidUnderPrevious(Identity, Option<u64>, usize),
    /// Not valid: unknown, revoked or expired.
    Invalid,
    /// The record's seal does not verify (rewritten in Redis): refused, counted and logged.
    Tampered,
}

/// Why there is no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalloutProblem {
    /// No response at all: timeout, reset, no healthy upstream.
    NoResponse,
    /// A response that is not an answer: bad status or body.
    BadResponse(String),
}
