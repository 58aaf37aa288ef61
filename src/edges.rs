//! The edges (filter VMs) following the revocation feed, and what each has acknowledged: every
//! long poll carries the VM's id and the cursor of the last page it applied. A revoke waits until
//! every edge seen recently has acknowledged its feed position. Companions behind one Redis share
//! what they know through one hash (`<ns>:edges`), written at most every [`FLUSH_EVERY`].

use super::clock::now_ms;
use super::error::StoreError;
use super::store::{stream_id, Revocation, TokenStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How often a companion writes what changed to the shared hash, and reads it while a revoke waits.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// How long past its expected next poll an edge still counts as live (a poll that failed is
/// retried on the VM's next tick).
pub const GRACE_MS: u64 = 3000;
/// Entries of edges silent for this long are removed from the shared hash.
pub const FORGET_AFTER_MS: u64 = 10 * 60 * 1000;
/// Most edges one companion keeps track of by default (each Envoy worker following the feed is
/// one; `max_edges`). A new edge past it is refused until a silent one expires, so an
/// internal-key holder making up edge ids cannot grow the companion or the shared hash without bound.
pub const MAX_EDGES: usize = 10_000;

/// What is known of one edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeState {
    /// The last feed cursor it acknowledged (applied).
    pub acked: String,
    /// Unix ms by which it will have polled again; after that (and the grace) it is not live.
    pub due_ms: u64,
}

/// How many live edges acknowledged a revocation before the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Acknowledgements {
    /// Live edges that applied the revocation.
    pub acknowledged: u64,
    /// Live edges that had not when the wait ended: they fall back to the documented bound.
    pub pending: u64,
}

/// What a revoke answers: how many tokens, and how the live edges acknowledged it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RevokeReport {
    /// Tokens revoked.
    pub revoked: u64,
    /// Live edges (filter VMs following the feed through a companion) that applied the revocation
    /// before this answer, and those that had not.
    pub edges: Acknowledgements,
}

/// Is `id` a usable edge id: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn valid_edge_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The registry of edges.
pub struct EdgeRegistry {
    store: Arc<TokenStore>,
    /// Most edges tracked.
    max_edges: usize,
    local: Mutex<HashMap<String, EdgeState>>,
    /// Edges still behind a revocation they were waited for in vain, with that revocation's feed
    /// position: later revokes count them pending but do not wait for them, until they catch up.
    lagging: Mutex<HashMap<String, (u64, u64)>>,
    dirty: Mutex<Vec<String>>,
    changed: Notify,
}

impl EdgeRegistry {
    /// An empty registry over the store's Redis, tracking at most `max_edges` edges.
    pub fn new(store: Arc<TokenStore>, max_edges: usize) -> Arc<EdgeRegistry> {
        Arc::new(EdgeRegistry {
            store,
            max_edges,
            local: Mutex::default(),
            lagging: Mutex::default(),
            dirty: Mutex::default(),
            changed: Notify::new(),
        })
    }

    /// An edge polled: it has applied everything through `acked` and will poll again by `due_ms`.
    /// False when the edge is new and `max_edges` live edges are known already (it is not
    /// tracked, and the caller refuses the poll).
    pub fn record(&self, edge: &str, acked: &str, due_ms: u64) -> bool {
        if let Ok(mut local) = self.local.lock() {
            if !local.contains_key(edge) && local.len() >= self.max_edges {
                let now = now_ms();
                local.retain(|_, s| s.due_ms + GRACE_MS >= now);
                if local.len() >= self.max_edges {
                    return false;
                }
            }
            local.insert(edge.to_string(), EdgeState { acked: acked.to_string(), due_ms });
        }
        if let (Ok(mut lagging), Some(acked)) = (self.lagging.lock(), stream_id(acked)) {
            if lagging.get(edge).is_some_and(|missed| acked >= *missed) {
                lagging.remove(edge);
            }
        }
        if let Ok(mut dirty) = self.dirty.lock() {
            dirty.push(edge.to_string());
        }
        self.changed.notify_waiters();
        true
    }

