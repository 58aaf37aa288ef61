//! The route a request reaches, read the way lenient upstreams read it. Express, ASP.NET Core
//! and Spring before 6 route `/API/Admin/stats/` to the `/api/admin/stats` handler, many
//! frameworks decode `%3A` to `:` before routing, and method-override middleware runs a `POST`
//! carrying `X-HTTP-Method-Override: DELETE` as a `DELETE`. Scope rules match that reading, so no
//! spelling reaches a protected handler without its scope; exclusions match only the literal
//! canonical path and method, so a spelling never turns a protected route into an excluded one.

use super::header_list::{length_bit, HeaderList};
use super::path::PathProblem;
use serde::Deserialize;

/// How the upstream behind the filter reads requests (`upstream_routing` in the plugin config).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRouting {
    /// The upstream routes `/Admin` and `/admin` to different handlers: scope rules then match
    /// case-sensitively. Off by default: rules match every spelling in any case, which can only
    /// ever ask for more scopes.
    #[serde(default)]
    pub case_sensitive: bool,
    /// Request headers whose value the upstream may run as the method (lower-case names).
    #[serde(default = "default_override_headers")]
    pub method_override_headers: Vec<String>,
    /// Query parameters whose value the upstream may run as the method (Laravel's and Symfony's `_method`).
    #[serde(default = "default_override_params")]
    pub method_override_params: Vec<String>,
}

impl Default for UpstreamRouting {
    fn default() -> Self {
        UpstreamRouting {
            case_sensitive: false,
            method_override_headers: default_override_headers(),
            method_override_params: default_override_params(),
        }
    }
}

fn default_override_headers() -> Vec<String> {
    ["x-http-method-override", "x-http-method", "x-method-override"].map(String::from).to_vec()
}

fn default_override_params() -> Vec<String> {
    vec!["_method".into()]
}

impl UpstreamRouting {
    /// Checks the settings and lower-cases the header names.
    pub fn compile(&mut self) -> Result<(), String> {
        for name in &mut self.method_override_headers {
            let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(format!("upstream_routing.method_override_headers: {name:?} is not a valid header name"));
            }
            *name = name.to_ascii_lowercase();
        }
        for name in &self.method_override_params {
            if name.is_empty() || name.contains(['&', '=', '#']) {
                return Err(format!("upstream_routing.method_override_params: {name:?} is not a valid parameter name"));
            }
        }
        Ok(())
    }
}

/// The route key of a canonical path (see [`super::path::canonical`]) as a lenient upstream
/// reads it: percent-decoded once, one trailing slash dropped, and unless `case_sensitive`,
/// case-folded (ASCII, and the letters that Unicode or .NET fold to ASCII: `ſ`, `K`, `ı`, `İ`).
/// A path whose decoded form is not UTF-8, or holds another escape (`%253A`, which an upstream
/// that decodes twice reads as `:`), cannot be matched safely and is refused.
pub fn route_key(canonical: &str, case_sensitive: bool) -> Result<String, PathProblem> {
    let text = if canonical.contains('%') {
        let text = String::from_utf8(percent_decode(canonical.as_bytes())).map_err(|_| PathProblem::Encoding)?;
        if holds_escape(text.as_bytes()) {
            return Err(PathProblem::Encoding);
        }
        text
    } else {
        canonical.to_string() // nothing to decode, and no escape left
    };
    let mut key: String = match (case_sensitive, text.is_ascii()) {
        (true, _) => text,
        // the folds past ASCII fold nothing in an ASCII path: in place, byte by byte, is the same
        (false, true) => {
            let mut text = text;
            text.make_ascii_lowercase();
            text
        }
        (false, false) => text.chars().map(fold).collect(),
    };
    if key.len() > 1 && key.ends_with('/') {
        key.pop();
    }
    Ok(key)
}

/// A rule's path pattern as a route key: the pattern must be canonical, ASCII and without a query;
/// `keep_slash` keeps a prefix's trailing slash (`/api/admin/` then still covers `/api/admin`).
pub fn pattern_key(pattern: &str, case_sensitive: bool, keep_slash: bool) -> Result<String, String> {
    match super::path::canonical(pattern.as_bytes()) {
        Ok(p) if p == pattern && pattern != "*" => {}
        Ok(_) => return Err(format!("path {pattern:?} must be a path without a query or fragment")),
        Err(problem) => {
            return Err(format!(
                "path {pattern:?} is not canonical ({problem:?}): write it as clients' canonical requests do"
            ))
        }
    }
    let key =
        route_key(pattern, case_sensitive).map_err(|p| format!("path {pattern:?} cannot be matched safely ({p:?})"))?;
    if !key.is_ascii() {
        return Err(format!("path {pattern:?} must decode to ASCII"));
    }
    Ok(if keep_slash && pattern.len() > 1 && pattern.ends_with('/') { format!("{key}/") } else { key })
}

