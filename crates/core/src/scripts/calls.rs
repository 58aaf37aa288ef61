//! The scripts both the companion and the Redis-callout filter run, typed: the keys and arguments
//! of each call, and the reading of its reply, written once. The companion sends a [`ScriptCall`]
//! through its Redis client, the filter encodes it as `EVAL`/`EVAL_RO`.

use super::{ACTIVITY, FEED, FEED_PAGE_SIZE, LOOKUP, REFRESH};
use crate::activity::Activity;
use crate::contract::FeedPage;
use crate::digest::TokenDigest;
use crate::keys::KeyLayout;
use crate::resp::Reply;
use crate::token::RoutingTag;

/// The scripts both parts run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedScript {
    /// [`LOOKUP`].
    Lookup,
    /// [`REFRESH`].
    Refresh,
    /// [`FEED`].
    Feed,
    /// [`ACTIVITY`].
    Activity,
}

impl SharedScript {
    /// The Lua source.
    pub fn source(self) -> &'static str {
        match self {
            SharedScript::Lookup => LOOKUP,
            SharedScript::Refresh => REFRESH,
            SharedScript::Feed => FEED,
            SharedScript::Activity => ACTIVITY,
        }
    }
}

/// One run of a script: which, its keys and arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptCall {
    /// The script.
    pub script: SharedScript,
    /// `KEYS`.
    pub keys: Vec<String>,
    /// `ARGV`.
    pub args: Vec<String>,
}

/// [`LOOKUP`] of a token stored under one of `candidates` (the current hash key's digest first).
pub fn lookup_call<'a>(
    layout: &KeyLayout,
    tag: RoutingTag,
    candidates: impl Iterator<Item = &'a TokenDigest>,
) -> ScriptCall {
    ScriptCall {
        script: SharedScript::Lookup,
        keys: candidates.map(|d| layout.record_key(tag, d)).collect(),
        args: Vec::new(),
    }
}

/// [`REFRESH`]: slides the record of `digest` to `ttl_ms` from now (never past its limits).
pub fn refresh_call(layout: &KeyLayout, tag: RoutingTag, digest: &TokenDigest, ttl_ms: u64) -> ScriptCall {
    ScriptCall {
        script: SharedScript::Refresh,
        keys: vec![layout.record_key(tag, digest)],
        args: vec![ttl_ms.to_string(), layout.index_prefix(tag), layout.expiry_prefix(tag)],
    }
}

/// [`ACTIVITY`]: records what an edge saw of a token's use beside its record.
pub fn activity_call(layout: &KeyLayout, tag: RoutingTag, digest: &TokenDigest, activity: &Activity) -> ScriptCall {
    ScriptCall {
        script: SharedScript::Activity,
        keys: vec![layout.activity_key(tag, digest)],
        args: vec![activity.seen_at_ms.to_string(), serde_json::to_string(activity).unwrap_or_default()],
    }
}

/// [`FEED`]: the revocation feed after `cursor` (`None`: its tail), one page.
pub fn feed_call(layout: &KeyLayout, cursor: Option<&str>) -> ScriptCall {
    ScriptCall {
        script: SharedScript::Feed,
        keys: vec![layout.revocation_feed()],
        args: vec![cursor.unwrap_or("").to_string(), FEED_PAGE_SIZE.to_string()],
    }
}

/// What [`LOOKUP`] answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupReply<'a> {
    /// No candidate holds a record.
    Missing,
    /// The record of candidate `candidate` (0-based: 0 is the current hash key's digest).
    Found {
        /// Which candidate holds it.
        candidate: usize,
        /// The record as stored.
        value: &'a [u8],
        /// Its remaining TTL (ms; -1 immortal).
        pttl_ms: i64,
    },
}

