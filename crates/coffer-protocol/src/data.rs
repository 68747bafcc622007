//! Device data delivery: batches of readings, in JSON or CBOR
//! (docs/formats/data-batch.md).
//!
//! A batch is `{"batch_id": "...", "readings": [{"at": 1700000000,
//! "name": "temp.c", "value": 21}]}`; the CBOR form (RFC 8949) is the same
//! map, for constrained links. A retry carries the same `batch_id` and is
//! stored once; the batch's digest (SHA-256 of its readings in canonical
//! JSON, whatever encoding carried them) tells a retry from a different
//! batch reusing an id.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Most readings in one batch.
pub const MAX_READINGS: usize = 1000;
/// Longest value of one reading, as JSON text.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Deepest nesting a CBOR body may have.
pub const CBOR_DEPTH: usize = 16;

/// One reading.
///
/// Deserialized through the same checks as [`Batch::from_json`]: a value
/// holding NaN or an infinity is refused, never turned into `null`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(try_from = "WireReading")]
pub struct Reading {
    /// When it was taken, Unix seconds (device clock).
    pub at: i64,
    /// What was measured: `[A-Za-z0-9]` then `[A-Za-z0-9_.:/-]`, at most 128.
    pub name: String,
    /// Any JSON value (numbers, strings, booleans, null, arrays, objects);
    /// every number in it is finite.
    pub value: serde_json::Value,
}

/// A batch, as sent.
///
/// Decode one with [`Batch::from_json`] or [`Batch::from_cbor`], which say
/// why a body is refused and refuse bytes after the batch; serde's own
/// `Deserialize` refuses the same values, with less precise errors.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(try_from = "WireBatch")]
pub struct Batch {
    /// Chosen by the device, the same on every retry: 8 to 64 of
    /// `[A-Za-z0-9_-]`.
    pub batch_id: String,
    /// The readings, 1 to [`MAX_READINGS`].
    pub readings: Vec<Reading>,
}

/// The encoding a batch arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encoding {
    /// `application/json`.
    Json,
    /// `application/cbor` (RFC 8949).
    Cbor,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Json => "JSON",
            Encoding::Cbor => "CBOR",
        })
    }
}

/// How a body fails to be a batch, in this crate's words: a parser's own
/// message can quote the input and changes between versions, so it is
/// never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformation {
    /// Not well-formed in its encoding.
    Syntax,
    /// It ends before the batch does.
    Truncated,
    /// Well-formed, but not a batch: a field missing, unknown or repeated,
    /// a value of the wrong type, or (CBOR) a byte string, a tag or a map
    /// key that is not text.
    NotABatch,
    /// CBOR nested deeper than [`CBOR_DEPTH`] levels.
    TooDeep,
    /// Bytes after the end of the batch.
    TrailingBytes,
}

impl fmt::Display for Malformation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformation::Syntax => "it is not well-formed",
            Malformation::Truncated => "it ends before the batch does",
            Malformation::NotABatch => "it does not have a batch's fields and types",
            Malformation::TooDeep => "it is nested too deeply",
            Malformation::TrailingBytes => "bytes follow the end of the batch",
        })
    }
}

/// ` (at byte n)`, or nothing.
struct AtByte(Option<usize>);

impl fmt::Display for AtByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(offset) => write!(f, " (at byte {offset})"),
            None => Ok(()),
        }
    }
}

/// Why a batch is refused. The messages are bounded and hold no byte of
/// the body: the server sends them to the device as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Not decodable as the encoding its content type names.
    #[error("the body is not a valid {encoding} batch: {why}{}", AtByte(*.offset))]
    Malformed {
        /// The encoding the content type named.
        encoding: Encoding,
        /// What is wrong.
        why: Malformation,
        /// Where, in bytes from the start of the body, if the parser knows.
        offset: Option<usize>,
    },
    /// A number in a reading's value is NaN or an infinity: JSON has no
    /// such numbers, and storing `null` instead would change the data.
    #[error("reading {reading}: value holds NaN or an infinity, which a batch cannot carry")]
    NonFiniteNumber {
        /// The reading's index in the batch.
        reading: usize,
    },
    /// Decodable, but breaks a rule.
    #[error("{0}")]
    Invalid(String),
}

impl BatchError {
    /// Whether the body could not be decoded at all (rather than decoded
    /// into a batch that breaks a rule).
    pub fn is_malformed(&self) -> bool {
        matches!(self, BatchError::Malformed { .. })
    }
}

