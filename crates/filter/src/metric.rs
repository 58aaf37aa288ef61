//! The filter's counters (Envoy stats `multitokens.<name>`), each listed once: its doc, its
//! variant and its stat name.

/// Declares [`Metric`], [`Metric::ALL`] and [`Metric::name`] from one list.
macro_rules! metrics {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// Counters the filter keeps (Envoy stats `multitokens.<name>`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Metric {
            $($(#[$doc])* $variant,)*
        }

        impl Metric {
            /// Every metric, for definition at start.
            pub const ALL: [Metric; [$(Metric::$variant),*].len()] = [$(Metric::$variant),*];

            /// The stat name.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)*
                }
            }
        }
    };
}

metrics! {
    /// Requests let through with a valid token.
    Allowed => "multitokens.allowed",
    /// Requests let through on a stale verdict while the store was down (`allow_cached`).
    AllowedStale => "multitokens.allowed_stale",
    /// Requests excluded from authentication.
    Excluded => "multitokens.excluded",
    /// Denied: no credential.
    DeniedMissing => "multitokens.denied_missing",
    /// Denied: malformed token (no callout made).
    DeniedMalformed => "multitokens.denied_malformed",
    /// Denied: unknown, revoked or expired token.
    DeniedInvalid => "multitokens.denied_invalid",
    /// Denied: missing scope.
    DeniedScope => "multitokens.denied_scope",
    /// Denied: store unavailable.
    DeniedUnavailable => "multitokens.denied_unavailable",
    /// Verdict served from the cache.
    CacheHit => "multitokens.cache_hit",
    /// Verdict had to be looked up.
    CacheMiss => "multitokens.cache_miss",
    /// Callout got no response (timeout, reset, no upstream).
    CalloutFailed => "multitokens.callout_failed",
    /// Callout got a bad response.
    CalloutError => "multitokens.callout_error",
    /// Cached verdicts dropped by the revocation feed.
    RevocationsApplied => "multitokens.revocations_applied",
    /// Timer ticks run (a counter that stops moving means the tick stopped).
    Ticks => "multitokens.ticks",
    /// Cached positives not trusted because the tick was overdue (they were looked up instead).
    TickOverdue => "multitokens.tick_overdue",
    /// Denied: a path that is not canonical (400) while path rules are configured.
    DeniedBadPath => "multitokens.denied_bad_path",
    /// Denied: the client's address spent its budget of lookups of tokens the edge cannot check by
    /// their MAC (429, no callout; never a token with a verified MAC).
    DeniedThrottled => "multitokens.denied_throttled",
    /// Denied: the token's record has no valid seal (rewritten in Redis).
    DeniedTampered => "multitokens.denied_tampered",
    /// Lookups not sent: the request waited for another request's lookup of the same token.
    LookupShared => "multitokens.lookup_shared",
    /// Denied without a lookup: a token whose MAC no hash key made (forged), or an old-format
    /// token while `accept_legacy_tokens` is off.
    DeniedForged => "multitokens.denied_forged",
    /// Denied: an unsafe request authenticated by the cookie, sent from another site (403, no lookup).
    DeniedCrossSite => "multitokens.denied_cross_site",
    /// Denied: a DPoP proof missing, doubled, not verifying (no lookup then), of another key than
    /// the token is bound to, or replayed; or a bound token sent as a bearer token (401).
    DeniedDpop => "multitokens.denied_dpop",
    /// Device activity reports sent to the store (at most one per token per `activity_interval_ms`).
    ActivityReported => "multitokens.activity_reported",
}

impl Metric {
    /// Index into [`Metric::ALL`] (declaration order).
    pub fn index(&self) -> usize {
        *self as usize
    }
}
