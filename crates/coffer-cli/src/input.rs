//! Where secrets come from: a file, an environment variable, or a no-echo
//! prompt on the terminal — never a command-line argument, which any user of
//! the machine can read from the process list.
//!
//! "The terminal" is the controlling terminal (`/dev/tty`), not stdin: as
//! with age, ssh and gpg, `echo data | coffer kv put k -` still asks for the
//! passphrase on the terminal while the data comes through the pipe.

use std::io::{BufRead, Write};
use std::path::Path;

use coffer_device::{Passphrase, RecoveryKey};
use zeroize::Zeroize;

use crate::cli::Global;
use crate::exit::CliError;

const PASSPHRASE_ENV: &str = "COFFER_PASSPHRASE";
const NEW_PASSPHRASE_ENV: &str = "COFFER_NEW_PASSPHRASE";
const RECOVERY_KEY_ENV: &str = "COFFER_RECOVERY_KEY";

/// A secret the user offered to open a vault.
pub use coffer_agent::UnlockSecret as Offered;

fn read_first_line(path: &Path) -> Result<String, CliError> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let line_len = text.find(['\n', '\r']).unwrap_or(text.len());
    let line = text[..line_len].to_owned();
    text.zeroize();
    Ok(line)
}

/// How many times a secret typed at the terminal is asked for (as sudo and
/// cryptsetup do). Each wrong try counts toward the vault's lockout.
pub const TRIES: usize = 3;

fn prompt(label: &str) -> Result<String, CliError> {
    rpassword::prompt_password(label)
        .map_err(|e| CliError::usage(format!("cannot read from the terminal: {e}")))
}

#[cfg(unix)]
fn open_terminal() -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
}

/// Whether there is a terminal to ask on: the process's controlling
/// terminal, whatever stdin is.
pub fn has_terminal() -> bool {
    #[cfg(unix)]
    {
        open_terminal().is_ok()
    }
    #[cfg(not(unix))]
    {
        std::io::IsTerminal::is_terminal(&std::io::stdin())
    }
}

/// A line written to the terminal (a retry's reason), never to a pipe.
pub fn tell(line: &str) {
    #[cfg(unix)]
    if let Ok(mut tty) = open_terminal() {
        let _ = writeln!(tty, "{line}");
        return;
    }
    eprintln!("{line}");
}

/// Asks on the terminal (echoed: it is not a secret) for `expected` to be
/// typed; whether it was. Fails when there is no terminal: `hint` says
/// which flag confirms instead.
pub fn confirm(question: &str, expected: &str, hint: &str) -> Result<bool, CliError> {
    if !has_terminal() {
        return Err(CliError::usage(hint));
    }
    let read = || -> std::io::Result<String> {
        let mut answer = String::new();
        #[cfg(unix)]
        {
            let mut tty = open_terminal()?;
            write!(tty, "{question}")?;
            tty.flush()?;
            std::io::BufReader::new(tty).read_line(&mut answer)?;
        }
        #[cfg(not(unix))]
        {
            eprint!("{question}");
            std::io::stdin().lock().read_line(&mut answer)?;
        }
        Ok(answer)
    };
    let answer =
        read().map_err(|e| CliError::usage(format!("cannot read the confirmation: {e}")))?;
    // An empty name is never confirmed by a bare Enter.
    Ok(!expected.is_empty() && answer.trim() == expected)
}

fn passphrase(text: String) -> Result<Passphrase, CliError> {
    Passphrase::new(text).map_err(CliError::from)
}

/// A secret and whether it was typed (only a typed secret is asked again).
pub struct Given {
    /// The secret.
    pub secret: Offered,
    /// It came from the terminal.
    pub typed: bool,
}

/// Whether `error` is a wrong secret, which a person may simply have
/// mistyped (a lockout, a back-off or a wipe is not asked again).
pub fn is_wrong_secret(error: &coffer_agent::Error) -> bool {
    matches!(
        error,
        coffer_agent::Error::Device(
            coffer_device::Error::WrongPassphrase | coffer_device::Error::WrongRecoveryKey
        ) | coffer_agent::Error::NeedsOnlineLogin {
            wrong_secret: true,
            ..
        }
    )
}

