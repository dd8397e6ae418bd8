//! The actions as `pitcrew do HOST ACTION ...` subcommands: each action's arguments live in its
//! own module; this enum only lists them.

use clap::Subcommand;

use super::{daemon_reload, dedupe_shm, exec, health, patch, reboot, release_holds};
use super::{remove_path, signal_unit, unit, wait_unit};
use crate::v1::{self, action::Kind};

/// One action, as given on the command line.
#[derive(Debug, Clone, Subcommand)]
pub enum ActionCommand {
    /// Start, stop, restart, reload, enable or disable a systemd unit.
    Unit(unit::Cli),
    /// Lift pitcrew's holds of units (see `unit stop --hold`); the units are not started.
    ReleaseHolds(release_holds::Cli),
    /// Send a signal to a unit's processes, like `systemctl kill -s`.
    SignalUnit(signal_unit::Cli),
    /// Wait until a unit is active, inactive or failed.
    WaitUnit(wait_unit::Cli),
    /// Reload systemd's unit files.
    DaemonReload(daemon_reload::Cli),
    /// Remove a file or directory under a root the host's policy allows.
    RemovePath(remove_path::Cli),
    /// Collapse tmpfs mounts stacked on /dev/shm down to one.
    DedupeShm(dedupe_shm::Cli),
    /// Upgrade packages (all when none are named).
    Patch(patch::Cli),
    /// Reboot (or power off) the host; done when it is back with a new boot id.
    Reboot(reboot::Cli),
    /// Check health: a unit is active, a TCP port accepts, a URL answers, a command exits 0.
    Health(health::Cli),
    /// Run a program (argv, no shell) the host's policy allows.
    Exec(exec::Cli),
}

impl From<ActionCommand> for v1::Action {
    fn from(command: ActionCommand) -> Self {
        let kind = match command {
            ActionCommand::Unit(a) => Kind::Unit(a.into()),
            ActionCommand::ReleaseHolds(a) => Kind::ReleaseHolds(a.into()),
            ActionCommand::SignalUnit(a) => Kind::SignalUnit(a.into()),
            ActionCommand::WaitUnit(a) => Kind::WaitUnit(a.into()),
            ActionCommand::DaemonReload(a) => Kind::DaemonReload(a.into()),
            ActionCommand::RemovePath(a) => Kind::RemovePath(a.into()),
            ActionCommand::DedupeShm(a) => Kind::DedupeShm(a.into()),
            ActionCommand::Patch(a) => Kind::Patch(a.into()),
            ActionCommand::Reboot(a) => Kind::Reboot(a.into()),
            ActionCommand::Health(a) => Kind::Health(a.into()),
            ActionCommand::Exec(a) => Kind::Exec(a.into()),
        };
        v1::Action { kind: Some(kind) }
    }
}

/// A duration given on the command line as in campaign files (`90s`, `5m`), or a bare number
/// of seconds, in whole seconds.
pub(crate) fn parse_seconds(text: &str) -> Result<u32, String> {
    let seconds = match text.trim().parse::<u64>() {
        Ok(seconds) => seconds,
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. \"90s\" or \"5m\""))?
            .as_secs(),
    };
    u32::try_from(seconds).map_err(|_| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::actions::describe;

    #[derive(Parser)]
    struct Do {
        #[command(subcommand)]
        action: ActionCommand,
    }

    fn parse(args: &[&str]) -> Result<v1::Action, clap::Error> {
        let mut argv = vec!["do"];
        argv.extend_from_slice(args);
        Do::try_parse_from(argv).map(|d| d.action.into())
    }

    #[test]
    fn command_lines_become_the_actions_campaigns_send() {
        let stop = parse(&["unit", "stop", "m.service", "--hold"]).unwrap();
        assert_eq!(
            describe(Some(&stop)),
            "unit stop m.service (and hold it down)"
        );
        let drain = parse(&[
            "signal-unit",
            "m.service",
            "SIGUSR1",
            "--wait",
            "exit",
            "--wait-timeout",
            "5m",
        ])
        .unwrap();
        assert_eq!(
            describe(Some(&drain)),
            "signal_unit SIGUSR1 to main process of m.service, then wait up to 300 s for it to exit"
        );
        let exec = parse(&["exec", "--env", "A=1", "/bin/echo", "-n", "x"]).unwrap();
        assert_eq!(describe(Some(&exec)), "exec /bin/echo -n x");
    }

    /// `pitcrew do` and campaign files agree on a patch's lock wait.
    #[test]
    fn patch_waits_for_the_lock_as_long_as_a_campaign_step() {
        let Some(Kind::Patch(patch)) = parse(&["patch"]).unwrap().kind else {
            panic!("not a patch");
        };
        assert_eq!(
            patch.lock_timeout_seconds,
            super::patch::DEFAULT_LOCK_TIMEOUT_SECONDS
        );
        let Some(Kind::Patch(patch)) = parse(&["patch", "--lock-timeout", "2m", "vim"])
            .unwrap()
            .kind
        else {
            panic!("not a patch");
        };
        assert_eq!(patch.lock_timeout_seconds, 120);
        assert_eq!(parse_seconds("45"), Ok(45));
    }

    /// Checks the agent would refuse are refused on the command line already.
    #[test]
    fn an_https_health_check_is_refused_before_it_is_sent() {
        let err = parse(&["health", "http", "https://localhost/_ping"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("https:// health checks are not supported"),
            "{err}"
        );
        assert!(parse(&["unit", "bounce", "m.service"]).is_err());
    }
}
