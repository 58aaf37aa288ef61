//! Scope rules, exclusions, preflights, credentials and the CSRF check, request by request.

use super::*;

#[test]
fn only_canonical_paths_meet_the_rules() {
    let mut w = worker("");
    follow_feed(&mut w, 0);
    let t = token::generate("mt", "alice").unwrap();
    for raw in [
        "/healthz/../admin/users",
        "/admin//users",
        "/%61dmin/users",
        "/admin;x/users",
        "/healthz/%2e%2e/admin",
        "/admin%2Fusers",
    ] {
        let mut h = request(raw, None);
        assert_eq!(HttpFlow::new().on_request_headers(&mut h, &mut w, 0), Step::Replied, "{raw}");
        assert_eq!((h.replies[0].status, h.counted(Metric::DeniedBadPath)), (400, 1), "{raw}");
        let h = run(&mut w, raw, &t, Some((Some(200), VALID)), 0);
        assert_eq!(h.replies[0].status, 400, "{raw} with a token");
        assert!(h.lookups.is_empty());
    }
    // the canonical form with a query string passes and meets the scope rule
    assert_eq!(run(&mut w, "/admin/users?next=/../x", &t, Some((Some(200), VALID)), 0).replies[0].status, 403);
    assert!(run(&mut w, "/healthz?x=1", &t, None, 0).replies.is_empty());
}

#[test]
fn scopes_are_enforced_per_path() {
    let mut w = worker("");
    let t = token::generate("mt", "alice").unwrap();
    let h = run(&mut w, "/admin/users", &t, Some((Some(200), VALID)), 0);
    assert_eq!(h.replies[0].status, 403);
    assert!(h.replies[0].headers.iter().any(|(_, v)| v.contains("insufficient_scope")));
}

/// A request with extra headers through a worker, answered VALID when it looks up.
/// (`(":body", _)` says a body follows the headers.)
fn run_with(w: &mut Worker, method: &str, path: &str, headers: &[(&str, &str)]) -> MemoryHost {
    let mut h = MemoryHost::request(method, path.as_bytes());
    h.client_address = Some(b"192.0.2.7:40000".to_vec());
    for (name, value) in headers {
        match *name {
            ":body" => h.has_body = true,
            _ => {
                h.add_header(name, value.as_bytes());
            }
        }
    }
    let mut flow = HttpFlow::new();
    if flow.on_request_headers(&mut h, w, 0) == Step::Pause {
        flow.on_lookup_response(&mut h, w, companion_transport::parse_answer(Some(200), VALID), 0);
    }
    h
}

#[test]
fn scope_rules_hold_for_every_spelling_and_method_override() {
    let t = token::generate("mt", "alice").unwrap();
    let auth = format!("Bearer {t}");
    let mut w = Worker::new(
        Compiled::parse(
            br#"{"companion": {"cluster": "c", "api_key": "k"},
                 "required_scopes": [{"prefix": "/api/admin/", "scopes": ["admin"]}, {"path": "/v1/orders:cancel", "scopes": ["admin"]},
                                     {"prefix": "/api/items/", "methods": ["DELETE"], "scopes": ["admin"]}]}"#,
        )
        .unwrap(),
    );
    for (method, path, extra) in [
        ("GET", "/API/ADMIN/stats", None),
        ("GET", "/Api/admin/stats/", None),
        ("GET", "/api/admin", None),
        ("POST", "/v1/orders%3Acancel", None),
        ("POST", "/v1/orders%3acancel/", None),
        ("POST", "/api/items/7", Some(("x-http-method-override", "DELETE"))),
        ("POST", "/api/items/7", Some(("X-Method-Override", "delete"))),
        ("POST", "/api/items/7?_method=DELETE", None),
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(extra);
        let h = run_with(&mut w, method, path, &headers);
        assert_eq!(h.replies.first().map(|r| r.status), Some(403), "{method} {path} {extra:?}");
    }
    for (method, path) in [("GET", "/api/items/7"), ("POST", "/api/items/7"), ("GET", "/api/administrator")] {
        let h = run_with(&mut w, method, path, &[("authorization", &auth)]);
        assert!(h.replies.is_empty(), "{method} {path} needs no scope");
    }
    let h = run_with(&mut w, "GET", "/api/admin/%253A", &[("authorization", &auth)]);
    assert_eq!((h.replies[0].status, h.lookups.len()), (400, 0), "a double-encoded path cannot be matched safely");
}

#[test]
fn exclusions_never_widen_by_spelling_or_override() {
    let mut w = worker("");
    assert_eq!(run_with(&mut w, "GET", "/healthz", &[]).counted(Metric::Excluded), 1);
    for (path, headers) in [("/HEALTHZ", vec![]), ("/healthz", vec![("x-http-method-override", "DELETE")])] {
        let h = run_with(&mut w, "GET", path, &headers);
        assert_eq!(h.replies[0].status, 401, "{path} {headers:?} needs a token");
    }
}

