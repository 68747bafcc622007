//! Apps and their stores: round trips, isolation, capabilities, tampering,
//! and nothing in the clear on disk.

use serde_json::json;

use super::{pass, scan, space, FAST};
use crate::*;

fn vault() -> (tempfile::TempDir, Space, UnlockedVault) {
    let (dir, space) = space();
    let v = space
        .create_vault("acme", "alice", &pass("pw"), &FAST)
        .unwrap();
    (dir, space, v)
}

fn db_kind(e: Error) -> DatabaseErrorKind {
    match e {
        Error::Database { kind, .. } => kind,
        other => panic!("expected a database error, got {other:?}"),
    }
}

#[test]
fn apps_are_listed_unique_and_named_by_the_rules() {
    let (_d, _s, v) = vault();
    v.add_app("notes", Capabilities::all()).unwrap();
    v.add_app("camera", Capabilities::none().with(Capability::Files))
        .unwrap();
    let names: Vec<_> = v.apps().unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["camera", "notes"]);
    assert!(matches!(
        v.add_app("notes", Capabilities::all()),
        Err(Error::AppExists { .. })
    ));
    assert!(matches!(
        v.add_app("Bad/Name", Capabilities::all()),
        Err(Error::InvalidName {
            what: "app name",
            ..
        })
    ));
    assert!(matches!(v.app("nope"), Err(Error::NoSuchApp { .. })));
}

#[test]
fn a_store_not_granted_is_a_typed_error() {
    let (_d, _s, v) = vault();
    v.add_app("kvonly", Capabilities::none().with(Capability::Kv))
        .unwrap();
    let app = v.app("kvonly").unwrap();
    app.kv().unwrap();
    assert!(matches!(
        app.database(),
        Err(Error::CapabilityDenied {
            capability: "sql",
            ..
        })
    ));
    assert!(matches!(
        app.records(),
        Err(Error::CapabilityDenied {
            capability: "records",
            ..
        })
    ));
    v.set_app_capabilities("kvonly", Capabilities::none().with(Capability::Records))
        .unwrap();
    let app = v.app("kvonly").unwrap();
    app.records().unwrap();
    assert!(matches!(
        app.kv(),
        Err(Error::CapabilityDenied {
            capability: "kv",
            ..
        })
    ));
}

#[test]
fn sql_survives_lock_and_unlock() {
    let (_d, space, v) = vault();
    v.add_app("notes", Capabilities::all()).unwrap();
    let db = v.app("notes").unwrap().database().unwrap();
    db.execute_batch("CREATE TABLE note (id INTEGER PRIMARY KEY, text TEXT); INSERT INTO note (text) VALUES ('hello');")
        .unwrap();
    drop(db);
    drop(v);
    let v = space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::Passphrase(&pass("pw")))
        .unwrap();
    let db = v.app("notes").unwrap().database().unwrap();
    let text: String = db
        .query_row("SELECT text FROM note", [], |r| r.get(0))
        .unwrap();
    assert_eq!(text, "hello");
}

#[test]
fn key_value_round_trip() {
    let (_d, _s, v) = vault();
    v.add_app("notes", Capabilities::all()).unwrap();
    let kv = v.app("notes").unwrap().kv().unwrap();
    kv.put("user/name", b"Ada").unwrap();
    kv.put("user/role", b"nurse").unwrap();
    kv.put("users", b"x").unwrap();
    kv.put("zz", &[0, 255, 7]).unwrap();
    assert_eq!(kv.get("user/name").unwrap().as_deref(), Some(&b"Ada"[..]));
    assert_eq!(kv.get("zz").unwrap().as_deref(), Some(&[0u8, 255, 7][..]));
    assert_eq!(kv.list("user/").unwrap(), ["user/name", "user/role"]);
    assert_eq!(
        kv.list("user").unwrap(),
        ["user/name", "user/role", "users"]
    );
    assert_eq!(kv.list("").unwrap().len(), 4);
    kv.put("user/name", b"Grace").unwrap();
    assert_eq!(kv.get("user/name").unwrap().as_deref(), Some(&b"Grace"[..]));
    assert!(kv.delete("user/name").unwrap());
    assert!(!kv.delete("user/name").unwrap());
    assert_eq!(kv.get("user/name").unwrap(), None);
    assert!(matches!(
        kv.put("", b"x"),
        Err(Error::InvalidName { what: "key", .. })
    ));
    let big = vec![0u8; store::kv::MAX_VALUE_LEN + 1];
    assert!(matches!(kv.put("big", &big), Err(Error::TooLarge { .. })));
}

