//! The per-worker verdict cache: bounded (oldest entries evicted first), keyed by the token text
//! so a hit costs one hash lookup and no hashing or parsing, with a second index by digest so the
//! revocation feed can drop entries. A positive entry never outlives the token's remaining TTL.

use super::identity::Identity;
use crate::core::digest::TokenDigest;
use crate::core::token::RoutingTag;
use std::collections::{HashMap, VecDeque};

/// A cached verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    /// Valid when checked.
    Valid(Identity),
    /// Not valid (unknown, revoked or expired) when checked.
    Invalid,
}

/// One cache entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The token's routing tag (for sliding refreshes).
    pub tag: RoutingTag,
    /// The token's digest (for revocation).
    pub digest: TokenDigest,
    /// The verdict.
    pub verdict: Cached,
    /// Served without asking until then (ms).
    pub fresh_until: u64,
    /// With `allow_cached`, still usable when the store is down until then (ms).
    pub usable_until: u64,
    /// Last sliding refresh sent for this token (ms).
    pub refreshed_at: u64,
}

/// One kind of verdict's share of the cache: its insertion order and its bound. Positives and
/// negatives have separate bounds, so a flood of unknown tokens evicts only other negatives.
#[derive(Debug, Default)]
struct Lane {
    order: VecDeque<Box<str>>,
    len: usize,
    max: usize,
}

/// The bounded verdict cache.
#[derive(Debug, Default)]
pub struct VerdictCache {
    entries: HashMap<Box<str>, Entry>,
    by_digest: HashMap<TokenDigest, Box<str>>,
    positive: Lane,
    negative: Lane,
}

fn is_positive(entry: &Entry) -> bool {
    matches!(entry.verdict, Cached::Valid(_))
}

