//! The Redis-callout transport as plain code: the RESP commands the filter sends (one per
//! callout: `EVAL_RO` / `EVAL` of the core scripts, so each is one round trip and, in a Redis
//! Cluster behind Envoy's redis_proxy, routed by its keys' hash tag) and the interpretation of the
//! replies. Redis caches compiled scripts, so `EVAL` of these short scripts costs one SHA-1
//! server-side.
//!
//! Lookups and feed reads are `EVAL_RO` (Redis 7): Redis checks only read access to their keys,
//! so a gateway's Redis user for those can be read-only (envoy/redis/users.acl). Only the sliding
//! refresh and the device activity report write (`EVAL`).

use super::identity::Identity;
use super::lookup::{Answer, CalloutProblem, FeedPage, LookupRequest};
use multitokens_core::activity::{Activity, ActivityReport};
use multitokens_core::digest::TokenDigest;
use multitokens_core::keyring::HashKeys;
use multitokens_core::keys::KeyLayout;
use multitokens_core::resp::{decode, encode_command, Reply};
use multitokens_core::scripts::{self, LookupReply, ScriptCall};
use multitokens_core::token::RoutingTag;
use multitokens_core::verdict::{evaluate, Verdict};

/// `EVAL_RO LOOKUP n <record key>...`: the record under the first of the token's digests that has
/// one (the current hash key's, then the previous keys'), and its remaining TTL.
/// With `eval_ro` false, `EVAL` (for proxies that do not know `EVAL_RO`).
pub fn lookup_command(keys: &KeyLayout, request: &LookupRequest, eval_ro: bool) -> Vec<u8> {
    eval_command(&scripts::lookup_call(keys, request.tag, request.candidates()), eval_ro)
}

/// `EVAL REFRESH 1 <record key> <ttl ms> <index prefix> <expiry index prefix>`: sliding expiry.
pub fn refresh_command(keys: &KeyLayout, request: &LookupRequest) -> Option<Vec<u8>> {
    let ttl_ms = request.refresh_ttl?.saturating_mul(1000);
    Some(eval_command(&scripts::refresh_call(keys, request.tag, &request.digest, ttl_ms), false))
}

/// `EVAL ACTIVITY 1 <activity key> <seen at> <activity>`: a token's last activity
/// beside its record; `None` for a report the filter did not make (its tag or digest not hex).
pub fn activity_command(keys: &KeyLayout, report: &ActivityReport) -> Option<Vec<u8>> {
    let tag = RoutingTag::from_hex(&report.tag)?;
    let digest = TokenDigest::from_hex(&report.digest)?;
    let activity = Activity {
        seen_at_ms: report.seen_at_ms,
        address: report.address.clone(),
        user_agent: report.user_agent.clone(),
    };
    Some(eval_command(&scripts::activity_call(keys, tag, &digest, &activity), false))
}

/// `EVAL_RO FEED 1 <feed> <cursor> <page>`: the revocation feed after a cursor (`EVAL` without
/// `eval_ro`).
pub fn feed_command(keys: &KeyLayout, cursor: Option<&str>, eval_ro: bool) -> Vec<u8> {
    eval_command(&scripts::feed_call(keys, cursor), eval_ro)
}

/// A script call as one RESP command: `EVAL_RO` for a read-only script (`EVAL` otherwise).
fn eval_command(call: &ScriptCall, read_only: bool) -> Vec<u8> {
    let eval: &[u8] = if read_only { b"EVAL_RO" } else { b"EVAL" };
    let count = call.keys.len().to_string();
    let mut parts: Vec<&[u8]> = vec![eval, call.script.source().as_bytes(), count.as_bytes()];
    parts.extend(call.keys.iter().chain(&call.args).map(String::as_bytes));
    encode_command(&parts)
}

fn reply(bytes: Option<&[u8]>) -> Result<Vec<Reply>, CalloutProblem> {
    let bytes = bytes.ok_or(CalloutProblem::NoResponse)?;
    match decode(bytes) {
        Ok(Reply::Array(Some(items))) => Ok(items),
        Ok(Reply::Error(e)) => {
            Err(CalloutProblem::BadResponse(format!("Redis error: {}", e.split(' ').next().unwrap_or(""))))
        }
        Ok(other) => Err(CalloutProblem::BadResponse(format!("unexpected Redis reply {}", kind(&other)))),
        Err(e) => Err(CalloutProblem::BadResponse(format!("malformed Redis reply: {e:?}"))),
    }
}

