//! Operators' certificates as stored: one row per certificate issued (by `init`, `pitcrew
//! operator add` or a renewal), with the name and role it was issued for. The coordinator keeps
//! them in memory too (`crate::operators::OperatorDirectory`); this table is what survives a
//! restart.

use rusqlite::{Connection, Row, params};

use super::StoreError;

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

const COLUMNS: &str = "serial, name, role, not_after_ms, revoked, created_at_ms, created_by";

fn from_row(row: &Row<'_>) -> Result<OperatorRecord, rusqlite::Error> {
    Ok(OperatorRecord {
        serial: row.get("serial")?,
        name: row.get("name")?,
        role: row.get("role")?,
        not_after_ms: row.get("not_after_ms")?,
        revoked: row.get("revoked")?,
        created_at_ms: row.get("created_at_ms")?,
        created_by: row.get("created_by")?,
    })
}

pub fn insert(conn: &Connection, record: &OperatorRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!("INSERT INTO operator_certs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
        params![
            record.serial,
            record.name,
            record.role,
            record.not_after_ms,
            record.revoked,
            record.created_at_ms,
            record.created_by
        ],
    )?;
    Ok(())
}

/// Every certificate, by name then age.
pub fn list(conn: &Connection) -> Result<Vec<OperatorRecord>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM operator_certs ORDER BY name, created_at_ms, serial"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The certificate with this serial, if it was issued.
pub fn get(conn: &Connection, serial: &str) -> Result<Option<OperatorRecord>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM operator_certs WHERE serial = ?1"
    ))?;
    let mut rows = stmt.query(params![serial])?;
    Ok(rows.next()?.map(from_row).transpose()?)
}

/// Every certificate issued to `name`, oldest first.
pub fn by_name(conn: &Connection, name: &str) -> Result<Vec<OperatorRecord>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM operator_certs WHERE name = ?1 ORDER BY created_at_ms, serial"
    ))?;
    let rows = stmt.query_map(params![name], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The role of `name`'s certificates still valid at `now_ms` (not revoked, not expired), if any.
pub fn active_role(
    conn: &Connection,
    name: &str,
    now_ms: i64,
) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT role FROM operator_certs WHERE name = ?1 AND revoked = 0 AND not_after_ms > ?2 \
         ORDER BY created_at_ms DESC LIMIT 1",
    )?;
    let mut rows = stmt.query(params![name, now_ms])?;
    Ok(rows.next()?.map(|r| r.get(0)).transpose()?)
}

/// How many names other than `except` hold a certificate with `role` valid at `now_ms`.
pub fn count_active_names(
    conn: &Connection,
    role: &str,
    except: &str,
    now_ms: i64,
) -> Result<u64, StoreError> {
    Ok(conn.query_row(
        "SELECT COUNT(DISTINCT name) FROM operator_certs \
         WHERE role = ?1 AND name != ?2 AND revoked = 0 AND not_after_ms > ?3",
        params![role, except, now_ms],
        |r| r.get(0),
    )?)
}

/// Revokes every certificate of `name`; returns them all (empty when the name is unknown).
pub fn revoke_name(conn: &Connection, name: &str) -> Result<Vec<OperatorRecord>, StoreError> {
    conn.execute(
        "UPDATE operator_certs SET revoked = 1 WHERE name = ?1",
        params![name],
    )?;
    by_name(conn, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn cert(serial: &str, name: &str, role: &str, not_after_ms: i64) -> OperatorRecord {
        OperatorRecord {
            serial: serial.into(),
            name: name.into(),
            role: role.into(),
            not_after_ms,
            revoked: false,
            created_at_ms: 1,
            created_by: "init".into(),
        }
    }

    #[test]
    fn certificates_are_kept_per_name_and_revoked_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .write_blocking(|c| {
                insert(c, &cert("01", "alice", "admin", 1000))?;
                insert(c, &cert("02", "alice", "admin", 2000))?;
                insert(c, &cert("03", "bob", "viewer", 1000))?;
                insert(c, &cert("04", "carol", "admin", 10))
            })
            .unwrap();
        let read = |f: fn(&Connection) -> Result<u64, StoreError>| store.read_blocking(f).unwrap();
        assert_eq!(read(|c| count_active_names(c, "admin", "bob", 100)), 1);
        assert_eq!(read(|c| count_active_names(c, "admin", "alice", 100)), 0);
        assert_eq!(
            store
                .read_blocking(|c| active_role(c, "bob", 100))
                .unwrap()
                .as_deref(),
            Some("viewer")
        );
        assert_eq!(
            store
                .read_blocking(|c| active_role(c, "carol", 100))
                .unwrap(),
            None
        );
        let revoked = store.write_blocking(|c| revoke_name(c, "alice")).unwrap();
        assert_eq!(revoked.len(), 2);
        assert!(revoked.iter().all(|r| r.revoked));
        assert_eq!(
            store
                .read_blocking(|c| active_role(c, "alice", 100))
                .unwrap(),
            None
        );
        assert!(
            store
                .write_blocking(|c| revoke_name(c, "nobody"))
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .read_blocking(|c| get(c, "02"))
                .unwrap()
                .unwrap()
                .revoked
        );
        assert_eq!(store.read_blocking(|c| get(c, "99")).unwrap(), None);
        let all = store.read_blocking(list).unwrap();
        assert_eq!(
            all.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(),
            ["01", "02", "03", "04"]
        );
    }
}
