//! The broker as `coffer serve` reaches it: connection options (TLS that
//! trusts exactly the broker's certificate), and the dynamic-security
//! plugin's control API (`$CONTROL/dynamic-security/v1`), through which
//! the control plane makes, changes and removes the broker's clients.
//!
//! The command and response types are the plugin's JSON, defined here
//! once. A password travels only in a command's payload, over the TLS (or
//! loopback) connection to the broker, which keeps only its salted hash.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Mutex};
use zeroize::Zeroizing;

use super::{BrokerAddress, MqttError};

/// The plugin's command topic.
const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Where the plugin answers.
const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// How long one command may wait for the plugin's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings that trust exactly `certificate_pem` (the broker's
/// certificate or its CA), with the ring provider.
pub(super) fn tls_config(certificate_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(certificate_pem) {
        let cert =
            cert.map_err(|_| MqttError::Config("the broker's certificate is not PEM".into()))?;
        roots
            .add(cert)
            .map_err(|e| MqttError::Config(format!("the broker's certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(MqttError::Config(
            "no certificate in the broker's certificate file".into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| MqttError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Options for one connection of the control plane to the broker.
pub(super) fn options(
    client_id: &str,
    address: &BrokerAddress,
    tls: Option<&Arc<rustls::ClientConfig>>,
    username: &str,
    password: &str,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, address.host.clone(), address.port);
    options.set_credentials(username, password);
    options.set_keep_alive(Duration::from_secs(30));
    if let Some(tls) = tls {
        options.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::clone(tls)),
        ));
    }
    options
}

/// A secret in a command: serialized as its text, never shown by `Debug`.
pub(super) struct Password(pub(super) Zeroizing<String>);

impl Serialize for Password {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A role's access rule.
#[derive(Debug, Serialize)]
pub(super) struct Acl {
    pub(super) acltype: &'static str,
    pub(super) topic: String,
    pub(super) allow: bool,
}

/// A role given to a client.
#[derive(Debug, Serialize)]
pub(super) struct RoleRef {
    pub(super) rolename: String,
}

/// One command of the dynamic-security plugin.
#[derive(Serialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub(super) enum Command {
    CreateRole {
        rolename: String,
        acls: Vec<Acl>,
    },
    CreateClient {
        username: String,
        password: Password,
        clientid: String,
        roles: Vec<RoleRef>,
    },
    ModifyClient {
        username: String,
        password: Password,
        clientid: String,
        roles: Vec<RoleRef>,
    },
    EnableClient {
        username: String,
    },
    DisableClient {
        username: String,
    },
    DeleteClient {
        username: String,
    },
    DeleteRole {
        rolename: String,
    },
}

impl Command {
    /// The command's name, for logs (never its fields: one is a password).
    pub(super) fn name(&self) -> &'static str {
        match self {
            Command::CreateRole { .. } => "createRole",
            Command::CreateClient { .. } => "createClient",
            Command::ModifyClient { .. } => "modifyClient",
            Command::EnableClient { .. } => "enableClient",
            Command::DisableClient { .. } => "disableClient",
            Command::DeleteClient { .. } => "deleteClient",
            Command::DeleteRole { .. } => "deleteRole",
        }
    }
}

#[derive(Serialize)]
struct Commands<'a> {
    commands: Vec<Tagged<'a>>,
}

#[derive(Serialize)]
struct Tagged<'a> {
    #[serde(flatten)]
    command: &'a Command,
    #[serde(rename = "correlationData")]
    correlation: String,
}

#[derive(Deserialize)]
struct Responses {
    responses: Vec<Response>,
}

/// The plugin's answer to one command.
#[derive(Debug, Deserialize)]
pub(super) struct Response {
    /// Its refusal, in the plugin's words (absent on success).
    #[serde(default)]
    pub(super) error: Option<String>,
    #[serde(rename = "correlationData", default)]
    correlation: Option<String>,
}

impl Command {
    /// Whether `response` says this command did what was asked, or found
    /// it already done: a role or client to create that exists, one to
    /// delete or disable that is gone. A client to modify or enable that
    /// is not there is a failure.
    pub(super) fn done_or_already(&self, response: &Response) -> bool {
        let Some(error) = &response.error else {
            return true;
        };
        match self {
            Command::CreateRole { .. } | Command::CreateClient { .. } => {
                error.contains("already exists")
            }
            Command::DeleteClient { .. }
            | Command::DeleteRole { .. }
            | Command::DisableClient { .. } => error.contains("not found"),
            Command::ModifyClient { .. } | Command::EnableClient { .. } => false,
        }
    }
}

