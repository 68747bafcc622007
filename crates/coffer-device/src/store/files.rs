//! The file store: large blobs (photos, documents) encrypted in the chunked
//! format of [`crate::stream`], outside the database, under random names.
//!
//! The app's database (table `coffer_files`) maps each real name to its blob
//! and records its size, content type, the SHA-256 of its plaintext (what
//! sync names it by) and the blob's salt. The salt check on
//! every read binds the name to exactly one encryption: a blob swapped for an
//! older encryption of the same file, or for another of the app's files, is
//! refused, even though the app's key would decrypt it.
//!
//! Replacing a file is atomic: the new blob is written to a temporary file,
//! fsynced and renamed into place, then the database row is switched in one
//! transaction, then the old blob is removed. A crash leaves the old or the
//! new version readable, and at worst an orphan blob (encrypted, never
//! referenced) that [`FileStore::remove_orphans`] deletes.
//!
//! A file can also arrive in pieces from elsewhere (files sync):
//! [`FileStore::download`] writes into a temporary blob of the same format,
//! recorded in `coffer_file_downloads` so that a killed process or a cut
//! connection resumes from the last whole chunk, and switches the stored
//! file exactly like a put once the whole SHA-256 matches. Table
//! `coffer_file_queue` holds the downloads that pulled records asked for;
//! a put or a delete here takes its name off the queue and drops its
//! unfinished download, in the same transaction.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsio;
use crate::secret::Subkey;
use crate::store::catalog::to_system_time;
use crate::stream::{
    is_torn_mismatch, scan_for_resume, ChunkReader, ChunkWriter, FileCorruptKind, Resumable,
    SALT_LEN,
};

/// Longest file name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// A stored file, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The file's real name (only inside the encrypted database).
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Content type given when stored (e.g. "image/jpeg"), if any.
    pub content_type: Option<String>,
    /// SHA-256 of the plaintext, 64 lower-case hex digits. `None` only for
    /// a file stored before coffer recorded it, until
    /// [`FileStore::sha256`] works it out (and records it).
    pub sha256: Option<String>,
    /// When this version was stored.
    pub updated_at: std::time::SystemTime,
}

/// Why a download was refused ([`Error::DownloadMismatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadMismatchKind {
    /// More bytes than the declared size.
    #[error("more bytes than its declared size")]
    TooLong,
    /// The whole file's SHA-256 is not the declared one.
    #[error("its SHA-256 is not the declared one")]
    Sha256,
    /// The bytes of a chunk an interruption cut are not the ones written
    /// before it (the source changed between the two attempts).
    #[error("bytes sent again after an interruption differ from the first ones")]
    Rewritten,
    /// The file was stored or deleted here (or a download of another
    /// version of it started) while it downloaded: the local version is
    /// the user's, and this download is dropped.
    #[error("the file was stored or deleted here meanwhile")]
    Superseded,
}

/// A file that a pulled record references and that this device does not
/// hold at that version yet: a download waiting (table
/// `coffer_file_queue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedDownload {
    /// The file's name in the store.
    pub name: String,
    /// The version wanted: SHA-256 of its plaintext, 64 lower-case hex digits.
    pub sha256: String,
    /// Its size, bytes.
    pub size: u64,
    /// Its content type, kept with the stored file.
    pub content_type: Option<String>,
    /// Failed attempts so far at this version.
    pub attempts: u32,
    /// Why the last attempt failed (a stable code such as `not_found` or
    /// `download_mismatch`), if one did.
    pub last_failure: Option<String>,
}

