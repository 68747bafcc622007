//! The device's side of the control plane (docs/protocol.md): a client that
//! trusts the server by a pinned certificate fingerprint (`--pin-sha256`)
//! or a CA file (`--ca-cert`), and `coffer enroll`.
//!
//! The device's enrollment lives in the vault's encrypted settings
//! (`control.*`): the server's URL and how it is trusted, the device's id
//! and organization, the device token, and the organization's policy key.
//! Nothing of it is written to a plain file.

use std::sync::Arc;

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cli::Global;
use crate::commands::Report;
use crate::exit::{CliError, ExitCode};

/// Setting keys of the vault's enrollment.
mod key {
    pub const SERVER: &str = "control.server";
    pub const PIN_SHA256: &str = "control.pin_sha256";
    pub const CA_CERT: &str = "control.ca_cert";
    pub const DEVICE_ID: &str = "control.device_id";
    pub const ORGANIZATION_ID: &str = "control.organization_id";
    pub const DEVICE_TOKEN: &str = "control.device_token";
    pub const POLICY_KEY: &str = "control.policy_key";
}

/// The name of the escrow slot `coffer enroll` adds.
pub const ESCROW_SLOT: &str = "escrow";

/// How the device trusts the server's certificate.
#[derive(Clone)]
pub enum Trust {
    /// The SHA-256 of the server's certificate (DER), as `coffer serve
    /// --dev-tls` prints it.
    Pin([u8; 32]),
    /// A CA (or the server's own) certificate, PEM.
    Ca(Vec<u8>),
    /// The system's roots (plain HTTP only on loopback).
    System,
}

/// Parses a fingerprint: 64 hex digits, with or without colons.
pub fn parse_pin(text: &str) -> Result<[u8; 32], CliError> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(digits.trim(), &mut pin).map_err(|_| {
        CliError::usage(
            "--pin-sha256 takes the certificate's SHA-256: 64 hex digits, colons allowed",
        )
    })?;
    Ok(pin)
}

/// Trusts exactly the certificate whose SHA-256 is pinned (still checking
/// the handshake's signature with its key): for self-signed servers.
#[derive(Debug)]
struct PinnedCertificate {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if subtle::ConstantTimeEq::ct_eq(&seen[..], &self.pin[..]).into() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks a control plane's URL: HTTPS, or plain HTTP to this machine only
/// (where `coffer serve` serves it without TLS). Elsewhere a pin would
/// protect nothing and every token would travel in clear.
pub fn check_server_url(url: &str) -> Result<(), CliError> {
    let refused = || {
        CliError::usage(format!(
            "the control plane's URL must be https:// (plain http:// only to 127.0.0.1, ::1 or localhost): {url}"
        ))
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| refused())?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) => Ok(()),
        _ => Err(refused()),
    }
}

/// An HTTP client that trusts the server as `trust` says, and follows no
/// redirect (a redirect would carry the device's token elsewhere).
pub fn client(trust: &Trust) -> Result<Client, CliError> {
    let failed = |e: &dyn std::fmt::Display| CliError::other(format!("cannot set up TLS: {e}"));
    let builder = Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none());
    let builder = match trust {
        Trust::Pin(pin) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| failed(&e))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                    pin: *pin,
                    provider,
                }))
                .with_no_client_auth();
            builder.use_preconfigured_tls(config)
        }
        Trust::Ca(pem) => {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|_| CliError::usage("--ca-cert is not a PEM certificate"))?;
            builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(cert)
        }
        Trust::System => builder,
    };
    builder.build().map_err(|e| failed(&e))
}

/// The server's answer as JSON, or a typed error: an untrusted certificate
/// is its own exit code.
pub fn answer(response: reqwest::Result<Response>) -> Result<Value, CliError> {
    let response = response.map_err(|e| {
        let text = format!("{e:?}");
        if text.contains("InvalidCertificate") || text.contains("UnknownIssuer") {
            CliError {
                exit: ExitCode::Untrusted,
                code: "untrusted_server",
                message: "the server's certificate is not the one pinned (or not signed by the given CA): refusing to talk to it".into(),
            }
        } else {
            CliError::other(format!("cannot reach the server: {}", e.without_url()))
        }
    })?;
    crate::admin::answer(Ok(response))
}

