//! Data delivery over MQTT through a real Mosquitto 2 broker (Debian's
//! package, with its dynamic-security plugin) on a free loopback port with
//! TLS, managed by the control plane: a device delivers and its readings
//! appear once with their accounting; it can publish to its own topic only
//! and subscribe to nothing; revoked, it is disconnected and refused; a
//! broker restart and a `coffer serve` restart lose no message the broker
//! accepted; hostile payloads are dropped and counted. On SQLite, and on
//! PostgreSQL with two server processes that both see every message.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use coffer_server::testing::Mosquitto;
use reqwest::StatusCode;
use rumqttc::{AsyncClient, ConnectionError, Event, Packet, QoS};
use serde_json::{json, Value};
use support::postgres::Postgres;
use support::{enrollment, get, login, post, set_up, Running};

const PASSWORD: &str = "correct horse battery";

async fn server(url: &str, broker: &Mosquitto, session: &str) -> Running {
    let config = broker.config(session);
    Running::start_configured(url, move |s| s.with_mqtt(config)).await
}

/// A broker, a server on SQLite managing it, set up (organization Acme,
/// its owner alice logged in).
struct World {
    broker: Mosquitto,
    _db: tempfile::TempDir,
    url: String,
    server: Running,
    http: reqwest::Client,
    org: i64,
    admin: String,
}

impl World {
    async fn start(session: &str) -> World {
        let broker = Mosquitto::start();
        let db = tempfile::tempdir().unwrap();
        let url = db.path().join("c.db").display().to_string();
        let server = server(&url, &broker, session).await;
        let http = reqwest::Client::new();
        let org = set_up(&server, &http).await;
        let admin = login(&server, &http, "alice", PASSWORD).await.unwrap();
        World {
            broker,
            _db: db,
            url,
            server,
            http,
            org,
            admin,
        }
    }
}

/// A device of the test: its ids, token, and broker access.
struct Device {
    org: i64,
    id: i64,
    token: String,
    access: Value,
}

async fn device(
    server: &Running,
    http: &reqwest::Client,
    org: i64,
    admin: &str,
    name: &str,
) -> Device {
    let enrolled = enrollment(server, http, org, admin, name).await;
    let token = enrolled["device_token"].as_str().unwrap().to_owned();
    let r = post(http, server.url("/v1/device/mqtt"), &token, json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let access: Value = r.json().await.unwrap();
    Device {
        org,
        id: enrolled["device_id"].as_i64().unwrap(),
        token,
        access,
    }
}

/// A connection as the device (its user, password and client id).
fn connect(broker: &Mosquitto, access: &Value) -> (AsyncClient, rumqttc::EventLoop) {
    connect_as(
        broker,
        access["client_id"].as_str().unwrap(),
        access["username"].as_str().unwrap(),
        access["password"].as_str().unwrap(),
    )
}

fn connect_as(
    broker: &Mosquitto,
    client_id: &str,
    user: &str,
    password: &str,
) -> (AsyncClient, rumqttc::EventLoop) {
    AsyncClient::new(broker.device_options(client_id, user, password), 64)
}

/// Polls until the broker acknowledged the connection; the error if it
/// refused.
async fn connected(events: &mut rumqttc::EventLoop) -> Result<(), ConnectionError> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("the broker answers")?
        {
            Event::Incoming(Packet::ConnAck(_)) => return Ok(()),
            _ => continue,
        }
    }
}

/// Whether, within 5 s, the broker comes to accept (`true`) or refuse
/// (`false`) a connection with `access`.
async fn accepts_within(broker: &Mosquitto, access: &Value, accept: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_c, mut e) = connect(broker, access);
        let outcome = connected(&mut e).await;
        if (accept && outcome.is_ok()) || (!accept && is_refusal(&outcome)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a connection's outcome is the broker's refusal of its
/// credential (not a TLS or network failure).
fn is_refusal(outcome: &Result<(), ConnectionError>) -> bool {
    matches!(
        outcome,
        Err(ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::NotAuthorized
                | rumqttc::ConnectReturnCode::BadUserNamePassword
        ))
    )
}

