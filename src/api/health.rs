//! Health, readiness, metrics, and the middleware that counts every request.

use super::*;

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
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
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
    responses((status = 200, description = "Prometheus metrics",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
pub(crate) async fn metrics(State(store): State<Arc<TokenStore>>) -> Response {
    ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], store.metrics().encode()).into_response()
}

/// Counts and times every request by its route template and a known method (bounded cardinality:
/// never the path, never a made-up method).
pub(super) async fn track(
    State(store): State<Arc<TokenStore>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
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
