//! The systemd actions over D-Bus, against a stand-in of systemd's Manager on a private
//! `dbus-daemon` (tests/support/fake_systemd.rs). The same client talks to the real systemd in
//! the lab tests.

mod support;

use pitcrew_proto::policy::Policy;
use pitcrew_proto::v1::{self, Outcome, action::Kind};
use support::fake_systemd::{FakeSystemd, MAIN_PID};
use support::*;
use tokio::sync::mpsc;

const UNIT: &str = "dcos-mesos-slave.service";

fn unit_policy() -> Policy {
    Policy {
        units: vec!["dcos-mesos-slave*.service".into()],
        ..Default::default()
    }
}

async fn agent_on(fake: &FakeSystemd) -> Agent {
    let mut agent = Agent::new(unit_policy());
    agent.options.system_bus_address = Some(fake.address());
    agent
}

fn unit_op(op: v1::UnitOperation) -> Kind {
    Kind::Unit(v1::UnitAction {
        unit: UNIT.into(),
        operation: op as i32,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_waits_for_the_job_and_reports_done() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "inactive").await;
    fake.state.lock().unwrap().held.insert(UNIT.into());
    let executor = agent_on(&fake).await.open();
    let (tx, _rx) = mpsc::channel(64);
    let task = tokio::spawn(
        executor
            .clone()
            .execute(request("start-1", unit_op(v1::UnitOperation::Start), 0), tx),
    );
    let (_, unit) = fake.next_job().await;
    assert_eq!(unit, UNIT);
    // The job exists but has not finished: the action must still be waiting for it.
    assert_eq!(executor.running(), vec!["start-1".to_owned()]);
    assert!(!task.is_finished());
    fake.release(UNIT).await;
    let result = task.await.unwrap();
    assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
    assert_eq!(result.details["job_result"], "done");
    assert_eq!(fake.state.lock().unwrap().units[UNIT], "active");
    assert!(
        fake.state.lock().unwrap().subscribed > 0,
        "systemd only signals subscribers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_a_failed_action_naming_the_result() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "active").await;
    fake.state
        .lock()
        .unwrap()
        .job_results
        .insert(UNIT.into(), "failed".into());
    let executor = agent_on(&fake).await.open();
    let (result, _) = run(
        &executor,
        request("restart-1", unit_op(v1::UnitOperation::Restart), 0),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::Failed);
    assert!(result.message.contains("'failed'"), "{}", result.message);
    assert_eq!(result.details["job_result"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_of_an_unknown_unit_says_it_is_not_loaded() {
    let fake = FakeSystemd::start().await;
    let executor = agent_on(&fake).await.open();
    let (result, _) = run(
        &executor,
        request("stop-1", unit_op(v1::UnitOperation::Stop), 0),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::Failed);
    assert!(result.message.contains("NoSuchUnit"), "{}", result.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_unit_sends_the_signal_number_to_main_or_all() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "active").await;
    let executor = agent_on(&fake).await.open();
    let kind = |signal: &str, target: v1::SignalTarget| {
        Kind::SignalUnit(v1::SignalUnit {
            unit: UNIT.into(),
            signal: signal.into(),
            target: target as i32,
            ..Default::default()
        })
    };
    let (a, _) = run(
        &executor,
        request("k1", kind("SIGUSR1", v1::SignalTarget::Unspecified), 0),
    )
    .await;
    assert_eq!(outcome(&a), Outcome::Succeeded, "{}", a.message);
    let (b, _) = run(
        &executor,
        request("k2", kind("TERM", v1::SignalTarget::All), 0),
    )
    .await;
    assert_eq!(outcome(&b), Outcome::Succeeded, "{}", b.message);
    let (bad, _) = run(
        &executor,
        request("k3", kind("SIGNOPE", v1::SignalTarget::Main), 0),
    )
    .await;
    assert_eq!(outcome(&bad), Outcome::Refused);
    assert_eq!(bad.refused_by, "signal");
    assert_eq!(
        fake.state.lock().unwrap().kills,
        vec![
            (UNIT.to_owned(), "main".to_owned(), libc_signal("SIGUSR1")),
            (UNIT.to_owned(), "all".to_owned(), libc_signal("SIGTERM")),
        ]
    );
}

fn drain(wait: v1::SignalWait, wait_seconds: u32) -> Kind {
    Kind::SignalUnit(v1::SignalUnit {
        unit: UNIT.into(),
        signal: "SIGUSR1".into(),
        target: v1::SignalTarget::Main as i32,
        wait: wait as i32,
        wait_seconds,
    })
}

/// Waits until the stand-in systemd has received `n` KillUnit calls.
async fn kills_reach(fake: &FakeSystemd, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fake.state.lock().unwrap().kills.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no KillUnit call came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_succeeds_only_once_the_signalled_main_process_has_exited() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "active").await;
    let executor = agent_on(&fake).await.open();
    let action = tokio::spawn({
        let executor = executor.clone();
        async move { run(&executor, request("d1", drain(v1::SignalWait::Exit, 60), 0)).await }
    });
    kills_reach(&fake, 1).await;
    // The signal is sent and the process drains: the action has not ended, whatever the time
    // it takes to see that (it cannot end before the process does, or 60 s).
    assert!(!action.is_finished(), "ended before the process exited");
    // Another process of the unit changing state is not the main one exiting.
    fake.set_state(UNIT, "reloading").await;
    fake.set_state(UNIT, "active").await;
    assert!(
        !action.is_finished(),
        "ended on a state change of a running unit"
    );
    fake.set_main_pid(UNIT, 0).await;
    let (result, _) = action.await.unwrap();
    assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
    assert!(
        result
            .message
            .contains(&format!("its main process {MAIN_PID} to exit took")),
        "{}",
        result.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_service_counts_as_exited_and_leaving_active_ends_the_other_wait() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "active").await;
    let executor = agent_on(&fake).await.open();
    // Restart=always: the drained process exits and systemd starts a new one at once.
    let action = tokio::spawn({
        let executor = executor.clone();
        async move { run(&executor, request("d1", drain(v1::SignalWait::Exit, 60), 0)).await }
    });
    kills_reach(&fake, 1).await;
    fake.set_main_pid(UNIT, MAIN_PID + 1).await;
    let (result, _) = action.await.unwrap();
    assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);

    let action = tokio::spawn({
        let executor = executor.clone();
        async move {
            run(
                &executor,
                request("d2", drain(v1::SignalWait::Inactive, 60), 0),
            )
            .await
        }
    });
    kills_reach(&fake, 2).await;
    fake.set_state(UNIT, "deactivating").await;
    assert!(!action.is_finished(), "deactivating is not yet inactive");
    fake.set_state(UNIT, "inactive").await;
    let (result, _) = action.await.unwrap();
    assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
    assert!(
        result.message.contains("leave active"),
        "{}",
        result.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_does_not_happen_in_time_fails_with_what_was_seen() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "active").await;
    let executor = agent_on(&fake).await.open();
    // The deadline is what is tested here: 1 s of a process that never exits.
    let (result, _) = run(&executor, request("d1", drain(v1::SignalWait::Exit, 1), 0)).await;
    assert_eq!(outcome(&result), Outcome::Failed, "{}", result.message);
    assert!(
        result.message.contains(&format!(
            "after 1 s still waiting for its main process {MAIN_PID} to exit: {UNIT} is active, main process {MAIN_PID}"
        )),
        "{}",
        result.message
    );
    // Without a wait the same signal succeeds once sent (what `signal_unit` did before).
    let (sent, _) = run(&executor, request("d2", drain(v1::SignalWait::None, 0), 0)).await;
    assert_eq!(outcome(&sent), Outcome::Succeeded, "{}", sent.message);
    assert_eq!(fake.state.lock().unwrap().kills.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_unit_sends_only_the_signals_the_policy_allows() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "active").await;
    let signal = |name: &str| {
        Kind::SignalUnit(v1::SignalUnit {
            unit: UNIT.into(),
            signal: name.into(),
            target: v1::SignalTarget::All as i32,
            ..Default::default()
        })
    };
    // The default list: drain, reload and stop signals, not SIGKILL or SIGSTOP.
    let executor = agent_on(&fake).await.open();
    for (i, name) in ["SIGKILL", "STOP", "SIGSEGV"].iter().enumerate() {
        let (result, _) = run(&executor, request(&format!("s{i}"), signal(name), 0)).await;
        assert_eq!(
            outcome(&result),
            Outcome::Refused,
            "{name}: {}",
            result.message
        );
        assert_eq!(result.refused_by, "policy.signals");
        assert!(
            result.message.contains("SIGUSR1"),
            "the message lists what is allowed: {}",
            result.message
        );
    }
    assert!(
        fake.state.lock().unwrap().kills.is_empty(),
        "no signal may reach systemd"
    );
    drop(executor);

    // A host that allows SIGKILL (and only that) sends it, and nothing else.
    let mut agent = agent_on(&fake).await;
    agent.config.policy.signals = vec!["SIGKILL".into()];
    let executor = agent.open();
    let (kill, _) = run(&executor, request("k-kill", signal("KILL"), 0)).await;
    assert_eq!(outcome(&kill), Outcome::Succeeded, "{}", kill.message);
    let (usr1, _) = run(&executor, request("k-usr1", signal("SIGUSR1"), 0)).await;
    assert_eq!(usr1.refused_by, "policy.signals");
    assert_eq!(
        fake.state.lock().unwrap().kills,
        vec![(UNIT.to_owned(), "all".to_owned(), libc_signal("SIGKILL"))]
    );
}

fn libc_signal(name: &str) -> i32 {
    use std::str::FromStr;
    nix::sys::signal::Signal::from_str(name).unwrap() as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_unit_returns_when_the_state_is_reached() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "activating").await;
    let executor = agent_on(&fake).await.open();
    let (tx, _rx) = mpsc::channel(64);
    let wait = |id: &str, state: v1::UnitState| {
        request(
            id,
            Kind::WaitUnit(v1::WaitUnit {
                unit: UNIT.into(),
                state: state as i32,
            }),
            0,
        )
    };
    let task = tokio::spawn(
        executor
            .clone()
            .execute(wait("w1", v1::UnitState::Active), tx),
    );
    // Whether the waiter reads "activating" before or after this change, it must end with
    // "active": it re-reads the state on every PropertiesChanged.
    fake.set_state(UNIT, "active").await;
    let result = task.await.unwrap();
    assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
    assert_eq!(result.details["state"], "active");

    fake.set_state(UNIT, "failed").await;
    let (failed, _) = run(&executor, wait("w2", v1::UnitState::Inactive)).await;
    assert_eq!(outcome(&failed), Outcome::Failed);
    assert!(
        failed.message.contains("is failed, not inactive"),
        "{}",
        failed.message
    );

    let (timed_out, _) = {
        let mut req = wait("w3", v1::UnitState::Active);
        req.timeout_seconds = 1;
        fake.set_state(UNIT, "activating").await;
        run(&executor, req).await
    };
    assert_eq!(outcome(&timed_out), Outcome::TimedOut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_active_health_reads_active_state() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "active").await;
    fake.add_unit("other.service", "inactive").await;
    let executor = agent_on(&fake).await.open();
    let health = |unit: &str| {
        Kind::Health(v1::Health {
            check: Some(v1::health::Check::UnitActive(unit.into())),
        })
    };
    let (up, _) = run(&executor, request("h1", health(UNIT), 0)).await;
    assert_eq!(outcome(&up), Outcome::Succeeded, "{}", up.message);
    let (down, _) = run(&executor, request("h2", health("other.service"), 0)).await;
    assert_eq!(outcome(&down), Outcome::Failed);
    assert!(down.message.contains("inactive"), "{}", down.message);
    let (missing, _) = run(&executor, request("h3", health("missing.service"), 0)).await;
    assert_eq!(outcome(&missing), Outcome::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_disable_and_daemon_reload_go_through_the_manager() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "inactive").await;
    let executor = agent_on(&fake).await.open();
    let (enable, _) = run(
        &executor,
        request("en", unit_op(v1::UnitOperation::Enable), 0),
    )
    .await;
    assert_eq!(outcome(&enable), Outcome::Succeeded, "{}", enable.message);
    assert!(enable.details["changes"].contains("symlink"));
    assert!(fake.state.lock().unwrap().enabled.contains(UNIT));
    let (disable, _) = run(
        &executor,
        request("dis", unit_op(v1::UnitOperation::Disable), 0),
    )
    .await;
    assert_eq!(outcome(&disable), Outcome::Succeeded, "{}", disable.message);
    assert!(!fake.state.lock().unwrap().enabled.contains(UNIT));
    let (reload, _) = run(
        &executor,
        request("dr", Kind::DaemonReload(v1::DaemonReload {}), 0),
    )
    .await;
    assert_eq!(outcome(&reload), Outcome::Succeeded, "{}", reload.message);
    // enable and disable each reload too.
    assert_eq!(fake.state.lock().unwrap().reloads, 3);
}

#[tokio::test]
async fn an_invalid_unit_name_is_refused_before_any_bus_call() {
    // No bus at all: a refusal proves no D-Bus call was attempted.
    let mut agent = Agent::new(Policy {
        units: vec!["*".into()],
        ..Default::default()
    });
    agent.options.system_bus_address = Some("unix:path=/nonexistent/bus".into());
    let executor = agent.open();
    for (i, name) in ["sshd", "x;reboot.service", "../x.service", ""]
        .iter()
        .enumerate()
    {
        let (result, _) = run(
            &executor,
            request(
                &format!("n{i}"),
                Kind::Unit(v1::UnitAction {
                    unit: name.to_string(),
                    operation: v1::UnitOperation::Stop as i32,
                    ..Default::default()
                }),
                0,
            ),
        )
        .await;
        assert_eq!(outcome(&result), Outcome::Refused, "{name}");
        assert_eq!(result.refused_by, "unit-name", "{name}");
    }
}

#[tokio::test]
async fn without_a_bus_systemd_actions_fail_with_a_clear_message() {
    let mut agent = Agent::new(unit_policy());
    agent.options.system_bus_address = Some("unix:path=/nonexistent/bus".into());
    let executor = agent.open();
    let (result, _) = run(
        &executor,
        request("nobus", unit_op(v1::UnitOperation::Start), 0),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::Failed);
    assert!(
        result
            .message
            .starts_with("systemd is not reachable over D-Bus on this host ("),
        "{}",
        result.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_without_systemd_on_it_is_also_unreachable() {
    let bus = support::fake_systemd::DbusDaemon::start();
    let mut agent = Agent::new(unit_policy());
    agent.options.system_bus_address = Some(bus.address.clone());
    let executor = agent.open();
    let (result, _) = run(
        &executor,
        request("empty", unit_op(v1::UnitOperation::Stop), 0),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::Failed);
    assert!(
        result
            .message
            .starts_with("systemd is not reachable over D-Bus"),
        "{}",
        result.message
    );
}

fn hold_file(agent: &Agent) -> std::path::PathBuf {
    agent
        .config
        .host
        .unit_dir
        .join(format!("{UNIT}.d"))
        .join(pitcrew_agent::holds::HOLD_FILE)
}

fn release(hold_id: &str) -> Kind {
    Kind::ReleaseHolds(v1::ReleaseHolds {
        holds: vec![v1::HeldUnit {
            unit: UNIT.into(),
            hold_id: hold_id.into(),
        }],
    })
}

/// The stand-in systemd does not evaluate conditions: that the drop-in really keeps the unit
/// down at boot, on Restart= and by hand is proved on real systemd in the lab
/// (`tests/tests/lab.rs`). Here: the hold's life cycle and what the agent does with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_unit_stays_held_until_the_run_starts_it_and_running_anyway_fails_the_next_step() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "active").await;
    let agent = agent_on(&fake).await;
    let executor = agent.open();
    let stop = Kind::Unit(v1::UnitAction {
        unit: UNIT.into(),
        operation: v1::UnitOperation::Stop as i32,
        hold: true,
    });
    let (stopped, _) = run(&executor, request("c1:h:0", stop.clone(), 0)).await;
    assert_eq!(outcome(&stopped), Outcome::Succeeded, "{}", stopped.message);
    assert!(stopped.message.contains("held down"), "{}", stopped.message);
    let text = std::fs::read_to_string(hold_file(&agent)).unwrap();
    assert!(text.contains("ConditionPathExists=!"), "{text}");
    assert_eq!(
        fake.state.lock().unwrap().reloads,
        1,
        "systemd reads the hold"
    );
    let facts = pitcrew_agent::facts::collect(&agent.config, "h", "worker", &Default::default());
    assert_eq!(
        facts.held_units,
        vec![v1::HeldUnit {
            unit: UNIT.into(),
            hold_id: "c1:h:0".into()
        }]
    );

    // Started by hand during maintenance: the next step fails, naming the unit.
    fake.set_state(UNIT, "active").await;
    let (next, _) = run(
        &executor,
        request("c1:h:1", Kind::DaemonReload(v1::DaemonReload {}), 0),
    )
    .await;
    assert_eq!(outcome(&next), Outcome::Refused, "{}", next.message);
    assert_eq!(next.refused_by, "held-unit");
    assert!(
        next.message.contains(&format!("{UNIT} is active"))
            && next.message.contains("although pitcrew holds it down"),
        "{}",
        next.message
    );
    assert_eq!(next.details["held_unit_running"], UNIT);
    fake.set_state(UNIT, "inactive").await;

    // A release of another hold of the unit leaves this one.
    let (kept, _) = run(&executor, request("r1", release("c0:h:0"), 0)).await;
    assert_eq!(outcome(&kept), Outcome::Succeeded, "{}", kept.message);
    assert!(hold_file(&agent).exists(), "{}", kept.message);

    // The run starts it again: the hold is lifted first, then the unit starts.
    let start = unit_op(v1::UnitOperation::Start);
    let (started, _) = run(&executor, request("c1:h:2", start, 0)).await;
    assert_eq!(outcome(&started), Outcome::Succeeded, "{}", started.message);
    assert!(
        started.message.contains("its hold lifted first"),
        "{}",
        started.message
    );
    assert!(!hold_file(&agent).exists());
    assert_eq!(fake.state.lock().unwrap().units[UNIT], "active");

    // Leaving maintenance: the release lifts the hold and starts nothing.
    let (_, _) = run(&executor, request("c2:h:0", stop, 0)).await;
    assert!(hold_file(&agent).exists());
    let (released, _) = run(&executor, request("r2", release("c2:h:0"), 0)).await;
    assert_eq!(
        outcome(&released),
        Outcome::Succeeded,
        "{}",
        released.message
    );
    assert!(
        released.message.contains("not started"),
        "{}",
        released.message
    );
    assert!(!hold_file(&agent).exists());
    assert_eq!(fake.state.lock().unwrap().units[UNIT], "inactive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_without_hold_holds_nothing() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "active").await;
    let agent = agent_on(&fake).await;
    let executor = agent.open();
    let (stopped, _) = run(
        &executor,
        request("s1", unit_op(v1::UnitOperation::Stop), 0),
    )
    .await;
    assert_eq!(outcome(&stopped), Outcome::Succeeded, "{}", stopped.message);
    assert!(!hold_file(&agent).exists());
    assert_eq!(fake.state.lock().unwrap().reloads, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_removed_by_hand_is_a_broken_hold_until_it_is_released() {
    let fake = FakeSystemd::start().await;
    fake.add_unit(UNIT, "active").await;
    let agent = agent_on(&fake).await;
    let executor = agent.open();
    let stop = Kind::Unit(v1::UnitAction {
        unit: UNIT.into(),
        operation: v1::UnitOperation::Stop as i32,
        hold: true,
    });
    let (stopped, _) = run(&executor, request("c1:h:0", stop, 0)).await;
    assert_eq!(outcome(&stopped), Outcome::Succeeded, "{}", stopped.message);
    // `systemctl revert` or an `rm`: the unit is still down, but nothing keeps it down.
    std::fs::remove_file(hold_file(&agent)).unwrap();
    let (next, _) = run(
        &executor,
        request("c1:h:1", Kind::DaemonReload(v1::DaemonReload {}), 0),
    )
    .await;
    assert_eq!(outcome(&next), Outcome::Refused, "{}", next.message);
    assert_eq!(next.refused_by, "held-unit");
    assert!(
        next.message.contains("removed outside pitcrew"),
        "{}",
        next.message
    );
    // A check only looks: it still runs (and reports the unit's real state).
    let check = Kind::Health(v1::Health {
        check: Some(v1::health::Check::UnitActive(UNIT.into())),
    });
    let (looked, _) = run(&executor, request("c1:h:2", check, 0)).await;
    assert_ne!(outcome(&looked), Outcome::Refused, "{}", looked.message);
    // Leaving maintenance releases it like any hold; then actions run again.
    let (released, _) = run(&executor, request("r1", release("c1:h:0"), 0)).await;
    assert_eq!(
        outcome(&released),
        Outcome::Succeeded,
        "{}",
        released.message
    );
    let (after, _) = run(
        &executor,
        request("d1", Kind::DaemonReload(v1::DaemonReload {}), 0),
    )
    .await;
    assert_eq!(outcome(&after), Outcome::Succeeded, "{}", after.message);
}
