//! The store commands end to end: app, sql, kv, records, with their JSON
//! and exit codes.

#![allow(clippy::unwrap_used)]

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

fn setup() -> (tempfile::TempDir, impl Fn() -> Command) {
    let dir = tempfile::tempdir().unwrap();
    let space = dir.path().join("space");
    let cmd = move || {
        let mut c = Command::cargo_bin("coffer").unwrap();
        c.env("COFFER_SPACE", &space)
            .env("COFFER_PASSPHRASE", "pw for stores")
            .env_remove("COFFER_VAULT");
        c
    };
    cmd()
        .args(["init", "--kdf-time-ms", "0"])
        .assert()
        .success();
    (dir, cmd)
}

fn json(mut c: Command) -> Value {
    serde_json::from_slice(&c.arg("--json").assert().success().get_output().stdout).unwrap()
}

#[test]
fn apps_sql_kv_and_records_from_the_command_line() {
    let (_d, coffer) = setup();
    coffer().args(["app", "add", "notes"]).assert().success();
    coffer()
        .args(["app", "add", "cam", "--allow", "files"])
        .assert()
        .success();
    let mut c = coffer();
    c.args(["app", "ls"]);
    let apps = json(c);
    assert_eq!(apps["apps"][0]["name"], "cam");
    assert_eq!(
        apps["apps"][0]["capabilities"],
        serde_json::json!(["files"])
    );

    coffer()
        .args(["sql", "notes", "CREATE TABLE t (a INTEGER, b TEXT)"])
        .assert()
        .success();
    coffer()
        .args(["sql", "notes", "INSERT INTO t VALUES (1, 'one'), (2, NULL)"])
        .assert()
        .success()
        .stdout("2 row(s) changed\n");
    let mut c = coffer();
    c.args(["sql", "notes", "SELECT a, b FROM t ORDER BY a"]);
    let rows = json(c);
    assert_eq!(rows["columns"], serde_json::json!(["a", "b"]));
    assert_eq!(rows["rows"], serde_json::json!([[1, "one"], [2, null]]));
    coffer().args(["sql", "notes", "SELEKT 1"]).assert().code(2);

    coffer()
        .args(["kv", "put", "notes", "greeting", "hello"])
        .assert()
        .success();
    // The confinement's refusal says what is out of reach, and why.
    coffer()
        .args(["sql", "notes", "SELECT * FROM coffer_kv"])
        .assert()
        .code(10)
        .stderr(predicate::str::contains("coffer_kv.key is prohibited"))
        .stderr(predicate::str::contains(
            "use the key-value, record and file stores",
        ));
    coffer()
        .args(["kv", "put", "notes", "raw", "-"])
        .write_stdin(vec![0u8, 159, 146, 150])
        .assert()
        .success();
    coffer()
        .args(["kv", "get", "notes", "raw"])
        .assert()
        .success()
        .stdout(predicate::eq(&[0u8, 159, 146, 150][..]));
    coffer()
        .args(["kv", "get", "notes", "greeting"])
        .assert()
        .success()
        .stdout("hello");
    let mut c = coffer();
    c.args(["kv", "ls", "notes"]);
    assert_eq!(json(c)["keys"], serde_json::json!(["greeting", "raw"]));
    coffer()
        .args(["kv", "rm", "notes", "greeting"])
        .assert()
        .success();
    coffer()
        .args(["kv", "get", "notes", "greeting"])
        .assert()
        .code(9);

    coffer()
        .args([
            "records",
            "put",
            "notes",
            "cases",
            "c1",
            r#"{"name":"A"}"#,
            "--base-version",
            "0",
        ])
        .assert()
        .success();
    coffer()
        .args(["records", "put", "notes", "cases", "c1", r#"{"name":"B"}"#])
        .assert()
        .success();
    coffer()
        .args([
            "records",
            "put",
            "notes",
            "cases",
            "c1",
            r#"{"name":"C"}"#,
            "--base-version",
            "1",
        ])
        .assert()
        .code(11);
    let mut c = coffer();
    c.args(["records", "get", "notes", "cases", "c1"]);
    let record = json(c);
    assert_eq!(record["version"], 2);
    assert_eq!(record["body"]["name"], "B");
    coffer()
        .args(["records", "put", "notes", "cases", "c2", "not json"])
        .assert()
        .code(2);
    coffer()
        .args(["records", "rm", "notes", "cases", "c1"])
        .assert()
        .success();
    coffer()
        .args(["records", "get", "notes", "cases", "c1"])
        .assert()
        .code(9);
    coffer()
        .args(["records", "ls", "notes", "cases"])
        .assert()
        .success()
        .stdout("");

    // Capabilities and missing apps have their own exit codes.
    coffer().args(["kv", "ls", "cam"]).assert().code(10);
    coffer().args(["kv", "ls", "nope"]).assert().code(9);
    coffer().args(["app", "add", "notes"]).assert().code(6);
}

#[test]
fn files_from_the_command_line() {
    let (dir, coffer) = setup();
    coffer()
        .args(["app", "add", "cam", "--allow", "files"])
        .assert()
        .success();
    // A missing input is refused before any passphrase is needed.
    coffer()
        .env_remove("COFFER_PASSPHRASE")
        .args(["files", "put", "cam", "x"])
        .arg(dir.path().join("no such file"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read"))
        .stderr(predicate::str::contains("no such file"));
    let photo = dir.path().join("photo.jpg");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&photo, &data).unwrap();
    coffer()
        .args(["files", "put", "cam", "holiday.jpg"])
        .arg(&photo)
        .args(["--type", "image/jpeg"])
        .assert()
        .success();
    coffer()
        .args(["files", "put", "cam", "note.txt", "-"])
        .write_stdin("from stdin")
        .assert()
        .success();
    coffer()
        .args(["files", "get", "cam", "holiday.jpg"])
        .assert()
        .success()
        .stdout(predicate::eq(data.clone()));
    let out = dir.path().join("back.jpg");
    coffer()
        .args(["files", "get", "cam", "holiday.jpg", "--out"])
        .arg(&out)
        .assert()
        .success();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let mut c = coffer();
    c.args(["files", "ls", "cam"]);
    let listed = json(c);
    assert_eq!(listed["files"][0]["name"], "holiday.jpg");
    assert_eq!(listed["files"][0]["size"], 200_000);
    assert_eq!(listed["files"][0]["content_type"], "image/jpeg");
    coffer()
        .args(["files", "rm", "cam", "note.txt"])
        .assert()
        .success();
    coffer()
        .args(["files", "get", "cam", "note.txt"])
        .assert()
        .code(9);
    // A whole-vault check reads everything: clean so far.
    let mut c = coffer();
    c.args(["verify", "--deep"]);
    let clean = json(c);
    assert_eq!(clean["clean"], true, "{clean}");
    assert_eq!(clean["files"], 1);
    // A damaged blob: exit 5 and no partial output file.
    let blob_dir = std::fs::read_dir(dir.path().join("space/default/files"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let blob = std::fs::read_dir(&blob_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let damaged_out = dir.path().join("damaged.jpg");
    coffer()
        .args(["files", "get", "cam", "holiday.jpg", "--out"])
        .arg(&damaged_out)
        .assert()
        .code(5);
    assert!(!damaged_out.exists());
    // The deep check finds it (exit 20), says which file, and plain
    // verify, which reads only the header, does not.
    coffer().arg("verify").assert().success();
    let found = coffer()
        .args(["--json", "verify", "--deep"])
        .assert()
        .code(20)
        .get_output()
        .stdout
        .clone();
    let found: Value = serde_json::from_slice(&found).unwrap();
    assert_eq!(found["clean"], false);
    assert_eq!(found["problems"][0]["kind"], "file_damaged", "{found}");
    assert!(
        found["problems"][0]["place"]
            .as_str()
            .unwrap()
            .contains("file 'holiday.jpg'"),
        "{found}"
    );
    coffer()
        .args(["verify", "--deep"])
        .assert()
        .code(20)
        .stdout(predicate::str::contains(
            "PROBLEMS: vault 'default' has 1 problem(s)",
        ));
}

#[test]
fn export_and_import_from_the_command_line() {
    let (dir, coffer) = setup();
    coffer().args(["app", "add", "notes"]).assert().success();
    coffer()
        .args(["kv", "put", "notes", "k", "v"])
        .assert()
        .success();
    coffer()
        .args(["files", "put", "notes", "f.txt", "-"])
        .write_stdin("file body")
        .assert()
        .success();
    // Big enough that the archive spans several chunks.
    coffer()
        .args(["files", "put", "notes", "big.bin", "-"])
        .write_stdin(vec![7u8; 300_000])
        .assert()
        .success();
    let archive = dir.path().join("notes.coffer-app");
    coffer()
        .env("COFFER_NEW_PASSPHRASE", "archive secret")
        .args(["export", "notes", "--kdf-time-ms", "0", "--out"])
        .arg(&archive)
        .assert()
        .success()
        .stdout(predicate::str::contains("2 files"));
    // Wrong archive passphrase: exit 3, nothing imported.
    coffer()
        .env("COFFER_NEW_PASSPHRASE", "not it")
        .arg("import")
        .arg(&archive)
        .args(["--as", "copy"])
        .assert()
        .code(3);
    coffer()
        .env("COFFER_NEW_PASSPHRASE", "archive secret")
        .arg("import")
        .arg(&archive)
        .args(["--as", "copy"])
        .assert()
        .success();
    coffer()
        .args(["kv", "get", "copy", "k"])
        .assert()
        .success()
        .stdout("v");
    coffer()
        .args(["files", "get", "copy", "f.txt"])
        .assert()
        .success()
        .stdout("file body");
    // The same name again: exit 6. A damaged archive: exit 5.
    coffer()
        .env("COFFER_NEW_PASSPHRASE", "archive secret")
        .arg("import")
        .arg(&archive)
        .assert()
        .code(6);
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&archive, bytes).unwrap();
    coffer()
        .env("COFFER_NEW_PASSPHRASE", "archive secret")
        .arg("import")
        .arg(&archive)
        .args(["--as", "third"])
        .assert()
        .code(5);
    coffer().args(["kv", "ls", "third"]).assert().code(9);
}

#[test]
fn records_reference_stored_files_from_the_command_line() {
    let (dir, coffer) = setup();
    coffer().args(["app", "add", "cases"]).assert().success();
    let photo = dir.path().join("photo.jpg");
    std::fs::write(&photo, b"not really a jpeg").unwrap();
    coffer()
        .args(["files", "put", "cases", "photo.jpg"])
        .arg(&photo)
        .args(["--type", "image/jpeg"])
        .assert()
        .success();
    coffer()
        .args([
            "records",
            "put",
            "cases",
            "visits",
            "v1",
            r#"{"note":"with a photo"}"#,
            "--file",
            "photo.jpg",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("with 1 file(s)"));
    let mut c = coffer();
    c.args(["records", "get", "cases", "visits", "v1"]);
    let record = json(c);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"not really a jpeg"));
    assert_eq!(record["files"][0]["name"], "photo.jpg");
    assert_eq!(record["files"][0]["size"], 17);
    assert_eq!(record["files"][0]["content_type"], "image/jpeg");
    assert_eq!(record["files"][0]["sha256"], sha.as_str());
    coffer()
        .args(["records", "get", "cases", "visits", "v1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "file photo.jpg (17 bytes, image/jpeg, sha256 {sha})"
        )));
    // A body-only edit keeps the file; a name not stored is refused.
    coffer()
        .args([
            "records",
            "put",
            "cases",
            "visits",
            "v1",
            r#"{"note":"edited"}"#,
        ])
        .assert()
        .success();
    let mut c = coffer();
    c.args(["records", "get", "cases", "visits", "v1"]);
    assert_eq!(json(c)["files"][0]["name"], "photo.jpg");
    coffer()
        .args([
            "records", "put", "cases", "visits", "v2", "{}", "--file", "gone.jpg",
        ])
        .assert()
        .code(9);
}
