//! Finding the token in a request: `Authorization: <scheme> <token>` or an optional cookie.
//!
//! Header values arrive as bytes: Envoy forwards any byte a client sends (`\xff` included), so
//! nothing here assumes UTF-8. A token that is not UTF-8 is malformed, never an error.

/// What the request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// Nothing usable (no header, another scheme): "credentials were not provided".
    Missing,
    /// An accepted scheme with no token after it.
    Empty,
    /// An accepted scheme with a value that cannot be a token (not UTF-8).
    Malformed,
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

/// Extracts the credential from the raw header values. `schemes` are lower-case.
pub fn extract<'a>(authorization: Option<&'a [u8]>, cookie_header: Option<&'a [u8]>, schemes: &[String], cookie: Option<&str>) -> Credential<'a> {
    if let Some(value) = authorization {
        let value = value.trim_ascii();
        let split = value.iter().position(|b| *b == b' ' || *b == b'\t');
        let (scheme, rest) = split.map_or((value, &b""[..]), |i| (&value[..i], &value[i + 1..]));
        if schemes.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(scheme)) {
            return candidate(rest.trim_ascii(), Source::Header);
        }
    }
    if let (Some(name), Some(header)) = (cookie, cookie_header) {
        for pair in header.split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if let Some(eq) = pair.iter().position(|b| *b == b'=') {
                if &pair[..eq] == name.as_bytes() {
                    let v = pair[eq + 1..].trim_ascii();
                    let v = v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v);
                    return candidate(v, Source::Cookie);
                }
            }
        }
    }
    Credential::Missing
}

fn candidate(token: &[u8], source: Source) -> Credential<'_> {
    if token.is_empty() {
        return Credential::Empty;
    }
    match std::str::from_utf8(token) {
        Ok(t) => Credential::Token(t, source),
        Err(_) => Credential::Malformed,
    }
}

/// The `Cookie` header without the named cookie (`None` when nothing is left). The other
/// cookies are kept byte for byte.
pub fn without_cookie(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let kept: Vec<&[u8]> = header
        .split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty() && p.iter().position(|b| *b == b'=').is_none_or(|eq| &p[..eq] != name.as_bytes()))
        .collect();
    (!kept.is_empty()).then(|| kept.join(&b"; "[..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemes() -> Vec<String> {
        vec!["bearer".into(), "token".into()]
    }

    fn auth(value: &str) -> Credential<'_> {
        extract(Some(value.as_bytes()), None, &schemes(), None)
    }

    #[test]
    fn reads_the_authorization_header() {
        assert_eq!(auth("Bearer abc"), Credential::Token("abc", Source::Header));
        assert_eq!(auth("token   abc  "), Credential::Token("abc", Source::Header));
        assert_eq!(auth("BEARER abc"), Credential::Token("abc", Source::Header));
        assert_eq!(auth("Bearer"), Credential::Empty);
        assert_eq!(auth("Bearer   "), Credential::Empty);
        assert_eq!(auth("Basic Zm9v"), Credential::Missing);
        assert_eq!(auth(""), Credential::Missing);
        assert_eq!(extract(None, None, &schemes(), None), Credential::Missing);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_malformed_never_a_crash() {
        let s = schemes();
        assert_eq!(extract(Some(b"Bearer \xff\xfe"), None, &s, None), Credential::Malformed);
        assert_eq!(extract(Some(b"Bearer mt_\xc3"), None, &s, None), Credential::Malformed);
        assert_eq!(extract(Some(b"\xff\xfe abc"), None, &s, None), Credential::Missing, "an unknown scheme");
        assert_eq!(extract(None, Some(b"a=\xff; session=\xfe"), &s, Some("session")), Credential::Malformed);
        assert_eq!(extract(None, Some(b"a=\xff; session=tok"), &s, Some("session")), Credential::Token("tok", Source::Cookie));
        assert_eq!(without_cookie(b"a=\xff; session=tok", "session").as_deref(), Some(&b"a=\xff"[..]));
    }

    #[test]
    fn falls_back_to_the_cookie() {
        let s = schemes();
        let c = Some(&b"a=1; session=tok; b=2"[..]);
        assert_eq!(extract(None, c, &s, Some("session")), Credential::Token("tok", Source::Cookie));
        assert_eq!(extract(None, Some(b"session=\"tok\""), &s, Some("session")), Credential::Token("tok", Source::Cookie));
        assert_eq!(extract(None, c, &s, Some("other")), Credential::Missing);
        assert_eq!(extract(None, c, &s, None), Credential::Missing);
        assert_eq!(extract(Some(b"Bearer h"), c, &s, Some("session")), Credential::Token("h", Source::Header));
        assert_eq!(without_cookie(b"a=1; session=tok; b=2", "session").as_deref(), Some(&b"a=1; b=2"[..]));
        assert_eq!(without_cookie(b"session=tok", "session"), None);
    }
}
