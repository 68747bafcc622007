//! Vault-key rotation: every store under the new key, retired slots shut
//! out, and every crash point leaves one whole key. The SIGKILL test lives
//! with the CLI (crates/coffer-cli/tests/rotate.rs).

use std::io::Read;

use serde_json::json;

use super::wipe::{filled, nothing_decrypts, OldKeys};
use super::{pass, Space, FAST};
use crate::rotate::{RotateOptions, StopAt, COMMITTED_DIR, STAGING_DIR};
use crate::*;

/// Everything the filled vault holds, read back through the stores.
fn contents(v: &UnlockedVault) -> (Vec<Record>, Vec<Vec<u8>>, Option<Vec<u8>>) {
    let app = v.app("cases").unwrap();
    let records = app.records().unwrap().list("case").unwrap();
    let files = app.files().unwrap();
    let blobs = (0..5)
        .map(|i| {
            let mut out = Vec::new();
            files
                .open_file(&format!("f{i}"))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            out
        })
        .collect();
    let kv = app.kv().unwrap().get("k").unwrap();
    (records, blobs, kv)
}

fn keys_of(v: &UnlockedVault) -> OldKeys {
    let app = v.app("cases").unwrap();
    OldKeys {
        catalog: *v.subkey(Purpose::Catalog).unwrap().expose_secret(),
        app_db: *v
            .subkey(Purpose::AppDatabase(&app.info().id))
            .unwrap()
            .expose_secret(),
        app_files: *v
            .subkey(Purpose::AppFiles(&app.info().id))
            .unwrap()
            .expose_secret(),
    }
}

/// The filled vault with a second user, a recovery slot and a kv entry.
fn shared_vault() -> (tempfile::TempDir, Space, RecoveryKey) {
    let (dir, space, _) = filled();
    let mut v = open(&space, "pw");
    v.add_passphrase_slot("bob", &pass("bob pw"), &FAST)
        .unwrap();
    let (_, recovery) = v.add_recovery_slot("recovery").unwrap();
    v.app("cases")
        .unwrap()
        .kv()
        .unwrap()
        .put("k", b"v")
        .unwrap();
    (dir, space, recovery)
}

fn open(space: &Space, passphrase: &str) -> UnlockedVault {
    space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::Passphrase(&pass(passphrase)))
        .unwrap()
}

fn alice() -> Passphrase {
    pass("pw")
}

#[test]
fn rotation_re_encrypts_everything_and_retires_the_slots_not_kept() {
    let (_d, space, old_recovery) = shared_vault();
    let mut v = open(&space, "pw");
    let before = contents(&v);
    let old_key = v.vault_key_bytes();
    let old_keys = keys_of(&v);
    let until = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    // Leftovers of a crashed import and export, under the old keys: the
    // rotation must not leave them behind.
    let dir = space.root().join("acme");
    std::fs::write(dir.join("data").join(".0123.export.tmp"), b"old").unwrap();
    std::fs::write(dir.join("data").join("feedface.db"), b"old").unwrap();
    std::fs::create_dir_all(dir.join("files").join("feedface")).unwrap();
    std::fs::write(dir.join("files").join("feedface").join("blob"), b"old").unwrap();
    let mut seen = Vec::new();
    let alice = alice();
    let report = v
        .rotate(
            &[("alice", Credential::Passphrase(&alice))],
            &RotateOptions::default()
                .with_recovery_slot("recovery")
                .with_reset_keys_until(until),
            &mut |p| seen.push(p),
        )
        .unwrap();
    assert_eq!(report.kept, ["alice"]);
    assert_eq!(report.retired, ["bob", "recovery"]);
    assert_eq!(report.files, 5);
    assert_eq!(report.databases, 2);
    let last = seen.last().unwrap();
    assert_eq!(last.done, last.total);
    assert!(last.total >= 500_000, "{last:?}");
    assert_ne!(v.vault_key_bytes(), old_key);
    // The handle goes on working under the new key.
    assert_eq!(contents(&v), before);
    drop(v);

    assert!(!dir.join(STAGING_DIR).exists() && !dir.join(COMMITTED_DIR).exists());
    assert!(!dir.join("data").join(".0123.export.tmp").exists());
    assert!(!dir.join("data").join("feedface.db").exists());
    assert!(!dir.join("files").join("feedface").exists());
    // Alice's passphrase opens the new key, with every byte intact.
    let v = open(&space, "pw");
    assert_eq!(contents(&v), before);
    drop(v);
    // The retired secrets open nothing.
    let vault = space.vault("acme").unwrap();
    assert!(matches!(
        vault.unlock(&Credential::Passphrase(&pass("bob pw"))),
        Err(Error::WrongPassphrase)
    ));
    assert!(matches!(
        vault.unlock(&Credential::RecoveryKey(&old_recovery)),
        Err(Error::WrongRecoveryKey)
    ));
    // Not a single file left in the vault decrypts with the old keys.
    nothing_decrypts(&space, &old_keys);
    // The new recovery key works; bob comes back through his reset key and
    // sets a new passphrase.
    let (_, recovery) = report.recovery_key.as_ref().unwrap();
    vault.unlock(&Credential::RecoveryKey(recovery)).unwrap();
    let (name, reset) = &report.reset_keys[0];
    assert_eq!(name, "bob");
    let mut as_bob = vault.unlock(&Credential::RecoveryKey(reset)).unwrap();
    as_bob
        .add_passphrase_slot("bob", &pass("bob new pw"), &FAST)
        .unwrap();
    assert_eq!(contents(&open(&space, "bob new pw")), before);
}

