//! The record store's sync state (docs/formats/stores.md, "Sync state"):
//! what the device last took from the control plane, which local changes
//! it has not yet delivered, and the other sides of every conflict — kept
//! in the app's own SQLCipher database, so that a page of pulled records
//! and its cursor, or a push's answer, land in one transaction.
//!
//! This module decides nothing about the wire: the device agent turns
//! [`PendingChange`]s into push operations and the server's answers into
//! [`Ack`]s and [`PulledHead`]s. What it guarantees:
//! - a local change is pending until an answer names it (applied,
//!   duplicate, conflict or rejected; an answer that it waits — its file
//!   is not on the server yet — keeps it pending); a crash anywhere only
//!   repeats work;
//! - a pulled record never overwrites a local change that is still pending
//!   or in conflict: the server's side is kept beside it;
//! - a reset (the server's cursor expired) forgets only the cursor: every
//!   record and every pending change stays.

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::store::records::{files_from, files_text, FileRef, Files, RecordStore, MAX_BODY_LEN};

/// The tables, created with the record store.
pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS coffer_sync_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS coffer_sync_records (
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        server_rev TEXT,
        server_seq INTEGER,
        local_seq INTEGER,
        author TEXT,
        base_body TEXT,
        resolves TEXT,
        pushed_rev TEXT,
        rejected_seq INTEGER,
        reject_code TEXT,
        conflicted INTEGER NOT NULL DEFAULT 0,
        seen INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (collection, id)
    ) STRICT;
    CREATE INDEX IF NOT EXISTS coffer_sync_pending
        ON coffer_sync_records (local_seq) WHERE local_seq IS NOT NULL;
    CREATE INDEX IF NOT EXISTS coffer_sync_conflicted
        ON coffer_sync_records (conflicted) WHERE conflicted = 1;
    CREATE TABLE IF NOT EXISTS coffer_sync_sides (
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        revision TEXT NOT NULL,
        kind TEXT NOT NULL,
        base TEXT,
        deleted INTEGER NOT NULL,
        body TEXT,
        author TEXT NOT NULL,
        files TEXT,
        PRIMARY KEY (collection, id, revision)
    ) STRICT;";

/// Columns added after the tables were first made: (table, column),
/// each `TEXT`, added at the open that raises [`SCHEMA_VERSION`].
const ADDED_COLUMNS: &[(&str, &str)] = &[
    // Version 2 (files sync): the files a record and a side reference.
    ("coffer_records", "files"),
    ("coffer_sync_sides", "files"),
];

/// The meta key of the store's origin (32 hex digits).
const ORIGIN: &str = "origin";
/// The meta key of the cursor of the last page applied.
const CURSOR: &str = "cursor";
/// Present once a pull has reached the end of the feed.
const COMPLETE: &str = "complete";
/// Present while a reset's full pull has not reached the end.
const RESETTING: &str = "resetting";
/// Unix time of the last page applied.
const PULLED_AT: &str = "pulled_at";
/// Present once records written before sync existed are marked pending.
const BACKFILLED: &str = "backfilled";
/// The meta key of the version of these tables (and their indexes).
const SCHEMA_KEY: &str = "schema";
/// Raised when [`SCHEMA`] gains a table, an index or a column.
const SCHEMA_VERSION: &str = "2";

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::database(op, e)
}

fn corrupt(what: &'static str) -> Error {
    Error::Database {
        op: "reading the sync state",
        kind: crate::error::DatabaseErrorKind::Other(what.into()),
    }
}

/// A local change not yet delivered: the latest local state of one record.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingChange {
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// The local sequence of the change: with the origin, its revision.
    pub local_seq: u64,
    /// The server revision the edit was made on (`None`: made here).
    pub base: Option<String>,
    /// Whether the record is deleted.
    pub deleted: bool,
    /// Its body (`None` when deleted).
    pub body: Option<Value>,
    /// The local user who made it.
    pub author: String,
    /// The conflict leaves it resolves.
    pub resolves: Vec<String>,
    /// The files the record references (none when deleted).
    pub files: Vec<FileRef>,
    /// The code the server last answered this very change with, when it
    /// did not take it yet but may later ([`AckOutcome::Waiting`]:
    /// `missing_file`). A push of it again must not look like a retry of
    /// the same batch (the server would give the stored answer again).
    pub waiting: Option<String>,
}

/// What the server said of one delivered change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// It is the server's head, at this sequence.
    Applied {
        /// The server's sequence.
        seq: u64,
    },
    /// The server had it already (as head or as a leaf: the next pull says).
    Duplicate,
    /// The server keeps it as a conflict leaf beside another head.
    Conflict,
    /// The server will not take it: kept here, not sent again until edited.
    Rejected {
        /// The server's code.
        code: String,
    },
    /// The server did not take it yet, for a reason that may pass (a file
    /// it references has not reached the server: `missing_file`): it stays
    /// pending, to be sent again, and the code is kept with it
    /// ([`PendingChange::waiting`]) until it is answered otherwise or
    /// edited.
    Waiting {
        /// The server's code.
        code: String,
    },
}

