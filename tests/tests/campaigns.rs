//! Real campaigns over real mTLS with real agent processes: order and concurrency as specified,
//! a failing host pauses the campaign with its blocker named, operator controls, windows, and a
//! coordinator killed with SIGKILL mid-campaign that resumes without breaking an invariant.
//!
//! Steps are `exec` actions that append to a shared log file, so the order the hosts really ran
//! in is read back from what the agents did, not from what the coordinator says.

use std::path::Path;
use std::process::Command;

use pitcrew_tests::runs::{
    FLEET, assert_each_host_ran_once, campaign, max_overlap, policy, ran, starts,
};
use pitcrew_tests::{Agent, Coordinator, start_fleet, start_fleet_with, wait_for};
use serde_json::Value;

fn run_campaign(c: &Coordinator, file: &Path) -> String {
    let out = c.cli(&["campaign", "run", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "campaign run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn show(c: &Coordinator, id: &str) -> Value {
    c.cli_json(&["campaign", "show", id])
}

fn host_status<'a>(info: &'a Value, agent: &Agent) -> &'a Value {
    info["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host_id"] == agent.machine_id.as_str())
        .unwrap()
}

fn wait_state(c: &Coordinator, id: &str, state: &str) -> Value {
    wait_for(&format!("campaign {id} to be {state}"), || {
        Some(show(c, id)).filter(|i| i["state"] == state)
    })
}

