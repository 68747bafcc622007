//! The record store: collections of JSON documents with a version that
//! rises on every write, soft deletion, and a per-app change log with a
//! sequence number per change — the unit that will sync.
//!
//! Tables `coffer_records` and `coffer_changes` in the app's database.
//!
//! A record may reference files of the app's file store
//! ([`RecordStore::put_with_files`]): each reference names one version of a
//! file (its SHA-256), which files sync moves with the record.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::store::catalog::to_system_time;

/// Page cache of a record store's connection, KiB.
const SYNC_CACHE_KIB: i64 = 32 * 1024;

/// Largest record body, serialized: 4 MiB.
pub const MAX_BODY_LEN: usize = 4 << 20;

/// Most files one record references (the sync protocol's limit).
pub const MAX_FILES: usize = 64;

/// A file a record references: one version of a file of the app's file
/// store, as it was when the record was written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRef {
    /// The file's name in the app's file store.
    pub name: String,
    /// SHA-256 of its plaintext, 64 lower-case hex digits.
    pub sha256: String,
    /// Its size, bytes.
    pub size: u64,
    /// Its content type, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// A record's files as stored (`coffer_records.files`, a JSON array;
/// NULL for none).
pub(crate) fn files_text(files: &[FileRef]) -> Result<Option<String>> {
    if files.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(files)
        .map(Some)
        .map_err(|_| Error::Database {
            op: "writing a record",
            kind: crate::error::DatabaseErrorKind::Other("a list of files".into()),
        })
}

/// The files of a stored JSON array (NULL: none).
pub(crate) fn files_from(text: Option<String>) -> Result<Vec<FileRef>> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).map_err(|_| Error::Database {
            op: "reading a record",
            kind: crate::error::DatabaseErrorKind::Other(
                "a stored list of files is not JSON".into(),
            ),
        }),
    }
}

/// What a write does to a record's files.
#[derive(Clone, Copy)]
pub(crate) enum Files<'a> {
    /// They stay as they are (a body-only edit).
    Keep,
    /// They become this JSON array (`None`: none).
    Set(Option<&'a str>),
}

/// What a write through [`RecordStore`] does to a record's files.
#[derive(Clone, Copy)]
enum Attach<'a> {
    /// They stay.
    Keep,
    /// None.
    Clear,
    /// The files of the file store with these names, at the versions it
    /// holds when the write's transaction reads them.
    Named(&'a [&'a str]),
}

/// How a record store reaches the app's file store, when the app may use
/// it: to read the versions of the files a record references.
pub(crate) struct FileAccess {
    /// The app's blob directory.
    pub dir: std::path::PathBuf,
    /// Its files subkey.
    pub key: crate::secret::Subkey,
}

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Collection name.
    pub collection: String,
    /// Id, unique within the collection.
    pub id: String,
    /// The JSON document (`Null` once deleted).
    pub body: Value,
    /// 1 on creation, +1 on every write or deletion.
    pub version: u64,
    /// Time of the last write.
    pub updated_at: std::time::SystemTime,
    /// Whether the record is deleted (a tombstone, kept for sync).
    pub deleted: bool,
    /// The files it references (none once deleted). A reference names one
    /// version; the store holds one version per name, which may be another
    /// until sync brings it (compare [`crate::FileInfo::sha256`]).
    pub files: Vec<FileRef>,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Position in the log: strictly increasing.
    pub seq: u64,
    /// Collection of the changed record.
    pub collection: String,
    /// Id of the changed record.
    pub id: String,
    /// The record's version after the change.
    pub version: u64,
    /// Whether the change was a deletion.
    pub deleted: bool,
}

/// An app's record store.
pub struct RecordStore {
    pub(crate) conn: Connection,
    /// Who writes: the name of the slot the vault was opened with (a
    /// revision's author in sync).
    pub(crate) author: String,
    /// The app's name (for errors).
    pub(crate) app: String,
    /// The app's file store, if its capabilities grant it.
    pub(crate) files: Option<FileAccess>,
}

/// The columns of `coffer_records` that [`row_to_record`] reads.
const RECORD_COLUMNS: &str = "collection, id, body, version, updated_at, deleted, files";

