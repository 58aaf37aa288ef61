//! The proxy-wasm ABI 0.2.1 entry points: each hands its call to the VM ([`Vm`]) with [`Envoy`]
//! as its proxy. Never a panic (why not the proxy-wasm SDK: docs/security.md).

use super::abi::{self, Buffer};
use super::Envoy;
use multitokens_filter::host::Step;
use multitokens_filter::store_call::StoreReply;
use multitokens_filter::vm::Vm;

thread_local! {
    static VM: Vm = Vm::default();
}

/// Hands a callout's answer to the VM (HTTP or Redis: one path).
pub(super) fn on_callout_answer(token: u32, reply: impl FnOnce() -> StoreReply) {
    VM.with(|vm| vm.on_callout_answer(&mut Envoy, token, reply));
}

/// The ABI version this module speaks.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory for data the host hands over; the receiver takes it back as a `Vec` of this length.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let block: Box<[u8]> = vec![0u8; size].into_boxed_slice();
    Box::into_raw(block).cast::<u8>()
}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// Module start (a WASI reactor): runs the static constructors.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: called once by the host before anything else, as WASI reactors require.
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors();
    }
}

/// A context is created: a root (no parent) or a request under a root.
#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
    VM.with(|vm| vm.on_context_create(context_id, parent_id));
}

/// The VM starts: nothing to do.
#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_config_size: usize) -> u32 {
    1
}

/// The plugin is configured: 1 to load, 0 to refuse (the log says why).
#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, _config_size: usize) -> u32 {
    let config = abi::buffer(Buffer::PluginConfiguration, usize::MAX).unwrap_or_default();
    u32::from(VM.with(|vm| vm.on_configure(&mut Envoy, root_id, &config)))
}

/// The root's timer.
#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    VM.with(|vm| vm.on_tick(&mut Envoy, root_id));
}

/// Request headers: 0 continue, 1 pause. A request of an unknown context fails closed.
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _num_headers: usize, end_of_stream: u32) -> u32 {
    match VM.with(|vm| vm.on_request_headers(&mut Envoy, context_id, end_of_stream != 0)) {
        Step::Continue => 0,
        Step::Pause | Step::Replied => 1,
    }
}

/// Request trailers: 0 continue.
#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _num_trailers: usize) -> u32 {
    VM.with(|vm| vm.on_request_trailers(&mut Envoy, context_id));
    0
}

/// An HTTP call answered (no headers: it failed); an answer nobody waits for is dropped unread.
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(_: u32, token: u32, num_headers: usize, body_size: usize, _: usize) {
    on_callout_answer(token, || super::http_reply(num_headers, body_size));
}

// `proxy_on_done` and `proxy_on_log` are not exported: the host then treats a stream as done at
// once and skips the log call, two VM entries fewer per request (nothing to do in either).

/// A context is deleted: forget it and every answer it still waited for.
#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    VM.with(|vm| vm.on_delete(&mut Envoy, context_id));
}
