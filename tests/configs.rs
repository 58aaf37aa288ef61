//! Every config shipped in envoy/ is checked: Envoy validates each Envoy config, the filter's own
//! parser accepts each plugin configuration, and a broken one stops Envoy naming the field. Also
//! checks what the stock wasm build imports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use multitokens_core::keyring::{generate_hash_key, HASH_KEY_PLACEHOLDER};
use multitokens_core::signing::{RecordSigner, PUBLIC_KEY_PLACEHOLDER};
use multitokens_filter::config::Compiled;
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

/// Points the config's wasm file (if it has one) at the freshly built one, and puts a real key in
/// place of the hash key placeholder when `keyed`, as a deployment does.
fn with_built_wasm(text: &str, keyed: bool) -> String {
    let config = EnvoyConfig::parse(text);
    if config.plugin_configs().is_empty() {
        return config.to_yaml();
    }
    let config = if text.contains(".wasm") { config.use_wasm(&wasm_path("multitokens_filter.wasm")) } else { config };
    if keyed {
        config.keyed(&generate_hash_key().unwrap()).to_yaml()
    } else {
        config.to_yaml()
    }
}

#[test]
fn every_envoy_config_validates() {
    let configs = envoy_configs();
    assert!(configs.len() >= 3, "expected envoy.yaml, compose/envoy.yaml and redis-cluster-proxy.yaml");
    for (path, text) in configs {
        let (ok, output) = envoy_validate(&with_built_wasm(&text, true));
        assert!(ok, "{} does not validate:\n{output}", path.display());
        if text.contains(HASH_KEY_PLACEHOLDER) {
            // started as shipped, without putting a key in: Envoy refuses it, naming the field
            let (ok, output) = envoy_validate(&with_built_wasm(&text, false));
            assert!(
                !ok && output.contains("hash_key: a hash key needs 256 random bits"),
                "{}:\n{output}",
                path.display()
            );
        }
    }
}

