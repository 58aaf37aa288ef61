//! Companion settings, layered: command-line flag > environment variable > TOML config file
//! (`--config` / `MULTITOKENS_CONFIG`) > default. Every error names the setting.
//!
//! Each setting is named once, in [`SettingsLayer`]: clap reads it from a flag and its
//! `MULTITOKENS_<NAME>` variable, serde from the file (unknown keys rejected), and
//! [`Settings::resolve`] stacks the layers and checks each value once.

use multitokens_core::token::{validate_prefix, DEFAULT_PREFIX};
use multitokens_core::ttl::{TokenTtl, DEFAULT_TOKEN_TTL, MAX_TTL_SECS};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The Redis URL used when none is configured.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// The address `serve` listens on when none is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The Redis timeout when none is configured, in milliseconds.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 2000;

/// Live tokens per user when nothing is configured.
pub const DEFAULT_MAX_TOKENS_PER_USER: u32 = 100;
/// The most `max_tokens_per_user` may be: a login's script walks at most this many tokens.
pub const MAX_TOKENS_PER_USER: u32 = 10_000;

/// How long a revoke waits for the edges when nothing is configured, in milliseconds.
pub const DEFAULT_REVOKE_WAIT_MS: u64 = 1000;

/// What happens when a user already holds `max_tokens_per_user` live tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensPolicy {
    /// Refuse the new login with a clear error.
    Reject,
    /// Revoke the user's oldest tokens to make room.
    #[value(name = "evict_oldest")]
    EvictOldest,
}

impl MaxTokensPolicy {
    /// The name the issue script understands.
    pub fn as_str(&self) -> &'static str {
        match self {
            MaxTokensPolicy::Reject => "reject",
            MaxTokensPolicy::EvictOldest => "evict_oldest",
        }
    }
}

/// A secret from the environment: secrets are never flags (they would show in `ps`).
fn secret_from_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// Several secrets (keys still accepted during a rotation): a comma-separated environment value,
/// or a list (or one comma-separated string) in the file.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OneOrMany", into = "Vec<String>")]
pub struct SecretList(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for SecretList {
    fn from(v: OneOrMany) -> Self {
        match v {
            OneOrMany::One(text) => SecretList::split(&text),
            OneOrMany::Many(list) => {
                SecretList(list.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            }
        }
    }
}

impl From<SecretList> for Vec<String> {
    fn from(v: SecretList) -> Self {
        v.0
    }
}

impl SecretList {
    /// The comma-separated secrets of a text; blanks around them and empty ones dropped.
    pub fn split(text: &str) -> Self {
        SecretList(text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
    }
}

/// Never prints the secrets, only how many.
impl std::fmt::Debug for SecretList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} set>", self.0.len())
    }
}

/// A list of secrets from the environment (comma-separated).
fn secrets_from_env(var: &str) -> Option<SecretList> {
    std::env::var(var).ok().map(|v| SecretList::split(&v))
}

/// A boolean flag or variable, as people write them.
fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true/false, yes/no, on/off or 1/0".to_string()),
    }
}

