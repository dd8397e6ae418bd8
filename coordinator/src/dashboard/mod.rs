//! The web dashboard: HTTPS on `dashboard_listen` (coordinator.toml) with the coordinator's
//! server certificate, a page and a small script embedded in the binary, JSON pushed as
//! server-sent events, and POSTs for operators' campaign controls.
//!
//! * **Who**: a browser signs in with a one-time link from `pitcrew dashboard` and then holds
//!   a session cookie bound to that operator's certificate; every request asks the operators'
//!   directory for the role again (see [`auth`]). Viewers see; operators and admins also pause,
//!   resume, retry, skip and release, through the same engine commands as the Admin API, which
//!   audit them with the operator's name.
//! * **What**: everything shown comes from the engine's state (its fleet view, runs and the
//!   last turn's blockers), except a host's event log, read from the event log like `pitcrew
//!   events`, and the compliance page, which reads its page of host records (their facts) like
//!   `pitcrew report compliance`, at most every [`COMPLIANCE_PUSH_EVERY`]. Nothing else
//!   re-reads the store per push.
//! * **Pushes**: each open page has one event stream. It waits on the engine's change
//!   counters (`watch` channels: the engine only bumps a number, never waits on a reader),
//!   then builds one view, at most every [`CAMPAIGN_PUSH_EVERY`] (fleet: [`FLEET_PUSH_EVERY`])
//!   however many turns happened meanwhile, and sends it only if it changed. A slow browser
//!   just makes its stream ask later: nothing is queued for it. A stream ends when its
//!   session does (revoked, expired), saying so.
//!
//! Served with axum over hyper's HTTP/1 on rustls, like the metrics listener: connections
//! are capped, handshakes and request heads have deadlines, open streams are capped.

pub mod auth;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::app::Coordinator;
use crate::config::DataDir;
use crate::engine::{
    CampaignControl, CampaignView, EngineError, FleetTable, Hold, HostControl, HostPage,
};
use crate::store::{EventFilter, EventRecord};
use auth::{AuthError, Principal};

/// Connections open at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;
/// Event streams open at once (each open page holds one).
const MAX_STREAMS: usize = 128;
/// A TLS handshake not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A browser has this long to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most often a campaign's page is pushed a new view.
pub const CAMPAIGN_PUSH_EVERY: Duration = Duration::from_millis(250);
/// The most often the fleet page is pushed a new table.
pub const FLEET_PUSH_EVERY: Duration = Duration::from_secs(1);
/// Hosts a campaign's page shows (in run order; counts cover them all).
const CAMPAIGN_HOSTS_SHOWN: usize = 1000;
/// Hosts the fleet page shows (by hostname; filters narrow them).
const FLEET_HOSTS_SHOWN: usize = 1000;
/// The most often the compliance page is pushed a new report: it reads its page of host
/// records (with their facts) from the store, and what it shows moves slowly.
pub const COMPLIANCE_PUSH_EVERY: Duration = Duration::from_secs(5);
/// Hosts the compliance page shows (by hostname; `pitcrew report compliance` has them all).
const COMPLIANCE_HOSTS_SHOWN: u32 = 1000;
/// Events a host's page starts with (the newest).
const HOST_EVENTS_SHOWN: u32 = 200;
/// An idle stream says it is alive this often (so a dead connection is noticed).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the dashboard's handlers share.
#[derive(Clone)]
struct App {
    c: Arc<Coordinator>,
    streams: Arc<Semaphore>,
}

/// The TLS configuration: the coordinator's server certificate (with the fleet CA in the
/// chain), no client certificates asked of browsers, HTTP/1.1.
pub fn tls_config(data_dir: &DataDir) -> anyhow::Result<rustls::ServerConfig> {
    use pitcrew_proto::tls;
    let mut chain = tls::load_certs(&data_dir.server_cert())?;
    chain.extend(tls::load_certs(&data_dir.ca_cert())?);
    let key = tls::load_key(&data_dir.server_key())?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the dashboard on `listener` until the process ends.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, c: Arc<Coordinator>) {
    let router = router(App {
        c,
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let room = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(message = "the dashboard listener cannot accept", %error);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = room.clone().try_acquire_owned() else {
            tracing::debug!(message = "too many dashboard connections; closed one", %peer);
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(message = "a dashboard TLS handshake failed", %peer, %error);
                    return;
                }
                Err(_) => return,
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router));
            if let Err(error) = connection.await {
                tracing::debug!(message = "a dashboard connection failed", %peer, %error);
            }
            drop(permit);
        });
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/campaigns/{id}", get(page))
        .route("/hosts/{id}", get(page))
        .route("/compliance", get(page))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
        .route("/login", get(login))
        .route("/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/fleet/stream", get(fleet_stream))
        .route("/api/campaigns/{id}/stream", get(campaign_stream))
        .route("/api/campaigns/{id}/{control}", post(control_campaign))
        .route(
            "/api/campaigns/{id}/hosts/{host}/{control}",
            post(control_host),
        )
        .route("/api/hosts/{id}/stream", get(host_stream))
        .route("/api/compliance/stream", get(compliance_stream))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

