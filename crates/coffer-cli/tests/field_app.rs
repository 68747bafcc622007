//! The example field app of `coffer-agent` (crates/coffer-agent/examples/
//! field_app.rs) against a real `coffer serve --dev-tls` process: it
//! enrolls, logs a member in online through escrow and then offline (the
//! server stopped), keeps a record and a photo, delivers readings the
//! admin then queries, and obeys a remote wipe.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Child;

use coffer_agent::{Agent, Error, OfflineReason, PolicyOutcome, SlotChange, Trust, WipeCause};
use coffer_protocol::data::Reading;
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "../../coffer-agent/examples/field_app.rs"]
mod field_app;

use field_app::LoggedIn;

const ADMIN_PASSWORD: &str = "admin's server password";
const CAROL_PASSWORD: &str = "carol's server password";

/// A `coffer serve --dev-tls` process on SQLite in `dir`.
struct Serve {
    child: Child,
    dir: PathBuf,
    base: String,
    fingerprint: String,
    setup_token: String,
}

fn spawn(dir: &Path, listen: &str) -> (Child, Value) {
    let database_url = format!("sqlite://{}", dir.join("server.db").display());
    support::spawn_dev_tls_serve(dir, listen, &database_url)
}

impl Serve {
    fn start(dir: &Path) -> Serve {
        let (child, started) = spawn(dir, "127.0.0.1:0");
        Serve {
            child,
            dir: dir.to_owned(),
            base: started["listening"].as_str().unwrap().to_owned(),
            fingerprint: started["tls_sha256"].as_str().unwrap().to_owned(),
            setup_token: started["setup_token"].as_str().unwrap().to_owned(),
        }
    }

