//! Operators acting on hosts outside campaigns, through the engine: a disruptive `pitcrew do`
//! refused where a campaign or the manager slot holds, forced and audited, and holding its host
//! until it ends; removing a host (its campaigns end it skipped, its row is marked removed and
//! its events stay); changing a host's role or labels, refused while a campaign has it.

use pitcrew_scheduler::Role;

use super::*;
use crate::engine::HostEdit;
use crate::store::EventFilter;

/// Enrolls managers m0.. of cluster "swarm-a" (before the engine starts; it reads hosts then).
fn managers(store: &Store, n: usize) -> Vec<String> {
    enroll(store, "manager", "m", 0xff00, &[("cluster", "swarm-a")], n)
}

async fn audit_messages(store: &Store) -> Vec<String> {
    store
        .list_events(EventFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "audit")
        .map(|e| format!("{}: {}", e.actor, e.message))
        .collect()
}

#[tokio::test]
async fn a_disruptive_do_on_a_campaign_host_is_refused_naming_it_and_forcing_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let ids = workers(&Store::open(&path).unwrap(), 2);
    let mut rig = start(&path, true).await;
    connect_all(&rig.engine, &ids);
    create(&rig.engine).await;
    let sent = next_sent(&mut rig.sent).await;
    let held = sent.host.clone();
    let refused = rig
        .engine
        .begin_operator_action(
            "olga".into(),
            held.clone(),
            "do-1".into(),
            "exec /bin/true".into(),
            false,
        )
        .await
        .err()
        .expect("a host the campaign holds must be refused");
    assert_eq!(refused.kind(), "host_held");
    let text = refused.to_string();
    assert!(
        text.contains("campaign c-test") && text.contains("--force"),
        "{text}"
    );
    let forced = rig
        .engine
        .begin_operator_action(
            "olga".into(),
            held.clone(),
            "do-2".into(),
            "exec /bin/true".into(),
            true,
        )
        .await
        .unwrap();
    let audit = audit_messages(&rig.store).await;
    assert!(
        audit
            .iter()
            .any(|m| m.starts_with("olga: forced exec /bin/true")
                && m.contains("do-2")
                && m.contains("campaign c-test")),
        "{audit:?}"
    );
    drop(forced);
    rig.task.abort();
}

#[tokio::test]
async fn an_admitted_do_holds_its_host_and_a_campaign_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let ids = workers(&Store::open(&path).unwrap(), 2);
    let mut rig = start(&path, true).await;
    connect_all(&rig.engine, &ids);
    let hold = rig
        .engine
        .begin_operator_action(
            "olga".into(),
            ids[0].clone(),
            "do-1".into(),
            "exec /bin/true".into(),
            false,
        )
        .await
        .unwrap();
    create(&rig.engine).await;
    // The other worker starts; the held one waits, saying for whom.
    let first = next_sent(&mut rig.sent).await;
    assert_eq!(first.host, ids[1]);
    let view = wait_view(&rig.engine, |v| {
        v.hosts.iter().any(|h| {
            h.host_id == ids[0]
                && h.blocker
                    .as_deref()
                    .is_some_and(|b| b.contains("operator olga"))
        })
    })
    .await;
    assert!(
        view.hosts
            .iter()
            .any(|h| h.host_id == ids[0] && h.state == HostState::Pending)
    );
    // The operator's `do` ends: the campaign takes the host.
    drop(hold);
    loop {
        let sent = next_sent(&mut rig.sent).await;
        if sent.host == ids[0] {
            break;
        }
        answer(&rig, &sent).await;
    }
    rig.task.abort();
}

#[tokio::test]
async fn a_do_on_a_manager_holds_the_manager_slot_of_its_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let ids = managers(&Store::open(&path).unwrap(), 3);
    let rig = start(&path, true).await;
    connect_all(&rig.engine, &ids);
    let hold = rig
        .engine
        .begin_operator_action(
            "olga".into(),
            ids[0].clone(),
            "do-1".into(),
            "reboot".into(),
            false,
        )
        .await
        .unwrap();
    let refused = rig
        .engine
        .begin_operator_action(
            "nina".into(),
            ids[1].clone(),
            "do-2".into(),
            "reboot".into(),
            false,
        )
        .await
        .err()
        .expect("a second manager of the cluster must be refused");
    assert_eq!(refused.kind(), "manager_slot_held");
    assert!(
        refused
            .to_string()
            .contains("m0 (operator olga's pitcrew do (action do-1))"),
        "{refused}"
    );
    let manual = rig
        .engine
        .set_maintenance("nina".into(), ids[2].clone(), true)
        .await
        .expect_err("manual maintenance of another manager must be refused");
    assert!(manual.to_string().contains("operator olga"), "{manual}");
    // Read off the holds, as `pitcrew hosts` shows them.
    let holds = rig.engine.holds(vec![ids[0].clone()]).await.unwrap();
    assert_eq!(holds[0].holder, "operator olga (pitcrew do)");
    drop(hold);
    // Freed in the engine's next turn: the other manager is admitted.
    let mut admitted = None;
    for _ in 0..100 {
        match rig
            .engine
            .begin_operator_action(
                "nina".into(),
                ids[1].clone(),
                "do-3".into(),
                "reboot".into(),
                false,
            )
            .await
        {
            Ok(hold) => {
                admitted = Some(hold);
                break;
            }
            Err(e) => assert_eq!(e.kind(), "manager_slot_held"),
        }
    }
    assert!(
        admitted.is_some(),
        "the slot was not freed after the do ended"
    );
    rig.task.abort();
}

