//! A fleet load generator: thousands of simulated agents in one process, each a real client of
//! a real coordinator over real mTLS on loopback.
//!
//! Every simulated host enrolls over `Enrollment.Enroll` with a join token, its own freshly made
//! key and CSR and the CA pinned by fingerprint (the agent's own [`enroll::request_certificate`]),
//! then runs the agent's own session loop ([`session::run`]): hello, welcome, heartbeats,
//! actions, cancels, acknowledgements, backoff and reconnects are the agent's code. Only two
//! things are simulated: running an action (answered at once, or after a set delay, with
//! SUCCEEDED, for every kind) and the facts (this machine's facts read once, then given each
//! host its own id, hostname, boot id, role and labels), because reading /proc ten thousand
//! times every ten seconds would measure the load generator, not the coordinator.
//!
//! Counters say what happened: sessions open now, sessions lost (ended other than by our own
//! shutdown), attempts that never got a session, actions answered. [`admin`] and
//! [`run_campaign`] drive campaigns over the Admin API with the operator certificate.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use pitcrew_agent::config::{AgentConfig, Enrolled, HostConfig};
use pitcrew_agent::enroll::{self, EnrollAsk, EnrollError};
use pitcrew_agent::facts;
use pitcrew_agent::session::{
    self, ActionRunner, Credentials, Ended, FactsSource, SessionCtx, SessionObserver,
};
use pitcrew_proto::policy::LocalPolicy;
use pitcrew_proto::{now_ms, tls, v1};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::Coordinator;

/// How many times a simulated host tries to enroll while the coordinator is unreachable or
/// overloaded, before it is counted as failed.
const ENROLL_ATTEMPTS: u32 = 5;

/// How a simulated fleet behaves.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Coordinator addresses, tried in turn as the agent does.
    pub coordinators: Vec<String>,
    /// The fleet CA's fingerprint, pinned for enrollment.
    pub ca_fingerprint: String,
    /// Heartbeat interval the hosts start with (the coordinator may ask for more often): the
    /// agent's default.
    pub heartbeat: Duration,
    /// How long a simulated action takes before it answers; zero answers at once.
    pub action_delay: Duration,
    /// Enrollments, and first connections when sessions start, in flight at once: a fleet
    /// brought up by automation, not ten thousand hosts in the same millisecond.
    pub concurrency: usize,
    /// The local policy the hosts report in their facts (the planner predicts refusals from
    /// it). The simulated hosts answer every action with success whatever it says.
    pub policy: LocalPolicy,
}

impl FleetOptions {
    /// Options for `coordinator` from the test harness: the agent's default heartbeat, no
    /// action delay, 64 at a time, a policy allowing `exec /bin/true`.
    pub fn for_coordinator(coordinator: &Coordinator) -> FleetOptions {
        FleetOptions {
            coordinators: vec![coordinator.address()],
            ca_fingerprint: format!("sha256:{}", coordinator.fingerprint),
            heartbeat: Duration::from_secs(5),
            action_delay: Duration::ZERO,
            concurrency: 64,
            policy: LocalPolicy {
                exec: vec![vec!["/bin/true".to_owned()].into()],
                ..LocalPolicy::default()
            },
        }
    }
}

/// What happened so far, counted across every simulated host.
#[derive(Debug, Default)]
struct Counters {
    enrolled: AtomicU64,
    enroll_failures: AtomicU64,
    enroll_retries: AtomicU64,
    connected_now: AtomicU64,
    sessions_opened: AtomicU64,
    sessions_lost: AtomicU64,
    connect_failures: AtomicU64,
    actions_started: AtomicU64,
    actions_answered: AtomicU64,
    actions_repeated: AtomicU64,
    /// The most recent reason a session was lost or an attempt failed, for a failure message.
    last_problem: Mutex<Option<String>>,
}

impl Counters {
    fn problem(&self, text: String) {
        *lock(&self.last_problem) = Some(text);
    }
}

