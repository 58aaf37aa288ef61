//! Envoy's Redis callouts (the Higress ABI, `docs/redis-callout-abi.md`): the host
//! functions `proxy_redis_init` / `proxy_redis_call`, and the guest callback
//! `proxy_on_redis_call_response`, which the host calls on the ROOT context. This module routes
//! each reply by its call token back to the HTTP context paused on it (or to the feed poller).

use super::abi::{self, Buffer, Level};
use super::transport::StoreTransport;
use super::{apply_feed, log, now_ms, with_flow, Metrics};
use multitokens_filter::config::{Compiled, RedisTarget, Transport};
use multitokens_filter::flow::HttpFlow;
use multitokens_filter::host::Step;
use multitokens_filter::lookup::Answer;
use multitokens_filter::lookup::LookupRequest;
use multitokens_filter::redis_transport;
use multitokens_filter::worker::Worker;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

#[allow(clashing_extern_declarations)]
extern "C" {
    fn proxy_redis_init(
        service_ptr: *const u8,
        service_size: usize,
        username_ptr: *const u8,
        username_size: usize,
        password_ptr: *const u8,
        password_size: usize,
        timeout_milliseconds: u32,
    ) -> u32;
    fn proxy_redis_call(
        service_ptr: *const u8,
        service_size: usize,
        query_ptr: *const u8,
        query_size: usize,
        return_token: *mut u32,
    ) -> u32;
}

/// What a Redis call was for.
enum Purpose {
    /// A paused request's lookup: its HTTP context and root, and the sliding refresh to send
    /// once the token proved valid (never for an unknown one: forged tokens cost one call).
    /// The request is kept for the digests it tried (a record is honoured only with a seal over
    /// the digest it was found under).
    Lookup { context_id: u32, root_id: u32, refresh: Option<Vec<u8>>, request: LookupRequest },
    /// The revocation feed poll of a root context.
    Feed { root_id: u32 },
    /// A sliding refresh; its answer is not needed.
    Refresh,
}

#[derive(Default)]
struct Registry {
    calls: HashMap<u32, Purpose>,
    flows: HashMap<u32, Weak<RefCell<HttpFlow>>>,
    roots: HashMap<u32, (Rc<RefCell<Worker>>, Rc<Metrics>)>,
}

thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> Option<T> {
    REGISTRY.with(|r| r.try_borrow_mut().ok().map(|mut r| f(&mut r)))
}

/// Remembers a configured root context's worker.
pub(super) fn register_root(root_id: u32, worker: Rc<RefCell<Worker>>, metrics: Rc<Metrics>) {
    with_registry(|r| r.roots.insert(root_id, (worker, metrics)));
}

/// Remembers a request's flow so its Redis reply can find it.
pub(super) fn register_flow(context_id: u32, flow: Rc<RefCell<HttpFlow>>) {
    with_registry(|r| r.flows.insert(context_id, Rc::downgrade(&flow)));
}

/// Forgets a finished request.
pub(super) fn forget_flow(context_id: u32) {
    with_registry(|r| r.flows.remove(&context_id));
}

/// Configures the host's Redis client for the cluster (`AUTH` and `SELECT` as configured).
pub(super) fn init(target: &RedisTarget) -> Result<(), String> {
    let user = target.username.as_deref().unwrap_or("");
    let pass = target.password.as_deref().unwrap_or("");
    let timeout = u32::try_from(target.timeout_ms).unwrap_or(u32::MAX);
    // SAFETY: every pointer/length pair describes a live byte slice for the duration of the call.
    let status = unsafe {
        proxy_redis_init(
            target.cluster.as_ptr(),
            target.cluster.len(),
            user.as_ptr(),
            user.len(),
            pass.as_ptr(),
            pass.len(),
            timeout,
        )
    };
    match status {
        0 => Ok(()),
        2 => {
            Err(format!("invalid multitokens configuration: redis.cluster: Envoy has no cluster {:?}", target.cluster))
        }
        other => Err(format!("invalid multitokens configuration: redis: proxy_redis_init failed with status {other}")),
    }
}

fn call(target: &RedisTarget, query: &[u8], purpose: Purpose) -> Result<u32, String> {
    let mut token: u32 = 0;
    // SAFETY: the slices live for the call; `token` is a valid u32 the host writes to.
    let status = unsafe {
        proxy_redis_call(target.cluster.as_ptr(), target.cluster.len(), query.as_ptr(), query.len(), &mut token)
    };
    match status {
        0 => {
            with_registry(|r| r.calls.insert(token, purpose));
            Ok(token)
        }
        2 => Err(format!("Redis callout: no cluster {:?}", target.cluster)),
        10 => Err("Redis callout: no healthy Redis host".into()),
        other => Err(format!("Redis callout failed with status {other}")),
    }
}