/// Whether the broker refuses the connection's credential.
async fn credential_refused(events: &mut rumqttc::EventLoop) -> bool {
    is_refusal(&connected(events).await)
}

async fn publish_all(
    client: &AsyncClient,
    events: &mut rumqttc::EventLoop,
    topic: &str,
    payloads: Vec<Vec<u8>>,
) {
    coffer_server::testing::publish_all(client, events, topic, payloads, Duration::from_secs(10))
        .await;
}

fn batch(id: &str, readings: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "batch_id": id,
        "readings": (0..readings).map(|i| json!({"at": 1_800_000_000 + i, "name": "temp", "value": i})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

async fn readings(server: &Running, http: &reqwest::Client, admin: &str, d: &Device) -> usize {
    let r = get(
        http,
        server.url(&format!(
            "/v1/orgs/{}/data?device={}&limit=10000",
            d.org, d.id
        )),
        admin,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["readings"]
        .as_array()
        .unwrap()
        .len()
}

/// Waits until the device has `n` readings stored (at most 20 s).
async fn wait_for_readings(
    server: &Running,
    http: &reqwest::Client,
    admin: &str,
    d: &Device,
    n: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let have = readings(server, http, admin, d).await;
        if have == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{have} readings stored, not {n}; the server's log:\n{}",
            support::captured_logs()
                .lines()
                .filter(|l| l.contains("MQTT") || l.contains("mqtt"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(server: &Running, http: &reqwest::Client, line_start: &str) -> u64 {
    let text = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(line_start)
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_device_delivers_over_mqtt_once_with_its_accounting_and_only_to_its_own_topic() {
    let World {
        broker,
        _db,
        url,
        server,
        http,
        org,
        admin,
    } = World::start("coffer-test-a").await;
    let a = device(&server, &http, org, &admin, "sensor-a").await;
    let b = device(&server, &http, org, &admin, "sensor-b").await;
    assert_eq!(
        a.access["topic"],
        format!("coffer/v1/{org}/{}/readings", a.id)
    );
    assert_eq!(a.access["port"], broker.port);
    assert_eq!(a.access["certificate_sha256"].as_str().unwrap().len(), 64);

    let (client, mut events) = connect(&broker, &a.access);
    connected(&mut events).await.unwrap();
    let topic = a.access["topic"].as_str().unwrap().to_owned();
    // The same batch twice (a redelivery, say): stored once.
    publish_all(
        &client,
        &mut events,
        &topic,
        vec![
            batch("batch-0001", 3),
            batch("batch-0001", 3),
            batch("batch-0002", 2),
        ],
    )
    .await;
    wait_for_readings(&server, &http, &admin, &a, 5).await;
    assert_eq!(
        metric(&server, &http, "coffer_mqtt_batches_duplicate_total").await,
        1
    );

    // To B's topic: the broker takes the PUBACK-less QoS 1 of a refused
    // publish in MQTT 3.1.1 silently; nothing reaches B.
    let b_topic = format!("coffer/v1/{org}/{}/readings", b.id);
    publish_all(&client, &mut events, &b_topic, vec![batch("batch-0003", 1)]).await;
    // Subscribing to anything is refused.
    client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    client.subscribe(&b_topic, QoS::AtLeastOnce).await.unwrap();
    let mut refused = 0;
    while refused < 2 {
        if let Event::Incoming(Packet::SubAck(ack)) =
            tokio::time::timeout(Duration::from_secs(10), events.poll())
                .await
                .unwrap()
                .unwrap()
        {
            assert!(matches!(
                ack.return_codes[0],
                rumqttc::SubscribeReasonCode::Failure
            ));
            refused += 1;
        }
    }
    // A marker batch after them: once it is in, the one to B's topic had
    // its chance.
    publish_all(&client, &mut events, &topic, vec![batch("batch-0004", 1)]).await;
    wait_for_readings(&server, &http, &admin, &a, 6).await;
    assert_eq!(readings(&server, &http, &admin, &b).await, 0);

    // Another client id under A's credential is refused.
    let (_c, mut e) = connect_as(
        &broker,
        "someone-else",
        a.access["username"].as_str().unwrap(),
        a.access["password"].as_str().unwrap(),
    );
    assert!(credential_refused(&mut e).await);

    // Accounting: each message a request of A's, with its bytes.
    let store = coffer_server::Store::open(&url).await.unwrap();
    let rows = store
        .number_for_tests(&format!(
            "SELECT count(*) FROM usage_records WHERE device_id = {} AND route LIKE 'mqtt:%'",
            a.id
        ))
        .await
        .unwrap();
    // Stored ones only: the repeat of batch-0001 is not charged twice.
    assert_eq!(rows, 3);
    let bytes = store
        .number_for_tests(&format!(
            "SELECT sum(bytes_in) FROM usage_records WHERE device_id = {} AND route LIKE 'mqtt:%'",
            a.id
        ))
        .await
        .unwrap();
    let sent =
        batch("batch-0001", 3).len() + batch("batch-0002", 2).len() + batch("batch-0004", 1).len();
    assert_eq!(bytes, i64::try_from(sent).unwrap());

    // A new access draws a new password: the old one is refused.
    let old = a.access["password"].as_str().unwrap().to_owned();
    let r = post(&http, server.url("/v1/device/mqtt"), &a.token, json!({})).await;
    let new: Value = r.json().await.unwrap();
    assert_ne!(new["password"].as_str().unwrap(), old);
    let (_c, mut e) = connect_as(
        &broker,
        a.access["client_id"].as_str().unwrap(),
        a.access["username"].as_str().unwrap(),
        &old,
    );
    assert!(credential_refused(&mut e).await);
    // The passwords reach no log line of the server.
    support::assert_logs_free_of(&[
        &old,
        new["password"].as_str().unwrap(),
        broker.admin_password(),
    ]);
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_device_is_disconnected_at_once_and_refused() {
    let World {
        broker,
        _db,
        url: _url,
        server,
        http,
        org,
        admin,
    } = World::start("coffer-test-r").await;
    let d = device(&server, &http, org, &admin, "sensor").await;
    let (_client, mut events) = connect(&broker, &d.access);
    connected(&mut events).await.unwrap();
    let r = post(
        &http,
        server.url(&format!("/v1/orgs/{org}/devices/{}/revoke", d.id)),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let started = Instant::now();
    // The broker drops the connection.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("dropped in time")
        {
            Err(_) => break,
            Ok(_) => continue,
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // And refuses it from now on.
    let (_c, mut e) = connect(&broker, &d.access);
    assert!(credential_refused(&mut e).await);
    // The device cannot ask for a new access either.
    let r = post(&http, server.url("/v1/device/mqtt"), &d.token, json!({})).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn a_device_revoked_while_the_broker_was_down_is_deleted_from_it_when_it_is_back() {
    let World {
        mut broker,
        _db,
        url: _url,
        server,
        http,
        org,
        admin,
    } = World::start("coffer-test-catch-up").await;
    let d = device(&server, &http, org, &admin, "sensor").await;
    broker.stop();
    let r = post(
        &http,
        server.url(&format!("/v1/orgs/{org}/devices/{}/revoke", d.id)),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The revocation could not reach the broker; it still holds the
    // client. Down past the reconciler's 10 s wait for an answer, so that
    // its pass in progress has given up.
    tokio::time::sleep(Duration::from_secs(11)).await;
    broker.restart();
    // Back: the reconciler deletes the client as soon as its admin
    // connection is up again (not at the next 30 s pass).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_c, mut e) = connect(&broker, &d.access);
        if credential_refused(&mut e).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked device's client still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_suspension_or_a_wipe_order_disables_the_client_and_a_resumption_enables_it() {
    let World {
        broker,
        _db,
        url: _url,
        server,
        http,
        org,
        admin,
    } = World::start("coffer-test-s").await;
    let d = device(&server, &http, org, &admin, "sensor").await;
    assert!(accepts_within(&broker, &d.access, true).await);
    // The operator here is alice (the setup's owner is the instance's
    // first operator).
    let r = post(
        &http,
        server.url(&format!("/v1/orgs/{org}/suspend")),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(accepts_within(&broker, &d.access, false).await);
    let r = post(
        &http,
        server.url(&format!("/v1/orgs/{org}/resume")),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(accepts_within(&broker, &d.access, true).await);
    let r = post(
        &http,
        server.url(&format!("/v1/orgs/{org}/devices/{}/wipe", d.id)),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(accepts_within(&broker, &d.access, false).await);
    // Until it has checked in and carried the order out, no new access.
    let r = post(&http, server.url("/v1/device/mqtt"), &d.token, json!({})).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn restarts_of_the_broker_and_of_the_server_lose_no_accepted_message() {
    let World {
        mut broker,
        _db,
        url,
        server: running,
        http,
        org,
        admin,
    } = World::start("coffer-test-restart").await;
    let d = device(&running, &http, org, &admin, "sensor").await;
    let topic = d.access["topic"].as_str().unwrap().to_owned();
    {
        let (client, mut events) = connect(&broker, &d.access);
        connected(&mut events).await.unwrap();
        publish_all(&client, &mut events, &topic, vec![batch("first-0001", 1)]).await;
    }
    wait_for_readings(&running, &http, &admin, &d, 1).await;
    // coffer serve stops; the broker accepts 20 batches meanwhile, for its
    // persistent session; then the broker restarts too.
    running.stop().await;
    {
        let (client, mut events) = connect(&broker, &d.access);
        connected(&mut events).await.unwrap();
        let payloads = (0..20)
            .map(|i| batch(&format!("while-down-{i:04}"), 2))
            .collect();
        publish_all(&client, &mut events, &topic, payloads).await;
    }
    broker.restart();
    let running = server(&url, &broker, "coffer-test-restart").await;
    wait_for_readings(&running, &http, &admin, &d, 41).await;
    // With coffer serve up, the broker restarts under it: the ingest
    // reconnects by itself and the next messages arrive.
    broker.restart();
    {
        let (client, mut events) = connect(&broker, &d.access);
        connected(&mut events).await.unwrap();
        publish_all(&client, &mut events, &topic, vec![batch("after-0001", 1)]).await;
    }
    wait_for_readings(&running, &http, &admin, &d, 42).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        readings(&running, &http, &admin, &d).await,
        42,
        "nothing twice"
    );
    running.stop().await;
}

#[tokio::test]
async fn hostile_payloads_are_dropped_counted_and_audited_and_ingest_goes_on() {
    let World {
        broker,
        _db,
        url,
        server,
        http,
        org,
        admin,
    } = World::start("coffer-test-h").await;
    let d = device(&server, &http, org, &admin, "sensor").await;
    let topic = d.access["topic"].as_str().unwrap().to_owned();
    let (client, mut events) = connect(&broker, &d.access);
    connected(&mut events).await.unwrap();
    let good = batch("good-0001", 2);
    let mut cbor = Vec::new();
    ciborium::ser::into_writer(&serde_json::from_slice::<Value>(&good).unwrap(), &mut cbor)
        .unwrap();
    let hostile = vec![
        cbor[..cbor.len() - 3].to_vec(), // truncated CBOR
        vec![0xBB, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0], // a map of 2^64 entries
        vec![
            0xA1, 0x68, b'b', b'a', b't', b'c', b'h', b'_', b'i', b'd', 0x5B, 0x7F, 0xFF, 0xFF,
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ], // a huge byte string
        vec![b'{'; 1024 * 1024],         // 1 MB
        b"{\"batch_id\": \"x\", \"readings\": []}".to_vec(), // invalid
        vec![0u8; 0],                    // empty
    ];
    publish_all(&client, &mut events, &topic, hostile).await;
    publish_all(&client, &mut events, &topic, vec![cbor.clone()]).await;
    wait_for_readings(&server, &http, &admin, &d, 2).await;
    let dropped = |reason: &'static str| {
        let server = &server;
        let http = &http;
        async move {
            metric(
                server,
                http,
                &format!("coffer_mqtt_messages_dropped_total{{reason=\"{reason}\"}}"),
            )
            .await
        }
    };
    assert_eq!(dropped("malformed").await, 4);
    assert_eq!(dropped("oversized").await, 1);
    assert_eq!(dropped("invalid").await, 1);
    let store = coffer_server::Store::open(&url).await.unwrap();
    // One audit row for the six (a flood leaves one a minute per device).
    assert_eq!(
        store
            .number_for_tests(
                "SELECT count(*) FROM audit_events WHERE action = 'mqtt_message_dropped'"
            )
            .await
            .unwrap(),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn two_servers_on_one_postgresql_both_see_every_message_and_store_each_batch_once() {
    let pg = Postgres::start();
    let url = pg.database("mqtt_two").await;
    let broker = Mosquitto::start();
    let one = server(&url, &broker, "coffer-test-pg-1").await;
    let http = reqwest::Client::new();
    let org = set_up(&one, &http).await;
    let two = server(&url, &broker, "coffer-test-pg-2").await;
    let admin = login(&one, &http, "alice", PASSWORD).await.unwrap();
    let d = device(&two, &http, org, &admin, "sensor").await;
    // Both processes issue at once: the broker's answers reach both (one
    // response topic), and each must take only its own. Twenty rounds of
    // new passwords for two devices, one through each process: the last
    // password of each works.
    let e = device(&one, &http, org, &admin, "other").await;
    let (mut last_d, mut last_e) = (Value::Null, Value::Null);
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            post(&http, two.url("/v1/device/mqtt"), &d.token, json!({})),
            post(&http, one.url("/v1/device/mqtt"), &e.token, json!({})),
        );
        assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
        last_d = a.json().await.unwrap();
        last_e = b.json().await.unwrap();
    }
    for access in [&last_d, &last_e] {
        let (_c, mut events) = connect(&broker, access);
        connected(&mut events).await.unwrap();
    }
    let d = Device {
        access: last_d,
        ..d
    };
    let topic = d.access["topic"].as_str().unwrap().to_owned();
    let (client, mut events) = connect(&broker, &d.access);
    connected(&mut events).await.unwrap();
    let payloads = (0..40)
        .map(|i| batch(&format!("shared-{i:04}"), 1))
        .collect();
    publish_all(&client, &mut events, &topic, payloads).await;
    wait_for_readings(&one, &http, &admin, &d, 40).await;
    let stored = metric(&one, &http, "coffer_mqtt_batches_stored_total").await
        + metric(&two, &http, "coffer_mqtt_batches_stored_total").await;
    assert_eq!(stored, 40, "each batch stored by one of the two");
    // The other found each a duplicate (wait for the slower one).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let duplicates = metric(&one, &http, "coffer_mqtt_batches_duplicate_total").await
            + metric(&two, &http, "coffer_mqtt_batches_duplicate_total").await;
        if duplicates == 40 {
            break;
        }
        assert!(Instant::now() < deadline, "{duplicates} duplicates, not 40");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readings(&one, &http, &admin, &d).await, 40);
    let store = coffer_server::Store::open(&url).await.unwrap();
    assert_eq!(
        store
            .number_for_tests(&format!(
                "SELECT count(*) FROM usage_records WHERE device_id = {} AND route LIKE 'mqtt:%'",
                d.id
            ))
            .await
            .unwrap(),
        40,
        "each message accounted once"
    );
    one.stop().await;
    two.stop().await;
}

/// A burst larger than the ingest's acknowledgements can be sent back
/// one per turn of its event loop (a network read brings several
/// messages): all of it stored. (An awaited acknowledgement once
/// deadlocked the ingest here after about 80 messages.)
#[tokio::test]
async fn a_burst_of_batches_is_stored_whole() {
    let World {
        broker,
        _db,
        url: _url,
        server,
        http,
        org,
        admin,
    } = World::start("coffer-test-burst").await;
    let d = device(&server, &http, org, &admin, "sensor").await;
    let topic = d.access["topic"].as_str().unwrap().to_owned();
    let (client, mut events) = connect(&broker, &d.access);
    connected(&mut events).await.unwrap();
    let payloads = (0..2000)
        .map(|i| batch(&format!("burst-{i:05}"), 1))
        .collect();
    publish_all(&client, &mut events, &topic, payloads).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = metric(&server, &http, "coffer_mqtt_batches_stored_total").await;
        if stored == 2000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of 2000 batches stored; {}",
            support::captured_logs()
                .lines()
                .filter(|l| l.contains("ingest") || l.contains("WARN") || l.contains("ERROR"))
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}
