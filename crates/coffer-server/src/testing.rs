//! Test support (feature `test-support`): a throwaway PostgreSQL server
//! from Debian's packages, in a temporary directory on a free loopback
//! port, stopped when dropped. Used by the server's tests and the
//! benchmark. PostgreSQL
//! refuses to run as root, so under root its tools run as `postgres`
//! through runuser. Missing binaries fail the test: CI installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway PostgreSQL server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

#[allow(clippy::expect_used)]
fn binaries() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|b| b.join("initdb").is_file());
    versions.sort();
    versions.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql: \
         install Debian's postgresql package (.ci/run does)",
    )
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[allow(clippy::unwrap_used)]
fn run(tool: &Path, args: &[&str]) {
    if let Err(e) = try_run(tool, args) {
        panic!("{e}");
    }
}

/// Runs a PostgreSQL tool (as `postgres` when root); the failure as text.
#[allow(clippy::unwrap_used)]
fn try_run(tool: &Path, args: &[&str]) -> Result<(), String> {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    };
    // The postgres user may not enter the caller's directory.
    let out = command.current_dir("/").args(args).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            tool.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Postgres {
    /// Starts one (panics with a clear message when the binaries are missing).
    #[allow(clippy::unwrap_used, clippy::expect_used)]
    pub fn start() -> Postgres {
        let bin = binaries();
        let dir = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The postgres user must reach its data directory inside.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }

        let data = dir.path().join("data");
        let data_s = data.to_str().unwrap();
        run(
            &bin.join("initdb"),
            &[
                "-D",
                data_s,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let log = dir.path().join("postgres.log");
        // A free port can be taken by another test between our look and
        // the server's bind: try another one.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                dir.path().display()
            );
            match try_run(
                &bin.join("pg_ctl"),
                &[
                    "-D",
                    data_s,
                    "-l",
                    log.to_str().unwrap(),
                    "-o",
                    &options,
                    "-w",
                    "start",
                ],
            ) {
                Ok(()) => return Postgres { dir, bin, port },
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "PostgreSQL did not start: {}\n{}",
            failures.join("\n"),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The server's data directory (tests read its raw files).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// A new, empty database; returns its URL.
    #[allow(clippy::unwrap_used)]
    pub async fn database(&self, name: &str) -> String {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = command
            .args([
                "-D",
                data.to_str().unwrap_or(""),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

/// The master key every test server of this process uses (tests that
/// restart a server on one database need the same key each time).
pub fn keyring() -> std::sync::Arc<crate::keys::Keyring> {
    static KEYRING: std::sync::OnceLock<std::sync::Arc<crate::keys::Keyring>> =
        std::sync::OnceLock::new();
    KEYRING
        .get_or_init(|| {
            std::sync::Arc::new(crate::keys::Keyring::new(
                crate::keys::MasterKey::from_bytes(&[0x42; 32]),
                None,
            ))
        })
        .clone()
}