#[test]
fn the_native_envoy_config_is_the_wasm_one_with_the_module_in_its_place() {
    // the same listener, routes, clusters and plugin JSON: only the filter's typed_config differs
    let native = EnvoyConfig::load("envoy/native/envoy.yaml");
    assert_eq!(native.0, EnvoyConfig::load("envoy/envoy.yaml").use_native().0, "envoy/native/envoy.yaml drifted");
    support::native_dir();
    let keyed = native.keyed(&generate_hash_key().unwrap());
    let (ok, output) = envoy_validate(&keyed.to_yaml());
    assert!(ok, "envoy/native/envoy.yaml does not validate:\n{output}");
    // the module checks the plugin JSON at load, as the wasm filter does
    let broken = keyed.edit_plugin(|c| c["cache"]["max_entriez"] = serde_json::json!(1));
    let (ok, output) = envoy_validate(&broken.to_yaml());
    assert!(!ok && output.contains("max_entriez"), "an unknown field was accepted:\n{output}");
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
        // every shipped stack runs with a key: the placeholder is refused, naming the field, and a
        // key from `multitokens keygen` in its place is what a deployment loads
        assert!(json.contains(HASH_KEY_PLACEHOLDER), "{}: no hash_key", path.display());
        let err = Compiled::parse(json.as_bytes()).err().unwrap_or_default();
        assert!(err.contains("hash_key: a hash key needs 256 random bits"), "{}: {err}", path.display());
        let mut keyed: serde_json::Value = serde_json::from_str(&json).unwrap();
        let public = RecordSigner::generate().unwrap().1;
        support::keyed_plugin(&mut keyed, &generate_hash_key().unwrap(), Some(&public));
        match Compiled::parse(keyed.to_string().as_bytes()) {
            Ok(c) => assert!(!c.config.accept_legacy_tokens, "{}: new deployments check every token", path.display()),
            Err(e) => panic!("{}: {e}", path.display()),
        }
        // the Redis-callout build reads records itself: it holds the companion's public key, and
        // a placeholder left there is refused naming the field
        if json.contains("\"redis\"") {
            assert!(json.contains(PUBLIC_KEY_PLACEHOLDER), "{}: no record_public_keys", path.display());
            let only_hash_key = json.replace(HASH_KEY_PLACEHOLDER, &generate_hash_key().unwrap());
            let err = Compiled::parse(only_hash_key.as_bytes()).err().unwrap_or_default();
            assert!(err.contains("record_public_keys"), "{}: {err}", path.display());
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
    assert!(
        !imports.iter().any(|i| i.contains("proxy_redis")),
        "stock build must not import Redis callouts: {imports:?}"
    );
    assert!(!exports.iter().any(|e| e == "proxy_on_redis_call_response"));
    assert!(exports.iter().any(|e| e == "proxy_abi_version_0_2_1"), "ABI marker 0_2_1: {exports:?}");
}

/// Runs a tool from `.tools/python` (installed by `make tools`); returns (success, output).
fn python_tool(args: &[&str]) -> (bool, String) {
    let tools = repo_root().join(".tools/python");
    assert!(tools.exists(), "{} is missing: run `make tools` (make test does)", tools.display());
    let out = std::process::Command::new("python3")
        .args(args)
        .env("PYTHONPATH", &tools)
        .current_dir(repo_root())
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Reads YAML files with ruamel.yaml, a YAML 1.2 parser that refuses duplicate keys.
const STRICT_YAML: &str =
    "import sys\nfrom ruamel.yaml import YAML\nfor f in sys.argv[1:]:\n    list(YAML(typ='rt').load_all(open(f)))\n";

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
    let (ok, output) = python_tool(&[
        "-m",
        "check_jsonschema",
        "--builtin-schema",
        "vendor.compose-spec",
        "envoy/docker-compose.yaml",
    ]);
    assert!(ok, "compose spec:\n{output}");
}

/// Runs a tool installed by `make tools` from `.tools/<dir>` (Python packages there, or its `bin`).
fn tool(dir: &str, program: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let root = repo_root().join(".tools").join(dir);
    assert!(root.exists(), "{} is missing: run `make tools` (make test does)", root.display());
    let program =
        if program.starts_with("bin/") { root.join(program).display().to_string() } else { program.to_string() };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env("PYTHONPATH", &root).current_dir(if dir == "node" { root.clone() } else { repo_root() });
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The Kubernetes manifests as `kubectl apply -k envoy/kubernetes` applies them: every resource
/// the kustomization lists exists and validates, strictly (unknown fields refused), against the
/// Kubernetes API schemas (kubernetes-validate, from PyPI).
#[test]
fn the_kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let dir = repo_root().join("envoy/kubernetes");
    let kustomization: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap()).unwrap();
    assert_eq!(kustomization["kind"].as_str(), Some("Kustomization"));
    let resources: Vec<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| format!("envoy/kubernetes/{}", r.as_str().unwrap()))
        .collect();
    assert!(resources.len() >= 5, "{resources:?}");
    let mut args = vec!["-m", "kubernetes_validate", "--strict", "-k", "1.30"];
    args.extend(resources.iter().map(String::as_str));
    let (ok, output) = tool("k8s", "python3", &args, None);
    assert!(ok, "kubernetes-validate:\n{output}");
    assert_eq!(output.matches(" passed for resource ").count(), resources.len(), "{output}");
    for kind in [
        "deployment/multitokens",
        "service/multitokens",
        "poddisruptionbudget/multitokens",
        "networkpolicy/multitokens",
    ] {
        assert!(output.contains(kind), "{kind}: {output}");
    }
    // the policy for the application's namespace, applied apart
    let app_policy = repo_root().join("envoy/kubernetes/app-networkpolicy.yaml");
    let (ok, output) = tool(
        "k8s",
        "python3",
        &["-m", "kubernetes_validate", "--strict", "-k", "1.30", app_policy.to_str().unwrap()],
        None,
    );
    assert!(ok && output.contains("networkpolicy/only-through-the-gateway"), "{output}");
    // the validator does refuse a misspelt field
    let bad = tempfile::tempdir().unwrap();
    let path = bad.path().join("deployment.yaml");
    std::fs::write(
        &path,
        std::fs::read_to_string(dir.join("deployment.yaml"))
            .unwrap()
            .replace("readOnlyRootFilesystem", "readOnlyRootFilesytem"),
    )
    .unwrap();
    assert!(
        !tool("k8s", "python3", &["-m", "kubernetes_validate", "--strict", "-k", "1.30", path.to_str().unwrap()], None)
            .0
    );
    // what the pod runs as, and how it is probed
    let deployment: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("deployment.yaml")).unwrap()).unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert!(
        container["resources"]["limits"]["memory"].is_string() && container["resources"]["requests"]["cpu"].is_string()
    );
    // with kubectl at hand (not on every machine), the kustomize build itself validates too
    if let Ok(out) =
        std::process::Command::new("kubectl").args(["kustomize", "envoy/istio"]).current_dir(repo_root()).output()
    {
        assert!(out.status.success(), "kubectl kustomize envoy/istio: {}", String::from_utf8_lossy(&out.stderr));
        let built = bad.path().join("built.yaml");
        std::fs::write(&built, &out.stdout).unwrap();
        let (ok, output) = tool(
            "k8s",
            "python3",
            &["-m", "kubernetes_validate", "--strict", "-k", "1.30", built.to_str().unwrap()],
            None,
        );
        assert!(ok && output.matches(" passed for resource ").count() == resources.len(), "{output}");
    }
}

