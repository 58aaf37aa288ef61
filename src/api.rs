//! The HTTP API of `multitokens serve`: admin endpoints (bearer admin key), self-service endpoints
//! (authenticated by the token itself), RFC 7662 introspection, the filter's internal lookup,
//! and health checks. Errors are JSON `{"detail": "..."}`.

use super::audit::{Actor, Origin};
use super::clock::now_ms;
use super::edges::{valid_edge_id, EdgeRegistry, RevokeReport};
use super::error::StoreError;
use super::fanout::FeedFanout;
use super::metrics::{RequestLabels, RouteLabels};
use super::roles::{ApiKeys, Presented, Role};
use super::store::{IssueRequest, Issued, Revocation, TokenInfo, TokenStore};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use multitokens_core::contract::{self, FeedPage, FeedQuery, LookupAnswer, LookupQuery};
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
    pub keys: Arc<ApiKeys>,
    /// The edges following the feed, and what each acknowledged.
    pub edges: Arc<EdgeRegistry>,
    /// The revocation feed, fanned out to long polls.
    pub feed: Arc<FeedFanout>,
    /// How long a revoke waits for the edges to apply it.
    pub revoke_wait: Duration,
}

impl AppState {
    /// The state over a store; [`AppState::spawn_followers`] starts its background tasks.
    pub fn new(store: Arc<TokenStore>, keys: ApiKeys, revoke_wait: Duration) -> AppState {
        let edges = EdgeRegistry::new(store.clone());
        let feed = FeedFanout::new(store.clone());
        AppState { store, keys: Arc::new(keys), edges, feed, revoke_wait }
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
        check_role(parts, &state.keys, &[Role::Admin]).map(|_| Admin(origin(parts, Actor::Admin)))
    }
}

/// Proof that the request comes from an introspection client (or an admin).
pub struct Introspector;

impl FromRequestParts<AppState> for Introspector {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check_role(parts, &state.keys, &[Role::Introspect, Role::Admin]).map(|_| Introspector).map_err(|mut e| {
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
        if !state.keys.has_internal() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Internal endpoints are disabled: set MULTITOKENS_INTERNAL_KEY.",
            ));
        }
        check_role(parts, &state.keys, &[Role::Internal]).map(|_| Internal(origin(parts, Actor::Internal)))
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

/// A login: the user, and optionally the device label, this token's lifetime and its scopes.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssueBody {
    /// The user id: 1 to 256 bytes, no control characters, no whitespace at either end.
    #[schema(max_length = 64, pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$")]
    user: String,
    /// A label for the device or browser: up to 256 bytes, no control characters, no whitespace
    /// at either end.
    #[serde(default)]
    #[schema(
        max_length = 64,
        pattern = r"^([^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?)?$"
    )]
    device: Option<String>,
    /// This token's lifetime: seconds, or `"never"` (default: `token_ttl`).
    #[serde(default)]
    #[schema(schema_with = super::openapi::ttl_schema)]
    ttl: Option<TokenTtl>,
    /// Scopes granted to the token: at most 64, each 1 to 128 visible ASCII characters without
    /// quotes or backslashes.
    #[serde(default)]
    #[schema(schema_with = super::openapi::scopes_schema)]
    scopes: Vec<String>,
}

/// Issues a token for a user (logs one device in).
#[utoipa::path(post, path = "/v1/tokens", tag = "admin", request_body = IssueBody, security(("admin" = [])),
    responses((status = 201, description = "The token (shown this once)", body = Issued),
        (status = 409, description = "max_tokens_per_user reached (policy reject)", body = ErrorBody),
        (status = "default", description = "Bad input (400), no or unknown key (401), another role (403), store unavailable (503)", body = ErrorBody)))]