    /// Stops the server: the device is offline.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address, certificate, master key and
    /// database.
    fn restart(&mut self) {
        self.stop();
        let listen = self.base.trim_start_matches("https://").to_owned();
        let (child, started) = spawn(&self.dir, &listen);
        assert_eq!(started["tls_sha256"], self.fingerprint.as_str());
        self.child = child;
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The admin's side, through the HTTP API (trusting the dev certificate
/// as a CA, as an admin's browser or script would).
struct Api {
    http: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(server: &Serve) -> Api {
        let pem = std::fs::read(server.dir.join("coffer-server/dev-tls-cert.pem")).unwrap();
        Api {
            http: reqwest::blocking::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                .build()
                .unwrap(),
            base: server.base.clone(),
            token: None,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header(coffer_protocol::AUTH_HEADER, token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().unwrap();
        let status = answer.status();
        let text = answer.text().unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None)
    }
}

/// A photo's worth of bytes that do not compress.
fn photo(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

/// Whether any file under `dir` contains `needle`.
fn found_in_files(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            return Some(path);
        }
    }
    None
}

fn reading(at: i64, value: f64) -> Reading {
    Reading {
        at,
        name: "temp.c".into(),
        value: json!(value),
    }
}

#[test]
fn the_field_app_example_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let mut server = Serve::start(&server_dir);

    // The organization: an owner (the admin), a member (carol), a signed
    // policy (12-character passphrases; a KDF floor as low as the test's
    // KDF, so no slot is re-derived), an enrollment code.
    let mut api = Api::new(&server);
    let org = api.post(
        "/v1/setup",
        json!({"setup_token": server.setup_token, "organization": "Acme",
               "owner": "admin", "password": ADMIN_PASSWORD}),
    )["organization_id"]
        .as_i64()
        .unwrap();
    let session = api.post(
        "/v1/login",
        json!({"user": "admin", "password": ADMIN_PASSWORD}),
    );
    api.token = Some(session["token"].as_str().unwrap().to_owned());
    api.post(
        &format!("/v1/orgs/{org}/users"),
        json!({"user": "carol", "password": CAROL_PASSWORD, "role": "member"}),
    );
    api.post(
        &format!("/v1/orgs/{org}/policies"),
        json!({"version": 1, "rules": {
            "passphrase": {"min_length": 12},
            "min_kdf": {"memory_kib": 8, "iterations": 1, "parallelism": 1}}}),
    );
    let code = api.post(&format!("/v1/orgs/{org}/enrollment-codes"), json!({}))["code"]
        .as_str()
        .unwrap()
        .to_owned();

    let cfg = field_app::Config {
        space: dir.path().join("tablet"),
        owner: "alice".into(),
        owner_passphrase: "alice's long passphrase".into(),
        server: server.base.clone(),
        trust: Trust::parse_pin(&server.fingerprint).unwrap(),
        code,
        device_name: "tablet-7".into(),
        user: "carol".into(),
        server_password: CAROL_PASSWORD.into(),
        passphrase: "carol's device passphrase".into(),
        kdf: coffer_device::KdfParams::Argon2id {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        },
    };
    let agent = Agent::new();

    // (a), (b): a vault, then enrollment; the first check-in fetched the
    // policy.
    field_app::create_vault(&cfg).unwrap();
    let enrolled = field_app::enroll(&agent, &cfg).unwrap();
    assert_eq!(enrolled.organization_id, org);
    assert_eq!(
        enrolled.check_in.policy,
        PolicyOutcome::Updated { version: 1 }
    );
    let device = enrolled.device_id;
    let devices = api.get(&format!("/v1/orgs/{org}/devices"));
    assert_eq!(devices["devices"][0]["id"], device, "{devices}");
    assert_eq!(devices["devices"][0]["name"], "tablet-7", "{devices}");
    assert_eq!(devices["devices"][0]["escrow"], true, "{devices}");

    // (c) Carol has no slot yet: online through escrow, her slot added.
    assert_eq!(
        field_app::log_in(&agent, &cfg).unwrap(),
        LoggedIn::Online(SlotChange::Added)
    );

    // Offline: the server process stopped. Her own slot opens the vault;
    // she works, and readings wait in the vault's queue.
    server.stop();
    assert_eq!(
        field_app::log_in(&agent, &cfg).unwrap(),
        LoggedIn::Offline(OfflineReason::Unreachable)
    );
    // Without her passphrase, nobody gets in offline.
    let wrong = field_app::Config {
        passphrase: "not carol's passphrase".into(),
        ..cfg.clone()
    };
    assert!(
        matches!(
            field_app::log_in(&agent, &wrong),
            Err(Error::NeedsOnlineLogin {
                wrong_secret: true,
                ..
            })
        ),
        "an unknown passphrase does not log in offline"
    );

    // (d) A record and a photo, written offline, read back.
    let picture = photo(300 * 1024);
    field_app::write_case(&agent, &cfg, "case-17", "gate 4: hinge broken", &picture).unwrap();
    let (record, read) = field_app::read_case(&agent, &cfg, "case-17")
        .unwrap()
        .unwrap();
    assert_eq!(record["notes"], "gate 4: hinge broken");
    assert_eq!(record["by"], "carol");
    assert_eq!(read.len(), picture.len());
    assert!(read == picture, "the photo reads back as written");
    assert!(field_app::read_case(&agent, &cfg, "case-18")
        .unwrap()
        .is_none());
    // Neither is on disk in the clear.
    for secret in [&picture[150_000..150_064], b"hinge broken".as_slice()] {
        assert_eq!(found_in_files(&cfg.space, secret), None);
    }

    // (e) Readings: queued while offline...
    let queued = field_app::deliver(&agent, &cfg, vec![reading(1_795_000_000, 21.0)]).unwrap();
    assert_eq!((queued.delivered, queued.queued), (0, 1));
    assert!(queued.check_in.is_none());
    // ...and delivered, with newer ones, once the server is back.
    server.restart();
    let sent = field_app::deliver(
        &agent,
        &cfg,
        vec![reading(1_795_000_060, 21.5), reading(1_795_000_120, 22.0)],
    )
    .unwrap();
    assert_eq!((sent.delivered, sent.queued), (2, 0), "{sent:?}");
    assert!(sent.rejected.is_empty());
    let data = api.get(&format!("/v1/orgs/{org}/data?device={device}"));
    let readings = data["readings"].as_array().unwrap();
    // (By time taken: batches queued within the same second are not sent
    // in the order they were queued.)
    let mut stored: Vec<_> = readings
        .iter()
        .map(|r| (r["at"].as_i64().unwrap(), r["value"].as_f64().unwrap()))
        .collect();
    stored.sort_by_key(|(at, _)| *at);
    assert_eq!(
        stored,
        [
            (1_795_000_000, 21.0),
            (1_795_000_060, 21.5),
            (1_795_000_120, 22.0)
        ],
        "{data}"
    );
    assert!(readings
        .iter()
        .all(|r| r["device_id"] == device && r["name"] == "temp.c"));

    // An ordinary check-in: nothing to do.
    let report = field_app::check_in(&agent, &cfg).unwrap();
    assert!(!report.revoked);
    assert_eq!(report.policy, PolicyOutcome::Unchanged { version: Some(1) });

    // (f) The admin orders the whole tablet wiped; the next check-in
    // carries it out and tells the server.
    let order = api.post(&format!("/v1/orgs/{org}/devices/{device}/wipe"), json!({}))["id"]
        .as_i64()
        .unwrap();
    match field_app::check_in(&agent, &cfg) {
        Err(Error::Wiped(wiped)) => {
            assert_eq!(wiped.vault, field_app::VAULT);
            assert_eq!(
                wiped.cause,
                WipeCause::Ordered {
                    unacknowledged: vec![]
                }
            );
        }
        other => panic!("the check-in did not wipe: {other:?}"),
    }
    // Wiped on disk, as coffer-device reports it; nothing opens it.
    let vault = coffer_device::Space::new(&cfg.space)
        .vault(field_app::VAULT)
        .unwrap();
    assert!(
        matches!(vault.info(), Err(coffer_device::Error::Wiped { .. })),
        "{:?}",
        vault.info()
    );
    assert!(matches!(
        field_app::open(&agent, &cfg),
        Err(Error::Device(coffer_device::Error::Wiped { .. }))
    ));
    assert_eq!(found_in_files(&cfg.space, &picture[150_000..150_064]), None);
    // The server shows the order carried out.
    let orders = api.get(&format!("/v1/orgs/{org}/devices/{device}/wipes"));
    assert_eq!(orders["orders"][0]["id"], order, "{orders}");
    assert_eq!(orders["orders"][0]["scope"], "device", "{orders}");
    assert_eq!(orders["orders"][0]["state"], "acknowledged", "{orders}");
}
