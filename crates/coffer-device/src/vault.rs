//! A vault: one organization's data on a device, behind its key slots.
//!
//! [`Vault`] is the locked handle: it can describe its header's public part
//! and try a [`Credential`]. [`UnlockedVault`] holds the vault key in memory
//! (zeroized on drop) and manages slots and subkeys.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand_core::OsRng;

use serde_json::{json, Value};

use crate::app::{App, AppInfo, Capabilities};
use crate::audit::{self, AuditKeys, AuditTrail};
use crate::error::{Error, Result};
use crate::fsio::{self, FileLock};
use crate::header::{
    self, Header, Lockout, SealedHeader, SlotMeta, VaultId, MAX_HEADER_LEN, SLOT_COUNT,
};
use crate::kdf::{KdfLimits, KdfParams};
use crate::keyslot::{Credential, KeySlot, SlotKind};
use crate::lockout::{Attempts, ATTEMPTS_LOCK_FILE};
use crate::recovery::RecoveryKey;
use crate::rotate::{self, RotationProgress, DATA_LOCK_FILE};
use crate::secret::{Key256, Passphrase, Subkey, VaultKey};
use crate::session::Session;
use crate::space::{HEADER_FILE, LOCK_FILE};
use crate::store::catalog::{Catalog, DATA_DIR};
use crate::subkey::{self, Purpose};
use crate::wipe;

/// The prefix of the settings that hold a vault's enrollment with a control
/// plane (docs/formats/stores.md): a vault with any of them is managed, and
/// [`Vault::unlock_at`] refuses it.
pub const MANAGED_SETTINGS_PREFIX: &str = "control.";

/// A vault, locked.
#[derive(Debug, Clone)]
pub struct Vault {
    name: String,
    dir: PathBuf,
    limits: KdfLimits,
    refuse_tracer: bool,
}

/// What anyone can read from a header without a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VaultInfo {
    /// The vault's name (its directory name).
    pub name: String,
    /// The vault's directory.
    pub path: PathBuf,
    /// Header format version.
    pub format_version: u16,
    /// The random vault id.
    pub vault_id: VaultId,
    /// Used slots: index and kind (names and dates are encrypted).
    pub slots: Vec<(usize, SlotKind)>,
    /// Total number of slots in the header.
    pub slot_capacity: usize,
    /// What happens after too many failed passphrase attempts.
    pub lockout: Lockout,
    /// Failed passphrase attempts since the last successful unlock.
    pub failed_attempts: u64,
}

/// One key slot as an unlocked vault lists it. Holds no secret material.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotInfo {
    /// Position in the header (0–15).
    pub index: usize,
    /// Unique name within the vault (a user, "recovery", …).
    pub name: String,
    /// Kind and KDF parameters.
    pub kind: SlotKind,
    /// When the slot was added.
    pub created_at: SystemTime,
    /// Temporary keys: when they stop opening the vault.
    pub expires_at: Option<SystemTime>,
    /// Temporary keys: whether the first unlock removes them.
    pub single_use: bool,
}

fn now_unix() -> i64 {
    system_time_to_unix(SystemTime::now())
}

