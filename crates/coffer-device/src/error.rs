//! The one error type of the device library.
//!
//! Variants are typed so that callers (and tests) can tell exactly what went
//! wrong; none of them carries secret material, and their `Display` text never
//! includes a passphrase or key.

use std::path::PathBuf;

use crate::kdf::KdfLimitError;
use crate::recovery::RecoveryKeyError;

/// Result alias for the device library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong on the device side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No passphrase slot of the vault opens with the passphrase given.
    #[error("wrong passphrase: no key slot of this vault opens with it")]
    WrongPassphrase,
    /// The archive's passphrase does not open it. Its first chunk cannot tell
    /// a wrong passphrase from damage to that chunk, so this may also mean the
    /// first 64 KiB of the archive are damaged.
    #[error("wrong archive passphrase (or the archive's first 64 KiB are damaged)")]
    WrongArchivePassphrase,
    /// No recovery slot of the vault opens with the recovery key given.
    #[error("wrong recovery key: no recovery slot of this vault opens with it")]
    WrongRecoveryKey,
    /// The text given as a recovery key is not one (typo, wrong length, …).
    #[error("not a valid recovery key: {0}")]
    InvalidRecoveryKey(#[from] RecoveryKeyError),
    /// The operation is not allowed to the secret that opened the vault.
    #[error("not permitted: {0}")]
    NotPermitted(&'static str),
    /// The vault is enrolled with its organization's control plane: a plain
    /// unlock would skip the organization's policy (offline grace, lockout,
    /// capabilities, debugger refusal), so it goes through the device agent
    /// (`coffer_agent::Agent::unlock`), which enforces it.
    #[error("vault {name:?} is managed by its organization's control plane: open it through the device agent, which enforces the organization's policy")]
    ManagedVault {
        /// The vault.
        name: String,
    },
    /// Too many failed passphrase attempts: passphrase slots refuse to open
    /// until a recovery or temporary key unlocks the vault.
    #[error("locked out after too many failed attempts: open with a recovery or temporary key")]
    LockedOut,
    /// Too soon after the last failed attempt: try again after the delay.
    #[error("too many failed attempts: wait {retry_after_secs} s before trying again")]
    BackOff {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The vault was wiped: its keys are destroyed and its data deleted.
    #[error("vault {name:?} has been wiped")]
    Wiped {
        /// The vault's name.
        name: String,
    },
    /// There is no vault of that name in the space.
    #[error("no vault named {name:?} in this space")]
    NoSuchVault {
        /// The vault name asked for.
        name: String,
    },
    /// `create` found a vault of that name already.
    #[error("a vault named {name:?} already exists in this space")]
    VaultExists {
        /// The vault name asked for.
        name: String,
    },
    /// A vault or slot name breaks the naming rules.
    #[error("invalid {what} {name:?}: {rule}")]
    InvalidName {
        /// "vault name" or "slot name".
        what: &'static str,
        /// The rejected name.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The header cannot be read as a coffer vault header: it is damaged,
    /// truncated or not a header at all. Nothing was unlocked.
    #[error("vault header is corrupt: {0}")]
    Corrupt(#[from] CorruptKind),
    /// A key slot opened, but the header's authentication code does not match:
    /// someone changed the header without the vault key. Nothing was unlocked.
    #[error("vault header failed authentication: it was modified without the vault key")]
    Tampered,
    /// The header was written by a newer (or unknown) format version.
    #[error("vault header format version {0} is not supported by this coffer")]
    UnsupportedVersion(u16),
    /// A slot asks for more KDF work than this coffer allows when opening.
    #[error("refusing to open: {0}")]
    KdfLimit(#[from] KdfLimitError),
    /// KDF parameters given for a new slot are invalid.
    #[error("invalid KDF parameters: {0}")]
    InvalidKdfParams(&'static str),
    /// A passphrase is empty or longer than allowed.
    #[error("invalid passphrase: {0}")]
    InvalidPassphrase(&'static str),
    /// Every key slot is in use.
    #[error("all {0} key slots are in use; remove one first")]
    SlotsFull(usize),
    /// No slot has that name.
    #[error("no key slot named {name:?}")]
    NoSuchSlot {
        /// The slot name asked for.
        name: String,
    },
    /// Slot names are unique within a vault.
    #[error("a key slot named {name:?} already exists")]
    SlotNameTaken {
        /// The slot name asked for.
        name: String,
    },
    /// The temporary key opened its slot, but the slot has expired (by the
    /// vault's clock, which never runs backwards). The slot was removed.
    #[error("temporary key {name:?} has expired")]
    TemporaryKeyExpired {
        /// The slot's name.
        name: String,
    },
    /// The slot exists but is not a passphrase slot (a recovery slot has no
    /// passphrase to change).
    #[error("key slot {name:?} is not a passphrase slot")]
    NotAPassphraseSlot {
        /// The slot's name.
        name: String,
    },
    /// Removing this slot would leave no passphrase or recovery slot at all.
    #[error("refusing to remove the last key slot: the vault could never be opened again")]
    LastSlot,
    /// Another process holds the vault's lock for longer than we wait (it
    /// is changing the vault, or holds it open while a rotation waits).
    #[error("vault is busy: another coffer process is using or changing it")]
    Busy,
    /// The vault refuses to unlock while a debugger traces this process.
    #[error("refusing to unlock: process {pid} is tracing this one (a debugger)")]
    DebuggerAttached {
        /// The tracer's PID.
        pid: u32,
    },
    /// The session was locked (explicitly, or after its idle timeout): the
    /// vault key is gone from memory; unlock again.
    #[error("the vault session is locked: unlock again")]
    SessionLocked,
    /// An unlock agent's key no longer opens the vault: it was rotated or
    /// wiped, or the slot that opened it is gone or expired.
    #[error("the unlock session no longer opens this vault (rotated, wiped, or its slot removed): unlock again")]
    SessionEnded,
    /// This platform lacks what the operation needs.
    #[error("not supported here: {0}")]
    Unsupported(&'static str),
    /// An operating-system error, with what we were doing and where.
    #[error("{op} {path}: {source}")]
    Io {
        /// What coffer was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An encrypted file is damaged, tampered with or truncated. No wrong
    /// plaintext was returned.
    #[error("encrypted file is corrupt: {0}")]
    FileCorrupt(#[from] crate::stream::FileCorruptKind),
    /// An I/O error on a stream that has no path (a file being encrypted or
    /// decrypted through a reader or writer).
    #[error("{op}: {source}")]
    StreamIo {
        /// What coffer was doing.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An encrypted database refused an operation. `NotADatabase` (a wrong
    /// key or a damaged page) and `Corrupt` mean nothing was read; the
    /// message never contains data or keys.
    #[error("database error while {op}: {kind}")]
    Database {
        /// What coffer was doing.
        op: &'static str,
        /// What went wrong.
        kind: DatabaseErrorKind,
    },
    /// No app of that name in the vault.
    #[error("no app named {name:?} in this vault")]
    NoSuchApp {
        /// The app name asked for.
        name: String,
    },
    /// An app of that name exists already.
    #[error("an app named {name:?} already exists")]
    AppExists {
        /// The app name asked for.
        name: String,
    },
    /// The app's capabilities do not grant this store.
    #[error("app {app:?} is not allowed to use {capability}")]
    CapabilityDenied {
        /// The app.
        app: String,
        /// The capability it lacks.
        capability: &'static str,
    },
    /// A record was not at the version the write was based on; nothing
    /// changed.
    #[error("record {collection}/{id} is at version {current}, not the version this change was based on")]
    VersionConflict {
        /// Collection of the record.
        collection: String,
        /// Id of the record.
        id: String,
        /// Its current version (0: does not exist).
        current: u64,
    },
    /// No live record with that id.
    #[error("no record {collection}/{id}")]
    NoSuchRecord {
        /// Collection asked for.
        collection: String,
        /// Id asked for.
        id: String,
    },
    /// The record is not in conflict: there is nothing to resolve.
    #[error("record {collection}/{id} is not in conflict")]
    NotInConflict {
        /// Collection of the record.
        collection: String,
        /// Id of the record.
        id: String,
    },
    /// The server's side of a conflict has not been pulled yet: sync first.
    #[error("the server's side of record {collection}/{id} is not here yet: sync first")]
    ServerSideUnknown {
        /// Collection of the record.
        collection: String,
        /// Id of the record.
        id: String,
    },
    /// No stored file of that name.
    #[error("no file named {name:?}")]
    NoSuchFile {
        /// The file name asked for.
        name: String,
    },
    /// A download into the file store was refused: its bytes are not the
    /// file its record names (too many, another SHA-256, or other bytes
    /// than an interrupted attempt wrote). The download is dropped; the
    /// stored file (any earlier version) is exactly as it was.
    #[error("the download of {name:?} was refused: {kind}; the stored file is as it was")]
    DownloadMismatch {
        /// The file's name.
        name: String,
        /// What did not match.
        kind: crate::store::files::DownloadMismatchKind,
    },
    /// A download was finished before all its bytes were written; it is
    /// kept, to be resumed.
    #[error("the download of {name:?} has {offset} of its {size} bytes")]
    DownloadIncomplete {
        /// The file's name.
        name: String,
        /// Bytes written.
        offset: u64,
        /// Bytes declared.
        size: u64,
    },
    /// A value is larger than the store accepts.
    #[error("{what} larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// An app archive is refused. No app was created.
    #[error("{0}")]
    InvalidArchive(crate::archive::ArchiveErrorKind),
    /// A store was written by a newer coffer.
    #[error("the {store} was written by a newer coffer (schema version {version})")]
    UnsupportedStoreVersion {
        /// Which store.
        store: &'static str,
        /// Its schema version.
        version: i64,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Why a header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptKind {
    /// Shorter than the smallest valid header, or cut inside a field.
    #[error("truncated")]
    Truncated,
    /// Larger than any valid header.
    #[error("larger than any valid header")]
    TooLarge,
    /// The file does not start with the coffer header magic.
    #[error("not a coffer vault header (bad magic number)")]
    BadMagic,
    /// The SHA-256 checksum over the header does not match: accidental damage
    /// (a flipped bit, a torn copy) or a careless edit.
    #[error("checksum mismatch (damaged or edited)")]
    Checksum,
    /// Bytes after the end of the header.
    #[error("trailing bytes after the header")]
    TrailingBytes,
    /// A field holds a value the format does not allow.
    #[error("invalid field: {0}")]
    Field(&'static str),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Why a database operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatabaseErrorKind {
    /// The file is not a database under this key: a wrong key, or a damaged
    /// or tampered first page.
    #[error("not a database under this key (wrong key, or damaged or tampered file)")]
    NotADatabase,
    /// A page failed its integrity check: damaged or tampered.
    #[error("damaged or tampered page")]
    Corrupt,
    /// Another connection holds a lock for too long.
    #[error("database busy")]
    Busy,
    /// A constraint (unique key, foreign key, …) refused the change.
    #[error("constraint violated: {0}")]
    Constraint(String),
    /// Any other SQLite error, with SQLite's message (the app's own SQL
    /// errors land here).
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn database(op: &'static str, e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        let kind = match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => DatabaseErrorKind::NotADatabase,
            Some(ErrorCode::DatabaseCorrupt) => DatabaseErrorKind::Corrupt,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => DatabaseErrorKind::Busy,
            Some(ErrorCode::ConstraintViolation) => DatabaseErrorKind::Constraint(e.to_string()),
            _ => DatabaseErrorKind::Other(e.to_string()),
        };
        Error::Database { op, kind }
    }

    pub(crate) fn stream_io(op: &'static str, source: std::io::Error) -> Self {
        Error::StreamIo { op, source }
    }

    /// An I/O error from a reader that may carry a coffer error inside (the
    /// decrypting readers report tampering that way): the coffer error comes
    /// back out, typed, instead of being buried in an I/O error.
    pub(crate) fn from_read(op: &'static str, e: std::io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(Ok(inner)) = e.into_inner().map(|inner| inner.downcast::<Error>()) {
                return *inner;
            }
            return Error::stream_io(op, std::io::Error::other("unreadable inner error"));
        }
        Error::stream_io(op, e)
    }
}

impl From<rand_core::Error> for Error {
    fn from(_: rand_core::Error) -> Self {
        Error::Random
    }
}
