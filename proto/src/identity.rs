//! Who is on the other end: read from a verified certificate, never from a request field.
//!
//! Every certificate the fleet CA issues carries exactly one URI subject alternative name:
//! `pitcrew://host/<host-id>` for an agent, `pitcrew://operator/<name>` for an operator.

use std::fmt;

use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// URI prefix naming a host certificate.
pub const HOST_URI_PREFIX: &str = "pitcrew://host/";
/// URI prefix naming an operator certificate.
pub const OPERATOR_URI_PREFIX: &str = "pitcrew://operator/";

/// The verified identity of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// An agent, named by its host id.
    Host(String),
    /// A person or script with an operator certificate.
    Operator(String),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Host(id) => write!(f, "host {id}"),
            Peer::Operator(name) => write!(f, "operator {name}"),
        }
    }
}

/// A peer together with the serial of the certificate it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pub peer: Peer,
    /// Lower-case hex of the certificate serial number.
    pub serial: String,
}

/// Why a certificate could not name a peer.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the certificate names no pitcrew host or operator (no pitcrew:// URI)")]
    NoPitcrewName,
}

/// Reads the pitcrew identity and serial from a DER certificate.
pub fn peer_from_der(der: &[u8]) -> Result<PeerCert, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let serial = hex::encode(cert.raw_serial());
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let names = san
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    for name in names {
        if let GeneralName::URI(uri) = name {
            if let Some(id) = uri.strip_prefix(HOST_URI_PREFIX).filter(|s| !s.is_empty()) {
                return Ok(PeerCert {
                    peer: Peer::Host(id.to_owned()),
                    serial,
                });
            }
            if let Some(op) = uri
                .strip_prefix(OPERATOR_URI_PREFIX)
                .filter(|s| !s.is_empty())
            {
                return Ok(PeerCert {
                    peer: Peer::Operator(op.to_owned()),
                    serial,
                });
            }
        }
    }
    Err(IdentityError::NoPitcrewName)
}

/// A certificate's validity period in Unix milliseconds (`not_before`, `not_after`).
pub fn validity_ms(der: &[u8]) -> Result<(i64, i64), IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let validity = cert.validity();
    Ok((
        validity.not_before.timestamp() * 1000,
        validity.not_after.timestamp() * 1000,
    ))
}

/// Whether a certificate has used up `fraction` of its lifetime at `now_ms` (renew at 0.7).
pub fn due_for_renewal(der: &[u8], now_ms: i64, fraction: f64) -> bool {
    match validity_ms(der) {
        Ok((start, end)) if end > start => {
            (now_ms - start) as f64 >= (end - start) as f64 * fraction
        }
        _ => true,
    }
}

/// The identity behind a gRPC request, from the certificate the TLS layer verified.
pub fn peer_of<T>(request: &Request<T>) -> Result<PeerCert, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated(IdentityError::NoCertificate.to_string()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated(IdentityError::NoCertificate.to_string()))?;
    peer_from_der(leaf.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))
}

/// Requires an operator certificate; agents are refused.
pub fn require_operator<T>(request: &Request<T>) -> Result<(String, String), Status> {
    let cert = peer_of(request)?;
    match cert.peer {
        Peer::Operator(name) => Ok((name, cert.serial)),
        other => {
            tracing::warn!(message = "refused a non-operator certificate on the Admin service", peer = %other);
            Err(Status::permission_denied(format!(
                "{other} is not an operator: the Admin service needs an operator certificate"
            )))
        }
    }
}

/// Requires a host certificate; operators are refused.
pub fn require_host<T>(request: &Request<T>) -> Result<(String, String), Status> {
    let cert = peer_of(request)?;
    match cert.peer {
        Peer::Host(id) => Ok((id, cert.serial)),
        other => {
            tracing::warn!(message = "refused a non-host certificate on the AgentSession service", peer = %other);
            Err(Status::permission_denied(format!(
                "{other} is not a host: agent sessions need a host certificate"
            )))
        }
    }
}

/// Checks that a host id is safe to use as a name (in certificates, paths and logs).
pub fn validate_host_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!(
            "host id must be 1 to 64 characters, got {}",
            id.len()
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("host id may hold only letters, digits, '-' and '_'".to_owned());
    }
    Ok(())
}
