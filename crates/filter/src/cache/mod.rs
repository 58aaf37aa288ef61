//! The per-worker verdict cache: bounded (oldest entries evicted first), keyed by the token text
//! so a hit costs one hash lookup and no hashing or parsing, with a second index by digest so the
//! revocation feed can drop entries. A positive entry never outlives the token's remaining TTL.
//!
//! Memory is the point of its shape: a gateway holds one cache per worker, each up to the
//! configured number of verdicts. An entry is one fixed-size slot (the token's 55-character body
//! compared in place, three 32-bit times, list links) in a slab that grows by chunks, never by
//! doubling; a valid verdict adds one allocation holding its digest, routing tag and identity; the
//! two indexes hold 4-byte slot numbers. About 100 bytes per invalid and 180 per valid verdict
//! on wasm32 (see bench/README.md).

use super::identity::{Identity, IdentityView};
use hashbrown::HashTable;
use multitokens_core::digest::TokenDigest;
use multitokens_core::token::{RoutingTag, BODY_B64_LEN};
use packed::Packed;
use std::hash::{BuildHasher, RandomState};

/// A cached verdict, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached<'a> {
    /// Valid when checked.
    Valid(IdentityView<'a>),
    /// Not valid (unknown, revoked or expired) when checked.
    Invalid,
}

/// A cache entry, as read.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// The verdict.
    pub verdict: Cached<'a>,
    /// Served without asking until then (ms).
    pub fresh_until: u64,
    /// With `allow_cached`, still usable when the store is down until then (ms).
    pub usable_until: u64,
    /// Where a valid token's record is stored (`None` for an invalid verdict).
    pub stored: Option<Stored>,
}

/// Where a valid token's record is stored: what a sliding refresh and a revocation name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The token's routing tag.
    pub tag: RoutingTag,
    /// The digest the record is stored under.
    pub digest: TokenDigest,
}

/// How long a valid entry serves (ms, absolute).
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    /// Served without asking until then.
    pub fresh_until: u64,
    /// With `allow_cached`, still usable when the store is down until then.
    pub usable_until: u64,
    /// Last sliding refresh sent for this token.
    pub refreshed_at: u64,
}

/// Slots per slab chunk: the slab grows by this many at a time.
const CHUNK: usize = 1024;
/// No slot: the end of a list.
const NIL: u32 = u32::MAX;
/// Times are kept as 32-bit milliseconds after the cache's epoch; past this the epoch moves.
const REBASE_AFTER_MS: u64 = (u32::MAX / 2) as u64;

/// One entry's fixed part (84 bytes on wasm32).
#[derive(Debug)]
struct Slot {
    /// The token without its prefix, compared byte for byte: a hit is never a near miss.
    body: [u8; BODY_B64_LEN],
    used: bool,
    /// Times, in ms after the cache's epoch.
    fresh_until: u32,
    usable_until: u32,
    refreshed_at: u32,
    /// The valid verdict; `None`: invalid.
    valid: Option<Packed>,
    /// Neighbours in the lane's insertion order (the next free slot while free).
    prev: u32,
    next: u32,
}

impl Slot {
    const FREE: Slot = Slot {
        body: [0; BODY_B64_LEN],
        used: false,
        fresh_until: 0,
        usable_until: 0,
        refreshed_at: 0,
        valid: None,
        prev: NIL,
        next: NIL,
    };
}

/// Slots in chunks of [`CHUNK`], addressed by 32-bit numbers, with a free list.
#[derive(Debug)]
struct Slab {
    chunks: Vec<Box<[Slot]>>,
    free: u32,
}

impl Default for Slab {
    fn default() -> Self {
        Slab { chunks: Vec::new(), free: NIL }
    }
}

impl Slab {
    fn get(&self, i: u32) -> Option<&Slot> {
        self.chunks.get(i as usize / CHUNK)?.get(i as usize % CHUNK)
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.chunks.get_mut(i as usize / CHUNK)?.get_mut(i as usize % CHUNK)
    }

