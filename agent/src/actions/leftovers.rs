//! Process groups started by actions, recorded on disk while they run, so that an agent
//! restarting after a crash stops what its predecessor left running instead of reporting the
//! action "interrupted" while its program carries on.
//!
//! Each record holds the group id and the leader's start time (field 22 of `/proc/PID/stat`):
//! a group is killed only if its leader is still the very process we started, never a later
//! process that happens to reuse the number.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

fn record_path(dir: &Path, action_id: &str) -> PathBuf {
    dir.join(format!("{action_id}.pgid"))
}

/// The start time of process `pid` in clock ticks since boot, if it exists.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Records that `action_id` runs process group `pgid` (best effort: a failure to record only
/// loses the clean-up after a crash, never the action).
pub fn record(dir: &Path, action_id: &str, pgid: i32) {
    let Some(started) = start_time(pgid) else {
        return;
    };
    let _ = std::fs::create_dir_all(dir);
    let _ = pitcrew_proto::files::write_private(
        &record_path(dir, action_id),
        format!("{pgid} {started}\n").as_bytes(),
    );
}

/// Forgets the record once the group has been reaped.
pub fn forget(dir: &Path, action_id: &str) {
    let _ = std::fs::remove_file(record_path(dir, action_id));
}

/// Stops the process group an interrupted action left running, if it is still the same one.
/// Returns whether something was stopped. The record is removed either way.
pub fn stop(dir: &Path, action_id: &str) -> bool {
    let path = record_path(dir, action_id);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return false;
    };
    let _ = std::fs::remove_file(&path);
    let mut fields = text.split_whitespace();
    let (Some(Ok(pgid)), Some(Ok(started))) = (
        fields.next().map(str::parse::<i32>),
        fields.next().map(str::parse::<u64>),
    ) else {
        return false;
    };
    if pgid <= 1 || start_time(pgid) != Some(started) {
        return false;
    }
    killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_recorded_group_is_stopped_and_a_reused_number_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i32::try_from(child.id()).unwrap();
        record(dir.path(), "a1", pgid);
        assert!(stop(dir.path(), "a1"), "the live group is stopped");
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(!record_path(dir.path(), "a1").exists());

        // A record whose start time does not match the live process is never acted on.
        let mut other = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = i32::try_from(other.id()).unwrap();
        std::fs::write(record_path(dir.path(), "a2"), format!("{pid} 1\n")).unwrap();
        assert!(!stop(dir.path(), "a2"));
        assert!(
            other.try_wait().unwrap().is_none(),
            "an unrelated process was killed"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn missing_or_garbage_records_do_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!stop(dir.path(), "none"));
        std::fs::write(record_path(dir.path(), "bad"), "not numbers").unwrap();
        assert!(!stop(dir.path(), "bad"));
    }
}
