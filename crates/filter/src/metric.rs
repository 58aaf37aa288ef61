//! The filter's counters (Envoy stats `multitokens.<name>`).

/// Counters the filter keeps (Envoy stats `multitokens.<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Requests let through with a valid token.
    Allowed,
    /// Requests let through on a stale verdict while the store was down (`allow_cached`).
    AllowedStale,
    /// Requests excluded from authentication.
    Excluded,
    /// Denied: no credential.
    DeniedMissing,
    /// Denied: malformed token (no callout made).
    DeniedMalformed,
    /// Denied: unknown, revoked or expired token.
    DeniedInvalid,
    /// Denied: missing scope.
    DeniedScope,
    /// Denied: store unavailable.
    DeniedUnavailable,
    /// Verdict served from the cache.
    CacheHit,
    /// Verdict had to be looked up.
    CacheMiss,
    /// Callout got no response (timeout, reset, no upstream).
    CalloutFailed,
    /// Callout got a bad response.
    CalloutError,
    /// Cached verdicts dropped by the revocation feed.
    RevocationsApplied,
    /// Timer ticks run (a counter that stops moving means the tick stopped).
    Ticks,
    /// Cached positives not trusted because the tick was overdue (they were looked up instead).
    TickOverdue,
    /// Denied: a path that is not canonical (400) while path rules are configured.
    DeniedBadPath,
    /// Denied: the client's address spent its budget of lookups of tokens the edge cannot check by
    /// their MAC (429, no callout; never a token with a verified MAC).
    DeniedThrottled,
    /// Denied: the token's record has no valid seal (rewritten in Redis).
    DeniedTampered,
    /// Lookups not sent: the request waited for another request's lookup of the same token.
    LookupShared,
    /// Denied without a lookup: a token whose MAC no hash key made (forged), or an old-format
    /// token while `accept_legacy_tokens` is off.
    DeniedForged,
    /// Denied: an unsafe request authenticated by the cookie, sent from another site (403, no lookup).
    DeniedCrossSite,
}

impl Metric {
    /// Every metric, for definition at start.
    pub const ALL: [Metric; 21] = [
        Metric::Allowed,
        Metric::AllowedStale,
        Metric::Excluded,
        Metric::DeniedMissing,
        Metric::DeniedMalformed,
        Metric::DeniedInvalid,
        Metric::DeniedScope,
        Metric::DeniedUnavailable,
        Metric::CacheHit,
        Metric::CacheMiss,
        Metric::CalloutFailed,
        Metric::CalloutError,
        Metric::RevocationsApplied,
        Metric::Ticks,
        Metric::TickOverdue,
        Metric::DeniedBadPath,
        Metric::DeniedThrottled,
        Metric::DeniedTampered,
        Metric::LookupShared,
        Metric::DeniedForged,
        Metric::DeniedCrossSite,
    ];

    /// The stat name.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Allowed => "multitokens.allowed",
            Metric::AllowedStale => "multitokens.allowed_stale",
            Metric::Excluded => "multitokens.excluded",
            Metric::DeniedMissing => "multitokens.denied_missing",
            Metric::DeniedMalformed => "multitokens.denied_malformed",
            Metric::DeniedInvalid => "multitokens.denied_invalid",
            Metric::DeniedScope => "multitokens.denied_scope",
            Metric::DeniedUnavailable => "multitokens.denied_unavailable",
            Metric::CacheHit => "multitokens.cache_hit",
            Metric::CacheMiss => "multitokens.cache_miss",
            Metric::CalloutFailed => "multitokens.callout_failed",
            Metric::CalloutError => "multitokens.callout_error",
            Metric::RevocationsApplied => "multitokens.revocations_applied",
            Metric::Ticks => "multitokens.ticks",
            Metric::TickOverdue => "multitokens.tick_overdue",
            Metric::DeniedBadPath => "multitokens.denied_bad_path",
            Metric::DeniedThrottled => "multitokens.denied_throttled",
            Metric::DeniedTampered => "multitokens.denied_tampered",
            Metric::LookupShared => "multitokens.lookup_shared",
            Metric::DeniedForged => "multitokens.denied_forged",
            Metric::DeniedCrossSite => "multitokens.denied_cross_site",
        }
    }

    /// Index into [`Metric::ALL`] (declaration order).
    pub fn index(&self) -> usize {
        *self as usize
    }
}
