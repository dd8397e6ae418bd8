//! The planner: a dry run that prints the exact order, slots and steps a campaign would take.
//!
//! It does not guess: it creates the run and drives the real [`decide`] / [`apply`] loop with
//! every action succeeding instantly, so the printed order is what a run does. It starts from
//! the fleet as it is ([`Holders`], connections, windows at the planned start) and shows, on
//! the waves they delay, what of that state a run would wait on (see [`crate::delays`]). It
//! lists every step a host's reported policy would refuse (the plan is then not runnable as
//! it is), and refuses what would certainly go wrong: nothing selected, an `on` selector that
//! matches no host, a host no window ever opens for.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::decide::{Blocker, Decision, decide};
use crate::delays::{Delays, WaveBlocker};
use crate::fleet::{Fleet, HostView, Role};
use crate::holders::Holders;
use crate::run::{CampaignRun, CampaignState, Event, Outcome, apply};
use crate::spec::{CampaignSpec, Concurrency, FailureBudget, Phase};
use crate::window::{self, fmt_ms};

/// Why a campaign cannot be planned (or created).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the campaign selects no host; check [select] roles, labels and hosts")]
    NothingSelected,
    /// Roles, labels and names select hosts, but none of them holds the `[select] when`
    /// conditions now (a scheduled run then has nothing to do, which is not a failure).
    #[error(
        "none of the {candidates} host(s) the campaign selects holds its [select] when conditions now ({})",
        conditions.join(", ")
    )]
    NoFactsMatch {
        candidates: usize,
        conditions: Vec<String>,
    },
    #[error("select.hosts names {0}, which is not an enrolled host")]
    UnknownHost(String),
    #[error("line {line}: cannot render the step for host {host}: {error}")]
    Template {
        host: String,
        line: usize,
        error: String,
    },
    #[error("{}", refused(.0))]
    Refused(Vec<Refusal>),
    #[error("step {step:?} for host {host}: on = {selector:?} matches no host")]
    NoTarget {
        host: String,
        step: String,
        selector: String,
    },
    #[error("no maintenance window of the campaign ever opens for host {0}")]
    NoWindow(String),
    #[error("the campaign would not finish: {0}")]
    Stuck(String),
}

impl PlanError {
    /// A stable machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            PlanError::NothingSelected => "nothing_selected",
            PlanError::NoFactsMatch { .. } => "no_facts_match",
            PlanError::UnknownHost(_) => "unknown_host",
            PlanError::Template { .. } => "template",
            PlanError::Refused(_) => "policy_refusal",
            PlanError::NoTarget { .. } => "no_target",
            PlanError::NoWindow(_) => "no_window",
            PlanError::Stuck(_) => "stuck",
        }
    }
}

/// A step the target host's reported policy would refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Hostname of the host that would refuse (it runs the step).
    pub host: String,
    /// Hostname of the host the step is for.
    pub serviced: String,
    pub step: String,
    pub phase: Phase,
    pub rule: String,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {} would refuse step {:?} ({}) for {}: {}: {}",
            self.host, self.step, self.phase, self.serviced, self.rule, self.message
        )
    }
}

