//! `coffer enroll` against a real `coffer serve --dev-tls` process: a vault
//! made offline keeps its data through enrollment; the server is trusted
//! only by the pinned certificate fingerprint; the escrow slot's key, as
//! the server releases it, opens the vault.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const PASSPHRASE: &str = "alice's long passphrase";
const CAROL_LOGIN: [&str; 5] = ["login", "--user", "carol", "--kdf-time-ms", "0"];
const CAROL_ONLINE: [(&str, &str); 2] = [
    ("COFFER_SERVER_PASSWORD", "carol's server password"),
    ("COFFER_NEW_PASSPHRASE", "carol's device passphrase"),
];

struct Server {
    child: std::cell::RefCell<std::process::Child>,
    dir: std::path::PathBuf,
    database_url: String,
    base: String,
    fingerprint: String,
    setup_token: String,
}

impl Server {
    /// Stops the server: the device is offline.
    fn stop(&self) {
        let mut child = self.child.borrow_mut();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it again on the same address, certificate and database.
    fn restart(&self) {
        let listen = self.base.trim_start_matches("https://").to_owned();
        let again = serve_on(&self.dir, &listen, &self.database_url);
        // `again` keeps (and, dropped, reaps) a placeholder; this server
        // takes its process.
        let placeholder = Command::new("true").spawn().unwrap();
        let fresh = again.child.replace(placeholder);
        let mut old = self.child.replace(fresh);
        let _ = old.kill();
        let _ = old.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs SQL against the server's database, as someone with write access
/// to it would (both backends).
fn run_sql(database_url: &str, statements: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        coffer_server::Store::open(database_url)
            .await
            .unwrap()
            .execute_for_tests(statements)
            .await
            .unwrap();
    });
}

fn serve_on(dir: &std::path::Path, listen: &str, database_url: &str) -> Server {
    let (child, started) = support::spawn_dev_tls_serve(dir, listen, database_url);
    Server {
        base: started["listening"].as_str().unwrap().to_owned(),
        fingerprint: started["tls_sha256"].as_str().unwrap().to_owned(),
        setup_token: started["setup_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        child: std::cell::RefCell::new(child),
        dir: dir.to_owned(),
        database_url: database_url.to_owned(),
    }
}

/// Check-in: a signed policy verified and kept, a tampered or replayed one
/// refused; a one-user wipe removes that slot; a whole-device wipe
/// crypto-erases the vault; every order acknowledged on the server.
fn check_in_and_wipe(
    admin: &dyn Fn(&[&str]) -> Output,
    sql: &dyn Fn(&str),
    coffer: &dyn Fn(&[&str]) -> Output,
    org: &str,
    server_dir: &std::path::Path,
    space: &std::path::Path,
) {
    let rules = server_dir.join("rules.json");
    std::fs::write(
        &rules,
        r#"{"passphrase": {"min_length": 12}, "max_failed_attempts": 5, "on_max_failed": "wipe",
            "apps": {"*": ["kv"]}, "min_kdf": {"memory_kib": 20480, "iterations": 2, "parallelism": 1}}"#,
    )
    .unwrap();
    let rules = rules.to_str().unwrap();
    let publish = |version: &str| {
        ok(admin(&[
            "policy",
            "publish",
            "--org",
            org,
            "--version",
            version,
            rules,
        ]))
    };
    publish("2");
    let checked = ok(coffer(&["check-in"]));
    assert_eq!(checked["policy"], json!({"version": 2, "updated": true}));
    assert_eq!(checked["revoked"], false);
    assert_eq!(checked["passphrase_below_rules"], false);
    // Enforced: the apps' capabilities (kv only: SQL is denied, exit 10),
    // the failed-attempt limit and its action, and the KDF floor (alice's
    // slot, weaker, is re-derived at her next unlock).
    assert_eq!(
        coffer(&["sql", "notes", "SELECT 1"]).status.code(),
        Some(10)
    );
    assert_eq!(
        ok(coffer(&["kv", "get", "notes", "greeting"]))["text"],
        "hello"
    );
    let info = ok(coffer(&["info"]));
    assert!(info["lockout"].to_string().contains("wipe"), "{info}");
    assert!(info["lockout"].to_string().contains('5'), "{info}");
    let slots = ok(coffer(&["slot", "list"])).to_string();
    assert!(slots.contains("20480"), "{slots}");

    // The server's database edited: a changed document fails the pinned
    // key's signature; an old document announced as a new version is a
    // downgrade. Each time the last good policy stays.
    publish("3");
    sql("UPDATE policies SET document = replace(document, '\"min_length\":12', '\"min_length\":4') WHERE version = 3");
    let checked = ok(coffer(&["check-in"]));
    assert_eq!(checked["policy"]["version"], 2);
    assert!(
        checked["policy"]["refused"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{checked}"
    );
    sql("DELETE FROM policies WHERE version = 3; UPDATE policies SET version = 9 WHERE version = 2;");
    let checked = ok(coffer(&["check-in"]));
    assert_eq!(checked["policy"]["version"], 2);
    assert!(
        checked["policy"]["refused"]
            .as_str()
            .unwrap()
            .contains("not the one the server announced"),
        "{checked}"
    );

    // One user's slot.
    let added = run(
        space,
        "default",
        &["slot", "add", "bob", "--kdf-time-ms", "0"],
        &[
            ("COFFER_PASSPHRASE", PASSPHRASE),
            ("COFFER_NEW_PASSPHRASE", "bob's long passphrase"),
        ],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let device = ok(admin(&["device", "list", "--org", org]))["devices"][0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    // Not on a terminal, an order needs --yes.
    let unconfirmed = admin(&["device", "wipe", "--org", org, &device, "--user", "bob"]);
    assert_eq!(unconfirmed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("--yes"));
    assert_eq!(
        ok(admin(&["device", "list", "--org", org]))["devices"][0]["pending_wipes"],
        0
    );
    ok(admin(&[
        "device", "wipe", "--org", org, &device, "--user", "bob", "--yes",
    ]));
    let checked = ok(coffer(&["check-in"]));
    assert_eq!(checked["removed_slots"], json!(["bob"]));
    assert!(!ok(coffer(&["slot", "list"]))
        .to_string()
        .contains("\"bob\""));
    let orders = ok(admin(&["device", "wipes", "--org", org, &device]));
    assert_eq!(orders["orders"][0]["state"], "acknowledged");

    // A whole-device order cancelled before the device saw it: the server
    // deleted the escrow key at the order; the next check-in deposits a
    // new one.
    let order = ok(admin(&["device", "wipe", "--org", org, &device, "--yes"]))["id"]
        .as_i64()
        .unwrap()
        .to_string();
    ok(admin(&[
        "device",
        "cancel-wipe",
        "--org",
        org,
        &device,
        &order,
    ]));
    assert_eq!(
        ok(admin(&["device", "list", "--org", org]))["devices"][0]["escrow"],
        false
    );
    assert_eq!(ok(coffer(&["check-in"]))["escrow_renewed"], true);
    assert_eq!(
        ok(admin(&["device", "list", "--org", org]))["devices"][0]["escrow"],
        true
    );

    // A rotation retires the escrow slot with the others: a new one is
    // deposited, and an online login still opens the vault through it.
    let rotated = ok(coffer(&["rotate", "--yes"]));
    assert!(
        rotated["escrow"].as_str().unwrap().contains("deposited"),
        "{rotated}"
    );
    let relogin = run(space, "default", &CAROL_LOGIN, &CAROL_ONLINE);
    assert_eq!(ok(relogin)["online"], true);

    // The whole device.
    ok(admin(&["device", "wipe", "--org", org, &device, "--yes"]));
    let wiped = coffer(&["check-in"]);
    assert_eq!(
        wiped.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&wiped.stderr)
    );
    assert_eq!(coffer(&["verify"]).status.code(), Some(12));
    let orders = ok(admin(&["device", "wipes", "--org", org, &device]));
    assert_eq!(orders["orders"][1]["state"], "cancelled");
    assert_eq!(orders["orders"][2]["state"], "acknowledged");
}

/// Runs `coffer` on vault `vault` of `space` with exactly the secrets in
/// `env` (nothing from the caller's environment).
fn run(space: &std::path::Path, vault: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
    c.arg("--json")
        .args(args)
        .env("COFFER_SPACE", space)
        .env("COFFER_VAULT", vault)
        .env_remove("COFFER_PASSPHRASE")
        .env_remove("COFFER_NEW_PASSPHRASE")
        .env_remove("COFFER_RECOVERY_KEY")
        .env_remove("COFFER_TEST_NOW")
        .stdin(Stdio::null());
    for (key, value) in env {
        c.env(key, value);
    }
    c.output().unwrap()
}

fn ok(out: Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[test]
fn enroll_check_in_policy_and_remote_wipe_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    end_to_end(dir, &url);
}

#[test]
fn enroll_check_in_policy_and_remote_wipe_end_to_end_on_postgres() {
    let pg = coffer_server::testing::Postgres::start();
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.database("device_e2e"));
    end_to_end(tempfile::tempdir().unwrap(), &url);
}

/// The device's whole story against a real `coffer serve` on `url`.
fn end_to_end(dir: tempfile::TempDir, url: &str) {
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = serve_on(&server_dir, "127.0.0.1:0", url);
    let sql = |statements: &str| run_sql(url, statements);
    let ca = server_dir.join("coffer-server/dev-tls-cert.pem");
    let admin_home = dir.path().join("admin");
    let admin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["--json", "admin", "--server", &server.base])
            .args(["--ca-cert", ca.to_str().unwrap()])
            .args(args)
            .env("XDG_DATA_HOME", &admin_home)
            .env("HOME", &admin_home)
            .env("COFFER_SETUP_TOKEN", &server.setup_token)
            .env("COFFER_ADMIN_PASSWORD", "correct horse battery")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let org = ok(admin(&[
        "setup",
        "--organization",
        "Acme",
        "--owner",
        "alice",
    ]))["organization_id"]
        .as_i64()
        .unwrap()
        .to_string();
    ok(admin(&["login", "--user", "alice"]));
    let users = ok(admin(&["users", "--org", &org]));
    assert_eq!(users["members"][0]["name"], "alice");
    assert_eq!(users["members"][0]["role"], "owner");
    let code = ok(admin(&["enroll-code", "--org", &org]))["code"]
        .as_str()
        .unwrap()
        .to_owned();

    // A vault made offline, with data, before enrollment.
    let space = dir.path().join("space");
    let coffer = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .arg("--json")
            .args(args)
            .env("COFFER_SPACE", &space)
            .env("COFFER_PASSPHRASE", PASSPHRASE)
            .env_remove("COFFER_RECOVERY_KEY")
            .env_remove("COFFER_ENROLL_CODE")
            .env_remove("COFFER_SERVER")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    ok(coffer(&["init", "--name", "alice", "--kdf-time-ms", "0"]));
    ok(coffer(&["app", "add", "notes"]));
    ok(coffer(&["kv", "put", "notes", "greeting", "hello"]));

    // Plain HTTP to another machine: refused (a pin would protect nothing).
    let plain = coffer(&[
        "enroll",
        "--server",
        "http://cp.example:8443",
        "--code",
        &code,
    ]);
    assert_eq!(plain.status.code(), Some(2));
    // A wrong pin: refused before anything is sent (the code is not spent).
    let wrong = coffer(&[
        "enroll",
        "--server",
        &server.base,
        "--code",
        &code,
        "--pin-sha256",
        &"00".repeat(32),
    ]);
    assert_eq!(
        wrong.status.code(),
        Some(17),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    // No trust given at all: the self-signed certificate is refused too.
    let unpinned = coffer(&["enroll", "--server", &server.base, "--code", &code]);
    assert_eq!(unpinned.status.code(), Some(17));

    let enrolled = ok(coffer(&[
        "enroll",
        "--server",
        &server.base,
        "--code",
        &code,
        "--pin-sha256",
        &server.fingerprint,
    ]));
    assert_eq!(enrolled["enrolled"], true);
    assert_eq!(
        enrolled["organization_id"].as_i64().unwrap().to_string(),
        org
    );
    let device = enrolled["device_id"].as_i64().unwrap();
    // Enrolling twice is refused.
    let again = coffer(&[
        "enroll",
        "--server",
        &server.base,
        "--code",
        &code,
        "--pin-sha256",
        &server.fingerprint,
    ]);
    assert_eq!(again.status.code(), Some(6));

    // The data is still there; the escrow slot is there; the server holds
    // the escrow key; the pinned policy key is the organization's.
    assert_eq!(
        ok(coffer(&["kv", "get", "notes", "greeting"])),
        json!({"key": "greeting", "text": "hello"})
    );
    let slots = ok(coffer(&["slot", "list"]));
    assert!(slots.to_string().contains("\"escrow\""), "{slots}");
    let devices = ok(admin(&["device", "list", "--org", &org]));
    assert_eq!(devices["devices"][0]["id"], device);
    assert_eq!(devices["devices"][0]["escrow"], true);

    // The device's settings (read here through the library, as the device
    // half will) hold a working token: with a member's session it gets the
    // escrow key back, and that key opens the vault.
    // A plain unlock of the enrolled vault is refused (it would skip the
    // organization's policy); the agent's door opens it.
    let vault = coffer_device::Space::new(&space).vault("default").unwrap();
    let passphrase = coffer_device::Passphrase::new(PASSPHRASE.to_owned()).unwrap();
    let credential = coffer_device::Credential::Passphrase(&passphrase);
    assert!(matches!(
        vault.unlock(&credential),
        Err(coffer_device::Error::ManagedVault { .. })
    ));
    let unlocked = vault
        .unlock_managed_at(&credential, std::time::SystemTime::now())
        .unwrap();
    let token =
        String::from_utf8(unlocked.setting("control.device_token").unwrap().unwrap()).unwrap();
    let policy_key =
        String::from_utf8(unlocked.setting("control.policy_key").unwrap().unwrap()).unwrap();
    assert_eq!(policy_key, enrolled["policy_key"]);
    drop(unlocked);
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let session: Value = http
        .post(format!("{}/v1/login", server.base))
        .json(&json!({"user": "alice", "password": "correct horse battery"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let released: Value = http
        .post(format!("{}/v1/device/escrow/release", server.base))
        .header("x-auth-token", &token)
        .header("x-user-token", session["token"].as_str().unwrap())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let escrow =
        String::from_utf8(hex::decode(released["escrow_key"].as_str().unwrap()).unwrap()).unwrap();
    let opened = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["--json", "--recovery", "verify"])
        .env("COFFER_SPACE", &space)
        .env("COFFER_RECOVERY_KEY", &escrow)
        .env_remove("COFFER_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(opened);
    // Nothing of the enrollment is in a plain file of the space.
    let mut stack = vec![space.clone()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            // (The release file holds the server's URL and the release
            // token, by design: docs/protocol.md.)
            for secret in [token.as_bytes(), escrow.as_bytes()] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret),
                    "{} holds the enrollment in the clear",
                    path.display()
                );
            }
        }
    }
    logins(&admin, &sql, &org, &server_dir, &space);
    deliveries(&admin, &org, &server, &space);
    check_in_and_wipe(&admin, &sql, &coffer, &org, &server_dir, &space);
    offline_grace(&admin, &org, &server, &server_dir, &space);
}

/// The offline grace, with a controlled clock (`COFFER_TEST_NOW`, debug
/// builds): past the policy's hours without a check-in the vault refuses
/// to unlock (setting the clock back does not help) until it checks in;
/// past its days it wipes itself.
fn offline_grace(
    admin: &dyn Fn(&[&str]) -> Output,
    org: &str,
    server: &Server,
    server_dir: &std::path::Path,
    space: &std::path::Path,
) {
    let rules = server_dir.join("grace.json");
    std::fs::write(
        &rules,
        r#"{"offline": {"block_after_hours": 1, "wipe_after_days": 2}}"#,
    )
    .unwrap();
    ok(admin(&[
        "policy",
        "publish",
        "--org",
        org,
        "--version",
        "10",
        rules.to_str().unwrap(),
    ]));
    let at = |offset: Option<u64>, args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.arg("--json")
            .args(args)
            .env("COFFER_SPACE", space)
            .env("COFFER_VAULT", "field2")
            .env("COFFER_PASSPHRASE", PASSPHRASE)
            .env_remove("COFFER_RECOVERY_KEY")
            .stdin(Stdio::null());
        match offset {
            Some(secs) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                c.env("COFFER_TEST_NOW", (now + secs).to_string());
            }
            None => {
                c.env_remove("COFFER_TEST_NOW");
            }
        }
        c.output().unwrap()
    };
    ok(at(None, &["init", "--name", "alice", "--kdf-time-ms", "0"]));
    let code = ok(admin(&["enroll-code", "--org", org]))["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let enrolled = ok(at(
        None,
        &[
            "enroll",
            "--server",
            &server.base,
            "--code",
            &code,
            "--pin-sha256",
            &server.fingerprint,
        ],
    ));
    assert_eq!(enrolled["policy_version"], 10);
    ok(at(None, &["app", "ls"]));
    // Two hours later: blocked until a check-in.
    let blocked = at(Some(2 * 3600), &["app", "ls"]);
    assert_eq!(
        blocked.status.code(),
        Some(18),
        "{}",
        String::from_utf8_lossy(&blocked.stderr)
    );
    // Setting the clock back does not help.
    assert_eq!(at(None, &["app", "ls"]).status.code(), Some(18));
    // A check-in does.
    ok(at(None, &["check-in"]));
    ok(at(None, &["app", "ls"]));
    // A clock set a day ahead for a check-in does not buy a day: the grace
    // counts from the server's time.
    ok(at(Some(86_400), &["check-in"]));
    assert_eq!(
        at(Some(86_400 + 1800), &["app", "ls"]).status.code(),
        Some(18)
    );
    ok(at(None, &["check-in"]));
    ok(at(None, &["app", "ls"]));
    // A policy that refuses debuggers: under a real tracer (strace, which
    // .ci/run installs) the vault does not open (exit 16).
    let strict = server_dir.join("strict.json");
    std::fs::write(
        &strict,
        r#"{"offline": {"block_after_hours": 1, "wipe_after_days": 2}, "refuse_debugger": true}"#,
    )
    .unwrap();
    ok(admin(&[
        "policy",
        "publish",
        "--org",
        org,
        "--version",
        "11",
        strict.to_str().unwrap(),
    ]));
    assert_eq!(ok(at(None, &["check-in"]))["policy"]["version"], 11);
    let traced = Command::new("strace")
        .args(["-f", "-o", "/dev/null"])
        .arg(env!("CARGO_BIN_EXE_coffer"))
        .args(["--json", "app", "ls"])
        .env("COFFER_SPACE", space)
        .env("COFFER_VAULT", "field2")
        .env("COFFER_PASSPHRASE", PASSPHRASE)
        .env_remove("COFFER_TEST_NOW")
        .stdin(Stdio::null())
        .output()
        .expect("strace is installed (.ci/run installs it)");
    assert_eq!(traced.status.code(), Some(16), "{traced:?}");
    ok(at(None, &["app", "ls"]));

    // Revoked: an online login gets no escrow key from the server.
    let device = enrolled["device_id"].as_i64().unwrap().to_string();
    ok(admin(&["device", "revoke", "--org", org, &device]));
    let refused = run(space, "field2", &CAROL_LOGIN, &CAROL_ONLINE);
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Three days without one: it wipes itself.
    let wiped = at(Some(3 * 86_400), &["app", "ls"]);
    assert_eq!(
        wiped.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&wiped.stderr)
    );
    assert_eq!(at(None, &["app", "ls"]).status.code(), Some(12));
}

