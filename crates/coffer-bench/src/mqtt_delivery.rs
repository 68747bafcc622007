//! Data delivery over MQTT against delivery over HTTP, to one in-process
//! `coffer serve` on SQLite (TLS with its development certificate) that
//! manages a real Mosquitto 2 broker (Debian's package, TLS on loopback,
//! the harness of crates/coffer-server/tests/mqtt.rs).
//!
//! - **Rate**: readings per second ingested end to end, from the first
//!   publish or POST until every reading is stored at the server (HTTP:
//!   the last `201`; MQTT: the server's `coffer_mqtt_batches_stored_total`
//!   reaches the batches sent, each counted after its commit), then
//!   checked with `GET /v1/orgs/{org}/data` (not timed). HTTP: one
//!   kept-alive TLS connection (opened before the clock starts), one
//!   `POST /v1/device/data` after another, as the device agent sends.
//!   MQTT: one TLS connection (CONNACK before the clock starts), QoS 1,
//!   at most [`IN_FLIGHT`] PUBLISHes unacknowledged. The two alternate
//!   which goes first from round to round; the ratio is the median of
//!   each round's.
//! - **Bytes**: each client's TCP connection through a counting proxy on
//!   loopback (TCP payload both ways: TLS records with the protocol in
//!   them). A run of 1 batch and one of 1 + N batches; their difference
//!   over N is the steady state per batch, and what the first run has
//!   beyond one batch of it is the connection's setup and close (TCP
//!   connect aside: the TLS handshake, session tickets, MQTT's CONNECT and
//!   CONNACK, close_notify).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_server::testing::Mosquitto;
use coffer_server::{LoginLimits, ServeConfig, Server, TlsSetting, DEFAULT_SESSION_TTL};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Transport};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::measure::{ratio, Samples};
use crate::sync::Admin;
use crate::{Scale, Section};

/// PUBLISHes a device keeps unacknowledged at most.
const IN_FLIGHT: u16 = 16;
/// Readings per batch of the rows: the rate rows, and the bytes rows.
const BATCH_SIZES: [usize; 2] = [10, 1];
/// The ingest's session at the broker.
const SESSION: &str = "coffer-bench";
/// How long the server may take to store what the broker acknowledged.
const STORE_DEADLINE: Duration = Duration::from_secs(60);

/// Batches per timed run, and the N of the bytes runs.
fn batches(scale: &Scale) -> (usize, usize) {
    match scale.name {
        "--smoke" => (20, 10),
        "--quick" => (500, 100),
        _ => (2_000, 200),
    }
}

/// A TCP proxy on loopback that counts the bytes it forwards each way
/// (tokio tasks; it stops accepting when dropped).
struct CountingProxy {
    addr: SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    accepting: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn start(target: SocketAddr) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (Arc::clone(&up), Arc::clone(&down));
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, Arc::clone(&u)));
                tokio::spawn(pump(sr, cw, Arc::clone(&d)));
            }
        });
        CountingProxy {
            addr,
            up,
            down,
            accepting,
        }
    }

    /// Bytes forwarded so far: client to server, server to client.
    fn counted(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::SeqCst),
            self.down.load(Ordering::SeqCst),
        )
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counted: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        counted.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown().await;
}

/// An enrolled device: its token for HTTP, its broker access for MQTT.
struct Device {
    id: i64,
    token: String,
    access: Value,
}

/// The server, the broker, and the two devices.
struct Bench {
    server_addr: SocketAddr,
    broker: Mosquitto,
    cert_pem: Vec<u8>,
    admin: Admin,
    http_device: Device,
    mqtt_device: Device,
    /// Numbers the runs: each has its own batch ids and reading times.
    runs: u64,
}

/// One run of a transport.
struct Run {
    /// From the first publish or POST to every reading stored.
    secs: f64,
    readings: usize,
}

