//! One request: its [`HttpFlow`] over Envoy's callbacks ([`NativeHost`]), paused while its lookup
//! (or the lookup it follows, maybe on another worker) is under way.

use crate::abi::{self, Caller, Filter, HeaderMap, Level, Scheduler};
use crate::lookups::{Admit, Queued};
use crate::process::{new_context_id, now_ms, Process, Waiting, Wake};
use multitokens_filter::companion_transport::{self, CompanionCall};
use multitokens_filter::config::Compiled;
use multitokens_filter::flow::HttpFlow;
use multitokens_filter::header_list::HeaderList;
use multitokens_filter::host::{Host, Step};
use multitokens_filter::lookup::{Answer, CalloutProblem, LookupRequest};
use multitokens_filter::metric::Metric;
use multitokens_filter::reply::LocalReply;
use multitokens_filter::worker::Worker;
use std::sync::{Arc, Mutex, PoisonError};

/// The [`Host`] over Envoy's callbacks for the request whose hook is running.
struct NativeHost<'a> {
    filter: Filter,
    process: &'a Process,
    compiled: &'a Compiled,
    context_id: u32,
    has_body: bool,
    /// The request's own lookup callout under way.
    direct: &'a mut Option<u32>,
    /// How the request is woken from other threads.
    wakeable: &'a mut Wakeable,
}

impl Host for NativeHost<'_> {
    fn request_headers(&self) -> HeaderList {
        abi::headers(self.filter, HeaderMap::Request)
    }

    fn set_header(&mut self, name: &str, value: &[u8]) {
        abi::set_header(self.filter, HeaderMap::Request, name, Some(value));
    }

    fn add_header(&mut self, name: &str, value: &[u8]) {
        abi::add_header(self.filter, HeaderMap::Request, name, value);
    }

    fn remove_header(&mut self, name: &str) {
        abi::set_header(self.filter, HeaderMap::Request, name, None);
    }

    fn request_has_body(&self) -> bool {
        self.has_body
    }

    fn request_trailers(&self) -> HeaderList {
        abi::headers(self.filter, HeaderMap::RequestTrailers)
    }

    fn remove_trailer(&mut self, name: &str) {
        abi::set_header(self.filter, HeaderMap::RequestTrailers, name, None);
    }

    fn send_reply(&mut self, reply: &LocalReply) {
        abi::send_response(self.filter, reply.status, &reply.headers, reply.body.as_bytes());
    }

    fn client_address(&self) -> Option<Vec<u8>> {
        abi::source_address(self.filter)
    }

    fn context_id(&self) -> u32 {
        self.context_id
    }

    /// Sends the lookup from this request, or queues it to go in the process's next batch.
    fn dispatch_lookup(&mut self, request: &LookupRequest) -> Result<u32, String> {
        // wakeable before it is queued: its batch may be answered before this hook returns
        self.wakeable.register(self.process, self.context_id, self.filter);
        if let Admit::Queued(token) = self.process.admit_lookup(self.context_id, request) {
            return Ok(token);
        }
        let sent = CompanionCall::lookup(self.compiled, request).and_then(|get| {
            abi::http_callout(Caller::Filter(self.filter), get.cluster, &get.headers(), &get.body, get.timeout_ms)
        });
        match sent {
            Ok(id) => {
                if self.direct.replace(call_token(id)).is_some() {
                    self.process.lookup_done(); // never expected: one lookup per request at a time
                }
                Ok(call_token(id))
            }
            Err(e) => {
                self.process.lookup_done();
                Err(e)
            }
        }
    }

    fn count(&mut self, metric: Metric) {
        self.process.count(self.filter, metric);
    }

    fn warn(&self, message: &str) {
        abi::log(Level::Warn, message);
    }
}

/// The flow's token for an Envoy callout id (ids are per request and small).
pub fn call_token(id: u64) -> u32 {
    u32::try_from(id).unwrap_or(u32::MAX)
}

