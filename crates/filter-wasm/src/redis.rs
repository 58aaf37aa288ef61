//! Envoy's Redis callouts (the Higress ABI, `docs/redis-callout-abi.md`): the host
//! functions `proxy_redis_init` / `proxy_redis_call`, and the guest callback
//! `proxy_on_redis_call_response`, which the host calls on the ROOT context. Its replies are
//! routed like HTTP callout answers, by their token (one registry: the VM's).

use super::abi::{self, Buffer, Status};
use super::exports;
use multitokens_filter::config::RedisTarget;
use multitokens_filter::store_call::StoreReply;

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

/// Sends one RESP command through Envoy's Redis client; its token.
pub(super) fn call(target: &RedisTarget, query: &[u8]) -> Result<u32, String> {
    let mut token: u32 = 0;
    // SAFETY: the slices live for the call; `token` is a valid u32 the host writes to.
    let status = unsafe {
        proxy_redis_call(target.cluster.as_ptr(), target.cluster.len(), query.as_ptr(), query.len(), &mut token)
    };
    match Status::of(status) {
        Ok(()) => Ok(token),
        Err(Status::BadArgument) => Err(format!("Redis callout: no cluster {:?}", target.cluster)),
        Err(Status::Unavailable) => Err("Redis callout: no healthy Redis host".into()),
        Err(other) => Err(format!("Redis callout failed: {other}")),
    }
}

/// The guest callback of the Redis-callout ABI (on the root context): the reply goes where
/// every callout's answer goes.
#[no_mangle]
pub extern "C" fn proxy_on_redis_call_response(_root_context_id: u32, token: u32, status: u32, response_size: usize) {
    exports::on_callout_answer(token, || {
        let ok = Status::of(status).is_ok();
        StoreReply::Redis(if ok { abi::buffer(Buffer::RedisCallResponse, response_size).ok() } else { None })
    });
}
