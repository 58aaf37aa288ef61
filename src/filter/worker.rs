//! The per-VM state every request shares: configuration, verdict cache, revocation feed,
//! sliding refreshes due, the timer's beat and the throttle.

use super::cache::VerdictCache;
use super::config::Compiled;
use super::feed::FeedState;
use super::lookup::{FeedPage, LookupRequest};
use super::throttle::FailureThrottle;
use std::rc::Rc;

/// Per-VM (per worker) state shared by all requests.
#[derive(Debug)]
pub struct Worker {
    /// The compiled configuration (shared, so a request can hold it while changing the worker).
    pub compiled: Rc<Compiled>,
    /// The verdict cache.
    pub cache: VerdictCache,
    /// Revocation feed poller.
    pub feed: FeedState,
    /// Tokens due for a sliding refresh, sent on the next tick.
    pub refresh_queue: Vec<LookupRequest>,
    /// When the timer last ticked (ms). The request path reads the host's clock itself, so a
    /// tick that stops can never freeze time for cached verdicts.
    pub last_tick_ms: u64,
    /// Refused tokens per client, when throttling is on.
    pub throttle: Option<FailureThrottle>,
}

/// Most refreshes waiting for the next tick.
pub const MAX_REFRESH_QUEUE: usize = 1024;

impl Worker {
    /// State for a freshly configured VM.
    pub fn new(compiled: Compiled) -> Self {
        let cache = VerdictCache::new(compiled.config.cache.max_entries, compiled.config.cache.max_negative_entries);
        let throttle = compiled.config.throttle.clone().map(FailureThrottle::new);
        Worker { compiled: Rc::new(compiled), cache, feed: FeedState::default(), refresh_queue: Vec::new(), last_tick_ms: 0, throttle }
    }

    /// The tick period.
    pub fn tick_ms(&self) -> u64 {
        match self.compiled.config.revocation_poll_ms {
            0 => 1000,
            poll => poll,
        }
    }

    /// Notes that the timer ticked.
    pub fn record_tick(&mut self, now: u64) {
        self.last_tick_ms = now;
    }

    /// Whether the timer has missed its beat: no tick for two periods plus the callout timeout.
    /// The tick drives the revocation feed, so while it is overdue no cached positive is trusted.
    pub fn tick_overdue(&self, now: u64) -> bool {
        now.saturating_sub(self.last_tick_ms) > 2 * self.tick_ms() + self.compiled.transport.timeout_ms()
    }

    /// Positive verdicts are served from the cache only while the revocation feed is followed:
    /// a page applied within three poll intervals (plus the callout timeout).
    pub fn feed_is_current(&self, now: u64) -> bool {
        let c = &self.compiled.config;
        c.revocation_poll_ms > 0
            && self.feed.cursor.is_some()
            && now.saturating_sub(self.feed.last_ok_ms) <= 3 * c.revocation_poll_ms + self.compiled.transport.timeout_ms()
    }

    /// Applies a feed page; returns how many cached verdicts were dropped.
    ///
    /// The first page after the VM starts, and a page saying entries were lost, drop every
    /// cached verdict: nothing cached before can be checked against what was revoked meanwhile.
    pub fn apply_feed(&mut self, page: FeedPage, now: u64) -> usize {
        self.feed.apply(page, now, &mut self.cache)
    }
}
