//! The token store: every operation of the seed (`create_token`, `get_user_from_token`,
//! `expire_token`, `expire_all_tokens`) as one atomic Lua script over the core key layout.

use super::audit::{self, Actor, AuditRecord, Event, Origin, AUDIT_MAX_LEN};
use super::connection::{Conn, Redis, RedisTarget};
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
use std::time::Instant;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Revocation feed length kept in Redis (approximate trim).
pub const FEED_MAX_LEN: usize = 100_000;
/// Outbox entries copied to the feed per round trip.
const OUTBOX_BATCH: usize = 500;
/// How long after its last announcement an outbox counts as abandoned if it still holds digests
/// (ms): the announcing companion publishes within milliseconds when it lives.
pub const OUTBOX_SETTLE_MS: u64 = 10_000;
/// Most pending outboxes one sweep looks at.
pub const OUTBOX_SWEEP_BATCH: usize = 1000;
/// Most feed entries returned by one poll.
pub const FEED_PAGE: usize = scripts::FEED_PAGE_SIZE;

/// A page of the revocation feed: the contract's type, as the filter reads it.
pub use multitokens_core::contract::FeedPage as RevocationPage;

/// Which token a revoke-all keeps.
enum Keep<'a> {
    /// The one stored under this member (digest hex; empty: none).
    Member(&'a str),
    /// The one with this public id.
    PublicId(&'a str),
}

/// A record as read from Redis: where, the bytes, and what they say.
struct ReadRecord<'a> {
    tag: RoutingTag,
    digest: &'a TokenDigest,
    value: &'a [u8],
    record: &'a TokenRecord,
}

/// Parses a stream id `ms-seq` for ordering.
pub fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
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
}

impl TokenInfo {
    fn from_valid(v: ValidToken) -> Self {
        let (expires_in, expires_in_ms) = (v.expires_in(), v.expires_in_ms);
        let r = v.record;
        TokenInfo {
            id: r.id,
            user: r.user,
            device: r.device,
            created: r.created,
            expires_in,
            expires_in_ms,
            scopes: r.scopes,
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
}

/// The token store over Redis.
pub struct TokenStore {
    redis: Redis,
    keys: KeyLayout,
    hash_keys: HashKeys,
    policy: StorePolicy,
    scripts: Scripts,
    metrics: Arc<Metrics>,
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

/// What `multitokens rekey` did to the namespace's records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RekeyReport {
    /// Records looked at.
    pub scanned: u64,
    /// Already under the current key.
    pub current: u64,
    /// Moved to the current key's digest and resealed.
    pub rekeyed: u64,
    /// Unsealed records (written before sealing) sealed with the current key (`--seal-unsealed`),
    /// and, with a signing key, HMAC-sealed records signed.
    pub sealed: u64,
    /// Version 1 tokens under a previous key: only the token gives their new digest, so they are
    /// re-keyed when next used. Dropping the previous key logs them out.
    pub rekeyed_on_use_only: u64,
    /// Records without a valid seal (left alone, refused on use).
    pub unsealed_or_tampered: u64,
    /// The public ids of the first 100 of them (never a digest), to look into.
    pub unsealed_or_tampered_ids: Vec<String>,
    /// Records revoked or expired while the sweep ran.
    pub gone: u64,
}

/// Whether this companion's hash key is the one the store was written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// Same key (or the store had none and now has ours).
    Matches,
    /// Another key: every token of this store would look unknown.
    Differs,
}

/// The text whose digest is the key check value.
const KEY_CHECK_TEXT: &str = "multitokens/key-check";

/// Current Unix time in seconds.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The wall clock, Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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

impl Scripts {
    /// The script a core [`ScriptCall`] runs, invoked with its keys and arguments.
    fn invocation(&self, call: &ScriptCall) -> redis::ScriptInvocation<'_> {
        let script = match call.script {
            SharedScript::Lookup => &self.lookup,
            SharedScript::Refresh => &self.refresh,
            SharedScript::Feed => &self.feed,
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
        let target = RedisTarget::parse(&settings.redis_url).map_err(StoreError::BadInput)?;
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
            keys: KeyLayout::new(&policy.prefix),
            hash_keys,
            metrics: Arc::new(Metrics::default()),
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
            },
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &StorePolicy {
        &self.policy
    }

