//! DPoP at the edge (RFC 9449), its settings and the request it reads (the proof's rules and the
//! replay memory are core's, shared with the companion's ext_authz): a token bound to a key is accepted only with `Authorization: DPoP
//! <token>` and exactly one `DPoP` header holding a fresh proof made with that key for this
//! request. The proof is verified before the cache or a lookup is asked (a proof that does not
//! verify costs no lookup); its key is compared with the binding once the token's verdict is
//! known, cached or looked up; its `jti` is remembered for the window, per worker (per process
//! for the native module), and a second use refused.

use multitokens_core::dpop::nonce::NonceKey;
use multitokens_core::dpop::{self, Proof, Refusal, Seen};
use serde::Deserialize;

/// The `dpop` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopConfig {
    /// How far a proof's `iat` may be from now, seconds, either way; a proof's `jti` is
    /// remembered this long after its `iat`.
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// The scheme and authority clients reach the API at (`https://api.example.com`), for
    /// comparing `htu` behind another proxy or a TLS terminator; by default the request's own
    /// `:scheme` and `:authority` as Envoy saw them.
    #[serde(default)]
    pub public_origin: Option<String>,
    /// Most proof ids remembered; a proof past that while none has expired is refused.
    #[serde(default = "default_max_remembered")]
    pub max_remembered: usize,
    /// Require server nonces (RFC 9449 §8): a proof without a current one is answered 401
    /// `use_dpop_nonce` with a `DPoP-Nonce` to retry with. Needs `hash_key` (every edge with the
    /// same key accepts every edge's nonces).
    #[serde(default)]
    pub require_nonce: bool,
    /// How long a nonce's slot lasts, seconds (a nonce is accepted in its slot and the next).
    #[serde(default = "default_window_s")]
    pub nonce_lifetime_s: u64,
    /// The key nonces are made with, derived from `hash_key` at load.
    #[serde(skip)]
    pub nonce_key: Option<NonceKey>,
}

fn default_window_s() -> u64 {
    60
}

fn default_max_remembered() -> usize {
    100_000
}

impl Default for DpopConfig {
    fn default() -> Self {
        DpopConfig {
            window_s: default_window_s(),
            public_origin: None,
            max_remembered: default_max_remembered(),
            require_nonce: false,
            nonce_lifetime_s: default_window_s(),
            nonce_key: None,
        }
    }
}

impl DpopConfig {
    /// The replay memory's limits.
    pub fn limits(&self) -> dpop::Limits {
        dpop::Limits { window_s: self.window_s, max_remembered: self.max_remembered }
    }

    /// Checks the settings and derives the nonce key from `hash_key`, at load; the error names
    /// the field.
    pub fn prepare(&mut self, hash_key: Option<&str>) -> Result<(), String> {
        self.check()?;
        if self.require_nonce {
            if !(5..=3600).contains(&self.nonce_lifetime_s) {
                return Err("nonce_lifetime_s: 5 to 3600".into());
            }
            let key = hash_key.filter(|k| !k.is_empty()).ok_or("require_nonce: needs hash_key")?;
            self.nonce_key = Some(NonceKey::derive(key.as_bytes()));
        }
        Ok(())
    }

    /// With nonces required: `Err` with the nonce to retry with, unless the proof carries a
    /// current one.
    pub fn fresh_nonce(&self, proof: &Proof, now_ms: u64) -> Result<(), String> {
        let Some(key) = self.nonce_key.as_ref().filter(|_| self.require_nonce) else { return Ok(()) };
        let (now_s, lifetime) = (now_ms / 1000, self.nonce_lifetime_s);
        match &proof.nonce {
            Some(nonce) if key.accepts(nonce, now_s, lifetime) => Ok(()),
            _ => Err(key.issue(now_s, lifetime)),
        }
    }

    /// Checked at load; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=600).contains(&self.window_s) {
            return Err("window_s: 1 to 600".into());
        }
        if !(1..=10_000_000).contains(&self.max_remembered) {
            return Err("max_remembered: 1 to 10000000".into());
        }
        if let Some(origin) = &self.public_origin {
            let normalized = dpop::normalized_uri(origin);
            if normalized.as_deref() != Some(&format!("{}/", origin.trim_end_matches('/').to_ascii_lowercase())) {
                return Err("public_origin: scheme and authority only, e.g. https://api.example.com".into());
            }
        }
        Ok(())
    }
}

