//! `coffer files get --out` interrupted by real signals: the partial file of
//! plaintext it decrypts into is removed on SIGINT, SIGTERM and SIGHUP, and
//! what a SIGKILL leaves is swept by a later get into the same directory,
//! never a live run's.
//!
//! The copy is slowed down with `COFFER_TEST_WRITE_DELAY_MS` (honoured by
//! debug builds only) so that a signal reliably lands half way.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// 32 blocks of the copy's 256 KiB.
const FILE_LEN: usize = 8 << 20;

/// With 32 blocks, a get that is not interrupted takes about 6 s.
const SLOW_MS: &str = "200";

struct Vault {
    dir: tempfile::TempDir,
}

impl Vault {
    /// A vault with app `cam` holding `clip.bin` (FILE_LEN bytes).
    fn new() -> Self {
        let vault = Vault {
            dir: tempfile::tempdir().unwrap(),
        };
        let input = vault.dir.path().join("clip.bin");
        let bytes: Vec<u8> = (0..FILE_LEN).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&input, bytes).unwrap();
        for args in [
            vec!["init", "--kdf-time-ms", "0"],
            vec!["app", "add", "cam", "--allow", "files"],
            vec!["files", "put", "cam", "clip.bin", input.to_str().unwrap()],
        ] {
            let status = vault.coffer().args(args).status().unwrap();
            assert!(status.success());
        }
        vault
    }

    fn coffer(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.env("COFFER_SPACE", self.dir.path().join("space"))
            .env("COFFER_PASSPHRASE", "pw for interrupted gets")
            .env_remove("COFFER_VAULT")
            .env_remove("COFFER_TEST_WRITE_DELAY_MS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// An output directory of its own.
    fn out_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    /// Starts a slowed-down `files get --out target` and returns once its
    /// partial file (a new hidden file beside the target) has plaintext in
    /// it.
    fn start_slow_get(&self, target: &Path) -> (Child, PathBuf) {
        let dir = target.parent().unwrap();
        let before = hidden_files(dir);
        let mut child = self
            .coffer()
            .args(["files", "get", "cam", "clip.bin", "--out"])
            .arg(target)
            .env("COFFER_TEST_WRITE_DELAY_MS", SLOW_MS)
            .spawn()
            .unwrap();
        let started = Instant::now();
        loop {
            let partial = hidden_files(dir)
                .into_iter()
                .find(|p| !before.contains(p) && std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
            if let Some(partial) = partial {
                return (child, partial);
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the get ended ({status}) before it could be interrupted");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no partial file appeared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The hidden files in `dir`.
fn hidden_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    found.sort();
    found
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn send(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait(child: &mut Child) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the get did not end"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigint_sigterm_and_sighup_remove_the_partial_plaintext() {
    let vault = Vault::new();
    // The process dies of the signal it got (a shell shows 128 + it).
    for (signal, number) in [("INT", 2), ("TERM", 15), ("HUP", 1)] {
        let dir = vault.out_dir(&format!("out-{signal}"));
        let target = dir.join("clip.bin");
        let (mut child, partial) = vault.start_slow_get(&target);
        send(&child, signal);
        let status = wait(&mut child);
        assert_eq!(status.signal(), Some(number), "SIG{signal}: {status}");
        assert!(!partial.exists(), "SIG{signal} left {}", partial.display());
        assert!(entries(&dir).is_empty(), "SIG{signal}: {:?}", entries(&dir));
    }
}

#[test]
fn a_sigkill_leftover_is_swept_by_a_later_get_but_a_live_get_is_left_alone() {
    let vault = Vault::new();
    let dir = vault.out_dir("out");

    // SIGKILL: nothing can run, the partial plaintext stays.
    let (mut killed, leftover) = vault.start_slow_get(&dir.join("killed.bin"));
    send(&killed, "KILL");
    assert_eq!(wait(&mut killed).signal(), Some(9));
    assert!(leftover.exists());
    let name = leftover.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with(&format!(".killed.bin.coffer-partial-{}-", killed.id())),
        "{name}"
    );

    // Its writer is gone, but it was written to a moment ago (a writer in
    // another pid namespace would look the same): kept for now.
    let status = vault
        .coffer()
        .args(["files", "get", "cam", "clip.bin", "--out"])
        .arg(dir.join("first.bin"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(leftover.exists());

    // Untouched for a while: the next get sweeps it, while a live run's
    // partial file in the same directory stays.
    std::fs::File::options()
        .write(true)
        .open(&leftover)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(120))
        .unwrap();
    let (mut live, live_partial) = vault.start_slow_get(&dir.join("live.bin"));
    let status = vault
        .coffer()
        .args(["files", "get", "cam", "clip.bin", "--out"])
        .arg(dir.join("second.bin"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!leftover.exists(), "the leftover was not swept");
    assert!(live_partial.exists(), "a live get's partial file was swept");
    assert_eq!(
        std::fs::metadata(dir.join("second.bin")).unwrap().len(),
        FILE_LEN as u64
    );

    send(&live, "TERM");
    assert_eq!(wait(&mut live).signal(), Some(15));
    assert_eq!(entries(&dir), ["first.bin", "second.bin"]);
}
