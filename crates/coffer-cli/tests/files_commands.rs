//! The files sync's commands end to end against a real `coffer serve
//! --dev-tls`: `coffer records put --file` on one device, `coffer sync`'s
//! summary of what went up and down (JSON and words), `coffer records get`
//! showing a record's files on the other device, and `coffer admin records
//! file` writing one of a record's files (refused for a name the record
//! does not reference). On SQLite with the default blob directory, and
//! on PostgreSQL with a real S3-compatible server (`s3s-fs`) configured
//! through `coffer serve`'s own flags and a credentials file.

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
    /// A server on `url` (SQLite in the world's directory if `None`),
    /// started with `serve_flags`.
    fn new(url: Option<String>, serve_flags: &[String]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let url =
            url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("server.db").display()));
        let server_dir = dir.path().join("server");
        std::fs::create_dir_all(&server_dir).unwrap();
        let server = support::DevServer::start_with(&server_dir, &url, serve_flags);
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
    records_file_round_trip(&World::new(None, &[]));
}

#[test]
fn the_same_on_postgres_and_s3_through_the_serve_flags() {
    let pg = coffer_server::testing::Postgres::start();
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.database("files_e2e"));
    let s3 = coffer_server::testing::S3Server::start("coffer-files");
    let credentials = tempfile::tempdir().unwrap();
    let file = credentials.path().join("s3-credentials");
    std::fs::write(
        &file,
        format!(
            "aws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key,
            s3.secret_key()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let flags: Vec<String> = [
        "--s3-bucket",
        &s3.bucket,
        "--s3-endpoint",
        &s3.endpoint(),
        "--s3-credentials-file",
        file.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let world = World::new(Some(url), &flags);
    records_file_round_trip(&world);
    // The bytes are in the bucket, sealed: objects exist, and none holds
    // the photo's bytes.
    let mut objects = 0;
    let photo = photo();
    let mut stack = vec![s3.root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                objects += 1;
                let stored = std::fs::read(&path).unwrap();
                assert!(
                    !stored.windows(64).any(|w| w == &photo[1000..1064]),
                    "{} holds the photo in the clear",
                    path.display()
                );
            }
        }
    }
    assert!(objects > 0, "nothing reached the bucket");
    assert!(
        !world.dir.path().join("server/coffer-server/blobs").exists(),
        "the local blob directory was used beside S3"
    );
}

fn photo() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn records_file_round_trip(world: &World) {
    let a = world.device("tablet-a", "alice");
    let b = world.device("tablet-b", "bob");

    let photo = photo();
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
