//! Backup and restore of a server on SQLite (docs/server.md, "Backup and
//! restore"): a consistent copy of the database taken while the server
//! runs (SQLite's online backup API), the sealed file pieces of a local
//! blob directory, and the development TLS certificate if there is one; and
//! the restore onto a fresh machine, which checks before it writes that the
//! copy is whole, that the master key given is the database's, and that the
//! audit trail verifies.
//!
//! The master key is never in a backup: it is kept apart, as it is kept off
//! the database's disk. PostgreSQL is backed up with its own tools
//! (`pg_dump`, or base backups with WAL archiving).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{Keyring, CHECK_CONTEXT, CHECK_PLAINTEXT};
use crate::store::Store;

/// The manifest's name inside a backup directory.
pub const MANIFEST: &str = "backup.json";
/// The database copy's name inside a backup directory.
pub const DATABASE: &str = "server.db";
/// The blob pieces' directory inside a backup directory.
pub const BLOBS: &str = "blobs";
/// The manifest's `format`.
pub const FORMAT: &str = "coffer-server-backup";
/// The manifest's version this server writes and reads.
pub const VERSION: u32 = 1;
/// The development certificate and key kept beside the default database.
const DEV_TLS_FILES: [&str; 2] = [crate::tls::DEV_CERT, "dev-tls-key.pem"];
/// The largest manifest read (it is a few hundred bytes).
const MAX_MANIFEST: u64 = 64 * 1024;

/// Why a backup or a restore was refused or failed. Never holds a secret:
/// paths and fixed words.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Only SQLite databases are backed up here.
    #[error("a PostgreSQL database is backed up with PostgreSQL's own tools (pg_dump, or base backups with WAL archiving): see docs/server.md, \"Backup and restore\"")]
    Postgres,
    /// The target is in use.
    #[error("{path} already exists and is not empty: restore or back up into a new place")]
    TargetExists {
        /// The target.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("{op} {path}: {message}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's words.
        message: String,
    },
    /// SQLite failed or refused.
    #[error("{op}: {message}")]
    Sqlite {
        /// What was being done.
        op: &'static str,
        /// SQLite's words.
        message: String,
    },
    /// The backup directory is not a backup this server can read.
    #[error("not a usable backup: {0}")]
    NotABackup(String),
    /// The backup's database is not the one the manifest describes, or
    /// fails SQLite's integrity check.
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    /// The master key given does not open the backup's sealed values.
    #[error("the master key given is not this database's: the signing and escrow keys in it would be lost. Give the master key file the server ran with (--master-key-file)")]
    WrongMasterKey,
    /// The restored audit trail does not verify.
    #[error("the backup's audit trail does not verify ({0}): refusing to restore it as trusted")]
    AuditBroken(String),
    /// The database could not be opened as a server store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn io<'p>(op: &'static str, path: &'p Path) -> impl Fn(std::io::Error) -> BackupError + 'p {
    move |e| BackupError::Io {
        op,
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn sqlite(op: &'static str) -> impl Fn(rusqlite::Error) -> BackupError {
    move |e| BackupError::Sqlite {
        op,
        message: e.to_string(),
    }
}

/// `backup.json`: what the backup holds, for the restore's checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// When the database copy was taken, Unix seconds.
    pub created_at: i64,
    /// Always `"sqlite"`.
    pub backend: String,
    /// The highest migration applied to the copied database.
    pub schema_version: i64,
    /// The database copy.
    pub database: DatabaseCopy,
    /// The local blob directory's pieces (`None`: no local blob directory,
    /// e.g. files kept in S3, which are backed up with the bucket).
    pub blobs: Option<BlobCopy>,
    /// Whether the development TLS certificate and key are in it.
    pub dev_tls: bool,
}

/// The database file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseCopy {
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of the file, lower-case hex: catches a copy damaged since.
    pub sha256: String,
}

/// The pieces of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobCopy {
    /// How many pieces.
    pub pieces: u64,
    /// Their total size.
    pub bytes: u64,
}

/// Where a server on SQLite keeps its state.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// The SQLite database file.
    pub database: PathBuf,
    /// The local blob directory (`None`: blobs are in S3).
    pub blob_dir: Option<PathBuf>,
    /// Where a development TLS certificate is kept (`None`: none).
    pub dev_tls_dir: Option<PathBuf>,
}

/// What a restore checked and placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The manifest of the backup.
    pub manifest: Manifest,
    /// Audit rows whose chain and MACs verified.
    pub audit_rows: u64,
}

/// The SQLite file a database URL names, or why it is not backed up here.
pub fn sqlite_file(database_url: &str) -> Result<PathBuf, BackupError> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        return Err(BackupError::Postgres);
    }
    // The path as the server itself reads the URL.
    crate::serve::sqlite_path(database_url)
        .ok_or_else(|| BackupError::NotABackup("the database URL names no SQLite file".into()))
}

