//! Exit codes and how errors are shown. The table is in `coffer --help`
//! (cli::EXIT_CODES_HELP) and the README; keep the three in step.

use coffer_device::{DatabaseErrorKind, Error};

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
    NotFound = 9,
    Denied = 10,
    Conflict = 11,
    Wiped = 12,
    LockedOut = 13,
    BackOff = 14,
    AuditTampered = 15,
    Debugger = 16,
    Untrusted = 17,
    CheckInRequired = 18,
    Conflicts = 19,
    CheckFailed = 20,
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
    /// `coffer audit verify` found the chain broken.
    pub fn audit_tampered(problem: &coffer_device::AuditProblem) -> Self {
        CliError {
            exit: ExitCode::AuditTampered,
            code: "audit_tampered",
            message: format!("the audit log fails its check: {problem}"),
        }
    }

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
            Error::TemporaryKeyExpired { .. } => {
                (ExitCode::WrongSecret, "temporary_key_expired", "")
            }
            Error::WrongArchivePassphrase => {
                (ExitCode::WrongSecret, "wrong_archive_passphrase", "")
            }
            Error::InvalidRecoveryKey(_) => (
                ExitCode::WrongSecret,
                "invalid_recovery_key",
                "; check it against the copy you stored",
            ),
            Error::LockedOut => (ExitCode::LockedOut, "locked_out", ""),
            Error::BackOff { .. } => (ExitCode::BackOff, "back_off", ""),
            Error::Wiped { .. } => (
                ExitCode::Wiped,
                "wiped",
                "; 'coffer init' creates a new vault under that name",
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
            Error::NotAPassphraseSlot { .. } => (
                ExitCode::SlotRefused,
                "not_a_passphrase_slot",
                "; name the user's slot with --slot",
            ),
            Error::Busy => (ExitCode::Busy, "busy", "; try again"),
            Error::DebuggerAttached { .. } => (
                ExitCode::Debugger,
                "debugger_attached",
                "; detach the debugger, or run without --refuse-debugger",
            ),
            Error::NoSuchApp { .. } => (
                ExitCode::NotFound,
                "no_such_app",
                "; 'coffer app ls' lists the apps",
            ),
            Error::NoSuchRecord { .. } => (ExitCode::NotFound, "no_such_record", ""),
            Error::NoSuchFile { .. } => (ExitCode::NotFound, "no_such_file", ""),
            Error::NotInConflict { .. } => (
                ExitCode::NotFound,
                "not_in_conflict",
                "; 'coffer conflicts' lists the records in conflict",
            ),
            Error::ServerSideUnknown { .. } => (
                ExitCode::Conflict,
                "server_side_unknown",
                "; run 'coffer sync' first",
            ),
            Error::AppExists { .. } => (ExitCode::VaultExists, "app_exists", ""),
            Error::CapabilityDenied { .. } => (ExitCode::Denied, "capability_denied", ""),
            Error::NotPermitted(_) => (ExitCode::Denied, "not_permitted", ""),
            Error::ManagedVault { .. } => (ExitCode::Denied, "managed_vault", ""),
            Error::VersionConflict { .. } => (
                ExitCode::Conflict,
                "version_conflict",
                "; read the record again and re-apply the change",
            ),
            Error::TooLarge { .. } => (ExitCode::Usage, "too_large", ""),
            Error::Database {
                kind: DatabaseErrorKind::NotADatabase | DatabaseErrorKind::Corrupt,
                ..
            } => (
                ExitCode::Corrupt,
                "database_corrupt",
                "; nothing wrong was read",
            ),
            Error::Database {
                kind: DatabaseErrorKind::Busy,
                ..
            } => (ExitCode::Busy, "busy", "; try again"),
            Error::Database { .. } => (ExitCode::Usage, "database", ""),
            Error::InvalidArchive(_) => {
                (ExitCode::Corrupt, "invalid_archive", "; no app was created")
            }
            Error::FileCorrupt(_) => (
                ExitCode::Corrupt,
                "file_corrupt",
                "; nothing wrong was read",
            ),
            Error::DownloadMismatch { .. } => (ExitCode::Corrupt, "download_mismatch", ""),
            Error::DownloadIncomplete { .. } => (ExitCode::Other, "download_incomplete", ""),
            Error::UnsupportedStoreVersion { .. } => {
                (ExitCode::Corrupt, "unsupported_version", "; upgrade coffer")
            }
            _ => (ExitCode::Other, "error", ""),
        };
        CliError {
            exit,
            code,
            message: format!("{e}{hint}"),
        }
    }
}

impl From<coffer_agent::Error> for CliError {
    fn from(e: coffer_agent::Error) -> Self {
        use coffer_agent::{Error as Agent, TransportError};
        let e = match e {
            Agent::Device(inner) => return CliError::from(inner),
            other => other,
        };
        let (exit, code) = match &e {
            Agent::Transport(TransportError::Untrusted) => {
                (ExitCode::Untrusted, "untrusted_server")
            }
            Agent::Transport(
                TransportError::TooLarge { .. } | TransportError::Redirected { .. },
            ) => (ExitCode::Other, "bad_answer"),
            Agent::Transport(_) => (ExitCode::Other, "unreachable"),
            Agent::Refused { status, code, .. } => (
                match status {
                    401 => ExitCode::WrongSecret,
                    403 => ExitCode::Denied,
                    404 => ExitCode::NotFound,
                    409 => ExitCode::Conflict,
                    429 => ExitCode::BackOff,
                    400..=499 => ExitCode::Usage,
                    _ => ExitCode::Other,
                },
                // The server's stable code, when this version knows it.
                code.known().unwrap_or("server_refused"),
            ),
            Agent::BadAnswer { .. } => (ExitCode::Other, "bad_answer"),
            Agent::InvalidServerUrl { .. } | Agent::InvalidPin | Agent::InvalidCaCert => {
                (ExitCode::Usage, "usage")
            }
            Agent::NotEnrolled => (ExitCode::Usage, "not_enrolled"),
            Agent::AlreadyEnrolled => (ExitCode::VaultExists, "already_enrolled"),
            Agent::Wiped(wiped) => (
                ExitCode::Wiped,
                match wiped.cause {
                    coffer_agent::WipeCause::OfflineTooLong { .. } => "wiped_offline_too_long",
                    _ => "wiped_by_order",
                },
            ),
            Agent::CheckInRequired { .. } => (ExitCode::CheckInRequired, "check_in_required"),
            Agent::PassphraseTooWeak { .. } => (ExitCode::SlotRefused, "passphrase_too_weak"),
            Agent::NeedsOnlineLogin { .. } => (ExitCode::WrongSecret, "needs_online_login"),
            Agent::InvalidReadings(_) => (ExitCode::Usage, "invalid_readings"),
            Agent::Cancelled(_) => (ExitCode::Usage, "usage"),
            Agent::UnlockAgent(_) => (ExitCode::Other, "unlock_agent"),
            _ => (ExitCode::Other, "error"),
        };
        let hint = match &e {
            Agent::Transport(TransportError::Untrusted) => ": refusing to talk to it",
            Agent::NotEnrolled => ": run 'coffer enroll' first",
            Agent::CheckInRequired { .. } => ": run 'coffer check-in' with the network",
            _ => "",
        };
        CliError {
            exit,
            code,
            message: format!("{e}{hint}"),
        }
    }
}
