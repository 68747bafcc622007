//! One function per command: unlock if needed, call the library, report.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use coffer_device::rotate::RotateOptions;
use coffer_device::{
    KdfAlgorithm, KdfParams, Lockout, SlotInfo, SlotKind, Space, UnlockedVault, Vault,
};
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::cli::{AuditCommand, Global, InitArgs, KdfArgs, SlotCommand};
use crate::exit::CliError;
use crate::input::{self, Offered};

/// Prints a result as JSON or as text.
pub struct Report {
    pub json: Value,
    pub text: String,
}

pub fn space(global: &Global) -> Result<Space, CliError> {
    let root = match &global.space {
        Some(dir) => dir.clone(),
        None => Space::default_root().ok_or_else(|| {
            CliError::usage(
                "no data directory known for this user: pass --space DIR or set COFFER_SPACE",
            )
        })?,
    };
    Ok(Space::new(root))
}

/// A spinner on stderr while slow key derivation runs; silent when stderr is
/// not a terminal or output is JSON.
pub fn spinner(global: &Global, message: &str) -> ProgressBar {
    if global.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The vault the command line names, refusing a debugger if asked to (by
/// --refuse-debugger, or by the organization's policy).
pub fn vault(global: &Global) -> Result<Vault, CliError> {
    let vault = space(global)?.vault(&global.vault)?;
    let refuse = global.refuse_debugger || crate::control::refuses_debugger(&vault);
    Ok(vault.refuse_under_debugger(refuse))
}

/// Unlocks the vault, then enforces its organization's policy if it is
/// enrolled (offline grace, the KDF floor: docs/protocol.md).
pub fn unlock(global: &Global) -> Result<UnlockedVault, CliError> {
    // An unlock session ('coffer unlock') opens it without the KDF, unless
    // the command line names a secret of its own.
    #[cfg(unix)]
    if !global.recovery && global.recovery_key_file.is_none() && global.passphrase_file.is_none() {
        let vault = vault(global)?;
        if let Some(opened) = crate::control::agent().unlock_through_agent(&vault) {
            return Ok(opened?);
        }
    }
    Ok(unlock_offered(global)?.0)
}

/// [`unlock`], also handing back the secret that opened it.
pub fn unlock_offered(global: &Global) -> Result<(UnlockedVault, Offered), CliError> {
    let vault = vault(global)?;
    let agent = crate::control::agent();
    input::with_secret(global, |offered| {
        let bar = spinner(global, "Unlocking");
        let result = agent.unlock(&vault, offered);
        bar.finish_and_clear();
        result
    })
}

/// Warns on stderr when a new passphrase is guessable (zxcvbn's estimate,
/// with the user's and the vault's names counted as known): advice, not a
/// refusal, which is the organization's rules' to make.
pub fn warn_if_weak(global: &Global, passphrase: &coffer_device::Passphrase, who: &str) {
    let strength = coffer_agent::strength(passphrase, &[who, &global.vault]);
    if !strength.is_weak() {
        return;
    }
    let mut advice = strength.warning.clone().unwrap_or_default();
    for suggestion in &strength.suggestions {
        if !advice.is_empty() {
            advice.push(' ');
        }
        advice.push_str(suggestion);
    }
    eprintln!(
        "coffer: warning: this passphrase is weak (strength {}/4, about 10^{} guesses): someone with a copy of the disk could guess it. {advice}",
        strength.score, strength.guesses_log10
    );
}

pub fn calibrate(global: &Global, args: &KdfArgs) -> Result<KdfParams, CliError> {
    let algorithm: KdfAlgorithm = args.kdf.parse()?;
    let bar = spinner(
        global,
        &format!(
            "Calibrating {} for {} ms",
            algorithm.name(),
            args.kdf_time_ms
        ),
    );
    let params = KdfParams::calibrate(algorithm, Duration::from_millis(args.kdf_time_ms));
    bar.finish_and_clear();
    Ok(params?)
}

pub fn kdf_json(kind: &SlotKind) -> Value {
    match kind {
        SlotKind::Passphrase(KdfParams::Argon2id {
            memory_kib,
            iterations,
            parallelism,
        }) => {
            json!({"algorithm": "argon2id", "memory_kib": memory_kib, "iterations": iterations, "parallelism": parallelism})
        }
        SlotKind::Passphrase(KdfParams::Pbkdf2Sha256 { iterations }) => {
            json!({"algorithm": "pbkdf2-sha256", "iterations": iterations})
        }
        SlotKind::Passphrase(KdfParams::Scrypt { log_n, r, p }) => {
            json!({"algorithm": "scrypt", "log_n": log_n, "r": r, "p": p})
        }
        SlotKind::Recovery | SlotKind::Temporary => json!({"algorithm": "hkdf-sha256"}),
        _ => json!({"algorithm": "unknown"}),
    }
}

pub fn kdf_text(kind: &SlotKind) -> String {
    match kind {
        SlotKind::Passphrase(KdfParams::Argon2id {
            memory_kib,
            iterations,
            parallelism,
        }) => format!(
            "argon2id m={} MiB t={iterations} p={parallelism}",
            memory_kib / 1024
        ),
        SlotKind::Passphrase(KdfParams::Pbkdf2Sha256 { iterations }) => {
            format!("pbkdf2-sha256 {iterations} iterations")
        }
        SlotKind::Passphrase(KdfParams::Scrypt { log_n, r, p }) => {
            format!("scrypt N=2^{log_n} r={r} p={p}")
        }
        SlotKind::Recovery | SlotKind::Temporary => "hkdf-sha256 (160-bit key)".into(),
        _ => "unknown".into(),
    }
}

/// [`time_text`] of Unix seconds (a time from a server or a file).
pub(crate) fn unix_time_text(secs: i64) -> String {
    let t = u64::try_from(secs).map_or(std::time::UNIX_EPOCH, |s| {
        std::time::UNIX_EPOCH
            .checked_add(Duration::from_secs(s))
            .unwrap_or(std::time::UNIX_EPOCH)
    });
    time_text(t)
}

pub(crate) fn time_text(t: SystemTime) -> String {
    // RFC 3339 stops at year 9999; stored times come from files.
    let last = std::time::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_seconds(t.min(last)).to_string()
}

fn slot_json(slot: &SlotInfo) -> Value {
    json!({
        "index": slot.index,
        "name": slot.name,
        "kind": slot.kind.name(),
        "kdf": kdf_json(&slot.kind),
        "created_at": time_text(slot.created_at),
        "expires_at": slot.expires_at.map(time_text),
        "single_use": slot.single_use,
    })
}

fn default_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "owner".into())
}

