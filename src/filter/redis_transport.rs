//! The Redis-callout transport as plain code: the RESP commands the filter sends (one per
//! callout: `EVAL` of the core scripts, so each is one round trip and, in a Redis Cluster behind
//! Envoy's redis_proxy, routed by its single key) and the interpretation of the replies.
//! Redis caches compiled scripts, so `EVAL` of these short scripts costs one SHA-1 server-side.

use super::identity::Identity;
use super::lookup::{Answer, CalloutProblem, FeedPage, LookupRequest};
use crate::core::keys::KeyLayout;
use crate::core::resp::{decode, encode_command, Reply};
use crate::core::scripts;
use crate::core::verdict::{evaluate, Verdict};

/// `EVAL LOOKUP 1 <record key>`: the record and its remaining TTL.
pub fn lookup_command(keys: &KeyLayout, request: &LookupRequest) -> Vec<u8> {
    encode_command(&["EVAL".as_bytes(), scripts::LOOKUP.as_bytes(), b"1", keys.record_key(request.tag, &request.digest).as_bytes()])
}

/// `EVAL REFRESH 1 <record key> <ttl ms> <index prefix> <expiry index prefix>`: sliding expiry.
pub fn refresh_command(keys: &KeyLayout, request: &LookupRequest) -> Option<Vec<u8>> {
    let ttl_ms = request.refresh_ttl?.saturating_mul(1000).to_string();
    Some(encode_command(&[
        "EVAL".as_bytes(),
        scripts::REFRESH.as_bytes(),
        b"1",
        keys.record_key(request.tag, &request.digest).as_bytes(),
        ttl_ms.as_bytes(),
        keys.index_prefix(request.tag).as_bytes(),
        keys.expiry_prefix(request.tag).as_bytes(),
    ]))
}

/// `EVAL FEED 1 <feed> <cursor> <page>`: the revocation feed after a cursor.
pub fn feed_command(keys: &KeyLayout, cursor: Option<&str>) -> Vec<u8> {
    encode_command(&[
        "EVAL".as_bytes(),
        scripts::FEED.as_bytes(),
        b"1",
        keys.revocation_feed().as_bytes(),
        cursor.unwrap_or("").as_bytes(),
        scripts::FEED_PAGE_SIZE.to_string().as_bytes(),
    ])
}

fn reply(bytes: Option<&[u8]>) -> Result<Vec<Reply>, CalloutProblem> {
    let bytes = bytes.ok_or(CalloutProblem::NoResponse)?;
    match decode(bytes) {
        Ok(Reply::Array(Some(items))) => Ok(items),
        Ok(Reply::Error(e)) => Err(CalloutProblem::BadResponse(format!("Redis error: {}", e.split(' ').next().unwrap_or("")))),
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

/// Interprets a lookup reply (`None`: network error). Garbage is a problem, never a verdict.
/// `now_ms` is the host's clock (Unix milliseconds), for a record's absolute expiry.
pub fn parse_lookup(bytes: Option<&[u8]>, now_ms: u64) -> Result<Answer, CalloutProblem> {
    let items = reply(bytes)?;
    let (value, pttl) = match items.as_slice() {
        [Reply::Bulk(value), Reply::Int(pttl)] => (value.as_deref(), *pttl),
        // Lua turns a nil GET into false, which ends the table early: only the TTL (-2) is left
        [Reply::Int(pttl)] => (None, *pttl),
        _ => return Err(CalloutProblem::BadResponse("lookup reply is not [record, ttl]".into())),
    };
    match evaluate(value, pttl, now_ms).map_err(|e| CalloutProblem::BadResponse(e.to_string()))? {
        Verdict::Valid(v) => {
            let left = v.expires_in_ms;
            let r = v.record;
            Ok(Answer::Valid(Identity::new(r.user, r.device, r.scopes, r.id), left))
        }
        Verdict::Invalid => Ok(Answer::Invalid),
    }
}

/// Interprets a feed reply (`None`: network error).
pub fn parse_feed(bytes: Option<&[u8]>) -> Result<FeedPage, CalloutProblem> {
    let items = reply(bytes)?;
    let text = |r: &Reply| match r {
        Reply::Bulk(Some(b)) => String::from_utf8(b.clone()).ok(),
        _ => None,
    };
    let (Some(cursor), Some(Reply::Int(reset))) = (items.first().and_then(text), items.get(1)) else {
        return Err(CalloutProblem::BadResponse("feed reply is not [cursor, reset, digests...]".into()));
    };
    let digests: Vec<String> = items.iter().skip(2).filter_map(text).collect();
    let more = digests.len() >= scripts::FEED_PAGE_SIZE;
    Ok(FeedPage { cursor, digests, reset: *reset == 1, more })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::digest::TokenHasher;
    use crate::core::record::TokenRecord;
    use crate::core::token::RoutingTag;

    fn request() -> LookupRequest {
        LookupRequest { tag: RoutingTag::for_user("alice"), digest: TokenHasher::new(None).digest("mt_x"), refresh_ttl: Some(60) }
    }

    #[test]
    fn commands_carry_the_companions_keys() {
        let keys = KeyLayout::new("mt");
        let cmd = String::from_utf8(lookup_command(&keys, &request())).unwrap();
        assert!(cmd.starts_with("*4\r\n$4\r\nEVAL\r\n"));
        assert!(cmd.contains(&keys.record_key(request().tag, &request().digest)));
        let refresh = String::from_utf8(refresh_command(&keys, &request()).unwrap()).unwrap();
        assert!(refresh.contains("\r\n60000\r\n") && refresh.contains(&keys.index_prefix(request().tag)));
        assert!(refresh_command(&keys, &LookupRequest { refresh_ttl: None, ..request() }).is_none());
        assert!(String::from_utf8(feed_command(&keys, Some("5-0"))).unwrap().contains("mt:revoked"));
    }

    #[test]
    fn lookup_replies() {
        let record = TokenRecord {
            id: "i".into(),
            user: "u".into(),
            device: "d".into(),
            created: 1,
            scopes: vec!["s".into()],
            expires_at: None,
            lifetime_ms: None,
        }
        .to_json()
        .unwrap();
        let valid = format!("*2\r\n${}\r\n{}\r\n:5000\r\n", record.len(), record);
        let Ok(Answer::Valid(id, Some(5000))) = parse_lookup(Some(valid.as_bytes()), 100_000) else { panic!() };
        assert_eq!((id.user.as_str(), id.scopes_header.as_str()), ("u", "s"));
        assert_eq!(parse_lookup(Some(b"*1\r\n:-2\r\n"), 100), Ok(Answer::Invalid));
        assert_eq!(parse_lookup(None, 100), Err(CalloutProblem::NoResponse));
        for bad in [
            &b"-NOAUTH Authentication required.\r\n"[..],
            b"+OK\r\n",
            b"*2\r\n$3\r\nabc\r\n:5\r\n",
            b"\x00\x01",
            b"*3\r\n:1\r\n:2\r\n:3\r\n",
        ] {
            assert!(matches!(parse_lookup(Some(bad), 100), Err(CalloutProblem::BadResponse(_))), "{bad:?}");
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