/// Every answer: no caching, no framing, no sniffing, no referrer (a login link's secret
/// never leaves in one), and only the dashboard's own script and style.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A refusal or failure as the browser reads it: a status and `{"error": "..."}`.
#[derive(Debug)]
struct Failure(StatusCode, String);

impl From<AuthError> for Failure {
    fn from(error: AuthError) -> Failure {
        Failure(
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::FORBIDDEN),
            error.to_string(),
        )
    }
}

impl From<EngineError> for Failure {
    fn from(error: EngineError) -> Failure {
        let status = match &error {
            EngineError::Spec(_) => StatusCode::BAD_REQUEST,
            EngineError::Schedule(_) => StatusCode::BAD_REQUEST,
            EngineError::UnknownCampaign(_)
            | EngineError::UnknownHost(_)
            | EngineError::UnknownSchedule(_) => StatusCode::NOT_FOUND,
            EngineError::AlreadyRunning { .. } => StatusCode::CONFLICT,
            EngineError::Plan(_)
            | EngineError::Apply(_)
            | EngineError::Manual(_)
            | EngineError::Refused(_)
            | EngineError::HostBusy { .. } => StatusCode::CONFLICT,
            EngineError::Stopped | EngineError::NotLeading(_) => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, error.to_string())
    }
}

/// The Admin API's reads the dashboard shares (the compliance report) answer gRPC statuses.
impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Failure {
        let code = match status.code() {
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(code, status.message().to_owned())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn cookie_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::COOKIE).and_then(|v| v.to_str().ok())
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl App {
    /// The signed-in browser making this request.
    fn who(&self, cookie: Option<&str>) -> Result<Principal, AuthError> {
        self.c
            .dashboard
            .authenticate(cookie, &self.c.operators, pitcrew_proto::now_ms())
    }

    /// The signed-in browser making this state-changing request, if it may.
    fn actor(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let who = self.who(cookie_header(headers))?;
        auth::authorize_action(
            &who,
            header_text(headers, auth::CSRF_HEADER),
            header_text(headers, "origin"),
            header_text(headers, "host"),
        )?;
        Ok(who)
    }

    /// A slot for one more event stream.
    fn stream_slot(&self) -> Result<OwnedSemaphorePermit, Failure> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| AuthError::Busy("open dashboard pages").into())
    }
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

async fn not_found() -> Failure {
    Failure(StatusCode::NOT_FOUND, "no such page".into())
}

/// Text made safe to put in HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    token: String,
}

/// Trades a login link for a session cookie, then moves on to the fleet page from this page
/// itself (so the strict cookie goes with the next request however the link was opened).
async fn login(State(app): State<App>, Query(q): Query<LoginQuery>) -> Response {
    let page = |title: &str, body: &str| {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>pitcrew</title>{}<link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body><main><h1>{}</h1><p>{}</p></main></body></html>",
            if title == "Signed in" {
                "<meta http-equiv=\"refresh\" content=\"0;url=/\">"
            } else {
                ""
            },
            escape(title),
            escape(body)
        )
    };
    match app
        .c
        .dashboard
        .redeem(&q.token, &app.c.operators, pitcrew_proto::now_ms())
    {
        Ok((secret, who)) => {
            let max_age = Duration::from_millis(
                u64::try_from(who.expires_at_ms - pitcrew_proto::now_ms()).unwrap_or(0),
            );
            tracing::info!(message = "dashboard session opened", operator = %who.name, role = %who.role);
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
                    (header::SET_COOKIE, auth::set_cookie(&secret, max_age)),
                ],
                page(
                    "Signed in",
                    &format!("Signed in as {} ({}).", who.name, who.role),
                ),
            )
                .into_response()
        }
        Err(error) => (
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            page("Not signed in", &error.to_string()),
        )
            .into_response(),
    }
}

