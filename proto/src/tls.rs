//! TLS for every pitcrew connection: one crypto provider (ring), PEM loading, the coordinator's
//! acceptor (client certificates optional at the handshake, required per service), the agents'
//! and operators' connector, and CA pinning by SHA-256 fingerprint for enrollment.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// Errors setting up or loading TLS material; each names the file or the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("connecting to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
}

/// Installs ring as the process-wide rustls provider. Call at the top of every `main` (and in
/// tests); a second provider in the dependency tree would make rustls panic at first use.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The process's rustls provider (ring, see [`install_crypto_provider`]).
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Parses every certificate in a PEM text.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Invalid {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            what: what.to_owned(),
            reason: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// Parses the private key in a PEM text.
pub fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Invalid {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Loads the certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(&read(path)?, &path.display().to_string())
}

/// Loads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(&read(path)?, &path.display().to_string())
}

/// Lower-case hex SHA-256 of a DER certificate: how operators pin the fleet CA.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Normalises a fingerprint as an operator may type it ("sha256:AB:CD..." or plain hex).
pub fn normalize_fingerprint(text: &str) -> Result<String, TlsError> {
    let trimmed = text.trim();
    let hexpart = trimmed.strip_prefix("sha256:").unwrap_or(trimmed);
    let clean: String = hexpart
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_lowercase();
    if clean.len() != 64 || !clean.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TlsError::Invalid {
            what: "CA fingerprint".into(),
            reason: "expected 64 hex digits (SHA-256), optionally prefixed by 'sha256:'".into(),
        });
    }
    Ok(clean)
}

/// A root store holding exactly the fleet CA certificates given.
pub fn roots(ca: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in ca {
        store.add(cert.clone()).map_err(|e| TlsError::Invalid {
            what: "CA certificate".into(),
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

/// The coordinator's TLS configuration. Client certificates are verified against the fleet CA
/// when presented (another CA or an expired certificate fails the handshake), and optional only
/// so that enrollment can run before a host has one; every other service requires one.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: &[CertificateDer<'static>],
) -> Result<ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Invalid {
            what: "client verifier".into(),
            reason: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client configuration trusting the fleet CA, presenting a certificate when given one.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client configuration for enrollment: the server's chain must contain a CA certificate whose
/// SHA-256 fingerprint is `pin`, and the server certificate must be valid under that CA.
pub fn pinned_client_config(pin: &str) -> Result<ClientConfig, TlsError> {
    let verifier = PinnedCaVerifier {
        pin: normalize_fingerprint(pin)?,
        provider: provider(),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Verifies a server against a CA known only by its fingerprint (no trust on first use: a chain
/// without that exact CA is refused).
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c.as_ref()) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the coordinator's CA does not match the pinned fingerprint".into(),
                )
            })?;
        let mut store = RootCertStore::empty();
        store.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// Opens a gRPC channel to `address` ("https://host:port" or "host:port") over our own rustls
/// connector, so that the same code serves pinned enrollment and mTLS sessions.
pub async fn connect(address: &str, config: Arc<ClientConfig>) -> Result<Channel, TlsError> {
    let endpoint_text = if address.contains("://") {
        address.to_owned()
    } else {
        format!("https://{address}")
    };
    let fail = |reason: String| TlsError::Connect {
        endpoint: endpoint_text.clone(),
        reason,
    };
    let uri: Uri = endpoint_text
        .parse()
        .map_err(|e: tonic::codegen::http::uri::InvalidUri| fail(e.to_string()))?;
    let host = uri
        .host()
        .ok_or_else(|| fail("no host in the address".into()))?
        .to_owned();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(7443);
    let server_name = ServerName::try_from(host.clone()).map_err(|e| fail(e.to_string()))?;
    // The channel's own URI must be plain http: TLS is done by the connector below.
    let endpoint = Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|e| fail(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(config);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_uri: Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let target = format!("{host}:{port}");
            async move {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| fail(error_chain(&e)))?;
    Ok(channel)
}

/// Renders an error with its sources, so that "transport error" says what actually went wrong.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}
