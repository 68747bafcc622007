//! The record sync decoders (docs/protocol.md, section 8) on hostile bytes:
//! what the server reads of a push (`PushBatch`, its rules and digests) and
//! what the device reads of the server (`PushAnswer`, `PullAnswer`,
//! revision names, cursors). Nothing panics, and what decodes survives a
//! round trip. The same properties as the nightly fuzz targets
//! `fuzz/fuzz_targets/sync_push.rs` and `sync_pull.rs`, so that every test
//! run exercises them.

#![allow(clippy::unwrap_used, missing_docs)]

use coffer_protocol::sync::{
    decode_cursor, encode_cursor, PullAnswer, PulledRecord, PushAnswer, PushBatch, Revision,
};
use coffer_protocol::Answer;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Whether two decoded documents are the same: exactly, floats too (the
/// workspace builds serde_json with `float_roundtrip`; without it,
/// 5.906583895145456e59 came back as 5.906583895145457e59).
/// `a_float_survives_a_round_trip_exactly` keeps it so.
fn same(a: &Value, b: &Value) -> bool {
    a == b
}

/// Encodes `value`, decodes it again, and checks that both agree (and
/// that the second encoding decodes to the same again).
fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(value: &T) -> T {
    let text = serde_json::to_vec(value).unwrap();
    let again: T = serde_json::from_slice(&text).unwrap();
    let (was, is) = (
        serde_json::to_value(value).unwrap(),
        serde_json::to_value(&again).unwrap(),
    );
    assert!(same(&was, &is), "{value:?}\n{again:?}");
    let twice: T = serde_json::from_slice(&serde_json::to_vec(&again).unwrap()).unwrap();
    assert!(same(&is, &serde_json::to_value(&twice).unwrap()));
    again
}

/// What the server does with a push body.
fn push(data: &[u8]) {
    let Ok(batch) = serde_json::from_slice::<PushBatch>(data) else {
        return;
    };
    let _ = batch.check();
    for op in &batch.ops {
        let _ = op.check();
        let _ = op.digest();
    }
    let again = round_trip(&batch);
    // The server's digest of a retry is of the same decoded bytes, so it
    // is the same; of a re-encoded batch it is too, unless a float drifted.
    let drifted = serde_json::to_value(&again).unwrap() != serde_json::to_value(&batch).unwrap();
    assert!(drifted || again.digest() == batch.digest());
    assert_eq!(again.check(), batch.check());
    for (a, b) in again.ops.iter().zip(&batch.ops) {
        assert!(drifted || a.digest() == b.digest());
        assert_eq!(a.check().map_err(|r| r.code), b.check().map_err(|r| r.code));
    }
}

/// A revision name: one spelling, so it prints back as it was read.
fn revision(text: &str) {
    if let Ok(rev) = text.parse::<Revision>() {
        assert_eq!(rev.to_string(), text);
        assert_eq!(Revision::new(rev.origin(), rev.seq()), Ok(rev));
    }
}

/// A cursor: what the server reads from one, it writes back the same.
fn cursor(text: &str) {
    if let Some((seq, floor)) = decode_cursor(text) {
        assert_eq!(
            decode_cursor(&encode_cursor(seq, floor)),
            Some((seq, floor))
        );
    }
}

fn pulled(record: &PulledRecord) {
    revision(&record.revision.to_string());
    let _ = coffer_protocol::sync::valid_name(&record.collection);
    let _ = record.body.as_ref().map(coffer_protocol::sync::body_len);
    for leaf in &record.conflicts {
        revision(&leaf.revision.to_string());
        let _ = leaf.body.as_ref().map(coffer_protocol::sync::body_len);
    }
    round_trip(record);
}

/// What the device does with the server's answers.
fn pull(data: &[u8]) {
    if let Ok(page) = PullAnswer::decode(data) {
        cursor(&page.cursor);
        for record in &page.records {
            pulled(record);
        }
        round_trip(&page);
    }
    if let Ok(answer) = PushAnswer::decode(data) {
        round_trip(&answer);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        revision(text);
        cursor(text);
        if let Ok(rev) = serde_json::from_str::<Revision>(text) {
            assert_eq!(serde_json::to_string(&rev).unwrap(), format!("\"{rev}\""));
        }
    }
}

const PUSH: &str = r#"{"batch_id": "c0123abc", "ops": [
  {"collection": "cases", "id": "c-1", "revision": "0123456789abcdef0123456789abcdef.7",
   "body": {"name": "Amina", "age": 9, "tags": ["a", "b"], "w": 31.5, "n": null}, "author": "alice"},
  {"collection": "cases", "id": "c-2", "revision": "0123456789abcdef0123456789abcdef.8",
   "base": "fedcba9876543210fedcba9876543210.3", "deleted": true, "author": "bob",
   "resolves": ["00112233445566778899aabbccddeeff.4"]},
  {"collection": "photos", "id": "p", "revision": "0123456789abcdef0123456789abcdef.9",
   "body": {"caption": "\u00e9t\u00e9"}, "author": "alice",
   "files": [{"name": "p.jpg", "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "size": 12}]}
]}"#;

const PAGE: &str = r#"{"records": [
  {"collection": "cases", "id": "c-1", "seq": 41, "revision": "0123456789abcdef0123456789abcdef.7",
   "body": {"name": "Amina"}, "author": "alice",
   "conflicts": [{"revision": "fedcba9876543210fedcba9876543210.2",
                  "base": "0123456789abcdef0123456789abcdef.6", "body": {"name": "Amina B."},
                  "author": "bob"},
                 {"revision": "fedcba9876543210fedcba9876543210.3", "deleted": true, "author": "bob"}]},
  {"collection": "cases", "id": "c-2", "seq": 42, "revision": "00000000000000000000000000000000.1",
   "deleted": true, "author": "admin"}
 ], "cursor": "v1.42", "complete": false}"#;

