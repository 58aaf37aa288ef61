//! What a store operation can fail with. The API maps these to HTTP statuses (`api.rs`), the CLI
//! to exit codes (`cli.rs`); the variants keep an unreachable Redis apart from data that is not
//! ours and from commands Redis refused.

use multitokens_core::record::RecordError;
use multitokens_core::user::InputError;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Malformed, unknown, revoked or expired token.
    #[error("{}", multitokens_core::contract::INVALID_TOKEN)]
    InvalidToken,
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The user holds `max_tokens_per_user` tokens and the policy is `reject`.
    #[error("the user already has {0} live tokens (max_tokens_per_user); log out a device first")]
    LimitReached(u32),
    /// A user id, device label or scope the core refuses.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Other bad input from the caller (a setting, a TTL).
    #[error("{0}")]
    BadInput(String),
    /// Redis unreachable, slow, loading, or its cluster not serving the slot: worth a retry.
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
    /// Redis refused a command or a script failed (permissions, a script error): not worth a retry.
    #[error("Redis refused the command: {0}")]
    Refused(String),
    /// Redis holds or answered something that is not what the scripts write.
    #[error("Redis returned unexpected data: {0}")]
    Corrupt(String),
    /// A stored record is not a token record, or a new one cannot be written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The operating system's random source failed.
    #[error("OS random source failed: {0}")]
    Random(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        // The error text never contains keys' values; keys hold digests, not tokens.
        let text = e.to_string();
        match e.kind() {
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Corrupt(text),
            ErrorKind::Extension
            | ErrorKind::AuthenticationFailed
            | ErrorKind::Server(
                ServerErrorKind::ResponseError
                | ServerErrorKind::ExecAbort
                | ServerErrorKind::NoScript
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::NoPerm,
            ) => StoreError::Refused(text),
            _ => StoreError::Unavailable(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_errors_keep_unavailable_apart_from_refused_and_corrupt() {
        let io = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        assert!(matches!(StoreError::from(io), StoreError::Unavailable(_)));
        let script =
            redis::RedisError::from((redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError), "script failed"));
        assert!(matches!(StoreError::from(script), StoreError::Refused(_)));
        let perm = redis::RedisError::from((redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm), "no permission"));
        assert!(matches!(StoreError::from(perm), StoreError::Refused(_)));
        let loading =
            redis::RedisError::from((redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading), "loading"));
        assert!(matches!(StoreError::from(loading), StoreError::Unavailable(_)));
        let shape = redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "not an array"));
        assert!(matches!(StoreError::from(shape), StoreError::Corrupt(_)));
    }
}
