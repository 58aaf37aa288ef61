//! DPoP-bound tokens in both builds: the binding comes with the record (read by the companion,
//! or by the Redis-callout filter itself, under the seal), a proof of the bound key passes, a
//! bearer use and another key's proof do not, and rewriting the record cannot unbind it.

use super::*;

use support::dpop_client as client;

fn assert_refused(outcome: &Outcome, error: &str, why: &str) {
    let r = outcome.reply();
    assert_eq!((r.status, r.json()["detail"].clone()), (401, json!("Invalid token.")), "{why}");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.contains(&format!("error=\"{error}\"")), "{why}: {challenge}");
}

#[test]
fn a_bound_token_needs_its_keys_proof_and_stays_bound_in_both_builds() {
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("key.json");
    let jkt = client(&["key", "ES256", keyfile.to_str().unwrap()]);
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start_with_env(build, vec![("MULTITOKENS_HASH_KEY", support::TEST_HASH_KEY.to_string())]);
        // behind a TLS terminator: proofs name the public origin, not what Envoy saw
        let config = json!({"hash_key": support::TEST_HASH_KEY, "dpop": {"public_origin": "https://api.example.com"}});
        let mut host = stack.load(config.clone());
        let token = stack.issue("dora", "phone", &["--dpop-jkt", &jkt]);
        let bearer_token = stack.issue("dora", "laptop", &[]);
        let url = "https://api.example.com/api?q=1";
        let proofs: Value =
            serde_json::from_str(&client(&["proofs", keyfile.to_str().unwrap(), url, &token, &bearer_token])).unwrap();
        let proof = |name: &str| proofs[name].as_str().unwrap().to_string();
        let auth = format!("DPoP {token}");
        let send = |host: &mut TestHost, auth: &str, proof: Option<String>| {
            let mut headers = vec![("authorization", auth.to_string())];
            headers.extend(proof.map(|p| ("dpop", p)));
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            host.request("GET", "/api?q=1", &headers)
        };
        // a proof that does not verify is refused before the store is asked
        for broken in ["stale_iat", "alg_none", "wrong_htu"] {
            assert_refused(&send(&mut host, &auth, Some(proof(broken))), "invalid_dpop_proof", broken);
        }
        assert_eq!(host.metric("multitokens.cache_miss"), 0, "{build:?}: no lookup for a broken proof");
        let r = send(&mut host, &auth, Some(proof("valid_0")));
        assert_eq!(r.upstream_header("x-multitokens-user").as_deref(), Some("dora"), "{build:?}: {:?}", host.logs());
        assert_eq!(host.metric("multitokens.cache_miss"), 1, "{build:?}");
        assert_refused(&send(&mut host, &auth, Some(proof("wrong_key"))), "invalid_dpop_proof", "another key");
        assert_refused(&send(&mut host, &auth, Some(proof("valid_0"))), "invalid_dpop_proof", "replayed");
        assert_refused(&send(&mut host, &format!("Bearer {token}"), None), "invalid_token", "as Bearer");
        // an unbound token works as before, with or without the DPoP scheme's proof
        assert!(matches!(get(&mut host, "/api", &bearer_token), Outcome::Forwarded(_)), "{build:?}");
        assert_eq!(host.metric("multitokens.denied_dpop"), 6, "{build:?}");

        // Redis write access cannot unbind it: the record without its cnf no longer matches its seal
        let key = stack.redis.cli(&["--scan", "--pattern", "mt:*:t:*"]);
        let key = key.lines().find(|k| stack.redis.cli(&["GET", k]).contains("\"cnf\"")).unwrap().to_string();
        let stored = stack.redis.cli(&["GET", &key]);
        let unbound = stored.replace(&format!(r#","cnf":{{"jkt":"{jkt}"}}"#), "");
        assert_ne!(stored, unbound, "the record holds the binding");
        assert_eq!(stack.redis.cli(&["SET", &key, unbound.trim_end(), "KEEPTTL"]).trim(), "OK");
        let mut fresh = stack.load(config);
        assert_invalid(&send(&mut fresh, &format!("Bearer {token}"), None));
        // and the list shows the binding
        let listed: Value = serde_json::from_str(&stack.cli(&["list", "--user", "dora", "--json"])).unwrap();
        assert!(listed.as_array().unwrap().iter().all(|t| t["device"] != "laptop" || t.get("dpop_jkt").is_none()));
    }
}

#[test]
fn with_nonces_required_a_proof_needs_one_an_edge_handed_out_in_both_builds() {
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("key.json");
    let keyfile = keyfile.to_str().unwrap();
    let jkt = client(&["key", "Ed25519", keyfile]);
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start_with_env(build, vec![("MULTITOKENS_HASH_KEY", support::TEST_HASH_KEY.to_string())]);
        let config = json!({"hash_key": support::TEST_HASH_KEY,
                            "dpop": {"public_origin": "https://api.example.com", "require_nonce": true}});
        let (mut host, mut other_edge) = (stack.load(config.clone()), stack.load(config));
        let token = stack.issue("nina", "phone", &["--dpop-jkt", &jkt]);
        let url = "https://api.example.com/api";
        let auth = format!("DPoP {token}");
        let proofs: Value = serde_json::from_str(&client(&["proofs", keyfile, url, &token, "other"])).unwrap();
        let r = host.request("GET", "/api", &[("authorization", &auth), ("dpop", proofs["valid_0"].as_str().unwrap())]);
        assert_refused(&r, "use_dpop_nonce", "a proof without a nonce");
        let nonce = r.reply().header("dpop-nonce").unwrap().to_string();
        let proof = client(&["proof", keyfile, url, &token, &nonce]);
        // any edge with the same hash key takes the nonce another one handed out
        let r = other_edge.request("GET", "/api", &[("authorization", &auth), ("dpop", &proof)]);
        assert_eq!(
            r.upstream_header("x-multitokens-user").as_deref(),
            Some("nina"),
            "{build:?}: {:?}",
            other_edge.logs()
        );
        let forged = client(&["proof", keyfile, url, &token, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
        let r = host.request("GET", "/api", &[("authorization", &auth), ("dpop", &forged)]);
        assert_refused(&r, "use_dpop_nonce", "a made-up nonce");
    }
}
