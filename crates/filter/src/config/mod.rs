//! The filter's plugin configuration (JSON), parsed and checked once in `on_configure`. Unknown
//! fields are rejected and every error names the field.

use super::csrf::CsrfConfig;
use super::route::UpstreamRouting;
use super::rules::{CompiledScopeRule, ExcludeRule, ScopeRule};
use multitokens_core::contract;
use multitokens_core::keyring::HashKeys;
use multitokens_core::token::{validate_prefix, DEFAULT_PREFIX};
use serde::Deserialize;

mod transport;
pub use transport::{CompanionTarget, RedisTarget, Transport};

/// What to do when the token store cannot be asked (down, slow, failing).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Answer 503 (the default: fail closed).
    #[default]
    Deny,
    /// Keep accepting tokens positively verified within `stale_window_ms`; 503 for the rest.
    AllowCached,
}

/// What happens to a CORS preflight: an `OPTIONS` request with an `Origin` and an
/// `Access-Control-Request-Method`, no body and no method override.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CorsPreflight {
    /// Forward it without a token (browsers send none on a preflight), credentials and identity
    /// headers stripped, for the upstream's CORS layer to answer (the default).
    #[default]
    Pass,
    /// Treat it as any other request: a token is needed.
    Authenticate,
}

/// Verdict cache sizing.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Most entries per worker (0 disables the cache).
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// How long a positive verdict is served from the cache.
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// How long "unknown token" is remembered.
    #[serde(default = "default_negative_ttl_ms")]
    pub negative_ttl_ms: u64,
    /// Most "unknown token" verdicts per worker, apart from the positive ones: a flood of forged
    /// tokens evicts only other negatives.
    #[serde(default = "default_max_negative_entries")]
    pub max_negative_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: default_max_entries(),
            ttl_ms: default_ttl_ms(),
            negative_ttl_ms: default_negative_ttl_ms(),
            max_negative_entries: default_max_negative_entries(),
        }
    }
}