/// The answer for one delivered change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// The change's local sequence.
    pub local_seq: u64,
    /// Its revision's name.
    pub revision: String,
    /// What became of it.
    pub outcome: AckOutcome,
}

/// One side of a record as the server holds it: its head or a leaf.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    /// The revision's name.
    pub revision: String,
    /// The revision it was made on.
    pub base: Option<String>,
    /// Whether it deletes the record.
    pub deleted: bool,
    /// Its body.
    pub body: Option<Value>,
    /// Who wrote it.
    pub author: String,
    /// The files it references.
    pub files: Vec<FileRef>,
}

/// A record as a pull page brings it.
#[derive(Debug, Clone, PartialEq)]
pub struct PulledHead {
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// Its sequence on the server.
    pub seq: u64,
    /// The head.
    pub head: Side,
    /// Unresolved conflict leaves.
    pub leaves: Vec<Side>,
}

/// What applying a page did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageApplied {
    /// Records taken as the server has them.
    pub taken: usize,
    /// Records whose local change was kept, the server's side beside it.
    pub kept_local: usize,
    /// Records that are in conflict after the page.
    pub conflicts: usize,
    /// Files the records taken reference that this device does not hold
    /// at their version: queued for download.
    pub downloads_queued: usize,
}

/// The sync state of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// The origin of this store's revisions, hex.
    pub origin: String,
    /// The cursor of the last page applied.
    pub cursor: Option<String>,
    /// Whether a pull has reached the end of the feed (and no reset is
    /// under way since).
    pub complete: bool,
    /// Unix time of the last page applied.
    pub pulled_at: Option<i64>,
    /// Local changes not yet delivered.
    pub pending: u64,
    /// Records in conflict.
    pub conflicts: u64,
    /// Local changes the server refused (kept here).
    pub rejected: u64,
    /// Records a completed reset did not see again: the server no longer
    /// has them (tombstones it dropped after its retention). Kept.
    pub unseen: u64,
    /// Files pulled records reference that wait to be downloaded.
    pub downloads_queued: u64,
}

/// A record in conflict, with every side.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// The local state (`None` body: deleted here).
    pub local: Option<Value>,
    /// Whether it is deleted here.
    pub local_deleted: bool,
    /// The files the local state references.
    pub local_files: Vec<FileRef>,
    /// The state the local edit was made on, if kept.
    pub base: Option<Value>,
    /// The server's head (if pulled since).
    pub server: Option<Side>,
    /// Other leaves the server keeps.
    pub leaves: Vec<Side>,
}

/// How a conflict ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// The local state wins.
    KeepLocal,
    /// The server's head wins.
    KeepServer,
    /// A new body.
    Body(Value),
    /// The record is deleted.
    Delete,
}

fn to_text(body: Option<&Value>) -> Result<Option<String>> {
    body.map(|b| {
        serde_json::to_string(b).map_err(|_| Error::TooLarge {
            what: "record body",
            limit: MAX_BODY_LEN as u64,
        })
    })
    .transpose()
}

fn from_text(text: Option<String>) -> Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|_| corrupt("a stored body is not JSON")))
        .transpose()
}

fn seq_from(v: Option<i64>) -> Result<Option<u64>> {
    v.map(|v| u64::try_from(v).map_err(|_| corrupt("a negative sequence")))
        .transpose()
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| corrupt("a sequence past 2^63"))
}

pub(crate) fn meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM coffer_sync_meta WHERE key = ?1",
        [key],
        |r| r.get(0),
    )
    .optional()
    .map_err(db("reading the sync state"))
}

fn set_meta(conn: &Connection, key: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some(v) => conn.execute(
            "INSERT INTO coffer_sync_meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, v],
        ),
        None => conn.execute("DELETE FROM coffer_sync_meta WHERE key = ?1", [key]),
    }
    .map(|_| ())
    .map_err(db("writing the sync state"))
}

/// Creates the sync tables; on a store made before sync, marks every
/// record as a pending local change once (so nothing written earlier is
/// left behind), in one transaction.
pub(crate) fn create(conn: &mut Connection, author: &str) -> Result<()> {
    // Every open of a record store comes here: once the tables are in
    // place, a read says so, and no write lock is taken (a `records get`
    // must not wait behind another process's sync).
    let ready: Option<String> = conn
        .query_row(
            "SELECT value FROM coffer_sync_meta WHERE key = ?1",
            [SCHEMA_KEY],
            |r| r.get(0),
        )
        .ok();
    if ready.as_deref() == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("creating the sync state"))?;
    tx.execute_batch(SCHEMA)
        .map_err(db("creating the sync state"))?;
    for (table, column) in ADDED_COLUMNS {
        let present: i64 = tx
            .query_row(
                &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                [column],
                |r| r.get(0),
            )
            .map_err(db("creating the sync state"))?;
        if present == 0 {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))
                .map_err(db("creating the sync state"))?;
        }
    }
    if meta(&tx, BACKFILLED)?.is_none() {
        tx.execute(
            "INSERT OR IGNORE INTO coffer_sync_records (collection, id, local_seq, author)
             SELECT r.collection, r.id,
                    (SELECT max(c.seq) FROM coffer_changes c
                     WHERE c.collection = r.collection AND c.id = r.id), ?1
             FROM coffer_records r",
            // Who wrote them is not recorded: they are the opener's (whose
            // vault it is), the best the device knows.
            [author],
        )
        .map_err(db("creating the sync state"))?;
        // A record with no change logged (not possible through this store)
        // would have no revision: it gets none, and is not pending.
        set_meta(&tx, BACKFILLED, Some("1"))?;
    }
    set_meta(&tx, SCHEMA_KEY, Some(SCHEMA_VERSION))?;
    tx.commit().map_err(db("creating the sync state"))
}

