//! The persisted state of a campaign run and the one way to change it: [`apply`].
//!
//! A [`CampaignRun`] is everything the scheduler needs to resume after a coordinator crash: the
//! spec, every selected host's progress (state, step, attempt, in-flight action with its id and
//! deadline), failures and dwell times. The runtime stores it as JSON. Each event is one
//! transition that refuses an illegal source state (zincati style), so a bug or a stale
//! operator command surfaces as an error instead of corrupting the run.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::action::StepAction;
use crate::decide::{Decision, Dispatch, action_id};
use crate::fleet::{Fleet, HostView, Role};
use crate::plan::PlanError;
use crate::spec::{CampaignSpec, OnHost, Phase};
use crate::template::Vars;

/// Extra time past a step's timeout before the coordinator gives up on a result: the agent
/// enforces the timeout itself and needs a moment to report (or to reconnect and report).
pub const RESULT_GRACE_MS: i64 = 60_000;

/// Where a campaign is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignState {
    /// Created; no host started yet.
    Pending,
    Running,
    /// No new host starts; hosts in progress finish their steps.
    Paused,
    /// Every host is done.
    Completed,
    /// Finished, but not every host is done: some were released by hand after failing, or
    /// skipped. Never shown as success.
    Incomplete,
    Cancelled,
}

impl CampaignState {
    /// Whether the run has ended (nothing will change it any more).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CampaignState::Completed | CampaignState::Incomplete | CampaignState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Pending => "pending",
            CampaignState::Running => "running",
            CampaignState::Paused => "paused",
            CampaignState::Completed => "completed",
            CampaignState::Incomplete => "incomplete",
            CampaignState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for CampaignState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host's state within one campaign. Entering, Maintenance and Leaving follow the
/// hyper-converged runbook's node states; Failed keeps the slot (campaign invariant *Gate before release*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Pending,
    /// Pre-gates and `before` steps (backup, drain).
    Entering,
    /// `main` steps (patch, reboot).
    Maintenance,
    /// `after` steps and post-gates (undrain, health).
    Leaving,
    /// Every step and post-gate passed.
    Done,
    Failed,
    /// Failed, then released by an operator: out of the campaign's way, not done.
    Released,
    /// Skipped by an operator (before starting, or after failing): not done.
    Skipped,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Pending => "pending",
            HostState::Entering => "entering",
            HostState::Maintenance => "maintenance",
            HostState::Leaving => "leaving",
            HostState::Done => "done",
            HostState::Failed => "failed",
            HostState::Released => "released",
            HostState::Skipped => "skipped",
        }
    }

    /// Whether the host is out of service on behalf of its campaign (it holds a slot).
    pub fn holds_slot(self) -> bool {
        matches!(
            self,
            HostState::Entering | HostState::Maintenance | HostState::Leaving | HostState::Failed
        )
    }

    /// Whether the host is working through its steps.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            HostState::Entering | HostState::Maintenance | HostState::Leaving
        )
    }

    /// Whether the host needs nothing more from this campaign (done or not).
    pub fn finished(self) -> bool {
        matches!(
            self,
            HostState::Done | HostState::Released | HostState::Skipped
        )
    }

    fn for_phase(phase: Phase) -> HostState {
        match phase {
            Phase::PreGate | Phase::Before => HostState::Entering,
            Phase::Main => HostState::Maintenance,
            Phase::After | Phase::PostGate => HostState::Leaving,
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of one host, rendered for it (variables replaced) when the run was created.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunStep {
    pub phase: Phase,
    /// Index within its phase (part of the action id).
    pub index: usize,
    pub label: String,
    pub action: StepAction,
    pub timeout_ms: i64,
    pub on: Option<OnHost>,
    pub retries: u32,
    pub retry_delay_ms: i64,
}

/// The action a host is waiting on. Persisted before it is sent (write-ahead), so after a
/// crash the runtime re-sends the same id and the agent answers from its journal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InFlight {
    pub action_id: String,
    /// The host the action runs on (the serviced host, or the one named by `on`).
    pub target_host: String,
    pub dispatched_at_ms: i64,
    /// After this instant without a result the host fails (step timeout plus a grace).
    pub deadline_ms: i64,
    /// For a reboot step: the serviced host's boot id when it was sent, to tell a real reboot.
    pub boot_id_before: Option<String>,
}

/// A pre-gate that failed: the host went back to Pending (nothing was changed on it) and
/// is tried again at `retry_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GateFailure {
    pub gate: String,
    pub message: String,
    pub retry_at_ms: i64,
}

