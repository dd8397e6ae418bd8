//! Schedules and the run listing on a real coordinator with real agents: `campaign run` refuses
//! a second active run of a campaign (the duplicate runs an external cron stacked), `campaign
//! ls` filters by state and name and cuts at its limit, and a registered schedule fires by
//! itself, over the hosts its fact conditions select, and skips a fire while its run is still
//! going.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pitcrew_tests::{Coordinator, start_fleet, wait_for, wait_for_within};
use serde_json::Value;

const FLEET: &[(&str, &str)] = &[("w1", "worker"), ("w2", "worker")];

fn policy() -> String {
    "[policy]\nexec = [[\"/bin/sh\", \"-c\"]]\n".to_owned()
}

/// A campaign whose one step waits for `gate` to exist (so its run stays active until then).
fn gated(dir: &Path, name: &str, head: &str, gate: &Path) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n{head}\n[concurrency]\nworker = 2\n\n[[steps]]\nname = \"work\"\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"while [ ! -e {gate} ]; do sleep 0.05; done\"]\ntimeout = \"5m\"\n",
        gate = gate.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(c: &Coordinator, file: &Path) -> std::process::Output {
    c.cli(&["campaign", "run", file.to_str().unwrap()])
}

fn started(c: &Coordinator, file: &Path) -> String {
    let out = run(c, file);
    assert!(
        out.status.success(),
        "campaign run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_state(c: &Coordinator, id: &str, state: &str) {
    wait_for(&format!("campaign {id} to be {state}"), || {
        (c.cli_json(&["campaign", "show", id])["state"] == state).then_some(())
    });
}

#[test]
fn campaign_run_refuses_a_second_active_run_and_ls_filters_and_limits() {
    let (c, _agents) = start_fleet(FLEET, &policy());
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let file = gated(dir.path(), "nightly-fix", "", &gate);
    let first = started(&c, &file);

    // The same file again while the first run is active: refused, naming the run.
    let again = run(&c, &file);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains(&format!(
            "campaign \"nightly-fix\" already has an active run, {first}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("pitcrew campaign cancel"), "{stderr}");

    // Another campaign runs beside it; then both finish.
    let other = started(&c, &gated(dir.path(), "weekly-patch", "", &gate));
    let running = c.cli_json(&["campaign", "ls", "--state", "active"]);
    assert_eq!(
        ids(&running),
        vec![other.clone(), first.clone()],
        "newest first"
    );
    std::fs::write(&gate, "").unwrap();
    wait_state(&c, &first, "completed");
    wait_state(&c, &other, "completed");

    // Finished, the file runs again.
    let second = started(&c, &file);
    wait_state(&c, &second, "completed");

    let all = c.cli_json(&["campaign", "ls"]);
    assert_eq!(
        ids(&all),
        vec![second.clone(), other.clone(), first.clone()]
    );
    let by_name = c.cli_json(&["campaign", "ls", "--name", "NIGHTLY-*"]);
    assert_eq!(ids(&by_name), vec![second.clone(), first.clone()]);
    let none = c.cli_json(&["campaign", "ls", "--state", "running"]);
    assert!(ids(&none).is_empty());
    let completed = c.cli_json(&["campaign", "ls", "--state", "completed", "--name", "*patch"]);
    assert_eq!(ids(&completed), vec![other.clone()]);

    // The limit keeps the newest and says what it left out.
    let out = c.cli(&["campaign", "ls", "--limit", "1"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&second) && !table.contains(&first),
        "{table}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 of 3 matching runs shown, newest first"),
        "{stderr}"
    );
    let bad = c.cli(&["campaign", "ls", "--state", "done"]);
    assert!(!bad.status.success());
    // Nothing is archived within a week.
    let archived = c.cli_json(&["campaign", "ls", "--archived"]);
    assert!(ids(&archived).is_empty());
}

#[test]
fn a_registered_schedule_fires_by_itself_and_skips_while_its_run_is_active() {
    let (c, _agents) = start_fleet(FLEET, &policy());
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    // Every minute, over the hosts whose facts hold the conditions (every host here).
    let file = gated(
        dir.path(),
        "every-minute",
        "schedule = { cron = \"* * * * *\", timezone = \"Europe/Berlin\" }\n[select]\nwhen = [\"shm_tmpfs_mounts < 1000\"]",
        &gate,
    );

    // A file with a schedule is registered, not run by hand.
    let refused = run(&c, &file);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("has a schedule: register it with `pitcrew schedule add"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let plan = c.cli(&["campaign", "plan", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("Only hosts whose facts hold: shm_tmpfs_mounts < 1000 (0 other selected host(s) left out now"),
        "{text}"
    );
    assert!(
        text.contains("Schedule: \"* * * * *\" in Europe/Berlin"),
        "{text}"
    );

    let out = c.cli(&["schedule", "add", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("schedule \"every-minute\" registered"),
        "{said}"
    );
    let out = c.cli(&["schedule", "add", file.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replaced (one schedule per campaign name)")
    );
    let table = String::from_utf8_lossy(&c.cli(&["schedule", "ls"]).stdout).into_owned();
    assert!(
        table.contains("every-minute") && table.contains("shm_tmpfs_mounts < 1000"),
        "{table}"
    );

    // The coordinator starts the run by itself at the next minute.
    let schedule = |c: &Coordinator| -> Value {
        c.cli_json(&["schedule", "ls"]).as_array().unwrap()[0].clone()
    };
    let fired = wait_for_within("the schedule to fire", Duration::from_secs(90), || {
        Some(schedule(&c)).filter(|s| s["last_run_id"].as_str().is_some_and(|id| !id.is_empty()))
    });
    let run_id = fired["last_run_id"].as_str().unwrap().to_owned();
    let info = c.cli_json(&["campaign", "show", &run_id]);
    assert_eq!(info["created_by"], "schedule every-minute");
    assert_eq!(info["hosts_total"], 2);

    // A minute later its run is still going: that fire is skipped and says why.
    let skipped = wait_for_within(
        "the next fire to be skipped",
        Duration::from_secs(90),
        || {
            Some(schedule(&c)).filter(|s| {
                s["last_note"].as_str().is_some_and(|n| {
                    n.contains(&format!("run {run_id} of \"every-minute\" is still"))
                })
            })
        },
    );
    assert_eq!(skipped["last_run_id"], "");
    let runs = c.cli_json(&["campaign", "ls", "--name", "every-minute"]);
    assert_eq!(ids(&runs), vec![run_id.clone()], "no run doubled");

    // Removed, it fires no more; its run finishes.
    let out = c.cli(&["schedule", "rm", "every-minute"]);
    assert!(out.status.success());
    assert!(
        c.cli_json(&["schedule", "ls"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    std::fs::write(&gate, "").unwrap();
    wait_state(&c, &run_id, "completed");
}
