//! `dedupe_shm`: the UCP backup runbook's `/dev/shm` fix, with the script's exact semantics:
//!
//! ```text
//! SHM_MOUNT=$(grep -m1 '^tmpfs./dev/shm' /proc/mounts)          # remember the first one
//! while [ $(grep -cm2 '^tmpfs./dev/shm' /proc/mounts) -gt 1 ]; do umount /dev/shm; done
//! grep -q '^tmpfs./dev/shm' /proc/mounts || mount "${SHM_MOUNT}" # none left: mount it back
//! ```
//!
//! Each `umount` takes the top of the stack. Two guards the script lacks: the mount on top must
//! itself be a tmpfs (a bind mount stacked over `/dev/shm` is not ours to remove), and every
//! unmount must shrink the stack (no endless loop). The table is read from
//! `/proc/thread-self/mountinfo`: the calling thread's own mount namespace.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount, umount};
use procfs::process::MountInfo;

use super::{Ctx, Report};
use crate::mounts;

/// What a run found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deduped {
    /// tmpfs mounts on the mount point before.
    pub found: usize,
    pub unmounted: usize,
    /// Whether a tmpfs had to be mounted back because none was left.
    pub remounted: bool,
}

/// Why the fix did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    #[error("cannot read the mount table {path}: {source}")]
    Table {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no tmpfs is mounted on {0}, so there is no mount to copy options from; nothing was changed"
    )]
    NoneMounted(PathBuf),
    #[error(
        "the mount on top of {point} is {fs_type}, not tmpfs; it was left alone ({unmounted} tmpfs unmounted before)"
    )]
    ForeignTop {
        point: PathBuf,
        fs_type: String,
        unmounted: usize,
    },
    #[error("cannot unmount the top tmpfs on {point}: {errno} ({unmounted} unmounted before)")]
    Unmount {
        point: PathBuf,
        errno: nix::errno::Errno,
        unmounted: usize,
    },
    #[error("unmounting did not shrink the tmpfs stack on {0}; stopped to avoid a loop")]
    NotShrinking(PathBuf),
    #[error("no tmpfs was left on {point} and mounting one back failed: {errno}")]
    Remount {
        point: PathBuf,
        errno: nix::errno::Errno,
    },
}

/// The `mount(2)` arguments that recreate a mount: source, fs type, flags, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountArgs {
    pub source: String,
    pub fs_type: String,
    pub flags: MsFlags,
    /// Superblock options (size, mode, uid, ...), comma separated, sorted.
    pub data: String,
}

/// Builds the arguments that mount a new filesystem like `first`: its per-mount options as
/// flags, its superblock options (minus rw/ro, which are flags, and labels the kernel shows
/// but does not accept) as data.
pub fn mount_args(first: &MountInfo) -> MountArgs {
    let mut flags = MsFlags::empty();
    for option in first.mount_options.keys() {
        flags |= match option.as_str() {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            "sync" => MsFlags::MS_SYNCHRONOUS,
            "dirsync" => MsFlags::MS_DIRSYNC,
            "lazytime" => MsFlags::MS_LAZYTIME,
            _ => MsFlags::empty(),
        };
    }
    let mut data: Vec<String> = first
        .super_options
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "rw" | "ro" | "seclabel"))
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect();
    data.sort();
    MountArgs {
        source: first
            .mount_source
            .clone()
            .unwrap_or_else(|| "tmpfs".to_owned()),
        fs_type: first.fs_type.clone(),
        flags,
        data: data.join(","),
    }
}

/// The mount on top of the stack at `point`: the one no other mount at `point` sits on.
pub fn top_of_stack<'a>(table: &'a [MountInfo], point: &Path) -> Option<&'a MountInfo> {
    let at: Vec<&MountInfo> = table.iter().filter(|m| m.mount_point == point).collect();
    at.iter()
        .find(|m| !at.iter().any(|other| other.pid == m.mnt_id))
        .copied()
}

/// Mounts a filesystem on `point` the way `first` was mounted.
pub fn remount_like(first: &MountInfo, point: &Path) -> nix::Result<()> {
    let args = mount_args(first);
    let data = (!args.data.is_empty()).then_some(args.data.as_str());
    mount(
        Some(args.source.as_str()),
        point,
        Some(args.fs_type.as_str()),
        args.flags,
        data,
    )
}

fn read(table: &Path) -> Result<Vec<MountInfo>, DedupeError> {
    mounts::read_mountinfo(table).map_err(|source| DedupeError::Table {
        path: table.to_path_buf(),
        source,
    })
}