fn kind(r: &Reply) -> &'static str {
    match r {
        Reply::Status(_) => "status",
        Reply::Error(_) => "error",
        Reply::Int(_) => "integer",
        Reply::Bulk(_) => "bulk",
        Reply::Array(_) => "array",
    }
}

/// Interprets a lookup reply (`None`: network error) to `request`. Garbage is a problem, never a
/// verdict; a record is honoured only with a seal by one of `hash_keys` over the digest it was
/// found under. `now_ms` is the host's clock (Unix milliseconds), for a record's absolute expiry.
pub fn parse_lookup(
    bytes: Option<&[u8]>,
    now_ms: u64,
    hash_keys: &HashKeys,
    request: &LookupRequest,
) -> Result<Answer, CalloutProblem> {
    let items = reply(bytes)?;
    let (at, value, pttl) = match LookupReply::parse(&items, request.candidates().count()) {
        Ok(LookupReply::Missing) => return Ok(Answer::Invalid),
        Ok(LookupReply::Found { candidate, value, pttl_ms }) => (candidate, value, pttl_ms),
        Err(e) => return Err(CalloutProblem::BadResponse(e)),
    };
    let Some(digest) = request.candidates().nth(at) else {
        return Err(CalloutProblem::BadResponse("lookup reply names no digest that was asked for".into()));
    };
    let sealed = |v: &[u8]| hash_keys.accepts(digest, v);
    match evaluate(Some(value), pttl, now_ms, sealed).map_err(|e| CalloutProblem::BadResponse(e.to_string()))? {
        Verdict::Valid(v) => {
            let left = v.expires_in_ms;
            let r = v.record;
            let bound_to = r.bound_to();
            let identity = Identity::new(r.user, r.device, r.scopes, r.id)
                .map_err(|e| CalloutProblem::BadResponse(format!("lookup record: {e}")))?
                .bound(bound_to);
            Ok(match at {
                0 => Answer::Valid(identity, left),
                previous => Answer::ValidUnderPrevious(identity, left, previous - 1),
            })
        }
        // suspended: refused like an unknown token (the client cannot tell them apart)
        Verdict::Invalid | Verdict::Suspended(_) => Ok(Answer::Invalid),
        Verdict::Tampered => Ok(Answer::Tampered),
    }
}

