//! Fuzz target `session_messages`: the messages of an agent session, decoded (prost) and then
//! handled as far as that is possible without a network, on both ends. One input is decoded
//! both ways.
//!
//! * As a `CoordinatorMessage`, what the agent receives. An action request goes to a real
//!   `Executor` over a fresh, empty state directory: its gate (action id, journal, policy).
//!   The harness hands it only requests the gate must refuse (an unsafe id or a policy
//!   refusal), so nothing is ever run, and checks that each is answered REFUSED. Then the agent
//!   restarts (a new executor over the same journal): the refusal is among its unacknowledged
//!   results, and the repeated id is answered from the journal with the very same result, also
//!   after the coordinator acknowledged it. Cancels and acknowledgements go to an executor too.
//! * As an `AgentMessage`, what the coordinator receives: the facts of a hello or an update
//!   (host id and hostname checks, the reported policy in its planner form, a plan of a campaign
//!   with every action kind on the host reporting it), and results, applied to a campaign run
//!   waiting on an action as the engine applies them (a hello's facts first, as the session
//!   hands them to the engine first), then decided on as the engine decides.
//!
//! Nothing may panic. Checked besides: both messages survive re-encoding, a reported policy
//! survives its planner form, no campaign invariant breaks, and a run survives the store's JSON.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pitcrew_agent::actions::{Executor, ExecutorOptions};
use pitcrew_agent::config::AgentConfig;
use pitcrew_agent::journal;
use pitcrew_coordinator::server::enroll::validate_hostname;
use pitcrew_coordinator::wire;
use pitcrew_fuzz::{NOW_MS, fleet, scratch_dir};
use pitcrew_proto::actions as catalogue;
use pitcrew_proto::identity::validate_host_id;
use pitcrew_proto::policy::LocalPolicy;
use pitcrew_proto::v1::{
    self, AgentMessage, CoordinatorMessage, action_event, agent_message, coordinator_message,
};
use pitcrew_scheduler::{
    CampaignRun, CampaignSpec, Decision, Event, Fleet, HostView, Outcome, apply, decide,
    invariants, plan,
};
use prost::Message;
use tempfile::TempDir;
use tokio::sync::mpsc;

/// A campaign with one step of every action kind, on `worker-1` only: a reported policy is
/// checked against each of them, as `pitcrew campaign plan` predicts refusals.
const EVERY_ACTION: &str = include_str!("../corpus/campaign_spec/seed-every-action.toml");

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = CoordinatorMessage::decode(data) {
        let again = CoordinatorMessage::decode(message.encode_to_vec().as_slice())
            .expect("a re-encoded message decodes");
        assert_eq!(
            again, message,
            "a coordinator message changed through re-encoding"
        );
        agent_handles(message);
    }
    if let Ok(message) = AgentMessage::decode(data) {
        let again = AgentMessage::decode(message.encode_to_vec().as_slice())
            .expect("a re-encoded message decodes");
        assert_eq!(
            again, message,
            "an agent message changed through re-encoding"
        );
        coordinator_handles(message);
    }
});

// ---- the agent end ----

/// The agent end: its configuration (state under a scratch directory) and a runtime.
struct Agent {
    runtime: tokio::runtime::Runtime,
    config: AgentConfig,
    /// Holds the state directory; removed when the process ends.
    _dir: TempDir,
}

/// The policy of the fuzzed agent: it allows a few things (so that matching has entries to
/// walk) under names no request is likely to hit; the harness never hands it a request it
/// allows.
fn agent_policy() -> LocalPolicy {
    LocalPolicy {
        units: vec!["pitcrew-fuzz-*.service".into()],
        remove_paths: vec!["/nonexistent/pitcrew-fuzz".into()],
        exec: vec![vec!["/nonexistent/pitcrew-fuzz".to_owned()].into()],
        ..LocalPolicy::default()
    }
}

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let dir = scratch_dir("session-agent");
        let boot_id_file = dir.path().join("boot_id");
        std::fs::write(&boot_id_file, "fuzz-boot-1\n").expect("write the boot id");
        let mut config = AgentConfig::for_tests(&dir.path().join("state"));
        config.policy = agent_policy();
        config.host.boot_id_file = boot_id_file;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Agent {
            runtime,
            config,
            _dir: dir,
        }
    })
}

impl Agent {
    /// An executor over the agent's state directory: a restarted agent, which reads back the
    /// journal the previous one left.
    fn restart(&self) -> Arc<Executor> {
        let options = ExecutorOptions {
            // Nothing runs, so nothing should reach a bus; if it did, there is none here.
            system_bus_address: Some("unix:path=/nonexistent/pitcrew-fuzz-bus".into()),
            patch_tools: None,
        };
        Executor::open_with(&self.config, options).expect("open the executor")
    }

    /// An executor over an empty state directory. Each input starts from one, so an input
    /// that crashes the target crashes it alone too.
    fn fresh(&self) -> Arc<Executor> {
        let _ = std::fs::remove_dir_all(&self.config.state_dir);
        self.restart()
    }

