//! Tests of the parent module.

use super::*;
use multitokens_core::digest::TokenHasher;
use multitokens_core::token;

fn tokens(n: usize) -> Vec<String> {
    (0..n).map(|i| token::generate("mt", &format!("user{i}")).unwrap()).collect()
}

fn stored(t: &str) -> Stored {
    Stored { tag: RoutingTag([1, 2, 3, 4]), digest: TokenHasher::new(None).digest(t) }
}

fn alice() -> Identity {
    Identity::new("alice".into(), "phone".into(), vec!["read".into(), "write".into()], "id1".into()).unwrap()
}

fn life(until: u64) -> Lifetime {
    Lifetime { fresh_until: until, usable_until: until, refreshed_at: 0 }
}

#[test]
fn a_hit_needs_the_whole_token_with_its_prefix() {
    let t = tokens(2);
    let mut c = VerdictCache::new("mt", 10, 10);
    c.insert_valid(&t[0], stored(&t[0]), &alice(), life(100), 0);
    let hit = c.get(&t[0]).unwrap();
    assert_eq!(hit.verdict, Cached::Valid(alice().view()));
    assert_eq!((hit.fresh_until, hit.usable_until), (100, 100));
    assert!(c.get(&t[1]).is_none());
    assert!(c.get(&t[0].replacen("mt_", "xx_", 1)).is_none(), "another prefix");
    assert!(c.get(&t[0].replacen("mt_", "mt-", 1)).is_none());
    assert!(c.get(&t[0][..t[0].len() - 1]).is_none(), "truncated");
    assert!(c.get(&format!("{}A", t[0])).is_none(), "extended");
    let mut flipped = t[0].clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    assert!(c.get(std::str::from_utf8(&flipped).unwrap()).is_none(), "one character off");
    assert!(c.get("").is_none() && c.get("mt_").is_none());
}

#[test]
fn stays_bounded_under_a_flood() {
    let t = tokens(10_000);
    let mut c = VerdictCache::new("mt", 100, 100);
    for (i, t) in t.iter().enumerate() {
        c.insert_invalid(t, 100, 0);
        if i % 3 == 0 {
            c.remove(t);
        }
    }
    assert!(c.len() <= 100);
    assert_eq!(c.negative.len, c.len());
    assert_eq!(c.slots.chunks.len(), 1, "freed slots are reused");
    assert!(c.get(&t[9998]).is_some(), "newest kept");
    assert!(c.get(&t[1]).is_none(), "oldest evicted");
}

#[test]
fn a_flood_of_unknown_tokens_never_evicts_a_valid_one() {
    let valid = tokens(1500);
    let forged = tokens(20_000);
    let mut c = VerdictCache::new("mt", 1000, 50);
    for t in &valid[..500] {
        c.insert_valid(t, stored(t), &alice(), life(100), 0);
    }
    for t in &forged {
        c.insert_invalid(t, 100, 0);
    }
    assert_eq!(c.len(), 550);
    assert!(
        valid[..500].iter().all(|t| matches!(c.get(t).map(|e| e.verdict), Some(Cached::Valid(_)))),
        "every valid verdict kept"
    );
    // positives still evict only positives, oldest first
    for t in &valid[500..] {
        c.insert_valid(t, stored(t), &alice(), life(100), 0);
    }
    assert_eq!((c.positive.len, c.negative.len), (1000, 50));
    assert!(c.get(&valid[0]).is_none() && c.get(&valid[1499]).is_some());
    assert!(!c.revoke(&stored(&valid[0]).digest), "evicted from the digest index too");
    // a verdict that changes kind moves lanes
    c.insert_invalid(&valid[1499], 100, 0);
    assert_eq!((c.positive.len, c.negative.len), (999, 50));
    assert_eq!(c.get(&valid[1499]).map(|e| e.verdict), Some(Cached::Invalid));
    assert!(!c.revoke(&stored(&valid[1499]).digest), "an invalid verdict has nothing to revoke");
}

