//! Data delivery over MQTT (docs/server.md, "MQTT"), on a Mosquitto 2
//! broker that the control plane manages through its dynamic-security
//! plugin:
//!
//! - each device asks over HTTPS for its access ([`Mqtt::issue`]) and gets
//!   a broker client of its own, whose one role lets it publish to its own
//!   topic and nothing else (no subscription at all); the password is
//!   drawn anew each time, shown once, and kept by no one but the broker
//!   (as its salted hash);
//! - a revocation, a suspension or a wipe order disables or deletes that
//!   client at once, and the broker drops its connection; the
//!   [reconciler](Mqtt::reconcile) makes the broker follow the database
//!   whenever it was unreachable at the time;
//! - [`ingest`] subscribes (QoS 1, a persistent session of each
//!   `coffer serve` process) and stores each message as a data batch,
//!   exactly once by its batch id, with its accounting. Every process
//!   sees every message (the batch id keeps the second a duplicate): a
//!   shared subscription would spread them, but Mosquitto 2.0 does not
//!   keep shared subscriptions across its restarts (tried against 2.0.11
//!   by hand: a message published after the restart reached a plain
//!   persistent subscription and not a shared one), and what a device
//!   published meanwhile would be lost.

use std::sync::Arc;
use std::time::Duration;

use coffer_protocol::mqtt::{readings_topic, MqttAccess, READINGS_FILTER};
use coffer_protocol::WireSecret;
use rand_core::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};
use zeroize::Zeroizing;

use crate::store::{BrokerState, Store};

mod broker;
mod ingest;

use broker::{Acl, Admin, Command, Password, RoleRef};

/// Largest message the ingest takes: a batch's largest HTTP body.
pub const MAX_PAYLOAD: usize = coffer_protocol::MAX_REQUEST_BODY;

/// Largest packet the ingest's connection reads. Anything over
/// [`MAX_PAYLOAD`] and up to this is read, dropped and counted; the broker
/// should refuse larger ones itself (`max_packet_size` in mosquitto.conf,
/// docs/server.md), as a packet over this limit ends the connection.
pub const MAX_PACKET: usize = 16 * 1024 * 1024;

/// How often the reconciler looks for clients out of step even when
/// nothing told it to.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// Where a broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS (`mqtts://`) or plain (`mqtt://`, loopback only).
    pub tls: bool,
}

