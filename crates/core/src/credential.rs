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

/// Extracts the credential from the raw header values: every `Authorization` value and every
/// `Cookie` value the request carries. `schemes` are lower-case. A request that carries two
/// credentials (two `Authorization` values, the cookie twice, or a header and a cookie with
/// different tokens) is malformed: the filter never guesses which one the upstream will read.
pub fn extract<'a>(
    authorization: &[&'a [u8]],
    cookie_headers: &[&'a [u8]],
    schemes: &[String],
    cookie: Option<&'a str>,
) -> Credential<'a> {
    let from_header = match authorization {
        [] => Credential::Missing,
        [value] => from_authorization(value, schemes),
        _ => return Credential::Malformed,
    };
    let from_cookie = match cookie {
        Some(name) => {
            let mut found = cookie_headers.iter().flat_map(|h| named_cookie(h, name));
            match (found.next(), found.next()) {
                (None, _) => Credential::Missing,
                (Some(v), None) => candidate(v, Source::Cookie),
                (Some(_), Some(_)) => return Credential::Malformed,
            }
        }
        None => Credential::Missing,
    };
    match (from_header, from_cookie) {
        (Credential::Token(h, _), Credential::Token(c, _)) if h != c => Credential::Malformed,
        (Credential::Missing, c) => c,
        (h, _) => h,
    }
}

fn from_authorization<'a>(value: &'a [u8], schemes: &[String]) -> Credential<'a> {
    let (scheme, rest) = split_scheme(value);
    if is_ours(scheme, schemes) {
        candidate(rest.trim_ascii(), Source::Header)
    } else {
        Credential::Missing
    }
}

/// An `Authorization` value's scheme and the rest, split at the first space or tab.
fn split_scheme(value: &[u8]) -> (&[u8], &[u8]) {
    let value = value.trim_ascii();
    let split = value.iter().position(|b| *b == b' ' || *b == b'\t');
    split.map_or((value, &b""[..]), |i| (&value[..i], &value[i + 1..]))
}

fn is_ours(scheme: &[u8], schemes: &[String]) -> bool {
    // a scheme is a few bytes: compared byte by byte (the slice method's chunked loop costs more
    // than the comparison it makes)
    let same =
        |ours: &[u8]| ours.len() == scheme.len() && ours.iter().zip(scheme).all(|(a, b)| a.eq_ignore_ascii_case(b));
    schemes.iter().any(|s| same(s.as_bytes()))
}

/// Whether an `Authorization` value uses one of `schemes`, read as [`extract`] reads it (so a
/// value it takes a token from is always one this says is ours).
pub fn has_scheme(value: &[u8], schemes: &[String]) -> bool {
    is_ours(split_scheme(value).0, schemes)
}

/// Whether the `Cookie` headers carry the named cookie, read as [`extract`] reads them.
pub fn has_cookie(headers: &[&[u8]], name: &str) -> bool {
    headers.iter().any(|h| named_cookie(h, name).next().is_some())
}

/// Every value of the named cookie in one `Cookie` header (quotes removed).
fn named_cookie<'a>(header: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    header.split(|b| *b == b';').filter_map(move |pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then(|| {
            let v = pair[eq + 1..].trim_ascii();
            v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v)
        })
    })
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

/// The `Cookie` headers without the named cookie, joined into one value (`None` when nothing is
/// left). The other cookies are kept byte for byte.
pub fn without_cookie(headers: &[&[u8]], name: &str) -> Option<Vec<u8>> {
    let kept: Vec<&[u8]> = headers
        .iter()
        .flat_map(|h| h.split(|b| *b == b';'))
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
        extract(&[value.as_bytes()], &[], &schemes(), None)
    }

    #[test]
    fn what_extract_takes_a_token_from_is_what_has_scheme_and_has_cookie_see() {
        for value in ["Bearer t", "bearer\tt", " Token  t ", "BEARER"] {
            assert!(has_scheme(value.as_bytes(), &schemes()), "{value:?}");
        }
        for value in ["Basic dXNlcjpwdw==", "Bearerx t", "Beare t", "Tokem t", "\u{a0}Bearer t", ""] {
            assert!(!has_scheme(value.as_bytes(), &schemes()), "{value:?}");
        }
        assert!(!has_cookie(&[b"a=1", b" mt = x"], "mt"), "a name with spaces is another cookie");
        assert!(has_cookie(&[b"a=1", b"theme=dark; mt=\"x\""], "mt"));
        assert!(!has_cookie(&[b"mtx=1; xmt=2"], "mt"));
    }

    fn with_cookie<'a>(authorization: &[&'a [u8]], cookies: &[&'a [u8]], name: &'a str) -> Credential<'a> {
        extract(authorization, cookies, &schemes(), Some(name))
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
        assert_eq!(extract(&[], &[], &schemes(), None), Credential::Missing);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_malformed_never_a_crash() {
        let s = schemes();
        assert_eq!(extract(&[b"Bearer \xff\xfe"], &[], &s, None), Credential::Malformed);
        assert_eq!(extract(&[b"Bearer mt_\xc3"], &[], &s, None), Credential::Malformed);
        assert_eq!(extract(&[b"\xff\xfe abc"], &[], &s, None), Credential::Missing, "an unknown scheme");
        assert_eq!(with_cookie(&[], &[b"a=\xff; session=\xfe"], "session"), Credential::Malformed);
        assert_eq!(with_cookie(&[], &[b"a=\xff; session=tok"], "session"), Credential::Token("tok", Source::Cookie));
        assert_eq!(without_cookie(&[b"a=\xff; session=tok"], "session").as_deref(), Some(&b"a=\xff"[..]));
    }

    #[test]
    fn falls_back_to_the_cookie() {
        let c: &[u8] = b"a=1; session=tok; b=2";
        assert_eq!(with_cookie(&[], &[c], "session"), Credential::Token("tok", Source::Cookie));
        assert_eq!(with_cookie(&[], &[b"session=\"tok\""], "session"), Credential::Token("tok", Source::Cookie));
        assert_eq!(with_cookie(&[], &[c], "other"), Credential::Missing);
        assert_eq!(extract(&[], &[c], &schemes(), None), Credential::Missing);
        assert_eq!(
            with_cookie(&[b"Bearer tok"], &[c], "session"),
            Credential::Token("tok", Source::Header),
            "the same token twice"
        );
        assert_eq!(without_cookie(&[c], "session").as_deref(), Some(&b"a=1; b=2"[..]));
        assert_eq!(without_cookie(&[b"session=tok"], "session"), None);
        assert_eq!(without_cookie(&[b"a=1", b"session=tok; b=2"], "session").as_deref(), Some(&b"a=1; b=2"[..]));
    }

    #[test]
    fn two_credentials_are_never_a_guess() {
        assert_eq!(extract(&[b"Bearer a", b"Bearer b"], &[], &schemes(), None), Credential::Malformed);
        assert_eq!(extract(&[b"Bearer a", b"Bearer a"], &[], &schemes(), None), Credential::Malformed);
        assert_eq!(with_cookie(&[b"Bearer a"], &[b"session=b"], "session"), Credential::Malformed);
        assert_eq!(with_cookie(&[], &[b"session=a; session=b"], "session"), Credential::Malformed);
        assert_eq!(with_cookie(&[], &[b"session=a", b"session=a"], "session"), Credential::Malformed);
    }
}
