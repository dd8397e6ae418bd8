//! One small fleet per rule: each test drives `decide`/`apply` as the runtime would and
//! checks what an operator would see (which host starts, which slot, which blocker).

mod common;

use common::*;
use pitcrew_scheduler::{
    ApplyError, Blocker, CampaignRun, CampaignState, Decision, Event, Fleet, HostState,
    ManualPhase, ManualState, Outcome, Role, action_id, apply, decide, invariants, manual_enable,
};

const PATCH: &str = r#"
name = "patch"
[[steps]]
action = "patch"
"#;

#[test]
fn workers_first_one_at_a_time_then_managers() {
    let mut f = fleet(2, 2);
    let mut runs = vec![run("c1", PATCH, &f)];
    let d = tick(&f, &mut runs, 0);
    assert_eq!(started(&d), vec!["w1"]);
    assert_eq!(
        d.blocker_for("c1", "w2"),
        Some(&Blocker::NoSlot {
            slot: "worker-pool (1 slots)".into(),
            held_by: vec!["w1".into()]
        })
    );
    assert_eq!(
        d.blocker_for("c1", "m1"),
        Some(&Blocker::WaitingForRole {
            role: Role::Worker,
            remaining: 2
        })
    );
    let order = run_to_end(&mut f, &mut runs, 0);
    assert_eq!(
        order,
        vec!["w2", "m1", "m2"],
        "after w1: w2, then the managers"
    );
    assert_eq!(runs[0].state, CampaignState::Completed);
}

#[test]
fn managers_first_when_the_order_says_so() {
    let mut f = fleet(2, 2);
    let text = format!("order = [\"manager\", \"worker\"]\n{PATCH}");
    let mut runs = vec![run("c1", &text, &f)];
    assert_eq!(
        run_to_end(&mut f, &mut runs, 0),
        vec!["m1", "m2", "w1", "w2"]
    );
}

#[test]
fn worker_percentage_sets_the_pool_size() {
    let f = fleet(4, 0);
    let text = "name = \"p\"\n[concurrency]\nworker = \"50%\"\n[[steps]]\naction = \"patch\"\n";
    let mut runs = vec![run("c1", text, &f)];
    let d = tick(&f, &mut runs, 0);
    assert_eq!(started(&d), vec!["w1", "w2"]);
    let slots: Vec<Option<String>> = runs[0].hosts.iter().map(|h| h.slot.clone()).collect();
    assert_eq!(
        slots,
        vec![
            Some("worker-pool#1".into()),
            Some("worker-pool#2".into()),
            None,
            None
        ]
    );
    assert!(matches!(
        d.blocker_for("c1", "w3"),
        Some(Blocker::NoSlot { .. })
    ));
}

#[test]
fn one_manager_per_cluster_across_campaigns() {
    let f = fleet(0, 3);
    let a = run("a", PATCH, &f);
    let b = run("b", PATCH, &f);
    let mut runs = vec![a, b];
    let d = tick(&f, &mut runs, 0);
    assert_eq!(
        started(&d),
        vec!["m1"],
        "only one manager of the cluster starts"
    );
    assert_eq!(
        d.blocker_for("b", "m2"),
        Some(&Blocker::NoSlot {
            slot: "manager:swarm-a".into(),
            held_by: vec!["m1 (campaign a)".into()]
        })
    );
    assert_eq!(
        d.blocker_for("b", "m1"),
        Some(&Blocker::HeldElsewhere {
            by: pitcrew_scheduler::Holder::Campaign("a".into())
        })
    );
    assert!(invariants::check(&f, &runs).is_empty());
}

#[test]
fn managers_of_different_clusters_go_in_parallel() {
    let mut f = fleet(0, 0);
    for (id, c) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")] {
        f.hosts.insert(id.into(), host(id, Role::Manager, c));
    }
    let mut runs = vec![run("c", PATCH, &f)];
    let d = tick(&f, &mut runs, 0);
    assert_eq!(started(&d), vec!["a1", "b1"]);
}

