//! multitokens: per-device bearer tokens for Envoy.
//!
//! - [`core`]: token format, hashing, record schema, Redis key layout, Lua scripts and auth
//!   decisions. Plain Rust, no I/O; shared by the filter and the companion.
//! - [`filter`]: the proxy-wasm HTTP filter's logic (config, cache, decisions) as plain Rust, plus
//!   the thin proxy-wasm shell when built with the `wasm-filter` feature.
//! - `companion` (feature `companion`): the `multitokens` CLI and HTTP API over Redis.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg(feature = "companion")]
pub mod companion;
pub mod core;
pub mod filter;
