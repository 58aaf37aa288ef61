//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): HMAC-SHA256 over
//! `<webhook-id>.<webhook-timestamp>.<body>` with the secret's bytes, sent as `v1,<base64>`, one
//! per secret, space-separated (several while rotating).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a secret's text.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest bytes a secret may hold (the specification: 24 to 64).
pub const MIN_SECRET_BYTES: usize = 24;
/// Most bytes a secret may hold.
pub const MAX_SECRET_BYTES: usize = 64;

/// A signing secret: `whsec_` and the base64 of 24 to 64 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// Reads `whsec_<base64>`; the error never repeats the secret.
    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        let encoded = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            format!("a secret starts with {SECRET_PREFIX:?} (like `multitokens keygen --webhook` prints)")
        })?;
        let bytes = STANDARD
            .decode(encoded.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded.trim_end_matches('=')))
            .map_err(|_| format!("a secret is {SECRET_PREFIX} followed by base64"))?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(format!(
                "a secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, this one {}",
                bytes.len()
            ));
        }
        Ok(WebhookSecret(bytes))
    }

    /// A new random secret's text: 256 bits from the OS.
    pub fn generate() -> Result<String, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)))
    }

    /// This secret's `v1,<base64>` signature of a message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // HMAC takes a key of any length: `new_from_slice` cannot fail for it
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else { return String::new() };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per secret, space-separated.
pub fn signature_header(secrets: &[WebhookSecret], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets.iter().map(|s| s.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_specifications_example() {
        // the example of the Standard Webhooks specification and its reference libraries
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked_and_never_echoed() {
        for bad in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!!", "whsec_c2hvcnQ="] {
            let e = WebhookSecret::parse(bad).unwrap_err();
            assert!(!e.contains(bad.trim_start_matches("whsec_")), "{e}");
        }
        let text = WebhookSecret::generate().unwrap();
        assert!(WebhookSecret::parse(&text).is_ok());
        assert_eq!(format!("{:?}", WebhookSecret::parse(&text).unwrap()), "WebhookSecret(<redacted>)");
    }

    #[test]
    fn every_secret_signs_while_rotating() {
        let (a, b) = (
            WebhookSecret::parse(&WebhookSecret::generate().unwrap()).unwrap(),
            WebhookSecret::parse(&WebhookSecret::generate().unwrap()).unwrap(),
        );
        let header = signature_header(&[a.clone(), b.clone()], "msg_1", 1, b"{}");
        assert_eq!(header, format!("{} {}", a.sign("msg_1", 1, b"{}"), b.sign("msg_1", 1, b"{}")));
    }
}
