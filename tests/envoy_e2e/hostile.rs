//! Hostile input through real Envoy: credentials, headers and ambiguous paths.

use super::*;

/// The sequence that once left a worker accepting revoked tokens for good (its tick had stopped):
/// malformed credentials, logout of one device, traffic, logout everywhere. Run many times, on
/// fresh connections and on pooled ones, so every worker sees every step.
#[test]
fn revoked_tokens_stay_refused_after_hostile_credentials() {
    let s = Stack::start(|_| {});
    let rounds: usize = std::env::var("MULTITOKENS_E2E_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    for round in 0..rounds {
        let laptop = s.login("alice", &format!("laptop{round}"), &[]);
        let phone = s.login("alice", &format!("phone{round}"), &[]);
        let bob = s.login("bob", &format!("pc{round}"), &[]);
        let mut flipped = laptop.clone().into_bytes();
        flipped[20] = if flipped[20] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let malformed = [
            String::new(),
            format!("Basic {laptop}"),
            bearer(&laptop[..laptop.len() / 2]),
            bearer(&flipped),
            bearer(&format!("xx{}", &laptop[2..])),
            format!("Bearer {laptop} {phone}"),
            format!("Bearer {laptop}, Bearer {phone}"),
            bearer(&"A".repeat(60_000)),
        ];
        for value in &malformed {
            for agent in [&s.agent, &support::http_agent()] {
                let r = support::http_call(
                    agent,
                    "GET",
                    &format!("http://127.0.0.1:{}/api/whoami", s.port),
                    &[("authorization", value)],
                    None,
                );
                assert!(matches!(r.status, 401 | 431), "round {round}: {} for a malformed credential", r.status);
            }
        }
        let r = s.request(
            "GET",
            "/api/whoami",
            &[("authorization", &bearer(&laptop)), ("authorization", &bearer(&phone))],
            None,
        );
        assert_eq!(r.status, 401, "two Authorization headers");
        assert_eq!(s.request("POST", "/logout", &[("authorization", &bearer(&laptop))], None).status, 200);
        s.wait_for_status("/api/whoami", &bearer(&laptop), 401, Duration::from_secs(3));
        for _ in 0..20 {
            assert_eq!(s.get("/api/whoami", Some(&bearer(&phone))).status, 200);
        }
        let tablet = s.login("alice", &format!("tablet{round}"), &[]);
        assert_eq!(s.request("POST", "/logout-all", &[("authorization", &bearer(&tablet))], None).status, 200);
        for t in [&phone, &tablet] {
            s.wait_for_status("/api/whoami", &bearer(t), 401, Duration::from_secs(3));
        }
        std::thread::sleep(Duration::from_millis(1500));
        for i in 0..40 {
            // alternate pooled and fresh connections: both workers answer
            let agent = if i % 2 == 0 { s.agent.clone() } else { support::http_agent() };
            for t in [&laptop, &phone, &tablet] {
                let r = support::http_call(
                    &agent,
                    "GET",
                    &format!("http://127.0.0.1:{}/api/whoami", s.port),
                    &[("authorization", &bearer(t))],
                    None,
                );
                assert_eq!(r.status, 401, "round {round}, request {i}: a revoked token was accepted again");
            }
        }
        assert_eq!(s.get("/api/whoami", Some(&bearer(&bob))).status, 200, "bob is untouched");
    }
    // every timer keeps ticking (Envoy runs a wasm VM per worker and one on the main thread; the
    // native module has one timer per process)
    let ticks = s.stat("ticks");
    std::thread::sleep(Duration::from_secs(2));
    let at_least = 2 * Build::under_test().edges_per_envoy();
    assert!(s.stat("ticks") >= ticks + at_least, "the filter's timer stopped ticking");
    assert_eq!(s.stat("tick_overdue"), 0);
}

