//! Tests of the parent module.

use super::*;

const MINIMAL: &str = r#"{"companion": {"cluster": "mt", "api_key": "k"}}"#;

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = Compiled::parse(MINIMAL.as_bytes()).unwrap();
    assert_eq!(c.config.prefix, "mt");
    assert_eq!(c.config.schemes, vec!["bearer", "token", "dpop"], "DPoP-bound tokens come with the DPoP scheme");
    assert_eq!(c.config.failure_mode, FailureMode::Deny);
    assert!(c.config.strip_credential);
    assert_eq!((c.poll_ms(), c.feed_wait_ms(), c.feed_timeout_ms()), (1000, 5000, 5500));
    let redis = Compiled::parse(br#"{"redis": {"cluster": "r"}}"#).unwrap();
    assert_eq!((redis.poll_ms(), redis.feed_wait_ms()), (250, 0), "the Redis-callout build polls every 250 ms");
    assert_eq!(
        c.identity_headers.names().collect::<Vec<_>>(),
        [
            "x-multitokens-user",
            "x-multitokens-device",
            "x-multitokens-scopes",
            "x-multitokens-token-id",
            "x-multitokens-credential"
        ]
    );
    assert_eq!(c.config.cors_preflight, CorsPreflight::Pass);
    assert!(c.config.csrf.check && !c.config.upstream_routing.case_sensitive);
    assert!(!c.has_path_rules, "no rules: the path is not looked at");
    let lean = Compiled::parse(
        br#"{"companion": {"cluster": "mt", "api_key": "k"}, "token_id_header": null, "scopes_header": null}"#,
    )
    .unwrap();
    assert_eq!(
        lean.identity_headers.names().collect::<Vec<_>>(),
        ["x-multitokens-user", "x-multitokens-device", "x-multitokens-credential"]
    );
    for switched_off in ["x-multitokens-scopes", "X_Multitokens_Token_Id"] {
        assert!(lean.identity_headers.is_alias(switched_off.as_bytes()), "{switched_off} is stripped though not set");
    }
    let r = Compiled::parse(br#"{"redis": {"cluster": "outbound|6379||redis.svc?db=2", "password": "p"}}"#).unwrap();
    assert!(matches!(r.transport, Transport::Redis(ref t) if t.cluster.ends_with("?db=2")));
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (r#"{"companion": {"cluster": "mt", "api_key": "k"}, "prefixx": "mt"}"#, "prefixx"),
        (r#"{"companion": {"cluster": "mt", "api_key": "k", "timeout": 5}}"#, "timeout"),
        (r#"{"companion": {"cluster": "mt"}}"#, "api_key"),
        (r#"{"redis": {"cluster": "r?db=x"}}"#, "redis.cluster"),
        (r#"{"redis": {"cluster": "r", "username": "u"}}"#, "redis.password"),
        (r#"{"redis": {"cluster": "r", "timeout": 3}}"#, "timeout"),
        (r#"{"redis": {"cluster": "r"}, "companion": {"cluster": "mt", "api_key": "k"}}"#, "one transport"),
        (r#"{}"#, "companion"),
        (r#"{"companion": {"cluster": "mt", "api_key": "k"}, "prefix": "a_b"}"#, "prefix"),
        (r#"{"companion": {"cluster": "mt", "api_key": "k"}, "failure_mode": "open"}"#, "open"),
        (r#"{"companion": {"cluster": "mt", "api_key": "k"}, "user_header": "bad header"}"#, "user_header"),
        (r#"{"companion": {"cluster": "mt", "api_key": "k"}, "exclude": [{"path": "x"}]}"#, "exclude[0]"),
        (r#"{"companion": {"cluster": "mt", "api_key": "k"}, "exclude": [{"paht": "/x"}]}"#, "paht"),
        (r#"{"companion": {"cluster": "mt", "api_key": "k"}, "required_scopes": [{"prefix": "/a"}]}"#, "scopes"),
        (r#"{"companion": {"cluster": "mt", "api_key": "k"}, "cache": {"size": 1}}"#, "size"),
        (r#"{"companion": {"cluster": "mt", "api_key": "k"}, "revocation_poll_ms": 5}"#, "revocation_poll_ms"),
        (
            r#"{"companion": {"cluster": "mt", "api_key": "k"}, "exclude": [{"methods": ["OPTIONS"]}]}"#,
            "cors_preflight",
        ),
        (
            r#"{"companion": {"cluster": "mt", "api_key": "k"}, "required_scopes": [{"prefix": "/a/../b", "scopes": ["x"]}]}"#,
            "required_scopes[0]",
        ),
        (
            r#"{"companion": {"cluster": "mt", "api_key": "k"}, "required_scopes": [{"path": "/a%2Fb", "scopes": ["x"]}]}"#,
            "required_scopes[0]",
        ),
        (
            r#"{"companion": {"cluster": "mt", "api_key": "k"}, "upstream_routing": {"case_insensitive": true}}"#,
            "case_insensitive",
        ),
        (
            r#"{"companion": {"cluster": "mt", "api_key": "k"}, "upstream_routing": {"method_override_headers": ["a b"]}}"#,
            "upstream_routing.method_override_headers",
        ),
        (
            r#"{"companion": {"cluster": "mt", "api_key": "k"}, "csrf": {"trusted_origins": ["app.example"]}}"#,
            "csrf.trusted_origins",
        ),
        (r#"{"companion": {"cluster": "mt", "api_key": "k"}, "cors_preflight": "answer"}"#, "answer"),
        (
            r#"{"companion": {"cluster": "mt", "api_key": "k"}, "credential_header": "x-multitokens-user"}"#,
            "different name",
        ),
        ("not json", "invalid multitokens configuration"),
    ];
    for (json, field) in cases {
        let err = Compiled::parse(json.as_bytes()).unwrap_err();
        assert!(err.contains(field), "{json}: {err}");
    }
}

#[test]
fn aliases_of_every_length_are_recognised_and_nothing_else() {
    // a name past 62 bytes shares its length bit with every longer one: still compared in full
    let long = format!("x-{}", "a".repeat(70));
    let config = format!(r#"{{"companion": {{"cluster": "mt", "api_key": "k"}}, "user_header": "{long}"}}"#);
    let c = Compiled::parse(config.as_bytes()).unwrap();
    let names = &c.identity_headers;
    assert!(names.is_alias(long.to_ascii_uppercase().replace('-', "_").as_bytes()));
    assert!(!names.is_alias(format!("x-{}", "b".repeat(70)).as_bytes()), "same length, another name");
    assert!(!names.is_alias(format!("x-{}", "a".repeat(90)).as_bytes()), "longer, another name");
    assert!(names.is_alias(b"X-Multitokens-User"), "the default names stay stripped");
    for other in ["x-multitokens-use", "x-multitokens-userx", "", "host", ":path"] {
        assert!(!names.is_alias(other.as_bytes()), "{other}");
    }
}
