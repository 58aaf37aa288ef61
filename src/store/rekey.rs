//! Hash key rotation and record sealing: the key check value, the signing check, re-keying on
//! use and the sweep (`multitokens rekey`).

use super::*;

/// What `multitokens rekey` did to the namespace's records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RekeyReport {
    /// Records looked at.
    pub scanned: u64,
    /// Already under the current key.
    pub current: u64,
    /// Moved to the current key's digest and resealed.
    pub rekeyed: u64,
    /// Unsealed records (written before sealing) sealed with the current key (`--seal-unsealed`),
    /// and, with a signing key, HMAC-sealed records signed.
    pub sealed: u64,
    /// Version 1 tokens under a previous key: only the token gives their new digest, so they are
    /// re-keyed when next used. Dropping the previous key logs them out.
    pub rekeyed_on_use_only: u64,
    /// Records without a valid seal (left alone, refused on use).
    pub unsealed_or_tampered: u64,
    /// The public ids of the first 100 of them (never a digest), to look into.
    pub unsealed_or_tampered_ids: Vec<String>,
    /// Records revoked or expired while the sweep ran.
    pub gone: u64,
}

/// Whether this companion's hash key is the one the store was written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// Same key (or the store had none and now has ours).
    Matches,
    /// Another key: every token of this store would look unknown.
    Differs,
}

/// The text whose digest is the key check value.
const KEY_CHECK_TEXT: &str = "multitokens/key-check";

impl TokenStore {
    /// Moves a record to `new` (or reseals it in place when `new` is its digest), sealed with
    /// the current key, if it still holds what was read, and publishes the old digest (cached
    /// verdicts under it are dropped). True if moved.
    pub(super) async fn rekey_record(
        &self,
        conn: &mut Conn,
        read: ReadRecord<'_>,
        new: &TokenDigest,
        origin: &Origin,
    ) -> Result<bool, StoreError> {
        let ReadRecord { tag, digest: old, value: read, record } = read;
        self.announce_outbox(&self.layout.outbox_key(tag)).await?;
        let sealed = self.hash_keys.seal(new, record.to_json()?);
        let moved: i64 = self
            .timed(
                "rekey",
                self.scripts
                    .rekey
                    .key(self.layout.record_key(tag, old))
                    .key(self.layout.record_key(tag, new))
                    .key(self.layout.index_key(&record.user))
                    .key(self.layout.expiry_key(&record.user))
                    .key(self.layout.outbox_key(tag))
                    .arg(old.to_hex())
                    .arg(new.to_hex())
                    .arg(read)
                    .arg(sealed)
                    .invoke_async(conn),
            )
            .await?;
        if moved == 1 {
            tracing::info!(id = %record.id, "token re-keyed under the current hash key");
            if old != new {
                self.publish_outbox(&self.layout.outbox_key(tag)).await?;
            }
            self.audit(Event::Rekey, &record.user, std::slice::from_ref(&record.id), None, None, origin).await;
        }
        Ok(moved == 1)
    }

    /// Compares this companion's hash keys with the store's key check value, writing it when the
    /// store has none yet. A store written with one of the previous keys matches (a rotation) and
    /// is marked as written with the current key from then on.
    pub async fn check_hash_key(&self) -> Result<KeyCheck, StoreError> {
        let mut conn = self.redis.conn().await?;
        let check = |h: &multitokens_core::digest::TokenHasher| h.digest(KEY_CHECK_TEXT).to_hex();
        let ours = check(self.hash_keys.current());
        let key = self.layout.key_check();
        let _: Option<String> = redis::cmd("SET").arg(&key).arg(&ours).arg("NX").query_async(&mut conn).await?;
        let stored: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        if stored.as_deref() == Some(ours.as_str()) {
            return Ok(KeyCheck::Matches);
        }
        if self.hash_keys.all()[1..].iter().any(|h| stored.as_deref() == Some(check(h).as_str())) {
            let _: () = redis::cmd("SET").arg(&key).arg(&ours).query_async(&mut conn).await?;
            tracing::info!("the store was written with a previous hash key: rotating to the current one");
            return Ok(KeyCheck::Matches);
        }
        Ok(KeyCheck::Differs)
    }

