//! The HTTP API, called in process through `app(state).oneshot(..)` against a real redis-server;
//! one test keeps the real socket (the `serve` binary).

use crate::support::{CompanionServer, RedisServer};
use crate::{policy, store_at};
use axum::body::Body;
use axum::http::{HeaderMap, Request};
use multitokens::api::{self, AppState};
use multitokens::roles::ApiKeys;
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

const ADMIN: &str = "admin-key-for-tests-0123456789";
const INTERNAL: &str = "internal-key-for-tests-0123456789";
/// The admin key being rotated out: still accepted.
const OLD_ADMIN: &str = "old-admin-key-for-tests-0123456789";
/// An RFC 7662 introspection client.
const RESOURCE_SERVER: &str = "orders-api";
const RESOURCE_SECRET: &str = "orders-api-secret-0123456789";

/// The API's router over a store on real Redis; every request goes through `oneshot`.
struct Api {
    app: axum::Router,
    state: AppState,
    runtime: tokio::runtime::Runtime,
}

/// What the API answered.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Api {
    fn start(redis_url: &str) -> Api {
        Api::with_internal_key(redis_url, Some(INTERNAL))
    }

    fn with_internal_key(redis_url: &str, internal_key: Option<&str>) -> Api {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut p = policy();
        p.max_tokens_per_user = Some(5);
        let store = runtime.block_on(async { store_at(redis_url, p, None) });
        let keys = ApiKeys::new(
            vec![ADMIN.into(), OLD_ADMIN.into()],
            vec![format!("{RESOURCE_SERVER}:{RESOURCE_SECRET}")],
            internal_key.map(|k| vec![k.to_string()]).unwrap_or_default(),
        )
        .unwrap();
        let state =
            AppState::new(Arc::new(store), keys, std::time::Duration::from_millis(300), multitokens::edges::MAX_EDGES);
        Api { app: api::app(state.clone()), state, runtime }
    }

    /// One request: method, path with query, headers and raw body.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::from(body)).unwrap();
        self.runtime.block_on(async {
            let response = self.app.clone().oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            Reply { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
        })
    }

    /// A JSON call: (status, body, `WWW-Authenticate`).
    fn call(&self, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> (u16, Value, Option<String>) {
        let mut headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let bytes = match body {
            Some(b) => {
                headers.push(("content-type", "application/json"));
                b.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let r = self.request(method, path, &headers, bytes);
        let challenge = r.headers.get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_string);
        (r.status, r.body, challenge)
    }

    /// Starts the feed's followers, waits until they hold the feed's tail, and returns the tail.
    fn follow_feed(&self) -> String {
        let _guard = self.runtime.enter();
        self.state.spawn_followers(std::time::Duration::from_millis(500));
        let internal = format!("Bearer {INTERNAL}");
        let tail = self.request("GET", "/v1/internal/revocations", &[("authorization", &internal)], Vec::new()).body
            ["cursor"]
            .as_str()
            .unwrap()
            .to_string();
        std::thread::sleep(std::time::Duration::from_millis(800));
        tail
    }

    /// `count` edges named `<name>-<i>` long-polling from `cursor` until `stop`, each page applied
    /// at once (its next poll acknowledges it); returns how many pages carried digests.
    fn long_poll_edges(
        &self,
        name: &str,
        count: usize,
        cursor: &str,
        stop: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Arc<std::sync::atomic::AtomicU64> {
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for edge in 0..count {
            let (app, received, stop) = (self.app.clone(), received.clone(), stop.clone());
            let (mut cursor, edge) = (cursor.to_string(), format!("{name}-{edge}"));
            self.runtime.spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = format!("/v1/internal/revocations?after={cursor}&edge={edge}&wait_ms=3000");
                    let request = Request::builder()
                        .uri(path)
                        .header("authorization", format!("Bearer {INTERNAL}"))
                        .body(Body::empty())
                        .unwrap();
                    let response = app.clone().oneshot(request).await.unwrap();
                    let page: Value =
                        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap())
                            .unwrap();
                    if !page["digests"].as_array().unwrap().is_empty() {
                        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    cursor = page["cursor"].as_str().unwrap().to_string();
                }
            });
        }
        received
    }

    /// An admin POST with any content type and body.
    fn raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self.request(
            "POST",
            path,
            &[("authorization", &format!("Bearer {ADMIN}")), ("content-type", content_type)],
            body,
        );
        (r.status, r.body)
    }
}

