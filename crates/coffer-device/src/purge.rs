//! Purge: one app's data crypto-erased, the app itself kept, empty.
//!
//! An app's database key and file key are derived from the vault key and
//! the app's random id, which only the catalog holds. A purge gives the
//! app a new id (and new, empty files) and pushes the old id out of the
//! catalog's files; from then on nothing on the disk derives the old keys,
//! whatever a thief later learns of the passphrase. The old files are then
//! overwritten with random bytes and removed, as a second layer (on flash
//! storage an overwrite may not reach the old blocks: the erased key is
//! what the guarantee rests on, docs/threat-model.md).
//!
//! The device agent purges an app when the control plane says explicitly
//! that the device is revoked or that the app no longer syncs to it.

use std::fs;
use std::io::Write;
use std::path::Path;

use rand_core::{OsRng, RngCore};
use serde_json::json;

use crate::app::{AppInfo, FILES_DIR};
use crate::error::{Error, Result};
use crate::store::catalog::{DATA_DIR, PURGE_PREFIX};
use crate::vault::UnlockedVault;

/// Overwrites the whole regular file at `path` with random bytes, syncs
/// and removes it. A symbolic link is removed, never followed.
fn erase_file(path: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.file_type().is_file() {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io("purging", path, e))?;
        let mut left = meta.len();
        let mut noise = vec![0u8; 1 << 20];
        while left > 0 {
            let n = usize::try_from(left.min(noise.len() as u64)).unwrap_or(noise.len());
            OsRng.try_fill_bytes(&mut noise[..n])?;
            file.write_all(&noise[..n])
                .map_err(|e| Error::io("purging", path, e))?;
            left -= n as u64;
        }
        file.sync_all().map_err(|e| Error::io("purging", path, e))?;
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("purging", path, e)),
    }
}

/// Erases an app's old database file (and its journal files) and its
/// directory of blobs.
fn erase_app_files(vault_dir: &Path, db_file: &str) -> Result<()> {
    // The name comes from the catalog; refuse anything that is not one of
    // ours (a file name, no separators) rather than follow it elsewhere.
    if db_file.is_empty() || db_file.contains(['/', '\\']) || db_file.starts_with('.') {
        return Ok(());
    }
    let db = vault_dir.join(DATA_DIR).join(db_file);
    for suffix in ["", "-wal", "-shm", "-journal"] {
        erase_file(Path::new(&format!("{}{suffix}", db.display())))?;
    }
    let blobs = vault_dir
        .join(FILES_DIR)
        .join(db_file.trim_end_matches(".db"));
    if let Ok(entries) = fs::read_dir(&blobs) {
        for entry in entries.flatten() {
            erase_file(&entry.path())?;
        }
        let _ = fs::remove_dir(&blobs);
    }
    crate::fsio::sync_dir(&vault_dir.join(DATA_DIR))
}

impl UnlockedVault {
    /// Crypto-erases every record, file, key-value entry and table of the
    /// app `name`, and keeps the app (same name and capabilities) empty.
    /// Audited as `app_purged`.
    pub fn purge_app(&self, name: &str) -> Result<AppInfo> {
        self.finish_purges()?;
        let (old, new) = self.catalog()?.renew_app(name, &mut OsRng)?;
        erase_app_files(self.vault().path(), &old.db_file)?;
        self.catalog()?
            .set_setting(&format!("{PURGE_PREFIX}{}", old.db_file), None)?;
        self.record("app_purged", json!({"app": name}))?;
        Ok(new)
    }

    /// Finishes purges a crash interrupted: their old files erased.
    pub fn finish_purges(&self) -> Result<()> {
        let catalog = self.catalog()?;
        for key in catalog.setting_keys(PURGE_PREFIX)? {
            erase_app_files(self.vault().path(), &key[PURGE_PREFIX.len()..])?;
            catalog.set_setting(&key, None)?;
        }
        Ok(())
    }
}