#[test]
fn manual_maintenance_holds_the_manager_slot() {
    let mut f = fleet(0, 3);
    let runs0 = vec![run("c1", PATCH, &f)];
    let (id, state) = manual_enable(&f, &runs0, "m3", "alice", 0).unwrap();
    f.manual.insert(id, state.clone());
    let mut runs = runs0;
    let d = tick(&f, &mut runs, 0);
    assert!(started(&d).is_empty());
    assert_eq!(
        d.blocker_for("c1", "m1"),
        Some(&Blocker::NoSlot {
            slot: "manager:swarm-a".into(),
            held_by: vec!["m3 (manual maintenance)".into()]
        })
    );
    // A second manual manager of the same cluster is refused too.
    assert!(manual_enable(&f, &runs, "m2", "bob", 0).is_err());
    // Entering → Maintenance → Leaving → Running frees the slot.
    let s = state.entered("m3", 1).unwrap();
    assert_eq!(s.phase, ManualPhase::Maintenance);
    assert!(s.left("m3").is_err(), "must leave before running");
    let s = s.leave("m3", 2).unwrap();
    s.left("m3").unwrap();
    f.manual.remove("m3");
    assert_eq!(started(&tick(&f, &mut runs, 3)), vec!["m1"]);
    // Now the campaign holds the slot: manual maintenance of another manager is refused.
    assert!(manual_enable(&f, &runs, "m2", "bob", 3).is_err());
    let illegal = ManualState {
        phase: ManualPhase::Leaving,
        since_ms: 0,
        by: String::new(),
    };
    assert!(illegal.entered("m3", 0).is_err());
}

#[test]
fn quorum_guard_blocks_a_manager_while_another_is_down() {
    let mut f = fleet(0, 3);
    f.hosts.get_mut("m3").unwrap().connected = false;
    let mut runs = vec![run("c1", PATCH, &f)];
    let d = tick(&f, &mut runs, 0);
    assert!(started(&d).is_empty());
    assert_eq!(
        d.blocker_for("c1", "m1"),
        Some(&Blocker::QuorumGuard {
            manager: "m3".into(),
            why: "disconnected".into()
        })
    );
    f.hosts.get_mut("m3").unwrap().connected = true;
    f.hosts.get_mut("m2").unwrap().healthy = false;
    let d = tick(&f, &mut runs, 0);
    assert_eq!(
        d.blocker_for("c1", "m1").map(|b| b.to_string()),
        Some("quorum guard: manager m2 is unhealthy".into())
    );
}

#[test]
fn the_leader_goes_last() {
    let mut f = fleet(0, 3);
    f.hosts
        .get_mut("m1")
        .unwrap()
        .labels
        .insert("leader".into(), "true".into());
    let mut runs = vec![run("c1", PATCH, &f)];
    assert_eq!(run_to_end(&mut f, &mut runs, 0), vec!["m2", "m3", "m1"]);
}

#[test]
fn no_host_starts_outside_a_window_but_one_in_progress_finishes() {
    let f = fleet(2, 0);
    let text = r#"
name = "w"
[[window]]
start = "1970-01-01T00:00:10Z"
duration = "10s"
[[steps]]
action = "patch"
"#;
    let mut runs = vec![run("c1", text, &f)];
    let d = tick(&f, &mut runs, 0);
    assert!(started(&d).is_empty());
    assert_eq!(
        d.blocker_for("c1", "w1"),
        Some(&Blocker::WindowClosed {
            opens_at_ms: Some(10_000)
        })
    );
    assert_eq!(d.wake_at_ms, Some(10_000));
    assert_eq!(started(&tick(&f, &mut runs, 10_000)), vec!["w1"]);
    // The window closes with w1 in progress: w1 still gets its step, w2 does not start.
    let d = tick(&f, &mut runs, 25_000);
    assert_eq!(dispatched(&d).len(), 1);
    let id = dispatched(&d)[0].action_id.clone();
    finish(&f, &mut runs, &id, Outcome::Succeeded, None, 25_000);
    let d = tick(&f, &mut runs, 25_000);
    assert!(matches!(d.decisions[..], [Decision::ReleaseHost { .. }]));
    let d = tick(&f, &mut runs, 25_000);
    assert!(started(&d).is_empty());
    assert_eq!(
        d.blocker_for("c1", "w2"),
        Some(&Blocker::WindowClosed { opens_at_ms: None })
    );
}

