//! The local audit log: every security event recorded, encrypted, and any
//! edit, deletion, swap or truncation detected.

use std::path::{Path, PathBuf};

use super::{pass, space, FAST};
use crate::audit::{HEAD_FILE, LOG_FILE};
use crate::kdf::KdfParams;
use crate::rotate::RotateOptions;
use crate::*;

fn open(space: &Space, p: &str) -> Result<UnlockedVault> {
    space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::Passphrase(&pass(p)))
}

fn events(v: &UnlockedVault) -> Vec<String> {
    let trail = v.audit().unwrap();
    assert_eq!(trail.problem, None);
    trail.entries.into_iter().map(|e| e.event).collect()
}

fn log_path(space: &Space) -> PathBuf {
    space.root().join("acme").join(LOG_FILE)
}

/// The log's entries as byte ranges (file header: 10 bytes; entry: seq,
/// len, nonce, ciphertext, mac).
fn entries(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 10;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let end = at + 8 + 4 + 12 + len + 32;
        out.push(at..end);
        at = end;
    }
    out
}

/// A vault whose log has a known history of security events.
fn with_history() -> (tempfile::TempDir, Space) {
    let (dir, space) = space();
    let mut v = space
        .create_vault("acme", "alice", &pass("pw"), &FAST)
        .unwrap();
    v.add_passphrase_slot("bob", &pass("bob pw"), &FAST)
        .unwrap();
    v.set_lockout(Lockout::Lock(5)).unwrap();
    drop(v);
    assert!(matches!(open(&space, "guess"), Err(Error::WrongPassphrase)));
    let mut v = open(&space, "pw").unwrap();
    v.change_passphrase(Some("bob"), &pass("bob pw 2"), &FAST)
        .unwrap();
    v.remove_slot("bob").unwrap();
    (dir, space)
}

#[test]
fn every_security_event_is_recorded_in_order() {
    let (_d, space) = with_history();
    let mut v = open(&space, "pw").unwrap();
    let until = std::time::SystemTime::now() + std::time::Duration::from_secs(600);
    let (_, temp) = v.add_temporary_slot("visitor", until, true).unwrap();
    v.add_app("notes", Capabilities::all()).unwrap();
    v.app("notes")
        .unwrap()
        .export(&mut Vec::new(), &pass("archive"), &FAST, &mut |_| {})
        .unwrap();
    drop(v);
    space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::RecoveryKey(&temp))
        .unwrap();
    let mut v = open(&space, "pw").unwrap();
    let p = pass("pw");
    v.rotate(
        &[("alice", Credential::Passphrase(&p))],
        &RotateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        events(&v),
        [
            "vault_created",
            "slot_added",
            "lockout_set",
            "unlock_failed",
            "unlock",
            "passphrase_changed",
            "slot_removed",
            "unlock",
            "slot_added",
            "app_added",
            "app_exported",
            "temporary_key_used",
            "unlock",
            "rotation_started",
            "rotation_finished",
        ]
    );
    let trail = v.audit().unwrap();
    let failed = &trail.entries[3];
    assert_eq!(failed.details["failures"], 1);
    assert_eq!(trail.entries[5].details["slot"], "bob");
    assert_eq!(trail.entries[11].details["single_use"], true);
    assert_eq!(trail.entries[14].details["kept"][0], "alice");
    assert!(trail.entries.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
}

#[test]
fn the_log_is_encrypted() {
    let (_d, space) = with_history();
    let bytes = std::fs::read(log_path(&space)).unwrap();
    for needle in ["unlock", "alice", "bob", "passphrase_changed"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} in the clear"
        );
    }
}

