//! The companion binary: one CLI run, a token issued through it, or `serve` on a free port.

use super::{free_port, wait_for_port};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The companion binary built by cargo for this test run.
/// The hash key of the test stacks built from the shipped configs (companion and filters alike).
pub const TEST_HASH_KEY: &str = "e2e-Q9mTzR4wLk7pN1sYbC8eHj3uGd6aVq0oWi5rZtE-hash";

/// The record signing key of the test stacks (a seed from `multitokens keygen --signing`; test-only).
pub const TEST_SIGNING_KEY: &str = "_BdNUo1RQweo72UX4siHEp3FtdzIjnYNd8U0XQcRGiE";
/// Its public half.
pub const TEST_PUBLIC_KEY: &str = "6gfe-VXc6_TdKo_ni1aDQZIClIit-IybrlMAEX2YNms";

/// The path of the companion binary.
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
            .stderr(if std::env::var_os("MT_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() });
        let child = cmd.spawn().expect("spawn companion serve");
        assert!(wait_for_port(port, Duration::from_secs(10)), "companion did not listen");
        CompanionServer { child, port }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// Issues a token with the CLI (`issue --user <user>` plus `args`) into the Redis at `redis_url`.
pub fn issue_token(redis_url: &str, user: &str, args: &[&str]) -> String {
    issue_token_with(redis_url, user, args, &[])
}

/// [`issue_token`] with extra environment (a hash key, say).
pub fn issue_token_with(redis_url: &str, user: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["issue", "--user", user];
    all.extend_from_slice(args);
    let mut vars = vec![("MULTITOKENS_REDIS_URL", redis_url)];
    vars.extend_from_slice(env);
    let out = companion(&all, &vars, None);
    assert!(out.status.success(), "issue {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The metrics text of the companion on `port` (`GET /metrics`).
pub fn companion_metrics(port: u16) -> String {
    super::http_agent()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap()
}

/// One sample of the companion's metrics (the line's value after `series `); fails the test when
/// the series is not there.
pub fn companion_metric(port: u16, series: &str) -> u64 {
    let text = companion_metrics(port);
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse::<u64>().unwrap())
        .unwrap_or_else(|| panic!("no {series} in the companion's metrics:\n{text}"))
}