#[test]
fn dwell_spaces_hosts_of_a_role() {
    let f = fleet(2, 0);
    let text = "name = \"patch\"\ndwell = \"5m\"\n[[steps]]\naction = \"patch\"\n";
    let mut runs = vec![run("c1", text, &f)];
    tick(&f, &mut runs, 0);
    let d = tick(&f, &mut runs, 0);
    finish(
        &f,
        &mut runs,
        &dispatched(&d)[0].action_id,
        Outcome::Succeeded,
        None,
        1000,
    );
    tick(&f, &mut runs, 1000); // release at 1000
    let d = tick(&f, &mut runs, 2000);
    assert_eq!(
        d.blocker_for("c1", "w2"),
        Some(&Blocker::Dwell { until_ms: 301_000 })
    );
    assert_eq!(d.wake_at_ms, Some(301_000));
    assert_eq!(started(&tick(&f, &mut runs, 301_000)), vec!["w2"]);
}

#[test]
fn a_failed_host_keeps_its_slot_and_spends_the_error_budget() {
    let f = fleet(2, 0);
    let text = "name = \"patch\"\n[concurrency]\nworker = 2\n[[steps]]\naction = \"patch\"\n";
    let mut runs = vec![run("c1", text, &f)];
    tick(&f, &mut runs, 0);
    let d = tick(&f, &mut runs, 0);
    let ids: Vec<String> = dispatched(&d).iter().map(|x| x.action_id.clone()).collect();
    finish(&f, &mut runs, &ids[0], Outcome::Failed, None, 5);
    assert_eq!(runs[0].hosts[0].state, HostState::Failed);
    assert_eq!(runs[0].hosts[0].slot.as_deref(), Some("worker-pool#1"));
    let d = tick(&f, &mut runs, 6);
    assert!(
        d.decisions
            .iter()
            .any(|x| matches!(x, Decision::PauseCampaign { .. }))
    );
    assert_eq!(runs[0].state, CampaignState::Paused);
    let d = tick(&f, &mut runs, 7);
    assert!(matches!(
        d.blocker_for("c1", "w1"),
        Some(Blocker::HostFailed { .. })
    ));
    // w2 is in progress and finishes even though the campaign is paused.
    finish(&f, &mut runs, &ids[1], Outcome::Succeeded, None, 8);
    let d = tick(&f, &mut runs, 8);
    assert!(matches!(d.decisions[..], [Decision::ReleaseHost { .. }]));
    // The operator retries w1: a new attempt, a new action id.
    apply(&mut runs[0], &f, &Event::Retry { host: "w1".into() }, 9).unwrap();
    let d = tick(&f, &mut runs, 9);
    let retry = dispatched(&d);
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].action_id, "c1:w1:main-0:a2");
    assert_ne!(retry[0].action_id, ids[0]);
    finish(
        &f,
        &mut runs,
        &retry[0].action_id,
        Outcome::Succeeded,
        None,
        10,
    );
    apply(&mut runs[0], &f, &Event::Resume, 10).unwrap();
    tick(&f, &mut runs, 10);
    let d = tick(&f, &mut runs, 10);
    assert!(matches!(
        d.decisions[..],
        [Decision::CompleteCampaign { .. }]
    ));
    assert_eq!(runs[0].state, CampaignState::Completed);
}