/// Gap before a failed pre-gate is tried again, when the gate gives no `retry_delay`.
pub const GATE_RETRY_MS: i64 = 30_000;

/// Progress of one host in one campaign.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostRun {
    pub host_id: String,
    pub hostname: String,
    pub role: Role,
    pub cluster: String,
    pub state: HostState,
    /// `worker-pool#k` or `manager:<cluster>` while the host holds one.
    pub slot: Option<String>,
    pub steps: Vec<RunStep>,
    /// Index into `steps` of the step to run next (or in flight).
    pub step: usize,
    /// Bumped each time anything is re-run (operator retry, automatic retry, a new try after
    /// a failed pre-gate) so an action id is never reused for a different execution.
    pub attempt: u32,
    /// Automatic retries used on the current step.
    pub step_tries: u32,
    pub in_flight: Option<InFlight>,
    /// An automatic retry of the current step waits until then.
    pub retry_at_ms: Option<i64>,
    pub gate_failure: Option<GateFailure>,
    /// Set when a reboot really happened: the boot id before it. Later steps (post-gates)
    /// wait until the fleet reports this host on a different boot id.
    pub pre_reboot_boot_id: Option<String>,
    pub last_error: Option<String>,
    /// Whether this host has failed at least once in this run: the error budget counts hosts,
    /// not attempts.
    #[serde(default)]
    pub ever_failed: bool,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// When the agent of this host was last seen going away while the host was in progress.
    pub disconnected_since_ms: Option<i64>,
}

impl HostRun {
    /// The step in flight or next, if any.
    pub fn current_step(&self) -> Option<&RunStep> {
        self.steps.get(self.step)
    }

    fn illegal(&self, what: &str) -> ApplyError {
        ApplyError::IllegalTransition {
            host: Some(self.hostname.clone()),
            what: what.to_owned(),
            from: self.state.to_string(),
        }
    }
}

/// A campaign as persisted: the spec and every host's progress.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CampaignRun {
    pub id: String,
    pub spec: CampaignSpec,
    pub state: CampaignState,
    /// Selected hosts in plan order (role order, cluster, leader last, hostname).
    pub hosts: Vec<HostRun>,
    /// Hosts that failed during this run (each host once, however often it failed).
    pub failures: u32,
    /// Failures the operator accepted by resuming after the error budget paused the run.
    pub failures_acknowledged: u32,
    /// When the last host of each role was released, for `dwell`.
    pub last_release_ms: BTreeMap<Role, i64>,
    pub pause_reason: Option<String>,
    /// Cancel asked: no new host starts; the run is Cancelled once none is in progress.
    pub cancel_requested: bool,
    pub created_at_ms: i64,
    /// Where each host is in `hosts`, by id and by hostname: every event names its host, and a
    /// scan of `hosts` per event made a whole campaign quadratic in its size. Derived data:
    /// never stored, built on first use, and checked against `hosts` at every use.
    #[serde(skip)]
    index: HostIndex,
}

/// `hosts` positions by host id and hostname (see [`CampaignRun`]). Equal, and hashed alike,
/// whatever it holds: it says nothing a run's own fields do not.
#[derive(Debug, Clone, Default)]
struct HostIndex(std::sync::OnceLock<std::collections::HashMap<String, usize>>);

impl PartialEq for HostIndex {
    fn eq(&self, _: &HostIndex) -> bool {
        true
    }
}

impl Eq for HostIndex {}

