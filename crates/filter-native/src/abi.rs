//! The Envoy dynamic-module callbacks (ABI of Envoy 1.40, `source/extensions/dynamic_modules/abi/abi.h`)
//! the module calls, as safe functions: every pointer handed over lives for the call, every byte
//! Envoy hands back is copied before the hook returns. Each declared symbol is checked against the
//! Envoy binary by a test (`tests/native_abi.rs`).

use multitokens_filter::header_list::HeaderList;
use std::ffi::c_void;

mod callout;
pub use callout::{callout_answer, http_callout, Caller};

/// Envoy's HTTP filter (per request), valid during a hook for that filter.
pub type FilterPtr = *mut c_void;
/// Envoy's HTTP filter config, valid from `config_new` to `config_destroy`.
pub type ConfigPtr = *mut c_void;
/// Envoy's HTTP filter of a running hook (made only from a hook's argument).
#[derive(Clone, Copy)]
pub struct Filter(FilterPtr);

/// Envoy's filter config (made only from a hook's argument; alive until `config_destroy`).
#[derive(Clone, Copy)]
pub struct Config(ConfigPtr);

impl Filter {
    /// The filter a hook was called for.
    ///
    /// # Safety
    /// `ptr` must be the filter pointer Envoy passed to the running hook.
    pub unsafe fn from_hook(ptr: FilterPtr) -> Filter {
        Filter(ptr)
    }
}

impl Config {
    /// The config a hook was called for.
    ///
    /// # Safety
    /// `ptr` must be the config pointer Envoy passed to a hook of a live config.
    pub unsafe fn from_hook(ptr: ConfigPtr) -> Config {
        Config(ptr)
    }
}

// SAFETY: a config pointer is used from the main thread (callouts, stats) and only to define or
// count stats elsewhere, which Envoy's config allows from any thread; it lives until
// `config_destroy`, after the last request.
unsafe impl Send for Config {}
// SAFETY: as above.
unsafe impl Sync for Config {}

/// A scheduler Envoy made for a filter or a config.
pub type SchedulerPtr = *mut c_void;

/// Bytes owned by the module (`envoy_dynamic_module_type_module_buffer`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    /// Borrows `bytes` for one call.
    pub fn of(bytes: &[u8]) -> Self {
        ModuleBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    /// No bytes (a null pointer: for `set_header`, removes the header).
    pub fn none() -> Self {
        ModuleBuffer { ptr: std::ptr::null(), length: 0 }
    }
}

/// Bytes owned by Envoy (`envoy_dynamic_module_type_envoy_buffer`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

impl EnvoyBuffer {
    const EMPTY: EnvoyBuffer = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };

    /// The bytes, borrowed (empty for a null pointer).
    ///
    /// # Safety
    /// Envoy must guarantee the buffer for as long as the slice is used (at most the current hook,
    /// and no setter called meanwhile).
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: Envoy keeps `length` bytes at `ptr` alive (the caller's promise).
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
    }

    /// A copy of the bytes (empty for a null pointer).
    ///
    /// # Safety
    /// Envoy must guarantee the buffer for the current hook.
    pub unsafe fn to_vec(self) -> Vec<u8> {
        // SAFETY: the caller's promise, for the moment of the copy.
        unsafe { self.bytes() }.to_vec()
    }
}

/// A header owned by the module (`envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
pub struct ModuleHeader {
    key: ModuleBuffer,
    value: ModuleBuffer,
}

/// A header owned by Envoy (`envoy_dynamic_module_type_envoy_http_header`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key: EnvoyBuffer,
    value: EnvoyBuffer,
}

impl EnvoyHeader {
    const EMPTY: EnvoyHeader = EnvoyHeader { key: EnvoyBuffer::EMPTY, value: EnvoyBuffer::EMPTY };
}

/// Which header map (`envoy_dynamic_module_type_http_header_type`).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum HeaderMap {
    /// The request headers.
    Request = 0,
    /// The request trailers.
    RequestTrailers = 1,
}

/// Envoy's log levels (`envoy_dynamic_module_type_log_level`).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Level {
    /// Debug.
    Debug = 1,
    /// Info.
    Info = 2,
    /// Warning.
    Warn = 3,
    /// Error.
    Error = 4,
}

/// `envoy_dynamic_module_type_attribute_id_SourceAddress`: `source.address`.
const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;

/// Why a callout did not start (`envoy_dynamic_module_type_http_callout_init_result`).
fn callout_init_problem(code: u32) -> &'static str {
    match code {
        1 => "missing :path, :method or host",
        2 => "no such cluster",
        3 => "duplicate callout id",
        4 => "cannot create the request (no healthy upstream?)",
        _ => "unknown failure",
    }
}

