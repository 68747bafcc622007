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
    // The first start made the master key, readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join("coffer-server/master.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64);
    }
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
        .env("XDG_DATA_HOME", dir.path())
        .env("HOME", dir.path())
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
        json(admin(&["device", "list", "--org", &org]))["devices"],
        serde_json::json!([])
    );
    device_admin(&admin, &json, &base, &org, dir.path());
    assert!(json(admin(&["usage", "--org", &org, "--by", "user"]))["rows"].is_array());
    assert_eq!(json(admin(&["audit", "verify"]))["intact"], true);
    let ours = json(admin(&["audit", "verify", "--org", &org]));
    assert_eq!(ours["organization_id"].to_string(), org);
    // Organizations as tenants: alice, who set the server up, operates it.
    assert_eq!(json(admin(&["me"]))["operator"], true);
    let beta = json(admin(&[
        "org", "create", "--name", "Beta", "--owner", "bea",
    ]));
    let beta = beta["organization_id"].as_i64().unwrap().to_string();
    let listed = json(admin(&["org", "list"]));
    assert_eq!(listed["organizations"][1]["name"], "Beta");
    let suspended = json(admin(&["org", "suspend", &beta]));
    assert_eq!(suspended["suspended"], true);
    let wrong = admin(&["org", "delete", &beta, "--confirm-name", "Acme"]);
    assert_eq!(wrong.status.code(), Some(2), "a wrong name deletes nothing");
    json(admin(&["org", "show", &beta]));
    let deleted = json(admin(&["org", "delete", &beta, "--confirm-name", "Beta"]));
    assert_eq!(deleted["name"], "Beta");
    assert_eq!(admin(&["org", "show", &beta]).status.code(), Some(9));
    let operators = json(admin(&["operator", "list"]));
    assert_eq!(operators["operators"][0]["user"], "alice");
    let last = admin(&["operator", "remove", "1"]);
    assert_eq!(
        last.status.code(),
        Some(11),
        "the last operator stays (conflict)"
    );
    // Another organization's id: not found (exit 9).
    assert_eq!(
        admin(&["device", "list", "--org", "999"]).status.code(),
        Some(9)
    );
    json(admin(&["logout"]));
    assert!(!dir.path().join("coffer-admin/session").exists());
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(!session.is_empty());
}