#[test]
fn skip_and_release_free_a_failed_hosts_slot() {
    let f = fleet(2, 0);
    let text = PATCH.replace("name = \"patch\"", "name = \"patch\"\nmax_failures = 5");
    let mut runs = vec![run("c1", &text, &f)];
    tick(&f, &mut runs, 0);
    let d = tick(&f, &mut runs, 0);
    finish(
        &f,
        &mut runs,
        &dispatched(&d)[0].action_id,
        Outcome::Failed,
        None,
        1,
    );
    let d = tick(&f, &mut runs, 2);
    assert!(started(&d).is_empty(), "w1 keeps the only worker slot");
    apply(&mut runs[0], &f, &Event::Skip { host: "w1".into() }, 3).unwrap();
    assert_eq!(runs[0].hosts[0].state, HostState::Skipped);
    assert_eq!(started(&tick(&f, &mut runs, 3)), vec!["w2"]);
    let d = tick(&f, &mut runs, 3);
    finish(
        &f,
        &mut runs,
        &dispatched(&d)[0].action_id,
        Outcome::TimedOut,
        None,
        4,
    );
    apply(&mut runs[0], &f, &Event::Release { host: "w2".into() }, 5).unwrap();
    // Released by hand is out of the way, but not done.
    assert_eq!(runs[0].hosts[1].state, HostState::Released);
    let d = tick(&f, &mut runs, 5);
    assert!(matches!(
        d.decisions[..],
        [Decision::CompleteCampaign { .. }]
    ));
    // A campaign whose hosts were skipped and released did not complete: it says so.
    assert_eq!(runs[0].state, CampaignState::Incomplete);
    assert_eq!(runs[0].failures, 2, "two hosts failed");
}

#[test]
fn failures_are_counted_per_host_and_a_percentage_budget_scales_with_the_selection() {
    // 10 % of 10 hosts: one host may fail; a retried host failing again is still one host.
    let f = fleet(10, 0);
    let text = PATCH.replace(
        "name = \"patch\"",
        "name = \"patch\"\nmax_failures = \"10%\"",
    );
    let mut runs = vec![run("c1", &text, &f)];
    assert_eq!(runs[0].allowed_failures(), 1);
    tick(&f, &mut runs, 0);
    let d = tick(&f, &mut runs, 0);
    finish(
        &f,
        &mut runs,
        &dispatched(&d)[0].action_id,
        Outcome::Failed,
        None,
        1,
    );
    assert_eq!(runs[0].failures, 1);
    // Within budget: the campaign goes on (not paused).
    assert_eq!(runs[0].state, CampaignState::Running);
    apply(&mut runs[0], &f, &Event::Retry { host: "w1".into() }, 2).unwrap();
    let d = tick(&f, &mut runs, 2);
    finish(
        &f,
        &mut runs,
        &dispatched(&d)[0].action_id,
        Outcome::Failed,
        None,
        3,
    );
    assert_eq!(
        runs[0].failures, 1,
        "the same host failing twice is one failed host"
    );
    // 10 % of 5 hosts rounds down to none.
    let five = fleet(5, 0);
    assert_eq!(run("c2", &text, &five).allowed_failures(), 0);
}

const REBOOT: &str = r#"
name = "reboot"
[[gate.post]]
action = "health"
unit_active = "docker.service"
[[steps]]
action = "reboot"
"#;

