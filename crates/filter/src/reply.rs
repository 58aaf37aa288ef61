//! The local replies the filter sends, in the wording Django REST framework clients know (the
//! texts and challenges are the contract's, shared with the companion).

use multitokens_core::contract;

/// A local reply: status, headers and a JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u32,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: String,
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No credential: 401.
    Missing,
    /// Malformed, unknown, revoked or expired: 401 `invalid_token`.
    Invalid,
    /// Token lacks a scope the path requires: 403 `insufficient_scope`.
    Scope,
    /// The token store cannot be asked: 503.
    Unavailable,
    /// A path that is not canonical, which upstreams may read differently: 400.
    BadPath,
    /// An unsafe cookie-authenticated request from another site: 403.
    CrossSite,
    /// Too many refused tokens from this client: 429, retry after that many seconds.
    Throttled(u64),
    /// A DPoP proof missing, doubled, not verifying, of another key or replayed: 401
    /// `invalid_dpop_proof`.
    DpopProof,
    /// A token bound to a key sent as a bearer token: 401 `invalid_token` with the DPoP challenge.
    DpopBearer,
}

/// The replies that do not vary per request, built once at configure time.
#[derive(Clone, Debug)]
pub struct FixedReplies {
    missing: LocalReply,
    invalid: LocalReply,
    unavailable: LocalReply,
    bad_path: LocalReply,
}

impl FixedReplies {
    /// Builds them for a realm.
    pub fn new(realm: &str) -> Self {
        FixedReplies {
            missing: deny(Denial::Missing, realm, &[]),
            invalid: deny(Denial::Invalid, realm, &[]),
            unavailable: deny(Denial::Unavailable, realm, &[]),
            bad_path: deny(Denial::BadPath, realm, &[]),
        }
    }

    /// The prebuilt reply of a denial (`None` for `Scope` and `Throttled`, which vary).
    pub fn get(&self, denial: Denial) -> Option<&LocalReply> {
        match denial {
            Denial::Missing => Some(&self.missing),
            Denial::Invalid => Some(&self.invalid),
            Denial::Unavailable => Some(&self.unavailable),
            Denial::BadPath => Some(&self.bad_path),
            Denial::Scope | Denial::CrossSite | Denial::Throttled(_) | Denial::DpopProof | Denial::DpopBearer => None,
        }
    }
}

/// 401 `use_dpop_nonce` with the nonce to make the proof again with (RFC 9449 §8).
pub fn use_dpop_nonce(nonce: &str) -> LocalReply {
    LocalReply {
        status: 401,
        headers: vec![
            ("content-type".to_string(), "application/json".to_string()),
            dpop_challenge("use_dpop_nonce"),
            ("dpop-nonce".to_string(), nonce.to_string()),
        ],
        body: json_body(contract::INVALID_TOKEN),
    }
}

fn dpop_challenge(error: &str) -> (String, String) {
    ("www-authenticate".to_string(), multitokens_core::dpop::challenge(error))
}

fn json_body(detail: &str) -> String {
    serde_json::json!({ "detail": detail }).to_string()
}

/// Builds the reply for a denial. `missing` lists the scopes lacking (for `Scope`).
pub fn deny(denial: Denial, realm: &str, missing: &[&str]) -> LocalReply {
    let json = ("content-type".to_string(), "application/json".to_string());
    let challenge = |error: Option<&str>, scope: Option<&str>| {
        ("www-authenticate".to_string(), contract::challenge(realm, error, scope))
    };
    let reply = |status: u32, headers: Vec<(String, String)>, detail: &str| LocalReply {
        status,
        headers,
        body: json_body(detail),
    };
    match denial {
        Denial::Missing => reply(401, vec![json, challenge(None, None)], contract::NOT_PROVIDED),
        Denial::Invalid => reply(401, vec![json, challenge(Some("invalid_token"), None)], contract::INVALID_TOKEN),
        Denial::Scope => reply(
            403,
            vec![json, challenge(Some("insufficient_scope"), Some(&missing.join(" ")))],
            contract::NO_PERMISSION,
        ),
        Denial::Unavailable => {
            reply(503, vec![json, ("retry-after".to_string(), "1".to_string())], contract::AUTH_UNAVAILABLE)
        }
        Denial::BadPath => reply(400, vec![json], contract::BAD_PATH),
        Denial::CrossSite => reply(403, vec![json], contract::CSRF_FAILED),
        Denial::Throttled(seconds) => {
            reply(429, vec![json, ("retry-after".to_string(), seconds.to_string())], &contract::throttled(seconds))
        }
        Denial::DpopProof => reply(401, vec![json, dpop_challenge("invalid_dpop_proof")], contract::INVALID_TOKEN),
        Denial::DpopBearer => reply(401, vec![json, dpop_challenge("invalid_token")], contract::INVALID_TOKEN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_status_challenge_and_detail() {
        let r = deny(Denial::Missing, "api", &[]);
        assert_eq!(r.status, 401);
        assert!(r.headers.contains(&("www-authenticate".into(), "Bearer realm=\"api\"".into())));
        assert_eq!(r.body, r#"{"detail":"Authentication credentials were not provided."}"#);
        let r = deny(Denial::Invalid, "api", &[]);
        assert!(r.headers[1].1.contains("error=\"invalid_token\""));
        assert_eq!(r.body, r#"{"detail":"Invalid token."}"#);
        let r = deny(Denial::Scope, "api", &["admin", "write"]);
        assert_eq!(r.status, 403);
        assert!(r.headers[1].1.contains("scope=\"admin write\""));
        assert_eq!(deny(Denial::Unavailable, "api", &[]).status, 503);
        let r = deny(Denial::Throttled(7), "api", &[]);
        assert_eq!(
            (r.status, r.body.as_str()),
            (429, r#"{"detail":"Request was throttled. Expected available in 7 seconds."}"#)
        );
        assert!(r.headers.contains(&("retry-after".into(), "7".into())));
        let r = deny(Denial::DpopProof, "api", &[]);
        assert_eq!((r.status, r.body.as_str()), (401, r#"{"detail":"Invalid token."}"#));
        let challenge = multitokens_core::dpop::challenge("invalid_dpop_proof");
        assert!(r.headers.contains(&("www-authenticate".into(), challenge.clone())));
        assert!(
            challenge.starts_with(r#"DPoP algs="ES256 EdDSA Ed25519"#)
                && challenge.ends_with(r#"error="invalid_dpop_proof""#)
        );
        assert!(deny(Denial::DpopBearer, "api", &[]).headers[1].1.ends_with(r#"error="invalid_token""#));
        assert_eq!(
            (deny(Denial::BadPath, "api", &[]).status, deny(Denial::BadPath, "api", &[]).body.as_str()),
            (400, r#"{"detail":"Malformed request path."}"#)
        );
    }
}
