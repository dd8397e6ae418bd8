//! The live side of the host registry: which agents hold a session now, how to push work down
//! their stream, who is waiting for an action's events, and a change signal that wakes the
//! campaign runtime (no polling).
//!
//! The durable side (enrollment, facts, last seen) is in the store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use pitcrew_proto::v1;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

/// What the coordinator sends down one agent's stream.
pub type Outbound = mpsc::Sender<Result<v1::CoordinatorMessage, Status>>;

/// One live session.
#[derive(Clone)]
struct Session {
    /// Distinguishes a session from the one that replaced it, so a late clean-up of an old
    /// stream cannot unregister the new one.
    generation: u64,
    outbound: Outbound,
}

/// Live sessions, action subscriptions and the change signal.
pub struct Registry {
    sessions: Mutex<HashMap<String, Session>>,
    next_generation: AtomicU64,
    action_watchers: Mutex<HashMap<String, broadcast::Sender<v1::ActionEvent>>>,
    changes: watch::Sender<u64>,
    /// Bumped whenever the campaign runtime committed something (for `campaign watch`).
    campaigns: watch::Sender<u64>,
    /// Set when the coordinator shuts down: every session ends so the server can drain.
    closing: watch::Sender<bool>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            sessions: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            action_watchers: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
            closing: watch::channel(false).0,
            campaigns: watch::channel(0).0,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Registers a new session for `host_id`, replacing (and so closing) any older one.
    /// Returns the session's generation.
    pub fn connect(&self, host_id: &str, outbound: Outbound) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        lock(&self.sessions).insert(
            host_id.to_owned(),
            Session {
                generation,
                outbound,
            },
        );
        self.changed();
        generation
    }

    /// Unregisters a session if it is still the current one for the host.
    pub fn disconnect(&self, host_id: &str, generation: u64) -> bool {
        let mut sessions = lock(&self.sessions);
        let current = sessions.get(host_id).map(|s| s.generation) == Some(generation);
        if current {
            sessions.remove(host_id);
        }
        drop(sessions);
        if current {
            self.changed();
        }
        current
    }

    pub fn is_connected(&self, host_id: &str) -> bool {
        lock(&self.sessions).contains_key(host_id)
    }

    /// Sends a message down a host's stream; false when the host is not connected.
    pub async fn send(&self, host_id: &str, message: v1::CoordinatorMessage) -> bool {
        let outbound = lock(&self.sessions)
            .get(host_id)
            .map(|s| s.outbound.clone());
        match outbound {
            Some(outbound) => outbound.send(Ok(message)).await.is_ok(),
            None => false,
        }
    }

    /// Subscribes to the events of one action (progress, log lines, result).
    pub fn watch_action(&self, action_id: &str) -> broadcast::Receiver<v1::ActionEvent> {
        lock(&self.action_watchers)
            .entry(action_id.to_owned())
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// Publishes an action event to its watchers; a final result closes the subscription.
    pub fn publish_action_event(&self, event: v1::ActionEvent) {
        let is_result = matches!(event.event, Some(v1::action_event::Event::Result(_)));
        let mut watchers = lock(&self.action_watchers);
        if let Some(sender) = watchers.get(&event.action_id) {
            let _ = sender.send(event.clone());
        }
        if is_result {
            watchers.remove(&event.action_id);
        }
    }

    /// Signals that something about hosts or actions changed.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Ends every session (at shutdown); agents reconnect with backoff to whichever
    /// coordinator serves next.
    pub fn close_all(&self) {
        let _ = self.closing.send(true);
    }

    /// A receiver that turns true when sessions must end.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Tells campaign watchers that campaign state changed. Separate from [`Registry::changed`],
    /// which wakes the campaign runtime itself.
    pub fn notify_campaigns(&self) {
        self.campaigns.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes whenever campaign state changed.
    pub fn subscribe_campaigns(&self) -> watch::Receiver<u64> {
        self.campaigns.subscribe()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
