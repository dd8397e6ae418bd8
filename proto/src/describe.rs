//! One-line descriptions of actions, the same everywhere an operator reads them (CLI output,
//! plans, the event log).

use crate::v1::{self, action::Kind, health::Check};

fn unit_operation(op: i32) -> &'static str {
    match v1::UnitOperation::try_from(op).unwrap_or(v1::UnitOperation::Unspecified) {
        v1::UnitOperation::Start => "start",
        v1::UnitOperation::Stop => "stop",
        v1::UnitOperation::Restart => "restart",
        v1::UnitOperation::Reload => "reload",
        v1::UnitOperation::Enable => "enable",
        v1::UnitOperation::Disable => "disable",
        v1::UnitOperation::Unspecified => "(no operation)",
    }
}

/// Describes an action, e.g. `unit stop dcos-mesos-slave.service` or `exec /usr/bin/backup --all`.
pub fn action(action: Option<&v1::Action>) -> String {
    let Some(kind) = action.and_then(|a| a.kind.as_ref()) else {
        return "(no action)".to_owned();
    };
    match kind {
        Kind::Unit(u) => format!(
            "unit {} {}{}",
            unit_operation(u.operation),
            u.unit,
            if u.hold { " (and hold it down)" } else { "" }
        ),
        Kind::SignalUnit(s) => {
            let target = if s.target == v1::SignalTarget::All as i32 {
                "all processes"
            } else {
                "main process"
            };
            let wait = match v1::SignalWait::try_from(s.wait).unwrap_or(v1::SignalWait::None) {
                v1::SignalWait::None => String::new(),
                v1::SignalWait::Exit => format!(
                    ", then wait up to {} s for it to exit",
                    s.wait_deadline().as_secs()
                ),
                v1::SignalWait::Inactive => format!(
                    ", then wait up to {} s for the unit to leave active",
                    s.wait_deadline().as_secs()
                ),
            };
            format!("signal_unit {} to {} of {}{wait}", s.signal, target, s.unit)
        }
        Kind::WaitUnit(w) => {
            let state = match v1::UnitState::try_from(w.state).unwrap_or(v1::UnitState::Unspecified)
            {
                v1::UnitState::Active => "active",
                v1::UnitState::Inactive => "inactive",
                v1::UnitState::Failed => "failed",
                v1::UnitState::Unspecified => "(no state)",
            };
            format!("wait_unit {} until {state}", w.unit)
        }
        Kind::DaemonReload(_) => "daemon_reload".to_owned(),
        Kind::RemovePath(r) => {
            format!(
                "remove_path {}{}",
                r.path,
                if r.recursive { " (recursive)" } else { "" }
            )
        }
        Kind::DedupeShm(_) => {
            "dedupe_shm (collapse stacked /dev/shm tmpfs mounts to one)".to_owned()
        }
        Kind::Patch(p) => {
            if p.packages.is_empty() {
                "patch (upgrade all packages)".to_owned()
            } else {
                format!("patch {}", p.packages.join(" "))
            }
        }
        Kind::Reboot(r) => {
            let verb = if r.poweroff { "poweroff" } else { "reboot" };
            if r.only_if_required {
                format!("{verb} (only if required)")
            } else {
                verb.to_owned()
            }
        }
        Kind::Health(h) => match &h.check {
            Some(Check::UnitActive(unit)) => format!("health: {unit} is active"),
            Some(Check::Tcp(t)) => format!("health: tcp {}:{} accepts", t.host, t.port),
            Some(Check::Http(h)) => {
                let status = if h.expect_status == 0 {
                    200
                } else {
                    h.expect_status
                };
                format!("health: GET {} answers {status}", h.url)
            }
            Some(Check::Command(c)) => format!("health: {} exits 0", c.argv.join(" ")),
            None => "health (no check)".to_owned(),
        },
        Kind::Exec(e) => format!("exec {}", e.argv.join(" ")),
        Kind::ReleaseHolds(r) => format!(
            "release_holds {}",
            r.holds
                .iter()
                .map(|h| h.unit.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

/// The one word an operator sees for an action's outcome, in the event log and the CLI.
pub fn outcome(outcome: i32) -> &'static str {
    match v1::Outcome::try_from(outcome).unwrap_or(v1::Outcome::Unspecified) {
        v1::Outcome::Succeeded => "succeeded",
        v1::Outcome::Failed => "failed",
        v1::Outcome::Refused => "refused",
        v1::Outcome::TimedOut => "timed out",
        v1::Outcome::Cancelled => "cancelled",
        v1::Outcome::Interrupted => "interrupted",
        v1::Outcome::Unspecified => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_read_like_the_runbook() {
        let stop = v1::Action {
            kind: Some(Kind::Unit(v1::UnitAction {
                unit: "dcos-mesos-slave.service".into(),
                operation: v1::UnitOperation::Stop as i32,
                ..Default::default()
            })),
        };
        assert_eq!(action(Some(&stop)), "unit stop dcos-mesos-slave.service");
        let kill = v1::Action {
            kind: Some(Kind::SignalUnit(v1::SignalUnit {
                unit: "dcos-mesos-slave.service".into(),
                signal: "SIGUSR1".into(),
                target: 0,
                ..Default::default()
            })),
        };
        assert_eq!(
            action(Some(&kill)),
            "signal_unit SIGUSR1 to main process of dcos-mesos-slave.service"
        );
        let drain = v1::Action {
            kind: Some(Kind::SignalUnit(v1::SignalUnit {
                unit: "dcos-mesos-slave.service".into(),
                signal: "SIGUSR1".into(),
                target: 0,
                wait: v1::SignalWait::Exit as i32,
                wait_seconds: 300,
            })),
        };
        assert_eq!(
            action(Some(&drain)),
            "signal_unit SIGUSR1 to main process of dcos-mesos-slave.service, then wait up to 300 s for it to exit"
        );
        assert_eq!(action(None), "(no action)");
    }
}