impl Batch {
    /// Decodes a JSON body.
    pub fn from_json(body: &[u8]) -> Result<Batch, BatchError> {
        let malformed = |e: serde_json::Error, why: Option<Malformation>| {
            use serde_json::error::Category;
            let why = why.unwrap_or(match e.classify() {
                Category::Eof => Malformation::Truncated,
                Category::Data => Malformation::NotABatch,
                Category::Syntax | Category::Io => Malformation::Syntax,
            });
            BatchError::Malformed {
                encoding: Encoding::Json,
                why,
                offset: json_offset(body, &e),
            }
        };
        let mut decoder = serde_json::Deserializer::from_slice(body);
        let wire = WireBatch::deserialize(&mut decoder).map_err(|e| malformed(e, None))?;
        decoder
            .end()
            .map_err(|e| malformed(e, Some(Malformation::TrailingBytes)))?;
        Batch::try_from(wire)
    }

    /// Decodes a CBOR body: exactly one data item, nothing after it.
    pub fn from_cbor(body: &[u8]) -> Result<Batch, BatchError> {
        use ciborium::de::Error;
        let malformed = |why, offset| BatchError::Malformed {
            encoding: Encoding::Cbor,
            why,
            offset,
        };
        let mut rest = body;
        let wire: WireBatch = ciborium::de::from_reader_with_recursion_limit(&mut rest, CBOR_DEPTH)
            .map_err(|e| match e {
                // Reading a slice fails only at its end.
                Error::Io(_) => malformed(Malformation::Truncated, None),
                Error::Syntax(offset) => malformed(Malformation::Syntax, Some(offset)),
                Error::Semantic(offset, _) => malformed(Malformation::NotABatch, offset),
                Error::RecursionLimitExceeded => malformed(Malformation::TooDeep, None),
            })?;
        if !rest.is_empty() {
            return Err(malformed(
                Malformation::TrailingBytes,
                Some(body.len() - rest.len()),
            ));
        }
        Batch::try_from(wire)
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

/// Where a JSON parser's error is, in bytes from the start of `body`
/// (serde_json counts a column in bytes from the start of its line).
fn json_offset(body: &[u8], e: &serde_json::Error) -> Option<usize> {
    let line_start = match e.line() {
        0 => return None,
        1 => 0,
        line => {
            body.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .nth(line - 2)?
                .0
                + 1
        }
    };
    Some((line_start + e.column()).min(body.len()))
}

/// A reading as decoded, before its value is known to be finite.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireReading {
    at: i64,
    name: String,
    value: WireValue,
}

/// A batch as decoded.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBatch {
    batch_id: String,
    readings: Vec<WireReading>,
}

/// A reading's value as decoded: `None` if a number anywhere in it is NaN
/// or an infinity (CBOR has them, JSON does not; serde_json's own `Value`
/// would quietly make them `null`).
struct WireValue(Option<serde_json::Value>);

/// A reading whose value holds NaN or an infinity.
#[derive(Debug)]
struct NonFinite;

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading's value holds NaN or an infinity")
    }
}

impl TryFrom<WireReading> for Reading {
    type Error = NonFinite;

    fn try_from(wire: WireReading) -> Result<Reading, NonFinite> {
        Ok(Reading {
            at: wire.at,
            name: wire.name,
            value: wire.value.0.ok_or(NonFinite)?,
        })
    }
}

impl TryFrom<WireBatch> for Batch {
    type Error = BatchError;

    fn try_from(wire: WireBatch) -> Result<Batch, BatchError> {
        let readings = wire
            .readings
            .into_iter()
            .enumerate()
            .map(|(reading, r)| {
                Reading::try_from(r).map_err(|NonFinite| BatchError::NonFiniteNumber { reading })
            })
            .collect::<Result<_, _>>()?;
        Ok(Batch {
            batch_id: wire.batch_id,
            readings,
        })
    }
}

impl<'de> Deserialize<'de> for WireValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WireValueVisitor)
    }
}

/// Builds a `serde_json::Value` as serde_json's own visitor does, but
/// notes a non-finite number instead of writing `null`. The visitor takes
/// what serde_json's does and nothing more: byte strings, tags (enums) and
/// integers beyond 64 bits stay refused.
struct WireValueVisitor;