const ANSWER: &str = r#"{"batch_id": "c0123abc", "results": [
  {"revision": "0123456789abcdef0123456789abcdef.7", "outcome": "applied", "seq": 41},
  {"revision": "0123456789abcdef0123456789abcdef.8", "outcome": "duplicate"},
  {"revision": "0123456789abcdef0123456789abcdef.9", "outcome": "conflict", "seq": 43,
   "head": "fedcba9876543210fedcba9876543210.2"},
  {"revision": "0123456789abcdef0123456789abcdef.10", "outcome": "conflict", "seq": 44, "head": null},
  {"revision": "0123456789abcdef0123456789abcdef.11", "outcome": "rejected",
   "code": "body_too_large", "message": "a record body is at most 4194304 bytes of JSON"},
  {"revision": "0123456789abcdef0123456789abcdef.12", "outcome": "rejected",
   "code": "newer_code", "message": "?"},
  {"revision": "0123456789abcdef0123456789abcdef.13", "outcome": "quarantined"}
]}"#;

#[test]
fn the_valid_examples_decode_and_round_trip() {
    let batch: PushBatch = serde_json::from_str(PUSH).unwrap();
    assert_eq!(batch.check(), Ok(()));
    assert!(batch.ops.iter().all(|op| op.check().is_ok()));
    push(PUSH.as_bytes());
    let page = PullAnswer::decode(PAGE.as_bytes()).unwrap();
    assert_eq!(page.records[0].conflicts.len(), 2);
    pull(PAGE.as_bytes());
    let answer = PushAnswer::decode(ANSWER.as_bytes()).unwrap();
    assert_eq!(answer.results.len(), 7);
    pull(ANSWER.as_bytes());
}

/// The fuzz targets' seeds (fuzz/seeds/sync_push, sync_pull): valid bodies
/// and edge cases.
const SEEDS: &[&str] = &[
    include_str!("../../../fuzz/seeds/sync_push/create-edit-delete.json"),
    include_str!("../../../fuzz/seeds/sync_push/resolution-with-files.json"),
    include_str!("../../../fuzz/seeds/sync_push/edge-cases.json"),
    include_str!("../../../fuzz/seeds/sync_push/empty.json"),
    include_str!("../../../fuzz/seeds/sync_pull/page-with-conflict.json"),
    include_str!("../../../fuzz/seeds/sync_pull/last-page.json"),
    include_str!("../../../fuzz/seeds/sync_pull/push-answer.json"),
    include_str!("../../../fuzz/seeds/sync_pull/edge-cases.json"),
    include_str!("../../../fuzz/seeds/sync_pull/revision.txt"),
    include_str!("../../../fuzz/seeds/sync_pull/cursor.txt"),
];

