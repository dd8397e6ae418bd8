//! The lab fleet from Rust: real Debian hosts with systemd as PID 1, each in systemd-nspawn with
//! its own overlay root, network namespace (10.231.0.0/24, the machine at 10.231.0.1) and cgroup.
//!
//! This is a thin wrapper over `tests/lab/lab.sh`, which does the work and prints progress; read
//! its header and `tests/lab/README.md` for what a host contains (the Mesos, swarm and health
//! stand-ins, `/dev/shm` stacking, the local apt repository with lab-kernel 1.0 → 1.1).
//!
//! Lab tests need root and are opt-in: they run only when `PITCREW_LAB=1` ([`lab_enabled`]).
//!
//! ```no_run
//! use pitcrew_tests::lab::{AgentPackage, HostSpec, Lab};
//! # fn main() -> anyhow::Result<()> {
//! if !pitcrew_tests::lab::lab_enabled() { return Ok(()); }
//! let lab = Lab::builder()
//!     .host(HostSpec::new("w1").agent(AgentPackage::Deb).shm_extra(2))
//!     .host(HostSpec::new("m1").agent(AgentPackage::Rpm))
//!     .up()?;
//! // ... start a coordinator listening on 10.231.0.1:7443, create join tokens, then:
//! lab.install_agent("w1", "coordinators = [\"https://10.231.0.1:7443\"]\n")?;
//! let before = lab.boot_id("w1")?;
//! # Ok(()) }
//! ```
//!
//! Architecture invariant: one lab at a time per machine. A process-wide lock serialises `Lab`
//! values, and dropping a `Lab` tears everything down (set `PITCREW_LAB_KEEP=1` to keep it for
//! debugging; `tests/lab/lab.sh down` removes it later).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The machine's address on the lab bridge: where a coordinator for the lab listens.
pub const MACHINE_IP: &str = "10.231.0.1";
/// The coordinator address lab agents use when a test serves one on the machine side.
pub const COORDINATOR_URL: &str = "https://10.231.0.1:7443";
/// Where [`Lab::install_agent`] writes the agent's drop-in inside a host.
pub const AGENT_DROPIN: &str = "/etc/pitcrew/agent.d/50-lab.toml";

/// Serialises labs inside one test binary (there is one bridge and one address range).
static LAB_LOCK: Mutex<()> = Mutex::new(());

/// True when lab tests should run (`PITCREW_LAB=1`).
pub fn lab_enabled() -> bool {
    std::env::var("PITCREW_LAB").is_ok_and(|v| v == "1")
}

/// How the pitcrew agent gets onto a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentPackage {
    /// No agent (a plain host).
    None,
    /// `pitcrew-agent_*.deb`, installed with `dpkg -i`.
    Deb,
    /// `pitcrew-agent-*.rpm`, installed with `rpm -U --nodeps` (rpm on a Debian userland).
    Rpm,
}

/// One lab host to bring up. Roles and labels are the coordinator's business (join tokens).
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// Host name: also its hostname, netns (`pclab-NAME`) and cgroup name. `[a-z][a-z0-9-]*`.
    pub name: String,
    /// Which agent package [`Lab::install_agent`] installs.
    pub agent: AgentPackage,
    /// Extra tmpfs mounts stacked on `/dev/shm` at every boot (the UCP duplicate mount problem).
    pub shm_extra: u32,
}

impl HostSpec {
    pub fn new(name: &str) -> HostSpec {
        HostSpec {
            name: name.to_owned(),
            agent: AgentPackage::None,
            shm_extra: 0,
        }
    }
    pub fn agent(mut self, package: AgentPackage) -> HostSpec {
        self.agent = package;
        self
    }
    pub fn shm_extra(mut self, n: u32) -> HostSpec {
        self.shm_extra = n;
        self
    }
}

/// Builder of a [`Lab`].
#[derive(Debug)]
pub struct LabBuilder {
    hosts: Vec<HostSpec>,
    packages_dir: Option<PathBuf>,
    exec_timeout: Duration,
}

impl LabBuilder {
    /// Add a host; hosts get 10.231.0.11, .12, ... in this order.
    pub fn host(mut self, spec: HostSpec) -> LabBuilder {
        self.hosts.push(spec);
        self
    }
    /// Add plain hosts (no agent, no extra shm mounts).
    pub fn hosts(mut self, names: &[&str]) -> LabBuilder {
        self.hosts.extend(names.iter().map(|n| HostSpec::new(n)));
        self
    }
    /// Where the built packages are (default: `$CARGO_TARGET_DIR/packages` or `target/packages`,
    /// as written by `packaging/build-packages.sh`).
    pub fn packages_dir(mut self, dir: impl Into<PathBuf>) -> LabBuilder {
        self.packages_dir = Some(dir.into());
        self
    }
    /// Upper bound for one [`Lab::exec`] (default 120 s).
    pub fn exec_timeout(mut self, timeout: Duration) -> LabBuilder {
        self.exec_timeout = timeout;
        self
    }

