//! Operators' disruptive actions (`pitcrew do`) against the slots: what `admit_action` refuses
//! and names, what `--force` overrides, and that an admitted action keeps campaigns off its host
//! and off the manager slot until it finishes.

mod common;

use common::*;
use pitcrew_scheduler::{
    Blocker, Holder, ManualPhase, ManualState, OperatorAction, OperatorRefusal, admit_action,
    invariants, manual_enable,
};

const PATCH: &str = r#"
name = "patch"
order = ["manager", "worker"]
[[steps]]
action = "patch"
"#;

fn operator_action(host: &str) -> OperatorAction {
    OperatorAction {
        host: host.into(),
        by: "olga".into(),
        forced: false,
    }
}

#[test]
fn a_host_held_by_a_campaign_is_refused_naming_the_campaign_unless_forced() {
    let f = fleet(1, 3);
    let mut runs = vec![run("c1", PATCH, &f)];
    let d = tick(&f, &mut runs, 0);
    assert_eq!(started(&d), vec!["m1"]);
    let refused = admit_action(&f, &runs, "m1", false).unwrap_err();
    assert_eq!(
        refused,
        OperatorRefusal::Held {
            host: "m1".into(),
            by: Holder::Campaign("c1".into())
        }
    );
    assert!(refused.to_string().contains("campaign c1"), "{refused}");
    assert!(refused.to_string().contains("--force"), "{refused}");
    // Another manager of the cluster: the one manager slot is the campaign's.
    let refused = admit_action(&f, &runs, "m2", false).unwrap_err();
    assert!(
        refused.to_string().contains("m1 (campaign c1)"),
        "{refused}"
    );
    // A worker outside any hold is free to act on.
    assert!(admit_action(&f, &runs, "w1", false).is_ok());
    // Forced: admitted, saying what it overrode.
    let forced = admit_action(&f, &runs, "m2", true).unwrap();
    assert_eq!(forced.overrode.len(), 1);
    assert_eq!(forced.overrode[0].kind(), "manager_slot_held");
}

#[test]
fn manual_maintenance_is_the_operators_hold_and_admits_actions_on_its_host() {
    let mut f = fleet(0, 3);
    let runs = Vec::new();
    let (id, state) = manual_enable(&f, &runs, "m2", "olga", 0).unwrap();
    f.manual.insert(
        id,
        ManualState {
            phase: ManualPhase::Maintenance,
            ..state
        },
    );
    let admitted = admit_action(&f, &runs, "m2", false).unwrap();
    assert_eq!(admitted.under_manual.as_deref(), Some("olga"));
    assert!(admitted.overrode.is_empty());
    let refused = admit_action(&f, &runs, "m1", false).unwrap_err();
    assert_eq!(
        refused,
        OperatorRefusal::ManagerSlotHeld {
            cluster: "swarm-a".into(),
            holder: "m2 (manual maintenance)".into()
        }
    );
}

#[test]
fn an_admitted_action_holds_its_host_and_the_manager_slot_until_it_finishes() {
    let mut f = fleet(1, 3);
    assert!(admit_action(&f, &[], "m2", false).is_ok());
    f.operator_actions
        .insert("do-1".into(), operator_action("m2"));
    // A campaign created meanwhile takes neither m2 nor another manager of its cluster.
    let mut runs = vec![run("c1", PATCH, &f)];
    let d = tick(&f, &mut runs, 0);
    assert!(started(&d).is_empty(), "{:?}", started(&d));
    assert_eq!(
        d.blocker_for("c1", "m2"),
        Some(&Blocker::HeldElsewhere {
            by: Holder::Operator {
                by: "olga".into(),
                action: "do-1".into()
            }
        })
    );
    let blocker = d.blocker_for("c1", "m1").map(|b| b.to_string());
    assert!(
        blocker
            .as_deref()
            .is_some_and(|b| b.contains("m2 (operator olga's pitcrew do (action do-1))")),
        "{blocker:?}"
    );
    // Manual maintenance of another manager and another operator's action are refused too.
    let manual = manual_enable(&f, &runs, "m1", "nina", 0).unwrap_err();
    assert!(manual.to_string().contains("operator olga"), "{manual}");
    let other = admit_action(&f, &runs, "m3", false).unwrap_err();
    assert_eq!(other.kind(), "manager_slot_held");
    assert!(invariants::check(&f, &runs).is_empty());
    // Finished: the campaign goes on.
    f.operator_actions.clear();
    let d = tick(&f, &mut runs, 0);
    assert_eq!(started(&d), vec!["m1"]);
}

#[test]
fn the_invariant_checker_sees_an_operator_action_beside_a_campaign_manager() {
    let mut f = fleet(0, 3);
    let mut runs = vec![run("c1", PATCH, &f)];
    tick(&f, &mut runs, 0);
    f.operator_actions
        .insert("do-1".into(), operator_action("m3"));
    let broken = invariants::check(&f, &runs);
    assert!(
        broken.iter().any(|b| b.starts_with("invariant 1")),
        "{broken:?}"
    );
    // A forced action is an audited override, not a slot the scheduler took.
    f.operator_actions.get_mut("do-1").unwrap().forced = true;
    assert!(invariants::check(&f, &runs).is_empty());
}

#[test]
fn a_disconnected_manager_in_the_quorum_guard_says_how_to_remove_it() {
    let mut f = fleet(0, 3);
    f.hosts.get_mut("m3").unwrap().connected = false;
    let refused = admit_action(&f, &[], "m1", false).unwrap_err();
    assert_eq!(refused.kind(), "quorum_guard");
    let text = refused.to_string();
    assert!(
        text.contains("manager m3 is disconnected") && text.contains("pitcrew hosts remove m3"),
        "{text}"
    );
    let mut runs = vec![run("c1", PATCH, &f)];
    let d = tick(&f, &mut runs, 0);
    let blocker = d.blocker_for("c1", "m1").map(|b| b.to_string());
    assert!(
        blocker
            .as_deref()
            .is_some_and(|b| b.contains("pitcrew hosts remove m3")),
        "{blocker:?}"
    );
    // Once it is removed from the fleet it no longer holds the cluster back.
    f.hosts.remove("m3");
    assert!(admit_action(&f, &[], "m1", false).is_ok());
}
