//! The pitcrew wire protocol (`pitcrew.v1`) and the helpers every part shares: the action
//! catalogue, the agent's policy, time, and — with the `grpc` feature — the services, TLS set-up,
//! certificate identities, key and CSR making, file helpers and logging.
//!
//! Without `grpc` this crate pulls in no tonic, tokio or rustls: the pure scheduler depends on
//! it that way (an architecture invariant CI checks).
#![forbid(unsafe_code)]

#[cfg(feature = "grpc")]
pub mod accept;
pub mod actions;
#[cfg(feature = "grpc")]
pub mod codec;
#[cfg(feature = "grpc")]
pub mod csr;
pub mod files;
#[cfg(feature = "grpc")]
pub mod identity;
#[cfg(feature = "grpc")]
pub mod logging;
pub mod policy;
pub mod text;
#[cfg(feature = "grpc")]
pub mod tls;

/// Generated protobuf messages (and, with `grpc`, services) of package `pitcrew.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/pitcrew.v1.rs"));
}

/// Milliseconds since the Unix epoch, the one time unit on the wire and in the store.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// The version of pitcrew this build belongs to (all crates share it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The largest gRPC message either side accepts. Keeps a hostile peer from making us buffer
/// arbitrarily much; the biggest legitimate messages (captured output) are capped well below it.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The response metadata key in which a standby coordinator names the leader's address, on
/// the `UNAVAILABLE` status it answers every call with (empty while no coordinator leads; its
/// presence says the answer came from a standby). Agents and the CLI connect there next.
pub const LEADER_METADATA: &str = "pitcrew-leader";

/// The request metadata key in which a client names the leader it just failed to reach
/// (optional). A standby that still believes that address leads, or knows of no leader,
/// holds the call until the lease names a new leader (at most about a lease), instead of
/// sending the client round the coordinators again: a fleet that lost its leader waits at
/// the standbys and arrives at the new leader as soon as there is one.
pub const UNREACHABLE_LEADER_METADATA: &str = "pitcrew-unreachable-leader";

/// The leader a standby coordinator named in its refusal (empty while none leads), or `None`
/// when the status did not come from a standby.
#[cfg(feature = "grpc")]
pub fn standby_leader(status: &tonic::Status) -> Option<String> {
    let value = status.metadata().get(LEADER_METADATA)?;
    Some(value.to_str().unwrap_or_default().to_owned())
}
