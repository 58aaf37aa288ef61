//! Envoy's gRPC external authorization (`envoy.service.auth.v3.Authorization/Check`), for
//! teams that cannot run wasm: [`super::ext_authz`]'s decision, over gRPC. Served on the API's
//! own port (HTTP/2 cleartext, which Envoy's gRPC client speaks).

use super::ext_authz::{check, Asked, Check, REMOVED_HEADERS};
use super::store::TokenStore;
use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpStatusCode};
use envoy_types::ext_authz::v3::{CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder};
use multitokens_core::dpop::Seen;
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

fn denied(status: u16, detail: &str, challenge: Option<String>, nonce: Option<String>) -> Response<CheckResponse> {
    let (code, grpc_status) = match status {
        401 => (HttpStatusCode::Unauthorized, Status::unauthenticated(detail)),
        _ => (HttpStatusCode::ServiceUnavailable, Status::unavailable(detail)),
    };
    let mut http = DeniedHttpResponseBuilder::new();
    http.set_http_status(code).add_header("content-type", "application/json", None, false);
    if let Some(c) = challenge {
        http.add_header("www-authenticate", c, None, false);
    }
    if let Some(n) = nonce {
        http.add_header("dpop-nonce", n, None, false);
    }
    http.set_body(serde_json::json!({ "detail": detail }).to_string());
    let mut response = CheckResponse::with_status(grpc_status);
    response.set_http_response(http);
    Response::new(response)
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let headers = request.get_client_headers().ok_or_else(|| Status::invalid_argument("no request headers"))?;
        // Envoy joins a repeated header's values with ","; a token never holds one, so two
        // credentials stay refused as the filter refuses them
        let values: Vec<&[u8]> = headers.get("authorization").map(|v| v.as_bytes()).into_iter().collect();
        let dpop: Vec<&[u8]> = headers.get("dpop").map(|v| v.as_bytes()).into_iter().collect();
        let http = request.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let field = |f: fn(&envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest) -> &str| {
            http.map(f).unwrap_or_default().as_bytes()
        };
        let seen = Seen {
            method: field(|h| &h.method),
            scheme: field(|h| &h.scheme),
            authority: field(|h| &h.host),
            path: field(|h| &h.path),
        };
        match check(&self.store, Asked { authorization: &values, dpop: &dpop, seen }).await {
            Check::Allow(set) => {
                let mut http = OkHttpResponseBuilder::new();
                for (name, value) in &set {
                    http.add_header(*name, value.as_str(), None, false);
                }
                for name in REMOVED_HEADERS {
                    http.remove_header(name);
                }
                let mut response = CheckResponse::with_status(Status::ok("valid token"));
                response.set_http_response(http);
                Ok(Response::new(response))
            }
            Check::Deny { status, detail, challenge, nonce } => Ok(denied(status, detail, challenge, nonce)),
        }
    }
}
