//! Crash-safe file writes and inter-process locks.
//!
//! A header is replaced by writing a temporary file in the same directory,
//! fsyncing it, renaming it over the old one and fsyncing the directory: after
//! a crash at any point the directory holds either the old header or the new
//! one, whole.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};

use crate::error::{Error, Result};

/// How long to wait for another process to release a vault's lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

#[cfg(unix)]
fn private_file_options() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

#[cfg(not(unix))]
fn private_file_options() -> OpenOptions {
    OpenOptions::new()
}

/// Creates `dir` (and parents) readable by the owner only.
pub(crate) fn create_private_dir_all(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| Error::io("creating directory", dir, e))
}

/// Creates `dir`, which must not exist, readable by the owner only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| Error::io("creating directory", dir, e))
}

/// Creates an empty file readable by the owner only (if it does not exist).
pub(crate) fn create_private_file(path: &Path) -> Result<()> {
    match private_file_options()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("creating", path, e)),
    }
}

/// fsyncs a directory so that a rename or create inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("syncing directory", dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// 64 random bits in hex, for temporary names.
pub(crate) fn random_suffix() -> Result<String> {
    let mut bytes = [0u8; 8];
    OsRng.try_fill_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes leftovers of interrupted writes in `dir`: entries whose name
/// starts with `prefix` and ends with `suffix` (temporary files, or staging
/// directories). Call only while holding the lock that serializes the
/// writers of exactly those names.
pub(crate) fn remove_stale(dir: &Path, prefix: &str, suffix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(suffix) {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

/// Atomically replaces `path` with `bytes` (temp file, fsync, rename, fsync
/// the directory).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", random_suffix()?));
    let result = (|| {
        let mut file = private_file_options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io("creating", &tmp, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("writing", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("replacing", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads at most `limit` bytes of `path`; a longer file yields `limit + 1`
/// bytes so that the caller can report it as too large without reading it all.
pub(crate) fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("reading", path, e))?;
    Ok(bytes)
}

/// An advisory lock on a file (exclusive, or shared), held until dropped.
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
}

impl FileLock {
    /// Takes the lock on `path` (created if missing), waiting up to
    /// [`LOCK_WAIT`] for another process to release it.
    pub(crate) fn acquire(path: &Path) -> Result<Self> {
        Self::acquire_as(path, false)
    }

    /// Takes a shared lock on `path`: any number of holders, but none while
    /// another process holds the exclusive lock (and the reverse).
    pub(crate) fn acquire_shared(path: &Path) -> Result<Self> {
        Self::acquire_as(path, true)
    }

    /// Takes the exclusive lock on an existing `path` if nobody holds it
    /// right now; `None` if someone does (or the file is gone).
    pub(crate) fn try_acquire_existing(path: &Path) -> Option<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path).ok()?;
        file.try_lock().ok()?;
        Some(FileLock { file })
    }

    fn acquire_as(path: &Path, shared: bool) -> Result<Self> {
        let file = private_file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("opening lock", path, e))?;
        let started = Instant::now();
        loop {
            let attempt = if shared {
                file.try_lock_shared()
            } else {
                file.try_lock()
            };
            match attempt {
                Ok(()) => return Ok(FileLock { file }),
                Err(fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(Error::Busy),
                Err(fs::TryLockError::Error(e)) => return Err(Error::io("locking", path, e)),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first just makes
        // the release independent of when the descriptor is closed.
        let _ = self.file.unlock();
    }
}
