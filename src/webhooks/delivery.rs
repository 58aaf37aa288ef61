//! Delivery: one task per endpoint reads the audit stream as the consumer group
//! `webhook:<name>`, posts each event it subscribes to, and acknowledges it once the endpoint
//! answered 2xx. A failed attempt is retried with backoff (1 s, doubling, at most 5 min), in
//! order, for up to a day; then the event is dropped and counted. After a restart the events this
//! companion was handed and never acknowledged are sent first; those a companion that is gone
//! held for 2 minutes are claimed by another.

use super::payload;
use super::{signature_header, WebhookEndpoint};
use crate::audit::AuditRecord;
use crate::connection::Conn;
use crate::metrics::{EndpointLabels, WebhookLabels};
use crate::store::{AuditEntry, TokenStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events read at once: one, so that no event waits, handed to this companion, behind another's
/// retries long enough for a second companion to take it over.
const BATCH: usize = 1;
/// How long a read waits for new events.
const BLOCK: Duration = Duration::from_secs(1);
/// How often events left by another companion are looked for.
const CLAIM_EVERY: Duration = Duration::from_secs(30);
/// How long an event must sit unacknowledged with another companion before it is taken over.
pub const CLAIM_AFTER: Duration = Duration::from_secs(120);
/// The first retry's wait; each next one doubles.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// An event still undelivered this long after it happened is dropped.
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(24 * 3600);

/// This companion's name in the consumer groups: the host name (a pod's name), so a restarted
/// companion resumes what it was delivering.
fn consumer_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "companion".into())
}

/// Starts one delivery task per endpoint (on the current tokio runtime).
pub fn spawn(store: Arc<TokenStore>, endpoints: Vec<WebhookEndpoint>) {
    let consumer = consumer_name();
    for endpoint in endpoints {
        let worker = Delivery::new(store.clone(), endpoint, consumer.clone());
        tokio::spawn(worker.run());
    }
}

/// How one attempt went.
enum Attempt {
    /// The endpoint answered 2xx.
    Delivered,
    /// Anything else: why.
    Failed(String),
}

/// One endpoint's delivery task.
struct Delivery {
    store: Arc<TokenStore>,
    endpoint: WebhookEndpoint,
    group: String,
    consumer: String,
    agent: ureq::Agent,
}

