//! The audit trail: each issue, revocation and re-keying written to a capped stream, and read back.

use super::*;

impl TokenStore {
    /// Appends an event to the audit trail. The mutation it records has committed: a failure to
    /// append is logged, never the operation's failure.
    pub(super) async fn audit(
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
            Event::Tampered | Event::Suspend | Event::Resume => {} // tampered: counted where refused
            Event::Revoke | Event::RevokeAll | Event::RevokeOthers | Event::Evict => {
                self.metrics.revoked.get_or_create(&HowLabels { how: event.as_str() }).inc_by(ids.len() as u64);
            }
        }
        let fields = audit::fields(event, user, ids, device, first, origin);
        let appended: Result<String, StoreError> = async {
            let mut conn = self.redis.conn().await?;
            let mut xadd = redis::cmd("XADD");
            xadd.arg(self.layout.audit()).arg("MAXLEN").arg("~").arg(AUDIT_MAX_LEN).arg("*").arg(&fields);
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
            .arg(self.layout.audit())
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
        let reply: Option<StreamReadReply> = conn.xread_options(&[self.layout.audit()], &[cursor], &options).await?;
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
}
