//! A proxy-wasm host for tests (wasmi): loads a built filter and implements the proxy-wasm ABI
//! 0.2.1 the filter uses (plugin configuration, header maps, local replies, continue, HTTP
//! callouts, metrics, tick, time, logs) plus the Redis-callout extension of
//! `docs/redis-callout-abi.md` (`proxy_redis_init`, `proxy_redis_call`, the root-context
//! callback `proxy_on_redis_call_response`, buffer type 9).
//!
//! Its HTTP callouts go over real TCP to the addresses given per cluster (the real companion);
//! its Redis callouts send the raw RESP query to a real Redis (or Envoy's redis_proxy) and hand
//! back the raw reply. Like the host client of the ABI, it speaks to one endpoint and does not
//! follow cluster redirections.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use multitokens_filter::header_map;
pub use multitokens_filter::header_map::RawHeaders;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmi::{Caller, Engine, Extern, Func, Instance, Linker, Module, Store, Val};

const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const UNIMPLEMENTED: i32 = 12;

/// Where the host sends callouts, by Envoy cluster name.
#[derive(Clone, Debug, Default)]
pub struct Upstreams {
    /// HTTP clusters.
    pub http: HashMap<String, SocketAddr>,
    /// Redis clusters (names without `?db=N`).
    pub redis: HashMap<String, SocketAddr>,
}

/// A callout the guest started, waiting for the host to perform it.
#[derive(Clone, Debug)]
enum Callout {
    Http { token: u32, context: u32, cluster: String, headers: Vec<(String, String)>, body: Vec<u8>, timeout_ms: u32 },
    Redis { token: u32, service: String, query: Vec<u8> },
}

/// A local reply the guest sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent upstream with these request headers (raw bytes).
    Forwarded(RawHeaders),
    /// Answered locally.
    Replied(LocalReply),
    /// Still paused (a callout never answered).
    Paused,
}

impl Outcome {
    pub fn status(&self) -> u32 {
        match self {
            Outcome::Forwarded(_) => 200,
            Outcome::Replied(r) => r.status,
            Outcome::Paused => 0,
        }
    }

    pub fn upstream_header(&self, name: &str) -> Option<String> {
        match self {
            Outcome::Forwarded(h) => {
                h.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            }
            _ => None,
        }
    }

    pub fn reply(&self) -> &LocalReply {
        match self {
            Outcome::Replied(r) => r,
            other => panic!("expected a local reply, got {other:?}"),
        }
    }
}

/// One request's state on the host side.
#[derive(Clone, Default)]
struct Stream {
    request_headers: RawHeaders,
    local_reply: Option<LocalReply>,
    continued: bool,
}

#[derive(Default)]
struct State {
    plugin_config: Vec<u8>,
    /// Requests by context id: host calls act on the effective context's.
    streams: HashMap<u32, Stream>,
    /// The request begun last.
    current: u32,
    callouts: Vec<Callout>,
    call_response_headers: RawHeaders,
    call_response_body: Vec<u8>,
    redis_response: Vec<u8>,
    effective_context: u32,
    next_token: u32,
    metric_names: Vec<String>,
    metric_values: Vec<i64>,
    logs: Vec<(i32, String)>,
    tick_period_ms: u32,
    redis_init: Option<(String, String, String, u32)>,
    upstreams: Upstreams,
    client_address: String,
    redis_queries: Vec<Vec<u8>>,
    /// Every host call the guest made (Envoy's `env` imports), in order.
    host_calls: Vec<&'static str>,
}

impl State {
    /// The effective context's request.
    fn stream(&mut self) -> &mut Stream {
        self.streams.entry(self.effective_context).or_default()
    }

    /// The request begun last.
    fn current(&self) -> Stream {
        self.streams.get(&self.current).cloned().unwrap_or_default()
    }
}

type Host<'a> = Caller<'a, State>;

fn memory(caller: &Host) -> wasmi::Memory {
    caller.get_export("memory").and_then(Extern::into_memory).expect("guest exports memory")
}

fn read_bytes(caller: &Host, ptr: i32, len: i32) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    memory(caller).read(caller, ptr as u32 as usize, &mut buf).expect("guest pointer in bounds");
    buf
}

