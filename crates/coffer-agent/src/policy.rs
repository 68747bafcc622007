//! The organization's policy on the device: what a verified policy sets in
//! the vault, and what is enforced at every unlock (docs/protocol.md,
//! "What the device enforces of a held policy"). Policy evaluation lives
//! here and nowhere else.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_device::{
    Capabilities, Capability, Credential, KdfParams, Lockout, Passphrase, SlotKind, UnlockedVault,
};
use coffer_protocol::policy::{Document, FailedAction, Rules};

use crate::enrollment::{key, number_setting};
use crate::error::{Error, Result, WipeCause, Wiped};

/// The verified policy the vault holds, if any (it was verified before it
/// was stored; a damaged copy counts as none, and the next check-in
/// fetches it again).
pub fn held_policy(vault: &UnlockedVault) -> Result<Option<Document>> {
    Ok(vault
        .setting(key::POLICY_DOCUMENT)?
        .and_then(|d| serde_json::from_slice(&d).ok()))
}

/// How much of the offline grace an unlock is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    /// Block, and wipe: every ordinary unlock.
    Full,
    /// Wipe only: a check-in is how a blocked device gets back.
    WipeOnly,
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What a verified policy sets in the vault itself: the failed-attempt
/// limit and its action, and each app's capabilities (the app `*` for
/// apps not named).
pub(crate) fn apply(vault: &mut UnlockedVault, rules: &Rules) -> Result<()> {
    let limit = u16::try_from(rules.max_failed_attempts).unwrap_or(u16::MAX);
    let lockout = match (limit, rules.on_max_failed) {
        (0, _) => Lockout::Off,
        (n, FailedAction::Lock) => Lockout::Lock(n),
        (n, FailedAction::Wipe) => Lockout::Wipe(n),
    };
    if vault.lockout() != lockout {
        vault.set_lockout(lockout)?;
    }
    for app in vault.apps()? {
        let names = rules
            .apps
            .get(&app.name)
            .or_else(|| rules.apps.get("*"))
            .cloned()
            .unwrap_or_default();
        let mut capabilities = Capabilities::none();
        for (name, capability) in [
            ("sql", Capability::Sql),
            ("kv", Capability::Kv),
            ("records", Capability::Records),
            ("files", Capability::Files),
            ("export", Capability::Export),
        ] {
            if names.iter().any(|n| n == name) {
                capabilities = capabilities.with(capability);
            }
        }
        if app.capabilities != capabilities {
            vault.set_app_capabilities(&app.name, capabilities)?;
        }
    }
    Ok(())
}

/// Records a successful check-in: the grace counts from the server's time,
/// which also becomes the vault's latest time seen (so a device clock that
/// ran ahead, set so on purpose or not, neither stretches the grace nor
/// blocks the device once it has checked in).
pub(crate) fn record_check_in(vault: &mut UnlockedVault, server_time: i64) -> Result<()> {
    vault.set_setting(key::LAST_CHECK_IN, Some(server_time.to_string().as_bytes()))?;
    let trusted = UNIX_EPOCH + Duration::from_secs(u64::try_from(server_time).unwrap_or(0));
    vault.set_trusted_time(trusted)?;
    Ok(())
}

/// The held policy enforced on a vault just unlocked: past the offline
/// grace's days without a check-in the vault wipes itself, past its hours
/// it refuses (unless `grace` is [`Grace::WipeOnly`]); a debugger is
/// refused; the idle lock, lockout and capabilities are set; a passphrase
/// slot below the KDF floor is re-derived with the floor.
pub(crate) fn enforce(
    vault: UnlockedVault,
    credential: &Credential<'_>,
    now: SystemTime,
    grace: Grace,
) -> Result<UnlockedVault> {
    let passphrase = match credential {
        Credential::Passphrase(passphrase) => Some(*passphrase),
        _ => None,
    };
    enforce_with(vault, passphrase, now, grace)
}

/// [`enforce`] for a vault an unlock agent opened: no secret, so the KDF
/// floor waits for the next unlock with the passphrase.
pub(crate) fn enforce_without_secret(
    vault: UnlockedVault,
    now: SystemTime,
) -> Result<UnlockedVault> {
    enforce_with(vault, None, now, Grace::Full)
}

