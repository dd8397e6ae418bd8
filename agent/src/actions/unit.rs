//! `unit`, `signal_unit`, `wait_unit` and `daemon_reload`: systemd driven over D-Bus.
//!
//! Unit names are validated before any bus traffic (the policy check does it, and these
//! functions check again so they are safe to call on their own).

use std::str::FromStr;

use nix::sys::signal::Signal;
use pitcrew_proto::policy::{LocalPolicy, Refusal, signal_name, validate_unit_name};
use pitcrew_proto::v1;

use super::{Ctx, Report};
use crate::holds::Holds;
use crate::systemd::{JobOp, Systemd, SystemdError, UnitSnapshot};

/// Parses "SIGUSR1", "USR1" or "sigusr1" into a signal.
pub fn parse_signal(name: &str) -> Result<Signal, Refusal> {
    to_signal(signal_name(name)?)
}

/// The signal of a canonical name ("SIGUSR1").
fn to_signal(name: &str) -> Result<Signal, Refusal> {
    Signal::from_str(name).map_err(|_| Refusal {
        rule: "signal".into(),
        message: format!("{name} is not a signal this system can send"),
    })
}

fn systemd_failure(error: SystemdError) -> Report {
    match error {
        SystemdError::NoSuchUnit(unit) => Report::failed(format!(
            "unit {unit} is not loaded (unknown or not installed)"
        )),
        other => Report::failed(other.to_string()),
    }
}

/// start/stop/restart/reload (waiting for systemd's job) or enable/disable. A stop with
/// `hold` holds the unit down once it is stopped; a start or restart lifts any hold first.
pub async fn unit(ctx: &Ctx, bus: Option<&str>, holds: &Holds, request: &v1::UnitAction) -> Report {
    if let Err(refusal) = validate_unit_name(&request.unit) {
        return Report::refused(refusal);
    }
    let op =
        v1::UnitOperation::try_from(request.operation).unwrap_or(v1::UnitOperation::Unspecified);
    let job = match op {
        v1::UnitOperation::Start => Some(JobOp::Start),
        v1::UnitOperation::Stop => Some(JobOp::Stop),
        v1::UnitOperation::Restart => Some(JobOp::Restart),
        v1::UnitOperation::Reload => Some(JobOp::Reload),
        v1::UnitOperation::Enable | v1::UnitOperation::Disable => None,
        v1::UnitOperation::Unspecified => {
            return Report::failed(format!(
                "no unit operation given for {} (start, stop, restart, reload, enable or disable)",
                request.unit
            ));
        }
    };
    let systemd = match Systemd::connect(bus).await {
        Ok(s) => s,
        Err(e) => return systemd_failure(e),
    };
    let unit = &request.unit;
    let mut lifted = false;
    if matches!(job, Some(JobOp::Start | JobOp::Restart)) {
        // The run starts the unit again: its hold ends here, and systemd must know before the
        // start job, or the hold's condition would skip it.
        lifted = match holds.lift(unit, None) {
            Ok(lifted) => lifted,
            Err(e) => return Report::failed(e.to_string()),
        };
        if lifted && let Err(e) = systemd.daemon_reload().await {
            return systemd_failure(e);
        }
    }
    match job {
        Some(job) => {
            ctx.progress(-1, &format!("waiting for the {} job of {unit}", job.verb()));
            match systemd.run_job(unit, job).await {
                Ok(result) if result == "done" && job == JobOp::Stop && request.hold => {
                    hold_down(&systemd, holds, unit, &ctx.action_id)
                        .await
                        .with_detail("job_result", result)
                }
                Ok(result) if result == "done" => Report::succeeded(format!(
                    "{} {unit}: job done{}",
                    job.verb(),
                    if lifted {
                        " (its hold lifted first)"
                    } else {
                        ""
                    }
                ))
                .with_detail("job_result", result),
                Ok(result) => Report::failed(format!(
                    "{} {unit}: the systemd job finished with result '{result}'",
                    job.verb()
                ))
                .with_detail("job_result", result),
                Err(e) => systemd_failure(e),
            }
        }
        None => {
            let enable = op == v1::UnitOperation::Enable;
            let verb = if enable { "enable" } else { "disable" };
            match systemd.set_enabled(unit, enable).await {
                Ok(changes) => {
                    for change in &changes {
                        ctx.log(change.clone());
                    }
                    let message = if changes.is_empty() {
                        format!("{verb} {unit}: nothing to change")
                    } else {
                        format!(
                            "{verb} {unit}: {} change(s), daemon reloaded",
                            changes.len()
                        )
                    };
                    Report::succeeded(message).with_detail("changes", changes.join("\n"))
                }
                Err(e) => systemd_failure(e),
            }
        }
    }
}