    /// The key layout in force.
    pub fn keys(&self) -> &KeyLayout {
        &self.keys
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

    /// Runs a core script call and returns its reply's items (a reply that is no array is corrupt).
    async fn run_script(&self, conn: &mut Conn, op: &'static str, call: &ScriptCall) -> Result<Vec<Reply>, StoreError> {
        let reply: Value = self.timed(op, self.scripts.invocation(call).invoke_async(conn)).await?;
        match to_reply(reply) {
            Reply::Array(Some(items)) => Ok(items),
            _ => Err(corrupt(op)),
        }
    }

    /// Counts and logs (the token's public id only) a record refused for its seal.
    fn refuse_tampered(&self, digest: &TokenDigest) {
        let total = self.metrics.tampered.inc() + 1;
        tracing::warn!(id = %digest.public_id(), tampered_records_total = total, "token record seal does not verify: refused (rewritten in Redis?)");
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.redis.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Logs a device in: mints a token and stores its digest atomically with the policy applied.
    pub async fn issue(&self, req: IssueRequest) -> Result<Issued, StoreError> {
        self.issue_as(req, &Origin::new(Actor::Companion)).await
    }

    /// [`TokenStore::issue`] on behalf of `origin` (the audit trail names it).
    pub async fn issue_as(&self, req: IssueRequest, origin: &Origin) -> Result<Issued, StoreError> {
        validate_user(&req.user)?;
        let device = req.device.unwrap_or_default();
        validate_device(&device)?;
        validate_new_labels(&req.user, &device)?;
        validate_scopes(&req.scopes)?;
        let tag = RoutingTag::for_user(&req.user);
        // an absolute lifetime caps the token's own TTL too (an immortal token becomes mortal)
        let ttl = match (req.ttl.unwrap_or(self.policy.token_ttl), self.policy.max_lifetime) {
            (TokenTtl::Never, Some(max)) => TokenTtl::Seconds(max),
            (TokenTtl::Seconds(s), Some(max)) => TokenTtl::Seconds(s.min(max)),
            (ttl, None) => ttl,
        };
        let mut conn = self.redis.conn().await?;
        // A digest collision is astronomically unlikely; one retry covers it anyway.
        if self.policy.max_tokens_per_user.is_some() {
            // the limit may evict (and so revoke) older tokens into the outbox
            self.announce_outbox(&self.keys.outbox_key(tag)).await?;
        }
        for _ in 0..2 {
            let hasher = self.hash_keys.current();
            let token = hasher.mint(&self.policy.prefix, &req.user).map_err(|e| StoreError::Random(e.to_string()))?;
            let digest = hasher.digest(&token);
            let created = now_secs();
            let record = TokenRecord {
                id: digest.public_id(),
                user: req.user.clone(),
                device: device.clone(),
                created,
                scopes: req.scopes.clone(),
                expires_at: self.policy.max_lifetime.map(|max| created + max),
                lifetime_ms: ttl.seconds().map(|s| s * 1000),
                token_hash: hasher.is_keyed().then(|| hex::encode(multitokens_core::digest::token_hash(&token))),
            };
            let json = self.hash_keys.seal(&digest, record.to_json()?);
            let reply: Vec<Value> = self
                .timed(
                    "issue",
                    self.scripts
                        .issue
                        .key(self.keys.index_key(&req.user))
                        .key(self.keys.record_key(tag, &digest))
                        .key(self.keys.outbox_key(tag))
                        .key(self.keys.expiry_key(&req.user))
                        .arg(digest.to_hex())
                        .arg(json)
                        .arg(ttl.as_millis_or_zero())
                        .arg(self.policy.token_ttl.as_millis_or_zero())
                        .arg(if self.policy.reset_ttl_on_login { "1" } else { "0" })
                        .arg(if self.policy.overwrite_none_ttl { "1" } else { "0" })
                        .arg(self.policy.max_tokens_per_user.unwrap_or(0))
                        .arg(self.policy.max_tokens_policy.as_str())
                        .arg(self.keys.record_prefix(tag))
                        .invoke_async(&mut conn),
                )
                .await?;
            let status = reply.first().and_then(as_int).ok_or_else(|| corrupt("issue"))?;
            let first = reply.get(1).and_then(as_int).ok_or_else(|| corrupt("issue"))? == 1;
            match status {
                0 => {
                    let ttl_reset = reply.get(2).and_then(as_int).ok_or_else(|| corrupt("issue"))?.max(0) as u64;
                    let evicted: Vec<String> = reply.get(3..).unwrap_or_default().iter().filter_map(as_text).collect();
                    if !evicted.is_empty() {
                        self.publish_outbox(&self.keys.outbox_key(tag)).await?;
                        self.audit(Event::Evict, &record.user, &evicted, None, None, origin).await;
                    }
                    tracing::info!(user = %record.user, id = %record.id, first, evicted = evicted.len(), "token issued");
                    self.audit(
                        Event::Issue,
                        &record.user,
                        std::slice::from_ref(&record.id),
                        Some(&device),
                        Some(first),
                        origin,
                    )
                    .await;
                    return Ok(Issued {
                        token,
                        id: record.id,
                        user: record.user,
                        device,
                        first,
                        expires_in: ttl.seconds(),
                        ttl_reset,
                    });
                }
                1 => return Err(StoreError::LimitReached(self.policy.max_tokens_per_user.unwrap_or(0))),
                _ => continue,
            }
        }
        Err(StoreError::Unavailable("could not mint a unique token".into()))
    }

    /// The longest sliding refresh a filter may ask for: the lifetime of new tokens (`token_ttl`),
    /// so the internal key cannot stretch a token beyond what a login would give it.
    pub fn max_refresh_secs(&self) -> u64 {
        self.policy.token_ttl.seconds().unwrap_or(multitokens_core::ttl::MAX_TTL_SECS)
    }

    /// Checks a token's format and returns its routing tag and its digest under the current key,
    /// or `InvalidToken`.
    pub fn digest_of(&self, token: &str) -> Result<(RoutingTag, TokenDigest), StoreError> {
        let tag = self.check_format(token)?;
        Ok((tag, self.hash_keys.current().digest(token)))
    }

    /// A token's routing tag if its format, checksum and MAC hold: a forged token (a version 3
    /// token none of the hash keys minted) is `InvalidToken` without any Redis command.
    fn check_format(&self, token: &str) -> Result<RoutingTag, StoreError> {
        let tag = token::parse(token, &self.policy.prefix).map_err(|_| StoreError::InvalidToken)?;
        match self.hash_keys.origin(token, &self.policy.prefix) {
            token::Origin::Forged => Err(StoreError::InvalidToken),
            token::Origin::Issued | token::Origin::Unchecked => Ok(tag),
        }
    }

    /// Like [`TokenStore::digest_of`], with the digests under the previous keys after the current
    /// one's: every digest the token may be stored under.
    pub fn digests_of(&self, token: &str) -> Result<(RoutingTag, Vec<TokenDigest>), StoreError> {
        let tag = self.check_format(token)?;
        Ok((tag, self.hash_keys.digests(token)))
    }

    /// Looks a token up by routing tag and digest, `None` if not live.
    pub async fn lookup_digest(&self, tag: RoutingTag, digest: &TokenDigest) -> Result<Option<TokenInfo>, StoreError> {
        Ok(self.lookup_digests(tag, std::slice::from_ref(digest), None).await?.map(|f| f.info))
    }

    /// The fingerprint of the current hash key (see [`multitokens_core::digest::TokenHasher::key_id`]).
    pub fn key_id(&self) -> String {
        self.hash_keys.current().key_id()
    }

    /// Looks a token up under each digest it may be stored under (the current key's first), in
    /// one round trip; `None` if not live. With `rekey` (who caused it), a record found under a
    /// later digest is re-keyed to the first (on use; the first must be the current key's). A
    /// record whose seal does not verify is refused, counted and logged.
    pub async fn lookup_digests(
        &self,
        tag: RoutingTag,
        digests: &[TokenDigest],
        rekey: Option<&Origin>,
    ) -> Result<Option<Found>, StoreError> {
        let mut conn = self.redis.conn().await?;
        let items =
            self.run_script(&mut conn, "lookup", &scripts::lookup_call(&self.keys, tag, digests.iter())).await?;
        let (stored_under, value, pttl) = match LookupReply::parse(&items, digests.len()) {
            Ok(LookupReply::Missing) => return Ok(None),
            Ok(LookupReply::Found { candidate, value, pttl_ms }) => (candidate, value, pttl_ms),
            Err(e) => return Err(StoreError::Corrupt(e)),
        };
        let digest = digests[stored_under];
        let info = match evaluate(Some(value), pttl, now_ms(), |v| self.hash_keys.accepts(&digest, v))? {
            Verdict::Valid(v) => v,
            Verdict::Invalid => return Ok(None),
            Verdict::Tampered => {
                self.refuse_tampered(&digest);
                return Ok(None);
            }
        };
        let mut stored_under = stored_under;
        if let Some(origin) = rekey.filter(|_| stored_under > 0) {
            let read = ReadRecord { tag, digest: &digest, value, record: &info.record };
            match self.rekey_record(&mut conn, read, &digests[0], origin).await {
                Ok(true) => stored_under = 0,
                Ok(false) => {}
                Err(e) => tracing::warn!(id = %digest.public_id(), error = %e, "re-keying a token on use failed"),
            }
        }
        Ok(Some(Found { info: TokenInfo::from_valid(info), digest: digests[stored_under], stored_under }))
    }

    /// Moves a record to `new` (or reseals it in place when `new` is its digest), sealed with
    /// the current key, if it still holds what was read, and publishes the old digest (cached
    /// verdicts under it are dropped). True if moved.
    async fn rekey_record(
        &self,
        conn: &mut Conn,
        read: ReadRecord<'_>,
        new: &TokenDigest,
        origin: &Origin,
    ) -> Result<bool, StoreError> {
        let ReadRecord { tag, digest: old, value: read, record } = read;
        self.announce_outbox(&self.keys.outbox_key(tag)).await?;
        let sealed = self.hash_keys.seal(new, record.to_json()?);
        let moved: i64 = self
            .timed(
                "rekey",
                self.scripts
                    .rekey
                    .key(self.keys.record_key(tag, old))
                    .key(self.keys.record_key(tag, new))
                    .key(self.keys.index_key(&record.user))
                    .key(self.keys.expiry_key(&record.user))
                    .key(self.keys.outbox_key(tag))
                    .arg(old.to_hex())
                    .arg(new.to_hex())
                    .arg(read)
                    .arg(sealed)
                    .invoke_async(conn),
            )
            .await?;
        if moved == 1 {
            tracing::info!(id = %record.id, "token re-keyed under the current hash key");
            if old != new {
                self.publish_outbox(&self.keys.outbox_key(tag)).await?;
            }
            self.audit(Event::Rekey, &record.user, std::slice::from_ref(&record.id), None, None, origin).await;
        }
        Ok(moved == 1)
    }

    /// Who a token belongs to (the seed's `get_user_from_token`).
    pub async fn whoami(&self, token: &str) -> Result<TokenInfo, StoreError> {
        let (tag, digests) = self.digests_of(token)?;
        Ok(self
            .lookup_digests(tag, &digests, Some(&Origin::new(Actor::Companion)))
            .await?
            .ok_or(StoreError::InvalidToken)?
            .info)
    }

    /// Logs out one device. `InvalidToken` if the token was not live. Returns where the
    /// revocation sits in the feed.
    pub async fn revoke(&self, token: &str) -> Result<Revocation, StoreError> {
        self.revoke_as(token, &Origin::new(Actor::Companion)).await
    }

    /// [`TokenStore::revoke`] on behalf of `origin`.
    pub async fn revoke_as(&self, token: &str, origin: &Origin) -> Result<Revocation, StoreError> {
        let (tag, digests) = self.digests_of(token)?;
        let mut conn = self.redis.conn().await?;
        let mut revoke = self.scripts.revoke.key(self.keys.outbox_key(tag));
        self.announce_outbox(&self.keys.outbox_key(tag)).await?;
        for d in &digests {
            revoke.key(self.keys.record_key(tag, d));
        }
        revoke.arg(self.keys.index_prefix(tag)).arg(self.keys.expiry_prefix(tag));
        for d in &digests {
            revoke.arg(d.to_hex());
        }
        let reply: Vec<Value> = self.timed("revoke", revoke.invoke_async(&mut conn)).await?;
        let revoked = reply.first().and_then(as_int).ok_or_else(|| corrupt("revoke"))?;
        // publish whatever the outbox holds even when this call revoked nothing: it may be a
        // retry of a revoke whose answer was lost before its publication
        let feed_position = self.publish_outbox(&self.keys.outbox_key(tag)).await?;
        if revoked < 1 {
            return Err(StoreError::InvalidToken);
        }
        let (user, id) =
            (reply.get(1).and_then(as_text).unwrap_or_default(), reply.get(2).and_then(as_text).unwrap_or_default());
        tracing::info!(%id, "token revoked");
        self.audit(Event::Revoke, &user, &[id], None, None, origin).await;
        Ok(Revocation { revoked: 1, feed_position })
    }

    /// Logs a user out everywhere, or everywhere but the device of `except` (which must be a live
    /// token of that user). Returns how many tokens were revoked and where in the feed.
    pub async fn revoke_all(&self, user: &str, except: Option<&str>) -> Result<Revocation, StoreError> {
        self.revoke_all_as(user, except, &Origin::new(Actor::Companion)).await
    }

    /// [`TokenStore::revoke_all`] on behalf of `origin`.
    pub async fn revoke_all_as(
        &self,
        user: &str,
        except: Option<&str>,
        origin: &Origin,
    ) -> Result<Revocation, StoreError> {
        validate_user(user)?;
        let keep = match except {
            Some(token) => {
                let (tag, digests) = self.digests_of(token)?;
                let found = self.lookup_digests(tag, &digests, Some(origin)).await?.ok_or(StoreError::InvalidToken)?;
                if found.info.user != user {
                    return Err(StoreError::InvalidToken);
                }
                found.digest.to_hex()
            }
            None => String::new(),
        };
        let event = if except.is_some() { Event::RevokeOthers } else { Event::RevokeAll };
        self.revoke_all_keeping(user, Keep::Member(&keep), event, origin).await
    }

    /// Logs a user out of every device but the one whose token has public id `keep` (the
    /// application knows the id from the filter's `x-multitokens-token-id`, not the token).
    /// `NotFound` when that is no live token of the user; then nothing is revoked.
    pub async fn revoke_others_by_id_as(
        &self,
        user: &str,
        keep: &str,
        origin: &Origin,
    ) -> Result<Revocation, StoreError> {
        validate_user(user)?;
        self.revoke_all_keeping(user, Keep::PublicId(keep), Event::RevokeOthers, origin).await
    }

    /// The revoke-all script for a user, keeping one token (by digest or by public id) or none;
    /// publishes what it revoked and audits it as `event`.
    async fn revoke_all_keeping(
        &self,
        user: &str,
        keep: Keep<'_>,
        event: Event,
        origin: &Origin,
    ) -> Result<Revocation, StoreError> {
        let mut conn = self.redis.conn().await?;
        let tag = RoutingTag::for_user(user);
        self.announce_outbox(&self.keys.outbox_key(tag)).await?;
        let (member, id) = match keep {
            Keep::Member(m) => (m, ""),
            Keep::PublicId(id) => ("", id),
        };
        let mut invocation = self.scripts.revoke_all.prepare_invoke();
        invocation.key(self.keys.index_key(user)).key(self.keys.outbox_key(tag)).key(self.keys.expiry_key(user));
        invocation.arg(self.keys.record_prefix(tag)).arg(member).arg(id);
        let revoked: Vec<String> = match self.timed("revoke_all", invocation.invoke_async(&mut conn)).await {
            Err(e) if e.code() == Some("NOKEEP") => {
                return Err(StoreError::NotFound(format!("no live token with id {id:?} for this user")));
            }
            other => other?,
        };
        let feed_position =
            if revoked.is_empty() { None } else { self.publish_outbox(&self.keys.outbox_key(tag)).await? };
        tracing::info!(user, revoked = revoked.len(), event = event.as_str(), "tokens revoked");
        self.audit(event, user, &revoked, None, None, origin).await;
        Ok(Revocation { revoked: revoked.len() as u64, feed_position })
    }

    /// Logs out one of a user's devices by the token's public id.
    pub async fn revoke_by_id(&self, user: &str, id: &str) -> Result<Revocation, StoreError> {
        self.revoke_by_id_as(user, id, &Origin::new(Actor::Companion)).await
    }

    /// [`TokenStore::revoke_by_id`] on behalf of `origin`.
    pub async fn revoke_by_id_as(&self, user: &str, id: &str, origin: &Origin) -> Result<Revocation, StoreError> {
        validate_user(user)?;
        let mut conn = self.redis.conn().await?;
        let tag = RoutingTag::for_user(user);
        self.announce_outbox(&self.keys.outbox_key(tag)).await?;
        let member: Option<String> = self
            .timed(
                "revoke_by_id",
                self.scripts
                    .revoke_by_id
                    .key(self.keys.index_key(user))
                    .key(self.keys.outbox_key(tag))
                    .key(self.keys.expiry_key(user))
                    .arg(self.keys.record_prefix(tag))
                    .arg(id)
                    .invoke_async(&mut conn),
            )
            .await?;
        member.ok_or_else(|| StoreError::NotFound(format!("no live token with id {id:?} for this user")))?;
        let feed_position = self.publish_outbox(&self.keys.outbox_key(tag)).await?;
        tracing::info!(user, id, "token revoked by id");
        self.audit(Event::Revoke, user, &[id.to_string()], None, None, origin).await;
        Ok(Revocation { revoked: 1, feed_position })
    }

    /// A user's live tokens, oldest first.
    pub async fn list(&self, user: &str) -> Result<Vec<TokenInfo>, StoreError> {
        validate_user(user)?;
        let mut conn = self.redis.conn().await?;
        let tag = RoutingTag::for_user(user);
        let flat: Vec<Value> = self
            .timed(
                "list",
                self.scripts
                    .list
                    .key(self.keys.index_key(user))
                    .key(self.keys.expiry_key(user))
                    .arg(self.keys.record_prefix(tag))
                    .invoke_async(&mut conn),
            )
            .await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(flat.len() / 3);
        for triple in flat.chunks(3) {
            let [member, Value::BulkString(json), pttl] = triple else { return Err(corrupt("list")) };
            let digest = as_text(member).and_then(|m| TokenDigest::from_hex(&m)).ok_or_else(|| corrupt("list"))?;
            let pttl = as_int(pttl).ok_or_else(|| corrupt("list"))?;
            match evaluate(Some(json), pttl, now, |v| self.hash_keys.accepts(&digest, v))? {
                Verdict::Valid(v) => out.push(TokenInfo::from_valid(v)),
                Verdict::Tampered => self.refuse_tampered(&digest),
                Verdict::Invalid => {}
            }
        }
        Ok(out)
    }

    /// Sliding expiry: pushes a mortal token's TTL out to `ttl`; true if it was refreshed.
    pub async fn refresh(&self, tag: RoutingTag, digest: &TokenDigest, ttl: TokenTtl) -> Result<bool, StoreError> {
        let TokenTtl::Seconds(_) = ttl else { return Ok(false) };
        let mut conn = self.redis.conn().await?;
        let call = scripts::refresh_call(&self.keys, tag, digest, ttl.as_millis_or_zero());
        let refreshed: i64 = self.timed("refresh", self.scripts.invocation(&call).invoke_async(&mut conn)).await?;
        Ok(refreshed == 1)
    }

    /// Compares this companion's hash keys with the store's key check value, writing it when the
    /// store has none yet. A store written with one of the previous keys matches (a rotation) and
    /// is marked as written with the current key from then on.
    pub async fn check_hash_key(&self) -> Result<KeyCheck, StoreError> {
        let mut conn = self.redis.conn().await?;
        let check = |h: &multitokens_core::digest::TokenHasher| h.digest(KEY_CHECK_TEXT).to_hex();
        let ours = check(self.hash_keys.current());
        let key = self.keys.key_check();
        let _: Option<String> = redis::cmd("SET").arg(&key).arg(&ours).arg("NX").query_async(&mut conn).await?;
        let stored: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        if stored.as_deref() == Some(ours.as_str()) {
            return Ok(KeyCheck::Matches);
        }
        if self.hash_keys.all()[1..].iter().any(|h| stored.as_deref() == Some(check(h).as_str())) {
            let _: () = redis::cmd("SET").arg(&key).arg(&ours).query_async(&mut conn).await?;
            tracing::info!("the store was written with a previous hash key: rotating to the current one");
            return Ok(KeyCheck::Matches);
        }
        Ok(KeyCheck::Differs)
    }

    /// Whether this companion may write records here: with a signing key it marks the store as
    /// signed (its public key in `<prefix>:signcheck`) and may; without one it may not once the
    /// store is marked, since every record it wrote would be refused as tampered.
    pub async fn check_signing(&self) -> Result<bool, StoreError> {
        let mut conn = self.redis.conn().await?;
        let key = self.keys.sign_check();
        match self.hash_keys.signer() {
            Some(signer) => {
                let _: () = redis::cmd("SET").arg(&key).arg(signer.public_key_text()).query_async(&mut conn).await?;
                Ok(true)
            }
            None => {
                let signed: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await?;
                Ok(!signed)
            }
        }
    }

    /// Re-keys every record of the namespace stored under a previous hash key (`multitokens
    /// rekey`), and with `seal_unsealed` seals records written before sealing with the current
    /// key. Safe to run while serving and to run again: each record moves in one atomic script
    /// that checks it still holds what was read. Holds the record key names in memory (~100 bytes
    /// per token).
    pub async fn rekey_all(&self, seal_unsealed: bool) -> Result<RekeyReport, StoreError> {
        self.rekey_all_as(seal_unsealed, &Origin::new(Actor::Companion)).await
    }

    /// [`TokenStore::rekey_all`] on behalf of `origin`.
    pub async fn rekey_all_as(&self, seal_unsealed: bool, origin: &Origin) -> Result<RekeyReport, StoreError> {
        let names = self.redis.scan_all(&self.keys.record_pattern()).await?;
        let mut report = RekeyReport::default();
        let mut conn = self.redis.conn().await?;
        let current = self.hash_keys.current();
        for name in names {
            let Some((tag, digest)) = self.keys.parse_record_key(&name) else { continue };
            report.scanned += 1;
            let (value, pttl): (Option<Vec<u8>>, i64) =
                redis::pipe().get(&name).cmd("PTTL").arg(&name).query_async(&mut conn).await?;
            let Some(value) = value.filter(|_| pttl != -2) else {
                report.gone += 1;
                continue;
            };
            let record = match TokenRecord::from_json(&value) {
                Ok(r) => r,
                Err(_) => {
                    report.unsealed_or_tampered += 1;
                    continue;
                }
            };
            let sealed_by = self.hash_keys.sealed_by(&digest, &value);
            let new_digest =
                record.token_hash.as_deref().and_then(TokenDigest::from_hex).map(|h| current.digest_of_hash(&h.0));
            // a record with a broken seal or signature is tampered with, never sealed afresh
            let has_seal = HashKeys::carries_seal(&value);
            // an HMAC-sealed record while records are signed: signed where it is (or where it moves)
            let sign = self.hash_keys.signs_records() && !multitokens_core::signing::has_signature(&value);
            // where the record goes, and the counter it adds to once moved
            let (target, counter) = match (sealed_by, new_digest) {
                (None, _) if seal_unsealed && current.is_keyed() && !has_seal => (digest, &mut report.sealed),
                (None, _) => {
                    self.refuse_tampered(&digest);
                    report.unsealed_or_tampered += 1;
                    if report.unsealed_or_tampered_ids.len() < 100 {
                        report.unsealed_or_tampered_ids.push(digest.public_id());
                    }
                    continue;
                }
                (Some(0), Some(new)) if new == digest && !sign => {
                    report.current += 1;
                    continue;
                }
                (Some(0), Some(new)) if new == digest => (digest, &mut report.sealed),
                (Some(_), Some(new)) => (new, &mut report.rekeyed),
                (Some(0), None) if !sign => {
                    report.current += 1;
                    continue;
                }
                (Some(0), None) => (digest, &mut report.sealed),
                (Some(_), None) => {
                    report.rekeyed_on_use_only += 1;
                    continue;
                }
            };
            if self
                .rekey_record(
                    &mut conn,
                    ReadRecord { tag, digest: &digest, value: &value, record: &record },
                    &target,
                    origin,
                )
                .await?
            {
                *counter += 1;
            } else {
                report.gone += 1;
            }
        }
        tracing::info!(?report, "rekey sweep done");
        Ok(report)
    }

    /// Reads the revocation feed after `cursor` (one atomic script, [`scripts::FEED`]); without a
    /// cursor, returns the current tail so a new poller starts from now.
    /// `0` (or `0-0`) reads the feed from its beginning.
    pub async fn revocations_after(&self, cursor: Option<&str>) -> Result<RevocationPage, StoreError> {
        let cursor = cursor.map(|c| if c == "0" { "0-0" } else { c });
        if let Some(c) = cursor {
            if stream_id(c).is_none() {
                return Err(StoreError::BadInput(format!(
                    "after: {c:?} is not a cursor: give 0 for the beginning, or the cursor of the last page (like 1700000000000-0)"
                )));
            }
        }
        let mut conn = self.redis.conn().await?;
        let items = self.run_script(&mut conn, "feed", &scripts::feed_call(&self.keys, cursor)).await?;
        scripts::feed_page(&items).map_err(StoreError::Corrupt)
    }

    /// Waits at most `block` on `conn` (a dedicated connection) for feed entries after `cursor`;
    /// returns them as (stream id, digest), oldest first.
    pub async fn feed_entries_after(
        &self,
        conn: &mut Conn,
        cursor: &str,
        block: Duration,
    ) -> Result<Vec<(String, String)>, StoreError> {
        use redis::streams::{StreamReadOptions, StreamReadReply};
        let options = StreamReadOptions::default().block(block.as_millis() as usize).count(FEED_PAGE);
        let reply: Option<StreamReadReply> =
            conn.xread_options(&[self.keys.revocation_feed()], &[cursor], &options).await?;
        let mut out = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                if let Some(redis::Value::BulkString(d)) = entry.map.get("d") {
                    out.push((entry.id.clone(), String::from_utf8_lossy(d).into_owned()));
                }
            }
        }
        Ok(out)
    }

