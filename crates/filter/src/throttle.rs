//! A budget per client address on lookups of tokens the edge cannot check by their MAC: old-format
//! tokens (issued before MACs, or by a companion without a hash key), which anyone can forge with
//! the public checksum. Each such lookup is charged when it is sent (so parallel requests cannot
//! overdraw it) and refunded when the token turns out valid; over budget, the address gets 429
//! for such tokens until the window ends. A token whose MAC verifies is never charged nor refused
//! here, and a forged version 3 token is refused before it could cost anything. The table is per
//! VM and bounded (oldest clients forgotten first), keyed by the downstream address Envoy reports.

use serde::Deserialize;
use std::collections::{HashMap, VecDeque};

/// The throttle's settings (`throttle` in the plugin configuration).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Lookups of unchecked tokens a client address may have refused (or in flight) per window.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// The window, ms.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// Clients remembered per worker.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
}

fn default_max_failures() -> u32 {
    20
}
fn default_window_ms() -> u64 {
    60_000
}
fn default_max_clients() -> usize {
    10_000
}

impl ThrottleConfig {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), String> {
        if self.max_failures == 0 {
            return Err("max_failures: at least 1".into());
        }
        if !(1_000..=86_400_000).contains(&self.window_ms) {
            return Err("window_ms: 1000 to 86400000".into());
        }
        if !(1..=1_000_000).contains(&self.max_clients) {
            return Err("max_clients: 1 to 1000000".into());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started: u64,
    failures: u32,
}

/// The per-VM table of clients' failures.
#[derive(Debug)]
pub struct FailureThrottle {
    config: ThrottleConfig,
    clients: HashMap<Box<[u8]>, Window>,
    order: VecDeque<Box<[u8]>>,
}

impl FailureThrottle {
    /// An empty table.
    pub fn new(config: ThrottleConfig) -> Self {
        FailureThrottle { config, clients: HashMap::new(), order: VecDeque::new() }
    }

    /// Seconds until the client may try again, if it is over its budget now.
    pub fn retry_after(&self, client: &[u8], now: u64) -> Option<u64> {
        let w = self.clients.get(client)?;
        let ends = w.started + self.config.window_ms;
        (w.failures >= self.config.max_failures && ends > now).then(|| (ends - now).div_ceil(1000))
    }

    /// Charges one lookup to the client.
    pub fn record_failure(&mut self, client: &[u8], now: u64) {
        let window_ms = self.config.window_ms;
        if let Some(w) = self.clients.get_mut(client) {
            if now >= w.started + window_ms {
                *w = Window { started: now, failures: 0 };
            }
            w.failures = w.failures.saturating_add(1);
            return;
        }
        while self.clients.len() >= self.config.max_clients {
            let Some(oldest) = self.order.pop_front() else { break };
            self.clients.remove(&oldest);
        }
        self.clients.insert(client.into(), Window { started: now, failures: 1 });
        self.order.push_back(client.into());
    }

    /// Gives back a charged lookup whose token was valid.
    pub fn refund(&mut self, client: &[u8]) {
        if let Some(w) = self.clients.get_mut(client) {
            w.failures = w.failures.saturating_sub(1);
        }
    }

    /// Clients remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// The client part of an address as Envoy reports it (`10.0.0.1:5432`, `[::1]:5432`): the port
/// changes with every connection, so it is dropped.
pub fn client_key(address: &[u8]) -> &[u8] {
    if let Some(rest) = address.strip_prefix(b"[") {
        if let Some(end) = rest.iter().position(|b| *b == b']') {
            return &rest[..end];
        }
    }
    match address.iter().filter(|b| **b == b':').count() {
        1 => address.split(|b| *b == b':').next().unwrap_or(address),
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max_failures: u32, max_clients: usize) -> FailureThrottle {
        FailureThrottle::new(ThrottleConfig { max_failures, window_ms: 10_000, max_clients })
    }

    #[test]
    fn over_budget_until_the_window_ends() {
        let mut t = throttle(3, 10);
        for now in [0, 100, 200] {
            assert_eq!(t.retry_after(b"a", now), None);
            t.record_failure(b"a", now);
        }
        assert_eq!(t.retry_after(b"a", 300), Some(10), "9.7 s rounded up");
        assert_eq!(t.retry_after(b"a", 9_001), Some(1));
        assert_eq!(t.retry_after(b"b", 300), None, "other clients are not affected");
        assert_eq!(t.retry_after(b"a", 10_000), None, "a new window");
        t.record_failure(b"a", 10_000);
        assert_eq!(t.retry_after(b"a", 10_001), None);
    }

    #[test]
    fn a_refund_gives_the_charge_back() {
        let mut t = throttle(2, 10);
        t.record_failure(b"a", 0);
        t.record_failure(b"a", 1);
        assert!(t.retry_after(b"a", 2).is_some());
        t.refund(b"a");
        assert_eq!(t.retry_after(b"a", 3), None, "a valid token's lookup does not count");
        t.refund(b"unknown");
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut t = throttle(1, 100);
        for i in 0..10_000u32 {
            t.record_failure(&i.to_be_bytes(), 0);
        }
        assert_eq!(t.len(), 100);
        assert!(t.retry_after(&9_999u32.to_be_bytes(), 1).is_some());
        assert!(t.retry_after(&0u32.to_be_bytes(), 1).is_none(), "the oldest was forgotten");
    }

    #[test]
    fn ports_are_dropped_from_addresses() {
        assert_eq!(client_key(b"10.0.0.1:5432"), b"10.0.0.1");
        assert_eq!(client_key(b"[::1]:5432"), b"::1");
        assert_eq!(client_key(b"::1"), b"::1");
        assert_eq!(client_key(b"10.0.0.1"), b"10.0.0.1");
        assert_eq!(client_key(b"[broken"), b"[broken");
    }
}
