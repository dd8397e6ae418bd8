//! The engine's metrics follow the fleet as it changes: sessions, facts, manual maintenance,
//! a campaign's hosts and steps, and the waits of its blocked hosts. (Debug builds also
//! recount everything after each turn and compare, so every engine test checks the counts.)

use prometheus_client::registry::Registry;

use super::*;

/// The engine's metrics as a scrape shows them.
fn scrape(engine: &Engine) -> String {
    let mut registry = Registry::default();
    engine.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

/// The value of one series (`name{labels}` exactly as encoded); 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

fn hosts(text: &str, state: &str, connected: bool) -> f64 {
    value(
        text,
        &format!("pitcrew_hosts{{role=\"worker\",state=\"{state}\",connected=\"{connected}\"}}"),
    )
}

#[tokio::test]
async fn counts_follow_sessions_facts_maintenance_and_a_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = start(&dir.path().join("s.db"), true).await;
    let ids = workers(&rig.store, 3);
    announce(&rig, &ids).await;
    rig.engine.session_changed(
        &ids[0],
        1,
        Some(v1::Facts {
            host_id: ids[0].clone(),
            boot_id: "boot-1".into(),
            reboot_required: true,
            ..Default::default()
        }),
    );
    connect_all(&rig.engine, &ids[1..2]);
    // A command is answered after its turn, and so after the inputs before it.
    rig.engine.hosts().await.unwrap();
    let text = scrape(&rig.engine);
    assert_eq!(hosts(&text, "running", true), 2.0, "{text}");
    assert_eq!(hosts(&text, "running", false), 1.0, "{text}");
    assert_eq!(value(&text, "pitcrew_hosts_reboot_required"), 1.0);
    // Every series of the bounded label sets is there from the start.
    assert!(
        text.contains("pitcrew_campaigns{state=\"cancelled\"} 0"),
        "{text}"
    );
    assert!(text.contains("pitcrew_host_steps_total{outcome=\"failed\"} 0"));

    // New facts: no reboot needed any more.
    rig.engine.facts_changed(
        &ids[0],
        1,
        v1::Facts {
            host_id: ids[0].clone(),
            boot_id: "boot-1".into(),
            ..Default::default()
        },
    );
    rig.engine
        .set_maintenance("tester".into(), ids[2].clone(), true)
        .await
        .unwrap();
    let text = scrape(&rig.engine);
    assert_eq!(value(&text, "pitcrew_hosts_reboot_required"), 0.0);
    assert_eq!(hosts(&text, "maintenance", false), 1.0, "{text}");
    assert_eq!(hosts(&text, "running", false), 0.0, "{text}");
    assert_eq!(
        value(
            &text,
            "pitcrew_slot_holders{slot_kind=\"worker\",holder=\"manual\"}"
        ),
        1.0
    );

    // A campaign over the three (two at a time): the host in manual maintenance counts as
    // one of its two workers away, so one starts, one waits for a slot and the third for its
    // manual maintenance.
    create(&rig.engine).await;
    let first = next_sent(&mut rig.sent).await;
    let text = scrape(&rig.engine);
    assert_eq!(value(&text, "pitcrew_campaigns{state=\"running\"}"), 1.0);
    assert_eq!(
        value(
            &text,
            "pitcrew_slot_holders{slot_kind=\"worker\",holder=\"campaign\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(hosts(&text, "maintenance", true), 1.0, "{text}");
    assert_eq!(
        value(&text, "pitcrew_hosts_waiting{blocker=\"held_elsewhere\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "pitcrew_hosts_waiting{blocker=\"no_slot\"}"),
        1.0,
        "{text}"
    );
    assert!(
        text.contains("pitcrew_host_wait_seconds{blocker=\"held_elsewhere\"}"),
        "{text}"
    );

    // Both hosts' two steps succeed, one host after the other.
    answer(&rig, &first).await;
    for _ in 0..3 {
        let sent = next_sent(&mut rig.sent).await;
        answer(&rig, &sent).await;
    }
    rig.engine.hosts().await.unwrap();
    let text = scrape(&rig.engine);
    assert_eq!(
        value(&text, "pitcrew_host_steps_total{outcome=\"succeeded\"}"),
        4.0,
        "{text}"
    );
    assert_eq!(hosts(&text, "running", true), 2.0, "{text}");
    assert_eq!(
        value(
            &text,
            "pitcrew_slot_holders{slot_kind=\"worker\",holder=\"campaign\"}"
        ),
        0.0
    );

    // Out of maintenance, the third host waits for its agent instead: its first wait ended.
    rig.engine
        .set_maintenance("tester".into(), ids[2].clone(), false)
        .await
        .unwrap();
    rig.engine.hosts().await.unwrap();
    let text = scrape(&rig.engine);
    assert_eq!(hosts(&text, "running", false), 1.0, "{text}");
    assert_eq!(
        value(
            &text,
            "pitcrew_host_wait_duration_seconds_count{blocker=\"held_elsewhere\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "pitcrew_hosts_waiting{blocker=\"held_elsewhere\"}"),
        0.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "pitcrew_hosts_waiting{blocker=\"agent_disconnected\"}"
        ),
        1.0,
        "{text}"
    );
    // A session ending shows at once.
    rig.engine.session_changed(&ids[1], 1, None);
    rig.engine.hosts().await.unwrap();
    let text = scrape(&rig.engine);
    assert_eq!(hosts(&text, "running", false), 2.0, "{text}");
    assert!(
        value(&text, "pitcrew_engine_decision_duration_seconds_count") > 0.0,
        "{text}"
    );
    assert!(!rig.task.is_finished());
}
