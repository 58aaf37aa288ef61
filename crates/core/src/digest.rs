//! What Redis stores instead of the token: SHA-256 of it, or HMAC-SHA-256 with a server secret;
//! and the seal that binds a stored record to its digest under that secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::token::TokenMac;

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

/// Turns tokens into digests, keyed with the optional `hash_key` ("pepper"), and seals the records
/// stored under them with a key derived from it.
///
/// A version 2 token's digest is HMAC(key, SHA-256(token)): a record keeps SHA-256(token)
/// ([`token_hash`], useless without the key), so a sweep can re-key it under a new key. A version
/// 1 token's is HMAC(key, token). Version 3 tokens (minted under a key) carry a MAC under a key
/// derived from it ([`TokenMac`]). Without a key both are SHA-256(token).
#[derive(Clone)]
pub struct TokenHasher {
    keyed: Option<Hmac<Sha256>>,
    seal: Option<Hmac<Sha256>>,
    mac: Option<TokenMac>,
}

/// SHA-256 of a token: what a version 2 digest is keyed over.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The label the seal key is derived under (from the hash key, so one secret serves both).
const SEAL_KEY_LABEL: &[u8] = b"multitokens/seal-key/v1";

impl TokenHasher {
    /// A hasher; with a key, digests are HMAC-SHA-256 so Redis write access cannot mint tokens,
    /// and records are sealed so it cannot rewrite them either.
    pub fn new(hash_key: Option<&[u8]>) -> Self {
        let keyed = hash_key.filter(|k| !k.is_empty()).and_then(|k| Hmac::<Sha256>::new_from_slice(k).ok());
        let seal = keyed.as_ref().and_then(|mac| {
            let derived = mac.clone().chain_update(SEAL_KEY_LABEL).finalize().into_bytes();
            Hmac::<Sha256>::new_from_slice(&derived).ok()
        });
        let mac = hash_key.filter(|k| !k.is_empty()).and_then(TokenMac::from_hash_key);
        TokenHasher { keyed, seal, mac }
    }

    /// The key of the MAC inside the tokens minted under this hash key (`None` when unkeyed).
    pub fn token_mac(&self) -> Option<&TokenMac> {
        self.mac.as_ref()
    }

    /// Mints a token for `user`: a version 3 token carrying this key's MAC, or without a key a
    /// version 2 token.
    pub fn mint(&self, prefix: &str, user: &str) -> Result<String, getrandom::Error> {
        match &self.mac {
            Some(mac) => super::token::generate_with_mac(prefix, user, mac),
            None => super::token::generate(prefix, user),
        }
    }

    /// Whether a hash key is set (digests keyed, records sealed).
    pub fn is_keyed(&self) -> bool {
        self.keyed.is_some()
    }

    /// A public fingerprint of the key (16 hex characters; empty when unkeyed): says which key a
    /// filter digests with, and reveals nothing of it.
    pub fn key_id(&self) -> String {
        match &self.keyed {
            Some(mac) => hex::encode(&mac.clone().chain_update(b"multitokens/key-id").finalize().into_bytes()[..8]),
            None => String::new(),
        }
    }

    /// The digest of a token (of its version's scheme; text that is not a token: HMAC of it).
    pub fn digest(&self, token: &str) -> TokenDigest {
        match (&self.keyed, super::token::version(token)) {
            (Some(_), Some(v)) if v >= 2 => self.digest_of_hash(&token_hash(token)),
            (Some(mac), _) => TokenDigest(mac.clone().chain_update(token.as_bytes()).finalize().into_bytes().into()),
            (None, _) => TokenDigest(token_hash(token)),
        }
    }

    /// The digest of a version 2 token from its SHA-256 (what a record keeps for re-keying).
    pub fn digest_of_hash(&self, hash: &[u8; 32]) -> TokenDigest {
        match &self.keyed {
            Some(mac) => TokenDigest(mac.clone().chain_update(hash).finalize().into_bytes().into()),
            None => TokenDigest(*hash),
        }
    }

