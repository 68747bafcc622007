//! Shared by the end-to-end tests that run a real `coffer serve`.

#![allow(dead_code)]

pub mod proxy;
pub mod world;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `coffer serve --dev-tls` on `listen` with `database_url`, its
/// data directory (and the development certificate) under `dir`, and no
/// master key from the environment; returns the process and the JSON line
/// it prints once it listens (address, certificate fingerprint, setup
/// token).
pub fn spawn_dev_tls_serve(
    dir: &Path,
    listen: &str,
    database_url: &str,
) -> (Child, serde_json::Value) {
    spawn_dev_tls_serve_with(dir, listen, database_url, &[])
}

/// [`spawn_dev_tls_serve`] with more flags for `coffer serve`.
pub fn spawn_dev_tls_serve_with(
    dir: &Path,
    listen: &str,
    database_url: &str,
    extra: &[String],
) -> (Child, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["--json", "serve", "--listen", listen, "--dev-tls"])
        .args(["--database-url", database_url])
        .args(extra)
        .env("XDG_DATA_HOME", dir)
        .env("HOME", dir)
        .env_remove("COFFER_MASTER_KEY")
        .env_remove("COFFER_MASTER_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, serde_json::from_str(&line).unwrap())
}

/// A `coffer serve --dev-tls` process on `database_url`, its data
/// directory under `dir`; stopped when dropped.
pub struct DevServer {
    child: Child,
    dir: std::path::PathBuf,
    database_url: String,
    extra: Vec<String>,
    pub base: String,
    pub fingerprint: String,
    pub setup_token: String,
}

impl DevServer {
    pub fn start(dir: &Path, database_url: &str) -> DevServer {
        DevServer::start_with(dir, database_url, &[])
    }

    /// [`DevServer::start`] with more flags for `coffer serve`.
    pub fn start_with(dir: &Path, database_url: &str, extra: &[String]) -> DevServer {
        DevServer::start_at(dir, "127.0.0.1:0", database_url, extra)
    }

    /// [`DevServer::start_with`] on a given address (`127.0.0.1:0`: any).
    pub fn start_at(dir: &Path, listen: &str, database_url: &str, extra: &[String]) -> DevServer {
        let (child, started) = spawn_dev_tls_serve_with(dir, listen, database_url, extra);
        DevServer {
            child,
            dir: dir.to_owned(),
            database_url: database_url.to_owned(),
            extra: extra.to_vec(),
            base: started["listening"].as_str().unwrap().to_owned(),
            fingerprint: started["tls_sha256"].as_str().unwrap().to_owned(),
            setup_token: started["setup_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// The development certificate, for clients that trust it as a CA.
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("coffer-server/dev-tls-cert.pem")
    }

    /// The process id of `coffer serve`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base.trim_start_matches("https://").parse().unwrap()
    }

    /// SIGKILL: no drain, whatever it was doing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Killed, then started again on the same address, certificate, master
    /// key and database.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.base.trim_start_matches("https://").to_owned();
        let (child, started) =
            spawn_dev_tls_serve_with(&self.dir, &listen, &self.database_url, &self.extra);
        assert_eq!(started["tls_sha256"], self.fingerprint.as_str());
        self.child = child;
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.kill();
    }
}
