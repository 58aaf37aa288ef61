//! Real Envoy: the built filters, the binary, running and validating configs, and the repository's
//! Envoy YAML read and edited as data (never as text).

use super::{repo_root, wait_for_port};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A built filter, e.g. `multitokens_filter.wasm`; fails clearly when `make wasm` has not run.
pub fn wasm_path(name: &str) -> std::path::PathBuf {
    let path = repo_root().join("target/wasm32-wasip1/wasm-release").join(name);
    assert!(path.exists(), "{} is missing: run `make wasm` (make test does)", path.display());
    path
}

/// Which filter build a test binary runs against: `MULTITOKENS_FILTER_BUILD=native` runs the same
/// suite against the native dynamic module (`make module`), anything else against the wasm build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// `multitokens_filter.wasm` in Envoy's V8.
    Wasm,
    /// `libmultitokens_filter.so`, an Envoy dynamic module.
    Native,
}

impl Build {
    /// The build under test.
    pub fn under_test() -> Build {
        match std::env::var("MULTITOKENS_FILTER_BUILD").as_deref() {
            Ok("native") => Build::Native,
            _ => Build::Wasm,
        }
    }

    /// How many edges of the feed one Envoy (two workers) counts as: at least a wasm VM per worker
    /// (and one on the main thread); exactly one process for the native module.
    pub fn edges_per_envoy(self) -> u64 {
        match self {
            Build::Wasm => 2,
            Build::Native => 1,
        }
    }

    /// The prefix of the filter's stats in `/stats/prometheus` (`<prefix><name>{`).
    pub fn prometheus_prefix(self) -> &'static str {
        match self {
            // Envoy exports the wasm custom namespace without its prefix
            Build::Wasm => "multitokens_",
            Build::Native => "envoy_dynamicmodulescustom_multitokens_",
        }
    }

    /// The prefix Envoy gives the filter's stats (`<prefix>multitokens.<name>`).
    pub fn stat_prefix(self) -> &'static str {
        match self {
            Build::Wasm => "wasmcustom.",
            Build::Native => "dynamicmodulescustom.",
        }
    }
}

/// The folder Envoy loads the native module from (`make module`).
pub fn native_dir() -> std::path::PathBuf {
    let dir = repo_root().join("target/native");
    assert!(dir.join("libmultitokens_filter.so").exists(), "{} has no module: run `make module`", dir.display());
    dir
}