fn system_time_to_unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn unix_to_system_time(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl Vault {
    pub(crate) fn at(name: String, dir: PathBuf) -> Self {
        Vault {
            name,
            dir,
            limits: KdfLimits::default(),
            refuse_tracer: false,
        }
    }

    /// The vault's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The vault's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// With `true`, unlocking fails with [`Error::DebuggerAttached`] while a
    /// debugger traces this process (Linux: `TracerPid`; elsewhere no tracer
    /// can be seen, and this does nothing). The signed policy sets it for
    /// enrolled devices.
    pub fn refuse_under_debugger(mut self, refuse: bool) -> Self {
        self.refuse_tracer = refuse;
        self
    }

    /// Replaces the KDF caps applied when the header is read.
    pub fn with_kdf_limits(mut self, limits: KdfLimits) -> Self {
        self.limits = limits;
        self
    }

    fn header_path(&self) -> PathBuf {
        self.dir.join(HEADER_FILE)
    }

    fn read_sealed(&self) -> Result<SealedHeader> {
        if wipe::in_progress(&self.dir) {
            // A wipe was interrupted: finish it before anything else.
            wipe::wipe(&self.dir)?;
            return Err(Error::Wiped {
                name: self.name.clone(),
            });
        }
        // A rotation committed before a crash: put its files in place.
        rotate::finish_pending(&self.dir)?;
        self.read_sealed_as_is()
    }

    /// Reads the header without finishing a pending wipe: for callers that
    /// hold the vault lock (the wipe takes it too).
    fn read_sealed_as_is(&self) -> Result<SealedHeader> {
        if wipe::in_progress(&self.dir) {
            return Err(Error::Wiped {
                name: self.name.clone(),
            });
        }
        let path = self.header_path();
        let bytes = fsio::read_limited(&path, MAX_HEADER_LEN).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::NoSuchVault {
                    name: self.name.clone(),
                }
            }
            other => other,
        })?;
        if wipe::is_tombstone(&bytes) {
            return Err(Error::Wiped {
                name: self.name.clone(),
            });
        }
        SealedHeader::parse(bytes, &self.limits)
    }

    /// Wipes the vault: crypto-erase (every key slot overwritten with random
    /// bytes and synced), then every file deleted, leaving a tombstone so
    /// that the vault reports [`Error::Wiped`]. Needs no secret: a remote
    /// wipe order or a lockout must be able to wipe a locked vault.
    /// Idempotent, and an interrupted wipe is finished by the next access.
    pub fn wipe(&self) -> Result<()> {
        wipe::wipe(&self.dir)
    }

    /// Reads the header's public part. Needs no secret; fails on a damaged
    /// header just as unlocking would.
    pub fn info(&self) -> Result<VaultInfo> {
        let sealed = self.read_sealed()?;
        Ok(VaultInfo {
            name: self.name.clone(),
            path: self.dir.clone(),
            format_version: header::FORMAT_VERSION,
            vault_id: sealed.vault_id,
            slots: sealed
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.kind)))
                .collect(),
            slot_capacity: SLOT_COUNT,
            lockout: sealed.lockout,
            failed_attempts: Attempts::read(&self.dir).failures,
        })
    }

    /// Opens the vault with `credential`.
    ///
    /// A passphrase is tried against every passphrase slot in turn (each try
    /// costs one KDF run), a recovery key against every recovery slot. The
    /// first slot that opens yields the vault key, which must then
    /// authenticate the whole header: if it does not, the result is
    /// [`Error::Tampered`] and the key is dropped.
    pub fn unlock(&self, credential: &Credential<'_>) -> Result<UnlockedVault> {
        self.unlock_at(credential, SystemTime::now())
    }

    /// [`Vault::unlock`] with the current time given by the caller: a
    /// trusted time source (the server's time at check-in), or a test's
    /// clock.
    ///
    /// Expiry checks use the later of `now` and the latest time any unlock
    /// of this vault has seen (kept in the encrypted header): setting the
    /// clock back does not revive an expired temporary key. A single-use
    /// temporary key's slot is removed before the vault is handed out.
    ///
    /// A vault enrolled with a control plane is refused here with
    /// [`Error::ManagedVault`] (after the secret was checked, and with the
    /// key forgotten): its organization's policy must be applied first,
    /// which the device agent does through [`Vault::unlock_managed_at`].
    pub fn unlock_at(&self, credential: &Credential<'_>, now: SystemTime) -> Result<UnlockedVault> {
        let vault = self.unlock_managed_at(credential, now)?;
        if vault.is_managed()? {
            return Err(Error::ManagedVault {
                name: self.name.clone(),
            });
        }
        Ok(vault)
    }

    /// Unlocks a vault whether or not a control plane manages it: the door
    /// of the device agent (`coffer-agent`), which applies the
    /// organization's policy to what this returns before handing it on.
    ///
    /// An app that calls this itself on an enrolled vault skips that
    /// policy; it is public only because the agent is another crate
    /// (docs/threat-model.md, "The policy through the library").
    pub fn unlock_managed_at(
        &self,
        credential: &Credential<'_>,
        now: SystemTime,
    ) -> Result<UnlockedVault> {
        crate::hardening::before_unlock(self.refuse_tracer)?;
        // The data lock first: no rotation can then commit between reading
        // the header and handing out its key (which would be the old one).
        // A first read reports a missing or wiped vault (and finishes what a
        // crash interrupted) before any lock file is created in it; the read
        // under the lock is the one that counts.
        self.read_sealed()?;
        let data_lock = self.hold_data_lock()?;
        let sealed = self.read_sealed()?;
        let now_secs = system_time_to_unix(now);
        let is_passphrase = matches!(credential, Credential::Passphrase(_));
        // Passphrase attempts are serialized and counted before any KDF runs:
        // parallel guesses wait their turn, and a guess killed in the middle
        // of its KDF has already been counted. Success undoes the count.
        let _turn = if is_passphrase {
            Some(FileLock::acquire(&self.dir.join(ATTEMPTS_LOCK_FILE))?)
        } else {
            None
        };
        let before = Attempts::read(&self.dir);
        if is_passphrase {
            if matches!(sealed.lockout, Lockout::Lock(_)) && before.reached(sealed.lockout) {
                return Err(Error::LockedOut);
            }
            if let Some(secs) = before.wait_at(now_secs) {
                return Err(Error::BackOff {
                    retry_after_secs: secs,
                });
            }
            Attempts::record_failure(&self.dir, now_secs)?;
        }
        for (index, slot) in sealed.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            if let Some(key) = slot.unwrap_key(&sealed.vault_id, credential)? {
                let header = sealed.authenticate(&key)?;
                let opened = header.slots[index]
                    .as_ref()
                    .map(|(slot, meta)| (slot.kind, meta.single_use));
                let mut vault = UnlockedVault {
                    vault: self.clone(),
                    session: Session::start(key, data_lock),
                    header,
                    opened_slot: index,
                    opened_by: opened.map_or(SlotKind::Recovery, |o| o.0),
                    opened_single_use: opened.is_some_and(|o| o.1),
                };
                vault.after_unlock(now_secs)?;
                // The attempts are reset first, and a failed audit append does
                // not fail the unlock: a log made unwritable (padded past its
                // limit, say) must not lock its users out. Its check then
                // reports what is wrong with it.
                if is_passphrase || before.failures > 0 {
                    Attempts::reset(&self.dir)?;
                }
                if before.failures > 0 {
                    let _ = vault.record(
                        "unlock_failed",
                        json!({
                            "failures": before.failures,
                            "last_at": before.last_failure,
                            "locked_out": before.reached(sealed.lockout),
                        }),
                    );
                }
                let slot = vault.opened_slot_name();
                let _ = if vault.opened_by == SlotKind::Temporary {
                    vault.record(
                        "temporary_key_used",
                        json!({"slot": slot, "single_use": vault.opened_single_use}),
                    )
                } else {
                    vault.record(
                        "unlock",
                        json!({"slot": slot, "kind": vault.opened_by.name()}),
                    )
                };
                return Ok(vault);
            }
        }
        if !is_passphrase {
            return Err(Error::WrongRecoveryKey);
        }
        if Attempts::read(&self.dir).reached(sealed.lockout) {
            match sealed.lockout {
                Lockout::Wipe(_) => {
                    self.wipe()?;
                    return Err(Error::Wiped {
                        name: self.name.clone(),
                    });
                }
                Lockout::Lock(_) => return Err(Error::LockedOut),
                _ => {}
            }
        }
        Err(Error::WrongPassphrase)
    }

    /// Failed passphrase attempts since the last successful unlock.
    pub fn failed_attempts(&self) -> u64 {
        Attempts::read(&self.dir).failures
    }

    /// Opens the vault with a key an unlock agent holds
    /// ([`UnlockedVault::session_key`]): no KDF, no attempt counted, no
    /// audit entry (the agent's own unlock was recorded). Refused with
    /// [`Error::SessionEnded`] once the key no longer opens the header (a
    /// rotation, a wipe) or the slot that opened it is gone, replaced or
    /// expired; with [`Error::LockedOut`] once failed attempts locked the
    /// vault.
    pub fn reopen(&self, session: &SessionKey) -> Result<UnlockedVault> {
        crate::hardening::before_unlock(self.refuse_tracer)?;
        self.read_sealed()?;
        let data_lock = self.hold_data_lock()?;
        let sealed = self.read_sealed()?;
        let key = VaultKey::from_bytes(*session.expose_secret());
        let header = sealed.authenticate(&key).map_err(|_| Error::SessionEnded)?;
        // The very slot that opened it: a slot removed and another added
        // at its index (an escrow slot renewed after a user's wipe order,
        // say) does not bring the session back.
        let opened = header
            .slots
            .get(session.slot)
            .and_then(Option::as_ref)
            .filter(|(slot, _)| slot_fingerprint(slot) == session.fingerprint)
            .map(|(slot, meta)| (slot.kind, meta.expires_at))
            .ok_or(Error::SessionEnded)?;
        // A vault locked out by failed attempts is locked for its session
        // too: only a recovery or temporary key opens it again.
        if matches!(sealed.lockout, Lockout::Lock(_))
            && Attempts::read(&self.dir).reached(sealed.lockout)
        {
            return Err(Error::LockedOut);
        }
        let now = system_time_to_unix(SystemTime::now()).max(header.latest_seen);
        if opened.1.is_some_and(|expiry| now >= expiry) {
            return Err(Error::SessionEnded);
        }
        Ok(UnlockedVault {
            vault: self.clone(),
            session: Session::start(key, data_lock),
            header,
            opened_slot: session.slot,
            opened_by: opened.0,
            opened_single_use: false,
        })
    }

    /// Takes the data lock shared, as every unlocked vault holds it (a
    /// rotation in another process makes this wait, then fail with
    /// [`Error::Busy`]), and removes what a rotation that crashed before
    /// its commit left behind.
    fn hold_data_lock(&self) -> Result<FileLock> {
        let lock = FileLock::acquire_shared(&self.dir.join(DATA_LOCK_FILE))?;
        rotate::discard_staging(&self.dir);
        Ok(lock)
    }
}

