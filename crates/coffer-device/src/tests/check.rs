//! The whole-vault check: clean on a populated vault, and a flipped bit in
//! any file of it (every database, every blob, the audit log) is found.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{pass, space, FAST};
use crate::*;

/// A vault with two apps: key-value and records in one (enough rows for
/// many database pages), three files in the other (one of several chunks).
fn populated() -> (tempfile::TempDir, Space) {
    let (dir, space) = space();
    let v = space
        .create_vault("acme", "alice", &pass("pw"), &FAST)
        .unwrap();
    v.add_app("notes", Capabilities::all()).unwrap();
    v.add_app("camera", Capabilities::none().with(Capability::Files))
        .unwrap();
    let notes = v.app("notes").unwrap();
    let kv = notes.kv().unwrap();
    for i in 0..300 {
        kv.put(&format!("key {i}"), &[i as u8; 200]).unwrap();
    }
    let mut records = notes.records().unwrap();
    for i in 0..50 {
        records
            .put("cases", &format!("case-{i}"), &json!({"n": i}), None)
            .unwrap();
    }
    let files = v.app("camera").unwrap().files().unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    files
        .put("big.bin", &mut &big[..], None, &mut |_| {})
        .unwrap();
    files
        .put(
            "small.txt",
            &mut &b"a small file"[..],
            Some("text/plain"),
            &mut |_| {},
        )
        .unwrap();
    files
        .put("empty", &mut &b""[..], None, &mut |_| {})
        .unwrap();
    (dir, space)
}

fn check(space: &Space) -> CheckReport {
    let v = space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::Passphrase(&pass("pw")))
        .unwrap();
    v.check(&mut |_| {}).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every non-empty file under `dir`, relative to it.
fn files_under(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            files_under(&entry.path(), base, out);
        } else if entry.metadata().unwrap().len() > 0 {
            out.push(entry.path().strip_prefix(base).unwrap().to_owned());
        }
    }
}

#[test]
fn a_populated_vault_checks_clean_and_reads_everything() {
    let (_d, space) = populated();
    let mut last = None;
    let v = space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::Passphrase(&pass("pw")))
        .unwrap();
    let report = v.check(&mut |p| last = Some(p)).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.databases, 3, "the catalog and two apps");
    assert_eq!(report.files, 3);
    assert!(report.audit_entries >= 3, "{report:?}");
    let last = last.unwrap();
    assert_eq!(last.done, last.total, "{last:?}");
    assert!(report.bytes > 300_000 + 60_000, "{report:?}");
}

#[test]
fn a_flipped_bit_in_any_file_of_the_vault_is_found() {
    let (dir, space) = populated();
    let vault_dir = space.root().join("acme");
    let mut files = Vec::new();
    files_under(&vault_dir, &vault_dir, &mut files);
    let mut checked = 0;
    for file in files {
        let name = file.to_string_lossy().into_owned();
        // The header is checked by every unlock (below); the failed-attempt
        // counter is not authenticated by design (vault-header.md).
        if name == "attempts" {
            continue;
        }
        let copy = dir.path().join(format!("copy-{checked}"));
        copy_dir(space.root(), &copy);
        let target = copy.join("acme").join(&file);
        let mut bytes = std::fs::read(&target).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        std::fs::write(&target, &bytes).unwrap();
        let copied = Space::new(copy);
        checked += 1;
        if name == "header" {
            let refused = copied
                .vault("acme")
                .unwrap()
                .unlock(&Credential::Passphrase(&pass("pw")));
            assert!(
                matches!(refused, Err(Error::Corrupt(_) | Error::Tampered)),
                "a flipped header bit: {:?}",
                refused.map(|_| ())
            );
            continue;
        }
        let report = check(&copied);
        let found = report.problems.iter().any(|p| {
            p.kind.is_damage()
                && (p.place.starts_with(&name)
                    || (name.starts_with("audit") && p.kind == ProblemKind::AuditChain))
        });
        assert!(
            found,
            "a flipped bit in {name} was not found: {:?}",
            report.problems
        );
    }
    // The header, the audit log and its anchor, the catalog, two app
    // databases, three blobs.
    assert!(checked >= 9, "only {checked} files");
}

#[test]
fn missing_orphaned_and_leftover_files_are_reported() {
    let (_d, space) = populated();
    let vault_dir = space.root().join("acme");
    let v = space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::Passphrase(&pass("pw")))
        .unwrap();
    let camera = v.app("camera").unwrap();
    let blob_dir = crate::app::files_dir(&vault_dir, camera.info());
    let small = camera.files().unwrap();
    let blob = small
        .connection()
        .query_row(
            "SELECT blob FROM coffer_files WHERE name = 'small.txt'",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap();
    drop(small);
    std::fs::remove_file(blob_dir.join(&blob)).unwrap();
    std::fs::write(blob_dir.join("0123456789abcdef0123456789abcdef"), b"stray").unwrap();
    std::fs::write(
        blob_dir.join(".0123456789abcdef0123456789abcdef.tmp"),
        b"half",
    )
    .unwrap();
    std::fs::create_dir_all(
        vault_dir
            .join("files")
            .join("ffffffffffffffffffffffffffffffff"),
    )
    .unwrap();
    let report = v.check(&mut |_| {}).unwrap();
    let mut kinds: Vec<&str> = report.problems.iter().map(|p| p.kind.code()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["file_missing", "leftover_temporary", "orphan", "orphan"],
        "{:?}",
        report.problems
    );
    let missing = report
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::FileMissing)
        .unwrap();
    assert!(missing.place.contains("file 'small.txt'"), "{missing:?}");
}