#[test]
fn a_reboot_needs_a_new_boot_id_before_post_gates() {
    let mut f = fleet(1, 0);
    let mut runs = vec![run("c1", REBOOT, &f)];
    tick(&f, &mut runs, 0);
    let d = tick(&f, &mut runs, 0);
    let reboot = dispatched(&d)[0].clone();
    assert!(reboot.action.is_reboot());
    // The agent reports success on the same boot id: that is not a reboot.
    finish(
        &f,
        &mut runs,
        &reboot.action_id,
        Outcome::Succeeded,
        Some("w1-boot-1"),
        1,
    );
    assert_eq!(runs[0].hosts[0].state, HostState::Failed);
    assert!(
        runs[0].hosts[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("still on boot id")
    );

    // Retry: this time the host comes back on a new boot id.
    apply(&mut runs[0], &f, &Event::Retry { host: "w1".into() }, 2).unwrap();
    let d = tick(&f, &mut runs, 2);
    let reboot = dispatched(&d)[0].clone();
    finish(
        &f,
        &mut runs,
        &reboot.action_id,
        Outcome::Succeeded,
        Some("w1-boot-2"),
        3,
    );
    // The fleet view still shows the old boot id (hello not processed yet): wait.
    let d = tick(&f, &mut runs, 3);
    assert_eq!(
        d.blocker_for("c1", "w1"),
        Some(&Blocker::AwaitingReboot { host: "w1".into() })
    );
    assert!(d.decisions.is_empty());
    f.hosts.get_mut("w1").unwrap().boot_id = "w1-boot-2".into();
    let d = tick(&f, &mut runs, 4);
    let gate = dispatched(&d);
    assert_eq!(gate.len(), 1);
    assert_eq!(gate[0].action_id, "c1:w1:post_gate-0:a2");
    finish(
        &f,
        &mut runs,
        &gate[0].action_id,
        Outcome::Succeeded,
        None,
        5,
    );
    let d = tick(&f, &mut runs, 5);
    assert!(matches!(d.decisions[..], [Decision::ReleaseHost { .. }]));
}

#[test]
fn a_reboot_only_if_required_may_keep_the_boot_id() {
    let f = fleet(1, 0);
    let text = REBOOT.replace(
        "action = \"reboot\"",
        "action = \"reboot\"\nonly_if_required = true",
    );
    let mut runs = vec![run("c1", &text, &f)];
    tick(&f, &mut runs, 0);
    let d = tick(&f, &mut runs, 0);
    finish(
        &f,
        &mut runs,
        &dispatched(&d)[0].action_id,
        Outcome::Succeeded,
        Some("w1-boot-1"),
        1,
    );
    let d = tick(&f, &mut runs, 1);
    assert_eq!(dispatched(&d)[0].phase, pitcrew_scheduler::Phase::PostGate);
}

#[test]
fn a_failing_pre_gate_gives_the_slot_back_and_retries_later() {
    let f = fleet(1, 0);
    let text = r#"
name = "g"
[[gate.pre]]
action = "health"
command = ["/usr/local/bin/lab-health"]
retry_delay = "1m"
[[steps]]
action = "patch"
"#;
    let mut runs = vec![run("c1", text, &f)];
    tick(&f, &mut runs, 0);
    let d = tick(&f, &mut runs, 0);
    assert_eq!(dispatched(&d)[0].action_id, "c1:w1:pre_gate-0:a1");
    finish(
        &f,
        &mut runs,
        "c1:w1:pre_gate-0:a1",
        Outcome::Failed,
        None,
        10,
    );
    let h = &runs[0].hosts[0];
    assert_eq!(h.state, HostState::Pending);
    assert_eq!(h.slot, None);
    assert_eq!(
        runs[0].failures, 0,
        "a failing pre-gate is not a host failure"
    );
    let d = tick(&f, &mut runs, 20);
    match d.blocker_for("c1", "w1") {
        Some(Blocker::GateFailing { retry_at_ms, .. }) => assert_eq!(*retry_at_ms, 60_010),
        other => panic!("expected gate failing, got {other:?}"),
    }
    assert_eq!(started(&tick(&f, &mut runs, 60_010)), vec!["w1"]);
    let d = tick(&f, &mut runs, 60_010);
    assert_eq!(dispatched(&d)[0].action_id, "c1:w1:pre_gate-0:a2");
}

/// One worker whose patch step (timeout 10 minutes) was sent at time 0.
fn one_worker_patching_for_ten_minutes() -> (Fleet, Vec<CampaignRun>) {
    let f = fleet(1, 0);
    let text = PATCH.replace(
        "action = \"patch\"",
        "action = \"patch\"\ntimeout = \"10m\"",
    );
    let mut runs = vec![run("c1", &text, &f)];
    tick(&f, &mut runs, 0);
    tick(&f, &mut runs, 0);
    (f, runs)
}

#[test]
fn a_step_past_its_deadline_fails_the_host_but_keeps_the_slot() {
    let (mut f, mut runs) = one_worker_patching_for_ten_minutes();
    f.hosts.get_mut("w1").unwrap().connected = false;
    apply(
        &mut runs[0],
        &f,
        &Event::HostDisconnected { host: "w1".into() },
        5,
    )
    .unwrap();
    let d = tick(&f, &mut runs, 5);
    assert!(d.decisions.is_empty());
    assert_eq!(
        d.blocker_for("c1", "w1"),
        Some(&Blocker::AgentDisconnected { host: "w1".into() })
    );
    assert_eq!(d.wake_at_ms, Some(600_000 + 60_000));
    let d = tick(&f, &mut runs, 660_000);
    match &d.decisions[..] {
        [Decision::FailHost { reason, .. }] => assert!(reason.contains("agent disconnected")),
        other => panic!("expected FailHost, got {other:?}"),
    }
    assert_eq!(runs[0].hosts[0].state, HostState::Failed);
    assert!(runs[0].hosts[0].slot.is_some());
    // The late result of the abandoned action is refused, not applied.
    let late = Event::ActionFinished {
        action_id: "c1:w1:main-0:a1".into(),
        outcome: Outcome::Succeeded,
        message: String::new(),
        boot_id: None,
    };
    assert!(matches!(
        apply(&mut runs[0], &f, &late, 700_000),
        Err(ApplyError::StaleResult(_))
    ));
}

#[test]
fn an_awaited_agent_keeps_its_step_past_the_deadline_until_its_grace_ends() {
    let (mut f, mut runs) = one_worker_patching_for_ten_minutes();
    // The coordinator restarts an hour later; w1's agent is not back yet.
    f.hosts.get_mut("w1").unwrap().connected = false;
    f.awaited.insert("w1".into(), 3_600_000 + 30_000);
    let d = tick(&f, &mut runs, 3_600_000);
    assert!(d.decisions.is_empty(), "{:?}", d.decisions);
    assert_eq!(
        d.blocker_for("c1", "w1"),
        Some(&Blocker::AgentDisconnected { host: "w1".into() })
    );
    assert_eq!(d.wake_at_ms, Some(3_630_000));
    // The grace is over and it never came back: the step fails.
    let d = tick(&f, &mut runs, 3_630_000);
    assert!(matches!(&d.decisions[..], [Decision::FailHost { .. }]));
    assert_eq!(runs[0].hosts[0].state, HostState::Failed);
}

#[test]
fn action_ids_are_deterministic_and_resent_after_a_restart() {
    let f = fleet(2, 1);
    let mut runs = vec![run("c1", PATCH, &f)];
    tick(&f, &mut runs, 0);
    // Deciding twice over the same persisted state gives the same decisions.
    assert_eq!(decide(&f, &runs, 1), decide(&f, &runs, 1));
    let d = tick(&f, &mut runs, 1);
    let sent = dispatched(&d);
    assert_eq!(
        sent[0].action_id,
        action_id("c1", "w1", pitcrew_scheduler::Phase::Main, 0, 1)
    );
    // "Restart": reload the run from its JSON and ask what is in flight.
    let json = serde_json::to_string(&runs).unwrap();
    let reloaded: Vec<pitcrew_scheduler::CampaignRun> = serde_json::from_str(&json).unwrap();
    assert_eq!(reloaded, runs);
    let resend = reloaded[0].in_flight_dispatches();
    assert_eq!(resend, sent, "the same id and action are re-sent");
    assert!(
        decide(&f, &reloaded, 2).decisions.is_empty(),
        "nothing is dispatched twice"
    );
    assert_eq!(resend[0].action_id, "c1:w1:main-0:a1");
}

#[test]
fn action_ids_are_valid_agent_journal_names() {
    // The agent accepts `[A-Za-z0-9._:-]{1,128}` (ids become journal file names).
    let id = action_id(
        "0b7e4c1e-1c2d-4f9a-9a51-3f7d2a1b9c00",
        "4f1c2b3a4d5e6f708192a3b4c5d6e7f8",
        pitcrew_scheduler::Phase::PostGate,
        12,
        99,
    );
    assert!(id.len() <= 128, "{id}");
    assert!(
        id.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)),
        "{id}"
    );
    assert!(!id.starts_with('.'));
}

