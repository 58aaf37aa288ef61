//! The contract between the parts: what the filter, the companion and the demo app must agree
//! on, defined once so that changing it is a compile error on both sides. The internal endpoints'
//! paths and their request and answer types (serde, both directions), the identity header names,
//! and the reply texts and challenges clients see.

use serde::{Deserialize, Serialize};

/// The filter's lookup by digest (a bodiless GET; see [`LookupQuery`]).
pub const LOOKUP_PATH: &str = "/v1/internal/lookup";
/// Several lookups in one `POST` (a [`LookupBatch`]; the native module's lookups beyond its
/// `max_lookups_in_flight`, sent together).
pub const LOOKUPS_PATH: &str = "/v1/internal/lookups";
/// At most this many lookups in one [`LookupBatch`].
pub const MAX_LOOKUP_BATCH: usize = 32;
/// The revocation feed (`?after=<cursor>`; no cursor: the current tail, `0`: the beginning).
pub const FEED_PATH: &str = "/v1/internal/revocations";
/// Where edges report device activity (`POST`, a [`crate::activity::ActivityBatch`]).
pub const ACTIVITY_PATH: &str = "/v1/internal/activity";
/// Envoy's `ext_authz` HTTP service check (`/v1/ext_authz/<any path>`).
pub const EXT_AUTHZ_PATH: &str = "/v1/ext_authz";

/// Identity header: the user id.
pub const USER_HEADER: &str = "x-multitokens-user";
/// Identity header: the device label.
pub const DEVICE_HEADER: &str = "x-multitokens-device";
/// Identity header: the scopes, separated by spaces.
pub const SCOPES_HEADER: &str = "x-multitokens-scopes";
/// Identity header: the token's public id.
pub const TOKEN_ID_HEADER: &str = "x-multitokens-token-id";
/// Identity header: where the credential came from, `header` or `cookie`.
pub const CREDENTIAL_HEADER: &str = "x-multitokens-credential";
/// `x-multitokens-credential`'s value for a token from the `Authorization` header.
pub const CREDENTIAL_FROM_HEADER: &str = "header";
/// `x-multitokens-credential`'s value for a token from the cookie.
pub const CREDENTIAL_FROM_COOKIE: &str = "cookie";
/// Every identity header, in that order.
pub const IDENTITY_HEADERS: [&str; 5] = [USER_HEADER, DEVICE_HEADER, SCOPES_HEADER, TOKEN_ID_HEADER, CREDENTIAL_HEADER];

/// The identity headers under their default names for a valid token, as the companion's ext_authz
/// sets them (the filter sets the same values under its configured names).
pub fn identity_headers(user: &str, device: &str, scopes: &[String], token_id: &str) -> Vec<(&'static str, String)> {
    vec![
        (USER_HEADER, user.to_string()),
        (DEVICE_HEADER, device.to_string()),
        (SCOPES_HEADER, scopes.join(" ")),
        (TOKEN_ID_HEADER, token_id.to_string()),
    ]
}

/// The `Authorization` schemes accepted by default (lower-case).
pub const DEFAULT_SCHEMES: [&str; 2] = ["bearer", "token"];

/// Reply text: no credential (DRF's wording).
pub const NOT_PROVIDED: &str = "Authentication credentials were not provided.";
/// Reply text: malformed, unknown, revoked or expired token (DRF's wording).
pub const INVALID_TOKEN: &str = "Invalid token.";
/// Reply text: a scope is missing (DRF's wording).
pub const NO_PERMISSION: &str = "You do not have permission to perform this action.";
/// Reply text: the filter cannot ask the token store.
pub const AUTH_UNAVAILABLE: &str = "Authentication service unavailable.";
/// Reply text: a path that is not canonical.
pub const BAD_PATH: &str = "Malformed request path.";
/// Reply text: an unsafe cookie-authenticated request from another site (DRF's wording).
pub const CSRF_FAILED: &str = "CSRF Failed: Origin checking failed.";

/// Reply text: too many refused tokens (DRF's wording).
pub fn throttled(seconds: u64) -> String {
    format!("Request was throttled. Expected available in {seconds} seconds.")
}

/// The `WWW-Authenticate` challenge (RFC 6750): realm, and the error and scope when given.
pub fn challenge(realm: &str, error: Option<&str>, scope: Option<&str>) -> String {
    let mut c = format!("Bearer realm=\"{realm}\"");
    if let Some(e) = error {
        c.push_str(&format!(", error=\"{e}\""));
    }
    if let Some(s) = scope {
        c.push_str(&format!(", scope=\"{s}\""));
    }
    c
}

/// The lookup's query: routing tag and digest (hex), never the token; and the sliding refresh
/// to apply, in seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams, utoipa::ToSchema), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    /// Routing tag, 8 hex characters.
    pub tag: String,
    /// Token digest, 64 hex characters.
    pub digest: String,
    /// Its digests under previous hash keys, comma-separated (a rotation in progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// With `previous`: the fingerprint of the key `digest` was made with. The companion re-keys
    /// a record found under a previous digest to `digest` only when this is its own current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Sliding refresh, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_ttl: Option<u64>,
}

