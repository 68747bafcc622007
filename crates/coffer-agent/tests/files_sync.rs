//! Files sync through `Agent::sync` against a real `coffer serve` in this
//! process (SQLite, blobs in a local directory, plain HTTP on loopback,
//! pieces of 64 KiB), each device with its own vault:
//!
//! - device A attaches a file to a record and syncs; device B syncs and
//!   has the record and the file, byte for byte; a file over the server's
//!   limit holds its own record back (pending, reported) and nothing else;
//! - a transport that cuts every few file requests (before the request
//!   leaves, or after the server took it and before its answer arrives):
//!   the upload resumes where the server stands, and the bytes sent in all
//!   stay within a piece per cut of the file's size; the download resumes
//!   too and ends byte-identical;
//! - a transport that flips one byte of a blob's bytes on their way: the
//!   device refuses the download and keeps its previous version of the
//!   file, and the next honest round brings the new one;
//! - a transport that answers `500` (or a short range) for one file: that
//!   file is reported and waits, while the next file and the next app
//!   sync in the same round;
//! - a record whose file the server lacks (`missing_file`) stays pending
//!   and goes through once another device uploads the file;
//! - a file stored here after a pulled record queued an older version of
//!   it is never replaced by that older version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use coffer_agent::{
    Agent, Connector, FileDirection, Server as ControlPlane, SyncObserver, Transport,
    TransportError, Trust,
};
use coffer_device::{Capabilities, KdfParams, Passphrase, Space, UnlockedVault};
use coffer_server::{LoginLimits, ServeConfig, Server, TlsSetting, DEFAULT_SESSION_TTL};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const APP: &str = "cases";
/// A second synced app, after [`APP`] in the policy's list.
const NOTES: &str = "notes";
const PIECE: u64 = 64 * 1024;
/// The server's largest file in the first test.
const MAX_FILE: u64 = 1024 * 1024;
const MIB: usize = 1024 * 1024;
const PASSWORD: &str = "correct horse battery";

fn kdf() -> KdfParams {
    KdfParams::Argon2id {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    }
}

