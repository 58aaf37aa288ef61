//! Path rules: requests excluded from authentication, and scopes required per path.

use super::identity::IdentityView;
use serde::Deserialize;

/// Which requests a rule applies to: an exact path or a path prefix, optionally limited to methods.
/// A rule with only `methods` matches every path (e.g. CORS preflight `OPTIONS`).
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
        for p in self.path.iter().chain(self.prefix.iter()) {
            if !p.starts_with('/') {
                return Err(format!("path {p:?} must start with '/'"));
            }
        }
        if self.path.is_none() && self.prefix.is_none() && self.methods.is_empty() {
            return Err("give a path, a prefix or methods".into());
        }
        Ok(())
    }

    /// Whether the rule matches a request (the path without its query string).
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let path_ok = match (&self.path, &self.prefix) {
            (Some(exact), _) => path == exact,
            (_, Some(prefix)) => path.starts_with(prefix.as_str()),
            _ => true,
        };
        // HEAD is GET without a body: a rule for GET covers it
        let method_ok =
            |m: &String| m.eq_ignore_ascii_case(method) || (m.eq_ignore_ascii_case("GET") && method.eq_ignore_ascii_case("HEAD"));
        path_ok && (self.methods.is_empty() || self.methods.iter().any(method_ok))
    }
}

/// A request that passes without a token.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExcludeRule {
    /// Which requests.
    #[serde(flatten)]
    pub matching: RequestMatch,
}

impl ExcludeRule {
    /// Checks the rule.
    pub fn check(&self) -> Result<(), String> {
        self.matching.check()
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

/// The scopes missing for a request under the first matching rule, if any.
pub fn missing_scopes<'a>(rules: &'a [ScopeRule], method: &str, path: &str, granted: IdentityView<'_>) -> Vec<&'a str> {
    rules
        .iter()
        .find(|r| r.matching.matches(method, path))
        .map(|r| r.scopes.iter().filter(|s| !granted.has_scope(s)).map(String::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::identity::Identity;

    fn m(path: Option<&str>, prefix: Option<&str>, methods: &[&str]) -> RequestMatch {
        RequestMatch {
            path: path.map(Into::into),
            prefix: prefix.map(Into::into),
            methods: methods.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn matches_exact_prefix_and_methods() {
        assert!(m(Some("/healthz"), None, &[]).matches("GET", "/healthz"));
        assert!(!m(Some("/healthz"), None, &[]).matches("GET", "/healthz/x"));
        assert!(m(None, Some("/public/"), &[]).matches("POST", "/public/a"));
        assert!(m(None, None, &["OPTIONS"]).matches("options", "/anything"));
        assert!(!m(None, None, &["OPTIONS"]).matches("GET", "/anything"));
        assert!(m(Some("/x"), None, &["GET"]).matches("HEAD", "/x"), "a rule for GET covers HEAD");
        assert!(!m(Some("/x"), None, &["HEAD"]).matches("GET", "/x"));
    }

    #[test]
    fn first_matching_scope_rule_decides() {
        let rules = vec![
            ScopeRule { matching: m(None, Some("/admin/"), &[]), scopes: vec!["admin".into(), "read".into()] },
            ScopeRule { matching: m(None, Some("/"), &["DELETE"]), scopes: vec!["write".into()] },
        ];
        let granted =
            |scopes: &[&str]| Identity::new("u".into(), "d".into(), scopes.iter().map(|s| s.to_string()).collect(), "i".into()).unwrap();
        assert_eq!(missing_scopes(&rules, "GET", "/admin/x", granted(&["read"]).view()), vec!["admin"]);
        assert!(missing_scopes(&rules, "GET", "/admin/x", granted(&["read", "admin"]).view()).is_empty());
        assert_eq!(missing_scopes(&rules, "DELETE", "/x", granted(&[]).view()), vec!["write"]);
        assert!(missing_scopes(&rules, "GET", "/x", granted(&[]).view()).is_empty());
        assert!(
            missing_scopes(&rules, "GET", "/admin/x", granted(&["administrator", "read"]).view()).contains(&"admin"),
            "whole scopes only"
        );
    }
}
