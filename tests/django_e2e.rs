//! The Django REST framework example (examples/django) served by gunicorn behind real Envoy with
//! the stock filter, the real companion and a real redis-server: login, an authenticated DRF view,
//! the user's devices, the three logouts, spoofed identity headers, and DRF's usual 401 body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{
    free_port, repo_root, wait_for_port, wasm_path, CompanionServer, Envoy, EnvoyConfig, HttpReply, RedisServer,
    TEST_HASH_KEY,
};

const ADMIN_KEY: &str = "django-admin-key-0123456789";
const INTERNAL_KEY: &str = "demo-internal-key-change-me";

/// gunicorn serving the example, with its own SQLite database (migrated, users seeded).
struct Gunicorn {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Gunicorn {
    fn start(companion_port: u16, extra_env: &[(&str, &str)]) -> Gunicorn {
        let dir = tempfile::tempdir().unwrap();
        let project = repo_root().join("examples/django");
        let tools = repo_root().join(".tools/django");
        assert!(tools.exists(), "{} is missing: run `make tools` (make test does)", tools.display());
        let env = |cmd: &mut Command| {
            cmd.current_dir(&project)
                .env("PYTHONPATH", &tools)
                .env("DJANGO_DB", dir.path().join("db.sqlite3"))
                .env("MULTITOKENS_URL", format!("http://127.0.0.1:{companion_port}"))
                .env("MULTITOKENS_ADMIN_KEY", ADMIN_KEY)
                .envs(extra_env.iter().copied());
        };
        for args in [&["manage.py", "migrate", "-v", "0"][..], &["manage.py", "seed_demo_users"]] {
            let mut cmd = Command::new("python3");
            cmd.args(args);
            env(&mut cmd);
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port(false);
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "gunicorn", "mtdemo.wsgi", "--bind", &format!("127.0.0.1:{port}"), "--workers", "2"]);
        env(&mut cmd);
        let log = std::fs::File::create(dir.path().join("gunicorn.log")).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        assert!(wait_for_port(port, Duration::from_secs(20)), "gunicorn did not start");
        Gunicorn { child, port, _dir: dir }
    }