impl std::hash::Hash for HostIndex {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl CampaignRun {
    /// The position of the host named `name` (id or hostname): from the index when it still
    /// agrees with `hosts`, else by a scan.
    fn position(&self, name: &str) -> Option<usize> {
        let index = self.index.0.get_or_init(|| {
            let mut index = std::collections::HashMap::with_capacity(self.hosts.len() * 2);
            // Hostnames first, so that an id equal to another host's hostname finds the id,
            // as the scan below does (it takes the first host matching either).
            for (i, h) in self.hosts.iter().enumerate().rev() {
                index.insert(h.hostname.clone(), i);
                index.insert(h.host_id.clone(), i);
            }
            index
        });
        let named = |h: &HostRun| h.host_id == name || h.hostname == name;
        match index.get(name) {
            Some(&i) if self.hosts.get(i).is_some_and(named) => Some(i),
            _ => self.hosts.iter().position(named),
        }
    }

    /// Creates a run: selects the hosts, orders them and renders every step for each.
    pub fn new(
        id: &str,
        spec: &CampaignSpec,
        hosts: &[HostView],
        now_ms: i64,
    ) -> Result<CampaignRun, PlanError> {
        for name in &spec.select.hosts {
            if !hosts.iter().any(|h| h.is_named(name)) {
                return Err(PlanError::UnknownHost(name.clone()));
            }
        }
        let mut selected: Vec<&HostView> =
            hosts.iter().filter(|h| spec.select.matches(h)).collect();
        if selected.is_empty() {
            let candidates = hosts
                .iter()
                .filter(|h| spec.select.matches_ignoring_facts(h))
                .count();
            if candidates > 0 && !spec.select.when.is_empty() {
                return Err(PlanError::NoFactsMatch {
                    candidates,
                    conditions: spec.select.when.iter().map(|c| c.to_string()).collect(),
                });
            }
            return Err(PlanError::NothingSelected);
        }
        selected.sort_by_key(|h| {
            (
                spec.order.iter().position(|r| *r == h.role),
                h.cluster().to_owned(),
                is_leader(spec, h),
                h.hostname.clone(),
                h.id.clone(),
            )
        });
        let mut runs = Vec::with_capacity(selected.len());
        for h in selected {
            let vars = Vars {
                hostname: &h.hostname,
                host_id: &h.id,
                role: h.role.as_str(),
                labels: &h.labels,
                campaign_name: &spec.name,
                campaign_id: id,
            };
            let mut steps = Vec::new();
            for (phase, index, s) in spec.flat_steps(h.role) {
                let action =
                    crate::action::render(&s.action, &vars).map_err(|e| PlanError::Template {
                        host: h.hostname.clone(),
                        line: s.line,
                        error: e.to_string(),
                    })?;
                steps.push(RunStep {
                    phase,
                    index,
                    label: s.label(),
                    action,
                    timeout_ms: s.timeout_ms,
                    on: s.on.clone(),
                    retries: s.retries,
                    retry_delay_ms: s.retry_delay_ms,
                });
            }
            runs.push(HostRun {
                host_id: h.id.clone(),
                hostname: h.hostname.clone(),
                role: h.role,
                cluster: h.cluster().to_owned(),
                state: HostState::Pending,
                slot: None,
                steps,
                step: 0,
                attempt: 1,
                step_tries: 0,
                in_flight: None,
                retry_at_ms: None,
                gate_failure: None,
                pre_reboot_boot_id: None,
                last_error: None,
                ever_failed: false,
                started_at_ms: None,
                finished_at_ms: None,
                disconnected_since_ms: None,
            });
        }
        Ok(CampaignRun {
            id: id.to_owned(),
            spec: spec.clone(),
            state: CampaignState::Pending,
            hosts: runs,
            failures: 0,
            failures_acknowledged: 0,
            last_release_ms: BTreeMap::new(),
            pause_reason: None,
            cancel_requested: false,
            created_at_ms: now_ms,
            index: HostIndex::default(),
        })
    }

    /// Finds a host of this run by id or hostname.
    pub fn host(&self, name: &str) -> Option<&HostRun> {
        self.position(name).map(|i| &self.hosts[i])
    }

