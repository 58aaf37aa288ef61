//! The proxy-wasm HTTP filter. Everything but the host calls is plain Rust here, tested natively:
//! [`config`] (parsed once at load), [`header_map`] (the header map wire form, as bytes), [`cache`] (bounded verdict
//! cache with revocation), [`path`] (only canonical paths meet the rules), [`rules`] (exclusions and scope rules), [`reply`] (local replies), [`throttle`] (failed attempts per client) and
//! [`flow`] (the per-request decision, behind the small [`flow::Host`] trait). The `wasm` module is
//! the thin proxy-wasm shell, built only for the `wasm-filter` feature.

pub mod cache;
pub mod coalesce;
pub mod companion_transport;
pub mod config;
pub mod csrf;
pub mod feed;
pub mod flow;
pub mod header_map;
pub mod host;
pub mod identity;
pub mod lookup;
pub mod memory_host;
pub mod metric;
pub mod path;
pub mod redis_transport;
pub mod reply;
pub mod route;
pub mod rules;
pub mod throttle;
#[cfg(feature = "wasm-filter")]
mod wasm;
pub mod worker;
