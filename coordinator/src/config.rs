//! The coordinator's data dir and configuration file (`coordinator.toml` in the data dir).
//!
//! `pitcrew-coordinator init` writes everything here once: the CA, the server certificate, the
//! first operator's certificate and the config. Errors name the file and the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `coordinator.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address the gRPC server listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How often agents are asked to send a heartbeat.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_seconds: u32,
    /// A session silent this long is closed and the host shown disconnected.
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout_seconds: u32,
    /// Lifetime of host certificates (agents renew at 70 % of it), e.g. "30d".
    #[serde(default = "default_host_cert_lifetime", with = "humantime_serde")]
    pub host_cert_lifetime: std::time::Duration,
    /// Lifetime of operator certificates (`init`'s first admin, `pitcrew operator add` without
    /// `--lifetime`, renewals), e.g. "30d"; at most a year. Operators renew with
    /// `pitcrew operator renew`.
    #[serde(default = "default_operator_cert_lifetime", with = "humantime_serde")]
    pub operator_cert_lifetime: std::time::Duration,
    /// What one peer may take of the coordinator (`[limits]`).
    #[serde(default)]
    pub limits: Limits,
    /// How long the event log is kept (`[events]`).
    #[serde(default)]
    pub events: EventRetention,
    /// Address of the Prometheus metrics listener (plain HTTP, `GET /metrics`); "" turns it
    /// off. Loopback by default: the metrics name no host, but say how the fleet is doing.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
    /// Address of the web dashboard (HTTPS with the server certificate); "" turns it off.
    /// Loopback by default: reach it through an SSH tunnel, or choose an address.
    #[serde(default = "default_dashboard_listen")]
    pub dashboard_listen: String,
    /// The dashboard's address as browsers reach it (`https://coord.example.net:7444`), for the
    /// login links `pitcrew dashboard` prints; by default `https://` + `dashboard_listen`.
    #[serde(default)]
    pub dashboard_url: String,
    /// Where the store is (`[store]`): the embedded SQLite file by default, or PostgreSQL.
    #[serde(default)]
    pub store: StoreConfig,
    /// How coordinators sharing a PostgreSQL store choose their leader (`[leader]`).
    #[serde(default)]
    pub leader: LeaderConfig,
    /// Finished campaign runs older than this leave `pitcrew campaign ls` (and the
    /// coordinator's memory) for the archive, still read by `campaign ls --archived` and
    /// `campaign show ID`, e.g. "7d"; at least a minute.
    #[serde(default = "default_campaign_archive_after", with = "humantime_serde")]
    pub campaign_archive_after: Duration,
    /// Webhooks notified of campaigns and stuck hosts (`[[webhook]]`, see `crate::notify`).
    #[serde(default, rename = "webhook", skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::notify::WebhookConfig>,
}

/// `[leader]`: the lease that makes one coordinator of those sharing a PostgreSQL store the
/// leader. Unused with the SQLite store (one coordinator).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderConfig {
    /// How long a lease lasts by the database's clock: a leader gone this long is replaced.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the leader renews the lease and standbys try to take it (well inside
    /// `lease`: at most a third of it).
    #[serde(with = "humantime_serde")]
    pub renew_every: Duration,
    /// The address agents and operators reach this coordinator at
    /// (`https://coord-1.example.net:7443`), which standbys tell them while this one leads.
    /// Differs per coordinator, so usually given by `serve --advertise` or PITCREW_ADVERTISE.
    pub advertise: String,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            lease: Duration::from_secs(3),
            renew_every: Duration::from_millis(500),
            advertise: String::new(),
        }
    }
}

impl LeaderConfig {
    /// The lease's timing, checked: renewals must fit several times in a lease.
    pub fn timing(&self) -> Result<crate::leader::LeaseTiming, String> {
        if self.lease < Duration::from_secs(1) {
            return Err(format!(
                "[leader] lease: {} is too short; at least 1s",
                humantime::format_duration(self.lease)
            ));
        }
        if self.renew_every.is_zero() || self.renew_every * 3 > self.lease {
            return Err(format!(
                "[leader] renew_every: {} does not fit three times in the lease ({})",
                humantime::format_duration(self.renew_every),
                humantime::format_duration(self.lease)
            ));
        }
        Ok(crate::leader::LeaseTiming {
            length: self.lease,
            renew_every: self.renew_every,
        })
    }
}

