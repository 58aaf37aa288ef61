//! The native shell: `libmultitokens_filter.so`, an Envoy 1.40 dynamic module
//! (`envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter`, `filter_name:
//! multitokens`) taking the wasm filter's plugin JSON. No decisions are made here: the hooks wire
//! Envoy's callbacks ([`abi`]) to [`multitokens_filter::flow`], with one [`process::Process`] (one
//! worker, one verdict cache, one feed) per config and Envoy process, whatever `--concurrency`.
//!
//! Lookups are HTTP callouts from the request (answered on its worker); the revocation feed and
//! the sliding refreshes are config-level callouts on Envoy's main thread, driven by a timer
//! thread of the module's own (the ABI has schedulers but no timer). A request that follows
//! another's lookup, on any worker, is woken through its own scheduler. Every hook catches panics
//! and fails closed.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod abi;
mod lookups;
mod process;
mod stream;

use abi::{Config, ConfigPtr, EnvoyBuffer, EnvoyHeader, Filter, FilterPtr, Level};
use multitokens_filter::host::Step;
use multitokens_filter::reply::{self, Denial};
use process::Process;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use stream::{Event, Slot};

/// The dynamic-module ABI version this module was written against (Envoy 1.40).
pub const ABI_VERSION: &str = "v0.2.0";
const ABI_VERSION_C: &[u8] = b"v0.2.0\0";
/// The `filter_name` of the one filter this module provides.
pub const FILTER_NAME: &str = "multitokens";

/// Runs a hook; a panic is logged and `fallback` returned (Envoy is never unwound into).
fn guard<T>(fallback: T, hook: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(hook)).unwrap_or_else(|_| {
        abi::log(Level::Error, "multitokens: a panic was caught in a hook; the request fails closed");
        fallback
    })
}

/// The request's slot from the module pointer Envoy hands back.
///
/// # Safety
/// `ptr` must come from [`envoy_dynamic_module_on_http_filter_new`] and not be destroyed yet;
/// Envoy calls a filter's hooks on one thread (some from inside others: [`Slot`]).
unsafe fn slot<'a>(ptr: *const c_void) -> Option<&'a Slot> {
    // SAFETY: the caller's promise.
    unsafe { ptr.cast::<Slot>().as_ref() }
}

/// The config's process from the module pointer Envoy hands back.
///
/// # Safety
/// `ptr` must come from [`envoy_dynamic_module_on_http_filter_config_new`] and not be destroyed.
unsafe fn process<'a>(ptr: *const c_void) -> Option<&'a Arc<Process>> {
    // SAFETY: the caller's promise.
    unsafe { ptr.cast::<Arc<Process>>().as_ref() }
}

/// Fails a request closed (503) when its state is unusable (never expected).
fn unavailable(filter: Filter) {
    let r = reply::deny(Denial::Unavailable, "multitokens", &[]);
    abi::send_response(filter, r.status, &r.headers, r.body.as_bytes());
}

/// The module is loaded: the ABI version it speaks.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    ABI_VERSION_C.as_ptr()
}

/// A filter config: the plugin JSON parsed once; null refuses the config (the log says why).
///
/// # Safety
/// Called by Envoy with buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config: ConfigPtr,
    name: EnvoyBuffer,
    json: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: the config Envoy passed to this hook.
    let config = unsafe { Config::from_hook(config) };
    guard(std::ptr::null(), || {
        // SAFETY: Envoy's buffers are valid for this hook.
        let (name, json) = unsafe { (name.to_vec(), json.to_vec()) };
        if name != FILTER_NAME.as_bytes() {
            let name = String::from_utf8_lossy(&name);
            abi::log(
                Level::Error,
                &format!("invalid multitokens configuration: filter_name: {name:?} (expected {FILTER_NAME:?})"),
            );
            return std::ptr::null();
        }
        match Process::start(config, &json) {
            Ok(p) => Box::into_raw(Box::new(p)).cast_const().cast::<c_void>(),
            Err(e) => {
                abi::log(Level::Error, &e);
                std::ptr::null()
            }
        }
    })
}

/// The config is gone (after its last request): the timer stops, the state is freed.
///
/// # Safety
/// `ptr` comes from `config_new`; Envoy destroys it once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(ptr: *const c_void) {
    guard((), || {
        if ptr.is_null() {
            return;
        }
        // SAFETY: made by `Box::into_raw` in `config_new`, destroyed once.
        let process = unsafe { Box::from_raw(ptr.cast_mut().cast::<Arc<Process>>()) };
        process.stop();
    })
}