fn now_unix() -> i64 {
    crate::store::now_unix()
}

fn private_dir(path: &Path) -> Result<(), BackupError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path).map_err(io("making", path))
}

fn private_file(path: &Path) -> Result<fs::File, BackupError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(io("creating", path))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

/// Whether `path` is missing or an empty directory.
fn is_free(path: &Path) -> bool {
    match fs::read_dir(path) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Copies one file into a new private file and syncs it; its size.
fn copy_file(from: &Path, to: &Path) -> Result<u64, BackupError> {
    let mut source = fs::File::open(from).map_err(io("reading", from))?;
    let mut target = private_file(to)?;
    let n = std::io::copy(&mut source, &mut target).map_err(io("writing", to))?;
    target.sync_all().map_err(io("syncing", to))?;
    Ok(n)
}

/// Copies the pieces under `from` that `to` does not have yet (pieces are
/// never changed once written, only added and deleted); skips a writer's
/// temporary files (dot names). Returns the pieces and bytes now in `to`.
fn copy_pieces(from: &Path, to: &Path, copied: &mut BlobCopy) -> Result<(), BackupError> {
    private_dir(to)?;
    let entries = match fs::read_dir(from) {
        Ok(entries) => entries,
        // A piece's directory deleted while we copy: nothing to take.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("listing", from)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("listing", from))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        let kind = entry.file_type().map_err(io("reading", &source))?;
        if kind.is_dir() {
            copy_pieces(&source, &target, copied)?;
        } else if kind.is_file() && !target.exists() {
            match copy_file(&source, &target) {
                Ok(n) => {
                    copied.pieces += 1;
                    copied.bytes += n;
                }
                // Deleted between the listing and the copy.
                Err(BackupError::Io { .. }) if !source.exists() => {
                    let _ = fs::remove_file(&target);
                }
                Err(e) => return Err(e),
            }
        }
    }
    sync_dir(to)
}

fn sha256_file(path: &Path) -> Result<String, BackupError> {
    let mut file = fs::File::open(path).map_err(io("reading", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// SQLite's integrity check of the file at `path`.
fn integrity(path: &Path) -> Result<(), BackupError> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite("opening the copy"))?;
    let answer: String = conn
        .query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))
        .map_err(|e| BackupError::Damaged(e.to_string()))?;
    if answer != "ok" {
        return Err(BackupError::Damaged(answer));
    }
    Ok(())
}

fn schema_version(conn: &rusqlite::Connection) -> Result<i64, BackupError> {
    conn.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )
    .map_err(|e| BackupError::NotABackup(format!("not a coffer server database ({e})")))
}

/// The online copy of the database at `from` into `to`: one backup step
/// over every page, so the copy is the database as of one transaction,
/// while the server goes on writing (WAL readers do not block writers).
fn copy_database(from: &Path, to: &Path) -> Result<i64, BackupError> {
    use rusqlite::backup::{Backup, StepResult};
    let source = rusqlite::Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite("opening the database"))?;
    source
        .busy_timeout(Duration::from_secs(10))
        .map_err(sqlite("opening the database"))?;
    let version = schema_version(&source)?;
    drop(private_file(to)?);
    let mut target = rusqlite::Connection::open(to).map_err(sqlite("opening the copy"))?;
    {
        let backup = Backup::new(&source, &mut target).map_err(sqlite("starting the backup"))?;
        let mut tries = 0;
        loop {
            match backup.step(-1).map_err(sqlite("copying the database"))? {
                StepResult::Done => break,
                StepResult::More => continue,
                // The server holds a lock for a moment: try again.
                StepResult::Busy | StepResult::Locked if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(BackupError::Sqlite {
                        op: "copying the database",
                        message: "the database stayed locked for 10 s".into(),
                    })
                }
            }
        }
    }
    // The copy stands alone: no -wal beside it.
    target
        .query_row("PRAGMA journal_mode = DELETE", [], |r| {
            r.get::<_, String>(0)
        })
        .map_err(sqlite("finishing the copy"))?;
    drop(target);
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing", to))?;
    Ok(version)
}

