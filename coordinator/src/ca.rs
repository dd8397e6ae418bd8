//! The fleet certificate authority: creates the CA, issues the coordinator's server certificate,
//! and host and operator certificates from CSRs (the key never leaves where it was made).
//!
//! Identity is carried in one URI SAN (`pitcrew://host/<id>` or `pitcrew://operator/<name>`),
//! read back by `pitcrew_proto::identity`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pitcrew_proto::identity::{HOST_URI_PREFIX, OPERATOR_URI_PREFIX};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use time::OffsetDateTime;

/// How long a host certificate lives; agents renew at 70 % of it.
pub const HOST_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the server certificate made by `init` lives.
pub const SERVICE_CERT_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// How long an operator certificate lives unless `operator_cert_lifetime` says otherwise.
pub const OPERATOR_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest an operator certificate may live: a standing credential is renewed, not kept.
pub const MAX_OPERATOR_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from a little before now, so small clock skew between hosts is harmless.
const BACKDATE: Duration = Duration::from_secs(300);

/// CA errors; the text says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "a CA already exists in {0}; refusing to overwrite it (move it away to start a new fleet)"
    )]
    Exists(String),
    #[error("cannot read the CA from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Key(String),
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    /// Lower-case hex serial, as `pitcrew_proto::identity` reports it.
    pub serial: String,
    pub not_after_ms: i64,
}

/// The loaded CA, able to sign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// File names of the CA inside the coordinator's data dir.
pub fn ca_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (data_dir.join("ca.crt"), data_dir.join("ca.key"))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive, non-zero DER integer of fixed length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) -> i64 {
    let now = OffsetDateTime::now_utc();
    // Backdate by at most a tenth of the lifetime, so a short-lived certificate is not born
    // already due for renewal.
    params.not_before = now - BACKDATE.min(lifetime / 10);
    params.not_after = now + lifetime;
    (params.not_after.unix_timestamp_nanos() / 1_000_000) as i64
}

