//! The documentation's own examples, run against `scripts/demo.sh` (what `make demo` runs) on free
//! ports: every ```sh block marked `<!-- runs against make demo -->` in README.md and docs/ runs in
//! one bash session with the environment the demo's banner exports, and every line's comment is
//! the output it must print (`# {"revoked":1}`, `# alice`, `# 401 {...}`), unless the comment is
//! prose in parentheses. `…` in a stated
//! output stands for any value (or, last in an object or array, for more entries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{free_port, repo_root, wait_for_port};

const MARK: &str = "<!-- runs against make demo -->";
/// The password of the demo Redis's mt-companion user in this test (the demo makes a fresh one).
const DEMO_REDIS_PASSWORD: &str = "doc-examples-redis-password";

/// Where `cargo test` put the companion and the demo app.
fn bin_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_BIN_EXE_multitokens")).parent().unwrap().to_path_buf()
}

/// The demo, as `make demo` starts it, on free ports; stopped (with everything it started) on drop.
struct Demo {
    child: Child,
    ports: [u16; 5],
}

impl Demo {
    fn start() -> Demo {
        let ports = [free_port(false), free_port(false), free_port(false), free_port(false), free_port(false)];
        let names = ["DEMO_PORT", "DEMO_REDIS_PORT", "DEMO_COMPANION_PORT", "DEMO_APP_PORT", "DEMO_ADMIN_PORT"];
        let mut cmd = Command::new("setsid");
        let log = std::fs::File::create(std::env::temp_dir().join("multitokens-doc-examples-demo.log")).unwrap();
        cmd.arg("bash")
            .arg(repo_root().join("scripts/demo.sh"))
            .current_dir(repo_root())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (name, port) in names.iter().zip(ports) {
            cmd.env(name, port.to_string());
        }
        cmd.env("DEMO_BIN_DIR", bin_dir());
        cmd.env("DEMO_HASH_KEY", support::TEST_HASH_KEY);
        cmd.env("DEMO_SIGNING_KEY", support::TEST_SIGNING_KEY);
        cmd.env("DEMO_REDIS_PASSWORD", DEMO_REDIS_PASSWORD);
        if support::Build::under_test() == support::Build::Native {
            cmd.env("FILTER", "native"); // make demo FILTER=native
        }
        let child = cmd.spawn().expect("scripts/demo.sh");
        let demo = Demo { child, ports };
        assert!(wait_for_port(ports[0], Duration::from_secs(60)), "the demo did not start");
        std::thread::sleep(Duration::from_millis(1500)); // the filters follow the revocation feed
        demo
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGINT to the demo's process group: demo.sh stops everything it started
        let _ = Command::new("kill").args(["-INT", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

/// One logical line of an example (continuations joined) and the output its comment states.
struct Example {
    command: String,
    expected: Option<String>,
}

/// The marked blocks of a document.
fn marked_blocks(text: &str) -> Vec<Vec<Example>> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        rest = &rest[at + MARK.len()..];
        let start = rest.find("```sh\n").expect("a ```sh block follows the mark") + 6;
        let end = rest[start..].find("```").unwrap() + start;
        blocks.push(examples(&rest[start..end]));
        rest = &rest[end..];
    }
    blocks
}

fn examples(block: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        // a comment starts at " # " outside quotes (the examples keep it simple)
        let (command, comment) = match full.find("  # ").or_else(|| full.find(" # ")) {
            Some(i) => (full[..i].to_string(), Some(full[i..].trim_start().trim_start_matches('#').trim().to_string())),
            None => (full.clone(), None),
        };
        // a comment states the output, unless it is prose in parentheses
        let expected = comment.filter(|c| !c.starts_with('('));
        if !command.trim().is_empty() {
            out.push(Example { command, expected });
        }
    }
    out
}

/// `…` as a JSON value: any value; as the last entry of an object or array: more entries.
fn matches(expected: &Value, got: &Value) -> bool {
    match (expected, got) {
        (Value::String(s), _) if s == "…" => true,
        (Value::String(s), Value::String(g)) if s.ends_with('…') => g.starts_with(s.trim_end_matches('…')),
        (Value::Object(e), Value::Object(g)) => {
            let open = e.contains_key("…");
            e.iter().filter(|(k, _)| *k != "…").all(|(k, v)| g.get(k).is_some_and(|gv| matches(v, gv)))
                && (open || e.len() == g.len())
        }
        (Value::Array(e), Value::Array(g)) => {
            let open = e.last().is_some_and(|v| v == "…");
            let e: Vec<&Value> = e.iter().filter(|v| *v != "…").collect();
            (if open { g.len() >= e.len() } else { g.len() == e.len() })
                && e.iter().zip(g).all(|(ev, gv)| matches(ev, gv))
        }
        _ => expected == got,
    }
}

/// The stated output as JSON: bare `…` become strings, `,…}` / `,…]` an open end.
fn expected_json(text: &str) -> Option<Value> {
    let quoted = text.replace(",…}", ",\"…\":\"…\"}").replace(",…]", ",\"…\"]").replace(":…", ":\"…\"");
    serde_json::from_str(&quoted).ok()
}

fn check(expected: &str, output: &str) -> Result<(), String> {
    let output = output.trim();
    // `401 {json}`: the status line of `curl -i`, then the body
    if let Some((status, body)) =
        expected.split_once(' ').filter(|(s, _)| s.len() == 3 && s.chars().all(|c| c.is_ascii_digit()))
    {
        let status_line = output.lines().next().unwrap_or("");
        if !status_line.contains(status) {
            return Err(format!("status line {status_line:?}, expected {status}"));
        }
        let last = output.lines().last().unwrap_or("");
        return check(body, last);
    }
    if let Some(e) = expected_json(expected) {
        let got: Value = serde_json::from_str(output).map_err(|_| format!("not JSON: {output:?}"))?;
        return if matches(&e, &got) { Ok(()) } else { Err(format!("got {got}")) };
    }
    let ok = match expected.strip_suffix('…') {
        Some(prefix) => output.starts_with(prefix),
        None => output == expected,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("got {output:?}"))
    }
}

