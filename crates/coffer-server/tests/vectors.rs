//! Test vectors for the control plane's formats, kept in
//! docs/test-vectors/control-plane-v1.json: a sealed value and an audit
//! row's MAC, a record seal and a blob seal (docs/formats/server-seal.md, docs/server.md), a signed policy (docs/formats/policy.md)
//! and a data batch in JSON and CBOR (docs/formats/data-batch.md).
//!
//! `vectors_match_the_spec` decodes the file (opens the sealed value,
//! verifies the signature, decodes the CBOR) and checks that this code,
//! from the same inputs, writes exactly that file. docs/test-vectors/check.py
//! checks the same file from the specs alone. To rewrite it after a
//! deliberate format change: `cargo test -p coffer-server --test vectors --
//! --ignored regenerate`.

#![allow(clippy::unwrap_used)]

use coffer_server::blob_seal::{open_piece, seal_piece_with_nonce, PiecePlace};
use coffer_server::data::Batch;
use coffer_server::keys::{Keyring, MasterKey};
use coffer_server::policy::{self, Document, FailedAction, Rules, SigningKey, FORMAT};
use coffer_server::record_seal::{DataKey, RecordPlace};
use serde_json::{json, Value};

fn path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/test-vectors/control-plane-v1.json")
}

fn counting(from: u8) -> [u8; 32] {
    std::array::from_fn(|i| from.wrapping_add(i as u8))
}

/// The file and upload of the blob seal's vector.
const BLOB_SHA256: &str = "5f1c3d1e9a7b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d";
const BLOB_UPLOAD: &str = "00112233445566778899aabbccddeeff";

/// The hash of an audit row, as the vector's MAC input.
const AUDIT_HASH: &str = "7d5c0a3b0e3b4b8f9e1d2c3b4a5968778695a4b3c2d1e0f0a1b2c3d4e5f60718";

fn generate() -> Value {
    let master = counting(0x00);
    let key = MasterKey::from_bytes(&master);
    let context = "escrow:17";
    let plaintext = counting(0xa0);
    let nonce: [u8; 12] = std::array::from_fn(|i| 0x10 + i as u8);
    let sealed = key.seal_with_nonce(context, &plaintext, nonce);

    let seed = counting(0x20);
    let signer = SigningKey::from_seed(&seed).unwrap();
    let mut rules = Rules {
        max_failed_attempts: 5,
        on_max_failed: FailedAction::Wipe,
        refuse_debugger: true,
        ..Rules::default()
    };
    rules.passphrase.min_length = 12;
    rules.passphrase.min_classes = 3;
    rules
        .apps
        .insert("survey".into(), vec!["sql".into(), "files".into()]);
    let document = Document {
        format: FORMAT.into(),
        organization_id: 1,
        version: 3,
        issued_at: 1_795_000_000,
        rules,
    }
    .to_canonical()
    .unwrap();
    let signature = signer.sign(&document);

    let batch = json!({
        "batch_id": "tablet-7-000042",
        "readings": [
            {"at": 1_795_000_000, "name": "temp.c", "value": 21},
            {"at": 1_795_000_060, "name": "temp.c", "value": 23.5},
            {"at": 1_795_000_120, "name": "visit/notes", "value": {"text": "door open", "ok": true, "tags": ["a", "b"]}},
            {"at": 1_795_000_180, "name": "gps.fix", "value": null},
        ],
    });
    let mut cbor = Vec::new();
    ciborium::ser::into_writer(&batch, &mut cbor).unwrap();
    let batch_json = serde_json::to_string(&batch).unwrap();
    let digest = Batch::from_json(batch_json.as_bytes()).unwrap().digest();

    // A record seal (docs/formats/server-seal.md, "Record seal").
    let data_key = counting(0x40);
    let record_nonce: [u8; 12] = std::array::from_fn(|i| 0x50 + i as u8);
    let record_plain = br#"{"body":{"name":"Amina","age":7},"files":[]}"#;
    let revision = "0123456789abcdef0123456789abcdef.7";
    let place = RecordPlace {
        org_id: 3,
        app: "cases",
        collection: "children",
        id: "c-1",
        revision,
    };
    let dk = DataKey::from_bytes(&data_key);
    let record_sealed = dk.seal_with_nonce(&place, record_plain, record_nonce);
    let body_mac = dk.body_mac(
        "cases",
        "children",
        &serde_json::from_slice::<Value>(record_plain).unwrap()["body"],
    );
    let sealed_data_key = key.seal_with_nonce("org-data-key:3", &data_key, nonce);

    // A blob seal (docs/formats/server-seal.md, "Blob seal"): the last
    // piece (index 1, 27 bytes) of a file of 65,563 bytes in pieces of
    // 64 KiB.
    let piece = b"the last bytes of the photo";
    let piece_nonce: [u8; 12] = std::array::from_fn(|i| 0x60 + i as u8);
    let blob_place = PiecePlace {
        org_id: 3,
        app: "cases",
        sha256: BLOB_SHA256,
        upload_id: BLOB_UPLOAD,
        size: 65_563,
        piece_size: 65_536,
        index: 1,
    };
    let blob_sealed = seal_piece_with_nonce(&dk, &blob_place, piece, piece_nonce);

    json!({
        "blob_seal": {
            "data_key": hex::encode(data_key),
            "org_id": 3,
            "app": "cases",
            "sha256": BLOB_SHA256,
            "upload_id": BLOB_UPLOAD,
            "size": 65_563,
            "piece_size": 65_536,
            "index": 1,
            "object": format!("o3/{BLOB_UPLOAD}/00000001"),
            "plaintext": hex::encode(piece),
            "nonce": hex::encode(piece_nonce),
            "sealed": hex::encode(blob_sealed),
        },
        "record_seal": {
            "master_key": hex::encode(master),
            "data_key": hex::encode(data_key),
            "data_key_context": "org-data-key:3",
            "sealed_data_key": sealed_data_key,
            "org_id": 3,
            "app": "cases",
            "collection": "children",
            "id": "c-1",
            "revision": revision,
            "plaintext": String::from_utf8(record_plain.to_vec()).unwrap(),
            "nonce": hex::encode(record_nonce),
            "sealed": hex::encode(record_sealed),
            "body_mac": body_mac,
        },
        "seal": {
            "master_key": hex::encode(master),
            "key_id": key.id(),
            "context": context,
            "plaintext": hex::encode(plaintext),
            "nonce": hex::encode(nonce),
            "sealed": sealed,
            "audit_row_hash": AUDIT_HASH,
            "audit_mac": Keyring::new(key, None).audit_mac(AUDIT_HASH),
        },
        "policy": {
            "seed": hex::encode(seed),
            "public_key": hex::encode(signer.public_key()),
            "document": String::from_utf8(document).unwrap(),
            "signature": hex::encode(signature),
        },
        "batch": {
            "json": batch_json,
            "cbor": hex::encode(cbor),
            "digest": digest,
        },
    })
}

