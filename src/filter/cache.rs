//! The per-worker verdict cache: bounded (oldest entries evicted first), keyed by the token text
//! so a hit costs one hash lookup and no hashing or parsing, with a second index by digest so the
//! revocation feed can drop entries. A positive entry never outlives the token's remaining TTL.

use crate::core::digest::TokenDigest;
use crate::core::token::RoutingTag;
use std::collections::{HashMap, VecDeque};

/// Who a valid token belongs to, as injected upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub user: String,
    /// Device label.
    pub device: String,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Scopes joined by spaces (the header value), computed once.
    pub scopes_header: String,
    /// Public token id.
    pub id: String,
}

impl Identity {
    /// Builds an identity, joining the scopes once.
    pub fn new(user: String, device: String, scopes: Vec<String>, id: String) -> Self {
        let scopes_header = scopes.join(" ");
        Identity { user, device, scopes, scopes_header, id }
    }
}

/// A cached verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    /// Valid when checked.
    Valid(Identity),
    /// Unknown, revoked or expired when checked.
    Unknown,
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

/// The bounded verdict cache.
#[derive(Debug, Default)]
pub struct VerdictCache {
    entries: HashMap<Box<str>, Entry>,
    by_digest: HashMap<TokenDigest, Box<str>>,
    order: VecDeque<Box<str>>,
    max_entries: usize,
}

impl VerdictCache {
    /// A cache holding at most `max_entries` (0: nothing is cached).
    pub fn new(max_entries: usize) -> Self {
        VerdictCache { max_entries, ..Default::default() }
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

    /// Stores an entry, evicting the oldest ones beyond the bound.
    pub fn insert(&mut self, token: &str, entry: Entry) {
        if self.max_entries == 0 {
            return;
        }
        if let Some(old) = self.entries.get(token) {
            self.by_digest.remove(&old.digest);
        } else {
            while self.entries.len() >= self.max_entries {
                let Some(oldest) = self.order.pop_front() else { break };
                if let Some(e) = self.entries.remove(&oldest) {
                    self.by_digest.remove(&e.digest);
                }
            }
            self.order.push_back(token.into());
        }
        self.by_digest.insert(entry.digest, token.into());
        self.entries.insert(token.into(), entry);
        // keys of removed entries linger in `order`; compact before it grows past twice the bound
        if self.order.len() > 2 * self.max_entries {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }

    /// Drops the entry of a token.
    pub fn remove(&mut self, token: &str) {
        if let Some(e) = self.entries.remove(token) {
            self.by_digest.remove(&e.digest);
        }
    }

    /// Drops the entry of a revoked digest; true if there was one.
    pub fn revoke(&mut self, digest: &TokenDigest) -> bool {
        match self.by_digest.remove(digest) {
            Some(token) => self.entries.remove(&token).is_some(),
            None => false,
        }
    }

    /// Drops everything (the revocation feed lost entries).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_digest.clear();
        self.order.clear();
    }

    /// Drops entries that are neither fresh nor usable any more.
    pub fn purge_expired(&mut self, now: u64) {
        let by_digest = &mut self.by_digest;
        self.entries.retain(|_, e| {
            let keep = e.usable_until > now || e.fresh_until > now;
            if !keep {
                by_digest.remove(&e.digest);
            }
            keep
        });
        let entries = &self.entries;
        self.order.retain(|k| entries.contains_key(k));
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
            verdict: Cached::Unknown,
            fresh_until: 100,
            usable_until: 100,
            refreshed_at: 0,
        }
    }

    #[test]
    fn stays_bounded_under_a_flood() {
        let mut c = VerdictCache::new(100);
        for i in 0..10_000 {
            let t = format!("t{i}");
            c.insert(&t, entry(&t));
            if i % 3 == 0 {
                c.remove(&t);
            }
        }
        assert!(c.len() <= 100);
        assert!(c.order.len() <= 200);
        assert!(c.by_digest.len() <= 100);
        assert!(c.get("t9998").is_some(), "newest kept");
        assert!(c.get("t1").is_none(), "oldest evicted");
    }

    #[test]
    fn revokes_by_digest_and_purges() {
        let mut c = VerdictCache::new(10);
        c.insert("a", entry("a"));
        c.insert("b", entry("b"));
        assert!(c.revoke(&TokenHasher::new(None).digest("a")));
        assert!(c.get("a").is_none() && c.get("b").is_some());
        assert!(!c.revoke(&TokenHasher::new(None).digest("a")));
        c.purge_expired(100);
        assert!(c.is_empty());
        let mut off = VerdictCache::new(0);
        off.insert("a", entry("a"));
        assert!(off.is_empty());
    }
}
