//! The proxy-wasm ABI 0.2.1 entry points: the host creates root and HTTP contexts, calls them,
//! and answers their callouts; this module routes each call to the [`Root`] or [`Http`] it is for.
//! An answer for an unknown call or context, or a re-entrant call, is ignored, or its request
//! fails closed; never a panic (why not the proxy-wasm SDK: docs/security.md).

use super::{Http, Purpose, Root};
use multitokens_filter::host::Step;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Default)]
struct Contexts {
    roots: HashMap<u32, Rc<RefCell<Root>>>,
    streams: HashMap<u32, Rc<RefCell<Http>>>,
    /// What each callout under way (HTTP or Redis) is for, by its token.
    calls: HashMap<u32, Purpose>,
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Runs `f` on the context table (`None` if it is in use: a re-entrant call, never expected).
fn with<T>(f: impl FnOnce(&mut Contexts) -> T) -> Option<T> {
    CONTEXTS.with(|c| c.try_borrow_mut().ok().map(|mut c| f(&mut c)))
}

pub(super) fn root(id: u32) -> Option<Rc<RefCell<Root>>> {
    with(|c| c.roots.get(&id).cloned()).flatten()
}

pub(super) fn stream(id: u32) -> Option<Rc<RefCell<Http>>> {
    with(|c| c.streams.get(&id).cloned()).flatten()
}

/// Remembers what a callout's answer is for.
pub(super) fn expect_answer(token: u32, purpose: Purpose) {
    with(|c| c.calls.insert(token, purpose));
}

/// What a callout's answer is for, once (`None`: nobody waits for it).
pub(super) fn take_call(token: u32) -> Option<Purpose> {
    with(|c| c.calls.remove(&token)).flatten()
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
    if parent_id == 0 {
        with(|c| c.roots.insert(context_id, Rc::new(RefCell::new(Root::new(context_id)))));
        return;
    }
    let Some(parent) = root(parent_id) else { return };
    let Ok(parent) = parent.try_borrow() else { return };
    let http = parent.create_http_context(context_id);
    with(|c| c.streams.insert(context_id, Rc::new(RefCell::new(http))));
}

/// The VM starts: nothing to do.
#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_config_size: usize) -> u32 {
    1
}

/// The plugin is configured: 1 to load, 0 to refuse (the log says why).
#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, _config_size: usize) -> u32 {
    match root(root_id).map(|r| r.try_borrow_mut().map(|mut r| r.on_configure())) {
        Some(Ok(true)) => 1,
        _ => 0,
    }
}

/// The root's timer.
#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    if let Some(Ok(mut r)) = root(root_id).as_ref().map(|r| r.try_borrow_mut()) {
        r.on_tick();
    }
}

/// Request headers: 0 continue, 1 pause. A request of an unknown context fails closed.
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _num_headers: usize, end_of_stream: u32) -> u32 {
    let step = match stream(context_id).as_ref().map(|s| s.try_borrow_mut()) {
        Some(Ok(mut s)) => s.on_request_headers(end_of_stream != 0),
        _ => super::unavailable(&super::Metrics::default()),
    };
    match step {
        Step::Continue => 0,
        Step::Pause | Step::Replied => 1,
    }
}

/// Request trailers: 0 continue.
#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _num_trailers: usize) -> u32 {
    if let Some(Ok(mut s)) = stream(context_id).as_ref().map(|s| s.try_borrow_mut()) {
        s.on_request_trailers();
    }
    0
}

/// An HTTP call answered (no headers: it failed). Routed by its token to the context that made
/// it; an answer nobody waits for is dropped.
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _context_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
    _num_trailers: usize,
) {
    let Some(purpose) = take_call(token) else {
        super::log(super::abi::Level::Debug, "multitokens: an HTTP call answer nobody waits for");
        return;
    };
    super::on_callout_answer(token, purpose, super::http_response(num_headers, body_size));
}

// `proxy_on_done` and `proxy_on_log` are not exported: the host then treats a stream as done at
// once and skips the log call, two VM entries fewer per request (nothing to do in either).

/// A context is deleted: forget it and every answer it still waited for.
#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    if let Some(s) = stream(context_id) {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.on_gone();
        }
    }
    with(|c| {
        c.streams.remove(&context_id);
        c.roots.remove(&context_id);
        c.calls.retain(|_, purpose| purpose.context() != context_id);
    });
}