    /// Build the base if needed, then create, boot and wait for every host (`lab.sh up`).
    /// A stale lab left by an earlier crashed run is torn down first.
    pub fn up(self) -> Result<Lab> {
        if self.hosts.is_empty() {
            bail!("a lab needs at least one host");
        }
        let guard = LAB_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let lab = Lab {
            script: lab_script(),
            packages_dir: self.packages_dir.unwrap_or_else(default_packages_dir),
            hosts: self.hosts,
            exec_timeout: self.exec_timeout,
            torn_down: false,
            _guard: guard,
        };
        if lab.has_stale_hosts()? {
            eprintln!("lab: tearing down a lab left by an earlier run");
            lab.run_script(&["down"])?;
        }
        let mut args: Vec<String> = vec!["up".into()];
        for host in &lab.hosts {
            if host.shm_extra > 0 {
                args.push("--shm-extra".into());
                args.push(format!("{}={}", host.name, host.shm_extra));
            }
        }
        args.extend(lab.hosts.iter().map(|h| h.name.clone()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // On failure lab.sh tears down by itself; Drop runs `down` again, which is harmless.
        lab.run_script(&args).context("bringing the lab up")?;
        Ok(lab)
    }
}

/// A running lab fleet. Dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    script: PathBuf,
    packages_dir: PathBuf,
    hosts: Vec<HostSpec>,
    exec_timeout: Duration,
    torn_down: bool,
    _guard: MutexGuard<'static, ()>,
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder {
            hosts: Vec::new(),
            packages_dir: None,
            exec_timeout: Duration::from_secs(120),
        }
    }

    pub fn hosts(&self) -> &[HostSpec] {
        &self.hosts
    }

    fn spec(&self, host: &str) -> Result<&HostSpec> {
        self.hosts
            .iter()
            .find(|h| h.name == host)
            .with_context(|| format!("no lab host named {host}"))
    }

