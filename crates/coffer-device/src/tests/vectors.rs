//! Test vectors for docs/formats/vault-header.md, kept in
//! docs/test-vectors/vault-header-v1.json.
//!
//! `vectors_match_the_spec` checks two things: that the header in the file
//! opens with every secret in the file to the vault key in the file, with the
//! names and subkeys the file lists (decoding), and that this code, fed the
//! same random bytes, writes exactly that file (encoding). To rewrite the
//! file after a deliberate format change: `cargo test -p coffer-device --
//! --ignored regenerate_test_vectors`.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::header::{Header, SealedHeader, SlotMeta, VaultId, SLOT_COUNT};
use crate::keyslot::{Credential, KeySlot, SlotKind};
use crate::secret::{Key256, VaultKey};
use crate::subkey::{self, Purpose};
use crate::{KdfLimits, KdfParams, Passphrase, RecoveryKey};

const SEED: u64 = 20_261_126;
const CREATED_AT: i64 = 1_795_000_000;

fn path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/test-vectors/vault-header-v1.json")
}

fn kdf_json(kdf: &KdfParams) -> Value {
    match *kdf {
        KdfParams::Argon2id {
            memory_kib,
            iterations,
            parallelism,
        } => {
            json!({"algorithm": "argon2id", "memory_kib": memory_kib, "iterations": iterations, "parallelism": parallelism})
        }
        KdfParams::Pbkdf2Sha256 { iterations } => {
            json!({"algorithm": "pbkdf2-sha256", "iterations": iterations})
        }
        KdfParams::Scrypt { log_n, r, p } => {
            json!({"algorithm": "scrypt", "log_n": log_n, "r": r, "p": p})
        }
    }
}

/// Builds the vector header from a seeded RNG and returns it as JSON.
fn generate() -> Value {
    let mut rng = ChaCha20Rng::seed_from_u64(SEED);
    let key = VaultKey(Key256::random(&mut rng).unwrap());
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    let vault_id = VaultId::from_bytes(id);

    let passphrases = [
        (
            "alice",
            "correct horse battery staple",
            KdfParams::Argon2id {
                memory_kib: 256,
                iterations: 2,
                parallelism: 1,
            },
        ),
        (
            "bob",
            "Tr0ub4dor&3 caf\u{e9}",
            KdfParams::Pbkdf2Sha256 { iterations: 1000 },
        ),
        (
            "carol",
            "1234",
            KdfParams::Scrypt {
                log_n: 10,
                r: 8,
                p: 1,
            },
        ),
    ];
    let mut slots: [Option<(KeySlot, SlotMeta)>; SLOT_COUNT] = Default::default();
    let mut slot_json = Vec::new();
    for (i, (name, secret, kdf)) in passphrases.iter().enumerate() {
        let p = Passphrase::new((*secret).to_owned()).unwrap();
        let slot = KeySlot::wrap(
            &key,
            &vault_id,
            &Credential::Passphrase(&p),
            SlotKind::Passphrase(*kdf),
            &mut rng,
        )
        .unwrap();
        slot_json.push(json!({
            "index": i, "name": name, "kind": "passphrase", "secret": secret,
            "kdf": kdf_json(kdf), "encoded": hex::encode(slot.encode()),
        }));
        slots[i] = Some((slot, SlotMeta::new((*name).into(), CREATED_AT + i as i64)));
    }
    let recovery = RecoveryKey::generate(&mut rng).unwrap();
    let slot = KeySlot::wrap(
        &key,
        &vault_id,
        &Credential::RecoveryKey(&recovery),
        SlotKind::Recovery,
        &mut rng,
    )
    .unwrap();
    slot_json.push(json!({
        "index": 3, "name": "recovery", "kind": "recovery",
        "secret": recovery.display().expose_secret(),
        "recovery_key_bytes": hex::encode(recovery.expose_secret()),
        "kdf": {"algorithm": "hkdf-sha256"}, "encoded": hex::encode(slot.encode()),
    }));
    slots[3] = Some((slot, SlotMeta::new("recovery".into(), CREATED_AT + 3)));
    let mut meta_nonce = [0u8; 12];
    rng.fill_bytes(&mut meta_nonce);
    let header = Header {
        vault_id,
        created_at: CREATED_AT,
        latest_seen: CREATED_AT + 100,
        lockout: Default::default(),
        slots,
    };
    let bytes = header.seal_with_nonce(&key, &meta_nonce);

    let purposes = [
        Purpose::HeaderMac,
        Purpose::HeaderMeta,
        Purpose::AuditMac,
        Purpose::AuditLog,
        Purpose::Catalog,
        Purpose::AppDatabase("notes"),
        Purpose::AppFiles("notes"),
        Purpose::AppRecords("notes"),
    ];
    let subkeys: Vec<Value> = purposes
        .iter()
        .map(|p| {
            json!({
                "label": p.label(),
                "app": match p { Purpose::AppDatabase(a) | Purpose::AppFiles(a) | Purpose::AppRecords(a) => Some(*a), _ => None },
                "info": hex::encode(p.info()),
                "key": hex::encode(subkey::derive(&key, &vault_id, *p).expose_secret()),
            })
        })
        .collect();

    json!({
        "description": "coffer vault header v1 test vector. The KDF parameters are tiny so that the vector checks quickly; coffer never writes such slots.",
        "rng": format!("ChaCha20Rng::seed_from_u64({SEED}); draws in order: vault key, vault id, then per slot salt and nonce (the recovery key is drawn before its slot), then the metadata nonce"),
        "vault_key": hex::encode(key.0.expose_secret()),
        "vault_id": hex::encode(id),
        "created_at": CREATED_AT,
        "meta_nonce": hex::encode(meta_nonce),
        "slots": slot_json,
        "subkeys": subkeys,
        "header": hex::encode(&bytes),
        "header_len": bytes.len(),
    })
}

