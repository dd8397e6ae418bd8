//! The campaign invariants (ARCHITECTURE.md) that can be read off a state (fleet + persisted
//! runs), as one checker shared by the model checker, the property tests and (as a debug
//! assertion after every turn) the coordinator's engine. Invariants about transitions (quorum guard at the moment of taking a manager,
//! windows at the moment of starting, at-most-once) are checked where those happen.

use std::collections::BTreeMap;

use crate::fleet::{Fleet, Role};
use crate::run::{CampaignRun, HostState};

/// Returns one sentence per broken invariant; empty when all hold.
pub fn check(fleet: &Fleet, campaigns: &[CampaignRun]) -> Vec<String> {
    let mut broken = Vec::new();

    // Who holds each host; a host held twice is already a broken slot.
    let mut holders: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for id in fleet.manual.keys() {
        holders
            .entry(id.as_str())
            .or_default()
            .push("manual".to_owned());
    }
    for run in campaigns {
        for h in &run.hosts {
            if h.state.holds_slot() {
                holders
                    .entry(h.host_id.as_str())
                    .or_default()
                    .push(run.id.clone());
            }
            if h.state.holds_slot() != h.slot.is_some() {
                broken.push(format!(
                    "campaign {}: host {} is {} but its slot is {:?}",
                    run.id, h.hostname, h.state, h.slot
                ));
            }
        }
    }
    // An operator's `pitcrew do` holds its host too, unless it runs inside manual maintenance
    // (the operator's own hold) or was forced over a holder (an audited override).
    for op in fleet.operator_actions.values() {
        if op.forced || fleet.manual.contains_key(&op.host) {
            continue;
        }
        // Several actions on one host are one hold: the host is out of service once.
        let by = holders.entry(op.host.as_str()).or_default();
        if !by.iter().any(|b| b == "operator") {
            by.push("operator".to_owned());
        }
    }
    for (host, by) in &holders {
        if by.len() > 1 {
            broken.push(format!(
                "host {host} is held by {} at once",
                by.join(" and ")
            ));
        }
    }

    // 1. One manager per cluster out of Running.
    let mut managers_out: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for host in holders.keys() {
        let role_cluster = fleet
            .hosts
            .get(*host)
            .map(|v| (v.role, v.cluster().to_owned()))
            .or_else(|| {
                campaigns
                    .iter()
                    .flat_map(|r| r.hosts.iter())
                    .find(|h| h.host_id == *host)
                    .map(|h| (h.role, h.cluster.clone()))
            });
        if let Some((Role::Manager, cluster)) = role_cluster {
            managers_out.entry(cluster).or_default().push(host);
        }
    }
    for (cluster, hosts) in managers_out {
        if hosts.len() > 1 {
            broken.push(format!(
                "invariant 1: managers {} of cluster {cluster:?} are out of service at once",
                hosts.join(", ")
            ));
        }
    }

    for run in campaigns {
        // 2. Worker concurrency.
        let workers = run.hosts.iter().filter(|h| h.role == Role::Worker).count();
        let slots = run.spec.worker_concurrency.slots(workers);
        let out = run
            .hosts
            .iter()
            .filter(|h| h.role == Role::Worker && h.state.holds_slot())
            .count();
        if out > slots {
            broken.push(format!(
                "invariant 2: campaign {} has {out} workers out of service, concurrency {slots}",
                run.id
            ));
        }
        // 3. Role order: a host of a later role started only if every host of the earlier
        //    roles is done or skipped.
        for (i, role) in run.spec.order.iter().enumerate() {
            let started = run.hosts.iter().any(|h| {
                h.role == *role && !matches!(h.state, HostState::Pending | HostState::Skipped)
            });
            if !started {
                continue;
            }
            for earlier in &run.spec.order[..i] {
                if let Some(h) = run
                    .hosts
                    .iter()
                    .find(|h| h.role == *earlier && !h.state.finished())
                {
                    broken.push(format!(
                        "invariant 3: campaign {}: a {role} started while {earlier} {} is {}",
                        run.id, h.hostname, h.state
                    ));
                }
            }
        }
    }
    broken
}
