//! Schedules fired by the engine, under paused tokio time and the engine's tokio-driven clock:
//! a schedule fires on time over the hosts whose facts hold its conditions, a fire while its
//! run is still active is skipped (never two runs of one campaign), fire times missed while
//! the coordinator was down fire once, a second `campaign run` of an active campaign is
//! refused, and finished runs leave the working set for the archive.

use prost::Message;

use super::*;
use crate::engine::ScheduleControl;
use crate::store::{ArchiveFilter, EventFilter};

/// 2025-06-02 02:30:00 UTC.
const T0: i64 = 1_748_831_400_000;
const HOUR: i64 = 3_600_000;

const SCHEDULED: &str = r#"
name = "shm-fix"
schedule = { cron = "0 * * * *", timezone = "UTC" }
[select]
when = ["shm_tmpfs_mounts > 1"]
[[steps]]
action = "dedupe_shm"
"#;

fn settings(base_ms: i64) -> EngineSettings {
    EngineSettings {
        reconnect_grace: Duration::ZERO,
        archive_after: Duration::from_secs(3600),
        clock: Clock::tokio_from(base_ms),
        leadership: crate::leader::Leadership::sole(),
        webhooks: Vec::new(),
        notify: None,
    }
}

/// Connects each host reporting `shm` tmpfs mounts on /dev/shm.
fn connect_with_shm(engine: &Engine, hosts: &[(&String, u32)]) {
    for (id, shm) in hosts {
        engine.session_changed(
            id,
            1,
            Some(v1::Facts {
                host_id: (*id).clone(),
                boot_id: "boot-1".into(),
                shm_tmpfs_mounts: *shm,
                ..Default::default()
            }),
        );
    }
}

/// Waits (on the engine's change notifications, never a timer) until `check` holds of the
/// schedule named `name`.
async fn wait_schedule(
    engine: &Engine,
    name: &str,
    check: impl Fn(&ScheduleView) -> bool,
) -> ScheduleView {
    let mut changes = engine.subscribe();
    loop {
        let list = engine.schedules().await.unwrap();
        if let Some(s) = list.into_iter().find(|s| s.record.name == name)
            && check(&s)
        {
            return s;
        }
        changes.changed().await.unwrap();
    }
}

