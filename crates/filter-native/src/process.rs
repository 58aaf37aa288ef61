//! What one filter config shares across Envoy's workers: one [`Worker`] per process (config,
//! verdict cache, revocation feed, lookups under way), the stats, the requests waiting to be woken
//! from another thread, and the timer thread that drives the feed from Envoy's main thread.

use crate::abi::{self, Caller, Config, Filter, Level, Scheduler, StatKind};
use crate::lookups::{Admit, Lookups, Queued};
use multitokens_core::activity::ActivityReport;
use multitokens_filter::companion_transport::{self, CompanionCall};
use multitokens_filter::config::{Compiled, Transport};
use multitokens_filter::edge::{self, Edge};
use multitokens_filter::lookup::{Answer, CalloutProblem, LookupRequest};
use multitokens_filter::metric::Metric;
use multitokens_filter::worker::Worker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The wall clock in ms since the epoch (what the wasm build's host clock is; a step back is
/// noticed by [`Worker::observe_clock`]).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Locks a mutex; a panic caught while it was held does not stop the process from serving.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What wakes a paused request from another request's thread or the main thread.
pub enum Wake {
    /// The lookup it followed was answered.
    Answer(Result<Answer, CalloutProblem>),
    /// The lookup it followed will not be answered: look up again.
    Retry,
    /// It is the oldest waiting lookup: send the waiting lookups, from its own worker.
    Carry,
}

/// A paused request that can be woken: its scheduler and what it is woken with.
pub struct Waiting {
    /// Runs the request's `scheduled` hook on its worker.
    pub scheduler: Arc<Scheduler>,
    /// What the hook finds.
    pub inbox: Arc<Mutex<Vec<Wake>>>,
}

/// What a config-level callout was for.
enum ConfigCall {
    /// A revocation feed poll, by the token the worker knows it under.
    Feed(u32),
    /// A batch of lookups: the requests to wake with their answers, in order, and when it was sent.
    Batch(Vec<u32>, u64),
    /// A sliding refresh or an activity report (its answer is not needed).
    Unanswered,
}

/// The counters of [`Metric`] and the `cache_entries` gauge as Envoy stats (Envoy's own atomic
/// counters: a count costs one call, no batching).
struct Stats {
    ids: Vec<Option<usize>>,
    cache_entries: Option<usize>,
}

/// The timer thread: it only asks Envoy to run the tick on the main thread.
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: std::thread::JoinHandle<()>,
}

/// One filter config's shared state (one per Envoy process and config, whatever `--concurrency`).
pub struct Process {
    worker: Mutex<Worker>,
    stats: Stats,
    waiting: Mutex<HashMap<u32, Waiting>>,
    calls: Mutex<HashMap<u64, ConfigCall>>,
    lookups: Mutex<Lookups>,
    /// Runs [`BATCH_EVENT`] on the main thread.
    flusher: Scheduler,
    ticker: Mutex<Option<Ticker>>,
    next_feed_token: AtomicU32,
}

/// Context ids of requests (what a request that follows another's lookup is woken by).
static NEXT_CONTEXT: AtomicU32 = AtomicU32::new(1);

/// A fresh context id (never 0).
pub fn new_context_id() -> u32 {
    loop {
        let id = NEXT_CONTEXT.fetch_add(1, Ordering::Relaxed);
        if id != 0 {
            return id;
        }
    }
}

/// The event of the config scheduler: the timer ticked.
pub const TICK_EVENT: u64 = 1;
/// The event of the config scheduler: lookups wait to be sent together.
pub const BATCH_EVENT: u64 = 2;