impl VerdictCache {
    /// A cache holding at most `max_positive` valid and `max_negative` unknown verdicts
    /// (`max_positive` 0: nothing is cached).
    pub fn new(max_positive: usize, max_negative: usize) -> Self {
        let max_negative = if max_positive == 0 { 0 } else { max_negative };
        VerdictCache {
            positive: Lane { max: max_positive, ..Lane::default() },
            negative: Lane { max: max_negative, ..Lane::default() },
            ..Default::default()
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a token, if any (fresh or not: the caller decides).
    pub fn get(&self, token: &str) -> Option<&Entry> {
        self.entries.get(token)
    }

    /// The entry of a token, mutable.
    pub fn get_mut(&mut self, token: &str) -> Option<&mut Entry> {
        self.entries.get_mut(token)
    }

    /// Stores an entry, evicting the oldest ones of its kind beyond that kind's bound.
    pub fn insert(&mut self, token: &str, entry: Entry) {
        self.remove(token);
        let positive = is_positive(&entry);
        let lane = if positive { &mut self.positive } else { &mut self.negative };
        if lane.max == 0 {
            return;
        }
        while lane.len >= lane.max {
            let Some(oldest) = lane.order.pop_front() else { break };
            // a key may linger from an entry since removed or replaced by the other kind
            if self.entries.get(&oldest).is_some_and(|e| is_positive(e) == positive) {
                if let Some(e) = self.entries.remove(&oldest) {
                    self.by_digest.remove(&e.digest);
                }
                lane.len -= 1;
            }
        }
        lane.order.push_back(token.into());
        lane.len += 1;
        self.by_digest.insert(entry.digest, token.into());
        self.entries.insert(token.into(), entry);
        // lingering keys: compact before the order grows past twice the bound
        if lane.order.len() > 2 * lane.max {
            let entries = &self.entries;
            lane.order.retain(|k| entries.get(k).is_some_and(|e| is_positive(e) == positive));
        }
    }

    /// Drops the entry of a token.
    pub fn remove(&mut self, token: &str) {
        if let Some(e) = self.entries.remove(token) {
            self.forget(&e);
        }
    }

    /// Accounts for an entry taken out of `entries`.
    fn forget(&mut self, e: &Entry) {
        self.by_digest.remove(&e.digest);
        let lane = if is_positive(e) { &mut self.positive } else { &mut self.negative };
        lane.len = lane.len.saturating_sub(1);
    }

    /// Drops the entry of a revoked digest; true if there was one.
    pub fn revoke(&mut self, digest: &TokenDigest) -> bool {
        match self.by_digest.get(digest).cloned() {
            Some(token) => {
                self.remove(&token);
                true
            }
            None => false,
        }
    }

    /// Drops everything (the revocation feed lost entries).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_digest.clear();
        for lane in [&mut self.positive, &mut self.negative] {
            lane.order.clear();
            lane.len = 0;
        }
    }

    /// Drops entries that are neither fresh nor usable any more.
    pub fn purge_expired(&mut self, now: u64) {
        let expired: Vec<Box<str>> =
            self.entries.iter().filter(|(_, e)| e.usable_until <= now && e.fresh_until <= now).map(|(k, _)| k.clone()).collect();
        for token in expired {
            self.remove(&token);
        }
        let entries = &self.entries;
        self.positive.order.retain(|k| entries.get(k).is_some_and(is_positive));
        self.negative.order.retain(|k| entries.get(k).is_some_and(|e| !is_positive(e)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::digest::TokenHasher;

    fn entry(token: &str) -> Entry {
        Entry {
            tag: RoutingTag([0; 4]),
            digest: TokenHasher::new(None).digest(token),
            verdict: Cached::Invalid,
            fresh_until: 100,
            usable_until: 100,
            refreshed_at: 0,
        }
    }

    fn valid(token: &str) -> Entry {
        Entry { verdict: Cached::Valid(Identity::new("u".into(), "d".into(), vec![], "i".into())), ..entry(token) }
    }

    #[test]
    fn stays_bounded_under_a_flood() {
        let mut c = VerdictCache::new(100, 100);
        for i in 0..10_000 {
            let t = format!("t{i}");
            c.insert(&t, entry(&t));
            if i % 3 == 0 {
                c.remove(&t);
            }
        }
        assert!(c.len() <= 100);
        assert!(c.negative.order.len() <= 200);
        assert!(c.by_digest.len() <= 100);
        assert!(c.get("t9998").is_some(), "newest kept");
        assert!(c.get("t1").is_none(), "oldest evicted");
    }

    #[test]
    fn a_flood_of_unknown_tokens_never_evicts_a_valid_one() {
        let mut c = VerdictCache::new(1000, 50);
        for i in 0..500 {
            let t = format!("v{i}");
            c.insert(&t, valid(&t));
        }
        for i in 0..100_000 {
            let t = format!("forged{i}");
            c.insert(&t, entry(&t));
        }
        assert_eq!(c.len(), 550);
        assert!((0..500).all(|i| c.get(&format!("v{i}")).is_some()), "every valid verdict kept");
        // positives still evict only positives, oldest first
        for i in 500..1500 {
            let t = format!("v{i}");
            c.insert(&t, valid(&t));
        }
        assert_eq!((c.positive.len, c.negative.len), (1000, 50));
        assert!(c.get("v0").is_none() && c.get("v1499").is_some());
        // a verdict that changes kind moves lanes
        c.insert("v1499", entry("v1499"));
        assert_eq!((c.positive.len, c.negative.len), (999, 50));
    }

    #[test]
    fn revokes_by_digest_and_purges() {
        let mut c = VerdictCache::new(10, 10);
        c.insert("a", entry("a"));
        c.insert("b", entry("b"));
        assert!(c.revoke(&TokenHasher::new(None).digest("a")));
        assert!(c.get("a").is_none() && c.get("b").is_some());
        assert!(!c.revoke(&TokenHasher::new(None).digest("a")));
        c.purge_expired(100);
        assert!(c.is_empty());
        let mut off = VerdictCache::new(0, 10);
        off.insert("a", entry("a"));
        assert!(off.is_empty());
    }
}
