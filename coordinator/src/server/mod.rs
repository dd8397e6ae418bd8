//! The gRPC server: one TLS listener for the three services. Client certificates are verified
//! at the handshake when presented; `Enrollment` needs none, `AgentSession` needs a host
//! certificate, and `Admin` a registered, unrevoked operator certificate whose role is enough
//! for the method (the role gate in `roles.rs`, checked per call).

pub mod admin;
mod convert;
pub mod enroll;
mod operators;
pub mod roles;
pub mod session;

use std::sync::Arc;

use pitcrew_proto::accept::AcceptLimits;
use pitcrew_proto::identity::require_host;
use pitcrew_proto::v1::{
    admin_server::AdminServer, agent_session_server::AgentSessionServer,
    enrollment_server::EnrollmentServer,
};
use tokio::net::TcpListener;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;

pub use crate::app::Coordinator;
use crate::config::DataDir;
use crate::engine::EngineError;
use crate::store::StoreError;

/// HTTP/2 flow-control windows: how much a peer may send before the coordinator has read it.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;

/// How long open streams (operators watching, agents) get to end at shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Status {
        tracing::error!(message = "store failure", %error);
        let message = format!("the coordinator's store failed: {error}");
        match error {
            // The database is away or another coordinator leads: trying again later may work.
            StoreError::Unavailable(_) | StoreError::Fenced { .. } => Status::unavailable(message),
            _ => Status::internal(message),
        }
    }
}

/// The one mapping from the engine's errors to gRPC: the message is the operator's sentence,
/// the code says whether retrying or fixing the request helps.
impl From<EngineError> for Status {
    fn from(error: EngineError) -> Status {
        let message = error.to_string();
        match &error {
            EngineError::Spec(_) => Status::invalid_argument(message),
            EngineError::Schedule(_) => Status::invalid_argument(message),
            EngineError::AlreadyRunning { .. } => Status::already_exists(message),
            EngineError::UnknownCampaign(_)
            | EngineError::UnknownHost(_)
            | EngineError::UnknownSchedule(_) => Status::not_found(message),
            EngineError::Plan(_)
            | EngineError::Apply(_)
            | EngineError::Manual(_)
            | EngineError::Refused(_)
            | EngineError::HostBusy { .. } => Status::failed_precondition(message),
            EngineError::Stopped | EngineError::NotLeading(_) => Status::unavailable(message),
            EngineError::Store(_) => {
                tracing::error!(message = "store failure", %error);
                Status::internal(message)
            }
        }
    }
}

/// The connections the gRPC server takes: TLS with the coordinator's server certificate
/// (client certificates verified when presented), within the `[limits]` of coordinator.toml.
pub fn incoming(
    data_dir: &DataDir,
    limits: &crate::config::Limits,
    listener: TcpListener,
) -> anyhow::Result<pitcrew_proto::accept::Incoming> {
    use anyhow::Context;
    use pitcrew_proto::tls;
    let mut chain = tls::load_certs(&data_dir.server_cert())?;
    // Send the CA too: agents pinning it by fingerprint find it in the chain.
    chain.extend(tls::load_certs(&data_dir.ca_cert())?);
    let key = tls::load_key(&data_dir.server_key())?;
    let ca = tls::load_certs(&data_dir.ca_cert())?;
    let config = tls::server_config(chain, key, &ca).context("building the TLS configuration")?;
    Ok(pitcrew_proto::accept::accept(
        listener,
        Arc::new(config),
        AcceptLimits {
            max_connections: limits.max_connections,
            max_anonymous: limits.max_anonymous_connections,
            max_anonymous_per_source: limits.max_anonymous_per_source,
            max_per_identity: limits.max_connections_per_identity,
            anonymous_lifetime: limits.anonymous_connection_lifetime,
            handshake_timeout: limits.handshake_timeout,
        },
    ))
}

/// The listener's accepted connections, taken by one server at a time: a standby's answer
/// until this coordinator leads, then the services (the listener stays bound throughout).
#[derive(Clone)]
pub struct Connections(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Accepted>>>);

type Accepted = Result<pitcrew_proto::accept::Conn, std::io::Error>;

impl Connections {
    pub fn new(incoming: pitcrew_proto::accept::Incoming) -> Connections {
        Connections(Arc::new(tokio::sync::Mutex::new(incoming.into_inner())))
    }

    /// The connections as a server takes them; ends when the listener's task does.
    pub fn stream(&self) -> impl futures::Stream<Item = Accepted> + Send + 'static {
        futures::stream::unfold(self.0.clone(), |shared| async move {
            let next = shared.lock().await.recv().await;
            next.map(|conn| (conn, shared))
        })
    }
}

/// The HTTP/2 settings every coordinator's gRPC server uses.
pub fn builder(limits: &crate::config::Limits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        // A control channel carries small messages: small flow-control windows bound what a
        // peer can make the coordinator buffer per connection (hyper's default is 1 MiB each).
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
}

/// Serves until `shutdown` resolves, then drains gracefully.
pub async fn serve(
    coordinator: Arc<Coordinator>,
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let limits = &coordinator.config.limits;
    let incoming = connections.stream();

    // At shutdown, end the agents' long-lived sessions so the server can drain; anything still
    // open after a grace period is cut.
    let registry = coordinator.registry.clone();
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        registry.close_all();
        let _ = stopping_tx.send(true);
    };
    let max = pitcrew_proto::MAX_MESSAGE_BYTES;
    // Enrollment is the one service open without a certificate: its requests are small.
    let enrollment = EnrollmentServer::new(enroll::EnrollmentService::new(coordinator.clone()))
        .max_decoding_message_size(limits.enroll_max_message_bytes);
    // The other services refuse a caller without the right certificate before reading any of
    // its request (the handlers check again, and read the identity from the same certificate).
    let session = InterceptedService::new(
        AgentSessionServer::new(session::SessionService::new(coordinator.clone()))
            .max_decoding_message_size(max),
        |request: tonic::Request<()>| require_host(&request).map(|_| request),
    );
    // Admin calls pass the role gate first: a registered, valid operator certificate whose
    // role is enough for the method, or the call is refused unread.
    let admin = roles::RoleGate::new(
        AdminServer::new(admin::AdminService::new(coordinator.clone()))
            .max_decoding_message_size(max),
        coordinator.operators.clone(),
    );
    let server = builder(limits)
        .add_service(enrollment)
        .add_service(session)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, shutdown);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.context("the gRPC server failed")?,
        _ = async {
            let _ = stopping_rx.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!(message = "connections still open after the grace period were cut"),
    }
    Ok(())
}
