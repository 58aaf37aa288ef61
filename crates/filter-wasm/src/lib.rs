//! The proxy-wasm shell: wires Envoy's host calls to [`multitokens_filter::flow`]. No decisions are made here.
//! Built for `wasm32-wasip1` only (elsewhere the crate is empty: its imports are Envoy's).
//!
//! Flow as in proxy-wasm-rust-sdk `http_auth_random`: dispatch the callout, return `Pause`, then
//! resume or send the local reply in the callback. The ABI itself is spoken by [`abi`] (the host
//! calls) and [`exports`] (the entry points), which never panic. The root context owns the per-VM [`Worker`]
//! (config, cache, revocation feed) and polls the feed on its tick. The stock build reaches the
//! store through HTTP callouts to the companion; the `redis-callout` build can also use Envoy's
//! Redis callouts ([`redis`]).
#![cfg(target_arch = "wasm32")]

mod abi;
mod exports;
mod metrics;
#[cfg(feature = "redis-callout")]
mod redis;
mod transport;

use abi::{Buffer, Level, Map};
use metrics::Metrics;
use multitokens_core::activity::ActivityReport;
use multitokens_filter::companion_transport;
use multitokens_filter::config::Compiled;
use multitokens_filter::edge::{self, Edge};
use multitokens_filter::flow::HttpFlow;
use multitokens_filter::host::{Host, Step};
use multitokens_filter::lookup::{Answer, CalloutProblem, FeedPage, LookupRequest};
use multitokens_filter::metric::Metric;
use multitokens_filter::reply::{self, Denial, LocalReply};
use multitokens_filter::worker::Worker;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use transport::StoreTransport;

use abi::log;

/// The host's clock, read on every request (one cheap host call): a cached verdict's age is
/// always measured against real time, whether or not the timer still ticks.
fn now_ms() -> u64 {
    abi::now_ms()
}

/// The HTTP callout answer of the current callback: status (`None`: no response) and body.
fn http_response(num_headers: usize, body_size: usize) -> Reply {
    if num_headers == 0 {
        return Reply::Http(None, Vec::new());
    }
    let status = abi::header(Map::CalloutResponseHeaders, ":status")
        .and_then(|s| std::str::from_utf8(&s).ok().and_then(|s| s.parse::<u32>().ok()));
    let body = abi::buffer(Buffer::CalloutResponseBody, body_size).unwrap_or_default();
    Reply::Http(status.or(Some(0)), body)
}

/// What a callout was for: both transports' answers are routed by it, in one registry
/// ([`exports`]).
pub(crate) enum Purpose {
    /// A request's lookup, answered in that request's context.
    Lookup {
        /// The request's context.
        context_id: u32,
        /// What its answer needs besides the reply.
        via: LookupVia,
    },
    /// A root's revocation feed poll.
    Feed {
        /// The root context.
        root_id: u32,
    },
    /// A sliding refresh or an activity report: its answer is not needed.
    Unanswered {
        /// The root context that sent it.
        root_id: u32,
    },
}

impl Purpose {
    /// The context whose end makes the answer pointless.
    fn context(&self) -> u32 {
        match self {
            Purpose::Lookup { context_id, .. } => *context_id,
            Purpose::Feed { root_id } | Purpose::Unanswered { root_id } => *root_id,
        }
    }
}

/// What a lookup's answer needs besides the reply, by transport.
pub(crate) enum LookupVia {
    /// The companion's answer says it all.
    Companion,
    /// Redis: the request (a record is honoured only with a seal over the digest it was found
    /// under) and the sliding refresh to send once the token proved valid (never for an unknown
    /// one: a forged token costs one call).
    #[cfg(feature = "redis-callout")]
    Redis(Box<(LookupRequest, Option<Vec<u8>>)>),
}

/// A callout's answer as the host handed it over.
enum Reply {
    /// An HTTP callout: its status (`None`: no response) and body.
    Http(Option<u32>, Vec<u8>),
    /// A Redis callout: the RESP reply (`None`: the call failed).
    #[cfg(feature = "redis-callout")]
    Redis(Option<Vec<u8>>),
}

/// Routes a callout's answer to what it was for: the one path of both transports' answers.
fn on_callout_answer(token: u32, purpose: Purpose, reply: Reply) {
    match purpose {
        Purpose::Unanswered { .. } => {}
        Purpose::Feed { root_id } => {
            let page = match reply {
                Reply::Http(status, body) => companion_transport::parse_feed(status, &body),
                #[cfg(feature = "redis-callout")]
                Reply::Redis(bytes) => multitokens_filter::redis_transport::parse_feed(bytes.as_deref()),
            };
            let Some(root) = exports::root(root_id) else { return };
            if abi::set_effective_context(root_id).is_ok() {
                if let Ok(mut root) = root.try_borrow_mut() {
                    root.on_feed_answer(token, page);
                }
            }
        }
        Purpose::Lookup { context_id, via } => in_context(context_id, |http| http.on_lookup_answer(token, via, reply)),
    }
}

