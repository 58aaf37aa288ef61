//! Path rules: requests excluded from authentication, and scopes required per path.

use super::identity::IdentityView;
use super::route;
use serde::Deserialize;

/// Which requests a rule applies to: an exact path or a path prefix, optionally limited to methods.
/// Paths must be canonical (see [`super::path::canonical`]) and decode to ASCII.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    /// Exact path (query string ignored).
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Methods (upper-case); any method when empty.
    #[serde(default)]
    pub methods: Vec<String>,
}

impl RequestMatch {
    fn check(&self) -> Result<(), String> {
        if self.path.is_some() && self.prefix.is_some() {
            return Err("give path or prefix, not both".into());
        }
        if self.path.is_none() && self.prefix.is_none() && self.methods.is_empty() {
            return Err("give a path, a prefix or methods".into());
        }
        if let Some(m) = self.methods.iter().find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic())) {
            return Err(format!("methods: {m:?} is not a method"));
        }
        Ok(())
    }

    fn method_ok(&self, method: &str) -> bool {
        // HEAD is GET without a body: a rule for GET covers it
        let ok = |m: &String| {
            m.eq_ignore_ascii_case(method) || (m.eq_ignore_ascii_case("GET") && method.eq_ignore_ascii_case("HEAD"))
        };
        self.methods.is_empty() || self.methods.iter().any(ok)
    }
}

/// A request that passes without a token. Exclusions match the literal canonical path and the
/// request's own method only: a spelling or a method override never widens them.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExcludeRule {
    /// Which requests.
    #[serde(flatten)]
    pub matching: RequestMatch,
}

impl ExcludeRule {
    /// Checks the rule: its path must be canonical, and a rule must name a path (a rule with
    /// methods only would let every path through).
    pub fn check(&self) -> Result<(), String> {
        self.matching.check()?;
        let Some(p) = self.matching.path.as_ref().or(self.matching.prefix.as_ref()) else {
            return Err("give a path or a prefix: methods alone would exclude every path (for CORS preflights use \
                 \"cors_preflight\")"
                .into());
        };
        match super::path::canonical(p.as_bytes()) {
            Ok(c) if c == p && p != "*" => Ok(()),
            _ => Err(format!("path {p:?} must be a canonical path without a query (as clients send it)")),
        }
    }

    /// Whether the rule excludes a request: its method and canonical path, literally.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let m = &self.matching;
        let path_ok = match (&m.path, &m.prefix) {
            (Some(exact), _) => path == exact,
            (_, Some(prefix)) => path.starts_with(prefix.as_str()),
            _ => false,
        };
        path_ok && m.method_ok(method)
    }
}

/// Scopes a token must all carry for matching requests.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScopeRule {
    /// Which requests.
    #[serde(flatten)]
    pub matching: RequestMatch,
    /// Required scopes.
    pub scopes: Vec<String>,
}

impl ScopeRule {
    /// Checks the rule.
    pub fn check(&self) -> Result<(), String> {
        self.matching.check()?;
        if self.scopes.is_empty() {
            return Err("scopes: give at least one".into());
        }
        Ok(())
    }
}

/// A scope rule compiled for matching route keys (see [`super::route`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledScopeRule {
    rule: ScopeRule,
    /// The exact path's route key.
    exact: Option<String>,
    /// The prefix's route key, trailing slash kept.
    prefix: Option<String>,
}

impl CompiledScopeRule {
    /// Checks a rule and keys its path as requests are keyed.
    pub fn compile(rule: ScopeRule, case_sensitive: bool) -> Result<Self, String> {
        rule.check()?;
        let exact = rule.matching.path.as_deref().map(|p| route::pattern_key(p, case_sensitive, false)).transpose()?;
        let prefix =
            rule.matching.prefix.as_deref().map(|p| route::pattern_key(p, case_sensitive, true)).transpose()?;
        Ok(CompiledScopeRule { rule, exact, prefix })
    }

    /// Whether the rule covers a request run as `method` on the route `key`.
    pub fn matches(&self, method: &str, key: &str) -> bool {
        let path_ok = match (&self.exact, &self.prefix) {
            (Some(exact), _) => key == exact,
            // `/api/admin/` covers `/api/admin` too: the upstream routes both to one handler
            (_, Some(prefix)) => {
                key.starts_with(prefix.as_str()) || prefix.strip_suffix('/').is_some_and(|bare| key == bare)
            }
            _ => true,
        };
        path_ok && self.rule.matching.method_ok(method)
    }
}

