//! Files sync (docs/protocol.md, section 9) against `curl` moving the same
//! bytes to and from the same server: an in-process `coffer serve` on
//! SQLite with its blobs in a local directory, over TLS on loopback (its
//! development certificate), the device in a child process (this binary
//! run again with the hidden first argument [`CHILD`]) so that its peak RSS
//! is its own.
//!
//! Each round (a fresh app in the policy's `sync` list, so that a device
//! pulls only that round's record):
//!
//! - **upload**: a device puts a file of random bytes in its file store,
//!   attaches it to a record, and runs `Agent::sync`; timed from the first
//!   upload `file_progress` callback (the upload declared, offset 0) to the
//!   one that reports the whole file acknowledged. The reference: one
//!   `curl` process sending all the pieces of another file of the same
//!   size (dedup is per organization, app and SHA-256) as PATCH requests
//!   to an upload created with the JSON POST (not timed), each with its
//!   `Upload-Offset` and `Upload-Checksum` (computed beforehand);
//! - **download**: a second device pulls the record and downloads the file;
//!   timed from the first download `file_progress` callback to the round's
//!   end (the last range, the whole SHA-256, fsync, atomic switch). The
//!   reference: one `curl` GET of the same blob, whole, into a file in the
//!   same directory (its fsync timed apart);
//! - the memory of both sides: this process's (the server's) RSS growth
//!   during the transfer, and the device's peak RSS.
//!
//! coffer and curl alternate which goes first from round to round. Then
//! the resume row: an upload through a TCP proxy that cuts every
//! connection each time the forwarded client-to-server bytes pass one of
//! 10 marks evenly spread over the file, against the same upload through
//! the same proxy uncut.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_agent::{
    Agent, Connector, FileDirection, Server as ControlPlane, SyncObserver, Transport, Trust,
};
use coffer_device::{Capabilities, KdfParams, Passphrase, Space};
use coffer_protocol::files::{piece_checksum, DEFAULT_PIECE_SIZE, MIN_PIECE_SIZE};
use coffer_server::{LoginLimits, ServeConfig, Server, TlsSetting, DEFAULT_SESSION_TTL};
use serde_json::{json, Value};

use crate::cut_proxy::CutProxy;
use crate::measure::{mib, peak_rss_kib, reset_peak_rss, rss_kib, Samples};
use crate::sync::Admin;
use crate::{Scale, Section};

/// The hidden first argument that makes this binary a files sync device.
pub(crate) const CHILD: &str = "__files-sync-device";
const PASSPHRASE: &str = "bench passphrase 1";
/// The file's name in the device's file store.
const FILE_NAME: &str = "scan.bin";
const CONTENT_TYPE: &str = "application/octet-stream";
const CURL: &str = "/usr/bin/curl";
/// Cuts in the resume row.
const CUTS: u64 = 10;
/// Sync rounds a device runs at most before it gives up.
const MAX_ROUNDS: u32 = 40;
/// Linux's clock ticks per second (`getconf CLK_TCK`) for /proc/*/stat.
const CLOCK_TICKS: f64 = 100.0;

fn kdf() -> KdfParams {
    // Vault creation and unlock are not what is measured.
    KdfParams::Argon2id {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    }
}

fn passphrase() -> Passphrase {
    Passphrase::new(PASSPHRASE.into()).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `len` pseudo-random bytes (xorshift64*), different for every seed:
/// incompressible enough, and made faster than any disk writes them.
struct Noise {
    state: u64,
    left: u64,
}

impl Noise {
    fn new(seed: u64, len: u64) -> Noise {
        Noise {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            left: len,
        }
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::try_from(self.left.min(buf.len() as u64)).unwrap();
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// User plus system CPU seconds of this process so far, and its minor
/// page faults (Linux).
fn usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command's name in parentheses: fields 3 onwards; minflt,
    // utime and stime are fields 10, 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ((field(11) + field(12)) as f64 / CLOCK_TICKS, field(7))
}

/// CPU seconds and minor page faults since `before` (from [`usage`]).
fn usage_since(before: (f64, u64)) -> (f64, u64) {
    let now = usage();
    (now.0 - before.0, now.1.saturating_sub(before.1))
}

// --- The device (the child process) ---

/// What the device's transport saw.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    pieces: AtomicU64,
    piece_bytes: AtomicU64,
    ranges: AtomicU64,
    blob_bytes: AtomicU64,
    /// Microseconds spent in the transport's `send` for pieces and for
    /// ranges: the request out, the server's work, the answer back.
    piece_wait_us: AtomicU64,
    range_wait_us: AtomicU64,
}

/// The default reqwest transport, counting.
struct Counting {
    inner: coffer_agent::http::ReqwestConnector,
    counts: Arc<Counts>,
}

struct CountingTransport {
    inner: Box<dyn Transport>,
    counts: Arc<Counts>,
}

impl Connector for Counting {
    fn connect(&self, server: &ControlPlane) -> Result<Box<dyn Transport>, coffer_agent::Error> {
        Ok(Box::new(CountingTransport {
            inner: self.inner.connect(server)?,
            counts: Arc::clone(&self.counts),
        }))
    }
}

impl Transport for CountingTransport {
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
        max_answer: usize,
    ) -> Result<http::Response<Vec<u8>>, coffer_agent::TransportError> {
        let c = &self.counts;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let path = request.uri().path();
        let blob = path.contains("/blobs/");
        let piece = request.method() == http::Method::PATCH && path.contains("/uploads/");
        if piece {
            c.pieces.fetch_add(1, Ordering::Relaxed);
            c.piece_bytes
                .fetch_add(request.body().len() as u64, Ordering::Relaxed);
        }
        let started = Instant::now();
        let answer = self.inner.send(request, max_answer);
        let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if piece {
            c.piece_wait_us.fetch_add(waited, Ordering::Relaxed);
        } else if blob {
            c.range_wait_us.fetch_add(waited, Ordering::Relaxed);
        }
        let answer = answer?;
        if blob && answer.status().is_success() {
            c.ranges.fetch_add(1, Ordering::Relaxed);
            c.blob_bytes
                .fetch_add(answer.body().len() as u64, Ordering::Relaxed);
        }
        Ok(answer)
    }
}