/// The tables of the file store and of its downloads. `coffer_files` had
/// no `sha256` column before files sync: [`ensure_schema`] adds it.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS coffer_files (
        name TEXT PRIMARY KEY,
        blob TEXT NOT NULL UNIQUE,
        salt TEXT NOT NULL,
        size INTEGER NOT NULL,
        content_type TEXT,
        updated_at INTEGER NOT NULL,
        sha256 TEXT
    ) STRICT;
    CREATE TABLE IF NOT EXISTS coffer_file_downloads (
        name TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        content_type TEXT,
        temp TEXT NOT NULL UNIQUE,
        salt TEXT NOT NULL,
        started_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS coffer_file_queue (
        name TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        content_type TEXT,
        queued_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_failure TEXT
    ) STRICT;";

/// Creates the file store's tables where missing, and the `sha256` column
/// of a `coffer_files` made before it. Inside a caller's transaction it
/// is part of that transaction; outside one, two processes may race to add
/// the column, and the loser finds it there.
pub(crate) fn ensure_schema(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)
        .map_err(db("creating the file store"))?;
    let has_column = |conn: &Connection| -> Result<bool> {
        conn.query_row(
            "SELECT count(*) FROM pragma_table_info('coffer_files') WHERE name = 'sha256'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(db("creating the file store"))
    };
    if !has_column(conn)? {
        if let Err(e) = conn.execute_batch("ALTER TABLE coffer_files ADD COLUMN sha256 TEXT") {
            if !has_column(conn)? {
                return Err(Error::database("creating the file store", e));
            }
        }
    }
    Ok(())
}

/// The SHA-256 (hex) recorded for `name`, worked out from its blob and
/// recorded if the row predates the column; `None` if no file has that
/// name. The blob is read outside any transaction: a file replaced
/// meanwhile keeps the hash its own put recorded.
pub(crate) fn stored_sha256(
    conn: &Connection,
    dir: &Path,
    key: &Subkey,
    name: &str,
) -> Result<Option<String>> {
    let row: Option<(String, String, i64, Option<String>)> = conn
        .query_row(
            "SELECT blob, salt, size, sha256 FROM coffer_files WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(db("reading file metadata"))?;
    let Some((blob, salt, size, sha256)) = row else {
        return Ok(None);
    };
    if let Some(sha256) = sha256 {
        return Ok(Some(sha256));
    }
    let mut reader = open_blob(dir, key, &blob, &salt, size)?;
    let mut hasher = Sha256::new();
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 256 * 1024]);
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::from_read("reading a stored file", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let sha256 = hex(&hasher.finalize());
    conn.execute(
        "UPDATE coffer_files SET sha256 = ?1 WHERE name = ?2 AND blob = ?3 AND sha256 IS NULL",
        params![sha256, name, blob],
    )
    .map_err(db("recording a file's SHA-256"))?;
    Ok(Some(sha256))
}

/// Within a pull's transaction: asks for each of `files` (name, SHA-256,
/// size, content type) that the store does not hold at that SHA-256 to be
/// downloaded; a name held at that version leaves the queue (the latest
/// pulled record wins). Returns how many were queued.
pub(crate) fn queue_missing(
    tx: &Connection,
    files: &[crate::store::records::FileRef],
) -> Result<usize> {
    let mut queued = 0;
    for file in files {
        let held: Option<Option<String>> = tx
            .prepare_cached("SELECT sha256 FROM coffer_files WHERE name = ?1")
            .and_then(|mut s| s.query_row([&file.name], |r| r.get(0)).optional())
            .map_err(db("queueing a download"))?;
        if held.flatten().as_deref() == Some(file.sha256.as_str()) {
            tx.prepare_cached("DELETE FROM coffer_file_queue WHERE name = ?1")
                .and_then(|mut s| s.execute([&file.name]))
                .map_err(db("queueing a download"))?;
            continue;
        }
        // A file stored before hashes were recorded is queued too: the
        // agent works its hash out before it fetches anything.
        tx.prepare_cached(
            "INSERT INTO coffer_file_queue
                 (name, sha256, size, content_type, queued_at, attempts, last_failure)
             VALUES (?1, ?2, ?3, ?4, unixepoch(), 0, NULL)
             ON CONFLICT (name) DO UPDATE SET
                 attempts = CASE WHEN sha256 = excluded.sha256 THEN attempts ELSE 0 END,
                 last_failure = CASE WHEN sha256 = excluded.sha256 THEN last_failure END,
                 sha256 = excluded.sha256, size = excluded.size,
                 content_type = excluded.content_type, queued_at = excluded.queued_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                file.name,
                file.sha256,
                i64::try_from(file.size).unwrap_or(i64::MAX),
                file.content_type
            ])
        })
        .map_err(db("queueing a download"))?;
        queued += 1;
    }
    Ok(queued)
}

/// An app's file store.
pub struct FileStore {
    conn: Connection,
    dir: PathBuf,
    key: Subkey,
}

/// A stored file opened for reading: sequentially ([`Read`]), or at any
/// offset ([`ChunkReader::read_at`], [`std::io::Seek`]).
pub type FileReader = ChunkReader<BufReader<File>>;

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::database(op, e)
}

fn random_name() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A blob name from the database must be exactly what `put` writes (32
/// lowercase hex digits) before it is joined to a path: a crafted database
/// must not be able to point outside the blob directory.
fn check_blob(blob: &str) -> Result<()> {
    if blob.len() == 32 && blob.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(Error::FileCorrupt(FileCorruptKind::Replaced))
    }
}

/// Whether `text` is a SHA-256 as the store records it: 64 lower-case hex
/// digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_sha256(sha256: &str) -> Result<()> {
    if is_sha256_hex(sha256) {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "file SHA-256",
            name: String::new(),
            rule: "must be 64 lower-case hex digits",
        })
    }
}

/// The name of a download's temporary blob (its `temp` is 32 hex digits,
/// checked first): hidden, and told apart from a put's `.tmp`.
pub(crate) fn download_file(temp: &str) -> String {
    format!(".{temp}.download")
}

