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
    {
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| CliError::other("the unlock agent has no input"))?;
        let line = Zeroizing::new(format!(
            "{} {}\n",
            hex::encode(key.expose_secret()),
            key.slot()
        ));
        stdin
            .write_all(line.as_bytes())
            .map_err(|e| CliError::other(format!("cannot hand the key to the agent: {e}")))?;
    }
    let mut said = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut said);
    }
    let said: serde_json::Value = serde_json::from_str(said.trim()).unwrap_or_default();
    if said["ready"] != true {
        let _ = child.kill();
        let _ = child.wait();
        let why = said["error"]
            .as_str()
            .unwrap_or("it stopped before it was ready");
        return Err(CliError::other(format!(
            "the unlock agent did not start: {why}"
        )));
    }
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
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::other(format!("no session key: {e}")))?;
    let (hex_key, slot) = line
        .trim()
        .split_once(' ')
        .ok_or_else(|| CliError::usage("no session key given"))?;
    let mut bytes = Zeroizing::new([0u8; coffer_device::KEY_LEN]);
    hex::decode_to_slice(hex_key, &mut *bytes).map_err(|_| CliError::usage("not a session key"))?;
    let slot: usize = slot.parse().map_err(|_| CliError::usage("not a slot"))?;
    let key = coffer_device::SessionKey::from_parts(*bytes, slot);
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
        let listener = unlock_agent::bind(&vault)?;
        Ok((opened, limits, listener))
    })();
    let (opened, limits, listener) = match started {
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
    let ended = unlock_agent::serve(&crate::control::agent(), opened, listener, limits)?;
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
