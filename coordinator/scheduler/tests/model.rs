//! Model checking of the scheduler with stateright: a campaign over two workers and three
//! managers of one cluster, explored under every interleaving of coordinator decisions, agent
//! deliveries and results, step failures, agent disconnects and reconnects, a coordinator
//! restart (everything not persisted is lost and the runtime re-sends from the persisted
//! state), a clock jump past every deadline and the window's end, operator retry/resume, a
//! manual maintenance of a manager, and operators' disruptive `pitcrew do` on any host at any
//! moment (admitted by the library's `admit_action`, holding its host until it finishes).
//!
//! The coordinator side is exactly the library: `decide` then `apply` each decision to the
//! persisted runs (write-ahead), then send. The agent side journals every action id before
//! running it and answers a repeated id from the journal.

use std::collections::{BTreeMap, BTreeSet};

use pitcrew_scheduler::{
    CampaignRun, CampaignSpec, CampaignState, Decision, Event, Fleet, HostState, HostView,
    ManualPhase, OperatorAction, Outcome, Role, admit_action, apply, decide, invariants,
    manual_enable,
};
use stateright::{Checker, Model, Property};

const SPEC: &str = r#"
name = "model"
max_failures = 0
[[window]]
start = "1970-01-01T00:00:00Z"
duration = "1h"
[[worker.steps]]
action = "patch"
[[manager.steps]]
action = "reboot"
[[gate.post]]
action = "health"
unit_active = "docker.service"
"#;

const HOSTS: [(&str, Role); 5] = [
    ("w1", Role::Worker),
    ("w2", Role::Worker),
    ("m1", Role::Manager),
    ("m2", Role::Manager),
    ("m3", Role::Manager),
];

/// A message from the coordinator to an agent: (action id, target host index, is a reboot).
type Request = (String, usize, bool);

/// What an agent journalled for an action id: the outcome, and whether the coordinator has
/// acknowledged the result (until then the agent repeats it on every hello).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Journalled {
    host: usize,
    outcome: Outcome,
    acked: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    // --- persisted by the coordinator ---
    runs: Vec<CampaignRun>,
    manual: Option<(usize, ManualPhase)>,
    // --- held in the coordinator's memory while the operator's `do` stream runs ---
    operator_do: Option<usize>,
    // --- the world ---
    connected: [bool; 5],
    boot: [u8; 5],
    now: i64,
    // --- agents (their journal survives everything) ---
    journal: BTreeMap<String, Journalled>,
    executions: BTreeMap<String, u8>,
    // --- volatile: messages in flight, lost on a coordinator restart or a disconnect ---
    to_agent: BTreeSet<Request>,
    to_coordinator: BTreeSet<String>,
    // --- bounds on the environment's moves ---
    failures_left: u8,
    disconnects_left: u8,
    restarts_left: u8,
    ticks_left: u8,
    operator_left: u8,
    manual_left: u8,
    dos_left: u8,
    /// A broken transition invariant seen on the way (quorum guard, gate before release,
    /// error budget, window, idempotence).
    violation: Option<String>,
    /// Boot generation of each host when it was started, to check a reboot really happened.
    boot_at_start: BTreeMap<usize, u8>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Action {
    Decide,
    Deliver(Request, bool),
    Result(String),
    Disconnect(usize),
    Reconnect(usize),
    Restart,
    Tick,
    Retry(usize),
    Resume,
    ManualEnable(usize),
    ManualAdvance,
    /// An operator asks for a disruptive `pitcrew do` on this host.
    OperatorDo(usize),
    /// The operator's action finished (its result came, or the stream ended).
    OperatorDone,
}

/// One exploration: the campaign and how many of each disturbance the environment may cause.
/// Disturbances are split over several explorations so each stays small enough to finish in
/// seconds; together they cover every kind.
struct Scheduler {
    spec: CampaignSpec,
    failures: u8,
    disconnects: u8,
    restarts: u8,
    ticks: u8,
    operator: u8,
    manual: u8,
    dos: u8,
}

