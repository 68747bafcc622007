//! Vault-key rotation: a new vault key, every store re-encrypted, all or
//! nothing, crash-safe at every point.
//!
//! The rotating process holds the vault's data lock exclusively (every
//! unlocked vault holds it shared, so no other process reads or writes the
//! stores meanwhile) and works in three steps:
//!
//! 1. **Stage.** A copy of every store under the new key is written into
//!    `.rotate.tmp/`, laid out like the vault itself: `catalog.db`,
//!    `data/<app>.db` (SQLCipher exports of the live databases), and
//!    `files/<app>/<blob>` (every blob decrypted with the old files key and
//!    encrypted again with the new one, under its old name and a fresh salt,
//!    which the staged database records). Then the new header, sealed with
//!    the new key, as `.rotate.tmp/header`. Everything is fsynced.
//! 2. **Commit.** `.rotate.tmp/` is renamed to `.rotate/` and the vault
//!    directory fsynced. This single rename is the commit point.
//! 3. **Roll forward.** Every staged file is renamed over its live
//!    counterpart (a database's old `-wal` and `-shm` files first removed:
//!    the staged copy already holds what they held), the directories are
//!    fsynced, the new header is renamed into place last, and `.rotate/` is
//!    removed.
//!
//! After a crash, the next access to the vault (with or without a secret)
//! finishes a committed rotation (step 3 needs no key and is idempotent),
//! and the next unlock removes an uncommitted `.rotate.tmp/`: the vault is
//! then wholly under its old key, and `coffer rotate` can start again. A
//! wipe erases a staged header like the live one.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::app::{files_dir, AppInfo, FILES_DIR};
use crate::error::{Error, Result};
use crate::fsio::{self, FileLock};
use crate::recovery::RecoveryKey;
use crate::secret::Subkey;
use crate::space::{HEADER_FILE, LOCK_FILE};
use crate::store::catalog::{Catalog, CATALOG_FILE, DATA_DIR};
use crate::store::database;
use crate::store::files::FileStore;
use crate::subkey::Purpose;

/// Where a rotation stages the re-encrypted stores before its commit.
pub(crate) const STAGING_DIR: &str = ".rotate.tmp";
/// A committed rotation whose files are not all in place yet.
pub(crate) const COMMITTED_DIR: &str = ".rotate";
/// Held shared by every unlocked vault, exclusively by a rotation.
pub(crate) const DATA_LOCK_FILE: &str = ".data.lock";

/// How far a rotation has got, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationProgress {
    /// Bytes re-encrypted so far.
    pub done: u64,
    /// Bytes to re-encrypt in all (databases and files).
    pub total: u64,
}

/// Whether a committed rotation awaits its roll-forward.
pub(crate) fn is_committed(dir: &Path) -> bool {
    dir.join(COMMITTED_DIR).exists()
}

/// Finishes a committed rotation, if there is one. Needs no key.
pub(crate) fn finish_pending(dir: &Path) -> Result<()> {
    if !is_committed(dir) {
        return Ok(());
    }
    let _lock = FileLock::acquire(&dir.join(LOCK_FILE))?;
    roll_forward(dir, usize::MAX)
}

/// Removes the leftovers of a rotation that never committed. Only call it
/// while holding the data lock (shared or exclusive): no rotation can then
/// be staging.
pub(crate) fn discard_staging(dir: &Path) {
    let staging = dir.join(STAGING_DIR);
    if staging.exists() {
        let _ = fs::remove_dir_all(&staging);
        let _ = fsio::sync_dir(dir);
    }
}

/// Step 3: moves every file of `.rotate/` into place, the header last, then
/// removes `.rotate/`. Call with the vault lock held. `limit` stops after
/// that many renames (tests use it to leave a half-finished roll-forward).
pub(crate) fn roll_forward(dir: &Path, limit: usize) -> Result<()> {
    let committed = dir.join(COMMITTED_DIR);
    if !committed.exists() {
        return Ok(());
    }
    let mut files = Vec::new();
    collect_files(&committed, PathBuf::new(), &mut files)?;
    let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
    let staged = files
        .iter()
        .filter(|r| r.as_path() != Path::new(HEADER_FILE));
    for (moved, relative) in staged.enumerate() {
        if moved == limit {
            return Ok(());
        }
        let target = dir.join(relative);
        let parent = target.parent().unwrap_or(dir).to_path_buf();
        fsio::create_private_dir_all(&parent)?;
        if relative.extension().is_some_and(|e| e == "db") {
            // The staged copy was exported through the old database's own
            // connection, so it holds what the old -wal held; that -wal must
            // not be replayed onto the new file.
            for suffix in ["-wal", "-shm"] {
                let mut side = target.clone().into_os_string();
                side.push(suffix);
                remove_if_present(Path::new(&side))?;
            }
        }
        fs::rename(committed.join(relative), &target)
            .map_err(|e| Error::io("rotating", &target, e))?;
        touched.insert(parent);
    }
    for parent in &touched {
        fsio::sync_dir(parent)?;
    }
    let header = committed.join(HEADER_FILE);
    if header.exists() {
        let target = dir.join(HEADER_FILE);
        fs::rename(&header, &target).map_err(|e| Error::io("rotating", &target, e))?;
        fsio::sync_dir(dir)?;
    }
    fs::remove_dir_all(&committed).map_err(|e| Error::io("rotating", &committed, e))?;
    fsio::sync_dir(dir)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("rotating", path, e)),
    }
}

