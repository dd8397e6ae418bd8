//! The systemd D-Bus client: units started, stopped, signalled and watched through systemd's
//! own API (`org.freedesktop.systemd1`), never by parsing `systemctl` output; and reboot or
//! power-off through systemd-logind (`org.freedesktop.login1`).
//!
//! The bus address is explicit when given (tests run a private bus with a stand-in manager),
//! else `DBUS_SYSTEM_BUS_ADDRESS`, else the default system bus. Errors say in words whether
//! systemd is unreachable or what it answered, so an operator is never left with a bare zbus
//! error.

use futures::StreamExt;
use zbus::Connection;
use zbus::OwnedObjectPath;
use zbus_systemd::login1::ManagerProxy as LoginManagerProxy;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

/// What went wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// No bus, or nobody serving systemd's name on it.
    #[error("systemd is not reachable over D-Bus on this host ({0})")]
    Unreachable(String),
    /// systemd answered with an error.
    #[error("systemd refused {what}: {message}")]
    Call { what: String, message: String },
    /// The unit is not loaded (unknown or not installed).
    #[error("unit {0} is not loaded")]
    NoSuchUnit(String),
}

/// What a unit was doing when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSnapshot {
    /// "active", "inactive", "deactivating", "failed", ...
    pub active_state: String,
    /// The service's main process; 0 when it has none (or the unit is not a service).
    pub main_pid: u32,
}

impl UnitSnapshot {
    /// A unit that is not loaded: inactive, no process.
    fn gone() -> UnitSnapshot {
        UnitSnapshot {
            active_state: "inactive".into(),
            main_pid: 0,
        }
    }
}

impl std::fmt::Display for UnitSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.main_pid {
            0 => write!(f, "{}, no main process", self.active_state),
            pid => write!(f, "{}, main process {pid}", self.active_state),
        }
    }
}

/// The operations that create a systemd job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOp {
    Start,
    Stop,
    Restart,
    Reload,
}

impl JobOp {
    pub fn verb(self) -> &'static str {
        match self {
            JobOp::Start => "start",
            JobOp::Stop => "stop",
            JobOp::Restart => "restart",
            JobOp::Reload => "reload",
        }
    }
}

/// A connection to the bus systemd is on.
#[derive(Debug, Clone)]
pub struct Systemd {
    connection: Connection,
}

/// The D-Bus error name of an error the peer answered with (as a method error or one of the
/// standard `org.freedesktop.DBus.Error.*` ones zbus decodes), if it is one.
fn error_name(error: &zbus::Error) -> Option<String> {
    use zbus::DBusError;
    match error {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(fdo) => Some(fdo.name().to_string()),
        _ => None,
    }
}

/// Whether `error` is one of the standard D-Bus errors `org.freedesktop.DBus.Error.<short>`.
fn is_dbus_error(error: &zbus::Error, short: &[&str]) -> bool {
    error_name(error).is_some_and(|name| {
        name.strip_prefix("org.freedesktop.DBus.Error.")
            .is_some_and(|s| short.contains(&s))
    })
}

/// Whether a D-Bus error means "nobody is serving that name" rather than an answer.
fn is_unreachable(error: &zbus::Error) -> bool {
    matches!(error, zbus::Error::InputOutput(_))
        || is_dbus_error(error, &["ServiceUnknown", "NameHasNoOwner", "NoReply"])
}

/// Whether the bus connection broke while a call was in flight (the peer went away).
pub fn is_disconnect(error: &zbus::Error) -> bool {
    match error {
        zbus::Error::InputOutput(_) => true,
        zbus::Error::MethodError(..) | zbus::Error::FDO(_) => {
            is_dbus_error(error, &["NoReply", "Disconnected"])
        }
        other => {
            let text = other.to_string().to_ascii_lowercase();
            text.contains("connection reset") || text.contains("broken pipe")
        }
    }
}

/// Whether an error reading a service property means the unit is not a service.
fn not_a_service(error: &zbus::Error) -> bool {
    is_dbus_error(
        error,
        &["UnknownInterface", "UnknownProperty", "InvalidArgs"],
    )
}

