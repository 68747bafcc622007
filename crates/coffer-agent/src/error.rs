//! The agent's errors: one `#[non_exhaustive]` enum with data; the CLI
//! adds the wording, hints and exit codes.

use coffer_protocol::ErrorCode;

/// Why a request did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection (the device is offline, the server down).
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server's certificate is not the pinned one (or not signed by
    /// the given CA).
    #[error("the server's certificate is not the one pinned (or not signed by the given CA)")]
    Untrusted,
    /// No whole answer within the timeout (a slow drip included).
    #[error("the server did not answer in time")]
    TimedOut,
    /// An answer over the limit.
    #[error("the server's answer is over {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// A redirect: never followed (it would carry the token elsewhere).
    #[error("the server answered with a redirect ({status}): not followed")]
    Redirected {
        /// The status.
        status: u16,
    },
}

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The vault (or its stores) refused.
    #[error(transparent)]
    Device(#[from] coffer_device::Error),
    /// No answer from the control plane.
    #[error(transparent)]
    Transport(TransportError),
    /// The control plane refused, with its stable code.
    #[error("the server refused ({status}, {code}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's code.
        code: ErrorCode,
        /// The server's message (bounded, control characters replaced).
        message: String,
        /// Seconds to wait, when the server said.
        retry_after: Option<u64>,
    },
    /// An answer that is not what the protocol says: nothing was acted on.
    #[error("the server's answer to {endpoint} is not valid: {problem}")]
    BadAnswer {
        /// The endpoint's path.
        endpoint: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A request that could not be built.
    #[error("cannot build the request to {endpoint}")]
    BadRequest {
        /// The endpoint's path.
        endpoint: &'static str,
    },
    /// The control plane's URL is not https:// (or http:// to loopback).
    #[error("the control plane's URL must be https:// (plain http:// only to 127.0.0.1, ::1 or localhost): {url}")]
    InvalidServerUrl {
        /// The URL given.
        url: String,
    },
    /// A certificate pin that is not 64 hex digits.
    #[error("a certificate pin is the certificate's SHA-256: 64 hex digits, colons allowed")]
    InvalidPin,
    /// A CA file that is not a PEM certificate.
    #[error("the CA certificate is not PEM")]
    InvalidCaCert,
    /// TLS could not be set up.
    #[error("cannot set up TLS: {0}")]
    TlsSetup(String),
    /// The vault is not enrolled.
    #[error("this vault is not enrolled with a control plane")]
    NotEnrolled,
    /// The vault is enrolled already.
    #[error("this vault is already enrolled with a control plane")]
    AlreadyEnrolled,
    /// The vault's enrollment settings are damaged.
    #[error("the vault's enrollment is damaged: {0}")]
    DamagedEnrollment(&'static str),
    /// The release file (the device's credential before unlock) is damaged.
    #[error("the device's release file is unusable: {0}")]
    DamagedReleaseFile(String),
    /// The vault was wiped: by a wipe order, or by the offline grace.
    #[error("{0}")]
    Wiped(Wiped),
    /// The offline grace's block: a check-in is needed first.
    #[error("no check-in for {hours} hours (the policy allows {allowed})")]
    CheckInRequired {
        /// Hours since the last check-in.
        hours: i64,
        /// What the policy allows.
        allowed: u32,
    },
    /// A passphrase below the policy's rules.
    #[error("the organization's policy (version {version}) asks for at least {min_length} characters{}", of_kinds(*.min_classes))]
    PassphraseTooWeak {
        /// The policy's version.
        version: i64,
        /// Fewest characters.
        min_length: u32,
        /// Fewest classes.
        min_classes: u32,
    },
    /// Offline login without the user's own slot.
    #[error("{}", needs_online_message(.user, .why, *.wrong_secret))]
    NeedsOnlineLogin {
        /// The user.
        user: String,
        /// Why the login was offline.
        why: String,
        /// The secret opened no slot (otherwise: another user's slot).
        wrong_secret: bool,
    },
    /// The released escrow key does not open this vault.
    #[error("the escrow key the server released is not this vault's")]
    EscrowMismatch,
    /// Readings that the server would refuse.
    #[error("the readings are refused: {0}")]
    InvalidReadings(String),
    /// A callback gave nothing (a prompt was cancelled).
    #[error("no {0} given")]
    Cancelled(&'static str),
    /// The unlock agent could not be started or reached (its socket).
    #[error("unlock agent: {0}")]
    UnlockAgent(String),
}

fn needs_online_message(user: &str, why: &str, wrong_secret: bool) -> String {
    if wrong_secret {
        format!("{why}, and the passphrase opens no slot of this vault: wrong passphrase, or {user} has no slot on this device yet (that needs one online login)")
    } else {
        format!("{why}, and that passphrase is not {user}'s: {user} has no slot on this device yet (that needs one online login)")
    }
}

/// How a vault came to be wiped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WipeCause {
    /// A whole-device wipe order from the control plane.
    Ordered {
        /// Orders the server could not be told of (they stay pending there).
        unacknowledged: Vec<i64>,
    },
    /// Too long without a check-in.
    OfflineTooLong {
        /// Days since the last check-in.
        days: i64,
        /// What the policy allows.
        allowed: u32,
    },
}

/// A vault wiped by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wiped {
    /// The vault.
    pub vault: String,
    /// Why.
    pub cause: WipeCause,
}

impl std::fmt::Display for Wiped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            WipeCause::Ordered { unacknowledged } if unacknowledged.is_empty() => write!(
                f,
                "the control plane ordered vault '{}' wiped: it is crypto-erased, and the server told",
                self.vault
            ),
            WipeCause::Ordered { unacknowledged } => write!(
                f,
                "the control plane ordered vault '{}' wiped: it is crypto-erased; the server could not be told (orders {} stay pending there)",
                self.vault,
                unacknowledged
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            WipeCause::OfflineTooLong { days, allowed } => write!(
                f,
                "vault '{}' went {days} days without a check-in (the policy allows {allowed}): it has wiped itself",
                self.vault
            ),
        }
    }
}

impl Error {
    /// Whether the control plane could not be reached at all (the device
    /// is offline, or the server down), as opposed to a refusal or a bad
    /// answer: the cases where a retry later can help and local work goes
    /// on offline.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Transport(TransportError::Unreachable(_) | TransportError::TimedOut)
        )
    }

    /// Whether retrying the same request cannot help (atuin's
    /// `is_permanent`): everything but an unreachable server, a 5xx, a
    /// 429, or a busy vault.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Refused { status, .. } => *status != 429 && *status < 500,
            Error::Device(coffer_device::Error::Busy) => false,
            e => !e.is_unreachable(),
        }
    }
}

/// The agent's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kinds part of a passphrase rule, in good English: none for one kind
/// (any character counts), else how many of the four.
fn of_kinds(min_classes: u32) -> String {
    if min_classes <= 1 {
        String::new()
    } else {
        format!(" of at least {min_classes} kinds (lower case, upper case, digits, other)")
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn a_passphrase_rule_reads_as_english() {
        let one = Error::PassphraseTooWeak {
            version: 3,
            min_length: 12,
            min_classes: 1,
        };
        assert_eq!(
            one.to_string(),
            "the organization's policy (version 3) asks for at least 12 characters"
        );
        let three = Error::PassphraseTooWeak {
            version: 3,
            min_length: 12,
            min_classes: 3,
        };
        assert!(three.to_string().ends_with(
            "12 characters of at least 3 kinds (lower case, upper case, digits, other)"
        ));
    }
}
