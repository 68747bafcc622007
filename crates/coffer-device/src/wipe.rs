//! Wipe: crypto-erase a vault, then delete its files.
//!
//! Order, each step durable before the next:
//! 1. create `WIPING` in the vault directory: from now on every access to
//!    the vault finishes the wipe before anything else;
//! 2. overwrite the header in place with random bytes and fsync (and any
//!    copy of it: a crashed header write's, a rotation's staged header):
//!    every key slot is gone, so nothing the vault holds can be decrypted any more;
//! 3. delete the catalog, every app database and every blob;
//! 4. write the 12-byte tombstone header (magic, version, flags = WIPED) and
//!    remove `WIPING`.
//!
//! A crash after step 1 is finished by the next access; a crash before it
//! leaves the vault as it was. A wiped vault reports [`Error::Wiped`], not
//! "corrupt". docs/threat-model.md states what overwriting in place can and
//! cannot promise on flash storage.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use rand_core::{OsRng, RngCore};

use crate::error::{Error, Result};
use crate::fsio::{self, FileLock};
use crate::header::{FORMAT_VERSION, MAGIC};
use crate::rotate::{COMMITTED_DIR, STAGING_DIR};
use crate::space::{HEADER_FILE, LOCK_FILE};

/// The marker of a wipe in progress.
pub(crate) const WIPING_FILE: &str = "WIPING";
/// The header flag of a tombstone.
pub(crate) const FLAG_WIPED: u16 = 1;
/// Length of the tombstone header.
pub(crate) const TOMBSTONE_LEN: usize = 12;

/// The tombstone header of a wiped vault.
pub(crate) fn tombstone() -> [u8; TOMBSTONE_LEN] {
    let mut t = [0u8; TOMBSTONE_LEN];
    t[..8].copy_from_slice(&MAGIC);
    t[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    t[10..12].copy_from_slice(&FLAG_WIPED.to_le_bytes());
    t
}

/// Whether `bytes` is a tombstone header.
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    bytes == tombstone()
}

/// Whether a wipe of the vault in `dir` was started and not finished.
pub(crate) fn in_progress(dir: &Path) -> bool {
    dir.join(WIPING_FILE).exists()
}

/// The temporary copies of a header that crashed writes left in `dir`.
pub(crate) fn header_temporaries(dir: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".header."))
        .map(|e| e.path())
        .collect()
}

/// Overwrites a regular file in place with random bytes and syncs it. A
/// symbolic link is not followed (it will just be deleted): a crafted link
/// must not make coffer overwrite a file outside the vault.
pub(crate) fn overwrite_with_noise(path: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_file() {
        return Ok(());
    }
    // A header is at most 67 KiB; a larger file is not one of ours to erase
    // byte by byte, and its first part holds any slots it could have.
    let len = meta.len().min(crate::header::MAX_HEADER_LEN as u64 + 1) as usize;
    let mut noise = vec![0u8; len];
    OsRng.try_fill_bytes(&mut noise)?;
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("wiping", path, e))?;
    file.write_all(&noise)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("wiping", path, e))
}

/// Wipes the vault in `dir` (see the module documentation). Idempotent: a
/// wiped vault stays wiped, and an interrupted wipe is finished.
pub(crate) fn wipe(dir: &Path) -> Result<()> {
    let _lock = FileLock::acquire(&dir.join(LOCK_FILE))?;
    let header = dir.join(HEADER_FILE);
    let marker = dir.join(WIPING_FILE);

    // 1. The intent, durable.
    fsio::create_private_file(&marker)?;
    fs::File::open(&marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("wiping", &marker, e))?;
    fsio::sync_dir(dir)?;

    // 2. Crypto-erase: random bytes over the header and over any temporary
    //    copy of it a crashed header write left behind, in place.
    //    A rotation's staged or committed header is a live copy too, and so
    //    are the temporary files a crashed write of any of them left.
    let mut copies = Vec::new();
    for d in [
        dir.to_path_buf(),
        dir.join(STAGING_DIR),
        dir.join(COMMITTED_DIR),
    ] {
        copies.push(d.join(HEADER_FILE));
        copies.extend(header_temporaries(&d));
    }
    for path in copies {
        overwrite_with_noise(&path)?;
    }

    // 3. Everything else the vault holds (all of it undecryptable by now).
    for entry in fs::read_dir(dir).map_err(|e| Error::io("wiping", dir, e))? {
        let entry = entry.map_err(|e| Error::io("wiping", dir, e))?;
        let name = entry.file_name();
        if name == HEADER_FILE || name == WIPING_FILE || name == LOCK_FILE {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io("wiping", &path, e))?;
    }
    fsio::sync_dir(dir)?;

    // 4. The tombstone, then the intent is fulfilled.
    fsio::write_atomic(&header, &tombstone())?;
    fs::remove_file(&marker).map_err(|e| Error::io("wiping", &marker, e))?;
    fsio::sync_dir(dir)
}
