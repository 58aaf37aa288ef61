//! Device activity: what edges report of a token's use, written beside its record by the ACTIVITY
//! script (never into the sealed record: it cannot change what a token grants), read back by
//! the LIST script with the records.

use super::*;
use multitokens_core::activity::{Activity, ActivityReport};

/// How far ahead of this companion's clock a report may say it was seen (ms); later ones are
/// clamped to now, so an edge with a fast clock cannot pin a "last seen" in the future.
const CLOCK_SLACK_MS: u64 = 60_000;

impl TokenStore {
    /// Writes well-formed reports (the caller checked them), each beside its record if the
    /// record is still live and the report is newer than what is stored; how many were written.
    pub async fn record_activity(&self, reports: &[ActivityReport]) -> Result<usize, StoreError> {
        let mut conn = self.redis.conn().await?;
        let latest = now_ms() + CLOCK_SLACK_MS;
        let mut written = 0;
        for report in reports {
            let (Some(tag), Some(digest)) = (RoutingTag::from_hex(&report.tag), TokenDigest::from_hex(&report.digest))
            else {
                continue;
            };
            let activity = Activity {
                seen_at_ms: report.seen_at_ms.min(latest),
                address: report.address.clone(),
                user_agent: report.user_agent.clone(),
            };
            let call = scripts::activity_call(&self.layout, tag, &digest, &activity);
            let done: i64 = self.timed("activity", self.scripts.invocation(&call).invoke_async(&mut conn)).await?;
            written += usize::from(done == 1);
        }
        Ok(written)
    }
}

impl TokenInfo {
    /// Adds the activity stored beside the record (a value that does not parse is none).
    pub(super) fn with_activity(mut self, stored: Option<&[u8]>) -> Self {
        if let Some(a) = stored.and_then(Activity::parse) {
            self.last_seen = Some(a.seen_at_ms / 1000);
            self.last_address = a.address;
            self.last_user_agent = a.user_agent;
        }
        self
    }
}
