//! `Enrollment.Enroll`: a join token and a CSR in, a host certificate out.
//!
//! The token is checked (known, not expired, not revoked, uses left) and used up in the same
//! transaction that records the host, so a use is spent only on a host that is enrolled. A
//! token creates **new** hosts only: re-enrolling an existing host id (a rebuilt machine) needs
//! a token made for that host (`pitcrew token create --replace HOST`), and a re-enrolled host
//! keeps its role, labels and name — no token can move a host into another cluster or role.
//! Hostnames are checked and unique in the fleet, fixed at enrollment. The CSR's signature is
//! verified and only its public key is used; the host's old certificate stops working because
//! the registry accepts only the newest serial, and its live session is closed at once.
//!
//! This is the one service open without a certificate, so refusals are rate-limited per source
//! address: past `refused_enrollments_per_minute`, further attempts are turned away without a
//! look at the store and counted into one audit event a minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pitcrew_proto::v1::{EnrollRequest, EnrollResponse, enrollment_server::Enrollment};
use tonic::{Request, Response, Status};

use super::Coordinator;
use crate::metrics::EnrollRefusal;
use crate::store::{EnrollRefusal as Refusal, Enrolled, HostEnrollment, TokenRefusal};
use crate::tokens;

/// The window refused enrollments are counted over.
const REFUSAL_WINDOW_MS: i64 = 60_000;

/// Refused enrollments from one source address in the current window.
#[derive(Debug)]
struct Window {
    started_ms: i64,
    refused: u32,
    /// Attempts turned away unread because `refused` reached the limit.
    turned_away: u32,
    last_reason: String,
}

/// Refused enrollments per source address.
#[derive(Debug, Default)]
pub struct RefusalGate {
    sources: Mutex<HashMap<IpAddr, Window>>,
}

impl RefusalGate {
    /// Whether an attempt from `ip` may be looked at; counts it when not.
    fn admit(&self, ip: IpAddr, limit: u32, now_ms: i64) -> Result<(), Status> {
        let mut sources = self.sources.lock();
        let Some(w) = sources.get_mut(&ip) else {
            return Ok(());
        };
        if now_ms - w.started_ms >= REFUSAL_WINDOW_MS || w.refused < limit {
            return Ok(());
        }
        w.turned_away += 1;
        let wait_s = (w.started_ms + REFUSAL_WINDOW_MS - now_ms).max(0) / 1000 + 1;
        Err(Status::resource_exhausted(format!(
            "too many refused enrollments from {ip}; try again in {wait_s} s"
        )))
    }

    /// Counts a refusal; returns whether it is within the limit (and so audited on its own).
    fn refused(&self, ip: IpAddr, reason: &str, limit: u32, now_ms: i64) -> bool {
        let mut sources = self.sources.lock();
        let w = sources.entry(ip).or_insert_with(|| Window {
            started_ms: now_ms,
            refused: 0,
            turned_away: 0,
            last_reason: String::new(),
        });
        if now_ms - w.started_ms >= REFUSAL_WINDOW_MS && w.turned_away == 0 {
            w.started_ms = now_ms;
            w.refused = 0;
        }
        w.refused += 1;
        w.last_reason = reason.to_owned();
        w.refused <= limit
    }

    /// Ends windows that are over; returns one summary per source that was turned away.
    pub fn sweep(&self, now_ms: i64) -> Vec<(IpAddr, u32, String)> {
        let mut out = Vec::new();
        self.sources.lock().retain(|ip, w| {
            if now_ms - w.started_ms < REFUSAL_WINDOW_MS {
                return true;
            }
            if w.turned_away > 0 {
                out.push((*ip, w.turned_away, w.last_reason.clone()));
            }
            false
        });
        out
    }
}

/// Audits, once a minute, the enrollments turned away over the limit (one event per source).
async fn summarise_refusals(c: Arc<Coordinator>, gate: Arc<RefusalGate>) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        u64::try_from(REFUSAL_WINDOW_MS).unwrap_or(60_000),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (ip, count, reason) in gate.sweep(pitcrew_proto::now_ms()) {
            c.events.audit(
                "enrollment",
                "",
                "",
                &format!(
                    "{count} more enrollment attempts from {ip} were turned away: too many were refused (last: {reason})"
                ),
            );
        }
    }
}

/// Checks a hostname an agent asks to enroll under (it reaches terminals and certificates):
/// letters, digits, `-`, `_` and `.`, 1 to 253 characters.
pub fn validate_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "hostname must be 1 to 253 characters, got {}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(format!(
            "hostname {:?} holds {bad:?}; only letters, digits, '-', '_' and '.' are allowed",
            name.escape_debug().to_string()
        ));
    }
    Ok(())
}

pub struct EnrollmentService {
    coordinator: Arc<Coordinator>,
    refusals: Arc<RefusalGate>,
}