/// Within a local write's transaction: the record's latest change is
/// `local_seq`, by `author`, pending delivery. The state it was made on is
/// kept the first time (for a conflict's three-way view).
pub(crate) fn note_local_write(
    tx: &Transaction<'_>,
    collection: &str,
    id: &str,
    local_seq: i64,
    author: &str,
    previous_body: Option<&str>,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO coffer_sync_records (collection, id, local_seq, author)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (collection, id) DO UPDATE SET
             base_body = CASE WHEN local_seq IS NULL AND server_rev IS NOT NULL
                              THEN ?5 ELSE base_body END,
             local_seq = excluded.local_seq,
             author = excluded.author",
    )
    .and_then(|mut s| s.execute(params![collection, id, local_seq, author, previous_body]))
    .map_err(db("logging a change"))?;
    Ok(())
}

impl RecordStore {
    /// This store's origin: 16 random bytes, drawn on first use (never all
    /// zeroes: that origin is the server's own), as 32 hex digits.
    pub fn sync_origin(&mut self) -> Result<String> {
        if let Some(origin) = meta(&self.conn, ORIGIN)? {
            return Ok(origin);
        }
        let mut bytes = [0u8; 16];
        while bytes == [0u8; 16] {
            rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut bytes)?;
        }
        let origin: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("writing the sync state"))?;
        // Another process may have drawn one meanwhile: the first stays.
        let kept = match meta(&tx, ORIGIN)? {
            Some(theirs) => theirs,
            None => {
                set_meta(&tx, ORIGIN, Some(&origin))?;
                origin
            }
        };
        tx.commit().map_err(db("writing the sync state"))?;
        Ok(kept)
    }

    /// The sync state, with counts.
    pub fn sync_state(&mut self) -> Result<SyncState> {
        let origin = self.sync_origin()?;
        let count = |sql: &str| -> Result<u64> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(db("reading the sync state"))
        };
        Ok(SyncState {
            origin,
            cursor: meta(&self.conn, CURSOR)?,
            complete: meta(&self.conn, COMPLETE)?.is_some()
                && meta(&self.conn, RESETTING)?.is_none(),
            pulled_at: meta(&self.conn, PULLED_AT)?.and_then(|t| t.parse().ok()),
            pending: count(
                "SELECT count(*) FROM coffer_sync_records WHERE local_seq IS NOT NULL
                 AND (rejected_seq IS NULL OR rejected_seq <> local_seq)",
            )?,
            conflicts: count("SELECT count(*) FROM coffer_sync_records WHERE conflicted = 1")?,
            rejected: count(
                "SELECT count(*) FROM coffer_sync_records WHERE local_seq IS NOT NULL
                 AND rejected_seq = local_seq",
            )?,
            unseen: if meta(&self.conn, RESETTING)?.is_some() {
                0
            } else {
                // A local tombstone the server dropped agrees with it; a
                // pending change is on its way to it.
                count(
                    "SELECT count(*) FROM coffer_sync_records s
                     JOIN coffer_records r ON r.collection = s.collection AND r.id = s.id
                     WHERE s.seen = 0 AND r.deleted = 0 AND s.local_seq IS NULL",
                )?
            },
            // The queue exists once a pulled record referenced a file.
            downloads_queued: if count(
                "SELECT count(*) FROM sqlite_master
                 WHERE type = 'table' AND name = 'coffer_file_queue'",
            )? > 0
            {
                count("SELECT count(*) FROM coffer_file_queue")?
            } else {
                0
            },
        })
    }

    /// Up to `limit` pending changes, oldest first (a change the server
    /// refused is not offered again until the record changes).
    pub fn pending_changes(&self, limit: usize) -> Result<Vec<PendingChange>> {
        self.pending_changes_after(0, limit)
    }

    /// [`RecordStore::pending_changes`] whose local sequence is above
    /// `after` (the next batch while the last one is on its way).
    pub fn pending_changes_after(&self, after: u64, limit: usize) -> Result<Vec<PendingChange>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT s.collection, s.id, s.local_seq, s.server_rev, s.author, s.resolves,
                        r.body, r.deleted, r.files,
                        CASE WHEN s.rejected_seq = -s.local_seq THEN s.reject_code END
                 FROM coffer_sync_records s
                 JOIN coffer_records r ON r.collection = s.collection AND r.id = s.id
                 WHERE s.local_seq > ?2
                   AND (s.rejected_seq IS NULL OR s.rejected_seq <> s.local_seq)
                 ORDER BY s.local_seq LIMIT ?1",
            )
            .map_err(db("reading pending changes"))?;
        let rows = stmt
            .query_map(
                params![
                    i64::try_from(limit).unwrap_or(i64::MAX),
                    i64::try_from(after).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, i64>(7)? != 0,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, Option<String>>(9)?,
                    ))
                },
            )
            .map_err(db("reading pending changes"))?;
        let mut out = Vec::new();
        for row in rows {
            let (collection, id, seq, base, author, resolves, body, deleted, files, waiting) =
                row.map_err(db("reading pending changes"))?;
            let resolves = match resolves {
                Some(text) => serde_json::from_str(&text)
                    .map_err(|_| corrupt("a stored list of leaves is not JSON"))?,
                None => Vec::new(),
            };
            out.push(PendingChange {
                collection,
                id,
                local_seq: seq_from(Some(seq))?.unwrap_or(0),
                base,
                deleted,
                body: if deleted { None } else { from_text(body)? },
                author: author.unwrap_or_default(),
                resolves,
                files: if deleted {
                    Vec::new()
                } else {
                    files_from(files)?
                },
                waiting,
            });
        }
        Ok(out)
    }

    /// Records the server's answers to delivered changes, in one
    /// transaction. An answer about a change that has since been edited
    /// again keeps the newer change pending (its base moves to what the
    /// server took).
    pub fn acknowledge(&mut self, acks: &[Ack]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("recording a push"))?;
        for ack in acks {
            let seq = to_i64(ack.local_seq)?;
            let current: Option<Option<i64>> = tx
                .prepare_cached(
                    "SELECT local_seq FROM coffer_sync_records WHERE collection = ?1 AND id = ?2",
                )
                .and_then(|mut s| {
                    s.query_row([&ack.collection, &ack.id], |r| r.get(0))
                        .optional()
                })
                .map_err(db("recording a push"))?;
            let Some(current) = current else { continue };
            let same = current == Some(seq);
            match &ack.outcome {
                AckOutcome::Applied { seq: server_seq } => {
                    tx.prepare_cached(
                        "UPDATE coffer_sync_records SET server_rev = ?3, server_seq = ?4,
                             pushed_rev = ?3, resolves = NULL,
                             base_body = CASE WHEN ?5 THEN NULL ELSE base_body END,
                             local_seq = CASE WHEN ?5 THEN NULL ELSE local_seq END,
                             conflicted = 0, seen = 1
                         WHERE collection = ?1 AND id = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            ack.collection,
                            ack.id,
                            ack.revision,
                            to_i64(*server_seq).unwrap_or(i64::MAX),
                            same
                        ])
                    })
                    .map_err(db("recording a push"))?;
                    // It was made seeing every side: they are resolved.
                    tx.prepare_cached(
                        "DELETE FROM coffer_sync_sides WHERE collection = ?1 AND id = ?2",
                    )
                    .and_then(|mut s| s.execute([&ack.collection, &ack.id]))
                    .map_err(db("recording a push"))?;
                }
                AckOutcome::Duplicate => {
                    // Head or leaf: the pull that follows says which.
                    tx.prepare_cached(
                        "UPDATE coffer_sync_records SET pushed_rev = ?3,
                             local_seq = CASE WHEN ?4 THEN NULL ELSE local_seq END
                         WHERE collection = ?1 AND id = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![ack.collection, ack.id, ack.revision, same])
                    })
                    .map_err(db("recording a push"))?;
                }
                AckOutcome::Conflict => {
                    tx.prepare_cached(
                        "UPDATE coffer_sync_records SET pushed_rev = ?3, conflicted = 1,
                             local_seq = CASE WHEN ?4 THEN NULL ELSE local_seq END
                         WHERE collection = ?1 AND id = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![ack.collection, ack.id, ack.revision, same])
                    })
                    .map_err(db("recording a push"))?;
                }
                AckOutcome::Rejected { code } => {
                    tx.prepare_cached(
                        "UPDATE coffer_sync_records SET rejected_seq = ?3, reject_code = ?4
                         WHERE collection = ?1 AND id = ?2",
                    )
                    .and_then(|mut s| s.execute(params![ack.collection, ack.id, seq, code]))
                    .map_err(db("recording a push"))?;
                }
                AckOutcome::Waiting { code } => {
                    // `-local_seq`: never equal to a local sequence (those
                    // are positive), so the change stays pending; an edit
                    // moves `local_seq` on and the note no longer applies.
                    tx.prepare_cached(
                        "UPDATE coffer_sync_records SET rejected_seq = -?3, reject_code = ?4
                         WHERE collection = ?1 AND id = ?2",
                    )
                    .and_then(|mut s| s.execute(params![ack.collection, ack.id, seq, code]))
                    .map_err(db("recording a push"))?;
                }
            }
        }
        tx.commit().map_err(db("recording a push"))
    }

    /// Applies one page of pulled records and its cursor in one
    /// transaction; `complete` marks the end of the feed (a first sync, or
    /// a reset, is complete only then). A record with a pending or
    /// conflicting local change keeps it: the server's side is stored
    /// beside it.
    pub fn apply_page(
        &mut self,
        origin: &str,
        records: &[PulledHead],
        cursor: &str,
        complete: bool,
    ) -> Result<PageApplied> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("applying pulled records"))?;
        let mut applied = PageApplied::default();
        // The download queue is the file store's: made here the first time
        // a pulled record references a file.
        if records.iter().any(|r| !r.head.files.is_empty()) {
            crate::store::files::ensure_schema(&tx)?;
        }
        for pulled in records {
            match apply_one(&tx, origin, pulled)? {
                Applied::Taken { queued } => {
                    applied.taken += 1;
                    applied.downloads_queued += queued;
                }
                Applied::KeptLocal => applied.kept_local += 1,
            }
        }
        applied.conflicts = usize::try_from(
            tx.query_row(
                "SELECT count(*) FROM coffer_sync_records WHERE conflicted = 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db("applying pulled records"))?,
        )
        .unwrap_or(0);
        set_meta(&tx, CURSOR, Some(cursor))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        set_meta(&tx, PULLED_AT, Some(&now.to_string()))?;
        if complete {
            set_meta(&tx, COMPLETE, Some("1"))?;
            set_meta(&tx, RESETTING, None)?;
        }
        tx.commit().map_err(db("applying pulled records"))?;
        Ok(applied)
    }

    /// Starts over after the server said the cursor expired: the cursor is
    /// forgotten and the next pull reads the whole feed. Every record and
    /// every pending change stays; records the full pull does not bring
    /// again are counted in [`SyncState::unseen`], never deleted. With
    /// `server_restored` (the server's feed is behind this store's cursor:
    /// restored from a backup), records whose last server state is this
    /// store's own become pending again: the server may have lost them.
    pub fn reset_sync(&mut self, server_restored: bool) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("resetting sync"))?;
        set_meta(&tx, CURSOR, None)?;
        set_meta(&tx, RESETTING, Some("1"))?;
        tx.execute(
            "UPDATE coffer_sync_records SET seen = 0 WHERE server_rev IS NOT NULL",
            [],
        )
        .map_err(db("resetting sync"))?;
        // A server restored from a backup may have lost what this store
        // delivered: every record whose
        // last server state is this store's own becomes a local change
        // again, delivered at the next round (a server that has it takes it
        // as the same content again; one that lost it gets it back, or a
        // conflict). The full pull then never overwrites it.
        if let Some(origin) = meta(&tx, ORIGIN)?.filter(|_| server_restored) {
            type Own = (String, String, Option<String>, bool, String);
            let own: Vec<Own> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT s.collection, s.id, r.body, r.deleted, coalesce(s.author, '')
                         FROM coffer_sync_records s
                         JOIN coffer_records r ON r.collection = s.collection AND r.id = s.id
                         WHERE s.local_seq IS NULL AND substr(s.server_rev, 1, 33) = ?1 || '.'",
                    )
                    .map_err(db("resetting sync"))?;
                let rows = stmt
                    .query_map([&origin], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get::<_, i64>(3)? != 0,
                            r.get(4)?,
                        ))
                    })
                    .map_err(db("resetting sync"))?;
                rows.collect::<rusqlite::Result<_>>()
                    .map_err(db("resetting sync"))?
            };
            for (collection, id, body, deleted, author) in own {
                let body = if deleted { None } else { body };
                crate::store::records::write_in(
                    &tx,
                    &author,
                    &collection,
                    &id,
                    body.as_deref(),
                    None,
                    Files::Keep,
                )?;
            }
        }
        tx.commit().map_err(db("resetting sync"))
    }

    /// Every record in conflict, with its sides.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        let keys: Vec<(String, String)> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT collection, id FROM coffer_sync_records WHERE conflicted = 1
                     ORDER BY collection, id",
                )
                .map_err(db("reading conflicts"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db("reading conflicts"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(db("reading conflicts"))?
        };
        keys.iter()
            .filter_map(|(c, i)| self.conflict(c, i).transpose())
            .collect()
    }

    /// The record's conflict, if it is in one.
    pub fn conflict(&self, collection: &str, id: &str) -> Result<Option<Conflict>> {
        let row: Option<(bool, Option<String>)> = self
            .conn
            .query_row(
                "SELECT conflicted, base_body FROM coffer_sync_records
                 WHERE collection = ?1 AND id = ?2",
                [collection, id],
                |r| Ok((r.get::<_, i64>(0)? != 0, r.get(1)?)),
            )
            .optional()
            .map_err(db("reading a conflict"))?;
        let Some((true, base)) = row else {
            return Ok(None);
        };
        let local = self.get(collection, id)?;
        let mut server = None;
        let mut leaves = Vec::new();
        for (kind, side) in sides(&self.conn, collection, id)? {
            if kind == "head" {
                server = Some(side);
            } else {
                leaves.push(side);
            }
        }
        Ok(Some(Conflict {
            collection: collection.to_owned(),
            id: id.to_owned(),
            local_deleted: local.as_ref().is_none_or(|r| r.deleted),
            local_files: local.as_ref().map(|r| r.files.clone()).unwrap_or_default(),
            local: local.filter(|r| !r.deleted).map(|r| r.body),
            base: from_text(base)?,
            server,
            leaves,
        }))
    }

    /// Ends the record's conflict here: a new local change, made on the
    /// server's head and resolving every leaf, which the next sync
    /// delivers. [`Error::NotInConflict`] if it is not in one;
    /// [`Error::ServerSideUnknown`] if the server's head has not been
    /// pulled yet (sync first).
    pub fn resolve(&mut self, collection: &str, id: &str, resolution: Resolution) -> Result<()> {
        let conflict = self
            .conflict(collection, id)?
            .ok_or_else(|| Error::NotInConflict {
                collection: collection.into(),
                id: id.into(),
            })?;
        let server = conflict.server.clone();
        // Without the server's head kept beside it, the head is this
        // device's own state (it won, and others' leaves wait).
        let head_rev: Option<String> = match &server {
            Some(side) => Some(side.revision.clone()),
            None => self
                .conn
                .query_row(
                    "SELECT pushed_rev FROM coffer_sync_records
                     WHERE collection = ?1 AND id = ?2 AND pushed_rev = server_rev",
                    [collection, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db("resolving a conflict"))?
                .flatten(),
        };
        let head_rev = head_rev.ok_or_else(|| Error::ServerSideUnknown {
            collection: collection.into(),
            id: id.into(),
        })?;
        // The files go with the content kept: the server's side's when
        // it wins (queued for download where missing), the local ones
        // otherwise.
        let server_files = match (&resolution, &server) {
            (Resolution::KeepServer, Some(side)) if !side.deleted => Some(side.files.clone()),
            _ => None,
        };
        let body = match resolution {
            Resolution::KeepLocal => {
                if conflict.local_deleted {
                    None
                } else {
                    conflict.local.clone()
                }
            }
            Resolution::KeepServer => match &server {
                Some(side) if !side.deleted => side.body.clone(),
                Some(_) => None,
                None => conflict.local.clone(),
            },
            Resolution::Body(v) => Some(v),
            Resolution::Delete => None,
        };
        let mut resolves: Vec<String> =
            conflict.leaves.iter().map(|l| l.revision.clone()).collect();
        // This device's own leaf (a conflict it pushed) is resolved too.
        if let Some(own) = self
            .conn
            .query_row(
                "SELECT pushed_rev FROM coffer_sync_records WHERE collection = ?1 AND id = ?2",
                [collection, id],
                |r| r.get::<_, Option<String>>(0),
            )
            .map_err(db("resolving a conflict"))?
        {
            if own != head_rev && !resolves.contains(&own) {
                resolves.push(own);
            }
        }
        let resolves_text =
            serde_json::to_string(&resolves).map_err(|_| corrupt("a list of leaves"))?;
        self.write_resolution(
            collection,
            id,
            body.as_ref(),
            server_files.as_deref(),
            &head_rev,
            &resolves_text,
        )
    }

    fn write_resolution(
        &mut self,
        collection: &str,
        id: &str,
        body: Option<&Value>,
        server_files: Option<&[FileRef]>,
        head_rev: &str,
        resolves: &str,
    ) -> Result<()> {
        let text = to_text(body)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("resolving a conflict"))?;
        let server_text = server_files.map(files_text).transpose()?;
        let files = match &server_text {
            Some(text) => Files::Set(text.as_deref()),
            None => Files::Keep,
        };
        let local_seq = crate::store::records::write_in(
            &tx,
            &self.author,
            collection,
            id,
            text.as_deref(),
            None,
            files,
        )?;
        if let Some(server_files) = server_files.filter(|f| !f.is_empty()) {
            crate::store::files::ensure_schema(&tx)?;
            crate::store::files::queue_missing(&tx, server_files)?;
        }
        tx.execute(
            "UPDATE coffer_sync_records SET server_rev = ?3, resolves = ?4, conflicted = 0,
                 local_seq = ?5, rejected_seq = NULL, reject_code = NULL
             WHERE collection = ?1 AND id = ?2",
            params![collection, id, head_rev, resolves, local_seq],
        )
        .map_err(db("resolving a conflict"))?;
        tx.execute(
            "DELETE FROM coffer_sync_sides WHERE collection = ?1 AND id = ?2",
            [collection, id],
        )
        .map_err(db("resolving a conflict"))?;
        tx.commit().map_err(db("resolving a conflict"))
    }

    /// The server's code for a local change it refused, if it did.
    pub fn rejection(&self, collection: &str, id: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT reject_code FROM coffer_sync_records
                 WHERE collection = ?1 AND id = ?2 AND rejected_seq = local_seq",
                [collection, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("reading the sync state"))
            .map(Option::flatten)
    }
}