/// A snapshot of the fleet's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounters {
    /// Hosts enrolled so far.
    pub enrolled: u64,
    /// Hosts that could not enroll.
    pub enroll_failures: u64,
    /// Enrollment attempts tried again after transport trouble (a busy coordinator).
    pub enroll_retries: u64,
    /// Sessions open now.
    pub connected_now: u64,
    /// Sessions the coordinator accepted, reconnections included.
    pub sessions_opened: u64,
    /// Sessions that ended other than by the fleet's own shutdown.
    pub sessions_lost: u64,
    /// Attempts that ended before the coordinator accepted a session (refused, unreachable).
    pub connect_failures: u64,
    /// Actions received for the first time and started.
    pub actions_started: u64,
    /// Actions run (answered for the first time).
    pub actions_answered: u64,
    /// Repeated action ids answered from memory, as the agent answers them from its journal.
    pub actions_repeated: u64,
    /// The latest reason a session was lost or an attempt failed.
    pub last_problem: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here can be left half-changed by a panic: the data stays usable.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one enrollment round did.
#[derive(Debug, Clone)]
pub struct EnrollReport {
    pub enrolled: usize,
    pub failed: usize,
    /// Wall time of the whole round.
    pub elapsed: Duration,
    /// The first error, when some host failed.
    pub first_error: Option<String>,
}

/// One simulated host, enrolled.
struct SimHost {
    identity: Enrolled,
    hostname: String,
    tls: Arc<rustls::ClientConfig>,
    boot_id: String,
}