pub fn init(global: &Global, args: &InitArgs) -> Result<Report, CliError> {
    let space = space(global)?;
    let name = args.name.clone().unwrap_or_else(default_user);
    coffer_device::space::validate_vault_name(&global.vault)?;
    // Checked before the passphrase is asked for; a wiped vault's name is
    // free again (create_vault replaces it).
    if let Ok(vault) = space.vault(&global.vault) {
        if !matches!(vault.info(), Err(coffer_device::Error::Wiped { .. })) {
            return Err(coffer_device::Error::VaultExists {
                name: global.vault.clone(),
            }
            .into());
        }
    }
    let passphrase = input::initial_passphrase(global, &name)?;
    warn_if_weak(global, &passphrase, &name);
    let kdf = calibrate(global, &args.kdf)?;
    let vault = space.create_vault(&global.vault, &name, &passphrase, &kdf)?;
    let slot = &vault.slots()[0];
    Ok(Report {
        json: json!({
            "vault": global.vault,
            "path": vault.vault().path(),
            "vault_id": vault.vault_id().to_string(),
            "slot": slot_json(slot),
        }),
        text: format!(
            "Created vault '{}' in {}\n  slot {} '{}': {}\nNext: 'coffer recovery-key' adds a recovery key; 'coffer slot add NAME' adds another user.",
            global.vault,
            vault.vault().path().display(),
            slot.index,
            slot.name,
            kdf_text(&slot.kind)
        ),
    })
}

pub fn info(global: &Global) -> Result<Report, CliError> {
    let info = vault(global)?.info()?;
    let slots: Vec<Value> = info
        .slots
        .iter()
        .map(|(i, kind)| json!({"index": i, "kind": kind.name(), "kdf": kdf_json(kind)}))
        .collect();
    let mut text = format!(
        "vault       {}\npath        {}\nformat      v{}\nvault id    {}\nlockout     {} ({} failed attempts now)\nslots       {} of {} used (names are encrypted: 'coffer slot list')\n",
        info.name,
        info.path.display(),
        info.format_version,
        info.vault_id,
        lockout_text(info.lockout),
        info.failed_attempts,
        info.slots.len(),
        info.slot_capacity
    );
    for (i, kind) in &info.slots {
        text.push_str(&format!(
            "  {i:>2}  {:<10}  {}\n",
            kind.name(),
            kdf_text(kind)
        ));
    }
    Ok(Report {
        json: json!({
            "vault": info.name,
            "path": info.path,
            "format_version": info.format_version,
            "vault_id": info.vault_id.to_string(),
            "slot_capacity": info.slot_capacity,
            "lockout": lockout_json(info.lockout),
            "failed_attempts": info.failed_attempts,
            "slots": slots,
        }),
        text: text.trim_end().to_owned(),
    })
}

