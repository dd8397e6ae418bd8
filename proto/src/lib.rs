//! The pitcrew wire protocol (`pitcrew.v1`) and the helpers every part shares: TLS set-up,
//! certificate identities, file helpers and time.
#![forbid(unsafe_code)]

pub mod describe;
pub mod files;
pub mod identity;
pub mod logging;
pub mod policy;
pub mod tls;

/// Generated protobuf messages and gRPC services of package `pitcrew.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("pitcrew.v1");
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