    /// Run `argv` inside `host` (as root, in all its namespaces). A non-zero exit is not an error
    /// here: look at `Output::status`. Commands entered this way keep the machine's capabilities;
    /// test privileged agent behaviour through the agent service itself.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Result<Output> {
        self.spec(host)?;
        if argv.is_empty() {
            bail!("exec on {host}: empty argv");
        }
        let mut cmd = Command::new("timeout");
        cmd.arg("--kill-after=5")
            .arg(format!("{}", self.exec_timeout.as_secs().max(1)))
            .arg(&self.script)
            .args(["exec", host, "--"])
            .args(argv)
            .stdin(Stdio::null());
        let output = cmd
            .output()
            .with_context(|| format!("running {argv:?} on {host}"))?;
        if output.status.code() == Some(124) {
            bail!("{argv:?} on {host} timed out after {:?}", self.exec_timeout);
        }
        Ok(output)
    }

    /// Run `argv` inside `host`; fail unless it exits 0. Returns its stdout.
    pub fn check(&self, host: &str, argv: &[&str]) -> Result<String> {
        let output = self.exec(host, argv)?;
        if !output.status.success() {
            bail!(
                "{argv:?} on {host} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Run a bash script inside `host`; fail unless it exits 0. Returns its stdout.
    pub fn sh(&self, host: &str, script: &str) -> Result<String> {
        self.check(host, &["bash", "-c", script])
    }

    /// The host's current boot id (a new one after every reboot).
    pub fn boot_id(&self, host: &str) -> Result<String> {
        Ok(self
            .check(host, &["cat", "/proc/sys/kernel/random/boot_id"])?
            .trim()
            .to_owned())
    }

    /// How many times the host rebooted (nspawn exits with 133) since it was brought up.
    pub fn reboot_count(&self, host: &str) -> Result<u32> {
        self.spec(host)?;
        let out = self.run_script_output(&["reboot-count", host])?;
        out.trim()
            .parse()
            .with_context(|| format!("reboot-count of {host}: {out:?}"))
    }

    /// The host's address (10.231.0.N).
    pub fn ip(&self, host: &str) -> Result<String> {
        self.spec(host)?;
        Ok(self.run_script_output(&["ip", host])?.trim().to_owned())
    }

    /// Reboot from inside (`systemctl reboot`) and wait for a new boot id and `running`.
    pub fn reboot(&self, host: &str) -> Result<()> {
        self.spec(host)?;
        self.run_script(&["reboot", host])
    }

    /// Wait until systemd in `host` is `running` (or `degraded`); with `old_boot_id`, first
    /// until the boot id differs from it (the host came back from a reboot).
    pub fn wait_running(&self, host: &str, old_boot_id: Option<&str>) -> Result<()> {
        self.spec(host)?;
        let mut args = vec!["wait", host];
        if let Some(old) = old_boot_id {
            args.push(old);
        }
        self.run_script(&args)
    }

    /// Copy a machine file into the host's root (through its overlay, so not into /tmp or /run,
    /// which are mounts inside the host).
    pub fn copy_in(&self, host: &str, src: &Path, dst: &str) -> Result<()> {
        self.spec(host)?;
        let src = src
            .to_str()
            .with_context(|| format!("non-UTF-8 path {}", src.display()))?;
        self.run_script(&["copy", host, src, dst])
    }

    /// Write `contents` to `dst` inside the host, mode 0644 (same rules as [`Lab::copy_in`]).
    pub fn write_file(&self, host: &str, dst: &str, contents: &str) -> Result<()> {
        self.write_file_mode(host, dst, contents, "0644")
    }

    /// Write `contents` to `dst` inside the host with `mode` (octal, e.g. "0600"), owned by root.
    pub fn write_file_mode(&self, host: &str, dst: &str, contents: &str, mode: &str) -> Result<()> {
        let tmp = tempfile::NamedTempFile::new().context("creating a temporary file")?;
        fs::write(tmp.path(), contents).context("writing a temporary file")?;
        self.copy_in(host, tmp.path(), dst)?;
        self.check(host, &["chmod", mode, dst])?;
        Ok(())
    }

    /// The agent package file for `package` in the packages dir.
    pub fn agent_package_path(&self, package: AgentPackage) -> Result<PathBuf> {
        let (prefix, suffix) = match package {
            AgentPackage::Deb => ("pitcrew-agent_", ".deb"),
            AgentPackage::Rpm => ("pitcrew-agent-", ".rpm"),
            AgentPackage::None => bail!("no agent package requested"),
        };
        self.package_path(prefix, suffix)
    }

    /// The newest built package named `<prefix>*<suffix>` in the packages dir, e.g.
    /// `("pitcrew-cli_", ".deb")` or `("pitcrew-coordinator-", ".rpm")`.
    pub fn package_path(&self, prefix: &str, suffix: &str) -> Result<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(&self.packages_dir)
            .with_context(|| {
                format!(
                    "reading {} (run packaging/build-packages.sh first)",
                    self.packages_dir.display()
                )
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
            })
            .collect();
        // Newest first, in case several versions were built.
        found.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
        found.pop().with_context(|| {
            format!(
                "no {prefix}*{suffix} in {} (run packaging/build-packages.sh)",
                self.packages_dir.display()
            )
        })
    }

    /// Write `dropin` (agent TOML: coordinators, ca_fingerprint, join_token, [policy] ...) to
    /// [`AGENT_DROPIN`] and install the host's agent package; its postinst enables and starts
    /// `pitcrew-agent.service`. Returns the installer's output.
    pub fn install_agent(&self, host: &str, dropin: &str) -> Result<String> {
        let package = self.spec(host)?.agent;
        let path = self.agent_package_path(package)?;
        // The drop-in holds the join token: root only.
        self.write_file_mode(host, AGENT_DROPIN, dropin, "0600")?;
        let path = path.to_str().context("non-UTF-8 package path")?;
        self.run_script_output(&["install", host, path])
    }

    /// `systemctl is-active UNIT` inside the host ("active", "failed", "activating", ...).
    pub fn unit_state(&self, host: &str, unit: &str) -> Result<String> {
        let out = self.exec(host, &["systemctl", "is-active", unit])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Tear the lab down now (also done on drop). Safe to call twice.
    pub fn down(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        self.run_script(&["down"])
    }

    fn has_stale_hosts(&self) -> Result<bool> {
        Ok(!self.run_script_output(&["status"])?.trim().is_empty())
    }

    /// Run lab.sh with its progress going to this process's stderr.
    fn run_script(&self, args: &[&str]) -> Result<()> {
        let status = Command::new(&self.script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .with_context(|| format!("running {} {args:?}", self.script.display()))?;
        if !status.success() {
            bail!("lab.sh {} failed ({status})", args.join(" "));
        }
        Ok(())
    }

    /// Run lab.sh and return its stdout (its progress still goes to stderr).
    fn run_script_output(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(&self.script)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {} {args:?}", self.script.display()))?;
        if !output.status.success() {
            bail!(
                "lab.sh {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var("PITCREW_LAB_KEEP").is_ok_and(|v| v == "1") {
            eprintln!(
                "lab: PITCREW_LAB_KEEP=1: leaving the lab up (tests/lab/lab.sh down removes it)"
            );
            return;
        }
        if let Err(error) = self.down() {
            eprintln!("lab: teardown failed: {error:#}; run tests/lab/lab.sh down");
        }
    }
}

fn workspace_root() -> PathBuf {
    // This crate lives in <workspace>/tests.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/lab.sh")
}

/// Where `packaging/build-packages.sh` writes the packages: `$CARGO_TARGET_DIR/packages`, or
/// `target/packages`.
pub fn default_packages_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("packages")
}
