//! The PostgreSQL side of [`crate::store::files`]. A declaration takes its
//! organization's row `FOR NO KEY UPDATE`, so that declarations of one
//! organization, through any server process, check the quota one at a
//! time (without blocking the inserts that only reference the row).

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

const BLOB_COLUMNS: &str = "org_id, app, sha256, size, content_type, upload_id, piece_size";

fn stored_blob(r: &tokio_postgres::Row) -> StoredBlob {
    StoredBlob {
        org_id: r.get(0),
        app: r.get(1),
        sha256: r.get(2),
        size: r.get(3),
        content_type: r.get(4),
        upload_id: r.get(5),
        piece_size: r.get(6),
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
        if let Some(row) = tx
            .query_opt(
                &format!(
                    "SELECT {BLOB_COLUMNS} FROM sync_blobs WHERE org_id = $1 AND app = $2 AND sha256 = $3"
                ),
                &[&new.org_id, &new.app, &new.sha256],
            )
            .await
            .map_err(pg(op))?
        {
            let blob = stored_blob(&row);
            return Ok(if blob.size == new.size {
                Declared::Stored(blob)
            } else {
                Declared::OtherSize
            });
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
        let open: i64 = tx
            .query_one(
                "SELECT count(*) FROM sync_uploads WHERE device_id = $1 AND state = 0 AND expires_at > $2",
                &[&new.device_id, &new.now],
            )
            .await
            .map_err(pg(op))?
            .get(0);
        if open >= new.max_open {
            return Ok(Declared::TooManyOpen);
        }
        let used: i64 = tx
            .query_one(
                "SELECT (coalesce((SELECT sum(size) FROM sync_blobs WHERE org_id = $1), 0)
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
        until: i64,
    ) -> Result<Claim, StoreError> {
        let op = "taking an upload's lease";
        let client = self.client(op).await?;
        let taken = client
            .execute(
                "UPDATE sync_uploads SET lease = $3, lease_until = $5
                 WHERE upload_id = $1 AND state = 0 AND received = $2 AND received < size
                     AND expires_at > $4 AND (lease IS NULL OR lease_until <= $4)",
                &[&id, &offset, &lease, &now, &until],
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
        // here for the first to commit, then inserts nothing.
        let inserted = tx
            .execute(
                "INSERT INTO sync_blobs (org_id, app, sha256, size, content_type, upload_id, piece_size,
                     created_at, last_referenced_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
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
        if inserted == 0 {
            tx.execute(TRASH, &[&vec![upload_trash_prefix(org_id, &id)], &now])
                .await
                .map_err(pg(op))?;
        }
        tx.commit().await.map_err(pg(op))?;
        Ok(if inserted == 1 {
            Completed::Stored
        } else {
            Completed::AlreadyStored
        })
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
