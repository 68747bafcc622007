//! Login on a shared device: online through key escrow (the server checks
//! the user's password and organization and releases the escrow key; the
//! user's own slot is added or renewed), or offline with the user's own
//! slot.

use coffer_device::{Credential, KdfParams, Passphrase, RecoveryKey, UnlockedVault, Vault};
use coffer_protocol::device::{CheckIn, ReleaseEscrow};
use coffer_protocol::session::{Login as LoginRequest, Logout};
use coffer_protocol::WireSecret;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::check_in::{acknowledge, checked, remove_ordered_slot, wipe_as_ordered};
use crate::enrollment::ReleaseFile;
use crate::error::{Error, Result};
use crate::policy::{self, Grace};
use crate::{Agent, Credentials, UnlockSecret};

/// What a login asks of the person at the device (age's `Callbacks`):
/// each returns `None` when nothing was given, and the login ends with
/// [`Error::Cancelled`]. The agent never prompts itself.
pub trait LoginPrompts {
    /// The user's password on the control plane (online login).
    fn server_password(&mut self, user: &str) -> Option<WireSecret>;
    /// The passphrase of the user's own slot on this device (online login).
    fn new_passphrase(&mut self, user: &str) -> Option<Passphrase>;
    /// The KDF parameters of a new slot (calibrated only when one is made).
    fn new_slot_kdf(&mut self) -> coffer_device::Result<KdfParams>;
    /// The user's secret for an offline login.
    fn offline_secret(&mut self, user: &str) -> Option<UnlockSecret>;
    /// Whether to ask again after `refused`: a wrong offline secret
    /// ([`Error::NeedsOnlineLogin`] with `wrong_secret`) or a new
    /// passphrase below the policy's rules. A person typing at a terminal
    /// gets another try (the escrow key already released is not thrown
    /// away for a passphrase that is too short); a secret from a file or
    /// the environment would only fail the same way, so the default is no.
    fn ask_again(&mut self, refused: &Error) -> bool {
        let _ = refused;
        false
    }
}

/// Why a login went offline.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OfflineReason {
    /// The vault is not enrolled.
    NotEnrolled,
    /// The control plane cannot be reached.
    Unreachable,
    /// The release file is unusable (a user with a slot is not kept out).
    DamagedReleaseFile(String),
}

impl std::fmt::Display for OfflineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OfflineReason::NotEnrolled => f.write_str("this vault is not enrolled"),
            OfflineReason::Unreachable => f.write_str("the control plane cannot be reached"),
            OfflineReason::DamagedReleaseFile(why) => {
                write!(f, "the device's release file is unusable ({why})")
            }
        }
    }
}

/// What an online login did to the user's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotChange {
    /// A new slot.
    Added,
    /// An existing slot, under the new passphrase.
    Renewed,
}

/// A login's outcome, with the vault open under its policy.
pub enum Login {
    /// Through escrow.
    Online {
        /// What became of the user's slot.
        slot: SlotChange,
        /// The vault.
        vault: UnlockedVault,
    },
    /// With the user's own slot.
    Offline {
        /// Why not online.
        why: OfflineReason,
        /// The vault.
        vault: UnlockedVault,
    },
}

