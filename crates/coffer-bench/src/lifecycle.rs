//! Rows 5 and 6: unlock and passphrase change on an empty vault and on a
//! full one (the KDF should dominate both); rotation's re-encryption rate
//! against a plain copy (with fsync) of the same bytes.

use std::path::Path;

use coffer_device::rotate::RotateOptions;
use coffer_device::{
    Capabilities, Credential, KdfAlgorithm, KdfParams, Passphrase, SlotKind, Space, UnlockedVault,
};
use rand_core::{OsRng, RngCore};

use crate::measure::{ratio, time, Samples};
use crate::{Scale, Section};

fn pass() -> Passphrase {
    Passphrase::new("correct horse battery staple".into()).unwrap()
}

/// Fills `vault` with `rows` rows of 100 bytes in an app's database and one
/// file of `bytes` random bytes.
fn fill(vault: &UnlockedVault, rows: u32, bytes: u64) {
    vault.add_app("data", Capabilities::all()).unwrap();
    let app = vault.app("data").unwrap();
    let conn = app.database().unwrap();
    conn.execute_batch("CREATE TABLE r (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut stmt = tx
            .prepare("INSERT INTO r (id, body) VALUES (?1, ?2)")
            .unwrap();
        let body = "y".repeat(100);
        for i in 0..rows {
            stmt.execute(rusqlite::params![i, body]).unwrap();
        }
    }
    tx.commit().unwrap();
    drop(conn);
    struct Random(u64);
    impl std::io::Read for Random {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0 as usize);
            OsRng.fill_bytes(&mut buf[..n]);
            self.0 -= n as u64;
            Ok(n)
        }
    }
    app.files()
        .unwrap()
        .put("big", &mut Random(bytes), None, &mut |_| {})
        .unwrap();
}

pub(crate) fn run(scale: &Scale) -> Vec<Section> {
    let dir = tempfile::tempdir().unwrap();
    let space = Space::new(dir.path().join("space"));
    // What `coffer init` does: calibrate to about half a second.
    let kdf = KdfParams::calibrate(
        KdfAlgorithm::Argon2id,
        std::time::Duration::from_millis(500),
    )
    .unwrap();
    let p = pass();
    drop(space.create_vault("empty", "u", &p, &kdf).unwrap());
    let full = space.create_vault("full", "u", &p, &kdf).unwrap();
    fill(&full, scale.rows, scale.file_bytes);
    drop(full);

    let mut unlock = [Samples::default(), Samples::default()];
    let mut passwd = [Samples::default(), Samples::default()];
    for _ in 0..scale.rounds {
        for (i, name) in ["empty", "full"].iter().enumerate() {
            let vault = space.vault(name).unwrap();
            let (opened, t) = time(|| vault.unlock(&Credential::Passphrase(&p)).unwrap());
            unlock[i].push(t);
            let mut opened = opened;
            let (_, t) = time(|| opened.change_passphrase(None, &p, &kdf).unwrap());
            passwd[i].push(t);
        }
    }
    let gib = scale.file_bytes as f64 / (1u64 << 30) as f64;
    let mut table = format!(
        "| operation | empty vault | vault holding {gib:.2} GiB and {} rows | ratio |\n|---|---|---|---|\n",
        scale.rows
    );
    for (name, s) in [("unlock", &unlock), ("passphrase change", &passwd)] {
        table.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            s[0].seconds(),
            s[1].seconds(),
            ratio(s[1].median(), s[0].median())
        ));
    }
    let kdf_text = match SlotKind::Passphrase(kdf) {
        SlotKind::Passphrase(KdfParams::Argon2id {
            memory_kib,
            iterations,
            parallelism,
        }) => format!(
            "Argon2id, m = {} MiB, t = {iterations}, p = {parallelism}",
            memory_kib / 1024
        ),
        _ => "calibrated".into(),
    };
    let unlock_section = Section {
        title: "Unlock and passphrase change: empty vault vs full vault".into(),
        setup: format!(
            "The slot's KDF as `coffer init` calibrates it here: {kdf_text}. A passphrase change rewraps one slot with the same parameters. {} interleaved rounds.",
            scale.rounds
        ),
        table,
        goals: vec![format!(
            "equal within noise: unlock {}, passphrase change {} (full / empty)",
            ratio(unlock[1].median(), unlock[0].median()),
            ratio(passwd[1].median(), passwd[0].median())
        )],
    };

    // Rotation.
    let mut rotate = Samples::default();
    let mut copy = Samples::default();
    let mut bytes = 0;
    let vault_dir = space.vault("full").unwrap().path().to_path_buf();
    for round in 0..scale.rounds {
        let copy_dir = dir.path().join(format!("copy{round}"));
        let ((), t) = time(|| copy_synced(&vault_dir, &copy_dir));
        copy.push(t);
        std::fs::remove_dir_all(&copy_dir).unwrap();
        let mut opened = space
            .vault("full")
            .unwrap()
            .unlock(&Credential::Passphrase(&p))
            .unwrap();
        let (report, t) = time(|| {
            opened
                .rotate(
                    &[("u", Credential::Passphrase(&p))],
                    &RotateOptions::default(),
                    &mut |_| {},
                )
                .unwrap()
        });
        rotate.push(t);
        bytes = report.bytes;
    }
    // A rotation checks and rewraps the kept slot: two KDF runs, which the
    // unlock row measures; the re-encryption rate leaves them out.
    let kdf_runs = 2.0 * unlock[0].median();
    let reencrypt = rotate.median() - kdf_runs;
    let table = format!(
        "| operation | time | rate | ratio |\n|---|---|---|---|\n| plain copy of the vault's files, each fsynced | {} | {} | 1.00× |\n| `rotate` (whole call) | {} | {} | {} of the copy's time |\n| `rotate` without its two KDF runs (2 × the empty vault's unlock) | {:.3} s | {:.0} MB/s | {} of the copy's time |\n",
        copy.seconds(),
        copy.throughput(bytes),
        rotate.seconds(),
        rotate.throughput(bytes),
        ratio(rotate.median(), copy.median()),
        reencrypt,
        bytes as f64 / reencrypt / 1e6,
        ratio(reencrypt, copy.median())
    );
    let rotation = Section {
        title: format!("Rotation: a vault of {} rows and {gib:.2} GiB of files", scale.rows),
        setup: format!(
            "{bytes} bytes re-encrypted per rotation (the catalog, the app's database, the file, the audit log); {} rounds. A rotation also checks and rewraps the kept slot: two runs of its KDF (about a second here), included in its time.",
            scale.rounds
        ),
        table,
        goals: Vec::new(),
    };
    let session = session_section(&space, &p, scale);
    vec![unlock_section, rotation, session]
}

