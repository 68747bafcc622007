//! Sessions: explicit lock, idle auto-lock on time, ephemeral vaults that
//! vanish, and the process hardening an unlock switches on.

use std::time::Duration;

use serde_json::json;

use super::{pass, space, FAST};
use crate::rotate::RotateOptions;
use crate::*;

fn two_handles() -> (tempfile::TempDir, Space) {
    let (dir, space) = space();
    let v = space
        .create_vault("acme", "alice", &pass("pw"), &FAST)
        .unwrap();
    v.add_app("notes", Capabilities::all()).unwrap();
    (dir, space)
}

fn open(space: &Space) -> UnlockedVault {
    space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::Passphrase(&pass("pw")))
        .unwrap()
}

/// Rotates through a second handle: possible only once no other session of
/// the vault holds its data lock (else Busy after the lock wait).
fn rotate_elsewhere(space: &Space) -> Result<()> {
    let mut other = open(space);
    let p = pass("pw");
    other
        .rotate(
            &[("alice", Credential::Passphrase(&p))],
            &RotateOptions::default(),
            &mut |_| {},
        )
        .map(|_| ())
}

#[test]
fn lock_forgets_the_key_and_refuses_everything_after() {
    let (_d, space) = two_handles();
    let mut v = open(&space);
    assert!(!v.is_locked());
    assert_ne!(v.vault_key_bytes(), [0; 32]);
    v.lock();
    assert!(v.is_locked());
    assert_eq!(v.vault_key_bytes(), [0; 32], "the key is gone");
    assert!(matches!(
        v.subkey(Purpose::Catalog),
        Err(Error::SessionLocked)
    ));
    assert!(matches!(v.app("notes"), Err(Error::SessionLocked)));
    assert!(matches!(v.audit(), Err(Error::SessionLocked)));
    assert!(matches!(
        v.add_passphrase_slot("bob", &pass("bob"), &FAST),
        Err(Error::SessionLocked)
    ));
    // Its data lock went with it: a rotation elsewhere need not wait.
    rotate_elsewhere(&space).unwrap();
    // Locking twice is harmless.
    v.lock();
}

#[test]
fn an_idle_session_locks_on_time_without_being_called() {
    let (_d, space) = two_handles();
    let v = open(&space);
    v.set_idle_timeout(Some(Duration::from_millis(300)));
    // Activity keeps it open.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(100));
        v.app("notes").unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Only the watchdog can have released the data lock: nothing called in.
    rotate_elsewhere(&space).unwrap();
    assert!(v.is_locked());
    assert!(matches!(v.app("notes"), Err(Error::SessionLocked)));
}

#[test]
fn no_timeout_means_no_auto_lock() {
    let (_d, space) = two_handles();
    let v = open(&space);
    v.set_idle_timeout(Some(Duration::from_millis(100)));
    v.set_idle_timeout(None);
    std::thread::sleep(Duration::from_millis(400));
    assert!(!v.is_locked());
    v.app("notes").unwrap();
}

#[test]
fn an_ephemeral_vault_lives_in_its_directory_and_vanishes_on_lock() {
    let ram = tempfile::tempdir().unwrap();
    let v = Space::ephemeral_vault_in(ram.path(), "scratch").unwrap();
    v.add_app("notes", Capabilities::all()).unwrap();
    let app = v.app("notes").unwrap();
    app.records()
        .unwrap()
        .put("case", "c1", &json!({"name": "x"}), None)
        .unwrap();
    app.files()
        .unwrap()
        .put("f", &mut &b"hello"[..], None, &mut |_| {})
        .unwrap();
    let root = v.vault().path().parent().unwrap().to_path_buf();
    assert!(root.starts_with(ram.path()) && root.exists());
    drop(app);
    v.lock();
    assert!(!root.exists(), "the vault's files are gone");
    assert!(matches!(v.app("notes"), Err(Error::SessionLocked)));
    assert_eq!(std::fs::read_dir(ram.path()).unwrap().count(), 0);
}

