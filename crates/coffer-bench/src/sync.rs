//! Record sync (docs/protocol.md, section 8) against a real `coffer serve`
//! (in process, SQLite, plain HTTP on loopback), the device in a child
//! process so that its peak RSS is its own:
//!
//! - a push of M local changes (a device that wrote them before it
//!   enrolled), timed from the round's start to the last push answer;
//! - an initial pull of N records of about 1 KiB by a new device: records
//!   per second, requests made, the device's peak RSS;
//! - the same pull killed (SIGKILL) at about half way and started again:
//!   the records and pages it fetched twice.
//!
//! The feed the pulls read is the push's M records and N − M more that
//! this process pushes straight to `POST /v1/device/sync/{app}/push` in
//! batches of 1,000, both from devices whose author an admin bound (so
//! that nothing is provisional). The child is this binary run again with
//! the hidden first argument [`CHILD`].

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coffer_agent::{Agent, Connector, Server as ControlPlane, SyncObserver, Transport, Trust};
use coffer_device::{Capabilities, KdfParams, Passphrase, Space};
use coffer_server::{LoginLimits, ServeConfig, Server, TlsSetting, DEFAULT_SESSION_TTL};
use serde_json::{json, Value};

use crate::measure::{mib, peak_rss_kib, reset_peak_rss};
use crate::{Scale, Section};

/// The hidden first argument that makes this binary a sync device.
pub(crate) const CHILD: &str = "__sync-device";
/// The app that syncs.
const APP: &str = "cases";
const PASSPHRASE: &str = "bench passphrase 1";
/// Records per pull page at this body size (the page's record bound,
/// `MAX_PULL_RECORDS`; 1,000 bodies of 1 KiB stay under its byte bound).
const PAGE: u64 = coffer_protocol::sync::MAX_PULL_RECORDS as u64;

/// A body of about 1 KiB, different for every record.
fn body(i: u64) -> Value {
    let filler: String = (0..900)
        .map(|k| char::from(b'a' + ((i + k) % 26) as u8))
        .collect();
    json!({
        "name": format!("case {i}"),
        "district": format!("district {}", i % 97),
        "opened": 1_790_000_000 + i,
        "notes": filler,
        "tags": ["field", "bench"],
    })
}

fn kdf() -> KdfParams {
    // Vault creation and unlock are not what is measured.
    KdfParams::Argon2id {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    }
}

// --- The device (the child process) ---

/// Counts the requests a device makes (and, when told, says on stdout
/// each pull it is about to send, so that a kill's parent knows).
struct Counting {
    inner: coffer_agent::http::ReqwestConnector,
    requests: Arc<AtomicU64>,
    pulls: Arc<AtomicU64>,
    announce: bool,
}

struct CountingTransport {
    inner: Box<dyn Transport>,
    requests: Arc<AtomicU64>,
    pulls: Arc<AtomicU64>,
    announce: bool,
}

impl Connector for Counting {
    fn connect(&self, server: &ControlPlane) -> Result<Box<dyn Transport>, coffer_agent::Error> {
        Ok(Box::new(CountingTransport {
            inner: self.inner.connect(server)?,
            requests: Arc::clone(&self.requests),
            pulls: Arc::clone(&self.pulls),
            announce: self.announce,
        }))
    }
}

impl Transport for CountingTransport {
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
        max_answer: usize,
    ) -> Result<http::Response<Vec<u8>>, coffer_agent::TransportError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if request.uri().path().ends_with("/changes") {
            self.pulls.fetch_add(1, Ordering::Relaxed);
            if self.announce {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "pull");
                let _ = out.flush();
            }
        }
        self.inner.send(request, max_answer)
    }
}

/// Notes when the last push answer came, and says each applied page.
struct Watch {
    started: Instant,
    pushed_at: Option<f64>,
    announce: bool,
}

impl SyncObserver for Watch {
    fn pushed(&mut self, _app: &str, done: u64, total: u64) {
        if done >= total {
            self.pushed_at = Some(self.started.elapsed().as_secs_f64());
        }
    }
    fn pulled(&mut self, _app: &str, records: u64) {
        if self.announce {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "applied {records}");
            let _ = out.flush();
        }
    }
}