/// Policies, device wipes and data export through `coffer admin`, with a
/// device enrolled and delivering over the API.
fn device_admin(
    admin: &dyn Fn(&[&str]) -> std::process::Output,
    json: &dyn Fn(std::process::Output) -> serde_json::Value,
    base: &str,
    org: &str,
    dir: &std::path::Path,
) {
    use serde_json::json;
    let rules = dir.join("rules.json");
    std::fs::write(
        &rules,
        r#"{"passphrase": {"min_length": 12}, "refuse_debugger": true}"#,
    )
    .unwrap();
    let rules_path = rules.to_str().unwrap();
    let published = json(admin(&[
        "policy",
        "publish",
        "--org",
        org,
        "--version",
        "1",
        rules_path,
    ]));
    assert_eq!(published["published"], 1);
    // Versions only go up: a conflict (exit 11).
    let again = admin(&[
        "policy",
        "publish",
        "--org",
        org,
        "--version",
        "1",
        rules_path,
    ]);
    assert_eq!(again.status.code(), Some(11));
    let shown = json(admin(&["policy", "show", "--org", org]));
    assert_eq!(shown["signature_valid"], true);
    assert_eq!(shown["rules"]["passphrase"]["min_length"], 12);
    assert_eq!(shown["rules"]["refuse_debugger"], true);

    let http = reqwest::blocking::Client::new();
    let code = json(admin(&["enroll-code", "--org", org]))["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let enrolled: serde_json::Value = http
        .post(format!("{base}/v1/enroll"))
        .json(&json!({"code": code, "name": "tablet"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let device = enrolled["device_id"].as_i64().unwrap().to_string();
    let token = enrolled["device_token"].as_str().unwrap();
    let r = http
        .post(format!("{base}/v1/device/data"))
        .header("x-auth-token", token)
        .json(&json!({"batch_id": "cli-batch-1", "readings": [
            {"at": 1_700_000_000, "name": "temp.c", "value": 21},
            {"at": 1_700_000_060, "name": "temp.c", "value": 22}]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let ordered = json(admin(&[
        "device", "wipe", "--org", org, &device, "--user", "bob", "--yes",
    ]));
    assert_eq!(ordered["scope"], "user");
    let order = ordered["id"].as_i64().unwrap().to_string();
    let wipes = json(admin(&["device", "wipes", "--org", org, &device]));
    assert_eq!(wipes["orders"][0]["state"], "pending");
    json(admin(&[
        "device",
        "cancel-wipe",
        "--org",
        org,
        &device,
        &order,
    ]));
    let wipes = json(admin(&["device", "wipes", "--org", org, &device]));
    assert_eq!(wipes["orders"][0]["state"], "cancelled");
    let listed = json(admin(&["device", "list", "--org", org]));
    assert_eq!(listed["devices"][0]["pending_wipes"], 0);

    let page = json(admin(&["data", "query", "--org", org, "--limit", "1"]));
    assert_eq!(page["readings"].as_array().unwrap().len(), 1);
    assert!(page["next_after"].is_i64());
    let csv = dir.join("export.csv");
    let exported = json(admin(&[
        "data",
        "export",
        "--org",
        org,
        "--device",
        &device,
        "--out",
        csv.to_str().unwrap(),
    ]));
    assert_eq!(exported["exported"], 2);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("id,device_id,at,name,value,received_at\n"));
    assert_eq!(text.lines().count(), 3);
    json(admin(&["device", "revoke", "--org", org, &device]));
    let listed = json(admin(&["device", "list", "--org", org]));
    assert_eq!(listed["devices"][0]["revoked"], true);
}

/// A database under one master key refuses a server with another: a key
/// file lost and remade by default is refused, and not left behind.
#[test]
fn serve_refuses_a_database_under_another_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("server.db").display());
    let serve = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.args([
            "--json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
        ])
        .env("XDG_DATA_HOME", dir.path())
        .env("HOME", dir.path())
        .env_remove("COFFER_MASTER_KEY")
        .env_remove("COFFER_MASTER_KEY_FILE");
        c
    };
    starts_and_stops(serve());
    let key = dir.path().join("coffer-server/master.key");
    std::fs::remove_file(&key).unwrap();
    let out = serve().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The refusal itself (the last line: the JSON error), not the log's
    // warning about the key's default place above it.
    let refusal: serde_json::Value =
        serde_json::from_str(stderr.lines().last().unwrap_or_default()).unwrap();
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(message.contains("is under master key"), "{stderr}");
    assert!(!key.exists(), "the useless new key is removed");
}

/// A first start that fails after the database was put under its new key
/// (the port is taken) keeps the key: the next start serves.
#[test]
fn a_key_made_for_a_database_is_kept_when_a_later_step_fails() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("server.db").display());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let serve = |listen: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.args(["--json", "serve", "--listen", listen, "--database-url", &db])
            .env("XDG_DATA_HOME", dir.path())
            .env("HOME", dir.path())
            .env_remove("COFFER_MASTER_KEY")
            .env_remove("COFFER_MASTER_KEY_FILE");
        c
    };
    let out = serve(&port).output().unwrap();
    assert!(!out.status.success());
    let key = dir.path().join("coffer-server/master.key");
    assert!(key.exists(), "the database is under this key now");
    drop(taken);
    starts_and_stops(serve("127.0.0.1:0"));
}

/// Starts `serve`, waits until it listens, stops it.
fn starts_and_stops(mut serve: Command) {
    let mut child = serve
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}