impl<'a> LookupReply<'a> {
    /// Reads the script's reply (the array's items) to a call with `candidates` record keys.
    /// Anything else, a candidate that was not asked for included, is an error, never a verdict.
    pub fn parse(items: &'a [Reply], candidates: usize) -> Result<LookupReply<'a>, String> {
        match items {
            [Reply::Int(0)] => Ok(LookupReply::Missing),
            [Reply::Int(at), Reply::Bulk(Some(value)), Reply::Int(pttl_ms)] => {
                match usize::try_from(*at).ok().and_then(|i| i.checked_sub(1)).filter(|i| *i < candidates) {
                    Some(candidate) => Ok(LookupReply::Found { candidate, value, pttl_ms: *pttl_ms }),
                    None => Err("lookup reply names no digest that was asked for".into()),
                }
            }
            _ => Err("lookup reply is not [index, record, ttl] or [0]".into()),
        }
    }
}

/// Reads [`FEED`]'s reply (the array's items): `{cursor, reset, digests...}`; a full page says
/// more are waiting.
pub fn feed_page(items: &[Reply]) -> Result<FeedPage, String> {
    let text = |r: &Reply| match r {
        Reply::Bulk(Some(b)) => String::from_utf8(b.clone()).ok(),
        _ => None,
    };
    let (Some(cursor), Some(Reply::Int(reset))) = (items.first().and_then(text), items.get(1)) else {
        return Err("feed reply is not [cursor, reset, digests...]".into());
    };
    let digests: Vec<String> = items.iter().skip(2).filter_map(text).collect();
    let more = digests.len() >= FEED_PAGE_SIZE;
    Ok(FeedPage { cursor, digests, reset: *reset == 1, more })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::TokenHasher;

    #[test]
    fn calls_name_the_keys_and_arguments_of_their_scripts() {
        let layout = KeyLayout::new("mt");
        let tag = RoutingTag::for_user("alice");
        let (a, b) = (TokenHasher::new(None).digest("one"), TokenHasher::new(None).digest("two"));
        let lookup = lookup_call(&layout, tag, [&a, &b].into_iter());
        assert_eq!(lookup.keys, [layout.record_key(tag, &a), layout.record_key(tag, &b)]);
        let refresh = refresh_call(&layout, tag, &a, 60_000);
        assert_eq!(refresh.args, ["60000".to_string(), layout.index_prefix(tag), layout.expiry_prefix(tag)]);
        let seen = Activity { seen_at_ms: 9, address: None, user_agent: Some("ua".into()) };
        let activity = activity_call(&layout, tag, &a, &seen);
        assert_eq!(activity.keys, [layout.activity_key(tag, &a)]);
        assert_eq!(activity.args, ["9", r#"{"seen_at_ms":9,"address":null,"user_agent":"ua"}"#]);
        assert_eq!(feed_call(&layout, None).args, ["".to_string(), FEED_PAGE_SIZE.to_string()]);
    }

    #[test]
    fn lookup_replies_are_read_once_for_both_parts() {
        let found = [Reply::Int(2), Reply::Bulk(Some(b"{}".to_vec())), Reply::Int(-1)];
        assert_eq!(LookupReply::parse(&found, 2), Ok(LookupReply::Found { candidate: 1, value: b"{}", pttl_ms: -1 }));
        assert_eq!(LookupReply::parse(&[Reply::Int(0)], 2), Ok(LookupReply::Missing));
        assert!(LookupReply::parse(&found, 1).is_err(), "a candidate that was not asked for");
        let zero = [Reply::Int(0), Reply::Bulk(Some(b"{}".to_vec())), Reply::Int(-1)];
        assert!(LookupReply::parse(&zero, 2).is_err());
        assert!(LookupReply::parse(&[Reply::Int(1)], 2).is_err());
        assert!(LookupReply::parse(&[], 2).is_err());
    }

    #[test]
    fn feed_replies_are_read_once_for_both_parts() {
        let bulk = |s: &str| Reply::Bulk(Some(s.as_bytes().to_vec()));
        let page = feed_page(&[bulk("5-0"), Reply::Int(0), bulk("ab"), bulk("cd")]).unwrap();
        assert_eq!((page.cursor.as_str(), page.digests.len(), page.reset, page.more), ("5-0", 2, false, false));
        assert!(feed_page(&[bulk("5-0"), Reply::Int(1)]).unwrap().reset);
        assert!(feed_page(&[Reply::Int(0)]).is_err());
    }
}