fn admin() -> Option<&'static str> {
    Some("Bearer admin-key-for-tests-0123456789")
}

#[test]
fn admin_endpoints_issue_list_and_revoke() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let (status, a, _) =
        api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "alice", "device": "laptop", "scopes": ["read"]})));
    assert_eq!(status, 201);
    assert_eq!(a["first"], true);
    let keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["device", "expires_in", "first", "id", "token", "ttl_reset", "user"]);
    let (_, b, _) =
        api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "alice", "device": "phone", "ttl": "never"})));
    assert_eq!((b["first"].clone(), b["expires_in"].clone()), (json!(false), Value::Null));
    assert_eq!(b["ttl_reset"], 1, "the laptop's lifetime was reset by this login");
    assert_eq!(a["ttl_reset"], 0);

    let (status, list, _) = api.call("GET", "/v1/users/alice/tokens", admin(), None);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let id = a["id"].as_str().unwrap();
    let (status, body, _) = api.call("DELETE", &format!("/v1/users/alice/tokens/{id}"), admin(), None);
    assert_eq!((status, body), (200, json!({"revoked": 1, "edges": {"acknowledged": 0, "pending": 0}})));
    let (status, body, _) = api.call("DELETE", &format!("/v1/users/alice/tokens/{id}"), admin(), None);
    assert_eq!(status, 404);
    assert!(body["detail"].is_string());
    let (status, body, _) = api.call("DELETE", "/v1/users/alice/tokens", admin(), None);
    assert_eq!((status, body), (200, json!({"revoked": 1, "edges": {"acknowledged": 0, "pending": 0}})));
}

#[test]
fn admin_key_is_required_and_checked() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let body = Some(json!({"user": "x"}));
    let (status, detail, challenge) = api.call("POST", "/v1/tokens", None, body.clone());
    assert_eq!(status, 401);
    assert_eq!(detail["detail"], "Authentication credentials were not provided.");
    assert!(challenge.unwrap().starts_with("Bearer"));
    let (status, detail, challenge) = api.call("POST", "/v1/tokens", Some("Bearer wrong-key"), body.clone());
    assert_eq!(
        (status, detail["detail"].clone()),
        (401, json!("Invalid credentials: this endpoint needs a key of the admin role (MULTITOKENS_ADMIN_KEY)."))
    );
    assert!(challenge.unwrap().contains("invalid_token"));
    assert_eq!(api.call("GET", "/v1/users/x/tokens", Some("Basic Zm9vOmJhcg=="), None).0, 401);
    // the internal key is not an admin key and vice versa
    assert_eq!(api.call("POST", "/v1/tokens", Some(&format!("Bearer {INTERNAL}")), body).0, 403);
    let lookup = format!("/v1/internal/lookup?tag=00000000&digest={}", "0".repeat(64));
    assert_eq!(api.call("GET", &lookup, admin(), None).0, 403);
}

#[test]
fn self_service_current_and_others() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let issue = |device: &str| {
        api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "bob", "device": device}))).1["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (laptop, phone, tablet) = (issue("laptop"), issue("phone"), issue("tablet"));
    let (status, me, _) = api.call("GET", "/v1/tokens/current", Some(&format!("Token {laptop}")), None);
    assert_eq!((status, me["user"].clone(), me["device"].clone()), (200, json!("bob"), json!("laptop")));
    let (status, body, _) = api.call("DELETE", "/v1/tokens/others", Some(&format!("Bearer {laptop}")), None);
    assert_eq!((status, body), (200, json!({"revoked": 2, "edges": {"acknowledged": 0, "pending": 0}})));
    for t in [&phone, &tablet] {
        let (status, body, challenge) = api.call("GET", "/v1/tokens/current", Some(&format!("Bearer {t}")), None);
        assert_eq!((status, body["detail"].clone()), (401, json!("Invalid token.")));
        assert!(challenge.unwrap().contains("invalid_token"));
    }
    assert_eq!(api.call("DELETE", "/v1/tokens/current", Some(&format!("token {laptop}")), None).0, 200);
    assert_eq!(api.call("GET", "/v1/tokens/current", Some(&format!("Token {laptop}")), None).0, 401);
    assert_eq!(api.call("GET", "/v1/tokens/current", None, None).0, 401);
}