/// `coffer enroll`: turns this vault into its organization's, keeping all
/// its data: spends the enrollment code, keeps the device token and the
/// organization's policy key in the vault's encrypted settings, adds an
/// escrow slot and deposits its key.
pub fn enroll(
    global: &Global,
    server: &str,
    code: Option<&str>,
    name: Option<&str>,
    trust: Trust,
) -> Result<Report, CliError> {
    let mut vault = crate::commands::unlock(global)?;
    let setting = |key: &str| vault.setting(key).map_err(CliError::from);
    if setting(key::DEVICE_TOKEN)?.is_some() {
        return Err(CliError {
            exit: ExitCode::VaultExists,
            code: "already_enrolled",
            message: "this vault is already enrolled with a control plane".into(),
        });
    }
    let code = match code {
        Some(code) => Zeroizing::new(code.to_owned()),
        None => crate::admin::password("Enrollment code: ", "COFFER_ENROLL_CODE")?,
    };
    check_server_url(server)?;
    let name = name.map_or_else(
        || format!("{}@{}", vault.vault().name(), hostname()),
        str::to_owned,
    );
    let http = client(&trust)?;
    let url = |path: &str| format!("{}{path}", server.trim_end_matches('/'));
    let enrolled = answer(
        http.post(url("/v1/enroll"))
            .json(&json!({"code": code.as_str(), "name": name}))
            .send(),
    )?;
    let token = Zeroizing::new(
        enrolled["device_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let release_token = enrolled["release_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let policy_key = enrolled["policy_public_key"].as_str().unwrap_or_default();
    if token.is_empty() || hex::decode(policy_key).map(|k| k.len()) != Ok(32) {
        return Err(CliError::other(
            "the server's enrollment answer lacks the device token or the policy key",
        ));
    }
    let device_id = enrolled["device_id"].as_i64().unwrap_or_default();
    let org_id = enrolled["organization_id"].as_i64().unwrap_or_default();
    let (pin, ca) = match &trust {
        Trust::Pin(pin) => (Some(hex::encode(pin)), None),
        Trust::Ca(pem) => (None, Some(pem.clone())),
        Trust::System => (None, None),
    };
    for (key, value) in [
        (
            key::SERVER,
            Some(server.trim_end_matches('/').as_bytes().to_vec()),
        ),
        (key::PIN_SHA256, pin.map(String::into_bytes)),
        (key::CA_CERT, ca),
        (key::DEVICE_ID, Some(device_id.to_string().into_bytes())),
        (key::ORGANIZATION_ID, Some(org_id.to_string().into_bytes())),
        (key::POLICY_KEY, Some(policy_key.as_bytes().to_vec())),
        (key::DEVICE_TOKEN, Some(token.as_bytes().to_vec())),
    ] {
        vault.set_setting(key, value.as_deref())?;
    }
    write_release_file(
        vault.vault().path(),
        &ReleaseFile {
            format: RELEASE_FORMAT.into(),
            server: server.trim_end_matches('/').to_owned(),
            pin_sha256: match &trust {
                Trust::Pin(pin) => Some(hex::encode(pin)),
                _ => None,
            },
            ca_cert: match &trust {
                Trust::Ca(pem) => Some(String::from_utf8_lossy(pem).into_owned()),
                _ => None,
            },
            device_id,
            release_token,
            refuse_debugger: false,
        },
    )?;
    deposit_new_escrow(&mut vault, |escrow_hex| {
        answer(
            http.put(url("/v1/device/escrow"))
                .header("X-Auth-Token", token.as_str())
                .json(&json!({"escrow_key": escrow_hex}))
                .send(),
        )
        .map(|_| ())
    })?;
    // A first check-in: the server's time (the offline grace counts from
    // it) and the organization's policy, if one is published.
    let checked = check_in_unlocked(global, vault)?;
    Ok(Report {
        json: json!({
            "policy_version": checked.json["policy"]["version"],
            "enrolled": true,
            "server": server,
            "device_id": device_id,
            "organization_id": org_id,
            "policy_key": policy_key,
            "escrow_slot": ESCROW_SLOT,
        }),
        text: format!(
            "Enrolled as device {device_id} of organization {org_id} at {server}.\n\
             The organization's policy key is pinned; the server holds this vault's escrow key (slot \"{ESCROW_SLOT}\")."
        ),
    })
}

/// After a rotation of an enrolled vault (which retired its escrow slot): a
/// new escrow slot and its key deposited; offline, marked for the next
/// check-in. What happened, for the report.
pub fn after_rotation(
    _global: &Global,
    vault: &mut coffer_device::UnlockedVault,
) -> Result<Option<String>, CliError> {
    if vault.setting(key::DEVICE_TOKEN)?.is_none() {
        return Ok(None);
    }
    let enrolled = enrollment(vault)?;
    let http = client(&enrolled.trust)?;
    let url = format!("{}/v1/device/escrow", enrolled.server.trim_end_matches('/'));
    let deposited = deposit_new_escrow(vault, |escrow_hex| {
        answer(
            http.put(&url)
                .header("X-Auth-Token", enrolled.token.as_str())
                .json(&json!({"escrow_key": escrow_hex}))
                .send(),
        )
        .map(|_| ())
    });
    match deposited {
        Ok(()) => {
            vault.set_setting(learned::ESCROW_STALE, None)?;
            Ok(Some(
                "A new escrow slot's key is deposited with the control plane.".into(),
            ))
        }
        Err(e) => {
            vault.set_setting(learned::ESCROW_STALE, Some(b"1"))?;
            Ok(Some(format!(
                "The new escrow slot's key could not be deposited ({}): the next check-in does it.",
                e.message
            )))
        }
    }
}

/// A new escrow slot (a recovery key only the server keeps, replacing any
/// earlier one), its key handed to `deposit` as hex of its text.
fn deposit_new_escrow(
    vault: &mut coffer_device::UnlockedVault,
    deposit: impl FnOnce(&str) -> Result<(), CliError>,
) -> Result<(), CliError> {
    if vault.slots().iter().any(|s| s.name == ESCROW_SLOT) {
        vault.remove_slot(ESCROW_SLOT)?;
    }
    let (_, escrow) = vault.add_recovery_slot(ESCROW_SLOT)?;
    let text = escrow.display();
    let escrow_hex = Zeroizing::new(hex::encode(
        secrecy::ExposeSecret::expose_secret(&text).as_bytes(),
    ));
    deposit(escrow_hex.as_str())
}

/// Carries out a whole-device wipe order: crypto-erase, then every order
/// acknowledged (the slots the others named went with the vault). The
/// answer is "wiped" (exit 12) whatever the acknowledgements did: one that
/// failed is named, and the server keeps the order pending.
fn wipe_as_ordered(
    global: &Global,
    vault: &coffer_device::Vault,
    orders: &[Value],
    ack: &dyn Fn(i64) -> Result<(), CliError>,
) -> CliError {
    if let Err(e) = vault.wipe() {
        return e.into();
    }
    let unacknowledged: Vec<String> = orders
        .iter()
        .filter_map(|order| {
            let id = order["id"].as_i64().unwrap_or_default();
            (0..3)
                .find_map(|_| ack(id).ok())
                .is_none()
                .then(|| id.to_string())
        })
        .collect();
    CliError {
        exit: ExitCode::Wiped,
        code: "wiped_by_order",
        message: format!(
            "the control plane ordered vault '{}' wiped: it is crypto-erased{}",
            global.vault,
            if unacknowledged.is_empty() {
                ", and the server told".to_owned()
            } else {
                format!(
                    "; the server could not be told (orders {} stay pending there)",
                    unacknowledged.join(", ")
                )
            }
        ),
    }
}

/// Carries out a one-user wipe order: that user's slot removed, if there.
fn remove_ordered_slot(
    vault: &mut coffer_device::UnlockedVault,
    order: &Value,
) -> Result<Option<String>, CliError> {
    let user = order["user"].as_str().unwrap_or_default();
    if !user.is_empty() && vault.slots().iter().any(|s| s.name == user) {
        vault.remove_slot(user)?;
        return Ok(Some(user.to_owned()));
    }
    Ok(None)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "device".into())
}

/// Setting keys of what check-ins learn.
mod learned {
    pub const LAST_CHECK_IN: &str = "control.last_check_in";
    pub const POLICY_VERSION: &str = "control.policy_version";
    pub const POLICY_DOCUMENT: &str = "control.policy_document";
    pub const POLICY_SIGNATURE: &str = "control.policy_signature";
    /// The server holds an escrow key that no longer opens the vault.
    pub const ESCROW_STALE: &str = "control.escrow_stale";
}

/// The enrollment read back from the vault's settings.
struct Enrollment {
    server: String,
    trust: Trust,
    token: Zeroizing<String>,
    organization_id: i64,
    policy_key: Vec<u8>,
}

fn text_setting(
    vault: &coffer_device::UnlockedVault,
    key: &str,
) -> Result<Option<String>, CliError> {
    Ok(vault
        .setting(key)?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

fn enrollment(vault: &coffer_device::UnlockedVault) -> Result<Enrollment, CliError> {
    let missing = || CliError::usage("this vault is not enrolled: run 'coffer enroll' first");
    let server = text_setting(vault, key::SERVER)?.ok_or_else(missing)?;
    check_server_url(&server)?;
    let token = Zeroizing::new(text_setting(vault, key::DEVICE_TOKEN)?.ok_or_else(missing)?);
    let trust = match (
        text_setting(vault, key::PIN_SHA256)?,
        vault.setting(key::CA_CERT)?,
    ) {
        (Some(pin), _) => Trust::Pin(parse_pin(&pin)?),
        (None, Some(pem)) => Trust::Ca(pem),
        (None, None) => Trust::System,
    };
    let organization_id = text_setting(vault, key::ORGANIZATION_ID)?
        .and_then(|t| t.parse().ok())
        .ok_or_else(missing)?;
    let policy_key = hex::decode(text_setting(vault, key::POLICY_KEY)?.ok_or_else(missing)?)
        .map_err(|_| CliError::other("the pinned policy key is not hex"))?;
    Ok(Enrollment {
        server,
        trust,
        token,
        organization_id,
        policy_key,
    })
}

/// Why a fetched policy is refused (the last good one is kept).
fn check_policy(
    enrolled: &Enrollment,
    held: Option<i64>,
    answer: &Value,
) -> Result<coffer_server::policy::Document, String> {
    let document = answer["document"].as_str().unwrap_or_default();
    let signature = hex::decode(answer["signature"].as_str().unwrap_or_default())
        .map_err(|_| "the signature is not hex".to_owned())?;
    if !coffer_server::policy::verify(&enrolled.policy_key, document.as_bytes(), &signature) {
        return Err("its signature does not verify with the pinned organization key".into());
    }
    let parsed: coffer_server::policy::Document =
        serde_json::from_str(document).map_err(|e| format!("it is not a policy document: {e}"))?;
    if parsed.format != coffer_server::policy::FORMAT {
        return Err(format!("its format {:?} is unknown", parsed.format));
    }
    if parsed.organization_id != enrolled.organization_id {
        return Err("it is another organization's".into());
    }
    if Some(parsed.version) != answer["version"].as_i64() {
        return Err("its version is not the one the server announced".into());
    }
    if held.is_some_and(|held| parsed.version <= held) {
        return Err(format!(
            "version {} is not above the version held ({}): a downgrade",
            parsed.version,
            held.unwrap_or_default()
        ));
    }
    Ok(parsed)
}

/// `coffer check-in`: reports to the control plane and does what it says —
/// wipe orders first (a whole-device wipe is a crypto-erase, then the
/// acknowledgement; a one-user wipe removes that user's slot), then a newer
/// signed policy, verified against the pinned key (a bad signature or a
/// downgrade is refused and the last good policy kept).
pub fn check_in(global: &Global) -> Result<Report, CliError> {
    let (vault, offered) = crate::commands::unlock_as_is(global)?;
    // A check-in is the way out of the grace's block, not of its wipe.
    let vault = enforce_as(global, vault, &offered, Grace::WipeOnly)?;
    check_in_unlocked(global, vault)
}

fn check_in_unlocked(
    global: &Global,
    vault: coffer_device::UnlockedVault,
) -> Result<Report, CliError> {
    check_in_keeping(global, vault).map(|(report, _)| report)
}

/// A check-in that hands the vault back (unless a wipe order took it).
fn check_in_keeping(
    global: &Global,
    mut vault: coffer_device::UnlockedVault,
) -> Result<(Report, coffer_device::UnlockedVault), CliError> {
    let enrolled = enrollment(&vault)?;
    let http = client(&enrolled.trust)?;
    let url = |path: &str| format!("{}{path}", enrolled.server.trim_end_matches('/'));
    let post = |path: &str| {
        http.post(url(path))
            .header("X-Auth-Token", enrolled.token.as_str())
            .send()
    };
    let seen = answer(post("/v1/device/check-in"))?;
    let server_time = seen["server_time"].as_i64().unwrap_or_default();
    record_check_in(&mut vault, server_time)?;
    let orders = seen["wipe_orders"].as_array().cloned().unwrap_or_default();
    if orders.iter().any(|o| o["scope"] == "device") {
        // The whole vault: crypto-erase first, then tell the server (the
        // token is still in memory). Every order is answered: the slots
        // the others named are gone with the vault.
        let handle = vault.vault().clone();
        drop(vault);
        return Err(wipe_as_ordered(global, &handle, &orders, &|id| {
            answer(post(&format!("/v1/device/wipes/{id}/ack"))).map(|_| ())
        }));
    }
    let mut removed = Vec::new();
    for order in &orders {
        if let Some(user) = remove_ordered_slot(&mut vault, order)? {
            removed.push(user);
        }
        let id = order["id"].as_i64().unwrap_or_default();
        answer(post(&format!("/v1/device/wipes/{id}/ack")))?;
    }
    // The server lost this device's escrow key (a deposit that failed at
    // enrollment, or a whole-device wipe order that was then cancelled):
    // a new escrow slot, and its key deposited.
    let mut escrow_renewed = false;
    let stale = vault.setting(learned::ESCROW_STALE)?.is_some();
    if (seen["escrow_present"] == false || stale) && seen["revoked"] == false {
        let http = &http;
        deposit_new_escrow(&mut vault, |escrow_hex| {
            answer(
                http.put(url("/v1/device/escrow"))
                    .header("X-Auth-Token", enrolled.token.as_str())
                    .json(&json!({"escrow_key": escrow_hex}))
                    .send(),
            )
            .map(|_| ())
        })?;
        vault.set_setting(learned::ESCROW_STALE, None)?;
        escrow_renewed = true;
    }
    let held = text_setting(&vault, learned::POLICY_VERSION)?.and_then(|v| v.parse::<i64>().ok());
    let announced = seen["policy_version"].as_i64();
    let mut policy = json!({"version": held, "updated": false});
    if announced.is_some_and(|v| held.is_none_or(|h| v > h)) {
        let fetched = answer(
            http.get(url("/v1/device/policy"))
                .header("X-Auth-Token", enrolled.token.as_str())
                .send(),
        )?;
        match check_policy(&enrolled, held, &fetched) {
            Ok(document) => {
                apply_policy(&mut vault, &document.rules)?;
                set_debugger_hint(vault.vault().path(), document.rules.refuse_debugger);
                // The version last: a crash in between leaves the old
                // version, so the next check-in fetches again.
                for (key, value) in [
                    (
                        learned::POLICY_DOCUMENT,
                        fetched["document"].as_str().unwrap_or_default().to_owned(),
                    ),
                    (
                        learned::POLICY_SIGNATURE,
                        fetched["signature"].as_str().unwrap_or_default().to_owned(),
                    ),
                    (learned::POLICY_VERSION, document.version.to_string()),
                ] {
                    vault.set_setting(key, Some(value.as_bytes()))?;
                }
                policy = json!({"version": document.version, "updated": true});
            }
            Err(why) => {
                policy = json!({"version": held, "updated": false, "refused": why});
            }
        }
    }
    let text = format!(
        "Checked in at server time {server_time}{}{}; policy version {}.",
        if removed.is_empty() {
            String::new()
        } else {
            format!("; removed the slots of {} as ordered", removed.join(", "))
        },
        policy["refused"]
            .as_str()
            .map_or_else(String::new, |why| format!(
                "; a new policy was refused: {why}"
            )),
        policy["version"]
    );
    Ok((
        Report {
            json: json!({
                "server_time": server_time,
                "revoked": seen["revoked"],
                "removed_slots": removed,
                "escrow_renewed": escrow_renewed,
                "policy": policy,
            }),
            text,
        },
        vault,
    ))
}

/// The device's credential before unlock (docs/protocol.md, "The release
/// token"): a file only its user can read, beside the vault's files, that a
/// wipe deletes with them.
pub const RELEASE_FILE: &str = "control.json";
const RELEASE_FORMAT: &str = "coffer-device-release/1";

/// What the release file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReleaseFile {
    format: String,
    server: String,
    pin_sha256: Option<String>,
    ca_cert: Option<String>,
    device_id: i64,
    release_token: String,
    /// The held policy refuses debuggers: refused before the next unlock
    /// runs its KDF, not only after it (a hint: the policy itself is
    /// checked after every unlock anyway).
    #[serde(default)]
    refuse_debugger: bool,
}

impl Drop for ReleaseFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.release_token);
    }
}

