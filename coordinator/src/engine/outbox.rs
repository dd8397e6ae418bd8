//! How the engine hands messages to agents: queued without waiting, after the decision that
//! caused them is durable.
//!
//! The engine never awaits a network send (one agent that stops reading must not stall the
//! others). The registry implements this over the live sessions; tests implement it to check
//! the write-ahead invariant at the moment of each send.

use pitcrew_proto::v1;

/// A sink for messages to agents.
pub trait Outbox: Send + Sync + 'static {
    /// Queues `message` for the host's session without waiting. Returns false when the host
    /// is not connected or its session could not take the message (the session is then
    /// closed; whatever was in flight is re-sent from the store when the agent returns).
    fn send(&self, host_id: &str, message: v1::CoordinatorMessage) -> bool;
}