/// How far the clock must have moved past the recorded latest time before an
/// unlock writes the header to record it: keeps unlocks from writing on
/// every open.
const LATEST_SEEN_STEP: i64 = 60;

/// An open vault: a session holding the vault key in memory until it is
/// locked ([`UnlockedVault::lock`], the idle timeout, or drop).
pub struct UnlockedVault {
    vault: Vault,
    session: Arc<Session>,
    header: Header,
    opened_slot: usize,
    /// The kind of the slot that opened the vault: a temporary key opens the
    /// data, not the key slots.
    opened_by: SlotKind,
    opened_single_use: bool,
}

impl std::fmt::Debug for UnlockedVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockedVault")
            .field("vault", &self.vault)
            .field("vault_id", &self.header.vault_id)
            .finish_non_exhaustive()
    }
}

impl UnlockedVault {
    /// Makes a new vault in `vault`'s (empty) directory.
    pub(crate) fn create(
        vault: Vault,
        slot_name: &str,
        credential: &Credential<'_>,
        kind: SlotKind,
    ) -> Result<Self> {
        header::validate_slot_name(slot_name)?;
        if let SlotKind::Passphrase(kdf) = kind {
            kdf.validate()?;
        }
        crate::hardening::before_unlock(vault.refuse_tracer)?;
        let rng = &mut OsRng;
        let key = VaultKey(Key256::random(rng)?);
        let vault_id = VaultId::random(rng)?;
        let slot = KeySlot::wrap(&key, &vault_id, credential, kind, rng)?;
        let now = now_unix();
        let mut slots: [Option<(KeySlot, SlotMeta)>; SLOT_COUNT] = Default::default();
        slots[0] = Some((slot, SlotMeta::new(slot_name.into(), now)));
        let header = Header {
            vault_id,
            created_at: now,
            latest_seen: now,
            lockout: Default::default(),
            slots,
        };
        fsio::write_atomic(&vault.header_path(), &header.seal(&key, rng)?)?;
        let in_use = vault.hold_data_lock()?;
        let created = UnlockedVault {
            vault,
            session: Session::start(key, in_use),
            header,
            opened_slot: 0,
            opened_by: kind,
            opened_single_use: false,
        };
        created.record("vault_created", json!({"slot": slot_name}))?;
        Ok(created)
    }

    pub(crate) fn moved_to(mut self, dir: PathBuf) -> Self {
        self.vault.dir = dir;
        self
    }

    /// Makes the session delete `root` (the vault's private space) when it
    /// ends: an ephemeral vault.
    pub(crate) fn vanish_on_lock(self, root: PathBuf) -> Self {
        self.session.set_ephemeral(root);
        self
    }

    /// The locked handle of this vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The vault id.
    pub fn vault_id(&self) -> VaultId {
        self.header.vault_id
    }

    /// When the vault was created.
    pub fn created_at(&self) -> SystemTime {
        unix_to_system_time(self.header.created_at)
    }

    /// The latest time any unlock of this vault has seen (kept in the
    /// encrypted header; it never goes back): a clock set back cannot
    /// stretch a deadline measured against it.
    pub fn latest_time_seen(&self) -> SystemTime {
        unix_to_system_time(self.header.latest_seen)
    }

    /// Sets the latest time seen to `trusted` (a pinned server's time at a
    /// check-in), down as well as up: a device clock that once ran ahead no
    /// longer counts.
    pub fn set_trusted_time(&mut self, trusted: SystemTime) -> Result<()> {
        let trusted = system_time_to_unix(trusted);
        if trusted == self.header.latest_seen {
            return Ok(());
        }
        self.update_header(|header| {
            header.latest_seen = trusted;
            Ok(())
        })
    }