fn read_string(caller: &Host, ptr: i32, len: i32) -> String {
    String::from_utf8_lossy(&read_bytes(caller, ptr, len)).into_owned()
}

fn write_bytes(caller: &mut Host, ptr: i32, bytes: &[u8]) {
    memory(caller).write(caller, ptr as u32 as usize, bytes).expect("guest pointer in bounds");
}

fn write_u32(caller: &mut Host, ptr: i32, value: u32) {
    write_bytes(caller, ptr, &value.to_le_bytes());
}

/// Copies bytes into guest memory allocated by the guest's `proxy_on_memory_allocate`, and
/// writes the pointer and size where the guest asked.
fn hand_over(caller: &mut Host, bytes: &[u8], ret_ptr: i32, ret_size: i32) -> i32 {
    if bytes.is_empty() {
        write_u32(caller, ret_ptr, 0);
        write_u32(caller, ret_size, 0);
        return OK;
    }
    let alloc = caller.get_export("proxy_on_memory_allocate").and_then(Extern::into_func).expect("allocator export");
    let mut out = [Val::I32(0)];
    alloc.call(&mut *caller, &[Val::I32(bytes.len() as i32)], &mut out).expect("allocate");
    let Val::I32(addr) = out[0] else { panic!("allocator returned no pointer") };
    write_bytes(caller, addr, bytes);
    write_u32(caller, ret_ptr, addr as u32);
    write_u32(caller, ret_size, bytes.len() as u32);
    OK
}