/// The Istio WasmPlugin and policies validate against Istio's CRD schemas (kubernetes-models'
/// @kubernetes-models/istio from npm). No package publishes the Higress WasmPlugin CRD's schema;
/// that one is checked by the strict YAML parser and the filter's own parser only.
#[test]
fn the_istio_wasmplugin_and_policies_validate_against_istios_crd_schemas() {
    let script = std::fs::read_to_string(repo_root().join("tests/clients/validate_istio.mjs")).unwrap();
    let plugin = repo_root().join("envoy/istio/wasmplugin.yaml");
    let (ok, output) = tool("node", "node", &["--input-type=module", "-", plugin.to_str().unwrap()], Some(&script));
    assert!(ok, "{output}");
    assert!(output.contains("valid WasmPlugin multitokens"), "{output}");
    // only the gateway reaches the application and the companion's internal API, by mTLS identity
    let policies = repo_root().join("envoy/istio/authorizationpolicy.yaml");
    let (ok, output) = tool("node", "node", &["--input-type=module", "-", policies.to_str().unwrap()], Some(&script));
    assert!(ok, "{output}");
    assert_eq!(output.matches("valid ").count(), 4, "{output}");
    let docs: Vec<serde_yaml_ng::Value> =
        serde_yaml_ng::Deserializer::from_str(&std::fs::read_to_string(&policies).unwrap())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    for doc in docs.iter().filter(|d| d["kind"] == "AuthorizationPolicy") {
        assert_eq!(doc["spec"]["action"], "ALLOW", "allow-listed callers only");
        let principals = &doc["spec"]["rules"][0]["from"][0]["source"]["principals"][0];
        assert_eq!(principals.as_str(), Some("cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"));
    }
    assert!(docs.iter().filter(|d| d["kind"] == "PeerAuthentication").all(|d| d["spec"]["mtls"]["mode"] == "STRICT"));
    let bad = tempfile::tempdir().unwrap();
    let path = bad.path().join("policies.yaml");
    std::fs::write(&path, std::fs::read_to_string(&policies).unwrap().replace("mode: STRICT", "mode: STRICTER"))
        .unwrap();
    assert!(
        !tool("node", "node", &["--input-type=module", "-", path.to_str().unwrap()], Some(&script)).0,
        "a wrong mode is refused"
    );
    let bad = tempfile::tempdir().unwrap();
    let path = bad.path().join("wasmplugin.yaml");
    std::fs::write(&path, std::fs::read_to_string(&plugin).unwrap().replace("FAIL_CLOSE", "FAIL_SHUT")).unwrap();
    let (ok, output) = tool("node", "node", &["--input-type=module", "-", path.to_str().unwrap()], Some(&script));
    assert!(!ok && output.contains("failStrategy"), "{output}");
}

/// The companion's container image (built by `make oci`): hadolint (from PyPI) finds nothing, and
/// it runs as a non-root user.
#[test]
fn the_companion_dockerfile_passes_hadolint_and_runs_as_non_root() {
    for file in ["envoy/kubernetes/Dockerfile", "envoy/compose/Dockerfile"] {
        let (ok, output) = tool("k8s", "bin/hadolint", &[&repo_root().join(file).display().to_string()], None);
        assert!(ok, "hadolint {file}:\n{output}");
    }
    let text = std::fs::read_to_string(repo_root().join("envoy/kubernetes/Dockerfile")).unwrap();
    let last_stage = text.rsplit("\nFROM ").next().unwrap();
    assert!(last_stage.starts_with("gcr.io/distroless/"), "a small runtime image");
    assert!(last_stage.lines().any(|l| l.trim() == "USER 65532:65532"), "non-root");
}

