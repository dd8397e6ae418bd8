//! Units pitcrew holds down during maintenance: a unit a campaign stops stays down until the
//! host's run starts it again or the host leaves maintenance, whatever its enablement or
//! `Restart=` say, across reboots and agent restarts.
//!
//! A hold is one systemd drop-in, `<unit dir>/<unit>.d/zz-pitcrew-hold.conf`, whose only rule is
//! `ConditionPathExists=!<that same file>`: while the file exists every start job of the unit —
//! at boot (long before the agent runs), by `Restart=`, by a dependency or by hand — is skipped
//! as a failed condition, and the unit's own file is never edited. Removing the file lifts the
//! hold even before systemd reloads. The `zz-` prefix sorts it after the unit's own drop-ins,
//! so a drop-in of theirs that resets the conditions list cannot undo it. The file also records
//! which action made the hold, so a late release of an older hold never lifts a newer one.
//!
//! The agent also records each hold in its state directory (`holds/<unit>`, the hold id): the
//! record is what pitcrew holds, the drop-in how. A drop-in removed by hand (`rm`, `systemctl
//! revert`) leaves the record, so the agent still knows the unit was meant to stay down and can
//! say the hold was broken instead of forgetting it.
//!
//! Callers reload systemd after a change (a hold takes effect once systemd has read it).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use pitcrew_proto::policy::validate_unit_name;
use pitcrew_proto::v1;

use crate::config::AgentConfig;

/// The drop-in's file name inside `<unit>.d/`.
pub const HOLD_FILE: &str = "zz-pitcrew-hold.conf";

/// The line that names the action that made a hold.
const HOLD_ID_PREFIX: &str = "# pitcrew-hold-id: ";

/// Where holds live: the drop-ins in systemd's administrator unit directory
/// (`/etc/systemd/system`), the records in the agent's state directory.
#[derive(Debug, Clone)]
pub struct Holds {
    unit_dir: PathBuf,
    record_dir: PathBuf,
}

/// One hold as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub unit: String,
    pub hold_id: String,
    /// Whether its drop-in is in place (false: removed outside pitcrew).
    pub intact: bool,
}

/// What a hold (or a failed attempt at one) went wrong on.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{0}")]
    BadUnit(String),
    #[error("cannot write the hold of {unit} at {path}: {source}")]
    Write {
        unit: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot remove the hold of {unit} at {path}: {source}")]
    Remove {
        unit: String,
        path: PathBuf,
        source: io::Error,
    },
}

impl Holds {
    /// Holds with drop-ins under `unit_dir` and records under `record_dir`.
    pub fn new(unit_dir: impl Into<PathBuf>, record_dir: impl Into<PathBuf>) -> Holds {
        Holds {
            unit_dir: unit_dir.into(),
            record_dir: record_dir.into(),
        }
    }

    /// The holds of an agent with this configuration.
    pub fn of(config: &AgentConfig) -> Holds {
        Holds::new(&config.host.unit_dir, config.state_dir.join("holds"))
    }

    fn paths_of(&self, unit: &str) -> Result<(PathBuf, PathBuf), HoldError> {
        // A valid unit name has no '/' and is not "." or "..": it stays one directory down.
        validate_unit_name(unit).map_err(|r| HoldError::BadUnit(r.message))?;
        Ok((
            self.unit_dir.join(format!("{unit}.d")).join(HOLD_FILE),
            self.record_dir.join(unit),
        ))
    }

