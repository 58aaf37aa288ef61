//! The table of edges (filter VMs following the feed) companions share in Redis.

use super::*;

impl TokenStore {
    /// Writes edges' states (JSON) into the shared edge hash.
    pub async fn write_edges(&self, entries: &[(String, String)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.redis.conn().await?;
        // HSET with several pairs (HMSET is deprecated, and not in the companion's ACL)
        let _: i64 = redis::cmd("HSET").arg(self.layout.edges()).arg(entries).query_async(&mut conn).await?;
        Ok(())
    }

    /// Every edge's state in the shared edge hash.
    pub async fn read_edges(&self) -> Result<std::collections::HashMap<String, crate::edges::EdgeState>, StoreError> {
        let mut conn = self.redis.conn().await?;
        let raw: std::collections::HashMap<String, String> = conn.hgetall(self.layout.edges()).await?;
        Ok(raw.into_iter().filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|s| (k, s))).collect())
    }

    /// Removes edges not due since `before_ms` from the shared hash.
    pub async fn forget_edges(&self, before_ms: u64) -> Result<(), StoreError> {
        let stale: Vec<String> =
            self.read_edges().await?.into_iter().filter(|(_, s)| s.due_ms < before_ms).map(|(k, _)| k).collect();
        if !stale.is_empty() {
            let mut conn = self.redis.conn().await?;
            let _: () = conn.hdel(self.layout.edges(), stale).await?;
        }
        Ok(())
    }
}
