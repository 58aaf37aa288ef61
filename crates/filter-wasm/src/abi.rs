//! The proxy-wasm host calls (ABI 0.2.1) the shell makes: every call returns `Result`, and every
//! byte the host hands over stays bytes. Why not the proxy-wasm SDK: docs/security.md.

use multitokens_filter::header_list::HeaderList;
use multitokens_filter::header_map;
use multitokens_filter::vm::Level;

/// A host call's status other than OK (proxy-wasm ABI 0.2.1 `WasmResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 1: the thing asked for does not exist.
    NotFound,
    /// 2: an argument was refused (for a callout: no such cluster).
    BadArgument,
    /// 10: the upstream is unavailable (for a Redis callout: no healthy host).
    Unavailable,
    /// Any other status, as the host gave it.
    Other(u32),
    /// The call succeeded but what it handed over does not decode (never expected).
    Malformed,
}

impl Status {
    /// The status of a host call's return value (`Ok` for 0).
    pub fn of(code: u32) -> Result<(), Status> {
        match code {
            0 => Ok(()),
            1 => Err(Status::NotFound),
            2 => Err(Status::BadArgument),
            10 => Err(Status::Unavailable),
            other => Err(Status::Other(other)),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::NotFound => f.write_str("not found (1)"),
            Status::BadArgument => f.write_str("bad argument (2)"),
            Status::Unavailable => f.write_str("unavailable (10)"),
            Status::Other(code) => write!(f, "status {code}"),
            Status::Malformed => f.write_str("a malformed answer"),
        }
    }
}

/// The header maps the shell reads and writes.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Map {
    /// The request headers of the current HTTP context.
    RequestHeaders = 0,
    /// The request trailers of the current HTTP context.
    RequestTrailers = 2,
    /// The response headers of the HTTP callout being answered.
    CalloutResponseHeaders = 6,
}

/// The buffers the shell reads.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Buffer {
    /// The body of the HTTP callout being answered.
    CalloutResponseBody = 4,
    /// The plugin configuration (at configure time).
    PluginConfiguration = 7,
    /// The reply of the Redis call being answered (Redis-callout ABI).
    #[cfg(feature = "redis-callout")]
    RedisCallResponse = 9,
}

