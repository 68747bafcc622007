//! coffer's device-side library.
//!
//! A [`Space`] is a directory on a device holding one [`Vault`] per
//! organization. A vault has a random 256-bit vault key that is never stored
//! unwrapped: its header holds up to sixteen key slots, each wrapping the
//! vault key under a key derived from one secret — a user's passphrase
//! (Argon2id by default), or a recovery key. Everything else the vault
//! protects uses [subkeys](subkey) derived from the vault key.
//!
//! ```no_run
//! use coffer_device::{Credential, KdfAlgorithm, KdfParams, Passphrase, Space};
//! use std::time::Duration;
//!
//! # fn main() -> coffer_device::Result<()> {
//! let space = Space::new("/var/lib/coffer");
//! let kdf = KdfParams::calibrate(KdfAlgorithm::Argon2id, Duration::from_millis(500))?;
//! let alice = Passphrase::new("correct horse battery staple".into())?;
//! let mut vault = space.create_vault("acme", "alice", &alice, &kdf)?;
//! let (_, recovery) = vault.add_recovery_slot("recovery")?;
//! drop(vault); // locks: the vault key is zeroized
//!
//! let vault = space.vault("acme")?.unlock(&Credential::RecoveryKey(&recovery))?;
//! # Ok(()) }
//! ```
//!
//! An [`UnlockedVault`] is a session: [`UnlockedVault::lock`], an idle
//! timeout ([`UnlockedVault::set_idle_timeout`]) or drop zeroizes its key;
//! [`Space::ephemeral_vault`] makes one that lives only in memory.
//! [`UnlockedVault::rotate`] replaces the vault key and re-encrypts every
//! store, crash-safely ([`rotate`]); [`UnlockedVault::audit`] reads the
//! tamper-evident log of security events ([`audit`]); [`hardening`] says
//! what protects keys in this process.
//!
//! The formats are specified in `docs/formats/` (vault-header.md, stores.md,
//! file-stream.md, app-archive.md, audit-log.md); the threat model in
//! `docs/threat-model.md`.

mod aead;
pub mod app;
pub mod archive;
pub mod audit;
pub mod check;
mod codec;
mod error;
mod fsio;
pub mod hardening;
pub mod header;
pub mod kdf;
pub mod keyslot;
mod lockout;
pub mod purge;
pub mod recovery;
pub mod rotate;
mod secret;
mod session;
pub mod space;
pub mod store;
pub mod stream;
pub mod subkey;
pub mod vault;
mod wipe;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod tests;

pub use app::{App, AppInfo, Capabilities, Capability, ExportSummary};
pub use audit::{AuditEntry, AuditProblem, AuditTrail};
pub use check::{CheckProgress, CheckReport, Problem, ProblemKind};
pub use error::{CorruptKind, DatabaseErrorKind, Error, Result};
pub use header::{Lockout, VaultId};
pub use kdf::{KdfAlgorithm, KdfLimitError, KdfLimits, KdfParams};
pub use keyslot::{Credential, SlotKind};
pub use recovery::{RecoveryKey, RecoveryKeyError};
pub use rotate::RotationProgress;
pub use secret::{Passphrase, Subkey, VaultKey, KEY_LEN, MAX_PASSPHRASE_LEN};
pub use space::Space;
pub use store::database::{refused_by_confinement, SQL_CONFINEMENT};
pub use store::files::{
    Download, DownloadMismatchKind, FileInfo, FileReader, FileStore, QueuedDownload,
};
pub use store::kv::KvStore;
pub use store::records::{Change, FileRef, Record, RecordStore};
pub use store::sync::{
    Ack, AckOutcome, Conflict, PageApplied, PendingChange, PulledHead, Resolution, Side, SyncState,
};
pub use subkey::Purpose;
pub use vault::SessionKey;
pub use vault::{SlotInfo, UnlockedVault, Vault, VaultInfo};