impl Process {
    /// Parses the plugin JSON once and defines the stats; an error stops the config from loading.
    pub fn start(config: Config, json: &[u8]) -> Result<Arc<Process>, String> {
        let compiled = Compiled::parse(json)?;
        if let Transport::Redis(_) = compiled.transport {
            return Err("invalid multitokens configuration: redis: the native module reaches the store through the \
                companion (`companion`); Redis callouts exist only in the Higress wasm ABI (multitokens_filter_redis.wasm)"
                .into());
        }
        let max_in_flight = match &compiled.transport {
            Transport::Companion(c) => c.max_lookups_in_flight,
            Transport::Redis(_) => 0,
        };
        let mut worker = Worker::new(compiled);
        worker.record_tick(now_ms());
        let tick = Duration::from_millis(worker.tick_ms());
        let stats = Stats {
            ids: Metric::ALL.iter().map(|m| abi::define_stat(config, StatKind::Counter, m.name())).collect(),
            cache_entries: abi::define_stat(config, StatKind::Gauge, "multitokens.cache_entries"),
        };
        let process = Arc::new(Process {
            worker: Mutex::new(worker),
            stats,
            waiting: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            lookups: Mutex::new(Lookups::new(max_in_flight)),
            flusher: Scheduler::for_config(config).ok_or("multitokens: Envoy gave no config scheduler")?,
            ticker: Mutex::new(None),
            next_feed_token: AtomicU32::new(1),
        });
        let scheduler = Scheduler::for_config(config).ok_or("multitokens: Envoy gave no config scheduler")?;
        *lock(&process.ticker) = Some(Ticker::start(scheduler, tick)?);
        abi::log(Level::Info, "multitokens: configured (native module, one cache per process)");
        Ok(process)
    }

    /// Stops the timer thread (the config is going away).
    pub fn stop(&self) {
        if let Some(ticker) = lock(&self.ticker).take() {
            ticker.stop();
        }
        lock(&self.waiting).clear();
    }

