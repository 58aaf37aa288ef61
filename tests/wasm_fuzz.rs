//! Property test of the built filters (both builds) in the proxy-wasm test host: random header
//! maps (any bytes in names and values, duplicates, up to 200 headers, values up to 64 KB, odd or
//! missing `:path` and `:method`), random valid and invalid plugin configurations, random callout
//! answers (any status, headers and body bytes, no answer at all, answers for unknown calls and for
//! requests already reset) and random interleavings of ticks and answers. Whatever happens, the VM
//! never traps, every request ends in exactly one of forward / 400 / 401 / 403 / 429 / 503, and a
//! forwarded request never carries an identity header value the client sent. A second property
//! runs requests in flight together with a few tokens (so they share lookups), ended and answered
//! in any order: once every call is answered, no request still waits.
//!
//! `make test` runs a bounded number of cases (`MULTITOKENS_FUZZ_CASES`, default 40 per build);
//! `make fuzz` runs many more.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod host;
mod support;

use host::{Decision, PendingCall, TestHost, Upstreams};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;
use std::net::SocketAddr;
use support::wasm_path;

/// What the client sends under identity header names starts with this: it must never be forwarded.
const SPOOF: &[u8] = b"client-";

#[derive(Clone, Debug)]
enum Event {
    Tick,
    /// Answer one of the calls under way (index modulo their number).
    Answer(usize, Answer),
    /// An answer for a call nobody made.
    Stray(u32, Answer),
    /// The client resets the stream while it waits.
    Reset,
}

#[derive(Clone, Debug)]
enum Answer {
    /// No answer: timeout, reset, no upstream.
    Nothing,
    /// Random bytes everywhere.
    Garbage { status: Vec<u8>, headers: Vec<(Vec<u8>, Vec<u8>)>, body: Vec<u8> },
    /// A well-formed positive answer (expiring in that many seconds, 0: immortal).
    Valid(u32),
    /// A well-formed "not valid".
    Invalid,
    /// A well-formed feed page (revoking nothing known, maybe resetting).
    Feed(bool),
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..24),
        2 => proptest::collection::vec(any::<u8>(), 0..512),
        1 => proptest::collection::vec(any::<u8>(), 0..max),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        Just(Answer::Nothing),
        (bytes(8), proptest::collection::vec((bytes(16), bytes(32)), 0..6), bytes(4096))
            .prop_map(|(status, headers, body)| Answer::Garbage { status, headers, body }),
        (0u32..100_000).prop_map(Answer::Valid),
        Just(Answer::Invalid),
        any::<bool>().prop_map(Answer::Feed),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => Just(Event::Tick),
        6 => (any::<usize>(), answer()).prop_map(|(i, a)| Event::Answer(i, a)),
        1 => (any::<u32>(), answer()).prop_map(|(t, a)| Event::Stray(t, a)),
        1 => Just(Event::Reset),
    ]
}

/// Header names worth hitting, or any bytes.
fn header_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "authorization", "cookie", ":path", ":method", "x-multitokens-user", "x_multitokens_user",
            "X-Multitokens-Scopes", "x-multitokens_token_id", "x-multitokens-device", "user-agent", "host",
            "x-http-method-override", "origin", "access-control-request-method", "sec-fetch-site", "content-length",
            "x-multitokens-credential", ":authority", "dpop", ":scheme",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => bytes(64),
    ]
}

#[derive(Clone, Debug)]
struct Request {
    method: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    /// (name, value, use a well-formed token as the value)
    headers: Vec<(Vec<u8>, Vec<u8>, Option<usize>)>,
    client: u8,
    events: Vec<Event>,
}

