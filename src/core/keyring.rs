//! The server's hash keys during a rotation: the current one, which digests and seals everything
//! written, and the previous ones, still accepted until a sweep has re-keyed what they wrote.

use super::digest::{TokenDigest, TokenHasher};

/// Most previous keys accepted at once: each is one more digest tried by every lookup.
pub const MAX_PREVIOUS_HASH_KEYS: usize = 4;

/// Why a set of hash keys is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HashKeysError {
    /// More previous keys than [`MAX_PREVIOUS_HASH_KEYS`].
    #[error("at most {MAX_PREVIOUS_HASH_KEYS} previous hash keys are accepted")]
    TooMany,
    /// A previous key is empty.
    #[error("a previous hash key is empty")]
    Empty,
    /// Previous keys without a current key.
    #[error("previous hash keys need a current hash key")]
    NoCurrent,
}

/// The current hash key and the previous ones still accepted.
#[derive(Clone, Debug)]
pub struct HashKeys {
    /// The current key first, then the previous ones in the order given.
    hashers: Vec<TokenHasher>,
    /// Honour records that carry no seal at all (an upgrade from a release before sealing).
    accept_unsealed: bool,
}

impl HashKeys {
    /// The keys; `current` `None` (or empty) means unkeyed digests and unsealed records.
    pub fn new(current: Option<&[u8]>, previous: &[&[u8]]) -> Result<Self, HashKeysError> {
        let current = current.filter(|k| !k.is_empty());
        if previous.len() > MAX_PREVIOUS_HASH_KEYS {
            return Err(HashKeysError::TooMany);
        }
        if previous.iter().any(|k| k.is_empty()) {
            return Err(HashKeysError::Empty);
        }
        if current.is_none() && !previous.is_empty() {
            return Err(HashKeysError::NoCurrent);
        }
        let mut hashers = vec![TokenHasher::new(current)];
        hashers.extend(previous.iter().filter(|k| Some(**k) != current).map(|k| TokenHasher::new(Some(k))));
        Ok(HashKeys { hashers, accept_unsealed: false })
    }

    /// One key (or none): no rotation in progress.
    pub fn single(current: Option<&[u8]>) -> Self {
        HashKeys { hashers: vec![TokenHasher::new(current)], accept_unsealed: false }
    }

    /// The same keys, also honouring records with no seal at all while `accept` (during an upgrade
    /// from a release before sealing, until `multitokens rekey --seal-unsealed` has run). A
    /// record with a seal that does not verify is refused either way.
    pub fn accepting_unsealed(mut self, accept: bool) -> Self {
        self.accept_unsealed = accept;
        self
    }

    /// Whether a record stored under `digest` may be honoured: sealed by one of the keys, or
    /// unsealed while those are accepted.
    pub fn accepts(&self, digest: &TokenDigest, value: &[u8]) -> bool {
        self.sealed_by(digest, value).is_some() || (self.accept_unsealed && !TokenHasher::has_seal(value))
    }

    /// The current key's hasher: every digest written and every seal made uses it.
    pub fn current(&self) -> &TokenHasher {
        &self.hashers[0]
    }

    /// Every key's hasher, the current one first.
    pub fn all(&self) -> &[TokenHasher] {
        &self.hashers
    }

    /// The digests a token may be stored under, the current key's first; what a lookup tries.
    pub fn digests(&self, token: &str) -> Vec<TokenDigest> {
        let mut out: Vec<TokenDigest> = Vec::with_capacity(self.hashers.len());
        for h in &self.hashers {
            let d = h.digest(token);
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// Which key sealed a record stored under `digest` (0: the current one), `None` if none did.
    pub fn sealed_by(&self, digest: &TokenDigest, value: &[u8]) -> Option<usize> {
        self.hashers.iter().position(|h| h.verify_seal(digest, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_first_previous_after_and_limits_checked() {
        let keys = HashKeys::new(Some(b"new"), &[b"old"]).unwrap();
        let t = crate::core::token::generate("mt", "u").unwrap();
        let d = keys.digests(&t);
        assert_eq!(d, vec![TokenHasher::new(Some(b"new")).digest(&t), TokenHasher::new(Some(b"old")).digest(&t)]);
        let old = TokenHasher::new(Some(b"old"));
        let sealed = old.seal(&d[1], "{\"user\":\"u\"}".into());
        assert_eq!(keys.sealed_by(&d[1], sealed.as_bytes()), Some(1));
        assert_eq!(keys.sealed_by(&d[0], sealed.as_bytes()), None);
        assert_eq!(HashKeys::new(Some(b"k"), &[b"k"]).unwrap().all().len(), 1, "the current key is not tried twice");
        assert_eq!(HashKeys::new(Some(b"k"), &[b"a", b"b", b"c", b"d", b"e"]).err(), Some(HashKeysError::TooMany));
        assert_eq!(HashKeys::new(Some(b"k"), &[b""]).err(), Some(HashKeysError::Empty));
        assert_eq!(HashKeys::new(None, &[b"a"]).err(), Some(HashKeysError::NoCurrent));
        assert_eq!(HashKeys::single(None).digests(&t).len(), 1);
    }

    #[test]
    fn unsealed_records_are_honoured_only_while_accepted_and_a_broken_seal_never() {
        let keys = HashKeys::single(Some(b"k"));
        let d = keys.current().digest("mt_x");
        let plain = br#"{"id":"i","user":"u"}"#;
        let sealed = keys.current().seal(&d, String::from_utf8(plain.to_vec()).unwrap());
        let broken = sealed.replace("\"u\"", "\"root\"");
        assert!(!keys.accepts(&d, plain) && keys.accepts(&d, sealed.as_bytes()));
        let upgrading = keys.accepting_unsealed(true);
        assert!(upgrading.accepts(&d, plain), "no seal at all: honoured during the upgrade");
        assert!(!upgrading.accepts(&d, broken.as_bytes()), "a broken seal: never");
        assert!(TokenHasher::has_seal(sealed.as_bytes()) && !TokenHasher::has_seal(plain));
    }
}
