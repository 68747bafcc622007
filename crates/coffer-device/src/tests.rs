//! Behaviour tests of spaces, vaults, slots and the header format. They live
//! inside the crate because some of them need the vault key itself (to prove
//! it never reaches the disk) and the header's internals (to forge headers
//! the way an attacker with write access would).

use std::path::Path;

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use crate::header::{Header, SealedHeader, SlotMeta, VaultId, SLOT_COUNT};
use crate::keyslot::KeySlot;
use crate::space::HEADER_FILE;
use crate::*;

mod archive;
mod audit;
mod check;
mod files_sync;
mod rotate;
mod session;
mod stores;
mod sync;
mod vectors;
mod wipe;

/// Tiny Argon2id parameters: real Argon2id, fast enough to run thousands of
/// times. Never used outside tests.
pub(crate) const FAST: KdfParams = KdfParams::Argon2id {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

/// An app's database opened directly with its key, bypassing the sandbox of
/// `App::database()`, as a tampered device or a crafted archive would.
pub(crate) fn raw_app_db(vault: &UnlockedVault, app: &str) -> rusqlite::Connection {
    let info = vault.app(app).unwrap().info().clone();
    let path = vault.vault().path().join("data").join(&info.db_file);
    store::database::open(
        &path,
        &vault.subkey(Purpose::AppDatabase(&info.id)).unwrap(),
        false,
    )
    .unwrap()
}

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_owned()).unwrap()
}

fn space() -> (tempfile::TempDir, Space) {
    let dir = tempfile::tempdir().unwrap();
    let space = Space::new(dir.path().join("space"));
    (dir, space)
}

fn unlock(space: &Space, p: &str) -> Result<UnlockedVault> {
    space
        .vault("acme")?
        .unlock(&Credential::Passphrase(&pass(p)))
}

/// A vault with alice (slot 0) and bob (slot 1).
fn two_user_vault() -> (tempfile::TempDir, Space) {
    let (dir, space) = space();
    let mut v = space
        .create_vault("acme", "alice", &pass("alice pw"), &FAST)
        .unwrap();
    v.add_passphrase_slot("bob", &pass("bob pw"), &FAST)
        .unwrap();
    (dir, space)
}

fn header_path(space: &Space) -> std::path::PathBuf {
    space.root().join("acme").join(HEADER_FILE)
}

fn read_header(space: &Space) -> Vec<u8> {
    std::fs::read(header_path(space)).unwrap()
}

/// Rewrites the trailing checksum, as an attacker who edits the file would.
fn fix_checksum(bytes: &mut [u8]) {
    let n = bytes.len() - 32;
    let sum: [u8; 32] = Sha256::digest(&bytes[..n]).into();
    bytes[n..].copy_from_slice(&sum);
}

const SLOT0: usize = 32;
const SLOT_LEN: usize = crate::keyslot::SLOT_LEN;

#[test]
fn create_then_open_round_trip() {
    let (_d, space) = space();
    let created = space
        .create_vault("acme", "alice", &pass("pw one"), &FAST)
        .unwrap();
    let id = created.vault_id();
    let key = *created
        .subkey(Purpose::AppDatabase("notes"))
        .unwrap()
        .expose_secret();
    drop(created);
    let opened = unlock(&space, "pw one").unwrap();
    assert_eq!(opened.vault_id(), id);
    assert_eq!(
        *opened
            .subkey(Purpose::AppDatabase("notes"))
            .unwrap()
            .expose_secret(),
        key
    );
    assert_eq!(opened.opened_slot(), 0);
    let slots = opened.slots();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].name, "alice");
    assert_eq!(slots[0].kind, SlotKind::Passphrase(FAST));
    assert_eq!(space.vault_names().unwrap(), vec!["acme".to_owned()]);
}

#[test]
fn wrong_passphrase_is_its_own_error() {
    let (_d, space) = two_user_vault();
    assert!(matches!(
        unlock(&space, "not it"),
        Err(Error::WrongPassphrase)
    ));
}

#[test]
fn subkeys_differ_by_purpose_and_app() {
    let (_d, space) = two_user_vault();
    let v = unlock(&space, "alice pw").unwrap();
    let keys = [
        Purpose::HeaderMac,
        Purpose::HeaderMeta,
        Purpose::AuditMac,
        Purpose::AppDatabase("a"),
        Purpose::AppDatabase("b"),
        Purpose::AppFiles("a"),
        Purpose::AppRecords("a"),
    ]
    .map(|p| *v.subkey(p).unwrap().expose_secret());
    for i in 0..keys.len() {
        for j in i + 1..keys.len() {
            assert_ne!(keys[i], keys[j], "{i} vs {j}");
        }
    }
}

