//! Real services for integration tests: `redis-server` on free loopback ports with their own temp
//! dirs, a 3-node Redis Cluster, and the companion binary. Nothing here touches a fixed port or a
//! database it did not create.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A free loopback port (and, for cluster nodes, its bus port +10000 too).
pub fn free_port(with_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = listener.local_addr().unwrap().port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts connections on the port.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A `redis-server` process owned by the test.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a standalone server.
    pub fn start() -> Self {
        Self::start_with(&[], false)
    }

    /// Starts a server with extra arguments.
    pub fn start_with(extra: &[&str], cluster_node: bool) -> Self {
        let mut dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = free_port(cluster_node);
            let mut args: Vec<String> = vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--dir".into(),
                dir.path().display().to_string(),
                "--save".into(),
                "".into(),
                "--appendonly".into(),
                "no".into(),
                "--daemonize".into(),
                "no".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut server = RedisServer { child: None, port, dir, args };
            if server.spawn() {
                return server;
            }
            dir = server.take_dir();
        }
        panic!("could not start redis-server (is it installed?)");
    }

    fn take_dir(mut self) -> TempDir {
        self.kill();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            let pong = self.cli(&["PING"]);
            if pong.contains("PONG") || pong.contains("NOAUTH") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs `redis-cli` against this server and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &self.port.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A synchronous client connection for inspecting what the code under test wrote.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    /// Stops the server (it can be started again on the same port).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        assert!(self.spawn(), "redis-server did not restart");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-master Redis Cluster on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled nodes and joins them with `redis-cli --cluster create`.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(
                    &["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"],
                    true,
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = nodes.iter().all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    /// `redis+cluster://host:port,host:port,host:port`.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", addrs.join(","))
    }
}

/// The companion binary built by cargo for this test run.
pub fn companion_bin() -> &'static str {
    env!("CARGO_BIN_EXE_multitokens")
}

/// Runs the companion CLI with a clean MULTITOKENS_* environment plus `env`.
pub fn companion(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(companion_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("MULTITOKENS_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn companion");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// A `multitokens serve` process on a free port.
pub struct CompanionServer {
    child: Child,
    pub port: u16,
}

impl CompanionServer {
    /// Starts `serve` against a Redis URL with extra environment.
    pub fn start(redis_url: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(false), redis_url, env)
    }

    /// Starts `serve` on a given port (to restart it where it was).
    pub fn start_on(port: u16, redis_url: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(companion_bin());
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("MULTITOKENS_REDIS_URL", redis_url)
            .env("MULTITOKENS_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn companion serve");
        assert!(wait_for_port(port, Duration::from_secs(10)), "companion did not listen");
        CompanionServer { child, port }
    }

    /// Base URL of the API.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for CompanionServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository root.
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A built filter, e.g. `multitokens_filter.wasm`; fails clearly when `make wasm` has not run.
pub fn wasm_path(name: &str) -> std::path::PathBuf {
    let path = repo_root().join("target/wasm32-wasip1/wasm-release").join(name);
    assert!(path.exists(), "{} is missing: run `make wasm` (make test does)", path.display());
    path
}

/// The Envoy binary: `$ENVOY_BIN`, else `.tools/bin/envoy` (installed by `make tools`).
pub fn envoy_bin() -> std::path::PathBuf {
    let path = std::env::var_os("ENVOY_BIN").map(std::path::PathBuf::from).unwrap_or_else(|| repo_root().join(".tools/bin/envoy"));
    assert!(path.exists(), "{} is missing: run `make tools` (make test does)", path.display());
    path
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    pub log: std::path::PathBuf,
    _dir: TempDir,
}

impl Envoy {
    /// Starts Envoy on a config text and waits for `wait_port` to accept connections.
    pub fn start(config: &str, wait_port: u16, concurrency: u32) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("envoy.log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &concurrency.to_string(), "--log-level", "info", "--disable-hot-restart"])
            .arg("--log-path")
            .arg(&log)
            .current_dir(repo_root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Envoy { child, log, _dir: dir };
        if !wait_for_port(wait_port, Duration::from_secs(30)) {
            let _ = envoy.child.kill();
            panic!("envoy did not start:\n{}", envoy.log_text());
        }
        envoy
    }

    /// Envoy's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether Envoy is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `envoy --mode validate` on a config text; returns (success, output).
pub fn envoy_validate(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .arg("--disable-hot-restart")
        .current_dir(repo_root())
        .output()
        .expect("envoy --mode validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The JSON text of a `value: |` block scalar that follows `marker` in a YAML file.
pub fn yaml_block_after(text: &str, marker: &str) -> Option<String> {
    let found = text.find(marker)?;
    let start = text[..found].rfind('\n').map_or(0, |i| i + 1);
    let rest = &text[start..];
    let mut lines = rest.lines();
    let head = lines.next()?;
    let head_indent = head.len() - head.trim_start().len();
    let mut block = Vec::new();
    let mut indent = None;
    for line in lines {
        if line.trim().is_empty() {
            block.push(String::new());
            continue;
        }
        let this = line.len() - line.trim_start().len();
        if this <= head_indent {
            break;
        }
        let i = *indent.get_or_insert(this);
        block.push(line.get(i..).unwrap_or(line.trim_start()).to_string());
    }
    Some(block.join("\n"))
}

/// An HTTP client that reports every status instead of failing on 4xx/5xx.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// An HTTP answer: status, JSON body (`Null` when empty, a string when not JSON) and challenge.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub body: serde_json::Value,
    pub challenge: Option<String>,
}

/// Sends a request with optional extra headers and a JSON body.
pub fn http_call(agent: &ureq::Agent, method: &str, url: &str, headers: &[(&str, &str)], body: Option<serde_json::Value>) -> HttpReply {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = match body {
        Some(b) => agent.run(req.header("content-type", "application/json").body(b.to_string()).unwrap()),
        None => agent.run(req.body(()).unwrap()),
    }
    .unwrap();
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    let text = response.into_body().read_to_string().unwrap_or_default();
    let body =
        if text.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)) };
    HttpReply { status, body, challenge }
}

/// envoy/envoy.yaml with its listener and admin ports moved and its wasm file replaced.
pub fn demo_envoy_yaml(wasm: &std::path::Path, listen: u16, admin: u16) -> String {
    std::fs::read_to_string(repo_root().join("envoy/envoy.yaml"))
        .unwrap()
        .replace("filename: target/wasm32-wasip1/wasm-release/multitokens_filter.wasm", &format!("filename: {}", wasm.display()))
        .replace("port_value: 10000", &format!("port_value: {listen}"))
        .replace("port_value: 19901", &format!("port_value: {admin}"))
}

/// Runs Envoy on a config that it is expected to refuse; returns (exited successfully, stderr).
pub fn envoy_run_expecting_exit(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(envoy_bin())
        .arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "--concurrency", "1"])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // a config Envoy accepts would run forever: give up after 30 s
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            return (status.success(), stderr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    (true, "Envoy kept running: it accepted the configuration".into())
}
