//! `coffer serve` from the command line: starts on an empty SQLite file,
//! shows a setup token once, answers /healthz, refuses plain HTTP off
//! loopback.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

fn get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serve_starts_with_a_setup_token_and_answers_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("server.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args([
            "--json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(started["storage"], "sqlite");
    assert_eq!(started["setup_token"].as_str().unwrap().len(), 48);
    let addr = started["listening"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let health = get(&addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"storage\":\"sqlite\""), "{health}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn serve_refuses_plain_http_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("server.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["serve", "--listen", "0.0.0.0:0", "--database-url", &db])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only loopback"));
}

#[test]
fn serve_with_dev_tls_prints_the_fingerprint_to_pin() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("server.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args([
            "--json",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--dev-tls",
            "--database-url",
            &db,
        ])
        .env("XDG_DATA_HOME", dir.path())
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let started: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(started["listening"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    let fingerprint = started["tls_sha256"].as_str().unwrap();
    assert_eq!(fingerprint.len(), 95, "{fingerprint}");
    assert!(dir.path().join("coffer-server/dev-tls-cert.pem").is_file());
}

/// `coffer admin` against a real `coffer serve` process: setup, login,
/// users, an enrollment code, devices, usage, the audit check, logout.
#[test]
fn admin_commands_drive_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("server.db").display());
    let mut server = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args([
            "--json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started: serde_json::Value = serde_json::from_str(&line).unwrap();
    let base = started["listening"].as_str().unwrap().to_owned();
    let token = started["setup_token"].as_str().unwrap().to_owned();
    let admin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["--json", "admin", "--server", &base])
            .args(args)
            .env("XDG_DATA_HOME", dir.path())
            .env("HOME", dir.path())
            .env("COFFER_SETUP_TOKEN", &token)
            .env("COFFER_ADMIN_PASSWORD", "correct horse battery")
            .env("COFFER_NEW_PASSPHRASE", "another long password")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let json = |out: std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let set_up = json(admin(&[
        "setup",
        "--organization",
        "Acme",
        "--owner",
        "alice",
    ]));
    let org = set_up["organization_id"].as_i64().unwrap().to_string();
    // Before login: a clear usage error.
    assert_eq!(admin(&["me"]).status.code(), Some(2));
    json(admin(&["login", "--user", "alice"]));
    let session = std::fs::read(dir.path().join("coffer-admin/session")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("coffer-admin/session"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(json(admin(&["me"]))["user"], "alice");
    let added = json(admin(&[
        "add-user", "--org", &org, "--user", "bob", "--role", "auditor",
    ]));
    assert!(added["user_id"].as_i64().is_some());
    let code = json(admin(&["enroll-code", "--org", &org, "--valid-for", "1h"]));
    assert_eq!(code["code"].as_str().unwrap().len(), 48);
    assert_eq!(
        json(admin(&["devices", "--org", &org]))["devices"],
        serde_json::json!([])
    );
    assert!(json(admin(&["usage", "--org", &org, "--by", "user"]))["rows"].is_array());
    assert_eq!(json(admin(&["audit", "verify"]))["intact"], true);
    // Another organization's id: not found (exit 9).
    assert_eq!(admin(&["devices", "--org", "999"]).status.code(), Some(9));
    json(admin(&["logout"]));
    assert!(!dir.path().join("coffer-admin/session").exists());
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(!session.is_empty());
}
