//! `reboot`: reboot or power off the host through systemd-logind, after the journal holds the
//! intent and the boot id (the executor wrote both before this runs).
//!
//! The action never reports in the boot where it ran: the agent goes down with the host. On
//! the next start, the executor finds the journaled reboot in flight and compares boot ids: a
//! new one is SUCCEEDED, the same one INTERRUPTED. A disconnect from logind while it answers is
//! not a failure (the shutdown closing the bus looks exactly like that; LAB.md trap 7).
//!
//! Without logind, one more path exists for tests of this very code: when the agent is the
//! init of a nested PID namespace, `reboot(2)` ends that namespace only (its parent sees the
//! init killed by SIGHUP) and cannot touch the machine. That path is guarded twice, see
//! [`nested_namespace_init`].

use std::path::Path;

use nix::sys::reboot::{RebootMode, reboot};
use nix::unistd::getpid;
use pitcrew_proto::v1;

use super::{Ctx, Report, Stop};
use crate::facts;
use crate::systemd::{self, Systemd};

/// How the reboot request went.
#[derive(Debug)]
enum Requested {
    /// logind accepted it (or the bus dropped as the host went down).
    Accepted,
    /// logind is not there; the reason.
    NoLogind(String),
    /// logind answered no (not allowed, inhibited...).
    Refused(String),
}

async fn ask_logind(bus: Option<&str>, poweroff: bool) -> Requested {
    let systemd = match Systemd::connect(bus).await {
        Ok(s) => s,
        Err(e) => return Requested::NoLogind(e.to_string()),
    };
    match systemd.logind_reboot(poweroff).await {
        Ok(()) => Requested::Accepted,
        Err(e) if systemd::logind_absent(&e) => Requested::NoLogind(systemd::describe(&e)),
        // "Connection reset by peer" and friends: the host is going down under us.
        Err(e) if systemd::is_disconnect(&e) => Requested::Accepted,
        Err(e) => Requested::Refused(systemd::describe(&e)),
    }
}

/// Whether this process is the init (PID 1) of a PID namespace nested below the machine's,
/// where `reboot(2)` only ends the namespace. Two independent conditions must hold:
///
/// 1. `getpid() == 1`;
/// 2. proof that the namespace is not the machine's: either `/proc/self/status` lists more
///    than one pid in `NSpid` (the procfs belongs to an outer namespace), or pid 2 is not the
///    kernel's `kthreadd` (in the machine's namespace pid 2 is always kthreadd, a process of
///    its own with parent 0; a nested namespace has no kernel threads). When pid 2 looks like
///    kthreadd, the answer is no.
///
/// `/proc/self/ns/pid` cannot be compared with the parent's from inside (the parent is outside
/// the namespace and invisible), hence these proofs.
pub fn nested_namespace_init() -> Result<(), String> {
    if getpid().as_raw() != 1 {
        return Err("this process is not PID 1 of a PID namespace".into());
    }
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let nspids = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| v.split_whitespace().count())
        .unwrap_or(0);
    if nspids > 1 {
        return Ok(());
    }
    match std::fs::read_to_string("/proc/2/status") {
        Ok(two) => {
            let name = two
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .map(str::trim);
            let ppid = two
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .map(str::trim);
            if name == Some("kthreadd") && ppid == Some("0") {
                Err("this is PID 1 of the machine itself (kernel threads are visible)".into())
            } else {
                Ok(())
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if Path::new("/proc/self").exists() {
                Ok(())
            } else {
                Err("/proc is not mounted; cannot prove a nested PID namespace".into())
            }
        }
        Err(e) => Err(format!("cannot read /proc/2/status: {e}")),
    }
}

/// The action.
pub async fn run(ctx: &Ctx, bus: Option<&str>, request: &v1::Reboot, boot_id: &str) -> Report {
    let verb = if request.poweroff {
        "power off"
    } else {
        "reboot"
    };
    if request.only_if_required {
        let manager = facts::package_manager();
        let required = tokio::task::spawn_blocking(move || facts::reboot_required(&manager))
            .await
            .unwrap_or(false);
        if !required {
            return Report::succeeded(format!(
                "no reboot is required on this host; did not {verb}"
            ))
            .with_detail("rebooted", "false")
            .with_detail("boot_id_before", boot_id);
        }
    }
    if let Some(stop) = ctx.stop_flag().check() {
        return Report::stopped(stop, ctx.timeout, "nothing was asked of logind");
    }
    ctx.log(format!(
        "asking systemd-logind to {verb} (boot id {boot_id})"
    ));
    ctx.progress(50, &format!("{verb} requested"));
    let asked = tokio::select! {
        asked = ask_logind(bus, request.poweroff) => asked,
        () = ctx.until_deadline() => {
            return Report::stopped(
                Stop::TimedOut,
                ctx.timeout,
                "systemd-logind did not answer; the host may still go down",
            )
            .with_detail("boot_id_before", boot_id);
        }
    };
    match asked {
        Requested::Accepted => {}
        Requested::Refused(message) => {
            return Report::failed(format!("systemd-logind refused to {verb}: {message}"));
        }
        Requested::NoLogind(reason) => match nested_namespace_init() {
            Ok(()) => {
                ctx.log(format!(
                    "no systemd-logind ({reason}); this is the init of a nested PID namespace: ending it with reboot(2)"
                ));
                let how = if request.poweroff {
                    RebootMode::RB_POWER_OFF
                } else {
                    RebootMode::RB_AUTOBOOT
                };
                // Returns only on failure: on success this process is gone.
                let Err(errno) = reboot(how);
                return Report::failed(format!("reboot(2) failed: {}", errno.desc()));
            }
            Err(why_not) => {
                return Report::failed(format!(
                    "no systemd-logind reachable on this host ({reason}); not rebooting ({why_not})"
                ));
            }
        },
    }
    // The request cannot be taken back, so a cancel is not honoured from here: only the
    // deadline ends the wait for the host to go down.
    ctx.until_deadline().await;
    Report::stopped(
        Stop::TimedOut,
        ctx.timeout,
        &format!("systemd-logind accepted the {verb} but the host was still up"),
    )
    .with_detail("boot_id_before", boot_id)
}
