//! A check-in: report to the control plane and do what it says — wipe
//! orders first, then escrow, then a newer signed policy.

use coffer_device::UnlockedVault;
use coffer_protocol::device::{
    AcknowledgeWipe, CheckIn, CheckInAnswer, DevicePolicy, WipeOrder, WipeScope,
};
use coffer_protocol::policy::PolicyRefusal;
use coffer_protocol::{Endpoint, WireSecret};

use crate::enrollment::{key, number_setting, Enrollment};
use crate::error::{Error, Result, WipeCause, Wiped};
use crate::{deposit_new_escrow, policy, Agent, Client, Credentials};

/// What a check-in did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInReport {
    /// The server's time, Unix seconds.
    pub server_time: i64,
    /// Whether the device is revoked.
    pub revoked: bool,
    /// The users whose slots were removed by one-user wipe orders.
    pub removed_slots: Vec<String>,
    /// Whether a new escrow slot's key was deposited.
    pub escrow_renewed: bool,
    /// What became of the policy.
    pub policy: PolicyOutcome,
}

/// What a check-in did with the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// Nothing newer was announced.
    Unchanged {
        /// The version held.
        version: Option<i64>,
    },
    /// A newer policy was verified and is now held (and applied).
    Updated {
        /// Its version.
        version: i64,
    },
    /// A newer policy was refused; the last good one is kept.
    Refused {
        /// The version still held.
        held: Option<i64>,
        /// Why.
        why: PolicyRefusal,
    },
}

impl PolicyOutcome {
    /// The version held after the check-in.
    pub fn version(&self) -> Option<i64> {
        match self {
            PolicyOutcome::Unchanged { version } => *version,
            PolicyOutcome::Updated { version } => Some(*version),
            PolicyOutcome::Refused { held, .. } => *held,
        }
    }
}

/// The answer to a check-in, checked before anything acts on it.
pub(crate) fn checked(answer: CheckInAnswer, device_id: i64) -> Result<CheckInAnswer> {
    answer
        .check(device_id)
        .map_err(|problem| Error::BadAnswer {
            endpoint: CheckIn::PATH,
            problem: problem.to_string(),
        })?;
    Ok(answer)
}

/// Carries out a whole-device wipe: crypto-erase, then every order
/// acknowledged (the slots the others named went with the vault). The
/// result is [`Error::Wiped`] whatever the acknowledgements did: one that
/// failed is named, and the server keeps the order pending.
pub(crate) fn wipe_as_ordered(
    vault: &coffer_device::Vault,
    orders: &[WipeOrder],
    client: &Client,
    token: &WireSecret,
) -> Error {
    if let Err(e) = vault.wipe() {
        return e.into();
    }
    let unacknowledged = orders
        .iter()
        .filter(|order| {
            (0..3)
                .find_map(|_| acknowledge(client, token, order.id).ok())
                .is_none()
        })
        .map(|order| order.id)
        .collect();
    Error::Wiped(Wiped {
        vault: vault.name().to_owned(),
        cause: WipeCause::Ordered { unacknowledged },
    })
}

pub(crate) fn acknowledge(client: &Client, token: &WireSecret, order_id: i64) -> Result<()> {
    client.send(
        &AcknowledgeWipe { order_id },
        Credentials {
            token: Some(token),
            user: None,
        },
    )?;
    Ok(())
}

/// Carries out a one-user wipe order: that user's slot removed, if there.
pub(crate) fn remove_ordered_slot(
    vault: &mut UnlockedVault,
    order: &WipeOrder,
) -> Result<Option<String>> {
    if order.scope != WipeScope::User {
        return Ok(None);
    }
    match order.user.as_deref() {
        Some(user) if vault.slots().iter().any(|s| s.name == user) => {
            vault.remove_slot(user)?;
            Ok(Some(user.to_owned()))
        }
        _ => Ok(None),
    }
}

