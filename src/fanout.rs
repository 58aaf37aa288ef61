//! The revocation feed, fanned out: one blocking stream read on Redis per companion, served to
//! any number of long-polling filters from memory, so Redis load does not grow with the number
//! of Envoy workers. A cursor the memory does not cover (older than what it holds, ahead of it,
//! or after entries were lost) is answered by the feed script itself, which detects loss.

use super::error::StoreError;
use super::store::{stream_id, RevocationPage, TokenStore, FEED_PAGE};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Most recent entries kept in memory.
pub const MEMORY_ENTRIES: usize = 50_000;
/// Longest a long poll is held.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// What the companion holds of the feed: the entries after `floor` up to `latest`.
#[derive(Clone, Debug, Default)]
struct Window {
    floor: (u64, u64),
    latest: (u64, u64),
    latest_text: String,
    entries: VecDeque<((u64, u64), String, String)>,
}

impl Window {
    fn starting_at(cursor: &str) -> Option<Window> {
        let id = stream_id(cursor)?;
        Some(Window { floor: id, latest: id, latest_text: cursor.to_string(), entries: VecDeque::new() })
    }

    /// The page after `cursor`, or `None` when the window does not cover it.
    fn page_after(&self, cursor: (u64, u64)) -> Option<RevocationPage> {
        if cursor < self.floor || cursor > self.latest {
            return None;
        }
        let start = self.entries.partition_point(|(id, _, _)| *id <= cursor);
        let page: Vec<_> = self.entries.iter().skip(start).take(FEED_PAGE).collect();
        let next = page.last().map(|(_, text, _)| text.clone());
        Some(RevocationPage {
            cursor: next.unwrap_or_else(|| {
                if cursor == self.latest {
                    self.latest_text.clone()
                } else {
                    format!("{}-{}", cursor.0, cursor.1)
                }
            }),
            more: page.len() >= FEED_PAGE,
            digests: page.into_iter().map(|(_, _, d)| d.clone()).collect(),
            reset: false,
        })
    }
}

/// The fan-out: a watcher task fills the window; long polls read it.
pub struct FeedFanout {
    store: Arc<TokenStore>,
    window: watch::Sender<Option<Arc<Window>>>,
}

impl FeedFanout {
    /// A fan-out over the store; nothing is read until [`FeedFanout::run`] runs.
    pub fn new(store: Arc<TokenStore>) -> Arc<FeedFanout> {
        Arc::new(FeedFanout { store, window: watch::Sender::new(None) })
    }

    /// Follows the feed for ever: a blocking read on a dedicated connection, then the feed
    /// script from the window's end (which also says when entries were lost: the window then
    /// starts over, and every poller's cursor falls outside it).
    pub async fn run(self: Arc<Self>, block: Duration) {
        let mut conn = None;
        loop {
            if let Err(e) = self.follow(&mut conn, block).await {
                tracing::warn!(error = %e, "revocation feed: reading Redis failed; retrying");
                conn = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn follow(&self, conn: &mut Option<super::connection::Conn>, block: Duration) -> Result<(), StoreError> {
        let current = self.window.borrow().clone();
        let Some(window) = current else {
            let tail = self.store.revocations_after(None).await?;
            self.window.send_replace(Window::starting_at(&tail.cursor).map(Arc::new));
            return Ok(());
        };
        if conn.is_none() {
            *conn = Some(self.store.redis().dedicated(block).await?);
        }
        let Some(c) = conn.as_mut() else { return Ok(()) };
        let entries = self.store.feed_entries_after(c, &window.latest_text, block).await?;
        // the feed script is the authority on loss (trimmed, deleted, a failover behind us)
        let check = self.store.revocations_after(Some(&window.latest_text)).await?;
        let mut next = (*window).clone();
        if check.reset {
            tracing::warn!("revocation feed: entries were lost; pollers start over");
            next = Window::starting_at(&check.cursor).unwrap_or_default();
        } else {
            for (text, digest) in entries {
                let Some(id) = stream_id(&text) else { continue };
                if id > next.latest {
                    next.latest = id;
                    next.latest_text = text.clone();
                    next.entries.push_back((id, text, digest));
                }
            }
            while next.entries.len() > MEMORY_ENTRIES {
                if let Some((id, _, _)) = next.entries.pop_front() {
                    next.floor = id;
                }
            }
        }
        if next.latest != window.latest || next.floor != window.floor {
            self.window.send_replace(Some(Arc::new(next)));
        }
        Ok(())
    }

    /// Where the feed ends now, as far as this companion knows.
    pub fn latest(&self) -> Option<String> {
        self.window.borrow().as_ref().map(|w| w.latest_text.clone())
    }

    /// A long poll: the page after `after`, waiting up to `wait` for one that is not empty.
    pub async fn next_page(&self, after: Option<&str>, wait: Duration) -> Result<RevocationPage, StoreError> {
        let Some(cursor) = after.map(|c| if c == "0" { "0-0" } else { c }) else {
            return self.store.revocations_after(None).await;
        };
        let Some(id) = stream_id(cursor) else { return self.store.revocations_after(Some(cursor)).await };
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut changes = self.window.subscribe();
        loop {
            let from_memory = changes.borrow_and_update().as_ref().and_then(|w| w.page_after(id));
            let page = match from_memory {
                Some(page) => page,
                // outside the window (or none yet): Redis answers, and says when entries were lost
                None => self.store.revocations_after(Some(cursor)).await?,
            };
            if !page.digests.is_empty() || page.reset || tokio::time::Instant::now() >= deadline {
                return Ok(page);
            }
            // nothing new yet: wait for the watcher, or the deadline (then answer the empty page)
            let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_serves_cursors_it_covers() {
        let mut w = Window::starting_at("10-0").unwrap();
        for (i, d) in ["a", "b", "c"].iter().enumerate() {
            let id = (11 + i as u64, 0);
            w.entries.push_back((id, format!("{}-0", id.0), d.to_string()));
            w.latest = id;
            w.latest_text = format!("{}-0", id.0);
        }
        let page = w.page_after((10, 0)).unwrap();
        assert_eq!((page.cursor.as_str(), page.digests.len()), ("13-0", 3));
        let page = w.page_after((12, 0)).unwrap();
        assert_eq!((page.cursor.as_str(), page.digests), ("13-0", vec!["c".to_string()]));
        let page = w.page_after((13, 0)).unwrap();
        assert_eq!((page.cursor.as_str(), page.digests.len()), ("13-0", 0));
        assert!(w.page_after((9, 9)).is_none(), "older than the window");
        assert!(w.page_after((14, 0)).is_none(), "ahead of the window");
    }
}