    /// Holds `unit` down, recording `hold_id` (the action that made the hold). Replaces an
    /// older hold of the same unit. The record is written first: a crash between the two
    /// leaves a hold the agent knows about, never a drop-in it does not.
    pub fn hold(&self, unit: &str, hold_id: &str) -> Result<(), HoldError> {
        let (drop_in_path, record) = self.paths_of(unit)?;
        // Action ids are checked by the journal (no newlines), but neither file may ever get a
        // second line (a directive in the drop-in) whatever it is given.
        let hold_id: String = hold_id.chars().filter(|c| !c.is_control()).collect();
        let write = |path: &Path, contents: &[u8]| {
            pitcrew_proto::files::write_atomic(path, contents, 0o644).map_err(|source| {
                HoldError::Write {
                    unit: unit.to_owned(),
                    path: path.to_path_buf(),
                    source,
                }
            })
        };
        write(&record, format!("{hold_id}\n").as_bytes())?;
        write(
            &drop_in_path,
            drop_in(unit, &drop_in_path, &hold_id).as_bytes(),
        )
    }

    /// Lifts the hold of `unit`: any hold, or only the one `hold_id` made. Returns whether a
    /// hold was lifted (false: there was none, or a newer one stays).
    pub fn lift(&self, unit: &str, hold_id: Option<&str>) -> Result<bool, HoldError> {
        let (drop_in_path, record) = self.paths_of(unit)?;
        let Some(current) = read_record(&record).or_else(|| read_hold_id(&drop_in_path)) else {
            return Ok(false);
        };
        if hold_id.is_some_and(|wanted| wanted != current) {
            return Ok(false);
        }
        // The drop-in first: a crash between the two leaves a record without a drop-in, which
        // reads as a broken hold (refused until released), never as a silent one.
        for path in [&drop_in_path, &record] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(HoldError::Remove {
                        unit: unit.to_owned(),
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        // The `<unit>.d` directory goes too when the hold was all it held.
        if let Some(dir) = drop_in_path.parent() {
            let _ = fs::remove_dir(dir);
        }
        Ok(true)
    }

    /// Every hold, sorted by unit name: those recorded, and any drop-in without a record.
    pub fn holds(&self) -> Vec<Hold> {
        let mut found: std::collections::BTreeMap<String, Hold> = Default::default();
        for entry in read_dir(&self.record_dir) {
            let Some(unit) = valid_unit(&entry.file_name()) else {
                continue;
            };
            let Some(hold_id) = read_record(&entry.path()) else {
                continue;
            };
            let intact = self
                .paths_of(&unit)
                .is_ok_and(|(drop_in_path, _)| drop_in_path.exists());
            found.insert(
                unit.clone(),
                Hold {
                    unit,
                    hold_id,
                    intact,
                },
            );
        }
        for entry in read_dir(&self.unit_dir) {
            let Some(unit) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".d"))
                .and_then(|u| valid_unit(std::ffi::OsStr::new(u)))
            else {
                continue;
            };
            if found.contains_key(&unit) {
                continue;
            }
            if let Some(hold_id) = read_hold_id(&entry.path().join(HOLD_FILE)) {
                found.insert(
                    unit.clone(),
                    Hold {
                        unit,
                        hold_id,
                        intact: true,
                    },
                );
            }
        }
        found.into_values().collect()
    }

    /// Every hold, as facts report them.
    pub fn list(&self) -> Vec<v1::HeldUnit> {
        self.holds()
            .into_iter()
            .map(|h| v1::HeldUnit {
                unit: h.unit,
                hold_id: h.hold_id,
            })
            .collect()
    }
}

fn read_dir(dir: &Path) -> impl Iterator<Item = fs::DirEntry> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
}

/// A directory entry's name as a unit name, if it is a valid one.
fn valid_unit(name: &std::ffi::OsStr) -> Option<String> {
    let name = name.to_str()?;
    validate_unit_name(name).ok()?;
    Some(name.to_owned())
}

/// The hold id in a record; `None` when there is no record.
fn read_record(path: &Path) -> Option<String> {
    Some(fs::read_to_string(path).ok()?.trim().to_owned())
}

/// The drop-in that holds `unit`, naming the action that made the hold.
fn drop_in(unit: &str, path: &Path, hold_id: &str) -> String {
    format!(
        "# Written by the pitcrew agent: {unit} is held down during maintenance. Every start of it\n\
         # is skipped while this file exists. pitcrew removes it when the host's run starts the\n\
         # unit again or the host leaves maintenance; removing it by hand lifts the hold.\n\
         {HOLD_ID_PREFIX}{hold_id}\n\
         [Unit]\n\
         ConditionPathExists=!{}\n",
        path.display()
    )
}