/// What a proxied run forwarded: client to server, server to client.
#[derive(Clone, Copy)]
struct Wire {
    up: u64,
    down: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Via {
    Mqtt,
    Http,
}

fn payloads(run: u64, batches: usize, per_batch: usize) -> Vec<Vec<u8>> {
    let base = 1_800_000_000 + run * 1_000_000;
    (0..batches)
        .map(|b| {
            let readings: Vec<Value> = (0..per_batch)
                .map(|i| {
                    let k = b * per_batch + i;
                    json!({"at": base + k as u64, "name": "temp", "value": 20.0 + (k % 100) as f64 / 10.0})
                })
                .collect();
            serde_json::to_vec(&json!({"batch_id": format!("run{run:05}-{b:06}"), "readings": readings}))
                .unwrap()
        })
        .collect()
}

impl Bench {
    fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.server_addr.port())
    }

    fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.cert_pem).unwrap())
            .pool_max_idle_per_host(1)
            .build()
            .unwrap()
    }

    async fn stored_batches(&self) -> u64 {
        let text = self
            .admin
            .http
            .get(format!("{}/metrics", self.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("coffer_mqtt_batches_stored_total"))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// The readings of `device` stored by run `run` (paged).
    async fn readings_of(&self, device: i64, run: u64) -> usize {
        let from = 1_800_000_000 + run * 1_000_000;
        let (mut count, mut after) = (0, None::<i64>);
        loop {
            let mut url = format!(
                "{}/v1/orgs/{}/data?device={device}&from={from}&to={}&limit=10000",
                self.base(),
                self.admin.org,
                from + 1_000_000
            );
            if let Some(a) = after {
                url.push_str(&format!("&after={a}"));
            }
            let page: Value = self
                .admin
                .http
                .get(url)
                .header("X-Auth-Token", &self.admin.session)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            count += page["readings"].as_array().unwrap().len();
            match page["next_after"].as_i64() {
                Some(a) => after = Some(a),
                None => return count,
            }
        }
    }

    /// Delivers `batches` batches over `via`, straight to the server or
    /// the broker, or through a counting proxy (`proxied`: the run's bytes
    /// are then returned). Timed runs open their connection first.
    async fn deliver(
        &mut self,
        via: Via,
        batches: usize,
        per_batch: usize,
        proxied: bool,
    ) -> (Run, Option<Wire>) {
        self.runs += 1;
        let run = self.runs;
        let payloads = payloads(run, batches, per_batch);
        let target = match via {
            Via::Http => self.server_addr,
            Via::Mqtt => SocketAddr::from(([127, 0, 0, 1], self.broker.port)),
        };
        let proxy = if proxied {
            Some(CountingProxy::start(target).await)
        } else {
            None
        };
        let port = proxy.as_ref().map_or(target.port(), |p| p.addr.port());
        let secs = match via {
            Via::Http => self.http_run(port, payloads, per_batch, !proxied).await,
            Via::Mqtt => self.mqtt_run(port, payloads).await,
        };
        let wire = match proxy {
            Some(proxy) => {
                // The clients are dropped: let their close go through.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let (up, down) = proxy.counted();
                Some(Wire { up, down })
            }
            None => None,
        };
        let device = match via {
            Via::Http => self.http_device.id,
            Via::Mqtt => self.mqtt_device.id,
        };
        let readings = batches * per_batch;
        assert_eq!(self.readings_of(device, run).await, readings);
        (Run { secs, readings }, wire)
    }

    async fn http_run(
        &self,
        port: u16,
        payloads: Vec<Vec<u8>>,
        per_batch: usize,
        warm: bool,
    ) -> f64 {
        let client = self.http_client();
        let base = format!("https://127.0.0.1:{port}");
        if warm {
            let r = client.get(format!("{base}/healthz")).send().await.unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap();
        }
        let url = format!("{base}/v1/device/data");
        let started = Instant::now();
        for p in payloads {
            let r = client
                .post(&url)
                .header("X-Auth-Token", &self.http_device.token)
                .header("content-type", "application/json")
                .body(p)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), reqwest::StatusCode::CREATED);
            let answer: Value = r.json().await.unwrap();
            assert_eq!(answer["stored"].as_u64(), Some(per_batch as u64));
        }
        started.elapsed().as_secs_f64()
    }

    async fn mqtt_run(&self, port: u16, payloads: Vec<Vec<u8>>) -> f64 {
        let access = &self.mqtt_device.access;
        let mut options =
            MqttOptions::new(access["client_id"].as_str().unwrap(), "127.0.0.1", port);
        options.set_credentials(
            access["username"].as_str().unwrap(),
            access["password"].as_str().unwrap(),
        );
        options.set_inflight(IN_FLIGHT);
        options.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(self.broker.client_tls()),
        ));
        let (client, mut events) = AsyncClient::new(options, 64);
        connected(&mut events).await;
        let topic = access["topic"].as_str().unwrap().to_owned();
        let n = payloads.len() as u64;
        let before = self.stored_batches().await;
        let started = Instant::now();
        coffer_server::testing::publish_all(
            &client,
            &mut events,
            &topic,
            payloads,
            Duration::from_secs(30),
        )
        .await;
        while self.stored_batches().await < before + n {
            assert!(
                started.elapsed() < STORE_DEADLINE,
                "the server stored {} of {n} batches",
                self.stored_batches().await - before
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        // A clean end, as a device that is done: DISCONNECT, then close.
        client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while events.poll().await.is_ok() {}
        })
        .await;
        secs
    }
}

