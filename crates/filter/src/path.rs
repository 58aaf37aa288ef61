//! The request path the rules see. Upstreams disagree on how they read a path: nginx, Spring and
//! many others resolve dot segments, merge slashes, decode `%61`, drop `;` parameters or read `\`
//! as `/`, so `/public/../admin` may reach a handler the rules never matched. The filter sees the
//! path before any of that, so it only decides on paths every reader agrees on: a path in
//! canonical form passes (without its query string); anything else is refused (400). Behind the
//! shipped Envoy configs (which normalise paths first) a client never meets that refusal.

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
    /// Empty, or not starting with `/`.
    NotAbsolute,
    /// A `.` or `..` segment, literal or percent-encoded.
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A backslash, literal or encoded, or an encoded slash.
    Slash,
    /// A `;` path parameter.
    Parameter,
    /// A character that needs no percent-encoding was encoded (`%61`), or a `%` without two hex digits.
    Encoding,
    /// A control character, a space or a byte outside ASCII.
    Byte,
}

/// The path part of a `:path` value if it is canonical; why not otherwise.
pub fn canonical(raw: &[u8]) -> Result<&str, PathProblem> {
    let end = raw.iter().position(|b| *b == b'?' || *b == b'#').unwrap_or(raw.len());
    let path = &raw[..end];
    if path == b"*" {
        return Ok("*"); // OPTIONS *
    }
    if path.first() != Some(&b'/') {
        return Err(PathProblem::NotAbsolute);
    }
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'\\' => return Err(PathProblem::Slash),
            b';' => return Err(PathProblem::Parameter),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(h), Some(l)) = (path.get(i + 1).and_then(|b| hex(*b)), path.get(i + 2).and_then(|b| hex(*b)))
                else {
                    return Err(PathProblem::Encoding);
                };
                match (h * 16 + l) as u8 {
                    b'/' | b'\\' => return Err(PathProblem::Slash),
                    b'.' => return Err(PathProblem::DotSegment),
                    b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~' => {
                        return Err(PathProblem::Encoding)
                    }
                    _ => {}
                }
                i += 2;
            }
            b if b <= b' ' || b >= 0x7f => return Err(PathProblem::Byte),
            _ => {}
        }
        i += 1;
    }
    let segments = path[1..].split(|b| *b == b'/');
    let count = path[1..].split(|b| *b == b'/').count();
    for (n, segment) in segments.enumerate() {
        match segment {
            b"." | b".." => return Err(PathProblem::DotSegment),
            b"" if n + 1 < count => return Err(PathProblem::EmptySegment),
            _ => {}
        }
    }
    // every byte checked above is ASCII
    std::str::from_utf8(path).map_err(|_| PathProblem::Byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_pass_without_their_query() {
        for (raw, path) in [
            ("/", "/"),
            ("/api/admin/stats", "/api/admin/stats"),
            ("/public/", "/public/"),
            ("/a/b?x=1#f", "/a/b"),
            ("/a/b?next=/../../x", "/a/b"),
            ("/files/a%20b%3Ac%25", "/files/a%20b%3Ac%25"),
            ("/v1.2/x..y/.well-known", "/v1.2/x..y/.well-known"),
            ("*", "*"),
        ] {
            assert_eq!(canonical(raw.as_bytes()), Ok(path), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use PathProblem::*;
        for (raw, why) in [
            ("/public/../api/admin/stats", DotSegment),
            ("/public/./x", DotSegment),
            ("/api/..", DotSegment),
            ("/public/%2e%2e/api/admin", DotSegment),
            ("/public/%2E./api", DotSegment),
            ("/api//admin/stats", EmptySegment),
            ("//api/admin", EmptySegment),
            ("/api/%61dmin/stats", Encoding),
            ("/api/admin%2Fstats", Slash),
            ("/api/admin%5cstats", Slash),
            ("/public\\..\\api", Slash),
            ("/api/admin;x/stats", Parameter),
            ("/public/..;/api/admin", Parameter),
            ("/api/%zz", Encoding),
            ("/api/%4", Encoding),
            ("/api/\u{e9}", Byte),
            ("/api/a b", Byte),
            ("api/admin", NotAbsolute),
            ("", NotAbsolute),
            ("?x=/", NotAbsolute),
        ] {
            assert_eq!(canonical(raw.as_bytes()), Err(why), "{raw:?}");
        }
        assert_eq!(canonical(b"/api/\xff\x01"), Err(Byte));
    }
}