/// The compose file's Redis, started by its own command line (the shell snippet compose runs,
/// with `$$` unescaped and the container's paths and port mapped to a temp dir and a free port):
/// the shipped ACL loaded with the passwords from the environment, the default user off, so
/// nothing reaches Redis without a password; the companion's user works.
#[test]
fn the_compose_redis_refuses_clients_without_a_password() {
    let text = std::fs::read_to_string(repo_root().join("envoy/docker-compose.yaml")).unwrap();
    let compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let redis = &compose["services"]["redis"];
    assert_eq!(redis["entrypoint"][0].as_str(), Some("/bin/sh"));
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port(false);
    let script = redis["command"][0]
        .as_str()
        .unwrap()
        .replace("$$", "$")
        .replace("/etc/redis/users.acl", &repo_root().join("envoy/redis/users.acl").display().to_string())
        .replace("/data/", &format!("{}/", dir.path().display()))
        .replace(
            "--appendonly yes",
            &format!("--appendonly no --port {port} --bind 127.0.0.1 --dir {}", dir.path().display()),
        );
    let mut server = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("MULTITOKENS_REDIS_PASSWORD", "compose-test-password")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(support::wait_for_port(port, std::time::Duration::from_secs(10)), "the compose Redis did not start");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let anonymous = cli(&["SET", "mt:x", "1"]);
    assert!(
        anonymous.contains("NOAUTH") || anonymous.contains("WRONGPASS") || anonymous.contains("disabled"),
        "{anonymous}"
    );
    assert!(
        cli(&["--user", "mt-companion", "--pass", "change-me-companion", "PING"]).contains("WRONGPASS"),
        "the placeholder password"
    );
    assert_eq!(
        cli(&["--user", "mt-companion", "--pass", "compose-test-password", "--no-auth-warning", "PING"]).trim(),
        "PONG"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// The benchmark's report (scripts/benchkit/report.py: ratios, targets, the table) passes its
/// unit tests on the committed run, bench/results.json.
#[test]
fn the_benchmarks_report_passes_its_tests() {
    let out = std::process::Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "scripts/benchkit", "-t", "scripts"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("Ran 4 tests"), "{stderr}");
}

/// Every Envoy config the benchmark's main run starts with the multitokens filter or ext_authz
/// (`scripts/bench.py --configs`, built from the same scenario list the run uses) validates in real
/// Envoy, which also configures the wasm plugin: a filter configuration the plugin refuses, a
/// renamed field, a missing wasm file fail here instead of in `make bench`. The JWT anchors need
/// the keys `make bench` makes, and the wasm fixtures its build, so they are left to it.
#[test]
fn the_benchmarks_envoy_configs_validate_in_real_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("scripts/bench.py"))
        .arg("--configs")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = String::from_utf8(out.stdout).unwrap();
    let expected = [
        "no_auth",
        "filter_hit",
        "filter_hit_lean",
        "filter_miss",
        "filter_miss_h2",
        "native_hit",
        "native_miss",
        "native_miss_h2",
        "ext_authz",
        "ext_authz_h2",
        "ext_authz_grpc",
        "invalid_flood",
        "forged_mixed",
    ];
    for name in expected {
        assert!(written.lines().any(|l| l == name), "{name} not written: {written}");
    }
    for name in written.lines() {
        let config = std::fs::read_to_string(dir.path().join(format!("{name}.yaml"))).unwrap();
        let (ok, log) = envoy_validate(&config);
        assert!(ok, "the bench's {name} config does not validate:\n{log}");
    }
    // and validation does reach the plugin: a configuration it refuses fails
    let filter_hit = std::fs::read_to_string(dir.path().join("filter_hit.yaml")).unwrap();
    let refused = filter_hit.replace("\"revocation_poll_ms\": 1000", "\"revocation_poll_ms\": 1000, \"bogus\": 1");
    assert_ne!(refused, filter_hit);
    assert!(!envoy_validate(&refused).0, "a plugin configuration with an unknown field validated");
}