#[allow(clashing_extern_declarations)]
extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterPtr, map: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(filter: FilterPtr, map: u32, out: *mut EnvoyHeader) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterPtr,
        map: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterPtr,
        map: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterPtr,
        status: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterPtr);
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterPtr,
        attribute: u32,
        out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: FilterPtr) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: SchedulerPtr, event: u64);
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: SchedulerPtr);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: ConfigPtr) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: SchedulerPtr, event: u64);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: SchedulerPtr);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_size: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_size: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_size: usize,
        by: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_size: usize,
        by: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_size: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
}

/// Every callback this module declares, for the test that checks them against Envoy's binary.
pub const CALLBACKS: &[&str] = &[
    "envoy_dynamic_module_callback_http_get_headers_size",
    "envoy_dynamic_module_callback_http_get_headers",
    "envoy_dynamic_module_callback_http_add_header",
    "envoy_dynamic_module_callback_http_set_header",
    "envoy_dynamic_module_callback_http_send_response",
    "envoy_dynamic_module_callback_http_filter_continue_decoding",
    "envoy_dynamic_module_callback_http_filter_get_attribute_string",
    "envoy_dynamic_module_callback_http_filter_http_callout",
    "envoy_dynamic_module_callback_http_filter_config_http_callout",
    "envoy_dynamic_module_callback_http_filter_scheduler_new",
    "envoy_dynamic_module_callback_http_filter_scheduler_commit",
    "envoy_dynamic_module_callback_http_filter_scheduler_delete",
    "envoy_dynamic_module_callback_http_filter_config_scheduler_new",
    "envoy_dynamic_module_callback_http_filter_config_scheduler_commit",
    "envoy_dynamic_module_callback_http_filter_config_scheduler_delete",
    "envoy_dynamic_module_callback_http_filter_config_define_counter",
    "envoy_dynamic_module_callback_http_filter_config_define_gauge",
    "envoy_dynamic_module_callback_http_filter_increment_counter",
    "envoy_dynamic_module_callback_http_filter_config_increment_counter",
    "envoy_dynamic_module_callback_http_filter_config_set_gauge",
    "envoy_dynamic_module_callback_log",
];

/// Every header of a map, as bytes, copied into one buffer (empty when the map is not available).
pub fn headers(filter: Filter, map: HeaderMap) -> HeaderList {
    // SAFETY: `filter` is the filter of the running hook.
    let size = unsafe { envoy_dynamic_module_callback_http_get_headers_size(filter.0, map as u32) };
    if size == 0 {
        return HeaderList::default();
    }
    // a request's usual few headers are read onto the stack, more into a vector
    let (mut on_stack, mut on_heap) = ([EnvoyHeader::EMPTY; 32], Vec::new());
    let raw: &mut [EnvoyHeader] = match on_stack.get_mut(..size) {
        Some(room) => room,
        None => {
            on_heap.resize(size, EnvoyHeader::EMPTY);
            &mut on_heap
        }
    };
    // SAFETY: `raw` has room for the `size` headers Envoy just counted.
    if !unsafe { envoy_dynamic_module_callback_http_get_headers(filter.0, map as u32, raw.as_mut_ptr()) } {
        return HeaderList::default();
    }
    // SAFETY: Envoy's header bytes stay valid until the hook returns or a setter is called;
    // they are copied here, before either.
    HeaderList::copied(raw.iter().map(|h| unsafe { (h.key.bytes(), h.value.bytes()) }))
}

/// Sets a header (replacing every value), or removes it with `None` or an empty value.
pub fn set_header(filter: Filter, map: HeaderMap, name: &str, value: Option<&[u8]>) {
    let value = match value {
        Some(v) if !v.is_empty() => ModuleBuffer::of(v),
        _ => ModuleBuffer::none(),
    };
    // SAFETY: both buffers live for the call.
    unsafe {
        envoy_dynamic_module_callback_http_set_header(filter.0, map as u32, ModuleBuffer::of(name.as_bytes()), value)
    };
}

/// Adds a header value (the header is known absent: no lookup, no removal). An empty value adds
/// nothing.
pub fn add_header(filter: Filter, map: HeaderMap, name: &str, value: &[u8]) {
    // SAFETY: both buffers live for the call.
    unsafe {
        envoy_dynamic_module_callback_http_add_header(
            filter.0,
            map as u32,
            ModuleBuffer::of(name.as_bytes()),
            ModuleBuffer::of(value),
        )
    };
}

/// Module-owned header views of `pairs`, alive as long as `pairs`.
fn module_headers<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<ModuleHeader> {
    pairs
        .iter()
        .map(|(k, v)| ModuleHeader { key: ModuleBuffer::of(k.as_ref()), value: ModuleBuffer::of(v.as_ref()) })
        .collect()
}

/// Sends a local reply instead of forwarding the request.
pub fn send_response(filter: Filter, status: u32, headers: &[(String, String)], body: &[u8]) {
    let mut views = module_headers(headers);
    // SAFETY: `views` points into `headers`, which lives for the call, as does `body`.
    unsafe {
        envoy_dynamic_module_callback_http_send_response(
            filter.0,
            status,
            views.as_mut_ptr(),
            views.len(),
            ModuleBuffer::of(body),
            ModuleBuffer::of(b"multitokens"),
        )
    }
}