/// `len` bytes that differ from one seed to the next.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// An in-process server and its organization, set up by its owner, whose
/// policy syncs [`APP`].
struct World {
    dir: tempfile::TempDir,
    /// The server runs on it until the world is dropped.
    _runtime: tokio::runtime::Runtime,
    base: String,
    http: reqwest::blocking::Client,
    org: i64,
    user_id: i64,
    session: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl World {
    /// A server that takes files of at most `max_file_size` bytes.
    fn new(max_file_size: u64) -> World {
        World::with_apps(max_file_size, &[APP])
    }

    /// The same, its policy syncing `apps`.
    fn with_apps(max_file_size: u64, apps: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let blobs = coffer_server::blobs::BlobStorage::local(dir.path().join("blobs")).unwrap();
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
            .unwrap()
            .with_blob_storage(blobs)
            .with_piece_size(PIECE)
            .with_max_file_size(max_file_size);
        let base = format!("http://{}", server.local_addr().unwrap());
        let setup_token = server.setup_token().unwrap().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(server.run(async {
            let _ = stopped.await;
        }));
        let mut world = World {
            dir,
            _runtime: runtime,
            base,
            http: reqwest::blocking::Client::new(),
            org: 0,
            user_id: 0,
            session: String::new(),
            stop: Some(stop),
        };
        let setup = world.post(
            "/v1/setup",
            json!({"setup_token": setup_token, "organization": "Acme", "owner": "alice", "password": PASSWORD}),
        );
        world.org = setup["organization_id"].as_i64().unwrap();
        world.user_id = setup["user_id"].as_i64().unwrap();
        world.session = world.post("/v1/login", json!({"user": "alice", "password": PASSWORD}))
            ["token"]
            .as_str()
            .unwrap()
            .to_owned();
        world.post(
            &format!("/v1/orgs/{}/policies", world.org),
            json!({"version": 1, "rules": {
                "sync": apps,
                "min_kdf": {"memory_kib": 8, "iterations": 1, "parallelism": 1},
            }}),
        );
        world
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if !self.session.is_empty() {
            request = request.header("X-Auth-Token", &self.session);
        }
        let response = request.send().unwrap();
        let status = response.status();
        let text = response.text().unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A new device: a vault in its own space, enrolled through `connector`,
    /// its local author bound to the owner (so that its records are
    /// published to the other devices).
    fn device(&self, name: &str, author: &str, connector: Arc<dyn Connector>) -> Device {
        let space = Space::new(self.dir.path().join(name));
        let passphrase = Passphrase::new("a device passphrase".into()).unwrap();
        let vault = space
            .create_vault("acme", author, &passphrase, &kdf())
            .unwrap();
        vault.add_app(APP, Capabilities::all()).unwrap();
        let code = self.post(
            &format!("/v1/orgs/{}/enrollment-codes", self.org),
            json!({}),
        )["code"]
            .as_str()
            .unwrap()
            .to_owned();
        let agent = Agent::with_connector(connector);
        let control = ControlPlane::new(&self.base, Trust::System).unwrap();
        let (enrolled, vault) = agent
            .enroll(vault, &control, code.as_str().into(), name)
            .unwrap();
        self.post(
            &format!("/v1/orgs/{}/sync/authors/bind", self.org),
            json!({"device_id": enrolled.device_id, "author": author, "user_id": self.user_id}),
        );
        Device {
            agent,
            vault: Some(vault),
        }
    }
}

struct Device {
    agent: Agent,
    vault: Option<UnlockedVault>,
}

/// What an observer saw of files.
#[derive(Default)]
struct Seen {
    progress: Vec<(FileDirection, String, u64, u64)>,
}

impl SyncObserver for Seen {
    fn file_progress(
        &mut self,
        _app: &str,
        direction: FileDirection,
        name: &str,
        done: u64,
        total: u64,
    ) {
        self.progress
            .push((direction, name.to_owned(), done, total));
    }
}

impl Device {
    fn vault(&self) -> &UnlockedVault {
        self.vault.as_ref().unwrap()
    }

    fn put_file(&self, name: &str, data: &[u8]) {
        self.put_file_in(APP, name, data);
    }

    fn put_file_in(&self, app: &str, name: &str, data: &[u8]) {
        self.vault()
            .app(app)
            .unwrap()
            .files()
            .unwrap()
            .put(
                name,
                &mut &data[..],
                Some("application/octet-stream"),
                &mut |_| {},
            )
            .unwrap();
    }

    fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.file_in(APP, name)
    }

    fn file_in(&self, app: &str, name: &str) -> Option<Vec<u8>> {
        use std::io::Read;
        let files = self.vault().app(app).unwrap().files().unwrap();
        let mut reader = match files.open_file(name) {
            Ok(reader) => reader,
            Err(coffer_device::Error::NoSuchFile { .. }) => return None,
            Err(e) => panic!("{e}"),
        };
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        Some(out)
    }

    fn put_record(&self, id: &str, body: Value, files: &[&str]) {
        self.put_record_in(APP, id, body, files);
    }

    fn put_record_in(&self, app: &str, id: &str, body: Value, files: &[&str]) {
        self.vault()
            .app(app)
            .unwrap()
            .records()
            .unwrap()
            .put_with_files("visits", id, &body, None, files)
            .unwrap();
    }

    fn record(&self, id: &str) -> Option<coffer_device::Record> {
        self.vault()
            .app(APP)
            .unwrap()
            .records()
            .unwrap()
            .get("visits", id)
            .unwrap()
    }

    /// One round; the app's report.
    fn sync(
        &mut self,
        observer: &mut dyn SyncObserver,
    ) -> coffer_agent::Result<coffer_agent::AppSync> {
        let apps = self.sync_apps(observer)?;
        Ok(apps.into_iter().find(|a| a.app == APP).unwrap())
    }

    /// One round; every app's report.
    fn sync_apps(
        &mut self,
        observer: &mut dyn SyncObserver,
    ) -> coffer_agent::Result<Vec<coffer_agent::AppSync>> {
        let vault = self.vault.take().unwrap();
        // A failed round hands the vault back to no one: unlock it again,
        // as an app would (the same process, the same key in this test).
        let path = vault.vault().path().to_owned();
        match self.agent.sync(vault, observer) {
            Ok((report, vault)) => {
                self.vault = Some(vault);
                Ok(report.apps)
            }
            Err(e) => {
                self.vault = Some(reopen(&self.agent, &path));
                Err(e)
            }
        }
    }

    /// Rounds until one succeeds (at most `max`); how many failed.
    fn sync_until_done(&mut self, max: u32) -> (coffer_agent::AppSync, u32) {
        let mut failed = 0;
        loop {
            match self.sync(&mut coffer_agent::Quiet) {
                Ok(report) => return (report, failed),
                Err(e) => {
                    assert!(e.is_unreachable(), "not a cut: {e}");
                    failed += 1;
                    assert!(failed <= max, "no round succeeded in {max} tries");
                }
            }
        }
    }
}

fn reopen(agent: &Agent, path: &Path) -> UnlockedVault {
    let space = Space::new(path.parent().unwrap());
    let passphrase = Passphrase::new("a device passphrase".into()).unwrap();
    agent
        .unlock(
            &space.vault("acme").unwrap(),
            &coffer_agent::UnlockSecret::Passphrase(passphrase),
        )
        .unwrap()
}

/// How a wrapped transport treats the requests it sees.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Passes everything, but cuts every `Counters::cut_every`th request
    /// to a file endpoint (0: none): alternately before it leaves, and
    /// after the server answered (the answer is lost).
    Cuts,
    /// Flips one byte of every blob's bytes fetched.
    FlipBlobByte,
}