    fn execute(&self, executor: &Arc<Executor>, request: &v1::ActionRequest) -> v1::ActionResult {
        let (events, _receiver) = mpsc::channel(16);
        self.runtime
            .block_on(executor.clone().execute(request.clone(), events))
    }
}

/// What the agent's session does with a message from the coordinator.
fn agent_handles(message: CoordinatorMessage) {
    let agent = agent();
    match message.msg {
        Some(coordinator_message::Msg::Action(request)) => gate(agent, &request),
        Some(coordinator_message::Msg::Cancel(cancel)) => {
            assert!(
                !agent.fresh().cancel(&cancel.action_id),
                "a cancel found a running action, but nothing runs"
            );
        }
        Some(coordinator_message::Msg::Ack(ack)) => agent.fresh().acknowledge(&ack.action_ids),
        Some(coordinator_message::Msg::Welcome(_)) | None => {}
    }
}

/// The executor's gate, for a request it must refuse; then the same id after a restart.
fn gate(agent: &Agent, request: &v1::ActionRequest) {
    // What the agent logs and journals of any request, refused or not.
    let _ = catalogue::describe(request.action.as_ref());
    let _ = journal::kind_name(request);
    if let Some(kind) = request.action.as_ref().and_then(|a| a.kind.as_ref()) {
        let _ = catalogue::default_timeout(kind);
    }
    let id_ok = journal::validate_id(&request.action_id).is_ok();
    let action = request.action.clone().unwrap_or_default();
    if id_ok && agent.config.policy.check(&action).is_ok() {
        // Allowed: running it would act on this machine (or wait on a timeout). Not here.
        return;
    }

    let executor = agent.fresh();
    let first = agent.execute(&executor, request);
    assert_eq!(
        first.outcome,
        v1::Outcome::Refused as i32,
        "a request the gate must refuse was answered {first:?}"
    );
    assert_eq!(first.action_id, request.action_id);
    assert!(executor.running().is_empty(), "a refused request runs");
    if !id_ok {
        // An id that cannot name a file is not journaled: nothing to read back.
        return;
    }
    drop(executor);

    // At-most-once (ARCHITECTURE.md): after a restart, the refusal is still to be reported,
    // and a repeated id is answered from the journal, before and after the coordinator
    // acknowledged it.
    let executor = agent.restart();
    assert_eq!(
        executor.unacknowledged(),
        vec![first.clone()],
        "the journal lost or changed a refusal across a restart"
    );
    let again = agent.execute(&executor, request);
    assert_eq!(
        again, first,
        "a repeated id was not answered from the journal"
    );
    executor.acknowledge(std::slice::from_ref(&request.action_id));
    drop(executor);
    let executor = agent.restart();
    assert!(
        executor.unacknowledged().is_empty(),
        "an acknowledged result is reported again after a restart"
    );
    let again = agent.execute(&executor, request);
    assert_eq!(
        again, first,
        "an acknowledged id was not answered from the journal"
    );
}

// ---- the coordinator end ----

/// The coordinator end: the campaign, the fleet, and the run at each point where it waits on
/// an action, for results to be applied to.
struct Coordinator {
    spec: CampaignSpec,
    hosts: Vec<HostView>,
    waiting: Vec<Waiting>,
}

/// A run waiting on one action, with the fleet as it was then.
#[derive(Clone)]
struct Waiting {
    run: CampaignRun,
    fleet: Fleet,
    action_id: String,
    /// The host the action was sent to: the one whose certificate a result comes with.
    target: String,
}

fn coordinator() -> &'static Coordinator {
    static COORDINATOR: OnceLock<Coordinator> = OnceLock::new();
    COORDINATOR.get_or_init(|| {
        let spec = CampaignSpec::parse(EVERY_ACTION, "every-action.toml")
            .unwrap_or_else(|e| panic!("the harness's campaign: {e}"));
        let hosts = fleet();
        let waiting = waiting_runs(&spec, &hosts);
        assert!(
            !waiting.is_empty(),
            "the harness's campaign dispatches nothing"
        );
        Coordinator {
            spec,
            hosts,
            waiting,
        }
    })
}

/// Runs the campaign to its end with every action succeeding, keeping a copy of the run (and
/// fleet) each time it waits on an action.
fn waiting_runs(spec: &CampaignSpec, hosts: &[HostView]) -> Vec<Waiting> {
    let mut fleet = Fleet::from_hosts(hosts.iter().cloned());
    let mut run = CampaignRun::new("c-fuzz", spec, hosts, NOW_MS).expect("the harness's run");
    let mut now = NOW_MS;
    let mut waiting = Vec::new();
    for _ in 0..1_000 {
        if !run.is_active() {
            break;
        }
        let decided = decide(&fleet, std::slice::from_ref(&run), now);
        for decision in &decided.decisions {
            apply(&mut run, &fleet, &Event::Decision(decision.clone()), now)
                .expect("a decision applies");
        }
        for decision in &decided.decisions {
            let Decision::Dispatch(dispatch) = decision else {
                continue;
            };
            waiting.push(Waiting {
                run: run.clone(),
                fleet: fleet.clone(),
                action_id: dispatch.action_id.clone(),
                target: dispatch.target_host.clone(),
            });
            // A reboot comes back with a new boot id, as the engine learns from the hello.
            let boot_id = dispatch.action.is_reboot().then(|| {
                let host = fleet.hosts.get_mut(&dispatch.target_host).expect("target");
                host.boot_id.push('+');
                host.boot_id.clone()
            });
            let finished = Event::ActionFinished {
                action_id: dispatch.action_id.clone(),
                outcome: Outcome::Succeeded,
                message: String::new(),
                boot_id,
            };
            apply(&mut run, &fleet, &finished, now).expect("a result applies");
        }
        if decided.decisions.is_empty() {
            match decided.wake_at_ms {
                Some(at) if at > now => now = at,
                _ => break,
            }
        }
    }
    waiting
}

