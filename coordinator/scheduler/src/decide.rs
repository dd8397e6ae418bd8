//! The pure scheduling decision: given the fleet, every campaign run as persisted and the
//! time, what should happen next, and why everything else waits.
//!
//! [`decide`] looks at ALL campaigns at once (and at manual maintenance) so the one manager
//! slot per cluster is shared by everyone. It never changes anything: the runtime applies each
//! [`Decision`] to the persisted run with [`crate::run::apply`] (write-ahead) and only then
//! carries it out. Deciding twice over the same state gives the same answer, so a crash between
//! deciding and persisting loses nothing.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::action::StepAction;
use crate::fleet::{Fleet, HostView, Role};
use crate::run::{CampaignRun, CampaignState, HostRun, HostState, is_leader};
use crate::spec::{FailureBudget, OnHost, Phase};
use crate::window::{self, fmt_ms};

/// The id of one execution of one step: `campaign:host:phase-index:aN` (only characters the
/// agent accepts in a journal file name).
///
/// It depends only on persisted state, so re-sending after a coordinator crash reuses it and
/// the agent answers from its journal instead of running the step again (at-most-once). The
/// attempt number changes whenever a step is deliberately run again (retry), which is what
/// makes a retry a new execution.
pub fn action_id(campaign: &str, host: &str, phase: Phase, index: usize, attempt: u32) -> String {
    format!("{campaign}:{host}:{}-{index}:a{attempt}", phase.as_str())
}

/// Send one action to one agent on behalf of a serviced host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    pub campaign: String,
    /// The host being serviced (whose step this is).
    pub host: String,
    /// The host whose agent runs the action (differs for `on = ...` steps).
    pub target_host: String,
    pub action_id: String,
    pub phase: Phase,
    /// Index into the host's steps.
    pub step: usize,
    pub step_label: String,
    pub action: StepAction,
    pub timeout_ms: i64,
}

/// One thing the runtime should do. Apply it to the run (and persist) before doing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum Decision {
    /// Take `host` out of service in `slot` (it becomes Entering).
    StartHost {
        campaign: String,
        host: String,
        slot: String,
    },
    Dispatch(Dispatch),
    /// Every step and post-gate passed: the host is Done and its slot free.
    ReleaseHost {
        campaign: String,
        host: String,
    },
    /// The in-flight step got no result in time; the host fails and keeps its slot.
    FailHost {
        campaign: String,
        host: String,
        reason: String,
    },
    /// The error budget is spent.
    PauseCampaign {
        campaign: String,
        reason: String,
    },
    CompleteCampaign {
        campaign: String,
    },
    /// A cancel asked earlier takes effect: no host is in progress any more.
    FinishCancel {
        campaign: String,
    },
}

impl Decision {
    /// The campaign this decision belongs to.
    pub fn campaign(&self) -> &str {
        match self {
            Decision::StartHost { campaign, .. }
            | Decision::ReleaseHost { campaign, .. }
            | Decision::FailHost { campaign, .. }
            | Decision::PauseCampaign { campaign, .. }
            | Decision::CompleteCampaign { campaign }
            | Decision::FinishCancel { campaign } => campaign,
            Decision::Dispatch(d) => &d.campaign,
        }
    }
}

/// Who holds a host out of service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Holder {
    Campaign(String),
    Manual,
    /// An operator's disruptive `pitcrew do` in flight on the host.
    Operator {
        by: String,
        action: String,
    },
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Campaign(id) => write!(f, "campaign {id}"),
            Holder::Manual => f.write_str("manual maintenance"),
            Holder::Operator { by, action } => {
                write!(f, "operator {by}'s pitcrew do (action {action})")
            }
        }
    }
}

