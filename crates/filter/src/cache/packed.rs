//! A valid verdict packed into one allocation: what the cache holds per valid token.

use super::Stored;
use crate::identity::{Identity, IdentityView};
use multitokens_core::digest::TokenDigest;
use multitokens_core::dpop::Thumbprint;
use multitokens_core::token::{RoutingTag, ROUTING_TAG_LEN};

/// A valid verdict in one allocation: digest, routing tag, the lengths of user, device and id
/// (16 bits each), whether the token is bound to a key (one byte; then the key's 32-byte
/// thumbprint), then user, device, id and scopes.
#[derive(Debug)]
pub(super) struct Packed(Box<[u8]>);

const DIGEST_END: usize = 32;
const TAG_END: usize = DIGEST_END + ROUTING_TAG_LEN;
const BOUND_AT: usize = TAG_END + 6;
const THUMBPRINT_LEN: usize = 32;

impl Packed {
    /// `None` if a field is longer than 65,535 bytes (such a verdict is used, not cached).
    pub(super) fn new(stored: Stored, identity: &Identity) -> Option<Packed> {
        let fields = [&identity.user, &identity.device, &identity.id, &identity.scopes];
        let key_len = identity.bound_to.map_or(0, |_| THUMBPRINT_LEN);
        let mut bytes = Vec::with_capacity(BOUND_AT + 1 + key_len + fields.iter().map(|f| f.len()).sum::<usize>());
        bytes.extend_from_slice(&stored.digest.0);
        bytes.extend_from_slice(&stored.tag.0);
        for field in &fields[..3] {
            bytes.extend_from_slice(&u16::try_from(field.len()).ok()?.to_le_bytes());
        }
        match identity.bound_to {
            Some(key) => {
                bytes.push(1);
                bytes.extend_from_slice(&key.0);
            }
            None => bytes.push(0),
        }
        for field in fields {
            bytes.extend_from_slice(field.as_bytes());
        }
        Some(Packed(bytes.into_boxed_slice()))
    }

    pub(super) fn digest(&self) -> &[u8] {
        self.0.get(..DIGEST_END).unwrap_or_default()
    }

    pub(super) fn stored(&self) -> Option<Stored> {
        Some(Stored {
            digest: TokenDigest(self.digest().try_into().ok()?),
            tag: RoutingTag(self.0.get(DIGEST_END..TAG_END)?.try_into().ok()?),
        })
    }

    pub(super) fn view(&self) -> Option<IdentityView<'_>> {
        let len = |at: usize| {
            self.0.get(at..at + 2).and_then(|b| b.try_into().ok()).map(|b| usize::from(u16::from_le_bytes(b)))
        };
        let (user, device, id) = (len(TAG_END)?, len(TAG_END + 2)?, len(TAG_END + 4)?);
        let (bound_to, text_start) = match self.0.get(BOUND_AT)? {
            0 => (None, BOUND_AT + 1),
            _ => {
                let key = self.0.get(BOUND_AT + 1..BOUND_AT + 1 + THUMBPRINT_LEN)?.try_into().ok()?;
                (Some(Thumbprint(key)), BOUND_AT + 1 + THUMBPRINT_LEN)
            }
        };
        let text = std::str::from_utf8(self.0.get(text_start..)?).ok()?;
        let (device_end, id_end) = (user + device, user + device + id);
        Some(IdentityView {
            user: text.get(..user)?,
            device: text.get(user..device_end)?,
            id: text.get(device_end..id_end)?,
            scopes: text.get(id_end..)?,
            bound_to,
        })
    }
}
