//! Device activity: when a token was last used, from which client address and user agent. Edges
//! report it at most once per token per interval ([`ActivityBatch`] to the companion, or the
//! ACTIVITY script through Redis callouts); it is kept beside the sealed record, never in it, so
//! writing it cannot change what a token grants, and it never reaches an identity header.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The longest user agent kept (bytes, cut at a character boundary).
pub const USER_AGENT_MAX: usize = 256;
/// Most reports in one batch an edge sends (and the companion accepts): the longest reports of a
/// full batch fit in the companion's 16 KiB body limit.
pub const MAX_BATCH: usize = 30;

/// What an edge saw of one token's use (the token's routing tag and digest, never the token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ActivityReport {
    /// Routing tag, 8 hex characters.
    pub tag: String,
    /// The digest the token's record is stored under, 64 hex characters.
    pub digest: String,
    /// When the edge saw the token used (Unix ms).
    pub seen_at_ms: u64,
    /// The client address as Envoy saw it (an IP address, no port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The request's `user-agent`, cleaned ([`clean_user_agent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// Reports an edge sends together (`POST` [`crate::contract::ACTIVITY_PATH`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ActivityBatch {
    /// At most [`MAX_BATCH`] reports.
    pub reports: Vec<ActivityReport>,
}

/// The companion's answer to a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActivityRecorded {
    /// Reports written (a report for a token no longer live, or older than what is stored, is not).
    pub recorded: usize,
}

/// A token's last activity as stored beside its record (JSON, written by the ACTIVITY script).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// When it was last used (Unix ms).
    pub seen_at_ms: u64,
    /// From which client address.
    #[serde(default)]
    pub address: Option<String>,
    /// With which user agent.
    #[serde(default)]
    pub user_agent: Option<String>,
}

impl Activity {
    /// Reads a stored value; anything else (Redis write access can put anything there) is no
    /// activity, and what is kept is cleaned again.
    pub fn parse(stored: &[u8]) -> Option<Activity> {
        let a: Activity = serde_json::from_slice(stored).ok()?;
        Some(Activity {
            seen_at_ms: a.seen_at_ms,
            address: a.address.as_deref().and_then(|s| client_ip(s.as_bytes())),
            user_agent: a.user_agent.as_deref().and_then(|s| clean_user_agent(s.as_bytes())),
        })
    }
}

/// A user agent as it may be stored and shown: invalid UTF-8 replaced, control characters
/// (C0, DEL, C1, and Unicode's line and paragraph separators) removed, whitespace runs made one
/// space, at most [`USER_AGENT_MAX`] bytes; `None` when nothing is left.
pub fn clean_user_agent(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(raw.len().min(USER_AGENT_MAX));
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}') {
            continue;
        }
        let needed = c.len_utf8() + usize::from(space);
        if out.len() + needed > USER_AGENT_MAX {
            break;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    (!out.is_empty()).then_some(out)
}

/// The IP address of a client address as Envoy reports it (`192.0.2.7:40000`, `[2001:db8::1]:443`,
/// or a bare address), in canonical form; `None` for anything else.
pub fn client_ip(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let host = match text.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None => match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => text,
        },
    };
    host.parse::<IpAddr>().ok().map(|ip| ip.to_string())
}

impl ActivityReport {
    /// Whether the report is what an edge sends: hex tag and digest, a cleaned user agent, a
    /// canonical address. The companion writes nothing else.
    pub fn is_well_formed(&self) -> bool {
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        hex(&self.tag, crate::token::ROUTING_TAG_LEN * 2)
            && hex(&self.digest, 64)
            && self.address.as_deref().is_none_or(|a| client_ip(a.as_bytes()).as_deref() == Some(a))
            && self.user_agent.as_deref().is_none_or(|u| clean_user_agent(u.as_bytes()).as_deref() == Some(u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_are_cleaned_and_bounded() {
        assert_eq!(clean_user_agent(b"curl/8.5.0").as_deref(), Some("curl/8.5.0"));
        assert_eq!(clean_user_agent(b"evil\r\nSet-Cookie: x\x00\x1b[31m").as_deref(), Some("evil Set-Cookie: x[31m"));
        assert_eq!(clean_user_agent(b"  a \t\t b  ").as_deref(), Some("a b"));
        assert_eq!(clean_user_agent(b"\xff\xfeok").as_deref(), Some("\u{fffd}\u{fffd}ok"));
        assert_eq!(
            clean_user_agent("x\u{202e}gpj.exe\u{2028}y\u{85}".as_bytes()).as_deref(),
            Some("xgpj.exe y"),
            "separators are spaces"
        );
        assert_eq!(clean_user_agent(b"\x01\x02 \x7f"), None);
        let long = "é".repeat(200);
        let cut = clean_user_agent(long.as_bytes()).unwrap();
        assert!(cut.len() <= USER_AGENT_MAX && cut.len() >= USER_AGENT_MAX - 1 && cut.chars().all(|c| c == 'é'));
        let cleaned = clean_user_agent(&[b'a'; 1000]).unwrap();
        assert_eq!(clean_user_agent(cleaned.as_bytes()).as_deref(), Some(cleaned.as_str()), "idempotent");
    }

    #[test]
    fn client_addresses_lose_their_port() {
        assert_eq!(client_ip(b"192.0.2.7:40000").as_deref(), Some("192.0.2.7"));
        assert_eq!(client_ip(b"[2001:DB8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(client_ip(b"2001:db8::1").as_deref(), Some("2001:db8::1"));
        assert_eq!(client_ip(b"10.0.0.1").as_deref(), Some("10.0.0.1"));
        for bad in [&b"evil\r\n"[..], b"", b"1.2.3.4:x", b"[::1", b"\xff:1", b"host.example:80"] {
            assert_eq!(client_ip(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_well_formed_reports_are_written_and_stored_values_are_read_back_cleaned() {
        let report = ActivityReport {
            tag: "0a0b0c0d".into(),
            digest: "ab".repeat(32),
            seen_at_ms: 5,
            address: Some("192.0.2.7".into()),
            user_agent: Some("curl/8".into()),
        };
        assert!(report.is_well_formed());
        let batch = ActivityBatch { reports: vec![report.clone()] };
        assert_eq!(serde_json::from_str::<ActivityBatch>(&serde_json::to_string(&batch).unwrap()).unwrap(), batch);
        assert!(!ActivityReport { user_agent: Some("a\nb".into()), ..report.clone() }.is_well_formed());
        assert!(!ActivityReport { address: Some("192.0.2.7:1".into()), ..report.clone() }.is_well_formed());
        assert!(!ActivityReport { digest: "zz".repeat(32), ..report.clone() }.is_well_formed());
        assert!(!ActivityReport { tag: "0a0b".into(), ..report }.is_well_formed());
        let stored = br#"{"seen_at_ms":7,"address":"not an ip","user_agent":"a\u0000b"}"#;
        assert_eq!(
            Activity::parse(stored),
            Some(Activity { seen_at_ms: 7, address: None, user_agent: Some("ab".into()) })
        );
        assert_eq!(Activity::parse(b"garbage"), None);
    }
}
