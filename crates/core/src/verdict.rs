//! The auth decision on a record looked up by digest: valid (with identity) or not.

use super::record::{RecordError, TokenRecord};

/// Remaining lifetime reported by Redis `PTTL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remaining {
    /// The key does not exist (`-2`).
    Missing,
    /// The key never expires (`-1`).
    Immortal,
    /// Milliseconds left.
    Millis(u64),
}

impl Remaining {
    /// From a raw `PTTL` reply.
    pub fn from_pttl(pttl: i64) -> Self {
        match pttl {
            -1 => Remaining::Immortal,
            n if n < 0 => Remaining::Missing,
            n => Remaining::Millis(n as u64),
        }
    }

    /// Whole seconds left (rounded up), `None` for immortal or missing.
    pub fn seconds(&self) -> Option<u64> {
        match self {
            Remaining::Millis(ms) => Some(ms.div_ceil(1000)),
            _ => None,
        }
    }
}

/// A token that is valid right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidToken {
    /// The stored record.
    pub record: TokenRecord,
    /// Milliseconds until it expires (its Redis TTL or its absolute expiry, whichever comes
    /// first), `None` if immortal.
    pub expires_in_ms: Option<u64>,
}

impl ValidToken {
    /// Whole seconds until it expires (rounded up), `None` if immortal.
    pub fn expires_in(&self) -> Option<u64> {
        self.expires_in_ms.map(|ms| ms.div_ceil(1000))
    }
}

/// What a lookup by digest means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The token is live.
    Valid(ValidToken),
    /// Unknown, revoked or expired.
    Invalid,
    /// A record whose seal does not verify: rewritten in Redis. Refused like an unknown token,
    /// and counted and logged by the caller.
    Tampered,
    /// A live token that is suspended: refused like an unknown one (the client cannot tell them
    /// apart); its owner's device list still shows it.
    Suspended(ValidToken),
}

/// Decides on a `GET` + `PTTL` reply at `now_ms` (Unix milliseconds); `sealed` says whether the
/// value carries a valid seal for the digest it was read under. Garbage in Redis is an error
/// (fail closed), not a verdict.
pub fn evaluate(
    value: Option<&[u8]>,
    pttl: i64,
    now_ms: u64,
    sealed: impl FnOnce(&[u8]) -> bool,
) -> Result<Verdict, RecordError> {
    let Some(bytes) = value else { return Ok(Verdict::Invalid) };
    let remaining = Remaining::from_pttl(pttl);
    if remaining == Remaining::Missing || remaining == Remaining::Millis(0) {
        return Ok(Verdict::Invalid);
    }
    if !sealed(bytes) {
        return Ok(Verdict::Tampered);
    }
    let record = TokenRecord::from_json(bytes)?;
    let mut expires_in_ms = match remaining {
        Remaining::Millis(ms) => Some(ms),
        _ => None,
    };
    if let Some(at) = record.expires_at {
        let at_ms = at.saturating_mul(1000);
        if at_ms <= now_ms {
            return Ok(Verdict::Invalid);
        }
        let hard = at_ms - now_ms;
        expires_in_ms = Some(expires_in_ms.map_or(hard, |ms| ms.min(hard)));
    }
    let token = ValidToken { record, expires_in_ms };
    Ok(if token.record.suspended { Verdict::Suspended(token) } else { Verdict::Valid(token) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(expires_at: Option<u64>) -> Vec<u8> {
        TokenRecord {
            id: "i".into(),
            user: "u".into(),
            device: String::new(),
            created: 10,
            scopes: vec![],
            expires_at,
            lifetime_ms: None,
            token_hash: None,
            suspended: false,
            cnf: None,
        }
        .to_json()
        .unwrap()
        .into_bytes()
    }

    #[test]
    fn a_suspended_record_is_its_own_verdict_and_its_flag_is_sealed() {
        let mut record = TokenRecord::from_json(&json(None)).unwrap();
        assert!(!String::from_utf8(json(None)).unwrap().contains("suspended"), "absent unless set");
        record.suspended = true;
        let bytes = record.to_json().unwrap();
        assert!(bytes.contains(r#""suspended":true"#));
        let Verdict::Suspended(v) = evaluate(Some(bytes.as_bytes()), -1, 100_000, |_| true).unwrap() else { panic!() };
        assert!(v.record.suspended);
        // the flag is part of what the seal covers: a value without a valid seal is tampered
        assert_eq!(evaluate(Some(bytes.as_bytes()), -1, 100_000, |_| false).ok(), Some(Verdict::Tampered));
    }

    #[test]
    fn decides_on_presence_ttl_and_absolute_expiry() {
        assert_eq!(evaluate(None, -2, 100_000, |_| true).ok(), Some(Verdict::Invalid));
        let Verdict::Valid(v) = evaluate(Some(&json(None)), 1500, 100_000, |_| true).unwrap() else { panic!() };
        assert_eq!((v.expires_in_ms, v.expires_in()), (Some(1500), Some(2)));
        let Verdict::Valid(v) = evaluate(Some(&json(None)), -1, 100_000, |_| true).unwrap() else { panic!() };
        assert_eq!(v.expires_in_ms, None);
        assert_eq!(evaluate(Some(&json(Some(100))), -1, 100_000, |_| true).ok(), Some(Verdict::Invalid));
        assert_eq!(
            evaluate(Some(&json(Some(100))), -1, 99_999, |_| true).ok().map(|v| matches!(v, Verdict::Valid(_))),
            Some(true),
            "1 ms left"
        );
        let Verdict::Valid(v) = evaluate(Some(&json(Some(130))), 60_000, 100_250, |_| true).unwrap() else { panic!() };
        assert_eq!(v.expires_in_ms, Some(29_750), "the absolute expiry, to the millisecond");
        assert!(evaluate(Some(b"not json"), 1000, 100_000, |_| true).is_err());
        assert_eq!(evaluate(Some(&json(None)), 1000, 100_000, |_| false).ok(), Some(Verdict::Tampered));
        assert_eq!(
            evaluate(None, -2, 100_000, |_| false).ok(),
            Some(Verdict::Invalid),
            "nothing stored: nothing tampered"
        );
    }
}