/// Every refusal in one message: the operator fixes them all at once, not one per try.
fn refused(refusals: &[Refusal]) -> String {
    match refusals {
        [one] => one.to_string(),
        all => format!(
            "{} steps would be refused: {}",
            all.len(),
            all.iter()
                .map(Refusal::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// When a plan starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanStart {
    /// Now (Unix ms): the current state is the state at the start.
    Now(i64),
    /// At a later instant (Unix ms, `--at`): windows are evaluated from then; hosts held and
    /// agents disconnected now are assumed to be so then.
    At(i64),
}

impl PlanStart {
    pub fn ms(self) -> i64 {
        match self {
            PlanStart::Now(ms) | PlanStart::At(ms) => ms,
        }
    }
}

/// One step of a planned host, as it will be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub phase: Phase,
    /// Hostname of the host it runs on (may be another host than the one serviced).
    pub host: String,
    /// The step label and the action with its rendered arguments.
    pub description: String,
}

/// One host in the plan, in start order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedHost {
    pub host_id: String,
    pub hostname: String,
    pub role: Role,
    pub cluster: String,
    /// 1-based: hosts started together share a wave.
    pub wave: u32,
    pub slot: String,
    pub steps: Vec<PlannedStep>,
}

/// A campaign plan: the structured form (mapped to the proto `CampaignPlan`) and [`Plan::text`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub campaign_id: String,
    pub source_name: String,
    pub role_order: Vec<Role>,
    pub worker_concurrency: Concurrency,
    pub max_failures: FailureBudget,
    pub dwell_ms: i64,
    /// Hosts in the order they start.
    pub hosts: Vec<PlannedHost>,
    /// When the first host could start (a window may delay it).
    pub first_start_ms: i64,
    pub windows: Vec<String>,
    pub warnings: Vec<String>,
    /// When the plan starts, and whether that is a later instant than now (`--at`).
    pub start_ms: i64,
    pub start_later: bool,
    /// What of the current state delays which wave (holders, disconnected agents, the quorum
    /// guard, closed windows), in wave order.
    pub blockers: Vec<WaveBlocker>,
    /// Every step a host's reported policy would refuse; the plan runs only without any.
    pub refusals: Vec<Refusal>,
    /// The `[select] when` conditions, as written, and how many hosts that roles, labels and
    /// names select they leave out now.
    #[serde(default)]
    pub conditions: Vec<String>,
    #[serde(default)]
    pub left_out_by_facts: usize,
    /// The campaign's schedule and its next fire time after the plan's start, if it has one.
    #[serde(default)]
    pub schedule: Option<(crate::schedule::Schedule, Option<i64>)>,
}

impl Plan {
    /// Whether the campaign can run as it is: no host's policy would refuse a step.
    pub fn runnable(&self) -> bool {
        self.refusals.is_empty()
    }

    /// The refusals as the error that keeps the campaign from being created.
    pub fn refused(&self) -> Result<(), PlanError> {
        if self.refusals.is_empty() {
            Ok(())
        } else {
            Err(PlanError::Refused(self.refusals.clone()))
        }
    }

