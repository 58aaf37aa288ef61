//! Envoy's Redis callouts (the Higress ABI, `docs/redis-callout-abi.md`): the host
//! functions `proxy_redis_init` / `proxy_redis_call`, and the guest callback
//! `proxy_on_redis_call_response`, which the host calls on the ROOT context. Its replies are
//! routed like HTTP callout answers, by their token (one registry: [`super::exports`]).

use super::abi::{self, Buffer, Status};
use super::transport::StoreTransport;
use super::{exports, now_ms, LookupVia, Purpose, Reply};
use multitokens_core::activity::ActivityReport;
use multitokens_filter::config::{Compiled, RedisTarget, Transport};
use multitokens_filter::lookup::{Answer, CalloutProblem, LookupRequest};
use multitokens_filter::redis_transport;

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
    match Status::of(status) {
        Ok(()) => Ok(()),
        Err(Status::BadArgument) => {
            Err(format!("invalid multitokens configuration: redis.cluster: Envoy has no cluster {:?}", target.cluster))
        }
        Err(other) => Err(format!("invalid multitokens configuration: redis: proxy_redis_init failed: {other}")),
    }
}

fn call(target: &RedisTarget, query: &[u8], purpose: Purpose) -> Result<u32, String> {
    let mut token: u32 = 0;
    // SAFETY: the slices live for the call; `token` is a valid u32 the host writes to.
    let status = unsafe {
        proxy_redis_call(target.cluster.as_ptr(), target.cluster.len(), query.as_ptr(), query.len(), &mut token)
    };
    match Status::of(status) {
        Ok(()) => {
            exports::expect_answer(token, purpose);
            Ok(token)
        }
        Err(Status::BadArgument) => Err(format!("Redis callout: no cluster {:?}", target.cluster)),
        Err(Status::Unavailable) => Err("Redis callout: no healthy Redis host".into()),
        Err(other) => Err(format!("Redis callout failed: {other}")),
    }
}

/// The Redis-callout build's transport: `EVAL`s of the core scripts through Envoy's Redis callouts.
pub(super) struct RedisCallouts;

/// The one instance.
pub(super) static REDIS: RedisCallouts = RedisCallouts;

impl StoreTransport for RedisCallouts {
    fn lookup(&self, compiled: &Compiled, request: &LookupRequest, context_id: u32, _: u32) -> Result<u32, String> {
        let Transport::Redis(target) = &compiled.transport else { return Err("no Redis configured".into()) };
        let refresh = redis_transport::refresh_command(&compiled.layout, request);
        let via = LookupVia::Redis(Box::new((request.clone(), refresh)));
        call(
            target,
            &redis_transport::lookup_command(&compiled.layout, request, target.eval_ro),
            Purpose::Lookup { context_id, via },
        )
    }

    fn poll_feed(&self, compiled: &Compiled, cursor: Option<&str>, _edge: &str, root_id: u32) -> Result<u32, String> {
        let Transport::Redis(target) = &compiled.transport else { return Err("no Redis configured".into()) };
        call(
            target,
            &redis_transport::feed_command(&compiled.layout, cursor, target.eval_ro),
            Purpose::Feed { root_id },
        )
    }

    fn refresh(&self, compiled: &Compiled, request: &LookupRequest, root_id: u32) -> Result<u32, String> {
        let Transport::Redis(target) = &compiled.transport else { return Err("no Redis configured".into()) };
        match redis_transport::refresh_command(&compiled.layout, request) {
            Some(query) => call(target, &query, Purpose::Unanswered { root_id }),
            None => Err("refresh without a TTL".into()),
        }
    }

    fn report_activity(&self, compiled: &Compiled, reports: &[ActivityReport], root_id: u32) -> Result<(), String> {
        let Transport::Redis(target) = &compiled.transport else { return Err("no Redis configured".into()) };
        // one script per report: each writes one user's keys, which a Redis Cluster may keep anywhere
        for report in reports {
            if let Some(command) = redis_transport::activity_command(&compiled.layout, report) {
                call(target, &command, Purpose::Unanswered { root_id })?;
            }
        }
        Ok(())
    }
}

/// Reads a lookup's Redis reply; a valid token gets its sliding refresh.
pub(super) fn read_lookup(
    compiled: &Compiled,
    bytes: Option<&[u8]>,
    via: LookupVia,
    root_id: u32,
) -> Result<Answer, CalloutProblem> {
    let LookupVia::Redis(lookup) = via else {
        return Err(CalloutProblem::BadResponse("a Redis reply to a companion lookup".into()));
    };
    let (request, refresh) = *lookup;
    let answer = redis_transport::parse_lookup(bytes, now_ms(), &compiled.hash_keys, &request);
    if let (Ok(Answer::Valid(..)), Some(refresh), Transport::Redis(target)) = (&answer, refresh, &compiled.transport) {
        let _ = call(target, &refresh, Purpose::Unanswered { root_id });
    }
    answer
}

/// The guest callback of the Redis-callout ABI (on the root context): the reply goes where
/// every callout's answer goes.
#[no_mangle]
pub extern "C" fn proxy_on_redis_call_response(_root_context_id: u32, token: u32, status: u32, response_size: usize) {
    let Some(purpose) = exports::take_call(token) else { return };
    let bytes =
        if Status::of(status).is_ok() { abi::buffer(Buffer::RedisCallResponse, response_size).ok() } else { None };
    super::on_callout_answer(token, purpose, Reply::Redis(bytes));
}