/// Applies `tamper` to the log of a fresh history and returns the check's
/// verdict.
fn verdict(tamper: impl FnOnce(&Path, &mut Vec<u8>)) -> Option<AuditProblem> {
    let (_d, space) = with_history();
    let before = open(&space, "pw").unwrap().audit().unwrap();
    assert_eq!(before.problem, None);
    assert!(before.entries.len() >= 6);
    let path = log_path(&space);
    let mut bytes = std::fs::read(&path).unwrap();
    tamper(&space.root().join("acme"), &mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    // Read without unlocking again (an unlock appends an entry).
    let v = open(&space, "pw").unwrap();
    let trail = v.audit().unwrap();
    trail.problem
}

#[test]
fn an_edited_entry_is_detected() {
    let problem = verdict(|_, bytes| {
        let e = entries(bytes)[2].clone();
        bytes[e.start + 30] ^= 1; // inside the ciphertext
    });
    assert_eq!(problem, Some(AuditProblem::Altered { seq: 2 }));
}

#[test]
fn an_edited_mac_is_detected() {
    let problem = verdict(|_, bytes| {
        let e = entries(bytes)[3].clone();
        bytes[e.end - 1] ^= 0x80;
    });
    assert_eq!(problem, Some(AuditProblem::Altered { seq: 3 }));
}

#[test]
fn a_deleted_entry_is_detected() {
    let problem = verdict(|_, bytes| {
        let e = entries(bytes)[2].clone();
        bytes.drain(e);
    });
    assert_eq!(
        problem,
        Some(AuditProblem::Missing {
            expected: 2,
            found: 3
        })
    );
}

#[test]
fn swapped_entries_are_detected() {
    let problem = verdict(|_, bytes| {
        let all = entries(bytes);
        let (a, b) = (all[1].clone(), all[2].clone());
        let mut swapped = bytes[..a.start].to_vec();
        swapped.extend_from_slice(&bytes[b.clone()]);
        swapped.extend_from_slice(&bytes[a]);
        swapped.extend_from_slice(&bytes[b.end..]);
        *bytes = swapped;
    });
    assert_eq!(
        problem,
        Some(AuditProblem::Reordered {
            expected: 1,
            found: 2
        })
    );
}

#[test]
fn a_truncated_log_is_detected() {
    let mut total = 0;
    let problem = verdict(|_, bytes| {
        let all = entries(bytes);
        total = all.len() as u64;
        bytes.truncate(all[all.len() - 2].start);
    });
    // The unlock that reads it appended one more entry after the cut.
    assert!(
        matches!(problem, Some(AuditProblem::Missing { expected, .. }) if expected == total - 2),
        "{problem:?}"
    );
}

#[test]
fn a_truncated_log_is_detected_without_a_new_entry() {
    let (_d, space) = with_history();
    let v = open(&space, "pw").unwrap();
    let path = log_path(&space);
    let bytes = std::fs::read(&path).unwrap();
    let all = entries(&bytes);
    std::fs::write(&path, &bytes[..all[all.len() - 1].start]).unwrap();
    assert_eq!(
        v.audit().unwrap().problem,
        Some(AuditProblem::Truncated {
            anchored: all.len() as u64,
            found: all.len() as u64 - 1
        })
    );
    std::fs::write(&path, &bytes[..10]).unwrap();
    assert!(matches!(
        v.audit().unwrap().problem,
        Some(AuditProblem::Truncated { found: 0, .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        v.audit().unwrap().problem,
        Some(AuditProblem::Truncated { found: 0, .. })
    ));
}

#[test]
fn a_removed_or_altered_anchor_is_detected() {
    let (_d, space) = with_history();
    let v = open(&space, "pw").unwrap();
    let head = space.root().join("acme").join(HEAD_FILE);
    let original = std::fs::read(&head).unwrap();
    let mut edited = original.clone();
    edited[12] ^= 1;
    std::fs::write(&head, &edited).unwrap();
    assert_eq!(v.audit().unwrap().problem, Some(AuditProblem::Anchor));
    std::fs::remove_file(&head).unwrap();
    assert_eq!(v.audit().unwrap().problem, Some(AuditProblem::Anchor));
    std::fs::write(&head, &original).unwrap();
    assert_eq!(v.audit().unwrap().problem, None);
}

#[test]
fn a_crash_between_append_and_anchor_is_not_tampering() {
    let (_d, space) = with_history();
    let head = space.root().join("acme").join(HEAD_FILE);
    let v = open(&space, "pw").unwrap();
    let stale_head = std::fs::read(&head).unwrap();
    v.record("test_event", serde_json::json!({})).unwrap();
    // As if the process died after appending, before the new anchor.
    std::fs::write(&head, &stale_head).unwrap();
    assert_eq!(v.audit().unwrap().problem, None);
    // A torn append after that: cut off by the next append.
    let path = log_path(&space);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[7u8; 20]);
    std::fs::write(&path, &bytes).unwrap();
    v.record("after_the_crash", serde_json::json!({})).unwrap();
    let trail = v.audit().unwrap();
    assert_eq!(trail.problem, None);
    let names: Vec<_> = trail
        .entries
        .iter()
        .rev()
        .take(2)
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(names, ["after_the_crash", "test_event"]);
}

#[test]
fn rotation_carries_the_log_and_never_launders_tampering() {
    let (_d, space) = with_history();
    let mut v = open(&space, "pw").unwrap();
    let before = v.audit().unwrap().entries.len();
    // Someone deletes an entry; the rotation must not make it look whole.
    let path = log_path(&space);
    let mut bytes = std::fs::read(&path).unwrap();
    let e = entries(&bytes)[1].clone();
    bytes.drain(e);
    std::fs::write(&path, &bytes).unwrap();
    let p = pass("pw");
    v.rotate(
        &[("alice", Credential::Passphrase(&p))],
        &RotateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let trail = v.audit().unwrap();
    assert_eq!(trail.problem, None, "the new chain is sound");
    let names: Vec<_> = trail.entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names[0], "vault_created");
    assert_eq!(names[1], "audit_chain_broken");
    assert!(trail.entries[1].details["problem"]
        .as_str()
        .unwrap()
        .contains("missing"));
    // Every entry after the deleted one still authenticates on its own: all
    // of them (and the rotation_started appended after them) are carried,
    // marked as salvaged; only the deleted one is missing.
    let salvaged = trail
        .entries
        .iter()
        .filter(|e| e.details["salvaged"] == true)
        .count();
    assert_eq!(salvaged, before - 2 + 1, "{names:?}");
    assert_eq!(trail.entries[2].details["original_seq"], 2);
    assert_eq!(names.last(), Some(&"rotation_finished"));
    assert!(before >= 6);
}

#[test]
fn an_unreadable_entry_is_carried_as_a_stand_in() {
    let (_d, space) = with_history();
    let mut v = open(&space, "pw").unwrap();
    let path = log_path(&space);
    let mut bytes = std::fs::read(&path).unwrap();
    let e = entries(&bytes)[1].clone();
    bytes[e.start + 30] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let p = pass("pw");
    v.rotate(
        &[("alice", Credential::Passphrase(&p))],
        &RotateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let trail = v.audit().unwrap();
    assert_eq!(trail.problem, None);
    let names: Vec<_> = trail.entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "vault_created",
            "audit_chain_broken",
            "audit_entry_unreadable",
            "lockout_set"
        ]
    );
    assert_eq!(trail.entries[2].details["original_seq"], 1);
}

#[test]
fn several_unanchored_entries_are_reported_until_the_next_append() {
    let (_d, space) = with_history();
    let head = space.root().join("acme").join(HEAD_FILE);
    let v = open(&space, "pw").unwrap();
    let stale_head = std::fs::read(&head).unwrap();
    for i in 0..3 {
        v.record(&format!("event_{i}"), serde_json::json!({}))
            .unwrap();
        // As if each anchor write were lost, or an older anchor put back.
        std::fs::write(&head, &stale_head).unwrap();
    }
    // One entry past the anchor is a crash; more could be an older anchor
    // hiding a cut, and is said so.
    assert_eq!(
        v.audit().unwrap().problem,
        Some(AuditProblem::Unanchored { count: 3 })
    );
    // The next append adopts them (they chain: a key holder wrote them).
    v.record("after", serde_json::json!({})).unwrap();
    let trail = v.audit().unwrap();
    assert_eq!(trail.problem, None);
    assert_eq!(trail.entries.last().unwrap().event, "after");
}

#[test]
fn bytes_inserted_before_the_anchored_end_are_never_cut() {
    let (_d, space) = with_history();
    let v = open(&space, "pw").unwrap();
    let path = log_path(&space);
    let mut bytes = std::fs::read(&path).unwrap();
    let e = entries(&bytes)[1].clone();
    // Forty bytes slipped in after entry 1: past the anchor's length, they
    // look like a torn append; they are not one.
    let tampered: Vec<u8> = bytes[..e.end]
        .iter()
        .chain([0x55u8; 40].iter())
        .chain(bytes[e.end..].iter())
        .copied()
        .collect();
    std::fs::write(&path, &tampered).unwrap();
    v.record("after", serde_json::json!({})).unwrap();
    let after = std::fs::read(&path).unwrap();
    assert_eq!(&after[..tampered.len()], &tampered[..], "nothing was cut");
    assert!(v.audit().unwrap().problem.is_some());
    bytes.clear();
}

#[test]
fn rotation_salvages_the_entries_after_inserted_bytes() {
    let (_d, space) = with_history();
    let mut v = open(&space, "pw").unwrap();
    let path = log_path(&space);
    let bytes = std::fs::read(&path).unwrap();
    let all = entries(&bytes);
    let total = all.len();
    let e = all[1].clone();
    let tampered: Vec<u8> = bytes[..e.end]
        .iter()
        .chain([0x55u8; 3].iter())
        .chain(bytes[e.end..].iter())
        .copied()
        .collect();
    std::fs::write(&path, &tampered).unwrap();
    let p = pass("pw");
    v.rotate(
        &[("alice", Credential::Passphrase(&p))],
        &RotateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let trail = v.audit().unwrap();
    assert_eq!(trail.problem, None);
    let names: Vec<_> = trail.entries.iter().map(|e| e.event.as_str()).collect();
    assert!(names.contains(&"audit_bytes_unreadable"), "{names:?}");
    // Every genuine entry after the inserted bytes is carried.
    let salvaged = trail
        .entries
        .iter()
        .filter(|e| e.details["salvaged"] == true)
        .count();
    assert!(salvaged >= total - 2, "{names:?}");
}

#[test]
fn a_deleted_log_stays_detected_after_new_entries() {
    let (_d, space) = with_history();
    let dir = space.root().join("acme");
    std::fs::remove_file(dir.join(LOG_FILE)).unwrap();
    std::fs::remove_file(dir.join(HEAD_FILE)).unwrap();
    // The unlock appends to a fresh log; the check still says what happened.
    let v = open(&space, "pw").unwrap();
    assert_eq!(v.audit().unwrap().problem, Some(AuditProblem::Deleted));
    v.record("later", serde_json::json!({})).unwrap();
    assert_eq!(v.audit().unwrap().problem, Some(AuditProblem::Deleted));
}

#[test]
fn without_an_anchor_nothing_is_cut_or_adopted() {
    let (_d, space) = with_history();
    let v = open(&space, "pw").unwrap();
    let dir = space.root().join("acme");
    let path = log_path(&space);
    let mut bytes = std::fs::read(&path).unwrap();
    let count = entries(&bytes).len();
    // Delete the anchor and damage the second entry's length field: an
    // append must neither cut the log there nor heal the chain.
    std::fs::remove_file(dir.join(HEAD_FILE)).unwrap();
    let e = entries(&bytes)[1].clone();
    bytes[e.start + 8..e.start + 12].copy_from_slice(&[0xff; 4]);
    std::fs::write(&path, &bytes).unwrap();
    v.record("after", serde_json::json!({})).unwrap();
    let after = std::fs::read(&path).unwrap();
    assert!(after.len() > bytes.len(), "nothing was cut");
    assert_eq!(&after[..bytes.len()], &bytes[..]);
    assert!(v.audit().unwrap().problem.is_some());
    assert!(count >= 6);
}

#[test]
fn an_unlock_racing_a_rotation_never_gets_the_old_key() {
    // Alice's slot has a slow KDF; the rotation, opened with a recovery key
    // (not serialized with passphrase attempts), keeps only that key. Her
    // unlock starts first; the rotation runs during her KDF.
    let (_d, space) = space();
    let slow = KdfParams::Argon2id {
        memory_kib: 65536,
        iterations: 8,
        parallelism: 1,
    };
    let mut v = space
        .create_vault("acme", "alice", &pass("pw"), &slow)
        .unwrap();
    let (_, recovery) = v.add_recovery_slot("admin").unwrap();
    v.add_app("notes", Capabilities::all()).unwrap();
    drop(v);
    let unlocking = {
        let space = space.clone();
        std::thread::spawn(move || {
            let opened = open(&space, "pw");
            // Whatever happened, a handle that came back must work.
            if let Ok(v) = &opened {
                v.app("notes")
                    .unwrap()
                    .kv()
                    .unwrap()
                    .put("k", b"v")
                    .unwrap();
            }
            opened.is_ok()
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(30));
    let mut admin = space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::RecoveryKey(&recovery))
        .unwrap();
    admin
        .rotate(
            &[("admin", Credential::RecoveryKey(&recovery))],
            &RotateOptions::default(),
            &mut |_| {},
        )
        .unwrap();
    let alice_got_in = unlocking.join().unwrap();
    // Alice's unlock held the vault from its start: the rotation waited for
    // her to finish and close, so she got in (with the key of the time).
    assert!(alice_got_in);
    // The new key's log is sound: nothing was appended under the old key
    // after the rotation; and alice is retired now.
    assert_eq!(admin.audit().unwrap().problem, None);
    drop(admin);
    assert!(matches!(open(&space, "pw"), Err(Error::WrongPassphrase)));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn checking_arbitrary_bytes_never_panics(
        log in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
        head in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128),
    ) {
        let keys = crate::audit::AuditKeys {
            log: Subkey::from_bytes([0x11; 32]),
            mac: Subkey::from_bytes([0x22; 32]),
        };
        let _ = crate::audit::check(Some(&log), Some(&head), &keys);
        let _ = crate::audit::check(Some(&log), None, &keys);
    }

    #[test]
    fn mutated_genuine_logs_never_pass_or_panic(at in 0usize..4096, flip in 1u8..=255) {
        // The vector's log: any changed byte is reported, never accepted.
        let v: serde_json::Value = serde_json::from_str(include_str!("../../../../docs/test-vectors/audit-log-v1.json")).unwrap();
        let mut log = hex::decode(v["audit_log"].as_str().unwrap()).unwrap();
        let head = hex::decode(v["audit_head"].as_str().unwrap()).unwrap();
        let keys = crate::audit::AuditKeys {
            log: Subkey::from_bytes([0x11; 32]),
            mac: Subkey::from_bytes([0x22; 32]),
        };
        assert_eq!(crate::audit::check(Some(&log), Some(&head), &keys).problem, None);
        let i = at % log.len();
        log[i] ^= flip;
        let trail = crate::audit::check(Some(&log), Some(&head), &keys);
        proptest::prop_assert!(trail.problem.is_some(), "byte {} changed and accepted", i);
    }
}