fn hex32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn vectors_match_the_spec() {
    let text = std::fs::read_to_string(path()).expect("docs/test-vectors/vault-header-v1.json");
    let file: Value = serde_json::from_str(&text).unwrap();

    // Decoding: every secret in the file opens the header in the file.
    let bytes = hex::decode(file["header"].as_str().unwrap()).unwrap();
    let sealed = SealedHeader::parse(bytes, &KdfLimits::default()).unwrap();
    let expected_key = hex32(&file["vault_key"]);
    for slot in file["slots"].as_array().unwrap() {
        let secret = slot["secret"].as_str().unwrap();
        let index = slot["index"].as_u64().unwrap() as usize;
        let on_disk = sealed.slots[index].as_ref().unwrap();
        assert_eq!(
            hex::encode(on_disk.encode()),
            slot["encoded"].as_str().unwrap()
        );
        let key = match slot["kind"].as_str().unwrap() {
            "passphrase" => {
                let p = Passphrase::new(secret.to_owned()).unwrap();
                assert!(matches!(on_disk.kind, SlotKind::Passphrase(_)));
                on_disk.unwrap_key(&sealed.vault_id, &Credential::Passphrase(&p))
            }
            _ => {
                let k = RecoveryKey::parse(secret).unwrap();
                assert_eq!(
                    hex::encode(k.expose_secret()),
                    slot["recovery_key_bytes"].as_str().unwrap()
                );
                on_disk.unwrap_key(&sealed.vault_id, &Credential::RecoveryKey(&k))
            }
        }
        .unwrap()
        .expect("slot opens with its vector secret");
        assert_eq!(key.0.expose_secret(), &expected_key);
        let header = sealed.authenticate(&key).unwrap();
        assert_eq!(
            header.slots[index].as_ref().unwrap().1.name,
            slot["name"].as_str().unwrap()
        );
        assert_eq!(header.created_at, file["created_at"].as_i64().unwrap());
    }
    let key = VaultKey(
        Key256::fill_with(|k| {
            *k = expected_key;
            Ok::<(), ()>(())
        })
        .unwrap(),
    );
    for sub in file["subkeys"].as_array().unwrap() {
        let app = sub["app"].as_str().unwrap_or("");
        let purpose = match sub["label"].as_str().unwrap() {
            "header-mac" => Purpose::HeaderMac,
            "header-meta" => Purpose::HeaderMeta,
            "audit-mac" => Purpose::AuditMac,
            "audit-log" => Purpose::AuditLog,
            "catalog" => Purpose::Catalog,
            "app-database" => Purpose::AppDatabase(app),
            "app-files" => Purpose::AppFiles(app),
            "app-records" => Purpose::AppRecords(app),
            other => panic!("unknown label {other}"),
        };
        assert_eq!(hex::encode(purpose.info()), sub["info"].as_str().unwrap());
        assert_eq!(
            subkey::derive(&key, &sealed.vault_id, purpose).expose_secret(),
            &hex32(&sub["key"])
        );
    }

    // Encoding: the same random bytes give the same file.
    assert_eq!(
        generate(),
        file,
        "encoder output differs from the spec's vector"
    );
}

