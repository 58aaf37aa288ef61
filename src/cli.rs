//! The `multitokens` command line: issue, whoami, revoke, revoke-all, list, rekey and serve.
//!
//! Exit codes ([`Exit`]): 0 success; 1 the token is not valid or not found (or the login was
//! refused by `max_tokens_per_user`); 2 usage or configuration error; 3 Redis unreachable or
//! failing. Errors are one line on stderr.

use super::audit::{Actor, AuditRecord, Origin};
use super::edges::{EdgeRegistry, RevokeReport};
use super::error::StoreError;
use super::server::{self, ServeError, KEY_DIFFERS};
use super::settings::{Settings, SettingsLayer};
use super::store::{IssueRequest, KeyCheck, Revocation, TokenStore};
use clap::{Parser, Subcommand};
use multitokens_core::dpop::Thumbprint;
use multitokens_core::ttl::TokenTtl;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Per-device bearer tokens for Envoy: issue, verify and revoke tokens stored (as digests) in Redis.
///
/// Settings come from flags, then MULTITOKENS_* environment variables, then the TOML config file,
/// then defaults. Secrets (MULTITOKENS_HASH_KEY, MULTITOKENS_ADMIN_KEY, MULTITOKENS_INTERNAL_KEY)
/// are read from the environment or the config file only, never from flags.
#[derive(Parser)]
#[command(name = "multitokens", version, propagate_version = true)]
pub struct Cli {
    /// TOML config file with any of the settings (keys: redis_url, prefix, token_ttl, ...).
    #[arg(long, env = "MULTITOKENS_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Settings given as flags or environment variables.
    #[command(flatten)]
    pub settings: SettingsLayer,
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand)]
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
        /// Bind the token to a key (DPoP): the key's JWK SHA-256 thumbprint (RFC 7638, base64url).
        #[arg(long, value_name = "JKT", value_parser = parse_jkt)]
        dpop_jkt: Option<Thumbprint>,
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
    /// Suspend a user's token (--id), or all of the user's live tokens: refused everywhere, as
    /// if revoked, until `resume`; the device stays in `list`. Prints how many changed
    /// ({"changed": n} with --json); exit 1 if --id is no live token of the user.
    Suspend(Suspension),
    /// Resume a suspended token (--id), or all of a user's: accepted again, no new login needed.
    /// Prints how many changed ({"changed": n} with --json).
    Resume(Suspension),
    /// List a user's live tokens: id, device, created, expires_in, scopes, and `suspended` for a
    /// suspended one (a JSON array with --json).
    List {
        /// The user id.
        #[arg(long)]
        user: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-key every token stored under a previous hash key (MULTITOKENS_PREVIOUS_HASH_KEYS) to the
    /// current one (MULTITOKENS_HASH_KEY), so the previous keys can be dropped with nobody logged
    /// out. Safe while serving and safe to repeat. Prints what it did ({"scanned","current",
    /// "rekeyed","sealed","rekeyed_on_use_only","unsealed_or_tampered","unsealed_or_tampered_ids",
    /// "gone"} with --json); exit
    /// 1 if tokens remain that only their next use can re-key, or records without a valid seal.
    Rekey {
        /// Also seal records written before records were sealed (an upgrade), with the current key.
        #[arg(long)]
        seal_unsealed: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the audit trail: issues, revocations, evictions and re-keyings, oldest first, one per
    /// line (time, event, user, token id or count, device, actor, request id), or JSON lines with
    /// --json. Never a token or a digest.
    Events {
        /// Only this user's events.
        #[arg(long)]
        user: Option<String>,
        /// From this time: RFC 3339 (2026-11-26T10:00:00Z) or a duration back from now (15m, 2h, 7d).
        #[arg(long, default_value = "24h", value_name = "TIME|DURATION")]
        since: String,
        /// Most events printed before following (1 to 100000).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Keep printing new events as they happen (until Ctrl-C).
        #[arg(long)]
        follow: bool,
        /// Print JSON lines: {"cursor","time","event","user","id","count"?,"device"?,"first"?,"actor","request_id"}.
        #[arg(long)]
        json: bool,
    },
    /// Print the HTTP API's OpenAPI 3.1 description (JSON), as `serve` answers at /openapi.json.
    Openapi,
    /// Print a new hash key: 256 random bits from the OS, as 43 base64url characters, for
    /// MULTITOKENS_HASH_KEY and every filter's `hash_key`; or with --signing a record signing key
    /// pair: `signing_key=<seed>` (MULTITOKENS_SIGNING_KEY, the companion only) and
    /// `public_key=<key>` (the filters' `record_public_keys`); or with --webhook a webhook signing
    /// secret (`whsec_…`, 256 random bits, for `[[webhooks]]` `secrets` and the receiver). Needs no
    /// settings and no Redis.
    Keygen {
        /// A record signing key pair instead of a hash key.
        #[arg(long, conflicts_with = "webhook")]
        signing: bool,
        /// A Standard Webhooks signing secret instead of a hash key.
        #[arg(long)]
        webhook: bool,
    },
    /// Serve the HTTP API (needs MULTITOKENS_ADMIN_KEY; --listen sets the address). Stops on
    /// Ctrl-C or SIGTERM.
    Serve,
}

/// Which tokens `suspend` and `resume` change.
#[derive(clap::Args)]
pub struct Suspension {
    /// The user id.
    #[arg(long)]
    user: String,
    /// The token's public id (from `list`); none: every live token of the user.
    #[arg(long)]
    id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The process exit codes, the one place they are defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Success = 0,
    /// 1: the token is not valid or not found, or the login was refused.
    Refused = 1,
    /// 2: usage or configuration error.
    Usage = 2,
    /// 3: Redis unreachable or failing.
    Redis = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// A failure with its exit code and one-line message.
struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure { exit, message: message.into() }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let exit = match e {
            StoreError::InvalidToken | StoreError::NotFound(_) | StoreError::LimitReached(_) => Exit::Refused,
            StoreError::Input(_) | StoreError::BadInput(_) => Exit::Usage,
            StoreError::Unavailable(_)
            | StoreError::Refused(_)
            | StoreError::Corrupt(_)
            | StoreError::Record(_)
            | StoreError::Random(_) => Exit::Redis,
        };
        let message = match &e {
            StoreError::InvalidToken => "the token is not valid (malformed, unknown, revoked or expired)".to_string(),
            other => other.to_string(),
        };
        Failure { exit, message }
    }
}

