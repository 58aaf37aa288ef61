//! Revocations: one device, every device (but one), a device by its public id. Each script
//! writes what it revoked to the hash tag's outbox, published to the feed before it returns.

use super::*;

/// Which token a revoke-all keeps.
enum Keep<'a> {
    /// The one stored under this member (digest hex; empty: none).
    Member(&'a str),
    /// The one with this public id.
    PublicId(&'a str),
}

impl TokenStore {
    /// Logs out one device, on behalf of `origin`. `InvalidToken` if the token was not live.
    /// Returns where the revocation sits in the feed.
    pub async fn revoke(&self, token: &str, origin: &Origin) -> Result<Revocation, StoreError> {
        let (tag, digests) = self.digests_of(token)?;
        let mut conn = self.redis.conn().await?;
        let mut revoke = self.scripts.revoke.key(self.layout.outbox_key(tag));
        self.announce_outbox(&self.layout.outbox_key(tag)).await?;
        for d in &digests {
            revoke.key(self.layout.record_key(tag, d));
        }
        revoke.arg(self.layout.index_prefix(tag)).arg(self.layout.expiry_prefix(tag));
        for d in &digests {
            revoke.arg(d.to_hex());
        }
        let reply: Vec<Value> = self.timed("revoke", revoke.invoke_async(&mut conn)).await?;
        let revoked = reply.first().and_then(as_int).ok_or_else(|| corrupt("revoke"))?;
        // publish whatever the outbox holds even when this call revoked nothing: it may be a
        // retry of a revoke whose answer was lost before its publication
        let feed_position = self.publish_outbox(&self.layout.outbox_key(tag)).await?;
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
    /// token of that user), on behalf of `origin`. Returns how many tokens were revoked and where
    /// in the feed.
    pub async fn revoke_all(
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
    pub async fn revoke_others_by_id(&self, user: &str, keep: &str, origin: &Origin) -> Result<Revocation, StoreError> {
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
        self.announce_outbox(&self.layout.outbox_key(tag)).await?;
        let (member, id) = match keep {
            Keep::Member(m) => (m, ""),
            Keep::PublicId(id) => ("", id),
        };
        let mut invocation = self.scripts.revoke_all.prepare_invoke();
        invocation.key(self.layout.index_key(user)).key(self.layout.outbox_key(tag)).key(self.layout.expiry_key(user));
        invocation.arg(self.layout.record_prefix(tag)).arg(member).arg(id);
        let revoked: Vec<String> = match self.timed("revoke_all", invocation.invoke_async(&mut conn)).await {
            Err(e) if e.code() == Some("NOKEEP") => {
                return Err(StoreError::NotFound(format!("no live token with id {id:?} for this user")));
            }
            other => other?,
        };
        let feed_position =
            if revoked.is_empty() { None } else { self.publish_outbox(&self.layout.outbox_key(tag)).await? };
        tracing::info!(user, revoked = revoked.len(), event = event.as_str(), "tokens revoked");
        self.audit(event, user, &revoked, None, None, origin).await;
        Ok(Revocation { revoked: revoked.len() as u64, feed_position })
    }

    /// Logs out one of a user's devices by the token's public id, on behalf of `origin`.
    pub async fn revoke_by_id(&self, user: &str, id: &str, origin: &Origin) -> Result<Revocation, StoreError> {
        validate_user(user)?;
        let mut conn = self.redis.conn().await?;
        let tag = RoutingTag::for_user(user);
        self.announce_outbox(&self.layout.outbox_key(tag)).await?;
        let member: Option<String> = self
            .timed(
                "revoke_by_id",
                self.scripts
                    .revoke_by_id
                    .key(self.layout.index_key(user))
                    .key(self.layout.outbox_key(tag))
                    .key(self.layout.expiry_key(user))
                    .arg(self.layout.record_prefix(tag))
                    .arg(id)
                    .invoke_async(&mut conn),
            )
            .await?;
        member.ok_or_else(|| StoreError::NotFound(format!("no live token with id {id:?} for this user")))?;
        let feed_position = self.publish_outbox(&self.layout.outbox_key(tag)).await?;
        tracing::info!(user, id, "token revoked by id");
        self.audit(Event::Revoke, user, &[id.to_string()], None, None, origin).await;
        Ok(Revocation { revoked: 1, feed_position })
    }
}
