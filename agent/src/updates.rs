//! Pending package updates, for the compliance report: counted from the package manager's own
//! metadata — no network, no package lock — and counted again only when that metadata changed
//! (an `apt-get update`, a package installed or removed).
//!
//! * apt: `apt-get -s -o Debug::NoLocking=1 upgrade`, a simulation; each upgrade is one `Inst`
//!   line. Read-only, so it never waits for or blocks a real package run.
//! * dnf: `dnf -C -q check-update`, from the cache only; exit 100 and one line per update.
//!
//! A background task keeps the count and publishes it on a watch channel the session reads
//! when it collects facts, so a slow package manager never holds up the session's loop.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::actions::Ctx;
use crate::actions::command::{self, CommandSpec};
use crate::actions::patch::PatchTools;

/// How often the inputs are looked at for a change.
const CHECK_EVERY: Duration = Duration::from_secs(30);

/// The longest a count may take before it is given up (and tried again at the next change).
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// What to run and which files tell that its answer may have changed.
#[derive(Debug, Clone)]
pub struct UpdatesProbe {
    pub tools: PatchTools,
    /// Files or directories whose modification times change with the package metadata.
    pub inputs: Vec<PathBuf>,
}

impl UpdatesProbe {
    /// This host's package manager and its metadata.
    pub fn host() -> UpdatesProbe {
        let tools = PatchTools::host();
        let inputs = match tools.manager.as_str() {
            "apt" => vec!["/var/lib/dpkg/status".into(), "/var/lib/apt/lists".into()],
            "dnf" => vec!["/var/lib/rpm".into(), "/var/cache/dnf".into()],
            _ => Vec::new(),
        };
        UpdatesProbe { tools, inputs }
    }

    /// Starts the task that keeps the count; the receiver holds `None` until the first count
    /// and whenever it cannot be known (no package manager, the tool failed).
    pub fn spawn(self) -> watch::Receiver<Option<u32>> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let mut last_stamp = None;
            let mut tick = tokio::time::interval(CHECK_EVERY);
            loop {
                tick.tick().await;
                let stamp = self.stamp().await;
                if last_stamp.as_ref() == Some(&stamp) {
                    continue;
                }
                let count = self.count().await;
                last_stamp = Some(stamp);
                if tx.send(count).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// The inputs' modification times, which change when the answer may have.
    async fn stamp(&self) -> Vec<Option<SystemTime>> {
        let mut stamp = Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            let modified = tokio::fs::metadata(input)
                .await
                .and_then(|m| m.modified())
                .ok();
            stamp.push(modified);
        }
        stamp
    }

    /// Counts pending updates now.
    pub async fn count(&self) -> Option<u32> {
        let argv = match self.tools.manager.as_str() {
            "apt" => vec![
                self.tools.apt_get.display().to_string(),
                "-s".into(),
                "-o".into(),
                "Debug::NoLocking=1".into(),
                "upgrade".into(),
            ],
            "dnf" => vec![
                self.tools.dnf.display().to_string(),
                "-C".into(),
                "-q".into(),
                "check-update".into(),
            ],
            _ => return None,
        };
        // Its log lines have no reader: only the captured output matters.
        let (events, _) = mpsc::channel(1);
        let (ctx, _cancel) = Ctx::new("pending-updates", PROBE_TIMEOUT, events);
        let spec = CommandSpec {
            argv,
            ..Default::default()
        };
        let output = match command::run(&ctx, &spec).await {
            Ok(output) => output,
            Err(e) => {
                tracing::warn!("cannot count pending package updates: {e}");
                return None;
            }
        };
        let code = output.status.code();
        let count = match self.tools.manager.as_str() {
            "apt" if code == Some(0) => Some(count_apt(&output.output)),
            "dnf" if code == Some(0) => Some(0),
            "dnf" if code == Some(100) => Some(count_dnf(&output.output)),
            _ => None,
        };
        if count.is_none() {
            tracing::warn!(
                "cannot count pending package updates: {} ended with {}",
                self.tools.manager,
                output.describe_status()
            );
        }
        count
    }
}

/// The upgrades an `apt-get -s upgrade` would install: its `Inst` lines.
pub fn count_apt(output: &str) -> u32 {
    let n = output.lines().filter(|l| l.starts_with("Inst ")).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The updates `dnf check-update` lists: `name.arch version repo` lines, up to the obsoletes
/// section (whose lines name packages already counted).
pub fn count_dnf(output: &str) -> u32 {
    let n = output
        .lines()
        .take_while(|l| !l.starts_with("Obsoleting Packages"))
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() == 3 && fields[0].contains('.') && !l.starts_with(' ')
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_simulations_count_their_inst_lines() {
        let out = "Reading package lists...\nBuilding dependency tree...\nThe following packages will be upgraded:\n  base-files tzdata\n2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\nInst base-files [12.4+deb12u5] (12.4+deb12u6 Debian:12.6/stable [amd64])\nInst tzdata [2024a-0+deb12u1] (2024b-0+deb12u1 Debian:12.6/stable [all])\nConf base-files (12.4+deb12u6 Debian:12.6/stable [amd64])\nConf tzdata (2024b-0+deb12u1 Debian:12.6/stable [all])\n";
        assert_eq!(count_apt(out), 2);
        assert_eq!(count_apt("0 upgraded, 0 newly installed.\n"), 0);
    }

    #[test]
    fn dnf_listings_count_updates_but_not_obsoletes() {
        let out = "\nkernel.x86_64        5.14.0-427.el9     baseos\nopenssl.x86_64   1:3.0.7-27.el9   baseos\nObsoleting Packages\ngrub2-tools.x86_64   1:2.06-80.el9   baseos\n    grub2-tools.x86_64 1:2.06-77.el9 @baseos\n";
        assert_eq!(count_dnf(out), 2);
    }

    #[tokio::test]
    async fn a_host_without_a_package_manager_has_no_count() {
        let mut probe = UpdatesProbe::host();
        probe.tools.manager = String::new();
        assert_eq!(probe.count().await, None);
    }
}