#[test]
fn introspection_per_rfc_7662() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let (_, issued, _) = api.call(
        "POST",
        "/v1/tokens",
        admin(),
        Some(json!({"user": "carol", "device": "tv", "ttl": 600, "scopes": ["a", "b"]})),
    );
    let token = issued["token"].as_str().unwrap();
    let (status, v, _) = api.call("POST", "/v1/introspect", admin(), Some(json!({"token": token})));
    assert_eq!(status, 200);
    assert_eq!(
        (v["active"].clone(), v["sub"].clone(), v["device"].clone(), v["scope"].clone()),
        (json!(true), json!("carol"), json!("tv"), json!("a b"))
    );
    let (iat, exp) = (v["iat"].as_u64().unwrap(), v["exp"].as_u64().unwrap());
    assert!((599..=601).contains(&(exp - iat)));
    let (status, v) =
        api.raw("/v1/introspect", "application/x-www-form-urlencoded", format!("token={token}").into_bytes());
    assert_eq!((status, v["active"].clone()), (200, json!(true)));
    let (status, v) = api.raw("/v1/introspect", "application/x-www-form-urlencoded", b"token=mt_nope".to_vec());
    assert_eq!((status, v), (200, json!({"active": false})));
    assert_eq!(api.raw("/v1/introspect", "application/x-www-form-urlencoded", b"nothing=1".to_vec()).0, 400);
}

#[test]
fn bad_requests_get_json_errors() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    for (body, needle) in [
        (json!({"device": "x"}), "user"),
        (json!({"user": "x", "ttl": "soon"}), "ttl"),
        (json!({"user": "x", "bogus": 1}), "bogus"),
        (json!({"user": "", "device": "x"}), "user"),
        (json!({"user": "x", "scopes": ["has space"]}), "scope"),
    ] {
        let (status, v, _) = api.call("POST", "/v1/tokens", admin(), Some(body));
        assert_eq!(status, 400);
        assert!(v["detail"].as_str().unwrap().contains(needle), "{v}");
    }
    let (status, v) = api.raw("/v1/tokens", "application/json", b"{not json".to_vec());
    assert_eq!(status, 400);
    assert!(v["detail"].is_string());
    let (status, v) = api.raw("/v1/tokens", "application/json", vec![b' '; 64 * 1024]);
    assert_eq!(status, 413);
    assert!(v["detail"].is_string());
    assert_eq!(api.call("GET", "/nope", None, None).0, 404);
    assert_eq!(api.call("PUT", "/v1/tokens", admin(), None).0, 405);
    // the limit answers 409
    for _ in 0..5 {
        assert_eq!(api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "lim"}))).0, 201);
    }
    let (status, v, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "lim"})));
    assert_eq!(status, 409);
    assert!(v["detail"].as_str().unwrap().contains("max_tokens_per_user"));
}