/// Collapses the tmpfs stack on `point` to one, reading the table from `table` (the calling
/// thread's mountinfo). Blocking.
pub fn dedupe(table: &Path, point: &Path) -> Result<Deduped, DedupeError> {
    let initial = read(table)?;
    let stack = mounts::tmpfs_mounts_at(&initial, point);
    let found = stack.len();
    let Some(first) = stack.first().map(|m| (*m).clone()) else {
        return Err(DedupeError::NoneMounted(point.to_path_buf()));
    };
    let mut unmounted = 0;
    let mut count = found;
    while count > 1 {
        let current = read(table)?;
        if let Some(top) = top_of_stack(&current, point)
            && top.fs_type != "tmpfs"
        {
            return Err(DedupeError::ForeignTop {
                point: point.to_path_buf(),
                fs_type: top.fs_type.clone(),
                unmounted,
            });
        }
        umount(point).map_err(|errno| DedupeError::Unmount {
            point: point.to_path_buf(),
            errno,
            unmounted,
        })?;
        unmounted += 1;
        let after = mounts::tmpfs_mounts_at(&read(table)?, point).len();
        if after >= count {
            return Err(DedupeError::NotShrinking(point.to_path_buf()));
        }
        count = after;
    }
    let mut remounted = false;
    if count == 0 {
        remount_like(&first, point).map_err(|errno| DedupeError::Remount {
            point: point.to_path_buf(),
            errno,
        })?;
        remounted = true;
    }
    Ok(Deduped {
        found,
        unmounted,
        remounted,
    })
}

/// The action on the real `/dev/shm` of the agent's mount namespace.
pub async fn run(_ctx: &Ctx) -> Report {
    let outcome = tokio::task::spawn_blocking(|| {
        dedupe(Path::new(mounts::THREAD_MOUNTINFO), Path::new(mounts::SHM))
    })
    .await;
    match outcome {
        Ok(Ok(done)) => {
            let message = match (done.found, done.unmounted, done.remounted) {
                (1, 0, false) => format!("one tmpfs on {}; nothing to do", mounts::SHM),
                (found, unmounted, false) => format!(
                    "found {found} tmpfs mounts stacked on {}; unmounted {unmounted}, one is left",
                    mounts::SHM
                ),
                (found, unmounted, true) => format!(
                    "found {found} tmpfs mounts on {}; unmounted {unmounted}; none was left, so one was mounted back with the first one's options",
                    mounts::SHM
                ),
            };
            Report::succeeded(message)
                .with_detail("found", done.found.to_string())
                .with_detail("unmounted", done.unmounted.to_string())
                .with_detail("remounted", done.remounted.to_string())
        }
        Ok(Err(error)) => Report::failed(error.to_string()),
        Err(join) => Report::failed(format!("the /dev/shm fix stopped unexpectedly: {join}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:23 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=10g
26 25 0:24 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs shm rw,size=65536k,mode=1777,inode64
90 26 0:51 / /dev/shm rw,nosuid,nodev,noexec shared:40 - tmpfs shm rw,size=1024k
91 90 0:52 / /dev/shm rw,relatime shared:41 - tmpfs tmpfs rw,seclabel
";

    #[test]
    fn the_first_mount_s_options_become_flags_and_data() {
        let table = mounts::parse_mountinfo(TABLE.as_bytes()).unwrap();
        let first = mounts::shm_tmpfs_mounts(&table)[0];
        let args = mount_args(first);
        assert_eq!(args.source, "shm");
        assert_eq!(args.fs_type, "tmpfs");
        assert_eq!(args.flags, MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(args.data, "inode64,mode=1777,size=65536k");
        let third = mount_args(mounts::shm_tmpfs_mounts(&table)[2]);
        assert_eq!(third.data, "", "rw and seclabel are not data options");
        assert_eq!(third.flags, MsFlags::MS_RELATIME);
    }

    #[test]
    fn the_top_of_a_stack_is_the_mount_nothing_sits_on() {
        let table = mounts::parse_mountinfo(TABLE.as_bytes()).unwrap();
        assert_eq!(
            top_of_stack(&table, Path::new("/dev/shm")).unwrap().mnt_id,
            91
        );
        assert_eq!(top_of_stack(&table, Path::new("/dev")).unwrap().mnt_id, 25);
        assert!(top_of_stack(&table, Path::new("/nope")).is_none());
    }

    #[test]
    fn nothing_mounted_is_an_error_that_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("mountinfo");
        std::fs::write(&table, "22 1 0:21 / / rw - ext4 /dev/vda rw\n").unwrap();
        let error = dedupe(&table, Path::new("/dev/shm")).unwrap_err();
        assert!(matches!(error, DedupeError::NoneMounted(_)), "{error}");
        assert!(error.to_string().contains("nothing was changed"));
    }

    #[test]
    fn a_single_mount_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("mountinfo");
        std::fs::write(
            &table,
            "22 1 0:21 / / rw - ext4 /dev/vda rw\n26 22 0:24 / /dev/shm rw - tmpfs tmpfs rw\n",
        )
        .unwrap();
        assert_eq!(
            dedupe(&table, Path::new("/dev/shm")).unwrap(),
            Deduped {
                found: 1,
                unmounted: 0,
                remounted: false
            }
        );
    }
}
