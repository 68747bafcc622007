//! A secret read from a file that must be its owner's alone (no group or
//! other permission bits, as the master key's): the S3 credentials file,
//! the MQTT broker admin's password file.

use std::path::Path;

use zeroize::Zeroizing;

/// The file's text, zeroized on drop; or the problem, in words that
/// quote nothing of the file. `too_large` names what the file should be
/// (`"a password (4 KiB)"`) when it is over `max_len` bytes.
pub(crate) fn read(
    path: &Path,
    max_len: u64,
    too_large: &str,
) -> Result<Zeroizing<String>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "other users of this host can read it (mode {:04o}): `chmod 600` it",
                mode & 0o7777
            ));
        }
    }
    if meta.len() > max_len {
        return Err(format!("it is larger than {too_large}"));
    }
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| e.to_string())
}
