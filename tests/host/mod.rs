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

mod imports;
mod steps;

use imports::*;
#[allow(unused_imports)] // each test crate uses a part
pub use steps::{Decision, PendingCall};

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