/// Why a host or a campaign waits. Always shown; never a silent wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "blocker")]
pub enum Blocker {
    /// Every slot it could take is held (by these hosts).
    NoSlot {
        slot: String,
        held_by: Vec<String>,
    },
    WindowClosed {
        opens_at_ms: Option<i64>,
    },
    /// A pre-gate failed; tried again at `retry_at_ms`.
    GateFailing {
        gate: String,
        message: String,
        retry_at_ms: i64,
    },
    /// Another manager of the cluster is not connected and healthy.
    QuorumGuard {
        manager: String,
        why: String,
    },
    Paused {
        reason: String,
    },
    ErrorBudgetSpent {
        failures: u32,
        max_failures: u32,
    },
    /// The earlier role still has hosts not done or skipped.
    WaitingForRole {
        role: Role,
        remaining: usize,
    },
    /// The host is out of service for someone else.
    HeldElsewhere {
        by: Holder,
    },
    /// The cluster leader goes after every other manager of its cluster.
    LeaderLast {
        cluster: String,
    },
    Dwell {
        until_ms: i64,
    },
    AgentDisconnected {
        host: String,
    },
    /// A step's `on` selector matches no usable host right now.
    NoTarget {
        step: String,
        selector: String,
    },
    /// After a reboot the host has not yet come back on a new boot id.
    AwaitingReboot {
        host: String,
    },
    /// An automatic retry of a failed step waits until then.
    RetryAt {
        step: String,
        at_ms: i64,
    },
    /// The host failed and keeps its slot until an operator retries, skips or releases it.
    HostFailed {
        error: String,
    },
    /// Cancel asked; waiting for hosts in progress to finish.
    Cancelling {
        in_progress: usize,
    },
}

impl Blocker {
    /// A stable machine-readable kind (`-o json`, metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Blocker::NoSlot { .. } => "no_slot",
            Blocker::WindowClosed { .. } => "window_closed",
            Blocker::GateFailing { .. } => "gate_failing",
            Blocker::QuorumGuard { .. } => "quorum_guard",
            Blocker::Paused { .. } => "paused",
            Blocker::ErrorBudgetSpent { .. } => "error_budget_spent",
            Blocker::WaitingForRole { .. } => "waiting_for_role",
            Blocker::HeldElsewhere { .. } => "held_elsewhere",
            Blocker::LeaderLast { .. } => "leader_last",
            Blocker::Dwell { .. } => "dwell",
            Blocker::AgentDisconnected { .. } => "agent_disconnected",
            Blocker::NoTarget { .. } => "no_target",
            Blocker::AwaitingReboot { .. } => "awaiting_reboot",
            Blocker::RetryAt { .. } => "retry_at",
            Blocker::HostFailed { .. } => "host_failed",
            Blocker::Cancelling { .. } => "cancelling",
        }
    }
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::NoSlot { slot, held_by } => {
                write!(f, "no slot: {slot} held by {}", held_by.join(", "))
            }
            Blocker::WindowClosed { opens_at_ms } => match opens_at_ms {
                Some(t) => write!(f, "window closed (opens at {})", fmt_ms(*t)),
                None => f.write_str("window closed (no window opens again)"),
            },
            Blocker::GateFailing {
                gate,
                message,
                retry_at_ms,
            } => write!(
                f,
                "gate {gate:?} failing: {message} (next try at {})",
                fmt_ms(*retry_at_ms)
            ),
            Blocker::QuorumGuard { manager, why } => {
                write!(f, "quorum guard: manager {manager} is {why}")?;
                // A dead or decommissioned manager would block its cluster forever: say how
                // to take it out of the guard.
                if why == QUORUM_DISCONNECTED {
                    write!(
                        f,
                        " (if it is gone for good: pitcrew hosts remove {manager})"
                    )?;
                }
                Ok(())
            }
            Blocker::Paused { reason } => write!(f, "paused: {reason}"),
            Blocker::ErrorBudgetSpent {
                failures,
                max_failures,
            } => write!(
                f,
                "error budget spent ({failures} failures, max {max_failures})"
            ),
            Blocker::WaitingForRole { role, remaining } => write!(
                f,
                "waiting for earlier role: {remaining} {role} host(s) not done yet"
            ),
            Blocker::HeldElsewhere { by } => write!(f, "held by {by}"),
            Blocker::LeaderLast { cluster } => write!(
                f,
                "leader goes last: other managers of cluster {cluster:?} first"
            ),
            Blocker::Dwell { until_ms } => write!(f, "dwell until {}", fmt_ms(*until_ms)),
            Blocker::AgentDisconnected { host } => write!(f, "agent of {host} disconnected"),
            Blocker::NoTarget { step, selector } => write!(
                f,
                "step {step:?}: no connected healthy host matches {selector}"
            ),
            Blocker::AwaitingReboot { host } => {
                write!(f, "waiting for {host} to come back on a new boot id")
            }
            Blocker::RetryAt { step, at_ms } => {
                write!(f, "step {step:?} failed; retrying at {}", fmt_ms(*at_ms))
            }
            Blocker::HostFailed { error } => write!(
                f,
                "failed (keeps its slot until retry, skip or release): {error}"
            ),
            Blocker::Cancelling { in_progress } => write!(
                f,
                "cancelling: waiting for {in_progress} host(s) in progress to finish"
            ),
        }
    }
}

