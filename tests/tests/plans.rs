//! `pitcrew campaign plan` from the fleet as it is, over real processes: a host in manual
//! maintenance, a host held by another running campaign, a disconnected manager (the quorum
//! guard it trips) and a window closed now each show on the wave they delay; every step a
//! host's policy would refuse is listed and the plan says it cannot run as it is; `--at` plans
//! a later start with the current holders assumed.

use std::path::Path;
use std::process::Output;

use pitcrew_tests::{Coordinator, start_fleet, wait_for};
use serde_json::Value;

const FLEET: &[(&str, &str)] = &[
    ("w1", "worker"),
    ("w2", "worker"),
    ("w3", "worker"),
    ("m1", "manager"),
    ("m2", "manager"),
    ("m3", "manager"),
];

fn policy() -> String {
    "[policy]\nexec = [[\"/bin/sh\", \"-c\"]]\n".to_owned()
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `campaign plan FILE [ARGS] -o json`: the plan (printed even when it cannot run) and how
/// the command exited.
fn plan_json(c: &Coordinator, file: &Path, args: &[&str]) -> (Value, Option<i32>, String) {
    let mut all = vec!["campaign", "plan", file.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    let out = c.cli(&all);
    let (stdout, stderr) = text(&out);
    let plan = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON plan ({e}): {stdout}\n{stderr}"));
    (plan, out.status.code(), stderr)
}

/// The blockers of a plan as (wave, hostname, kind, held_by, text).
fn blockers(plan: &Value) -> Vec<(u64, String, String, String, String)> {
    plan["blockers"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    let s = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
                    (
                        b["wave"].as_u64().unwrap_or(0),
                        s("hostname"),
                        s("kind"),
                        s("held_by"),
                        s("text"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wave_of(plan: &Value, host: &str) -> u64 {
    plan["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hostname"] == host)
        .and_then(|h| h["wave"].as_u64())
        .unwrap_or_else(|| panic!("{host} is not in the plan: {plan}"))
}

#[test]
fn a_plan_starts_from_the_fleet_as_it_is_and_shows_what_delays_each_wave() {
    let (c, mut agents) = start_fleet(FLEET, &policy());
    let dir = tempfile::tempdir().unwrap();

    // w2 in manual maintenance.
    let w2 = c.cli_json(&["maintenance", "enable", "w2"]);
    assert_eq!(w2["maintenance_state"], "maintenance");

    // w3 held by another campaign, its step waiting on a file.
    let gate = dir.path().join("go");
    let started = dir.path().join("started");
    let holder = dir.path().join("holder.toml");
    std::fs::write(
        &holder,
        format!(
            "name = \"holder\"\n[select]\nhosts = [\"w3\"]\n\n[[steps]]\nname = \"hold\"\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"touch {}; while [ ! -e {} ]; do sleep 0.05; done\"]\ntimeout = \"2m\"\n",
            started.display(),
            gate.display()
        ),
    )
    .unwrap();
    let out = c.cli(&["campaign", "run", holder.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let holder_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_for("the holding campaign to start w3", || {
        started.exists().then_some(())
    });

    // m2's agent gone.
    agents[4].kill();
    let m2 = agents[4].machine_id.clone();
    wait_for("m2 to show disconnected", || {
        c.host(&m2).filter(|h| h["connected"] == false)
    });

    // The campaign to plan: every host; a window that opens in two hours; a manager step no
    // manager's policy allows.
    let now = pitcrew_proto::now_ms();
    let opens = (now / 1000 + 2 * 3600) * 1000;
    let file = dir.path().join("patch.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"patch\"\n[concurrency]\nworker = 3\n\n[[window]]\nstart = \"{}\"\nduration = \"1h\"\n\n[[manager.before]]\nname = \"backup\"\naction = \"exec\"\nargv = [\"/usr/bin/backup\"]\n\n[[steps]]\nname = \"work\"\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"true\"]\n",
            rfc3339(opens)
        ),
    )
    .unwrap();

    // The engine learns of the disconnection through the session's end: wait for the plan to
    // show it rather than for a time.
    let (plan, code, stderr) = wait_for("the plan to show the quorum guard", || {
        let shown = plan_json(&c, &file, &[]);
        blockers(&shown.0)
            .iter()
            .any(|b| b.2 == "quorum_guard")
            .then_some(shown)
    });
    let shown = blockers(&plan);
    let waves: Vec<(String, u64)> = ["w1", "w2", "w3", "m1", "m2", "m3"]
        .iter()
        .map(|h| (h.to_string(), wave_of(&plan, h)))
        .collect();
    assert_eq!(
        waves,
        vec![
            ("w1".into(), 1),
            ("w2".into(), 2),
            ("w3".into(), 2),
            ("m1".into(), 3),
            ("m2".into(), 4),
            ("m3".into(), 5),
        ],
        "{shown:#?}"
    );
    let kinds: Vec<(u64, &str, &str)> = shown
        .iter()
        .map(|b| (b.0, b.1.as_str(), b.2.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, "w1", "window_closed"),
            (2, "w2", "held"),
            (2, "w3", "held"),
            (3, "m1", "quorum_guard"),
            (4, "m2", "disconnected"),
        ],
        "{shown:#?}"
    );
    assert!(
        shown[0].4.contains(&format!("opens at {}", rfc3339(opens))),
        "{}",
        shown[0].4
    );
    assert_eq!(shown[1].3, "manual maintenance by admin");
    assert_eq!(shown[2].3, format!("campaign {holder_id} (\"holder\")"));
    assert_eq!(
        shown[3].4,
        "quorum guard: manager m2 is disconnected now, so no other manager of cluster \"c1\" is taken until it is back"
    );

    // Every refusal is listed, not only the first; the plan says it cannot run as it is.
    assert_eq!(plan["runnable"], false);
    let refused: Vec<(&str, &str)> = plan["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["host"].as_str().unwrap(), r["rule"].as_str().unwrap()))
        .collect();
    assert_eq!(
        refused,
        vec![
            ("m1", "policy.exec"),
            ("m2", "policy.exec"),
            ("m3", "policy.exec")
        ]
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot run as it is: 3 step(s) would be refused"),
        "{stderr}"
    );

    // What the operator reads: each blocker under the wave it delays, then the refusals.
    let out = c.cli(&["campaign", "plan", file.to_str().unwrap()]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("Planned start: now (") && stdout.contains("from the fleet as it is"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "\nWave 2\n  waits: w2 is held by manual maintenance by admin; it starts once that ends\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "  waits: w3 is held by campaign {holder_id} (\"holder\"); it starts once that ends\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nWave 3\n  waits: quorum guard: manager m2 is disconnected now"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Not runnable as it is: 3 step(s) would be refused by their host's policy:\n  - host m1 would refuse step \"backup\""),
        "{stdout}"
    );

    // `run` refuses it, naming every refusal.
    let out = c.cli(&["campaign", "run", file.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("3 steps would be refused")
            && ["m1", "m2", "m3"]
                .iter()
                .all(|m| stderr.contains(&format!("host {m} would refuse step \"backup\""))),
        "{stderr}"
    );

    // `--at` inside the window: no window blocker; hosts held now are assumed still held.
    let at = rfc3339(opens + 600_000);
    let (later, _, _) = plan_json(&c, &file, &["--at", &at]);
    let later_kinds: Vec<String> = blockers(&later).into_iter().map(|b| b.2).collect();
    assert_eq!(
        later_kinds,
        vec!["held", "held", "quorum_guard", "disconnected"],
        "{later}"
    );
    assert_eq!(later["start_at_ms"], opens + 600_000);
    assert_eq!(later["first_start_ms"], opens + 600_000);
    let out = c.cli(&[
        "campaign",
        "plan",
        file.to_str().unwrap(),
        "--at",
        "+2h 10m",
    ]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(
            "(as asked); hosts held and agents disconnected now are assumed still so then"
        ),
        "{stdout}"
    );
    // A start in the past is refused, saying so.
    let out = c.cli(&[
        "campaign",
        "plan",
        file.to_str().unwrap(),
        "--at",
        &rfc3339(now - 3_600_000),
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("is in the past"), "{stderr}");

    std::fs::write(&gate, "").unwrap();
}

#[test]
fn a_manager_slot_held_by_manual_maintenance_shows_on_the_first_managers_wave() {
    let (c, _agents) = start_fleet(&FLEET[3..], &policy());
    let m3 = c.cli_json(&["maintenance", "enable", "m3"]);
    assert_eq!(m3["maintenance_state"], "maintenance");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("two.toml");
    std::fs::write(
        &file,
        "name = \"two\"\n[select]\nroles = [\"manager\"]\nhosts = [\"m1\", \"m2\"]\n\n[[steps]]\nname = \"work\"\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"true\"]\n",
    )
    .unwrap();
    let (plan, code, stderr) = plan_json(&c, &file, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(plan["runnable"], true);
    let shown = blockers(&plan);
    assert_eq!(shown.len(), 1, "{shown:#?}");
    let (wave, host, kind, held_by, says) = &shown[0];
    assert_eq!(
        (*wave, host.as_str(), kind.as_str()),
        (1, "m1", "manager_slot")
    );
    assert_eq!(held_by, "manual maintenance by admin");
    assert_eq!(
        says,
        "the manager slot of cluster \"c1\" is held by m3 (manual maintenance by admin); m1 starts once it is released"
    );
    // Nothing held in the way once it is back in service.
    c.cli_json(&["maintenance", "disable", "m3"]);
    let (plan, code, _) = plan_json(&c, &file, &[]);
    assert_eq!(code, Some(0));
    assert!(blockers(&plan).is_empty(), "{plan}");
}
