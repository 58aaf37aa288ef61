//! The `multitokens` command line: issue, whoami, revoke, revoke-all, list and serve.
//!
//! Exit codes: 0 success; 1 the token is not valid or not found (or the login was refused by
//! `max_tokens_per_user`); 2 usage or configuration error; 3 Redis unreachable or failing.
//! Errors are one line on stderr.

use super::api::{self, AppState};
use super::error::StoreError;
use super::settings::{read_config_file, RawSettings, Settings};
use super::store::{IssueRequest, KeyCheck, TokenStore};
use crate::core::ttl::TokenTtl;
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Per-device bearer tokens for Envoy: issue, verify and revoke tokens stored (as digests) in Redis.
///
/// Settings come from flags, then MULTITOKENS_* environment variables, then the TOML config file,
/// then defaults. Secrets (MULTITOKENS_HASH_KEY, MULTITOKENS_ADMIN_KEY, MULTITOKENS_INTERNAL_KEY)
/// are read from the environment or the config file only, never from flags.
#[derive(Parser, Debug)]
#[command(name = "multitokens", version, propagate_version = true)]
pub struct Cli {
    /// Settings given as flags or environment variables.
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Settings accepted as flags (each also from its environment variable).
#[derive(Args, Debug)]
pub struct SettingsArgs {
    /// TOML config file with any of the settings (keys: redis_url, prefix, token_ttl, ...).
    #[arg(long, env = "MULTITOKENS_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Redis URL: redis://host:port/db for one node; for a Redis Cluster a comma-separated list of
    /// seed URLs or redis+cluster://host:port,host:port [default: redis://127.0.0.1:6379/0].
    #[arg(long, env = "MULTITOKENS_REDIS_URL", global = true, value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Token prefix (letters and digits), also the Redis key namespace [default: mt].
    #[arg(long, env = "MULTITOKENS_PREFIX", global = true)]
    pub prefix: Option<String>,
    /// Lifetime of new tokens: seconds or `never` [default: 2592000, 30 days].
    #[arg(long, env = "MULTITOKENS_TOKEN_TTL", global = true, value_name = "SECS|never")]
    pub token_ttl: Option<String>,
    /// Whether a login resets the TTL of the user's other tokens to token_ttl [default: true].
    #[arg(long, env = "MULTITOKENS_RESET_TTL_ON_LOGIN", global = true, value_name = "BOOL")]
    pub reset_ttl_on_login: Option<String>,
    /// Whether that reset also gives immortal tokens a TTL [default: true].
    #[arg(long, env = "MULTITOKENS_OVERWRITE_NONE_TTL", global = true, value_name = "BOOL")]
    pub overwrite_none_ttl: Option<String>,
    /// Most live tokens per user [default: unlimited].
    #[arg(long, env = "MULTITOKENS_MAX_TOKENS_PER_USER", global = true, value_name = "N")]
    pub max_tokens_per_user: Option<String>,
    /// At the limit: `reject` the login or `evict_oldest` token [default: reject].
    #[arg(long, env = "MULTITOKENS_MAX_TOKENS_POLICY", global = true, value_name = "POLICY")]
    pub max_tokens_policy: Option<String>,
    /// Absolute lifetime of a token in seconds: no TTL reset or refresh extends it [default: none].
    #[arg(long, env = "MULTITOKENS_MAX_LIFETIME", global = true, value_name = "SECS")]
    pub max_lifetime: Option<String>,
    /// Connect and response timeout towards Redis, in milliseconds [default: 2000].
    #[arg(long, env = "MULTITOKENS_REDIS_TIMEOUT_MS", global = true, value_name = "MS")]
    pub redis_timeout_ms: Option<String>,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Issue a token for a user (log in one device). Prints the token, or JSON with --json:
    /// {"token","id","user","device","first","expires_in"}.
    Issue {
        /// The user id.
        #[arg(long)]
        user: String,
        /// A label for the device or browser.
        #[arg(long)]
        device: Option<String>,
        /// This token's lifetime: seconds or `never` (default: token_ttl).
        #[arg(long, value_name = "SECS|never")]
        ttl: Option<TokenTtl>,
        /// A scope granted to the token (repeatable).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show whom a token belongs to. Prints the user id, or JSON with --json:
    /// {"id","user","device","created","expires_in","scopes"}. Exit 1 if the token is not valid.
    Whoami {
        /// The token, or `-` to read it from standard input.
        token: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one token (log out one device). Exit 1 if it was not live.
    Revoke {
        /// The token, or `-` to read it from standard input.
        token: String,
    },
    /// Revoke all of a user's tokens (log out everywhere), or all but one with --except.
    /// Prints how many were revoked ({"revoked": n} with --json).
    RevokeAll {
        /// The user id.
        #[arg(long)]
        user: String,
        /// Keep this token (log out all other devices); `-` reads it from standard input.
        #[arg(long, value_name = "TOKEN")]
        except: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a user's live tokens: id, device, created, expires_in, scopes (a JSON array with --json).
    List {
        /// The user id.
        #[arg(long)]
        user: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the HTTP API (needs MULTITOKENS_ADMIN_KEY). Stops on Ctrl-C or SIGTERM.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, env = "MULTITOKENS_LISTEN", value_name = "ADDR")]
        listen: Option<String>,
    },
}

/// What a companion with the wrong `MULTITOKENS_HASH_KEY` is told.
const KEY_DIFFERS: &str = "MULTITOKENS_HASH_KEY does not match the key this store was written with (its <prefix>:keycheck \
    value): every token would look unknown. Use the store's key; to start over with a new key on purpose, delete that key.";

/// A failure with its exit code and one-line message.
struct Failure {
    code: u8,
    message: String,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let message = match &e {
            StoreError::InvalidToken => "the token is not valid (malformed, unknown, revoked or expired)".to_string(),
            other => other.to_string(),
        };
        Failure { code: e.exit_code(), message }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

fn raw_settings(args: &SettingsArgs, listen: Option<String>) -> RawSettings {
    let mut raw = RawSettings::default();
    raw.set("redis_url", args.redis_url.clone());
    raw.set("prefix", args.prefix.clone());
    raw.set("token_ttl", args.token_ttl.clone());
    raw.set("reset_ttl_on_login", args.reset_ttl_on_login.clone());
    raw.set("overwrite_none_ttl", args.overwrite_none_ttl.clone());
    raw.set("max_tokens_per_user", args.max_tokens_per_user.clone());
    raw.set("max_tokens_policy", args.max_tokens_policy.clone());
    raw.set("max_lifetime", args.max_lifetime.clone());
    raw.set("redis_timeout_ms", args.redis_timeout_ms.clone());
    raw.set("listen", listen);
    for (name, var) in
        [("hash_key", "MULTITOKENS_HASH_KEY"), ("admin_key", "MULTITOKENS_ADMIN_KEY"), ("internal_key", "MULTITOKENS_INTERNAL_KEY")]
    {
        raw.set(name, std::env::var(var).ok());
    }
    raw
}

fn read_token(arg: &str) -> Result<String, Failure> {
    if arg != "-" {
        return Ok(arg.trim().to_string());
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| usage(format!("cannot read the token from standard input: {e}")))?;
    Ok(line.trim().to_string())
}

fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| Failure { code: 2, message: format!("cannot write output: {e}") })
}

/// JSON output; a value that cannot be written is an error, never an empty line.
fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string(value).map_err(|e| Failure { code: 2, message: format!("cannot write JSON output: {e}") })
}

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

