//! The audit trail: every issue (with the first-device flag), revoke, revoke-all, revoke-others,
//! eviction, re-keying, suspend, resume and tampered record found appends an event to a capped Redis stream (`<prefix>:audit`): time,
//! event, user, token id, device, actor (the API key's role, the token itself, or the CLI),
//! request id. Never a token or a digest of one.

use serde::Serialize;

/// Entries kept in the audit stream (trimmed approximately, oldest first).
pub const AUDIT_MAX_LEN: usize = 1_000_000;
/// Token ids listed in one event; `count` has the total.
pub const MAX_IDS_PER_EVENT: usize = 100;

/// Who did it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// An admin API key.
    Admin,
    /// The filter (internal key), e.g. a re-keying on use.
    Internal,
    /// The token itself (self-service: log out this device, all others).
    Token,
    /// The command line.
    Cli,
    /// The companion on its own (the library, sweeps).
    Companion,
}

impl Actor {
    /// The name stored in the stream.
    pub fn as_str(&self) -> &'static str {
        match self {
            Actor::Admin => "admin",
            Actor::Internal => "internal",
            Actor::Token => "token",
            Actor::Cli => "cli",
            Actor::Companion => "companion",
        }
    }
}

/// Who asked, and the request's id (Envoy's `x-request-id` when it is one; else a fresh one is
/// drawn when an event is written, so requests that change nothing cost nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Who.
    pub actor: Actor,
    /// The request id; empty: none given.
    pub request_id: String,
}

impl Origin {
    /// The companion itself (the CLI, a sweep, a test): no caller, no request id.
    pub fn companion() -> Origin {
        Origin::new(Actor::Companion)
    }

    /// An origin without a request id of its own.
    pub fn new(actor: Actor) -> Origin {
        Origin { actor, request_id: String::new() }
    }

    /// An origin with the caller's request id when it is a plausible one (1 to 128 of
    /// `[A-Za-z0-9._:-]`).
    pub fn with_request_id(actor: Actor, given: Option<&[u8]>) -> Origin {
        match given.and_then(|g| std::str::from_utf8(g).ok()) {
            Some(id)
                if (1..=128).contains(&id.len())
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) =>
            {
                Origin { actor, request_id: id.to_string() }
            }
            _ => Origin::new(actor),
        }
    }

    /// The request id to record: the given one, or a fresh random one.
    fn request_id_for_event(&self) -> String {
        if !self.request_id.is_empty() {
            return self.request_id.clone();
        }
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        hex::encode(bytes)
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A token was issued.
    Issue,
    /// One token was revoked (by itself, by token, or by id).
    Revoke,
    /// All of a user's tokens were revoked.
    RevokeAll,
    /// All of a user's tokens but the caller's were revoked.
    RevokeOthers,
    /// Tokens revoked to make room under `max_tokens_per_user`.
    Evict,
    /// A token moved to the current hash key.
    Rekey,
    /// A record whose seal does not verify was refused (someone rewrote it in Redis).
    Tampered,
    /// Tokens were suspended: refused everywhere until resumed.
    Suspend,
    /// Suspended tokens were resumed.
    Resume,
}

impl Event {
    /// The name stored in the stream.
    pub fn as_str(&self) -> &'static str {
        match self {
            Event::Issue => "issue",
            Event::Revoke => "revoke",
            Event::RevokeAll => "revoke_all",
            Event::RevokeOthers => "revoke_others",
            Event::Evict => "evict",
            Event::Rekey => "rekey",
            Event::Tampered => "tampered",
            Event::Suspend => "suspend",
            Event::Resume => "resume",
        }
    }
}

/// One audit event as read back (`multitokens events`, `GET /v1/events`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Its stream id (a cursor for the next page).
    pub cursor: String,
    /// When, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// What (`issue`, `revoke`, `revoke_all`, `revoke_others`, `evict`, `rekey`, `tampered`,
    /// `suspend`, `resume`).
    pub event: String,
    /// Whose token(s).
    pub user: String,
    /// The token's public id, or for several the first 100, comma-separated.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// How many tokens (revoke_all, revoke_others, evict, suspend, resume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The device label (issue).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// Whether the user had no other live token (issue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<bool>,
    /// Who did it.
    pub actor: String,
    /// The request's id.
    pub request_id: String,
}