/// Hostile header bytes through real Envoy (bytes that are not UTF-8, control characters, huge
/// and many headers): each gets a clear answer, and afterwards every worker still serves.
#[test]
fn hostile_headers_never_take_a_worker_down() {
    let s = Stack::start(|_| {});
    let token = s.login("alice", "laptop", &[]);
    let request = |path: &[u8], headers: &[&[u8]]| -> Vec<u8> {
        let mut r = [b"GET ", path, b" HTTP/1.1\r\nhost: test\r\nconnection: close\r\n"].concat();
        for h in headers {
            r.extend_from_slice(h);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r
    };
    let auth = format!("authorization: Bearer {token}").into_bytes();
    let many: Vec<Vec<u8>> = (0..90).map(|i| format!("x-h{i}: v{i}").into_bytes()).collect();
    let mut many_refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    many_refs.push(&auth);
    let huge = format!("x-huge: {}", "h".repeat(50_000)).into_bytes();
    let cases: Vec<(Vec<u8>, &[u16])> = vec![
        (request(b"/api/whoami", &[&auth, b"user-agent: \xff\xfe"]), &[200]),
        (request(b"/api/whoami", &[b"authorization: Bearer \xff\xfe"]), &[401]),
        (request(b"/api/whoami", &[&[auth.as_slice(), b"\xff"].concat()]), &[401]),
        (request(b"/api/whoami", &[b"authorization: \xff\xfe \xfd"]), &[401]),
        (request(b"/api/whoami", &[&auth, b"x-ctl: a\x01b\x7fc\x1b"]), &[200, 400]),
        (request(b"/api/whoami", &[b"authorization: Bearer mt_\x01\x02"]), &[400, 401]),
        (request(b"/healthz", &[b"x-multitokens-user: \xff\xfe", b"x-bin: \x80\x81\x82"]), &[200]),
        (request(b"/api/whoami", &many_refs), &[200, 431]),
        (request(b"/api/whoami", &[&auth, &huge]), &[200, 431]),
        (request(b"/api/\xff\xfe", &[&auth]), &[400, 404, 200]),
    ];
    for (i, (bytes, expected)) in cases.iter().enumerate() {
        for _ in 0..4 {
            let status = raw_status(s.port, bytes);
            assert!(expected.contains(&status), "case {i}: {status}, expected one of {expected:?}");
        }
    }
    // 50 valid requests over fresh connections: every worker still serves
    for i in 0..50 {
        let status = raw_status(s.port, &request(b"/api/whoami", &[&auth]));
        assert_eq!(status, 200, "valid request {i} after the hostile ones");
        assert_eq!(raw_status(s.port, &request(b"/healthz", &[])), 200, "health check {i}");
    }
    assert!(!s.envoy.log_text().contains("panicked"), "the filter panicked:\n{}", s.envoy.log_text());
}

/// Paths an upstream may read differently from the rules (dot segments, encodings, empty
/// segments, `;` parameters, backslashes) never reach the app unauthenticated or without the
/// scope: behind the shipped config (Envoy normalises first) and behind an Envoy that does not
/// normalise (the filter refuses them itself).
#[test]
fn ambiguous_paths_never_bypass_the_rules() {
    let attacks: [&[u8]; 9] = [
        b"/public/../api/admin/stats",
        b"/public/%2e%2e/api/admin/stats",
        b"/public/..%2fapi/admin/stats",
        b"/api//admin/stats",
        b"/api/%61dmin/stats",
        b"/api/admin;x/stats",
        b"/public/..;/api/admin/stats",
        b"/public\\..\\api/admin/stats",
        b"//api/admin/stats",
    ];
    let shipped = Stack::start(|_| {});
    let raw = Stack::start_with(
        |_| {},
        |mut config| {
            for (key, raw) in [
                ("normalize_path", json!(false)),
                ("merge_slashes", json!(false)),
                ("path_with_escaped_slashes_action", json!("KEEP_UNCHANGED")),
                ("headers_with_underscores_action", json!("ALLOW")),
            ] {
                assert_eq!(config.set_all(key, raw), 1, "the shipped config sets {key}");
            }
            config
        },
    );
    for s in [&shipped, &raw] {
        let user = s.login("erin", "laptop", &[]);
        let admin = s.login("root", "console", &["admin"]);
        for path in attacks {
            // the app answers 404 to a path it does not route: that status means it got the request
            for (who, auth, allowed) in [
                ("nobody", None, &[400u16, 401][..]),
                ("user", Some(&user), &[400, 403][..]),
                ("admin", Some(&admin), &[200, 400][..]),
            ] {
                let mut request = [b"GET ", path, b" HTTP/1.1\r\nhost: test\r\nconnection: close\r\n"].concat();
                if let Some(t) = auth {
                    request.extend_from_slice(format!("authorization: Bearer {t}\r\n").as_bytes());
                }
                request.extend_from_slice(b"\r\n");
                let status = raw_status(s.port, &request);
                let path = String::from_utf8_lossy(path);
                // 3xx: Envoy redirects to the unescaped path, which then meets the rules
                assert!(allowed.contains(&status) || (300..400).contains(&status), "{path} as {who}: {status}");
            }
        }
        // a rule for GET also covers HEAD (the admin route is GET-only in the app)
        let head = s.request("HEAD", "/api/admin/stats", &[("authorization", &bearer(&user))], None);
        assert_eq!(head.status, 403);
        assert_eq!(s.get("/api/admin/stats", Some(&bearer(&admin))).status, 200, "the canonical path still works");
        assert_eq!(s.get("/public/headers?next=/../api", None).status, 200, "a query string is not the path");
    }
    // underscore twins of identity headers: Envoy's shipped config refuses them
    let r = shipped.request("GET", "/public/headers", &[("x_multitokens_user", "root")], None);
    assert_eq!(r.status, 400, "headers_with_underscores_action: REJECT_REQUEST");
    // and behind an Envoy that lets them through, the filter removes them on any path
    let user = raw.login("erin", "phone", &[]);
    for path in ["/public/headers", "/api/headers"] {
        let r = raw.request(
            "GET",
            path,
            &[("authorization", &bearer(&user)), ("x_multitokens_user", "root"), ("X_Multitokens_Scopes", "admin")],
            None,
        );
        assert_eq!(r.status, 200, "{path}");
        let keys: Vec<&String> = r.body.as_object().unwrap().keys().collect();
        assert_eq!(
            keys.len(),
            multitokens_core::contract::IDENTITY_HEADERS.len() + 1,
            "{path}: only the identity names the filter sets reach the app: {}",
            r.body
        );
        assert!(!r.body.to_string().contains("root") && !r.body.to_string().contains("admin"), "{path}: {}", r.body);
    }
}
