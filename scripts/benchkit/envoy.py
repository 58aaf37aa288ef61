"""Envoy for the scenarios: their configurations (the filters, the plugin config, the anchors) and
the Envoy process."""
import json
import os
import time
from pathlib import Path
from .processes import free_port, start, wait_port
from .settings import ENVOY, HASH_KEY, INTERNAL_KEY, MINIMAL_WASM, MODULES_DIR, NOOP_WASM, WASM_DIR, WORK


def wasm_filter(name, wasm, configuration=None):
    config = ""
    if configuration is not None:
        value = json.dumps(configuration)
        config = f"""
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{value}'"""
    return f"""
          - name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}
                fail_open: false
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}{config}"""


def native_filter(configuration, module="multitokens_filter", filter_name="multitokens"):
    """The native dynamic module (`make module`) with the wasm filter's plugin JSON."""
    value = json.dumps(configuration)
    return f"""
          - name: {filter_name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{ name: {module} }}
              filter_name: {filter_name}
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{value}'"""


def jwt_tokens(count):
    """`count` distinct RS256 and HS256 tokens (PyJWT), and the local JWKS of both keys."""
    import base64
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()
    b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    secret = os.urandom(32)
    jwks = {"keys": [
        {"kty": "RSA", "alg": "RS256", "kid": "rs", "use": "sig", "n": b64(numbers.n), "e": b64(numbers.e)},
        {"kty": "oct", "alg": "HS256", "kid": "hs", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()},
    ]}
    now = int(time.time())
    claims = lambda i: {"iss": "bench", "sub": f"user-{i % 100}", "iat": now, "exp": now + 3600, "jti": str(i)}
    rs = [jwt.encode(claims(i), key, algorithm="RS256", headers={"kid": "rs"}) for i in range(count)]
    hs = [jwt.encode(claims(i), secret, algorithm="HS256", headers={"kid": "hs"}) for i in range(count)]
    return rs, hs, json.dumps(jwks)


def jwt_filter(jwks, cached):
    """Envoy's own jwt_authn with a local JWKS, the subject forwarded as a header; `cached`: its
    JWT cache on (verified tokens remembered), else every token verified (the default)."""
    cache = "\n                  jwt_cache_config: { jwt_cache_size: 2000 }" if cached else ""
    return f"""
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: bench
                  local_jwks: {{ inline_string: '{jwks}' }}
                  forward: false
                  claim_to_headers: [{{ header_name: x-user, claim_name: sub }}]{cache}
              rules:
              - match: {{ prefix: "/" }}
                requires: {{ provider_name: bench }}"""


def ext_authz_filter(service=None):
    """Envoy's own ext_authz asking the companion: over HTTP (`/v1/ext_authz`), or with
    `service="grpc"` over gRPC (envoy.service.auth.v3.Authorization, HTTP/2)."""
    if service == "grpc":
        service = """grpc_service:
                envoy_grpc: { cluster_name: multitokens_companion }
                timeout: 0.5s"""
    else:
        service = """http_service:
                server_uri: { uri: "http://multitokens_companion", cluster: multitokens_companion, timeout: 0.5s }
                path_prefix: /v1/ext_authz
                authorization_request:
                  allowed_headers:
                    patterns: [{ exact: authorization, ignore_case: true }]
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{ prefix: x-multitokens- }]"""
    return f"""
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              {service}"""