/// The plugin configuration as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Token prefix; must match the companion's.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// HMAC key for digests; must match the companion's MULTITOKENS_HASH_KEY.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// Hash keys still accepted during a rotation (the companion's MULTITOKENS_PREVIOUS_HASH_KEYS):
    /// a lookup tries the token's digest under each, in the same round trip.
    #[serde(default)]
    pub previous_hash_keys: Vec<String>,
    /// Hash keys a finished rotation retired (the companion's MULTITOKENS_RETIRED_HASH_KEYS): the
    /// tokens minted under them still pass the MAC check until they expire; no digest is tried.
    #[serde(default)]
    pub retired_hash_keys: Vec<String>,
    /// Look up tokens the edge cannot check by their MAC: old-format tokens (issued before MACs,
    /// or by a companion without a hash key). Turn off once no such token is live (docs/tokens.md):
    /// then every token is checked before any lookup. Without `hash_key` it must stay on.
    #[serde(default = "default_true")]
    pub accept_legacy_tokens: bool,
    /// Honour token records with no seal at all, only while upgrading from a release before
    /// sealed records (the companion's MULTITOKENS_ACCEPT_UNSEALED_RECORDS); a broken seal is
    /// refused anyway.
    #[serde(default)]
    pub accept_unsealed_records: bool,
    /// Public keys of the companion's record signing key (`multitokens keygen --signing` prints
    /// the pair): with any set, a record read from Redis must carry a signature by one of them,
    /// so what this configuration holds cannot forge one. For the Redis-callout build (the
    /// companion checks records for the stock build).
    #[serde(default)]
    pub record_public_keys: Vec<String>,
    /// Honour HMAC-sealed records although `record_public_keys` are set, only while upgrading to
    /// signed records (the companion's MULTITOKENS_ACCEPT_HMAC_SEALED_RECORDS).
    #[serde(default)]
    pub accept_hmac_sealed_records: bool,
    /// Realm in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Accepted `Authorization` schemes (case-insensitive).
    #[serde(default = "default_schemes")]
    pub schemes: Vec<String>,
    /// Cookie to read the token from when there is no `Authorization` header.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Upstream header carrying the user id.
    #[serde(default = "default_user_header")]
    pub user_header: String,
    /// Upstream header carrying the device label (`null`: not sent).
    #[serde(default = "default_device_header")]
    pub device_header: Option<String>,
    /// Upstream header carrying the scopes, space-separated (`null`: not sent).
    #[serde(default = "default_scopes_header")]
    pub scopes_header: Option<String>,
    /// Upstream header carrying the token's public id, for "log out this device" (`null`: not sent).
    #[serde(default = "default_token_id_header")]
    pub token_id_header: Option<String>,
    /// Upstream header saying where the credential came from, `header` or `cookie` (`null`: not sent).
    #[serde(default = "default_credential_header")]
    pub credential_header: Option<String>,
    /// Remove the credential (our `Authorization` schemes and the cookie) before the upstream,
    /// on authenticated and excluded requests alike.
    #[serde(default = "default_true")]
    pub strip_credential: bool,
    /// How the upstream reads requests: scope rules match every spelling it routes alike.
    #[serde(default)]
    pub upstream_routing: UpstreamRouting,
    /// What happens to CORS preflights.
    #[serde(default)]
    pub cors_preflight: CorsPreflight,
    /// The cross-site request check for cookie credentials.
    #[serde(default)]
    pub csrf: CsrfConfig,
    /// Requests that need no token.
    #[serde(default)]
    pub exclude: Vec<ExcludeRule>,
    /// Scopes required per path.
    #[serde(default)]
    pub required_scopes: Vec<ScopeRule>,
    /// The companion to ask (stock build); give this or `redis`.
    #[serde(default)]
    pub companion: Option<CompanionTarget>,
    /// The Redis to ask through Redis callouts (Redis-callout build); give this or `companion`.
    #[serde(default)]
    pub redis: Option<RedisTarget>,
    /// Verdict cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The timer period: how often the revocation feed is polled, or a failed long poll retried
    /// (0 disables the feed and caching of positives). Default 1000 with the companion, 250 with
    /// Redis callouts (which cannot hold a blocking read on the shared connection).
    #[serde(default)]
    pub revocation_poll_ms: Option<u64>,
    /// Companion transport: how long the companion may hold a feed poll until something is
    /// revoked (a long poll: revocations arrive at once); 0 polls on the timer instead.
    #[serde(default = "default_wait_ms")]
    pub revocation_wait_ms: u64,
    /// What to do when the store cannot be asked.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// With `allow_cached`: how long after its last positive check a token is still accepted.
    #[serde(default = "default_stale_window_ms")]
    pub stale_window_ms: u64,
    /// Sliding expiry on use.
    #[serde(default)]
    pub refresh_on_use: Option<RefreshConfig>,
    /// Failed-attempt throttling per client (off when absent).
    #[serde(default)]
    pub throttle: Option<super::throttle::ThrottleConfig>,
    /// Device activity: each token's use is reported (when, client address, user agent) on its
    /// first use and then at most once per this many ms, per worker (per process for the native
    /// module); 0 reports nothing.
    #[serde(default = "default_activity_interval_ms")]
    pub activity_interval_ms: u64,
    /// DPoP: how proofs for tokens bound to a key are checked.
    #[serde(default)]
    pub dpop: super::dpop::DpopConfig,
}

fn default_activity_interval_ms() -> u64 {
    300_000
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.into()
}
fn default_realm() -> String {
    "multitokens".into()
}
fn default_schemes() -> Vec<String> {
    contract::DEFAULT_SCHEMES.iter().map(|s| s.to_string()).collect()
}
fn default_user_header() -> String {
    contract::USER_HEADER.into()
}
fn default_device_header() -> Option<String> {
    Some(contract::DEVICE_HEADER.into())
}
fn default_scopes_header() -> Option<String> {
    Some(contract::SCOPES_HEADER.into())
}
fn default_token_id_header() -> Option<String> {
    Some(contract::TOKEN_ID_HEADER.into())
}
fn default_credential_header() -> Option<String> {
    Some(contract::CREDENTIAL_HEADER.into())
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_timeout_ms() -> u64 {
    500
}
fn default_max_entries() -> usize {
    10_000
}
fn default_max_negative_entries() -> usize {
    1_000
}
fn default_ttl_ms() -> u64 {
    30_000
}
fn default_negative_ttl_ms() -> u64 {
    10_000
}
fn default_wait_ms() -> u64 {
    5000
}

/// The timer period with the companion when none is configured.
pub const DEFAULT_POLL_MS: u64 = 1000;
/// The timer period with Redis callouts when none is configured: the bound of that build.
pub const DEFAULT_REDIS_POLL_MS: u64 = 250;
fn default_stale_window_ms() -> u64 {
    300_000
}

mod identity_headers;
mod refresh;
pub use identity_headers::IdentityHeaders;
pub use refresh::RefreshConfig;

/// The configuration compiled for use: validated, lower-cased, with the hasher built.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The checked configuration.
    pub config: FilterConfig,
    /// Digest functions and seal keys: `hash_key`, then `previous_hash_keys`.
    pub hash_keys: HashKeys,
    /// Identity headers: only the filter sets them; client values never reach the upstream.
    pub identity_headers: IdentityHeaders,
    /// Whether exclusion or scope rules look at the path (then only canonical paths pass).
    pub has_path_rules: bool,
    /// The scope rules, keyed as the upstream routes (see [`super::route`]).
    pub scope_rules: Vec<CompiledScopeRule>,
    /// How the token store is reached.
    pub transport: Transport,
    /// Redis key layout (the Redis transport reads the companion's keys).
    pub layout: multitokens_core::keys::KeyLayout,
    /// The deny replies that never vary.
    pub replies: super::reply::FixedReplies,
    /// `Bearer <api_key>` for the companion callouts, built once.
    pub companion_auth: String,
}