/// A command's unlock in an unlock session (`coffer unlock`: the session
/// key over the agent's socket, then `Vault::reopen`) against the same
/// unlock with the passphrase, each followed by one key-value read.
fn session_section(space: &Space, p: &Passphrase, scale: &Scale) -> Section {
    use coffer_agent::unlock_agent;
    let vault = space.vault("empty").unwrap();
    {
        let opened = vault.unlock(&Credential::Passphrase(p)).unwrap();
        opened.add_app("notes", Capabilities::all()).unwrap();
        opened
            .app("notes")
            .unwrap()
            .kv()
            .unwrap()
            .put("k", b"v")
            .unwrap();
    }
    let opened = vault.unlock(&Credential::Passphrase(p)).unwrap();
    let bound = unlock_agent::bind(&vault).unwrap();
    let limits = unlock_agent::Limits {
        for_at_most: None,
        idle: std::time::Duration::from_secs(600),
        check_in_every: None,
    };
    let agent = std::thread::spawn(move || {
        unlock_agent::serve(&coffer_agent::Agent::new(), opened, bound, limits).unwrap()
    });
    let read = |v: &UnlockedVault| v.app("notes").unwrap().kv().unwrap().get("k").unwrap();
    let mut locked = Samples::default();
    let mut unlocked = Samples::default();
    let rounds = (scale.rounds * 5).max(5);
    for _ in 0..rounds {
        let (_, t) = time(|| read(&vault.unlock(&Credential::Passphrase(p)).unwrap()));
        locked.push(t);
        let (_, t) = time(|| {
            let key = unlock_agent::session_key(&vault).unwrap();
            read(&vault.reopen(&key).unwrap())
        });
        unlocked.push(t);
    }
    assert!(unlock_agent::lock(&vault));
    agent.join().unwrap();
    let table = format!(
        "| a command's unlock and one read | time |\n|---|---|\n| with the passphrase (the KDF) | {} |\n| in an unlock session (socket, key, reopen) | {} |\n",
        locked.seconds(),
        unlocked.seconds()
    );
    Section {
        title: "A command in an unlock session vs with the passphrase".into(),
        setup: format!(
            "The empty vault above; each round unlocks it and reads one key: once with the passphrase, once through an agent serving on its socket in this process. {rounds} interleaved rounds."
        ),
        table,
        goals: vec![format!(
            "the session's unlock skips the KDF: {} of the passphrase's",
            ratio(unlocked.median(), locked.median())
        )],
    }
}

/// Copies every file under `from` to `to`, fsyncing each: what rotation
/// must at least do with the same bytes.
fn copy_synced(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_synced(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            std::fs::File::open(&target).unwrap().sync_all().unwrap();
        }
    }
}
