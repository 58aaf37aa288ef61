//! DPoP-bound tokens through real Envoy, with keys from panva's `jose` and proofs from panva's
//! `dpop` (tests/clients/dpop_client.mjs): a proof of the bound key passes, every broken proof is
//! refused with the DPoP challenge, and a revoke still applies before it returns.

use super::*;

pub(super) use support::dpop_client as client;

/// Issues a token bound to `jkt` through the admin API.
pub(super) fn issue_bound(s: &Stack, user: &str, jkt: &str) -> String {
    let url = format!("http://127.0.0.1:{}/v1/tokens", s.companion_port);
    let body = json!({"user": user, "device": "phone", "dpop_jkt": jkt});
    let r = support::http_call(&s.agent, "POST", &url, &[("authorization", &bearer(ADMIN_KEY))], Some(body));
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["token"].as_str().unwrap().to_string()
}

#[test]
fn bound_tokens_pass_only_with_a_fresh_proof_of_their_key() {
    let s = Stack::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    // RSA keys where the build verifies them fast (ring): the native module
    let algs: &[&str] = match Build::under_test() {
        Build::Native => &["ES256", "Ed25519", "RS256", "PS256"],
        Build::Wasm => &["ES256", "Ed25519"],
    };
    for &alg in algs {
        let keyfile = dir.path().join(format!("{alg}.json"));
        let jkt = client(&["key", alg, keyfile.to_str().unwrap()]);
        let user = format!("dpop-{alg}");
        let token = issue_bound(&s, &user, &jkt);
        let other = issue_bound(&s, &user, &jkt);
        let url = format!("http://127.0.0.1:{}/api/whoami", s.port);
        let proofs: Value =
            serde_json::from_str(&client(&["proofs", keyfile.to_str().unwrap(), &url, &token, &other])).unwrap();
        let proof = |name: &str| proofs[name].as_str().unwrap().to_string();
        let dpop_auth = format!("DPoP {token}");
        let send = |headers: &[(&str, &str)]| s.request("GET", "/api/whoami", headers, None);

        // one client, one kept-alive connection, so one Envoy worker: proof ids are remembered per
        // worker (per process for the native module)
        // a proof of the bound key for this request passes, and the upstream sees the user
        let r = send(&[("authorization", &dpop_auth), ("dpop", &proof("valid_0"))]);
        assert_eq!((r.status, r.body["user"].clone()), (200, json!(user)), "{alg}: {}", r.body);
        // cached now: the proof is still checked on every request
        let r = send(&[("authorization", &dpop_auth), ("dpop", &proof("valid_1"))]);
        assert_eq!(r.status, 200, "{alg}: {}", r.body);

        let refused = |headers: &[(&str, &str)], error: &str, why: &str| {
            let r = send(headers);
            assert_eq!(r.status, 401, "{alg}: {why}: {}", r.body);
            let challenge = r.challenge.unwrap_or_default();
            assert!(
                challenge.starts_with("DPoP ") && challenge.contains(&format!("error=\"{error}\"")),
                "{alg}: {why}: {challenge}"
            );
            assert_eq!(r.body["detail"], "Invalid token.", "{alg}: {why}");
        };
        for (name, why) in [
            ("wrong_key", "a proof made with another key"),
            ("wrong_htm", "a proof for POST"),
            ("wrong_htu", "a proof for another URI"),
            ("stale_iat", "a proof made ten minutes ago"),
            ("missing_ath", "a proof without the token's hash"),
            ("other_token", "a proof for another token"),
            ("alg_none", "alg none"),
            ("hmac", "an HMAC alg"),
            ("valid_0", "a replayed proof"),
        ] {
            refused(&[("authorization", &dpop_auth), ("dpop", &proof(name))], "invalid_dpop_proof", why);
        }
        let (a, b) = (proof("valid_2"), proof("valid_3"));
        refused(&[("authorization", &dpop_auth), ("dpop", &a), ("dpop", &b)], "invalid_dpop_proof", "two proofs");
        refused(&[("authorization", &dpop_auth)], "invalid_dpop_proof", "no proof");
        let bearer_auth = bearer(&token);
        refused(&[("authorization", &bearer_auth), ("dpop", &proof("valid_4"))], "invalid_token", "sent as Bearer");
        refused(&[("authorization", &bearer_auth)], "invalid_token", "sent as Bearer without a proof");

        // a revoke applies to bound tokens before it returns
        let url = format!("http://127.0.0.1:{}/v1/users/{user}/tokens", s.companion_port);
        let r = support::http_call(&s.agent, "DELETE", &url, &[("authorization", &bearer(ADMIN_KEY))], None);
        assert_eq!((r.status, r.body["revoked"].clone()), (200, json!(2)), "{}", r.body);
        let r = send(&[("authorization", &dpop_auth), ("dpop", &proof("valid_5"))]);
        assert_eq!(r.status, 401, "{alg}: revoked: {}", r.body);
        assert!(r.challenge.unwrap_or_default().contains("invalid_token"), "{alg}");
    }
    assert_eq!(s.stat("denied_dpop"), algs.len() as u64 * 13, "every refusal counted once");
}