async fn runs(engine: &Engine) -> Vec<CampaignView> {
    engine
        .list_filtered(RunFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .0
}

async fn register(engine: &Engine, text: &str) -> ScheduleView {
    let spec = CampaignSpec::parse(text, "shm-fix.toml").unwrap();
    engine
        .register_schedule("alice".into(), spec, text.into(), "shm-fix.toml".into())
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_schedule_fires_on_time_and_never_starts_a_second_run_while_one_is_active() {
    let dir = tempfile::tempdir().unwrap();
    let rig = start_with(&dir.path().join("s.db"), true, settings(T0)).await;
    let ids = workers(&rig.store, 2);
    announce(&rig, &ids).await;
    // Only the first host has the stacked mounts the conditions ask for.
    connect_with_shm(&rig.engine, &[(&ids[0], 2), (&ids[1], 1)]);

    let view = register(&rig.engine, SCHEDULED).await;
    assert!(!view.replaced);
    assert_eq!(
        view.next_fire_ms,
        Some(T0 + HOUR / 2),
        "03:00, the next full hour"
    );
    assert_eq!(view.next_fire_local, "2025-06-02 03:00 UTC");

    // 03:00: the first fire starts a run over the host whose facts hold the condition.
    let fired = wait_schedule(&rig.engine, "shm-fix", |s| s.record.last_fire_ms > 0).await;
    assert_eq!(fired.record.last_fire_ms, T0 + HOUR / 2, "fired on time");
    let first = fired.record.last_run_id.clone();
    assert!(!first.is_empty(), "{fired:?}");
    let list = runs(&rig.engine).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, first);
    assert_eq!(
        list[0].hosts_total, 1,
        "only the host with two tmpfs mounts"
    );
    assert_eq!(list[0].created_by, "schedule shm-fix");
    assert_eq!(fired.next_fire_ms, Some(T0 + 3 * HOUR / 2));

    // The run's agent never answers, so the run is still active at 04:00 and 05:00: both fires
    // are skipped, saying why; no second run is ever started.
    let skipped = wait_schedule(&rig.engine, "shm-fix", |s| {
        s.record.last_fire_ms >= T0 + 5 * HOUR / 2
    })
    .await;
    assert_eq!(skipped.record.last_fire_ms, T0 + 5 * HOUR / 2);
    assert_eq!(skipped.record.last_run_id, "");
    assert!(
        skipped
            .record
            .last_note
            .contains(&format!("run {first} of \"shm-fix\" is still")),
        "{skipped:?}"
    );
    let list = runs(&rig.engine).await;
    assert_eq!(list.len(), 1, "no run doubled: {list:?}");
    let events = rig
        .store
        .list_events(EventFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let skips = events
        .iter()
        .filter(|e| e.actor == "schedule shm-fix" && e.message.contains("skipped the fire"))
        .count();
    assert_eq!(skips, 2, "04:00 and 05:00 were skipped and logged");

    // Paused, it does not fire; removed, it is gone from the store too.
    let paused = rig
        .engine
        .control_schedule("alice".into(), "shm-fix".into(), ScheduleControl::Pause)
        .await
        .unwrap();
    assert!(paused.record.paused);
    assert_eq!(paused.next_fire_ms, None);
    rig.engine
        .control_schedule("alice".into(), "shm-fix".into(), ScheduleControl::Remove)
        .await
        .unwrap();
    assert!(rig.engine.schedules().await.unwrap().is_empty());
    rig.task.abort();
}

#[tokio::test(start_paused = true)]
async fn fire_times_missed_while_the_coordinator_was_down_fire_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Store::open(&path).unwrap();
    let ids = workers(&store, 1);
    // The facts the host reported before the restart: a fire at start reads them (its
    // session has not come back yet).
    let facts = v1::Facts {
        host_id: ids[0].clone(),
        shm_tmpfs_mounts: 3,
        ..Default::default()
    }
    .encode_to_vec();
    let id = ids[0].clone();
    futures::executor::block_on(
        store.write(move |tx| Box::pin(async move { tx.set_facts(&id, &facts, 1).await })),
    )
    .unwrap();
    drop(store);
    let first = start_with(&path, true, settings(T0)).await;
    register(&first.engine, SCHEDULED).await;
    first.task.abort();
    drop(first);

    // Back five hours later: 03:00 to 07:00 were missed. One fire, at once.
    let back = T0 + 5 * HOUR;
    let second = start_with(&path, true, settings(back)).await;
    connect_with_shm(&second.engine, &[(&ids[0], 3)]);
    let fired = wait_schedule(&second.engine, "shm-fix", |s| s.record.last_fire_ms > 0).await;
    assert!(
        fired.record.last_fire_ms >= back && fired.record.last_fire_ms < T0 + 5 * HOUR + HOUR / 2,
        "fired on restart, not for each missed hour: {fired:?}"
    );
    assert_eq!(
        fired.next_fire_ms,
        Some(T0 + 11 * HOUR / 2),
        "then at 08:00"
    );
    let events = second
        .store
        .list_events(EventFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let fires = events
        .iter()
        .filter(|e| e.actor == "schedule shm-fix" && e.message.contains("fired"))
        .count();
    assert_eq!(fires, 1, "{events:?}");
    let list = runs(&second.engine).await;
    assert_eq!(list.len(), 1);

    // A run with no host holding the conditions is recorded as having nothing to do.
    second
        .engine
        .control("alice".into(), list[0].id.clone(), CampaignControl::Cancel)
        .await
        .unwrap();
    connect_with_shm(&second.engine, &[(&ids[0], 1)]);
    let empty = wait_schedule(&second.engine, "shm-fix", |s| {
        s.record.last_fire_ms >= T0 + 11 * HOUR / 2
    })
    .await;
    assert!(
        empty.record.last_note.contains("nothing to do")
            && empty.record.last_note.contains("shm_tmpfs_mounts > 1"),
        "{empty:?}"
    );
    assert_eq!(runs(&second.engine).await.len(), 1, "no empty run was made");
    second.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_second_run_of_an_active_campaign_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let rig = start_with(&dir.path().join("s.db"), true, settings(T0)).await;
    let ids = workers(&rig.store, 1);
    announce(&rig, &ids).await;
    connect_all(&rig.engine, &ids);
    let first = create(&rig.engine).await;
    let spec = CampaignSpec::parse(SPEC, "patch.toml").unwrap();
    let hosts = rig.engine.hosts().await.unwrap();
    let again = CampaignRun::new("c-again", &spec, &hosts, T0).unwrap();
    let error = rig
        .engine
        .insert_run(again, SPEC.into(), "bob".into())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "already_running");
    assert!(error.to_string().contains(&first), "{error}");
    assert_eq!(runs(&rig.engine).await.len(), 1);
    // A file that has a schedule is registered, not run; one without is refused as a
    // schedule.
    let spec = CampaignSpec::parse(SPEC, "patch.toml").unwrap();
    let error = rig
        .engine
        .register_schedule("bob".into(), spec, SPEC.into(), "patch.toml".into())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("patch.toml has no schedule"),
        "{error}"
    );
    rig.task.abort();
}