    /// Appends an event to the audit trail. The mutation it records has committed: a failure to
    /// append is logged, never the operation's failure.
    async fn audit(
        &self,
        event: Event,
        user: &str,
        ids: &[String],
        device: Option<&str>,
        first: Option<bool>,
        origin: &Origin,
    ) {
        match event {
            Event::Issue => {
                self.metrics.issued.inc();
            }
            Event::Rekey => {
                self.metrics.rekeyed.inc();
            }
            Event::Revoke | Event::RevokeAll | Event::RevokeOthers | Event::Evict => {
                self.metrics.revoked.get_or_create(&HowLabels { how: event.as_str() }).inc_by(ids.len() as u64);
            }
        }
        let fields = audit::fields(event, user, ids, device, first, origin);
        let appended: Result<String, StoreError> = async {
            let mut conn = self.redis.conn().await?;
            let mut xadd = redis::cmd("XADD");
            xadd.arg(self.keys.audit()).arg("MAXLEN").arg("~").arg(AUDIT_MAX_LEN).arg("*").arg(&fields);
            Ok(xadd.query_async(&mut conn).await?)
        }
        .await;
        if let Err(e) = appended {
            tracing::warn!(error = %e, event = event.as_str(), user, "cannot append to the audit trail");
        }
    }

    /// Audit events after `cursor` (a stream id; `None`: from `since_ms`, Unix ms), oldest
    /// first, of `user` only when given; at most `limit`, reading at most `limit * 10` entries
    /// (a user filter over a busy trail returns fewer: continue from the last cursor returned,
    /// or `scanned_to`). Returns the events and the last stream id read.
    pub async fn audit_events(
        &self,
        user: Option<&str>,
        cursor: Option<&str>,
        since_ms: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, Option<String>), StoreError> {
        let mut conn = self.redis.conn().await?;
        let start = match cursor {
            Some(c) => {
                stream_id(c).ok_or_else(|| {
                    StoreError::BadInput(format!("after: {c:?} is not a cursor (like 1700000000000-0)"))
                })?;
                format!("({c}")
            }
            None => format!("{since_ms}-0"),
        };
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.audit())
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(limit.saturating_mul(10).max(1))
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        let mut last = None;
        for entry in reply.ids {
            last = Some(entry.id.clone());
            let fields: std::collections::HashMap<String, String> = entry
                .map
                .iter()
                .filter_map(|(k, v)| redis::from_redis_value::<String>(v.clone()).ok().map(|v| (k.clone(), v)))
                .collect();
            if let Some(r) = audit::record(&entry.id, &fields) {
                if user.is_none_or(|u| r.user == u) {
                    out.push(r);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok((out, last))
    }

    /// Waits at most `block` on `conn` (a dedicated connection) for audit events after `cursor`
    /// (`$`: from now), oldest first (`multitokens events --follow`).
    pub async fn audit_events_after(
        &self,
        conn: &mut Conn,
        cursor: &str,
        block: Duration,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        use redis::streams::{StreamReadOptions, StreamReadReply};
        let options = StreamReadOptions::default().block(block.as_millis() as usize).count(1000);
        let reply: Option<StreamReadReply> = conn.xread_options(&[self.keys.audit()], &[cursor], &options).await?;
        let mut out = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                let fields: std::collections::HashMap<String, String> = entry
                    .map
                    .iter()
                    .filter_map(|(k, v)| redis::from_redis_value::<String>(v.clone()).ok().map(|v| (k.clone(), v)))
                    .collect();
                out.extend(audit::record(&entry.id, &fields));
            }
        }
        Ok(out)
    }

