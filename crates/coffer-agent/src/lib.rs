//! The device's side of coffer's control plane, for any app to embed.
//!
//! An app (a field app on a shared tablet, a desktop client, the `coffer`
//! CLI) opens its organization's vault through an [`Agent`] and gets the
//! whole policy: enrollment ([`Agent::enroll`]), online login through key
//! escrow and offline login with the user's own slot ([`Agent::login`]),
//! check-in with remote wipe ([`Agent::check_in`]), the signed policy
//! fetched, verified against the pinned key and enforced at every unlock
//! ([`Agent::unlock`]: offline grace, lockout, capabilities, debugger
//! refusal, KDF floor), a delivery queue for readings
//! ([`Agent::queue_readings`], [`Agent::deliver`]), and record sync with
//! the organization ([`Agent::sync`]: push, pull, conflicts kept, and the
//! files records reference moved by resumable, verified uploads and
//! downloads).
//!
//! An enrolled vault cannot be opened around the agent by accident:
//! `coffer_device::Vault::unlock` refuses it with
//! [`coffer_device::Error::ManagedVault`] (docs/threat-model.md).
//!
//! Every request and answer is a `coffer_protocol` type; a malformed,
//! oversized or hostile answer is an [`Error`], and nothing is
//! acknowledged, wiped or stored on the strength of a missing field. The
//! agent never prints and never prompts: prompts go through
//! [`LoginPrompts`], and the words and exit codes are the app's.
//!
//! ```no_run
//! use coffer_agent::{Agent, Server, Trust, UnlockSecret};
//! use coffer_device::{KdfAlgorithm, KdfParams, Passphrase, Space};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), coffer_agent::Error> {
//! let agent = Agent::new();
//! let space = Space::new("/var/lib/field-app");
//! let kdf = KdfParams::calibrate(KdfAlgorithm::Argon2id, Duration::from_millis(500))?;
//! let alice = Passphrase::new("correct horse battery staple".into())?;
//! let vault = space.create_vault("acme", "alice", &alice, &kdf)?;
//! let server = Server::new("https://cp.example:8443", Trust::parse_pin("AB:CD:…")?)?;
//! let (_enrolled, vault) = agent.enroll(vault, &server, "one-time-code".into(), "tablet-7")?;
//! drop(vault);
//!
//! // Later, at every start of the app: the policy applies.
//! let secret = UnlockSecret::Passphrase(alice);
//! let vault = agent.unlock(&space.vault("acme")?, &secret)?;
//! let notes = vault.app("notes")?; // as the policy's capabilities allow
//! # Ok(()) }
//! ```

mod check_in;
mod delivery;
pub mod enrollment;
mod error;
pub mod files;
#[cfg(feature = "reqwest")]
pub mod http;
mod login;
#[cfg(feature = "mqtt")]
mod mqtt;
pub mod policy;
mod strength;
pub mod sync;
pub mod transport;
#[cfg(unix)]
pub mod unlock_agent;

use std::sync::Arc;
use std::time::SystemTime;

use coffer_device::{Credential, Passphrase, RecoveryKey, UnlockedVault, Vault};
use coffer_protocol::device::{DepositEscrow, Enroll};
use coffer_protocol::WireSecret;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

pub use check_in::{CheckInReport, PolicyOutcome};
pub use delivery::{parse_readings, DeliveryReport};
pub use enrollment::{Enrollment, ESCROW_SLOT, RELEASE_FILE};
pub use error::{Error, Result, TransportError, WipeCause, Wiped};
pub use files::{FileDirection, FileProblem};
pub use login::{Login, LoginPrompts, OfflineReason, SlotChange};
pub use policy::{check_passphrase_rules, held_policy, Grace};
pub use strength::{strength, Strength};
pub use sync::{AppSync, Quiet, SyncObserver, SyncReport};
pub use transport::{Client, Connector, Credentials, Server, Transport, Trust};

use enrollment::{key, ReleaseFile};

/// The clock the agent reads: the system's, or a test's.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The secret that opens a vault.
pub enum UnlockSecret {
    /// A user's passphrase.
    Passphrase(Passphrase),
    /// A recovery or temporary key.
    RecoveryKey(RecoveryKey),
}