fn check_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 {
        return Err(Error::InvalidName {
            what,
            name: String::new(),
            rule: "must be 1 to 256 bytes",
        });
    }
    Ok(())
}

fn corrupt_version() -> Error {
    Error::Database {
        op: "writing a record",
        kind: crate::error::DatabaseErrorKind::Corrupt,
    }
}

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::database(op, e)
}

impl RecordStore {
    pub(crate) fn open(
        mut conn: Connection,
        author: String,
        app: String,
        files: Option<FileAccess>,
    ) -> Result<Self> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS coffer_records (
                 collection TEXT NOT NULL,
                 id TEXT NOT NULL,
                 body TEXT,
                 version INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 deleted INTEGER NOT NULL DEFAULT 0,
                 files TEXT,
                 PRIMARY KEY (collection, id)
             ) STRICT;
             CREATE TABLE IF NOT EXISTS coffer_changes (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 collection TEXT NOT NULL,
                 id TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 deleted INTEGER NOT NULL,
                 changed_at INTEGER NOT NULL
             ) STRICT;",
        )
        .map_err(db("creating the record store"))?;
        // Sync writes a record into three B-trees keyed by its id, in no
        // order the disk likes: a larger page cache than the stores' default
        // keeps a pull of a million records from re-reading (and
        // re-decrypting) the same index pages (docs/benchmarks.md).
        conn.execute_batch(&format!("PRAGMA cache_size = -{SYNC_CACHE_KIB};"))
            .map_err(db("configuring the record store"))?;
        crate::store::sync::create(&mut conn, &author)?;
        Ok(RecordStore {
            conn,
            author,
            app,
            files,
        })
    }

    /// The record, deleted or not.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM coffer_records WHERE collection = ?1 AND id = ?2"
                ),
                [collection, id],
                row_to_record,
            )
            .optional()
            .map_err(db("reading a record"))?
            .transpose()
    }

    /// Writes `body` to the record, creating it at version 1 or raising its
    /// version by one. With `base_version`, the write happens only if the
    /// record is at that version (0 = must not exist yet); otherwise
    /// [`Error::VersionConflict`] reports the current version and nothing
    /// changes. The files the record references stay as they are.
    pub fn put(
        &mut self,
        collection: &str,
        id: &str,
        body: &Value,
        base_version: Option<u64>,
    ) -> Result<Record> {
        self.write(collection, id, Some(body), base_version, Attach::Keep)
    }

    /// [`RecordStore::put`], and the record references exactly the files
    /// of the app's file store named in `files` (none: it references
    /// none), each at the version stored now: its SHA-256, size and content
    /// type are read from the file store in the write's transaction. A
    /// name the file store does not hold is [`Error::NoSuchFile`] and
    /// nothing changes; the app needs the files capability
    /// ([`Error::CapabilityDenied`]). At most [`MAX_FILES`] distinct names.
    pub fn put_with_files(
        &mut self,
        collection: &str,
        id: &str,
        body: &Value,
        base_version: Option<u64>,
        files: &[&str],
    ) -> Result<Record> {
        if files.len() > MAX_FILES {
            return Err(Error::TooLarge {
                what: "list of a record's files",
                limit: MAX_FILES as u64,
            });
        }
        let mut names: Vec<&str> = Vec::with_capacity(files.len());
        for name in files {
            if names.contains(name) {
                return Err(Error::InvalidName {
                    what: "file name",
                    name: String::new(),
                    rule: "a record names each file once",
                });
            }
            names.push(name);
        }
        if !names.is_empty() {
            let access = self.files.as_ref().ok_or_else(|| Error::CapabilityDenied {
                app: self.app.clone(),
                capability: crate::app::Capability::Files.name(),
            })?;
            crate::store::files::ensure_schema(&self.conn)?;
            // Worked out (and recorded) before the write's transaction for a
            // file stored before hashes were: reading a blob must not hold
            // the write lock.
            for name in &names {
                crate::store::files::stored_sha256(&self.conn, &access.dir, &access.key, name)?
                    .ok_or_else(|| Error::NoSuchFile {
                        name: (*name).to_owned(),
                    })?;
            }
        }
        self.write(
            collection,
            id,
            Some(body),
            base_version,
            Attach::Named(&names),
        )
    }

    /// Deletes the record (it stays as a tombstone for sync), with the same
    /// `base_version` rule as [`RecordStore::put`].
    pub fn delete(
        &mut self,
        collection: &str,
        id: &str,
        base_version: Option<u64>,
    ) -> Result<Record> {
        self.write(collection, id, None, base_version, Attach::Clear)
    }

    fn write(
        &mut self,
        collection: &str,
        id: &str,
        body: Option<&Value>,
        base: Option<u64>,
        attach: Attach<'_>,
    ) -> Result<Record> {
        check_name("collection", collection)?;
        check_name("record id", id)?;
        let text = body
            .map(serde_json::to_string)
            .transpose()
            .map_err(|_| Error::TooLarge {
                what: "record body",
                limit: MAX_BODY_LEN as u64,
            })?;
        if text.as_ref().is_some_and(|t| t.len() > MAX_BODY_LEN) {
            return Err(Error::TooLarge {
                what: "record body",
                limit: MAX_BODY_LEN as u64,
            });
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("writing a record"))?;
        let named;
        let files = match attach {
            Attach::Keep => Files::Keep,
            Attach::Clear => Files::Set(None),
            Attach::Named(names) => {
                named = files_text(&file_refs(&tx, names)?)?;
                Files::Set(named.as_deref())
            }
        };
        write_in(
            &tx,
            &self.author,
            collection,
            id,
            text.as_deref(),
            Some(base),
            files,
        )?;
        // Read back inside the transaction: the caller gets exactly the
        // version it wrote, never a newer one another process wrote after.
        let written = tx
            .query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM coffer_records WHERE collection = ?1 AND id = ?2"
                ),
                [collection, id],
                row_to_record,
            )
            .map_err(db("writing a record"))??;
        tx.commit().map_err(db("writing a record"))?;
        Ok(written)
    }

    /// The live (not deleted) records of a collection, by id.
    pub fn list(&self, collection: &str) -> Result<Vec<Record>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {RECORD_COLUMNS} FROM coffer_records
                 WHERE collection = ?1 AND deleted = 0 ORDER BY id"
            ))
            .map_err(db("listing records"))?;
        let rows = stmt
            .query_map([collection], row_to_record)
            .map_err(db("listing records"))?;
        rows.map(|r| r.map_err(db("listing records")).and_then(|r| r))
            .collect()
    }

    /// Changes after `seq` (0 for all), oldest first, at most `limit`.
    pub fn changes_since(&self, seq: u64, limit: usize) -> Result<Vec<Change>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, collection, id, version, deleted FROM coffer_changes
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(db("reading changes"))?;
        let rows = stmt
            .query_map(
                params![
                    i64::try_from(seq).unwrap_or(i64::MAX),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok(Change {
                        seq: r.get::<_, i64>(0)? as u64,
                        collection: r.get(1)?,
                        id: r.get(2)?,
                        version: r.get::<_, i64>(3)? as u64,
                        deleted: r.get::<_, i64>(4)? != 0,
                    })
                },
            )
            .map_err(db("reading changes"))?;
        rows.map(|r| r.map_err(db("reading changes"))).collect()
    }
}