impl BrokerAddress {
    /// Parses `mqtts://HOST:PORT` or `mqtt://HOST:PORT`; plain MQTT only
    /// to a loopback address (127.0.0.1, ::1, localhost).
    pub fn parse(url: &str) -> Result<BrokerAddress, MqttError> {
        let refused =
            |why: &str| MqttError::Config(format!("the broker's URL {:?}: {why}", bounded(url)));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| refused("write it as mqtts://HOST:PORT"))?;
        let tls = match scheme {
            "mqtts" => true,
            "mqtt" => false,
            _ => return Err(refused("the scheme is mqtts:// (or mqtt:// to loopback)")),
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| refused("it needs a port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| refused("the port is not a number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return Err(refused("the host is not a host name or address"));
        }
        if !tls && !matches!(host, "127.0.0.1" | "::1" | "localhost") {
            return Err(refused(
                "plain MQTT would carry passwords in clear: only to a loopback address; use mqtts://",
            ));
        }
        Ok(BrokerAddress {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// How `coffer serve` uses a broker.
#[derive(Clone)]
pub struct MqttConfig {
    /// How the control plane reaches the broker.
    pub broker: BrokerAddress,
    /// How devices reach it (TLS): the host and port they are told.
    pub public_host: String,
    /// The devices' TLS port.
    pub public_port: u16,
    /// The broker's TLS certificate (PEM, leaf first): the control plane
    /// trusts it (or the CA in it), devices pin the leaf.
    pub certificate_pem: Vec<u8>,
    /// The dynamic-security admin's user name.
    pub admin_user: String,
    /// Its password.
    pub admin_password: Arc<SecretString>,
    /// This process's client id for its persistent ingest session: the
    /// same across restarts (the broker keeps what arrives meanwhile), a
    /// different one for each process sharing the broker.
    pub session_id: String,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("broker", &self.broker)
            .field("public_host", &self.public_host)
            .field("public_port", &self.public_port)
            .field("admin_user", &self.admin_user)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

/// What `coffer serve`'s flags say of the broker.
#[derive(Debug, Clone)]
pub struct MqttSettings<'a> {
    /// `--mqtt-broker`: `mqtts://HOST:PORT`, or `mqtt://` to loopback.
    pub broker_url: &'a str,
    /// `--mqtt-public HOST:PORT`: what devices are told [default: the
    /// broker's host and port].
    pub public: Option<&'a str>,
    /// `--mqtt-broker-cert FILE` [default: the server's own TLS
    /// certificate, which the broker may use too].
    pub certificate: Option<&'a std::path::Path>,
    /// `--mqtt-admin-user`.
    pub admin_user: &'a str,
    /// `--mqtt-admin-password-file` (mode 0600) [default: the
    /// `COFFER_MQTT_ADMIN_PASSWORD` variable].
    pub admin_password_file: Option<&'a std::path::Path>,
    /// `--mqtt-session-id` [default: `coffer-ingest-` and the host name].
    pub session_id: Option<&'a str>,
}

/// The variable that may hold the broker admin's password.
pub const ADMIN_PASSWORD_ENV: &str = "COFFER_MQTT_ADMIN_PASSWORD";

impl MqttConfig {
    /// The configuration the flags describe, for a server whose own TLS
    /// is `tls` (its certificate is the broker's by default).
    pub fn from_settings(
        settings: &MqttSettings<'_>,
        tls: &crate::tls::TlsSetting,
    ) -> Result<MqttConfig, MqttError> {
        let broker = BrokerAddress::parse(settings.broker_url)?;
        let (public_host, public_port) = match settings.public {
            Some(public) => {
                let parsed = BrokerAddress::parse(&format!("mqtts://{public}"))?;
                (parsed.host, parsed.port)
            }
            None if broker.tls => (broker.host.clone(), broker.port),
            None => {
                return Err(MqttError::Config(
                    "the broker is reached over plain MQTT: say where devices reach its TLS listener with --mqtt-public HOST:PORT".into(),
                ))
            }
        };
        let certificate_path = match (settings.certificate, tls) {
            (Some(path), _) => path.to_path_buf(),
            (None, crate::tls::TlsSetting::Files { cert, .. }) => cert.clone(),
            (None, crate::tls::TlsSetting::Dev { dir }) => dir.join(crate::tls::DEV_CERT),
            (None, crate::tls::TlsSetting::Off) => {
                return Err(MqttError::Config(
                    "name the broker's TLS certificate with --mqtt-broker-cert (the server has none of its own to share)".into(),
                ))
            }
        };
        let certificate_pem = std::fs::read(&certificate_path).map_err(|e| {
            MqttError::Config(format!(
                "cannot read the broker's certificate {}: {e}",
                certificate_path.display()
            ))
        })?;
        let admin_password = match settings.admin_password_file {
            Some(path) => read_private(path)?,
            None => std::env::var(ADMIN_PASSWORD_ENV).map_err(|_| {
                MqttError::Config(format!(
                    "give the broker admin's password in a file (--mqtt-admin-password-file, mode 0600) or in {ADMIN_PASSWORD_ENV}"
                ))
            })?,
        };
        if admin_password.is_empty() {
            return Err(MqttError::Config(
                "the broker admin's password is empty".into(),
            ));
        }
        let session_id = match settings.session_id {
            Some(id) => id.to_owned(),
            None => default_session_id(),
        };
        if session_id.is_empty()
            || session_id.len() > 64
            || !session_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(MqttError::Config(
                "--mqtt-session-id is 1 to 64 of A-Z a-z 0-9 - _ .".into(),
            ));
        }
        // It names a broker client that coffer makes and remakes: never
        // the admin, a device's, or another process's admin connection.
        if session_id == settings.admin_user
            || session_id.starts_with("coffer-device-")
            || session_id.ends_with("-admin")
        {
            return Err(MqttError::Config(
                "--mqtt-session-id must not be the admin user, start with coffer-device- or end with -admin: coffer makes a broker client of that name".into(),
            ));
        }
        Ok(MqttConfig {
            broker,
            public_host,
            public_port,
            certificate_pem,
            admin_user: settings.admin_user.to_owned(),
            admin_password: Arc::new(SecretString::from(admin_password)),
            session_id,
        })
    }
}

/// `coffer-ingest-` and this host's name (letters, digits, `-`, `.`).
fn default_session_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(40)
        .collect();
    if host.is_empty() {
        "coffer-ingest".into()
    } else {
        format!("coffer-ingest-{host}")
    }
}

/// A password file: private to its owner, one line.
fn read_private(path: &std::path::Path) -> Result<String, MqttError> {
    let refused = |why: String| {
        MqttError::Config(format!(
            "the broker admin's password file {}: {why}",
            path.display()
        ))
    };
    let text = crate::private_file::read(path, 4096, "a password (4 KiB)").map_err(refused)?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Why MQTT could not be set up or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The configuration is refused.
    #[error("MQTT: {0}")]
    Config(String),
    /// The broker did not answer in time.
    #[error("the MQTT broker did not answer")]
    Unavailable,
    /// The broker refused a command.
    #[error("the MQTT broker refused: {0}")]
    Broker(String),
    /// The device may no longer deliver (revoked, suspended or ordered
    /// wiped while its access was being made).
    #[error("the device may no longer deliver")]
    NotAllowed,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What an attacker's or a broker's string may put in a log line or an
/// error: at most 200 characters, no control characters.
pub(crate) fn bounded(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// TLS settings that trust exactly `certificate_pem` (the broker's
/// certificate or its CA), with the ring provider.
pub fn client_tls(certificate_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    broker::tls_config(certificate_pem)
}

/// The broker user (and client id) of a device.
pub fn device_username(org_id: i64, device_id: i64) -> String {
    format!("coffer-device-{org_id}-{device_id}")
}

fn device_role(org_id: i64, device_id: i64) -> String {
    format!("coffer-device-{org_id}-{device_id}")
}

const INGEST_ROLE: &str = "coffer-ingest";

/// A new random password: 32 bytes, hex.
fn new_password() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand_core::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(hex::encode(bytes.as_ref()))
}

/// The control plane's side of the broker: its admin connection, the
/// reconciler and the ingest.
pub struct Mqtt {
    config: MqttConfig,
    admin: Admin,
    tls: Option<Arc<rustls::ClientConfig>>,
    certificate_sha256: String,
    reconcile: Arc<Notify>,
    /// True once the ingest's subscription exists (this process's or, its
    /// session being persistent, from an earlier start): before, the
    /// broker would drop what a device publishes.
    ingest_ready: watch::Sender<bool>,
    /// Messages dropped, per device, for the audit trail's bounded record.
    pub(crate) drops: ingest::DropLog,
}

impl std::fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mqtt")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Mqtt {
    /// Connects to the broker (in the background) as its admin.
    pub fn start(config: MqttConfig, stop: watch::Receiver<bool>) -> Result<Arc<Mqtt>, MqttError> {
        use rustls::pki_types::pem::PemObject;
        let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(&config.certificate_pem)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| MqttError::Config("no certificate for the broker".into()))?;
        let certificate_sha256 = hex::encode(Sha256::digest(leaf.as_ref()));
        let tls = if config.broker.tls {
            Some(broker::tls_config(&config.certificate_pem)?)
        } else {
            None
        };
        let reconcile = Arc::new(Notify::new());
        let admin = Admin::start(
            broker::options(
                &format!("{}-admin", config.session_id),
                &config.broker,
                tls.as_ref(),
                &config.admin_user,
                config.admin_password.expose_secret(),
            ),
            Arc::clone(&reconcile),
            stop,
        );
        Ok(Arc::new(Mqtt {
            config,
            admin,
            tls,
            certificate_sha256,
            reconcile,
            ingest_ready: watch::channel(false).0,
            drops: ingest::DropLog::default(),
        }))
    }

    /// Gives device `device_id` of `org_id` a client on the broker with a
    /// new password (the previous one stops working), able to publish to
    /// its own topic only. The caller checked that the device may.
    pub async fn issue(
        &self,
        store: &Store,
        org_id: i64,
        device_id: i64,
    ) -> Result<MqttAccess, MqttError> {
        let username = device_username(org_id, device_id);
        let role = device_role(org_id, device_id);
        let topic = readings_topic(org_id, device_id);
        // What the device publishes is kept only once the ingest is
        // subscribed.
        let mut ready = self.ingest_ready.subscribe();
        tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
            .await
            .map_err(|_| MqttError::Unavailable)?
            .map_err(|_| MqttError::Unavailable)?;
        // Noted first: a revocation from now on reaches this client, even
        // if it races with its making.
        store
            .mqtt_note(org_id, device_id, BrokerState::Pending)
            .await?;
        let password = new_password();
        self.admin
            .ensure(&[Command::CreateRole {
                rolename: role.clone(),
                acls: vec![Acl {
                    acltype: "publishClientSend",
                    topic: topic.clone(),
                    allow: true,
                }],
            }])
            .await?;
        self.put_client(&username, &password, &role).await?;
        // What the broker holds now, whatever a reconciler (of any
        // process) did meanwhile: a revocation that raced with this issue
        // finds the client again and has its way.
        store
            .mqtt_note(org_id, device_id, BrokerState::Enabled)
            .await?;
        self.reconcile.notify_one();
        if store.mqtt_standing(org_id, device_id).await? != Some(BrokerState::Enabled) {
            return Err(MqttError::NotAllowed);
        }
        Ok(MqttAccess {
            host: self.config.public_host.clone(),
            port: self.config.public_port,
            certificate_sha256: self.certificate_sha256.clone(),
            username: username.clone(),
            password: WireSecret::new(password.to_string()),
            client_id: username,
            topic,
            max_payload: MAX_PAYLOAD,
        })
    }

    /// Makes (or remakes) broker client `username`, whose client id is
    /// the same, with `password` and the one role, enabled.
    async fn put_client(
        &self,
        username: &str,
        password: &Zeroizing<String>,
        role: &str,
    ) -> Result<(), MqttError> {
        let created = self
            .admin
            .run(&[Command::CreateClient {
                username: username.to_owned(),
                password: Password(password.clone()),
                clientid: username.to_owned(),
                roles: vec![RoleRef {
                    rolename: role.to_owned(),
                }],
            }])
            .await?;
        match created.first().and_then(|r| r.error.as_deref()) {
            None => Ok(()),
            Some(e) if e.contains("already exists") => {
                self.admin
                    .ensure(&[
                        Command::ModifyClient {
                            username: username.to_owned(),
                            password: Password(password.clone()),
                            clientid: username.to_owned(),
                            roles: vec![RoleRef {
                                rolename: role.to_owned(),
                            }],
                        },
                        Command::EnableClient {
                            username: username.to_owned(),
                        },
                    ])
                    .await
            }
            Some(e) => Err(MqttError::Broker(format!(
                "createClient refused: {}",
                bounded(e)
            ))),
        }
    }

    /// Asks the reconciler to look now (a device was revoked, an
    /// organization suspended, a wipe ordered or cancelled).
    pub fn changed(&self) {
        self.reconcile.notify_one();
    }

    /// Brings every device client whose broker state is not what the
    /// database says it should be into step, in pages. Returns how many
    /// were changed.
    pub async fn reconcile(&self, store: &Store) -> Result<usize, MqttError> {
        let mut done = 0;
        loop {
            let page = store.mqtt_out_of_step(100).await?;
            if page.is_empty() {
                return Ok(done);
            }
            let mut progressed = false;
            for step in &page {
                let username = device_username(step.org_id, step.device_id);
                let commands = match step.desired {
                    BrokerState::Deleted => vec![
                        Command::DeleteClient {
                            username: username.clone(),
                        },
                        Command::DeleteRole {
                            rolename: device_role(step.org_id, step.device_id),
                        },
                    ],
                    BrokerState::Disabled => vec![Command::DisableClient { username }],
                    BrokerState::Enabled | BrokerState::Pending => {
                        vec![Command::EnableClient { username }]
                    }
                };
                let responses = match self.admin.run(&commands).await {
                    Ok(responses) => responses,
                    // The broker away: the rest of the page would fail too.
                    Err(e) => return Err(e),
                };
                let refused = commands
                    .iter()
                    .zip(&responses)
                    .find(|(c, r)| !c.done_or_already(r));
                let now = match refused {
                    None => step.desired,
                    // A client to enable that the broker no longer has (its
                    // file was lost or edited): forgotten here; the device
                    // asks for a new access when the broker refuses it.
                    Some((Command::EnableClient { .. }, r))
                        if r.error.as_deref().is_some_and(|e| e.contains("not found")) =>
                    {
                        BrokerState::Deleted
                    }
                    Some((c, r)) => {
                        // One refused client must not hold up the others.
                        tracing::warn!(
                            org_id = step.org_id,
                            device_id = step.device_id,
                            command = c.name(),
                            error = %bounded(r.error.as_deref().unwrap_or_default()),
                            "MQTT: the broker refused to bring a client into step"
                        );
                        continue;
                    }
                };
                if store.mqtt_confirm(step.device_id, step.broker, now).await? {
                    progressed = true;
                    done += 1;
                    tracing::info!(
                        org_id = step.org_id,
                        device_id = step.device_id,
                        state = now.as_str(),
                        "MQTT client brought into step"
                    );
                }
            }
            if !progressed {
                // Rows changed under us (a new issue): the next pass sees them.
                return Ok(done);
            }
        }
    }

    /// The reconciler's loop: at start, when [`Mqtt::changed`] is called,
    /// each time the admin connection is back, and every 30 s.
    async fn reconcile_loop(self: Arc<Self>, store: Store, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.reconcile(&store).await {
                tracing::warn!(error = %e, "MQTT: clients not brought into step yet; retrying");
            }
            tokio::select! {
                () = self.reconcile.notified() => {}
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Starts the reconciler and the ingest on `store`; they end when
    /// `stop` turns true (the ingest leaves its session to the broker,
    /// which keeps what arrives until this session id comes back).
    pub fn run(
        self: &Arc<Self>,
        state: crate::api::AppState,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(Arc::clone(self).reconcile_loop(state.store.clone(), stop.clone())),
            tokio::spawn(ingest::run(Arc::clone(self), state, stop)),
        ]
    }

    /// The ingest's broker client: made (or its password drawn anew) at
    /// each start, with one role: subscribe to every device's readings,
    /// no more.
    async fn ingest_credentials(&self) -> Result<Zeroizing<String>, MqttError> {
        self.admin
            .ensure(&[Command::CreateRole {
                rolename: INGEST_ROLE.to_owned(),
                acls: vec![Acl {
                    acltype: "subscribePattern",
                    topic: READINGS_FILTER.to_owned(),
                    allow: true,
                }],
            }])
            .await?;
        let password = new_password();
        self.put_client(&self.config.session_id, &password, INGEST_ROLE)
            .await?;
        Ok(password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let a = BrokerAddress::parse("mqtts://broker.example:8883").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.tls),
            ("broker.example", 8883, true)
        );
        assert!(!BrokerAddress::parse("mqtt://127.0.0.1:1883").unwrap().tls);
        assert_eq!(
            BrokerAddress::parse("mqtts://[::1]:8883").unwrap().host,
            "::1"
        );
        for bad in [
            "broker:8883",
            "mqtt://broker.example:1883",
            "http://127.0.0.1:1883",
            "mqtts://broker.example",
            "mqtts://:8883",
            "mqtts://user@host:8883",
            "mqtts://host:99999",
        ] {
            assert!(
                matches!(BrokerAddress::parse(bad), Err(MqttError::Config(_))),
                "{bad}"
            );
        }
    }
}