#[test]
fn a_step_on_role_manager_runs_on_another_healthy_manager() {
    let f = fleet(1, 3);
    let text = r#"
name = "drain"
[[before]]
name = "drain"
action = "exec"
on = "role:manager"
argv = ["/usr/local/bin/swarm-node", "update", "--availability", "drain", "{{host.hostname}}"]
[[steps]]
action = "patch"
"#;
    let mut runs = vec![run("c1", text, &f)];
    tick(&f, &mut runs, 0);
    let d = tick(&f, &mut runs, 0);
    let x = &dispatched(&d)[0];
    assert_eq!(x.host, "w1");
    assert_eq!(x.target_host, "m1");
    assert_eq!(x.step_label, "drain");
    assert_eq!(
        x.action.to_string(),
        "exec /usr/local/bin/swarm-node update --availability drain w1"
    );
    // For a manager, the drain runs on a manager other than itself.
    let mut f2 = fleet(0, 2);
    let mut runs2 = vec![run("c2", text, &f2)];
    tick(&f2, &mut runs2, 0);
    let d = tick(&f2, &mut runs2, 0);
    assert_eq!(dispatched(&d)[0].target_host, "m2");
    // With the only other manager disconnected there is no target: a named blocker.
    f2.hosts.get_mut("m2").unwrap().connected = false;
    let mut runs3 = vec![run("c3", text, &f2)];
    runs3[0].hosts.retain(|h| h.host_id == "m1");
    runs3[0].hosts[0].state = HostState::Entering;
    runs3[0].hosts[0].slot = Some("manager:swarm-a".into());
    let d = decide(&f2, &runs3, 0);
    assert!(matches!(
        d.blocker_for("c3", "m1"),
        Some(Blocker::NoTarget { .. })
    ));
}

