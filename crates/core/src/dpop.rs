//! DPoP (RFC 9449): tokens bound to a key pair the client holds. A bound token's record keeps the
//! key's JWK SHA-256 thumbprint (RFC 7638, `cnf.jkt`); every request with it must carry a proof,
//! a JWT signed with that key over the request's method and URI and the token's hash. Pure
//! functions: the edge and the companion check proofs alike.
//!
//! Algorithms: `ES256` (P-256, what browsers' WebCrypto makes as a non-extractable key),
//! Ed25519 (as `EdDSA` or by its fully-specified name `Ed25519`, RFC 9864, which panva's `dpop`
//! client sends), and, in builds with the `ring` feature (the native module, the companion),
//! `RS256` and `PS256` with 2048- to 8192-bit keys, which verify fastest ([`key`] says why the
//! wasm builds leave them out). Never `none` or an HMAC algorithm: a shared secret proves
//! nothing about a key pair.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};

/// The longest proof read (bytes): a proof with an EC key is about 600.
pub const MAX_PROOF_LEN: usize = 4096;
/// The `WWW-Authenticate` scheme, and the `Authorization` scheme a bound token is sent with.
pub const SCHEME: &str = "DPoP";
/// The request header carrying the proof.
pub const PROOF_HEADER: &str = "dpop";

/// Why a proof is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Not three base64url parts of JSON, too long, or a claim of the wrong type.
    #[error("the DPoP proof is not a well-formed JWT")]
    Malformed,
    /// `typ` is not `dpop+jwt`.
    #[error("the DPoP proof's typ is not dpop+jwt")]
    Type,
    /// `alg` is not ES256, EdDSA or Ed25519 (`none`, HMAC, RSA, anything else).
    #[error("the DPoP proof's alg is not ES256, EdDSA or Ed25519")]
    Algorithm,
    /// The `jwk` header is missing, not a public key of `alg`'s kind, or holds a private key.
    #[error("the DPoP proof's jwk is not a public key for its alg")]
    Key,
    /// The signature does not verify with the `jwk`.
    #[error("the DPoP proof's signature does not verify")]
    Signature,
    /// `htm` is not the request's method.
    #[error("the DPoP proof's htm is not the request's method")]
    Method,
    /// `htu` is not the request's URI.
    #[error("the DPoP proof's htu is not the request's URI")]
    Uri,
    /// `iat` is outside the accepted window.
    #[error("the DPoP proof's iat is outside the accepted window")]
    Stale,
    /// `ath` is missing or not the hash of the token sent with it.
    #[error("the DPoP proof's ath is not the token's hash")]
    TokenHash,
    /// `jti` is missing, empty or too long.
    #[error("the DPoP proof has no usable jti")]
    Jti,
}

/// What a proof is checked against: the request it came with.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The request's method.
    pub method: &'a str,
    /// The request's URI: scheme, authority and path (a query or fragment is ignored).
    pub uri: &'a str,
    /// The access token sent with the proof (`None` at a login, where there is none yet).
    pub token: Option<&'a str>,
    /// Now, Unix seconds.
    pub now_s: u64,
    /// How far `iat` may be from now, seconds, either way.
    pub window_s: u64,
}

/// A proof that verified: the key it was made with and its unique id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The JWK SHA-256 thumbprint of the proof's key.
    pub jkt: Thumbprint,
    /// The proof's `jti`, to refuse a replay within the window.
    pub jti: String,
    /// Its `iat`, Unix seconds.
    pub iat: u64,
    /// The server nonce it carries (`nonce`), if any: see [`nonce`].
    pub nonce: Option<String>,
}

/// A JWK SHA-256 thumbprint (RFC 7638).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Thumbprint(pub [u8; 32]);

impl Thumbprint {
    /// As `cnf.jkt` carries it: 43 base64url characters.
    pub fn to_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// From `cnf.jkt`'s form; `None` for anything else.
    pub fn from_b64(text: &str) -> Option<Thumbprint> {
        if text.len() != 43 {
            return None;
        }
        URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok().map(Thumbprint)
    }
}

use key::Jwk;
pub use key::ALGORITHMS;

/// The `WWW-Authenticate` challenge refusing a DPoP request: `error` is `invalid_dpop_proof` (the
/// proof), `invalid_token` (a bound token sent as a bearer token) or `use_dpop_nonce`.
pub fn challenge(error: &str) -> String {
    format!(r#"{SCHEME} algs="{ALGORITHMS}", error="{error}""#)
}

/// `ath`: the base64url SHA-256 of the access token.
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

#[derive(Deserialize)]
struct Header {
    typ: String,
    alg: String,
    jwk: Jwk,
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
    htm: String,
    htu: String,
    iat: u64,
    #[serde(default)]
    ath: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// The URI without query and fragment, its scheme and host lower-cased and a default port
/// dropped (RFC 3986 §6.2.2–6.2.3), for comparing `htu`; `None` if it is not an absolute
/// `http`/`https` URI.
pub fn normalized_uri(uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    if let Some(stripped) = authority.strip_suffix(default) {
        authority = stripped.to_string();
    }
    Some(format!("{scheme}://{authority}{path}"))
}

fn part<T: serde::de::DeserializeOwned>(b64: &str) -> Result<T, ProofError> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| ProofError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| ProofError::Malformed)
}