impl Agent {
    /// Logs `user` in on this device: online if the vault is enrolled and
    /// the control plane answers (a check-in with the release token first,
    /// so a whole-device wipe is carried out before anyone logs in; then
    /// the user's server password, the escrow key's release, and the
    /// user's own slot added or renewed under the policy's passphrase
    /// rules); otherwise offline, where only the user's own slot opens it.
    pub fn login(
        &self,
        vault: &Vault,
        user: &str,
        prompts: &mut dyn LoginPrompts,
    ) -> Result<Login> {
        let release = match ReleaseFile::read(vault.path()) {
            Ok(Some(release)) => release,
            Ok(None) => {
                return self.offline_login(vault, user, OfflineReason::NotEnrolled, prompts)
            }
            // A damaged release file must not keep users with a slot out.
            Err(e) => {
                let why = OfflineReason::DamagedReleaseFile(match e {
                    Error::DamagedReleaseFile(why) => why,
                    other => other.to_string(),
                });
                return self.offline_login(vault, user, why, prompts);
            }
        };
        let client = self.client(&release.server()?)?;
        let token = &release.release_token;
        let device = Credentials {
            token: Some(token),
            user: None,
        };
        let seen = match client.send(&CheckIn, device) {
            Ok(seen) => checked(seen, release.device_id)?,
            Err(e) if e.is_unreachable() => {
                return self.offline_login(vault, user, OfflineReason::Unreachable, prompts)
            }
            Err(e) => return Err(e),
        };
        if seen
            .wipe_orders
            .iter()
            .any(|o| o.scope == coffer_protocol::device::WipeScope::Device)
        {
            return Err(wipe_as_ordered(vault, &seen.wipe_orders, &client, token));
        }
        let password = prompts
            .server_password(user)
            .ok_or(Error::Cancelled("server password"))?;
        let session = client
            .send(
                &LoginRequest {
                    user: user.to_owned(),
                    password,
                },
                Credentials::default(),
            )?
            .token;
        let released = client.send(
            &ReleaseEscrow,
            Credentials {
                token: Some(token),
                user: Some(&session),
            },
        );
        // The session has served its purpose either way.
        let _ = client.send(
            &Logout,
            Credentials {
                token: Some(&session),
                user: None,
            },
        );
        let released = released?;
        let escrow_text = Zeroizing::new(
            hex::decode(released.escrow_key.expose_secret())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(Error::EscrowMismatch)?,
        );
        let escrow = RecoveryKey::parse(&escrow_text).map_err(|_| Error::EscrowMismatch)?;
        let credential = Credential::RecoveryKey(&escrow);
        let now = self.now();
        let mut unlocked = match self.guarded(vault).unlock_managed_at(&credential, now) {
            Err(coffer_device::Error::WrongRecoveryKey) => return Err(Error::EscrowMismatch),
            other => other?,
        };
        // The check-in above was successful: the grace counts from it, so
        // it is recorded before the policy is enforced (a device that was
        // long offline is not wiped by the very login that reached the
        // server). Its one-user wipe orders are carried out now that the
        // vault is open (the server released nothing to a user whose own
        // wipe is pending).
        policy::record_check_in(&mut unlocked, seen.server_time)?;
        let mut unlocked = policy::enforce(unlocked, &credential, now, Grace::WipeOnly)?;
        for order in &seen.wipe_orders {
            remove_ordered_slot(&mut unlocked, order)?;
            acknowledge(&client, token, order.id)?;
        }
        let passphrase = loop {
            let passphrase = prompts
                .new_passphrase(user)
                .ok_or(Error::Cancelled("new passphrase"))?;
            match policy::check_passphrase_rules(&unlocked, &passphrase) {
                Ok(()) => break passphrase,
                Err(refused) if prompts.ask_again(&refused) => continue,
                Err(refused) => return Err(refused),
            }
        };
        let params = prompts.new_slot_kdf()?;
        let renewed = unlocked.slots().iter().any(|s| s.name == user);
        if renewed {
            unlocked.change_passphrase(Some(user), &passphrase, &params)?;
        } else {
            unlocked.add_passphrase_slot(user, &passphrase, &params)?;
        }
        Ok(Login::Online {
            slot: if renewed {
                SlotChange::Renewed
            } else {
                SlotChange::Added
            },
            vault: unlocked,
        })
    }

    fn offline_login(
        &self,
        vault: &Vault,
        user: &str,
        why: OfflineReason,
        prompts: &mut dyn LoginPrompts,
    ) -> Result<Login> {
        loop {
            match self.offline_try(vault, user, &why, prompts) {
                Err(
                    refused @ Error::NeedsOnlineLogin {
                        wrong_secret: true, ..
                    },
                ) if prompts.ask_again(&refused) => {}
                Ok(unlocked) => {
                    return Ok(Login::Offline {
                        why,
                        vault: unlocked,
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One offline try: the user's own slot, or a refusal.
    fn offline_try(
        &self,
        vault: &Vault,
        user: &str,
        why: &OfflineReason,
        prompts: &mut dyn LoginPrompts,
    ) -> Result<UnlockedVault> {
        let secret = prompts
            .offline_secret(user)
            .ok_or(Error::Cancelled("passphrase"))?;
        let needs_online = |wrong_secret| Error::NeedsOnlineLogin {
            user: user.to_owned(),
            why: why.to_string(),
            wrong_secret,
        };
        match self.unlock(vault, &secret) {
            Ok(unlocked) => {
                let opened = unlocked
                    .slots()
                    .into_iter()
                    .find(|s| s.index == unlocked.opened_slot())
                    .map(|s| s.name)
                    .unwrap_or_default();
                if opened != user {
                    return Err(needs_online(false));
                }
                Ok(unlocked)
            }
            Err(Error::Device(
                coffer_device::Error::WrongPassphrase | coffer_device::Error::WrongRecoveryKey,
            )) => Err(needs_online(true)),
            Err(e) => Err(e),
        }
    }
}
