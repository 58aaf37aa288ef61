//! Cross-site request forgery defence for cookie credentials. A browser sends a cookie with every
//! request to its site, whoever's page made it; a header token it sends only when the page's own
//! script sets it. So a request authenticated by the cookie with an unsafe method passes only
//! when the browser says it came from the same origin (`Sec-Fetch-Site`), or, from browsers that do
//! not send that header, when its `Origin` is the request's own or a trusted one — the check Go's
//! `net/http.CrossOriginProtection` makes. Requests without either header are not from a browser
//! page (or from browsers too old for `Origin` on every unsafe request) and pass.

use serde::Deserialize;

/// The check's settings (`csrf` in the plugin config).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CsrfConfig {
    /// Check unsafe requests authenticated by the cookie (on by default).
    #[serde(default = "default_true")]
    pub check: bool,
    /// Origins (`scheme://host[:port]`) allowed to send unsafe cookie-authenticated requests
    /// besides the request's own (a front end on another origin).
    #[serde(default)]
    pub trusted_origins: Vec<String>,
}

impl Default for CsrfConfig {
    fn default() -> Self {
        CsrfConfig { check: true, trusted_origins: Vec::new() }
    }
}

fn default_true() -> bool {
    true
}

impl CsrfConfig {
    /// Checks and lower-cases the trusted origins.
    pub fn compile(&mut self) -> Result<(), String> {
        for origin in &mut self.trusted_origins {
            let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
            if rest.is_none_or(|host| host.is_empty() || host.contains(['/', '?', '#', ' ', '@'])) {
                return Err(format!("csrf.trusted_origins: {origin:?} is not an origin (scheme://host[:port])"));
            }
            *origin = origin.to_ascii_lowercase();
        }
        Ok(())
    }

    /// Whether a cookie-authenticated request may go on. `methods` are those the upstream may run
    /// it as; `authority` is the request's `:authority`.
    pub fn allows(
        &self,
        methods: &[String],
        sec_fetch_site: Option<&[u8]>,
        origin: Option<&[u8]>,
        authority: &[u8],
    ) -> bool {
        if !self.check || methods.iter().all(|m| is_safe(m)) {
            return true;
        }
        match sec_fetch_site {
            Some(b"same-origin") | Some(b"none") => return true,
            Some(_) => return origin.is_some_and(|o| self.trusted(o)),
            None => {}
        }
        let Some(origin) = origin else {
            return true;
        };
        let host = origin.strip_prefix(b"https://").or_else(|| origin.strip_prefix(b"http://"));
        host.is_some_and(|h| !h.is_empty() && h.eq_ignore_ascii_case(authority)) || self.trusted(origin)
    }

    fn trusted(&self, origin: &[u8]) -> bool {
        self.trusted_origins.iter().any(|t| t.as_bytes().eq_ignore_ascii_case(origin))
    }
}

/// Methods that must not change state (RFC 9110 §9.2.1).
fn is_safe(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post() -> Vec<String> {
        vec!["POST".into()]
    }

    #[test]
    fn cross_site_unsafe_requests_are_refused() {
        let c = CsrfConfig::default();
        assert!(!c.allows(&post(), Some(b"cross-site"), Some(b"https://evil.example"), b"api.example"));
        assert!(!c.allows(&post(), Some(b"same-site"), Some(b"https://www.api.example"), b"api.example"));
        assert!(!c.allows(&post(), None, Some(b"https://evil.example"), b"api.example"));
        assert!(!c.allows(&post(), None, Some(b"null"), b"api.example"));
        let overridden = vec!["GET".to_string(), "DELETE".into()];
        assert!(
            !c.allows(&overridden, Some(b"cross-site"), None, b"api.example"),
            "a GET the upstream may run as DELETE"
        );
    }

    #[test]
    fn same_origin_safe_and_non_browser_requests_pass() {
        let c = CsrfConfig::default();
        assert!(c.allows(&post(), Some(b"same-origin"), Some(b"https://evil.example"), b"api.example"));
        assert!(c.allows(&post(), Some(b"none"), None, b"api.example"));
        assert!(c.allows(&post(), None, Some(b"https://API.example"), b"api.example"));
        assert!(c.allows(&post(), None, None, b"api.example"), "no browser headers: not a browser page");
        assert!(c.allows(&["GET".into()], Some(b"cross-site"), Some(b"https://evil.example"), b"api.example"));
        let off = CsrfConfig { check: false, ..CsrfConfig::default() };
        assert!(off.allows(&post(), Some(b"cross-site"), Some(b"https://evil.example"), b"api.example"));
    }

    #[test]
    fn trusted_origins_pass_and_are_checked_at_load() {
        let mut c = CsrfConfig { check: true, trusted_origins: vec!["https://App.example".into()] };
        c.compile().unwrap();
        assert!(c.allows(&post(), Some(b"cross-site"), Some(b"https://app.example"), b"api.example"));
        assert!(c.allows(&post(), None, Some(b"https://app.example"), b"api.example"));
        for bad in ["app.example", "https://", "https://a/b", "ftp://a"] {
            let mut c = CsrfConfig { check: true, trusted_origins: vec![bad.into()] };
            assert!(c.compile().is_err(), "{bad}");
        }
    }
}