/// How one file's requests fail, whatever [`Fault`] says of the rest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Failure {
    /// Its upload's creation and its fetches answer `500 internal` (as a
    /// server whose stored piece does not open).
    Internal,
    /// Its fetches answer one byte short of the range asked for.
    Short,
}

/// What a [`Wire`] counted, across every connection the agent made.
#[derive(Default)]
struct Counters {
    /// The file (by SHA-256) whose requests fail, and how.
    failing: std::sync::Mutex<Option<(String, Failure)>>,
    cut_every: AtomicU64,
    /// How many of the next pieces are answered `503 rate_limited` (a
    /// server holding as many pieces as it takes at once).
    busy_pieces: AtomicU64,
    file_requests: AtomicU64,
    cuts: AtomicU64,
    /// Bytes of pieces that left for the server.
    piece_bytes: AtomicU64,
    /// Bytes of blobs that came back.
    blob_bytes: AtomicU64,
}

/// The default transport, counting what goes over it and applying a
/// [`Fault`].
struct Wire {
    inner: coffer_agent::http::ReqwestConnector,
    fault: Fault,
    counted: Arc<Counters>,
}

impl Wire {
    fn new(fault: Fault) -> Arc<Wire> {
        Arc::new(Wire {
            inner: coffer_agent::http::ReqwestConnector::default(),
            fault,
            counted: Arc::default(),
        })
    }

    fn cut_every(&self, n: u64) {
        self.counted.cut_every.store(n, Ordering::SeqCst);
    }

    fn busy_pieces(&self, n: u64) {
        self.counted.busy_pieces.store(n, Ordering::SeqCst);
    }

    /// From now on, the requests of the file of SHA-256 `sha256` fail as
    /// `how` says.
    fn fail(&self, sha256: &str, how: Failure) {
        *self.counted.failing.lock().unwrap() = Some((sha256.to_owned(), how));
    }

    /// Every file's requests pass again.
    fn heal(&self) {
        *self.counted.failing.lock().unwrap() = None;
    }

    fn cuts(&self) -> u64 {
        self.counted.cuts.load(Ordering::SeqCst)
    }

    fn piece_bytes(&self) -> u64 {
        self.counted.piece_bytes.load(Ordering::SeqCst)
    }

    fn blob_bytes(&self) -> u64 {
        self.counted.blob_bytes.load(Ordering::SeqCst)
    }
}

struct WireTransport {
    inner: Box<dyn Transport>,
    fault: Fault,
    counted: Arc<Counters>,
}

impl Connector for Wire {
    fn connect(&self, server: &ControlPlane) -> Result<Box<dyn Transport>, coffer_agent::Error> {
        Ok(Box::new(WireTransport {
            inner: self.inner.connect(server)?,
            fault: self.fault,
            counted: Arc::clone(&self.counted),
        }))
    }
}

