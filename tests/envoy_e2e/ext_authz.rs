//! Envoy's own ext_authz filter against the companion, over HTTP and gRPC.

use super::*;

/// How Envoy's own ext_authz filter asks the companion.
#[derive(Clone, Copy, Debug)]
enum ExtAuthz {
    /// The HTTP service (`/v1/ext_authz`), as docs/deploying.md configures it.
    Http,
    /// gRPC (`envoy.service.auth.v3.Authorization/Check`), HTTP/2 to the companion's port.
    Grpc,
}

/// The Envoy config with the multitokens wasm filter (or an ext_authz filter already there)
/// replaced by Envoy's own ext_authz filter asking the companion over `transport`; the companion's
/// cluster speaks HTTP/2 (cleartext, which its port serves beside HTTP/1.1).
fn with_ext_authz(mut config: EnvoyConfig, transport: ExtAuthz) -> EnvoyConfig {
    let service = match transport {
        ExtAuthz::Grpc => {
            json!({"grpc_service": {"envoy_grpc": {"cluster_name": "multitokens_companion"}, "timeout": "0.5s"}})
        }
        ExtAuthz::Http => json!({"http_service": {
            "server_uri": {"uri": "http://multitokens_companion", "cluster": "multitokens_companion", "timeout": "0.5s"},
            "path_prefix": "/v1/ext_authz",
            "authorization_request": {"allowed_headers": {"patterns": [
                {"exact": "authorization", "ignore_case": true}, {"exact": "dpop", "ignore_case": true},
                {"exact": "x-forwarded-proto", "ignore_case": true}]}},
            "authorization_response": {"allowed_upstream_headers": {"patterns": [{"prefix": "x-multitokens-"}]}}}}),
    };
    fn walk(v: &mut Value, service: &Value) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(filters)) = map.get_mut("http_filters") {
                    for f in filters
                        .iter_mut()
                        .filter(|f| f["name"] == "multitokens" || f["name"] == "envoy.filters.http.ext_authz")
                    {
                        let mut typed = json!({
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                            "transport_api_version": "V3",
                            "failure_mode_allow": false});
                        typed.as_object_mut().unwrap().extend(service.as_object().unwrap().clone());
                        *f = json!({"name": "envoy.filters.http.ext_authz", "typed_config": typed});
                    }
                }
                if map.get("name").and_then(Value::as_str) == Some("multitokens_companion")
                    && map.contains_key("load_assignment")
                {
                    map.insert(
                        "typed_extension_protocol_options".into(),
                        json!({
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}}}}),
                    );
                }
                map.values_mut().for_each(|v| walk(v, service));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, service)),
            _ => {}
        }
    }
    walk(&mut config.0, &service);
    config
}

/// One decision, two transports: the same requests through Envoy's ext_authz over HTTP and over
/// gRPC get the same answers, and the upstream receives the same headers (identity set, the
/// client's own values replaced, the credential removed).
#[test]
fn http_and_grpc_ext_authz_give_the_upstream_the_same_request() {
    let s = Stack::start_with(|_| {}, |c| with_ext_authz(c, ExtAuthz::Grpc));
    let (http_envoy, http_port) = {
        let (port, admin_port) = (free_port(false), free_port(false));
        let config = with_ext_authz(s.config.clone(), ExtAuthz::Http)
            .move_port(s.port, port)
            .move_port(s.admin_port, admin_port);
        (Envoy::start(&config.to_yaml(), port, 2), port)
    };
    let alice = bearer(&s.issue("alice", &["--device", "laptop", "--scope", "read", "--scope", "orders:write"]));
    let revoked = s.issue("bob", &["--device", "phone"]);
    assert_eq!(s.revoke_at_companion(&revoked).status, 200);
    let revoked = bearer(&revoked);
    let spoofed =
        [("x-multitokens-user", "root"), ("x-multitokens-scopes", "admin"), ("x-multitokens-credential", "cookie")];
    let cases: Vec<Vec<(&str, &str)>> = vec![
        [vec![("authorization", alice.as_str())], spoofed.to_vec()].concat(),
        vec![],
        vec![("authorization", "Bearer")],
        vec![("authorization", "Bearer mt_not-a-token")],
        vec![("authorization", revoked.as_str())],
        vec![("authorization", "Basic dXNlcjpwdw==")],
    ];
    for headers in &cases {
        let through = |port: u16| {
            let r = support::http_call(&s.agent, "GET", &format!("http://127.0.0.1:{port}/api/headers"), headers, None);
            (r.status, r.body, r.challenge)
        };
        let (grpc, http) = (through(s.port), through(http_port));
        assert_eq!(grpc, http, "gRPC and HTTP ext_authz disagree on {headers:?}");
    }
    let r = s.request("GET", "/api/headers", &cases[0], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["x-multitokens-user"], json!(["alice"]), "{}", r.body);
    assert_eq!(r.body["x-multitokens-scopes"], json!(["read orders:write"]));
    assert_eq!(r.body["x-multitokens-credential"], json!([]), "the client's own value removed");
    assert_eq!(r.body["authorization"], json!([]), "the credential never reaches the upstream");
    assert_eq!(s.request("GET", "/api/headers", &cases[4], None).status, 401);
    drop(http_envoy);
}

