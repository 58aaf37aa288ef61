//! Device activity in both builds: what the filter reports of a token's use (when, from where,
//! with which user agent) reaches `list`, at most once per interval, cleaned, and goes with the
//! token when it is revoked.

use super::*;

/// The tokens of `user` as `list --json` shows them.
fn listed(stack: &Stack, user: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(&stack.cli(&["list", "--user", user, "--json"])).unwrap().as_array().unwrap().clone()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn activity_keys(stack: &Stack) -> Vec<String> {
    stack.redis.cli(&["--scan", "--pattern", "mt:*:a:*"]).lines().map(str::to_string).collect()
}

#[test]
fn activity_is_reported_once_per_interval_cleaned_and_dropped_with_the_token_in_both_builds() {
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start(build);
        let mut host = stack.load(json!({"activity_interval_ms": 1000}));
        let laptop = stack.issue("ada", "laptop", &[]);
        let phone = stack.issue("ada", "phone", &[]);
        let bearer = format!("Bearer {laptop}");
        host.set_client_address("203.0.113.9:51234");
        let forged = "Evil/1.0\r\nX-Injected: 1\u{202e}\u{7}  \tend";
        for _ in 0..2 {
            let r = host.request("GET", "/api", &[("authorization", &bearer), ("user-agent", forged)]);
            assert_eq!(r.upstream_header("x-multitokens-user").as_deref(), Some("ada"), "{build:?}: {:?}", host.logs());
        }
        assert_eq!(host.metric("multitokens.activity_reported"), 1, "{build:?}: two uses in 1 s, one report");
        let seen = listed(&stack, "ada");
        let laptop_entry = seen.iter().find(|t| t["device"] == "laptop").unwrap();
        assert_eq!(laptop_entry["last_address"], "203.0.113.9", "{build:?}: {laptop_entry}");
        assert_eq!(laptop_entry["last_user_agent"], "Evil/1.0 X-Injected: 1 end", "{build:?}");
        assert!(laptop_entry["last_seen"].as_u64().unwrap().abs_diff(unix_now()) <= 5, "{laptop_entry}");
        let phone_entry = seen.iter().find(|t| t["device"] == "phone").unwrap();
        assert!(phone_entry.get("last_seen").is_none(), "{build:?}: an unused token has no activity: {phone_entry}");

        std::thread::sleep(Duration::from_millis(1100));
        host.set_client_address("[2001:db8::7]:443");
        let r = host.request("GET", "/api", &[("authorization", &bearer), ("user-agent", "second/2")]);
        assert!(matches!(r, Outcome::Forwarded(_)), "{build:?}");
        assert_eq!(host.metric("multitokens.activity_reported"), 2, "{build:?}: after the interval, once more");
        let laptop_entry = listed(&stack, "ada").into_iter().find(|t| t["device"] == "laptop").unwrap();
        assert_eq!(laptop_entry["last_address"], "2001:db8::7", "{build:?}");
        assert_eq!(laptop_entry["last_user_agent"], "second/2", "{build:?}");
        assert_eq!(activity_keys(&stack).len(), 1, "{build:?}");

        stack.cli(&["revoke", &laptop]);
        assert!(activity_keys(&stack).is_empty(), "{build:?}: the activity goes with its token");
        host.tick();
        assert_invalid(&get(&mut host, "/api", &laptop));
        host.tick();
        assert!(activity_keys(&stack).is_empty(), "{build:?}: a refused token reports nothing");
        assert_eq!(host.metric("multitokens.callout_error"), 0, "{build:?}: {:?}", host.logs());
        drop(phone);
    }
}

#[test]
fn activity_off_reports_nothing() {
    for build in [Build::Stock, Build::Redis] {
        let stack = Stack::start(build);
        let mut host = stack.load(json!({"activity_interval_ms": 0}));
        let token = stack.issue("bob", "laptop", &[]);
        assert!(matches!(get(&mut host, "/api", &token), Outcome::Forwarded(_)), "{build:?}");
        assert_eq!(host.metric("multitokens.activity_reported"), 0, "{build:?}");
        assert!(activity_keys(&stack).is_empty(), "{build:?}");
        assert!(listed(&stack, "bob")[0].get("last_seen").is_none(), "{build:?}");
    }
}
