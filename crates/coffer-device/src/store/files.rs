//! The file store: large blobs (photos, documents) encrypted in the chunked
//! format of [`crate::stream`], outside the database, under random names.
//!
//! The app's database (table `coffer_files`) maps each real name to its blob
//! and records its size, content type and the blob's salt. The salt check on
//! every read binds the name to exactly one encryption: a blob swapped for an
//! older encryption of the same file, or for another of the app's files, is
//! refused, even though the app's key would decrypt it.
//!
//! Replacing a file is atomic: the new blob is written to a temporary file,
//! fsynced and renamed into place, then the database row is switched in one
//! transaction, then the old blob is removed. A crash leaves the old or the
//! new version readable, and at worst an orphan blob (encrypted, never
//! referenced) that [`FileStore::remove_orphans`] deletes.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::fsio;
use crate::secret::Subkey;
use crate::store::catalog::to_system_time;
use crate::stream::{ChunkReader, ChunkWriter, SALT_LEN};

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
    /// When this version was stored.
    pub updated_at: std::time::SystemTime,
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
        Err(Error::FileCorrupt(crate::stream::FileCorruptKind::Replaced))
    }
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
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS coffer_files (
                 name TEXT PRIMARY KEY,
                 blob TEXT NOT NULL UNIQUE,
                 salt TEXT NOT NULL,
                 size INTEGER NOT NULL,
                 content_type TEXT,
                 updated_at INTEGER NOT NULL
             ) STRICT;",
        )
        .map_err(db("creating the file store"))?;
        fsio::create_private_dir_all(&dir)?;
        Ok(FileStore { conn, dir, key })
    }

    /// Stores everything `data` yields under `name`, replacing any previous
    /// version atomically. `progress` is called with the bytes written so far.
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
        let (size, salt) = match written {
            Ok(done) => done,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let final_path = self.dir.join(&blob);
        fs::rename(&tmp, &final_path).map_err(|e| Error::io("storing a file", &final_path, e))?;
        fsio::sync_dir(&self.dir)?;

        let switched = (|| -> Result<Option<String>> {
            // IMMEDIATE: take the write lock now; a read-then-write upgrade can
            // fail with SQLITE_BUSY_SNAPSHOT, which the busy handler does not retry.
            let tx = rusqlite::Transaction::new_unchecked(
                &self.conn,
                rusqlite::TransactionBehavior::Immediate,
            )
            .map_err(db("storing a file"))?;
            let old: Option<String> = tx
                .query_row(
                    "SELECT blob FROM coffer_files WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db("storing a file"))?;
            tx.execute(
                "INSERT INTO coffer_files (name, blob, salt, size, content_type, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, unixepoch())
                 ON CONFLICT (name) DO UPDATE SET blob = excluded.blob, salt = excluded.salt,
                     size = excluded.size, content_type = excluded.content_type,
                     updated_at = excluded.updated_at",
                params![name, blob, hex(&salt), size as i64, content_type],
            )
            .map_err(db("storing a file"))?;
            tx.commit().map_err(db("storing a file"))?;
            Ok(old)
        })();
        match switched {
            Ok(Some(old)) => {
                // The row no longer points at it (committed with synchronous =
                // FULL, so durably): an orphan at worst if this fails.
                if check_blob(&old).is_ok() {
                    let _ = fs::remove_file(self.dir.join(old));
                }
            }
            Ok(None) => {}
            Err(e) => {
                let _ = fs::remove_file(&final_path);
                return Err(e);
            }
        }
        self.info(name)?
            .ok_or_else(|| Error::NoSuchFile { name: name.into() })
    }

    fn write_blob(
        &self,
        path: &Path,
        data: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(u64, [u8; SALT_LEN])> {
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
            size += n as u64;
            progress(size);
        }
        let file = writer
            .finish()
            .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
            .map_err(|e| Error::io("storing a file", path, e))?;
        file.sync_all()
            .map_err(|e| Error::io("storing a file", path, e))?;
        Ok((size, salt))
    }

    /// What is stored under `name`, if anything.
    pub fn info(&self, name: &str) -> Result<Option<FileInfo>> {
        self.conn
            .query_row(
                "SELECT name, size, content_type, updated_at FROM coffer_files WHERE name = ?1",
                [name],
                row_to_info,
            )
            .optional()
            .map_err(db("reading file metadata"))
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
        self.open_blob(&blob, &salt, size)
    }

    /// Opens a blob, checking that it is the encryption its row recorded.
    fn open_blob(&self, blob: &str, salt: &str, size: i64) -> Result<FileReader> {
        check_blob(blob)?;
        let path = self.dir.join(blob);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::FileCorrupt(crate::stream::FileCorruptKind::Missing),
            _ => Error::io("opening a stored file", &path, e),
        })?;
        let reader = ChunkReader::open(&self.key, BufReader::with_capacity(64 * 1024, file))?;
        if hex(&reader.salt()) != salt || reader.len() != size as u64 {
            return Err(Error::FileCorrupt(crate::stream::FileCorruptKind::Replaced));
        }
        Ok(reader)
    }

    /// Deletes `name`; returns whether it existed.
    pub fn delete(&self, name: &str) -> Result<bool> {
        let blob: Option<String> = self
            .conn
            .query_row(
                "DELETE FROM coffer_files WHERE name = ?1 RETURNING blob",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("deleting a file"))?;
        if let Some(blob) = blob.as_deref().filter(|b| check_blob(b).is_ok()) {
            let _ = fs::remove_file(self.dir.join(blob));
        }
        Ok(blob.is_some())
    }

    /// Every stored file, by name.
    pub fn list(&self) -> Result<Vec<FileInfo>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, size, content_type, updated_at FROM coffer_files ORDER BY name")
            .map_err(db("listing files"))?;
        let rows = stmt
            .query_map([], row_to_info)
            .map_err(db("listing files"))?;
        rows.map(|r| r.map_err(db("listing files"))).collect()
    }

    /// Rotation: `self` is a copy of `old`'s database under a new key, in a
    /// staging directory. Writes every blob `old` holds, re-encrypted under
    /// `self`'s key with a fresh salt, into `self`'s directory under the same
    /// name, and records the new salts. `progress` gets each chunk's bytes.
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
            let mut reader = old.open_blob(blob, salt, *size)?;
            let mut last = 0u64;
            let (written, new_salt) =
                self.write_blob(&self.dir.join(blob), &mut reader, &mut |done| {
                    progress(done - last);
                    last = done;
                })?;
            if written != *size as u64 {
                return Err(Error::FileCorrupt(crate::stream::FileCorruptKind::Replaced));
            }
            self.conn
                .execute(
                    "UPDATE coffer_files SET salt = ?1 WHERE blob = ?2",
                    params![hex(&new_salt), blob],
                )
                .map_err(db("recording a re-encrypted file"))?;
        }
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
    /// crash in the middle of a put or a delete). Only call it when no other
    /// process is storing files in this app. Returns how many were removed.
    pub fn remove_orphans(&self) -> Result<usize> {
        let mut stmt = self
            .conn
            .prepare("SELECT blob FROM coffer_files")
            .map_err(db("listing files"))?;
        let known: std::collections::HashSet<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(db("listing files"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(db("listing files"))?;
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

fn row_to_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileInfo> {
    Ok(FileInfo {
        name: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        content_type: r.get(2)?,
        updated_at: to_system_time(r.get(3)?),
    })
}
