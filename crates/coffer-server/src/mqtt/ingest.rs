//! The ingest: one persistent MQTT session per `coffer serve` process
//! (its `--mqtt-session-id`), subscribed to `coffer/v1/+/+/readings`, QoS
//! 1 with manual acknowledgement. A message is acknowledged only once it is stored (or
//! dropped for good): when the database fails, the session is dropped
//! instead, and the broker sends the message again on the next connection;
//! the batch id makes that second delivery a duplicate, stored once.
//!
//! What is checked before anything is stored: the topic (one device's),
//! the size, that the device exists in the topic's organization and may
//! deliver (not revoked, suspended or ordered wiped), then the batch as
//! HTTP delivery checks it. A message that fails is dropped, counted in
//! `/metrics` by reason, accounted to its device when there is one, and
//! recorded in the audit trail at most once per device per minute.
//!
//! Every process sees every message; the one that stores a batch
//! accounts it, the others find it a duplicate and count it in their
//! metrics only (a device's own retry of a stored batch is not charged
//! twice either). A dropped message is accounted by each process that
//! drops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use coffer_protocol::mqtt::{decode_batch, parse_readings_topic, READINGS_FILTER};
use rumqttc::{AsyncClient, ConnectionError, Event, Packet, Publish, QoS, SubscribeReasonCode};
use serde_json::json;
use tokio::sync::watch;

use super::{broker, Mqtt, MAX_PACKET, MAX_PAYLOAD};
use crate::api::AppState;
use crate::store::{BatchStored, BrokerState, NewBatch, StoreError, UsageRecord};

/// How often one device's dropped messages may reach the audit trail.
const DROP_AUDIT_EVERY: Duration = Duration::from_secs(60);

/// How many acknowledgements may wait for the event loop: more than the
/// broker queues for a session (`max_queued_messages`, 1000 by default)
/// plus its messages in flight.
const ACK_BACKLOG: usize = 8192;

/// The route under which a message is accounted.
const ROUTE: &str = "mqtt:coffer/v1/{org}/{device}/readings";

/// Why a message was dropped: a fixed set (metric labels, audit values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// Not a device's readings topic.
    Topic,
    /// Over [`MAX_PAYLOAD`].
    Oversized,
    /// No such device in that organization.
    UnknownDevice,
    /// Revoked, suspended, or ordered wiped.
    NotAllowed,
    /// Not a batch in JSON or CBOR.
    Malformed,
    /// A batch that breaks a rule.
    Invalid,
    /// Another batch was stored under this batch id.
    Conflict,
    /// A retained message, sent again because the ingest subscribed
    /// again (its first delivery, live, had the flag cleared and was
    /// taken then).
    Retained,
}

impl Dropped {
    fn as_str(self) -> &'static str {
        match self {
            Dropped::Topic => "topic",
            Dropped::Oversized => "oversized",
            Dropped::UnknownDevice => "unknown_device",
            Dropped::NotAllowed => "not_allowed",
            Dropped::Malformed => "malformed",
            Dropped::Invalid => "invalid",
            Dropped::Conflict => "conflict",
            Dropped::Retained => "retained",
        }
    }

    /// The HTTP status its twin over HTTP would have had (accounting).
    fn status(self) -> i32 {
        match self {
            Dropped::Oversized => 413,
            Dropped::Malformed => 400,
            Dropped::Invalid => 422,
            Dropped::Conflict => 409,
            Dropped::NotAllowed => 403,
            Dropped::Topic | Dropped::UnknownDevice | Dropped::Retained => 404,
        }
    }
}

/// Per device: when its drops were last audited, and how many were not
/// since.
#[derive(Debug, Default)]
pub(crate) struct DropLog(Mutex<HashMap<i64, (Instant, u64)>>);

impl DropLog {
    /// Whether this drop of `device_id` is to be audited, and how many
    /// went unaudited before it.
    fn note(&self, device_id: i64) -> Option<u64> {
        let mut log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if log.len() > 100_000 {
            // Bounded whatever the number of devices dropping.
            log.retain(|_, (at, _)| now.duration_since(*at) < DROP_AUDIT_EVERY);
        }
        match log.get_mut(&device_id) {
            Some((at, unaudited)) if now.duration_since(*at) < DROP_AUDIT_EVERY => {
                *unaudited += 1;
                None
            }
            Some(entry) => {
                let before = entry.1;
                *entry = (now, 0);
                Some(before)
            }
            None => {
                log.insert(device_id, (now, 0));
                Some(0)
            }
        }
    }
}

