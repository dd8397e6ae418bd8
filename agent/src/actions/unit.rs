//! `unit`, `signal_unit`, `wait_unit` and `daemon_reload`: systemd driven over D-Bus.
//!
//! Unit names are validated before any bus traffic (the policy check does it, and these
//! functions check again so they are safe to call on their own).

use std::str::FromStr;

use nix::sys::signal::Signal;
use pitcrew_proto::policy::{LocalPolicy, Refusal, signal_name, validate_unit_name};
use pitcrew_proto::v1;

use super::{Ctx, Report};
use crate::systemd::{JobOp, Systemd, SystemdError};

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

/// start/stop/restart/reload (waiting for systemd's job) or enable/disable.
pub async fn unit(ctx: &Ctx, bus: Option<&str>, request: &v1::UnitAction) -> Report {
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
    match job {
        Some(job) => {
            ctx.progress(-1, &format!("waiting for the {} job of {unit}", job.verb()));
            match systemd.run_job(unit, job).await {
                Ok(result) if result == "done" => {
                    Report::succeeded(format!("{} {unit}: job done", job.verb()))
                        .with_detail("job_result", result)
                }
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

/// `systemctl kill -s SIGNAL [--kill-whom=main|all] UNIT`, for a signal `policy.signals`
/// allows (checked again here so this is safe to call on its own).
pub async fn signal(
    _ctx: &Ctx,
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
    let systemd = match Systemd::connect(bus).await {
        Ok(s) => s,
        Err(e) => return systemd_failure(e),
    };
    match systemd.kill(&request.unit, whom, signal as i32).await {
        Ok(()) => Report::succeeded(format!(
            "sent {} to the {} process(es) of {}",
            signal.as_str(),
            whom,
            request.unit
        ))
        .with_detail("signal", (signal as i32).to_string())
        .with_detail("whom", whom),
        Err(e) => systemd_failure(e),
    }
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
