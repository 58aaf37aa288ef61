//! Both filter builds in the proxy-wasm test host (tests/host), held to one behaviour: the stock
//! build over HTTP callouts to the real companion, the Redis-callout build over Redis callouts to
//! a real redis-server, with tokens issued by the real companion. Plus the Redis failure modes,
//! upstream Envoy refusing the Redis-callout build, and a real Redis Cluster behind Envoy's
//! redis_proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../host/mod.rs"]
mod host;
#[path = "../support/mod.rs"]
mod support;

use host::{Decision, Outcome, TestHost, Upstreams};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use support::{companion, wasm_path, CompanionServer, RedisServer};

mod activity;
mod dpop;
mod failures;
mod matrix;
mod records;

const INTERNAL_KEY: &str = "host-internal-key-0123456789";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    Stock,
    Redis,
}

struct Stack {
    redis: RedisServer,
    companion: Option<CompanionServer>,
    build: Build,
    /// The companion's and the CLI's extra environment (keys).
    env: Vec<(&'static str, String)>,
}

impl Stack {
    fn start(build: Build) -> Stack {
        Self::start_with_env(build, Vec::new())
    }

    /// A stack whose companion and CLI get `env` too (a hash key, a signing key).
    fn start_with_env(build: Build, env: Vec<(&'static str, String)>) -> Stack {
        let redis = RedisServer::start();
        let mut vars =
            vec![("MULTITOKENS_ADMIN_KEY", "host-admin-key-0123456789"), ("MULTITOKENS_INTERNAL_KEY", INTERNAL_KEY)];
        vars.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
        let companion = CompanionServer::start(&redis.url(), &vars);
        Stack { redis, companion: Some(companion), build, env }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn upstreams(&self) -> Upstreams {
        let mut u = Upstreams::default();
        if let Some(c) = &self.companion {
            u.http.insert("companion".into(), addr(c.port));
        }
        u.redis.insert("redis".into(), addr(self.redis.port));
        u
    }

    fn config(&self, extra: Value) -> String {
        filter_config(self.build, extra)
    }

    fn load(&self, extra: Value) -> TestHost {
        let wasm = match self.build {
            Build::Stock => wasm_path("multitokens_filter.wasm"),
            Build::Redis => wasm_path("multitokens_filter_redis.wasm"),
        };
        let mut host = TestHost::load(&wasm, &self.config(extra), self.upstreams())
            .unwrap_or_else(|logs| panic!("load failed:\n{logs}"));
        host.tick(); // follow the revocation feed from now on
        host
    }

    fn cli(&self, args: &[&str]) -> String {
        let url = self.redis.url();
        let mut env = vec![("MULTITOKENS_REDIS_URL", url.as_str())];
        env.extend(self.env());
        let out = companion(args, &env, None);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn issue(&self, user: &str, device: &str, extra: &[&str]) -> String {
        let mut args = vec!["--device", device];
        args.extend_from_slice(extra);
        support::issue_token_with(&self.redis.url(), user, &args, &self.env())
    }
}

/// The plugin configuration of the tests for one build, with `extra` fields set.
fn filter_config(build: Build, extra: Value) -> String {
    let mut config = json!({
        "exclude": [{"path": "/healthz"}],
        "required_scopes": [{"prefix": "/admin/", "scopes": ["admin"]}],
        "cache": {"ttl_ms": 600000},
    });
    match build {
        // the test host performs callouts synchronously, so no long polls here: those are
        // tested through real Envoy (tests/envoy_e2e/)
        Build::Stock => {
            config["companion"] = json!({"cluster": "companion", "api_key": INTERNAL_KEY});
            config["revocation_wait_ms"] = json!(0);
        }
        Build::Redis => config["redis"] = json!({"cluster": "redis", "timeout_ms": 500}),
    }
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config.to_string()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn get(host: &mut TestHost, path: &str, token: &str) -> Outcome {
    host.request("GET", path, &[("authorization", &format!("Bearer {token}"))])
}

fn assert_invalid(outcome: &Outcome) {
    let r = outcome.reply();
    assert_eq!(r.status, 401, "{outcome:?}");
    assert_eq!(r.json()["detail"], "Invalid token.");
    assert!(r.header("www-authenticate").unwrap().contains("invalid_token"));
}