fn enforce_with(
    mut vault: UnlockedVault,
    passphrase: Option<&Passphrase>,
    now: SystemTime,
    grace: Grace,
) -> Result<UnlockedVault> {
    let Some(policy) = held_policy(&vault)? else {
        return Ok(vault);
    };
    let last = number_setting(&vault, key::LAST_CHECK_IN)?.unwrap_or(0);
    let now = unix(now).max(unix(vault.latest_time_seen()));
    let elapsed = now.saturating_sub(last);
    let offline = &policy.rules.offline;
    if offline.wipe_after_days > 0 && elapsed > i64::from(offline.wipe_after_days) * 86_400 {
        let handle = vault.vault().clone();
        drop(vault);
        handle.wipe()?;
        return Err(Error::Wiped(Wiped {
            vault: handle.name().to_owned(),
            cause: WipeCause::OfflineTooLong {
                days: elapsed / 86_400,
                allowed: offline.wipe_after_days,
            },
        }));
    }
    if grace == Grace::Full
        && offline.block_after_hours > 0
        && elapsed > i64::from(offline.block_after_hours) * 3600
    {
        return Err(Error::CheckInRequired {
            hours: elapsed / 3600,
            allowed: offline.block_after_hours,
        });
    }
    // A debugger: refused, the key forgotten (the release file's hint
    // refuses it before the KDF from then on).
    if policy.rules.refuse_debugger {
        if let Some(pid) = coffer_device::hardening::status().tracer_pid {
            drop(vault);
            return Err(coffer_device::Error::DebuggerAttached { pid }.into());
        }
    }
    if policy.rules.idle_lock_secs > 0 {
        vault.set_idle_timeout(Some(Duration::from_secs(u64::from(
            policy.rules.idle_lock_secs,
        ))));
    }
    // The policy's lockout and capabilities hold at every unlock: a local
    // change (a lockout turned off, an app added with more) does not
    // outlive the next one. Best effort: a vault opened by a temporary key
    // may not change them, and is not refused for it.
    let _ = apply(&mut vault, &policy.rules);
    if let Some(passphrase) = passphrase {
        raise_to_kdf_floor(&mut vault, passphrase, &policy.rules)?;
    }
    Ok(vault)
}

/// Re-derives the opened Argon2id slot if it is below the floor: each
/// parameter raised to the floor, none lowered. PBKDF2 and scrypt slots
/// (kept for compliance) are left as they are: the floor is Argon2id's.
fn raise_to_kdf_floor(
    vault: &mut UnlockedVault,
    passphrase: &Passphrase,
    rules: &Rules,
) -> Result<()> {
    let floor = &rules.min_kdf;
    let opened = vault
        .slots()
        .into_iter()
        .find(|s| s.index == vault.opened_slot());
    if let Some(slot) = opened {
        if let SlotKind::Passphrase(KdfParams::Argon2id {
            memory_kib,
            iterations,
            parallelism,
        }) = slot.kind
        {
            if memory_kib < floor.memory_kib || iterations < floor.iterations {
                let stronger = KdfParams::Argon2id {
                    memory_kib: memory_kib.max(floor.memory_kib),
                    iterations: iterations.max(floor.iterations),
                    parallelism: parallelism.max(floor.parallelism),
                };
                vault.change_passphrase(Some(&slot.name), passphrase, &stronger)?;
            }
        }
    }
    Ok(())
}

/// Whether a passphrase meets the held policy's rules (none held: any).
pub fn check_passphrase_rules(vault: &UnlockedVault, passphrase: &Passphrase) -> Result<()> {
    let Some(policy) = held_policy(vault)? else {
        return Ok(());
    };
    let text = passphrase.expose_secret();
    let rules = &policy.rules.passphrase;
    let classes = [
        text.chars().any(char::is_lowercase),
        text.chars().any(char::is_uppercase),
        text.chars().any(|c| c.is_ascii_digit()),
        text.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if text.chars().count() < rules.min_length as usize || classes < rules.min_classes as usize {
        return Err(Error::PassphraseTooWeak {
            version: policy.version,
            min_length: rules.min_length,
            min_classes: rules.min_classes,
        });
    }
    Ok(())
}
