//! The CLI contract: output, JSON shapes, exit codes, one-line errors.

use crate::support::{companion, RedisServer};
use serde_json::Value;

fn env(redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![("MULTITOKENS_REDIS_URL", redis.url())]
}

fn run(args: &[&str], env: &[(&'static str, String)], stdin: Option<&str>) -> (i32, String, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = companion(args, &env, stdin);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn assert_one_line_error(code: i32, expected: i32, stderr: &str, needle: &str) {
    assert_eq!(code, expected, "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line on stderr, got: {stderr}");
    assert!(stderr.contains(needle), "{stderr:?} should mention {needle:?}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn issue_whoami_revoke_round_trip() {
    let redis = RedisServer::start();
    let e = env(&redis);
    let (code, token, _) = run(&["issue", "--user", "alice", "--device", "laptop", "--scope", "read"], &e, None);
    assert_eq!(code, 0);
    assert!(token.starts_with("mt_") && !token.contains(char::is_whitespace));
    let (code, user, _) = run(&["whoami", &token], &e, None);
    assert_eq!((code, user.as_str()), (0, "alice"));
    let (code, json, _) = run(&["whoami", "--json", "-"], &e, Some(&format!("{token}\n")));
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["created", "device", "expires_in", "id", "scopes", "user"]);
    assert_eq!(v["scopes"], serde_json::json!(["read"]));
    assert_eq!(run(&["revoke", &token], &e, None).0, 0);
    let (code, _, err) = run(&["whoami", &token], &e, None);
    assert_one_line_error(code, 1, &err, "not valid");
    let (code, _, err) = run(&["revoke", &token], &e, None);
    assert_one_line_error(code, 1, &err, "not valid");
}

#[test]
fn issue_json_list_and_revoke_all() {
    let redis = RedisServer::start();
    let e = env(&redis);
    let (code, out, _) = run(&["issue", "--user", "bob", "--json", "--ttl", "never"], &e, None);
    assert_eq!(code, 0);
    let first: Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["device", "expires_in", "first", "id", "token", "ttl_reset", "user"]);
    assert_eq!((first["first"].clone(), first["expires_in"].clone()), (Value::Bool(true), Value::Null));
    let (_, out, _) = run(&["issue", "--user", "bob", "--device", "phone", "--json", "--ttl", "60"], &e, None);
    let second: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((second["first"].clone(), second["expires_in"].clone()), (Value::Bool(false), Value::from(60)));

    let (code, out, _) = run(&["list", "--user", "bob", "--json"], &e, None);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let row_keys: Vec<&str> = list[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(row_keys, vec!["created", "device", "expires_in", "id", "scopes"]);
    assert_eq!(list[1]["device"], "phone");

    let keep = second["token"].as_str().unwrap();
    let (code, out, _) = run(&["revoke-all", "--user", "bob", "--except", keep, "--json"], &e, None);
    assert_eq!((code, out.as_str()), (0, r#"{"revoked":1,"edges":{"acknowledged":0,"pending":0}}"#));
    let (code, out, _) = run(&["revoke-all", "--user", "bob"], &e, None);
    assert_eq!((code, out.as_str()), (0, "1"));
    let (code, out, _) = run(&["list", "--user", "bob", "--json"], &e, None);
    assert_eq!((code, out.as_str()), (0, "[]"));
}

#[test]
fn settings_come_from_flags_env_and_config_file() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("multitokens.toml");
    std::fs::write(&file, format!("redis_url = \"{}\"\nprefix = \"filepfx\"\ntoken_ttl = 120\n", redis.url())).unwrap();
    let cfg = vec![("MULTITOKENS_CONFIG", file.display().to_string())];
    let (code, out, _) = run(&["issue", "--user", "u", "--json"], &cfg, None);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["token"].as_str().unwrap().starts_with("filepfx_"));
    assert_eq!(v["expires_in"], 120);
    let mut env_over = cfg.clone();
    env_over.push(("MULTITOKENS_PREFIX", "envpfx".into()));
    let (_, token, _) = run(&["issue", "--user", "u"], &env_over, None);
    assert!(token.starts_with("envpfx_"));
    let (_, token, _) = run(&["issue", "--user", "u", "--prefix", "flagpfx"], &env_over, None);
    assert!(token.starts_with("flagpfx_"));
}

#[test]
fn bad_usage_and_config_exit_2_with_one_line() {
    let redis = RedisServer::start();
    let mut e = env(&redis);
    let (code, _, err) = run(&["issue"], &e, None);
    assert_one_line_error(code, 2, &err, "--user");
    let (code, _, err) = run(&["frobnicate"], &e, None);
    assert_one_line_error(code, 2, &err, "frobnicate");
    let (code, _, err) = run(&["issue", "--user", "x", "--ttl", "soon"], &e, None);
    assert_one_line_error(code, 2, &err, "soon");
    e.push(("MULTITOKENS_TOKEN_TTL", "-3".into()));
    let (code, _, err) = run(&["issue", "--user", "x"], &e, None);
    assert_one_line_error(code, 2, &err, "--token-ttl");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mt.toml");
    for (text, named) in
        [("token_ttl = -3", "token_ttl"), ("max_tokens_per_user = 0", "max_tokens_per_user"), ("bogus = 1", "bogus")]
    {
        std::fs::write(&file, text).unwrap();
        let (code, _, err) =
            run(&["issue", "--user", "x"], &[("MULTITOKENS_CONFIG", file.display().to_string())], None);
        assert_one_line_error(code, 2, &err, named);
    }
    let (code, _, err) = run(&["issue", "--user", "x"], &[("MULTITOKENS_CONFIG", "/nonexistent/mt.toml".into())], None);
    assert_one_line_error(code, 2, &err, "/nonexistent/mt.toml");
    let (code, _, err) = run(&["issue", "--user", ""], &env(&redis), None);
    assert_one_line_error(code, 2, &err, "user");
    let (code, _, err) = run(&["serve"], &env(&redis), None);
    assert_one_line_error(code, 2, &err, "MULTITOKENS_ADMIN_KEY");
    let mut e = env(&redis);
    e.push(("MULTITOKENS_RESET_TTL_ON_LOGIN", "maybe".into()));
    let (code, _, err) = run(&["issue", "--user", "x"], &e, None);
    assert_one_line_error(code, 2, &err, "expected true/false, yes/no, on/off or 1/0");
}

#[test]
fn malformed_tokens_exit_1_and_redis_down_exits_3() {
    let mut redis = RedisServer::start();
    let e = env(&redis);
    for bad in ["", "garbage", "mt_AAAA", "Bearer mt_x"] {
        let (code, _, err) = run(&["whoami", bad], &e, None);
        assert_one_line_error(code, 1, &err, "not valid");
    }
    let (_, token, _) = run(&["issue", "--user", "zed"], &e, None);
    redis.kill();
    let (code, _, err) = run(&["whoami", &token], &e, None);
    assert_one_line_error(code, 3, &err, "Redis");
    let (code, _, err) = run(&["issue", "--user", "zed"], &e, None);
    assert_one_line_error(code, 3, &err, "Redis");
    assert!(!err.contains(&token));
    assert!(err.contains(&format!("redis_url {}", redis.url())), "the URL tried is named: {err}");
    // with credentials in the URL, they are masked
    let (code, _, err) = run(
        &["issue", "--user", "zed"],
        &[("MULTITOKENS_REDIS_URL", format!("redis://u:s3cret@127.0.0.1:{}/0", redis.port))],
        None,
    );
    assert_one_line_error(code, 3, &err, "redis://***@127.0.0.1");
    assert!(!err.contains("s3cret"));
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["issue", "whoami", "revoke", "revoke-all", "list", "serve"] {
        let (code, out, _) = run(&[sub, "--help"], &[], None);
        assert_eq!(code, 0);
        assert!(out.contains("Usage: multitokens"), "{sub}: {out}");
    }
    let (code, out, _) = run(&["--help"], &[], None);
    assert_eq!(code, 0);
    assert!(out.contains("MULTITOKENS_REDIS_URL") && out.contains("revoke-all"));
}

#[test]
fn a_hash_key_that_does_not_match_the_store_is_named() {
    let redis = RedisServer::start();
    let mut a = env(&redis);
    a.push(("MULTITOKENS_HASH_KEY", "the-right-pepper-0123456789-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE".into()));
    let (code, token, _) = run(&["issue", "--user", "kim"], &a, None);
    assert_eq!(code, 0);
    let mut b = env(&redis);
    b.push(("MULTITOKENS_HASH_KEY", "a-wrong-pepper-0123456789-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE".into()));
    let (code, _, err) = run(&["whoami", token.trim()], &b, None);
    assert_one_line_error(code, 1, &err, "MULTITOKENS_HASH_KEY does not match the key this store was written with");
    let (code, _, err) = run(&["issue", "--user", "kim"], &b, None);
    assert_one_line_error(code, 2, &err, "MULTITOKENS_HASH_KEY does not match");
    b.push(("MULTITOKENS_ADMIN_KEY", "admin-key-0123456789abcdef".into()));
    b.push(("MULTITOKENS_INTERNAL_KEY", "internal-key-0123456789abcdef".into()));
    let (code, _, err) = run(&["serve", "--listen", "127.0.0.1:0"], &b, None);
    assert_one_line_error(code, 2, &err, "MULTITOKENS_HASH_KEY does not match");
    // the right key still works, and an unknown token is just not valid
    let (code, out, _) = run(&["whoami", token.trim()], &a, None);
    assert_eq!((code, out.trim()), (0, "kim"));
    let (code, _, err) = run(&["whoami", "mt_nope"], &a, None);
    assert!(code == 1 && !err.contains("HASH_KEY"), "{err}");
}

#[test]
fn the_rotation_runbook_from_the_command_line() {
    let redis = RedisServer::start();
    let with = |current: &str, previous: Option<&str>| {
        let mut e = env(&redis);
        e.push(("MULTITOKENS_HASH_KEY", current.to_string()));
        if let Some(p) = previous {
            e.push(("MULTITOKENS_PREVIOUS_HASH_KEYS", p.to_string()));
        }
        e
    };
    let old = with("pepper-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", None);
    let tokens: Vec<String> = (0..3).map(|i| run(&["issue", "--user", &format!("u{i}")], &old, None).1).collect();
    // a new key without the old one: nobody is recognised, and the CLI says why
    let (code, _, err) =
        run(&["whoami", &tokens[0]], &with("pepper-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", None), None);
    assert_one_line_error(code, 1, &err, "MULTITOKENS_HASH_KEY does not match");
    // the new key with the old one still accepted; the sweep moves everyone over
    let rotating = with(
        "pepper-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE",
        Some(" pepper-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE ,"),
    );
    assert_eq!(run(&["whoami", &tokens[0]], &rotating, None).1, "u0");
    let (code, out, err) = run(&["rekey", "--json"], &rotating, None);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (report["scanned"].as_u64(), report["rekeyed"].as_u64(), report["current"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    // the old key dropped: all three still logged in
    let mut retired = with("pepper-two-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", None);
    retired.push(("MULTITOKENS_RETIRED_HASH_KEYS", "pepper-one-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE".into()));
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(run(&["whoami", t], &retired, None).1, format!("u{i}"));
    }
    let (code, _, err) =
        run(&["rekey"], &with("pepper-three-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE", Some("a,b,c,d,e")), None);
    assert_one_line_error(code, 2, &err, "previous_hash_keys");
}

#[test]
fn a_companion_without_the_signing_key_refuses_to_write_into_a_signed_store() {
    let redis = RedisServer::start();
    let (seed, _) = multitokens_core::signing::RecordSigner::generate().unwrap();
    let mut signed = env(&redis);
    signed.push(("MULTITOKENS_SIGNING_KEY", seed));
    let (code, token, err) = run(&["issue", "--user", "sam"], &signed, None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(run(&["whoami", token.trim()], &signed, None).1, "sam");
    let (code, _, err) = run(&["issue", "--user", "sam"], &env(&redis), None);
    assert_one_line_error(code, 2, &err, "MULTITOKENS_SIGNING_KEY is not set, but this store's records are signed");
    // and the new commands: keygen prints keys the settings accept
    let (code, out, _) = run(&["keygen"], &[], None);
    assert_eq!(code, 0);
    assert!(multitokens_core::keyring::check_key_strength(out.trim()).is_ok(), "{out}");
    let (code, out, _) = run(&["keygen", "--signing"], &[], None);
    assert_eq!(code, 0);
    let seed = out.lines().find_map(|l| l.strip_prefix("signing_key=")).unwrap();
    let public = out.lines().find_map(|l| l.strip_prefix("public_key=")).unwrap();
    assert_eq!(multitokens_core::signing::RecordSigner::from_text(seed).unwrap().public_key_text(), public);
}

#[test]
fn suspend_and_resume_from_the_command_line() {
    let redis = RedisServer::start();
    let e = env(&redis);
    let (_, token, _) = run(&["issue", "--user", "erin", "--device", "laptop"], &e, None);
    let (_, out, _) = run(&["list", "--user", "erin", "--json"], &e, None);
    let id = serde_json::from_str::<Value>(&out).unwrap()[0]["id"].as_str().unwrap().to_string();
    assert_eq!(run(&["suspend", "--user", "erin", "--id", &id], &e, None).1, "1");
    let (code, _, err) = run(&["whoami", &token], &e, None);
    assert_one_line_error(code, 1, &err, "not valid");
    let (_, out, _) = run(&["list", "--user", "erin"], &e, None);
    assert!(out.ends_with("\tsuspended"), "{out}");
    let (_, out, _) = run(&["list", "--user", "erin", "--json"], &e, None);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["suspended"], true);
    let (code, _, err) = run(&["suspend", "--user", "erin", "--id", "0000000000000000"], &e, None);
    assert_one_line_error(code, 1, &err, "no live token");
    assert_eq!(run(&["resume", "--user", "erin", "--json"], &e, None).1, r#"{"changed":1}"#);
    assert_eq!(run(&["whoami", &token], &e, None).1, "erin");
}
