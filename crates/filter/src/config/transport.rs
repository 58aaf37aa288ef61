//! Where the filter reaches the token store: the companion over HTTP or Redis (callouts).

use super::{default_timeout_ms, default_true};
use serde::Deserialize;

/// Where the HTTP callout goes: the companion's internal API, as an Envoy cluster.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CompanionTarget {
    /// Envoy cluster name of the companion.
    pub cluster: String,
    /// `:authority` of the callout.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// The companion's internal key (MULTITOKENS_INTERNAL_KEY; never its admin key).
    pub api_key: String,
    /// Callout timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Native module: lookups under way at once per process; more wait and go together as one
    /// batch when one returns (0: every lookup on its own). The wasm builds send each on its own.
    #[serde(default = "default_lookups_in_flight")]
    pub max_lookups_in_flight: usize,
}

fn default_lookups_in_flight() -> usize {
    1
}

/// Where the Redis callouts go (Redis-callout build): an Envoy cluster in front of Redis.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisTarget {
    /// Envoy cluster name of the Redis, optionally with `?db=N`.
    pub cluster: String,
    /// ACL user (`AUTH user password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (`AUTH password`, or with `username`).
    #[serde(default)]
    pub password: Option<String>,
    /// Connect and operation timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Send lookups and feed reads as `EVAL_RO` (Redis 7), so the gateway's Redis user can be
    /// read-only. Set false when Envoy's redis_proxy stands in between (it does not know
    /// `EVAL_RO`): they go as `EVAL`, which needs write access to the keys they read.
    #[serde(default = "default_true")]
    pub eval_ro: bool,
}

/// How the filter reaches the token store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTP callouts to the companion (stock Envoy, Istio).
    Companion(CompanionTarget),
    /// Redis callouts straight to Redis (Envoy with the Redis-callout ABI, e.g. Higress).
    Redis(RedisTarget),
}

impl Transport {
    /// The callout timeout.
    pub fn timeout_ms(&self) -> u64 {
        match self {
            Transport::Companion(c) => c.timeout_ms,
            Transport::Redis(r) => r.timeout_ms,
        }
    }
}

fn default_authority() -> String {
    "multitokens".into()
}
