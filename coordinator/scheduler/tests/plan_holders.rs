//! The planner from the fleet as it is: hosts held by other campaigns or manual maintenance,
//! disconnected agents (and the quorum guard they trip), windows closed at the planned start and
//! `on` steps without a usable target each show on the wave they delay, and `--at` plans a later
//! start with the current holders assumed. Ends with a property test over random fleets, holders
//! and disconnections.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use pitcrew_scheduler::{
    CampaignRun, CampaignSpec, Concurrency, Fleet, HeldBy, HeldHost, Holders, HostView,
    ManualPhase, ManualState, Plan, PlanStart, Role, plan_from,
};
use proptest::prelude::*;

/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600_000;
const HOUR: i64 = 3_600_000;

const PATCH_ONE_AT_A_TIME: &str =
    "name = \"patch\"\n[concurrency]\nworker = 1\n[[steps]]\naction = \"patch\"\n";

fn held(h: &HostView, by: HeldBy) -> (String, HeldHost) {
    (
        h.id.clone(),
        HeldHost {
            host_id: h.id.clone(),
            hostname: h.hostname.clone(),
            role: h.role,
            cluster: h.cluster().to_owned(),
            by,
        },
    )
}

fn manual(operator: &str) -> HeldBy {
    HeldBy::Manual {
        operator: operator.into(),
    }
}

fn hosts_of(fleet: &Fleet) -> Vec<HostView> {
    fleet.hosts.values().cloned().collect()
}