/// Interprets a feed reply (`None`: network error).
pub fn parse_feed(bytes: Option<&[u8]>) -> Result<FeedPage, CalloutProblem> {
    scripts::feed_page(&reply(bytes)?).map_err(CalloutProblem::BadResponse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitokens_core::digest::TokenHasher;
    use multitokens_core::record::TokenRecord;
    use multitokens_core::token::RoutingTag;

    fn request() -> LookupRequest {
        LookupRequest {
            tag: RoutingTag::for_user("alice"),
            digest: TokenHasher::new(None).digest("mt_x"),
            previous: vec![],
            key_id: None,
            refresh_ttl: Some(60),
        }
    }

    #[test]
    fn commands_carry_the_companions_keys() {
        let keys = KeyLayout::new("mt");
        let cmd = String::from_utf8(lookup_command(&keys, &request(), true)).unwrap();
        assert!(String::from_utf8(lookup_command(&keys, &request(), false))
            .unwrap()
            .starts_with("*4\r\n$4\r\nEVAL\r\n"));
        assert!(cmd.starts_with("*4\r\n$7\r\nEVAL_RO\r\n"));
        assert!(cmd.contains(&keys.record_key(request().tag, &request().digest)));
        let refresh = String::from_utf8(refresh_command(&keys, &request()).unwrap()).unwrap();
        assert!(refresh.contains("\r\n60000\r\n") && refresh.contains(&keys.index_prefix(request().tag)));
        assert!(refresh_command(&keys, &LookupRequest { refresh_ttl: None, ..request() }).is_none());
        assert!(String::from_utf8(feed_command(&keys, Some("5-0"), true)).unwrap().contains("mt:revoked"));
    }

    #[test]
    fn lookup_replies() {
        let keys = HashKeys::single(Some(b"pepper"));
        let mut req = request();
        req.digest = keys.current().digest("mt_x");
        let record = TokenRecord {
            suspended: false,
            cnf: None,
            id: "i".into(),
            user: "u".into(),
            device: "d".into(),
            created: 1,
            scopes: vec!["s".into()],
            expires_at: None,
            lifetime_ms: None,
            token_hash: None,
        }
        .to_json()
        .unwrap();
        let reply = |at: u8, value: &str| format!("*3\r\n:{at}\r\n${}\r\n{}\r\n:5000\r\n", value.len(), value);
        let sealed = keys.current().seal(&req.digest, record.clone());
        let Ok(Answer::Valid(id, Some(5000))) = parse_lookup(Some(reply(1, &sealed).as_bytes()), 100_000, &keys, &req)
        else {
            panic!()
        };
        assert_eq!((id.user.as_str(), id.scopes.as_str()), ("u", "s"));
        // unsealed, rewritten, or sealed for another digest: refused as tampered
        for tampered in [
            record.clone(),
            sealed.replace("\"u\"", "\"admin\""),
            keys.current().seal(&keys.current().digest("mt_y"), record.clone()),
        ] {
            assert_eq!(
                parse_lookup(Some(reply(1, &tampered).as_bytes()), 100_000, &keys, &req),
                Ok(Answer::Tampered),
                "{tampered}"
            );
        }
        // with accept_unsealed_records (an upgrade), a record with no seal at all is honoured, a
        // broken one still is not
        let upgrading = keys.clone().accepting_unsealed(true);
        assert!(matches!(
            parse_lookup(Some(reply(1, &record).as_bytes()), 100_000, &upgrading, &req),
            Ok(Answer::Valid(..))
        ));
        let broken = sealed.replace("\"u\"", "\"admin\"");
        assert_eq!(parse_lookup(Some(reply(1, &broken).as_bytes()), 100_000, &upgrading, &req), Ok(Answer::Tampered));
        // found under a previous key's digest: valid once
        let rotated = HashKeys::new(Some(b"new"), &[b"pepper"]).unwrap();
        let mut during = req.clone();
        during.digest = rotated.current().digest("mt_x");
        during.previous = vec![req.digest];
        assert!(matches!(
            parse_lookup(Some(reply(2, &sealed).as_bytes()), 100_000, &rotated, &during),
            Ok(Answer::ValidUnderPrevious(_, Some(5000), 0))
        ));
        assert!(matches!(
            parse_lookup(Some(reply(3, &sealed).as_bytes()), 100_000, &rotated, &during),
            Err(CalloutProblem::BadResponse(_))
        ));
        assert_eq!(parse_lookup(Some(b"*1\r\n:0\r\n"), 100, &keys, &req), Ok(Answer::Invalid));
        assert_eq!(parse_lookup(None, 100, &keys, &req), Err(CalloutProblem::NoResponse));
        for bad in [
            &b"-NOAUTH Authentication required.\r\n"[..],
            b"+OK\r\n",
            b"*3\r\n:1\r\n$3\r\nabc\r\n:5\r\n",
            b"\x00\x01",
            b"*3\r\n:1\r\n:2\r\n:3\r\n",
            b"*3\r\n:-1\r\n$2\r\n{}\r\n:3\r\n",
            b"*1\r\n:1\r\n",
        ] {
            assert!(
                matches!(
                    parse_lookup(Some(bad), 100, &HashKeys::single(None), &req),
                    Err(CalloutProblem::BadResponse(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn feed_replies() {
        let page = parse_feed(Some(b"*4\r\n$3\r\n9-1\r\n:0\r\n$2\r\nab\r\n$2\r\ncd\r\n")).unwrap();
        assert_eq!((page.cursor.as_str(), page.reset, page.digests.len()), ("9-1", false, 2));
        assert!(parse_feed(Some(b"*2\r\n$3\r\n0-0\r\n:1\r\n")).unwrap().reset);
        assert!(parse_feed(Some(b"-ERR bad cursor\r\n")).is_err());
        assert_eq!(parse_feed(None), Err(CalloutProblem::NoResponse));
    }
}
