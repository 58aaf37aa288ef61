//! Token lifetimes: a number of seconds, or `never` for immortal tokens.

use std::fmt;
use std::str::FromStr;

/// The lifetime given to a token (and, on login, to the user's other tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenTtl {
    /// Expires this many seconds after issue (or after the last reset / refresh).
    Seconds(u64),
    /// Never expires: the Redis key has no TTL.
    Never,
}

/// The default lifetime: 30 days.
pub const DEFAULT_TOKEN_TTL: TokenTtl = TokenTtl::Seconds(30 * 24 * 3600);
/// Longest finite lifetime accepted (100 years), so milliseconds never overflow.
pub const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 3600;

impl TokenTtl {
    /// Milliseconds for the Lua scripts, 0 meaning immortal.
    pub fn as_millis_or_zero(&self) -> u64 {
        match self {
            TokenTtl::Seconds(s) => s * 1000,
            TokenTtl::Never => 0,
        }
    }

    /// Seconds, or `None` when immortal.
    pub fn seconds(&self) -> Option<u64> {
        match self {
            TokenTtl::Seconds(s) => Some(*s),
            TokenTtl::Never => None,
        }
    }
}

/// Why a lifetime is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected a number of seconds (1 to {MAX_TTL_SECS}) or 'never', got {0:?}")]
pub struct TtlError(pub String);

impl FromStr for TokenTtl {
    type Err = TtlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("never") {
            return Ok(TokenTtl::Never);
        }
        match s.parse::<u64>() {
            Ok(n) if (1..=MAX_TTL_SECS).contains(&n) => Ok(TokenTtl::Seconds(n)),
            _ => Err(TtlError(s.to_string())),
        }
    }
}

impl fmt::Display for TokenTtl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenTtl::Seconds(s) => write!(f, "{s}"),
            TokenTtl::Never => f.write_str("never"),
        }
    }
}

/// Written as a number of seconds or the string `never`.
impl serde::Serialize for TokenTtl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TokenTtl::Seconds(s) => serializer.serialize_u64(*s),
            TokenTtl::Never => serializer.serialize_str("never"),
        }
    }
}

/// Read from a number of seconds, or a string holding one or `never`; checked like [`FromStr`].
impl<'de> serde::Deserialize<'de> for TokenTtl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TtlVisitor;
        impl serde::de::Visitor<'_> for TtlVisitor {
            type Value = TokenTtl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a number of seconds (1 to {MAX_TTL_SECS}) or 'never'")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TokenTtl, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TokenTtl, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TokenTtl, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(TtlVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seconds_and_never() {
        assert_eq!("3600".parse::<TokenTtl>(), Ok(TokenTtl::Seconds(3600)));
        assert_eq!("never".parse::<TokenTtl>(), Ok(TokenTtl::Never));
        assert_eq!("NEVER".parse::<TokenTtl>(), Ok(TokenTtl::Never));
        assert!("0".parse::<TokenTtl>().is_err());
        assert!("-5".parse::<TokenTtl>().is_err());
        assert!("soon".parse::<TokenTtl>().is_err());
        assert_eq!(serde_json::from_str::<TokenTtl>("60").ok(), Some(TokenTtl::Seconds(60)));
        assert_eq!(serde_json::from_str::<TokenTtl>("\"never\"").ok(), Some(TokenTtl::Never));
        assert!(serde_json::from_str::<TokenTtl>("0").is_err() && serde_json::from_str::<TokenTtl>("true").is_err());
        assert_eq!(serde_json::to_string(&TokenTtl::Never).ok().as_deref(), Some("\"never\""));
        assert_eq!(TokenTtl::Never.as_millis_or_zero(), 0);
        assert_eq!(TokenTtl::Seconds(2).as_millis_or_zero(), 2000);
    }
}
