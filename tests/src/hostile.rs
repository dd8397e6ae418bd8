//! Hostile clients of a real coordinator, for the tests in `tests/hostile.rs` and the load run
//! `pitcrew-hostile`: peers that hold a real certificate (or none) and break the protocol's
//! manners on purpose. Idle TLS connections held to a cap, request bodies that never end,
//! enrollment floods from a chosen source address, a session that stops reading its stream, a
//! session that goes silent, results for actions never sent.
//!
//! tonic's client is too well behaved for most of this (it always finishes a body, always
//! reads, opens windows as it reads), so the misbehaving clients are written from the wire up:
//! TCP (bound to a chosen loopback source when asked), rustls, the `h2` crate, and gRPC's
//! five-byte message framing over prost. Where a polite client is enough (a session that reads
//! but lies, enrollment, renewal) tonic is used.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pitcrew_proto::tls;
use pitcrew_proto::v1::{
    self, agent_session_client::AgentSessionClient, enrollment_client::EnrollmentClient,
};
use prost::Message;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::Channel;

use crate::Coordinator;

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A host enrolled by a hostile client over the real `Enrollment.Enroll`: its id, the name it
/// enrolled under and its certificate.
#[derive(Debug, Clone)]
pub struct HostCreds {
    pub host_id: String,
    pub hostname: String,
    pub identity: Identity,
}

/// The harness coordinator's `admin` operator certificate.
pub fn operator_identity(c: &Coordinator) -> Identity {
    Identity {
        cert_pem: read(&c.dir.join("operator/admin.crt")),
        key_pem: read(&c.dir.join("operator/admin.key")),
    }
}

