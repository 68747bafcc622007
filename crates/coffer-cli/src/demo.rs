//! `coffer demo`: a guided walk through a throwaway space, using the same
//! library calls as the real commands.

use coffer_device::rotate::RotateOptions;
use coffer_device::{
    Capabilities, Capability, Credential, Error, KdfAlgorithm, KdfParams, Passphrase, RecoveryKey,
    Space,
};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::cli::Global;
use crate::commands::{kdf_text, Report};
use crate::exit::CliError;

struct Tour {
    steps: Vec<Value>,
    text: String,
}

impl Tour {
    fn step(&mut self, what: &str, outcome: String) {
        self.text.push_str(&format!("• {what}\n    {outcome}\n"));
        self.steps.push(json!({"step": what, "outcome": outcome}));
    }
}

fn pass(text: &str) -> Result<Passphrase, CliError> {
    Ok(Passphrase::new(text.to_owned())?)
}

pub fn run(global: &Global, keep: bool) -> Result<Report, CliError> {
    let dir = tempfile::Builder::new()
        .prefix("coffer-demo-")
        .tempdir()
        .map_err(|e| CliError::other(format!("cannot create a temporary directory: {e}")))?;
    let space = Space::new(dir.path().join("space"));
    let mut tour = Tour {
        steps: Vec::new(),
        text: format!(
            "coffer demo — a throwaway space in {}\n\n",
            space.root().display()
        ),
    };

    // The demo uses the OWASP minimum so that it runs in seconds; `coffer
    // init` calibrates to about half a second per unlock instead.
    let kdf = KdfParams::recommended_minimum(KdfAlgorithm::Argon2id);
    let alice = pass("alice: correct horse battery staple")?;
    let bob = pass("bob: tr0ub4dor & 3")?;

    let mut vault = space.create_vault("acme", "alice", &alice, &kdf)?;
    tour.step(
        "Create vault 'acme' for the organization, with alice's passphrase slot",
        format!(
            "vault id {}; slot 0 uses {} (OWASP minimum, for speed; init calibrates to ~0.5 s)",
            vault.vault_id(),
            kdf_text(&coffer_device::SlotKind::Passphrase(kdf))
        ),
    );

    let slot = vault.add_passphrase_slot("bob", &bob, &kdf)?;
    tour.step(
        "Add a slot for bob, who shares this device",
        format!("slot {} 'bob'; alice's slot is untouched", slot.index),
    );

    let (slot, recovery) = vault.add_recovery_slot("recovery")?;
    let shown = recovery.display();
    tour.step(
        "Add a recovery key (shown once, with a typo-catching checksum)",
        format!("slot {} 'recovery': {}", slot.index, shown.expose_secret()),
    );
    drop(vault);

    let locked = space.vault("acme")?;
    for (who, p) in [("alice", &alice), ("bob", &bob)] {
        let v = locked.unlock(&Credential::Passphrase(p))?;
        tour.step(
            &format!("Unlock as {who}"),
            format!("opened by slot {}", v.opened_slot()),
        );
    }
    let typed = RecoveryKey::parse(&shown.expose_secret().to_lowercase()).map_err(Error::from)?;
    let v = locked.unlock(&Credential::RecoveryKey(&typed))?;
    tour.step(
        "Unlock with the recovery key, typed in lower case",
        format!("opened by slot {}", v.opened_slot()),
    );
    drop(v);

    let mut typo = shown.expose_secret().to_owned();
    let last = if typo.ends_with('0') { "1" } else { "0" };
    typo.replace_range(typo.len() - 1.., last);
    let outcome = match RecoveryKey::parse(&typo) {
        Err(e) => format!("refused before any slot is tried: {e}"),
        Ok(_) => "accepted (unexpected)".into(),
    };
    tour.step("Mistype one character of the recovery key", outcome);

    let wrong = pass("mallory guesses")?;
    let outcome = match locked.unlock(&Credential::Passphrase(&wrong)) {
        Err(e @ Error::WrongPassphrase) => e.to_string(),
        Err(e) => format!("unexpected error: {e}"),
        Ok(_) => "unlocked (unexpected)".into(),
    };
    tour.step("Try a wrong passphrase", outcome);

    let header = locked.path().join("header");
    let original = std::fs::read(&header).map_err(|e| CliError::other(e.to_string()))?;
    let mut flipped = original.clone();
    flipped[40] ^= 0x01;
    std::fs::write(&header, &flipped).map_err(|e| CliError::other(e.to_string()))?;
    let outcome = match locked.unlock(&Credential::Passphrase(&alice)) {
        Err(e) => e.to_string(),
        Ok(_) => "unlocked (unexpected)".into(),
    };
    std::fs::write(&header, &original).map_err(|e| CliError::other(e.to_string()))?;
    tour.step("Flip one bit of the header on disk", outcome);

    let mut v = locked.unlock(&Credential::Passphrase(&alice))?;
    v.remove_slot("bob")?;
    let outcome = match locked.unlock(&Credential::Passphrase(&bob)) {
        Err(e) => format!("bob: {e}; alice still opens slot {}", v.opened_slot()),
        Ok(_) => "bob still unlocks (unexpected)".into(),
    };
    tour.step("Remove bob's slot", outcome);
    drop(v);

    let v = locked.unlock(&Credential::Passphrase(&alice))?;
    v.add_app("cases", Capabilities::all())?;
    v.add_app("camera", Capabilities::none().with(Capability::Files))?;
    let cases = v.app("cases")?;
    let db = cases.database()?;
    db.execute_batch(
        "CREATE TABLE visit (id INTEGER PRIMARY KEY, village TEXT);
         INSERT INTO visit (village) VALUES ('Riverside'), ('Hilltop');",
    )
    .map_err(|e| CliError::other(e.to_string()))?;
    drop(db);
    cases.kv()?.put("last-sync", b"never")?;
    let record = cases.records()?.put(
        "case",
        "c-17",
        &serde_json::json!({"name": "Amina", "age": 9}),
        Some(0),
    )?;
    let photo: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let stored = v.app("camera")?.files()?.put(
        "amina.jpg",
        &mut &photo[..],
        Some("image/jpeg"),
        &mut |_| {},
    )?;
    let denied = match v.app("camera")?.kv() {
        Err(e) => e.to_string(),
        Ok(_) => "allowed (unexpected)".into(),
    };
    tour.step(
        "Add two apps: 'cases' (every store) and 'camera' (files only)",
        format!(
            "cases: a SQL table of 2 visits, a key-value entry, record case/c-17 at version {}; \
             camera: amina.jpg ({} bytes in 64 KiB encrypted chunks); camera asking for its key-value store: {denied}",
            record.version, stored.size
        ),
    );
    drop(v);

    // Bob has left: rotate so that nothing he might have copied opens
    // what is written from now on.
    let mut v = locked.unlock(&Credential::Passphrase(&alice))?;
    let report = v.rotate(
        &[("alice", Credential::Passphrase(&alice))],
        &RotateOptions::default().with_recovery_slot("recovery-2"),
        &mut |_| {},
    )?;
    drop(v);
    let old_recovery = match locked.unlock(&Credential::RecoveryKey(&typed)) {
        Err(e) => e.to_string(),
        Ok(_) => "still opens (unexpected)".into(),
    };
    let v = locked.unlock(&Credential::Passphrase(&alice))?;
    let still = v
        .app("cases")?
        .records()?
        .get("case", "c-17")?
        .map_or("missing (unexpected)".to_owned(), |r| r.body.to_string());
    tour.step(
        "Rotate the vault key (crash-safe, all or nothing), keeping alice's slot and adding a new recovery key",
        format!(
            "{} databases and {} file(s) re-encrypted, {} bytes; retired: {}; the old recovery key: {old_recovery}; case c-17 reads {still}",
            report.databases,
            report.files,
            report.bytes,
            report.retired.join(", ")
        ),
    );

    let trail = v.audit()?;
    let events: Vec<&str> = trail.entries.iter().map(|e| e.event.as_str()).collect();
    let log = locked.path().join("audit.log");
    let original = std::fs::read(&log).map_err(|e| CliError::other(e.to_string()))?;
    let mut edited = original.clone();
    if let Some(byte) = edited.get_mut(40) {
        *byte ^= 0x01;
    }
    std::fs::write(&log, &edited).map_err(|e| CliError::other(e.to_string()))?;
    let caught = match v.audit()?.problem {
        Some(problem) => problem.to_string(),
        None => "not noticed (unexpected)".into(),
    };
    std::fs::write(&log, &original).map_err(|e| CliError::other(e.to_string()))?;
    tour.step(
        "Read the audit log (encrypted, MAC-chained), then flip one bit of it on disk",
        format!(
            "{} events, chain intact: {}; after the flip: {caught}",
            events.len(),
            events.join(", ")
        ),
    );
    drop(v);

    let files: Vec<String> = walk(space.root())
        .into_iter()
        .map(|(p, len)| {
            format!(
                "{} ({len} bytes)",
                p.strip_prefix(space.root()).unwrap_or(&p).display()
            )
        })
        .collect();
    tour.step(
        "Look at the disk: random names, no app name, record, file name, passphrase or key in the clear",
        files.join(", "),
    );

    crate::demo_control::tour(
        dir.path(),
        space.root(),
        crate::demo_control::Steps {
            step: &mut |what, outcome| tour.step(what, outcome),
        },
    )?;

    let kept = if keep {
        let path = dir.keep();
        tour.text.push_str(&format!(
            "\nKept the demo space: coffer --space {} --vault acme info\n",
            path.join("space").display()
        ));
        Some(path.join("space"))
    } else {
        tour.text
            .push_str("\nThe demo space is deleted. Start for real with: coffer init\n");
        None
    };
    let _ = global;
    Ok(Report {
        json: json!({"steps": tour.steps, "kept_space": kept}),
        text: tour.text.trim_end().to_owned(),
    })
}

fn walk(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((path, len));
            }
        }
    }
    out.sort();
    out
}