fn passphrase() -> Passphrase {
    Passphrase::new(PASSPHRASE.into()).unwrap()
}

/// The child: `__sync-device push URL CODE DIR CHANGES`, `pull URL CODE
/// DIR [announce]` or `resume URL DIR`. Prints `enrolled <device id>` once
/// enrolled (a push then waits for a line on stdin: the parent binds its
/// author), and at the end `result <json>`.
pub(crate) fn child(args: &[String]) {
    let mode = args[0].as_str();
    let requests = Arc::new(AtomicU64::new(0));
    let pulls = Arc::new(AtomicU64::new(0));
    let announce = args.last().is_some_and(|a| a == "announce");
    let agent = Agent::with_connector(Arc::new(Counting {
        inner: coffer_agent::http::ReqwestConnector::default(),
        requests: Arc::clone(&requests),
        pulls: Arc::clone(&pulls),
        announce,
    }));
    let url = &args[1];
    let secret = coffer_agent::UnlockSecret::Passphrase(passphrase());
    let (vault, cursor_before) = if mode == "resume" {
        let space = Space::new(Path::new(&args[2]));
        let vault = agent
            .unlock(&space.vault("device").unwrap(), &secret)
            .unwrap();
        let cursor = vault
            .app(APP)
            .unwrap()
            .records()
            .unwrap()
            .sync_state()
            .unwrap()
            .cursor;
        (vault, cursor)
    } else {
        let (code, dir) = (&args[2], Path::new(&args[3]));
        let space = Space::new(dir);
        let author = if mode == "push" { "alice" } else { "bob" };
        let vault = space
            .create_vault("device", author, &passphrase(), &kdf())
            .unwrap();
        if mode == "push" {
            vault.add_app(APP, Capabilities::all()).unwrap();
            let changes: u64 = args[4].parse().unwrap();
            let mut records = vault.app(APP).unwrap().records().unwrap();
            for i in 0..changes {
                records
                    .put("cases", &format!("p-{i}"), &body(i), None)
                    .unwrap();
            }
        }
        let control = ControlPlane::new(url, Trust::System).unwrap();
        let (enrolled, vault) = agent
            .enroll(
                vault,
                &control,
                code.as_str().into(),
                &format!("{mode}-{}", std::process::id()),
            )
            .unwrap();
        println!("enrolled {}", enrolled.device_id);
        std::io::stdout().flush().unwrap();
        if mode == "push" {
            let mut go = String::new();
            std::io::stdin().read_line(&mut go).unwrap();
        }
        (vault, None)
    };
    requests.store(0, Ordering::Relaxed);
    pulls.store(0, Ordering::Relaxed);
    reset_peak_rss();
    let mut watch = Watch {
        started: Instant::now(),
        pushed_at: None,
        announce,
    };
    let (report, vault) = agent.sync(vault, &mut watch).unwrap();
    let secs = watch.started.elapsed().as_secs_f64();
    let app = report.apps.iter().find(|a| a.app == APP).unwrap();
    let result = json!({
        "secs": secs,
        "push_secs": watch.pushed_at,
        "applied": app.applied,
        "rejected": app.rejected.len(),
        "pulled": app.pulled,
        "pages": app.pages,
        "requests": requests.load(Ordering::Relaxed),
        "pull_requests": pulls.load(Ordering::Relaxed),
        "rss_kib": peak_rss_kib(),
        "cursor_before": cursor_before,
        "cursor": app.state.cursor,
        "complete": app.state.complete,
        "pending": app.state.pending,
    });
    drop(vault);
    println!("result {result}");
}

/// A running child device.
struct Device {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Device {
    fn start(args: &[&str]) -> Device {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg(CHILD)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Device { child, lines }
    }

    /// The next line of output.
    fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("the sync device ended early")
            .unwrap()
    }

