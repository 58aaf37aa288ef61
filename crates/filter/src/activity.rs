//! Device activity as an edge sees it: the first use of a token, and then at most one use per
//! `activity_interval_ms`, becomes a report (when, the client address, the user agent) queued for
//! the next tick, which sends the queue in batches. Bounded: a full memory or queue loses reports
//! (activity shown later or not at all), never a request.

use crate::cache::Stored;
use multitokens_core::activity::{clean_user_agent, client_ip, ActivityReport};
use multitokens_core::digest::TokenDigest;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Most tokens whose last report is remembered.
pub const MAX_TRACKED: usize = 50_000;
/// Most reports waiting for the next tick.
pub const MAX_PENDING: usize = 1024;

/// Hashes a digest by its first eight bytes: digests are HMAC or SHA-256 outputs, already uniform,
/// and only tokens that were found valid are remembered, so nobody can choose colliding ones.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
}

/// What this edge reported lately, and what it will report on the next tick.
#[derive(Debug)]
pub struct ActivityLog {
    interval_ms: u64,
    last: HashMap<TokenDigest, u64, BuildHasherDefault<DigestHasher>>,
    pending: Vec<ActivityReport>,
}

impl ActivityLog {
    /// A log reporting each token at most once per `interval_ms`.
    pub fn new(interval_ms: u64) -> Self {
        ActivityLog { interval_ms, last: HashMap::default(), pending: Vec::new() }
    }

    /// Whether a use of the token stored under `digest` is to be reported now.
    pub fn due(&self, digest: &TokenDigest, now: u64) -> bool {
        self.last.get(digest).is_none_or(|at| now.saturating_sub(*at) >= self.interval_ms)
    }

    /// Notes a use seen at `now` from `address` (as the host reports it) with `user_agent`: queues
    /// its report if one is due and there is room.
    pub fn note(&mut self, stored: Stored, now: u64, address: Option<&[u8]>, user_agent: Option<&[u8]>) {
        if !self.due(&stored.digest, now) || self.pending.len() >= MAX_PENDING {
            return;
        }
        if self.last.len() >= MAX_TRACKED && !self.last.contains_key(&stored.digest) {
            let interval = self.interval_ms;
            self.last.retain(|_, at| now.saturating_sub(*at) < interval);
            if self.last.len() >= MAX_TRACKED {
                return; // every remembered token was reported within the interval: no room
            }
        }
        self.last.insert(stored.digest, now);
        self.pending.push(ActivityReport {
            tag: stored.tag.to_hex(),
            digest: stored.digest.to_hex(),
            seen_at_ms: now,
            address: address.and_then(client_ip),
            user_agent: user_agent.and_then(clean_user_agent),
        });
    }

    /// The reports queued since the last call.
    pub fn take(&mut self) -> Vec<ActivityReport> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitokens_core::token::RoutingTag;

    fn stored(n: u8) -> Stored {
        Stored { tag: RoutingTag([1, 2, 3, 4]), digest: TokenDigest([n; 32]) }
    }

    #[test]
    fn a_token_is_reported_on_first_use_then_once_per_interval() {
        let mut log = ActivityLog::new(300_000);
        log.note(stored(1), 1_000, Some(b"192.0.2.7:40000"), Some(b"curl/8\r\nX: y"));
        log.note(stored(1), 2_000, Some(b"192.0.2.8:1"), None);
        let reports = log.take();
        assert_eq!(reports.len(), 1, "{reports:?}");
        let r = &reports[0];
        assert_eq!((r.tag.as_str(), r.seen_at_ms), ("01020304", 1_000));
        assert_eq!((r.address.as_deref(), r.user_agent.as_deref()), (Some("192.0.2.7"), Some("curl/8 X: y")));
        assert!(log.take().is_empty(), "each report is taken once");
        log.note(stored(1), 300_999, None, None);
        assert!(log.take().is_empty(), "within the interval");
        log.note(stored(2), 300_999, None, None);
        log.note(stored(1), 301_000, Some(b"garbage"), None);
        let again = log.take();
        assert_eq!(again.len(), 2);
        assert_eq!((again[1].seen_at_ms, again[1].address.as_deref()), (301_000, None));
    }

    #[test]
    fn memory_and_queue_are_bounded() {
        let mut log = ActivityLog::new(1_000);
        for i in 0..(MAX_PENDING + 10) {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&(i as u64).to_le_bytes());
            log.note(Stored { tag: RoutingTag([0; 4]), digest: TokenDigest(digest) }, 5, None, None);
        }
        assert_eq!(log.take().len(), MAX_PENDING, "a full queue drops reports");
        let last = Stored { tag: RoutingTag([0; 4]), digest: TokenDigest([9; 32]) };
        log.note(last, 6, None, None);
        assert_eq!(log.take().len(), 1, "an emptied queue takes reports again");
    }
}
