//! The control plane's part of `coffer demo`: an embedded `coffer serve`
//! (SQLite, a development certificate, a new master key) in this process,
//! and the device's side run as the real commands (`coffer enroll`,
//! `login`, `deliver`, `check-in`) in child processes.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::exit::CliError;

/// What the tour shows, step by step.
pub struct Steps<'a> {
    pub step: &'a mut dyn FnMut(&str, String),
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::other(format!("demo: {what}: {e}"))
}

/// Runs the real `coffer` on the demo's vault `field`.
fn coffer(
    space: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(Option<i32>, Value), CliError> {
    let exe = std::env::current_exe().map_err(|e| failed("finding coffer", e))?;
    let mut command = Command::new(exe);
    command
        .arg("--json")
        .args(args)
        .env("COFFER_SPACE", space)
        .env("COFFER_VAULT", "field")
        .env_remove("COFFER_RECOVERY_KEY")
        .env_remove("COFFER_PASSPHRASE")
        .env_remove("COFFER_NEW_PASSPHRASE")
        .env_remove("COFFER_SERVER")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().map_err(|e| failed("running coffer", e))?;
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((out.status.code(), value))
}

pub fn tour(dir: &Path, space: &Path, steps: Steps<'_>) -> Result<(), CliError> {
    let step = steps.step;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failed("starting the runtime", e))?;
    let server_dir = dir.join("server");
    std::fs::create_dir_all(&server_dir).map_err(|e| failed("creating a directory", e))?;
    let (keys, _) =
        coffer_server::keys::MasterKey::generate().map_err(|e| failed("master key", e))?;
    let server = runtime
        .block_on(coffer_server::Server::bind(&coffer_server::ServeConfig {
            listen: "127.0.0.1:0".parse().map_err(|e| failed("address", e))?,
            database_url: format!("sqlite://{}", server_dir.join("server.db").display()),
            force_plain: false,
            session_ttl: coffer_server::DEFAULT_SESSION_TTL,
            login_limits: coffer_server::LoginLimits::default(),
            tls: coffer_server::TlsSetting::Dev {
                dir: server_dir.clone(),
            },
            keys: std::sync::Arc::new(coffer_server::keys::Keyring::new(keys, None)),
            adopt_unkeyed_audit: false,
        }))
        .map_err(|e| failed("starting the server", e))?;
    let addr = server.local_addr().map_err(|e| failed("address", e))?;
    let base = format!("https://{addr}");
    let fingerprint = server.tls_fingerprint().unwrap_or_default().to_owned();
    let setup_token = server.setup_token().unwrap_or_default().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = runtime.spawn(server.run(async {
        let _ = stopped.await;
    }));
    step(
        "Start a control plane (embedded: SQLite, a development TLS certificate, a new master key)",
        format!("{base}; certificate SHA-256 {fingerprint}"),
    );

    let result = device_story(&base, &fingerprint, &setup_token, &server_dir, space, step);
    let _ = stop.send(());
    let _ = runtime.block_on(running);
    result
}

