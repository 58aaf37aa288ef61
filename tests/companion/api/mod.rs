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

mod clients;
mod lookups;
mod serving;

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
fn internal_activity_is_written_for_live_tokens_only_and_malformed_batches_are_refused() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let (_, issued, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "eve", "device": "tablet"})));
    let token = issued["token"].as_str().unwrap();
    let store = api.runtime.block_on(async { store_at(&redis.url(), policy(), None) });
    let (tag, digest) = store.digest_of(token).unwrap();
    let internal = format!("Bearer {INTERNAL}");
    let report = |seen: u64, address: &str, agent: &str| json!({"tag": tag.to_hex(), "digest": digest.to_hex(), "seen_at_ms": seen, "address": address, "user_agent": agent});
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let path = "/v1/internal/activity";
    // only the internal key writes activity
    for key in [None, Some(format!("Bearer {ADMIN}"))] {
        let (status, _, _) =
            api.call("POST", path, key.as_deref(), Some(json!({"reports": [report(now, "192.0.2.1", "x")]})));
        assert!(status == 401 || status == 403, "{key:?}: {status}");
    }
    let unknown = json!({"tag": tag.to_hex(), "digest": "ab".repeat(32), "seen_at_ms": now});
    let (status, v, _) =
        api.call("POST", path, Some(&internal), Some(json!({"reports": [report(now, "192.0.2.1", "app/1"), unknown]})));
    assert_eq!((status, v["recorded"].clone()), (200, json!(1)), "no activity for a token that is not live: {v}");
    // an older report does not overwrite a newer one
    let (_, v, _) =
        api.call("POST", path, Some(&internal), Some(json!({"reports": [report(now - 1000, "192.0.2.2", "old/0")]})));
    assert_eq!(v["recorded"], 0, "{v}");
    let (_, list, _) = api.call("GET", "/v1/users/eve/tokens", admin(), None);
    let t = &list[0];
    assert_eq!((t["last_address"].clone(), t["last_user_agent"].clone()), (json!("192.0.2.1"), json!("app/1")), "{t}");
    assert_eq!(t["last_seen"], now / 1000, "{t}");
    // what an edge never sends is refused whole, naming the rule
    let many: Vec<Value> = (0..31).map(|_| report(now, "192.0.2.1", "a")).collect();
    for (bad, what) in [
        (json!({"reports": many}), "31 reports"),
        (json!({"reports": [report(now, "192.0.2.1:80", "a")]}), "an address with a port"),
        (json!({"reports": [report(now, "192.0.2.1", "a\r\nb")]}), "a user agent with control bytes"),
        (json!({"reports": [report(now, "not-an-ip", "a")]}), "no IP address"),
        (json!({"reports": [{"tag": "zz", "digest": digest.to_hex(), "seen_at_ms": now}]}), "a tag not hex"),
        (json!({"reports": [], "extra": 1}), "an unknown field"),
        (json!({"reports": [report(now, "192.0.2.1", "a")], "user": "eve"}), "a user field"),
    ] {
        let (status, v, _) = api.call("POST", path, Some(&internal), Some(bad));
        assert_eq!(status, 400, "{what}: {v}");
        assert!(v["detail"].is_string(), "{what}: {v}");
    }
    let (_, list, _) = api.call("GET", "/v1/users/eve/tokens", admin(), None);
    assert_eq!(list[0]["last_user_agent"], "app/1", "nothing refused was written");
}

#[test]
fn a_token_bound_by_thumbprint_is_listed_and_introspected_as_dpop() {
    let redis = RedisServer::start();
    let api = Api::start(&redis.url());
    let jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"; // RFC 9449's example key
    for (bad, needle) in [(json!("short"), "dpop_jkt"), (json!(5), "dpop_jkt"), (json!(format!("{jkt}=")), "dpop_jkt")]
    {
        let (status, v, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "ivy", "dpop_jkt": bad})));
        assert_eq!(status, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().contains(needle), "{v}");
    }
    let (status, v, _) = api.call(
        "POST",
        "/v1/tokens",
        admin(),
        Some(json!({"user": "ivy", "dpop": {"proof": "a.b.c", "method": "POST", "uri": "https://app/login"}})),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().starts_with("dpop: "), "{v}");
    let (_, issued, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "ivy", "dpop_jkt": jkt})));
    let (_, plain, _) = api.call("POST", "/v1/tokens", admin(), Some(json!({"user": "ivy"})));
    let (_, list, _) = api.call("GET", "/v1/users/ivy/tokens", admin(), None);
    let bound: Vec<Value> = list.as_array().unwrap().iter().map(|t| t["dpop_jkt"].clone()).collect();
    assert_eq!(bound, [json!(jkt), Value::Null]);
    for (token, kind, cnf) in
        [(&issued["token"], "DPoP", json!({"jkt": jkt})), (&plain["token"], "Bearer", Value::Null)]
    {
        let (_, v, _) = api.call("POST", "/v1/introspect", admin(), Some(json!({"token": token})));
        assert_eq!((v["token_type"].clone(), v["cnf"].clone()), (json!(kind), cnf), "{v}");
    }
}
