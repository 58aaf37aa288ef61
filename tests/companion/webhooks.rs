//! Signed security webhooks against a real redis-server and `multitokens serve`, received by a
//! Python endpoint that verifies each delivery with the `standardwebhooks` package from PyPI: the
//! events and their fields, retries of a failing endpoint with one `webhook-id`, a delivery
//! finished by a restarted companion after a SIGKILL in its middle, and tampering refused.

use crate::support::{
    companion_metric, free_port, issue_token_with, wait_for_port, CompanionServer, RedisCluster, RedisServer,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "webhook-admin-key-0123456789";
const HASH_KEY: &str = "webhook-pepper-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE";
/// The receiver's secret (the Standard Webhooks example secret).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The Python receiver on a free port, logging to a file.
struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(env: &[(&str, &str)]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("received.jsonl");
        let port = free_port(false);
        let root = crate::support::repo_root();
        let child = Command::new("python3")
            .arg(root.join("tests/clients/webhook_receiver.py"))
            .args([&port.to_string(), log.to_str().unwrap(), SECRET])
            .env("PYTHONPATH", root.join(".tools/python"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for_port(port, Duration::from_secs(10)), "the webhook receiver did not listen");
        Receiver { child, port, log, _dir: dir }
    }

    /// Every delivery received so far.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `done` holds for what was received.
    fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "{what}: received {got:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config file with one endpoint, `app`, at the receiver.
fn config_file(dir: &Path, receiver: &Receiver, extra: &str) -> PathBuf {
    let path = dir.join("multitokens.toml");
    let url = format!("http://127.0.0.1:{}/hooks", receiver.port);
    std::fs::write(&path, format!("[[webhooks]]\nname = \"app\"\nurl = \"{url}\"\nsecrets = [\"{SECRET}\"]\n{extra}"))
        .unwrap();
    path
}

fn env(config: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("MULTITOKENS_ADMIN_KEY", ADMIN.to_string()),
        ("MULTITOKENS_HASH_KEY", HASH_KEY.to_string()),
        ("MULTITOKENS_CONFIG", config.to_str().unwrap().to_string()),
        ("HOSTNAME", "webhook-test-companion".to_string()),
    ]
}

fn serve(redis_url: &str, env: &[(&'static str, String)], port: Option<u16>) -> CompanionServer {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match port {
        Some(p) => CompanionServer::start_on(p, redis_url, &env),
        None => CompanionServer::start(redis_url, &env),
    }
}

/// Waits until the companion has created the endpoint's consumer group (at the stream's end:
/// events before it are not sent).
fn wait_for_group(redis: &RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !redis.cli(&["XINFO", "GROUPS", "mt:audit"]).contains("webhook:app") {
        assert!(Instant::now() < deadline, "no consumer group webhook:app on mt:audit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Validates payloads against docs/openapi.json's `WebhookPayload` with Python's `jsonschema`.
fn assert_match_the_description(payloads: &[Value]) {
    let root = crate::support::repo_root();
    let check = r##"
import json, sys
import jsonschema
doc = json.load(open(sys.argv[1]))
assert set(doc["webhooks"]) == {"token.issued", "token.revoked", "user.logged_out_everywhere", "record.tampered", "token.suspended", "token.resumed"}
schema = {"$ref": "#/components/schemas/WebhookPayload", "components": doc["components"]}
for payload in json.load(sys.stdin):
    jsonschema.Draft202012Validator(schema).validate(payload)
print("ok")
"##;
    let mut child = Command::new("python3")
        .args(["-c", check, root.join("docs/openapi.json").to_str().unwrap()])
        .env("PYTHONPATH", root.join(".tools/python"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(payloads).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn of_type<'a>(got: &'a [Value], kind: &str) -> Vec<&'a Value> {
    got.iter().filter(|d| d["payload"]["type"] == kind).collect()
}

#[test]
fn security_events_arrive_signed_and_a_failing_endpoint_gets_the_same_message_again() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(&[("FAIL_FIRST", "2")]);
    let dir = tempfile::tempdir().unwrap();
    let env = env(&config_file(dir.path(), &receiver, ""));
    let server = serve(&redis.url(), &env, None);
    wait_for_group(&redis);
    // every series is there, at 0, before the first event
    for series in [
        "multitokens_companion_webhook_deliveries_total{endpoint=\"app\",outcome=\"dropped\"}",
        "multitokens_companion_webhook_retrying{endpoint=\"app\"}",
    ] {
        assert_eq!(companion_metric(server.port, series), 0, "{series}");
    }
    let cli_env = [("MULTITOKENS_HASH_KEY", HASH_KEY)];
    let token = issue_token_with(&redis.url(), "alice", &["--device", "phone"], &cli_env);
    let second = issue_token_with(&redis.url(), "alice", &["--device", "laptop"], &cli_env);
    let out = crate::support::companion(
        &["revoke-all", "--user", "alice"],
        &[("MULTITOKENS_REDIS_URL", &redis.url()), ("MULTITOKENS_HASH_KEY", HASH_KEY)],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let got = receiver.wait_for("two logins and a logout everywhere, delivered", |got| {
        got.iter().filter(|d| d["answer"] == 204).count() == 3
    });
    // the first message failed twice (500), then was taken: three attempts, one webhook-id
    let first_id = got[0]["webhook_id"].as_str().unwrap();
    assert!(first_id.starts_with("msg_"), "{first_id}");
    let answers: Vec<&Value> = got.iter().filter(|d| d["webhook_id"] == first_id).map(|d| &d["answer"]).collect();
    assert_eq!(answers, [&Value::from(500), &Value::from(500), &Value::from(204)]);
    for d in &got {
        assert_eq!(d["verified"], true, "standardwebhooks verifies every delivery: {d}");
        assert_eq!(d["tampered_refused"], true, "and refuses it tampered: {d}");
        let text = d["payload"].to_string();
        assert!(!text.contains(&token) && !text.contains(&second), "never a token in a payload: {text}");
    }
    let issued = of_type(&got, "token.issued");
    let firsts: Vec<(&Value, &Value)> = issued
        .iter()
        .filter(|d| d["answer"] == 204)
        .map(|d| (&d["payload"]["data"]["device"], &d["payload"]["data"]["first_device"]))
        .collect();
    assert_eq!(firsts, [(&Value::from("phone"), &Value::from(true)), (&Value::from("laptop"), &Value::from(false))]);
    let everywhere = of_type(&got, "user.logged_out_everywhere");
    assert_eq!(everywhere.len(), 1);
    assert_eq!(everywhere[0]["payload"]["data"]["count"], 2);
    assert_eq!(everywhere[0]["payload"]["data"]["user"], "alice");
    assert_eq!(everywhere[0]["payload"]["data"]["actor"], "cli");
    // each body is what the OpenAPI description's `webhooks` promise, checked by `jsonschema`
    assert_match_the_description(&got.iter().map(|d| d["payload"].clone()).collect::<Vec<_>>());
    let metric = |outcome: &str| {
        companion_metric(
            server.port,
            &format!("multitokens_companion_webhook_deliveries_total{{endpoint=\"app\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!((metric("delivered"), metric("failed")), (3, 2));
}

#[test]
fn a_delivery_cut_by_sigkill_is_finished_by_the_restarted_companion() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(&[("HANG_FIRST", "1")]);
    let dir = tempfile::tempdir().unwrap();
    let env = env(&config_file(dir.path(), &receiver, "events = [\"token.issued\"]\ntimeout_ms = 20000\n"));
    // as the shipped least-privilege Redis user: its ACL allows the consumer-group commands
    redis.apply_shipped_acl();
    let url = redis.url_as("mt-companion", "change-me-companion");
    let server = serve(&url, &env, None);
    let port = server.port;
    wait_for_group(&redis);
    issue_token_with(&redis.url(), "bob", &["--device", "watch"], &[("MULTITOKENS_HASH_KEY", HASH_KEY)]);
    let got = receiver.wait_for("the first attempt in flight", |got| got.len() == 1);
    let id = got[0]["webhook_id"].as_str().unwrap().to_string();
    drop(server); // SIGKILL, mid-delivery: the event was never acknowledged
    let restarted = serve(&url, &env, Some(port));
    let got = receiver.wait_for("the same message delivered after the restart", |got| {
        got.iter().any(|d| d["webhook_id"] == id.as_str() && d["answer"] == 204)
    });
    assert!(got.iter().all(|d| d["verified"] == true), "{got:#?}");
    assert_eq!(got.iter().filter(|d| d["answer"] == 204).count(), 1, "delivered once: {got:#?}");
    assert_eq!(
        companion_metric(
            restarted.port,
            "multitokens_companion_webhook_deliveries_total{endpoint=\"app\",outcome=\"delivered\"}"
        ),
        1
    );
    // the endpoint takes token.issued only: a logout everywhere is not sent to it
    let out = crate::support::companion(
        &["revoke-all", "--user", "bob"],
        &[("MULTITOKENS_REDIS_URL", &redis.url()), ("MULTITOKENS_HASH_KEY", HASH_KEY)],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    issue_token_with(&redis.url(), "bob", &["--device", "ring"], &[("MULTITOKENS_HASH_KEY", HASH_KEY)]);
    let got = receiver.wait_for("the next login", |got| got.iter().any(|d| d["payload"]["data"]["device"] == "ring"));
    assert!(of_type(&got, "user.logged_out_everywhere").is_empty(), "{got:#?}");
    // the audit stream deleted under it: the companion makes its group again, and goes on
    redis.cli(&["DEL", "mt:audit"]);
    wait_for_group(&redis);
    issue_token_with(&redis.url(), "bob", &["--device", "car"], &[("MULTITOKENS_HASH_KEY", HASH_KEY)]);
    receiver.wait_for("a login after the stream was deleted", |got| {
        got.iter().any(|d| d["payload"]["data"]["device"] == "car" && d["answer"] == 204)
    });
}

#[test]
fn a_bad_webhook_setting_stops_serve_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[webhooks]]\nname = \"app\"\nurl = \"ftp://x/\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
    )
    .unwrap();
    let out = crate::support::companion(
        &["serve"],
        &[("MULTITOKENS_CONFIG", path.to_str().unwrap()), ("MULTITOKENS_ADMIN_KEY", ADMIN)],
        None,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("webhooks[0].url") && stderr.lines().count() == 1, "{stderr}");
    std::fs::write(&path, "[[webhooks]]\nname = \"app\"\nurl = \"http://x/\"\nsecret = \"whsec_x\"\n").unwrap();
    let out = crate::support::companion(&["serve"], &[("MULTITOKENS_CONFIG", path.to_str().unwrap())], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("secret"), "{stderr}");
}

#[test]
fn webhooks_are_delivered_from_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let receiver = Receiver::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let env = env(&config_file(dir.path(), &receiver, ""));
    let _server = serve(&cluster.url(), &env, None);
    wait_for_group(&cluster.nodes[cluster.master_of("mt:audit")]);
    issue_token_with(&cluster.url(), "carol", &["--device", "tv"], &[("MULTITOKENS_HASH_KEY", HASH_KEY)]);
    let got = receiver.wait_for("the login's webhook", |got| got.iter().any(|d| d["answer"] == 204));
    assert_eq!(got[0]["verified"], true);
    assert_eq!(got[0]["payload"]["data"]["user"], "carol");
    assert_eq!(got[0]["payload"]["data"]["device"], "tv");
}

#[tokio::test]
async fn an_event_another_companion_left_unacknowledged_is_taken_over_and_handed_out_once() {
    use multitokens::audit::Origin;
    use multitokens::store::IssueRequest;
    let redis = RedisServer::start();
    let store = crate::store_at(&redis.url(), crate::policy(), None);
    store.create_webhook_group("webhook:app").await.unwrap();
    store.create_webhook_group("webhook:app").await.unwrap(); // an existing group is kept
    let issued =
        store.issue(IssueRequest { user: "dave".into(), ..Default::default() }, &Origin::companion()).await.unwrap();
    let mut conn = store.redis().dedicated(Duration::from_millis(100)).await.unwrap();
    let block = Duration::from_millis(100);
    // companion "a" is handed the event and dies before acknowledging it
    let a = store.read_webhook_group(&mut conn, "webhook:app", "a", false, 1, block).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].1.as_ref().map(|r| (r.event.as_str(), r.id.as_str())), Some(("issue", issued.id.as_str())));
    // new events: none for "b"; "a" restarted would see it as its own pending one
    assert!(store.read_webhook_group(&mut conn, "webhook:app", "b", false, 1, block).await.unwrap().is_empty());
    let again = store.read_webhook_group(&mut conn, "webhook:app", "a", true, 1, block).await.unwrap();
    assert_eq!(again.iter().map(|e| &e.0).collect::<Vec<_>>(), vec![&a[0].0]);
    // not yet idle long enough: "b" takes nothing; then it takes the event over, once
    let idle = Duration::from_millis(300);
    assert!(store.claim_webhook_group("webhook:app", "b", idle, 1).await.unwrap().is_empty());
    tokio::time::sleep(idle).await;
    let taken = store.claim_webhook_group("webhook:app", "b", idle, 1).await.unwrap();
    assert_eq!(taken.iter().map(|e| &e.0).collect::<Vec<_>>(), vec![&a[0].0]);
    // "b" retrying it keeps it: still not idle for "c", however long the retries take
    tokio::time::sleep(idle).await;
    store.keep_webhook_entry("webhook:app", "b", &a[0].0).await.unwrap();
    assert!(store.claim_webhook_group("webhook:app", "c", idle, 1).await.unwrap().is_empty(), "b holds it now");
    store.ack_webhook_group("webhook:app", &a[0].0).await.unwrap();
    tokio::time::sleep(idle).await;
    assert!(store.claim_webhook_group("webhook:app", "c", idle, 1).await.unwrap().is_empty(), "acknowledged");
    assert!(store.read_webhook_group(&mut conn, "webhook:app", "b", true, 1, block).await.unwrap().is_empty());
}
