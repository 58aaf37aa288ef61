//! The server's hash keys during a rotation: the current one, which digests and seals everything
//! written, and the previous ones, still accepted until a sweep has re-keyed what they wrote.

use super::digest::{TokenDigest, TokenHasher};
use super::record::TokenRecord;
use super::signing::{self, RecordSigner};
use super::token::{Origin, TokenMac};
use ed25519_dalek::VerifyingKey;

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

/// Why a hash key is refused: it must carry at least 256 random bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "a hash key needs 256 random bits: at least 64 hex or 43 base64 characters, e.g. from `multitokens keygen` or \
     `openssl rand -base64 32`"
)]
pub struct WeakKey;

/// Checks that a hash key is written as 256 random bits or more: 64 or more hex digits, or 43 or
/// more base64 or base64url characters (padding aside), with the variety of random text (10 hex
/// digits, 20 base64 characters or more: a repeated pattern or a word is refused). The key's
/// text is what keys the HMACs, as before; this only refuses keys a dictionary could find,
/// which the public `<prefix>:keycheck` value would let anyone test offline.
pub fn check_key_strength(key: &str) -> Result<(), WeakKey> {
    let distinct = |text: &str| {
        let mut seen = [false; 256];
        text.bytes().for_each(|b| seen[b as usize] = true);
        seen.iter().filter(|s| **s).count()
    };
    let is_hex = key.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex && key.len() >= 64 && distinct(key) >= 10 {
        return Ok(());
    }
    let body = key.trim_end_matches('=');
    let is_base64 = body.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/-_".contains(&b));
    if is_base64 && body.len() >= 43 && distinct(body) >= 20 {
        return Ok(());
    }
    Err(WeakKey)
}

/// What the shipped configurations hold in place of a hash key: refused as weak, so a stack
/// started without putting a real key there fails at once, naming `hash_key`.
pub const HASH_KEY_PLACEHOLDER: &str = "REPLACE-ME-with-multitokens-keygen";

