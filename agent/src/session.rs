//! The agent's one long-lived mTLS session: hello with facts and unacknowledged results,
//! heartbeats, facts when they change, and actions pushed by the coordinator (nothing polls).
//! When the coordinator is away the agent reconnects with exponential backoff and jitter,
//! trying every configured coordinator address in turn.
//!
//! The loop knows the action side only through [`ActionRunner`] and takes its credentials and
//! facts from a [`SessionCtx`]: the agent plugs in its [`Executor`], its state dir and this
//! host's facts; the fleet load generator (`pitcrew-tests`) plugs in simulated actions and
//! credentials held in memory, so that what it measures is this very code.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pitcrew_proto::tls;
use pitcrew_proto::v1::{
    self, AgentMessage, agent_message::Msg, agent_session_client::AgentSessionClient,
    coordinator_message,
};
use tokio::sync::{mpsc, watch};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The shutdown signal fired: nothing went wrong.
    Shutdown,
    /// A standby coordinator answered: the leader is at this address (empty while none
    /// leads). Not an outage: the agent connects there next without backing off.
    Standby(String),
    /// Anything else; the text says what, and the loop reconnects.
    Lost(String),
}

/// How long the agent waits before following a standby to the leader (a little jitter on top,
/// so a fleet does not arrive at the leader in the same millisecond).
const FOLLOW_LEADER: Duration = Duration::from_millis(50);
/// How long the agent waits before trying the next of several coordinators after one failed
/// (a little jitter on top); a whole round failing backs off as with one coordinator.
const NEXT_ADDRESS: Duration = Duration::from_millis(100);
/// The pause between rounds of the coordinators while standbys answer that none leads (an
/// election takes about a lease: seconds).
const ELECTION_ROUND: Duration = Duration::from_millis(250);

/// What the session needs from the action side. The agent's [`Executor`] runs real actions,
/// journaled; a simulated host answers them without running anything.
pub trait ActionRunner: Send + Sync + 'static {
    /// Final results the coordinator has not acknowledged yet, sent again in every hello.
    fn unacknowledged(&self) -> Vec<v1::ActionResult>;
    /// Ids of the actions running now, told to the coordinator in the hello.
    fn running(&self) -> Vec<String>;
    /// Runs one request (or answers a repeated id) and returns its final result; progress
    /// goes to `events`. It must outlive the session that asked: the result of an action whose
    /// session was lost is reported later as unacknowledged.
    fn execute(
        self: Arc<Self>,
        request: v1::ActionRequest,
        events: mpsc::Sender<v1::ActionEvent>,
    ) -> impl Future<Output = v1::ActionResult> + Send;
    /// Stops a running action (its outcome becomes CANCELLED); unknown ids are ignored.
    fn cancel(&self, action_id: &str);
    /// Forgets results the coordinator has stored.
    fn acknowledge(&self, ids: &[String]);
}

impl ActionRunner for Executor {
    fn unacknowledged(&self) -> Vec<v1::ActionResult> {
        Executor::unacknowledged(self)
    }

    fn running(&self) -> Vec<String> {
        Executor::running(self)
    }

    fn execute(
        self: Arc<Self>,
        request: v1::ActionRequest,
        events: mpsc::Sender<v1::ActionEvent>,
    ) -> impl Future<Output = v1::ActionResult> + Send {
        Executor::execute(self, request, events)
    }

    fn cancel(&self, action_id: &str) {
        Executor::cancel(self, action_id);
    }

    fn acknowledge(&self, ids: &[String]) {
        Executor::acknowledge(self, ids);
    }
}

/// Where the session's mTLS identity comes from.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// The agent's state dir: read again for every connection (so a renewed certificate is
    /// used from the next one on) and renewed at 70 % of the certificate's lifetime.
    StateDir(std::path::PathBuf),
    /// Held in memory by a simulated host. Never renewed: such a host lives far shorter than a
    /// certificate.
    InMemory(Arc<rustls::ClientConfig>),
}

/// Where the facts sent at hello (and on change) come from.
#[derive(Debug, Clone)]
pub enum FactsSource {
    /// Read from this machine (sysinfo, /proc) at every hello and re-read every 10 s; the
    /// pending package updates come from their own background count (see `updates`).
    Host {
        config: Box<AgentConfig>,
        pending_updates: watch::Receiver<Option<u32>>,
    },
    /// Fixed facts of a simulated host: sent at hello, never changing.
    Fixed(Box<v1::Facts>),
}

