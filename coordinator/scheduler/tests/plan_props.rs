//! Property tests of the planner: random campaign files (generated as TOML text, the way an
//! operator writes them) over random fleets. Whatever the input, a plan keeps the role order,
//! the worker concurrency, one manager per cluster at a time, the leader last, and lists every
//! selected host exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use pitcrew_scheduler::{CampaignSpec, Concurrency, HostView, PlanError, Role, plan};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    roles: Vec<Role>,
    managers_first: bool,
    concurrency: Concurrency,
    cluster_filter: Option<String>,
    steps: Vec<&'static str>,
    dwell: bool,
    hosts: Vec<(Role, String, bool)>,
}

impl Case {
    fn toml(&self) -> String {
        let mut t = String::from("name = \"random\"\n");
        if self.managers_first {
            t.push_str("order = [\"manager\", \"worker\"]\n");
        }
        if self.dwell {
            t.push_str("dwell = \"1m\"\n");
        }
        let roles: Vec<String> = self.roles.iter().map(|r| format!("\"{r}\"")).collect();
        t.push_str(&format!("[select]\nroles = [{}]\n", roles.join(", ")));
        if let Some(c) = &self.cluster_filter {
            t.push_str(&format!("labels = {{ cluster = \"{c}\" }}\n"));
        }
        match self.concurrency {
            Concurrency::Count(n) => t.push_str(&format!("[concurrency]\nworker = {n}\n")),
            Concurrency::Percent(p) => t.push_str(&format!("[concurrency]\nworker = \"{p}%\"\n")),
        }
        for s in &self.steps {
            t.push_str("[[steps]]\n");
            t.push_str(s);
            t.push('\n');
        }
        t
    }

    fn fleet(&self) -> Vec<HostView> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, (role, cluster, leader))| {
                let mut h = host(&format!("h{i}"), *role, cluster);
                if *leader {
                    h.labels.insert("leader".into(), "true".into());
                }
                h
            })
            .collect()
    }
}

const STEPS: &[&str] = &[
    "action = \"patch\"",
    "action = \"reboot\"\nonly_if_required = true",
    "action = \"dedupe_shm\"",
    "action = \"exec\"\nargv = [\"/bin/true\", \"{{host.hostname}}\", \"{{campaign.id}}\"]",
    "action = \"health\"\nunit_active = \"docker.service\"",
    "action = \"unit\"\nunit = \"docker.service\"\noperation = \"restart\"",
];

fn case() -> impl Strategy<Value = Case> {
    let role = prop_oneof![Just(Role::Worker), Just(Role::Manager)];
    let cluster = prop_oneof![
        Just(String::new()),
        Just("a".to_owned()),
        Just("b".to_owned())
    ];
    let hosts = prop::collection::vec((role, cluster, any::<bool>()), 1..9);
    let roles = prop_oneof![
        Just(vec![Role::Worker, Role::Manager]),
        Just(vec![Role::Worker]),
        Just(vec![Role::Manager]),
    ];
    let concurrency = prop_oneof![
        (1u32..4).prop_map(Concurrency::Count),
        (1u32..=100).prop_map(Concurrency::Percent),
    ];
    let filter = prop_oneof![Just(None), Just(Some("a".to_owned()))];
    let steps = prop::collection::vec(prop::sample::select(STEPS), 1..4);
    (
        roles,
        any::<bool>(),
        concurrency,
        filter,
        steps,
        any::<bool>(),
        hosts,
    )
        .prop_map(
            |(roles, managers_first, concurrency, cluster_filter, steps, dwell, hosts)| Case {
                roles,
                managers_first,
                concurrency,
                cluster_filter,
                steps,
                dwell,
                // Only managers carry the leader label.
                hosts: hosts
                    .into_iter()
                    .map(|(r, c, l)| (r, c, l && r == Role::Manager))
                    .collect(),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn plans_keep_order_concurrency_one_manager_and_leader_last(case in case()) {
        let text = case.toml();
        let spec = CampaignSpec::parse(&text, "random.toml")
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let fleet = case.fleet();
        let selected: BTreeSet<String> = fleet
            .iter()
            .filter(|h| spec.select.matches(h))
            .map(|h| h.id.clone())
            .collect();
        let result = plan(&spec, "c-prop", &fleet, 0);
        if selected.is_empty() {
            prop_assert_eq!(result.unwrap_err(), PlanError::NothingSelected);
            return Ok(());
        }
        let p = result.map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;

        // Every selected host exactly once.
        let planned: Vec<String> = p.hosts.iter().map(|h| h.host_id.clone()).collect();
        let unique: BTreeSet<String> = planned.iter().cloned().collect();
        prop_assert_eq!(planned.len(), unique.len(), "a host appears twice");
        prop_assert_eq!(&unique, &selected);

        // Role order: every host of the earlier role is in an earlier wave.
        let (first, second) = if case.managers_first {
            (Role::Manager, Role::Worker)
        } else {
            (Role::Worker, Role::Manager)
        };
        let last_first = p.hosts.iter().filter(|h| h.role == first).map(|h| h.wave).max();
        let first_second = p.hosts.iter().filter(|h| h.role == second).map(|h| h.wave).min();
        if let (Some(a), Some(b)) = (last_first, first_second) {
            prop_assert!(a < b, "role order broken: {} wave {} vs {} wave {}", first, a, second, b);
        }

        // Worker concurrency and one manager per cluster, per wave.
        let workers = p.hosts.iter().filter(|h| h.role == Role::Worker).count();
        let slots = spec.worker_concurrency.slots(workers);
        let mut per_wave: BTreeMap<u32, usize> = BTreeMap::new();
        let mut managers: BTreeMap<(u32, String), usize> = BTreeMap::new();
        for h in &p.hosts {
            match h.role {
                Role::Worker => *per_wave.entry(h.wave).or_default() += 1,
                Role::Manager => *managers.entry((h.wave, h.cluster.clone())).or_default() += 1,
            }
        }
        prop_assert!(per_wave.values().all(|n| *n <= slots), "worker concurrency {}: {:?}", slots, per_wave);
        prop_assert!(managers.values().all(|n| *n == 1), "two managers of a cluster together: {:?}", managers);

        // Leader last among the managers of its cluster.
        let mut clusters: BTreeMap<String, Vec<(u32, bool)>> = BTreeMap::new();
        for h in p.hosts.iter().filter(|h| h.role == Role::Manager) {
            let leader = fleet.iter().any(|f| f.id == h.host_id && f.labels.get("leader").is_some_and(|v| v == "true"));
            clusters.entry(h.cluster.clone()).or_default().push((h.wave, leader));
        }
        for (cluster, ms) in clusters {
            let last_non_leader = ms.iter().filter(|(_, l)| !l).map(|(w, _)| *w).max();
            let first_leader = ms.iter().filter(|(_, l)| *l).map(|(w, _)| *w).min();
            if let (Some(a), Some(b)) = (last_non_leader, first_leader) {
                prop_assert!(a < b, "leader of cluster {:?} not last", cluster);
            }
        }

        // Every planned host has every step of its role, on itself (no `on` here).
        for h in &p.hosts {
            prop_assert_eq!(h.steps.len(), case.steps.len());
            prop_assert!(h.steps.iter().all(|s| s.host == h.hostname));
        }
    }
}
