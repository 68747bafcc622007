//! The device's side of the control plane, as commands: `coffer enroll`,
//! `check-in`, `login` and `deliver`. The behaviour is the device agent's
//! (`coffer_agent`); this module only gathers the inputs, prompts, and
//! words the reports. Nothing here decodes protocol JSON.

use coffer_agent::{Agent, Grace, Login, LoginPrompts, PolicyOutcome, Server, SlotChange, Trust};
use coffer_device::{KdfParams, Passphrase, UnlockedVault, Vault};
use coffer_protocol::WireSecret;
use serde_json::json;

use crate::cli::Global;
use crate::commands::Report;
use crate::exit::CliError;
use crate::input::Offered;

/// The agent the CLI works through, on the CLI's clock.
pub fn agent() -> Agent {
    Agent::new().with_clock(std::sync::Arc::new(now))
}

/// The time now: the system clock (in debug builds, `COFFER_TEST_NOW`, Unix
/// seconds, for tests of the offline grace; the vault's latest time seen
/// keeps a clock set back from helping).
pub fn now() -> std::time::SystemTime {
    #[cfg(debug_assertions)]
    if let Some(secs) = std::env::var("COFFER_TEST_NOW")
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
    {
        return std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    }
    std::time::SystemTime::now()
}

/// How the device trusts the server, from `--pin-sha256` or `--ca-cert`.
pub fn trust(pin: Option<&str>, ca_cert: Option<&std::path::Path>) -> Result<Trust, CliError> {
    match (pin, ca_cert) {
        (Some(pin), _) => Trust::parse_pin(pin).map_err(|_| {
            CliError::usage(
                "--pin-sha256 takes the certificate's SHA-256: 64 hex digits, colons allowed",
            )
        }),
        (None, Some(path)) => std::fs::read(path)
            .map(Trust::Ca)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display()))),
        (None, None) => Ok(Trust::System),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "device".into())
}

fn policy_json(outcome: &PolicyOutcome) -> serde_json::Value {
    match outcome {
        PolicyOutcome::Unchanged { version } => json!({"version": version, "updated": false}),
        PolicyOutcome::Updated { version } => json!({"version": version, "updated": true}),
        PolicyOutcome::Refused { held, why } => {
            json!({"version": held, "updated": false, "refused": why.to_string()})
        }
    }
}

/// `coffer enroll`: turns this vault into its organization's, keeping all
/// its data.
pub fn enroll(
    global: &Global,
    server: &str,
    code: Option<&str>,
    name: Option<&str>,
    trust: Trust,
) -> Result<Report, CliError> {
    let server = Server::new(server, trust)?;
    let vault = crate::commands::unlock(global)?;
    if vault.is_managed()? {
        return Err(coffer_agent::Error::AlreadyEnrolled.into());
    }
    let code = match code {
        Some(code) => WireSecret::new(code.to_owned()),
        None => crate::admin::password("Enrollment code: ", "COFFER_ENROLL_CODE")?.into(),
    };
    let name = name.map_or_else(
        || format!("{}@{}", vault.vault().name(), hostname()),
        str::to_owned,
    );
    let (enrolled, _vault) = agent().enroll(vault, &server, code, &name)?;
    let (device_id, org_id) = (enrolled.device_id, enrolled.organization_id);
    let escrow = coffer_agent::ESCROW_SLOT;
    Ok(Report {
        json: json!({
            "policy_version": enrolled.check_in.policy.version(),
            "enrolled": true,
            "server": server.url(),
            "device_id": device_id,
            "organization_id": org_id,
            "policy_key": enrolled.policy_key,
            "escrow_slot": escrow,
        }),
        text: format!(
            "Enrolled as device {device_id} of organization {org_id} at {}.\n\
             The organization's policy key is pinned; the server holds this vault's escrow key (slot \"{escrow}\").",
            server.url()
        ),
    })
}