    /// Writes edges' states (JSON) into the shared edge hash.
    pub async fn write_edges(&self, entries: &[(String, String)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.redis.conn().await?;
        // HSET with several pairs (HMSET is deprecated, and not in the companion's ACL)
        let _: i64 = redis::cmd("HSET").arg(self.keys.edges()).arg(entries).query_async(&mut conn).await?;
        Ok(())
    }

    /// Every edge's state in the shared edge hash.
    pub async fn read_edges(&self) -> Result<std::collections::HashMap<String, super::edges::EdgeState>, StoreError> {
        let mut conn = self.redis.conn().await?;
        let raw: std::collections::HashMap<String, String> = conn.hgetall(self.keys.edges()).await?;
        Ok(raw.into_iter().filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|s| (k, s))).collect())
    }

    /// Removes edges not due since `before_ms` from the shared hash.
    pub async fn forget_edges(&self, before_ms: u64) -> Result<(), StoreError> {
        let stale: Vec<String> =
            self.read_edges().await?.into_iter().filter(|(_, s)| s.due_ms < before_ms).map(|(k, _)| k).collect();
        if !stale.is_empty() {
            let mut conn = self.redis.conn().await?;
            let _: () = conn.hdel(self.keys.edges(), stale).await?;
        }
        Ok(())
    }