/// A second operator, `name` with role `viewer`, added by `admin` the way an operator would
/// (`pitcrew operator add`): its certificate and key are written to `dir` as NAME.crt and
/// NAME.key.
pub fn add_operator(c: &Coordinator, name: &str, dir: &std::path::Path) -> Identity {
    let out = c.cli(&[
        "operator",
        "add",
        name,
        "--role",
        "viewer",
        "--out",
        dir.to_str().expect("a UTF-8 path"),
    ]);
    assert!(
        out.status.success(),
        "pitcrew operator add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Identity {
        cert_pem: read(&dir.join(format!("{name}.crt"))),
        key_pem: read(&dir.join(format!("{name}.key"))),
    }
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A TLS client configuration trusting the fleet CA, presenting `identity` when given (ALPN h2,
/// as every pitcrew client).
pub fn client_config(c: &Coordinator, identity: Option<&Identity>) -> Arc<ClientConfig> {
    tls::install_crypto_provider();
    let ca = tls::load_certs(&c.dir.join("ca.crt")).expect("loading the fleet CA certificate");
    let identity = identity.map(|i| {
        (
            tls::certs_from_pem(&i.cert_pem, "certificate").expect("a PEM certificate"),
            tls::key_from_pem(&i.key_pem, "key").expect("a PEM key"),
        )
    });
    Arc::new(tls::client_config(&ca, identity).expect("a TLS client configuration"))
}

/// A TCP connection to the coordinator from `source` (any loopback address: Linux routes all
/// of 127.0.0.0/8 to `lo`, so one machine can be many source addresses), then the TLS
/// handshake.
pub async fn tls_connect(
    c: &Coordinator,
    config: Arc<ClientConfig>,
    source: Option<IpAddr>,
) -> io::Result<TlsStream<TcpStream>> {
    let addr: SocketAddr = format!("{}:{}", c.ip, c.port)
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(c.ip.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// What became of a connection held open and idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeldState {
    /// Application bytes the coordinator sent on it. A connection the server admitted carries
    /// at least HTTP/2's SETTINGS frame, which the server sends first, unasked; one refused
    /// after its handshake carries none.
    pub bytes: usize,
    /// How long after we started to connect the coordinator closed it (EOF or an error): at
    /// least as long as the coordinator held it after its handshake, whose end we cannot see.
    pub closed_after: Option<Duration>,
}

/// A TLS connection held open without a word from us, read in the background only to learn
/// what the coordinator does with it. Dropping it closes it.
pub struct Held {
    state: Arc<Mutex<HeldState>>,
    task: JoinHandle<()>,
}

impl Held {
    /// Holds `stream`, whose connection was started at `opened` (before the coordinator could
    /// accept it, so that a lifetime it measures from its own handshake is never seen shorter).
    pub fn hold(mut stream: TlsStream<TcpStream>, opened: Instant) -> Held {
        let state = Arc::new(Mutex::new(HeldState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => lock(&shared).bytes += n,
                }
            }
            lock(&shared).closed_after = Some(opened.elapsed());
        });
        Held { state, task }
    }

    pub fn state(&self) -> HeldState {
        *lock(&self.state)
    }

    /// The coordinator serves this connection (it spoke HTTP/2 on it).
    pub fn served(&self) -> bool {
        self.state().bytes > 0
    }

    pub fn closed(&self) -> bool {
        self.state().closed_after.is_some()
    }

    /// Refused: closed by the coordinator before it said a word.
    pub fn refused(&self) -> bool {
        let s = self.state();
        s.bytes == 0 && s.closed_after.is_some()
    }

    /// We know what the coordinator made of it: served, or refused.
    pub fn settled(&self) -> bool {
        let s = self.state();
        s.bytes > 0 || s.closed_after.is_some()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens `count` TLS connections at once from `source`, presenting `identity` if any, and holds
/// each that finished its handshake (a failed handshake counts as refused: `None`).
pub async fn hold_connections(
    c: &Coordinator,
    identity: Option<&Identity>,
    source: Option<IpAddr>,
    count: usize,
) -> Vec<Option<Held>> {
    let config = client_config(c, identity);
    // Each is held as soon as its own handshake is done, so that its clock starts then.
    let attempts = (0..count).map(|_| {
        let config = config.clone();
        async move {
            let opened = Instant::now();
            let stream = tls_connect(c, config, source).await.ok()?;
            Some(Held::hold(stream, opened))
        }
    });
    futures::future::join_all(attempts).await
}

/// A raw HTTP/2 client connection; dropping it closes the connection.
pub struct H2 {
    pub send: h2::client::SendRequest<Bytes>,
    authority: String,
    task: JoinHandle<()>,
}

impl Drop for H2 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The HTTP/2 handshake over an established TLS stream. `window` is the receive window we
/// grant each stream (HTTP/2's default when `None`); a tiny one, never reopened, is how a peer
/// that "does not read" looks to the server.
pub async fn h2_over(
    c: &Coordinator,
    stream: TlsStream<TcpStream>,
    window: Option<u32>,
) -> Result<H2, h2::Error> {
    let mut builder = h2::client::Builder::new();
    if let Some(window) = window {
        builder.initial_window_size(window);
    }
    let (send, connection) = builder.handshake(stream).await?;
    // The connection task answers the server's pings and moves frames, as any client's would;
    // what a hostile peer withholds is above it (reading, finishing bodies, heartbeats).
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(H2 {
        send,
        authority: format!("{}:{}", c.ip, c.port),
        task,
    })
}

/// [`tls_connect`] then [`h2_over`].
pub async fn h2_connect(
    c: &Coordinator,
    identity: Option<&Identity>,
    source: Option<IpAddr>,
    window: Option<u32>,
) -> anyhow::Result<H2> {
    let stream = tls_connect(c, client_config(c, identity), source).await?;
    Ok(h2_over(c, stream, window).await?)
}

/// gRPC's frame header: not compressed, then the message length (big-endian).
pub fn grpc_header(len: u32) -> [u8; 5] {
    let l = len.to_be_bytes();
    [0, l[0], l[1], l[2], l[3]]
}

/// One message framed for a gRPC body.
pub fn grpc_frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(encoded.len() + 5);
    out.put_slice(&grpc_header(
        u32::try_from(encoded.len()).expect("a message under 4 GiB"),
    ));
    out.put_slice(&encoded);
    out.freeze()
}

/// Splits whole gRPC frames off the front of `buf`.
pub fn take_frames(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut frames = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        frames.push(buf.split_to(len).freeze());
    }
    frames
}

impl H2 {
    /// The request head of a gRPC call to `path` (e.g. `/pitcrew.v1.Admin/ListHosts`).
    pub fn request(&self, path: &str) -> http::Request<()> {
        http::Request::builder()
            .method("POST")
            .uri(format!("https://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a valid request head")
    }

    /// Starts a call whose body we write ourselves (and may never finish).
    pub async fn start(
        &mut self,
        path: &str,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), h2::Error> {
        let mut send = self.send.clone().ready().await?;
        send.send_request(self.request(path), false)
    }

    /// A unary call, written and read by hand.
    pub async fn unary<R: Message + Default>(
        &mut self,
        path: &str,
        request: &impl Message,
    ) -> Result<R, tonic::Status> {
        let (response, mut body) = self.start(path).await.map_err(h2_status)?;
        // A server that refuses on the headers alone may have closed the stream already: its
        // answer says why, so a failed send is not the outcome.
        let _ = body.send_data(grpc_frame(request), true);
        answer(response.await.map_err(h2_status)?).await
    }
}

/// Reads a unary call's answer: its status (in the headers of a trailers-only refusal, else
/// in the trailers) and its one message.
pub async fn answer<R: Message + Default>(
    response: http::Response<h2::RecvStream>,
) -> Result<R, tonic::Status> {
    check_status(response.headers())?;
    let mut recv = response.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(h2_status)?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        buf.put_slice(&chunk);
    }
    if let Some(trailers) = recv.trailers().await.map_err(h2_status)? {
        check_status(&trailers)?;
    }
    let frame = take_frames(&mut buf)
        .into_iter()
        .next()
        .ok_or_else(|| tonic::Status::internal("the answer held no message"))?;
    R::decode(frame).map_err(|e| tonic::Status::internal(format!("undecodable answer: {e}")))
}

/// The gRPC status in a header map, as an error unless it is OK.
pub fn check_status(headers: &http::HeaderMap) -> Result<(), tonic::Status> {
    match tonic::Status::from_header_map(headers) {
        Some(status) if status.code() != tonic::Code::Ok => Err(status),
        _ => Ok(()),
    }
}

/// An HTTP/2 failure, as the status a gRPC client would report.
pub fn h2_status(error: h2::Error) -> tonic::Status {
    tonic::Status::unavailable(format!("HTTP/2: {error}"))
}

/// A polite gRPC channel presenting `identity` if any (tonic's own client, our connector).
pub async fn channel(c: &Coordinator, identity: Option<&Identity>) -> Channel {
    tls::connect(&c.address(), client_config(c, identity))
        .await
        .expect("connecting to the coordinator")
}

/// An enrollment request with a fresh key's CSR.
pub fn enroll_request(token: &str, host_id: &str, hostname: &str) -> (v1::EnrollRequest, String) {
    let (csr_der, key_pem) = pitcrew_coordinator::ca::make_csr().expect("making a CSR");
    (
        v1::EnrollRequest {
            token: token.to_owned(),
            csr_der,
            host_id: host_id.to_owned(),
            hostname: hostname.to_owned(),
        },
        key_pem,
    )
}

/// Enrolls `host_id` as `hostname` over the real `Enrollment.Enroll`, with a key made here.
pub async fn enroll(
    c: &Coordinator,
    token: &str,
    host_id: &str,
    hostname: &str,
) -> Result<HostCreds, tonic::Status> {
    let (request, key_pem) = enroll_request(token, host_id, hostname);
    let client = EnrollmentClient::new(channel(c, None).await);
    enroll_with(client, request, key_pem).await
}

/// Sends a prepared enrollment on `client` (connected beforehand, so that many can race).
pub async fn enroll_with(
    mut client: EnrollmentClient<Channel>,
    request: v1::EnrollRequest,
    key_pem: String,
) -> Result<HostCreds, tonic::Status> {
    let hostname = request.hostname.clone();
    let answer = client.enroll(request).await?.into_inner();
    Ok(HostCreds {
        host_id: answer.host_id,
        hostname,
        identity: Identity {
            cert_pem: answer.certificate_pem,
            key_pem,
        },
    })
}

/// A hello for `creds`, with a boot id so that listings show the host's facts.
pub fn hello(host_id: &str, hostname: &str) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::Hello {
            facts: Some(v1::Facts {
                host_id: host_id.to_owned(),
                hostname: hostname.to_owned(),
                boot_id: "hostile-boot".into(),
                ..Default::default()
            }),
            agent_version: "hostile".into(),
            ..Default::default()
        })),
    }
}

