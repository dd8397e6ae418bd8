//! pitcrew-coordinator: the one place that decides. It holds the fleet CA and enrolls agents,
//! keeps the store (hosts, tokens, actions, campaigns, events), serves the agents' sessions and
//! the operators' Admin API over mTLS, and runs campaigns with the scheduler.
#![forbid(unsafe_code)]

pub mod app;
pub mod ca;
pub mod config;
pub mod dashboard;
pub mod engine;
pub mod events;
pub mod init;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod operators;
pub mod registry;
pub mod server;
pub mod standby;
pub mod store;
pub mod tokens;
pub mod wire;
