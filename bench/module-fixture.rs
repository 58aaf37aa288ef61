// What the bench's dynamic-module fixtures (bench/noop-module, bench/minimal-auth-module) share,
// written once and `include!`d by each: the ABI version, the byte buffer, a state pointer, and the
// hooks that do nothing. Each fixture defines only `envoy_dynamic_module_on_http_filter_request_headers`.
// Envoy 1.40 (ABI "v0.2.0") resolves every hook at load, so all are exported.

use std::ffi::c_void;

/// A non-null pointer to hand Envoy as the config's and each filter's state (there is none).
static STATE: u8 = 0;

fn state() -> *const c_void {
    std::ptr::addr_of!(STATE).cast()
}

/// Bytes either side owns (`envoy_dynamic_module_type_{module,envoy}_buffer`).
#[repr(C)]
pub struct Buffer {
    ptr: *const u8,
    length: usize,
}

#[allow(dead_code)] // the no-op fixture reads and writes no bytes
impl Buffer {
    fn of(bytes: &[u8]) -> Buffer {
        Buffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }
    fn none() -> Buffer {
        Buffer { ptr: std::ptr::null(), length: 0 }
    }
}

/// The ABI version this module speaks.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    b"v0.2.0\0".as_ptr()
}

/// Any config is accepted.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config: *const c_void,
    _name: Buffer,
    _json: Buffer,
) -> *const c_void {
    state()
}

/// Every request gets the same (empty) state.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(_config: *const c_void, _filter: *const c_void) -> *const c_void {
    state()
}

/// Declares hooks that do nothing and return `$value`.
macro_rules! hooks {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $value:expr;)*) => {
        $(
            /// Does nothing.
            #[no_mangle]
            #[allow(unused_variables)]
            pub extern "C" fn $name($($arg: $ty),*) -> $ret { $value }
        )*
    };
}

type P = *const c_void;

hooks! {
    envoy_dynamic_module_on_http_filter_config_destroy(p: P) -> () = ();
    envoy_dynamic_module_on_http_filter_config_scheduled(c: P, p: P, e: u64) -> () = ();
    envoy_dynamic_module_on_http_filter_config_http_callout_done(
        c: P, p: P, i: u64, r: u32, h: P, hn: usize, d: P, dn: usize) -> () = ();
    envoy_dynamic_module_on_http_filter_request_body(f: P, p: P, e: bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_request_trailers(f: P, p: P) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_headers(f: P, p: P, e: bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_body(f: P, p: P, e: bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_trailers(f: P, p: P) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_http_callout_done(
        f: P, p: P, i: u64, r: u32, h: P, hn: usize, d: P, dn: usize) -> () = ();
    envoy_dynamic_module_on_http_filter_scheduled(f: P, p: P, e: u64) -> () = ();
    envoy_dynamic_module_on_http_filter_stream_complete(f: P, p: P) -> () = ();
    envoy_dynamic_module_on_http_filter_destroy(p: P) -> () = ();
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(f: P, p: P) -> () = ();
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(f: P, p: P) -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_headers(f: P, p: P, s: u64, h: P, n: usize, e: bool) -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_data(f: P, p: P, s: u64, d: P, n: usize, e: bool) -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_trailers(f: P, p: P, s: u64, h: P, n: usize) -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_complete(f: P, p: P, s: u64) -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_reset(f: P, p: P, s: u64, r: u32) -> () = ();
}