/// Teams that cannot run wasm: Envoy's gRPC ext_authz against the companion gives the same
/// decision as the filter: identity headers upstream (client values replaced, the credential
/// removed), DRF's 401 bodies, a revocation refused at once.
#[test]
fn envoys_grpc_ext_authz_gets_the_filters_decision_from_the_companion() {
    let s = Stack::start_with(|_| {}, |c| with_ext_authz(c, ExtAuthz::Grpc));
    let alice = s.issue("alice", &["--device", "laptop", "--scope", "read"]);
    let r =
        s.request("GET", "/api/headers", &[("authorization", &bearer(&alice)), ("x-multitokens-user", "root")], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["x-multitokens-user"], json!(["alice"]), "{}", r.body);
    assert_eq!(r.body["x-multitokens-device"], json!(["laptop"]));
    assert_eq!(r.body["x-multitokens-scopes"], json!(["read"]));
    let r = s.get("/api/whoami", None);
    assert_eq!((r.status, r.body["detail"].clone()), (401, json!("Authentication credentials were not provided.")));
    assert!(r.challenge.unwrap().starts_with("Bearer realm="));
    let r = s.get("/api/whoami", Some(&bearer(&alice[1..])));
    assert_eq!((r.status, r.body["detail"].clone()), (401, json!("Invalid token.")));
    assert_eq!(s.revoke_at_companion(&alice).status, 200);
    let r = s.get("/api/whoami", Some(&bearer(&alice)));
    assert_eq!((r.status, r.body["detail"].clone()), (401, json!("Invalid token.")));
    // it was Envoy's ext_authz asking over gRPC, not the wasm filter
    assert!(!s.config.to_yaml().contains("multitokens_filter.wasm"));
    let metrics = support::companion_metrics(s.companion_port);
    let checks = metrics
        .lines()
        .filter(|l| {
            l.starts_with(
                "multitokens_companion_http_requests_total{route=\"/envoy.service.auth.v3.Authorization/Check\"",
            )
        })
        .count();
    assert!(checks >= 1, "no gRPC Check reached the companion:\n{metrics}");
    let stats = s.stats("ext_authz");
    assert!(stats.lines().any(|l| l.contains("ext_authz.ok: ") && !l.ends_with(": 0")), "{stats}");
}