fn device_story(
    base: &str,
    fingerprint: &str,
    setup_token: &str,
    server_dir: &Path,
    space: &Path,
    step: &mut dyn FnMut(&str, String),
) -> Result<(), CliError> {
    let pem =
        std::fs::read(server_dir.join("dev-tls-cert.pem")).map_err(|e| failed("certificate", e))?;
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&pem).map_err(|e| failed("certificate", e))?,
        )
        .build()
        .map_err(|e| failed("client", e))?;
    let api = |method: reqwest::Method,
               path: &str,
               token: Option<&str>,
               body: Value|
     -> Result<Value, CliError> {
        let mut request = http.request(method, format!("{base}{path}")).json(&body);
        if let Some(token) = token {
            request = request.header("X-Auth-Token", token);
        }
        crate::admin::answer(request.send())
    };
    let post = reqwest::Method::POST;
    let org = api(
        post.clone(),
        "/v1/setup",
        None,
        json!({
        "setup_token": setup_token, "organization": "Acme", "owner": "admin",
        "password": "admin's server password"}),
    )?["organization_id"]
        .as_i64()
        .unwrap_or_default();
    let admin = api(
        post.clone(),
        "/v1/login",
        None,
        json!({"user": "admin", "password": "admin's server password"}),
    )?["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let admin = Some(admin.as_str());
    api(
        post.clone(),
        &format!("/v1/orgs/{org}/users"),
        admin,
        json!({
        "user": "carol", "password": "carol's server password", "role": "member"}),
    )?;
    api(
        post.clone(),
        &format!("/v1/orgs/{org}/policies"),
        admin,
        json!({
        "version": 1, "rules": {"passphrase": {"min_length": 12}, "offline": {"block_after_hours": 72, "wipe_after_days": 30}}}),
    )?;
    let code = api(
        post.clone(),
        &format!("/v1/orgs/{org}/enrollment-codes"),
        admin,
        json!({}),
    )?["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    step(
        "Set up organization Acme: an owner, a member (carol), a signed policy (12-character passphrases, 72 h offline grace) and an enrollment code",
        format!("organization {org}"),
    );

    let alice = [("COFFER_PASSPHRASE", "alice: correct horse battery staple")];
    coffer(
        space,
        &["init", "--name", "alice", "--kdf-time-ms", "0"],
        &alice,
    )?;
    coffer(space, &["app", "add", "notes"], &alice)?;
    coffer(space, &["kv", "put", "notes", "greeting", "hello"], &alice)?;
    let (wrong, _) = coffer(
        space,
        &[
            "enroll",
            "--server",
            base,
            "--code",
            &code,
            "--pin-sha256",
            &"00".repeat(32),
        ],
        &alice,
    )?;
    let (status, enrolled) = coffer(
        space,
        &[
            "enroll",
            "--server",
            base,
            "--code",
            &code,
            "--pin-sha256",
            fingerprint,
        ],
        &alice,
    )?;
    step(
        "Enroll vault 'field' (made offline, with data), pinning the server's certificate",
        format!(
            "a wrong pin is refused before anything is sent (exit {}); with the right one: device {} of organization {}, policy version {} verified (exit {})",
            wrong.unwrap_or(-1),
            enrolled["device_id"], enrolled["organization_id"], enrolled["policy_version"], status.unwrap_or(-1)
        ),
    );

    let (status, _) = coffer(
        space,
        &["login", "--user", "carol", "--kdf-time-ms", "0"],
        &[
            ("COFFER_SERVER_PASSWORD", "carol's server password"),
            ("COFFER_NEW_PASSPHRASE", "short"),
        ],
    )?;
    let (_, login) = coffer(
        space,
        &["login", "--user", "carol", "--kdf-time-ms", "0"],
        &[
            ("COFFER_SERVER_PASSWORD", "carol's server password"),
            ("COFFER_NEW_PASSPHRASE", "carol: a long device passphrase"),
        ],
    )?;
    step(
        "carol, who has no slot on this device, logs in online",
        format!(
            "a too-short passphrase is refused by the policy (exit {}); then the server releases the escrow key to her and her own slot is {}",
            status.unwrap_or(-1),
            login["slot"].as_str().unwrap_or("?")
        ),
    );

    let reading = server_dir.join("reading.json");
    std::fs::write(
        &reading,
        r#"[{"at": 1795000000, "name": "temp.c", "value": 21}]"#,
    )
    .map_err(|e| failed("writing", e))?;
    let (_, delivered) = coffer(
        space,
        &["deliver", reading.to_str().unwrap_or_default()],
        &alice,
    )?;
    step("Deliver a reading", format!("{delivered}"));

    let device = enrolled["device_id"].as_i64().unwrap_or_default();
    api(
        post,
        &format!("/v1/orgs/{org}/devices/{device}/wipe"),
        admin,
        json!({}),
    )?;
    let (status, _) = coffer(space, &["check-in"], &alice)?;
    let orders = api(
        reqwest::Method::GET,
        &format!("/v1/orgs/{org}/devices/{device}/wipes"),
        admin,
        json!({}),
    )?;
    let (after, _) = coffer(space, &["verify"], &alice)?;
    step(
        "The device is lost: the admin orders a remote wipe; the device checks in",
        format!(
            "crypto-erased at the check-in (exit {}), acknowledged on the server ({}); the vault now reports itself wiped (exit {})",
            status.unwrap_or(-1),
            orders["orders"][0]["state"].as_str().unwrap_or("?"),
            after.unwrap_or(-1)
        ),
    );
    Ok(())
}
