//! The companion's Prometheus metrics (`GET /metrics`, OpenMetrics text), named
//! `multitokens_companion_*` next to the filter's `multitokens_*` Envoy stats:
//!
//! - `multitokens_companion_http_requests_total{route,method,status}` and
//!   `multitokens_companion_http_request_duration_seconds{route}`: the API, by route template.
//! - `multitokens_companion_redis_duration_seconds{op}`: each store operation's Redis round trips.
//! - `multitokens_companion_tokens_issued_total`, `multitokens_companion_tokens_revoked_total{how}`
//!   (`revoke`, `revoke_all`, `revoke_others`, `evict`), `multitokens_companion_tokens_rekeyed_total`.
//! - `multitokens_companion_tampered_records_total`: records refused for their seal.
//! - `multitokens_companion_webhook_deliveries_total{endpoint,outcome}` (`delivered`, `failed`:
//!   an attempt that will be retried, `dropped`: undelivered for a day) and
//!   `multitokens_companion_webhook_retrying{endpoint}` (1 while an event is being retried).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An API request's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template (`/v1/users/{user}/tokens`), `unmatched` for unknown paths.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The response status.
    pub status: u16,
}

/// A route's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template.
    pub route: String,
}

/// A store operation's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The operation (`issue`, `lookup`, `revoke`, ...).
    pub op: &'static str,
}

/// How tokens were revoked.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HowLabels {
    /// `revoke`, `revoke_all`, `revoke_others` or `evict`.
    pub how: &'static str,
}

/// A webhook delivery's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The endpoint's name.
    pub endpoint: String,
    /// `delivered`, `failed` (an attempt; retried) or `dropped`.
    pub outcome: &'static str,
}

/// A webhook endpoint's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The endpoint's name.
    pub endpoint: String,
}

fn seconds_histogram() -> Histogram {
    // 100 µs to ~3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric of the companion, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// API requests.
    pub requests: Family<RequestLabels, Counter>,
    /// API request durations.
    pub request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Store operation durations (Redis round trips).
    pub redis_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    /// Tokens issued.
    pub issued: Counter,
    /// Tokens revoked, by how.
    pub revoked: Family<HowLabels, Counter>,
    /// Tokens moved to the current hash key.
    pub rekeyed: Counter,
    /// Records refused for their seal.
    pub tampered: Counter,
    /// Webhook attempts by endpoint and outcome.
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
    /// 1 while an endpoint's event is being retried.
    pub webhook_retrying: Family<EndpointLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("multitokens_companion");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let redis_seconds = Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let (issued, revoked, rekeyed, tampered) =
            (Counter::default(), Family::<HowLabels, Counter>::default(), Counter::default(), Counter::default());
        registry.register("http_requests", "API requests by route template, method and status", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "API request durations by route template",
            request_seconds.clone(),
        );
        registry.register(
            "redis_duration_seconds",
            "Store operations' Redis round trips, by operation",
            redis_seconds.clone(),
        );
        registry.register("tokens_issued", "Tokens issued", issued.clone());
        registry.register("tokens_revoked", "Tokens revoked, by how", revoked.clone());
        registry.register("tokens_rekeyed", "Tokens moved to the current hash key", rekeyed.clone());
        registry.register(
            "tampered_records",
            "Token records refused because their seal does not verify",
            tampered.clone(),
        );
        let webhook_deliveries = Family::<WebhookLabels, Counter>::default();
        let webhook_retrying = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook attempts by endpoint and outcome (delivered, failed and retried, dropped)",
            webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_retrying",
            "1 while an endpoint's oldest undelivered event is being retried",
            webhook_retrying.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            redis_seconds,
            issued,
            revoked,
            rekeyed,
            tampered,
            webhook_deliveries,
            webhook_retrying,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// Records how long a store operation took.
    pub fn observe_redis(&self, op: &'static str, started: std::time::Instant) {
        self.redis_seconds.get_or_create(&OpLabels { op }).observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let m = Metrics::default();
        m.issued.inc();
        m.revoked.get_or_create(&HowLabels { how: "evict" }).inc_by(3);
        m.requests
            .get_or_create(&RequestLabels { route: "/v1/tokens".into(), method: "POST".into(), status: 201 })
            .inc();
        m.observe_redis("issue", std::time::Instant::now());
        let text = m.encode();
        for needle in [
            "multitokens_companion_tokens_issued_total 1",
            "multitokens_companion_tokens_revoked_total{how=\"evict\"} 3",
            "multitokens_companion_http_requests_total{route=\"/v1/tokens\",method=\"POST\",status=\"201\"} 1",
            "multitokens_companion_redis_duration_seconds_count{op=\"issue\"} 1",
            "multitokens_companion_tampered_records_total 0",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