#[tokio::test(start_paused = true)]
async fn finished_runs_leave_the_working_set_for_the_archive_and_keep_their_successes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let ids = workers(&Store::open(&path).unwrap(), 1);
    let mut rig = start_with(&path, true, settings(T0)).await;
    connect_all(&rig.engine, &ids);
    let spec = CampaignSpec::parse(SPEC, "patch.toml").unwrap();
    let hosts = rig.engine.hosts().await.unwrap();
    let run = CampaignRun::new("c-archived", &spec, &hosts, T0).unwrap();
    let id = rig
        .engine
        .insert_run(run, SPEC.into(), "tester".into())
        .await
        .unwrap()
        .id;
    for _ in 0..2 {
        let sent = rig.sent.recv().await.unwrap();
        answer(&rig, &sent).await;
    }
    let mut changes = rig.engine.subscribe();
    while runs(&rig.engine).await[0].state != CampaignState::Completed {
        changes.changed().await.unwrap();
    }
    // Re-registering a replaced schedule is said, and keeps one schedule per name.
    register(&rig.engine, SCHEDULED).await;
    let again = register(&rig.engine, SCHEDULED).await;
    assert!(again.replaced);
    assert_eq!(rig.engine.schedules().await.unwrap().len(), 1);

    // An hour after it finished (`archive_after`), the run leaves the engine.
    while !runs(&rig.engine).await.iter().all(|r| r.id != id) {
        changes.changed().await.unwrap();
    }
    let archived = rig
        .store
        .list_archived(ArchiveFilter {
            name: "PATCH".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(archived.len(), 1, "name patterns ignore case");
    assert_eq!(archived[0].id, id);
    assert_eq!(archived[0].summary.state, "completed");
    assert_eq!(archived[0].summary.host_counts.get("done"), Some(&1));
    let none = rig
        .store
        .list_archived(ArchiveFilter {
            state: "cancelled".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let (record, is_archived) = rig.store.load_run(id.clone()).await.unwrap().unwrap();
    assert!(is_archived);
    assert_eq!(record.run.state, CampaignState::Completed);
    let success = rig.engine.last_successes(ids.clone()).await.unwrap();
    assert_eq!(
        success[0][0].run_id, id,
        "the compliance report still sees it"
    );
    rig.task.abort();
    drop(rig);

    // After a restart the archived run stays out of the engine, and its success stays in.
    let rig = start_with(&path, true, settings(T0 + 3 * HOUR)).await;
    assert!(runs(&rig.engine).await.is_empty());
    let success = rig.engine.last_successes(ids).await.unwrap();
    assert_eq!(success[0][0].run_id, id);
    rig.task.abort();
}
