//! The PostgreSQL side of [`crate::store::files`]. A declaration takes its
//! organization's row `FOR NO KEY UPDATE`, so that declarations of one
//! organization, through any server process, check the quota one at a
//! time (without blocking the inserts that only reference the row).
//! Leases are timed by the database's clock ([`DB_NOW`]): the server
//! processes sharing it may run on hosts whose clocks differ.

use super::{pg, PostgresStore};
use crate::store::files::{
    upload_trash_prefix, Claim, Completed, Declared, NewUpload, StoredBlob, StoredUpload,
    UploadState,
};
use crate::store::StoreError;

const UPLOAD_COLUMNS: &str = "upload_id, org_id, app, device_id, sha256, size, content_type, \
     piece_size, received, state, expires_at";

fn stored_upload(r: &tokio_postgres::Row) -> StoredUpload {
    StoredUpload {
        upload_id: r.get(0),
        org_id: r.get(1),
        app: r.get(2),
        device_id: r.get(3),
        sha256: r.get(4),
        size: r.get(5),
        content_type: r.get(6),
        piece_size: r.get(7),
        received: r.get(8),
        state: UploadState::from_db(r.get(9)),
        expires_at: r.get(10),
    }
}

const BLOB_COLUMNS: &str =
    "org_id, app, sha256, size, content_type, upload_id, piece_size, broken_at";

/// Now, Unix seconds, by the database's clock.
const DB_NOW: &str = "floor(extract(epoch FROM clock_timestamp()))::int8";

fn stored_blob(r: &tokio_postgres::Row) -> StoredBlob {
    StoredBlob {
        org_id: r.get(0),
        app: r.get(1),
        sha256: r.get(2),
        size: r.get(3),
        content_type: r.get(4),
        upload_id: r.get(5),
        piece_size: r.get(6),
        broken_at: r.get(7),
    }
}

const TRASH: &str = "INSERT INTO sync_object_trash (prefix, since)
     SELECT p, $2 FROM unnest($1::text[]) AS t (p) ON CONFLICT (prefix) DO NOTHING";