#[test]
fn only_a_cors_preflight_passes_without_a_token() {
    let mut w = worker("");
    let preflight = [("origin", "https://app.example"), ("access-control-request-method", "POST")];
    let h = run_with(&mut w, "OPTIONS", "/admin/stats", &preflight);
    assert_eq!((h.replies.len(), h.counted(Metric::Excluded)), (0, 1));
    for (what, headers) in [
        ("no Origin", vec![("access-control-request-method", "POST")]),
        ("no request method", vec![("origin", "https://app.example")]),
        ("a body", vec![preflight[0], preflight[1], ("content-length", "12")]),
        ("a chunked body", vec![preflight[0], preflight[1], ("transfer-encoding", "chunked")]),
        ("a body without a length (HTTP/2)", vec![preflight[0], preflight[1], (":body", "")]),
        ("an override", vec![preflight[0], preflight[1], ("x-http-method-override", "DELETE")]),
    ] {
        let h = run_with(&mut w, "OPTIONS", "/admin/stats", &headers);
        assert_eq!(h.replies[0].status, 401, "an OPTIONS with {what} is no preflight");
    }
    let mut strict = worker(r#", "cors_preflight": "authenticate""#);
    assert_eq!(run_with(&mut strict, "OPTIONS", "/x", &preflight).replies[0].status, 401);
}

#[test]
fn credentials_never_reach_the_upstream() {
    let mut w = worker(r#", "cookie": "mt_session""#);
    let t = token::generate("mt", "alice").unwrap();
    let (auth, cookie) = (format!("Bearer {t}"), format!("theme=dark; mt_session={t}"));
    // on an excluded route and on a preflight
    for (method, headers) in
        [("GET", vec![]), ("OPTIONS", vec![("origin", "https://a.example"), ("access-control-request-method", "GET")])]
    {
        let path = if method == "GET" { "/healthz" } else { "/x" };
        let mut all = vec![("authorization", auth.as_str()), ("cookie", cookie.as_str())];
        all.extend(headers);
        let h = run_with(&mut w, method, path, &all);
        assert!(h.replies.is_empty());
        assert!(h.header("authorization").is_none(), "{method}: header token stripped");
        assert_eq!(h.header("cookie").unwrap(), b"theme=dark", "{method}: cookie token stripped, others kept");
    }
    // the same token in the header and the cookie: both go
    let h = run_with(&mut w, "GET", "/api", &[("authorization", &auth), ("cookie", &cookie)]);
    assert_eq!(h.header("x-multitokens-credential").unwrap(), b"header");
    assert!(h.header("authorization").is_none());
    assert_eq!(h.header("cookie").unwrap(), b"theme=dark");
    // a tab after the scheme is read as a separator where the token is taken, so where it is
    // stripped too: the token never reaches the upstream, on excluded routes or authenticated ones
    let tabbed = format!("Bearer\t{t}");
    for path in ["/healthz", "/api"] {
        let h = run_with(&mut w, "GET", path, &[("authorization", &tabbed)]);
        assert!(h.replies.is_empty() && h.header("authorization").is_none(), "{path}: {:?}", h.header("authorization"));
    }
    // another scheme is not ours: kept on an excluded route
    let h = run_with(&mut w, "GET", "/healthz", &[("authorization", "Basic dXNlcjpwdw==")]);
    assert_eq!(h.header("authorization").unwrap(), b"Basic dXNlcjpwdw==");
    let h = run_with(&mut w, "GET", "/api", &[("cookie", &cookie)]);
    assert_eq!(h.header("x-multitokens-credential").unwrap(), b"cookie");
    // without a cookie every token is a header token: no label written, a client's own removed
    let mut headers_only = worker("");
    let h =
        run_with(&mut headers_only, "GET", "/api", &[("authorization", &auth), ("x-multitokens-credential", "cookie")]);
    assert_eq!(h.header("x-multitokens-credential"), None);
}

#[test]
fn unsafe_cookie_requests_from_other_sites_are_refused_before_any_lookup() {
    let mut w = worker(r#", "cookie": "mt_session""#);
    let t = token::generate("mt", "alice").unwrap();
    let cookie = format!("mt_session={t}");
    let h = run_with(
        &mut w,
        "POST",
        "/api",
        &[("cookie", &cookie), ("sec-fetch-site", "cross-site"), ("origin", "https://evil.example")],
    );
    assert_eq!((h.replies[0].status, h.lookups.len(), h.counted(Metric::DeniedCrossSite)), (403, 0, 1));
    assert!(h.replies[0].body.contains("CSRF Failed"));
    let h = run_with(
        &mut w,
        "POST",
        "/api",
        &[("cookie", &cookie), (":authority", "api.example"), ("origin", "https://api.example")],
    );
    assert!(h.replies.is_empty(), "same origin");
    let h = run_with(&mut w, "GET", "/api", &[("cookie", &cookie), ("sec-fetch-site", "cross-site")]);
    assert!(h.replies.is_empty(), "safe method");
    let auth = format!("Bearer {t}");
    let h = run_with(&mut w, "POST", "/api", &[("authorization", &auth), ("sec-fetch-site", "cross-site")]);
    assert!(h.replies.is_empty(), "a header token is not sent by the browser on its own");
}