/// One layer of settings, every value optional: the flags and environment (parsed by clap, typed),
/// or the config file (parsed by serde, unknown keys rejected). The doc comments are `--help`.
#[derive(Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsLayer {
    /// Redis URL: redis://host:port/db for one node; for a Redis Cluster a comma-separated list of
    /// seed URLs or redis+cluster://host:port,host:port [default: redis://127.0.0.1:6379/0].
    #[arg(long, env = "MULTITOKENS_REDIS_URL", global = true, value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Token prefix (letters and digits), also the Redis key namespace [default: mt].
    #[arg(long, env = "MULTITOKENS_PREFIX", global = true)]
    pub prefix: Option<String>,
    /// Lifetime of new tokens: seconds or `never` [default: 2592000, 30 days].
    #[arg(long, env = "MULTITOKENS_TOKEN_TTL", global = true, value_name = "SECS|never")]
    pub token_ttl: Option<TokenTtl>,
    /// Whether a login resets the TTL of the user's other tokens to token_ttl [default: true].
    #[arg(long, env = "MULTITOKENS_RESET_TTL_ON_LOGIN", global = true, value_name = "BOOL",
          action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub reset_ttl_on_login: Option<bool>,
    /// Whether that reset also gives immortal tokens a TTL [default: true].
    #[arg(long, env = "MULTITOKENS_OVERWRITE_NONE_TTL", global = true, value_name = "BOOL",
          action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub overwrite_none_ttl: Option<bool>,
    /// Honour token records that carry no seal at all, only while upgrading from a release before
    /// sealed records, until `rekey --seal-unsealed` has run; a broken seal is refused anyway
    /// [default: false].
    #[arg(long, env = "MULTITOKENS_ACCEPT_UNSEALED_RECORDS", global = true, value_name = "BOOL",
          action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub accept_unsealed_records: Option<bool>,
    /// Honour HMAC-sealed records although records are signed (`signing_key` set), only while
    /// upgrading to signed records, until `rekey` has signed them all [default: false].
    #[arg(long, env = "MULTITOKENS_ACCEPT_HMAC_SEALED_RECORDS", global = true, value_name = "BOOL",
          action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub accept_hmac_sealed_records: Option<bool>,
    /// Most live tokens per user, 1 to 10000: it bounds what one login costs Redis [default: 100].
    #[arg(long, env = "MULTITOKENS_MAX_TOKENS_PER_USER", global = true, value_name = "N")]
    pub max_tokens_per_user: Option<u32>,
    /// At the limit: `evict_oldest` token or `reject` the login [default: evict_oldest].
    #[arg(long, env = "MULTITOKENS_MAX_TOKENS_POLICY", global = true, value_name = "POLICY")]
    pub max_tokens_policy: Option<MaxTokensPolicy>,
    /// Absolute lifetime of a token in seconds: no TTL reset or refresh extends it [default: none].
    #[arg(long, env = "MULTITOKENS_MAX_LIFETIME", global = true, value_name = "SECS")]
    pub max_lifetime: Option<u64>,
    /// Connect and response timeout towards Redis, in milliseconds, 1 to 60000 [default: 2000].
    #[arg(long, env = "MULTITOKENS_REDIS_TIMEOUT_MS", global = true, value_name = "MS")]
    pub redis_timeout_ms: Option<u64>,
    /// How long a revoke waits for the live edges (filter VMs) to apply it, in milliseconds,
    /// 0 to 10000; its answer says how many did [default: 1000].
    #[arg(long, env = "MULTITOKENS_REVOKE_WAIT_MS", global = true, value_name = "MS")]
    pub revoke_wait_ms: Option<u64>,
    /// Most edges (filter VMs following the feed: one per Envoy worker) one companion tracks, 1 to
    /// 1000000; a new edge past it is refused until a silent one expires [default: 10000].
    #[arg(long, env = "MULTITOKENS_MAX_EDGES", global = true, value_name = "N")]
    pub max_edges: Option<u64>,
    /// Require DPoP server nonces in ext_authz checks, as the filter's `dpop.require_nonce` does
    /// (stateless, from hash_key: filters and companions with the same key take each other's)
    /// [default: false].
    #[arg(long, env = "MULTITOKENS_DPOP_REQUIRE_NONCE", global = true, value_name = "BOOL",
          action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub dpop_require_nonce: Option<bool>,
    /// Address `serve` listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "MULTITOKENS_LISTEN", global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// HMAC key for digests ("pepper"): MULTITOKENS_HASH_KEY or the file, never a flag.
    #[arg(skip = secret_from_env("MULTITOKENS_HASH_KEY"))]
    pub hash_key: Option<String>,
    /// Hash keys still accepted while tokens are re-keyed to the current one, comma-separated:
    /// MULTITOKENS_PREVIOUS_HASH_KEYS or the file, never a flag.
    #[arg(skip = secrets_from_env("MULTITOKENS_PREVIOUS_HASH_KEYS"))]
    pub previous_hash_keys: Option<SecretList>,
    /// Hash keys a finished rotation retired, comma-separated: the tokens minted under them keep
    /// passing the MAC check until they expire; no digest is tried under them.
    /// MULTITOKENS_RETIRED_HASH_KEYS or the file, never a flag.
    #[arg(skip = secrets_from_env("MULTITOKENS_RETIRED_HASH_KEYS"))]
    pub retired_hash_keys: Option<SecretList>,
    /// Ed25519 key that signs every record written (its 32-byte seed, base64url, from `multitokens
    /// keygen --signing`); the edges verify with its public half. MULTITOKENS_SIGNING_KEY or the
    /// file, never a flag.
    #[arg(skip = secret_from_env("MULTITOKENS_SIGNING_KEY"))]
    pub signing_key: Option<String>,
    /// Other public keys whose record signatures are honoured (a signing key rotation),
    /// comma-separated: MULTITOKENS_RECORD_PUBLIC_KEYS or the file.
    #[arg(skip = secrets_from_env("MULTITOKENS_RECORD_PUBLIC_KEYS"))]
    pub record_public_keys: Option<SecretList>,
    /// Bearer keys of the admin role, comma-separated (more than one while rotating):
    /// MULTITOKENS_ADMIN_KEY or the file, never a flag.
    #[arg(skip = secrets_from_env("MULTITOKENS_ADMIN_KEY"))]
    pub admin_key: Option<SecretList>,
    /// Keys of the filter's internal endpoints, comma-separated: MULTITOKENS_INTERNAL_KEY or the
    /// file, never a flag.
    #[arg(skip = secrets_from_env("MULTITOKENS_INTERNAL_KEY"))]
    pub internal_key: Option<SecretList>,
    /// RFC 7662 introspection clients, `<client id>:<secret>`, comma-separated:
    /// MULTITOKENS_INTROSPECT_CLIENTS or the file, never a flag.
    #[arg(skip = secrets_from_env("MULTITOKENS_INTROSPECT_CLIENTS"))]
    pub introspect_clients: Option<SecretList>,
    /// Signed security webhooks: `[[webhooks]]` tables in the config file only (`name`, `url`,
    /// `secrets`, optional `events` and `timeout_ms`; docs/companion.md).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Vec<crate::webhooks::WebhookConfig>>,
}

