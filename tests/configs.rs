//! Every config shipped in envoy/ is checked: Envoy validates each Envoy config, the filter's own
//! parser accepts each plugin configuration, and a broken one stops Envoy naming the field. Also
//! checks what the stock wasm build imports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use multitokens::filter::config::Compiled;
use std::path::{Path, PathBuf};
use support::{envoy_validate, repo_root, wasm_path, yaml_block_after};

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

/// Points the config's wasm file at the freshly built one.
fn with_built_wasm(text: &str) -> String {
    let stock = wasm_path("multitokens_filter.wasm").display().to_string();
    text.replace("filename: target/wasm32-wasip1/wasm-release/multitokens_filter.wasm", &format!("filename: {stock}"))
        .replace("filename: /filter/multitokens_filter.wasm", &format!("filename: {stock}"))
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

/// Every plugin configuration in envoy/: `value: |` JSON blocks and Istio `pluginConfig:` objects.
fn plugin_configs() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    yaml_files(&repo_root().join("envoy"), &mut files);
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("envoy.extensions.filters.http.wasm.v3.Wasm") {
            out.push((path.clone(), yaml_block_after(&text, "value: |").unwrap()));
        }
        for key in ["pluginConfig:", "defaultConfig:"] {
            if let Some(at) = text.find(key) {
                // written as a JSON object (a valid YAML flow mapping) so it can be checked as is
                let rest = &text[at + key.len()..];
                let json = rest.split("\n---").next().unwrap_or(rest).trim();
                out.push((path.clone(), json.to_string()));
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
    let config = support::demo_envoy_yaml(&wasm_path("multitokens_filter.wasm"), support::free_port(false), support::free_port(false));
    let broken = config.replace("\"realm\": \"multitokens-demo\",", "\"realm\": \"multitokens-demo\", \"prefixx\": \"mt\",");
    assert!(broken.contains("prefixx"));
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