#[test]
fn illegal_transitions_are_refused() {
    let f = fleet(1, 0);
    let mut runs = vec![run("c1", PATCH, &f)];
    let r = &mut runs[0];
    assert!(apply(r, &f, &Event::Resume, 0).is_err(), "not paused");
    assert!(apply(r, &f, &Event::Release { host: "w1".into() }, 0).is_err());
    assert!(apply(r, &f, &Event::Retry { host: "w1".into() }, 0).is_err());
    assert!(matches!(
        apply(
            r,
            &f,
            &Event::Skip {
                host: "nope".into()
            },
            0
        ),
        Err(ApplyError::UnknownHost(_))
    ));
    let release = Decision::ReleaseHost {
        campaign: "c1".into(),
        host: "w1".into(),
    };
    assert!(apply(r, &f, &Event::Decision(release), 0).is_err());
    let other = Decision::CompleteCampaign {
        campaign: "c2".into(),
    };
    assert!(matches!(
        apply(r, &f, &Event::Decision(other), 0),
        Err(ApplyError::WrongCampaign { .. })
    ));
    apply(
        r,
        &f,
        &Event::Pause {
            reason: "lunch".into(),
        },
        0,
    )
    .unwrap();
    let d = decide(&f, &runs, 0);
    assert_eq!(
        d.campaign_blocker("c1").map(|b| b.to_string()),
        Some("paused: lunch".into())
    );
    let start = Decision::StartHost {
        campaign: "c1".into(),
        host: "w1".into(),
        slot: "worker-pool#1".into(),
    };
    assert!(
        apply(&mut runs[0], &f, &Event::Decision(start), 0).is_err(),
        "paused"
    );
}