#[test]
fn health_readiness_and_internal_lookup() {
    let mut redis = RedisServer::start();
    let api = Api::start(&redis.url());
    assert_eq!(api.call("GET", "/healthz", None, None).0, 200);
    assert_eq!(api.call("GET", "/readyz", None, None).0, 200);
    let (_, issued, _) =
        api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "dora", "device": "d", "ttl": 1000})));
    let token = issued["token"].as_str().unwrap();
    let store = api.runtime.block_on(async { store_at(&redis.url(), policy(), None) });
    let (tag, digest) = store.digest_of(token).unwrap();
    let internal = format!("Bearer {INTERNAL}");
    std::thread::sleep(std::time::Duration::from_millis(1600));
    let lookup = format!("/v1/internal/lookup?tag={}&digest={}&refresh_ttl=1000", tag.to_hex(), digest.to_hex());
    let (status, v, _) = api.call("GET", &lookup, Some(&internal), None);
    assert_eq!((status, v["active"].clone(), v["user"].clone()), (200, json!(true), json!("dora")));
    assert!(v["expires_in_ms"].as_u64().unwrap() > 999_000, "refreshed: {v}");
    // the internal key cannot ask for more than a login's token_ttl
    let greedy = format!("/v1/internal/lookup?tag={}&digest={}&refresh_ttl=999999999", tag.to_hex(), digest.to_hex());
    let (_, v, _) = api.call("GET", &greedy, Some(&internal), None);
    assert!(v["expires_in"].as_u64().unwrap() <= 1000, "capped at the issued lifetime and token_ttl: {v}");
    let (status, v, _) = api.call("GET", "/v1/internal/lookup?tag=zz&digest=00", Some(&internal), None);
    assert_eq!(status, 400, "{v}");

    redis.kill();
    let (status, v, _) = api.call("GET", "/readyz", None, None);
    assert_eq!((status, v["detail"].clone()), (503, json!("Redis unreachable.")));
    let (status, v, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "dora"})));
    assert_eq!(status, 503);
    assert!(v["detail"].is_string());
    assert_eq!(api.call("GET", &lookup, Some(&internal), None).0, 503);
    redis.restart();
    let mut ready = false;
    for _ in 0..50 {
        if api.call("GET", "/readyz", None, None).0 == 200 {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ready, "the API recovers when Redis returns");
}

#[test]
fn internal_endpoints_need_their_own_key() {
    let redis = RedisServer::start();
    // no internal key: the filter's endpoints are disabled, the rest works
    let api = Api::with_internal_key(&redis.url(), None);
    for key in [ADMIN, INTERNAL] {
        let (status, body, _) = api.call("GET", "/v1/internal/revocations", Some(&format!("Bearer {key}")), None);
        assert_eq!(status, 403);
        assert!(body["detail"].as_str().unwrap().contains("MULTITOKENS_INTERNAL_KEY"));
    }
    // the admin key cannot double as the internal key
    let out = crate::support::companion(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("MULTITOKENS_REDIS_URL", &redis.url()),
            ("MULTITOKENS_ADMIN_KEY", ADMIN),
            ("MULTITOKENS_INTERNAL_KEY", ADMIN),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("internal_key must differ from admin_key"));
}

#[test]
fn a_wrong_key_is_told_which_key_the_endpoint_needs_and_the_feed_starts_at_0() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let call =
        |path: &str, key: &str| api.request("GET", path, &[("authorization", &format!("Bearer {key}"))], Vec::new());
    let r = call("/v1/internal/revocations", ADMIN);
    assert_eq!(r.status, 403);
    assert_eq!(r.body["detail"], "This endpoint needs the internal role; the key presented has the admin role.");
    let r = call("/v1/users/alice/tokens", INTERNAL);
    assert_eq!(r.status, 403);
    assert_eq!(r.body["detail"], "This endpoint needs the admin role; the key presented has the internal role.");
    for first in ["0", "0-0"] {
        let r = call(&format!("/v1/internal/revocations?after={first}"), INTERNAL);
        assert_eq!(
            (r.status, r.body["cursor"].clone(), r.body["reset"].clone()),
            (200, serde_json::json!("0-0"), serde_json::json!(false)),
            "after={first}"
        );
    }
    // every error is JSON naming what is wrong, query strings included
    for (path, needle) in [
        ("/v1/internal/lookup?tag=00", "digest"),
        ("/v1/internal/lookup?tag=00&digest=11&refresh_ttl=soon", "refresh_ttl"),
        ("/v1/internal/lookup?tag=00&digest=11&extra=1", "extra"),
    ] {
        let r = call(path, INTERNAL);
        assert_eq!(r.status, 400, "{path}");
        let detail = r.body["detail"].as_str().unwrap_or_else(|| panic!("{path}: not JSON: {}", r.body));
        assert!(detail.contains(needle), "{path}: {detail}");
    }
    for (body, needle) in
        [(serde_json::json!({"user": 5}), "user: invalid type"), (serde_json::json!({"user": "a", "ttl": [1]}), "ttl")]
    {
        let (status, answer, _) = api.call("POST", "/v1/tokens", admin(), Some(body.clone()));
        assert_eq!(status, 400, "{body}");
        assert!(answer["detail"].as_str().unwrap().contains(needle), "{body}: {answer}");
    }
    let r = call("/v1/internal/revocations?after=yesterday", INTERNAL);
    assert_eq!(r.status, 400);
    assert!(r.body["detail"].as_str().unwrap().contains("give 0 for the beginning"), "{}", r.body);
}

