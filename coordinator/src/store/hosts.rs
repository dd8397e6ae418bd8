//! The durable host registry: enrollment (role, labels, accepted certificate), the latest
//! facts and when the host was last seen. A removed host (`pitcrew hosts remove`) keeps its
//! row, so its history still names it, but no certificate of it is accepted, it lists only
//! with `--removed`, and its hostname is free for a new machine.

use std::collections::BTreeMap;

use super::StoreError;
use super::tokens::{self, TokenRecord, TokenRefusal};
use super::tx::Tx;

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

/// An agent's enrollment, as the store checks and records it.
#[derive(Debug, Clone)]
pub struct HostEnrollment {
    /// SHA-256 of the join token presented.
    pub token_hash: String,
    pub host_id: String,
    pub hostname: String,
    /// The serial of the certificate signed for it.
    pub serial: String,
    pub now_ms: i64,
}

/// An enrollment done: the token used, the host's record, whether it existed before.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub token: TokenRecord,
    pub record: HostRecord,
    pub reenrolled: bool,
}

/// Why an enrollment was refused (nothing was written). The text is for the enrolling agent's
/// operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollRefusal {
    #[error(transparent)]
    Token(TokenRefusal),
    /// The host id is enrolled and the token is not one made to re-enroll it.
    #[error(
        "host {host} ({hostname}) is already enrolled; re-enrolling it needs a token made for it (pitcrew token create --replace {hostname})"
    )]
    Taken { host: String, hostname: String },
    /// The host id was removed from the fleet and the token is not one made to bring it back.
    #[error(
        "host {host} ({hostname}) was removed from the fleet; bringing it back needs a token made for it (pitcrew token create --replace {host})"
    )]
    Removed { host: String, hostname: String },
    /// A re-enrollment token used for another host.
    #[error("this token re-enrolls host {token_for} only")]
    WrongHost { token_for: String },
    /// Another host is enrolled under that name.
    #[error(
        "the hostname {hostname} is already enrolled as host {by}; hostnames are unique in a fleet"
    )]
    NameTaken { hostname: String, by: String },
}

/// One enrollment in one transaction: the token's checks and use, the host's checks, and its
/// record. A join token creates new hosts only; a token made for a host (`--replace`)
/// re-enrolls that host, which keeps everything but its certificate.
pub(crate) async fn enroll(
    tx: &mut dyn Tx,
    e: &HostEnrollment,
) -> Result<Result<Enrolled, EnrollRefusal>, StoreError> {
    let existing = tx.host(&e.host_id).await?;
    let reenrolled = existing.is_some();
    let token = match tokens::peek(tx, &e.token_hash, e.now_ms).await? {
        Ok(token) => token,
        Err(refusal) => return Ok(Err(EnrollRefusal::Token(refusal))),
    };
    match (&existing, token.replace_host.as_str()) {
        (Some(host), replace) if replace != host.host_id && host.removed_at_ms != 0 => {
            return Ok(Err(EnrollRefusal::Removed {
                host: host.host_id.clone(),
                hostname: host.hostname.clone(),
            }));
        }
        (Some(host), replace) if replace != host.host_id => {
            return Ok(Err(EnrollRefusal::Taken {
                host: host.host_id.clone(),
                hostname: host.hostname.clone(),
            }));
        }
        (None, replace) if !replace.is_empty() => {
            return Ok(Err(EnrollRefusal::WrongHost {
                token_for: replace.to_owned(),
            }));
        }
        _ => {}
    }
    let record = match existing {
        Some(host) => {
            // A removed host comes back under its name only if no enrolled host took that
            // name meanwhile.
            if host.removed_at_ms != 0
                && let Some(other) = tx
                    .hosts_by_hostname(&host.hostname)
                    .await?
                    .into_iter()
                    .find(|o| o.host_id != host.host_id)
            {
                return Ok(Err(EnrollRefusal::NameTaken {
                    hostname: host.hostname,
                    by: other.host_id,
                }));
            }
            HostRecord {
                cert_serial: e.serial.clone(),
                pending_serial: String::new(),
                enrolled_at_ms: e.now_ms,
                removed_at_ms: 0,
                ..host
            }
        }
        None => {
            if let Some(other) = tx.hosts_by_hostname(&e.hostname).await?.first() {
                return Ok(Err(EnrollRefusal::NameTaken {
                    hostname: e.hostname.clone(),
                    by: other.host_id.clone(),
                }));
            }
            HostRecord {
                host_id: e.host_id.clone(),
                hostname: e.hostname.clone(),
                role: token.role.clone(),
                labels: token.labels.clone(),
                cert_serial: e.serial.clone(),
                pending_serial: String::new(),
                enrolled_at_ms: e.now_ms,
                last_seen_ms: 0,
                facts: Vec::new(),
                removed_at_ms: 0,
            }
        }
    };
    // The single writer makes check-then-spend one step; the conditional decrement is a second
    // guard should two writers ever race for the last use.
    if !tx.use_token(&token.id).await? {
        return Ok(Err(EnrollRefusal::Token(TokenRefusal::UsedUp)));
    }
    tx.upsert_host(&record).await?;
    Ok(Ok(Enrolled {
        token,
        record,
        reenrolled,
    }))
}

/// What a lookup by id or name found.
#[derive(Debug, Clone, Default)]
pub struct HostLookup {
    pub by_id: Option<HostRecord>,
    /// Enrolled hosts with that hostname (at most two: more than one is ambiguous).
    pub by_name: Vec<HostRecord>,
    /// The newest removed host with that hostname, when nothing else matched.
    pub removed: Option<HostRecord>,
    /// Enrolled hosts whose id starts with the name, by id, when nothing else matched and the
    /// lookup asked for them (see [`find`]).
    pub by_prefix: Vec<HostRecord>,
}

/// Where the ids starting with `prefix` end: every such id sorts between the prefix and the
/// prefix followed by the greatest code point (ids compare as UTF-8 bytes; PostgreSQL's
/// `host_id` is `COLLATE "C"`).
pub(crate) fn id_prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// A host by id, else by enrolled hostname, else the newest removed host of that name, else,
/// when `prefix_limit` is given, at most that many enrolled hosts whose id starts with the
/// name (one indexed lookup each).
pub(crate) async fn find(
    tx: &mut dyn Tx,
    name: &str,
    prefix_limit: Option<u32>,
) -> Result<HostLookup, StoreError> {
    let by_id = tx.host(name).await?;
    let by_name = if by_id.is_none() {
        tx.hosts_by_hostname(name).await?
    } else {
        Vec::new()
    };
    let removed = if by_id.is_none() && by_name.is_empty() {
        tx.removed_host_by_hostname(name).await?
    } else {
        None
    };
    let by_prefix = match prefix_limit {
        Some(limit) if by_id.is_none() && by_name.is_empty() && removed.is_none() => {
            tx.hosts_by_id_prefix(name, limit).await?
        }
        _ => Vec::new(),
    };
    Ok(HostLookup {
        by_id,
        by_name,
        removed,
        by_prefix,
    })
}
