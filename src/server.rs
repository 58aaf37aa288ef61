//! `multitokens serve`: checks the keys, binds the listener, checks the store's hash key, logs,
//! and runs the API until Ctrl-C or SIGTERM.

use super::api::{self, AppState};
use super::roles::ApiKeys;
use super::settings::Settings;
use super::store::{KeyCheck, TokenStore};
use std::sync::Arc;

pub use super::roles::MIN_KEY_LEN;

/// What a companion with the wrong `MULTITOKENS_HASH_KEY` is told.
pub const KEY_DIFFERS: &str = "MULTITOKENS_HASH_KEY does not match the key this store was written with (its \
    <prefix>:keycheck value): every token would look unknown. Use the store's key; to start over with a new key on \
    purpose, delete that key.";

/// Why the server did not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting `serve` needs is missing or unsafe.
    #[error("{0}")]
    Config(String),
    /// The hash key differs from the one the store was written with.
    #[error("{KEY_DIFFERS}")]
    KeyDiffers,
    /// The listen address cannot be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// The server failed while running.
    #[error("server error: {0}")]
    Io(std::io::Error),
}

/// Why a companion without the signing key refuses to write into a store whose records are signed.
pub const UNSIGNED_IN_SIGNED_STORE: &str =
    "MULTITOKENS_SIGNING_KEY is not set, but this store's records are signed: every record written without it would \
     be refused";

/// The API's keys by role, checked ([`ApiKeys::new`]).
fn checked_keys(settings: &Settings) -> Result<ApiKeys, ServeError> {
    let keys =
        ApiKeys::new(settings.admin_keys.clone(), settings.introspect_clients.clone(), settings.internal_keys.clone())
            .map_err(ServeError::Config)?;
    if !keys.has_internal() {
        tracing::warn!(
            "MULTITOKENS_INTERNAL_KEY is not set: the filter's lookup and revocation feed endpoints are disabled"
        );
    }
    Ok(keys)
}

/// Serves the API with `store` until Ctrl-C or SIGTERM.
pub async fn serve(settings: &Settings, store: TokenStore) -> Result<(), ServeError> {
    let keys = checked_keys(settings)?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| ServeError::Bind(settings.listen.clone(), e))?;
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    match store.check_hash_key().await {
        Ok(KeyCheck::Matches) => {}
        Ok(KeyCheck::Differs) => return Err(ServeError::KeyDiffers),
        Err(e) => tracing::warn!(error = %e, "Redis is not reachable yet; /readyz answers 503 until it is"),
    }
    if let Ok(false) = store.check_signing().await {
        return Err(ServeError::Config(UNSIGNED_IN_SIGNED_STORE.into()));
    }
    tracing::info!(listen = %addr, prefix = %settings.prefix, "multitokens API listening");
    if let (true, Some(key)) = (settings.dpop_require_nonce, settings.hash_key.as_deref()) {
        crate::ext_authz::require_nonces(multitokens_core::dpop::nonce::NonceKey::derive(key.as_bytes()));
    }
    let state = AppState::new(Arc::new(store), keys, settings.revoke_wait, settings.max_edges);
    // the feed's blocking read returns well within the Redis timeout
    state.spawn_followers((settings.redis_timeout / 2).min(std::time::Duration::from_secs(1)));
    if !settings.webhooks.is_empty() {
        tracing::info!(endpoints = settings.webhooks.len(), "delivering security webhooks");
        crate::webhooks::spawn(state.store.clone(), settings.webhooks.clone());
    }
    api::run(listener, state, shutdown_signal()).await.map_err(ServeError::Io)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

/// Logs of `serve` on stderr: level from `MULTITOKENS_LOG` (default info), JSON lines when
/// `MULTITOKENS_LOG_FORMAT=json`. Fields carry users and token ids, never tokens or keys.
pub fn init_logging() {
    let level = std::env::var("MULTITOKENS_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    // colour only on a terminal: a log file gets plain text
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_target(false).with_ansi(ansi);
    let _ = match std::env::var("MULTITOKENS_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().try_init(),
        _ => builder.try_init(),
    };
}
