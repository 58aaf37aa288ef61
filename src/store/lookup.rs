//! Looking tokens up by routing tag and digests: one at a time, or a batch read from Redis in one
//! pipeline (the native module's `POST /v1/internal/lookups`).

use super::*;

/// One lookup of a batch: the token's routing tag, every digest it may be stored under (the
/// current key's first), and who to name if it is re-keyed on use (`None`: not re-keyed).
pub struct Lookup<'a> {
    /// The token's routing tag.
    pub tag: RoutingTag,
    /// The digests to try, in order.
    pub digests: Vec<TokenDigest>,
    /// Re-key a record found under a later digest to the first, on behalf of this origin.
    pub rekey: Option<&'a Origin>,
}

impl TokenStore {
    /// Looks a token up by routing tag and digest, `None` if not live.
    pub async fn lookup_digest(&self, tag: RoutingTag, digest: &TokenDigest) -> Result<Option<TokenInfo>, StoreError> {
        Ok(self.lookup_digests(tag, std::slice::from_ref(digest), None).await?.map(|f| f.info))
    }

    /// Whether a record stored under `digest` may be honoured (its seal or signature verifies;
    /// remembered for records that did).
    pub(super) fn accepts(&self, digest: &TokenDigest, value: &[u8]) -> bool {
        self.verified.check(digest, value, || self.hash_keys.accepts(digest, value))
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
            self.run_script(&mut conn, "lookup", &scripts::lookup_call(&self.layout, tag, digests.iter())).await?;
        self.found_in(&mut conn, tag, digests, rekey, &items).await
    }

    /// Several lookups, answered in order as [`TokenStore::lookup_digests`] answers each. On one
    /// Redis node they are read in one pipeline (one write and one read for all, one pass of
    /// Redis's event loop); a Redis Cluster gets them one by one, at once (a pipeline must stay in
    /// one slot, and a batch spans users). A Redis failure fails the batch.
    pub async fn lookup_many(&self, lookups: &[Lookup<'_>]) -> Result<Vec<Option<Found>>, StoreError> {
        if lookups.is_empty() {
            return Ok(Vec::new()); // Redis refuses an empty pipeline
        }
        if matches!(self.redis, Redis::Cluster(..)) {
            let each = lookups.iter().map(|l| self.lookup_digests(l.tag, &l.digests, l.rekey));
            return futures_util::future::try_join_all(each).await;
        }
        let mut conn = self.redis.conn().await?;
        let calls: Vec<ScriptCall> =
            lookups.iter().map(|l| scripts::lookup_call(&self.layout, l.tag, l.digests.iter())).collect();
        let replies = self.run_pipelined(&mut conn, "lookup_batch", &calls).await?;
        let mut found = Vec::with_capacity(lookups.len());
        for (lookup, items) in lookups.iter().zip(&replies) {
            found.push(self.found_in(&mut conn, lookup.tag, &lookup.digests, lookup.rekey, items).await?);
        }
        Ok(found)
    }

    /// Runs core script calls in one pipeline and returns each reply's items. Scripts Redis does
    /// not know (it restarted, or `SCRIPT FLUSH`) are loaded and the pipeline sent once more.
    async fn run_pipelined(
        &self,
        conn: &mut Conn,
        op: &'static str,
        calls: &[ScriptCall],
    ) -> Result<Vec<Vec<Reply>>, StoreError> {
        let invocations: Vec<redis::ScriptInvocation> = calls.iter().map(|c| self.scripts.invocation(c)).collect();
        let mut pipe = redis::pipe();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let mut replies: redis::RedisResult<Vec<Value>> = self.timed(op, pipe.query_async(conn)).await;
        if replies.as_ref().is_err_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)) {
            let mut loaded = Vec::new();
            for (call, invocation) in calls.iter().zip(&invocations) {
                if !loaded.contains(&call.script) {
                    invocation.load_async(conn).await?;
                    loaded.push(call.script);
                }
            }
            replies = self.timed(op, pipe.query_async(conn)).await;
        }
        let replies = replies?;
        if replies.len() != calls.len() {
            return Err(corrupt(op));
        }
        replies.into_iter().map(|reply| script_items(op, reply)).collect()
    }

    /// What a lookup script's reply says: the token found (its record verified, re-keyed on use
    /// if asked), or `None`.
    async fn found_in(
        &self,
        conn: &mut Conn,
        tag: RoutingTag,
        digests: &[TokenDigest],
        rekey: Option<&Origin>,
        items: &[Reply],
    ) -> Result<Option<Found>, StoreError> {
        let (stored_under, value, pttl) = match LookupReply::parse(items, digests.len()) {
            Ok(LookupReply::Missing) => return Ok(None),
            Ok(LookupReply::Found { candidate, value, pttl_ms }) => (candidate, value, pttl_ms),
            Err(e) => return Err(StoreError::Corrupt(e)),
        };
        let Some(&digest) = digests.get(stored_under) else { return Err(corrupt("lookup")) };
        let info = match evaluate(Some(value), pttl, now_ms(), |v| self.accepts(&digest, v))? {
            Verdict::Valid(v) => v,
            Verdict::Invalid | Verdict::Suspended(_) => return Ok(None),
            Verdict::Tampered => {
                self.report_tampered(&digest).await;
                return Ok(None);
            }
        };
        let mut stored_under = stored_under;
        if let Some(origin) = rekey.filter(|_| stored_under > 0) {
            let read = ReadRecord { tag, digest: &digest, value, record: &info.record };
            match self.rekey_record(conn, read, &digests[0], origin).await {
                Ok(true) => stored_under = 0,
                Ok(false) => {}
                Err(e) => tracing::warn!(id = %digest.public_id(), error = %e, "re-keying a token on use failed"),
            }
        }
        Ok(Some(Found { info: TokenInfo::from_valid(info), digest: digests[stored_under], stored_under }))
    }
}