    fn host_mut(&mut self, name: &str) -> Result<&mut HostRun, ApplyError> {
        match self.position(name) {
            Some(i) => Ok(&mut self.hosts[i]),
            None => Err(ApplyError::UnknownHost(name.to_owned())),
        }
    }

    /// Failures not yet accepted by an operator, which the error budget is checked against.
    pub fn unacknowledged_failures(&self) -> u32 {
        self.failures.saturating_sub(self.failures_acknowledged)
    }

    /// Whether the run can still change (not Completed or Cancelled).
    pub fn is_active(&self) -> bool {
        !self.state.is_final()
    }

    /// How many hosts may fail before the campaign pauses, for this run's selection.
    pub fn allowed_failures(&self) -> u32 {
        self.spec.max_failures.allowed(self.hosts.len())
    }

    /// Every action this run is waiting on, as the dispatch to (re-)send. After a
    /// coordinator restart, or when an agent reconnects, the runtime re-sends these: the ids
    /// are the persisted ones, so an agent that already ran one answers from its journal.
    pub fn in_flight_dispatches(&self) -> Vec<Dispatch> {
        self.hosts
            .iter()
            .filter_map(|h| {
                let f = h.in_flight.as_ref()?;
                let s = h.current_step()?;
                Some(Dispatch {
                    campaign: self.id.clone(),
                    host: h.host_id.clone(),
                    target_host: f.target_host.clone(),
                    action_id: f.action_id.clone(),
                    phase: s.phase,
                    step: h.step,
                    step_label: s.label.clone(),
                    action: s.action.clone(),
                    timeout_ms: s.timeout_ms,
                })
            })
            .collect()
    }
}

/// Whether `host` is its cluster's leader under this spec's `leader_label`.
pub fn is_leader(spec: &CampaignSpec, host: &HostView) -> bool {
    host.role == Role::Manager
        && host
            .labels
            .get(&spec.leader_label)
            .is_some_and(|v| v == "true")
}

/// How an action ended, as the agent reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Refused,
    TimedOut,
    Cancelled,
    Interrupted,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::TimedOut => "timed out",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// Everything that changes a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// A decision from [`crate::decide::decide`], applied before it is carried out.
    Decision(Decision),
    /// An agent's result. For a reboot step, `boot_id` is the boot id the host reported when
    /// it came back (the agent reports the reboot's result after reconnecting).
    ActionFinished {
        action_id: String,
        outcome: Outcome,
        #[serde(default)]
        message: String,
        #[serde(default)]
        boot_id: Option<String>,
    },
    HostDisconnected {
        host: String,
    },
    HostReconnected {
        host: String,
    },
    Pause {
        reason: String,
    },
    Resume,
    Cancel,
    Retry {
        host: String,
    },
    Skip {
        host: String,
    },
    Release {
        host: String,
    },
    /// The host left the fleet (`pitcrew hosts remove`): if it was not finished it ends
    /// skipped (it was not serviced) with `reason`, and its slot is free. A finished host keeps
    /// its outcome.
    Removed {
        host: String,
        reason: String,
    },
}

/// Why an event could not be applied. Nothing changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("decision for campaign {got} applied to campaign {expected}")]
    WrongCampaign { expected: String, got: String },
    #[error("host {0} is not part of this campaign")]
    UnknownHost(String),
    #[error("{}{what} is not possible while {from}", host.as_ref().map(|h| format!("{h}: ")).unwrap_or_default())]
    IllegalTransition {
        host: Option<String>,
        what: String,
        from: String,
    },
    #[error(
        "result for action {0}, which no host of this campaign is waiting on (late or repeated)"
    )]
    StaleResult(String),
    #[error("dispatch {got} does not match the expected action {expected}")]
    UnexpectedAction { expected: String, got: String },
}

impl ApplyError {
    /// A stable machine-readable kind, for mapping to API errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ApplyError::WrongCampaign { .. } => "wrong_campaign",
            ApplyError::UnknownHost(_) => "unknown_host",
            ApplyError::IllegalTransition { .. } => "illegal_transition",
            ApplyError::StaleResult(_) => "stale_result",
            ApplyError::UnexpectedAction { .. } => "unexpected_action",
        }
    }
}

