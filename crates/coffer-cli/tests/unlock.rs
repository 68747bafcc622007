//! `coffer unlock`: later commands run without the secret; the session ends
//! with `coffer lock`, after the policy's idle time, and when a check-in
//! carries out a wipe order; another user's process gets nothing from it.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::world::{ok, World};

const PASSPHRASE: &str = "a passphrase for the session";

fn coffer(space: &Path, args: &[&str], passphrase: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
    c.arg("--json")
        .args(args)
        .env("COFFER_SPACE", space)
        .env_remove("COFFER_PASSPHRASE")
        .env_remove("COFFER_VAULT")
        .stdin(Stdio::null());
    if let Some(p) = passphrase {
        c.env("COFFER_PASSPHRASE", p);
    }
    c.output().unwrap()
}

fn socket(space: &Path) -> std::path::PathBuf {
    space.join("default").join(".unlock-agent.sock")
}

/// Waits until `done` holds (at most `limit`).
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

#[test]
fn commands_run_without_the_secret_until_lock() {
    let dir = tempfile::tempdir().unwrap();
    let space = dir.path().join("space");
    ok(coffer(
        &space,
        &["init", "--kdf-time-ms", "0"],
        Some(PASSPHRASE),
    ));
    ok(coffer(&space, &["app", "add", "notes"], Some(PASSPHRASE)));
    // Without a session, no secret is no unlock.
    assert_eq!(
        coffer(&space, &["kv", "ls", "notes"], None).status.code(),
        Some(2)
    );

    let started = ok(coffer(&space, &["unlock", "--for", "5m"], Some(PASSPHRASE)));
    assert_eq!(started["unlocked"], true, "{started}");
    assert!(socket(&space).exists());
    ok(coffer(
        &space,
        &["kv", "put", "notes", "k", "in the session"],
        None,
    ));
    let listed = ok(coffer(&space, &["kv", "ls", "notes"], None));
    assert_eq!(listed["keys"], json!(["k"]));
    // A second unlock says so and starts nothing.
    let again = ok(coffer(&space, &["unlock"], Some(PASSPHRASE)));
    assert_eq!(again["already"], true, "{again}");
    // verify checks the secret itself, never the session.
    assert_eq!(coffer(&space, &["verify"], None).status.code(), Some(2));
    assert_eq!(
        coffer(&space, &["verify"], Some("wrong")).status.code(),
        Some(3)
    );

    let locked = ok(coffer(&space, &["lock"], None));
    assert_eq!(locked["locked"], true);
    assert!(eventually(Duration::from_secs(5), || !socket(&space).exists()));
    assert_eq!(
        coffer(&space, &["kv", "ls", "notes"], None).status.code(),
        Some(2)
    );
    assert_eq!(ok(coffer(&space, &["lock"], None))["locked"], false);
}

#[test]
fn a_rotation_elsewhere_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let space = dir.path().join("space");
    ok(coffer(
        &space,
        &["init", "--kdf-time-ms", "0"],
        Some(PASSPHRASE),
    ));
    ok(coffer(&space, &["unlock"], Some(PASSPHRASE)));
    // A rotation with the passphrase (not through the session): the
    // session's key no longer opens the vault.
    let rotated = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["--json", "--passphrase-file"])
        .arg({
            let f = dir.path().join("pass");
            std::fs::write(&f, PASSPHRASE).unwrap();
            f
        })
        .args(["rotate", "--yes"])
        .env("COFFER_SPACE", &space)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert_eq!(coffer(&space, &["info"], None).status.code(), Some(0));
    assert_eq!(
        coffer(&space, &["slot", "list"], None).status.code(),
        Some(2)
    );
    assert!(eventually(Duration::from_secs(5), || !socket(&space).exists()));
}

