//! One webhook POST over HTTP/1.1 (hyper's client connection), with TLS for `https://`
//! verified against the system's root certificates (rustls with the process's one ring
//! provider). A connection per delivery, closed after the answer: notifications are rare,
//! and nothing is kept open towards a receiver.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The receiver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
}

/// Posts bodies; holds the TLS configuration, built once.
#[derive(Clone)]
pub struct Poster {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Poster {
    /// A poster trusting the system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured). A
    /// system without any still posts over `http://`; `https://` then fails, saying why.
    pub fn new(timeout: Duration) -> Poster {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(message = "webhooks: cannot read some system root certificates", %error);
        }
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(
                message = "webhooks: no system root certificate found; https:// webhooks will fail"
            );
        }
        Poster::with_roots(roots, timeout)
    }

    /// A poster trusting exactly `roots` (tests use a CA of their own).
    pub fn with_roots(roots: rustls::RootCertStore, timeout: Duration) -> Poster {
        let tls = rustls::ClientConfig::builder_with_provider(pitcrew_proto::tls::provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                // The ring provider supports the default versions; kept for completeness.
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        Poster {
            tls: Arc::new(tls),
            timeout,
        }
    }

    /// POSTs `body` to `url` with `headers`, within the poster's timeout (connecting, TLS and
    /// the answer's head together). An error is a readable reason.
    pub async fn post(
        &self,
        url: &Uri,
        headers: &[(&'static str, String)],
        body: String,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(self.timeout, self.post_now(url, headers, body)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", self.timeout.as_secs_f32())),
        }
    }

    async fn post_now(
        &self,
        url: &Uri,
        headers: &[(&'static str, String)],
        body: String,
    ) -> Result<Answer, String> {
        let host = url.host().ok_or("the URL names no host")?;
        let https = url.scheme_str() == Some("https");
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        // An IPv6 literal comes bracketed in a URI.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name = ServerName::try_from(bare.to_owned())
                .map_err(|e| format!("{host} is not a server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
            send(tls, url, headers, body).await
        } else {
            send(tcp, url, headers, body).await
        }
    }
}

async fn send<S>(
    stream: S,
    url: &Uri,
    headers: &[(&'static str, String)],
    body: String,
) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let authority = url
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("pitcrew/", env!("CARGO_PKG_VERSION")))
        .header(CONNECTION, "close");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("HTTP request: {e}"))?;
    // The connection is driven beside the request and dropped (closed) with it. A receiver
    // that answers and closes (`Connection: close`) ends the connection as the answer
    // arrives: the answer is then taken from the request's side.
    let mut connection = std::pin::pin!(connection);
    let mut send = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        biased;
        response = &mut send => response,
        ended = &mut connection => match ended {
            Ok(()) => send.await,
            Err(e) => return Err(format!("HTTP: {e}")),
        },
    }
    .map_err(|e| format!("HTTP: {e}"))?;
    Ok(Answer {
        status: response.status().as_u16(),
        retry_after: response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A receiver that reads a request head and answers `answer`, then closes at once.
    async fn receiver(
        answer: &'static str,
        requests: usize,
    ) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut heads = Vec::new();
            for _ in 0..requests {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 8192];
                let mut got = 0;
                // The head and the small body arrive together or nearly: read until the body.
                while !String::from_utf8_lossy(&buf[..got]).contains("{}") {
                    let n = stream.read(&mut buf[got..]).await.unwrap();
                    assert!(n > 0, "the request ended early");
                    got += n;
                }
                heads.push(String::from_utf8_lossy(&buf[..got]).into_owned());
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
            heads
        });
        (port, task)
    }

    #[tokio::test]
    async fn an_answer_followed_by_a_close_is_read_every_time() {
        let (port, task) =
            receiver("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", 30).await;
        let poster = Poster::with_roots(rustls::RootCertStore::empty(), Duration::from_secs(10));
        let url: Uri = format!("http://127.0.0.1:{port}/hook?x=1").parse().unwrap();
        for _ in 0..30 {
            let answer = poster
                .post(&url, &[("x-pitcrew-event", "test".into())], "{}".into())
                .await
                .unwrap();
            assert_eq!(answer.status, 204);
        }
        let heads = task.await.unwrap();
        assert!(
            heads[0].starts_with("POST /hook?x=1 HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0]
                .to_ascii_lowercase()
                .contains("x-pitcrew-event: test")
        );
        assert!(
            heads[0]
                .to_ascii_lowercase()
                .contains(&format!("host: 127.0.0.1:{port}"))
        );
    }

    #[tokio::test]
    async fn a_refusal_carries_its_retry_after_and_a_dead_port_is_an_error() {
        let (port, _task) = receiver(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
            1,
        )
        .await;
        let poster = Poster::with_roots(rustls::RootCertStore::empty(), Duration::from_secs(10));
        let url: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let answer = poster.post(&url, &[], "{}".into()).await.unwrap();
        assert_eq!(
            answer,
            Answer {
                status: 503,
                retry_after: Some("7".into())
            }
        );
        // Nothing listens there any more.
        let error = poster.post(&url, &[], "{}".into()).await.unwrap_err();
        assert!(error.contains("cannot connect to 127.0.0.1"), "{error}");
    }
}