/// What the coordinator's session and engine do with a message from an agent.
fn coordinator_handles(message: AgentMessage) {
    match message.msg {
        Some(agent_message::Msg::Hello(hello)) => {
            if let Some(facts) = &hello.facts {
                facts_arrive(facts);
            }
            for result in &hello.unacknowledged {
                result_arrives(result, hello.facts.as_ref());
            }
        }
        Some(agent_message::Msg::Facts(facts)) => facts_arrive(&facts),
        Some(agent_message::Msg::Event(event)) => match event.event {
            Some(action_event::Event::Result(result)) => result_arrives(&result, None),
            Some(action_event::Event::Progress(_)) | Some(action_event::Event::Log(_)) | None => {}
        },
        Some(agent_message::Msg::Heartbeat(_)) | None => {}
    }
}

/// Facts: the names are checked, and the reported policy becomes the planner's view of
/// `worker-1`, which the campaign with every action kind is planned against.
fn facts_arrive(facts: &v1::Facts) {
    let _ = validate_host_id(&facts.host_id);
    let _ = validate_hostname(&facts.hostname);
    let Some(reported) = &facts.policy else {
        return;
    };
    let policy = LocalPolicy::from_proto(reported);
    assert_eq!(
        &policy.to_proto(),
        reported,
        "a reported policy changed through the planner's view"
    );
    let c = coordinator();
    let mut hosts = c.hosts.clone();
    for host in hosts.iter_mut().filter(|h| h.hostname == "worker-1") {
        host.policy = Some(policy.clone());
    }
    let _ = plan(&c.spec, "c-fuzz", &hosts, NOW_MS);
}

/// A result, applied to a run waiting on an action (the result's start time picks which) as
/// the engine applies results, then decided on for as many rounds as a turn has. `hello` is
/// the facts of the hello that carried the result, which the engine has seen first.
fn result_arrives(result: &v1::ActionResult, hello: Option<&v1::Facts>) {
    let _ = catalogue::outcome(result.outcome);
    let c = coordinator();
    let pick = result.started_at_ms.unsigned_abs() % c.waiting.len() as u64;
    let Waiting {
        mut run,
        mut fleet,
        action_id,
        target,
    } = c.waiting[usize::try_from(pick).unwrap_or(0)].clone();
    // As `EngineState::session_changed` takes a hello's facts into the fleet view.
    if let (Some(facts), Some(view)) = (hello, fleet.hosts.get_mut(&target)) {
        view.connected = true;
        view.healthy = true;
        view.boot_id = facts.boot_id.clone();
        view.policy = facts.policy.as_ref().map(LocalPolicy::from_proto);
    }
    // The session hands the engine only results for actions sent to the reporting host, so
    // the id is the one the run waits on; the rest is the agent's word. The boot id is the
    // one the fleet view holds for that host, as in the engine's `on_result`.
    let finished = Event::ActionFinished {
        action_id,
        outcome: wire::outcome(result.outcome),
        message: result.message.clone(),
        boot_id: fleet
            .hosts
            .get(&target)
            .map(|h| h.boot_id.clone())
            .filter(|b| !b.is_empty()),
    };
    let mut now = NOW_MS.saturating_add(result.finished_at_ms.rem_euclid(86_400_000));
    let _ = apply(&mut run, &fleet, &finished, now);
    check(&fleet, &run);
    for _ in 0..8 {
        let decided = decide(&fleet, std::slice::from_ref(&run), now);
        if decided.decisions.is_empty() {
            match decided.wake_at_ms {
                Some(at) if at > now => {
                    now = at;
                    continue;
                }
                _ => break,
            }
        }
        for decision in decided.decisions {
            apply(&mut run, &fleet, &Event::Decision(decision), now)
                .unwrap_or_else(|e| panic!("a decision does not apply: {e}"));
        }
        check(&fleet, &run);
    }
    let json = serde_json::to_value(&run).expect("a run serialises to JSON");
    let back: CampaignRun = serde_json::from_value(json).expect("a run reads back from JSON");
    assert_eq!(back, run, "a run changed through the store's JSON form");
}

/// Fails when the run breaks a campaign invariant.
fn check(fleet: &Fleet, run: &CampaignRun) {
    let broken = invariants::check(fleet, std::slice::from_ref(run));
    assert!(broken.is_empty(), "campaign invariants broken: {broken:?}");
}