impl ReleaseFile {
    fn trust(&self) -> Result<Trust, CliError> {
        Ok(match (&self.pin_sha256, &self.ca_cert) {
            (Some(pin), _) => Trust::Pin(parse_pin(pin)?),
            (None, Some(pem)) => Trust::Ca(pem.clone().into_bytes()),
            (None, None) => Trust::System,
        })
    }
}

fn write_release_file(dir: &std::path::Path, file: &ReleaseFile) -> Result<(), CliError> {
    use std::io::Write;
    let failed = |e: std::io::Error| CliError::other(format!("cannot write {RELEASE_FILE}: {e}"));
    let text = Zeroizing::new(serde_json::to_vec(file).unwrap_or_default());
    let temp = dir.join(format!("{RELEASE_FILE}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = options.open(&temp).map_err(failed)?;
    out.write_all(&text).map_err(failed)?;
    out.sync_all().map_err(failed)?;
    std::fs::rename(&temp, dir.join(RELEASE_FILE)).map_err(failed)
}

fn read_release_file(dir: &std::path::Path) -> Result<Option<ReleaseFile>, CliError> {
    let text = match std::fs::read(dir.join(RELEASE_FILE)) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::other(format!("cannot read {RELEASE_FILE}: {e}"))),
    };
    let file: ReleaseFile = serde_json::from_slice(&text)
        .map_err(|_| CliError::other(format!("{RELEASE_FILE} is damaged: enroll again")))?;
    check_server_url(&file.server)?;
    if file.format != RELEASE_FORMAT {
        return Err(CliError::other(format!(
            "{RELEASE_FILE} has the unknown format {:?}",
            file.format
        )));
    }
    Ok(Some(file))
}

