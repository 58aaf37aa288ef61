//! One single-threaded VM hosting many requests, as a proxy-wasm VM is (one per Envoy worker):
//! its root contexts (a plugin configuration each, with its [`Worker`], timer and feed), their
//! requests (an [`HttpFlow`] each), and what every callout under way is for, so both transports'
//! answers take one path. The proxy-wasm shell only speaks the ABI: it implements [`Proxy`] over
//! its host calls and calls [`Vm`] from its entry points.
//!
//! Never panics: an answer for an unknown call or context, or a re-entrant call, is dropped or
//! its request fails closed. The tables are borrowed only to look a context up, so a context
//! deleted while one of its own calls runs is still forgotten.

mod stats;
#[cfg(test)]
mod tests;

use super::config::Compiled;
use super::edge::{self, Edge};
use super::flow::HttpFlow;
use super::header_list::HeaderList;
use super::host::{Host, Step};
use super::lookup::{Answer, CalloutProblem, LookupRequest};
use super::metric::Metric;
use super::reply::{self, Denial, LocalReply};
use super::store_call::{StoreCall, StoreReply};
use super::worker::Worker;
use multitokens_core::activity::ActivityReport;
use stats::Stats;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// Log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}

/// The host calls of a single-threaded proxy. Those about a request act on the current
/// (effective) context.
pub trait Proxy {
    /// The current request's headers, as bytes ([`Host::request_headers`]).
    fn request_headers(&self) -> HeaderList;
    /// Sets a header of the current request, replacing every value it had.
    fn set_header(&mut self, name: &str, value: &[u8]);
    /// Adds a value to a header of the current request (any other values stay).
    fn add_header(&mut self, name: &str, value: &[u8]);
    /// Removes a header of the current request.
    fn remove_header(&mut self, name: &str);
    /// The current request's trailers.
    fn request_trailers(&self) -> HeaderList;
    /// Removes a trailer of the current request.
    fn remove_trailer(&mut self, name: &str);
    /// Answers the current request locally.
    fn send_reply(&mut self, reply: &LocalReply);
    /// The current request's downstream address.
    fn client_address(&self) -> Option<Vec<u8>>;
    /// Resumes the current (paused) request.
    fn resume_request(&mut self);
    /// Makes a context the current one; `false` if the proxy will not.
    fn set_effective_context(&mut self, context_id: u32) -> bool;
    /// Checks at configure time that this build reaches the configured store, and prepares it.
    fn start_transport(&mut self, compiled: &Compiled) -> Result<(), String>;
    /// Sends a store call; its token (the answer comes to [`Vm::on_callout_answer`]).
    fn send(&mut self, call: StoreCall) -> Result<u32, String>;
    /// Asks for [`Vm::on_tick`] every `period_ms`.
    fn set_tick_period(&mut self, period_ms: u64);
    /// The proxy's wall clock, milliseconds since the epoch.
    fn now_ms(&self) -> u64;
    /// Defines a counter (or a gauge); its id.
    fn define_metric(&mut self, gauge: bool, name: &str) -> Option<u32>;
    /// Adds to a metric; `false` if the proxy refused.
    fn increment_metric(&mut self, id: u32, by: i64) -> bool;
    /// The VM's memory in bytes.
    fn memory_bytes(&self) -> i64;
    /// Logs a line (never a token or a secret).
    fn log(&self, level: Level, message: &str);
}

/// What a callout was for, by the context it answers to.
enum Purpose {
    /// A request's lookup, answered in that request's context.
    Lookup(u32),
    /// A root's revocation feed poll.
    Feed(u32),
    /// A root's sliding refresh or activity report: its answer is not needed.
    Unanswered(u32),
}

impl Purpose {
    /// The context whose end makes the answer pointless.
    fn context(&self) -> u32 {
        match self {
            Purpose::Lookup(id) | Purpose::Feed(id) | Purpose::Unanswered(id) => *id,
        }
    }
}

/// What a root shares with its requests: the worker and the stats.
struct Shared {
    worker: RefCell<Worker>,
    stats: Stats,
}

/// A root context: a plugin configuration (none until it is configured).
struct Root {
    shared: Option<Rc<Shared>>,
}

/// A request context: its flow under its root's worker.
struct Request {
    id: u32,
    root_id: u32,
    shared: Option<Rc<Shared>>,
    flow: HttpFlow,
}

#[derive(Default)]
struct Contexts {
    roots: HashMap<u32, Rc<RefCell<Root>>>,
    requests: HashMap<u32, Rc<RefCell<Request>>>,
    calls: HashMap<u32, Purpose>,
}