/// Opens a blob of `dir`, checking that it is the encryption its row
/// recorded.
pub(crate) fn open_blob(
    dir: &Path,
    key: &Subkey,
    blob: &str,
    salt: &str,
    size: i64,
) -> Result<FileReader> {
    check_blob(blob)?;
    let path = dir.join(blob);
    let file = File::open(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::FileCorrupt(FileCorruptKind::Missing),
        _ => Error::io("opening a stored file", &path, e),
    })?;
    let reader = ChunkReader::open(key, BufReader::with_capacity(64 * 1024, file))?;
    if hex(&reader.salt()) != salt || reader.len() != size as u64 {
        return Err(Error::FileCorrupt(FileCorruptKind::Replaced));
    }
    Ok(reader)
}

/// What a stored file's row records.
struct Row<'a> {
    name: &'a str,
    blob: &'a str,
    salt: &'a str,
    size: u64,
    content_type: Option<&'a str>,
    sha256: &'a str,
}

/// What [`FileStore::switch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// The name points at the new blob.
    Done,
    /// A download whose state a local put or delete (or a download of
    /// another version) dropped meanwhile: nothing changed.
    Superseded,
}

/// Within `tx`: the local version of `name` is the user's (a put or a
/// delete here), so no download may replace it: its queue entry and its
/// unfinished download's row go. Returns the temporary blobs of the
/// downloads dropped, to delete after the commit.
fn drop_pending_downloads(tx: &Connection, name: &str, op: &'static str) -> Result<Vec<String>> {
    tx.execute("DELETE FROM coffer_file_queue WHERE name = ?1", [name])
        .map_err(db(op))?;
    let mut stmt = tx
        .prepare_cached("DELETE FROM coffer_file_downloads WHERE name = ?1 RETURNING temp")
        .map_err(db(op))?;
    let temps = stmt
        .query_map([name], |r| r.get::<_, String>(0))
        .map_err(db(op))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db(op))?;
    Ok(temps)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidName {
            what: "file name",
            name: String::new(),
            rule: "must be 1 to 1024 bytes",
        });
    }
    Ok(())
}

impl FileStore {
    /// `dir` is the app's blob directory; `key` its files subkey.
    pub(crate) fn open(conn: Connection, dir: PathBuf, key: Subkey) -> Result<Self> {
        ensure_schema(&conn)?;
        fsio::create_private_dir_all(&dir)?;
        Ok(FileStore { conn, dir, key })
    }

