//! The proxy-wasm shell: Envoy's host calls under [`multitokens_filter::vm`], which keeps the
//! contexts and callouts and runs the flow. No decisions and no bookkeeping are made here.
//! Built for `wasm32-wasip1` only (elsewhere the crate is empty: its imports are Envoy's).
//!
//! The ABI is spoken by [`abi`] (the host calls, each returning `Result`) and [`exports`] (the
//! entry points), which never panic; [`Envoy`] is the VM's [`Proxy`] over them. A store call goes
//! out as an HTTP callout to the companion, or in the `redis-callout` build as one of Envoy's Redis
//! callouts ([`redis`]); both answers come back through [`Vm::on_callout_answer`](multitokens_filter::vm::Vm).
#![cfg(target_arch = "wasm32")]

mod abi;
mod exports;
#[cfg(feature = "redis-callout")]
mod redis;

use abi::{Buffer, Map, MetricKind};
use multitokens_filter::config::{Compiled, Transport};
use multitokens_filter::header_list::HeaderList;
use multitokens_filter::reply::LocalReply;
use multitokens_filter::store_call::{StoreCall, StoreReply};
use multitokens_filter::vm::{Level, Proxy};

/// Envoy, through the host calls of the current callback.
struct Envoy;

impl Proxy for Envoy {
    fn request_headers(&self) -> HeaderList {
        abi::headers(Map::RequestHeaders).unwrap_or_default()
    }

    fn set_header(&mut self, name: &str, value: &[u8]) {
        let _ = abi::set_header(Map::RequestHeaders, name, value);
    }

    fn add_header(&mut self, name: &str, value: &[u8]) {
        let _ = abi::add_header(Map::RequestHeaders, name, value);
    }

    fn remove_header(&mut self, name: &str) {
        let _ = abi::remove_header(Map::RequestHeaders, name);
    }

    fn request_trailers(&self) -> HeaderList {
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

    fn resume_request(&mut self) {
        let _ = abi::resume_request();
    }

    fn set_effective_context(&mut self, context_id: u32) -> bool {
        abi::set_effective_context(context_id).is_ok()
    }

    fn start_transport(&mut self, compiled: &Compiled) -> Result<(), String> {
        match &compiled.transport {
            Transport::Companion(_) => Ok(()),
            #[cfg(feature = "redis-callout")]
            Transport::Redis(target) => redis::init(target),
            #[cfg(not(feature = "redis-callout"))]
            Transport::Redis(_) => Err("invalid multitokens configuration: redis: this is the stock build, which has \
                no Redis callouts (upstream Envoy cannot load them); use `companion`, or deploy \
                multitokens_filter_redis.wasm on an Envoy with the Redis-callout ABI (e.g. Higress)"
                .into()),
        }
    }

    fn send(&mut self, call: StoreCall) -> Result<u32, String> {
        match call {
            StoreCall::Companion(get) => abi::http_call(get.cluster, &get.headers(), &get.body, get.timeout_ms)
                .map_err(|s| format!("dispatch to cluster {:?} failed: {s}", get.cluster)),
            #[cfg(feature = "redis-callout")]
            StoreCall::Redis(target, command) => redis::call(target, &command),
            #[cfg(not(feature = "redis-callout"))]
            StoreCall::Redis(..) => Err("the stock build has no Redis callouts".into()),
        }
    }

    fn set_tick_period(&mut self, period_ms: u64) {
        let _ = abi::set_tick_period(period_ms);
    }

    /// The host's clock, read on every request (one cheap host call): a cached verdict's age is
    /// always measured against real time, whether or not the timer still ticks.
    fn now_ms(&self) -> u64 {
        abi::now_ms()
    }

    fn define_metric(&mut self, gauge: bool, name: &str) -> Option<u32> {
        abi::define_metric(if gauge { MetricKind::Gauge } else { MetricKind::Counter }, name)
    }

    fn increment_metric(&mut self, id: u32, by: i64) -> bool {
        abi::increment_metric(id, by).is_ok()
    }

    fn memory_bytes(&self) -> i64 {
        (core::arch::wasm32::memory_size::<0>() as i64) * 65_536
    }

    fn log(&self, level: Level, message: &str) {
        abi::log(level, message);
    }
}

/// The HTTP callout answer of the current callback: status (`None`: no response) and body.
fn http_reply(num_headers: usize, body_size: usize) -> StoreReply {
    if num_headers == 0 {
        return StoreReply::Http(None, Vec::new());
    }
    let status = abi::header(Map::CalloutResponseHeaders, ":status")
        .and_then(|s| std::str::from_utf8(&s).ok().and_then(|s| s.parse::<u32>().ok()));
    let body = abi::buffer(Buffer::CalloutResponseBody, body_size).unwrap_or_default();
    StoreReply::Http(status.or(Some(0)), body)
}