/// The scopes missing for a request: under the first matching rule for each method the upstream
/// may run it as (its own and any override), all together.
pub fn missing_scopes<'a>(
    rules: &'a [CompiledScopeRule],
    methods: &[String],
    key: &str,
    granted: IdentityView<'_>,
) -> Vec<&'a str> {
    let mut missing: Vec<&'a str> = Vec::new();
    for method in methods {
        if let Some(rule) = rules.iter().find(|r| r.matches(method, key)) {
            for scope in rule.rule.scopes.iter().filter(|s| !granted.has_scope(s)) {
                if !missing.contains(&scope.as_str()) {
                    missing.push(scope);
                }
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn m(path: Option<&str>, prefix: Option<&str>, methods: &[&str]) -> RequestMatch {
        RequestMatch {
            path: path.map(Into::into),
            prefix: prefix.map(Into::into),
            methods: methods.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn scope(matching: RequestMatch, scopes: &[&str]) -> CompiledScopeRule {
        CompiledScopeRule::compile(
            ScopeRule { matching, scopes: scopes.iter().map(|s| s.to_string()).collect() },
            false,
        )
        .unwrap()
    }

    fn granted(scopes: &[&str]) -> Identity {
        Identity::new("u".into(), "d".into(), scopes.iter().map(|s| s.to_string()).collect(), "i".into()).unwrap()
    }

    fn key(path: &str) -> String {
        route::route_key(path, false).unwrap()
    }

    #[test]
    fn exclusions_match_the_literal_path_and_method_only() {
        let ex = |matching| ExcludeRule { matching };
        assert!(ex(m(Some("/healthz"), None, &[])).matches("GET", "/healthz"));
        assert!(!ex(m(Some("/healthz"), None, &[])).matches("GET", "/healthz/x"));
        assert!(!ex(m(Some("/healthz"), None, &[])).matches("GET", "/HEALTHZ"), "no folding widens an exclusion");
        assert!(ex(m(None, Some("/public/"), &[])).matches("POST", "/public/a"));
        assert!(!ex(m(None, Some("/public/"), &[])).matches("POST", "/Public/a"));
        assert!(ex(m(Some("/x"), None, &["GET"])).matches("HEAD", "/x"), "a rule for GET covers HEAD");
        assert!(!ex(m(Some("/x"), None, &["HEAD"])).matches("GET", "/x"));
    }

    #[test]
    fn exclusions_must_name_a_canonical_path() {
        let ex = |matching| ExcludeRule { matching }.check();
        assert!(ex(m(None, None, &["OPTIONS"])).unwrap_err().contains("cors_preflight"));
        assert!(ex(m(Some("/a/../b"), None, &[])).is_err());
        assert!(ex(m(None, Some("public/"), &[])).is_err());
        assert!(ex(m(Some("/a?b"), None, &[])).is_err());
        assert!(ex(m(Some("/a"), None, &["GE T"])).is_err());
        assert!(ex(m(None, Some("/public/"), &["GET"])).is_ok());
    }

    #[test]
    fn scope_rules_cover_every_spelling_a_lenient_upstream_routes_to_them() {
        let admin = [scope(m(None, Some("/api/admin/"), &[]), &["admin"])];
        for path in
            ["/api/admin/stats", "/API/ADMIN/stats", "/Api/admin/stats", "/api/admin", "/api/admin/", "/api/%61dmin/x"]
        {
            assert_eq!(
                missing_scopes(&admin, &["GET".into()], &key(path), granted(&[]).view()),
                vec!["admin"],
                "{path}"
            );
        }
        assert!(missing_scopes(&admin, &["GET".into()], &key("/api/administrator"), granted(&[]).view()).is_empty());
        let billing = [scope(m(Some("/api/billing"), None, &[]), &["billing"])];
        for path in ["/api/billing", "/api/billing/", "/API/Billing"] {
            assert_eq!(
                missing_scopes(&billing, &["GET".into()], &key(path), granted(&[]).view()),
                vec!["billing"],
                "{path}"
            );
        }
        let cancel = [scope(m(Some("/v1/orders:cancel"), None, &[]), &["orders"])];
        for path in ["/v1/orders:cancel", "/v1/orders%3Acancel", "/v1/orders%3acancel", "/V1/Orders%3ACancel/"] {
            assert_eq!(
                missing_scopes(&cancel, &["POST".into()], &key(path), granted(&[]).view()),
                vec!["orders"],
                "{path}"
            );
        }
        let encoded_rule = [scope(m(Some("/users/%40me/keys"), None, &[]), &["keys"])];
        assert_eq!(
            missing_scopes(&encoded_rule, &["GET".into()], &key("/users/@me/keys"), granted(&[]).view()),
            vec!["keys"]
        );
    }

    #[test]
    fn every_method_the_upstream_may_run_needs_its_scopes() {
        let rules = [
            scope(m(None, Some("/admin/"), &[]), &["admin", "read"]),
            scope(m(None, Some("/"), &["DELETE"]), &["write"]),
            scope(m(None, Some("/"), &["PUT"]), &["write", "put"]),
        ];
        let one = |m: &str| vec![m.to_string()];
        assert_eq!(missing_scopes(&rules, &one("GET"), &key("/admin/x"), granted(&["read"]).view()), vec!["admin"]);
        assert!(missing_scopes(&rules, &one("GET"), &key("/admin/x"), granted(&["read", "admin"]).view()).is_empty());
        assert_eq!(missing_scopes(&rules, &one("DELETE"), &key("/x"), granted(&[]).view()), vec!["write"]);
        assert!(missing_scopes(&rules, &one("GET"), &key("/x"), granted(&[]).view()).is_empty());
        let overridden = vec!["POST".to_string(), "DELETE".into(), "PUT".into()];
        assert_eq!(missing_scopes(&rules, &overridden, &key("/x"), granted(&[]).view()), vec!["write", "put"]);
        assert!(
            missing_scopes(&rules, &one("GET"), &key("/admin/x"), granted(&["administrator", "read"]).view())
                .contains(&"admin"),
            "whole scopes only"
        );
    }

    #[test]
    fn a_case_sensitive_upstream_keeps_case_in_scope_rules() {
        let rule = CompiledScopeRule::compile(
            ScopeRule { matching: m(None, Some("/Admin/"), &[]), scopes: vec!["admin".into()] },
            true,
        )
        .unwrap();
        assert!(rule.matches("GET", &route::route_key("/Admin/x", true).unwrap()));
        assert!(!rule.matches("GET", &route::route_key("/admin/x", true).unwrap()));
    }
}
