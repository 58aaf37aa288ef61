//! Endpoints authenticated by the token itself, and RFC 7662 introspection.

use super::*;

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
    /// `Bearer`, or `DPoP` for a token bound to a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<String>,
    /// The token's public id.
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    /// The key a DPoP-bound token is bound to (RFC 9449 §6.2: `{"jkt": <thumbprint>}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<multitokens_core::record::Confirmation>,
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
            cnf: None,
        }
    }
}

/// RFC 7662 token introspection.
///
/// The `token` form-encoded (the RFC's) or as JSON.
#[utoipa::path(post, path = "/v1/introspect", tag = "introspect",
    request_body(content(
        (IntrospectBody = "application/x-www-form-urlencoded"),
        (IntrospectBody = "application/json")
    )),
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
            let now = crate::clock::now_secs();
            Ok(Json(Introspection {
                active: true,
                sub: Some(info.user),
                device: Some(info.device),
                iat: Some(info.created),
                exp: info.expires_in.map(|secs| now + secs),
                scope: Some(info.scopes.join(" ")),
                token_type: Some(if info.dpop_jkt.is_some() { "DPoP" } else { "Bearer" }.into()),
                jti: Some(info.id),
                cnf: info.dpop_jkt.map(|jkt| multitokens_core::record::Confirmation { jkt }),
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
    let revocation = state.store.revoke(&token, &origin).await?;
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
    let revocation = state.store.revoke_all(&me.user, Some(&token), &origin).await?;
    Ok(Json(state.confirm(&revocation).await).into_response())
}