/// When the file callbacks came, seconds from the first round's start.
struct Clock {
    started: Instant,
    up_first: Option<f64>,
    up_done: Option<f64>,
    down_first: Option<f64>,
    down_last: Option<f64>,
    callbacks: u64,
}

impl SyncObserver for Clock {
    fn file_progress(
        &mut self,
        _app: &str,
        direction: FileDirection,
        _name: &str,
        done: u64,
        total: u64,
    ) {
        let t = self.started.elapsed().as_secs_f64();
        self.callbacks += 1;
        match direction {
            FileDirection::Upload => {
                self.up_first.get_or_insert(t);
                if done >= total {
                    self.up_done = Some(t);
                }
            }
            FileDirection::Download => {
                self.down_first.get_or_insert(t);
                self.down_last = Some(t);
            }
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The child: `__files-sync-device upload URL PIN CODE DIR APP SIZE SEED`
/// or `download URL PIN CODE DIR APP`. Enrolls (prints `enrolled <device
/// id>`), an uploader then stores SIZE bytes of noise and a record that
/// names them, prints `ready` and waits for a line on stdin; then runs
/// sync rounds until one succeeds (a cut connection fails a round: the
/// vault is unlocked again and the next round resumes), and prints
/// `result <json>`.
pub(crate) fn child(args: &[String]) {
    let (mode, url, pin, code, dir, app) = (
        args[0].as_str(),
        &args[1],
        &args[2],
        &args[3],
        Path::new(&args[4]),
        args[5].as_str(),
    );
    let counts = Arc::new(Counts::default());
    let agent = Agent::with_connector(Arc::new(Counting {
        inner: coffer_agent::http::ReqwestConnector::default(),
        counts: Arc::clone(&counts),
    }));
    let space = Space::new(dir);
    let author = if mode == "upload" { "alice" } else { "bob" };
    let vault = space
        .create_vault("device", author, &passphrase(), &kdf())
        .unwrap();
    vault.add_app(app, Capabilities::all()).unwrap();
    let control = ControlPlane::new(url, Trust::parse_pin(pin).unwrap()).unwrap();
    let (enrolled, vault) = agent
        .enroll(
            vault,
            &control,
            code.as_str().into(),
            &format!("{mode}-{}", std::process::id()),
        )
        .unwrap();
    say(&format!("enrolled {}", enrolled.device_id));
    let (mut put_secs, mut stored_sha256) = (None, None);
    if mode == "upload" {
        let (size, seed): (u64, u64) = (args[6].parse().unwrap(), args[7].parse().unwrap());
        let files = vault.app(app).unwrap().files().unwrap();
        let started = Instant::now();
        let info = files
            .put(
                FILE_NAME,
                &mut Noise::new(seed, size),
                Some(CONTENT_TYPE),
                &mut |_| {},
            )
            .unwrap();
        put_secs = Some(started.elapsed().as_secs_f64());
        assert_eq!(info.size, size);
        stored_sha256 = info.sha256;
        drop(files);
        vault
            .app(app)
            .unwrap()
            .records()
            .unwrap()
            .put_with_files(
                "scans",
                "s-1",
                &json!({"note": "a scan"}),
                None,
                &[FILE_NAME],
            )
            .unwrap();
    }
    say("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();

    let secret = coffer_agent::UnlockSecret::Passphrase(passphrase());
    reset_peak_rss();
    let usage_before = usage();
    let mut clock = Clock {
        started: Instant::now(),
        up_first: None,
        up_done: None,
        down_first: None,
        down_last: None,
        callbacks: 0,
    };
    let (mut vault, mut failed, mut errors) = (Some(vault), 0u32, Vec::new());
    let report = loop {
        match agent.sync(vault.take().unwrap(), &mut clock) {
            Ok((report, back)) => {
                vault = Some(back);
                break report;
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 3 {
                    errors.push(e.to_string());
                }
                assert!(
                    e.is_unreachable() && failed < MAX_ROUNDS,
                    "round {failed} failed: {e}"
                );
                // The failed round took the vault: unlock it again, as an
                // app would.
                vault = Some(
                    agent
                        .unlock(&space.vault("device").unwrap(), &secret)
                        .unwrap(),
                );
            }
        }
    };
    let secs = clock.started.elapsed().as_secs_f64();
    let (cpu, faults) = usage_since(usage_before);
    let rss = peak_rss_kib();
    let vault = vault.unwrap();
    let app_report = report.apps.iter().find(|a| a.app == app).unwrap();
    let held = vault
        .app(app)
        .unwrap()
        .files()
        .unwrap()
        .info(FILE_NAME)
        .unwrap();
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let result = json!({
        "secs": secs,
        "cpu_secs": cpu,
        "minor_faults": faults,
        "put_secs": put_secs,
        "upload_secs": clock.up_done.zip(clock.up_first).map(|(b, a)| b - a),
        "download_secs": clock.down_first.map(|a| secs - a),
        "fetch_secs": clock.down_last.zip(clock.down_first).map(|(b, a)| b - a),
        "failed_rounds": failed,
        "errors": errors,
        "callbacks": clock.callbacks,
        "applied": app_report.applied,
        "pulled": app_report.pulled,
        "files_uploaded": app_report.files_uploaded,
        "bytes_uploaded": app_report.bytes_uploaded,
        "files_downloaded": app_report.files_downloaded,
        "bytes_downloaded": app_report.bytes_downloaded,
        "problems": app_report.file_problems.iter().map(|p| p.code.clone()).collect::<Vec<_>>(),
        "requests": load(&counts.requests),
        "pieces": load(&counts.pieces),
        "piece_bytes": load(&counts.piece_bytes),
        "ranges": load(&counts.ranges),
        "blob_bytes": load(&counts.blob_bytes),
        "piece_wait_secs": load(&counts.piece_wait_us) as f64 / 1e6,
        "range_wait_secs": load(&counts.range_wait_us) as f64 / 1e6,
        "stored_sha256": stored_sha256,
        "held_sha256": held.as_ref().and_then(|i| i.sha256.clone()),
        "held_size": held.as_ref().map(|i| i.size),
        "rss_kib": rss,
    });
    drop(vault);
    say(&format!("result {result}"));
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

    fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("the files sync device ended early")
            .unwrap()
    }

    fn enrolled(&mut self) -> i64 {
        let line = self.line();
        line.strip_prefix("enrolled ")
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap()
    }

    fn ready(&mut self) {
        let line = self.line();
        assert_eq!(line, "ready");
    }

    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn result(mut self) -> Value {
        let line = self.line();
        let json = line
            .strip_prefix("result ")
            .unwrap_or_else(|| panic!("{line}"));
        let value = serde_json::from_str(json).unwrap();
        assert!(self.child.wait().unwrap().success());
        value
    }
}

// --- The parent ---

/// What [`run_timed`] saw of a process.
struct Ran {
    elapsed: Duration,
    /// Peak RSS, KiB.
    rss: Option<u64>,
    /// User + system CPU seconds.
    cpu: Option<f64>,
    /// Minor page faults.
    faults: Option<u64>,
    stdout: String,
}

/// Runs `program args…` under GNU time, its output captured. Panics if
/// it fails.
fn run_timed(program: &str, args: &[&std::ffi::OsStr]) -> Ran {
    let report = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let gnu_time = Path::new("/usr/bin/time");
    let mut command = if gnu_time.exists() {
        let mut c = Command::new(gnu_time);
        c.arg("-f")
            .arg("%M %U %S %R")
            .arg("-o")
            .arg(report.path())
            .arg(program);
        c
    } else {
        // Without GNU time: no peak RSS, CPU or faults for curl ("n/a").
        Command::new(program)
    };
    let output = command
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (the files sync rows need curl)"));
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{program} failed: {}",
        output.status
    );
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    let last: Vec<f64> = text
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    Ran {
        elapsed,
        rss: last.first().map(|k| *k as u64),
        cpu: (last.len() == 4).then(|| last[1] + last[2]),
        faults: (last.len() == 4).then(|| last[3] as u64),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

/// What curl's `--write-out` of [`WRITE_OUT`] says of its transfers:
/// (HTTP status, new connections, HTTP version) each.
fn curl_transfers(stdout: &str) -> Vec<(u16, u64, String)> {
    stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_owned(),
            )
        })
        .collect()
}

/// curl's `--write-out` for [`curl_transfers`].
const WRITE_OUT: &str = "%{http_code} %{num_connects} %{http_version}\\n";

/// `perf record` of some processes while a transfer runs, when the
/// environment names a directory in `COFFER_BENCH_PERF` (the profiles
/// docs/benchmark-analysis.md reads): `<dir>/<label>.data`.
struct Profile(Option<std::process::Child>);

impl Profile {
    fn start(label: &str, pids: &[u32]) -> Profile {
        let Some(dir) = std::env::var_os("COFFER_BENCH_PERF") else {
            return Profile(None);
        };
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["record", "-q", "-F", "999", "-p", &pids.join(","), "-o"])
            .arg(Path::new(&dir).join(format!("{label}.data")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        // Let it attach before the transfer starts.
        std::thread::sleep(Duration::from_millis(300));
        Profile(child)
    }

    fn stop(self) {
        if let Some(mut perf) = self.0 {
            let _ = Command::new("kill")
                .args(["-INT", &perf.id().to_string()])
                .status();
            let _ = perf.wait();
        }
    }
}

/// One transfer's numbers.
#[derive(Debug, Clone, Default)]
struct Transfer {
    secs: f64,
    /// This process's (the server's) RSS before the transfer and its peak
    /// during it, KiB.
    server_before: Option<u64>,
    server_peak: Option<u64>,
    /// The server's CPU seconds and minor page faults during the transfer.
    server_cpu: f64,
    server_faults: u64,
    /// The client's (device's, or curl's) peak RSS and CPU seconds.
    client_rss: Option<u64>,
    client_cpu: Option<f64>,
    client_faults: Option<u64>,
}

impl Transfer {
    fn server_growth(&self) -> Option<u64> {
        Some(self.server_peak?.saturating_sub(self.server_before?))
    }
}

/// Starts watching the server's memory and CPU: (RSS now, [`usage`] now).
/// First writes back every dirty page (`sync`): the file a device or
/// curl's pieces were just written to would otherwise be written back
/// during the transfer, and land in its time.
fn watch_server() -> (Option<u64>, (f64, u64)) {
    let _ = Command::new("sync").status();
    reset_peak_rss();
    (rss_kib(), usage())
}

/// The parent's side: the server, its owner, and the devices' settings.
struct Bench {
    runtime: tokio::runtime::Runtime,
    dir: PathBuf,
    base: String,
    server_addr: std::net::SocketAddr,
    fingerprint: String,
    cert: PathBuf,
    admin: Admin,
    /// The device token curl sends (a device enrolled through the API).
    curl_token: String,
    size: u64,
    piece: u64,
    policy_version: u64,
}

impl Bench {
    /// Publishes a policy whose `sync` lists only `app`.
    fn new_app(&mut self, app: &str) {
        self.policy_version += 1;
        let path = format!("/v1/orgs/{}/policies", self.admin.org);
        let body = json!({"version": self.policy_version, "rules": {"sync": [app]}});
        self.runtime
            .block_on(self.admin.post(&path, body, Some(&self.admin.session)));
    }