/// A blocker and what it blocks: a host (by id) or the whole campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockerEntry {
    pub campaign: String,
    pub host: Option<String>,
    pub blocker: Blocker,
}

/// The output of [`decide`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decisions {
    pub decisions: Vec<Decision>,
    pub blockers: Vec<BlockerEntry>,
    /// The earliest instant at which deciding again could give a different answer without
    /// any event (a deadline, a retry, a dwell end, a window opening). Sleep until then.
    pub wake_at_ms: Option<i64>,
}

impl Decisions {
    /// The blocker of one host of one campaign, if it waits.
    pub fn blocker_for(&self, campaign: &str, host: &str) -> Option<&Blocker> {
        self.blockers
            .iter()
            .find(|b| b.campaign == campaign && b.host.as_deref() == Some(host))
            .map(|b| &b.blocker)
    }

    /// The campaign-wide blocker, if the campaign as a whole waits.
    pub fn campaign_blocker(&self, campaign: &str) -> Option<&Blocker> {
        self.blockers
            .iter()
            .find(|b| b.campaign == campaign && b.host.is_none())
            .map(|b| &b.blocker)
    }

    fn block(&mut self, campaign: &str, host: Option<&str>, blocker: Blocker) {
        self.blockers.push(BlockerEntry {
            campaign: campaign.to_owned(),
            host: host.map(str::to_owned),
            blocker,
        });
    }

    fn wake(&mut self, at: i64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(at, |w| w.min(at)));
    }
}

/// Who holds which host out of service, across every campaign and manual maintenance.
#[derive(Debug)]
struct Held {
    holder: Holder,
    role: Role,
    cluster: String,
    hostname: String,
    slot: Option<String>,
}

#[derive(Debug, Default)]
struct Occupancy {
    /// host id → who holds it, its role, cluster, hostname and slot.
    held: BTreeMap<String, Held>,
}

impl Occupancy {
    fn build<'a>(fleet: &Fleet, campaigns: impl IntoIterator<Item = &'a CampaignRun>) -> Occupancy {
        let mut occ = Occupancy::default();
        for id in fleet.manual.keys() {
            if let Some(h) = fleet.hosts.get(id) {
                let slot = (h.role == Role::Manager).then(|| manager_slot(h.cluster()));
                occ.held.insert(
                    id.clone(),
                    Held {
                        holder: Holder::Manual,
                        role: h.role,
                        cluster: h.cluster().to_owned(),
                        hostname: h.hostname.clone(),
                        slot,
                    },
                );
            }
        }
        // An operator's action in flight holds its host (and a manager its cluster's slot)
        // unless something else already does.
        for (action, op) in &fleet.operator_actions {
            if let Some(h) = fleet.hosts.get(&op.host) {
                let slot = (h.role == Role::Manager).then(|| manager_slot(h.cluster()));
                occ.held.entry(op.host.clone()).or_insert(Held {
                    holder: Holder::Operator {
                        by: op.by.clone(),
                        action: action.clone(),
                    },
                    role: h.role,
                    cluster: h.cluster().to_owned(),
                    hostname: h.hostname.clone(),
                    slot,
                });
            }
        }
        for run in campaigns {
            for h in &run.hosts {
                if h.state.holds_slot() {
                    occ.take(fleet, &run.id, h, h.slot.clone());
                }
            }
        }
        occ
    }

    fn take(&mut self, fleet: &Fleet, campaign: &str, h: &HostRun, slot: Option<String>) {
        self.held.insert(
            h.host_id.clone(),
            Held {
                holder: Holder::Campaign(campaign.to_owned()),
                role: h.role,
                cluster: cluster_of(fleet, h),
                hostname: h.hostname.clone(),
                slot,
            },
        );
    }

    fn holder(&self, host: &str) -> Option<&Holder> {
        self.held.get(host).map(|held| &held.holder)
    }

    /// The manager holding the one manager slot of `cluster`, if any.
    fn manager_in(&self, cluster: &str) -> Option<(&str, &Holder)> {
        self.held
            .values()
            .find(|held| held.role == Role::Manager && held.cluster == cluster)
            .map(|held| (held.hostname.as_str(), &held.holder))
    }

    /// Worker-pool slots of `campaign` in use.
    fn pool_slots_used(&self, campaign: &str) -> Vec<&str> {
        self.held
            .values()
            .filter(|held| {
                held.role == Role::Worker
                    && matches!(&held.holder, Holder::Campaign(c) if c == campaign)
            })
            .filter_map(|held| held.slot.as_deref())
            .collect()
    }
}