fn sides(conn: &Connection, collection: &str, id: &str) -> Result<Vec<(String, Side)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT kind, revision, base, deleted, body, author, files FROM coffer_sync_sides
             WHERE collection = ?1 AND id = ?2 ORDER BY kind, revision",
        )
        .map_err(db("reading a conflict"))?;
    let rows = stmt
        .query_map([collection, id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)? != 0,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })
        .map_err(db("reading a conflict"))?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, revision, base, deleted, body, author, files) =
            row.map_err(db("reading a conflict"))?;
        out.push((
            kind,
            Side {
                revision,
                base,
                deleted,
                body: from_text(body)?,
                author,
                files: files_from(files)?,
            },
        ));
    }
    Ok(out)
}

enum Applied {
    /// Taken, with this many files queued for download.
    Taken {
        queued: usize,
    },
    KeptLocal,
}

/// What the device does with one pulled record, from its local state: the
/// plan, kept apart from the writes so that its cases can be read (and
/// tested) as a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Take the server's head as the local state.
    Take,
    /// The head is this device's own pending change: it is delivered.
    Delivered,
    /// Keep the local change; keep the server's head beside it.
    KeepLocal,
}

/// The local state of a record, as far as a pull cares.
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalState {
    /// The latest local change not yet delivered.
    pub local_seq: Option<i64>,
    /// Whether that change was refused (it is still the local state).
    pub rejected: bool,
    /// Whether the record is in conflict here.
    pub conflicted: bool,
}