    fn device_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// coffer's upload of SIZE bytes of `seed` in `app` through `url`:
    /// (the transfer, the device's result).
    fn coffer_upload(&self, url: &str, app: &str, seed: u64) -> (Transfer, Value) {
        let code = self.runtime.block_on(self.admin.code());
        let dir = self.device_dir(&format!("up-{app}"));
        let (size, seed) = (self.size.to_string(), seed.to_string());
        let mut device = Device::start(&[
            "upload",
            url,
            &self.fingerprint,
            &code,
            dir.to_str().unwrap(),
            app,
            &size,
            &seed,
        ]);
        let id = device.enrolled();
        self.runtime.block_on(self.admin.bind(id, "alice"));
        device.ready();
        let profile = Profile::start(
            &format!("upload-coffer-{app}"),
            &[device.child.id(), std::process::id()],
        );
        let (rss_before, usage_before) = watch_server();
        device.go();
        let result = device.result();
        profile.stop();
        let (server_cpu, server_faults) = usage_since(usage_before);
        let transfer = Transfer {
            secs: result["upload_secs"].as_f64().unwrap_or(f64::NAN),
            server_before: rss_before,
            server_peak: peak_rss_kib(),
            server_cpu,
            server_faults,
            client_rss: result["rss_kib"].as_u64(),
            client_cpu: result["cpu_secs"].as_f64(),
            client_faults: result["minor_faults"].as_u64(),
        };
        assert_eq!(result["files_uploaded"].as_u64(), Some(1), "{result}");
        assert_eq!(result["applied"].as_u64(), Some(1), "{result}");
        std::fs::remove_dir_all(&dir).unwrap();
        (transfer, result)
    }

