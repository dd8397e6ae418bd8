//! How the CLI reaches the coordinator: address and operator certificate from flags or
//! `PITCREW_*` environment variables; and, when a connection fails over a certificate, an error
//! that says whose certificate and why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use pitcrew_proto::tls;
use pitcrew_proto::v1::admin_client::AdminClient;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tonic::transport::Channel;

/// The coordinator address when neither a flag, the environment nor a context gives one.
pub const DEFAULT_COORDINATOR: &str = "https://127.0.0.1:7443";
/// The files `pitcrew-coordinator init` writes, used when nothing else names them: they suit
/// the coordinator's own host.
pub const DEFAULT_CA: &str = "/var/lib/pitcrew-coordinator/ca.crt";
pub const DEFAULT_CERT: &str = "/var/lib/pitcrew-coordinator/operator/admin.crt";
pub const DEFAULT_KEY: &str = "/var/lib/pitcrew-coordinator/operator/admin.key";

/// Connection flags shared by every command. Each is taken from the flag, else the
/// environment, else the chosen context of the client config (`pitcrew context`), else the
/// files `pitcrew-coordinator init` writes on the coordinator's host.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectFlags {
    /// Coordinator address [default: the context's, else https://127.0.0.1:7443].
    #[arg(long, global = true, env = "PITCREW_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The fleet CA certificate (PEM) [default: the context's, else
    /// /var/lib/pitcrew-coordinator/ca.crt].
    #[arg(long, global = true, env = "PITCREW_CA")]
    pub ca: Option<PathBuf>,
    /// Your operator certificate (PEM) [default: the context's, else
    /// /var/lib/pitcrew-coordinator/operator/admin.crt].
    #[arg(long, global = true, env = "PITCREW_CERT")]
    pub cert: Option<PathBuf>,
    /// Your operator key (PEM) [default: the context's, else
    /// /var/lib/pitcrew-coordinator/operator/admin.key].
    #[arg(long, global = true, env = "PITCREW_KEY")]
    pub key: Option<PathBuf>,
    /// The context of the client config to use [default: its current one]. The config is
    /// $PITCREW_CONFIG, else ~/.config/pitcrew/config.toml.
    #[arg(long, global = true, env = "PITCREW_CONTEXT")]
    pub context: Option<String>,
}

impl ConnectFlags {
    /// The connection to use: each setting from the flag or environment, else the context,
    /// else the default. The client config is read only when a context is named or a setting
    /// is missing.
    pub fn resolve(&self) -> anyhow::Result<ConnectArgs> {
        let complete = self.coordinator.is_some()
            && self.ca.is_some()
            && self.cert.is_some()
            && self.key.is_some();
        let context = if complete && self.context.is_none() {
            crate::contexts::Context::default()
        } else {
            crate::contexts::chosen(self.context.as_deref())?
        };
        Ok(ConnectArgs {
            coordinator: self
                .coordinator
                .clone()
                .or(context.coordinator)
                .unwrap_or_else(|| DEFAULT_COORDINATOR.into()),
            ca: self
                .ca
                .clone()
                .or(context.ca)
                .unwrap_or_else(|| DEFAULT_CA.into()),
            cert: self
                .cert
                .clone()
                .or(context.cert)
                .unwrap_or_else(|| DEFAULT_CERT.into()),
            key: self
                .key
                .clone()
                .or(context.key)
                .unwrap_or_else(|| DEFAULT_KEY.into()),
        })
    }
}

/// Where and as whom a command connects: [`ConnectFlags`] resolved.
#[derive(Debug, Clone)]
pub struct ConnectArgs {
    pub coordinator: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where a standby coordinator last said the fleet's leader is: this process's next
/// connection goes there first.
static LEADER: Mutex<Option<String>> = Mutex::new(None);

/// The addresses to try, in order: the leader a standby named, then `--coordinator`'s (a
/// comma-separated list when the fleet has several coordinators).
fn addresses(args: &ConnectArgs) -> Vec<String> {
    let leader = LEADER.lock().ok().and_then(|l| l.clone());
    let listed = args
        .coordinator
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned);
    let mut out: Vec<String> = leader.into_iter().chain(listed).collect();
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|a| seen.insert(a.clone()));
    out
}

