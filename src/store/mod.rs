//! The token store: every operation of the seed (`create_token`, `get_user_from_token`,
//! `expire_token`, `expire_all_tokens`) as one atomic Lua script over the core key layout.

use super::audit::{self, Actor, AuditRecord, Event, Origin, AUDIT_MAX_LEN};
use super::clock::{now_ms, now_secs};
use super::connection::{Conn, Redis, RedisAddress};
use super::error::StoreError;
use super::metrics::{HowLabels, Metrics};
use super::settings::{MaxTokensPolicy, Settings};
use multitokens_core::digest::TokenDigest;
use multitokens_core::keyring::HashKeys;
use multitokens_core::keys::KeyLayout;
use multitokens_core::record::TokenRecord;
use multitokens_core::resp::Reply;
use multitokens_core::scripts::{self, LookupReply, ScriptCall, SharedScript};
use multitokens_core::token::{self, RoutingTag};
use multitokens_core::ttl::TokenTtl;
use multitokens_core::user::{validate_device, validate_new_labels, validate_scopes, validate_user};
use multitokens_core::verdict::{evaluate, ValidToken, Verdict};
use redis::{AsyncCommands, Script, Value};
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

mod activity;
mod edges;
mod feed;
mod lookup;
mod rekey;
mod revoke;
mod suspend;
mod tokens;
mod trail;
mod verified;
mod webhook_group;

pub use feed::{stream_id, RevocationPage, FEED_MAX_LEN, FEED_PAGE, OUTBOX_SETTLE_MS, OUTBOX_SWEEP_BATCH};
pub use lookup::Lookup;
pub use rekey::{KeyCheck, RekeyReport};
pub use trail::AuditEntry;

/// How often one tampered record is written to the audit trail, at most (milliseconds).
pub const TAMPER_AUDIT_EVERY_MS: u64 = 10 * 60 * 1000;
/// Most tampered records remembered for that (more are audited at most once each meanwhile).
const TAMPER_AUDIT_MEMORY: usize = 10_000;

/// A record as read from Redis: where, the bytes, and what they say.
struct ReadRecord<'a> {
    tag: RoutingTag,
    digest: &'a TokenDigest,
    value: &'a [u8],
    record: &'a TokenRecord,
}

/// Token policy: the seed's settings plus the per-user limit.
#[derive(Clone, Debug)]
pub struct StorePolicy {
    /// Token prefix and key namespace.
    pub prefix: String,
    /// Default lifetime of new tokens and of reset ones.
    pub token_ttl: TokenTtl,
    /// Whether issuing resets the TTL of the user's other tokens.
    pub reset_ttl_on_login: bool,
    /// Whether that reset also makes immortal tokens mortal.
    pub overwrite_none_ttl: bool,
    /// Most live tokens per user.
    pub max_tokens_per_user: Option<u32>,
    /// What to do at the limit.
    pub max_tokens_policy: MaxTokensPolicy,
    /// Absolute lifetime in seconds (the record's `expires_at`), never extended.
    pub max_lifetime: Option<u64>,
}

impl StorePolicy {
    /// The policy part of the settings.
    pub fn from_settings(s: &Settings) -> Self {
        StorePolicy {
            prefix: s.prefix.clone(),
            token_ttl: s.token_ttl,
            reset_ttl_on_login: s.reset_ttl_on_login,
            overwrite_none_ttl: s.overwrite_none_ttl,
            max_tokens_per_user: Some(s.max_tokens_per_user),
            max_tokens_policy: s.max_tokens_policy,
            max_lifetime: s.max_lifetime,
        }
    }
}

/// A login request.
#[derive(Clone, Debug, Default)]
pub struct IssueRequest {
    /// The user.
    pub user: String,
    /// Device label.
    pub device: Option<String>,
    /// Lifetime of this token; the policy's `token_ttl` when `None`.
    pub ttl: Option<TokenTtl>,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// The key the token is bound to (DPoP): refused without a proof made with it.
    pub bound_to: Option<multitokens_core::dpop::Thumbprint>,
}

/// A freshly issued token (the only time the token itself is ever returned).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Issued {
    /// The token; show it to the client once.
    pub token: String,
    /// Its public id.
    pub id: String,
    /// The user.
    pub user: String,
    /// Device label.
    pub device: String,
    /// True iff the user had no live token before this one.
    pub first: bool,
    /// Seconds until it expires, `null` if immortal.
    pub expires_in: Option<u64>,
    /// How many of the user's other tokens this login reset to `token_ttl` (`reset_ttl_on_login`:
    /// a token issued with a short TTL or immortal now lives `token_ttl`).
    pub ttl_reset: u64,
}

/// A committed revocation: how many tokens, and the feed position of its last entry (edges that
/// have read up to it have dropped the tokens); `None` when nothing was revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Tokens revoked.
    pub revoked: u64,
    /// Feed position (stream id) of the revocation's last entry.
    pub feed_position: Option<String>,
}

