//! A space: the directory on a device that holds one vault per organization.
//!
//! ```text
//! SPACE/                 (0700)
//!   .lock                serializes vault creation
//!   <vault name>/        (0700) one per organization; the name is visible
//!     header             key slots and encrypted metadata (vault-header.md)
//!     .lock              serializes header changes
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsio::{self, FileLock};
use crate::kdf::KdfParams;
use crate::keyslot::{Credential, SlotKind};
use crate::recovery::RecoveryKey;
use crate::secret::Passphrase;
use crate::vault::{UnlockedVault, Vault};

/// Name of the header file inside a vault directory.
pub(crate) const HEADER_FILE: &str = "header";
/// Name of the lock file in a space or vault directory.
pub(crate) const LOCK_FILE: &str = ".lock";
/// Name prefix of an ephemeral vault's private directory.
const EPHEMERAL_PREFIX: &str = "coffer-ephemeral-";
/// Longest vault name.
pub const MAX_VAULT_NAME_LEN: usize = 64;

/// A directory holding vaults.
#[derive(Debug, Clone)]
pub struct Space {
    root: PathBuf,
}

/// Checks a vault name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or
/// digit. Lower case only, so that names mean the same on case-insensitive
/// file systems; no leading dot, so that temporary directories never clash.
pub fn validate_vault_name(name: &str) -> Result<()> {
    let rule = if name.is_empty() || name.len() > MAX_VAULT_NAME_LEN {
        Some("must be 1 to 64 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("may only contain a-z, 0-9, '.', '_' and '-'")
    } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
        Some("must start with a letter or digit")
    } else {
        None
    };
    match rule {
        Some(rule) => Err(Error::InvalidName {
            what: "vault name",
            name: name.escape_debug().to_string(),
            rule,
        }),
        None => Ok(()),
    }
}

impl Space {
    /// A space rooted at `root`. Nothing is read or created until used.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Space { root: root.into() }
    }

    /// The default location: `coffer` under the user's data directory
    /// (`$XDG_DATA_HOME/coffer` or `~/.local/share/coffer` on Linux).
    pub fn default_root() -> Option<PathBuf> {
        dirs::data_dir().map(|d| d.join("coffer"))
    }

    /// The space's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names of the vaults in this space, sorted. A missing space has none.
    pub fn vault_names(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("listing", &self.root, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing", &self.root, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if validate_vault_name(&name).is_ok() && entry.path().join(HEADER_FILE).is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The vault `name`, which must exist.
    pub fn vault(&self, name: &str) -> Result<Vault> {
        validate_vault_name(name)?;
        let dir = self.root.join(name);
        if !dir.join(HEADER_FILE).is_file() {
            return Err(Error::NoSuchVault { name: name.into() });
        }
        Ok(Vault::at(name.into(), dir))
    }

    /// Creates the vault `name` with one passphrase slot called `slot_name`,
    /// and returns it unlocked.
    ///
    /// The vault appears whole or not at all: it is built in a hidden
    /// temporary directory and renamed into place.
    pub fn create_vault(
        &self,
        name: &str,
        slot_name: &str,
        passphrase: &Passphrase,
        kdf: &KdfParams,
    ) -> Result<UnlockedVault> {
        validate_vault_name(name)?;
        let existed = self.root.exists();
        fsio::create_private_dir_all(&self.root)?;
        if !existed {
            // Make the new space directory itself durable.
            if let Some(parent) = self.root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsio::sync_dir(parent)?;
            }
        }
        let _lock = FileLock::acquire(&self.root.join(LOCK_FILE))?;
        // Under the lock no creation is in progress: staging directories left
        // by a crash are garbage.
        fsio::remove_stale(&self.root, ".", ".creating");
        let dir = self.root.join(name);
        if dir.exists() {
            // A wiped vault's name may be used again.
            match Vault::at(name.into(), dir.clone()).info() {
                Err(Error::Wiped { .. }) => {
                    fs::remove_dir_all(&dir)
                        .map_err(|e| Error::io("replacing a wiped vault", &dir, e))?;
                }
                _ => return Err(Error::VaultExists { name: name.into() }),
            }
        }
        let staging = self
            .root
            .join(format!(".{name}.{}.creating", fsio::random_suffix()?));
        fsio::create_private_dir(&staging)?;
        kdf.validate()?;
        let built = UnlockedVault::create(
            Vault::at(name.into(), staging.clone()),
            slot_name,
            &Credential::Passphrase(passphrase),
            SlotKind::Passphrase(*kdf),
        );
        let unlocked = match built {
            Ok(unlocked) => unlocked,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&staging, &dir) {
            let _ = fs::remove_dir_all(&staging);
            return Err(Error::io("creating vault", &dir, e));
        }
        fsio::sync_dir(&self.root)?;
        Ok(unlocked.moved_to(dir))
    }

    /// A vault that lives only in memory and vanishes when its session ends
    /// (explicit lock, idle timeout, or drop): its files are in a private
    /// directory on the RAM-backed `/dev/shm`, and deleted then. No secret
    /// can open it again: the key of its one slot is dropped at once.
    ///
    /// Its stores are encrypted as usual. tmpfs pages can still be swapped
    /// out under memory pressure; they hold only ciphertext, and the key
    /// itself is pinned (docs/threat-model.md). [`Error::Unsupported`] where
    /// there is no `/dev/shm`.
    pub fn ephemeral_vault(name: &str) -> Result<UnlockedVault> {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return Err(Error::Unsupported(
                "an ephemeral vault needs a RAM-backed /dev/shm",
            ));
        }
        Self::ephemeral_vault_in(shm, name)
    }

    /// [`Space::ephemeral_vault`] in a directory of the caller's choice,
    /// which should be RAM-backed (tests, or platforms without `/dev/shm`).
    pub fn ephemeral_vault_in(ram_dir: &Path, name: &str) -> Result<UnlockedVault> {
        validate_vault_name(name)?;
        remove_abandoned_ephemeral_vaults(ram_dir);
        let root = ram_dir.join(format!("{EPHEMERAL_PREFIX}{}", fsio::random_suffix()?));
        fsio::create_private_dir(&root)?;
        let dir = root.join(name);
        let built = fsio::create_private_dir(&dir).and_then(|()| {
            let throwaway = RecoveryKey::generate(&mut rand_core::OsRng)?;
            UnlockedVault::create(
                Vault::at(name.into(), dir.clone()),
                "ephemeral",
                &Credential::RecoveryKey(&throwaway),
                SlotKind::Recovery,
            )
        });
        match built {
            Ok(vault) => Ok(vault.vanish_on_lock(root)),
            Err(e) => {
                let _ = fs::remove_dir_all(&root);
                Err(e)
            }
        }
    }
}

/// Deletes ephemeral vaults whose process died without locking them (a
/// SIGKILL, a crash): every live ephemeral session holds its vault's data
/// lock, so a vault whose lock can be taken is abandoned. They hold only
/// ciphertext under a key that died with the process; this frees the RAM.
fn remove_abandoned_ephemeral_vaults(ram_dir: &Path) {
    let Ok(entries) = fs::read_dir(ram_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(EPHEMERAL_PREFIX)
        {
            continue;
        }
        let root = entry.path();
        let vaults: Vec<_> = fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|v| v.path())
            .collect();
        let abandoned = !vaults.is_empty()
            && vaults.iter().all(|v| {
                FileLock::try_acquire_existing(&v.join(crate::rotate::DATA_LOCK_FILE)).is_some()
            });
        if abandoned {
            let _ = fs::remove_dir_all(&root);
        }
    }
}
