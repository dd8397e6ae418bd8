//! Webhook notifications decided by the engine: recorded in the turn that decided them and
//! handed to the notifier only once durable, to each webhook that wants the event.

use super::*;
use crate::notify::{NotifySink, Webhook, WebhookConfig};
use crate::store::{DeliveryRecord, DeliveryState};

fn webhooks() -> Vec<Webhook> {
    let config: Vec<WebhookConfig> = toml::from_str::<BTreeMap<String, Vec<WebhookConfig>>>(
        r#"
[[webhook]]
name = "ops"
url = "http://127.0.0.1:9/ops"
[[webhook]]
name = "chat"
url = "http://127.0.0.1:9/chat"
format = "slack"
events = ["campaign-finished"]
"#,
    )
    .unwrap()
    .remove("webhook")
    .unwrap();
    crate::notify::config::load(&config).unwrap()
}

/// Takes what the engine hands over until `n` records came, checking each is already in the
/// store.
async fn handed_over(
    rig: &Rig,
    rx: &mut mpsc::UnboundedReceiver<DeliveryRecord>,
    n: usize,
) -> Vec<DeliveryRecord> {
    let mut out = Vec::new();
    while out.len() < n {
        let record = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("no notification within 30 s")
            .expect("the engine is gone");
        let stored = rig.store.pending_deliveries().await.unwrap();
        assert!(
            stored.contains(&record),
            "{} to {} was handed over before it was durable",
            record.event,
            record.webhook
        );
        assert_eq!(record.state, DeliveryState::Pending);
        out.push(record);
    }
    out
}

fn answer_with(rig: &Rig, sent: &Sent, outcome: v1::Outcome) -> impl Future<Output = ()> {
    let store = rig.store.clone();
    let engine = rig.engine.clone();
    let (host, action_id) = (sent.host.clone(), sent.action_id.clone());
    async move {
        let record = store.action(action_id.clone()).await.unwrap().unwrap();
        engine
            .result(
                host,
                record,
                v1::ActionResult {
                    action_id,
                    outcome: outcome as i32,
                    message: "exit status 3".into(),
                    ..Default::default()
                },
                true,
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_campaign_s_start_and_finish_are_durable_before_the_notifier_hears_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, mut rx) = NotifySink::channel();
    let mut rig = start_notifying(&dir.path().join("s.db"), true, webhooks(), Some(sink)).await;
    let ids = workers(&rig.store, 2);
    announce(&rig, &ids).await;
    connect_all(&rig.engine, &ids);
    let id = create(&rig.engine).await;

    let started = handed_over(&rig, &mut rx, 1).await;
    assert_eq!(started[0].event, "campaign-started");
    assert_eq!(started[0].webhook, "ops", "chat does not take starts");
    let body: serde_json::Value = serde_json::from_str(&started[0].payload).unwrap();
    assert_eq!(body["campaign"]["id"], id.as_str());
    assert_eq!(body["campaign"]["state"], "running");
    assert_eq!(body["id"], started[0].id.as_str());

    for _ in 0..4 {
        let sent = next_sent(&mut rig.sent).await;
        answer(&rig, &sent).await;
    }
    let finished = handed_over(&rig, &mut rx, 2).await;
    assert!(finished.iter().all(|r| r.event == "campaign-finished"));
    assert_eq!(
        finished[0].id, finished[1].id,
        "one notification, two webhooks"
    );
    let chat = finished.iter().find(|r| r.webhook == "chat").unwrap();
    let text: serde_json::Value = serde_json::from_str(&chat.payload).unwrap();
    assert!(
        text["text"]
            .as_str()
            .unwrap()
            .starts_with("pitcrew campaign-finished: campaign patch"),
        "{text}"
    );
    let ops = finished.iter().find(|r| r.webhook == "ops").unwrap();
    let body: serde_json::Value = serde_json::from_str(&ops.payload).unwrap();
    assert_eq!(body["campaign"]["state"], "completed");
    // Nothing more.
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn a_failed_host_and_the_pause_it_causes_are_notified_once() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, mut rx) = NotifySink::channel();
    let mut rig = start_notifying(&dir.path().join("s.db"), true, webhooks(), Some(sink)).await;
    let ids = workers(&rig.store, 2);
    announce(&rig, &ids).await;
    connect_all(&rig.engine, &ids);
    create(&rig.engine).await;
    handed_over(&rig, &mut rx, 1).await;

    let sent = next_sent(&mut rig.sent).await;
    answer_with(&rig, &sent, v1::Outcome::Failed).await;
    let told = handed_over(&rig, &mut rx, 2).await;
    let kinds: BTreeSet<&str> = told.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["host-failed", "campaign-paused"]));
    let failed = told.iter().find(|r| r.event == "host-failed").unwrap();
    assert_eq!(failed.host_id, sent.host);
    let body: serde_json::Value = serde_json::from_str(&failed.payload).unwrap();
    assert_eq!(body["host"]["id"], sent.host.as_str());
    assert!(
        body["message"].as_str().unwrap().contains("failed"),
        "{body}"
    );
    assert!(told.iter().all(|r| r.webhook == "ops"));
}
