//! Operators: their roles, and the directory of their certificates that every Admin call is
//! checked against.
//!
//! An operator is a name with a role, proven by a certificate the fleet CA issued for that name
//! (`pitcrew://operator/<name>`). The coordinator admits an Admin call only when the serial of
//! the presented certificate is in the [`OperatorDirectory`], not revoked and not expired, and
//! its role is enough for the method (`server::roles`). The directory is loaded from the store
//! at start and changed only after the store has the change, so a revocation is in force for
//! the next call and survives a restart.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::events::EventLog;
use crate::store::{OperatorRecord, Store, StoreError};

/// What an operator may do; each role may do everything the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: hosts, tokens, campaigns and their plans, events.
    Viewer,
    /// A viewer who also acts: one-off actions, campaigns and their hosts, maintenance.
    Operator,
    /// An operator who also manages access: join tokens and operators.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("an operator's role is viewer, operator or admin, not {text:?}"))
    }
}

/// Checks an operator name: 1 to 64 letters, digits and `- _ . @` (it goes into certificates,
/// file names and the audit trail).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        || name.starts_with('.')
    {
        return Err(format!(
            "the operator name {name:?} is not valid: use 1 to 64 letters, digits and - _ . @ (not starting with .)"
        ));
    }
    Ok(())
}

/// Why an operator certificate is not admitted. The text is what the caller reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the certificate of operator {name} (serial {serial}) is not registered with this coordinator; ask an admin for one (pitcrew operator add {name} --role ROLE)"
    )]
    Unknown { name: String, serial: String },
    #[error(
        "the certificate of operator {name} (serial {serial}) was revoked; ask an admin for a new one (pitcrew operator add {name} --role ROLE)"
    )]
    Revoked { name: String, serial: String },
    #[error(
        "the certificate of operator {name} (serial {serial}) expired; ask an admin for a new one (pitcrew operator add {name} --role ROLE), and renew before it expires next time (pitcrew operator renew)"
    )]
    Expired { name: String, serial: String },
    #[error(
        "certificate serial {serial} was issued to operator {registered}, not to {name}; refused"
    )]
    WrongName {
        name: String,
        serial: String,
        registered: String,
    },
}

/// An admitted certificate: whose it is, its role and until when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub name: String,
    pub role: Role,
    pub not_after_ms: i64,
}

/// One certificate as the directory keeps it.
#[derive(Debug, Clone)]
struct Entry {
    record: OperatorRecord,
    role: Role,
}

/// Every operator certificate the coordinator has issued, by serial, in memory: the one place
/// an Admin call's certificate is checked. Long-lived streams watch it to end when their
/// operator is revoked.
pub struct OperatorDirectory {
    certs: RwLock<HashMap<String, Entry>>,
    /// Bumped at every revocation, so open streams look again at once.
    revocations: watch::Sender<u64>,
}

impl fmt::Debug for OperatorDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorDirectory")
            .field("certificates", &self.certs.read().len())
            .finish()
    }
}

impl OperatorDirectory {
    /// A directory of these stored certificates; refuses a row whose role it cannot read.
    pub fn new(records: Vec<OperatorRecord>) -> Result<OperatorDirectory, StoreError> {
        let mut certs = HashMap::with_capacity(records.len());
        for record in records {
            let entry = entry(record)?;
            certs.insert(entry.record.serial.clone(), entry);
        }
        Ok(OperatorDirectory {
            certs: RwLock::new(certs),
            revocations: watch::channel(0).0,
        })
    }

    /// Whether the certificate `serial`, presented by `name`, may be used at `now_ms`, and with
    /// which role.
    pub fn check(&self, name: &str, serial: &str, now_ms: i64) -> Result<Admitted, Refusal> {
        let certs = self.certs.read();
        let Some(entry) = certs.get(serial) else {
            return Err(Refusal::Unknown {
                name: name.to_owned(),
                serial: serial.to_owned(),
            });
        };
        let record = &entry.record;
        if record.name != name {
            return Err(Refusal::WrongName {
                name: name.to_owned(),
                serial: serial.to_owned(),
                registered: record.name.clone(),
            });
        }
        if record.revoked {
            return Err(Refusal::Revoked {
                name: name.to_owned(),
                serial: serial.to_owned(),
            });
        }
        if record.not_after_ms <= now_ms {
            return Err(Refusal::Expired {
                name: name.to_owned(),
                serial: serial.to_owned(),
            });
        }
        Ok(Admitted {
            name: record.name.clone(),
            role: entry.role,
            not_after_ms: record.not_after_ms,
        })
    }