/// The plan for a pulled record whose local state is `local` (`None`: the
/// device has never seen it). `own_head_seq` is the head's local sequence
/// when this store's origin made it; `own_leaf` says whether one of the
/// record's leaves is this store's (its local state lost to another head
/// and waits as a leaf).
pub(crate) fn plan(local: Option<&LocalState>, own_head_seq: Option<u64>, own_leaf: bool) -> Plan {
    let Some(local) = local else {
        return Plan::Take;
    };
    match local.local_seq {
        Some(pending) => {
            let head_is_it = own_head_seq.is_some_and(|s| i64::try_from(s).ok() == Some(pending));
            if head_is_it && !local.rejected {
                Plan::Delivered
            } else {
                Plan::KeepLocal
            }
        }
        // The local state is a leaf on the server: kept until resolved.
        None if own_leaf => Plan::KeepLocal,
        None => Plan::Take,
    }
}

fn own_seq(origin: &str, revision: &str) -> Option<u64> {
    let (o, s) = revision.split_once('.')?;
    (o == origin).then(|| s.parse().ok()).flatten()
}

fn apply_one(tx: &Transaction<'_>, origin: &str, pulled: &PulledHead) -> Result<Applied> {
    let local: Option<LocalState> = tx
        .prepare_cached(
            "SELECT local_seq, rejected_seq, conflicted FROM coffer_sync_records
             WHERE collection = ?1 AND id = ?2",
        )
        .and_then(|mut s| {
            s.query_row([&pulled.collection, &pulled.id], |r| {
                let local_seq: Option<i64> = r.get(0)?;
                let rejected: Option<i64> = r.get(1)?;
                Ok(LocalState {
                    local_seq,
                    rejected: local_seq.is_some() && rejected == local_seq,
                    conflicted: r.get::<_, i64>(2)? != 0,
                })
            })
            .optional()
        })
        .map_err(db("applying pulled records"))?;
    let head = &pulled.head;
    let server_seq = to_i64(pulled.seq)?;
    // In conflict after this page: the server keeps leaves (this device's
    // own among them, or others beside its head).
    let has_leaves = !pulled.leaves.is_empty();
    let own_leaf = pulled
        .leaves
        .iter()
        .any(|l| own_seq(origin, &l.revision).is_some());
    let plan = plan(local.as_ref(), own_seq(origin, &head.revision), own_leaf);
    // A record new here has no sides to replace (most of a first pull).
    if local.is_some() {
        tx.prepare_cached("DELETE FROM coffer_sync_sides WHERE collection = ?1 AND id = ?2")
            .and_then(|mut s| s.execute([&pulled.collection, &pulled.id]))
            .map_err(db("applying pulled records"))?;
    }
    let keep_side = |kind: &str, side: &Side| -> Result<()> {
        let body = to_text(side.body.as_ref())?;
        let files = files_text(&side.files)?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO coffer_sync_sides
                 (collection, id, revision, kind, base, deleted, body, author, files)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut s| {
            s.execute(params![
                pulled.collection,
                pulled.id,
                side.revision,
                kind,
                side.base,
                side.deleted,
                body,
                side.author,
                files
            ])
        })
        .map(|_| ())
        .map_err(db("applying pulled records"))
    };
    for leaf in &pulled.leaves {
        keep_side("leaf", leaf)?;
    }
    match plan {
        Plan::Take | Plan::Delivered => {
            let mut queued = 0;
            if plan == Plan::Take {
                let (body, files) = if head.deleted {
                    (None, None)
                } else {
                    (to_text(head.body.as_ref())?, files_text(&head.files)?)
                };
                write_pulled(
                    tx,
                    &pulled.collection,
                    &pulled.id,
                    body.as_deref(),
                    files.as_deref(),
                    head.deleted,
                )?;
                // The record is the server's now, at once; its files follow
                // (the queue survives a crash, like the page).
                if !head.deleted && !head.files.is_empty() {
                    queued = crate::store::files::queue_missing(tx, &head.files)?;
                }
            }
            tx.prepare_cached(
                "INSERT INTO coffer_sync_records
                     (collection, id, server_rev, server_seq, author, conflicted, seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)
                 ON CONFLICT (collection, id) DO UPDATE SET
                     server_rev = excluded.server_rev, server_seq = excluded.server_seq,
                     local_seq = NULL, base_body = NULL, resolves = NULL,
                     rejected_seq = NULL, reject_code = NULL,
                     conflicted = excluded.conflicted, seen = 1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    pulled.collection,
                    pulled.id,
                    head.revision,
                    server_seq,
                    head.author,
                    has_leaves
                ])
            })
            .map_err(db("applying pulled records"))?;
            if has_leaves {
                // The head is the local state now; keep it as the server's
                // side too, so that a resolution knows what it is made on.
                keep_side("head", head)?;
            }
            Ok(Applied::Taken { queued })
        }
        Plan::KeepLocal => {
            // The local change stays and will be delivered (or is in
            // conflict already); the server's head is kept beside it.
            let head_is_own_earlier = own_seq(origin, &head.revision).is_some();
            keep_side("head", head)?;
            let conflicted =
                has_leaves || local.as_ref().is_some_and(|l| l.conflicted) && !head_is_own_earlier;
            tx.prepare_cached(
                "UPDATE coffer_sync_records SET server_seq = ?3, seen = 1,
                     conflicted = ?4,
                     server_rev = CASE WHEN ?5 THEN ?6 ELSE server_rev END
                 WHERE collection = ?1 AND id = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![
                    pulled.collection,
                    pulled.id,
                    server_seq,
                    conflicted,
                    // The head is an earlier change of this device: the
                    // pending one is made on it.
                    head_is_own_earlier,
                    head.revision
                ])
            })
            .map_err(db("applying pulled records"))?;
            Ok(Applied::KeptLocal)
        }
    }
}

