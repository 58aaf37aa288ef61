//! The filter's logic. Everything but the host calls is plain Rust here, tested natively:
//! [`config`] (parsed once at load), [`header_map`] (the header map wire form, as bytes), [`header_list`]
//! (a request's headers in one buffer), [`cache`]
//! (bounded verdict cache with revocation), [`path`] (only canonical paths meet the rules), [`route`]
//! (a path as lenient upstreams route it), [`rules`] (exclusions and scope rules), [`reply`] (local
//! replies), [`throttle`] (failed attempts per client), [`flow`] (the per-request decision, behind
//! the small [`host::Host`] trait), [`store_call`] (every store call, either transport) and [`vm`]
//! (the contexts and callouts of a single-threaded VM, behind [`vm::Proxy`]). It speaks no proxy's
//! ABI: the native shell implements `Host`, the proxy-wasm shell `vm::Proxy`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod activity;
pub mod cache;
pub mod coalesce;
pub mod companion_transport;
pub mod config;
pub mod csrf;
pub mod dpop;
pub mod edge;
pub mod feed;
pub mod flow;
pub mod header_list;
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
pub mod store_call;
pub mod throttle;
pub mod vm;
pub mod worker;
