//! Following the revocation feed: the cursor, the poll under way, and the memory of recent pages
//! that lets a lookup answered after a revocation be told apart from one answered before.

use super::cache::VerdictCache;
use super::lookup::FeedPage;
use multitokens_core::digest::TokenDigest;

/// State of the revocation feed poller.
#[derive(Clone, Debug, Default)]
pub struct FeedState {
    /// Cursor of the last page applied.
    pub cursor: Option<String>,
    /// When the last page was applied (ms).
    pub last_ok_ms: u64,
    /// The poll under way: its call id and when it started (ms).
    pub call: Option<(u32, u64)>,
    /// Pages applied so far (a lookup remembers the count when it is dispatched).
    pub epoch: u64,
    /// The first page that can vouch for a lookup: pages before it were the first page or a
    /// reset, which carry no list of what was revoked in between.
    pub trusted_from: u64,
    /// Digests revoked by recent pages, with the page that revoked them (bounded).
    recent: std::collections::VecDeque<(u64, TokenDigest)>,
    /// Pages older than this are no longer fully in `recent`.
    recent_from: u64,
    /// The last page was full: poll again at once.
    pub more: bool,
}

/// Most recently revoked digests remembered to check lookups still under way.
pub const RECENT_REVOCATIONS: usize = 20_000;

impl FeedState {
    /// Whether a page applied after `dispatched` (an epoch) revoked `digest`; `None` when that
    /// cannot be told (the lookup started before the feed could vouch for it, or the memory of
    /// revocations no longer reaches back that far).
    pub fn revoked_since(&self, dispatched: u64, digest: &TokenDigest) -> Option<bool> {
        if dispatched < self.trusted_from || dispatched < self.recent_from {
            return None;
        }
        Some(self.recent.iter().rev().take_while(|(epoch, _)| *epoch > dispatched).any(|(_, d)| d == digest))
    }
}

impl FeedState {
    /// Whether a new poll should start now (none under way, or the last one is overdue by twice
    /// the callout timeout, which the host should never let happen).
    pub fn may_poll(&mut self, now: u64, timeout_ms: u64) -> bool {
        match self.call {
            Some((_, started)) if now.saturating_sub(started) <= 2 * timeout_ms => false,
            _ => {
                self.call = None;
                true
            }
        }
    }
}

impl FeedState {
    /// Applies a page to the cache; returns how many cached verdicts were dropped.
    pub fn apply(&mut self, page: FeedPage, now: u64, cache: &mut VerdictCache) -> usize {
        let mut applied = 0;
        self.epoch += 1;
        if page.reset || self.cursor.is_none() {
            applied = cache.len();
            cache.clear();
            self.trusted_from = self.epoch;
        }
        for hex in &page.digests {
            if let Some(d) = TokenDigest::from_hex(hex) {
                if cache.revoke(&d) {
                    applied += 1;
                }
                self.recent.push_back((self.epoch, d));
            }
        }
        while self.recent.len() > RECENT_REVOCATIONS {
            if let Some((epoch, _)) = self.recent.pop_front() {
                self.recent_from = epoch;
            }
        }
        self.more = page.more;
        self.cursor = Some(page.cursor);
        self.last_ok_ms = now;
        self.call = None;
        applied
    }
}
