//! Enrollment: make a key on this host, trade a join token and a CSR for a host certificate,
//! and keep the credentials in the state dir.
//!
//! The coordinator is authenticated by pinning its CA's SHA-256 fingerprint from the config (no
//! trust on first use); the CA it returns must carry that same fingerprint. The private key is
//! written (mode 0600) before anything is sent and never leaves the host.
//!
//! The exchange itself ([`request_certificate`]) and the key making ([`generate_key_and_csr`])
//! work in memory, so that a load generator can enroll thousands of simulated hosts from one
//! process exactly as an agent does; [`enroll`] adds the state dir around them.

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

/// A fresh private key and a CSR for it, both still in memory.
pub struct KeyAndCsr {
    /// The private key, PEM. Whoever keeps it decides where (the agent: a 0600 file).
    pub key_pem: String,
    /// PKCS#10 request, DER, as `EnrollRequest.csr_der` and `RenewRequest.csr_der` carry it.
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a private key, not even in a debug log.
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

/// Makes a fresh key and a CSR for it, in memory.
pub fn generate_key_and_csr() -> Result<KeyAndCsr, EnrollError> {
    let key = KeyPair::generate().map_err(|e| EnrollError::Key(e.to_string()))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_der: csr.der().to_vec(),
    })
}

/// Makes a fresh key (written 0600 to `key_path`) and a CSR for it.
pub fn new_key_and_csr(key_path: &Path) -> Result<Vec<u8>, EnrollError> {
    let made = generate_key_and_csr()?;
    pitcrew_proto::files::write_private(key_path, made.key_pem.as_bytes()).map_err(|e| {
        EnrollError::Write {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(made.csr_der)
}

/// What enrollment hands back, checked: the certificate and the pinned CA (PEM) and the identity
/// the token carried.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate_pem: String,
    pub ca_pem: String,
    pub identity: Enrolled,
}

/// What one host asks for when it enrolls.
#[derive(Debug, Clone)]
pub struct EnrollAsk<'a> {
    /// Every coordinator address; tried in turn while they are unreachable.
    pub coordinators: &'a [String],
    /// The CA fingerprint as configured (`sha256:...` or bare hex).
    pub ca_fingerprint: &'a str,
    pub token: &'a str,
    pub csr_der: &'a [u8],
    pub host_id: &'a str,
    pub hostname: &'a str,
}

/// The `Enrollment.Enroll` exchange itself, with nothing written anywhere: the coordinator is
/// authenticated by the pinned CA fingerprint, and the CA it returns must carry that same
/// fingerprint. Shared by the agent ([`enroll`]) and by anything that enrolls many simulated
/// hosts from one process.
pub async fn request_certificate(ask: &EnrollAsk<'_>) -> Result<Issued, EnrollError> {
    if ask.coordinators.is_empty() {
        return Err(EnrollError::NoCoordinator);
    }
    let pin = tls::normalize_fingerprint(ask.ca_fingerprint)
        .map_err(|e| EnrollError::Identity(e.to_string()))?;
    let tls_config = Arc::new(
        tls::pinned_client_config(&pin).map_err(|e| EnrollError::Identity(e.to_string()))?,
    );
    let mut last_error = String::new();
    // The configured addresses in turn; a standby's answer puts the leader it names first.
    let mut to_try: std::collections::VecDeque<String> = ask.coordinators.iter().cloned().collect();
    let mut tried = std::collections::BTreeSet::new();
    while let Some(address) = to_try.pop_front() {
        if !tried.insert(address.clone()) {
            continue;
        }
        let address = address.as_str();
        let channel = match tls::connect(address, tls_config.clone()).await {
            Ok(channel) => channel,
            Err(error) => {
                last_error = error.to_string();
                continue;
            }
        };
        let mut client = EnrollmentClient::new(channel);
        let request = EnrollRequest {
            token: ask.token.trim().to_owned(),
            csr_der: ask.csr_der.to_vec(),
            host_id: ask.host_id.to_owned(),
            hostname: ask.hostname.to_owned(),
        };
        let answer = match client.enroll(request).await {
            Ok(answer) => answer.into_inner(),
            // Transport trouble, not an answer: a connection cut before the reply (Cancelled)
            // is what an overloaded coordinator shedding connections looks like.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Unknown
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                ) =>
            {
                last_error = format!("{address}: {}", status.message());
                if let Some(leader) =
                    pitcrew_proto::standby_leader(&status).filter(|l| !l.is_empty())
                {
                    to_try.push_front(leader);
                }
                continue;
            }
            Err(status) => return Err(EnrollError::Refused(status.message().to_owned())),
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
        return Ok(Issued {
            certificate_pem: answer.certificate_pem,
            ca_pem: answer.ca_pem,
            identity: Enrolled {
                host_id: answer.host_id,
                role: answer.role,
                labels: answer.labels.into_iter().collect(),
            },
        });
    }
    Err(EnrollError::Unreachable(last_error))
}

/// The mTLS client configuration from credentials held in memory (PEM), as
/// [`session_tls`] builds it from the state dir.
pub fn tls_from_pem(
    ca_pem: &str,
    certificate_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, tls::TlsError> {
    let ca = tls::certs_from_pem(ca_pem, "the CA")?;
    let chain = tls::certs_from_pem(certificate_pem, "the host certificate")?;
    let key = tls::key_from_pem(key_pem, "the host key")?;
    tls::client_config(&ca, Some((chain, key)))
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
    // Checked before anything is written, as the exchange itself would.
    tls::normalize_fingerprint(pin).map_err(|e| EnrollError::Identity(e.to_string()))?;
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
    let issued = match request_certificate(&EnrollAsk {
        coordinators: &config.coordinators,
        ca_fingerprint: pin,
        token,
        csr_der: &csr,
        host_id: &host_id,
        hostname: &hostname,
    })
    .await
    {
        Ok(issued) => issued,
        Err(error) => {
            // Refused or unreachable: no certificate will come for this key. An unusable
            // answer leaves it for the operator to look at.
            if matches!(error, EnrollError::Refused(_) | EnrollError::Unreachable(_)) {
                let _ = std::fs::remove_file(&pending_key);
            }
            return Err(error);
        }
    };
    let write = |path: &Path, bytes: &[u8]| {
        pitcrew_proto::files::write_public(path, bytes).map_err(|e| EnrollError::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    write(&paths.ca, issued.ca_pem.as_bytes())?;
    write(&paths.cert, issued.certificate_pem.as_bytes())?;
    std::fs::rename(&pending_key, &paths.key).map_err(|e| EnrollError::Write {
        path: paths.key.display().to_string(),
        reason: e.to_string(),
    })?;
    let json = serde_json::to_vec_pretty(&issued.identity)
        .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    write(&paths.identity, &json)?;
    Ok(issued.identity)
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
    state_dir: &Path,
    channel: tonic::transport::Channel,
) -> Result<bool, EnrollError> {
    use pitcrew_proto::v1::{RenewRequest, agent_session_client::AgentSessionClient};
    if !renewal_due(state_dir) {
        return Ok(false);
    }
    // The new key stays in memory until the certificate for it is here: both are then
    // committed together (see `commit_renewal`). The coordinator keeps accepting the current
    // certificate until the new one is first used, so an answer lost on the way costs nothing.
    let made = generate_key_and_csr()?;
    let answer = AgentSessionClient::new(channel)
        .renew(RenewRequest {
            csr_der: made.csr_der.clone(),
        })
        .await
        .map_err(|status| EnrollError::Refused(status.message().to_owned()))?
        .into_inner();
    tls::certs_from_pem(&answer.certificate_pem, "the renewed certificate")
        .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    commit_renewal(state_dir, &made.key_pem, &answer.certificate_pem)?;
    Ok(true)
}

/// Where a renewal being committed keeps its parts, and the marker that says they are whole.
struct RenewalPaths {
    key: PathBuf,
    cert: PathBuf,
    committed: PathBuf,
}

impl RenewalPaths {
    fn new(state_dir: &Path) -> RenewalPaths {
        RenewalPaths {
            key: state_dir.join("host.key.new"),
            cert: state_dir.join("host.crt.new"),
            committed: state_dir.join("renewal.committed"),
        }
    }
}

fn write_error(path: &Path, e: impl std::fmt::Display) -> EnrollError {
    EnrollError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Replaces the host's key and certificate as one unit: both are written (and synced) beside
/// the current ones, then a marker says the pair is whole, then each is renamed into place.
/// A crash before the marker leaves the current pair (still accepted by the coordinator); a
/// crash after it is finished by [`recover_renewal`] at the next start. Never a new key with
/// an old certificate, or the reverse.
pub fn commit_renewal(state_dir: &Path, key_pem: &str, cert_pem: &str) -> Result<(), EnrollError> {
    let renewal = RenewalPaths::new(state_dir);
    pitcrew_proto::files::write_private(&renewal.key, key_pem.as_bytes())
        .map_err(|e| write_error(&renewal.key, e))?;
    pitcrew_proto::files::write_public(&renewal.cert, cert_pem.as_bytes())
        .map_err(|e| write_error(&renewal.cert, e))?;
    pitcrew_proto::files::write_private(&renewal.committed, b"host.key.new host.crt.new\n")
        .map_err(|e| write_error(&renewal.committed, e))?;
    finish_renewal(state_dir)
}

/// Moves a committed renewal's key and certificate into place, then drops the marker.
fn finish_renewal(state_dir: &Path) -> Result<(), EnrollError> {
    let renewal = RenewalPaths::new(state_dir);
    let paths = CredentialPaths::new(state_dir);
    for (from, to) in [(&renewal.key, &paths.key), (&renewal.cert, &paths.cert)] {
        // Already moved by an earlier, interrupted attempt: nothing to do for this one.
        if from.exists() {
            std::fs::rename(from, to).map_err(|e| write_error(to, e))?;
        }
    }
    // The renames must be durable before the marker goes.
    std::fs::File::open(state_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| write_error(state_dir, e))?;
    std::fs::remove_file(&renewal.committed).map_err(|e| write_error(&renewal.committed, e))?;
    Ok(())
}

/// At start: finishes a renewal whose pair was committed, or throws away one that was not
/// (the current key and certificate are then still the ones in use). Returns what it did.
pub fn recover_renewal(state_dir: &Path) -> Result<Option<&'static str>, EnrollError> {
    let renewal = RenewalPaths::new(state_dir);
    if renewal.committed.exists() {
        finish_renewal(state_dir)?;
        return Ok(Some(
            "finished a renewal interrupted after its new key and certificate were stored",
        ));
    }
    let mut dropped = false;
    for leftover in [&renewal.key, &renewal.cert] {
        if leftover.exists() {
            std::fs::remove_file(leftover).map_err(|e| write_error(leftover, e))?;
            dropped = true;
        }
    }
    Ok(dropped.then_some(
        "dropped a renewal interrupted before its new key and certificate were both stored",
    ))
}
