//! A minimal field app on `coffer-agent`: a shared tablet whose vault is
//! managed by the organization's control plane (`coffer serve`).
//!
//! Each step below is one thing the app does, written only against the
//! public API of `coffer-agent`, `coffer-device` and `coffer-protocol`:
//!
//! 1. [`create_vault`]: a vault for the person who sets the tablet up, with
//!    the app `cases`;
//! 2. [`enroll`]: joins the control plane (its URL, a certificate pin or a
//!    CA file, a one-time enrollment code);
//! 3. [`log_in`]: a field worker logs in. Online when the control plane
//!    answers: their server password releases the escrow key, and their own
//!    slot on this tablet is added under the passphrase they choose. Offline
//!    when it cannot be reached: only their own slot opens the vault (so the
//!    first login of a user must be online);
//! 4. [`write_case`], [`read_case`]: a record and its photo in `cases`,
//!    under the worker's own slot (no network needed);
//! 5. [`deliver`]: readings queued in the vault, then delivered (they stay
//!    queued while the server cannot be reached);
//! 6. [`check_in`]: does what the control plane orders; a remote wipe comes
//!    back as `Err(coffer_agent::Error::Wiped(..))`, the vault already
//!    crypto-erased.
//!
//! `crates/coffer-cli/tests/field_app.rs` drives these steps against a real
//! `coffer serve` process (and shows the offline login by stopping it).
//! `main` runs them, configured by environment variables: the first run
//! sets the tablet up and enrolls it; later runs log in (offline if the
//! server is down) and work; a run after an admin ordered a wipe carries it
//! out (at the login's or a check-in's contact with the server), and the
//! run after that sets up again with a new code.
//!
//! ```text
//! FIELD_SPACE=/tmp/tablet FIELD_SERVER=https://127.0.0.1:8443 \
//! FIELD_PIN=<tls_sha256 that coffer serve --dev-tls printed> FIELD_CODE=<enrollment code> \
//! FIELD_OWNER_PASSPHRASE=... FIELD_USER=carol FIELD_SERVER_PASSWORD=... FIELD_PASSPHRASE=... \
//! cargo run -p coffer-agent --example field_app
//! ```
//!
//! (`FIELD_CA_FILE=cert.pem` instead of `FIELD_PIN`; optional `FIELD_OWNER`,
//! `FIELD_DEVICE_NAME`, `FIELD_READINGS`. Secrets in the environment are for
//! a demonstration only: a real app asks the person at the tablet.)

use std::path::PathBuf;

use coffer_agent::{
    Agent, CheckInReport, DeliveryReport, Enrolled, Login, LoginPrompts, OfflineReason, Server,
    SlotChange, Trust, UnlockSecret,
};
use coffer_device::{Capabilities, KdfParams, Passphrase, Space, UnlockedVault, Vault};
use coffer_protocol::data::Reading;
use coffer_protocol::WireSecret;
use serde_json::{json, Value};

/// The vault of the tablet.
pub const VAULT: &str = "field";
/// The app that keeps the cases.
pub const APP: &str = "cases";
/// The record collection of the cases.
pub const CASES: &str = "cases";

/// What the field app needs to know.
#[derive(Clone)]
pub struct Config {
    /// The space directory: where the tablet keeps its vaults.
    pub space: PathBuf,
    /// Who sets the tablet up (the vault's first slot).
    pub owner: String,
    /// Their passphrase.
    pub owner_passphrase: String,
    /// The control plane's URL.
    pub server: String,
    /// How its certificate is trusted: `Trust::parse_pin(..)` or `Trust::Ca(pem)`.
    pub trust: Trust,
    /// A one-time enrollment code from the organization's admin.
    pub code: String,
    /// The tablet's name on the control plane.
    pub device_name: String,
    /// The field worker: a user of the organization on the control plane.
    pub user: String,
    /// Their password on the control plane (online login only).
    pub server_password: String,
    /// The passphrase of their own slot on this tablet.
    pub passphrase: String,
    /// The KDF of new slots (calibrated in `main`; tiny in tests).
    pub kdf: KdfParams,
}

/// The agent's result: every step's errors are `coffer_agent::Error`s.
pub type Result<T> = coffer_agent::Result<T>;

fn passphrase(text: &str) -> Result<Passphrase> {
    Ok(Passphrase::new(text.to_owned())?)
}

fn vault(cfg: &Config) -> Result<Vault> {
    Ok(Space::new(&cfg.space).vault(VAULT)?)
}

