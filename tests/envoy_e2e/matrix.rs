//! The request matrix through real Envoy: credentials, scopes, exclusions, revocation through the
//! CLI, the store down, `allow_cached`.

use super::*;

#[test]
fn the_request_matrix() {
    let s = Stack::start(|_| {});
    let alice = s.login("alice", "laptop", &[]);

    // missing, empty, wrong scheme: "not provided"
    for headers in [vec![], vec![("authorization", "")], vec![("authorization", "Basic YWxpY2U6cHc=")]] {
        let r = s.request("GET", "/api/whoami", &headers, None);
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.body["detail"], "Authentication credentials were not provided.");
        assert_eq!(r.challenge.as_deref(), Some("Bearer realm=\"multitokens-demo\""));
    }
    // scheme spelling and spacing
    for auth in [
        format!("bearer {alice}"),
        format!("Token {alice}"),
        format!("Bearer    {alice}   "),
        format!("BEARER {alice}"),
    ] {
        let r = s.get("/api/whoami", Some(&auth));
        assert_eq!((r.status, r.body["user"].clone()), (200, json!("alice")), "{auth:?}");
    }
    // malformed tokens: 401 invalid_token, and never a callout
    let misses = s.stat("cache_miss");
    let other_prefix = format!("xx{}", &alice[2..]);
    let mut flipped = alice.clone().into_bytes();
    flipped[20] = if flipped[20] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for bad in [other_prefix.as_str(), &alice[..alice.len() - 1], &alice[1..], flipped.as_str(), "Bearer", "mt_"] {
        let r = s.get("/api/whoami", Some(&bearer(bad)));
        assert_eq!(r.status, 401, "{bad:?}");
        assert_eq!(r.body["detail"], "Invalid token.");
        assert!(r.challenge.unwrap().contains("error=\"invalid_token\""));
    }
    assert_eq!(s.stat("cache_miss"), misses, "malformed tokens caused a callout");
    assert!(s.stat("denied_malformed") >= 6);
    // a 64 KB header: refused (by Envoy's header limit or by the filter), never let in, no crash
    let huge = format!("Bearer {}", "A".repeat(64 * 1024));
    let r = s.get("/api/whoami", Some(&huge));
    assert!(r.status == 401 || r.status == 431, "64 KB header got {}", r.status);
    assert_eq!(s.get("/api/whoami", Some(&bearer(&alice))).status, 200, "Envoy still serves");

    // spoofed identity headers are removed, authenticated or excluded, duplicates included
    let r =
        s.request("GET", "/api/whoami", &[("authorization", &bearer(&alice)), ("x-multitokens-user", "root")], None);
    assert_eq!(r.body["user"], "alice");
    let auth = bearer(&alice);
    let spoofed = [
        ("authorization", auth.as_str()),
        ("x-multitokens-user", "root"),
        ("x-multitokens-user", "admin"),
        ("x-multitokens-scopes", "admin"),
        ("x-multitokens-token-id", "0000"),
        ("x-multitokens-token-id", "1111"),
    ];
    let r = s.request("GET", "/api/headers", &spoofed, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["x-multitokens-user"], json!(["alice"]), "{}", r.body);
    assert_eq!(r.body["x-multitokens-device"], json!(["laptop"]));
    // no scopes: an empty header from the wasm build; the native module leaves it out (Envoy's
    // dynamic-module ABI cannot set an empty value), and a client's copy is stripped either way
    let no_scopes = if Build::under_test() == Build::Native { json!([]) } else { json!([""]) };
    assert_eq!(r.body["x-multitokens-scopes"], no_scopes);
    assert_eq!(r.body["x-multitokens-token-id"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["authorization"], json!([]), "the credential is stripped before the upstream");
    let r =
        s.request("GET", "/public/headers", &[("x-multitokens-user", "root"), ("x-multitokens-scopes", "admin")], None);
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.body["x-multitokens-user"].clone(), r.body["x-multitokens-scopes"].clone()),
        (json!([]), json!([])),
        "{}",
        r.body
    );
    // excluded paths need no token
    assert_eq!(s.get("/healthz", None).status, 200);
    let preflight = [("origin", "http://localhost:3000"), ("access-control-request-method", "GET")];
    assert_eq!(s.request("OPTIONS", "/api/whoami", &preflight, None).status, 405, "a preflight reaches the app");
    assert_eq!(s.request("OPTIONS", "/api/whoami", &[], None).status, 401, "any other OPTIONS needs a token");

    // scopes
    assert_eq!(s.get("/api/admin/stats", Some(&bearer(&alice))).status, 403);
    let r = s.get("/api/admin/stats", Some(&bearer(&alice)));
    assert!(r.challenge.unwrap().contains("insufficient_scope"));
    let admin = s.login("root", "console", &["admin"]);
    assert_eq!(s.get("/api/admin/stats", Some(&bearer(&admin))).status, 200);

    // two devices; logout one, the other stays; logout-all
    let phone = s.login("alice", "phone", &[]);
    assert_eq!(s.get("/api/whoami", Some(&bearer(&phone))).body["device"], "phone");
    assert_eq!(s.get("/api/whoami", Some(&bearer(&alice))).body["device"], "laptop");
    let r = s.request("POST", "/logout", &[("authorization", &bearer(&phone))], None);
    assert_eq!(
        (r.status, r.body["revoked"].clone(), r.body["edges"]["pending"].clone()),
        (200, json!(1), json!(0)),
        "{}",
        r.body
    );
    // Envoy runs a wasm VM per worker and one on its main thread: all of them acknowledged; the
    // native module is one edge per process, whatever the number of workers
    let acknowledged = r.body["edges"]["acknowledged"].as_u64().unwrap();
    match Build::under_test() {
        Build::Wasm => assert!(acknowledged >= 2, "{}", r.body),
        Build::Native => assert_eq!(acknowledged, 1, "one edge per Envoy process: {}", r.body),
    }
    // read-your-writes: refused on every worker as soon as the logout has returned
    for _ in 0..20 {
        assert_eq!(s.get("/api/whoami", Some(&bearer(&phone))).status, 401);
    }
    assert_eq!(s.get("/api/whoami", Some(&bearer(&alice))).status, 200, "the other device is still logged in");
    let tablet = s.login("alice", "tablet", &[]);
    let r = s.request("POST", "/logout-all", &[("authorization", &bearer(&tablet))], None);
    assert_eq!(
        (r.status, r.body["revoked"].clone(), r.body["edges"]["pending"].clone()),
        (200, json!(2), json!(0)),
        "{}",
        r.body
    );
    for t in [&alice, &tablet] {
        for _ in 0..10 {
            assert_eq!(s.get("/api/whoami", Some(&bearer(t))).status, 401);
        }
    }
    assert_eq!(s.get("/api/admin/stats", Some(&bearer(&admin))).status, 200, "other users untouched");
    assert!(s.stat("allowed") > 0 && s.stat("denied_missing") >= 3 && s.stat("denied_scope") >= 1);
}