    /// The Redis handle (for a dedicated connection).
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Copies an outbox to the revocation feed, then removes what was copied; returns the feed
    /// position of the last entry written (`None` when the outbox was empty). At least once: a
    /// digest may reach the feed twice, never zero times.
    pub async fn publish_outbox(&self, outbox: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.redis.conn().await?;
        let mut last = None;
        loop {
            let members: Vec<String> =
                redis::cmd("LRANGE").arg(outbox).arg(0).arg(OUTBOX_BATCH - 1).query_async(&mut conn).await?;
            if members.is_empty() {
                return Ok(last);
            }
            let mut pipe = redis::pipe();
            for m in &members {
                pipe.cmd("XADD")
                    .arg(self.keys.revocation_feed())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(FEED_MAX_LEN)
                    .arg("*")
                    .arg("d")
                    .arg(m);
            }
            let ids: Vec<String> = self.timed("publish", pipe.query_async(&mut conn)).await?;
            last = ids.last().cloned().or(last);
            let mut done = self.scripts.outbox_done.key(outbox);
            for m in &members {
                done.arg(m);
            }
            let _: i64 = done.invoke_async(&mut conn).await?;
        }
    }

    /// Announces that a script may put revoked digests into `outbox`, before it runs: if this
    /// companion dies before publishing them, the sweep finds the outbox in the index.
    pub async fn announce_outbox(&self, outbox: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.conn().await?;
        let _: i64 = redis::cmd("ZADD")
            .arg(self.keys.pending_outboxes())
            .arg(now_ms())
            .arg(outbox)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Publishes every outbox a companion left behind (it died between a revocation and its
    /// publication): those announced in the index more than [`OUTBOX_SETTLE_MS`] ago, at most
    /// [`OUTBOX_SWEEP_BATCH`] a call, each dropped from the index once drained (unless announced
    /// again meanwhile). O(outboxes pending), never the keyspace. Returns how many held digests.
    pub async fn publish_abandoned_outboxes(&self) -> Result<usize, StoreError> {
        self.publish_outboxes_announced_before(now_ms().saturating_sub(OUTBOX_SETTLE_MS)).await
    }

    /// Publishes the outboxes announced at or before `settled` (Unix ms), at most
    /// [`OUTBOX_SWEEP_BATCH`], dropping each from the index once drained; see
    /// [`TokenStore::publish_abandoned_outboxes`].
    pub async fn publish_outboxes_announced_before(&self, settled: u64) -> Result<usize, StoreError> {
        let mut conn = self.redis.conn().await?;
        let entries: Vec<(String, String)> = redis::cmd("ZRANGE")
            .arg(self.keys.pending_outboxes())
            .arg("-inf")
            .arg(settled)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(OUTBOX_SWEEP_BATCH)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let mut published = 0;
        for (outbox, score) in entries {
            if self.publish_outbox(&outbox).await?.is_some() {
                published += 1;
            }
            let _: i64 = self
                .scripts
                .outbox_forget
                .key(self.keys.pending_outboxes())
                .arg(&outbox)
                .arg(&score)
                .invoke_async(&mut conn)
                .await?;
        }
        Ok(published)
    }

    /// Publishes the outboxes found by scanning every node: once at start, for outboxes written
    /// by companions from before the index (an upgrade). Returns how many held digests.
    pub async fn publish_unindexed_outboxes(&self) -> Result<usize, StoreError> {
        let keys = self.redis.scan_all(&self.keys.outbox_pattern()).await?;
        let mut published = 0;
        for key in keys {
            if self.publish_outbox(&key).await?.is_some() {
                published += 1;
            }
        }
        Ok(published)
    }
}