    /// Every used slot, in header order.
    pub fn slots(&self) -> Vec<SlotInfo> {
        self.header
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, s)| {
                s.as_ref().map(|(slot, meta)| SlotInfo {
                    index,
                    name: meta.name.clone(),
                    kind: slot.kind,
                    created_at: unix_to_system_time(meta.created_at),
                    expires_at: meta.expires_at.map(unix_to_system_time),
                    single_use: meta.single_use,
                })
            })
            .collect()
    }

    /// The vault key's bytes, for tests that prove it never reaches the
    /// disk and that rotation changes it.
    #[cfg(test)]
    pub(crate) fn vault_key_bytes(&self) -> [u8; 32] {
        match self.session.key() {
            Ok(key) => *key.0.expose_secret(),
            Err(_) => [0; 32],
        }
    }

    /// Releases the data lock without ending the session: what the kernel
    /// does to a killed process's locks.
    #[cfg(test)]
    pub(crate) fn session_release_for_test(&self) {
        self.session.release_data_lock();
    }

    /// The vault key and the slot that opened it, for an unlock agent to
    /// hand to the same user's later commands ([`Vault::reopen`]). Whoever
    /// holds it opens the vault without its passphrase until a rotation:
    /// hand it only over a channel the same user alone can reach. Refused
    /// for a single-use key's session (its slot is gone).
    pub fn session_key(&self) -> Result<SessionKey> {
        if self.opened_single_use || self.header.slots[self.opened_slot].is_none() {
            return Err(Error::NotPermitted(
                "a vault opened by a single-use key cannot be kept unlocked",
            ));
        }
        let fingerprint = self.header.slots[self.opened_slot]
            .as_ref()
            .map(|(slot, _)| slot_fingerprint(slot))
            .ok_or(Error::SessionEnded)?;
        Ok(SessionKey {
            key: self.session.key_copy()?,
            slot: self.opened_slot,
            fingerprint,
        })
    }

    /// Index of the slot that opened this vault.
    pub fn opened_slot(&self) -> usize {
        self.opened_slot
    }

    /// Derives the subkey for `purpose`; [`Error::SessionLocked`] once the
    /// session is locked.
    pub fn subkey(&self, purpose: Purpose<'_>) -> Result<Subkey> {
        let key = self.session.key()?;
        Ok(subkey::derive(&key, &self.header.vault_id, purpose))
    }

    fn audit_keys(&self) -> Result<AuditKeys> {
        Ok(AuditKeys {
            log: self.subkey(Purpose::AuditLog)?,
            mac: self.subkey(Purpose::AuditMac)?,
        })
    }

    /// Appends a security event to the vault's audit log. `details` never
    /// holds a secret: names, kinds, counts.
    pub(crate) fn record(&self, event: &str, details: Value) -> Result<()> {
        audit::append(&self.vault.dir, &self.audit_keys()?, event, details)
    }

    /// Reads the vault's audit log back and checks its chain: every entry up
    /// to the first problem, and the problem if there is one (an edited,
    /// deleted, swapped or truncated entry; docs/formats/audit-log.md).
    pub fn audit(&self) -> Result<AuditTrail> {
        audit::read(&self.vault.dir, &self.audit_keys()?)
    }

    /// Locks the session now: the vault key is zeroized, the vault's data
    /// lock released, and an ephemeral vault deleted. Every later call that
    /// needs the key fails with [`Error::SessionLocked`]. Store handles
    /// opened before keep their own derived keys until they are dropped:
    /// drop them first.
    pub fn lock(&self) {
        self.session.lock();
    }

    /// Whether the session is locked (explicitly, or after the idle timeout).
    pub fn is_locked(&self) -> bool {
        self.session.is_locked()
    }

    /// Locks the session after `timeout` without a call that needs the key
    /// (`None`: never). A watchdog thread does it on time, even if nothing
    /// calls in; it holds no reference that keeps the session alive.
    pub fn set_idle_timeout(&self, timeout: Option<Duration>) {
        Session::set_idle_timeout(&self.session, timeout);
    }

    /// The name of the slot that opened this vault.
    pub(crate) fn opened_slot_name(&self) -> String {
        self.header.slots[self.opened_slot]
            .as_ref()
            .map(|(_, meta)| meta.name.clone())
            .unwrap_or_default()
    }

    pub(crate) fn catalog(&self) -> Result<Catalog> {
        let key = self.subkey(Purpose::Catalog)?;
        // A wipe may have begun since this vault was unlocked: never recreate
        // its databases under the old key.
        if wipe::in_progress(&self.vault.dir)
            || wipe::is_tombstone(&fsio::read_limited(&self.vault.header_path(), 64)?)
        {
            return Err(Error::Wiped {
                name: self.vault.name.clone(),
            });
        }
        fsio::create_private_dir_all(&self.vault.dir.join(DATA_DIR))?;
        Catalog::open(&self.vault.dir, &key)
    }

    /// Adds an app with the given capabilities.
    pub fn add_app(&self, name: &str, capabilities: Capabilities) -> Result<AppInfo> {
        let info = self.catalog()?.add(name, capabilities, &mut OsRng)?;
        self.record(
            "app_added",
            json!({"app": name, "capabilities": capability_names(capabilities)}),
        )?;
        Ok(info)
    }

    /// A setting of the vault itself (its enrollment with a control plane,
    /// say), kept encrypted in its catalog: never in a plain file.
    pub fn setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.catalog()?.setting(key)
    }

    /// The keys of the vault's settings that start with `prefix`, in order.
    pub fn setting_keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.catalog()?.setting_keys(prefix)
    }

    /// Whether a control plane manages the vault: its catalog holds an
    /// enrollment (settings under [`MANAGED_SETTINGS_PREFIX`]).
    pub fn is_managed(&self) -> Result<bool> {
        Ok(!self.setting_keys(MANAGED_SETTINGS_PREFIX)?.is_empty())
    }

    /// Sets a setting of the vault (`None` removes it).
    pub fn set_setting(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        self.catalog()?.set_setting(key, value)
    }

    /// Every app of the vault, by name.
    pub fn apps(&self) -> Result<Vec<AppInfo>> {
        self.catalog()?.list()
    }

    /// A handle on the app `name`.
    pub fn app(&self, name: &str) -> Result<App<'_>> {
        let catalog = self.catalog()?;
        let info = catalog.get(name)?;
        Ok(App::new(self, &catalog, info))
    }

    /// Imports an app archive (made by [`App::export`]) as a new app, named
    /// as in the archive or `rename`. All or nothing: on any error the vault
    /// is as before.
    pub fn import_app(
        &self,
        input: impl std::io::Read + std::io::Seek,
        passphrase: &Passphrase,
        rename: Option<&str>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<AppInfo> {
        let catalog = self.catalog()?;
        let info = crate::app::import(self, &catalog, input, passphrase, rename, progress)?;
        self.record("app_imported", json!({"app": info.name}))?;
        Ok(info)
    }

    /// Replaces the capabilities of the app `name`.
    pub fn set_app_capabilities(&self, name: &str, capabilities: Capabilities) -> Result<()> {
        self.catalog()?.set_capabilities(name, capabilities)?;
        self.record(
            "app_capabilities_changed",
            json!({"app": name, "capabilities": capability_names(capabilities)}),
        )
    }

    /// Adds a passphrase slot for a user of this device.
    pub fn add_passphrase_slot(
        &mut self,
        name: &str,
        passphrase: &Passphrase,
        kdf: &KdfParams,
    ) -> Result<SlotInfo> {
        kdf.validate()?;
        let meta = SlotMeta::new(name.into(), now_unix());
        self.add_slot(
            meta,
            &Credential::Passphrase(passphrase),
            SlotKind::Passphrase(*kdf),
        )
    }

    /// Adds a recovery slot and returns its key, to be shown to the user once.
    pub fn add_recovery_slot(&mut self, name: &str) -> Result<(SlotInfo, RecoveryKey)> {
        let recovery = RecoveryKey::generate(&mut OsRng)?;
        let meta = SlotMeta::new(name.into(), now_unix());
        let info = self.add_slot(
            meta,
            &Credential::RecoveryKey(&recovery),
            SlotKind::Recovery,
        )?;
        Ok((info, recovery))
    }

    /// A vault opened with a temporary key may not change its key slots or
    /// lockout (else the key's expiry would mean nothing), except that a
    /// single-use key may add a passphrase slot: the way back in for a user
    /// whose slot was retired.
    fn require_slot_admin(&self, adding_passphrase: bool) -> Result<()> {
        if self.opened_by != SlotKind::Temporary || (adding_passphrase && self.opened_single_use) {
            Ok(())
        } else {
            Err(Error::NotPermitted(
                "a vault opened with a temporary key cannot change its key slots or lockout",
            ))
        }
    }

    fn add_slot(
        &mut self,
        meta: SlotMeta,
        credential: &Credential<'_>,
        kind: SlotKind,
    ) -> Result<SlotInfo> {
        let kind_for_log = kind;
        self.require_slot_admin(matches!(kind, SlotKind::Passphrase(_)))?;
        header::validate_slot_name(&meta.name)?;
        let name = meta.name.clone();
        // The KDF runs before the lock is taken: it is the slow part.
        let slot = KeySlot::wrap(
            &self.session.key_copy()?,
            &self.header.vault_id,
            credential,
            kind,
            &mut OsRng,
        )?;
        let index = self.update_header(|header| {
            if header
                .slots
                .iter()
                .flatten()
                .any(|(_, m)| m.name == meta.name)
            {
                return Err(Error::SlotNameTaken {
                    name: meta.name.clone(),
                });
            }
            let (index, free) = header
                .slots
                .iter_mut()
                .enumerate()
                .find(|(_, s)| s.is_none())
                .ok_or(Error::SlotsFull(SLOT_COUNT))?;
            *free = Some((slot, meta));
            Ok(index)
        })?;
        self.record(
            "slot_added",
            json!({"slot": name, "kind": kind_for_log.name()}),
        )?;
        self.slots()
            .into_iter()
            .find(|s| s.index == index)
            .ok_or(Error::NoSuchSlot { name })
    }

    /// Adds a temporary key: a random key in its own slot, refused at or
    /// after `expires_at` (by the vault's clock, which never runs backwards:
    /// see [`Vault::unlock_at`]); a `single_use` key is removed by the unlock
    /// that uses it. Returns the key, to be handed over once.
    pub fn add_temporary_slot(
        &mut self,
        name: &str,
        expires_at: SystemTime,
        single_use: bool,
    ) -> Result<(SlotInfo, RecoveryKey)> {
        let key = RecoveryKey::generate(&mut OsRng)?;
        let mut meta = SlotMeta::new(name.into(), now_unix());
        meta.expires_at = Some(system_time_to_unix(expires_at));
        meta.single_use = single_use;
        let info = self.add_slot(meta, &Credential::RecoveryKey(&key), SlotKind::Temporary)?;
        Ok((info, key))
    }

    /// Sets what happens after too many failed passphrase attempts in a row.
    pub fn set_lockout(&mut self, lockout: Lockout) -> Result<()> {
        self.require_slot_admin(false)?;
        if matches!(lockout, Lockout::Lock(0) | Lockout::Wipe(0)) {
            return Err(Error::InvalidKdfParams(
                "a lockout needs at least one attempt",
            ));
        }
        self.update_header(|header| {
            header.lockout = lockout;
            Ok(())
        })?;
        self.record("lockout_set", json!({"setting": lockout_name(lockout)}))
    }

    /// The lockout setting.
    pub fn lockout(&self) -> Lockout {
        self.header.lockout
    }

    /// Sets a new passphrase on a passphrase slot: the slot called `name`, or
    /// (with `None`) the passphrase slot that opened this vault.
    ///
    /// Only that slot is rewrapped, in place, keeping its name: the vault
    /// key does not change, so this costs one KDF run whatever the vault
    /// holds. Proving the old secret is unlocking: a vault opened with a
    /// recovery key may reset any user's passphrase, by name.
    pub fn change_passphrase(
        &mut self,
        name: Option<&str>,
        passphrase: &Passphrase,
        kdf: &KdfParams,
    ) -> Result<SlotInfo> {
        self.require_slot_admin(false)?;
        kdf.validate()?;
        let index = match name {
            Some(name) => {
                self.slots()
                    .into_iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| Error::NoSuchSlot { name: name.into() })?
                    .index
            }
            None => self.opened_slot,
        };
        let target_name = self
            .slots()
            .into_iter()
            .find(|s| s.index == index)
            .map(|s| s.name)
            .ok_or(Error::NoSuchSlot {
                name: format!("#{index}"),
            })?;
        if !matches!(
            self.header.slots[index],
            Some((
                KeySlot {
                    kind: SlotKind::Passphrase(_),
                    ..
                },
                _
            ))
        ) {
            return Err(Error::NotAPassphraseSlot { name: target_name });
        }
        let slot = KeySlot::wrap(
            &self.session.key_copy()?,
            &self.header.vault_id,
            &Credential::Passphrase(passphrase),
            SlotKind::Passphrase(*kdf),
            &mut OsRng,
        )?;
        self.update_header(|header| {
            // Found again by name: another process may have moved slots.
            let entry = header
                .slots
                .iter_mut()
                .flatten()
                .find(|(_, meta)| meta.name == target_name)
                .ok_or_else(|| Error::NoSuchSlot {
                    name: target_name.clone(),
                })?;
            if !matches!(entry.0.kind, SlotKind::Passphrase(_)) {
                return Err(Error::NotAPassphraseSlot {
                    name: target_name.clone(),
                });
            }
            entry.0 = slot;
            Ok(())
        })?;
        self.record("passphrase_changed", json!({"slot": target_name}))?;
        self.slots()
            .into_iter()
            .find(|s| s.name == target_name)
            .ok_or(Error::NoSuchSlot { name: target_name })
    }

    /// Removes the slot called `name`. The vault key does not change: the
    /// removed secret no longer opens this header, but anyone who copied the
    /// header before still can (rotation, a later feature, is the answer).
    pub fn remove_slot(&mut self, name: &str) -> Result<()> {
        self.require_slot_admin(false)?;
        self.update_header(|header| {
            let slot = header
                .slots
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|(_, m)| m.name == name))
                .ok_or_else(|| Error::NoSuchSlot { name: name.into() })?;
            *slot = None;
            if header.slots.iter().all(Option::is_none) {
                return Err(Error::LastSlot);
            }
            Ok(())
        })?;
        self.record("slot_removed", json!({"slot": name}))
    }

    /// Rotates the vault key: a new random key, every store re-encrypted
    /// under keys derived from it (see [`crate::rotate`] for the crash-safe
    /// protocol), all or nothing.
    ///
    /// `keep` names the slots to carry over, each with its secret (checked
    /// against the slot before anything starts). Every other slot is
    /// retired: its secret opened only the old key. `options` can add a new
    /// recovery slot and single-use reset keys for retired passphrase slots.
    ///
    /// Other processes must not hold this vault open (their unlock holds
    /// the data lock): [`Error::Busy`] after a wait. Store handles of this
    /// process (connections, [`crate::KvStore`], …) must be dropped first:
    /// they would keep writing the old files.
    pub fn rotate(
        &mut self,
        keep: &[(&str, Credential<'_>)],
        options: &rotate::RotateOptions,
        progress: &mut dyn FnMut(RotationProgress),
    ) -> Result<rotate::RotationReport> {
        self.rotate_until(keep, options, progress, rotate::StopAt::Never)
    }

    pub(crate) fn rotate_until(
        &mut self,
        keep: &[(&str, Credential<'_>)],
        options: &rotate::RotateOptions,
        progress: &mut dyn FnMut(RotationProgress),
        stop: rotate::StopAt,
    ) -> Result<rotate::RotationReport> {
        self.require_slot_admin(false)?;
        if keep.is_empty() && options.recovery_slot.is_none() {
            return Err(Error::NotPermitted(
                "a rotation must keep a slot or add a recovery slot: nothing would open the vault",
            ));
        }
        let rng = &mut OsRng;
        let vault_id = self.header.vault_id;
        let new_key = VaultKey(Key256::random(rng)?);
        // Every secret is checked, and its slot rewrapped, before anything
        // is written: a mistyped passphrase must not lock its user out.
        let mut rewrapped: Vec<(String, KeySlot)> = Vec::new();
        for (name, credential) in keep {
            let slot = self
                .header
                .slots
                .iter()
                .flatten()
                .find(|(_, meta)| meta.name == *name)
                .map(|(slot, _)| slot.clone())
                .ok_or_else(|| Error::NoSuchSlot {
                    name: (*name).into(),
                })?;
            let opens = {
                let current = self.session.key_copy()?;
                slot.unwrap_key(&vault_id, credential)?
                    .is_some_and(|k| k.0.expose_secret() == current.0.expose_secret())
            };
            if !opens {
                return Err(match credential {
                    Credential::Passphrase(_) => Error::WrongPassphrase,
                    Credential::RecoveryKey(_) => Error::WrongRecoveryKey,
                });
            }
            if !rewrapped.iter().any(|(n, _)| n == name) {
                let slot = KeySlot::wrap(&new_key, &vault_id, credential, slot.kind, rng)?;
                rewrapped.push(((*name).to_owned(), slot));
            }
        }

        // Exclusive use of the stores: give up this vault's shared hold.
        // A long rotation is not idleness: the session stays open until the
        // report, which holds the only copy of any new key, is handed back.
        let session = Arc::clone(&self.session);
        let _busy = session.busy();
        self.session.release_data_lock();
        let dir = self.vault.dir.clone();
        let exclusive = FileLock::acquire(&dir.join(DATA_LOCK_FILE));
        let result = exclusive.and_then(|_exclusive| {
            self.rotate_locked(&dir, new_key, rewrapped, options, progress, stop)
        });
        if stop != rotate::StopAt::Never {
            // A test's stand-in for a crash: leave everything as it lies.
            return result;
        }
        match self.vault.hold_data_lock() {
            Ok(lock) => self.session.hold_data_lock(lock),
            // Another rotation took the vault in between: this session must
            // not go on without the lock. The report is still returned.
            Err(_) => self.session.lock(),
        }
        result
    }

    fn rotate_locked(
        &mut self,
        dir: &Path,
        new_key: VaultKey,
        rewrapped: Vec<(String, KeySlot)>,
        options: &rotate::RotateOptions,
        progress: &mut dyn FnMut(RotationProgress),
        stop: rotate::StopAt,
    ) -> Result<rotate::RotationReport> {
        let vault_id = self.header.vault_id;
        rotate::finish_pending(dir)?;
        rotate::discard_staging(dir);
        self.record(
            "rotation_started",
            json!({"keep": rewrapped.iter().map(|(n, _)| n).collect::<Vec<_>>()}),
        )?;
        let staging = dir.join(rotate::STAGING_DIR);
        let new_audit_keys = AuditKeys {
            log: subkey::derive(&new_key, &vault_id, Purpose::AuditLog),
            mac: subkey::derive(&new_key, &vault_id, Purpose::AuditMac),
        };
        let staged = rotate::stage_stores(
            dir,
            &|purpose| self.subkey(purpose),
            &|purpose| Ok(subkey::derive(&new_key, &vault_id, purpose)),
            progress,
        )
        .and_then(|staged| {
            audit::reencrypt(dir, &self.audit_keys()?, &staging, &new_audit_keys)?;
            Ok(staged)
        });
        let staged = match staged {
            Ok(staged) => staged,
            Err(e) => {
                rotate::discard_staging(dir);
                return Err(e);
            }
        };
        if stop == rotate::StopAt::AfterStaging {
            return Err(Error::NotPermitted("test stop after staging"));
        }

        let _lock = FileLock::acquire(&dir.join(LOCK_FILE))?;
        // Temporary header copies left by crashed writes hold the old slots,
        // the retired ones too: erase them like a wipe would.
        for stale in wipe::header_temporaries(dir) {
            let _ = wipe::overwrite_with_noise(&stale);
            let _ = fs::remove_file(&stale);
        }
        let built = (|| -> Result<(Header, rotate::RotationReport)> {
            // The live header, re-read: a wipe may have happened meanwhile.
            let current = self
                .vault
                .read_sealed_as_is()?
                .authenticate(&*self.session.key()?)?;
            let mut header = current.clone();
            header.slots = Default::default();
            let mut report = rotate::RotationReport {
                kept: Vec::new(),
                retired: Vec::new(),
                recovery_key: None,
                reset_keys: Vec::new(),
                databases: staged.databases,
                files: staged.files,
                bytes: staged.bytes,
            };
            let mut retired_passphrases = Vec::new();
            for (index, entry) in current.slots.iter().enumerate() {
                let Some((old_slot, meta)) = entry else {
                    continue;
                };
                match rewrapped.iter().find(|(name, _)| *name == meta.name) {
                    Some((_, slot)) => {
                        header.slots[index] = Some((slot.clone(), meta.clone()));
                        report.kept.push(meta.name.clone());
                    }
                    None => {
                        if matches!(old_slot.kind, SlotKind::Passphrase(_)) {
                            retired_passphrases.push(meta.name.clone());
                        }
                        report.retired.push(meta.name.clone());
                    }
                }
            }
            let now = now_unix();
            let place = |header: &mut Header, meta: SlotMeta, slot: KeySlot| -> Result<()> {
                header::validate_slot_name(&meta.name)?;
                if header
                    .slots
                    .iter()
                    .flatten()
                    .any(|(_, m)| m.name == meta.name)
                {
                    return Err(Error::SlotNameTaken { name: meta.name });
                }
                let free = header
                    .slots
                    .iter_mut()
                    .find(|s| s.is_none())
                    .ok_or(Error::SlotsFull(SLOT_COUNT))?;
                *free = Some((slot, meta));
                Ok(())
            };
            if let Some(name) = &options.recovery_slot {
                let key = RecoveryKey::generate(&mut OsRng)?;
                let slot = KeySlot::wrap(
                    &new_key,
                    &vault_id,
                    &Credential::RecoveryKey(&key),
                    SlotKind::Recovery,
                    &mut OsRng,
                )?;
                place(&mut header, SlotMeta::new(name.clone(), now), slot)?;
                report.recovery_key = Some((name.clone(), key));
            }
            if let Some(until) = options.reset_keys_until {
                for name in retired_passphrases {
                    let key = RecoveryKey::generate(&mut OsRng)?;
                    let slot = KeySlot::wrap(
                        &new_key,
                        &vault_id,
                        &Credential::RecoveryKey(&key),
                        SlotKind::Temporary,
                        &mut OsRng,
                    )?;
                    let mut meta = SlotMeta::new(name.clone(), now);
                    meta.expires_at = Some(system_time_to_unix(until));
                    meta.single_use = true;
                    place(&mut header, meta, slot)?;
                    report.reset_keys.push((name, key));
                }
            }
            if header.slots.iter().all(Option::is_none) {
                return Err(Error::LastSlot);
            }
            fsio::write_atomic(
                &staging.join(HEADER_FILE),
                &header.seal(&new_key, &mut OsRng)?,
            )?;
            rotate::sync_tree(&staging)?;
            Ok((header, report))
        })();
        let (header, report) = match built {
            Ok(built) => built,
            Err(e) => {
                rotate::discard_staging(dir);
                return Err(e);
            }
        };

        // The commit point.
        let committed = dir.join(rotate::COMMITTED_DIR);
        fs::rename(&staging, &committed).map_err(|e| Error::io("rotating", &committed, e))?;
        // Committed by the rename: a failed sync must not hide the report.
        let _ = fsio::sync_dir(dir);
        // Committed: from here on the rotation has happened, whatever fails,
        // and the report (the only copy of any new recovery or reset key)
        // must reach the caller. What is left is finished by the next access.
        let opener = self.header.slots[self.opened_slot]
            .as_ref()
            .map(|(_, meta)| meta.name.clone());
        // Only an explicit lock() from another thread can make this fail;
        // the session then stays locked.
        let _ = self.session.replace_key(new_key);
        self.header = header;
        self.opened_slot = self
            .header
            .slots
            .iter()
            .position(|s| {
                s.as_ref()
                    .is_some_and(|(_, m)| Some(&m.name) == opener.as_ref())
            })
            .or_else(|| self.header.slots.iter().position(Option::is_some))
            .unwrap_or(0);
        match stop {
            rotate::StopAt::AfterCommit => return Ok(report),
            rotate::StopAt::AfterRenames(n) => {
                let _ = rotate::roll_forward(dir, n);
                return Ok(report);
            }
            _ => {}
        }
        if rotate::roll_forward(dir, usize::MAX).is_err() {
            // The next access to the vault finishes it. This session, with
            // the new key over files not all in place, must not go on.
            self.session.lock();
            return Ok(report);
        }
        let _ = self.record(
            "rotation_finished",
            json!({
                "kept": report.kept,
                "retired": report.retired,
                "recovery_slot": report.recovery_key.as_ref().map(|(name, _)| name),
                "reset_keys": report.reset_keys.iter().map(|(name, _)| name).collect::<Vec<_>>(),
                "databases": report.databases,
                "files": report.files,
                "bytes": report.bytes,
            }),
        );
        Ok(report)
    }

    /// Enforces the opened slot's expiry and single use, and records the
    /// time seen, right after a slot opened.
    fn after_unlock(&mut self, now: i64) -> Result<()> {
        let now = now.max(self.header.latest_seen);
        let index = self.opened_slot;
        let (expires_at, single_use, name) = match &self.header.slots[index] {
            Some((_, meta)) => (meta.expires_at, meta.single_use, meta.name.clone()),
            None => {
                return Err(Error::NoSuchSlot {
                    name: format!("#{index}"),
                })
            }
        };
        if expires_at.is_some_and(|expiry| now >= expiry) {
            // Clean the dead slot out while the key is at hand.
            let _ = self.update_header(|header| {
                header.slots[index] = None;
                header.latest_seen = header.latest_seen.max(now);
                if header.slots.iter().all(Option::is_none) {
                    return Err(Error::LastSlot);
                }
                Ok(())
            });
            let _ = self.record(
                "temporary_key_refused",
                json!({"slot": name, "reason": "expired"}),
            );
            return Err(Error::TemporaryKeyExpired { name });
        }
        if single_use {
            self.update_header(|header| {
                // Another process may have used it first: then it is gone.
                if header.slots[index]
                    .as_ref()
                    .is_none_or(|(_, m)| m.name != name)
                {
                    return Err(Error::WrongRecoveryKey);
                }
                header.slots[index] = None;
                header.latest_seen = header.latest_seen.max(now);
                if header.slots.iter().all(Option::is_none) {
                    return Err(Error::LastSlot);
                }
                Ok(())
            })?;
        } else if now > self.header.latest_seen.saturating_add(LATEST_SEEN_STEP) {
            self.update_header(|header| {
                header.latest_seen = header.latest_seen.max(now);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Re-reads and authenticates the header under the vault lock, applies
    /// `change` and writes the result atomically. Another process's change
    /// made since this vault was unlocked is kept, not overwritten.
    fn update_header<T>(&mut self, change: impl FnOnce(&mut Header) -> Result<T>) -> Result<T> {
        let _lock = FileLock::acquire(&self.vault.dir.join(LOCK_FILE))?;
        // Only the header's own leftovers: other files have other writers.
        fsio::remove_stale(&self.vault.dir, ".header.", ".tmp");
        let key = self.session.key()?;
        let mut header = self.vault.read_sealed_as_is()?.authenticate(&key)?;
        let out = change(&mut header)?;
        fsio::write_atomic(&self.vault.header_path(), &header.seal(&key, &mut OsRng)?)?;
        drop(key);
        self.header = header;
        Ok(out)
    }
}

fn capability_names(capabilities: Capabilities) -> Vec<&'static str> {
    capabilities.iter().map(|c| c.name()).collect()
}

fn lockout_name(lockout: Lockout) -> String {
    match lockout {
        Lockout::Off => "off".into(),
        Lockout::Lock(n) => format!("lock after {n}"),
        Lockout::Wipe(n) => format!("wipe after {n}"),
    }
}

/// A vault key in the hands of an unlock agent, with the slot that opened
/// it ([`UnlockedVault::session_key`], [`Vault::reopen`]). Zeroized on
/// drop; never shown by `Debug`.
pub struct SessionKey {
    /// Pinned in RAM (mlock) like every vault key.
    key: VaultKey,
    slot: usize,
    /// SHA-256 of the opening slot as stored (its wrapped key, with its
    /// fresh nonce): which slot, not only which index.
    fingerprint: [u8; 32],
}

/// A slot's identity for a session: SHA-256 of its stored bytes.
fn slot_fingerprint(slot: &KeySlot) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(slot.encode()).into()
}

impl SessionKey {
    /// From its parts, as an agent's client receives them (the key's bytes
    /// are moved into a pinned box and the copy zeroized); `None` for a
    /// slot index out of range.
    pub fn from_parts(
        key: [u8; crate::KEY_LEN],
        slot: usize,
        fingerprint: [u8; 32],
    ) -> Option<SessionKey> {
        let key = VaultKey::from_bytes(key);
        (slot < crate::header::SLOT_COUNT).then_some(SessionKey {
            key,
            slot,
            fingerprint,
        })
    }

    /// The opening slot's fingerprint, sent with the key.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The key's bytes, to send over the agent's socket.
    pub fn expose_secret(&self) -> &[u8; crate::KEY_LEN] {
        self.key.0.expose_secret()
    }

    /// The slot that opened the vault.
    pub fn slot(&self) -> usize {
        self.slot
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}