/// The id recorded in a hold drop-in; `None` when there is no hold at `path`.
fn read_hold_id(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .find_map(|line| line.strip_prefix(HOLD_ID_PREFIX))
            .unwrap_or_default()
            .trim()
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_a_drop_in_whose_condition_fails_while_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let holds = Holds::new(dir.path(), dir.path().join("records"));
        holds.hold("mesos.service", "c1:h1:0").unwrap();
        let path = dir.path().join("mesos.service.d").join(HOLD_FILE);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!(
                "[Unit]\nConditionPathExists=!{}\n",
                path.display()
            )),
            "{text}"
        );
        assert_eq!(
            holds.list(),
            vec![v1::HeldUnit {
                unit: "mesos.service".into(),
                hold_id: "c1:h1:0".into()
            }]
        );
        // Lifted: the file and its directory are gone.
        assert!(holds.lift("mesos.service", None).unwrap());
        assert!(!path.exists() && !path.parent().unwrap().exists());
        assert!(holds.list().is_empty());
        assert!(!holds.lift("mesos.service", None).unwrap());
    }

    #[test]
    fn a_drop_in_removed_by_hand_leaves_a_broken_hold_not_a_forgotten_one() {
        let dir = tempfile::tempdir().unwrap();
        let holds = Holds::new(dir.path(), dir.path().join("records"));
        holds.hold("a.service", "c1:h:0").unwrap();
        fs::remove_file(dir.path().join("a.service.d").join(HOLD_FILE)).unwrap();
        assert_eq!(
            holds.holds(),
            vec![Hold {
                unit: "a.service".into(),
                hold_id: "c1:h:0".into(),
                intact: false
            }]
        );
        assert!(holds.lift("a.service", Some("c1:h:0")).unwrap());
        assert!(holds.holds().is_empty());
    }

    #[test]
    fn a_release_of_an_older_hold_leaves_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let holds = Holds::new(dir.path(), dir.path().join("records"));
        holds.hold("a.service", "old").unwrap();
        holds.hold("a.service", "new").unwrap();
        assert!(!holds.lift("a.service", Some("old")).unwrap());
        assert_eq!(holds.list()[0].hold_id, "new");
        assert!(holds.lift("a.service", Some("new")).unwrap());
    }

    #[test]
    fn the_unit_s_own_drop_ins_stay_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let holds = Holds::new(dir.path(), dir.path().join("records"));
        let own = dir.path().join("a.service.d").join("override.conf");
        fs::create_dir_all(own.parent().unwrap()).unwrap();
        fs::write(&own, "[Service]\nRestart=always\n").unwrap();
        holds.hold("a.service", "x").unwrap();
        assert!(holds.lift("a.service", None).unwrap());
        assert!(own.exists(), "the unit's own drop-in was removed");
        for bad in ["../etc", "a/b.service", ""] {
            assert!(
                matches!(holds.hold(bad, "x"), Err(HoldError::BadUnit(_))),
                "{bad}"
            );
        }
        // A directory of drop-ins without a hold is not a hold.
        assert!(holds.list().is_empty());
    }

    #[test]
    fn a_hold_id_cannot_add_a_directive() {
        let dir = tempfile::tempdir().unwrap();
        let holds = Holds::new(dir.path(), dir.path().join("records"));
        holds
            .hold("a.service", "x\n[Unit]\nConditionPathExists=/")
            .unwrap();
        let text = fs::read_to_string(dir.path().join("a.service.d").join(HOLD_FILE)).unwrap();
        let directives: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(directives.len(), 2, "{text}");
        assert!(directives[1].starts_with("ConditionPathExists=!"), "{text}");
    }
}
