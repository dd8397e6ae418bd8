//! The planner: a dry run that prints the exact order, slots and steps a campaign would take.
//!
//! It does not guess: it creates the run and drives the real [`decide`] / [`apply`] loop with
//! every action succeeding instantly, so the printed order is what a run does. Before that it
//! refuses what would certainly go wrong: nothing selected, a step the target host's reported
//! policy refuses, a manager whose cluster has another manager down (quorum guard), an `on`
//! selector that matches no host, a host no window ever opens for.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::decide::{Blocker, Decision, decide, quorum_guard};
use crate::fleet::{Fleet, HostView, Role};
use crate::run::{CampaignRun, CampaignState, Event, Outcome, apply};
use crate::spec::{CampaignSpec, Concurrency, FailureBudget, Phase};
use crate::window::{self, fmt_ms};

/// Why a campaign cannot be planned (or created).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the campaign selects no host; check [select] roles, labels and hosts")]
    NothingSelected,
    #[error("select.hosts names {0}, which is not an enrolled host")]
    UnknownHost(String),
    #[error("line {line}: cannot render the step for host {host}: {error}")]
    Template {
        host: String,
        line: usize,
        error: String,
    },
    #[error("host {host} would refuse step {step:?} ({phase}) for {serviced}: {rule}: {message}")]
    PolicyRefusal {
        host: String,
        serviced: String,
        step: String,
        phase: Phase,
        rule: String,
        message: String,
    },
    #[error(
        "quorum guard: manager {host} cannot be taken while manager {other} of cluster {cluster:?} is {why}"
    )]
    QuorumGuard {
        host: String,
        other: String,
        cluster: String,
        why: String,
    },
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
            PlanError::UnknownHost(_) => "unknown_host",
            PlanError::Template { .. } => "template",
            PlanError::PolicyRefusal { .. } => "policy_refusal",
            PlanError::QuorumGuard { .. } => "quorum_guard",
            PlanError::NoTarget { .. } => "no_target",
            PlanError::NoWindow(_) => "no_window",
            PlanError::Stuck(_) => "stuck",
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
}

impl Plan {
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
        let _ = writeln!(
            t,
            "Workers: {} at a time; managers: one at a time per cluster; max_failures: {}; dwell: {}",
            self.worker_concurrency,
            self.max_failures,
            humantime::format_duration(std::time::Duration::from_millis(
                u64::try_from(self.dwell_ms).unwrap_or(0)
            ))
        );
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

/// Plans `spec` over `hosts` as of `now_ms` (windows are evaluated from then on).
pub fn plan(
    spec: &CampaignSpec,
    campaign_id: &str,
    hosts: &[HostView],
    now_ms: i64,
) -> Result<Plan, PlanError> {
    let mut run = CampaignRun::new(campaign_id, spec, hosts, now_ms)?;
    let real = Fleet::from_hosts(hosts.iter().cloned());
    let mut warnings = Vec::new();

    for h in &run.hosts {
        let Some(view) = real.hosts.get(&h.host_id) else {
            continue;
        };
        if h.role == Role::Manager
            && let Err(Blocker::QuorumGuard { manager, why }) = quorum_guard(&real, view)
        {
            return Err(PlanError::QuorumGuard {
                host: h.hostname.clone(),
                other: manager,
                cluster: h.cluster.clone(),
                why,
            });
        }
        if !spec.windows.is_empty() {
            let applicable: Vec<&window::Window> =
                spec.windows.iter().filter(|w| w.applies_to(view)).collect();
            let ever = applicable
                .iter()
                .any(|w| w.is_open(now_ms) || w.next_open(now_ms).is_some());
            if !ever {
                return Err(PlanError::NoWindow(h.hostname.clone()));
            }
        }
        if !view.connected {
            warnings.push(format!(
                "{} is disconnected now; the campaign will wait for its agent",
                h.hostname
            ));
        } else if !view.healthy {
            warnings.push(format!("{} is unhealthy now", h.hostname));
        }
    }
    let mut no_policy: Vec<String> = Vec::new();

    // Simulate with every agent connected and healthy and every action succeeding at once.
    let mut fleet = real.clone();
    for v in fleet.hosts.values_mut() {
        v.connected = true;
        v.healthy = true;
    }
    let mut now = now_ms;
    let mut first_start = None;
    let mut wave = 0u32;
    let mut planned: Vec<PlannedHost> = Vec::new();
    let budget = 100 + run.hosts.iter().map(|h| h.steps.len() + 4).sum::<usize>() * 4;
    for _ in 0..budget {
        if !run.is_active() {
            break;
        }
        let d = decide(&fleet, std::slice::from_ref(&run), now);
        if d.decisions.is_empty() {
            match d.wake_at_ms {
                Some(w) if w > now => {
                    now = w;
                    continue;
                }
                _ => {
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
        for decision in d.decisions {
            match &decision {
                Decision::StartHost { host, slot, .. } => {
                    if !started_this_round {
                        wave += 1;
                        started_this_round = true;
                    }
                    first_start.get_or_insert(now);
                    if let Some(h) = run.host(host) {
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
                            if let Err(refusal) = policy.check(&dispatch.action.to_proto()) {
                                return Err(PlanError::PolicyRefusal {
                                    host: target_name,
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
                    if let Some(p) = planned.iter_mut().find(|p| p.host_id == dispatch.host) {
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
            if let Decision::Dispatch(dispatch) = &decision {
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
        hosts: planned,
        first_start_ms: first_start.unwrap_or(now_ms),
        windows: spec.windows.iter().map(describe_window).collect(),
        warnings,
    })
}
