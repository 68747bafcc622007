//! Storage for files sync (docs/server.md, "File storage"): blobs, uploads
//! and their pieces' progress, the object prefixes waiting to be deleted
//! from the blob storage, and garbage collection. The bytes themselves
//! are never here: they are objects in [`crate::blobs::BlobStorage`].
//!
//! Every change that lets go of objects (a dropped or expired upload, the
//! loser of two uploads of one blob, a collected blob, a deleted
//! organization) writes their prefix to `sync_object_trash` in the same
//! transaction; [`crate::files`] deletes the objects and then the row, so
//! a storage failure only delays the deletion.

use super::{Store, StoreError};

/// How long a dropped upload's row stays after its drop (its pieces are
/// deleted at once): its device hears `upload_gone` rather than
/// `not_found` meanwhile.
pub const GONE_KEPT_SECS: i64 = 7 * 86_400;

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// Pieces are coming.
    Open,
    /// The whole file arrived and matched: the blob is stored.
    Complete,
    /// Expired, or failed its whole-file check: its pieces are deleted.
    Dropped,
}

impl UploadState {
    pub(super) fn from_db(value: i64) -> UploadState {
        match value {
            0 => UploadState::Open,
            1 => UploadState::Complete,
            _ => UploadState::Dropped,
        }
    }
}

/// An upload as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpload {
    /// Its id: 32 lower-case hex digits, random.
    pub upload_id: String,
    /// The device's organization.
    pub org_id: i64,
    /// The app.
    pub app: String,
    /// The device uploading.
    pub device_id: i64,
    /// The whole file's declared SHA-256.
    pub sha256: String,
    /// The whole file's length.
    pub size: i64,
    /// Its content type.
    pub content_type: Option<String>,
    /// The piece size announced at creation.
    pub piece_size: i64,
    /// The bytes stored durably: the next piece starts here.
    pub received: i64,
    /// Open, complete or dropped.
    pub state: UploadState,
    /// When it expires (Unix seconds; a dropped one: when it was dropped).
    pub expires_at: i64,
}

impl StoredUpload {
    /// Whether pieces may still come (open, not expired at `now`).
    pub fn is_open(&self, now: i64) -> bool {
        self.state == UploadState::Open && self.expires_at > now
    }
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// The organization.
    pub org_id: i64,
    /// The app.
    pub app: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Its length.
    pub size: i64,
    /// Its content type.
    pub content_type: Option<String>,
    /// The upload whose pieces hold its bytes.
    pub upload_id: String,
    /// That upload's piece size.
    pub piece_size: i64,
    /// When a piece of it was found missing or no longer opening (Unix
    /// seconds): a declaration of it then gets a new upload, which
    /// replaces it. None: sound, as far as the server knows.
    pub broken_at: Option<i64>,
}

/// A file a device declares.
#[derive(Debug, Clone)]
pub struct NewUpload {
    /// A fresh upload id, used if an upload is made.
    pub upload_id: String,
    /// The device's organization.
    pub org_id: i64,
    /// The app.
    pub app: String,
    /// The device.
    pub device_id: i64,
    /// The declared SHA-256.
    pub sha256: String,
    /// The declared length.
    pub size: i64,
    /// The declared content type.
    pub content_type: Option<String>,
    /// The server's piece size.
    pub piece_size: i64,
    /// Now (Unix seconds).
    pub now: i64,
    /// When a new upload expires.
    pub expires_at: i64,
    /// The server's largest file.
    pub max_file_size: i64,
    /// The organization's quota: stored blobs and open uploads, bytes.
    pub quota: i64,
    /// What one device's open uploads may hold of the quota together,
    /// bytes — past its first open upload, which may take any size the
    /// organization's quota has room for.
    pub device_share: i64,
    /// Most open uploads one device may have.
    pub max_open: i64,
}

/// What declaring a file came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    /// The organization holds the file for the app already (and its
    /// `last_referenced_at` moved to now, in the same transaction: a
    /// garbage collection cannot take it before the push that names it).
    Stored(StoredBlob),
    /// A file of this SHA-256 is stored with another size.
    OtherSize,
    /// The device's own open upload of this file, to go on with.
    Resumed(StoredUpload),
    /// Larger than the server takes.
    TooLarge,
    /// The device has too many open uploads.
    TooManyOpen {
        /// When the first of them expires (Unix seconds).
        first_expiry: i64,
    },
    /// Over the organization's quota (what it uses now, bytes).
    OverQuota {
        /// Stored blobs and open uploads, bytes.
        used: i64,
    },
    /// The device's open uploads and this one would pass its share of the
    /// quota ([`NewUpload::device_share`]).
    OverDeviceShare {
        /// What the device's open uploads hold, bytes.
        held: i64,
    },
    /// A new upload.
    Created(StoredUpload),
}