impl<'de> Visitor<'de> for WireValueVisitor {
    type Value = WireValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<WireValue, E> {
        Ok(WireValue(Some(v.into())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<WireValue, E> {
        Ok(WireValue(Some(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<WireValue, E> {
        Ok(WireValue(Some(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<WireValue, E> {
        Ok(WireValue(
            serde_json::Number::from_f64(v).map(serde_json::Value::Number),
        ))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<WireValue, E> {
        Ok(WireValue(Some(v.into())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<WireValue, E> {
        Ok(WireValue(Some(v.into())))
    }

    fn visit_none<E: de::Error>(self) -> Result<WireValue, E> {
        Ok(WireValue(Some(serde_json::Value::Null)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<WireValue, E> {
        Ok(WireValue(Some(serde_json::Value::Null)))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<WireValue, D::Error> {
        WireValue::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WireValue, A::Error> {
        // Every element is read, even after a non-finite one, so that the
        // decoder stays in step.
        let mut items = Some(Vec::new());
        while let Some(WireValue(item)) = seq.next_element()? {
            items = items.zip(item).map(|(mut items, item)| {
                items.push(item);
                items
            });
        }
        Ok(WireValue(items.map(serde_json::Value::Array)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireValue, A::Error> {
        let mut entries = Some(serde_json::Map::new());
        while let Some((key, WireValue(item))) = map.next_entry::<String, WireValue>()? {
            entries = entries.zip(item).map(|(mut entries, item)| {
                entries.insert(key, item);
                entries
            });
        }
        Ok(WireValue(entries.map(serde_json::Value::Object)))
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
        assert_eq!(
            Batch::from_json(b"{\"batch_id\": 1"),
            Err(malformed(Encoding::Json, Malformation::NotABatch, Some(14)))
        );
        assert_eq!(
            Batch::from_cbor(&[0xff, 0x00]),
            Err(malformed(Encoding::Cbor, Malformation::NotABatch, None))
        );
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
        assert_eq!(
            Batch::from_cbor(&deep),
            Err(malformed(Encoding::Cbor, Malformation::NotABatch, None))
        );
        assert_eq!(
            Batch::from_cbor(&with_value(&deep)),
            Err(malformed(Encoding::Cbor, Malformation::TooDeep, None))
        );
        assert!(Batch::from_cbor(&with_value(&deep[90..])).is_ok());
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

    fn malformed(encoding: Encoding, why: Malformation, offset: Option<usize>) -> BatchError {
        BatchError::Malformed {
            encoding,
            why,
            offset,
        }
    }

    /// A CBOR batch `batch-01` of one reading per value.
    fn cbor_batch(values: Vec<ciborium::Value>) -> Vec<u8> {
        use ciborium::Value as C;
        let text = |t: &str| C::Text(t.to_owned());
        let readings = values
            .into_iter()
            .map(|value| {
                C::Map(vec![
                    (text("at"), C::Integer(1.into())),
                    (text("name"), text("x")),
                    (text("value"), value),
                ])
            })
            .collect();
        let batch = C::Map(vec![
            (text("batch_id"), text("batch-01")),
            (text("readings"), C::Array(readings)),
        ]);
        let mut out = Vec::new();
        ciborium::ser::into_writer(&batch, &mut out).unwrap();
        out
    }

    #[test]
    fn nan_and_infinities_are_refused_naming_the_reading() {
        use ciborium::Value as C;
        let nested = |v: C| {
            [
                v.clone(),
                C::Array(vec![C::Integer(1.into()), v.clone()]),
                C::Map(vec![(C::Text("a".into()), v.clone())]),
                C::Map(vec![
                    (C::Text("ok".into()), C::Bool(true)),
                    (
                        C::Text("deep".into()),
                        C::Array(vec![C::Map(vec![(C::Text("b".into()), v)]), C::Null]),
                    ),
                ]),
            ]
        };
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
            for value in nested(C::Float(bad)) {
                let body = cbor_batch(vec![C::Float(21.5), value.clone(), C::Float(bad)]);
                let refused = Batch::from_cbor(&body).unwrap_err();
                assert_eq!(
                    refused,
                    BatchError::NonFiniteNumber { reading: 1 },
                    "{value:?}"
                );
                assert!(!refused.is_malformed());
                assert_eq!(
                    refused.to_string(),
                    "reading 1: value holds NaN or an infinity, which a batch cannot carry"
                );
                // serde's own path refuses it too.
                assert!(ciborium::de::from_reader::<Batch, _>(&body[..]).is_err());
            }
        }
        // Every float width: half, single, double (NaN, +inf, -inf).
        for float in [
            &[0xf9, 0x7e, 0x00][..],
            &[0xf9, 0x7c, 0x00],
            &[0xf9, 0xfc, 0x00],
            &[0xfa, 0x7f, 0xc0, 0x00, 0x00],
            &[0xfa, 0x7f, 0x80, 0x00, 0x00],
            &[0xfb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
            &[0xfb, 0xff, 0xf0, 0, 0, 0, 0, 0, 0],
        ] {
            let mut body = cbor_batch(vec![C::Null]);
            assert_eq!(body.pop(), Some(0xf6));
            body.extend_from_slice(float);
            assert_eq!(
                Batch::from_cbor(&body),
                Err(BatchError::NonFiniteNumber { reading: 0 }),
                "{float:02x?}"
            );
        }
        // JSON has no such numbers: they are not JSON at all.
        for value in [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            "-1e400",
            "[1, 1e999]",
        ] {
            let body = format!(
                r#"{{"batch_id": "batch-01", "readings": [{{"at": 1, "name": "x", "value": {value}}}]}}"#
            );
            let refused = Batch::from_json(body.as_bytes()).unwrap_err();
            assert!(
                matches!(
                    refused,
                    BatchError::Malformed {
                        encoding: Encoding::Json,
                        why: Malformation::Syntax,
                        offset: Some(_)
                    }
                ),
                "{value}: {refused:?}"
            );
        }
        // Finite floats, nested or not, are kept as they are.
        let fine = Batch::from_cbor(&cbor_batch(nested(C::Float(-0.25)).to_vec())).unwrap();
        assert_eq!(fine.readings[0].value, serde_json::json!(-0.25));
        assert_eq!(
            fine.readings[3].value,
            serde_json::json!({"ok": true, "deep": [{"b": -0.25}, null]})
        );
    }

    #[test]
    fn bytes_after_a_batch_are_refused() {
        let cbor = cbor_batch(vec![ciborium::Value::Integer(7.into())]);
        assert!(Batch::from_cbor(&cbor).is_ok());
        for tail in [&[0x00][..], &[0xf6], &[0xff], &cbor] {
            assert_eq!(
                Batch::from_cbor(&[&cbor[..], tail].concat()),
                Err(malformed(
                    Encoding::Cbor,
                    Malformation::TrailingBytes,
                    Some(cbor.len())
                )),
                "{tail:02x?}"
            );
        }
        let json = br#"{"batch_id": "batch-01", "readings": [{"at": 1, "name": "x", "value": 7}]}"#;
        assert!(Batch::from_json(&[&json[..], b" \n"].concat()).is_ok());
        for tail in [&b"x"[..], b" 1", b"{}", json] {
            let refused = Batch::from_json(&[&json[..], tail].concat()).unwrap_err();
            assert!(
                matches!(
                    refused,
                    BatchError::Malformed {
                        encoding: Encoding::Json,
                        why: Malformation::TrailingBytes,
                        offset: Some(offset),
                    } if offset > json.len() - 1 && offset <= json.len() + tail.len()
                ),
                "{refused:?}"
            );
        }
        // A batch cut short.
        assert_eq!(
            Batch::from_cbor(&cbor[..cbor.len() - 1]),
            Err(malformed(Encoding::Cbor, Malformation::Truncated, None))
        );
        assert!(matches!(
            Batch::from_json(&json[..json.len() - 1]),
            Err(BatchError::Malformed {
                encoding: Encoding::Json,
                why: Malformation::Truncated,
                ..
            })
        ));
    }

    /// The fixed messages a malformed batch may have.
    fn is_fixed_message(text: &str) -> bool {
        let phrases = [
            Malformation::Syntax,
            Malformation::Truncated,
            Malformation::NotABatch,
            Malformation::TooDeep,
            Malformation::TrailingBytes,
        ]
        .map(|why| why.to_string());
        let Some(rest) = text
            .strip_prefix("the body is not a valid JSON batch: ")
            .or_else(|| text.strip_prefix("the body is not a valid CBOR batch: "))
        else {
            return false;
        };
        phrases.iter().any(|phrase| {
            rest.strip_prefix(phrase.as_str()).is_some_and(|at| {
                at.is_empty()
                    || at
                        .strip_prefix(" (at byte ")
                        .and_then(|n| n.strip_suffix(')'))
                        .is_some_and(|n| n.parse::<usize>().is_ok())
            })
        })
    }

    #[test]
    fn malformed_messages_are_fixed_and_quote_nothing() {
        let json_cases: [&[u8]; 8] = [
            b"",
            b"{\"batch_id\": \"secret-value\", \"readings\": [], \"secret_field\": 1}",
            b"{\"batch_id\": [\"secret-value\"]}",
            b"{\"readings\": []}",
            b"{\"batch_id\": \"secret-value\" \"readings\"}",
            b"secret-value",
            b"{\"batch_id\": \"batch-01\", \"readings\": [{\"at\": \"secret-value\"}]}",
            b"\xff\xfe secret-value",
        ];
        for body in json_cases {
            let refused = Batch::from_json(body).unwrap_err();
            let text = refused.to_string();
            assert!(refused.is_malformed(), "{text}");
            assert!(is_fixed_message(&text), "{text}");
            assert!(!text.contains("secret"), "{text}");
        }
        // CBOR: an unknown field, a wrong type, a byte string, a tag, a
        // non-text key, each holding text that must not be echoed.
        let secret = ciborium::Value::Text("secret-value".into());
        use ciborium::Value as C;
        let cases = [
            C::Map(vec![(C::Text("secret_field".into()), secret.clone())]),
            C::Map(vec![(
                C::Text("batch_id".into()),
                C::Array(vec![secret.clone()]),
            )]),
            C::Bytes(b"secret-value".to_vec()),
            C::Tag(1, Box::new(secret.clone())),
            C::Map(vec![(C::Integer(1.into()), secret)]),
        ];
        for case in cases {
            let mut body = Vec::new();
            ciborium::ser::into_writer(&case, &mut body).unwrap();
            let refused = Batch::from_cbor(&body).unwrap_err();
            let text = refused.to_string();
            assert!(refused.is_malformed(), "{text}");
            assert!(is_fixed_message(&text), "{text}");
            assert!(!text.contains("secret"), "{text}");
        }
        for value in [
            C::Bytes(b"secret".to_vec()),
            C::Tag(0, Box::new(C::Text("secret".into()))),
            C::Map(vec![(C::Integer(1.into()), C::Text("secret".into()))]),
        ] {
            let refused = Batch::from_cbor(&cbor_batch(vec![value])).unwrap_err();
            assert!(is_fixed_message(&refused.to_string()), "{refused}");
            assert!(matches!(
                refused,
                BatchError::Malformed {
                    encoding: Encoding::Cbor,
                    why: Malformation::NotABatch,
                    ..
                }
            ));
        }
    }

    proptest::proptest! {
        /// Any float, at any reading and depth: stored as it is if finite,
        /// refused naming its reading if not; never `null`.
        #[test]
        fn no_float_becomes_null(
            bits in proptest::prelude::any::<u64>(),
            special in 0usize..5,
            reading in 0usize..4,
            depth in 0usize..4,
        ) {
            use ciborium::Value as C;
            let float = [
                f64::from_bits(bits),
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::from_bits(bits | 0x7ff0_0000_0000_0000),
            ][special];
            let mut value = C::Float(float);
            for level in 0..depth {
                value = if level % 2 == 0 {
                    C::Array(vec![value])
                } else {
                    C::Map(vec![(C::Text("k".into()), value)])
                };
            }
            let mut values = vec![C::Integer(1.into()); 4];
            values[reading] = value;
            let decoded = Batch::from_cbor(&cbor_batch(values));
            if float.is_finite() {
                let batch = decoded.unwrap();
                let mut inner = &batch.readings[reading].value;
                for level in 0..depth {
                    inner = if (depth - 1 - level) % 2 == 0 { &inner[0] } else { &inner["k"] };
                }
                proptest::prop_assert_eq!(inner.as_f64(), Some(float));
            } else {
                proptest::prop_assert_eq!(decoded, Err(BatchError::NonFiniteNumber { reading }));
            }
        }

        /// Whatever the bytes, a refusal's message is one of the fixed ones
        /// (or a rule's, naming a reading), and a batch decodes only if it
        /// is the whole body.
        #[test]
        fn refusals_of_any_body_are_fixed_messages(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            cut in 0usize..200,
            flip in proptest::prelude::any::<u8>(),
        ) {
            let valid = cbor_batch(vec![C::Float(1.5), C::Text("t".into())]);
            use ciborium::Value as C;
            let mut mutated = valid.clone();
            let at = cut % mutated.len();
            mutated[at] ^= flip;
            for input in [body.clone(), mutated, [&valid[..], &body[..]].concat()] {
                for decoded in [Batch::from_cbor(&input), Batch::from_json(&input)] {
                    match decoded {
                        Ok(_) => {}
                        Err(e @ BatchError::Malformed { .. }) => {
                            proptest::prop_assert!(is_fixed_message(&e.to_string()), "{}", e);
                        }
                        Err(BatchError::NonFiniteNumber { reading }) => {
                            proptest::prop_assert!(reading < 2);
                        }
                        Err(other) => proptest::prop_assert!(false, "{:?}", other),
                    }
                }
            }
            if !body.is_empty() {
                proptest::prop_assert!(Batch::from_cbor(&[&valid[..], &body[..]].concat()).is_err());
            }
        }
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
