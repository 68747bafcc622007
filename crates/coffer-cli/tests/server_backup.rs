//! Backup and restore of a server end to end: `coffer server backup` while
//! `coffer serve` runs and a device syncs, `coffer server restore` onto a new
//! data directory with the master key, and the restored server carries on:
//! its audit trail verifies, the device that synced before syncs again, and
//! a new device receives the record and its file from the restored pieces.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use support::world::{ok, World};

/// `coffer --json server ARGS` with `data_home` as the server's data
/// directory (the defaults of `coffer serve`: blobs, certificate).
fn server(data_home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["--json", "server"])
        .args(args)
        .env("XDG_DATA_HOME", data_home)
        .env("HOME", data_home)
        .env_remove("DATABASE_URL")
        .env_remove("COFFER_BLOB_DIR")
        .env_remove("COFFER_MASTER_KEY")
        .env_remove("COFFER_MASTER_KEY_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn refused(out: &Output) -> (Option<i32>, Value) {
    let error = serde_json::from_slice(&out.stderr)
        .or_else(|_| serde_json::from_slice(&out.stdout))
        .unwrap_or(Value::Null);
    (out.status.code(), error)
}

#[test]
fn a_server_restored_on_a_new_data_directory_keeps_its_trail_and_its_devices() {
    let mut world = World::new(&[]);
    let root = world.dir.path().to_owned();
    let old_home = root.join("server");
    let old_url = format!("sqlite://{}", root.join("server.db").display());
    let master_key = old_home.join("coffer-server/master.key");

    // A device syncs a record that references a file.
    let a = world.device("device-a", "alice", &world.server.base);
    world.verify(&a, "alice");
    let photo = root.join("photo.bin");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 253) as u8).collect();
    std::fs::write(&photo, &bytes).unwrap();
    ok(a.run(&[
        "files",
        "put",
        "cases",
        "photo.bin",
        photo.to_str().unwrap(),
    ]));
    ok(a.run(&[
        "records",
        "put",
        "cases",
        "visits",
        "v-1",
        &json!({"note": "before the backup"}).to_string(),
        "--file",
        "photo.bin",
    ]));
    ok(a.run(&["sync"]));

    // Online: the server is running.
    let backup_dir = root.join("backup");
    let made = ok(server(
        &old_home,
        &[
            "backup",
            "--out",
            backup_dir.to_str().unwrap(),
            "--database-url",
            &old_url,
        ],
    ));
    assert!(made["manifest"]["pieces"].as_u64().unwrap() >= 1, "{made}");
    assert_eq!(made["manifest"]["dev_tls"], true, "{made}");
    assert!(!backup_dir.join("master.key").exists());
    // Never over a backup.
    let again = server(
        &old_home,
        &[
            "backup",
            "--out",
            backup_dir.to_str().unwrap(),
            "--database-url",
            &old_url,
        ],
    );
    assert_eq!(refused(&again).0, Some(2));

    // The old machine is gone.
    let listen = world.server.base.trim_start_matches("https://").to_owned();
    let fingerprint = world.server.fingerprint.clone();
    world.server.kill();

    let new_home = root.join("new-server");
    let new_db = root.join("new/server.db");
    let new_url = format!("sqlite://{}", new_db.display());
    let restore = |key: &Path, from: &Path| {
        server(
            &new_home,
            &[
                "restore",
                from.to_str().unwrap(),
                "--database-url",
                &new_url,
                "--master-key-file",
                key.to_str().unwrap(),
            ],
        )
    };
    // Another master key: refused, and nothing placed.
    let other_key = root.join("other.key");
    std::fs::write(&other_key, "ab".repeat(32)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (code, error) = refused(&restore(&other_key, &backup_dir));
    assert_eq!(code, Some(3), "{error}");
    assert_eq!(error["error"]["code"], "wrong_master_key", "{error}");
    assert!(!new_db.exists());
    assert!(!new_home.join("coffer-server/blobs").exists());
    // A damaged copy: refused before anything is checked further.
    let damaged = root.join("damaged-backup");
    copy_dir(&backup_dir, &damaged);
    let db = damaged.join("server.db");
    let mut db_bytes = std::fs::read(&db).unwrap();
    let middle = db_bytes.len() / 2;
    db_bytes[middle] ^= 1;
    std::fs::write(&db, db_bytes).unwrap();
    let (code, error) = refused(&restore(&master_key, &damaged));
    assert_eq!(code, Some(5), "{error}");
    assert!(!new_db.exists());

    // File pieces cannot be dropped by restoring "into S3".
    let into_s3 = server(
        &new_home,
        &[
            "restore",
            backup_dir.to_str().unwrap(),
            "--database-url",
            &new_url,
            "--blobs-in-s3",
            "--master-key-file",
            master_key.to_str().unwrap(),
        ],
    );
    assert_eq!(refused(&into_s3).0, Some(2));
    assert!(!new_db.exists());
    let restored = ok(restore(&master_key, &backup_dir));
    assert!(restored["audit_rows"].as_u64().unwrap() > 3, "{restored}");
    // Never over a database.
    assert_eq!(refused(&restore(&master_key, &backup_dir)).0, Some(2));

    // The new machine serves on the old address, with the same
    // certificate (the devices' pin) and the master key given.
    world.server = support::DevServer::start_at(
        &new_home,
        &listen,
        &new_url,
        &["--master-key-file".into(), master_key.display().to_string()],
    );
    assert_eq!(world.server.fingerprint, fingerprint);
    let verified = ok(world.admin(&["audit", "verify", "--org", &world.org.to_string()]));
    assert_eq!(verified["intact"], true, "{verified}");

    // The device that synced before goes on.
    ok(a.run(&[
        "records",
        "put",
        "cases",
        "visits",
        "v-2",
        &json!({"note": "after the restore"}).to_string(),
    ]));
    ok(a.run(&["sync"]));
    // A new device gets both records, and the file from restored pieces.
    let b = world.device("device-b", "bob", &world.server.base);
    ok(b.run(&["sync"]));
    let first = ok(b.run(&["records", "get", "cases", "visits", "v-1"]));
    assert_eq!(first["body"]["note"], "before the backup");
    let second = ok(b.run(&["records", "get", "cases", "visits", "v-2"]));
    assert_eq!(second["body"]["note"], "after the restore");
    let out = root.join("photo-on-b.bin");
    ok(b.run(&[
        "files",
        "get",
        "cases",
        "photo.bin",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

#[test]
fn postgres_is_sent_to_its_own_tools() {
    let dir = tempfile::tempdir().unwrap();
    let out = server(
        dir.path(),
        &[
            "backup",
            "--out",
            dir.path().join("b").to_str().unwrap(),
            "--database-url",
            "postgres://coffer@127.0.0.1/coffer",
        ],
    );
    let (code, error) = refused(&out);
    assert_eq!(code, Some(2), "{error}");
    assert!(error.to_string().contains("pg_dump"), "{error}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
