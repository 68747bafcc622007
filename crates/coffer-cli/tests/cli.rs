//! End-to-end tests of the `coffer` binary: the commands, their JSON, the
//! documented exit codes, and that no secret is ever echoed.

#![allow(clippy::unwrap_used)]

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn space(&self) -> std::path::PathBuf {
        self.dir.path().join("space")
    }

    /// `coffer` with a private space and no secret in the environment.
    fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("coffer").unwrap();
        c.env("COFFER_SPACE", self.space())
            .env_remove("COFFER_PASSPHRASE")
            .env_remove("COFFER_NEW_PASSPHRASE")
            .env_remove("COFFER_RECOVERY_KEY")
            .env_remove("COFFER_VAULT");
        c
    }

    fn with_pass(&self, p: &str) -> Command {
        let mut c = self.cmd();
        c.env("COFFER_PASSPHRASE", p);
        c
    }

    fn init(&self, p: &str) {
        self.with_pass(p)
            .args(["init", "--name", "alice", "--kdf-time-ms", "0"])
            .assert()
            .success();
    }

    fn json(&self, mut c: Command) -> Value {
        let out = c
            .arg("--json")
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        serde_json::from_slice(&out).unwrap()
    }
}

fn error_code(out: &std::process::Output) -> String {
    let v: Value = serde_json::from_slice(&out.stderr).unwrap();
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[test]
fn init_info_and_slot_list() {
    let env = Env::new();
    let mut c = env.with_pass("alice secret");
    c.args(["init", "--name", "alice", "--kdf-time-ms", "0"]);
    let created = env.json(c);
    assert_eq!(created["vault"], "default");
    assert_eq!(created["slot"]["kdf"]["algorithm"], "argon2id");
    assert_eq!(created["slot"]["kdf"]["memory_kib"], 19 * 1024);

    let mut c = env.cmd();
    c.arg("info");
    let info = env.json(c);
    assert_eq!(info["format_version"], 1);
    assert_eq!(info["slot_capacity"], 16);
    assert_eq!(info["slots"][0]["kind"], "passphrase");
    assert!(info["slots"][0].get("name").is_none(), "names need the key");

    let mut c = env.with_pass("alice secret");
    c.args(["slot", "list"]);
    let list = env.json(c);
    assert_eq!(list["slots"][0]["name"], "alice");
    assert_eq!(list["opened_slot"], 0);

    let mut c = env.cmd();
    c.arg("vaults");
    assert_eq!(env.json(c)["vaults"][0], "default");
}

#[test]
fn exit_codes_are_distinct_and_documented() {
    let env = Env::new();
    // 4: no such vault.
    let out = env
        .with_pass("x")
        .arg("verify")
        .arg("--json")
        .assert()
        .code(4)
        .get_output()
        .clone();
    assert_eq!(error_code(&out), "no_such_vault");
    env.init("alice secret");
    // 3: wrong passphrase.
    let out = env
        .with_pass("wrong")
        .args(["verify", "--json"])
        .assert()
        .code(3)
        .get_output()
        .clone();
    assert_eq!(error_code(&out), "wrong_passphrase");
    // 6: exists.
    env.with_pass("x")
        .args(["init", "--kdf-time-ms", "0"])
        .assert()
        .code(6);
    // 2: bad arguments, and no passphrase without a terminal.
    env.cmd().arg("no-such-command").assert().code(2);
    env.cmd().args(["init", "--kdf", "md5"]).assert().code(2);
    env.cmd()
        .args(["--vault", "Bad/Name", "info"])
        .assert()
        .code(2);
    env.cmd()
        .arg("verify")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("COFFER_PASSPHRASE"));
    // 7: refused slot change.
    env.with_pass("alice secret")
        .args(["slot", "remove", "alice"])
        .assert()
        .code(7);
    env.with_pass("alice secret")
        .args(["slot", "remove", "nobody"])
        .assert()
        .code(7);
    // 5: corrupt.
    let header = env.space().join("default/header");
    let mut bytes = std::fs::read(&header).unwrap();
    bytes[100] ^= 0x10;
    std::fs::write(&header, &bytes).unwrap();
    let out = env
        .with_pass("alice secret")
        .args(["verify", "--json"])
        .assert()
        .code(5)
        .get_output()
        .clone();
    assert_eq!(error_code(&out), "corrupt");
    env.cmd().arg("info").assert().code(5);
    // The long help documents them all.
    env.cmd().arg("--help").assert().success().stdout(
        predicate::str::contains("Exit codes:").and(predicate::str::contains("8  vault busy")),
    );
}