    /// The worker, locked.
    pub fn worker(&self) -> MutexGuard<'_, Worker> {
        lock(&self.worker)
    }

    /// Counts one event of a request (on its worker: straight to Envoy).
    pub fn count(&self, filter: Filter, metric: Metric) {
        if let Some(Some(id)) = self.stats.ids.get(metric.index()) {
            abi::increment_counter(filter, *id, 1);
        }
    }

    /// Counts events from the config's side (main thread).
    fn count_on_main(&self, config: Config, metric: Metric, n: u64) {
        if let Some(Some(id)) = self.stats.ids.get(metric.index()) {
            abi::config_increment_counter(config, *id, n);
        }
    }

    /// Reports how many verdicts are cached (main thread).
    fn report_cache(&self, config: Config, worker: &Worker) {
        if let Some(id) = self.stats.cache_entries {
            abi::config_set_gauge(config, id, worker.cached_verdicts() as u64);
        }
    }

    /// Makes a paused request wakeable from any thread.
    pub fn register(&self, id: u32, waiting: Waiting) {
        lock(&self.waiting).insert(id, waiting);
    }

    /// The request is no longer paused (or gone).
    pub fn unregister(&self, id: u32) {
        lock(&self.waiting).remove(&id);
    }

    /// A request's lookup: sent by the request now, or queued for a batch (its call token; what is
    /// under way, or a flush already asked for, sends it).
    pub fn admit_lookup(&self, context_id: u32, request: &LookupRequest) -> Admit {
        lock(&self.lookups).admit(context_id, request)
    }

    /// A request's own lookup callout, or a batch it carried, is over (answered, failed or
    /// cancelled with the request).
    pub fn lookup_done(&self) {
        let carrier = lock(&self.lookups).done();
        self.ask_to_carry(carrier);
    }

    /// A request went away: its lookup, if still queued, is not sent (and if it was asked to
    /// carry the waiting lookups, the next one is).
    pub fn forget_queued(&self, context_id: u32) {
        let carrier = lock(&self.lookups).forget(context_id);
        self.ask_to_carry(carrier);
    }

    /// The batches to send now (a carrier sends them from its worker), each counted as under way.
    pub fn take_batches(&self) -> Vec<Vec<Queued>> {
        lock(&self.lookups).take_batches()
    }

    /// A carried batch was cancelled with its carrier: its other lookups wait again, first.
    pub fn give_back(&self, batch: Vec<Queued>) {
        let carrier = lock(&self.lookups).give_back(batch);
        self.ask_to_carry(carrier);
    }

    /// Asks the request chosen to carry the waiting lookups; if it is gone already, the main
    /// thread sends them.
    fn ask_to_carry(&self, carrier: Option<u32>) {
        if let Some(id) = carrier {
            if !self.wake(id, Wake::Carry) {
                self.flusher.commit(BATCH_EVENT);
            }
        }
    }

    /// The config scheduler ran (main thread): the timer, or lookups waiting for a batch.
    pub fn on_scheduled(&self, config: Config, event: u64) {
        match event {
            BATCH_EVENT => self.send_batches(config),
            _ => self.on_tick(config),
        }
    }

    /// Sends the queued lookups, [`multitokens_core::contract::MAX_LOOKUP_BATCH`] per callout
    /// (main thread); a batch that cannot be sent answers its requests "no response".
    fn send_batches(&self, config: Config) {
        let batches = lock(&self.lookups).take_batches();
        if batches.is_empty() {
            return;
        }
        let compiled = Arc::clone(self.worker().compiled());
        for batch in batches {
            let (members, requests): (Vec<u32>, Vec<LookupRequest>) =
                batch.into_iter().map(|Queued { context_id, request }| (context_id, request)).unzip();
            let call = ConfigCall::Batch(members.clone(), now_ms());
            if let Err(e) = self.send(config, CompanionCall::lookups(&compiled, &requests), call) {
                // each request counts and handles the failure as its own lookup's
                abi::log(Level::Warn, &format!("multitokens: cannot send a lookup batch: {e}"));
                self.batch_over(members, Err(CalloutProblem::NoResponse), None);
            }
        }
    }

    /// A batch is over (sent by the main thread, or carried by request `own`): each request but
    /// `own` woken with its answer (all with the batch's problem if it has none), and the lookups
    /// that waited meanwhile handed on; `own`'s answer is returned for it to take at once.
    pub fn batch_over(
        &self,
        members: impl IntoIterator<Item = u32>,
        answers: Result<Vec<Result<Answer, CalloutProblem>>, CalloutProblem>,
        own: Option<u32>,
    ) -> Option<Result<Answer, CalloutProblem>> {
        let mut answers = answers.map(Vec::into_iter);
        let mut owned = None;
        for member in members {
            let answer = match &mut answers {
                Ok(each) => match each.next() {
                    Some(answer) => answer,
                    None => break,
                },
                Err(problem) => Err(problem.clone()),
            };
            if Some(member) == own {
                owned = Some(answer);
            } else {
                self.wake(member, Wake::Answer(answer));
            }
        }
        self.lookup_done();
        owned
    }

    /// Batches never answered within their timeout (and a margin) are over: a callout whose end
    /// Envoy never reported must not hold its requests or a place under way.
    fn expire_batches(&self, timeout_ms: u64) {
        let now = now_ms();
        let expired: Vec<Vec<u32>> = {
            let mut calls = lock(&self.calls);
            let old: Vec<u64> = calls
                .iter()
                .filter(|(_, c)| matches!(c, ConfigCall::Batch(_, sent) if now > sent + timeout_ms + 1000))
                .map(|(id, _)| *id)
                .collect();
            old.iter()
                .filter_map(|id| match calls.remove(id) {
                    Some(ConfigCall::Batch(members, _)) => Some(members),
                    _ => None,
                })
                .collect()
        };
        for members in expired {
            self.batch_over(members, Err(CalloutProblem::NoResponse), None);
        }
    }

    /// Wakes a paused request on its worker; whether it was there to wake (one already gone is
    /// skipped).
    pub fn wake(&self, id: u32, wake: Wake) -> bool {
        let waiting = lock(&self.waiting);
        let Some(w) = waiting.get(&id) else { return false };
        lock(&w.inbox).push(wake);
        w.scheduler.commit(0);
        true
    }

    /// The timer (main thread): feed poll and sliding refreshes, then the gauge; the requests
    /// whose lookup was never answered look up again.
    pub fn on_tick(&self, config: Config) {
        let (look_up_again, timeout_ms) = {
            let mut worker = self.worker();
            let mut edge = ConfigEdge { process: self, config };
            let again = edge::on_tick(&mut worker, &mut edge, now_ms());
            self.report_cache(config, &worker);
            (again, worker.compiled().transport.timeout_ms())
        };
        for id in look_up_again {
            self.wake(id, Wake::Retry);
        }
        self.expire_batches(timeout_ms);
        if lock(&self.lookups).waiting() {
            self.send_batches(config);
        }
    }

    /// A config-level callout answered (main thread): a feed page is applied.
    pub fn on_config_callout_done(&self, config: Config, callout: u64, status: Option<u32>, body: &[u8]) {
        let call = lock(&self.calls).remove(&callout);
        let token = match call {
            Some(ConfigCall::Feed(token)) => token,
            // each request counts and logs a problem as its own lookup's
            Some(ConfigCall::Batch(members, _)) => {
                let answers = companion_transport::parse_answers(status, body, members.len());
                self.batch_over(members, answers, None);
                return;
            }
            _ => return,
        };
        let page = companion_transport::parse_feed(status, body);
        let mut worker = self.worker();
        let mut edge = ConfigEdge { process: self, config };
        edge::on_feed_answer(&mut worker, &mut edge, token, page, now_ms());
        self.report_cache(config, &worker);
    }

    /// Sends a config-level GET to the companion (main thread); its callout id.
    fn send(&self, config: Config, get: Result<CompanionCall, String>, call: ConfigCall) -> Result<u64, String> {
        let get = get?;
        let id = abi::http_callout(Caller::Config(config), get.cluster, &get.headers(), &get.body, get.timeout_ms)?;
        lock(&self.calls).insert(id, call);
        Ok(id)
    }
}