/// (Header names compare without case, as in Envoy's header maps.)
/// A header map the guest handed over, as text (the guest's own maps are always UTF-8).
fn deserialize_map(bytes: &[u8]) -> Vec<(String, String)> {
    header_map::decode(bytes)
        .expect("the guest serialized a valid header map")
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

fn map_of(state: &mut State, map_type: i32) -> Option<&mut RawHeaders> {
    match map_type {
        0 => {
            let ctx = state.effective_context;
            Some(&mut state.streams.entry(ctx).or_default().request_headers)
        }
        6 => Some(&mut state.call_response_headers),
        _ => None,
    }
}

/// Defines the host functions.
fn link(linker: &mut Linker<State>) {
    linker
        .func_wrap("env", "proxy_log", |c: Host, level: i32, ptr: i32, len: i32| -> i32 {
            let mut c = c;
            c.data_mut().host_calls.push("proxy_log");
            let msg = read_string(&c, ptr, len);
            c.data_mut().logs.push((level, msg));
            OK
        })
        .unwrap()
        .func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Host, ret: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_get_current_time_nanoseconds");
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
            write_bytes(&mut c, ret, &nanos.to_le_bytes());
            OK
        })
        .unwrap()
        .func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Host, period: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_set_tick_period_milliseconds");
            c.data_mut().tick_period_ms = period as u32;
            OK
        })
        .unwrap()
        .func_wrap(
            "env",
            "proxy_get_buffer_bytes",
            |mut c: Host, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_get_buffer_bytes");
                let data = match kind {
                    4 => c.data().call_response_body.clone(),
                    7 => c.data().plugin_config.clone(),
                    9 => c.data().redis_response.clone(),
                    _ => return NOT_FOUND,
                };
                let start = (start as u32 as usize).min(data.len());
                let end = start.saturating_add(max as u32 as usize).min(data.len());
                hand_over(&mut c, &data[start..end], ret_ptr, ret_size)
            },
        )
        .unwrap()
        .func_wrap("env", "proxy_get_header_map_pairs", |mut c: Host, map: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_get_header_map_pairs");
            let Some(pairs) = map_of(c.data_mut(), map).cloned() else { return NOT_FOUND };
            hand_over(&mut c, &header_map::encode(&pairs), ret_ptr, ret_size)
        })
        .unwrap()
        .func_wrap(
            "env",
            "proxy_get_header_map_value",
            |mut c: Host, map: i32, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_get_header_map_value");
                let key = read_bytes(&c, kp, kl).to_ascii_lowercase();
                let Some(pairs) = map_of(c.data_mut(), map) else { return NOT_FOUND };
                let Some(value) = pairs.iter().find(|(k, _)| k.to_ascii_lowercase() == key).map(|(_, v)| v.clone())
                else {
                    return NOT_FOUND;
                };
                hand_over(&mut c, &value, ret_ptr, ret_size)
            },
        )
        .unwrap()
        .func_wrap(
            "env",
            "proxy_add_header_map_value",
            |mut c: Host, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_add_header_map_value");
                let (key, value) = (read_bytes(&c, kp, kl).to_ascii_lowercase(), read_bytes(&c, vp, vl));
                let Some(pairs) = map_of(c.data_mut(), map) else { return NOT_FOUND };
                pairs.push((key, value));
                OK
            },
        )
        .unwrap()
        .func_wrap(
            "env",
            "proxy_replace_header_map_value",
            |mut c: Host, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_replace_header_map_value");
                let (key, value) = (read_bytes(&c, kp, kl).to_ascii_lowercase(), read_bytes(&c, vp, vl));
                let Some(pairs) = map_of(c.data_mut(), map) else { return NOT_FOUND };
                pairs.retain(|(k, _)| k.to_ascii_lowercase() != key);
                pairs.push((key, value));
                OK
            },
        )
        .unwrap()
        .func_wrap("env", "proxy_remove_header_map_value", |mut c: Host, map: i32, kp: i32, kl: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_remove_header_map_value");
            let key = read_bytes(&c, kp, kl).to_ascii_lowercase();
            let Some(pairs) = map_of(c.data_mut(), map) else { return NOT_FOUND };
            pairs.retain(|(k, _)| k.to_ascii_lowercase() != key);
            OK
        })
        .unwrap()
        .func_wrap(
            "env",
            "proxy_send_local_response",
            |mut c: Host, status: i32, _dp: i32, _dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, _grpc: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_send_local_response");
                let body = read_string(&c, bp, bl);
                let headers = deserialize_map(&read_bytes(&c, hp, hl));
                c.data_mut().stream().local_reply = Some(LocalReply { status: status as u32, headers, body });
                OK
            },
        )
        .unwrap()
        .func_wrap("env", "proxy_continue_stream", |mut c: Host, stream: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_continue_stream");
            if stream == 0 {
                c.data_mut().stream().continued = true;
            }
            OK
        })
        .unwrap()
        .func_wrap("env", "proxy_get_property", |mut c: Host, pp: i32, pl: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_get_property");
            match read_bytes(&c, pp, pl).as_slice() {
                b"source\0address" => {
                    let address = c.data().client_address.clone();
                    hand_over(&mut c, address.as_bytes(), ret_ptr, ret_size)
                }
                _ => NOT_FOUND,
            }
        })
        .unwrap()
        .func_wrap("env", "proxy_set_effective_context", |mut c: Host, context: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_set_effective_context");
            c.data_mut().effective_context = context as u32;
            OK
        })
        .unwrap()
        .func_wrap(
            "env",
            "proxy_http_call",
            |mut c: Host,
             up: i32,
             ul: i32,
             hp: i32,
             hl: i32,
             bp: i32,
             bl: i32,
             _tp: i32,
             _tl: i32,
             timeout: i32,
             ret: i32|
             -> i32 {
                c.data_mut().host_calls.push("proxy_http_call");
                let cluster = read_string(&c, up, ul);
                if !c.data().upstreams.http.contains_key(&cluster) {
                    return BAD_ARGUMENT;
                }
                let headers = deserialize_map(&read_bytes(&c, hp, hl));
                let body = if bl > 0 { read_bytes(&c, bp, bl) } else { vec![] };
                let state = c.data_mut();
                state.next_token += 1;
                let token = state.next_token;
                let context = state.effective_context;
                state.callouts.push(Callout::Http {
                    token,
                    context,
                    cluster,
                    headers,
                    body,
                    timeout_ms: timeout as u32,
                });
                write_u32(&mut c, ret, token);
                OK
            },
        )
        .unwrap()
        .func_wrap("env", "proxy_define_metric", |mut c: Host, _kind: i32, np: i32, nl: i32, ret: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_define_metric");
            let name = read_string(&c, np, nl);
            let state = c.data_mut();
            let id = match state.metric_names.iter().position(|n| *n == name) {
                Some(i) => i,
                None => {
                    state.metric_names.push(name);
                    state.metric_values.push(0);
                    state.metric_names.len() - 1
                }
            };
            write_u32(&mut c, ret, id as u32);
            OK
        })
        .unwrap()
        .func_wrap("env", "proxy_increment_metric", |mut c: Host, id: i32, offset: i64| -> i32 {
            c.data_mut().host_calls.push("proxy_increment_metric");
            match c.data_mut().metric_values.get_mut(id as usize) {
                Some(v) => {
                    *v += offset;
                    OK
                }
                None => NOT_FOUND,
            }
        })
        .unwrap()
        .func_wrap("env", "proxy_record_metric", |mut c: Host, id: i32, value: i64| -> i32 {
            c.data_mut().host_calls.push("proxy_record_metric");
            match c.data_mut().metric_values.get_mut(id as usize) {
                Some(v) => {
                    *v = value;
                    OK
                }
                None => NOT_FOUND,
            }
        })
        .unwrap()
        .func_wrap(
            "env",
            "proxy_redis_init",
            |mut c: Host, sp: i32, sl: i32, up: i32, ul: i32, pp: i32, pl: i32, timeout: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_redis_init");
                let service = read_string(&c, sp, sl);
                let name = service.split('?').next().unwrap_or("").to_string();
                if !c.data().upstreams.redis.contains_key(&name) {
                    return BAD_ARGUMENT;
                }
                let (user, pass) = (read_string(&c, up, ul), read_string(&c, pp, pl));
                c.data_mut().redis_init = Some((service, user, pass, timeout as u32));
                OK
            },
        )
        .unwrap()
        .func_wrap("env", "proxy_redis_call", |mut c: Host, sp: i32, sl: i32, qp: i32, ql: i32, ret: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_redis_call");
            let service = read_string(&c, sp, sl);
            let name = service.split('?').next().unwrap_or("").to_string();
            if !c.data().upstreams.redis.contains_key(&name) {
                return BAD_ARGUMENT;
            }
            let query = read_bytes(&c, qp, ql);
            let state = c.data_mut();
            state.next_token += 1;
            let token = state.next_token;
            state.redis_queries.push(query.clone());
            state.callouts.push(Callout::Redis { token, service, query });
            write_u32(&mut c, ret, token);
            OK
        })
        .unwrap()
        .func_wrap("wasi_snapshot_preview1", "random_get", |mut c: Host, ptr: i32, len: i32| -> i32 {
            let mut buf = vec![0u8; len as usize];
            getrandom::fill(&mut buf).unwrap();
            write_bytes(&mut c, ptr, &buf);
            0
        })
        .unwrap()
        .func_wrap("wasi_snapshot_preview1", "environ_sizes_get", |mut c: Host, count: i32, size: i32| -> i32 {
            write_u32(&mut c, count, 0);
            write_u32(&mut c, size, 0);
            0
        })
        .unwrap()
        .func_wrap("wasi_snapshot_preview1", "environ_get", |_: Host, _: i32, _: i32| -> i32 { 0 })
        .unwrap()
        .func_wrap(
            "wasi_snapshot_preview1",
            "fd_write",
            |mut c: Host, _fd: i32, iovs: i32, n: i32, written: i32| -> i32 {
                let mut total = 0u32;
                let mut text = Vec::new();
                for i in 0..n {
                    let iov = read_bytes(&c, iovs + i * 8, 8);
                    let ptr = u32::from_le_bytes(iov[0..4].try_into().unwrap()) as i32;
                    let len = u32::from_le_bytes(iov[4..8].try_into().unwrap()) as i32;
                    text.extend(read_bytes(&c, ptr, len));
                    total += len as u32;
                }
                c.data_mut().logs.push((-1, String::from_utf8_lossy(&text).into_owned()));
                write_u32(&mut c, written, total);
                0
            },
        )
        .unwrap()
        .func_wrap("wasi_snapshot_preview1", "proc_exit", |_: Host, code: i32| -> Result<(), wasmi::Error> {
            Err(wasmi::Error::new(format!("guest called proc_exit({code})")))
        })
        .unwrap();
}

