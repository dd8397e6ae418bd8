//! Fuzz target `mountinfo`: the agent's mount table parsing (`mounts::parse_mountinfo`, procfs
//! underneath) and what the `/dev/shm` fix and `remove_path` read from a parsed table: the
//! tmpfs stack on `/dev/shm`, its top, the arguments that would recreate a mount, and mount
//! points unescaped as the kernel escapes them.
//!
//! Input: any text. Nothing may panic. Checked besides: unescaping undoes the kernel's escaping
//! of every mount point (so `remove_path` compares the paths the kernel means), and leaves a
//! point without escapes as it is.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pitcrew_agent::actions::{dedupe_shm, remove_path};
use pitcrew_agent::mounts;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = mounts::parse_mountinfo(data) else {
        return;
    };
    let shm = mounts::shm_tmpfs_mounts(&table);
    if let Some(first) = shm.first() {
        let _ = dedupe_shm::mount_args(first);
    }
    let _ = dedupe_shm::top_of_stack(&table, Path::new(mounts::SHM));
    for entry in &table {
        let _ = mounts::tmpfs_mounts_at(&table, &entry.mount_point);
        let _ = dedupe_shm::top_of_stack(&table, &entry.mount_point);
        let _ = dedupe_shm::mount_args(entry);
        let point = remove_path::unescape_mount_point(&entry.mount_point);
        if !entry.mount_point.as_os_str().as_bytes().contains(&b'\\') {
            assert_eq!(point, entry.mount_point, "a path without escapes changed");
        }
        let escaped = kernel_escape(point.as_os_str().as_bytes());
        assert_eq!(
            remove_path::unescape_mount_point(Path::new(OsStr::from_bytes(&escaped))),
            point,
            "unescaping does not undo the kernel's escaping of {escaped:?}"
        );
    }
});

/// A path as the kernel writes it in mountinfo (`show_mountinfo` → `seq_path(..., " \t\n\\")`):
/// space, tab, newline and backslash as three-digit octal escapes.
fn kernel_escape(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &byte in path {
        if matches!(byte, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend_from_slice(format!("\\{byte:03o}").as_bytes());
        } else {
            out.push(byte);
        }
    }
    out
}