    /// coffer's download of the file of `app` by a new device.
    fn coffer_download(&self, app: &str, sha256: &str) -> (Transfer, Value) {
        let code = self.runtime.block_on(self.admin.code());
        let dir = self.device_dir(&format!("down-{app}"));
        let mut device = Device::start(&[
            "download",
            &self.base,
            &self.fingerprint,
            &code,
            dir.to_str().unwrap(),
            app,
        ]);
        device.enrolled();
        device.ready();
        let profile = Profile::start(
            &format!("download-coffer-{app}"),
            &[device.child.id(), std::process::id()],
        );
        let (rss_before, usage_before) = watch_server();
        device.go();
        let result = device.result();
        profile.stop();
        let (server_cpu, server_faults) = usage_since(usage_before);
        let transfer = Transfer {
            secs: result["download_secs"].as_f64().unwrap_or(f64::NAN),
            server_before: rss_before,
            server_peak: peak_rss_kib(),
            server_cpu,
            server_faults,
            client_rss: result["rss_kib"].as_u64(),
            client_cpu: result["cpu_secs"].as_f64(),
            client_faults: result["minor_faults"].as_u64(),
        };
        assert_eq!(result["failed_rounds"].as_u64(), Some(0), "{result}");
        assert_eq!(result["files_downloaded"].as_u64(), Some(1), "{result}");
        assert_eq!(result["held_sha256"].as_str(), Some(sha256), "{result}");
        assert_eq!(result["held_size"].as_u64(), Some(self.size), "{result}");
        std::fs::remove_dir_all(&dir).unwrap();
        (transfer, result)
    }

    fn files_url(&self, app: &str, rest: &str) -> String {
        format!("{}/v1/device/files/{app}/{rest}", self.base)
    }

