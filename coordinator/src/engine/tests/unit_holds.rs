//! Held units: the engine releases a host's holds once nothing holds the host, never while a
//! campaign does, once per hold, and only after the release is recorded.

use super::*;

fn held(unit: &str, hold_id: &str) -> v1::HeldUnit {
    v1::HeldUnit {
        unit: unit.into(),
        hold_id: hold_id.into(),
    }
}

fn facts(id: &str, held_units: Vec<v1::HeldUnit>) -> v1::Facts {
    v1::Facts {
        host_id: id.to_owned(),
        boot_id: "boot-1".into(),
        held_units,
        ..Default::default()
    }
}

/// The holds a sent release names.
fn released(sent: &Sent) -> Vec<v1::HeldUnit> {
    match sent.request.action.as_ref().and_then(|a| a.kind.as_ref()) {
        Some(v1::action::Kind::ReleaseHolds(r)) => r.holds.clone(),
        other => panic!("{} is not a release: {other:?}", sent.action_id),
    }
}

async fn enrolled(rig: &Rig, n: usize) -> Vec<String> {
    let ids = workers(&rig.store, n);
    announce(rig, &ids).await;
    ids
}

#[tokio::test]
async fn a_host_that_reports_holds_while_nothing_holds_it_is_sent_one_release_per_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = start(&dir.path().join("s.db"), true).await;
    let ids = enrolled(&rig, 1).await;
    let a0 = held("a.service", "c1:h:before-1:a0");
    rig.engine
        .session_changed(&ids[0], 1, Some(facts(&ids[0], vec![a0.clone()])));
    let first = next_sent(&mut rig.sent).await;
    assert_eq!(first.host, ids[0]);
    assert!(first.recorded, "a release is recorded before it is sent");
    assert_eq!(released(&first), vec![a0.clone()]);

    // Facts lag the release: the same hold reported again is not released again; a newer hold
    // of the same unit is, alone.
    rig.engine
        .facts_changed(&ids[0], 1, facts(&ids[0], vec![a0.clone()]));
    let a1 = held("a.service", "c2:h:before-1:a0");
    rig.engine
        .facts_changed(&ids[0], 1, facts(&ids[0], vec![a1.clone()]));
    let second = next_sent(&mut rig.sent).await;
    assert_eq!(released(&second), vec![a1]);
    assert_ne!(second.action_id, first.action_id);
}

#[tokio::test]
async fn holds_are_released_only_once_the_host_s_run_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = start(&dir.path().join("s.db"), true).await;
    let ids = enrolled(&rig, 1).await;
    connect_all(&rig.engine, &ids);
    create(&rig.engine).await;
    let step1 = next_sent(&mut rig.sent).await;
    // The step held a unit: the host is in progress, so nothing is released.
    let hold = held("a.service", &step1.action_id);
    rig.engine
        .facts_changed(&ids[0], 1, facts(&ids[0], vec![hold.clone()]));
    answer(&rig, &step1).await;
    let step2 = next_sent(&mut rig.sent).await;
    assert!(
        step2.action_id.starts_with("c-test:"),
        "{}",
        step2.action_id
    );
    answer(&rig, &step2).await;
    // Done with the unit still held: now it is released.
    let release = next_sent(&mut rig.sent).await;
    assert_eq!(release.host, ids[0]);
    assert_eq!(released(&release), vec![hold]);
    assert_eq!(stored_run(&rig.path).hosts[0].state, HostState::Done);
}