impl PostgresStore {
    pub(in crate::store) async fn files_declare(
        &self,
        new: NewUpload,
    ) -> Result<Declared, StoreError> {
        let op = "declaring a file";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        tx.execute(
            "SELECT 1 FROM organizations WHERE id = $1 FOR NO KEY UPDATE",
            &[&new.org_id],
        )
        .await
        .map_err(pg(op))?;
        // The blob's row locked until this commits: a garbage collection's
        // DELETE of it waits, then sees the new `last_referenced_at` and
        // keeps it; one that deleted it first leaves no row here (and a new
        // upload is made).
        if let Some(row) = tx
            .query_opt(
                &format!(
                    "SELECT {BLOB_COLUMNS} FROM sync_blobs WHERE org_id = $1 AND app = $2 AND sha256 = $3
                     FOR UPDATE"
                ),
                &[&new.org_id, &new.app, &new.sha256],
            )
            .await
            .map_err(pg(op))?
        {
            let blob = stored_blob(&row);
            if blob.size != new.size {
                return Ok(Declared::OtherSize);
            }
            if blob.broken_at.is_none() {
                tx.execute(
                    "UPDATE sync_blobs SET last_referenced_at = greatest(last_referenced_at, $4)
                     WHERE org_id = $1 AND app = $2 AND sha256 = $3",
                    &[&new.org_id, &new.app, &new.sha256, &new.now],
                )
                .await
                .map_err(pg(op))?;
                tx.commit().await.map_err(pg(op))?;
                return Ok(Declared::Stored(blob));
            }
            // Broken: as if absent (a new upload repairs it).
        }
        if let Some(row) = tx
            .query_opt(
                &format!(
                    "SELECT {UPLOAD_COLUMNS} FROM sync_uploads
                     WHERE device_id = $1 AND app = $2 AND sha256 = $3 AND size = $4 AND org_id = $5
                         AND state = 0 AND expires_at > $6
                     ORDER BY created_at DESC, upload_id LIMIT 1"
                ),
                &[
                    &new.device_id,
                    &new.app,
                    &new.sha256,
                    &new.size,
                    &new.org_id,
                    &new.now,
                ],
            )
            .await
            .map_err(pg(op))?
        {
            return Ok(Declared::Resumed(stored_upload(&row)));
        }
        if new.size > new.max_file_size {
            return Ok(Declared::TooLarge);
        }
        let mine = tx
            .query_one(
                "SELECT count(*), coalesce(sum(size), 0)::int8, min(expires_at) FROM sync_uploads
                 WHERE device_id = $1 AND state = 0 AND expires_at > $2",
                &[&new.device_id, &new.now],
            )
            .await
            .map_err(pg(op))?;
        let (open, held, first_expiry): (i64, i64, Option<i64>) =
            (mine.get(0), mine.get(1), mine.get(2));
        if open >= new.max_open {
            return Ok(Declared::TooManyOpen {
                first_expiry: first_expiry.unwrap_or(new.now),
            });
        }
        let used: i64 = tx
            .query_one(
                "SELECT (coalesce((SELECT sum(size) FROM sync_blobs
                                   WHERE org_id = $1 AND broken_at IS NULL), 0)
                       + coalesce((SELECT sum(size) FROM sync_uploads
                                   WHERE org_id = $1 AND state = 0 AND expires_at > $2), 0))::int8",
                &[&new.org_id, &new.now],
            )
            .await
            .map_err(pg(op))?
            .get(0);
        if used.saturating_add(new.size) > new.quota {
            return Ok(Declared::OverQuota { used });
        }
        if open > 0 && held.saturating_add(new.size) > new.device_share {
            return Ok(Declared::OverDeviceShare { held });
        }
        tx.execute(
            "INSERT INTO sync_uploads (upload_id, org_id, app, device_id, sha256, size, content_type,
                 piece_size, received, state, lease, lease_until, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, NULL, NULL, $9, $10)",
            &[
                &new.upload_id,
                &new.org_id,
                &new.app,
                &new.device_id,
                &new.sha256,
                &new.size,
                &new.content_type,
                &new.piece_size,
                &new.now,
                &new.expires_at,
            ],
        )
        .await
        .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
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
    }

    pub(in crate::store) async fn files_upload(
        &self,
        id: String,
    ) -> Result<Option<StoredUpload>, StoreError> {
        let op = "reading an upload";
        let client = self.client(op).await?;
        Ok(client
            .query_opt(
                &format!("SELECT {UPLOAD_COLUMNS} FROM sync_uploads WHERE upload_id = $1"),
                &[&id],
            )
            .await
            .map_err(pg(op))?
            .map(|r| stored_upload(&r)))
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
        let client = self.client(op).await?;
        let taken = client
            .execute(
                &format!(
                    "UPDATE sync_uploads SET lease = $3, lease_until = {DB_NOW} + $5
                     WHERE upload_id = $1 AND state = 0 AND received = $2 AND received < size
                         AND expires_at > $4 AND (lease IS NULL OR lease_until <= {DB_NOW})"
                ),
                &[&id, &offset, &lease, &now, &lease_secs],
            )
            .await
            .map_err(pg(op))?;
        if taken == 1 {
            return Ok(Claim::Claimed);
        }
        let upload = client
            .query_opt(
                &format!("SELECT {UPLOAD_COLUMNS} FROM sync_uploads WHERE upload_id = $1"),
                &[&id],
            )
            .await
            .map_err(pg(op))?
            .map(|r| stored_upload(&r));
        Ok(match upload {
            Some(u) if !u.is_open(now) => Claim::NotOpen,
            Some(u) if u.received != offset => Claim::Elsewhere(u.received),
            Some(_) => Claim::Busy,
            None => Claim::NotOpen,
        })
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
        let client = self.client(op).await?;
        client
            .execute(
                "UPDATE sync_uploads SET received = $4, lease = NULL, lease_until = NULL,
                     expires_at = greatest(expires_at, $6)
                 WHERE upload_id = $1 AND lease = $2 AND received = $3 AND state = 0 AND expires_at > $5",
                &[&id, &lease, &offset, &to, &now, &expires_at],
            )
            .await
            .map(|n| n == 1)
            .map_err(pg(op))
    }

    pub(in crate::store) async fn files_renew(
        &self,
        id: String,
        lease: String,
        lease_secs: i64,
    ) -> Result<bool, StoreError> {
        let op = "renewing an upload's lease";
        let client = self.client(op).await?;
        client
            .execute(
                &format!(
                    "UPDATE sync_uploads SET lease_until = greatest(lease_until, {DB_NOW} + $3)
                     WHERE upload_id = $1 AND lease = $2 AND state = 0"
                ),
                &[&id, &lease, &lease_secs],
            )
            .await
            .map(|n| n == 1)
            .map_err(pg(op))
    }

    pub(in crate::store) async fn files_release(
        &self,
        id: String,
        lease: String,
    ) -> Result<(), StoreError> {
        let op = "releasing an upload's lease";
        let client = self.client(op).await?;
        client
            .execute(
                "UPDATE sync_uploads SET lease = NULL, lease_until = NULL WHERE upload_id = $1 AND lease = $2",
                &[&id, &lease],
            )
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(in crate::store) async fn files_complete(
        &self,
        id: String,
        lease: String,
        offset: i64,
        now: i64,
    ) -> Result<Completed, StoreError> {
        let op = "completing an upload";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let Some(row) = tx
            .query_opt(
                "UPDATE sync_uploads SET state = 1, received = size, lease = NULL, lease_until = NULL
                 WHERE upload_id = $1 AND lease = $2 AND received = $3 AND state = 0 AND expires_at > $4
                 RETURNING org_id, app, sha256, size, content_type, piece_size",
                &[&id, &lease, &offset, &now],
            )
            .await
            .map_err(pg(op))?
        else {
            return Ok(Completed::Gone);
        };
        let org_id: i64 = row.get(0);
        let (app, sha256): (String, String) = (row.get(1), row.get(2));
        let (size, content_type, piece_size): (i64, Option<String>, i64) =
            (row.get(3), row.get(4), row.get(5));
        // Of two uploads of one blob completing at once, the second waits
        // here for the first to commit, then inserts nothing. One already
        // there is sound (this upload's pieces go) or broken (its pieces
        // go, and this upload's replace them); its row locked until this
        // commits. (Collected between the two statements: inserted again.)
        let mut completed = None;
        for _ in 0..2 {
            let inserted = tx
                .execute(
                    "INSERT INTO sync_blobs (org_id, app, sha256, size, content_type, upload_id,
                         piece_size, created_at, last_referenced_at, broken_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, NULL)
                     ON CONFLICT (org_id, app, sha256) DO NOTHING",
                    &[
                        &org_id,
                        &app,
                        &sha256,
                        &size,
                        &content_type,
                        &id,
                        &piece_size,
                        &now,
                    ],
                )
                .await
                .map_err(pg(op))?;
            if inserted == 1 {
                completed = Some(Completed::Stored);
                break;
            }
            let Some(there) = tx
                .query_opt(
                    "SELECT upload_id, broken_at FROM sync_blobs
                     WHERE org_id = $1 AND app = $2 AND sha256 = $3 FOR UPDATE",
                    &[&org_id, &app, &sha256],
                )
                .await
                .map_err(pg(op))?
            else {
                continue;
            };
            let (broken_upload, broken_at): (String, Option<i64>) = (there.get(0), there.get(1));
            completed = Some(if broken_at.is_some() {
                tx.execute(
                    "UPDATE sync_blobs SET upload_id = $4, piece_size = $5, content_type = $6,
                         broken_at = NULL, last_referenced_at = greatest(last_referenced_at, $7)
                     WHERE org_id = $1 AND app = $2 AND sha256 = $3",
                    &[
                        &org_id,
                        &app,
                        &sha256,
                        &id,
                        &piece_size,
                        &content_type,
                        &now,
                    ],
                )
                .await
                .map_err(pg(op))?;
                tx.execute(
                    TRASH,
                    &[&vec![upload_trash_prefix(org_id, &broken_upload)], &now],
                )
                .await
                .map_err(pg(op))?;
                Completed::Repaired {
                    replaced: broken_upload,
                }
            } else {
                tx.execute(TRASH, &[&vec![upload_trash_prefix(org_id, &id)], &now])
                    .await
                    .map_err(pg(op))?;
                Completed::AlreadyStored
            });
            break;
        }
        let Some(completed) = completed else {
            // Inserted and collected twice over within one transaction:
            // leave the upload open (the device sends the last piece again).
            return Err(StoreError::Database {
                op,
                message: "a blob came and went twice while an upload of it completed".into(),
            });
        };
        tx.commit().await.map_err(pg(op))?;
        Ok(completed)
    }

    pub(in crate::store) async fn files_drop(
        &self,
        id: String,
        now: i64,
    ) -> Result<bool, StoreError> {
        let op = "dropping an upload";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let Some(row) = tx
            .query_opt(
                "UPDATE sync_uploads SET state = 2, received = 0, lease = NULL, lease_until = NULL,
                     expires_at = $2
                 WHERE upload_id = $1 AND state = 0 RETURNING org_id",
                &[&id, &now],
            )
            .await
            .map_err(pg(op))?
        else {
            return Ok(false);
        };
        let org_id: i64 = row.get(0);
        tx.execute(TRASH, &[&vec![upload_trash_prefix(org_id, &id)], &now])
            .await
            .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        Ok(true)
    }

    pub(in crate::store) async fn files_blob(
        &self,
        org_id: i64,
        app: String,
        sha: String,
    ) -> Result<Option<StoredBlob>, StoreError> {
        let op = "reading a blob";
        let client = self.client(op).await?;
        Ok(client
            .query_opt(
                &format!(
                    "SELECT {BLOB_COLUMNS} FROM sync_blobs WHERE org_id = $1 AND app = $2 AND sha256 = $3"
                ),
                &[&org_id, &app, &sha],
            )
            .await
            .map_err(pg(op))?
            .map(|r| stored_blob(&r)))
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
        let client = self.client(op).await?;
        client
            .execute(
                "UPDATE sync_blobs SET broken_at = $5
                 WHERE org_id = $1 AND app = $2 AND sha256 = $3 AND upload_id = $4 AND broken_at IS NULL",
                &[&org_id, &app, &sha, &upload_id, &now],
            )
            .await
            .map(|n| n == 1)
            .map_err(pg(op))
    }

    pub(in crate::store) async fn files_insert_blob(
        &self,
        blob: StoredBlob,
        now: i64,
    ) -> Result<bool, StoreError> {
        let op = "storing a blob";
        let client = self.client(op).await?;
        client
            .execute(
                "INSERT INTO sync_blobs (org_id, app, sha256, size, content_type, upload_id, piece_size,
                     created_at, last_referenced_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                 ON CONFLICT (org_id, app, sha256) DO NOTHING",
                &[
                    &blob.org_id,
                    &blob.app,
                    &blob.sha256,
                    &blob.size,
                    &blob.content_type,
                    &blob.upload_id,
                    &blob.piece_size,
                    &now,
                ],
            )
            .await
            .map(|n| n == 1)
            .map_err(pg(op))
    }

    pub(in crate::store) async fn files_trash(
        &self,
        prefix: String,
        now: i64,
    ) -> Result<(), StoreError> {
        let op = "putting objects in the trash";
        let client = self.client(op).await?;
        client
            .execute(TRASH, &[&vec![prefix], &now])
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(in crate::store) async fn files_trashed(
        &self,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let op = "reading the trash";
        let client = self.client(op).await?;
        Ok(client
            .query(
                "SELECT prefix FROM sync_object_trash ORDER BY since, prefix LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub(in crate::store) async fn files_untrash(&self, prefix: String) -> Result<(), StoreError> {
        let op = "emptying the trash";
        let client = self.client(op).await?;
        client
            .execute(
                "DELETE FROM sync_object_trash WHERE prefix = $1",
                &[&prefix],
            )
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(in crate::store) async fn files_expire_uploads(
        &self,
        now: i64,
        keep_gone: i64,
    ) -> Result<(u64, u64), StoreError> {
        let op = "expiring uploads";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let expired: Vec<String> = tx
            .query(
                "UPDATE sync_uploads SET state = 2, lease = NULL, lease_until = NULL
                 WHERE state = 0 AND expires_at <= $1 RETURNING org_id, upload_id",
                &[&now],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| upload_trash_prefix(r.get(0), r.get(1)))
            .collect();
        if !expired.is_empty() {
            tx.execute(TRASH, &[&expired, &now]).await.map_err(pg(op))?;
        }
        let forgotten = tx
            .execute(
                "DELETE FROM sync_uploads
                 WHERE (state = 1 AND expires_at <= $1) OR (state = 2 AND expires_at <= $1 - $2)",
                &[&now, &keep_gone],
            )
            .await
            .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        Ok((expired.len() as u64, forgotten))
    }

    pub(in crate::store) async fn files_orgs(&self) -> Result<Vec<i64>, StoreError> {
        let op = "listing organizations with files";
        let client = self.client(op).await?;
        Ok(client
            .query(
                "SELECT DISTINCT org_id FROM sync_blobs ORDER BY org_id",
                &[],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub(in crate::store) async fn files_collect_blobs(
        &self,
        org_id: i64,
        cutoff: i64,
        now: i64,
    ) -> Result<u64, StoreError> {
        let op = "collecting unreferenced blobs";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        // A push that references one of these blobs locks its row and
        // moves `last_referenced_at` (store/postgres/sync.rs): the DELETE
        // waits for it, then sees the new value and keeps the row.
        let gone: Vec<String> = tx
            .query(
                "DELETE FROM sync_blobs b WHERE b.org_id = $1 AND b.last_referenced_at < $2
                     AND NOT EXISTS (SELECT 1 FROM sync_file_refs f WHERE f.org_id = b.org_id
                         AND f.app = b.app AND f.sha256 = b.sha256)
                 RETURNING b.upload_id",
                &[&org_id, &cutoff],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| upload_trash_prefix(org_id, r.get(0)))
            .collect();
        if !gone.is_empty() {
            tx.execute(TRASH, &[&gone, &now]).await.map_err(pg(op))?;
        }
        tx.commit().await.map_err(pg(op))?;
        Ok(gone.len() as u64)
    }
}