    /// The plan as an operator reads it.
    pub fn text(&self) -> String {
        let mut t = String::new();
        let workers = self.hosts.iter().filter(|h| h.role == Role::Worker).count();
        let managers = self.hosts.len() - workers;
        let order: Vec<&str> = self.role_order.iter().map(|r| r.as_str()).collect();
        let _ = writeln!(
            t,
            "Campaign {:?} ({}) from {}",
            self.name, self.campaign_id, self.source_name
        );
        let _ = writeln!(
            t,
            "{} host(s): {workers} worker(s), {managers} manager(s); order: {}",
            self.hosts.len(),
            order.join(" then ")
        );
        if !self.conditions.is_empty() {
            let _ = writeln!(
                t,
                "Only hosts whose facts hold: {} ({} other selected host(s) left out now; read again when a run starts)",
                self.conditions.join(", "),
                self.left_out_by_facts
            );
        }
        if let Some((schedule, next)) = &self.schedule {
            let next = next.map_or_else(|| "never again".to_owned(), |n| schedule.local(n));
            let _ = writeln!(
                t,
                "Schedule: {schedule}; next run {next} (register it with `pitcrew schedule add`)"
            );
        }
        let _ = writeln!(
            t,
            "Workers: {} at a time; managers: one at a time per cluster; max_failures: {}; dwell: {}",
            self.worker_concurrency,
            self.max_failures,
            humantime::format_duration(std::time::Duration::from_millis(
                u64::try_from(self.dwell_ms).unwrap_or(0)
            ))
        );
        if self.start_later {
            let _ = writeln!(
                t,
                "Planned start: {} (as asked); hosts held and agents disconnected now are assumed still so then",
                fmt_ms(self.start_ms)
            );
        } else {
            let _ = writeln!(
                t,
                "Planned start: now ({}), from the fleet as it is",
                fmt_ms(self.start_ms)
            );
        }
        if self.windows.is_empty() {
            let _ = writeln!(t, "Windows: none (always open)");
        } else {
            let _ = writeln!(t, "Windows:");
            for w in &self.windows {
                let _ = writeln!(t, "  - {w}");
            }
            let _ = writeln!(t, "First host can start at {}", fmt_ms(self.first_start_ms));
        }
        let mut wave = 0;
        for h in &self.hosts {
            if h.wave != wave {
                wave = h.wave;
                let _ = writeln!(t, "\nWave {wave}");
                for b in self.blockers.iter().filter(|b| b.wave == wave) {
                    let _ = writeln!(t, "  waits: {}", b.text);
                }
            }
            let cluster = if h.cluster.is_empty() {
                String::new()
            } else {
                format!(", cluster {}", h.cluster)
            };
            let _ = writeln!(
                t,
                "  {} {} ({}{cluster}) slot {}",
                h.role, h.hostname, h.host_id, h.slot
            );
            for s in &h.steps {
                let on = if s.host == h.hostname {
                    String::new()
                } else {
                    format!(" [on {}]", s.host)
                };
                let _ = writeln!(t, "    {:<9} {}{on}", s.phase.as_str(), s.description);
            }
            let _ = writeln!(t, "    release {}", h.slot);
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(t, "\nWarnings:");
            for w in &self.warnings {
                let _ = writeln!(t, "  - {w}");
            }
        }
        if !self.refusals.is_empty() {
            let _ = writeln!(
                t,
                "\nNot runnable as it is: {} step(s) would be refused by their host's policy:",
                self.refusals.len()
            );
            for r in &self.refusals {
                let _ = writeln!(t, "  - {r}");
            }
        }
        t
    }
}

fn describe_window(w: &window::Window) -> String {
    let mut text = match &w.time {
        window::WindowTime::Absolute {
            start_ms,
            duration_ms,
        } => format!(
            "{} for {}",
            fmt_ms(*start_ms),
            humantime::format_duration(std::time::Duration::from_millis(
                u64::try_from(*duration_ms).unwrap_or(0)
            ))
        ),
        window::WindowTime::Weekly {
            days,
            start_minute,
            duration_ms,
            timezone,
        } => {
            let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
            let days: Vec<&str> = days
                .iter()
                .filter_map(|d| names.get(*d as usize).copied())
                .collect();
            format!(
                "every {} at {:02}:{:02} {timezone} for {}",
                days.join(","),
                start_minute / 60,
                start_minute % 60,
                humantime::format_duration(std::time::Duration::from_millis(
                    u64::try_from(*duration_ms).unwrap_or(0)
                ))
            )
        }
    };
    if !w.hosts.is_empty() {
        let _ = write!(text, " (hosts {})", w.hosts.join(", "));
    }
    text
}

/// Plans `spec` over `hosts` as of `now_ms`, as if nothing were held (windows are evaluated
/// from then on).
pub fn plan(
    spec: &CampaignSpec,
    campaign_id: &str,
    hosts: &[HostView],
    now_ms: i64,
) -> Result<Plan, PlanError> {
    plan_from(
        spec,
        campaign_id,
        hosts,
        &Holders::default(),
        PlanStart::Now(now_ms),
    )
}

