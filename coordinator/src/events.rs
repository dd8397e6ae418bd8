//! The event log: each host's log (steps, results, output excerpts) and the audit trail (who
//! did what), appended to the store and broadcast to `pitcrew events --follow`.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::store::{EventRecord, Store, StoreError};

/// Appends events and tells followers.
pub struct EventLog {
    store: Arc<Store>,
    tx: broadcast::Sender<EventRecord>,
}

/// The longest message kept in one event (output excerpts are cut to this, keeping the end).
pub const MAX_EVENT_MESSAGE: usize = 4096;

impl EventLog {
    pub fn new(store: Arc<Store>) -> EventLog {
        EventLog {
            store,
            tx: broadcast::channel(1024).0,
        }
    }

    /// Appends one event; returns it with its id and time filled in.
    pub fn append(&self, mut event: EventRecord) -> Result<EventRecord, StoreError> {
        if event.at_ms == 0 {
            event.at_ms = pitcrew_proto::now_ms();
        }
        if event.message.len() > MAX_EVENT_MESSAGE {
            let mut cut = event.message.len() - MAX_EVENT_MESSAGE;
            while !event.message.is_char_boundary(cut) {
                cut += 1;
            }
            event.message = format!("…{}", &event.message[cut..]);
        }
        event.id = self.store.append_event(&event)?;
        let _ = self.tx.send(event.clone());
        Ok(event)
    }

    /// A host log line.
    pub fn host(
        &self,
        host_id: &str,
        campaign_id: &str,
        step: &str,
        result: &str,
        message: &str,
    ) -> Result<EventRecord, StoreError> {
        self.append(EventRecord {
            kind: "host".into(),
            host_id: host_id.into(),
            campaign_id: campaign_id.into(),
            step: step.into(),
            result: result.into(),
            message: message.into(),
            ..Default::default()
        })
    }

    /// An audit record: `actor` did `message`.
    pub fn audit(
        &self,
        actor: &str,
        host_id: &str,
        campaign_id: &str,
        message: &str,
    ) -> Result<EventRecord, StoreError> {
        self.append(EventRecord {
            kind: "audit".into(),
            host_id: host_id.into(),
            campaign_id: campaign_id.into(),
            message: message.into(),
            actor: actor.into(),
            ..Default::default()
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.tx.subscribe()
    }
}