fn plan_now(text: &str, hosts: &[HostView], holders: &Holders) -> Plan {
    plan_from(&spec(text), "c-plan", hosts, holders, PlanStart::Now(NOW))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn waves(p: &Plan) -> Vec<(&str, u32)> {
    p.hosts
        .iter()
        .map(|h| (h.hostname.as_str(), h.wave))
        .collect()
}

#[test]
fn a_host_in_manual_maintenance_delays_its_own_wave_naming_the_operator() {
    let f = fleet(3, 0);
    let holders = Holders {
        hosts: [held(&f.hosts["w2"], manual("alice"))].into(),
    };
    let p = plan_now(PATCH_ONE_AT_A_TIME, &hosts_of(&f), &holders);
    // The held worker takes the campaign's one worker slot: nothing starts until it is back.
    assert_eq!(waves(&p), vec![("w1", 1), ("w2", 2), ("w3", 3)]);
    let shown: Vec<(u32, &str, &str, &str)> = p
        .blockers
        .iter()
        .map(|b| {
            (
                b.wave,
                b.hostname.as_str(),
                b.kind.as_str(),
                b.held_by.as_str(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (1, "w1", "worker_pool", ""),
            (2, "w2", "held", "manual maintenance by alice"),
        ]
    );
    let text = p.text();
    assert!(
        text.contains(
            "Wave 1\n  waits: every worker slot of the campaign is taken while w2 (manual maintenance by alice) is held; w1 starts once it is released\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "Wave 2\n  waits: w2 is held by manual maintenance by alice; it starts once that ends\n"
        ),
        "{text}"
    );
    assert!(p.runnable());
}

#[test]
fn a_manager_slot_held_by_another_campaign_delays_the_first_managers_wave() {
    let f = fleet(0, 3);
    let holders = Holders {
        hosts: [held(
            &f.hosts["m3"],
            HeldBy::Campaign {
                id: "c-other".into(),
                name: "kernel".into(),
            },
        )]
        .into(),
    };
    let text = "name = \"two\"\n[select]\nroles = [\"manager\"]\nhosts = [\"m1\", \"m2\"]\n[[steps]]\naction = \"patch\"\n";
    let p = plan_now(text, &hosts_of(&f), &holders);
    assert_eq!(waves(&p), vec![("m1", 1), ("m2", 2)]);
    assert_eq!(p.blockers.len(), 1, "{:?}", p.blockers);
    let b = &p.blockers[0];
    assert_eq!((b.wave, b.kind.as_str()), (1, "manager_slot"));
    assert_eq!(b.held_by, "campaign c-other (\"kernel\")");
    assert_eq!(
        b.text,
        "the manager slot of cluster \"swarm-a\" is held by m3 (campaign c-other (\"kernel\")); m1 starts once it is released"
    );
}

#[test]
fn a_held_manager_of_the_campaign_is_named_as_held_on_its_own_wave() {
    let f = fleet(0, 2);
    let holders = Holders {
        hosts: [held(&f.hosts["m1"], manual("bob"))].into(),
    };
    let p = plan_now(PATCH_ONE_AT_A_TIME, &hosts_of(&f), &holders);
    assert_eq!(waves(&p), vec![("m1", 1), ("m2", 2)]);
    let kinds: Vec<(u32, &str, &str)> = p
        .blockers
        .iter()
        .map(|b| (b.wave, b.hostname.as_str(), b.kind.as_str()))
        .collect();
    assert!(kinds.contains(&(1, "m1", "held")), "{kinds:?}");
}

#[test]
fn a_disconnected_manager_shows_the_quorum_guard_that_stops_the_managers_phase() {
    let mut f = fleet(1, 3);
    f.hosts.get_mut("m2").unwrap().connected = false;
    f.hosts.get_mut("m2").unwrap().healthy = false;
    let p = plan_now(PATCH_ONE_AT_A_TIME, &hosts_of(&f), &Holders::default());
    assert_eq!(waves(&p), vec![("w1", 1), ("m1", 2), ("m2", 3), ("m3", 4)]);
    let shown: Vec<(u32, &str, &str)> = p
        .blockers
        .iter()
        .map(|b| (b.wave, b.kind.as_str(), b.text.as_str()))
        .collect();
    assert_eq!(
        shown,
        vec![
            (
                2,
                "quorum_guard",
                "quorum guard: manager m2 is disconnected now, so no other manager of cluster \"swarm-a\" is taken until it is back"
            ),
            (
                3,
                "disconnected",
                "m2 is disconnected now; it starts once its agent reconnects"
            ),
        ]
    );
    assert!(
        p.text()
            .contains("Wave 2\n  waits: quorum guard: manager m2")
    );
}

#[test]
fn a_window_closed_at_the_planned_start_shows_when_it_opens_and_at_plans_a_later_start() {
    let text = "name = \"patch\"\n[concurrency]\nworker = 2\n[[steps]]\naction = \"patch\"\n[[window]]\nstart = \"2026-01-01T02:00:00Z\"\nduration = \"1h\"\n";
    let f = fleet(2, 0);
    let holders = Holders {
        hosts: [held(&f.hosts["w2"], manual("alice"))].into(),
    };
    let p = plan_now(text, &hosts_of(&f), &holders);
    assert_eq!(p.first_start_ms, NOW + 2 * HOUR);
    let b = &p.blockers[0];
    assert_eq!((b.wave, b.kind.as_str()), (1, "window_closed"));
    assert_eq!(
        b.text,
        "no window is open at the planned start (2026-01-01T00:00:00Z); w1 starts when one opens at 2026-01-01T02:00:00Z"
    );
    assert!(
        p.text()
            .contains("Planned start: now (2026-01-01T00:00:00Z), from the fleet as it is")
    );

    // Planned to start inside the window: no window blocker; the holder is still assumed.
    let later = plan_from(
        &spec(text),
        "c-plan",
        &hosts_of(&f),
        &holders,
        PlanStart::At(NOW + 2 * HOUR + 60_000),
    )
    .unwrap();
    assert_eq!(later.first_start_ms, NOW + 2 * HOUR + 60_000);
    let kinds: Vec<&str> = later.blockers.iter().map(|b| b.kind.as_str()).collect();
    assert_eq!(kinds, vec!["held"]);
    let shown = later.text();
    assert!(
        shown.contains("Planned start: 2026-01-01T02:01:00Z (as asked); hosts held and agents disconnected now are assumed still so then"),
        "{shown}"
    );
}

#[test]
fn an_on_step_whose_only_targets_are_held_or_disconnected_says_so_on_its_wave() {
    let mut f = fleet(1, 2);
    f.hosts.get_mut("m1").unwrap().connected = false;
    let holders = Holders {
        hosts: [held(&f.hosts["m2"], manual("alice"))].into(),
    };
    let text = "name = \"drained\"\n[select]\nroles = [\"worker\"]\n[[before]]\nname = \"drain\"\naction = \"exec\"\non = \"role:manager\"\nargv = [\"/bin/true\"]\n[[steps]]\naction = \"patch\"\n";
    let p = plan_now(text, &hosts_of(&f), &holders);
    assert_eq!(waves(&p), vec![("w1", 1)]);
    assert_eq!(p.blockers.len(), 1, "{:?}", p.blockers);
    assert_eq!(p.blockers[0].kind, "no_target");
    assert_eq!(
        p.blockers[0].text,
        "step \"drain\" of w1 waits: no connected, healthy, free host matches role:manager in cluster \"swarm-a\" now (m1, m2 held or disconnected)"
    );
}

#[test]
fn every_refusal_is_listed_and_holders_still_show() {
    let mut f = fleet(3, 0);
    for id in ["w1", "w3"] {
        if let Some(p) = f.hosts.get_mut(id).unwrap().policy.as_mut() {
            p.allow_patch = false;
        }
    }
    let holders = Holders {
        hosts: [held(&f.hosts["w2"], manual("alice"))].into(),
    };
    let p = plan_now(PATCH_ONE_AT_A_TIME, &hosts_of(&f), &holders);
    assert!(!p.runnable());
    let refused: Vec<&str> = p.refusals.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(refused, vec!["w1", "w3"]);
    assert!(p.blockers.iter().any(|b| b.kind == "held"));
    assert!(p.refused().is_err());
}

#[test]
fn holders_are_read_from_manual_maintenance_and_running_campaigns_only() {
    let mut f = fleet(3, 0);
    f.manual.insert(
        "w1".into(),
        ManualState {
            phase: ManualPhase::Maintenance,
            since_ms: 0,
            by: "alice".into(),
        },
    );
    let mut runs = vec![run(
        "c-run",
        "name = \"kernel\"\n[select]\nhosts = [\"w2\"]\n[[steps]]\naction = \"patch\"\n",
        &f,
    )];
    tick(&f, &mut runs, 0);
    let holders = Holders::from_state(&f, runs.iter());
    let by: BTreeMap<&str, String> = holders
        .hosts
        .values()
        .map(|h| (h.hostname.as_str(), h.by.to_string()))
        .collect();
    assert_eq!(
        by,
        BTreeMap::from([
            ("w1", "manual maintenance by alice".to_owned()),
            ("w2", "campaign c-run (\"kernel\")".to_owned()),
        ])
    );
    // A finished campaign holds nothing.
    let mut done: CampaignRun = runs[0].clone();
    done.state = pitcrew_scheduler::CampaignState::Completed;
    assert_eq!(Holders::from_state(&f, [&done]).hosts.len(), 1);
}

/// A random fleet with some hosts held and some disconnected.
#[derive(Debug, Clone)]
struct Case {
    managers_first: bool,
    concurrency: u32,
    /// (role, cluster, held: 0 no / 1 manual / 2 campaign, disconnected)
    hosts: Vec<(Role, String, u8, bool)>,
}

fn case() -> impl Strategy<Value = Case> {
    let role = prop_oneof![Just(Role::Worker), Just(Role::Manager)];
    let cluster = prop_oneof![Just("a".to_owned()), Just("b".to_owned())];
    let host = (role, cluster, 0u8..3, prop::bool::weighted(0.25));
    (any::<bool>(), 1u32..4, prop::collection::vec(host, 1..9)).prop_map(
        |(managers_first, concurrency, hosts)| Case {
            managers_first,
            concurrency,
            hosts,
        },
    )
}

impl Case {
    fn spec(&self) -> CampaignSpec {
        let order = if self.managers_first {
            "order = [\"manager\", \"worker\"]\n"
        } else {
            ""
        };
        spec(&format!(
            "name = \"random\"\n{order}[concurrency]\nworker = {}\n[[steps]]\naction = \"patch\"\n",
            self.concurrency
        ))
    }

    fn fleet(&self) -> (Vec<HostView>, Holders) {
        let mut hosts = Vec::new();
        let mut holders = Holders::default();
        // At most one held manager per cluster, as the invariants keep it.
        let mut manager_held: BTreeSet<String> = BTreeSet::new();
        for (i, (role, cluster, hold, disconnected)) in self.hosts.iter().enumerate() {
            let mut h = host(&format!("h{i}"), *role, cluster);
            h.connected = !disconnected;
            h.healthy = !disconnected;
            let free_slot = *role == Role::Worker || !manager_held.contains(cluster);
            if *hold > 0 && free_slot {
                if *role == Role::Manager {
                    manager_held.insert(cluster.clone());
                }
                let by = if *hold == 1 {
                    manual("alice")
                } else {
                    HeldBy::Campaign {
                        id: "c-other".into(),
                        name: "other".into(),
                    }
                };
                let (id, held) = held(&h, by);
                holders.hosts.insert(id, held);
            }
            hosts.push(h);
        }
        (hosts, holders)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn plans_from_any_current_state_lay_out_every_host_and_name_what_delays_it(case in case()) {
        let spec = case.spec();
        let (hosts, holders) = case.fleet();
        let p = plan_from(&spec, "c-prop", &hosts, &holders, PlanStart::Now(NOW))
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;

        // Every host exactly once, whatever is held or disconnected.
        let planned: Vec<&str> = p.hosts.iter().map(|h| h.host_id.as_str()).collect();
        let unique: BTreeSet<&str> = planned.iter().copied().collect();
        prop_assert_eq!(planned.len(), unique.len());
        prop_assert_eq!(unique.len(), hosts.len());

        // Role order, worker concurrency and one manager per cluster per wave still hold.
        let (first, second) = if case.managers_first {
            (Role::Manager, Role::Worker)
        } else {
            (Role::Worker, Role::Manager)
        };
        let last_first = p.hosts.iter().filter(|h| h.role == first).map(|h| h.wave).max();
        let first_second = p.hosts.iter().filter(|h| h.role == second).map(|h| h.wave).min();
        if let (Some(a), Some(b)) = (last_first, first_second) {
            prop_assert!(a < b, "role order broken");
        }
        let mut workers: BTreeMap<u32, usize> = BTreeMap::new();
        let mut managers: BTreeMap<(u32, String), usize> = BTreeMap::new();
        for h in &p.hosts {
            match h.role {
                Role::Worker => *workers.entry(h.wave).or_default() += 1,
                Role::Manager => *managers.entry((h.wave, h.cluster.clone())).or_default() += 1,
            }
        }
        let slots = Concurrency::Count(case.concurrency).slots(workers.values().sum());
        prop_assert!(workers.values().all(|n| *n <= slots));
        prop_assert!(managers.values().all(|n| *n == 1));

        // Each host held now is named as held, with its holder, on its own wave.
        let wave_of: BTreeMap<&str, u32> =
            p.hosts.iter().map(|h| (h.host_id.as_str(), h.wave)).collect();
        for h in holders.hosts.values() {
            let b = p.blockers.iter().find(|b| b.kind == "held" && b.host_id == h.host_id);
            prop_assert!(b.is_some(), "{} held but not shown: {:?}", h.hostname, p.blockers);
            let b = b.unwrap();
            prop_assert_eq!(b.wave, wave_of[h.host_id.as_str()]);
            prop_assert_eq!(&b.held_by, &h.by.to_string());
        }
        // Each host disconnected now is named no later than its own wave.
        for h in hosts.iter().filter(|h| !h.connected) {
            let named = p.blockers.iter().any(|b| {
                b.wave <= wave_of[h.id.as_str()]
                    && (b.host_id == h.id || b.text.contains(&format!("{} ", h.hostname)))
            });
            prop_assert!(named, "{} disconnected but not shown: {:?}", h.hostname, p.blockers);
        }
        // Nothing held, nothing disconnected, no window: nothing to show.
        if holders.is_empty() && hosts.iter().all(|h| h.connected) {
            prop_assert!(p.blockers.is_empty(), "{:?}", p.blockers);
        }
    }
}