/// Holds a just-stopped unit down: the drop-in, then a reload so that systemd reads it.
async fn hold_down(systemd: &Systemd, holds: &Holds, unit: &str, hold_id: &str) -> Report {
    if let Err(e) = holds.hold(unit, hold_id) {
        return Report::failed(format!("stop {unit}: job done, but {e}"));
    }
    match systemd.daemon_reload().await {
        Ok(()) => Report::succeeded(format!(
            "stop {unit}: job done; held down until this host's run starts it again or the host leaves maintenance"
        ))
        .with_detail("held", unit),
        // Unread, the hold would not stop a start yet: undo it and say so.
        Err(e) => {
            let _ = holds.lift(unit, Some(hold_id));
            Report::failed(format!(
                "stop {unit}: job done, but it could not be held down: {e}"
            ))
        }
    }
}

/// Lifts the holds named (each only if it is still the hold named), then reloads systemd.
/// The units are not started.
pub async fn release_holds(
    _ctx: &Ctx,
    bus: Option<&str>,
    holds: &Holds,
    request: &v1::ReleaseHolds,
) -> Report {
    let mut lifted = Vec::new();
    let mut kept = Vec::new();
    for hold in &request.holds {
        let only = Some(hold.hold_id.as_str()).filter(|id| !id.is_empty());
        match holds.lift(&hold.unit, only) {
            Ok(true) => lifted.push(hold.unit.clone()),
            Ok(false) => kept.push(hold.unit.clone()),
            Err(e) => return Report::failed(e.to_string()),
        }
    }
    if !lifted.is_empty() {
        let systemd = match Systemd::connect(bus).await {
            Ok(s) => s,
            Err(e) => return systemd_failure(e),
        };
        if let Err(e) = systemd.daemon_reload().await {
            return systemd_failure(e);
        }
    }
    let mut message = if lifted.is_empty() {
        "no hold to lift".to_owned()
    } else {
        format!("lifted the hold of {} (not started)", lifted.join(", "))
    };
    if !kept.is_empty() {
        message.push_str(&format!(
            "; {} no longer held by the hold named",
            kept.join(", ")
        ));
    }
    Report::succeeded(message).with_detail("lifted", lifted.join(" "))
}

/// A held unit that is running anyway (its hold removed by hand, then started), or whose hold
/// was removed outside pitcrew, as a refusal (rule `held-unit`) naming it; `None` when every
/// held unit is down and held (or nothing is held).
pub async fn held_unit_running(holds: &Holds, bus: Option<&str>) -> Option<Report> {
    let held = holds.holds();
    if held.is_empty() {
        return None;
    }
    let systemd = match Systemd::connect(bus).await {
        Ok(s) => s,
        Err(e) => return Some(systemd_failure(e)),
    };
    for hold in held {
        let broken = (!hold.intact).then(|| {
            Report::refused(Refusal {
                rule: "held-unit".into(),
                message: format!(
                    "the hold of {} (made by action {}) was removed outside pitcrew: the unit could start on its own, so the maintenance can no longer be vouched for",
                    hold.unit, hold.hold_id
                ),
            })
            .with_detail("held_unit_broken", hold.unit.clone())
        });
        match systemd.snapshot(&hold.unit).await {
            Ok(now) if !matches!(now.active_state.as_str(), "inactive" | "failed") => {
                // Refused, not failed: trying the step again cannot undo what happened.
                return Some(
                    Report::refused(Refusal {
                        rule: "held-unit".into(),
                        message: format!(
                            "{} is {now} although pitcrew holds it down (held by action {}): it was started during maintenance, so the maintenance did not happen as planned",
                            hold.unit, hold.hold_id
                        ),
                    })
                    .with_detail("held_unit_running", hold.unit),
                );
            }
            Ok(_) if broken.is_some() => return broken,
            Ok(_) => {}
            Err(e) => return Some(systemd_failure(e)),
        }
    }
    None
}