#[test]
fn another_users_process_gets_nothing_from_the_session() {
    if coffer_sys::effective_uid() != 0 {
        eprintln!("skipped: needs root to run a process as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let space = dir.path().join("space");
    ok(coffer(
        &space,
        &["init", "--kdf-time-ms", "0"],
        Some(PASSPHRASE),
    ));
    ok(coffer(&space, &["app", "add", "notes"], Some(PASSPHRASE)));
    ok(coffer(
        &space,
        &["kv", "put", "notes", "k", "v"],
        Some(PASSPHRASE),
    ));
    ok(coffer(&space, &["unlock"], Some(PASSPHRASE)));
    // Open every directory and the socket to everyone, as a mistake would:
    // the peer check is what is left.
    use std::os::unix::fs::PermissionsExt;
    for path in [dir.path(), &space, &space.join("default")] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(socket(&space), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A raw client of the wire format (docs/formats/unlock-agent.md), run
    // as root and then as nobody: root gets the key, nobody not a byte.
    let client = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
body = b'{"v": 1, "op": "key"}'
s.sendall(struct.pack(">I", len(body)) + body)
data = b""
while True:
    try:
        chunk = s.recv(4096)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
print("key" if b'"key"' in data else "nothing:%d" % len(data))
"#;
    let ask = |runuser: bool| {
        let mut c = if runuser {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--", "python3", "-c", client]);
            c
        } else {
            let mut c = Command::new("python3");
            c.args(["-c", client]);
            c
        };
        let out = c.arg(socket(&space)).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    assert_eq!(ask(false), "key");
    assert_eq!(ask(true), "nothing:0");
    // The owner still gets in.
    ok(coffer(&space, &["kv", "ls", "notes"], None));
    ok(coffer(&space, &["lock"], None));
}

#[test]
fn the_policys_idle_time_and_a_wipe_order_at_check_in_end_the_session() {
    let world = World::new(&[]);
    let org = world.org.to_string();
    let rules = world.dir.path().join("rules-2.json");
    std::fs::write(
        &rules,
        json!({"sync": ["cases"], "passphrase": {"min_length": 30}, "idle_lock_secs": 2,
               "min_kdf": {"memory_kib": 8, "iterations": 1, "parallelism": 1}})
        .to_string(),
    )
    .unwrap();
    ok(world.admin(&[
        "policy",
        "publish",
        "--org",
        &org,
        "--version",
        "2",
        rules.to_str().unwrap(),
    ]));
    let device = world.device("device", "alice", &world.server.base);
    // The new policy asks more than the device's passphrase has: flagged.
    let checked = ok(device.run(&["check-in"]));
    assert_eq!(checked["passphrase_below_rules"], true, "{checked}");
    let space = device.space.clone();
    let without_secret = |args: &[&str]| {
        device
            .command(args)
            .env_remove("COFFER_PASSPHRASE")
            .output()
            .unwrap()
    };

    // Idle: two seconds without a command end it, however often its
    // status is asked ('coffer unlock' asks it, and needs no secret while
    // the session runs).
    ok(device.run(&["unlock"]));
    ok(without_secret(&["app", "ls"]));
    let polled = eventually(Duration::from_secs(10), || {
        without_secret(&["unlock"]).status.code() == Some(2)
    });
    assert!(polled, "status probes kept the session open");
    assert!(eventually(Duration::from_secs(5), || !socket(&space).exists()));
    assert_eq!(without_secret(&["app", "ls"]).status.code(), Some(2));

    // A wipe order reaches the agent at its check-in: the vault is erased
    // while the session runs, and the session ends.
    ok(device.run(&["unlock", "--check-in-every", "1s"]));
    ok(world.admin(&[
        "device",
        "wipe",
        "--org",
        &org,
        &device.id.to_string(),
        "--yes",
    ]));
    assert!(
        eventually(Duration::from_secs(15), || !socket(&space).exists()),
        "the agent did not end"
    );
    assert_eq!(device.run(&["app", "ls"]).status.code(), Some(12));
    let orders = ok(world.admin(&["device", "wipes", "--org", &org, &device.id.to_string()]));
    assert_eq!(orders["orders"][0]["state"], "acknowledged", "{orders}");
}