fn message_of(error: &zbus::Error) -> String {
    match error {
        zbus::Error::MethodError(name, Some(text), _) => format!("{text} ({name})"),
        zbus::Error::MethodError(name, None, _) => name.to_string(),
        other => other.to_string(),
    }
}

fn classify(what: &str, error: zbus::Error) -> SystemdError {
    if is_unreachable(&error) {
        SystemdError::Unreachable(format!("{what}: {}", message_of(&error)))
    } else {
        SystemdError::Call {
            what: what.to_owned(),
            message: message_of(&error),
        }
    }
}

impl Systemd {
    /// Connects to the bus at `address`, or `DBUS_SYSTEM_BUS_ADDRESS`, or the system bus.
    pub async fn connect(address: Option<&str>) -> Result<Systemd, SystemdError> {
        let address = address
            .map(str::to_owned)
            .or_else(|| std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok());
        let connection = match &address {
            Some(address) => zbus::connection::Builder::address(address.as_str())
                .build()
                .await
                .map_err(|e| {
                    SystemdError::Unreachable(format!(
                        "cannot connect to the bus at {address}: {e}"
                    ))
                })?,
            None => Connection::system().await.map_err(|e| {
                SystemdError::Unreachable(format!("cannot connect to the system bus: {e}"))
            })?,
        };
        Ok(Systemd { connection })
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, SystemdError> {
        ManagerProxy::new(&self.connection)
            .await
            .map_err(|e| classify("the systemd manager", e))
    }

    /// Asks systemd to send us its signals. systemd only emits unit and job signals while
    /// some client is subscribed; the subscription ends with our connection.
    async fn subscribe(&self, manager: &ManagerProxy<'static>) -> Result<(), SystemdError> {
        match manager.subscribe().await {
            Ok(()) => Ok(()),
            Err(e) if is_unreachable(&e) => Err(classify("Subscribe", e)),
            // "Already subscribed" and the like are not a reason to fail.
            Err(e) => {
                tracing::debug!(message = "systemd Subscribe failed", error = %e);
                Ok(())
            }
        }
    }

    /// Starts, stops, restarts or reloads a unit (mode "replace") and waits for its job to
    /// finish. Returns systemd's job result: "done", "failed", "timeout", "dependency",
    /// "canceled", "skipped"...
    pub async fn run_job(&self, unit: &str, op: JobOp) -> Result<String, SystemdError> {
        let manager = self.manager().await?;
        self.subscribe(&manager).await?;
        // Subscribe to JobRemoved before asking: a quick job can finish before the reply.
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| classify("JobRemoved", e))?;
        let what = format!("to {} {unit}", op.verb());
        let mode = "replace".to_owned();
        let name = unit.to_owned();
        let job: OwnedObjectPath = match op {
            JobOp::Start => manager.start_unit(name, mode).await,
            JobOp::Stop => manager.stop_unit(name, mode).await,
            JobOp::Restart => manager.restart_unit(name, mode).await,
            JobOp::Reload => manager.reload_unit(name, mode).await,
        }
        .map_err(|e| classify(&what, e))?;
        while let Some(signal) = removed.next().await {
            let Ok(args) = signal.args() else {
                continue;
            };
            if args.job.as_str() == job.as_str() {
                return Ok(args.result.clone());
            }
        }
        Err(SystemdError::Unreachable(
            "the bus connection closed before the job finished".into(),
        ))
    }

    /// Enables (or disables) a unit's file, then reloads systemd. Returns the changes systemd
    /// made, as "symlink from -> to" / "unlink path" lines.
    pub async fn set_enabled(&self, unit: &str, enable: bool) -> Result<Vec<String>, SystemdError> {
        let manager = self.manager().await?;
        let files = vec![unit.to_owned()];
        let changes = if enable {
            manager
                .enable_unit_files(files, false, false)
                .await
                .map(|(_, changes)| changes)
                .map_err(|e| classify(&format!("to enable {unit}"), e))?
        } else {
            manager
                .disable_unit_files(files, false)
                .await
                .map_err(|e| classify(&format!("to disable {unit}"), e))?
        };
        manager
            .reload()
            .await
            .map_err(|e| classify("daemon-reload", e))?;
        Ok(changes
            .into_iter()
            .map(|(kind, from, to)| {
                if to.is_empty() {
                    format!("{kind} {from}")
                } else {
                    format!("{kind} {from} -> {to}")
                }
            })
            .collect())
    }