    /// Stores everything `data` yields under `name`, replacing any previous
    /// version atomically, and records the SHA-256 of what it read (worked
    /// out as the bytes go by: no second pass). `progress` is called with
    /// the bytes written so far. The version stored is the user's: in the
    /// switch's transaction the name leaves the download queue and any
    /// unfinished download of it is dropped (an older version a pulled
    /// record asked for never replaces it; a later pulled record may
    /// queue its own version again).
    pub fn put(
        &self,
        name: &str,
        data: &mut dyn Read,
        content_type: Option<&str>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<FileInfo> {
        check_name(name)?;
        let blob = random_name();
        let tmp = self.dir.join(format!(".{blob}.tmp"));
        let written = self.write_blob(&tmp, data, progress);
        let (size, salt, sha256) = match written {
            Ok(done) => done,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let final_path = self.dir.join(&blob);
        fs::rename(&tmp, &final_path).map_err(|e| Error::io("storing a file", &final_path, e))?;
        fsio::sync_dir(&self.dir)?;
        let row = Row {
            name,
            blob: &blob,
            salt: &hex(&salt),
            size,
            content_type,
            sha256: &sha256,
        };
        if let Err(e) = self.switch(&row, false) {
            let _ = fs::remove_file(&final_path);
            return Err(e);
        }
        self.info(name)?
            .ok_or_else(|| Error::NoSuchFile { name: name.into() })
    }

    /// Points `row.name` at `row.blob` (on disk already, fsynced) in one
    /// transaction, then removes the blob it pointed at before.
    ///
    /// A put (`download` false) is the user's own version of the name: in
    /// the same transaction it drops the name's queue entry (whatever
    /// version a pulled record asked for before) and any unfinished
    /// download of the name (its row; its temporary blob goes after the
    /// commit), so that no older version fetched later replaces it. A
    /// finished `download` ends its own download state and the queue entry
    /// of its version; if its download state is gone (a put or a delete
    /// of the name came first, or a download of another version replaced
    /// it) nothing is switched: [`Switch::Superseded`].
    fn switch(&self, row: &Row<'_>, download: bool) -> Result<Switch> {
        // `None`: superseded. Else the blob the name pointed at, and the
        // temporary blobs of the downloads dropped.
        type Switched = Option<(Option<String>, Vec<String>)>;
        let switched = (|| -> Result<Switched> {
            // IMMEDIATE: take the write lock now; a read-then-write upgrade can
            // fail with SQLITE_BUSY_SNAPSHOT, which the busy handler does not retry.
            let tx =
                rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
                    .map_err(db("storing a file"))?;
            let mut dropped = Vec::new();
            if download {
                // Still this download's name: nothing local came since.
                let ours = tx
                    .execute(
                        "DELETE FROM coffer_file_downloads WHERE name = ?1 AND temp = ?2",
                        [row.name, row.blob],
                    )
                    .map_err(db("storing a file"))?;
                if ours == 0 {
                    return Ok(None);
                }
                // The queue wanted this version: done (a newer one queued
                // meanwhile stays).
                tx.execute(
                    "DELETE FROM coffer_file_queue WHERE name = ?1 AND sha256 = ?2",
                    [row.name, row.sha256],
                )
                .map_err(db("storing a file"))?;
            } else {
                dropped = drop_pending_downloads(&tx, row.name, "storing a file")?;
            }
            let old: Option<String> = tx
                .query_row(
                    "SELECT blob FROM coffer_files WHERE name = ?1",
                    [row.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db("storing a file"))?;
            tx.execute(
                "INSERT INTO coffer_files (name, blob, salt, size, content_type, updated_at, sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, unixepoch(), ?6)
                 ON CONFLICT (name) DO UPDATE SET blob = excluded.blob, salt = excluded.salt,
                     size = excluded.size, content_type = excluded.content_type,
                     updated_at = excluded.updated_at, sha256 = excluded.sha256",
                params![
                    row.name,
                    row.blob,
                    row.salt,
                    i64::try_from(row.size).unwrap_or(i64::MAX),
                    row.content_type,
                    row.sha256
                ],
            )
            .map_err(db("storing a file"))?;
            tx.commit().map_err(db("storing a file"))?;
            Ok(Some((old, dropped)))
        })()?;
        let Some((old, dropped)) = switched else {
            return Ok(Switch::Superseded);
        };
        // The row no longer points at it (committed with synchronous =
        // FULL, so durably): an orphan at worst if this fails.
        if let Some(old) = old.filter(|old| check_blob(old).is_ok()) {
            let _ = fs::remove_file(self.dir.join(old));
        }
        self.remove_download_blobs(&dropped);
        Ok(Switch::Done)
    }

    /// Deletes the temporary blobs of downloads whose rows are gone.
    fn remove_download_blobs(&self, temps: &[String]) {
        for temp in temps.iter().filter(|t| check_blob(t).is_ok()) {
            let _ = fs::remove_file(self.dir.join(download_file(temp)));
        }
    }

    fn write_blob(
        &self,
        path: &Path,
        data: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(u64, [u8; SALT_LEN], String)> {
        fsio::create_private_file(path)?;
        let file = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io("storing a file", path, e))?;
        let mut writer = ChunkWriter::new(
            &self.key,
            io::BufWriter::with_capacity(256 * 1024, file),
            &mut OsRng,
        )?;
        let salt = writer.salt();
        let mut hasher = Sha256::new();
        let mut buf = zeroize::Zeroizing::new(vec![0u8; 256 * 1024]);
        let mut size = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::from_read("reading the file to store", e)),
            };
            writer
                .write_all(&buf[..n])
                .map_err(|e| Error::io("storing a file", path, e))?;
            hasher.update(&buf[..n]);
            size += n as u64;
            progress(size);
        }
        let file = writer
            .finish()
            .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
            .map_err(|e| Error::io("storing a file", path, e))?;
        file.sync_all()
            .map_err(|e| Error::io("storing a file", path, e))?;
        Ok((size, salt, hex(&hasher.finalize())))
    }

    /// What is stored under `name`, if anything.
    pub fn info(&self, name: &str) -> Result<Option<FileInfo>> {
        self.conn
            .query_row(
                "SELECT name, size, content_type, updated_at, sha256 FROM coffer_files
                 WHERE name = ?1",
                [name],
                row_to_info,
            )
            .optional()
            .map_err(db("reading file metadata"))
    }

    /// The SHA-256 of `name`'s plaintext (64 lower-case hex digits). A
    /// file stored before coffer recorded it is read once to work it out,
    /// and the result recorded.
    pub fn sha256(&self, name: &str) -> Result<String> {
        stored_sha256(&self.conn, &self.dir, &self.key, name)?
            .ok_or_else(|| Error::NoSuchFile { name: name.into() })
    }