#[test]
fn the_serve_binary_starts_and_answers() {
    let redis = RedisServer::start();
    let server = CompanionServer::start(&redis.url(), &[("MULTITOKENS_ADMIN_KEY", ADMIN)]);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let response = agent
        .post(format!("{}/v1/tokens", server.base()))
        .header("authorization", &format!("Bearer {ADMIN}"))
        .send_json(json!({"user": "eve"}))
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let ready = agent.get(format!("{}/readyz", server.base())).call().unwrap();
    assert_eq!(ready.status().as_u16(), 200);
}

#[test]
fn ext_authz_check_for_envoys_ext_authz_filter() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let (_, issued, _) =
        api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "fay", "device": "tv", "scopes": ["a", "b"]})));
    let token = issued["token"].as_str().unwrap();
    let bearer = format!("Bearer {token}");
    let ok = api.request("GET", "/v1/ext_authz/api/orders?x=1", &[("authorization", &bearer)], Vec::new());
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["x-multitokens-user"], "fay");
    assert_eq!(ok.headers["x-multitokens-scopes"], "a b");
    let denied = api.request("POST", "/v1/ext_authz/api", &[("authorization", "Bearer mt_nope")], Vec::new());
    assert_eq!(denied.status, 401);
    assert_eq!(api.request("GET", "/v1/ext_authz/api", &[], Vec::new()).status, 401);
    // identity values outside ASCII go out as their UTF-8 bytes (as the filter sets them), never dropped
    let (_, issued, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "José", "device": "Zoë's ☎"})));
    let bearer = format!("Bearer {}", issued["token"].as_str().unwrap());
    let ok = api.request("GET", "/v1/ext_authz/api", &[("authorization", &bearer)], Vec::new());
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["x-multitokens-user"].as_bytes(), "José".as_bytes());
    assert_eq!(ok.headers["x-multitokens-device"].as_bytes(), "Zoë's ☎".as_bytes());
    // user ids and devices with whitespace at either end are refused at issuance
    for body in [json!({"user": " root"}), json!({"user": "root\t"}), json!({"user": "bob", "device": "tv "})] {
        let (status, answer, _) = api.call("POST", "/v1/tokens", admin(), Some(body.clone()));
        assert_eq!(status, 400, "{body}: {answer}");
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.contains("whitespace") || detail.contains("control"), "{answer}");
    }
    // and so are labels that would not show as what they are: a bidi override, a line separator
    for body in [
        json!({"user": "alice\u{202e}nimda"}),
        json!({"user": "bob", "device": "phone\u{2028}2026-12-04 revoked everything"}),
        json!({"user": "bob", "device": "pho\u{200b}ne"}),
    ] {
        let (status, answer, _) = api.call("POST", "/v1/tokens", admin(), Some(body.clone()));
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains("format or line separator"), "{answer}");
    }
}