/// Told about every session attempt: the agent tells systemd, the load generator counts.
pub trait SessionObserver: Send + Sync {
    /// The coordinator accepted a session on `address`.
    fn connected(&self, _address: &str) {}
    /// One attempt on `address` ended; `connected` says whether it got as far as a session.
    fn ended(&self, _address: &str, _connected: bool, _ended: &Ended) {}
}

/// The agent's observer: tells systemd it is ready after the first attempt, whether it
/// connected or will retry, and shows the coordinator in the unit's status.
#[derive(Debug, Default)]
pub struct SystemdNotifier {
    notified: AtomicBool,
}

impl SystemdNotifier {
    fn ready_once(&self) {
        if !self.notified.swap(true, Ordering::Relaxed) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        }
    }
}

impl SessionObserver for SystemdNotifier {
    fn connected(&self, address: &str) {
        self.ready_once();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
            "connected to {address}"
        ))]);
    }

    fn ended(&self, _address: &str, _connected: bool, _ended: &Ended) {
        self.ready_once();
    }
}

/// Everything one host's session loop needs.
pub struct SessionCtx<R> {
    /// Every coordinator address ("https://host:port"), tried in turn.
    pub coordinators: Vec<String>,
    /// Who this host is, as enrolled.
    pub identity: Enrolled,
    /// How often to send a heartbeat (the coordinator may ask for more often, never less).
    pub heartbeat: Duration,
    pub credentials: Credentials,
    pub facts: FactsSource,
    pub runner: Arc<R>,
    pub observer: Arc<dyn SessionObserver>,
}

impl SessionCtx<Executor> {
    /// The real agent's session: credentials from the state dir, facts of this machine,
    /// actions run by `executor`, systemd told.
    pub fn for_agent(
        config: AgentConfig,
        identity: Enrolled,
        executor: Arc<Executor>,
    ) -> SessionCtx<Executor> {
        SessionCtx {
            coordinators: config.coordinators.clone(),
            identity,
            heartbeat: Duration::from_secs(config.heartbeat_seconds),
            credentials: Credentials::StateDir(config.state_dir.clone()),
            facts: FactsSource::Host {
                config: Box::new(config),
                pending_updates: crate::updates::UpdatesProbe::host().spawn(),
            },
            runner: executor,
            observer: Arc::new(SystemdNotifier::default()),
        }
    }
}

impl<R> SessionCtx<R> {
    fn collect_facts(&self, labels: &std::collections::HashMap<String, String>) -> v1::Facts {
        match &self.facts {
            FactsSource::Host {
                config,
                pending_updates,
            } => {
                let mut facts =
                    facts::collect(config, &self.identity.host_id, &self.identity.role, labels);
                facts.pending_updates = *pending_updates.borrow();
                facts
            }
            FactsSource::Fixed(facts) => (**facts).clone(),
        }
    }