/// A simulated fleet: enroll hosts, run their sessions, read the counters, shut down.
pub struct SimFleet {
    options: FleetOptions,
    /// This machine's facts, read once; each host gets a copy with its own identity.
    base_facts: v1::Facts,
    hosts: Vec<Arc<SimHost>>,
    /// How many of `hosts` have their session loop running.
    started: usize,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    /// One task per [`SimFleet::start`]: it starts sessions, then waits for them to end.
    launchers: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for SimFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFleet")
            .field("hosts", &self.hosts.len())
            .field("started", &self.started)
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl SimFleet {
    /// An empty fleet. Reads this machine's facts once.
    pub fn new(options: FleetOptions) -> SimFleet {
        let config = AgentConfig {
            coordinators: options.coordinators.clone(),
            ca_fingerprint: Some(options.ca_fingerprint.clone()),
            join_token: None,
            state_dir: std::path::PathBuf::new(),
            heartbeat_seconds: options.heartbeat.as_secs().max(1),
            host: HostConfig::default(),
            policy: options.policy.clone(),
        };
        let base_facts = facts::collect(&config, "", "", &HashMap::new());
        let (shutdown, _) = watch::channel(false);
        SimFleet {
            options,
            base_facts,
            hosts: Vec::new(),
            started: 0,
            counters: Arc::new(Counters::default()),
            shutdown,
            launchers: Vec::new(),
        }
    }

    /// Enrolls `count` new hosts with `token`, `options.concurrency` at a time, giving up on
    /// those not enrolled `within`. Hosts are named `sim-00001`, `sim-00002`, ... in the order
    /// they were asked for, each with a fresh 32-hex machine id; role and labels come from the
    /// token. Hosts that fail are counted and left out.
    pub async fn enroll(&mut self, count: usize, token: &str, within: Duration) -> EnrollReport {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + within;
        let permits = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let first_index =
            self.hosts.len() + self.counters.enroll_failures.load(Ordering::Relaxed) as usize;
        let mut done: Vec<(usize, SimHost)> = Vec::with_capacity(count);
        let mut failed = 0;
        let mut first_error = None;
        let mut record = |joined: Result<(usize, Result<SimHost, EnrollError>), _>| match joined {
            Ok((i, Ok(host))) => done.push((i, host)),
            Ok((_, Err(error))) => {
                failed += 1;
                first_error.get_or_insert_with(|| error.to_string());
            }
            Err(error) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("enrollment task failed: {error}"));
            }
        };
        let mut asked = 0;
        while asked < count {
            // Collect what finished while waiting for a turn, so nothing piles up.
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            };
            while let Some(joined) = tasks.try_join_next() {
                record(joined);
            }
            let hostname = format!("sim-{:05}", first_index + asked + 1);
            let options = self.options.clone();
            let token = token.to_owned();
            let counters = self.counters.clone();
            let i = asked;
            tasks.spawn(async move {
                let result = enroll_one(&options, &token, &hostname, &counters).await;
                drop(permit);
                (i, result)
            });
            asked += 1;
        }
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(joined)) => record(joined),
                Ok(None) => break,
                Err(_) => {
                    tasks.abort_all();
                    break;
                }
            }
        }
        let enrolled = done.len();
        let unfinished = count - enrolled - failed;
        if unfinished > 0 {
            failed += unfinished;
            first_error.get_or_insert_with(|| format!("not enrolled within {within:?}"));
        }
        done.sort_by_key(|(i, _)| *i);
        self.hosts
            .extend(done.into_iter().map(|(_, host)| Arc::new(host)));
        self.counters
            .enrolled
            .fetch_add(enrolled as u64, Ordering::Relaxed);
        self.counters
            .enroll_failures
            .fetch_add(failed as u64, Ordering::Relaxed);
        EnrollReport {
            enrolled,
            failed,
            elapsed: started.elapsed(),
            first_error,
        }
    }

    /// Starts the session loop of every enrolled host not started yet. Returns at once; first
    /// connections are made `options.concurrency` at a time (a host's turn ends when its first
    /// attempt connects or fails), reconnections are the agent's own backoff.
    pub fn start(&mut self) {
        let hosts: Vec<Arc<SimHost>> = self.hosts[self.started..].to_vec();
        self.started = self.hosts.len();
        let options = self.options.clone();
        let base_facts = self.base_facts.clone();
        let counters = self.counters.clone();
        let mut shutdown = self.shutdown.subscribe();
        self.launchers.push(tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
            let mut sessions = JoinSet::new();
            for host in hosts {
                let permit = tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    _ = shutdown.wait_for(|stop| *stop) => break,
                };
                let ctx = session_ctx(&options, &base_facts, &host, &counters, permit);
                sessions.spawn(session::run(ctx, shutdown.clone()));
            }
            while sessions.join_next().await.is_some() {}
        }));
    }

    /// The counters now.
    pub fn counters(&self) -> FleetCounters {
        let c = &self.counters;
        FleetCounters {
            enrolled: c.enrolled.load(Ordering::Relaxed),
            enroll_failures: c.enroll_failures.load(Ordering::Relaxed),
            enroll_retries: c.enroll_retries.load(Ordering::Relaxed),
            connected_now: c.connected_now.load(Ordering::Relaxed),
            sessions_opened: c.sessions_opened.load(Ordering::Relaxed),
            sessions_lost: c.sessions_lost.load(Ordering::Relaxed),
            connect_failures: c.connect_failures.load(Ordering::Relaxed),
            actions_started: c.actions_started.load(Ordering::Relaxed),
            actions_answered: c.actions_answered.load(Ordering::Relaxed),
            actions_repeated: c.actions_repeated.load(Ordering::Relaxed),
            last_problem: lock(&c.last_problem).clone(),
        }
    }

    /// Hosts enrolled so far.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host ids of the enrolled hosts, in enrollment order.
    pub fn host_ids(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| h.identity.host_id.clone())
            .collect()
    }

    /// Waits until at least `count` sessions are open at once, or `within` has passed.
    /// Returns the counters either way; check `connected_now`.
    pub async fn wait_connected(&self, count: usize, within: Duration) -> FleetCounters {
        let counters = self.counters.clone();
        wait_until(within, move || {
            counters.connected_now.load(Ordering::Relaxed) >= count as u64
        })
        .await;
        self.counters()
    }

    /// Ends every session (they end as [`Ended::Shutdown`], not counted as lost) and waits
    /// for the session loops to return, at most `within`. Returns the final counters.
    pub async fn shutdown(mut self, within: Duration) -> FleetCounters {
        let _ = self.shutdown.send(true);
        let launchers = std::mem::take(&mut self.launchers);
        let all = async {
            for launcher in launchers {
                let _ = launcher.await;
            }
        };
        let _ = tokio::time::timeout(within, all).await;
        self.counters()
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        // Sessions must not outlive the fleet that counts them.
        let _ = self.shutdown.send(true);
    }
}

