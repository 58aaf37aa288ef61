//! Records in Redis: tampered, forged with everything a gateway holds, and the gateway users that
//! cannot write them.

use super::*;

/// Sealed records and a hash key rotation, in both builds: a record rewritten in Redis is refused
/// (the Redis-callout build counts it as `denied_tampered`; the stock build's companion refuses
/// it); during a rotation a token stored under the previous key is accepted and cached by the
/// digest it is stored under; its re-keying (on use by the companion, or by `multitokens rekey`)
/// is published like a revocation of the old digest; after the sweep the old key can be dropped
/// from both the companion and the filter.
#[test]
fn tampered_records_are_refused_and_a_key_rotation_logs_nobody_out_in_both_builds() {
    for build in [Build::Stock, Build::Redis] {
        let redis = RedisServer::start();
        let env = |current: &str, previous: &str| {
            vec![
                ("MULTITOKENS_ADMIN_KEY", "host-admin-key-0123456789".to_string()),
                ("MULTITOKENS_INTERNAL_KEY", INTERNAL_KEY.to_string()),
                ("MULTITOKENS_REDIS_URL", redis.url()),
                ("MULTITOKENS_HASH_KEY", current.to_string()),
                ("MULTITOKENS_PREVIOUS_HASH_KEYS", previous.to_string()),
            ]
        };
        let run = |env: &[(&str, String)], args: &[&str]| {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let out = companion(args, &env, None);
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let start = |env: &[(&str, String)]| {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            CompanionServer::start(&redis.url(), &env)
        };
        let host_for = |companion: &CompanionServer, keys: Value| {
            let mut upstreams = Upstreams::default();
            upstreams.http.insert("companion".into(), addr(companion.port));
            upstreams.redis.insert("redis".into(), addr(redis.port));
            let wasm = wasm_path(if build == Build::Stock {
                "multitokens_filter.wasm"
            } else {
                "multitokens_filter_redis.wasm"
            });
            let mut host = TestHost::load(&wasm, &filter_config(build, keys), upstreams)
                .unwrap_or_else(|logs| panic!("load failed:\n{logs}"));
            host.tick();
            host
        };
        let one = env("key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "");
        let companion_one = start(&one);
        let mut host = host_for(&companion_one, json!({"hash_key": "key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"}));
        let alice = run(&one, &["issue", "--user", "alice"]);
        let mallory = run(&one, &["issue", "--user", "mallory"]);
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
        // mallory rewrites her record in Redis to become alice
        let key = redis
            .cli(&["--scan", "--pattern", "mt:*:t:*"])
            .lines()
            .map(str::to_string)
            .find(|k| redis.cli(&["GET", k]).contains("mallory"))
            .unwrap();
        let record = redis.cli(&["GET", &key]).trim().replace("mallory", "alice");
        redis.cli(&["SET", &key, &record, "KEEPTTL"]);
        assert_invalid(&get(&mut host, "/api", &mallory));
        if build == Build::Redis {
            assert_eq!(host.metric("multitokens.denied_tampered"), 1);
        }
        drop(host);
        drop(companion_one);

        // rotation: key two is current, key one still accepted, in the companion and the filter
        let rotating =
            env("key-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE");
        let companion_two = start(&rotating);
        let mut host = host_for(
            &companion_two,
            json!({"hash_key": "key-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "previous_hash_keys": ["key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"]}),
        );
        let bob = run(&rotating, &["issue", "--user", "bob"]);
        for token in [&alice, &alice, &bob, &bob] {
            assert_eq!(get(&mut host, "/api", token).status(), 200, "{build:?}");
        }
        let misses = host.metric("multitokens.cache_miss");
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
        assert_eq!(host.metric("multitokens.cache_miss"), misses, "{build:?}: cached");
        assert_eq!(
            run(&rotating, &["revoke-all", "--user", "mallory"]),
            "1",
            "her rewritten record can still be logged out"
        );
        let report: Value =
            serde_json::from_str(&run(&rotating, &["rekey", "--json"])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((report["scanned"].as_u64(), report["unsealed_or_tampered"].as_u64()), (Some(2), Some(0)));
        let rekeyed = if build == Build::Redis { 1 } else { 0 };
        assert_eq!(
            report["rekeyed"].as_u64(),
            Some(rekeyed),
            "{build:?}: alice unless the companion re-keyed her on use"
        );
        // the sweep's move reaches the filter like a revocation of the old digest: the cached
        // verdict under it goes, and the next request finds her under the new one
        let applied = host.metric("multitokens.revocations_applied");
        host.tick();
        if build == Build::Redis {
            assert!(host.metric("multitokens.revocations_applied") > applied, "the old digest's entry dropped");
        }
        let misses = host.metric("multitokens.cache_miss");
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
        assert_eq!(host.metric("multitokens.cache_miss"), misses + i64::from(build == Build::Redis));
        drop(host);
        drop(companion_two);

        // the old key retired everywhere: alice and bob still logged in; a revocation still lands
        let mut two = env("key-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "");
        two.push(("MULTITOKENS_RETIRED_HASH_KEYS", "key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE".to_string()));
        let companion_three = start(&two);
        // a filter that dropped the old key outright: alice's token (minted under it) no longer
        // passes the MAC check, refused without a lookup; bob's, minted under the new key, does
        let mut dropped =
            host_for(&companion_three, json!({"hash_key": "key-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"}));
        let misses = dropped.metric("multitokens.cache_miss");
        assert_invalid(&get(&mut dropped, "/api", &alice));
        assert_eq!(dropped.metric("multitokens.cache_miss"), misses, "{build:?}: no lookup for a MAC no key made");
        assert_eq!(get(&mut dropped, "/api", &bob).status(), 200);
        drop(dropped);
        let mut host = host_for(
            &companion_three,
            json!({"hash_key": "key-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", "retired_hash_keys": ["key-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE"]}),
        );
        for token in [&alice, &bob] {
            assert_eq!(get(&mut host, "/api", token).status(), 200, "{build:?}");
        }
        run(&two, &["revoke", &alice]);
        host.tick();
        assert_invalid(&get(&mut host, "/api", &alice));
        assert_eq!(get(&mut host, "/api", &bob).status(), 200);
    }
}

/// With a hash key, in both builds: a forged token (right checksum, made-up MAC) costs no lookup
/// and no throttling, a valid token from the same address is served, a revoked one re-sent costs
/// one lookup and is never answered 429.
#[test]
fn forged_tokens_cost_nothing_and_valid_ones_are_never_throttled_in_both_builds() {
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start_with_env(build, vec![("MULTITOKENS_HASH_KEY", support::TEST_HASH_KEY.to_string())]);
        let config = json!({"hash_key": support::TEST_HASH_KEY, "accept_legacy_tokens": false,
                            "throttle": {"max_failures": 3, "window_ms": 60000}});
        let mut host = stack.load(config);
        host.set_client_address("198.51.100.66:1000");
        let misses = host.metric("multitokens.cache_miss");
        for i in 0..50 {
            let forged = if i % 2 == 0 {
                multitokens_core::token::forge("mt", "mallory").unwrap()
            } else {
                multitokens_core::token::generate("mt", "mallory").unwrap() // old format: no MAC
            };
            assert_invalid(&get(&mut host, "/api", &forged));
        }
        assert_eq!(host.metric("multitokens.cache_miss"), misses, "{build:?}: no lookup for a forged token");
        assert_eq!(host.metric("multitokens.denied_forged"), 50);
        let stale = stack.issue("alice", "laptop", &[]);
        stack.cli(&["revoke", &stale]);
        for _ in 0..10 {
            assert_invalid(&get(&mut host, "/api", &stale));
        }
        assert_eq!(host.metric("multitokens.cache_miss"), misses + 1, "{build:?}: one lookup, then the negative cache");
        let bob = stack.issue("bob", "phone", &[]);
        for _ in 0..5 {
            assert_eq!(get(&mut host, "/api", &bob).status(), 200, "{build:?}");
        }
        assert_eq!(host.metric("multitokens.denied_throttled"), 0);
    }
}

/// Redis write access plus everything a gateway's plugin configuration holds (the hash key, so
/// the token MAC key and the HMAC seal key; the internal key; the public signing key): an attacker
/// makes up a token with a valid MAC, writes a record for it naming `admin` with every scope,
/// HMAC-sealed, or signed with a key pair of their own. With records signed by the companion,
/// both builds refuse it and count it as tampered.
#[test]
fn a_record_forged_with_everything_a_gateway_holds_is_refused_in_both_builds() {
    use multitokens_core::{digest::TokenHasher, record::TokenRecord, signing::RecordSigner, token::RoutingTag};
    for build in [Build::Stock, Build::Redis] {
        let (seed, public) = RecordSigner::generate().unwrap();
        let env = vec![("MULTITOKENS_HASH_KEY", support::TEST_HASH_KEY.to_string()), ("MULTITOKENS_SIGNING_KEY", seed)];
        let stack = Stack::start_with_env(build, env);
        let gateway =
            json!({"hash_key": support::TEST_HASH_KEY, "accept_legacy_tokens": false, "record_public_keys": [public]});
        let mut host = stack.load(gateway.clone());
        let alice = stack.issue("alice", "laptop", &["--scope", "read"]);
        assert_eq!(get(&mut host, "/api", &alice).status(), 200, "{build:?}: a signed record is honoured");
        // the attacker's side: only what the gateway config holds
        let hasher = TokenHasher::new(Some(gateway["hash_key"].as_str().unwrap().as_bytes()));
        let mut forged_tokens = Vec::new();
        for (n, seal) in ["hmac", "own-key-pair"].into_iter().enumerate() {
            let token = hasher.mint("mt", "admin").unwrap();
            let digest = hasher.digest(&token);
            let record = TokenRecord {
                id: digest.public_id(),
                user: "admin".into(),
                device: "forged".into(),
                created: 1,
                scopes: vec!["admin".into(), "read".into(), "write".into()],
                expires_at: None,
                lifetime_ms: None,
                token_hash: Some(hex::encode(multitokens_core::digest::token_hash(&token))),
                suspended: false,
                cnf: None,
            }
            .to_json()
            .unwrap();
            let value = match seal {
                "hmac" => hasher.seal(&digest, record),
                _ => RecordSigner::from_text(&RecordSigner::generate().unwrap().0).unwrap().sign(&digest, record),
            };
            let key = format!("mt:{{{}}}:t:{}", RoutingTag::for_user("admin").to_hex(), digest.to_hex());
            stack.redis.cli(&["SET", &key, &value, "PX", "600000"]);
            assert_invalid(&get(&mut host, "/admin/stats", &token));
            assert_invalid(&get(&mut host, "/api", &token));
            forged_tokens.push((n, token));
        }
        let tampered = match build {
            Build::Redis => host.metric("multitokens.denied_tampered") as u64,
            Build::Stock => {
                let port = stack.companion.as_ref().unwrap().port;
                support::companion_metric(port, "multitokens_companion_tampered_records_total")
            }
        };
        assert!(tampered >= 2, "{build:?}: both counted as tampered, {tampered}");
        assert_eq!(get(&mut host, "/api", &alice).status(), 200);
    }
}

/// Least privilege: the Redis-callout build runs as the shipped gateway users
/// (envoy/redis/users.acl, created with `ACL SETUSER`): lookups and the revocation feed work as the
/// read-only user, sliding refreshes as the refresh user; neither can issue, rewrite or delete a
/// record, not even from a script, and the read-only one cannot change a TTL either.
#[test]
fn the_redis_callout_build_runs_as_the_gateway_users_which_cannot_write_records() {
    for (user, refresh) in [("mt-gateway", false), ("mt-gateway-refresh", true)] {
        let stack = Stack::start(Build::Redis);
        assert!(stack.redis.apply_shipped_acl().contains(&user.to_string()));
        let mut config = json!({
            "redis": {"cluster": "redis", "username": user, "password": "change-me-gateway", "timeout_ms": 500},
            "activity_interval_ms": 1000,
        });
        if refresh {
            config["refresh_on_use"] = json!({"ttl": 600, "min_interval_ms": 1000});
        }
        let mut host = stack.load(config);
        let alice = stack.issue("alice", "laptop", &["--ttl", "600"]);
        let phone = stack.issue("alice", "phone", &[]);
        std::thread::sleep(Duration::from_millis(1100));
        let r = get(&mut host, "/api", &alice);
        assert_eq!(r.upstream_header("x-multitokens-user").as_deref(), Some("alice"), "{user}: {:?}", host.logs());
        assert_eq!(get(&mut host, "/api", &phone).status(), 200);
        host.tick(); // the refresh goes out, and the feed is read
        let records: Vec<String> =
            stack.redis.cli(&["--scan", "--pattern", "mt:*:t:*"]).lines().map(str::to_string).collect();
        let key = records
            .iter()
            .find(|k| stack.redis.cli(&["PTTL", k]).trim().parse::<i64>().unwrap() <= 600_000)
            .unwrap()
            .clone();
        let pttl: i64 = stack.redis.cli(&["PTTL", &key]).trim().parse().unwrap();
        assert_eq!(pttl > 599_000, refresh, "{user}: refreshed iff refresh_on_use ({pttl} ms left)");
        let activity: Vec<String> =
            stack.redis.cli(&["--scan", "--pattern", "mt:*:a:*"]).lines().map(str::to_string).collect();
        assert_eq!(activity.len(), 2, "{user}: device activity is written: {:?}", host.logs());
        stack.cli(&["revoke", &alice]);
        host.tick();
        assert_invalid(&get(&mut host, "/api", &alice));
        assert_eq!(get(&mut host, "/api", &phone).status(), 200);
        assert_eq!(host.metric("multitokens.callout_error"), 0, "{user}: {:?}", host.logs());

        // what the gateway users cannot do
        let mut conn =
            redis::Client::open(stack.redis.url_as(user, "change-me-gateway")).unwrap().get_connection().unwrap();
        let key = records.iter().find(|k| stack.redis.cli(&["EXISTS", k]).trim() == "1").unwrap().clone();
        let record = stack.redis.cli(&["GET", &key]).trim().to_string();
        let forged = record.replace("alice", "root");
        let index = format!("{}alice", key.split(":t:").next().unwrap().to_string() + ":u:");
        let mut attempts: Vec<redis::Cmd> = vec![
            redis::cmd("SET").arg(&key).arg(&forged).clone(),
            redis::cmd("DEL").arg(&key).clone(),
            redis::cmd("RENAME").arg(&key).arg(format!("{key}x")).clone(),
            redis::cmd("PERSIST").arg(&key).clone(),
            redis::cmd("EVAL").arg("return redis.call('SET', KEYS[1], ARGV[1])").arg(1).arg(&key).arg(&forged).clone(),
            redis::cmd("EVAL").arg("return redis.call('DEL', KEYS[1])").arg(1).arg(&key).clone(),
            redis::cmd("EVAL_RO").arg("return redis.call('DEL', KEYS[1])").arg(1).arg(&key).clone(),
            redis::cmd("EVAL")
                .arg(multitokens_core::scripts::REVOKE_ALL)
                .arg(3)
                .arg(&index)
                .arg("mt:{x}:o")
                .arg("mt:{x}:x:u")
                .arg("mt:")
                .arg("")
                .clone(),
            // the activity selector: a script declaring an activity key still cannot write a record
            redis::cmd("EVAL")
                .arg("return redis.call('SET', ARGV[1], ARGV[2])")
                .arg(1)
                .arg(&activity[0])
                .arg(&key)
                .arg(&forged)
                .clone(),
            redis::cmd("EVAL").arg("return redis.call('DEL', ARGV[1])").arg(1).arg(&activity[0]).arg(&key).clone(),
            redis::cmd("SET").arg(format!("{}x", activity[0].replace(":a:", ":t:"))).arg(&forged).clone(),
            redis::cmd("FLUSHALL").clone(),
            redis::cmd("GET").arg("other:key").clone(),
        ];
        if !refresh {
            attempts.push(redis::cmd("PEXPIRE").arg(&key).arg(1).clone());
            attempts.push(redis::cmd("PEXPIRE").arg(&index).arg(1).clone());
        }
        for cmd in attempts {
            let result: redis::RedisResult<redis::Value> = cmd.query(&mut conn);
            let sent = String::from_utf8_lossy(&cmd.get_packed_command()).chars().take(60).collect::<String>();
            assert!(result.is_err(), "{user}: {sent:?} was allowed: {result:?}");
        }
        assert_eq!(stack.redis.cli(&["GET", &key]).trim(), record, "{user}: the record is untouched");
        assert_eq!(stack.redis.cli(&["EXISTS", &index]).trim(), "1", "{user}: the index is untouched");
    }
}

/// Suspend and resume in both builds: the Redis-callout build reads the sealed flag itself, the
/// stock build asks the companion; either way a cached token is refused once the suspend is in the
/// feed, the other device is not, and the resumed token is accepted again (after the negative
/// verdict's TTL) without a new login.
#[test]
fn a_suspended_token_is_refused_and_a_resumed_one_accepted_in_both_builds() {
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start(build);
        let mut host = stack.load(json!({"cache": {"negative_ttl_ms": 200}}));
        let laptop = stack.issue("frank", "laptop", &[]);
        let phone = stack.issue("frank", "phone", &[]);
        for token in [&laptop, &phone] {
            assert!(matches!(get(&mut host, "/api", token), Outcome::Forwarded(_)), "{build:?}");
        }
        let id = serde_json::from_str::<Value>(&stack.cli(&["list", "--user", "frank", "--json"])).unwrap()[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(stack.cli(&["suspend", "--user", "frank", "--id", &id]), "1");
        host.tick();
        assert_invalid(&get(&mut host, "/api", &laptop));
        assert!(matches!(get(&mut host, "/api", &phone), Outcome::Forwarded(_)), "{build:?}: the other device");
        assert_eq!(stack.cli(&["resume", "--user", "frank"]), "1");
        host.tick();
        std::thread::sleep(Duration::from_millis(250));
        assert!(matches!(get(&mut host, "/api", &laptop), Outcome::Forwarded(_)), "{build:?}: resumed");
    }
}
