//! Prompts in a real pseudo-terminal: secrets come from the controlling
//! terminal while stdin is a pipe, are never echoed, and a wrong one is
//! asked again up to three times.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use rexpect::process::wait::WaitStatus;
use rexpect::session::{spawn_command, PtySession};

const PASSPHRASE: &str = "correct horse for the terminal";
const WRONG: &str = "a mistyped secret 7431";

/// `script` run by `sh` in a new pseudo-terminal, which becomes its
/// controlling terminal. Echo is turned back on first (rexpect turns it
/// off), so a secret that is echoed would show in the output.
fn in_terminal(space: &Path, script: &str) -> PtySession {
    let mut command = Command::new("sh");
    command
        .args(["-c", &format!("stty echo; {script}")])
        .env("COFFER_SPACE", space)
        .env("COFFER_BIN", env!("CARGO_BIN_EXE_coffer"))
        .env_remove("COFFER_PASSPHRASE")
        .env_remove("COFFER_NEW_PASSPHRASE")
        .env_remove("COFFER_VAULT");
    spawn_command(command, Some(60_000)).unwrap()
}

fn coffer(space: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("coffer").unwrap();
    c.env("COFFER_SPACE", space)
        .env("COFFER_PASSPHRASE", PASSPHRASE)
        .env_remove("COFFER_VAULT");
    c
}

fn exit_code(session: &PtySession) -> i32 {
    match session.process().wait().unwrap() {
        WaitStatus::Exited(_, code) => code,
        other => panic!("the shell did not exit: {other:?}"),
    }
}

fn vault_with_app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let space = dir.path().join("space");
    coffer(&space)
        .args(["init", "--kdf-time-ms", "0"])
        .assert()
        .success();
    coffer(&space)
        .args(["app", "add", "notes"])
        .assert()
        .success();
    dir
}

#[test]
fn piped_data_with_the_passphrase_typed_at_the_terminal_and_one_retry() {
    let dir = vault_with_app();
    let space = dir.path().join("space");
    // The data comes through the pipe; the passphrase from the terminal.
    let mut t = in_terminal(
        &space,
        r#"printf 'from the pipe' | "$COFFER_BIN" kv put notes greeting -; echo "exit=$?"; read -r seen; echo "read:$seen""#,
    );
    let mut shown = t.exp_string("Passphrase for vault 'default': ").unwrap();
    t.send_line(WRONG).unwrap();
    shown += &t.exp_string("wrong passphrase").unwrap();
    shown += &t.exp_string("try again.").unwrap();
    shown += &t.exp_string("Passphrase for vault 'default': ").unwrap();
    t.send_line(PASSPHRASE).unwrap();
    shown += &t.exp_string("exit=0").unwrap();
    // Echo is on outside the prompt: this line shows twice (echoed, then
    // printed), so the secrets' absence below means the prompt hid them.
    t.send_line("a visible line").unwrap();
    shown += &t.exp_string("read:a visible line").unwrap();
    assert!(
        shown.contains("a visible line"),
        "echo was not on: {shown:?}"
    );
    assert!(
        !shown.contains(WRONG),
        "a typed secret was echoed: {shown:?}"
    );
    assert!(
        !shown.contains(PASSPHRASE),
        "a typed secret was echoed: {shown:?}"
    );
    t.exp_eof().unwrap();
    assert_eq!(exit_code(&t), 0);

    coffer(&space)
        .args(["kv", "get", "notes", "greeting"])
        .assert()
        .success()
        .stdout("from the pipe");
}

