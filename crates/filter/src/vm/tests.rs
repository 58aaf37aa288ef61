//! Tests of the parent module: a proxy that records every host call, in order.

use super::*;
use crate::header_map::RawHeaders;
use multitokens_core::token;
use std::cell::Cell;

const CONFIG: &[u8] = br#"{"companion": {"cluster": "mt", "api_key": "k"}}"#;
const VALID: &[u8] =
    br#"{"active":true,"user":"alice","device":"phone","scopes":["read"],"expires_in":3600,"id":"abc"}"#;
const ROOT: u32 = 1;

/// A proxy whose requests are header maps by context, recording each host call but the clock.
#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
    headers: HashMap<u32, RawHeaders>,
    current: u32,
    next_token: u32,
    refuse_transport: bool,
    logs: RefCell<Vec<(Level, String)>>,
}

impl Recorder {
    fn call(&mut self, call: impl Into<String>) {
        self.calls.push(call.into());
    }

    fn taken(&mut self) -> Vec<String> {
        std::mem::take(&mut self.calls)
    }

    fn header(&self, context: u32, name: &str) -> Option<&[u8]> {
        self.headers.get(&context)?.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice())
    }
}

impl Proxy for Recorder {
    fn request_headers(&self) -> HeaderList {
        self.headers.get(&self.current).map(|h| HeaderList::from_pairs(h)).unwrap_or_default()
    }
    fn set_header(&mut self, name: &str, value: &[u8]) {
        self.headers.entry(self.current).or_default().retain(|(k, _)| k != name.as_bytes());
        self.headers.entry(self.current).or_default().push((name.as_bytes().to_vec(), value.to_vec()));
        self.call(format!("set_header {name}"));
    }
    fn add_header(&mut self, name: &str, value: &[u8]) {
        self.headers.entry(self.current).or_default().push((name.as_bytes().to_vec(), value.to_vec()));
        self.call(format!("add_header {name}"));
    }
    fn remove_header(&mut self, name: &str) {
        self.headers.entry(self.current).or_default().retain(|(k, _)| k != name.as_bytes());
        self.call(format!("remove_header {name}"));
    }
    fn request_trailers(&self) -> HeaderList {
        HeaderList::from_pairs(&[("x-multitokens-user", "mallory")])
    }
    fn remove_trailer(&mut self, name: &str) {
        self.call(format!("remove_trailer {name}"));
    }
    fn send_reply(&mut self, reply: &LocalReply) {
        self.call(format!("send_reply {}", reply.status));
    }
    fn client_address(&self) -> Option<Vec<u8>> {
        Some(b"192.0.2.7:40000".to_vec())
    }
    fn resume_request(&mut self) {
        self.call("resume_request");
    }
    fn set_effective_context(&mut self, context_id: u32) -> bool {
        self.current = context_id;
        self.call(format!("set_effective_context {context_id}"));
        true
    }
    fn start_transport(&mut self, _: &Compiled) -> Result<(), String> {
        match self.refuse_transport {
            true => Err("this build cannot reach that store".into()),
            false => Ok(()),
        }
    }
    fn send(&mut self, call: StoreCall) -> Result<u32, String> {
        let StoreCall::Companion(get) = call else { return Err("no Redis here".into()) };
        self.next_token += 1;
        let what = get.path.split('?').next().unwrap_or_default().to_string();
        self.call(format!("send {what} -> {}", self.next_token));
        Ok(self.next_token)
    }
    fn set_tick_period(&mut self, period_ms: u64) {
        self.call(format!("set_tick_period {period_ms}"));
    }
    fn now_ms(&self) -> u64 {
        1_000
    }
    fn define_metric(&mut self, _: bool, name: &str) -> Option<u32> {
        Some(Metric::ALL.iter().position(|m| m.name() == name).unwrap_or(100) as u32)
    }
    fn increment_metric(&mut self, id: u32, by: i64) -> bool {
        let name = Metric::ALL.get(id as usize).map_or("a gauge", |m| m.name());
        self.call(format!("increment_metric {name} {by}"));
        true
    }
    fn memory_bytes(&self) -> i64 {
        0
    }
    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
}

/// A configured VM whose root follows the feed (so verdicts are cached).
fn configured() -> (Vm, Recorder) {
    let (vm, mut proxy) = (Vm::default(), Recorder::default());
    vm.on_context_create(ROOT, 0);
    assert!(vm.on_configure(&mut proxy, ROOT, CONFIG));
    vm.on_tick(&mut proxy, ROOT);
    let feed = br#"{"cursor":"1-0","digests":[],"reset":false}"#.to_vec();
    vm.on_callout_answer(&mut proxy, 1, || StoreReply::Http(Some(200), feed));
    assert_eq!(proxy.taken().last().map(String::as_str), Some("send /v1/internal/revocations -> 2"), "the next poll");
    proxy.next_token = 100;
    (vm, proxy)
}

/// A request with a bearer token in context `id`, its headers run.
fn request(vm: &Vm, proxy: &mut Recorder, id: u32, token: &str) -> Step {
    vm.on_context_create(id, ROOT);
    let headers = [(":method", "GET"), (":path", "/api"), ("authorization", &format!("Bearer {token}"))];
    let headers = headers.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
    proxy.headers.insert(id, headers);
    proxy.current = id;
    vm.on_request_headers(proxy, id, true)
}

fn valid(proxy: &mut Recorder, vm: &Vm, token: u32) {
    vm.on_callout_answer(proxy, token, || StoreReply::Http(Some(200), VALID.to_vec()));
}