/// What is known about a live token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Public id.
    pub id: String,
    /// The user.
    pub user: String,
    /// Device label.
    pub device: String,
    /// Issue time, Unix seconds.
    pub created: u64,
    /// Seconds until it expires, `null` if immortal.
    pub expires_in: Option<u64>,
    /// Milliseconds until it expires (what the filter caches by; not in the CLI's output).
    #[serde(skip)]
    pub expires_in_ms: Option<u64>,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Suspended: refused everywhere until resumed (only listed tokens can be; absent when not).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// When an edge last saw it used, Unix seconds (reported at most every `activity_interval_ms`
    /// per edge; absent until first seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// The client address it was last used from, as Envoy saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_address: Option<String>,
    /// The user agent it was last used with (control characters removed, at most 256 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_user_agent: Option<String>,
    /// The JWK SHA-256 thumbprint of the key the token is bound to (DPoP; absent: a bearer token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

/// A live record of a user, as listed: its digest, its stored value, what it says.
pub(crate) struct UserRecord {
    digest: TokenDigest,
    value: Vec<u8>,
    info: TokenInfo,
}

impl TokenInfo {
    fn from_valid(v: ValidToken) -> Self {
        let (expires_in, expires_in_ms) = (v.expires_in(), v.expires_in_ms);
        let r = v.record;
        let dpop_jkt = r.bound_to().map(|t| t.to_b64());
        TokenInfo {
            id: r.id,
            user: r.user,
            device: r.device,
            created: r.created,
            expires_in,
            expires_in_ms,
            scopes: r.scopes,
            suspended: r.suspended,
            last_seen: None,
            last_address: None,
            last_user_agent: None,
            dpop_jkt,
        }
    }
}

struct Scripts {
    issue: Script,
    lookup: Script,
    revoke: Script,
    revoke_all: Script,
    outbox_done: Script,
    outbox_forget: Script,
    revoke_by_id: Script,
    rekey: Script,
    list: Script,
    refresh: Script,
    feed: Script,
    rewrite: Script,
    activity: Script,
}

/// The token store over Redis.
pub struct TokenStore {
    redis: Redis,
    layout: KeyLayout,
    hash_keys: HashKeys,
    policy: StorePolicy,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    /// When each tampered record was last written to the audit trail (Unix ms, by public id).
    tamper_audited: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Records whose seal or signature verified (checked once per record, not per lookup).
    verified: verified::VerifiedRecords,
}

/// A live token found by a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The token.
    pub info: TokenInfo,
    /// The digest its record is stored under now (after re-keying, the first one asked for).
    pub digest: TokenDigest,
    /// Which of the digests asked for that is (0: the first).
    pub stored_under: usize,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("unexpected reply to {what}"))
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A Redis reply as the core reads script replies (the companion and the filter read them with
/// the same code: [`scripts::LookupReply`], [`scripts::feed_page`]).
fn to_reply(v: Value) -> Reply {
    match v {
        Value::Int(i) => Reply::Int(i),
        Value::BulkString(b) => Reply::Bulk(Some(b)),
        Value::SimpleString(s) => Reply::Status(s),
        Value::Okay => Reply::Status("OK".into()),
        Value::Nil => Reply::Bulk(None),
        Value::Array(items) => Reply::Array(Some(items.into_iter().map(to_reply).collect())),
        Value::ServerError(e) => Reply::Error(format!("{e:?}")),
        _ => Reply::Error("unsupported reply type".into()),
    }
}

/// A core script's reply as its items (a reply that is no array is corrupt).
fn script_items(op: &'static str, reply: Value) -> Result<Vec<Reply>, StoreError> {
    match to_reply(reply) {
        Reply::Array(Some(items)) => Ok(items),
        _ => Err(corrupt(op)),
    }
}

impl Scripts {
    /// The script a core [`ScriptCall`] runs, invoked with its keys and arguments.
    fn invocation(&self, call: &ScriptCall) -> redis::ScriptInvocation<'_> {
        let script = match call.script {
            SharedScript::Lookup => &self.lookup,
            SharedScript::Refresh => &self.refresh,
            SharedScript::Feed => &self.feed,
            SharedScript::Activity => &self.activity,
        };
        let mut invocation = script.prepare_invoke();
        for key in &call.keys {
            invocation.key(key);
        }
        for arg in &call.args {
            invocation.arg(arg);
        }
        invocation
    }
}