/// Resumes a request the module paused.
pub fn continue_decoding(filter: Filter) {
    // SAFETY: `filter` is the filter of the running hook.
    unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(filter.0) }
}

/// The downstream address (`source.address`, after `use_remote_address` and trusted hops).
pub fn source_address(filter: Filter) -> Option<Vec<u8>> {
    let mut out = EnvoyBuffer::EMPTY;
    // SAFETY: `out` is a valid local Envoy writes to.
    let ok = unsafe {
        envoy_dynamic_module_callback_http_filter_get_attribute_string(filter.0, ATTRIBUTE_SOURCE_ADDRESS, &mut out)
    };
    // SAFETY: Envoy keeps the attribute for the hook; it is copied now.
    ok.then(|| unsafe { out.to_vec() })
}

/// A scheduler: `commit` from any thread runs the owner's `scheduled` hook on the owner's thread.
pub struct Scheduler {
    ptr: SchedulerPtr,
    of_config: bool,
}

// SAFETY: Envoy's schedulers are made to be committed from any thread (that is their purpose);
// deletion is serialised by the owner of the `Scheduler`.
unsafe impl Send for Scheduler {}
// SAFETY: as above; `commit` takes `&self` and Envoy's commit posts to a thread-safe dispatcher.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// A scheduler for a request (call during one of its hooks, on its worker).
    pub fn for_filter(filter: Filter) -> Option<Scheduler> {
        // SAFETY: `filter` is the filter of the running hook.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(filter.0) };
        (!ptr.is_null()).then_some(Scheduler { ptr, of_config: false })
    }

    /// A scheduler for the config (its events run on the main thread).
    pub fn for_config(config: Config) -> Option<Scheduler> {
        // SAFETY: `config` is alive (called from `config_new`).
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config.0) };
        (!ptr.is_null()).then_some(Scheduler { ptr, of_config: true })
    }

    /// Asks for the owner's `scheduled` hook with `event` (dropped by Envoy if the owner is gone).
    pub fn commit(&self, event: u64) {
        // SAFETY: `ptr` is alive until `drop`; Envoy holds only a weak reference to the owner.
        unsafe {
            if self.of_config {
                envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.ptr, event)
            } else {
                envoy_dynamic_module_callback_http_filter_scheduler_commit(self.ptr, event)
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: made by the matching `_new`, deleted once.
        unsafe {
            if self.of_config {
                envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.ptr)
            } else {
                envoy_dynamic_module_callback_http_filter_scheduler_delete(self.ptr)
            }
        }
    }
}

/// Kinds of stats.
#[derive(Clone, Copy)]
pub enum StatKind {
    /// Only goes up.
    Counter,
    /// Set to a value.
    Gauge,
}

/// Defines a stat without labels (from `config_new`); its id.
pub fn define_stat(config: Config, kind: StatKind, name: &str) -> Option<usize> {
    let mut id = 0usize;
    let name = ModuleBuffer::of(name.as_bytes());
    // SAFETY: `name` lives for the call; no labels; `id` is a valid local.
    let code = unsafe {
        match kind {
            StatKind::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter(
                config.0,
                name,
                std::ptr::null_mut(),
                0,
                &mut id,
            ),
            StatKind::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge(
                config.0,
                name,
                std::ptr::null_mut(),
                0,
                &mut id,
            ),
        }
    };
    (code == 0).then_some(id)
}

/// Adds to a counter (during a request's hook).
pub fn increment_counter(filter: Filter, id: usize, by: u64) {
    // SAFETY: no labels; `filter` is the filter of the running hook.
    unsafe { envoy_dynamic_module_callback_http_filter_increment_counter(filter.0, id, std::ptr::null_mut(), 0, by) };
}

/// Adds to a counter from the config's side (main thread).
pub fn config_increment_counter(config: Config, id: usize, by: u64) {
    // SAFETY: no labels; `config` is alive until `config_destroy`.
    unsafe {
        envoy_dynamic_module_callback_http_filter_config_increment_counter(config.0, id, std::ptr::null_mut(), 0, by)
    };
}

/// Sets a gauge from the config's side (main thread).
pub fn config_set_gauge(config: Config, id: usize, value: u64) {
    // SAFETY: no labels; `config` is alive until `config_destroy`.
    unsafe { envoy_dynamic_module_callback_http_filter_config_set_gauge(config.0, id, std::ptr::null_mut(), 0, value) };
}

/// Logs a line under Envoy's `dynamic_modules` logger (never a token or a secret).
pub fn log(level: Level, message: &str) {
    // SAFETY: `message` lives for the call.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(message.as_bytes())) }
}