/// Polls until the broker acknowledged the connection.
async fn connected(events: &mut EventLoop) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("the broker answers")
            .expect("the broker accepts the device");
        if let Event::Incoming(Packet::ConnAck(_)) = event {
            return;
        }
    }
}

/// The bench, with how to stop its server and the server's task.
type Running = (
    Bench,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), coffer_server::serve::ServeError>>,
);

async fn set_up(dir: &std::path::Path) -> Running {
    let broker = Mosquitto::start();
    let server = Server::bind(&ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.join("server.db").display()),
        force_plain: false,
        session_ttl: DEFAULT_SESSION_TTL,
        login_limits: LoginLimits::default(),
        tls: TlsSetting::Dev {
            dir: dir.join("tls"),
        },
        keys: coffer_server::testing::keyring(),
        adopt_unkeyed_audit: false,
        trusted_proxies: Default::default(),
        shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
    })
    .await
    .unwrap()
    .with_mqtt(broker.config(SESSION));
    let server_addr = server.local_addr().unwrap();
    let setup_token = server.setup_token().unwrap().to_owned();
    let cert_pem = std::fs::read(dir.join("tls").join("dev-tls-cert.pem")).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&cert_pem).unwrap())
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", server_addr.port());
    let admin = crate::sync::admin(http, base, setup_token).await;
    let mut devices = Vec::new();
    for name in ["http-device", "mqtt-device"] {
        let code = admin.code().await;
        let enrolled = admin
            .post("/v1/enroll", json!({"code": code, "name": name}), None)
            .await;
        let token = enrolled["device_token"].as_str().unwrap().to_owned();
        // The answer waits until the ingest is subscribed at the broker.
        let access = admin.post("/v1/device/mqtt", json!({}), Some(&token)).await;
        devices.push(Device {
            id: enrolled["device_id"].as_i64().unwrap(),
            token,
            access,
        });
    }
    let mqtt_device = devices.pop().unwrap();
    let http_device = devices.pop().unwrap();
    let bench = Bench {
        server_addr,
        broker,
        cert_pem,
        admin,
        http_device,
        mqtt_device,
        runs: 0,
    };
    (bench, stop, serving)
}

/// The steady state per batch and the setup and close, from a run of 1
/// batch and one of 1 + n.
fn fit(one: Wire, many: Wire, n: usize) -> (Wire, Wire) {
    let per = |a: u64, b: u64| (b - a) / n as u64;
    let batch = Wire {
        up: per(one.up, many.up),
        down: per(one.down, many.down),
    };
    let setup = Wire {
        up: one.up.saturating_sub(batch.up),
        down: one.down.saturating_sub(batch.down),
    };
    (batch, setup)
}