/// Every regular file under `root`, as paths relative to it, sorted. Links
/// and other odd entries are ignored: rotation never creates them.
fn collect_files(root: &Path, relative: PathBuf, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(&relative);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| Error::io("rotating", &dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("rotating", &dir, e))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let kind = entry
            .file_type()
            .map_err(|e| Error::io("rotating", entry.path(), e))?;
        let path = relative.join(entry.file_name());
        if kind.is_dir() {
            collect_files(root, path, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Fsyncs every file and directory under `root` (and `root` itself): the
/// staged copy must be durable before the commit makes it the vault.
pub(crate) fn sync_tree(root: &Path) -> Result<()> {
    let mut files = Vec::new();
    collect_files(root, PathBuf::new(), &mut files)?;
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    dirs.insert(root.to_path_buf());
    for relative in &files {
        let path = root.join(relative);
        fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("rotating", &path, e))?;
        let mut parent = path.parent();
        while let Some(p) = parent {
            if !p.starts_with(root) || !dirs.insert(p.to_path_buf()) {
                break;
            }
            parent = p.parent();
        }
    }
    for dir in dirs.iter().rev() {
        fsio::sync_dir(dir)?;
    }
    Ok(())
}

/// Removes what no app of the catalog refers to — a crashed import's
/// database and blobs, a crashed export's snapshot — which would otherwise
/// stay behind under the old key. Safe only under the exclusive data lock:
/// an import or export in progress holds the lock shared.
fn remove_unreferenced(dir: &Path, apps: &[AppInfo]) -> Result<()> {
    let databases: BTreeSet<&str> = apps.iter().map(|a| a.db_file.as_str()).collect();
    let data = dir.join(DATA_DIR);
    for entry in fs::read_dir(&data).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let base = ["-wal", "-shm", "-journal"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        if !databases.contains(base) {
            remove_entry(&entry.path())?;
        }
    }
    let blob_dirs: BTreeSet<PathBuf> = apps.iter().map(|a| files_dir(dir, a)).collect();
    let files = dir.join(FILES_DIR);
    for entry in fs::read_dir(&files).into_iter().flatten().flatten() {
        if !blob_dirs.contains(&entry.path()) {
            remove_entry(&entry.path())?;
        }
    }
    Ok(())
}

fn remove_entry(path: &Path) -> Result<()> {
    let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let removed = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(|e| Error::io("removing leftovers", path, e))
}

/// What staging re-encrypted.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Staged {
    pub(crate) databases: usize,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Step 1 (the stores; the caller adds the header): writes a copy of every
/// store of the vault in `dir` under the keys `new` derives, into
/// `.rotate.tmp/`. `old` derives the live keys. Orphan blobs (left by a crash
/// in the middle of a put) are deleted first, so that no blob stays behind
/// under the old key.
pub(crate) fn stage_stores(
    dir: &Path,
    old: &dyn Fn(Purpose<'_>) -> Result<Subkey>,
    new: &dyn Fn(Purpose<'_>) -> Result<Subkey>,
    progress: &mut dyn FnMut(RotationProgress),
) -> Result<Staged> {
    let staging = dir.join(STAGING_DIR);
    fsio::create_private_dir(&staging)?;
    let catalog_path = dir.join(CATALOG_FILE);
    if !catalog_path.exists() {
        // No app was ever added: the header is all there is to rotate.
        return Ok(Staged::default());
    }
    let catalog = Catalog::open(dir, &old(Purpose::Catalog)?)?;

    // Open every live store first, to know the total for the progress bar.
    struct Live {
        info: AppInfo,
        db_path: PathBuf,
        db_bytes: u64,
        files: Option<FileStore>,
        conn: Option<rusqlite::Connection>,
    }
    let apps = catalog.list()?;
    remove_unreferenced(dir, &apps)?;
    let mut live = Vec::new();
    let mut total = file_len(&catalog_path);
    for info in apps {
        let db_path = catalog.database_path(&info);
        if !db_path.exists() {
            // Added but never opened: nothing stored yet.
            continue;
        }
        let conn = database::open(&db_path, &old(Purpose::AppDatabase(&info.id))?, false)?;
        let has_files: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'coffer_files'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| Error::database("rotating", e))?
            > 0;
        let db_bytes = file_len(&db_path);
        total += db_bytes;
        let (files, conn) = if has_files {
            let store = FileStore::open(
                conn,
                files_dir(dir, &info),
                old(Purpose::AppFiles(&info.id))?,
            )?;
            store.remove_orphans()?;
            total += store.total_size()?;
            (Some(store), None)
        } else {
            (None, Some(conn))
        };
        live.push(Live {
            info,
            db_path,
            db_bytes,
            files,
            conn,
        });
    }

    let mut done = 0u64;
    progress(RotationProgress { done, total });
    catalog.snapshot(&staging.join(CATALOG_FILE), &new(Purpose::Catalog)?)?;
    done += file_len(&catalog_path);
    progress(RotationProgress { done, total });

    let mut staged = Staged {
        databases: 1,
        ..Staged::default()
    };
    fsio::create_private_dir(&staging.join(DATA_DIR))?;
    for app in live {
        let relative = app
            .db_path
            .strip_prefix(dir)
            .map_err(|_| Error::NotPermitted("an app database lies outside its vault directory"))?;
        let staged_db = staging.join(relative);
        let new_db_key = new(Purpose::AppDatabase(&app.info.id))?;
        let conn = match (&app.files, &app.conn) {
            (Some(store), _) => store.connection(),
            (None, Some(conn)) => conn,
            (None, None) => continue,
        };
        database::snapshot(conn, &staged_db, new_db_key.expose_secret())?;
        done += app.db_bytes;
        staged.databases += 1;
        progress(RotationProgress { done, total });
        if let Some(old_files) = &app.files {
            let files_relative = files_dir(dir, &app.info)
                .strip_prefix(dir)
                .map(Path::to_path_buf)
                .map_err(|_| {
                    Error::NotPermitted("an app's files lie outside its vault directory")
                })?;
            let staged_files = FileStore::open(
                database::open(&staged_db, &new_db_key, false)?,
                staging.join(files_relative),
                new(Purpose::AppFiles(&app.info.id))?,
            )?;
            staged.files += staged_files.reencrypt_from(old_files, &mut |bytes| {
                done += bytes;
                progress(RotationProgress { done, total });
            })?;
            // Back to a single file: the staged copy must not need a -wal.
            staged_files
                .connection()
                .execute_batch("PRAGMA journal_mode = DELETE;")
                .map_err(|e| Error::database("rotating", e))?;
        }
    }
    staged.bytes = done;
    Ok(staged)
}

/// What a rotation does besides re-encrypting: which new slots it adds.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RotateOptions {
    /// Adds a recovery slot of this name under the new key; its key is in
    /// the report, to be shown once (every old recovery slot is retired).
    pub recovery_slot: Option<String>,
    /// Gives every retired passphrase slot a single-use temporary key of
    /// the same name, valid until this time: its user opens the vault with
    /// it once and sets a new passphrase.
    pub reset_keys_until: Option<std::time::SystemTime>,
}

impl RotateOptions {
    /// Adds a recovery slot called `name`.
    pub fn with_recovery_slot(mut self, name: &str) -> Self {
        self.recovery_slot = Some(name.to_owned());
        self
    }

    /// Issues single-use reset keys for retired passphrase slots, valid
    /// until `until`.
    pub fn with_reset_keys_until(mut self, until: std::time::SystemTime) -> Self {
        self.reset_keys_until = Some(until);
        self
    }
}

/// What a rotation did. Holds the new keys it issued: show them once.
#[non_exhaustive]
pub struct RotationReport {
    /// Slots rewrapped under the new key (their secret was given).
    pub kept: Vec<String>,
    /// Slots whose secret was not given: gone with the old key.
    pub retired: Vec<String>,
    /// The new recovery slot's name and key, if one was asked for.
    pub recovery_key: Option<(String, RecoveryKey)>,
    /// One single-use temporary key per retired passphrase slot, by name.
    pub reset_keys: Vec<(String, RecoveryKey)>,
    /// Databases re-encrypted (the catalog included).
    pub databases: usize,
    /// Stored files re-encrypted.
    pub files: usize,
    /// Bytes re-encrypted in all.
    pub bytes: u64,
}

impl std::fmt::Debug for RotationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotationReport")
            .field("kept", &self.kept)
            .field("retired", &self.retired)
            .field("recovery_slot", &self.recovery_key.as_ref().map(|(n, _)| n))
            .field(
                "reset_keys",
                &self.reset_keys.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("databases", &self.databases)
            .field("files", &self.files)
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// Where a test stops a rotation, to leave the state a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum StopAt {
    Never,
    AfterStaging,
    AfterCommit,
    AfterRenames(usize),
}