fn default_campaign_archive_after() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// The environment variable that may hold the PostgreSQL password.
pub const PG_PASSWORD_ENV: &str = "PITCREW_PG_PASSWORD";

/// `[store]`: without `postgres_url` the store is `<data dir>/pitcrew.db` (SQLite).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://USER@HOST[:PORT]/DATABASE` (libpq's `key=value` form too; a host that is a
    /// path is a unix socket directory). Never with a password in it: that is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    /// A file whose first line is the PostgreSQL password (keep it 0600). Or set
    /// `PITCREW_PG_PASSWORD`; not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl StoreConfig {
    /// Where the store is, with the password read from `password_file` or `env_password`
    /// (`PITCREW_PG_PASSWORD`). No message names the password or repeats a URL holding one.
    pub fn location(
        &self,
        data_dir: &DataDir,
        env_password: Option<String>,
    ) -> Result<crate::store::StoreLocation, String> {
        let Some(url) = &self.postgres_url else {
            if self.password_file.is_some() {
                return Err(
                    "[store] password_file is set but postgres_url is not: the SQLite store takes no password"
                        .into(),
                );
            }
            return Ok(crate::store::StoreLocation::Sqlite(data_dir.store()));
        };
        let password = match (&self.password_file, env_password) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "the PostgreSQL password is given twice, in [store] password_file and in {PG_PASSWORD_ENV}; keep one"
                ));
            }
            (Some(file), None) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    format!(
                        "[store] password_file {}: cannot read it: {e}",
                        file.display()
                    )
                })?;
                let first = text.lines().next().unwrap_or_default().to_owned();
                if first.is_empty() {
                    return Err(format!(
                        "[store] password_file {}: its first line is empty",
                        file.display()
                    ));
                }
                Some(first)
            }
            (None, password) => password.filter(|p| !p.is_empty()),
        };
        crate::store::PostgresSettings::new(url, password)
            .map(crate::store::StoreLocation::Postgres)
            .map_err(|e| format!("[store] postgres_url: {e}"))
    }
}

/// Hides the password of any `scheme://user:password@host` in a message (a config file's
/// line quoted by a parse error, for one).
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '/')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Limits that keep one misbehaving peer from taking the coordinator down for everyone. The
/// defaults hold a fleet of tens of thousands of agents; see the example coordinator.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections in all (each is a file descriptor; the unit's LimitNOFILE is higher).
    pub max_connections: usize,
    /// Connections without a client certificate (only enrollment is open to them), in all.
    pub max_anonymous_connections: usize,
    /// Connections without a client certificate from one source address.
    pub max_anonymous_per_source: usize,
    /// Connections with one certificate's identity (a host needs one, an operator a few).
    pub max_connections_per_identity: usize,
    /// A connection without a client certificate is closed this long after its handshake
    /// (enrolling takes well under a second).
    #[serde(with = "humantime_serde")]
    pub anonymous_connection_lifetime: Duration,
    /// A TLS handshake not finished by then is dropped.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Concurrent requests (HTTP/2 streams) on one connection.
    pub max_concurrent_streams: u32,
    /// The largest enrollment request (a token, a CSR and names).
    pub enroll_max_message_bytes: usize,
    /// HTTP/2 pings this often find connections whose peer is gone.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Refused enrollments from one source address within a minute before further attempts
    /// from it are turned away without a look at the store (and counted, not logged each).
    pub refused_enrollments_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 32_768,
            max_anonymous_connections: 1024,
            max_anonymous_per_source: 64,
            max_connections_per_identity: 64,
            anonymous_connection_lifetime: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 32,
            enroll_max_message_bytes: 64 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            refused_enrollments_per_minute: 10,
        }
    }
}

/// How much of the event log is kept: older events are deleted hourly.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventRetention {
    /// Events older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// At most this many events are kept (the newest).
    pub max_events: u64,
}

impl Default for EventRetention {
    fn default() -> Self {
        EventRetention {
            max_age: Duration::from_secs(90 * 24 * 3600),
            max_events: 2_000_000,
        }
    }
}

