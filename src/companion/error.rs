//! Errors of the companion, each with its CLI exit code and HTTP status.

use std::fmt;

/// Everything a store operation can fail with.
#[derive(Debug)]
pub enum StoreError {
    /// Malformed, unknown, revoked or expired token.
    InvalidToken,
    /// The thing asked for does not exist.
    NotFound(String),
    /// The user holds `max_tokens_per_user` tokens and the policy is `reject`.
    LimitReached(u32),
    /// Bad input from the caller.
    BadInput(String),
    /// Redis unreachable, slow or failing.
    Unavailable(String),
    /// Redis holds something that is not a token record.
    Corrupt(String),
}

impl StoreError {
    /// CLI exit code: 1 invalid / not found / refused, 2 usage, 3 Redis.
    pub fn exit_code(&self) -> u8 {
        match self {
            StoreError::InvalidToken | StoreError::NotFound(_) | StoreError::LimitReached(_) => 1,
            StoreError::BadInput(_) => 2,
            StoreError::Unavailable(_) | StoreError::Corrupt(_) => 3,
        }
    }

    /// HTTP status for the API.
    pub fn http_status(&self) -> u16 {
        match self {
            StoreError::InvalidToken => 401,
            StoreError::NotFound(_) => 404,
            StoreError::LimitReached(_) => 409,
            StoreError::BadInput(_) => 400,
            StoreError::Unavailable(_) | StoreError::Corrupt(_) => 503,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::InvalidToken => f.write_str("Invalid token."),
            StoreError::NotFound(what) => write!(f, "{what}"),
            StoreError::LimitReached(n) => write!(f, "the user already has {n} live tokens (max_tokens_per_user); log out a device first"),
            StoreError::BadInput(msg) => f.write_str(msg),
            StoreError::Unavailable(msg) => write!(f, "Redis unavailable: {msg}"),
            StoreError::Corrupt(msg) => write!(f, "Redis returned unexpected data: {msg}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        // The error text never contains keys' values; keys hold digests, not tokens.
        StoreError::Unavailable(e.to_string())
    }
}
