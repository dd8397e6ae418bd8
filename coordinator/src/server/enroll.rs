//! `Enrollment.Enroll`: a join token and a CSR in, a host certificate out.
//!
//! The token is checked (known, not expired, not revoked, uses left) and used up atomically;
//! the CSR's signature is verified and only its public key is used. A re-enrolled host (same
//! machine id, new token) gets a new certificate and its old one stops working, because the
//! registry accepts only the newest serial.

use std::sync::Arc;

use pitcrew_proto::v1::{EnrollRequest, EnrollResponse, enrollment_server::Enrollment};
use tonic::{Request, Response, Status};

use super::Coordinator;
use crate::store::{HostRecord, hosts, tokens as token_store};
use crate::tokens;

pub struct EnrollmentService {
    coordinator: Arc<Coordinator>,
}

impl EnrollmentService {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        EnrollmentService { coordinator }
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let request = request.into_inner();
        let c = &self.coordinator;
        if let Err(reason) = pitcrew_proto::identity::validate_host_id(&request.host_id) {
            return Err(Status::invalid_argument(format!("host_id: {reason}")));
        }
        let hostname: String = request
            .hostname
            .chars()
            .filter(|ch| !ch.is_control())
            .take(253)
            .collect();
        let now = pitcrew_proto::now_ms();
        // Check the CSR before spending a token use on it.
        if let Err(error) = crate::ca::Ca::check_csr(&request.csr_der) {
            tracing::warn!(message = "refused an enrollment with a bad CSR", %peer, host_id = %request.host_id, %error);
            return Err(Status::invalid_argument(error.to_string()));
        }
        let (hash, host_id) = (tokens::hash(&request.token), request.host_id.clone());
        let (redeemed, existing) = c
            .store
            .write(move |conn| {
                Ok((
                    token_store::redeem(conn, &hash, now)?,
                    hosts::get(conn, &host_id)?.is_some(),
                ))
            })
            .await?;
        let token = match redeemed {
            Ok(token) => token,
            Err(refusal) => {
                // Never log the token itself.
                tracing::warn!(message = "refused an enrollment", %peer, host_id = %request.host_id, reason = %refusal);
                c.events.audit(
                    "enrollment",
                    &request.host_id,
                    "",
                    &format!("enrollment from {peer} refused: {refusal}"),
                );
                return Err(Status::permission_denied(refusal.to_string()));
            }
        };
        let issued =
            c.ca.sign_host_csr(
                &request.csr_der,
                &request.host_id,
                c.config.host_cert_lifetime,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let record = HostRecord {
            host_id: request.host_id.clone(),
            hostname: if hostname.is_empty() {
                request.host_id.clone()
            } else {
                hostname.clone()
            },
            role: token.role.clone(),
            labels: token.labels.clone(),
            cert_serial: issued.serial.clone(),
            enrolled_at_ms: now,
            last_seen_ms: 0,
            facts: Vec::new(),
        };
        let stored = record.clone();
        c.store
            .write(move |conn| hosts::upsert_enrolled(conn, &stored))
            .await?;
        c.engine.host_enrolled(record);
        let verb = if existing {
            "re-enrolled (its previous certificate is no longer accepted)"
        } else {
            "enrolled"
        };
        tracing::info!(message = "host enrolled", host_id = %request.host_id, %hostname, role = %token.role, token = %token.id, reenrolled = existing);
        c.events.audit(
            &format!("token {}", token.id),
            &request.host_id,
            "",
            &format!(
                "host {hostname} {verb} as {} with token {}",
                token.role, token.id
            ),
        );
        Ok(Response::new(EnrollResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: c.ca.cert_pem().to_owned(),
            host_id: request.host_id,
            role: token.role,
            labels: token.labels.into_iter().collect(),
        }))
    }
}