    /// What the app logged (gunicorn's and Django's loggers write to stderr).
    fn log_text(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("gunicorn.log")).unwrap_or_default()
    }

    /// Runs a manage.py command against this app's database; returns its output.
    fn manage(&self, args: &[&str], extra_env: &[(&str, &str)]) -> String {
        let out = Command::new("python3")
            .arg("manage.py")
            .args(args)
            .current_dir(repo_root().join("examples/django"))
            .env("PYTHONPATH", repo_root().join(".tools/django"))
            .env("DJANGO_DB", self._dir.path().join("db.sqlite3"))
            .envs(extra_env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The companion on a free port (with the keys envoy/envoy.yaml's filter uses).
fn companion(redis: &RedisServer) -> (CompanionServer, u16) {
    let port = free_port(false);
    let server = CompanionServer::start_on(
        port,
        &redis.url(),
        &[
            ("MULTITOKENS_ADMIN_KEY", ADMIN_KEY),
            ("MULTITOKENS_INTERNAL_KEY", INTERNAL_KEY),
            ("MULTITOKENS_HASH_KEY", TEST_HASH_KEY),
            ("MULTITOKENS_SIGNING_KEY", support::TEST_SIGNING_KEY),
        ],
    );
    (server, port)
}

/// Envoy (envoy/envoy.yaml, two workers) in front of the Django app, with `edit` applied.
fn envoy_for(django: &Gunicorn, companion_port: u16, edit: impl FnOnce(EnvoyConfig) -> EnvoyConfig) -> (Envoy, u16) {
    let (port, admin_port) = (free_port(false), free_port(false));
    let config = EnvoyConfig::load("envoy/envoy.yaml")
        .keyed(TEST_HASH_KEY)
        .move_port(10000, port)
        .move_port(19901, admin_port)
        .move_port(18080, companion_port)
        .move_port(18081, django.port)
        .use_wasm(&wasm_path("multitokens_filter.wasm"));
    let envoy = Envoy::start(&edit(config).to_yaml(), port, 2);
    std::thread::sleep(Duration::from_millis(1200)); // the filter follows the feed
    (envoy, port)
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_drf_app_behind_the_filter_logs_in_authenticates_and_logs_out_three_ways() {
    let redis = RedisServer::start();
    let (_companion, companion_port) = companion(&redis);
    let django = Gunicorn::start(companion_port, &[]);
    let (envoy, port) = envoy_for(&django, companion_port, |c| c);
    let agent = support::http_agent();
    let call = |method: &str, path: &str, headers: &[(&str, &str)], body: Option<Value>| -> HttpReply {
        support::http_call(&agent, method, &format!("http://127.0.0.1:{port}{path}"), headers, body)
    };
    let login = |user: &str, device: &str| -> String {
        let r =
            call("POST", "/login", &[], Some(json!({"username": user, "password": "demo-password", "device": device})));
        assert_eq!(r.status, 200, "login: {}", r.body);
        r.body["token"].as_str().unwrap().to_string()
    };
    let bearer = |t: &str| format!("Bearer {t}");

    // DRF's obtain_auth_token answers: a token, or its message for wrong credentials
    let r = call("POST", "/login", &[], Some(json!({"username": "alice", "password": "wrong"})));
    assert_eq!(
        (r.status, r.body.clone()),
        (400, json!({"non_field_errors": ["Unable to log in with provided credentials."]}))
    );
    let laptop = login("alice", "laptop");
    let phone = login("alice", "phone");
    let tablet = login("alice", "tablet");
    let bob = login("bob", "phone");

    // an authenticated DRF view sees the user through Django's RemoteUser machinery
    let r = call("GET", "/api/whoami", &[("authorization", &bearer(&laptop))], None);
    assert_eq!(
        (r.status, r.body["username"].clone(), r.body["device"].clone()),
        (200, json!("alice"), json!("laptop"))
    );
    // spoofed identity headers never reach Django's view of the user
    let r = call(
        "GET",
        "/api/whoami",
        &[("authorization", &bearer(&bob)), ("x-multitokens-user", "alice"), ("X-Multitokens-User", "carol")],
        None,
    );
    assert_eq!((r.status, r.body["username"].clone()), (200, json!("bob")), "{}", r.body);
    let r = call("GET", "/api/whoami", &[("authorization", &bearer(&bob)), ("x_multitokens_user", "alice")], None);
    assert!(r.status == 400 || r.body["username"] == "bob", "underscore spelling: {} {}", r.status, r.body);
    for spoof in [("x-multitokens-user", "alice"), ("x_multitokens_user", "alice")] {
        let r = call("GET", "/api/whoami", &[spoof], None);
        assert_ne!(r.status, 200, "{spoof:?} without a token: {}", r.body);
        assert!(r.body["username"].is_null());
    }
    // no credential: DRF's usual 401 body, from the filter at the edge and from Django itself
    let r = call("GET", "/api/whoami", &[], None);
    assert_eq!((r.status, r.body.clone()), (401, json!({"detail": "Authentication credentials were not provided."})));
    let direct = support::http_call(
        &agent,
        "GET",
        &format!("http://127.0.0.1:{}/api/whoami", django.port),
        &[("x-multitokens-user", "")],
        None,
    );
    assert_eq!(
        (direct.status, direct.body.clone()),
        (401, json!({"detail": "Authentication credentials were not provided."}))
    );
    assert!(direct.challenge.unwrap().starts_with("Bearer"));

    // the user's devices, the current one marked, with when and where each was last used: the
    // laptop's first use above is reported on the filter's next tick (1 s)
    std::thread::sleep(Duration::from_millis(1500));
    let r = call("GET", "/api/devices", &[("authorization", &bearer(&phone)), ("user-agent", "DevicesPage/1.0")], None);
    let devices = r.body.as_array().unwrap();
    assert_eq!(devices.len(), 3);
    assert_eq!(
        devices.iter().filter(|d| d["current"] == true).map(|d| d["device"].clone()).collect::<Vec<_>>(),
        [json!("phone")]
    );
    let laptop_row = devices.iter().find(|d| d["device"] == "laptop").unwrap();
    assert_eq!(laptop_row["last_address"], "127.0.0.1", "{laptop_row}");
    assert!(laptop_row["last_seen"].as_u64().is_some_and(|t| t > 1_700_000_000), "{laptop_row}");
    assert!(laptop_row["last_user_agent"].as_str().is_some_and(|a| !a.is_empty()), "{laptop_row}");
    let tablet_row = devices.iter().find(|d| d["device"] == "tablet").unwrap();
    assert!(tablet_row["last_seen"].is_null(), "never used through Envoy: {tablet_row}");
    // a suspended device is listed as such (and refused)
    let tablet_id = devices.iter().find(|d| d["device"] == "tablet").unwrap()["id"].as_str().unwrap().to_string();
    let suspend = |suspended: bool| {
        let url = format!("http://127.0.0.1:{companion_port}/v1/users/alice/tokens/{tablet_id}");
        let admin = format!("Bearer {ADMIN_KEY}");
        let r = support::http_call(
            &agent,
            "PATCH",
            &url,
            &[("authorization", &admin)],
            Some(json!({"suspended": suspended})),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };
    suspend(true);
    let r = call("GET", "/api/whoami", &[("authorization", &bearer(&tablet))], None);
    assert_eq!((r.status, r.body["detail"].clone()), (401, json!("Invalid token.")));
    let r = call("GET", "/api/devices", &[("authorization", &bearer(&phone))], None);
    let tablet_row = r.body.as_array().unwrap().iter().find(|d| d["device"] == "tablet").unwrap().clone();
    assert_eq!(tablet_row["suspended"], true);
    suspend(false);

    // log out this device: refused on the very next request, the others stay
    let r = call("POST", "/logout", &[("authorization", &bearer(&laptop))], None);
    assert_eq!((r.status, r.body["revoked"].clone()), (200, json!(1)));
    let r = call("GET", "/api/whoami", &[("authorization", &bearer(&laptop))], None);
    assert_eq!((r.status, r.body.clone()), (401, json!({"detail": "Invalid token."})));
    assert_eq!(call("GET", "/api/whoami", &[("authorization", &bearer(&phone))], None).status, 200);
    // log out all other devices
    let r = call("POST", "/logout-others", &[("authorization", &bearer(&phone))], None);
    assert_eq!((r.status, r.body["revoked"].clone()), (200, json!(1)));
    assert_eq!(call("GET", "/api/whoami", &[("authorization", &bearer(&tablet))], None).status, 401);
    assert_eq!(call("GET", "/api/whoami", &[("authorization", &bearer(&phone))], None).status, 200);
    // log out everywhere; bob is untouched
    let r = call("POST", "/logout-all", &[("authorization", &bearer(&phone))], None);
    assert_eq!((r.status, r.body["revoked"].clone()), (200, json!(1)));
    assert_eq!(call("GET", "/api/whoami", &[("authorization", &bearer(&phone))], None).status, 401);
    assert_eq!(call("GET", "/api/whoami", &[("authorization", &bearer(&bob))], None).status, 200);
    drop(envoy);
}

/// The cut-over of docs/migrating-from-djforge-redis-multitokens.md: old DRF-format tokens
/// (`Token <40 hex>`, checked by Django as before) and new ones (`Bearer mt_...`, checked by the
/// filter) side by side, with envoy/migration/legacy-token-route.yaml in front of the catch-all
/// route; the old route never lets an identity header through.
#[test]
fn old_and_new_tokens_work_side_by_side_during_the_cut_over() {
    let legacy = [("DJANGO_LEGACY_TOKENS", "1")];
    let redis = RedisServer::start();
    let (_companion, companion_port) = companion(&redis);
    let django = Gunicorn::start(companion_port, &legacy);
    let created = django.manage(&["drf_create_token", "carol"], &legacy);
    let old = created
        .split_whitespace()
        .find(|w| w.len() == 40 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap()
        .to_string();
    let migration: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("envoy/migration/legacy-token-route.yaml")).unwrap(),
    )
    .unwrap();
    let migration = migration.as_array().unwrap().clone();
    // the old route strips every identity header under every `_` spelling
    let removed: Vec<&str> =
        migration[1]["request_headers_to_remove"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for name in multitokens_core::contract::IDENTITY_HEADERS {
        let dashes = name.matches('-').count();
        for mask in 0..(1u32 << dashes) {
            let mut n = 0;
            let spelling: String = name
                .chars()
                .map(|c| {
                    if c == '-' {
                        n += 1;
                        if mask & (1 << (n - 1)) != 0 {
                            '_'
                        } else {
                            '-'
                        }
                    } else {
                        c
                    }
                })
                .collect();
            assert!(removed.contains(&spelling.as_str()), "{spelling} is not removed");
        }
    }
    let (_envoy, port) = envoy_for(&django, companion_port, |mut c| {
        fn routes(v: &mut Value) -> Option<&mut Vec<Value>> {
            if v.get("routes").is_some_and(Value::is_array) {
                return v.get_mut("routes").and_then(Value::as_array_mut);
            }
            match v {
                Value::Object(m) => m.values_mut().find_map(routes),
                Value::Array(a) => a.iter_mut().find_map(routes),
                _ => None,
            }
        }
        let list = routes(&mut c.0).expect("a route list");
        for (i, route) in migration.iter().enumerate() {
            list.insert(i, route.clone());
        }
        c
    });
    let agent = support::http_agent();
    let call = |headers: &[(&str, &str)]| {
        support::http_call(&agent, "GET", &format!("http://127.0.0.1:{port}/api/whoami"), headers, None)
    };
    // an old token: Django checks it, as before
    let r = call(&[("authorization", &format!("Token {old}"))]);
    assert_eq!((r.status, r.body["username"].clone()), (200, json!("carol")), "{}", r.body);
    // the old route removes identity headers: no claiming an identity past the filter
    let r = call(&[("authorization", &format!("Token {old}")), ("x-multitokens-user", "alice")]);
    assert_eq!(r.body["username"], "carol");
    // old tokens carry no scope: refused on every spelling of a scope-protected path
    for path in ["/api/admin/stats", "/API/Admin/stats", "/api/admin", "/api/%61dmin/stats"] {
        let url = format!("http://127.0.0.1:{port}{path}");
        let r = support::http_call(&agent, "GET", &url, &[("authorization", &format!("Token {old}"))], None);
        assert_eq!(
            (r.status, r.body["detail"].as_str()),
            (403, Some("You do not have permission to perform this action.")),
            "{path}"
        );
    }
    let r = call(&[("authorization", &format!("token {}", "0".repeat(40))), ("x-multitokens-user", "alice")]);
    assert_eq!((r.status, r.body.clone()), (401, json!({"detail": "Invalid token."})));
    // a new token: the filter, as always; a malformed one never reaches Django
    let r = support::http_call(
        &agent,
        "POST",
        &format!("http://127.0.0.1:{port}/login"),
        &[],
        Some(json!({"username": "alice", "password": "demo-password"})),
    );
    let new = r.body["token"].as_str().unwrap().to_string();
    assert_eq!(call(&[("authorization", &format!("Bearer {new}"))]).body["username"], "alice");
    let r = call(&[("authorization", &format!("Bearer {}x", &new[..new.len() - 1]))]);
    assert_eq!((r.status, r.body.clone()), (401, json!({"detail": "Invalid token."})));
    // what is neither goes through the filter: not provided
    let r = call(&[("authorization", "Token abc"), ("x-multitokens-user", "alice")]);
    assert_eq!(r.status, 401, "{}", r.body);
    // "log out everywhere" logs out both kinds
    let second = django.manage(&["drf_create_token", "alice"], &legacy);
    let old_alice = second
        .split_whitespace()
        .find(|w| w.len() == 40 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap()
        .to_string();
    assert_eq!(call(&[("authorization", &format!("Token {old_alice}"))]).body["username"], "alice");
    let url = format!("http://127.0.0.1:{port}/logout-all");
    let r = support::http_call(&agent, "POST", &url, &[("authorization", &format!("Bearer {new}"))], None);
    assert_eq!((r.status, r.body["revoked"].clone()), (200, json!(2)), "{}", r.body);
    assert_eq!(call(&[("authorization", &format!("Token {old_alice}"))]).status, 401);
    assert_eq!(call(&[("authorization", &format!("Bearer {new}"))]).status, 401);
}

#[test]
fn the_app_verifies_the_new_device_webhook_and_logs_it() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let redis = RedisServer::start();
    let companion_port = free_port(false);
    let django = Gunicorn::start(companion_port, &[("MULTITOKENS_WEBHOOK_SECRET", SECRET)]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("multitokens.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nname = \"django\"\nurl = \"http://127.0.0.1:{port}/webhooks/multitokens\"\nsecrets = [\"{SECRET}\"]\n",
            port = django.port
        ),
    )
    .unwrap();
    let _companion = CompanionServer::start_on(
        companion_port,
        &redis.url(),
        &[
            ("MULTITOKENS_ADMIN_KEY", ADMIN_KEY),
            ("MULTITOKENS_HASH_KEY", TEST_HASH_KEY),
            ("MULTITOKENS_CONFIG", config.to_str().unwrap()),
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !redis.cli(&["XINFO", "GROUPS", "mt:audit"]).contains("webhook:django") {
        assert!(std::time::Instant::now() < deadline, "the companion made no consumer group");
        std::thread::sleep(Duration::from_millis(50));
    }
    let agent = support::http_agent();
    let app = |path: &str| format!("http://127.0.0.1:{}{path}", django.port);
    for device in ["laptop", "phone"] {
        let body = json!({"username": "alice", "password": "demo-password", "device": device});
        assert_eq!(support::http_call(&agent, "POST", &app("/login"), &[], Some(body)).status, 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !django.log_text().contains("new device logged in: user=alice device='phone'") {
        assert!(std::time::Instant::now() < deadline, "no new-device line in the app's log:\n{}", django.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(django.log_text().matches("device='phone'").count(), 1, "{}", django.log_text());
    // the first login is the user's first device: no alert for it
    assert!(!django.log_text().contains("device='laptop'"), "{}", django.log_text());
    // a forged or replayed-and-altered message is refused by the verifier
    let r = support::http_call(
        &agent,
        "POST",
        &app("/webhooks/multitokens"),
        &[
            ("webhook-id", "msg_1-0"),
            (
                "webhook-timestamp",
                &std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string(),
            ),
            ("webhook-signature", "v1,AAAA"),
        ],
        Some(json!({"type": "token.issued", "data": {"user": "alice", "device": "evil", "first_device": false}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(!django.log_text().contains("device='evil'"));
}

/// The DRF example's login binds the token to the client's key when the client sends a DPoP proof
/// (made by panva's `dpop` with a `jose` key): through Envoy it then works with proofs only.
#[test]
fn a_dpop_login_through_the_drf_app_binds_the_token() {
    let redis = RedisServer::start();
    let (_companion, companion_port) = companion(&redis);
    let django = Gunicorn::start(companion_port, &[]);
    let (_envoy, port) = envoy_for(&django, companion_port, |c| c);
    let agent = support::http_agent();
    let node = support::dpop_client;
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("key.json");
    let keyfile = keyfile.to_str().unwrap();
    node(&["key", "ES256", keyfile]);
    let base = format!("http://127.0.0.1:{port}");
    let proof = node(&["login", keyfile, &format!("{base}/login")]);
    let login = json!({"username": "alice", "password": "demo-password", "device": "phone"});
    let r = support::http_call(&agent, "POST", &format!("{base}/login"), &[("dpop", &proof)], Some(login.clone()));
    assert_eq!(r.status, 200, "login: {}", r.body);
    let token = r.body["token"].as_str().unwrap().to_string();
    let url = format!("{base}/api/whoami");
    let r = support::http_call(&agent, "GET", &url, &[("authorization", &format!("Token {token}"))], None);
    assert_eq!(r.status, 401, "a bound token without a proof: {}", r.body);
    let proofs: Value = serde_json::from_str(&node(&["proofs", keyfile, &url, &token, "other"])).unwrap();
    let headers = [("authorization", format!("DPoP {token}")), ("dpop", proofs["valid_0"].as_str().unwrap().into())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = support::http_call(&agent, "GET", &url, &headers, None);
    assert_eq!((r.status, r.body["username"].clone()), (200, json!("alice")), "{}", r.body);
    // a proof made for another request logs nobody in
    let stale = proofs["valid_1"].as_str().unwrap();
    let r = support::http_call(&agent, "POST", &format!("{base}/login"), &[("dpop", stale)], Some(login));
    assert_eq!(r.status, 400, "{}", r.body);
}
