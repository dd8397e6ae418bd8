//! The host's self-reported facts: identity, OS, hardware, boot id, reboot-required, the
//! `/dev/shm` stack and the local policy. Collected from sysinfo and /proc; sent at hello and
//! again whenever they change.

use std::path::{Path, PathBuf};

use pitcrew_proto::v1;
use sysinfo::{Disks, System};

use crate::config::AgentConfig;
use crate::mounts;

/// Where Debian-family packages record that a reboot is needed (`/run` is where it lives now;
/// `/var/run` is a symlink to it on every current system).
pub const DEBIAN_REBOOT_REQUIRED: &str = "/run/reboot-required";

/// Reads the host id from a machine-id file (32 hex digits, as systemd writes it).
pub fn read_machine_id(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the machine id from {}: {e}", path.display()))?;
    let id = text.trim().to_owned();
    pitcrew_proto::identity::validate_host_id(&id)
        .map_err(|e| format!("the machine id in {} is not usable: {e}", path.display()))?;
    Ok(id)
}

/// Reads the kernel's boot id: it changes on every boot, which is how a reboot is proven.
pub fn read_boot_id(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Whether the host says it needs a reboot: Debian's flag file, or on RPM systems
/// `needs-restarting -r` (exit 1 means a reboot is required).
pub fn reboot_required(package_manager: &str) -> bool {
    if Path::new(DEBIAN_REBOOT_REQUIRED).exists() || Path::new("/var/run/reboot-required").exists()
    {
        return true;
    }
    if package_manager == "dnf"
        && let Ok(status) = std::process::Command::new("needs-restarting")
            .arg("-r")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    {
        return status.code() == Some(1);
    }
    false
}

/// The package manager this host uses: apt on Debian/Ubuntu, dnf on RPM distributions.
pub fn package_manager() -> String {
    let candidates = [("apt-get", "apt"), ("dnf", "dnf"), ("yum", "dnf")];
    for (binary, name) in candidates {
        for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
            if PathBuf::from(dir).join(binary).exists() {
                return name.to_owned();
            }
        }
    }
    String::new()
}

/// Whether a systemd manager is running on this host (the same check `sd_booted()` makes).
pub fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Collects the facts of this host. Never fails: a fact that cannot be read is left empty.
pub fn collect(
    config: &AgentConfig,
    host_id: &str,
    role: &str,
    labels: &std::collections::HashMap<String, String>,
) -> v1::Facts {
    // sysinfo constructors return Result since 0.40: a fact that cannot be read stays empty.
    let memory_bytes = System::new()
        .map(|mut system| {
            system.refresh_memory();
            system.total_memory()
        })
        .unwrap_or(0);
    let disks = Disks::new_with_refreshed_list()
        .map(|d| {
            d.iter()
                .map(|d| v1::Disk {
                    mount_point: d.mount_point().display().to_string(),
                    filesystem: d.file_system().to_string_lossy().into_owned(),
                    total_bytes: d.total_space(),
                    available_bytes: d.available_space(),
                })
                .collect()
        })
        .unwrap_or_default();
    let package_manager = package_manager();
    v1::Facts {
        host_id: host_id.to_owned(),
        hostname: config.host.hostname(),
        role: role.to_owned(),
        labels: labels.clone(),
        os_name: System::name().unwrap_or_default(),
        os_version: System::os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        cpus: u32::try_from(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
        .unwrap_or(u32::MAX),
        memory_bytes,
        disks,
        uptime_seconds: System::uptime().unwrap_or(0),
        boot_id: read_boot_id(&config.host.boot_id_file),
        reboot_required: reboot_required(&package_manager),
        shm_tmpfs_mounts: mounts::count_shm_tmpfs().unwrap_or(0),
        agent_version: pitcrew_proto::VERSION.to_owned(),
        package_manager,
        systemd: systemd_booted(),
        policy: Some(config.policy.to_proto()),
        held_units: crate::holds::Holds::of(config).list(),
        // Counted in the background (see `updates`); the session adds the latest count.
        pending_updates: None,
    }
}

/// The facts that change on their own, compared to decide whether to send an update (uptime and
/// free disk space move constantly and are not worth a message each).
pub fn significant(facts: &v1::Facts) -> v1::Facts {
    let mut copy = facts.clone();
    copy.uptime_seconds = 0;
    for disk in &mut copy.disks {
        disk.available_bytes = 0;
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_is_read_trimmed_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            read_machine_id(&good).unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "../../etc\n").unwrap();
        assert!(read_machine_id(&bad).unwrap_err().contains("not usable"));
        assert!(
            read_machine_id(&dir.path().join("missing"))
                .unwrap_err()
                .contains("cannot read")
        );
    }

    #[test]
    fn facts_of_this_machine_are_filled_in() {
        let config = AgentConfig::for_tests(Path::new("/nonexistent"));
        let facts = collect(&config, "h1", "worker", &Default::default());
        assert_eq!(facts.host_id, "h1");
        assert!(facts.cpus >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(!facts.kernel.is_empty());
        assert_eq!(
            facts.boot_id,
            read_boot_id(Path::new("/proc/sys/kernel/random/boot_id"))
        );
        assert!(!facts.boot_id.is_empty());
    }

    #[test]
    fn uptime_alone_is_not_a_significant_change() {
        let config = AgentConfig::for_tests(Path::new("/nonexistent"));
        let a = collect(&config, "h1", "worker", &Default::default());
        let mut b = a.clone();
        b.uptime_seconds += 100;
        assert_eq!(significant(&a), significant(&b));
        b.reboot_required = !a.reboot_required;
        assert_ne!(significant(&a), significant(&b));
    }
}
