//! Decrypted data on its way to a file.
//!
//! `coffer files get --out PATH` decrypts into a hidden partial file beside
//! PATH and renames it over PATH once it is whole, so a failed decryption
//! never leaves a partial file under the name. The partial file holds
//! plaintext, so nothing may leave it behind either:
//!
//! - its name says what it is and which process writes it,
//!   `.{target}.coffer-partial-{pid}-{16 hex digits}`, and it is created
//!   0600, never over an existing file;
//! - while it is written it is in a process-wide list, and SIGINT, SIGTERM
//!   and SIGHUP remove every file on that list before the process dies of
//!   the same signal (a shell reports 130, 143 or 129);
//! - a SIGKILL, a crash or a power cut leaves it, so every new partial file
//!   first sweeps the leftovers of earlier runs in its directory (see
//!   [`is_leftover`] for which ones: never another live run's).

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use rand_core::{OsRng, RngCore};

/// What marks a partial file's name, between the target's name and the pid.
const MARKER: &str = ".coffer-partial-";

/// Hex digits of randomness at the end of a partial file's name.
const RANDOM_DIGITS: usize = 16;

/// How much of the target's name (in bytes) the partial file's name repeats:
/// enough to recognise it, short enough for the 255-byte limit on names.
const NAME_KEPT: usize = 64;

/// A partial file whose writer is gone is a leftover once it has not been
/// written to for this long: a live writer writes continuously, and a writer
/// in another pid namespace (a container sharing the directory) is not seen.
const DEAD_WRITER_GRACE: Duration = Duration::from_secs(30);

/// A partial file not written to for this long is a leftover whatever runs
/// under its pid (pids are reused).
const ABANDONED_AFTER: Duration = Duration::from_secs(60 * 60);

/// The partial files this process is writing right now.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    // The list stays consistent even if a holder panicked: each change to
    // it is a single push or retain.
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A plaintext file being written beside its target: removed when dropped
/// unless [`PartialFile::persist`] renamed it, and on SIGINT, SIGTERM and
/// SIGHUP.
#[derive(Debug)]
pub struct PartialFile {
    path: PathBuf,
    file: File,
    persisted: bool,
}

impl PartialFile {
    /// Creates a new partial file in `target`'s directory, after sweeping
    /// that directory's leftovers.
    pub fn beside(target: &Path) -> io::Result<Self> {
        install_signal_cleanup()?;
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let path = dir.join(format!(
            ".{}{MARKER}{}-{}",
            shortened_name(target),
            std::process::id(),
            random_hex()?
        ));
        let file = {
            // Created and listed under the lock: a signal finds it listed
            // or not yet created.
            let mut live = live();
            let file = private_new_file(&path)?;
            live.push(path.clone());
            file
        };
        let partial = PartialFile {
            path,
            file,
            persisted: false,
        };
        sweep(dir, &partial);
        Ok(partial)
    }

    /// The file, to write the plaintext to.
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Renames the whole file to `target`.
    pub fn persist(mut self, target: &Path) -> io::Result<()> {
        // Under the lock: a signal either removes the partial file before
        // the rename (which then fails) or finds it already renamed.
        let mut live = live();
        fs::rename(&self.path, target)?;
        live.retain(|p| p != &self.path);
        self.persisted = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.persisted {
            let mut live = live();
            let _ = fs::remove_file(&self.path);
            live.retain(|p| p != &self.path);
        }
    }
}

