//! `remove_path`: removes a file, symlink or (when asked) a directory tree strictly under a
//! root the policy allows, never following a symlink out of it.
//!
//! The policy's lexical check comes first (absolute, no `..`, under a root, not a root). Then
//! the real filesystem is walked from the root down with directory file descriptors
//! (`openat` with `O_NOFOLLOW`): every component between the root and the target's parent must
//! be a real directory, and once opened it cannot be swapped for a symlink under us, so there
//! is no check-then-use race below the root. The final component is examined without
//! following it: a symlink is removed as a link (its target survives). The root itself is
//! resolved normally: it comes from the host's own configuration, not from the request.
//!
//! A removal never leaves the target's mount. Comparing `st_dev` is not enough: a bind mount of
//! a directory of the same filesystem has the same device, so a tree walk would delete through
//! it into a directory outside the allowed root. So, before touching anything, a target that is
//! itself a mount point (its mount id differs from its parent's) is refused, and so is a
//! directory with any mount below it in the mount table; during the walk each directory's mount
//! id must still be the target's, so a mount that appears meanwhile stops the walk there. Mount
//! ids come from `/proc/thread-self/fdinfo` of the open descriptors (no `statx` in nix, and no
//! unsafe code), paths from `/proc/thread-self/fd`, the table from
//! `/proc/thread-self/mountinfo`: the calling thread's own view, even in a private namespace.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use pitcrew_proto::policy::{LocalPolicy, Refusal};
use pitcrew_proto::v1;

use super::{Ctx, Report, Stop, StopFlag};
use crate::mounts::{self, THREAD_MOUNTINFO};

/// Directory trees deeper than this are refused rather than risking the agent's stack or its
/// file descriptors (each level holds one open).
const MAX_DEPTH: usize = 256;

/// How long a stopped removal may take to notice the stop flag and report.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How a removal ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    /// Nothing was there.
    AlreadyAbsent,
    /// A symlink was removed (its target untouched).
    Link,
    /// A file or other non-directory was removed.
    File,
    /// A directory was removed with this many entries below it.
    Tree(u64),
}

/// Why a removal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("{path} is a directory; set recursive to remove a directory tree")]
    IsDirectory { path: PathBuf },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("stopped")]
    Stopped(Stop),
}

fn io(path: &Path, errno: Errno) -> RemoveError {
    RemoveError::Io {
        path: path.to_path_buf(),
        message: errno.desc().to_owned(),
    }
}

fn symlink_refusal(path: &Path) -> RemoveError {
    RemoveError::Refused(Refusal {
        rule: "remove-path".into(),
        message: format!(
            "{} is a symlink; remove_path never follows a symlink between the allowed root and the target",
            path.display()
        ),
    })
}

fn is_kind(stat: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == kind
}

fn mount_refusal(message: String) -> RemoveError {
    RemoveError::Refused(Refusal {
        rule: "remove-path".into(),
        message,
    })
}

/// The id of the mount an open descriptor is on, as the kernel reports it in fdinfo.
fn mount_id(fd: &OwnedFd, path: &Path) -> Result<i32, RemoveError> {
    let fdinfo = format!("/proc/thread-self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&fdinfo).map_err(|e| RemoveError::Io {
        path: path.to_path_buf(),
        message: format!("cannot read {fdinfo} to find its mount: {e}"),
    })?;
    text.lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| RemoveError::Io {
            path: path.to_path_buf(),
            message: format!("{fdinfo} has no mnt_id (the kernel is older than 3.15?)"),
        })
}

/// Where an open descriptor really is, spelled as the mount table spells paths (symlinks in
/// the configured root resolved, relative to this thread's root).
fn kernel_path(fd: &OwnedFd, path: &Path) -> Result<PathBuf, RemoveError> {
    let link = format!("/proc/thread-self/fd/{}", fd.as_raw_fd());
    std::fs::read_link(&link).map_err(|e| RemoveError::Io {
        path: path.to_path_buf(),
        message: format!("cannot read {link} to find where it is mounted: {e}"),
    })
}