/// One companion holds one blocking read on Redis and fans it out: 60 long-polling edges get a
/// revocation at once, the revoke returns when all 60 acknowledged it, and Redis sees a handful
/// of commands, not one per edge.
#[test]
fn the_feed_fans_out_to_long_polls_and_the_revoke_waits_for_every_edge() {
    let redis = RedisServer::start();
    fan_out(&redis.url(), Some(&redis));
}

/// The same on a Redis Cluster (the feed on one master, the edge table on another).
#[test]
fn the_feed_fans_out_on_a_redis_cluster_too() {
    let cluster = crate::support::RedisCluster::start();
    fan_out(&cluster.url(), None);
}

fn fan_out(url: &str, single: Option<&RedisServer>) {
    let api = Api::start(url);
    let (_, issued, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "fan"})));
    let token = issued["token"].as_str().unwrap().to_string();
    let tail = api.follow_feed();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let received = api.long_poll_edges("edge", 60, &tail, &stop);
    std::thread::sleep(std::time::Duration::from_millis(500)); // every edge has polled once
    let commands = || -> u64 {
        let Some(redis) = single else { return 0 };
        let info = redis.cli(&["INFO", "stats"]);
        info.lines().find_map(|l| l.strip_prefix("total_commands_processed:")).unwrap().trim().parse().unwrap()
    };
    let before = commands();
    let started = std::time::Instant::now();
    let (status, report, _) = api.call("DELETE", "/v1/tokens/current", Some(&format!("Bearer {token}")), None);
    let took = started.elapsed();
    let used = commands() - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!((status, report["revoked"].clone()), (200, json!(1)));
    assert_eq!(report["edges"], json!({"acknowledged": 60, "pending": 0}), "every edge applied it before the answer");
    assert_eq!(received.load(std::sync::atomic::Ordering::Relaxed), 60);
    assert!(took < std::time::Duration::from_millis(900), "the edges acknowledged in {took:?}");
    assert!(used < 60, "Redis load does not grow with the edges: {used} commands for 60 edges");
}

/// Companions behind one Redis share what they know of the edges: edges long-poll one
/// companion, a revoke through another still waits for them and counts them.
#[test]
fn a_revoke_through_another_companion_waits_for_the_same_edges() {
    let redis = RedisServer::start();
    let (polled, revoking) = (Api::start(&redis.url()), Api::start(&redis.url()));
    let (_, issued, _) = revoking.call("POST", "/v1/tokens", admin(), Some(json!({"user": "shared"})));
    let token = issued["token"].as_str().unwrap().to_string();
    let tail = polled.follow_feed();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    polled.long_poll_edges("other", 3, &tail, &stop);
    std::thread::sleep(std::time::Duration::from_millis(300)); // the edge table reached Redis
    let (status, report, _) = revoking.call("DELETE", "/v1/tokens/current", Some(&format!("Bearer {token}")), None);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!((status, report["edges"].clone()), (200, json!({"acknowledged": 3, "pending": 0})));
}