/// The control plane's administrative connection to the broker: one
/// command batch at a time, each matched to its answer.
pub(super) struct Admin {
    client: AsyncClient,
    /// Random per process: the plugin answers every subscriber of its
    /// response topic, so several `coffer serve` processes see each
    /// other's answers, and an id must be this process's own.
    prefix: String,
    /// True while subscribed to the answers: a command sent before would
    /// have its answer lost.
    ready: watch::Receiver<bool>,
    answers: Mutex<mpsc::Receiver<Vec<u8>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Admin {
    /// Connects (in the background: the event loop reconnects by itself
    /// until `stop` turns true); `connected` is told each time the
    /// connection is ready again (the reconciler catches up then).
    pub(super) fn start(
        options: MqttOptions,
        connected: Arc<tokio::sync::Notify>,
        mut stop: watch::Receiver<bool>,
    ) -> Admin {
        let (client, mut events) = AsyncClient::new(options, 16);
        let (answered, answers) = mpsc::channel(16);
        let (subscribed, ready) = watch::channel(false);
        let subscriber = client.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let event = tokio::select! {
                    event = events.poll() => Some(event),
                    _ = stop.wait_for(|s| *s) => None,
                };
                let Some(event) = event else { break };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(100);
                        // A clean session each time: subscribe again.
                        if subscriber
                            .try_subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce)
                            .is_err()
                        {
                            tracing::warn!("could not subscribe to the broker's control answers");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed.send(true);
                        connected.notify_one();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == RESPONSE_TOPIC => {
                        // A late answer to a command that timed out is
                        // dropped when the channel is full.
                        let _ = answered.try_send(p.payload.to_vec());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = subscribed.send(false);
                        tracing::warn!(error = %super::bounded(&e.to_string()), "MQTT broker (admin): connection failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            let _ = subscriber.try_disconnect();
        });
        Admin {
            client,
            ready,
            answers: Mutex::new(answers),
            next: std::sync::atomic::AtomicU64::new(1),
            prefix: {
                let mut bytes = [0u8; 8];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
                hex::encode(bytes)
            },
        }
    }

    /// Runs `commands` in order (the plugin runs them in order too) and
    /// returns the plugin's answer to each.
    pub(super) async fn run(&self, commands: &[Command]) -> Result<Vec<Response>, MqttError> {
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        let mut ready = self.ready.clone();
        tokio::time::timeout_at(deadline, ready.wait_for(|r| *r))
            .await
            .map_err(|_| MqttError::Unavailable)?
            .map_err(|_| MqttError::Unavailable)?;
        let mut answers = self.answers.lock().await;
        // Answers to an earlier batch that timed out are stale now.
        while answers.try_recv().is_ok() {}
        let batch = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let payload = Zeroizing::new(
            serde_json::to_vec(&Commands {
                commands: commands
                    .iter()
                    .enumerate()
                    .map(|(i, command)| Tagged {
                        command,
                        correlation: format!("{}.{batch}.{i}", self.prefix),
                    })
                    .collect(),
            })
            .map_err(|e| MqttError::Broker(e.to_string()))?,
        );
        self.client
            .publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .map_err(|_| MqttError::Unavailable)?;
        loop {
            let answer = tokio::time::timeout_at(deadline, answers.recv())
                .await
                .map_err(|_| MqttError::Unavailable)?
                .ok_or(MqttError::Unavailable)?;
            let Ok(Responses { responses }) = serde_json::from_slice::<Responses>(&answer) else {
                continue;
            };
            let ours = responses.first().and_then(|r| r.correlation.as_deref())
                == Some(&format!("{}.{batch}.0", self.prefix));
            if !ours {
                continue;
            }
            let each_ours = responses.len() == commands.len()
                && responses.iter().enumerate().all(|(i, r)| {
                    r.correlation.as_deref() == Some(&format!("{}.{batch}.{i}", self.prefix))
                });
            if !each_ours {
                return Err(MqttError::Broker(format!(
                    "the broker's answer does not match the {} commands sent",
                    commands.len()
                )));
            }
            return Ok(responses);
        }
    }

    /// Runs `commands`, each of which must succeed or find its work done.
    pub(super) async fn ensure(&self, commands: &[Command]) -> Result<(), MqttError> {
        for (command, response) in commands.iter().zip(self.run(commands).await?) {
            if !command.done_or_already(&response) {
                return Err(MqttError::Broker(format!(
                    "{} refused: {}",
                    command.name(),
                    super::bounded(response.error.as_deref().unwrap_or_default())
                )));
            }
        }
        Ok(())
    }
}