#[test]
fn a_token_revoked_through_the_cli_is_refused_as_soon_as_the_cli_returns_with_the_cache_on() {
    let s = Stack::start(|c| c["cache"]["ttl_ms"] = json!(600_000));
    let token = s.login("bob", "laptop", &[]);
    assert_eq!(s.get("/api/whoami", Some(&bearer(&token))).status, 200);
    let hits = s.stat("cache_hit");
    for _ in 0..5 {
        assert_eq!(s.get("/api/whoami", Some(&bearer(&token))).status, 200);
    }
    assert!(s.stat("cache_hit") > hits, "served from the cache");
    // revoke out of band, straight through the companion CLI: it returns once the edges applied it
    let out = support::companion(
        &["revoke-all", "--user", "bob", "--json"],
        &[
            ("MULTITOKENS_REDIS_URL", &s.url()),
            ("MULTITOKENS_HASH_KEY", TEST_HASH_KEY),
            ("MULTITOKENS_SIGNING_KEY", support::TEST_SIGNING_KEY),
        ],
        None,
    );
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["edges"]["pending"], 0, "{report}");
    for _ in 0..20 {
        assert_eq!(s.get("/api/whoami", Some(&bearer(&token))).status, 401, "refused as soon as the CLI returned");
    }
    assert!(s.stat("revocations_applied") >= 1);
    // the filter's stats are in Prometheus form too
    let prometheus = s
        .agent
        .get(format!("http://127.0.0.1:{}/stats/prometheus", s.admin_port))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    for name in [
        "allowed",
        "cache_hit",
        "cache_miss",
        "denied_invalid",
        "revocations_applied",
        "callout_failed",
        "cache_entries",
    ] {
        let prefix = Build::under_test().prometheus_prefix();
        assert!(
            prometheus.lines().any(|l| l.starts_with(&format!("{prefix}{name}{{"))),
            "{name} missing from /stats/prometheus:\n{}",
            prometheus.lines().filter(|l| l.contains("multitokens")).collect::<Vec<_>>().join("\n")
        );
    }
}

