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
    let b_key = v.subkey(Purpose::AppDatabase(&b.info().id));
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
    let keys = [
        Purpose::Catalog,
        Purpose::AppDatabase(&app.info().id),
        Purpose::AppRecords(&app.info().id),
    ]
    .map(|p| v.subkey(p).expose_secret().to_vec());
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