fn idx(host: &str) -> usize {
    HOSTS.iter().position(|(h, _)| *h == host).unwrap_or(0)
}

fn fleet(s: &State) -> Fleet {
    let mut f = Fleet::from_hosts(HOSTS.iter().enumerate().map(|(i, (id, role))| HostView {
        id: (*id).to_owned(),
        hostname: (*id).to_owned(),
        role: *role,
        labels: BTreeMap::from([("cluster".to_owned(), "swarm-a".to_owned())]),
        connected: s.connected[i],
        healthy: true,
        boot_id: format!("{id}-boot-{}", s.boot[i]),
        policy: None,
        facts: None,
    }));
    if let Some(i) = s.operator_do {
        f.operator_actions.insert(
            "do-model".to_owned(),
            OperatorAction {
                host: HOSTS[i].0.to_owned(),
                by: "model".into(),
                forced: false,
            },
        );
    }
    if let Some((i, phase)) = s.manual {
        f.manual.insert(
            HOSTS[i].0.to_owned(),
            pitcrew_scheduler::ManualState {
                phase,
                since_ms: 0,
                by: "model".into(),
            },
        );
    }
    f
}

/// Everything the coordinator is waiting on, as requests to (re-)send to connected agents.
fn resend(s: &State) -> BTreeSet<Request> {
    s.runs
        .iter()
        .flat_map(|r| r.in_flight_dispatches())
        .filter(|d| s.connected[idx(&d.target_host)])
        .map(|d| (d.action_id, idx(&d.target_host), d.action.is_reboot()))
        .collect()
}

/// Results the agents repeat on hello until acknowledged.
fn unacked(s: &State) -> BTreeSet<String> {
    s.journal
        .iter()
        .filter(|(_, j)| !j.acked && s.connected[j.host])
        .map(|(id, _)| id.clone())
        .collect()
}