impl EnrollmentService {
    /// The service, and the task that summarises turned-away attempts once a minute.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        let refusals = Arc::new(RefusalGate::default());
        tokio::spawn(summarise_refusals(coordinator.clone(), refusals.clone()));
        EnrollmentService {
            coordinator,
            refusals,
        }
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let c = &self.coordinator;
        let addr = request.remote_addr();
        let peer = addr.map(|a| a.to_string()).unwrap_or_default();
        let ip = addr
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let limit = c.config.limits.refused_enrollments_per_minute;
        let now = pitcrew_proto::now_ms();
        if let Err(status) = self.refusals.admit(ip, limit, now) {
            c.metrics.enrollment_refused(EnrollRefusal::RateLimited);
            return Err(status);
        }
        let request = request.into_inner();
        // Every refusal below is counted against the source, and audited while within limits.
        let refuse = |status: Status, host_id: &str, why: EnrollRefusal| {
            c.metrics.enrollment_refused(why);
            let reason = status.message().to_owned();
            tracing::warn!(message = "refused an enrollment", %peer, %host_id, %reason);
            if self.refusals.refused(ip, &reason, limit, now) {
                c.events.audit(
                    "enrollment",
                    "",
                    "",
                    &format!("enrollment from {peer} refused: {reason}"),
                );
            }
            status
        };
        if let Err(reason) = pitcrew_proto::identity::validate_host_id(&request.host_id) {
            return Err(refuse(
                Status::invalid_argument(format!("host_id: {reason}")),
                "",
                EnrollRefusal::InvalidHostId,
            ));
        }
        let hostname = if request.hostname.is_empty() {
            request.host_id.clone()
        } else {
            request.hostname.clone()
        };
        if let Err(reason) = validate_hostname(&hostname) {
            return Err(refuse(
                Status::invalid_argument(reason),
                &request.host_id,
                EnrollRefusal::InvalidHostname,
            ));
        }
        // Check the CSR before anything is spent on it.
        let issued = crate::ca::Ca::check_csr(&request.csr_der)
            .and_then(|()| {
                c.ca.sign_host_csr(
                    &request.csr_der,
                    &request.host_id,
                    c.config.host_cert_lifetime,
                )
            })
            .map_err(|e| {
                refuse(
                    Status::invalid_argument(e.to_string()),
                    &request.host_id,
                    EnrollRefusal::InvalidCsr,
                )
            })?;

        // One transaction: the token's checks and use, the host's checks, and its record.
        let enrollment = HostEnrollment {
            token_hash: tokens::hash(&request.token),
            host_id: request.host_id.clone(),
            hostname: hostname.clone(),
            serial: issued.serial.clone(),
            now_ms: now,
        };
        let Enrolled {
            token,
            record,
            reenrolled,
        } = match c.store.enroll(enrollment).await? {
            Ok(done) => done,
            Err(refusal) => {
                let why = match &refusal {
                    Refusal::Token(TokenRefusal::Unknown) => EnrollRefusal::TokenUnknown,
                    Refusal::Token(TokenRefusal::Expired) => EnrollRefusal::TokenExpired,
                    Refusal::Token(TokenRefusal::Revoked) => EnrollRefusal::TokenRevoked,
                    Refusal::Token(TokenRefusal::UsedUp) => EnrollRefusal::TokenUsedUp,
                    Refusal::Taken { .. } => EnrollRefusal::HostEnrolled,
                    Refusal::Removed { .. } => EnrollRefusal::HostRemoved,
                    Refusal::WrongHost { .. } => EnrollRefusal::TokenForAnotherHost,
                    Refusal::NameTaken { .. } => EnrollRefusal::HostnameTaken,
                };
                let status = match refusal {
                    Refusal::Token(_)
                    | Refusal::Taken { .. }
                    | Refusal::Removed { .. }
                    | Refusal::WrongHost { .. } => Status::permission_denied(refusal.to_string()),
                    Refusal::NameTaken { .. } => Status::already_exists(refusal.to_string()),
                };
                return Err(refuse(status, &request.host_id, why));
            }
        };
        c.engine.host_enrolled(record.clone());
        let verb = if reenrolled {
            // Its old certificate no longer works; neither does a session it still holds.
            c.registry.close_session(
                &record.host_id,
                "the host re-enrolled with a new certificate",
            );
            "re-enrolled (its previous certificate is no longer accepted)"
        } else {
            "enrolled"
        };
        tracing::info!(message = "host enrolled", host_id = %record.host_id, hostname = %record.hostname, role = %record.role, token = %token.id, reenrolled);
        c.events.audit(
            &format!("token {}", token.id),
            &record.host_id,
            "",
            &format!(
                "host {} {verb} as {} with token {}",
                record.hostname, record.role, token.id
            ),
        );
        Ok(Response::new(EnrollResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: c.ca.cert_pem().to_owned(),
            host_id: record.host_id,
            role: record.role,
            labels: record.labels.into_iter().collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_past_the_limit_are_turned_away_and_summarised_once() {
        let gate = RefusalGate::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..3 {
            assert!(gate.admit(ip, 3, 1000 + i).is_ok());
            assert!(gate.refused(ip, "the join token is not known", 3, 1000 + i));
        }
        // The fourth attempt within the minute is not even looked at.
        let status = gate.admit(ip, 3, 2000).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(gate.admit(ip, 3, 2001).is_err());
        // Another source is unaffected.
        assert!(gate.admit("192.0.2.8".parse().unwrap(), 3, 2000).is_ok());
        assert!(gate.sweep(30_000).is_empty(), "the window is not over yet");
        let summary = gate.sweep(61_000);
        assert_eq!(
            summary,
            vec![(ip, 2, "the join token is not known".to_owned())]
        );
        assert!(gate.admit(ip, 3, 61_001).is_ok());
    }

    #[test]
    fn hostnames_that_would_reach_a_terminal_badly_are_refused() {
        assert!(validate_hostname("web-1.example.net").is_ok());
        assert!(validate_hostname("").is_err());
        let err = validate_hostname("evil\u{1b}[2Jname").unwrap_err();
        assert!(err.contains("only letters"), "{err}");
        assert!(validate_hostname(&"a".repeat(254)).is_err());
    }
}
