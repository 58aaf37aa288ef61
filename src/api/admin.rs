//! Admin endpoints (an admin key): issue tokens, list and revoke a user's, read the audit trail.

use super::*;
use multitokens_core::dpop::{self, Thumbprint};

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
    #[schema(schema_with = crate::openapi::ttl_schema)]
    ttl: Option<TokenTtl>,
    /// Scopes granted to the token: at most 64, each 1 to 128 visible ASCII characters without
    /// quotes or backslashes.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::scopes_schema)]
    scopes: Vec<String>,
    /// Bind the token to a key (DPoP, RFC 9449): the key's JWK SHA-256 thumbprint (RFC 7638),
    /// 43 base64url characters. Every request with the token then needs a proof made with it.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    dpop_jkt: Option<String>,
    /// Bind the token to the key of the DPoP proof the client sent with its login: the proof as
    /// received, and the method and URI of the login request it was made for.
    #[serde(default)]
    dpop: Option<LoginProof>,
}

/// A DPoP proof sent with a login, as the application received it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginProof {
    /// The `DPoP` header's value.
    proof: String,
    /// The login request's method.
    method: String,
    /// The login request's URI as the client sent it (scheme, authority, path).
    uri: String,
}

/// How far a login proof's `iat` may be from now (seconds).
const LOGIN_PROOF_WINDOW_S: u64 = 60;

/// The key a login binds its token to: the thumbprint given, the key of the proof (which must
/// verify for the login request), both if they agree, or none.
fn binding(jkt: Option<&str>, proof: Option<&LoginProof>) -> Result<Option<Thumbprint>, ApiError> {
    let bad = |detail: String| ApiError::new(StatusCode::BAD_REQUEST, detail);
    let given = jkt
        .map(|j| {
            Thumbprint::from_b64(j).ok_or_else(|| bad("dpop_jkt: not a JWK SHA-256 thumbprint (43 base64url)".into()))
        })
        .transpose()?;
    let proven = proof
        .map(|p| {
            let request = dpop::Request {
                method: &p.method,
                uri: &p.uri,
                token: None,
                now_s: crate::clock::now_secs(),
                window_s: LOGIN_PROOF_WINDOW_S,
            };
            dpop::verify(p.proof.as_bytes(), &request).map(|v| v.jkt).map_err(|e| bad(format!("dpop: {e}")))
        })
        .transpose()?;
    match (given, proven) {
        (Some(g), Some(p)) if g != p => Err(bad("dpop_jkt: not the thumbprint of the dpop proof's key".into())),
        (g, p) => Ok(g.or(p)),
    }
}

/// Issues a token for a user (logs one device in).
#[utoipa::path(post, path = "/v1/tokens", tag = "admin", request_body = IssueBody, security(("admin" = [])),
    responses((status = 201, description = "The token (shown this once)", body = Issued),
        (status = 409, description = "max_tokens_per_user reached (policy reject)", body = ErrorBody),
        (status = "default", body = ErrorBody,
            description = "Bad input (400), no or unknown key (401), another role (403), store unavailable (503)")))]
pub(crate) async fn issue(
    Admin(origin): Admin,
    State(store): State<Arc<TokenStore>>,
    JsonBody(body): JsonBody<IssueBody>,
) -> Result<Response, ApiError> {
    let bound_to = binding(body.dpop_jkt.as_deref(), body.dpop.as_ref())?;
    let request = IssueRequest { user: body.user, device: body.device, ttl: body.ttl, scopes: body.scopes, bound_to };
    let issued = store.issue(request, &origin).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// A user's live tokens, oldest first.
#[utoipa::path(get, path = "/v1/users/{user}/tokens", tag = "admin",
    params(("user" = String, Path, description = "The user id")), security(("admin" = [])),
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
#[utoipa::path(delete, path = "/v1/users/{user}/tokens", tag = "admin",
    params(("user" = String, Path, description = "The user id"), KeepQuery), security(("admin" = [])),
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
        Some(id) => state.store.revoke_others_by_id(&user, id, &origin).await?,
        None => state.store.revoke_all(&user, None, &origin).await?,
    };
    Ok(Json(state.confirm(&revocation).await).into_response())
}

