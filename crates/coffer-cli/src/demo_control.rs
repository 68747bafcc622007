//! The control plane's part of `coffer demo`: an embedded `coffer serve`
//! (SQLite, a development certificate, a new master key) in this process,
//! and the device's side run as the real commands (`coffer enroll`,
//! `login`, `deliver`, `check-in`) in child processes.

use std::path::Path;
use std::process::{Command, Stdio};

use coffer_protocol::admin::{
    AddUser, EnrollmentCode, NewEnrollmentCode, OrderWipe, Setup, SetupAnswer, UserAdded,
    WipeOrdered, WipeOrders,
};
use coffer_protocol::policy::{OfflineRules, PassphraseRules, PublishRequest, Rules, SignedPolicy};
use coffer_protocol::session::{Login, LoginAnswer};
use coffer_protocol::Answer;
use secrecy::ExposeSecret;
use serde_json::Value;

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
            trusted_proxies: Default::default(),
            shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
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

/// Sends `request` to the demo's server, with a session `token` if given,
/// and decodes the answer.
fn call<T: Answer>(
    request: reqwest::blocking::RequestBuilder,
    token: Option<&str>,
) -> Result<T, CliError> {
    let request = match token {
        Some(token) => request.header(coffer_protocol::AUTH_HEADER, token),
        None => request,
    };
    crate::admin::answer(request.send())
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
    let post = |path: &str| http.post(format!("{base}{path}"));
    let set_up: SetupAnswer = call(
        post("/v1/setup").json(&Setup {
            setup_token: setup_token.into(),
            organization: "Acme".into(),
            owner: "admin".into(),
            password: "admin's server password".into(),
        }),
        None,
    )?;
    let org = set_up.organization_id;
    let session: LoginAnswer = call(
        post("/v1/login").json(&Login {
            user: "admin".into(),
            password: "admin's server password".into(),
        }),
        None,
    )?;
    let admin = Some(session.token.expose_secret());
    let _: UserAdded = call(
        post(&format!("/v1/orgs/{org}/users")).json(&AddUser {
            user: "carol".into(),
            password: "carol's server password".into(),
            role: "member".into(),
        }),
        admin,
    )?;
    let _: SignedPolicy = call(
        post(&format!("/v1/orgs/{org}/policies")).json(&PublishRequest {
            version: 1,
            rules: Rules {
                passphrase: PassphraseRules {
                    min_length: 12,
                    ..PassphraseRules::default()
                },
                offline: OfflineRules {
                    block_after_hours: 72,
                    wipe_after_days: 30,
                },
                ..Rules::default()
            },
        }),
        admin,
    )?;
    let code: EnrollmentCode = call(
        post(&format!("/v1/orgs/{org}/enrollment-codes")).json(&NewEnrollmentCode::default()),
        admin,
    )?;
    let code = code.code.expose_secret();
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
            code,
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
            code,
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
    let _: WipeOrdered = call(
        post(&format!("/v1/orgs/{org}/devices/{device}/wipe")).json(&OrderWipe::default()),
        admin,
    )?;
    let (status, _) = coffer(space, &["check-in"], &alice)?;
    let orders: WipeOrders = call(
        http.get(format!("{base}/v1/orgs/{org}/devices/{device}/wipes")),
        admin,
    )?;
    let (after, _) = coffer(space, &["verify"], &alice)?;
    step(
        "The device is lost: the admin orders a remote wipe; the device checks in",
        format!(
            "crypto-erased at the check-in (exit {}), acknowledged on the server ({}); the vault now reports itself wiped (exit {})",
            status.unwrap_or(-1),
            orders
                .orders
                .first()
                .map_or("?", |order| order.state.as_str()),
            after.unwrap_or(-1)
        ),
    );
    Ok(())
}
