//! In front of an upstream that reads requests leniently, and the shipped Kubernetes and Istio
//! pieces assembled as a user applies them.

use super::*;

/// The upstream that reads requests as common frameworks do (tests/clients/lenient_upstream.mjs:
/// Express's case-insensitive routes and ignored trailing slash, `%XX` decoded, method overrides),
/// answering which handler ran, as whom, with which headers.
struct LenientUpstream {
    child: Child,
    port: u16,
}

impl LenientUpstream {
    fn start() -> LenientUpstream {
        let port = free_port(false);
        let child = Command::new("node")
            .arg(support::repo_root().join("tests/clients/lenient_upstream.mjs"))
            .arg(port.to_string())
            .env("NODE_TOOLS", support::repo_root().join(".tools/node/node_modules"))
            .stdout(Stdio::null())
            .spawn()
            .expect("node (make tools installs Express into .tools/node)");
        assert!(wait_for_port(port, Duration::from_secs(15)), "the lenient upstream did not start");
        LenientUpstream { child, port }
    }
}

impl Drop for LenientUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request (what an HTTP client library would not send: an OPTIONS with a body);
/// the status and the body.
fn raw_request(port: u16, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Scope rules hold through real Envoy in front of an upstream that folds case, ignores a trailing
/// slash, decodes `%XX` and honours method overrides: no spelling of a protected route reaches
/// its handler without the scope, and the unprotected routes still answer.
#[test]
fn no_spelling_reaches_a_protected_handler_of_a_lenient_upstream_without_its_scope() {
    let upstream = LenientUpstream::start();
    let mut s = Stack::start(|c| {
        c["required_scopes"] = json!([
            {"prefix": "/api/admin/", "scopes": ["admin"]},
            {"path": "/api/billing", "scopes": ["billing"]},
            {"path": "/v1/orders:cancel", "scopes": ["orders"]},
            {"path": "/users/@me/keys", "scopes": ["keys"]},
            {"prefix": "/api/items/", "methods": ["DELETE"], "scopes": ["admin"]}
        ]);
    });
    s.route_app_to(upstream.port);
    let mallory = bearer(&s.issue("mallory", &["--device", "laptop"]));
    let as_mallory = |method: &str, path: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![("authorization", mallory.as_str())];
        headers.extend_from_slice(extra);
        s.request(method, path, &headers, None)
    };
    for (method, path, extra) in [
        ("GET", "/api/admin/stats", None),
        ("GET", "/API/ADMIN/stats", None),
        ("GET", "/Api/admin/stats", None),
        ("GET", "/api/admin/stats/", None),
        ("GET", "/api/billing", None),
        ("GET", "/api/billing/", None),
        ("GET", "/API/billing", None),
        ("POST", "/v1/orders:cancel", None),
        ("POST", "/v1/orders%3Acancel", None),
        ("POST", "/v1/orders%3acancel", None),
        ("GET", "/users/@me/keys", None),
        ("GET", "/users/%40me/keys", None),
        ("DELETE", "/api/items/7", None),
        ("POST", "/api/items/7", Some(("x-http-method-override", "DELETE"))),
        ("POST", "/api/items/7", Some(("x-http-method", "DELETE"))),
        ("POST", "/api/items/7", Some(("x-method-override", "delete"))),
    ] {
        let r = as_mallory(method, path, extra.as_slice());
        assert_eq!(r.status, 403, "{method} {path} {extra:?} reached {}", r.body);
    }
    // what the rules do not protect still answers, as mallory
    for (method, path, handler) in
        [("GET", "/api/items/7", "item"), ("POST", "/api/items/7", "item"), ("GET", "/api/other", "other")]
    {
        let r = as_mallory(method, path, &[]);
        assert_eq!(
            (r.status, r.body["handler"].as_str(), r.body["user"].as_str()),
            (200, Some(handler), Some("mallory")),
            "{method} {path}"
        );
    }
    // with the scope, every spelling reaches the handler
    let admin = bearer(&s.issue("root", &["--device", "laptop", "--scope", "admin"]));
    for path in ["/API/ADMIN/stats", "/api/admin/stats/"] {
        let r = s.request("GET", path, &[("authorization", &admin)], None);
        assert_eq!((r.status, r.body["handler"].as_str()), (200, Some("admin-stats")), "{path}");
    }
    let r = s.request("POST", "/api/items/7", &[("authorization", &admin), ("x-http-method-override", "DELETE")], None);
    assert_eq!(
        (r.status, r.body["handler"].as_str(), r.body["method"].as_str()),
        (200, Some("delete-item"), Some("DELETE"))
    );
    // a path that cannot be matched safely is refused
    assert_eq!(as_mallory("GET", "/api/admin%253Astats", &[]).status, 400);
}