/// Records in the release file whether the held policy refuses debuggers.
fn set_debugger_hint(dir: &std::path::Path, refuse: bool) {
    if let Ok(Some(mut file)) = read_release_file(dir) {
        if file.refuse_debugger != refuse {
            file.refuse_debugger = refuse;
            let _ = write_release_file(dir, &file);
        }
    }
}

/// Whether the release file says the held policy refuses debuggers.
pub fn refuses_debugger(dir: &std::path::Path) -> bool {
    matches!(read_release_file(dir), Ok(Some(file)) if file.refuse_debugger)
}

/// Whether a passphrase meets the verified policy's rules (none held: any).
pub fn check_passphrase_rules(
    vault: &coffer_device::UnlockedVault,
    passphrase: &coffer_device::Passphrase,
) -> Result<(), CliError> {
    let Some(document) = vault.setting(learned::POLICY_DOCUMENT)? else {
        return Ok(());
    };
    let Ok(policy) = serde_json::from_slice::<coffer_server::policy::Document>(&document) else {
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
        return Err(CliError {
            exit: ExitCode::SlotRefused,
            code: "passphrase_too_weak",
            message: format!(
                "the organization's policy (version {}) asks for at least {} characters of at least {} kinds (lower case, upper case, digits, other)",
                policy.version, rules.min_length, rules.min_classes
            ),
        });
    }
    Ok(())
}