/// How a paused request is woken from other threads: its scheduler and its inbox (made the first
/// time they are needed, on its worker, kept until the request ends), and whether it is in the
/// process's registry (a hit never is: no lock taken and nothing allocated for it).
#[derive(Default)]
struct Wakeable {
    scheduler: Option<Arc<Scheduler>>,
    inbox: Option<Arc<Mutex<Vec<Wake>>>>,
    registered: bool,
}

impl Wakeable {
    /// Puts the request in the process's registry (once: it stays there until taken out).
    fn register(&mut self, process: &Process, id: u32, filter: Filter) {
        if self.registered {
            return;
        }
        if self.scheduler.is_none() {
            self.scheduler = Scheduler::for_filter(filter).map(Arc::new);
        }
        if let Some(scheduler) = &self.scheduler {
            let inbox = Arc::clone(self.inbox.get_or_insert_with(Arc::default));
            process.register(id, Waiting { scheduler: Arc::clone(scheduler), inbox });
            self.registered = true;
        }
    }

    /// What other threads handed over since the last time (nothing if it was never registered).
    fn take_wakes(&self) -> Vec<Wake> {
        match &self.inbox {
            Some(inbox) => std::mem::take(&mut *inbox.lock().unwrap_or_else(PoisonError::into_inner)),
            None => Vec::new(),
        }
    }

    /// Takes the request out of the registry, if it is in it.
    fn unregister(&mut self, process: &Process, id: u32) {
        if std::mem::replace(&mut self.registered, false) {
            process.unregister(id);
        }
    }
}

/// One request under the filter.
struct Stream {
    process: Arc<Process>,
    id: u32,
    flow: HttpFlow,
    wakeable: Wakeable,
    paused: bool,
    /// Its own lookup callout under way (a queued lookup has none: a carrier sends it).
    direct: Option<u32>,
    /// The lookup batches it carries for the process (it was the oldest waiting), by call token.
    carried: Vec<(u32, Vec<Queued>)>,
    gone: bool,
}

impl Stream {
    /// A new request of `process`.
    fn new(process: Arc<Process>) -> Stream {
        Stream {
            process,
            id: new_context_id(),
            flow: HttpFlow::new(),
            wakeable: Wakeable::default(),
            paused: false,
            direct: None,
            carried: Vec::new(),
            gone: false,
        }
    }

    /// Whether the request is paused (its body waits).
    fn paused(&self) -> bool {
        self.paused
    }

    /// Runs one step of the flow with the process's worker locked; after a pause the request is
    /// registered to be woken, and `resume` continues it when the step lets it through.
    fn step(
        &mut self,
        filter: Filter,
        has_body: bool,
        resume: bool,
        run: impl FnOnce(&mut HttpFlow, &mut NativeHost, &mut Worker) -> Step,
    ) -> Step {
        let step = {
            let mut worker = self.process.worker();
            let compiled = Arc::clone(worker.compiled());
            let (process, context_id, direct, wakeable) =
                (&*self.process, self.id, &mut self.direct, &mut self.wakeable);
            let mut host = NativeHost { filter, process, compiled: &compiled, context_id, has_body, direct, wakeable };
            run(&mut self.flow, &mut host, &mut worker)
        };
        self.paused = step == Step::Pause;
        if self.paused {
            self.register(filter);
        } else {
            self.unregister();
        }
        if resume && step == Step::Continue {
            abi::continue_decoding(filter);
        }
        step
    }

    /// Makes this paused request wakeable from other threads.
    fn register(&mut self, filter: Filter) {
        self.wakeable.register(&self.process, self.id, filter);
    }

    /// Takes this request out of the registry, if it is in it.
    fn unregister(&mut self) {
        self.wakeable.unregister(&self.process, self.id);
    }