/// The VM's contexts and the callouts under way.
#[derive(Default)]
pub struct Vm {
    contexts: RefCell<Contexts>,
}

impl Vm {
    /// Runs `f` on the tables (`None` if they are in use: a re-entrant call, never expected).
    fn with<T>(&self, f: impl FnOnce(&mut Contexts) -> T) -> Option<T> {
        self.contexts.try_borrow_mut().ok().map(|mut c| f(&mut c))
    }

    fn root(&self, id: u32) -> Option<Rc<RefCell<Root>>> {
        self.with(|c| c.roots.get(&id).cloned()).flatten()
    }

    /// What a configured root shares (`None`: no such root, or not configured).
    fn configured(&self, root_id: u32) -> Option<Rc<Shared>> {
        self.root(root_id)?.try_borrow().ok()?.shared.clone()
    }

    fn request(&self, id: u32) -> Option<Rc<RefCell<Request>>> {
        self.with(|c| c.requests.get(&id).cloned()).flatten()
    }

    /// Sends a store call whose answer goes to `purpose`.
    fn send(&self, proxy: &mut dyn Proxy, call: StoreCall, purpose: Purpose) -> Result<u32, String> {
        let token = proxy.send(call)?;
        self.with(|c| c.calls.insert(token, purpose));
        Ok(token)
    }

    /// A context is created: a root (no parent) or a request under a root.
    pub fn on_context_create(&self, context_id: u32, parent_id: u32) {
        if parent_id == 0 {
            self.with(|c| c.roots.insert(context_id, Rc::new(RefCell::new(Root { shared: None }))));
            return;
        }
        let Some(shared) = self.root(parent_id).and_then(|r| r.try_borrow().ok().map(|r| r.shared.clone())) else {
            return;
        };
        let request = Request { id: context_id, root_id: parent_id, shared, flow: HttpFlow::new() };
        self.with(|c| c.requests.insert(context_id, Rc::new(RefCell::new(request))));
    }

    /// A root's plugin configuration, parsed once; `false` stops the plugin from loading (the log
    /// says why).
    pub fn on_configure(&self, proxy: &mut dyn Proxy, root_id: u32, config: &[u8]) -> bool {
        let Some(root) = self.root(root_id) else { return false };
        let Ok(mut root) = root.try_borrow_mut() else { return false };
        let compiled = match Compiled::parse(config).and_then(|c| proxy.start_transport(&c).map(|()| c)) {
            Ok(c) => c,
            Err(e) => {
                proxy.log(Level::Error, &e);
                return false;
            }
        };
        let mut worker = Worker::new(compiled);
        worker.record_tick(proxy.now_ms());
        proxy.set_tick_period(worker.tick_ms());
        root.shared = Some(Rc::new(Shared { worker: RefCell::new(worker), stats: Stats::define(proxy) }));
        proxy.log(Level::Info, "multitokens: configured");
        true
    }

    /// A root's timer: feed poll, sliding refreshes and activity ([`edge::on_tick`]), then gauges
    /// and counters; the requests whose lookup was never answered look up again.
    pub fn on_tick(&self, proxy: &mut dyn Proxy, root_id: u32) {
        let Some(shared) = self.configured(root_id) else { return };
        let look_up_again = {
            let Ok(mut worker) = shared.worker.try_borrow_mut() else { return };
            let now = proxy.now_ms();
            let again = edge::on_tick(
                &mut worker,
                &mut RootEdge { vm: self, proxy: &mut *proxy, root_id, stats: &shared.stats },
                now,
            );
            shared.stats.record_gauges(proxy, worker.cached_verdicts());
            again
        };
        shared.stats.flush(proxy);
        for follower in look_up_again {
            self.in_context(proxy, follower, Request::retry);
        }
    }

    /// Request headers: continue, pause (for a lookup) or replied. A request of an unknown
    /// context fails closed.
    pub fn on_request_headers(&self, proxy: &mut dyn Proxy, context_id: u32, end_of_stream: bool) -> Step {
        match self.request(context_id).as_ref().map(|r| r.try_borrow_mut()) {
            Some(Ok(mut request)) => request.step(self, proxy, !end_of_stream, false, |flow, host, worker| {
                let now = host.proxy.now_ms();
                flow.on_request_headers(host, worker, now)
            }),
            _ => unavailable(proxy, None),
        }
    }

    /// Request trailers: never carry identity headers upstream.
    pub fn on_request_trailers(&self, proxy: &mut dyn Proxy, context_id: u32) {
        if let Some(Ok(mut request)) = self.request(context_id).as_ref().map(|r| r.try_borrow_mut()) {
            request.step(self, proxy, false, false, |flow, host, worker| {
                flow.on_request_trailers(host, worker);
                Step::Continue
            });
        }
    }