impl Agent {
    /// Checks in: reports to the control plane and does what it says —
    /// wipe orders first (a whole-device order is a crypto-erase, then the
    /// acknowledgement: [`Error::Wiped`]; a one-user order removes that
    /// user's slot), a new escrow slot if the server lost this device's,
    /// then a newer signed policy, verified against the pinned key (a bad
    /// signature or a downgrade is refused and the last good policy kept).
    /// Hands the vault back unless a wipe took it.
    pub fn check_in(&self, mut vault: UnlockedVault) -> Result<(CheckInReport, UnlockedVault)> {
        let enrollment = Enrollment::read(&vault)?;
        let client = self.client(&enrollment.server)?;
        let token = &enrollment.token;
        let credentials = Credentials {
            token: Some(token),
            user: None,
        };
        let seen = checked(client.send(&CheckIn, credentials)?, enrollment.device_id)?;
        policy::record_check_in(&mut vault, seen.server_time)?;
        if seen
            .wipe_orders
            .iter()
            .any(|o| o.scope == WipeScope::Device)
        {
            // The whole vault: crypto-erase first, then tell the server (the
            // token is still in memory).
            let handle = vault.vault().clone();
            drop(vault);
            return Err(wipe_as_ordered(&handle, &seen.wipe_orders, &client, token));
        }
        let mut removed = Vec::new();
        for order in &seen.wipe_orders {
            if let Some(user) = remove_ordered_slot(&mut vault, order)? {
                removed.push(user);
            }
            acknowledge(&client, token, order.id)?;
        }
        // The server lost this device's escrow key (a deposit that failed at
        // enrollment, or a whole-device wipe order that was then cancelled),
        // or holds one a rotation made stale: a new escrow slot, deposited.
        let mut escrow_renewed = false;
        let stale = vault.setting(key::ESCROW_STALE)?.is_some();
        if (!seen.escrow_present || stale) && !seen.revoked {
            deposit_new_escrow(&mut vault, &client, token)?;
            vault.set_setting(key::ESCROW_STALE, None)?;
            escrow_renewed = true;
        }
        let held = number_setting(&vault, key::POLICY_VERSION)?;
        let mut outcome = PolicyOutcome::Unchanged { version: held };
        if seen
            .policy_version
            .is_some_and(|v| held.is_none_or(|h| v > h))
        {
            let fetched = client.send(&DevicePolicy, credentials)?;
            match fetched.verify(&enrollment.policy_key, enrollment.organization_id, held) {
                Ok(document) => {
                    policy::apply(&mut vault, &document.rules)?;
                    self.set_debugger_hint(&vault, document.rules.refuse_debugger);
                    // The version last: a crash in between leaves the old
                    // version, so the next check-in fetches again.
                    for (key, value) in [
                        (key::POLICY_DOCUMENT, fetched.document.as_str()),
                        (key::POLICY_SIGNATURE, fetched.signature.as_str()),
                        (key::POLICY_VERSION, &document.version.to_string()),
                    ] {
                        vault.set_setting(key, Some(value.as_bytes()))?;
                    }
                    outcome = PolicyOutcome::Updated {
                        version: document.version,
                    };
                }
                Err(why) => outcome = PolicyOutcome::Refused { held, why },
            }
        }
        Ok((
            CheckInReport {
                server_time: seen.server_time,
                revoked: seen.revoked,
                removed_slots: removed,
                escrow_renewed,
                policy: outcome,
            },
            vault,
        ))
    }

    /// Records in the release file whether the held policy refuses
    /// debuggers.
    fn set_debugger_hint(&self, vault: &UnlockedVault, refuse: bool) {
        let dir = vault.vault().path();
        if let Ok(Some(mut file)) = crate::enrollment::ReleaseFile::read(dir) {
            if file.refuse_debugger != refuse {
                file.refuse_debugger = refuse;
                let _ = file.write(dir);
            }
        }
    }
}
