//! The Admin calls that manage operators: add one (a certificate for a name and role, from a
//! CSR made where the CLI runs), list them, revoke every certificate of a name, and renew the
//! caller's own certificate. Each change is made durable first, then put into the directory the
//! role gate reads, then audited with the caller's name.

use std::time::Duration;

use pitcrew_proto::v1;
use tonic::Status;

use super::Coordinator;
use super::convert;
use super::roles::Caller;
use crate::ca::{CaError, Issued, MAX_OPERATOR_CERT_VALIDITY};
use crate::operators::{Role, validate_name};
use crate::store::{OperatorCaller, OperatorRecord, OperatorRefusal};

/// The shortest lifetime an operator certificate may be asked for.
const MIN_LIFETIME: Duration = Duration::from_secs(10);

fn lifetime(c: &Coordinator, seconds: u64) -> Result<Duration, Status> {
    if seconds == 0 {
        return Ok(c.config.operator_cert_lifetime);
    }
    let asked = Duration::from_secs(seconds);
    if asked > MAX_OPERATOR_CERT_VALIDITY {
        return Err(Status::invalid_argument(
            "an operator certificate may live at most 365 days; renew it instead (pitcrew operator renew)",
        ));
    }
    Ok(asked.max(MIN_LIFETIME))
}

fn sign(c: &Coordinator, csr_der: &[u8], name: &str, lifetime: Duration) -> Result<Issued, Status> {
    c.ca.sign_operator_csr(csr_der, name, lifetime)
        .map_err(|error| match error {
            CaError::BadCsr(_) => Status::invalid_argument(error.to_string()),
            other => {
                tracing::error!(message = "cannot sign an operator certificate", error = %other);
                Status::internal(format!(
                    "the coordinator could not sign the certificate: {other}"
                ))
            }
        })
}

fn until(not_after_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(not_after_ms).unwrap_or_default());
    humantime::format_rfc3339_seconds(at).to_string()
}

fn store_caller(caller: &Caller, now_ms: i64) -> OperatorCaller {
    OperatorCaller {
        name: caller.name.clone(),
        serial: caller.serial.clone(),
        now_ms,
    }
}

/// A refused operator change as the caller sees it.
fn refused(refusal: OperatorRefusal) -> Status {
    let text = refusal.to_string();
    match refusal {
        OperatorRefusal::CallerRevoked { .. } => Status::permission_denied(text),
        OperatorRefusal::Unknown { .. } => Status::not_found(text),
        OperatorRefusal::RoleTaken { .. } | OperatorRefusal::LastAdmin { .. } => {
            Status::failed_precondition(text)
        }
    }
}

/// `AddOperator` (admin): a certificate for `name` with `role`. A name keeps one role while it
/// has valid certificates: another certificate for it must carry the same role.
pub async fn add(
    c: &Coordinator,
    caller: Caller,
    r: v1::AddOperatorRequest,
) -> Result<v1::OperatorCertificate, Status> {
    validate_name(&r.name).map_err(Status::invalid_argument)?;
    let role: Role = r.role.parse().map_err(Status::invalid_argument)?;
    let lifetime = lifetime(c, r.lifetime_seconds)?;
    // A certificate signed here but refused below is never registered, so it admits nobody.
    let issued = sign(c, &r.csr_der, &r.name, lifetime)?;
    let now = pitcrew_proto::now_ms();
    let record = OperatorRecord {
        serial: issued.serial.clone(),
        name: r.name.clone(),
        role: role.as_str().to_owned(),
        not_after_ms: issued.not_after_ms,
        revoked: false,
        created_at_ms: now,
        created_by: caller.name.clone(),
    };
    c.store
        .add_operator(store_caller(&caller, now), record.clone())
        .await?
        .map_err(refused)?;
    c.operators.insert(record.clone())?;
    c.events.audit(
        &caller.name,
        "",
        "",
        &format!(
            "added operator {} with role {} (certificate {}, valid until {})",
            record.name,
            record.role,
            record.serial,
            until(record.not_after_ms)
        ),
    );
    Ok(v1::OperatorCertificate {
        certificate_pem: issued.cert_pem,
        ca_pem: c.ca.cert_pem().to_owned(),
        info: Some(convert::operator_info(record)),
    })
}

/// `ListOperators` (admin): every certificate issued, revoked and expired ones included.
pub async fn list(c: &Coordinator) -> Result<v1::ListOperatorsResponse, Status> {
    let operators = c
        .store
        .list_operators()
        .await?
        .into_iter()
        .map(convert::operator_info)
        .collect();
    Ok(v1::ListOperatorsResponse { operators })
}

/// `RevokeOperator` (admin): revokes every certificate of a name, in force for its next call and
/// ending its open streams. The last admin with a valid certificate cannot be revoked: nobody
/// could add operators any more.
pub async fn revoke(
    c: &Coordinator,
    caller: Caller,
    r: v1::RevokeOperatorRequest,
) -> Result<v1::ListOperatorsResponse, Status> {
    validate_name(&r.name).map_err(Status::invalid_argument)?;
    let now = pitcrew_proto::now_ms();
    let revoked = c
        .store
        .revoke_operator(store_caller(&caller, now), r.name.clone())
        .await?
        .map_err(refused)?;
    c.operators.revoke(&revoked);
    let serials: Vec<&str> = revoked.iter().map(|r| r.serial.as_str()).collect();
    c.events.audit(
        &caller.name,
        "",
        "",
        &format!(
            "revoked operator {} ({} certificate(s): {})",
            r.name,
            revoked.len(),
            serials.join(", ")
        ),
    );
    Ok(v1::ListOperatorsResponse {
        operators: revoked.into_iter().map(convert::operator_info).collect(),
    })
}

/// `RenewOperator` (any operator): a new certificate for the caller's own name and role, for
/// the configured lifetime. The certificate presented stays valid until it expires.
pub async fn renew(
    c: &Coordinator,
    caller: Caller,
    r: v1::RenewOperatorRequest,
) -> Result<v1::OperatorCertificate, Status> {
    let issued = sign(c, &r.csr_der, &caller.name, c.config.operator_cert_lifetime)?;
    let now = pitcrew_proto::now_ms();
    let record = OperatorRecord {
        serial: issued.serial.clone(),
        name: caller.name.clone(),
        role: caller.role.as_str().to_owned(),
        not_after_ms: issued.not_after_ms,
        revoked: false,
        created_at_ms: now,
        created_by: caller.name.clone(),
    };
    // A certificate revoked meanwhile must not renew itself out of its revocation.
    c.store
        .renew_operator(store_caller(&caller, now), record.clone())
        .await?
        .map_err(refused)?;
    c.operators.insert(record.clone())?;
    c.events.audit(
        &caller.name,
        "",
        "",
        &format!(
            "renewed the certificate of operator {} (role {}): new certificate {}, valid until {}",
            record.name,
            record.role,
            record.serial,
            until(record.not_after_ms)
        ),
    );
    Ok(v1::OperatorCertificate {
        certificate_pem: issued.cert_pem,
        ca_pem: c.ca.cert_pem().to_owned(),
        info: Some(convert::operator_info(record)),
    })
}