/// Step 1: a new vault for the tablet's owner, with the app `cases`.
pub fn create_vault(cfg: &Config) -> Result<()> {
    let owner = passphrase(&cfg.owner_passphrase)?;
    let vault = Space::new(&cfg.space).create_vault(VAULT, &cfg.owner, &owner, &cfg.kdf)?;
    vault.add_app(APP, Capabilities::all())?;
    Ok(())
}

/// Step 2: joins the control plane. The vault (and everything in it) is
/// managed from now on: it opens only through the agent, under the
/// organization's policy, which the first check-in fetched.
pub fn enroll(agent: &Agent, cfg: &Config) -> Result<Enrolled> {
    let owner = UnlockSecret::Passphrase(passphrase(&cfg.owner_passphrase)?);
    let unlocked = agent.unlock(&vault(cfg)?, &owner)?;
    let server = Server::new(&cfg.server, cfg.trust.clone())?;
    let code = WireSecret::new(cfg.code.clone());
    let (enrolled, _unlocked) = agent.enroll(unlocked, &server, code, &cfg.device_name)?;
    Ok(enrolled)
}

/// The answers to the login's questions, from the configuration (a real
/// app shows a dialog; `None` cancels the login, as does a passphrase that
/// `Passphrase::new` refuses).
struct Prompts<'a>(&'a Config);

impl LoginPrompts for Prompts<'_> {
    fn server_password(&mut self, _user: &str) -> Option<WireSecret> {
        Some(WireSecret::new(self.0.server_password.clone()))
    }

    fn new_passphrase(&mut self, _user: &str) -> Option<Passphrase> {
        Passphrase::new(self.0.passphrase.clone()).ok()
    }

    fn new_slot_kdf(&mut self) -> coffer_device::Result<KdfParams> {
        Ok(self.0.kdf)
    }

    fn offline_secret(&mut self, _user: &str) -> Option<UnlockSecret> {
        Passphrase::new(self.0.passphrase.clone())
            .ok()
            .map(UnlockSecret::Passphrase)
    }
}

/// How a login went.
#[derive(Debug, PartialEq, Eq)]
pub enum LoggedIn {
    /// Through escrow; the worker's own slot added or renewed.
    Online(SlotChange),
    /// With the worker's own slot: the control plane could not be reached.
    Offline(OfflineReason),
}

/// Step 3: the field worker logs in: online whenever the control plane
/// answers (a pending wipe is carried out first), offline otherwise.
pub fn log_in(agent: &Agent, cfg: &Config) -> Result<LoggedIn> {
    Ok(
        match agent.login(&vault(cfg)?, &cfg.user, &mut Prompts(cfg))? {
            Login::Online { slot, .. } => LoggedIn::Online(slot),
            Login::Offline { why, .. } => LoggedIn::Offline(why),
        },
    )
}

/// Opens the vault with the worker's own slot, as the app does at each
/// start once they have logged in: the policy applies (offline grace,
/// capabilities, lockout), no network needed.
pub fn open(agent: &Agent, cfg: &Config) -> Result<UnlockedVault> {
    let secret = UnlockSecret::Passphrase(passphrase(&cfg.passphrase)?);
    agent.unlock(&vault(cfg)?, &secret)
}

fn photo_name(case: &str) -> String {
    format!("photos/{case}.jpg")
}

/// Step 4: a case: its record, and its photo in the file store (both
/// encrypted under the app's keys).
pub fn write_case(
    agent: &Agent,
    cfg: &Config,
    case: &str,
    notes: &str,
    photo: &[u8],
) -> Result<()> {
    let unlocked = open(agent, cfg)?;
    let app = unlocked.app(APP)?;
    let body = json!({"notes": notes, "photo": photo_name(case), "by": cfg.user});
    app.records()?.put(CASES, case, &body, None)?;
    app.files()?.put(
        &photo_name(case),
        &mut &photo[..],
        Some("image/jpeg"),
        &mut |_| {},
    )?;
    Ok(())
}

/// A case read back: its record's body and its photo, if there is one.
pub fn read_case(agent: &Agent, cfg: &Config, case: &str) -> Result<Option<(Value, Vec<u8>)>> {
    let unlocked = open(agent, cfg)?;
    let app = unlocked.app(APP)?;
    let Some(record) = app.records()?.get(CASES, case)? else {
        return Ok(None);
    };
    let mut file = app.files()?.open_file(&photo_name(case))?;
    let mut photo = vec![0; file.len() as usize];
    let read = file.read_at(0, &mut photo)?;
    photo.truncate(read);
    Ok(Some((record.body, photo)))
}