    /// Whether this companion may write records here: with a signing key it marks the store as
    /// signed (its public key in `<prefix>:signcheck`) and may; without one it may not once the
    /// store is marked, since every record it wrote would be refused as tampered.
    pub async fn check_signing(&self) -> Result<bool, StoreError> {
        let mut conn = self.redis.conn().await?;
        let key = self.layout.sign_check();
        match self.hash_keys.signer() {
            Some(signer) => {
                let _: () = redis::cmd("SET").arg(&key).arg(signer.public_key_text()).query_async(&mut conn).await?;
                Ok(true)
            }
            None => {
                let signed: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await?;
                Ok(!signed)
            }
        }
    }

    /// Re-keys every record of the namespace stored under a previous hash key (`multitokens
    /// rekey`), and with `seal_unsealed` seals records written before sealing with the current
    /// key; the audit trail names `origin`. Safe to run while serving and to run again: each
    /// record moves in one atomic script that checks it still holds what was read. Holds the
    /// record key names in memory (~100 bytes per token).
    pub async fn rekey_all(&self, seal_unsealed: bool, origin: &Origin) -> Result<RekeyReport, StoreError> {
        let names = self.redis.scan_all(&self.layout.record_pattern()).await?;
        let mut report = RekeyReport::default();
        let mut conn = self.redis.conn().await?;
        let current = self.hash_keys.current();
        for name in names {
            let Some((tag, digest)) = self.layout.parse_record_key(&name) else { continue };
            report.scanned += 1;
            let (value, pttl): (Option<Vec<u8>>, i64) =
                redis::pipe().get(&name).cmd("PTTL").arg(&name).query_async(&mut conn).await?;
            let Some(value) = value.filter(|_| pttl != -2) else {
                report.gone += 1;
                continue;
            };
            let record = match TokenRecord::from_json(&value) {
                Ok(r) => r,
                Err(_) => {
                    report.unsealed_or_tampered += 1;
                    continue;
                }
            };
            let sealed_by = self.hash_keys.sealed_by(&digest, &value);
            let new_digest =
                record.token_hash.as_deref().and_then(TokenDigest::from_hex).map(|h| current.digest_of_hash(&h.0));
            // a record with a broken seal or signature is tampered with, never sealed afresh
            let has_seal = HashKeys::carries_seal(&value);
            // an HMAC-sealed record while records are signed: signed where it is (or where it moves)
            let sign = self.hash_keys.signs_records() && !multitokens_core::signing::has_signature(&value);
            // where the record goes, and the counter it adds to once moved
            let (target, counter) = match (sealed_by, new_digest) {
                (None, _) if seal_unsealed && current.is_keyed() && !has_seal => (digest, &mut report.sealed),
                (None, _) => {
                    self.refuse_tampered(&digest);
                    report.unsealed_or_tampered += 1;
                    if report.unsealed_or_tampered_ids.len() < 100 {
                        report.unsealed_or_tampered_ids.push(digest.public_id());
                    }
                    continue;
                }
                (Some(0), Some(new)) if new == digest && !sign => {
                    report.current += 1;
                    continue;
                }
                (Some(0), Some(new)) if new == digest => (digest, &mut report.sealed),
                (Some(_), Some(new)) => (new, &mut report.rekeyed),
                (Some(0), None) if !sign => {
                    report.current += 1;
                    continue;
                }
                (Some(0), None) => (digest, &mut report.sealed),
                (Some(_), None) => {
                    report.rekeyed_on_use_only += 1;
                    continue;
                }
            };
            if self
                .rekey_record(
                    &mut conn,
                    ReadRecord { tag, digest: &digest, value: &value, record: &record },
                    &target,
                    origin,
                )
                .await?
            {
                *counter += 1;
            } else {
                report.gone += 1;
            }
        }
        tracing::info!(?report, "rekey sweep done");
        Ok(report)
    }
}
