//! Every example campaign in `examples/` parses and plans against a sample fleet of three
//! managers and three workers with permissive policies, in the order its runbook asks.

mod common;

use common::*;
use pitcrew_scheduler::{CampaignSpec, HostView, Phase, Plan, PlanError, Role, plan};

fn sample_fleet(cluster: &str) -> Vec<HostView> {
    let mut hosts = Vec::new();
    for i in 1..=3 {
        let mut m = host(&format!("m{i}"), Role::Manager, cluster);
        m.hostname = format!("manager-{i}");
        if i == 1 {
            // The swarm leader: serviced after the other managers.
            m.labels.insert("leader".into(), "true".into());
        }
        hosts.push(m);
        let mut w = host(&format!("w{i}"), Role::Worker, cluster);
        w.hostname = format!("worker-{i}");
        hosts.push(w);
    }
    hosts
}

/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600_000;

fn plan_example(file: &str, cluster: &str) -> Plan {
    let path = format!("{}/../../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let spec = CampaignSpec::parse(&text, file).unwrap_or_else(|e| panic!("{e}"));
    plan(&spec, "c-1", &sample_fleet(cluster), NOW).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn order(p: &Plan) -> Vec<&str> {
    p.hosts.iter().map(|h| h.hostname.as_str()).collect()
}

#[test]
fn swarm_patch_takes_workers_then_managers_one_at_a_time_leader_last() {
    let p = plan_example("swarm-patch.toml", "swarm-a");
    assert_eq!(
        order(&p),
        vec![
            "worker-1",
            "worker-2",
            "worker-3",
            "manager-2",
            "manager-3",
            "manager-1"
        ]
    );
    let waves: Vec<u32> = p.hosts.iter().map(|h| h.wave).collect();
    assert_eq!(waves, vec![1, 2, 3, 4, 5, 6], "one node at a time");
    let m2 = &p.hosts[3];
    assert_eq!(m2.slot, "manager:swarm-a");
    let steps: Vec<(Phase, &str, &str)> = m2
        .steps
        .iter()
        .map(|s| (s.phase, s.host.as_str(), s.description.as_str()))
        .collect();
    assert_eq!(
        steps[0],
        (
            Phase::PreGate,
            "manager-2",
            "swarm healthy: health: /usr/local/bin/lab-health exits 0"
        )
    );
    assert_eq!(steps[1].2, "backup UCP: exec /usr/local/bin/ucp-backup");
    assert_eq!(steps[2].0, Phase::Before);
    assert_ne!(steps[2].1, "manager-2", "the drain runs on another manager");
    assert!(steps[2].2.contains("drain manager-2"), "{}", steps[2].2);
    assert_eq!(steps[3].2, "patch (upgrade all packages)");
    assert_eq!(steps[4].2, "reboot if required: reboot (only if required)");
    assert!(steps[5].2.contains("active manager-2"), "{}", steps[5].2);
    assert_eq!(steps[6].0, Phase::PostGate);
    assert_eq!(steps.len(), 8);
    let text = p.text();
    assert!(text.contains("Wave 4"), "{text}");
    assert!(text.contains("[on manager-"), "{text}");
}

#[test]
fn ucp_upgrade_takes_managers_first() {
    let p = plan_example("ucp-upgrade.toml", "swarm-a");
    assert_eq!(
        order(&p),
        vec![
            "manager-2",
            "manager-3",
            "manager-1",
            "worker-1",
            "worker-2",
            "worker-3"
        ]
    );
    // The weekly window opens on Saturday 2026-01-03 01:00 Paris = 00:00 UTC.
    assert_eq!(p.first_start_ms, NOW + 2 * 24 * 3600 * 1000);
    assert_eq!(p.role_order, vec![Role::Manager, Role::Worker]);
}

#[test]
fn shm_fix_runs_every_worker_at_once_and_managers_one_by_one() {
    let p = plan_example("shm-fix.toml", "swarm-a");
    let waves: Vec<(&str, u32)> = p
        .hosts
        .iter()
        .map(|h| (h.hostname.as_str(), h.wave))
        .collect();
    assert_eq!(
        waves,
        vec![
            ("worker-1", 1),
            ("worker-2", 1),
            ("worker-3", 1),
            ("manager-2", 2),
            ("manager-3", 3),
            ("manager-1", 4)
        ]
    );
    assert!(p.hosts.iter().all(|h| h.steps.len() == 1));
}

#[test]
fn the_scheduled_shm_fix_runs_nightly_on_hosts_with_stacked_mounts_only() {
    let path = format!(
        "{}/../../examples/shm-fix-scheduled.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let spec = CampaignSpec::parse(&text, "shm-fix-scheduled.toml").unwrap();
    let schedule = spec.schedule.clone().unwrap();
    assert_eq!(schedule.timezone, "Europe/Berlin");
    // 01:30 CET on 2026-01-01 is 00:30 UTC.
    assert_eq!(schedule.next_after(NOW), Some(NOW + 30 * 60 * 1000));
    let mut fleet = sample_fleet("swarm-a");
    for h in &mut fleet {
        let stacked = matches!(h.hostname.as_str(), "worker-2" | "manager-3");
        h.facts = Some(pitcrew_scheduler::HostFacts {
            shm_tmpfs_mounts: if stacked { 3 } else { 1 },
            ..Default::default()
        });
    }
    let p = plan(&spec, "c-1", &fleet, NOW).unwrap();
    assert_eq!(order(&p), vec!["worker-2", "manager-3"]);
    assert_eq!(p.left_out_by_facts, 4);
    assert!(
        p.text()
            .contains("Only hosts whose facts hold: shm_tmpfs_mounts > 1")
    );
    assert!(
        p.text().contains("next run 2026-01-01 01:30 CET"),
        "{}",
        p.text()
    );
    // No host with stacked mounts: nothing to run, said as such.
    for h in &mut fleet {
        h.facts = Some(Default::default());
    }
    let err = plan(&spec, "c-1", &fleet, NOW).unwrap_err();
    assert!(
        matches!(err, PlanError::NoFactsMatch { candidates: 6, .. }),
        "{err}"
    );
}

#[test]
fn dcos_agent_update_follows_the_runbook_order() {
    let p = plan_example("dcos-agent-update.toml", "dcos-a");
    assert_eq!(order(&p), vec!["worker-1", "worker-2", "worker-3"]);
    let steps: Vec<String> = p.hosts[0]
        .steps
        .iter()
        .map(|s| format!("{} {}", s.phase, s.description))
        .collect();
    assert_eq!(
        steps,
        vec![
            "before drain agent (SIGUSR1): signal_unit SIGUSR1 to main process of dcos-mesos-slave.service, then wait up to 300 s for it to exit",
            "before stop agent: unit stop dcos-mesos-slave.service (and hold it down)",
            "main daemon-reload: daemon_reload",
            "main remove latest agent metadata pointer: remove_path /var/lib/mesos/slave/meta/slaves/latest",
            "after start agent: unit start dcos-mesos-slave.service",
            "post_gate agent active: health: dcos-mesos-slave.service is active",
        ]
    );
}

#[test]
fn dcos_windows_start_hosts_in_their_own_windows() {
    let p = plan_example("dcos-windows.toml", "dcos-a");
    // The first Sunday window (2026-01-04 02:00 UTC) comes before the named ones.
    assert_eq!(p.first_start_ms, NOW + (3 * 24 + 2) * 3600 * 1000);
    assert_eq!(p.hosts.len(), 3);
    assert_eq!(p.windows.len(), 3);
    assert!(p.windows[0].contains("(hosts worker-1, worker-2)"));
}

#[test]
fn every_step_a_host_policy_refuses_is_listed_and_the_plan_is_still_shown() {
    let text = std::fs::read_to_string(format!(
        "{}/../../examples/swarm-patch.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let spec = CampaignSpec::parse(&text, "swarm-patch.toml").unwrap();
    let mut hosts = sample_fleet("swarm-a");
    for i in [3, 5] {
        if let Some(p) = hosts[i].policy.as_mut() {
            p.allow_patch = false; // worker-2, worker-3
        }
    }
    let p = plan(&spec, "c-1", &hosts, NOW).unwrap();
    assert!(!p.runnable());
    assert_eq!(p.hosts.len(), 6, "the whole plan is still laid out");
    let refused: Vec<String> = p.refusals.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        refused,
        vec![
            "host worker-2 would refuse step \"patch\" (main) for worker-2: policy.allow_patch: patching is not allowed on this host",
            "host worker-3 would refuse step \"patch\" (main) for worker-3: policy.allow_patch: patching is not allowed on this host",
        ]
    );
    let text = p.text();
    assert!(
        text.contains("Not runnable as it is: 2 step(s) would be refused"),
        "{text}"
    );
    // Creating it is refused, naming every refusal at once.
    let err = p.refused().unwrap_err();
    assert_eq!(err.kind(), "policy_refusal");
    assert!(
        err.to_string()
            .starts_with("2 steps would be refused: host worker-2")
    );
    assert!(err.to_string().contains("worker-3"));
}

#[test]
fn the_plan_predicts_refusals_of_the_rules_only_the_agent_s_full_policy_carries() {
    let text = std::fs::read_to_string(format!(
        "{}/../../examples/dcos-agent-update.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let spec = CampaignSpec::parse(&text, "dcos-agent-update.toml").unwrap();
    let mut hosts = sample_fleet("dcos-a");
    for h in &mut hosts {
        if let Some(p) = h.policy.as_mut() {
            p.units = vec!["*".into()];
            p.signals = vec!["SIGTERM".into()];
        }
    }
    let p = plan(&spec, "c-1", &hosts, NOW).unwrap();
    let err = p.refused().unwrap_err().to_string();
    assert!(err.contains("policy.signals"), "{err}");
}

#[test]
fn the_planner_refuses_what_would_go_wrong() {
    let text = std::fs::read_to_string(format!(
        "{}/../../examples/swarm-patch.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let spec = CampaignSpec::parse(&text, "swarm-patch.toml").unwrap();
    // Nothing selected.
    assert_eq!(
        plan(&spec, "c", &sample_fleet("other"), NOW).unwrap_err(),
        PlanError::NothingSelected
    );
    // A manager disconnected now is no error: the plan shows the quorum guard it trips on
    // the first managers' wave (see tests/plan_holders.rs).
    let mut hosts = sample_fleet("swarm-a");
    hosts[2].connected = false; // manager-2
    let p = plan(&spec, "c", &hosts, NOW).unwrap();
    assert!(
        p.blockers.iter().any(|b| b.kind == "quorum_guard"),
        "{:?}",
        p.blockers
    );
    // An `on` selector with nothing to match: a single manager cannot be drained by another.
    let hosts: Vec<HostView> = sample_fleet("swarm-a")
        .into_iter()
        .filter(|h| h.id == "m1" || h.role == Role::Worker)
        .collect();
    let only_managers = CampaignSpec::parse(
        &text.replace("roles = [\"worker\", \"manager\"]", "roles = [\"manager\"]"),
        "swarm-patch.toml",
    )
    .unwrap();
    let err = plan(&only_managers, "c", &hosts, NOW).unwrap_err();
    assert!(matches!(err, PlanError::NoTarget { .. }), "{err}");
    // A host without a reported policy is a warning, not an error.
    let mut hosts = sample_fleet("swarm-a");
    hosts[1].policy = None;
    let p = plan(&spec, "c", &hosts, NOW).unwrap();
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("worker-1 reported no policy"))
    );
}
