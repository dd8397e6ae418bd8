//! The coordinator's acceptor: TLS handshakes off the accept loop, under limits that keep one
//! peer from taking the listener down for everyone.
//!
//! Every connection is counted from its TCP accept (so the cap bounds file descriptors), then
//! classified by its handshake: one **without** a client certificate (only enrollment is open
//! to it) counts against a fleet-wide and a per-source-address cap and is closed after a fixed
//! lifetime; one **with** a certificate counts against a cap per identity (a host needs one
//! connection, an operator a few). Refusals are logged as counted summaries, not one line
//! each, so a flood cannot fill the journal either.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::identity::peer_from_der;

/// How many connections of each kind the acceptor takes.
#[derive(Debug, Clone)]
pub struct AcceptLimits {
    pub max_connections: usize,
    pub max_anonymous: usize,
    pub max_anonymous_per_source: usize,
    pub max_per_identity: usize,
    /// A connection without a client certificate is closed this long after its handshake.
    pub anonymous_lifetime: Duration,
    pub handshake_timeout: Duration,
}

/// Who a connection counts as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    /// Accepted, handshake not finished.
    Handshaking,
    Anonymous(IpAddr),
    Identity(String),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    anonymous: usize,
    per_source: HashMap<IpAddr, usize>,
    per_identity: HashMap<String, usize>,
}

impl Counts {
    fn release(&mut self, class: &Class) {
        match class {
            Class::Handshaking => {}
            Class::Anonymous(ip) => {
                self.anonymous = self.anonymous.saturating_sub(1);
                if let Some(n) = self.per_source.get_mut(ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_source.remove(ip);
                    }
                }
            }
            Class::Identity(id) => {
                if let Some(n) = self.per_identity.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_identity.remove(id);
                    }
                }
            }
        }
    }
}

/// A connection's place in the counts, given back when it closes.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    class: Class,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        counts.release(&self.class);
        counts.total = counts.total.saturating_sub(1);
    }
}

/// Refusals of one kind, logged at most every few seconds as a count.
#[derive(Debug)]
struct Refusals {
    what: &'static str,
    since_last_log: AtomicU64,
    last_log_ms: AtomicI64,
}

/// The gap between two summary lines of one kind of refusal.
const REFUSAL_LOG_EVERY_MS: i64 = 10_000;

impl Refusals {
    const fn new(what: &'static str) -> Refusals {
        Refusals {
            what,
            since_last_log: AtomicU64::new(0),
            last_log_ms: AtomicI64::new(0),
        }
    }

    fn refused(&self, peer: SocketAddr, detail: &str) {
        let count = self.since_last_log.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if now - last >= REFUSAL_LOG_EVERY_MS
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since_last_log.store(0, Ordering::Relaxed);
            tracing::warn!(count, last_peer = %peer, detail, "{}", self.what);
        }
    }
}

static OVER_TOTAL: Refusals = Refusals::new("refused connections: the connection limit is reached");
static OVER_ANONYMOUS: Refusals =
    Refusals::new("refused connections: too many without a client certificate");
static OVER_IDENTITY: Refusals =
    Refusals::new("refused connections: too many with one certificate");
static BAD_HANDSHAKE: Refusals = Refusals::new("refused a TLS connection: the handshake failed");
static SLOW_HANDSHAKE: Refusals =
    Refusals::new("refused a TLS connection: the handshake did not finish in time");

/// One accepted connection, as tonic serves it.
pub struct Conn {
    inner: TlsStream<TcpStream>,
    /// When a connection without a certificate must end.
    expires: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(expires) = this.expires.as_mut()
            && expires.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a connection without a client certificate outlived its lifetime",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The connections accepted by the coordinator, fed to `serve_with_incoming`.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<Result<Conn, io::Error>>;

/// Accepts TCP connections on `listener` and completes TLS handshakes off the accept loop,
/// under `limits`. A failed or refused connection is counted and dropped; it never stops the
/// listener.
pub fn accept(listener: TcpListener, config: Arc<ServerConfig>, limits: AcceptLimits) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let counts = Arc::new(Mutex::new(Counts::default()));
    let limits = Arc::new(limits);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(message = "accept failed", %error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let slot = {
                let mut c = counts.lock();
                if c.total >= limits.max_connections {
                    drop(c);
                    OVER_TOTAL.refused(addr, "");
                    continue;
                }
                c.total += 1;
                Slot {
                    counts: counts.clone(),
                    class: Class::Handshaking,
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                if let Some(conn) = handshake(acceptor, tcp, addr, slot, &limits).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    mut slot: Slot,
    limits: &AcceptLimits,
) -> Option<Conn> {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            BAD_HANDSHAKE.refused(addr, &error.to_string());
            return None;
        }
        Err(_) => {
            SLOW_HANDSHAKE.refused(addr, "");
            return None;
        }
    };
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.as_ref().to_vec());
    let class = match leaf {
        None => Class::Anonymous(addr.ip()),
        Some(der) => Class::Identity(match peer_from_der(&der) {
            Ok(cert) => cert.peer.to_string(),
            // Verified by the fleet CA but naming nobody: still one identity.
            Err(_) => crate::tls::fingerprint(&der),
        }),
    };
    {
        let mut c = slot.counts.lock();
        let admitted = match &class {
            Class::Anonymous(ip) => {
                let from_source = c.per_source.get(ip).copied().unwrap_or(0);
                let ok = c.anonymous < limits.max_anonymous
                    && from_source < limits.max_anonymous_per_source;
                if ok {
                    c.anonymous += 1;
                    *c.per_source.entry(*ip).or_insert(0) += 1;
                }
                ok
            }
            Class::Identity(id) => {
                let n = c.per_identity.entry(id.clone()).or_insert(0);
                let ok = *n < limits.max_per_identity;
                if ok {
                    *n += 1;
                }
                ok
            }
            Class::Handshaking => true,
        };
        if !admitted {
            drop(c);
            match &class {
                Class::Identity(id) => OVER_IDENTITY.refused(addr, id),
                _ => OVER_ANONYMOUS.refused(addr, ""),
            }
            return None;
        }
        slot.class = class;
    }
    let expires = matches!(slot.class, Class::Anonymous(_))
        .then(|| Box::pin(tokio::time::sleep(limits.anonymous_lifetime)));
    Some(Conn {
        inner: stream,
        expires,
        _slot: slot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_connections_give_their_places_back() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut slots = Vec::new();
        for class in [
            Class::Anonymous(ip),
            Class::Anonymous(ip),
            Class::Identity("host h1".into()),
        ] {
            let mut c = counts.lock();
            c.total += 1;
            match &class {
                Class::Anonymous(ip) => {
                    c.anonymous += 1;
                    *c.per_source.entry(*ip).or_insert(0) += 1;
                }
                Class::Identity(id) => *c.per_identity.entry(id.clone()).or_insert(0) += 1,
                Class::Handshaking => {}
            }
            drop(c);
            slots.push(Slot {
                counts: counts.clone(),
                class,
            });
        }
        assert_eq!(counts.lock().per_source[&ip], 2);
        drop(slots);
        let c = counts.lock();
        assert_eq!((c.total, c.anonymous), (0, 0));
        assert!(c.per_source.is_empty() && c.per_identity.is_empty());
    }
}