impl Transport for WireTransport {
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
        max_answer: usize,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let counted = &self.counted;
        let path = request.uri().path().to_owned();
        let is_file = path.starts_with("/v1/device/files/");
        let is_piece = is_file && request.method() == http::Method::PATCH;
        let is_blob = is_file && path.contains("/blobs/");
        let mut cut_after = false;
        if is_file {
            let n = counted.file_requests.fetch_add(1, Ordering::SeqCst) + 1;
            let every = counted.cut_every.load(Ordering::SeqCst);
            if self.fault == Fault::Cuts && every > 0 && n.is_multiple_of(every) {
                let cut = counted.cuts.fetch_add(1, Ordering::SeqCst);
                if cut.is_multiple_of(2) {
                    return Err(TransportError::Unreachable("cut before sending".into()));
                }
                cut_after = true;
            }
        }
        if is_piece
            && counted
                .busy_pieces
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Ok(http::Response::builder()
                .status(503)
                .header("content-type", "application/json")
                .header("retry-after", "1")
                .body(
                    br#"{"error": {"code": "rate_limited", "message": "too many pieces at once"}}"#
                        .to_vec(),
                )
                .unwrap());
        }
        if is_piece {
            counted
                .piece_bytes
                .fetch_add(request.body().len() as u64, Ordering::SeqCst);
        }
        let failing = counted.failing.lock().unwrap().clone();
        let failure = failing.and_then(|(sha256, how)| {
            let creates = is_file
                && request.method() == http::Method::POST
                && path.ends_with("/uploads")
                && std::str::from_utf8(request.body()).is_ok_and(|b| b.contains(&sha256));
            let fetches = is_blob && path.ends_with(&sha256);
            match how {
                Failure::Internal if creates || fetches => Some(how),
                Failure::Short if fetches => Some(how),
                _ => None,
            }
        });
        if failure == Some(Failure::Internal) {
            return Ok(http::Response::builder()
                .status(500)
                .header("content-type", "application/json")
                .body(
                    br#"{"error": {"code": "internal", "message": "a stored piece does not open"}}"#
                        .to_vec(),
                )
                .unwrap());
        }
        let mut answer = self.inner.send(request, max_answer)?;
        if failure == Some(Failure::Short) && answer.status().is_success() {
            answer.body_mut().pop();
        }
        if is_blob && answer.status().is_success() {
            counted
                .blob_bytes
                .fetch_add(answer.body().len() as u64, Ordering::SeqCst);
            if self.fault == Fault::FlipBlobByte && !answer.body().is_empty() {
                let body = answer.body_mut();
                let middle = body.len() / 2;
                body[middle] ^= 0x01;
            }
        }
        if cut_after {
            return Err(TransportError::Unreachable("cut before the answer".into()));
        }
        Ok(answer)
    }
}