/// Roles: the introspection client (HTTP Basic, as RFC 7662 clients send it, or its secret as a
/// bearer key) may introspect and nothing else; every admin key of the rotation works; a key of
/// another role gets 403 naming both roles.
#[test]
fn each_role_does_its_own_job_and_keys_rotate() {
    use base64::Engine;
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let token = api.call("POST", "/v1/tokens", Some(&format!("Bearer {OLD_ADMIN}")), Some(json!({"user": "dora"}))).1
        ["token"]
        .as_str()
        .unwrap()
        .to_string();
    let basic = |id: &str, secret: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
    };
    let introspect = |auth: &str| {
        let headers = [("authorization", auth), ("content-type", "application/x-www-form-urlencoded")];
        api.request(
            "POST",
            "/v1/introspect",
            &headers,
            format!("token={token}&token_type_hint=access_token").into_bytes(),
        )
    };
    for auth in
        [basic(RESOURCE_SERVER, RESOURCE_SECRET), format!("Bearer {RESOURCE_SECRET}"), format!("Bearer {ADMIN}")]
    {
        let r = introspect(&auth);
        assert_eq!(
            (r.status, r.body["active"].clone(), r.body["sub"].clone()),
            (200, json!(true), json!("dora")),
            "{auth}"
        );
    }
    // a wrong secret, or an unknown client: 401 with a Basic challenge, as HTTP Basic clients expect
    for auth in
        [basic(RESOURCE_SERVER, "wrong-secret-0123456789"), basic("other-api", RESOURCE_SECRET), "Basic !!".to_string()]
    {
        let r = introspect(&auth);
        assert_eq!(r.status, 401, "{auth}");
        assert!(r
            .headers
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("Basic realm=\"multitokens\""));
    }
    // the introspection client cannot mint, list or revoke; the filter's key cannot introspect
    for (method, path) in
        [("POST", "/v1/tokens"), ("GET", "/v1/users/dora/tokens"), ("DELETE", "/v1/users/dora/tokens")]
    {
        let (status, body, _) =
            api.call(method, path, Some(&basic(RESOURCE_SERVER, RESOURCE_SECRET)), Some(json!({"user": "x"})));
        assert_eq!(status, 401, "{method} {path}: Basic is for introspection only: {body}");
        let (status, body, _) =
            api.call(method, path, Some(&format!("Bearer {RESOURCE_SECRET}")), Some(json!({"user": "x"})));
        assert_eq!(
            (status, body["detail"].clone()),
            (403, json!("This endpoint needs the admin role; the key presented has the introspect role.")),
            "{method} {path}"
        );
    }
    let r = introspect(&format!("Bearer {INTERNAL}"));
    assert_eq!(
        (r.status, r.body["detail"].clone()),
        (403, json!("This endpoint needs the introspect role; the key presented has the internal role."))
    );
    assert_eq!(api.call("GET", "/v1/users/dora/tokens", Some(&format!("Bearer {ADMIN}")), None).0, 200);
}

