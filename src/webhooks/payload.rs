//! What a security webhook says: the Standard Webhooks payload (`type`, `timestamp`, `data`) made
//! from an audit event. User ids, token ids, device labels, who and the request id; never a token
//! or a digest (the audit trail holds neither).

use crate::audit::AuditRecord;
use serde::Serialize;

/// A token was issued (a login); `first_device` when the user held no other live token.
pub const TOKEN_ISSUED: &str = "token.issued";
/// Tokens were revoked: one device logged out, the others of a "log out all other devices", or
/// the oldest evicted at the per-user limit (`reason`).
pub const TOKEN_REVOKED: &str = "token.revoked";
/// Every token of a user was revoked ("log out everywhere").
pub const USER_LOGGED_OUT_EVERYWHERE: &str = "user.logged_out_everywhere";

/// The companion refused a token record whose seal does not verify: someone with write access to
/// Redis rewrote it (its `user` is not named: the record's own is not to be trusted).
pub const RECORD_TAMPERED: &str = "record.tampered";

/// Tokens were suspended: refused everywhere until resumed.
pub const TOKEN_SUSPENDED: &str = "token.suspended";
/// Suspended tokens were resumed: accepted again.
pub const TOKEN_RESUMED: &str = "token.resumed";

/// Every event type a webhook can subscribe to.
pub const EVENT_TYPES: &[&str] =
    &[TOKEN_ISSUED, TOKEN_REVOKED, USER_LOGGED_OUT_EVERYWHERE, RECORD_TAMPERED, TOKEN_SUSPENDED, TOKEN_RESUMED];

/// The body of one webhook message (Standard Webhooks: `type`, `timestamp`, `data`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WebhookPayload)]
pub struct Payload<'a> {
    /// The event type.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// When it happened, RFC 3339 UTC.
    pub timestamp: &'a str,
    /// What happened.
    pub data: Data<'a>,
}

/// The event's details.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WebhookData)]
pub struct Data<'a> {
    /// Whose token(s) (not for `record.tampered`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub user: &'a str,
    /// The token's public id (`token.issued`, `record.tampered`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<&'a str>,
    /// The public ids of the tokens revoked (at most 100; `count` has the total).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<&'a str>>,
    /// How many tokens were revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Why (`token.revoked`): `revoke`, `revoke_others` or `evict`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The device label (`token.issued`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<&'a str>,
    /// Whether the user held no other live token (`token.issued`): their first device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_device: Option<bool>,
    /// Who did it: `admin`, `token` (self-service), `cli`, `internal`, `companion`.
    pub actor: &'a str,
    /// The request's id (Envoy's `x-request-id` when the caller sent one).
    pub request_id: &'a str,
}

/// The webhook event an audit event is, if any (a re-keying is not a security event).
pub fn event_type(record: &AuditRecord) -> Option<&'static str> {
    match record.event.as_str() {
        "issue" => Some(TOKEN_ISSUED),
        "revoke" | "revoke_others" | "evict" => Some(TOKEN_REVOKED),
        "revoke_all" => Some(USER_LOGGED_OUT_EVERYWHERE),
        "tampered" => Some(RECORD_TAMPERED),
        "suspend" => Some(TOKEN_SUSPENDED),
        "resume" => Some(TOKEN_RESUMED),
        _ => None,
    }
}

/// The JSON body of an audit event's webhook, `None` when it is not a webhook event.
pub fn body(record: &AuditRecord) -> Option<(&'static str, Vec<u8>)> {
    let kind = event_type(record)?;
    let ids: Vec<&str> = record.id.split(',').filter(|id| !id.is_empty()).collect();
    let issued = kind == TOKEN_ISSUED;
    let one = issued || kind == RECORD_TAMPERED;
    let data = Data {
        user: &record.user,
        token_id: one.then_some(record.id.as_str()),
        token_ids: (!one).then_some(ids.clone()),
        count: (!one).then(|| record.count.unwrap_or(ids.len() as u64)),
        reason: (kind == TOKEN_REVOKED).then_some(record.event.as_str()),
        device: issued.then_some(record.device.as_str()),
        first_device: if issued { Some(record.first.unwrap_or(false)) } else { None },
        actor: &record.actor,
        request_id: &record.request_id,
    };
    let payload = Payload { kind, timestamp: &record.time, data };
    serde_json::to_vec(&payload).ok().map(|b| (kind, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: &str) -> AuditRecord {
        AuditRecord {
            cursor: "1764115200000-0".into(),
            time: "2025-11-26T00:00:00.000Z".into(),
            event: event.into(),
            user: "alice".into(),
            id: "0a1b2c3d4e5f6a7b".into(),
            device: "phone".into(),
            first: Some(true),
            actor: "admin".into(),
            request_id: "r-1".into(),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn each_security_event_has_its_type_and_fields() {
        let (kind, b) = body(&record("issue")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(kind, TOKEN_ISSUED);
        assert_eq!(
            v,
            serde_json::json!({"type": "token.issued", "timestamp": "2025-11-26T00:00:00.000Z", "data": {
                "user": "alice", "token_id": "0a1b2c3d4e5f6a7b", "device": "phone", "first_device": true,
                "actor": "admin", "request_id": "r-1"}})
        );
        let mut all = record("revoke_all");
        all.id = "a,b".into();
        all.count = Some(2);
        let v: serde_json::Value = serde_json::from_slice(&body(&all).unwrap().1).unwrap();
        assert_eq!(v["type"], USER_LOGGED_OUT_EVERYWHERE);
        assert_eq!(
            (v["data"]["token_ids"].clone(), v["data"]["count"].clone()),
            (serde_json::json!(["a", "b"]), 2.into())
        );
        assert!(v["data"].get("reason").is_none() && v["data"].get("device").is_none());
        for how in ["revoke", "revoke_others", "evict"] {
            let v: serde_json::Value = serde_json::from_slice(&body(&record(how)).unwrap().1).unwrap();
            assert_eq!((v["type"].as_str(), v["data"]["reason"].as_str()), (Some(TOKEN_REVOKED), Some(how)));
        }
        let mut tampered = record("tampered");
        tampered.user = String::new();
        let v: serde_json::Value = serde_json::from_slice(&body(&tampered).unwrap().1).unwrap();
        assert_eq!(v["type"], RECORD_TAMPERED);
        assert_eq!(v["data"]["token_id"], "0a1b2c3d4e5f6a7b");
        assert!(v["data"].get("user").is_none() && v["data"].get("token_ids").is_none());
        for (event, kind) in [("suspend", TOKEN_SUSPENDED), ("resume", TOKEN_RESUMED)] {
            let v: serde_json::Value = serde_json::from_slice(&body(&record(event)).unwrap().1).unwrap();
            assert_eq!(
                (v["type"].as_str(), v["data"]["token_ids"].clone()),
                (Some(kind), serde_json::json!(["0a1b2c3d4e5f6a7b"]))
            );
        }
        assert!(body(&record("rekey")).is_none());
    }
}