/// A campaign host's cluster: the fleet's current view, or what was recorded at creation.
fn cluster_of(fleet: &Fleet, h: &HostRun) -> String {
    fleet
        .hosts
        .get(&h.host_id)
        .map(|v| v.cluster().to_owned())
        .unwrap_or_else(|| h.cluster.clone())
}

/// Name of the manager slot of a cluster.
pub fn manager_slot(cluster: &str) -> String {
    format!("manager:{cluster}")
}

/// The quorum guard's word for a manager without a session.
const QUORUM_DISCONNECTED: &str = "disconnected";

/// Checks the quorum guard for taking `host` (a manager): every OTHER manager of its cluster
/// must be connected and healthy.
pub fn quorum_guard(fleet: &Fleet, host: &HostView) -> Result<(), Blocker> {
    for other in fleet.hosts.values() {
        if other.role != Role::Manager || other.id == host.id || other.cluster() != host.cluster() {
            continue;
        }
        let why = match (other.connected, other.healthy) {
            (false, _) => QUORUM_DISCONNECTED,
            (true, false) => "unhealthy",
            (true, true) => continue,
        };
        return Err(Blocker::QuorumGuard {
            manager: other.hostname.clone(),
            why: why.to_owned(),
        });
    }
    Ok(())
}

/// Resolves where a step runs: the serviced host, or the host its `on` selector picks.
fn resolve_target(
    fleet: &Fleet,
    occ: &Occupancy,
    h: &HostRun,
    on: Option<&OnHost>,
    label: &str,
) -> Result<String, Blocker> {
    let connected = |v: &HostView| {
        if v.connected {
            Ok(v.id.clone())
        } else {
            Err(Blocker::AgentDisconnected {
                host: v.hostname.clone(),
            })
        }
    };
    match on {
        None => match fleet.hosts.get(&h.host_id) {
            Some(v) => connected(v),
            None => Err(Blocker::AgentDisconnected {
                host: h.hostname.clone(),
            }),
        },
        Some(OnHost::Host(name)) => match fleet.find(name) {
            Some(v) => connected(v),
            None => Err(Blocker::NoTarget {
                step: label.to_owned(),
                selector: format!("host:{name}"),
            }),
        },
        Some(OnHost::Role(role)) => {
            let cluster = cluster_of(fleet, h);
            let mut candidates: Vec<&HostView> = fleet
                .hosts
                .values()
                .filter(|v| {
                    v.role == *role
                        && v.id != h.host_id
                        && v.cluster() == cluster
                        && v.connected
                        && v.healthy
                        && occ.holder(&v.id).is_none()
                })
                .collect();
            candidates.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
            candidates
                .first()
                .map(|v| v.id.clone())
                .ok_or_else(|| Blocker::NoTarget {
                    step: label.to_owned(),
                    selector: format!("role:{role} in cluster {cluster:?}"),
                })
        }
    }
}