/// Opens an Admin client with the operator certificate, on the first of the coordinator's
/// addresses that answers (see [`addresses`]).
pub async fn admin(args: &ConnectArgs) -> anyhow::Result<AdminClient<Channel>> {
    let mut first_error = None;
    for address in addresses(args) {
        match admin_at(args, &address).await {
            Ok(client) => return Ok(client),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| anyhow::anyhow!("no coordinator address is given")))
}

async fn admin_at(args: &ConnectArgs, address: &str) -> anyhow::Result<AdminClient<Channel>> {
    let ca = tls::load_certs(&args.ca)?;
    let chain = tls::load_certs(&args.cert)?;
    if let Some(leaf) = chain.first() {
        renewal_hint(&args.cert, leaf.as_ref());
    }
    let key = tls::load_key(&args.key)?;
    let mut config = tls::client_config(&ca, Some((chain, key)))?;
    let verifier = RecordingVerifier::new(&ca)?;
    let refused = verifier.refused.clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(verifier));
    let channel = match tls::connect(address, Arc::new(config)).await {
        Ok(channel) => channel,
        Err(error) => {
            let refusal = refused.lock().ok().and_then(|mut r| r.take());
            return Err(match refusal {
                Some(refusal) => anyhow::anyhow!(server_refused(args, &refusal)),
                None => anyhow::Error::new(error),
            })
            .with_context(|| format!("cannot reach the coordinator at {address}"));
        }
    };
    Ok(AdminClient::new(channel).max_decoding_message_size(pitcrew_proto::MAX_MESSAGE_BYTES))
}

/// What to tell the operator when this side refused the coordinator's certificate.
fn server_refused(args: &ConnectArgs, error: &rustls::Error) -> String {
    let ca = args.ca.display();
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!(
            "the coordinator's certificate is not signed by the CA in {ca}: it is another fleet's \
             coordinator, or {ca} is another fleet's CA (--ca, PITCREW_CA)"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the coordinator's certificate has expired (or this machine's clock is wrong)".into(),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => {
            "the coordinator's certificate is not valid yet: is this machine's clock wrong?".into()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the coordinator's certificate does not name the host in {} (--coordinator, \
             PITCREW_COORDINATOR): use a name or address given to `pitcrew-coordinator init --san`",
            args.coordinator
        ),
        other => format!("the coordinator's certificate was refused: {other}"),
    }
}

/// The server verifier [`tls::client_config`] sets (the fleet CA as the only root), remembering
/// why it refused a certificate: the handshake's own error reaches the caller only as text.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    refused: Arc<Mutex<Option<rustls::Error>>>,
}