/// Backs up the server whose files are `server` into the new directory
/// `out` (made 0700): pieces first, then the database, then the pieces
/// written meanwhile, so every piece the copied database names is in it
/// unless it was deleted in the seconds between the two (docs/server.md).
pub fn backup(server: &ServerFiles, out: &Path) -> Result<Manifest, BackupError> {
    if !is_free(out) {
        return Err(BackupError::TargetExists {
            path: out.to_owned(),
        });
    }
    if !server.database.is_file() {
        return Err(BackupError::Io {
            op: "reading",
            path: server.database.clone(),
            message: "no such database file".into(),
        });
    }
    if let Some(dir) = &server.blob_dir {
        if !dir.is_dir() {
            return Err(BackupError::Io {
                op: "reading",
                path: dir.clone(),
                message: "no such blob directory (give the server's --blob-dir, or --blobs-in-s3)"
                    .into(),
            });
        }
    }
    private_dir(out)?;
    let mut blobs = server.blob_dir.as_ref().map(|_| BlobCopy {
        pieces: 0,
        bytes: 0,
    });
    if let (Some(dir), Some(copied)) = (&server.blob_dir, blobs.as_mut()) {
        copy_pieces(dir, &out.join(BLOBS), copied)?;
    }
    let created_at = now_unix();
    let database = out.join(DATABASE);
    let schema_version = copy_database(&server.database, &database)?;
    integrity(&database)?;
    if let (Some(dir), Some(copied)) = (&server.blob_dir, blobs.as_mut()) {
        copy_pieces(dir, &out.join(BLOBS), copied)?;
    }
    let mut dev_tls = false;
    if let Some(dir) = &server.dev_tls_dir {
        if DEV_TLS_FILES.iter().all(|f| dir.join(f).is_file()) {
            for file in DEV_TLS_FILES {
                copy_file(&dir.join(file), &out.join(file))?;
            }
            dev_tls = true;
        }
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        created_at,
        backend: "sqlite".into(),
        schema_version,
        database: DatabaseCopy {
            bytes: fs::metadata(&database)
                .map_err(io("reading", &database))?
                .len(),
            sha256: sha256_file(&database)?,
        },
        blobs,
        dev_tls,
    };
    let path = out.join(MANIFEST);
    let mut file = private_file(&path)?;
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Io {
        op: "writing",
        path: path.clone(),
        message: e.to_string(),
    })?;
    file.write_all(&text)
        .and_then(|_| file.sync_all())
        .map_err(io("writing", &path))?;
    sync_dir(out)?;
    Ok(manifest)
}

/// A scratch database and its -wal and -shm files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn remove(&self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Reads and checks a backup's manifest.
pub fn read_manifest(from: &Path) -> Result<Manifest, BackupError> {
    let path = from.join(MANIFEST);
    let file = fs::File::open(&path)
        .map_err(|e| BackupError::NotABackup(format!("{} cannot be read: {e}", path.display())))?;
    let mut text = Vec::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_end(&mut text)
        .map_err(io("reading", &path))?;
    if text.len() as u64 > MAX_MANIFEST {
        return Err(BackupError::NotABackup(format!(
            "{MANIFEST} is larger than {MAX_MANIFEST} bytes"
        )));
    }
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| BackupError::NotABackup(format!("{MANIFEST}: {e}")))?;
    if manifest.format != FORMAT || manifest.backend != "sqlite" {
        return Err(BackupError::NotABackup(format!(
            "{MANIFEST} is not a coffer server backup of SQLite"
        )));
    }
    if manifest.version != VERSION {
        return Err(BackupError::NotABackup(format!(
            "backup format version {} (this server reads {VERSION})",
            manifest.version
        )));
    }
    Ok(manifest)
}

