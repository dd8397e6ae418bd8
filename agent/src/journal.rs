//! The action journal: the agent's on-disk memory of every action id it has accepted.
//!
//! The *At-most-once actions* invariant (ARCHITECTURE.md) rests on it: an action is written
//! here, and the write made durable, *before* the agent acts, and its final result is written
//! before the agent answers. A repeated id is answered from here and never run again.
//!
//! One JSON file per action under `state_dir/journal/<id>.json`, replaced atomically (temp
//! file, fsync, rename) so a crash leaves either the old or the new record, never half of one.
//! The request and the result are stored prost-encoded (hex): the wire form is the one schema
//! both sides already agree on, so nothing here can drift from it.
//!
//! Life of a record: `in flight` (request, boot id, start time) → `finished` (result, not yet
//! acknowledged) → `acknowledged` (a tombstone: the request is dropped, the result kept so a
//! duplicate still gets its answer) → pruned after [`TOMBSTONE_TTL_MS`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pitcrew_proto::files;
use pitcrew_proto::policy::Refusal;
use pitcrew_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};

/// How long an acknowledged result is kept to answer duplicates: far longer than any
/// coordinator retry, short enough that the journal stays small.
pub const TOMBSTONE_TTL_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// The longest action id accepted (ids become file names).
pub const MAX_ID_LEN: usize = 128;

/// What can go wrong with the journal. Every variant names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use the action journal directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the action journal record {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Checks that an action id is safe as a file name: `[A-Za-z0-9._:-]{1,128}`, and not made of
/// dots only (`.` and `..` name directories, and a leading dot marks our temp files).
pub fn validate_id(id: &str) -> Result<(), Refusal> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Refusal {
            rule: "action-id".to_owned(),
            message: format!(
                "action id {:?} is not 1 to {MAX_ID_LEN} characters of [A-Za-z0-9._:-] (not starting with '.')",
                truncate_for_message(id)
            ),
        })
    }
}

fn truncate_for_message(id: &str) -> String {
    id.chars().take(64).collect()
}

/// One action as the journal remembers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    /// The request as received; dropped once the result is acknowledged.
    pub request: Option<v1::ActionRequest>,
    /// The action kind ("exec", "reboot", ...), kept even when the request is dropped.
    pub kind: String,
    /// The kernel boot id when the action started: a reboot is proven by a different one.
    pub boot_id: String,
    pub started_at_ms: i64,
    /// `None` while in flight.
    pub result: Option<v1::ActionResult>,
    /// When the coordinator confirmed it stored the result.
    pub acknowledged_at_ms: Option<i64>,
}

/// The file form of a [`Record`].
#[derive(Debug, Serialize, Deserialize)]
struct RecordFile {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_hex: Option<String>,
    kind: String,
    boot_id: String,
    started_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acknowledged_at_ms: Option<i64>,
}

impl Record {
    fn to_file(&self) -> RecordFile {
        RecordFile {
            id: self.id.clone(),
            request_hex: self
                .request
                .as_ref()
                .map(|r| hex::encode(r.encode_to_vec())),
            kind: self.kind.clone(),
            boot_id: self.boot_id.clone(),
            started_at_ms: self.started_at_ms,
            result_hex: self.result.as_ref().map(|r| hex::encode(r.encode_to_vec())),
            acknowledged_at_ms: self.acknowledged_at_ms,
        }
    }

    fn from_file(file: RecordFile) -> Result<Record, String> {
        let request = file
            .request_hex
            .map(|h| {
                let bytes = hex::decode(h).map_err(|e| format!("request: {e}"))?;
                v1::ActionRequest::decode(bytes.as_slice()).map_err(|e| format!("request: {e}"))
            })
            .transpose()?;
        let result = file
            .result_hex
            .map(|h| {
                let bytes = hex::decode(h).map_err(|e| format!("result: {e}"))?;
                v1::ActionResult::decode(bytes.as_slice()).map_err(|e| format!("result: {e}"))
            })
            .transpose()?;
        Ok(Record {
            id: file.id,
            request,
            kind: file.kind,
            boot_id: file.boot_id,
            started_at_ms: file.started_at_ms,
            result,
            acknowledged_at_ms: file.acknowledged_at_ms,
        })
    }
}

/// The journal: the records on disk and their copy in memory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    records: HashMap<String, Record>,
}

/// The name of an action's kind as the journal and log lines spell it.
pub fn kind_name(request: &v1::ActionRequest) -> &'static str {
    request
        .action
        .as_ref()
        .and_then(|a| a.kind.as_ref())
        .map_or("none", pitcrew_proto::actions::name)
}