/// After a rotation of an enrolled vault: what became of its escrow slot,
/// for the report.
pub fn after_rotation(vault: &mut UnlockedVault) -> Result<Option<String>, CliError> {
    use coffer_agent::EscrowAfterRotation as Escrow;
    Ok(match agent().after_rotation(vault)? {
        Escrow::NotEnrolled => None,
        Escrow::Deposited => {
            Some("A new escrow slot's key is deposited with the control plane.".into())
        }
        Escrow::Deferred(why) => Some(format!(
            "The new escrow slot's key could not be deposited ({why}): the next check-in does it."
        )),
    })
}

/// `coffer check-in`: reports to the control plane and does what it says.
pub fn check_in(global: &Global) -> Result<Report, CliError> {
    let vault = crate::commands::vault(global)?;
    let agent = agent();
    let (unlocked, offered) = crate::input::with_secret(global, |secret| {
        let bar = crate::commands::spinner(global, "Unlocking");
        // A check-in is the way out of the grace's block, not of its wipe.
        let unlocked = agent.unlock_with(&vault, secret, Grace::WipeOnly);
        bar.finish_and_clear();
        unlocked
    })?;
    let (report, checked) = agent.check_in(unlocked)?;
    // A new policy may ask more of passphrases than the one kept: say so
    // (the passphrase is at hand only now).
    let below_rules = match &offered {
        Offered::Passphrase(p) => coffer_agent::check_passphrase_rules(&checked, p).err(),
        _ => None,
    };
    let text = format!(
        "Checked in at server time {}{}{}; policy version {}.",
        crate::commands::unix_time_text(report.server_time),
        if report.removed_slots.is_empty() {
            String::new()
        } else {
            format!(
                "; removed the slots of {} as ordered",
                report.removed_slots.join(", ")
            )
        },
        match &report.policy {
            PolicyOutcome::Refused { why, .. } => format!("; a new policy was refused: {why}"),
            _ => String::new(),
        },
        report
            .policy
            .version()
            .map_or_else(|| "none".to_owned(), |v| v.to_string())
    );
    let text = match &below_rules {
        Some(why) => format!(
            "{text}\nYour passphrase is below the organization's rules ({why}): change it with 'coffer passwd'."
        ),
        None => text,
    };
    Ok(Report {
        json: json!({
            "passphrase_below_rules": below_rules.is_some(),
            "server_time": report.server_time,
            "revoked": report.revoked,
            "removed_slots": report.removed_slots,
            "escrow_renewed": report.escrow_renewed,
            "policy": policy_json(&report.policy),
        }),
        text,
    })
}

/// Whether a passphrase meets the held policy's rules.
pub fn check_passphrase_rules(
    vault: &UnlockedVault,
    passphrase: &Passphrase,
) -> Result<(), CliError> {
    coffer_agent::check_passphrase_rules(vault, passphrase).map_err(CliError::from)
}

/// Whether the vault's held policy refuses debuggers (before any unlock).
pub fn refuses_debugger(vault: &Vault) -> bool {
    agent().refuses_debugger(vault)
}

/// The prompts of `coffer login`, from the environment or the terminal;
/// the first failure is kept to be reported as it was.
struct Prompts<'a> {
    global: &'a Global,
    kdf: &'a crate::cli::KdfArgs,
    failed: Option<CliError>,
    /// Tries of the offline secret and of the new passphrase so far.
    tries: usize,
    /// The last offline secret was typed at the terminal.
    typed: bool,
}

impl Prompts<'_> {
    fn keep<T>(&mut self, result: Result<T, CliError>) -> Option<T> {
        result.map_err(|e| self.failed = Some(e)).ok()
    }
}

