//! A renewal replaces the host's key and certificate as one unit: whatever moment the agent
//! dies at, it restarts with a pair that belongs together (the old one, still accepted by the
//! coordinator until the new one is used, or the new one).

use std::path::Path;

use pitcrew_agent::enroll::{commit_renewal, recover_renewal};

fn pair(dir: &Path) -> (String, String) {
    (
        std::fs::read_to_string(dir.join("host.key")).unwrap(),
        std::fs::read_to_string(dir.join("host.crt")).unwrap(),
    )
}

fn old_pair(dir: &Path) {
    std::fs::write(dir.join("host.key"), "OLD KEY").unwrap();
    std::fs::write(dir.join("host.crt"), "OLD CERT").unwrap();
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "host.key" && n != "host.crt")
        .collect();
    names.sort();
    names
}

#[test]
fn a_completed_renewal_replaces_both_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    old_pair(dir.path());
    commit_renewal(dir.path(), "NEW KEY", "NEW CERT").unwrap();
    assert_eq!(pair(dir.path()), ("NEW KEY".into(), "NEW CERT".into()));
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    assert_eq!(recover_renewal(dir.path()).unwrap(), None);
}

#[test]
fn a_renewal_cut_before_both_parts_were_stored_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    old_pair(dir.path());
    // The agent died after writing the new key, before the certificate and the marker.
    std::fs::write(dir.path().join("host.key.new"), "NEW KEY").unwrap();
    let what = recover_renewal(dir.path()).unwrap();
    assert!(what.is_some_and(|w| w.contains("dropped")));
    assert_eq!(pair(dir.path()), ("OLD KEY".into(), "OLD CERT".into()));
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn a_renewal_cut_between_its_two_renames_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    old_pair(dir.path());
    // Both parts and the marker were stored; the key was moved into place, then the agent died
    // before the certificate followed: a new key beside the old certificate, unless finished.
    std::fs::write(dir.path().join("host.crt.new"), "NEW CERT").unwrap();
    std::fs::write(dir.path().join("host.key"), "NEW KEY").unwrap();
    std::fs::write(dir.path().join("renewal.committed"), "").unwrap();
    let what = recover_renewal(dir.path()).unwrap();
    assert!(what.is_some_and(|w| w.contains("finished")));
    assert_eq!(pair(dir.path()), ("NEW KEY".into(), "NEW CERT".into()));
    assert!(leftovers(dir.path()).is_empty());
}
