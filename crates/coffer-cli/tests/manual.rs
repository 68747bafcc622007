//! Shell completions and man pages, generated from the CLI definition
//! (issue 16, item 9): a real bash completes with them, and every command
//! has its page.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

fn coffer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn bash_completes_commands_and_flags_from_the_script() {
    let out = coffer(&["completions", "bash"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("coffer.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // What bash offers after `coffer ser<TAB>` and `coffer serve --dev<TAB>`.
    let complete = |words: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 _coffer coffer \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let offered = complete("coffer ser");
    assert!(offered.lines().any(|l| l == "serve"), "{offered}");
    let offered = complete("coffer serve --dev");
    assert!(offered.lines().any(|l| l == "--dev-tls"), "{offered}");
    // The other shells' scripts name the commands too.
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = coffer(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("enroll") && text.contains("serve"), "{shell}");
    }
    // An unknown shell is a usage error, with the choices.
    let out = coffer(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
}

#[test]
fn every_command_has_a_man_page() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    let out = coffer(&["--json", "man", pages.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = report["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for page in [
        "coffer.1",
        "coffer-serve.1",
        "coffer-admin-device-wipe.1",
        "coffer-demo.1",
    ] {
        assert!(listed.contains(&page), "{page} in {listed:?}");
        let text = std::fs::read_to_string(pages.join(page)).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text:.80}"
        );
    }
    let serve = std::fs::read_to_string(pages.join("coffer-serve.1")).unwrap();
    assert!(serve.contains("dev\\-tls"), "the flags are in the page");
    assert!(serve.contains("\\-\\-json"), "and the global ones");
    assert_eq!(std::fs::read_dir(&pages).unwrap().count(), listed.len());
    assert!(!listed.iter().any(|p| p.ends_with("-help.1")));
}

/// A reader that has gone before coffer writes (`coffer … | head -1`):
/// the command ends quietly with its own exit code, never a panic
/// (issue 16, item 7).
#[test]
fn a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["completions".to_owned(), "bash".to_owned()],
        vec![
            "man".to_owned(),
            dir.path().join("man1").display().to_string(),
        ],
        vec![
            "--json".to_owned(),
            "man".to_owned(),
            dir.path().join("man1").display().to_string(),
        ],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Output that cannot be written for another reason (a full disk) is the
/// command's failure, not a quiet success.
#[test]
fn output_that_cannot_be_written_fails() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["--json", "man", dir.path().join("man1").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write the output"));
}
