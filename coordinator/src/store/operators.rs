//! Operators' certificates as stored: one row per certificate issued (by `init`, `pitcrew
//! operator add` or a renewal), with the name and role it was issued for. The coordinator keeps
//! them in memory too (`crate::operators::OperatorDirectory`); this table is what survives a
//! restart.

use super::StoreError;
use super::tx::Tx;

/// One operator certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    /// Lower-case hex serial, as `pitcrew_proto::identity` reads it from the certificate.
    pub serial: String,
    pub name: String,
    /// `viewer`, `operator` or `admin` (parsed by `crate::operators::Role`).
    pub role: String,
    pub not_after_ms: i64,
    pub revoked: bool,
    pub created_at_ms: i64,
    /// Who issued it: an operator's name, `init`, or `upgrade` for certificates found on disk.
    pub created_by: String,
}

/// The operator making a change, as the role gate admitted them: the change is refused if their
/// own certificate was revoked (or expired) in the meantime.
#[derive(Debug, Clone)]
pub struct OperatorCaller {
    pub name: String,
    pub serial: String,
    pub now_ms: i64,
}

/// Why an operator change was refused (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorRefusal {
    #[error(
        "the certificate of operator {name} (serial {serial}) was revoked or expired while this call ran; refused"
    )]
    CallerRevoked { name: String, serial: String },
    #[error(
        "operator {name} already has role {existing}; to give the name another role revoke it first (pitcrew operator revoke {name})"
    )]
    RoleTaken { name: String, existing: String },
    #[error("no operator is named {name:?} (pitcrew operator ls lists them)")]
    Unknown { name: String },
    #[error(
        "{name} is the last admin with a valid certificate; add another admin first (pitcrew operator add NAME --role admin)"
    )]
    LastAdmin { name: String },
}

/// The role that may add operators; the last name holding it cannot be revoked.
const ADMIN: &str = "admin";

/// Whether the caller's own certificate is still valid in the store, checked inside the
/// write: a change made by an operator revoked a moment earlier is refused.
async fn caller_check(
    tx: &mut dyn Tx,
    caller: &OperatorCaller,
) -> Result<Result<(), OperatorRefusal>, StoreError> {
    let valid = tx.operator(&caller.serial).await?.is_some_and(|own| {
        !own.revoked && own.not_after_ms > caller.now_ms && own.name == caller.name
    });
    Ok(if valid {
        Ok(())
    } else {
        Err(OperatorRefusal::CallerRevoked {
            name: caller.name.clone(),
            serial: caller.serial.clone(),
        })
    })
}

/// A certificate for a name: a name keeps one role while it has valid certificates.
pub(crate) async fn add(
    tx: &mut dyn Tx,
    caller: &OperatorCaller,
    record: &OperatorRecord,
) -> Result<Result<(), OperatorRefusal>, StoreError> {
    if let Err(refusal) = caller_check(tx, caller).await? {
        return Ok(Err(refusal));
    }
    if let Some(existing) = tx.active_role(&record.name, caller.now_ms).await?
        && existing != record.role
    {
        return Ok(Err(OperatorRefusal::RoleTaken {
            name: record.name.clone(),
            existing,
        }));
    }
    tx.insert_operator(record).await?;
    Ok(Ok(()))
}

/// A renewal: a certificate revoked meanwhile must not renew itself out of its revocation.
pub(crate) async fn renew(
    tx: &mut dyn Tx,
    caller: &OperatorCaller,
    record: &OperatorRecord,
) -> Result<Result<(), OperatorRefusal>, StoreError> {
    if let Err(refusal) = caller_check(tx, caller).await? {
        return Ok(Err(refusal));
    }
    tx.insert_operator(record).await?;
    Ok(Ok(()))
}

/// Revokes every certificate of `name` and returns them; the last admin with a valid
/// certificate cannot be revoked (nobody could add operators any more).
pub(crate) async fn revoke(
    tx: &mut dyn Tx,
    caller: &OperatorCaller,
    name: &str,
) -> Result<Result<Vec<OperatorRecord>, OperatorRefusal>, StoreError> {
    if let Err(refusal) = caller_check(tx, caller).await? {
        return Ok(Err(refusal));
    }
    if tx.operators_by_name(name).await?.is_empty() {
        return Ok(Err(OperatorRefusal::Unknown {
            name: name.to_owned(),
        }));
    }
    if tx.active_role(name, caller.now_ms).await?.as_deref() == Some(ADMIN)
        && tx.count_active_names(ADMIN, name, caller.now_ms).await? == 0
    {
        return Ok(Err(OperatorRefusal::LastAdmin {
            name: name.to_owned(),
        }));
    }
    tx.revoke_operator_name(name).await?;
    Ok(Ok(tx.operators_by_name(name).await?))
}