#[test]
fn second_user_and_removal() {
    let env = Env::new();
    env.init("alice secret");
    env.with_pass("alice secret")
        .env("COFFER_NEW_PASSPHRASE", "bob secret")
        .args([
            "slot",
            "add",
            "bob",
            "--kdf",
            "pbkdf2-sha256",
            "--kdf-time-ms",
            "0",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("pbkdf2-sha256 600000 iterations"));
    env.with_pass("bob secret")
        .arg("verify")
        .assert()
        .success()
        .stdout(predicate::str::contains("'bob'"));
    env.with_pass("alice secret")
        .env("COFFER_NEW_PASSPHRASE", "x")
        .args(["slot", "add", "bob", "--kdf-time-ms", "0"])
        .assert()
        .code(7);
    env.with_pass("bob secret")
        .args(["slot", "remove", "bob"])
        .assert()
        .success();
    env.with_pass("bob secret").arg("verify").assert().code(3);
    env.with_pass("alice secret")
        .arg("verify")
        .assert()
        .success();
}

#[test]
fn recovery_key_is_shown_once_and_opens_the_vault() {
    let env = Env::new();
    env.init("alice secret");
    let mut c = env.with_pass("alice secret");
    c.arg("recovery-key");
    let added = env.json(c);
    let key = added["recovery_key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 47);
    env.cmd()
        .env("COFFER_RECOVERY_KEY", &key)
        .args(["--recovery", "verify"])
        .assert()
        .success()
        .stdout(predicate::str::contains("'recovery'"));
    // A typo is caught by the checksum: exit 3, typed code.
    let mut typo = key.clone();
    let replacement = if typo.starts_with('A') { "B" } else { "A" };
    typo.replace_range(0..1, replacement);
    let out = env
        .cmd()
        .env("COFFER_RECOVERY_KEY", &typo)
        .args(["--recovery", "verify", "--json"])
        .assert()
        .code(3)
        .get_output()
        .clone();
    assert_eq!(error_code(&out), "invalid_recovery_key");
    // The key is never shown again, not even by slot list.
    let list = env
        .with_pass("alice secret")
        .args(["slot", "list"])
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&key));
}

#[test]
fn passphrase_files_are_read_and_secrets_never_echoed() {
    let env = Env::new();
    let file = env.dir.path().join("pass");
    std::fs::write(&file, "file-secret-passphrase\nignored second line\n").unwrap();
    let new_file = env.dir.path().join("new");
    std::fs::write(&new_file, "carol-file-passphrase").unwrap();
    let outputs = [
        env.cmd()
            .arg("--passphrase-file")
            .arg(&file)
            .args(["init", "--kdf-time-ms", "0", "--name", "dana"])
            .assert()
            .success()
            .get_output()
            .clone(),
        env.cmd()
            .arg("--passphrase-file")
            .arg(&file)
            .arg("--new-passphrase-file")
            .arg(&new_file)
            .args(["slot", "add", "carol", "--kdf-time-ms", "0"])
            .assert()
            .success()
            .get_output()
            .clone(),
        env.with_pass("carol-file-passphrase")
            .args(["slot", "list"])
            .assert()
            .success()
            .get_output()
            .clone(),
        env.with_pass("file-secret-passphrase\nignored")
            .arg("verify")
            .assert()
            .code(3)
            .get_output()
            .clone(),
    ];
    for out in outputs {
        for secret in ["file-secret-passphrase", "carol-file-passphrase"] {
            assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
            assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
        }
    }
}