    /// curl's upload of another file of SIZE bytes (of `seed`) in `app`:
    /// the pieces written to files and the upload created (not timed),
    /// then one curl process sending every piece.
    fn curl_upload(&self, app: &str, seed: u64, how: CurlUpload) -> (Transfer, CurlSaw) {
        let pieces_dir = self.device_dir("curl-pieces");
        let (size, piece) = (self.size, self.piece);
        let mut noise = Noise::new(seed, size);
        let mut whole = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; usize::try_from(piece).unwrap()];
        let mut pieces = Vec::new();
        let mut offset = 0;
        while offset < size {
            let n = usize::try_from(piece.min(size - offset)).unwrap();
            noise.read_exact(&mut buf[..n]).unwrap();
            whole.update(&buf[..n]);
            let path = pieces_dir.join(format!("piece-{}", pieces.len()));
            std::fs::write(&path, &buf[..n]).unwrap();
            pieces.push((offset, piece_checksum(&buf[..n]), path));
            offset += n as u64;
        }
        drop(buf);
        let sha256 = hex(whole.finish().as_ref());
        let created = self.runtime.block_on(self.admin.post(
            &format!("/v1/device/files/{app}/uploads"),
            json!({"sha256": sha256, "size": size, "content_type": CONTENT_TYPE}),
            Some(&self.curl_token),
        ));
        assert_eq!(
            created["upload"]["piece_size"].as_u64(),
            Some(piece),
            "{created}"
        );
        let id = created["upload"]["id"].as_str().unwrap().to_owned();
        let url = self.files_url(app, &format!("uploads/{id}"));
        let quote = |p: &Path| p.display().to_string();
        let mut config = String::new();
        for (i, (offset, checksum, path)) in pieces.iter().enumerate() {
            if i > 0 {
                config.push_str("next\n");
            }
            config.push_str(&format!(
                "url = \"{url}\"\nrequest = \"PATCH\"\nhttp1.1\ncacert = \"{}\"\nsilent\nshow-error\nfail\noutput = \"/dev/null\"\nwrite-out = \"{WRITE_OUT}\"\n\
                 header = \"x-auth-token: {}\"\nheader = \"content-type: application/offset+octet-stream\"\nheader = \"expect:\"\n\
                 header = \"upload-offset: {offset}\"\nheader = \"upload-checksum: {checksum}\"\n{} = \"{}{}\"\n",
                quote(&self.cert),
                self.curl_token,
                match how {
                    CurlUpload::Streamed => "upload-file",
                    CurlUpload::ReadFirst => "data-binary",
                },
                match how {
                    CurlUpload::Streamed => "",
                    CurlUpload::ReadFirst => "@",
                },
                quote(path)
            ));
        }
        let config_path = self.dir.join("curl-upload.conf");
        std::fs::write(&config_path, config).unwrap();
        let profile = Profile::start(&format!("upload-curl-{how:?}-{app}"), &[std::process::id()]);
        let (rss_before, usage_before) = watch_server();
        let ran = run_timed(CURL, &["-K".as_ref(), config_path.as_os_str()]);
        profile.stop();
        let (server_cpu, server_faults) = usage_since(usage_before);
        let transfer = Transfer {
            secs: ran.elapsed.as_secs_f64(),
            server_before: rss_before,
            server_peak: peak_rss_kib(),
            server_cpu,
            server_faults,
            client_rss: ran.rss,
            client_cpu: ran.cpu,
            client_faults: ran.faults,
        };
        let transfers = curl_transfers(&ran.stdout);
        assert_eq!(transfers.len(), pieces.len(), "{}", ran.stdout);
        assert!(transfers.iter().all(|t| t.0 == 200), "{}", ran.stdout);
        // Every piece landed: the upload is complete.
        let status: Value = self.runtime.block_on(async {
            self.admin
                .http
                .get(&url)
                .header("x-auth-token", &self.curl_token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        assert_eq!(status["complete"].as_bool(), Some(true), "{status}");
        assert_eq!(status["offset"].as_u64(), Some(size), "{status}");
        std::fs::remove_dir_all(&pieces_dir).unwrap();
        (transfer, CurlSaw::of(&transfers))
    }

    /// curl's download of the blob `sha256` of `app`, whole, into a file in
    /// the same directory as the devices'; and that file's fsync, apart.
    fn curl_download(&self, app: &str, sha256: &str) -> (Transfer, f64, CurlSaw) {
        let out = self.dir.join("curl-download.bin");
        let url = self.files_url(app, &format!("blobs/{sha256}"));
        let token = format!("x-auth-token: {}", self.curl_token);
        let profile = Profile::start(&format!("download-curl-{app}"), &[std::process::id()]);
        let (rss_before, usage_before) = watch_server();
        let ran = run_timed(
            CURL,
            &[
                "--write-out".as_ref(),
                WRITE_OUT.replace("\\n", "\n").as_ref(),
                "--silent".as_ref(),
                "--show-error".as_ref(),
                "--fail".as_ref(),
                "--http1.1".as_ref(),
                "--cacert".as_ref(),
                self.cert.as_os_str(),
                "-H".as_ref(),
                token.as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
                url.as_ref(),
            ],
        );
        let (server_cpu, server_faults) = usage_since(usage_before);
        let transfer = Transfer {
            secs: ran.elapsed.as_secs_f64(),
            server_before: rss_before,
            server_peak: peak_rss_kib(),
            server_cpu,
            server_faults,
            client_rss: ran.rss,
            client_cpu: ran.cpu,
            client_faults: ran.faults,
        };
        profile.stop();
        let transfers = curl_transfers(&ran.stdout);
        assert_eq!(transfers.len(), 1, "{}", ran.stdout);
        assert_eq!(transfers[0].0, 200, "{}", ran.stdout);
        let started = Instant::now();
        File::open(&out).unwrap().sync_all().unwrap();
        let fsync = started.elapsed().as_secs_f64();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), self.size);
        std::fs::remove_file(&out).unwrap();
        (transfer, fsync, CurlSaw::of(&transfers))
    }
}

/// How curl sends a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CurlUpload {
    /// `upload-file = "piece"` (`-T`): read from the file as it is sent.
    Streamed,
    /// `data-binary = "@piece"`: curl reads every piece of its config into
    /// memory as it parses it, before the first request.
    ReadFirst,
}

/// How curl's transfers went: connections opened, HTTP versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CurlSaw {
    connections: u64,
    versions: Vec<String>,
}

impl CurlSaw {
    fn of(transfers: &[(u16, u64, String)]) -> CurlSaw {
        let mut versions: Vec<String> = transfers.iter().map(|t| t.2.clone()).collect();
        versions.sort();
        versions.dedup();
        CurlSaw {
            connections: transfers.iter().map(|t| t.1).sum(),
            versions,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} connection{}, HTTP/{}",
            self.connections,
            if self.connections == 1 { "" } else { "s" },
            self.versions.join(", ")
        )
    }
}

/// The uploads through the proxy, with or without cuts.
#[derive(Default)]
struct Proxied {
    /// Client-to-server bytes the proxy forwarded, over the file's size.
    sent: Vec<f64>,
    /// Piece bytes the device handed to its transport, over the size.
    piece_bytes: Vec<f64>,
    /// First piece to last acknowledged, across rounds.
    span: Samples,
    /// All the rounds, the unlocks between them included.
    wall: Samples,
    failed: Vec<u64>,
    connections: Vec<u64>,
}

impl Proxied {
    fn push(&mut self, proxy: &CutProxy, result: &Value, size: u64) {
        let share = |n: f64| n / size as f64;
        self.sent.push(share(proxy.up() as f64));
        self.piece_bytes
            .push(share(result["piece_bytes"].as_f64().unwrap_or(f64::NAN)));
        self.span
            .0
            .push(result["upload_secs"].as_f64().unwrap_or(f64::NAN));
        self.wall
            .0
            .push(result["secs"].as_f64().unwrap_or(f64::NAN));
        self.failed
            .push(result["failed_rounds"].as_u64().unwrap_or(u64::MAX));
        self.connections.push(proxy.connections());
        assert_eq!(
            proxy.cuts() > 0,
            self.failed.last() != Some(&0),
            "cuts {} but failed rounds {result}",
            proxy.cuts()
        );
    }

    fn list(&self, v: &[f64]) -> String {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn list_u64(&self, v: &[u64]) -> String {
        v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    }

    fn failed_rounds(&self) -> String {
        self.list_u64(&self.failed)
    }
}

/// The samples of one side of one direction.
#[derive(Default)]
struct Side {
    secs: Samples,
    runs: Vec<Transfer>,
}

impl Side {
    fn push(&mut self, t: Transfer) {
        self.secs.0.push(t.secs);
        self.runs.push(t);
    }

