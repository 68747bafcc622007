//! The server's life on its host: the files it makes are private and it
//! refuses to start on exposed ones; on shutdown it drains the requests in
//! flight (for a bounded time) and closes the database; behind a trusted
//! proxy, the client is the address the proxy forwarded for.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_server::client_addr::{ForwardedHeader, TrustedProxies};
use coffer_server::serve::{ServeError, DEFAULT_SHUTDOWN_GRACE};
use coffer_server::{LoginLimits, ServeConfig, Server, TlsSetting, DEFAULT_SESSION_TTL};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(database: &Path) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", database.display()),
        force_plain: false,
        session_ttl: DEFAULT_SESSION_TTL,
        login_limits: LoginLimits::default(),
        tls: TlsSetting::Off,
        keys: coffer_server::testing::keyring(),
        adopt_unkeyed_audit: false,
        trusted_proxies: TrustedProxies::default(),
        shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
    }
}

/// A server running in this task's runtime until `stop` is sent.
struct Running {
    addr: std::net::SocketAddr,
    setup_token: Option<String>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    async fn start(config: &ServeConfig) -> Result<Running, ServeError> {
        let server = Server::bind(config).await?;
        let addr = server.local_addr().unwrap();
        let setup_token = server.setup_token().map(str::to_owned);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Ok(Running {
            addr,
            setup_token,
            stop,
            task,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops it and waits until it has drained and closed its storage.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn wal(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db.display()))
}

fn shm(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-shm", db.display()))
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn setup_body(token: &str) -> Value {
    json!({
        "setup_token": token,
        "organization": "Acme Relief",
        "owner": "alice",
        "password": "correct horse battery",
    })
}

/// The WAL has been checkpointed into the database and removed (or left
/// empty): nothing of the database lives only in it.
fn assert_checkpointed(db: &Path) {
    let wal = wal(db);
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0,
        "the WAL was not checkpointed at shutdown"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_is_private_and_an_exposed_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Directories that do not exist yet are made 0700.
    let data = dir.path().join("data");
    let db = data.join("deeper/server.db");
    let server = Running::start(&config(&db)).await.unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(db.parent().unwrap()), 0o700);
    assert_eq!(mode(&db), 0o600);
    // A write: SQLite makes its -wal and -shm files, as private as the
    // database.
    let r = reqwest::Client::new()
        .post(server.url("/v1/setup"))
        .json(&setup_body(server.setup_token.as_deref().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(std::fs::metadata(wal(&db)).unwrap().len() > 0);
    assert_eq!(mode(&wal(&db)), 0o600);
    assert_eq!(mode(&shm(&db)), 0o600);
    server.stop().await;
    assert_checkpointed(&db);

    // A database others can read (as earlier versions made them) is
    // refused before anything opens it, with the fix in the message.
    chmod(&db, 0o644);
    let refused = Running::start(&config(&db)).await.err().unwrap();
    let message = refused.to_string();
    match refused {
        ServeError::DatabaseFileExposed { path, mode } => {
            assert_eq!(path, db);
            assert_eq!(mode, 0o644);
        }
        other => panic!("not DatabaseFileExposed: {other:?}"),
    }
    assert!(
        message.contains(&format!("chmod 600 {}", db.display())),
        "{message}"
    );
    // Writable by the group is no better.
    chmod(&db, 0o620);
    assert!(matches!(
        Running::start(&config(&db)).await,
        Err(ServeError::DatabaseFileExposed { mode: 0o620, .. })
    ));
    // Made private, it starts.
    chmod(&db, 0o600);
    Running::start(&config(&db)).await.unwrap().stop().await;

    // The WAL and shared-memory files too.
    for companion in [wal(&db), shm(&db)] {
        std::fs::write(&companion, b"").unwrap();
        chmod(&companion, 0o644);
        match Running::start(&config(&db)).await.err().unwrap() {
            ServeError::DatabaseFileExposed { path, mode: 0o644 } => assert_eq!(path, companion),
            other => panic!("not DatabaseFileExposed: {other:?}"),
        }
        chmod(&companion, 0o600);
    }
    Running::start(&config(&db)).await.unwrap().stop().await;

    // A directory others can write to (they could replace the database) is
    // refused; a sticky one (as /tmp) only warned about, as is one that
    // others can list.
    let parent = db.parent().unwrap();
    for exposed in [0o777, 0o770, 0o702] {
        chmod(parent, exposed);
        match Running::start(&config(&db)).await.err().unwrap() {
            ServeError::DatabaseDirectoryExposed { path, mode } => {
                assert_eq!(path, parent);
                assert_eq!(mode, exposed);
            }
            other => panic!("not DatabaseDirectoryExposed: {other:?}"),
        }
    }
    for tolerated in [0o1777, 0o755, 0o700] {
        chmod(parent, tolerated);
        Running::start(&config(&db)).await.unwrap().stop().await;
    }
    chmod(parent, 0o700);
}

/// Sends the head of `POST path` and the first `sent` bytes of `body`.
async fn begin_post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    sent: usize,
) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..sent]).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_requests_in_flight_then_closes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let server = Running::start(&config(&db)).await.unwrap();
    let body = serde_json::to_vec(&setup_body(server.setup_token.as_deref().unwrap())).unwrap();
    // A setup request in flight: its body only half sent.
    let mut in_flight = begin_post(server.addr, "/v1/setup", &body, body.len() / 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (addr, task) = (server.addr, server.task);
    let _ = server.stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new connections...
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(!task.is_finished(), "the server waits for its request");
    // ...but the request in flight is answered as usual, and written.
    in_flight.write_all(&body[body.len() / 2..]).await.unwrap();
    let mut answer = String::new();
    in_flight.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains("organization_id"), "{answer}");
    task.await.unwrap().unwrap();
    assert_checkpointed(&db);
    let store = coffer_server::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    assert!(store.is_bootstrapped().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_lasts_the_grace_period_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let grace = Duration::from_millis(500);
    let server = Running::start(&ServeConfig {
        shutdown_grace: grace,
        ..config(&db)
    })
    .await
    .unwrap();
    // A client that never finishes its request, and an idle connection.
    let body = vec![b' '; 1000];
    let mut stalled = begin_post(server.addr, "/v1/login", &body, 10).await;
    let _idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.stop().await;
    let took = started.elapsed();
    assert!(took >= grace, "{took:?}");
    assert!(took < grace + Duration::from_secs(3), "{took:?}");
    // Its connection was closed without an answer.
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_checkpointed(&db);
}

async fn enroll_from(
    http: &reqwest::Client,
    server: &Running,
    code: &str,
    forwarded_for: &str,
) -> reqwest::Response {
    http.post(server.url("/v1/enroll"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"code": code, "name": "field laptop"}))
        .send()
        .await
        .unwrap()
}