#[test]
fn the_fuzz_seeds_decode_as_they_say() {
    let push_seeds = &SEEDS[..4];
    for seed in push_seeds {
        serde_json::from_str::<PushBatch>(seed).unwrap();
        push(seed.as_bytes());
    }
    let valid: PushBatch = serde_json::from_str(SEEDS[0]).unwrap();
    assert_eq!(valid.check(), Ok(()));
    assert!(valid.ops.iter().all(|op| op.check().is_ok()));
    let edge: PushBatch = serde_json::from_str(SEEDS[2]).unwrap();
    assert!(edge.ops.iter().all(|op| op.check().is_err()));
    for page in [SEEDS[4], SEEDS[5], SEEDS[7]] {
        PullAnswer::decode(page.as_bytes()).unwrap();
    }
    PushAnswer::decode(SEEDS[6].as_bytes()).unwrap();
    assert!(SEEDS[8].parse::<Revision>().is_ok());
    assert!(decode_cursor(SEEDS[9]).is_some());
    for seed in SEEDS {
        pull(seed.as_bytes());
    }
}

/// Valid bodies, each cut and with bytes changed, inserted or removed.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let mut seeds = vec![PUSH, PAGE, ANSWER];
    seeds.extend(SEEDS);
    let seed = prop::sample::select(seeds);
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0u8..3);
    (seed, prop::collection::vec(edit, 1..8)).prop_map(|(seed, edits)| {
        let mut bytes = seed.as_bytes().to_vec();
        for (at, value, how) in edits {
            if bytes.is_empty() {
                bytes.push(value);
                continue;
            }
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = value,
                1 => bytes.insert(i, value),
                _ => {
                    bytes.remove(i);
                }
            }
        }
        bytes
    })
}

/// JSON-ish text: the decoders' own tokens, shuffled.
fn tokens() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "null",
        "true",
        "false",
        "0",
        "-1",
        "1e308",
        "1.5",
        "18446744073709551616",
        "\"batch_id\"",
        "\"ops\"",
        "\"records\"",
        "\"cursor\"",
        "\"complete\"",
        "\"results\"",
        "\"outcome\"",
        "\"applied\"",
        "\"conflict\"",
        "\"rejected\"",
        "\"code\"",
        "\"seq\"",
        "\"head\"",
        "\"revision\"",
        "\"body\"",
        "\"deleted\"",
        "\"conflicts\"",
        "\"collection\"",
        "\"id\"",
        "\"author\"",
        "\"0123456789abcdef0123456789abcdef.7\"",
        "\"v1.9\"",
        "\\u0000",
        "\\ud800",
    ]);
    prop::collection::vec(token, 0..64).prop_map(|t| t.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        push(&bytes);
        pull(&bytes);
    }

    #[test]
    fn mutated_valid_bodies_never_panic(bytes in mutated()) {
        push(&bytes);
        pull(&bytes);
    }

    #[test]
    fn token_soup_never_panics(bytes in tokens()) {
        push(&bytes);
        pull(&bytes);
    }

    #[test]
    fn any_revision_and_cursor_spelling(origin in any::<[u8; 16]>(), seq in any::<u64>(), text in "[0-9a-fv.+-]{0,40}") {
        if let Ok(rev) = Revision::new(origin, seq) {
            revision(&rev.to_string());
        }
        cursor(&encode_cursor(seq, seq / 2));
        revision(&text);
        cursor(&text);
    }

    #[test]
    fn record_bodies_with_any_number_round_trip(bits in any::<u64>(), int in any::<i64>()) {
        let float = f64::from_bits(bits);
        prop_assume!(float.is_finite());
        let body = format!(
            r#"{{"collection":"c","id":"1","seq":1,"revision":"0123456789abcdef0123456789abcdef.1","body":{{"f":{},"i":{int}}}}}"#,
            serde_json::to_string(&float).unwrap()
        );
        let record: PulledRecord = serde_json::from_str(&body).unwrap();
        pulled(&record);
    }
}

/// The exact round trip of an `f64` that drifted without serde_json's
/// `float_roundtrip` feature (see [`same`]).
#[test]
fn a_float_survives_a_round_trip_exactly() {
    let float = f64::from_bits(5501013054945343538);
    let text = serde_json::to_string(&float).unwrap();
    assert_eq!(serde_json::from_str::<f64>(&text).unwrap(), float, "{text}");
}
