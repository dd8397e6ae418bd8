//! What the web dashboard reads from the engine: the fleet's change counter moves with
//! sessions and committed changes but not with reads (so a page's own reads never wake it
//! again), and the fleet table filters, orders and cuts the engine's hosts.

use super::*;

#[tokio::test]
async fn the_fleet_counter_moves_on_changes_not_on_reads_and_the_table_filters() {
    let dir = tempfile::tempdir().unwrap();
    let rig = start(&dir.path().join("s.db"), true).await;
    let ids = workers(&rig.store, 3);
    announce(&rig, &ids).await;
    let mut fleet = rig.engine.subscribe_fleet();
    fleet.borrow_and_update();

    connect_all(&rig.engine, &ids[..2]);
    rig.engine.hosts().await.unwrap();
    assert!(
        fleet.has_changed().unwrap(),
        "a session did not move the counter"
    );
    fleet.borrow_and_update();

    // Reads, as a page makes them, leave it alone.
    rig.engine.hosts().await.unwrap();
    rig.engine.list().await.unwrap();
    let table = rig
        .engine
        .fleet_table(|view, _| view.connected, 10)
        .await
        .unwrap();
    assert!(!fleet.has_changed().unwrap(), "a read moved the counter");
    assert_eq!(table.matched, 2);
    assert!(
        table
            .rows
            .iter()
            .all(|(view, hold)| view.connected && hold.state == "running")
    );
    let names: Vec<&str> = table
        .rows
        .iter()
        .map(|(v, _)| v.hostname.as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "rows come by hostname");

    // A committed change moves it, and shows in the table and its holders.
    rig.engine
        .set_maintenance("tester".into(), ids[2].clone(), true)
        .await
        .unwrap();
    assert!(
        fleet.has_changed().unwrap(),
        "maintenance did not move the counter"
    );
    let table = rig
        .engine
        .fleet_table(|_, hold| hold.state == "maintenance", 10)
        .await
        .unwrap();
    assert_eq!(table.matched, 1);
    assert_eq!(table.rows[0].0.id, ids[2]);
    assert_eq!(table.rows[0].1.holder, "manual");
    assert!(table.holders.hosts.contains_key(&ids[2]));

    // The limit cuts the rows, not the count.
    let table = rig.engine.fleet_table(|_, _| true, 1).await.unwrap();
    assert_eq!((table.rows.len(), table.matched), (1, 3));
    let (view, hold) = rig.engine.host(ids[2].clone()).await.unwrap().unwrap();
    assert_eq!(
        (view.id.as_str(), hold.state.as_str()),
        (ids[2].as_str(), "maintenance")
    );
    assert!(rig.engine.host("nobody".into()).await.unwrap().is_none());
}
