//! What a lookup asks and what it gets, whichever transport carries it (the companion over HTTP,
//! [`super::companion_transport`], or Redis callouts, [`super::redis_transport`]).

use super::identity::Identity;
use crate::core::contract::LookupQuery;
use crate::core::digest::TokenDigest;
use crate::core::token::RoutingTag;

pub use crate::core::contract::FeedPage;

/// The lookup request: routing tag and digest, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupRequest {
    /// Routing tag.
    pub tag: RoutingTag,
    /// Token digest.
    pub digest: TokenDigest,
    /// Sliding refresh to apply, seconds.
    pub refresh_ttl: Option<u64>,
}

impl LookupRequest {
    /// The companion's lookup path for this request (a bodiless GET).
    pub fn path(&self) -> String {
        LookupQuery { tag: self.tag.to_hex(), digest: self.digest.to_hex(), refresh_ttl: self.refresh_ttl }.path()
    }
}

/// What the store said about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Valid, with milliseconds left (`None`: immortal).
    Valid(Identity, Option<u64>),
    /// Not valid: unknown, revoked or expired.
    Invalid,
}

/// Why there is no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalloutProblem {
    /// No response at all: timeout, reset, no healthy upstream.
    NoResponse,
    /// A response that is not an answer: bad status or body.
    BadResponse(String),
}
