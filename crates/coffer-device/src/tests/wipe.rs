//! Wipe: crypto-erase, then delete; a wiped vault says so; an interrupted
//! wipe is finished by the next access. The SIGKILL test lives with the CLI
//! (crates/coffer-cli/tests/wipe.rs).

use serde_json::json;

use super::{pass, scan, space, FAST};
use crate::*;

/// Everything the old vault key opened, kept by the test to try afterwards.
pub(super) struct OldKeys {
    pub(super) catalog: [u8; 32],
    pub(super) app_db: [u8; 32],
    pub(super) app_files: [u8; 32],
}

pub(super) fn filled() -> (tempfile::TempDir, Space, OldKeys) {
    let (dir, space) = space();
    let v = space
        .create_vault("acme", "alice", &pass("pw"), &FAST)
        .unwrap();
    v.add_app("cases", Capabilities::all()).unwrap();
    let app = v.app("cases").unwrap();
    let mut records = app.records().unwrap();
    for i in 0..20 {
        records
            .put("case", &format!("c{i}"), &json!({"n": i}), None)
            .unwrap();
    }
    let files = app.files().unwrap();
    for i in 0..5 {
        let data = vec![i as u8; 100_000];
        files
            .put(&format!("f{i}"), &mut &data[..], None, &mut |_| {})
            .unwrap();
    }
    let keys = OldKeys {
        catalog: *v.subkey(Purpose::Catalog).unwrap().expose_secret(),
        app_db: *v
            .subkey(Purpose::AppDatabase(&app.info().id))
            .unwrap()
            .expose_secret(),
        app_files: *v
            .subkey(Purpose::AppFiles(&app.info().id))
            .unwrap()
            .expose_secret(),
    };
    (dir, space, keys)
}

pub(super) fn subkey(bytes: [u8; 32]) -> Subkey {
    Subkey::from_bytes(bytes)
}

/// Tries every old key on every file left in the space: nothing may open.
pub(super) fn nothing_decrypts(space: &Space, keys: &OldKeys) -> usize {
    let mut files = 0;
    scan(space.root(), &mut |path, bytes| {
        files += 1;
        if bytes.is_empty() {
            // Lock files: they hold nothing (and an empty file would open as
            // a new, empty database under any key).
            return;
        }
        for key in [keys.catalog, keys.app_db] {
            let opened = store::database::open(path, &subkey(key), false);
            assert!(opened.is_err(), "{} opened as a database", path.display());
        }
        let reader = stream::ChunkReader::open(
            &subkey(keys.app_files),
            std::io::Cursor::new(bytes.to_vec()),
        )
        .and_then(|mut r| r.read_at(0, &mut [0u8; 16]));
        assert!(reader.is_err(), "{} decrypted as a blob", path.display());
    });
    files
}

#[test]
fn a_wiped_vault_reports_wiped_and_nothing_decrypts() {
    let (_d, space, keys) = filled();
    let vault = space.vault("acme").unwrap();
    // Before: the old keys do open the data (the check can fail).
    let db_dir = space.root().join("acme").join("data");
    let db = std::fs::read_dir(&db_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    store::database::open(&db, &subkey(keys.app_db), false).unwrap();

    vault.wipe().unwrap();
    assert!(matches!(
        vault.unlock(&Credential::Passphrase(&pass("pw"))),
        Err(Error::Wiped { .. })
    ));
    assert!(matches!(vault.info(), Err(Error::Wiped { .. })));
    let left = nothing_decrypts(&space, &keys);
    // What is left: the space lock, the vault lock and the 12-byte tombstone.
    assert!(left <= 3, "{left} files left");
    let header = std::fs::read(space.root().join("acme").join("header")).unwrap();
    assert_eq!(header.len(), 12);
    // Idempotent, and the name can be used again.
    vault.wipe().unwrap();
    space
        .create_vault("acme", "new", &pass("new pw"), &FAST)
        .unwrap();
    assert!(matches!(
        space
            .vault("acme")
            .unwrap()
            .unlock(&Credential::Passphrase(&pass("pw"))),
        Err(Error::WrongPassphrase)
    ));
}

#[test]
fn an_interrupted_wipe_is_finished_by_the_next_access() {
    let (_d, space, keys) = filled();
    // As if a wipe died right after recording its intent.
    std::fs::write(space.root().join("acme").join("WIPING"), b"").unwrap();
    let vault = space.vault("acme").unwrap();
    assert!(matches!(
        vault.unlock(&Credential::Passphrase(&pass("pw"))),
        Err(Error::Wiped { .. })
    ));
    assert!(!space.root().join("acme").join("WIPING").exists());
    nothing_decrypts(&space, &keys);
}