/// Undoes the octal escapes mountinfo uses for space, tab, newline and backslash (`\040`...);
/// procfs leaves them in.
pub fn unescape_mount_point(escaped: &Path) -> PathBuf {
    let bytes = escaped.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                match u8::try_from(value) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 4;
                    }
                    Err(_) => {
                        out.push(b'\\');
                        i += 1;
                    }
                }
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Refuses a target with mounts on or below it, before anything is removed. `real` is the
/// target's path as the kernel names it.
fn refuse_mounts(real: &Path, shown: &Path) -> Result<(), RemoveError> {
    let table =
        mounts::read_mountinfo(Path::new(THREAD_MOUNTINFO)).map_err(|e| RemoveError::Io {
            path: shown.to_path_buf(),
            message: format!("cannot read the mount table {THREAD_MOUNTINFO}: {e}"),
        })?;
    let mut on = false;
    let mut below: Vec<PathBuf> = Vec::new();
    for entry in &table {
        let point = unescape_mount_point(&entry.mount_point);
        if point == real {
            on = true;
        } else if point.starts_with(real) && !below.contains(&point) {
            below.push(point);
        }
    }
    if on {
        return Err(mount_refusal(format!(
            "{} is a mount point; remove_path never removes or empties a mounted filesystem (unmount it first if that is meant)",
            shown.display()
        )));
    }
    if !below.is_empty() {
        let shown_below: Vec<String> = below
            .iter()
            .take(3)
            .map(|p| p.display().to_string())
            .collect();
        return Err(mount_refusal(format!(
            "{} has {} mount point(s) below it ({}{}); remove_path never crosses into another mount, so nothing was removed (unmount them first if that is meant)",
            shown.display(),
            below.len(),
            shown_below.join(", "),
            if below.len() > 3 { ", ..." } else { "" }
        )));
    }
    Ok(())
}

/// Removes `path` as the policy allows. Blocking: run it off the async threads.
pub fn remove(
    policy: &LocalPolicy,
    path: &str,
    recursive: bool,
    stop: &StopFlag,
) -> Result<Removed, RemoveError> {
    let (target, root) = policy.removal_allowed(path).map_err(RemoveError::Refused)?;
    // removal_allowed guarantees target is strictly under root.
    let relative = target.strip_prefix(&root).map_err(|_| RemoveError::Io {
        path: target.clone(),
        message: "is not under its root".into(),
    })?;
    let components: Vec<&OsStr> = relative.iter().collect();
    let Some((name, between)) = components.split_last() else {
        return Err(RemoveError::Refused(Refusal {
            rule: "policy.remove_paths".into(),
            message: format!("{} is an allowed root itself", root.display()),
        }));
    };
    let mut dir = match open(
        &root,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Removed::AlreadyAbsent),
        Err(e) => return Err(io(&root, e)),
    };
    let mut walked = root.clone();
    for component in between {
        walked.push(component);
        match fstatat(dir.as_fd(), *component, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) if is_kind(&stat, SFlag::S_IFLNK) => return Err(symlink_refusal(&walked)),
            Ok(stat) if !is_kind(&stat, SFlag::S_IFDIR) => {
                // A file where a directory should be: the target cannot exist below it.
                return Ok(Removed::AlreadyAbsent);
            }
            Ok(_) => {}
            Err(Errno::ENOENT) => return Ok(Removed::AlreadyAbsent),
            Err(e) => return Err(io(&walked, e)),
        }
        dir = match openat(
            dir.as_fd(),
            *component,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Swapped for a symlink since the check above.
            Err(Errno::ELOOP) => return Err(symlink_refusal(&walked)),
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(Removed::AlreadyAbsent),
            Err(e) => return Err(io(&walked, e)),
        };
    }
    let stat = match fstatat(dir.as_fd(), *name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(Removed::AlreadyAbsent),
        Err(e) => return Err(io(&target, e)),
    };
    // The target must be on its parent's mount (a mount point is refused, whatever is mounted
    // there), and nothing may be mounted below it. An O_PATH descriptor opens a symlink itself,
    // a mount point as the mounted root.
    let target_fd = match openat(
        dir.as_fd(),
        *name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Removed::AlreadyAbsent),
        Err(e) => return Err(io(&target, e)),
    };
    let parent_mount = mount_id(&dir, &walked)?;
    if mount_id(&target_fd, &target)? != parent_mount {
        return Err(mount_refusal(format!(
            "{} is a mount point; remove_path never removes or empties a mounted filesystem (unmount it first if that is meant)",
            target.display()
        )));
    }
    refuse_mounts(&kernel_path(&target_fd, &target)?, &target)?;
    drop(target_fd);
    if is_kind(&stat, SFlag::S_IFDIR) {
        if !recursive {
            return Err(RemoveError::IsDirectory { path: target });
        }
        let count = remove_tree(&dir, name, &target, parent_mount, stop, 0)?;
        return Ok(Removed::Tree(count));
    }
    match unlinkat(dir.as_fd(), *name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(io(&target, e)),
    }
    if is_kind(&stat, SFlag::S_IFLNK) {
        Ok(Removed::Link)
    } else {
        Ok(Removed::File)
    }
}