async fn logout(State(app): State<App>, headers: HeaderMap) -> Result<Response, Failure> {
    let who = app.who(cookie_header(&headers))?;
    if header_text(&headers, auth::CSRF_HEADER).is_none_or(|t| !auth::same(t, &who.csrf)) {
        return Err(AuthError::Forbidden("anti-CSRF token missing or wrong".into()).into());
    }
    app.c.dashboard.sign_out(cookie_header(&headers));
    Ok((
        [(header::SET_COOKIE, auth::clear_cookie())],
        axum::Json(json!({ "signed_out": true })),
    )
        .into_response())
}

async fn me(State(app): State<App>, headers: HeaderMap) -> Result<axum::Json<Value>, Failure> {
    let who = app.who(cookie_header(&headers))?;
    Ok(axum::Json(json!({
        "name": who.name,
        "role": who.role.as_str(),
        "may_act": who.may_act(),
        "csrf": who.csrf,
        "expires_at_ms": who.expires_at_ms,
    })))
}

async fn control_campaign(
    State(app): State<App>,
    Path((id, control)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Failure> {
    let control = match control.as_str() {
        "pause" => CampaignControl::Pause,
        "resume" => CampaignControl::Resume,
        _ => return Err(Failure(StatusCode::NOT_FOUND, "no such control".into())),
    };
    let who = app.actor(&headers)?;
    // The Admin API's own command: it checks the state and audits with the operator's name.
    let view = app.c.engine.control(who.name, id, control).await?;
    Ok(axum::Json(campaign_json(&view)))
}

async fn control_host(
    State(app): State<App>,
    Path((id, host, control)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Failure> {
    let control = match control.as_str() {
        "retry" => HostControl::Retry,
        "skip" => HostControl::Skip,
        "release" => HostControl::Release,
        _ => return Err(Failure(StatusCode::NOT_FOUND, "no such control".into())),
    };
    let who = app.actor(&headers)?;
    let view = app
        .c
        .engine
        .control_host(who.name, id, host, control)
        .await?;
    Ok(axum::Json(campaign_json(&view)))
}

/// One server-sent event.
fn event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// The event that ends a stream whose session ended, saying why.
fn signed_out(error: &AuthError) -> Event {
    event("signed_out", &json!({ "error": error.to_string() }))
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type Events = Sse<axum::response::sse::KeepAliveStream<EventStream>>;

fn sse(stream: impl Stream<Item = Event> + Send + 'static) -> Events {
    use futures::StreamExt;
    let stream: EventStream = Box::pin(stream.map(Ok));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// What one stream needs to follow a page: its session, the engine's change counter it
/// waits on, the directory's revocations, and its slot.
struct Feed<S> {
    app: App,
    cookie: String,
    changes: watch::Receiver<u64>,
    revocations: watch::Receiver<u64>,
    /// When the next push may be sent at the earliest.
    next_at: Instant,
    every: Duration,
    first: bool,
    /// What the page was last sent (pushes only what differs).
    last: Option<String>,
    /// What the page follows.
    what: S,
    _slot: OwnedSemaphorePermit,
}

impl<S> Feed<S> {
    /// Waits for the next reason to look again (a change, or a revocation), no sooner than
    /// the push interval allows; `false` when the coordinator is going away.
    async fn wait(&mut self) -> bool {
        if self.first {
            self.first = false;
            return true;
        }
        tokio::select! {
            changed = self.changes.changed() => if changed.is_err() { return false },
            changed = self.revocations.changed() => if changed.is_err() { return false },
        }
        tokio::time::sleep_until(self.next_at).await;
        // Every change up to now is in the view about to be built.
        self.changes.borrow_and_update();
        true
    }

    fn who(&self) -> Result<Principal, AuthError> {
        self.app.who(Some(&self.cookie))
    }

    /// Whether `data` differs from what the page has; records it as sent if so.
    fn fresh(&mut self, data: &Value) -> bool {
        let text = data.to_string();
        if self.last.as_deref() == Some(text.as_str()) {
            return false;
        }
        self.last = Some(text);
        self.next_at = Instant::now() + self.every;
        true
    }
}

fn feed<S>(
    app: &App,
    headers: &HeaderMap,
    changes: watch::Receiver<u64>,
    every: Duration,
    what: S,
) -> Result<Feed<S>, Failure> {
    let cookie = cookie_header(headers).unwrap_or_default().to_owned();
    app.who(Some(&cookie))?;
    let slot = app.stream_slot()?;
    Ok(Feed {
        revocations: app.c.operators.subscribe(),
        app: app.clone(),
        cookie,
        changes,
        next_at: Instant::now(),
        every,
        first: true,
        last: None,
        what,
        _slot: slot,
    })
}

/// The pushes of a page that shows a view: after each change (at most every push interval),
/// `build` makes the view from what the page follows and it is sent as `name` if it differs from
/// the last one; a revoked or expired session ends the stream with `signed_out`, an error with
/// `failed`.
fn view_pushes<S, B, F>(
    feed: Feed<S>,
    name: &'static str,
    build: B,
) -> impl Stream<Item = Event> + Send + 'static
where
    S: Clone + Send + 'static,
    B: Fn(App, S) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Result<Value, Failure>> + Send,
{
    futures::stream::unfold(Some(feed), move |state| {
        let build = build.clone();
        async move {
            let mut feed = state?;
            loop {
                if !feed.wait().await {
                    return None;
                }
                if let Err(error) = feed.who() {
                    return Some((signed_out(&error), None));
                }
                match build(feed.app.clone(), feed.what.clone()).await {
                    Ok(data) => {
                        if feed.fresh(&data) {
                            return Some((event(name, &data), Some(feed)));
                        }
                    }
                    Err(failure) => {
                        let data = json!({ "error": failure.1, "status": failure.0.as_u16() });
                        return Some((event("failed", &data), None));
                    }
                }
            }
        }
    })
}

async fn campaign_stream(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Events, Failure> {
    let changes = app.c.engine.subscribe();
    let feed = feed(&app, &headers, changes, CAMPAIGN_PUSH_EVERY, id)?;
    Ok(sse(view_pushes(
        feed,
        "campaign",
        |app: App, id| async move {
            let page = HostPage::Range {
                offset: 0,
                limit: CAMPAIGN_HOSTS_SHOWN,
            };
            let view = app.c.engine.view(id, page).await?;
            Ok(campaign_json(&view))
        },
    )))
}

/// The fleet page's filters.
#[derive(Debug, Clone, Default, Deserialize)]
struct FleetFilter {
    #[serde(default)]
    role: String,
    /// `key=value`, or `key` for any value.
    #[serde(default)]
    label: String,
    /// A host state (running, entering, maintenance, leaving, failed, ...).
    #[serde(default)]
    state: String,
    /// `yes` or `no`.
    #[serde(default)]
    connected: String,
}

impl FleetFilter {
    fn keeps(&self, view: &pitcrew_scheduler::HostView, hold: &Hold) -> bool {
        let label_ok = match self.label.split_once('=') {
            _ if self.label.is_empty() => true,
            Some((k, v)) => view
                .labels
                .get(k.trim())
                .is_some_and(|have| have == v.trim()),
            None => view.labels.contains_key(self.label.trim()),
        };
        (self.role.is_empty() || view.role.as_str() == self.role)
            && label_ok
            && (self.state.is_empty() || hold.state == self.state)
            && match self.connected.as_str() {
                "yes" => view.connected,
                "no" => !view.connected,
                _ => true,
            }
    }
}

async fn fleet_stream(
    State(app): State<App>,
    Query(filter): Query<FleetFilter>,
    headers: HeaderMap,
) -> Result<Events, Failure> {
    let changes = app.c.engine.subscribe_fleet();
    let feed = feed(&app, &headers, changes, FLEET_PUSH_EVERY, filter)?;
    Ok(sse(view_pushes(
        feed,
        "fleet",
        |app: App, filter: FleetFilter| async move {
            let keep =
                move |view: &pitcrew_scheduler::HostView, hold: &Hold| filter.keeps(view, hold);
            let table = app.c.engine.fleet_table(keep, FLEET_HOSTS_SHOWN).await?;
            Ok(fleet_json(&table))
        },
    )))
}

/// The compliance page's filters (those of `pitcrew report compliance`).
#[derive(Debug, Clone, Default, Deserialize)]
struct ComplianceFilter {
    #[serde(default)]
    role: String,
    /// `key=value`.
    #[serde(default)]
    label: String,
}

/// The compliance page: per host, its agent version, reboot required, pending updates and
/// when each campaign last succeeded on it; the same rows as `pitcrew report compliance`.
async fn compliance_stream(
    State(app): State<App>,
    Query(filter): Query<ComplianceFilter>,
    headers: HeaderMap,
) -> Result<Events, Failure> {
    let changes = app.c.engine.subscribe_fleet();
    let feed = feed(&app, &headers, changes, COMPLIANCE_PUSH_EVERY, filter)?;
    Ok(sse(view_pushes(
        feed,
        "compliance",
        |app: App, filter: ComplianceFilter| async move {
            let request = pitcrew_proto::v1::ListHostsRequest {
                role: filter.role,
                label: filter.label,
                page_size: COMPLIANCE_HOSTS_SHOWN,
                ..Default::default()
            };
            let page = crate::server::admin::compliance_page(&app.c, request).await?;
            Ok(compliance_json(&page))
        },
    )))
}

/// A host's page: the host as the engine sees it and its event log, then each new event.
async fn host_stream(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Events, Failure> {
    // Subscribe first, then read the backlog, then skip live events already in it.
    let live = app.c.events.subscribe();
    let feed = feed(
        &app,
        &headers,
        app.c.engine.subscribe_fleet(),
        FLEET_PUSH_EVERY,
        (id.clone(), live, 0i64),
    )?;
    let host = app.c.engine.host(id.clone()).await?;
    let filter = EventFilter {
        host_id: Some(id.clone()),
        limit: HOST_EVENTS_SHOWN,
        ..Default::default()
    };
    let backlog = app
        .c
        .store
        .list_events(filter)
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut feed = feed;
    feed.first = false;
    feed.what.2 = backlog.last().map(|e| e.id).unwrap_or(0);
    let first = event(
        "host",
        &json!({
            "host_id": id,
            "host": host.as_ref().map(|(view, hold)| host_row_json(view, hold)),
            "events": backlog.iter().map(event_json).collect::<Vec<_>>(),
        }),
    );
    let rest = futures::stream::unfold(Some(feed), |state| async move {
        let mut feed = state?;
        loop {
            let received = tokio::select! {
                received = feed.what.1.recv() => received,
                changed = feed.revocations.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    if let Err(error) = feed.who() {
                        return Some((signed_out(&error), None));
                    }
                    continue;
                }
            };
            match received {
                Ok(record) => {
                    if record.id <= feed.what.2 || record.host_id != feed.what.0 {
                        continue;
                    }
                    if let Err(error) = feed.who() {
                        return Some((signed_out(&error), None));
                    }
                    feed.what.2 = record.id;
                    return Some((event("event", &event_json(&record)), Some(feed)));
                }
                // Fell behind the log: the page reloads it (the browser reconnects).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    return Some((event("reload", &json!({})), None));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(sse(futures::stream::once(async { first }).chain_ready(rest)))
}

/// `stream.chain(other)` without importing `StreamExt` into every handler.
trait ChainReady: Stream + Sized {
    fn chain_ready<S: Stream<Item = Self::Item>>(
        self,
        other: S,
    ) -> futures::stream::Chain<Self, S> {
        futures::StreamExt::chain(self, other)
    }
}

impl<T: Stream> ChainReady for T {}

fn counts_json(counts: &BTreeMap<pitcrew_scheduler::HostState, usize>) -> Value {
    Value::Object(
        counts
            .iter()
            .map(|(state, n)| (state.as_str().to_owned(), json!(n)))
            .collect(),
    )
}

/// A campaign as its page shows it.
fn campaign_json(view: &CampaignView) -> Value {
    let steps_done: usize = view.hosts.iter().map(|h| h.steps_done).sum();
    let steps_total: usize = view.hosts.iter().map(|h| h.steps_total).sum();
    json!({
        "id": view.id,
        "name": view.name,
        "state": view.state.as_str(),
        "final": view.state.is_final(),
        "blocker": view.blocker,
        "failures": view.failures,
        "max_failures": view.max_failures,
        "created_at_ms": view.created_at_ms,
        "created_by": view.created_by,
        "counts": counts_json(&view.counts),
        "hosts_total": view.hosts_total,
        "steps_done": steps_done,
        "steps_total": steps_total,
        "hosts": view.hosts.iter().map(|h| json!({
            "host_id": h.host_id,
            "hostname": h.hostname,
            "role": h.role.as_str(),
            "state": h.state.as_str(),
            "current_step": h.current_step,
            "steps_done": h.steps_done,
            "steps_total": h.steps_total,
            "blocker": h.blocker,
            "last_error": h.last_error,
        })).collect::<Vec<_>>(),
    })
}

fn host_row_json(view: &pitcrew_scheduler::HostView, hold: &Hold) -> Value {
    json!({
        "host_id": view.id,
        "hostname": view.hostname,
        "role": view.role.as_str(),
        "state": hold.state,
        "holder": hold.holder,
        "connected": view.connected,
        "labels": view.labels,
    })
}

/// The fleet page: hosts, who holds which out of service, and the campaigns.
fn fleet_json(table: &FleetTable) -> Value {
    json!({
        "hosts": table.rows.iter().map(|(view, hold)| host_row_json(view, hold)).collect::<Vec<_>>(),
        "matched": table.matched,
        "holders": table.holders.hosts.values().map(|h| json!({
            "host_id": h.host_id,
            "hostname": h.hostname,
            "role": h.role.as_str(),
            "cluster": h.cluster,
            "by": h.by.to_string(),
        })).collect::<Vec<_>>(),
        "campaigns": table.campaigns.iter().rev().map(|c| json!({
            "id": c.id,
            "name": c.name,
            "state": c.state.as_str(),
            "blocker": c.blocker,
            "counts": counts_json(&c.counts),
            "hosts_total": c.hosts_total,
            "created_by": c.created_by,
            "created_at_ms": c.created_at_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The compliance page: a row per host and whether more hosts matched than are shown.
fn compliance_json(page: &pitcrew_proto::v1::ComplianceReportResponse) -> Value {
    let rows = page.rows.iter().map(|row| {
        let host = row.host.clone().unwrap_or_default();
        let facts = host.facts.unwrap_or_default();
        json!({
            "host_id": host.host_id,
            "hostname": host.hostname,
            "role": host.role,
            "connected": host.connected,
            "last_seen_ms": host.last_seen_ms,
            "agent_version": facts.agent_version,
            "os": format!("{} {}", facts.os_name, facts.os_version).trim().to_owned(),
            "reboot_required": facts.reboot_required,
            "pending_updates": facts.pending_updates,
            "last_successes": row.last_successes.iter().map(|s| json!({
                "campaign": s.campaign,
                "run_id": s.run_id,
                "finished_at_ms": s.finished_at_ms,
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "hosts": rows.collect::<Vec<_>>(),
        "more": !page.next_page_token.is_empty(),
    })
}

fn event_json(e: &EventRecord) -> Value {
    json!({
        "id": e.id,
        "at_ms": e.at_ms,
        "kind": e.kind,
        "campaign_id": e.campaign_id,
        "step": e.step,
        "result": e.result,
        "message": e.message,
        "actor": e.actor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn fleet_filters_match_role_label_state_and_connection() {
        let view = pitcrew_scheduler::HostView {
            id: "h1".into(),
            hostname: "web-1".into(),
            role: pitcrew_scheduler::Role::Worker,
            labels: [("cluster".to_owned(), "c1".to_owned())].into(),
            connected: true,
            healthy: true,
            boot_id: String::new(),
            policy: None,
            facts: None,
        };
        let hold = Hold {
            state: "running".into(),
            holder: String::new(),
        };
        let f = |role: &str, label: &str, state: &str, connected: &str| FleetFilter {
            role: role.into(),
            label: label.into(),
            state: state.into(),
            connected: connected.into(),
        };
        assert!(f("", "", "", "").keeps(&view, &hold));
        assert!(f("worker", "cluster=c1", "running", "yes").keeps(&view, &hold));
        assert!(f("", "cluster", "", "").keeps(&view, &hold));
        assert!(!f("manager", "", "", "").keeps(&view, &hold));
        assert!(!f("", "cluster=c2", "", "").keeps(&view, &hold));
        assert!(!f("", "zone", "", "").keeps(&view, &hold));
        assert!(!f("", "", "maintenance", "").keeps(&view, &hold));
        assert!(!f("", "", "", "no").keeps(&view, &hold));
    }
}
