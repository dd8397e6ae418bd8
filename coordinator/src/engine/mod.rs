//! The campaign engine: the one owner of campaign state, in memory, around the pure scheduler.
//!
//! One task owns the fleet view, every run and manual maintenance. Everything that changes
//! them arrives as an input on its queue: results from agents, sessions going up and down,
//! enrollments, operator commands. Each turn it takes every waiting input, applies them,
//! decides and applies until nothing more can be decided, then **commits the turn's writes in
//! one transaction and only after that sends anything** (the write-ahead invariant) and
//! answers the commands and results of the turn. It never re-reads the store (the state was
//! read once at start) and never waits on an agent: sends go through the [`Outbox`] without
//! waiting.
//!
//! Layering: the server calls the engine; the engine knows the store, the scheduler and the
//! [`Outbox`] trait, and nothing of gRPC (its errors are [`EngineError`]).

mod clock;
mod error;
mod metrics;
mod outbox;
mod state;
pub mod view;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use pitcrew_proto::v1;
use pitcrew_scheduler::{CampaignRun, HostView};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use clock::Clock;
pub use error::EngineError;
pub use metrics::EngineMetrics;
pub use outbox::Outbox;
pub use state::{
    CampaignControl, CampaignSuccess, Hold, HostControl, HostEdit, RunFilter, ScheduleControl,
    ScheduleView,
};
use state::{EngineState, Turn};
pub use view::{CampaignView, HostPage, HostStatus};

use crate::events::EventLog;
use crate::store::{ActionRecord, HostRecord, Store};

/// The longest the loop sleeps without a reason (a safety net; inputs wake it).
const IDLE_WAKE: Duration = Duration::from_secs(30);
/// The most inputs one turn takes, so a flood of results still lets decisions through.
const MAX_INPUTS_PER_TURN: usize = 4096;
/// The shortest sleep when a turn did nothing.
const MIN_IDLE_SLEEP: Duration = Duration::from_millis(10);
/// How often the engine says where its time went.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// Where the engine's time goes, logged every [`STATS_EVERY`] while it works.
#[derive(Debug)]
struct TurnStats {
    since: std::time::Instant,
    turns: u64,
    committed: u64,
    inputs: usize,
    deciding: Duration,
    committing: Duration,
}

impl Default for TurnStats {
    fn default() -> Self {
        TurnStats {
            since: std::time::Instant::now(),
            turns: 0,
            committed: 0,
            inputs: 0,
            deciding: Duration::ZERO,
            committing: Duration::ZERO,
        }
    }
}

impl TurnStats {
    fn record(&mut self, deciding: Duration, committing: Duration, wrote: bool) {
        self.turns += 1;
        self.committed += u64::from(wrote);
        self.deciding += deciding;
        self.committing += committing;
    }

    fn report_if_due(&mut self) {
        if self.since.elapsed() < STATS_EVERY {
            return;
        }
        if self.committed > 0 {
            tracing::info!(
                message = "engine turns",
                turns = self.turns,
                commits = self.committed,
                inputs = self.inputs,
                deciding_ms = self.deciding.as_millis() as u64,
                committing_ms = self.committing.as_millis() as u64,
                window_s = self.since.elapsed().as_secs()
            );
        }
        *self = TurnStats::default();
    }
}

/// What a command does with the state; returns what to answer once the turn is durable.
type Reply = Box<dyn FnOnce(Result<(), EngineError>) + Send>;
type Command = Box<dyn FnOnce(&mut EngineState, &mut Turn, i64) -> Reply + Send>;

enum Input {
    Command(Command),
    /// A session started (with the hello's facts) or ended (None).
    Session {
        host: String,
        generation: u64,
        facts: Option<v1::Facts>,
    },
    Facts {
        host: String,
        generation: u64,
        facts: v1::Facts,
    },
    Enrolled(HostRecord),
    /// A new session's hello was handled: its replayed results are recorded.
    Replayed(String),
}

/// A handle on the engine, shared by the services.
#[derive(Clone)]
pub struct Engine {
    inbox: mpsc::UnboundedSender<Input>,
    changes: watch::Receiver<u64>,
    /// Moves whenever a committed turn changed the fleet's hosts or any campaign (the web
    /// dashboard's fleet page follows it).
    fleet_changes: watch::Receiver<u64>,
    /// What the loop publishes for Prometheus once each turn is durable.
    metrics: EngineMetrics,
}