/// Decides what happens next across every campaign and manual maintenance at `now_ms`.
///
/// Campaigns earlier in `campaigns` get slots first (pass them in creation order). The result
/// is a pure function of the arguments. `campaigns` is any re-iterable collection (a slice, or
/// a filter over the runtime's runs) so the caller never copies its runs to decide.
pub fn decide<'a, I>(fleet: &Fleet, campaigns: I, now_ms: i64) -> Decisions
where
    I: IntoIterator<Item = &'a CampaignRun> + Clone,
{
    let mut out = Decisions::default();
    let mut occ = Occupancy::build(fleet, campaigns.clone());

    for run in campaigns {
        if matches!(
            run.state,
            CampaignState::Completed | CampaignState::Incomplete
        ) {
            continue;
        }
        let mut in_progress = 0usize;
        // 1. Hosts in progress move on whatever the campaign state: a host in progress
        //    finishes (pause, cancel or a closing window only stop new starts).
        for h in &run.hosts {
            if h.state == HostState::Failed {
                out.block(
                    &run.id,
                    Some(&h.host_id),
                    Blocker::HostFailed {
                        error: h.last_error.clone().unwrap_or_default(),
                    },
                );
                continue;
            }
            if !h.state.in_progress() {
                continue;
            }
            in_progress += 1;
            advance_host(fleet, &occ, run, h, now_ms, &mut out);
        }
        if run.state == CampaignState::Cancelled {
            continue;
        }
        if run.cancel_requested {
            if in_progress == 0 {
                out.decisions.push(Decision::FinishCancel {
                    campaign: run.id.clone(),
                });
            } else {
                out.block(&run.id, None, Blocker::Cancelling { in_progress });
            }
            continue;
        }
        if run.hosts.iter().all(|h| h.state.finished()) {
            out.decisions.push(Decision::CompleteCampaign {
                campaign: run.id.clone(),
            });
            continue;
        }
        // 2. Starting new hosts.
        start_hosts(fleet, &mut occ, run, now_ms, &mut out);
    }
    out
}

/// Moves one in-progress host: fail it past its deadline, release it when done, or send its
/// next step.
fn advance_host(
    fleet: &Fleet,
    occ: &Occupancy,
    run: &CampaignRun,
    h: &HostRun,
    now_ms: i64,
    out: &mut Decisions,
) {
    if let Some(f) = &h.in_flight {
        let awaited = fleet.is_awaited(&f.target_host, now_ms);
        if now_ms >= f.deadline_ms && !awaited {
            let step = h
                .current_step()
                .map(|s| s.label.clone())
                .unwrap_or_default();
            let connected = fleet.hosts.get(&f.target_host).is_some_and(|v| v.connected);
            out.decisions.push(Decision::FailHost {
                campaign: run.id.clone(),
                host: h.host_id.clone(),
                reason: format!(
                    "step {step:?}: no result from {} by {}{}",
                    f.target_host,
                    fmt_ms(f.deadline_ms),
                    if connected {
                        ""
                    } else {
                        " (agent disconnected)"
                    }
                ),
            });
        } else {
            out.wake(match fleet.awaited.get(&f.target_host) {
                Some(until) if awaited => f.deadline_ms.max(*until),
                _ => f.deadline_ms,
            });
            if let Some(target) = fleet.hosts.get(&f.target_host).filter(|v| !v.connected) {
                // Name the host as operators know it, not by its machine id.
                out.block(
                    &run.id,
                    Some(&h.host_id),
                    Blocker::AgentDisconnected {
                        host: target.hostname.clone(),
                    },
                );
            }
        }
        return;
    }
    // After a real reboot nothing else runs (post-gates included) and the host is not
    // released until it is back on a new boot id.
    if let Some(before) = &h.pre_reboot_boot_id {
        let back = fleet
            .hosts
            .get(&h.host_id)
            .is_some_and(|v| v.connected && v.boot_id != *before);
        if !back {
            out.block(
                &run.id,
                Some(&h.host_id),
                Blocker::AwaitingReboot {
                    host: h.hostname.clone(),
                },
            );
            return;
        }
    }
    let Some(step) = h.current_step() else {
        // Nothing leaves the pit unchecked: a host whose agent went away after its last gate
        // is not released until it is back (it may have gone down again).
        if !fleet.hosts.get(&h.host_id).is_some_and(|v| v.connected) {
            out.block(
                &run.id,
                Some(&h.host_id),
                Blocker::AgentDisconnected {
                    host: h.hostname.clone(),
                },
            );
            return;
        }
        out.decisions.push(Decision::ReleaseHost {
            campaign: run.id.clone(),
            host: h.host_id.clone(),
        });
        return;
    };
    if let Some(at) = h.retry_at_ms
        && at > now_ms
    {
        out.wake(at);
        out.block(
            &run.id,
            Some(&h.host_id),
            Blocker::RetryAt {
                step: step.label.clone(),
                at_ms: at,
            },
        );
        return;
    }
    match resolve_target(fleet, occ, h, step.on.as_ref(), &step.label) {
        Err(blocker) => out.block(&run.id, Some(&h.host_id), blocker),
        Ok(target) => out.decisions.push(Decision::Dispatch(Dispatch {
            campaign: run.id.clone(),
            host: h.host_id.clone(),
            target_host: target,
            action_id: action_id(&run.id, &h.host_id, step.phase, step.index, h.attempt),
            phase: step.phase,
            step: h.step,
            step_label: step.label.clone(),
            action: step.action.clone(),
            timeout_ms: step.timeout_ms,
        })),
    }
}

