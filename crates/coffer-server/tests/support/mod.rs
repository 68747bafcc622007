//! Test support: a throwaway PostgreSQL server, and a running `coffer serve`.

#![allow(dead_code)]

pub mod postgres {
    pub use coffer_server::testing::Postgres;
}

use std::sync::{Arc, Mutex, OnceLock};

/// Every log line any server of this test process writes, at debug level.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(Arc::clone(&buffer));
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        buffer
    })
    .clone()
}

/// Every log line captured so far, as text.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&capture_logs().lock().unwrap()).into_owned()
}

/// Fails if any of `secrets` appears in the logs captured so far (and
/// checks that something was logged at all, so the scan means something).
pub fn assert_logs_free_of(secrets: &[&str]) {
    let logs = String::from_utf8_lossy(&capture_logs().lock().unwrap()).into_owned();
    assert!(logs.contains("login"), "the capture saw the server's logs");
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}

use coffer_server::{ServeConfig, Server};
use tokio::sync::oneshot;

/// A server running in this process on a free loopback port.
pub struct Running {
    pub base: String,
    pub setup_token: Option<String>,
    pub backend: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(database_url: &str) -> Running {
        Self::start_with_ttl(database_url, coffer_server::DEFAULT_SESSION_TTL).await
    }

    pub async fn start_with_ttl(database_url: &str, session_ttl: std::time::Duration) -> Running {
        Self::start_with(
            database_url,
            session_ttl,
            coffer_server::LoginLimits::default(),
        )
        .await
    }

    pub async fn start_with(
        database_url: &str,
        session_ttl: std::time::Duration,
        login_limits: coffer_server::LoginLimits,
    ) -> Running {
        Self::try_start(
            database_url,
            session_ttl,
            login_limits,
            coffer_server::testing::keyring(),
            false,
        )
        .await
        .unwrap()
    }

    /// A server behind a trusted proxy on loopback: every request may say
    /// which client it comes from in `X-Forwarded-For`.
    pub async fn behind_proxy(
        database_url: &str,
        login_limits: coffer_server::LoginLimits,
    ) -> Running {
        let proxies = coffer_server::client_addr::TrustedProxies::new(
            ["127.0.0.1/32".parse().unwrap()],
            coffer_server::client_addr::ForwardedHeader::XForwardedFor,
        );
        Self::try_start_behind(
            database_url,
            coffer_server::DEFAULT_SESSION_TTL,
            login_limits,
            coffer_server::testing::keyring(),
            false,
            proxies,
        )
        .await
        .unwrap()
    }

    /// A server under the master key(s) `keys`, or why it did not start.
    pub async fn with_keys(
        database_url: &str,
        keys: std::sync::Arc<coffer_server::keys::Keyring>,
    ) -> Result<Running, coffer_server::serve::ServeError> {
        Self::try_start(
            database_url,
            coffer_server::DEFAULT_SESSION_TTL,
            coffer_server::LoginLimits::default(),
            keys,
            false,
        )
        .await
    }

    /// A server that adopts an audit trail from before the master key.
    pub async fn adopting_unkeyed_audit(
        database_url: &str,
    ) -> Result<Running, coffer_server::serve::ServeError> {
        Self::try_start(
            database_url,
            coffer_server::DEFAULT_SESSION_TTL,
            coffer_server::LoginLimits::default(),
            coffer_server::testing::keyring(),
            true,
        )
        .await
    }

    async fn try_start(
        database_url: &str,
        session_ttl: std::time::Duration,
        login_limits: coffer_server::LoginLimits,
        keys: std::sync::Arc<coffer_server::keys::Keyring>,
        adopt_unkeyed_audit: bool,
    ) -> Result<Running, coffer_server::serve::ServeError> {
        Self::try_start_behind(
            database_url,
            session_ttl,
            login_limits,
            keys,
            adopt_unkeyed_audit,
            Default::default(),
        )
        .await
    }

