//! `Agent::deliver_mqtt` against a real `coffer serve` in this process
//! (SQLite, plain HTTP on loopback) and a real Mosquitto 2 broker it
//! manages (TLS on loopback; the device pins the certificate's SHA-256
//! from its access):
//!
//! - the queue goes over MQTT, once, and the access asked for once is
//!   kept for the next delivery;
//! - a password drawn anew elsewhere, or a pin that no longer matches the
//!   broker's certificate, is asked for again, once, and delivery goes on
//!   over MQTT;
//! - with the broker down, the batches go over HTTP and the report says
//!   why; a server without a broker is the same;
//! - a pin of another certificate never reaches the broker's password
//!   check: the TLS handshake fails first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use coffer_agent::{Agent, Server as ControlPlane, Trust, UnlockSecret};
use coffer_device::{Capabilities, KdfParams, Passphrase, Space, UnlockedVault};
use coffer_protocol::data::Reading;
use coffer_server::testing::Mosquitto;
use coffer_server::{LoginLimits, ServeConfig, Server, TlsSetting, DEFAULT_SESSION_TTL};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";
const ACCESS: &str = "control.mqtt_access";

fn kdf() -> KdfParams {
    KdfParams::Argon2id {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    }
}

struct World {
    dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
    base: String,
    http: reqwest::blocking::Client,
    org: i64,
    session: String,
    db: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl World {
    /// A server managing `broker` (or none).
    fn new(broker: Option<&Mosquitto>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let db = format!("sqlite://{}", dir.path().join("server.db").display());
        let mut server = runtime
            .block_on(Server::bind(&ServeConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                database_url: db.clone(),
                force_plain: false,
                session_ttl: DEFAULT_SESSION_TTL,
                login_limits: LoginLimits::default(),
                tls: TlsSetting::Off,
                keys: coffer_server::testing::keyring(),
                adopt_unkeyed_audit: false,
                trusted_proxies: Default::default(),
                shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
            }))
            .unwrap();
        if let Some(broker) = broker {
            server = server.with_mqtt(broker.config("coffer-agent-test"));
        }
        let base = format!("http://{}", server.local_addr().unwrap());
        let setup_token = server.setup_token().unwrap().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(server.run(async {
            let _ = stopped.await;
        }));
        let mut world = World {
            dir,
            _runtime: runtime,
            base,
            http: reqwest::blocking::Client::new(),
            org: 0,
            session: String::new(),
            db,
            stop: Some(stop),
        };
        let setup = world.post(
            "/v1/setup",
            json!({"setup_token": setup_token, "organization": "Acme", "owner": "alice", "password": PASSWORD}),
        );
        world.org = setup["organization_id"].as_i64().unwrap();
        world.session = world.post("/v1/login", json!({"user": "alice", "password": PASSWORD}))
            ["token"]
            .as_str()
            .unwrap()
            .to_owned();
        world
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if !self.session.is_empty() {
            request = request.header("X-Auth-Token", &self.session);
        }
        let response = request.send().unwrap();
        let status = response.status();
        let text = response.text().unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn readings(&self) -> usize {
        let response = self
            .http
            .get(format!(
                "{}/v1/orgs/{}/data?limit=10000",
                self.base, self.org
            ))
            .header("X-Auth-Token", &self.session)
            .send()
            .unwrap();
        response.json::<Value>().unwrap()["readings"]
            .as_array()
            .unwrap()
            .len()
    }

    /// Waits until the server holds `n` readings (the ingest stores what
    /// the broker acknowledged a moment later).
    fn wait_for_readings(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.readings() != n {
            assert!(
                Instant::now() < deadline,
                "{} readings, not {n}",
                self.readings()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rows of the server's audit trail with `action`.
    fn audited(&self, action: &str) -> i64 {
        let db = self.db.clone();
        let action = action.to_owned();
        self._runtime.block_on(async move {
            let store = coffer_server::Store::open(&db).await.unwrap();
            store
                .number_for_tests(&format!(
                    "SELECT count(*) FROM audit_events WHERE action = '{action}'"
                ))
                .await
                .unwrap()
        })
    }

    /// A vault enrolled as a device; its path.
    fn device(&self, agent: &Agent) -> std::path::PathBuf {
        let space = Space::new(self.dir.path().join("device"));
        let vault = space
            .create_vault("acme", "alice", &passphrase(), &kdf())
            .unwrap();
        vault.add_app("sensors", Capabilities::all()).unwrap();
        let code = self.post(
            &format!("/v1/orgs/{}/enrollment-codes", self.org),
            json!({}),
        )["code"]
            .as_str()
            .unwrap()
            .to_owned();
        let control = ControlPlane::new(&self.base, Trust::System).unwrap();
        agent
            .enroll(vault, &control, code.as_str().into(), "sensor")
            .unwrap();
        space.vault("acme").unwrap().path().to_path_buf()
    }
}

fn passphrase() -> Passphrase {
    Passphrase::new("a device passphrase".into()).unwrap()
}

fn open(agent: &Agent, path: &std::path::Path) -> UnlockedVault {
    let space = Space::new(path.parent().unwrap());
    agent
        .unlock(
            &space.vault("acme").unwrap(),
            &UnlockSecret::Passphrase(passphrase()),
        )
        .unwrap()
}

/// Queues `batches` batches of two readings.
fn queue(agent: &Agent, vault: &UnlockedVault, batches: usize) {
    for b in 0..batches {
        let readings = (0..2)
            .map(|i| Reading {
                at: 1_800_000_000 + i64::try_from(b * 2 + i).unwrap(),
                name: "temp".into(),
                value: json!(20 + i),
            })
            .collect();
        agent.queue_readings(vault, readings).unwrap();
    }
}

#[test]
fn the_queue_goes_over_mqtt_and_a_refused_access_is_asked_for_again_once() {
    let broker = Mosquitto::start();
    let world = World::new(Some(&broker));
    let agent = Agent::new();
    let path = world.device(&agent);

    let vault = open(&agent, &path);
    queue(&agent, &vault, 3);
    let report = agent.deliver_mqtt(vault, 0).unwrap();
    assert_eq!(
        (report.delivered, report.over_mqtt, report.queued),
        (3, 3, 0)
    );
    assert_eq!(report.fell_back, None);
    world.wait_for_readings(6);
    assert_eq!(world.audited("mqtt_access_issued"), 1);

    // The access is kept: the next delivery asks for none.
    let vault = open(&agent, &path);
    queue(&agent, &vault, 1);
    let report = agent.deliver_mqtt(vault, 0).unwrap();
    assert_eq!(report.over_mqtt, 1);
    world.wait_for_readings(8);
    assert_eq!(world.audited("mqtt_access_issued"), 1);

    // A new password drawn for the device elsewhere (its token used by
    // another copy of it, say): the kept one is refused, a new access is
    // asked for once, and the batch goes over MQTT.
    let vault = open(&agent, &path);
    let token = String::from_utf8(vault.setting("control.device_token").unwrap().unwrap()).unwrap();
    let r = world
        .http
        .post(format!("{}/v1/device/mqtt", world.base))
        .header("X-Auth-Token", token)
        .send()
        .unwrap();
    assert!(r.status().is_success());
    queue(&agent, &vault, 1);
    let report = agent.deliver_mqtt(vault, 0).unwrap();
    assert_eq!((report.over_mqtt, report.fell_back.as_deref()), (1, None));
    world.wait_for_readings(10);
    assert_eq!(world.audited("mqtt_access_issued"), 3);

    // A kept pin that is not the broker's certificate (it was renewed,
    // say): the handshake fails, a new access with the new pin is asked
    // for, and delivery goes on.
    let vault = open(&agent, &path);
    let mut kept: Value = serde_json::from_slice(&vault.setting(ACCESS).unwrap().unwrap()).unwrap();
    kept["certificate_sha256"] = json!("00".repeat(32));
    vault
        .set_setting(ACCESS, Some(&serde_json::to_vec(&kept).unwrap()))
        .unwrap();
    queue(&agent, &vault, 1);
    let report = agent.deliver_mqtt(vault, 0).unwrap();
    assert_eq!((report.over_mqtt, report.fell_back.as_deref()), (1, None));
    world.wait_for_readings(12);
    assert_eq!(world.audited("mqtt_access_issued"), 4);
    // Nothing delivered twice.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(world.readings(), 12);
}

#[test]
fn a_batch_near_the_64_kib_limit_goes_over_mqtt_and_one_over_the_brokers_over_http() {
    let broker = Mosquitto::start();
    let world = World::new(Some(&broker));
    let agent = Agent::new();
    let path = world.device(&agent);
    // 15 readings of 4,000 bytes: about 60 KiB of JSON (rumqttc's own
    // default limit is 10 KiB).
    let big = |first: i64| -> Vec<Reading> {
        (0..15)
            .map(|i| Reading {
                at: 1_800_000_000 + first + i,
                name: "blob".into(),
                value: json!("x".repeat(4000)),
            })
            .collect()
    };
    let vault = open(&agent, &path);
    agent.queue_readings(&vault, big(0)).unwrap();
    let report = agent.deliver_mqtt(vault, 0).unwrap();
    assert_eq!((report.over_mqtt, report.fell_back.as_deref()), (1, None));
    world.wait_for_readings(15);

    // A broker that takes less (its access says so): that batch goes over
    // HTTP, the small one over MQTT, and the report says why.
    let vault = open(&agent, &path);
    let mut kept: Value = serde_json::from_slice(&vault.setting(ACCESS).unwrap().unwrap()).unwrap();
    kept["max_payload"] = json!(10_000);
    vault
        .set_setting(ACCESS, Some(&serde_json::to_vec(&kept).unwrap()))
        .unwrap();
    agent.queue_readings(&vault, big(100)).unwrap();
    queue(&agent, &vault, 1);
    let report = agent.deliver_mqtt(vault, 0).unwrap();
    assert_eq!(
        (report.delivered, report.over_mqtt, report.queued),
        (2, 1, 0)
    );
    assert!(report
        .fell_back
        .unwrap()
        .contains("larger than the broker's"));
    world.wait_for_readings(32);
}

#[test]
fn with_the_broker_down_or_absent_the_batches_go_over_http_and_the_report_says_why() {
    let mut broker = Mosquitto::start();
    let world = World::new(Some(&broker));
    let agent = Agent::new();
    let path = world.device(&agent);
    let vault = open(&agent, &path);
    queue(&agent, &vault, 1);
    assert_eq!(agent.deliver_mqtt(vault, 0).unwrap().over_mqtt, 1);
    world.wait_for_readings(2);

    broker.stop();
    let vault = open(&agent, &path);
    queue(&agent, &vault, 2);
    let report = agent.deliver_mqtt(vault, 0).unwrap();
    assert_eq!(
        (report.delivered, report.over_mqtt, report.queued),
        (2, 0, 0)
    );
    let why = report.fell_back.unwrap();
    assert!(why.contains("broker"), "{why}");
    assert_eq!(world.readings(), 6);

    // A server with no broker at all.
    let plain = World::new(None);
    let agent = Agent::new();
    let path = plain.device(&agent);
    let vault = open(&agent, &path);
    queue(&agent, &vault, 1);
    let report = agent.deliver_mqtt(vault, 0).unwrap();
    assert_eq!((report.delivered, report.over_mqtt), (1, 0));
    assert_eq!(
        report.fell_back.as_deref(),
        Some("the server has no MQTT broker")
    );
    assert_eq!(plain.readings(), 2);
}