fn campaign_illegal(run: &CampaignRun, what: &str) -> ApplyError {
    ApplyError::IllegalTransition {
        host: None,
        what: what.to_owned(),
        from: format!("the campaign is {}", run.state),
    }
}

/// Applies one event to a run. On error nothing was changed.
pub fn apply(
    run: &mut CampaignRun,
    fleet: &Fleet,
    event: &Event,
    now_ms: i64,
) -> Result<(), ApplyError> {
    match event {
        Event::Decision(d) => apply_decision(run, fleet, d, now_ms),
        Event::ActionFinished {
            action_id,
            outcome,
            message,
            boot_id,
        } => finished(
            run,
            action_id,
            *outcome,
            message,
            boot_id.as_deref(),
            now_ms,
        ),
        Event::HostDisconnected { host } => {
            if let Some(h) = run
                .hosts
                .iter_mut()
                .find(|h| h.host_id == *host || h.hostname == *host)
                && h.state.in_progress()
                && h.disconnected_since_ms.is_none()
            {
                h.disconnected_since_ms = Some(now_ms);
            }
            Ok(())
        }
        Event::HostReconnected { host } => {
            if let Some(h) = run
                .hosts
                .iter_mut()
                .find(|h| h.host_id == *host || h.hostname == *host)
            {
                h.disconnected_since_ms = None;
            }
            Ok(())
        }
        Event::Pause { reason } => {
            if !matches!(run.state, CampaignState::Pending | CampaignState::Running) {
                return Err(campaign_illegal(run, "pause"));
            }
            run.state = CampaignState::Paused;
            run.pause_reason = Some(reason.clone());
            Ok(())
        }
        Event::Resume => {
            if run.state != CampaignState::Paused {
                return Err(campaign_illegal(run, "resume"));
            }
            run.state = if run.hosts.iter().any(|h| h.started_at_ms.is_some()) {
                CampaignState::Running
            } else {
                CampaignState::Pending
            };
            run.pause_reason = None;
            // Resuming accepts the failures so far: the budget counts from here.
            run.failures_acknowledged = run.failures;
            Ok(())
        }
        Event::Cancel => {
            if !run.is_active() {
                return Err(campaign_illegal(run, "cancel"));
            }
            run.cancel_requested = true;
            if !run.hosts.iter().any(|h| h.state.in_progress()) {
                run.state = CampaignState::Cancelled;
            }
            Ok(())
        }
        Event::Retry { host } => {
            let h = run.host_mut(host)?;
            match h.state {
                HostState::Failed => {
                    let phase = h.current_step().map(|s| s.phase).unwrap_or(Phase::PostGate);
                    h.state = HostState::for_phase(phase);
                    h.attempt += 1;
                    h.step_tries = 0;
                    h.retry_at_ms = None;
                    h.last_error = None;
                    h.finished_at_ms = None;
                    Ok(())
                }
                HostState::Pending if h.gate_failure.is_some() => {
                    // The operator fixed what the pre-gate complained about: try now.
                    h.gate_failure = None;
                    Ok(())
                }
                _ => Err(h.illegal("retry (only a failed host, or one whose pre-gate failed)")),
            }
        }
        Event::Skip { host } => {
            let h = run.host_mut(host)?;
            match h.state {
                HostState::Pending | HostState::Failed => {
                    h.state = HostState::Skipped;
                    h.slot = None;
                    h.in_flight = None;
                    h.finished_at_ms = Some(now_ms);
                    Ok(())
                }
                _ => Err(h.illegal("skip (only a pending or failed host)")),
            }
        }
        Event::Removed { host, reason } => {
            let h = run.host_mut(host)?;
            if !h.state.finished() {
                h.state = HostState::Skipped;
                h.slot = None;
                h.in_flight = None;
                h.retry_at_ms = None;
                h.pre_reboot_boot_id = None;
                h.last_error = Some(reason.clone());
                h.finished_at_ms = Some(now_ms);
            }
            Ok(())
        }
        Event::Release { host } => {
            let role = {
                let h = run.host_mut(host)?;
                if h.state != HostState::Failed {
                    return Err(h.illegal("release (only a failed host)"));
                }
                h.state = HostState::Released;
                h.slot = None;
                h.in_flight = None;
                h.finished_at_ms = Some(now_ms);
                h.role
            };
            run.last_release_ms.insert(role, now_ms);
            Ok(())
        }
    }
}

