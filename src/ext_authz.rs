//! The decision behind Envoy's own `ext_authz` filter, one for both of its transports (HTTP:
//! `/v1/ext_authz`; gRPC: `envoy.service.auth.v3.Authorization/Check`), and the same the filter
//! makes for a header token: a valid token's identity in the identity headers (the client's own
//! values replaced or removed), the credential removed; DRF's 401 bodies with a challenge otherwise; 503 when
//! the store cannot answer (an answer: Envoy's `failure_mode_allow` decides nothing here).

use super::error::StoreError;
use super::store::TokenStore;
use multitokens_core::contract;
use multitokens_core::credential::{extract, Credential};
use multitokens_core::dpop::nonce::NonceKey;
use multitokens_core::dpop::{self, is_dpop_scheme, Limits, Possession, Refusal, Seen, SeenProofs, Thumbprint};
use std::sync::{Mutex, OnceLock};

/// How far a proof's `iat` may be from now, seconds (the filter's default `dpop.window_s`).
pub const DPOP_WINDOW_S: u64 = 60;

/// The key of the DPoP server nonces this process requires (`dpop_require_nonce`), if any.
static NONCES: OnceLock<NonceKey> = OnceLock::new();

/// Requires DPoP server nonces in every check from now on (set once, at `serve`).
pub fn require_nonces(key: NonceKey) {
    let _ = NONCES.set(key);
}

/// Proof ids this process has seen (one memory for both transports).
fn seen_proofs() -> &'static Mutex<SeenProofs> {
    static SEEN: OnceLock<Mutex<SeenProofs>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

/// What a check reads of the request Envoy asks about.
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    /// Every `Authorization` value the client sent.
    pub authorization: &'a [&'a [u8]],
    /// Every `DPoP` value the client sent.
    pub dpop: &'a [&'a [u8]],
    /// The request as the client sent it, for a DPoP proof's `htm` and `htu`.
    pub seen: Seen<'a>,
}

/// The realm of the challenge on a refusal.
pub const REALM: &str = "multitokens";

/// Request headers removed before the upstream on an allowed request: the credential, and the one
/// identity header a check never sets (it reads header tokens only, which the filter does not
/// label either), so that a client's own value never reaches the upstream.
pub const REMOVED_HEADERS: [&str; 2] = ["authorization", contract::CREDENTIAL_HEADER];

/// The answer to one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Valid: set these headers on the request (replacing any value a client sent) and remove
    /// [`REMOVED_HEADERS`].
    Allow(Vec<(&'static str, String)>),
    /// Refused: the status, DRF's `detail` and, for 401, the `WWW-Authenticate` challenge.
    Deny {
        /// HTTP status for the client.
        status: u16,
        /// The body's `detail`.
        detail: &'static str,
        /// The challenge, on 401.
        challenge: Option<String>,
        /// A DPoP server nonce to make the proof again with (`use_dpop_nonce`), for `DPoP-Nonce`.
        nonce: Option<String>,
    },
}

fn unauthorized(detail: &'static str, error: Option<&str>) -> Check {
    Check::Deny { status: 401, detail, challenge: Some(contract::challenge(REALM, error, None)), nonce: None }
}

fn dpop_refused(refusal: Refusal) -> Check {
    let error = match refusal {
        Refusal::Proof => "invalid_dpop_proof",
        Refusal::NotBearer => "invalid_token",
    };
    Check::Deny { status: 401, detail: contract::INVALID_TOKEN, challenge: Some(dpop::challenge(error)), nonce: None }
}

/// Checks the request's credential as the filter does: a DPoP-bound token only with a proof of
/// its key for this request (verified before the store is asked), used once in this process.
pub async fn check(store: &TokenStore, asked: Asked<'_>) -> Check {
    let mut schemes: Vec<String> = contract::DEFAULT_SCHEMES.iter().map(|s| s.to_string()).collect();
    schemes.push("dpop".into());
    let authorization = asked.authorization;
    let token = match extract(authorization, &[], &schemes, None) {
        Credential::Token(t, _) => t,
        Credential::Missing => return unauthorized(contract::NOT_PROVIDED, None),
        Credential::Empty | Credential::Malformed => {
            return unauthorized(contract::INVALID_TOKEN, Some("invalid_token"))
        }
    };
    let now_s = crate::clock::now_secs();
    let possession = match authorization {
        [value] if is_dpop_scheme(value) => {
            match dpop::prove(asked.dpop, asked.seen, None, token, now_s, DPOP_WINDOW_S) {
                Ok(proof) => {
                    if let Some(key) = NONCES.get() {
                        if !proof.nonce.as_deref().is_some_and(|n| key.accepts(n, now_s, DPOP_WINDOW_S)) {
                            return Check::Deny {
                                status: 401,
                                detail: contract::INVALID_TOKEN,
                                challenge: Some(dpop::challenge("use_dpop_nonce")),
                                nonce: Some(key.issue(now_s, DPOP_WINDOW_S)),
                            };
                        }
                    }
                    Possession::Proven(proof)
                }
                Err(refusal) => return dpop_refused(refusal),
            }
        }
        _ => Possession::Bearer,
    };
    match store.whoami(token).await {
        Ok(info) => {
            let bound_to = info.dpop_jkt.as_deref().map(|j| Thumbprint::from_b64(j).unwrap_or(Thumbprint([0; 32])));
            let limits = Limits { window_s: DPOP_WINDOW_S, max_remembered: 100_000 };
            let checked = match seen_proofs().lock() {
                Ok(mut seen) => seen.check(limits, bound_to, &possession, now_s * 1000),
                Err(_) => Err(Refusal::Proof), // a panicked holder: refuse rather than forget
            };
            if let Err(refusal) = checked {
                return dpop_refused(refusal);
            }
            Check::Allow(contract::identity_headers(&info.user, &info.device, &info.scopes, &info.id))
        }
        Err(StoreError::InvalidToken) => unauthorized(contract::INVALID_TOKEN, Some("invalid_token")),
        Err(e) => {
            tracing::error!(error = %e, "ext_authz check: token store failure");
            Check::Deny { status: 503, detail: contract::AUTH_UNAVAILABLE, challenge: None, nonce: None }
        }
    }
}
