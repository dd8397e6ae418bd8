//! The agent's one long-lived mTLS session: hello with facts and unacknowledged results,
//! heartbeats, facts when they change, and actions pushed by the coordinator (nothing polls).
//! When the coordinator is away the agent reconnects with exponential backoff and jitter,
//! trying every configured coordinator address in turn.

use std::sync::Arc;
use std::time::Duration;

use pitcrew_proto::tls;
use pitcrew_proto::v1::{
    self, AgentMessage, agent_message::Msg, agent_session_client::AgentSessionClient,
    coordinator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::actions::Executor;
use crate::config::{AgentConfig, Enrolled};
use crate::facts;

/// First retry delay; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// How often facts are re-read to see whether they changed.
const FACTS_INTERVAL: Duration = Duration::from_secs(10);

/// Exponential backoff with full jitter: a fleet that lost its coordinator does not come back
/// all in the same second.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: MIN_BACKOFF }
    }
}

impl Backoff {
    /// The delay before the next attempt (between half and all of the current step).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        let half = step / 2;
        half + Duration::from_millis(rand::random_range(0..=half.as_millis() as u64))
    }

    pub fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }
}

/// Why one session ended.
#[derive(Debug)]
enum Ended {
    Shutdown,
    Lost(String),
}

/// Runs sessions until `shutdown` fires. Tells systemd it is ready after the first attempt,
/// whether it connected or will retry.
pub async fn run(
    config: AgentConfig,
    identity: Enrolled,
    executor: Arc<Executor>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    let mut notified = false;
    let mut attempt: usize = 0;
    // Events of running actions outlive any one connection: results are journaled anyway and
    // re-sent in the next hello, so a lost event here is never a lost result.
    let (events_tx, mut events_rx) = mpsc::channel::<v1::ActionEvent>(1024);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let address = config.coordinators[attempt % config.coordinators.len()].clone();
        attempt += 1;
        let started = tokio::time::Instant::now();
        let ended = session(
            &config,
            &identity,
            &executor,
            &address,
            &events_tx,
            &mut events_rx,
            &mut shutdown,
            &mut notified,
        )
        .await;
        if !notified {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            notified = true;
        }
        match ended {
            Ended::Shutdown => return,
            Ended::Lost(reason) => {
                if started.elapsed() >= STABLE_SESSION {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(message = "session ended; reconnecting", coordinator = %address, %reason, delay_ms = delay.as_millis() as u64);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    config: &AgentConfig,
    identity: &Enrolled,
    executor: &Arc<Executor>,
    address: &str,
    events_tx: &mpsc::Sender<v1::ActionEvent>,
    events_rx: &mut mpsc::Receiver<v1::ActionEvent>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    notified: &mut bool,
) -> Ended {
    let tls_config = match crate::enroll::session_tls(&config.state_dir) {
        Ok(c) => Arc::new(c),
        Err(error) => return Ended::Lost(format!("cannot load credentials: {error}")),
    };
    let channel = match tls::connect(address, tls_config).await {
        Ok(channel) => channel,
        Err(error) => return Ended::Lost(error.to_string()),
    };
    // Renew before the certificate gets old (at 70 % of its life); the next attempt then
    // connects with the new one.
    match crate::enroll::renew_if_due(config, channel.clone()).await {
        Ok(true) => {
            tracing::info!(message = "host certificate renewed");
            return Ended::Lost("reconnecting with the renewed certificate".into());
        }
        Ok(false) => {}
        Err(error) => tracing::warn!(message = "certificate renewal failed; will retry", %error),
    }
    let mut client = AgentSessionClient::new(channel)
        .max_decoding_message_size(pitcrew_proto::MAX_MESSAGE_BYTES);

    let labels = identity.labels.clone().into_iter().collect();
    let mut current_facts = facts::collect(config, &identity.host_id, &identity.role, &labels);
    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(256);
    let hello = v1::Hello {
        facts: Some(current_facts.clone()),
        agent_version: pitcrew_proto::VERSION.to_owned(),
        unacknowledged: executor.unacknowledged(),
        running: executor.running(),
    };
    if out_tx
        .send(AgentMessage {
            msg: Some(Msg::Hello(hello)),
        })
        .await
        .is_err()
    {
        return Ended::Lost("internal channel closed".into());
    }
    let mut inbound = match client.connect(ReceiverStream::new(out_rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return Ended::Lost(format!(
                "the coordinator refused the session: {}",
                status.message()
            ));
        }
    };
    tracing::info!(message = "connected to the coordinator", coordinator = %address, host_id = %identity.host_id);
    if !*notified {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        *notified = true;
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
        "connected to {address}"
    ))]);

    let mut heartbeat = tokio::time::interval(Duration::from_secs(config.heartbeat_seconds));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut facts_tick = tokio::time::interval(FACTS_INTERVAL);
    facts_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ended::Shutdown,
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => return Ended::Lost("the coordinator closed the session".into()),
                    Err(status) => return Ended::Lost(format!("session failed: {}", status.message())),
                };
                match message.msg {
                    // The coordinator may ask for more frequent heartbeats, never fewer.
                    Some(coordinator_message::Msg::Welcome(welcome))
                        if welcome.heartbeat_seconds > 0 && u64::from(welcome.heartbeat_seconds) < config.heartbeat_seconds =>
                    {
                        heartbeat = tokio::time::interval(Duration::from_secs(u64::from(welcome.heartbeat_seconds)));
                    }
                    Some(coordinator_message::Msg::Welcome(_)) => {}
                    Some(coordinator_message::Msg::Action(request)) => {
                        let executor = executor.clone();
                        let events = events_tx.clone();
                        tokio::spawn(async move {
                            let (progress_tx, mut progress_rx) = mpsc::channel::<v1::ActionEvent>(256);
                            let forward_to = events.clone();
                            let forward = tokio::spawn(async move {
                                while let Some(event) = progress_rx.recv().await {
                                    // Progress is best effort: never block the action on it.
                                    let _ = forward_to.try_send(event);
                                }
                            });
                            let result = executor.execute(request, progress_tx).await;
                            let _ = forward.await;
                            let _ = events.send(v1::ActionEvent {
                                action_id: result.action_id.clone(),
                                event: Some(v1::action_event::Event::Result(result)),
                            }).await;
                        });
                    }
                    Some(coordinator_message::Msg::Cancel(cancel)) => {
                        executor.cancel(&cancel.action_id);
                    }
                    Some(coordinator_message::Msg::Ack(ack)) => {
                        executor.acknowledge(&ack.action_ids);
                    }
                    None => {}
                }
            }
            Some(event) = events_rx.recv() => {
                if out_tx.send(AgentMessage { msg: Some(Msg::Event(event)) }).await.is_err() {
                    return Ended::Lost("the session's send side closed".into());
                }
            }
            _ = heartbeat.tick() => {
                seq += 1;
                if out_tx.send(AgentMessage { msg: Some(Msg::Heartbeat(v1::Heartbeat { seq })) }).await.is_err() {
                    return Ended::Lost("the session's send side closed".into());
                }
            }
            _ = facts_tick.tick() => {
                if crate::enroll::renewal_due(&config.state_dir) {
                    return Ended::Lost("the host certificate is due for renewal".into());
                }
                let fresh = facts::collect(config, &identity.host_id, &identity.role, &labels);
                if facts::significant(&fresh) != facts::significant(&current_facts) {
                    current_facts = fresh.clone();
                    if out_tx.send(AgentMessage { msg: Some(Msg::Facts(fresh)) }).await.is_err() {
                        return Ended::Lost("the session's send side closed".into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut backoff = Backoff::default();
        let mut previous_cap = Duration::ZERO;
        for _ in 0..20 {
            let cap = backoff.next;
            let delay = backoff.next_delay();
            assert!(
                delay >= cap / 2 && delay <= cap,
                "{delay:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
            assert!(cap >= previous_cap);
            previous_cap = cap;
        }
        assert_eq!(previous_cap, MAX_BACKOFF);
        backoff.reset();
        assert!(backoff.next_delay() <= MIN_BACKOFF);
    }
}
