//! Fuzzes the signed policy (docs/formats/policy.md) as a device reads it
//! and as the server takes it:
//!
//! - the bytes as a `SignedPolicy` answer, verified under the pinned key
//!   of docs/test-vectors/control-plane-v1.json;
//! - the bytes as a policy document, signed with that vector's seed (so
//!   that verification gets past the signature to the document: format,
//!   organization, version bounds, downgrade, rules);
//! - the bytes as a `Document` and as a `PublishRequest`: rules checked,
//!   and a document's canonical form parses back to the same document.
#![no_main]

use coffer_protocol::policy::{Document, PublishRequest, SignedPolicy};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The policy vector's signing seed and organization
/// (docs/test-vectors/control-plane-v1.json, "policy").
const SEED: [u8; 32] = [
    0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
    0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f,
];
const ORGANIZATION: i64 = 1;
/// Its public key, hex, as the vector gives it.
const PUBLIC_KEY: &str = "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let pair = Ed25519KeyPair::from_seed_unchecked(&SEED).expect("32-byte seed");
    let pinned = pair.public_key().as_ref().to_vec();
    assert_eq!(hex::encode(&pinned), PUBLIC_KEY);

    // As an answer from the server.
    if let Ok(signed) = serde_json::from_slice::<SignedPolicy>(data) {
        for held in [None, Some(2), Some(i64::MAX)] {
            let _ = signed.verify(&pinned, ORGANIZATION, held);
        }
    }

    // As a document the organization's key signed.
    if let Ok(document) = std::str::from_utf8(data) {
        let version = serde_json::from_str::<serde_json::Value>(document)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_i64))
            .unwrap_or(3);
        let signed = SignedPolicy {
            version,
            document: document.to_owned(),
            signature: hex::encode(pair.sign(data).as_ref()),
            public_key: PUBLIC_KEY.to_owned(),
            published_at: None,
        };
        for held in [None, Some(2), Some(version)] {
            if let Ok(accepted) = signed.verify(&pinned, ORGANIZATION, held) {
                // What a device takes is within the bounds it enforces.
                assert!(coffer_protocol::policy::valid_version(accepted.version));
                assert!(held.is_none_or(|h| accepted.version > h));
                assert!(accepted.rules.check().is_ok());
                assert_eq!(accepted.organization_id, ORGANIZATION);
            }
        }
        // A document with another version than announced is refused.
        let mut other = signed.clone();
        other.version = version.wrapping_add(1);
        assert!(other.verify(&pinned, ORGANIZATION, None).is_err());
    }

    // As a document, and as a publish request.
    if let Ok(document) = serde_json::from_slice::<Document>(data) {
        let _ = document.rules.check();
        if let Ok(canonical) = document.to_canonical() {
            let again: Document =
                serde_json::from_slice(&canonical).expect("a canonical document parses");
            assert_eq!(again, document);
            assert_eq!(again.to_canonical().expect("and encodes"), canonical);
        }
    }
    if let Ok(request) = serde_json::from_slice::<PublishRequest>(data) {
        if let Err(why) = request.check() {
            // The server sends this message as it is.
            let _ = why.to_string();
        }
    }
});
