//! Every call a shell makes to the token store, whichever transport the config chose, built here
//! once: the shell only sends it (an HTTP callout to the companion, or a RESP command through the
//! Redis-callout ABI) and hands its answer back as a [`StoreReply`], which is read here too.

use super::companion_transport::{self, CompanionCall};
use super::config::{Compiled, RedisTarget, Transport};
use super::lookup::{Answer, CalloutProblem, FeedPage, LookupRequest};
use super::redis_transport;
use multitokens_core::activity::ActivityReport;

/// One call to the token store, ready to send.
pub enum StoreCall<'a> {
    /// A call to the companion's internal endpoints.
    Companion(CompanionCall<'a>),
    /// A RESP command for the Redis cluster (Redis-callout ABI).
    Redis(&'a RedisTarget, Vec<u8>),
}

impl<'a> StoreCall<'a> {
    /// A token's lookup.
    pub fn lookup(compiled: &'a Compiled, request: &LookupRequest) -> Result<Self, String> {
        Ok(match &compiled.transport {
            Transport::Companion(_) => StoreCall::Companion(CompanionCall::lookup(compiled, request)?),
            Transport::Redis(target) => {
                StoreCall::Redis(target, redis_transport::lookup_command(&compiled.layout, request, target.eval_ro))
            }
        })
    }

    /// A revocation feed poll after `cursor`, as edge `edge`.
    pub fn feed(compiled: &'a Compiled, cursor: Option<&str>, edge: &str) -> Result<Self, String> {
        Ok(match &compiled.transport {
            Transport::Companion(_) => StoreCall::Companion(CompanionCall::feed(compiled, cursor, edge)?),
            Transport::Redis(target) => {
                StoreCall::Redis(target, redis_transport::feed_command(&compiled.layout, cursor, target.eval_ro))
            }
        })
    }

    /// A sliding refresh (the companion's is a lookup that asks for it); `None` when the request
    /// asks for none.
    pub fn refresh(compiled: &'a Compiled, request: &LookupRequest) -> Result<Option<Self>, String> {
        Ok(match &compiled.transport {
            Transport::Companion(_) => Some(StoreCall::Companion(CompanionCall::lookup(compiled, request)?)),
            Transport::Redis(target) => {
                redis_transport::refresh_command(&compiled.layout, request).map(|c| StoreCall::Redis(target, c))
            }
        })
    }

    /// Device activity reports: one call to the companion, or one script per report (each writes
    /// one user's keys, which a Redis Cluster may keep anywhere).
    pub fn activity(compiled: &'a Compiled, reports: &[ActivityReport]) -> Result<Vec<Self>, String> {
        Ok(match &compiled.transport {
            Transport::Companion(_) => vec![StoreCall::Companion(CompanionCall::activity(compiled, reports)?)],
            Transport::Redis(target) => reports
                .iter()
                .filter_map(|r| redis_transport::activity_command(&compiled.layout, r))
                .map(|c| StoreCall::Redis(target, c))
                .collect(),
        })
    }
}

/// A store call's answer as the host handed it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreReply {
    /// An HTTP callout's status (`None`: no response) and body.
    Http(Option<u32>, Vec<u8>),
    /// A Redis callout's RESP reply (`None`: the call failed).
    Redis(Option<Vec<u8>>),
}

impl StoreReply {
    /// The answer of a feed poll.
    pub fn feed_page(&self) -> Result<FeedPage, CalloutProblem> {
        match self {
            StoreReply::Http(status, body) => companion_transport::parse_feed(*status, body),
            StoreReply::Redis(bytes) => redis_transport::parse_feed(bytes.as_deref()),
        }
    }

    /// The answer of `request`'s lookup (a Redis record is honoured only with a seal over the
    /// digest it was found under; `now_ms` is the host's clock) and, from Redis, the sliding
    /// refresh to send now that the token proved valid (never for an unknown one: a forged token
    /// costs one call).
    pub fn lookup_answer<'a>(
        &self,
        compiled: &'a Compiled,
        request: &LookupRequest,
        now_ms: u64,
    ) -> (Result<Answer, CalloutProblem>, Option<StoreCall<'a>>) {
        match (self, &compiled.transport) {
            (StoreReply::Http(status, body), _) => (companion_transport::parse_answer(*status, body), None),
            (StoreReply::Redis(bytes), transport) => {
                let answer = redis_transport::parse_lookup(bytes.as_deref(), now_ms, &compiled.hash_keys, request);
                let refresh = match (&answer, transport) {
                    (Ok(Answer::Valid(..)), Transport::Redis(_)) => {
                        StoreCall::refresh(compiled, request).ok().flatten()
                    }
                    _ => None,
                };
                (answer, refresh)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitokens_core::digest::TokenDigest;
    use multitokens_core::token::RoutingTag;

    fn compiled(transport: &str) -> Compiled {
        Compiled::parse(format!("{{{transport}}}").as_bytes()).unwrap()
    }

    fn request(refresh_ttl: Option<u64>) -> LookupRequest {
        LookupRequest {
            tag: RoutingTag([1; 4]),
            digest: TokenDigest([2; 32]),
            previous: vec![],
            key_id: None,
            refresh_ttl,
        }
    }

    #[test]
    fn each_transport_builds_its_own_calls() {
        let http = compiled(r#""companion": {"cluster": "c", "api_key": "k"}"#);
        assert!(matches!(StoreCall::lookup(&http, &request(None)), Ok(StoreCall::Companion(_))));
        assert!(matches!(StoreCall::refresh(&http, &request(None)), Ok(Some(StoreCall::Companion(_)))));
        let redis = compiled(r#""redis": {"cluster": "r"}"#);
        let Ok(StoreCall::Redis(target, command)) = StoreCall::lookup(&redis, &request(None)) else { panic!() };
        assert_eq!(target.cluster, "r");
        assert!(command.windows(7).any(|w| w == b"EVAL_RO"));
        // no TTL to slide: nothing to send
        assert!(matches!(StoreCall::refresh(&redis, &request(None)), Ok(None)));
        assert!(matches!(StoreCall::refresh(&redis, &request(Some(60))), Ok(Some(StoreCall::Redis(..)))));
    }

    #[test]
    fn an_unknown_token_gets_no_refresh_and_garbage_is_a_problem() {
        let redis = compiled(r#""redis": {"cluster": "r"}"#);
        let missing = StoreReply::Redis(Some(b"*1\r\n:0\r\n".to_vec()));
        let (answer, refresh) = missing.lookup_answer(&redis, &request(Some(60)), 0);
        assert_eq!(answer, Ok(Answer::Invalid));
        assert!(refresh.is_none());
        let (answer, _) = StoreReply::Redis(None).lookup_answer(&redis, &request(None), 0);
        assert_eq!(answer, Err(CalloutProblem::NoResponse));
        assert!(StoreReply::Http(Some(200), b"\xff".to_vec()).feed_page().is_err());
    }
}
