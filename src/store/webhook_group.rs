//! The audit stream read as a Redis consumer group per webhook endpoint: each event is handed to
//! one companion, stays pending until it is acknowledged (delivered, or given up on), and the
//! events a dead companion held are claimed by another after a while. At least once, none lost.

use super::trail::{read_reply_entries, stream_entries, AuditEntry};
use super::*;

impl TokenStore {
    /// Creates the consumer group `group` on the audit stream, starting at its end (events before
    /// the first start with a webhook are not sent); an existing group is kept where it is.
    pub async fn create_webhook_group(&self, group: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.conn().await?;
        let created: Result<Value, redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.layout.audit())
            .arg(group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Events of `group` for `consumer`, at most `count`: `pending` the ones it was handed and has
    /// not acknowledged (after a restart), else new ones, waiting at most `block` on `conn` (a
    /// dedicated connection).
    pub async fn read_webhook_group(
        &self,
        conn: &mut Conn,
        group: &str,
        consumer: &str,
        pending: bool,
        count: usize,
        block: Duration,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(count);
        if !pending {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(self.layout.audit()).arg(if pending { "0" } else { ">" });
        let reply: Value = cmd.query_async(conn).await?;
        Ok(read_reply_entries(&reply))
    }

    /// Takes over events of `group` that another consumer was handed more than `idle` ago and
    /// never acknowledged (a companion that died mid-delivery), at most `count`.
    pub async fn claim_webhook_group(
        &self,
        group: &str,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conn = self.redis.conn().await?;
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(self.layout.audit())
            .arg(group)
            .arg(consumer)
            .arg(idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        match &reply {
            Value::Array(parts) => Ok(parts.get(1).map(stream_entries).unwrap_or_default()),
            _ => Err(corrupt("XAUTOCLAIM")),
        }
    }

    /// Acknowledges an event of `group`: it will not be handed out again.
    pub async fn ack_webhook_group(&self, group: &str, id: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.conn().await?;
        let _: i64 = redis::cmd("XACK").arg(self.layout.audit()).arg(group).arg(id).query_async(&mut conn).await?;
        Ok(())
    }

    /// Keeps a pending event of `group` with `consumer` (its idle time starts again), so that no
    /// other companion takes over an event this one is still retrying.
    pub async fn keep_webhook_entry(&self, group: &str, consumer: &str, id: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.conn().await?;
        let _: Value = redis::cmd("XCLAIM")
            .arg(self.layout.audit())
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