    async fn try_start_behind(
        database_url: &str,
        session_ttl: std::time::Duration,
        login_limits: coffer_server::LoginLimits,
        keys: std::sync::Arc<coffer_server::keys::Keyring>,
        adopt_unkeyed_audit: bool,
        trusted_proxies: coffer_server::client_addr::TrustedProxies,
    ) -> Result<Running, coffer_server::serve::ServeError> {
        capture_logs();
        let server = Server::bind(&ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: database_url.to_owned(),
            force_plain: false,
            session_ttl,
            login_limits,
            tls: coffer_server::TlsSetting::Off,
            keys,
            adopt_unkeyed_audit,
            trusted_proxies,
            shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
        })
        .await?;
        let base = format!("http://{}", server.local_addr().unwrap());
        Ok(Running::run(server, base))
    }

    /// Runs a bound server on its own task, reached at `base`.
    pub fn run(server: Server, base: String) -> Running {
        let setup_token = server.setup_token().map(str::to_owned);
        let backend = server.backend();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Running {
            base,
            setup_token,
            backend,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A server configured by `configure` (blob storage, file limits…)
    /// before it runs.
    pub async fn start_configured(
        database_url: &str,
        configure: impl FnOnce(Server) -> Server,
    ) -> Running {
        capture_logs();
        let server = Server::bind(&ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: database_url.to_owned(),
            force_plain: false,
            session_ttl: coffer_server::DEFAULT_SESSION_TTL,
            login_limits: coffer_server::LoginLimits::default(),
            tls: coffer_server::TlsSetting::Off,
            keys: coffer_server::testing::keyring(),
            adopt_unkeyed_audit: false,
            trusted_proxies: Default::default(),
            shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
        })
        .await
        .unwrap();
        let server = configure(server);
        let base = format!("http://{}", server.local_addr().unwrap());
        Running::run(server, base)
    }

    /// A server over TLS with a development certificate made in
    /// `tls_dir` (`dev-tls-cert.pem` there), at `https://localhost:PORT`.
    #[allow(dead_code)]
    pub async fn start_dev_tls(database_url: &str, tls_dir: std::path::PathBuf) -> Running {
        capture_logs();
        let server = Server::bind(&ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: database_url.to_owned(),
            force_plain: false,
            session_ttl: coffer_server::DEFAULT_SESSION_TTL,
            login_limits: coffer_server::LoginLimits::default(),
            tls: coffer_server::TlsSetting::Dev { dir: tls_dir },
            keys: coffer_server::testing::keyring(),
            adopt_unkeyed_audit: false,
            trusted_proxies: Default::default(),
            shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
        })
        .await
        .unwrap();
        let base = format!("https://localhost:{}", server.local_addr().unwrap().port());
        Running::run(server, base)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

use reqwest::StatusCode;
use serde_json::{json, Value};

/// The `code` of an error answer.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

pub async fn login(
    server: &Running,
    http: &reqwest::Client,
    user: &str,
    password: &str,
) -> Result<String, String> {
    let r = http
        .post(server.url("/v1/login"))
        .json(&json!({"user": user, "password": password}))
        .send()
        .await
        .unwrap();
    if r.status() == StatusCode::OK {
        let body: Value = r.json().await.unwrap();
        Ok(body["token"].as_str().unwrap().to_owned())
    } else {
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        Err(error_code(r).await)
    }
}

pub async fn add_people(url: &str, acme: i64) {
    let db = coffer_server::Store::open(url).await.unwrap();
    let hash = coffer_server::api::hash_password("correct horse battery").unwrap();
    db.execute_for_tests(&format!(
        "INSERT INTO organizations (name, created_at) VALUES ('Other Org', 0);
         INSERT INTO users (name, password_hash, created_at) VALUES ('bob', '{hash}', 0);
         INSERT INTO users (name, password_hash, created_at) VALUES ('carol', '{hash}', 0);
         INSERT INTO memberships (org_id, user_id, role)
             SELECT o.id, u.id, 'owner' FROM organizations o, users u WHERE o.name = 'Other Org' AND u.name = 'bob';
         INSERT INTO memberships (org_id, user_id, role)
             SELECT {acme}, u.id, 'member' FROM users u WHERE u.name = 'carol';"
    ))
    .await
    .unwrap();
}

pub async fn post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: Value,
) -> reqwest::Response {
    http.post(url)
        .header("x-auth-token", token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub async fn get(http: &reqwest::Client, url: String, token: &str) -> reqwest::Response {
    http.get(url)
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap()
}

/// The whole enrollment answer for a device enrolled into `org` with a
/// code from `admin`.
pub async fn enrollment(
    server: &Running,
    http: &reqwest::Client,
    org: i64,
    admin: &str,
    name: &str,
) -> Value {
    let code = post(
        http,
        server.url(&format!("/v1/orgs/{org}/enrollment-codes")),
        admin,
        json!({}),
    )
    .await
    .json::<Value>()
    .await
    .unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http
        .post(server.url("/v1/enroll"))
        .json(&json!({"code": code, "name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

/// Sets the server up: organization "Acme", owner alice; returns its id.
pub async fn set_up(server: &Running, http: &reqwest::Client) -> i64 {
    let r = http
        .post(server.url("/v1/setup"))
        .json(&json!({
            "setup_token": server.setup_token.clone().unwrap(),
            "organization": "Acme",
            "owner": "alice",
            "password": "correct horse battery",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["organization_id"]
        .as_i64()
        .unwrap()
}

/// Runs the futures concurrently (each on its own task) and returns their
/// outputs in order.
pub async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}