async fn execute(command: Command, settings: Settings) -> Result<(), Failure> {
    let store = TokenStore::from_settings(&settings)?;
    match command {
        Command::Issue { user, device, ttl, scopes, json } => {
            if store.check_hash_key().await? == KeyCheck::Differs {
                return Err(usage(KEY_DIFFERS));
            }
            let issued = store.issue(IssueRequest { user, device, ttl, scopes }).await?;
            print(&if json { to_json(&issued)? } else { issued.token })
        }
        Command::Whoami { token, json } => {
            let info = match store.whoami(&read_token(&token)?).await {
                Err(StoreError::InvalidToken) if store.check_hash_key().await.ok() == Some(KeyCheck::Differs) => {
                    return Err(Failure { code: 1, message: format!("the token is not valid: {KEY_DIFFERS}") });
                }
                other => other?,
            };
            print(&if json { to_json(&info)? } else { info.user })
        }
        Command::Revoke { token } => {
            store.revoke(&read_token(&token)?).await?;
            Ok(())
        }
        Command::RevokeAll { user, except, json } => {
            let except = except.as_deref().map(read_token).transpose()?;
            let revoked = store.revoke_all(&user, except.as_deref()).await?;
            print(&if json { serde_json::json!({ "revoked": revoked }).to_string() } else { revoked.to_string() })
        }
        Command::List { user, json } => {
            let tokens = store.list(&user).await?;
            if json {
                let rows: Vec<_> = tokens
                    .iter()
                    .map(|t| serde_json::json!({"id": t.id, "device": t.device, "created": t.created, "expires_in": t.expires_in, "scopes": t.scopes}))
                    .collect();
                return print(&to_json(&rows)?);
            }
            for t in tokens {
                let expires = t.expires_in.map_or("never".to_string(), |s| format!("{s}s"));
                print(&format!("{}\t{}\t{}\t{}\t{}", t.id, t.device, t.created, expires, t.scopes.join(" ")))?;
            }
            Ok(())
        }
        Command::Serve { .. } => {
            let admin_key = settings
                .admin_key
                .clone()
                .ok_or_else(|| usage("serve needs an admin key: set MULTITOKENS_ADMIN_KEY (or admin_key in the config file)"))?;
            if admin_key.len() < 16 {
                return Err(usage("admin_key must be at least 16 characters"));
            }
            // the filter's key must not be the admin key: it sits in every Envoy's plugin config
            let internal_key = settings.internal_key.clone();
            match &internal_key {
                Some(k) if *k == admin_key => return Err(usage("internal_key must differ from admin_key: it is handed to every filter")),
                Some(k) if k.len() < 16 => return Err(usage("internal_key must be at least 16 characters")),
                None => {
                    tracing::warn!("MULTITOKENS_INTERNAL_KEY is not set: the filter's lookup and revocation feed endpoints are disabled")
                }
                Some(_) => {}
            }
            let listener = tokio::net::TcpListener::bind(&settings.listen)
                .await
                .map_err(|e| usage(format!("cannot listen on {}: {e}", settings.listen)))?;
            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            match store.check_hash_key().await {
                Ok(KeyCheck::Matches) => {}
                Ok(KeyCheck::Differs) => return Err(usage(KEY_DIFFERS)),
                Err(e) => tracing::warn!(error = %e, "Redis is not reachable yet; /readyz answers 503 until it is"),
            }
            tracing::info!(listen = %addr, prefix = %settings.prefix, "multitokens API listening");
            let state = AppState { store: Arc::new(store), admin_key: admin_key.into(), internal_key: internal_key.map(Into::into) };
            api::run(listener, state, shutdown_signal()).await.map_err(|e| Failure { code: 3, message: format!("server error: {e}") })
        }
    }
}

