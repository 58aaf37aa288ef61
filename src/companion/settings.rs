//! Companion settings, layered: command-line flag > environment variable > TOML config file
//! (`--config` / `MULTITOKENS_CONFIG`) > default. Every error names the setting.

use crate::core::token::{validate_prefix, DEFAULT_PREFIX};
use crate::core::ttl::{TokenTtl, DEFAULT_TOKEN_TTL};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// The Redis URL used when none is configured.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// The address `serve` listens on when none is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// What happens when a user already holds `max_tokens_per_user` live tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxTokensPolicy {
    /// Refuse the new login with a clear error.
    Reject,
    /// Revoke the user's oldest tokens to make room.
    EvictOldest,
}

impl FromStr for MaxTokensPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reject" => Ok(MaxTokensPolicy::Reject),
            "evict_oldest" => Ok(MaxTokensPolicy::EvictOldest),
            other => Err(format!("expected 'reject' or 'evict_oldest', got {other:?}")),
        }
    }
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

/// Names of every setting, as used in the TOML file; `MULTITOKENS_<NAME>` in the environment.
pub const SETTING_NAMES: &[&str] = &[
    "redis_url",
    "prefix",
    "token_ttl",
    "reset_ttl_on_login",
    "overwrite_none_ttl",
    "hash_key",
    "max_tokens_per_user",
    "max_tokens_policy",
    "max_lifetime",
    "admin_key",
    "internal_key",
    "redis_timeout_ms",
    "listen",
];

/// Raw values from flags and environment (already merged by clap); `None` where unset.
#[derive(Clone, Debug, Default)]
pub struct RawSettings {
    /// Values by setting name.
    pub values: Vec<(&'static str, String)>,
}

impl RawSettings {
    /// Records a value if present.
    pub fn set(&mut self, name: &'static str, value: Option<String>) {
        if let Some(v) = value {
            self.values.push((name, v));
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
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
    /// Most live tokens per user.
    pub max_tokens_per_user: Option<u32>,
    /// What to do at the limit.
    pub max_tokens_policy: MaxTokensPolicy,
    /// Absolute lifetime of a token in seconds, which no TTL reset or refresh extends.
    pub max_lifetime: Option<u64>,
    /// Bearer key for the admin API.
    pub admin_key: Option<String>,
    /// Key the filter presents on the internal endpoints (lookup, feed); never the admin key, and
    /// without it the internal endpoints are disabled.
    pub internal_key: Option<String>,
    /// Connect and response timeout towards Redis.
    pub redis_timeout: Duration,
    /// Listen address of `serve`.
    pub listen: String,
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
            .field("max_tokens_per_user", &self.max_tokens_per_user)
            .field("max_tokens_policy", &self.max_tokens_policy)
            .field("max_lifetime", &self.max_lifetime)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<set>"))
            .field("listen", &self.listen)
            .finish()
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true/false, yes/no, on/off or 1/0, got {s:?}")),
    }
}

fn toml_to_string(name: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(format!("config file: setting {name} must be a string, integer or boolean")),
    }
}

/// Reads a TOML config file into raw values; unknown keys are rejected by name.
pub fn read_config_file(path: &Path) -> Result<RawSettings, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| format!("config file {}: {}", path.display(), e.message()))?;
    let mut raw = RawSettings::default();
    for (key, value) in &table {
        let Some(name) = SETTING_NAMES.iter().find(|n| **n == key.as_str()) else {
            return Err(format!("config file {}: unknown setting {key:?}", path.display()));
        };
        raw.values.push((name, toml_to_string(name, value)?));
    }
    Ok(raw)
}

