//! `coffer unlock` and `coffer lock`: the unlock agent's process is this
//! binary again (`coffer __unlock-agent`), given the session key through a
//! pipe only it and its parent hold; the work is
//! `coffer_agent::unlock_agent`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use zeroize::Zeroizing;

use crate::cli::Global;
use crate::commands::Report;
use crate::exit::CliError;

#[cfg(unix)]
use coffer_agent::unlock_agent;

/// The key handed to the agent: 64 hex digits, a space, the slot's
/// fingerprint in 64 hex digits, a space, the slot in two digits, a newline.
#[cfg(unix)]
const HANDOFF_LEN: usize = 64 + 1 + 64 + 1 + 2 + 1;

#[cfg(not(unix))]
fn unsupported() -> CliError {
    CliError::usage("an unlock session needs Unix sockets: not on this platform")
}

fn ends_text(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// `coffer unlock`: one unlock, then an agent process that keeps it.
#[cfg(unix)]
pub fn start(
    global: &Global,
    for_at_most: Option<Duration>,
    check_in_every: Option<Duration>,
) -> Result<Report, CliError> {
    let vault = crate::commands::vault(global)?;
    if let Some(secs) = unlock_agent::status(&vault) {
        return Ok(Report {
            json: json!({"vault": global.vault, "unlocked": true, "ends_in_secs": secs, "already": true}),
            text: format!(
                "Vault '{}' is already unlocked (for {} at most); 'coffer lock' ends it.",
                global.vault,
                ends_text(secs)
            ),
        });
    }
    let (unlocked, _) = crate::commands::unlock_offered(global)?;
    let key = unlocked.session_key()?;
    drop(unlocked);

    let exe = std::env::current_exe()
        .map_err(|e| CliError::other(format!("cannot find the coffer binary: {e}")))?;
    let mut command = Command::new(exe);
    if let Some(space) = &global.space {
        command.arg("--space").arg(space);
    }
    command.args(["--vault", &global.vault]);
    if global.refuse_debugger {
        command.arg("--refuse-debugger");
    }
    command.arg("__unlock-agent");
    if let Some(d) = for_at_most {
        command.args(["--for", &humantime::format_duration(d).to_string()]);
    }
    if let Some(d) = check_in_every {
        command.args([
            "--check-in-every",
            &humantime::format_duration(d).to_string(),
        ]);
    }
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C at this terminal does not end it.
        command.process_group(0);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| CliError::other(format!("cannot start the unlock agent: {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| CliError::other("the unlock agent has no input"))?;
    // The key, its slot's fingerprint and the slot, hex-encoded into a
    // fixed buffer that is zeroized (no growing String holds a copy).
    let mut line = Zeroizing::new([0u8; HANDOFF_LEN]);
    hex::encode_to_slice(key.expose_secret(), &mut line[..64])
        .and_then(|()| hex::encode_to_slice(key.fingerprint(), &mut line[65..129]))
        .map_err(|_| CliError::other("cannot encode the session key"))?;
    line[64] = b' ';
    line[129] = b' ';
    let slot = format!("{:02}\n", key.slot());
    line[130..133].copy_from_slice(slot.as_bytes());
    drop(key);
    stdin
        .write_all(&line[..])
        .map_err(|e| CliError::other(format!("cannot hand the key to the agent: {e}")))?;
    let mut said = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut said);
    }
    let said: serde_json::Value = serde_json::from_str(said.trim()).unwrap_or_default();
    // Only once this side has heard it is ready does the agent serve: if
    // this process dies first, the agent finds its input closed and ends.
    if said["ready"] != true || stdin.write_all(b"go\n").is_err() {
        let _ = child.kill();
        let _ = child.wait();
        let why = said["error"]
            .as_str()
            .unwrap_or("it stopped before it was ready");
        return Err(CliError::other(format!(
            "the unlock agent did not start: {why}"
        )));
    }
    drop(stdin);
    let ends = said["ends_in_secs"].as_u64().unwrap_or(0);
    Ok(Report {
        json: json!({"vault": global.vault, "unlocked": true, "ends_in_secs": ends, "pid": child.id()}),
        text: format!(
            "Vault '{}' stays unlocked for commands of your user: at most {} without a command{}. 'coffer lock' ends it.",
            global.vault,
            ends_text(said["idle_secs"].as_u64().unwrap_or(0)),
            for_at_most.map_or(String::new(), |d| format!(", {} in all", humantime::format_duration(d))),
        ),
    })
}

/// `coffer __unlock-agent`: reads the session key from stdin, reopens the
/// vault with it, says it is ready on stdout, then serves until it ends.
#[cfg(unix)]
pub fn run_agent(
    global: &Global,
    for_at_most: Option<Duration>,
    check_in_every: Option<Duration>,
) -> Result<Report, CliError> {
    // The terminal that started it may close: that does not end it.
    let hangup = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup);
    // Read unbuffered from the pipe into a fixed, zeroized buffer: the
    // standard input's own buffer would keep the key for the agent's life.
    let mut input = std::fs::File::from(
        std::os::fd::AsFd::as_fd(&std::io::stdin())
            .try_clone_to_owned()
            .map_err(|e| CliError::other(format!("no session key: {e}")))?,
    );
    let mut line = Zeroizing::new([0u8; HANDOFF_LEN]);
    std::io::Read::read_exact(&mut input, &mut line[..])
        .map_err(|e| CliError::other(format!("no session key: {e}")))?;
    let mut bytes = Zeroizing::new([0u8; coffer_device::KEY_LEN]);
    let mut fingerprint = [0u8; 32];
    let slot = std::str::from_utf8(&line[130..132])
        .ok()
        .and_then(|s| s.parse::<usize>().ok());
    let key = hex::decode_to_slice(&line[..64], &mut *bytes)
        .ok()
        .and_then(|()| hex::decode_to_slice(&line[65..129], &mut fingerprint).ok())
        .and_then(|()| coffer_device::SessionKey::from_parts(*bytes, slot?, fingerprint))
        .ok_or_else(|| CliError::usage("not a session key"))?;
    drop(line);
    let say = |value: serde_json::Value| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    };
    let vault = crate::commands::vault(global)?;
    let started = (|| -> Result<_, CliError> {
        let opened = vault.reopen(&key)?;
        let limits = unlock_agent::Limits::from_policy(&opened, for_at_most, check_in_every)?;
        let bound = unlock_agent::bind(&vault)?;
        Ok((opened, limits, bound))
    })();
    let (opened, limits, bound) = match started {
        Ok(started) => started,
        Err(e) => {
            say(json!({"ready": false, "error": e.message}));
            return Err(e);
        }
    };
    let ends_in = limits
        .for_at_most
        .map_or(limits.idle, |d| d.min(limits.idle))
        .as_secs();
    say(json!({"ready": true, "ends_in_secs": ends_in, "idle_secs": limits.idle.as_secs()}));
    // Serve only once `coffer unlock` heard that: it may have died since.
    let mut go = [0u8; 3];
    if std::io::Read::read_exact(&mut input, &mut go).is_err() || &go != b"go\n" {
        return Err(CliError::other(
            "coffer unlock went away before the session began",
        ));
    }
    let ended = unlock_agent::serve(&crate::control::agent(), opened, bound, limits)?;
    Ok(Report {
        json: json!({"ended": format!("{ended:?}")}),
        text: String::new(),
    })
}

/// `coffer lock`: ends the vault's unlock session.
#[cfg(unix)]
pub fn lock(global: &Global) -> Result<Report, CliError> {
    let vault = crate::commands::vault(global)?;
    let locked = unlock_agent::lock(&vault);
    Ok(Report {
        json: json!({"vault": global.vault, "locked": locked}),
        text: if locked {
            format!("Vault '{}' is locked: its agent has ended.", global.vault)
        } else {
            format!("Vault '{}' had no unlock session.", global.vault)
        },
    })
}

#[cfg(not(unix))]
pub fn start(_: &Global, _: Option<Duration>, _: Option<Duration>) -> Result<Report, CliError> {
    Err(unsupported())
}

#[cfg(not(unix))]
pub fn run_agent(_: &Global, _: Option<Duration>, _: Option<Duration>) -> Result<Report, CliError> {
    Err(unsupported())
}

#[cfg(not(unix))]
pub fn lock(_: &Global) -> Result<Report, CliError> {
    Err(unsupported())
}
