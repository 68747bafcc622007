//! Data delivery over MQTT (docs/protocol.md, section 10): the queued
//! batches published QoS 1 to the device's own topic on the
//! organization's broker, each removed from the queue when the broker
//! acknowledges it (PUBACK). The access (broker, certificate pin, user,
//! password, topic) is asked for over HTTPS once and kept in the vault's
//! encrypted settings; a broker that refuses it gets a new one asked for,
//! once. When the broker cannot be reached, or the server has none, the
//! batches go over HTTP instead ([`Agent::deliver`]).
//!
//! rumqttc's blocking client runs its event loop on the calling thread:
//! no thread or runtime stays behind.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use coffer_device::UnlockedVault;
use coffer_protocol::mqtt::{MqttAccess, RequestMqttAccess};
use coffer_protocol::{Endpoint, ErrorCode};
use rumqttc::{
    Client, ConnectReturnCode, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::enrollment::{key, Enrollment};
use crate::error::{Error, Result};
use crate::{Agent, Credentials, DeliveryReport};

/// The vault setting that keeps the broker access (encrypted at rest).
const ACCESS: &str = "control.mqtt_access";

/// At most this many batches published and not yet acknowledged.
const WINDOW: usize = 16;

/// How long the broker may take to answer anything.
const BROKER_TIMEOUT: Duration = Duration::from_secs(15);

/// The access as the vault keeps it.
#[derive(Serialize, Deserialize)]
struct KeptAccess {
    host: String,
    port: u16,
    certificate_sha256: String,
    username: String,
    password: String,
    client_id: String,
    topic: String,
    /// The largest payload the broker and the ingest take.
    max_payload: usize,
}

impl Drop for KeptAccess {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

impl From<MqttAccess> for KeptAccess {
    fn from(a: MqttAccess) -> Self {
        KeptAccess {
            password: a.password.expose_secret().to_owned(),
            host: a.host,
            port: a.port,
            certificate_sha256: a.certificate_sha256,
            username: a.username,
            client_id: a.client_id,
            topic: a.topic,
            max_payload: a.max_payload,
        }
    }
}

/// Room for an MQTT PUBLISH's fixed header, topic and packet id beside
/// its payload.
const PACKET_OVERHEAD: usize = 1024;

/// Why publishing stopped.
enum Stopped {
    /// The broker refused the credential.
    Refused,
    /// The broker could not be reached, or went away.
    Unreachable(String),
    /// Everything else went, but these batches are larger than the broker
    /// takes: they go over HTTP.
    TooLarge(usize),
}

impl Agent {
    /// Like [`Agent::deliver`], over MQTT: checks in over HTTPS first (a
    /// wipe order is carried out before anything is sent; with the
    /// control plane unreachable the batches stay queued, as over HTTP),
    /// then publishes every queued batch, oldest first. What the broker
    /// could not take goes over HTTP, and [`DeliveryReport::fell_back`]
    /// says why.
    pub fn deliver_mqtt(&self, vault: UnlockedVault, retries: u32) -> Result<DeliveryReport> {
        let queued = self.queued(&vault)?;
        let (check_in, vault) = match self.check_in(vault) {
            Ok(done) => done,
            Err(e) if e.is_unreachable() => {
                return Ok(DeliveryReport {
                    delivered: 0,
                    over_mqtt: 0,
                    queued,
                    rejected: Vec::new(),
                    check_in: None,
                    fell_back: None,
                })
            }
            Err(e) => return Err(e),
        };
        self.publish_then_fall_back(vault, Some(check_in), retries)
    }

    fn publish_then_fall_back(
        &self,
        vault: UnlockedVault,
        check_in: Option<crate::CheckInReport>,
        retries: u32,
    ) -> Result<DeliveryReport> {
        let mut asked = false;
        let mut published = 0;
        let why = loop {
            let access = match self.kept_access(&vault)? {
                Some(access) => access,
                None if asked => break "the server's new access was refused too".to_owned(),
                None => {
                    asked = true;
                    match self.ask_access(&vault) {
                        Ok(access) => access,
                        Err(Error::Refused {
                            code: ErrorCode::MqttNotConfigured,
                            ..
                        }) => break "the server has no MQTT broker".to_owned(),
                        Err(e) if e.is_unreachable() => {
                            break "no broker access kept, and the server cannot be reached"
                                .to_owned()
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            match publish(&vault, &access, &mut published)? {
                None => {
                    return Ok(DeliveryReport {
                        delivered: published,
                        over_mqtt: published,
                        queued: self.queued(&vault)?,
                        rejected: Vec::new(),
                        check_in,
                        fell_back: None,
                    })
                }
                Some(Stopped::Refused) => {
                    // A new password was drawn elsewhere, the client was
                    // disabled, or the broker's certificate changed: ask
                    // again (once).
                    vault.set_setting(ACCESS, None)?;
                    if asked {
                        break "the broker refused the device's access".to_owned();
                    }
                }
                Some(Stopped::Unreachable(why)) => break why,
                Some(Stopped::TooLarge(n)) => {
                    break format!(
                        "{n} batch(es) larger than the broker's {} bytes",
                        access.max_payload
                    )
                }
            }
        };
        let mut report = self.deliver(vault, retries)?;
        report.delivered += published;
        report.over_mqtt = published;
        report.fell_back = Some(why);
        Ok(report)
    }

    fn kept_access(&self, vault: &UnlockedVault) -> Result<Option<KeptAccess>> {
        let Some(bytes) = vault.setting(ACCESS)?.map(Zeroizing::new) else {
            return Ok(None);
        };
        // A damaged setting is asked for again rather than trusted.
        Ok(serde_json::from_slice(&bytes).ok())
    }

    fn ask_access(&self, vault: &UnlockedVault) -> Result<KeptAccess> {
        let enrollment = Enrollment::read(vault)?;
        let client = self.client(&enrollment.server)?;
        let access: KeptAccess = client
            .send(
                &RequestMqttAccess,
                Credentials {
                    token: Some(&enrollment.token),
                    user: None,
                },
            )?
            .into();
        let valid_pin = access.certificate_sha256.len() == 64
            && access
                .certificate_sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit());
        let valid_limit = (1..=16 * 1024 * 1024).contains(&access.max_payload);
        if !valid_pin || !valid_limit || access.host.is_empty() || access.port == 0 {
            return Err(Error::BadAnswer {
                endpoint: RequestMqttAccess::PATH,
                problem: "no usable broker address, certificate pin or payload limit".into(),
            });
        }
        let bytes = Zeroizing::new(serde_json::to_vec(&access).map_err(|_| Error::BadAnswer {
            endpoint: RequestMqttAccess::PATH,
            problem: "cannot keep the access".into(),
        })?);
        vault.set_setting(ACCESS, Some(&bytes))?;
        Ok(access)
    }
}

/// Publishes the queue over one connection; `None` when all of it was
/// acknowledged, else why it stopped (what was acknowledged is out of the
/// queue, and counted in `published`).
fn publish(
    vault: &UnlockedVault,
    access: &KeptAccess,
    published: &mut usize,
) -> Result<Option<Stopped>> {
    let mut pin = [0u8; 32];
    if hex::decode_to_slice(&access.certificate_sha256, &mut pin).is_err() {
        return Ok(Some(Stopped::Refused));
    }
    let tls = crate::http::pinned_config(pin)?;
    let mut options = MqttOptions::new(access.client_id.clone(), access.host.clone(), access.port);
    options.set_credentials(access.username.clone(), access.password.clone());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    // rumqttc's own limit is 10 KiB each way; a queued batch is up to the
    // server's 64 KiB. What comes back is small (acknowledgements).
    let max_packet = access.max_payload.saturating_add(PACKET_OVERHEAD);
    options.set_max_packet_size(max_packet.max(16 * 1024), max_packet);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
    ));
    let (client, mut connection) = Client::new(options, WINDOW * 2);
    let next = |connection: &mut rumqttc::Connection| -> std::result::Result<Event, Stopped> {
        match connection.recv_timeout(BROKER_TIMEOUT) {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
            ))) => Err(Stopped::Refused),
            // A certificate that is not the pinned one: the broker's may
            // have been renewed, and a new access carries its new pin.
            Ok(Err(ConnectionError::Tls(_))) => Err(Stopped::Refused),
            Ok(Err(e)) => Err(Stopped::Unreachable(format!(
                "the broker cannot be reached: {}",
                crate::transport::bounded(&e.to_string(), 200)
            ))),
            Err(_) => Err(Stopped::Unreachable(
                "the broker did not answer in time".into(),
            )),
        }
    };
    let stopped = loop {
        match next(&mut connection) {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break None,
            Ok(_) => continue,
            Err(why) => break Some(why),
        }
    };
    if let Some(why) = stopped {
        return Ok(Some(why));
    }
    let queue = vault.setting_keys(key::QUEUE)?;
    let mut to_send = queue.into_iter();
    let mut unnumbered: VecDeque<String> = VecDeque::new();
    let mut in_flight: HashMap<u16, String> = HashMap::new();
    let mut exhausted = false;
    let mut too_large = 0;
    let outcome = loop {
        while !exhausted && unnumbered.len() + in_flight.len() < WINDOW {
            let Some(setting) = to_send.next() else {
                exhausted = true;
                break;
            };
            let Some(body) = vault.setting(&setting)? else {
                continue;
            };
            if body.len() > access.max_payload {
                // Left in the queue for HTTP, which takes it.
                too_large += 1;
                continue;
            }
            if client
                .publish(access.topic.clone(), QoS::AtLeastOnce, false, body)
                .is_err()
            {
                break;
            }
            unnumbered.push_back(setting);
        }
        if exhausted && unnumbered.is_empty() && in_flight.is_empty() {
            break (too_large > 0).then_some(Stopped::TooLarge(too_large));
        }
        match next(&mut connection) {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(setting) = unnumbered.pop_front() {
                    in_flight.insert(pkid, setting);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(setting) = in_flight.remove(&ack.pkid) {
                    vault.set_setting(&setting, None)?;
                    *published += 1;
                }
            }
            Ok(_) => {}
            Err(why) => break Some(why),
        }
    };
    let _ = client.disconnect();
    // Let the DISCONNECT out, briefly.
    let _ = connection.recv_timeout(Duration::from_millis(200));
    Ok(outcome)
}