struct Root {
    id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Rc<Metrics>,
    transport: Option<&'static dyn StoreTransport>,
}

impl Root {
    fn new(id: u32) -> Self {
        Root { id, worker: None, metrics: Rc::new(Metrics::default()), transport: None }
    }

    /// This root's feed poll answered (an answer to an older poll is dropped).
    fn on_feed_answer(&mut self, token: u32, page: Result<FeedPage, CalloutProblem>) {
        let (Some(worker), Some(transport)) = (&self.worker, self.transport) else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else { return };
        let mut edge = RootEdge { root_id: self.id, metrics: &self.metrics, transport };
        edge::on_feed_answer(&mut worker, &mut edge, token, page, now_ms());
    }
}

/// The [`Edge`] of a root: its transport and its counters.
struct RootEdge<'a> {
    root_id: u32,
    metrics: &'a Metrics,
    transport: &'static dyn StoreTransport,
}

impl Edge for RootEdge<'_> {
    fn poll_feed(&mut self, compiled: &Compiled, cursor: Option<&str>, edge: &str) -> Result<u32, String> {
        self.transport.poll_feed(compiled, cursor, edge, self.root_id)
    }

    fn refresh(&mut self, compiled: &Compiled, request: &LookupRequest) -> Result<(), String> {
        self.transport.refresh(compiled, request, self.root_id).map(|_| ())
    }

    fn report_activity(&mut self, compiled: &Compiled, reports: &[ActivityReport]) -> Result<(), String> {
        self.transport.report_activity(compiled, reports, self.root_id)
    }

    fn count(&mut self, metric: Metric, n: u64) {
        self.metrics.add(metric, n as i64);
    }

    fn warn(&self, message: &str) {
        log(Level::Warn, message);
    }
}

impl Root {
    /// Parses the plugin configuration once; `false` stops the plugin from loading.
    fn on_configure(&mut self) -> bool {
        let bytes = abi::buffer(Buffer::PluginConfiguration, usize::MAX).unwrap_or_default();
        let compiled = match Compiled::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log(Level::Error, &e);
                return false;
            }
        };
        let transport = match transport::start(&compiled) {
            Ok(t) => t,
            Err(e) => {
                log(Level::Error, &e);
                return false;
            }
        };
        self.transport = Some(transport);
        let mut worker = Worker::new(compiled);
        worker.record_tick(now_ms());
        let tick = worker.tick_ms();
        let worker = Rc::new(RefCell::new(worker));
        self.metrics = Rc::new(Metrics::define());
        self.worker = Some(worker);
        let _ = abi::set_tick_period(tick);
        log(Level::Info, "multitokens: configured");
        true
    }

    /// The timer: feed poll and sliding refreshes ([`edge::on_tick`]), then gauges and counters;
    /// the requests whose lookup was never answered look up again.
    fn on_tick(&mut self) {
        let (Some(worker), Some(transport)) = (self.worker.clone(), self.transport) else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else { return };
        let mut edge = RootEdge { root_id: self.id, metrics: &self.metrics, transport };
        let look_up_again = edge::on_tick(&mut worker, &mut edge, now_ms());
        self.metrics.record_gauges(worker.cached_verdicts());
        self.metrics.flush();
        drop(worker);
        for follower in look_up_again {
            in_context(follower, Http::retry);
        }
    }

    /// A new request under this root.
    fn create_http_context(&self, context_id: u32) -> Http {
        let flow = HttpFlow::new();
        Http {
            id: context_id,
            root_id: self.id,
            worker: self.worker.clone(),
            metrics: self.metrics.clone(),
            transport: self.transport,
            flow,
        }
    }
}

/// The [`Host`] over Envoy's host calls for the HTTP context in effect.
struct EnvoyHost<'a> {
    metrics: &'a Metrics,
    compiled: &'a Compiled,
    transport: Option<&'a dyn StoreTransport>,
    context_id: u32,
    root_id: u32,
    /// A body follows the request headers (known in the request-headers callback only).
    has_body: bool,
}

impl Host for EnvoyHost<'_> {
    fn context_id(&self) -> u32 {
        self.context_id
    }

    fn request_headers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        abi::headers(Map::RequestHeaders).unwrap_or_default()
    }

    fn set_header(&mut self, name: &str, value: &[u8]) {
        let _ = abi::set_header(Map::RequestHeaders, name, value);
    }

    fn remove_header(&mut self, name: &str) {
        let _ = abi::remove_header(Map::RequestHeaders, name);
    }

    fn request_has_body(&self) -> bool {
        self.has_body
    }

    fn request_trailers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        abi::headers(Map::RequestTrailers).unwrap_or_default()
    }

    fn remove_trailer(&mut self, name: &str) {
        let _ = abi::remove_header(Map::RequestTrailers, name);
    }

    fn send_reply(&mut self, reply: &LocalReply) {
        let _ = abi::send_reply(reply.status, &reply.headers, reply.body.as_bytes());
    }

    fn client_address(&self) -> Option<Vec<u8>> {
        abi::property(&["source", "address"])
    }

    fn dispatch_lookup(&mut self, request: &LookupRequest) -> Result<u32, String> {
        match self.transport {
            Some(t) => t.lookup(self.compiled, request, self.context_id, self.root_id),
            None => Err("no transport started".into()),
        }
    }

    fn count(&mut self, metric: Metric) {
        self.metrics.add(metric, 1);
        if metric == Metric::TickOverdue {
            // counts are handed over on the tick, which is what is overdue: hand them over now
            self.metrics.flush();
        }
    }

    fn warn(&self, message: &str) {
        log(Level::Warn, message);
    }
}

