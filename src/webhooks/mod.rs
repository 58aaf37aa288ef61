//! Signed security webhooks (Standard Webhooks): each configured endpoint receives the audit
//! trail's security events — `token.issued`, `token.revoked`, `user.logged_out_everywhere` — as
//! JSON `POST`s signed with its `whsec_` secrets. Delivered from the audit stream through a Redis
//! consumer group per endpoint ([`delivery`]), so a companion crash loses none: at least once,
//! retried with backoff, the same `webhook-id` on every attempt (receivers deduplicate by it).

mod delivery;
pub mod payload;
mod signature;

pub use delivery::spawn;
pub use signature::{signature_header, WebhookSecret};

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A request's timeout when none is configured, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// The longest a request may be given, in milliseconds (below the time after which another
/// companion takes the event over).
pub const MAX_TIMEOUT_MS: u64 = 30_000;

/// One endpoint as written in the config file (`[[webhooks]]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// A short name: the consumer group (`webhook:<name>`) and the metrics' `endpoint` label.
    pub name: String,
    /// Where to `POST` (`https://…`, or `http://…`).
    pub url: String,
    /// Signing secrets, `whsec_…` (`multitokens keygen --webhook`); several while rotating.
    pub secrets: Vec<String>,
    /// The event types sent [default: all].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// A request's timeout in milliseconds, 1 to 30000 [default: 5000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A checked endpoint.
#[derive(Clone, Debug)]
pub struct WebhookEndpoint {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Its secrets, each signing every message.
    pub secrets: Vec<WebhookSecret>,
    /// The event types it receives.
    pub events: Vec<&'static str>,
    /// A request's timeout.
    pub timeout: Duration,
}

impl WebhookEndpoint {
    /// Checks a configured endpoint; errors name the field (`webhooks[1].url: …`), never a secret.
    pub fn resolve(index: usize, config: WebhookConfig) -> Result<WebhookEndpoint, String> {
        let at = |field: &str, e: String| format!("invalid webhooks[{index}].{field}: {e}");
        let name = config.name;
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            return Err(at("name", format!("{name:?}: 1 to 64 of A-Z a-z 0-9 _ -")));
        }
        let uri: ureq::http::Uri =
            config.url.parse().map_err(|_| at("url", format!("{:?} is not a URL", config.url)))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(at("url", format!("{:?}: an http:// or https:// URL with a host", config.url)));
        }
        if config.secrets.is_empty() {
            return Err(at("secrets", "at least one secret (multitokens keygen --webhook)".into()));
        }
        let secrets = config
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| WebhookSecret::parse(s).map_err(|e| at(&format!("secrets[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let events = match config.events {
            None => payload::EVENT_TYPES.to_vec(),
            Some(list) if list.is_empty() => return Err(at("events", "empty (leave it out for every event)".into())),
            Some(list) => {
                list.iter()
                    .map(|e| {
                        payload::EVENT_TYPES.iter().copied().find(|known| known == e).ok_or_else(|| {
                            at("events", format!("{e:?} is not one of {}", payload::EVENT_TYPES.join(", ")))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        let timeout_ms = config.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(at("timeout_ms", format!("expected 1 to {MAX_TIMEOUT_MS}, got {timeout_ms}")));
        }
        Ok(WebhookEndpoint { name, url: config.url, secrets, events, timeout: Duration::from_millis(timeout_ms) })
    }

    /// Checks every configured endpoint; names are unique.
    pub fn resolve_all(configs: Vec<WebhookConfig>) -> Result<Vec<WebhookEndpoint>, String> {
        let endpoints = configs
            .into_iter()
            .enumerate()
            .map(|(i, c)| WebhookEndpoint::resolve(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, e) in endpoints.iter().enumerate() {
            if endpoints[..i].iter().any(|other| other.name == e.name) {
                return Err(format!("invalid webhooks[{i}].name: {:?} is used twice", e.name));
            }
        }
        Ok(endpoints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebhookConfig {
        WebhookConfig {
            name: "app".into(),
            url: "https://app.example/hooks".into(),
            secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            ..WebhookConfig::default()
        }
    }

    #[test]
    fn endpoints_are_checked_field_by_field() {
        let ok = WebhookEndpoint::resolve(0, config()).unwrap();
        assert_eq!((ok.events.len(), ok.timeout), (payload::EVENT_TYPES.len(), Duration::from_secs(5)));
        let cases: Vec<(WebhookConfig, &str)> = vec![
            (WebhookConfig { name: "a b".into(), ..config() }, "webhooks[0].name"),
            (WebhookConfig { url: "ftp://x/".into(), ..config() }, "webhooks[0].url"),
            (WebhookConfig { url: "/relative".into(), ..config() }, "webhooks[0].url"),
            (WebhookConfig { secrets: vec![], ..config() }, "webhooks[0].secrets"),
            (WebhookConfig { secrets: vec!["whsec_c2hvcnQ=".into()], ..config() }, "webhooks[0].secrets[0]"),
            (WebhookConfig { events: Some(vec!["token.stolen".into()]), ..config() }, "webhooks[0].events"),
            (WebhookConfig { events: Some(vec![]), ..config() }, "webhooks[0].events"),
            (WebhookConfig { timeout_ms: Some(0), ..config() }, "webhooks[0].timeout_ms"),
        ];
        for (bad, field) in cases {
            let e = WebhookEndpoint::resolve(0, bad).unwrap_err();
            assert!(e.starts_with(&format!("invalid {field}:")), "{e}");
        }
        let twice = WebhookEndpoint::resolve_all(vec![config(), config()]).unwrap_err();
        assert!(twice.contains("webhooks[1].name"), "{twice}");
    }
}
