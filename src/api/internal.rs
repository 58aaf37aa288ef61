//! What the edges call: the stock filter's lookup and revocation feed (the internal key), and
//! Envoy's ext_authz HTTP check.

use super::*;

/// The stock filter's lookup by routing tag and digest (never the token).
///
/// A bodiless GET: the filter sends the routing tag and the digest, never the token.
#[utoipa::path(get, path = contract::LOOKUP_PATH, tag = "internal", params(LookupQuery), security(("internal" = [])),
    responses((status = 200, body = LookupAnswer), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn internal_lookup(
    Internal(origin): Internal,
    State(store): State<Arc<TokenStore>>,
    QueryArgs(query): QueryArgs<LookupQuery>,
) -> Result<Json<LookupAnswer>, ApiError> {
    let AskedLookup { lookup, refresh_ttl } = AskedLookup::parse(&store.key_id(), &origin, &query)?;
    let found = store.lookup_digests(lookup.tag, &lookup.digests, lookup.rekey).await?;
    Ok(Json(answer(&store, lookup.tag, refresh_ttl, found).await?))
}

/// Several tokens' lookups in one request: the native module's lookups beyond its
/// `max_lookups_in_flight`, sent together.
///
/// Each lookup is answered as `GET /v1/internal/lookup` answers it, in order, read from Redis
/// together. One malformed lookup refuses the batch (400); a Redis failure fails all of it.
#[utoipa::path(post, path = contract::LOOKUPS_PATH, tag = "internal", request_body = LookupBatch,
    security(("internal" = [])),
    responses((status = 200, body = LookupAnswers), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn internal_lookups(
    Internal(origin): Internal,
    State(store): State<Arc<TokenStore>>,
    JsonBody(batch): JsonBody<LookupBatch>,
) -> Result<Json<LookupAnswers>, ApiError> {
    if batch.lookups.len() > contract::MAX_LOOKUP_BATCH {
        let most = contract::MAX_LOOKUP_BATCH;
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("lookups: at most {most} in one batch.")));
    }
    let key_id = store.key_id();
    let asked: Vec<AskedLookup> =
        batch.lookups.iter().map(|query| AskedLookup::parse(&key_id, &origin, query)).collect::<Result<_, _>>()?;
    let (lookups, refreshes): (Vec<Lookup>, Vec<Option<u64>>) =
        asked.into_iter().map(|a| (a.lookup, a.refresh_ttl)).unzip();
    let found = store.lookup_many(&lookups).await?;
    let answers =
        lookups.iter().zip(refreshes).zip(found).map(|((lookup, ttl), found)| answer(&store, lookup.tag, ttl, found));
    Ok(Json(LookupAnswers { answers: futures_util::future::try_join_all(answers).await? }))
}

/// A lookup as an edge asked for it, checked.
struct AskedLookup<'a> {
    /// What to read: the digest under the edge's key first, then those under its previous keys.
    lookup: Lookup<'a>,
    /// The sliding refresh asked for, in seconds.
    refresh_ttl: Option<u64>,
}

impl<'a> AskedLookup<'a> {
    /// Checks a lookup's tag and digests (400 if malformed); `key_id` is the current hash key's,
    /// `origin` the edge's (named if a record is re-keyed on use).
    fn parse(key_id: &str, origin: &'a Origin, query: &LookupQuery) -> Result<AskedLookup<'a>, ApiError> {
        let bad = || {
            let most = MAX_PREVIOUS_HASH_KEYS;
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "tag must be 8 and digest 64 hex characters; previous at most {most} digests, comma-separated."
                ),
            )
        };
        let tag = RoutingTag::from_hex(&query.tag).ok_or_else(bad)?;
        let mut digests = vec![TokenDigest::from_hex(&query.digest).ok_or_else(bad)?];
        for previous in query.previous.as_deref().into_iter().flat_map(|p| p.split(',')) {
            digests.push(TokenDigest::from_hex(previous).ok_or_else(bad)?);
        }
        if digests.len() > 1 + MAX_PREVIOUS_HASH_KEYS {
            return Err(bad());
        }
        // re-key on use only towards this companion's current key: a filter still digesting with
        // the old key (a rotation being rolled out) must not move records back
        let rekey = Some(origin).filter(|_| query.key_id.as_deref() == Some(key_id));
        Ok(AskedLookup { lookup: Lookup { tag, digests, rekey }, refresh_ttl: query.refresh_ttl })
    }
}