pub fn heartbeat(seq: u64) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Heartbeat(v1::Heartbeat { seq })),
    }
}

/// A final result for `action_id`, as an agent reports one.
pub fn result(action_id: &str, outcome: v1::Outcome, message: &str) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Event(v1::ActionEvent {
            action_id: action_id.to_owned(),
            event: Some(v1::action_event::Event::Result(v1::ActionResult {
                action_id: action_id.to_owned(),
                outcome: outcome as i32,
                message: message.to_owned(),
                started_at_ms: pitcrew_proto::now_ms(),
                finished_at_ms: pitcrew_proto::now_ms(),
                ..Default::default()
            })),
        })),
    }
}

/// A session that reads what it is sent (tonic's client) but says only what the test makes it
/// say: a hello, heartbeats when asked, forged or real results.
pub struct Session {
    pub tx: mpsc::Sender<v1::AgentMessage>,
    pub inbound: tonic::Streaming<v1::CoordinatorMessage>,
    heartbeats: Option<JoinHandle<()>>,
}

impl Session {
    /// Opens a session with `identity`, says hello as `host_id`, and waits for the welcome.
    pub async fn open(
        c: &Coordinator,
        identity: &Identity,
        host_id: &str,
        hostname: &str,
    ) -> Result<Session, tonic::Status> {
        let mut client = AgentSessionClient::new(channel(c, Some(identity)).await);
        let (tx, rx) = mpsc::channel(64);
        // The coordinator answers the call only once it has the hello: queue it first.
        tx.send(hello(host_id, hostname))
            .await
            .map_err(|_| tonic::Status::internal("the outbound queue closed"))?;
        let mut inbound = client
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        match inbound.message().await? {
            Some(v1::CoordinatorMessage {
                msg: Some(v1::coordinator_message::Msg::Welcome(_)),
            }) => Ok(Session {
                tx,
                inbound,
                heartbeats: None,
            }),
            other => Err(tonic::Status::internal(format!(
                "expected a welcome, got {other:?}"
            ))),
        }
    }