const IDENTITY: [&str; 4] = [
    "add_header x-multitokens-user",
    "add_header x-multitokens-device",
    "add_header x-multitokens-scopes",
    "add_header x-multitokens-token-id",
];

#[test]
fn a_lookup_then_a_cache_hit_make_these_host_calls_in_this_order() {
    let (vm, mut proxy) = configured();
    let alice = token::generate("mt", "alice").unwrap();
    assert_eq!(request(&vm, &mut proxy, 2, &alice), Step::Pause);
    assert_eq!(proxy.taken(), ["send /v1/internal/lookup -> 101"]);
    valid(&mut proxy, &vm, 101);
    let mut answered = vec!["set_effective_context 2".to_string()];
    answered.extend(IDENTITY.map(String::from));
    answered.extend(["remove_header authorization".into(), "resume_request".into()]);
    assert_eq!(proxy.taken(), answered);
    assert_eq!(proxy.header(2, "x-multitokens-user"), Some(&b"alice"[..]));
    // the hit: no callout, no resume (it never paused), no metric call
    assert_eq!(request(&vm, &mut proxy, 3, &alice), Step::Continue);
    let mut hit: Vec<String> = IDENTITY.map(String::from).to_vec();
    hit.push("remove_header authorization".into());
    assert_eq!(proxy.taken(), hit);
    // counts are handed over on the tick
    vm.on_tick(&mut proxy, ROOT);
    let calls = proxy.taken();
    for counted in ["increment_metric multitokens.allowed 2", "increment_metric multitokens.cache_hit 1"] {
        assert!(calls.iter().any(|c| c == counted), "{counted} in {calls:?}");
    }
}

#[test]
fn an_answer_nobody_waits_for_is_never_read() {
    let (vm, mut proxy) = configured();
    let read = Cell::new(false);
    vm.on_callout_answer(&mut proxy, 77, || {
        read.set(true);
        StoreReply::Http(Some(200), VALID.to_vec())
    });
    assert!(!read.get());
    assert!(proxy.taken().is_empty());
}

#[test]
fn followers_get_the_leaders_answer_in_their_own_contexts() {
    let (vm, mut proxy) = configured();
    let alice = token::generate("mt", "alice").unwrap();
    assert_eq!(request(&vm, &mut proxy, 2, &alice), Step::Pause);
    assert_eq!(request(&vm, &mut proxy, 3, &alice), Step::Pause);
    assert_eq!(proxy.taken(), ["send /v1/internal/lookup -> 101"], "one lookup for both");
    valid(&mut proxy, &vm, 101);
    let calls = proxy.taken();
    let resumed: Vec<_> =
        calls.iter().filter(|c| c.starts_with("set_effective_context") || *c == "resume_request").collect();
    assert_eq!(resumed, ["set_effective_context 2", "resume_request", "set_effective_context 3", "resume_request"]);
    assert_eq!(proxy.header(3, "x-multitokens-user"), Some(&b"alice"[..]));
}

#[test]
fn a_deleted_leader_is_forgotten_and_its_follower_looks_up_again() {
    let (vm, mut proxy) = configured();
    let alice = token::generate("mt", "alice").unwrap();
    request(&vm, &mut proxy, 2, &alice);
    request(&vm, &mut proxy, 3, &alice);
    proxy.taken();
    vm.on_delete(&mut proxy, 2);
    assert_eq!(proxy.taken(), ["set_effective_context 3", "send /v1/internal/lookup -> 102"]);
    // the gone request's answer is dropped unread; the follower's own answer resumes it
    let read = Cell::new(false);
    vm.on_callout_answer(&mut proxy, 101, || {
        read.set(true);
        StoreReply::Http(Some(200), VALID.to_vec())
    });
    assert!(!read.get() && proxy.taken().is_empty());
    valid(&mut proxy, &vm, 102);
    assert_eq!(proxy.taken().last().map(String::as_str), Some("resume_request"));
}

#[test]
fn an_unknown_context_fails_closed_and_trailers_never_carry_identity() {
    let (vm, mut proxy) = configured();
    assert_eq!(vm.on_request_headers(&mut proxy, 42, true), Step::Replied);
    assert_eq!(proxy.taken(), ["send_reply 503"]);
    request(&vm, &mut proxy, 2, "not-a-token");
    proxy.taken();
    vm.on_request_trailers(&mut proxy, 2);
    assert_eq!(proxy.taken(), ["remove_trailer x-multitokens-user"]);
}

#[test]
fn a_config_is_refused_when_it_does_not_parse_or_the_build_cannot_serve_it() {
    let (vm, mut proxy) = (Vm::default(), Recorder::default());
    vm.on_context_create(ROOT, 0);
    assert!(!vm.on_configure(&mut proxy, ROOT, br#"{"companion": {"cluster": "mt"}, "cache_ttl": 1}"#));
    proxy.refuse_transport = true;
    assert!(!vm.on_configure(&mut proxy, ROOT, CONFIG));
    let logs = proxy.logs.borrow().clone();
    assert_eq!(logs.iter().filter(|(level, _)| *level == Level::Error).count(), 2, "{logs:?}");
    assert!(logs[1].1.contains("this build cannot reach that store"));
    // an unconfigured root's request fails closed
    vm.on_context_create(2, ROOT);
    assert_eq!(vm.on_request_headers(&mut proxy, 2, true), Step::Replied);
}