fn apply_decision(
    run: &mut CampaignRun,
    fleet: &Fleet,
    decision: &Decision,
    now_ms: i64,
) -> Result<(), ApplyError> {
    if decision.campaign() != run.id {
        return Err(ApplyError::WrongCampaign {
            expected: run.id.clone(),
            got: decision.campaign().to_owned(),
        });
    }
    match decision {
        Decision::StartHost { host, slot, .. } => {
            if !matches!(run.state, CampaignState::Pending | CampaignState::Running)
                || run.cancel_requested
            {
                return Err(campaign_illegal(run, "starting a host"));
            }
            let h = run.host_mut(host)?;
            if h.state != HostState::Pending {
                return Err(h.illegal("start"));
            }
            h.state = h
                .steps
                .first()
                .map(|s| HostState::for_phase(s.phase))
                .unwrap_or(HostState::Leaving);
            h.slot = Some(slot.clone());
            h.step = 0;
            h.step_tries = 0;
            h.gate_failure = None;
            h.pre_reboot_boot_id = None;
            h.last_error = None;
            h.started_at_ms = Some(now_ms);
            h.finished_at_ms = None;
            run.state = CampaignState::Running;
            Ok(())
        }
        Decision::Dispatch(d) => {
            let h = run.host_mut(&d.host)?;
            if !h.state.in_progress() || h.in_flight.is_some() {
                return Err(h.illegal("sending an action"));
            }
            let Some(step) = h.steps.get(h.step) else {
                return Err(h.illegal("sending an action after the last step"));
            };
            let expected = action_id(&d.campaign, &h.host_id, step.phase, step.index, h.attempt);
            if d.step != h.step || d.action_id != expected {
                return Err(ApplyError::UnexpectedAction {
                    expected,
                    got: d.action_id.clone(),
                });
            }
            let boot_id_before = step.action.is_reboot().then(|| {
                fleet
                    .hosts
                    .get(&h.host_id)
                    .map(|v| v.boot_id.clone())
                    .unwrap_or_default()
            });
            h.state = HostState::for_phase(step.phase);
            h.retry_at_ms = None;
            h.in_flight = Some(InFlight {
                action_id: d.action_id.clone(),
                target_host: d.target_host.clone(),
                dispatched_at_ms: now_ms,
                deadline_ms: now_ms
                    .saturating_add(step.timeout_ms)
                    .saturating_add(RESULT_GRACE_MS),
                boot_id_before,
            });
            Ok(())
        }
        Decision::ReleaseHost { host, .. } => {
            let role = {
                let h = run.host_mut(host)?;
                if !h.state.in_progress() || h.in_flight.is_some() || h.step < h.steps.len() {
                    return Err(h.illegal("release before every step and post-gate passed"));
                }
                h.state = HostState::Done;
                h.slot = None;
                h.finished_at_ms = Some(now_ms);
                h.role
            };
            run.last_release_ms.insert(role, now_ms);
            Ok(())
        }
        Decision::FailHost { host, reason, .. } => {
            let h = run.host_mut(host)?;
            if !h.state.in_progress() {
                return Err(h.illegal("failing"));
            }
            h.state = HostState::Failed;
            h.in_flight = None;
            h.last_error = Some(reason.clone());
            h.finished_at_ms = Some(now_ms);
            let first = !std::mem::replace(&mut h.ever_failed, true);
            run.failures += u32::from(first);
            Ok(())
        }
        Decision::PauseCampaign { reason, .. } => {
            if !matches!(run.state, CampaignState::Pending | CampaignState::Running) {
                return Err(campaign_illegal(run, "pause"));
            }
            run.state = CampaignState::Paused;
            run.pause_reason = Some(reason.clone());
            Ok(())
        }
        Decision::CompleteCampaign { .. } => {
            if !run.is_active() || !run.hosts.iter().all(|h| h.state.finished()) {
                return Err(campaign_illegal(
                    run,
                    "completing while a host is not done, released or skipped",
                ));
            }
            // Completed means every host was serviced; anything less says so.
            run.state = if run.hosts.iter().all(|h| h.state == HostState::Done) {
                CampaignState::Completed
            } else {
                CampaignState::Incomplete
            };
            run.pause_reason = None;
            Ok(())
        }
        Decision::FinishCancel { .. } => {
            if !run.is_active()
                || !run.cancel_requested
                || run.hosts.iter().any(|h| h.state.in_progress())
            {
                return Err(campaign_illegal(
                    run,
                    "finishing a cancel while hosts are in progress",
                ));
            }
            run.state = CampaignState::Cancelled;
            Ok(())
        }
    }
}