    /// A free slot, marked used; `None` past 2^32 - 1 slots.
    fn take(&mut self) -> Option<u32> {
        if self.free == NIL {
            let base = self.chunks.len() * CHUNK;
            let first = u32::try_from(base).ok().filter(|_| u32::try_from(base + CHUNK).is_ok_and(|end| end < NIL))?;
            let chunk = (1..=CHUNK as u32)
                .map(|k| Slot { next: if k < CHUNK as u32 { first + k } else { NIL }, ..Slot::FREE })
                .collect();
            self.chunks.push(chunk);
            self.free = first;
        }
        let i = self.free;
        let slot = self.get_mut(i)?;
        let next = slot.next;
        slot.used = true;
        self.free = next;
        Some(i)
    }

    /// Frees a slot (dropping its verdict).
    fn give_back(&mut self, i: u32) {
        let free = self.free;
        if let Some(slot) = self.get_mut(i) {
            *slot = Slot { next: free, ..Slot::FREE };
            self.free = i;
        }
    }
}

/// One kind of verdict's share of the cache: its insertion order (a list through the slots) and
/// its bound. Positives and negatives have separate bounds, so a flood of unknown tokens evicts
/// only other negatives.
#[derive(Debug)]
struct Lane {
    head: u32,
    tail: u32,
    len: usize,
    max: usize,
}

impl Lane {
    fn new(max: usize) -> Self {
        Lane { head: NIL, tail: NIL, len: 0, max }
    }

    fn push(&mut self, slots: &mut Slab, i: u32) {
        let tail = self.tail;
        if let Some(slot) = slots.get_mut(i) {
            slot.prev = tail;
            slot.next = NIL;
        }
        match slots.get_mut(tail) {
            Some(last) => last.next = i,
            None => self.head = i,
        }
        self.tail = i;
        self.len += 1;
    }

    fn unlink(&mut self, slots: &mut Slab, prev: u32, next: u32) {
        match slots.get_mut(prev) {
            Some(slot) => slot.next = next,
            None => self.head = next,
        }
        match slots.get_mut(next) {
            Some(slot) => slot.prev = prev,
            None => self.tail = prev,
        }
        self.len = self.len.saturating_sub(1);
    }

    /// The lane's slots, oldest first.
    fn slots<'a>(&self, slots: &'a Slab) -> impl Iterator<Item = (u32, &'a Slot)> + 'a {
        let mut i = self.head;
        std::iter::from_fn(move || {
            let slot = slots.get(i)?;
            let here = i;
            i = slot.next;
            Some((here, slot))
        })
        .take(self.len)
    }
}

