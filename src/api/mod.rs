//! The HTTP API of `multitokens serve`: admin endpoints (bearer admin key), self-service endpoints
//! (authenticated by the token itself), RFC 7662 introspection, the filter's internal lookup,
//! and health checks. Errors are JSON `{"detail": "..."}`.

use crate::audit::{Actor, Origin};
use crate::clock::now_ms;
use crate::edges::{valid_edge_id, EdgeRegistry, RevokeReport};
use crate::error::StoreError;
use crate::fanout::FeedFanout;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::roles::{ApiKeys, Presented, Role};
use crate::store::{Found, IssueRequest, Issued, Lookup, Revocation, TokenInfo, TokenStore};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use multitokens_core::activity::{self, ActivityBatch, ActivityRecorded, ActivityReport};
use multitokens_core::contract::{self, FeedPage, FeedQuery, LookupAnswer, LookupAnswers, LookupBatch, LookupQuery};
use multitokens_core::digest::TokenDigest;
use multitokens_core::keyring::MAX_PREVIOUS_HASH_KEYS;
use multitokens_core::token::RoutingTag;
use multitokens_core::ttl::TokenTtl;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    /// The token store.
    pub store: Arc<TokenStore>,
    /// The API keys by role.
    pub api_keys: Arc<ApiKeys>,
    /// The edges following the feed, and what each acknowledged.
    pub edges: Arc<EdgeRegistry>,
    /// The revocation feed, fanned out to long polls.
    pub feed: Arc<FeedFanout>,
    /// How long a revoke waits for the edges to apply it.
    pub revoke_wait: Duration,
}

impl AppState {
    /// The state over a store; [`AppState::spawn_followers`] starts its background tasks.
    pub fn new(store: Arc<TokenStore>, keys: ApiKeys, revoke_wait: Duration, max_edges: usize) -> AppState {
        let edges = EdgeRegistry::new(store.clone(), max_edges);
        let feed = FeedFanout::new(store.clone());
        AppState { store, api_keys: Arc::new(keys), edges, feed, revoke_wait }
    }

    /// Starts the background tasks (on the current tokio runtime): the feed's blocking reader,
    /// the edge table's writer, and the sweep that publishes outboxes a dead companion left.
    pub fn spawn_followers(&self, block: Duration) {
        tokio::spawn(self.feed.clone().run(block));
        tokio::spawn(self.edges.clone().run_flusher());
        let store = self.store.clone();
        tokio::spawn(async move {
            // outboxes written before the index existed (an upgrade): one scan at start
            match store.publish_unindexed_outboxes().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(outboxes = n, "published revocations left unpublished before the outbox index"),
                Err(e) => tracing::warn!(error = %e, "outbox scan at start failed"),
            }
            loop {
                match store.publish_abandoned_outboxes().await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(outboxes = n, "published revocations a companion had left unpublished"),
                    Err(e) => tracing::warn!(error = %e, "outbox sweep failed"),
                }
                tokio::time::sleep(OUTBOX_SWEEP_EVERY).await;
            }
        });
    }

    /// Waits for the edges to apply a revocation and says how many did.
    async fn confirm(&self, revocation: &Revocation) -> RevokeReport {
        self.edges.confirm(revocation, self.revoke_wait).await
    }
}

/// How often outboxes left behind are looked for.
pub const OUTBOX_SWEEP_EVERY: Duration = Duration::from_secs(5);

impl FromRef<AppState> for Arc<TokenStore> {
    fn from_ref(state: &AppState) -> Self {
        state.store.clone()
    }
}

/// The body of every error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What is wrong, in a sentence.
    detail: String,
}

/// An error answered as JSON `{"detail": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
    challenge: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError { status, detail: detail.into(), challenge: None }
    }

    fn unauthorized(detail: &str, error: Option<&'static str>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            detail: detail.into(),
            challenge: Some(contract::challenge("multitokens", error, None)),
        }
    }
}

/// The HTTP status of each store failure: the one place they are mapped.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidToken => ApiError::unauthorized(contract::INVALID_TOKEN, Some("invalid_token")),
            StoreError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::LimitReached(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            StoreError::Input(_) | StoreError::BadInput(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
            StoreError::Unavailable(_) => {
                tracing::error!(error = %e, "token store unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Token store unavailable.")
            }
            StoreError::Refused(_) | StoreError::Corrupt(_) | StoreError::Record(_) | StoreError::Random(_) => {
                tracing::error!(error = %e, "token store failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Token store failure; see the companion's log.")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { detail: self.detail })).into_response();
        if let Some(challenge) = self.challenge {
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response.headers_mut().insert(WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// A JSON body with size limit and errors in the API's own shape; unknown fields are rejected.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(r.status(), "Request body too large or unreadable."))?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de).map(JsonBody).map_err(|e| {
            let at = if e.path().to_string() == "." { String::new() } else { format!("{}: ", e.path()) };
            ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid JSON body: {at}{}", e.inner()))
        })
    }
}

/// A query string, with errors in the API's own shape (naming the parameter) instead of the
/// framework's `text/plain` answer.
pub struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes());
        serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(query)).map(QueryArgs).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid query string: {}: {}", e.path(), e.inner()))
        })
    }
}

/// Path parameters, with errors in the API's own shape.
pub struct PathArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| PathArgs(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid path: {}", e.body_text())))
    }
}