/// Polls `done` every 50 ms until it holds or `within` passes; returns whether it held. The
/// condition reads counters or a process's state: this waits for that state, not for a time.
pub async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn enroll_one(
    options: &FleetOptions,
    token: &str,
    hostname: &str,
    counters: &Counters,
) -> Result<SimHost, EnrollError> {
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    let made = enroll::generate_key_and_csr()?;
    let mut attempt = 0;
    let issued = loop {
        attempt += 1;
        let ask = EnrollAsk {
            coordinators: &options.coordinators,
            ca_fingerprint: &options.ca_fingerprint,
            token,
            csr_der: &made.csr_der,
            host_id: &host_id,
            hostname,
        };
        match enroll::request_certificate(&ask).await {
            Ok(issued) => break issued,
            Err(error) if error.is_transient() && attempt < ENROLL_ATTEMPTS => {
                counters.enroll_retries.fetch_add(1, Ordering::Relaxed);
                // The agent retries with backoff too; an overloaded coordinator gets air.
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
            Err(error) => return Err(error),
        }
    };
    let tls = enroll::tls_from_pem(&issued.ca_pem, &issued.certificate_pem, &made.key_pem)
        .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    Ok(SimHost {
        identity: issued.identity,
        hostname: hostname.to_owned(),
        tls: Arc::new(tls),
        boot_id: uuid::Uuid::new_v4().hyphenated().to_string(),
    })
}

fn session_ctx(
    options: &FleetOptions,
    base_facts: &v1::Facts,
    host: &SimHost,
    counters: &Arc<Counters>,
    first_turn: OwnedSemaphorePermit,
) -> SessionCtx<SimRunner> {
    let mut facts = base_facts.clone();
    facts.host_id = host.identity.host_id.clone();
    facts.hostname = host.hostname.clone();
    facts.role = host.identity.role.clone();
    facts.labels = host.identity.labels.clone().into_iter().collect();
    facts.boot_id = host.boot_id.clone();
    SessionCtx {
        coordinators: options.coordinators.clone(),
        identity: host.identity.clone(),
        heartbeat: options.heartbeat,
        credentials: Credentials::InMemory(host.tls.clone()),
        facts: FactsSource::Fixed(Box::new(facts)),
        runner: Arc::new(SimRunner {
            delay: options.action_delay,
            counters: counters.clone(),
            state: Mutex::new(RunnerState::default()),
        }),
        observer: Arc::new(SimObserver {
            hostname: host.hostname.clone(),
            counters: counters.clone(),
            first_turn: Mutex::new(Some(first_turn)),
        }),
    }
}

/// Counts sessions for the fleet, and gives up the host's turn to connect once its first
/// attempt is over.
struct SimObserver {
    hostname: String,
    counters: Arc<Counters>,
    first_turn: Mutex<Option<OwnedSemaphorePermit>>,
}

impl SessionObserver for SimObserver {
    fn connected(&self, _address: &str) {
        self.counters.connected_now.fetch_add(1, Ordering::Relaxed);
        self.counters
            .sessions_opened
            .fetch_add(1, Ordering::Relaxed);
        lock(&self.first_turn).take();
    }

    fn ended(&self, _address: &str, connected: bool, ended: &Ended) {
        lock(&self.first_turn).take();
        if connected {
            self.counters.connected_now.fetch_sub(1, Ordering::Relaxed);
        }
        if let Ended::Lost(reason) = ended {
            if connected {
                self.counters.sessions_lost.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .problem(format!("{}: session lost: {reason}", self.hostname));
            } else {
                self.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .problem(format!("{}: no session: {reason}", self.hostname));
            }
        }
    }
}

/// An action of a simulated host that has not answered yet.
struct Running {
    cancel: watch::Sender<bool>,
    result: watch::Receiver<Option<v1::ActionResult>>,
}

#[derive(Default)]
struct RunnerState {
    running: HashMap<String, Running>,
    /// Every final result, with whether the coordinator acknowledged it: the simulated
    /// journal, so repeated ids get their first answer and lost results go in the next hello.
    results: BTreeMap<String, (v1::ActionResult, bool)>,
}

/// Answers every action with SUCCEEDED (or CANCELLED when cancelled during its delay), at
/// most once per id, like the agent's executor but without running anything.
struct SimRunner {
    delay: Duration,
    counters: Arc<Counters>,
    state: Mutex<RunnerState>,
}

impl SimRunner {
    fn finish(
        &self,
        request: &v1::ActionRequest,
        started: i64,
        cancelled: bool,
    ) -> v1::ActionResult {
        let (outcome, message) = if cancelled {
            (v1::Outcome::Cancelled, "cancelled")
        } else {
            (v1::Outcome::Succeeded, "simulated: succeeded")
        };
        let result = v1::ActionResult {
            action_id: request.action_id.clone(),
            outcome: outcome as i32,
            message: message.to_owned(),
            started_at_ms: started,
            finished_at_ms: now_ms(),
            ..Default::default()
        };
        let mut state = lock(&self.state);
        state.running.remove(&request.action_id);
        state
            .results
            .insert(request.action_id.clone(), (result.clone(), false));
        self.counters
            .actions_answered
            .fetch_add(1, Ordering::Relaxed);
        result
    }
}

/// The progress events the agent's executor sends around every action, so the coordinator
/// sees the same traffic.
fn progress(events: &mpsc::Sender<v1::ActionEvent>, id: &str, percent: i32, stage: &str) {
    let _ = events.try_send(v1::ActionEvent {
        action_id: id.to_owned(),
        event: Some(v1::action_event::Event::Progress(v1::ActionProgress {
            percent,
            stage: stage.to_owned(),
        })),
    });
}

impl ActionRunner for SimRunner {
    fn unacknowledged(&self) -> Vec<v1::ActionResult> {
        lock(&self.state)
            .results
            .values()
            .filter(|(_, acknowledged)| !acknowledged)
            .map(|(result, _)| result.clone())
            .collect()
    }

    fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.state).running.keys().cloned().collect();
        ids.sort();
        ids
    }

    async fn execute(
        self: Arc<Self>,
        request: v1::ActionRequest,
        events: mpsc::Sender<v1::ActionEvent>,
    ) -> v1::ActionResult {
        let started = now_ms();
        let id = request.action_id.clone();
        let mut result_rx = {
            let mut state = lock(&self.state);
            if let Some((result, _)) = state.results.get(&id) {
                self.counters
                    .actions_repeated
                    .fetch_add(1, Ordering::Relaxed);
                return result.clone();
            }
            if let Some(running) = state.running.get(&id) {
                running.result.clone()
            } else {
                let (cancel_tx, mut cancel_rx) = watch::channel(false);
                let (result_tx, result_rx) = watch::channel(None);
                state.running.insert(
                    id.clone(),
                    Running {
                        cancel: cancel_tx,
                        result: result_rx.clone(),
                    },
                );
                drop(state);
                self.counters
                    .actions_started
                    .fetch_add(1, Ordering::Relaxed);
                progress(&events, &id, 0, "started");
                // Like the executor, the action runs in its own task: a lost session does not
                // stop it, and its result goes in the next hello.
                let this = self.clone();
                tokio::spawn(async move {
                    let cancelled = if this.delay.is_zero() {
                        false
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(this.delay) => false,
                            _ = cancel_rx.wait_for(|c| *c) => true,
                        }
                    };
                    progress(&events, &request.action_id, 100, "finished");
                    let result = this.finish(&request, started, cancelled);
                    let _ = result_tx.send(Some(result));
                });
                result_rx
            }
        };
        match result_rx.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or_default(),
            Err(_) => v1::ActionResult {
                action_id: id,
                outcome: v1::Outcome::Failed as i32,
                message: "the simulated action ended without a result".to_owned(),
                started_at_ms: started,
                finished_at_ms: now_ms(),
                ..Default::default()
            },
        }
    }

    fn cancel(&self, action_id: &str) {
        if let Some(running) = lock(&self.state).running.get(action_id) {
            let _ = running.cancel.send(true);
        }
    }

    fn acknowledge(&self, ids: &[String]) {
        let mut state = lock(&self.state);
        for id in ids {
            if let Some(entry) = state.results.get_mut(id) {
                entry.1 = true;
            }
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit (children started
/// afterwards inherit it): ten thousand sessions need ten thousand sockets. Returns the new
/// soft limit.
pub fn raise_open_files_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    Ok(hard)
}

/// An Admin client with the harness coordinator's operator certificate, as the CLI connects.
pub async fn admin(
    coordinator: &Coordinator,
) -> anyhow::Result<v1::admin_client::AdminClient<Channel>> {
    let ca = tls::load_certs(&coordinator.dir.join("ca.crt"))?;
    let chain = tls::load_certs(&coordinator.dir.join("operator/admin.crt"))?;
    let key = tls::load_key(&coordinator.dir.join("operator/admin.key"))?;
    let config = tls::client_config(&ca, Some((chain, key)))?;
    let channel = tls::connect(&coordinator.address(), Arc::new(config)).await?;
    Ok(v1::admin_client::AdminClient::new(channel)
        .max_decoding_message_size(pitcrew_proto::MAX_MESSAGE_BYTES))
}

/// How long an operator waited for the calls behind `pitcrew hosts`, `campaign show` and
/// `events` (first page each), measured while something else runs.
#[derive(Debug, Default)]
pub struct OperatorLatency {
    pub hosts: Vec<Duration>,
    pub campaign_show: Vec<Duration>,
    pub events: Vec<Duration>,
    pub errors: u64,
}

impl OperatorLatency {
    /// "p50 …, p99 …, max … (n calls)" for one kind of call.
    pub fn summary(samples: &[Duration]) -> String {
        if samples.is_empty() {
            return "no answer".to_owned();
        }
        let mut sorted = samples.to_vec();
        sorted.sort();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} calls)",
            at(0.5).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0,
            sorted[sorted.len() - 1].as_secs_f64() * 1000.0,
            sorted.len()
        )
    }
}