/// The config's timer ticked, or lookups wait to be sent together (main thread).
///
/// # Safety
/// Called by Envoy with the config's pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config: ConfigPtr,
    ptr: *const c_void,
    event: u64,
) {
    // SAFETY: the config Envoy passed to this hook.
    let config = unsafe { Config::from_hook(config) };
    // SAFETY: Envoy's pointer to the live config.
    guard((), || unsafe { process(ptr) }.map_or((), |p| p.on_scheduled(config, event)))
}

/// A config-level callout (feed poll, lookup batch, refresh or activity) answered (main thread).
///
/// # Safety
/// Called by Envoy with the config's pointers and an answer valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config: ConfigPtr,
    ptr: *const c_void,
    callout: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: the config Envoy passed to this hook.
    let config = unsafe { Config::from_hook(config) };
    guard((), || {
        // SAFETY: Envoy's pointers, valid for this hook.
        let (status, body) = unsafe { abi::callout_answer(result == 0, headers, headers_size, chunks, chunks_size) };
        // SAFETY: Envoy's pointer to the live config.
        if let Some(p) = unsafe { process(ptr) } {
            p.on_config_callout_done(config, callout, status, &body);
        }
    })
}

/// A request starts under a config.
///
/// # Safety
/// `config_ptr` comes from `config_new`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_ptr: *const c_void,
    _filter: FilterPtr,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy's pointer to the live config.
        match unsafe { process(config_ptr) } {
            Some(p) => Box::into_raw(Box::new(Slot::new(Arc::clone(p)))).cast_const().cast::<c_void>(),
            None => std::ptr::null(),
        }
    })
}

/// Request headers: continue, stop (a local reply was sent) or stop and hold the body (a lookup).
/// A request without state fails closed.
///
/// # Safety
/// Called by Envoy with the filter's pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: FilterPtr,
    ptr: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the filter Envoy passed to this hook.
    let filter = unsafe { Filter::from_hook(filter) };
    const CONTINUE: u32 = 0;
    const STOP_ITERATION: u32 = 1;
    const STOP_ALL_ITERATION_AND_WATERMARK: u32 = 4;
    let step = guard(None, || {
        // SAFETY: Envoy's pointer to this live request.
        unsafe { slot(ptr) }.and_then(|s| s.handle(filter, Event::RequestHeaders(end_of_stream)))
    });
    match step {
        Some(Step::Continue) => CONTINUE,
        Some(Step::Pause) => STOP_ALL_ITERATION_AND_WATERMARK,
        Some(Step::Replied) => STOP_ITERATION,
        None => {
            guard((), || unavailable(filter));
            STOP_ITERATION
        }
    }
}

/// Request body: held while the request is paused.
///
/// # Safety
/// Called by Envoy with the filter's pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter: FilterPtr,
    ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    const CONTINUE: u32 = 0;
    const STOP_ITERATION_AND_BUFFER: u32 = 1;
    // SAFETY: Envoy's pointer to this live request.
    let paused = guard(true, || unsafe { slot(ptr) }.is_none_or(Slot::paused));
    if paused {
        STOP_ITERATION_AND_BUFFER
    } else {
        CONTINUE
    }
}

/// Request trailers: identity headers never pass in them.
///
/// # Safety
/// Called by Envoy with the filter's pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter: FilterPtr,
    ptr: *const c_void,
) -> u32 {
    // SAFETY: the filter Envoy passed to this hook.
    let filter = unsafe { Filter::from_hook(filter) };
    // SAFETY: Envoy's pointer to this live request.
    guard((), || {
        unsafe { slot(ptr) }.map_or((), |s| {
            s.handle(filter, Event::RequestTrailers);
        })
    });
    0
}

/// A request's lookup answered (on its worker).
///
/// # Safety
/// Called by Envoy with the filter's pointers and an answer valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter: FilterPtr,
    ptr: *const c_void,
    callout: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: the filter Envoy passed to this hook.
    let filter = unsafe { Filter::from_hook(filter) };
    guard((), || {
        // SAFETY: Envoy's pointers, valid for this hook.
        let (status, body) = unsafe { abi::callout_answer(result == 0, headers, headers_size, chunks, chunks_size) };
        // SAFETY: Envoy's pointer to this live request.
        if let Some(s) = unsafe { slot(ptr) } {
            s.handle(filter, Event::CalloutDone(callout, status, body));
        }
    })
}

