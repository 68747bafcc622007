//! `coffer serve` stopped the way systemd and container runtimes stop it:
//! SIGTERM (as SIGINT) lets the request in flight finish with its normal
//! answer, closes the database (its WAL checkpointed), and exits 0 saying
//! it stopped; over plain HTTP and over TLS. Its default data directory is
//! private.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A connection to the server: plain TCP or TLS (pinned to the development
/// certificate).
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(addr: &str, ca: Option<&Path>) -> Box<dyn Stream> {
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let Some(ca) = ca else {
        return Box::new(tcp);
    };
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let ip: std::net::IpAddr = addr.rsplit_once(':').unwrap().0.parse().unwrap();
    let tls = rustls::ClientConnection::new(Arc::new(config), ip.into()).unwrap();
    Box::new(rustls::StreamOwned::new(tls, tcp))
}

/// Everything the server sends until it closes the connection.
fn read_all(stream: &mut dyn Stream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The server process, killed if the test fails before it exits.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Served {
    /// Its exit status, within `limit`.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn stopped_by(signal_name: &str, tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
    command
        .args(["--json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--database-url", &format!("sqlite://{}", db.display())]);
    if tls {
        command.arg("--dev-tls");
    }
    let child = command
        .env("XDG_DATA_HOME", dir.path())
        .env("HOME", dir.path())
        .env("COFFER_LOG", "info")
        .env_remove("COFFER_MASTER_KEY")
        .env_remove("COFFER_MASTER_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Served(child);
    let mut stderr = child.0.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let started: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = started["listening"]
        .as_str()
        .unwrap()
        .split_once("://")
        .unwrap()
        .1
        .to_owned();
    let token = started["setup_token"].as_str().unwrap();
    // The default data directory (the master key, the certificate) is the
    // server's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("coffer-server"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    // A setup request in flight: its body half sent when the signal comes.
    let body = serde_json::json!({
        "setup_token": token,
        "organization": "Acme Relief",
        "owner": "alice",
        "password": "correct horse battery",
    })
    .to_string();
    let ca = dir.path().join("coffer-server/dev-tls-cert.pem");
    let mut stream = connect(&addr, tls.then_some(ca.as_path()));
    write!(
        stream,
        "POST /v1/setup HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..body.len() / 2]
    )
    .unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    signal(&child.0, signal_name);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the server exited with a request in flight"
    );
    stream
        .write_all(&body.as_bytes()[body.len() / 2..])
        .unwrap();
    stream.flush().unwrap();
    let answer = read_all(&mut *stream);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains("organization_id"), "{answer}");

    let status = child.wait(Duration::from_secs(20));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let logs = logs.join().unwrap();
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(rest.contains("\"stopped\": true"), "{rest}");
    assert!(logs.contains("draining"), "{logs}");
    assert!(logs.contains("storage closed"), "{logs}");
    // The database holds the setup, and the WAL was checkpointed into it.
    let wal = dir.path().join("server.db-wal");
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let orgs: i64 = conn
        .query_row("SELECT count(*) FROM organizations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(orgs, 1);
}

#[test]
fn sigterm_drains_plain_http_and_closes_the_database() {
    stopped_by("TERM", false);
}

#[test]
fn sigterm_drains_tls_and_closes_the_database() {
    stopped_by("TERM", true);
}

#[test]
fn sigint_drains_too() {
    stopped_by("INT", false);
}

#[test]
fn trusted_proxies_are_explained_and_checked() {
    let help = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--trusted-proxy <ADDR[/PREFIX]>"), "{help}");
    assert!(help.contains("--trusted-proxy-header <HEADER>"), "{help}");
    for (value, hint) in [
        ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
        ("proxy.local", "is not an IP address"),
        ("10.0.0.0/33", "prefix length"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["serve", "--trusted-proxy", value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(hint), "{value}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["serve", "--trusted-proxy-header", "forwarded"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a header without a proxy");
}

/// The log (issue 16, item 12): plain text without colour codes when
/// standard error is not a terminal; with `--log-format json`, one JSON
/// object a line that a collector can read, level and message included.
#[test]
fn the_log_is_plain_off_a_terminal_and_json_when_asked() {
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("server.db");
        let child = Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["--json", "serve", "--listen", "127.0.0.1:0"])
            .args(["--database-url", &format!("sqlite://{}", db.display())])
            .args(["--log-format", format])
            .env("XDG_DATA_HOME", dir.path())
            .env("HOME", dir.path())
            .env_remove("COFFER_LOG")
            .env_remove("COFFER_LOG_FORMAT")
            .env_remove("COFFER_MASTER_KEY")
            .env_remove("COFFER_MASTER_KEY_FILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = Served(child);
        let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.contains("listening"), "{line}");
        signal(&child.0, "TERM");
        let status = child.wait(Duration::from_secs(20));
        assert!(status.success());
        let mut logs = String::new();
        child
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        assert!(
            !logs.contains('\x1b'),
            "{format}: colour codes off a terminal: {logs}"
        );
        assert!(logs.contains("draining"), "{format}: {logs}");
        if format == "json" {
            for line in logs.lines() {
                let entry: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(entry["level"].is_string(), "{line}");
                assert!(entry["fields"]["message"].is_string(), "{line}");
            }
        }
    }
    // A format it does not know: a usage error naming the two.
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["serve", "--log-format", "xml"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("json"));
}
