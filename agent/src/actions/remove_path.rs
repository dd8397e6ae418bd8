//! `remove_path`: removes a file, symlink or (when asked) a directory tree strictly under a
//! root the policy allows, never following a symlink out of it.
//!
//! The policy's lexical check comes first (absolute, no `..`, under a root, not a root). Then
//! the real filesystem is walked from the root down with directory file descriptors
//! (`openat` with `O_NOFOLLOW`): every component between the root and the target's parent must
//! be a real directory, and once opened it cannot be swapped for a symlink under us, so there
//! is no check-then-use race below the root. The final component is examined without
//! following it: a symlink is removed as a link (its target survives). Trees are removed
//! through the same descriptors and never across a mount point. The root itself is resolved
//! normally: it comes from the host's own configuration, not from the request.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use pitcrew_proto::policy::{LocalPolicy, Refusal};
use pitcrew_proto::v1;

use super::{Ctx, Report, Stop, StopFlag};

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
    if is_kind(&stat, SFlag::S_IFDIR) {
        if !recursive {
            return Err(RemoveError::IsDirectory { path: target });
        }
        let count = remove_tree(&dir, name, &target, stat.st_dev, stop, 0)?;
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

/// Removes the directory `name` in `parent` and everything below it, staying on device `dev`.
/// Returns how many entries were removed below it.
fn remove_tree(
    parent: &OwnedFd,
    name: &OsStr,
    path: &Path,
    dev: u64,
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
    let here = fstat(fd.as_fd()).map_err(|e| io(path, e))?;
    if here.st_dev != dev {
        return Err(RemoveError::Io {
            path: path.to_path_buf(),
            message: "is a mount point of another filesystem; nothing below it was removed".into(),
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
            count += remove_tree(&fd, &child, &child_path, dev, stop, depth + 1)? + 1;
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
