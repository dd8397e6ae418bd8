//! A stand-in of systemd's D-Bus API on a private `dbus-daemon`, for testing the agent's
//! systemd client where no systemd runs. It serves `org.freedesktop.systemd1.Manager` at
//! `/org/freedesktop/systemd1` (StartUnit, StopUnit, RestartUnit, ReloadUnit, KillUnit,
//! Reload, GetUnit, Subscribe, EnableUnitFiles, DisableUnitFiles, and the JobRemoved signal)
//! and one `org.freedesktop.systemd1.Unit` object per unit with its ActiveState. Jobs of units
//! marked "held" wait until the test releases them, which proves callers wait for JobRemoved.
//! The real systemd is exercised by the lab tests; this only mirrors its interface.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, DBusError, ObjectPath, OwnedObjectPath, interface};

/// A private bus: `dbus-daemon` with a socket in a temp dir, gone when dropped.
pub struct DbusDaemon {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl DbusDaemon {
    pub fn start() -> DbusDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed for these tests");
        // The daemon prints its address once it listens: reading it is the readiness signal.
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        assert!(!line.trim().is_empty(), "dbus-daemon printed no address");
        DbusDaemon {
            child,
            address: line.trim().to_owned(),
            _dir: dir,
        }
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the stand-in knows and records.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Loaded units and their ActiveState.
    pub units: HashMap<String, String>,
    /// The job result to report per unit (default "done").
    pub job_results: HashMap<String, String>,
    /// Units whose jobs wait for [`FakeSystemd::release`].
    pub held: HashSet<String>,
    /// Jobs waiting: (id, path, unit, operation).
    pending: Vec<(u32, String, String, String)>,
    /// KillUnit calls: (unit, whom, signal number).
    pub kills: Vec<(String, String, i32)>,
    pub reloads: u32,
    pub enabled: HashSet<String>,
    pub subscribed: u32,
    next_job: u32,
}

/// A systemd-style error on the wire (`org.freedesktop.systemd1.NoSuchUnit`).
#[derive(Debug, DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
pub enum SdError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

pub fn unit_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    for b in unit.bytes() {
        if b.is_ascii_alphanumeric() {
            path.push(b as char);
        } else {
            path.push_str(&format!("_{b:02x}"));
        }
    }
    path
}

struct Manager {
    state: Arc<Mutex<FakeState>>,
    jobs: mpsc::UnboundedSender<(u32, String)>,
}

impl Manager {
    async fn job(
        &self,
        connection: &Connection,
        unit: String,
        operation: &str,
    ) -> Result<OwnedObjectPath, SdError> {
        let (id, path, held) = {
            let mut s = self.state.lock().unwrap();
            if !s.units.contains_key(&unit) {
                return Err(SdError::NoSuchUnit(format!("Unit {unit} not found.")));
            }
            s.next_job += 1;
            let id = s.next_job;
            let path = format!("/org/freedesktop/systemd1/job/{id}");
            let held = s.held.contains(&unit);
            if held {
                s.pending
                    .push((id, path.clone(), unit.clone(), operation.to_owned()));
            }
            (id, path, held)
        };
        let _ = self.jobs.send((id, unit.clone()));
        if !held {
            let connection = connection.clone();
            let state = self.state.clone();
            let operation = operation.to_owned();
            let job_path = path.clone();
            // Finish the job after the reply is on its way, as systemd does.
            tokio::spawn(async move {
                complete(&connection, &state, id, &job_path, &unit, &operation).await;
            });
        }
        Ok(OwnedObjectPath::try_from(path).unwrap())
    }
}

/// Applies a job's effect on the unit's state and emits JobRemoved.
async fn complete(
    connection: &Connection,
    state: &Arc<Mutex<FakeState>>,
    id: u32,
    job: &str,
    unit: &str,
    operation: &str,
) {
    let result = {
        let s = state.lock().unwrap();
        s.job_results
            .get(unit)
            .cloned()
            .unwrap_or_else(|| "done".into())
    };
    let new_state = match (operation, result.as_str()) {
        ("start" | "restart" | "reload", "done") => Some("active"),
        ("stop", "done") => Some("inactive"),
        (_, "failed") => Some("failed"),
        _ => None,
    };
    if let Some(new_state) = new_state {
        set_unit_state(connection, state, unit, new_state).await;
    }
    let manager = connection
        .object_server()
        .interface::<_, Manager>("/org/freedesktop/systemd1")
        .await
        .unwrap();
    Manager::job_removed(
        manager.signal_emitter(),
        id,
        ObjectPath::try_from(job).unwrap(),
        unit,
        &result,
    )
    .await
    .unwrap();
}