/// Asks what an operator asks (`pitcrew hosts`, `campaign show` of the running campaign,
/// `events`), one after the other with a short pause, until `stop` turns true.
pub async fn probe_operator_latency(
    mut admin: v1::admin_client::AdminClient<Channel>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> OperatorLatency {
    let mut seen = OperatorLatency::default();
    let mut campaign = String::new();
    while !*stop.borrow() {
        let started = Instant::now();
        match admin.list_hosts(v1::ListHostsRequest::default()).await {
            Ok(_) => seen.hosts.push(started.elapsed()),
            Err(_) => seen.errors += 1,
        }
        if campaign.is_empty()
            && let Ok(list) = admin
                .list_campaigns(v1::ListCampaignsRequest::default())
                .await
        {
            campaign = list
                .into_inner()
                .campaigns
                .into_iter()
                .find(|c| c.state == "running")
                .map(|c| c.id)
                .unwrap_or_default();
        }
        if !campaign.is_empty() {
            let started = Instant::now();
            let request = v1::GetCampaignRequest {
                id: campaign.clone(),
                ..Default::default()
            };
            match admin.get_campaign(request).await {
                Ok(_) => seen.campaign_show.push(started.elapsed()),
                Err(_) => seen.errors += 1,
            }
        }
        let started = Instant::now();
        match admin.list_events(v1::ListEventsRequest::default()).await {
            Ok(_) => seen.events.push(started.elapsed()),
            Err(_) => seen.errors += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// A join token for `uses` hosts of `role` with `labels`, good for two hours.
// The request keeps growing options (all off by default): the update spells "none of them".
#[allow(clippy::needless_update)]
pub async fn create_token(
    admin: &mut v1::admin_client::AdminClient<Channel>,
    role: &str,
    labels: &[(&str, &str)],
    uses: u32,
) -> anyhow::Result<String> {
    let answer = admin
        .create_token(v1::CreateTokenRequest {
            role: role.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            uses,
            ttl_seconds: 2 * 3600,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("creating a join token: {}", s.message()))?;
    Ok(answer.into_inner().token)
}

/// A campaign of one no-op `exec /bin/true` step over the workers labelled `labels`, with
/// `concurrency` workers out at once.
pub fn noop_campaign(name: &str, labels: &[(&str, &str)], concurrency: usize) -> String {
    let labels = labels
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "name = \"{name}\"\n\n[select]\nroles = [\"worker\"]\nlabels = {{ {labels} }}\n\n[concurrency]\nworker = {concurrency}\n\n[[steps]]\nname = \"noop\"\naction = \"exec\"\nargv = [\"/bin/true\"]\ntimeout = \"5m\"\n"
    )
}

/// How a campaign run by [`run_campaign`] went.
#[derive(Debug, Clone)]
pub struct CampaignOutcome {
    pub id: String,
    /// The last state seen ("completed" when it finished).
    pub state: String,
    /// From the create call to the state "completed", or to giving up.
    pub elapsed: Duration,
    /// Hosts in the campaign, and how many of them were "done" when last seen.
    pub hosts: usize,
    pub done: usize,
    /// The campaign's blocker when last seen, or why watching it stopped.
    pub note: String,
}

impl CampaignOutcome {
    pub fn completed(&self) -> bool {
        self.state == "completed"
    }
}

/// Creates a campaign from `spec_toml` and polls it until it is completed (or cancelled, or
/// `within` has passed). Each poll asks for the counts by state and a one-host page, so that
/// watching a ten-thousand-host campaign does not become the load being measured; the poll
/// interval grows with the campaign (100 ms to 1 s).
pub async fn run_campaign(
    admin: &mut v1::admin_client::AdminClient<Channel>,
    spec_toml: &str,
    expected_hosts: usize,
    within: Duration,
) -> anyhow::Result<CampaignOutcome> {
    let started = Instant::now();
    let created = tokio::time::timeout(
        within,
        admin.create_campaign(v1::CreateCampaignRequest {
            spec_toml: spec_toml.to_owned(),
            source_name: "fleet.toml".to_owned(),
        }),
    )
    .await
    .map_err(|_| anyhow::anyhow!("creating the campaign took more than {within:?}"))?
    .map_err(|s| anyhow::anyhow!("creating the campaign: {}", s.message()))?
    .into_inner();
    let poll = Duration::from_millis((expected_hosts as u64 / 10).clamp(100, 1000));
    let mut outcome = CampaignOutcome {
        id: created.id.clone(),
        state: created.state.clone(),
        elapsed: started.elapsed(),
        hosts: created.hosts_total as usize,
        done: 0,
        note: created.blocker.clone(),
    };
    loop {
        let info = tokio::time::timeout(
            within
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1)),
            admin.get_campaign(v1::GetCampaignRequest {
                id: created.id.clone(),
                page_size: 1,
                ..Default::default()
            }),
        )
        .await;
        match info {
            Ok(Ok(info)) => {
                let info = info.into_inner();
                outcome.state = info.state.clone();
                outcome.hosts = info.hosts_total as usize;
                outcome.done = info.host_counts.get("done").copied().unwrap_or(0) as usize;
                outcome.note = info.blocker.clone();
                outcome.elapsed = started.elapsed();
                if matches!(info.state.as_str(), "completed" | "cancelled") {
                    return Ok(outcome);
                }
            }
            Ok(Err(status)) => {
                outcome.note = format!("reading the campaign failed: {}", status.message());
                outcome.elapsed = started.elapsed();
                return Ok(outcome);
            }
            Err(_) => {}
        }
        if started.elapsed() >= within {
            outcome.elapsed = started.elapsed();
            if outcome.note.is_empty() {
                outcome.note = format!("not completed within {within:?}");
            }
            return Ok(outcome);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Cancels a campaign (best effort), so that a campaign that did not finish does not hold
/// hosts a later one needs.
pub async fn cancel_campaign(admin: &mut v1::admin_client::AdminClient<Channel>, id: &str) {
    let _ = admin
        .control_campaign(v1::ControlCampaignRequest {
            id: id.to_owned(),
            control: v1::CampaignControl::Cancel as i32,
        })
        .await;
}

/// Resident memory of a process in KiB (VmRSS), 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time a process has used so far (user + system), when it can be read.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}
