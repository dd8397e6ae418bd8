//! Test harness for pitcrew: a real `pitcrew-coordinator` process and real `pitcrew-agent`
//! processes on loopback over real mTLS, each agent with its own state dir and host identity,
//! driven through the real `pitcrew` CLI. Every process is killed when its handle drops.

pub mod failover_bench;
pub mod fleet;
pub mod hostile;
pub mod lab;
pub mod runs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// How long any wait in a test may take before it fails: generous, because a loaded CI
/// machine is slow, and a wait ends as soon as its condition holds.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/<test>-<hash> → target/debug
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, checked to exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, or run the tests with `cargo test --workspace`)",
        path.display()
    );
    path
}

/// Polls `check` until it returns Some, failing after `DEADLINE`. The checks read real state
/// (the registry through the CLI, a file); this waits for that state, not for a fixed time.
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_for_within(what, DEADLINE, check)
}

/// [`wait_for`] with its own deadline, for conditions that take long by design (a step
/// timeout plus the coordinator's grace for late results).
pub fn wait_for_within<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(17443)
}

/// A plain HTTP/1.1 `GET` (the response read to its end): status code, head and body.
pub fn http_get(address: &str, path: &str) -> anyhow::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response without an end of head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("an HTTP response without a status")?;
    Ok((status, head.to_owned(), body.to_owned()))
}

