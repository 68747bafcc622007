//! App export and import: round trip, wrong passphrase, tampering and
//! truncation leave nothing behind.

use std::io::Cursor;

use serde_json::json;

use super::{pass, scan, space, FAST};
use crate::*;

const ARCHIVE_KDF: KdfParams = KdfParams::Argon2id {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

/// A vault with app "cases" holding data in every store.
fn filled() -> (tempfile::TempDir, Space, UnlockedVault) {
    let (dir, space) = space();
    let v = space
        .create_vault("acme", "alice", &pass("pw"), &FAST)
        .unwrap();
    v.add_app("cases", Capabilities::all()).unwrap();
    let app = v.app("cases").unwrap();
    app.database()
        .unwrap()
        .execute_batch(
            "CREATE TABLE visit (village TEXT); INSERT INTO visit VALUES ('marker-village');",
        )
        .unwrap();
    app.kv()
        .unwrap()
        .put("marker-key", b"marker-value")
        .unwrap();
    app.records()
        .unwrap()
        .put("case", "c1", &json!({"name": "marker-name"}), None)
        .unwrap();
    let photo: Vec<u8> = (0..150_000u32).map(|i| (i % 249) as u8).collect();
    let files = app.files().unwrap();
    files
        .put(
            "marker-photo.jpg",
            &mut &photo[..],
            Some("image/jpeg"),
            &mut |_| {},
        )
        .unwrap();
    files
        .put("empty", &mut &b""[..], None, &mut |_| {})
        .unwrap();
    (dir, space, v)
}

fn export(v: &UnlockedVault, passphrase: &str) -> Vec<u8> {
    let mut out = Vec::new();
    v.app("cases")
        .unwrap()
        .export(&mut out, &pass(passphrase), &ARCHIVE_KDF, &mut |_| {})
        .unwrap();
    out
}

fn other_vault() -> (tempfile::TempDir, Space, UnlockedVault) {
    let (dir, space) = space();
    let v = space
        .create_vault("elsewhere", "bob", &pass("pw2"), &FAST)
        .unwrap();
    (dir, space, v)
}

fn vault_files(space: &Space, vault: &str) -> Vec<String> {
    let mut out = Vec::new();
    let root = space.root().join(vault);
    scan(&root, &mut |p, _| {
        out.push(p.strip_prefix(&root).unwrap().display().to_string())
    });
    out.sort();
    out
}

#[test]
fn export_then_import_elsewhere_round_trips_every_store() {
    let (_d, _s, v) = filled();
    let archive = export(&v, "archive pw");
    let (_d2, _s2, other) = other_vault();
    let info = other
        .import_app(
            Cursor::new(&archive),
            &pass("archive pw"),
            None,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(info.name, "cases");
    assert_eq!(info.capabilities, Capabilities::all());
    let app = other.app("cases").unwrap();
    let village: String = app
        .database()
        .unwrap()
        .query_row("SELECT village FROM visit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(village, "marker-village");
    assert_eq!(
        app.kv().unwrap().get("marker-key").unwrap().unwrap(),
        b"marker-value"
    );
    let record = app.records().unwrap().get("case", "c1").unwrap().unwrap();
    assert_eq!(
        (record.body, record.version),
        (json!({"name": "marker-name"}), 1)
    );
    let files = app.files().unwrap();
    let listed: Vec<_> = files
        .list()
        .unwrap()
        .into_iter()
        .map(|f| (f.name, f.size, f.content_type))
        .collect();
    assert_eq!(
        listed,
        [
            ("empty".into(), 0, None),
            (
                "marker-photo.jpg".into(),
                150_000,
                Some("image/jpeg".into())
            )
        ]
    );
    let mut photo = Vec::new();
    std::io::Read::read_to_end(
        &mut files.open_file("marker-photo.jpg").unwrap(),
        &mut photo,
    )
    .unwrap();
    assert_eq!(
        photo,
        (0..150_000u32).map(|i| (i % 249) as u8).collect::<Vec<_>>()
    );
    // A second copy under another name, in the same vault.
    let copy = other
        .import_app(
            Cursor::new(&archive),
            &pass("archive pw"),
            Some("cases-copy"),
            &mut |_| {},
        )
        .unwrap();
    assert_ne!(copy.id, info.id, "new keys for the copy");
    assert!(matches!(
        other.import_app(
            Cursor::new(&archive),
            &pass("archive pw"),
            None,
            &mut |_| {}
        ),
        Err(Error::AppExists { .. })
    ));
}

#[test]
fn the_archive_shows_no_marker() {
    let (_d, _s, v) = filled();
    let archive = export(&v, "archive pw");
    for marker in [
        "marker-village",
        "marker-key",
        "marker-value",
        "marker-name",
        "marker-photo",
        "cases",
        "SQLite format",
    ] {
        assert!(
            !archive
                .windows(marker.len())
                .any(|w| w == marker.as_bytes()),
            "{marker}"
        );
    }
}

#[test]
fn wrong_passphrase_tampering_and_truncation_create_nothing() {
    let (_d, _s, v) = filled();
    let archive = export(&v, "archive pw");
    let (_d2, space2, other) = other_vault();
    let before = vault_files(&space2, "elsewhere");
    assert!(matches!(
        other.import_app(Cursor::new(&archive), &pass("wrong"), None, &mut |_| {}),
        Err(Error::WrongArchivePassphrase)
    ));
    // Flip bytes across the archive: header, first chunk, middle, last chunk.
    let positions = [
        0,
        9,
        12,
        30,
        56 + 10,
        56 + 44 + 100,
        archive.len() / 2,
        archive.len() - 5,
    ];
    for at in positions {
        let mut bad = archive.clone();
        bad[at] ^= 0x20;
        let result = other.import_app(Cursor::new(&bad), &pass("archive pw"), None, &mut |_| {});
        assert!(
            matches!(
                result,
                Err(Error::WrongArchivePassphrase
                    | Error::FileCorrupt(_)
                    | Error::InvalidArchive(_)
                    | Error::KdfLimit(_))
            ),
            "flip at {at}: {:?}",
            result.map(|a| a.name)
        );
        assert!(other.apps().unwrap().is_empty(), "flip at {at} left an app");
    }
    for cut in [
        10,
        56,
        200,
        archive.len() / 3,
        archive.len() - 17,
        archive.len() - 1,
    ] {
        let result = other.import_app(
            Cursor::new(&archive[..cut]),
            &pass("archive pw"),
            None,
            &mut |_| {},
        );
        assert!(
            matches!(
                result,
                Err(Error::WrongArchivePassphrase
                    | Error::FileCorrupt(_)
                    | Error::InvalidArchive(_))
            ),
            "cut at {cut}: {:?}",
            result.map(|a| a.name)
        );
    }
    assert!(other.apps().unwrap().is_empty());
    // Only the catalog may have appeared: no database, blob or temp file.
    let after: Vec<_> = vault_files(&space2, "elsewhere")
        .into_iter()
        .filter(|f| !f.starts_with("catalog.db"))
        .collect();
    assert_eq!(
        after,
        before
            .into_iter()
            .filter(|f| !f.starts_with("catalog.db"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn archive_kdf_above_the_cap_is_refused_before_deriving() {
    let (_d, _s, v) = filled();
    let mut archive = export(&v, "archive pw");
    archive[12..16].copy_from_slice(&(8u32 * 1024 * 1024).to_le_bytes());
    let (_d2, _s2, other) = other_vault();
    assert!(matches!(
        other.import_app(
            Cursor::new(&archive),
            &pass("archive pw"),
            None,
            &mut |_| {}
        ),
        Err(Error::KdfLimit(_))
    ));
    let mut foreign = archive.clone();
    foreign[0] ^= 1;
    assert!(matches!(
        other.import_app(
            Cursor::new(&foreign),
            &pass("archive pw"),
            None,
            &mut |_| {}
        ),
        Err(Error::InvalidArchive(archive::ArchiveErrorKind::BadMagic))
    ));
}

#[test]
fn export_needs_the_export_capability() {
    let (_d, _s, v) = filled();
    v.set_app_capabilities("cases", Capabilities::all().without(Capability::Export))
        .unwrap();
    let mut out = Vec::new();
    assert!(matches!(
        v.app("cases")
            .unwrap()
            .export(&mut out, &pass("x"), &ARCHIVE_KDF, &mut |_| {}),
        Err(Error::CapabilityDenied {
            capability: "export",
            ..
        })
    ));
}

#[test]
fn a_snapshot_with_triggers_on_coffers_tables_is_refused() {
    let (_d, _space, v) = filled();
    // Plant a trigger in the source app's database, bypassing the sandbox as
    // a tampered device (or a crafted archive) would.
    let raw = super::raw_app_db(&v, "cases");
    raw.execute_batch(
        "CREATE TRIGGER keep BEFORE DELETE ON coffer_files BEGIN SELECT RAISE(IGNORE); END;",
    )
    .unwrap();
    drop(raw);
    let archive = export(&v, "archive pw");
    let (_d2, _s2, other) = other_vault();
    assert!(matches!(
        other.import_app(
            Cursor::new(&archive),
            &pass("archive pw"),
            None,
            &mut |_| {}
        ),
        Err(Error::InvalidArchive(archive::ArchiveErrorKind::Invalid(_)))
    ));
    assert!(other.apps().unwrap().is_empty());
}