/// A login with a DPoP proof (the demo app forwards it to the companion, which checks it against
/// the login request) gets a token bound to the client's key: usable with proofs only.
#[test]
fn a_login_with_a_proof_binds_the_token_to_the_clients_key() {
    let s = Stack::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("key.json");
    let jkt = client(&["key", "Ed25519", keyfile.to_str().unwrap()]);
    let login_url = format!("http://127.0.0.1:{}/login", s.port);
    let proof = client(&["login", keyfile.to_str().unwrap(), &login_url]);
    let body = json!({"user": "dpop-login", "device": "phone"});
    let r = s.request("POST", "/login", &[("dpop", &proof)], Some(body.clone()));
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.body["token"].as_str().unwrap().to_string();
    // the companion shows the binding, and introspection answers as RFC 9449 §6.2 says
    let admin = [("authorization", bearer(ADMIN_KEY))];
    let admin: Vec<(&str, &str)> = admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = format!("http://127.0.0.1:{}/v1/users/dpop-login/tokens", s.companion_port);
    let listed = support::http_call(&s.agent, "GET", &url, &admin, None);
    assert_eq!(listed.body[0]["dpop_jkt"], json!(jkt), "{}", listed.body);
    let url = format!("http://127.0.0.1:{}/v1/introspect", s.companion_port);
    let r = support::http_call(&s.agent, "POST", &url, &admin, Some(json!({"token": token})));
    assert_eq!(
        (r.body["token_type"].clone(), r.body["cnf"].clone()),
        (json!("DPoP"), json!({"jkt": jkt})),
        "{}",
        r.body
    );
    // usable with a proof of that key only
    assert_eq!(s.get("/api/whoami", Some(&bearer(&token))).status, 401);
    let api = format!("http://127.0.0.1:{}/api/whoami", s.port);
    let proofs: Value =
        serde_json::from_str(&client(&["proofs", keyfile.to_str().unwrap(), &api, &token, "other"])).unwrap();
    let auth = format!("DPoP {token}");
    let r = s.request(
        "GET",
        "/api/whoami",
        &[("authorization", &auth), ("dpop", proofs["valid_0"].as_str().unwrap())],
        None,
    );
    assert_eq!((r.status, r.body["user"].clone()), (200, json!("dpop-login")), "{}", r.body);
    // the same login proof again, or one for another URI, logs nobody in
    let r = s.request("POST", "/login", &[("dpop", proofs["valid_1"].as_str().unwrap())], Some(body));
    assert_eq!(r.status, 400, "a proof for GET /api/whoami is no login proof: {}", r.body);
    assert!(r.body["detail"].as_str().unwrap_or_default().starts_with("dpop:"), "{}", r.body);
}
