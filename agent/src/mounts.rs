//! Reading the mount table: the tmpfs mounts stacked on `/dev/shm`.
//!
//! Parsed with procfs from any reader, so tests feed fixtures and threaded code can read
//! `/proc/thread-self/mountinfo` (a thread in its own mount namespace sees its own table there).

use std::io::Read;
use std::path::Path;

use procfs::FromRead;
use procfs::process::{MountInfo, MountInfos};

/// The shared-memory mount point the UCP runbook deduplicates.
pub const SHM: &str = "/dev/shm";

/// Parses a mountinfo table.
pub fn parse_mountinfo(reader: impl Read) -> std::io::Result<Vec<MountInfo>> {
    MountInfos::from_read(reader)
        .map(|infos| infos.0)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// The tmpfs mounts on `/dev/shm`, bottom of the stack first (mountinfo lists in mount order).
pub fn shm_tmpfs_mounts(table: &[MountInfo]) -> Vec<&MountInfo> {
    tmpfs_mounts_at(table, Path::new(SHM))
}

/// The tmpfs mounts exactly on `mount_point`, bottom of the stack first.
pub fn tmpfs_mounts_at<'a>(table: &'a [MountInfo], mount_point: &Path) -> Vec<&'a MountInfo> {
    table
        .iter()
        .filter(|m| m.mount_point == mount_point && m.fs_type == "tmpfs")
        .collect()
}

/// The calling thread's own mount table: a thread that unshared its mount namespace sees its
/// table only here (`/proc/self` is the main thread's).
pub const THREAD_MOUNTINFO: &str = "/proc/thread-self/mountinfo";

/// Reads and parses a mountinfo file.
pub fn read_mountinfo(path: &Path) -> std::io::Result<Vec<MountInfo>> {
    parse_mountinfo(std::fs::File::open(path)?)
}

/// Counts the tmpfs mounts on `/dev/shm` in the calling thread's mount namespace.
pub fn count_shm_tmpfs() -> std::io::Result<u32> {
    let table = read_mountinfo(Path::new(THREAD_MOUNTINFO))?;
    Ok(u32::try_from(shm_tmpfs_mounts(&table).len()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:23 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=10g
26 25 0:24 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw,size=65536k
90 26 0:51 / /dev/shm rw,nosuid,nodev,noexec shared:40 - tmpfs shm rw,size=1024k
91 90 0:52 / /dev/shm rw,relatime shared:41 - tmpfs shm rw
92 22 0:53 / /dev/shmem rw,relatime shared:42 - tmpfs tmpfs rw
";

    #[test]
    fn counts_only_tmpfs_exactly_on_dev_shm_in_mount_order() {
        let table = parse_mountinfo(TABLE.as_bytes()).unwrap();
        let shm = shm_tmpfs_mounts(&table);
        assert_eq!(shm.len(), 3);
        assert_eq!(
            shm.iter().map(|m| m.mnt_id).collect::<Vec<_>>(),
            vec![26, 90, 91]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_mountinfo("not a mount table at all\n".as_bytes()).is_err());
    }
}