impl Delivery {
    fn new(store: Arc<TokenStore>, endpoint: WebhookEndpoint, consumer: String) -> Delivery {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(endpoint.timeout))
            .user_agent(concat!("multitokens/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let group = format!("webhook:{}", endpoint.name);
        Delivery { store, endpoint, group, consumer, agent }
    }

    fn labels(&self, outcome: &'static str) -> WebhookLabels {
        WebhookLabels { endpoint: self.endpoint.name.clone(), outcome }
    }

    /// This endpoint's `webhook_retrying` gauge.
    fn retrying(&self) -> prometheus_client::metrics::gauge::Gauge {
        let endpoint = EndpointLabels { endpoint: self.endpoint.name.clone() };
        self.store.metrics().webhook_retrying.get_or_create(&endpoint).clone()
    }

    /// Follows the audit stream for ever.
    async fn run(self) {
        // every series from the start, at 0: a dashboard or an alert sees the endpoint before its
        // first event
        for outcome in ["delivered", "failed", "dropped"] {
            let _ = self.store.metrics().webhook_deliveries.get_or_create(&self.labels(outcome));
        }
        let _ = self.retrying();
        while let Err(e) = self.store.create_webhook_group(&self.group).await {
            let endpoint = &self.endpoint.name;
            tracing::warn!(endpoint, error = %e, "cannot create the webhook consumer group; retrying");
            tokio::time::sleep(BLOCK).await;
        }
        let mut conn: Option<Conn> = None;
        let mut own_pending = true;
        let mut last_claim: Option<Instant> = None;
        // while claims find events left behind, claim on: a dead companion's backlog moves at once
        let mut claiming = false;
        loop {
            let claimed = if claiming || last_claim.is_none_or(|t| t.elapsed() >= CLAIM_EVERY) {
                last_claim = Some(Instant::now());
                self.store.claim_webhook_group(&self.group, &self.consumer, CLAIM_AFTER, BATCH).await
            } else {
                Ok(Vec::new())
            };
            claiming = claimed.as_ref().is_ok_and(|c| !c.is_empty());
            let batch = match claimed {
                Ok(claimed) if claiming => Ok(claimed),
                _ => self.read(&mut conn, own_pending).await,
            };
            match batch {
                Ok(entries) => {
                    if own_pending && entries.is_empty() {
                        own_pending = false;
                    }
                    for (id, record) in entries {
                        self.deliver(&id, record).await;
                    }
                }
                Err(e) => {
                    let endpoint = &self.endpoint.name;
                    tracing::warn!(endpoint, error = %e, "cannot read the audit stream for webhooks");
                    conn = None;
                    tokio::time::sleep(BLOCK).await;
                    if e.contains("NOGROUP") {
                        // the stream or the group was deleted: start again at the stream's end
                        let _ = self.store.create_webhook_group(&self.group).await;
                    }
                }
            }
        }
    }

    async fn read(&self, conn: &mut Option<Conn>, pending: bool) -> Result<Vec<AuditEntry>, String> {
        if conn.is_none() {
            *conn = Some(self.store.redis().dedicated(BLOCK).await.map_err(|e| e.to_string())?);
        }
        let Some(c) = conn.as_mut() else { return Ok(Vec::new()) };
        self.store
            .read_webhook_group(c, &self.group, &self.consumer, pending, BATCH, BLOCK)
            .await
            .map_err(|e| e.to_string())
    }

    /// Counts an attempt's outcome.
    fn count(&self, outcome: &'static str) {
        self.store.metrics().webhook_deliveries.get_or_create(&self.labels(outcome)).inc();
    }

    /// Sends one event until the endpoint takes it (or it is too old), then acknowledges it.
    async fn deliver(&self, id: &str, record: Option<AuditRecord>) {
        let message = record.as_ref().and_then(payload::body).filter(|(kind, _)| self.endpoint.events.contains(kind));
        if let Some((kind, body)) = message {
            self.send_until_taken(id, kind, &body).await;
        }
        while let Err(e) = self.store.ack_webhook_group(&self.group, id).await {
            let endpoint = &self.endpoint.name;
            tracing::warn!(endpoint, error = %e, "cannot acknowledge a webhook event; retrying");
            tokio::time::sleep(BLOCK).await;
        }
    }

    /// Attempts, with backoff, until one is delivered or the event is a day old.
    async fn send_until_taken(&self, id: &str, kind: &'static str, body: &[u8]) {
        let webhook_id = format!("msg_{id}");
        let retrying = self.retrying();
        let endpoint = &self.endpoint.name;
        let mut backoff = FIRST_BACKOFF;
        while let Attempt::Failed(why) = self.attempt(&webhook_id, body).await {
            self.count("failed");
            if event_age(id) > MAX_EVENT_AGE {
                self.count("dropped");
                tracing::error!(endpoint, webhook_id, kind, why, "webhook dropped: undelivered for a day");
                retrying.set(0);
                return;
            }
            let retry_in_ms = backoff.as_millis() as u64;
            tracing::warn!(endpoint, webhook_id, kind, why, retry_in_ms, "webhook delivery failed");
            retrying.set(1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // still ours: no other companion takes it over while it is retried here
            let _ = self.store.keep_webhook_entry(&self.group, &self.consumer, id).await;
        }
        self.count("delivered");
        retrying.set(0);
    }

    /// One signed `POST` (off the async runtime: the HTTP client blocks).
    async fn attempt(&self, webhook_id: &str, body: &[u8]) -> Attempt {
        let timestamp = crate::clock::now_secs();
        let signature = signature_header(&self.endpoint.secrets, webhook_id, timestamp, body);
        let request = ureq::http::Request::builder()
            .method("POST")
            .uri(&self.endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_vec());
        let request = match request {
            Ok(r) => r,
            Err(e) => return Attempt::Failed(format!("cannot build the request: {e}")),
        };
        let agent = self.agent.clone();
        let sent = tokio::task::spawn_blocking(move || {
            agent.run(request).map(|r| r.status().as_u16()).map_err(|e| e.to_string())
        })
        .await;
        match sent {
            Ok(Ok(status)) if (200..300).contains(&status) => Attempt::Delivered,
            Ok(Ok(status)) => Attempt::Failed(format!("HTTP {status}")),
            Ok(Err(e)) => Attempt::Failed(e),
            Err(e) => Attempt::Failed(format!("delivery task failed: {e}")),
        }
    }
}

/// How long ago an audit event happened, from its stream id.
fn event_age(id: &str) -> Duration {
    let ms = id.split_once('-').and_then(|(ms, _)| ms.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis(crate::clock::now_ms().saturating_sub(ms))
}