#[test]
fn passwd_changes_one_passphrase() {
    let env = Env::new();
    env.init("alice secret");
    env.with_pass("alice secret")
        .env("COFFER_NEW_PASSPHRASE", "alice changed")
        .args(["passwd", "--kdf-time-ms", "0"])
        .assert()
        .success()
        .stdout(predicate::str::contains("slot 0 'alice'"));
    env.with_pass("alice secret").arg("verify").assert().code(3);
    env.with_pass("alice changed")
        .arg("verify")
        .assert()
        .success();
    // Through a recovery key: a user's slot by name; the recovery slot itself has no passphrase.
    let mut c = env.with_pass("alice changed");
    c.arg("recovery-key");
    let key = env.json(c)["recovery_key"].as_str().unwrap().to_owned();
    env.cmd()
        .env("COFFER_RECOVERY_KEY", &key)
        .env("COFFER_NEW_PASSPHRASE", "x")
        .args(["--recovery", "passwd", "--kdf-time-ms", "0"])
        .assert()
        .code(7);
    env.cmd()
        .env("COFFER_RECOVERY_KEY", &key)
        .env("COFFER_NEW_PASSPHRASE", "alice reset")
        .args([
            "--recovery",
            "passwd",
            "--slot",
            "alice",
            "--kdf-time-ms",
            "0",
        ])
        .assert()
        .success();
    env.with_pass("alice reset")
        .arg("verify")
        .assert()
        .success();
}

#[test]
fn temporary_keys_from_the_command_line() {
    let env = Env::new();
    env.init("alice secret");
    let mut c = env.with_pass("alice secret");
    c.args([
        "temp-key",
        "--expires",
        "2h",
        "--single-use",
        "--name",
        "handover",
    ]);
    let added = env.json(c);
    assert_eq!(added["added"]["kind"], "temporary");
    assert_eq!(added["added"]["single_use"], true);
    assert!(added["added"]["expires_at"].is_string());
    let key = added["temporary_key"].as_str().unwrap().to_owned();
    // The holder sets their own passphrase with it; it is then spent.
    env.cmd()
        .env("COFFER_RECOVERY_KEY", &key)
        .env("COFFER_NEW_PASSPHRASE", "dana secret")
        .args(["--recovery", "slot", "add", "dana", "--kdf-time-ms", "0"])
        .assert()
        .success();
    env.cmd()
        .env("COFFER_RECOVERY_KEY", &key)
        .args(["--recovery", "verify"])
        .assert()
        .code(3);
    env.with_pass("dana secret")
        .arg("verify")
        .assert()
        .success();
    env.cmd()
        .args(["temp-key", "--expires", "soon"])
        .env("COFFER_PASSPHRASE", "alice secret")
        .assert()
        .code(2);
}

#[test]
fn lockout_from_the_command_line() {
    let env = Env::new();
    env.init("alice secret");
    let mut c = env.with_pass("alice secret");
    c.arg("recovery-key");
    let key = env.json(c)["recovery_key"].as_str().unwrap().to_owned();
    env.with_pass("alice secret")
        .args(["lockout", "--max", "2"])
        .assert()
        .success();
    let mut c = env.cmd();
    c.arg("info");
    assert_eq!(env.json(c)["lockout"]["max_failures"], 2);
    env.with_pass("wrong").arg("verify").assert().code(3);
    let out = env
        .with_pass("wrong")
        .args(["verify", "--json"])
        .assert()
        .code(13)
        .get_output()
        .clone();
    assert_eq!(error_code(&out), "locked_out");
    env.with_pass("alice secret")
        .arg("verify")
        .assert()
        .code(13);
    env.cmd()
        .env("COFFER_RECOVERY_KEY", &key)
        .args(["--recovery", "verify"])
        .assert()
        .success();
    env.with_pass("alice secret")
        .arg("verify")
        .assert()
        .success();
    // Wipe after two failures.
    env.with_pass("alice secret")
        .args(["lockout", "--max", "2", "--then", "wipe"])
        .assert()
        .success();
    env.with_pass("wrong").arg("verify").assert().code(3);
    env.with_pass("wrong").arg("verify").assert().code(12);
    env.with_pass("alice secret")
        .arg("verify")
        .assert()
        .code(12);
    // Listed as wiped, and made again under its name as the hint says
    // (issue 16, item 4): no `rm -rf` needed.
    let listed = env.cmd().args(["--json", "vaults"]).output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed["wiped"],
        serde_json::json!([listed["vaults"][0]]),
        "{listed}"
    );
    let text = env.cmd().arg("vaults").output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("(wiped: `coffer --vault"));
    env.with_pass("a new passphrase")
        .args(["init", "--kdf-time-ms", "0"])
        .assert()
        .success();
    env.with_pass("a new passphrase")
        .arg("verify")
        .assert()
        .success();
    let listed = env.cmd().args(["--json", "vaults"]).output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["wiped"], serde_json::json!([]));
}

