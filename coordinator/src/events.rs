//! The event log: each host's log (steps, results, output excerpts) and the audit trail (who
//! did what), appended through the store's writer and broadcast to `pitcrew events --follow`
//! once durable.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::store::{EventRecord, Store};

/// Appends events and tells followers.
pub struct EventLog {
    store: Arc<Store>,
    tx: broadcast::Sender<EventRecord>,
}

/// The longest message kept in one event (output excerpts are cut to this, keeping the end).
pub const MAX_EVENT_MESSAGE: usize = 4096;

/// Cuts a message to [`MAX_EVENT_MESSAGE`] bytes, keeping its end (where errors are).
pub(crate) fn bounded(message: String) -> String {
    if message.len() <= MAX_EVENT_MESSAGE {
        return message;
    }
    let mut cut = message.len() - MAX_EVENT_MESSAGE;
    while !message.is_char_boundary(cut) {
        cut += 1;
    }
    format!("…{}", &message[cut..])
}

impl EventLog {
    pub fn new(store: Arc<Store>) -> EventLog {
        EventLog {
            store,
            tx: broadcast::channel(4096).0,
        }
    }

    /// Appends one event without waiting; followers see it once it is durable.
    pub fn append(&self, mut event: EventRecord) {
        if event.at_ms == 0 {
            event.at_ms = pitcrew_proto::now_ms();
        }
        event.message = bounded(event.message);
        let tx = self.tx.clone();
        let submitted = self.store.append_event(event, move |stored| match stored {
            Ok(event) => {
                let _ = tx.send(event);
            }
            Err(error) => tracing::error!(message = "cannot write the event log", %error),
        });
        if let Err(error) = submitted {
            tracing::error!(message = "cannot write the event log", %error);
        }
    }

    /// Tells followers about an event another writer (the engine's turn) made durable.
    pub fn publish(&self, event: EventRecord) {
        let _ = self.tx.send(event);
    }

    /// A host log line.
    pub fn host(&self, host_id: &str, campaign_id: &str, step: &str, result: &str, message: &str) {
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
    pub fn audit(&self, actor: &str, host_id: &str, campaign_id: &str, message: &str) {
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