/// One lookup's answer: the record found under the first of the digests that has one (for the
/// token of routing tag `tag`), with the sliding refresh asked for.
async fn answer(
    store: &TokenStore,
    tag: RoutingTag,
    refresh_ttl: Option<u64>,
    found: Option<Found>,
) -> Result<LookupAnswer, ApiError> {
    let Some(found) = found else {
        return Ok(LookupAnswer::inactive());
    };
    let (mut info, digest, stored_under) = (found.info, found.digest, found.stored_under);
    if let Some(secs) = refresh_ttl.filter(|s| *s > 0) {
        // the internal key may ask for a refresh no longer than a login's token_ttl
        let ttl = TokenTtl::Seconds(secs.min(store.max_refresh_secs()));
        // report the lifetime Redis now holds (a refresh may be capped by the absolute expiry)
        if store.refresh(tag, &digest, ttl).await? {
            match store.lookup_digest(tag, &digest).await? {
                Some(fresh) => info = fresh,
                None => return Ok(LookupAnswer::inactive()),
            }
        }
    }
    Ok(LookupAnswer {
        active: true,
        user: Some(info.user),
        device: Some(info.device),
        scopes: info.scopes,
        expires_in: info.expires_in,
        expires_in_ms: info.expires_in_ms,
        id: Some(info.id),
        stored_under,
        dpop_jkt: info.dpop_jkt,
    })
}

/// Device activity the edges saw: when and from where each token was last used.
///
/// Edges send at most one report per token per `activity_interval_ms`, batched. Each is written
/// beside the token's record (never into it) if the record is still live and the report is newer
/// than what is stored; `recorded` counts those written.
#[utoipa::path(post, path = contract::ACTIVITY_PATH, tag = "internal", request_body = ActivityBatch,
    security(("internal" = [])),
    responses((status = 200, body = ActivityRecorded), (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn internal_activity(
    _: Internal,
    State(store): State<Arc<TokenStore>>,
    JsonBody(batch): JsonBody<ActivityBatch>,
) -> Result<Response, ApiError> {
    if batch.reports.len() > activity::MAX_BATCH || !batch.reports.iter().all(ActivityReport::is_well_formed) {
        let most = activity::MAX_BATCH;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "at most {most} reports, each with an 8 hex tag, a 64 hex digest, an IP address and a cleaned user agent."
            ),
        ));
    }
    let recorded = store.record_activity(&batch.reports).await?;
    Ok(Json(ActivityRecorded { recorded }).into_response())
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
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(crate::fanout::MAX_WAIT);
    if let Some(edge) = &query.edge {
        if !valid_edge_id(edge) {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "edge must be 1 to 64 letters, digits, - or _."));
        }
        // a VM's first poll (no cursor yet) registers it as having applied nothing: it may cache
        // verdicts as soon as it has the first page, so every later revoke waits for it
        let acked = query.after.as_deref().filter(|a| crate::store::stream_id(a).is_some()).unwrap_or("0-0");
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
#[utoipa::path(get, path = "/v1/ext_authz/{path}", tag = "ext_authz",
    params(("path" = String, Path, description = "The checked request's path (any)")),
    security(("token" = [])),
    responses((status = 200, description = "Valid: identity in x-multitokens-user, -device, -scopes, -token-id"),
        (status = "default", description = "Error", body = ErrorBody)))]
pub(crate) async fn ext_authz(
    State(store): State<Arc<TokenStore>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let values: Vec<&[u8]> = headers.get_all(AUTHORIZATION).iter().map(|v| v.as_bytes()).collect();
    let dpop: Vec<&[u8]> = headers.get_all("dpop").iter().map(|v| v.as_bytes()).collect();
    // Envoy sends the original method, the original path after its path_prefix and the Host
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let path = path.strip_prefix("/v1/ext_authz").unwrap_or(path);
    let header = |name: &str| headers.get(name).map_or(&b""[..], |v| v.as_bytes());
    let scheme = match header("x-forwarded-proto") {
        b"" => &b"http"[..],
        proto => proto,
    };
    // the Host header over HTTP/1.1, the URI's authority over HTTP/2
    let authority = uri.authority().map_or(header("host"), |a| a.as_str().as_bytes());
    let seen =
        multitokens_core::dpop::Seen { method: method.as_str().as_bytes(), scheme, authority, path: path.as_bytes() };
    let asked = crate::ext_authz::Asked { authorization: &values, dpop: &dpop, seen };
    let set = match crate::ext_authz::check(&store, asked).await {
        crate::ext_authz::Check::Allow(set) => set,
        crate::ext_authz::Check::Deny { status, detail, challenge, nonce } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut response = (status, Json(ErrorBody { detail: detail.to_string() })).into_response();
            if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert(WWW_AUTHENTICATE, value);
            }
            if let Some(value) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
                response.headers_mut().insert("dpop-nonce", value);
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
    if let Ok(removed) = HeaderValue::from_str(&crate::ext_authz::REMOVED_HEADERS.join(", ")) {
        out.insert(ENVOY_AUTH_HEADERS_TO_REMOVE, removed);
    }
    Ok(response)
}

/// The response header Envoy's HTTP ext_authz reads for request headers to remove (comma-separated).
const ENVOY_AUTH_HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