/// Reads one RESP reply off a stream with core's decoder and returns its raw bytes (the host
/// hands them to the guest uninterpreted, as Envoy does).
fn read_resp(reader: &mut impl Read) -> std::io::Result<Vec<u8>> {
    use multitokens_core::resp::{decode_prefix, RespError};
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match decode_prefix(&received) {
            Ok((_, used)) if used == received.len() => return Ok(received),
            Ok(_) => return Err(std::io::Error::other("bytes after the reply")),
            Err(RespError::Incomplete) => {}
            Err(e) => return Err(std::io::Error::other(format!("not RESP: {e:?}"))),
        }
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed mid-reply"));
        }
        received.extend_from_slice(&chunk[..n]);
    }
}

/// A loaded filter under test.
pub struct TestHost {
    store: Store<State>,
    instance: Instance,
    root_id: u32,
    next_context: u32,
}

impl TestHost {
    /// Loads a `.wasm`, starts the VM and configures the plugin; `Err` carries the guest's logs
    /// when it refuses the configuration.
    pub fn load(wasm: &Path, plugin_config: &str, upstreams: Upstreams) -> Result<TestHost, String> {
        match Self::start(wasm, plugin_config.as_bytes(), upstreams) {
            Ok((host, true)) => Ok(host),
            Ok((host, false)) => Err(host.logs().join("\n")),
            Err(trap) => panic!("{trap}"),
        }
    }