/// The [`Edge`] of the main thread: config-level callouts and counts.
struct ConfigEdge<'a> {
    process: &'a Process,
    config: Config,
}

impl Edge for ConfigEdge<'_> {
    fn poll_feed(&mut self, compiled: &Compiled, cursor: Option<&str>, edge: &str) -> Result<u32, String> {
        let token = self.process.next_feed_token.fetch_add(1, Ordering::Relaxed);
        let get = CompanionCall::feed(compiled, cursor, edge);
        self.process.send(self.config, get, ConfigCall::Feed(token)).map(|_| token)
    }

    fn refresh(&mut self, compiled: &Compiled, request: &LookupRequest) -> Result<(), String> {
        self.process.send(self.config, CompanionCall::lookup(compiled, request), ConfigCall::Unanswered).map(|_| ())
    }

    fn report_activity(&mut self, compiled: &Compiled, reports: &[ActivityReport]) -> Result<(), String> {
        let call = CompanionCall::activity(compiled, reports);
        self.process.send(self.config, call, ConfigCall::Unanswered).map(|_| ())
    }

    fn count(&mut self, metric: Metric, n: u64) {
        self.process.count_on_main(self.config, metric, n);
    }

    fn warn(&self, message: &str) {
        abi::log(Level::Warn, message);
    }
}

impl Ticker {
    /// Starts the thread: every `period` it commits a tick to the config scheduler, so the tick
    /// itself (and every callout it sends) runs on Envoy's main thread.
    fn start(scheduler: Scheduler, period: Duration) -> Result<Ticker, String> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("multitokens-tick".into())
            .spawn(move || {
                let (stopped, signal) = &*flag;
                let mut guard = lock(stopped);
                loop {
                    // the first tick comes at once: the feed is followed from the start
                    scheduler.commit(TICK_EVENT);
                    guard = signal.wait_timeout(guard, period).map_or_else(|e| e.into_inner().0, |(g, _)| g);
                    if *guard {
                        return;
                    }
                }
            })
            .map_err(|e| format!("multitokens: timer thread: {e}"))?;
        Ok(Ticker { stop, thread })
    }

    /// Stops the thread and waits for it (it drops the scheduler as it ends).
    fn stop(self) {
        let (stopped, signal) = &*self.stop;
        *lock(stopped) = true;
        signal.notify_all();
        let _ = self.thread.join();
    }
}
