//! Fuzzes the server's push decoder (docs/protocol.md, section 8): the
//! bytes as a `PushBatch`, the batch's rules and every operation's, their
//! digests; a decoded batch survives a JSON round trip exactly (serde_json
//! is built with `float_roundtrip`), and its rules give the same answers
//! after it.
#![no_main]

use coffer_protocol::sync::PushBatch;
use serde_json::Value;

/// How far a float may drift in a round trip: not at all.
const MAX_ULPS: u64 = 0;

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x != y => {
            !a.is_i64()
                && !a.is_u64()
                && match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => {
                        x.is_sign_positive() == y.is_sign_positive()
                            && x.to_bits().abs_diff(y.to_bits()) <= MAX_ULPS
                    }
                    _ => false,
                }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(batch) = serde_json::from_slice::<PushBatch>(data) else {
        return;
    };
    let checked = batch.check();
    if let Err(e) = &checked {
        assert!(e.to_string().len() < 300, "{e}");
    }
    for op in &batch.ops {
        if let Err(r) = op.check() {
            assert!(r.message.len() < 300);
            assert!(!r.code.as_str().is_empty());
        }
        let _ = op.digest();
    }
    let _ = batch.digest();

    let text = serde_json::to_vec(&batch).expect("a decoded batch encodes");
    let again: PushBatch = serde_json::from_slice(&text).expect("an encoded batch decodes");
    let (was, is) = (
        serde_json::to_value(&batch).expect("a batch is JSON"),
        serde_json::to_value(&again).expect("a batch is JSON"),
    );
    assert!(same(&was, &is), "{batch:?}\n{again:?}");
    let exact = was == is;
    assert_eq!(again.check(), checked);
    assert!(!exact || again.digest() == batch.digest());
    for (a, b) in again.ops.iter().zip(&batch.ops) {
        assert_eq!(a.check().map_err(|r| r.code), b.check().map_err(|r| r.code));
        assert!(!exact || a.digest() == b.digest());
    }
});