#[test]
fn store_down_denies_then_recovers() {
    let mut s = Stack::start(|_| {});
    let token = s.login("carol", "laptop", &[]);
    assert_eq!(s.get("/api/whoami", Some(&bearer(&token))).status, 200);
    s.companion = None; // stopped
    let fresh = s.issue("carol", &[]);
    let r = s.get("/api/whoami", Some(&bearer(&fresh)));
    assert_eq!((r.status, r.body["detail"].clone()), (503, json!("Authentication service unavailable.")));
    // a cached verdict is not trusted once the revocation feed has gone silent
    s.wait_for_status("/api/whoami", &bearer(&token), 503, Duration::from_secs(6));
    assert!(s.stat("denied_unavailable") >= 2);
    s.companion = Some(Stack::companion(&s.url(), s.companion_port, &s.companion_env));
    s.wait_for_status("/api/whoami", &bearer(&fresh), 200, Duration::from_secs(5));
    assert_eq!(s.get("/api/whoami", Some(&bearer(&token))).status, 200);
    assert!(s.envoy.alive());
}

#[test]
fn allow_cached_accepts_known_tokens_for_a_bounded_time_then_recovers() {
    let mut s = Stack::start(|c| {
        c["failure_mode"] = json!("allow_cached");
        c["stale_window_ms"] = json!(4000);
        c["cache"]["ttl_ms"] = json!(500);
    });
    let known = s.login("dave", "laptop", &[]);
    assert_eq!(s.get("/api/whoami", Some(&bearer(&known))).status, 200);
    let verified = Instant::now();
    let unknown = s.issue("dave", &[]);
    s.companion = None;
    std::thread::sleep(Duration::from_millis(800));
    let r = s.get("/api/whoami", Some(&bearer(&known)));
    assert_eq!((r.status, r.body["user"].clone()), (200, json!("dave")), "accepted from the stale cache");
    assert!(s.stat("allowed_stale") >= 1);
    assert_eq!(s.get("/api/whoami", Some(&bearer(&unknown))).status, 503, "never verified: refused");
    let r = s.wait_for_status("/api/whoami", &bearer(&known), 503, Duration::from_secs(8));
    assert!(verified.elapsed() >= Duration::from_millis(3500), "stale acceptance ended early ({r:?})");
    s.companion = Some(Stack::companion(&s.url(), s.companion_port, &s.companion_env));
    s.wait_for_status("/api/whoami", &bearer(&known), 200, Duration::from_secs(5));
    assert_eq!(s.get("/api/whoami", Some(&bearer(&unknown))).status, 200);
}

#[test]
fn without_rules_every_path_needs_a_token_and_spoofing_still_fails() {
    let s = Stack::start(|c| {
        c.as_object_mut().unwrap().remove("exclude");
        c.as_object_mut().unwrap().remove("required_scopes");
    });
    let token = s.issue("gus", &["--device", "tv"]);
    let auth = bearer(&token);
    let headers = [
        ("authorization", auth.as_str()),
        ("x-multitokens-user", "root"),
        ("x-multitokens-user", "admin"),
        ("x-multitokens-device", "x"),
    ];
    for _ in 0..2 {
        // a lookup, then a cache hit: both replace every client value
        let r = s.request("GET", "/api/headers", &headers, None);
        assert_eq!(r.body["x-multitokens-user"], json!(["gus"]), "{}", r.body);
        assert_eq!(r.body["x-multitokens-device"], json!(["tv"]));
        assert_eq!(r.body["authorization"], json!([]));
    }
    assert_eq!(s.get("/healthz", None).status, 401, "without exclude rules every path needs a token");
}
