//! Fuzzes the server's push decoder (docs/protocol.md, section 8): the
//! bytes as a `PushBatch`, the batch's rules and every operation's, their
//! digests; a decoded batch survives a JSON round trip exactly (serde_json
//! is built with `float_roundtrip`), and its rules give the same answers
//! after it.
#![no_main]

use coffer_protocol::sync::PushBatch;
use serde_json::Value;

/// Exactly the same, floats too (serde_json's `float_roundtrip`).
fn same(a: &Value, b: &Value) -> bool {
    a == b
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
