//! The engine's state and every change to it, without I/O: the fleet view, every campaign
//! run, manual maintenance, and the blockers of the last turn.
//!
//! Each change records what it touched in a [`Turn`]: the host rows and run headers to
//! rewrite, actions to record, results to store, events to log and messages to send. The loop
//! (`engine/mod.rs`) commits a turn's writes in one transaction and only then sends its
//! messages — the write-ahead invariant. Because a turn lists exactly what changed, a
//! host-step writes one host row, whatever the size of the campaign or the fleet.

use std::collections::{BTreeSet, HashMap};

use pitcrew_proto::v1;
use pitcrew_scheduler::{
    self as scheduler, CampaignRun, CampaignState, Decision, Event, Fleet, HostState, HostView,
    ManualState, Role,
};
use prost::Message;

mod archive;
mod compliance;
mod gauges;
mod lifecycle;
mod notify;
mod schedules;
mod unit_holds;

pub use archive::RunFilter;
pub use compliance::CampaignSuccess;
pub use schedules::{ScheduleControl, ScheduleView};

pub(crate) use gauges::{CAMPAIGN_STATES, FleetGauges, HOST_STATES, HolderKind, StepOutcome};

pub(crate) use crate::store::HostChange;
pub use lifecycle::HostEdit;
pub(crate) use notify::Notifications;

use super::EngineError;
use super::view::{CampaignView, HostPage, LastTurn, campaign_view};
use crate::store::{
    ActionRecord, CampaignHostRow, DeliveryRecord, EventRecord, HostRecord, StoreError,
    StoredFleet, TurnWrites, campaigns,
};

/// How many decide/apply rounds one turn may take before it commits and lets inputs in (a
/// start enables a dispatch, a release enables the next start).
const MAX_ROUNDS_PER_TURN: usize = 8;

/// The hosts a command's reply shows (the first page of the campaign).
const REPLY_PAGE: HostPage = HostPage::Range {
    offset: 0,
    limit: 500,
};

/// What the run itself does not hold.
#[derive(Debug, Clone)]
struct Meta {
    spec_toml: String,
    created_by: String,
    /// Host id → index into the run's hosts.
    hosts: HashMap<String, usize>,
}

impl Meta {
    fn new(run: &CampaignRun, spec_toml: String, created_by: String) -> Meta {
        Meta {
            spec_toml,
            created_by,
            hosts: run
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (h.host_id.clone(), i))
                .collect(),
        }
    }
}

/// Everything one turn changed: what to write, then what to send.
#[derive(Debug, Default)]
pub(crate) struct Turn {
    new_runs: Vec<usize>,
    /// (run index, host index) of host rows to rewrite.
    dirty_hosts: BTreeSet<(usize, usize)>,
    dirty_headers: BTreeSet<usize>,
    actions: Vec<ActionRecord>,
    finished: Vec<(String, Vec<u8>)>,
    events: Vec<EventRecord>,
    manual: Vec<(String, Option<ManualState>)>,
    /// Host rows changed by an operator (removed, role or labels).
    host_changes: Vec<HostChange>,
    /// Schedules written (Some) or removed (None), by name.
    schedules: Vec<(String, Option<crate::store::ScheduleRecord>)>,
    /// Runs that left the working set for the archive.
    archived: Vec<crate::store::ArchivedRun>,
    /// Messages for agents, sent only after the writes are durable.
    pub sends: Vec<(String, v1::CoordinatorMessage)>,
    /// Whether any campaign changed (watchers are told after the commit).
    pub campaigns_changed: bool,
    /// Webhook notifications decided, written with the turn and handed to the notifier
    /// once it is durable.
    pub deliveries: Vec<DeliveryRecord>,
}

impl Turn {
    fn event(&mut self, event: EventRecord) {
        self.events.push(event);
    }
}

/// The parts of a run's header whose change needs the header row rewritten.
#[derive(Debug, PartialEq)]
struct HeaderKey {
    state: CampaignState,
    failures: u32,
    acknowledged: u32,
    releases: Vec<(Role, i64)>,
    pause_reason: Option<String>,
    cancel_requested: bool,
}

