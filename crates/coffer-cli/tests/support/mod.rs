//! Shared by the end-to-end tests that run a real `coffer serve`.

#![allow(dead_code)]

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["--json", "serve", "--listen", listen, "--dev-tls"])
        .args(["--database-url", database_url])
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