    fn rate(&self, bytes: u64) -> String {
        format!("{} ({})", self.secs.throughput(bytes), self.secs.seconds())
    }

    /// The largest server RSS growth of the runs, KiB, and the peak then.
    fn worst_growth(&self) -> (Option<u64>, Option<u64>) {
        let worst = self
            .runs
            .iter()
            .filter_map(|t| Some((t.server_growth()?, t)))
            .max_by_key(|(g, _)| *g);
        (
            worst.map(|(g, _)| g),
            worst.and_then(|(_, t)| t.server_peak),
        )
    }

    /// Each run's server RSS growth, in order: "+30, +2, +1 MiB".
    fn growths(&self) -> String {
        let each: Vec<String> = self
            .runs
            .iter()
            .map(|t| {
                t.server_growth()
                    .map_or("?".into(), |k| k.div_ceil(1024).to_string())
            })
            .collect();
        format!("+{} MiB", each.join(", +"))
    }

    fn worst_client_rss(&self) -> Option<u64> {
        self.runs.iter().filter_map(|t| t.client_rss).max()
    }

    fn cpu(&self) -> String {
        let median = |v: Vec<f64>| {
            let mut v = v;
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let server = median(self.runs.iter().map(|t| t.server_cpu).collect());
        let client = median(self.runs.iter().filter_map(|t| t.client_cpu).collect());
        // Minor faults of 4 KiB pages, as MiB of memory faulted in.
        let faulted = |v: Vec<f64>| median(v).map(|n| n * 4.0 / 1024.0);
        let server_faults = faulted(self.runs.iter().map(|t| t.server_faults as f64).collect());
        let client_faults = faulted(
            self.runs
                .iter()
                .filter_map(|t| t.client_faults.map(|n| n as f64))
                .collect(),
        );
        let s = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{x:.1} s"));
        let f = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{x:.0} MiB"));
        format!(
            "server {} ({} of pages faulted in), client {} ({})",
            s(server),
            f(server_faults),
            s(client),
            f(client_faults)
        )
    }
}

fn median(v: &[f64]) -> f64 {
    Samples(v.to_vec()).median()
}

pub(crate) fn run(scale: &Scale) -> Vec<Section> {
    let size = scale.files_sync_bytes;
    // The server's default piece (4 MiB) for large files; smaller for the
    // short runs, so that they still have pieces to resume between.
    let piece = (size / 64).clamp(MIN_PIECE_SIZE, DEFAULT_PIECE_SIZE);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let blobs = coffer_server::blobs::BlobStorage::local(dir.join("blobs")).unwrap();
    let server = runtime
        .block_on(Server::bind(&ServeConfig {
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
        }))
        .unwrap()
        .with_blob_storage(blobs)
        .with_piece_size(piece);
    let server_addr = server.local_addr().unwrap();
    let base = format!("https://127.0.0.1:{}", server_addr.port());
    let fingerprint = server.tls_fingerprint().unwrap().to_owned();
    let setup_token = server.setup_token().unwrap().to_owned();
    let cert = dir.join("tls").join("dev-tls-cert.pem");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = runtime.spawn(server.run(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let admin = runtime.block_on(crate::sync::admin(http, base.clone(), setup_token));
    let curl_token = runtime.block_on(async {
        let code = admin.code().await;
        admin
            .post("/v1/enroll", json!({"code": code, "name": "curl"}), None)
            .await["device_token"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    let mut bench = Bench {
        runtime,
        dir,
        base: base.clone(),
        server_addr,
        fingerprint,
        cert,
        admin,
        curl_token,
        size,
        piece,
        // sync::admin published version 1.
        policy_version: 1,
    };

    let (mut up_coffer, mut up_curl, mut up_curl_data) =
        (Side::default(), Side::default(), Side::default());
    let (mut down_coffer, mut down_curl) = (Side::default(), Side::default());
    let (mut put_secs, mut fetch_secs, mut curl_fsync) = (Vec::new(), Vec::new(), Vec::new());
    let (mut piece_wait, mut range_wait) = (Vec::new(), Vec::new());
    let mut up_requests = 0;
    let mut down_ranges = 0;
    let (mut curl_up_saw, mut curl_down_saw) = (CurlSaw::default(), CurlSaw::default());
    for round in 0..scale.rounds {
        let app = format!("files-r{round}");
        bench.new_app(&app);
        let seed = 1 + 10 * round as u64;
        let coffer_first = round % 2 == 0;
        eprintln!("  files sync: round {} of {}…", round + 1, scale.rounds);
        // Uploads: coffer, curl streaming its pieces, curl reading them
        // first, in an order that turns from round to round.
        let mut result = Value::Null;
        for k in 0..3 {
            match (round + k) % 3 {
                0 => {
                    let (t, r) = bench.coffer_upload(&base, &app, seed);
                    up_coffer.push(t);
                    result = r;
                }
                1 => {
                    let (t, saw) = bench.curl_upload(&app, seed + 1, CurlUpload::Streamed);
                    up_curl.push(t);
                    curl_up_saw = saw;
                }
                _ => {
                    let (t, _) = bench.curl_upload(&app, seed + 2, CurlUpload::ReadFirst);
                    up_curl_data.push(t);
                }
            }
        }
        assert_eq!(result["failed_rounds"].as_u64(), Some(0), "{result}");
        put_secs.push(result["put_secs"].as_f64().unwrap_or(f64::NAN));
        piece_wait.push(result["piece_wait_secs"].as_f64().unwrap_or(f64::NAN));
        up_requests = result["pieces"].as_u64().unwrap_or(0);
        let sha256 = result["stored_sha256"].as_str().unwrap().to_owned();
        let mut coffer_down = || {
            let (t, r) = bench.coffer_download(&app, &sha256);
            fetch_secs.push(r["fetch_secs"].as_f64().unwrap_or(f64::NAN));
            range_wait.push(r["range_wait_secs"].as_f64().unwrap_or(f64::NAN));
            down_ranges = r["ranges"].as_u64().unwrap_or(0);
            down_coffer.push(t);
        };
        if coffer_first {
            coffer_down();
        }
        let (t, fsync, saw) = bench.curl_download(&app, &sha256);
        down_curl.push(t);
        curl_fsync.push(fsync);
        curl_down_saw = saw;
        if !coffer_first {
            coffer_down();
        }
    }

    // The resume row: the same upload through the cutting proxy, uncut and
    // cut CUTS times, alternating which goes first.
    let resume_rounds = scale.rounds.min(3);
    let (mut uncut, mut cut) = (Proxied::default(), Proxied::default());
    for round in 0..resume_rounds {
        for k in 0..2 {
            let cuts = if (round + k) % 2 == 0 { 0 } else { CUTS };
            eprintln!(
                "  files sync: upload through the proxy, {cuts} cuts ({} of {resume_rounds})…",
                round + 1
            );
            let app = format!("files-proxy-{round}-{cuts}");
            bench.new_app(&app);
            let marks: Vec<u64> = (1..=cuts).map(|k| k * size / (cuts + 1)).collect();
            let proxy = CutProxy::start(bench.server_addr, marks);
            let url = format!("https://127.0.0.1:{}", proxy.addr.port());
            let seed = 1000 + 10 * round as u64 + cuts;
            let (_, result) = bench.coffer_upload(&url, &app, seed);
            assert_eq!(proxy.marks_left(), 0, "{result}");
            let into = if cuts == 0 { &mut uncut } else { &mut cut };
            into.push(&proxy, &result, size);
        }
    }

    let _ = stop.send(());
    let _ = bench.runtime.block_on(running);
    drop(tmp);

    let gib = if size >= 1 << 30 {
        format!("{:.2} GiB", size as f64 / f64::from(1u32 << 30))
    } else {
        format!("{} MiB", size >> 20)
    };
    // coffer's rate over curl's: the median of each round's ratio (the two
    // ran side by side, so a drift of the machine cancels), and the ratio
    // of the medians.
    let share = |coffer: &Side, curl: &Side| {
        let each: Vec<f64> = coffer
            .secs
            .0
            .iter()
            .zip(&curl.secs.0)
            .map(|(c, k)| k / c)
            .collect();
        median(&each)
    };
    let share_of_medians = |coffer: &Side, curl: &Side| curl.secs.median() / coffer.secs.median();
    let each_round = |side: &Side| {
        side.secs
            .0
            .iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Against the faster of curl's two ways.
    let (up_share_streamed, up_share_read) = (
        share(&up_coffer, &up_curl),
        share(&up_coffer, &up_curl_data),
    );
    let up_share = up_share_streamed.min(up_share_read);
    let down_share = share(&down_coffer, &down_curl);
    let met = |ok: bool| if ok { "met" } else { "missed" };
    let bound = 100 * 1024;
    let under = |k: Option<u64>| k.is_some_and(|k| k < bound);

    let mut table = "| row | coffer | curl (reference) | coffer's rate / curl's (median of the rounds') | goal |\n|---|---|---|---|---|\n".to_owned();
    table.push_str(&format!(
        "| upload of {gib}; curl with `upload-file` (each piece streamed from its file) | {} (of which {:.3} s in the transport's `send` of pieces: out, the server's work, the answer) | {} | {:.0}% (ratio of the medians: {:.0}%) | ≥ 70% of the faster curl: {} |\n",
        up_coffer.rate(size),
        median(&piece_wait),
        up_curl.rate(size),
        up_share_streamed * 100.0,
        share_of_medians(&up_coffer, &up_curl) * 100.0,
        met(up_share >= 0.70)
    ));
    table.push_str(&format!(
        "| the same upload; curl with `data-binary @piece` (curl reads every piece into memory first; peak RSS {}) | | {} | {:.0}% ({:.0}%) | |\n",
        mib(up_curl_data.worst_client_rss()),
        up_curl_data.rate(size),
        up_share_read * 100.0,
        share_of_medians(&up_coffer, &up_curl_data) * 100.0,
    ));
    table.push_str(&format!(
        "| each round's upload, s | {} | `upload-file`: {}; `data-binary`: {} | | |\n",
        each_round(&up_coffer),
        each_round(&up_curl),
        each_round(&up_curl_data),
    ));
    table.push_str(&format!(
        "| download of {gib} | {} (of which the ranges {:.3} s — {:.3} s of it in the transport's `send`: the request, the server's work, the answer read whole — and the end — whole-file check, fsync, switch — the rest) | {} (+ fsync of the file afterwards: {:.3} s, not counted) | {:.0}% ({:.0}%) | ≥ 70%: {} |\n",
        down_coffer.rate(size),
        median(&fetch_secs),
        median(&range_wait),
        down_curl.rate(size),
        median(&curl_fsync),
        down_share * 100.0,
        share_of_medians(&down_coffer, &down_curl) * 100.0,
        met(down_share >= 0.70)
    ));
    table.push_str(&format!(
        "| each round's download, s | {} | {} | | |\n",
        each_round(&down_coffer),
        each_round(&down_curl),
    ));
    let mut memory_ok = true;
    for (what, coffer, curl) in [
        ("upload", &up_coffer, &up_curl),
        ("download", &down_coffer, &down_curl),
    ] {
        let (cg, cp) = coffer.worst_growth();
        let (kg, kp) = curl.worst_growth();
        let ok = under(cg) && under(kg);
        memory_ok &= ok;
        table.push_str(&format!(
            "| the server's RSS during the {what}: largest growth over its RSS before (peak RSS then; each round's growth) | +{} ({}; {}) | +{} ({}; {}) | | growth < 100 MiB: {} |\n",
            mib(cg),
            mib(cp),
            coffer.growths(),
            mib(kg),
            mib(kp),
            curl.growths(),
            met(ok)
        ));
        let device = coffer.worst_client_rss();
        memory_ok &= under(device);
        table.push_str(&format!(
            "| the client's peak RSS during the {what} (the device process; curl's by GNU time) | {} | {} | | device < 100 MiB: {} |\n",
            mib(device),
            mib(curl.worst_client_rss()),
            met(under(device))
        ));
        table.push_str(&format!(
            "| CPU time during the {what} (medians; minor page faults as MiB of 4 KiB pages) | {} | {} | | |\n",
            coffer.cpu(),
            curl.cpu()
        ));
    }
    let worst_sent = cut.sent.iter().copied().fold(f64::NAN, f64::max);
    let slower = cut.span.median() / uncut.span.median();
    table.push_str(&format!(
        "| upload of {gib} through a proxy that cuts every connection {CUTS} times (at marks evenly spread over the file), {resume_rounds} runs | {} rounds failed and the next resumed (each run); sent client → server in all (TLS records, headers, retries): {}× the file; piece bytes handed to the transport {}× | uncut through the same proxy: {}× the file sent | | ≤ 1.10× (the worst run): {} |\n",
        cut.failed_rounds(),
        cut.list(&cut.sent),
        cut.list(&cut.piece_bytes),
        uncut.list(&uncut.sent),
        met(worst_sent <= 1.10)
    ));
    table.push_str(&format!(
        "| the time of that upload | {} from the first piece to the last acknowledged; {} of rounds in all ({} connections) | uncut through the same proxy: {} and {} ({} connections); direct, uncut: {} (median above) | {slower:.2}× the uncut upload's time through the proxy | |\n",
        cut.span.seconds(),
        cut.wall.seconds(),
        cut.list_u64(&cut.connections),
        uncut.span.seconds(),
        uncut.wall.seconds(),
        uncut.list_u64(&uncut.connections),
        up_coffer.secs.seconds(),
    ));

    let goals = vec![
        crate::measure::goal_at_least(
            "upload: coffer's rate, share of the faster curl's",
            up_share,
            0.70,
        ),
        crate::measure::goal_at_least(
            "download: coffer's rate, share of curl's",
            down_share,
            0.70,
        ),
        format!(
            "flat memory: the server's RSS grows by at most {} / {} (upload / download; goal < 100 MiB), the device's peak RSS {} / {} (goal < 100 MiB): {}",
            mib(up_coffer.worst_growth().0.max(up_curl.worst_growth().0)),
            mib(down_coffer.worst_growth().0.max(down_curl.worst_growth().0)),
            mib(up_coffer.worst_client_rss()),
            mib(down_coffer.worst_client_rss()),
            met(memory_ok)
        ),
        format!(
            "resume after {CUTS} cuts: at most {worst_sent:.3}× the file sent, goal ≤ 1.10×: {}; {slower:.2}× the uncut upload's time (medians)",
            met(worst_sent <= 1.10),
        ),
    ];
    vec![Section {
        title: format!("Files sync: {gib} up and down over loopback TLS, against curl"),
        setup: format!(
            "An in-process `coffer serve` on SQLite, its blobs in a local directory (each piece sealed and fsynced before it is acknowledged), TLS 1.3 with its development certificate (rustls, ring) on 127.0.0.1; pieces of {} KiB. Both clients speak HTTP/1.1 on one kept-alive connection and check the certificate (the device pins its SHA-256; curl 7.88 with OpenSSL gets `--cacert`). \
             **Upload**: a device (a child process, the default reqwest transport; its vault and file store in the same temporary directory) stores a file of random bytes ({:.1} s for the put, median: not timed), attaches it to a record and runs one `Agent::sync`; timed from the first upload `file_progress` callback (the upload declared, offset 0, after the check-in and the create) to the one that reports the last piece acknowledged (after the server's whole-file SHA-256 check): {up_requests} pieces read from the encrypted store, each hashed for its `Upload-Checksum` and sent, one at a time. The reference: another file of the same size (the server stores a file once per organization, app and SHA-256), written to piece files with their checksums computed beforehand, the upload created with the JSON POST (not timed), then one `curl -K` process whose config has one PATCH per piece (`next` between them; `Upload-Offset`, `Upload-Checksum`, `content-type: application/offset+octet-stream`, `Expect:` off, `--http1.1`, `--cacert`; the piece as `upload-file`, or in another run of another file as `data-binary @piece`), timed whole (process start and handshake included; curl said: {}). \
             **Download**: a new device pulls the record and fetches the file in {down_ranges} range requests of at most 8 MiB into a temporary file of its encrypted chunked format; timed from the first download `file_progress` callback to `Agent::sync`'s return (the whole SHA-256 check, the fsync and the atomic switch included). The reference: one `curl --http1.1 --cacert … -H x-auth-token -o FILE` of the same blob, whole (200), into a file in the same directory (no fsync; its fsync is timed apart; curl said: {}). \
             coffer and curl alternate which goes first, {} rounds, a fresh app each round; medians (spread); the share of curl's rate is the median of each round's (coffer and curl side by side), with the ratio of the medians in parentheses. Before each timed transfer every dirty page is written back (`sync`), so that the file just written for it (the device's put, curl's pieces) is not written back during it. Memory: this process holds the server and nothing else busy; its VmHWM is reset before each transfer and compared with its VmRSS then; the device's VmHWM from its sync's start. CPU and minor page faults: this process's (the server's) during the transfer, the device's over its round, curl's by GNU time. \
             **Resume**: the upload again through a TCP proxy on loopback (threads, 64 KiB copies) that shuts every connection it holds each time the client-to-server bytes it forwarded pass one of {CUTS} marks at k/{} of the file's size; the device runs rounds until one succeeds (a failed round: the vault unlocked again, the next round asks the server for the offset and goes on). Compared with the same upload through the same proxy without cuts; {resume_rounds} runs of each, alternating which goes first.",
            piece / 1024,
            median(&put_secs),
            curl_up_saw.describe(),
            curl_down_saw.describe(),
            scale.rounds,
            CUTS + 1
        ),
        table,
        goals,
    }]
}