    fn export(&self, name: &str) -> Option<Func> {
        self.instance.get_func(&self.store, name)
    }

    /// Calls a guest export; returns its i32 result (0 when it has none).
    fn call(&mut self, name: &str, args: &[Val]) -> i32 {
        self.try_call(name, args).unwrap_or_else(|trap| panic!("{trap}"))
    }

    /// The guest's log lines.
    pub fn logs(&self) -> Vec<String> {
        self.store.data().logs.iter().map(|(l, m)| format!("[{l}] {m}")).collect()
    }

    /// A metric's value by name (e.g. `multitokens.allowed`), after a tick (the filter hands its
    /// counts to the host on its tick, as it does to Envoy); an unknown name fails the test.
    pub fn metric(&mut self, name: &str) -> i64 {
        self.tick();
        let s = self.store.data();
        let index = s.metric_names.iter().position(|n| n == name);
        index.map(|i| s.metric_values[i]).unwrap_or_else(|| panic!("the filter defined no metric {name} (renamed?)"))
    }

    /// What `proxy_redis_init` was given.
    pub fn redis_init(&self) -> Option<(String, String, String, u32)> {
        self.store.data().redis_init.clone()
    }

    /// Every Redis query the guest sent so far.
    pub fn redis_queries(&self) -> &[Vec<u8>] {
        &self.store.data().redis_queries
    }

    /// The downstream address the host reports from now on (`source.address`).
    pub fn set_client_address(&mut self, address: &str) {
        self.store.data_mut().client_address = address.into();
    }

