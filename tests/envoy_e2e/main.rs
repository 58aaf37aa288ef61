//! End to end through real Envoy 1.40 with the real companion, the demo app and a real redis-server,
//! each on free ports. The Envoy config is envoy/envoy.yaml with its ports rewritten, so the shipped
//! example is what is tested. One suite, two builds: the stock wasm filter (V8), or with
//! `MULTITOKENS_FILTER_BUILD=native` the native dynamic module with the same plugin JSON (`make test`
//! runs both).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{
    free_port, wait_for_port, Build, CompanionServer, Envoy, EnvoyConfig, HttpReply, RedisServer, TEST_HASH_KEY,
};

mod activity;
mod batching;
mod dpop;
mod ext_authz;
mod faults;
mod hostile;
mod lenient;
mod load;
mod matrix;
mod reload;

const ADMIN_KEY: &str = "e2e-admin-key-0123456789abcdef";

const INTERNAL_KEY: &str = "demo-internal-key-change-me";

/// The Redis behind a stack: one node, or a cluster.
enum Store {
    Single(RedisServer),
    Cluster(support::RedisCluster),
}

impl Store {
    fn url(&self) -> String {
        match self {
            Store::Single(r) => r.url(),
            Store::Cluster(c) => c.url(),
        }
    }
}

struct Stack {
    store: Store,
    companion: Option<CompanionServer>,
    companion_port: u16,
    app_port: u16,
    app: Child,
    envoy: Envoy,
    port: u16,
    admin_port: u16,
    agent: ureq::Agent,
    config: EnvoyConfig,
    /// Extra environment of the companion (kept across restarts).
    companion_env: Vec<(&'static str, String)>,
}

impl Stack {
    /// Starts the stack; `patch` edits the filter's plugin configuration. Failed-attempt
    /// throttling is taken out (these tests send many refused tokens from one address) except
    /// where a test puts it back.
    fn start(patch: impl Fn(&mut Value)) -> Stack {
        Self::start_with(
            |c| {
                c.as_object_mut().unwrap().remove("throttle");
                patch(c)
            },
            |config| config,
        )
    }

    /// Starts the stack; `patch` edits the plugin configuration, `edit` the rest of the Envoy config.
    fn start_with(patch: impl Fn(&mut Value), edit: impl Fn(EnvoyConfig) -> EnvoyConfig) -> Stack {
        Self::start_on(RedisServer::start(), patch, edit)
    }

    /// Starts the stack on a given Redis.
    fn start_on(redis: RedisServer, patch: impl Fn(&mut Value), edit: impl Fn(EnvoyConfig) -> EnvoyConfig) -> Stack {
        Self::start_on_store(Store::Single(redis), patch, edit)
    }

    /// Starts the stack on a given Redis or Redis Cluster.
    fn start_on_store(store: Store, patch: impl Fn(&mut Value), edit: impl Fn(EnvoyConfig) -> EnvoyConfig) -> Stack {
        Self::start_full(store, Vec::new(), patch, edit)
    }

