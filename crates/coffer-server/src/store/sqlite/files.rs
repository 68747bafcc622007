//! The SQLite side of [`crate::store::files`]. Every write that reads
//! before it decides runs in an IMMEDIATE transaction: one writer at a
//! time, so a quota check and the upload it admits are one step.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::SqliteStore;
use crate::store::files::{
    upload_trash_prefix, Claim, Completed, Declared, NewUpload, StoredBlob, StoredUpload,
    UploadState,
};
use crate::store::{db_error, StoreError};

const UPLOAD_COLUMNS: &str = "upload_id, org_id, app, device_id, sha256, size, content_type, \
     piece_size, received, state, expires_at";

fn stored_upload(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredUpload> {
    Ok(StoredUpload {
        upload_id: r.get(0)?,
        org_id: r.get(1)?,
        app: r.get(2)?,
        device_id: r.get(3)?,
        sha256: r.get(4)?,
        size: r.get(5)?,
        content_type: r.get(6)?,
        piece_size: r.get(7)?,
        received: r.get(8)?,
        state: UploadState::from_db(r.get(9)?),
        expires_at: r.get(10)?,
    })
}

const BLOB_COLUMNS: &str =
    "org_id, app, sha256, size, content_type, upload_id, piece_size, broken_at";

fn stored_blob(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredBlob> {
    Ok(StoredBlob {
        org_id: r.get(0)?,
        app: r.get(1)?,
        sha256: r.get(2)?,
        size: r.get(3)?,
        content_type: r.get(4)?,
        upload_id: r.get(5)?,
        piece_size: r.get(6)?,
        broken_at: r.get(7)?,
    })
}

fn trash(tx: &rusqlite::Transaction<'_>, prefix: &str, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO sync_object_trash (prefix, since) VALUES (?1, ?2) ON CONFLICT (prefix) DO NOTHING",
        params![prefix, now],
    )
    .map(|_| ())
    .map_err(|x| db_error("putting objects in the trash")(&x))
}

impl SqliteStore {
    pub(in crate::store) async fn files_declare(
        &self,
        new: NewUpload,
    ) -> Result<Declared, StoreError> {
        let op = "declaring a file";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let blob = tx
                .query_row(
                    &format!(
                        "SELECT {BLOB_COLUMNS} FROM sync_blobs WHERE org_id = ?1 AND app = ?2 AND sha256 = ?3"
                    ),
                    params![new.org_id, new.app, new.sha256],
                    stored_blob,
                )
                .optional()
                .map_err(|x| e(&x))?;
            match blob {
                Some(blob) if blob.size != new.size => return Ok(Declared::OtherSize),
                Some(blob) if blob.broken_at.is_none() => {
                    // Referenced now: a garbage collection (one writer at a
                    // time, after this commits) keeps it for the retention,
                    // so the push that names it finds it.
                    tx.execute(
                        "UPDATE sync_blobs SET last_referenced_at = max(last_referenced_at, ?4)
                         WHERE org_id = ?1 AND app = ?2 AND sha256 = ?3",
                        params![new.org_id, new.app, new.sha256, new.now],
                    )
                    .map_err(|x| e(&x))?;
                    tx.commit().map_err(|x| e(&x))?;
                    return Ok(Declared::Stored(blob));
                }
                // Broken: as if absent (a new upload repairs it).
                _ => {}
            }
            let mine = tx
                .query_row(
                    &format!(
                        "SELECT {UPLOAD_COLUMNS} FROM sync_uploads
                         WHERE device_id = ?1 AND app = ?2 AND sha256 = ?3 AND size = ?4 AND org_id = ?5
                             AND state = 0 AND expires_at > ?6
                         ORDER BY created_at DESC, upload_id LIMIT 1"
                    ),
                    params![new.device_id, new.app, new.sha256, new.size, new.org_id, new.now],
                    stored_upload,
                )
                .optional()
                .map_err(|x| e(&x))?;
            if let Some(upload) = mine {
                return Ok(Declared::Resumed(upload));
            }
            if new.size > new.max_file_size {
                return Ok(Declared::TooLarge);
            }
            let (open, held, first_expiry): (i64, i64, Option<i64>) = tx
                .query_row(
                    "SELECT count(*), coalesce(sum(size), 0), min(expires_at) FROM sync_uploads
                     WHERE device_id = ?1 AND state = 0 AND expires_at > ?2",
                    params![new.device_id, new.now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(|x| e(&x))?;
            if open >= new.max_open {
                return Ok(Declared::TooManyOpen {
                    first_expiry: first_expiry.unwrap_or(new.now),
                });
            }
            let used: i64 = tx
                .query_row(
                    "SELECT coalesce((SELECT sum(size) FROM sync_blobs
                                      WHERE org_id = ?1 AND broken_at IS NULL), 0)
                          + coalesce((SELECT sum(size) FROM sync_uploads
                                      WHERE org_id = ?1 AND state = 0 AND expires_at > ?2), 0)",
                    params![new.org_id, new.now],
                    |r| r.get(0),
                )
                .map_err(|x| e(&x))?;
            if used.saturating_add(new.size) > new.quota {
                return Ok(Declared::OverQuota { used });
            }
            if open > 0 && held.saturating_add(new.size) > new.device_share {
                return Ok(Declared::OverDeviceShare { held });
            }
            tx.execute(
                "INSERT INTO sync_uploads (upload_id, org_id, app, device_id, sha256, size, content_type,
                     piece_size, received, state, lease, lease_until, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, NULL, NULL, ?9, ?10)",
                params![
                    new.upload_id,
                    new.org_id,
                    new.app,
                    new.device_id,
                    new.sha256,
                    new.size,
                    new.content_type,
                    new.piece_size,
                    new.now,
                    new.expires_at
                ],
            )
            .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(Declared::Created(StoredUpload {
                upload_id: new.upload_id,
                org_id: new.org_id,
                app: new.app,
                device_id: new.device_id,
                sha256: new.sha256,
                size: new.size,
                content_type: new.content_type,
                piece_size: new.piece_size,
                received: 0,
                state: UploadState::Open,
                expires_at: new.expires_at,
            }))
        })
        .await
    }

    pub(in crate::store) async fn files_upload(
        &self,
        id: String,
    ) -> Result<Option<StoredUpload>, StoreError> {
        let op = "reading an upload";
        self.with(op, move |conn| {
            conn.query_row(
                &format!("SELECT {UPLOAD_COLUMNS} FROM sync_uploads WHERE upload_id = ?1"),
                [id],
                stored_upload,
            )
            .optional()
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_claim(
        &self,
        id: String,
        offset: i64,
        lease: String,
        now: i64,
        lease_secs: i64,
    ) -> Result<Claim, StoreError> {
        let op = "taking an upload's lease";
        // One host: the process's clock is the only one.
        let until = now.saturating_add(lease_secs);
        self.with(op, move |conn| {
            let e = db_error(op);
            let taken = conn
                .execute(
                    "UPDATE sync_uploads SET lease = ?3, lease_until = ?5
                     WHERE upload_id = ?1 AND state = 0 AND received = ?2 AND received < size
                         AND expires_at > ?4 AND (lease IS NULL OR lease_until <= ?4)",
                    params![id, offset, lease, now, until],
                )
                .map_err(|x| e(&x))?;
            if taken == 1 {
                return Ok(Claim::Claimed);
            }
            let upload = conn
                .query_row(
                    &format!("SELECT {UPLOAD_COLUMNS} FROM sync_uploads WHERE upload_id = ?1"),
                    [&id],
                    stored_upload,
                )
                .optional()
                .map_err(|x| e(&x))?;
            Ok(match upload {
                Some(u) if !u.is_open(now) => Claim::NotOpen,
                Some(u) if u.received != offset => Claim::Elsewhere(u.received),
                Some(_) => Claim::Busy,
                None => Claim::NotOpen,
            })
        })
        .await
    }

    pub(in crate::store) async fn files_advance(
        &self,
        id: String,
        lease: String,
        offset: i64,
        to: i64,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let op = "advancing an upload";
        self.with(op, move |conn| {
            conn.execute(
                "UPDATE sync_uploads SET received = ?4, lease = NULL, lease_until = NULL,
                     expires_at = max(expires_at, ?6)
                 WHERE upload_id = ?1 AND lease = ?2 AND received = ?3 AND state = 0 AND expires_at > ?5",
                params![id, lease, offset, to, now, expires_at],
            )
            .map(|n| n == 1)
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_renew(
        &self,
        id: String,
        lease: String,
        lease_secs: i64,
    ) -> Result<bool, StoreError> {
        let op = "renewing an upload's lease";
        let until = crate::store::now_unix().saturating_add(lease_secs);
        self.with(op, move |conn| {
            conn.execute(
                "UPDATE sync_uploads SET lease_until = max(lease_until, ?3)
                 WHERE upload_id = ?1 AND lease = ?2 AND state = 0",
                params![id, lease, until],
            )
            .map(|n| n == 1)
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_release(
        &self,
        id: String,
        lease: String,
    ) -> Result<(), StoreError> {
        let op = "releasing an upload's lease";
        self.with(op, move |conn| {
            conn.execute(
                "UPDATE sync_uploads SET lease = NULL, lease_until = NULL WHERE upload_id = ?1 AND lease = ?2",
                params![id, lease],
            )
            .map(|_| ())
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_complete(
        &self,
        id: String,
        lease: String,
        offset: i64,
        now: i64,
    ) -> Result<Completed, StoreError> {
        let op = "completing an upload";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let done: Option<(i64, String, String, i64, Option<String>, i64)> = tx
                .query_row(
                    "UPDATE sync_uploads SET state = 1, received = size, lease = NULL, lease_until = NULL
                     WHERE upload_id = ?1 AND lease = ?2 AND received = ?3 AND state = 0 AND expires_at > ?4
                     RETURNING org_id, app, sha256, size, content_type, piece_size",
                    params![id, lease, offset, now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .optional()
                .map_err(|x| e(&x))?;
            let Some((org_id, app, sha256, size, content_type, piece_size)) = done else {
                return Ok(Completed::Gone);
            };
            let there: Option<(String, Option<i64>)> = tx
                .query_row(
                    "SELECT upload_id, broken_at FROM sync_blobs WHERE org_id = ?1 AND app = ?2 AND sha256 = ?3",
                    params![org_id, app, sha256],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|x| e(&x))?;
            let completed = match there {
                None => {
                    tx.execute(
                        "INSERT INTO sync_blobs (org_id, app, sha256, size, content_type, upload_id,
                             piece_size, created_at, last_referenced_at, broken_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, NULL)",
                        params![org_id, app, sha256, size, content_type, id, piece_size, now],
                    )
                    .map_err(|x| e(&x))?;
                    Completed::Stored
                }
                Some((broken_upload, Some(_))) => {
                    // This upload's pieces replace a broken blob's.
                    tx.execute(
                        "UPDATE sync_blobs SET upload_id = ?4, piece_size = ?5, content_type = ?6,
                             broken_at = NULL, last_referenced_at = max(last_referenced_at, ?7)
                         WHERE org_id = ?1 AND app = ?2 AND sha256 = ?3",
                        params![org_id, app, sha256, id, piece_size, content_type, now],
                    )
                    .map_err(|x| e(&x))?;
                    trash(&tx, &upload_trash_prefix(org_id, &broken_upload), now)?;
                    Completed::Repaired {
                        replaced: broken_upload,
                    }
                }
                Some((_, None)) => {
                    trash(&tx, &upload_trash_prefix(org_id, &id), now)?;
                    Completed::AlreadyStored
                }
            };
            tx.commit().map_err(|x| e(&x))?;
            Ok(completed)
        })
        .await
    }

    pub(in crate::store) async fn files_drop(
        &self,
        id: String,
        now: i64,
    ) -> Result<bool, StoreError> {
        let op = "dropping an upload";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let org: Option<i64> = tx
                .query_row(
                    "UPDATE sync_uploads SET state = 2, received = 0, lease = NULL, lease_until = NULL,
                         expires_at = ?2
                     WHERE upload_id = ?1 AND state = 0 RETURNING org_id",
                    params![id, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|x| e(&x))?;
            let Some(org_id) = org else { return Ok(false) };
            trash(&tx, &upload_trash_prefix(org_id, &id), now)?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(true)
        })
        .await
    }

    pub(in crate::store) async fn files_blob(
        &self,
        org_id: i64,
        app: String,
        sha: String,
    ) -> Result<Option<StoredBlob>, StoreError> {
        let op = "reading a blob";
        self.with(op, move |conn| {
            conn.query_row(
                &format!(
                    "SELECT {BLOB_COLUMNS} FROM sync_blobs WHERE org_id = ?1 AND app = ?2 AND sha256 = ?3"
                ),
                params![org_id, app, sha],
                stored_blob,
            )
            .optional()
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_mark_broken(
        &self,
        org_id: i64,
        app: String,
        sha: String,
        upload_id: String,
        now: i64,
    ) -> Result<bool, StoreError> {
        let op = "marking a blob broken";
        self.with(op, move |conn| {
            conn.execute(
                "UPDATE sync_blobs SET broken_at = ?5
                 WHERE org_id = ?1 AND app = ?2 AND sha256 = ?3 AND upload_id = ?4 AND broken_at IS NULL",
                params![org_id, app, sha, upload_id, now],
            )
            .map(|n| n == 1)
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_insert_blob(
        &self,
        blob: StoredBlob,
        now: i64,
    ) -> Result<bool, StoreError> {
        let op = "storing a blob";
        self.with(op, move |conn| {
            conn.execute(
                "INSERT INTO sync_blobs (org_id, app, sha256, size, content_type, upload_id, piece_size,
                     created_at, last_referenced_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (org_id, app, sha256) DO NOTHING",
                params![
                    blob.org_id,
                    blob.app,
                    blob.sha256,
                    blob.size,
                    blob.content_type,
                    blob.upload_id,
                    blob.piece_size,
                    now
                ],
            )
            .map(|n| n == 1)
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_trash(
        &self,
        prefix: String,
        now: i64,
    ) -> Result<(), StoreError> {
        let op = "putting objects in the trash";
        self.with(op, move |conn| {
            conn.execute(
                "INSERT INTO sync_object_trash (prefix, since) VALUES (?1, ?2) ON CONFLICT (prefix) DO NOTHING",
                params![prefix, now],
            )
            .map(|_| ())
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_trashed(
        &self,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let op = "reading the trash";
        self.with(op, move |conn| {
            conn.prepare("SELECT prefix FROM sync_object_trash ORDER BY since, prefix LIMIT ?1")
                .and_then(|mut s| s.query_map([limit], |r| r.get(0))?.collect())
                .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_untrash(&self, prefix: String) -> Result<(), StoreError> {
        let op = "emptying the trash";
        self.with(op, move |conn| {
            conn.execute("DELETE FROM sync_object_trash WHERE prefix = ?1", [prefix])
                .map(|_| ())
                .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_expire_uploads(
        &self,
        now: i64,
        keep_gone: i64,
    ) -> Result<(u64, u64), StoreError> {
        let op = "expiring uploads";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let expired: Vec<(i64, String)> = tx
                .prepare(
                    "UPDATE sync_uploads SET state = 2, lease = NULL, lease_until = NULL
                     WHERE state = 0 AND expires_at <= ?1 RETURNING org_id, upload_id",
                )
                .and_then(|mut s| s.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(|x| e(&x))?;
            for (org_id, id) in &expired {
                trash(&tx, &upload_trash_prefix(*org_id, id), now)?;
            }
            let forgotten = tx
                .execute(
                    "DELETE FROM sync_uploads
                     WHERE (state = 1 AND expires_at <= ?1) OR (state = 2 AND expires_at <= ?1 - ?2)",
                    params![now, keep_gone],
                )
                .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok((expired.len() as u64, forgotten as u64))
        })
        .await
    }

    pub(in crate::store) async fn files_orgs(&self) -> Result<Vec<i64>, StoreError> {
        let op = "listing organizations with files";
        self.with(op, move |conn| {
            conn.prepare("SELECT DISTINCT org_id FROM sync_blobs ORDER BY org_id")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn files_collect_blobs(
        &self,
        org_id: i64,
        cutoff: i64,
        now: i64,
    ) -> Result<u64, StoreError> {
        let op = "collecting unreferenced blobs";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let gone: Vec<String> = tx
                .prepare(
                    "DELETE FROM sync_blobs WHERE org_id = ?1 AND last_referenced_at < ?2
                         AND NOT EXISTS (SELECT 1 FROM sync_file_refs f WHERE f.org_id = sync_blobs.org_id
                             AND f.app = sync_blobs.app AND f.sha256 = sync_blobs.sha256)
                     RETURNING upload_id",
                )
                .and_then(|mut s| s.query_map(params![org_id, cutoff], |r| r.get(0))?.collect())
                .map_err(|x| e(&x))?;
            for id in &gone {
                trash(&tx, &upload_trash_prefix(org_id, id), now)?;
            }
            tx.commit().map_err(|x| e(&x))?;
            Ok(gone.len() as u64)
        })
        .await
    }
}