/// Logs of `serve` on stderr: level from `MULTITOKENS_LOG` (default info), JSON lines when
/// `MULTITOKENS_LOG_FORMAT=json`. Fields carry users and token ids, never tokens or keys.
fn init_logging() {
    let level = std::env::var("MULTITOKENS_LOG").ok().and_then(|l| l.parse::<tracing::Level>().ok()).unwrap_or(tracing::Level::INFO);
    // colour only on a terminal: a log file gets plain text
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_target(false).with_ansi(ansi);
    let _ = match std::env::var("MULTITOKENS_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().try_init(),
        _ => builder.try_init(),
    };
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's message, folded into one line: everything before the usage / tip block
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .skip_while(|l| l.is_empty())
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .collect();
            eprintln!("multitokens: {}", line.join(" ").trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Serve { .. }) {
        init_logging();
    }
    let listen = match &cli.command {
        Command::Serve { listen } => listen.clone(),
        _ => None,
    };
    let mut redis_url = String::new();
    let result = (|| {
        let file = cli.settings.config.as_deref().map(read_config_file).transpose().map_err(usage)?;
        let settings = Settings::resolve(&raw_settings(&cli.settings, listen), file.as_ref()).map_err(usage)?;
        redis_url = super::connection::redact(&settings.redis_url);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure { code: 3, message: format!("cannot start the runtime: {e}") })?;
        runtime.block_on(execute(cli.command, settings))
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let line = f.message.lines().next().unwrap_or("error");
            // Redis failures name the URL tried (credentials masked): the usual cause is the wrong one
            if f.code == 3 && !redis_url.is_empty() {
                eprintln!("multitokens: {line} (redis_url {redis_url})");
            } else {
                eprintln!("multitokens: {line}");
            }
            ExitCode::from(f.code)
        }
    }
}
