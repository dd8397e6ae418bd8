//! The durable host registry: enrollment (role, labels, accepted certificate), the latest
//! facts and when the host was last seen. A removed host (`pitcrew hosts remove`) keeps its
//! row, so its history still names it, but no certificate of it is accepted, it lists only
//! with `--removed`, and its hostname is free for a new machine.

use std::collections::BTreeMap;

use rusqlite::{Connection, Row, params};

use super::{StoreError, from_json, to_json};

/// A host as the registry knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub host_id: String,
    pub hostname: String,
    pub role: String,
    pub labels: BTreeMap<String, String>,
    /// The certificate serial accepted for this host (re-enrollment replaces it).
    pub cert_serial: String,
    /// A renewed certificate's serial, also accepted until its first use makes it the only
    /// one; empty when no renewal is pending.
    pub pending_serial: String,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: i64,
    /// prost-encoded `v1::Facts`, empty before the first hello.
    pub facts: Vec<u8>,
    /// When the host was removed from the fleet (Unix ms); 0 while enrolled.
    pub removed_at_ms: i64,
}

/// Which hosts to list, and from where: pages are ordered by (hostname, host_id) and continue
/// after the last host of the previous page, so a page costs the same however big the fleet.
#[derive(Debug, Clone, Default)]
pub struct HostFilter {
    pub role: Option<String>,
    /// `key=value`: only hosts carrying this label.
    pub label: Option<(String, String)>,
    /// Continue after this (hostname, host_id).
    pub after: Option<(String, String)>,
    pub limit: u32,
    /// List removed hosts instead of enrolled ones.
    pub removed: bool,
}

const COLUMNS: &str = "host_id, hostname, role, labels, cert_serial, enrolled_at_ms, last_seen_ms, \
     facts, pending_serial, removed_at_ms";

fn from_row(row: &Row<'_>) -> Result<HostRecord, StoreError> {
    let labels: String = row.get("labels")?;
    Ok(HostRecord {
        host_id: row.get("host_id")?,
        hostname: row.get("hostname")?,
        role: row.get("role")?,
        labels: from_json("host labels", &labels)?,
        cert_serial: row.get("cert_serial")?,
        enrolled_at_ms: row.get("enrolled_at_ms")?,
        last_seen_ms: row.get("last_seen_ms")?,
        facts: row.get("facts")?,
        pending_serial: row.get("pending_serial")?,
        removed_at_ms: row.get("removed_at_ms")?,
    })
}

/// Records a (re-)enrolled host. Re-enrollment replaces the accepted certificate serial, so
/// the old certificate of a rebuilt host stops working.
pub fn upsert_enrolled(conn: &Connection, host: &HostRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO hosts ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '', 0)
             ON CONFLICT(host_id) DO UPDATE SET hostname = excluded.hostname, role = excluded.role,
                labels = excluded.labels, cert_serial = excluded.cert_serial, pending_serial = '',
                enrolled_at_ms = excluded.enrolled_at_ms, removed_at_ms = 0"
        ),
        params![
            host.host_id,
            host.hostname,
            host.role,
            to_json("host labels", &host.labels)?,
            host.cert_serial,
            host.enrolled_at_ms,
            host.last_seen_ms,
            host.facts
        ],
    )?;
    Ok(())
}

/// Records a renewed certificate: accepted alongside the current one until first used.
pub fn set_pending_serial(
    conn: &Connection,
    host_id: &str,
    serial: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE hosts SET pending_serial = ?2 WHERE host_id = ?1",
        params![host_id, serial],
    )?;
    Ok(())
}

/// The renewed certificate was used: it becomes the only one accepted. Returns false when
/// `serial` was not (or no longer) the pending one.
pub fn promote_pending_serial(
    conn: &Connection,
    host_id: &str,
    serial: &str,
) -> Result<bool, StoreError> {
    let changed = conn.execute(
        "UPDATE hosts SET cert_serial = pending_serial, pending_serial = ''
         WHERE host_id = ?1 AND pending_serial = ?2 AND ?2 != ''",
        params![host_id, serial],
    )?;
    Ok(changed > 0)
}

pub fn get(conn: &Connection, host_id: &str) -> Result<Option<HostRecord>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM hosts WHERE host_id = ?1"))?;
    let mut rows = stmt.query(params![host_id])?;
    rows.next()?.map(from_row).transpose()
}

/// Enrolled hosts with this hostname (at most a few; the index makes it one lookup). Removed
/// hosts do not count: their hostname is free for a new machine.
pub fn by_hostname(conn: &Connection, hostname: &str) -> Result<Vec<HostRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM hosts WHERE hostname = ?1 AND removed_at_ms = 0 LIMIT 2"
    ))?;
    let mut rows = stmt.query(params![hostname])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(from_row(row)?);
    }
    Ok(out)
}

