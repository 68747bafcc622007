//! A server with one organization and enrolled devices that sync the app
//! `cases`, driven through the real `coffer` binary: shared by the end-to-end
//! tests of files sync and of server backup and restore.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

pub const PASSPHRASE: &str = "a device passphrase";
pub const ADMIN_PASSWORD: &str = "correct horse battery";

pub fn ok(out: Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// A server and its organization (owner `admin`, logged in), syncing the
/// app `cases`.
pub struct World {
    pub dir: tempfile::TempDir,
    pub server: super::DevServer,
    pub org: i64,
}

impl World {
    pub fn new(extra_serve_flags: &[String]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("server.db").display());
        let server_dir = dir.path().join("server");
        std::fs::create_dir_all(&server_dir).unwrap();
        let server = super::DevServer::start_with(&server_dir, &url, extra_serve_flags);
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
        ok(world.admin(&[
            "policy",
            "publish",
            "--org",
            &world.org.to_string(),
            "--version",
            "1",
            rules.to_str().unwrap(),
        ]));
        world
    }

    pub fn admin(&self, args: &[&str]) -> Output {
        let home = self.dir.path().join("admin");
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["--json", "admin", "--server", &self.server.base])
            .args(["--ca-cert", self.server.ca().to_str().unwrap()])
            .args(args)
            .env("XDG_DATA_HOME", &home)
            .env("HOME", &home)
            .env("COFFER_SETUP_TOKEN", &self.server.setup_token)
            .env("COFFER_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A new vault opened by the slot `slot`, enrolled through `server`
    /// (the server's own address, or a proxy's).
    pub fn device(&self, name: &str, slot: &str, server: &str) -> Device {
        let code = ok(self.admin(&["enroll-code", "--org", &self.org.to_string()]))["code"]
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
            server,
            "--code",
            &code,
            "--pin-sha256",
            &self.server.fingerprint,
        ]));
        ok(device.run(&["app", "add", "cases", "--allow", "records,files"]));
        Device {
            id: enrolled["device_id"].as_i64().unwrap(),
            ..device
        }
    }

    /// Binds `device`'s local author `author` to a new user of that name:
    /// until then its records are provisional and no other device sees
    /// them.
    pub fn verify(&self, device: &Device, author: &str) {
        let org = self.org.to_string();
        let user = ok(self.admin_with_password(&["add-user", "--org", &org, "--user", author]))
            ["user_id"]
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
            author,
            "--user-id",
            &user.to_string(),
        ]));
    }

    pub fn admin_with_password(&self, args: &[&str]) -> Output {
        let home = self.dir.path().join("admin");
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["--json", "admin", "--server", &self.server.base])
            .args(["--ca-cert", self.server.ca().to_str().unwrap()])
            .args(args)
            .env("XDG_DATA_HOME", &home)
            .env("HOME", &home)
            .env("COFFER_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("COFFER_NEW_PASSPHRASE", "a long server password")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// One enrolled device.
pub struct Device {
    pub space: PathBuf,
    pub id: i64,
}

impl Device {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        command
            .arg("--json")
            .args(args)
            .env("COFFER_SPACE", &self.space)
            .env("COFFER_PASSPHRASE", PASSPHRASE)
            .env_remove("COFFER_RECOVERY_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The names of the stored files of `cases`.
    pub fn file_names(&self) -> Vec<String> {
        ok(self.run(&["files", "ls", "cases"]))["files"]
            .as_array()
            .map(|files| {
                files
                    .iter()
                    .map(|f| f["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