#[test]
fn vectors_match_the_spec() {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();

    // Decoding, from the file's own fields.
    let seal = &file["seal"];
    let master: [u8; 32] = hex::decode(seal["master_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let ring = Keyring::new(MasterKey::from_bytes(&master), None);
    let opened = ring
        .open(
            seal["context"].as_str().unwrap(),
            seal["sealed"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(hex::encode(&*opened), seal["plaintext"]);
    assert!(ring.audit_mac_valid(
        seal["audit_row_hash"].as_str().unwrap(),
        seal["audit_mac"].as_str().unwrap()
    ));

    let r = &file["record_seal"];
    let dk: [u8; 32] = hex::decode(r["data_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let unsealed = ring
        .open(
            r["data_key_context"].as_str().unwrap(),
            r["sealed_data_key"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(&*unsealed, &dk);
    let place = RecordPlace {
        org_id: r["org_id"].as_i64().unwrap(),
        app: r["app"].as_str().unwrap(),
        collection: r["collection"].as_str().unwrap(),
        id: r["id"].as_str().unwrap(),
        revision: r["revision"].as_str().unwrap(),
    };
    let opened = DataKey::from_bytes(&dk)
        .open_bytes(&place, &hex::decode(r["sealed"].as_str().unwrap()).unwrap())
        .unwrap();
    assert_eq!(&*opened, r["plaintext"].as_str().unwrap().as_bytes());

    let b = &file["blob_seal"];
    let number = |field: &str| b[field].as_u64().unwrap();
    let blob_place = PiecePlace {
        org_id: b["org_id"].as_i64().unwrap(),
        app: b["app"].as_str().unwrap(),
        sha256: b["sha256"].as_str().unwrap(),
        upload_id: b["upload_id"].as_str().unwrap(),
        size: number("size"),
        piece_size: number("piece_size"),
        index: number("index"),
    };
    let bdk: [u8; 32] = hex::decode(b["data_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let sealed = hex::decode(b["sealed"].as_str().unwrap()).unwrap();
    let opened = open_piece(&DataKey::from_bytes(&bdk), &blob_place, sealed.clone()).unwrap();
    assert_eq!(hex::encode(opened), b["plaintext"]);
    // Moved to another index, it does not open.
    let moved = PiecePlace {
        index: 0,
        ..blob_place
    };
    assert!(open_piece(&DataKey::from_bytes(&bdk), &moved, sealed).is_err());
    assert_eq!(
        coffer_server::blobs::PieceName::new(
            blob_place.org_id,
            blob_place.upload_id,
            blob_place.index
        )
        .unwrap()
        .as_str(),
        b["object"].as_str().unwrap()
    );

    let p = &file["policy"];
    let document = p["document"].as_str().unwrap().as_bytes();
    assert!(policy::verify(
        &hex::decode(p["public_key"].as_str().unwrap()).unwrap(),
        document,
        &hex::decode(p["signature"].as_str().unwrap()).unwrap(),
    ));
    let parsed: Document = serde_json::from_slice(document).unwrap();
    assert_eq!(parsed.to_canonical().unwrap(), document);

    let b = &file["batch"];
    let from_cbor = Batch::from_cbor(&hex::decode(b["cbor"].as_str().unwrap()).unwrap()).unwrap();
    let from_json = Batch::from_json(b["json"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(from_cbor, from_json);
    assert!(from_cbor.check().is_ok());
    assert_eq!(from_cbor.digest(), b["digest"].as_str().unwrap());

    // Encoding: the same inputs give the same bytes.
    assert_eq!(
        generate(),
        file,
        "the encoders changed: if deliberate, regenerate the vectors"
    );
}

#[test]
#[ignore = "rewrites docs/test-vectors/control-plane-v1.json"]
fn regenerate() {
    let text = serde_json::to_string_pretty(&generate()).unwrap() + "\n";
    std::fs::write(path(), text).unwrap();
}