fn digest_hash(digest: &[u8]) -> u64 {
    digest.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// The bounded verdict cache.
#[derive(Debug)]
pub struct VerdictCache {
    /// The token prefix every cached token has (`<prefix>_<body>`).
    prefix: Box<str>,
    slots: Slab,
    /// Slot numbers by token body (SipHash with this VM's random key: a flood of chosen tokens
    /// cannot pile into one bucket).
    by_token: HashTable<u32>,
    /// Slot numbers of valid verdicts by digest (digests are uniform: their first 8 bytes hash).
    by_digest: HashTable<u32>,
    hasher: RandomState,
    positive: Lane,
    negative: Lane,
    /// What the slots' times count from (ms).
    epoch: u64,
}

impl VerdictCache {
    /// A cache of tokens with `prefix` holding at most `max_positive` valid and `max_negative`
    /// unknown verdicts (`max_positive` 0: nothing is cached).
    pub fn new(prefix: &str, max_positive: usize, max_negative: usize) -> Self {
        let max_negative = if max_positive == 0 { 0 } else { max_negative };
        VerdictCache {
            prefix: prefix.into(),
            slots: Slab::default(),
            by_token: HashTable::new(),
            by_digest: HashTable::new(),
            hasher: RandomState::new(),
            positive: Lane::new(max_positive),
            negative: Lane::new(max_negative),
            epoch: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    fn body<'t>(&self, token: &'t str) -> Option<&'t [u8; BODY_B64_LEN]> {
        token.strip_prefix(&*self.prefix)?.strip_prefix('_')?.as_bytes().try_into().ok()
    }

    fn find(&self, token: &str) -> Option<u32> {
        let body = self.body(token)?;
        let slots = &self.slots;
        self.by_token.find(self.hasher.hash_one(body), |&i| slots.get(i).is_some_and(|s| s.body == *body)).copied()
    }

    fn at(&self, since_epoch: u32) -> u64 {
        self.epoch + u64::from(since_epoch)
    }

    /// A time as kept in a slot: earlier than the epoch becomes the epoch, and later than 2^32 - 1
    /// ms after it becomes that (an entry may end early, never late).
    fn since_epoch(&self, time: u64) -> u32 {
        u32::try_from(time.saturating_sub(self.epoch)).unwrap_or(u32::MAX)
    }

    /// The entry of a token, if any (fresh or not: the caller decides).
    pub fn get(&self, token: &str) -> Option<Entry<'_>> {
        let slot = self.slots.get(self.find(token)?)?;
        let (verdict, stored) = match &slot.valid {
            Some(valid) => (Cached::Valid(valid.view()?), valid.stored()),
            None => (Cached::Invalid, None),
        };
        let (fresh_until, usable_until) = (self.at(slot.fresh_until), self.at(slot.usable_until));
        Some(Entry { verdict, fresh_until, usable_until, stored })
    }

    /// Where a cached valid token is stored, if a sliding refresh is due (none in the last
    /// `min_interval_ms`); marks it refreshed now.
    pub fn refresh_due(&mut self, token: &str, now: u64, min_interval_ms: u64) -> Option<Stored> {
        let i = self.find(token)?;
        let (epoch, now_since_epoch) = (self.epoch, self.since_epoch(now));
        let slot = self.slots.get_mut(i)?;
        let stored = slot.valid.as_ref()?.stored()?;
        if now.saturating_sub(epoch + u64::from(slot.refreshed_at)) < min_interval_ms {
            return None;
        }
        slot.refreshed_at = now_since_epoch;
        Some(stored)
    }

    /// Caches a valid verdict, evicting the oldest valid ones beyond the bound.
    pub fn insert_valid(&mut self, token: &str, stored: Stored, identity: &Identity, lifetime: Lifetime, now: u64) {
        match Packed::new(stored, identity) {
            Some(valid) => self.insert(token, Some(valid), lifetime, now),
            None => self.remove(token),
        }
    }

    /// Caches an invalid verdict until `until`, evicting the oldest invalid ones beyond the bound.
    pub fn insert_invalid(&mut self, token: &str, until: u64, now: u64) {
        self.insert(token, None, Lifetime { fresh_until: until, usable_until: until, refreshed_at: 0 }, now);
    }

    fn insert(&mut self, token: &str, valid: Option<Packed>, lifetime: Lifetime, now: u64) {
        self.remove(token);
        let Some(&body) = self.body(token) else { return };
        let positive = valid.is_some();
        if self.lane(positive).max == 0 {
            return;
        }
        if self.is_empty() {
            self.epoch = now;
        } else if now.saturating_sub(self.epoch) > REBASE_AFTER_MS {
            self.rebase(now);
        }
        while self.lane(positive).len >= self.lane(positive).max {
            let oldest = self.lane(positive).head;
            if !self.remove_slot(oldest) {
                break;
            }
        }
        let Some(i) = self.slots.take() else { return };
        let times = (
            self.since_epoch(lifetime.fresh_until),
            self.since_epoch(lifetime.usable_until),
            self.since_epoch(lifetime.refreshed_at),
        );
        let digest = valid.as_ref().map(|v| digest_hash(v.digest()));
        let Some(slot) = self.slots.get_mut(i) else { return };
        (slot.fresh_until, slot.usable_until, slot.refreshed_at) = times;
        slot.body = body;
        slot.valid = valid;
        let VerdictCache { slots, by_token, by_digest, hasher, positive: valid_lane, negative: invalid_lane, .. } =
            self;
        if positive { valid_lane } else { invalid_lane }.push(slots, i);
        let slots = &*slots;
        by_token.insert_unique(hasher.hash_one(body), i, |&j| slots.get(j).map_or(0, |s| hasher.hash_one(s.body)));
        if let Some(hash) = digest {
            by_digest.insert_unique(hash, i, |&j| {
                slots.get(j).and_then(|s| s.valid.as_ref()).map_or(0, |v| digest_hash(v.digest()))
            });
        }
    }

    fn lane(&self, positive: bool) -> &Lane {
        if positive {
            &self.positive
        } else {
            &self.negative
        }
    }

    /// Drops the entry in slot `i`; false if the slot holds none.
    fn remove_slot(&mut self, i: u32) -> bool {
        let Some(slot) = self.slots.get(i).filter(|s| s.used) else { return false };
        let (prev, next, positive) = (slot.prev, slot.next, slot.valid.is_some());
        let by_body = self.hasher.hash_one(slot.body);
        let by_digest = slot.valid.as_ref().map(|v| digest_hash(v.digest()));
        if let Ok(entry) = self.by_token.find_entry(by_body, |&j| j == i) {
            entry.remove();
        }
        if let Some(hash) = by_digest {
            if let Ok(entry) = self.by_digest.find_entry(hash, |&j| j == i) {
                entry.remove();
            }
        }
        let lane = if positive { &mut self.positive } else { &mut self.negative };
        lane.unlink(&mut self.slots, prev, next);
        self.slots.give_back(i);
        true
    }

    /// Drops the entry of a token.
    pub fn remove(&mut self, token: &str) {
        if let Some(i) = self.find(token) {
            self.remove_slot(i);
        }
    }

    /// Drops the entry of a revoked digest; true if there was one.
    pub fn revoke(&mut self, digest: &TokenDigest) -> bool {
        let slots = &self.slots;
        let stored_under =
            |&j: &u32| slots.get(j).and_then(|s| s.valid.as_ref()).is_some_and(|v| v.digest() == digest.0);
        match self.by_digest.find(digest_hash(&digest.0), stored_under).copied() {
            Some(i) => self.remove_slot(i),
            None => false,
        }
    }

    /// Drops everything (the revocation feed lost entries), memory included.
    pub fn clear(&mut self) {
        self.slots = Slab::default();
        self.by_token = HashTable::new();
        self.by_digest = HashTable::new();
        self.positive = Lane::new(self.positive.max);
        self.negative = Lane::new(self.negative.max);
    }

    /// Drops entries that are neither fresh nor usable any more.
    pub fn purge_expired(&mut self, now: u64) {
        let expired: Vec<u32> = [&self.positive, &self.negative]
            .into_iter()
            .flat_map(|lane| lane.slots(&self.slots))
            .filter(|(_, s)| self.at(s.usable_until) <= now && self.at(s.fresh_until) <= now)
            .map(|(i, _)| i)
            .collect();
        for i in expired {
            self.remove_slot(i);
        }
    }

    /// Moves the epoch to `now` (the slots' times would soon no longer fit 32 bits).
    fn rebase(&mut self, now: u64) {
        let shift = u32::try_from(now.saturating_sub(self.epoch)).unwrap_or(u32::MAX);
        let used: Vec<u32> = [&self.positive, &self.negative]
            .into_iter()
            .flat_map(|lane| lane.slots(&self.slots))
            .map(|(i, _)| i)
            .collect();
        for i in used {
            if let Some(s) = self.slots.get_mut(i) {
                s.fresh_until = s.fresh_until.saturating_sub(shift);
                s.usable_until = s.usable_until.saturating_sub(shift);
                s.refreshed_at = s.refreshed_at.saturating_sub(shift);
            }
        }
        self.epoch = now;
    }
}

mod packed;

#[cfg(test)]
mod tests;