/// Identity headers switched off are still stripped; only a CORS preflight passes without a token;
/// the token never reaches the upstream (excluded routes, header and cookie at once); an unsafe
/// cookie request from another site is refused, and the upstream learns where the credential came from.
#[test]
fn nothing_of_the_clients_own_and_no_token_reaches_a_lenient_upstream() {
    let upstream = LenientUpstream::start();
    let mut s = Stack::start(|c| {
        c["scopes_header"] = Value::Null;
        c["token_id_header"] = Value::Null;
        c["cookie"] = json!("mt_session");
    });
    s.route_app_to(upstream.port);
    let token = s.issue("bob", &["--device", "phone"]);
    let auth = bearer(&token);
    // switched-off names are stripped all the same
    let r = s.request(
        "GET",
        "/api/other",
        &[("authorization", &auth), ("x-multitokens-scopes", "admin"), ("x-multitokens-token-id", "someone-else")],
        None,
    );
    assert_eq!((r.status, r.body["user"].as_str()), (200, Some("bob")));
    assert_eq!((r.body["scopes"].clone(), r.body["token_id"].clone()), (Value::Null, Value::Null), "{}", r.body);
    // OPTIONS is no exclusion: only a preflight passes, without credentials
    assert_eq!(s.request("OPTIONS", "/api/admin/stats", &[], None).status, 401);
    let r = s.request(
        "OPTIONS",
        "/api/admin/stats",
        &[("origin", "https://app.example"), ("access-control-request-method", "POST"), ("authorization", &auth)],
        None,
    );
    assert_eq!(
        (r.status, r.body["handler"].as_str()),
        (200, Some("admin-stats")),
        "the preflight reaches the upstream's CORS layer"
    );
    assert_eq!(
        (r.body["user"].clone(), r.body["authorization"].clone()),
        (Value::Null, Value::Null),
        "anonymous, token stripped"
    );
    let body = r#"{"amount": 100}"#;
    let (status, reply) = raw_request(
        s.port,
        &format!(
            "OPTIONS /api/payments HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 401, "an OPTIONS with a body is no preflight: {reply}");
    // excluded route: neither the header nor the cookie token reaches the upstream
    let cookie = format!("theme=dark; mt_session={token}");
    let r = s.request("GET", "/public/headers", &[("authorization", &auth), ("cookie", &cookie)], None);
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.body["authorization"].clone(), r.body["cookie"].as_str()),
        (Value::Null, Some("theme=dark")),
        "{}",
        r.body
    );
    // the same token in the header and the cookie: both removed
    let r = s.request("GET", "/api/other", &[("authorization", &auth), ("cookie", &cookie)], None);
    assert_eq!((r.status, r.body["credential"].as_str()), (200, Some("header")));
    assert_eq!((r.body["authorization"].clone(), r.body["cookie"].as_str()), (Value::Null, Some("theme=dark")));
    // cookie mode: the upstream is told, and another site's unsafe request is refused
    let r = s.request("GET", "/api/other", &[("cookie", &cookie)], None);
    assert_eq!(
        (r.status, r.body["credential"].as_str(), r.body["cookie"].as_str()),
        (200, Some("cookie"), Some("theme=dark"))
    );
    let r = s.request(
        "POST",
        "/api/other",
        &[("cookie", &cookie), ("sec-fetch-site", "cross-site"), ("origin", "https://evil.example")],
        None,
    );
    assert_eq!((r.status, r.body["detail"].as_str()), (403, Some("CSRF Failed: Origin checking failed.")));
    let r = s.request("POST", "/api/other", &[("cookie", &cookie), ("origin", "https://evil.example")], None);
    assert_eq!(r.status, 403, "a browser without Sec-Fetch-Site, Origin elsewhere");
    let r = s.request("POST", "/api/other", &[("cookie", &cookie), ("sec-fetch-site", "same-origin")], None);
    assert_eq!((r.status, r.body["user"].as_str()), (200, Some("bob")));
}