/// Starts whichever pending hosts may start now, recording why the others wait.
fn start_hosts(
    fleet: &Fleet,
    occ: &mut Occupancy,
    run: &CampaignRun,
    now_ms: i64,
    out: &mut Decisions,
) {
    let pending: Vec<&HostRun> = run
        .hosts
        .iter()
        .filter(|h| h.state == HostState::Pending)
        .collect();
    let block_all = |out: &mut Decisions, blocker: Blocker| {
        out.block(&run.id, None, blocker.clone());
        for h in &pending {
            out.block(&run.id, Some(&h.host_id), blocker.clone());
        }
    };
    if run.state == CampaignState::Paused {
        block_all(
            out,
            Blocker::Paused {
                reason: run.pause_reason.clone().unwrap_or_default(),
            },
        );
        return;
    }
    let allowed = run.allowed_failures();
    if run.unacknowledged_failures() > allowed {
        let failures = run.unacknowledged_failures();
        out.decisions.push(Decision::PauseCampaign {
            campaign: run.id.clone(),
            reason: format!(
                "error budget spent: {failures} host(s) failed, max_failures is {allowed}{}",
                match run.spec.max_failures {
                    FailureBudget::Percent(p) => {
                        format!(" ({p}% of {} hosts)", run.hosts.len())
                    }
                    FailureBudget::Count(_) => String::new(),
                }
            ),
        });
        block_all(
            out,
            Blocker::ErrorBudgetSpent {
                failures,
                max_failures: allowed,
            },
        );
        return;
    }
    // Role order: the first role with a host not done or skipped is the current one.
    let Some(current) = run.spec.order.iter().copied().find(|r| {
        run.hosts
            .iter()
            .any(|h| h.role == *r && !h.state.finished())
    }) else {
        return;
    };
    let remaining = run
        .hosts
        .iter()
        .filter(|h| h.role == current && !h.state.finished())
        .count();
    for h in &pending {
        if h.role != current {
            out.block(
                &run.id,
                Some(&h.host_id),
                Blocker::WaitingForRole {
                    role: current,
                    remaining,
                },
            );
        }
    }
    if let Some(last) = run.last_release_ms.get(&current) {
        let until = last.saturating_add(run.spec.dwell_ms);
        if until > now_ms {
            out.wake(until);
            for h in pending.iter().filter(|h| h.role == current) {
                out.block(
                    &run.id,
                    Some(&h.host_id),
                    Blocker::Dwell { until_ms: until },
                );
            }
            return;
        }
    }
    let worker_slots = run
        .spec
        .worker_concurrency
        .slots(run.hosts.iter().filter(|h| h.role == Role::Worker).count());
    // Every worker of this campaign that is out of service, whoever holds it: the campaign's
    // concurrency is about how many of its workers are away. Counted once here and kept up to
    // date as hosts start, so deciding stays linear in the size of the fleet.
    let mut busy_workers: Vec<String> = run
        .hosts
        .iter()
        .filter(|o| o.role == Role::Worker && occ.holder(&o.host_id).is_some())
        .map(|o| o.hostname.clone())
        .collect();
    for h in pending.iter().filter(|h| h.role == current) {
        match may_start(fleet, occ, run, h, worker_slots, &busy_workers, now_ms) {
            Err((blocker, wake)) => {
                if let Some(at) = wake {
                    out.wake(at);
                }
                out.block(&run.id, Some(&h.host_id), blocker);
            }
            Ok(slot) => {
                if h.role == Role::Worker {
                    busy_workers.push(h.hostname.clone());
                }
                occ.take(fleet, &run.id, h, Some(slot.clone()));
                out.decisions.push(Decision::StartHost {
                    campaign: run.id.clone(),
                    host: h.host_id.clone(),
                    slot,
                });
            }
        }
    }
}