/// A fresh 32-hex-digit machine id.
pub fn new_machine_id() -> String {
    let bytes: [u8; 16] = rand_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rand_bytes() -> [u8; 16] {
    // Uniqueness, not secrecy: time, pid and a counter are enough for test identities.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&t.to_le_bytes());
    out[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    out[12..].copy_from_slice(&(n as u32).to_le_bytes());
    out
}

/// A child process killed on drop, with its stderr kept in a log file for failure messages.
pub struct Proc {
    child: Option<Child>,
    /// When a wrapper (a profiler) runs the program: the program's own process. Signals and
    /// figures (RSS, CPU) go to it, not to the wrapper, which ends when it does and so gets to
    /// write its report.
    wrapped: Option<u32>,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(mut command: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        command
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null());
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        Ok(Proc {
            child: Some(child),
            wrapped: None,
            log,
        })
    }

    /// Sends `signal` to process `pid` (SIGKILL, SIGTERM).
    fn signal(pid: u32, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status();
    }

    /// Sends `signal` (a name: `STOP`, `CONT`, ...) to the process, if it runs.
    pub fn send(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            Proc::signal(pid, signal);
        }
    }

    /// SIGKILL: the process gets no chance to clean up (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            match self.wrapped {
                Some(pid) => Proc::signal(pid, "KILL"),
                None => {
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a graceful stop. Returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        Proc::signal(self.wrapped.unwrap_or(child.id()), "TERM");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        let child = self.child.as_ref()?;
        Some(self.wrapped.unwrap_or(child.id()))
    }

    /// Whether the process has exited (and its code if so).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(status.code()),
            _ => None,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A coordinator with its own data dir and port.
pub struct Coordinator {
    pub dir: PathBuf,
    /// The address it listens on and agents use.
    pub ip: String,
    pub port: u16,
    /// The port of its metrics listener (`GET /metrics` on loopback).
    pub metrics_port: u16,
    /// The port of its web dashboard (HTTPS on loopback).
    pub dashboard_port: u16,
    pub fingerprint: String,
    pub proc: Option<Proc>,
    /// The store's database and password for `serve` (a PostgreSQL store), and its advertised
    /// address when it shares the store, as environment.
    store_env: Vec<(String, String)>,
    /// The other coordinators of the fleet (their addresses), which the CLI is also given.
    pub peers: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

impl Coordinator {
    /// `pitcrew-coordinator init` in a new temp dir, with a 1 s heartbeat and 3 s timeout so
    /// disconnects show quickly.
    pub fn init() -> anyhow::Result<Coordinator> {
        Coordinator::init_on("127.0.0.1")
    }

    /// Like [`Coordinator::init`], listening on `ip` (e.g. the lab bridge's 10.231.0.1), with
    /// that address in the server certificate.
    pub fn init_on(ip: &str) -> anyhow::Result<Coordinator> {
        Coordinator::init_with(ip, Vec::new())
    }

    /// Like [`Coordinator::init`], with the fleet's store in a fresh database of the tests'
    /// private PostgreSQL cluster (`init --postgres-url`; `serve` gets the URL and the password
    /// from `PITCREW_PG_URL` and `PITCREW_PG_PASSWORD`). `None` when PostgreSQL tests are
    /// skipped (not installed and not required).
    pub fn init_postgres() -> anyhow::Result<Option<Coordinator>> {
        let Some(cluster) = pitcrew_coordinator::store::testing::cluster() else {
            return Ok(None);
        };
        let url = cluster.url(&cluster.create_database());
        let env = vec![
            ("PITCREW_PG_URL".to_owned(), url),
            (
                pitcrew_coordinator::config::PG_PASSWORD_ENV.to_owned(),
                cluster.password().to_owned(),
            ),
        ];
        Coordinator::init_with("127.0.0.1", env).map(Some)
    }

    fn init_with(ip: &str, store_env: Vec<(String, String)>) -> anyhow::Result<Coordinator> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().join("coordinator");
        let port = free_port();
        let metrics_port = free_port();
        let dashboard_port = free_port();
        let out = Command::new(bin("pitcrew-coordinator"))
            .envs(store_env.iter().map(|(k, v)| (k, v)))
            .args(["init", "--data-dir"])
            .arg(&dir)
            .args([
                "--san",
                ip,
                "--san",
                "127.0.0.1",
                "--san",
                "localhost",
                "--listen",
                &format!("{ip}:{port}"),
            ])
            .output()?;
        if !out.status.success() {
            bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let fingerprint = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ca_fingerprint = \"sha256:"))
            .map(|l| l.trim_end_matches('"').to_owned())
            .context("init printed no fingerprint")?;
        std::fs::write(
            dir.join("coordinator.toml"),
            format!(
                "listen = \"{ip}:{port}\"\nheartbeat_seconds = 1\nheartbeat_timeout_seconds = 3\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\ndashboard_listen = \"127.0.0.1:{dashboard_port}\"\n"
            ),
        )?;
        Ok(Coordinator {
            dir,
            ip: ip.to_owned(),
            port,
            metrics_port,
            dashboard_port,
            fingerprint,
            proc: None,
            store_env,
            peers: Vec::new(),
            _temp: Some(temp),
        })
    }

    /// Another coordinator of the same fleet and store, as an operator sets one up: a copy of
    /// this one's CA, server certificate and operator files in a data dir of its own, its own
    /// ports, the same database. Call [`share_leadership`] once all are made.
    pub fn replica(&self) -> anyhow::Result<Coordinator> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().join("coordinator");
        std::fs::create_dir_all(dir.join("operator"))?;
        for file in ["ca.crt", "ca.key", "server.crt", "server.key"] {
            std::fs::copy(self.dir.join(file), dir.join(file))?;
        }
        for entry in std::fs::read_dir(self.dir.join("operator"))? {
            let entry = entry?;
            std::fs::copy(entry.path(), dir.join("operator").join(entry.file_name()))?;
        }
        let (port, metrics_port, dashboard_port) = (free_port(), free_port(), free_port());
        let ip = &self.ip;
        std::fs::write(
            dir.join("coordinator.toml"),
            format!(
                "listen = \"{ip}:{port}\"\nheartbeat_seconds = 1\nheartbeat_timeout_seconds = 3\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\ndashboard_listen = \"127.0.0.1:{dashboard_port}\"\n"
            ),
        )?;
        Ok(Coordinator {
            dir,
            ip: ip.clone(),
            port,
            metrics_port,
            dashboard_port,
            fingerprint: self.fingerprint.clone(),
            proc: None,
            store_env: self.store_env.clone(),
            peers: Vec::new(),
            _temp: Some(temp),
        })
    }

    /// Sets the database `serve` uses (`PITCREW_PG_URL`), e.g. through a proxy the test cuts.
    pub fn set_store_url(&mut self, url: &str) {
        self.store_env.retain(|(k, _)| k != "PITCREW_PG_URL");
        self.store_env.push(("PITCREW_PG_URL".into(), url.into()));
    }

    /// The database URL `serve` is given.
    pub fn store_url(&self) -> Option<String> {
        self.store_env
            .iter()
            .find(|(k, _)| k == "PITCREW_PG_URL")
            .map(|(_, v)| v.clone())
    }

    /// Whether this coordinator leads: only the leader serves metrics (standbys answer
    /// nothing but where the leader is).
    pub fn leads(&self) -> bool {
        self.proc.is_some()
            && self
                .metrics_get("/metrics")
                .is_ok_and(|(code, _, _)| code == 200)
    }

    /// Adds a line to coordinator.toml (before `start`), e.g. `host_cert_lifetime = "40s"`.
    pub fn configure(&self, line: &str) {
        let path = self.dir.join("coordinator.toml");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(line);
        text.push('\n');
        std::fs::write(path, text).expect("writing coordinator.toml");
    }

    /// Sets the heartbeat the coordinator asks for and its silence timeout (before `start`),
    /// replacing the harness's quick 1 s / 3 s: a large simulated fleet uses the product's
    /// defaults (5 s / 15 s), as a real one would.
    pub fn set_heartbeat(&self, seconds: u32, timeout_seconds: u32) {
        let path = self.dir.join("coordinator.toml");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| {
                !l.starts_with("heartbeat_seconds") && !l.starts_with("heartbeat_timeout_seconds")
            })
            .map(str::to_owned)
            .collect();
        // First, so that they stay top-level keys whatever tables were configured.
        lines.insert(0, format!("heartbeat_seconds = {seconds}"));
        lines.insert(1, format!("heartbeat_timeout_seconds = {timeout_seconds}"));
        std::fs::write(path, lines.join("\n") + "\n").expect("writing coordinator.toml");
    }

    pub fn address(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    /// `GET path` on the metrics listener: the status code, the head and the body.
    pub fn metrics_get(&self, path: &str) -> anyhow::Result<(u16, String, String)> {
        http_get(&format!("127.0.0.1:{}", self.metrics_port), path)
    }

    /// Starts `serve` and waits until it accepts connections.
    ///
    /// `PITCREW_COORDINATOR_WRAPPER` runs it under a profiler, e.g.
    /// `PITCREW_COORDINATOR_WRAPPER="heaptrack -o /tmp/coord" target/release/pitcrew-bench fleet
    /// --agents 3000`: the words of the variable (split on whitespace, no quoting) come before
    /// the coordinator's command line. Signals and the figures read from the process go to the
    /// coordinator itself, so the wrapper sees it exit and writes its report.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let wrapper = std::env::var("PITCREW_COORDINATOR_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(bin("pitcrew-coordinator"));
                command
            }
            None => Command::new(bin("pitcrew-coordinator")),
        };
        command
            .args(["serve", "--data-dir"])
            .arg(&self.dir)
            .envs(self.store_env.iter().map(|(k, v)| (k, v)))
            .env("PITCREW_LOG", "info");
        let mut proc = Proc::spawn(command, self.dir.join("coordinator.log"))?;
        let (ip, port) = (self.ip.clone(), self.port);
        wait_for("the coordinator to listen", || {
            std::net::TcpStream::connect((ip.as_str(), port)).ok()
        });
        if !wrapper.trim().is_empty() {
            let wrapper_pid = proc.pid().context("the wrapper exited at once")?;
            // A wrapper that runs the program in its own process (valgrind) has no such child.
            proc.wrapped =
                Some(descendant_named(wrapper_pid, "pitcrew-coordinator").unwrap_or(wrapper_pid));
        }
        self.proc = Some(proc);
        Ok(())
    }

    pub fn stop(&mut self) -> Option<i32> {
        self.proc.take().and_then(|mut p| p.terminate())
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the running coordinator.
    pub fn signal(&self, signal: &str) {
        if let Some(p) = &self.proc {
            p.send(signal);
        }
    }

    /// Whether the coordinator process has exited by itself (its exit code, if any).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.proc.as_mut()?.exited()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("coordinator.log")).unwrap_or_default()
    }

    pub fn operator_env(&self) -> Vec<(String, String)> {
        let addresses: Vec<String> = std::iter::once(self.address())
            .chain(self.peers.iter().cloned())
            .collect();
        vec![
            ("PITCREW_COORDINATOR".into(), addresses.join(",")),
            (
                "PITCREW_CA".into(),
                self.dir.join("ca.crt").display().to_string(),
            ),
            (
                "PITCREW_CERT".into(),
                self.dir.join("operator/admin.crt").display().to_string(),
            ),
            (
                "PITCREW_KEY".into(),
                self.dir.join("operator/admin.key").display().to_string(),
            ),
        ]
    }

    /// Runs `pitcrew ARGS` as the admin operator.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("pitcrew"))
            .args(args)
            .envs(self.operator_env())
            .output()
            .expect("running pitcrew")
    }

    /// Runs `pitcrew ARGS -o json`, requiring success, and parses the output.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "pitcrew {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pitcrew {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// A join token for `role` with labels.
    pub fn token(&self, role: &str, labels: &[(&str, &str)], uses: u32) -> String {
        let mut args = vec![
            "token".to_owned(),
            "create".into(),
            "--role".into(),
            role.into(),
            "--uses".into(),
            uses.to_string(),
        ];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli_json(&args)["token"]
            .as_str()
            .expect("token in output")
            .to_owned()
    }

    /// `pitcrew hosts -o json` as a list.
    pub fn hosts(&self) -> Vec<Value> {
        self.cli_json(&["hosts"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The host with this id, if listed.
    pub fn host(&self, host_id: &str) -> Option<Value> {
        self.hosts().into_iter().find(|h| h["host_id"] == host_id)
    }
}

/// The first process below `ancestor` (children first) whose command name is `name` (as the
/// kernel keeps it: at most 15 bytes).
fn descendant_named(ancestor: u32, name: &str) -> Option<u32> {
    let short = &name.as_bytes()[..name.len().min(15)];
    // (pid, parent pid, command name) of every process; the name is between the parentheses of
    // /proc/PID/stat, and may itself hold spaces or parentheses.
    let processes: Vec<(u32, u32, Vec<u8>)> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
            let open = stat.iter().position(|b| *b == b'(')?;
            let close = stat.iter().rposition(|b| *b == b')')?;
            let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
            let parent = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, parent, stat[open + 1..close].to_vec()))
        })
        .collect();
    let mut level = vec![ancestor];
    while !level.is_empty() {
        let children: Vec<&(u32, u32, Vec<u8>)> = processes
            .iter()
            .filter(|(_, parent, _)| level.contains(parent))
            .collect();
        if let Some((pid, _, _)) = children.iter().find(|(_, _, comm)| comm == short) {
            return Some(*pid);
        }
        level = children.iter().map(|(pid, _, _)| *pid).collect();
    }
    None
}

