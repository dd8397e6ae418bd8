//! Lab fleet tests (example for `tests/tests/`): real Debian hosts with systemd in nspawn, agents
//! installed from the built .deb and .rpm, a real coordinator on the machine side (10.231.0.1).
//! Opt-in and root only: `PITCREW_LAB=1`, after `packaging/build-packages.sh`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use pitcrew_tests::lab::{AgentPackage, COORDINATOR_URL, HostSpec, Lab, MACHINE_IP, lab_enabled};

/// Release binaries, as packaged (`$CARGO_TARGET_DIR/release` or `target/release`).
fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("release")
}

/// A coordinator on the machine side of the lab bridge; killed on drop.
struct Coordinator {
    child: Child,
    data: tempfile::TempDir,
    ca_fingerprint_line: String,
}

impl Coordinator {
    fn start() -> Result<Coordinator> {
        let data = tempfile::tempdir()?;
        let bin = release_dir().join("pitcrew-coordinator");
        let init = Command::new(&bin)
            .args(["init", "--data-dir"])
            .arg(data.path())
            .args([
                "--san",
                MACHINE_IP,
                "--san",
                "127.0.0.1",
                "--san",
                "localhost",
            ])
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        ensure!(
            init.status.success(),
            "init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let ca_fingerprint_line = String::from_utf8(init.stdout)?
            .lines()
            .find(|l| l.starts_with("ca_fingerprint"))
            .context("init printed no ca_fingerprint line")?
            .to_owned();
        let child = Command::new(&bin)
            .args(["serve", "--data-dir"])
            .arg(data.path())
            .args(["--listen", &format!("{MACHINE_IP}:7443")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let coordinator = Coordinator {
            child,
            data,
            ca_fingerprint_line,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((MACHINE_IP, 7443)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "coordinator did not listen on {MACHINE_IP}:7443"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(coordinator)
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let dir = self.data.path();
        let out = Command::new(release_dir().join("pitcrew"))
            .env("PITCREW_COORDINATOR", COORDINATOR_URL)
            .env("PITCREW_CA", dir.join("ca.crt"))
            .env("PITCREW_CERT", dir.join("operator/admin.crt"))
            .env("PITCREW_KEY", dir.join("operator/admin.key"))
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "pitcrew {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// An agent drop-in joining this coordinator with a fresh one-use token for `role`.
    fn dropin(&self, role: &str, policy: &str) -> Result<String> {
        let token: serde_json::Value = serde_json::from_str(&self.cli(&[
            "token", "create", "--role", role, "--uses", "1", "--ttl", "1h", "-o", "json",
        ])?)?;
        let token = token["token"].as_str().context("no token in the answer")?;
        Ok(format!(
            "coordinators = [\"{COORDINATOR_URL}\"]\n{}\njoin_token = \"{token}\"\n{policy}",
            self.ca_fingerprint_line
        ))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn lab_hosts_boot_reboot_and_stack_shm() -> Result<()> {
    if !lab_enabled() {
        return Ok(());
    }
    let lab = Lab::builder()
        .host(HostSpec::new("a1").shm_extra(3))
        .host(HostSpec::new("a2"))
        .up()?;
    assert_eq!(lab.ip("a1")?, "10.231.0.11");
    assert_eq!(
        lab.sh("a1", "grep -c ' /dev/shm ' /proc/self/mountinfo")?
            .trim(),
        "4"
    );
    assert_eq!(
        lab.sh("a2", "grep -c ' /dev/shm ' /proc/self/mountinfo")?
            .trim(),
        "1"
    );
    let before = lab.boot_id("a1")?;
    let _ = lab.exec("a1", &["systemctl", "reboot"])?; // may report a reset connection
    lab.wait_running("a1", Some(&before))?;
    assert_ne!(lab.boot_id("a1")?, before);
    assert_eq!(lab.reboot_count("a1")?, 1);
    assert_eq!(lab.unit_state("a1", "dcos-mesos-slave.service")?, "active");
    Ok(())
}

#[test]
fn agents_from_deb_and_rpm_enroll_and_connect() -> Result<()> {
    if !lab_enabled() {
        return Ok(());
    }
    let lab = Lab::builder()
        .host(HostSpec::new("w1").agent(AgentPackage::Deb))
        .host(HostSpec::new("m1").agent(AgentPackage::Rpm))
        .up()?;
    let coordinator = Coordinator::start()?;
    let policy = "[policy]\nunits = [\"dcos-mesos-slave.service\"]\nallow_reboot = true\n";
    lab.install_agent("w1", &coordinator.dropin("worker", policy)?)?;
    lab.install_agent("m1", &coordinator.dropin("manager", policy)?)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts: serde_json::Value =
            serde_json::from_str(&coordinator.cli(&["hosts", "-o", "json"])?)?;
        let connected = hosts
            .as_array()
            .map(|a| a.iter().filter(|h| h["connected"] == true).count())
            .unwrap_or(0);
        if connected == 2 {
            break;
        }
        ensure!(Instant::now() < deadline, "agents did not connect: {hosts}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lab.unit_state("w1", "pitcrew-agent.service")?, "active");
    assert_eq!(lab.unit_state("m1", "pitcrew-agent.service")?, "active");
    Ok(())
}