#[test]
fn records_version_tombstones_conflicts_and_change_log() {
    let (_d, _s, v) = vault();
    v.add_app("cases", Capabilities::all()).unwrap();
    let mut rs = v.app("cases").unwrap().records().unwrap();
    let r1 = rs
        .put("case", "c1", &json!({"name": "A"}), Some(0))
        .unwrap();
    assert_eq!((r1.version, r1.deleted), (1, false));
    let r2 = rs.put("case", "c1", &json!({"name": "B"}), None).unwrap();
    assert_eq!(r2.version, 2);
    // A write based on a stale version changes nothing.
    match rs.put("case", "c1", &json!({"name": "C"}), Some(1)) {
        Err(Error::VersionConflict { current: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rs.get("case", "c1").unwrap().unwrap().body,
        json!({"name": "B"})
    );
    // Creating over an existing record with base 0 conflicts too.
    assert!(matches!(
        rs.put("case", "c1", &json!({}), Some(0)),
        Err(Error::VersionConflict { current: 2, .. })
    ));
    rs.put("case", "c2", &json!({"name": "D"}), None).unwrap();
    rs.put("other", "c1", &json!(1), None).unwrap();
    let deleted = rs.delete("case", "c1", Some(2)).unwrap();
    assert_eq!(
        (deleted.version, deleted.deleted, deleted.body.clone()),
        (3, true, json!(null))
    );
    assert!(matches!(
        rs.delete("case", "c1", None),
        Err(Error::NoSuchRecord { .. })
    ));
    let live: Vec<_> = rs.list("case").unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(live, ["c2"]);
    let changes = rs.changes_since(0, 100).unwrap();
    let summary: Vec<_> = changes
        .iter()
        .map(|c| {
            (
                c.seq,
                c.collection.as_str(),
                c.id.as_str(),
                c.version,
                c.deleted,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "case", "c1", 1, false),
            (2, "case", "c1", 2, false),
            (3, "case", "c2", 1, false),
            (4, "other", "c1", 1, false),
            (5, "case", "c1", 3, true),
        ]
    );
    assert_eq!(rs.changes_since(3, 1).unwrap()[0].seq, 4);
    // Recreating after deletion continues the version.
    assert_eq!(
        rs.put("case", "c1", &json!({"name": "E"}), Some(3))
            .unwrap()
            .version,
        4
    );
}

#[test]
fn one_app_cannot_read_another() {
    let (_d, space, v) = vault();
    v.add_app("a", Capabilities::all()).unwrap();
    v.add_app("b", Capabilities::all()).unwrap();
    v.app("a")
        .unwrap()
        .kv()
        .unwrap()
        .put("secret", b"for a only")
        .unwrap();
    assert_eq!(
        v.app("b").unwrap().kv().unwrap().get("secret").unwrap(),
        None
    );
    // Open a's database file with b's key: SQLCipher refuses.
    let a = v.app("a").unwrap();
    let b = v.app("b").unwrap();
    let a_path = space
        .root()
        .join("acme")
        .join("data")
        .join(&a.info().db_file);
    let b_key = v.subkey(Purpose::AppDatabase(&b.info().id)).unwrap();
    let err = store::database::open(&a_path, &b_key, false).unwrap_err();
    assert_eq!(db_kind(err), DatabaseErrorKind::NotADatabase);
}

#[test]
fn damaged_database_pages_are_errors_not_wrong_data() {
    let (_d, space, v) = vault();
    v.add_app("notes", Capabilities::all()).unwrap();
    {
        let kv = v.app("notes").unwrap().kv().unwrap();
        for i in 0..2000 {
            kv.put(
                &format!("key{i:05}"),
                format!("value number {i}").as_bytes(),
            )
            .unwrap();
        }
    }
    let app = v.app("notes").unwrap();
    let path = space
        .root()
        .join("acme")
        .join("data")
        .join(&app.info().db_file);
    let original = std::fs::read(&path).unwrap();
    assert!(original.len() > 8 * 4096, "several pages");
    // Flip one bit in every page (page 1 too): reading all keys must fail.
    for page in 0..original.len() / 4096 {
        let mut bytes = original.clone();
        bytes[page * 4096 + 2000] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        let result = app.kv().and_then(|kv| {
            kv.list("")?
                .into_iter()
                .map(|k| kv.get(&k))
                .collect::<Result<Vec<_>>>()
        });
        match result {
            Err(Error::Database { kind, .. }) => {
                assert!(
                    matches!(
                        kind,
                        DatabaseErrorKind::NotADatabase | DatabaseErrorKind::Corrupt
                    ),
                    "page {page}: {kind:?}"
                )
            }
            other => panic!("page {page}: {:?}", other.map(|v| v.len())),
        }
    }
    std::fs::write(&path, &original).unwrap();
    assert_eq!(app.kv().unwrap().list("").unwrap().len(), 2000);
}

#[test]
fn no_marker_name_or_key_reaches_the_disk() {
    let (dir, _s, v) = vault();
    v.add_app("marker-app-name", Capabilities::all()).unwrap();
    let app = v.app("marker-app-name").unwrap();
    let db = app.database().unwrap();
    db.execute_batch("CREATE TABLE marker_table (marker_column TEXT); INSERT INTO marker_table VALUES ('marker-sql-value');")
        .unwrap();
    drop(db);
    let kv = app.kv().unwrap();
    kv.put("marker-kv-key", b"marker-kv-value").unwrap();
    let mut rs = app.records().unwrap();
    rs.put(
        "marker-collection",
        "marker-record-id",
        &json!({"marker-field": "marker-record-value"}),
        None,
    )
    .unwrap();
    let files = app.files().unwrap();
    let content = b"marker-file-content ".repeat(10_000);
    files
        .put(
            "marker-file-name.jpg",
            &mut &content[..],
            Some("marker/type"),
            &mut |_| {},
        )
        .unwrap();
    drop(files);
    let keys = [
        Purpose::Catalog,
        Purpose::AppFiles(&app.info().id),
        Purpose::AppDatabase(&app.info().id),
        Purpose::AppRecords(&app.info().id),
    ]
    .map(|p| v.subkey(p).unwrap().expose_secret().to_vec());
    drop((kv, rs));
    let needles: Vec<Vec<u8>> = [
        "marker-app-name",
        "marker_table",
        "marker_column",
        "marker-sql-value",
        "marker-kv-key",
        "marker-kv-value",
        "marker-collection",
        "marker-record-id",
        "marker-field",
        "marker-record-value",
        "coffer_kv",
        "marker-file-content",
        "marker-file-name",
        "marker/type",
        "SQLite format 3",
    ]
    .into_iter()
    .map(|s| s.as_bytes().to_vec())
    .chain(keys)
    .collect();
    let mut files = 0;
    scan(dir.path(), &mut |path, bytes| {
        files += 1;
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{} holds {:?}",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    });
    assert!(
        files >= 3,
        "header, catalog and the app database were scanned"
    );
}

fn blobs(space: &Space) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let files = space.root().join("acme").join("files");
    for app_dir in std::fs::read_dir(files).unwrap() {
        for blob in std::fs::read_dir(app_dir.unwrap().path()).unwrap() {
            out.push(blob.unwrap().path());
        }
    }
    out.sort();
    out
}

fn read_all(store: &FileStore, name: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut reader = store.open_file(name)?;
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .map_err(|e| Error::from_read("reading in a test", e))?;
    Ok(out)
}

fn put(store: &FileStore, name: &str, data: &[u8]) -> FileInfo {
    store
        .put(
            name,
            &mut &data[..],
            Some("application/octet-stream"),
            &mut |_| {},
        )
        .unwrap()
}

#[test]
fn files_round_trip_replace_and_delete() {
    let (_d, space, v) = vault();
    v.add_app("cam", Capabilities::none().with(Capability::Files))
        .unwrap();
    let files = v.app("cam").unwrap().files().unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    for (name, data) in [
        ("empty", &b""[..]),
        ("small.txt", &b"hello"[..]),
        ("photo.jpg", &big[..]),
    ] {
        let info = put(&files, name, data);
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(
            info.content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(read_all(&files, name).unwrap(), data);
    }
    assert_eq!(blobs(&space).len(), 3);
    // Random access through the store.
    let mut reader = files.open_file("photo.jpg").unwrap();
    let mut window = [0u8; 1000];
    reader.read_at(65_000, &mut window).unwrap();
    assert_eq!(&window[..], &big[65_000..66_000]);
    // Replacing swaps the blob and removes the old one.
    put(&files, "small.txt", b"hello again");
    assert_eq!(read_all(&files, "small.txt").unwrap(), b"hello again");
    assert_eq!(blobs(&space).len(), 3);
    let names: Vec<_> = files.list().unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["empty", "photo.jpg", "small.txt"]);
    assert!(files.delete("photo.jpg").unwrap());
    assert!(!files.delete("photo.jpg").unwrap());
    assert!(matches!(
        files.open_file("photo.jpg"),
        Err(Error::NoSuchFile { .. })
    ));
    assert_eq!(blobs(&space).len(), 2);
    let app = v.app("cam").unwrap();
    assert!(matches!(
        app.kv(),
        Err(Error::CapabilityDenied {
            capability: "kv",
            ..
        })
    ));
}

#[test]
fn tampered_swapped_and_missing_blobs_are_refused() {
    let (_d, space, v) = vault();
    v.add_app("cam", Capabilities::all()).unwrap();
    let files = v.app("cam").unwrap().files().unwrap();
    put(&files, "a", b"version one of a");
    let old_blob = blobs(&space)[0].clone();
    let old_bytes = std::fs::read(&old_blob).unwrap();
    put(&files, "a", b"version two of a");
    put(&files, "b", b"the file called b");
    let blob_of = |name: &str| {
        // The blob whose content decrypts to this name's data is found by
        // elimination: the store's row is the truth, so look it up by trying.
        blobs(&space)
            .into_iter()
            .find(|p| {
                let saved = std::fs::read(p).unwrap();
                std::fs::write(p, b"x").unwrap();
                let broken = files.open_file(name).is_err();
                std::fs::write(p, saved).unwrap();
                broken
            })
            .unwrap()
    };
    let a_blob = blob_of("a");
    let b_blob = blob_of("b");
    // A flipped bit in the blob: the chunk fails.
    let good = std::fs::read(&a_blob).unwrap();
    let mut bad = good.clone();
    bad[60] ^= 1;
    std::fs::write(&a_blob, &bad).unwrap();
    assert!(matches!(
        read_all(&files, "a"),
        Err(Error::FileCorrupt(stream::FileCorruptKind::Chunk(0)))
    ));
    // Rolled back to the older encryption of the same file: refused, though
    // the app's key would decrypt it.
    std::fs::write(&a_blob, &old_bytes).unwrap();
    assert!(matches!(
        files.open_file("a"),
        Err(Error::FileCorrupt(stream::FileCorruptKind::Replaced))
    ));
    // Swapped for another file of the same app: refused too.
    std::fs::copy(&b_blob, &a_blob).unwrap();
    assert!(matches!(
        files.open_file("a"),
        Err(Error::FileCorrupt(stream::FileCorruptKind::Replaced))
    ));
    // Gone: a typed error.
    std::fs::remove_file(&a_blob).unwrap();
    assert!(matches!(
        files.open_file("a"),
        Err(Error::FileCorrupt(stream::FileCorruptKind::Missing))
    ));
    std::fs::write(&a_blob, &good).unwrap();
    assert_eq!(read_all(&files, "a").unwrap(), b"version two of a");
}

#[test]
fn another_apps_key_cannot_open_a_blob() {
    let (_d, space, v) = vault();
    v.add_app("a", Capabilities::all()).unwrap();
    v.add_app("b", Capabilities::all()).unwrap();
    put(&v.app("a").unwrap().files().unwrap(), "doc", b"for a only");
    let blob = blobs(&space)[0].clone();
    let b_key = v
        .subkey(Purpose::AppFiles(&v.app("b").unwrap().info().id))
        .unwrap();
    let result =
        stream::ChunkReader::open(&b_key, std::fs::File::open(blob).unwrap()).and_then(|mut r| {
            let mut out = [0u8; 10];
            r.read_at(0, &mut out)
        });
    assert!(matches!(
        result,
        Err(Error::FileCorrupt(stream::FileCorruptKind::Chunk(0)))
    ));
}

#[test]
fn orphans_left_by_a_crash_are_removed() {
    let (_d, space, v) = vault();
    v.add_app("cam", Capabilities::all()).unwrap();
    let files = v.app("cam").unwrap().files().unwrap();
    put(&files, "keep", b"kept");
    let dir = blobs(&space)[0].parent().unwrap().to_owned();
    std::fs::write(dir.join("0123456789abcdef0123456789abcdef"), b"orphan blob").unwrap();
    std::fs::write(dir.join(".0123.tmp"), b"half-written").unwrap();
    assert_eq!(files.remove_orphans().unwrap(), 2);
    assert_eq!(read_all(&files, "keep").unwrap(), b"kept");
    assert_eq!(blobs(&space).len(), 1);
}

#[test]
fn an_apps_own_sql_is_confined_to_its_own_tables() {
    let (_d, _s, v) = vault();
    v.add_app("notes", Capabilities::all()).unwrap();
    let app = v.app("notes").unwrap();
    app.kv().unwrap().put("secret", b"kv only").unwrap();
    let db = app.database().unwrap();
    db.execute_batch("CREATE TABLE mine (a TEXT); INSERT INTO mine VALUES ('ok');")
        .unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM pragma_table_info('mine')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 1);
    // A view may be defined, but reading through it is a read of coffer_kv.
    db.execute_batch("CREATE VIEW leak AS SELECT * FROM coffer_kv")
        .unwrap();
    let plain = _d.path().join("plain.db");
    let attach = format!("ATTACH DATABASE '{}' AS plain KEY ''", plain.display());
    for refused in [
        "SELECT value FROM coffer_kv",
        "DELETE FROM coffer_kv",
        "CREATE TRIGGER t AFTER INSERT ON coffer_kv BEGIN SELECT 1; END",
        "SELECT * FROM leak",
        attach.as_str(),
        "PRAGMA key = 'x'",
        "PRAGMA rekey = 'x'",
        "PRAGMA cipher_hmac_algorithm = HMAC_SHA1",
        "PRAGMA temp_store = FILE",
        "PRAGMA journal_mode = DELETE",
        "SELECT sqlcipher_export('main')",
    ] {
        // The authorizer runs when a statement is prepared.
        let err = db
            .prepare(refused)
            .err()
            .unwrap_or_else(|| panic!("{refused} was allowed"));
        // Denied statements report SQLITE_AUTH; a denied function reports
        // "not authorized to use function".
        let denied = err.sqlite_error_code()
            == Some(rusqlite::ErrorCode::AuthorizationForStatementDenied)
            || err.to_string().contains("not authorized");
        assert!(denied, "{refused}: {err}");
    }
    assert!(!plain.exists(), "no plaintext database was created");
    assert_eq!(
        app.kv().unwrap().get("secret").unwrap().unwrap(),
        b"kv only"
    );
}

#[test]
fn a_blob_name_from_the_database_cannot_leave_the_blob_directory() {
    let (_d, space, v) = vault();
    v.add_app("cam", Capabilities::all()).unwrap();
    let app = v.app("cam").unwrap();
    put(&app.files().unwrap(), "photo", b"data");
    // Point the row at the vault header, as a crafted database would.
    let raw = super::raw_app_db(&v, "cam");
    raw.execute("UPDATE coffer_files SET blob = '../../header'", [])
        .unwrap();
    drop(raw);
    let files = app.files().unwrap();
    assert!(matches!(
        files.open_file("photo"),
        Err(Error::FileCorrupt(stream::FileCorruptKind::Replaced))
    ));
    files.delete("photo").unwrap();
    put(&files, "photo", b"again");
    assert!(
        space.root().join("acme").join("header").exists(),
        "the header survived"
    );
    drop(v);
    space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::Passphrase(&pass("pw")))
        .unwrap();
}

#[test]
fn a_negative_stored_version_is_corruption_not_a_panic() {
    let (_d, _space, v) = vault();
    v.add_app("cases", Capabilities::all()).unwrap();
    let app = v.app("cases").unwrap();
    let mut rs = app.records().unwrap();
    rs.put("c", "1", &json!(1), None).unwrap();
    let raw = super::raw_app_db(&v, "cases");
    raw.execute("UPDATE coffer_records SET version = -1", [])
        .unwrap();
    drop(raw);
    assert!(matches!(
        rs.put("c", "1", &json!(2), None),
        Err(Error::Database {
            kind: DatabaseErrorKind::Corrupt,
            ..
        })
    ));
}

#[test]
fn vault_settings_are_kept_encrypted_and_survive_an_upgraded_catalog() {
    let (dir, space, v) = vault();
    assert_eq!(v.setting("control.device_token").unwrap(), None);
    v.set_setting("control.device_token", Some(b"marker-token-7f3a"))
        .unwrap();
    v.set_setting("control.server", Some(b"https://example.invalid"))
        .unwrap();
    assert_eq!(
        v.setting("control.device_token").unwrap().as_deref(),
        Some(&b"marker-token-7f3a"[..])
    );
    v.set_setting("control.server", None).unwrap();
    assert_eq!(v.setting("control.server").unwrap(), None);
    // Never on disk in the clear.
    scan(dir.path(), &mut |path, bytes| {
        assert!(
            !bytes
                .windows(b"marker-token-7f3a".len())
                .any(|w| w == b"marker-token-7f3a"),
            "{} holds the setting in the clear",
            path.display()
        );
    });
    // A catalog made before settings (version 1) gets them at its next
    // open, keeping its apps.
    v.add_app("notes", Capabilities::all()).unwrap();
    {
        let key = v.subkey(crate::subkey::Purpose::Catalog).unwrap();
        let conn = crate::store::database::open(
            &space.vault("acme").unwrap().path().join("catalog.db"),
            &key,
            false,
        )
        .unwrap();
        conn.execute_batch("DROP TABLE settings; PRAGMA user_version = 1;")
            .unwrap();
    }
    assert_eq!(v.setting("control.device_token").unwrap(), None);
    v.set_setting("control.device_token", Some(b"again"))
        .unwrap();
    assert_eq!(v.apps().unwrap().len(), 1);
}

#[test]
fn vault_settings_survive_a_rotation() {
    let (_dir, _space, mut v) = vault();
    v.set_setting("control.device_token", Some(b"kept"))
        .unwrap();
    v.rotate(
        &[("alice", Credential::Passphrase(&pass("pw")))],
        &crate::rotate::RotateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        v.setting("control.device_token").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
}