pub(crate) async fn issue(
    Admin(origin): Admin,
    State(store): State<Arc<TokenStore>>,
    JsonBody(body): JsonBody<IssueBody>,
) -> Result<Response, ApiError> {
    let issued = store
        .issue_as(IssueRequest { user: body.user, device: body.device, ttl: body.ttl, scopes: body.scopes }, &origin)
        .await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// A user's live tokens, oldest first.
#[utoipa::path(get, path = "/v1/users/{user}/tokens", tag = "admin", params(("user" = String, Path, description = "The user id")), security(("admin" = [])),
    responses((status = 200, body = Vec<TokenInfo>), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn list(
    _: Admin,
    State(store): State<Arc<TokenStore>>,
    PathArgs(user): PathArgs<String>,
) -> Result<Response, ApiError> {
    Ok(Json(store.list(&user).await?).into_response())
}

/// Which of a user's tokens a revoke-all keeps.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeepQuery {
    /// The public id of the one token to keep (log out all other devices); none: log out everywhere.
    #[serde(default)]
    except_id: Option<String>,
}

/// Logs a user out everywhere, or everywhere but one device (`except_id`).
#[utoipa::path(delete, path = "/v1/users/{user}/tokens", tag = "admin", params(("user" = String, Path, description = "The user id"), KeepQuery), security(("admin" = [])),
    responses((status = 200, description = "Revoked, and how many edges applied it", body = RevokeReport),
        (status = 404, description = "except_id is no live token of the user (nothing revoked)", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn revoke_user(
    Admin(origin): Admin,
    State(state): State<AppState>,
    PathArgs(user): PathArgs<String>,
    QueryArgs(keep): QueryArgs<KeepQuery>,
) -> Result<Response, ApiError> {
    let revocation = match keep.except_id.as_deref() {
        Some(id) => state.store.revoke_others_by_id_as(&user, id, &origin).await?,
        None => state.store.revoke_all_as(&user, None, &origin).await?,
    };
    Ok(Json(state.confirm(&revocation).await).into_response())
}

/// Logs out one of a user's devices by the token's public id.
#[utoipa::path(delete, path = "/v1/users/{user}/tokens/{id}", tag = "admin",
    params(("user" = String, Path, description = "The user id"), ("id" = String, Path, description = "The token's public id")), security(("admin" = [])),
    responses((status = 200, body = RevokeReport), (status = 404, description = "No live token with that id", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn revoke_by_id(
    Admin(origin): Admin,
    State(state): State<AppState>,
    PathArgs((user, id)): PathArgs<(String, String)>,
) -> Result<Response, ApiError> {
    let revocation = state.store.revoke_by_id_as(&user, &id, &origin).await?;
    Ok(Json(state.confirm(&revocation).await).into_response())
}

/// The audit trail's query.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Only this user's events.
    #[serde(default)]
    user: Option<String>,
    /// From this time: RFC 3339, or a duration back from now (`2h`); default 24 h.
    #[serde(default)]
    since: Option<String>,
    /// After this cursor (the `next` of the previous page); overrides `since`.
    #[serde(default)]
    after: Option<String>,
    /// Most events in the answer, 1 to 1000 (default 100).
    #[serde(default)]
    limit: Option<usize>,
}

/// A page of the audit trail.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct EventsPage {
    /// The events, oldest first.
    events: Vec<super::audit::AuditRecord>,
    /// The cursor to continue from (`after`), or null when nothing was read.
    next: Option<String>,
}

/// The audit trail: issues, revocations, evictions and re-keyings, oldest first.
#[utoipa::path(get, path = "/v1/events", tag = "admin", params(EventsQuery), security(("admin" = [])),
    responses((status = 200, body = EventsPage), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn events(
    _: Admin,
    State(store): State<Arc<TokenStore>>,
    QueryArgs(q): QueryArgs<EventsQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "limit: 1 to 1000."));
    }
    let since = super::audit::parse_since(q.since.as_deref().unwrap_or("24h"), now_ms())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let (events, next) = store.audit_events(q.user.as_deref(), q.after.as_deref(), since, limit).await?;
    Ok(Json(EventsPage { events, next }).into_response())
}

/// An RFC 7662 introspection request.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct IntrospectBody {
    /// The token to introspect.
    token: String,
    /// RFC 7662's hint (ignored: there is one kind of token).
    #[serde(default)]
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

/// An RFC 7662 introspection answer: `{"active": false}` for a token that is not live.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Introspection {
    /// Whether the token is live.
    active: bool,
    /// The user.
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    /// The device label.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    /// Issue time, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// Expiry, Unix seconds (absent for immortal tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    /// Scopes, space-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// Always `Bearer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<String>,
    /// The token's public id.
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

impl Introspection {
    /// RFC 7662's answer for a token that is not live.
    fn inactive() -> Self {
        Introspection {
            active: false,
            sub: None,
            device: None,
            iat: None,
            exp: None,
            scope: None,
            token_type: None,
            jti: None,
        }
    }
}

/// RFC 7662 token introspection.
///
/// The `token` form-encoded (the RFC's) or as JSON.
#[utoipa::path(post, path = "/v1/introspect", tag = "introspect",
    request_body(content((IntrospectBody = "application/x-www-form-urlencoded"), (IntrospectBody = "application/json"))),
    security(("introspect" = []), ("admin" = [])),
    responses((status = 200, body = Introspection), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn introspect(
    _: Introspector,
    State(store): State<Arc<TokenStore>>,
    req: Request,
) -> Result<Response, ApiError> {
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let bytes = Bytes::from_request(req, &())
        .await
        .map_err(|r| ApiError::new(r.status(), "Request body too large or unreadable."))?;
    let body: IntrospectBody = if is_json {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid JSON body: {e}")))?
    } else {
        serde_urlencoded_token(&bytes)
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "Missing token parameter."))?
    };
    match store.whoami(&body.token).await {
        Ok(info) => {
            let now = super::clock::now_secs();
            Ok(Json(Introspection {
                active: true,
                sub: Some(info.user),
                device: Some(info.device),
                iat: Some(info.created),
                exp: info.expires_in.map(|secs| now + secs),
                scope: Some(info.scopes.join(" ")),
                token_type: Some("Bearer".into()),
                jti: Some(info.id),
            })
            .into_response())
        }
        Err(StoreError::InvalidToken) => Ok(Json(Introspection::inactive()).into_response()),
        Err(e) => Err(e.into()),
    }
}

