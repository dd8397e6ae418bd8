//! Small file helpers shared by the coordinator and the agent: private files and atomic writes.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `contents` to `path` atomically (temp file, fsync, rename) with the given mode.
/// Secrets use mode 0o600 so no other user can read them, even for an instant.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A file written in full beside its destination, not yet in place.
struct Staged {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
}

fn stage(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<Staged> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let tmp = dir.join(format!(".{file_name}.new{}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&tmp);
        return Err(error);
    }
    Ok(Staged {
        tmp,
        path: path.to_path_buf(),
    })
}

fn sync_dir(path: &Path) {
    if let Ok(dir) = fs::File::open(path.parent().unwrap_or_else(|| Path::new("."))) {
        let _ = dir.sync_all();
    }
}

/// Replaces a private key (0600) and its certificate (0644) together: both are written in full
/// and synced beside their destinations before either is renamed into place, so a full disk or
/// a failed write replaces neither; if the certificate's rename fails after the key's, the old
/// key is put back. (Two renames are not one atomic step: a crash between them, microseconds
/// apart, would leave a new key beside the old certificate.)
pub fn replace_key_and_cert(
    key_path: &Path,
    key_pem: &[u8],
    cert_path: &Path,
    cert_pem: &[u8],
) -> std::io::Result<()> {
    let old_key = fs::read(key_path).ok();
    let key = stage(key_path, key_pem, 0o600)?;
    let cert = match stage(cert_path, cert_pem, 0o644) {
        Ok(cert) => cert,
        Err(error) => {
            let _ = fs::remove_file(&key.tmp);
            return Err(error);
        }
    };
    if let Err(error) = fs::rename(&key.tmp, &key.path) {
        let _ = fs::remove_file(&key.tmp);
        let _ = fs::remove_file(&cert.tmp);
        return Err(error);
    }
    if let Err(error) = fs::rename(&cert.tmp, &cert.path) {
        let _ = fs::remove_file(&cert.tmp);
        if let Some(old) = old_key {
            let _ = write_private(key_path, &old);
        }
        return Err(error);
    }
    sync_dir(key_path);
    sync_dir(cert_path);
    Ok(())
}

/// Writes a secret (private key, token) readable by its owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic(path, contents, 0o600)
}

/// Writes a public file (certificate, config) readable by everyone.
pub fn write_public(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic(path, contents, 0o644)
}

/// Creates a directory (and parents) that only its owner can enter.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_owner_only_and_replaced_atomically() {
        let dir = tempfile_dir();
        let path = dir.join("key.pem");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_and_its_certificate_are_replaced_together_or_not_at_all() {
        // Its own directory: the other test removes the shared one when it ends.
        let dir = std::env::temp_dir().join(format!("pitcrew-files-pair-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (key, cert) = (dir.join("op.key"), dir.join("op.crt"));
        write_private(&key, b"old key").unwrap();
        write_public(&cert, b"old cert").unwrap();
        replace_key_and_cert(&key, b"new key", &cert, b"new cert").unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"new key");
        assert_eq!(fs::read(&cert).unwrap(), b"new cert");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The certificate cannot be put in place (its path is a directory): the key is kept.
        let blocked = dir.join("blocked.crt");
        fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(replace_key_and_cert(&key, b"newer key", &blocked, b"x").is_err());
        assert_eq!(fs::read(&key).unwrap(), b"new key");
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pitcrew-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