/// Enrolled hosts whose id starts with `prefix`, at most `limit`, by id: a range on the
/// primary key, so one index lookup whatever the size of the fleet.
pub fn by_id_prefix(
    conn: &Connection,
    prefix: &str,
    limit: u32,
) -> Result<Vec<HostRecord>, StoreError> {
    // Every id starting with the prefix sorts between it and the prefix followed by the
    // greatest code point (ids compare as UTF-8 bytes).
    let upper = format!("{prefix}\u{10FFFF}");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM hosts WHERE host_id >= ?1 AND host_id < ?2 AND removed_at_ms = 0
         ORDER BY host_id LIMIT ?3"
    ))?;
    let mut rows = stmt.query(params![prefix, upper, limit])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(from_row(row)?);
    }
    Ok(out)
}

/// The most recently removed host with this hostname, if any (so `events --host NAME` and
/// `token create --replace NAME` still find a removed host by its name).
pub fn removed_by_hostname(
    conn: &Connection,
    hostname: &str,
) -> Result<Option<HostRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM hosts WHERE hostname = ?1 AND removed_at_ms != 0
         ORDER BY removed_at_ms DESC LIMIT 1"
    ))?;
    let mut rows = stmt.query(params![hostname])?;
    rows.next()?.map(from_row).transpose()
}

/// Marks a host removed from the fleet: no certificate of it is accepted from now on (both
/// serials are cleared), and it lists only among removed hosts. Its row stays for its history.
pub fn mark_removed(conn: &Connection, host_id: &str, now_ms: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE hosts SET removed_at_ms = ?2, cert_serial = '', pending_serial = ''
         WHERE host_id = ?1",
        params![host_id, now_ms.max(1)],
    )?;
    Ok(())
}

/// Changes an enrolled host's role and labels (`pitcrew hosts set`).
pub fn set_role_labels(
    conn: &Connection,
    host_id: &str,
    role: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE hosts SET role = ?2, labels = ?3 WHERE host_id = ?1 AND removed_at_ms = 0",
        params![host_id, role, to_json("host labels", labels)?],
    )?;
    Ok(())
}

/// One page of hosts in (hostname, host_id) order. A limit of 0 means every host (start-up
/// only: request paths always pass a limit).
pub fn list(conn: &Connection, filter: &HostFilter) -> Result<Vec<HostRecord>, StoreError> {
    let (after_name, after_id) = filter.after.clone().unwrap_or_default();
    let has_after = filter.after.is_some();
    let (label_key, label_value) = match &filter.label {
        Some((k, v)) => (
            Some(format!("$.\"{}\"", k.replace('"', ""))),
            Some(v.clone()),
        ),
        None => (None, None),
    };
    let limit = if filter.limit == 0 {
        i64::MAX
    } else {
        i64::from(filter.limit)
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM hosts
         WHERE (?1 = 0 OR (hostname, host_id) > (?2, ?3))
           AND (?4 IS NULL OR role = ?4)
           AND (?5 IS NULL OR json_extract(labels, ?5) = ?6)
           AND ((?8 = 0) = (removed_at_ms = 0))
         ORDER BY hostname, host_id LIMIT ?7"
    ))?;
    let mut rows = stmt.query(params![
        has_after,
        after_name,
        after_id,
        filter.role,
        label_key,
        label_value,
        limit,
        filter.removed
    ])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(from_row(row)?);
    }
    Ok(out)
}

/// Stores a host's latest facts. The hostname is fixed at enrollment: facts never rename a
/// host.
pub fn set_facts(
    conn: &Connection,
    host_id: &str,
    facts: &[u8],
    now_ms: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE hosts SET facts = ?2, last_seen_ms = ?3 WHERE host_id = ?1",
        params![host_id, facts, now_ms],
    )?;
    Ok(())
}