/// The engine's loop, to be supervised: it ends only with the error that stopped it, or
/// `Ok` when every handle is gone.
pub type EngineTask = JoinHandle<Result<(), EngineError>>;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// After a restart, how long to wait for agents running in-flight actions to reconnect
    /// and replay their results before deciding (so an outage longer than a step's deadline
    /// does not fail hosts whose work actually finished).
    pub reconnect_grace: Duration,
    /// The lease under which this engine leads: it commits and sends only while it holds
    /// (always, for the sole coordinator of a SQLite store).
    pub leadership: crate::leader::Leadership,
    /// Finished runs older than this leave the engine's working set for the store's archive
    /// (`campaign_archive_after`).
    pub archive_after: Duration,
    /// The wall clock schedules and runs are timed by.
    pub clock: Clock,
    /// The configured webhooks (`[[webhook]]`): what the engine notifies, decided in its turns.
    pub webhooks: Vec<crate::notify::Webhook>,
    /// Where durable notifications go to be delivered (none: they stay pending in the store).
    pub notify: Option<crate::notify::NotifySink>,
}

/// How often the engine looks for finished runs to archive.
const ARCHIVE_CHECK_EVERY: Duration = Duration::from_secs(60);

/// A new campaign run's id.
pub fn new_campaign_id() -> String {
    format!("c-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

impl Engine {
    /// Loads the state from the store (reads only), then starts the loop.
    pub async fn start(
        store: Arc<Store>,
        events: Arc<EventLog>,
        outbox: Arc<dyn Outbox>,
        settings: EngineSettings,
    ) -> Result<(Engine, EngineTask), EngineError> {
        let mut state = EngineState::from_store(store.load_fleet().await?);
        let archive_after_ms =
            i64::try_from(settings.archive_after.as_millis()).unwrap_or(i64::MAX);
        state.notify = state::Notifications::new(settings.webhooks.clone());
        let results = store.action_results(state.in_flight_action_ids()).await?;
        let turn = state.apply_stored_results(&results);
        let (inbox, inputs) = mpsc::unbounded_channel();
        let (changes_tx, changes) = watch::channel(0u64);
        let (fleet_changes_tx, fleet_changes) = watch::channel(0u64);
        let waiting_for = state.in_flight_targets();
        if !waiting_for.is_empty() && !settings.reconnect_grace.is_zero() {
            tracing::info!(
                message = "waiting for agents with in-flight actions to reconnect",
                hosts = waiting_for.len(),
                grace_s = settings.reconnect_grace.as_secs()
            );
            // Deciding goes on at once; only these hosts' steps wait for their agents.
            let grace_ms = i64::try_from(settings.reconnect_grace.as_millis()).unwrap_or(i64::MAX);
            let until = settings.clock.now_ms().saturating_add(grace_ms);
            state.fleet.awaited = waiting_for.iter().map(|h| (h.clone(), until)).collect();
        }
        let metrics = EngineMetrics::default();
        let runner = Runner {
            metrics: metrics.clone(),
            state,
            store,
            events,
            outbox,
            inputs,
            changes: changes_tx,
            fleet_changes: fleet_changes_tx,
            fleet_touched: false,
            notify: settings.notify.clone(),
            leadership: settings.leadership,
            clock: settings.clock,
            archive_after_ms,
            next_archive_check: tokio::time::Instant::now(),
        };
        let task = tokio::spawn(runner.run(turn));
        Ok((
            Engine {
                inbox,
                changes,
                fleet_changes,
                metrics,
            },
            task,
        ))
    }

    /// Runs `f` on the state in the next turn; answers once the turn is durable.
    async fn call<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&mut EngineState, &mut Turn, i64) -> Result<T, EngineError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let command: Command = Box::new(move |state, turn, now| {
            let result = f(state, turn, now);
            Box::new(move |committed: Result<(), EngineError>| {
                let _ = tx.send(committed.and(result));
            })
        });
        self.inbox
            .send(Input::Command(command))
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// The engine's metric families, for the coordinator's registry.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// A receiver that changes whenever a committed turn changed a campaign.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// A receiver that changes whenever a committed turn changed the fleet (a session, facts,
    /// an enrollment, an operator's command) or a campaign. Like [`Engine::subscribe`] it only
    /// coalesces: the engine never waits on a reader.
    pub fn subscribe_fleet(&self) -> watch::Receiver<u64> {
        self.fleet_changes.clone()
    }

    /// The fleet as the web dashboard shows it, from the engine's state: up to `limit` hosts
    /// (by hostname) that `keep` accepts, each with who holds it, how many matched in all,
    /// who holds which host out of service, and every campaign with its counts.
    pub async fn fleet_table<F>(&self, keep: F, limit: usize) -> Result<FleetTable, EngineError>
    where
        F: Fn(&HostView, &Hold) -> bool + Send + 'static,
    {
        self.call(move |state, _, _| {
            let mut rows: Vec<(HostView, Hold)> = Vec::new();
            let mut matched = 0;
            for view in state.fleet.hosts.values() {
                let hold = state
                    .holds(std::slice::from_ref(&view.id))
                    .pop()
                    .unwrap_or(Hold {
                        state: "running".into(),
                        holder: String::new(),
                    });
                if keep(view, &hold) {
                    matched += 1;
                    rows.push((view.clone(), hold));
                }
            }
            rows.sort_by(|a, b| (&a.0.hostname, &a.0.id).cmp(&(&b.0.hostname, &b.0.id)));
            rows.truncate(limit);
            Ok(FleetTable {
                rows,
                matched,
                holders: state.holders(),
                campaigns: state.list(),
            })
        })
        .await
    }

    /// One host as the engine sees it, with who holds it; `None` for a host not in the fleet
    /// (unknown or removed).
    pub async fn host(&self, host_id: String) -> Result<Option<(HostView, Hold)>, EngineError> {
        self.call(move |state, _, _| {
            Ok(state.fleet.hosts.get(&host_id).cloned().map(|view| {
                let hold = state.holds(std::slice::from_ref(&host_id)).pop();
                let hold = hold.unwrap_or(Hold {
                    state: "running".into(),
                    holder: String::new(),
                });
                (view, hold)
            }))
        })
        .await
    }

    /// The hosts as the engine sees them now (for planning off the engine's loop).
    pub async fn hosts(&self) -> Result<Vec<HostView>, EngineError> {
        self.call(|state, _, _| Ok(state.hosts())).await
    }

    /// The hosts and who holds which out of service now: the fleet as it is, for a plan.
    pub async fn fleet_now(
        &self,
    ) -> Result<(Vec<HostView>, pitcrew_scheduler::Holders), EngineError> {
        self.call(|state, _, _| Ok((state.hosts(), state.holders())))
            .await
    }

    /// Adds a run planned and built by the caller from [`Engine::hosts`]; audited.
    pub async fn insert_run(
        &self,
        run: CampaignRun,
        spec_toml: String,
        operator: String,
    ) -> Result<CampaignView, EngineError> {
        self.call(move |state, turn, _| state.insert_run(run, spec_toml, &operator, turn))
            .await
    }

    /// Registers (or replaces) the schedule of a campaign file that has one; audited.
    pub async fn register_schedule(
        &self,
        operator: String,
        spec: pitcrew_scheduler::CampaignSpec,
        spec_toml: String,
        source_name: String,
    ) -> Result<ScheduleView, EngineError> {
        self.call(move |state, turn, now| {
            state.register_schedule(&operator, &spec, spec_toml, source_name, now, turn)
        })
        .await
    }

    /// Pauses, resumes or removes a schedule; audited.
    pub async fn control_schedule(
        &self,
        operator: String,
        name: String,
        control: ScheduleControl,
    ) -> Result<ScheduleView, EngineError> {
        self.call(move |state, turn, now| {
            state.control_schedule(&operator, &name, control, now, turn)
        })
        .await
    }

    /// Every schedule, by name, with its next fire time.
    pub async fn schedules(&self) -> Result<Vec<ScheduleView>, EngineError> {
        self.call(|state, _, _| Ok(state.list_schedules())).await
    }

    /// The runs the engine holds that `filter` keeps, newest first, at most its limit; and
    /// how many matched in all.
    pub async fn list_filtered(
        &self,
        filter: RunFilter,
    ) -> Result<(Vec<CampaignView>, usize), EngineError> {
        self.call(move |state, _, _| Ok(state.list_filtered(&filter)))
            .await
    }

    pub async fn view(&self, id: String, page: HostPage) -> Result<CampaignView, EngineError> {
        self.call(move |state, _, _| state.view(&id, page)).await
    }

    pub async fn list(&self) -> Result<Vec<CampaignView>, EngineError> {
        self.call(|state, _, _| Ok(state.list())).await
    }

    pub async fn control(
        &self,
        operator: String,
        id: String,
        control: CampaignControl,
    ) -> Result<CampaignView, EngineError> {
        self.call(move |state, turn, now| state.control(&operator, &id, control, now, turn))
            .await
    }

    pub async fn control_host(
        &self,
        operator: String,
        id: String,
        host_id: String,
        control: HostControl,
    ) -> Result<CampaignView, EngineError> {
        self.call(move |state, turn, now| {
            state.control_host(&operator, &id, &host_id, control, now, turn)
        })
        .await
    }

    /// Manual maintenance on or off; returns the host's hold as the command left it.
    pub async fn set_maintenance(
        &self,
        operator: String,
        host_id: String,
        enable: bool,
    ) -> Result<Hold, EngineError> {
        self.call(move |state, turn, now| {
            state.set_maintenance(&operator, &host_id, enable, now, turn)
        })
        .await
    }

    /// Admits an operator's disruptive action (`pitcrew do`) on `host_id` against the slots,
    /// or refuses it naming the holder; `force` admits it anyway, audited with what it
    /// overrode. The host stays held until the returned hold is dropped (or the action's result
    /// arrives), so no campaign starts it, or another manager of its cluster, meanwhile.
    pub async fn begin_operator_action(
        &self,
        operator: String,
        host_id: String,
        action_id: String,
        what: String,
        force: bool,
    ) -> Result<OperatorHold, EngineError> {
        let id = action_id.clone();
        self.call(move |state, turn, _| {
            state.begin_operator_action(&operator, &host_id, &action_id, &what, force, turn)
        })
        .await?;
        Ok(OperatorHold {
            engine: self.clone(),
            action_id: id,
        })
    }

    /// Removes a host from the fleet (`pitcrew hosts remove`); audited. Returns what the
    /// removal changed, once durable.
    pub async fn remove_host(
        &self,
        operator: String,
        host_id: String,
    ) -> Result<Vec<String>, EngineError> {
        self.call(move |state, turn, now| state.remove_host(&operator, &host_id, now, turn))
            .await
    }

    /// Changes a host's role or labels (`pitcrew hosts set`); audited. Returns the new role
    /// and labels, once durable.
    pub async fn set_host(
        &self,
        operator: String,
        host_id: String,
        edit: HostEdit,
    ) -> Result<
        (
            pitcrew_scheduler::Role,
            std::collections::BTreeMap<String, String>,
        ),
        EngineError,
    > {
        self.call(move |state, turn, _| state.set_host(&operator, &host_id, &edit, turn))
            .await
    }

    /// When each campaign last succeeded on each of these hosts (in the same order).
    pub async fn last_successes(
        &self,
        host_ids: Vec<String>,
    ) -> Result<Vec<Vec<CampaignSuccess>>, EngineError> {
        self.call(move |state, _, _| Ok(state.last_successes(&host_ids)))
            .await
    }

    /// Who holds each of these hosts out of service (in the same order).
    pub async fn holds(&self, host_ids: Vec<String>) -> Result<Vec<Hold>, EngineError> {
        self.call(move |state, _, _| Ok(state.holds(&host_ids)))
            .await
    }

    /// An agent's final result for an action it was sent; returns once the result (and what
    /// it changed in its campaign) is durable, so the caller may then acknowledge it.
    pub async fn result(
        &self,
        reporting_host: String,
        record: ActionRecord,
        result: v1::ActionResult,
        first_report: bool,
    ) -> Result<(), EngineError> {
        self.call(move |state, turn, now| {
            state.on_result(&reporting_host, &record, &result, first_report, now, turn);
            Ok(())
        })
        .await
    }

    /// A session of `host` started (with the hello's facts) or ended (`None`).
    pub fn session_changed(&self, host: &str, generation: u64, facts: Option<v1::Facts>) {
        let _ = self.inbox.send(Input::Session {
            host: host.to_owned(),
            generation,
            facts,
        });
    }

    /// A new session of `host` replayed the results its agent kept while apart (all are
    /// recorded): after a restart, its in-flight steps are judged from here on.
    pub fn results_replayed(&self, host: &str) {
        let _ = self.inbox.send(Input::Replayed(host.to_owned()));
    }

    /// A live session reported new facts.
    pub fn facts_changed(&self, host: &str, generation: u64, facts: v1::Facts) {
        let _ = self.inbox.send(Input::Facts {
            host: host.to_owned(),
            generation,
            facts,
        });
    }

    /// A host enrolled or re-enrolled.
    pub fn host_enrolled(&self, record: HostRecord) {
        let _ = self.inbox.send(Input::Enrolled(record));
    }
}

/// The fleet as the web dashboard's fleet page shows it (see [`Engine::fleet_table`]).
#[derive(Debug, Clone)]
pub struct FleetTable {
    /// The hosts shown, by hostname, each with who holds it.
    pub rows: Vec<(HostView, Hold)>,
    /// How many hosts matched (more than `rows` when the limit cut them).
    pub matched: usize,
    pub holders: pitcrew_scheduler::Holders,
    pub campaigns: Vec<CampaignView>,
}

/// An operator's admitted disruptive action: while this lives, its host is held. Dropping it
/// (whichever way the `do` ends) frees the host in the engine's next turn.
pub struct OperatorHold {
    engine: Engine,
    action_id: String,
}

impl Drop for OperatorHold {
    fn drop(&mut self) {
        let id = std::mem::take(&mut self.action_id);
        let command: Command = Box::new(move |state, turn, _| {
            state.end_operator_action(&id, turn);
            Box::new(|_| {})
        });
        // A stopped engine holds nothing any more.
        let _ = self.engine.inbox.send(Input::Command(command));
    }
}

/// The loop's own state.
struct Runner {
    state: EngineState,
    store: Arc<Store>,
    events: Arc<EventLog>,
    outbox: Arc<dyn Outbox>,
    inputs: mpsc::UnboundedReceiver<Input>,
    changes: watch::Sender<u64>,
    /// Told after a committed turn that changed the fleet or a campaign.
    fleet_changes: watch::Sender<u64>,
    /// Whether this turn's inputs may have changed the fleet's hosts.
    fleet_touched: bool,
    metrics: EngineMetrics,
    leadership: crate::leader::Leadership,
    clock: Clock,
    /// Finished runs older than this are archived.
    archive_after_ms: i64,
    next_archive_check: tokio::time::Instant,
    /// The notifier's inbox: the turn's notifications, once durable.
    notify: Option<crate::notify::NotifySink>,
}

impl Runner {
    async fn run(mut self, mut turn: Turn) -> Result<(), EngineError> {
        let mut replies: Vec<Reply> = Vec::new();
        let mut stats = TurnStats::default();
        loop {
            let now = self.clock.now_ms();
            let started = std::time::Instant::now();
            // Schedules fire first, so a run they start is decided in this turn; only once
            // agents had their chance to come back after a restart (and report the facts
            // schedules select by). Deciding does not wait: the fleet's `awaited` hosts keep
            // their in-flight steps until their agents replay results or the grace ends.
            self.state.fleet.awaited.retain(|_, until| *until > now);
            let fire = if self.state.fleet.awaited.is_empty() {
                self.state.fire_schedules(now, &mut turn)
            } else {
                None
            };
            let mut wake = self.state.decide_and_apply(now, &mut turn);
            wake = match (wake, fire) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.state.release_free_holds(now, &mut turn);
            self.metrics.decided(started.elapsed());
            self.state.track_waits(now);
            // Stuck hosts' reports fall due without any event: wake for the next one.
            if let Some(at) = self.state.track_blocked(now, &mut turn) {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            let decided = std::time::Instant::now();
            let wrote = self.commit(turn, std::mem::take(&mut replies)).await?;
            stats.record(decided - started, decided.elapsed(), wrote);
            turn = Turn::default();
            // Between turns, no index into the runs is held: old runs may leave now (their
            // archive marks are written with the next turn).
            if tokio::time::Instant::now() >= self.next_archive_check {
                self.next_archive_check = tokio::time::Instant::now() + ARCHIVE_CHECK_EVERY;
                self.state
                    .archive_finished(self.clock.now_ms(), self.archive_after_ms, &mut turn);
            }

            let mut sleep = wake
                .map_or(IDLE_WAKE, |at| {
                    Duration::from_millis(u64::try_from(at - self.clock.now_ms()).unwrap_or(0))
                })
                .min(IDLE_WAKE);
            // The agents waited for after a restart replay (an input) or run out of time:
            // wake then, for the schedules waiting on them.
            if let Some(until) = self.state.fleet.awaited.values().min() {
                let left = u64::try_from(until - self.clock.now_ms()).unwrap_or(0);
                sleep = sleep.min(Duration::from_millis(left));
            }
            if sleep.is_zero() && !wrote {
                // A wake time already past with nothing done: never spin on it.
                sleep = MIN_IDLE_SLEEP;
            }
            let first = if sleep.is_zero() {
                self.inputs.try_recv().ok()
            } else {
                tokio::select! {
                    input = self.inputs.recv() => match input {
                        Some(input) => Some(input),
                        None => return Ok(()),
                    },
                    _ = tokio::time::sleep(sleep) => None,
                }
            };
            let now = self.clock.now_ms();
            let mut taken = 0;
            let mut next = first;
            while let Some(input) = next {
                self.handle(input, &mut turn, &mut replies, now);
                taken += 1;
                next = if taken < MAX_INPUTS_PER_TURN {
                    self.inputs.try_recv().ok()
                } else {
                    None
                };
            }
            stats.inputs += taken;
            stats.report_if_due();
        }
    }

    fn handle(&mut self, input: Input, turn: &mut Turn, replies: &mut Vec<Reply>, now: i64) {
        // Sessions, facts and enrollments change what the fleet page shows without a write of
        // the engine's own; commands that change anything write or change a campaign.
        self.fleet_touched |= !matches!(input, Input::Command(_));
        match input {
            Input::Command(command) => replies.push(command(&mut self.state, turn, now)),
            Input::Session {
                host,
                generation,
                facts,
            } => self.state.session_changed(&host, generation, facts),
            Input::Facts {
                host,
                generation,
                facts,
            } => self.state.facts_changed(&host, generation, facts),
            Input::Enrolled(record) => self.state.host_enrolled(&record),
            Input::Replayed(host) => self.state.results_replayed(&host),
        }
    }

    /// Commits the turn's writes, then (and only then) sends, publishes and answers. Returns
    /// whether anything was written.
    async fn commit(&mut self, mut turn: Turn, replies: Vec<Reply>) -> Result<bool, EngineError> {
        let looked = self.state.refresh_gauges(&turn) || turn.campaigns_changed;
        let writes = match self.state.writes(&mut turn) {
            Ok(writes) => writes,
            Err(error) => return Err(fail(replies, error.into())),
        };
        let wrote = !writes.is_empty();
        // Leading is checked before writing and again before sending: a leader paused past
        // its lease wakes up to find it may have lapsed, and does neither (the database would
        // refuse the write anyway once a newer leader holds the lease).
        if !self.leadership.holds() {
            return Err(fail(
                replies,
                EngineError::NotLeading(self.leadership.epoch()),
            ));
        }
        let logged = if !wrote {
            Vec::new()
        } else {
            match self.store.commit_turn(writes).await {
                Ok(logged) => logged,
                Err(error) => return Err(fail(replies, error.into())),
            }
        };
        if !self.leadership.holds() {
            return Err(fail(
                replies,
                EngineError::NotLeading(self.leadership.epoch()),
            ));
        }
        for event in logged {
            self.events.publish(event);
        }
        // Durable: the metrics may say so (before any reply, so an answered command's effect
        // is in the next scrape).
        if cfg!(debug_assertions) && looked {
            let kept = self.state.gauges.counts.nonzero();
            let recounted = self.state.recount_gauges().nonzero();
            debug_assert_eq!(kept, recounted, "the fleet's kept counts went wrong");
        }
        self.metrics.publish(&mut self.state.gauges);
        if let Some(sink) = &self.notify {
            sink.deliver(std::mem::take(&mut turn.deliveries));
        }
        for (host, message) in turn.sends {
            // Not connected or not reading: the action stays recorded and in flight, and is
            // re-sent when the agent's next session starts.
            self.outbox.send(&host, message);
        }
        for reply in replies {
            reply(Ok(()));
        }
        if std::mem::take(&mut self.fleet_touched) || wrote || turn.campaigns_changed {
            self.fleet_changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        if turn.campaigns_changed {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
            if cfg!(debug_assertions) {
                let broken = self.state.broken_invariants();
                debug_assert!(broken.is_empty(), "campaign invariants broken: {broken:?}");
            }
        }
        Ok(wrote)
    }
}

/// Answers every waiting command with the error that stops the engine, and returns it.
fn fail(replies: Vec<Reply>, error: EngineError) -> EngineError {
    tracing::error!(message = "the campaign engine cannot commit; stopping", %error);
    for reply in replies {
        reply(Err(error.clone()));
    }
    error
}