impl From<ServeError> for Failure {
    fn from(e: ServeError) -> Self {
        let exit = match e {
            ServeError::Config(_) | ServeError::KeyDiffers | ServeError::Bind(..) => Exit::Usage,
            ServeError::Io(_) => Exit::Redis,
        };
        Failure::new(exit, e.to_string())
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Usage, message)
}

fn read_token(arg: &str) -> Result<String, Failure> {
    if arg != "-" {
        return Ok(arg.trim().to_string());
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| usage(format!("cannot read the token from standard input: {e}")))?;
    Ok(line.trim().to_string())
}

fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| usage(format!("cannot write output: {e}")))
}

/// JSON output; a value that cannot be written is an error, never an empty line.
fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string(value).map_err(|e| usage(format!("cannot write JSON output: {e}")))
}

/// Waits (at most `revoke_wait`) until the live edges applied a revocation, as the API does.
async fn confirm(store: TokenStore, revocation: &Revocation, settings: &Settings) -> RevokeReport {
    EdgeRegistry::new(std::sync::Arc::new(store), settings.max_edges).confirm(revocation, settings.revoke_wait).await
}

/// `suspend` / `resume`: changes the state, waits for the edges, prints how many changed.
async fn suspend(store: TokenStore, settings: &Settings, which: &Suspension, suspended: bool) -> Result<(), Failure> {
    let origin = Origin::new(Actor::Cli);
    let change = store.set_suspended(&which.user, which.id.as_deref(), suspended, &origin).await?;
    let changed = change.revoked;
    confirm(store, &change, settings).await;
    print(&if which.json { to_json(&serde_json::json!({ "changed": changed }))? } else { changed.to_string() })
}