    /// Opens a session as the enrolled host `creds`.
    pub async fn open_as(c: &Coordinator, creds: &HostCreds) -> Result<Session, tonic::Status> {
        Session::open(c, &creds.identity, &creds.host_id, &creds.hostname).await
    }

    pub async fn send(&self, message: v1::AgentMessage) {
        let _ = self.tx.send(message).await;
    }

    /// Sends a heartbeat every `period` from now on, so that the coordinator never finds this
    /// session silent: whatever ends it, it is not the heartbeat timeout.
    pub fn keep_alive(&mut self, period: Duration) {
        let tx = self.tx.clone();
        self.heartbeats = Some(tokio::spawn(async move {
            let mut seq = 0;
            loop {
                tokio::time::sleep(period).await;
                seq += 1;
                if tx.send(heartbeat(seq)).await.is_err() {
                    return;
                }
            }
        }));
    }

    /// The next message, or `Ok(None)` when the coordinator ended the stream.
    pub async fn next(&mut self) -> Result<Option<v1::CoordinatorMessage>, tonic::Status> {
        self.inbound.message().await
    }

    /// Waits up to `within` for the coordinator to end this session; returns how it ended
    /// (`Ok(())` for a clean end), or `None` if it is still open then. Messages meanwhile are
    /// read and dropped.
    pub async fn ended_within(&mut self, within: Duration) -> Option<Result<(), tonic::Status>> {
        let wait = async {
            loop {
                match self.inbound.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(status),
                }
            }
        };
        tokio::time::timeout(within, wait).await.ok()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeats.take() {
            task.abort();
        }
    }
}

