//! Webhook notifications: campaign started, paused and finished, a host failed or blocked
//! longer than a threshold, posted as JSON (or Slack's shape) to the `[[webhook]]`s of
//! coordinator.toml.
//!
//! **Decided in the engine's turn, delivered after it.** The engine decides what to notify
//! while it applies a turn (`engine/state/notify.rs`) and writes one delivery record per
//! notification and webhook in the turn's own transaction. Only once that is durable does it
//! hand the records to the [`Notifier`] through an unbounded channel ([`NotifySink`]), so the
//! engine never waits on a receiver, and a crash between commit and delivery loses nothing:
//! at start the notifier takes every pending record from the store. Delivery is at least
//! once; the notification's id is in the body and in `X-Pitcrew-Event-Id` for receivers to
//! drop repeats.
//!
//! **One slow receiver holds up only itself.** Each delivery is a task of its own; each
//! webhook has its own small semaphore of requests in flight, and each request its timeout.
//! A failed attempt is retried with exponential backoff (`backoff.rs`; a `Retry-After` is
//! honoured) up to a bounded number of attempts, then the record is marked failed. Every
//! attempt's outcome is written to the record (`pitcrew notifications` shows it).

pub mod backoff;
pub mod config;
pub mod event;
pub mod http;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{Semaphore, mpsc};

pub use config::{Format, Webhook, WebhookConfig};
pub use event::{EventKind, Notice};

use crate::store::{DeliveryRecord, DeliveryState, Store};

/// Requests in flight towards one webhook at once.
const PER_WEBHOOK_CONCURRENCY: usize = 4;
/// One attempt's limit: connecting, TLS and the answer's head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `last_error` kept.
const MAX_ERROR: usize = 300;

/// The engine's side: committed delivery records, handed over without waiting.
#[derive(Debug, Clone)]
pub struct NotifySink(mpsc::UnboundedSender<DeliveryRecord>);

impl NotifySink {
    /// A sink and the receiver a [`Notifier`] reads.
    pub fn channel() -> (NotifySink, mpsc::UnboundedReceiver<DeliveryRecord>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (NotifySink(tx), rx)
    }

    /// Hands over records that are durable. A stopped notifier loses nothing: the records
    /// stay pending in the store for the next start.
    pub fn deliver(&self, records: Vec<DeliveryRecord>) {
        for record in records {
            let _ = self.0.send(record);
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabel {
    webhook: String,
    /// delivered, retried (an attempt failed and another is due), failed (given up).
    outcome: &'static str,
}

/// `pitcrew_webhook_deliveries_total`.
#[derive(Debug, Clone, Default)]
pub struct DeliveryMetrics(Family<DeliveryLabel, Counter>);

impl DeliveryMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "pitcrew_webhook_deliveries",
            "Webhook delivery attempts since the coordinator started, by webhook and outcome (delivered; retried: failed, another attempt is due; failed: given up)",
            self.0.clone(),
        );
    }

    fn count(&self, webhook: &str, outcome: &'static str) {
        self.0
            .get_or_create(&DeliveryLabel {
                webhook: webhook.to_owned(),
                outcome,
            })
            .inc();
    }
}

/// Delivers records: those pending at start, then those the engine hands over.
pub struct Notifier {
    store: Arc<Store>,
    poster: http::Poster,
    webhooks: HashMap<String, (Webhook, Arc<Semaphore>)>,
    metrics: DeliveryMetrics,
}

impl Notifier {
    pub fn new(
        store: Arc<Store>,
        webhooks: &[Webhook],
        poster: http::Poster,
        metrics: DeliveryMetrics,
    ) -> Notifier {
        Notifier {
            store,
            poster,
            webhooks: webhooks
                .iter()
                .map(|w| {
                    (
                        w.name.clone(),
                        (w.clone(), Arc::new(Semaphore::new(PER_WEBHOOK_CONCURRENCY))),
                    )
                })
                .collect(),
            metrics,
        }
    }

