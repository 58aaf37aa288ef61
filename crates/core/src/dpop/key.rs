//! A proof's `jwk`: which keys and algorithms are accepted, the key's RFC 7638 thumbprint, and
//! the signature check. Builds with the `ring` feature (native: the dynamic module, the companion)
//! verify with ring's assembly, and accept RSA keys, whose verification is the cheapest of all
//! (about 18 µs, against 51 for P-256 and 33 for Ed25519 with ring on the benchmark machine); the
//! wasm builds verify with RustCrypto's `p256` and `ed25519-dalek` and refuse RSA, because a
//! pure-Rust RSA check costs 115 µs natively and several times that under V8.

use super::{ProofError, Thumbprint};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The algorithms proofs may use, as the challenge lists them.
#[cfg(feature = "ring")]
pub const ALGORITHMS: &str = "ES256 EdDSA Ed25519 RS256 PS256";
/// The algorithms proofs may use, as the challenge lists them.
#[cfg(not(feature = "ring"))]
pub const ALGORITHMS: &str = "ES256 EdDSA Ed25519";

/// A JWK as a proof's header carries it.
#[derive(Deserialize)]
pub(super) struct Jwk {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    /// A private key (EC, OKP and RSA private keys all have `d`): refused.
    #[serde(default)]
    d: Option<serde::de::IgnoredAny>,
}

/// A public key checked against its algorithm.
pub(super) enum Key {
    /// P-256, uncompressed SEC1 point.
    P256(Vec<u8>),
    Ed25519([u8; 32]),
    /// RSA modulus and exponent (big-endian), PSS or PKCS #1 v1.5 padding.
    #[cfg_attr(not(feature = "ring"), allow(dead_code))]
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        pss: bool,
    },
}

fn decoded(b64: Option<&String>) -> Result<Vec<u8>, ProofError> {
    b64.and_then(|v| URL_SAFE_NO_PAD.decode(v).ok()).ok_or(ProofError::Key)
}

fn thumbprint(canonical: String) -> Thumbprint {
    Thumbprint(Sha256::digest(canonical).into())
}

impl Jwk {
    /// The key for `alg` and its thumbprint: RFC 7638's required members in lexicographic order,
    /// no whitespace; the values are base64url (checked by decoding), so they need no escaping.
    pub(super) fn key(&self, alg: &str) -> Result<(Key, Thumbprint), ProofError> {
        if self.d.is_some() {
            return Err(ProofError::Key);
        }
        let (x, y) = (decoded(self.x.as_ref()), decoded(self.y.as_ref()));
        match (alg, self.kty.as_str(), self.crv.as_deref()) {
            ("ES256", "EC", Some("P-256")) => {
                let (xb, yb) = (x?, y?);
                let point: [[u8; 32]; 2] =
                    [xb.try_into().map_err(|_| ProofError::Key)?, yb.try_into().map_err(|_| ProofError::Key)?];
                let encoded = p256::EncodedPoint::from_affine_coordinates(&point[0].into(), &point[1].into(), false);
                // a point not on the curve is no key, whichever verifier runs
                p256::ecdsa::VerifyingKey::from_encoded_point(&encoded).map_err(|_| ProofError::Key)?;
                let (xs, ys) = (self.x.as_deref().unwrap_or_default(), self.y.as_deref().unwrap_or_default());
                let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{xs}","y":"{ys}"}}"#);
                Ok((Key::P256(encoded.as_bytes().to_vec()), thumbprint(canonical)))
            }
            ("EdDSA" | "Ed25519", "OKP", Some("Ed25519")) if self.y.is_none() => {
                let xb: [u8; 32] = x?.try_into().map_err(|_| ProofError::Key)?;
                ed25519_dalek::VerifyingKey::from_bytes(&xb).map_err(|_| ProofError::Key)?;
                let canonical =
                    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, self.x.as_deref().unwrap_or_default());
                Ok((Key::Ed25519(xb), thumbprint(canonical)))
            }
            ("RS256" | "PS256", "RSA", None) if cfg!(feature = "ring") && self.x.is_none() => {
                let (n, e) = (decoded(self.n.as_ref())?, decoded(self.e.as_ref())?);
                let (ns, es) = (self.n.as_deref().unwrap_or_default(), self.e.as_deref().unwrap_or_default());
                let canonical = format!(r#"{{"e":"{es}","kty":"RSA","n":"{ns}"}}"#);
                Ok((Key::Rsa { n, e, pss: alg == "PS256" }, thumbprint(canonical)))
            }
            _ => Err(ProofError::Key),
        }
    }
}

impl Key {
    /// Whether `signature` (JWS form: `r || s` for ECDSA) verifies over `signed`.
    #[cfg(feature = "ring")]
    pub(super) fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        use ring::signature as sig;
        match self {
            Key::P256(point) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point).verify(signed, signature).is_ok()
            }
            Key::Ed25519(key) => sig::UnparsedPublicKey::new(&sig::ED25519, key).verify(signed, signature).is_ok(),
            Key::Rsa { n, e, pss } => {
                let params = if *pss { &sig::RSA_PSS_2048_8192_SHA256 } else { &sig::RSA_PKCS1_2048_8192_SHA256 };
                sig::RsaPublicKeyComponents { n, e }.verify(params, signed, signature).is_ok()
            }
        }
    }

    /// Whether `signature` (JWS form: `r || s` for ECDSA) verifies over `signed`.
    #[cfg(not(feature = "ring"))]
    pub(super) fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        match self {
            Key::P256(point) => {
                use p256::ecdsa::signature::Verifier;
                let Ok(key) = p256::ecdsa::VerifyingKey::from_sec1_bytes(point) else { return false };
                p256::ecdsa::Signature::from_slice(signature).is_ok_and(|s| key.verify(signed, &s).is_ok())
            }
            Key::Ed25519(key) => {
                let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(key) else { return false };
                <[u8; 64]>::try_from(signature)
                    .is_ok_and(|s| key.verify_strict(signed, &ed25519_dalek::Signature::from_bytes(&s)).is_ok())
            }
            Key::Rsa { .. } => false,
        }
    }
}