    /// Opens `name` for reading. The blob must be the very encryption the
    /// database recorded (same salt, same size), or the file is corrupt.
    pub fn open_file(&self, name: &str) -> Result<FileReader> {
        let (blob, salt, size): (String, String, i64) = self
            .conn
            .query_row(
                "SELECT blob, salt, size FROM coffer_files WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db("reading file metadata"))?
            .ok_or_else(|| Error::NoSuchFile { name: name.into() })?;
        open_blob(&self.dir, &self.key, &blob, &salt, size)
    }

    /// Deletes `name`; returns whether it existed. In the same
    /// transaction the name's queue entry and any unfinished download of it
    /// go (a version a pulled record asked for does not come back over the
    /// user's delete; a later pulled record may ask again).
    pub fn delete(&self, name: &str) -> Result<bool> {
        let (blob, dropped) = (|| -> Result<(Option<String>, Vec<String>)> {
            let tx =
                rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
                    .map_err(db("deleting a file"))?;
            let blob: Option<String> = tx
                .query_row(
                    "DELETE FROM coffer_files WHERE name = ?1 RETURNING blob",
                    [name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db("deleting a file"))?;
            let dropped = drop_pending_downloads(&tx, name, "deleting a file")?;
            tx.commit().map_err(db("deleting a file"))?;
            Ok((blob, dropped))
        })()?;
        if let Some(blob) = blob.as_deref().filter(|b| check_blob(b).is_ok()) {
            let _ = fs::remove_file(self.dir.join(blob));
        }
        self.remove_download_blobs(&dropped);
        Ok(blob.is_some())
    }

    /// Every stored file, by name.
    pub fn list(&self) -> Result<Vec<FileInfo>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, size, content_type, updated_at, sha256 FROM coffer_files
                 ORDER BY name",
            )
            .map_err(db("listing files"))?;
        let rows = stmt
            .query_map([], row_to_info)
            .map_err(db("listing files"))?;
        rows.map(|r| r.map_err(db("listing files"))).collect()
    }

    /// Starts, or resumes, the download of version `sha256` (of `size`
    /// bytes) of `name`: its bytes go into a temporary blob of the chunked
    /// format, and [`Download::finish`] switches the stored file to it once
    /// the whole SHA-256 matches. The stored file (any earlier version)
    /// stays exactly as it is until then.
    ///
    /// The temporary blob's name and salt are recorded in
    /// `coffer_file_downloads`, so that after a killed process or a cut
    /// connection the same call goes on from the last whole chunk written
    /// ([`Download::offset`]): those chunks are authenticated again and the
    /// SHA-256 rebuilt from their plaintext. A temporary blob that fails
    /// that check (changed on disk) is thrown away and the download starts
    /// from zero ([`Download::discarded`]); so is one of another version
    /// of `name`.
    pub fn download(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
        content_type: Option<&str>,
    ) -> Result<Download<'_>> {
        check_name(name)?;
        check_sha256(sha256)?;
        let size_i64 = i64::try_from(size).map_err(|_| Error::TooLarge {
            what: "file",
            limit: i64::MAX as u64,
        })?;
        let earlier: Option<(String, i64, String, String)> = self
            .conn
            .query_row(
                "SELECT sha256, size, temp, salt FROM coffer_file_downloads WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db("reading a download"))?;
        let mut discarded = None;
        if let Some((their_sha, their_size, temp, salt)) = earlier {
            if their_sha == sha256 && their_size == size_i64 {
                match self.resume(name, sha256, size, content_type, &temp, &salt)? {
                    Ok(download) => return Ok(download),
                    Err(why) => discarded = why,
                }
            }
            self.drop_download(name, &temp)?;
        }
        let mut fresh = self.start_download(name, sha256, size, content_type)?;
        fresh.discarded = discarded;
        Ok(fresh)
    }

