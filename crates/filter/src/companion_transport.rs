//! The companion transport of the stock build: the answers of the companion's internal endpoints
//! (lookup by digest, revocation feed), read with the contract's own types.

use super::config::{Compiled, Transport};
use super::identity::Identity;
use super::lookup::{Answer, CalloutProblem, FeedPage, LookupRequest};
use multitokens_core::activity::{ActivityBatch, ActivityReport};
use multitokens_core::contract::{FeedQuery, LookupAnswer, LookupAnswers, LookupBatch, ACTIVITY_PATH, LOOKUPS_PATH};
use multitokens_core::dpop::Thumbprint;

/// A call to the companion's internal endpoints, as every shell sends it: the Envoy cluster it
/// goes through, its method, path, headers, body and timeout.
pub struct CompanionCall<'a> {
    /// `GET` (lookup, feed) or `POST` (activity).
    method: &'static str,
    /// The companion's Envoy cluster.
    pub cluster: &'a str,
    /// The request path (with its query).
    pub path: String,
    /// The authority the companion is reached under.
    authority: &'a str,
    /// The `authorization` header (the internal API key).
    authorization: &'a str,
    /// How long Envoy waits for the answer.
    pub timeout_ms: u64,
    /// The request body (JSON; empty for a GET).
    pub body: Vec<u8>,
}

impl<'a> CompanionCall<'a> {
    fn new(compiled: &'a Compiled, path: String, timeout_ms: u64) -> Result<Self, String> {
        let Transport::Companion(c) = &compiled.transport else { return Err("no companion configured".into()) };
        let (cluster, authority, authorization) = (&c.cluster[..], &c.authority[..], &compiled.companion_auth[..]);
        Ok(CompanionCall { method: "GET", cluster, path, authority, authorization, timeout_ms, body: Vec::new() })
    }

    /// The lookup of a token's digests (also its sliding refresh).
    pub fn lookup(compiled: &'a Compiled, request: &LookupRequest) -> Result<Self, String> {
        Self::new(compiled, request.path(), compiled.transport.timeout_ms())
    }

    /// A revocation feed poll after `cursor` as edge `edge`.
    pub fn feed(compiled: &'a Compiled, cursor: Option<&str>, edge: &str) -> Result<Self, String> {
        Self::new(compiled, FeedQuery::path(cursor, Some(edge), compiled.feed_wait_ms()), compiled.feed_timeout_ms())
    }

    /// Several tokens' lookups in one `POST` of a [`LookupBatch`] (with their sliding refreshes).
    pub fn lookups(compiled: &'a Compiled, requests: &[LookupRequest]) -> Result<Self, String> {
        let batch = LookupBatch { lookups: requests.iter().map(LookupRequest::query).collect() };
        let body = serde_json::to_vec(&batch).map_err(|e| format!("lookup batch: {e}"))?;
        let call = Self::new(compiled, LOOKUPS_PATH.to_string(), compiled.transport.timeout_ms())?;
        Ok(CompanionCall { method: "POST", body, ..call })
    }

    /// Device activity reports (a `POST` of an [`ActivityBatch`]).
    pub fn activity(compiled: &'a Compiled, reports: &[ActivityReport]) -> Result<Self, String> {
        let batch = ActivityBatch { reports: reports.to_vec() };
        let body = serde_json::to_vec(&batch).map_err(|e| format!("activity batch: {e}"))?;
        let call = Self::new(compiled, ACTIVITY_PATH.to_string(), compiled.transport.timeout_ms())?;
        Ok(CompanionCall { method: "POST", body, ..call })
    }

    /// The request's headers, pseudo-headers first (a body comes as JSON).
    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut headers = vec![
            (":method", self.method),
            (":path", &self.path),
            (":authority", self.authority),
            ("authorization", self.authorization),
        ];
        if !self.body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        headers
    }
}

/// Interprets the lookup response (`status` is `None` when there was no response).
pub fn parse_answer(status: Option<u32>, body: &[u8]) -> Result<Answer, CalloutProblem> {
    match status {
        None => Err(CalloutProblem::NoResponse),
        Some(200) => answer_of(
            serde_json::from_slice(body).map_err(|e| CalloutProblem::BadResponse(format!("lookup body: {e}")))?,
        ),
        Some(other) => Err(CalloutProblem::BadResponse(format!("lookup status {other}"))),
    }
}

/// Interprets a batched lookup's response: one answer per request, in order, or one problem for
/// all of them (no response, a bad status, a body that does not parse or answers another number).
pub fn parse_answers(
    status: Option<u32>,
    body: &[u8],
    asked: usize,
) -> Result<Vec<Result<Answer, CalloutProblem>>, CalloutProblem> {
    match status {
        None => Err(CalloutProblem::NoResponse),
        Some(200) => {
            let reply: LookupAnswers =
                serde_json::from_slice(body).map_err(|e| CalloutProblem::BadResponse(format!("lookups body: {e}")))?;
            if reply.answers.len() != asked {
                let got = reply.answers.len();
                return Err(CalloutProblem::BadResponse(format!("lookups body: {got} answers to {asked} lookups")));
            }
            Ok(reply.answers.into_iter().map(answer_of).collect())
        }
        Some(other) => Err(CalloutProblem::BadResponse(format!("lookups status {other}"))),
    }
}

