//! The live side of the host registry: which agents hold a session now, when each was last
//! heard from, how to push work down their stream without waiting, and who is following an
//! action's events.
//!
//! Liveness lives in memory: every message from an agent stamps its session, a sweeper closes
//! sessions silent past the heartbeat timeout (whatever their reader is doing), and the
//! last-seen times reach the store in one write every few seconds and at disconnect. The
//! durable side (enrollment, facts) is in the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;
use pitcrew_proto::v1;
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::engine::Outbox;

/// What the coordinator sends down one agent's stream. Boxed because a bounded channel
/// allocates its first block of 32 slots up front and keeps it for the session's life: a slot
/// of `Result<CoordinatorMessage, Status>` is over a hundred bytes, so every idle session held
/// about 4 KiB of empty slots; a pointer's slot makes that 256 bytes.
pub type Outbound = mpsc::Sender<Box<v1::CoordinatorMessage>>;

/// How many messages may wait for one agent. An agent that lets this many pile up is not
/// reading: its session is closed rather than anyone waiting on it.
pub const OUTBOUND_CAPACITY: usize = 256;

/// What a session's tasks share with the registry.
#[derive(Debug, Default)]
pub struct SessionShared {
    /// When the agent last sent anything (unix ms).
    last_seen_ms: AtomicI64,
    /// The last value written to the store.
    flushed_ms: AtomicI64,
    /// Set when the registry closes the session (not reading, silent, or replaced).
    close_reason: Mutex<Option<String>>,
    closed: Notify,
}

impl SessionShared {
    /// Stamps the session: the agent is alive.
    pub fn seen(&self, now_ms: i64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// Asks the session to end, saying why (the first reason wins).
    pub fn close(&self, reason: String) {
        self.close_reason.lock().get_or_insert(reason);
        self.closed.notify_one();
    }

    /// Resolves when the session is asked to end; returns why.
    pub async fn closed(&self) -> String {
        self.closed.notified().await;
        self.close_reason
            .lock()
            .clone()
            .unwrap_or_else(|| "closed by the coordinator".into())
    }
}

/// One live session.
struct Session {
    /// Distinguishes a session from the one that replaced it, so a late clean-up of an old
    /// stream cannot unregister the new one.
    generation: u64,
    outbound: Outbound,
    shared: Arc<SessionShared>,
}

/// Who follows one action (`pitcrew do`), and for which host.
struct ActionWatch {
    host_id: String,
    tx: broadcast::Sender<v1::ActionEvent>,
}

/// Live sessions, action subscriptions and the session-change signal.
pub struct Registry {
    sessions: Mutex<HashMap<String, Session>>,
    next_generation: AtomicU64,
    action_watchers: Mutex<HashMap<String, ActionWatch>>,
    /// Bumped when a session starts or ends (for `pitcrew do` following a host).
    sessions_changed: watch::Sender<u64>,
    /// Set when the coordinator shuts down: every session ends so the server can drain.
    closing: watch::Sender<bool>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            sessions: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            action_watchers: Mutex::new(HashMap::new()),
            sessions_changed: watch::channel(0).0,
            closing: watch::channel(false).0,
        }
    }
}