/// The shipped Kubernetes companion and the shipped Istio WasmPlugin, applied together as the
/// docs say: the companion started with exactly the Deployment's arguments and environment (its
/// Secret created as envoy/kubernetes/kustomization.yaml shows), the filter loaded in real Envoy
/// with the WasmPlugin's `pluginConfig` as Istio hands it over, under the cluster name Istio gives
/// the companion's Service. A token issued through the companion's API is accepted, its scope rule
/// holds, and its revocation is enforced before the revoke returns.
#[test]
fn the_kubernetes_companion_and_the_istio_wasmplugin_as_shipped_authenticate_a_token() {
    let redis = RedisServer::start();
    let upstream = LenientUpstream::start();
    // the Secret, with the keys `kubectl create secret generic multitokens` is documented to get
    let secret: std::collections::HashMap<&str, String> = [
        ("redis-url", redis.url()),
        ("hash-key", TEST_HASH_KEY.to_string()),
        ("signing-key", support::TEST_SIGNING_KEY.to_string()),
        ("admin-key", ADMIN_KEY.to_string()),
        ("internal-key", INTERNAL_KEY.to_string()),
    ]
    .into_iter()
    .collect();
    // the Deployment's companion container: its args, with the listen address on loopback
    let deployment: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(support::repo_root().join("envoy/kubernetes/deployment.yaml")).unwrap(),
    )
    .unwrap();
    let container = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "companion")
        .unwrap();
    let companion_port = free_port(false);
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace("0.0.0.0:8080", &format!("127.0.0.1:{companion_port}")))
        .collect();
    let mut companion = Command::new(support::companion_bin());
    companion
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        if let Some(value) = var["value"].as_str() {
            companion.env(name, value);
        } else {
            let reference = &var["valueFrom"]["secretKeyRef"];
            assert_eq!(reference["name"], "multitokens", "{name}");
            match secret.get(reference["key"].as_str().unwrap()) {
                Some(value) => {
                    companion.env(name, value);
                }
                None => {
                    assert_eq!(reference["optional"], true, "{name} reads a key the documented Secret does not have")
                }
            }
        }
    }
    let mut companion = companion.spawn().unwrap();
    assert!(wait_for_port(companion_port, Duration::from_secs(10)), "the companion as deployed did not start");
    // the WasmPlugin's pluginConfig, with the placeholders replaced by the same Secret's values
    let plugin: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(support::repo_root().join("envoy/istio/wasmplugin.yaml")).unwrap(),
    )
    .unwrap();
    let mut plugin_config = plugin["spec"]["pluginConfig"].clone();
    support::keyed_plugin(&mut plugin_config, &secret["hash-key"], None);
    assert_eq!(plugin_config["companion"]["api_key"], "replace-with-MULTITOKENS_INTERNAL_KEY");
    plugin_config["companion"]["api_key"] = json!(secret["internal-key"]);
    let istio_cluster = plugin_config["companion"]["cluster"].as_str().unwrap().to_string();
    assert_eq!(
        istio_cluster, "outbound|8080||multitokens.multitokens.svc.cluster.local",
        "the name Istio gives the Service's cluster"
    );
    let (port, admin_port) = (free_port(false), free_port(false));
    let config = EnvoyConfig::load("envoy/envoy.yaml")
        .edit_plugin(|c| *c = plugin_config.clone())
        .move_port(10000, port)
        .move_port(19901, admin_port)
        .move_port(18080, companion_port)
        .move_port(18081, upstream.port)
        .use_build(Build::under_test());
    let text = config.to_yaml().replace("multitokens_companion", &istio_cluster);
    let envoy = Envoy::start(&text, port, 2);
    std::thread::sleep(Duration::from_millis(1200));
    let agent = support::http_agent();
    let base = format!("http://127.0.0.1:{companion_port}");
    let issued = support::http_call(
        &agent,
        "POST",
        &format!("{base}/v1/tokens"),
        &[("authorization", &bearer(ADMIN_KEY))],
        Some(json!({"user": "kate", "device": "phone"})),
    );
    assert_eq!(issued.status, 201, "{}", issued.body);
    let token = bearer(issued.body["token"].as_str().unwrap());
    let through = |path: &str| {
        support::http_call(&agent, "GET", &format!("http://127.0.0.1:{port}{path}"), &[("authorization", &token)], None)
    };
    let r = through("/api/other");
    assert_eq!((r.status, r.body["user"].as_str()), (200, Some("kate")), "{}", r.body);
    assert_eq!(through("/ADMIN/users").status, 403, "the WasmPlugin's scope rule, in any case");
    let revoked =
        support::http_call(&agent, "DELETE", &format!("{base}/v1/tokens/current"), &[("authorization", &token)], None);
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.body["edges"]["pending"], 0, "both workers acknowledged: {}", revoked.body);
    assert_eq!(through("/api/other").status, 401, "refused right after the revoke returned");
    drop(envoy);
    let _ = companion.kill();
    let _ = companion.wait();
}
