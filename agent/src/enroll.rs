//! Enrollment: make a key on this host, trade a join token and a CSR for a host certificate,
//! and keep the credentials in the state dir.
//!
//! The coordinator is authenticated by pinning its CA's SHA-256 fingerprint from the config (no
//! trust on first use); the CA it returns must carry that same fingerprint. The private key is
//! written (mode 0600) before anything is sent and never leaves the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pitcrew_proto::tls;
use pitcrew_proto::v1::{EnrollRequest, enrollment_client::EnrollmentClient};
use rcgen::{CertificateParams, KeyPair};

use crate::config::{AgentConfig, Enrolled};

/// Files of the agent's identity inside its state dir.
pub struct CredentialPaths {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
    pub identity: PathBuf,
}

impl CredentialPaths {
    pub fn new(state_dir: &Path) -> CredentialPaths {
        CredentialPaths {
            key: state_dir.join("host.key"),
            cert: state_dir.join("host.crt"),
            ca: state_dir.join("ca.crt"),
            identity: state_dir.join("identity.json"),
        }
    }
}

/// Enrollment errors; each says what the operator should check.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("no coordinator address is configured (set `coordinators` in the agent config)")]
    NoCoordinator,
    #[error(
        "no CA fingerprint is configured (set `ca_fingerprint`, as printed by `pitcrew-coordinator init`)"
    )]
    NoFingerprint,
    #[error("{0}")]
    Identity(String),
    #[error("cannot make a key or CSR: {0}")]
    Key(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("cannot reach a coordinator: {0}")]
    Unreachable(String),
    #[error("the coordinator refused the enrollment: {0}")]
    Refused(String),
    #[error("the coordinator's answer is not usable: {0}")]
    BadAnswer(String),
}

impl EnrollError {
    /// Whether trying again later may help (the coordinator was away), as opposed to a refusal
    /// or a local problem that needs an operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, EnrollError::Unreachable(_))
    }
}

/// Whether this host already holds a certificate and identity.
pub fn is_enrolled(state_dir: &Path) -> bool {
    let paths = CredentialPaths::new(state_dir);
    paths.key.exists() && paths.cert.exists() && paths.ca.exists() && paths.identity.exists()
}

/// Reads the stored identity.
pub fn load_identity(state_dir: &Path) -> Result<Enrolled, String> {
    let path = CredentialPaths::new(state_dir).identity;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is corrupt: {e}", path.display()))
}

/// The mTLS client configuration from the stored credentials.
pub fn session_tls(state_dir: &Path) -> Result<rustls::ClientConfig, tls::TlsError> {
    let paths = CredentialPaths::new(state_dir);
    let ca = tls::load_certs(&paths.ca)?;
    let chain = tls::load_certs(&paths.cert)?;
    let key = tls::load_key(&paths.key)?;
    tls::client_config(&ca, Some((chain, key)))
}