/// Runs the ingest until `stop`.
pub(super) async fn run(mqtt: Arc<Mqtt>, state: AppState, mut stop: watch::Receiver<bool>) {
    let filter = READINGS_FILTER;
    let mut backoff = Duration::from_millis(200);
    loop {
        let stopped = *stop.borrow();
        if stopped {
            return;
        }
        let password = match mqtt.ingest_credentials().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "MQTT ingest: cannot set up its broker client yet; retrying");
                if pause(&mut stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        let id = &mqtt.config.session_id;
        let mut options =
            broker::options(id, &mqtt.config.broker, mqtt.tls.as_ref(), id, &password);
        options.set_clean_session(false);
        options.set_manual_acks(true);
        options.set_max_packet_size(MAX_PACKET, 64 * 1024);
        let (client, mut events) = AsyncClient::new(options, ACK_BACKLOG);
        loop {
            let event = tokio::select! {
                event = events.poll() => Some(event),
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(event) = event else {
                let _ = client.try_disconnect();
                // Let the DISCONNECT go out; unacknowledged messages stay
                // with the broker for the next start.
                let _ = tokio::time::timeout(Duration::from_millis(500), events.poll()).await;
                return;
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = Duration::from_millis(200);
                    tracing::info!(
                        session_present = ack.session_present,
                        "MQTT ingest connected"
                    );
                    // Again even in a session the broker kept: subscribing
                    // twice is harmless, a subscription lost is not.
                    if client.subscribe(filter, QoS::AtLeastOnce).await.is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        tracing::error!(
                            "MQTT ingest: the broker refused the subscription to the readings"
                        );
                    } else {
                        mqtt.ingest_ready.send_replace(true);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    match take(&mqtt, &state, &publish).await {
                        Ok(()) => {
                            // Never awaited: the acknowledgements wait in the
                            // client's channel until this task polls the
                            // event loop again, which takes one of them per
                            // turn while a network read may bring several
                            // messages. Full (it holds more than the
                            // broker's queue), the session starts again and
                            // the broker sends what was not acknowledged.
                            if client.try_ack(&publish).is_err() {
                                tracing::warn!(
                                    "MQTT ingest: acknowledgements backed up; reconnecting"
                                );
                                break;
                            }
                        }
                        Err(e) => {
                            // Not acknowledged: a new session gets it again.
                            tracing::warn!(error = %e, "MQTT ingest: cannot store a message now; reconnecting to have it again");
                            if pause(&mut stop, &mut backoff).await {
                                return;
                            }
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => {
                    tracing::warn!(
                        ?code,
                        "MQTT ingest: the broker refused the connection; setting up again"
                    );
                    if pause(&mut stop, &mut backoff).await {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    if format!("{e:?}").contains("PayloadSizeLimitExceeded") {
                        // The broker will send it again at each connection.
                        tracing::error!(
                            limit = MAX_PACKET,
                            "MQTT ingest: the broker sent a message larger than the ingest reads; \
                             set the broker's max_packet_size to at most this (docs/server.md, \"MQTT\")"
                        );
                    }
                    tracing::warn!(error = %super::bounded(&e.to_string()), "MQTT ingest: connection lost; reconnecting");
                    if pause(&mut stop, &mut backoff).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Waits `backoff` (then doubles it, up to 10 s); true if stopped meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(10));
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Stores one message, or drops it for good; an error only when the
/// database failed (the message is then to be had again).
async fn take(mqtt: &Mqtt, state: &AppState, publish: &Publish) -> Result<(), StoreError> {
    let started = Instant::now();
    let bytes = publish.payload.len();
    if publish.retain {
        // Not a new message: counted only, charged to no one.
        return drop_message(mqtt, state, None, Dropped::Retained, bytes, started).await;
    }
    let Some((org_id, device_id)) = parse_readings_topic(&publish.topic) else {
        return drop_message(mqtt, state, None, Dropped::Topic, bytes, started).await;
    };
    let device = Some((org_id, device_id));
    match state.store.mqtt_standing(org_id, device_id).await? {
        None => {
            return drop_message(mqtt, state, None, Dropped::UnknownDevice, bytes, started).await
        }
        Some(BrokerState::Enabled) => {}
        Some(_) => {
            return drop_message(mqtt, state, device, Dropped::NotAllowed, bytes, started).await
        }
    }
    if bytes > MAX_PAYLOAD {
        return drop_message(mqtt, state, device, Dropped::Oversized, bytes, started).await;
    }
    let batch = match decode_batch(&publish.payload).and_then(|b| b.check().map(|()| b)) {
        Ok(batch) => batch,
        Err(e) => {
            let why = if e.is_malformed() {
                Dropped::Malformed
            } else {
                Dropped::Invalid
            };
            return drop_message(mqtt, state, device, why, bytes, started).await;
        }
    };
    let outcome = state
        .store
        .store_batch(NewBatch {
            org_id,
            device_id,
            batch_id: batch.batch_id.clone(),
            digest: batch.digest(),
            bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            readings: batch
                .readings
                .iter()
                .map(|r| (r.at, r.name.clone(), r.value.to_string()))
                .collect(),
        })
        .await?;
    match outcome {
        BatchStored::Stored(_) => state.metrics.mqtt_stored(),
        BatchStored::Duplicate => {
            // Stored and accounted already (by this process or another).
            state.metrics.mqtt_duplicate();
            return Ok(());
        }
        BatchStored::Conflict => {
            return drop_message(mqtt, state, device, Dropped::Conflict, bytes, started).await
        }
    }
    account(state, org_id, device_id, 201, bytes, started).await;
    Ok(())
}

/// Counts a dropped message, accounts it to its device (when it names
/// one that exists), and audits it (at most once a minute per device,
/// with the number of drops not audited before it). Nothing of the
/// payload or the topic is recorded.
async fn drop_message(
    mqtt: &Mqtt,
    state: &AppState,
    device: Option<(i64, i64)>,
    why: Dropped,
    bytes: usize,
    started: Instant,
) -> Result<(), StoreError> {
    state.metrics.mqtt_dropped(why.as_str());
    let Some((org_id, device_id)) = device else {
        // No device to charge: the metric is the record (a flood of such
        // messages must not grow the database).
        return Ok(());
    };
    account(state, org_id, device_id, why.status(), bytes, started).await;
    if let Some(unaudited) = mqtt.drops.note(device_id) {
        state
            .store
            .append_audit(
                crate::audit::AuditEvent {
                    org_id: Some(org_id),
                    actor: format!("device:{device_id}"),
                    action: "mqtt_message_dropped".into(),
                    details: json!({
                        "device_id": device_id,
                        "reason": why.as_str(),
                        "bytes": bytes,
                        "dropped_since_last_record": unaudited,
                    })
                    .to_string(),
                },
                Arc::clone(&state.keys),
            )
            .await?;
    }
    Ok(())
}

/// Records the message in the accounting, as its HTTP twin would be.
async fn account(
    state: &AppState,
    org_id: i64,
    device_id: i64,
    status: i32,
    bytes: usize,
    started: Instant,
) {
    let record = UsageRecord {
        at: crate::store::now_unix(),
        org_id: Some(org_id),
        user_id: None,
        device_id: Some(device_id),
        method: "PUBLISH".into(),
        route: ROUTE.into(),
        status,
        bytes_in: i64::try_from(bytes).unwrap_or(i64::MAX),
        bytes_out: 0,
        micros: i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX),
    };
    if let Err(e) = state.store.record_usage(record).await {
        tracing::warn!(error = %e, "could not record usage");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_audited_once_a_minute_per_device() {
        let log = DropLog::default();
        assert_eq!(log.note(1), Some(0));
        assert_eq!(log.note(1), None);
        assert_eq!(log.note(1), None);
        assert_eq!(log.note(2), Some(0));
        // A minute later the next drop is audited with the two before it.
        log.0.lock().unwrap().get_mut(&1).unwrap().0 -= DROP_AUDIT_EVERY;
        assert_eq!(log.note(1), Some(2));
        assert_eq!(log.note(1), None);
    }
}
