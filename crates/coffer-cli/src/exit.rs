//! Exit codes and how errors are shown. The table is in `coffer --help`
//! (cli::EXIT_CODES_HELP) and the README; keep the three in step.

use coffer_device::Error;

/// A documented process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Other = 1,
    Usage = 2,
    WrongSecret = 3,
    NoSuchVault = 4,
    Corrupt = 5,
    VaultExists = 6,
    SlotRefused = 7,
    Busy = 8,
}

/// An error on its way to the user: what to print and how to exit.
#[derive(Debug)]
pub struct CliError {
    pub exit: ExitCode,
    /// Stable machine-readable name, for `--json`.
    pub code: &'static str,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            exit: ExitCode::Usage,
            code: "usage",
            message: message.into(),
        }
    }

    pub fn other(message: impl Into<String>) -> Self {
        CliError {
            exit: ExitCode::Other,
            code: "error",
            message: message.into(),
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let (exit, code, hint) = match &e {
            Error::WrongPassphrase => (ExitCode::WrongSecret, "wrong_passphrase", ""),
            Error::WrongRecoveryKey => (ExitCode::WrongSecret, "wrong_recovery_key", ""),
            Error::InvalidRecoveryKey(_) => (
                ExitCode::WrongSecret,
                "invalid_recovery_key",
                "; check it against the copy you stored",
            ),
            Error::NoSuchVault { .. } => (
                ExitCode::NoSuchVault,
                "no_such_vault",
                "; 'coffer vaults' lists the vaults, 'coffer init' creates one",
            ),
            Error::VaultExists { .. } => (ExitCode::VaultExists, "vault_exists", ""),
            Error::Corrupt(_) => (
                ExitCode::Corrupt,
                "corrupt",
                "; nothing was unlocked: restore the vault from a backup",
            ),
            Error::Tampered => (
                ExitCode::Corrupt,
                "tampered",
                "; nothing was unlocked: treat this device as compromised",
            ),
            Error::UnsupportedVersion(_) => {
                (ExitCode::Corrupt, "unsupported_version", "; upgrade coffer")
            }
            Error::KdfLimit(_) => (
                ExitCode::Corrupt,
                "kdf_limit",
                "; the header may be crafted",
            ),
            Error::InvalidName { .. }
            | Error::InvalidKdfParams(_)
            | Error::InvalidPassphrase(_) => (ExitCode::Usage, "invalid_input", ""),
            Error::SlotsFull(_) => (ExitCode::SlotRefused, "slots_full", ""),
            Error::NoSuchSlot { .. } => (
                ExitCode::SlotRefused,
                "no_such_slot",
                "; 'coffer slot list' shows the slots",
            ),
            Error::SlotNameTaken { .. } => (ExitCode::SlotRefused, "slot_name_taken", ""),
            Error::LastSlot => (ExitCode::SlotRefused, "last_slot", ""),
            Error::Busy => (ExitCode::Busy, "busy", "; try again"),
            _ => (ExitCode::Other, "error", ""),
        };
        CliError {
            exit,
            code,
            message: format!("{e}{hint}"),
        }
    }
}