/// The fields of a new event, in stream order.
pub fn fields(
    event: Event,
    user: &str,
    ids: &[String],
    device: Option<&str>,
    first: Option<bool>,
    origin: &Origin,
) -> Vec<(&'static str, String)> {
    let mut f = vec![("event", event.as_str().to_string()), ("user", user.to_string())];
    f.push(("id", ids.iter().take(MAX_IDS_PER_EVENT).cloned().collect::<Vec<_>>().join(",")));
    if matches!(event, Event::RevokeAll | Event::RevokeOthers | Event::Evict | Event::Suspend | Event::Resume) {
        f.push(("count", ids.len().to_string()));
    }
    if let Some(d) = device {
        f.push(("device", d.to_string()));
    }
    if let Some(first) = first {
        f.push(("first", first.to_string()));
    }
    f.push(("actor", origin.actor.as_str().to_string()));
    f.push(("request_id", origin.request_id_for_event()));
    f
}

/// An entry read from the stream, `None` if it is not an audit event.
pub fn record(cursor: &str, fields: &std::collections::HashMap<String, String>) -> Option<AuditRecord> {
    let ms: u64 = cursor.split_once('-')?.0.parse().ok()?;
    let time =
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string();
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    Some(AuditRecord {
        cursor: cursor.to_string(),
        time,
        event: fields.get("event")?.clone(),
        user: get("user"),
        id: get("id"),
        count: fields.get("count").and_then(|c| c.parse().ok()),
        device: get("device"),
        first: fields.get("first").map(|f| f == "true"),
        actor: get("actor"),
        request_id: get("request_id"),
    })
}

/// Reads `--since`: RFC 3339 (`2026-11-26T10:00:00Z`), or a duration back from now (`90s`,
/// `15m`, `2h`, `7d`). Returns Unix milliseconds.
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .map_err(|_| "since: before 1970".to_string());
    }
    match humantime::parse_duration(text) {
        Ok(back) => Ok(now_ms.saturating_sub(back.as_millis() as u64)),
        Err(_) => Err(format!(
            "since: {text:?} is neither a time (2026-11-26T10:00:00Z) nor a duration back from now (15m, 2h, 7d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_plausible() {
        assert_eq!(Origin::with_request_id(Actor::Admin, Some(b"4f1c-9a.x:1")).request_id, "4f1c-9a.x:1");
        let written = |o: &Origin| {
            fields(Event::Issue, "u", &["i".into()], None, None, o)
                .into_iter()
                .find(|(k, _)| *k == "request_id")
                .unwrap()
                .1
        };
        for bad in [&b""[..], b"a b", b"\xff", &[b'a'; 129]] {
            let o = Origin::with_request_id(Actor::Admin, Some(bad));
            assert!(o.request_id.is_empty(), "{bad:?}");
            assert_eq!(written(&o).len(), 16, "a fresh id when the event is written");
        }
        assert_ne!(written(&Origin::new(Actor::Cli)), written(&Origin::new(Actor::Cli)));
        assert_eq!(written(&Origin::with_request_id(Actor::Admin, Some(b"r-1"))), "r-1");
    }

    #[test]
    fn events_round_trip_and_never_list_more_than_the_cap() {
        let origin = Origin { actor: Actor::Token, request_id: "r1".into() };
        let ids: Vec<String> = (0..150).map(|i| format!("{i:016x}")).collect();
        let f = fields(Event::RevokeAll, "alice", &ids, None, None, &origin);
        let map: std::collections::HashMap<String, String> =
            f.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let r = record("1764115200000-0", &map).unwrap();
        assert_eq!(
            (r.event.as_str(), r.count, r.actor.as_str(), r.time.as_str()),
            ("revoke_all", Some(150), "token", "2025-11-26T00:00:00.000Z")
        );
        assert_eq!(r.id.split(',').count(), MAX_IDS_PER_EVENT);
        let one = fields(Event::Issue, "bob", &["abc".into()], Some("phone"), Some(true), &origin);
        assert!(!one.iter().any(|(k, _)| *k == "count"));
    }

    #[test]
    fn since_takes_a_time_or_a_duration() {
        assert_eq!(parse_since("2025-11-26T00:00:00Z", 0), Ok(1_764_115_200_000));
        assert_eq!(parse_since("15m", 1_000_000), Ok(100_000));
        assert!(parse_since("yesterday", 0).unwrap_err().contains("since"));
    }
}