    /// A new temporary blob for `name`: its header is fsynced before its
    /// row is written, so a recorded download always has one.
    fn start_download(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
        content_type: Option<&str>,
    ) -> Result<Download<'_>> {
        let temp = random_name();
        let path = self.dir.join(download_file(&temp));
        fsio::create_private_file(&path)?;
        let started = (|| -> Result<(ChunkWriter<File>, [u8; SALT_LEN])> {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("starting a download", &path, e))?;
            let writer = ChunkWriter::new(&self.key, file, &mut OsRng)?;
            writer
                .get_ref()
                .sync_all()
                .map_err(|e| Error::io("starting a download", &path, e))?;
            let salt = writer.salt();
            self.conn
                .execute(
                    "INSERT INTO coffer_file_downloads
                         (name, sha256, size, content_type, temp, salt, started_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, unixepoch())
                     ON CONFLICT (name) DO UPDATE SET sha256 = excluded.sha256,
                         size = excluded.size, content_type = excluded.content_type,
                         temp = excluded.temp, salt = excluded.salt,
                         started_at = excluded.started_at",
                    params![
                        name,
                        sha256,
                        i64::try_from(size).unwrap_or(i64::MAX),
                        content_type,
                        temp,
                        hex(&salt)
                    ],
                )
                .map_err(db("starting a download"))?;
            Ok((writer, salt))
        })();
        let (writer, salt) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        Ok(Download {
            store: self,
            name: name.to_owned(),
            sha256: sha256.to_owned(),
            size,
            content_type: content_type.map(str::to_owned),
            temp,
            salt,
            writer: Some(writer),
            hasher: Sha256::new(),
            offset: 0,
            discarded: None,
            refused: None,
        })
    }

    /// Reopens the recorded temporary blob of a download. `Ok(Err(why))`
    /// when it cannot go on (missing: `None`; changed on disk: the check
    /// that failed): the caller throws it away and starts again.
    #[allow(clippy::type_complexity)]
    fn resume(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
        content_type: Option<&str>,
        temp: &str,
        salt_hex: &str,
    ) -> Result<std::result::Result<Download<'_>, Option<FileCorruptKind>>> {
        let replaced = || Ok(Err(Some(FileCorruptKind::Replaced)));
        if check_blob(temp).is_err() {
            return replaced();
        }
        let mut salt = [0u8; SALT_LEN];
        if salt_hex.len() != 2 * SALT_LEN
            || (0..SALT_LEN).any(|i| {
                u8::from_str_radix(&salt_hex[2 * i..2 * i + 2], 16)
                    .map(|b| salt[i] = b)
                    .is_err()
            })
        {
            return replaced();
        }
        let path = self.dir.join(download_file(temp));
        if !path.exists() {
            // A finish that renamed the blob into place and was killed
            // before its transaction: put it back and go on.
            let renamed = self.dir.join(temp);
            let known: bool = self
                .conn
                .query_row(
                    "SELECT count(*) FROM coffer_files WHERE blob = ?1",
                    [temp],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db("reading a download"))?
                > 0;
            if known || fs::rename(&renamed, &path).is_err() {
                return Ok(Err(None));
            }
        }
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("resuming a download", &path, e))?;
        let mut hasher = Sha256::new();
        let point = match scan_for_resume(&self.key, &salt, &mut file, &mut |plain| {
            hasher.update(plain)
        }) {
            Ok(point) => point,
            Err(Error::FileCorrupt(why)) => return Ok(Err(Some(why))),
            Err(e) => return Err(e),
        };
        let offset = point.offset();
        if offset > size {
            return replaced();
        }
        let keep = point.file_len();
        let writer = match point {
            Resumable::Complete { .. } if offset != size => return replaced(),
            Resumable::Complete { .. } => None,
            Resumable::Partial { chunks, torn } => {
                let io_err = |e| Error::io("resuming a download", &path, e);
                // What follows the whole chunks is cut off: written again
                // from the same bytes, sealed the same (ChunkWriter::resume).
                file.set_len(keep).map_err(io_err)?;
                file.seek(SeekFrom::Start(keep)).map_err(io_err)?;
                Some(ChunkWriter::resume(&self.key, file, salt, chunks, torn))
            }
        };
        Ok(Ok(Download {
            store: self,
            name: name.to_owned(),
            sha256: sha256.to_owned(),
            size,
            content_type: content_type.map(str::to_owned),
            temp: temp.to_owned(),
            salt,
            writer,
            hasher,
            offset,
            discarded: None,
            refused: None,
        }))
    }

    /// Forgets a download's state and deletes its temporary blob.
    fn drop_download(&self, name: &str, temp: &str) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM coffer_file_downloads WHERE name = ?1 AND temp = ?2",
                [name, temp],
            )
            .map_err(db("dropping a download"))?;
        if check_blob(temp).is_ok() {
            let _ = fs::remove_file(self.dir.join(download_file(temp)));
        }
        Ok(())
    }

    /// Gives up the unfinished download of `name`, if there is one: its
    /// temporary blob is deleted. Returns whether there was one.
    pub fn abandon_download(&self, name: &str) -> Result<bool> {
        let temp: Option<String> = self
            .conn
            .query_row(
                "SELECT temp FROM coffer_file_downloads WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("dropping a download"))?;
        match temp {
            Some(temp) => self.drop_download(name, &temp).map(|()| true),
            None => Ok(false),
        }
    }

    /// The downloads that pulled records asked for, by name.
    pub fn queued_downloads(&self) -> Result<Vec<QueuedDownload>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, sha256, size, content_type, attempts, last_failure
                 FROM coffer_file_queue ORDER BY name",
            )
            .map_err(db("reading the download queue"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(QueuedDownload {
                    name: r.get(0)?,
                    sha256: r.get(1)?,
                    size: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    content_type: r.get(3)?,
                    attempts: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(u32::MAX),
                    last_failure: r.get(5)?,
                })
            })
            .map_err(db("reading the download queue"))?;
        rows.map(|r| r.map_err(db("reading the download queue")))
            .collect()
    }

    /// Takes version `sha256` of `name` off the download queue (it is
    /// held, or no longer wanted), and any unfinished download of it.
    pub fn dequeue_download(&self, name: &str, sha256: &str) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM coffer_file_queue WHERE name = ?1 AND sha256 = ?2",
                [name, sha256],
            )
            .map_err(db("updating the download queue"))?;
        let temp: Option<String> = self
            .conn
            .query_row(
                "SELECT temp FROM coffer_file_downloads WHERE name = ?1 AND sha256 = ?2",
                [name, sha256],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("updating the download queue"))?;
        match temp {
            Some(temp) => self.drop_download(name, &temp),
            None => Ok(()),
        }
    }

    /// Notes that an attempt at the queued download of version `sha256` of
    /// `name` failed, and why (a stable code): it stays queued.
    pub fn note_download_failure(&self, name: &str, sha256: &str, why: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE coffer_file_queue SET attempts = attempts + 1, last_failure = ?3
                 WHERE name = ?1 AND sha256 = ?2",
                [name, sha256, why],
            )
            .map(|_| ())
            .map_err(db("updating the download queue"))
    }

    /// Rotation: `self` is a copy of `old`'s database under a new key, in a
    /// staging directory. Writes every blob `old` holds, re-encrypted under
    /// `self`'s key with a fresh salt, into `self`'s directory under the same
    /// name, and records the new salts (and the SHA-256 of a file stored
    /// before it was recorded). Unfinished downloads are not carried over:
    /// they start again. `progress` gets each chunk's bytes.
    pub(crate) fn reencrypt_from(
        &self,
        old: &FileStore,
        progress: &mut dyn FnMut(u64),
    ) -> Result<usize> {
        let rows: Vec<(String, String, i64)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT blob, salt, size FROM coffer_files ORDER BY blob")
                .map_err(db("listing files"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(db("listing files"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(db("listing files"))?;
            rows
        };
        for (blob, salt, size) in &rows {
            let mut reader = open_blob(&old.dir, &old.key, blob, salt, *size)?;
            let mut last = 0u64;
            let (written, new_salt, sha256) =
                self.write_blob(&self.dir.join(blob), &mut reader, &mut |done| {
                    progress(done - last);
                    last = done;
                })?;
            if written != *size as u64 {
                return Err(Error::FileCorrupt(FileCorruptKind::Replaced));
            }
            self.conn
                .execute(
                    "UPDATE coffer_files SET salt = ?1, sha256 = ?2 WHERE blob = ?3",
                    params![hex(&new_salt), sha256, blob],
                )
                .map_err(db("recording a re-encrypted file"))?;
        }
        self.conn
            .execute("DELETE FROM coffer_file_downloads", [])
            .map_err(db("recording a re-encrypted file"))?;
        Ok(rows.len())
    }

    /// The plaintext bytes of every stored file.
    pub(crate) fn total_size(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT coalesce(sum(size), 0) FROM coffer_files", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(db("listing files"))
    }

    /// The store's database connection.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Deletes blobs and temporary files that no row refers to (left by a
    /// crash in the middle of a put, a delete or a download, or by a
    /// download given up), and forgets downloads whose temporary blob is
    /// gone. The temporary blob of a download still recorded stays, to be
    /// resumed. Only call it when no other process is storing files in
    /// this app. Returns how many files were removed.
    pub fn remove_orphans(&self) -> Result<usize> {
        let mut known = std::collections::HashSet::new();
        let mut stmt = self
            .conn
            .prepare("SELECT blob FROM coffer_files")
            .map_err(db("listing files"))?;
        for blob in stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db("listing files"))?
        {
            known.insert(blob.map_err(db("listing files"))?);
        }
        let downloads: Vec<(String, String)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT name, temp FROM coffer_file_downloads")
                .map_err(db("listing downloads"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db("listing downloads"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(db("listing downloads"))?;
            rows
        };
        for (name, temp) in downloads {
            let file = download_file(&temp);
            if check_blob(&temp).is_ok() && self.dir.join(&file).is_file() {
                known.insert(file);
            } else {
                self.drop_download(&name, &temp)?;
            }
        }
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io("listing", &self.dir, e))? {
            let entry = entry.map_err(|e| Error::io("listing", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                fs::remove_file(entry.path())
                    .map_err(|e| Error::io("removing", entry.path(), e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A download into the file store ([`FileStore::download`]): write the
/// bytes in order from [`Download::offset`], then [`Download::finish`].
/// Dropped unfinished, it leaves its temporary blob and its record, and
/// the next [`FileStore::download`] of the same version resumes it.
pub struct Download<'s> {
    store: &'s FileStore,
    name: String,
    sha256: String,
    size: u64,
    content_type: Option<String>,
    temp: String,
    salt: [u8; SALT_LEN],
    /// `None` once the temporary blob is whole (resumed after its last
    /// chunk was written) or the download was refused.
    writer: Option<ChunkWriter<File>>,
    hasher: Sha256,
    offset: u64,
    discarded: Option<FileCorruptKind>,
    refused: Option<DownloadMismatchKind>,
}

impl std::fmt::Debug for Download<'_> {
    // Never the bytes, nor the hash state over them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .field("offset", &self.offset)
            .field("discarded", &self.discarded)
            .finish_non_exhaustive()
    }
}

impl Download<'_> {
    /// The file's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared size, bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many bytes are written: the next [`Download::write`] gives the
    /// bytes from here. After a resume, the end of the last whole chunk
    /// (a multiple of [`crate::stream::CHUNK_SIZE`]) or the whole size.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Why the temporary blob of an earlier attempt was thrown away, if it
    /// was: it did not pass the check at resume (changed on disk), and
    /// this download started again from zero.
    pub fn discarded(&self) -> Option<&FileCorruptKind> {
        self.discarded.as_ref()
    }

    fn path(&self) -> PathBuf {
        self.store.dir.join(download_file(&self.temp))
    }

    /// Whether this download's state is still recorded (a local put or
    /// delete of the name drops it).
    fn still_recorded(&self) -> Result<bool> {
        self.store
            .conn
            .query_row(
                "SELECT count(*) FROM coffer_file_downloads WHERE name = ?1 AND temp = ?2",
                [&self.name, &self.temp],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(db("reading a download"))
    }

    fn superseded(&self) -> Error {
        Error::DownloadMismatch {
            name: self.name.clone(),
            kind: DownloadMismatchKind::Superseded,
        }
    }

    /// Drops the download: the temporary blob and its record go, the
    /// stored file stays as it was.
    fn refuse(&mut self, kind: DownloadMismatchKind) -> Error {
        self.writer = None;
        self.refused = Some(kind);
        if let Err(e) = self.store.drop_download(&self.name, &self.temp) {
            return e;
        }
        Error::DownloadMismatch {
            name: self.name.clone(),
            kind,
        }
    }

    /// Writes the next `bytes` of the file. More than the declared size,
    /// or bytes that differ from the ones an interrupted attempt wrote at
    /// the same place, drop the download ([`Error::DownloadMismatch`]).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(kind) = self.refused {
            return Err(Error::DownloadMismatch {
                name: self.name.clone(),
                kind,
            });
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let end = self.offset.checked_add(bytes.len() as u64);
        let Some(writer) = self
            .writer
            .as_mut()
            .filter(|_| end.is_some_and(|e| e <= self.size))
        else {
            return Err(self.refuse(DownloadMismatchKind::TooLong));
        };
        if let Err(e) = writer.write_all(bytes) {
            if is_torn_mismatch(&e) {
                return Err(self.refuse(DownloadMismatchKind::Rewritten));
            }
            return Err(Error::io("writing a download", self.path(), e));
        }
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Checks the size and the whole SHA-256 and switches the stored file
    /// to the download, atomically as [`FileStore::put`] does (the temporary
    /// blob fsynced and renamed into place, the row switched in one
    /// transaction that also ends the download and its queue entry, the old
    /// blob removed). A SHA-256 that does not match drops the download
    /// ([`Error::DownloadMismatch`]): the stored file stays exactly as it
    /// was. Fewer bytes than the size is [`Error::DownloadIncomplete`], and
    /// the download stays to be resumed. A put or a delete of the name
    /// since the download began dropped it: nothing is switched
    /// ([`DownloadMismatchKind::Superseded`]), the user's version stays.
    pub fn finish(mut self) -> Result<FileInfo> {
        if let Some(kind) = self.refused {
            return Err(Error::DownloadMismatch {
                name: self.name.clone(),
                kind,
            });
        }
        if self.offset != self.size {
            return Err(Error::DownloadIncomplete {
                name: self.name.clone(),
                offset: self.offset,
                size: self.size,
            });
        }
        let sha256 = hex(&std::mem::take(&mut self.hasher).finalize());
        if sha256 != self.sha256 {
            return Err(self.refuse(DownloadMismatchKind::Sha256));
        }
        let path = self.path();
        let io_err = |e| Error::io("storing a download", &path, e);
        let file = match self.writer.take() {
            Some(writer) => writer.finish().map_err(io_err)?,
            None => match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !self.still_recorded()? => {
                    return Err(self.superseded())
                }
                Err(e) => return Err(io_err(e)),
            },
        };
        file.sync_all().map_err(io_err)?;
        drop(file);
        let final_path = self.store.dir.join(&self.temp);
        if let Err(e) = fs::rename(&path, &final_path) {
            // A put or a delete of the name took the temporary blob away.
            if e.kind() == io::ErrorKind::NotFound && !self.still_recorded()? {
                return Err(self.superseded());
            }
            return Err(Error::io("storing a download", &final_path, e));
        }
        fsio::sync_dir(&self.store.dir)?;
        let row = Row {
            name: &self.name,
            blob: &self.temp,
            salt: &hex(&self.salt),
            size: self.size,
            content_type: self.content_type.as_deref(),
            sha256: &sha256,
        };
        match self.store.switch(&row, true) {
            Ok(Switch::Done) => {}
            Ok(Switch::Superseded) => {
                // No row names it, nor will: the name is the user's now.
                let _ = fs::remove_file(&final_path);
                return Err(self.superseded());
            }
            Err(e) => {
                // Back where a resume finds it whole.
                let _ = fs::rename(&final_path, &path);
                return Err(e);
            }
        }
        self.store
            .info(&self.name)?
            .ok_or_else(|| Error::NoSuchFile {
                name: self.name.clone(),
            })
    }
}

fn row_to_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileInfo> {
    Ok(FileInfo {
        name: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        content_type: r.get(2)?,
        updated_at: to_system_time(r.get(3)?),
        sha256: r.get(4)?,
    })
}
