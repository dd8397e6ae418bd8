//! `GET /metrics` on a real coordinator with real agents, read with a strict OpenMetrics
//! parser: what an operator's dashboard would check — connected hosts and sessions, host-steps
//! done and failed after real campaigns, a failed host holding its slot, waits by blocker, a
//! refused enrollment, and latency histograms with observations.

use std::path::{Path, PathBuf};

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use pitcrew_tests::{Agent, Coordinator, bin, start_fleet, wait_for};

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

const FLEET: &[(&str, &str)] = &[("w1", "worker"), ("w2", "worker"), ("m1", "manager")];

/// Scrapes and parses; panics (showing the text) if the exposition is not valid OpenMetrics.
fn scrape(c: &Coordinator) -> Exposition {
    let (status, head, body) = c.metrics_get("/metrics").expect("scraping /metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics ({e:?}):\n{body}"))
}

/// The sum over the samples of `family` whose labels include every pair of `labels`: a gauge's
/// or a counter's value, a histogram's count of observations.
fn value(metrics: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    let family = metrics
        .families
        .get(family)
        .unwrap_or_else(|| panic!("no metric family {family}"));
    family
        .iter_samples()
        .filter(|sample| {
            let set = sample.get_labelset().unwrap();
            labels
                .iter()
                .all(|(name, want)| set.get_label_value(name) == Some(*want))
        })
        .map(|sample| match &sample.value {
            OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Histogram(h) => h.count.unwrap_or(0) as f64,
            other => panic!("unexpected value {other:?}"),
        })
        .sum()
}

/// Waits until `value(...)` equals `want`; returns the scrape that showed it.
fn wait_value(c: &Coordinator, family: &str, labels: &[(&str, &str)], want: f64) -> Exposition {
    wait_for(&format!("{family}{labels:?} to be {want}"), || {
        let metrics = scrape(c);
        (value(&metrics, family, labels) == want).then_some(metrics)
    })
}

/// A campaign of one `sh -c` step over the whole fleet, one worker at a time.
fn campaign(dir: &Path, name: &str, script: &str) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n[concurrency]\nworker = 1\n\n[[steps]]\nname = \"work\"\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"{script}\"]\ntimeout = \"2m\"\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_scrape_shows_the_fleet_its_campaigns_and_refused_enrollments() {
    let (c, mut agents) = start_fleet(FLEET, "[policy]\nexec = [[\"/bin/sh\", \"-c\"]]\n");
    let metrics = wait_value(&c, "pitcrew_agent_sessions", &[], 3.0);
    assert_eq!(
        value(&metrics, "pitcrew_hosts", &[("connected", "true")]),
        3.0
    );
    assert_eq!(
        value(
            &metrics,
            "pitcrew_hosts",
            &[
                ("role", "worker"),
                ("state", "running"),
                ("connected", "true")
            ]
        ),
        2.0
    );
    assert_eq!(value(&metrics, "pitcrew_hosts_reboot_required", &[]), 0.0);
    assert_eq!(value(&metrics, "pitcrew_slot_holders", &[]), 0.0);

    // A campaign every host passes: workers one at a time, then the manager.
    let dir = tempfile::tempdir().unwrap();
    let ok = campaign(dir.path(), "ok", "true");
    let out = c.cli(&["campaign", "run", ok.to_str().unwrap(), "--watch"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = wait_value(&c, "pitcrew_host_steps", &[("outcome", "succeeded")], 3.0);
    assert_eq!(
        value(&metrics, "pitcrew_campaigns", &[("state", "completed")]),
        1.0
    );
    assert_eq!(
        value(&metrics, "pitcrew_host_steps", &[("outcome", "failed")]),
        0.0
    );
    assert_eq!(value(&metrics, "pitcrew_slot_holders", &[]), 0.0);
    // The second worker waited for the one slot, the manager for the workers; both waits
    // ended and nobody waits now.
    assert!(
        value(
            &metrics,
            "pitcrew_host_wait_duration_seconds",
            &[("blocker", "waiting_for_role")]
        ) >= 1.0,
        "the manager's wait for the workers was not observed"
    );
    assert_eq!(value(&metrics, "pitcrew_hosts_waiting", &[]), 0.0);
    assert!(value(&metrics, "pitcrew_engine_decision_duration_seconds", &[]) > 0.0);
    assert!(value(&metrics, "pitcrew_store_commit_duration_seconds", &[]) > 0.0);

    // An enrollment with a token the coordinator never issued is refused and counted.
    let bogus = "pcj_0123456789abcdef_bogus";
    let stranger = Agent::new(&c, "stranger", bogus, "").unwrap();
    let out = std::process::Command::new(bin("pitcrew-agent"))
        .args(["enroll", "--config"])
        .arg(&stranger.config)
        .env("PITCREW_JOIN_TOKEN", bogus)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bogus token enrolled");
    assert!(stderr.contains("not known"), "{stderr}");
    let metrics = scrape(&c);
    assert_eq!(
        value(
            &metrics,
            "pitcrew_enrollments_refused",
            &[("reason", "token_unknown")]
        ),
        1.0
    );

    // A step that fails on w2: the host fails and keeps its slot, the campaign pauses.
    let bad = campaign(dir.path(), "bad", "test {{host.label.name}} != w2");
    let out = c.cli(&["campaign", "run", bad.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = wait_value(&c, "pitcrew_campaigns", &[("state", "paused")], 1.0);
    assert_eq!(
        value(&metrics, "pitcrew_host_steps", &[("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        value(
            &metrics,
            "pitcrew_hosts",
            &[
                ("role", "worker"),
                ("state", "failed"),
                ("connected", "true")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &metrics,
            "pitcrew_slot_holders",
            &[("slot_kind", "worker"), ("holder", "campaign")]
        ),
        1.0
    );

    // An agent that goes away is shown disconnected, and its session gone.
    let m1 = agents
        .iter_mut()
        .find(|a| a.name == "m1")
        .expect("the manager");
    m1.kill();
    let metrics = wait_value(&c, "pitcrew_agent_sessions", &[], 2.0);
    let metrics = if value(&metrics, "pitcrew_hosts", &[("connected", "false")]) == 1.0 {
        metrics
    } else {
        wait_value(&c, "pitcrew_hosts", &[("connected", "false")], 1.0)
    };
    assert_eq!(
        value(
            &metrics,
            "pitcrew_hosts",
            &[("role", "manager"), ("connected", "false")]
        ),
        1.0
    );

    // Only GET /metrics is served.
    let (status, _, _) = c.metrics_get("/").unwrap();
    assert_eq!(status, 404);
    let (status, _, _) = c.metrics_get("/metrics/extra").unwrap();
    assert_eq!(status, 404);
}
