//! A dynamic module for Envoy 1.40 (ABI "v0.2.0") with one HTTP filter whose hooks do nothing:
//! every request continues untouched. Envoy resolves every hook at load, so all are exported.
#![allow(clippy::missing_safety_doc)]

include!("../../module-fixture.rs");

/// Request headers: continue, untouched.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(_f: P, _p: P, _end_of_stream: bool) -> u32 {
    0
}