impl Registry {
    /// Registers a new session for `host_id`, replacing (and so closing) any older one.
    /// Returns the session's generation and what its tasks share with the registry.
    pub fn connect(
        &self,
        host_id: &str,
        outbound: Outbound,
        now_ms: i64,
    ) -> (u64, Arc<SessionShared>) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(SessionShared::default());
        shared.seen(now_ms);
        let old = self.sessions.lock().insert(
            host_id.to_owned(),
            Session {
                generation,
                outbound,
                shared: shared.clone(),
            },
        );
        if let Some(old) = old {
            old.shared
                .close("replaced by a newer session of the same host".into());
        }
        self.sessions_changed
            .send_modify(|n| *n = n.wrapping_add(1));
        (generation, shared)
    }

    /// Unregisters a session if it is still the current one for the host.
    pub fn disconnect(&self, host_id: &str, generation: u64) -> bool {
        let mut sessions = self.sessions.lock();
        let current = sessions.get(host_id).map(|s| s.generation) == Some(generation);
        if current {
            sessions.remove(host_id);
        }
        drop(sessions);
        if current {
            self.sessions_changed
                .send_modify(|n| *n = n.wrapping_add(1));
        }
        current
    }

    /// Closes the host's live session, if it has one, saying why.
    pub fn close_session(&self, host_id: &str, reason: &str) {
        if let Some(session) = self.sessions.lock().get(host_id) {
            session.shared.close(reason.to_owned());
        }
    }

    pub fn is_connected(&self, host_id: &str) -> bool {
        self.sessions.lock().contains_key(host_id)
    }

    /// How many sessions are live.
    pub fn connected_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// When the host's live session last heard from it, if it has one.
    pub fn last_seen(&self, host_id: &str) -> Option<i64> {
        self.sessions
            .lock()
            .get(host_id)
            .map(|s| s.shared.last_seen_ms())
    }

    /// Closes every session silent for longer than `timeout_ms`. Run by a sweeper, so the
    /// timeout holds whatever a session's reader is waiting on.
    pub fn close_silent(&self, now_ms: i64, timeout_ms: i64) {
        let sessions = self.sessions.lock();
        for session in sessions.values() {
            if now_ms - session.shared.last_seen_ms() > timeout_ms {
                session.shared.close(format!(
                    "no message for {} s (heartbeat timeout)",
                    timeout_ms / 1000
                ));
            }
        }
    }

    /// Last-seen times that changed since the previous call (for one batched store write).
    pub fn last_seen_changes(&self) -> Vec<(String, i64)> {
        let sessions = self.sessions.lock();
        sessions
            .iter()
            .filter_map(|(host, s)| {
                let seen = s.shared.last_seen_ms();
                let flushed = s.shared.flushed_ms.swap(seen, Ordering::Relaxed);
                (seen != flushed).then(|| (host.clone(), seen))
            })
            .collect()
    }

    /// Queues a message for a host's session without waiting. A session whose queue is full
    /// is closed (its agent is not reading); false when the message was not queued.
    pub fn try_send(&self, host_id: &str, message: v1::CoordinatorMessage) -> bool {
        let sessions = self.sessions.lock();
        let Some(session) = sessions.get(host_id) else {
            return false;
        };
        match session.outbound.try_send(Box::new(message)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(message = "closing a session whose agent is not reading", %host_id);
                session.shared.close(format!(
                    "the agent did not read its messages ({OUTBOUND_CAPACITY} waiting)"
                ));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Subscribes to the events of one action run on `host_id` (progress, log lines, result).
    pub fn watch_action(
        &self,
        action_id: &str,
        host_id: &str,
    ) -> broadcast::Receiver<v1::ActionEvent> {
        self.action_watchers
            .lock()
            .entry(action_id.to_owned())
            .or_insert_with(|| ActionWatch {
                host_id: host_id.to_owned(),
                tx: broadcast::channel(256).0,
            })
            .tx
            .subscribe()
    }

    /// Publishes an action event from `host_id` to its watchers, if the action is followed
    /// and was sent to that host (a host cannot speak for another's actions). A final result
    /// ends the subscription.
    pub fn publish_action_event(&self, host_id: &str, event: v1::ActionEvent) {
        let is_result = matches!(event.event, Some(v1::action_event::Event::Result(_)));
        let mut watchers = self.action_watchers.lock();
        let Some(watch) = watchers.get(&event.action_id) else {
            return;
        };
        if watch.host_id != host_id {
            return;
        }
        let id = event.action_id.clone();
        let _ = watch.tx.send(event);
        if is_result {
            watchers.remove(&id);
        }
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

    /// A receiver that wakes whenever a session starts or ends.
    pub fn subscribe_sessions(&self) -> watch::Receiver<u64> {
        self.sessions_changed.subscribe()
    }
}

impl Outbox for Registry {
    fn send(&self, host_id: &str, message: v1::CoordinatorMessage) -> bool {
        self.try_send(host_id, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> v1::CoordinatorMessage {
        v1::CoordinatorMessage {
            msg: Some(v1::coordinator_message::Msg::Ack(v1::AckResults {
                action_ids: vec![],
            })),
        }
    }

    #[tokio::test]
    async fn a_session_that_does_not_read_is_closed_and_nobody_waits() {
        let registry = Registry::default();
        let (tx, _rx) = mpsc::channel(2);
        let (_, shared) = registry.connect("h", tx, 0);
        assert!(registry.try_send("h", message()));
        assert!(registry.try_send("h", message()));
        // The queue is full: the send returns at once and the session is told to close.
        assert!(!registry.try_send("h", message()));
        let reason = shared.closed().await;
        assert!(reason.contains("did not read"), "{reason}");
    }

    #[tokio::test]
    async fn silent_sessions_are_closed_by_the_sweeper() {
        let registry = Registry::default();
        let (tx, _rx) = mpsc::channel(2);
        let (_, quiet) = registry.connect("quiet", tx.clone(), 0);
        let (_, chatty) = registry.connect("chatty", tx, 0);
        chatty.seen(14_000);
        registry.close_silent(16_000, 15_000);
        assert!(quiet.closed().await.contains("heartbeat timeout"));
        assert!(chatty.close_reason.lock().is_none());
    }

    #[test]
    fn a_late_disconnect_of_a_replaced_session_keeps_the_new_one() {
        let registry = Registry::default();
        let (tx, _rx) = mpsc::channel(2);
        let (old, _) = registry.connect("h", tx.clone(), 0);
        let (new, _) = registry.connect("h", tx, 0);
        assert!(!registry.disconnect("h", old));
        assert!(registry.is_connected("h"));
        assert!(registry.disconnect("h", new));
        assert!(!registry.is_connected("h"));
    }

    #[test]
    fn progress_of_an_action_is_only_taken_from_the_host_it_was_sent_to() {
        let registry = Registry::default();
        let mut rx = registry.watch_action("a1", "h1");
        let event = |text: &str| v1::ActionEvent {
            action_id: "a1".into(),
            event: Some(v1::action_event::Event::Log(text.into())),
        };
        registry.publish_action_event("h2", event("forged"));
        registry.publish_action_event("h1", event("real"));
        let got = rx.try_recv().unwrap();
        assert_eq!(got, event("real"));
        assert!(rx.try_recv().is_err());
    }
}
