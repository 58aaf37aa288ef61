//! The wire format between the filter and the companion's internal endpoints: the lookup by
//! digest (`POST /v1/internal/lookup`) and the revocation feed (`GET /v1/internal/revocations`).

use super::cache::Identity;
use crate::core::digest::TokenDigest;
use crate::core::token::RoutingTag;
use serde::Deserialize;

/// Path of the lookup endpoint.
pub const LOOKUP_PATH: &str = "/v1/internal/lookup";
/// Path of the revocation feed endpoint.
pub const FEED_PATH: &str = "/v1/internal/revocations";

/// The lookup request: routing tag and digest, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupRequest {
    /// Routing tag.
    pub tag: RoutingTag,
    /// Token digest.
    pub digest: TokenDigest,
    /// Sliding refresh to apply, seconds.
    pub refresh_ttl: Option<u64>,
}

impl LookupRequest {
    /// The companion's lookup path for this request (a bodiless GET; hex needs no escaping).
    pub fn path(&self) -> String {
        let mut path = format!("{LOOKUP_PATH}?tag={}&digest={}", self.tag.to_hex(), self.digest.to_hex());
        if let Some(ttl) = self.refresh_ttl {
            path.push_str(&format!("&refresh_ttl={ttl}"));
        }
        path
    }
}

#[derive(Deserialize)]
struct LookupReply {
    active: bool,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    expires_in_ms: Option<u64>,
    #[serde(default)]
    id: Option<String>,
}

/// What the store said about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Valid, with milliseconds left (`None`: immortal).
    Valid(Identity, Option<u64>),
    /// Unknown, revoked or expired.
    Unknown,
}

/// Why there is no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalloutProblem {
    /// No response at all: timeout, reset, no healthy upstream.
    NoResponse,
    /// A response that is not an answer: bad status or body.
    BadResponse(String),
}

/// Interprets the lookup response (`status` is `None` when there was no response).
pub fn parse_answer(status: Option<u32>, body: &[u8]) -> Result<Answer, CalloutProblem> {
    match status {
        None => Err(CalloutProblem::NoResponse),
        Some(200) => {
            let reply: LookupReply = serde_json::from_slice(body).map_err(|e| CalloutProblem::BadResponse(format!("lookup body: {e}")))?;
            if !reply.active {
                return Ok(Answer::Unknown);
            }
            match (reply.user, reply.id) {
                (Some(user), Some(id)) if !user.is_empty() => {
                    // milliseconds when the companion gives them, else whole seconds
                    let left = reply.expires_in_ms.or(reply.expires_in.map(|s| s.saturating_mul(1000)));
                    Ok(Answer::Valid(Identity::new(user, reply.device.unwrap_or_default(), reply.scopes, id), left))
                }
                _ => Err(CalloutProblem::BadResponse("lookup body: active without user or id".into())),
            }
        }
        Some(other) => Err(CalloutProblem::BadResponse(format!("lookup status {other}"))),
    }
}

/// A page of the revocation feed.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct FeedPage {
    /// Cursor for the next poll.
    pub cursor: String,
    /// Revoked digests, hex.
    #[serde(default)]
    pub digests: Vec<String>,
    /// Entries were lost: drop every cached verdict.
    #[serde(default)]
    pub reset: bool,
    /// The page is full: read the next one at once.
    #[serde(default)]
    pub more: bool,
}

/// Interprets a feed response.
pub fn parse_feed(status: Option<u32>, body: &[u8]) -> Result<FeedPage, CalloutProblem> {
    match status {
        None => Err(CalloutProblem::NoResponse),
        Some(200) => serde_json::from_slice(body).map_err(|e| CalloutProblem::BadResponse(format!("feed body: {e}"))),
        Some(other) => Err(CalloutProblem::BadResponse(format!("feed status {other}"))),
    }
}

/// The feed path for a cursor (`None`: ask for the current tail).
pub fn feed_path(cursor: Option<&str>) -> String {
    match cursor {
        // cursors are stream ids (digits and one dash): nothing to escape
        Some(c) if c.bytes().all(|b| b.is_ascii_digit() || b == b'-') => format!("{FEED_PATH}?after={c}"),
        _ => FEED_PATH.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_problems() {
        let body = br#"{"active":true,"user":"u","device":"d","scopes":["a"],"expires_in":5,"id":"i"}"#;
        assert_eq!(
            parse_answer(Some(200), body),
            Ok(Answer::Valid(Identity::new("u".into(), "d".into(), vec!["a".into()], "i".into()), Some(5000)))
        );
        let ms = br#"{"active":true,"user":"u","id":"i","expires_in":5,"expires_in_ms":4321}"#;
        assert!(matches!(parse_answer(Some(200), ms), Ok(Answer::Valid(_, Some(4321)))));
        assert_eq!(parse_answer(Some(200), br#"{"active":false}"#), Ok(Answer::Unknown));
        assert_eq!(parse_answer(None, b""), Err(CalloutProblem::NoResponse));
        assert!(matches!(parse_answer(Some(503), b"{}"), Err(CalloutProblem::BadResponse(_))));
        assert!(matches!(parse_answer(Some(200), b"\xff garbage"), Err(CalloutProblem::BadResponse(_))));
        assert!(matches!(parse_answer(Some(200), br#"{"active":true}"#), Err(CalloutProblem::BadResponse(_))));
    }

    #[test]
    fn feed_pages() {
        assert_eq!(parse_feed(Some(200), br#"{"cursor":"1-0","digests":["ab"],"reset":false}"#).unwrap().digests, vec!["ab"]);
        assert!(parse_feed(Some(401), b"").is_err());
        assert_eq!(feed_path(None), FEED_PATH);
        assert_eq!(feed_path(Some("17-3")), format!("{FEED_PATH}?after=17-3"));
        assert_eq!(feed_path(Some("x&y")), FEED_PATH);
    }
}
