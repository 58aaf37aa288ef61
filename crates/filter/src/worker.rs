//! The per-VM state every request shares: configuration, verdict cache, revocation feed,
//! sliding refreshes due, the timer's beat and the throttle.

use super::activity::ActivityLog;
use super::cache::VerdictCache;
use super::coalesce::InFlight;
use super::config::Compiled;
use super::feed::FeedState;
use super::lookup::{CalloutProblem, FeedPage, LookupRequest};
use super::throttle::FailureThrottle;
use multitokens_core::activity::ActivityReport;
use std::sync::Arc;

/// What a feed poll's answer did ([`Worker::on_feed_answer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedAnswered {
    /// Cached verdicts dropped.
    pub applied: usize,
    /// Why there was no page (the next tick polls again).
    pub problem: Option<CalloutProblem>,
    /// The next poll starts now, not on the next tick.
    pub poll_again: bool,
}

/// Per-VM (per worker) state shared by all requests.
#[derive(Debug)]
pub struct Worker {
    /// The compiled configuration (shared, so a request can hold it while changing the worker).
    pub(crate) compiled: Arc<Compiled>,
    /// The verdict cache.
    pub(crate) cache: VerdictCache,
    /// Revocation feed poller.
    pub(crate) feed: FeedState,
    /// Lookups under way that requests with the same token follow.
    pub(crate) in_flight: InFlight,
    /// Tokens due for a sliding refresh, sent on the next tick.
    pub(crate) refresh_queue: Vec<LookupRequest>,
    /// When the timer last ticked (ms). The request path reads the host's clock itself, so a
    /// tick that stops can never freeze time for cached verdicts.
    pub(crate) last_tick_ms: u64,
    /// Refused tokens per client, when throttling is on.
    pub(crate) throttle: Option<FailureThrottle>,
    /// Device activity reported and due, when it is on.
    pub(crate) activity: Option<ActivityLog>,
    /// DPoP proof ids seen within their window.
    pub(crate) seen_proofs: multitokens_core::dpop::SeenProofs,
    /// When expired entries were last purged (ms).
    last_purge_ms: u64,
    /// This VM's id on the feed: the companion counts what each edge has applied.
    pub(crate) edge_id: String,
    /// The latest time a callback ran at (ms), to notice the wall clock stepping back.
    clock_high_ms: u64,
}

/// How far the host's clock may go back before it counts as a step (ms): smaller steps extend a
/// cached verdict's freshness by at most this much.
pub const CLOCK_STEP_MS: u64 = 1000;

/// A random id for this VM (16 hex digits); the clock if the host gives no randomness.
fn new_edge_id() -> String {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => hex::encode(bytes),
        Err(_) => format!(
            "t{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ),
    }
}

/// How often the timer purges expired cache entries (ms).
pub const PURGE_EVERY_MS: u64 = 10_000;

/// What the timer asks the shell to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TickWork {
    /// Start a revocation feed poll now.
    pub poll_feed: bool,
    /// Sliding refreshes to send.
    pub refreshes: Vec<LookupRequest>,
    /// Requests that followed a lookup never answered: they look up again.
    pub look_up_again: Vec<u32>,
    /// Device activity reports to send.
    pub activity: Vec<ActivityReport>,
}

/// Most refreshes waiting for the next tick.
pub const MAX_REFRESH_QUEUE: usize = 1024;

impl Worker {
    /// State for a freshly configured VM.
    pub fn new(compiled: Compiled) -> Self {
        let cache = VerdictCache::new(
            &compiled.config.prefix,
            compiled.config.cache.max_entries,
            compiled.config.cache.max_negative_entries,
        );
        let throttle = compiled.config.throttle.clone().map(FailureThrottle::new);
        let interval = compiled.config.activity_interval_ms;
        let activity = (interval > 0).then(|| ActivityLog::new(interval));
        Worker {
            compiled: Arc::new(compiled),
            cache,
            feed: FeedState::default(),
            in_flight: InFlight::default(),
            refresh_queue: Vec::new(),
            last_tick_ms: 0,
            throttle,
            activity,
            seen_proofs: Default::default(),
            last_purge_ms: 0,
            edge_id: new_edge_id(),
            clock_high_ms: 0,
        }
    }

    /// The verdict cache (read-only: the flow and the feed change it).
    pub fn cache(&self) -> &VerdictCache {
        &self.cache
    }