    /// The tick period the guest asked for.
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// The host calls the guest made since the last time this was asked.
    pub fn take_host_calls(&mut self) -> Vec<&'static str> {
        std::mem::take(&mut self.store.data_mut().host_calls)
    }

    /// Runs one request through the filter, performing its callouts for real.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Outcome {
        let mut raw: RawHeaders = vec![
            (b":method".to_vec(), method.into()),
            (b":path".to_vec(), path.into()),
            (b":authority".to_vec(), b"test".to_vec()),
        ];
        raw.extend(headers.iter().map(|(k, v)| (k.to_ascii_lowercase().into_bytes(), v.as_bytes().to_vec())));
        self.request_raw(raw)
    }

    /// Runs one request with exactly these header bytes (pseudo-headers included).
    pub fn request_raw(&mut self, headers: RawHeaders) -> Outcome {
        let client = self.store.data().client_address.clone();
        let ctx = self.try_begin(headers, &client).unwrap_or_else(|trap| panic!("{trap}"));
        // perform callouts until the request is decided
        for _ in 0..8 {
            let s = self.store.data().current();
            if s.local_reply.is_some() || s.continued {
                break;
            }
            if !self.run_callouts() {
                break;
            }
        }
        let s = self.store.data().current();
        let outcome = match (&s.local_reply, s.continued) {
            (Some(r), _) => Outcome::Replied(r.clone()),
            (None, true) => Outcome::Forwarded(s.request_headers.clone()),
            (None, false) => Outcome::Paused,
        };
        self.try_end(ctx).unwrap_or_else(|trap| panic!("{trap}"));
        outcome
    }

    /// One timer tick of the root context, with the callouts it starts.
    pub fn tick(&mut self) {
        self.store.data_mut().effective_context = self.root_id;
        self.call("proxy_on_tick", &[Val::I32(self.root_id as i32)]);
        while self.run_callouts() {}
    }

    /// Performs every pending callout; false when there was none.
    /// Callouts started and not yet performed.
    pub fn pending_callouts(&self) -> usize {
        self.store.data().callouts.len()
    }

    /// Performs the callouts under way for real and delivers their answers; false if there were none.
    pub fn run_callouts(&mut self) -> bool {
        let pending = std::mem::take(&mut self.store.data_mut().callouts);
        if pending.is_empty() {
            return false;
        }
        for callout in pending {
            match callout {
                Callout::Http { token, context, cluster, headers, body, timeout_ms } => {
                    let addr = self.store.data().upstreams.http[&cluster];
                    let response = http_call(addr, &headers, &body, timeout_ms);
                    self.try_answer_http(context, token, response).unwrap_or_else(|trap| panic!("{trap}"));
                }
                Callout::Redis { token, service, query } => {
                    let reply = self.redis_call(&service, &query);
                    self.try_answer_redis(token, reply).unwrap_or_else(|trap| panic!("{trap}"));
                }
            }
        }
        true
    }

    /// Sends the raw query to the Redis behind the service (after AUTH/SELECT as initialised).
    fn redis_call(&self, service: &str, query: &[u8]) -> Option<Vec<u8>> {
        let (name, db) = match service.split_once("?db=") {
            Some((n, d)) => (n, d.parse::<u32>().ok()),
            None => (service, None),
        };
        let addr = *self.store.data().upstreams.redis.get(name)?;
        let init = self.store.data().redis_init.clone();
        let timeout = Duration::from_millis(init.as_ref().map_or(1000, |i| i.3 as u64));
        let stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
        stream.set_read_timeout(Some(timeout)).ok()?;
        let mut writer = stream.try_clone().ok()?;
        let mut reader = stream;
        let mut prelude = Vec::new();
        if let Some((_, user, pass, _)) = &init {
            match (user.is_empty(), pass.is_empty()) {
                (false, false) => prelude.push(multitokens_core::resp::encode_command(&["AUTH", user, pass])),
                (true, false) => prelude.push(multitokens_core::resp::encode_command(&["AUTH", pass])),
                _ => {}
            }
        }
        if let Some(db) = db {
            prelude.push(multitokens_core::resp::encode_command(&["SELECT", &db.to_string()]));
        }
        for command in prelude {
            writer.write_all(&command).ok()?;
            read_resp(&mut reader).ok()?;
        }
        writer.write_all(query).ok()?;
        read_resp(&mut reader).ok()
    }
}

/// Performs an HTTP/1.1 callout; `None` when there is no response (refused, reset, timeout).
fn http_call(
    addr: SocketAddr,
    headers: &[(String, String)],
    body: &[u8],
    timeout_ms: u32,
) -> Option<(RawHeaders, Vec<u8>)> {
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(timeout_ms as u64)))
        .build()
        .into();
    let mut request =
        ureq::http::Request::builder().method(get(":method").as_str()).uri(format!("http://{addr}{}", get(":path")));
    for (k, v) in headers.iter().filter(|(k, _)| !k.starts_with(':')) {
        request = request.header(k.as_str(), v.as_str());
    }
    let response = agent.run(request.body(body.to_vec()).ok()?).ok()?;
    let mut out = vec![(b":status".to_vec(), response.status().as_u16().to_string().into_bytes())];
    for (k, v) in response.headers() {
        out.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    let body = response.into_body().read_to_vec().ok()?;
    Some((out, body))
}