/// Verifies the request's proof (`proofs`: every `DPoP` header value) for `token`, sent with the
/// `DPoP` scheme, against the request as Envoy saw it or `public_origin`.
pub fn prove(
    config: &DpopConfig,
    proofs: &[&[u8]],
    seen: Seen<'_>,
    token: &str,
    now_ms: u64,
) -> Result<Proof, Refusal> {
    dpop::prove(proofs, seen, config.public_origin.as_deref(), token, now_ms / 1000, config.window_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitokens_core::dpop::{is_dpop_scheme, Possession, SeenProofs, Thumbprint};

    fn proof(jti: &str, key: u8) -> Possession {
        Possession::Proven(Proof { jkt: Thumbprint([key; 32]), jti: jti.into(), iat: 1_000, nonce: None })
    }

    #[test]
    fn a_bound_token_needs_a_proof_of_its_key_used_once() {
        let config = DpopConfig::default();
        let mut seen = SeenProofs::default();
        let key = Some(Thumbprint([7; 32]));
        assert_eq!(seen.check(config.limits(), None, &Possession::Bearer, 1_000_000), Ok(()), "unbound: as today");
        assert_eq!(seen.check(config.limits(), key, &Possession::Bearer, 1_000_000), Err(Refusal::NotBearer));
        assert_eq!(seen.check(config.limits(), key, &proof("a", 8), 1_000_000), Err(Refusal::Proof), "another key");
        assert_eq!(seen.check(config.limits(), key, &proof("a", 7), 1_000_000), Ok(()));
        assert_eq!(seen.check(config.limits(), key, &proof("a", 7), 1_030_000), Err(Refusal::Proof), "replayed");
        assert_eq!(seen.check(config.limits(), key, &proof("b", 7), 1_030_000), Ok(()));
        // forgotten after iat + window, when a replay is refused as stale anyway
        assert_eq!(seen.check(config.limits(), key, &proof("c", 7), 1_061_000), Ok(()));
        assert_eq!(seen.len(), 2, "a is forgotten, b and c are not");
        let small = DpopConfig { max_remembered: 1, ..DpopConfig::default() };
        let mut full = SeenProofs::default();
        assert_eq!(full.check(small.limits(), key, &proof("x", 7), 1_000_000), Ok(()));
        assert_eq!(full.check(small.limits(), key, &proof("y", 7), 1_000_000), Err(Refusal::Proof), "full: refused");
    }

    #[test]
    fn the_scheme_and_the_settings_are_read_strictly() {
        assert!(is_dpop_scheme(b"DPoP abc") && is_dpop_scheme(b"dpop\tabc") && !is_dpop_scheme(b"Bearer abc"));
        assert!(!is_dpop_scheme(b"DPoPx abc"));
        assert_eq!(DpopConfig { window_s: 0, ..DpopConfig::default() }.check(), Err("window_s: 1 to 600".into()));
        for bad in ["https://api.example.com/v1", "api.example.com", "https://u@h", "ftp://h"] {
            let c = DpopConfig { public_origin: Some(bad.into()), ..DpopConfig::default() };
            assert!(c.check().unwrap_err().starts_with("public_origin"), "{bad}");
        }
        let c = DpopConfig { public_origin: Some("https://API.example.com:8443".into()), ..DpopConfig::default() };
        assert_eq!(c.check(), Ok(()));
        // two proofs, or one that is not a proof: refused
        let seen = Seen { method: b"GET", scheme: b"https", authority: b"h", path: b"/" };
        assert_eq!(prove(&DpopConfig::default(), &[b"a", b"b"], seen, "t", 0), Err(Refusal::Proof));
        assert_eq!(prove(&DpopConfig::default(), &[], seen, "t", 0), Err(Refusal::Proof));
        assert_eq!(prove(&DpopConfig::default(), &[b"x.y.z"], seen, "t", 0), Err(Refusal::Proof));
    }

    #[test]
    fn nonces_need_a_hash_key_and_a_proof_must_carry_a_current_one() {
        let mut c = DpopConfig { require_nonce: true, ..DpopConfig::default() };
        assert_eq!(c.prepare(None), Err("require_nonce: needs hash_key".into()));
        c.prepare(Some("a hash key")).unwrap();
        let proof = |nonce: Option<String>| Proof { jkt: Thumbprint([1; 32]), jti: "j".into(), iat: 1, nonce };
        let Err(nonce) = c.fresh_nonce(&proof(None), 1_000_000) else { panic!("a nonce is required") };
        assert_eq!(c.fresh_nonce(&proof(Some(nonce.clone())), 1_000_000), Ok(()));
        assert!(c.fresh_nonce(&proof(Some(nonce)), 1_000_000 + 130_000).is_err(), "two slots later");
        assert!(c.fresh_nonce(&proof(Some("made-up".into())), 1_000_000).is_err());
        assert_eq!(DpopConfig::default().fresh_nonce(&proof(None), 0), Ok(()), "off by default");
    }
}