async fn status_and_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_is_limited_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let limits = LoginLimits {
        per_address: 2,
        ..LoginLimits::default()
    };
    let http = reqwest::Client::new();
    let wrong = "0".repeat(48);

    // Without a trusted proxy, the header is the client's own word: ignored.
    // Every attempt here counts against 127.0.0.1, however it is labelled.
    let db = dir.path().join("direct.db");
    let direct = Running::start(&ServeConfig {
        login_limits: limits,
        ..config(&db)
    })
    .await
    .unwrap();
    for (i, spoof) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
        .iter()
        .enumerate()
    {
        let (status, code) =
            status_and_code(enroll_from(&http, &direct, &wrong, spoof).await).await;
        if i < 2 {
            assert_eq!((status, code.as_str()), (401, "invalid_code"));
        } else {
            assert_eq!((status, code.as_str()), (429, "rate_limited"));
        }
    }
    direct.stop().await;

    // Behind the proxy on 127.0.0.1, the client is the address it forwarded
    // for: one client reaching the limit does not block another.
    let db = dir.path().join("proxied.db");
    let proxied = Running::start(&ServeConfig {
        login_limits: limits,
        trusted_proxies: TrustedProxies::new(
            ["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            ForwardedHeader::XForwardedFor,
        ),
        ..config(&db)
    })
    .await
    .unwrap();
    // What the client wrote itself (left of what the proxies added) is not
    // believed: these are all 203.0.113.1, through two proxies.
    for spoof in [
        "198.51.100.1, 203.0.113.1, 10.1.1.1",
        "198.51.100.2, 203.0.113.1",
    ] {
        let (status, code) =
            status_and_code(enroll_from(&http, &proxied, &wrong, spoof).await).await;
        assert_eq!((status, code.as_str()), (401, "invalid_code"));
    }
    let (status, code) =
        status_and_code(enroll_from(&http, &proxied, &wrong, "203.0.113.1").await).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    let (status, code) =
        status_and_code(enroll_from(&http, &proxied, &wrong, "203.0.113.2").await).await;
    assert_eq!((status, code.as_str()), (401, "invalid_code"));
    // A malformed header is the proxy's own address: counted, not refused.
    for garbage in ["not an address", "203.0.113.9, ::g"] {
        let (status, _) =
            status_and_code(enroll_from(&http, &proxied, &wrong, garbage).await).await;
        assert_eq!(status, 401);
    }
    let (status, _) = status_and_code(enroll_from(&http, &proxied, &wrong, "").await).await;
    assert_eq!(
        status, 429,
        "the third attempt from the proxy's own address"
    );

    // Login attempts too are counted per forwarded client.
    let login_from = |forwarded_for: &'static str| {
        http.post(proxied.url("/v1/login"))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({"user": "mallory", "password": "not the password"}))
            .send()
    };
    for expected in [401, 401, 429] {
        let r = login_from("203.0.113.50").await.unwrap();
        assert_eq!(r.status(), expected);
    }
    let r = login_from("203.0.113.51").await.unwrap();
    assert_eq!(r.status(), 401, "another client is not blocked");

    // The audit trail names the forwarded client.
    let setup_token = proxied.setup_token.clone().unwrap();
    let store = coffer_server::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let actors: Vec<String> = store
        .audit_rows()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event.action == "enrollment_failed")
        .map(|r| r.event.actor)
        .collect();
    assert_eq!(
        actors,
        [
            "anonymous@203.0.113.1",
            "anonymous@203.0.113.1",
            "anonymous@203.0.113.2",
            "anonymous@127.0.0.1",
            "anonymous@127.0.0.1",
        ]
    );

    // A device's check-in records the address it was forwarded for.
    let r = http
        .post(proxied.url("/v1/setup"))
        .json(&setup_body(&setup_token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let org = r.json::<Value>().await.unwrap()["organization_id"]
        .as_i64()
        .unwrap();
    let session = http
        .post(proxied.url("/v1/login"))
        .json(&json!({"user": "alice", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = http
        .post(proxied.url(&format!("/v1/orgs/{org}/enrollment-codes")))
        .header("x-auth-token", &session)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = enroll_from(&http, &proxied, &code, "192.0.2.77").await;
    assert_eq!(r.status(), 201);
    let device = r.json::<Value>().await.unwrap()["device_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http
        .post(proxied.url("/v1/device/check-in"))
        .header("x-auth-token", &device)
        .header("x-forwarded-for", "[2001:db8::77]:4711, 10.2.3.4")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let devices: Value = http
        .get(proxied.url(&format!("/v1/orgs/{org}/devices")))
        .header("x-auth-token", &session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        devices["devices"][0]["last_seen_address"], "2001:db8::77",
        "{devices}"
    );
    proxied.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_certificate_is_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let dev = ServeConfig {
        tls: TlsSetting::Dev { dir: tls.clone() },
        ..config(&dir.path().join("server.db"))
    };
    Running::start(&dev).await.unwrap().stop().await;
    assert_eq!(mode(&tls), 0o700);
    let key = tls.join("dev-tls-key.pem");
    assert_eq!(mode(&key), 0o600);
    chmod(&key, 0o640);
    match Running::start(&dev).await.err().unwrap() {
        ServeError::Tls(coffer_server::TlsError::KeyExposed { path, mode: 0o640 }) => {
            assert_eq!(path, key)
        }
        other => panic!("not KeyExposed: {other:?}"),
    }
    chmod(&key, 0o600);
    Running::start(&dev).await.unwrap().stop().await;
}