#[test]
#[ignore = "rewrites the vector file; run by hand after a deliberate format change"]
fn regenerate_test_vectors() {
    let text = serde_json::to_string_pretty(&generate()).unwrap() + "\n";
    std::fs::create_dir_all(path().parent().unwrap()).unwrap();
    std::fs::write(path(), text).unwrap();
}

fn audit_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/test-vectors/audit-log-v1.json")
}

const AUDIT_EVENTS: [&str; 3] = [
    r#"{"at":1795000000,"event":"vault_created","slot":"alice"}"#,
    r#"{"at":1795000060,"event":"slot_added","kind":"recovery","slot":"recovery"}"#,
    r#"{"at":1795000120,"event":"rotation_started","keep":["alice"]}"#,
];

fn audit_keys() -> crate::audit::AuditKeys {
    crate::audit::AuditKeys {
        log: crate::Subkey::from_bytes([0x11; 32]),
        mac: crate::Subkey::from_bytes([0x22; 32]),
    }
}

fn generate_audit() -> Value {
    let nonces: Vec<[u8; 12]> = (0u8..3).map(|i| [0xa0 + i; 12]).collect();
    let events: Vec<(&[u8], [u8; 12])> = AUDIT_EVENTS
        .iter()
        .zip(&nonces)
        .map(|(e, n)| (e.as_bytes(), *n))
        .collect();
    let (log, head) = crate::audit::log_for_vectors(&audit_keys(), &events);
    json!({
        "description": "coffer audit log v1 test vector: three entries and their anchor. Real logs draw the keys from the vault key (labels audit-log and audit-mac) and the nonces at random.",
        "log_key": hex::encode([0x11u8; 32]),
        "mac_key": hex::encode([0x22u8; 32]),
        "events": AUDIT_EVENTS,
        "nonces": nonces.iter().map(hex::encode).collect::<Vec<_>>(),
        "audit_log": hex::encode(&log),
        "audit_head": hex::encode(&head),
    })
}

#[test]
fn audit_vectors_match_the_spec() {
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(audit_path()).unwrap()).unwrap();
    assert_eq!(
        generate_audit(),
        file,
        "encoder output differs from the spec's vector"
    );
    // And the reader accepts the vector's files as a whole, sound chain.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(crate::audit::LOG_FILE),
        hex::decode(file["audit_log"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(crate::audit::HEAD_FILE),
        hex::decode(file["audit_head"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let trail = crate::audit::read(dir.path(), &audit_keys()).unwrap();
    assert_eq!(trail.problem, None);
    let names: Vec<_> = trail.entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["vault_created", "slot_added", "rotation_started"]);
}

#[test]
#[ignore = "rewrites the vector file; run by hand after a deliberate format change"]
fn regenerate_audit_vectors() {
    let text = serde_json::to_string_pretty(&generate_audit()).unwrap() + "\n";
    std::fs::write(audit_path(), text).unwrap();
}