/// One local write inside `tx`: the record (`body` `None`: deleted), its
/// change logged, and its sync state marked pending. With `check`
/// (`Some(base)`), the base-version rule of [`RecordStore::put`] and the
/// rule that only a live record is deleted apply. `files` says what
/// becomes of the record's files (a deletion references none). Returns the
/// change's sequence.
pub(crate) fn write_in(
    tx: &rusqlite::Transaction<'_>,
    author: &str,
    collection: &str,
    id: &str,
    body: Option<&str>,
    check: Option<Option<u64>>,
    files: Files<'_>,
) -> Result<i64> {
    let current: Option<(i64, bool, Option<String>)> = tx
        .prepare_cached(
            "SELECT version, deleted, body FROM coffer_records WHERE collection = ?1 AND id = ?2",
        )
        .and_then(|mut s| {
            s.query_row([collection, id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? != 0, r.get(2)?))
            })
            .optional()
        })
        .map_err(db("writing a record"))?;
    // A negative version can only come from a damaged or crafted database.
    let current_version =
        u64::try_from(current.as_ref().map_or(0, |(v, _, _)| *v)).map_err(|_| corrupt_version())?;
    if let Some(check) = check {
        if let Some(base) = check {
            if base != current_version {
                return Err(Error::VersionConflict {
                    collection: collection.into(),
                    id: id.into(),
                    current: current_version,
                });
            }
        }
        if body.is_none() && current.as_ref().is_none_or(|(_, deleted, _)| *deleted) {
            return Err(Error::NoSuchRecord {
                collection: collection.into(),
                id: id.into(),
            });
        }
    }
    let version = current_version
        .checked_add(1)
        .filter(|v| i64::try_from(*v).is_ok())
        .ok_or_else(corrupt_version)?;
    let deleted = body.is_none();
    let (keep_files, files) = match files {
        _ if deleted => (false, None),
        Files::Keep => (true, None),
        Files::Set(files) => (false, files),
    };
    tx.prepare_cached(
        "INSERT INTO coffer_records (collection, id, body, version, updated_at, deleted, files)
         VALUES (?1, ?2, ?3, ?4, unixepoch(), ?5, ?7)
         ON CONFLICT (collection, id) DO UPDATE SET
             body = excluded.body, version = excluded.version,
             updated_at = excluded.updated_at, deleted = excluded.deleted,
             files = CASE WHEN ?6 THEN coffer_records.files ELSE excluded.files END",
    )
    .and_then(|mut s| {
        s.execute(params![
            collection,
            id,
            body,
            version as i64,
            deleted,
            keep_files,
            files
        ])
    })
    .map_err(db("writing a record"))?;
    tx.prepare_cached(
        "INSERT INTO coffer_changes (collection, id, version, deleted, changed_at)
         VALUES (?1, ?2, ?3, ?4, unixepoch())",
    )
    .and_then(|mut s| s.execute(params![collection, id, version as i64, deleted]))
    .map_err(db("logging a change"))?;
    let seq = tx.last_insert_rowid();
    let previous = current.and_then(|(_, _, body)| body);
    crate::store::sync::note_local_write(tx, collection, id, seq, author, previous.as_deref())?;
    Ok(seq)
}