/// Step 5: readings queued in the vault (durably: they survive a restart
/// and a dead zone), then everything queued delivered after a check-in.
pub fn deliver(agent: &Agent, cfg: &Config, readings: Vec<Reading>) -> Result<DeliveryReport> {
    let unlocked = open(agent, cfg)?;
    agent.queue_readings(&unlocked, readings)?;
    agent.deliver(unlocked, 3)
}

/// Step 6: a check-in. The agent carries out what the control plane
/// orders: a whole-device wipe crypto-erases the vault and returns
/// `Err(Error::Wiped(..))`; the app then forgets what it shows and goes
/// back to its enrollment screen.
pub fn check_in(agent: &Agent, cfg: &Config) -> Result<CheckInReport> {
    let (report, _unlocked) = agent.check_in(open(agent, cfg)?)?;
    Ok(report)
}

fn env(name: &str) -> std::result::Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set (see the example's documentation)"))
}

fn config_from_env() -> std::result::Result<Config, Box<dyn std::error::Error>> {
    let trust = match (std::env::var("FIELD_PIN"), std::env::var("FIELD_CA_FILE")) {
        (Ok(pin), _) => Trust::parse_pin(&pin)?,
        (Err(_), Ok(file)) => Trust::Ca(std::fs::read(file)?),
        _ => return Err("set FIELD_PIN (the certificate's SHA-256) or FIELD_CA_FILE".into()),
    };
    Ok(Config {
        space: env("FIELD_SPACE")?.into(),
        owner: env("FIELD_OWNER").unwrap_or_else(|_| "setup".into()),
        owner_passphrase: env("FIELD_OWNER_PASSPHRASE")?,
        server: env("FIELD_SERVER")?,
        trust,
        code: env("FIELD_CODE").unwrap_or_default(), // a new vault only
        device_name: env("FIELD_DEVICE_NAME").unwrap_or_else(|_| "tablet-1".into()),
        user: env("FIELD_USER")?,
        server_password: env("FIELD_SERVER_PASSWORD")?,
        passphrase: env("FIELD_PASSPHRASE")?,
        kdf: KdfParams::calibrate(
            coffer_device::KdfAlgorithm::Argon2id,
            std::time::Duration::from_millis(500),
        )?,
    })
}

/// The app's run: set up on first start, then log in and work.
fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let cfg = config_from_env()?;
    let agent = Agent::new();

    // A new tablet, or one wiped since: set up (the code is a new one).
    if Space::new(&cfg.space)
        .vault(VAULT)
        .and_then(|v| v.info())
        .is_err()
    {
        create_vault(&cfg)?;
        println!(
            "created vault {VAULT} in {} with the app {APP}",
            cfg.space.display()
        );
        let enrolled = enroll(&agent, &cfg)?;
        println!(
            "enrolled: device {} of organization {}, policy version {:?}",
            enrolled.device_id,
            enrolled.organization_id,
            enrolled.check_in.policy.version()
        );
    }

    match log_in(&agent, &cfg)? {
        LoggedIn::Online(slot) => println!("{} logged in online (slot {slot:?})", cfg.user),
        LoggedIn::Offline(why) => println!("{} logged in offline: {why}", cfg.user),
    }

    let photo: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    write_case(&agent, &cfg, "case-1", "gate 4: hinge broken", &photo)?;
    if let Some((record, read)) = read_case(&agent, &cfg, "case-1")? {
        println!("case-1: {record}, photo of {} bytes", read.len());
    }

    let readings = std::env::var("FIELD_READINGS")
        .unwrap_or_else(|_| r#"[{"at": 1795000000, "name": "temp.c", "value": 21.5}]"#.into());
    let report = deliver(&agent, &cfg, coffer_agent::parse_readings(&readings)?)?;
    println!(
        "readings: {} batch(es) delivered, {} queued",
        report.delivered, report.queued
    );

    match check_in(&agent, &cfg) {
        Ok(report) => println!("checked in: policy version {:?}", report.policy.version()),
        Err(e) if e.is_unreachable() => println!("not checked in ({e}): later"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Runs the app once (again after an admin orders a wipe: the login's or
/// a check-in's contact with the control plane carries it out).
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<coffer_agent::Error>() {
            Some(coffer_agent::Error::Wiped(wiped)) => {
                println!("{wiped}: the app shows its enrollment screen again");
                std::process::ExitCode::SUCCESS
            }
            _ => {
                eprintln!("field_app: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
