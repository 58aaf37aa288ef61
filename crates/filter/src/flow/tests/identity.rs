//! Identity headers: only the filter's values reach the upstream, under every spelling a client tries.

use super::*;

#[test]
fn client_identity_headers_under_any_spelling_never_pass() {
    let mut w = worker("");
    follow_feed(&mut w, 0);
    let t = token::generate("mt", "alice").unwrap();
    for path in ["/healthz", "/api"] {
        let mut h = request(path, Some(&format!("Bearer {t}")));
        for name in ["x_multitokens_user", "x-multitokens_scopes", "X_MULTITOKENS_TOKEN_ID", "x-multitokens-device"] {
            h.set_header(name, b"admin");
        }
        let mut flow = HttpFlow::new();
        if flow.on_request_headers(&mut h, &mut w, 0) == Step::Pause {
            flow.on_lookup_response(&mut h, &mut w, companion_transport::parse_answer(Some(200), VALID), 0);
        }
        let left: Vec<_> = h.headers.iter().filter(|(_, v)| v.as_slice() == b"admin").map(|(k, _)| k.clone()).collect();
        assert!(left.is_empty(), "{path}: {left:?} reached the upstream");
        h.add_trailer("x_multitokens_user", b"admin");
        h.add_trailer("x-multitokens-user", b"admin");
        h.add_trailer("grpc-status", b"0");
        flow.on_request_trailers(&mut h, &w);
        assert_eq!(h.trailer_names(), ["grpc-status"], "trailers cannot add identity headers");
    }
}

#[test]
fn identity_headers_are_always_replaced() {
    let mut w = worker("");
    let mut h = request("/healthz", None);
    assert_eq!(HttpFlow::new().on_request_headers(&mut h, &mut w, 0), Step::Continue);
    assert!(h.header("x-multitokens-user").is_none(), "spoofed header removed on excluded path");
    let t = token::generate("mt", "alice").unwrap();
    let h = run(&mut w, "/api", &t, Some((Some(200), VALID)), 0);
    assert_eq!(h.header("x-multitokens-user").unwrap(), b"alice");
    assert_eq!(h.header("x-multitokens-device").unwrap(), b"phone");
    assert_eq!(h.header("x-multitokens-scopes").unwrap(), b"read");
    assert_eq!(h.header("x-multitokens-token-id").unwrap(), b"abc");
    assert!(h.header("authorization").is_none(), "credential stripped");
    assert!(h.lookups[0].contains(&format!("digest={}", TokenHasher::new(None).digest(&t).to_hex())));
    assert!(!h.lookups[0].contains(&t[3..]), "the token itself never leaves the filter");
}

#[test]
fn each_identity_header_reaches_the_upstream_once_with_our_value_on_a_miss_and_a_hit() {
    // the filter adds its identity headers instead of replacing them: that is only right while
    // every value the client sent under those names (or their aliases) was removed first
    let mut w = worker("");
    follow_feed(&mut w, 0);
    let t = token::generate("mt", "alice").unwrap();
    let ours = [
        ("x-multitokens-user", &b"alice"[..]),
        ("x-multitokens-device", b"phone"),
        ("x-multitokens-scopes", b"read"),
        ("x-multitokens-token-id", b"abc"),
    ];
    for (attempt, answer) in [("miss", Some((Some(200), VALID))), ("hit", None)] {
        let mut h = request("/api", Some(&format!("Bearer {t}")));
        for (name, _) in ours {
            h.add_header(name, b"admin").add_header(name, b"root");
            h.add_header(&name.replace('-', "_").to_ascii_uppercase(), b"admin");
        }
        let mut flow = HttpFlow::new();
        if flow.on_request_headers(&mut h, &mut w, 1) == Step::Pause {
            let (status, body) = answer.expect("only the first request looks up");
            flow.on_lookup_response(&mut h, &mut w, companion_transport::parse_answer(status, body), 1);
        }
        assert_eq!(h.counted(Metric::Allowed), 1, "{attempt}");
        for (name, value) in ours {
            let values: Vec<&[u8]> = h
                .headers
                .iter()
                .filter(|(k, _)| {
                    k.eq_ignore_ascii_case(name.as_bytes())
                        || k == name.replace('-', "_").to_ascii_uppercase().as_bytes()
                })
                .map(|(_, v)| v.as_slice())
                .collect();
            assert_eq!(values, [value], "{attempt}: {name}");
        }
    }
}