/// A real RFC 7662 client library (Authlib from PyPI: OAuth2Session with client_secret_basic and
/// its IntrospectTokenValidator) against the real `serve` binary: valid, insufficient scope,
/// revoked, unknown.
#[test]
fn an_authlib_resource_server_introspects_with_http_basic() {
    let redis = RedisServer::start();
    let clients = format!("{RESOURCE_SERVER}:{RESOURCE_SECRET}");
    let server = CompanionServer::start(
        &redis.url(),
        &[("MULTITOKENS_ADMIN_KEY", ADMIN), ("MULTITOKENS_INTROSPECT_CLIENTS", &clients)],
    );
    let base = format!("http://127.0.0.1:{}", server.port);
    let agent = crate::support::http_agent();
    let auth = format!("Bearer {ADMIN}");
    let issue = |scopes: Value| {
        let r = crate::support::http_call(
            &agent,
            "POST",
            &format!("{base}/v1/tokens"),
            &[("authorization", &auth)],
            Some(json!({"user": "erin", "scopes": scopes})),
        );
        r.body["token"].as_str().unwrap().to_string()
    };
    let (reader, other, revoked) =
        (issue(json!(["orders:read"])), issue(json!(["billing"])), issue(json!(["orders:read"])));
    let r = crate::support::http_call(
        &agent,
        "DELETE",
        &format!("{base}/v1/tokens/current"),
        &[("authorization", &format!("Bearer {revoked}"))],
        None,
    );
    assert_eq!(r.status, 200);
    let root = crate::support::repo_root();
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/clients/introspect_authlib.py"))
        .args([
            &format!("{base}/v1/introspect"),
            RESOURCE_SERVER,
            RESOURCE_SECRET,
            &reader,
            &other,
            &revoked,
            "mt_unknown",
        ])
        .env("PYTHONPATH", root.join(".tools/python"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], json!({"active": true, "sub": "erin", "scope": "orders:read"}));
    assert_eq!(lines[1], json!({"active": true, "error": "insufficient_scope"}));
    assert_eq!(lines[2], json!({"active": false, "error": "invalid_token"}));
    assert_eq!(lines[3], json!({"active": false, "error": "invalid_token"}));
    // the same client with a wrong secret is refused by the companion, and Authlib says so
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/clients/introspect_authlib.py"))
        .args([&format!("{base}/v1/introspect"), RESOURCE_SERVER, "not-the-secret-0123456789", &reader])
        .env("PYTHONPATH", root.join(".tools/python"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `/metrics` read by the Prometheus project's own OpenMetrics parser (prometheus-client from
/// PyPI): requests by route template and status, Redis latency per operation, tokens issued and
/// revoked.
#[test]
fn metrics_are_valid_openmetrics_with_requests_redis_latency_and_tokens() {
    let redis = RedisServer::start();
    let server = CompanionServer::start(&redis.url(), &[("MULTITOKENS_ADMIN_KEY", ADMIN)]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let agent = crate::support::http_agent();
    let auth = format!("Bearer {ADMIN}");
    for user in ["a", "b"] {
        let r = crate::support::http_call(
            &agent,
            "POST",
            &format!("{base}/v1/tokens"),
            &[("authorization", &auth)],
            Some(json!({"user": user})),
        );
        assert_eq!(r.status, 201);
    }
    crate::support::http_call(
        &agent,
        "DELETE",
        &format!("{base}/v1/users/a/tokens"),
        &[("authorization", &auth)],
        None,
    );
    crate::support::http_call(
        &agent,
        "GET",
        &format!("{base}/v1/users/secret-user-name/tokens"),
        &[("authorization", "Bearer nope")],
        None,
    );
    let root = crate::support::repo_root();
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/clients/read_metrics.py"))
        .arg(format!("{base}/metrics"))
        .env("PYTHONPATH", root.join(".tools/python"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let samples: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let value = |name: &str, labels: Value| {
        samples
            .iter()
            .find(|s| s["name"] == name && labels.as_object().unwrap().iter().all(|(k, v)| &s["labels"][k] == v))
            .map(|s| s["value"].as_f64().unwrap())
    };
    assert_eq!(
        value(
            "multitokens_companion_http_requests_total",
            json!({"route": "/v1/tokens", "method": "POST", "status": "201"})
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            "multitokens_companion_http_requests_total",
            json!({"route": "/v1/users/{user}/tokens", "status": "401"})
        ),
        Some(1.0)
    );
    assert_eq!(value("multitokens_companion_tokens_issued_total", json!({})), Some(2.0));
    assert_eq!(value("multitokens_companion_tokens_revoked_total", json!({"how": "revoke_all"})), Some(1.0));
    assert!(value("multitokens_companion_redis_duration_seconds_count", json!({"op": "issue"})).unwrap() >= 2.0);
    assert!(!samples.iter().any(|s| s.to_string().contains("secret-user-name")), "route templates only, never a path");
}

/// "Log out all other devices" for an application that knows the current token's public id (from
/// the filter's x-multitokens-token-id), not the token: `DELETE /v1/users/{user}/tokens?except_id=`.
#[test]
fn log_out_other_devices_by_the_current_tokens_id() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let issue =
        |device: &str| api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "gina", "device": device}))).1;
    let (_, phone, _) = (issue("laptop"), issue("phone"), issue("tablet"));
    let id = phone["id"].as_str().unwrap();
    let (status, body, _) = api.call("DELETE", "/v1/users/gina/tokens?except_id=0000000000000000", admin(), None);
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        api.call("GET", "/v1/users/gina/tokens", admin(), None).1.as_array().unwrap().len(),
        3,
        "nothing revoked"
    );
    let (status, body, _) = api.call("DELETE", &format!("/v1/users/gina/tokens?except_id={id}"), admin(), None);
    assert_eq!((status, body["revoked"].clone()), (200, json!(2)));
    let left = api.call("GET", "/v1/users/gina/tokens", admin(), None).1;
    assert_eq!(left.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect::<Vec<_>>(), [id]);
    let (status, me, _) =
        api.call("GET", "/v1/tokens/current", Some(&format!("Bearer {}", phone["token"].as_str().unwrap())), None);
    assert_eq!((status, me["device"].clone()), (200, json!("phone")));
}