    /// The units held down now (a directory listing: cheap enough after every action); `None`
    /// for a simulated host.
    fn held_units(&self) -> Option<Vec<v1::HeldUnit>> {
        match &self.facts {
            FactsSource::Host { config, .. } => Some(crate::holds::Holds::of(config).list()),
            FactsSource::Fixed(_) => None,
        }
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, tls::TlsError> {
        match &self.credentials {
            Credentials::StateDir(state_dir) => crate::enroll::session_tls(state_dir).map(Arc::new),
            Credentials::InMemory(config) => Ok(config.clone()),
        }
    }

    fn renewal_due(&self) -> bool {
        match &self.credentials {
            Credentials::StateDir(state_dir) => crate::enroll::renewal_due(state_dir),
            Credentials::InMemory(_) => false,
        }
    }
}

/// Runs sessions until `shutdown` fires.
pub async fn run<R: ActionRunner>(
    ctx: SessionCtx<R>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if ctx.coordinators.is_empty() {
        // Nothing to connect to; the agent refuses to start like this, so only a caller's
        // mistake gets here.
        tracing::error!(message = "no coordinator address to connect to");
        return;
    }
    let mut backoff = Backoff::default();
    let mut attempt: usize = 0;
    // Where a standby said the leader is: tried next, before the configured list goes on.
    let mut leader: Option<String> = None;
    // Attempts that failed since the last session or the last backoff: the agent backs off
    // only once every configured coordinator has failed in turn, so that losing the leader
    // of several costs a quick round of the others, not a growing wait at each.
    let mut failed_in_round: usize = 0;
    // Whether a standby answered in this round: the coordinators are up and choosing a leader,
    // so the next round comes soon instead of after a growing backoff.
    let mut standby_in_round = false;
    // The address the last attempt lost or could not reach: told to standbys, which hold the
    // call until a leader other than that one is known, rather than name it again.
    let mut unreachable = String::new();
    // Events of running actions outlive any one connection: results are journaled anyway and
    // re-sent in the next hello, so a lost event here is never a lost result.
    let (events_tx, mut events_rx) = mpsc::channel::<v1::ActionEvent>(1024);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let following = leader.is_some();
        let address = match leader.take() {
            Some(address) => address,
            None => {
                attempt += 1;
                ctx.coordinators[(attempt - 1) % ctx.coordinators.len()].clone()
            }
        };
        let started = tokio::time::Instant::now();
        let mut connected = false;
        let ended = session(
            &ctx,
            &address,
            &unreachable,
            &events_tx,
            &mut events_rx,
            &mut shutdown,
            &mut connected,
        )
        .await;
        ctx.observer.ended(&address, connected, &ended);
        if connected {
            failed_in_round = 0;
            standby_in_round = false;
            unreachable.clear();
        }
        match ended {
            Ended::Shutdown => return,
            Ended::Standby(named) => {
                standby_in_round = true;
                // A standby that names itself took the lease while holding this call: it
                // leads now, on a new connection. Naming itself again is stale news.
                let stale = named == address && following;
                let delay = if named.is_empty() || stale {
                    // None leads yet (or the standby's news is stale): the next address.
                    failed_in_round += 1;
                    next_try(
                        &mut failed_in_round,
                        &mut standby_in_round,
                        ctx.coordinators.len(),
                        &mut backoff,
                    )
                } else {
                    tracing::info!(message = "following the leader", standby = %address, leader = %named);
                    leader = Some(named);
                    FOLLOW_LEADER + Duration::from_millis(rand::random_range(0..=50))
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Ended::Lost(reason) => {
                if started.elapsed() >= STABLE_SESSION {
                    backoff.reset();
                }
                unreachable.clone_from(&address);
                failed_in_round += 1;
                let delay = next_try(
                    &mut failed_in_round,
                    &mut standby_in_round,
                    ctx.coordinators.len(),
                    &mut backoff,
                );
                tracing::warn!(message = "session ended; reconnecting", coordinator = %address, %reason, delay_ms = delay.as_millis() as u64);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// How long to wait before the next attempt after `failed` attempts in this round: the next
/// coordinator soon; after a whole round, a short pause while standbys are choosing a leader,
/// else the growing backoff.
fn next_try(
    failed: &mut usize,
    standby_seen: &mut bool,
    coordinators: usize,
    backoff: &mut Backoff,
) -> Duration {
    let jitter = |ms: u64| Duration::from_millis(rand::random_range(0..=ms));
    if *failed < coordinators {
        return NEXT_ADDRESS + jitter(100);
    }
    *failed = 0;
    if std::mem::take(standby_seen) {
        return ELECTION_ROUND + jitter(250);
    }
    backoff.next_delay()
}

/// One session on `address`, from connecting to its end. Sets `connected` once the
/// coordinator accepted the stream.
async fn session<R: ActionRunner>(
    ctx: &SessionCtx<R>,
    address: &str,
    unreachable: &str,
    events_tx: &mpsc::Sender<v1::ActionEvent>,
    events_rx: &mut mpsc::Receiver<v1::ActionEvent>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    connected: &mut bool,
) -> Ended {
    let tls_config = match ctx.tls() {
        Ok(c) => c,
        Err(error) => return Ended::Lost(format!("cannot load credentials: {error}")),
    };
    let channel = match tls::connect(address, tls_config).await {
        Ok(channel) => channel,
        Err(error) => return Ended::Lost(error.to_string()),
    };
    // Renew before the certificate gets old (at 70 % of its life); the next attempt then
    // connects with the new one.
    if let Credentials::StateDir(state_dir) = &ctx.credentials {
        match crate::enroll::renew_if_due(state_dir, channel.clone()).await {
            Ok(true) => {
                tracing::info!(message = "host certificate renewed");
                return Ended::Lost("reconnecting with the renewed certificate".into());
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(message = "certificate renewal failed; will retry", %error)
            }
        }
    }
    let mut client = AgentSessionClient::new(channel)
        .max_decoding_message_size(pitcrew_proto::MAX_MESSAGE_BYTES);

    let identity = &ctx.identity;
    let runner = &ctx.runner;
    let labels = identity.labels.clone().into_iter().collect();
    let mut current_facts = ctx.collect_facts(&labels);
    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(256);
    let hello = v1::Hello {
        facts: Some(current_facts.clone()),
        agent_version: pitcrew_proto::VERSION.to_owned(),
        unacknowledged: runner.unacknowledged(),
        running: runner.running(),
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
    let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
    if let Ok(value) = unreachable.parse() {
        request
            .metadata_mut()
            .insert(pitcrew_proto::UNREACHABLE_LEADER_METADATA, value);
    }
    let mut inbound = match client.connect(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            if let Some(leader) = pitcrew_proto::standby_leader(&status) {
                return Ended::Standby(leader);
            }
            return Ended::Lost(format!(
                "the coordinator refused the session: {}",
                status.message()
            ));
        }
    };
    tracing::info!(message = "connected to the coordinator", coordinator = %address, host_id = %identity.host_id);
    *connected = true;
    ctx.observer.connected(address);

    let mut heartbeat = tokio::time::interval(ctx.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut facts_tick = tokio::time::interval(FACTS_INTERVAL);
    facts_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Simulated hosts (fixed facts, credentials in memory) have nothing to re-read.
    let rereads = matches!(ctx.facts, FactsSource::Host { .. })
        || matches!(ctx.credentials, Credentials::StateDir(_));
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
                        if welcome.heartbeat_seconds > 0 && Duration::from_secs(u64::from(welcome.heartbeat_seconds)) < ctx.heartbeat =>
                    {
                        heartbeat = tokio::time::interval(Duration::from_secs(u64::from(welcome.heartbeat_seconds)));
                    }
                    Some(coordinator_message::Msg::Welcome(_)) => {}
                    Some(coordinator_message::Msg::Action(request)) => {
                        let runner = runner.clone();
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
                            let result = runner.execute(request, progress_tx).await;
                            let _ = forward.await;
                            let _ = events.send(v1::ActionEvent {
                                action_id: result.action_id.clone(),
                                event: Some(v1::action_event::Event::Result(result)),
                            }).await;
                        });
                    }
                    Some(coordinator_message::Msg::Cancel(cancel)) => {
                        runner.cancel(&cancel.action_id);
                    }
                    Some(coordinator_message::Msg::Ack(ack)) => {
                        runner.acknowledge(&ack.action_ids);
                    }
                    None => {}
                }
            }
            Some(event) = events_rx.recv() => {
                // An action may have held or released a unit: the coordinator hears of it
                // before the result, so it never acts on holds that are already gone.
                if matches!(event.event, Some(v1::action_event::Event::Result(_)))
                    && let Some(held) = ctx.held_units()
                    && held != current_facts.held_units
                {
                    current_facts.held_units = held;
                    if out_tx.send(AgentMessage { msg: Some(Msg::Facts(current_facts.clone())) }).await.is_err() {
                        return Ended::Lost("the session's send side closed".into());
                    }
                }
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
            _ = facts_tick.tick(), if rereads => {
                if ctx.renewal_due() {
                    return Ended::Lost("the host certificate is due for renewal".into());
                }
                let fresh = ctx.collect_facts(&labels);
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
    fn a_round_of_several_coordinators_is_quick_and_only_a_failed_round_backs_off() {
        let mut backoff = Backoff::default();
        let (mut failed, mut standby) = (0, false);
        let mut attempt = |standby_answered: bool, backoff: &mut Backoff| {
            failed += 1;
            standby |= standby_answered;
            next_try(&mut failed, &mut standby, 3, backoff)
        };
        // The first two of three coordinators fail: the next one at once.
        assert!(attempt(false, &mut backoff) <= Duration::from_millis(200));
        assert!(attempt(false, &mut backoff) <= Duration::from_millis(200));
        // The round ends while standbys answer (an election): a short pause, no growth.
        let pause = attempt(true, &mut backoff);
        assert!(
            pause >= ELECTION_ROUND && pause <= ELECTION_ROUND * 2,
            "{pause:?}"
        );
        assert_eq!(backoff.next, MIN_BACKOFF);
        // A round where nothing answered backs off as with one coordinator, and grows.
        attempt(false, &mut backoff);
        attempt(false, &mut backoff);
        attempt(false, &mut backoff);
        assert_eq!(backoff.next, MIN_BACKOFF * 2);
    }

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