    /// A callout answered, HTTP or Redis: routed by its token to what it was for; `reply` reads
    /// the answer from the proxy, only when somebody waits for it.
    pub fn on_callout_answer(&self, proxy: &mut dyn Proxy, token: u32, reply: impl FnOnce() -> StoreReply) {
        let Some(purpose) = self.with(|c| c.calls.remove(&token)).flatten() else {
            proxy.log(Level::Debug, "multitokens: a callout answer nobody waits for");
            return;
        };
        let reply = reply();
        match purpose {
            Purpose::Unanswered(_) => {}
            Purpose::Feed(root_id) => {
                let Some(shared) = self.configured(root_id) else { return };
                if !proxy.set_effective_context(root_id) {
                    return;
                }
                let Ok(mut worker) = shared.worker.try_borrow_mut() else { return };
                let page = reply.feed_page();
                let now = proxy.now_ms();
                let mut edge = RootEdge { vm: self, proxy, root_id, stats: &shared.stats };
                edge::on_feed_answer(&mut worker, &mut edge, token, page, now);
            }
            Purpose::Lookup(context_id) => {
                self.in_context(proxy, context_id, |r, vm, proxy| r.on_lookup_answer(vm, proxy, token, &reply))
            }
        }
    }

    /// A context is deleted: the requests that followed its lookup look up again, and it is
    /// forgotten with every answer it still waited for.
    pub fn on_delete(&self, proxy: &mut dyn Proxy, context_id: u32) {
        if let Some(Ok(mut request)) = self.request(context_id).as_ref().map(|r| r.try_borrow_mut()) {
            request.on_gone(self, proxy);
        }
        self.with(|c| {
            c.requests.remove(&context_id);
            c.roots.remove(&context_id);
            c.calls.retain(|_, purpose| purpose.context() != context_id);
        });
    }

    /// Runs `f` on another live request, made the current context first.
    fn in_context(&self, proxy: &mut dyn Proxy, id: u32, f: impl FnOnce(&mut Request, &Vm, &mut dyn Proxy)) {
        let Some(request) = self.request(id) else { return };
        if proxy.set_effective_context(id) {
            if let Ok(mut request) = request.try_borrow_mut() {
                f(&mut request, self, proxy);
            }
        }
    }
}

/// Fails the current request closed (never expected: config is checked at load).
fn unavailable(proxy: &mut dyn Proxy, stats: Option<&Stats>) -> Step {
    proxy.send_reply(&reply::deny(Denial::Unavailable, "multitokens", &[]));
    if let Some(stats) = stats {
        stats.add(Metric::DeniedUnavailable, 1);
    }
    Step::Replied
}

impl Request {
    /// Runs one step of the flow with the worker borrowed (failing closed if it cannot be);
    /// resumes the request when the step lets it through and `resume`.
    fn step(
        &mut self,
        vm: &Vm,
        proxy: &mut dyn Proxy,
        has_body: bool,
        resume: bool,
        run: impl FnOnce(&mut HttpFlow, &mut RequestHost, &mut Worker) -> Step,
    ) -> Step {
        let Some(shared) = &self.shared else { return unavailable(proxy, None) };
        let Ok(mut worker) = shared.worker.try_borrow_mut() else { return unavailable(proxy, Some(&shared.stats)) };
        let compiled = Arc::clone(worker.compiled());
        let stats = &shared.stats;
        let mut host =
            RequestHost { vm, proxy: &mut *proxy, stats, compiled: &compiled, context_id: self.id, has_body };
        let step = run(&mut self.flow, &mut host, &mut worker);
        if resume && step == Step::Continue {
            proxy.resume_request();
        }
        step
    }

    /// This request's lookup answered (an answer for another call is ignored); a valid token's
    /// sliding refresh is sent when the transport needs one of its own.
    fn on_lookup_answer(&mut self, vm: &Vm, proxy: &mut dyn Proxy, token: u32, reply: &StoreReply) {
        let Some(shared) = self.shared.clone().filter(|_| self.flow.waiting_for() == Some(token)) else { return };
        let answer = {
            let Ok(worker) = shared.worker.try_borrow() else { return };
            let Some(request) = self.flow.lookup_request(worker.compiled()) else { return };
            let (answer, refresh) = reply.lookup_answer(worker.compiled(), &request, proxy.now_ms());
            if let Some(refresh) = refresh {
                let _ = vm.send(proxy, refresh, Purpose::Unanswered(self.root_id));
            }
            answer
        };
        self.answer(vm, proxy, answer);
    }