/// Never prints values: a layer may hold secrets.
impl std::fmt::Debug for SettingsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettingsLayer").finish_non_exhaustive()
    }
}

impl SettingsLayer {
    /// Reads a TOML config file; unknown keys and wrong types are refused with the key's name.
    pub fn from_file(path: &Path) -> Result<SettingsLayer, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses TOML text into a layer.
    pub fn from_toml(text: &str) -> Result<SettingsLayer, String> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| e.message().to_string())?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let message = e.inner().message().to_string();
            match e.path().to_string().as_str() {
                "." => message,
                path => format!("setting {path}: {message}"),
            }
        })
    }

    /// This layer over `lower`: each value set here wins, the others come from `lower`.
    pub fn over(self, lower: SettingsLayer) -> Result<SettingsLayer, String> {
        let as_map = |layer: &SettingsLayer| match serde_json::to_value(layer) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err("cannot merge settings".to_string()),
        };
        let mut merged = as_map(&lower)?;
        merged.extend(as_map(&self)?.into_iter().filter(|(_, value)| !value.is_null()));
        serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| format!("cannot merge settings: {e}"))
    }
}

/// The resolved companion settings.
#[derive(Clone)]
pub struct Settings {
    /// Redis URL: `redis://…` for one node; a comma-separated list or `redis+cluster://` for a cluster.
    pub redis_url: String,
    /// Token prefix, also the Redis key namespace.
    pub prefix: String,
    /// Lifetime of new tokens (and of reset ones).
    pub token_ttl: TokenTtl,
    /// Whether a login resets the TTL of the user's other tokens.
    pub reset_ttl_on_login: bool,
    /// Whether that reset also gives immortal tokens a TTL.
    pub overwrite_none_ttl: bool,
    /// HMAC key for digests ("pepper").
    pub hash_key: Option<String>,
    /// Hash keys still accepted (a rotation in progress), at most 4.
    pub previous_hash_keys: Vec<String>,
    /// Hash keys retired by a finished rotation (only their tokens' MACs are checked), at most 4.
    pub retired_hash_keys: Vec<String>,
    /// The record signing key's seed (base64url).
    pub signing_key: Option<String>,
    /// Other public keys whose signatures are honoured.
    pub record_public_keys: Vec<String>,
    /// Honour HMAC-sealed records although records are signed (an upgrade in progress).
    pub accept_hmac_sealed_records: bool,
    /// Honour records with no seal (an upgrade in progress).
    pub accept_unsealed_records: bool,
    /// Most live tokens per user (every script's cost is bounded by it).
    pub max_tokens_per_user: u32,
    /// What to do at the limit.
    pub max_tokens_policy: MaxTokensPolicy,
    /// Absolute lifetime of a token in seconds, which no TTL reset or refresh extends.
    pub max_lifetime: Option<u64>,
    /// Bearer keys of the admin role (issue, list, revoke, introspect, audit).
    pub admin_keys: Vec<String>,
    /// Keys the filter presents on the internal endpoints (lookup, feed); never an admin key, and
    /// without one the internal endpoints are disabled.
    pub internal_keys: Vec<String>,
    /// Introspection clients (`<id>:<secret>`): RFC 7662 only.
    pub introspect_clients: Vec<String>,
    /// Connect and response timeout towards Redis.
    pub redis_timeout: Duration,
    /// How long a revoke waits for the live edges to apply it.
    pub revoke_wait: Duration,
    /// Most edges one companion tracks.
    pub max_edges: usize,
    /// Whether ext_authz requires DPoP server nonces.
    pub dpop_require_nonce: bool,
    /// Listen address of `serve`.
    pub listen: String,
    /// Webhook endpoints for security events.
    pub webhooks: Vec<crate::webhooks::WebhookEndpoint>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("redis_url", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("token_ttl", &self.token_ttl)
            .field("reset_ttl_on_login", &self.reset_ttl_on_login)
            .field("overwrite_none_ttl", &self.overwrite_none_ttl)
            .field("hash_key", &self.hash_key.as_ref().map(|_| "<set>"))
            .field("previous_hash_keys", &self.previous_hash_keys.len())
            .field("retired_hash_keys", &self.retired_hash_keys.len())
            .field("signing_key", &self.signing_key.as_ref().map(|_| "<set>"))
            .field("record_public_keys", &self.record_public_keys)
            .field("accept_hmac_sealed_records", &self.accept_hmac_sealed_records)
            .field("accept_unsealed_records", &self.accept_unsealed_records)
            .field("max_tokens_per_user", &self.max_tokens_per_user)
            .field("max_tokens_policy", &self.max_tokens_policy)
            .field("max_lifetime", &self.max_lifetime)
            .field("admin_keys", &self.admin_keys.len())
            .field("internal_keys", &self.internal_keys.len())
            .field("introspect_clients", &self.introspect_clients.len())
            .field("revoke_wait", &self.revoke_wait)
            .field("dpop_require_nonce", &self.dpop_require_nonce)
            .field("listen", &self.listen)
            .field("webhooks", &self.webhooks.iter().map(|w| &w.name).collect::<Vec<_>>())
            .finish()
    }
}