impl Journal {
    /// Opens (creating, owner-only) the journal directory and loads every record. Records that
    /// cannot be read are moved aside as `<name>.corrupt` with a warning rather than stopping
    /// the agent: one bad file must not make every other action unanswerable.
    pub fn open(dir: &Path, now_ms: i64) -> Result<Journal, JournalError> {
        files::create_private_dir(dir).map_err(|source| JournalError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let entries = std::fs::read_dir(dir).map_err(|source| JournalError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            records: HashMap::new(),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A temp file left by a crash mid-write: the rename never happened, so the
                // record it was replacing is still intact.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            match read_record(&path) {
                Ok(record) if record.id == id => {
                    journal.records.insert(record.id.clone(), record);
                }
                Ok(record) => {
                    tracing::warn!(
                        message = "journal record names another id; moved aside",
                        file = %path.display(),
                        id = %record.id
                    );
                    move_aside(&path);
                }
                Err(error) => {
                    tracing::warn!(message = "unreadable journal record; moved aside", file = %path.display(), %error);
                    move_aside(&path);
                }
            }
        }
        journal.prune(now_ms);
        Ok(journal)
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn persist(&self, record: &Record) -> Result<(), JournalError> {
        let path = self.path_of(&record.id);
        // Serialising plain strings and integers cannot fail; an error here would be a bug.
        let text =
            serde_json::to_vec_pretty(&record.to_file()).map_err(|e| JournalError::Write {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
        files::write_private(&path, &text).map_err(|source| JournalError::Write { path, source })
    }

    /// The record of an id, if the journal has one.
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.records.get(id)
    }

    /// The final result of an id, if it finished.
    pub fn result(&self, id: &str) -> Option<v1::ActionResult> {
        self.records.get(id).and_then(|r| r.result.clone())
    }

    /// Records an action as in flight, durably, before it runs. The caller must not act if
    /// this fails.
    pub fn begin(
        &mut self,
        request: &v1::ActionRequest,
        boot_id: &str,
        started_at_ms: i64,
    ) -> Result<(), JournalError> {
        let record = Record {
            id: request.action_id.clone(),
            request: Some(request.clone()),
            kind: kind_name(request).to_owned(),
            boot_id: boot_id.to_owned(),
            started_at_ms,
            result: None,
            acknowledged_at_ms: None,
        };
        self.persist(&record)?;
        self.records.insert(record.id.clone(), record);
        Ok(())
    }

    /// Records the final result of an action. The result is kept in memory even when the
    /// write fails, so this process still answers duplicates and reports it.
    pub fn finish(
        &mut self,
        request: &v1::ActionRequest,
        boot_id: &str,
        result: &v1::ActionResult,
    ) -> Result<(), JournalError> {
        let id = &request.action_id;
        let record = match self.records.get(id) {
            Some(existing) => Record {
                result: Some(result.clone()),
                ..existing.clone()
            },
            None => Record {
                id: id.clone(),
                request: Some(request.clone()),
                kind: kind_name(request).to_owned(),
                boot_id: boot_id.to_owned(),
                started_at_ms: result.started_at_ms,
                result: Some(result.clone()),
                acknowledged_at_ms: None,
            },
        };
        let written = self.persist(&record);
        self.records.insert(id.clone(), record);
        written
    }

    /// Records in flight: what a crash or reboot interrupted.
    pub fn in_flight(&self) -> Vec<Record> {
        let mut records: Vec<Record> = self
            .records
            .values()
            .filter(|r| r.result.is_none())
            .cloned()
            .collect();
        records.sort_by_key(|r| r.started_at_ms);
        records
    }

    /// Final results the coordinator has not acknowledged, oldest first.
    pub fn unacknowledged(&self) -> Vec<v1::ActionResult> {
        let mut records: Vec<&Record> = self
            .records
            .values()
            .filter(|r| r.result.is_some() && r.acknowledged_at_ms.is_none())
            .collect();
        records.sort_by_key(|r| (r.started_at_ms, r.id.clone()));
        records.iter().filter_map(|r| r.result.clone()).collect()
    }

    /// Marks results as stored by the coordinator: each becomes a compact tombstone (no
    /// request) that still answers a duplicate. Ids in flight or unknown are ignored.
    pub fn acknowledge(&mut self, ids: &[String], now_ms: i64) {
        for id in ids {
            let Some(record) = self.records.get(id) else {
                continue;
            };
            if record.result.is_none() || record.acknowledged_at_ms.is_some() {
                continue;
            }
            let tombstone = Record {
                request: None,
                acknowledged_at_ms: Some(now_ms),
                ..record.clone()
            };
            if let Err(error) = self.persist(&tombstone) {
                tracing::warn!(message = "cannot record an acknowledgement", %error);
            }
            self.records.insert(id.clone(), tombstone);
        }
        self.prune(now_ms);
    }

    /// Deletes tombstones older than [`TOMBSTONE_TTL_MS`].
    pub fn prune(&mut self, now_ms: i64) {
        let expired: Vec<String> = self
            .records
            .values()
            .filter(|r| {
                r.acknowledged_at_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) > TOMBSTONE_TTL_MS)
            })
            .map(|r| r.id.clone())
            .collect();
        for id in expired {
            match std::fs::remove_file(self.path_of(&id)) {
                Ok(()) => {
                    self.records.remove(&id);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.records.remove(&id);
                }
                Err(error) => {
                    tracing::warn!(message = "cannot prune a journal tombstone", id = %id, %error)
                }
            }
        }
    }
}