/// Checks a proof (the `DPoP` header's bytes) per RFC 9449 §4.3 against `request`: form, `typ`,
/// `alg`, the public `jwk`, the signature, `htm`, `htu`, `iat`, `ath` (when a token is sent) and
/// that `jti` is there. Whether its key is the one the token is bound to, and whether its `jti`
/// was seen before, are the caller's to check.
pub fn verify(proof: &[u8], request: &Request<'_>) -> Result<Proof, ProofError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::Malformed);
    }
    let text = std::str::from_utf8(proof).map_err(|_| ProofError::Malformed)?;
    let mut parts = text.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(ProofError::Malformed);
    };
    let header: Header = part(h)?;
    if !header.typ.eq_ignore_ascii_case("dpop+jwt") {
        return Err(ProofError::Type);
    }
    if !ALGORITHMS.split(' ').any(|a| a == header.alg) {
        return Err(ProofError::Algorithm);
    }
    let (key, jkt) = header.jwk.key(&header.alg)?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| ProofError::Malformed)?;
    if !key.verifies(&proof[..h.len() + 1 + c.len()], &signature) {
        return Err(ProofError::Signature);
    }
    let claims: Claims = part(c)?;
    if claims.htm != request.method {
        return Err(ProofError::Method);
    }
    match (normalized_uri(&claims.htu), normalized_uri(request.uri)) {
        (Some(a), Some(b)) if a == b => {}
        _ => return Err(ProofError::Uri),
    }
    if claims.iat.abs_diff(request.now_s) > request.window_s {
        return Err(ProofError::Stale);
    }
    if let Some(token) = request.token {
        let expected = token_hash(token);
        let given = claims.ath.as_deref().unwrap_or_default().as_bytes();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(given, expected.as_bytes())) {
            return Err(ProofError::TokenHash);
        }
    }
    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err(ProofError::Jti);
    }
    Ok(Proof { jkt, jti: claims.jti, iat: claims.iat, nonce: claims.nonce })
}

/// How long and how many proof ids are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The `iat` window, seconds: an id is remembered until its `iat` plus this.
    pub window_s: u64,
    /// Most ids remembered.
    pub max_remembered: usize,
}

/// What a request's credential says about possession, read before its verdict is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Possession {
    /// Sent as a bearer token (any other scheme, or the cookie): a bound token is refused.
    Bearer,
    /// Sent with the `DPoP` scheme and a proof that verified for this request and token.
    Proven(Proof),
}

/// Why possession is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No proof, two proofs, or one that does not verify, is not of the bound key or was used
    /// before: `error="invalid_dpop_proof"`.
    Proof,
    /// A bound token sent as a bearer token: `error="invalid_token"`.
    NotBearer,
}

/// Whether an `Authorization` value uses the `DPoP` scheme.
pub fn is_dpop_scheme(value: &[u8]) -> bool {
    let scheme = value.trim_ascii_start().split(|b| *b == b' ' || *b == b'\t').next().unwrap_or_default();
    scheme.eq_ignore_ascii_case(SCHEME.as_bytes())
}

/// The request a proof is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Seen<'a> {
    /// `:method`.
    pub method: &'a [u8],
    /// `:scheme`.
    pub scheme: &'a [u8],
    /// `:authority`.
    pub authority: &'a [u8],
    /// `:path` (its query is ignored).
    pub path: &'a [u8],
}

/// Verifies the request's proof (`proofs`: every `DPoP` header value) for `token`, sent with the
/// `DPoP` scheme, against the request as the edge saw it (or, behind a proxy that changes
/// them, with the scheme and authority of `public_origin`).
pub fn prove(
    proofs: &[&[u8]],
    seen: Seen<'_>,
    public_origin: Option<&str>,
    token: &str,
    now_s: u64,
    window_s: u64,
) -> Result<Proof, Refusal> {
    let [proof] = proofs else { return Err(Refusal::Proof) };
    let text = |b: &[u8]| std::str::from_utf8(b).map(str::to_string).map_err(|_| Refusal::Proof);
    let origin = match public_origin {
        Some(origin) => origin.trim_end_matches('/').to_string(),
        None => format!("{}://{}", text(seen.scheme)?, text(seen.authority)?),
    };
    let uri = format!("{origin}{}", text(seen.path)?);
    let method = text(seen.method)?;
    let request = Request { method: &method, uri: &uri, token: Some(token), now_s, window_s };
    verify(proof, &request).map_err(|_| Refusal::Proof)
}

/// Proof ids seen within the window, oldest first: a proof is accepted once.
#[derive(Debug, Default)]
pub struct SeenProofs {
    /// 128 bits of SHA-256 over the key and the `jti`: about 50 bytes per id remembered.
    ids: HashSet<u128>,
    order: VecDeque<(u64, u128)>,
}

impl SeenProofs {
    /// Checks `possession` against the key a token is bound to, and remembers the proof's id
    /// until `iat` + the window: `Ok` if the request may go on.
    pub fn check(
        &mut self,
        limits: Limits,
        bound_to: Option<Thumbprint>,
        possession: &Possession,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let (Some(key), proof) = (bound_to, possession) else { return Ok(()) };
        let Possession::Proven(proof) = proof else { return Err(Refusal::NotBearer) };
        if proof.jkt != key {
            return Err(Refusal::Proof);
        }
        let now_s = now_ms / 1000;
        while self.order.front().is_some_and(|(until, _)| *until < now_s) {
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
        // the id is remembered per key: another client cannot spend this one's ids
        let hash = Sha256::new().chain_update(key.0).chain_update(proof.jti.as_bytes()).finalize();
        let id = hash.first_chunk::<16>().map_or(0, |b| u128::from_le_bytes(*b));
        if self.ids.len() >= limits.max_remembered || !self.ids.insert(id) {
            return Err(Refusal::Proof);
        }
        self.order.push_back((proof.iat.max(now_s) + limits.window_s, id));
        Ok(())
    }

    /// Proof ids remembered now.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

mod key;
pub mod nonce;

#[cfg(test)]
mod tests;
