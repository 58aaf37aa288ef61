//! Roles and key rotation, an Authlib resource server, the metrics as Prometheus reads them, and
//! log out all other devices by the token id.

use super::*;

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