async fn set_unit_state(
    connection: &Connection,
    state: &Arc<Mutex<FakeState>>,
    unit: &str,
    new_state: &str,
) {
    state
        .lock()
        .unwrap()
        .units
        .insert(unit.to_owned(), new_state.to_owned());
    let iface = connection
        .object_server()
        .interface::<_, Unit>(unit_path(unit))
        .await
        .unwrap();
    iface.get_mut().await.active_state = new_state.to_owned();
    iface
        .get()
        .await
        .active_state_changed(iface.signal_emitter())
        .await
        .unwrap();
}

#[interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn subscribe(&self) {
        self.state.lock().unwrap().subscribed += 1;
    }

    async fn start_unit(
        &self,
        name: String,
        _mode: String,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<OwnedObjectPath, SdError> {
        self.job(connection, name, "start").await
    }

    async fn stop_unit(
        &self,
        name: String,
        _mode: String,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<OwnedObjectPath, SdError> {
        self.job(connection, name, "stop").await
    }

    async fn restart_unit(
        &self,
        name: String,
        _mode: String,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<OwnedObjectPath, SdError> {
        self.job(connection, name, "restart").await
    }

    async fn reload_unit(
        &self,
        name: String,
        _mode: String,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<OwnedObjectPath, SdError> {
        self.job(connection, name, "reload").await
    }

    async fn kill_unit(&self, name: String, whom: String, signal: i32) -> Result<(), SdError> {
        let mut s = self.state.lock().unwrap();
        if !s.units.contains_key(&name) {
            return Err(SdError::NoSuchUnit(format!("Unit {name} not loaded.")));
        }
        s.kills.push((name, whom, signal));
        Ok(())
    }

    async fn reload(&self) {
        self.state.lock().unwrap().reloads += 1;
    }

    async fn get_unit(&self, name: String) -> Result<OwnedObjectPath, SdError> {
        if self.state.lock().unwrap().units.contains_key(&name) {
            Ok(OwnedObjectPath::try_from(unit_path(&name)).unwrap())
        } else {
            Err(SdError::NoSuchUnit(format!("Unit {name} not loaded.")))
        }
    }

    async fn enable_unit_files(
        &self,
        files: Vec<String>,
        _runtime: bool,
        _force: bool,
    ) -> (bool, Vec<(String, String, String)>) {
        let mut s = self.state.lock().unwrap();
        let changes = files
            .into_iter()
            .filter(|f| s.enabled.insert(f.clone()))
            .map(|f| {
                (
                    "symlink".to_owned(),
                    format!("/etc/systemd/system/multi-user.target.wants/{f}"),
                    format!("/lib/systemd/system/{f}"),
                )
            })
            .collect();
        (false, changes)
    }

    async fn disable_unit_files(
        &self,
        files: Vec<String>,
        _runtime: bool,
    ) -> Vec<(String, String, String)> {
        let mut s = self.state.lock().unwrap();
        files
            .into_iter()
            .filter(|f| s.enabled.remove(f))
            .map(|f| {
                (
                    "unlink".to_owned(),
                    format!("/etc/systemd/system/multi-user.target.wants/{f}"),
                    String::new(),
                )
            })
            .collect()
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

struct Unit {
    active_state: String,
}

#[interface(name = "org.freedesktop.systemd1.Unit")]
impl Unit {
    #[zbus(property)]
    async fn active_state(&self) -> String {
        self.active_state.clone()
    }
}

/// The service side of a unit: its main process, as `MainPID`.
struct Service {
    main_pid: u32,
}

#[interface(name = "org.freedesktop.systemd1.Service")]
impl Service {
    #[zbus(property, name = "MainPID")]
    async fn main_pid(&self) -> u32 {
        self.main_pid
    }
}

/// The main process a unit added in `active_state` starts with.
pub const MAIN_PID: u32 = 4242;

/// The stand-in, running on its own private bus.
pub struct FakeSystemd {
    pub bus: DbusDaemon,
    connection: Connection,
    pub state: Arc<Mutex<FakeState>>,
    jobs: tokio::sync::Mutex<mpsc::UnboundedReceiver<(u32, String)>>,
}

impl FakeSystemd {
    pub async fn start() -> FakeSystemd {
        let bus = DbusDaemon::start();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let connection = zbus::connection::Builder::address(bus.address.as_str())
            .serve_at(
                "/org/freedesktop/systemd1",
                Manager {
                    state: state.clone(),
                    jobs: jobs_tx,
                },
            )
            .name("org.freedesktop.systemd1")
            .build()
            .await
            .unwrap();
        FakeSystemd {
            bus,
            connection,
            state,
            jobs: tokio::sync::Mutex::new(jobs_rx),
        }
    }

    pub fn address(&self) -> String {
        self.bus.address.clone()
    }

    /// Loads a unit in the given ActiveState.
    pub async fn add_unit(&self, unit: &str, active_state: &str) {
        self.state
            .lock()
            .unwrap()
            .units
            .insert(unit.to_owned(), active_state.to_owned());
        self.connection
            .object_server()
            .at(
                unit_path(unit),
                Unit {
                    active_state: active_state.to_owned(),
                },
            )
            .await
            .unwrap();
        let main_pid = if active_state == "active" {
            MAIN_PID
        } else {
            0
        };
        self.connection
            .object_server()
            .at(unit_path(unit), Service { main_pid })
            .await
            .unwrap();
    }

    /// Changes a unit's main process (0: none) and emits PropertiesChanged, as systemd does.
    pub async fn set_main_pid(&self, unit: &str, main_pid: u32) {
        let iface = self
            .connection
            .object_server()
            .interface::<_, Service>(unit_path(unit))
            .await
            .unwrap();
        iface.get_mut().await.main_pid = main_pid;
        iface
            .get()
            .await
            .main_p_i_d_changed(iface.signal_emitter())
            .await
            .unwrap();
    }

    /// Changes a unit's ActiveState and emits PropertiesChanged, as systemd does.
    pub async fn set_state(&self, unit: &str, active_state: &str) {
        set_unit_state(&self.connection, &self.state, unit, active_state).await;
    }

    /// Waits until a job is created; returns its id and unit.
    pub async fn next_job(&self) -> (u32, String) {
        self.jobs.lock().await.recv().await.unwrap()
    }

    /// Finishes the held jobs of a unit with the configured result.
    pub async fn release(&self, unit: &str) {
        let pending: Vec<_> = {
            let mut s = self.state.lock().unwrap();
            let (mine, rest): (Vec<_>, Vec<_>) =
                s.pending.drain(..).partition(|(_, _, u, _)| u == unit);
            s.pending = rest;
            mine
        };
        for (id, path, unit, operation) in pending {
            complete(&self.connection, &self.state, id, &path, &unit, &operation).await;
        }
    }
}

/// How the stand-in logind answers Reboot/PowerOff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogindAnswer {
    /// Accepts (records the call) and replies.
    Accept,
    /// Replies AccessDenied, as polkit would for an unprivileged caller.
    Deny,
    /// Never replies: the test then takes the bus down, as a shutdown does.
    Hang,
}

struct Logind {
    answer: LogindAnswer,
    calls: mpsc::UnboundedSender<&'static str>,
}

impl Logind {
    async fn answer(&self, what: &'static str) -> zbus::fdo::Result<()> {
        let _ = self.calls.send(what);
        match self.answer {
            LogindAnswer::Accept => Ok(()),
            LogindAnswer::Deny => Err(zbus::fdo::Error::AccessDenied(
                "Interactive authentication required.".into(),
            )),
            LogindAnswer::Hang => std::future::pending().await,
        }
    }
}

#[interface(name = "org.freedesktop.login1.Manager")]
impl Logind {
    async fn reboot(&self, _interactive: bool) -> zbus::fdo::Result<()> {
        self.answer("reboot").await
    }

    async fn power_off(&self, _interactive: bool) -> zbus::fdo::Result<()> {
        self.answer("poweroff").await
    }
}

/// A stand-in of systemd-logind's Manager on its own private bus.
pub struct FakeLogind {
    pub bus: Option<DbusDaemon>,
    pub address: String,
    _connection: Connection,
    calls: mpsc::UnboundedReceiver<&'static str>,
}

impl FakeLogind {
    pub async fn start(answer: LogindAnswer) -> FakeLogind {
        let bus = DbusDaemon::start();
        let (tx, calls) = mpsc::unbounded_channel();
        let connection = zbus::connection::Builder::address(bus.address.as_str())
            .serve_at("/org/freedesktop/login1", Logind { answer, calls: tx })
            .name("org.freedesktop.login1")
            .build()
            .await
            .unwrap();
        FakeLogind {
            address: bus.address.clone(),
            bus: Some(bus),
            _connection: connection,
            calls,
        }
    }

    /// Waits for the next Reboot ("reboot") or PowerOff ("poweroff") call.
    pub async fn next_call(&mut self) -> &'static str {
        self.calls.recv().await.unwrap()
    }
}