    /// How many edges this companion tracks.
    pub fn len(&self) -> usize {
        self.local.lock().map_or(0, |l| l.len())
    }

    /// Whether it tracks none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what changed to the shared hash, for ever (spawned by `serve`).
    pub async fn run_flusher(self: Arc<Self>) {
        let mut last_forget = 0;
        loop {
            tokio::time::sleep(FLUSH_EVERY).await;
            let names: Vec<String> = self.dirty.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default();
            let entries: Vec<(String, String)> = match self.local.lock() {
                Ok(local) => names
                    .iter()
                    .filter_map(|n| {
                        local.get(n).and_then(|s| serde_json::to_string(s).ok()).map(|json| (n.clone(), json))
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            if let Err(e) = self.store.write_edges(&entries).await {
                tracing::warn!(error = %e, "could not share edge acknowledgements");
            }
            if now_ms() - last_forget > 60_000 {
                last_forget = now_ms();
                if let Ok(mut local) = self.local.lock() {
                    local.retain(|_, s| s.due_ms + FORGET_AFTER_MS > last_forget);
                    if let Ok(mut lagging) = self.lagging.lock() {
                        lagging.retain(|name, _| local.contains_key(name));
                    }
                }
                let _ = self.store.forget_edges(last_forget.saturating_sub(FORGET_AFTER_MS)).await;
            }
        }
    }

    /// Waits (at most `timeout`) until the live edges have applied a committed revocation.
    pub async fn confirm(&self, revocation: &Revocation, timeout: Duration) -> RevokeReport {
        let edges = match &revocation.feed_position {
            Some(position) => self.wait_for(position, timeout).await.unwrap_or_default(),
            None => Acknowledgements::default(),
        };
        RevokeReport { revoked: revocation.revoked, edges }
    }

    /// Waits until every live edge has acknowledged `position` (a feed stream id), at most
    /// `timeout`; counts who did. An edge that let a whole wait run out is still counted pending
    /// but not waited for again until it has caught up: one stuck or made-up edge costs one
    /// revoke its wait, not every revoke. Reads the other companions' knowledge from Redis meanwhile.
    pub async fn wait_for(&self, position: &str, timeout: Duration) -> Result<Acknowledgements, StoreError> {
        let Some(target) = stream_id(position) else { return Ok(Acknowledgements::default()) };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let mut edges = self.store.read_edges().await.unwrap_or_default();
            if let Ok(local) = self.local.lock() {
                for (name, state) in local.iter() {
                    let newer = edges.get(name).is_none_or(|s| stream_id(&s.acked) <= stream_id(&state.acked));
                    if newer {
                        edges.insert(name.clone(), state.clone());
                    }
                }
            }
            let now = now_ms();
            let lagging = self.lagging.lock().map(|l| l.clone()).unwrap_or_default();
            let mut counts = Acknowledgements::default();
            let mut awaited = Vec::new();
            for (name, state) in edges.iter().filter(|(_, s)| s.due_ms + GRACE_MS >= now) {
                if stream_id(&state.acked).is_some_and(|a| a >= target) {
                    counts.acknowledged += 1;
                } else {
                    counts.pending += 1;
                    if !lagging.contains_key(name) {
                        awaited.push(name.clone());
                    }
                }
            }
            if awaited.is_empty() {
                return Ok(counts);
            }
            if tokio::time::Instant::now() >= deadline {
                // waited for in vain: not waited for again until they catch up with this position
                if let Ok(mut lagging) = self.lagging.lock() {
                    for name in awaited {
                        lagging.insert(name, target);
                    }
                }
                return Ok(counts);
            }
            let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + FLUSH_EVERY), notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_ids_are_short_and_plain() {
        assert!(valid_edge_id("0123abcd-ef_9"));
        assert!(!valid_edge_id("") && !valid_edge_id("a b") && !valid_edge_id(&"a".repeat(65)) && !valid_edge_id("é"));
    }
}