/// Makes `coordinators` (sharing one PostgreSQL store) one fleet: each advertises its own
/// address (`PITCREW_ADVERTISE`) and knows the others', which its CLI is given too.
pub fn share_leadership(coordinators: &mut [Coordinator]) {
    let addresses: Vec<String> = coordinators.iter().map(Coordinator::address).collect();
    for c in coordinators.iter_mut() {
        let own = c.address();
        c.store_env.retain(|(k, _)| k != "PITCREW_ADVERTISE");
        c.store_env.push(("PITCREW_ADVERTISE".into(), own.clone()));
        c.peers = addresses.iter().filter(|a| **a != own).cloned().collect();
    }
}

/// One agent process with its own state dir and machine id.
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub machine_id: String,
    pub config: PathBuf,
    pub proc: Option<Proc>,
    _temp: tempfile::TempDir,
}

impl Agent {
    /// Prepares an agent for `coordinator` with a token and extra config (e.g. a `[policy]`).
    pub fn new(
        coordinator: &Coordinator,
        name: &str,
        token: &str,
        extra_toml: &str,
    ) -> anyhow::Result<Agent> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let machine_id = new_machine_id();
        std::fs::write(dir.join("machine-id"), format!("{machine_id}\n"))?;
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "coordinators = [\"{}\"]\nca_fingerprint = \"sha256:{}\"\njoin_token = \"{token}\"\nstate_dir = \"{}\"\nheartbeat_seconds = 1\n[host]\nhostname = \"{name}\"\nmachine_id_file = \"{}\"\nunit_dir = \"{}\"\n{extra_toml}\n",
                coordinator.address(),
                coordinator.fingerprint,
                dir.join("state").display(),
                dir.join("machine-id").display(),
                dir.join("units").display(),
            ),
        )?;
        Ok(Agent {
            name: name.into(),
            dir,
            machine_id,
            config,
            proc: None,
            _temp: temp,
        })
    }

    /// Points the agent at several coordinators (before `start`): it connects to them in turn
    /// and follows a standby to the leader.
    pub fn set_coordinators(&self, addresses: &[String]) {
        let text = std::fs::read_to_string(&self.config).expect("reading agent.toml");
        let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("coordinators = ") {
                    format!("coordinators = [{}]", list.join(", "))
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(&self.config, text.join("\n") + "\n").expect("writing agent.toml");
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(bin("pitcrew-agent"));
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("PITCREW_LOG", "info");
        self.proc = Some(Proc::spawn(command, self.dir.join("agent.log"))?);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
}

/// Waits until the coordinator lists `host_id` as connected with facts; returns the host.
pub fn wait_connected(coordinator: &Coordinator, host_id: &str) -> Value {
    wait_for(&format!("host {host_id} to connect"), || {
        coordinator.host(host_id).filter(|h| {
            h["connected"] == true
                && h["facts"]["boot_id"]
                    .as_str()
                    .is_some_and(|b| !b.is_empty())
        })
    })
}

/// A running coordinator and agents, one per `(name, role)`, each enrolled with its own token
/// carrying labels `name=<name>` and `cluster=c1` (plus `leader=true` for a name ending in
/// `-leader`), all with the same extra config (e.g. a policy). Waits until all are connected.
pub fn start_fleet(hosts: &[(&str, &str)], extra_toml: &str) -> (Coordinator, Vec<Agent>) {
    let coordinator = Coordinator::init().expect("coordinator init");
    start_fleet_with(coordinator, hosts, extra_toml)
}

/// [`start_fleet`] with a coordinator made by the caller (e.g. [`Coordinator::init_postgres`]).
pub fn start_fleet_with(
    mut coordinator: Coordinator,
    hosts: &[(&str, &str)],
    extra_toml: &str,
) -> (Coordinator, Vec<Agent>) {
    coordinator.start().expect("coordinator start");
    let mut agents = Vec::new();
    for (name, role) in hosts {
        let mut labels = vec![("name", *name), ("cluster", "c1")];
        if name.ends_with("-leader") {
            labels.push(("leader", "true"));
        }
        let token = coordinator.token(role, &labels, 1);
        let mut agent = Agent::new(&coordinator, name, &token, extra_toml).expect("agent");
        agent.start().expect("agent start");
        agents.push(agent);
    }
    for agent in &agents {
        wait_connected(&coordinator, &agent.machine_id);
    }
    (coordinator, agents)
}