#[test]
fn cancel_waits_for_hosts_in_progress() {
    let f = fleet(2, 0);
    let mut runs = vec![run("c1", PATCH, &f)];
    tick(&f, &mut runs, 0);
    let d = tick(&f, &mut runs, 0);
    apply(&mut runs[0], &f, &Event::Cancel, 1).unwrap();
    let d2 = tick(&f, &mut runs, 1);
    assert_eq!(
        d2.campaign_blocker("c1"),
        Some(&Blocker::Cancelling { in_progress: 1 })
    );
    finish(
        &f,
        &mut runs,
        &dispatched(&d)[0].action_id,
        Outcome::Succeeded,
        None,
        2,
    );
    tick(&f, &mut runs, 2); // release
    let d = tick(&f, &mut runs, 2);
    assert!(matches!(d.decisions[..], [Decision::FinishCancel { .. }]));
    assert_eq!(runs[0].state, CampaignState::Cancelled);
    assert_eq!(
        runs[0].hosts[1].state,
        HostState::Pending,
        "w2 never started"
    );
}

#[test]
fn automatic_retries_use_a_new_attempt() {
    let f = fleet(1, 0);
    let text = PATCH.replace(
        "action = \"patch\"",
        "action = \"patch\"\nretries = 1\nretry_delay = \"30s\"",
    );
    let mut runs = vec![run("c1", &text, &f)];
    tick(&f, &mut runs, 0);
    tick(&f, &mut runs, 0);
    finish(&f, &mut runs, "c1:w1:main-0:a1", Outcome::Failed, None, 1);
    let d = tick(&f, &mut runs, 2);
    assert!(matches!(
        d.blocker_for("c1", "w1"),
        Some(Blocker::RetryAt { at_ms: 30_001, .. })
    ));
    let d = tick(&f, &mut runs, 30_001);
    assert_eq!(dispatched(&d)[0].action_id, "c1:w1:main-0:a2");
    finish(
        &f,
        &mut runs,
        "c1:w1:main-0:a2",
        Outcome::Refused,
        None,
        30_002,
    );
    assert_eq!(runs[0].hosts[0].state, HostState::Failed);
}

#[test]
fn blockers_read_like_sentences() {
    let b = Blocker::NoSlot {
        slot: "manager:swarm-a".into(),
        held_by: vec!["m1 (campaign c1)".into()],
    };
    assert_eq!(
        b.to_string(),
        "no slot: manager:swarm-a held by m1 (campaign c1)"
    );
    let b = Blocker::WindowClosed {
        opens_at_ms: Some(0),
    };
    assert_eq!(
        b.to_string(),
        "window closed (opens at 1970-01-01T00:00:00Z)"
    );
    let b = Blocker::ErrorBudgetSpent {
        failures: 1,
        max_failures: 0,
    };
    assert_eq!(b.to_string(), "error budget spent (1 failures, max 0)");
}

#[test]
fn hosts_are_found_by_id_or_hostname_even_after_the_list_is_replaced() {
    let fleet = fleet(3, 0);
    let mut run = run(
        "c1",
        "name = \"x\"\n[[steps]]\naction = \"daemon_reload\"\n",
        &fleet,
    );
    assert_eq!(run.host("w2").map(|h| h.host_id.as_str()), Some("w2"));
    // The lookup index is derived data: a list replaced under it (as a store load may do)
    // still answers by the list itself, and equality ignores the index.
    let before = run.clone();
    run.hosts.reverse();
    assert_eq!(run.host("w2").map(|h| h.hostname.as_str()), Some("w2"));
    assert_eq!(run.host("w3").map(|h| h.host_id.as_str()), Some("w3"));
    assert!(run.host("w9").is_none());
    run.hosts.reverse();
    assert_eq!(run, before);
}
