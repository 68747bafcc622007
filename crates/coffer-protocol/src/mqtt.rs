//! Data delivery over MQTT (docs/protocol.md, section 10): the device's
//! access to the broker, asked for over HTTPS, and the topic and payload
//! rules that the broker's ACL and `coffer serve`'s ingest share.
//!
//! A device publishes each queued batch, QoS 1, to its own topic
//! `coffer/v1/{org}/{device}/readings`; the broker lets it publish there
//! and nowhere else. The payload is the batch exactly as over HTTP
//! (docs/formats/data-batch.md), JSON or CBOR: MQTT 3.1.1 has no content
//! type, so the first byte tells them apart ([`decode_batch`]).
//!
//! ```
//! use coffer_protocol::mqtt::{parse_readings_topic, readings_topic};
//!
//! assert_eq!(readings_topic(3, 41), "coffer/v1/3/41/readings");
//! assert_eq!(parse_readings_topic("coffer/v1/3/41/readings"), Some((3, 41)));
//! // Anything else is not a topic of a device's readings.
//! assert_eq!(parse_readings_topic("coffer/v1/3/041/readings"), None);
//! assert_eq!(parse_readings_topic("coffer/v1/3/41/readings/x"), None);
//! ```

use serde::{Deserialize, Serialize};

use crate::data::{Batch, BatchError};
use crate::{Auth, Endpoint, Method, WireSecret};

/// The first levels of every readings topic.
pub const TOPIC_PREFIX: &str = "coffer/v1";

/// The filter that matches every device's readings topic (what the
/// control plane's ingest subscribes to).
pub const READINGS_FILTER: &str = "coffer/v1/+/+/readings";

/// The topic a device publishes its readings to.
pub fn readings_topic(org_id: i64, device_id: i64) -> String {
    format!("{TOPIC_PREFIX}/{org_id}/{device_id}/readings")
}

/// The organization and device a readings topic names; `None` for any
/// other topic, or ids not written as [`readings_topic`] writes them
/// (no sign, no leading zero), so that one device has one topic.
pub fn parse_readings_topic(topic: &str) -> Option<(i64, i64)> {
    let rest = topic.strip_prefix(TOPIC_PREFIX)?.strip_prefix('/')?;
    let mut levels = rest.split('/');
    let (org, device, leaf) = (levels.next()?, levels.next()?, levels.next()?);
    if leaf != "readings" || levels.next().is_some() {
        return None;
    }
    let id = |text: &str| -> Option<i64> {
        let canonical = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        canonical.then(|| text.parse().ok()).flatten()
    };
    Some((id(org)?, id(device)?))
}

/// Decodes a batch published over MQTT: JSON when its first byte that is
/// not JSON whitespace is `{`, CBOR otherwise (a CBOR batch is a map, whose
/// first byte is 0xA0 to 0xBF: never `{`, 0x7B). The rules are then
/// HTTP delivery's ([`Batch::check`] is for the caller).
pub fn decode_batch(payload: &[u8]) -> Result<Batch, BatchError> {
    let first = payload
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'{') {
        Batch::from_json(payload)
    } else {
        Batch::from_cbor(payload)
    }
}

/// `POST /v1/device/mqtt`: the device's access to the organization's MQTT
/// broker. Each call draws a new password (the previous one stops working
/// at once, and a connection that used it is dropped): the answer is the
/// only place the password ever is, and the control plane keeps nothing of
/// it. 404 `mqtt_not_configured` when the server has no broker; 401 for a
/// revoked device, 403 for a suspended organization or a whole-device
/// wipe ordered (`wipe_pending`); 503 `mqtt_broker_unavailable` when the
/// broker does not answer.
#[derive(Debug)]
pub struct RequestMqttAccess;

impl Endpoint for RequestMqttAccess {
    type Answer = MqttAccess;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/device/mqtt";
    const AUTH: Auth = Auth::Device;
}

/// The answer to [`RequestMqttAccess`]: how to reach the broker and as whom.
#[derive(Debug, Serialize, Deserialize)]
pub struct MqttAccess {
    /// The broker's host name or address, as the device reaches it.
    pub host: String,
    /// Its TLS port.
    pub port: u16,
    /// The SHA-256 of the broker's TLS certificate (DER), hex: the device
    /// trusts exactly that certificate, as it pins the server's.
    pub certificate_sha256: String,
    /// The MQTT user name.
    pub username: String,
    /// The MQTT password: shown once, here.
    pub password: WireSecret,
    /// The MQTT client id the broker binds to this user.
    pub client_id: String,
    /// The one topic the device may publish to ([`readings_topic`]).
    pub topic: String,
    /// Largest payload the broker and the ingest take, bytes.
    pub max_payload: usize,
}

crate::json_answer!(MqttAccess);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_nothing_else_parses() {
        for (org, device) in [(0, 0), (1, 2), (i64::MAX, 9)] {
            assert_eq!(
                parse_readings_topic(&readings_topic(org, device)),
                Some((org, device))
            );
        }
        for bad in [
            "",
            "coffer/v1",
            "coffer/v1/1/2",
            "coffer/v1/1/2/readings/",
            "coffer/v2/1/2/readings",
            "coffer/v1/+/2/readings",
            "coffer/v1/-1/2/readings",
            "coffer/v1/01/2/readings",
            "coffer/v1/1/2/commands",
            "coffer/v1/1//readings",
            "coffer/v1/99999999999999999999/2/readings",
            "/coffer/v1/1/2/readings",
        ] {
            assert_eq!(parse_readings_topic(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_first_byte_tells_json_from_cbor() {
        let batch = Batch {
            batch_id: "batch-0001".into(),
            readings: vec![crate::data::Reading {
                at: 1,
                name: "t".into(),
                value: serde_json::json!(21.5),
            }],
        };
        let json = serde_json::to_vec(&batch).unwrap();
        let mut cbor = Vec::new();
        ciborium::ser::into_writer(&batch, &mut cbor).unwrap();
        assert!((0xA0..=0xBF).contains(&cbor[0]));
        let mut spaced = b" \n".to_vec();
        spaced.extend_from_slice(&json);
        for payload in [json.as_slice(), cbor.as_slice(), spaced.as_slice()] {
            assert_eq!(decode_batch(payload).unwrap(), batch);
        }
        assert!(decode_batch(b"").unwrap_err().is_malformed());
        assert!(decode_batch(&cbor[..cbor.len() - 1])
            .unwrap_err()
            .is_malformed());
    }
}
