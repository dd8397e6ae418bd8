//! Schedules and the archive of old runs, on both backends.

use super::*;
use crate::store::schedules::{ArchiveFilter, ArchivedRun, ArchivedSummary, ScheduleRecord};

fn schedule(name: &str, fired: i64) -> ScheduleRecord {
    ScheduleRecord {
        name: name.into(),
        spec_toml: format!("name = \"{name}\""),
        source_name: format!("{name}.toml"),
        created_by: "alice".into(),
        created_at_ms: 10,
        paused: false,
        last_fire_ms: fired,
        last_run_id: if fired > 0 {
            "c-1".into()
        } else {
            String::new()
        },
        last_note: String::new(),
    }
}

fn archived(run: &CampaignRun, at: i64, state: &str, successes: &[(&str, i64)]) -> ArchivedRun {
    ArchivedRun {
        id: run.id.clone(),
        name: run.spec.name.clone(),
        at_ms: at,
        summary: ArchivedSummary {
            state: state.into(),
            hosts_total: run.hosts.len() as u32,
            host_counts: BTreeMap::from([("done".into(), successes.len() as u32)]),
            finished_at_ms: at - 1,
            ..Default::default()
        },
        successes: successes
            .iter()
            .map(|(h, t)| ((*h).to_owned(), *t))
            .collect(),
    }
}

both!(
    schedules_are_one_row_per_name_and_survive_reopening,
    |at, store: Store| async move {
        store
            .commit_turn(TurnWrites {
                schedules: vec![
                    ("nightly".into(), Some(schedule("nightly", 0))),
                    ("weekly".into(), Some(schedule("weekly", 0))),
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        // Fired: the same name is rewritten, never a second row; a removal deletes it.
        store
            .commit_turn(TurnWrites {
                schedules: vec![
                    ("nightly".into(), Some(schedule("nightly", 99))),
                    ("weekly".into(), None),
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        drop(store);
        let store = Store::open_at(&at).unwrap();
        let fleet = store.load_fleet().await.unwrap();
        assert_eq!(fleet.schedules, vec![schedule("nightly", 99)]);
    }
);

both!(
    archived_runs_leave_the_load_but_stay_readable_and_keep_their_successes,
    |_at, store: Store| async move {
        let old = run("c-old", &["h1", "h2"]);
        let newer = {
            let mut r = run("c-new", &["h1"]);
            r.created_at_ms = 50;
            r
        };
        let kept = {
            let mut r = run("c-kept", &["h2"]);
            r.created_at_ms = 60;
            r
        };
        store
            .commit_turn(TurnWrites {
                new_runs: vec![
                    (old.clone(), "name = \"patch\"".into(), "alice".into()),
                    (newer.clone(), "name = \"patch\"".into(), "alice".into()),
                    (kept.clone(), "name = \"patch\"".into(), "alice".into()),
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .commit_turn(TurnWrites {
                archived: vec![
                    archived(&old, 100, "completed", &[("h1", 20), ("h2", 30)]),
                    archived(&newer, 200, "cancelled", &[("h1", 10)]),
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        let fleet = store.load_fleet().await.unwrap();
        let loaded: Vec<&str> = fleet.campaigns.iter().map(|c| c.run.id.as_str()).collect();
        assert_eq!(loaded, ["c-kept"], "archived runs are not loaded");
        // One success per host and campaign name, the newest (an older one does not win).
        let successes: Vec<(String, String, i64)> = fleet
            .archived_successes
            .iter()
            .map(|s| (s.host_id.clone(), s.run_id.clone(), s.finished_at_ms))
            .collect();
        assert_eq!(
            successes,
            [
                ("h1".to_owned(), "c-old".to_owned(), 20),
                ("h2".to_owned(), "c-old".to_owned(), 30)
            ]
        );

        // Newest first, by state, by a case-insensitive pattern, within the limit.
        let list = |state: &str, name: &str, limit: u32| {
            let store = &store;
            let filter = ArchiveFilter {
                state: state.into(),
                name: name.into(),
                limit,
            };
            async move {
                store
                    .list_archived(filter)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(list("", "", 10).await, ["c-new", "c-old"]);
        assert_eq!(list("", "", 1).await, ["c-new"]);
        assert_eq!(list("completed", "", 10).await, ["c-old"]);
        assert_eq!(list("", "PAT*", 10).await, ["c-new", "c-old"]);
        assert_eq!(list("", "p?tch", 10).await, ["c-new", "c-old"]);
        assert!(list("", "pat", 10).await.is_empty());
        assert!(
            list("", "p%", 10).await.is_empty(),
            "SQL wildcards are literal"
        );
        let rows = store
            .list_archived(ArchiveFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rows[1].summary.state, "completed");
        assert_eq!(rows[1].summary.hosts_total, 2);
        assert_eq!(rows[1].archived_at_ms, 100);

        // Read back whole, archived or not.
        let (record, is_archived) = store.load_run("c-old".into()).await.unwrap().unwrap();
        assert!(is_archived);
        assert_eq!(record.run, old);
        let (_, is_archived) = store.load_run("c-kept".into()).await.unwrap().unwrap();
        assert!(!is_archived);
        assert!(store.load_run("c-none".into()).await.unwrap().is_none());
    }
);
