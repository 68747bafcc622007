//! Failed passphrase attempts: a counter per vault, exponential back-off,
//! and the header's [`Lockout`] action once the maximum is reached.
//!
//! The counter lives in `attempts` beside the header (16 bytes: failures u64
//! LE ‖ time of the last failure, Unix seconds, i64 LE), written atomically.
//! It is not authenticated and cannot be: it must be written while the vault
//! is locked. So it stops someone guessing through coffer, not someone who
//! copies or edits the disk (docs/threat-model.md).

use std::path::Path;

use crate::error::Result;
use crate::fsio;
use crate::header::Lockout;

/// File name of the counter inside the vault directory.
pub(crate) const ATTEMPTS_FILE: &str = "attempts";
/// Lock that serializes passphrase attempts (held across the KDF).
pub(crate) const ATTEMPTS_LOCK_FILE: &str = ".attempts.lock";
/// Failures allowed before back-off starts.
const FREE_FAILURES: u64 = 3;
/// The longest back-off.
const MAX_BACKOFF_SECS: i64 = 3600;

/// The counter as read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Attempts {
    pub(crate) failures: u64,
    pub(crate) last_failure: i64,
}

impl Attempts {
    /// Reads the counter; a missing or malformed file counts as none.
    pub(crate) fn read(dir: &Path) -> Self {
        match std::fs::read(dir.join(ATTEMPTS_FILE)) {
            Ok(bytes) if bytes.len() == 16 => {
                let mut failures = [0u8; 8];
                let mut last = [0u8; 8];
                failures.copy_from_slice(&bytes[..8]);
                last.copy_from_slice(&bytes[8..]);
                Attempts {
                    failures: u64::from_le_bytes(failures),
                    last_failure: i64::from_le_bytes(last),
                }
            }
            _ => Attempts::default(),
        }
    }

    /// Seconds to wait after the last failure before the next attempt:
    /// nothing for the first three failures, then 1, 2, 4, … up to an hour.
    pub(crate) fn backoff_secs(&self) -> i64 {
        match self.failures.checked_sub(FREE_FAILURES) {
            None => 0,
            Some(n) => 1i64
                .checked_shl(n.min(62) as u32)
                .unwrap_or(MAX_BACKOFF_SECS)
                .min(MAX_BACKOFF_SECS),
        }
    }

    /// Seconds still to wait at `now`, if any.
    pub(crate) fn wait_at(&self, now: i64) -> Option<u64> {
        let until = self.last_failure.saturating_add(self.backoff_secs());
        // Never more than the back-off itself: a clock set back after a
        // failure must not turn the wait into days.
        (now < until).then(|| (until - now).min(self.backoff_secs()) as u64)
    }

    /// Records one more failure at `now`.
    pub(crate) fn record_failure(dir: &Path, now: i64) -> Result<Self> {
        let mut attempts = Attempts::read(dir);
        attempts.failures = attempts.failures.saturating_add(1);
        attempts.last_failure = now;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&attempts.failures.to_le_bytes());
        bytes[8..].copy_from_slice(&attempts.last_failure.to_le_bytes());
        fsio::write_atomic(&dir.join(ATTEMPTS_FILE), &bytes)?;
        Ok(attempts)
    }

    /// Clears the counter after a successful unlock.
    pub(crate) fn reset(dir: &Path) -> Result<()> {
        match std::fs::remove_file(dir.join(ATTEMPTS_FILE)) {
            Ok(()) => fsio::sync_dir(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(crate::error::Error::io("resetting failed attempts", dir, e)),
        }
    }

    /// Whether `lockout` has been reached.
    pub(crate) fn reached(&self, lockout: Lockout) -> bool {
        match lockout {
            Lockout::Off => false,
            Lockout::Lock(max) | Lockout::Wipe(max) => self.failures >= u64::from(max),
        }
    }
}
