//! The README's shell blocks, run as written, so the README cannot drift.
//!
//! Every ```sh block before "## CLI reference" runs, in order, in one bash
//! session on a real pseudo-terminal, unless the HTML comment before it
//! says `<!-- readme-test: skip (why) -->`. The comment can also say
//! `device=NAME` (the vault's space from then on) or `background` (the
//! server: started and waited for). Inside a block, `# on the second
//! device` and `# on the first device` switch devices, as a reader would.
//!
//! What the reader types at prompts comes from the variables coffer reads
//! for scripts (`COFFER_PASSPHRASE` and the rest); a confirmation asked on
//! the terminal (type the device's name) is typed into the terminal. The
//! README's placeholders are filled from what earlier commands printed:
//! `COFFER_SETUP_TOKEN=…` (the server's setup token), `--code …` (the last
//! enrollment code), `FP` (the certificate's fingerprint); port 8443
//! becomes a free one. Each command must exit 0, or the code its comment
//! names ("exit 19").

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use rexpect::session::spawn_command;
use rexpect::ReadUntil;

/// The README's shell blocks, with the line each starts at and what the
/// comment before it says.
struct Block {
    line: usize,
    directive: String,
    body: Vec<String>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let end = readme.find("## CLI reference").unwrap();
    let mut blocks = Vec::new();
    let mut lines = readme[..end].lines().enumerate().peekable();
    let mut last_comment = String::new();
    while let Some((n, line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("<!-- readme-test:") {
            last_comment = rest.trim_end_matches("-->").trim().to_owned();
            continue;
        }
        if line == "```sh" {
            let mut body = Vec::new();
            for (_, l) in lines.by_ref() {
                if l == "```" {
                    break;
                }
                body.push(l.to_owned());
            }
            blocks.push(Block {
                line: n + 1,
                directive: std::mem::take(&mut last_comment),
                body,
            });
        } else if !line.trim().is_empty() {
            last_comment.clear();
        }
    }
    blocks
}

/// A command line's expected exit code: the "exit N" its comment names.
fn expected_exit(line: &str) -> u8 {
    line.split_once('#')
        .and_then(|(_, comment)| {
            let at = comment.find("exit ")?;
            comment[at + 5..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The line with its placeholders filled by shell functions.
fn filled(line: &str, port: u16) -> String {
    let (command, comment) = match line.split_once(" #") {
        Some((c, rest)) => (c.to_owned(), format!(" #{rest}")),
        None => (line.to_owned(), String::new()),
    };
    let command = command
        .replace(
            "COFFER_SETUP_TOKEN=…",
            "COFFER_SETUP_TOKEN=\"$(readme_token)\"",
        )
        .replace("--code …", "--code \"$(readme_value code)\"")
        .replace("--pin-sha256 FP", "--pin-sha256 \"$(readme_fp)\"")
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"));
    assert!(
        !command.contains('…'),
        "an unfilled placeholder in the README: {line}"
    );
    format!("{command}{comment}")
}

const PREAMBLE: &str = r#"
set -u
LOG="$ROOT/commands.log"; : > "$LOG"
declare -A PASS
CURRENT=first
export COFFER_PASSPHRASE="$INIT_PASSPHRASE"
readme_device() {
  PASS[$CURRENT]="$COFFER_PASSPHRASE"
  CURRENT="$1"
  export COFFER_SPACE="$ROOT/devices/$1"
  export COFFER_PASSPHRASE="${PASS[$1]:-$INIT_PASSPHRASE}"
}
readme_token() { awk '/One-time setup token/ {getline; getline; print $1; exit}' "$ROOT/serve.log"; }
readme_fp() { sed -n 's/.*pin it in clients): //p' "$ROOT/serve.log" | head -1; }
readme_value() { grep -o "\"$1\": *\"[^\"]*\"" "$LOG" | tail -1 | sed 's/.*: *"\(.*\)"/\1/'; }
readme_run() {
  local line="$1" expected="$2" command="$3" rc
  eval "$command" > >(tee -a "$LOG") 2>&1
  rc=$?
  wait $! 2>/dev/null
  if [ "$rc" -ne "$expected" ]; then
    echo "README-FAILED line $line: exit $rc, expected $expected: $command"
    exit 1
  fi
  # After a login the user works with her own passphrase, as the README says.
  case "$command" in
    *"coffer login --user"*) export COFFER_PASSPHRASE="$COFFER_NEW_PASSPHRASE" ;;
  esac
}
readme_device first
cd "$ROOT/work"
"#;

/// The whole README as one bash script.
fn script(blocks: &[Block], port: u16) -> (String, usize) {
    let mut out = String::from(PREAMBLE);
    let mut ran = 0;
    for block in blocks {
        if block.directive.starts_with("skip") {
            assert!(
                block.directive.len() > "skip (".len(),
                "README line {}: say why a block is skipped",
                block.line
            );
            continue;
        }
        ran += 1;
        writeln!(out, "echo 'README-BLOCK line {}'", block.line).unwrap();
        if let Some(device) = block.directive.strip_prefix("device=") {
            writeln!(out, "readme_device {device}").unwrap();
        }
        if block.directive == "background" {
            let command = block
                .body
                .iter()
                .find(|l| !l.trim_start().starts_with('#'))
                .unwrap();
            writeln!(
                out,
                "{} > \"$ROOT/serve.log\" 2>&1 &\necho $! > \"$ROOT/serve.pid\"\nfor _ in $(seq 600); do grep -q 'One-time setup token' \"$ROOT/serve.log\" && break; sleep 0.1; done",
                filled(command, port)
            )
            .unwrap();
            continue;
        }
        let mut number = block.line;
        for line in &block.body {
            number += 1;
            let trimmed = line.trim_start();
            match trimmed {
                "# on the second device" => writeln!(out, "readme_device second").unwrap(),
                "# on the first device" => writeln!(out, "readme_device first").unwrap(),
                _ if trimmed.is_empty() || trimmed.starts_with('#') => {}
                _ => {
                    let command = filled(line, port);
                    writeln!(
                        out,
                        "readme_run {number} {} {}",
                        expected_exit(line),
                        shell_quote(&command)
                    )
                    .unwrap();
                }
            }
        }
    }
    out.push_str("echo README-ALL-RAN\n");
    (out, ran)
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn every_shell_block_of_the_readme_runs_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let blocks = blocks(&readme);
    let port = free_port();
    let (script, ran) = script(&blocks, port);
    assert!(ran >= 8, "only {ran} blocks would run");

    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // The photo the README stores.
    std::fs::write(work.join("photo.jpg"), vec![0xa5u8; 300_000]).unwrap();
    let script_path = root.path().join("readme.sh");
    std::fs::write(&script_path, &script).unwrap();

    let bin = Path::new(env!("CARGO_BIN_EXE_coffer")).parent().unwrap();
    let mut command = Command::new("bash");
    command
        .arg(&script_path)
        .env("ROOT", root.path())
        .env("HOME", root.path())
        .env_remove("XDG_DATA_HOME")
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("INIT_PASSPHRASE", "the first passphrase of a device")
        .env("COFFER_NEW_PASSPHRASE", "carol's long passphrase")
        .env("COFFER_SERVER_PASSWORD", "carol's long passphrase")
        .env("COFFER_ADMIN_PASSWORD", "alice's long server password")
        .env_remove("COFFER_SERVER")
        .env_remove("COFFER_VAULT")
        .env_remove("COFFER_MASTER_KEY")
        .env_remove("COFFER_MASTER_KEY_FILE")
        .env_remove("DATABASE_URL");
    let _server = StopsServer(root.path().join("serve.pid"));
    let mut t = spawn_command(command, Some(600_000)).unwrap();
    let mut transcript = String::new();
    loop {
        let (before, matched) = t
            .exp_any(vec![
                ReadUntil::String("Type the device's name to confirm: ".into()),
                ReadUntil::String("README-ALL-RAN".into()),
                ReadUntil::String("README-FAILED".into()),
                ReadUntil::EOF,
            ])
            .unwrap_or_else(|e| panic!("{e}\n{transcript}"));
        transcript.push_str(&before);
        transcript.push_str(&matched);
        if matched.contains("confirm") {
            // The question names the device: ("NAME").
            let name = before
                .rsplit("(\"")
                .next()
                .and_then(|rest| rest.split("\")").next())
                .unwrap()
                .to_owned();
            t.send_line(&name).unwrap();
            continue;
        }
        if transcript.contains("README-ALL-RAN") && !transcript.contains("README-FAILED") {
            break;
        }
        let rest = t.exp_eof().unwrap_or_default();
        panic!("{transcript}{rest}");
    }
    let log = std::fs::read_to_string(root.path().join("commands.log")).unwrap_or_default();
    // What the README promises along the way.
    assert!(log.contains("1 in conflict"), "{log}");
    assert!(
        std::fs::read(work.join("fetched.jpg")).unwrap() == vec![0xa5u8; 300_000],
        "the admin's copy of the photo differs"
    );
}

/// Stops the README's server when the test ends, however it ends.
struct StopsServer(std::path::PathBuf);

impl Drop for StopsServer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}