impl Model for Scheduler {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let f = Fleet::from_hosts(HOSTS.iter().map(|(id, role)| HostView {
            id: (*id).to_owned(),
            hostname: (*id).to_owned(),
            role: *role,
            labels: BTreeMap::from([("cluster".to_owned(), "swarm-a".to_owned())]),
            connected: true,
            healthy: true,
            boot_id: String::new(),
            policy: None,
            facts: None,
        }));
        let hosts: Vec<HostView> = f.hosts.values().cloned().collect();
        let run = match CampaignRun::new("c1", &self.spec, &hosts, 0) {
            Ok(r) => r,
            Err(e) => panic!("model campaign: {e}"),
        };
        vec![State {
            runs: vec![run],
            manual: None,
            operator_do: None,
            connected: [true; 5],
            boot: [1; 5],
            now: 0,
            journal: BTreeMap::new(),
            executions: BTreeMap::new(),
            to_agent: BTreeSet::new(),
            to_coordinator: BTreeSet::new(),
            failures_left: self.failures,
            disconnects_left: self.disconnects,
            restarts_left: self.restarts,
            ticks_left: self.ticks,
            operator_left: self.operator,
            manual_left: self.manual,
            dos_left: self.dos,
            violation: None,
            boot_at_start: BTreeMap::new(),
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.violation.is_some() {
            return;
        }
        actions.push(Action::Decide);
        for r in &s.to_agent {
            if s.connected[r.1] {
                actions.push(Action::Deliver(r.clone(), true));
                if s.failures_left > 0 {
                    actions.push(Action::Deliver(r.clone(), false));
                }
            }
        }
        for id in &s.to_coordinator {
            actions.push(Action::Result(id.clone()));
        }
        for i in 0..5 {
            if s.connected[i] && s.disconnects_left > 0 {
                actions.push(Action::Disconnect(i));
            }
            if !s.connected[i] {
                actions.push(Action::Reconnect(i));
            }
        }
        if s.restarts_left > 0 {
            actions.push(Action::Restart);
        }
        if s.ticks_left > 0 {
            actions.push(Action::Tick);
        }
        if s.operator_left > 0 {
            for h in &s.runs[0].hosts {
                if h.state == HostState::Failed {
                    actions.push(Action::Retry(idx(&h.host_id)));
                }
            }
            if s.runs[0].state == CampaignState::Paused {
                actions.push(Action::Resume);
            }
        }
        if s.manual_left > 0 && s.manual.is_none() {
            actions.push(Action::ManualEnable(4));
        }
        if s.manual.is_some() {
            actions.push(Action::ManualAdvance);
        }
        if s.dos_left > 0 && s.operator_do.is_none() {
            for i in 0..HOSTS.len() {
                actions.push(Action::OperatorDo(i));
            }
        }
        if s.operator_do.is_some() {
            actions.push(Action::OperatorDone);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Decide => {
                let f = fleet(&s);
                let d = decide(&f, &s.runs, s.now);
                if d.decisions.is_empty() {
                    return None;
                }
                if decide(&f, &s.runs, s.now) != d {
                    s.violation = Some("decide is not a function of its inputs".into());
                }
                for decision in d.decisions {
                    check_transition(&mut s, &f, &decision);
                    if let Decision::Dispatch(x) = &decision {
                        // Sent after it is persisted (write-ahead).
                        s.to_agent.insert((
                            x.action_id.clone(),
                            idx(&x.target_host),
                            x.action.is_reboot(),
                        ));
                    }
                    let Some(run) = s.runs.iter_mut().find(|r| r.id == decision.campaign()) else {
                        s.violation = Some("decision for an unknown campaign".into());
                        return Some(s);
                    };
                    if let Err(e) = apply(run, &f, &Event::Decision(decision), s.now) {
                        s.violation = Some(format!("a decision did not apply: {e}"));
                    }
                }
            }
            Action::Deliver(request, succeed) => {
                s.to_agent.remove(&request);
                let (id, host, reboot) = request;
                if s.journal.contains_key(&id) {
                    // A repeated id: answered from the journal, not run again.
                    s.to_coordinator.insert(id);
                    return Some(s);
                }
                *s.executions.entry(id.clone()).or_default() += 1;
                let outcome = if succeed {
                    Outcome::Succeeded
                } else {
                    s.failures_left -= 1;
                    Outcome::Failed
                };
                if succeed && reboot {
                    s.boot[host] += 1;
                }
                s.journal.insert(
                    id.clone(),
                    Journalled {
                        host,
                        outcome,
                        acked: false,
                    },
                );
                s.to_coordinator.insert(id);
            }
            Action::Result(id) => {
                s.to_coordinator.remove(&id);
                let j = s.journal.get_mut(&id)?;
                j.acked = true;
                let outcome = j.outcome;
                let host = j.host;
                let f = fleet(&s);
                let event = Event::ActionFinished {
                    action_id: id,
                    outcome,
                    message: String::new(),
                    boot_id: Some(format!("{}-boot-{}", HOSTS[host].0, s.boot[host])),
                };
                // A late or repeated result is refused by apply and changes nothing.
                if let Some(run) = s.runs.first_mut() {
                    let _ = apply(run, &f, &event, s.now);
                }
            }
            Action::Disconnect(i) => {
                s.disconnects_left -= 1;
                s.connected[i] = false;
                s.to_agent.retain(|r| r.1 != i);
                let journal = &s.journal;
                s.to_coordinator
                    .retain(|id| journal.get(id).is_none_or(|j| j.host != i));
                let f = fleet(&s);
                let event = Event::HostDisconnected {
                    host: HOSTS[i].0.to_owned(),
                };
                for run in &mut s.runs {
                    let _ = apply(run, &f, &event, s.now);
                }
            }
            Action::Reconnect(i) => {
                s.connected[i] = true;
                let f = fleet(&s);
                let event = Event::HostReconnected {
                    host: HOSTS[i].0.to_owned(),
                };
                for run in &mut s.runs {
                    let _ = apply(run, &f, &event, s.now);
                }
                // Hello carries unacknowledged results; the coordinator re-sends what it waits on.
                s.to_coordinator.extend(unacked(&s));
                let again: Vec<Request> = resend(&s).into_iter().filter(|r| r.1 == i).collect();
                s.to_agent.extend(again);
            }
            Action::Restart => {
                // Everything not persisted is gone; the new coordinator re-sends from the store.
                s.restarts_left -= 1;
                s.to_agent = resend(&s);
                s.to_coordinator = unacked(&s);
            }
            Action::Tick => {
                s.ticks_left -= 1;
                s.now += 10_000_000;
            }
            Action::Retry(i) => {
                s.operator_left -= 1;
                let f = fleet(&s);
                let event = Event::Retry {
                    host: HOSTS[i].0.to_owned(),
                };
                if apply(&mut s.runs[0], &f, &event, s.now).is_err() {
                    return None;
                }
            }
            Action::Resume => {
                s.operator_left -= 1;
                let f = fleet(&s);
                if apply(&mut s.runs[0], &f, &Event::Resume, s.now).is_err() {
                    return None;
                }
            }
            Action::ManualEnable(i) => {
                let f = fleet(&s);
                let (_, state) = manual_enable(&f, &s.runs, HOSTS[i].0, "model", s.now).ok()?;
                s.manual_left -= 1;
                s.manual = Some((i, state.phase));
            }
            Action::OperatorDo(i) => {
                // The engine's path: admitted by the library (no --force), then held in the
                // fleet until it finishes. A refusal changes nothing.
                let f = fleet(&s);
                admit_action(&f, &s.runs, HOSTS[i].0, false).ok()?;
                s.dos_left -= 1;
                s.operator_do = Some(i);
            }
            Action::OperatorDone => {
                s.operator_do?;
                s.operator_do = None;
            }
            Action::ManualAdvance => {
                let (i, phase) = s.manual?;
                s.manual = match phase {
                    ManualPhase::Entering => Some((i, ManualPhase::Maintenance)),
                    ManualPhase::Maintenance => Some((i, ManualPhase::Leaving)),
                    ManualPhase::Leaving => None,
                };
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "invariants 1-3 and slots (library check)",
                |_, s: &State| invariants::check(&fleet(s), &s.runs).is_empty(),
            ),
            Property::always("1: one manager out of Running", |_, s: &State| {
                // Campaigns, manual maintenance and operators' actions, each host once.
                let mut out: BTreeSet<usize> = s.runs[0]
                    .hosts
                    .iter()
                    .filter(|h| h.role == Role::Manager && h.state.holds_slot())
                    .map(|h| idx(&h.host_id))
                    .collect();
                out.extend(s.manual.map(|(i, _)| i));
                out.extend(s.operator_do);
                out.iter().filter(|i| HOSTS[**i].1 == Role::Manager).count() <= 1
            }),
            Property::always("2: worker concurrency", |_, s: &State| {
                s.runs[0]
                    .hosts
                    .iter()
                    .filter(|h| h.role == Role::Worker && h.state.holds_slot())
                    .count()
                    <= 1
            }),
            Property::always("4-7: no transition broke an invariant", |_, s: &State| {
                s.violation.is_none()
            }),
            Property::always("8/9: no action id executed twice", |_, s: &State| {
                s.executions.values().all(|n| *n <= 1)
            }),
            Property::sometimes(
                "an operator's action runs on a manager while the campaign runs",
                |m: &Scheduler, s: &State| {
                    m.dos == 0
                        || (s.runs[0].state == CampaignState::Running
                            && s.operator_do.is_some_and(|i| HOSTS[i].1 == Role::Manager))
                },
            ),
            Property::sometimes("the campaign completes", |_, s: &State| {
                s.runs[0].state == CampaignState::Completed
            }),
            Property::sometimes(
                "a host fails and is retried to completion",
                |_, s: &State| {
                    s.runs[0].state == CampaignState::Completed
                        && s.runs[0].hosts.iter().any(|h| h.attempt > 1)
                },
            ),
        ]
    }
}

/// Checks invariants that are about the moment a decision is taken.
fn check_transition(s: &mut State, f: &Fleet, decision: &Decision) {
    let run = &s.runs[0];
    match decision {
        Decision::StartHost { host, .. } => {
            let i = idx(host);
            if HOSTS[i].1 == Role::Manager {
                // 4. Quorum guard.
                let down = HOSTS
                    .iter()
                    .enumerate()
                    .any(|(j, (_, role))| j != i && *role == Role::Manager && !s.connected[j]);
                if down {
                    s.violation =
                        Some(format!("4: manager {host} taken with another manager down"));
                }
            }
            // 6. Error budget.
            if run.unacknowledged_failures() > run.allowed_failures()
                || run.state == CampaignState::Paused
            {
                s.violation = Some(format!("6: {host} started with the budget spent or paused"));
            }
            // 7. Windows: the model's window is the first hour.
            if s.now >= 3_600_000 {
                s.violation = Some(format!("7: {host} started outside the window"));
            }
            s.boot_at_start.insert(i, s.boot[i]);
        }
        Decision::ReleaseHost { host, .. } => {
            let i = idx(host);
            let Some(h) = run.host(host) else { return };
            // 5. Gate before release: every step (post-gate included) passed, and a host with
            //    a reboot step is on a new boot id.
            if h.step < h.steps.len() || h.in_flight.is_some() {
                s.violation = Some(format!("5: {host} released before its post-gates"));
            }
            let rebooting = h.steps.iter().any(|x| x.action.is_reboot());
            if rebooting && s.boot_at_start.get(&i).is_some_and(|b| *b == s.boot[i]) {
                s.violation = Some(format!("5: {host} released without a new boot id"));
            }
            if !f.hosts.get(host).is_some_and(|v| v.connected) {
                s.violation = Some(format!("5: {host} released while disconnected"));
            }
        }
        _ => {}
    }
}

fn check(name: &str, model: Scheduler) {
    let checker = model.checker().spawn_bfs().join();
    eprintln!(
        "model {name}: {} states ({} unique)",
        checker.state_count(),
        checker.unique_state_count()
    );
    if let Some(path) = checker.discovery("4-7: no transition broke an invariant") {
        eprintln!("violation: {:?}", path.last_state().violation);
    }
    checker.assert_properties();
}

fn spec() -> CampaignSpec {
    match CampaignSpec::parse(SPEC, "model.toml") {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn invariants_hold_with_step_failures_operator_retry_and_a_coordinator_restart() {
    check(
        "failures",
        Scheduler {
            spec: spec(),
            failures: 1,
            disconnects: 0,
            restarts: 1,
            ticks: 0,
            operator: 2,
            manual: 0,
            dos: 0,
        },
    );
}

#[test]
fn invariants_hold_with_agent_disconnects_deadlines_and_a_coordinator_restart() {
    check(
        "disconnects",
        Scheduler {
            spec: spec(),
            failures: 0,
            disconnects: 1,
            restarts: 1,
            ticks: 1,
            operator: 1,
            manual: 0,
            dos: 0,
        },
    );
}

#[test]
fn invariants_hold_with_manual_maintenance_of_a_manager_and_a_failure() {
    check(
        "manual",
        Scheduler {
            spec: spec(),
            failures: 1,
            disconnects: 0,
            restarts: 0,
            ticks: 0,
            operator: 2,
            manual: 1,
            dos: 0,
        },
    );
}

#[test]
fn invariants_hold_with_operators_disruptive_actions_racing_the_campaign_and_manual_maintenance() {
    check(
        "operator do",
        Scheduler {
            spec: spec(),
            failures: 1,
            disconnects: 0,
            restarts: 0,
            ticks: 0,
            operator: 2,
            manual: 1,
            dos: 2,
        },
    );
}