/// Fails closed when the worker is not usable (never expected: config is checked at load).
fn unavailable(metrics: &Metrics) -> Step {
    let r = reply::deny(Denial::Unavailable, "multitokens", &[]);
    let _ = abi::send_reply(r.status, &r.headers, r.body.as_bytes());
    metrics.add(Metric::DeniedUnavailable, 1);
    Step::Replied
}

struct Http {
    id: u32,
    root_id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Rc<Metrics>,
    transport: Option<&'static dyn StoreTransport>,
    flow: HttpFlow,
}

/// Runs `f` on another live request, made the effective context first.
fn in_context(context_id: u32, f: impl FnOnce(&mut Http)) {
    let Some(http) = exports::stream(context_id) else { return };
    if abi::set_effective_context(context_id).is_err() {
        return;
    }
    let borrowed = http.try_borrow_mut();
    if let Ok(mut http) = borrowed {
        f(&mut http);
    }
}

impl Http {
    /// Runs one step of the flow over Envoy's host calls with the worker borrowed (failing closed
    /// if it cannot be); resumes the request when the step lets it through and `resume`.
    fn step(
        &mut self,
        has_body: bool,
        resume: bool,
        run: impl FnOnce(&mut HttpFlow, &mut EnvoyHost, &mut Worker) -> Step,
    ) -> Step {
        let Some(Ok(mut worker)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) else {
            return unavailable(&self.metrics);
        };
        let compiled = Arc::clone(worker.compiled());
        let (metrics, transport, context_id, root_id) = (&self.metrics, self.transport, self.id, self.root_id);
        let mut host = EnvoyHost { metrics, compiled: &compiled, transport, context_id, root_id, has_body };
        let step = run(&mut self.flow, &mut host, &mut worker);
        if resume && step == Step::Continue {
            let _ = abi::resume_request();
        }
        step
    }

    /// Request headers: forward, or pause (for a lookup, or after a local reply).
    fn on_request_headers(&mut self, end_of_stream: bool) -> Step {
        self.step(!end_of_stream, false, |flow, host, worker| flow.on_request_headers(host, worker, now_ms()))
    }

    /// Request trailers: never carry identity headers upstream.
    fn on_request_trailers(&mut self) {
        let Some(Ok(worker)) = self.worker.as_ref().map(|w| w.try_borrow()) else { return };
        let compiled = Arc::clone(worker.compiled());
        let (metrics, transport, context_id, root_id) = (&*self.metrics, self.transport, self.id, self.root_id);
        let mut host = EnvoyHost { metrics, compiled: &compiled, transport, context_id, root_id, has_body: false };
        self.flow.on_request_trailers(&mut host, &worker);
    }

    /// This request's lookup answered (an answer for another call is ignored).
    fn on_lookup_answer(&mut self, token: u32, via: LookupVia, reply: Reply) {
        if self.flow.waiting_for() != Some(token) {
            return;
        }
        let answer = match (reply, via) {
            (Reply::Http(status, body), _) => companion_transport::parse_answer(status, &body),
            #[cfg(feature = "redis-callout")]
            (Reply::Redis(bytes), via) => {
                let Some(Ok(worker)) = self.worker.as_ref().map(|w| w.try_borrow()) else { return };
                redis::read_lookup(worker.compiled(), bytes.as_deref(), via, self.root_id)
            }
        };
        self.answer(answer);
    }

    /// Decides on the lookup's answer (this context is the effective one), then hands it to the
    /// requests that followed the lookup.
    fn answer(&mut self, answer: Result<Answer, CalloutProblem>) {
        self.step(false, true, |flow, host, worker| flow.on_lookup_response(host, worker, answer, now_ms()));
        if let Some(share) = self.flow.take_share() {
            for follower in share.followers {
                in_context(follower, |http| http.answer(share.answer.clone()));
            }
        }
    }

    /// This request's stream is gone: the requests that followed its lookup look up again.
    fn on_gone(&mut self) {
        let Some(Ok(mut worker)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) else { return };
        let followers = self.flow.on_gone(&mut worker, self.id);
        drop(worker);
        for follower in followers {
            in_context(follower, Http::retry);
        }
    }

    /// The lookup this request followed will not be answered: look up again.
    fn retry(&mut self) {
        self.step(false, true, |flow, host, worker| flow.retry(host, worker, now_ms()));
    }
}