/// `coffer login` on the shared device: a member with no slot logs in
/// online (their slot is added, under the policy's rules), then offline; a
/// user of another organization is refused; without the network, a user
/// with no slot is told they need one online login.
fn logins(
    admin: &dyn Fn(&[&str]) -> Output,
    sql: &dyn Fn(&str),
    org: &str,
    server_dir: &std::path::Path,
    space: &std::path::Path,
) {
    let login = |user: &str, server_password: &str, device_passphrase: &str| {
        run(
            space,
            "default",
            &["login", "--user", user, "--kdf-time-ms", "0"],
            &[
                ("COFFER_SERVER_PASSWORD", server_password),
                ("COFFER_NEW_PASSPHRASE", device_passphrase),
                ("COFFER_PASSPHRASE", device_passphrase),
            ],
        )
    };
    // Carol, a member of the organization, and Mallory of another one.
    let hash = coffer_server::api::hash_password("carol's server password").unwrap();
    sql(&format!(
        "INSERT INTO users (name, password_hash, created_at) VALUES ('carol', '{hash}', 0);
         INSERT INTO memberships (org_id, user_id, role) SELECT {org}, id, 'member' FROM users WHERE name = 'carol';
         INSERT INTO organizations (name, created_at) VALUES ('Other Org', 0);
         INSERT INTO users (name, password_hash, created_at) VALUES ('mallory', '{hash}', 0);
         INSERT INTO memberships (org_id, user_id, role)
             SELECT o.id, u.id, 'owner' FROM organizations o, users u WHERE o.name = 'Other Org' AND u.name = 'mallory';"
    ));

    // The organization's policy asks for 12 characters; the device learns
    // it at check-in.
    let rules = server_dir.join("login-rules.json");
    std::fs::write(&rules, r#"{"passphrase": {"min_length": 12}}"#).unwrap();
    ok(admin(&[
        "policy",
        "publish",
        "--org",
        org,
        "--version",
        "1",
        rules.to_str().unwrap(),
    ]));
    let checked = run(
        space,
        "default",
        &["check-in"],
        &[("COFFER_PASSPHRASE", PASSPHRASE)],
    );
    assert_eq!(ok(checked)["policy"]["version"], 1);

    // The same rules for a slot added on the device itself.
    let weak = run(
        space,
        "default",
        &["slot", "add", "dave", "--kdf-time-ms", "0"],
        &[
            ("COFFER_PASSPHRASE", PASSPHRASE),
            ("COFFER_NEW_PASSPHRASE", "short"),
        ],
    );
    assert_eq!(weak.status.code(), Some(7));

    // Offline before any online login: carol has no slot.
    let release_file = space.join("default").join("control.json");
    let online = std::fs::read_to_string(&release_file).unwrap();
    let offline = online.replace(
        &serde_json::from_str::<Value>(&online).unwrap()["server"]
            .as_str()
            .unwrap()
            .to_owned(),
        "https://127.0.0.1:9",
    );
    std::fs::write(&release_file, &offline).unwrap();
    let r = login(
        "carol",
        "carol's server password",
        "carol's device passphrase",
    );
    assert_eq!(r.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&r.stderr).contains("online login"));
    std::fs::write(&release_file, &online).unwrap();

    // Online: a passphrase too short for the policy is refused; then her
    // slot is added.
    let r = login("carol", "carol's server password", "short");
    assert_eq!(
        r.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = ok(login(
        "carol",
        "carol's server password",
        "carol's device passphrase",
    ));
    assert_eq!(r["online"], true);
    assert_eq!(r["slot"], "added");
    // A wrong server password, and a user of another organization: refused.
    let r = login("carol", "not her password", "carol's device passphrase");
    assert_eq!(r.status.code(), Some(3));
    let r = login(
        "mallory",
        "carol's server password",
        "mallory's device pass",
    );
    assert_eq!(
        r.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    // Offline now: her own passphrase opens the vault.
    std::fs::write(&release_file, &offline).unwrap();
    let r = ok(login("carol", "unused", "carol's device passphrase"));
    assert_eq!(r["online"], false);
    // Another user's passphrase is not hers.
    let r = login("carol", "unused", PASSPHRASE);
    assert_eq!(r.status.code(), Some(3));
    std::fs::write(&release_file, &online).unwrap();
}

/// `coffer deliver`: online at once; offline queued in the vault; sent
/// once, later, when the server is back.
fn deliveries(
    admin: &dyn Fn(&[&str]) -> Output,
    org: &str,
    server: &Server,
    space: &std::path::Path,
) {
    let deliver = |input: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.args(["--json", "deliver", "--retries", "1"])
            .env("COFFER_SPACE", space)
            .env("COFFER_PASSPHRASE", PASSPHRASE);
        match input {
            Some(text) => {
                c.arg("-");
                let mut child = c
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            }
            None => c.stdin(Stdio::null()).output().unwrap(),
        }
    };
    let stored = || {
        ok(admin(&["data", "query", "--org", org, "--name", "temp.c"]))["readings"]
            .as_array()
            .unwrap()
            .len()
    };
    let r = ok(deliver(Some(
        r#"[{"at": 1795000000, "name": "temp.c", "value": 21}]"#,
    )));
    assert_eq!(r, json!({"delivered": 1, "queued": 0}));
    assert_eq!(stored(), 1);

    // Offline: queued in the vault.
    server.stop();
    let r = ok(deliver(Some(
        "{\"at\": 1795000060, \"name\": \"temp.c\", \"value\": 22}\n{\"at\": 1795000120, \"name\": \"temp.c\", \"value\": 23}\n",
    )));
    assert_eq!(r, json!({"delivered": 0, "queued": 1}));
    // Back online: sent, once.
    server.restart();
    let r = ok(deliver(None));
    assert_eq!(r, json!({"delivered": 1, "queued": 0}));
    let r = ok(deliver(None));
    assert_eq!(r, json!({"delivered": 0, "queued": 0}));
    assert_eq!(stored(), 3);
    // Bad input: a clear usage error, nothing queued.
    assert_eq!(deliver(Some("not json")).status.code(), Some(2));
    assert_eq!(
        deliver(Some(r#"[{"at": 1, "name": "=cmd()", "value": 1}]"#))
            .status
            .code(),
        Some(2)
    );
    assert_eq!(ok(deliver(None)), json!({"delivered": 0, "queued": 0}));
}