/// Removes the directory `name` in `parent` and everything below it, staying on the mount
/// `mount`. Returns how many entries were removed below it.
fn remove_tree(
    parent: &OwnedFd,
    name: &OsStr,
    path: &Path,
    mount: i32,
    stop: &StopFlag,
    depth: usize,
) -> Result<u64, RemoveError> {
    if let Some(s) = stop.check() {
        return Err(RemoveError::Stopped(s));
    }
    if depth > MAX_DEPTH {
        return Err(RemoveError::Io {
            path: path.to_path_buf(),
            message: format!("the tree is deeper than {MAX_DEPTH} levels; not removed"),
        });
    }
    let fd = match openat(
        parent.as_fd(),
        name,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(0),
        // Replaced by a symlink while we walked: remove the link, never follow it.
        Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
            return match unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(0),
                Err(e) => Err(io(path, e)),
            };
        }
        Err(e) => return Err(io(path, e)),
    };
    // Mounts were refused before the walk began; one mounted since stops it here.
    if mount_id(&fd, path)? != mount {
        return Err(RemoveError::Io {
            path: path.to_path_buf(),
            message: "became a mount point during the removal; nothing below it was removed".into(),
        });
    }
    // Read every name first, then remove: changing a directory while reading it may skip
    // entries.
    let entries: Vec<(OsString, Option<nix::dir::Type>)> = {
        let listing = fd.try_clone().map_err(|e| RemoveError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut dir = nix::dir::Dir::from_fd(listing).map_err(|e| io(path, e))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io(path, e))?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            names.push((OsStr::from_bytes(bytes).to_owned(), entry.file_type()));
        }
        names
    };
    let mut count = 0u64;
    for (child, kind) in entries {
        let child_path = path.join(&child);
        let is_dir = match kind {
            Some(nix::dir::Type::Directory) => true,
            Some(_) => false,
            None => match fstatat(fd.as_fd(), child.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => is_kind(&stat, SFlag::S_IFDIR),
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(io(&child_path, e)),
            },
        };
        if is_dir {
            count += remove_tree(&fd, &child, &child_path, mount, stop, depth + 1)? + 1;
        } else {
            match unlinkat(fd.as_fd(), child.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => count += 1,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(io(&child_path, e)),
            }
        }
    }
    match unlinkat(parent.as_fd(), name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(count),
        Err(e) => Err(io(path, e)),
    }
}

/// The action: runs [`remove`] on a blocking thread and reports.
pub async fn run(ctx: &Ctx, policy: &LocalPolicy, request: &v1::RemovePath) -> Report {
    let policy = policy.clone();
    let path = request.path.clone();
    let recursive = request.recursive;
    let stop = ctx.stop_flag();
    let shown = path.clone();
    let walk = tokio::task::spawn_blocking(move || remove(&policy, &path, recursive, &stop));
    // The walk checks the stop flag between entries; a single call stuck in the kernel (a
    // hung network filesystem) cannot be interrupted, so after a grace period the action
    // reports and leaves that thread behind.
    let outcome = tokio::select! {
        outcome = walk => outcome,
        stop = async {
            let stop = ctx.stopped().await;
            tokio::time::sleep(STOP_GRACE).await;
            stop
        } => {
            return Report::stopped(
                stop,
                ctx.timeout,
                "the removal did not stop in time and may still be in progress",
            );
        }
    };
    match outcome {
        Ok(Ok(Removed::AlreadyAbsent)) => {
            Report::succeeded(format!("{shown} is already absent")).with_detail("removed", "0")
        }
        Ok(Ok(Removed::Link)) => Report::succeeded(format!(
            "removed the symlink {shown} (its target was not touched)"
        ))
        .with_detail("removed", "1"),
        Ok(Ok(Removed::File)) => {
            Report::succeeded(format!("removed {shown}")).with_detail("removed", "1")
        }
        Ok(Ok(Removed::Tree(n))) => Report::succeeded(format!(
            "removed the directory {shown} and {n} entries below it"
        ))
        .with_detail("removed", (n + 1).to_string()),
        Ok(Err(RemoveError::Refused(refusal))) => Report::refused(refusal),
        Ok(Err(RemoveError::Stopped(stop))) => {
            Report::stopped(stop, ctx.timeout, "part of the tree may have been removed")
        }
        Ok(Err(error)) => Report::failed(error.to_string()),
        Err(join) => Report::failed(format!("the removal stopped unexpectedly: {join}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped_as_the_kernel_escapes_them() {
        assert_eq!(
            unescape_mount_point(Path::new("/srv/a\\040b\\011c\\012d\\134e")),
            Path::new("/srv/a b\tc\nd\\e")
        );
        // Not an escape: kept as it is.
        assert_eq!(
            unescape_mount_point(Path::new("/srv/x\\9y\\")),
            Path::new("/srv/x\\9y\\")
        );
    }
}