/// Whether one pending host may start now: the slot it gets, or why not (and when to look
/// again).
fn may_start(
    fleet: &Fleet,
    occ: &Occupancy,
    run: &CampaignRun,
    h: &HostRun,
    worker_slots: usize,
    busy_workers: &[String],
    now_ms: i64,
) -> Result<String, (Blocker, Option<i64>)> {
    if let Some(g) = &h.gate_failure
        && g.retry_at_ms > now_ms
    {
        return Err((
            Blocker::GateFailing {
                gate: g.gate.clone(),
                message: g.message.clone(),
                retry_at_ms: g.retry_at_ms,
            },
            Some(g.retry_at_ms),
        ));
    }
    let Some(view) = fleet.hosts.get(&h.host_id) else {
        return Err((
            Blocker::AgentDisconnected {
                host: format!("{} (no longer enrolled)", h.hostname),
            },
            None,
        ));
    };
    if let Some(holder) = occ.holder(&h.host_id) {
        return Err((Blocker::HeldElsewhere { by: holder.clone() }, None));
    }
    if !view.connected {
        return Err((
            Blocker::AgentDisconnected {
                host: h.hostname.clone(),
            },
            None,
        ));
    }
    if let Err(next) = window::may_start(&run.spec.windows, view, now_ms) {
        return Err((Blocker::WindowClosed { opens_at_ms: next }, next));
    }
    match h.role {
        Role::Worker => {
            if busy_workers.len() >= worker_slots {
                // Name a few holders; a 500-slot pool does not need 500 names on every line.
                let mut held_by: Vec<String> = busy_workers.iter().take(5).cloned().collect();
                if busy_workers.len() > held_by.len() {
                    held_by.push(format!("{} more", busy_workers.len() - held_by.len()));
                }
                return Err((
                    Blocker::NoSlot {
                        slot: format!("worker-pool ({worker_slots} slots)"),
                        held_by,
                    },
                    None,
                ));
            }
            let used = occ.pool_slots_used(&run.id);
            let k = (1..=worker_slots)
                .find(|k| !used.contains(&format!("worker-pool#{k}").as_str()))
                .unwrap_or(worker_slots);
            Ok(format!("worker-pool#{k}"))
        }
        Role::Manager => {
            let cluster = view.cluster().to_owned();
            if let Some((holder_host, holder)) = occ.manager_in(&cluster) {
                return Err((
                    Blocker::NoSlot {
                        slot: manager_slot(&cluster),
                        held_by: vec![format!("{holder_host} ({holder})")],
                    },
                    None,
                ));
            }
            // Leader last: wait while another manager of the cluster in this campaign still
            // has to be serviced.
            if is_leader(&run.spec, view) {
                let others_pending = run.hosts.iter().any(|o| {
                    o.role == Role::Manager
                        && o.host_id != h.host_id
                        && cluster_of(fleet, o) == cluster
                        && !o.state.finished()
                        && !fleet
                            .hosts
                            .get(&o.host_id)
                            .is_some_and(|v| is_leader(&run.spec, v))
                });
                if others_pending {
                    return Err((Blocker::LeaderLast { cluster }, None));
                }
            }
            quorum_guard(fleet, view).map_err(|b| (b, None))?;
            Ok(manager_slot(&cluster))
        }
    }
}