    /// Request headers: forward, pause (for a lookup) or a local reply was sent.
    fn on_request_headers(&mut self, filter: Filter, end_of_stream: bool) -> Step {
        self.step(filter, !end_of_stream, false, |flow, host, worker| flow.on_request_headers(host, worker, now_ms()))
    }

    /// Request trailers: never carry identity headers upstream.
    fn on_request_trailers(&mut self, filter: Filter) {
        let worker = self.process.worker();
        let compiled = Arc::clone(worker.compiled());
        let (process, context_id, direct, wakeable) = (&*self.process, self.id, &mut self.direct, &mut self.wakeable);
        let mut host =
            NativeHost { filter, process, compiled: &compiled, context_id, has_body: false, direct, wakeable };
        self.flow.on_request_trailers(&mut host, &worker);
    }

    /// This request's lookup answered, or a batch it carried (an answer for another call is
    /// ignored).
    fn on_callout_done(&mut self, filter: Filter, callout: u64, status: Option<u32>, body: &[u8]) {
        if let Some(at) = self.carried.iter().position(|(call, _)| *call == call_token(callout)) {
            let (_, batch) = self.carried.swap_remove(at);
            let answers = companion_transport::parse_answers(status, body, batch.len());
            return self.batch_over(filter, batch, answers);
        }
        if self.direct == Some(call_token(callout)) {
            self.direct = None;
            self.process.lookup_done();
        }
        if self.flow.waiting_for() != Some(call_token(callout)) {
            return;
        }
        self.answer(filter, companion_transport::parse_answer(status, body));
    }

    /// Decides on a lookup's answer, then hands it to the requests that followed the lookup.
    fn answer(&mut self, filter: Filter, answer: Result<Answer, CalloutProblem>) {
        self.step(filter, false, true, |flow, host, worker| flow.on_lookup_response(host, worker, answer, now_ms()));
        if let Some(share) = self.flow.take_share() {
            for follower in share.followers {
                self.process.wake(follower, Wake::Answer(share.answer.clone()));
            }
        }
    }

    /// Woken on this worker: what another thread (or request) handed over.
    fn on_scheduled(&mut self, filter: Filter) {
        let wakes = self.wakeable.take_wakes();
        if self.gone {
            // complete: nothing more is sent or answered from it (a carrier that went away was
            // forgotten, and the next waiting request asked in its place)
            return;
        }
        for wake in wakes {
            match wake {
                // the process's lookups are sent whatever became of this request's own
                Wake::Carry => self.carry(filter),
                _ if !self.paused => {}
                Wake::Answer(answer) => self.answer(filter, answer),
                Wake::Retry => {
                    self.step(filter, false, true, |flow, host, worker| flow.retry(host, worker, now_ms()));
                }
            }
        }
    }

    /// Sends the process's waiting lookups from this request (the oldest of them): the answers
    /// come back on this worker. A batch that cannot be sent answers its requests "no response".
    fn carry(&mut self, filter: Filter) {
        let batches = self.process.take_batches();
        if batches.is_empty() {
            return; // the main thread's timer sent them first
        }
        let compiled = Arc::clone(self.process.worker().compiled());
        for batch in batches {
            let requests: Vec<LookupRequest> = batch.iter().map(|q| q.request.clone()).collect();
            let sent = CompanionCall::lookups(&compiled, &requests).and_then(|post| {
                abi::http_callout(Caller::Filter(filter), post.cluster, &post.headers(), &post.body, post.timeout_ms)
            });
            match sent {
                Ok(id) => self.carried.push((call_token(id), batch)),
                Err(e) => {
                    // each request counts and handles the failure as its own lookup's
                    abi::log(Level::Warn, &format!("multitokens: cannot send a lookup batch: {e}"));
                    self.batch_over(filter, batch, Err(CalloutProblem::NoResponse));
                }
            }
        }
    }

