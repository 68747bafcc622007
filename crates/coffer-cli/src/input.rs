//! Where secrets come from: a file, an environment variable, or a no-echo
//! prompt on the terminal — never a command-line argument, which any user of
//! the machine can read from the process list.

use std::io::IsTerminal;
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

fn prompt(label: &str) -> Result<String, CliError> {
    rpassword::prompt_password(label)
        .map_err(|e| CliError::usage(format!("cannot read from the terminal: {e}")))
}

fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

fn passphrase(text: String) -> Result<Passphrase, CliError> {
    Passphrase::new(text).map_err(CliError::from)
}

/// The secret that opens the vault: a recovery key with `--recovery`, else
/// a passphrase.
pub fn unlock_secret(global: &Global) -> Result<Offered, CliError> {
    if global.recovery || global.recovery_key_file.is_some() {
        let text = if let Some(file) = &global.recovery_key_file {
            read_first_line(file)?
        } else if let Ok(text) = std::env::var(RECOVERY_KEY_ENV) {
            text
        } else if stdin_is_terminal() {
            prompt(&format!("Recovery key for vault '{}': ", global.vault))?
        } else {
            return Err(CliError::usage(
                "no recovery key given: set COFFER_RECOVERY_KEY, pass --recovery-key-file, or run on a terminal",
            ));
        };
        let mut text = text;
        let parsed = RecoveryKey::parse(&text);
        text.zeroize();
        return Ok(Offered::RecoveryKey(
            parsed.map_err(coffer_device::Error::from)?,
        ));
    }
    let text = if let Some(file) = &global.passphrase_file {
        read_first_line(file)?
    } else if let Ok(text) = std::env::var(PASSPHRASE_ENV) {
        text
    } else if stdin_is_terminal() {
        prompt(&format!("Passphrase for vault '{}': ", global.vault))?
    } else {
        return Err(CliError::usage(
            "no passphrase given: set COFFER_PASSPHRASE, pass --passphrase-file, or run on a terminal",
        ));
    };
    Ok(Offered::Passphrase(passphrase(text)?))
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
    if !stdin_is_terminal() {
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
    if !stdin_is_terminal() {
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
        eprintln!("The two passphrases differ; try again.");
    }
    Err(CliError::usage("the passphrases did not match three times"))
}
