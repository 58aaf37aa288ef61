//! DPoP server nonces (RFC 9449 §8), stateless: a nonce names a time slot and carries a MAC of it
//! under a key every edge derives from the shared hash key, so any edge accepts any edge's nonce
//! while its slot (or the one before) lasts, and no edge stores one. A proof must then have been
//! made after the edge handed out its nonce: a proof made in advance (say, by malware that had the
//! key for a while) stops working within two slots, whatever its `iat` says.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What is MACed before the slot: says what the MAC is for.
const CONTEXT: &[u8] = b"multitokens/dpop-nonce/v1\0";

/// The key nonces are made and checked with.
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

impl NonceKey {
    /// The nonce key of a hash key (`hash_key`, the same at every edge).
    pub fn derive(hash_key: &[u8]) -> NonceKey {
        NonceKey(mac(hash_key, b"multitokens/dpop-nonce-key/v1"))
    }

    fn tag(&self, slot: u64) -> [u8; 32] {
        mac(&self.0, &[CONTEXT, &slot.to_be_bytes()].concat())
    }

    /// The nonce of the slot `now_s` falls in (slots of `lifetime_s`).
    pub fn issue(&self, now_s: u64, lifetime_s: u64) -> String {
        let slot = now_s / lifetime_s.max(1);
        let mut bytes = slot.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.tag(slot)[..16]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Whether `nonce` is one of this slot's or the previous one's.
    pub fn accepts(&self, nonce: &str, now_s: u64, lifetime_s: u64) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else { return false };
        let Some((slot, tag)) = bytes.split_first_chunk::<8>() else { return false };
        let slot = u64::from_be_bytes(*slot);
        let current = now_s / lifetime_s.max(1);
        (slot == current || slot.checked_add(1) == Some(current))
            && tag.len() == 16
            && bool::from(subtle::ConstantTimeEq::ct_eq(tag, &self.tag(slot)[..16]))
    }
}

fn mac(key: &[u8], message: &[u8]) -> [u8; 32] {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(message);
            m.finalize().into_bytes().into()
        }
        Err(_) => [0; 32], // HMAC takes keys of any length: never happens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_lasts_its_slot_and_the_next_at_every_edge_with_the_key() {
        let (edge, other_edge) = (NonceKey::derive(b"hash key"), NonceKey::derive(b"hash key"));
        let nonce = edge.issue(1_000_000, 60);
        assert!(other_edge.accepts(&nonce, 1_000_000, 60));
        assert!(other_edge.accepts(&nonce, 1_000_000 + 60, 60), "the next slot still takes it");
        assert!(!other_edge.accepts(&nonce, 1_000_000 + 120, 60), "two slots later: stale");
        assert!(!NonceKey::derive(b"another key").accepts(&nonce, 1_000_000, 60));
        let mut forged = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        forged[7] ^= 1; // another slot, the same tag
        assert!(!edge.accepts(&URL_SAFE_NO_PAD.encode(&forged), 1_000_000, 60));
        for junk in ["", "!!", "AAAA", &nonce[..20]] {
            assert!(!edge.accepts(junk, 1_000_000, 60), "{junk}");
        }
        assert_eq!(format!("{edge:?}"), "NonceKey(..)", "never printed");
    }
}