    /// The tick period.
    pub fn tick_ms(&self) -> u64 {
        match self.compiled.poll_ms() {
            0 => 1000,
            poll => poll,
        }
    }

    /// This VM's id on the feed.
    pub fn edge_id(&self) -> &str {
        &self.edge_id
    }

    /// The timer ticked: notes it, purges expired entries now and then, and says whether to poll
    /// the feed and which sliding refreshes to send.
    pub fn on_tick(&mut self, now: u64) -> TickWork {
        self.observe_clock(now);
        self.record_tick(now);
        if now.saturating_sub(self.last_purge_ms) > PURGE_EVERY_MS {
            self.cache.purge_expired(now);
            self.last_purge_ms = now;
        }
        let look_up_again = self.in_flight.expire(now, self.max_lookup_wait_ms());
        TickWork {
            poll_feed: self.feed_poll_due(now),
            refreshes: std::mem::take(&mut self.refresh_queue),
            look_up_again,
            activity: self.activity.as_mut().map(ActivityLog::take).unwrap_or_default(),
        }
    }

    /// How long requests wait for another request's lookup: its timeout and a second more (the
    /// host answers every callout, with a timeout at the latest).
    pub fn max_lookup_wait_ms(&self) -> u64 {
        self.compiled.transport.timeout_ms().saturating_add(1000)
    }

    /// Whether a feed poll should start now: polling is on and none is under way (or the one
    /// under way is overdue by twice its timeout, which the host should never let happen).
    pub fn feed_poll_due(&mut self, now: u64) -> bool {
        self.compiled.poll_ms() > 0 && self.feed.may_poll(now, self.compiled.feed_timeout_ms())
    }

    /// Whether the next poll starts now rather than on the next tick, after a page was applied
    /// at `now`: it was the VM's first page (the next poll is the first to be held, and
    /// acknowledges it), the page was full, or revoked something (the next poll acknowledges it),
    /// or a long poll was held until its wait ran out. An empty page answered at once (a
    /// companion that does not hold polls) waits for the tick, so polls never spin.
    pub fn poll_again_now(&self, page_had_digests: bool, started: u64, now: u64) -> bool {
        let wait = self.compiled.feed_wait_ms();
        self.feed.epoch == 1
            || self.feed.more
            || (wait > 0 && (page_had_digests || now.saturating_sub(started) >= wait / 2))
    }

    /// A feed poll was dispatched.
    pub fn feed_poll_started(&mut self, call: u32, now: u64) {
        self.feed.call = Some((call, now));
    }

    /// A feed poll got no page (the next tick tries again).
    pub fn feed_poll_failed(&mut self) {
        self.feed.call = None;
    }

    /// Notes the time a callback runs at; true when the clock stepped back. The host's clock is
    /// the wall clock (proxy-wasm has no other for the request path): after a step back, ages
    /// measured from earlier times come out too young, so cached verdicts would stay fresh and the
    /// feed would look current by the size of the step. So a step drops every cached verdict, and
    /// the feed counts as not current until its next page.
    pub fn observe_clock(&mut self, now: u64) -> bool {
        if now.saturating_add(CLOCK_STEP_MS) < self.clock_high_ms {
            self.cache.clear();
            self.feed.last_ok_ms = 0;
            if let Some((call, _)) = self.feed.call {
                self.feed.call = Some((call, now));
            }
            self.last_tick_ms = now;
            self.last_purge_ms = now;
            self.clock_high_ms = now;
            return true;
        }
        self.clock_high_ms = self.clock_high_ms.max(now);
        false
    }

    /// The compiled configuration.
    pub fn compiled(&self) -> &Arc<Compiled> {
        &self.compiled
    }

    /// The revocation feed's cursor: where the next poll starts.
    pub fn feed_cursor(&self) -> Option<&str> {
        self.feed.cursor.as_deref()
    }

    /// The feed poll under way: its call id and when it started (ms).
    pub fn feed_call(&self) -> Option<(u32, u64)> {
        self.feed.call
    }

    /// The last feed page was full: the next one is due at once.
    pub fn feed_has_more(&self) -> bool {
        self.feed.more
    }