    /// A batch this request carried is over: the others woken with their answers (see
    /// [`Process::batch_over`]), this one answered here.
    fn batch_over(
        &mut self,
        filter: Filter,
        batch: Vec<Queued>,
        answers: Result<Vec<Result<Answer, CalloutProblem>>, CalloutProblem>,
    ) {
        let own = self.process.batch_over(batch.iter().map(|q| q.context_id), answers, Some(self.id));
        if let (Some(answer), true) = (own, self.paused) {
            self.answer(filter, answer);
        }
    }

    /// The request is done: the requests that followed its lookup look up again.
    fn on_gone(&mut self) {
        if std::mem::replace(&mut self.gone, true) {
            return;
        }
        self.unregister();
        if self.direct.take().is_some() {
            self.process.lookup_done(); // Envoy cancels a gone request's callouts
        }
        // the batches it carried were cancelled with it: their other lookups are sent again
        for (_, batch) in std::mem::take(&mut self.carried) {
            self.process.give_back(batch.into_iter().filter(|q| q.context_id != self.id).collect());
        }
        if self.flow.waiting_for().is_none() {
            return; // no lookup of its own or followed: nothing to hand on (the worker stays unlocked)
        }
        self.process.forget_queued(self.id);
        let followers = self.flow.on_gone(&mut self.process.worker(), self.id);
        for follower in followers {
            self.process.wake(follower, Wake::Retry);
        }
    }
}

/// What Envoy tells a request.
pub enum Event {
    /// Its headers (`true`: they end the stream).
    RequestHeaders(bool),
    /// Its trailers.
    RequestTrailers,
    /// A callout it made answered: id, status (`None`: no response), body.
    CalloutDone(u64, Option<u32>, Vec<u8>),
    /// Its scheduler fired.
    Scheduled,
    /// It is complete.
    Gone,
}

/// What Envoy owns for a request: the [`Stream`] and the events that arrived while a hook of the
/// same request was still running. Envoy calls back into the module from inside some callbacks
/// (a local reply completes the stream at once; a callout may fail before it returns): those
/// events wait here and run as soon as the outer hook is done, never against a half-done step
/// or a lock the outer hook holds.
pub struct Slot {
    stream: std::cell::RefCell<Stream>,
    deferred: std::cell::RefCell<std::collections::VecDeque<Event>>,
}

impl Slot {
    /// A new request of `process`.
    pub fn new(process: Arc<Process>) -> Slot {
        Slot { stream: std::cell::RefCell::new(Stream::new(process)), deferred: Default::default() }
    }

    /// Whether the request is paused (`true` while a hook runs: the body waits either way).
    pub fn paused(&self) -> bool {
        self.stream.try_borrow().map_or(true, |s| s.paused())
    }

    /// Handles an event now, or after the hook already running for this request; the step of the
    /// request headers (`None` when they could not be handled: the request fails closed).
    pub fn handle(&self, filter: Filter, event: Event) -> Option<Step> {
        let Ok(mut stream) = self.stream.try_borrow_mut() else {
            if matches!(event, Event::RequestHeaders(_)) {
                return None;
            }
            self.deferred.borrow_mut().push_back(event);
            return Some(Step::Pause);
        };
        let step = stream.on(filter, event);
        loop {
            let next = self.deferred.borrow_mut().pop_front();
            let Some(next) = next else { break };
            stream.on(filter, next);
        }
        step
    }

    /// The request's state is freed: whatever it still owed its followers is done first.
    pub fn destroy(self) {
        let mut stream = self.stream.into_inner();
        stream.on_gone();
    }
}

impl Stream {
    /// Runs one event.
    fn on(&mut self, filter: Filter, event: Event) -> Option<Step> {
        match event {
            Event::RequestHeaders(end_of_stream) => return Some(self.on_request_headers(filter, end_of_stream)),
            Event::RequestTrailers => self.on_request_trailers(filter),
            Event::CalloutDone(id, status, body) => self.on_callout_done(filter, id, status, &body),
            Event::Scheduled => self.on_scheduled(filter),
            Event::Gone => self.on_gone(),
        }
        None
    }
}