fn serde_urlencoded_token(bytes: &[u8]) -> Option<IntrospectBody> {
    serde_urlencoded::from_bytes(bytes).ok()
}

/// Who the presented token belongs to.
#[utoipa::path(get, path = "/v1/tokens/current", tag = "self-service", security(("token" = [])),
    responses((status = 200, body = TokenInfo), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn current(
    State(store): State<Arc<TokenStore>>,
    CallerToken(token, _): CallerToken,
) -> Result<Response, ApiError> {
    Ok(Json(store.whoami(&token).await?).into_response())
}

/// Logs out the presented token's device.
#[utoipa::path(delete, path = "/v1/tokens/current", tag = "self-service", security(("token" = [])),
    responses((status = 200, body = RevokeReport), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn logout_current(
    State(state): State<AppState>,
    CallerToken(token, origin): CallerToken,
) -> Result<Response, ApiError> {
    let revocation = state.store.revoke_as(&token, &origin).await?;
    Ok(Json(state.confirm(&revocation).await).into_response())
}

/// Logs out all the user's other devices.
#[utoipa::path(delete, path = "/v1/tokens/others", tag = "self-service", security(("token" = [])),
    responses((status = 200, body = RevokeReport), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn logout_others(
    State(state): State<AppState>,
    CallerToken(token, origin): CallerToken,
) -> Result<Response, ApiError> {
    let me = state.store.whoami(&token).await?;
    let revocation = state.store.revoke_all_as(&me.user, Some(&token), &origin).await?;
    Ok(Json(state.confirm(&revocation).await).into_response())
}

/// The stock filter's lookup by routing tag and digest (never the token).
///
/// A bodiless GET: the filter sends the routing tag and the digest, never the token.
#[utoipa::path(get, path = contract::LOOKUP_PATH, tag = "internal", params(LookupQuery), security(("internal" = [])),
    responses((status = 200, body = LookupAnswer), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn internal_lookup(
    Internal(origin): Internal,
    State(store): State<Arc<TokenStore>>,
    QueryArgs(query): QueryArgs<LookupQuery>,
) -> Result<Response, ApiError> {
    let bad = || {
        let most = MAX_PREVIOUS_HASH_KEYS;
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("tag must be 8 and digest 64 hex characters; previous at most {most} digests, comma-separated."),
        )
    };
    let mut tag = [0u8; 4];
    hex::decode_to_slice(&query.tag, &mut tag).map_err(|_| bad())?;
    let tag = RoutingTag(tag);
    let mut digests = vec![TokenDigest::from_hex(&query.digest).ok_or_else(bad)?];
    for previous in query.previous.as_deref().into_iter().flat_map(|p| p.split(',')) {
        digests.push(TokenDigest::from_hex(previous).ok_or_else(bad)?);
    }
    if digests.len() > 1 + MAX_PREVIOUS_HASH_KEYS {
        return Err(bad());
    }
    // re-key on use only towards this companion's current key: a filter still digesting with the
    // old key (a rotation being rolled out) must not move records back
    let rekey = Some(&origin).filter(|_| query.key_id.as_deref() == Some(store.key_id().as_str()));
    let Some(found) = store.lookup_digests(tag, &digests, rekey).await? else {
        return Ok(Json(LookupAnswer::inactive()).into_response());
    };
    let (mut info, digest, stored_under) = (found.info, found.digest, found.stored_under);
    if let Some(secs) = query.refresh_ttl.filter(|s| *s > 0) {
        // the internal key may ask for a refresh no longer than a login's token_ttl
        let ttl = TokenTtl::Seconds(secs.min(store.max_refresh_secs()));
        // report the lifetime Redis now holds (a refresh may be capped by the absolute expiry)
        if store.refresh(tag, &digest, ttl).await? {
            match store.lookup_digest(tag, &digest).await? {
                Some(fresh) => info = fresh,
                None => return Ok(Json(LookupAnswer::inactive()).into_response()),
            }
        }
    }
    Ok(Json(LookupAnswer {
        active: true,
        user: Some(info.user),
        device: Some(info.device),
        scopes: info.scopes,
        expires_in: info.expires_in,
        expires_in_ms: info.expires_in_ms,
        id: Some(info.id),
        stored_under,
    })
    .into_response())
}

/// The revocation feed for filters: digests revoked after a cursor; a long poll with `wait_ms`.
///
/// With `wait_ms` it is answered as soon as something is revoked; with `edge` the cursor
/// acknowledges what that filter VM has applied.
#[utoipa::path(get, path = contract::FEED_PATH, tag = "internal", params(FeedQuery), security(("internal" = [])),
    responses((status = 200, body = FeedPage), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn internal_revocations(
    _: Internal,
    State(state): State<AppState>,
    QueryArgs(query): QueryArgs<FeedQuery>,
) -> Result<Response, ApiError> {
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(super::fanout::MAX_WAIT);
    if let Some(edge) = &query.edge {
        if !valid_edge_id(edge) {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "edge must be 1 to 64 letters, digits, - or _."));
        }
        // a VM's first poll (no cursor yet) registers it as having applied nothing: it may cache
        // verdicts as soon as it has the first page, so every later revoke waits for it
        let acked = query.after.as_deref().filter(|a| super::store::stream_id(a).is_some()).unwrap_or("0-0");
        if !state.edges.record(edge, acked, now_ms() + wait.as_millis().max(2000) as u64) {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Too many edges follow this companion."));
        }
    }
    Ok(Json(state.feed.next_page(query.after.as_deref(), wait).await?).into_response())
}

/// Envoy's ext_authz HTTP check: 200 with the identity headers, or DRF's refusal.
///
/// Envoy forwards the request's `authorization` header to `/v1/ext_authz/<original path>`;
/// one decision serves this and gRPC (`src/ext_authz.rs`). Allowed: 200 with the identity
/// headers (as their UTF-8 bytes, exactly as the filter sets them; a value that cannot be a header
/// value is an error, never a header left out) and `x-envoy-auth-headers-to-remove` naming the
/// credential, which Envoy then removes. Refused: DRF's body, which Envoy passes to the client.
#[utoipa::path(get, path = "/v1/ext_authz/{path}", tag = "ext_authz", params(("path" = String, Path, description = "The checked request's path (any)")),
    security(("token" = [])),
    responses((status = 200, description = "Valid: identity in x-multitokens-user, -device, -scopes, -token-id, -credential"),
        (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn ext_authz(
    State(store): State<Arc<TokenStore>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let values: Vec<&[u8]> = headers.get_all(AUTHORIZATION).iter().map(|v| v.as_bytes()).collect();
    let set = match super::ext_authz::check(&store, &values).await {
        super::ext_authz::Check::Allow(set) => set,
        super::ext_authz::Check::Deny { status, detail, challenge } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut response = (status, Json(ErrorBody { detail: detail.to_string() })).into_response();
            if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert(WWW_AUTHENTICATE, value);
            }
            return Ok(response);
        }
    };
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    for (name, value) in set {
        let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The token's {name} cannot be sent as a header value."),
            )
        })?;
        out.insert(name, value);
    }
    if let Ok(removed) = HeaderValue::from_str(&super::ext_authz::REMOVED_HEADERS.join(", ")) {
        out.insert(ENVOY_AUTH_HEADERS_TO_REMOVE, removed);
    }
    Ok(response)
}

