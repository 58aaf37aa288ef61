//! Records signed by the companion with an Ed25519 key pair. The companion holds the private key;
//! every edge that reads Redis holds only the public half (`record_public_keys`), so Redis write
//! access plus everything a gateway's configuration holds (hash key, API keys, Redis password)
//! still cannot make a token valid or change what one grants: a record needs the companion's
//! signature over its digest and its JSON (`"sig"`, its last field).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::digest::TokenDigest;

/// What the shipped configurations hold in place of the companion's public key: refused at load,
/// naming `record_public_keys`.
pub const PUBLIC_KEY_PLACEHOLDER: &str = "REPLACE-ME-with-multitokens-keygen-signing";

/// Most public keys an edge accepts at once (the current one and those of a rotation).
pub const MAX_RECORD_PUBLIC_KEYS: usize = 5;

/// What is signed before the digest and the record: says what the signature is for.
const SIGNATURE_CONTEXT: &[u8] = b"multitokens/record-signature/v1\0";
/// What precedes the signature in a signed record (after the record's last field).
const SIG_PREFIX: &str = "\"sig\":\"";
/// Bytes after the record's last field: `,"sig":"` + 86 base64url characters + `"}`.
const SIG_SUFFIX_LEN: usize = 1 + SIG_PREFIX.len() + 86 + 2;

/// Why a key is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigningKeyError {
    /// Not 32 bytes of unpadded base64url.
    #[error("must be 32 bytes as 43 base64url characters (multitokens keygen --signing)")]
    Encoding,
    /// A public key that is not a point of the curve (or a weak one).
    #[error("is not an Ed25519 public key")]
    NotAKey,
    /// More public keys than [`MAX_RECORD_PUBLIC_KEYS`].
    #[error("at most {MAX_RECORD_PUBLIC_KEYS} public keys are accepted")]
    TooMany,
}

fn decode32(text: &str) -> Result<[u8; 32], SigningKeyError> {
    let mut bytes = [0u8; 33];
    match URL_SAFE_NO_PAD.decode_slice(text.trim(), &mut bytes) {
        Ok(32) => Ok(bytes[..32].try_into().map_err(|_| SigningKeyError::Encoding)?),
        _ => Err(SigningKeyError::Encoding),
    }
}

/// The companion's signing key (the private half).
#[derive(Clone)]
pub struct RecordSigner {
    key: SigningKey,
}

impl RecordSigner {
    /// The key from its 32-byte seed, as 43 base64url characters.
    pub fn from_text(text: &str) -> Result<Self, SigningKeyError> {
        Ok(RecordSigner { key: SigningKey::from_bytes(&decode32(text)?) })
    }

    /// A new key from the OS random source: (private seed, public key), both as base64url text.
    pub fn generate() -> Result<(String, String), getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        let key = SigningKey::from_bytes(&seed);
        Ok((URL_SAFE_NO_PAD.encode(seed), URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())))
    }

    /// The public half, for the edges' `record_public_keys`.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public half as base64url text.
    pub fn public_key_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public_key().as_bytes())
    }

    /// Signs a record's JSON for storage under `digest`: appends `"sig"`.
    pub fn sign(&self, digest: &TokenDigest, json: String) -> String {
        let Some(body) = json.strip_suffix('}') else { return json };
        let message = [SIGNATURE_CONTEXT, &digest.0, body.as_bytes(), b"}"].concat();
        let signature = self.key.sign(&message);
        format!("{body},{SIG_PREFIX}{}\"}}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

impl std::fmt::Debug for RecordSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordSigner(public {})", self.public_key_text())
    }
}

/// Parses public keys (base64url text), at most [`MAX_RECORD_PUBLIC_KEYS`].
pub fn parse_public_keys(texts: &[String]) -> Result<Vec<VerifyingKey>, SigningKeyError> {
    if texts.len() > MAX_RECORD_PUBLIC_KEYS {
        return Err(SigningKeyError::TooMany);
    }
    texts
        .iter()
        .map(|t| {
            let key = VerifyingKey::from_bytes(&decode32(t)?).map_err(|_| SigningKeyError::NotAKey)?;
            if key.is_weak() {
                return Err(SigningKeyError::NotAKey);
            }
            Ok(key)
        })
        .collect()
}