/// A new hash key: 32 bytes from the OS random source, as unpadded base64url (43 characters).
pub fn generate_hash_key() -> Result<String, getrandom::Error> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The current hash key and the previous ones still accepted.
#[derive(Clone, Debug)]
pub struct HashKeys {
    /// The current key first, then the previous ones in the order given.
    hashers: Vec<TokenHasher>,
    /// Keys a rotation has finished with (no record is stored under their digests any more), kept
    /// only so that the MACs of tokens minted under them still verify until those tokens expire.
    retired: Vec<TokenMac>,
    /// Honour records that carry no seal at all (an upgrade from a release before sealing).
    accept_unsealed: bool,
    /// The companion's record signing key (only the companion has one).
    signer: Option<RecordSigner>,
    /// Public keys whose signatures make a record valid; when any is set, an HMAC seal alone no
    /// longer does (the gateways hold the hash key it is derived from).
    verify_keys: Vec<VerifyingKey>,
    /// Honour HMAC-sealed records although signatures are required (while `rekey` signs them).
    accept_hmac_seals: bool,
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
        Ok(HashKeys { hashers, retired: Vec::new(), ..HashKeys::single(None) })
    }

    /// One key (or none): no rotation in progress.
    pub fn single(current: Option<&[u8]>) -> Self {
        HashKeys {
            hashers: vec![TokenHasher::new(current)],
            retired: Vec::new(),
            accept_unsealed: false,
            signer: None,
            verify_keys: Vec::new(),
            accept_hmac_seals: false,
        }
    }

    /// The same keys, with records signed by `signer` (the companion) and records signed by it or
    /// by any of `public` honoured, and from then on only those: an HMAC seal no longer suffices.
    pub fn with_record_keys(mut self, signer: Option<RecordSigner>, public: Vec<VerifyingKey>) -> Self {
        self.verify_keys = signer.iter().map(RecordSigner::public_key).chain(public).collect();
        self.verify_keys.dedup();
        self.signer = signer;
        self
    }

    /// The same keys, still honouring HMAC-sealed records while `accept` although signatures are
    /// required: the upgrade to signed records, until `multitokens rekey` has signed them all.
    pub fn accepting_hmac_seals(mut self, accept: bool) -> Self {
        self.accept_hmac_seals = accept;
        self
    }

    /// Whether records are signed when written (the companion has a signing key).
    pub fn signs_records(&self) -> bool {
        self.signer.is_some()
    }

    /// The record signing key, if this side has one.
    pub fn signer(&self) -> Option<&RecordSigner> {
        self.signer.as_ref()
    }

    /// Seals a record's JSON for storage under `digest`: signed with the signing key when there
    /// is one, else HMAC-sealed with the current hash key (unkeyed: unchanged).
    pub fn seal(&self, digest: &TokenDigest, json: String) -> String {
        match &self.signer {
            Some(signer) => signer.sign(digest, json),
            None => self.current().seal(digest, json),
        }
    }

    /// Whether a stored value carries a seal of either kind (an HMAC seal or a signature), valid or
    /// not: only a record with neither was written before sealing.
    pub fn carries_seal(value: &[u8]) -> bool {
        TokenHasher::has_seal(value) || crate::signing::has_signature(value)
    }

    /// The same keys, with `retired` ones whose tokens' MACs still verify: after a rotation's
    /// sweep, the old key moves here from the previous keys until the tokens minted under it have
    /// expired (no digest is tried under it; a record re-keyed by the sweep is found under the
    /// current one).
    pub fn retiring(mut self, retired: &[&[u8]]) -> Result<Self, HashKeysError> {
        if retired.len() > MAX_PREVIOUS_HASH_KEYS {
            return Err(HashKeysError::TooMany);
        }
        if retired.iter().any(|k| k.is_empty()) {
            return Err(HashKeysError::Empty);
        }
        self.retired = retired.iter().filter_map(|k| TokenMac::from_hash_key(k)).collect();
        Ok(self)
    }

    /// The same keys, also honouring records with no seal at all while `accept` (during an upgrade
    /// from a release before sealing, until `multitokens rekey --seal-unsealed` has run). A
    /// record with a seal that does not verify is refused either way.
    pub fn accepting_unsealed(mut self, accept: bool) -> Self {
        self.accept_unsealed = accept;
        self
    }

    /// Whether a record stored under `digest` may be honoured: signed by one of the public keys
    /// (when any is set), or else sealed by one of the hash keys; or unsealed while those are
    /// accepted.
    pub fn accepts(&self, digest: &TokenDigest, value: &[u8]) -> bool {
        self.sealed_by(digest, value).is_some()
            || (self.accept_unsealed && !TokenHasher::has_seal(value) && !signing::has_signature(value))
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

    /// Who minted a well-formed token: `Issued` when its MAC verifies under one of the keys (the
    /// previous ones too: tokens minted before a rotation stay valid), `Forged` when it is a
    /// version 3 token none of them minted, `Unchecked` for an old-format token or without keys.
    pub fn origin(&self, token: &str, prefix: &str) -> Origin {
        let mut origin = Origin::Unchecked;
        for mac in self.hashers.iter().filter_map(TokenHasher::token_mac).chain(&self.retired) {
            match mac.origin(token, prefix) {
                Origin::Issued => return Origin::Issued,
                other => origin = other,
            }
        }
        origin
    }

    /// Which hash key a valid record's digest is under (0: the current one), `None` if the record
    /// is not validly sealed or signed. With public keys set, a signature decides (and the
    /// record's `token_hash` tells the key); an HMAC seal only while those are accepted.
    pub fn sealed_by(&self, digest: &TokenDigest, value: &[u8]) -> Option<usize> {
        if !self.verify_keys.is_empty() {
            if signing::verify(&self.verify_keys, digest, value) {
                return Some(self.key_of_digest(digest, value).unwrap_or(0));
            }
            if !self.accept_hmac_seals {
                return None;
            }
        }
        self.hashers.iter().position(|h| h.verify_seal(digest, value))
    }

    /// Which hash key made `digest`, from the `token_hash` a record keeps (`None` without one).
    fn key_of_digest(&self, digest: &TokenDigest, value: &[u8]) -> Option<usize> {
        let hash = TokenRecord::from_json(value).ok()?.token_hash.and_then(|h| TokenDigest::from_hex(&h))?;
        self.hashers.iter().position(|h| h.digest_of_hash(&hash.0) == *digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_first_previous_after_and_limits_checked() {
        let keys = HashKeys::new(Some(b"new"), &[b"old"]).unwrap();
        let t = crate::token::generate("mt", "u").unwrap();
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
    fn with_public_keys_only_signed_records_are_honoured_and_the_hash_key_cannot_forge_one() {
        let key = b"the-hash-key".as_slice();
        let (seed, public) = RecordSigner::generate().unwrap();
        let public = signing::parse_public_keys(&[public]).unwrap();
        let companion =
            HashKeys::single(Some(key)).with_record_keys(Some(RecordSigner::from_text(&seed).unwrap()), vec![]);
        let edge = HashKeys::single(Some(key)).with_record_keys(None, public);
        let t = companion.current().mint("mt", "u").unwrap();
        let d = companion.current().digest(&t);
        let json = TokenRecord {
            id: "i".into(),
            user: "u".into(),
            device: String::new(),
            created: 1,
            scopes: vec![],
            expires_at: None,
            lifetime_ms: None,
            token_hash: Some(hex::encode(crate::digest::token_hash(&t))),
            suspended: false,
            cnf: None,
        }
        .to_json()
        .unwrap();
        let signed = companion.seal(&d, json.clone());
        assert!(edge.accepts(&d, signed.as_bytes()) && companion.accepts(&d, signed.as_bytes()));
        assert_eq!(edge.sealed_by(&d, signed.as_bytes()), Some(0));
        // everything a gateway holds: the hash key, so an HMAC seal; not enough any more
        let hmac_sealed = edge.current().seal(&d, json.clone());
        assert!(!edge.accepts(&d, hmac_sealed.as_bytes()) && !companion.accepts(&d, hmac_sealed.as_bytes()));
        assert!(!edge.clone().accepting_unsealed(true).accepts(&d, hmac_sealed.as_bytes()), "a seal is not 'no seal'");
        assert!(!edge.clone().accepting_unsealed(true).accepts(&d, signed.replace("\"u\"", "\"root\"").as_bytes()));
        // either kind of seal, broken or not, is a seal: only a record with none was written before sealing
        let tampered = signed.replace("\"u\"", "\"root\"");
        for sealed in [signed.as_str(), hmac_sealed.as_str(), tampered.as_str()] {
            assert!(HashKeys::carries_seal(sealed.as_bytes()), "{sealed}");
        }
        assert!(!HashKeys::carries_seal(json.as_bytes()));
        // the upgrade: HMAC seals honoured while accepted
        assert!(edge.clone().accepting_hmac_seals(true).accepts(&d, hmac_sealed.as_bytes()));
        // during a rotation the signed record's digest is told by its token_hash
        let rotating =
            HashKeys::new(Some(b"newer-key"), &[key]).unwrap().with_record_keys(None, edge.verify_keys.clone());
        assert_eq!(rotating.sealed_by(&d, signed.as_bytes()), Some(1));
    }

    #[test]
    fn keys_weaker_than_256_random_bits_are_refused() {
        for _ in 0..200 {
            assert_eq!(check_key_strength(&generate_hash_key().unwrap()), Ok(()));
        }
        let hex: String = (0..32u8).map(|i| format!("{:02x}", i.wrapping_mul(37).wrapping_add(11))).collect();
        assert_eq!(check_key_strength(&hex), Ok(()));
        assert_eq!(check_key_strength("Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5Cg=="), Ok(()), "padded base64");
        for weak in [
            "",
            "pepper",
            "demo-hash-key-change-me",
            &"a".repeat(64),
            &"0123456789abcdef".repeat(2),
            &"abcdefgh".repeat(8),
            "correct horse battery staple correct horse battery staple",
            &generate_hash_key().unwrap()[..40],
            HASH_KEY_PLACEHOLDER,
        ] {
            assert_eq!(check_key_strength(weak), Err(WeakKey), "{weak:?}");
        }
        assert!(WeakKey.to_string().contains("multitokens keygen"));
    }

    #[test]
    fn tokens_minted_under_a_previous_key_stay_issued_through_a_rotation() {
        let (old, new) = (b"old-key".as_slice(), b"new-key".as_slice());
        let before = HashKeys::single(Some(old));
        let t = before.current().mint("mt", "u").unwrap();
        assert_eq!(before.origin(&t, "mt"), Origin::Issued);
        let rotating = HashKeys::new(Some(new), &[old]).unwrap();
        assert_eq!(rotating.origin(&t, "mt"), Origin::Issued, "minted under the previous key");
        assert_eq!(rotating.origin(&rotating.current().mint("mt", "u").unwrap(), "mt"), Origin::Issued);
        let after = HashKeys::single(Some(new));
        assert_eq!(after.origin(&t, "mt"), Origin::Forged, "once the old key is dropped, its tokens are not ours");
        let retired = HashKeys::single(Some(new)).retiring(&[old]).unwrap();
        assert_eq!(retired.origin(&t, "mt"), Origin::Issued, "retired, not dropped: its tokens still pass the edge");
        assert_eq!(retired.digests(&t).len(), 1, "and no digest is tried under it");
        let forged = crate::token::forge("mt", "u").unwrap();
        assert_eq!(rotating.origin(&forged, "mt"), Origin::Forged);
        let unkeyed = HashKeys::single(None);
        assert_eq!(unkeyed.origin(&t, "mt"), Origin::Unchecked, "no key: nothing to check with");
        assert_eq!(rotating.origin(&crate::token::generate("mt", "u").unwrap(), "mt"), Origin::Unchecked);
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