impl TokenStore {
    /// A store from resolved settings; does not connect yet.
    pub fn from_settings(settings: &Settings) -> Result<Self, StoreError> {
        let target = RedisAddress::parse(&settings.redis_url).map_err(StoreError::BadInput)?;
        let redis = Redis::open(&target, settings.redis_timeout)
            .map_err(|e| StoreError::BadInput(format!("invalid redis_url: {e}")))?;
        let previous: Vec<&[u8]> = settings.previous_hash_keys.iter().map(|k| k.as_bytes()).collect();
        let retired: Vec<&[u8]> = settings.retired_hash_keys.iter().map(|k| k.as_bytes()).collect();
        let hash_keys = HashKeys::new(settings.hash_key.as_deref().map(str::as_bytes), &previous)
            .map_err(|e| StoreError::BadInput(format!("previous_hash_keys: {e}")))?
            .retiring(&retired)
            .map_err(|e| StoreError::BadInput(format!("retired_hash_keys: {e}")))?
            .with_record_keys(
                settings
                    .signing_key
                    .as_deref()
                    .map(multitokens_core::signing::RecordSigner::from_text)
                    .transpose()
                    .map_err(|e| StoreError::BadInput(format!("signing_key: {e}")))?,
                multitokens_core::signing::parse_public_keys(&settings.record_public_keys)
                    .map_err(|e| StoreError::BadInput(format!("record_public_keys: {e}")))?,
            )
            .accepting_hmac_seals(settings.accept_hmac_sealed_records)
            .accepting_unsealed(settings.accept_unsealed_records);
        Ok(Self::new(redis, StorePolicy::from_settings(settings), hash_keys))
    }

    /// A store over a Redis handle.
    pub fn new(redis: Redis, policy: StorePolicy, hash_keys: HashKeys) -> Self {
        TokenStore {
            redis,
            layout: KeyLayout::new(&policy.prefix),
            hash_keys,
            metrics: Arc::new(Metrics::default()),
            tamper_audited: std::sync::Mutex::default(),
            verified: verified::VerifiedRecords::default(),
            policy,
            scripts: Scripts {
                issue: Script::new(scripts::ISSUE),
                lookup: Script::new(scripts::LOOKUP),
                revoke: Script::new(scripts::REVOKE),
                revoke_all: Script::new(scripts::REVOKE_ALL),
                outbox_done: Script::new(scripts::OUTBOX_DONE),
                outbox_forget: Script::new(scripts::OUTBOX_FORGET),
                revoke_by_id: Script::new(scripts::REVOKE_BY_ID),
                rekey: Script::new(scripts::REKEY),
                list: Script::new(scripts::LIST),
                refresh: Script::new(scripts::REFRESH),
                feed: Script::new(scripts::FEED),
                rewrite: Script::new(scripts::REWRITE),
                activity: Script::new(scripts::ACTIVITY),
            },
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &StorePolicy {
        &self.policy
    }

    /// The key layout in force.
    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    /// How many records with a seal that does not verify this companion has refused.
    pub fn tampered_records(&self) -> u64 {
        self.metrics.tampered.get()
    }

    /// The store's metrics (the API adds its own to the same registry's families).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs a store operation's Redis round trip, recording how long it took.
    async fn timed<T, E>(&self, op: &'static str, round_trip: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let started = Instant::now();
        let result = round_trip.await;
        self.metrics.observe_redis(op, started);
        result
    }

    /// Runs a core script call and returns its reply's items.
    async fn run_script(&self, conn: &mut Conn, op: &'static str, call: &ScriptCall) -> Result<Vec<Reply>, StoreError> {
        let reply: Value = self.timed(op, self.scripts.invocation(call).invoke_async(conn)).await?;
        script_items(op, reply)
    }

    /// Counts and logs (the token's public id only) a record refused for its seal.
    fn refuse_tampered(&self, digest: &TokenDigest) {
        let total = self.metrics.tampered.inc() + 1;
        let why = "token record seal does not verify: refused (rewritten in Redis?)";
        tracing::warn!(id = %digest.public_id(), tampered_records_total = total, "{why}");
    }

    /// [`TokenStore::refuse_tampered`], and a `tampered` audit event (the `record.tampered`
    /// webhook), at most once per record per [`TAMPER_AUDIT_EVERY_MS`]: a tampered record looked
    /// up in a loop does not flood the trail. The record's own user is not trusted, so none is
    /// named.
    async fn report_tampered(&self, digest: &TokenDigest) {
        self.refuse_tampered(digest);
        let id = digest.public_id();
        let now = now_ms();
        let due = match self.tamper_audited.lock() {
            Ok(mut seen) => {
                if seen.len() >= TAMPER_AUDIT_MEMORY {
                    seen.retain(|_, at| now.saturating_sub(*at) < TAMPER_AUDIT_EVERY_MS);
                }
                let due = seen.get(&id).is_none_or(|at| now.saturating_sub(*at) >= TAMPER_AUDIT_EVERY_MS);
                if due && seen.len() < TAMPER_AUDIT_MEMORY {
                    seen.insert(id.clone(), now);
                }
                due
            }
            Err(_) => false,
        };
        if due {
            self.audit(Event::Tampered, "", std::slice::from_ref(&id), None, None, &Origin::companion()).await;
        }
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.redis.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// The Redis handle (for a dedicated connection).
    pub fn redis(&self) -> &Redis {
        &self.redis
    }
}