impl UnlockSecret {
    /// As the device library takes it.
    pub fn credential(&self) -> Credential<'_> {
        match self {
            UnlockSecret::Passphrase(p) => Credential::Passphrase(p),
            UnlockSecret::RecoveryKey(k) => Credential::RecoveryKey(k),
        }
    }
}

/// What [`Agent::enroll`] did.
#[derive(Debug)]
pub struct Enrolled {
    /// The device's id.
    pub device_id: i64,
    /// Its organization.
    pub organization_id: i64,
    /// The pinned policy key, hex.
    pub policy_key: String,
    /// The first check-in.
    pub check_in: CheckInReport,
}

/// What [`Agent::after_rotation`] did with the escrow slot.
#[derive(Debug, PartialEq, Eq)]
pub enum EscrowAfterRotation {
    /// The vault is not enrolled: nothing to do.
    NotEnrolled,
    /// A new escrow slot's key is deposited.
    Deposited,
    /// It could not be deposited now; the next check-in does it.
    Deferred(String),
}

/// The device agent: the organization's side of every unlock.
#[derive(Clone)]
pub struct Agent {
    connector: Arc<dyn Connector>,
    clock: Clock,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new()
    }
}

impl Agent {
    /// An agent that talks HTTPS through reqwest and reads the system
    /// clock.
    #[cfg(feature = "reqwest")]
    pub fn new() -> Agent {
        Agent::with_connector(Arc::new(http::ReqwestConnector::default()))
    }

    /// An agent over another transport.
    pub fn with_connector(connector: Arc<dyn Connector>) -> Agent {
        Agent {
            connector,
            clock: Arc::new(SystemTime::now),
        }
    }

    /// The same agent reading `clock` (a trusted time source, or a test's).
    pub fn with_clock(mut self, clock: Clock) -> Agent {
        self.clock = clock;
        self
    }

    /// The time now, by the agent's clock.
    pub fn now(&self) -> SystemTime {
        (self.clock)()
    }

    fn client(&self, server: &Server) -> Result<Client> {
        Client::new(self.connector.as_ref(), server)
    }

    /// Whether the vault's held policy refuses debuggers (from the release
    /// file's hint: readable before any unlock, so the refusal comes before
    /// the KDF runs).
    pub fn refuses_debugger(&self, vault: &Vault) -> bool {
        matches!(ReleaseFile::read(vault.path()), Ok(Some(file)) if file.refuse_debugger)
    }

    /// `vault`, refusing a debugger before any KDF runs if the held
    /// policy's hint says so (a vault already set to refuse stays so).
    pub(crate) fn guarded(&self, vault: &Vault) -> Vault {
        if self.refuses_debugger(vault) {
            vault.clone().refuse_under_debugger(true)
        } else {
            vault.clone()
        }
    }

    /// Unlocks `vault` and enforces its organization's policy, if it is
    /// enrolled: the offline grace (past its hours: [`Error::CheckInRequired`];
    /// past its days the vault wipes itself: [`Error::Wiped`]), debugger
    /// refusal, idle lock, lockout, capabilities, the KDF floor. A vault
    /// that is not enrolled is simply unlocked.
    pub fn unlock(&self, vault: &Vault, secret: &UnlockSecret) -> Result<UnlockedVault> {
        self.unlock_with(vault, secret, Grace::Full)
    }

    /// [`Agent::unlock`] held to `grace`: [`Grace::WipeOnly`] for the
    /// unlock that precedes a check-in (the way out of the grace's block).
    pub fn unlock_with(
        &self,
        vault: &Vault,
        secret: &UnlockSecret,
        grace: Grace,
    ) -> Result<UnlockedVault> {
        let vault = self.guarded(vault);
        let now = self.now();
        let credential = secret.credential();
        let unlocked = vault.unlock_managed_at(&credential, now)?;
        let unlocked = policy::enforce(unlocked, &credential, now, grace)?;
        // A purge a crash interrupted leaves old (undecryptable) files: they
        // go at the first unlock after.
        unlocked.finish_purges()?;
        Ok(unlocked)
    }