fn read_record(path: &Path) -> Result<Record, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let file: RecordFile = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    Record::from_file(file)
}

fn move_aside(path: &Path) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let _ = std::fs::rename(path, PathBuf::from(aside));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str) -> v1::ActionRequest {
        v1::ActionRequest {
            action_id: id.into(),
            action: Some(v1::Action {
                kind: Some(v1::action::Kind::DaemonReload(v1::DaemonReload {})),
            }),
            timeout_seconds: 0,
        }
    }

    fn result(id: &str) -> v1::ActionResult {
        v1::ActionResult {
            action_id: id.into(),
            outcome: v1::Outcome::Succeeded as i32,
            message: "done".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_must_be_safe_file_names() {
        for good in ["a", "c1:h2:step-3", "x.y_z", &"a".repeat(128)] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a b",
            "é",
            ".hidden",
            &"a".repeat(129),
        ] {
            assert_eq!(validate_id(bad).unwrap_err().rule, "action-id", "{bad}");
        }
    }

    #[test]
    fn records_survive_a_reopen_through_every_stage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut journal = Journal::open(&path, 1_000).unwrap();
        journal.begin(&request("a"), "boot-1", 1_000).unwrap();
        journal.begin(&request("b"), "boot-1", 1_001).unwrap();
        journal
            .finish(&request("b"), "boot-1", &result("b"))
            .unwrap();

        let mut journal = Journal::open(&path, 2_000).unwrap();
        let in_flight = journal.in_flight();
        assert_eq!(in_flight.len(), 1);
        assert_eq!(in_flight[0].id, "a");
        assert_eq!(in_flight[0].boot_id, "boot-1");
        assert_eq!(in_flight[0].kind, "daemon_reload");
        assert_eq!(in_flight[0].request, Some(request("a")));
        assert_eq!(journal.unacknowledged(), vec![result("b")]);

        journal.acknowledge(&["b".into()], 3_000);
        assert!(journal.unacknowledged().is_empty());
        let journal = Journal::open(&path, 4_000).unwrap();
        let tombstone = journal.get("b").unwrap();
        assert_eq!(tombstone.request, None, "a tombstone drops the request");
        assert_eq!(
            journal.result("b"),
            Some(result("b")),
            "but still answers duplicates"
        );
    }

    #[test]
    fn tombstones_are_pruned_after_a_week_and_unacknowledged_results_never() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut journal = Journal::open(&path, 0).unwrap();
        for id in ["old", "kept"] {
            journal.begin(&request(id), "boot", 0).unwrap();
            journal.finish(&request(id), "boot", &result(id)).unwrap();
        }
        journal.acknowledge(&["old".into()], 0);
        let journal = Journal::open(&path, TOMBSTONE_TTL_MS + 1).unwrap();
        assert!(journal.get("old").is_none());
        assert!(!path.join("old.json").exists());
        assert_eq!(journal.unacknowledged(), vec![result("kept")]);
    }

    #[test]
    fn a_corrupt_record_is_moved_aside_and_the_rest_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut journal = Journal::open(&path, 0).unwrap();
        journal.begin(&request("good"), "boot", 0).unwrap();
        std::fs::write(path.join("bad.json"), b"{ not json").unwrap();
        std::fs::write(path.join(".good.json.tmp42"), b"half").unwrap();
        let journal = Journal::open(&path, 0).unwrap();
        assert!(journal.get("good").is_some());
        assert!(journal.get("bad").is_none());
        assert!(path.join("bad.json.corrupt").exists());
        assert!(!path.join(".good.json.tmp42").exists());
    }
}