#[test]
fn demo_runs_and_explains() {
    Command::cargo_bin("coffer")
        .unwrap()
        .arg("demo")
        .assert()
        .success()
        .stdout(
            predicate::str::contains("Unlock as bob")
                .and(predicate::str::contains("opened by slot 2"))
                .and(predicate::str::contains("checksum mismatch"))
                .and(predicate::str::contains("retired: recovery"))
                .and(predicate::str::contains("entry 0 was altered"))
                .and(predicate::str::contains("refused before anything is sent (exit 17)"))
                .and(predicate::str::contains("policy version 1 verified (exit 0)"))
                .and(predicate::str::contains("refused by the policy (exit 7)"))
                .and(predicate::str::contains("her own slot is added"))
                .and(predicate::str::contains(r#"{"delivered":1,"queued":0}"#))
                .and(predicate::str::contains(
                    "crypto-erased at the check-in (exit 12), acknowledged on the server (acknowledged); the vault now reports itself wiped (exit 12)",
                )),
        );
}

#[test]
fn rotate_keeps_the_opener_and_hands_out_reset_keys() {
    let env = Env::new();
    env.init("alice secret");
    env.with_pass("alice secret")
        .env("COFFER_NEW_PASSPHRASE", "bob secret")
        .args(["slot", "add", "bob", "--kdf-time-ms", "0"])
        .assert()
        .success();
    env.with_pass("alice secret")
        .args(["app", "add", "notes"])
        .assert()
        .success();
    env.with_pass("alice secret")
        .args(["kv", "put", "notes", "k", "value before"])
        .assert()
        .success();
    // Not on a terminal, a rotation that retires slots needs --yes, and
    // says whose.
    env.with_pass("alice secret")
        .args(["rotate", "--new-recovery-key"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "retires 1 slot(s) (bob (passphrase))",
        ))
        .stderr(predicates::str::contains("--yes"));
    let mut c = env.with_pass("alice secret");
    c.args([
        "rotate",
        "--new-recovery-key",
        "--reset-keys",
        "72h",
        "--yes",
    ]);
    let report = env.json(c);
    assert_eq!(report["kept"], serde_json::json!(["alice"]));
    assert_eq!(report["retired"], serde_json::json!(["bob"]));
    assert_eq!(report["databases"], 2);
    let recovery = report["recovery_key"]["key"].as_str().unwrap().to_owned();
    let reset = report["reset_keys"][0]["key"].as_str().unwrap().to_owned();
    assert_eq!(report["reset_keys"][0]["slot"], "bob");

    // Alice's data is all there; bob's old passphrase is dead.
    env.with_pass("alice secret")
        .args(["kv", "get", "notes", "k"])
        .assert()
        .success()
        .stdout(predicate::str::contains("value before"));
    env.with_pass("bob secret").arg("verify").assert().code(3);
    env.cmd()
        .env("COFFER_RECOVERY_KEY", &recovery)
        .args(["--recovery", "verify"])
        .assert()
        .success();
    // Bob comes back with his single-use reset key and a new passphrase.
    env.cmd()
        .env("COFFER_RECOVERY_KEY", &reset)
        .env("COFFER_NEW_PASSPHRASE", "bob new secret")
        .args(["--recovery", "slot", "add", "bob", "--kdf-time-ms", "0"])
        .assert()
        .success();
    env.with_pass("bob new secret")
        .args(["kv", "get", "notes", "k"])
        .assert()
        .success()
        .stdout(predicate::str::contains("value before"));
    env.cmd()
        .env("COFFER_RECOVERY_KEY", &reset)
        .args(["--recovery", "verify"])
        .assert()
        .code(3);
    // The secrets printed once never reach the audit log in the clear.
    let log = std::fs::read(env.space().join("default/audit.log")).unwrap();
    for secret in [&recovery, &reset] {
        assert!(!log.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}

#[test]
fn audit_lists_events_and_verify_catches_tampering() {
    let env = Env::new();
    env.init("alice secret");
    env.with_pass("wrong").arg("verify").assert().code(3);
    env.with_pass("alice secret")
        .env("COFFER_NEW_PASSPHRASE", "changed")
        .args(["passwd", "--kdf-time-ms", "0"])
        .assert()
        .success();
    let mut c = env.with_pass("changed");
    c.args(["audit", "list"]);
    let listed = env.json(c);
    let events: Vec<&str> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "vault_created",
            "unlock_failed",
            "unlock",
            "passphrase_changed",
            "unlock"
        ]
    );
    env.with_pass("changed")
        .args(["audit", "verify"])
        .assert()
        .success()
        .stdout(predicate::str::contains("OK"));
    // Delete the first entry: the check fails with its own exit code.
    let path = env.space().join("default/audit.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let len = u32::from_le_bytes(bytes[18..22].try_into().unwrap()) as usize;
    let first_end = 10 + 56 + len;
    bytes.drain(10..first_end);
    std::fs::write(&path, &bytes).unwrap();
    let out = env
        .with_pass("changed")
        .args(["audit", "verify", "--json"])
        .assert()
        .code(15)
        .get_output()
        .clone();
    assert_eq!(error_code(&out), "audit_tampered");
    env.with_pass("changed")
        .args(["audit", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("WARNING"));
}

#[cfg(target_os = "linux")]
#[test]
fn a_debugger_is_refused_when_asked_and_hardening_is_reported() {
    let env = Env::new();
    env.init("alice secret");
    let mut c = env.with_pass("alice secret");
    c.arg("verify");
    let report = env.json(c);
    assert_eq!(report["hardening"]["core_dumps_disabled"], true);
    assert_eq!(report["hardening"]["not_dumpable"], true);
    assert!(report["hardening"]["keys_locked"].as_u64().unwrap() > 0);
    assert_eq!(report["hardening"]["tracer_pid"], Value::Null);

    // Under a real tracer (strace, which .ci/run installs), --refuse-debugger
    // refuses with its own exit code; without it, the unlock goes on.
    let strace = |refuse: bool| {
        let mut c = std::process::Command::new("strace");
        c.args(["-f", "-o", "/dev/null"])
            .arg(assert_cmd::cargo::cargo_bin("coffer"))
            .env("COFFER_SPACE", env.space())
            .env("COFFER_PASSPHRASE", "alice secret")
            .env_remove("COFFER_REFUSE_DEBUGGER")
            .args(["verify", "--json"]);
        if refuse {
            c.arg("--refuse-debugger");
        }
        c.output()
            .expect("strace is installed (.ci/run installs it)")
    };
    let refused = strace(true);
    assert_eq!(refused.status.code(), Some(16), "{refused:?}");
    assert_eq!(error_code(&refused), "debugger_attached");
    let traced = strace(false);
    assert!(traced.status.success(), "{traced:?}");
    let report: Value = serde_json::from_slice(&traced.stdout).unwrap();
    assert!(report["hardening"]["tracer_pid"].as_u64().is_some());
}

#[test]
fn a_weak_new_passphrase_is_warned_about() {
    let env = Env::new();
    let weak = env
        .with_pass("password1")
        .args(["init", "--kdf-time-ms", "0"])
        .assert()
        .success();
    let said = String::from_utf8_lossy(&weak.get_output().stderr).into_owned();
    assert!(said.contains("this passphrase is weak"), "{said}");
    let strong = env
        .with_pass("correct horse battery staple of the field team")
        .args(["--vault", "other", "init", "--kdf-time-ms", "0"])
        .assert()
        .success();
    let said = String::from_utf8_lossy(&strong.get_output().stderr).into_owned();
    assert!(!said.contains("weak"), "{said}");
}
