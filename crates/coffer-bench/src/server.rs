//! Row 7: the server. A device check-in (`POST /v1/device/check-in`: the
//! device token looked up, last-seen recorded, pending wipe orders, the
//! policy version and the escrow read, the request accounted) against a
//! bare `/healthz` on the same server (the ceiling: no database work, not
//! accounted), at 64 concurrent connections, on SQLite and on PostgreSQL.
//! The load comes from a Rust client in this process, sharing the machine's
//! cores with the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_server::testing::Postgres;
use coffer_server::{LoginLimits, ServeConfig, Server, TlsSetting, DEFAULT_SESSION_TTL};
use serde_json::{json, Value};

use crate::measure::{goal, ratio};
use crate::{Scale, Section};

const CONCURRENCY: usize = 64;

/// Requests per second and latencies of one load run.
struct Load {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    tokens: &[String],
    requests: usize,
) -> Load {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..CONCURRENCY {
        let (client, url, next) = (client.clone(), url.to_owned(), Arc::clone(&next));
        let method = method.clone();
        // One device per connection, as in the field.
        let token = (!tokens.is_empty()).then(|| tokens[worker % tokens.len()].clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let mut request = client.request(method.clone(), &url);
                if let Some(t) = &token {
                    request = request.header("X-Auth-Token", t);
                }
                let sent = Instant::now();
                let response = request.send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                response.bytes().await.unwrap();
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Load {
        rps: requests as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

async fn one_backend(url: &str, scale: &Scale) -> (Vec<Load>, Vec<Load>) {
    let server = Server::bind(&ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: url.to_owned(),
        force_plain: false,
        session_ttl: DEFAULT_SESSION_TTL,
        // Enrolling one device per connection from one address.
        login_limits: LoginLimits {
            per_address: 10_000,
            ..LoginLimits::default()
        },
        tls: TlsSetting::Off,
        keys: coffer_server::testing::keyring(),
        adopt_unkeyed_audit: false,
        trusted_proxies: Default::default(),
        shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
    })
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let token = server.setup_token().unwrap().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let post = |path: &str, body: Value, auth: Option<String>| {
        let mut r = client.post(format!("{base}{path}")).json(&body);
        if let Some(a) = auth {
            r = r.header("X-Auth-Token", a);
        }
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let password = "correct horse battery";
    let org = post(
        "/v1/setup",
        json!({"setup_token": token, "organization": "Bench", "owner": "alice", "password": password}),
        None,
    )
    .await["organization_id"]
        .as_i64()
        .unwrap();
    let session = post(
        "/v1/login",
        json!({"user": "alice", "password": password}),
        None,
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut devices = Vec::new();
    for i in 0..CONCURRENCY {
        let code = post(
            &format!("/v1/orgs/{org}/enrollment-codes"),
            json!({}),
            Some(session.clone()),
        )
        .await["code"]
            .as_str()
            .unwrap()
            .to_owned();
        let device = post(
            "/v1/enroll",
            json!({"code": code, "name": format!("bench-{i}")}),
            None,
        )
        .await["device_token"]
            .as_str()
            .unwrap()
            .to_owned();
        devices.push(device);
    }

    let (mut ceiling, mut device_runs) = (Vec::new(), Vec::new());
    // A warm-up, then interleaved rounds.
    let get = reqwest::Method::GET;
    load(
        &client,
        get.clone(),
        &format!("{base}/healthz"),
        &[],
        CONCURRENCY * 4,
    )
    .await;
    for _ in 0..scale.rounds {
        ceiling.push(
            load(
                &client,
                get.clone(),
                &format!("{base}/healthz"),
                &[],
                scale.server_requests,
            )
            .await,
        );
        device_runs.push(
            load(
                &client,
                reqwest::Method::POST,
                &format!("{base}/v1/device/check-in"),
                &devices,
                scale.server_requests,
            )
            .await,
        );
    }
    let _ = stop.send(());
    let _ = running.await;
    (ceiling, device_runs)
}

fn median_by(runs: &[Load], f: impl Fn(&Load) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn run(scale: &Scale) -> Vec<Section> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut table = "| storage | request | requests/s | p50 | p99 | share of the ceiling |\n|---|---|---|---|---|---|\n".to_owned();
    let mut goals = Vec::new();
    for backend in ["SQLite", "PostgreSQL"] {
        let dir = tempfile::tempdir().unwrap();
        let pg = (backend == "PostgreSQL").then(Postgres::start);
        let (ceiling, device) = runtime.block_on(async {
            let url = match &pg {
                Some(pg) => pg.database("bench").await,
                None => format!("sqlite://{}", dir.path().join("server.db").display()),
            };
            one_backend(&url, scale).await
        });
        let ms = |d: f64| format!("{:.2} ms", d * 1e3);
        let (c_rps, d_rps) = (
            median_by(&ceiling, |l| l.rps),
            median_by(&device, |l| l.rps),
        );
        let d_p99 = median_by(&device, |l| l.p99.as_secs_f64());
        table.push_str(&format!(
            "| {backend} | `GET /healthz` (the ceiling: no database work) | {c_rps:.0} | {} | {} | 100% |\n",
            ms(median_by(&ceiling, |l| l.p50.as_secs_f64())),
            ms(median_by(&ceiling, |l| l.p99.as_secs_f64())),
        ));
        table.push_str(&format!(
            "| {backend} | `POST /v1/device/check-in` (device token, last seen written, accounted) | {d_rps:.0} | {} | {} | {:.0}% |\n",
            ms(median_by(&device, |l| l.p50.as_secs_f64())),
            ms(d_p99),
            d_rps / c_rps * 100.0
        ));
        goals.push(format!(
            "{backend}: device check-ins at {:.0}% of the ceiling (goal ≥ 50%: {}); p99 {} (goal < 20 ms: {})",
            d_rps / c_rps * 100.0,
            if d_rps / c_rps >= 0.5 { "met" } else { "missed" },
            ms(d_p99),
            if d_p99 < 0.020 { "met" } else { "missed" },
        ));
        let _ = (goal, ratio);
        drop(pg);
    }
    vec![Section {
        title: "Server: device check-ins vs the ceiling, 64 connections".into(),
        setup: format!(
            "{} requests per run, {CONCURRENCY} concurrent connections (one enrolled device each) from a Rust client in the same process (it shares the machine's {} cores with the server), {} interleaved rounds, medians. A check-in looks the device token up, writes the device's last-seen time and address, reads its pending wipe orders, the policy version and whether its escrow key is held, and accounts the request (an insert). Plain HTTP on loopback (no TLS handshake cost).",
            scale.server_requests,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            scale.rounds
        ),
        table,
        goals,
    }]
}
