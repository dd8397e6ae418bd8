//! Prometheus metrics: one registry for the coordinator's parts, and a small plain-HTTP
//! listener that answers `GET /metrics` with it in the OpenMetrics text format (anything else
//! is 404). The address is `metrics_listen` in coordinator.toml (loopback by default, "" for
//! none).
//!
//! A scrape only reads values the parts keep current as they change (the engine publishes its
//! counts once each turn is durable, the store's writer observes each commit, enrollment
//! counts its refusals); nothing is computed from the fleet or read from the store at scrape
//! time, and a scrape never waits on the engine's loop or on an agent's session. The encoding
//! is a few hundred lines of text, done on the scrape's own connection task.
//!
//! Served with hyper's HTTP/1 connection directly (hyper comes with tonic): one route does not
//! need a router. Scrapers are trusted no further than their address allows: connections are
//! capped, each has a deadline for its request head and a lifetime.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::engine::EngineMetrics;
use crate::registry::Registry as Sessions;
use crate::store::Store;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrape connections open at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 16;
/// A scraper has this long to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A scrape connection is closed after this long, whatever it does.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Why an enrollment was refused, as the metrics name it (a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnrollRefusal {
    /// Too many refusals from the source within the minute: turned away unread.
    RateLimited,
    InvalidHostId,
    InvalidHostname,
    InvalidCsr,
    TokenUnknown,
    TokenExpired,
    TokenRevoked,
    TokenUsedUp,
    /// The host id is enrolled; re-enrolling needs a token made for it.
    HostEnrolled,
    /// The host was removed; bringing it back needs a token made for it.
    HostRemoved,
    /// A re-enrollment token used for another host.
    TokenForAnotherHost,
    HostnameTaken,
}

impl EnrollRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollRefusal::RateLimited => "rate_limited",
            EnrollRefusal::InvalidHostId => "invalid_host_id",
            EnrollRefusal::InvalidHostname => "invalid_hostname",
            EnrollRefusal::InvalidCsr => "invalid_csr",
            EnrollRefusal::TokenUnknown => "token_unknown",
            EnrollRefusal::TokenExpired => "token_expired",
            EnrollRefusal::TokenRevoked => "token_revoked",
            EnrollRefusal::TokenUsedUp => "token_used_up",
            EnrollRefusal::HostEnrolled => "host_enrolled",
            EnrollRefusal::HostRemoved => "host_removed",
            EnrollRefusal::TokenForAnotherHost => "token_for_another_host",
            EnrollRefusal::HostnameTaken => "hostname_taken",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Live agent sessions, read from the registry at scrape time (one lock, no walk).
struct SessionCount(Arc<Sessions>);

impl std::fmt::Debug for SessionCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCount")
    }
}

impl Collector for SessionCount {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sessions = i64::try_from(self.0.connected_count()).unwrap_or(i64::MAX);
        let gauge = ConstGauge::new(sessions);
        let metric = encoder.encode_descriptor(
            "pitcrew_agent_sessions",
            "Agent sessions open now.",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// The coordinator's metrics.
pub struct Metrics {
    registry: Registry,
    enrollments_refused: Family<ReasonLabel, Counter>,
}

impl Metrics {
    /// One registry for the engine's families, the store's commit times, the live sessions
    /// and refused enrollments.
    pub fn new(
        engine: &EngineMetrics,
        store: &Store,
        sessions: Arc<Sessions>,
        deliveries: &crate::notify::DeliveryMetrics,
    ) -> Metrics {
        let mut registry = Registry::default();
        engine.register(&mut registry);
        deliveries.register(&mut registry);
        registry.register(
            "pitcrew_store_commit_duration_seconds",
            "Time of each store transaction, from its start to the end of its commit (fsync included); one transaction carries every write queued meanwhile",
            store.commit_seconds(),
        );
        registry.register_collector(Box::new(SessionCount(sessions)));
        let enrollments_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "pitcrew_enrollments_refused",
            "Enrollments refused since the coordinator started, by reason (rate_limited: turned away unread after too many refusals from one address)",
            enrollments_refused.clone(),
        );
        Metrics {
            registry,
            enrollments_refused,
        }
    }

    /// Counts a refused enrollment.
    pub fn enrollment_refused(&self, reason: EnrollRefusal) {
        self.enrollments_refused
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(message = "cannot encode the metrics", %error);
        }
        text
    }
}

/// Answers one request: `GET /metrics`, or 404.
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() == Method::GET && request.uri().path() == "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
        );
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"not found: pitcrew serves GET /metrics only\n",
    )));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let room = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: the gRPC server has the same problem;
                // try again shortly rather than spin.
                tracing::warn!(message = "the metrics listener cannot accept", %error);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = room.clone().try_acquire_owned() else {
            tracing::debug!(message = "too many metrics connections; closed one", %peer);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(&metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(error)) => {
                    tracing::debug!(message = "a metrics connection failed", %peer, %error)
                }
            }
            drop(permit);
        });
    }
}
