//! Every config shipped in envoy/ is checked: Envoy validates each Envoy config, the filter's own
//! parser accepts each plugin configuration, and a broken one stops Envoy naming the field. Also
//! checks what the stock wasm build imports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use multitokens::filter::config::Compiled;
use std::path::{Path, PathBuf};
use support::{envoy_validate, repo_root, wasm_path, EnvoyConfig};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

fn envoy_configs() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    yaml_files(&repo_root().join("envoy"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .filter(|(_, text)| text.contains("static_resources:"))
        .collect()
}

/// Points the config's wasm file (if it has one) at the freshly built one.
fn with_built_wasm(text: &str) -> String {
    let config = EnvoyConfig::parse(text);
    if config.plugin_configs().is_empty() {
        return config.to_yaml();
    }
    config.use_wasm(&wasm_path("multitokens_filter.wasm")).to_yaml()
}

#[test]
fn every_envoy_config_validates() {
    let configs = envoy_configs();
    assert!(configs.len() >= 3, "expected envoy.yaml, compose/envoy.yaml and redis-cluster-proxy.yaml");
    for (path, text) in configs {
        let (ok, output) = envoy_validate(&with_built_wasm(&text));
        assert!(ok, "{} does not validate:\n{output}", path.display());
    }
}

/// Every plugin configuration in envoy/, read with a YAML parser: the Envoy configs' wasm
/// `configuration.value` strings, Istio's `pluginConfig` and Higress's `defaultConfig`.
fn plugin_configs() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    yaml_files(&repo_root().join("envoy"), &mut files);
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let document: serde_json::Value = serde::Deserialize::deserialize(document).unwrap();
            // Istio's pluginConfig and Higress's defaultConfig are YAML mappings of the JSON config
            for key in ["pluginConfig", "defaultConfig"] {
                if let Some(config) = document.get("spec").and_then(|spec| spec.get(key)) {
                    out.push((path.clone(), config.to_string()));
                }
            }
            if document.get("static_resources").is_some() {
                out.extend(EnvoyConfig(document).plugin_configs().into_iter().map(|json| (path.clone(), json)));
            }
        }
    }
    out
}

#[test]
fn every_plugin_configuration_parses() {
    let configs = plugin_configs();
    assert!(configs.len() >= 4, "envoy.yaml, compose/envoy.yaml, the Istio and the Higress WasmPlugins: {configs:?}");
    assert!(configs.iter().any(|(_, json)| json.contains("\"redis\"")), "the Higress config uses the Redis transport");
    for (path, json) in configs {
        if let Err(e) = Compiled::parse(json.as_bytes()) {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn a_broken_plugin_configuration_stops_envoy_and_names_the_field() {
    let broken = EnvoyConfig::load("envoy/envoy.yaml")
        .use_wasm(&wasm_path("multitokens_filter.wasm"))
        .move_port(10000, support::free_port(false))
        .move_port(19901, support::free_port(false))
        .edit_plugin(|c| c["prefixx"] = serde_json::json!("mt"))
        .to_yaml();
    let (ok, log) = support::envoy_run_expecting_exit(&broken);
    assert!(!ok, "Envoy must refuse a broken filter configuration");
    assert!(log.contains("unknown field `prefixx`"), "the error names the field:\n{log}");
}

#[test]
fn the_stock_build_imports_no_redis_callouts() {
    let bytes = std::fs::read(wasm_path("multitokens_filter.wasm")).unwrap();
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        match payload.unwrap() {
            wasmparser::Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.unwrap();
                    imports.push(format!("{}.{}", import.module, import.name));
                }
            }
            wasmparser::Payload::ExportSection(reader) => {
                for export in reader {
                    exports.push(export.unwrap().name.to_string());
                }
            }
            _ => {}
        }
    }
    assert!(imports.iter().any(|i| i == "env.proxy_http_call"), "uses HTTP callouts: {imports:?}");
    assert!(!imports.iter().any(|i| i.contains("proxy_redis")), "stock build must not import Redis callouts: {imports:?}");
    assert!(!exports.iter().any(|e| e == "proxy_on_redis_call_response"));
    assert!(exports.iter().any(|e| e == "proxy_abi_version_0_2_1"), "ABI marker 0_2_1: {exports:?}");
}

/// Runs a tool from `.tools/python` (installed by `make tools`); returns (success, output).
fn python_tool(args: &[&str]) -> (bool, String) {
    let tools = repo_root().join(".tools/python");
    assert!(tools.exists(), "{} is missing: run `make tools` (make test does)", tools.display());
    let out = std::process::Command::new("python3").args(args).env("PYTHONPATH", &tools).current_dir(repo_root()).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Reads YAML files with ruamel.yaml, a YAML 1.2 parser that refuses duplicate keys.
const STRICT_YAML: &str = "import sys\nfrom ruamel.yaml import YAML\nfor f in sys.argv[1:]:\n    list(YAML(typ='rt').load_all(open(f)))\n";

/// Every YAML file of the repository parses with a strict YAML 1.2 parser from PyPI, and the
/// compose file validates against the Compose specification's schema (check-jsonschema's own copy).
#[test]
fn every_yaml_file_is_strict_yaml_and_the_compose_file_follows_the_compose_spec() {
    let mut files = Vec::new();
    yaml_files(&repo_root().join("envoy"), &mut files);
    assert!(files.len() >= 6, "{files:?}");
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let mut args = vec!["-c", STRICT_YAML];
    args.extend(names.iter().map(String::as_str));
    let (ok, output) = python_tool(&args);
    assert!(ok, "strict YAML 1.2:\n{output}");
    // the parser does catch what a lenient one lets through: a duplicate key
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "spec:\n  phase: AUTHN\n  phase: AUTHZ\n").unwrap();
    assert!(!python_tool(&["-c", STRICT_YAML, &bad.display().to_string()]).0, "a duplicate key must be refused");
    let (ok, output) = python_tool(&["-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", "envoy/docker-compose.yaml"]);
    assert!(ok, "compose spec:\n{output}");
}