fn default_host_cert_lifetime() -> std::time::Duration {
    crate::ca::HOST_CERT_VALIDITY
}

fn default_operator_cert_lifetime() -> std::time::Duration {
    crate::ca::OPERATOR_CERT_VALIDITY
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9464".to_owned()
}

fn default_dashboard_listen() -> String {
    "127.0.0.1:7444".to_owned()
}

fn default_listen() -> String {
    "0.0.0.0:7443".to_owned()
}
fn default_heartbeat() -> u32 {
    5
}
fn default_heartbeat_timeout() -> u32 {
    15
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: default_listen(),
            heartbeat_seconds: default_heartbeat(),
            heartbeat_timeout_seconds: default_heartbeat_timeout(),
            host_cert_lifetime: default_host_cert_lifetime(),
            operator_cert_lifetime: default_operator_cert_lifetime(),
            limits: Limits::default(),
            events: EventRetention::default(),
            store: StoreConfig::default(),
            metrics_listen: default_metrics_listen(),
            dashboard_listen: default_dashboard_listen(),
            dashboard_url: String::new(),
            leader: LeaderConfig::default(),
            campaign_archive_after: default_campaign_archive_after(),
            webhooks: Vec::new(),
        }
    }
}

/// A config error an operator can act on.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// Paths inside a coordinator's data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> DataDir {
        DataDir {
            root: root.to_path_buf(),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("coordinator.toml")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("pitcrew.db")
    }
    pub fn operator_dir(&self) -> PathBuf {
        self.root.join("operator")
    }
}