#[test]
fn a_wrong_secret_for_a_kept_slot_changes_nothing() {
    let (_d, space, _) = shared_vault();
    let mut v = open(&space, "pw");
    let old_key = v.vault_key_bytes();
    let header = std::fs::read(space.root().join("acme").join("header")).unwrap();
    let wrong = pass("not bob's");
    let alice = alice();
    let err = v
        .rotate(
            &[
                ("alice", Credential::Passphrase(&alice)),
                ("bob", Credential::Passphrase(&wrong)),
            ],
            &RotateOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, Error::WrongPassphrase), "{err:?}");
    assert_eq!(v.vault_key_bytes(), old_key);
    assert_eq!(
        std::fs::read(space.root().join("acme").join("header")).unwrap(),
        header
    );
    let err = v
        .rotate(&[], &RotateOptions::default(), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::NotPermitted(_)), "{err:?}");
}

/// Stops a rotation at `stop`, as a crash there would, and returns the old
/// and the new vault key.
fn interrupted(space: &Space, stop: StopAt) -> ([u8; 32], [u8; 32]) {
    let mut v = open(space, "pw");
    let old = v.vault_key_bytes();
    let alice = alice();
    let _ = v.rotate_until(
        &[("alice", Credential::Passphrase(&alice))],
        &RotateOptions::default(),
        &mut |_| {},
        stop,
    );
    let new = v.vault_key_bytes();
    // The handle is dropped without any clean-up, like a killed process.
    std::mem::forget(v);
    (old, new)
}

#[test]
fn a_crash_before_the_commit_rolls_back_to_the_old_key() {
    let (_d, space, _) = shared_vault();
    let before = contents(&open(&space, "pw"));
    let (old, new) = interrupted(&space, StopAt::AfterStaging);
    assert_eq!(old, new, "nothing committed");
    let dir = space.root().join("acme");
    assert!(dir.join(STAGING_DIR).exists());
    let v = open(&space, "pw");
    assert_eq!(v.vault_key_bytes(), old);
    assert!(!dir.join(STAGING_DIR).exists(), "the unlock discards it");
    assert_eq!(contents(&v), before);
    // Bob's slot was not retired: nothing was committed.
    drop(v);
    open(&space, "bob pw");
}