/// A callout the guest started, as the scripted driver sees it.
#[derive(Clone, Debug)]
pub struct PendingCall {
    /// The call's token.
    pub token: u32,
    /// The context that was in effect when it was made.
    pub context: u32,
    /// A Redis call (else an HTTP call).
    pub redis: bool,
}

/// Where the current request stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answered locally with this status.
    Replied(u32),
    /// Forwarded with these headers.
    Forwarded(RawHeaders),
    /// Still paused.
    Pending,
}

/// The scripted driver: every guest call returns `Err` with the trap instead of panicking, and
/// the test, not the host, decides when and how each callout is answered (for property tests).
impl TestHost {
    /// Loads and configures; `Ok(None)` when the guest refuses the configuration.
    pub fn try_load(wasm: &Path, plugin_config: &[u8], upstreams: Upstreams) -> Result<Option<TestHost>, String> {
        Self::start(wasm, plugin_config, upstreams).map(|(host, configured)| configured.then_some(host))
    }

    /// Loads, starts and configures the VM; the host and whether the guest took its configuration
    /// (`Err`: the guest trapped).
    fn start(wasm: &Path, plugin_config: &[u8], upstreams: Upstreams) -> Result<(TestHost, bool), String> {
        let config = String::from_utf8_lossy(plugin_config).into_owned();
        let engine = Engine::default();
        let module = Module::new(&engine, std::fs::read(wasm).unwrap()).map_err(|e| e.to_string())?;
        let mut linker = Linker::<State>::new(&engine);
        link(&mut linker);
        for import in module.imports() {
            if let wasmi::ExternType::Func(ty) = import.ty() {
                let ty = ty.clone();
                let _ = linker.func_new(import.module(), import.name(), ty, |_, _, out| {
                    for slot in out.iter_mut() {
                        *slot = Val::I32(UNIMPLEMENTED);
                    }
                    Ok(())
                });
            }
        }
        let state = State {
            plugin_config: plugin_config.to_vec(),
            upstreams,
            client_address: "192.0.2.1:40000".into(),
            ..State::default()
        };
        let mut store = Store::new(&engine, state);
        let instance = linker.instantiate_and_start(&mut store, &module).map_err(|e| e.to_string())?;
        let mut host = TestHost { store, instance, root_id: 1, next_context: 1 };
        if host.export("_initialize").is_some() {
            host.try_call("_initialize", &[])?;
        }
        host.try_call("proxy_on_context_create", &[Val::I32(1), Val::I32(0)])?;
        host.try_call("proxy_on_vm_start", &[Val::I32(1), Val::I32(0)])?;
        let configured = host.try_call("proxy_on_configure", &[Val::I32(1), Val::I32(config.len() as i32)])?;
        Ok((host, configured == 1))
    }

    fn try_call(&mut self, name: &str, args: &[Val]) -> Result<i32, String> {
        let func = self.export(name).ok_or_else(|| format!("guest does not export {name}"))?;
        let ty = func.ty(&self.store);
        let mut out: Vec<Val> = ty.results().iter().map(|_| Val::I32(0)).collect();
        func.call(&mut self.store, args, &mut out)
            .map_err(|e| format!("{name} trapped: {e}\nlogs:\n{}", self.logs().join("\n")))?;
        Ok(match out.first() {
            Some(Val::I32(v)) => *v,
            _ => 0,
        })
    }

    /// Starts a request with exactly these headers; its context id.
    pub fn try_begin(&mut self, headers: RawHeaders, client: &str) -> Result<u32, String> {
        self.next_context += 1;
        let ctx = self.next_context;
        {
            let s = self.store.data_mut();
            s.streams.insert(ctx, Stream { request_headers: headers, ..Stream::default() });
            s.current = ctx;
            s.effective_context = ctx;
            s.client_address = client.into();
        }
        self.try_call("proxy_on_context_create", &[Val::I32(ctx as i32), Val::I32(self.root_id as i32)])?;
        let n = self.store.data().current().request_headers.len() as i32;
        if self.try_call("proxy_on_request_headers", &[Val::I32(ctx as i32), Val::I32(n), Val::I32(1)])? == 0 {
            self.store.data_mut().stream().continued = true;
        }
        Ok(ctx)
    }