pub fn vaults(global: &Global) -> Result<Report, CliError> {
    let space = space(global)?;
    let names = space.vault_names()?;
    // A wiped vault keeps its name (and its erased header) until `coffer
    // init` makes a new vault under it: said so, not listed as if usable.
    let wiped: Vec<&String> = names
        .iter()
        .filter(|name| {
            matches!(
                space.vault(name).and_then(|v| v.info()),
                Err(coffer_device::Error::Wiped { .. })
            )
        })
        .collect();
    let text = if names.is_empty() {
        format!(
            "No vaults in {} ('coffer init' creates one)",
            space.root().display()
        )
    } else {
        names
            .iter()
            .map(|name| {
                if wiped.contains(&name) {
                    format!("{name} (wiped: `coffer --vault {name} init` makes it again)")
                } else {
                    name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(Report {
        json: json!({"space": space.root(), "vaults": names, "wiped": wiped}),
        text,
    })
}

pub fn slot(global: &Global, command: &SlotCommand) -> Result<Report, CliError> {
    match command {
        SlotCommand::Add { name, kdf } => {
            let mut vault = unlock(global)?;
            let passphrase = input::new_passphrase(global, name)?;
            crate::control::check_passphrase_rules(&vault, &passphrase)?;
            warn_if_weak(global, &passphrase, name);
            let params = calibrate(global, kdf)?;
            let slot = vault.add_passphrase_slot(name, &passphrase, &params)?;
            Ok(Report {
                json: json!({"added": slot_json(&slot)}),
                text: format!(
                    "Added slot {} '{}': {}",
                    slot.index,
                    slot.name,
                    kdf_text(&slot.kind)
                ),
            })
        }
        SlotCommand::List => {
            let vault = unlock(global)?;
            let slots = vault.slots();
            let mut text = format!(
                "{:>3}  {:<24} {:<10} {:<28} {}\n",
                "#", "NAME", "KIND", "CREATED", "KDF"
            );
            for s in &slots {
                let mark = if s.index == vault.opened_slot() {
                    "*"
                } else {
                    " "
                };
                text.push_str(&format!(
                    "{:>2}{mark}  {:<24} {:<10} {:<28} {}{}\n",
                    s.index,
                    s.name,
                    s.kind.name(),
                    time_text(s.created_at),
                    kdf_text(&s.kind),
                    s.expires_at
                        .map(|t| format!(
                            ", expires {}{}",
                            time_text(t),
                            if s.single_use { ", single use" } else { "" }
                        ))
                        .unwrap_or_default()
                ));
            }
            text.push_str("(* the slot that opened the vault)");
            Ok(Report {
                json: json!({
                    "vault": global.vault,
                    "opened_slot": vault.opened_slot(),
                    "slots": slots.iter().map(slot_json).collect::<Vec<_>>(),
                }),
                text,
            })
        }
        SlotCommand::Remove { name } => {
            let mut vault = unlock(global)?;
            vault.remove_slot(name)?;
            Ok(Report {
                json: json!({"removed": name}),
                text: format!(
                    "Removed slot '{name}'. Its secret no longer opens this vault; a copy of the \
                     header taken earlier still would until the vault key is rotated."
                ),
            })
        }
    }
}

pub fn lockout(
    global: &Global,
    max: Option<u16>,
    then: &str,
    off: bool,
) -> Result<Report, CliError> {
    let mut vault = unlock(global)?;
    let setting = match (off, max) {
        (true, _) | (false, None) => Lockout::Off,
        (false, Some(n)) if then == "wipe" => Lockout::Wipe(n),
        (false, Some(n)) => Lockout::Lock(n),
    };
    vault.set_lockout(setting)?;
    Ok(Report {
        json: json!({"lockout": lockout_json(setting)}),
        text: format!("Lockout: {}", lockout_text(setting)),
    })
}

pub fn lockout_json(l: Lockout) -> Value {
    match l {
        Lockout::Off => json!({"action": "off"}),
        Lockout::Lock(n) => json!({"action": "lock", "max_failures": n}),
        Lockout::Wipe(n) => json!({"action": "wipe", "max_failures": n}),
        _ => json!({"action": "unknown"}),
    }
}

pub fn lockout_text(l: Lockout) -> String {
    match l {
        Lockout::Off => "off (back-off between attempts only)".into(),
        Lockout::Lock(n) => {
            format!("lock after {n} failed attempts (a recovery or temporary key opens it)")
        }
        Lockout::Wipe(n) => format!("wipe after {n} failed attempts"),
        _ => "unknown".into(),
    }
}

pub fn wipe(global: &Global, yes: bool) -> Result<Report, CliError> {
    let vault = space(global)?.vault(&global.vault)?;
    if !yes {
        let question = format!(
            "This destroys every key of vault '{}' and deletes all its data. Type the vault's name to confirm: ",
            global.vault
        );
        if !input::confirm(
            &question,
            &global.vault,
            "wiping needs --yes when not run on a terminal",
        )? {
            return Err(CliError::usage("not confirmed; nothing was wiped"));
        }
    }
    vault.wipe()?;
    Ok(Report {
        json: json!({"wiped": global.vault}),
        text: format!(
            "Wiped vault '{}': every key slot destroyed, all data deleted.",
            global.vault
        ),
    })
}

pub fn temp_key(
    global: &Global,
    name: &str,
    expires: Duration,
    single_use: bool,
) -> Result<Report, CliError> {
    const LONGEST: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
    if expires > LONGEST {
        return Err(CliError::usage("a temporary key may last at most 10 years"));
    }
    let mut vault = unlock(global)?;
    let until = SystemTime::now()
        .checked_add(expires)
        .ok_or_else(|| CliError::usage("that expiry is out of range"))?;
    let (slot, key) = vault.add_temporary_slot(name, until, single_use)?;
    let shown = key.display();
    Ok(Report {
        json: json!({"added": slot_json(&slot), "temporary_key": shown.expose_secret()}),
        text: format!(
            "Added temporary slot {} '{}', valid until {}{}. The key — shown this once:\n\n    {}\n\nOpen the vault with it: coffer --recovery verify",
            slot.index,
            slot.name,
            time_text(until),
            if single_use { ", for one unlock" } else { "" },
            shown.expose_secret()
        ),
    })
}

pub fn passwd(global: &Global, slot: Option<&str>, kdf: &KdfArgs) -> Result<Report, CliError> {
    let mut vault = unlock(global)?;
    let opened = vault
        .slots()
        .into_iter()
        .find(|s| s.index == vault.opened_slot())
        .map(|s| s.name)
        .unwrap_or_default();
    let who = slot.unwrap_or(&opened).to_owned();
    let passphrase = input::new_passphrase(global, &who)?;
    crate::control::check_passphrase_rules(&vault, &passphrase)?;
    warn_if_weak(global, &passphrase, &who);
    let params = calibrate(global, kdf)?;
    let changed = vault.change_passphrase(slot, &passphrase, &params)?;
    Ok(Report {
        json: json!({"changed": slot_json(&changed)}),
        text: format!(
            "Changed the passphrase of slot {} '{}' ({}). The old passphrase no longer opens this vault's header (copies taken before still would).",
            changed.index,
            changed.name,
            kdf_text(&changed.kind)
        ),
    })
}

pub fn recovery_key(global: &Global, name: &str) -> Result<Report, CliError> {
    let mut vault = unlock(global)?;
    let (slot, key) = vault.add_recovery_slot(name)?;
    let shown = key.display();
    Ok(Report {
        json: json!({"added": slot_json(&slot), "recovery_key": shown.expose_secret()}),
        text: format!(
            "Added recovery slot {} '{}'. Your recovery key — shown this once, store it offline:\n\n    {}\n\nOpen the vault with it: coffer --recovery verify",
            slot.index,
            slot.name,
            shown.expose_secret()
        ),
    })
}

/// `coffer verify --deep`: the whole vault read and checked; exit 20 when
/// anything is found.
pub fn verify_deep(global: &Global) -> Result<(Report, Option<crate::exit::ExitCode>), CliError> {
    let vault = unlock(global)?;
    let mut bar: Option<ProgressBar> = None;
    let report = vault.check(&mut |p| {
        bar.get_or_insert_with(|| crate::stores::byte_bar(global, Some(p.total), "Checking"))
            .set_position(p.done);
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    let problems: Vec<Value> = report
        .problems
        .iter()
        .map(|p| json!({"kind": p.kind.code(), "damage": p.kind.is_damage(), "place": p.place, "detail": p.detail}))
        .collect();
    let read = format!(
        "{} database(s), {} stored file(s), {} audit entries; {} bytes read",
        report.databases, report.files, report.audit_entries, report.bytes
    );
    let text = if report.is_clean() {
        format!("OK: vault '{}' checks out: {read}.", global.vault)
    } else {
        let mut text = format!(
            "PROBLEMS: vault '{}' has {} problem(s) ({read}):",
            global.vault,
            report.problems.len()
        );
        for p in &report.problems {
            text.push_str(&format!("\n  {}: {}: {}", p.kind.code(), p.place, p.detail));
        }
        text
    };
    let exit = (!report.is_clean()).then_some(crate::exit::ExitCode::CheckFailed);
    Ok((
        Report {
            json: json!({
                "vault": global.vault,
                "clean": report.is_clean(),
                "databases": report.databases,
                "files": report.files,
                "audit_entries": report.audit_entries,
                "bytes": report.bytes,
                "problems": problems,
            }),
            text,
        },
        exit,
    ))
}

pub fn verify(global: &Global) -> Result<Report, CliError> {
    // The secret itself is what is checked: never an unlock session.
    let vault = unlock_offered(global)?.0;
    let slot = vault
        .slots()
        .into_iter()
        .find(|s| s.index == vault.opened_slot())
        .ok_or_else(|| {
            CliError::other("the slot that opened the vault is missing from its header")
        })?;
    let hardening = coffer_device::hardening::status();
    let memory = if hardening.keys_not_locked == 0 {
        format!("{} key(s) pinned in RAM (mlock)", hardening.keys_locked)
    } else {
        format!(
            "{} key(s) could not be pinned in RAM (RLIMIT_MEMLOCK reached, or no mlock here): they could reach swap",
            hardening.keys_not_locked
        )
    };
    Ok(Report {
        json: json!({
            "vault": global.vault,
            "authentic": true,
            "opened_slot": slot_json(&slot),
            "hardening": {
                "core_dumps_disabled": hardening.core_dumps_disabled,
                "not_dumpable": hardening.not_dumpable,
                "keys_locked": hardening.keys_locked,
                "keys_not_locked": hardening.keys_not_locked,
                "tracer_pid": hardening.tracer_pid,
            },
        }),
        text: format!(
            "OK: slot {} '{}' opens vault '{}', and the header is authentic.\nProcess: core dumps {}, {}; {}.",
            slot.index,
            slot.name,
            global.vault,
            if hardening.core_dumps_disabled { "off" } else { "NOT off" },
            if hardening.not_dumpable { "memory not readable by other processes" } else { "memory readable by same-user processes" },
            memory
        ),
    })
}

pub fn rotate(
    global: &Global,
    new_recovery_key: Option<&str>,
    reset_keys: Option<Duration>,
    yes: bool,
) -> Result<Report, CliError> {
    // An enrolled vault's policy holds here too (offline grace, KDF floor).
    let (mut vault, offered) = unlock_offered(global)?;
    let credential = offered.credential();
    let slots = vault.slots();
    let opener = slots
        .iter()
        .find(|s| s.index == vault.opened_slot())
        .map(|s| s.name.clone())
        .ok_or_else(|| {
            CliError::other("the slot that opened the vault is missing from its header")
        })?;
    let losing: Vec<String> = slots
        .iter()
        .filter(|s| s.name != opener)
        .map(|s| format!("{} ({})", s.name, s.kind.name()))
        .collect();
    if !yes && !losing.is_empty() {
        let recovery = match (new_recovery_key, reset_keys) {
            (None, None) => " No recovery key will open it afterwards: add --new-recovery-key (or --reset-keys) to give one.",
            _ => "",
        };
        let question = format!(
            "Rotating vault '{}' keeps only your slot ({opener}). These slots will no longer open it: {}.{recovery}\nType the vault's name to rotate: ",
            global.vault,
            losing.join(", ")
        );
        let hint = format!(
            "rotating retires {} slot(s) ({}): pass --yes when not on a terminal",
            losing.len(),
            losing.join(", ")
        );
        if !input::confirm(&question, &global.vault, &hint)? {
            return Err(CliError::usage("not confirmed; nothing was rotated"));
        }
    }
    let mut options = RotateOptions::default();
    if let Some(name) = new_recovery_key {
        options = options.with_recovery_slot(name);
    }
    if let Some(valid) = reset_keys {
        let until = SystemTime::now()
            .checked_add(valid)
            .ok_or_else(|| CliError::usage("that duration is out of range"))?;
        options = options.with_reset_keys_until(until);
    }
    // The total is known once the rotation has looked at the stores: the
    // bar (bytes, rate, ETA; on a terminal only) starts with the first report.
    let mut bar: Option<indicatif::ProgressBar> = None;
    let report = vault.rotate(&[(opener.as_str(), credential)], &options, &mut |p| {
        bar.get_or_insert_with(|| crate::stores::byte_bar(global, Some(p.total), "Re-encrypting"))
            .set_position(p.done);
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    let recovery = report
        .recovery_key
        .as_ref()
        .map(|(name, key)| (name.clone(), key.display()));
    let resets: Vec<(String, _)> = report
        .reset_keys
        .iter()
        .map(|(name, key)| (name.clone(), key.display()))
        .collect();
    let mut text = format!(
        "Rotated vault '{}' to a new key: {} database(s) and {} file(s) re-encrypted ({} bytes).\nKept: {}.",
        global.vault,
        report.databases,
        report.files,
        report.bytes,
        report.kept.join(", ")
    );
    if !report.retired.is_empty() {
        text.push_str(&format!(
            "\nRetired: {} (their secrets no longer open this vault).",
            report.retired.join(", ")
        ));
    }
    if let Some((name, key)) = &recovery {
        text.push_str(&format!(
            "\nNew recovery slot '{name}'. Its key — shown this once, store it offline:\n\n    {}\n",
            key.expose_secret()
        ));
    }
    // An enrolled vault's escrow slot was retired with the rest: a new one,
    // deposited (or, offline, at the next check-in).
    let escrow = crate::control::after_rotation(&mut vault)?;
    if let Some(note) = &escrow {
        text.push_str(&format!("\n{note}"));
    }
    if !resets.is_empty() {
        text.push_str("\nSingle-use reset keys — hand each to its user, who runs 'coffer --recovery slot add NAME':\n");
        for (name, key) in &resets {
            text.push_str(&format!("\n    {name}: {}", key.expose_secret()));
        }
        text.push('\n');
    }
    Ok(Report {
        json: json!({
            "vault": global.vault,
            "kept": report.kept,
            "retired": report.retired,
            "databases": report.databases,
            "files": report.files,
            "bytes": report.bytes,
            "escrow": escrow,
            "recovery_key": recovery.as_ref().map(|(name, key)| json!({"slot": name, "key": key.expose_secret()})),
            "reset_keys": resets.iter().map(|(name, key)| json!({"slot": name, "key": key.expose_secret()})).collect::<Vec<_>>(),
        }),
        text,
    })
}

pub fn audit(global: &Global, command: &AuditCommand) -> Result<Report, CliError> {
    let vault = unlock(global)?;
    let trail = vault.audit()?;
    match command {
        AuditCommand::Verify => {
            if let Some(problem) = &trail.problem {
                return Err(CliError::audit_tampered(problem));
            }
            Ok(Report {
                json: json!({"vault": global.vault, "intact": true, "entries": trail.entries.len()}),
                text: format!(
                    "OK: the audit log of vault '{}' holds {} entries, chained and anchored, none altered, missing, reordered or cut.",
                    global.vault,
                    trail.entries.len()
                ),
            })
        }
        AuditCommand::List { last } => {
            let skip = last.map_or(0, |n| trail.entries.len().saturating_sub(n));
            let shown = &trail.entries[skip..];
            let mut text = String::new();
            for entry in shown {
                let details = match &entry.details {
                    Value::Object(map) if map.is_empty() => String::new(),
                    other => other.to_string(),
                };
                text.push_str(&format!(
                    "{:>5}  {}  {:<24} {}\n",
                    entry.seq,
                    time_text(entry.at),
                    entry.event,
                    details
                ));
            }
            if let Some(problem) = &trail.problem {
                text.push_str(&format!(
                    "WARNING: the log fails its check after these entries: {problem}. Run 'coffer audit verify'.\n"
                ));
            }
            Ok(Report {
                json: json!({
                    "vault": global.vault,
                    "entries": shown.iter().map(|e| json!({
                        "seq": e.seq,
                        "at": e.at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                        "event": e.event,
                        "details": e.details,
                    })).collect::<Vec<_>>(),
                    "problem": trail.problem.as_ref().map(ToString::to_string),
                }),
                text: text.trim_end().to_owned(),
            })
        }
    }
}
