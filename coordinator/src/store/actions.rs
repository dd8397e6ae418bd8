//! Actions sent (or about to be sent) to agents, and their final results.

/// An action sent (or about to be sent) to an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    pub action_id: String,
    pub host_id: String,
    pub campaign_id: String,
    /// prost-encoded `v1::ActionRequest`.
    pub request: Vec<u8>,
    /// prost-encoded `v1::ActionResult` once finished.
    pub result: Option<Vec<u8>>,
    pub created_at_ms: i64,
}