#[test]
fn a_file_attached_on_one_device_arrives_byte_identical_on_another() {
    let world = World::new(MAX_FILE);
    let wire_a = Wire::new(Fault::Cuts);
    let wire_b = Wire::new(Fault::Cuts);
    let mut a = world.device("tablet-a", "alice", wire_a.clone());
    let mut b = world.device("tablet-b", "bob", wire_b.clone());

    let photo = bytes(5 * PIECE as usize + 12_345, 1);
    let huge = bytes(MAX_FILE as usize + 1, 2);
    a.put_file("photo.jpg", &photo);
    a.put_file("huge.bin", &huge);
    a.put_record("v-1", json!({"note": "with a photo"}), &["photo.jpg"]);
    a.put_record("v-2", json!({"note": "with a huge file"}), &["huge.bin"]);
    a.put_record("v-3", json!({"note": "no file"}), &[]);

    let mut seen = Seen::default();
    let report = a.sync(&mut seen).unwrap();
    assert_eq!(report.files_uploaded, 1, "{report:?}");
    assert_eq!(report.bytes_uploaded, photo.len() as u64);
    assert_eq!(wire_a.piece_bytes(), photo.len() as u64);
    assert_eq!(report.applied, 2, "{report:?}");
    // Refused before a byte was sent: its record waits, and is reported.
    assert_eq!(report.file_problems.len(), 1);
    assert_eq!(report.file_problems[0].name, "huge.bin");
    assert_eq!(report.file_problems[0].code, "file_too_large");
    assert_eq!(report.file_problems[0].direction, FileDirection::Upload);
    assert_eq!(report.state.pending, 1);
    // Progress went from 0 to the whole file, a piece at a time.
    let ups: Vec<_> = seen
        .progress
        .iter()
        .filter(|(d, n, _, _)| *d == FileDirection::Upload && n == "photo.jpg")
        .collect();
    assert_eq!(ups.first().unwrap().2, 0);
    assert_eq!(ups.last().unwrap().2, photo.len() as u64);
    assert_eq!(ups.len(), 7);
    // No upload state is left in the settings.
    assert!(a.vault().setting_keys("sync.upload.").unwrap().is_empty());

    // Nothing more goes up in the next round.
    let again = a.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(again.bytes_uploaded, 0);
    assert_eq!(again.file_problems.len(), 1);

    let mut seen = Seen::default();
    let report = b.sync(&mut seen).unwrap();
    assert_eq!(report.files_downloaded, 1, "{report:?}");
    assert_eq!(report.bytes_downloaded, photo.len() as u64);
    assert!(report.file_problems.is_empty(), "{report:?}");
    assert_eq!(report.state.downloads_queued, 0);
    let record = b.record("v-1").unwrap();
    assert_eq!(record.body, json!({"note": "with a photo"}));
    assert_eq!(record.files.len(), 1);
    assert_eq!(record.files[0].sha256, sha256(&photo));
    assert_eq!(
        record.files[0].content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert!(b.file("photo.jpg").unwrap() == photo);
    let info = b
        .vault()
        .app(APP)
        .unwrap()
        .files()
        .unwrap()
        .info("photo.jpg")
        .unwrap()
        .unwrap();
    assert_eq!(info.sha256.as_deref(), Some(sha256(&photo).as_str()));
    assert!(b.record("v-2").is_none());
    assert!(b.record("v-3").is_some());
    assert!(seen
        .progress
        .iter()
        .any(|(d, n, done, total)| *d == FileDirection::Download
            && n == "photo.jpg"
            && done == total));

    // The same file attached on B too goes nowhere: the server holds it.
    b.put_record("v-4", json!({"note": "same photo"}), &["photo.jpg"]);
    let report = b.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!((report.applied, report.bytes_uploaded), (1, 0));
    assert_eq!(wire_b.piece_bytes(), 0);
}

#[test]
fn cut_connections_resume_uploads_and_downloads_without_starting_over() {
    let world = World::new(64 << 20);
    let wire_a = Wire::new(Fault::Cuts);
    let wire_b = Wire::new(Fault::Cuts);
    let mut a = world.device("tablet-a", "alice", wire_a.clone());
    let mut b = world.device("tablet-b", "bob", wire_b.clone());

    // Up: every third file request cut.
    wire_a.cut_every(3);
    let recording = bytes(12 * PIECE as usize + 999, 3);
    a.put_file("recording.bin", &recording);
    a.put_record("v-1", json!({"note": "the interview"}), &["recording.bin"]);
    let (report, failed) = a.sync_until_done(60);
    let cuts = wire_a.cuts();
    assert!(failed >= 3, "the upload was cut only {failed} times");
    assert_eq!(report.state.pending, 0, "{report:?}");
    let sent = wire_a.piece_bytes();
    let size = recording.len() as u64;
    // At most one piece again per cut, never the whole file again.
    assert!(sent >= size);
    assert!(
        sent <= size + cuts * PIECE,
        "{sent} bytes sent, {cuts} cuts"
    );
    assert!(sent < 2 * size, "{sent} bytes sent for {size}");
    assert!(a.vault().setting_keys("sync.upload.").unwrap().is_empty());

    // A file of three ranges, sent without cuts.
    wire_a.cut_every(0);
    let video = bytes(2 * 8 * MIB + 4321, 6);
    a.put_file("video.bin", &video);
    a.put_record("v-2", json!({"note": "the video"}), &["video.bin"]);
    a.sync(&mut coffer_agent::Quiet).unwrap();

    // Down: every second file request cut.
    wire_b.cut_every(2);
    let (report, failed) = b.sync_until_done(60);
    let cuts = wire_b.cuts();
    assert!(failed >= 2, "the download was cut only {failed} times");
    assert!(report.file_problems.is_empty(), "{report:?}");
    assert_eq!(report.state.downloads_queued, 0, "{report:?}");
    assert!(b.file("recording.bin").unwrap() == recording);
    assert!(b.file("video.bin").unwrap() == video);
    assert_eq!(b.record("v-1").unwrap().files[0].sha256, sha256(&recording));
    assert_eq!(b.record("v-2").unwrap().files[0].sha256, sha256(&video));
    let fetched = wire_b.blob_bytes();
    let total = (recording.len() + video.len()) as u64;
    // A cut costs at most the range in flight (and the last chunk before
    // it); a resumed download never starts again from zero.
    let range = coffer_protocol::files::MAX_FETCH_RANGE;
    assert!(
        fetched <= total + cuts * range,
        "{fetched} bytes fetched, {cuts} cuts"
    );
    assert!(
        fetched < total + video.len() as u64,
        "{fetched} bytes fetched"
    );
}

#[test]
fn a_blob_changed_on_its_way_is_refused_and_the_previous_version_kept() {
    let world = World::new(MAX_FILE);
    let mut a = world.device("tablet-a", "alice", Wire::new(Fault::Cuts));
    let honest = Wire::new(Fault::Cuts);
    let mut b = world.device("tablet-b", "bob", honest.clone());

    let v1 = bytes(3 * PIECE as usize + 7, 4);
    a.put_file("scan.pdf", &v1);
    a.put_record("v-1", json!({"page": 1}), &["scan.pdf"]);
    a.sync(&mut coffer_agent::Quiet).unwrap();
    b.sync(&mut coffer_agent::Quiet).unwrap();
    assert!(b.file("scan.pdf").unwrap() == v1);

    // A new version on A; B fetches it through a transport that flips a
    // byte of what the server sends.
    let v2 = bytes(4 * PIECE as usize + 3, 5);
    a.put_file("scan.pdf", &v2);
    a.put_record("v-1", json!({"page": 2}), &["scan.pdf"]);
    a.sync(&mut coffer_agent::Quiet).unwrap();
    let path = b.vault().vault().path().to_owned();
    drop(b.vault.take());
    let flipping = Agent::with_connector(Wire::new(Fault::FlipBlobByte));
    let vault = reopen(&flipping, &path);
    let (report, vault) = flipping.sync(vault, &mut coffer_agent::Quiet).unwrap();
    b.vault = Some(vault);
    let app = report.apps.iter().find(|a| a.app == APP).unwrap();
    assert_eq!(app.files_downloaded, 0);
    assert_eq!(app.file_problems.len(), 1, "{app:?}");
    assert_eq!(app.file_problems[0].code, "download_mismatch");
    assert_eq!(app.file_problems[0].direction, FileDirection::Download);
    assert_eq!(app.file_problems[0].sha256, sha256(&v2));
    // The record is the new one at once; the file stays the old one,
    // exactly, and the new version waits in the queue.
    assert_eq!(b.record("v-1").unwrap().body, json!({"page": 2}));
    assert!(b.file("scan.pdf").unwrap() == v1);
    assert_eq!(app.state.downloads_queued, 1);
    let queue = b
        .vault()
        .app(APP)
        .unwrap()
        .files()
        .unwrap()
        .queued_downloads()
        .unwrap();
    assert_eq!(queue[0].attempts, 1);
    assert_eq!(queue[0].last_failure.as_deref(), Some("download_mismatch"));

    // An honest round brings it.
    let report = b.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(report.files_downloaded, 1, "{report:?}");
    assert!(b.file("scan.pdf").unwrap() == v2);
    assert_eq!(report.state.downloads_queued, 0);
}

fn queue_of(device: &Device) -> Vec<coffer_device::QueuedDownload> {
    device
        .vault()
        .app(APP)
        .unwrap()
        .files()
        .unwrap()
        .queued_downloads()
        .unwrap()
}

#[test]
fn one_failing_file_waits_while_the_next_file_and_the_next_app_sync_in_the_same_round() {
    let world = World::with_apps(MAX_FILE, &[APP, NOTES]);
    let wire_a = Wire::new(Fault::Cuts);
    let wire_b = Wire::new(Fault::Cuts);
    let mut a = world.device("tablet-a", "alice", wire_a.clone());
    let mut b = world.device("tablet-b", "bob", wire_b.clone());
    for device in [&a, &b] {
        device.vault().add_app(NOTES, Capabilities::all()).unwrap();
    }
    // The failing file comes first in each order: its record is pushed
    // first, its name downloads first.
    let bad = bytes(2 * PIECE as usize + 5, 10);
    let good = bytes(PIECE as usize + 3, 11);
    let note = bytes(1000, 12);
    a.put_file("a-bad.bin", &bad);
    a.put_file("b-good.bin", &good);
    a.put_file_in(NOTES, "note.bin", &note);
    a.put_record("v-bad", json!({"n": 1}), &["a-bad.bin"]);
    a.put_record("v-good", json!({"n": 2}), &["b-good.bin"]);
    a.put_record_in(NOTES, "n-1", json!({"n": 3}), &["note.bin"]);

    // Up: the server answers 500 for the first file's upload. Its record
    // waits; the other record of the app and the next app go through.
    wire_a.fail(&sha256(&bad), Failure::Internal);
    let apps = a.sync_apps(&mut coffer_agent::Quiet).unwrap();
    let (cases, notes) = (&apps[0], &apps[1]);
    assert_eq!((cases.app.as_str(), notes.app.as_str()), (APP, NOTES));
    assert_eq!((cases.applied, cases.files_uploaded), (1, 1), "{cases:?}");
    assert_eq!(cases.file_problems.len(), 1, "{cases:?}");
    assert_eq!(cases.file_problems[0].name, "a-bad.bin");
    assert_eq!(cases.file_problems[0].code, "internal");
    assert_eq!(cases.file_problems[0].direction, FileDirection::Upload);
    assert_eq!((cases.state.pending, cases.state.rejected), (1, 0));
    assert_eq!((notes.applied, notes.files_uploaded), (1, 1), "{notes:?}");
    assert!(notes.file_problems.is_empty(), "{notes:?}");
    wire_a.heal();
    let cases = a.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!((cases.applied, cases.files_uploaded), (1, 1), "{cases:?}");
    assert!(cases.file_problems.is_empty(), "{cases:?}");
    assert_eq!(cases.state.pending, 0);

    // Down: the server answers 500 for the first file's fetch. It stays
    // queued, noted; the next file and the next app's file arrive.
    wire_b.fail(&sha256(&bad), Failure::Internal);
    let apps = b.sync_apps(&mut coffer_agent::Quiet).unwrap();
    let (cases, notes) = (&apps[0], &apps[1]);
    assert_eq!(cases.files_downloaded, 1, "{cases:?}");
    assert_eq!(cases.file_problems.len(), 1, "{cases:?}");
    assert_eq!(cases.file_problems[0].name, "a-bad.bin");
    assert_eq!(cases.file_problems[0].code, "internal");
    assert_eq!(cases.file_problems[0].direction, FileDirection::Download);
    assert_eq!(cases.state.downloads_queued, 1);
    assert_eq!(notes.files_downloaded, 1, "{notes:?}");
    assert!(b.file("b-good.bin").unwrap() == good);
    assert!(b.file_in(NOTES, "note.bin").unwrap() == note);
    assert!(b.file("a-bad.bin").is_none());
    let queue = queue_of(&b);
    assert_eq!(queue[0].attempts, 1);
    assert_eq!(queue[0].last_failure.as_deref(), Some("internal"));

    // A range one byte short: refused before a byte of it is kept, the
    // file waits again.
    wire_b.fail(&sha256(&bad), Failure::Short);
    let cases = b.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(cases.file_problems.len(), 1, "{cases:?}");
    assert_eq!(cases.file_problems[0].code, "bad_answer");
    assert!(b.file("a-bad.bin").is_none());
    assert_eq!(queue_of(&b)[0].attempts, 2);

    wire_b.heal();
    let cases = b.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(cases.files_downloaded, 1, "{cases:?}");
    assert!(cases.file_problems.is_empty(), "{cases:?}");
    assert!(b.file("a-bad.bin").unwrap() == bad);
    assert_eq!(cases.state.downloads_queued, 0);
}

#[test]
fn a_record_whose_file_the_server_lacks_stays_pending_until_the_file_arrives() {
    let world = World::new(MAX_FILE);
    let mut a = world.device("tablet-a", "alice", Wire::new(Fault::Cuts));
    let mut b = world.device("tablet-b", "bob", Wire::new(Fault::Cuts));
    let v1 = bytes(PIECE as usize + 1, 20);
    let v2 = bytes(PIECE as usize + 2, 21);
    // The record names version 1, which this device no longer holds: the
    // server refuses it with missing_file.
    a.put_file("photo.jpg", &v1);
    a.put_record("v-1", json!({"note": "first photo"}), &["photo.jpg"]);
    a.put_file("photo.jpg", &v2);
    for _ in 0..2 {
        let report = a.sync(&mut coffer_agent::Quiet).unwrap();
        assert_eq!(report.applied, 0, "{report:?}");
        assert!(report.rejected.is_empty(), "{report:?}");
        // Reported once per round, as the file it waits for.
        assert_eq!(report.file_problems.len(), 1, "{report:?}");
        let problem = &report.file_problems[0];
        assert_eq!(problem.name, "photo.jpg");
        assert_eq!(problem.sha256, sha256(&v1));
        assert_eq!(problem.code, "missing_file");
        assert_eq!(problem.direction, FileDirection::Upload);
        // Still pending, not refused: the next round pushes it again.
        assert_eq!((report.state.pending, report.state.rejected), (1, 0));
    }

    // Another device of the organization uploads that version.
    b.put_file("photo.jpg", &v1);
    b.put_record("v-9", json!({"note": "the same photo"}), &["photo.jpg"]);
    let report = b.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(
        (report.applied, report.files_uploaded),
        (1, 1),
        "{report:?}"
    );

    let report = a.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(report.applied, 1, "{report:?}");
    assert!(report.file_problems.is_empty(), "{report:?}");
    assert_eq!((report.state.pending, report.state.rejected), (0, 0));
    b.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(b.record("v-1").unwrap().files[0].sha256, sha256(&v1));
}

#[test]
fn a_file_stored_here_is_not_replaced_by_an_older_version_queued_before() {
    let world = World::new(MAX_FILE);
    let mut a = world.device("tablet-a", "alice", Wire::new(Fault::Cuts));
    let wire_b = Wire::new(Fault::Cuts);
    let mut b = world.device("tablet-b", "bob", wire_b.clone());
    let older = bytes(3 * PIECE as usize + 1, 30);
    let mine = bytes(2 * PIECE as usize + 9, 31);
    a.put_file("scan.pdf", &older);
    a.put_record("v-1", json!({"page": 1}), &["scan.pdf"]);
    a.sync(&mut coffer_agent::Quiet).unwrap();

    // B pulls the record; its file does not come (queued).
    wire_b.fail(&sha256(&older), Failure::Internal);
    let report = b.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(report.state.downloads_queued, 1, "{report:?}");
    assert!(b.file("scan.pdf").is_none());

    // The user stores their own scan. The next round, with the server's
    // file reachable again, does not fetch the older version over it.
    b.put_file("scan.pdf", &mine);
    assert!(queue_of(&b).is_empty());
    wire_b.heal();
    let report = b.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(report.files_downloaded, 0, "{report:?}");
    assert!(report.file_problems.is_empty(), "{report:?}");
    assert_eq!(report.state.downloads_queued, 0);
    assert!(b.file("scan.pdf").unwrap() == mine);

    // Attached to the record, it goes up, and stays.
    b.put_record("v-1", json!({"page": "mine"}), &["scan.pdf"]);
    let report = b.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(
        (report.applied, report.files_uploaded),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(report.files_downloaded, 0, "{report:?}");
    assert_eq!(report.state.downloads_queued, 0);
    assert!(b.file("scan.pdf").unwrap() == mine);

    // The other device gets the new one.
    a.sync(&mut coffer_agent::Quiet).unwrap();
    assert!(a.file("scan.pdf").unwrap() == mine);
    assert_eq!(a.record("v-1").unwrap().body, json!({"page": "mine"}));
}

#[test]
fn a_piece_refused_for_want_of_a_turn_waits_and_goes_in_the_same_round() {
    let world = World::new(MAX_FILE);
    let wire = Wire::new(Fault::Cuts);
    let mut a = world.device("tablet-a", "alice", wire.clone());
    let photo = bytes(2 * PIECE as usize + 77, 9);
    a.put_file("photo.jpg", &photo);
    a.put_record("v-1", json!({"note": "busy server"}), &["photo.jpg"]);
    // The first two pieces sent find the server full (503, Retry-After 1).
    wire.busy_pieces(2);
    let started = std::time::Instant::now();
    let report = a.sync(&mut coffer_agent::Quiet).unwrap();
    assert_eq!(report.files_uploaded, 1, "{report:?}");
    assert!(report.file_problems.is_empty(), "{report:?}");
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(report.state.pending, 0);
    // It waited the turns the server named, and sent nothing twice that
    // the server had taken.
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert_eq!(wire.piece_bytes(), photo.len() as u64);
}