#[test]
fn missing_and_existing_vaults_are_typed_errors() {
    let (_d, space) = two_user_vault();
    assert!(matches!(space.vault("nope"), Err(Error::NoSuchVault { name }) if name == "nope"));
    assert!(matches!(
        space.create_vault("acme", "x", &pass("p"), &FAST),
        Err(Error::VaultExists { .. })
    ));
    for bad in ["", "Acme", "../etc", ".hidden", "a/b", &"x".repeat(65)] {
        assert!(
            matches!(
                space.vault(bad),
                Err(Error::InvalidName {
                    what: "vault name",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn two_users_each_open_with_their_own_passphrase() {
    let (_d, space) = two_user_vault();
    let a = unlock(&space, "alice pw").unwrap();
    let b = unlock(&space, "bob pw").unwrap();
    assert_eq!(a.opened_slot(), 0);
    assert_eq!(b.opened_slot(), 1);
    assert_eq!(
        a.subkey(Purpose::AuditMac).unwrap().expose_secret(),
        b.subkey(Purpose::AuditMac).unwrap().expose_secret()
    );
    let names: Vec<_> = b.slots().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["alice", "bob"]);
}

#[test]
fn removing_a_slot_keeps_the_others() {
    let (_d, space) = two_user_vault();
    let mut v = unlock(&space, "alice pw").unwrap();
    let (_, recovery) = v.add_recovery_slot("recovery").unwrap();
    v.remove_slot("bob").unwrap();
    assert!(matches!(
        unlock(&space, "bob pw"),
        Err(Error::WrongPassphrase)
    ));
    unlock(&space, "alice pw").unwrap();
    space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::RecoveryKey(&recovery))
        .unwrap();
    assert!(matches!(
        v.remove_slot("bob"),
        Err(Error::NoSuchSlot { .. })
    ));
}

#[test]
fn changing_a_passphrase_rewraps_only_that_slot() {
    let (_d, space) = two_user_vault();
    let mut v = unlock(&space, "alice pw").unwrap();
    v.add_app("notes", Capabilities::all()).unwrap();
    v.app("notes")
        .unwrap()
        .kv()
        .unwrap()
        .put("k", b"kept")
        .unwrap();
    let (_, recovery) = v.add_recovery_slot("recovery").unwrap();
    let before = read_header(&space);
    let changed = v
        .change_passphrase(None, &pass("alice new"), &FAST)
        .unwrap();
    assert_eq!((changed.index, changed.name.as_str()), (0, "alice"));
    assert!(matches!(
        unlock(&space, "alice pw"),
        Err(Error::WrongPassphrase)
    ));
    let v = unlock(&space, "alice new").unwrap();
    assert_eq!(
        v.app("notes")
            .unwrap()
            .kv()
            .unwrap()
            .get("k")
            .unwrap()
            .unwrap(),
        b"kept"
    );
    unlock(&space, "bob pw").unwrap();
    // Only slot 0 changed among the slots: bob's and the recovery slot's bytes are as before.
    let after = read_header(&space);
    assert_ne!(
        before[SLOT0..SLOT0 + SLOT_LEN],
        after[SLOT0..SLOT0 + SLOT_LEN]
    );
    assert_eq!(
        before[SLOT0 + SLOT_LEN..SLOT0 + 3 * SLOT_LEN],
        after[SLOT0 + SLOT_LEN..SLOT0 + 3 * SLOT_LEN]
    );
    // With the recovery key, any user's passphrase can be reset by name.
    let mut by_recovery = space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::RecoveryKey(&recovery))
        .unwrap();
    assert!(matches!(
        by_recovery.change_passphrase(None, &pass("x"), &FAST),
        Err(Error::NotAPassphraseSlot { .. })
    ));
    by_recovery
        .change_passphrase(Some("bob"), &pass("bob reset"), &FAST)
        .unwrap();
    assert!(matches!(
        unlock(&space, "bob pw"),
        Err(Error::WrongPassphrase)
    ));
    unlock(&space, "bob reset").unwrap();
    assert!(matches!(
        by_recovery.change_passphrase(Some("nobody"), &pass("x"), &FAST),
        Err(Error::NoSuchSlot { .. })
    ));
}

#[test]
fn temporary_keys_expire_by_a_clock_that_never_runs_backwards() {
    use std::time::{Duration, SystemTime};
    let (_d, space) = two_user_vault();
    let t0 = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let mut v = unlock(&space, "alice pw").unwrap();
    let (info, key) = v.add_temporary_slot("visitor", t0 + day, false).unwrap();
    assert_eq!(info.kind, SlotKind::Temporary);
    assert!(info.expires_at.is_some() && !info.single_use);
    let vault = space.vault("acme").unwrap();
    let with_key = |now| vault.unlock_at(&Credential::RecoveryKey(&key), now);
    // Before expiry it opens, repeatedly.
    assert_eq!(with_key(t0 + day / 2).unwrap().opened_slot(), info.index);
    with_key(t0 + day / 2).unwrap();
    // alice opens the vault a week later: the vault has now seen that time.
    vault
        .unlock_at(&Credential::Passphrase(&pass("alice pw")), t0 + 7 * day)
        .unwrap();
    // Setting the clock back does not revive the key.
    match with_key(t0 + day / 4) {
        Err(Error::TemporaryKeyExpired { name }) => assert_eq!(name, "visitor"),
        other => panic!("{:?}", other.map(|_| "unlocked")),
    }
    // And the expired slot is gone.
    assert!(unlock(&space, "alice pw")
        .unwrap()
        .slots()
        .iter()
        .all(|s| s.name != "visitor"));
    assert!(matches!(with_key(t0), Err(Error::WrongRecoveryKey)));
}

#[test]
fn a_single_use_temporary_key_is_consumed() {
    use std::time::{Duration, SystemTime};
    let (_d, space) = two_user_vault();
    let mut v = unlock(&space, "alice pw").unwrap();
    let (_, key) = v
        .add_temporary_slot("once", SystemTime::now() + Duration::from_secs(3600), true)
        .unwrap();
    let vault = space.vault("acme").unwrap();
    let mut opened = vault.unlock(&Credential::RecoveryKey(&key)).unwrap();
    // The holder can set their own passphrase with it, once.
    opened
        .add_passphrase_slot("carol", &pass("carol pw"), &FAST)
        .unwrap();
    assert!(matches!(
        vault.unlock(&Credential::RecoveryKey(&key)),
        Err(Error::WrongRecoveryKey)
    ));
    unlock(&space, "carol pw").unwrap();
    assert!(opened.slots().iter().all(|s| s.name != "once"));
}

#[test]
fn expiry_is_checked_against_a_test_controlled_clock_exactly() {
    use std::time::{Duration, UNIX_EPOCH};
    let (_d, space) = two_user_vault();
    let mut v = unlock(&space, "alice pw").unwrap();
    let expiry = UNIX_EPOCH + Duration::from_secs(4_000_000_000);
    let (_, key) = v.add_temporary_slot("t", expiry, false).unwrap();
    let vault = space.vault("acme").unwrap();
    vault
        .unlock_at(
            &Credential::RecoveryKey(&key),
            expiry - Duration::from_secs(1),
        )
        .unwrap();
    assert!(matches!(
        vault.unlock_at(&Credential::RecoveryKey(&key), expiry),
        Err(Error::TemporaryKeyExpired { .. })
    ));
}

#[test]
fn lockout_then_recovery_opens_and_resets() {
    use std::time::{Duration, SystemTime};
    let (_d, space) = two_user_vault();
    let mut v = unlock(&space, "alice pw").unwrap();
    let (_, recovery) = v.add_recovery_slot("recovery").unwrap();
    v.set_lockout(Lockout::Lock(3)).unwrap();
    drop(v);
    let vault = space.vault("acme").unwrap();
    let t = SystemTime::now();
    let try_at = |p: &str, s: u64| {
        vault.unlock_at(
            &Credential::Passphrase(&pass(p)),
            t + Duration::from_secs(s),
        )
    };
    assert!(matches!(try_at("guess 1", 0), Err(Error::WrongPassphrase)));
    assert!(matches!(try_at("guess 2", 0), Err(Error::WrongPassphrase)));
    assert!(matches!(try_at("guess 3", 0), Err(Error::LockedOut)));
    assert_eq!(vault.info().unwrap().failed_attempts, 3);
    // Now even the right passphrase is refused, without running any KDF.
    assert!(matches!(try_at("alice pw", 100), Err(Error::LockedOut)));
    // The recovery key opens it and clears the counter.
    vault.unlock(&Credential::RecoveryKey(&recovery)).unwrap();
    assert_eq!(vault.info().unwrap().failed_attempts, 0);
    try_at("alice pw", 200).unwrap();
}

#[test]
fn lockout_can_wipe_the_vault() {
    let (_d, space) = two_user_vault();
    let mut v = unlock(&space, "alice pw").unwrap();
    v.set_lockout(Lockout::Wipe(2)).unwrap();
    assert_eq!(
        space.vault("acme").unwrap().info().unwrap().lockout,
        Lockout::Wipe(2)
    );
    drop(v);
    assert!(matches!(
        unlock(&space, "guess 1"),
        Err(Error::WrongPassphrase)
    ));
    assert!(matches!(
        unlock(&space, "guess 2"),
        Err(Error::Wiped { .. })
    ));
    assert!(matches!(
        unlock(&space, "alice pw"),
        Err(Error::Wiped { .. })
    ));
}

#[test]
fn failed_attempts_back_off_exponentially() {
    use std::time::{Duration, SystemTime};
    let (_d, space) = two_user_vault();
    let vault = space.vault("acme").unwrap();
    let t = SystemTime::now();
    let try_at = |p: &str, s: u64| {
        vault.unlock_at(
            &Credential::Passphrase(&pass(p)),
            t + Duration::from_secs(s),
        )
    };
    for _ in 0..3 {
        assert!(matches!(try_at("guess", 0), Err(Error::WrongPassphrase)));
    }
    // After three failures: wait 1 s, then 2 s, then 4 s…
    assert!(matches!(
        try_at("alice pw", 0),
        Err(Error::BackOff {
            retry_after_secs: 1
        })
    ));
    assert!(matches!(try_at("guess", 1), Err(Error::WrongPassphrase)));
    assert!(matches!(
        try_at("alice pw", 2),
        Err(Error::BackOff {
            retry_after_secs: 1
        })
    ));
    assert!(matches!(try_at("guess", 3), Err(Error::WrongPassphrase)));
    assert!(matches!(
        try_at("alice pw", 4),
        Err(Error::BackOff {
            retry_after_secs: 3
        })
    ));
    // A refused-too-soon attempt does not count, and success resets.
    try_at("alice pw", 7).unwrap();
    assert_eq!(vault.failed_attempts(), 0);
    assert!(matches!(try_at("guess", 7), Err(Error::WrongPassphrase)));
    assert!(matches!(try_at("guess", 7), Err(Error::WrongPassphrase)));
}

#[test]
fn parallel_wrong_guesses_are_counted_before_their_kdf_runs() {
    // Eight processes' worth of guesses at once against "lock after 3": only
    // the first two may run their KDF to a plain "wrong passphrase"; the
    // third reaches the limit; the rest are refused before any KDF.
    let (_d, space) = two_user_vault();
    let mut v = unlock(&space, "alice pw").unwrap();
    v.set_lockout(Lockout::Lock(3)).unwrap();
    drop(v);
    let results: Vec<_> = (0..8)
        .map(|i| {
            let vault = space.vault("acme").unwrap();
            std::thread::spawn(move || {
                vault
                    .unlock(&Credential::Passphrase(&pass(&format!("guess {i}"))))
                    .map(|_| ())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let wrong = results
        .iter()
        .filter(|r| matches!(r, Err(Error::WrongPassphrase)))
        .count();
    let locked = results
        .iter()
        .filter(|r| matches!(r, Err(Error::LockedOut)))
        .count();
    assert_eq!((wrong, locked), (2, 6), "{results:?}");
    assert_eq!(space.vault("acme").unwrap().failed_attempts(), 3);
}

#[test]
fn a_temporary_key_opens_the_data_not_the_key_slots() {
    use std::time::{Duration, SystemTime};
    let (_d, space) = two_user_vault();
    let mut v = unlock(&space, "alice pw").unwrap();
    let soon = SystemTime::now() + Duration::from_secs(3600);
    let (_, visitor) = v.add_temporary_slot("visitor", soon, false).unwrap();
    let (_, handover) = v.add_temporary_slot("handover", soon, true).unwrap();
    drop(v);
    let vault = space.vault("acme").unwrap();
    let mut as_visitor = vault.unlock(&Credential::RecoveryKey(&visitor)).unwrap();
    assert_eq!(
        as_visitor
            .subkey(Purpose::AuditMac)
            .unwrap()
            .expose_secret()
            .len(),
        32
    );
    let denied = |r: Result<()>| assert!(matches!(r, Err(Error::NotPermitted(_))), "{r:?}");
    denied(
        as_visitor
            .add_passphrase_slot("me", &pass("mine"), &FAST)
            .map(|_| ()),
    );
    denied(as_visitor.add_recovery_slot("mine").map(|_| ()));
    denied(
        as_visitor
            .add_temporary_slot("again", soon, false)
            .map(|_| ()),
    );
    denied(
        as_visitor
            .change_passphrase(Some("alice"), &pass("hijack"), &FAST)
            .map(|_| ()),
    );
    denied(as_visitor.remove_slot("alice"));
    denied(as_visitor.set_lockout(Lockout::Off));
    // A single-use key may add a passphrase slot (the way back in), nothing more.
    let mut as_handover = vault.unlock(&Credential::RecoveryKey(&handover)).unwrap();
    as_handover
        .add_passphrase_slot("carol", &pass("carol pw"), &FAST)
        .unwrap();
    denied(
        as_handover
            .change_passphrase(Some("alice"), &pass("hijack"), &FAST)
            .map(|_| ()),
    );
    unlock(&space, "alice pw").unwrap();
}

#[test]
fn a_clock_set_back_cannot_stretch_the_back_off() {
    use std::time::{Duration, SystemTime};
    let (_d, space) = two_user_vault();
    let vault = space.vault("acme").unwrap();
    let t = SystemTime::now();
    for _ in 0..4 {
        let _ = vault.unlock_at(
            &Credential::Passphrase(&pass("guess")),
            t + Duration::from_secs(3600),
        );
    }
    // The last failure was recorded an hour ahead; now the clock reads t.
    match vault.unlock_at(&Credential::Passphrase(&pass("alice pw")), t) {
        Err(Error::BackOff { retry_after_secs }) => {
            assert!(retry_after_secs <= 2, "{retry_after_secs}")
        }
        other => panic!("{:?}", other.map(|_| "unlocked")),
    }
}

#[test]
fn the_last_slot_cannot_be_removed() {
    let (_d, space) = space();
    let mut v = space
        .create_vault("acme", "alice", &pass("pw"), &FAST)
        .unwrap();
    assert!(matches!(v.remove_slot("alice"), Err(Error::LastSlot)));
    unlock(&space, "pw").unwrap();
}

#[test]
fn slot_names_are_unique_and_slots_run_out_at_sixteen() {
    let (_d, space) = space();
    let mut v = space
        .create_vault("acme", "u0", &pass("pw"), &FAST)
        .unwrap();
    assert!(matches!(
        v.add_passphrase_slot("u0", &pass("x"), &FAST),
        Err(Error::SlotNameTaken { .. })
    ));
    for i in 1..SLOT_COUNT {
        v.add_passphrase_slot(&format!("u{i}"), &pass(&format!("pw{i}")), &FAST)
            .unwrap();
    }
    assert!(matches!(
        v.add_passphrase_slot("one more", &pass("x"), &FAST),
        Err(Error::SlotsFull(16))
    ));
    assert_eq!(unlock(&space, "pw15").unwrap().opened_slot(), 15);
    for bad in ["", " lead", "trail ", "tab\there", &"n".repeat(65)] {
        assert!(matches!(
            v.add_passphrase_slot(bad, &pass("x"), &FAST),
            Err(Error::InvalidName {
                what: "slot name",
                ..
            })
        ));
    }
}

#[test]
fn recovery_key_opens_and_wrong_one_does_not() {
    let (_d, space) = two_user_vault();
    let mut v = unlock(&space, "alice pw").unwrap();
    let (info, key) = v.add_recovery_slot("recovery").unwrap();
    assert_eq!(info.kind, SlotKind::Recovery);
    let shown = key.display();
    use secrecy::ExposeSecret;
    let typed = RecoveryKey::parse(&shown.expose_secret().to_lowercase()).unwrap();
    let opened = space
        .vault("acme")
        .unwrap()
        .unlock(&Credential::RecoveryKey(&typed))
        .unwrap();
    assert_eq!(opened.opened_slot(), info.index);
    let other = RecoveryKey::generate(&mut rand_core::OsRng).unwrap();
    assert!(matches!(
        space
            .vault("acme")
            .unwrap()
            .unlock(&Credential::RecoveryKey(&other)),
        Err(Error::WrongRecoveryKey)
    ));
    // A passphrase never opens a recovery slot, even if it is the key's text.
    let as_passphrase = pass(shown.expose_secret());
    assert!(matches!(
        space
            .vault("acme")
            .unwrap()
            .unlock(&Credential::Passphrase(&as_passphrase)),
        Err(Error::WrongPassphrase)
    ));
}

#[test]
fn composed_and_decomposed_passphrases_are_the_same() {
    let (_d, space) = space();
    space
        .create_vault("acme", "a", &pass("caf\u{e9}"), &FAST)
        .unwrap();
    unlock(&space, "cafe\u{301}").unwrap();
}

#[test]
fn every_flipped_bit_is_caught_before_any_kdf_runs() {
    let (_d, space) = two_user_vault();
    let original = read_header(&space);
    for bit in 0..original.len() * 8 {
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(header_path(&space), &bytes).unwrap();
        match unlock(&space, "alice pw") {
            Err(Error::Corrupt(_)) => {}
            other => panic!("bit {bit}: {:?}", other.map(|_| "unlocked")),
        }
    }
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let (_d, space) = two_user_vault();
    let original = read_header(&space);
    for len in 0..original.len() {
        std::fs::write(header_path(&space), &original[..len]).unwrap();
        match unlock(&space, "alice pw") {
            Err(Error::Corrupt(CorruptKind::Truncated)) => {}
            other => panic!("length {len}: {:?}", other.map(|_| "unlocked")),
        }
    }
    let mut longer = original.clone();
    longer.push(0);
    std::fs::write(header_path(&space), &longer).unwrap();
    assert!(matches!(
        unlock(&space, "alice pw"),
        Err(Error::Corrupt(CorruptKind::Checksum))
    ));
}

#[test]
fn a_forged_checksum_does_not_hide_any_flipped_bit() {
    // The attacker edits and re-checksums. Every such header must refuse to
    // unlock; edits outside the slot that opens are reported as tampering.
    let (_d, space) = two_user_vault();
    let original = read_header(&space);
    let checksum_at = original.len() - 32;
    for bit in 0..checksum_at * 8 {
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        fix_checksum(&mut bytes);
        std::fs::write(header_path(&space), &bytes).unwrap();
        // Many of these attempts fail as a wrong passphrase: keep the
        // failed-attempt back-off out of this test.
        let _ = std::fs::remove_file(space.root().join("acme").join("attempts"));
        let byte = bit / 8;
        let result = unlock(&space, "alice pw");
        // The vault id (bytes 12..28) is bound into every slot's wrapping.
        let in_alice_slot = (SLOT0..SLOT0 + SLOT_LEN).contains(&byte) || (12..28).contains(&byte);
        match result {
            Ok(_) => panic!("bit {bit} (byte {byte}) unlocked a forged header"),
            Err(Error::Tampered) if !in_alice_slot => {}
            // Editing the very slot that the passphrase opens, or the vault id
            // it is bound to, is to the device indistinguishable from a wrong
            // passphrase (documented).
            Err(Error::WrongPassphrase) if in_alice_slot => {}
            // Edits to structural fields (everything before the metadata
            // nonce) are caught by the parser; beyond that only the MAC can.
            Err(Error::Corrupt(_) | Error::UnsupportedVersion(_) | Error::KdfLimit(_))
                if byte < 1764 => {}
            Err(e) => panic!("bit {bit} (byte {byte}): unexpected {e:?}"),
        }
    }
}

#[test]
fn swapped_slots_are_detected() {
    let (_d, space) = two_user_vault();
    let mut bytes = read_header(&space);
    let (a, b) = (
        SLOT0..SLOT0 + SLOT_LEN,
        SLOT0 + SLOT_LEN..SLOT0 + 2 * SLOT_LEN,
    );
    let slot_a = bytes[a.clone()].to_vec();
    bytes.copy_within(b.clone(), a.start);
    bytes[b].copy_from_slice(&slot_a);
    std::fs::write(header_path(&space), &bytes).unwrap();
    assert!(matches!(
        unlock(&space, "alice pw"),
        Err(Error::Corrupt(CorruptKind::Checksum))
    ));
    fix_checksum(&mut bytes);
    std::fs::write(header_path(&space), &bytes).unwrap();
    assert!(matches!(unlock(&space, "alice pw"), Err(Error::Tampered)));
    assert!(matches!(unlock(&space, "bob pw"), Err(Error::Tampered)));
}

#[test]
fn a_slot_from_another_vault_does_not_open() {
    // Vault "acme" has only alice; vault "other" has bob. Copy bob's slot
    // into acme's slot 1 and re-checksum: the slot's AAD names its own vault,
    // so bob's passphrase unwraps nothing here.
    let (_d, space) = space();
    drop(
        space
            .create_vault("acme", "alice", &pass("alice pw"), &FAST)
            .unwrap(),
    );
    drop(
        space
            .create_vault("other", "bob", &pass("bob pw"), &FAST)
            .unwrap(),
    );
    let theirs = std::fs::read(space.root().join("other").join(HEADER_FILE)).unwrap();
    let mut bytes = read_header(&space);
    let at = SLOT0 + SLOT_LEN;
    bytes[at..at + SLOT_LEN].copy_from_slice(&theirs[SLOT0..SLOT0 + SLOT_LEN]);
    fix_checksum(&mut bytes);
    std::fs::write(header_path(&space), &bytes).unwrap();
    assert!(matches!(
        unlock(&space, "bob pw"),
        Err(Error::WrongPassphrase)
    ));
    // alice still opens the slot, and the MAC then exposes the splice.
    assert!(matches!(unlock(&space, "alice pw"), Err(Error::Tampered)));
}

#[test]
fn kdf_parameters_above_the_cap_are_refused_before_running() {
    let (_d, space) = two_user_vault();
    let mut bytes = read_header(&space);
    // Bob's slot asks for 4 GiB of Argon2id memory.
    let params = SLOT0 + SLOT_LEN + 4;
    bytes[params..params + 4].copy_from_slice(&(4u32 * 1024 * 1024).to_le_bytes());
    fix_checksum(&mut bytes);
    std::fs::write(header_path(&space), &bytes).unwrap();
    let started = std::time::Instant::now();
    match unlock(&space, "alice pw") {
        Err(Error::KdfLimit(e)) => {
            assert_eq!(e.slot, 1);
            assert_eq!(e.what, "Argon2id memory (KiB)");
            assert_eq!(e.value, 4 * 1024 * 1024);
        }
        other => panic!("{:?}", other.map(|_| "unlocked")),
    }
    assert!(matches!(
        space.vault("acme").unwrap().info(),
        Err(Error::KdfLimit(_))
    ));
    // Stricter caps set by the caller apply too.
    let (_d2, space2) = two_user_vault();
    let strict = KdfLimits {
        argon2_max_memory_kib: 32,
        ..KdfLimits::default()
    };
    let vault = space2.vault("acme").unwrap().with_kdf_limits(strict);
    assert!(matches!(
        vault.unlock(&Credential::Passphrase(&pass("alice pw"))),
        Err(Error::KdfLimit(_))
    ));
    // Refusing took no KDF run worth measuring (4 GiB would take many seconds).
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn the_total_kdf_work_of_all_slots_is_capped_too() {
    // Sixteen slots each at 62.5% of the Argon2id work cap: each passes on
    // its own, together they would cost ten capped derivations per attempt.
    let (_d, space) = space();
    let mut v = space
        .create_vault("acme", "u0", &pass("pw"), &FAST)
        .unwrap();
    for i in 1..SLOT_COUNT {
        v.add_passphrase_slot(&format!("u{i}"), &pass("x"), &FAST)
            .unwrap();
    }
    let mut bytes = read_header(&space);
    for i in 0..SLOT_COUNT {
        let at = SLOT0 + i * SLOT_LEN + 4;
        bytes[at..at + 4].copy_from_slice(&(256u32 * 1024).to_le_bytes());
        bytes[at + 4..at + 8].copy_from_slice(&10u32.to_le_bytes());
    }
    fix_checksum(&mut bytes);
    std::fs::write(header_path(&space), &bytes).unwrap();
    match unlock(&space, "pw") {
        Err(Error::KdfLimit(e)) => {
            assert!(e.what.starts_with("total KDF work"), "{e}");
            assert_eq!(e.limit, 800);
            assert_eq!(e.slot, 12, "the 13th slot pushes the sum past 8 caps");
        }
        other => panic!("{:?}", other.map(|_| "unlocked")),
    }
}

#[test]
fn a_total_just_over_the_cap_reads_above_it() {
    // Eight slots at exactly the Argon2id work cap and a ninth at almost
    // nothing: the sum is 8.000002 caps. The message used to truncate both
    // sides and read "800, above this coffer's cap of 800".
    let (_d, space) = space();
    let mut v = space
        .create_vault("acme", "u0", &pass("pw"), &FAST)
        .unwrap();
    for i in 1..9 {
        v.add_passphrase_slot(&format!("u{i}"), &pass("x"), &FAST)
            .unwrap();
    }
    let mut bytes = read_header(&space);
    for i in 0..9 {
        let (memory_kib, passes): (u32, u32) = if i < 8 { (256 * 1024, 16) } else { (8, 1) };
        let at = SLOT0 + i * SLOT_LEN + 4;
        bytes[at..at + 4].copy_from_slice(&memory_kib.to_le_bytes());
        bytes[at + 4..at + 8].copy_from_slice(&passes.to_le_bytes());
    }
    fix_checksum(&mut bytes);
    std::fs::write(header_path(&space), &bytes).unwrap();
    match unlock(&space, "pw") {
        Err(Error::KdfLimit(e)) => {
            assert_eq!(e.slot, 8);
            assert_eq!((e.value, e.limit), (801, 800), "{e}");
        }
        other => panic!("{:?}", other.map(|_| "unlocked")),
    }
}

#[test]
fn garbage_and_foreign_files_are_not_headers() {
    let (_d, space) = two_user_vault();
    std::fs::write(header_path(&space), b"SQLite format 3\0 and more").unwrap();
    assert!(matches!(
        unlock(&space, "alice pw"),
        Err(Error::Corrupt(CorruptKind::BadMagic))
    ));
    std::fs::write(header_path(&space), vec![0u8; 3 * 1024 * 1024]).unwrap();
    assert!(matches!(
        unlock(&space, "alice pw"),
        Err(Error::Corrupt(CorruptKind::BadMagic))
    ));
    let mut huge = crate::header::MAGIC.to_vec();
    huge.resize(crate::header::MAX_HEADER_LEN + 1, 0);
    std::fs::write(header_path(&space), huge).unwrap();
    assert!(matches!(
        unlock(&space, "alice pw"),
        Err(Error::Corrupt(CorruptKind::TooLarge))
    ));
}

#[test]
fn a_newer_format_version_is_reported_as_such() {
    let (_d, space) = two_user_vault();
    let mut bytes = read_header(&space);
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    fix_checksum(&mut bytes);
    std::fs::write(header_path(&space), &bytes).unwrap();
    assert!(matches!(
        unlock(&space, "alice pw"),
        Err(Error::UnsupportedVersion(2))
    ));
}

#[test]
fn concurrent_slot_changes_are_all_kept() {
    // Two threads, each with its own unlocked handle, add four slots apiece
    // at the same time. Every change re-reads the header under the vault
    // lock, so none is lost; without the lock, read-modify-write races would
    // drop slots.
    let (_d, space) = two_user_vault();
    let workers: Vec<_> = ["alice pw", "bob pw"]
        .into_iter()
        .enumerate()
        .map(|(w, p)| {
            let mut v = unlock(&space, p).unwrap();
            std::thread::spawn(move || {
                for i in 0..4 {
                    v.add_passphrase_slot(
                        &format!("w{w}-{i}"),
                        &pass(&format!("w{w}-{i} pw")),
                        &FAST,
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let v = unlock(&space, "alice pw").unwrap();
    assert_eq!(v.slots().len(), 10);
    for w in 0..2 {
        for i in 0..4 {
            unlock(&space, &format!("w{w}-{i} pw")).unwrap();
        }
    }
}

#[test]
fn no_secret_and_no_slot_name_reaches_the_disk() {
    use secrecy::ExposeSecret;
    let (dir, space) = space();
    let passphrase = "marker-passphrase-7f3a9c";
    let mut v = space
        .create_vault("acme", "alice-marker", &pass(passphrase), &FAST)
        .unwrap();
    v.add_passphrase_slot("bob-marker", &pass("second-marker-passphrase"), &FAST)
        .unwrap();
    let (_, recovery) = v.add_recovery_slot("recovery-marker").unwrap();
    let vault_key = v.vault_key_bytes();
    let subkeys: Vec<[u8; 32]> = [Purpose::HeaderMac, Purpose::HeaderMeta, Purpose::AuditMac]
        .map(|p| *v.subkey(p).unwrap().expose_secret())
        .to_vec();
    let needles: Vec<Vec<u8>> = [
        passphrase.as_bytes().to_vec(),
        b"second-marker-passphrase".to_vec(),
        b"alice-marker".to_vec(),
        b"bob-marker".to_vec(),
        b"recovery-marker".to_vec(),
        recovery.display().expose_secret().as_bytes().to_vec(),
        recovery.expose_secret().to_vec(),
        vault_key.to_vec(),
    ]
    .into_iter()
    .chain(subkeys.iter().map(|k| k.to_vec()))
    .collect();
    let mut scanned = 0;
    scan(dir.path(), &mut |path, bytes| {
        scanned += 1;
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{} holds a secret or a name",
                path.display()
            );
        }
    });
    assert!(scanned >= 1);
}

fn scan(dir: &Path, visit: &mut dyn FnMut(&Path, &[u8])) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            scan(&path, visit);
        } else {
            visit(&path, &std::fs::read(&path).unwrap());
        }
    }
}

#[cfg(unix)]
#[test]
fn space_and_vault_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, space) = two_user_vault();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(space.root()), 0o700);
    assert_eq!(mode(&space.root().join("acme")), 0o700);
    assert_eq!(mode(&header_path(&space)), 0o600);
    let v = unlock(&space, "alice pw").unwrap();
    v.add_app("notes", Capabilities::all()).unwrap();
    v.app("notes")
        .unwrap()
        .kv()
        .unwrap()
        .put("k", b"v")
        .unwrap();
    let vault_dir = space.root().join("acme");
    assert_eq!(mode(&vault_dir.join("catalog.db")), 0o600);
    assert_eq!(mode(&vault_dir.join("data")), 0o700);
    for entry in std::fs::read_dir(vault_dir.join("data")).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600);
    }
}

#[test]
fn debug_output_of_an_unlocked_vault_shows_no_key() {
    let (_d, space) = two_user_vault();
    let v = unlock(&space, "alice pw").unwrap();
    let shown = format!("{v:?} {:?} {:?}", v.slots(), v.vault());
    let mut keys = vec![v.vault_key_bytes()];
    for p in [
        Purpose::HeaderMac,
        Purpose::HeaderMeta,
        Purpose::AuditMac,
        Purpose::Catalog,
    ] {
        keys.push(*v.subkey(p).unwrap().expose_secret());
    }
    for key in keys {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let decimal = format!("{:?}", key);
        let decimal_inner = decimal.trim_matches(|c| c == '[' || c == ']');
        assert!(!shown.contains(&hex));
        assert!(!shown.contains(decimal_inner), "key bytes in Debug output");
    }
    assert!(!shown.contains("alice pw"));
    assert!(shown.contains("UnlockedVault"));
}

// ---- property tests of the header encoding ----

fn arb_kdf() -> impl Strategy<Value = KdfParams> {
    prop_oneof![
        (8u32..=4096, 1u32..=8, 1u32..=4).prop_map(|(m, t, p)| KdfParams::Argon2id {
            memory_kib: m.max(8 * p),
            iterations: t,
            parallelism: p,
        }),
        (1u32..=10_000_000).prop_map(|iterations| KdfParams::Pbkdf2Sha256 { iterations }),
        (1u8..=15, 1u32..=8, 1u32..=2).prop_map(|(log_n, r, p)| KdfParams::Scrypt { log_n, r, p }),
    ]
}

prop_compose! {
    fn arb_slot()(
        kind in prop_oneof![arb_kdf().prop_map(SlotKind::Passphrase), Just(SlotKind::Recovery)],
        salt in any::<[u8; 32]>(),
        nonce in any::<[u8; 12]>(),
        wrapped in proptest::collection::vec(any::<u8>(), 48),
        name in "[a-zA-Z0-9][a-zA-Z0-9 ._-]{0,62}[a-zA-Z0-9]",
        created_at in any::<i64>(),
        expires_at in proptest::option::of(any::<i64>()),
        single_use in any::<bool>(),
    ) -> (KeySlot, SlotMeta) {
        (KeySlot::from_parts(kind, salt, nonce, &wrapped), SlotMeta { name, created_at, expires_at, single_use })
    }
}

prop_compose! {
    fn arb_header()(
        id in any::<[u8; 16]>(),
        created_at in any::<i64>(),
        latest_seen in any::<i64>(),
        slots in proptest::collection::vec(proptest::option::of(arb_slot()), SLOT_COUNT),
    ) -> Header {
        let mut array: [Option<(KeySlot, SlotMeta)>; SLOT_COUNT] = Default::default();
        let mut seen = std::collections::HashSet::new();
        for (i, s) in slots.into_iter().enumerate() {
            // Names are unique within a header.
            array[i] = s.filter(|(_, m)| seen.insert(m.name.clone()));
        }
        Header { vault_id: VaultId::from_bytes(id), created_at, latest_seen, lockout: Default::default(), slots: array }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn header_encoding_round_trips(header in arb_header(), key in any::<[u8; 32]>(), nonce in any::<[u8; 12]>()) {
        let key = VaultKey(crate::secret::Key256::fill_with(|k| { *k = key; Ok::<(), ()>(()) }).unwrap());
        let bytes = header.seal_with_nonce(&key, &nonce);
        let sealed = SealedHeader::parse(bytes.clone(), &KdfLimits::default()).unwrap();
        let back = sealed.authenticate(&key).unwrap();
        prop_assert_eq!(&back, &header);
        prop_assert_eq!(back.seal_with_nonce(&key, &nonce), bytes);
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = SealedHeader::parse(bytes, &KdfLimits::default());
    }

    #[test]
    fn parsing_mutated_headers_never_panics(
        header in arb_header(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let key = VaultKey(crate::secret::Key256::fill_with(|k| { *k = [9; 32]; Ok::<(), ()>(()) }).unwrap());
        let mut bytes = header.seal_with_nonce(&key, &[0; 12]);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        fix_checksum(&mut bytes);
        if let Ok(sealed) = SealedHeader::parse(bytes, &KdfLimits::default()) {
            let _ = sealed.authenticate(&key);
        }
    }
}