fn fold(c: char) -> char {
    match c {
        '\u{17f}' => 's',             // LATIN SMALL LETTER LONG S: simple case folding gives 's'
        '\u{212a}' => 'k',            // KELVIN SIGN
        '\u{131}' | '\u{130}' => 'i', // dotless i, I with dot: .NET's invariant upper/lower case gives I/i
        c => c.to_ascii_lowercase(),
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn holds_escape(bytes: &[u8]) -> bool {
    bytes.windows(3).any(|w| w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some())
}

/// `%XX` decoded once; anything else as it is.
pub fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
            {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The methods a request may run as: its own, and every override a header or query parameter the
/// upstream honours names (upper-cased; comma-separated values each count).
pub fn methods(method: &str, raw_path: &[u8], headers: &HeaderList, routing: &UpstreamRouting) -> Vec<String> {
    let mut all = vec![method.to_ascii_uppercase()];
    let mut add = |value: &[u8]| {
        for part in value.split(|b| *b == b',') {
            let part = String::from_utf8_lossy(part).trim().to_ascii_uppercase();
            if !part.is_empty() && !all.contains(&part) {
                all.push(part);
            }
        }
    };
    // lengths first: nearly every header of a request is none of these
    let lengths = routing.method_override_headers.iter().fold(0, |bits, h| bits | length_bit(h.len()));
    let named = |name: &[u8]| {
        lengths & length_bit(name.len()) != 0
            && routing.method_override_headers.iter().any(|h| h.as_bytes().eq_ignore_ascii_case(name))
    };
    for (name, value) in headers.iter() {
        if named(name) {
            add(value);
        }
    }
    let query = raw_path.iter().position(|b| *b == b'?').and_then(|i| raw_path.get(i + 1..));
    if let (false, Some(query)) = (routing.method_override_params.is_empty(), query) {
        let query = query.split(|b| *b == b'#').next().unwrap_or_default();
        for pair in query.split(|b| *b == b'&' || *b == b';') {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            let name = percent_decode(&plus_as_space(name));
            if routing.method_override_params.iter().any(|p| p.as_bytes().eq_ignore_ascii_case(&name)) {
                add(&percent_decode(&plus_as_space(value)));
            }
        }
    }
    all
}

fn plus_as_space(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_a_lenient_upstream_routes_together_share_one_key() {
        for spelling in
            ["/api/admin/stats", "/API/ADMIN/stats", "/Api/admin/stats/", "/api/%61dmin/stats", "/api/admin/%53tats"]
        {
            assert_eq!(route_key(spelling, false).unwrap(), "/api/admin/stats", "{spelling}");
        }
        assert_eq!(route_key("/v1/orders%3Acancel", false).unwrap(), "/v1/orders:cancel");
        assert_eq!(route_key("/v1/orders%3acancel", false).unwrap(), "/v1/orders:cancel");
        assert_eq!(route_key("/users/%40me/keys", false).unwrap(), "/users/@me/keys");
        assert_eq!(route_key("/api/admin/%C5%BFtats", false).unwrap(), "/api/admin/stats", "long s folds to s");
        assert_eq!(route_key("/%E2%84%AA", false).unwrap(), "/k", "the Kelvin sign folds to k");
        assert_eq!(route_key("/", false).unwrap(), "/");
        assert_eq!(route_key("/Admin/", true).unwrap(), "/Admin", "case kept when the upstream is case-sensitive");
    }

    #[test]
    fn what_cannot_be_matched_safely_is_refused() {
        assert_eq!(route_key("/api/%253Acancel", false), Err(PathProblem::Encoding), "double-encoded");
        assert_eq!(route_key("/api/%FF", false), Err(PathProblem::Encoding), "not UTF-8 once decoded");
    }

    #[test]
    fn rule_patterns_are_checked_and_keyed_like_requests() {
        assert_eq!(pattern_key("/API/Admin/", false, true).unwrap(), "/api/admin/");
        assert_eq!(pattern_key("/api/billing/", false, false).unwrap(), "/api/billing");
        assert_eq!(pattern_key("/v1/orders%3Acancel", false, false).unwrap(), "/v1/orders:cancel");
        for bad in ["api", "/a/../b", "/a//b", "/a?x=1", "/a;b", "/a/%2e", "/%C3%A9", "*", "/a%2Fb"] {
            assert!(pattern_key(bad, false, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_add_the_methods_the_upstream_may_run() {
        let routing = UpstreamRouting::default();
        let h = |n: &str, v: &str| HeaderList::from_pairs(&[(n, v)]);
        let no = HeaderList::default;
        assert_eq!(methods("post", b"/x", &h("X-HTTP-Method-Override", "delete"), &routing), vec!["POST", "DELETE"]);
        assert_eq!(methods("POST", b"/x", &h("x-http-method", "PUT, PATCH"), &routing), vec!["POST", "PUT", "PATCH"]);
        assert_eq!(methods("POST", b"/x?a=1&_method=DELETE", &no(), &routing), vec!["POST", "DELETE"]);
        assert_eq!(methods("POST", b"/x?_%6Dethod=put#f", &no(), &routing), vec!["POST", "PUT"]);
        assert_eq!(methods("GET", b"/x?method=DELETE", &h("x-other", "DELETE"), &routing), vec!["GET"]);
        let none = UpstreamRouting {
            method_override_headers: vec![],
            method_override_params: vec![],
            ..UpstreamRouting::default()
        };
        assert_eq!(methods("POST", b"/x?_method=DELETE", &h("x-http-method-override", "DELETE"), &none), vec!["POST"]);
    }
}
