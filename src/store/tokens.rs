//! Tokens: issue (log a device in), look up, list and slide a token's expiry.

use super::*;

impl TokenStore {
    /// Logs a device in: mints a token and stores its digest atomically with the policy applied,
    /// on behalf of `origin` (the audit trail names it).
    pub async fn issue(&self, req: IssueRequest, origin: &Origin) -> Result<Issued, StoreError> {
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
            self.announce_outbox(&self.layout.outbox_key(tag)).await?;
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
                suspended: false,
                cnf: req.bound_to.map(|t| multitokens_core::record::Confirmation { jkt: t.to_b64() }),
            };
            let json = self.hash_keys.seal(&digest, record.to_json()?);
            let reply: Vec<Value> = self
                .timed(
                    "issue",
                    self.scripts
                        .issue
                        .key(self.layout.index_key(&req.user))
                        .key(self.layout.record_key(tag, &digest))
                        .key(self.layout.outbox_key(tag))
                        .key(self.layout.expiry_key(&req.user))
                        .arg(digest.to_hex())
                        .arg(json)
                        .arg(ttl.as_millis_or_zero())
                        .arg(self.policy.token_ttl.as_millis_or_zero())
                        .arg(if self.policy.reset_ttl_on_login { "1" } else { "0" })
                        .arg(if self.policy.overwrite_none_ttl { "1" } else { "0" })
                        .arg(self.policy.max_tokens_per_user.unwrap_or(0))
                        .arg(self.policy.max_tokens_policy.as_str())
                        .arg(self.layout.record_prefix(tag))
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
                        self.publish_outbox(&self.layout.outbox_key(tag)).await?;
                        self.audit(Event::Evict, &record.user, &evicted, None, None, origin).await;
                    }
                    let evicted = evicted.len();
                    tracing::info!(user = %record.user, id = %record.id, first, evicted, "token issued");
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
    pub(super) fn check_format(&self, token: &str) -> Result<RoutingTag, StoreError> {
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

    /// The fingerprint of the current hash key (see [`multitokens_core::digest::TokenHasher::key_id`]).
    pub fn key_id(&self) -> String {
        self.hash_keys.current().key_id()
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

    /// A user's live tokens, oldest first, suspended ones included (`suspended` says so).
    pub async fn list(&self, user: &str) -> Result<Vec<TokenInfo>, StoreError> {
        Ok(self.records_of(user).await?.into_iter().map(|r| r.info).collect())
    }

    /// A user's live records, oldest first: where each is stored, its value, what it says.
    pub(super) async fn records_of(&self, user: &str) -> Result<Vec<UserRecord>, StoreError> {
        validate_user(user)?;
        let mut conn = self.redis.conn().await?;
        let tag = RoutingTag::for_user(user);
        let flat: Vec<Value> = self
            .timed(
                "list",
                self.scripts
                    .list
                    .key(self.layout.index_key(user))
                    .key(self.layout.expiry_key(user))
                    .arg(self.layout.record_prefix(tag))
                    .invoke_async(&mut conn),
            )
            .await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(flat.len() / 4);
        for entry in flat.chunks(4) {
            let [member, Value::BulkString(json), pttl, activity] = entry else { return Err(corrupt("list")) };
            let activity = match activity {
                Value::BulkString(a) => Some(a.as_slice()),
                _ => None,
            };
            let digest = as_text(member).and_then(|m| TokenDigest::from_hex(&m)).ok_or_else(|| corrupt("list"))?;
            let pttl = as_int(pttl).ok_or_else(|| corrupt("list"))?;
            let info = match evaluate(Some(json), pttl, now, |v| self.accepts(&digest, v))? {
                Verdict::Valid(v) | Verdict::Suspended(v) => TokenInfo::from_valid(v).with_activity(activity),
                Verdict::Tampered => {
                    self.report_tampered(&digest).await;
                    continue;
                }
                Verdict::Invalid => continue,
            };
            out.push(UserRecord { digest, value: json.clone(), info });
        }
        Ok(out)
    }

    /// Sliding expiry: pushes a mortal token's TTL out to `ttl`; true if it was refreshed.
    pub async fn refresh(&self, tag: RoutingTag, digest: &TokenDigest, ttl: TokenTtl) -> Result<bool, StoreError> {
        let TokenTtl::Seconds(_) = ttl else { return Ok(false) };
        let mut conn = self.redis.conn().await?;
        let call = scripts::refresh_call(&self.layout, tag, digest, ttl.as_millis_or_zero());
        let refreshed: i64 = self.timed("refresh", self.scripts.invocation(&call).invoke_async(&mut conn)).await?;
        Ok(refreshed == 1)
    }
}