/// Woken by another thread (the lookup it followed answered, or it must look up again).
///
/// # Safety
/// Called by Envoy with the filter's pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter: FilterPtr,
    ptr: *const c_void,
    _event: u64,
) {
    // SAFETY: the filter Envoy passed to this hook.
    let filter = unsafe { Filter::from_hook(filter) };
    // SAFETY: Envoy's pointer to this live request.
    guard((), || {
        unsafe { slot(ptr) }.map_or((), |s| {
            s.handle(filter, Event::Scheduled);
        })
    })
}

/// The request is complete: the requests that followed its lookup look up again.
///
/// # Safety
/// Called by Envoy with the filter's pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(filter: FilterPtr, ptr: *const c_void) {
    // SAFETY: the filter Envoy passed to this hook.
    let filter = unsafe { Filter::from_hook(filter) };
    // SAFETY: Envoy's pointer to this live request.
    guard((), || {
        unsafe { slot(ptr) }.map_or((), |s| {
            s.handle(filter, Event::Gone);
        })
    })
}

/// The request's state is freed.
///
/// # Safety
/// `ptr` comes from `filter_new`; Envoy destroys it once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(ptr: *const c_void) {
    guard((), || {
        if ptr.is_null() {
            return;
        }
        // SAFETY: made by `Box::into_raw` in `filter_new`, destroyed once.
        let slot = unsafe { Box::from_raw(ptr.cast_mut().cast::<Slot>()) };
        slot.destroy();
    })
}

/// Declares hooks the module does not use, so Envoy finds every symbol it requires.
macro_rules! unused_hooks {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $value:expr;)*) => {
        $(
            /// Not used by this module.
            #[no_mangle]
            #[allow(unused_variables)]
            pub extern "C" fn $name($($arg: $ty),*) -> $ret { $value }
        )*
    };
}

unused_hooks! {
    envoy_dynamic_module_on_http_filter_response_headers(f: FilterPtr, p: *const c_void, e: bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_body(f: FilterPtr, p: *const c_void, e: bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_trailers(f: FilterPtr, p: *const c_void) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(f: FilterPtr, p: *const c_void) -> () = ();
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(f: FilterPtr, p: *const c_void) -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_headers(
        f: FilterPtr, p: *const c_void, s: u64, h: *const EnvoyHeader, n: usize, e: bool) -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_data(
        f: FilterPtr, p: *const c_void, s: u64, d: *const EnvoyBuffer, n: usize, e: bool) -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_trailers(
        f: FilterPtr, p: *const c_void, s: u64, h: *const EnvoyHeader, n: usize) -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_complete(f: FilterPtr, p: *const c_void, s: u64) -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_reset(f: FilterPtr, p: *const c_void, s: u64, r: u32) -> () = ();
}

/// Every hook this module exports, for the test that checks them against Envoy's binary.
pub const HOOKS: &[&str] = &[
    "envoy_dynamic_module_on_program_init",
    "envoy_dynamic_module_on_http_filter_config_new",
    "envoy_dynamic_module_on_http_filter_config_destroy",
    "envoy_dynamic_module_on_http_filter_config_scheduled",
    "envoy_dynamic_module_on_http_filter_config_http_callout_done",
    "envoy_dynamic_module_on_http_filter_new",
    "envoy_dynamic_module_on_http_filter_request_headers",
    "envoy_dynamic_module_on_http_filter_request_body",
    "envoy_dynamic_module_on_http_filter_request_trailers",
    "envoy_dynamic_module_on_http_filter_http_callout_done",
    "envoy_dynamic_module_on_http_filter_scheduled",
    "envoy_dynamic_module_on_http_filter_stream_complete",
    "envoy_dynamic_module_on_http_filter_destroy",
    "envoy_dynamic_module_on_http_filter_response_headers",
    "envoy_dynamic_module_on_http_filter_response_body",
    "envoy_dynamic_module_on_http_filter_response_trailers",
    "envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark",
    "envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark",
    "envoy_dynamic_module_on_http_filter_http_stream_headers",
    "envoy_dynamic_module_on_http_filter_http_stream_data",
    "envoy_dynamic_module_on_http_filter_http_stream_trailers",
    "envoy_dynamic_module_on_http_filter_http_stream_complete",
    "envoy_dynamic_module_on_http_filter_http_stream_reset",
];