    /// Sends a signal to a unit's processes: `whom` is "main" or "all" (`systemctl kill -s`).
    pub async fn kill(&self, unit: &str, whom: &str, signal: i32) -> Result<(), SystemdError> {
        let manager = self.manager().await?;
        manager
            .kill_unit(unit.to_owned(), whom.to_owned(), signal)
            .await
            .map_err(|e| classify(&format!("to signal {unit}"), e))
    }

    /// `systemctl daemon-reload`.
    pub async fn daemon_reload(&self) -> Result<(), SystemdError> {
        let manager = self.manager().await?;
        manager
            .reload()
            .await
            .map_err(|e| classify("daemon-reload", e))
    }

    async fn unit_path(
        &self,
        manager: &ManagerProxy<'static>,
        unit: &str,
    ) -> Result<OwnedObjectPath, SystemdError> {
        match manager.get_unit(unit.to_owned()).await {
            Ok(path) => Ok(path),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Err(SystemdError::NoSuchUnit(unit.to_owned()))
            }
            Err(e) => Err(classify(&format!("to look up {unit}"), e)),
        }
    }

    async fn unit_proxy(&self, path: OwnedObjectPath) -> Result<UnitProxy<'static>, SystemdError> {
        UnitProxy::builder(&self.connection)
            .path(path)
            // Always ask systemd: a cached value could be older than the signal that woke us.
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| classify("the unit object", e))
    }

    /// A unit's ActiveState ("active", "inactive", "failed", "activating", ...). A unit that
    /// is not loaded is "inactive", as systemctl shows it.
    pub async fn active_state(&self, unit: &str) -> Result<String, SystemdError> {
        let manager = self.manager().await?;
        let path = match self.unit_path(&manager, unit).await {
            Ok(path) => path,
            Err(SystemdError::NoSuchUnit(_)) => return Ok("inactive".into()),
            Err(e) => return Err(e),
        };
        let proxy = self.unit_proxy(path).await?;
        proxy
            .active_state()
            .await
            .map_err(|e| classify(&format!("the state of {unit}"), e))
    }

    /// Waits until the unit's ActiveState is one of `wanted`, re-reading it on every
    /// PropertiesChanged of the unit (no polling). Returns the state reached. A unit that
    /// fails ends the wait early with "failed" whatever was awaited: it stays failed until
    /// someone acts, so waiting longer would only hide the failure.
    pub async fn wait_state(&self, unit: &str, wanted: &[&str]) -> Result<String, SystemdError> {
        let manager = self.manager().await?;
        self.subscribe(&manager).await?;
        let path = match self.unit_path(&manager, unit).await {
            Ok(path) => Some(path),
            Err(SystemdError::NoSuchUnit(_)) => None,
            Err(e) => return Err(e),
        };
        let Some(path) = path else {
            // Not loaded means inactive; a wait for anything else needs the unit loaded.
            if wanted.contains(&"inactive") {
                return Ok("inactive".into());
            }
            return Err(SystemdError::NoSuchUnit(unit.to_owned()));
        };
        let properties = zbus::fdo::PropertiesProxy::builder(&self.connection)
            .destination("org.freedesktop.systemd1")
            .path(path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| classify("the unit object", e))?;
        // Subscribe before the first read, so a change between the two is not missed.
        let mut changes = properties
            .receive_properties_changed()
            .await
            .map_err(|e| classify("PropertiesChanged", e))?;
        let unit_proxy = self.unit_proxy(path).await?;
        loop {
            let state = unit_proxy
                .active_state()
                .await
                .map_err(|e| classify(&format!("the state of {unit}"), e))?;
            if wanted.contains(&state.as_str()) {
                return Ok(state);
            }
            if state == "failed" {
                return Ok(state);
            }
            if changes.next().await.is_none() {
                return Err(SystemdError::Unreachable(
                    "the bus connection closed while waiting".into(),
                ));
            }
        }
    }

    /// What a unit is doing now: its ActiveState and, for a service, its main process (0 when
    /// it has none). A unit that is not loaded is inactive with no process.
    pub async fn snapshot(&self, unit: &str) -> Result<UnitSnapshot, SystemdError> {
        let manager = self.manager().await?;
        match self.unit_path(&manager, unit).await {
            Ok(path) => self.read_snapshot(unit, path).await,
            Err(SystemdError::NoSuchUnit(_)) => Ok(UnitSnapshot::gone()),
            Err(e) => Err(e),
        }
    }

    async fn read_snapshot(
        &self,
        unit: &str,
        path: OwnedObjectPath,
    ) -> Result<UnitSnapshot, SystemdError> {
        let active_state = self
            .unit_proxy(path.clone())
            .await?
            .active_state()
            .await
            .map_err(|e| classify(&format!("the state of {unit}"), e))?;
        // Only services have a main process; any other unit type answers that it has no such
        // interface or property, which reads as "none". Any other error is an error: reading
        // it as "no process" would report a drain that never finished as done.
        let service = ServiceProxy::builder(&self.connection)
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| classify("the service object", e))?;
        let main_pid = match service.main_pid().await {
            Ok(pid) => pid,
            Err(e) if not_a_service(&e) => 0,
            Err(e) => return Err(classify(&format!("the main process of {unit}"), e)),
        };
        Ok(UnitSnapshot {
            active_state,
            main_pid,
        })
    }

    /// Waits until `done` holds for the unit, re-reading it on every PropertiesChanged of the
    /// unit's object (no polling), and returns what it saw then. Bounded by the caller.
    pub async fn wait_until(
        &self,
        unit: &str,
        done: impl Fn(&UnitSnapshot) -> bool,
    ) -> Result<UnitSnapshot, SystemdError> {
        let manager = self.manager().await?;
        self.subscribe(&manager).await?;
        let path = match self.unit_path(&manager, unit).await {
            Ok(path) => path,
            Err(SystemdError::NoSuchUnit(_)) => {
                let gone = UnitSnapshot::gone();
                return if done(&gone) {
                    Ok(gone)
                } else {
                    Err(SystemdError::NoSuchUnit(unit.to_owned()))
                };
            }
            Err(e) => return Err(e),
        };
        let properties = zbus::fdo::PropertiesProxy::builder(&self.connection)
            .destination("org.freedesktop.systemd1")
            .path(path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| classify("the unit object", e))?;
        // Subscribe before the first read, so a change between the two is not missed.
        let mut changes = properties
            .receive_properties_changed()
            .await
            .map_err(|e| classify("PropertiesChanged", e))?;
        loop {
            let now = self.read_snapshot(unit, path.clone()).await?;
            if done(&now) {
                return Ok(now);
            }
            if changes.next().await.is_none() {
                return Err(SystemdError::Unreachable(
                    "the bus connection closed while waiting".into(),
                ));
            }
        }
    }

    /// Asks systemd-logind to reboot (or power off) the host, non-interactively.
    pub async fn logind_reboot(&self, poweroff: bool) -> Result<(), zbus::Error> {
        let login = LoginManagerProxy::new(&self.connection).await?;
        if poweroff {
            login.power_off(false).await
        } else {
            login.reboot(false).await
        }
    }
}

/// Whether a logind error means logind is not there at all (so another way may be tried).
pub fn logind_absent(error: &zbus::Error) -> bool {
    is_unreachable(error) && !is_disconnect(error)
}

/// A readable form of a zbus error.
pub fn describe(error: &zbus::Error) -> String {
    message_of(error)
}
