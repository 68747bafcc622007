//! Device data delivery: batches of readings, in JSON or CBOR
//! (docs/formats/data-batch.md).
//!
//! A batch is `{"batch_id": "...", "readings": [{"at": 1700000000,
//! "name": "temp.c", "value": 21}]}`; the CBOR form (RFC 8949) is the same
//! map, for constrained links. A retry carries the same `batch_id` and is
//! stored once; the batch's digest (SHA-256 of its readings in canonical
//! JSON, whatever encoding carried them) tells a retry from a different
//! batch reusing an id.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Most readings in one batch.
pub const MAX_READINGS: usize = 1000;
/// Longest value of one reading, as JSON text.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Deepest nesting a CBOR body may have.
const CBOR_DEPTH: usize = 16;

/// One reading.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// When it was taken, Unix seconds (device clock).
    pub at: i64,
    /// What was measured: `[A-Za-z0-9]` then `[A-Za-z0-9_.:/-]`, at most 128.
    pub name: String,
    /// Any JSON value (numbers, strings, booleans, null, arrays, objects).
    pub value: serde_json::Value,
}

/// A batch, as sent.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Chosen by the device, the same on every retry: 8 to 64 of
    /// `[A-Za-z0-9_-]`.
    pub batch_id: String,
    /// The readings, 1 to [`MAX_READINGS`].
    pub readings: Vec<Reading>,
}

/// Why a batch is refused.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Not decodable as the encoding its content type names.
    #[error("the body is not a valid {0} batch: {1}")]
    Malformed(&'static str, String),
    /// Decodable, but breaks a rule.
    #[error("{0}")]
    Invalid(String),
}

impl Batch {
    /// Decodes a JSON body.
    pub fn from_json(body: &[u8]) -> Result<Batch, BatchError> {
        serde_json::from_slice(body).map_err(|e| BatchError::Malformed("JSON", e.to_string()))
    }

    /// Decodes a CBOR body.
    pub fn from_cbor(body: &[u8]) -> Result<Batch, BatchError> {
        ciborium::de::from_reader_with_recursion_limit(body, CBOR_DEPTH)
            .map_err(|e| BatchError::Malformed("CBOR", e.to_string()))
    }

    /// Checks every rule; says which reading breaks one.
    pub fn check(&self) -> Result<(), BatchError> {
        let id_ok = (8..=64).contains(&self.batch_id.len())
            && self
                .batch_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(BatchError::Invalid(
                "batch_id must be 8 to 64 of A-Z a-z 0-9 _ -".into(),
            ));
        }
        if self.readings.is_empty() || self.readings.len() > MAX_READINGS {
            return Err(BatchError::Invalid(format!(
                "a batch holds 1 to {MAX_READINGS} readings"
            )));
        }
        for (i, r) in self.readings.iter().enumerate() {
            if !valid_name(&r.name) {
                return Err(BatchError::Invalid(format!(
                    "reading {i}: name must start with a letter or digit, then letters, digits and _ . : / - (at most 128)"
                )));
            }
            if !(0..=(1i64 << 40)).contains(&r.at) {
                return Err(BatchError::Invalid(format!(
                    "reading {i}: at must be Unix seconds"
                )));
            }
            if r.value.to_string().len() > MAX_VALUE_BYTES {
                return Err(BatchError::Invalid(format!(
                    "reading {i}: value is over {MAX_VALUE_BYTES} bytes"
                )));
            }
        }
        Ok(())
    }

    /// SHA-256 of the readings in canonical JSON, hex: the same for the
    /// same readings in either encoding.
    pub fn digest(&self) -> String {
        let readings = serde_json::to_value(&self.readings).unwrap_or_default();
        let canonical = crate::policy::canonical_json(&readings)
            .unwrap_or_else(|_| readings.to_string().into_bytes());
        hex::encode(Sha256::digest(canonical))
    }
}

/// Whether `name` is a valid reading name (also keeps CSV cells from
/// starting like a spreadsheet formula).
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    (1..=128).contains(&name.len())
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b))
}

/// One stored reading, as admins query it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct StoredReading {
    /// Row id: queries page on it.
    pub id: i64,
    /// The device that sent it.
    pub device_id: i64,
    /// When it was taken (device clock).
    pub at: i64,
    /// What was measured.
    pub name: String,
    /// The value.
    pub value: serde_json::Value,
    /// When the server stored it (server clock).
    pub received_at: i64,
}

