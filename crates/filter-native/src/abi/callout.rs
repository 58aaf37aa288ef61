//! HTTP callouts to an Envoy cluster, from a request or from the config, and their answers.

use super::{
    callout_init_problem, envoy_dynamic_module_callback_http_filter_config_http_callout,
    envoy_dynamic_module_callback_http_filter_http_callout, module_headers, Config, EnvoyBuffer, EnvoyHeader, Filter,
    ModuleBuffer, ModuleHeader,
};
use std::ffi::c_void;

/// Where a callout is sent from: a request (answered on its worker) or the config (answered on
/// the main thread).
#[derive(Clone, Copy)]
pub enum Caller {
    /// A request's filter, during one of its hooks.
    Filter(Filter),
    /// The filter config, on the main thread.
    Config(Config),
}

/// Starts an HTTP callout to an Envoy cluster (`body` empty: none); its id (the answer comes to
/// the caller's `http_callout_done` hook).
pub fn http_callout(
    caller: Caller,
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<u64, String> {
    let mut views = module_headers(headers);
    let mut id = 0u64;
    let cluster_buffer = ModuleBuffer::of(cluster.as_bytes());
    // the request's and the config's callout take the same arguments after their owner
    type Send =
        unsafe extern "C" fn(*mut c_void, *mut u64, ModuleBuffer, *mut ModuleHeader, usize, ModuleBuffer, u64) -> u32;
    let (send, owner): (Send, *mut c_void) = match caller {
        Caller::Filter(f) => (envoy_dynamic_module_callback_http_filter_http_callout, f.0),
        Caller::Config(c) => (envoy_dynamic_module_callback_http_filter_config_http_callout, c.0),
    };
    // SAFETY: `owner` is the caller's live pointer; every buffer lives for the call; `id` is a
    // valid local Envoy writes to.
    let code = unsafe {
        let body = if body.is_empty() { ModuleBuffer::none() } else { ModuleBuffer::of(body) };
        send(owner, &mut id, cluster_buffer, views.as_mut_ptr(), views.len(), body, timeout_ms)
    };
    match code {
        0 => Ok(id),
        other => Err(format!("callout to cluster {cluster:?} not sent: {}", callout_init_problem(other))),
    }
}

/// The headers and body of a callout's answer (`http_callout_done`): status (`None`: no
/// response) and body, copied.
///
/// # Safety
/// The pointers must be the ones Envoy passed to the running `http_callout_done` hook.
pub unsafe fn callout_answer(
    succeeded: bool,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> (Option<u32>, Vec<u8>) {
    if !succeeded || headers.is_null() {
        return (None, Vec::new());
    }
    // SAFETY: Envoy passed `headers_size` headers at `headers`, valid for the hook.
    let headers = unsafe { std::slice::from_raw_parts(headers, headers_size) };
    let status = headers
        .iter()
        // SAFETY: as above.
        .find(|h| unsafe { h.key.bytes() } == b":status")
        // SAFETY: as above.
        .and_then(|h| std::str::from_utf8(unsafe { h.value.bytes() }).ok().and_then(|s| s.parse::<u32>().ok()));
    let mut body = Vec::new();
    if !chunks.is_null() {
        // SAFETY: Envoy passed `chunks_size` chunks at `chunks`, valid for the hook.
        for chunk in unsafe { std::slice::from_raw_parts(chunks, chunks_size) } {
            // SAFETY: as above.
            body.extend_from_slice(unsafe { chunk.bytes() });
        }
    }
    (Some(status.unwrap_or(0)), body)
}
