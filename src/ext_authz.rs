//! The decision behind Envoy's own `ext_authz` filter, one for both of its transports (HTTP:
//! `/v1/ext_authz`; gRPC: `envoy.service.auth.v3.Authorization/Check`), and the same the filter
//! makes for a header token: a valid token's identity in the identity headers (the client's own
//! values replaced or removed), the credential removed; DRF's 401 bodies with a challenge otherwise; 503 when
//! the store cannot answer (an answer: Envoy's `failure_mode_allow` decides nothing here).

use super::error::StoreError;
use super::store::TokenStore;
use multitokens_core::contract;
use multitokens_core::credential::{extract, Credential};

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
    },
}

fn unauthorized(detail: &'static str, error: Option<&str>) -> Check {
    Check::Deny { status: 401, detail, challenge: Some(contract::challenge(REALM, error, None)) }
}

/// Checks the request's `Authorization` values (every one the client sent).
pub async fn check(store: &TokenStore, authorization: &[&[u8]]) -> Check {
    let schemes: Vec<String> = contract::DEFAULT_SCHEMES.iter().map(|s| s.to_string()).collect();
    let token = match extract(authorization, &[], &schemes, None) {
        Credential::Token(t, _) => t,
        Credential::Missing => return unauthorized(contract::NOT_PROVIDED, None),
        Credential::Empty | Credential::Malformed => {
            return unauthorized(contract::INVALID_TOKEN, Some("invalid_token"))
        }
    };
    match store.whoami(token).await {
        Ok(info) => Check::Allow(contract::identity_headers(&info.user, &info.device, &info.scopes, &info.id)),
        Err(StoreError::InvalidToken) => unauthorized(contract::INVALID_TOKEN, Some("invalid_token")),
        Err(e) => {
            tracing::error!(error = %e, "ext_authz check: token store failure");
            Check::Deny { status: 503, detail: contract::AUTH_UNAVAILABLE, challenge: None }
        }
    }
}