impl HeaderKey {
    fn of(run: &CampaignRun) -> HeaderKey {
        HeaderKey {
            state: run.state,
            failures: run.failures,
            acknowledged: run.failures_acknowledged,
            releases: run.last_release_ms.iter().map(|(r, t)| (*r, *t)).collect(),
            pause_reason: run.pause_reason.clone(),
            cancel_requested: run.cancel_requested,
        }
    }
}

/// Who holds a host out of service, for host listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// running, entering, maintenance, leaving, failed.
    pub state: String,
    /// A campaign id, "manual", or "" when the host is in service.
    pub holder: String,
}

/// A host's view for the scheduler from its enrollment record and latest facts.
pub(crate) fn host_view(record: &HostRecord, connected: bool) -> Option<HostView> {
    let role = Role::parse(&record.role)?;
    let facts = (!record.facts.is_empty())
        .then(|| v1::Facts::decode(record.facts.as_slice()).ok())
        .flatten();
    Some(HostView {
        id: record.host_id.clone(),
        hostname: record.hostname.clone(),
        role,
        labels: record.labels.clone(),
        connected,
        // Liveness is the session itself: heartbeats keep it, silence closes it.
        healthy: connected,
        boot_id: facts
            .as_ref()
            .map(|f| f.boot_id.clone())
            .unwrap_or_default(),
        facts: facts.as_ref().map(host_facts),
        policy: facts
            .and_then(|f| f.policy)
            .map(|p| pitcrew_proto::policy::LocalPolicy::from_proto(&p)),
    })
}

/// What `[select] when` conditions read of a host's facts.
pub(crate) fn host_facts(facts: &v1::Facts) -> scheduler::HostFacts {
    scheduler::HostFacts {
        reboot_required: facts.reboot_required,
        shm_tmpfs_mounts: facts.shm_tmpfs_mounts,
        pending_updates: facts.pending_updates,
    }
}

fn finished_event(result: &v1::ActionResult, boot_id: Option<String>) -> Event {
    Event::ActionFinished {
        action_id: result.action_id.clone(),
        outcome: crate::wire::outcome(result.outcome),
        message: result.message.clone(),
        boot_id: boot_id.filter(|b| !b.is_empty()),
    }
}

fn host_event(
    host: &str,
    campaign: &str,
    step: &str,
    result: &str,
    message: String,
) -> EventRecord {
    EventRecord {
        at_ms: pitcrew_proto::now_ms(),
        kind: "host".into(),
        host_id: host.into(),
        campaign_id: campaign.into(),
        step: step.into(),
        result: result.into(),
        message: crate::events::bounded(message),
        ..Default::default()
    }
}

/// An audit record: `actor` did `message`.
pub(crate) fn audit_event(actor: &str, host: &str, campaign: &str, message: String) -> EventRecord {
    EventRecord {
        at_ms: pitcrew_proto::now_ms(),
        kind: "audit".into(),
        host_id: host.into(),
        campaign_id: campaign.into(),
        message,
        actor: actor.into(),
        ..Default::default()
    }
}

/// What an operator asks of one host of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostControl {
    Retry,
    Skip,
    Release,
}

/// What an operator asks of a whole campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignControl {
    Pause,
    Resume,
    Cancel,
}

/// The engine's state.
#[derive(Debug)]
pub(crate) struct EngineState {
    pub fleet: Fleet,
    /// The newest session generation seen per host: a late "disconnected" of a replaced
    /// session must not mark the new one down.
    generations: HashMap<String, u64>,
    /// Every run in creation order (earlier campaigns get slots first).
    runs: Vec<CampaignRun>,
    meta: Vec<Meta>,
    by_id: HashMap<String, usize>,
    last: LastTurn,
    /// Units held down on hosts, as their facts report them (see `unit_holds.rs`).
    unit_holds: unit_holds::UnitHolds,
    /// The fleet's counts for the metrics, kept current by each change (see `gauges.rs`).
    pub(crate) gauges: FleetGauges,
    /// Campaign schedules by name (see `schedules.rs`).
    schedules: schedules::Schedules,
    /// Each host's latest success per campaign name in archived runs (see `archive.rs`).
    archived_successes: HashMap<String, std::collections::BTreeMap<String, CampaignSuccess>>,
    /// The webhooks and what the engine tells them (see `notify.rs`).
    pub(crate) notify: Notifications,
}

