//! What Redis stores instead of the token: SHA-256 of it, or HMAC-SHA-256 with a server secret.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The 32-byte digest of a token; the only form of a token Redis ever sees.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    /// Lower-case hex (64 characters), as used in Redis keys and index members.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(TokenDigest(bytes))
    }

    /// The token's public id: safe to show in lists and logs, neither the secret nor the digest.
    pub fn public_id(&self) -> String {
        let hash = Sha256::new().chain_update(b"multitokens/id\0").chain_update(self.0).finalize();
        hex::encode(&hash[..8])
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenDigest(id {})", self.public_id())
    }
}

/// Turns tokens into digests, keyed with the optional `hash_key` ("pepper").
#[derive(Clone)]
pub struct TokenHasher {
    keyed: Option<Hmac<Sha256>>,
}

impl TokenHasher {
    /// A hasher; with a key, digests are HMAC-SHA-256 so Redis write access cannot mint tokens.
    pub fn new(hash_key: Option<&[u8]>) -> Self {
        let keyed = hash_key.filter(|k| !k.is_empty()).and_then(|k| Hmac::<Sha256>::new_from_slice(k).ok());
        TokenHasher { keyed }
    }

    /// The digest of a token.
    pub fn digest(&self, token: &str) -> TokenDigest {
        let bytes: [u8; 32] = match &self.keyed {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(token.as_bytes());
                mac.finalize().into_bytes().into()
            }
            None => Sha256::digest(token.as_bytes()).into(),
        };
        TokenDigest(bytes)
    }
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHasher").field("keyed", &self.keyed.is_some()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_digest_is_sha256_and_keyed_digest_differs() {
        let plain = TokenHasher::new(None).digest("mt_x");
        assert_eq!(plain.to_hex(), hex::encode(Sha256::digest(b"mt_x")));
        let keyed = TokenHasher::new(Some(b"pepper")).digest("mt_x");
        assert_ne!(plain, keyed);
        assert_eq!(keyed, TokenHasher::new(Some(b"pepper")).digest("mt_x"));
        assert_ne!(keyed, TokenHasher::new(Some(b"other")).digest("mt_x"));
    }

    #[test]
    fn hex_round_trips_and_public_id_is_not_part_of_the_digest() {
        let d = TokenHasher::new(None).digest("mt_y");
        assert_eq!(TokenDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(TokenDigest::from_hex("zz"), None);
        let id = d.public_id();
        assert_eq!(id.len(), 16);
        assert!(!d.to_hex().contains(&id));
    }
}
