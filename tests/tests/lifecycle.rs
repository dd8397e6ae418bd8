//! Every path honours the slots, and a host's lifecycle after enrollment, over real processes:
//! `pitcrew do` refused on a host a campaign holds and on a manager while another holds its
//! cluster's manager slot (naming the holder), allowed once the operator holds the host, forced
//! and audited; an operator's `do` in flight keeps a campaign off the manager slot; `pitcrew
//! hosts remove` (the certificate stops working at once, the quorum guard forgets the host,
//! its history stays); `pitcrew hosts set` (audited, refused while a campaign has the host).
//!
//! Campaign steps and `do` actions wait on files the test creates, so a host stays held exactly
//! as long as the test needs, and what ran is read back from files the agents wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pitcrew_tests::{Coordinator, bin, start_fleet, wait_for};
use serde_json::Value;

fn policy() -> String {
    "[policy]\nexec = [[\"/bin/sh\", \"-c\"], [\"/bin/true\"]]\n".to_owned()
}

/// A campaign over `role` whose one step notes `start NAME` in `dir`, then waits for `dir/go`.
fn held_campaign(dir: &Path, role: &str) -> PathBuf {
    let text = format!(
        "name = \"held\"\n[select]\nroles = [\"{role}\"]\n\n[[steps]]\nname = \"work\"\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"touch {dir}/start-{{{{host.label.name}}}}; while [ ! -f {dir}/go ]; do sleep 0.1; done\"]\ntimeout = \"2m\"\n",
        dir = dir.display()
    );
    let path = dir.join("held.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Which hosts' campaign steps have started, by name.
fn started(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("start-"))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn run_campaign(c: &Coordinator, file: &Path) -> String {
    let out = c.cli(&["campaign", "run", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "campaign run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_state(c: &Coordinator, id: &str, state: &str) -> Value {
    wait_for(&format!("campaign {id} to be {state}"), || {
        let info = c.cli_json(&["campaign", "show", id]);
        (info["state"] == state).then_some(info)
    })
}

struct Ran {
    ok: bool,
    out: String,
}

fn run_do(c: &Coordinator, args: &[&str]) -> Ran {
    let mut all = vec!["do"];
    all.extend(args);
    let out = c.cli(&all);
    Ran {
        ok: out.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn audit(c: &Coordinator) -> Vec<String> {
    c.cli_json(&["events"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "audit")
        .map(|e| {
            format!(
                "{}: {}",
                e["actor"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// The coordinator's port, for a read-only TCP health check against a loopback listener.
fn port_of(c: &Coordinator) -> String {
    c.address().rsplit(':').next().unwrap().to_owned()
}

#[test]
fn do_is_refused_for_slot_holders_allowed_once_held_and_force_is_audited() {
    let (c, agents) = start_fleet(
        &[
            ("m1", "manager"),
            ("m2", "manager"),
            ("m3", "manager"),
            ("w1", "worker"),
        ],
        &policy(),
    );
    let dir = tempfile::tempdir().unwrap();
    let id = run_campaign(&c, &held_campaign(dir.path(), "manager"));
    let held = wait_for("a manager to start", || started(dir.path()).pop());
    let other = ["m1", "m2", "m3"].into_iter().find(|m| *m != held).unwrap();

    // The host the campaign holds: refused, naming the campaign and the way out.
    let ran = run_do(&c, &[&held, "exec", "--", "/bin/true"]);
    assert!(!ran.ok, "{}", ran.out);
    assert!(
        ran.out.contains(&format!("campaign {id}")) && ran.out.contains("--force"),
        "{}",
        ran.out
    );
    // Another manager of the cluster: the one manager slot is held; the holder is named.
    let ran = run_do(&c, &[other, "exec", "--", "/bin/true"]);
    assert!(!ran.ok, "{}", ran.out);
    assert!(
        ran.out.contains("manager slot") && ran.out.contains(&format!("{held} (campaign {id})")),
        "{}",
        ran.out
    );
    // Read-only checks are never refused; a worker outside the campaign is free.
    let ran = run_do(&c, &[other, "health", "tcp", "127.0.0.1", &port_of(&c)]);
    assert!(ran.ok, "{}", ran.out);
    let ran = run_do(&c, &["w1", "exec", "--", "/bin/true"]);
    assert!(ran.ok, "{}", ran.out);
    // Forced: it runs, and the audit trail says who overrode what.
    let ran = run_do(&c, &[other, "--force", "exec", "--", "/bin/true"]);
    assert!(ran.ok, "{}", ran.out);
    let trail = audit(&c);
    assert!(
        trail.iter().any(|m| m.starts_with("admin: forced exec")
            && m.contains(&format!("on {other}"))
            && m.contains("manager slot")),
        "{trail:?}"
    );
    // No other manager's step ran meanwhile.
    assert_eq!(started(dir.path()), vec![held.clone()]);

    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_state(&c, &id, "completed");

    // Holding the host first (manual maintenance) is the other way: then `do` is allowed on
    // it, and refused on the other managers, naming the hold.
    let m2 = agents[1].machine_id.clone();
    c.cli_json(&["maintenance", "enable", &m2]);
    let ran = run_do(&c, &["m2", "exec", "--", "/bin/true"]);
    assert!(ran.ok, "{}", ran.out);
    let ran = run_do(&c, &["m3", "exec", "--", "/bin/true"]);
    assert!(!ran.ok, "{}", ran.out);
    assert!(ran.out.contains("m2 (manual maintenance)"), "{}", ran.out);
    c.cli_json(&["maintenance", "disable", &m2]);
}

#[test]
fn a_do_in_flight_on_a_manager_keeps_a_campaign_off_the_manager_slot() {
    let (c, _agents) = start_fleet(
        &[("m1", "manager"), ("m2", "manager"), ("m3", "manager")],
        &policy(),
    );
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("do-running");
    let release = dir.path().join("do-go");
    // A disruptive `do` on m1 that runs until the test lets it finish.
    let script = format!(
        "touch {}; while [ ! -f {} ]; do sleep 0.1; done",
        flag.display(),
        release.display()
    );
    let mut running = Command::new(bin("pitcrew"))
        .args(["do", "m1", "exec", "--", "/bin/sh", "-c", &script])
        .envs(c.operator_env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the do to be running on m1", || flag.exists().then_some(()));
    assert_eq!(
        c.host(&host_id(&c, "m1")).unwrap()["held_by"],
        "operator admin (pitcrew do)"
    );
    // A campaign over the managers waits for the slot, naming the operator's action.
    let id = run_campaign(&c, &held_campaign(dir.path(), "manager"));
    wait_for(
        "the campaign to name the operator's do as its blocker",
        || {
            let info = c.cli_json(&["campaign", "show", &id]);
            info["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| {
                    h["blocker"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("operator admin's pitcrew do")
                })
                .then_some(())
        },
    );
    assert!(started(dir.path()).is_empty(), "{:?}", started(dir.path()));
    // The `do` ends: the campaign takes the managers, one at a time.
    std::fs::write(&release, "").unwrap();
    assert!(running.wait().unwrap().success());
    wait_for("a manager to start", || started(dir.path()).pop());
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_state(&c, &id, "completed");
}

fn host_id(c: &Coordinator, name: &str) -> String {
    c.hosts()
        .into_iter()
        .find(|h| h["hostname"] == name)
        .and_then(|h| h["host_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no host {name}"))
}

#[test]
fn a_removed_host_is_revoked_leaves_the_quorum_guard_and_keeps_its_history() {
    let (mut c, mut agents) = start_fleet(
        &[
            ("m1", "manager"),
            ("m2", "manager"),
            ("m3", "manager"),
            ("w1", "worker"),
        ],
        &policy(),
    );
    let m3 = agents[2].machine_id.clone();
    let w1 = agents[3].machine_id.clone();
    // m3 dies for good: every manager campaign of the cluster waits on the quorum guard, and
    // the blocker says how to remove it.
    agents[2].kill();
    wait_for("m3 to show disconnected", || {
        c.host(&m3).filter(|h| h["connected"] == false)
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("managers.toml");
    std::fs::write(
        &file,
        "name = \"managers\"\n[select]\nroles = [\"manager\"]\n[[steps]]\naction = \"exec\"\nargv = [\"/bin/true\"]\n",
    )
    .unwrap();
    let ran = run_do(&c, &["m1", "exec", "--", "/bin/true"]);
    assert!(
        !ran.ok && ran.out.contains("pitcrew hosts remove m3"),
        "{}",
        ran.out
    );
    let id = run_campaign(&c, &file);
    wait_for("the quorum guard to say how to remove m3", || {
        let info = c.cli_json(&["campaign", "show", &id]);
        info["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| {
                h["blocker"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("pitcrew hosts remove m3")
            })
            .then_some(())
    });
    let removed = c.cli_json(&["hosts", "remove", "m3"]);
    assert!(removed["host"]["removed_at_ms"].as_i64().unwrap() > 0);
    assert!(
        removed["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().contains("now skipped")),
        "{removed}"
    );
    // The campaign goes on without it and cannot read as a success.
    let info = wait_state(&c, &id, "incomplete");
    let skipped: Vec<&Value> = info["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["state"] == "skipped")
        .collect();
    assert_eq!(skipped.len(), 1, "{info}");
    assert_eq!(skipped[0]["host_id"], m3.as_str());

    // Listed only among removed hosts; its history stays, with the removal audited.
    assert!(c.host(&m3).is_none());
    let gone = c.cli_json(&["hosts", "ls", "--removed"]);
    assert!(
        gone.as_array()
            .unwrap()
            .iter()
            .any(|h| h["host_id"] == m3.as_str()),
        "{gone}"
    );
    let history = c.cli_json(&["events", "--host", &m3]);
    let history = history.as_array().unwrap();
    assert!(history.iter().any(|e| e["result"] == "connected"));
    assert!(history.iter().any(|e| {
        e["actor"] == "admin"
            && e["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("removed host m3")
    }));

    // Its certificate no longer works: the agent comes back and is refused.
    agents[2].start().unwrap();
    wait_for("m3's session to be refused", || {
        c.log()
            .contains("refused a session of a removed host")
            .then_some(())
    });
    assert!(c.host(&m3).is_none());

    // A live host: its session ends at once and does not come back.
    c.cli_json(&["hosts", "remove", &w1]);
    wait_for("w1's live session to end", || {
        c.cli_json(&["hosts", "ls", "--removed"])
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host_id"] == w1.as_str())
            .filter(|h| h["connected"] == false)
            .cloned()
    });
    // Removal survives a restart.
    c.stop();
    c.start().unwrap();
    wait_for("the coordinator to serve again", || {
        c.cli(&["hosts"]).status.success().then_some(())
    });
    assert!(c.host(&m3).is_none() && c.host(&w1).is_none());
    // Bringing it back needs a token made for it, which names the removed host by its id.
    let token = c.cli_json(&["token", "create", "--replace", &m3]);
    assert_eq!(token["info"]["replace_host"], m3.as_str());
}

#[test]
fn role_and_labels_change_audited_and_not_while_a_campaign_has_the_host() {
    let (c, _agents) = start_fleet(&[("w1", "worker"), ("w2", "worker")], &policy());
    let dir = tempfile::tempdir().unwrap();
    let id = run_campaign(&c, &held_campaign(dir.path(), "worker"));
    wait_for("a worker to start", || started(dir.path()).pop());
    for host in ["w1", "w2"] {
        let out = c.cli(&["hosts", "set", host, "--label", "rack=r2"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(&format!("held by campaign {id}")), "{err}");
    }
    std::fs::write(dir.path().join("go"), "").unwrap();
    wait_state(&c, &id, "completed");

    let changed = c.cli_json(&[
        "hosts",
        "set",
        "w1",
        "--role",
        "manager",
        "--label",
        "rack=r2",
        "--unset-label",
        "name",
    ]);
    assert_eq!(changed["role"], "manager");
    assert_eq!(changed["labels"]["rack"], "r2");
    assert!(changed["labels"].get("name").is_none(), "{changed}");
    let shown = c.cli_json(&["hosts", "show", "w1"]);
    assert_eq!(shown["role"], "manager");
    let trail = audit(&c);
    assert!(
        trail
            .iter()
            .any(|m| m.starts_with("admin: changed host w1:")
                && m.contains("role worker → manager")
                && m.contains("label rack=r2 added")
                && m.contains("label name=w1 removed")),
        "{trail:?}"
    );
}