fn request() -> impl Strategy<Value = Request> {
    let method = prop::option::of(prop_oneof![
        prop::sample::select(vec!["GET", "HEAD", "POST", "OPTIONS", "DELETE", "get"])
            .prop_map(|m| m.as_bytes().to_vec()),
        bytes(16),
    ]);
    let path = prop::option::of(prop_oneof![
        prop::sample::select(vec![
            "/api",
            "/admin/x",
            "/healthz",
            "/public/../admin/x",
            "/admin//x",
            "/%61dmin/x",
            "/admin;x",
            "*",
            "/h?x=/../",
            "/ADMIN/x/",
            "/admin%3Ax?_method=DELETE",
            "/admin/%253A",
            "/%C5%BF%FF"
        ])
        .prop_map(|p| p.as_bytes().to_vec()),
        bytes(256),
    ]);
    let header = (header_name(), bytes(65_536), prop::option::weighted(0.5, 0usize..4));
    (method, path, proptest::collection::vec(header, 0..200), 0u8..4, proptest::collection::vec(event(), 0..12))
        .prop_map(|(method, path, headers, client, events)| Request { method, path, headers, client, events })
}

/// Valid configurations for a build, with their variations, or broken ones.
fn config(redis: bool) -> impl Strategy<Value = Vec<u8>> {
    let transport = if redis {
        json!({"redis": {"cluster": "redis", "timeout_ms": 200}})
    } else {
        json!({"companion": {"cluster": "companion", "api_key": "k"}})
    };
    let valid = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), 0usize..3).prop_map(
        move |(rules, cookie, throttle, allow_cached, refresh, cache)| {
            let mut c = transport.clone();
            if rules {
                c["exclude"] = json!([{"path": "/healthz"}]);
                c["cors_preflight"] = json!("pass");
                c["required_scopes"] = json!([{"prefix": "/admin", "methods": ["GET"], "scopes": ["admin"]}]);
            }
            if cookie {
                c["cookie"] = json!("session");
            }
            if throttle {
                c["throttle"] = json!({"max_failures": 3, "window_ms": 1000, "max_clients": 2});
            }
            if allow_cached {
                c["failure_mode"] = json!("allow_cached");
            }
            if refresh {
                c["refresh_on_use"] = json!({"ttl": 60, "min_interval_ms": 0});
            }
            c["cache"] = [json!({"max_entries": 0}), json!({"max_entries": 2, "max_negative_entries": 1}), json!({})]
                [cache]
                .clone();
            c["revocation_poll_ms"] = json!(100);
            serde_json::to_vec(&c).unwrap()
        },
    );
    prop_oneof![
        8 => valid,
        1 => bytes(256),
        1 => prop::sample::select(vec![
            r#"{"companion": {"cluster": "c", "api_key": "k"}, "prefixx": "mt"}"#,
            r#"{"redis": {"cluster": "redis"}, "cache": {"max_entries": -1}}"#,
            r#"{"companion": {"cluster": "c", "api_key": "k"}, "throttle": {"max_failures": 0}}"#,
            r#"{"companion": {"cluster": "c", "api_key": "k"}, "exclude": [{"path": "no-slash"}]}"#,
            r#"{"companion": {"cluster": "c", "api_key": "k"}, "exclude": [{"methods": ["OPTIONS"]}]}"#,
            r#"{"companion": {"cluster": "c", "api_key": "k"}, "required_scopes": [{"path": "/%FF", "scopes": ["a"]}]}"#,
            "null", "[]", "{}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

fn http_answer(a: &Answer) -> Option<(host::RawHeaders, Vec<u8>)> {
    let ok = |body: serde_json::Value| {
        Some((vec![(b":status".to_vec(), b"200".to_vec())], serde_json::to_vec(&body).unwrap()))
    };
    match a {
        Answer::Nothing => None,
        Answer::Garbage { status, headers, body } => {
            let mut h = vec![(b":status".to_vec(), status.clone())];
            h.extend(headers.iter().cloned());
            Some((h, body.clone()))
        }
        Answer::Valid(secs) => {
            let mut body = json!({"active": true, "user": "u-alice", "device": "d-phone", "scopes": ["admin"],
                "id": "i-1", "expires_in": if *secs == 0 { serde_json::Value::Null } else { json!(secs) }});
            if secs % 3 == 1 {
                body["dpop_jkt"] = json!(BOUND_JKT);
            }
            ok(body)
        }
        Answer::Invalid => ok(json!({"active": false})),
        Answer::Feed(reset) => ok(json!({"cursor": "5-1", "digests": ["00"], "reset": reset})),
    }
}

fn redis_answer(a: &Answer) -> Option<Vec<u8>> {
    match a {
        Answer::Nothing => None,
        Answer::Garbage { body, .. } => Some(body.clone()),
        Answer::Valid(secs) => {
            let mut record =
                json!({"id": "i-1", "user": "u-alice", "device": "d-phone", "created": 1, "scopes": ["admin"]});
            if secs % 3 == 1 {
                record["cnf"] = json!({"jkt": BOUND_JKT});
            }
            let record = record.to_string();
            let pttl: i64 = if *secs == 0 { -1 } else { i64::from(*secs) * 1000 };
            Some(format!("*2\r\n${}\r\n{record}\r\n:{pttl}\r\n", record.len()).into_bytes())
        }
        Answer::Invalid => Some(b"*1\r\n:-2\r\n".to_vec()),
        Answer::Feed(reset) => {
            Some(format!("*3\r\n$3\r\n5-1\r\n:{}\r\n*1\r\n$2\r\n00\r\n", u8::from(*reset)).into_bytes())
        }
    }
}

fn deliver(host: &mut TestHost, call: &PendingCall, answer: &Answer) -> Result<(), String> {
    if call.redis {
        host.try_answer_redis(call.token, redis_answer(answer))
    } else {
        host.try_answer_http(call.context, call.token, http_answer(answer))
    }
}

fn is_identity(name: &[u8]) -> bool {
    let folded: Vec<u8> = name.iter().map(|b| if *b == b'_' { b'-' } else { b.to_ascii_lowercase() }).collect();
    folded.starts_with(b"x-multitokens-")
}

/// One build loaded with a configuration (`None`: it refused it), its upstreams unreachable: the
/// cases answer every call themselves.
fn load(redis: bool, config: &[u8]) -> Result<Option<TestHost>, TestCaseError> {
    let wasm = wasm_path(if redis { "multitokens_filter_redis.wasm" } else { "multitokens_filter.wasm" });
    let unused = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut upstreams = Upstreams::default();
    upstreams.http.insert("companion".into(), unused);
    upstreams.redis.insert("redis".into(), unused);
    TestHost::try_load(&wasm, config, upstreams).map_err(TestCaseError::fail)
}

/// Runs a property over `default_cases` cases (`MULTITOKENS_FUZZ_CASES` overrides).
fn check<S: Strategy>(default_cases: u32, strategy: S, case: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let cases = std::env::var("MULTITOKENS_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&strategy, case) {
        panic!("{e}");
    }
}

/// `n` well-formed tokens of different users.
fn tokens(n: usize) -> Vec<String> {
    (0..n).map(|i| multitokens_core::token::generate("mt", &format!("user{i}")).unwrap()).collect()
}

/// A DPoP proof's header (an EC key, RFC 9449's example) over hostile claims and signature.
fn hostile_proof(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = br#"{"typ":"dpop+jwt","alg":"ES256","jwk":{"kty":"EC","crv":"P-256","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}}"#;
    let (claims, signature) = bytes.split_at(bytes.len() / 2);
    format!("{}.{}.{}", b64(header), b64(claims), b64(signature)).into_bytes()
}

/// The thumbprint some answers bind their token to (RFC 9449's example key: no proof the fuzzer
/// sends is signed by it).
const BOUND_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

fn run_case(redis: bool, config: &[u8], requests: &[Request], tokens: &[String]) -> Result<(), TestCaseError> {
    let Some(mut host) = load(redis, config)? else { return Ok(()) }; // refused: fine, as long as it did not trap
    let mut calls: Vec<PendingCall> = Vec::new();
    host.try_tick().map_err(TestCaseError::fail)?;
    calls.extend(host.take_calls());
    for r in requests {
        let mut headers = Vec::new();
        if let Some(m) = &r.method {
            headers.push((b":method".to_vec(), m.clone()));
        }
        if let Some(p) = &r.path {
            headers.push((b":path".to_vec(), p.clone()));
        }
        for (name, value, token) in &r.headers {
            let value = match (token, is_identity(name)) {
                (_, true) => [SPOOF, value.as_slice()].concat(),
                (Some(i), false) if name == b"cookie" => format!("session={}", tokens[*i]).into_bytes(),
                // a DPoP proof's shape around hostile bytes: parsed as far as a signature check
                (Some(_), false) if name == b"dpop" => hostile_proof(value),
                (Some(i), false) if i % 2 == 1 => format!("DPoP {}", tokens[*i]).into_bytes(),
                (Some(i), false) => format!("Bearer {}", tokens[*i]).into_bytes(),
                (None, false) => value.clone(),
            };
            headers.push((name.clone(), value));
        }
        let ctx = host
            .try_begin(headers, &format!("198.51.100.{}:{}", r.client, 1000 + r.client as u32))
            .map_err(TestCaseError::fail)?;
        calls.extend(host.take_calls());
        let mut reset = false;
        for event in &r.events {
            match event {
                Event::Tick => host.try_tick().map_err(TestCaseError::fail)?,
                Event::Answer(i, a) if !calls.is_empty() => {
                    let call = calls.remove(i % calls.len());
                    deliver(&mut host, &call, a).map_err(TestCaseError::fail)?;
                }
                Event::Answer(..) => {}
                Event::Stray(token, a) => {
                    // (only the Redis-callout build exports the Redis callback)
                    let call = PendingCall {
                        token: token | 0x4000_0000,
                        context: [ctx, 1, 777][*token as usize % 3],
                        redis: redis && token % 2 == 0,
                    };
                    deliver(&mut host, &call, a).map_err(TestCaseError::fail)?;
                }
                Event::Reset => {
                    if !reset && host.decision() == Decision::Pending {
                        host.try_end(ctx).map_err(TestCaseError::fail)?;
                        reset = true;
                    }
                }
            }
            calls.extend(host.take_calls());
            prop_assert!(!host.replied_and_resumed(), "replied and resumed the same request");
        }
        if reset {
            continue; // its calls stay under way: their answers arrive after the reset
        }
        // the rest of its calls time out, one by one, until it is decided
        while host.decision() == Decision::Pending && !calls.is_empty() {
            let call = calls.remove(0);
            deliver(&mut host, &call, &Answer::Nothing).map_err(TestCaseError::fail)?;
            calls.extend(host.take_calls());
        }
        match host.decision() {
            Decision::Replied(status) => prop_assert!([400, 401, 403, 429, 503].contains(&status), "status {}", status),
            Decision::Forwarded(headers) => {
                for (name, value) in &headers {
                    if is_identity(name) {
                        prop_assert!(
                            !value.starts_with(SPOOF),
                            "a client's identity header was forwarded: {:?}",
                            String::from_utf8_lossy(name)
                        );
                        prop_assert!(
                            name.iter().all(|b| *b != b'_' && !b.is_ascii_uppercase()),
                            "an identity alias was forwarded"
                        );
                    }
                }
            }
            Decision::Pending => prop_assert!(false, "the request was left paused with no call under way"),
        }
        prop_assert!(!host.replied_and_resumed());
        host.try_end(ctx).map_err(TestCaseError::fail)?;
    }
    // what is still under way answers late, after its request is gone
    for call in std::mem::take(&mut calls) {
        deliver(&mut host, &call, &Answer::Valid(60)).map_err(TestCaseError::fail)?;
    }
    host.try_tick().map_err(TestCaseError::fail)?;
    Ok(())
}

/// One step of a run with requests in flight together.
#[derive(Clone, Debug)]
enum Act {
    /// A request with one of the few tokens (so requests share lookups).
    Begin(usize),
    /// A request in flight ends (its client goes away, or it finished).
    End(usize),
    /// One of the calls under way is answered.
    Answer(usize, Answer),
    Tick,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        5 => (0usize..3).prop_map(Act::Begin),
        2 => any::<usize>().prop_map(Act::End),
        4 => (any::<usize>(), answer()).prop_map(|(i, a)| Act::Answer(i, a)),
        1 => Just(Act::Tick),
    ]
}

/// Requests in flight together with the same tokens, answered, ended and ticked in any order:
/// the VM never traps, never both replies to and resumes a request, and once every call has been
/// answered no request still waits (a request that followed another's lookup gets its answer,
/// or looks up again when the other went away). A forwarded request carries the answer's user.
fn run_concurrent_case(redis: bool, config: &[u8], acts: &[Act], tokens: &[String]) -> Result<(), TestCaseError> {
    let Some(mut host) = load(redis, config)? else { return Ok(()) };
    let mut calls: Vec<PendingCall> = Vec::new();
    let mut live: Vec<u32> = Vec::new();
    host.try_tick().map_err(TestCaseError::fail)?;
    calls.extend(host.take_calls());
    let request = |t: &str| {
        vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/api".to_vec()),
            (b"authorization".to_vec(), format!("Bearer {t}").into_bytes()),
        ]
    };
    for a in acts {
        match a {
            Act::Begin(t) => {
                live.push(host.try_begin(request(&tokens[*t]), "198.51.100.1:1000").map_err(TestCaseError::fail)?)
            }
            Act::End(i) if !live.is_empty() => {
                let ctx = live.remove(i % live.len());
                host.try_end(ctx).map_err(TestCaseError::fail)?;
            }
            Act::Answer(i, answer) if !calls.is_empty() => {
                let call = calls.remove(i % calls.len());
                deliver(&mut host, &call, answer).map_err(TestCaseError::fail)?;
            }
            Act::Tick => host.try_tick().map_err(TestCaseError::fail)?,
            _ => {}
        }
        calls.extend(host.take_calls());
        prop_assert!(!host.replied_and_resumed(), "replied and resumed the same request");
    }
    // every call answers in the end (a valid token, as far as the store knows)
    for _ in 0..64 {
        if calls.is_empty() {
            break;
        }
        for call in std::mem::take(&mut calls) {
            deliver(&mut host, &call, &Answer::Valid(60)).map_err(TestCaseError::fail)?;
        }
        calls.extend(host.take_calls());
    }
    prop_assert!(calls.is_empty(), "callouts without end");
    for ctx in live {
        match host.decision_of(ctx) {
            Decision::Pending => prop_assert!(false, "request {} still waits with every call answered", ctx),
            Decision::Forwarded(headers) => {
                let user = headers.iter().find(|(k, _)| k == b"x-multitokens-user").map(|(_, v)| v.clone());
                prop_assert_eq!(user, Some(b"u-alice".to_vec()));
            }
            Decision::Replied(status) => prop_assert!([401, 403, 429, 503].contains(&status), "status {}", status),
        }
        host.try_end(ctx).map_err(TestCaseError::fail)?;
    }
    prop_assert!(!host.replied_and_resumed());
    Ok(())
}

fn fuzz_concurrent(redis: bool) {
    let tokens = tokens(3);
    // small cases, so more of them: a lookup's followers outliving it takes a few acts to arise
    check(120, (config(redis), proptest::collection::vec(act(), 1..40)), |(config, acts)| {
        run_concurrent_case(redis, &config, &acts, &tokens)
    });
}

#[test]
fn requests_in_flight_together_share_lookups_and_none_is_left_waiting_in_the_stock_build() {
    fuzz_concurrent(false);
}

#[test]
fn requests_in_flight_together_share_lookups_and_none_is_left_waiting_in_the_redis_callout_build() {
    fuzz_concurrent(true);
}

fn fuzz(redis: bool) {
    let tokens = tokens(4);
    check(40, (config(redis), proptest::collection::vec(request(), 1..5)), |(config, requests)| {
        run_case(redis, &config, &requests, &tokens)
    });
}

#[test]
fn the_stock_build_never_traps_and_never_forwards_a_spoofed_identity() {
    fuzz(false);
}

#[test]
fn the_redis_callout_build_never_traps_and_never_forwards_a_spoofed_identity() {
    fuzz(true);
}