async fn execute(command: Command, settings: Settings) -> Result<(), Failure> {
    if let Command::Openapi = command {
        return print(&super::openapi::json());
    }
    let store = TokenStore::from_settings(&settings)?;
    match command {
        Command::Issue { user, device, ttl, scopes, dpop_jkt, json } => {
            if store.check_hash_key().await? == KeyCheck::Differs {
                return Err(usage(KEY_DIFFERS));
            }
            if !store.check_signing().await? {
                return Err(usage(super::server::UNSIGNED_IN_SIGNED_STORE));
            }
            let request = IssueRequest { user, device, ttl, scopes, bound_to: dpop_jkt };
            let issued = store.issue(request, &Origin::new(Actor::Cli)).await?;
            print(&if json { to_json(&issued)? } else { issued.token })
        }
        Command::Whoami { token, json } => {
            let info = match store.whoami(&read_token(&token)?).await {
                Err(StoreError::InvalidToken) if store.check_hash_key().await.ok() == Some(KeyCheck::Differs) => {
                    return Err(Failure::new(Exit::Refused, format!("the token is not valid: {KEY_DIFFERS}")));
                }
                other => other?,
            };
            print(&if json { to_json(&info)? } else { info.user })
        }
        Command::Revoke { token } => {
            let revocation = store.revoke(&read_token(&token)?, &Origin::new(Actor::Cli)).await?;
            confirm(store, &revocation, &settings).await;
            Ok(())
        }
        Command::RevokeAll { user, except, json } => {
            let except = except.as_deref().map(read_token).transpose()?;
            let revocation = store.revoke_all(&user, except.as_deref(), &Origin::new(Actor::Cli)).await?;
            let report = confirm(store, &revocation, &settings).await;
            print(&if json { to_json(&report)? } else { report.revoked.to_string() })
        }
        Command::Suspend(which) => suspend(store, &settings, &which, true).await,
        Command::Resume(which) => suspend(store, &settings, &which, false).await,
        Command::List { user, json } => {
            let tokens = store.list(&user).await?;
            if json {
                // each token as the API lists it, without the user the command was given
                let mut rows =
                    serde_json::to_value(&tokens).map_err(|e| usage(format!("cannot write JSON output: {e}")))?;
                for row in rows.as_array_mut().into_iter().flatten() {
                    if let Some(row) = row.as_object_mut() {
                        row.remove("user");
                    }
                }
                return print(&to_json(&rows)?);
            }
            for t in tokens {
                let expires = t.expires_in.map_or("never".to_string(), |s| format!("{s}s"));
                let state = if t.suspended { "\tsuspended" } else { "" };
                print(&format!("{}\t{}\t{}\t{}\t{}{state}", t.id, t.device, t.created, expires, t.scopes.join(" ")))?;
            }
            Ok(())
        }
        Command::Rekey { seal_unsealed, json } => {
            if store.check_hash_key().await? == KeyCheck::Differs {
                return Err(usage(KEY_DIFFERS));
            }
            if !store.check_signing().await? {
                return Err(usage(super::server::UNSIGNED_IN_SIGNED_STORE));
            }
            let r = store.rekey_all(seal_unsealed, &Origin::new(Actor::Cli)).await?;
            print(&if json {
                to_json(&r)?
            } else {
                format!(
                    "scanned {}, current {}, rekeyed {}, sealed {}, rekeyed on use only {}, unsealed or tampered {}, \
                     gone {}",
                    r.scanned, r.current, r.rekeyed, r.sealed, r.rekeyed_on_use_only, r.unsealed_or_tampered, r.gone
                )
            })?;
            if r.rekeyed_on_use_only > 0 || r.unsealed_or_tampered > 0 {
                return Err(Failure::new(
                    Exit::Refused,
                    format!(
                        "{} token(s) can be re-keyed only when next used (dropping a previous key now logs them \
                         out); {} record(s) have no valid seal (refused on use; their ids: rekey --json)",
                        r.rekeyed_on_use_only, r.unsealed_or_tampered
                    ),
                ));
            }
            Ok(())
        }
        Command::Events { user, since, limit, follow, json } => {
            if !(1..=100_000).contains(&limit) {
                return Err(usage("--limit: 1 to 100000"));
            }
            let since = super::audit::parse_since(&since, super::clock::now_ms()).map_err(usage)?;
            let show = |r: &AuditRecord| -> Result<(), Failure> {
                print(&if json {
                    to_json(r)?
                } else {
                    let what = r.count.map_or(r.id.clone(), |n| format!("{n} token(s)"));
                    format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        r.time, r.event, r.user, what, r.device, r.actor, r.request_id
                    )
                })
            };
            let mut cursor: Option<String> = None;
            let mut printed = 0;
            while printed < limit {
                let (events, last) =
                    store.audit_events(user.as_deref(), cursor.as_deref(), since, limit - printed).await?;
                for e in &events {
                    show(e)?;
                }
                printed += events.len();
                match last {
                    Some(last) => cursor = Some(last),
                    None => break,
                }
            }
            if follow {
                let mut conn =
                    store.redis().dedicated(std::time::Duration::from_secs(5)).await.map_err(StoreError::from)?;
                let mut after = cursor.unwrap_or_else(|| "$".to_string());
                loop {
                    for e in store.audit_events_after(&mut conn, &after, std::time::Duration::from_secs(2)).await? {
                        after = e.cursor.clone();
                        if user.as_deref().is_none_or(|u| e.user == u) {
                            show(&e)?;
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Openapi => print(&super::openapi::json()),
        Command::Keygen { .. } => Ok(()),
        Command::Serve => Ok(server::serve(&settings, store).await?),
    }
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
            return Exit::Usage.into();
        }
    };
    if let Command::Keygen { signing, webhook } = cli.command {
        let generated = match (signing, webhook) {
            (true, _) => multitokens_core::signing::RecordSigner::generate()
                .map(|(seed, public)| format!("signing_key={seed}\npublic_key={public}")),
            (_, true) => crate::webhooks::WebhookSecret::generate(),
            _ => multitokens_core::keyring::generate_hash_key(),
        };
        return match generated {
            Ok(text) => {
                println!("{text}");
                Exit::Success.into()
            }
            Err(e) => {
                eprintln!("multitokens: cannot read the OS random source: {e}");
                Exit::Refused.into()
            }
        };
    }
    if matches!(cli.command, Command::Serve) {
        server::init_logging();
    }
    let mut redis_url = String::new();
    let result = (|| {
        let file = cli.config.as_deref().map(SettingsLayer::from_file).transpose().map_err(usage)?.unwrap_or_default();
        let settings = Settings::resolve(cli.settings.over(file).map_err(usage)?).map_err(usage)?;
        redis_url = super::connection::redact(&settings.redis_url);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::new(Exit::Redis, format!("cannot start the runtime: {e}")))?;
        runtime.block_on(execute(cli.command, settings))
    })();
    match result {
        Ok(()) => Exit::Success.into(),
        Err(f) => {
            let line = f.message.lines().next().unwrap_or("error");
            // Redis failures name the URL tried (credentials masked): the usual cause is the wrong one
            if f.exit == Exit::Redis && !redis_url.is_empty() {
                eprintln!("multitokens: {line} (redis_url {redis_url})");
            } else {
                eprintln!("multitokens: {line}");
            }
            f.exit.into()
        }
    }
}

/// A `--dpop-jkt` value.
fn parse_jkt(text: &str) -> Result<Thumbprint, String> {
    Thumbprint::from_b64(text).ok_or_else(|| "not a JWK SHA-256 thumbprint (43 base64url characters)".into())
}
