//! The audit trail: each issue, revocation and re-keying written to a capped stream, and read back.

use super::*;
use std::collections::HashMap;

/// An audit stream entry: its id, and the event (`None`: not an audit event, or trimmed from the
/// stream while pending in a consumer group).
pub type AuditEntry = (String, Option<AuditRecord>);

/// Reads stream entries, `[id, [field, value, …] | nil]` (XRANGE, XAUTOCLAIM).
pub(super) fn stream_entries(items: &Value) -> Vec<AuditEntry> {
    let Value::Array(items) = items else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else { return None };
            let id = as_text(pair.first()?)?;
            let fields: Option<HashMap<String, String>> = match pair.get(1) {
                Some(Value::Array(kv)) => Some(
                    kv.chunks(2)
                        .filter_map(|c| match c {
                            [k, v] => Some((as_text(k)?, as_text(v)?)),
                            _ => None,
                        })
                        .collect(),
                ),
                Some(Value::Map(kv)) => Some(kv.iter().filter_map(|(k, v)| Some((as_text(k)?, as_text(v)?))).collect()),
                _ => None,
            };
            let record = fields.and_then(|f| audit::record(&id, &f));
            Some((id, record))
        })
        .collect()
}

/// Reads an XREAD or XREADGROUP reply (per stream its name and entries; nil when none came).
pub(super) fn read_reply_entries(reply: &Value) -> Vec<AuditEntry> {
    let streams: Vec<&Value> = match reply {
        Value::Array(streams) => {
            streams.iter().filter_map(|s| if let Value::Array(kv) = s { kv.get(1) } else { None }).collect()
        }
        Value::Map(streams) => streams.iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    streams.into_iter().flat_map(stream_entries).collect()
}

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
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.layout.audit())
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(limit.saturating_mul(10).max(1))
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        let mut last = None;
        for (id, record) in stream_entries(&reply) {
            last = Some(id);
            if let Some(r) = record {
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
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.layout.audit())
            .arg(cursor)
            .query_async(conn)
            .await?;
        Ok(read_reply_entries(&reply).into_iter().filter_map(|(_, record)| record).collect())
    }
}
