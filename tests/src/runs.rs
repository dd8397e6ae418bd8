//! Campaigns whose steps record what the hosts really ran: each host's one step appends
//! `start NAME` and `end NAME` to a shared file, so order, overlap and repetition are read back
//! from what the agents did, not from what the coordinator says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::Coordinator;

/// Three workers and three managers of cluster `c1`, the last one its leader.
pub const FLEET: &[(&str, &str)] = &[
    ("w1", "worker"),
    ("w2", "worker"),
    ("w3", "worker"),
    ("m1", "manager"),
    ("m2", "manager"),
    ("m3-leader", "manager"),
];

/// A policy that lets campaigns run `/bin/sh -c` steps.
pub fn policy() -> String {
    "[policy]\nexec = [[\"/bin/sh\", \"-c\"]]\n".to_owned()
}

/// A campaign whose one main step logs `start NAME` and `end NAME` around `body`.
pub fn campaign(dir: &Path, name: &str, head: &str, body: &str) -> PathBuf {
    let log = dir.join("ran.log");
    let text = format!(
        "name = \"{name}\"\n{head}\n\n[[steps]]\nname = \"work\"\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"echo start {{{{host.label.name}}}} >> {log}; {body}; echo end {{{{host.label.name}}}} >> {log}\"]\ntimeout = \"2m\"\n",
        log = log.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// What the hosts recorded running, in order: `(start|end, name)`.
pub fn ran(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("ran.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect()
}

/// The most hosts matching `filter` that were between start and end at once, and whether each
/// host ran exactly once.
pub fn max_overlap(events: &[(String, String)], filter: impl Fn(&str) -> bool) -> usize {
    let mut open = 0usize;
    let mut max = 0;
    for (what, who) in events {
        if !filter(who) {
            continue;
        }
        if what == "start" {
            open += 1;
            max = max.max(open);
        } else {
            open = open.saturating_sub(1);
        }
    }
    max
}

/// How many times each host started its step.
pub fn starts(events: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for (what, who) in events {
        if what == "start" {
            *count.entry(who.clone()).or_insert(0) += 1;
        }
    }
    count
}

/// What the hosts recorded and the event log say of a completed run over [`FLEET`]: every host
/// ran its step once, never two managers (or more than two workers) out at once — by the
/// hosts' own record and by the event log's manager intervals — every host released, the
/// campaign completed. Returns the event log.
pub fn assert_each_host_ran_once(c: &Coordinator, dir: &Path, id: &str) -> Vec<Value> {
    let events = ran(dir);
    let counts = starts(&events);
    assert_eq!(counts.len(), 6, "{events:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "an action ran twice: {counts:?}"
    );
    assert_eq!(
        max_overlap(&events, |h| h.starts_with('m')),
        1,
        "two managers out at once: {events:?}"
    );
    assert!(max_overlap(&events, |h| h.starts_with('w')) <= 2);
    let log = c.cli_json(&["events", "--campaign", id, "--limit", "0"]);
    let log = log.as_array().unwrap().clone();
    assert_eq!(log.iter().filter(|e| e["step"] == "release").count(), 6);
    assert!(log.iter().any(|e| e["kind"] == "audit"
        && e["message"] == "campaign completed: all 6 hosts done"));
    let managers: Vec<String> = c
        .hosts()
        .iter()
        .filter(|h| h["role"] == "manager")
        .filter_map(|h| h["host_id"].as_str().map(str::to_owned))
        .collect();
    let mut out = 0;
    for e in &log {
        if !managers.iter().any(|m| e["host_id"] == m.as_str()) {
            continue;
        }
        match e["step"].as_str() {
            Some("start") => {
                out += 1;
                assert!(out <= 1, "the event log shows two managers out at once");
            }
            Some("release") => out -= 1,
            _ => {}
        }
    }
    log
}