#[cfg(target_os = "linux")]
#[test]
fn an_ephemeral_vault_uses_ram_and_vanishes_on_drop() {
    let v = Space::ephemeral_vault("scratch").unwrap();
    let dir = v.vault().path().to_path_buf();
    assert!(dir.starts_with("/dev/shm"), "{}", dir.display());
    v.add_app("notes", Capabilities::all()).unwrap();
    v.app("notes")
        .unwrap()
        .kv()
        .unwrap()
        .put("k", b"v")
        .unwrap();
    assert!(dir.exists());
    drop(v);
    assert!(!dir.parent().unwrap().exists());
}

#[cfg(target_os = "linux")]
#[test]
fn an_unlock_hardens_the_process_and_pins_its_keys() {
    let (_d, space) = two_handles();
    let _v = open(&space);
    let status = hardening::status();
    assert!(status.core_dumps_disabled, "{status:?}");
    assert!(status.not_dumpable, "{status:?}");
    assert!(status.keys_locked > 0, "{status:?}");
    assert_eq!(status.tracer_pid, None);
    // No tracer here, so refusing one changes nothing.
    space
        .vault("acme")
        .unwrap()
        .refuse_under_debugger(true)
        .unlock(&Credential::Passphrase(&pass("pw")))
        .unwrap();
}

#[test]
fn an_ephemeral_vault_abandoned_by_a_dead_process_is_cleaned_up() {
    let ram = tempfile::tempdir().unwrap();
    let live = Space::ephemeral_vault_in(ram.path(), "live").unwrap();
    let dead = Space::ephemeral_vault_in(ram.path(), "dead").unwrap();
    let dead_root = dead.vault().path().parent().unwrap().to_path_buf();
    // As if its process were killed: nothing runs the session's end, and the
    // kernel drops its locks (here: the lock file's descriptor is closed by
    // releasing the data lock without deleting anything).
    dead.session_release_for_test();
    std::mem::forget(dead);
    let live_root = live.vault().path().parent().unwrap().to_path_buf();
    let _third = Space::ephemeral_vault_in(ram.path(), "third").unwrap();
    assert!(!dead_root.exists(), "the abandoned vault is gone");
    assert!(live_root.exists(), "the live one is kept");
}

/// An unlock agent's key opens the vault only while the very slot that
/// opened it is there, and not once failed attempts locked the vault.
#[test]
fn a_session_key_is_its_slots_and_yields_to_the_lockout() {
    let (_d, space) = space();
    let mut v = space
        .create_vault("acme", "alice", &pass("alice pw"), &FAST)
        .unwrap();
    v.add_passphrase_slot("bob", &pass("bob pw"), &FAST)
        .unwrap();
    drop(v);
    let vault = space.vault("acme").unwrap();
    let bob = vault
        .unlock(&Credential::Passphrase(&pass("bob pw")))
        .unwrap();
    let key = bob.session_key().unwrap();
    assert_eq!(key.slot(), 1);
    drop(bob);
    assert!(vault.reopen(&key).is_ok());
    assert!(!format!("{key:?}").contains(&hex::encode(key.expose_secret())));

    // Bob's slot removed, carol's added at the same index: the session is
    // bob's, so it is over.
    let mut alice = vault
        .unlock(&Credential::Passphrase(&pass("alice pw")))
        .unwrap();
    alice.remove_slot("bob").unwrap();
    let carol = alice
        .add_passphrase_slot("carol", &pass("carol pw"), &FAST)
        .unwrap();
    assert_eq!(carol.index, 1, "the index is reused");
    drop(alice);
    assert!(matches!(vault.reopen(&key), Err(Error::SessionEnded)));

    // Alice's session, then two wrong guesses on a vault that locks after
    // two: the session is locked out with everyone else.
    let mut alice = vault
        .unlock(&Credential::Passphrase(&pass("alice pw")))
        .unwrap();
    alice.set_lockout(Lockout::Lock(2)).unwrap();
    let key = alice.session_key().unwrap();
    drop(alice);
    assert!(vault.reopen(&key).is_ok());
    for _ in 0..2 {
        let _ = vault.unlock(&Credential::Passphrase(&pass("a wrong guess")));
    }
    assert!(matches!(vault.reopen(&key), Err(Error::LockedOut)));
    assert!(SessionKey::from_parts([0; 32], 16, [0; 32]).is_none());
}
