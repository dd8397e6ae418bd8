//! The event log as stored: each host's log lines and the audit trail, newest last.

/// One entry of the event log: a host's log line or an audit record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventRecord {
    pub id: i64,
    pub at_ms: i64,
    /// "host" or "audit".
    pub kind: String,
    pub host_id: String,
    pub campaign_id: String,
    pub step: String,
    pub result: String,
    pub message: String,
    pub actor: String,
    /// The host's enrolled name, filled in when read (not stored twice).
    pub hostname: String,
}

/// Which events to list: the newest `limit` matching ones before `before_id` (0: from the
/// newest), returned oldest first. A limit of 0 means no limit.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub host_id: Option<String>,
    pub campaign_id: Option<String>,
    pub after_id: i64,
    pub before_id: i64,
    pub limit: u32,
}

impl EventFilter {
    /// Whether a live event belongs to this filter (for following).
    pub fn matches(&self, event: &EventRecord) -> bool {
        self.host_id.as_ref().is_none_or(|h| *h == event.host_id)
            && self
                .campaign_id
                .as_ref()
                .is_none_or(|id| *id == event.campaign_id)
    }
}