/// Whether a stored value ends in a signature field at all (valid or not).
pub fn has_signature(value: &[u8]) -> bool {
    split_signature(value).is_some()
}

fn split_signature(value: &[u8]) -> Option<(&[u8], [u8; 64])> {
    let at = value.len().checked_sub(SIG_SUFFIX_LEN)?;
    let (body, suffix) = value.split_at(at);
    let encoded = suffix.strip_prefix(b",")?.strip_prefix(SIG_PREFIX.as_bytes())?.strip_suffix(b"\"}")?;
    let mut signature = [0u8; 66];
    match URL_SAFE_NO_PAD.decode_slice(encoded, &mut signature) {
        Ok(64) => signature[..64].try_into().ok().map(|s| (body, s)),
        _ => None,
    }
}

/// Whether a stored record carries a signature by one of `keys` over `digest` (strict
/// verification: no malleable or small-order signature passes).
pub fn verify(keys: &[VerifyingKey], digest: &TokenDigest, value: &[u8]) -> bool {
    let Some((body, signature)) = split_signature(value) else { return false };
    let signature = Signature::from_bytes(&signature);
    let message = [SIGNATURE_CONTEXT, &digest.0, body, b"}"].concat();
    keys.iter().any(|k| k.verify_strict(&message, &signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::TokenHasher;

    #[test]
    fn a_signature_binds_the_record_to_its_digest_and_the_key_pair() {
        let (seed, public) = RecordSigner::generate().unwrap();
        let signer = RecordSigner::from_text(&seed).unwrap();
        assert_eq!(signer.public_key_text(), public);
        let keys = parse_public_keys(&[public]).unwrap();
        let d = TokenHasher::new(None).digest("mt_a");
        let signed = signer.sign(&d, r#"{"id":"x","user":"alice"}"#.to_string());
        assert!(signed.starts_with(r#"{"id":"x","user":"alice","sig":""#), "{signed}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&signed).unwrap()["user"], "alice");
        assert!(verify(&keys, &d, signed.as_bytes()) && has_signature(signed.as_bytes()));
        // rewritten, moved, stripped, signed by another key pair, truncated, a flipped bit
        assert!(!verify(&keys, &d, signed.replace("alice", "admin").as_bytes()));
        assert!(!verify(&keys, &TokenHasher::new(None).digest("mt_b"), signed.as_bytes()));
        assert!(!verify(&keys, &d, br#"{"id":"x","user":"alice"}"#));
        let other = RecordSigner::from_text(&RecordSigner::generate().unwrap().0).unwrap();
        assert!(!verify(&keys, &d, other.sign(&d, r#"{"id":"x","user":"alice"}"#.into()).as_bytes()));
        assert!(!verify(&keys, &d, &signed.as_bytes()[1..]));
        let mut flipped = signed.clone().into_bytes();
        let n = flipped.len();
        flipped[n - 5] ^= 1;
        assert!(!verify(&keys, &d, &flipped));
        assert!(!verify(&[], &d, signed.as_bytes()), "no key: nothing verifies");
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(RecordSigner::from_text("short").err(), Some(SigningKeyError::Encoding));
        assert_eq!(parse_public_keys(&["!".repeat(43)]).err(), Some(SigningKeyError::Encoding));
        // the identity point is a weak key: anything would verify under it
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(parse_public_keys(&[URL_SAFE_NO_PAD.encode(identity)]).err(), Some(SigningKeyError::NotAKey));
        let public = RecordSigner::generate().unwrap().1;
        assert_eq!(parse_public_keys(&vec![public; 6]).err(), Some(SigningKeyError::TooMany));
    }
}
