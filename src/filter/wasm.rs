//! The proxy-wasm shell: wires Envoy's host calls to [`super::flow`]. No decisions are made here.
//!
//! Flow as in proxy-wasm-rust-sdk `http_auth_random`: dispatch the callout, return `Pause`, then
//! resume or send the local reply in the callback. The root context owns the per-VM [`Worker`]
//! (config, cache, revocation feed) and polls the feed on its tick.

use super::config::Compiled;
use super::flow::{Host, HttpFlow, Metric, Step, Worker};
use super::lookup::{self, LookupRequest, LOOKUP_PATH};
use super::reply::{self, Denial, LocalReply};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Metric ids, defined once per VM.
#[derive(Default)]
struct Metrics {
    ids: [Option<u32>; Metric::ALL.len()],
}

impl Metrics {
    fn define() -> Self {
        let mut m = Metrics::default();
        for metric in Metric::ALL {
            m.ids[metric.index()] = hostcalls::define_metric(MetricType::Counter, metric.name()).ok();
        }
        m
    }

    fn add(&self, metric: Metric, n: i64) {
        if let Some(id) = self.ids[metric.index()] {
            let _ = hostcalls::increment_metric(id, n);
        }
    }
}

/// Sends a request to the companion through the configured Envoy cluster.
fn callout(compiled: &Compiled, method: &str, path: &str, body: Option<&[u8]>) -> Result<u32, String> {
    let c = &compiled.config.companion;
    let auth = format!("Bearer {}", c.api_key);
    let mut headers = vec![(":method", method), (":path", path), (":authority", c.authority.as_str()), ("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    hostcalls::dispatch_http_call(&c.cluster, headers, body, vec![], Duration::from_millis(c.timeout_ms))
        .map_err(|s| format!("dispatch to cluster {:?} failed: {s:?}", c.cluster))
}

/// The callout response of the current callback: status (`None` if there was no response) and body.
fn callout_response(num_headers: usize, body_size: usize) -> (Option<u32>, Vec<u8>) {
    if num_headers == 0 {
        return (None, Vec::new());
    }
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u32>().ok());
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
    (status.or(Some(0)), body)
}

#[derive(Default)]
struct Root {
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Rc<Metrics>,
    feed_call: Option<(u32, u64)>,
    last_purge_ms: u64,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let Some((feed_token, _)) = self.feed_call else { return };
        if token != feed_token {
            return; // a sliding refresh: nothing to do with its answer
        }
        self.feed_call = None;
        let Some(worker) = &self.worker else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else { return };
        worker.feed.in_flight = false;
        let (status, body) = callout_response(num_headers, body_size);
        match lookup::parse_feed(status, &body) {
            Ok(page) => {
                let applied = worker.apply_feed(page, now_ms());
                if applied > 0 {
                    self.metrics.add(Metric::RevocationsApplied, applied as i64);
                }
            }
            Err(problem) => {
                self.metrics.add(Metric::CalloutError, 1);
                log(LogLevel::Warn, &format!("multitokens: revocation feed poll failed: {problem:?}"));
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        match Compiled::parse(&bytes) {
            Ok(compiled) => {
                let poll = compiled.config.revocation_poll_ms;
                let tick = if poll > 0 { poll } else { 1000 };
                self.worker = Some(Rc::new(RefCell::new(Worker::new(compiled))));
                self.metrics = Rc::new(Metrics::define());
                let _ = hostcalls::set_tick_period(Duration::from_millis(tick));
                log(LogLevel::Info, "multitokens: configured");
                true
            }
            Err(e) => {
                log(LogLevel::Error, &e);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(worker) = &self.worker else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else { return };
        let now = now_ms();
        let poll_enabled = worker.compiled.config.revocation_poll_ms > 0;
        let timeout = worker.compiled.config.companion.timeout_ms;
        // a poll whose answer never came (it always should) is given up after twice its timeout
        if let Some((_, started)) = self.feed_call {
            if now.saturating_sub(started) > 2 * timeout {
                self.feed_call = None;
                worker.feed.in_flight = false;
            }
        }
        if poll_enabled && self.feed_call.is_none() {
            let path = lookup::feed_path(worker.feed.cursor.as_deref());
            match callout(&worker.compiled, "GET", &path, None) {
                Ok(token) => {
                    self.feed_call = Some((token, now));
                    worker.feed.in_flight = true;
                }
                Err(e) => log(LogLevel::Warn, &format!("multitokens: {e}")),
            }
        }
        for request in std::mem::take(&mut worker.refresh_queue) {
            if let Ok(body) = serde_json::to_vec(&request) {
                let _ = callout(&worker.compiled, "POST", LOOKUP_PATH, Some(&body));
            }
        }
        if now.saturating_sub(self.last_purge_ms) > 10_000 {
            worker.cache.purge_expired(now);
            self.last_purge_ms = now;
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { worker: self.worker.clone(), metrics: self.metrics.clone(), flow: HttpFlow::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The [`Host`] over Envoy's host calls for the current HTTP context.
struct EnvoyHost<'a> {
    metrics: &'a Metrics,
    compiled: &'a Compiled,
}

impl Host for EnvoyHost<'_> {
    fn header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name).ok().flatten()
    }

    fn set_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn remove_header(&mut self, name: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
    }

    fn send_reply(&mut self, reply: &LocalReply) {
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
    }

    fn dispatch_lookup(&mut self, request: &LookupRequest) -> Result<u32, String> {
        let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        callout(self.compiled, "POST", LOOKUP_PATH, Some(&body))
    }

    fn count(&mut self, metric: Metric) {
        self.metrics.add(metric, 1);
    }

    fn warn(&self, message: &str) {
        log(LogLevel::Warn, message);
    }
}

struct Http {
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Rc<Metrics>,
    flow: HttpFlow,
}

impl Http {
    /// Fails closed when the worker is not usable (never expected: config is checked at load).
    fn unavailable(&self) -> Action {
        let r = reply::deny(Denial::Unavailable, "multitokens", &[]);
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let _ = hostcalls::send_http_response(r.status, headers, Some(r.body.as_bytes()));
        self.metrics.add(Metric::DeniedUnavailable, 1);
        Action::Pause
    }

    fn action(&self, step: Step) -> Action {
        match step {
            Step::Continue => Action::Continue,
            Step::Pause | Step::Replied => Action::Pause,
        }
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        if self.flow.waiting_for() != Some(token) {
            return;
        }
        let (status, body) = callout_response(num_headers, body_size);
        let Some(worker) = self.worker.clone() else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            self.unavailable();
            return;
        };
        let compiled = Rc::clone(&worker.compiled);
        let mut host = EnvoyHost { metrics: &self.metrics, compiled: &compiled };
        if self.flow.on_lookup_response(&mut host, &mut worker, status, &body, now_ms()) == Step::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(worker) = self.worker.clone() else { return self.unavailable() };
        let Ok(mut worker) = worker.try_borrow_mut() else { return self.unavailable() };
        let compiled = Rc::clone(&worker.compiled);
        let mut host = EnvoyHost { metrics: &self.metrics, compiled: &compiled };
        let step = self.flow.on_request_headers(&mut host, &mut worker, now_ms());
        self.action(step)
    }
}
