//! The revocation feed in Redis and the outboxes that feed it: reads for filters, the blocking
//! read the fan-out holds, and the publication of what a revocation (or a dead companion) left.

use super::*;

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

/// Parses a stream id `ms-seq` for ordering.
pub fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl TokenStore {
    /// Reads the revocation feed after `cursor` (one atomic script, [`scripts::FEED`]); without a
    /// cursor, returns the current tail so a new poller starts from now.
    /// `0` (or `0-0`) reads the feed from its beginning.
    pub async fn revocations_after(&self, cursor: Option<&str>) -> Result<RevocationPage, StoreError> {
        let cursor = cursor.map(|c| if c == "0" { "0-0" } else { c });
        if let Some(c) = cursor {
            if stream_id(c).is_none() {
                return Err(StoreError::BadInput(format!(
                    "after: {c:?} is not a cursor: give 0 for the beginning, or the cursor of the last page \
                     (like 1700000000000-0)"
                )));
            }
        }
        let mut conn = self.redis.conn().await?;
        let items = self.run_script(&mut conn, "feed", &scripts::feed_call(&self.layout, cursor)).await?;
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
            conn.xread_options(&[self.layout.revocation_feed()], &[cursor], &options).await?;
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
                    .arg(self.layout.revocation_feed())
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
            .arg(self.layout.pending_outboxes())
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
            .arg(self.layout.pending_outboxes())
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
                .key(self.layout.pending_outboxes())
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
        let keys = self.redis.scan_all(&self.layout.outbox_pattern()).await?;
        let mut published = 0;
        for key in keys {
            if self.publish_outbox(&key).await?.is_some() {
                published += 1;
            }
        }
        Ok(published)
    }
}