/// How much of its stream a [`StuckSession`] lets the coordinator send: room for the welcome
/// and not for one action after it.
pub const STUCK_WINDOW: u32 = 64;

/// A session with a real host certificate that says hello, reads the welcome, keeps sending
/// heartbeats and never reads again: it grants the coordinator a tiny HTTP/2 window and never
/// reopens it, as an agent wedged in its own code would (its TCP connection stays healthy and
/// answers pings). Whatever the coordinator queues for it stays queued.
pub struct StuckSession {
    _h2: H2,
    _recv: h2::RecvStream,
    heartbeats: JoinHandle<()>,
}

impl StuckSession {
    pub async fn open(c: &Coordinator, creds: &HostCreds) -> anyhow::Result<StuckSession> {
        let mut h2 = h2_connect(c, Some(&creds.identity), None, Some(STUCK_WINDOW)).await?;
        let (response, mut body) = h2.start("/pitcrew.v1.AgentSession/Connect").await?;
        body.send_data(grpc_frame(&hello(&creds.host_id, &creds.hostname)), false)?;
        let response = response.await?;
        check_status(response.headers())?;
        let mut recv = response.into_body();
        // Read the welcome, and give none of its window back.
        let mut buf = BytesMut::new();
        loop {
            let chunk = recv
                .data()
                .await
                .ok_or_else(|| anyhow::anyhow!("the session ended before its welcome"))??;
            buf.put_slice(&chunk);
            if let Some(frame) = take_frames(&mut buf).into_iter().next() {
                let welcome = v1::CoordinatorMessage::decode(frame)?;
                anyhow::ensure!(
                    matches!(welcome.msg, Some(v1::coordinator_message::Msg::Welcome(_))),
                    "expected a welcome, got {welcome:?}"
                );
                break;
            }
        }
        let heartbeats = tokio::spawn(async move {
            let mut seq = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                seq += 1;
                if body.send_data(grpc_frame(&heartbeat(seq)), false).is_err() {
                    return;
                }
            }
        });
        Ok(StuckSession {
            _h2: h2,
            _recv: recv,
            heartbeats,
        })
    }
}

impl Drop for StuckSession {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

/// Resident memory of a process in KiB (VmRSS), 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// An Admin client with the harness's `admin` operator certificate.
pub async fn admin(c: &Coordinator) -> v1::admin_client::AdminClient<Channel> {
    v1::admin_client::AdminClient::new(channel(c, Some(&operator_identity(c))).await)
        .max_decoding_message_size(pitcrew_proto::MAX_MESSAGE_BYTES)
}

/// `pitcrew do HOST exec -- /bin/true` as a request, with a fresh id chosen by the coordinator.
pub fn run_true(host: &str) -> v1::RunActionRequest {
    v1::RunActionRequest {
        host: host.to_owned(),
        request: Some(v1::ActionRequest {
            action_id: String::new(),
            action: Some(v1::Action {
                kind: Some(v1::action::Kind::Exec(v1::Exec {
                    argv: vec!["/bin/true".into()],
                    ..Default::default()
                })),
            }),
            timeout_seconds: 0,
        }),
        force: false,
    }
}