/// `systemctl kill -s SIGNAL [--kill-whom=main|all] UNIT`, for a signal `policy.signals`
/// allows (checked again here so this is safe to call on its own); then, when asked, waits
/// for the signal's effect (the signalled main process has exited, or the unit has left
/// active) within the request's deadline, failing with what it saw if that did not happen.
pub async fn signal(
    ctx: &Ctx,
    bus: Option<&str>,
    policy: &LocalPolicy,
    request: &v1::SignalUnit,
) -> Report {
    if let Err(refusal) = validate_unit_name(&request.unit) {
        return Report::refused(refusal);
    }
    let signal = match policy.signal_allowed(&request.signal).and_then(to_signal) {
        Ok(s) => s,
        Err(refusal) => return Report::refused(refusal),
    };
    let whom = match v1::SignalTarget::try_from(request.target) {
        Ok(v1::SignalTarget::All) => "all",
        _ => "main",
    };
    let wait = v1::SignalWait::try_from(request.wait).unwrap_or(v1::SignalWait::None);
    let systemd = match Systemd::connect(bus).await {
        Ok(s) => s,
        Err(e) => return systemd_failure(e),
    };
    let unit = &request.unit;
    // The process the signal goes to, read before it is sent: "it has exited" means this one.
    let before = if wait == v1::SignalWait::Exit {
        match systemd.snapshot(unit).await {
            Ok(before) => Some(before),
            Err(e) => return systemd_failure(e),
        }
    } else {
        None
    };
    if let Err(e) = systemd.kill(unit, whom, signal as i32).await {
        return systemd_failure(e);
    }
    let sent = format!(
        "sent {} to the {whom} process(es) of {unit}",
        signal.as_str()
    );
    let report = |r: Report| {
        r.with_detail("signal", (signal as i32).to_string())
            .with_detail("whom", whom)
    };
    let deadline = request.wait_deadline();
    let (waiting_for, done): (String, Box<EffectSeen>) = match (wait, before) {
        (v1::SignalWait::None, _) => return report(Report::succeeded(sent)),
        (v1::SignalWait::Exit, Some(before)) if before.main_pid == 0 => {
            return report(Report::succeeded(format!(
                "{sent}; it had no main process ({before}), so there was nothing to wait for"
            )));
        }
        (v1::SignalWait::Exit, Some(before)) => {
            let pid = before.main_pid;
            (
                format!("its main process {pid} to exit"),
                Box::new(move |now: &UnitSnapshot| now.main_pid != pid),
            )
        }
        _ => (
            "the unit to leave active".to_owned(),
            Box::new(|now: &UnitSnapshot| left_active(&now.active_state)),
        ),
    };
    ctx.progress(
        -1,
        &format!(
            "{sent}; waiting up to {} s for {waiting_for}",
            deadline.as_secs()
        ),
    );
    let started = std::time::Instant::now();
    match tokio::time::timeout(deadline, systemd.wait_until(unit, done)).await {
        Ok(Ok(now)) => report(Report::succeeded(format!(
            "{sent}; {waiting_for} took {:.1} s (now {now})",
            started.elapsed().as_secs_f64()
        )))
        .with_detail("waited_ms", started.elapsed().as_millis().to_string()),
        Ok(Err(e)) => systemd_failure(e),
        Err(_) => {
            let seen = match systemd.snapshot(unit).await {
                Ok(now) => now.to_string(),
                Err(e) => format!("its state could not be read: {e}"),
            };
            report(Report::failed(format!(
                "{sent}, but after {} s still waiting for {waiting_for}: {unit} is {seen}",
                deadline.as_secs()
            )))
        }
    }
}

/// Whether what a unit is doing now shows the signal's effect.
type EffectSeen = dyn Fn(&UnitSnapshot) -> bool + Send + Sync;

/// Whether a unit has left `active`: its processes are gone (inactive, failed) or it is being
/// started anew (activating, after an automatic restart). Reloading and deactivating are still
/// on their way.
fn left_active(state: &str) -> bool {
    matches!(state, "inactive" | "failed" | "activating")
}

/// Waits until a unit reaches a state (active, inactive or failed).
pub async fn wait(ctx: &Ctx, bus: Option<&str>, request: &v1::WaitUnit) -> Report {
    if let Err(refusal) = validate_unit_name(&request.unit) {
        return Report::refused(refusal);
    }
    let wanted = match v1::UnitState::try_from(request.state) {
        Ok(v1::UnitState::Active) => "active",
        Ok(v1::UnitState::Inactive) => "inactive",
        Ok(v1::UnitState::Failed) => "failed",
        _ => {
            return Report::failed(format!(
                "no state to wait for given for {} (active, inactive or failed)",
                request.unit
            ));
        }
    };
    let systemd = match Systemd::connect(bus).await {
        Ok(s) => s,
        Err(e) => return systemd_failure(e),
    };
    ctx.progress(-1, &format!("waiting for {} to be {wanted}", request.unit));
    match systemd.wait_state(&request.unit, &[wanted]).await {
        Ok(state) if state == wanted => {
            Report::succeeded(format!("{} is {state}", request.unit)).with_detail("state", state)
        }
        Ok(state) => Report::failed(format!("{} is {state}, not {wanted}", request.unit))
            .with_detail("state", state),
        Err(e) => systemd_failure(e),
    }
}

/// `systemctl daemon-reload`.
pub async fn daemon_reload(_ctx: &Ctx, bus: Option<&str>) -> Report {
    let systemd = match Systemd::connect(bus).await {
        Ok(s) => s,
        Err(e) => return systemd_failure(e),
    };
    match systemd.daemon_reload().await {
        Ok(()) => Report::succeeded("systemd reloaded its unit files"),
        Err(e) => systemd_failure(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_with_or_without_sig_parse() {
        assert_eq!(parse_signal("SIGUSR1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("USR1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        for bad in ["", "SIGNOPE", "9", "USR1; rm -rf /"] {
            assert_eq!(parse_signal(bad).unwrap_err().rule, "signal", "{bad}");
        }
    }
}
