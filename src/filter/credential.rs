//! Finding the token in a request: `Authorization: <scheme> <token>` or an optional cookie.

/// What the request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// Nothing usable (no header, another scheme): "credentials were not provided".
    Missing,
    /// An accepted scheme with no token after it.
    Empty,
    /// A token candidate (not yet checked), and whether it came from the cookie.
    Token(&'a str, Source),
}

/// Where the token was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `Authorization` header.
    Header,
    /// The configured cookie.
    Cookie,
}

/// Extracts the credential. `schemes` are lower-case.
pub fn extract<'a>(authorization: Option<&'a str>, cookie_header: Option<&'a str>, schemes: &[String], cookie: Option<&str>) -> Credential<'a> {
    if let Some(value) = authorization {
        let value = value.trim();
        let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
            let token = rest.trim();
            if token.is_empty() {
                return Credential::Empty;
            }
            return Credential::Token(token, Source::Header);
        }
    }
    if let (Some(name), Some(header)) = (cookie, cookie_header) {
        for pair in header.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k == name {
                    let v = v.trim().trim_matches('"');
                    return if v.is_empty() { Credential::Empty } else { Credential::Token(v, Source::Cookie) };
                }
            }
        }
    }
    Credential::Missing
}

/// The `Cookie` header without the named cookie (`None` when nothing is left).
pub fn without_cookie(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.split_once('=').is_none_or(|(k, _)| k != name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemes() -> Vec<String> {
        vec!["bearer".into(), "token".into()]
    }

    #[test]
    fn reads_the_authorization_header() {
        let s = schemes();
        assert_eq!(extract(Some("Bearer abc"), None, &s, None), Credential::Token("abc", Source::Header));
        assert_eq!(extract(Some("token   abc  "), None, &s, None), Credential::Token("abc", Source::Header));
        assert_eq!(extract(Some("BEARER abc"), None, &s, None), Credential::Token("abc", Source::Header));
        assert_eq!(extract(Some("Bearer"), None, &s, None), Credential::Empty);
        assert_eq!(extract(Some("Bearer   "), None, &s, None), Credential::Empty);
        assert_eq!(extract(Some("Basic Zm9v"), None, &s, None), Credential::Missing);
        assert_eq!(extract(Some(""), None, &s, None), Credential::Missing);
        assert_eq!(extract(None, None, &s, None), Credential::Missing);
    }

    #[test]
    fn falls_back_to_the_cookie() {
        let s = schemes();
        let c = Some("a=1; session=tok; b=2");
        assert_eq!(extract(None, c, &s, Some("session")), Credential::Token("tok", Source::Cookie));
        assert_eq!(extract(None, c, &s, Some("other")), Credential::Missing);
        assert_eq!(extract(None, c, &s, None), Credential::Missing);
        assert_eq!(extract(Some("Bearer h"), c, &s, Some("session")), Credential::Token("h", Source::Header));
        assert_eq!(without_cookie("a=1; session=tok; b=2", "session").as_deref(), Some("a=1; b=2"));
        assert_eq!(without_cookie("session=tok", "session"), None);
    }
}