#[test]
fn the_documented_examples_work_against_the_demo() {
    let demo = Demo::start();
    let [listen, redis, companion, _, _] = demo.ports;
    // the demo's Redis runs the shipped users, the default one off: nothing gets in without a password
    let anonymous = Command::new("redis-cli").args(["-p", &redis.to_string(), "ping"]).output().unwrap();
    let answer = String::from_utf8_lossy(&anonymous.stdout).to_string() + &String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        answer.contains("NOAUTH") || answer.contains("uthentication"),
        "the demo's Redis let an anonymous client in: {answer}"
    );
    let mut blocks = Vec::new();
    for doc in ["README.md", "docs/companion.md"] {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        let found = marked_blocks(&text);
        assert!(!found.is_empty(), "{doc} has no example marked to run");
        blocks.extend(found.into_iter().map(|b| (doc, b)));
    }
    for (doc, block) in blocks {
        let mut script = String::from("set -u\n");
        for (i, e) in block.iter().enumerate() {
            let command = e
                .command
                .replace("127.0.0.1:10000", &format!("127.0.0.1:{listen}"))
                .replace("127.0.0.1:18080", &format!("127.0.0.1:{companion}"));
            script.push_str(&format!("echo '@@@{i}'\n{command}\necho\n"));
        }
        script.push_str("echo '@@@end'\n");
        let root = repo_root();
        let mut bash = Command::new("bash")
            .env(
                "PATH",
                format!(
                    "{}:{}:{}",
                    bin_dir().display(),
                    root.join(".tools/bin").display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .env("MULTITOKENS_REDIS_URL", format!("redis://mt-companion:{DEMO_REDIS_PASSWORD}@127.0.0.1:{redis}/0"))
            .env("MULTITOKENS_ADMIN_KEY", "demo-admin-key-change-me-please")
            .env("MULTITOKENS_HASH_KEY", support::TEST_HASH_KEY)
            .env("MULTITOKENS_SIGNING_KEY", support::TEST_SIGNING_KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        bash.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = bash.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            stdout.contains("@@@end"),
            "{doc}: the block did not run to its end:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut checked = 0;
        for (i, e) in block.iter().enumerate() {
            let Some(expected) = &e.expected else { continue };
            let from = stdout.find(&format!("@@@{i}\n")).unwrap() + format!("@@@{i}\n").len();
            let to = stdout[from..].find("@@@").unwrap() + from;
            if let Err(why) = check(expected, &stdout[from..to]) {
                panic!("{doc}: `{}` should print {expected}: {why}", e.command.trim());
            }
            checked += 1;
        }
        assert!(checked >= 2, "{doc}: only {checked} outputs were checked");
    }
}