impl EngineState {
    /// The state as the store kept it (read once, at start).
    pub fn from_store(stored: StoredFleet) -> EngineState {
        let mut fleet = Fleet::from_hosts(stored.hosts.iter().filter_map(|h| host_view(h, false)));
        fleet.manual = stored.manual;
        let mut state = EngineState {
            fleet,
            generations: HashMap::new(),
            runs: Vec::new(),
            meta: Vec::new(),
            by_id: HashMap::new(),
            last: LastTurn::default(),
            unit_holds: unit_holds::UnitHolds::default(),
            gauges: FleetGauges::default(),
            schedules: schedules::Schedules::load(stored.schedules),
            archived_successes: HashMap::new(),
            notify: Notifications::default(),
        };
        state.load_archived_successes(stored.archived_successes);
        for record in stored.campaigns {
            state.push_run(record.run, record.spec_toml, record.created_by);
        }
        for host in &stored.hosts {
            let reboot_required = !host.facts.is_empty()
                && v1::Facts::decode(host.facts.as_slice()).is_ok_and(|f| f.reboot_required);
            if reboot_required {
                state.gauges.facts(&host.host_id, true);
            }
        }
        state.count_every_host();
        state
    }

    /// The ids of every action in flight (their results may have been stored before a crash).
    pub fn in_flight_action_ids(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| r.in_flight_dispatches())
            .map(|d| d.action_id)
            .collect()
    }

    /// Applies results that were stored for in-flight actions but not yet applied; the
    /// returned turn holds those changes.
    pub fn apply_stored_results(&mut self, results: &HashMap<String, Vec<u8>>) -> Turn {
        let mut turn = Turn::default();
        let now = pitcrew_proto::now_ms();
        for ci in 0..self.runs.len() {
            for dispatch in self.runs[ci].in_flight_dispatches() {
                if let Some(bytes) = results.get(&dispatch.action_id)
                    && let Ok(result) = v1::ActionResult::decode(bytes.as_slice())
                {
                    let boot_id = self
                        .fleet
                        .hosts
                        .get(&dispatch.target_host)
                        .map(|h| h.boot_id.clone());
                    let event = finished_event(&result, boot_id);
                    let _ = self.apply_event(ci, &event, now, &mut turn);
                }
            }
        }
        turn
    }

    fn push_run(&mut self, run: CampaignRun, spec_toml: String, created_by: String) -> usize {
        let index = self.runs.len();
        self.meta.push(Meta::new(&run, spec_toml, created_by));
        self.by_id.insert(run.id.clone(), index);
        self.gauges.campaign_moved(None, run.state);
        self.runs.push(run);
        index
    }

    /// The hosts whose agents run in-flight actions (waited for after a restart).
    pub fn in_flight_targets(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| r.in_flight_dispatches())
            .map(|d| d.target_host)
            .collect()
    }

    /// Serialises what the turn touched.
    pub fn writes(&self, turn: &mut Turn) -> Result<TurnWrites, StoreError> {
        let mut writes = TurnWrites::default();
        for &ci in &turn.new_runs {
            let run = &self.runs[ci];
            let meta = &self.meta[ci];
            writes
                .new_runs
                .push((run.clone(), meta.spec_toml.clone(), meta.created_by.clone()));
        }
        let new: BTreeSet<usize> = turn.new_runs.iter().copied().collect();
        for &ci in turn.dirty_headers.iter().filter(|ci| !new.contains(ci)) {
            let run = &self.runs[ci];
            writes
                .headers
                .push((run.id.clone(), campaigns::header_json(run)?));
        }
        for &(ci, hi) in turn.dirty_hosts.iter().filter(|(ci, _)| !new.contains(ci)) {
            let run = &self.runs[ci];
            if let Some(host) = run.hosts.get(hi) {
                writes.hosts.push(CampaignHostRow {
                    campaign_id: run.id.clone(),
                    host_id: host.host_id.clone(),
                    progress_json: campaigns::host_progress_json(host)?,
                });
            }
        }
        writes.actions = std::mem::take(&mut turn.actions);
        writes.finished = std::mem::take(&mut turn.finished);
        writes.events = std::mem::take(&mut turn.events);
        for event in &mut writes.events {
            if event.hostname.is_empty() && !event.host_id.is_empty() {
                event.hostname = self.hostname(&event.host_id);
            }
        }
        writes.manual = std::mem::take(&mut turn.manual);
        writes.host_changes = std::mem::take(&mut turn.host_changes);
        writes.schedules = std::mem::take(&mut turn.schedules);
        writes.archived = std::mem::take(&mut turn.archived);
        // Kept in the turn too: handed to the notifier once durable.
        writes.deliveries = turn.deliveries.clone();
        Ok(writes)
    }

    // ---- the fleet view ----

    /// A session of `host` started (with its hello's facts) or ended.
    pub fn session_changed(&mut self, host: &str, generation: u64, facts: Option<v1::Facts>) {
        let newest = self.generations.entry(host.to_owned()).or_insert(0);
        if generation < *newest {
            return;
        }
        *newest = generation;
        match &facts {
            Some(facts) => self.gauges.facts(host, facts.reboot_required),
            None => self.gauges.touch(host),
        }
        let Some(view) = self.fleet.hosts.get_mut(host) else {
            return;
        };
        match facts {
            Some(facts) => {
                self.unit_holds.reported(host, &facts.held_units);
                view.connected = true;
                view.healthy = true;
                view.facts = Some(host_facts(&facts));
                view.boot_id = facts.boot_id;
                view.policy = facts
                    .policy
                    .map(|p| pitcrew_proto::policy::LocalPolicy::from_proto(&p));
            }
            None => {
                view.connected = false;
                view.healthy = false;
            }
        }
    }

    /// `host`'s agent is back and replayed its results: the restart's wait for it is over.
    pub fn results_replayed(&mut self, host: &str) {
        self.fleet.awaited.remove(host);
    }

    /// New facts from a live session.
    pub fn facts_changed(&mut self, host: &str, generation: u64, facts: v1::Facts) {
        if self.generations.get(host).is_some_and(|g| *g > generation) {
            return;
        }
        self.gauges.facts(host, facts.reboot_required);
        self.unit_holds.reported(host, &facts.held_units);
        if let Some(view) = self.fleet.hosts.get_mut(host) {
            view.facts = Some(host_facts(&facts));
            view.boot_id = facts.boot_id;
            view.policy = facts
                .policy
                .map(|p| pitcrew_proto::policy::LocalPolicy::from_proto(&p));
        }
    }

    /// A host enrolled (or re-enrolled): its role and labels come from the token.
    pub fn host_enrolled(&mut self, record: &HostRecord) {
        let Some(mut view) = host_view(record, false) else {
            return;
        };
        self.gauges.touch(&record.host_id);
        if let Some(old) = self.fleet.hosts.get(&record.host_id) {
            view.connected = old.connected;
            view.healthy = old.healthy;
            view.boot_id = old.boot_id.clone();
            view.policy = old.policy.clone();
            view.facts = old.facts.clone();
        }
        self.fleet.hosts.insert(record.host_id.clone(), view);
    }

    // ---- runs ----

    /// The index of the host of run `ci` an event concerns, if it concerns one.
    fn touched_host(&self, ci: usize, event: &Event) -> Option<usize> {
        let run = &self.runs[ci];
        let by_name = |name: &str| {
            self.meta[ci]
                .hosts
                .get(name)
                .copied()
                .or_else(|| run.hosts.iter().position(|h| h.hostname == name))
        };
        match event {
            Event::Decision(d) => match d {
                Decision::StartHost { host, .. }
                | Decision::ReleaseHost { host, .. }
                | Decision::FailHost { host, .. } => by_name(host),
                Decision::Dispatch(d) => by_name(&d.host),
                _ => None,
            },
            Event::ActionFinished { action_id, .. } => run.hosts.iter().position(|h| {
                h.in_flight
                    .as_ref()
                    .is_some_and(|f| f.action_id == *action_id)
            }),
            Event::HostDisconnected { host }
            | Event::HostReconnected { host }
            | Event::Retry { host }
            | Event::Skip { host }
            | Event::Release { host }
            | Event::Removed { host, .. } => by_name(host),
            Event::Pause { .. } | Event::Resume | Event::Cancel => None,
        }
    }

    /// Applies one event to run `ci`, recording what it touched.
    fn apply_event(
        &mut self,
        ci: usize,
        event: &Event,
        now_ms: i64,
        turn: &mut Turn,
    ) -> Result<(), scheduler::ApplyError> {
        let host = self.touched_host(ci, event);
        let run = &mut self.runs[ci];
        let before = HeaderKey::of(run);
        let host_before = host.and_then(|hi| run.hosts.get(hi).map(|h| (hi, h.state)));
        scheduler::apply(run, &self.fleet, event, now_ms)?;
        if let Some(hi) = host {
            turn.dirty_hosts.insert((ci, hi));
        }
        if HeaderKey::of(run) != before {
            turn.dirty_headers.insert(ci);
            self.gauges.campaign_moved(Some(before.state), run.state);
        }
        turn.campaigns_changed = true;
        self.notice_changes(ci, before.state, host_before, now_ms, turn);
        Ok(())
    }

    fn run_index(&self, id: &str) -> Result<usize, EngineError> {
        self.by_id
            .get(id)
            .copied()
            .ok_or_else(|| EngineError::UnknownCampaign(id.to_owned()))
    }

    /// Decides and applies until nothing more can be decided now (or the round limit).
    /// Returns when to wake without an event.
    pub fn decide_and_apply(&mut self, now_ms: i64, turn: &mut Turn) -> Option<i64> {
        for _ in 0..MAX_ROUNDS_PER_TURN {
            let decided = scheduler::decide(
                &self.fleet,
                self.runs.iter().filter(|r| {
                    !matches!(
                        r.state,
                        CampaignState::Completed | CampaignState::Incomplete
                    )
                }),
                now_ms,
            );
            let mut applied = 0usize;
            for decision in &decided.decisions {
                let Some(&ci) = self.by_id.get(decision.campaign()) else {
                    continue;
                };
                // A failing host's action may still be running on its agent: stop it.
                let cancel = match decision {
                    Decision::FailHost { host, .. } => self.runs[ci]
                        .host(host)
                        .and_then(|h| h.in_flight.as_ref())
                        .map(|f| (f.target_host.clone(), f.action_id.clone())),
                    _ => None,
                };
                if let Err(error) =
                    self.apply_event(ci, &Event::Decision(decision.clone()), now_ms, turn)
                {
                    tracing::warn!(message = "a decision could not be applied; deciding again", campaign = %decision.campaign(), %error);
                    break;
                }
                applied += 1;
                if let Decision::FailHost { .. } = decision {
                    // Its step got no result before its deadline.
                    self.gauges.step_finished(StepOutcome::Failed);
                }
                if let Decision::Dispatch(d) = decision {
                    let request = crate::wire::action_request(d);
                    turn.actions.push(ActionRecord {
                        action_id: d.action_id.clone(),
                        host_id: d.target_host.clone(),
                        campaign_id: d.campaign.clone(),
                        request: request.encode_to_vec(),
                        result: None,
                        created_at_ms: now_ms,
                    });
                    turn.sends.push((
                        d.target_host.clone(),
                        v1::CoordinatorMessage {
                            msg: Some(v1::coordinator_message::Msg::Action(request)),
                        },
                    ));
                }
                if let Some((host, action_id)) = cancel {
                    turn.sends.push((
                        host,
                        v1::CoordinatorMessage {
                            msg: Some(v1::coordinator_message::Msg::Cancel(v1::CancelAction {
                                action_id,
                            })),
                        },
                    ));
                }
                self.log_decision(ci, decision, turn);
            }
            let wake = decided.wake_at_ms;
            self.last = LastTurn::new(decided);
            if applied == 0 {
                return wake;
            }
        }
        // More may be decidable: come back at once, after committing and taking inputs.
        Some(now_ms)
    }

    fn hostname(&self, id: &str) -> String {
        self.fleet
            .hosts
            .get(id)
            .map(|h| h.hostname.clone())
            .unwrap_or_else(|| id.to_owned())
    }

    /// Writes a decision to the event log, in the words of the runbooks.
    fn log_decision(&self, ci: usize, decision: &Decision, turn: &mut Turn) {
        let run = &self.runs[ci];
        let id = run.id.as_str();
        let event = match decision {
            Decision::StartHost { host, slot, .. } => host_event(
                host,
                id,
                "start",
                "entering",
                format!("{} enters maintenance (slot {slot})", self.hostname(host)),
            ),
            Decision::Dispatch(d) => host_event(
                &d.host,
                id,
                &d.action_id,
                "sent",
                format!(
                    "{} on {}: {}",
                    d.step_label,
                    self.hostname(&d.target_host),
                    pitcrew_proto::actions::describe(Some(&d.action.to_proto()))
                ),
            ),
            Decision::ReleaseHost { host, .. } => host_event(
                host,
                id,
                "release",
                "running",
                format!("{} is back in service (slot released)", self.hostname(host)),
            ),
            Decision::FailHost { host, reason, .. } => host_event(
                host,
                id,
                "fail",
                "failed",
                format!(
                    "{} failed and keeps its slot: {reason}",
                    self.hostname(host)
                ),
            ),
            Decision::PauseCampaign { reason, .. } => {
                audit_event("scheduler", "", id, format!("campaign paused: {reason}"))
            }
            Decision::CompleteCampaign { .. } => {
                let count =
                    |state: HostState| run.hosts.iter().filter(|h| h.state == state).count();
                let message = if run.state == CampaignState::Completed {
                    format!("campaign completed: all {} hosts done", run.hosts.len())
                } else {
                    format!(
                        "campaign finished incomplete: {} done, {} released after failing, {} skipped",
                        count(HostState::Done),
                        count(HostState::Released),
                        count(HostState::Skipped)
                    )
                };
                audit_event("scheduler", "", id, message)
            }
            Decision::FinishCancel { .. } => {
                audit_event("scheduler", "", id, "campaign cancelled".into())
            }
        };
        turn.event(event);
    }

    /// An agent's final result for `record` (checked by the session to belong to
    /// `reporting_host`). `first_report` is false for a repeat of a stored result, which is
    /// still fed to its campaign (it may have been stored just before a crash) but not logged
    /// twice.
    pub fn on_result(
        &mut self,
        reporting_host: &str,
        record: &ActionRecord,
        result: &v1::ActionResult,
        first_report: bool,
        now_ms: i64,
        turn: &mut Turn,
    ) {
        // An operator's action that finished no longer holds its host.
        if self
            .fleet
            .operator_actions
            .remove(&result.action_id)
            .is_some()
        {
            turn.campaigns_changed = true;
        }
        let ci = self.by_id.get(&record.campaign_id).copied();
        let serviced = ci
            .and_then(|ci| {
                self.runs[ci].hosts.iter().find(|h| {
                    h.in_flight
                        .as_ref()
                        .is_some_and(|f| f.action_id == result.action_id)
                })
            })
            .map(|h| h.host_id.clone())
            .unwrap_or_else(|| reporting_host.to_owned());
        if first_report {
            turn.finished
                .push((result.action_id.clone(), result.encode_to_vec()));
            let mut message = result.message.clone();
            if !result.refused_by.is_empty() {
                message = format!("{message} (rule {})", result.refused_by);
            }
            if !result.output.is_empty() {
                message = format!("{message}\n{}", result.output.trim_end());
            }
            // A campaign step run on another host (a drain on a manager) belongs to the log
            // of the host being serviced; say where it ran.
            if serviced != reporting_host {
                message = format!("(ran on {}) {message}", self.hostname(reporting_host));
            }
            turn.event(host_event(
                &serviced,
                &record.campaign_id,
                &result.action_id,
                pitcrew_proto::actions::outcome(result.outcome),
                message,
            ));
        }
        let Some(ci) = ci else { return };
        let boot_id = self
            .fleet
            .hosts
            .get(reporting_host)
            .map(|h| h.boot_id.clone());
        match self.apply_event(ci, &finished_event(result, boot_id), now_ms, turn) {
            Ok(()) => self.gauges.step_finished(
                if crate::wire::outcome(result.outcome) == scheduler::Outcome::Succeeded {
                    StepOutcome::Succeeded
                } else {
                    StepOutcome::Failed
                },
            ),
            Err(scheduler::ApplyError::StaleResult(_)) => {}
            Err(error) => {
                tracing::warn!(message = "a result could not be applied", campaign = %record.campaign_id, %error)
            }
        }
    }

    /// The hosts a new campaign may select, as the engine sees them now.
    pub fn hosts(&self) -> Vec<HostView> {
        self.fleet.hosts.values().cloned().collect()
    }

    /// Who holds which host out of service now (campaigns, manual maintenance, operators).
    pub fn holders(&self) -> scheduler::Holders {
        scheduler::Holders::from_state(&self.fleet, &self.runs)
    }

    /// The active (not finished) run of campaign `name`, if any: its id and state.
    pub fn active_run_named(&self, name: &str) -> Option<(String, &'static str)> {
        self.runs
            .iter()
            .find(|r| !r.state.is_final() && r.spec.name == name)
            .map(|r| (r.id.clone(), r.state.as_str()))
    }

    /// Adds a new run (planned and built by the caller off the engine's loop); refused while
    /// a run of the same campaign name is active.
    pub fn insert_run(
        &mut self,
        run: CampaignRun,
        spec_toml: String,
        operator: &str,
        turn: &mut Turn,
    ) -> Result<CampaignView, EngineError> {
        if let Some((id, state)) = self.active_run_named(&run.spec.name) {
            return Err(EngineError::AlreadyRunning {
                name: run.spec.name.clone(),
                id,
                state: state.to_owned(),
            });
        }
        turn.event(audit_event(
            operator,
            "",
            &run.id,
            format!(
                "started campaign {} ({}) over {} hosts",
                run.spec.name,
                run.id,
                run.hosts.len()
            ),
        ));
        let ci = self.push_run(run, spec_toml, operator.to_owned());
        turn.new_runs.push(ci);
        turn.campaigns_changed = true;
        Ok(self.view_of(ci, REPLY_PAGE))
    }

    /// Pause, resume or cancel a campaign, audited.
    pub fn control(
        &mut self,
        operator: &str,
        id: &str,
        control: CampaignControl,
        now_ms: i64,
        turn: &mut Turn,
    ) -> Result<CampaignView, EngineError> {
        let ci = self.run_index(id)?;
        let (event, what) = match control {
            CampaignControl::Pause => (
                Event::Pause {
                    reason: format!("paused by {operator}"),
                },
                "paused the campaign",
            ),
            CampaignControl::Resume => (Event::Resume, "resumed the campaign"),
            CampaignControl::Cancel => (Event::Cancel, "cancelled the campaign"),
        };
        self.apply_event(ci, &event, now_ms, turn)?;
        turn.event(audit_event(operator, "", id, what.to_owned()));
        Ok(self.view_of(ci, REPLY_PAGE))
    }

    /// Retry, skip or release one host of a campaign, audited.
    pub fn control_host(
        &mut self,
        operator: &str,
        id: &str,
        host_id: &str,
        control: HostControl,
        now_ms: i64,
        turn: &mut Turn,
    ) -> Result<CampaignView, EngineError> {
        let ci = self.run_index(id)?;
        let name = self.hostname(host_id);
        let host = host_id.to_owned();
        let (event, what) = match control {
            HostControl::Retry => (Event::Retry { host }, format!("retried host {name}")),
            HostControl::Skip => (Event::Skip { host }, format!("skipped host {name}")),
            HostControl::Release => (
                Event::Release { host },
                format!("released host {name} by hand"),
            ),
        };
        self.apply_event(ci, &event, now_ms, turn)?;
        turn.event(audit_event(operator, host_id, id, what));
        Ok(self.view_of(ci, REPLY_PAGE))
    }

    /// `pitcrew maintenance enable|disable HOST`, following the hyper-converged runbook's
    /// states: Running → Entering → Maintenance, and Maintenance → Leaving → Running, each
    /// logged. Manual maintenance holds the same slots as campaigns (the one manager slot
    /// included).
    pub fn set_maintenance(
        &mut self,
        operator: &str,
        host_id: &str,
        enable: bool,
        now_ms: i64,
        turn: &mut Turn,
    ) -> Result<Hold, EngineError> {
        let hostname = self.hostname(host_id);
        let log = |turn: &mut Turn, result: &str, message: String| {
            turn.event(host_event(host_id, "", "maintenance", result, message));
        };
        if enable {
            let (id, entering) =
                scheduler::manual_enable(&self.fleet, self.runs.iter(), host_id, operator, now_ms)?;
            log(
                turn,
                "entering",
                format!("{hostname}: entering maintenance (enabled by {operator})"),
            );
            let maintenance = entering.entered(&hostname, now_ms)?;
            log(
                turn,
                "maintenance",
                format!("{hostname}: status is now Maintenance Mode"),
            );
            self.fleet.manual.insert(id.clone(), maintenance.clone());
            turn.manual.push((id.clone(), Some(maintenance)));
            turn.event(audit_event(
                operator,
                &id,
                "",
                format!("enabled maintenance on {hostname}"),
            ));
        } else {
            let current = self.fleet.manual.get(host_id).cloned().ok_or_else(|| {
                scheduler::ManualError::NotInMaintenance {
                    host: hostname.clone(),
                }
            })?;
            let leaving = current.leave(&hostname, now_ms)?;
            log(
                turn,
                "leaving",
                format!("{hostname}: leaving maintenance (disabled by {operator})"),
            );
            leaving.left(&hostname)?;
            self.fleet.manual.remove(host_id);
            turn.manual.push((host_id.to_owned(), None));
            log(
                turn,
                "running",
                format!("{hostname}: status is now Running"),
            );
            turn.event(audit_event(
                operator,
                host_id,
                "",
                format!("disabled maintenance on {hostname}"),
            ));
        }
        turn.campaigns_changed = true;
        // As the operator left it, before any campaign takes the host.
        Ok(self.hold(host_id))
    }

    // ---- views ----

    fn view_of(&mut self, ci: usize, page: HostPage) -> CampaignView {
        let meta = &self.meta[ci];
        campaign_view(
            &self.runs[ci],
            &meta.spec_toml,
            &meta.created_by,
            &mut self.last,
            page,
        )
    }

    pub fn view(&mut self, id: &str, page: HostPage) -> Result<CampaignView, EngineError> {
        let ci = self.run_index(id)?;
        Ok(self.view_of(ci, page))
    }

    /// Every campaign, oldest first, with counts but no hosts.
    pub fn list(&mut self) -> Vec<CampaignView> {
        (0..self.runs.len())
            .map(|ci| self.view_of(ci, HostPage::None))
            .collect()
    }

    /// The campaign invariants that do not hold in the current state (none, unless there is a
    /// bug): checked after every turn in debug builds.
    pub fn broken_invariants(&self) -> Vec<String> {
        scheduler::invariants::check(&self.fleet, &self.runs)
    }

    /// Who holds each of these hosts out of service.
    pub fn holds(&self, host_ids: &[String]) -> Vec<Hold> {
        host_ids.iter().map(|id| self.hold(id)).collect()
    }

    /// Who holds one host out of service.
    fn hold(&self, id: &str) -> Hold {
        match self.holding(id) {
            Holding::Manual(m) => Hold {
                state: m.phase.to_string(),
                holder: "manual".into(),
            },
            Holding::Campaign(run, h) => Hold {
                state: h.state.as_str().to_owned(),
                holder: run.id.clone(),
            },
            Holding::Operator(op) => Hold {
                state: "running".into(),
                holder: format!("operator {} (pitcrew do)", op.by),
            },
            Holding::Free => Hold {
                state: "running".into(),
                holder: String::new(),
            },
        }
    }

    /// Who holds one host out of service, as the state says it (for listings and metrics).
    fn holding(&self, id: &str) -> Holding<'_> {
        if let Some(m) = self.fleet.manual.get(id) {
            return Holding::Manual(m);
        }
        for (run, meta) in self.runs.iter().zip(&self.meta) {
            if matches!(
                run.state,
                CampaignState::Completed | CampaignState::Incomplete
            ) {
                continue;
            }
            if let Some(h) = meta.hosts.get(id).and_then(|&hi| run.hosts.get(hi))
                && h.state.holds_slot()
            {
                return Holding::Campaign(run, h);
            }
        }
        if let Some(op) = self
            .fleet
            .operator_actions
            .values()
            .find(|op| op.host == id)
        {
            return Holding::Operator(op);
        }
        Holding::Free
    }
}

/// Who holds a host out of service: the first of manual maintenance, a campaign (a run not
/// completed whose host holds a slot) and an operator's `pitcrew do`.
enum Holding<'a> {
    Manual(&'a ManualState),
    Campaign(&'a CampaignRun, &'a scheduler::HostRun),
    Operator(&'a scheduler::OperatorAction),
    Free,
}
