//! Files sync on the server (docs/server.md, "File storage"): the limits
//! a server applies, its blob storage, the running hash of uploads in
//! progress, and garbage collection. The endpoints are in `api/files.rs`,
//! the rows in [`crate::store`], the objects in [`crate::blobs`], the seal
//! of each piece in [`crate::blob_seal`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sha2::Sha256;

use crate::blobs::{BlobError, BlobStorage};
use crate::store::{FilesCollected, Store, StoreError};

/// The largest file a server takes by default (`--max-file-size`): 2 GiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 2 << 30;
/// An organization's storage quota by default (`--org-file-quota`): its
/// stored files and unfinished uploads, 100 GiB.
pub const DEFAULT_ORG_FILE_QUOTA: u64 = 100 << 30;
/// How long an unfinished upload lasts without a piece by default
/// (`--upload-expiry`): a day.
pub const DEFAULT_UPLOAD_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Most unfinished uploads one device may have at once (each holds its
/// whole size of the quota until it ends or expires).
pub const MAX_OPEN_UPLOADS: i64 = 16;
/// One device's unfinished uploads hold at most this fraction of its
/// organization's quota together (1/4) — but its first unfinished upload,
/// which may be any size the organization's quota has room for. So one
/// device cannot reserve the whole quota without sending a byte.
pub const DEVICE_QUOTA_SHARE: u64 = 4;
/// How many pieces a server process takes in at once by default
/// ([`FileLimits::max_concurrent_pieces`]): each holds up to about three
/// times the piece size in memory while it is read, sealed and written.
pub const DEFAULT_MAX_CONCURRENT_PIECES: usize = 8;
/// How long a piece waits for its turn by default
/// ([`FileLimits::piece_queue_wait`]) before it is answered `503` with
/// `Retry-After`.
pub const DEFAULT_PIECE_QUEUE_WAIT: Duration = Duration::from_secs(5);
/// How long a request holds an upload's lease by default
/// ([`FileLimits::upload_lease`]): longer than a piece's write takes (its
/// timeout is 60 s); a whole file's read-back renews it as it goes. What a
/// device waits, at most, after a server died holding one.
pub const DEFAULT_UPLOAD_LEASE: Duration = Duration::from_secs(120);
/// How many uploads' running hashes a server process keeps (beyond, the
/// last piece of an upload reads the file back to hash it).
const MAX_RUNNING_HASHES: usize = 4096;

/// A size as `coffer serve` takes it: bytes, or a number with a unit —
/// `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024) or `KB`, `MB`, `GB`, `TB`
/// (powers of 1000), case-insensitive, e.g. `2GiB`, `100 GiB`, `500MB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let refused = || {
        format!("{text:?} is not a size: bytes, or a number with KiB, MiB, GiB, TiB (or KB, MB, GB, TB)")
    };
    if digits.is_empty() || digits.len() > 20 {
        return Err(refused());
    }
    let number: u64 = digits.parse().map_err(|_| refused())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(refused()),
    };
    number.checked_mul(scale).ok_or_else(refused)
}

/// What a server takes of files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// The largest file, bytes.
    pub max_file_size: u64,
    /// An organization's quota: its stored files plus its unfinished
    /// uploads, bytes.
    pub org_quota: u64,
    /// An unfinished upload is dropped this long after its creation or
    /// its last piece.
    pub upload_expiry: Duration,
    /// The piece size the server announces (within the protocol's
    /// [`coffer_protocol::files::MIN_PIECE_SIZE`] to
    /// [`coffer_protocol::files::MAX_PIECE_SIZE`]).
    pub piece_size: u64,
    /// Most piece bodies this process takes in at once (at least 1).
    pub max_concurrent_pieces: usize,
    /// How long a piece past that waits for its turn before `503`.
    pub piece_queue_wait: Duration,
    /// How long a request holds an upload's lease (whole seconds, at
    /// least 2), renewed every quarter of it while the upload is read
    /// back.
    pub upload_lease: Duration,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            org_quota: DEFAULT_ORG_FILE_QUOTA,
            upload_expiry: DEFAULT_UPLOAD_EXPIRY,
            piece_size: coffer_protocol::files::DEFAULT_PIECE_SIZE,
            max_concurrent_pieces: DEFAULT_MAX_CONCURRENT_PIECES,
            piece_queue_wait: DEFAULT_PIECE_QUEUE_WAIT,
            upload_lease: DEFAULT_UPLOAD_LEASE,
        }
    }
}

/// Where the running hash of one upload stands.
struct Running {
    offset: u64,
    hasher: Sha256,
}

/// The files sync state of one server process.
pub struct Files {
    storage: Option<BlobStorage>,
    limits: FileLimits,
    /// Upload id → the SHA-256 of its bytes so far, as this process took
    /// them: the whole file's hash needs no read-back when one process took
    /// every piece. Lost at a restart, or missing a piece another process
    /// took: then the last piece reads the file back.
    running: Mutex<HashMap<String, Running>>,
    /// One permit per piece body being taken in.
    pieces: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("storage", &self.storage)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for Files {
    fn default() -> Self {
        Files::new(None, FileLimits::default())
    }
}

impl Files {
    /// Files sync over `storage` (none: the file endpoints answer 503),
    /// within `limits` (the piece size brought within the protocol's
    /// bounds).
    pub fn new(storage: Option<BlobStorage>, mut limits: FileLimits) -> Files {
        limits.piece_size = limits.piece_size.clamp(
            coffer_protocol::files::MIN_PIECE_SIZE,
            coffer_protocol::files::MAX_PIECE_SIZE,
        );
        limits.max_concurrent_pieces = limits
            .max_concurrent_pieces
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        // Whole seconds in the database; at least 2, so that renewing it
        // every quarter keeps it alive across a second's boundary.
        limits.upload_lease = Duration::from_secs(limits.upload_lease.as_secs().max(2));
        Files {
            storage,
            limits,
            running: Mutex::new(HashMap::new()),
            pieces: tokio::sync::Semaphore::new(limits.max_concurrent_pieces),
        }
    }

