//! `--json` errors are pure JSON: nothing of SQLCipher's own log (which it
//! writes to stderr by default) comes before or after the error object, even
//! when SQLCipher fails a page's HMAC.

#![allow(clippy::unwrap_used)]

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

fn coffer(space: &Path) -> Command {
    let mut c = Command::cargo_bin("coffer").unwrap();
    c.env("COFFER_SPACE", space)
        .env("COFFER_PASSPHRASE", "pw for json errors")
        .env_remove("COFFER_VAULT")
        .env_remove("COFFER_SQLCIPHER_LOG");
    c
}

/// A vault with app `notes` holding a table; returns its space and the
/// app's database file.
fn vault_with_app(dir: &Path) -> (PathBuf, PathBuf) {
    let space = dir.join("space");
    coffer(&space)
        .args(["init", "--kdf-time-ms", "0"])
        .assert()
        .success();
    coffer(&space)
        .args(["app", "add", "notes", "--allow", "sql"])
        .assert()
        .success();
    coffer(&space)
        .args(["sql", "notes", "CREATE TABLE t (a TEXT)"])
        .assert()
        .success();
    let data = space.join("default").join("data");
    let db = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "db"))
        .unwrap();
    (space, db)
}

/// Flips bytes inside the first page's encrypted content (past its salt).
fn tamper(db: &Path) {
    let mut file = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    file.seek(SeekFrom::Start(200)).unwrap();
    file.write_all(&[0xff; 4]).unwrap();
}

/// Runs `args` with `--json`, expects exit 5 and returns (stdout, stderr).
fn failing_json(space: &Path, args: &[&str]) -> (String, String) {
    let out = coffer(space)
        .arg("--json")
        .args(args)
        .assert()
        .code(5)
        .get_output()
        .clone();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn assert_pure_json_error(stdout: &str, stderr: &str) {
    assert!(stdout.is_empty(), "stdout: {stdout}");
    assert!(
        !stderr.to_ascii_lowercase().contains("sqlcipher"),
        "stderr: {stderr}"
    );
    // The whole of stderr is one JSON value, the error object.
    let error: Value = serde_json::from_str(stderr)
        .unwrap_or_else(|e| panic!("stderr is not pure JSON ({e}): {stderr}"));
    assert_eq!(error["error"]["code"], "database_corrupt", "{error}");
    assert_eq!(error["error"]["exit_code"], 5);
}

#[test]
fn a_tampered_app_database_gives_pure_json_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (space, db) = vault_with_app(dir.path());
    tamper(&db);
    let (stdout, stderr) = failing_json(&space, &["sql", "notes", "SELECT a FROM t"]);
    assert_pure_json_error(&stdout, &stderr);
}

#[test]
fn a_tampered_catalog_gives_pure_json_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (space, _) = vault_with_app(dir.path());
    tamper(&space.join("default").join("catalog.db"));
    let (stdout, stderr) = failing_json(&space, &["app", "ls"]);
    assert_pure_json_error(&stdout, &stderr);
}

#[test]
fn coffer_sqlcipher_log_turns_sqlcipher_s_log_back_on_for_diagnosis() {
    let dir = tempfile::tempdir().unwrap();
    let (space, db) = vault_with_app(dir.path());
    tamper(&db);
    let out = coffer(&space)
        .env("COFFER_SQLCIPHER_LOG", "error")
        .args(["--json", "sql", "notes", "SELECT a FROM t"])
        .assert()
        .code(5)
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("hmac check failed"), "stderr: {stderr}");
}

/// With `--json`, a command line clap refuses is the same JSON error
/// object as every other failure (issue 16, item 8); without it, clap's
/// own words; `--help` is help either way.
#[test]
fn argument_errors_are_json_under_json() {
    let dir = tempfile::tempdir().unwrap();
    let space = dir.path().join("space");
    for args in [
        vec!["--json", "enroll", "--bogus"],
        vec!["--json", "frobnicate"],
        vec!["--json", "serve", "--listen", "not-an-address"],
    ] {
        let out = coffer(&space).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8(out.stderr).unwrap();
        let error: Value = serde_json::from_str(stderr.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON object ({e}): {stderr}"));
        assert_eq!(error["error"]["code"], "usage");
        assert_eq!(error["error"]["exit_code"], 2);
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
        assert!(!stderr.contains('\x1b'));
    }
    // Every line of clap's message, not only its first.
    let out = coffer(&space)
        .args(["--json", "admin", "add-user"])
        .output()
        .unwrap();
    let error: Value = serde_json::from_slice(&out.stderr).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--org") && message.contains("--user"),
        "{message}"
    );
    // A command left out is a refusal too.
    let out = coffer(&space).args(["--json", "admin"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let error: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(error["error"]["code"], "usage");
    let out = coffer(&space).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: unrecognized subcommand"));
    let out = coffer(&space).args(["--json", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: coffer"));
}