    /// Where the request begun last stands.
    pub fn decision(&self) -> Decision {
        self.decision_of(self.store.data().current)
    }

    /// Where the request of context `ctx` stands.
    pub fn decision_of(&self, ctx: u32) -> Decision {
        let s = self.store.data().streams.get(&ctx).cloned().unwrap_or_default();
        match (&s.local_reply, s.continued) {
            (Some(r), _) => Decision::Replied(r.status),
            (None, true) => Decision::Forwarded(s.request_headers.clone()),
            (None, false) => Decision::Pending,
        }
    }

    /// Whether the guest both replied locally and resumed a request (never allowed).
    pub fn replied_and_resumed(&self) -> bool {
        self.store.data().streams.values().any(|s| s.local_reply.is_some() && s.continued)
    }

    /// The callouts started since the last call.
    pub fn take_calls(&mut self) -> Vec<PendingCall> {
        std::mem::take(&mut self.store.data_mut().callouts)
            .into_iter()
            .map(|c| match c {
                Callout::Http { token, context, .. } => PendingCall { token, context, redis: false },
                Callout::Redis { token, .. } => PendingCall { token, context: self.root_id, redis: true },
            })
            .collect()
    }

    /// Answers an HTTP call (`None`: no response, as after a timeout or reset).
    pub fn try_answer_http(
        &mut self,
        context: u32,
        token: u32,
        answer: Option<(RawHeaders, Vec<u8>)>,
    ) -> Result<(), String> {
        let (n, size) = {
            let s = self.store.data_mut();
            s.effective_context = context;
            match answer {
                Some((headers, body)) => {
                    let (n, size) = (headers.len(), body.len());
                    s.call_response_headers = headers;
                    s.call_response_body = body;
                    (n, size)
                }
                None => {
                    s.call_response_headers.clear();
                    s.call_response_body.clear();
                    (0, 0)
                }
            }
        };
        self.try_call(
            "proxy_on_http_call_response",
            &[Val::I32(context as i32), Val::I32(token as i32), Val::I32(n as i32), Val::I32(size as i32), Val::I32(0)],
        )?;
        Ok(())
    }

    /// Answers a Redis call (`None`: a network error).
    pub fn try_answer_redis(&mut self, token: u32, reply: Option<Vec<u8>>) -> Result<(), String> {
        let (status, size) = match reply {
            Some(r) => {
                let size = r.len();
                self.store.data_mut().redis_response = r;
                (0, size)
            }
            None => (1, 0),
        };
        self.store.data_mut().effective_context = self.root_id;
        self.try_call(
            "proxy_on_redis_call_response",
            &[Val::I32(self.root_id as i32), Val::I32(token as i32), Val::I32(status), Val::I32(size as i32)],
        )?;
        self.store.data_mut().redis_response.clear();
        Ok(())
    }

    /// One timer tick; its callouts are left for the script to answer.
    pub fn try_tick(&mut self) -> Result<(), String> {
        self.store.data_mut().effective_context = self.root_id;
        self.try_call("proxy_on_tick", &[Val::I32(self.root_id as i32)])?;
        Ok(())
    }

    /// Ends a request (done, log, delete), as after the stream finished or was reset. Like
    /// Envoy's proxy-wasm host, done and log are called only when the guest exports them (done
    /// then counts as "yes"); delete is required.
    pub fn try_end(&mut self, ctx: u32) -> Result<(), String> {
        self.store.data_mut().effective_context = ctx;
        for optional in ["proxy_on_done", "proxy_on_log"] {
            if self.export(optional).is_some() {
                self.try_call(optional, &[Val::I32(ctx as i32)])?;
            }
        }
        self.try_call("proxy_on_delete", &[Val::I32(ctx as i32)])?;
        self.store.data_mut().streams.remove(&ctx);
        Ok(())
    }
}