    /// Seals a record's JSON for storage under `digest`: appends `"seal"`, an HMAC with the seal
    /// key over the digest and the JSON before it. Unkeyed: the JSON unchanged.
    pub fn seal(&self, digest: &TokenDigest, json: String) -> String {
        let Some(mac) = &self.seal else { return json };
        let Some(body) = json.strip_suffix('}') else { return json };
        let tag =
            mac.clone().chain_update(digest.0).chain_update(body.as_bytes()).chain_update(b"}").finalize().into_bytes();
        format!("{body},{SEAL_PREFIX}{}\"}}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Whether a stored value ends in a seal at all (valid or not): a record written before
    /// records were sealed has none.
    pub fn has_seal(value: &[u8]) -> bool {
        value
            .len()
            .checked_sub(SEAL_SUFFIX_LEN)
            .is_some_and(|at| value[at..].starts_with(b",") && value[at + 1..].starts_with(SEAL_PREFIX.as_bytes()))
    }

    /// Whether a stored record carries this key's seal over `digest` (unkeyed: always). A record
    /// without a seal, with a broken one, or moved under another digest does not.
    pub fn verify_seal(&self, digest: &TokenDigest, value: &[u8]) -> bool {
        let Some(mac) = &self.seal else { return true };
        let Some(at) = value.len().checked_sub(SEAL_SUFFIX_LEN) else { return false };
        let (body, suffix) = value.split_at(at);
        let Some(encoded) = suffix
            .strip_prefix(b",")
            .and_then(|s| s.strip_prefix(SEAL_PREFIX.as_bytes()))
            .and_then(|s| s.strip_suffix(b"\"}"))
        else {
            return false;
        };
        let mut tag = [0u8; 33];
        match URL_SAFE_NO_PAD.decode_slice(encoded, &mut tag) {
            Ok(32) => {}
            _ => return false,
        }
        mac.clone().chain_update(digest.0).chain_update(body).chain_update(b"}").verify_slice(&tag[..32]).is_ok()
    }
}

/// What precedes the seal in a sealed record (after the record's last field).
const SEAL_PREFIX: &str = "\"seal\":\"";
/// Bytes after the record's last field: `,"seal":"` + 43 base64url characters + `"}`.
const SEAL_SUFFIX_LEN: usize = 1 + SEAL_PREFIX.len() + 43 + 2;

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

    #[test]
    fn version_two_digests_are_keyed_over_the_tokens_hash_and_version_one_over_the_token() {
        let h = TokenHasher::new(Some(b"pepper"));
        let v2 = crate::token::generate("mt", "u").unwrap();
        assert_eq!(h.digest(&v2), h.digest_of_hash(&token_hash(&v2)));
        let v1 = crate::token::generate_version_1("mt", "u").unwrap();
        assert_ne!(h.digest(&v1), h.digest_of_hash(&token_hash(&v1)));
        let plain = TokenHasher::new(None);
        assert_eq!(plain.digest(&v2).0, token_hash(&v2));
        assert_eq!(plain.digest(&v1).0, token_hash(&v1));
    }

    #[test]
    fn a_seal_binds_the_record_to_its_digest_and_key() {
        let h = TokenHasher::new(Some(b"pepper"));
        let d = h.digest("mt_a");
        let sealed = h.seal(&d, r#"{"id":"x","user":"alice"}"#.to_string());
        assert!(sealed.starts_with(r#"{"id":"x","user":"alice","seal":""#), "{sealed}");
        assert!(h.verify_seal(&d, sealed.as_bytes()));
        let parsed: serde_json::Value = serde_json::from_str(&sealed).unwrap();
        assert_eq!(parsed["user"], "alice");
        // rewritten, moved to another digest, unsealed, resealed with another key, truncated
        assert!(!h.verify_seal(&d, sealed.replace("alice", "admin").as_bytes()));
        assert!(!h.verify_seal(&h.digest("mt_b"), sealed.as_bytes()));
        assert!(!h.verify_seal(&d, br#"{"id":"x","user":"alice"}"#));
        let other = TokenHasher::new(Some(b"other"));
        assert!(!h.verify_seal(&d, other.seal(&d, r#"{"id":"x","user":"alice"}"#.to_string()).as_bytes()));
        assert!(!h.verify_seal(&d, &sealed.as_bytes()[1..]));
        assert!(!h.verify_seal(&d, b""));
        let mut flipped = sealed.clone().into_bytes();
        let n = flipped.len();
        flipped[n - 3] ^= 1;
        assert!(!h.verify_seal(&d, &flipped));
        // no key: nothing to seal with, nothing to check
        let plain = TokenHasher::new(None);
        assert_eq!(plain.seal(&d, "{}".into()), "{}");
        assert!(plain.verify_seal(&d, b"{}"));
    }
}