/// DPoP-bound tokens through both transports: the proof is checked as the filter checks it.
#[test]
fn ext_authz_checks_dpop_proofs_over_both_transports() {
    let dir = tempfile::tempdir().unwrap();
    for transport in [ExtAuthz::Grpc, ExtAuthz::Http] {
        let s = Stack::start_with(|_| {}, |c| with_ext_authz(c, transport));
        let keyfile = dir.path().join(format!("{transport:?}.json"));
        let jkt = super::dpop::client(&["key", "ES256", keyfile.to_str().unwrap()]);
        let user = format!("ext-dpop-{transport:?}");
        let token = super::dpop::issue_bound(&s, &user, &jkt);
        let other = super::dpop::issue_bound(&s, &user, &jkt);
        let url = format!("http://127.0.0.1:{}/api/whoami", s.port);
        let proofs: Value =
            serde_json::from_str(&super::dpop::client(&["proofs", keyfile.to_str().unwrap(), &url, &token, &other]))
                .unwrap();
        let proof = |name: &str| proofs[name].as_str().unwrap().to_string();
        let auth = format!("DPoP {token}");
        let send = |headers: &[(&str, &str)]| s.request("GET", "/api/whoami", headers, None);
        let r = send(&[("authorization", &auth), ("dpop", &proof("valid_0"))]);
        assert_eq!((r.status, r.body["user"].clone()), (200, json!(user)), "{transport:?}: {}", r.body);
        for (headers, error, why) in [
            (vec![("authorization", auth.clone()), ("dpop", proof("valid_0"))], "invalid_dpop_proof", "replayed"),
            (vec![("authorization", auth.clone()), ("dpop", proof("wrong_key"))], "invalid_dpop_proof", "another key"),
            (vec![("authorization", auth.clone()), ("dpop", proof("wrong_htu"))], "invalid_dpop_proof", "another URI"),
            (vec![("authorization", auth.clone())], "invalid_dpop_proof", "no proof"),
            (vec![("authorization", bearer(&token))], "invalid_token", "as Bearer"),
        ] {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = send(&headers);
            let challenge = r.challenge.clone().unwrap_or_default();
            assert_eq!(r.status, 401, "{transport:?}: {why}: {}", r.body);
            assert!(challenge.starts_with("DPoP ") && challenge.contains(error), "{transport:?}: {why}: {challenge}");
        }
    }
}

/// With `dpop_require_nonce`, both transports answer a proof without a current nonce with
/// `use_dpop_nonce` and a `DPoP-Nonce`, and take a proof made with it.
#[test]
fn ext_authz_requires_server_nonces_when_set() {
    let dir = tempfile::tempdir().unwrap();
    for transport in [ExtAuthz::Grpc, ExtAuthz::Http] {
        let s = Stack::start_full(
            Store::Single(RedisServer::start()),
            vec![("MULTITOKENS_DPOP_REQUIRE_NONCE", "true".to_string())],
            |_| {},
            |c| with_ext_authz(c, transport),
        );
        let keyfile = dir.path().join(format!("{transport:?}-nonce.json"));
        let keyfile = keyfile.to_str().unwrap();
        let jkt = super::dpop::client(&["key", "Ed25519", keyfile]);
        let token = super::dpop::issue_bound(&s, &format!("nonce-{transport:?}"), &jkt);
        let url = format!("http://127.0.0.1:{}/api/whoami", s.port);
        let auth = format!("DPoP {token}");
        let proofs: Value =
            serde_json::from_str(&super::dpop::client(&["proofs", keyfile, &url, &token, "other"])).unwrap();
        let r = s.request(
            "GET",
            "/api/whoami",
            &[("authorization", &auth), ("dpop", proofs["valid_0"].as_str().unwrap())],
            None,
        );
        assert_eq!(r.status, 401, "{transport:?}: {}", r.body);
        assert!(r.challenge.clone().unwrap_or_default().contains("use_dpop_nonce"), "{transport:?}: {:?}", r.challenge);
        let nonce = r.dpop_nonce.clone().unwrap_or_else(|| panic!("{transport:?}: no DPoP-Nonce"));
        let proof = super::dpop::client(&["proof", keyfile, &url, &token, &nonce]);
        let r = s.request("GET", "/api/whoami", &[("authorization", &auth), ("dpop", &proof)], None);
        assert_eq!((r.status, r.body["user"].clone()), (200, json!(format!("nonce-{transport:?}"))), "{}", r.body);
    }
}