/// Makes a fresh key (written 0600 to `key_path`) and a CSR for it.
pub fn new_key_and_csr(key_path: &Path) -> Result<Vec<u8>, EnrollError> {
    let key = KeyPair::generate().map_err(|e| EnrollError::Key(e.to_string()))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    pitcrew_proto::files::write_private(key_path, key.serialize_pem().as_bytes()).map_err(|e| {
        EnrollError::Write {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(csr.der().to_vec())
}

/// Enrolls this host with `token`, trying each configured coordinator in turn.
pub async fn enroll(config: &AgentConfig, token: &str) -> Result<Enrolled, EnrollError> {
    if config.coordinators.is_empty() {
        return Err(EnrollError::NoCoordinator);
    }
    let pin = config
        .ca_fingerprint
        .as_deref()
        .ok_or(EnrollError::NoFingerprint)?;
    let pin = tls::normalize_fingerprint(pin).map_err(|e| EnrollError::Identity(e.to_string()))?;
    let host_id = crate::facts::read_machine_id(&config.host.machine_id_file)
        .map_err(EnrollError::Identity)?;
    pitcrew_proto::files::create_private_dir(&config.state_dir).map_err(|e| {
        EnrollError::Write {
            path: config.state_dir.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    let paths = CredentialPaths::new(&config.state_dir);
    // A new key under a temporary name: the current identity stays intact until the new one works.
    let pending_key = config.state_dir.join("host.key.new");
    let csr = new_key_and_csr(&pending_key)?;
    // The name the host enrolls under is fixed at enrollment: the configured one, if any.
    let hostname = config.host.hostname();
    let tls_config = Arc::new(
        tls::pinned_client_config(&pin).map_err(|e| EnrollError::Identity(e.to_string()))?,
    );

    let mut last_error = String::new();
    for address in &config.coordinators {
        let channel = match tls::connect(address, tls_config.clone()).await {
            Ok(channel) => channel,
            Err(error) => {
                last_error = error.to_string();
                continue;
            }
        };
        let mut client = EnrollmentClient::new(channel);
        let request = EnrollRequest {
            token: token.trim().to_owned(),
            csr_der: csr.clone(),
            host_id: host_id.clone(),
            hostname: hostname.clone(),
        };
        let answer = match client.enroll(request).await {
            Ok(answer) => answer.into_inner(),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
                ) =>
            {
                last_error = format!("{address}: {}", status.message());
                continue;
            }
            Err(status) => {
                let _ = std::fs::remove_file(&pending_key);
                return Err(EnrollError::Refused(status.message().to_owned()));
            }
        };
        // The CA we are told to trust from now on must be the one we pinned.
        let ca = tls::certs_from_pem(&answer.ca_pem, "the returned CA")
            .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
        if !ca.iter().any(|c| tls::fingerprint(c.as_ref()) == pin) {
            return Err(EnrollError::BadAnswer(
                "the returned CA does not match the pinned fingerprint".into(),
            ));
        }
        tls::certs_from_pem(&answer.certificate_pem, "the returned certificate")
            .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
        let write = |path: &Path, bytes: &[u8]| {
            pitcrew_proto::files::write_public(path, bytes).map_err(|e| EnrollError::Write {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        write(&paths.ca, answer.ca_pem.as_bytes())?;
        write(&paths.cert, answer.certificate_pem.as_bytes())?;
        std::fs::rename(&pending_key, &paths.key).map_err(|e| EnrollError::Write {
            path: paths.key.display().to_string(),
            reason: e.to_string(),
        })?;
        let identity = Enrolled {
            host_id: answer.host_id,
            role: answer.role,
            labels: answer.labels.into_iter().collect(),
        };
        let json = serde_json::to_vec_pretty(&identity)
            .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
        write(&paths.identity, &json)?;
        return Ok(identity);
    }
    let _ = std::fs::remove_file(&pending_key);
    Err(EnrollError::Unreachable(last_error))
}

/// Share of a certificate's lifetime after which the agent renews it.
pub const RENEW_AT: f64 = 0.7;

/// Whether the stored host certificate has used up 70 % of its lifetime. An unreadable one is
/// not "due": connecting with it fails and says why.
pub fn renewal_due(state_dir: &Path) -> bool {
    tls::load_certs(&CredentialPaths::new(state_dir).cert)
        .ok()
        .and_then(|certs| certs.into_iter().next())
        .is_some_and(|leaf| {
            pitcrew_proto::identity::due_for_renewal(
                leaf.as_ref(),
                pitcrew_proto::now_ms(),
                RENEW_AT,
            )
        })
}

/// Renews the host certificate over the current mTLS identity when 70 % of its lifetime is
/// gone: a new key made here, a CSR, the new certificate stored; the old key is replaced only
/// once the new certificate is in hand. Returns whether it renewed.
pub async fn renew_if_due(
    config: &AgentConfig,
    channel: tonic::transport::Channel,
) -> Result<bool, EnrollError> {
    use pitcrew_proto::v1::{RenewRequest, agent_session_client::AgentSessionClient};
    if !renewal_due(&config.state_dir) {
        return Ok(false);
    }
    let paths = CredentialPaths::new(&config.state_dir);
    let pending_key = config.state_dir.join("host.key.new");
    let csr = new_key_and_csr(&pending_key)?;
    let answer = AgentSessionClient::new(channel)
        .renew(RenewRequest { csr_der: csr })
        .await
        .map_err(|status| EnrollError::Refused(status.message().to_owned()))?
        .into_inner();
    tls::certs_from_pem(&answer.certificate_pem, "the renewed certificate")
        .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    pitcrew_proto::files::write_public(&paths.cert, answer.certificate_pem.as_bytes()).map_err(
        |e| EnrollError::Write {
            path: paths.cert.display().to_string(),
            reason: e.to_string(),
        },
    )?;
    std::fs::rename(&pending_key, &paths.key).map_err(|e| EnrollError::Write {
        path: paths.key.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(true)
}