    fn enrolled(&mut self) -> i64 {
        let line = self.line();
        line.strip_prefix("enrolled ")
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap()
    }

    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The final result (lines before it are skipped).
    fn result(mut self) -> Value {
        loop {
            let line = self.line();
            if let Some(json) = line.strip_prefix("result ") {
                let value = serde_json::from_str(json).unwrap();
                assert!(self.child.wait().unwrap().success());
                return value;
            }
        }
    }
}

// --- The server and the parent ---

/// The organization's owner, logged in (also used by the files sync rows).
pub(crate) struct Admin {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) org: i64,
    pub(crate) user_id: i64,
    pub(crate) session: String,
}

impl Admin {
    pub(crate) async fn post(&self, path: &str, body: Value, token: Option<&str>) -> Value {
        let mut r = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            r = r.header("X-Auth-Token", t);
        }
        let response = r.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub(crate) async fn code(&self) -> String {
        let path = format!("/v1/orgs/{}/enrollment-codes", self.org);
        self.post(&path, json!({}), Some(&self.session)).await["code"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub(crate) async fn bind(&self, device_id: i64, author: &str) {
        let path = format!("/v1/orgs/{}/sync/authors/bind", self.org);
        let body = json!({"device_id": device_id, "author": author, "user_id": self.user_id});
        self.post(&path, body, Some(&self.session)).await;
    }
}

/// Sets the server up (organization "Bench", owner alice), logs in and
/// publishes a policy whose `sync` lists [`APP`]; `http` is the client to
/// reach the server with (one that trusts its certificate, over TLS).
pub(crate) async fn admin(http: reqwest::Client, base: String, setup_token: String) -> Admin {
    let mut admin = Admin {
        http,
        base,
        org: 0,
        user_id: 0,
        session: String::new(),
    };
    let password = "correct horse battery";
    let setup = admin
        .post(
            "/v1/setup",
            json!({"setup_token": setup_token, "organization": "Bench", "owner": "alice", "password": password}),
            None,
        )
        .await;
    admin.org = setup["organization_id"].as_i64().unwrap();
    admin.user_id = setup["user_id"].as_i64().unwrap();
    admin.session = admin
        .post(
            "/v1/login",
            json!({"user": "alice", "password": password}),
            None,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/orgs/{}/policies", admin.org);
    admin
        .post(
            &path,
            json!({"version": 1, "rules": {"sync": [APP]}}),
            Some(&admin.session),
        )
        .await;
    admin
}

/// Pushes records `from..to` straight to the push endpoint, as a device
/// whose author is bound, in batches of 1,000, two at a time.
async fn seed(admin: &Admin, from: u64, to: u64) {
    let enrolled = admin
        .post(
            "/v1/enroll",
            json!({"code": admin.code().await, "name": "seeder"}),
            None,
        )
        .await;
    let token = enrolled["device_token"].as_str().unwrap().to_owned();
    admin
        .bind(enrolled["device_id"].as_i64().unwrap(), "seeder")
        .await;
    let origin = "5eed".repeat(8);
    let url = format!("{}/v1/device/sync/{APP}/push", admin.base);
    let mut running = tokio::task::JoinSet::new();
    let mut start = from;
    while start < to {
        let end = (start + PAGE).min(to);
        let ops: Vec<Value> = (start..end)
            .map(|i| {
                json!({"collection": "cases", "id": format!("s-{i}"),
                       "revision": format!("{origin}.{}", i + 1), "body": body(i), "author": "seeder"})
            })
            .collect();
        let request = admin
            .http
            .post(&url)
            .header("X-Auth-Token", &token)
            .json(&json!({"batch_id": format!("seed-{start}"), "ops": ops}));
        running.spawn(async move {
            let answer: Value = request.send().await.unwrap().json().await.unwrap();
            let results = answer["results"].as_array().unwrap();
            assert!(
                results.iter().all(|r| r["outcome"] == "applied"),
                "{}",
                results[0]
            );
        });
        if running.len() >= 2 {
            running.join_next().await.unwrap().unwrap();
        }
        start = end;
    }
    while let Some(done) = running.join_next().await {
        done.unwrap();
    }
}

fn field(v: &Value, name: &str) -> f64 {
    v[name].as_f64().unwrap_or(f64::NAN)
}

fn cursor_seq(v: &Value, name: &str) -> Option<u64> {
    // The cursor is opaque to a device; the benchmark reads it to learn
    // how far the killed pull had applied (the feed's sequences are
    // 1..=N here, one per record).
    v[name]
        .as_str()
        .and_then(coffer_protocol::sync::decode_cursor)
        .map(|(seq, _)| seq)
}

pub(crate) fn run(scale: &Scale) -> Vec<Section> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (n, m) = (
        scale.sync_records,
        scale.sync_changes.min(scale.sync_records),
    );
    let server = runtime
        .block_on(Server::bind(&ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("server.db").display()),
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
    let base = format!("http://{}", server.local_addr().unwrap());
    let setup_token = server.setup_token().unwrap().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = runtime.spawn(server.run(async {
        let _ = stopped.await;
    }));
    let admin = runtime.block_on(admin(reqwest::Client::new(), base.clone(), setup_token));
    let device_dir = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d.display().to_string()
    };

    // (c) The push: M changes written offline, then one round.
    eprintln!("  sync: push of {m} local changes…");
    let code = runtime.block_on(admin.code());
    let push_dir = device_dir("push");
    let mut pusher = Device::start(&["push", &base, &code, &push_dir, &m.to_string()]);
    let device_id = pusher.enrolled();
    runtime.block_on(admin.bind(device_id, "alice"));
    pusher.go();
    let push = pusher.result();
    assert_eq!(push["applied"].as_u64(), Some(m), "{push}");
    let push_secs = field(&push, "push_secs");

    // The rest of the feed.
    eprintln!("  sync: seeding {} more records…", n - m);
    let (_, seed_time) = crate::measure::time(|| runtime.block_on(seed(&admin, m, n)));

    // (a) The initial pull.
    eprintln!("  sync: initial pull of {n} records…");
    let code = runtime.block_on(admin.code());
    let pull = Device::start(&["pull", &base, &code, &device_dir("pull")]).result();
    assert_eq!(pull["pulled"].as_u64(), Some(n), "{pull}");
    assert_eq!(pull["complete"].as_bool(), Some(true), "{pull}");
    let pull_rate = n as f64 / field(&pull, "secs");
    let full_pages = pull["pull_requests"].as_u64().unwrap_or(0);
    let rss = pull["rss_kib"].as_u64();

    // (b) Killed at half way, started again.
    eprintln!("  sync: the same pull, killed at half way…");
    let code = runtime.block_on(admin.code());
    let kill_dir = device_dir("killed");
    let mut killed = Device::start(&["pull", &base, &code, &kill_dir, "announce"]);
    let mut sent_before = 0u64;
    let mut applied_seen: u64;
    loop {
        let line = killed.line();
        if line == "pull" {
            sent_before += 1;
        } else if let Some(k) = line.strip_prefix("applied ") {
            applied_seen = k.parse().unwrap();
            if applied_seen >= n / 2 {
                killed.child.kill().unwrap();
                break;
            }
        }
    }
    // What it had said before the signal landed.
    for line in killed.lines.by_ref() {
        match line.as_deref() {
            Ok("pull") => sent_before += 1,
            Ok(l) if l.starts_with("applied ") => applied_seen = l[8..].parse().unwrap(),
            _ => {}
        }
    }
    let _ = killed.child.wait();
    let resumed = Device::start(&["resume", &base, &kill_dir]).result();
    assert_eq!(resumed["complete"].as_bool(), Some(true), "{resumed}");
    let kept = cursor_seq(&resumed, "cursor_before");
    let final_seq = cursor_seq(&pull, "cursor");
    let pulled_after = resumed["pulled"].as_u64().unwrap_or(0);
    let sent_after = resumed["pull_requests"].as_u64().unwrap_or(0);
    let extra_pages = (sent_before + sent_after).saturating_sub(full_pages);
    // Records the restart fetched that the killed run had applied.
    let again = match (kept, final_seq) {
        (Some(k), Some(end)) if end == n => Some((k + pulled_after).saturating_sub(n)),
        _ => None,
    };

    let _ = stop.send(());
    let _ = runtime.block_on(running);

    let mut table = "| row | measured | goal |\n|---|---|---|\n".to_owned();
    let met = |ok: bool| if ok { "met" } else { "missed" };
    table.push_str(&format!(
        "| initial pull of {n} records of ~1 KiB | {pull_rate:.0} records/s ({:.1} s) | ≥ 20,000 records/s: {} |\n",
        field(&pull, "secs"),
        met(pull_rate >= 20_000.0)
    ));
    table.push_str(&format!(
        "| requests of that pull | {full_pages} pull requests, {} in all (with the check-in) | ≤ {}: {} |\n",
        pull["requests"],
        n.div_ceil(1000),
        met(full_pages <= n.div_ceil(1000))
    ));
    table.push_str(&format!(
        "| the device's peak RSS during that pull | {} | < 100 MiB: {} |\n",
        mib(rss),
        met(rss.is_some_and(|k| k < 100 * 1024))
    ));
    table.push_str(&format!(
        "| the pull killed (SIGKILL) after {applied_seen} records applied, then started again | {} records kept, {pulled_after} pulled after the restart; {} records fetched twice, {extra_pages} pages more than an uninterrupted pull | at most one page: {} |\n",
        kept.map_or("?".into(), |k| k.to_string()),
        again.map_or("?".into(), |a| a.to_string()),
        met(extra_pages <= 1 && again.is_some_and(|a| a <= PAGE))
    ));
    let push_rate = m as f64 / push_secs;
    table.push_str(&format!(
        "| push of {m} local changes | {push_rate:.0} changes/s ({push_secs:.1} s; the round's pull of them back took {:.1} s more) | ≥ 20,000 changes/s: {} |\n",
        field(&push, "secs") - push_secs,
        met(push_rate >= 20_000.0)
    ));
    let goals = vec![
        format!(
            "initial pull: {pull_rate:.0} records/s, goal ≥ 20,000: {}",
            met(pull_rate >= 20_000.0)
        ),
        format!(
            "device peak RSS: {}, goal < 100 MiB: {}",
            mib(rss),
            met(rss.is_some_and(|k| k < 100 * 1024))
        ),
        format!(
            "pull requests: {full_pages}, goal ≤ {}: {}",
            n.div_ceil(1000),
            met(full_pages <= n.div_ceil(1000))
        ),
        format!(
            "killed at half way: {extra_pages} extra pages, {} records fetched twice, goal at most one page: {}",
            again.map_or("?".into(), |a| a.to_string()),
            met(extra_pages <= 1 && again.is_some_and(|a| a <= PAGE))
        ),
        format!(
            "push: {push_rate:.0} changes/s, goal ≥ 20,000: {}",
            met(push_rate >= 20_000.0)
        ),
    ];
    vec![Section {
        title: format!("Record sync: initial pull of {n} records, push of {m} changes"),
        setup: format!(
            "An in-process `coffer serve` on SQLite, plain HTTP on loopback; the organization's signed policy lists the app in `sync`. Each device is a child process (this binary run again) with its own vault, enrolled, syncing through `coffer_agent::Agent::sync` (one round: check-in, push, pull until the end of the feed) over the default reqwest transport wrapped to count requests; its peak RSS is its VmHWM from the round's start. Bodies are JSON of about 1 KiB. The feed: the push row's {m} records, and {} more pushed straight to the push endpoint in batches of 1,000 ({:.1} s, {:.0} records/s, not a goal). A pull page holds 1,000 records. The kill row counts a page as fetched twice if the killed run had requested it. One run each (no rounds: a pull of the whole feed is the measurement).",
            n - m,
            seed_time.as_secs_f64(),
            (n - m) as f64 / seed_time.as_secs_f64()
        ),
        table,
        goals,
    }]
}