/// Whether an error means the server could not be reached at all (the
/// device is offline), as opposed to a refusal.
fn unreachable(e: &CliError) -> bool {
    e.exit == ExitCode::Other && e.message.starts_with("cannot reach the server")
}

/// `coffer login --user NAME`: online, with the user's server password,
/// the server releases the vault's escrow key to a member of its
/// organization; the vault opens through its escrow slot and the user's own
/// passphrase slot is added (or renewed), so that they can log in offline
/// later. Offline, the user's own slot opens it.
pub fn login(global: &Global, user: &str, kdf: &crate::cli::KdfArgs) -> Result<Report, CliError> {
    let vault = crate::commands::vault(global)?;
    let release = match read_release_file(vault.path()) {
        Ok(Some(release)) => release,
        Ok(None) => return offline_login(global, user, "this vault is not enrolled"),
        // A damaged release file must not keep users with a slot out.
        Err(e) => {
            return offline_login(
                global,
                user,
                &format!("the device's release file is unusable ({})", e.message),
            )
        }
    };
    let http = client(&release.trust()?)?;
    let url = |path: &str| format!("{}{path}", release.server.trim_end_matches('/'));
    // Check in first, with the release token: a whole-device wipe is
    // carried out before anyone logs in.
    let seen = match answer(
        http.post(url("/v1/device/check-in"))
            .header("X-Auth-Token", release.release_token.as_str())
            .send(),
    ) {
        Ok(seen) => seen,
        Err(e) if unreachable(&e) => {
            return offline_login(global, user, "the control plane cannot be reached")
        }
        Err(e) => return Err(e),
    };
    let orders = seen["wipe_orders"].as_array().cloned().unwrap_or_default();
    let ack = |id: i64| {
        answer(
            http.post(url(&format!("/v1/device/wipes/{id}/ack")))
                .header("X-Auth-Token", release.release_token.as_str())
                .send(),
        )
        .map(|_| ())
    };
    if orders.iter().any(|o| o["scope"] == "device") {
        return Err(wipe_as_ordered(global, &vault, &orders, &ack));
    }
    let password = crate::admin::password(
        &format!("Server password for {user}: "),
        "COFFER_SERVER_PASSWORD",
    )?;
    let session = answer(
        http.post(url("/v1/login"))
            .json(&json!({"user": user, "password": password.as_str()}))
            .send(),
    )?;
    let session = Zeroizing::new(session["token"].as_str().unwrap_or_default().to_owned());
    let released = answer(
        http.post(url("/v1/device/escrow/release"))
            .header("X-Auth-Token", release.release_token.as_str())
            .header("X-User-Token", session.as_str())
            .send(),
    );
    // The session has served its purpose either way.
    let _ = http
        .post(url("/v1/logout"))
        .header("X-Auth-Token", session.as_str())
        .send();
    let released = released?;
    let escrow_text = Zeroizing::new(
        String::from_utf8(
            hex::decode(released["escrow_key"].as_str().unwrap_or_default()).unwrap_or_default(),
        )
        .unwrap_or_default(),
    );
    let escrow = coffer_device::RecoveryKey::parse(&escrow_text)
        .map_err(|_| CliError::other("the escrow key the server released is not this vault's"))?;
    let mut unlocked = vault.unlock_at(&coffer_device::Credential::RecoveryKey(&escrow), now())?;
    // The check-in above was successful: the grace counts from it. Its
    // one-user wipe orders are carried out now that the vault is open (the
    // server released nothing to a user whose own wipe is pending).
    record_check_in(
        &mut unlocked,
        seen["server_time"].as_i64().unwrap_or_default(),
    )?;
    for order in &orders {
        remove_ordered_slot(&mut unlocked, order)?;
        ack(order["id"].as_i64().unwrap_or_default())?;
    }
    let passphrase = crate::input::new_passphrase(global, user)?;
    check_passphrase_rules(&unlocked, &passphrase)?;
    let params = crate::commands::calibrate(global, kdf)?;
    let renewed = unlocked.slots().iter().any(|s| s.name == user);
    if renewed {
        unlocked.change_passphrase(Some(user), &passphrase, &params)?;
    } else {
        unlocked.add_passphrase_slot(user, &passphrase, &params)?;
    }
    Ok(Report {
        json: json!({"user": user, "online": true, "slot": if renewed { "renewed" } else { "added" }}),
        text: format!(
            "Logged in online as {user}; {} your own slot on this device, so you can log in offline next time.",
            if renewed { "renewed" } else { "added" }
        ),
    })
}