    /// Adds a certificate just stored. A serial already known (revoked by a revocation that
    /// overtook this insert) is left as it is.
    pub fn insert(&self, record: OperatorRecord) -> Result<(), StoreError> {
        let entry = entry(record)?;
        self.certs
            .write()
            .entry(entry.record.serial.clone())
            .or_insert(entry);
        Ok(())
    }

    /// Puts in these certificates as revoked (already revoked in the store), whether or not an
    /// insert of them has arrived yet, and wakes every stream so that those of the revoked
    /// operator end now.
    pub fn revoke(&self, records: &[OperatorRecord]) {
        {
            let mut certs = self.certs.write();
            for record in records {
                match certs.get_mut(&record.serial) {
                    Some(entry) => entry.record.revoked = true,
                    None => {
                        if let Ok(mut entry) = entry(record.clone()) {
                            entry.record.revoked = true;
                            certs.insert(record.serial.clone(), entry);
                        }
                    }
                }
            }
        }
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes whenever a certificate is revoked.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// How many certificates it holds (revoked and expired ones included).
    pub fn len(&self) -> usize {
        self.certs.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn entry(record: OperatorRecord) -> Result<Entry, StoreError> {
    let role = record.role.parse().map_err(|e: String| {
        StoreError::Corrupt(format!("operator certificate {}: {e}", record.serial))
    })?;
    Ok(Entry { record, role })
}

/// Who registered the certificates found on disk when a fleet made before operator roles was
/// upgraded.
pub const UPGRADE_ACTOR: &str = "upgrade";

/// Loads the directory from the store. A fleet created before operator roles has none stored:
/// then every operator certificate `init` left in `operator_dir` (`*.crt`) is registered as an
/// admin, once, and logged and audited, so that upgrading locks nobody out.
pub async fn load(
    store: &Arc<Store>,
    events: &EventLog,
    operator_dir: &Path,
) -> anyhow::Result<OperatorDirectory> {
    let mut records = store.list_operators().await?;
    if records.is_empty() {
        let found = certificates_on_disk(operator_dir);
        for (path, record) in &found {
            tracing::warn!(
                message = "registered an operator certificate found in the data dir as admin (this fleet was created before operator roles)",
                path = %path.display(),
                operator = %record.name,
                serial = %record.serial,
            );
        }
        let found: Vec<OperatorRecord> = found.into_iter().map(|(_, record)| record).collect();
        store.register_operators(found.clone(), None).await?;
        for record in &found {
            events.audit(
                UPGRADE_ACTOR,
                "",
                "",
                &format!(
                    "registered the operator certificate of {} (serial {}) found in the data dir as admin",
                    record.name, record.serial
                ),
            );
        }
        records = found;
    }
    let directory = OperatorDirectory::new(records)?;
    if directory.is_empty() {
        tracing::warn!(
            message = "no operator certificate is registered: the Admin API refuses everyone (create the fleet with pitcrew-coordinator init)"
        );
    }
    Ok(directory)
}

/// The operator certificates in `dir` (`*.crt`), each as a record for an admin. Files that are
/// not operator certificates are skipped with a warning.
fn certificates_on_disk(dir: &Path) -> Vec<(std::path::PathBuf, OperatorRecord)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    paths.sort();
    let now = pitcrew_proto::now_ms();
    let mut out = Vec::new();
    for path in paths {
        match operator_record(&path, now) {
            Ok(record) => out.push((path, record)),
            Err(reason) => tracing::warn!(
                message = "skipped a file in the operator directory",
                path = %path.display(),
                %reason
            ),
        }
    }
    out
}

fn operator_record(path: &Path, now_ms: i64) -> Result<OperatorRecord, String> {
    use pitcrew_proto::identity::{Peer, peer_from_der, validity_ms};
    let certs = pitcrew_proto::tls::load_certs(path).map_err(|e| e.to_string())?;
    let leaf = certs.first().ok_or("it holds no certificate")?;
    let cert = peer_from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    let Peer::Operator(name) = cert.peer else {
        return Err(format!(
            "it is the certificate of {}, not of an operator",
            cert.peer
        ));
    };
    let (_, not_after_ms) = validity_ms(leaf.as_ref()).map_err(|e| e.to_string())?;
    Ok(OperatorRecord {
        serial: cert.serial,
        name,
        role: Role::Admin.as_str().to_owned(),
        not_after_ms,
        revoked: false,
        created_at_ms: now_ms,
        created_by: UPGRADE_ACTOR.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(serial: &str, name: &str, role: Role, not_after_ms: i64) -> OperatorRecord {
        OperatorRecord {
            serial: serial.into(),
            name: name.into(),
            role: role.as_str().into(),
            not_after_ms,
            revoked: false,
            created_at_ms: 0,
            created_by: "init".into(),
        }
    }

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        let error = "root".parse::<Role>().unwrap_err();
        assert!(error.contains("viewer, operator or admin"), "{error}");
    }

    #[test]
    fn unknown_revoked_expired_and_misnamed_certificates_are_refused_saying_which() {
        let directory = OperatorDirectory::new(vec![
            record("aa", "alice", Role::Admin, 1_000),
            record("bb", "bob", Role::Viewer, 1_000),
        ])
        .unwrap();
        assert_eq!(
            directory.check("alice", "aa", 10),
            Ok(Admitted {
                name: "alice".into(),
                role: Role::Admin,
                not_after_ms: 1_000
            })
        );
        assert_eq!(directory.check("bob", "bb", 10).unwrap().role, Role::Viewer);

        let unknown = directory.check("mallory", "cc", 10).unwrap_err();
        assert!(matches!(unknown, Refusal::Unknown { .. }));
        assert!(unknown.to_string().contains("not registered"), "{unknown}");

        let expired = directory.check("alice", "aa", 1_000).unwrap_err();
        assert!(matches!(expired, Refusal::Expired { .. }));
        assert!(expired.to_string().contains("expired"), "{expired}");

        // A serial is bound to the name it was issued to.
        let misnamed = directory.check("mallory", "aa", 10).unwrap_err();
        assert!(matches!(misnamed, Refusal::WrongName { .. }), "{misnamed}");

        let revocations = directory.subscribe();
        directory.revoke(&[record("bb", "bob", Role::Viewer, 1_000)]);
        assert!(revocations.has_changed().unwrap(), "streams are woken");
        let revoked = directory.check("bob", "bb", 10).unwrap_err();
        assert!(matches!(revoked, Refusal::Revoked { .. }));
        assert!(revoked.to_string().contains("revoked"), "{revoked}");
        assert!(
            directory.check("alice", "aa", 10).is_ok(),
            "others are untouched"
        );

        directory
            .insert(record("cc", "bob", Role::Viewer, 2_000))
            .unwrap();
        assert!(
            directory.check("bob", "cc", 10).is_ok(),
            "a new certificate works"
        );

        // A revocation that overtakes the insert of a renewed certificate still wins.
        directory.revoke(&[record("dd", "bob", Role::Viewer, 2_000)]);
        directory
            .insert(record("dd", "bob", Role::Viewer, 2_000))
            .unwrap();
        assert!(matches!(
            directory.check("bob", "dd", 10),
            Err(Refusal::Revoked { .. })
        ));
    }

    #[test]
    fn a_stored_role_that_cannot_be_read_is_corrupt_not_admitted() {
        let error = OperatorDirectory::new(vec![OperatorRecord {
            role: "root".into(),
            ..record("aa", "alice", Role::Admin, 1_000)
        }])
        .unwrap_err();
        assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
    }

    #[test]
    fn operator_names_are_safe_for_certificates_files_and_logs() {
        for good in ["admin", "alice@example.com", "ci-bot_2", "a.b"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a b", ".hidden", "x/y", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_upgraded_fleet_registers_the_certificates_init_left_as_admins_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::ca::Ca::create(dir.path(), "test").unwrap();
        let operator_dir = dir.path().join("operator");
        let made = pitcrew_proto::csr::key_and_csr("").unwrap();
        let issued = ca
            .sign_operator_csr(&made.csr_der, "admin", std::time::Duration::from_secs(3600))
            .unwrap();
        std::fs::create_dir_all(&operator_dir).unwrap();
        std::fs::write(operator_dir.join("admin.crt"), &issued.cert_pem).unwrap();
        std::fs::write(operator_dir.join("admin.key"), &made.key_pem).unwrap();
        std::fs::write(operator_dir.join("notes.crt"), "not a certificate").unwrap();

        let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
        let events = EventLog::new(store.clone());
        let directory = load(&store, &events, &operator_dir).await.unwrap();
        let admitted = directory
            .check("admin", &issued.serial, pitcrew_proto::now_ms())
            .unwrap();
        assert_eq!(admitted.role, Role::Admin);
        assert_eq!(
            directory.len(),
            1,
            "the file that is no certificate is skipped"
        );

        // Once registered, the files are not looked at again: a certificate dropped there
        // later is not an operator.
        let other = ca
            .sign_operator_csr(
                &made.csr_der,
                "mallory",
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
        std::fs::write(operator_dir.join("mallory.crt"), &other.cert_pem).unwrap();
        let directory = load(&store, &events, &operator_dir).await.unwrap();
        assert!(matches!(
            directory.check("mallory", &other.serial, pitcrew_proto::now_ms()),
            Err(Refusal::Unknown { .. })
        ));
    }
}