#[tokio::test]
async fn removing_a_host_skips_it_in_its_campaign_frees_its_slot_and_keeps_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let ids = workers(&Store::open(&path).unwrap(), 3);
    let mut rig = start(&path, true).await;
    connect_all(&rig.engine, &ids);
    create(&rig.engine).await;
    let sent = next_sent(&mut rig.sent).await;
    let gone = sent.host.clone();
    let changes = rig
        .engine
        .remove_host("ada".into(), gone.clone())
        .await
        .unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.contains("campaign c-test") && c.contains("now skipped")),
        "{changes:?}"
    );
    let id = gone.clone();
    let row = rig.store.host(id.clone()).await.unwrap().unwrap();
    assert!(
        row.removed_at_ms > 0 && row.cert_serial.is_empty(),
        "{row:?}"
    );
    assert!(
        !rig.engine
            .hosts()
            .await
            .unwrap()
            .iter()
            .any(|h| h.id == gone),
        "a removed host stays out of the fleet view"
    );
    // The others finish; the campaign ends incomplete, not completed.
    let mut changes = rig.engine.subscribe();
    loop {
        let view = rig
            .engine
            .view("c-test".into(), HostPage::None)
            .await
            .unwrap();
        if view.state.is_final() {
            assert_eq!(view.state, CampaignState::Incomplete);
            break;
        }
        tokio::select! {
            sent = rig.sent.recv() => {
                let sent = sent.unwrap();
                assert_ne!(sent.host, gone, "work was sent to a removed host");
                answer(&rig, &sent).await;
            }
            changed = tokio::time::timeout(Duration::from_secs(30), changes.changed()) => {
                changed.expect("the campaign did not finish").unwrap();
            }
        }
    }
    let run = stored_run(&path);
    let host = run.hosts.iter().find(|h| h.host_id == gone).unwrap();
    assert_eq!(host.state, HostState::Skipped);
    assert!(host.slot.is_none());
    assert!(
        host.last_error
            .as_deref()
            .is_some_and(|e| e.contains("removed from the fleet by ada"))
    );
    // Its history stays, and the removal is audited.
    let id = gone.clone();
    let history = rig
        .store
        .list_events(EventFilter {
            host_id: Some(id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(history.iter().any(|e| e.step == sent.action_id));
    assert!(
        history
            .iter()
            .any(|e| e.actor == "ada" && e.message.starts_with("removed host"))
    );
    // A restart does not bring it back.
    rig.task.abort();
    let _ = (&mut rig.task).await;
    drop(rig);
    let again = start(&path, true).await;
    assert!(
        !again
            .engine
            .hosts()
            .await
            .unwrap()
            .iter()
            .any(|h| h.id == gone)
    );
    again.task.abort();
}

#[tokio::test]
async fn a_host_changes_role_or_labels_only_while_no_campaign_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let ids = workers(&Store::open(&path).unwrap(), 1);
    let mut rig = start(&path, true).await;
    connect_all(&rig.engine, &ids);
    create(&rig.engine).await;
    let edit = HostEdit {
        role: Some(Role::Manager),
        set_labels: BTreeMap::from([("cluster".into(), "swarm-b".into())]),
        unset_labels: Vec::new(),
    };
    let refused = rig
        .engine
        .set_host("olga".into(), ids[0].clone(), edit.clone())
        .await
        .expect_err("a host a campaign holds must not change role");
    assert_eq!(refused.kind(), "host_busy");
    assert!(
        refused.to_string().contains("held by campaign c-test"),
        "{refused}"
    );
    // The campaign finishes with it: now it may change.
    for _ in 0..2 {
        let sent = next_sent(&mut rig.sent).await;
        answer(&rig, &sent).await;
    }
    wait_view(&rig.engine, |v| v.state == CampaignState::Completed).await;
    let (role, labels) = rig
        .engine
        .set_host("olga".into(), ids[0].clone(), edit)
        .await
        .unwrap();
    assert_eq!(role, Role::Manager);
    assert_eq!(labels["cluster"], "swarm-b");
    let id = ids[0].clone();
    let row = rig.store.host(id.clone()).await.unwrap().unwrap();
    assert_eq!(row.role, "manager");
    assert_eq!(row.labels["cluster"], "swarm-b");
    let audit = audit_messages(&rig.store).await;
    assert!(
        audit
            .iter()
            .any(|m| m
                == "olga: changed host w0: role worker → manager, label cluster=swarm-b added"),
        "{audit:?}"
    );
    rig.task.abort();
}