/// Opens with the secret the command line gives: `open` is tried with it,
/// and a wrong secret typed at the terminal is asked for again, up to
/// [`TRIES`] tries in all.
pub fn with_secret<T>(
    global: &Global,
    mut open: impl FnMut(&Offered) -> coffer_agent::Result<T>,
) -> Result<(T, Offered), CliError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let given = given_secret(global)?;
        match open(&given.secret) {
            Ok(opened) => return Ok((opened, given.secret)),
            Err(e) if given.typed && tries < TRIES && is_wrong_secret(&e) => {
                tell(&format!("{e}; try again."));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The secret that opens the vault (a recovery key with `--recovery`, else
/// a passphrase), saying whether it was typed.
pub fn given_secret(global: &Global) -> Result<Given, CliError> {
    let mut typed = false;
    if global.recovery || global.recovery_key_file.is_some() {
        let text = if let Some(file) = &global.recovery_key_file {
            read_first_line(file)?
        } else if let Ok(text) = std::env::var(RECOVERY_KEY_ENV) {
            text
        } else if has_terminal() {
            typed = true;
            prompt(&format!("Recovery key for vault '{}': ", global.vault))?
        } else {
            return Err(CliError::usage(
                "no recovery key given: set COFFER_RECOVERY_KEY, pass --recovery-key-file, or run on a terminal",
            ));
        };
        let mut text = text;
        let parsed = RecoveryKey::parse(&text);
        text.zeroize();
        return Ok(Given {
            secret: Offered::RecoveryKey(parsed.map_err(coffer_device::Error::from)?),
            typed,
        });
    }
    let text = if let Some(file) = &global.passphrase_file {
        read_first_line(file)?
    } else if let Ok(text) = std::env::var(PASSPHRASE_ENV) {
        text
    } else if has_terminal() {
        typed = true;
        prompt(&format!("Passphrase for vault '{}': ", global.vault))?
    } else {
        return Err(CliError::usage(
            "no passphrase given: set COFFER_PASSPHRASE, pass --passphrase-file, or run on a terminal",
        ));
    };
    Ok(Given {
        secret: Offered::Passphrase(passphrase(text)?),
        typed,
    })
}

/// Whether [`new_passphrase`] asks at the terminal (no file, no variable).
pub fn new_passphrase_is_typed(global: &Global) -> bool {
    global.new_passphrase_file.is_none() && std::env::var_os(NEW_PASSPHRASE_ENV).is_none()
}

/// The passphrase of a slot being added, asked twice on a terminal.
pub fn new_passphrase(global: &Global, who: &str) -> Result<Passphrase, CliError> {
    if let Some(file) = &global.new_passphrase_file {
        return passphrase(read_first_line(file)?);
    }
    if let Ok(text) = std::env::var(NEW_PASSPHRASE_ENV) {
        return passphrase(text);
    }
    prompt_twice(who, "no new passphrase given: set COFFER_NEW_PASSPHRASE, pass --new-passphrase-file, or run on a terminal")
}

/// The passphrase of an existing archive (the second secret of an import):
/// asked once on a terminal.
pub fn archive_passphrase(global: &Global) -> Result<Passphrase, CliError> {
    if let Some(file) = &global.new_passphrase_file {
        return passphrase(read_first_line(file)?);
    }
    if let Ok(text) = std::env::var(NEW_PASSPHRASE_ENV) {
        return passphrase(text);
    }
    if !has_terminal() {
        return Err(CliError::usage(
            "no archive passphrase given: set COFFER_NEW_PASSPHRASE, pass --new-passphrase-file, or run on a terminal",
        ));
    }
    passphrase(prompt("Archive passphrase: ")?)
}

/// The first passphrase of a new vault: COFFER_PASSPHRASE (or
/// --passphrase-file) if given, else COFFER_NEW_PASSPHRASE (or
/// --new-passphrase-file), else asked twice.
pub fn initial_passphrase(global: &Global, who: &str) -> Result<Passphrase, CliError> {
    if let Some(file) = &global.passphrase_file {
        return passphrase(read_first_line(file)?);
    }
    if let Ok(text) = std::env::var(PASSPHRASE_ENV) {
        return passphrase(text);
    }
    if global.new_passphrase_file.is_some() || std::env::var_os(NEW_PASSPHRASE_ENV).is_some() {
        return new_passphrase(global, who);
    }
    prompt_twice(
        who,
        "no passphrase given: set COFFER_PASSPHRASE, pass --passphrase-file, or run on a terminal",
    )
}

fn prompt_twice(who: &str, not_a_terminal: &str) -> Result<Passphrase, CliError> {
    if !has_terminal() {
        return Err(CliError::usage(not_a_terminal));
    }
    for _ in 0..3 {
        let mut first = prompt(&format!("New passphrase for {who}: "))?;
        let mut second = prompt("Repeat it: ")?;
        let same = first == second;
        second.zeroize();
        if same {
            return passphrase(first);
        }
        first.zeroize();
        tell("The two passphrases differ; try again.");
    }
    Err(CliError::usage("the passphrases did not match three times"))
}