#[cfg(unix)]
fn private_new_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// The start of the target's file name, for the partial file's name.
fn shortened_name(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut end = name.len().min(NAME_KEPT);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; RANDOM_DIGITS / 2];
    OsRng.try_fill_bytes(&mut bytes).map_err(io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The writer's pid, if `name` is a partial file's name.
fn writer_pid(name: &str) -> Option<u32> {
    let (_, tail) = name.strip_prefix('.')?.rsplit_once(MARKER)?;
    let (pid, random) = tail.split_once('-')?;
    let digits = |s: &str, hex: bool| {
        !s.is_empty()
            && s.bytes().all(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
    };
    if random.len() != RANDOM_DIGITS || !digits(random, true) || !digits(pid, false) {
        return None;
    }
    pid.parse().ok()
}

/// Removes the leftovers of earlier runs in `dir`: partial files of this
/// user that are not `ours` and pass [`is_leftover`]. Best effort: what
/// cannot be removed stays for the next run.
fn sweep(dir: &Path, ours: &PartialFile) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let our_meta = ours.file.metadata().ok();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(writer_pid) else {
            continue;
        };
        let path = entry.path();
        if live().contains(&path) {
            continue;
        }
        // Not followed: a symlink or directory of that name is not ours.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() && same_owner(&meta, our_meta.as_ref()) && is_leftover(pid, &meta) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Whether the file belongs to the user this process creates files as: only
/// one's own partial files are swept (in a shared directory another user's
/// writer may be invisible here, e.g. under `hidepid`).
#[cfg(unix)]
fn same_owner(meta: &Metadata, ours: Option<&Metadata>) -> bool {
    use std::os::unix::fs::MetadataExt;
    ours.is_some_and(|o| o.uid() == meta.uid())
}

#[cfg(not(unix))]
fn same_owner(_meta: &Metadata, _ours: Option<&Metadata>) -> bool {
    true
}

/// The sweep rule: a partial file (not on this process's list) is a
/// leftover if it has not been written to for [`ABANDONED_AFTER`], or for
/// [`DEAD_WRITER_GRACE`] while no process runs under its pid (or the pid is
/// this process's own, which lists every file it writes).
fn is_leftover(pid: u32, meta: &Metadata) -> bool {
    let idle = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO);
    if idle >= ABANDONED_AFTER {
        return true;
    }
    let writer_gone = pid == std::process::id() || process_running(pid) == Some(false);
    writer_gone && idle >= DEAD_WRITER_GRACE
}

/// Whether a process runs under `pid`; `None` where this cannot be told
/// without asking the kernel directly.
fn process_running(pid: u32) -> Option<bool> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    // A zombie (killed, not yet reaped) writes nothing any more.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => Some(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_none_or(|state| state != "Z" && state != "X"),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(false),
        Err(_) => None,
    }
}

/// Installs, once, the thread that removes the listed partial files on
/// SIGINT, SIGTERM or SIGHUP and then lets the signal end the process as it
/// would have without a handler.
#[cfg(unix)]
fn install_signal_cleanup() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("coffer-partial-cleanup".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    // Held until the end: no new partial file after this.
                    let live = live();
                    for path in live.iter() {
                        let _ = fs::remove_file(path);
                    }
                    // Die of the signal, so that a shell or a supervisor
                    // sees an interrupted run (and a shell script stops).
                    let _ = signal_hook::low_level::emulate_default_handler(signal);
                    signal_hook::low_level::exit(128 + signal);
                }
            })
            .map(drop)
            .map_err(|e| e.to_string())
    });
    installed
        .clone()
        .map_err(|e| io::Error::other(format!("cannot watch for signals: {e}")))
}

#[cfg(not(unix))]
fn install_signal_cleanup() -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn partial_names_are_recognised_exactly() {
        assert_eq!(
            writer_pid(".clip.mp4.coffer-partial-4242-0123456789abcdef"),
            Some(4242)
        );
        assert_eq!(writer_pid("..coffer-partial-7-0123456789abcdef"), Some(7));
        // A user's own files that merely look alike are never swept.
        for name in [
            "clip.mp4.coffer-partial-4242-0123456789abcdef",
            ".clip.mp4.coffer-partial-4242-0123456789abcde",
            ".clip.mp4.coffer-partial-4242-0123456789abcdeg",
            ".clip.mp4.coffer-partial--0123456789abcdef",
            ".clip.mp4.coffer-partial-42a-0123456789abcdef",
            ".clip.mp4.coffer-partial-4242-0123456789abcdef.bak",
            ".clip.mp4.tmpAbC123",
        ] {
            assert_eq!(writer_pid(name), None, "{name}");
        }
    }

    #[test]
    fn a_partial_name_fits_and_names_its_target() {
        let long = "é".repeat(200);
        let name = shortened_name(Path::new(&format!("/x/{long}")));
        assert!(name.len() <= NAME_KEPT && long.starts_with(&name));
        let dir = tempfile::tempdir().unwrap();
        let partial = PartialFile::beside(&dir.path().join(&long)).unwrap();
        let file_name = partial.path.file_name().unwrap().to_str().unwrap();
        assert_eq!(writer_pid(file_name), Some(std::process::id()));
        drop(partial);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