impl Compiled {
    /// The timer period (ms); 0 when the feed is off.
    pub fn poll_ms(&self) -> u64 {
        self.config.revocation_poll_ms.unwrap_or(DEFAULT_POLL_MS)
    }

    /// How long the companion may hold a feed poll (ms); 0 without long polls (the Redis
    /// transport, or `revocation_wait_ms: 0`).
    pub fn feed_wait_ms(&self) -> u64 {
        match self.transport {
            Transport::Companion(_) if self.poll_ms() > 0 => self.config.revocation_wait_ms,
            _ => 0,
        }
    }

    /// The timeout of a feed poll: the callout timeout, plus the long poll's hold.
    pub fn feed_timeout_ms(&self) -> u64 {
        self.transport.timeout_ms() + self.feed_wait_ms()
    }
}

impl Compiled {
    /// Parses and checks plugin configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<Compiled, String> {
        let config: FilterConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid multitokens configuration: {e}"))?;
        Self::compile(config).map_err(|e| format!("invalid multitokens configuration: {e}"))
    }

    fn compile(mut config: FilterConfig) -> Result<Compiled, String> {
        validate_prefix(&config.prefix).map_err(|e| format!("prefix: {e}"))?;
        if config.schemes.is_empty() || config.schemes.iter().any(|s| s.is_empty() || s.contains(' ')) {
            return Err("schemes: give at least one scheme, without spaces".into());
        }
        if let Some(cookie) = &config.cookie {
            if cookie.is_empty() || cookie.contains([';', '=', ' ']) {
                return Err(format!("cookie: {cookie:?} is not a valid cookie name"));
            }
        }
        let identity_headers = IdentityHeaders::compile(&config)?;
        config.upstream_routing.compile()?;
        config.csrf.compile()?;
        let has_path_rules = config.exclude.iter().any(|r| r.matching.path.is_some() || r.matching.prefix.is_some())
            || config.required_scopes.iter().any(|r| r.matching.path.is_some() || r.matching.prefix.is_some());
        for (i, rule) in config.exclude.iter().enumerate() {
            rule.check().map_err(|e| format!("exclude[{i}]: {e}"))?;
        }
        let case_sensitive = config.upstream_routing.case_sensitive;
        let scope_rules = (config.required_scopes.iter().enumerate())
            .map(|(i, rule)| {
                CompiledScopeRule::compile(rule.clone(), case_sensitive)
                    .map_err(|e| format!("required_scopes[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let transport = match (config.companion.clone(), config.redis.clone()) {
            (Some(c), None) => {
                if c.cluster.is_empty() {
                    return Err("companion.cluster: must name an Envoy cluster".into());
                }
                if c.api_key.is_empty() {
                    return Err("companion.api_key: must not be empty".into());
                }
                if !(1..=60_000).contains(&c.timeout_ms) {
                    return Err("companion.timeout_ms: must be 1 to 60000".into());
                }
                Transport::Companion(c)
            }
            (None, Some(r)) => {
                if r.cluster.is_empty() || r.cluster.starts_with('?') {
                    return Err("redis.cluster: must name an Envoy cluster (optionally with ?db=N)".into());
                }
                if let Some((_, db)) = r.cluster.split_once('?') {
                    let n = db.strip_prefix("db=").and_then(|n| n.parse::<u32>().ok());
                    if n.is_none() {
                        return Err(format!("redis.cluster: {db:?} is not ?db=N"));
                    }
                }
                if r.username.is_some() && r.password.is_none() {
                    return Err("redis.password: needed with redis.username".into());
                }
                if !(1..=60_000).contains(&r.timeout_ms) {
                    return Err("redis.timeout_ms: must be 1 to 60000".into());
                }
                Transport::Redis(r)
            }
            (Some(_), Some(_)) => return Err("companion, redis: give one transport, not both".into()),
            (None, None) => return Err("missing field `companion` (or `redis` for the Redis-callout build)".into()),
        };
        if config.cache.max_entries > 10_000_000 {
            return Err("cache.max_entries: at most 10000000".into());
        }
        if config.cache.max_negative_entries > 10_000_000 {
            return Err("cache.max_negative_entries: at most 10000000".into());
        }
        let default_poll = match transport {
            Transport::Companion(_) => DEFAULT_POLL_MS,
            Transport::Redis(_) => DEFAULT_REDIS_POLL_MS,
        };
        let poll = *config.revocation_poll_ms.get_or_insert(default_poll);
        if poll != 0 && !(50..=600_000).contains(&poll) {
            return Err("revocation_poll_ms: 0 (off) or 50 to 600000".into());
        }
        if config.revocation_wait_ms > 25_000 {
            return Err("revocation_wait_ms: 0 (poll on the timer) to 25000".into());
        }
        if let Some(t) = &config.throttle {
            t.check().map_err(|e| format!("throttle.{e}"))?;
        }
        let hash_key = config.hash_key.clone();
        config.dpop.prepare(hash_key.as_deref()).map_err(|e| format!("dpop.{e}"))?;
        if config.activity_interval_ms != 0 && !(1000..=86_400_000).contains(&config.activity_interval_ms) {
            return Err("activity_interval_ms: 0 (off) or 1000 to 86400000".into());
        }
        if let Some(r) = &config.refresh_on_use {
            if r.ttl == 0 || r.ttl > multitokens_core::ttl::MAX_TTL_SECS {
                return Err("refresh_on_use.ttl: seconds, at least 1".into());
            }
        }
        if let Some(key) = config.hash_key.as_deref().filter(|k| !k.is_empty()) {
            multitokens_core::keyring::check_key_strength(key).map_err(|e| format!("hash_key: {e}"))?;
        }
        if !config.accept_legacy_tokens && config.hash_key.as_deref().is_none_or(str::is_empty) {
            return Err("accept_legacy_tokens: false needs hash_key (the MAC in tokens is checked with it)".into());
        }
        config.schemes = config.schemes.iter().map(|s| s.to_ascii_lowercase()).collect();
        if !config.schemes.iter().any(|s| s == "dpop") {
            config.schemes.push("dpop".into()); // bound tokens come with it
        }
        let previous: Vec<&[u8]> = config.previous_hash_keys.iter().map(|k| k.as_bytes()).collect();
        let hash_keys = HashKeys::new(config.hash_key.as_deref().map(str::as_bytes), &previous)
            .map_err(|e| format!("previous_hash_keys: {e}"))?
            .retiring(&config.retired_hash_keys.iter().map(|k| k.as_bytes()).collect::<Vec<_>>())
            .map_err(|e| format!("retired_hash_keys: {e}"))?
            .with_record_keys(
                None,
                multitokens_core::signing::parse_public_keys(&config.record_public_keys)
                    .map_err(|e| format!("record_public_keys: {e}"))?,
            )
            .accepting_hmac_seals(config.accept_hmac_sealed_records)
            .accepting_unsealed(config.accept_unsealed_records);
        let layout = multitokens_core::keys::KeyLayout::new(&config.prefix);
        let replies = super::reply::FixedReplies::new(&config.realm);
        let companion_auth = match &transport {
            Transport::Companion(c) => format!("Bearer {}", c.api_key),
            Transport::Redis(_) => String::new(),
        };
        Ok(Compiled {
            config,
            hash_keys,
            identity_headers,
            has_path_rules,
            scope_rules,
            transport,
            layout,
            replies,
            companion_auth,
        })
    }
}

#[cfg(test)]
mod tests;