def envoy_config(listen, admin, filters, companion_port, http2=False):
    # gRPC to the companion needs HTTP/2 (cleartext, on its API port); callouts may use it too
    http2 = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }""" if http2 or "grpc_service" in filters else ""
    return f"""
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
          common_http_protocol_options: {{ headers_with_underscores_action: REJECT_REQUEST }}
          route_config:
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: multitokens_companion
    type: STATIC
    connect_timeout: 0.25s{http2}
    load_assignment:
      cluster_name: multitokens_companion
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {companion_port} }} }} }}
"""


def filter_config(cache_entries, **extra):
    return {
        "companion": {"cluster": "multitokens_companion", "api_key": INTERNAL_KEY, "timeout_ms": 1000},
        "hash_key": HASH_KEY,
        "accept_legacy_tokens": False,
        "cache": {"max_entries": cache_entries, "ttl_ms": 600000, "negative_ttl_ms": 60000},
        "revocation_poll_ms": 1000,
        **extra,
    }


# bench/minimal-auth-module: reads Authorization, sets one header, removes the credential
MINIMAL_NATIVE = native_filter({}, module="minimal_auth_module", filter_name="minimal_auth")


def main_scenarios(stock, jwks):
    """The Envoy scenarios of the main run: name -> (HTTP filters, HTTP/2 to the companion)."""
    return {
        "no_auth": ("", False),
        "noop_wasm": (wasm_filter("noop", NOOP_WASM), False),
        # the floor of any native module: a dynamic module whose hooks do nothing
        "noop_native": (native_filter({}, module="noop_module", filter_name="noop"), False),
        "filter_hit": (wasm_filter("multitokens", stock, filter_config(10000)), False),
        "filter_hit_lean": (wasm_filter("multitokens", stock, filter_config(
            10000, device_header=None, scopes_header=None, token_id_header=None)), False),
        "filter_miss": (wasm_filter("multitokens", stock, filter_config(0)), False),
        # the same filter logic as a native Envoy dynamic module (one cache per process)
        "native_hit": (native_filter(filter_config(10000)), False),
        "native_hit_lean": (native_filter(filter_config(
            10000, device_header=None, scopes_header=None, token_id_header=None)), False),
        "native_miss": (native_filter(filter_config(0)), False),
        "ext_authz": (ext_authz_filter(), False),
        "ext_authz_grpc": (ext_authz_filter("grpc"), False),
        # the miss path with HTTP/2 to the companion, for both (one connection, multiplexed)
        "filter_miss_h2": (wasm_filter("multitokens", stock, filter_config(0)), True),
        "native_miss_h2": (native_filter(filter_config(0)), True),
        "ext_authz_h2": (ext_authz_filter(), True),
        "minimal_auth_wasm": (wasm_filter("minimal_auth", MINIMAL_WASM), False),
        # the floor of any native authentication module: the same least work as minimal_auth_wasm
        "minimal_auth_native": (MINIMAL_NATIVE, False),
        "jwt_rs256": (jwt_filter(jwks, cached=False), False),
        "jwt_rs256_cached": (jwt_filter(jwks, cached=True), False),
        "jwt_hs256": (jwt_filter(jwks, cached=False), False),
        "jwt_hs256_cached": (jwt_filter(jwks, cached=True), False),
        "invalid_flood": (wasm_filter("multitokens", stock, filter_config(10000)), False),
        # the shipped defaults: throttling on, negatives bounded apart from positives
        "forged_mixed": (wasm_filter("multitokens", stock, filter_config(
            10000, throttle={"max_failures": 20, "window_ms": 60000})), False),
    }


def write_configs(directory):
    """`bench.py --configs DIR`: writes the Envoy config of every main-run scenario whose files
    exist here (the fixtures and the JWT anchors' keys are made by `make bench` only), for
    `envoy --mode validate` (tests/configs.rs)."""
    directory = Path(directory)
    stock = WASM_DIR / "multitokens_filter.wasm"
    for name, (filters, http2) in main_scenarios(stock, jwks=None).items():
        if name.startswith("jwt_") or name in ("noop_native", "minimal_auth_native") or (
                name in ("noop_wasm", "minimal_auth_wasm") and not (NOOP_WASM.exists() and MINIMAL_WASM.exists())):
            continue
        (directory / f"{name}.yaml").write_text(envoy_config(10000, 10001, filters, 10002, http2))
        print(name)


class Envoy:
    def __init__(self, name, filters, companion_port, concurrency=1, http2=False):
        self.name = name
        self.port, self.admin = free_port(), free_port()
        path = WORK / f"envoy-{name}.yaml"
        path.write_text(envoy_config(self.port, self.admin, filters, companion_port, http2))
        self.proc = start(f"envoy-{name}", [ENVOY, "-c", str(path), "--concurrency", str(concurrency), "--disable-hot-restart", "--log-level", "warn"],
                          {"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(MODULES_DIR)})

    def ready(self):
        wait_port(self.port, f"envoy ({self.name})")