/// Plans `spec` from the fleet as it is: `hosts` with their connections, the hosts `holders`
/// hold out of service, windows from `start`. A wave a run would wait on shows why in
/// [`Plan::blockers`]; every step a host would refuse is in [`Plan::refusals`].
pub fn plan_from(
    spec: &CampaignSpec,
    campaign_id: &str,
    hosts: &[HostView],
    holders: &Holders,
    start: PlanStart,
) -> Result<Plan, PlanError> {
    let start_ms = start.ms();
    let mut run = CampaignRun::new(campaign_id, spec, hosts, start_ms)?;
    let real = Fleet::from_hosts(hosts.iter().cloned());
    let mut warnings = Vec::new();

    for h in &run.hosts {
        let Some(view) = real.hosts.get(&h.host_id) else {
            continue;
        };
        if !spec.windows.is_empty() {
            let applicable: Vec<&window::Window> =
                spec.windows.iter().filter(|w| w.applies_to(view)).collect();
            let ever = applicable
                .iter()
                .any(|w| w.is_open(start_ms) || w.next_open(start_ms).is_some());
            if !ever {
                return Err(PlanError::NoWindow(h.hostname.clone()));
            }
        }
        // Disconnected hosts are shown on the waves they delay; a connected host the
        // coordinator finds unhealthy has no such blocker of its own.
        if view.connected && !view.healthy {
            warnings.push(format!("{} is unhealthy now", h.hostname));
        }
    }
    let mut no_policy: Vec<String> = Vec::new();
    let mut refusals: Vec<Refusal> = Vec::new();

    // Simulate from the current state (holders, connections) with every action succeeding at
    // once; what of that state stalls the run is noted and lifted by `delays`.
    let mut fleet = real.clone();
    let mut delays = Delays::new(holders, &mut fleet, start_ms);
    let mut now = start_ms;
    let mut first_start = None;
    let mut wave = 0u32;
    let mut planned: Vec<PlannedHost> = Vec::new();
    // Where each started host is in `planned` (a scan per dispatch made planning quadratic).
    let mut planned_at: std::collections::HashMap<String, usize> = Default::default();
    // Each host may be lifted out of a stall a few times (held, disconnected, a target).
    let budget = 100
        + run.hosts.iter().map(|h| h.steps.len() + 4).sum::<usize>() * 4
        + (holders.hosts.len() + run.hosts.len()) * 4;
    for _ in 0..budget {
        if !run.is_active() {
            break;
        }
        let d = decide(&fleet, std::slice::from_ref(&run), now);
        if d.decisions.is_empty() {
            match d.wake_at_ms {
                Some(w) if w > now => {
                    delays.observe(&run, &d, now);
                    now = w;
                    continue;
                }
                _ => {
                    if delays.lift(&mut fleet, &run, &d) {
                        continue;
                    }
                    if let Some(b) = d.blockers.iter().find_map(|b| match &b.blocker {
                        Blocker::NoTarget { step, selector } => Some((b, step, selector)),
                        _ => None,
                    }) {
                        let host = b.0.host.clone().unwrap_or_default();
                        let host = run.host(&host).map(|h| h.hostname.clone()).unwrap_or(host);
                        return Err(PlanError::NoTarget {
                            host,
                            step: b.1.clone(),
                            selector: b.2.clone(),
                        });
                    }
                    let reasons: Vec<String> = d
                        .blockers
                        .iter()
                        .map(|b| match &b.host {
                            Some(h) => format!("{h}: {}", b.blocker),
                            None => b.blocker.to_string(),
                        })
                        .collect();
                    return Err(PlanError::Stuck(reasons.join("; ")));
                }
            }
        }
        let mut started_this_round = false;
        for decision in &d.decisions {
            match decision {
                Decision::StartHost { host, slot, .. } => {
                    if !started_this_round {
                        wave += 1;
                        started_this_round = true;
                    }
                    first_start.get_or_insert(now);
                    delays.started(&run, host);
                    if let Some(h) = run.host(host) {
                        planned_at.insert(h.host_id.clone(), planned.len());
                        planned.push(PlannedHost {
                            host_id: h.host_id.clone(),
                            hostname: h.hostname.clone(),
                            role: h.role,
                            cluster: h.cluster.clone(),
                            wave,
                            slot: slot.clone(),
                            steps: Vec::new(),
                        });
                    }
                }
                Decision::Dispatch(dispatch) => {
                    let target = real.hosts.get(&dispatch.target_host);
                    let target_name = target
                        .map(|t| t.hostname.clone())
                        .unwrap_or_else(|| dispatch.target_host.clone());
                    let serviced = run
                        .host(&dispatch.host)
                        .map(|h| h.hostname.clone())
                        .unwrap_or_default();
                    match target.and_then(|t| t.policy.as_ref()) {
                        Some(policy) => {
                            // Listed, and the simulation goes on as if it ran: the operator
                            // sees every refusal of the campaign at once.
                            if let Err(refusal) = policy.check(&dispatch.action.to_proto()) {
                                refusals.push(Refusal {
                                    host: target_name.clone(),
                                    serviced,
                                    step: dispatch.step_label.clone(),
                                    phase: dispatch.phase,
                                    rule: refusal.rule,
                                    message: refusal.message,
                                });
                            }
                        }
                        None => {
                            if !no_policy.contains(&target_name) {
                                no_policy.push(target_name.clone());
                            }
                        }
                    }
                    let description = if dispatch.step_label == dispatch.action.name() {
                        dispatch.action.to_string()
                    } else {
                        format!("{}: {}", dispatch.step_label, dispatch.action)
                    };
                    if let Some(p) = planned_at
                        .get(&dispatch.host)
                        .and_then(|&i| planned.get_mut(i))
                    {
                        p.steps.push(PlannedStep {
                            phase: dispatch.phase,
                            host: target_name,
                            description,
                        });
                    }
                }
                _ => {}
            }
            apply(&mut run, &fleet, &Event::Decision(decision.clone()), now)
                .map_err(|e| PlanError::Stuck(format!("internal: {e}")))?;
            if let Decision::Dispatch(dispatch) = decision {
                let boot_id = if dispatch.action.is_reboot() {
                    let v = fleet.hosts.get_mut(&dispatch.host);
                    v.map(|v| {
                        v.boot_id = format!("{}+planned-reboot", v.boot_id);
                        v.boot_id.clone()
                    })
                } else {
                    None
                };
                let finished = Event::ActionFinished {
                    action_id: dispatch.action_id.clone(),
                    outcome: Outcome::Succeeded,
                    message: String::new(),
                    boot_id,
                };
                apply(&mut run, &fleet, &finished, now)
                    .map_err(|e| PlanError::Stuck(format!("internal: {e}")))?;
            }
        }
        delays.observe(&run, &d, now);
    }
    if run.state != CampaignState::Completed {
        return Err(PlanError::Stuck(
            "the simulation did not complete within its step budget".to_owned(),
        ));
    }
    for name in no_policy {
        warnings.push(format!(
            "{name} reported no policy; its refusals cannot be predicted"
        ));
    }
    Ok(Plan {
        name: spec.name.clone(),
        campaign_id: campaign_id.to_owned(),
        source_name: spec.source_name.clone(),
        role_order: spec
            .order
            .iter()
            .copied()
            .filter(|r| spec.select.roles.contains(r))
            .collect(),
        worker_concurrency: spec.worker_concurrency,
        max_failures: spec.max_failures,
        dwell_ms: spec.dwell_ms,
        blockers: delays.into_blockers(&planned),
        hosts: planned,
        first_start_ms: first_start.unwrap_or(start_ms),
        windows: spec.windows.iter().map(describe_window).collect(),
        warnings,
        start_ms,
        start_later: matches!(start, PlanStart::At(_)),
        refusals,
        conditions: spec.select.when.iter().map(|c| c.to_string()).collect(),
        left_out_by_facts: hosts
            .iter()
            .filter(|h| spec.select.matches_ignoring_facts(h) && !spec.select.facts_hold(h))
            .count(),
        schedule: spec.schedule.clone().map(|s| {
            let next = s.next_after(start_ms);
            (s, next)
        }),
    })
}
