//! Which actions take a host out of service, for the slot rules of one-off actions
//! (`pitcrew do`): a read-only action (a health check, waiting for a unit's state) only looks,
//! so it is never refused for a slot; every other action may disrupt the host.

use crate::v1::action::Kind;

/// Whether an action only looks at the host. The match is exhaustive on purpose: a new action
/// kind must be classified here before it builds.
pub fn is_read_only(kind: &Kind) -> bool {
    match kind {
        // Lifting holds starts nothing: it is how a host leaves maintenance cleanly.
        Kind::Health(_) | Kind::WaitUnit(_) | Kind::ReleaseHolds(_) => true,
        Kind::Unit(_)
        | Kind::SignalUnit(_)
        | Kind::DaemonReload(_)
        | Kind::RemovePath(_)
        | Kind::DedupeShm(_)
        | Kind::Patch(_)
        | Kind::Reboot(_)
        | Kind::Exec(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    #[test]
    fn only_checks_and_waits_are_read_only() {
        assert!(is_read_only(&Kind::Health(v1::Health::default())));
        assert!(is_read_only(&Kind::WaitUnit(v1::WaitUnit::default())));
        assert!(!is_read_only(&Kind::Exec(v1::Exec::default())));
        assert!(!is_read_only(&Kind::Reboot(v1::Reboot::default())));
        assert!(!is_read_only(&Kind::Unit(v1::UnitAction::default())));
    }
}
