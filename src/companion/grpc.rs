//! Envoy's gRPC external authorization (`envoy.service.auth.v3.Authorization/Check`), for
//! teams that cannot run wasm: the same decision as `/v1/ext_authz` (and the filter), over
//! gRPC. Served on the API's own port (HTTP/2 cleartext, which Envoy's gRPC client speaks).
//!
//! Valid: OK, the identity in `x-multitokens-*` headers for the upstream, the credential removed.
//! Missing or invalid: 401 with DRF's body and a `WWW-Authenticate` challenge, as the filter
//! answers. Store unavailable: 503 (Envoy's `failure_mode_allow` decides nothing here: this is
//! an answer).

use super::error::StoreError;
use super::store::TokenStore;
use crate::core::contract;
use crate::core::credential::{extract, Credential};
use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpStatusCode};
use envoy_types::ext_authz::v3::{CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The gRPC service's full method path (what Envoy calls).
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The Check service over a store.
pub struct ExtAuthz {
    store: Arc<TokenStore>,
}

impl ExtAuthz {
    /// The tonic service for a store.
    pub fn service(store: Arc<TokenStore>) -> AuthorizationServer<ExtAuthz> {
        AuthorizationServer::new(ExtAuthz { store })
    }
}

fn denied(code: HttpStatusCode, status: Status, detail: &str, challenge: Option<String>) -> Response<CheckResponse> {
    let mut http = DeniedHttpResponseBuilder::new();
    http.set_http_status(code).add_header("content-type", "application/json", None, false);
    if let Some(c) = challenge {
        http.add_header("www-authenticate", c, None, false);
    }
    http.set_body(serde_json::json!({ "detail": detail }).to_string());
    let mut response = CheckResponse::with_status(status);
    response.set_http_response(http);
    Response::new(response)
}

fn unauthorized(detail: &str, error: Option<&str>) -> Response<CheckResponse> {
    denied(HttpStatusCode::Unauthorized, Status::unauthenticated(detail), detail, Some(contract::challenge("multitokens", error, None)))
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let headers = request.get_client_headers().ok_or_else(|| Status::invalid_argument("no request headers"))?;
        let values: Vec<&[u8]> = headers.get("authorization").map(|v| v.as_bytes()).into_iter().collect();
        let schemes: Vec<String> = contract::DEFAULT_SCHEMES.iter().map(|s| s.to_string()).collect();
        let token = match extract(&values, &[], &schemes, None) {
            Credential::Token(t, _) => t,
            Credential::Missing => return Ok(unauthorized(contract::NOT_PROVIDED, None)),
            Credential::Empty | Credential::Malformed => return Ok(unauthorized(contract::INVALID_TOKEN, Some("invalid_token"))),
        };
        let info = match self.store.whoami(token).await {
            Ok(info) => info,
            Err(StoreError::InvalidToken) => return Ok(unauthorized(contract::INVALID_TOKEN, Some("invalid_token"))),
            Err(e) => {
                tracing::error!(error = %e, "ext_authz check: token store failure");
                return Ok(denied(
                    HttpStatusCode::ServiceUnavailable,
                    Status::unavailable(contract::AUTH_UNAVAILABLE),
                    contract::AUTH_UNAVAILABLE,
                    None,
                ));
            }
        };
        let scopes = info.scopes.join(" ");
        let mut http = OkHttpResponseBuilder::new();
        for (name, value) in [
            (contract::USER_HEADER, info.user.as_str()),
            (contract::DEVICE_HEADER, info.device.as_str()),
            (contract::SCOPES_HEADER, scopes.as_str()),
            (contract::TOKEN_ID_HEADER, info.id.as_str()),
        ] {
            http.add_header(name, value, None, false);
        }
        http.remove_header("authorization");
        let mut response = CheckResponse::with_status(Status::ok("valid token"));
        response.set_http_response(http);
        Ok(Response::new(response))
    }
}