impl LookupQuery {
    /// The request path with this query (hex and digits need no escaping).
    pub fn path(&self) -> String {
        let mut path = format!("{LOOKUP_PATH}?tag={}&digest={}", self.tag, self.digest);
        if let Some(previous) = &self.previous {
            path.push_str(&format!("&previous={previous}"));
        }
        if let Some(key_id) = &self.key_id {
            path.push_str(&format!("&key_id={key_id}"));
        }
        if let Some(ttl) = self.refresh_ttl {
            path.push_str(&format!("&refresh_ttl={ttl}"));
        }
        path
    }
}

/// The lookup's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LookupAnswer {
    /// Whether the token is live.
    pub active: bool,
    /// The user (when active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The device label (when active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Scopes granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Whole seconds left, `None` when immortal (or not active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// Milliseconds left, `None` when immortal (or not active): what the filter caches by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// The token's public id (when active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Which of the digests asked for the record is stored under now: 0 `digest`, `n` the n-th of
    /// `previous`. Revocations are published under it, so the filter caches the verdict by it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stored_under: usize,
    /// The JWK SHA-256 thumbprint of the key the token is bound to (DPoP), when it is bound: the
    /// filter then accepts it only with a proof made with that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

/// Several tokens' lookups in one request, each as [`LookupQuery`] (at most [`MAX_LOOKUP_BATCH`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LookupBatch {
    /// The lookups.
    pub lookups: Vec<LookupQuery>,
}

/// A [`LookupBatch`]'s answers, in the order of its lookups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LookupAnswers {
    /// One answer per lookup.
    pub answers: Vec<LookupAnswer>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl LookupAnswer {
    /// "Not active": unknown, revoked or expired.
    pub fn inactive() -> Self {
        LookupAnswer::default()
    }
}

/// The revocation feed's query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// The cursor of the last page applied (it acknowledges that page).
    #[serde(default)]
    pub after: Option<String>,
    /// The polling filter VM's id, so the companion can tell who has applied what.
    #[serde(default)]
    pub edge: Option<String>,
    /// Hold the poll up to this long (ms) until something is revoked: a long poll.
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

impl FeedQuery {
    /// The request path for a cursor (`None`: ask for the current tail), an edge id and a long
    /// poll's wait. A cursor or edge id with other characters than those they are made of is
    /// not sent.
    pub fn path(cursor: Option<&str>, edge: Option<&str>, wait_ms: u64) -> String {
        let mut query = Vec::new();
        if let Some(c) = cursor.filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit() || b == b'-')) {
            query.push(format!("after={c}"));
        }
        if let Some(e) =
            edge.filter(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            query.push(format!("edge={e}"));
        }
        if wait_ms > 0 {
            query.push(format!("wait_ms={wait_ms}"));
        }
        if query.is_empty() {
            FEED_PATH.to_string()
        } else {
            format!("{FEED_PATH}?{}", query.join("&"))
        }
    }
}

/// A page of the revocation feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedPage {
    /// Cursor for the next poll.
    pub cursor: String,
    /// Revoked digests (hex) after the previous cursor.
    #[serde(default)]
    pub digests: Vec<String>,
    /// Entries after the previous cursor were lost: drop every cached verdict.
    #[serde(default)]
    pub reset: bool,
    /// The page is full: read the next one at once.
    #[serde(default)]
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_read_what_the_other_writes() {
        let q = LookupQuery {
            tag: "0a0b0c0d".into(),
            digest: "ff".repeat(32),
            previous: Some(format!("{},{}", "aa".repeat(32), "bb".repeat(32))),
            key_id: Some("0123456789abcdef".into()),
            refresh_ttl: Some(60),
        };
        let path = q.path();
        let query = path.split_once('?').unwrap().1;
        assert_eq!(serde_urlencoded_like(query), q);
        let a = LookupAnswer {
            active: true,
            user: Some("u".into()),
            id: Some("i".into()),
            expires_in_ms: Some(5),
            ..Default::default()
        };
        assert_eq!(serde_json::from_str::<LookupAnswer>(&serde_json::to_string(&a).unwrap()).unwrap(), a);
        assert_eq!(serde_json::to_string(&LookupAnswer::inactive()).unwrap(), r#"{"active":false}"#);
        let p = FeedPage { cursor: "1-0".into(), digests: vec!["ab".into()], reset: false, more: true };
        assert_eq!(serde_json::from_str::<FeedPage>(&serde_json::to_string(&p).unwrap()).unwrap(), p);
        assert_eq!(FeedQuery::path(Some("17-3"), None, 0), format!("{FEED_PATH}?after=17-3"));
        assert_eq!(FeedQuery::path(Some("x&y"), Some("a&b"), 0), FEED_PATH);
        assert_eq!(
            FeedQuery::path(Some("17-3"), Some("ab12"), 5000),
            format!("{FEED_PATH}?after=17-3&edge=ab12&wait_ms=5000")
        );
        assert_eq!(
            challenge("api", Some("insufficient_scope"), Some("a b")),
            r#"Bearer realm="api", error="insufficient_scope", scope="a b""#
        );
    }

    /// The query string as the companion reads it (key=value pairs).
    fn serde_urlencoded_like(query: &str) -> LookupQuery {
        let map: serde_json::Map<String, serde_json::Value> = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.parse::<u64>().map(serde_json::Value::from).unwrap_or_else(|_| serde_json::Value::from(v)),
                )
            })
            .collect();
        serde_json::from_value(serde_json::Value::Object(map)).unwrap()
    }
}