#[test]
fn three_wrong_tries_end_with_the_wrong_secret_exit_code() {
    let dir = vault_with_app();
    let space = dir.path().join("space");
    let mut t = in_terminal(
        &space,
        r#"printf 'never stored' | "$COFFER_BIN" kv put notes greeting -; echo "exit=$?""#,
    );
    for try_ in 1..=3 {
        t.exp_string("Passphrase for vault 'default': ").unwrap();
        t.send_line(&format!("{WRONG} {try_}")).unwrap();
        if try_ < 3 {
            t.exp_string("try again.").unwrap();
        }
    }
    let tail = t.exp_string("exit=3").unwrap();
    assert!(tail.contains("wrong passphrase"), "{tail:?}");
    assert!(
        !tail.contains("Passphrase for vault"),
        "a fourth try: {tail:?}"
    );
    t.exp_eof().unwrap();
    assert_eq!(exit_code(&t), 0, "the shell itself");

    // Each try counted toward the lockout. (Three failures start a one
    // second back-off; asserting the wait itself would race a slow machine,
    // so the counter is read instead. The back-off is unit-tested with a
    // fixed clock in the device library.)
    let out = coffer(&space)
        .args(["--json", "info"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let info: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(info["failed_attempts"], 3, "{info}");
}

#[test]
fn a_secret_from_the_environment_is_not_asked_again() {
    let dir = vault_with_app();
    let space = dir.path().join("space");
    let mut t = in_terminal(
        &space,
        &format!(
            r#"COFFER_PASSPHRASE='{WRONG}' "$COFFER_BIN" kv get notes greeting; echo "exit=$?""#
        ),
    );
    let shown = t.exp_string("exit=3").unwrap();
    assert!(!shown.contains("Passphrase for vault"), "{shown:?}");
    assert!(!shown.contains("try again"), "{shown:?}");
    t.exp_eof().unwrap();
}

#[test]
fn a_wipe_is_confirmed_on_the_terminal_even_with_stdin_piped() {
    let dir = vault_with_app();
    let space = dir.path().join("space");
    // A pipe cannot confirm for the person at the terminal.
    let mut t = in_terminal(
        &space,
        r#"echo default | "$COFFER_BIN" wipe; echo "exit=$?""#,
    );
    t.exp_string("Type the vault's name to confirm: ").unwrap();
    t.send_line("not the name").unwrap();
    let shown = t.exp_string("exit=2").unwrap();
    assert!(shown.contains("nothing was wiped"), "{shown:?}");
    t.exp_eof().unwrap();
    coffer(&space)
        .args(["kv", "get", "notes", "x"])
        .assert()
        .code(9);

    let mut t = in_terminal(&space, r#""$COFFER_BIN" wipe </dev/null; echo "exit=$?""#);
    t.exp_string("Type the vault's name to confirm: ").unwrap();
    t.send_line("default").unwrap();
    t.exp_string("exit=0").unwrap();
    t.exp_eof().unwrap();
    coffer(&space)
        .args(["kv", "get", "notes", "x"])
        .assert()
        .code(12);
}

#[test]
fn a_stored_file_is_not_written_to_the_terminal_unless_asked() {
    let dir = vault_with_app();
    let space = dir.path().join("space");
    let mut t = in_terminal(
        &space,
        r#"COFFER_PASSPHRASE=unused "$COFFER_BIN" files get notes photo.jpg; echo "exit=$?""#,
    );
    let shown = t.exp_string("exit=2").unwrap();
    assert!(shown.contains("--out -"), "{shown:?}");
    t.exp_eof().unwrap();
}

#[test]
fn a_rotation_names_who_loses_access_and_waits_for_the_vaults_name() {
    let dir = vault_with_app();
    let space = dir.path().join("space");
    coffer(&space)
        .env("COFFER_NEW_PASSPHRASE", "bob's own passphrase")
        .args(["slot", "add", "bob", "--kdf-time-ms", "0"])
        .assert()
        .success();
    let script =
        format!(r#"COFFER_PASSPHRASE='{PASSPHRASE}' "$COFFER_BIN" rotate; echo "exit=$?""#);
    let mut t = in_terminal(&space, &script);
    let shown = t.exp_string("Type the vault's name to rotate: ").unwrap();
    assert!(shown.contains("bob (passphrase)"), "{shown:?}");
    assert!(shown.contains("--new-recovery-key"), "{shown:?}");
    t.send_line("Default").unwrap();
    let shown = t.exp_string("exit=2").unwrap();
    assert!(shown.contains("nothing was rotated"), "{shown:?}");
    t.exp_eof().unwrap();
    // Bob still opens it.
    coffer(&space)
        .env("COFFER_PASSPHRASE", "bob's own passphrase")
        .args(["kv", "ls", "notes"])
        .assert()
        .success();

    let mut t = in_terminal(&space, &script);
    t.exp_string("Type the vault's name to rotate: ").unwrap();
    t.send_line("default").unwrap();
    t.exp_string("exit=0").unwrap();
    t.exp_eof().unwrap();
    coffer(&space)
        .env("COFFER_PASSPHRASE", "bob's own passphrase")
        .args(["kv", "ls", "notes"])
        .assert()
        .code(3);
}
