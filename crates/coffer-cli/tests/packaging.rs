//! The systemd unit and the container file in `packaging/` start a real
//! server: their command lines, with the paths moved into a temporary
//! directory, are run as written; and `systemd-analyze verify` accepts the
//! unit without a warning where it is installed.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The unit's `ExecStart=` arguments after the program, continuation
/// lines joined.
fn unit_arguments(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut words = line.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some("/usr/local/bin/coffer"));
    words.collect()
}

/// The container file's `ENTRYPOINT` and `CMD` arguments after the
/// program.
fn container_arguments(file: &str) -> Vec<String> {
    let joined = file.replace("\\\n", " ");
    let array = |keyword: &str| -> Vec<String> {
        let line = joined
            .lines()
            .find_map(|l| l.strip_prefix(keyword))
            .unwrap();
        serde_json::from_str(line.trim()).unwrap()
    };
    let mut entry = array("ENTRYPOINT ");
    assert_eq!(entry.remove(0), "/usr/local/bin/coffer");
    entry.extend(array("CMD "));
    entry
}

/// A master key, and a certificate and key made by `--dev-tls`, in `dir`
/// under the names `names` gives them.
fn secrets(dir: &Path, names: [&str; 3]) {
    std::fs::create_dir_all(dir).unwrap();
    let made = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", made.path().join("s.db").display());
    drop(support::DevServer::start(made.path(), &url));
    let private = |path: &Path| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    };
    let key = dir.join(names[0]);
    std::fs::write(&key, "5a".repeat(32)).unwrap();
    private(&key);
    for (from, to) in ["dev-tls-cert.pem", "dev-tls-key.pem"]
        .iter()
        .zip(&names[1..])
    {
        let target = dir.join(to);
        std::fs::copy(made.path().join("coffer-server").join(from), &target).unwrap();
        private(&target);
    }
}

/// Runs `coffer --json serve ARGS` and waits for it to listen.
fn starts(args: &[String], home: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("--json")
        .args(args)
        .env("XDG_DATA_HOME", home)
        .env("HOME", home)
        .env_remove("COFFER_MASTER_KEY")
        .env_remove("COFFER_MASTER_KEY_FILE")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let started: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
        panic!(
            "{args:?} did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        started["listening"]
            .as_str()
            .unwrap()
            .starts_with("https://"),
        "{started}"
    );
}

/// `args` with the listener on a free loopback port and each path prefix
/// moved under `root`.
fn moved(args: Vec<String>, root: &Path, prefixes: &[(&str, &str)]) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            if a == "0.0.0.0:8443" {
                return "127.0.0.1:0".into();
            }
            let mut a = a;
            for (from, to) in prefixes {
                a = a.replace(from, &root.join(to).display().to_string());
            }
            a
        })
        .collect()
}

#[test]
fn the_systemd_units_command_line_starts_a_server() {
    let unit =
        std::fs::read_to_string(repository().join("packaging/systemd/coffer.service")).unwrap();
    let root = tempfile::tempdir().unwrap();
    secrets(
        &root.path().join("credentials"),
        ["master.key", "tls-cert.pem", "tls-key.pem"],
    );
    std::fs::create_dir_all(root.path().join("state")).unwrap();
    let args = moved(
        unit_arguments(&unit),
        root.path(),
        &[
            ("${CREDENTIALS_DIRECTORY}", "credentials"),
            ("/var/lib/coffer", "state"),
        ],
    );
    starts(&args, root.path());

    // systemd's own check, where systemd is installed: no warning at all.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let copy = root.path().join("coffer.service");
        std::fs::write(
            &copy,
            unit.replace("/usr/local/bin/coffer", env!("CARGO_BIN_EXE_coffer")),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && said.trim().is_empty(), "{said}");
    }
}

#[test]
fn the_container_files_command_line_starts_a_server() {
    let file =
        std::fs::read_to_string(repository().join("packaging/container/Containerfile")).unwrap();
    let root = tempfile::tempdir().unwrap();
    secrets(
        &root.path().join("secrets"),
        ["coffer-master-key", "coffer-tls-cert", "coffer-tls-key"],
    );
    std::fs::create_dir_all(root.path().join("state")).unwrap();
    let args = moved(
        container_arguments(&file),
        root.path(),
        &[("/run/secrets", "secrets"), ("/var/lib/coffer", "state")],
    );
    starts(&args, root.path());
}
