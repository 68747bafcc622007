//! Crash injection for wipe: a `coffer wipe` child process is killed with
//! SIGKILL at many points. After each kill, the next access either finds the
//! vault untouched (killed before the wipe began) or finishes the wipe — and
//! then no file left decrypts with any of the old keys, which the test kept.

#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coffer_device::stream::ChunkReader;
use coffer_device::{Capabilities, Credential, KdfParams, Passphrase, Purpose, Space, Subkey};

const KDF: KdfParams = KdfParams::Argon2id {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

struct Keys {
    catalog: [u8; 32],
    app_db: [u8; 32],
    app_files: [u8; 32],
}

fn build(space: &Space) -> Keys {
    let v = space
        .create_vault("v", "alice", &Passphrase::new("pw".into()).unwrap(), &KDF)
        .unwrap();
    v.add_app("cases", Capabilities::all()).unwrap();
    let app = v.app("cases").unwrap();
    let mut records = app.records().unwrap();
    for i in 0..60 {
        records
            .put("case", &format!("c{i}"), &serde_json::json!({"n": i}), None)
            .unwrap();
    }
    let files = app.files().unwrap();
    for i in 0..15u8 {
        let data = vec![i; 20_000];
        files
            .put(&format!("f{i}"), &mut &data[..], None, &mut |_| {})
            .unwrap();
    }
    Keys {
        catalog: *v.subkey(Purpose::Catalog).unwrap().expose_secret(),
        app_db: *v
            .subkey(Purpose::AppDatabase(&app.info().id))
            .unwrap()
            .expose_secret(),
        app_files: *v
            .subkey(Purpose::AppFiles(&app.info().id))
            .unwrap()
            .expose_secret(),
    }
}

fn opens_as_database(path: &Path, key: &[u8; 32]) -> bool {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return false;
    };
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    conn.execute_batch(&format!(
        "PRAGMA key = \"x'{hex}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;"
    ))
    .is_ok()
        && conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .is_ok()
}

fn assert_nothing_decrypts(dir: &Path, keys: &Keys) {
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap();
        if bytes.is_empty() {
            continue; // lock files
        }
        for key in [&keys.catalog, &keys.app_db] {
            assert!(
                !opens_as_database(&entry, key),
                "{} opens as a database",
                entry.display()
            );
        }
        let blob = ChunkReader::open(
            &Subkey::from_bytes(keys.app_files),
            std::io::Cursor::new(bytes),
        )
        .and_then(|mut r| r.read_at(0, &mut [0u8; 16]));
        assert!(blob.is_err(), "{} decrypts as a blob", entry.display());
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn coffer(space: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
    c.arg("--space").arg(space).args(["--vault", "v"]);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[test]
fn a_wipe_killed_at_any_point_leaves_nothing_decryptable() {
    // How long one whole wipe takes here, to spread the kills over it.
    let probe = tempfile::tempdir().unwrap();
    let space = Space::new(probe.path().join("space"));
    let probe_keys = build(&space);
    // The checks below can fail: before a wipe, the old keys do open the data.
    let db = std::fs::read_dir(space.root().join("v").join("data"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        opens_as_database(&db, &probe_keys.app_db),
        "the positive control failed"
    );
    assert!(!opens_as_database(&db, &probe_keys.catalog));
    let started = Instant::now();
    assert!(coffer(space.root())
        .args(["wipe", "--yes"])
        .status()
        .unwrap()
        .success());
    let window = started.elapsed().max(Duration::from_millis(2));

    let (mut kills, mut mid_wipe, mut untouched, mut header_intact_mid_wipe) = (0, 0, 0, 0);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..400 {
        if kills >= 60 && mid_wipe - header_intact_mid_wipe >= 10 {
            break;
        }
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(dir.path().join("space"));
        let keys = build(&space);
        let vault_dir = space.root().join("v");
        let original_header = std::fs::read(vault_dir.join("header")).unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = window.mul_f64((seed % 10_000) as f64 / 10_000.0 * 1.2);
        let mut child = coffer(space.root())
            .args(["wipe", "--yes"])
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let killed = child.kill().is_ok();
        child.wait().unwrap();
        if !killed {
            continue; // it had finished: not a kill
        }
        kills += 1;
        if vault_dir.join("WIPING").exists() {
            mid_wipe += 1;
            // Before coffer touches the vault again: once the header is no
            // longer the original, no slot in it may open (the crypto-erase
            // comes before any deletion). A copy is tried in a scratch space,
            // so that the pending wipe is not finished by the attempt.
            let header = std::fs::read(vault_dir.join("header")).unwrap();
            if header == original_header {
                header_intact_mid_wipe += 1;
            } else {
                let scratch = tempfile::tempdir().unwrap();
                std::fs::create_dir_all(scratch.path().join("v")).unwrap();
                std::fs::write(scratch.path().join("v").join("header"), &header).unwrap();
                let opened =
                    Space::new(scratch.path())
                        .vault("v")
                        .unwrap()
                        .unlock(&Credential::Passphrase(
                            &Passphrase::new("pw".into()).unwrap(),
                        ));
                assert!(
                    opened.is_err(),
                    "round {round}: a slot survived the crypto-erase"
                );
            }
        }
        // The next access: untouched (exit 0), or the wipe finished (12).
        let status = coffer(space.root()).arg("info").status().unwrap();
        match status.code() {
            Some(0) => {
                untouched += 1;
                let v = space
                    .vault("v")
                    .unwrap()
                    .unlock(&Credential::Passphrase(
                        &Passphrase::new("pw".into()).unwrap(),
                    ))
                    .unwrap();
                assert_eq!(
                    v.app("cases")
                        .unwrap()
                        .records()
                        .unwrap()
                        .list("case")
                        .unwrap()
                        .len(),
                    60
                );
            }
            Some(12) => {
                assert!(
                    !vault_dir.join("WIPING").exists(),
                    "round {round}: wipe not finished"
                );
                assert_nothing_decrypts(&vault_dir, &keys);
            }
            other => panic!("round {round}: info exited with {other:?}"),
        }
    }
    println!(
        "{kills} kills: {mid_wipe} mid-wipe ({header_intact_mid_wipe} of them between the intent and the erase), {untouched} before the wipe began"
    );
    assert!(kills >= 50, "only {kills} kills landed");
    // Kills that found the header already erased prove the erase comes
    // before the deletions (without it, every mid-wipe kill would find the
    // original header).
    assert!(
        mid_wipe - header_intact_mid_wipe >= 10,
        "only {} kills landed after the erase and before the end",
        mid_wipe - header_intact_mid_wipe
    );
}