/// Why a piece may not be written now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the upload's lease: it writes the piece.
    Claimed,
    /// The upload is not open (or gone).
    NotOpen,
    /// It stands at another offset (this one).
    Elsewhere(i64),
    /// Another request is writing a piece of it.
    Busy,
}

/// What finishing an upload came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    /// Its pieces are the blob.
    Stored,
    /// Its pieces replace those of a broken blob of the same file (which
    /// went to the trash).
    Repaired {
        /// The upload whose pieces were the broken blob's.
        replaced: String,
    },
    /// Another upload of the same blob completed first: the blob is
    /// stored, and this upload's pieces are in the trash.
    AlreadyStored,
    /// The upload is no longer open (expired, dropped, or the lease lost).
    Gone,
}

/// What a garbage collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilesCollected {
    /// Open uploads dropped at their expiry.
    pub uploads_expired: u64,
    /// Upload rows forgotten (complete ones past their expiry, dropped ones
    /// a week after).
    pub uploads_forgotten: u64,
    /// Blobs no record referenced for the retention.
    pub blobs: u64,
    /// Object prefixes deleted from the blob storage.
    pub prefixes: u64,
}

impl Store {
    /// Declares a file, in one transaction (one at a time per
    /// organization, so that two declarations cannot both fit in the last
    /// of the quota): stored already (not broken; its row locked and its
    /// `last_referenced_at` moved to `now`), the device's own open upload,
    /// or refused (too large, too many open uploads, over the quota or the
    /// device's share of it), or a new upload. A broken blob is as if
    /// absent (and holds no quota: its repair does).
    pub async fn files_declare(&self, new: NewUpload) -> Result<Declared, StoreError> {
        dispatch!(self, s => s.files_declare(new).await)
    }

    /// The upload `upload_id`.
    pub async fn files_upload(&self, upload_id: &str) -> Result<Option<StoredUpload>, StoreError> {
        let id = upload_id.to_owned();
        dispatch!(self, s => s.files_upload(id).await)
    }

    /// Takes the upload's lease for writing the piece at `offset` (the
    /// upload open at `now`, at that offset, no live lease) for
    /// `lease_secs`: one writer per upload at a time, on every server
    /// process. The lease's times are the database's clock on PostgreSQL
    /// (several hosts), the process's on SQLite (one host).
    pub async fn files_claim(
        &self,
        upload_id: &str,
        offset: i64,
        lease: &str,
        now: i64,
        lease_secs: i64,
    ) -> Result<Claim, StoreError> {
        let (id, lease) = (upload_id.to_owned(), lease.to_owned());
        dispatch!(self, s => s.files_claim(id, offset, lease, now, lease_secs).await)
    }

    /// Extends a lease the caller holds to `lease_secs` from now (the
    /// database's clock, as [`Store::files_claim`]); false if it is not
    /// held any more (taken after it lapsed, or the upload ended).
    pub async fn files_renew(
        &self,
        upload_id: &str,
        lease: &str,
        lease_secs: i64,
    ) -> Result<bool, StoreError> {
        let (id, lease) = (upload_id.to_owned(), lease.to_owned());
        dispatch!(self, s => s.files_renew(id, lease, lease_secs).await)
    }

    /// The piece at `offset` is durable: the upload moves to `to`, the
    /// lease goes, and its expiry moves to `expires_at` if later. False if
    /// the lease was lost meanwhile (expired and taken, or the upload
    /// dropped).
    pub async fn files_advance(
        &self,
        upload_id: &str,
        lease: &str,
        offset: i64,
        to: i64,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let (id, lease) = (upload_id.to_owned(), lease.to_owned());
        dispatch!(self, s => s.files_advance(id, lease, offset, to, now, expires_at).await)
    }

    /// Gives the lease back without writing.
    pub async fn files_release(&self, upload_id: &str, lease: &str) -> Result<(), StoreError> {
        let (id, lease) = (upload_id.to_owned(), lease.to_owned());
        dispatch!(self, s => s.files_release(id, lease).await)
    }