/// A range check that names the setting.
fn within<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: Option<T>,
    min: T,
    max: T,
) -> Result<Option<T>, String> {
    match value {
        Some(v) if v < min || v > max => Err(format!("invalid {name}: expected {min} to {max}, got {v}")),
        other => Ok(other),
    }
}

impl Settings {
    /// Fills defaults into a (merged) layer and checks every value; errors name the setting.
    pub fn resolve(layer: SettingsLayer) -> Result<Settings, String> {
        let prefix = layer.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        validate_prefix(&prefix).map_err(|e| format!("invalid prefix: {e}"))?;
        let redis_url = layer.redis_url.unwrap_or_else(|| DEFAULT_REDIS_URL.to_string());
        crate::connection::RedisAddress::parse(&redis_url).map_err(|e| format!("invalid redis_url: {e}"))?;
        let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
        let previous_hash_keys = layer.previous_hash_keys.unwrap_or_default().0;
        let previous: Vec<&[u8]> = previous_hash_keys.iter().map(|k| k.as_bytes()).collect();
        let retired_hash_keys = layer.retired_hash_keys.unwrap_or_default().0;
        let retired: Vec<&[u8]> = retired_hash_keys.iter().map(|k| k.as_bytes()).collect();
        multitokens_core::keyring::HashKeys::new(layer.hash_key.as_deref().map(str::as_bytes), &previous)
            .map_err(|e| format!("invalid previous_hash_keys: {e}"))?
            .retiring(&retired)
            .map_err(|e| format!("invalid retired_hash_keys: {e}"))?;
        let signing_key = nonempty(layer.signing_key);
        if let Some(key) = &signing_key {
            multitokens_core::signing::RecordSigner::from_text(key).map_err(|e| format!("invalid signing_key: {e}"))?;
        }
        let record_public_keys = layer.record_public_keys.unwrap_or_default().0;
        multitokens_core::signing::parse_public_keys(&record_public_keys)
            .map_err(|e| format!("invalid record_public_keys: {e}"))?;
        // the current key must be strong; a previous one may be weak: rotating is the way off it
        if let Some(key) = layer.hash_key.as_deref().filter(|k| !k.is_empty()) {
            multitokens_core::keyring::check_key_strength(key).map_err(|e| format!("invalid hash_key: {e}"))?;
        }
        let dpop_require_nonce = layer.dpop_require_nonce.unwrap_or(false);
        if dpop_require_nonce && layer.hash_key.as_deref().is_none_or(str::is_empty) {
            return Err("invalid dpop_require_nonce: nonces are made with hash_key, which is not set".into());
        }
        Ok(Settings {
            redis_url,
            prefix,
            token_ttl: layer.token_ttl.unwrap_or(DEFAULT_TOKEN_TTL),
            reset_ttl_on_login: layer.reset_ttl_on_login.unwrap_or(true),
            overwrite_none_ttl: layer.overwrite_none_ttl.unwrap_or(true),
            hash_key: nonempty(layer.hash_key),
            previous_hash_keys,
            retired_hash_keys,
            signing_key,
            record_public_keys,
            accept_hmac_sealed_records: layer.accept_hmac_sealed_records.unwrap_or(false),
            accept_unsealed_records: layer.accept_unsealed_records.unwrap_or(false),
            max_tokens_per_user: within("max_tokens_per_user", layer.max_tokens_per_user, 1, MAX_TOKENS_PER_USER)?
                .unwrap_or(DEFAULT_MAX_TOKENS_PER_USER),
            max_tokens_policy: layer.max_tokens_policy.unwrap_or(MaxTokensPolicy::EvictOldest),
            max_lifetime: within("max_lifetime", layer.max_lifetime, 1, MAX_TTL_SECS)?,
            admin_keys: layer.admin_key.unwrap_or_default().0,
            internal_keys: layer.internal_key.unwrap_or_default().0,
            introspect_clients: layer.introspect_clients.unwrap_or_default().0,
            redis_timeout: Duration::from_millis(
                within("redis_timeout_ms", layer.redis_timeout_ms, 1, 60_000)?.unwrap_or(DEFAULT_REDIS_TIMEOUT_MS),
            ),
            revoke_wait: Duration::from_millis(
                within("revoke_wait_ms", layer.revoke_wait_ms, 0, 10_000)?.unwrap_or(DEFAULT_REVOKE_WAIT_MS),
            ),
            max_edges: within("max_edges", layer.max_edges, 1, 1_000_000)?
                .map_or(crate::edges::MAX_EDGES, |n| n as usize),
            dpop_require_nonce,
            listen: layer.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            webhooks: crate::webhooks::WebhookEndpoint::resolve_all(layer.webhooks.unwrap_or_default())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> SettingsLayer {
        SettingsLayer::from_toml(text).unwrap()
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let s = Settings::resolve(SettingsLayer::default()).unwrap();
        assert_eq!(s.redis_url, DEFAULT_REDIS_URL);
        assert_eq!(s.prefix, "mt");
        assert_eq!(s.token_ttl, TokenTtl::Seconds(30 * 24 * 3600));
        assert!(s.reset_ttl_on_login && s.overwrite_none_ttl);
        assert_eq!(s.max_tokens_per_user, 100);
        assert_eq!(s.max_tokens_policy, MaxTokensPolicy::EvictOldest);
        assert_eq!(s.redis_timeout, Duration::from_millis(2000));
        assert_eq!(s.max_edges, 10_000);
    }

    #[test]
    fn flags_and_env_win_over_the_file() {
        const STRONG: &str = "fX2vQ9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE";
        let lower = file(&format!(
            "prefix = \"file\"\ntoken_ttl = \"never\"\nmax_tokens_per_user = 3\nhash_key = \"{STRONG}\"\n"
        ));
        let upper = SettingsLayer { prefix: Some("flag".into()), ..Default::default() };
        let s = Settings::resolve(upper.over(lower).unwrap()).unwrap();
        assert_eq!(s.prefix, "flag");
        assert_eq!(s.token_ttl, TokenTtl::Never);
        assert_eq!(s.max_tokens_per_user, 3);
        assert_eq!(s.hash_key.as_deref(), Some(STRONG));
    }

    #[test]
    fn errors_name_the_setting() {
        let err = |text: &str| match SettingsLayer::from_toml(text) {
            Ok(layer) => Settings::resolve(layer).unwrap_err(),
            Err(e) => e,
        };
        assert!(err("token_ttl = \"soon\"").contains("token_ttl"));
        assert!(err("hash_key = \"pepper\"").contains("invalid hash_key: a hash key needs 256 random bits"));
        assert!(err("token_ttl = 0").contains("token_ttl"));
        assert!(err("reset_ttl_on_login = \"maybe\"").contains("reset_ttl_on_login"));
        assert!(err("max_tokens_policy = \"lifo\"").contains("max_tokens_policy"));
        assert!(err("max_tokens_per_user = 0").contains("max_tokens_per_user"));
        assert!(err("max_tokens_per_user = -1").contains("max_tokens_per_user"));
        assert!(err("max_tokens_per_user = 10001").contains("max_tokens_per_user"));
        assert!(err("max_lifetime = \"never\"").contains("max_lifetime"));
        assert!(err("redis_timeout_ms = 0").contains("redis_timeout_ms"));
        assert!(err("revoke_wait_ms = 60000").contains("revoke_wait_ms"));
        assert!(err("dpop_require_nonce = true").contains("dpop_require_nonce"), "nonces need hash_key");
        assert!(err("prefix = \"no_underscores\"").contains("prefix"));
        assert!(err("redis_url = \"http://x\"").contains("redis_url"));
        assert!(err("bogus = 1").contains("bogus"));
    }

    #[test]
    fn the_file_is_typed() {
        let s = Settings::resolve(file(
            "prefix = \"acme\"\ntoken_ttl = 60\nreset_ttl_on_login = false\nmax_tokens_policy = \"evict_oldest\"\n",
        ))
        .unwrap();
        assert_eq!((s.prefix.as_str(), s.token_ttl, s.reset_ttl_on_login), ("acme", TokenTtl::Seconds(60), false));
        assert_eq!(s.max_tokens_policy, MaxTokensPolicy::EvictOldest);
        assert_eq!(file("token_ttl = \"3600\"").token_ttl, Some(TokenTtl::Seconds(3600)));
    }

    #[test]
    fn config_file_is_read_from_disk_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mt.toml");
        std::fs::write(&path, "prefix = \"acme\"\nbogus = 1\n").unwrap();
        let err = SettingsLayer::from_file(&path).unwrap_err();
        assert!(err.contains("bogus") && err.contains("mt.toml"), "{err}");
    }
}