/// The credential in `Authorization: Bearer|Token <credential>`, read by the same parser as the
/// filter's.
fn credential(parts: &Parts) -> Option<&str> {
    let values: Vec<&[u8]> = parts.headers.get_all(AUTHORIZATION).iter().map(|v| v.as_bytes()).collect();
    let schemes: Vec<String> = contract::DEFAULT_SCHEMES.iter().map(|s| s.to_string()).collect();
    match multitokens_core::credential::extract(&values, &[], &schemes, None) {
        multitokens_core::credential::Credential::Token(t, _) => Some(t),
        _ => None,
    }
}

/// Checks that the request presents a key of one of `roles`: none at all is 401, a key this
/// companion does not know is 401, a key of another role is 403 naming both roles.
fn check_role(parts: &Parts, keys: &ApiKeys, roles: &[Role]) -> Result<(), ApiError> {
    let needed = roles[0];
    let basic = parts.headers.get_all(AUTHORIZATION).iter().find_map(|v| Presented::basic(v.as_bytes()));
    let presented = match (credential(parts), basic) {
        (Some(key), _) => Presented::Bearer(key.to_string()),
        (None, Some(basic)) if roles.contains(&Role::Introspect) => basic,
        _ => return Err(ApiError::unauthorized(contract::NOT_PROVIDED, None)),
    };
    match keys.role_of(&presented) {
        Some(role) if roles.contains(&role) => Ok(()),
        Some(role) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("This endpoint needs the {} role; the key presented has the {} role.", needed.name(), role.name()),
        )),
        None => Err(ApiError::unauthorized(
            &format!(
                "Invalid credentials: this endpoint needs a key of the {} role ({}).",
                needed.name(),
                needed.variable()
            ),
            Some("invalid_token"),
        )),
    }
}

/// Who is asking, for the audit trail: `actor`, and the request id Envoy sent (`x-request-id`).
fn origin(parts: &Parts, actor: Actor) -> Origin {
    Origin::with_request_id(actor, parts.headers.get("x-request-id").map(|v| v.as_bytes()))
}

/// Proof that the request carries an admin key; the audit trail's origin.
pub struct Admin(pub Origin);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check_role(parts, &state.api_keys, &[Role::Admin]).map(|_| Admin(origin(parts, Actor::Admin)))
    }
}

/// Proof that the request comes from an introspection client (or an admin).
pub struct Introspector;

impl FromRequestParts<AppState> for Introspector {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check_role(parts, &state.api_keys, &[Role::Introspect, Role::Admin]).map(|_| Introspector).map_err(|mut e| {
            if e.status == StatusCode::UNAUTHORIZED {
                // RFC 7662 clients authenticate with HTTP Basic: say it can
                e.challenge = Some(format!("Basic realm=\"multitokens\", {}", e.challenge.unwrap_or_default()));
            }
            e
        })
    }
}

/// Proof that the request carries an internal (filter) key; the audit trail's origin.
pub struct Internal(pub Origin);

impl FromRequestParts<AppState> for Internal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.api_keys.has_internal() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Internal endpoints are disabled: set MULTITOKENS_INTERNAL_KEY.",
            ));
        }
        check_role(parts, &state.api_keys, &[Role::Internal]).map(|_| Internal(origin(parts, Actor::Internal)))
    }
}

/// The caller's own token (self-service endpoints), and the audit trail's origin.
pub struct CallerToken(pub String, pub Origin);

impl<S: Send + Sync> FromRequestParts<S> for CallerToken {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let token = credential(parts).ok_or_else(|| ApiError::unauthorized(contract::NOT_PROVIDED, None))?;
        Ok(CallerToken(token.to_string(), origin(parts, Actor::Token)))
    }
}

mod admin;
mod health;
pub(crate) mod internal;
mod self_service;

use admin::*;
use health::*;
use internal::*;
use self_service::*;

/// This API's OpenAPI 3.1 description (also committed as docs/openapi.json).
async fn openapi_json() -> Response {
    ([(CONTENT_TYPE, "application/json")], crate::openapi::json()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not found.")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.")
}

/// Every documented route, registered once from its handler's OpenAPI path (the description in
/// [`super::openapi`] is generated from the same list).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(issue))
        .routes(routes!(list, revoke_user, suspend_user))
        .routes(routes!(revoke_by_id, suspend_by_id))
        .routes(routes!(introspect))
        .routes(routes!(events))
        .routes(routes!(current, logout_current))
        .routes(routes!(logout_others))
        .routes(routes!(internal_lookup))
        .routes(routes!(internal_lookups))
        .routes(routes!(internal_revocations))
        .routes(routes!(internal_activity))
}

/// The API router over its state: [`routes`], the description itself, gRPC ext_authz and the
/// HTTP ext_authz check (any method: Envoy forwards the checked request's).
pub fn app(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .route("/openapi.json", get(openapi_json))
        .route_service(crate::grpc::CHECK_PATH, crate::grpc::ExtAuthz::service(state.store.clone()))
        .route(contract::EXT_AUTHZ_PATH, axum::routing::any(ext_authz))
        .route(&format!("{}/{{*path}}", contract::EXT_AUTHZ_PATH), axum::routing::any(ext_authz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Serves the API on a bound listener until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(without_nagle(listener), app(state)).with_graceful_shutdown(shutdown).await
}

/// `listener` with `TCP_NODELAY` on every connection it accepts. An HTTP/2 answer (a lookup
/// batch, a gRPC `Check`) goes out as several small writes; with Nagle's algorithm the later ones
/// wait for the proxy to acknowledge the first, and Linux delays that acknowledgement by up to
/// 40 ms: a stall at the p99 of every HTTP/2 caller.
pub fn without_nagle(
    listener: TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on an API connection");
        }
    })
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_nagle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = super::without_nagle(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
    }
}
