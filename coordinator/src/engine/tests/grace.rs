//! The wait after a restart for agents that were running actions: a host whose agent has not
//! come back yet keeps its in-flight step past the step's deadline (its work may well have
//! finished while the coordinator was down), the rest of the campaign is decided meanwhile,
//! and an agent that never comes back fails its step once the grace is over.

use super::*;

/// 2025-06-02 02:30:00 UTC.
const T0: i64 = 1_748_831_400_000;
/// Longer than any step's deadline in [`SPEC`].
const OUTAGE_MS: i64 = 2 * 3_600_000;

fn settings(base_ms: i64, reconnect_grace: Duration) -> EngineSettings {
    EngineSettings {
        reconnect_grace,
        clock: Clock::tokio_from(base_ms),
        ..test_settings()
    }
}

/// A first life that commits two dispatches and dies before sending them, then a second life
/// started after a long outage. Returns the second rig, the four workers and the two actions.
async fn restarted_after_outage(path: &Path, grace: Duration) -> (Rig, Vec<String>, Sent, Sent) {
    let ids = workers(&Store::open(path).unwrap(), 4);
    let mut first = start_with(path, false, settings(T0, grace)).await;
    connect_all(&first.engine, &ids);
    create(&first.engine).await;
    let a = next_sent(&mut first.sent).await;
    let b = next_sent(&mut first.sent).await;
    first.task.abort();
    let _ = (&mut first.task).await;
    drop(first);
    let second = start_with(path, true, settings(T0 + OUTAGE_MS, grace)).await;
    (second, ids, a, b)
}

fn host_state(path: &Path, host_id: &str) -> HostState {
    stored_run(path)
        .hosts
        .iter()
        .find(|h| h.host_id == host_id)
        .map(|h| h.state)
        .expect("the host is in the run")
}

#[tokio::test]
async fn a_restart_waits_for_each_agent_that_was_running_an_action_not_for_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let (mut rig, ids, a, b) = restarted_after_outage(&path, Duration::from_secs(3600)).await;
    // Every agent but b's comes back; a's replays the result it kept while apart.
    let back: Vec<String> = ids.iter().filter(|id| **id != b.host).cloned().collect();
    connect_all(&rig.engine, &back);
    answer(&rig, &a).await;
    rig.engine.results_replayed(&a.host);
    // Deciding went on: a's host gets its next step although b's agent is still away, and
    // b's step, hours past its deadline, is not failed.
    let next = next_sent(&mut rig.sent).await;
    assert_eq!(next.host, a.host);
    assert_ne!(next.action_id, a.action_id);
    assert!(next.recorded && next.in_flight_stored);
    assert!(host_state(&path, &b.host).in_progress());
    let blocked = rig
        .engine
        .view("c-test".into(), HostPage::None)
        .await
        .unwrap();
    assert_eq!(blocked.state, CampaignState::Running);

    // b's agent comes back with its result: b's host moves on as if nothing happened.
    connect_all(&rig.engine, std::slice::from_ref(&b.host));
    answer(&rig, &b).await;
    rig.engine.results_replayed(&b.host);
    let mut seen: BTreeSet<String> = [a.action_id.clone(), b.action_id.clone()].into();
    let mut pending = vec![next];
    while let Some(sent) = pending.pop() {
        assert!(seen.insert(sent.action_id.clone()), "sent twice: {sent:?}");
        answer(&rig, &sent).await;
        if seen.len() < 8 {
            pending.push(next_sent(&mut rig.sent).await);
        }
    }
    wait_view(&rig.engine, |v| v.state == CampaignState::Completed).await;
    assert!(
        stored_run(&path)
            .hosts
            .iter()
            .all(|h| h.state == HostState::Done)
    );
    rig.task.abort();
}

#[tokio::test]
async fn an_agent_that_does_not_come_back_within_the_grace_fails_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let (rig, ids, _, b) = restarted_after_outage(&path, Duration::from_millis(300)).await;
    // Every agent is back but b's, which never is.
    let back: Vec<String> = ids.iter().filter(|id| **id != b.host).cloned().collect();
    connect_all(&rig.engine, &back);
    let mut changes = rig.engine.subscribe();
    while host_state(&path, &b.host) != HostState::Failed {
        tokio::time::timeout(Duration::from_secs(30), changes.changed())
            .await
            .expect("b's step was not failed after the grace")
            .unwrap();
    }
    let run = stored_run(&path);
    let b_run = run.hosts.iter().find(|h| h.host_id == b.host).unwrap();
    let reason = b_run.last_error.as_deref().unwrap_or_default();
    assert!(reason.contains("no result"), "{reason}");
    assert!(reason.contains("agent disconnected"), "{reason}");
    rig.task.abort();
}
