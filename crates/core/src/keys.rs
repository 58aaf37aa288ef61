//! The Redis key layout. Every key of one user carries the same hash tag `{<routing tag hex>}`,
//! so a user's keys live in one Redis Cluster slot and one Lua script can change them atomically.
//!
//! - `<ns>:{<tag>}:t:<digest hex>`: a token record (JSON), its Redis TTL the token's lifetime.
//! - `<ns>:{<tag>}:a:<digest hex>`: the token's last activity (JSON, beside the record, never
//!   part of what it grants), its TTL the record's; the scripts that delete or move a record
//!   delete or move it too.
//! - `<ns>:{<tag>}:u:<user>`: the user's index, a sorted set of digests scored by creation order.
//! - `<ns>:{<tag>}:x:<user>`: the same digests scored by when their record expires (Unix ms, `inf`
//!   for immortal ones), so expired tokens are pruned by score, never by visiting each record.
//! - `<ns>:{<tag>}:o`: the outbox, a list of digests revoked by a script under this hash tag and
//!   not yet copied to the feed: the revocation and its publication commit together.
//! - `<ns>:outboxes`: the outboxes a companion announced a revocation into (a sorted set scored by
//!   when), so the sweep for outboxes a dead companion left reads only those, never the keyspace.
//! - `<ns>:revoked`: the revocation feed (a capped stream of revoked digests) that filters poll.
//! - `<ns>:edges`: the filter VMs following the feed and the cursor each acknowledged.
//! - `<ns>:audit`: the audit trail, a capped stream of issues, revocations and re-keyings.

use super::digest::TokenDigest;
use super::token::RoutingTag;

/// Builds the keys of one namespace (the token prefix).
#[derive(Clone, Debug)]
pub struct KeyLayout {
    namespace: String,
}

impl KeyLayout {
    /// The layout for a namespace; the companion and the filter use the token prefix.
    pub fn new(namespace: &str) -> Self {
        KeyLayout { namespace: namespace.to_string() }
    }

    /// Everything before the digest in a record key; the scripts append index members to it.
    pub fn record_prefix(&self, tag: RoutingTag) -> String {
        format!("{}:{{{}}}:t:", self.namespace, tag.to_hex())
    }

    /// Everything before the user id in an index key; the scripts append the record's user to it.
    pub fn index_prefix(&self, tag: RoutingTag) -> String {
        format!("{}:{{{}}}:u:", self.namespace, tag.to_hex())
    }

    /// Everything before the user id in an expiry index key.
    pub fn expiry_prefix(&self, tag: RoutingTag) -> String {
        format!("{}:{{{}}}:x:", self.namespace, tag.to_hex())
    }

    /// The expiry index of a user: the index's members scored by when their record expires.
    pub fn expiry_key(&self, user: &str) -> String {
        let mut key = self.expiry_prefix(RoutingTag::for_user(user));
        key.push_str(user);
        key
    }

    /// The record key of a token.
    pub fn record_key(&self, tag: RoutingTag, digest: &TokenDigest) -> String {
        let mut key = self.record_prefix(tag);
        key.push_str(&digest.to_hex());
        key
    }

    /// The activity key beside a token's record (the scripts derive it from the record key the
    /// same way: `:t:` becomes `:a:`).
    pub fn activity_key(&self, tag: RoutingTag, digest: &TokenDigest) -> String {
        format!("{}:{{{}}}:a:{}", self.namespace, tag.to_hex(), digest.to_hex())
    }

    /// The `SCAN` pattern of every record key.
    pub fn record_pattern(&self) -> String {
        format!("{}:{{*}}:t:*", self.namespace)
    }

    /// The routing tag and digest of a record key (`<ns>:{<tag>}:t:<digest>`), if it is one.
    pub fn parse_record_key(&self, name: &str) -> Option<(RoutingTag, TokenDigest)> {
        let rest = name.strip_prefix(self.namespace.as_str())?.strip_prefix(":{")?;
        let (tag_hex, digest_hex) = rest.split_once("}:t:")?;
        let mut tag = [0u8; crate::token::ROUTING_TAG_LEN];
        hex::decode_to_slice(tag_hex, &mut tag).ok()?;
        Some((RoutingTag(tag), TokenDigest::from_hex(digest_hex)?))
    }

    /// The index key of a user.
    pub fn index_key(&self, user: &str) -> String {
        let mut key = self.index_prefix(RoutingTag::for_user(user));
        key.push_str(user);
        key
    }

    /// The outbox of a hash tag: digests revoked under it, waiting to be copied to the feed.
    pub fn outbox_key(&self, tag: RoutingTag) -> String {
        format!("{}:{{{}}}:o", self.namespace, tag.to_hex())
    }

    /// The `SCAN` pattern matching every outbox of the namespace.
    pub fn outbox_pattern(&self) -> String {
        format!("{}:{{*}}:o", self.namespace)
    }

    /// The outboxes that may hold unpublished digests: a sorted set of outbox keys, scored by the
    /// time (ms) a companion last announced a revocation into each (the sweep's index).
    pub fn pending_outboxes(&self) -> String {
        format!("{}:outboxes", self.namespace)
    }

    /// The revocation feed stream.
    pub fn revocation_feed(&self) -> String {
        format!("{}:revoked", self.namespace)
    }

    /// The edges following the feed and what each acknowledged (a hash shared by companions).
    pub fn edges(&self) -> String {
        format!("{}:edges", self.namespace)
    }

    /// The audit trail stream.
    pub fn audit(&self) -> String {
        format!("{}:audit", self.namespace)
    }

    /// The key check value: the digest of a fixed text under the store's hash key, written once,
    /// so a companion started with another key can tell (every token would look unknown).
    pub fn key_check(&self) -> String {
        format!("{}:keycheck", self.namespace)
    }

    /// The public key of the companion that signs this store's records (absent: records are not
    /// signed): a companion without the signing key refuses to write into a signed store.
    pub fn sign_check(&self) -> String {
        format!("{}:signcheck", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::TokenHasher;

    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn a_users_keys_share_one_hash_tag() {
        let keys = KeyLayout::new("mt");
        let tag = RoutingTag::for_user("alice");
        let digest = TokenHasher::new(None).digest("mt_whatever");
        let record = keys.record_key(tag, &digest);
        assert_eq!(keys.parse_record_key(&record), Some((tag, digest)));
        assert_eq!(KeyLayout::new("other").parse_record_key(&record), None, "another namespace's key");
        let index = keys.index_key("alice");
        assert_eq!(hash_tag(&record), hash_tag(&index));
        assert_eq!(hash_tag(&keys.outbox_key(tag)), hash_tag(&index));
        assert_eq!(hash_tag(&keys.expiry_key("alice")), hash_tag(&index));
        assert_eq!(index, format!("{}alice", keys.index_prefix(tag)));
        // a user id with braces cannot change the hash tag: ours comes first
        assert_eq!(hash_tag(&keys.index_key("{evil}")), RoutingTag::for_user("{evil}").to_hex());
        assert!(record.ends_with(&digest.to_hex()));
    }
}
