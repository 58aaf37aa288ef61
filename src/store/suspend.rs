//! Suspending and resuming tokens: the record is rewritten with its `suspended` flag set or
//! cleared, resealed, in place (its TTL kept), and its digest published to the feed like a
//! revocation's, so every edge drops what it cached before the call returns.

use super::*;

impl TokenStore {
    /// Suspends (`suspended`) or resumes the user's token with public id `id`, or with `None` every
    /// live token of the user, on behalf of `origin`. Returns how many tokens changed (those
    /// already in that state are left alone) and where the change sits in the feed; `NotFound`
    /// when `id` is no live token of the user.
    pub async fn set_suspended(
        &self,
        user: &str,
        id: Option<&str>,
        suspended: bool,
        origin: &Origin,
    ) -> Result<Revocation, StoreError> {
        let records = self.records_of(user).await?;
        let chosen: Vec<&UserRecord> = records.iter().filter(|r| id.is_none_or(|id| r.info.id == id)).collect();
        if let (Some(id), true) = (id, chosen.is_empty()) {
            return Err(StoreError::NotFound(format!("no live token with id {id:?} for this user")));
        }
        let tag = RoutingTag::for_user(user);
        let outbox = self.layout.outbox_key(tag);
        self.announce_outbox(&outbox).await?;
        let to_change: Vec<&UserRecord> = chosen.into_iter().filter(|r| r.info.suspended != suspended).collect();
        let mut changed = Vec::new();
        if !to_change.is_empty() {
            // every record in one script (one hash tag): no request sees half a suspend-all
            let mut rewrite = self.scripts.rewrite.key(&outbox);
            for r in &to_change {
                let mut record = TokenRecord::from_json(&r.value)?;
                record.suspended = suspended;
                let value = self.hash_keys.seal(&r.digest, record.to_json()?);
                rewrite.key(self.layout.record_key(tag, &r.digest));
                rewrite.arg(r.value.as_slice()).arg(value).arg(r.digest.to_hex());
            }
            let mut conn = self.redis.conn().await?;
            let done: Vec<i64> = self.timed("rewrite", rewrite.invoke_async(&mut conn)).await?;
            if done.len() != to_change.len() {
                return Err(corrupt("rewrite"));
            }
            // 0: revoked or rewritten meanwhile (a revoke wins; a concurrent suspend did it)
            changed = to_change.iter().zip(done).filter(|(_, d)| *d == 1).map(|(r, _)| r.info.id.clone()).collect();
        }
        let feed_position = self.publish_outbox(&outbox).await?;
        let event = if suspended { Event::Suspend } else { Event::Resume };
        if !changed.is_empty() {
            tracing::info!(
                user,
                tokens = changed.len(),
                "{}",
                if suspended { "tokens suspended" } else { "tokens resumed" }
            );
            self.audit(event, user, &changed, None, None, origin).await;
        }
        Ok(Revocation { revoked: changed.len() as u64, feed_position })
    }
}