#[test]
fn a_crash_after_the_commit_rolls_forward_at_the_next_access() {
    let (_d, space, _) = shared_vault();
    let before = contents(&open(&space, "pw"));
    // After the commit, and after each of several renames (there are seven
    // files in all: the catalog, one database, five blobs).
    for stop in [
        StopAt::AfterCommit,
        StopAt::AfterRenames(1),
        StopAt::AfterRenames(4),
        StopAt::AfterRenames(6),
    ] {
        let (old, new) = interrupted(&space, stop);
        assert_ne!(old, new);
        let dir = space.root().join("acme");
        assert!(dir.join(COMMITTED_DIR).exists(), "{stop:?}");
        // Even reading the public part finishes it: no key is needed.
        space.vault("acme").unwrap().info().unwrap();
        assert!(!dir.join(COMMITTED_DIR).exists(), "{stop:?}");
        let v = open(&space, "pw");
        assert_eq!(v.vault_key_bytes(), new, "{stop:?}");
        assert_eq!(contents(&v), before, "{stop:?}");
    }
    assert!(matches!(
        space
            .vault("acme")
            .unwrap()
            .unlock(&Credential::Passphrase(&pass("bob pw"))),
        Err(Error::WrongPassphrase)
    ));
}

#[test]
fn a_wipe_during_a_committed_rotation_erases_the_new_key_too() {
    let (_d, space, _) = shared_vault();
    let v = open(&space, "pw");
    let (vault_id, app_id) = (v.vault_id(), v.app("cases").unwrap().info().id.clone());
    drop(v);
    let (_, new) = interrupted(&space, StopAt::AfterCommit);
    let vault = space.vault("acme").unwrap();
    vault.wipe().unwrap();
    assert!(matches!(
        vault.unlock(&Credential::Passphrase(&alice())),
        Err(Error::Wiped { .. })
    ));
    // Neither the live header nor the committed one survives, nor any file
    // that the new keys would decrypt.
    let new = VaultKey(
        crate::secret::Key256::fill_with(|out| {
            out.copy_from_slice(&new);
            Ok::<(), ()>(())
        })
        .unwrap(),
    );
    let derive = |p| *crate::subkey::derive(&new, &vault_id, p).expose_secret();
    let new_keys = OldKeys {
        catalog: derive(Purpose::Catalog),
        app_db: derive(Purpose::AppDatabase(&app_id)),
        app_files: derive(Purpose::AppFiles(&app_id)),
    };
    let left = nothing_decrypts(&space, &new_keys);
    assert!(left <= 3, "{left} files left");
}

#[test]
fn a_temporary_key_cannot_rotate() {
    let (_d, space, _) = shared_vault();
    let mut v = open(&space, "pw");
    let until = std::time::SystemTime::now() + std::time::Duration::from_secs(600);
    let (_, temp) = v.add_temporary_slot("visitor", until, false).unwrap();
    drop(v);
    let mut as_visitor = space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::RecoveryKey(&temp))
        .unwrap();
    let err = as_visitor
        .rotate(
            &[("visitor", Credential::RecoveryKey(&temp))],
            &RotateOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, Error::NotPermitted(_)), "{err:?}");
}

#[test]
fn a_vault_open_elsewhere_makes_rotation_wait_then_refuse() {
    let (_d, space, _) = shared_vault();
    let other = open(&space, "bob pw");
    let mut v = open(&space, "pw");
    let alice = alice();
    let err = v
        .rotate(
            &[("alice", Credential::Passphrase(&alice))],
            &RotateOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, Error::Busy), "{err:?}");
    drop(other);
    // Once the other holder is gone it goes through, and this handle can
    // still be used meanwhile.
    v.app("cases")
        .unwrap()
        .records()
        .unwrap()
        .put("case", "late", &json!({"n": 99}), None)
        .unwrap();
    v.rotate(
        &[("alice", Credential::Passphrase(&alice))],
        &RotateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    drop(v);
    let v = open(&space, "pw");
    assert!(v
        .app("cases")
        .unwrap()
        .records()
        .unwrap()
        .get("case", "late")
        .unwrap()
        .is_some());
}