/// The response header Envoy's HTTP ext_authz reads for request headers to remove (comma-separated).
const ENVOY_AUTH_HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// A health answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    status: &'static str,
}

/// Answers while the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Response {
    Json(Health { status: "ok" }).into_response()
}

/// Answers 200 only while Redis answers.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub(crate) async fn readyz(State(store): State<Arc<TokenStore>>) -> Response {
    match store.ping().await {
        Ok(()) => Json(Health { status: "ready" }).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Redis unreachable.").into_response()
        }
    }
}

/// Prometheus metrics.
///
/// OpenMetrics text; no key, no user data: route templates and counts.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus metrics", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
pub(crate) async fn metrics(State(store): State<Arc<TokenStore>>) -> Response {
    ([(CONTENT_TYPE, super::metrics::CONTENT_TYPE)], store.metrics().encode()).into_response()
}

/// Counts and times every request by its route template and a known method (bounded cardinality:
/// never the path, never a made-up method).
async fn track(State(store): State<Arc<TokenStore>>, request: Request, next: axum::middleware::Next) -> Response {
    let route =
        request.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |m| m.as_str()).to_string();
    // a method is any token a client makes up: only the ones the API knows get a label of their own
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let m = store.metrics();
    m.request_seconds.get_or_create(&RouteLabels { route: route.clone() }).observe(started.elapsed().as_secs_f64());
    m.requests.get_or_create(&RequestLabels { route, method, status: response.status().as_u16() }).inc();
    response
}

/// This API's OpenAPI 3.1 description (also committed as docs/openapi.json).
async fn openapi_json() -> Response {
    ([(CONTENT_TYPE, "application/json")], super::openapi::json()).into_response()
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
    OpenApiRouter::with_openapi(super::openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(issue))
        .routes(routes!(list, revoke_user))
        .routes(routes!(revoke_by_id))
        .routes(routes!(introspect))
        .routes(routes!(events))
        .routes(routes!(current, logout_current))
        .routes(routes!(logout_others))
        .routes(routes!(internal_lookup))
        .routes(routes!(internal_revocations))
}

/// The API router over its state: [`routes`], the description itself, gRPC ext_authz and the
/// HTTP ext_authz check (any method: Envoy forwards the checked request's).
pub fn app(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .route("/openapi.json", get(openapi_json))
        .route_service(super::grpc::CHECK_PATH, super::grpc::ExtAuthz::service(state.store.clone()))
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
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}