pub(crate) fn run(scale: &Scale) -> Vec<Section> {
    let (timed, n) = batches(scale);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (rates, wires) = runtime.block_on(async {
        let (mut bench, stop, serving) = set_up(tmp.path()).await;
        // A warm-up of both (not counted).
        bench.deliver(Via::Mqtt, 20, 10, false).await;
        bench.deliver(Via::Http, 20, 10, false).await;
        // rates[size index] = (MQTT samples, HTTP samples), readings/s.
        let mut rates = vec![(Samples::default(), Samples::default()); BATCH_SIZES.len()];
        for round in 0..scale.rounds {
            eprintln!("  MQTT delivery: round {} of {}…", round + 1, scale.rounds);
            for (k, &per_batch) in BATCH_SIZES.iter().enumerate() {
                let order = if (round + k) % 2 == 0 {
                    [Via::Mqtt, Via::Http]
                } else {
                    [Via::Http, Via::Mqtt]
                };
                for via in order {
                    let (r, _) = bench.deliver(via, timed, per_batch, false).await;
                    let rate = r.readings as f64 / r.secs;
                    let into = if via == Via::Mqtt {
                        &mut rates[k].0
                    } else {
                        &mut rates[k].1
                    };
                    into.0.push(rate);
                }
            }
        }
        eprintln!("  MQTT delivery: bytes on the wire…");
        // wires[size index] = [(MQTT 1 batch, MQTT 1 + n), (HTTP …)].
        let mut wires = Vec::new();
        for &per_batch in &BATCH_SIZES {
            let mut both = Vec::new();
            for via in [Via::Mqtt, Via::Http] {
                let one = bench.deliver(via, 1, per_batch, true).await.1.unwrap();
                let many = bench.deliver(via, 1 + n, per_batch, true).await.1.unwrap();
                both.push((one, many));
            }
            wires.push(both);
        }
        // The server stops before the broker goes (with the bench).
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
        drop(bench);
        (rates, wires)
    });
    drop(runtime);
    drop(tmp);

    let mut table = format!(
        "| row | MQTT (QoS 1, ≤ {IN_FLIGHT} in flight) | HTTP (`POST /v1/device/data`, one at a time) | MQTT / HTTP |\n|---|---|---|---|\n"
    );
    for (k, per_batch) in BATCH_SIZES.iter().enumerate() {
        let (mqtt, http) = &rates[k];
        let each: Vec<f64> = mqtt.0.iter().zip(&http.0).map(|(m, h)| m / h).collect();
        let rate = |s: &Samples| format!("{:.0} readings/s (±{:.0}%)", s.median(), s.spread());
        table.push_str(&format!(
            "| readings ingested end to end, batches of {per_batch}, {timed} batches a run | {} | {} | {:.2}× (median of the rounds' ratios; ratio of the medians {}) |\n",
            rate(mqtt),
            rate(http),
            Samples(each).median(),
            ratio(mqtt.median(), http.median()),
        ));
    }
    for (k, per_batch) in BATCH_SIZES.iter().enumerate() {
        let fits: Vec<(Wire, Wire)> = wires[k].iter().map(|&(o, m)| fit(o, m, n)).collect();
        let per_reading = |w: Wire| {
            format!(
                "{:.1} up + {:.1} down = {:.1}",
                w.up as f64 / *per_batch as f64,
                w.down as f64 / *per_batch as f64,
                (w.up + w.down) as f64 / *per_batch as f64
            )
        };
        table.push_str(&format!(
            "| bytes per reading in the steady state, batches of {per_batch} | {} | {} | {} |\n",
            per_reading(fits[0].0),
            per_reading(fits[1].0),
            ratio(
                (fits[0].0.up + fits[0].0.down) as f64,
                (fits[1].0.up + fits[1].0.down) as f64
            ),
        ));
        let total = |w: Wire| {
            format!(
                "{:.0} ({} B up, {} B down)",
                (w.up + w.down) as f64 / ((1 + n) * per_batch) as f64,
                w.up,
                w.down
            )
        };
        table.push_str(&format!(
            "| a whole run of {} batches of {per_batch}: all bytes / readings (setup and close included) | {} | {} | {} |\n",
            1 + n,
            total(wires[k][0].1),
            total(wires[k][1].1),
            ratio(
                (wires[k][0].1.up + wires[k][0].1.down) as f64,
                (wires[k][1].1.up + wires[k][1].1.down) as f64
            ),
        ));
        if k == 0 {
            let setup = |w: Wire| format!("{} up + {} down = {} B", w.up, w.down, w.up + w.down);
            table.push_str(&format!(
                "| a connection's setup and close (TLS handshake and tickets; MQTT CONNECT/CONNACK and DISCONNECT; close_notify) | {} | {} | {} |\n",
                setup(fits[0].1),
                setup(fits[1].1),
                ratio(
                    (fits[0].1.up + fits[0].1.down) as f64,
                    (fits[1].1.up + fits[1].1.down) as f64
                ),
            ));
        }
    }
    vec![Section {
        title: "MQTT delivery: readings over MQTT vs over HTTP delivery".into(),
        setup: format!(
            "An in-process `coffer serve` on SQLite (TLS 1.3, its development certificate, rustls with ring) managing a Mosquitto 2 broker (Debian's package, dynamic-security plugin, TLS on 127.0.0.1, persistence on); the server's ingest takes the broker's messages one at a time (QoS 1, acknowledged after its commit). Two enrolled devices, one per transport; batches of JSON readings (`{{\"at\", \"name\", \"value\"}}`), the same bytes over both. \
             **Rate**: from the first publish or POST until every reading is stored (HTTP: the last `201`; MQTT: the server's `coffer_mqtt_batches_stored_total`, counted after each commit, polled every millisecond once the broker acknowledged all), then checked with `GET /v1/orgs/{{org}}/data` (not timed). HTTP: reqwest, HTTP/1.1, one kept-alive TLS connection opened before the clock starts, one POST after another, as the device agent sends. MQTT: rumqttc 0.25 over rustls, one TLS connection (CONNACK before the clock starts), QoS 1, at most {IN_FLIGHT} unacknowledged. {} rounds after a warm-up, the two alternating which goes first; medians (spread). \
             **Bytes**: each client's TCP connection through a counting proxy on loopback: TCP payload both ways (TLS records and the protocol in them; TCP/IP headers not counted); the broker's delivery to the server's ingest is not counted (it is not on the device's link). A run of 1 batch and one of {} batches per transport and batch size, the connection new for each; steady state = their difference / {n}, setup and close = the first run minus one batch of the steady state.",
            scale.rounds,
            1 + n,
        ),
        table,
        goals: Vec::new(),
    }]
}
