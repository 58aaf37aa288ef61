//! The `refresh_on_use` setting.

use serde::Deserialize;

/// Sliding expiry: a used token's TTL is pushed out, at most once per interval.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    /// The TTL a used token gets, in seconds.
    pub ttl: u64,
    /// Least time between two refreshes of one token.
    #[serde(default = "default_refresh_interval_ms")]
    pub min_interval_ms: u64,
}

fn default_refresh_interval_ms() -> u64 {
    60_000
}