/// Checks the backup in `from` against `keys` and the manifest, then places
/// it: the database at `server.database`, the pieces under
/// `server.blob_dir`, a development certificate in `server.dev_tls_dir`.
/// Refuses to overwrite anything. Nothing is placed unless every check
/// passes: the copy's SHA-256 and SQLite's integrity check, the master key
/// check, and the whole audit trail's chain and MACs.
pub async fn restore(
    from: &Path,
    server: &ServerFiles,
    keys: &Keyring,
) -> Result<Restored, BackupError> {
    let manifest = read_manifest(from)?;
    // Every source first: nothing is placed from a backup that is missing
    // a part.
    if manifest.blobs.is_some() && server.blob_dir.is_none() {
        return Err(BackupError::NotABackup(
            "this backup holds file pieces: restore them into a blob directory (--blob-dir), not with --blobs-in-s3".into(),
        ));
    }
    if let Some(expected) = manifest.blobs {
        let mut found = BlobCopy {
            pieces: 0,
            bytes: 0,
        };
        count_pieces(&from.join(BLOBS), &mut found)?;
        if found != expected {
            return Err(BackupError::Damaged(format!(
                "{BLOBS}/ holds {} piece(s) of {} bytes, the manifest {} of {}",
                found.pieces, found.bytes, expected.pieces, expected.bytes
            )));
        }
    }
    if manifest.dev_tls && DEV_TLS_FILES.iter().any(|f| !from.join(f).is_file()) {
        return Err(BackupError::Damaged(
            "the development certificate the manifest names is missing".into(),
        ));
    }
    for target in [Some(&server.database), server.blob_dir.as_ref()]
        .into_iter()
        .flatten()
    {
        if !is_free(target) {
            return Err(BackupError::TargetExists {
                path: target.clone(),
            });
        }
    }
    // SQLite would replay a stale journal onto the restored file.
    for suffix in ["-wal", "-shm", "-journal"] {
        let beside = PathBuf::from(format!("{}{suffix}", server.database.display()));
        if beside.exists() {
            return Err(BackupError::TargetExists { path: beside });
        }
    }
    if let Some(dir) = &server.dev_tls_dir {
        if manifest.dev_tls && DEV_TLS_FILES.iter().any(|f| dir.join(f).exists()) {
            return Err(BackupError::TargetExists {
                path: dir.join(crate::tls::DEV_CERT),
            });
        }
    }
    let parent = server
        .database
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    private_dir(&parent)?;
    let name = server
        .database
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| DATABASE.into());
    // The database is copied once, beside its target; those very bytes are
    // hashed, checked and placed.
    let partial = Scratch(parent.join(format!(".{name}.restoring")));
    partial.remove();
    copy_file(&from.join(DATABASE), &partial.0)?;
    if sha256_file(&partial.0)? != manifest.database.sha256 {
        return Err(BackupError::Damaged(format!(
            "{DATABASE} is not the file the manifest describes"
        )));
    }
    integrity(&partial.0)?;
    // The keyed checks run on a scratch copy (opening a store migrates it).
    let scratch = Scratch(parent.join(format!(".{name}.restore-check")));
    scratch.remove();
    copy_file(&partial.0, &scratch.0)?;
    let audit_rows = {
        let store = Store::open(&scratch.0.display().to_string()).await?;
        let check = store.master_key_check().await?;
        let opens = check.as_deref().is_some_and(|check| {
            keys.open(CHECK_CONTEXT, check)
                .is_ok_and(|plain| *plain == *CHECK_PLAINTEXT)
        });
        if !opens {
            return Err(BackupError::WrongMasterKey);
        }
        let rows = store.audit_rows().await?;
        let report = crate::audit::check_chain(&rows, keys);
        if let Some(problem) = report.problem {
            return Err(BackupError::AuditBroken(problem));
        }
        report.rows
    };
    drop(scratch);
    // The pieces into a staging directory beside their target, renamed
    // into place whole; then the certificate; the database last. A restore
    // interrupted before the database is placed can be run again: what it
    // staged is replaced, and an empty target is taken over.
    if let (Some(dir), Some(_)) = (&server.blob_dir, manifest.blobs) {
        let staging = staging_dir(dir);
        let _ = fs::remove_dir_all(&staging);
        let mut copied = BlobCopy {
            pieces: 0,
            bytes: 0,
        };
        copy_pieces(&from.join(BLOBS), &staging, &mut copied)?;
        if dir.exists() {
            // Empty (checked above): rename needs it gone.
            fs::remove_dir(dir).map_err(io("replacing", dir))?;
        }
        fs::rename(&staging, dir).map_err(io("placing", dir))?;
    }
    if let (Some(dir), true) = (&server.dev_tls_dir, manifest.dev_tls) {
        private_dir(dir)?;
        for file in DEV_TLS_FILES {
            let _ = fs::remove_file(dir.join(format!(".{file}.restoring")));
            let staged = dir.join(format!(".{file}.restoring"));
            copy_file(&from.join(file), &staged)?;
            place_new(&staged, &dir.join(file))?;
        }
    }
    place_new(&partial.0, &server.database)?;
    sync_dir(&parent)?;
    Ok(Restored {
        manifest,
        audit_rows,
    })
}

/// Where the pieces are staged before they are renamed to `dir`.
fn staging_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| BLOBS.into());
    dir.with_file_name(format!(".{name}.restoring"))
}

/// Moves `from` to `to`, never over a file that appeared meanwhile (a hard
/// link fails where a rename would replace).
fn place_new(from: &Path, to: &Path) -> Result<(), BackupError> {
    fs::hard_link(from, to).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => BackupError::TargetExists {
            path: to.to_owned(),
        },
        _ => io("placing", to)(e),
    })?;
    fs::remove_file(from).map_err(io("placing", to))
}

/// The pieces and bytes under `dir` (dot names, a writer's temporaries,
/// are not pieces).
fn count_pieces(dir: &Path, found: &mut BlobCopy) -> Result<(), BackupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("listing", dir))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(io("reading", &entry.path()))?;
        if kind.is_dir() {
            count_pieces(&entry.path(), found)?;
        } else if kind.is_file() {
            found.pieces += 1;
            found.bytes += entry
                .metadata()
                .map_err(io("reading", &entry.path()))?
                .len();
        }
    }
    Ok(())
}
