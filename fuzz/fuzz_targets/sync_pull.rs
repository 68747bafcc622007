//! Fuzzes what the device decodes of the server's sync answers
//! (docs/protocol.md, section 8): the bytes as a `PullAnswer` (every
//! pulled record and conflict leaf looked at as the agent does: names,
//! body sizes, revision names), as a `PushAnswer`, and as text: a revision
//! name (one spelling: it prints back as read) and a cursor (one the
//! server made reads back the same). What decodes survives a JSON round
//! trip exactly (serde_json is built with `float_roundtrip`).
#![no_main]

use coffer_protocol::sync::{
    body_len, decode_cursor, encode_cursor, valid_name, PullAnswer, PulledRecord, PushAnswer,
    Revision,
};
use coffer_protocol::Answer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Exactly the same, floats too (serde_json's `float_roundtrip`).
fn same(a: &Value, b: &Value) -> bool {
    a == b
}

fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(value: &T) {
    let text = serde_json::to_vec(value).expect("a decoded answer encodes");
    let again: T = serde_json::from_slice(&text).expect("an encoded answer decodes");
    let (was, is) = (
        serde_json::to_value(value).expect("JSON"),
        serde_json::to_value(&again).expect("JSON"),
    );
    assert!(same(&was, &is), "{value:?}\n{again:?}");
}

fn revision(text: &str) {
    if let Ok(rev) = text.parse::<Revision>() {
        assert_eq!(rev.to_string(), text);
        assert_eq!(Revision::new(rev.origin(), rev.seq()), Ok(rev));
    }
}

fn cursor(text: &str) {
    if let Some((seq, floor)) = decode_cursor(text) {
        assert_eq!(decode_cursor(&encode_cursor(seq, floor)), Some((seq, floor)));
    }
}

fn pulled(record: &PulledRecord) {
    let _ = valid_name(&record.collection) && valid_name(&record.id);
    revision(&record.revision.to_string());
    let _ = record.body.as_ref().map(body_len);
    let _ = record.files.iter().map(|f| f.size).sum::<u64>();
    for leaf in &record.conflicts {
        revision(&leaf.revision.to_string());
        if let Some(base) = &leaf.base {
            revision(&base.to_string());
        }
        let _ = leaf.body.as_ref().map(body_len);
    }
    round_trip(record);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(page) = PullAnswer::decode(data) {
        cursor(&page.cursor);
        let _ = page.records.windows(2).all(|w| w[0].seq < w[1].seq);
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
            assert_eq!(
                serde_json::to_string(&rev).expect("a revision encodes"),
                format!("\"{rev}\"")
            );
        }
    }
});