/// Logs out one of a user's devices by the token's public id.
#[utoipa::path(delete, path = "/v1/users/{user}/tokens/{id}", tag = "admin",
    params(
        ("user" = String, Path, description = "The user id"),
        ("id" = String, Path, description = "The token's public id")
    ),
    security(("admin" = [])),
    responses((status = 200, body = RevokeReport),
        (status = 404, description = "No live token with that id", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn revoke_by_id(
    Admin(origin): Admin,
    State(state): State<AppState>,
    PathArgs((user, id)): PathArgs<(String, String)>,
) -> Result<Response, ApiError> {
    let revocation = state.store.revoke_by_id(&user, &id, &origin).await?;
    Ok(Json(state.confirm(&revocation).await).into_response())
}

/// A suspend or resume: the state the token(s) should be in.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SuspendBody {
    /// `true`: refused everywhere (like a revoked token, to the client) until resumed; `false`:
    /// accepted again.
    suspended: bool,
}

/// What a suspend or resume answers: how many tokens changed, and how the live edges
/// acknowledged it (a suspend is applied at the edges as a revocation is, before this answer).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct SuspendReport {
    /// Tokens whose state changed (those already in it are left alone).
    changed: u64,
    /// Live edges that applied the change before this answer, and those that had not.
    edges: crate::edges::Acknowledgements,
}

/// Applies a suspend or resume and waits for the edges.
async fn suspend(
    state: &AppState,
    user: &str,
    id: Option<&str>,
    suspended: bool,
    origin: &Origin,
) -> Result<Response, ApiError> {
    let change = state.store.set_suspended(user, id, suspended, origin).await?;
    let report = state.confirm(&change).await;
    Ok(Json(SuspendReport { changed: change.revoked, edges: report.edges }).into_response())
}

/// Suspends or resumes every live token of a user (a new login after it is not suspended).
#[utoipa::path(patch, path = "/v1/users/{user}/tokens", tag = "admin", request_body = SuspendBody,
    params(("user" = String, Path, description = "The user id")), security(("admin" = [])),
    responses((status = 200, description = "Changed, and how many edges applied it", body = SuspendReport),
        (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn suspend_user(
    Admin(origin): Admin,
    State(state): State<AppState>,
    PathArgs(user): PathArgs<String>,
    JsonBody(body): JsonBody<SuspendBody>,
) -> Result<Response, ApiError> {
    suspend(&state, &user, None, body.suspended, &origin).await
}

/// Suspends or resumes one of a user's tokens by its public id.
#[utoipa::path(patch, path = "/v1/users/{user}/tokens/{id}", tag = "admin", request_body = SuspendBody,
    params(
        ("user" = String, Path, description = "The user id"),
        ("id" = String, Path, description = "The token's public id")
    ),
    security(("admin" = [])),
    responses((status = 200, description = "Changed (0: already so), and how many edges applied it", body = SuspendReport),
        (status = 404, description = "No live token with that id", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn suspend_by_id(
    Admin(origin): Admin,
    State(state): State<AppState>,
    PathArgs((user, id)): PathArgs<(String, String)>,
    JsonBody(body): JsonBody<SuspendBody>,
) -> Result<Response, ApiError> {
    suspend(&state, &user, Some(&id), body.suspended, &origin).await
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
    events: Vec<crate::audit::AuditRecord>,
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
    let since = crate::audit::parse_since(q.since.as_deref().unwrap_or("24h"), now_ms())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let (events, next) = store.audit_events(q.user.as_deref(), q.after.as_deref(), since, limit).await?;
    Ok(Json(EventsPage { events, next }).into_response())
}
