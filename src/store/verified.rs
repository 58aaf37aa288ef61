//! Records whose seal or signature has verified, remembered by a SHA-256 of the digest and the
//! record's bytes: a hot token's record is checked once, not on every lookup (an Ed25519
//! verification is most of a lookup's CPU). A rewritten record has other bytes, so it is checked
//! afresh; only records that verified are remembered. Bounded: two generations of at most
//! [`GENERATION`] entries each, the older dropped when the newer fills.

use multitokens_core::digest::TokenDigest;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

/// Entries per generation (32 bytes each).
pub const GENERATION: usize = 50_000;

/// The verified records' hashes, newer generation first.
#[derive(Default)]
pub struct VerifiedRecords {
    generations: Mutex<[HashSet<[u8; 32]>; 2]>,
}

impl VerifiedRecords {
    /// Whether the record `value` stored under `digest` verifies: remembered, or `verify`'s
    /// answer (remembered when it does).
    pub fn check(&self, digest: &TokenDigest, value: &[u8], verify: impl FnOnce() -> bool) -> bool {
        let key: [u8; 32] = Sha256::new().chain_update(digest.0).chain_update(value).finalize().into();
        {
            let mut g = self.generations.lock().unwrap_or_else(PoisonError::into_inner);
            if g[0].contains(&key) {
                return true;
            }
            if g[1].remove(&key) {
                Self::insert(&mut g, key);
                return true;
            }
        }
        let verified = verify();
        if verified {
            Self::insert(&mut self.generations.lock().unwrap_or_else(PoisonError::into_inner), key);
        }
        verified
    }

    fn insert(g: &mut [HashSet<[u8; 32]>; 2], key: [u8; 32]) {
        if g[0].len() >= GENERATION {
            g.swap(0, 1);
            g[0].clear();
        }
        g[0].insert(key);
    }

    /// How many are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let g = self.generations.lock().unwrap_or_else(PoisonError::into_inner);
        g[0].len() + g[1].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_record_is_verified_once_and_a_changed_byte_or_digest_is_verified_again() {
        let verified = VerifiedRecords::default();
        let calls = Cell::new(0);
        let verify = |answer: bool| {
            calls.set(calls.get() + 1);
            answer
        };
        let d = TokenDigest([7; 32]);
        assert!(verified.check(&d, b"{\"user\":\"a\"}", || verify(true)));
        assert!(verified.check(&d, b"{\"user\":\"a\"}", || verify(true)));
        assert_eq!(calls.get(), 1, "remembered");
        assert!(!verified.check(&d, b"{\"user\":\"b\"}", || verify(false)), "other bytes: checked, refused");
        assert!(!verified.check(&d, b"{\"user\":\"b\"}", || verify(false)), "a refusal is never remembered");
        assert!(!verified.check(&TokenDigest([8; 32]), b"{\"user\":\"a\"}", || verify(false)), "another digest");
        assert_eq!(calls.get(), 4);
    }

    #[test]
    fn memory_is_bounded_by_two_generations() {
        let verified = VerifiedRecords::default();
        for i in 0..(GENERATION * 3) as u64 {
            verified.check(&TokenDigest([0; 32]), &i.to_le_bytes(), || true);
        }
        assert!(verified.len() <= 2 * GENERATION);
        // the newest are still remembered
        let last = (GENERATION * 3 - 1) as u64;
        assert!(verified.check(&TokenDigest([0; 32]), &last.to_le_bytes(), || false));
    }
}