impl Settings {
    /// Resolves settings from flag/env values over an optional config file over defaults.
    pub fn resolve(cli: &RawSettings, file: Option<&RawSettings>) -> Result<Settings, String> {
        let get = |name: &str| cli.get(name).or_else(|| file.and_then(|f| f.get(name)));
        fn parsed<T>(name: &str, value: Option<&str>, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
            value.map(|v| parse(v).map_err(|e| format!("invalid {name}: {e}"))).transpose()
        }
        let nonempty = |name: &str| get(name).filter(|v| !v.is_empty()).map(str::to_string);

        let prefix = get("prefix").unwrap_or(DEFAULT_PREFIX).to_string();
        validate_prefix(&prefix).map_err(|e| format!("invalid prefix: {e}"))?;
        let max_tokens_per_user = parsed("max_tokens_per_user", get("max_tokens_per_user"), |v| match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("expected a positive whole number, got {v:?}")),
        })?;
        let redis_timeout_ms = parsed("redis_timeout_ms", get("redis_timeout_ms"), |v| match v.trim().parse::<u64>() {
            Ok(n) if (1..=60_000).contains(&n) => Ok(n),
            _ => Err(format!("expected milliseconds from 1 to 60000, got {v:?}")),
        })?;
        let redis_url = get("redis_url").unwrap_or(DEFAULT_REDIS_URL).to_string();
        crate::companion::connection::RedisTarget::parse(&redis_url).map_err(|e| format!("invalid redis_url: {e}"))?;
        Ok(Settings {
            redis_url,
            prefix,
            token_ttl: parsed("token_ttl", get("token_ttl"), TokenTtl::from_str)?.unwrap_or(DEFAULT_TOKEN_TTL),
            reset_ttl_on_login: parsed("reset_ttl_on_login", get("reset_ttl_on_login"), parse_bool)?.unwrap_or(true),
            overwrite_none_ttl: parsed("overwrite_none_ttl", get("overwrite_none_ttl"), parse_bool)?.unwrap_or(true),
            hash_key: nonempty("hash_key"),
            max_tokens_per_user,
            max_tokens_policy: parsed("max_tokens_policy", get("max_tokens_policy"), MaxTokensPolicy::from_str)?
                .unwrap_or(MaxTokensPolicy::Reject),
            max_lifetime: parsed("max_lifetime", get("max_lifetime"), |v| match v.trim().parse::<TokenTtl>()? {
                TokenTtl::Seconds(s) => Ok(s),
                TokenTtl::Never => Err("expected a number of seconds".into()),
            })?,
            admin_key: nonempty("admin_key"),
            internal_key: nonempty("internal_key"),
            redis_timeout: Duration::from_millis(redis_timeout_ms.unwrap_or(2000)),
            listen: get("listen").unwrap_or(DEFAULT_LISTEN).to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&'static str, &str)]) -> RawSettings {
        RawSettings { values: pairs.iter().map(|(n, v)| (*n, v.to_string())).collect() }
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let s = Settings::resolve(&RawSettings::default(), None).unwrap();
        assert_eq!(s.redis_url, DEFAULT_REDIS_URL);
        assert_eq!(s.prefix, "mt");
        assert_eq!(s.token_ttl, TokenTtl::Seconds(30 * 24 * 3600));
        assert!(s.reset_ttl_on_login && s.overwrite_none_ttl);
        assert_eq!(s.max_tokens_per_user, None);
        assert_eq!(s.max_tokens_policy, MaxTokensPolicy::Reject);
    }

    #[test]
    fn flags_and_env_win_over_the_file() {
        let file = raw(&[("prefix", "file"), ("token_ttl", "never"), ("max_tokens_per_user", "3")]);
        let cli = raw(&[("prefix", "flag")]);
        let s = Settings::resolve(&cli, Some(&file)).unwrap();
        assert_eq!(s.prefix, "flag");
        assert_eq!(s.token_ttl, TokenTtl::Never);
        assert_eq!(s.max_tokens_per_user, Some(3));
    }

    #[test]
    fn errors_name_the_setting() {
        let err = |pairs| Settings::resolve(&raw(pairs), None).unwrap_err();
        assert!(err(&[("token_ttl", "soon")]).contains("token_ttl"));
        assert!(err(&[("reset_ttl_on_login", "maybe")]).contains("reset_ttl_on_login"));
        assert!(err(&[("max_tokens_policy", "lifo")]).contains("max_tokens_policy"));
        assert!(err(&[("max_tokens_per_user", "0")]).contains("max_tokens_per_user"));
        assert!(err(&[("max_lifetime", "never")]).contains("max_lifetime"));
        assert!(err(&[("prefix", "no_underscores")]).contains("prefix"));
        assert!(err(&[("redis_url", "http://x")]).contains("redis_url"));
    }

    #[test]
    fn config_file_rejects_unknown_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mt.toml");
        std::fs::write(&path, "prefix = \"acme\"\ntoken_ttl = 60\nbogus = 1\n").unwrap();
        assert!(read_config_file(&path).unwrap_err().contains("bogus"));
        std::fs::write(&path, "prefix = \"acme\"\ntoken_ttl = 60\nreset_ttl_on_login = false\n").unwrap();
        let s = Settings::resolve(&RawSettings::default(), Some(&read_config_file(&path).unwrap())).unwrap();
        assert_eq!((s.prefix.as_str(), s.token_ttl, s.reset_ttl_on_login), ("acme", TokenTtl::Seconds(60), false));
    }
}