impl Ca {
    /// Creates a new CA in `data_dir` (key mode 0600). Refuses to overwrite an existing one.
    pub fn create(data_dir: &Path, fleet_name: &str) -> Result<Ca, CaError> {
        let (cert_path, key_path) = ca_paths(data_dir);
        if cert_path.exists() || key_path.exists() {
            return Err(CaError::Exists(data_dir.display().to_string()));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("pitcrew fleet CA ({fleet_name})"),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "pitcrew");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        let write = |path: &Path, contents: &str, private: bool| {
            let result = if private {
                pitcrew_proto::files::write_private(path, contents.as_bytes())
            } else {
                pitcrew_proto::files::write_public(path, contents.as_bytes())
            };
            result.map_err(|e| CaError::Write {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        write(&key_path, &key.serialize_pem(), true)?;
        write(&cert_path, &cert.pem(), false)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA of `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Ca, CaError> {
        let (cert_path, key_path) = ca_paths(data_dir);
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| CaError::Load {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| CaError::Load {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CaError::Load {
            path: cert_path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Ca { issuer, cert_pem })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 fingerprint of the CA certificate (what agents pin).
    pub fn fingerprint(&self) -> String {
        let der = pitcrew_proto::tls::certs_from_pem(&self.cert_pem, "CA")
            .ok()
            .and_then(|c| c.into_iter().next())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        pitcrew_proto::tls::fingerprint(&der)
    }

    fn leaf_params(
        &self,
        common_name: &str,
        uri: Option<String>,
        lifetime: Duration,
    ) -> Result<(CertificateParams, i64), CaError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "pitcrew");
        if let Some(uri) = uri {
            let uri = uri
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Generate(e))?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.serial_number = Some(random_serial());
        let not_after = validity(&mut params, lifetime);
        Ok((params, not_after))
    }

    fn finish(
        &self,
        params: &CertificateParams,
        cert: rcgen::Certificate,
        not_after_ms: i64,
    ) -> Issued {
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.to_bytes()))
            .unwrap_or_default();
        Issued {
            cert_pem: cert.pem(),
            serial,
            not_after_ms,
        }
    }

    /// Checks that a CSR parses and its signature verifies (before a token use is spent on it).
    pub fn check_csr(csr_der: &[u8]) -> Result<(), CaError> {
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map(|_| ())
            .map_err(|e| CaError::BadCsr(e.to_string()))
    }

    /// Signs a host's CSR (verifying its signature) into a client certificate naming `host_id`.
    /// Everything in the CSR but its public key is ignored: the CA decides the name.
    pub fn sign_host_csr(
        &self,
        csr_der: &[u8],
        host_id: &str,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        pitcrew_proto::identity::validate_host_id(host_id).map_err(CaError::BadCsr)?;
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let (mut params, not_after) = self.leaf_params(
            host_id,
            Some(format!("{HOST_URI_PREFIX}{host_id}")),
            lifetime,
        )?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(self.finish(&params, cert, not_after))
    }

    /// Signs an operator's CSR (verifying its signature) into a client certificate naming the
    /// operator `name`. As for hosts, only the CSR's public key is used: the CA decides the name.
    pub fn sign_operator_csr(
        &self,
        csr_der: &[u8],
        name: &str,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        crate::operators::validate_name(name).map_err(CaError::BadCsr)?;
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let (mut params, not_after) =
            self.leaf_params(name, Some(format!("{OPERATOR_URI_PREFIX}{name}")), lifetime)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(self.finish(&params, cert, not_after))
    }

    /// Issues the coordinator's server certificate for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate()?;
        let (mut params, not_after) = self.leaf_params("pitcrew coordinator", None, lifetime)?;
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((self.finish(&params, cert, not_after), key.serialize_pem()))
    }

    /// Issues a host certificate with arbitrary validity dates and its key. Used to prove that
    /// expired certificates are refused.
    pub fn issue_host_between(
        &self,
        host_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate()?;
        let (mut params, _) = self.leaf_params(
            host_id,
            Some(format!("{HOST_URI_PREFIX}{host_id}")),
            HOST_CERT_VALIDITY,
        )?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        let not_after_ms = (not_after.unix_timestamp_nanos() / 1_000_000) as i64;
        Ok((
            self.finish(&params, cert, not_after_ms),
            key.serialize_pem(),
        ))
    }
}

/// Makes a key and a CSR (DER, key PEM), as an agent or the CLI does where the key lives; here
/// for tests and tools.
pub fn make_csr() -> Result<(Vec<u8>, String), CaError> {
    let made = pitcrew_proto::csr::key_and_csr("").map_err(|e| CaError::Key(e.to_string()))?;
    Ok((made.csr_der, made.key_pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitcrew_proto::identity::{Peer, peer_from_der};

    fn der(pem: &str) -> Vec<u8> {
        pitcrew_proto::tls::certs_from_pem(pem, "test").unwrap()[0]
            .as_ref()
            .to_vec()
    }

    #[test]
    fn host_certificates_name_the_host_the_ca_chose() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(dir.path(), "test").unwrap();
        let (csr, _key) = make_csr().unwrap();
        let issued = ca
            .sign_host_csr(&csr, "abc123", HOST_CERT_VALIDITY)
            .unwrap();
        let peer = peer_from_der(&der(&issued.cert_pem)).unwrap();
        assert_eq!(peer.peer, Peer::Host("abc123".into()));
        assert_eq!(peer.serial, issued.serial);
    }

    #[test]
    fn operator_certificates_name_the_operator_the_ca_was_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(dir.path(), "test").unwrap();
        let (csr, _key) = make_csr().unwrap();
        let issued = ca
            .sign_operator_csr(&csr, "alice", OPERATOR_CERT_VALIDITY)
            .unwrap();
        let peer = peer_from_der(&der(&issued.cert_pem)).unwrap();
        assert_eq!(peer.peer, Peer::Operator("alice".into()));
        assert_eq!(peer.serial, issued.serial);
        let (_, not_after) = pitcrew_proto::identity::validity_ms(&der(&issued.cert_pem)).unwrap();
        assert_eq!(not_after / 1000, issued.not_after_ms / 1000);
        assert!(matches!(
            ca.sign_operator_csr(&csr, "../alice", OPERATOR_CERT_VALIDITY),
            Err(CaError::BadCsr(_))
        ));
        assert!(matches!(
            ca.sign_operator_csr(b"garbage", "alice", OPERATOR_CERT_VALIDITY),
            Err(CaError::BadCsr(_))
        ));
    }

    #[test]
    fn the_ca_is_never_overwritten_and_its_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = Ca::create(dir.path(), "test").unwrap();
        assert!(matches!(
            Ca::create(dir.path(), "test"),
            Err(CaError::Exists(_))
        ));
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Ca::load(dir.path()).unwrap();
        assert_eq!(loaded.fingerprint(), first.fingerprint());
    }

    #[test]
    fn garbage_csrs_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(dir.path(), "test").unwrap();
        let error = ca
            .sign_host_csr(b"not a csr", "h1", HOST_CERT_VALIDITY)
            .unwrap_err();
        assert!(matches!(error, CaError::BadCsr(_)), "{error}");
        let (csr, _) = make_csr().unwrap();
        assert!(matches!(
            ca.sign_host_csr(&csr, "../etc", HOST_CERT_VALIDITY),
            Err(CaError::BadCsr(_))
        ));
    }
}