/// The Envoy binary: `$ENVOY_BIN`, else `.tools/bin/envoy` (installed by `make tools`).
pub fn envoy_bin() -> std::path::PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/bin/envoy"));
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
        Self::start_with_args(config, wait_port, concurrency, &[])
    }

    /// Starts Envoy with extra command-line arguments.
    pub fn start_with_args(config: &str, wait_port: u16, concurrency: u32, extra: &[&str]) -> Envoy {
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
            .args(extra)
            .current_dir(repo_root())
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", repo_root().join("target/native"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Envoy { child, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        // Envoy's own listener, not something else on the port: Envoy still running once it answers
        while !wait_for_port(wait_port, Duration::from_millis(200)) || !envoy.serving() {
            if Instant::now() > deadline || matches!(envoy.child.try_wait(), Ok(Some(_))) {
                let _ = envoy.child.kill();
                panic!("envoy did not start on port {wait_port}:\n{}", envoy.log_text());
            }
        }
        envoy
    }

    /// Whether this Envoy is up and has started its workers (so what answers on its listener's
    /// port is this Envoy, not another process that held the port first).
    fn serving(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None)) && self.log_text().contains("starting workers")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops Envoy and waits until it is gone (its ports are free again).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether Envoy is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
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
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", repo_root().join("target/native"))
        .output()
        .expect("envoy --mode validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
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

/// An Envoy config read with a YAML library and edited as data: ports moved, the wasm file
/// pointed at the fresh build, the plugin configuration patched, any field set.
#[derive(Clone, Debug)]
pub struct EnvoyConfig(pub Value);

/// Calls `f` on every mapping in the tree.
fn each_map(value: &mut Value, f: &mut dyn FnMut(&mut serde_json::Map<String, Value>)) {
    match value {
        Value::Object(map) => {
            f(map);
            for v in map.values_mut() {
                each_map(v, f);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| each_map(v, f)),
        _ => {}
    }
}

impl EnvoyConfig {
    /// Parses YAML text.
    pub fn parse(text: &str) -> EnvoyConfig {
        EnvoyConfig(serde_yaml_ng::from_str(text).expect("Envoy config is YAML"))
    }

    /// Reads a file of the repository, e.g. `envoy/envoy.yaml`.
    pub fn load(relative: &str) -> EnvoyConfig {
        Self::parse(&std::fs::read_to_string(repo_root().join(relative)).unwrap())
    }

    /// The YAML text to hand to Envoy.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(&self.0).unwrap()
    }

    /// Sets every field named `key` to `value`; returns how many were set.
    pub fn set_all(&mut self, key: &str, value: Value) -> usize {
        let mut count = 0;
        each_map(&mut self.0, &mut |map| {
            if let Some(v) = map.get_mut(key) {
                *v = value.clone();
                count += 1;
            }
        });
        count
    }

    /// Moves every socket address on port `from` (listener, admin, cluster endpoint) to `to`.
    pub fn move_port(mut self, from: u16, to: u16) -> EnvoyConfig {
        let mut count = 0;
        each_map(&mut self.0, &mut |map| {
            if map.get("port_value").and_then(Value::as_u64) == Some(u64::from(from)) {
                map.insert("port_value".into(), Value::from(to));
                count += 1;
            }
        });
        assert!(count > 0, "no socket address on port {from}");
        self
    }

    /// Points every wasm VM at `wasm`.
    pub fn use_wasm(mut self, wasm: &std::path::Path) -> EnvoyConfig {
        let mut count = 0;
        each_map(&mut self.0, &mut |map| {
            if map.get("filename").and_then(Value::as_str).is_some_and(|f| f.ends_with(".wasm")) {
                map.insert("filename".into(), Value::from(wasm.display().to_string()));
                count += 1;
            }
        });
        assert!(count > 0, "no wasm filename in the config");
        self
    }

    /// Runs the multitokens filter of `build`: the stock wasm file, or the native module with the
    /// same plugin JSON in place of every wasm filter (as docs/deploying.md tells a user to).
    pub fn use_build(self, build: Build) -> EnvoyConfig {
        match build {
            Build::Wasm => self.use_wasm(&wasm_path("multitokens_filter.wasm")),
            Build::Native => {
                native_dir();
                self.use_native()
            }
        }
    }

    /// Replaces every wasm filter's `typed_config` by the native module's, with the same plugin JSON.
    pub fn use_native(mut self) -> EnvoyConfig {
        let mut count = 0;
        each_map(&mut self.0, &mut |map| {
            let is_wasm =
                map.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with("filters.http.wasm.v3.Wasm"));
            if let (true, Some(plugin)) = (is_wasm, map.get("config").and_then(|c| c.get("configuration")).cloned()) {
                map.clear();
                map.insert("@type".into(), Value::from(NATIVE_FILTER_TYPE));
                map.insert("dynamic_module_config".into(), serde_json::json!({"name": "multitokens_filter"}));
                map.insert("filter_name".into(), Value::from("multitokens"));
                map.insert("filter_config".into(), plugin);
                count += 1;
            }
        });
        assert!(count > 0, "no wasm filter in the config");
        self
    }

    /// The filters' plugin configurations (the JSON strings under `configuration.value`, or
    /// `filter_config.value` for the native module).
    pub fn plugin_configs(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut tree = self.0.clone();
        each_map(&mut tree, &mut |map| {
            if let Some(Value::String(json)) = plugin_holder(map).and_then(|c| c.get("value")) {
                found.push(json.clone());
            }
        });
        found
    }

    /// Puts `key` where the shipped plugin configurations hold the hash key placeholder, as a user
    /// deploying them does (the companion must get the same key).
    pub fn keyed(self, key: &str) -> EnvoyConfig {
        self.edit_plugin(|c| keyed_plugin(c, key, None))
    }

    /// Edits every wasm filter's plugin configuration as JSON.
    pub fn edit_plugin(mut self, edit: impl Fn(&mut Value)) -> EnvoyConfig {
        let mut count = 0;
        each_map(&mut self.0, &mut |map| {
            let holder = if map.contains_key("filter_config") { "filter_config" } else { "configuration" };
            if let Some(Value::String(json)) = map.get_mut(holder).and_then(|c| c.get_mut("value")) {
                let mut config: Value = serde_json::from_str(json).expect("plugin configuration is JSON");
                edit(&mut config);
                *json = config.to_string();
                count += 1;
            }
        });
        assert!(count > 0, "no wasm plugin configuration in the config");
        self
    }
}

/// The `@type` of the native module's filter config.
pub const NATIVE_FILTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";

/// Where a filter map holds its plugin JSON: `configuration` (wasm) or `filter_config` (native).
fn plugin_holder(map: &serde_json::Map<String, Value>) -> Option<&Value> {
    map.get("configuration").or_else(|| map.get("filter_config"))
}

/// Puts `key` (and the signing key's `public` half, if given) where a shipped plugin configuration
/// holds the placeholders, as a deployment does.
pub fn keyed_plugin(config: &mut Value, key: &str, public: Option<&str>) {
    if config["hash_key"] == multitokens_core::keyring::HASH_KEY_PLACEHOLDER {
        config["hash_key"] = Value::String(key.to_string());
    }
    if let (Some(public), Some(keys)) = (public, config.get_mut("record_public_keys").and_then(Value::as_array_mut)) {
        for k in keys.iter_mut().filter(|k| *k == multitokens_core::signing::PUBLIC_KEY_PLACEHOLDER) {
            *k = Value::String(public.to_string());
        }
    }
}