// The host functions, as proxy-wasm ABI 0.2.1 declares them.
#[rustfmt::skip]
#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(map_type: u32, key: *const u8, key_size: usize,
        return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(map_type: u32, key: *const u8, key_size: usize,
        value: *const u8, value_size: usize) -> u32;
    fn proxy_add_header_map_value(map_type: u32, key: *const u8, key_size: usize,
        value: *const u8, value_size: usize) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(buffer_type: u32, start: usize, max_size: usize,
        return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_send_local_response(status_code: u32, details: *const u8, details_size: usize,
        body: *const u8, body_size: usize, headers: *const u8, headers_size: usize, grpc_status: i32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_http_call(upstream: *const u8, upstream_size: usize, headers: *const u8, headers_size: usize,
        body: *const u8, body_size: usize, trailers: *const u8, trailers_size: usize,
        timeout_ms: u32, return_token: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
    fn proxy_define_metric(metric_type: u32, name: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
}

fn ok(status: u32) -> Result<(), Status> {
    Status::of(status)
}

/// Bytes a host call hands over through its two out-pointers, allocated by our
/// `proxy_on_memory_allocate`; the call's status if it failed.
fn returned(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Vec<u8>, Status> {
    let (mut data, mut size) = (std::ptr::null_mut::<u8>(), 0usize);
    ok(call(&mut data, &mut size))?;
    if data.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: the call returned OK, so the host allocated `size` bytes at `data` with the
    // Vec-based allocator and hands ownership to us, exactly as the SDK's own getters assume.
    Ok(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Every header of a map, as bytes (kept in the buffer the host handed over).
pub fn headers(map: Map) -> Result<HeaderList, Status> {
    // SAFETY: the out-pointers are valid locals the host writes to.
    let bytes = returned(|data, size| unsafe { proxy_get_header_map_pairs(map as u32, data, size) })?;
    header_map::decode_list(bytes).ok_or(Status::Malformed)
}

/// One header's value, as bytes (`None`: absent or unreadable).
pub fn header(map: Map, name: &str) -> Option<Vec<u8>> {
    // SAFETY: `name` lives for the call; the out-pointers are valid locals.
    returned(|data, size| unsafe { proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), data, size) }).ok()
}

/// Sets a header, replacing every value it had.
pub fn set_header(map: Map, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: both slices live for the call.
    ok(unsafe { proxy_replace_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Adds a value to a header (its other values stay).
pub fn add_header(map: Map, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: both slices live for the call.
    ok(unsafe { proxy_add_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Removes a header.
pub fn remove_header(map: Map, name: &str) -> Result<(), Status> {
    // SAFETY: `name` lives for the call.
    ok(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A buffer's bytes, at most `max` of them.
pub fn buffer(buffer: Buffer, max: usize) -> Result<Vec<u8>, Status> {
    // SAFETY: the out-pointers are valid locals the host writes to.
    returned(|data, size| unsafe { proxy_get_buffer_bytes(buffer as u32, 0, max, data, size) })
}

/// Sends a local reply instead of forwarding the request.
pub fn send_reply(status: u32, headers: &[(String, String)], body: &[u8]) -> Result<(), Status> {
    let map = header_map::encode(headers);
    // SAFETY: every slice lives for the call; no details string.
    ok(unsafe {
        proxy_send_local_response(status, std::ptr::null(), 0, body.as_ptr(), body.len(), map.as_ptr(), map.len(), -1)
    })
}

/// Resumes the paused request of the current HTTP context.
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_continue_stream(0) })
}

/// Makes a context the one later host calls act on.
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_set_effective_context(context_id) })
}

/// The host's wall clock in milliseconds since the epoch (0 if it will not say).
pub fn now_ms() -> u64 {
    let mut nanos = 0u64;
    // SAFETY: `nanos` is a valid local the host writes to.
    match unsafe { proxy_get_current_time_nanoseconds(&mut nanos) } {
        0 => nanos / 1_000_000,
        _ => 0,
    }
}

/// Asks for `proxy_on_tick` every `period_ms`.
pub fn set_tick_period(period_ms: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_set_tick_period_milliseconds(u32::try_from(period_ms).unwrap_or(u32::MAX)) })
}

/// Logs a line (never a token or a secret).
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => 3,
        Level::Error => 4,
    };
    // SAFETY: `message` lives for the call.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// Metric kinds.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum MetricKind {
    /// Only goes up.
    Counter = 0,
    /// Goes up and down.
    Gauge = 1,
}

/// Defines a metric; its id.
pub fn define_metric(kind: MetricKind, name: &str) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: `name` lives for the call; `id` is a valid local.
    (unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) } == 0).then_some(id)
}

/// Adds to a metric.
pub fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_increment_metric(id, by) })
}

/// A property of the current context by its path segments (`["source", "address"]`).
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let joined = path.join("\0");
    // SAFETY: `joined` lives for the call; the out-pointers are valid locals.
    returned(|data, size| unsafe { proxy_get_property(joined.as_ptr(), joined.len(), data, size) }).ok()
}

/// Starts a bodiless HTTP call to an Envoy cluster; its token (the answer comes to
/// `proxy_on_http_call_response`).
pub fn http_call(cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout_ms: u64) -> Result<u32, Status> {
    let map = header_map::encode(headers);
    let trailers = header_map::encode::<&str, &str>(&[]);
    let mut token = 0u32;
    let timeout = u32::try_from(timeout_ms).unwrap_or(u32::MAX);
    // SAFETY: every slice lives for the call; `token` is a valid local the host writes to.
    ok(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            map.as_ptr(),
            map.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout,
            &mut token,
        )
    })?;
    Ok(token)
}