    /// Decides on the lookup's answer (this context is the current one), then hands it to the
    /// requests that followed the lookup.
    fn answer(&mut self, vm: &Vm, proxy: &mut dyn Proxy, answer: Result<Answer, CalloutProblem>) {
        self.step(vm, proxy, false, true, |flow, host, worker| {
            let now = host.proxy.now_ms();
            flow.on_lookup_response(host, worker, answer, now)
        });
        if let Some(share) = self.flow.take_share() {
            for follower in share.followers {
                vm.in_context(proxy, follower, |r, vm, proxy| r.answer(vm, proxy, share.answer.clone()));
            }
        }
    }

    /// This request's stream is gone: the requests that followed its lookup look up again.
    fn on_gone(&mut self, vm: &Vm, proxy: &mut dyn Proxy) {
        let Some(shared) = &self.shared else { return };
        let followers = match shared.worker.try_borrow_mut() {
            Ok(mut worker) => self.flow.on_gone(&mut worker, self.id),
            Err(_) => return,
        };
        for follower in followers {
            vm.in_context(proxy, follower, Request::retry);
        }
    }

    /// The lookup this request followed will not be answered: look up again.
    fn retry(&mut self, vm: &Vm, proxy: &mut dyn Proxy) {
        self.step(vm, proxy, false, true, |flow, host, worker| {
            let now = host.proxy.now_ms();
            flow.retry(host, worker, now)
        });
    }
}

/// The [`Edge`] of a root: its store calls and its counts.
struct RootEdge<'a> {
    vm: &'a Vm,
    proxy: &'a mut dyn Proxy,
    root_id: u32,
    stats: &'a Stats,
}

impl Edge for RootEdge<'_> {
    fn poll_feed(&mut self, compiled: &Compiled, cursor: Option<&str>, edge: &str) -> Result<u32, String> {
        self.vm.send(self.proxy, StoreCall::feed(compiled, cursor, edge)?, Purpose::Feed(self.root_id))
    }

    fn refresh(&mut self, compiled: &Compiled, request: &LookupRequest) -> Result<(), String> {
        match StoreCall::refresh(compiled, request)? {
            Some(call) => self.vm.send(self.proxy, call, Purpose::Unanswered(self.root_id)).map(|_| ()),
            None => Ok(()),
        }
    }

    fn report_activity(&mut self, compiled: &Compiled, reports: &[ActivityReport]) -> Result<(), String> {
        for call in StoreCall::activity(compiled, reports)? {
            self.vm.send(self.proxy, call, Purpose::Unanswered(self.root_id))?;
        }
        Ok(())
    }

    fn count(&mut self, metric: Metric, n: u64) {
        self.stats.add(metric, n as i64);
    }

    fn warn(&self, message: &str) {
        self.proxy.log(Level::Warn, message);
    }
}

/// The [`Host`] of the request whose context is the current one.
struct RequestHost<'a> {
    vm: &'a Vm,
    proxy: &'a mut dyn Proxy,
    stats: &'a Stats,
    compiled: &'a Compiled,
    context_id: u32,
    /// A body follows the request headers (known in the request-headers callback only).
    has_body: bool,
}

impl Host for RequestHost<'_> {
    fn request_headers(&self) -> HeaderList {
        self.proxy.request_headers()
    }

    fn set_header(&mut self, name: &str, value: &[u8]) {
        self.proxy.set_header(name, value);
    }

    fn add_header(&mut self, name: &str, value: &[u8]) {
        self.proxy.add_header(name, value);
    }

    fn remove_header(&mut self, name: &str) {
        self.proxy.remove_header(name);
    }

    fn request_has_body(&self) -> bool {
        self.has_body
    }

    fn request_trailers(&self) -> HeaderList {
        self.proxy.request_trailers()
    }

    fn remove_trailer(&mut self, name: &str) {
        self.proxy.remove_trailer(name);
    }

    fn send_reply(&mut self, reply: &LocalReply) {
        self.proxy.send_reply(reply);
    }

    fn client_address(&self) -> Option<Vec<u8>> {
        self.proxy.client_address()
    }

    fn context_id(&self) -> u32 {
        self.context_id
    }

    fn dispatch_lookup(&mut self, request: &LookupRequest) -> Result<u32, String> {
        self.vm.send(self.proxy, StoreCall::lookup(self.compiled, request)?, Purpose::Lookup(self.context_id))
    }

    fn count(&mut self, metric: Metric) {
        self.stats.add(metric, 1);
        if metric == Metric::TickOverdue {
            // counts are handed over on the tick, which is what is overdue: hand them over now
            self.stats.flush(self.proxy);
        }
    }

    fn warn(&self, message: &str) {
        self.proxy.log(Level::Warn, message);
    }
}