/// The references of the files `names`, at the versions the file store
/// holds now (read inside the write's transaction).
fn file_refs(tx: &rusqlite::Transaction<'_>, names: &[&str]) -> Result<Vec<FileRef>> {
    let mut refs = Vec::with_capacity(names.len());
    for name in names {
        let row: Option<(Option<String>, i64, Option<String>)> = tx
            .query_row(
                "SELECT sha256, size, content_type FROM coffer_files WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db("reading file metadata"))?;
        let (sha256, size, content_type) = row.ok_or_else(|| Error::NoSuchFile {
            name: (*name).to_owned(),
        })?;
        // Replaced since its hash was worked out by a put that recorded
        // its own: a missing one means a damaged database.
        let sha256 = sha256.ok_or(Error::Database {
            op: "reading file metadata",
            kind: crate::error::DatabaseErrorKind::Other("a file has no recorded SHA-256".into()),
        })?;
        refs.push(FileRef {
            name: (*name).to_owned(),
            sha256,
            size: u64::try_from(size).map_err(|_| corrupt_version())?,
            content_type,
        });
    }
    Ok(refs)
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Record>> {
    let body: Option<String> = r.get(2)?;
    let body = match body {
        Some(text) => match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => {
                return Ok(Err(Error::Database {
                    op: "reading a record",
                    kind: crate::error::DatabaseErrorKind::Other("stored body is not JSON".into()),
                }))
            }
        },
        None => Value::Null,
    };
    let files = match files_from(r.get(6)?) {
        Ok(files) => files,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(Record {
        collection: r.get(0)?,
        id: r.get(1)?,
        body,
        version: r.get::<_, i64>(3)? as u64,
        updated_at: to_system_time(r.get(4)?),
        deleted: r.get::<_, i64>(5)? != 0,
        files,
    }))
}