impl RecordingVerifier {
    fn new(ca: &[CertificateDer<'static>]) -> anyhow::Result<RecordingVerifier> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(tls::roots(ca)?), tls::provider())
                .build()
                .context("the server certificate verifier")?;
        Ok(RecordingVerifier {
            inner,
            refused: Arc::default(),
        })
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let (Err(error), Ok(mut refused)) = (&verdict, self.refused.lock()) {
            *refused = Some(error.clone());
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Explains an error that ended a command: when a call failed because the connection closed
/// under it, and the coordinator would refuse this operator certificate at the handshake (with
/// TLS 1.3 the client learns of that refusal only as a closed connection), says so. The
/// coordinator verifies operator certificates against the fleet CA, the CA this side verified
/// the coordinator with, so the same check here tells why.
pub fn explain(args: &ConnectArgs, error: anyhow::Error) -> anyhow::Error {
    let dropped = error
        .downcast_ref::<CallFailed>()
        .is_some_and(|call| call.connection_lost());
    if !dropped {
        return error;
    }
    match refused_operator_certificate(&args.ca, &args.cert) {
        Some(why) => anyhow::anyhow!(
            "the coordinator refused the operator certificate {}: {why}",
            args.cert.display()
        ),
        None => error,
    }
}

/// Why the coordinator refuses the operator certificate in `cert`, if it does: checked as the
/// coordinator checks it, against the fleet CA in `ca`.
fn refused_operator_certificate(ca: &Path, cert: &Path) -> Option<String> {
    let ca_certs = tls::load_certs(ca).ok()?;
    let chain = tls::load_certs(cert).ok()?;
    let (leaf, intermediates) = chain.split_first()?;
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(tls::roots(&ca_certs).ok()?),
        tls::provider(),
    )
    .build()
    .ok()?;
    let error = verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .err()?;
    let ca = ca.display();
    Some(match error {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!(
            "it was not issued by this fleet's CA (the one in {ca}); ask an admin of this \
             fleet for a certificate (pitcrew operator add)"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "it has expired; ask an admin for a new one (pitcrew operator add)".into(),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "it is not valid yet: is this machine's clock wrong?".into(),
        other => format!("{other}"),
    })
}

/// Says on stderr when the operator certificate has used 70 % of its lifetime (or expired), so
/// that it is renewed before the coordinator stops accepting it.
fn renewal_hint(path: &std::path::Path, der: &[u8]) {
    let now = pitcrew_proto::now_ms();
    if !pitcrew_proto::identity::due_for_renewal(der, now, 0.7) {
        return;
    }
    match pitcrew_proto::identity::validity_ms(der) {
        Ok((_, not_after)) if not_after <= now => crate::say_err!(
            "pitcrew: your operator certificate {} has expired; ask an admin for a new one (pitcrew operator add)",
            path.display()
        ),
        Ok((_, not_after)) => crate::say_err!(
            "pitcrew: your operator certificate {} expires in {}; renew it now: pitcrew operator renew",
            path.display(),
            humantime::format_duration(std::time::Duration::from_secs(
                u64::try_from((not_after - now) / 1000).unwrap_or_default()
            ))
        ),
        Err(_) => {}
    }
}

/// Turns a gRPC status into an error an operator can read (the coordinator's message as is).
/// A standby's answer also records where the leader is, for the next connection.
pub fn status(status: tonic::Status) -> anyhow::Error {
    if let Some(leader) = pitcrew_proto::standby_leader(&status).filter(|l| !l.is_empty())
        && let Ok(mut known) = LEADER.lock()
    {
        *known = Some(leader);
    }
    let code = match status.code() {
        tonic::Code::PermissionDenied => "refused",
        tonic::Code::Unauthenticated => "not authenticated",
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::Unavailable => "unavailable",
        _ => "error",
    };
    anyhow::Error::new(CallFailed {
        shown: format!("{code}: {}", status.message()),
        status,
    })
}

/// A call that failed, as [`status`] shows it, keeping the status for [`explain`].
#[derive(Debug)]
pub struct CallFailed {
    shown: String,
    status: tonic::Status,
}

impl CallFailed {
    /// Whether a standby coordinator refused the call (nothing was done): the command may be
    /// run again on the leader.
    pub fn from_standby(&self) -> bool {
        pitcrew_proto::standby_leader(&self.status).is_some()
    }

    /// The status code the call ended with.
    pub fn code(&self) -> tonic::Code {
        self.status.code()
    }

    /// Whether the call failed because its connection failed (tonic's transport error), not
    /// because the coordinator answered with an error.
    fn connection_lost(&self) -> bool {
        std::error::Error::source(&self.status)
            .is_some_and(|source| source.is::<tonic::transport::Error>())
    }
}

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::error::Error for CallFailed {}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(coordinator: &str) -> ConnectArgs {
        ConnectArgs {
            coordinator: coordinator.into(),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
        }
    }

    #[test]
    fn a_standby_naming_the_leader_sends_the_next_connection_there_first() {
        let listed = args(" https://c1:7443, https://c2:7443 ,,https://c3:7443");
        assert_eq!(
            addresses(&listed),
            ["https://c1:7443", "https://c2:7443", "https://c3:7443"]
        );
        let mut refused = tonic::Status::unavailable("this coordinator is a standby");
        refused.metadata_mut().insert(
            pitcrew_proto::LEADER_METADATA,
            "https://c2:7443".parse().unwrap(),
        );
        let error = status(refused);
        let failed = error.downcast_ref::<CallFailed>().unwrap();
        assert!(failed.from_standby());
        assert_eq!(
            addresses(&listed),
            ["https://c2:7443", "https://c1:7443", "https://c3:7443"]
        );
        // A plain unavailable coordinator is not a standby.
        let error = status(tonic::Status::unavailable("down"));
        assert!(!error.downcast_ref::<CallFailed>().unwrap().from_standby());
    }
}