    /// Runs until the sink is gone: starts a task per delivery.
    pub async fn run(
        self,
        pending: Vec<DeliveryRecord>,
        mut incoming: mpsc::UnboundedReceiver<DeliveryRecord>,
    ) {
        let this = Arc::new(self);
        if !pending.is_empty() {
            tracing::info!(
                message = "webhooks: resuming deliveries left pending",
                count = pending.len()
            );
        }
        for record in pending {
            this.start(record);
        }
        while let Some(record) = incoming.recv().await {
            this.start(record);
        }
    }

    fn start(self: &Arc<Self>, record: DeliveryRecord) {
        let this = self.clone();
        tokio::spawn(async move { this.deliver(record).await });
    }

    /// Tries one delivery until it is delivered or given up, recording every attempt.
    async fn deliver(&self, mut record: DeliveryRecord) {
        let Some((webhook, slots)) = self.webhooks.get(&record.webhook) else {
            // Configured when the notification was decided, gone since (a restart with a
            // changed coordinator.toml).
            record.state = DeliveryState::Failed;
            record.last_error = format!(
                "webhook {:?} is no longer in coordinator.toml",
                record.webhook
            );
            self.record(&record).await;
            return;
        };
        loop {
            let wait_ms = record.next_attempt_ms - pitcrew_proto::now_ms();
            if wait_ms > 0 {
                tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
            }
            let answer = {
                let Ok(_permit) = slots.acquire().await else {
                    return;
                };
                let headers = headers(webhook, &record);
                self.poster
                    .post(&webhook.url, &headers, record.payload.clone())
                    .await
            };
            record.attempts += 1;
            let now = pitcrew_proto::now_ms();
            let (status, retry_after, error) = match answer {
                Ok(answer) if (200..300).contains(&answer.status) => {
                    record.state = DeliveryState::Delivered;
                    record.delivered_at_ms = now;
                    self.metrics.count(&record.webhook, "delivered");
                    tracing::info!(
                        message = "webhook delivered",
                        webhook = %record.webhook,
                        event = %record.event,
                        id = %record.id,
                        attempts = record.attempts
                    );
                    self.record(&record).await;
                    return;
                }
                Ok(answer) => (
                    Some(answer.status),
                    answer.retry_after,
                    format!("HTTP {}", status_line(answer.status)),
                ),
                Err(error) => (None, None, error),
            };
            record.last_error = bounded(error);
            match backoff::after_failure(
                record.attempts,
                status,
                retry_after.as_deref(),
                SystemTime::now(),
            ) {
                backoff::Next::RetryIn(wait) => {
                    record.next_attempt_ms =
                        now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                    self.metrics.count(&record.webhook, "retried");
                    tracing::warn!(
                        message = "webhook delivery failed; trying again",
                        webhook = %record.webhook,
                        id = %record.id,
                        attempts = record.attempts,
                        retry_in_s = wait.as_secs(),
                        error = %record.last_error
                    );
                    self.record(&record).await;
                }
                backoff::Next::GiveUp => {
                    record.state = DeliveryState::Failed;
                    self.metrics.count(&record.webhook, "failed");
                    tracing::error!(
                        message = "webhook delivery failed; giving up",
                        webhook = %record.webhook,
                        id = %record.id,
                        attempts = record.attempts,
                        error = %record.last_error
                    );
                    self.record(&record).await;
                    return;
                }
            }
        }
    }

    async fn record(&self, record: &DeliveryRecord) {
        if let Err(error) = self.store.record_delivery(record.clone()).await {
            tracing::warn!(message = "webhooks: cannot record a delivery attempt", id = %record.id, %error);
        }
    }
}

/// The headers of one delivery: its id, event and, with a secret, the body's signature.
fn headers(webhook: &Webhook, record: &DeliveryRecord) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("x-pitcrew-event-id", record.id.clone()),
        ("x-pitcrew-event", record.event.clone()),
    ];
    if let Some(secret) = &webhook.secret {
        headers.push((
            "x-pitcrew-signature",
            event::signature(secret, record.payload.as_bytes()),
        ));
    }
    headers
}

fn status_line(status: u16) -> String {
    match hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

fn bounded(mut text: String) -> String {
    if text.len() > MAX_ERROR {
        let mut cut = MAX_ERROR;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}
