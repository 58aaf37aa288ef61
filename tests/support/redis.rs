//! `redis-server` processes owned by a test: a single node, or a 3-node Redis Cluster.

use super::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

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
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Creates the users of the shipped ACL file (envoy/redis/users.acl) with `ACL SETUSER`, rule
    /// for rule as written there; returns their names.
    pub fn apply_shipped_acl(&self) -> Vec<String> {
        let text =
            std::fs::read_to_string(super::repo_root().join("envoy/redis/users.acl")).expect("envoy/redis/users.acl");
        let mut users = Vec::new();
        for line in text.lines().filter_map(|l| l.strip_prefix("user ")) {
            let rules: Vec<&str> = line.split_whitespace().collect();
            let mut args = vec!["ACL", "SETUSER"];
            args.extend(&rules);
            let out = self.cli(&args);
            assert_eq!(out.trim(), "OK", "ACL SETUSER {line}: {out}");
            users.push(rules[0].to_string());
        }
        users
    }

    /// The URL of this server for an ACL user.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/0", self.port)
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
        Self::start_nodes(3, 0, "5000")
    }

    /// Three masters with a replica each, failing over a second after a master stops answering.
    pub fn start_with_replicas() -> Self {
        Self::start_nodes(6, 1, "1000")
    }

    fn start_nodes(count: usize, replicas: u32, node_timeout: &str) -> Self {
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::start_with(
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        node_timeout,
                    ],
                    true,
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
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

    /// The node serving `key` as master now.
    pub fn master_of(&self, key: &str) -> usize {
        let live = self.nodes.iter().position(|n| n.cli(&["PING"]).contains("PONG")).unwrap();
        let slot: u16 = self.nodes[live].cli(&["CLUSTER", "KEYSLOT", key]).trim().parse().unwrap();
        let shards = self.nodes[live].cli(&["CLUSTER", "NODES"]);
        for line in shards.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).contains(&slot),
                None => range.parse::<u16>().ok() == Some(slot),
            });
            if owns {
                let port: u16 = fields[1].split('@').next().unwrap().rsplit_once(':').unwrap().1.parse().unwrap();
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Fails the master `index` over: SIGKILLs it and promotes its replica (`CLUSTER FAILOVER
    /// FORCE`, as an operator does when the automatic election does not happen), then waits until
    /// the cluster is whole again.
    pub fn fail_over(&mut self, index: usize) {
        let id = self.nodes[index].cli(&["CLUSTER", "MYID"]).trim().to_string();
        let replica = self
            .nodes
            .iter()
            .position(|n| {
                let role = n.cli(&["ROLE"]);
                let mut lines = role.lines();
                lines.next() == Some("slave")
                    && lines.next() == Some("127.0.0.1")
                    && lines.next() == Some(&self.nodes[index].port.to_string())
            })
            .unwrap_or_else(|| panic!("master {id} has no replica"));
        // what was written before the failure has reached the replica (a failover loses only the
        // writes not replicated yet; the tests fail over after those are)
        assert_eq!(self.nodes[index].cli(&["WAIT", "1", "5000"]).trim(), "1", "the replica is not in sync");
        self.nodes[index].kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.nodes[replica].cli(&["ROLE"]).starts_with("master") {
            assert!(Instant::now() < deadline, "the replica was not promoted");
            let _ = self.nodes[replica].cli(&["CLUSTER", "FAILOVER", "FORCE"]);
            std::thread::sleep(Duration::from_millis(500));
        }
        self.wait_ok(Duration::from_secs(20));
    }

    /// Waits until the live nodes agree the cluster is whole again.
    pub fn wait_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self
            .nodes
            .iter()
            .filter(|n| n.cli(&["PING"]).contains("PONG"))
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not recover");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+cluster://host:port,host:port,host:port`.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", addrs.join(","))
    }
}