/// Quotes a CSV cell (RFC 4180).
pub fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Readings as CSV, with a header row; values as JSON text.
pub fn to_csv(readings: &[StoredReading]) -> String {
    let mut out = String::from("id,device_id,at,name,value,received_at\n");
    for r in readings {
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.id,
            r.device_id,
            r.at,
            csv_cell(&r.name),
            csv_cell(&r.value.to_string()),
            r.received_at
        ));
    }
    out
}

/// The answer to a delivery (`POST /v1/device/data`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct DeliveryAnswer {
    /// The batch.
    pub batch_id: String,
    /// Readings stored by this request (0 for a retry).
    pub stored: u64,
    /// Whether the batch was stored before.
    pub duplicate: bool,
}

/// A page of stored readings (`GET /v1/orgs/{org}/data`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct ReadingsPage {
    /// The readings, by id.
    pub readings: Vec<StoredReading>,
    /// Give this as `after` for the next page; `None` on the last.
    #[serde(default)]
    pub next_after: Option<i64>,
}

crate::json_answer!(DeliveryAnswer, ReadingsPage);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn batch() -> Batch {
        Batch::from_json(
            br#"{"batch_id": "b-0001-x", "readings": [
                {"at": 1700000000, "name": "temp.c", "value": 21},
                {"at": 1700000060, "name": "note", "value": {"text": "door, \"open\""}}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn cbor_and_json_of_one_batch_have_one_digest() {
        let json = batch();
        let mut cbor = Vec::new();
        let value = serde_json::json!({
            "batch_id": json.batch_id,
            "readings": json.readings,
        });
        ciborium::ser::into_writer(&value, &mut cbor).unwrap();
        let decoded = Batch::from_cbor(&cbor).unwrap();
        assert_eq!(decoded, json);
        assert_eq!(decoded.digest(), json.digest());
        assert!(json.check().is_ok());
    }

    #[test]
    fn bad_batches_are_refused_with_a_reason() {
        assert!(matches!(
            Batch::from_json(b"{\"batch_id\": 1"),
            Err(BatchError::Malformed(..))
        ));
        assert!(matches!(
            Batch::from_cbor(&[0xff, 0x00]),
            Err(BatchError::Malformed(..))
        ));
        // {"batch_id": "batch-01", "readings": [{"at": 1, "name": "x",
        // "value": <value>}]} in CBOR.
        let with_value = |value: &[u8]| {
            [
                &[0xa2, 0x68][..],
                b"batch_id",
                &[0x68],
                b"batch-01",
                &[0x68],
                b"readings",
                &[0x81, 0xa3, 0x62],
                b"at",
                &[0x01, 0x64],
                b"name",
                &[0x61, b'x', 0x65],
                b"value",
                value,
            ]
            .concat()
        };
        // A byte string and a tag have no JSON equivalent.
        for value in [&[0x41u8, 0x00][..], &[0xc1, 0x01]] {
            assert!(Batch::from_cbor(&with_value(value)).is_err(), "{value:?}");
        }
        // `undefined` reads as null.
        let fine = Batch::from_cbor(&with_value(&[0xf7])).unwrap();
        assert_eq!(fine.readings[0].value, serde_json::Value::Null);
        // Nesting deeper than the limit.
        let deep = [vec![0x81u8; 100], vec![0x00]].concat();
        assert!(Batch::from_cbor(&deep).is_err());
        let mut b = batch();
        b.batch_id = "short".into();
        assert!(b.check().is_err());
        let mut b = batch();
        b.readings[0].name = "=cmd()".into();
        assert!(b.check().unwrap_err().to_string().contains("reading 0"));
        let mut b = batch();
        b.readings[1].value = serde_json::Value::String("x".repeat(MAX_VALUE_BYTES));
        assert!(b.check().is_err());
        let mut b = batch();
        b.readings.clear();
        assert!(b.check().is_err());
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let rows = vec![StoredReading {
            id: 1,
            device_id: 2,
            at: 3,
            name: "note".into(),
            value: serde_json::json!({"text": "a,\"b\""}),
            received_at: 4,
        }];
        assert_eq!(
            to_csv(&rows),
            "id,device_id,at,name,value,received_at\n1,2,3,note,\"{\"\"text\"\":\"\"a,\\\"\"b\\\"\"\"\"}\",4\n"
        );
    }
}