/// Writes the server's state of a record as the local one (not a local
/// change: nothing to deliver).
fn write_pulled(
    tx: &Transaction<'_>,
    collection: &str,
    id: &str,
    body: Option<&str>,
    files: Option<&str>,
    deleted: bool,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO coffer_records (collection, id, body, version, updated_at, deleted, files)
         VALUES (?1, ?2, ?3, 1, unixepoch(), ?4, ?5)
         ON CONFLICT (collection, id) DO UPDATE SET
             body = excluded.body, version = version + 1,
             updated_at = excluded.updated_at, deleted = excluded.deleted,
             files = excluded.files",
    )
    .and_then(|mut s| s.execute(params![collection, id, body, deleted, files]))
    .map(|_| ())
    .map_err(db("applying pulled records"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(seq: i64) -> LocalState {
        LocalState {
            local_seq: Some(seq),
            ..LocalState::default()
        }
    }

    #[test]
    fn the_pull_plan_never_overwrites_a_local_change() {
        let clean = LocalState::default();
        let rejected = LocalState {
            rejected: true,
            ..pending(4)
        };
        let cases: &[(Option<&LocalState>, Option<u64>, bool, Plan)] = &[
            // Never seen here: take it.
            (None, None, false, Plan::Take),
            (None, Some(3), false, Plan::Take),
            // Nothing pending: take the server's state.
            (Some(&clean), None, false, Plan::Take),
            (Some(&clean), Some(2), false, Plan::Take),
            // The local state waits as a leaf: kept.
            (Some(&clean), None, true, Plan::KeepLocal),
            // A pending change meets another head: kept.
            (Some(&pending(4)), None, false, Plan::KeepLocal),
            (Some(&pending(4)), None, true, Plan::KeepLocal),
            // ... or an earlier change of this device: kept (made on it).
            (Some(&pending(4)), Some(3), false, Plan::KeepLocal),
            // The head is the pending change itself: delivered.
            (Some(&pending(4)), Some(4), false, Plan::Delivered),
            // A refused change is still the local state: kept.
            (Some(&rejected), Some(4), false, Plan::KeepLocal),
            (Some(&rejected), None, false, Plan::KeepLocal),
        ];
        for (i, (local, own, own_leaf, want)) in cases.iter().enumerate() {
            assert_eq!(plan(*local, *own, *own_leaf), *want, "case {i}");
        }
    }
}
