//! Small fleets and a driver loop shared by the scheduler's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use pitcrew_proto::policy::Policy;
use pitcrew_scheduler::{
    CampaignRun, CampaignSpec, Decision, Decisions, Event, Fleet, HostView, Outcome, Role, apply,
    decide,
};

/// A policy that allows everything the example campaigns ask for.
pub fn permissive() -> Policy {
    let exec = [
        &["/usr/local/bin/ucp-backup"][..],
        &["/usr/local/bin/swarm-node", "update"],
        &["/usr/local/bin/lab-health"],
        &["/usr/local/bin/lb-pool"],
        &["/usr/bin/docker", "pull"],
        &["/usr/bin/docker", "run", "--rm", "--name", "ucp"],
        &["/bin/true"],
    ];
    Policy {
        units: vec!["*.service".into()],
        remove_paths: vec!["/var/lib/mesos".into()],
        allow_patch: true,
        allow_reboot: true,
        allow_dedupe_shm: true,
        exec: exec
            .iter()
            .map(|p| p.iter().map(|s| (*s).to_owned()).collect())
            .collect(),
    }
}

pub fn host(id: &str, role: Role, cluster: &str) -> HostView {
    let mut labels = BTreeMap::new();
    if !cluster.is_empty() {
        labels.insert("cluster".to_owned(), cluster.to_owned());
    }
    HostView {
        id: id.to_owned(),
        hostname: id.to_owned(),
        role,
        labels,
        connected: true,
        healthy: true,
        boot_id: format!("{id}-boot-1"),
        policy: Some(permissive().into()),
        facts: None,
    }
}

/// `workers` workers w1.. and `managers` managers m1.. in cluster "swarm-a".
pub fn fleet(workers: usize, managers: usize) -> Fleet {
    let mut hosts = Vec::new();
    for i in 1..=workers {
        hosts.push(host(&format!("w{i}"), Role::Worker, "swarm-a"));
    }
    for i in 1..=managers {
        hosts.push(host(&format!("m{i}"), Role::Manager, "swarm-a"));
    }
    Fleet::from_hosts(hosts)
}

pub fn spec(text: &str) -> CampaignSpec {
    match CampaignSpec::parse(text, "test.toml") {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

pub fn run(id: &str, text: &str, fleet: &Fleet) -> CampaignRun {
    let hosts: Vec<HostView> = fleet.hosts.values().cloned().collect();
    match CampaignRun::new(id, &spec(text), &hosts, 0) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

/// Decides and applies every decision (as the runtime does), returning what was decided.
pub fn tick(fleet: &Fleet, runs: &mut [CampaignRun], now: i64) -> Decisions {
    let d = decide(fleet, &*runs, now);
    for decision in &d.decisions {
        let run = runs
            .iter_mut()
            .find(|r| r.id == decision.campaign())
            .expect("decision for a known campaign");
        apply(run, fleet, &Event::Decision(decision.clone()), now).expect("decision applies");
    }
    d
}

/// Hosts started by a set of decisions.
pub fn started(d: &Decisions) -> Vec<String> {
    d.decisions
        .iter()
        .filter_map(|x| match x {
            Decision::StartHost { host, .. } => Some(host.clone()),
            _ => None,
        })
        .collect()
}

/// Dispatches in a set of decisions.
pub fn dispatched(d: &Decisions) -> Vec<pitcrew_scheduler::Dispatch> {
    d.decisions
        .iter()
        .filter_map(|x| match x {
            Decision::Dispatch(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

/// Feeds a result for `action_id` to whichever run waits on it.
pub fn finish(
    fleet: &Fleet,
    runs: &mut [CampaignRun],
    action_id: &str,
    outcome: Outcome,
    boot_id: Option<&str>,
    now: i64,
) {
    let event = Event::ActionFinished {
        action_id: action_id.to_owned(),
        outcome,
        message: String::new(),
        boot_id: boot_id.map(str::to_owned),
    };
    let run = runs
        .iter_mut()
        .find(|r| {
            r.hosts.iter().any(|h| {
                h.in_flight
                    .as_ref()
                    .is_some_and(|f| f.action_id == action_id)
            })
        })
        .expect("some run waits on the action");
    apply(run, fleet, &event, now).expect("result applies");
}

/// Runs everything to the end with every action succeeding; returns the order hosts started.
pub fn run_to_end(fleet: &mut Fleet, runs: &mut [CampaignRun], mut now: i64) -> Vec<String> {
    let mut order = Vec::new();
    for _ in 0..10_000 {
        let d = tick(fleet, runs, now);
        order.extend(started(&d));
        for x in dispatched(&d) {
            let boot = if x.action.is_reboot() {
                let v = fleet.hosts.get_mut(&x.host).expect("host");
                v.boot_id = format!("{}+", v.boot_id);
                Some(v.boot_id.clone())
            } else {
                None
            };
            finish(
                fleet,
                runs,
                &x.action_id,
                Outcome::Succeeded,
                boot.as_deref(),
                now,
            );
        }
        if runs.iter().all(|r| !r.is_active()) {
            return order;
        }
        if d.decisions.is_empty() {
            match d.wake_at_ms {
                Some(w) => now = w,
                None => panic!("stuck: {:?}", d.blockers),
            }
        }
    }
    panic!("did not finish");
}