    /// The last piece at `offset` is durable and the whole file matched:
    /// in one transaction the upload is complete and its pieces become the
    /// blob — unless another upload stored it first (then this one's
    /// pieces go to the trash), or replace those of a broken blob of the
    /// same file (then those go to the trash).
    pub async fn files_complete(
        &self,
        upload_id: &str,
        lease: &str,
        offset: i64,
        now: i64,
    ) -> Result<Completed, StoreError> {
        let (id, lease) = (upload_id.to_owned(), lease.to_owned());
        dispatch!(self, s => s.files_complete(id, lease, offset, now).await)
    }

    /// Drops an open upload (the whole file did not match, say): its
    /// pieces go to the trash, its row stays [`GONE_KEPT_SECS`] so that
    /// its device hears `upload_gone`. False if it was not open.
    pub async fn files_drop(&self, upload_id: &str, now: i64) -> Result<bool, StoreError> {
        let id = upload_id.to_owned();
        dispatch!(self, s => s.files_drop(id, now).await)
    }

    /// The blob `sha256` of `org_id`'s `app`.
    pub async fn files_blob(
        &self,
        org_id: i64,
        app: &str,
        sha256: &str,
    ) -> Result<Option<StoredBlob>, StoreError> {
        let (app, sha) = (app.to_owned(), sha256.to_owned());
        dispatch!(self, s => s.files_blob(org_id, app, sha).await)
    }

    /// Marks the blob `sha256` of `org_id`'s `app` broken, if its bytes
    /// are still those of `upload_id` (not repaired meanwhile) and it was
    /// not marked yet; true if this call marked it.
    pub async fn files_mark_broken(
        &self,
        org_id: i64,
        app: &str,
        sha256: &str,
        upload_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (app, sha, id) = (app.to_owned(), sha256.to_owned(), upload_id.to_owned());
        dispatch!(self, s => s.files_mark_broken(org_id, app, sha, id, now).await)
    }

    /// Stores a blob that needs no pieces (the empty file); false if it
    /// was there.
    pub async fn files_insert_blob(&self, blob: StoredBlob, now: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.files_insert_blob(blob, now).await)
    }

    /// Puts an object prefix in the trash.
    pub async fn files_trash(&self, prefix: &str, now: i64) -> Result<(), StoreError> {
        let prefix = prefix.to_owned();
        dispatch!(self, s => s.files_trash(prefix, now).await)
    }

    /// Up to `limit` prefixes in the trash, oldest first.
    pub async fn files_trashed(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.files_trashed(limit).await)
    }

    /// Takes a prefix out of the trash: its objects are deleted.
    pub async fn files_untrash(&self, prefix: &str) -> Result<(), StoreError> {
        let prefix = prefix.to_owned();
        dispatch!(self, s => s.files_untrash(prefix).await)
    }

    /// Garbage collection in the database (the objects go by the trash):
    /// open uploads past their expiry are dropped; complete uploads past
    /// theirs and dropped ones [`GONE_KEPT_SECS`] after are forgotten; and,
    /// for each organization, with the retention of
    /// [`Store::compact_sync`] (the larger of `retention_secs` and its
    /// policy's offline wipe delay plus seven days), blobs no record
    /// references whose last reference (a push naming it, a declaration
    /// answered `stored`) is older than that are deleted — one statement
    /// each, on both backends, that a concurrent push or declaration
    /// either waits for (then finds no blob) or makes keep the row.
    pub async fn files_collect(
        &self,
        now: i64,
        retention_secs: i64,
    ) -> Result<FilesCollected, StoreError> {
        let (uploads_expired, uploads_forgotten) =
            dispatch!(self, s => s.files_expire_uploads(now, GONE_KEPT_SECS).await)?;
        let mut blobs = 0;
        for org_id in dispatch!(self, s => s.files_orgs().await)? {
            let cutoff = now.saturating_sub(self.sync_retention_of(org_id, retention_secs).await?);
            blobs += dispatch!(self, s => s.files_collect_blobs(org_id, cutoff, now).await)?;
        }
        Ok(FilesCollected {
            uploads_expired,
            uploads_forgotten,
            blobs,
            prefixes: 0,
        })
    }
}

/// The trash prefix of an upload's pieces (the form
/// [`crate::blobs::upload_prefix`] makes; written by SQL from the same
/// parts in the backends).
pub(super) fn upload_trash_prefix(org_id: i64, upload_id: &str) -> String {
    format!("o{org_id}/{upload_id}/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn trash_prefixes_are_the_storage_prefixes() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            super::upload_trash_prefix(4, id),
            crate::blobs::upload_prefix(4, id).unwrap()
        );
    }
}