    /// A turn to take a piece in, waiting at most
    /// [`FileLimits::piece_queue_wait`] for one; none if the wait ran out.
    pub(crate) async fn piece_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(self.limits.piece_queue_wait, self.pieces.acquire())
            .await
            .ok()?
            .ok()
    }

    /// The blob storage, if configured.
    pub fn storage(&self) -> Option<&BlobStorage> {
        self.storage.as_ref()
    }

    /// The limits.
    pub fn limits(&self) -> FileLimits {
        self.limits
    }

    /// The running hash of `upload_id` if it covers exactly the bytes
    /// before `offset` (a fresh one at 0); a stale one is forgotten.
    pub(crate) fn running_hash(&self, upload_id: &str, offset: u64) -> Option<Sha256> {
        if offset == 0 {
            return Some(<Sha256 as sha2::Digest>::new());
        }
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match running.get(upload_id) {
            Some(r) if r.offset == offset => Some(r.hasher.clone()),
            Some(_) => {
                running.remove(upload_id);
                None
            }
            None => None,
        }
    }

    /// Keeps `hasher`, the hash of the bytes before `offset`, for the next
    /// piece of `upload_id`.
    pub(crate) fn keep_hash(&self, upload_id: &str, offset: u64, hasher: Sha256) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if running.len() >= MAX_RUNNING_HASHES && !running.contains_key(upload_id) {
            // Full (uploads abandoned mid-way): make room. What is lost is
            // only a read-back at the end of some upload.
            if let Some(victim) = running.keys().next().cloned() {
                running.remove(&victim);
            }
        }
        running.insert(upload_id.to_owned(), Running { offset, hasher });
    }

    /// Forgets the running hash of an upload that ended.
    pub(crate) fn forget_hash(&self, upload_id: &str) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(upload_id);
    }
}

/// Why a garbage collection stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob storage failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// Deletes one trashed prefix's objects, then the prefix from the trash
/// (a failure leaves it there for the next collection).
pub async fn delete_trashed(
    store: &Store,
    storage: &BlobStorage,
    prefix: &str,
) -> Result<u64, CollectError> {
    let deleted = storage.delete_prefix(prefix).await?;
    store.files_untrash(prefix).await?;
    Ok(deleted)
}

/// Empties the trash: every prefix's objects deleted from the storage.
/// Returns how many prefixes went; one the storage fails to delete stays
/// for the next time (and is logged).
pub async fn empty_trash(store: &Store, storage: &BlobStorage) -> Result<u64, CollectError> {
    let mut emptied = 0;
    // A bounded number of rounds: the trash may be filled meanwhile.
    for _ in 0..100 {
        let batch = store.files_trashed(100).await?;
        let mut progressed = false;
        for prefix in &batch {
            match delete_trashed(store, storage, prefix).await {
                Ok(_) => {
                    emptied += 1;
                    progressed = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deleting trashed objects failed; trying again at the next collection")
                }
            }
        }
        if batch.len() < 100 || !progressed {
            break;
        }
    }
    Ok(emptied)
}

/// The files' garbage collection (every hour with the sync compaction,
/// [`crate::serve`]): unfinished uploads past their expiry dropped, blobs
/// no record has referenced for the sync retention deleted (see
/// [`Store::files_collect`]), and their objects deleted from `storage`.
pub async fn collect_garbage(
    store: &Store,
    storage: &BlobStorage,
    now: i64,
    retention_secs: i64,
) -> Result<FilesCollected, CollectError> {
    let mut done = store.files_collect(now, retention_secs).await?;
    done.prefixes = empty_trash(store, storage).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn running_hashes_follow_the_offset_or_go() {
        let files = Files::default();
        let mut h = files.running_hash("u", 0).unwrap_or_default();
        h.update(b"abc");
        files.keep_hash("u", 3, h);
        assert!(files.running_hash("u", 3).is_some());
        assert!(files.running_hash("u", 4).is_none());
        // The stale one went with the miss.
        assert!(files.running_hash("u", 3).is_none());
        assert!(files.running_hash("other", 3).is_none());
        files.keep_hash("u", 3, Sha256::new());
        files.forget_hash("u");
        assert!(files.running_hash("u", 3).is_none());
    }

    #[test]
    fn sizes_parse_with_their_units() {
        assert_eq!(parse_size("2GiB"), Ok(DEFAULT_MAX_FILE_SIZE));
        assert_eq!(parse_size("100 GiB"), Ok(DEFAULT_ORG_FILE_QUOTA));
        assert_eq!(parse_size("500mb"), Ok(500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in ["", "GiB", "-1", "1.5GiB", "2 parsecs", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_piece_size_stays_within_the_protocol() {
        let tiny = Files::new(
            None,
            FileLimits {
                piece_size: 1,
                ..FileLimits::default()
            },
        );
        assert_eq!(
            tiny.limits().piece_size,
            coffer_protocol::files::MIN_PIECE_SIZE
        );
        let huge = Files::new(
            None,
            FileLimits {
                piece_size: u64::MAX,
                ..FileLimits::default()
            },
        );
        assert_eq!(
            huge.limits().piece_size,
            coffer_protocol::files::MAX_PIECE_SIZE
        );
    }
}