fn offline_login(global: &Global, user: &str, why: &str) -> Result<Report, CliError> {
    match crate::commands::unlock(global) {
        Ok(unlocked) => {
            let opened = unlocked
                .slots()
                .into_iter()
                .find(|s| s.index == unlocked.opened_slot())
                .map(|s| s.name)
                .unwrap_or_default();
            if opened != user {
                return Err(CliError {
                    exit: ExitCode::WrongSecret,
                    code: "needs_online_login",
                    message: format!(
                        "{why}, and that passphrase is not {user}'s: {user} has no slot on this device yet (that needs one online login)"
                    ),
                });
            }
            Ok(Report {
                json: json!({"user": user, "online": false}),
                text: format!("Logged in offline ({why})."),
            })
        }
        Err(e) if e.exit == ExitCode::WrongSecret => Err(CliError {
            exit: ExitCode::WrongSecret,
            code: "needs_online_login",
            message: format!(
                "{why}, and the passphrase opens no slot of this vault: wrong passphrase, or {user} has no slot on this device yet (that needs one online login)"
            ),
        }),
        Err(e) => Err(e),
    }
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

fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The verified policy the vault holds, if any.
fn held_policy(
    vault: &coffer_device::UnlockedVault,
) -> Result<Option<coffer_server::policy::Document>, CliError> {
    Ok(vault
        .setting(learned::POLICY_DOCUMENT)?
        .and_then(|d| serde_json::from_slice(&d).ok()))
}

/// What a verified policy sets in the vault itself: the failed-attempt
/// limit and its action, and each app's capabilities.
fn apply_policy(
    vault: &mut coffer_device::UnlockedVault,
    rules: &coffer_server::policy::Rules,
) -> Result<(), CliError> {
    use coffer_device::{Capabilities, Capability, Lockout};
    let limit = u16::try_from(rules.max_failed_attempts).unwrap_or(u16::MAX);
    let lockout = match (limit, rules.on_max_failed) {
        (0, _) => Lockout::Off,
        (n, coffer_server::policy::FailedAction::Lock) => Lockout::Lock(n),
        (n, coffer_server::policy::FailedAction::Wipe) => Lockout::Wipe(n),
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

/// The organization's policy, enforced at every unlock of an enrolled
/// vault (but `coffer check-in`'s): past the offline grace's days without a
/// check-in the vault wipes itself, past its hours it refuses until the
/// device checks in; a passphrase slot below the policy's KDF floor is
/// re-derived with the floor.
pub fn enforce(
    global: &Global,
    vault: coffer_device::UnlockedVault,
    offered: &crate::input::Offered,
) -> Result<coffer_device::UnlockedVault, CliError> {
    enforce_as(global, vault, offered, Grace::Full)
}

/// How much of the offline grace a command is held to.
#[derive(PartialEq)]
enum Grace {
    /// Block, and wipe.
    Full,
    /// Wipe only: a check-in is how a blocked device gets back.
    WipeOnly,
}

/// Records a successful check-in: the grace counts from the server's time,
/// which also becomes the vault's latest time seen (so a device clock that
/// ran ahead, set so on purpose or not, neither stretches the grace nor
/// blocks the device once it has checked in).
fn record_check_in(
    vault: &mut coffer_device::UnlockedVault,
    server_time: i64,
) -> Result<(), CliError> {
    vault.set_setting(
        learned::LAST_CHECK_IN,
        Some(server_time.to_string().as_bytes()),
    )?;
    let trusted = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(server_time).unwrap_or(0));
    vault.set_trusted_time(trusted)?;
    Ok(())
}

fn enforce_as(
    global: &Global,
    mut vault: coffer_device::UnlockedVault,
    offered: &crate::input::Offered,
    grace: Grace,
) -> Result<coffer_device::UnlockedVault, CliError> {
    let Some(policy) = held_policy(&vault)? else {
        return Ok(vault);
    };
    let last = text_setting(&vault, learned::LAST_CHECK_IN)?
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(0);
    let now = unix(now()).max(unix(vault.latest_time_seen()));
    let elapsed = now.saturating_sub(last);
    let offline = &policy.rules.offline;
    if offline.wipe_after_days > 0 && elapsed > i64::from(offline.wipe_after_days) * 86_400 {
        let handle = vault.vault().clone();
        drop(vault);
        handle.wipe()?;
        return Err(CliError {
            exit: ExitCode::Wiped,
            code: "wiped_offline_too_long",
            message: format!(
                "vault '{}' went {} days without a check-in (the policy allows {}): it has wiped itself",
                global.vault,
                elapsed / 86_400,
                offline.wipe_after_days
            ),
        });
    }
    if grace == Grace::Full
        && offline.block_after_hours > 0
        && elapsed > i64::from(offline.block_after_hours) * 3600
    {
        return Err(CliError {
            exit: ExitCode::CheckInRequired,
            code: "check_in_required",
            message: format!(
                "no check-in for {} hours (the policy allows {}): run 'coffer check-in' with the network",
                elapsed / 3600,
                offline.block_after_hours
            ),
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
        vault.set_idle_timeout(Some(std::time::Duration::from_secs(u64::from(
            policy.rules.idle_lock_secs,
        ))));
    }
    // The policy's lockout and capabilities hold at every unlock: a local
    // change (`coffer lockout --off`, an app added with more) does not
    // outlive the next one. Best effort: a vault opened by a temporary key
    // may not change them, and is not refused for it.
    let _ = apply_policy(&mut vault, &policy.rules);
    if let crate::input::Offered::Passphrase(passphrase) = offered {
        let floor = &policy.rules.min_kdf;
        let opened = vault
            .slots()
            .into_iter()
            .find(|s| s.index == vault.opened_slot());
        if let Some(slot) = opened {
            // Each parameter raised to the floor, none lowered. PBKDF2 and
            // scrypt slots (kept for compliance) are left as they are: the
            // floor is Argon2id's.
            if let coffer_device::SlotKind::Passphrase(coffer_device::KdfParams::Argon2id {
                memory_kib,
                iterations,
                parallelism,
            }) = slot.kind
            {
                if memory_kib < floor.memory_kib || iterations < floor.iterations {
                    let stronger = coffer_device::KdfParams::Argon2id {
                        memory_kib: memory_kib.max(floor.memory_kib),
                        iterations: iterations.max(floor.iterations),
                        parallelism: parallelism.max(floor.parallelism),
                    };
                    vault.change_passphrase(Some(&slot.name), passphrase, &stronger)?;
                }
            }
        }
    }
    Ok(vault)
}

/// The prefix of queued batches in the vault's settings.
const QUEUE: &str = "control.queue.";

/// Readings from `text`: a JSON array of readings, a batch object with
/// `readings`, or one reading object per line.
fn parse_readings(text: &str) -> Result<Vec<Value>, CliError> {
    let bad = |e: &dyn std::fmt::Display| {
        CliError::usage(format!(
            "the readings are not JSON (an array, {{\"readings\": [...]}}, or one object per line): {e}"
        ))
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(Value::Object(batch)) if batch.contains_key("readings") => Ok(batch
            .get("readings")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()),
        Ok(one @ Value::Object(_)) => Ok(vec![one]),
        Ok(_) => Err(CliError::usage("the readings must be JSON objects")),
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| bad(&e)))
            .collect(),
    }
}

/// `coffer deliver [FILE|-]`: queues the readings as one batch in the
/// vault's encrypted settings, then sends every queued batch, oldest first,
/// each with its own batch id (so a retry is stored once), retrying a lost
/// connection; offline, the batches wait for the next delivery.
pub fn deliver(
    global: &Global,
    input: Option<&std::path::Path>,
    retries: u32,
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
    let readings = parse_readings(&text)?;
    if readings.len() > coffer_server::data::MAX_READINGS {
        return Err(CliError::usage(format!(
            "at most {} readings per delivery",
            coffer_server::data::MAX_READINGS
        )));
    }
    if !readings.is_empty() {
        // Queued first, durably: a crash or a lost connection loses nothing.
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let batch_id = format!("{:020}-{}", unix(now()), hex::encode(id));
        let batch = json!({"batch_id": batch_id, "readings": readings}).to_string();
        // Only what the server will take is queued: a batch it refuses
        // would otherwise wait (or be dropped) after the input is gone.
        coffer_server::data::Batch::from_json(batch.as_bytes())
            .and_then(|b| b.check())
            .map_err(|e| CliError::usage(format!("the readings are refused: {e}")))?;
        if batch.len() > coffer_server::api::MAX_BODY {
            return Err(CliError::usage(format!(
                "the readings come to {} bytes, over the server's {} per batch: deliver them in smaller parts",
                batch.len(),
                coffer_server::api::MAX_BODY
            )));
        }
        vault.set_setting(&format!("{QUEUE}{batch_id}"), Some(batch.as_bytes()))?;
    }
    // Check in first, as every command that talks to the server does (a
    // wipe order is carried out before anything is sent); offline, the
    // batches stay queued.
    let queued = vault.setting_keys(QUEUE)?.len();
    let vault = match check_in_keeping(global, vault) {
        Ok((_, vault)) => vault,
        Err(e) if unreachable(&e) => return Ok(queue_report(0, queued)),
        Err(e) => return Err(e),
    };

    let enrolled = enrollment(&vault)?;
    let http = client(&enrolled.trust)?;
    let url = format!("{}/v1/device/data", enrolled.server.trim_end_matches('/'));
    let mut delivered = 0;
    let mut rejected = Vec::new();
    for key in vault.setting_keys(QUEUE)? {
        let Some(batch) = vault.setting(&key)? else {
            continue;
        };
        let mut attempt = 0;
        let sent = loop {
            let result = answer(
                http.post(&url)
                    .header("X-Auth-Token", enrolled.token.as_str())
                    .header("content-type", "application/json")
                    .body(batch.clone())
                    .send(),
            );
            match result {
                Err(e) if unreachable(&e) && attempt < retries => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(250 << attempt.min(4)));
                }
                other => break other,
            }
        };
        match sent {
            Ok(_) => {
                vault.set_setting(&key, None)?;
                delivered += 1;
            }
            Err(e) if unreachable(&e) => break,
            Err(e) if e.exit == ExitCode::Usage || e.exit == ExitCode::Conflict => {
                // The server will never take this batch: keep it out of
                // the queue, and say so.
                vault.set_setting(&key, None)?;
                rejected.push(e.message);
            }
            Err(e) => return Err(e),
        }
    }
    let mut report = queue_report(delivered, vault.setting_keys(QUEUE)?.len());
    if !rejected.is_empty() {
        report.json["rejected"] = json!(rejected);
        report.text.push_str(&format!(
            "\n{} batch(es) refused by the server: {}",
            rejected.len(),
            rejected.join("; ")
        ));
    }
    Ok(report)
}

fn queue_report(delivered: usize, queued: usize) -> Report {
    Report {
        json: json!({"delivered": delivered, "queued": queued}),
        text: format!(
            "Delivered {delivered} batch(es); {queued} waiting in the vault's queue{}.",
            if queued > 0 {
                " for the next delivery"
            } else {
                ""
            }
        ),
    }
}