fn finished(
    run: &mut CampaignRun,
    action_id: &str,
    outcome: Outcome,
    message: &str,
    boot_id: Option<&str>,
    now_ms: i64,
) -> Result<(), ApplyError> {
    let Some(h) = run.hosts.iter_mut().find(|h| {
        h.in_flight
            .as_ref()
            .is_some_and(|f| f.action_id == action_id)
    }) else {
        return Err(ApplyError::StaleResult(action_id.to_owned()));
    };
    let Some(flight) = h.in_flight.take() else {
        return Err(ApplyError::StaleResult(action_id.to_owned()));
    };
    let Some(step) = h.steps.get(h.step).cloned() else {
        return Err(ApplyError::StaleResult(action_id.to_owned()));
    };
    let mut outcome = outcome;
    let mut message = message.to_owned();
    if outcome == Outcome::Succeeded
        && let StepAction::Reboot(reboot) = &step.action
    {
        let before = flight.boot_id_before.clone().unwrap_or_default();
        match boot_id {
            Some(new) if !new.is_empty() && new != before => {
                h.pre_reboot_boot_id = Some(before);
            }
            // Nothing required a reboot: the agent succeeded without one.
            _ if reboot.only_if_required => {}
            _ => {
                outcome = Outcome::Failed;
                message = format!(
                    "the reboot reported success but the host is still on boot id {:?}",
                    boot_id.unwrap_or(&before)
                );
            }
        }
    }
    if outcome == Outcome::Succeeded {
        h.step += 1;
        h.step_tries = 0;
        h.last_error = None;
        if let Some(next) = h.steps.get(h.step) {
            h.state = HostState::for_phase(next.phase);
        }
        return Ok(());
    }
    let error = format!(
        "step {:?} ({} {}) on {}: {}{}",
        step.label,
        step.phase,
        step.index + 1,
        flight.target_host,
        outcome.as_str(),
        if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        }
    );
    // A refusal is the host's policy speaking; trying again cannot change the answer.
    if outcome != Outcome::Refused && h.step_tries < step.retries {
        h.step_tries += 1;
        h.attempt += 1;
        h.retry_at_ms = Some(now_ms.saturating_add(step.retry_delay_ms));
        h.last_error = Some(error);
        return Ok(());
    }
    if step.phase == Phase::PreGate {
        // Nothing was done to the host yet: give the slot back and try again later.
        h.state = HostState::Pending;
        h.slot = None;
        h.step = 0;
        h.step_tries = 0;
        h.attempt += 1;
        h.gate_failure = Some(GateFailure {
            gate: step.label.clone(),
            message: error.clone(),
            retry_at_ms: now_ms.saturating_add(step.retry_delay_ms.max(GATE_RETRY_MS)),
        });
        h.last_error = Some(error);
        return Ok(());
    }
    h.state = HostState::Failed;
    h.last_error = Some(error);
    h.finished_at_ms = Some(now_ms);
    let first = !std::mem::replace(&mut h.ever_failed, true);
    run.failures += u32::from(first);
    Ok(())
}
