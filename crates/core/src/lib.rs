//! Token core: everything the filter and the companion must agree on, with no host calls.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod activity;
pub mod contract;
pub mod credential;
pub mod digest;
pub mod dpop;
pub mod keyring;
pub mod keys;
pub mod record;
pub mod resp;
pub mod scripts;
pub mod signing;
pub mod token;
pub mod ttl;
pub mod user;
pub mod verdict;