impl LoginPrompts for Prompts<'_> {
    fn server_password(&mut self, user: &str) -> Option<WireSecret> {
        let password = crate::admin::password(
            &format!("Server password for {user}: "),
            "COFFER_SERVER_PASSWORD",
        );
        self.keep(password).map(WireSecret::from)
    }

    fn new_passphrase(&mut self, user: &str) -> Option<Passphrase> {
        self.typed = crate::input::new_passphrase_is_typed(self.global);
        let passphrase = crate::input::new_passphrase(self.global, user);
        self.keep(passphrase)
    }

    fn new_slot_kdf(&mut self) -> coffer_device::Result<KdfParams> {
        match crate::commands::calibrate(self.global, self.kdf) {
            Ok(params) => Ok(params),
            Err(e) => {
                // The CLI's own error is what gets reported (kept above).
                self.failed = Some(e);
                Err(coffer_device::Error::InvalidKdfParams(
                    "see the reported error",
                ))
            }
        }
    }

    fn offline_secret(&mut self, _user: &str) -> Option<Offered> {
        let given = crate::input::given_secret(self.global);
        let given = self.keep(given)?;
        self.typed = given.typed;
        Some(given.secret)
    }

    fn ask_again(&mut self, refused: &coffer_agent::Error) -> bool {
        self.tries += 1;
        let again = self.typed && self.tries < crate::input::TRIES;
        if again {
            crate::input::tell(&format!("{refused}; try again."));
        }
        again
    }
}

/// `coffer login --user NAME`: online through escrow, or offline with the
/// user's own slot.
pub fn login(global: &Global, user: &str, kdf: &crate::cli::KdfArgs) -> Result<Report, CliError> {
    let vault = crate::commands::vault(global)?;
    let mut prompts = Prompts {
        global,
        kdf,
        failed: None,
        tries: 0,
        typed: false,
    };
    let login = agent().login(&vault, user, &mut prompts);
    let login = match (login, prompts.failed.take()) {
        (Err(_), Some(failed)) => return Err(failed),
        (result, _) => result?,
    };
    Ok(match login {
        Login::Online { slot, .. } => {
            let slot = match slot {
                SlotChange::Added => "added",
                SlotChange::Renewed => "renewed",
            };
            Report {
                json: json!({"user": user, "online": true, "slot": slot}),
                text: format!(
                    "Logged in online as {user}; {slot} your own slot on this device, so you can log in offline next time."
                ),
            }
        }
        Login::Offline { why, .. } => Report {
            json: json!({"user": user, "online": false}),
            text: format!("Logged in offline ({why})."),
        },
    })
}

/// `coffer deliver [FILE|-]`: queues the readings as one batch, then sends
/// every queued batch.
pub fn deliver(
    global: &Global,
    input: Option<&std::path::Path>,
    retries: u32,
    mqtt: bool,
) -> Result<Report, CliError> {
    let vault = crate::commands::unlock(global)?;
    let text = match input {
        None => String::new(),
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?;
            text
        }
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?,
    };
    let agent = agent();
    let readings = coffer_agent::parse_readings(&text)?;
    agent.queue_readings(&vault, readings)?;
    let report = if mqtt {
        agent.deliver_mqtt(vault, retries)?
    } else {
        agent.deliver(vault, retries)?
    };
    let (delivered, queued) = (report.delivered, report.queued);
    let mut json = json!({"delivered": delivered, "queued": queued});
    if mqtt {
        json["over_mqtt"] = json!(report.over_mqtt);
        json["fell_back"] = json!(report.fell_back);
    }
    let mut text = format!(
        "Delivered {delivered} batch(es); {queued} waiting in the vault's queue{}.",
        if queued > 0 {
            " for the next delivery"
        } else {
            ""
        }
    );
    if mqtt {
        text.push_str(&format!("\n{} over MQTT.", report.over_mqtt));
        if let Some(why) = &report.fell_back {
            text.push_str(&format!(" The rest went over HTTPS: {why}."));
        }
    }
    if !report.rejected.is_empty() {
        json["rejected"] = json!(report.rejected);
        text.push_str(&format!(
            "\n{} batch(es) refused by the server: {}",
            report.rejected.len(),
            report.rejected.join("; ")
        ));
    }
    Ok(Report { json, text })
}