impl CoordinatorConfig {
    /// Loads the config file, naming the file, line and field on error.
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let config: CoordinatorConfig = toml::from_str(&text).map_err(|e| ConfigError {
            file: file.clone(),
            message: redact_urls(
                &e.to_string()
                    .lines()
                    .filter(|l| !l.trim_start().starts_with('|') && !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        })?;
        if let Some(url) = &config.store.postgres_url
            && let Err(error) = crate::store::PostgresSettings::new(url, None)
        {
            return Err(ConfigError {
                file,
                message: format!("field store.postgres_url: {error}"),
            });
        }
        if config.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError {
                file,
                message: format!(
                    "field listen: {:?} is not an address such as 0.0.0.0:7443",
                    config.listen
                ),
            });
        }
        if config.campaign_archive_after < Duration::from_secs(60) {
            return Err(ConfigError {
                file,
                message: format!(
                    "field campaign_archive_after: {} is too short; keep finished runs at least a minute (e.g. \"7d\")",
                    humantime::format_duration(config.campaign_archive_after)
                ),
            });
        }
        if !config.metrics_listen.is_empty()
            && config
                .metrics_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(ConfigError {
                file,
                message: format!(
                    "field metrics_listen: {:?} is not an address such as 127.0.0.1:9464 (\"\" turns metrics off)",
                    config.metrics_listen
                ),
            });
        }
        if !config.dashboard_listen.is_empty()
            && config
                .dashboard_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(ConfigError {
                file,
                message: format!(
                    "field dashboard_listen: {:?} is not an address such as 127.0.0.1:7444 (\"\" turns the dashboard off)",
                    config.dashboard_listen
                ),
            });
        }
        if !config.dashboard_url.is_empty() && !config.dashboard_url.starts_with("https://") {
            return Err(ConfigError {
                file,
                message: format!(
                    "field dashboard_url: {:?} must start with https:// (the dashboard is served over TLS)",
                    config.dashboard_url
                ),
            });
        }
        if config.host_cert_lifetime < std::time::Duration::from_secs(10) {
            return Err(ConfigError {
                file,
                message: "field host_cert_lifetime: must be at least 10s".into(),
            });
        }
        if config.operator_cert_lifetime < std::time::Duration::from_secs(10)
            || config.operator_cert_lifetime > crate::ca::MAX_OPERATOR_CERT_VALIDITY
        {
            return Err(ConfigError {
                file,
                message: "field operator_cert_lifetime: must be between 10s and 365days".into(),
            });
        }
        if let Err(message) = config.load_webhooks() {
            return Err(ConfigError { file, message });
        }
        if config.heartbeat_seconds == 0
            || config.heartbeat_timeout_seconds <= config.heartbeat_seconds
        {
            return Err(ConfigError {
                file,
                message: "field heartbeat_timeout_seconds: must be larger than heartbeat_seconds (and both above 0)".into(),
            });
        }
        Ok(config)
    }

    /// The `[[webhook]]`s checked, with their secrets read (the message names the key).
    pub fn load_webhooks(&self) -> Result<Vec<crate::notify::Webhook>, String> {
        crate::notify::config::load(&self.webhooks)
    }

    /// Where browsers reach the dashboard: `dashboard_url`, or `https://` + `dashboard_listen`
    /// (an unspecified address such as 0.0.0.0 is shown as 127.0.0.1); `None` when it is off.
    pub fn dashboard_base_url(&self) -> Option<String> {
        if self.dashboard_listen.is_empty() {
            return None;
        }
        if !self.dashboard_url.is_empty() {
            return Some(self.dashboard_url.trim_end_matches('/').to_owned());
        }
        let address: std::net::SocketAddr = self.dashboard_listen.parse().ok()?;
        let shown = if address.ip().is_unspecified() {
            std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), address.port())
        } else {
            address
        };
        Some(format!("https://{shown}"))
    }

    /// The file `init` writes.
    pub fn render(&self) -> String {
        format!(
            "# pitcrew coordinator configuration.\n\
             # Address the gRPC server (enrollment, agent sessions, admin) listens on.\n\
             listen = {:?}\n\
             # Agents send a heartbeat this often; a session silent for the timeout is closed.\n\
             heartbeat_seconds = {}\n\
             heartbeat_timeout_seconds = {}\n\
             # Lifetime of host certificates; agents renew them at 70 % of it.\n\
             host_cert_lifetime = {:?}\n\
             # Lifetime of operator certificates (at most 365days); renew with\n\
             # `pitcrew operator renew`.\n\
             operator_cert_lifetime = {:?}\n\
             # Prometheus metrics over plain HTTP (GET /metrics); \"\" turns them off.\n\
             metrics_listen = {:?}\n\
             # The web dashboard over HTTPS (open it with `pitcrew dashboard`); \"\" turns it off.\n\
             dashboard_listen = {:?}\n\
             # Finished campaign runs older than this move to the archive\n\
             # (`pitcrew campaign ls --archived`).\n\
             campaign_archive_after = {:?}\n",
            self.listen,
            self.heartbeat_seconds,
            self.heartbeat_timeout_seconds,
            humantime::format_duration(self.host_cert_lifetime).to_string(),
            humantime::format_duration(self.operator_cert_lifetime).to_string(),
            self.metrics_listen,
            self.dashboard_listen,
            humantime::format_duration(self.campaign_archive_after).to_string()
        ) + &self.render_store()
    }

    fn render_store(&self) -> String {
        let Some(url) = &self.store.postgres_url else {
            return "# The store: <data dir>/pitcrew.db (SQLite). For PostgreSQL instead:\n\
                    # [store]\n\
                    # postgres_url = \"postgres://pitcrew@db.example.net/pitcrew\"\n\
                    # password_file = \"/etc/pitcrew/pg-password\"   # or PITCREW_PG_PASSWORD\n"
                .to_owned();
        };
        let mut out = format!(
            "\n# The store: a PostgreSQL database (the password from password_file or\n\
             # PITCREW_PG_PASSWORD, never in the URL).\n[store]\npostgres_url = {url:?}\n"
        );
        if let Some(file) = &self.store.password_file {
            out.push_str(&format!(
                "password_file = {:?}\n",
                file.display().to_string()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_config_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, CoordinatorConfig::default().render()).unwrap();
        let loaded = CoordinatorConfig::load(&path).unwrap();
        assert_eq!(loaded.listen, "0.0.0.0:7443");
        assert_eq!(loaded.metrics_listen, "127.0.0.1:9464");
        assert_eq!(loaded.dashboard_listen, "127.0.0.1:7444");
        assert_eq!(
            loaded.dashboard_base_url().as_deref(),
            Some("https://127.0.0.1:7444")
        );
        assert_eq!(
            loaded.operator_cert_lifetime,
            std::time::Duration::from_secs(30 * 24 * 3600)
        );
        std::fs::write(&path, "operator_cert_lifetime = \"2years\"\n").unwrap();
        let error = CoordinatorConfig::load(&path).unwrap_err();
        assert!(error.message.contains("operator_cert_lifetime"), "{error}");
    }

    #[test]
    fn the_store_is_sqlite_unless_a_postgres_url_is_given_and_passwords_stay_out_of_messages() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let path = dir.path().join("coordinator.toml");
        let sqlite = CoordinatorConfig::default()
            .store
            .location(&data, None)
            .unwrap();
        assert!(matches!(sqlite, crate::store::StoreLocation::Sqlite(p) if p == data.store()));

        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2-secret\n").unwrap();
        let config = CoordinatorConfig {
            store: StoreConfig {
                postgres_url: Some("postgres://pitcrew@db.example.net/fleet".into()),
                password_file: Some(pw.clone()),
            },
            ..CoordinatorConfig::default()
        };
        std::fs::write(&path, config.render()).unwrap();
        let loaded = CoordinatorConfig::load(&path).unwrap();
        assert_eq!(loaded.store, config.store);
        let crate::store::StoreLocation::Postgres(settings) =
            loaded.store.location(&data, None).unwrap()
        else {
            panic!("a PostgreSQL store");
        };
        assert_eq!(
            settings.describe(),
            "postgres://pitcrew@db.example.net:5432/fleet"
        );
        assert!(!format!("{settings:?}").contains("hunter2"));
        let twice = loaded
            .store
            .location(&data, Some("other".into()))
            .unwrap_err();
        assert!(twice.contains("given twice"), "{twice}");
        let unreadable = StoreConfig {
            password_file: Some(dir.path().join("missing")),
            ..loaded.store.clone()
        };
        let error = unreadable.location(&data, None).unwrap_err();
        assert!(
            error.contains("missing") && !error.contains("hunter2"),
            "{error}"
        );

        // A password inside the URL is refused and never repeated, by the field check and by
        // a parse error quoting the line.
        std::fs::write(
            &path,
            "[store]\npostgres_url = \"postgres://pitcrew:hunter2-secret@db/fleet\"\n",
        )
        .unwrap();
        let error = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("store.postgres_url") && error.contains("carries a password"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
        std::fs::write(
            &path,
            "[store]\npostgres_url = \"postgres://pitcrew:hunter2-secret@db/fleet\"\nport = 1\n",
        )
        .unwrap();
        let error = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert_eq!(
            redact_urls("at postgres://u:p@h/db and https://x/y"),
            "at postgres://u:***@h/db and https://x/y"
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, "listen = \"nowhere\"\n").unwrap();
        let error = CoordinatorConfig::load(&path).unwrap_err();
        assert!(error.message.contains("field listen"), "{error}");
        std::fs::write(&path, "metrics_listen = \"9464\"\n").unwrap();
        let error = CoordinatorConfig::load(&path).unwrap_err();
        assert!(error.message.contains("field metrics_listen"), "{error}");
        std::fs::write(&path, "metrics_listen = \"\"\n").unwrap();
        assert!(
            CoordinatorConfig::load(&path)
                .unwrap()
                .metrics_listen
                .is_empty()
        );
        std::fs::write(&path, "dashboard_listen = \"7444\"\n").unwrap();
        let error = CoordinatorConfig::load(&path).unwrap_err();
        assert!(error.message.contains("field dashboard_listen"), "{error}");
        std::fs::write(&path, "dashboard_listen = \"\"\n").unwrap();
        assert_eq!(
            CoordinatorConfig::load(&path).unwrap().dashboard_base_url(),
            None
        );
        std::fs::write(&path, "dashboard_url = \"http://x:1\"\n").unwrap();
        let error = CoordinatorConfig::load(&path).unwrap_err();
        assert!(error.message.contains("field dashboard_url"), "{error}");
        std::fs::write(&path, "\nlisten_on = \"0.0.0.0:1\"\n").unwrap();
        let error = CoordinatorConfig::load(&path).unwrap_err();
        assert!(
            error.message.contains("line 2") && error.message.contains("listen_on"),
            "{error}"
        );
    }
}