    /// Starts the stack on a given store, with extra companion environment.
    fn start_full(
        store: Store,
        companion_env: Vec<(&'static str, String)>,
        patch: impl Fn(&mut Value),
        edit: impl Fn(EnvoyConfig) -> EnvoyConfig,
    ) -> Stack {
        let companion_port = free_port(false);
        let companion = Self::companion(&store.url(), companion_port, &companion_env);
        let app_port = free_port(false);
        let app = Command::new(env!("CARGO_BIN_EXE_multitokens-demo-app"))
            .env("DEMO_APP_LISTEN", format!("127.0.0.1:{app_port}"))
            .env("MULTITOKENS_URL", format!("http://127.0.0.1:{companion_port}"))
            .env("MULTITOKENS_ADMIN_KEY", ADMIN_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for_port(app_port, Duration::from_secs(10)));
        let (port, admin_port) = (free_port(false), free_port(false));
        let config = edit(
            EnvoyConfig::load("envoy/envoy.yaml")
                .keyed(TEST_HASH_KEY)
                .edit_plugin(&patch)
                .move_port(10000, port)
                .move_port(19901, admin_port)
                .move_port(18080, companion_port)
                .move_port(18081, app_port)
                .use_build(Build::under_test()),
        );
        let envoy = Envoy::start(&config.to_yaml(), port, 2);
        let stack = Stack {
            store,
            companion: Some(companion),
            companion_port,
            app_port,
            app,
            envoy,
            port,
            admin_port,
            agent: support::http_agent(),
            config,
            companion_env,
        };
        // the filter follows the revocation feed within a poll or two
        std::thread::sleep(Duration::from_millis(1200));
        stack
    }

    /// Another Envoy (two workers) with the same configuration on its own ports; returns it and
    /// its listener port.
    fn second_envoy(&self) -> (Envoy, u16) {
        let (port, admin_port) = (free_port(false), free_port(false));
        let config = self.config.clone().move_port(self.port, port).move_port(self.admin_port, admin_port);
        (Envoy::start(&config.to_yaml(), port, 2), port)
    }

    /// The single Redis node of the stack.
    fn redis(&mut self) -> &mut RedisServer {
        match &mut self.store {
            Store::Single(r) => r,
            Store::Cluster(_) => panic!("this stack runs on a cluster"),
        }
    }

    fn url(&self) -> String {
        self.store.url()
    }

    /// Issues a token with the CLI under the stack's hash key.
    fn issue(&self, user: &str, args: &[&str]) -> String {
        support::issue_token_with(
            &self.url(),
            user,
            args,
            &[("MULTITOKENS_HASH_KEY", TEST_HASH_KEY), ("MULTITOKENS_SIGNING_KEY", support::TEST_SIGNING_KEY)],
        )
    }

    /// Logs a token out straight through the companion's API (`DELETE /v1/tokens/current`).
    fn revoke_at_companion(&self, token: &str) -> HttpReply {
        let url = format!("http://127.0.0.1:{}/v1/tokens/current", self.companion_port);
        support::http_call(&self.agent, "DELETE", &url, &[("authorization", &bearer(token))], None)
    }

    fn companion(redis_url: &str, port: u16, extra: &[(&'static str, String)]) -> CompanionServer {
        // the key of the shipped config's filter; a test's own keys come after and win
        let mut env = vec![
            ("MULTITOKENS_ADMIN_KEY", ADMIN_KEY),
            ("MULTITOKENS_INTERNAL_KEY", INTERNAL_KEY),
            ("MULTITOKENS_HASH_KEY", TEST_HASH_KEY),
            ("MULTITOKENS_SIGNING_KEY", support::TEST_SIGNING_KEY),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        CompanionServer::start_on(port, redis_url, &env)
    }

    /// Restarts the companion on its port with another extra environment.
    fn restart_companion(&mut self, env: Vec<(&'static str, String)>) {
        self.companion = None;
        self.companion_env = env;
        self.companion = Some(Self::companion(&self.url(), self.companion_port, &self.companion_env));
    }

    /// Restarts Envoy sending the application's traffic to another upstream on `port`.
    fn route_app_to(&mut self, port: u16) {
        self.config = self.config.clone().move_port(self.app_port, port);
        self.app_port = port;
        self.restart_envoy(|_| {});
    }

    /// Restarts Envoy on its ports with the plugin configuration edited.
    fn restart_envoy(&mut self, patch: impl Fn(&mut Value)) {
        self.config = self.config.clone().edit_plugin(patch);
        self.envoy.stop();
        self.envoy = Envoy::start(&self.config.to_yaml(), self.port, 2);
        std::thread::sleep(Duration::from_millis(1200));
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> HttpReply {
        support::http_call(&self.agent, method, &format!("http://127.0.0.1:{}{}", self.port, path), headers, body)
    }

    fn get(&self, path: &str, auth: Option<&str>) -> HttpReply {
        match auth {
            Some(a) => self.request("GET", path, &[("authorization", a)], None),
            None => self.request("GET", path, &[], None),
        }
    }

    fn login(&self, user: &str, device: &str, scopes: &[&str]) -> String {
        let r = self.request("POST", "/login", &[], Some(json!({"user": user, "device": device, "scopes": scopes})));
        assert_eq!(r.status, 201, "login: {}", r.body);
        r.body["token"].as_str().unwrap().to_string()
    }

    /// Envoy's stats whose names match `filter` (admin `/stats`), as text.
    fn stats(&self, filter: &str) -> String {
        self.agent
            .get(format!("http://127.0.0.1:{}/stats?filter={filter}", self.admin_port))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap()
    }

    /// A filter counter (the filter hands its counts to Envoy on its 1 s tick: wait one); an
    /// unknown name fails the test.
    fn stat(&self, name: &str) -> u64 {
        std::thread::sleep(Duration::from_millis(1100));
        let stat = format!("{}multitokens.{name}", Build::under_test().stat_prefix());
        self.stats(&stat)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{stat}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("Envoy has no stat {stat} (renamed?)"))
    }

    /// Waits until `GET path` with `auth` answers `status`; returns how long it took.
    fn wait_for_status(&self, path: &str, auth: &str, status: u16, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let got = self.get(path, Some(auth)).status;
            if got == status {
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "still {got} after {limit:?}, wanted {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.app.kill();
        let _ = self.app.wait();
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Sends raw request bytes on a fresh connection; the status code of the answer (0: none).
fn raw_status(port: u16, request: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if stream.write_all(request).is_err() {
        return 0;
    }
    let mut head = [0u8; 12];
    match stream.read_exact(&mut head) {
        Ok(()) => std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        Err(_) => 0,
    }
}
