//! The API's OpenAPI description: the committed file is what the code generates and what
//! `serve` answers, a real validator accepts it, and a real OpenAPI fuzzer (schemathesis) finds
//! no server error and no response outside it, against the real binary and a real redis-server.

use crate::support::{repo_root, CompanionServer, RedisServer};
use std::process::Command;

const ADMIN: &str = "openapi-admin-key-0123456789";
const INTERNAL: &str = "openapi-internal-key-0123456789";

#[test]
fn the_committed_description_is_generated_and_served() {
    let committed = std::fs::read_to_string(repo_root().join("docs/openapi.json")).unwrap();
    assert_eq!(committed.trim_end(), multitokens::openapi::json(), "docs/openapi.json is stale: run make openapi");
    let redis = RedisServer::start();
    let server = CompanionServer::start(&redis.url(), &[("MULTITOKENS_ADMIN_KEY", ADMIN)]);
    let served = crate::support::http_agent()
        .get(format!("http://127.0.0.1:{}/openapi.json", server.port))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert_eq!(served, multitokens::openapi::json());
    let spec: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
}

fn python(args: &[&str]) -> (bool, String) {
    // schemathesis writes its state under the working directory: a temporary one
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .args(args)
        .env("PYTHONPATH", repo_root().join(".tools/schemathesis"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn openapi_spec_validator_accepts_the_description() {
    let path = repo_root().join("docs/openapi.json");
    let (ok, output) = python(&["-m", "openapi_spec_validator", path.to_str().unwrap()]);
    assert!(ok, "{output}");
}

/// Bounded here (a fixed seed, 15 examples per operation); run longer with
/// `MULTITOKENS_SCHEMATHESIS_EXAMPLES=500`.
#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_description() {
    let redis = RedisServer::start();
    let server = CompanionServer::start(
        &redis.url(),
        &[
            ("MULTITOKENS_ADMIN_KEY", ADMIN),
            ("MULTITOKENS_INTERNAL_KEY", INTERNAL),
            ("MULTITOKENS_INTROSPECT_CLIENTS", "rs:openapi-introspect-0123456789"),
        ],
    );
    let base = format!("http://127.0.0.1:{}", server.port);
    let examples = std::env::var("MULTITOKENS_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".into());
    let token = crate::support::http_call(
        &crate::support::http_agent(),
        "POST",
        &format!("{base}/v1/tokens"),
        &[("authorization", &format!("Bearer {ADMIN}"))],
        Some(serde_json::json!({"user": "fuzz", "device": "laptop"})),
    )
    .body["token"]
        .as_str()
        .unwrap()
        .to_string();
    // each part of the API with the credential it takes
    for (tags, key) in [
        (vec!["admin", "introspect", "health"], ADMIN),
        (vec!["internal"], INTERNAL),
        (vec!["self-service", "ext_authz"], token.as_str()),
    ] {
        let schema = format!("{base}/openapi.json");
        let header = format!("Authorization: Bearer {key}");
        let mut args = vec![
            "-m",
            "schemathesis.cli",
            "run",
            &schema,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "-n",
            &examples,
            "--seed",
            "7",
            "-H",
            &header,
        ];
        for tag in &tags {
            args.extend(["--include-tag", tag]);
        }
        let (ok, output) = python(&args);
        assert!(ok, "schemathesis on {tags:?}:\n{output}");
        assert!(output.contains("passed"), "{output}");
    }
}