/// Records when hosts were last seen, many at once (the periodic flush of heartbeats).
pub fn set_last_seen(conn: &Connection, seen: &[(String, i64)]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE hosts SET last_seen_ms = max(last_seen_ms, ?2) WHERE host_id = ?1",
    )?;
    for (host_id, at_ms) in seen {
        stmt.execute(params![host_id, at_ms])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn host(id: &str, name: &str, role: &str, cluster: &str) -> HostRecord {
        HostRecord {
            host_id: id.into(),
            hostname: name.into(),
            role: role.into(),
            labels: BTreeMap::from([("cluster".into(), cluster.into())]),
            cert_serial: "01".into(),
            pending_serial: String::new(),
            enrolled_at_ms: 1,
            last_seen_ms: 0,
            facts: Vec::new(),
            removed_at_ms: 0,
        }
    }

    #[test]
    fn hosts_are_listed_in_pages_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .write_blocking(|c| {
                for i in 0..25 {
                    let role = if i % 5 == 0 { "manager" } else { "worker" };
                    let cluster = if i % 2 == 0 { "a" } else { "b" };
                    upsert_enrolled(
                        c,
                        &host(&format!("id{i:02}"), &format!("h{i:02}"), role, cluster),
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let mut seen = Vec::new();
        let mut filter = HostFilter {
            limit: 10,
            ..Default::default()
        };
        loop {
            let page = store.read_blocking(|c| list(c, &filter)).unwrap();
            assert!(page.len() <= 10);
            let Some(last) = page.last() else { break };
            filter.after = Some((last.hostname.clone(), last.host_id.clone()));
            seen.extend(page.into_iter().map(|h| h.hostname));
        }
        assert_eq!(seen.len(), 25);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));

        let managers = store
            .read_blocking(|c| {
                list(
                    c,
                    &HostFilter {
                        role: Some("manager".into()),
                        label: Some(("cluster".into(), "a".into())),
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        let names: Vec<_> = managers.iter().map(|h| h.hostname.as_str()).collect();
        assert_eq!(names, vec!["h00", "h10", "h20"]);
    }

    #[test]
    fn facts_never_rename_a_host_and_last_seen_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .write_blocking(|c| {
                upsert_enrolled(c, &host("id1", "web-1", "worker", "a"))?;
                set_facts(c, "id1", &[1, 2], 50)?;
                set_last_seen(c, &[("id1".into(), 40)])?;
                set_last_seen(c, &[("id1".into(), 70)])
            })
            .unwrap();
        let h = store.read_blocking(|c| get(c, "id1")).unwrap().unwrap();
        assert_eq!(h.hostname, "web-1");
        assert_eq!(h.facts, vec![1, 2]);
        assert_eq!(h.last_seen_ms, 70);
        assert_eq!(
            store
                .read_blocking(|c| by_hostname(c, "web-1"))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn id_prefixes_find_enrolled_hosts_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .write_blocking(|c| {
                upsert_enrolled(c, &host("ab12", "web-1", "worker", "a"))?;
                upsert_enrolled(c, &host("ab34", "web-2", "worker", "a"))?;
                upsert_enrolled(c, &host("cd56", "web-3", "worker", "a"))
            })
            .unwrap();
        let ids = |prefix: &'static str| -> Vec<String> {
            store
                .read_blocking(move |c| by_id_prefix(c, prefix, 10))
                .unwrap()
                .into_iter()
                .map(|h| h.host_id)
                .collect()
        };
        assert_eq!(ids("ab"), ["ab12", "ab34"]);
        assert_eq!(ids("ab3"), ["ab34"]);
        assert_eq!(ids("cd56"), ["cd56"]);
        assert!(ids("e").is_empty());
    }

    #[test]
    fn a_removed_host_keeps_its_row_lists_apart_and_frees_its_hostname() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .write_blocking(|c| {
                upsert_enrolled(c, &host("id1", "mgr-1", "manager", "a"))?;
                upsert_enrolled(c, &host("id2", "mgr-2", "manager", "a"))?;
                mark_removed(c, "id1", 50)
            })
            .unwrap();
        let enrolled = store
            .read_blocking(|c| list(c, &HostFilter::default()))
            .unwrap();
        assert_eq!(enrolled.len(), 1);
        assert_eq!(enrolled[0].host_id, "id2");
        let removed = store
            .read_blocking(|c| {
                list(
                    c,
                    &HostFilter {
                        removed: true,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].removed_at_ms, 50);
        assert!(
            removed[0].cert_serial.is_empty(),
            "its certificate is no longer accepted"
        );
        assert!(
            store
                .read_blocking(|c| by_hostname(c, "mgr-1"))
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .read_blocking(|c| removed_by_hostname(c, "mgr-1"))
                .unwrap()
                .is_some()
        );
        // Re-enrolled (a token made for it), it is back with its new certificate.
        store
            .write_blocking(|c| upsert_enrolled(c, &host("id1", "mgr-1", "manager", "a")))
            .unwrap();
        let back = store.read_blocking(|c| get(c, "id1")).unwrap().unwrap();
        assert_eq!(back.removed_at_ms, 0);
        assert_eq!(back.cert_serial, "01");
    }
}
