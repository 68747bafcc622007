//! Record sync end to end: `coffer sync` on two (and three) devices against
//! a real `coffer serve --dev-tls` process, on SQLite and on PostgreSQL.
//! Conflicts (edit against edit, delete against edit) are reported on
//! both devices and to the admin and converge once resolved; the records
//! of a local author the server does not know wait until an admin binds
//! them; a revoked device, or an app the policy drops, is purged; a device
//! whose cursor expired starts over and keeps its unpushed edits; and 60
//! SIGKILLs of the device (and some of the server) mid-round lose and
//! repeat nothing.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const PASSPHRASE: &str = "a device passphrase";
const ADMIN_PASSWORD: &str = "correct horse battery";

fn ok(out: Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A server, its organization (owner `admin`, logged in), and the rules
/// of its policy.
struct World {
    dir: tempfile::TempDir,
    url: String,
    server: support::DevServer,
    org: i64,
    policy_version: std::cell::Cell<i64>,
}

/// One enrolled device: a space with one vault, opened by `PASSPHRASE`
/// through the slot `slot`.
struct Device {
    space: PathBuf,
    id: i64,
}

impl World {
    fn new(url: Option<String>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let url =
            url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("server.db").display()));
        let server_dir = dir.path().join("server");
        std::fs::create_dir_all(&server_dir).unwrap();
        let server = support::DevServer::start(&server_dir, &url);
        let mut world = World {
            dir,
            url,
            server,
            org: 0,
            policy_version: std::cell::Cell::new(0),
        };
        world.org = ok(world.admin(&["setup", "--organization", "Acme", "--owner", "admin"]))
            ["organization_id"]
            .as_i64()
            .unwrap();
        ok(world.admin(&["login", "--user", "admin"]));
        world.publish(json!(["cases", "notes"]));
        world
    }

    fn admin(&self, args: &[&str]) -> Output {
        self.admin_with(args, &[])
    }

    fn admin_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let home = self.dir.path().join("admin");
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["--json", "admin", "--server", &self.server.base])
            .args(["--ca-cert", self.server.ca().to_str().unwrap()])
            .args(args)
            .env("XDG_DATA_HOME", &home)
            .env("HOME", &home)
            .env("COFFER_SETUP_TOKEN", &self.server.setup_token)
            .env("COFFER_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn org(&self) -> String {
        self.org.to_string()
    }

    /// Publishes the next policy version, syncing `apps`.
    fn publish(&self, apps: Value) {
        let version = self.policy_version.get() + 1;
        self.policy_version.set(version);
        let rules = self.dir.path().join(format!("rules-{version}.json"));
        std::fs::write(
            &rules,
            json!({"sync": apps, "passphrase": {"min_length": 8},
                   "min_kdf": {"memory_kib": 8, "iterations": 1, "parallelism": 1}})
            .to_string(),
        )
        .unwrap();
        ok(self.admin(&[
            "policy",
            "publish",
            "--org",
            &self.org(),
            "--version",
            &version.to_string(),
            rules.to_str().unwrap(),
        ]));
    }

    fn add_user(&self, name: &str) -> i64 {
        ok(self.admin_with(
            &["add-user", "--org", &self.org(), "--user", name],
            &[("COFFER_NEW_PASSPHRASE", "a long server password")],
        ))["user_id"]
            .as_i64()
            .unwrap()
    }

    /// A new vault opened by the slot `slot`, enrolled.
    fn device(&self, name: &str, slot: &str) -> Device {
        let code = ok(self.admin(&["enroll-code", "--org", &self.org()]))["code"]
            .as_str()
            .unwrap()
            .to_owned();
        let device = Device {
            space: self.dir.path().join(name),
            id: 0,
        };
        ok(device.run(&["init", "--name", slot, "--kdf-time-ms", "0"]));
        let enrolled = ok(device.run(&[
            "enroll",
            "--server",
            &self.server.base,
            "--code",
            &code,
            "--pin-sha256",
            &self.server.fingerprint,
        ]));
        // The apps the policy syncs (the first 'coffer sync' would make
        // them too).
        ok(device.run(&["app", "add", "cases"]));
        ok(device.run(&["app", "add", "notes"]));
        Device {
            id: enrolled["device_id"].as_i64().unwrap(),
            ..device
        }
    }

    /// Binds `device`'s local author `author` to a new user of that name.
    fn verify(&self, device: &Device, author: &str) -> Value {
        let user = self.add_user(author);
        ok(self.admin(&[
            "authors",
            "bind",
            "--org",
            &self.org(),
            "--device",
            &device.id.to_string(),
            "--author",
            author,
            "--user-id",
            &user.to_string(),
        ]))
    }

    fn conflicts_on_server(&self) -> Vec<Value> {
        ok(self.admin(&["records", "list", "--org", &self.org(), "--conflicts"]))["records"]
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Device {
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        command
            .arg("--json")
            .args(args)
            .env("COFFER_SPACE", &self.space)
            .env("COFFER_PASSPHRASE", PASSPHRASE)
            .env_remove("COFFER_RECOVERY_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn put(&self, id: &str, body: Value) {
        ok(self.run(&["records", "put", "cases", "c", id, &body.to_string()]));
    }

    fn get(&self, id: &str) -> Option<Value> {
        let out = self.run(&["records", "get", "cases", "c", id]);
        match out.status.code() {
            Some(9) => None,
            _ => {
                let record = ok(out);
                (record["deleted"] != json!(true)).then(|| record["body"].clone())
            }
        }
    }

    fn sync(&self) -> Value {
        ok(self.run(&["sync"]))
    }

    fn app_report(&self, report: &Value, app: &str) -> Value {
        report["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["app"] == app)
            .cloned()
            .unwrap_or_else(|| panic!("{app} not in {report}"))
    }

    /// The number of records in conflict, from the exit code of
    /// `coffer conflicts` (19 while any) and its listing.
    fn conflicts(&self) -> usize {
        let out = self.run(&["conflicts"]);
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let n = listed["conflicts"].as_array().unwrap().len();
        assert_eq!(
            out.status.code(),
            Some(if n > 0 { 19 } else { 0 }),
            "{listed}"
        );
        n
    }
}

/// Two devices edit the same record offline; both sync, in either order.
fn conflicts_converge(world: &World) {
    let a = world.device("tablet-a", "alice");
    let b = world.device("tablet-b", "bob");
    world.verify(&a, "alice");
    world.verify(&b, "bob");

    a.put("r1", json!({"v": "a0"}));
    let pushed = a.sync();
    assert_eq!(a.app_report(&pushed, "cases")["applied"], 1, "{pushed}");
    let pulled = b.sync();
    assert_eq!(b.app_report(&pulled, "cases")["pulled"], 1, "{pulled}");
    assert_eq!(b.get("r1"), Some(json!({"v": "a0"})));

    // Edit against edit: A syncs first.
    a.put("r1", json!({"v": "a1"}));
    b.put("r1", json!({"v": "b1"}));
    assert_eq!(a.app_report(&a.sync(), "cases")["applied"], 1);
    let b_round = b.sync();
    assert_eq!(b.app_report(&b_round, "cases")["conflicts"], 1, "{b_round}");
    // B keeps its edit; its view shows all three sides.
    assert_eq!(b.get("r1"), Some(json!({"v": "b1"})));
    assert_eq!(b.conflicts(), 1);
    let shown = ok(b.run(&["conflicts", "show", "cases", "c", "r1"]));
    assert_eq!(shown["base"], json!({"v": "a0"}), "{shown}");
    assert_eq!(shown["local"], json!({"v": "b1"}), "{shown}");
    assert_eq!(shown["server"]["body"], json!({"v": "a1"}), "{shown}");
    // A sees the conflict at its next round, and so does the admin.
    a.sync();
    assert_eq!(a.conflicts(), 1);
    let on_server = world.conflicts_on_server();
    assert_eq!(on_server.len(), 1, "{on_server:?}");
    assert_eq!(on_server[0]["id"], "r1");

    // Resolved on B (its own side kept): both converge.
    ok(b.run(&[
        "conflicts",
        "resolve",
        "cases",
        "c",
        "r1",
        "--keep",
        "local",
    ]));
    b.sync();
    a.sync();
    for device in [&a, &b] {
        assert_eq!(device.get("r1"), Some(json!({"v": "b1"})));
        assert_eq!(device.conflicts(), 0);
    }
    assert!(world.conflicts_on_server().is_empty());

    // Delete against edit: B syncs first this time; the admin resolves,
    // keeping the deletion.
    ok(a.run(&["records", "rm", "cases", "c", "r1"]));
    b.put("r1", json!({"v": "b2"}));
    assert_eq!(b.app_report(&b.sync(), "cases")["applied"], 1);
    let a_round = a.sync();
    assert_eq!(a.app_report(&a_round, "cases")["conflicts"], 1, "{a_round}");
    assert_eq!(a.get("r1"), None, "A keeps its deletion");
    b.sync();
    assert_eq!(a.conflicts(), 1);
    assert_eq!(b.conflicts(), 1);
    let detail = ok(world.admin(&["records", "show", "--org", &world.org(), "cases", "c", "r1"]));
    let leaves = detail["leaves"].as_array().unwrap();
    assert_eq!(leaves.len(), 1, "{detail}");
    assert_eq!(leaves[0]["deleted"], true, "{detail}");
    let deletion = leaves[0]["revision"].as_str().unwrap();
    ok(world.admin(&[
        "records",
        "resolve",
        "--org",
        &world.org(),
        "cases",
        "c",
        "r1",
        "--keep",
        deletion,
    ]));
    a.sync();
    b.sync();
    for device in [&a, &b] {
        assert_eq!(device.get("r1"), None);
        assert_eq!(device.conflicts(), 0);
    }
    assert!(world.conflicts_on_server().is_empty());

    // The reads and the resolution went into the audit trail, which still
    // checks out (the server's tests read the rows themselves).
    let verified = ok(world.admin(&["audit", "verify", "--org", &world.org()]));
    assert_eq!(verified["intact"], true, "{verified}");
}

/// A local author the server does not know: provisional until bound.
fn unverified_author(world: &World) {
    let known = world.device("tablet-k", "kim");
    world.verify(&known, "kim");
    let field = world.device("tablet-f", "dana");
    known.put("case-1", json!({"child": "Amina", "age": 7}));
    known.sync();
    // Dana registers the same child again, and another, offline.
    field.put("case-9", json!({"child": "Amina", "age": 7}));
    field.put("case-10", json!({"child": "Yusuf", "age": 4}));
    let pushed = field.sync();
    assert_eq!(field.app_report(&pushed, "cases")["applied"], 2, "{pushed}");
    // Dana still sees her own records; the other device does not.
    assert_eq!(
        field.get("case-10"),
        Some(json!({"child": "Yusuf", "age": 4}))
    );
    known.sync();
    assert_eq!(known.get("case-10"), None);
    let provisional = ok(world.admin(&["records", "list", "--org", &world.org(), "--provisional"]));
    let ids: Vec<&str> = provisional["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["case-10", "case-9"], "{provisional}");
    let authors = ok(world.admin(&["authors", "list", "--org", &world.org()]));
    assert_eq!(
        authors["authors"],
        json!([{"device_id": field.id, "author": "dana", "records": 2}])
    );
    // Bound: published, and the likely duplicate is reported, not merged.
    let bound = world.verify(&field, "dana");
    assert_eq!(bound["published"], 2, "{bound}");
    let duplicates = bound["duplicates"].to_string();
    assert!(
        duplicates.contains("case-1") || duplicates.contains("case-9"),
        "{bound}"
    );
    known.sync();
    assert_eq!(
        known.get("case-10"),
        Some(json!({"child": "Yusuf", "age": 4}))
    );
    assert_eq!(
        known.get("case-9"),
        Some(json!({"child": "Amina", "age": 7}))
    );
    assert_eq!(
        known.get("case-1"),
        Some(json!({"child": "Amina", "age": 7}))
    );
}

/// Whether any file under `dir` holds `needle`.
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

/// Purges only on an explicit statement: the policy dropping an app, the
/// device revoked.
fn purges(world: &World) {
    let d = world.device("tablet-p", "pat");
    world.verify(&d, "pat");
    let marker = "PURGE-MARKER-e2e-41c7";
    d.put("p1", json!({"secret": marker}));
    ok(d.run(&[
        "records",
        "put",
        "notes",
        "n",
        "1",
        &json!({"keep": 1}).to_string(),
    ]));
    d.sync();
    // A server that merely has no records for it purges nothing.
    assert_eq!(d.get("p1"), Some(json!({"secret": marker})));
    // The policy drops "cases": it is purged, "notes" stays.
    world.publish(json!(["notes"]));
    let round = d.sync();
    assert_eq!(round["purged"], json!(["cases"]), "{round}");
    assert_eq!(d.get("p1"), None);
    let notes = ok(d.run(&["records", "get", "notes", "n", "1"]));
    assert_eq!(notes["body"], json!({"keep": 1}));
    assert_eq!(found_in_files(&d.space, marker.as_bytes()), None);
    // Revoked: every synced app goes.
    ok(world.admin(&["device", "revoke", "--org", &world.org(), &d.id.to_string()]));
    let revoked = d.run(&["sync"]);
    let report: Value = serde_json::from_slice(&revoked.stdout).unwrap_or(Value::Null);
    assert_eq!(
        report["purged"],
        json!(["notes"]),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert_eq!(
        d.run(&["records", "get", "notes", "n", "1"]).status.code(),
        Some(9)
    );
    world.publish(json!(["cases", "notes"]));
}

/// A device offline past the server's retention: its cursor expired, it
/// starts over and keeps what it had not pushed.
fn expired_cursor(world: &World) {
    let e = world.device("tablet-e", "eve");
    world.verify(&e, "eve");
    let other = world.device("tablet-o", "olga");
    world.verify(&other, "olga");
    e.put("x1", json!({"n": 1}));
    e.put("x2", json!({"n": 2}));
    e.sync();
    // While E is offline: another device deletes x1, E edits; much later
    // the server compacts, dropping x1's tombstone (newer than E's
    // cursor, so the floor moves past it).
    other.sync();
    ok(other.run(&["records", "rm", "cases", "c", "x1"]));
    other.sync();
    e.put("x3", json!({"offline": true}));
    runtime().block_on(async {
        let store = coffer_server::Store::open(&world.url).await.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        store
            .compact_sync(now + 400 * 86_400, 180 * 86_400)
            .await
            .unwrap();
    });
    other.put("x4", json!({"n": 4}));
    other.sync();
    let round = e.sync();
    let cases = e.app_report(&round, "cases");
    assert_eq!(cases["reset"], true, "{round}");
    assert_eq!(cases["applied"], 1, "the unpushed edit went first: {round}");
    assert_eq!(e.get("x3"), Some(json!({"offline": true})));
    assert_eq!(e.get("x4"), Some(json!({"n": 4})));
    assert_eq!(e.get("x2"), Some(json!({"n": 2})));
    // The deletion E never saw is gone from the server: E keeps x1 and
    // says so, rather than guess.
    assert_eq!(e.get("x1"), Some(json!({"n": 1})));
    assert_eq!(cases["state"]["unseen"], 1, "{round}");
    assert_eq!(cases["state"]["complete"], true);
    assert_eq!(cases["state"]["pending"], 0);
    // The other device got E's offline edit.
    other.sync();
    assert_eq!(other.get("x3"), Some(json!({"offline": true})));
}

#[test]
fn sync_end_to_end_on_sqlite() {
    let world = World::new(None);
    conflicts_converge(&world);
    unverified_author(&world);
    purges(&world);
    expired_cursor(&world);
}

#[test]
fn sync_end_to_end_on_postgres() {
    let pg = coffer_server::testing::Postgres::start();
    let url = runtime().block_on(pg.database("sync_e2e"));
    let world = World::new(Some(url));
    conflicts_converge(&world);
    unverified_author(&world);
    purges(&world);
    expired_cursor(&world);
}

/// The vault of `device`, unlocked in this process through the agent.
fn open_in_process(device: &Device) -> coffer_device::UnlockedVault {
    let space = coffer_device::Space::new(&device.space);
    let vault = space.vault("default").unwrap();
    let secret = coffer_agent::UnlockSecret::Passphrase(
        coffer_device::Passphrase::new(PASSPHRASE.into()).unwrap(),
    );
    coffer_agent::Agent::new().unlock(&vault, &secret).unwrap()
}

/// Writes `n` records `prefix-i` (version `round` of each) in one
/// process, as an app would between syncs.
fn write_many(device: &Device, prefix: &str, n: usize, round: u32) {
    let vault = open_in_process(device);
    let mut records = vault.app("cases").unwrap().records().unwrap();
    for i in 0..n {
        records
            .put(
                "c",
                &format!("{prefix}-{i}"),
                &json!({"i": i, "round": round, "pad": "x".repeat(200)}),
                None,
            )
            .unwrap();
    }
}

/// The cursor's position (the server's cursor is `v1.<seq>`; the test
/// reads it only to check that it never goes back).
fn cursor_of(device: &Device) -> u64 {
    let status = ok(device.run(&["sync", "status"]));
    status["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == "cases")
        .and_then(|a| a["cursor"].as_str())
        .and_then(coffer_protocol::sync::decode_cursor)
        .map_or(0, |(seq, _)| seq)
}

#[test]
fn sixty_kills_of_the_device_and_some_of_the_server_lose_and_repeat_nothing() {
    let mut world = World::new(None);
    let a = world.device("tablet-a", "alice");
    let b = world.device("tablet-b", "bob");
    world.verify(&a, "alice");
    world.verify(&b, "bob");
    // B has 4,000 records for A to pull; A has 2,500 of its own to push.
    write_many(&b, "b", 4000, 0);
    let seeded = b.sync();
    assert_eq!(b.app_report(&seeded, "cases")["applied"], 4000);
    write_many(&a, "a", 2500, 0);

    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut last_cursor = 0;
    let mut killed_mid_round = 0;
    let mut round = 0u32;
    let mut b_batches = 0usize;
    while killed_mid_round < 60 {
        round += 1;
        assert!(
            round <= 400,
            "only {killed_mid_round} kills landed mid-round"
        );
        // The apps go on editing between the interrupted rounds: A rewrites
        // 300 records (a push to make), B adds 300 now and then (a pull).
        write_many(&a, "a", 300, round);
        if round.is_multiple_of(4) {
            write_many(&b, &format!("b{round}"), 300, round);
            b.sync();
            b_batches += 1;
        }
        let mut child = a.command(&["sync"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(15 + next() % 250));
        if round.is_multiple_of(10) {
            // The server dies mid-transaction (then the device too).
            world.server.restart();
        }
        if child.try_wait().unwrap().is_none() {
            killed_mid_round += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let cursor = cursor_of(&a);
        assert!(cursor >= last_cursor, "round {round}: the cursor went back");
        last_cursor = cursor;
    }

    // Let it finish.
    let done = a.sync();
    let cases = a.app_report(&done, "cases");
    assert_eq!(cases["state"]["pending"], 0, "{done}");
    assert_eq!(cases["state"]["complete"], true, "{done}");
    assert_eq!(
        cases["state"]["conflicts"], 0,
        "a device never conflicts with itself: {done}"
    );
    assert_eq!(a.conflicts(), 0);

    // Every change landed exactly once: the server holds each record once,
    // at A's latest content.
    let exported = ok(world.admin(&["records", "export", "--org", &world.org(), "--app", "cases"]));
    let exported: Value = match exported {
        Value::String(text) => serde_json::from_str(&text).unwrap(),
        other => other,
    };
    let rows = exported["records"]
        .as_array()
        .unwrap_or_else(|| panic!("{exported}"));
    let total = 2500 + 4000 + 300 * b_batches;
    assert_eq!(rows.len(), total);
    let mut ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total);
    for row in rows {
        let id = row["id"].as_str().unwrap();
        if let Some(i) = id.strip_prefix("a-") {
            let i: u32 = i.parse().unwrap();
            let expected_round = if i < 300 { round } else { 0 };
            assert_eq!(row["body"]["round"], expected_round, "{row}");
        }
    }
    // A has every record of B.
    let a_vault = open_in_process(&a);
    let a_records = a_vault.app("cases").unwrap().records().unwrap();
    assert_eq!(a_records.list("c").unwrap().len(), total);
    drop(a_records);
    drop(a_vault);
    // The change sequence has no gap.
    let db = rusqlite::Connection::open(world.url.trim_start_matches("sqlite://")).unwrap();
    let seqs: Vec<i64> = db
        .prepare("SELECT seq FROM sync_changes WHERE org_id = ?1 AND app = 'cases' ORDER BY seq")
        .unwrap()
        .query_map([world.org], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected);
    let last: i64 = db
        .query_row(
            "SELECT last_seq FROM sync_counters WHERE org_id = ?1 AND app = 'cases'",
            [world.org],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(last, seqs.len() as i64);
    // And B gets A's records, as A last wrote them.
    b.sync();
    assert_eq!(
        b.get("a-7").unwrap()["round"],
        json!(round),
        "B has A's latest"
    );
    assert_eq!(b.get("a-2400").unwrap()["round"], json!(0));
    drop(world);
}
