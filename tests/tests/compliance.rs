//! `pitcrew report compliance` over a real coordinator and real agents: what each host reports
//! of itself (agent version, reboot required, pending package updates as its own package
//! manager counts them) and when each campaign last succeeded on it, as JSON and as CSV.

use std::path::Path;
use std::process::Command;

use pitcrew_tests::{Coordinator, start_fleet, wait_for, wait_for_within};

/// How long the hosts may take to count their pending updates.
const SLOW_COUNT: std::time::Duration = std::time::Duration::from_secs(300);
use serde_json::Value;

const FLEET: &[(&str, &str)] = &[("w1", "worker"), ("w2", "worker"), ("m1", "manager")];

/// Runs a campaign to its end and returns its id.
fn run_to_end(c: &Coordinator, file: &Path) -> String {
    let out = c.cli(&["campaign", "run", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "campaign run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_for(&format!("campaign {id} to complete"), || {
        (c.cli_json(&["campaign", "show", &id])["state"] == "completed").then_some(())
    });
    id
}

fn row<'a>(report: &'a Value, hostname: &str) -> &'a Value {
    report
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"]["hostname"] == hostname)
        .unwrap_or_else(|| panic!("no row for {hostname} in {report}"))
}

/// What apt itself says is pending on this machine (the agents in this test run here).
fn apt_pending() -> Option<u64> {
    let out = Command::new("apt-get")
        .args(["-s", "-o", "Debug::NoLocking=1", "upgrade"])
        .env("LANG", "C.UTF-8")
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("Inst "))
            .count() as u64
    })
}

#[test]
fn the_report_shows_each_host_and_when_each_campaign_last_succeeded_on_it() {
    let (c, _agents) = start_fleet(FLEET, "[policy]\nexec = [[\"/bin/true\"]]\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nightly.toml");
    std::fs::write(
        &file,
        "name = \"nightly\"\n[select]\nroles = [\"worker\"]\n[[steps]]\naction = \"exec\"\nargv = [\"/bin/true\"]\n",
    )
    .unwrap();
    run_to_end(&c, &file);
    let latest = run_to_end(&c, &file);

    let report = c.cli_json(&["report", "compliance"]);
    assert_eq!(report.as_array().unwrap().len(), 3, "{report}");
    for worker in ["w1", "w2"] {
        let successes = &row(&report, worker)["last_successes"];
        assert_eq!(successes.as_array().unwrap().len(), 1, "{successes}");
        assert_eq!(successes[0]["campaign"], "nightly");
        assert_eq!(
            successes[0]["run_id"],
            latest.as_str(),
            "the latest run counts"
        );
        assert!(successes[0]["finished_at_ms"].as_i64().unwrap() > 0);
    }
    let manager = row(&report, "m1");
    assert_eq!(manager["last_successes"].as_array().unwrap().len(), 0);
    assert_eq!(
        manager["host"]["facts"]["agent_version"],
        env!("CARGO_PKG_VERSION")
    );

    // The filters are those of `hosts ls`.
    let workers = c.cli_json(&["report", "compliance", "--role", "worker"]);
    assert_eq!(workers.as_array().unwrap().len(), 2, "{workers}");

    // CSV: one row per host and campaign, and one with empty campaign columns for m1.
    let out = c.cli(&["report", "compliance", "-o", "csv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header[0], "hostname");
    assert_eq!(header[8], "campaign");
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3, "{text}");
    let m1 = records.iter().find(|r| &r[0] == "m1").unwrap();
    assert_eq!(&m1[8], "");
    let w1 = records.iter().find(|r| &r[0] == "w1").unwrap();
    assert_eq!((&w1[8], &w1[9]), ("nightly", latest.as_str()));
    assert!(w1[10].ends_with('Z'), "RFC 3339 in UTC: {}", &w1[10]);

    // Other commands have no CSV form, and say so.
    let out = c.cli(&["hosts", "-o", "csv"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-o csv is for `pitcrew report`"));

    // Pending updates, as the host's package manager counts them from its own metadata.
    if let Some(want) = apt_pending() {
        // Counting is a simulated `apt-get upgrade` on each host at once: seconds each on a
        // busy machine with many updates pending, so a generous deadline.
        wait_for_within(
            "every host to report its pending updates",
            SLOW_COUNT,
            || {
                let report = c.cli_json(&["report", "compliance"]);
                report
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r["host"]["facts"]["pending_updates"].as_u64() == Some(want))
                    .then_some(())
            },
        );
    }
}
