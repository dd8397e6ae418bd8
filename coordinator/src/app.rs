//! The coordinator's parts, opened together: config, CA, store, event log, operators' directory,
//! live sessions and the campaign engine, plus the background duties that keep liveness out of the store.
//!
//! Layering: `server` (gRPC) → `app` → `engine` → {`store`, `scheduler`}; nothing points back.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::ca::Ca;
use crate::config::{CoordinatorConfig, DataDir};
use crate::dashboard::auth::DashboardAuth;
use crate::engine::{Engine, EngineSettings, EngineTask};
use crate::events::EventLog;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::notify::http::Poster;
use crate::notify::{DeliveryMetrics, Notifier, NotifySink};
use crate::operators::OperatorDirectory;
use crate::registry::Registry;
use crate::store::Store;

/// How often last-seen times reach the store (nothing after a restart depends on their
/// precision; the live value is in memory).
const LAST_SEEN_FLUSH: Duration = Duration::from_secs(10);
/// How often silent sessions are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often the event log is cut to its retention.
const PRUNE_EVENTS_EVERY: Duration = Duration::from_secs(3600);

/// Everything the services share.
pub struct Coordinator {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub events: Arc<EventLog>,
    /// Every operator certificate issued, with its role: what each Admin call is checked
    /// against (loaded from the store at start, changed after the store is).
    pub operators: Arc<OperatorDirectory>,
    pub ca: Ca,
    pub config: CoordinatorConfig,
    /// Campaigns and manual maintenance: one owner, committed before acted on.
    pub engine: Engine,
    /// What `GET /metrics` shows (served when `metrics_listen` is set).
    pub metrics: Arc<Metrics>,
    /// The web dashboard's login links and browser sessions (served when `dashboard_listen`
    /// is set).
    pub dashboard: Arc<DashboardAuth>,
}

impl Coordinator {
    /// Reads the config and opens (and migrates) the store. `postgres_url`, when given
    /// (`serve --postgres-url`), overrides `[store] postgres_url`.
    pub async fn open_store(
        data_dir: &DataDir,
        postgres_url: Option<String>,
    ) -> anyhow::Result<(CoordinatorConfig, Arc<Store>)> {
        let mut config = CoordinatorConfig::load(&data_dir.config())?;
        if postgres_url.is_some() {
            config.store.postgres_url = postgres_url;
        }
        let location = config
            .store
            .location(data_dir, std::env::var(crate::config::PG_PASSWORD_ENV).ok())
            .map_err(anyhow::Error::msg)?;
        let store = Arc::new(
            tokio::task::spawn_blocking(move || Store::open_at(&location))
                .await
                .context("opening the store")?
                .context("opening the store")?,
        );
        Ok((config, store))
    }

    /// Loads the engine, which leads under `leadership`, and starts the background duties.
    /// The returned task is the engine's loop: the caller must treat its end as fatal.
    pub async fn start(
        data_dir: &DataDir,
        config: CoordinatorConfig,
        store: Arc<Store>,
        leadership: Leadership,
    ) -> anyhow::Result<(Arc<Coordinator>, EngineTask)> {
        let ca = Ca::load(&data_dir.root)?;
        let events = Arc::new(EventLog::new(store.clone()));
        let operators = Arc::new(
            crate::operators::load(&store, &events, &data_dir.operator_dir())
                .await
                .context("loading the operators' certificates")?,
        );
        let registry = Arc::new(Registry::default());
        // Webhooks: what was left pending is read before the engine's first turn, so a
        // delivery is started once, from the store or from the engine, never from both.
        let webhooks = config.load_webhooks().map_err(anyhow::Error::msg)?;
        let pending = store
            .pending_deliveries()
            .await
            .context("reading the pending webhook deliveries")?;
        let (sink, deliveries) = NotifySink::channel();
        let settings = EngineSettings {
            reconnect_grace: Duration::from_secs(u64::from(config.heartbeat_timeout_seconds) * 2),
            leadership,
            archive_after: config.campaign_archive_after,
            clock: crate::engine::Clock::System,
            webhooks: webhooks.clone(),
            notify: Some(sink),
        };
        let (engine, task) =
            Engine::start(store.clone(), events.clone(), registry.clone(), settings)
                .await
                .context("loading the campaigns")?;
        let delivery_metrics = DeliveryMetrics::default();
        let notifier = Notifier::new(
            store.clone(),
            &webhooks,
            Poster::new(crate::notify::REQUEST_TIMEOUT),
            delivery_metrics.clone(),
        );
        tokio::spawn(notifier.run(pending, deliveries));
        let metrics = Arc::new(Metrics::new(
            engine.metrics(),
            &store,
            registry.clone(),
            &delivery_metrics,
        ));
        let coordinator = Arc::new(Coordinator {
            metrics,
            dashboard: Arc::new(DashboardAuth::default()),
            store,
            registry,
            events,
            operators,
            ca,
            config,
            engine,
        });
        tokio::spawn(sweep_silent_sessions(coordinator.clone()));
        tokio::spawn(flush_last_seen(coordinator.clone()));
        tokio::spawn(prune_events(coordinator.clone()));
        Ok((coordinator, task))
    }
}

/// Closes sessions silent past the heartbeat timeout.
async fn sweep_silent_sessions(c: Arc<Coordinator>) {
    let timeout_ms = i64::from(c.config.heartbeat_timeout_seconds) * 1000;
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        c.registry.close_silent(pitcrew_proto::now_ms(), timeout_ms);
    }
}

/// Keeps the event log within its retention (`[events]` of coordinator.toml).
async fn prune_events(c: Arc<Coordinator>) {
    let mut tick = tokio::time::interval(PRUNE_EVENTS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let max_age_ms = i64::try_from(c.config.events.max_age.as_millis()).unwrap_or(i64::MAX);
        let before = pitcrew_proto::now_ms().saturating_sub(max_age_ms);
        let keep = c.config.events.max_events;
        match c.store.prune_events(before, keep).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(message = "pruned the event log", deleted),
            Err(error) => tracing::warn!(message = "cannot prune the event log", %error),
        }
        // Finished webhook deliveries are kept as long as the events they tell of.
        match c.store.prune_deliveries(before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(message = "pruned the webhook delivery record", deleted),
            Err(error) => {
                tracing::warn!(message = "cannot prune the webhook delivery record", %error)
            }
        }
    }
}

/// Writes the last-seen times that changed, all in one job.
async fn flush_last_seen(c: Arc<Coordinator>) {
    let mut tick = tokio::time::interval(LAST_SEEN_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let changes = c.registry.last_seen_changes();
        if changes.is_empty() {
            continue;
        }
        if let Err(error) = c.store.set_last_seen(changes).await {
            tracing::warn!(message = "cannot record when hosts were last seen", %error);
        }
    }
}
