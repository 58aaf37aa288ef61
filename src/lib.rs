//! The native companion `multitokens`: CLI and HTTP API that issue, list, verify and revoke tokens
//! in Redis (single node or Redis Cluster) through the atomic scripts of [`multitokens_core::scripts`].
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod connection;
pub mod edges;
pub mod error;
pub mod ext_authz;
pub mod fanout;
pub mod grpc;
pub mod metrics;
pub mod openapi;
pub mod roles;
pub mod server;
pub mod settings;
pub mod store;
pub mod webhooks;
