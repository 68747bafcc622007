//! `coffer serve --mqtt-broker …` managing a real Mosquitto 2 broker, and
//! `coffer deliver --mqtt` on an enrolled device: the readings arrive over
//! MQTT and the JSON report says so; with the broker stopped they go over
//! HTTPS and the report says why. And the flags that would weaken it are
//! refused before the server starts: a plain `mqtt://` broker off
//! loopback, a password file other users can read.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use coffer_server::testing::Mosquitto;
use serde_json::Value;

const PASSPHRASE: &str = "a device passphrase";
const ADMIN_PASSWORD: &str = "correct horse battery";

fn ok(out: Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The broker's certificate and the admin's password in files (0600).
fn broker_files(dir: &Path, broker: &Mosquitto) -> (PathBuf, PathBuf) {
    let cert = dir.join("broker.pem");
    std::fs::write(&cert, &broker.certificate_pem).unwrap();
    let password = dir.join("mqtt-admin-password");
    std::fs::write(&password, format!("{}\n", broker.admin_password())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, password)
}

fn mqtt_flags(broker: &Mosquitto, cert: &Path, password: &Path) -> Vec<String> {
    vec![
        "--mqtt-broker".into(),
        format!("mqtts://127.0.0.1:{}", broker.port),
        "--mqtt-broker-cert".into(),
        cert.display().to_string(),
        "--mqtt-admin-password-file".into(),
        password.display().to_string(),
        "--mqtt-session-id".into(),
        "coffer-cli-test".into(),
    ]
}

#[test]
fn coffer_deliver_mqtt_publishes_through_the_managed_broker_and_falls_back_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start();
    let (cert, password) = broker_files(dir.path(), &broker);
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let server =
        support::DevServer::start_with(&server_dir, &url, &mqtt_flags(&broker, &cert, &password));
    let home = dir.path().join("admin");
    let admin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .arg("--json")
            .args(["admin", "--server", &server.base])
            .args(["--ca-cert", server.ca().to_str().unwrap()])
            .args(args)
            .env("XDG_DATA_HOME", &home)
            .env("HOME", &home)
            .env("COFFER_SETUP_TOKEN", &server.setup_token)
            .env("COFFER_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("COFFER_NEW_PASSPHRASE", "a long server password")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let org = ok(admin(&[
        "setup",
        "--organization",
        "Acme",
        "--owner",
        "admin",
    ]))["organization_id"]
        .as_i64()
        .unwrap()
        .to_string();
    ok(admin(&["login", "--user", "admin"]));
    let code = ok(admin(&["enroll-code", "--org", &org]))["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let space = dir.path().join("device");
    let device = |args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.arg("--json")
            .args(args)
            .env("COFFER_SPACE", &space)
            .env("COFFER_PASSPHRASE", PASSPHRASE)
            .env_remove("COFFER_VAULT");
        match stdin {
            None => c.stdin(Stdio::null()).output().unwrap(),
            Some(text) => {
                let mut child = c
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            }
        }
    };
    ok(device(
        &["init", "--name", "field", "--kdf-time-ms", "0"],
        None,
    ));
    ok(device(
        &[
            "enroll",
            "--server",
            &server.base,
            "--code",
            &code,
            "--pin-sha256",
            &server.fingerprint,
        ],
        None,
    ));
    let stored = || {
        ok(admin(&["data", "query", "--org", &org, "--name", "temp.c"]))["readings"]
            .as_array()
            .unwrap()
            .len()
    };
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while stored() != n {
            assert!(Instant::now() < deadline, "{} readings, not {n}", stored());
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let r = ok(device(
        &["deliver", "--mqtt", "-"],
        Some(
            r#"[{"at": 1795000000, "name": "temp.c", "value": 21}, {"at": 1795000060, "name": "temp.c", "value": 22}]"#,
        ),
    ));
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(r["over_mqtt"], 1, "{r}");
    assert_eq!(r["fell_back"], Value::Null, "{r}");
    wait_for(2);

    // The broker goes away: the next batch goes over HTTPS, and says why.
    broker.stop();
    let r = ok(device(
        &["deliver", "--mqtt", "-"],
        Some(r#"{"at": 1795000120, "name": "temp.c", "value": 23}"#),
    ));
    assert_eq!(
        (r["delivered"].as_i64(), r["over_mqtt"].as_i64()),
        (Some(1), Some(0)),
        "{r}"
    );
    assert!(r["fell_back"].as_str().unwrap().contains("broker"), "{r}");
    assert_eq!(stored(), 3);
}

#[test]
fn flags_that_would_weaken_mqtt_are_refused_before_the_server_starts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let (cert, password) = broker_files(dir.path(), &broker);
    let serve = |extra: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["serve", "--listen", "127.0.0.1:0", "--dev-tls"])
            .args([
                "--database-url",
                &format!("sqlite://{}", dir.path().join("s.db").display()),
            ])
            .args(extra)
            .env("XDG_DATA_HOME", dir.path())
            .env("HOME", dir.path())
            .env_remove("COFFER_MQTT_ADMIN_PASSWORD")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let refused = |extra: Vec<String>, says: &str| {
        let out = serve(&extra);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
        assert!(!stderr.contains(broker.admin_password()), "{stderr}");
    };
    let mut flags = mqtt_flags(&broker, &cert, &password);
    flags[1] = "mqtt://broker.example:1883".into();
    refused(flags, "only to a loopback address");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(mqtt_flags(&broker, &cert, &password), "chmod 600");
    let mut flags = mqtt_flags(&broker, &cert, &password);
    flags.truncate(4);
    refused(flags, "COFFER_MQTT_ADMIN_PASSWORD");
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A session id that would make coffer remake the admin's own client.
    let mut flags = mqtt_flags(&broker, &cert, &password);
    flags[7] = "admin".into();
    refused(flags, "must not be the admin user");
}