    /// Joins `vault` (and all its data) to the control plane at `server`:
    /// spends the enrollment `code`, keeps the device token and the
    /// organization's policy key in the vault's encrypted settings (which
    /// makes it managed), writes the release file, adds an escrow slot and
    /// deposits its key, then checks in once (the server's time, the
    /// organization's policy if one is published).
    pub fn enroll(
        &self,
        vault: UnlockedVault,
        server: &Server,
        code: WireSecret,
        name: &str,
    ) -> Result<(Enrolled, UnlockedVault)> {
        if vault.setting(key::DEVICE_TOKEN)?.is_some() {
            return Err(Error::AlreadyEnrolled);
        }
        let client = self.client(server)?;
        let answer = client.send(
            &Enroll {
                code,
                name: name.to_owned(),
            },
            Credentials::default(),
        )?;
        let bad = |problem: &str| Error::BadAnswer {
            endpoint: <Enroll as coffer_protocol::Endpoint>::PATH,
            problem: problem.to_owned(),
        };
        let policy_key = answer
            .policy_key()
            .ok_or_else(|| bad("policy_public_key is not hex of 32 bytes"))?;
        if answer.device_token.is_empty() || answer.release_token.is_empty() {
            return Err(bad("a token is empty"));
        }
        if answer.device_id < 1 || answer.organization_id < 1 {
            return Err(bad("an id is not positive"));
        }
        let enrollment = Enrollment {
            server: server.clone(),
            token: answer.device_token,
            device_id: answer.device_id,
            organization_id: answer.organization_id,
            policy_key,
        };
        ReleaseFile::new(server, answer.device_id, answer.release_token)
            .write(vault.vault().path())?;
        enrollment.write(&vault)?;
        let mut vault = vault;
        deposit_new_escrow(&mut vault, &client, &enrollment.token)?;
        let (check_in, vault) = self.check_in(vault)?;
        Ok((
            Enrolled {
                device_id: enrollment.device_id,
                organization_id: enrollment.organization_id,
                policy_key: hex::encode(policy_key),
                check_in,
            },
            vault,
        ))
    }

    /// After a rotation of an enrolled vault (which retired its escrow
    /// slot with the others): a new escrow slot, its key deposited; if the
    /// server cannot take it now, marked for the next check-in.
    pub fn after_rotation(&self, vault: &mut UnlockedVault) -> Result<EscrowAfterRotation> {
        let enrollment = match Enrollment::read(vault) {
            Ok(enrollment) => enrollment,
            Err(Error::NotEnrolled) => return Ok(EscrowAfterRotation::NotEnrolled),
            Err(e) => return Err(e),
        };
        let deposited = self
            .client(&enrollment.server)
            .and_then(|client| deposit_new_escrow(vault, &client, &enrollment.token));
        match deposited {
            Ok(()) => {
                vault.set_setting(key::ESCROW_STALE, None)?;
                Ok(EscrowAfterRotation::Deposited)
            }
            Err(e) => {
                vault.set_setting(key::ESCROW_STALE, Some(b"1"))?;
                Ok(EscrowAfterRotation::Deferred(e.to_string()))
            }
        }
    }
}

/// A new escrow slot (a recovery key only the server keeps, replacing any
/// earlier one), its key deposited as hex of its text.
pub(crate) fn deposit_new_escrow(
    vault: &mut UnlockedVault,
    client: &Client,
    token: &WireSecret,
) -> Result<()> {
    if vault.slots().iter().any(|s| s.name == ESCROW_SLOT) {
        vault.remove_slot(ESCROW_SLOT)?;
    }
    let (_, escrow) = vault.add_recovery_slot(ESCROW_SLOT)?;
    let text = escrow.display();
    let escrow_hex = Zeroizing::new(hex::encode(text.expose_secret().as_bytes()));
    client.send(
        &DepositEscrow {
            escrow_key: WireSecret::new(escrow_hex.as_str().to_owned()),
        },
        Credentials {
            token: Some(token),
            user: None,
        },
    )?;
    Ok(())
}