/// What one lookup answer says.
fn answer_of(reply: LookupAnswer) -> Result<Answer, CalloutProblem> {
    if !reply.active {
        return Ok(Answer::Invalid);
    }
    let (Some(user), Some(id)) = (reply.user.filter(|u| !u.is_empty()), reply.id) else {
        return Err(CalloutProblem::BadResponse("lookup body: active without user or id".into()));
    };
    // milliseconds when the companion gives them, else whole seconds
    let left = reply.expires_in_ms.or(reply.expires_in.map(|s| s.saturating_mul(1000)));
    // a binding that names no key binds the token to a key nobody holds, never to none
    let bound_to = reply.dpop_jkt.as_deref().map(|jkt| Thumbprint::from_b64(jkt).unwrap_or(Thumbprint([0; 32])));
    let identity = Identity::new(user, reply.device.unwrap_or_default(), reply.scopes, id)
        .map_err(|e| CalloutProblem::BadResponse(format!("lookup body: {e}")))?
        .bound(bound_to);
    Ok(match reply.stored_under {
        0 => Answer::Valid(identity, left),
        n => Answer::ValidUnderPrevious(identity, left, n - 1),
    })
}

/// Interprets a feed response.
pub fn parse_feed(status: Option<u32>, body: &[u8]) -> Result<FeedPage, CalloutProblem> {
    match status {
        None => Err(CalloutProblem::NoResponse),
        Some(200) => serde_json::from_slice(body).map_err(|e| CalloutProblem::BadResponse(format!("feed body: {e}"))),
        Some(other) => Err(CalloutProblem::BadResponse(format!("feed status {other}"))),
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
            Ok(Answer::Valid(Identity::new("u".into(), "d".into(), vec!["a".into()], "i".into()).unwrap(), Some(5000)))
        );
        let ms = br#"{"active":true,"user":"u","id":"i","expires_in":5,"expires_in_ms":4321}"#;
        assert!(matches!(parse_answer(Some(200), ms), Ok(Answer::Valid(_, Some(4321)))));
        assert_eq!(parse_answer(Some(200), br#"{"active":false}"#), Ok(Answer::Invalid));
        let elsewhere = br#"{"active":true,"user":"u","id":"i","stored_under":2}"#;
        assert!(matches!(parse_answer(Some(200), elsewhere), Ok(Answer::ValidUnderPrevious(_, None, 1))));
        assert_eq!(parse_answer(None, b""), Err(CalloutProblem::NoResponse));
        assert!(matches!(parse_answer(Some(503), b"{}"), Err(CalloutProblem::BadResponse(_))));
        assert!(matches!(parse_answer(Some(200), b"\xff garbage"), Err(CalloutProblem::BadResponse(_))));
        assert!(matches!(parse_answer(Some(200), br#"{"active":true}"#), Err(CalloutProblem::BadResponse(_))));
        // scopes travel joined by spaces: one holding a space would grant its parts
        let spaced = br#"{"active":true,"user":"u","id":"i","scopes":["admin x"]}"#;
        assert!(matches!(parse_answer(Some(200), spaced), Err(CalloutProblem::BadResponse(_))));
        let empty = br#"{"active":true,"user":"u","id":"i","scopes":[""]}"#;
        assert!(matches!(parse_answer(Some(200), empty), Err(CalloutProblem::BadResponse(_))));
    }

    #[test]
    fn a_batch_answers_each_lookup_or_fails_as_one() {
        let body = br#"{"answers":[{"active":true,"user":"u","id":"i"},{"active":false},{"active":true}]}"#;
        let answers = parse_answers(Some(200), body, 3).unwrap();
        assert!(matches!(answers[0], Ok(Answer::Valid(_, None))));
        assert_eq!(answers[1], Ok(Answer::Invalid));
        assert!(matches!(answers[2], Err(CalloutProblem::BadResponse(_))), "one bad answer is that lookup's problem");
        // answers that do not match the lookups asked are nobody's
        assert!(matches!(parse_answers(Some(200), body, 2), Err(CalloutProblem::BadResponse(_))));
        assert_eq!(parse_answers(None, b"", 1), Err(CalloutProblem::NoResponse));
        assert!(matches!(parse_answers(Some(404), b"{}", 1), Err(CalloutProblem::BadResponse(_))));
        assert!(matches!(parse_answers(Some(200), b"\xff", 1), Err(CalloutProblem::BadResponse(_))));
    }

    #[test]
    fn feed_pages() {
        assert_eq!(
            parse_feed(Some(200), br#"{"cursor":"1-0","digests":["ab"],"reset":false}"#).unwrap().digests,
            vec!["ab"]
        );
        assert!(parse_feed(Some(401), b"").is_err());
    }
}
