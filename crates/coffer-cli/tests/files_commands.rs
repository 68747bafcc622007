//! The files sync's commands end to end against a real `coffer serve
//! --dev-tls`: `coffer records put --file` on one device, `coffer sync`'s
//! summary of what went up and down (JSON and words), `coffer records get`
//! showing a record's files on the other device, and `coffer admin records
//! file` writing one of a record's files (refused for a name the record
//! does not reference).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

struct World {
    dir: tempfile::TempDir,
    server: support::DevServer,
    org: i64,
}

struct Device {
    space: PathBuf,
    id: i64,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("server.db").display());
        let server_dir = dir.path().join("server");
        std::fs::create_dir_all(&server_dir).unwrap();
        let server = support::DevServer::start(&server_dir, &url);
        let mut world = World {
            dir,
            server,
            org: 0,
        };
        world.org = ok(world.admin(&["setup", "--organization", "Acme", "--owner", "admin"]))
            ["organization_id"]
            .as_i64()
            .unwrap();
        ok(world.admin(&["login", "--user", "admin"]));
        let rules = world.dir.path().join("rules.json");
        std::fs::write(
            &rules,
            json!({"sync": ["cases"], "passphrase": {"min_length": 8},
                   "min_kdf": {"memory_kib": 8, "iterations": 1, "parallelism": 1}})
            .to_string(),
        )
        .unwrap();
        let org = world.org.to_string();
        ok(world.admin(&[
            "policy",
            "publish",
            "--org",
            &org,
            "--version",
            "1",
            rules.to_str().unwrap(),
        ]));
        world
    }

    fn admin_command(&self, args: &[&str], json: bool) -> Command {
        let home = self.dir.path().join("admin");
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        if json {
            command.arg("--json");
        }
        command
            .args(["admin", "--server", &self.server.base])
            .args(["--ca-cert", self.server.ca().to_str().unwrap()])
            .args(args)
            .env("XDG_DATA_HOME", &home)
            .env("HOME", &home)
            .env("COFFER_SETUP_TOKEN", &self.server.setup_token)
            .env("COFFER_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("COFFER_NEW_PASSPHRASE", "a long server password")
            .stdin(Stdio::null());
        command
    }

    fn admin(&self, args: &[&str]) -> Output {
        self.admin_command(args, true).output().unwrap()
    }

    fn device(&self, name: &str, slot: &str) -> Device {
        let org = self.org.to_string();
        let code = ok(self.admin(&["enroll-code", "--org", &org]))["code"]
            .as_str()
            .unwrap()
            .to_owned();
        let device = Device {
            space: self.dir.path().join(name),
            id: 0,
        };
        ok(device.run(&["init", "--name", slot, "--kdf-time-ms", "0"]));
        let enrolled = ok(device.run(&[
            "enroll",
            "--server",
            &self.server.base,
            "--code",
            &code,
            "--pin-sha256",
            &self.server.fingerprint,
        ]));
        ok(device.run(&["app", "add", "cases", "--allow", "records,files"]));
        let device = Device {
            id: enrolled["device_id"].as_i64().unwrap(),
            ..device
        };
        // Bound to a user: its records reach the other devices.
        let user = ok(self.admin(&["add-user", "--org", &org, "--user", slot]))["user_id"]
            .as_i64()
            .unwrap();
        ok(self.admin(&[
            "authors",
            "bind",
            "--org",
            &org,
            "--device",
            &device.id.to_string(),
            "--author",
            slot,
            "--user-id",
            &user.to_string(),
        ]));
        device
    }
}

impl Device {
    fn command(&self, args: &[&str], json: bool) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        if json {
            command.arg("--json");
        }
        command
            .args(args)
            .env("COFFER_SPACE", &self.space)
            .env("COFFER_PASSPHRASE", PASSPHRASE)
            .env_remove("COFFER_RECOVERY_KEY")
            .env_remove("COFFER_VAULT")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args, true).output().unwrap()
    }

    fn text(&self, args: &[&str]) -> String {
        let out = self.command(args, false).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

#[test]
fn a_records_file_goes_up_comes_down_and_an_admin_can_fetch_it() {
    let world = World::new();
    let a = world.device("tablet-a", "alice");
    let b = world.device("tablet-b", "bob");

    let photo: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = hex::encode(Sha256::digest(&photo));
    let input = world.dir.path().join("photo.jpg");
    std::fs::write(&input, &photo).unwrap();
    ok(a.run(&[
        "files",
        "put",
        "cases",
        "photo.jpg",
        input.to_str().unwrap(),
        "--type",
        "image/jpeg",
    ]));
    ok(a.run(&[
        "records",
        "put",
        "cases",
        "visits",
        "v-1",
        r#"{"note": "with a photo"}"#,
        "--file",
        "photo.jpg",
    ]));

    let round = ok(a.run(&["sync"]));
    let files = &round["apps"][0]["files"];
    assert_eq!(files["uploaded"], 1, "{round}");
    assert_eq!(files["bytes_uploaded"], photo.len());
    assert_eq!(files["problems"], json!([]));

    let text = b.text(&["sync"]);
    assert!(
        text.contains("files: 0 uploaded (0 B), 1 downloaded (292.97 KiB)"),
        "{text}"
    );
    let record = ok(b.run(&["records", "get", "cases", "visits", "v-1"]));
    assert_eq!(record["body"]["note"], "with a photo");
    assert_eq!(
        record["files"],
        json!([{"name": "photo.jpg", "sha256": sha, "size": photo.len(), "content_type": "image/jpeg"}])
    );
    let shown = b.text(&["records", "get", "cases", "visits", "v-1"]);
    assert!(shown.contains(&format!(
        "file photo.jpg (300000 bytes, image/jpeg, sha256 {sha})"
    )));
    let output = world.dir.path().join("on-b.jpg");
    ok(b.run(&[
        "files",
        "get",
        "cases",
        "photo.jpg",
        "--out",
        output.to_str().unwrap(),
    ]));
    assert!(std::fs::read(&output).unwrap() == photo);
    let status = ok(b.run(&["sync", "status"]));
    assert_eq!(status["apps"][0]["downloads_queued"], 0);

    // The admin's copy, through the server's audited fetch.
    let org = world.org.to_string();
    let fetched = world.dir.path().join("admin-copy.jpg");
    let written = ok(world.admin(&[
        "records",
        "file",
        "--org",
        &org,
        "cases",
        "visits",
        "v-1",
        "photo.jpg",
        "--out",
        fetched.to_str().unwrap(),
    ]));
    assert_eq!(written["bytes"], photo.len());
    assert_eq!(written["sha256"], sha.as_str());
    assert!(std::fs::read(&fetched).unwrap() == photo);
    let missing = world.admin(&[
        "records",
        "file",
        "--org",
        &org,
        "cases",
        "visits",
        "v-1",
        "other.jpg",
        "--out",
        world.dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(9));
    assert!(!world.dir.path().join("nothing").exists());
}