/// The Redis-callout build's transport: `EVAL`s of the core scripts through Envoy's Redis callouts.
pub(super) struct RedisCallouts;

/// The one instance.
pub(super) static REDIS: RedisCallouts = RedisCallouts;

impl StoreTransport for RedisCallouts {
    fn lookup(
        &self,
        compiled: &Compiled,
        request: &LookupRequest,
        context_id: u32,
        root_id: u32,
    ) -> Result<u32, String> {
        let Transport::Redis(target) = &compiled.transport else { return Err("no Redis configured".into()) };
        let refresh = redis_transport::refresh_command(&compiled.keys, request);
        call(
            target,
            &redis_transport::lookup_command(&compiled.keys, request, target.eval_ro),
            Purpose::Lookup { context_id, root_id, refresh, request: request.clone() },
        )
    }

    fn poll_feed(&self, compiled: &Compiled, cursor: Option<&str>, _edge: &str, root_id: u32) -> Result<u32, String> {
        let Transport::Redis(target) = &compiled.transport else { return Err("no Redis configured".into()) };
        call(target, &redis_transport::feed_command(&compiled.keys, cursor, target.eval_ro), Purpose::Feed { root_id })
    }

    fn refresh(&self, compiled: &Compiled, request: &LookupRequest, _: u32) -> Result<u32, String> {
        let Transport::Redis(target) = &compiled.transport else { return Err("no Redis configured".into()) };
        match redis_transport::refresh_command(&compiled.keys, request) {
            Some(query) => call(target, &query, Purpose::Refresh),
            None => Err("refresh without a TTL".into()),
        }
    }
}

/// The guest callback of the Redis-callout ABI.
#[no_mangle]
pub extern "C" fn proxy_on_redis_call_response(_root_context_id: u32, token: u32, status: u32, response_size: usize) {
    let Some(Some(purpose)) = with_registry(|r| r.calls.remove(&token)) else { return };
    let bytes = if status == 0 { abi::buffer(Buffer::RedisCallResponse, response_size).ok() } else { None };
    match purpose {
        Purpose::Refresh => {}
        Purpose::Feed { root_id } => {
            let Some(Some((worker, metrics))) = with_registry(|r| r.roots.get(&root_id).cloned()) else { return };
            let Ok(mut worker) = worker.try_borrow_mut() else { return };
            apply_feed(&mut worker, &metrics, redis_transport::parse_feed(bytes.as_deref()));
            if worker.feed_has_more() {
                // a full page: the next one now, not on the next tick
                let compiled = Rc::clone(worker.compiled());
                if let Ok(call) = REDIS.poll_feed(&compiled, worker.feed_cursor(), "", root_id) {
                    worker.feed_poll_started(call, now_ms());
                }
            }
        }
        Purpose::Lookup { context_id, root_id, refresh, request } => {
            let found =
                with_registry(|r| (r.flows.get(&context_id).and_then(Weak::upgrade), r.roots.get(&root_id).cloned()));
            let Some((Some(flow), Some((worker, metrics)))) = found else {
                log(Level::Debug, "multitokens: Redis reply for a finished request");
                return;
            };
            if abi::set_effective_context(context_id).is_err() {
                return;
            }
            let now = now_ms();
            let Ok(answer) = worker
                .try_borrow()
                .map(|w| redis_transport::parse_lookup(bytes.as_deref(), now, &w.compiled().hash_keys, &request))
            else {
                return;
            };
            if let (Ok(Answer::Valid(..)), Some(refresh)) = (&answer, refresh) {
                if let Ok(w) = worker.try_borrow() {
                    if let Transport::Redis(target) = &w.compiled().transport {
                        let _ = call(target, &refresh, Purpose::Refresh);
                    }
                }
            }
            let step =
                with_flow(&flow, Some(&worker), &metrics, Some(&REDIS), (context_id, root_id), |flow, host, worker| {
                    flow.on_lookup_response(host, worker, answer, now)
                });
            if step == Step::Continue {
                let _ = abi::resume_request();
            }
            let share = flow.try_borrow_mut().ok().and_then(|mut f| f.take_share());
            if let Some(share) = share {
                for follower in share.followers {
                    super::in_context(follower, |http| http.answer(share.answer.clone()));
                }
            }
        }
    }
}