    /// How many verdicts are cached.
    pub fn cached_verdicts(&self) -> usize {
        self.cache.len()
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
    /// a page applied within three poll intervals (plus the callout timeout), or a long poll
    /// under way that started right after a page and has not outlived its timeout (the
    /// companion answers it as soon as something is revoked).
    pub fn feed_is_current(&self, now: u64) -> bool {
        let poll = self.compiled.poll_ms();
        let bound = 3 * poll + self.compiled.transport.timeout_ms();
        let recent_page = now.saturating_sub(self.feed.last_ok_ms) <= bound;
        let held = self.compiled.feed_wait_ms() > 0
            && self.feed.call.is_some_and(|(_, started)| {
                started.saturating_sub(self.feed.last_ok_ms) <= bound
                    && now.saturating_sub(started) <= self.compiled.feed_timeout_ms()
            });
        poll > 0 && self.feed.cursor.is_some() && (recent_page || held)
    }

    /// A feed poll's answer arrived (any shell, any transport): `None` when it is not the answer
    /// to the poll under way (a stale one); else what was applied, the problem if there was no
    /// page, and whether the next poll starts now ([`Worker::poll_again_now`], when one is due).
    pub fn on_feed_answer(
        &mut self,
        call: u32,
        page: Result<FeedPage, CalloutProblem>,
        now: u64,
    ) -> Option<FeedAnswered> {
        let (under_way, started) = self.feed.call?;
        if under_way != call {
            return None;
        }
        Some(match page {
            Ok(page) => {
                let revoked_something = !page.digests.is_empty() || page.reset;
                let applied = self.apply_feed(page, now);
                let poll_again = self.poll_again_now(revoked_something, started, now) && self.feed_poll_due(now);
                FeedAnswered { applied, problem: None, poll_again }
            }
            Err(problem) => {
                self.feed_poll_failed();
                FeedAnswered { applied: 0, problem: Some(problem), poll_again: false }
            }
        })
    }

    /// Applies a feed page; returns how many cached verdicts were dropped.
    ///
    /// The first page after the VM starts, and a page saying entries were lost, drop every
    /// cached verdict: nothing cached before can be checked against what was revoked meanwhile.
    pub fn apply_feed(&mut self, page: FeedPage, now: u64) -> usize {
        self.feed.apply(page, now, &mut self.cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitokens_core::digest::TokenHasher;
    use multitokens_core::token::RoutingTag;

    fn worker(extra: &str) -> Worker {
        let json = format!(r#"{{"companion": {{"cluster": "c", "api_key": "k", "timeout_ms": 500}} {extra}}}"#);
        Worker::new(Compiled::parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn a_feed_answer_is_applied_once_and_says_whether_to_poll_again() {
        let mut w = worker("");
        w.feed_poll_started(7, 1_000);
        let page = |digests: Vec<String>| FeedPage { cursor: "1-0".into(), digests, reset: false, more: false };
        assert_eq!(w.on_feed_answer(6, Ok(page(vec![])), 1_010), None, "not the poll under way");
        let first = w.on_feed_answer(7, Ok(page(vec![])), 1_010).unwrap();
        assert!(first.poll_again && first.problem.is_none(), "the first page: the next poll acknowledges it");
        assert_eq!(w.on_feed_answer(7, Ok(page(vec![])), 1_020), None, "answered already");
        w.feed_poll_started(8, 2_000);
        let failed = w.on_feed_answer(8, Err(CalloutProblem::NoResponse), 2_010).unwrap();
        assert_eq!((failed.problem, failed.poll_again), (Some(CalloutProblem::NoResponse), false));
        assert!(w.feed_poll_due(2_020), "a failed poll leaves the next one to the tick");
    }

    #[test]
    fn a_clock_stepping_back_never_extends_trust() {
        let mut w = worker("");
        w.on_tick(10_000_000);
        w.apply_feed(FeedPage { cursor: "1-0".into(), digests: vec![], reset: false, more: false }, 10_000_000);
        assert!(w.feed_is_current(10_000_500));
        let identity = crate::identity::Identity::new("u".into(), "d".into(), vec![], "i".into()).unwrap();
        let token = multitokens_core::token::generate("mt", "u").unwrap();
        let stored =
            crate::cache::Stored { digest: TokenHasher::new(None).digest(&token), tag: RoutingTag::for_user("u") };
        w.cache.insert_valid(
            &token,
            stored,
            &identity,
            crate::cache::Lifetime { fresh_until: 10_030_000, usable_until: 10_030_000, refreshed_at: 10_000_000 },
            10_000_000,
        );
        assert!(!w.observe_clock(9_999_500), "jitter under a second is no step");
        assert_eq!(w.cache.len(), 1);
        // the wall clock goes back an hour: nothing measured before counts
        assert!(w.observe_clock(10_000_000 - 3_600_000 + 10));
        assert!(w.cache.is_empty(), "cached verdicts dropped");
        assert!(!w.feed_is_current(10_000_000 - 3_600_000 + 20), "the feed is not current until its next page");
        assert!(!w.tick_overdue(10_000_000 - 3_600_000 + 20));
        w.apply_feed(
            FeedPage { cursor: "2-0".into(), digests: vec![], reset: false, more: false },
            10_000_000 - 3_600_000 + 30,
        );
        assert!(w.feed_is_current(10_000_000 - 3_600_000 + 40));
    }

    #[test]
    fn the_tick_polls_the_feed_once_at_a_time_and_drains_refreshes() {
        let mut w = worker("");
        assert_eq!(
            w.on_tick(1000),
            TickWork { poll_feed: true, refreshes: vec![], look_up_again: vec![], activity: vec![] }
        );
        w.feed_poll_started(7, 1000);
        assert!(!w.on_tick(2000).poll_feed, "one poll under way");
        assert!(!w.on_tick(12_000).poll_feed, "a long poll is held up to 5 s (+ the 500 ms timeout)");
        assert!(w.on_tick(12_001).poll_feed, "overdue by twice its timeout: poll again");
        w.feed_poll_started(8, 2001);
        w.feed_poll_failed();
        assert!(w.on_tick(2100).poll_feed, "a failed poll is retried on the next tick");
        assert_eq!(w.last_tick_ms, 2100);
        let request = LookupRequest {
            tag: RoutingTag([1; 4]),
            digest: TokenHasher::new(None).digest("t"),
            previous: vec![],
            key_id: None,
            refresh_ttl: Some(60),
        };
        w.refresh_queue.push(request.clone());
        assert_eq!(w.on_tick(2200).refreshes, vec![request]);
        assert!(w.on_tick(2300).refreshes.is_empty(), "each refresh is sent once");
        assert!(!worker(r#", "revocation_poll_ms": 0"#).on_tick(1000).poll_feed, "polling off");
    }

    #[test]
    fn a_long_poll_keeps_the_feed_current_and_polls_again_at_once_after_a_page() {
        let mut w = worker("");
        w.apply_feed(FeedPage { cursor: "1-0".into(), digests: vec![], reset: false, more: false }, 990);
        assert!(w.poll_again_now(false, 980, 990), "after the first page: poll again now (it is the first to be held)");
        w.apply_feed(FeedPage { cursor: "1-0".into(), digests: vec![], reset: false, more: false }, 1000);
        w.feed_poll_started(1, 1000);
        assert!(w.feed_is_current(5_000), "held by the companion, not stale");
        assert!(w.feed_is_current(6_500) && !w.feed_is_current(6_501), "not past the poll's timeout");
        assert!(w.poll_again_now(true, 1000, 1010), "a page that revoked something: acknowledge it now");
        assert!(w.poll_again_now(false, 1000, 3500), "held until its wait ran out: poll again now");
        assert!(!w.poll_again_now(false, 1000, 1010), "an empty page at once: wait for the tick, never spin");
        let mut plain = worker(r#", "revocation_wait_ms": 0"#);
        plain.apply_feed(FeedPage { cursor: "1-0".into(), digests: vec![], reset: false, more: false }, 1000);
        assert!(plain.poll_again_now(false, 1000, 1010), "after the first page: poll again now");
        plain.apply_feed(FeedPage { cursor: "1-0".into(), digests: vec![], reset: false, more: false }, 1010);
        plain.feed_poll_started(1, 1000);
        assert!(!plain.feed_is_current(5_000), "timer polling: three periods and the timeout at most");
        assert!(!plain.poll_again_now(true, 1000, 1010));
    }

    #[test]
    fn the_tick_purges_expired_entries_every_ten_seconds() {
        let mut w = worker("");
        let t = multitokens_core::token::generate("mt", "alice").unwrap();
        w.cache.insert_invalid(&t, 20_000, 0);
        w.on_tick(11_000); // purges; nothing has expired
        assert_eq!(w.cache.len(), 1);
        w.on_tick(21_000);
        assert_eq!(w.cache.len(), 1, "expired, but purged at most every ten seconds");
        w.on_tick(21_001);
        assert!(w.cache.is_empty());
    }
}