#[test]
fn revokes_by_digest_and_purges() {
    let t = tokens(3);
    let mut c = VerdictCache::new("mt", 10, 10);
    c.insert_valid(&t[0], stored(&t[0]), &alice(), life(100), 0);
    c.insert_valid(&t[1], stored(&t[1]), &alice(), life(300), 0);
    c.insert_invalid(&t[2], 100, 0);
    assert!(c.revoke(&stored(&t[0]).digest));
    assert!(c.get(&t[0]).is_none() && c.get(&t[1]).is_some());
    assert!(!c.revoke(&stored(&t[0]).digest));
    c.purge_expired(100);
    assert_eq!(c.len(), 1, "the invalid verdict expired, the later valid one stays");
    c.purge_expired(300);
    assert!(c.is_empty());
    let mut off = VerdictCache::new("mt", 0, 10);
    off.insert_invalid(&t[0], 100, 0);
    off.insert_valid(&t[0], stored(&t[0]), &alice(), life(100), 0);
    assert!(off.is_empty());
}

#[test]
fn sliding_refresh_is_due_once_per_interval_and_names_the_stored_digest() {
    let t = tokens(2);
    let mut c = VerdictCache::new("mt", 10, 10);
    c.insert_valid(&t[0], stored(&t[0]), &alice(), Lifetime { refreshed_at: 1_000, ..life(90_000) }, 1_000);
    c.insert_invalid(&t[1], 90_000, 1_000);
    assert_eq!(c.refresh_due(&t[0], 30_000, 60_000), None);
    assert_eq!(c.refresh_due(&t[0], 61_000, 60_000), Some(stored(&t[0])));
    assert_eq!(c.refresh_due(&t[0], 62_000, 60_000), None, "marked refreshed");
    assert_eq!(c.refresh_due(&t[1], 62_000, 60_000), None, "an invalid verdict is never refreshed");
}

#[test]
fn times_survive_an_epoch_move_and_end_early_rather_than_late() {
    let t = tokens(3);
    let mut c = VerdictCache::new("mt", 10, 10);
    let start = 1_700_000_000_000;
    c.insert_valid(&t[0], stored(&t[0]), &alice(), life(start + 60 * 86_400_000), start);
    assert_eq!(c.get(&t[0]).unwrap().fresh_until, start + u64::from(u32::MAX), "beyond 49 days: capped");
    let later = start + 25 * 86_400_000;
    c.insert_valid(&t[1], stored(&t[1]), &alice(), life(later + 5_000), later);
    assert_eq!(c.epoch, later);
    assert_eq!(c.get(&t[1]).unwrap().fresh_until, later + 5_000);
    assert!(c.get(&t[0]).unwrap().fresh_until <= start + u64::from(u32::MAX));
    assert!(c.get(&t[0]).unwrap().fresh_until > later);
}

#[test]
fn clearing_frees_everything_and_the_cache_works_after() {
    let t = tokens(3000);
    let mut c = VerdictCache::new("mt", 5000, 10);
    for t in &t {
        c.insert_valid(t, stored(t), &alice(), life(100), 0);
    }
    assert_eq!(c.slots.chunks.len(), 3);
    c.clear();
    assert!(c.is_empty() && c.slots.chunks.is_empty());
    c.insert_valid(&t[0], stored(&t[0]), &alice(), life(100), 0);
    assert!(c.revoke(&stored(&t[0]).digest) && c.is_empty());
}

#[test]
fn oversized_identities_are_not_cached() {
    let t = tokens(1);
    let mut c = VerdictCache::new("mt", 10, 10);
    let big = Identity::new("u".repeat(70_000), String::new(), vec![], "i".into()).unwrap();
    c.insert_valid(&t[0], stored(&t[0]), &big, life(100), 0);
    assert!(c.is_empty());
}
