//! Crash injection for rotation: `coffer rotate` child processes, rotating a
//! vault of hundreds of records and files, are killed with SIGKILL at many
//! points. After each kill the vault must open with one key (the old or the
//! new one, never a mix: a store under the other key would fail to read),
//! every committed record and file must read back byte for byte, new writes
//! must work, and a later rotation must complete.

#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coffer_device::{Capabilities, Credential, KdfParams, Passphrase, Space, UnlockedVault};
use serde_json::{json, Value};

const KDF: KdfParams = KdfParams::Argon2id {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

/// What the vault must hold: records by id, files by name.
#[derive(Default)]
struct Expected {
    records: BTreeMap<String, Value>,
    files: BTreeMap<String, Vec<u8>>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fraction(&mut self) -> f64 {
        (self.next() % 10_000) as f64 / 10_000.0
    }
}

fn pw() -> Passphrase {
    Passphrase::new("pw".into()).unwrap()
}

fn open(space: &Space) -> UnlockedVault {
    space
        .vault("v")
        .unwrap()
        .unlock(&Credential::Passphrase(&pw()))
        .unwrap()
}

fn add(v: &UnlockedVault, expected: &mut Expected, rng: &mut Rng, records: usize, files: usize) {
    let app = v.app("cases").unwrap();
    let mut store = app.records().unwrap();
    for _ in 0..records {
        let id = format!("r{}", expected.records.len());
        let value =
            json!({"n": rng.next() % 1000, "note": "x".repeat((rng.next() % 200) as usize)});
        store.put("case", &id, &value, None).unwrap();
        expected.records.insert(id, value);
    }
    let file_store = app.files().unwrap();
    for _ in 0..files {
        let name = format!("f{}", expected.files.len());
        let len = (rng.next() % 40_000) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        file_store
            .put(&name, &mut &data[..], None, &mut |_| {})
            .unwrap();
        expected.files.insert(name, data);
    }
}

/// Opens the vault (which finishes or discards an interrupted rotation) and
/// reads everything back.
fn check(space: &Space, expected: &Expected, context: &str) -> UnlockedVault {
    let v = open(space);
    let dir = space.root().join("v");
    assert!(
        !dir.join(".rotate").exists() && !dir.join(".rotate.tmp").exists(),
        "{context}: a rotation was left behind after the unlock"
    );
    let app = v.app("cases").unwrap();
    let records = app.records().unwrap().list("case").unwrap();
    assert_eq!(records.len(), expected.records.len(), "{context}");
    for record in records {
        assert_eq!(
            Some(&record.body),
            expected.records.get(&record.id),
            "{context}: record {}",
            record.id
        );
    }
    let files = app.files().unwrap();
    assert_eq!(
        files.list().unwrap().len(),
        expected.files.len(),
        "{context}"
    );
    for (name, data) in &expected.files {
        let mut back = Vec::new();
        files
            .open_file(name)
            .unwrap_or_else(|e| panic!("{context}: {name}: {e}"))
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == *data, "{context}: file {name} differs");
    }
    v
}

fn rotate(space: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
    c.arg("--space")
        .arg(space)
        .args(["--vault", "v", "rotate", "--yes"])
        .env("COFFER_PASSPHRASE", "pw")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[test]
fn a_rotation_killed_at_any_point_leaves_one_whole_key() {
    let dir = tempfile::tempdir().unwrap();
    let space = Space::new(dir.path().join("space"));
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut expected = Expected::default();
    {
        let v = space.create_vault("v", "alice", &pw(), &KDF).unwrap();
        v.add_app("cases", Capabilities::all()).unwrap();
        add(&v, &mut expected, &mut rng, 300, 120);
    }
    let vault_dir = space.root().join("v");

    // How long one whole rotation takes here, to spread the kills over it.
    let started = Instant::now();
    assert!(rotate(space.root()).status().unwrap().success());
    let window = started.elapsed();
    drop(check(&space, &expected, "after a whole rotation"));

    let (mut kills, mut staging, mut committed, mut not_started) = (0, 0, 0, 0);
    // The commit is a short moment at the end of the run. Odd rounds home in
    // on it: `probe` moves later after a kill that found the rotation still
    // staging, earlier after one that found it committed or finished.
    let mut probe = window;
    let deadline = Instant::now() + Duration::from_secs(240);
    for round in 0..400 {
        if kills >= 60 && staging >= 10 && committed >= 3 || Instant::now() > deadline {
            break;
        }
        let header_before = std::fs::read(vault_dir.join("header")).unwrap();
        let homing = round % 2 == 1;
        let delay = if homing {
            probe.mul_f64(0.97 + 0.06 * rng.fraction())
        } else {
            window.mul_f64(1.1 * rng.fraction())
        };
        let mut child = rotate(space.root()).spawn().unwrap();
        std::thread::sleep(delay);
        let killed = child.kill().is_ok();
        let status = child.wait().unwrap();
        let context = format!("round {round} (killed after {delay:?})");
        if !killed || status.success() {
            // It had finished: not a kill.
            if homing {
                probe = probe.mul_f64(0.96);
            }
            drop(check(&space, &expected, &context));
            continue;
        }
        kills += 1;
        let late = if vault_dir.join(".rotate").exists() {
            committed += 1;
            true
        } else if vault_dir.join(".rotate.tmp").exists() {
            staging += 1;
            false
        } else if std::fs::read(vault_dir.join("header")).unwrap() != header_before {
            committed += 1; // rolled forward, killed before exiting
            true
        } else {
            not_started += 1;
            false
        };
        if homing {
            probe = probe.mul_f64(if late { 0.96 } else { 1.08 });
        }
        let v = check(&space, &expected, &context);
        // The vault takes new writes, which later rounds must keep.
        if round % 3 == 0 {
            add(&v, &mut expected, &mut rng, 2, 1);
        }
        drop(v);
        // Now and then a rotation runs to its end.
        if round % 10 == 9 {
            assert!(
                rotate(space.root()).status().unwrap().success(),
                "{context}"
            );
            drop(check(&space, &expected, &context));
        }
    }
    println!(
        "{kills} kills: {staging} while staging, {committed} after the commit, {not_started} before staging began"
    );
    assert!(kills >= 50, "only {kills} kills landed");
    assert!(staging >= 10, "only {staging} kills landed while staging");
    assert!(committed >= 1, "no kill landed after a commit");

    // A last rotation completes, and retires nothing it should not.
    let out = rotate(space.root())
        .arg("--json")
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kept"], json!(["alice"]));
    assert_eq!(report["files"], json!(expected.files.len()));
    drop(check(&space, &expected, "after the last rotation"));
}