#[test]
fn workers_then_managers_with_the_configured_concurrency_and_leader_last() {
    let (c, _agents) = start_fleet(FLEET, &policy());
    let dir = tempfile::tempdir().unwrap();
    let file = campaign(
        dir.path(),
        "rolling",
        "[concurrency]\nworker = 2\nmanager = 1",
        "sleep 0.3",
    );

    let plan = c.cli(&["campaign", "plan", file.to_str().unwrap()]);
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains("worker") && plan_text.contains("manager"),
        "{plan_text}"
    );

    let out = c.cli(&["campaign", "run", file.to_str().unwrap(), "--watch"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let events = ran(dir.path());
    let order: Vec<&str> = events
        .iter()
        .filter(|(w, _)| w == "start")
        .map(|(_, h)| h.as_str())
        .collect();
    assert_eq!(order.len(), 6, "every host ran once: {events:?}");
    let first_manager = order.iter().position(|h| h.starts_with('m')).unwrap();
    assert!(
        order[..first_manager].iter().all(|h| h.starts_with('w')) && first_manager == 3,
        "workers first: {order:?}"
    );
    assert_eq!(
        *order.last().unwrap(),
        "m3-leader",
        "the leader goes last: {order:?}"
    );
    let last_worker_end = events
        .iter()
        .rposition(|(w, h)| w == "end" && h.starts_with('w'))
        .unwrap();
    let first_manager_start = events
        .iter()
        .position(|(w, h)| w == "start" && h.starts_with('m'))
        .unwrap();
    assert!(
        last_worker_end < first_manager_start,
        "a manager started before the workers were done: {events:?}"
    );
    assert!(
        max_overlap(&events, |h| h.starts_with('w')) <= 2,
        "worker concurrency: {events:?}"
    );
    assert_eq!(
        max_overlap(&events, |h| h.starts_with('m')),
        1,
        "one manager at a time: {events:?}"
    );
    assert!(starts(&events).values().all(|n| *n == 1));
}

#[test]
fn a_failing_host_pauses_the_campaign_keeps_its_slot_and_retry_completes_it() {
    let (c, agents) = start_fleet(&FLEET[..3], &policy());
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("w2-broken");
    std::fs::write(&broken, "").unwrap();
    let body = format!(
        "if [ {{{{host.label.name}}}} = w2 ] && [ -e {} ]; then echo w2 is broken >&2; exit 3; fi",
        broken.display()
    );
    let file = campaign(dir.path(), "fragile", "[concurrency]\nworker = 1", &body);
    let id = run_campaign(&c, &file);

    let info = wait_state(&c, &id, "paused");
    let w2 = host_status(&info, &agents[1]);
    assert_eq!(w2["state"], "failed");
    assert!(
        info["blocker"].as_str().unwrap().contains("error budget"),
        "{info}"
    );
    assert!(
        w2["blocker"].as_str().unwrap().contains("failed")
            || !w2["last_error"].as_str().unwrap().is_empty(),
        "{w2}"
    );
    // The bad patch does not spread: w3 never started.
    assert_eq!(host_status(&info, &agents[2])["state"], "pending");
    assert!(!starts(&ran(dir.path())).contains_key("w3"));
    // `watch` says why, and ends non-zero while the campaign is not completed... so use show.
    let text = String::from_utf8_lossy(&c.cli(&["campaign", "show", &id]).stdout).into_owned();
    assert!(
        text.contains("waiting") && text.contains("error budget"),
        "{text}"
    );
    // The host's listing shows it still held by the campaign.
    let held = c.host(&agents[1].machine_id).unwrap();
    assert_eq!(held["held_by"], id.as_str());

    // The operator fixes the host and retries it: the campaign goes on and completes.
    std::fs::remove_file(&broken).unwrap();
    let retried = c.cli(&["campaign", "host", "retry", &id, &agents[1].machine_id]);
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    let resumed = c.cli(&["campaign", "resume", &id]);
    assert!(
        resumed.status.success()
            || String::from_utf8_lossy(&resumed.stderr).contains("not possible"),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    wait_state(&c, &id, "completed");
    let counts = starts(&ran(dir.path()));
    assert_eq!(
        counts.get("w2"),
        Some(&2),
        "w2 ran again only on retry: {counts:?}"
    );
    assert_eq!(counts.get("w3"), Some(&1));
    let audit = c.cli_json(&["events", "--campaign", &id]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "audit" && e["message"].as_str().unwrap().contains("retried")),
        "{audit}"
    );
}

#[test]
fn pause_resume_skip_and_cancel_behave() {
    let (c, agents) = start_fleet(&FLEET[..3], &policy());
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let body = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    let file = campaign(dir.path(), "steered", "[concurrency]\nworker = 1", &body);
    let id = run_campaign(&c, &file);

    // w1 is in progress; pausing lets it finish but starts nobody else.
    wait_for("w1 to start", || {
        starts(&ran(dir.path())).get("w1").copied()
    });
    let paused = c.cli_json(&["campaign", "pause", &id]);
    assert_eq!(paused["state"], "paused");
    std::fs::write(&gate, "").unwrap();
    wait_for("w1 to finish", || {
        let info = show(&c, &id);
        (host_status(&info, &agents[0])["state"] == "done").then_some(())
    });
    let info = show(&c, &id);
    assert_eq!(host_status(&info, &agents[1])["state"], "pending");
    assert!(
        info["blocker"].as_str().unwrap().contains("paused"),
        "{info}"
    );

    // Skip w2, resume: w3 runs, w2 never does.
    let skipped = c.cli_json(&["campaign", "host", "skip", &id, &agents[1].machine_id]);
    assert_eq!(host_status(&skipped, &agents[1])["state"], "skipped");
    assert_eq!(c.cli_json(&["campaign", "resume", &id])["state"], "running");
    // A skipped host was not serviced: the campaign ends saying so, never "completed".
    let info = wait_state(&c, &id, "incomplete");
    assert_eq!(info["host_counts"]["skipped"], 1, "{info}");
    let counts = starts(&ran(dir.path()));
    assert!(!counts.contains_key("w2"), "{counts:?}");
    assert_eq!(counts.get("w3"), Some(&1));

    // A second campaign is cancelled while its first host runs: that host finishes, no other starts.
    std::fs::remove_file(&gate).unwrap();
    let file = campaign(dir.path(), "cancelled", "[concurrency]\nworker = 1", &body);
    let id = run_campaign(&c, &file);
    wait_for("the first host to start again", || {
        (starts(&ran(dir.path())).get("w1") == Some(&2)).then_some(())
    });
    let cancelling = c.cli_json(&["campaign", "cancel", &id]);
    assert_ne!(cancelling["state"], "completed");
    std::fs::write(&gate, "").unwrap();
    wait_state(&c, &id, "cancelled");
    let counts = starts(&ran(dir.path()));
    assert_eq!(
        counts.get("w3"),
        Some(&1),
        "nothing started after the cancel: {counts:?}"
    );
}

#[test]
fn a_campaign_overlapping_a_running_one_waits_with_a_named_blocker() {
    let (c, agents) = start_fleet(&FLEET[..2], &policy());
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let body = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    let first = run_campaign(
        &c,
        &campaign(dir.path(), "first", "[concurrency]\nworker = 2", &body),
    );
    wait_for("both hosts to start", || {
        (starts(&ran(dir.path())).len() == 2).then_some(())
    });
    let second = run_campaign(
        &c,
        &campaign(dir.path(), "second", "[concurrency]\nworker = 2", "true"),
    );
    let info = wait_for("the second campaign to show its blocker", || {
        let info = show(&c, &second);
        let b = host_status(&info, &agents[0])["blocker"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        b.contains(&first).then_some(info)
    });
    assert_eq!(host_status(&info, &agents[0])["state"], "pending");
    std::fs::write(&gate, "").unwrap();
    wait_state(&c, &first, "completed");
    wait_state(&c, &second, "completed");
    // Never doubled up: each host ran the second campaign only after the first released it.
    let events = ran(dir.path());
    assert_eq!(max_overlap(&events, |h| h == "w1"), 1, "{events:?}");
}

#[test]
fn a_closing_window_stops_new_starts_while_the_host_in_progress_finishes() {
    let (c, agents) = start_fleet(&FLEET[..2], &policy());
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let body = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    // A window that opened a minute ago and closes 12 s from now (room for a slow machine to
    // start the first host inside it).
    let now_s = pitcrew_proto::now_ms() / 1000;
    let start = time::OffsetDateTime::from_unix_timestamp(now_s - 60).unwrap();
    let close_at_ms = (now_s + 12) * 1000;
    let head = format!(
        "[concurrency]\nworker = 1\n\n[[window]]\nstart = \"{}\"\nduration = \"72s\"",
        start
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    let id = run_campaign(&c, &campaign(dir.path(), "windowed", &head, &body));
    wait_for("w1 to start inside the window", || {
        starts(&ran(dir.path())).get("w1").copied()
    });
    wait_for("the window to close", || {
        (pitcrew_proto::now_ms() > close_at_ms + 200).then_some(())
    });
    std::fs::write(&gate, "").unwrap();
    let info = wait_for("w1 to finish after the window closed", || {
        let info = show(&c, &id);
        (host_status(&info, &agents[0])["state"] == "done").then_some(info)
    });
    let w2 = host_status(&info, &agents[1]);
    assert_eq!(w2["state"], "pending", "{info}");
    let blocker = format!("{} {}", w2["blocker"], info["blocker"]);
    assert!(blocker.contains("window"), "{info}");
    assert!(!starts(&ran(dir.path())).contains_key("w2"));
}

/// Runs a campaign over the whole fleet (two workers at a time, managers one at a time) and
/// kills the coordinator with SIGKILL, restarting it, each time `kill_points[i]` hosts have
/// started; returns the directory the hosts record their runs in and the campaign's id once it
/// has completed.
fn run_through_kills(
    c: &mut Coordinator,
    name: &str,
    kill_points: &[usize],
) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = campaign(
        dir.path(),
        name,
        "[concurrency]\nworker = 2\nmanager = 1",
        "sleep 0.4",
    );
    let id = run_campaign(c, &file);
    // No clean-up at all on the coordinator's side: SIGKILL, then a restart on the same store.
    for &kill_after_starts in kill_points {
        wait_for(
            &format!("{kill_after_starts} hosts to have started"),
            || (starts(&ran(dir.path())).len() >= kill_after_starts).then_some(()),
        );
        c.kill();
        c.start().unwrap();
    }
    wait_state(c, &id, "completed");
    (dir, id)
}

#[test]
fn a_coordinator_killed_mid_campaign_resumes_and_no_action_runs_twice() {
    let (mut c, _agents) = start_fleet(FLEET, &policy());
    let (dir, id) = run_through_kills(&mut c, "crashy", &[1, 3, 4, 5]);
    assert_each_host_ran_once(&c, dir.path(), &id);
}

#[test]
fn a_campaign_on_a_postgres_store_completes_and_resumes_after_its_coordinator_is_killed() {
    // The same fleet and campaign as above, with the coordinator's store in PostgreSQL.
    let Some(coordinator) = Coordinator::init_postgres().unwrap() else {
        return;
    };
    let (mut c, agents) = start_fleet_with(coordinator, FLEET, &policy());
    assert!(
        !c.dir.join("pitcrew.db").exists(),
        "the store is the database, not a file in the data dir"
    );
    let (dir, id) = run_through_kills(&mut c, "on-postgres", &[2, 4]);
    assert_each_host_ran_once(&c, dir.path(), &id);
    // Hosts and their names come back from the database too, and every agent reconnects.
    for agent in &agents {
        wait_for(&format!("{} to reconnect", agent.machine_id), || {
            (c.host(&agent.machine_id)?["connected"] == true).then_some(())
        });
    }
}

#[test]
fn plan_refuses_what_cannot_run_and_bad_files_name_the_line() {
    let (c, _agents) = start_fleet(&FLEET[..1], "");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n\n[concurrency]\nmanager = 2\n").unwrap();
    let out = c.cli(&["campaign", "plan", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("line 4") || err.contains("bad.toml:4"),
        "{err}"
    );
    std::fs::write(&bad, "name = \"x\"\ncolour = \"red\"\n").unwrap();
    let err = String::from_utf8_lossy(&c.cli(&["campaign", "plan", bad.to_str().unwrap()]).stderr)
        .into_owned();
    assert!(
        err.contains("colour") && (err.contains("line 2") || err.contains("bad.toml:2")),
        "{err}"
    );
    // The host's policy allows no exec: the plan says which host, step and rule refuse.
    let file = campaign(dir.path(), "refused", "", "true");
    let err = String::from_utf8_lossy(&c.cli(&["campaign", "plan", file.to_str().unwrap()]).stderr)
        .into_owned();
    assert!(err.contains("policy.exec"), "{err}");
    std::fs::write(
        &bad,
        "name = \"x\"\n[select]\nroles = [\"manager\"]\n[[steps]]\naction = \"daemon_reload\"\n",
    )
    .unwrap();
    let err = String::from_utf8_lossy(&c.cli(&["campaign", "run", bad.to_str().unwrap()]).stderr)
        .into_owned();
    assert!(
        err.to_lowercase().contains("no host") || err.contains("select"),
        "{err}"
    );
}

#[test]
fn manual_maintenance_holds_the_one_manager_slot() {
    let (c, agents) = start_fleet(
        &[("m1", "manager"), ("m2", "manager"), ("m3", "manager")],
        &policy(),
    );
    let shown = c.cli_json(&["maintenance", "enable", &agents[0].machine_id]);
    assert_eq!(shown["maintenance_state"], "maintenance");
    let second = c.cli(&["maintenance", "enable", &agents[1].machine_id]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("manager slot"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // A campaign over the managers waits for the slot, naming who holds it.
    let dir = tempfile::tempdir().unwrap();
    let id = run_campaign(&c, &campaign(dir.path(), "managers", "", "true"));
    let info = wait_for("the manual hold to show as a blocker", || {
        let info = show(&c, &id);
        info["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["blocker"].as_str().unwrap_or_default().contains("manual"))
            .then_some(info)
    });
    assert!(ran(dir.path()).is_empty(), "{info}");
    let back = c.cli_json(&["maintenance", "disable", &agents[0].machine_id]);
    assert_eq!(back["maintenance_state"], "running");
    wait_state(&c, &id, "completed");
    let events = c.cli_json(&["events", "--host", &agents[0].machine_id]);
    let states: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "maintenance")
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        vec!["entering", "maintenance", "leaving", "running"]
    );
}

#[test]
fn an_agent_lost_mid_step_keeps_its_slot_and_fails_after_the_step_timeout() {
    let (c, mut agents) = start_fleet(&FLEET[..2], &policy());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lost.toml");
    let log = dir.path().join("ran.log");
    std::fs::write(
        &file,
        format!(
            "name = \"lost\"\n[concurrency]\nworker = 1\n[[steps]]\nname = \"long\"\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"echo start {{{{host.label.name}}}} >> {}; exec sleep 300\"]\ntimeout = \"2s\"\n",
            log.display()
        ),
    )
    .unwrap();
    let id = run_campaign(&c, &file);
    wait_for("w1 to start", || {
        starts(&ran(dir.path())).get("w1").copied()
    });
    agents[0].kill();
    let _ = Command::new("pkill")
        .args(["-f", &format!("echo start w1 >> {}", log.display())])
        .status();
    // While the agent is away the host is not released and nobody else starts.
    let info = show(&c, &id);
    assert_ne!(host_status(&info, &agents[0])["state"], "done");
    assert_eq!(host_status(&info, &agents[1])["state"], "pending");
    // After the step timeout (plus the coordinator's grace for a late result) it counts as failed,
    // keeps its slot, and the budget (0) pauses the campaign.
    pitcrew_tests::wait_for_within(
        "the lost host to fail",
        std::time::Duration::from_secs(180),
        || Some(show(&c, &id)).filter(|i| host_status(i, &agents[0])["state"] == "failed"),
    );
    let info = wait_state(&c, &id, "paused");
    assert_eq!(host_status(&info, &agents[1])["state"], "pending");
    assert_eq!(
        c.host(&agents[0].machine_id).unwrap()["held_by"],
        id.as_str()
    );
    assert!(!starts(&ran(dir.path())).contains_key("w2"));
}

#[test]
fn a_failing_post_gate_keeps_the_host_out_and_watch_says_why() {
    let (c, agents) = start_fleet(&FLEET[..2], &policy());
    let dir = tempfile::tempdir().unwrap();
    let healthy = dir.path().join("healthy");
    let head = format!(
        "[concurrency]\nworker = 1\n\n[[gate.post]]\nname = \"node healthy\"\naction = \"health\"\ncommand = [\"/bin/sh\", \"-c\", \"test -e {}\"]\ntimeout = \"5s\"",
        healthy.display()
    );
    let id = run_campaign(&c, &campaign(dir.path(), "gated", &head, "true"));
    let info = wait_state(&c, &id, "paused");
    let w1 = host_status(&info, &agents[0]);
    assert_eq!(w1["state"], "failed", "{info}");
    assert!(
        format!("{}{}", w1["last_error"], w1["blocker"]).contains("node healthy"),
        "{info}"
    );
    assert_eq!(host_status(&info, &agents[1])["state"], "pending");
    // `watch` (not a terminal here) prints the state and the reason, and ends non-zero... so
    // read it through `show`, which `watch` prints at its end.
    let text = String::from_utf8_lossy(&c.cli(&["campaign", "show", &id]).stdout).into_owned();
    assert!(
        text.contains("paused") && text.contains("error budget"),
        "{text}"
    );
    std::fs::write(&healthy, "").unwrap();
    assert!(
        c.cli(&["campaign", "host", "retry", &id, &agents[0].machine_id])
            .status
            .success()
    );
    let _ = c.cli(&["campaign", "resume", &id]);
    wait_state(&c, &id, "completed");
}

/// `pitcrew campaign watch ID` run to its end: its exit code and what it printed.
fn watch_exit(c: &Coordinator, id: &str) -> (Option<i32>, String) {
    let out = c.cli(&["campaign", "watch", id]);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_outcome_is_shown_as_what_it_is_and_watch_exits_to_match() {
    let (c, agents) = start_fleet(&FLEET[..3], &policy());
    let dir = tempfile::tempdir().unwrap();
    // w2 fails its step; the budget allows one failed host (a third of three, rounded down).
    let body = "if [ {{host.label.name}} = w2 ]; then exit 3; fi";
    let file = campaign(
        dir.path(),
        "mixed",
        // Two slots: the failed host keeps one, the others go through the other.
        "max_failures = \"34%\"\n[concurrency]\nworker = 2",
        body,
    );
    let id = run_campaign(&c, &file);
    // One failed host is within the budget: the campaign goes on with w3 and is not paused.
    let info = wait_for("w3 to be done while w2 failed", || {
        let info = show(&c, &id);
        (host_status(&info, &agents[2])["state"] == "done"
            && host_status(&info, &agents[1])["state"] == "failed")
            .then_some(info)
    });
    assert_eq!(info["failures"], 1, "{info}");
    assert_eq!(info["max_failures"], 1, "{info}");
    assert_ne!(info["state"], "paused", "{info}");
    // The failed host keeps its slot: the campaign cannot end while it is failed.
    assert_eq!(info["state"], "running", "{info}");
    // Released by hand after failing: out of the way, shown as released, not done.
    let released = c.cli_json(&["campaign", "host", "release", &id, &agents[1].machine_id]);
    assert_eq!(host_status(&released, &agents[1])["state"], "released");
    let info = wait_state(&c, &id, "incomplete");
    assert_eq!(info["host_counts"]["done"], 2, "{info}");
    assert_eq!(info["host_counts"]["released"], 1, "{info}");
    let (code, text) = watch_exit(&c, &id);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("finished incomplete") && text.contains("1 released"),
        "{text}"
    );
    // The event log says it too.
    let events = c.cli_json(&["events", "--campaign", &id]);
    assert!(
        events.as_array().unwrap().iter().any(|e| e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("campaign finished incomplete: 2 done, 1 released")),
        "{events}"
    );

    // Every host done: completed, exit 0.
    let file = campaign(dir.path(), "clean", "[concurrency]\nworker = 3", "true");
    let id = run_campaign(&c, &file);
    wait_state(&c, &id, "completed");
    let (code, text) = watch_exit(&c, &id);
    assert_eq!(code, Some(0), "{text}");

    // Cancelled: exit 3.
    let gate = dir.path().join("go");
    let body = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    let file = campaign(dir.path(), "dropped", "[concurrency]\nworker = 1", &body);
    let id = run_campaign(&c, &file);
    c.cli_json(&["campaign", "cancel", &id]);
    std::fs::write(&gate, "").unwrap();
    wait_state(&c, &id, "cancelled");
    let (code, text) = watch_exit(&c, &id);
    assert_eq!(code, Some(3), "{text}");
}

#[test]
fn a_percentage_budget_pauses_when_more_hosts_fail_than_it_allows() {
    let (c, agents) = start_fleet(&FLEET[..3], &policy());
    let dir = tempfile::tempdir().unwrap();
    // 10 % of three hosts allows none: the first failed host pauses the campaign.
    let body = "if [ {{host.label.name}} = w1 ]; then exit 3; fi";
    let file = campaign(
        dir.path(),
        "strict",
        "max_failures = \"10%\"\n[concurrency]\nworker = 1",
        body,
    );
    let id = run_campaign(&c, &file);
    let info = wait_state(&c, &id, "paused");
    assert_eq!(info["max_failures"], 0, "{info}");
    assert!(
        info["blocker"].as_str().unwrap().contains("10% of 3 hosts"),
        "{info}"
    );
    assert_eq!(host_status(&info, &agents[1])["state"], "pending");
    // A bad budget names the line and field.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\nmax_failures = \"lots\"\n[[steps]]\naction = \"daemon_reload\"\n",
    )
    .unwrap();
    let out = c.cli(&["campaign", "plan", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml:2") && err.contains("max_failures"),
        "{err}"
    );
}
