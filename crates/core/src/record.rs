//! The token record stored (as JSON) under the token's record key.

use serde::{Deserialize, Serialize};

/// A record that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record could not be serialized (never stored then).
    #[error("cannot serialize a token record: {0}")]
    Serialize(serde_json::Error),
    /// What Redis holds is not a token record.
    #[error("corrupt token record: {0}")]
    Corrupt(serde_json::Error),
}

/// What Redis holds about one token. Never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public short id of the token.
    pub id: String,
    /// The user the token belongs to.
    pub user: String,
    /// Device label given at login (may be empty).
    #[serde(default)]
    pub device: String,
    /// Issue time, Unix seconds.
    pub created: u64,
    /// Scopes granted to the token.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Optional absolute expiry (Unix seconds) that no TTL reset or refresh extends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The lifetime the token was issued with, in milliseconds (absent: immortal). A login's TTL
    /// reset and a sliding refresh re-arm the token's TTL up to this, never beyond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_ms: Option<u64>,
    /// SHA-256 of the token (hex; version 2 tokens): a sweep re-keys the record under a new hash
    /// key from it. Useless without the key: the record's digest is keyed over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    /// Suspended (`multitokens suspend`): refused everywhere like a revoked token, until resumed.
    /// Under the seal, so write access to Redis cannot lift it (short of restoring an older value
    /// of the record, which could undo a revoke too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// The key the token is bound to (DPoP, RFC 9449): only requests with a proof made with it
    /// are accepted. Under the seal, so write access to Redis cannot unbind a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// A token's proof-of-possession key (RFC 7800's `cnf`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Confirmation {
    /// The JWK SHA-256 thumbprint (RFC 7638), base64url.
    pub jkt: String,
}

impl TokenRecord {
    /// The key the token is bound to, if it is bound; a `cnf` that names no thumbprint binds it to
    /// a key nobody holds (refused everywhere), never to none.
    pub fn bound_to(&self) -> Option<crate::dpop::Thumbprint> {
        self.cnf.as_ref().map(|c| crate::dpop::Thumbprint::from_b64(&c.jkt).unwrap_or(crate::dpop::Thumbprint([0; 32])))
    }
}

impl TokenRecord {
    /// JSON bytes as stored in Redis.
    ///
    /// An error rather than a fallback: a record that cannot be written must never be stored.
    pub fn to_json(&self) -> Result<String, RecordError> {
        serde_json::to_string(self).map_err(RecordError::Serialize)
    }

    /// Parses a stored record; garbage is an error, not a valid token.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        serde_json::from_slice(bytes).map_err(RecordError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_newer_fields() {
        let r = TokenRecord {
            id: "0123456789abcdef".into(),
            user: "alice".into(),
            device: "laptop".into(),
            created: 1_700_000_000,
            scopes: vec!["read".into()],
            lifetime_ms: Some(60_000),
            expires_at: None,
            token_hash: None,
            suspended: false,
            cnf: None,
        };
        assert_eq!(TokenRecord::from_json(r.to_json().unwrap().as_bytes()).unwrap(), r);
        let newer = br#"{"id":"x","user":"u","created":1,"future":true}"#;
        assert_eq!(TokenRecord::from_json(newer).unwrap().user, "u");
        assert!(TokenRecord::from_json(b"\x00garbage").is_err());
        assert!(TokenRecord::from_json(br#"{"user":"u"}"#).is_err());
    }
}
