//! What enrollment leaves on the device: the enrollment itself in the
//! vault's encrypted settings (`control.*`, docs/formats/stores.md), and
//! the release file, the device's one credential before unlock
//! (docs/protocol.md, "The release token").

use std::path::Path;

use coffer_device::UnlockedVault;
use coffer_protocol::WireSecret;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::transport::{Server, Trust};

/// Setting keys of the vault's enrollment (all under
/// [`coffer_device::vault::MANAGED_SETTINGS_PREFIX`], which makes the
/// vault managed).
pub(crate) mod key {
    pub const SERVER: &str = "control.server";
    pub const PIN_SHA256: &str = "control.pin_sha256";
    pub const CA_CERT: &str = "control.ca_cert";
    pub const DEVICE_ID: &str = "control.device_id";
    pub const ORGANIZATION_ID: &str = "control.organization_id";
    pub const DEVICE_TOKEN: &str = "control.device_token";
    pub const POLICY_KEY: &str = "control.policy_key";
    /// The server's time at the last successful check-in.
    pub const LAST_CHECK_IN: &str = "control.last_check_in";
    pub const POLICY_VERSION: &str = "control.policy_version";
    pub const POLICY_DOCUMENT: &str = "control.policy_document";
    pub const POLICY_SIGNATURE: &str = "control.policy_signature";
    /// The server holds an escrow key that no longer opens the vault.
    pub const ESCROW_STALE: &str = "control.escrow_stale";
    /// The prefix of queued delivery batches.
    pub const QUEUE: &str = "control.queue.";
    /// The last queued batch's number (queue order).
    pub const QUEUE_SEQUENCE: &str = "control.queue_sequence";
}

/// The name of the escrow slot enrollment adds.
pub const ESCROW_SLOT: &str = "escrow";

/// The vault's enrollment, read back from its settings.
pub struct Enrollment {
    /// The control plane.
    pub server: Server,
    /// The device's token.
    pub token: WireSecret,
    /// The device's id.
    pub device_id: i64,
    /// Its organization.
    pub organization_id: i64,
    /// The organization's pinned policy key.
    pub policy_key: [u8; 32],
}

pub(crate) fn text_setting(vault: &UnlockedVault, key: &str) -> Result<Option<String>> {
    vault
        .setting(key)?
        .map(|v| {
            String::from_utf8(v).map_err(|_| Error::DamagedEnrollment("a setting is not text"))
        })
        .transpose()
}

pub(crate) fn number_setting(vault: &UnlockedVault, key: &str) -> Result<Option<i64>> {
    text_setting(vault, key)?
        .map(|t| {
            t.parse()
                .map_err(|_| Error::DamagedEnrollment("a number setting is not a number"))
        })
        .transpose()
}

impl Enrollment {
    /// The enrollment of `vault`; [`Error::NotEnrolled`] without one.
    pub fn read(vault: &UnlockedVault) -> Result<Enrollment> {
        let Some(token) = text_setting(vault, key::DEVICE_TOKEN)? else {
            return Err(Error::NotEnrolled);
        };
        let token = WireSecret::new(token);
        let missing = |what| Error::DamagedEnrollment(what);
        let url = text_setting(vault, key::SERVER)?.ok_or(missing("no server"))?;
        let trust = match (
            text_setting(vault, key::PIN_SHA256)?,
            vault.setting(key::CA_CERT)?,
        ) {
            (Some(pin), _) => Trust::parse_pin(&pin)?,
            (None, Some(pem)) => Trust::Ca(pem),
            (None, None) => Trust::System,
        };
        let mut policy_key = [0u8; 32];
        hex::decode_to_slice(
            text_setting(vault, key::POLICY_KEY)?.ok_or(missing("no policy key"))?,
            &mut policy_key,
        )
        .map_err(|_| missing("the pinned policy key is not hex of 32 bytes"))?;
        Ok(Enrollment {
            server: Server::new(&url, trust)?,
            token,
            device_id: number_setting(vault, key::DEVICE_ID)?.ok_or(missing("no device id"))?,
            organization_id: number_setting(vault, key::ORGANIZATION_ID)?
                .ok_or(missing("no organization id"))?,
            policy_key,
        })
    }

    /// Writes the enrollment into the vault's settings, the device token
    /// last (its presence is what "enrolled" means).
    pub(crate) fn write(&self, vault: &UnlockedVault) -> Result<()> {
        let (pin, ca) = match self.server.trust() {
            Trust::Pin(pin) => (Some(hex::encode(pin).into_bytes()), None),
            Trust::Ca(pem) => (None, Some(pem.clone())),
            Trust::System => (None, None),
        };
        for (key, value) in [
            (key::SERVER, Some(self.server.url().as_bytes().to_vec())),
            (key::PIN_SHA256, pin),
            (key::CA_CERT, ca),
            (
                key::DEVICE_ID,
                Some(self.device_id.to_string().into_bytes()),
            ),
            (
                key::ORGANIZATION_ID,
                Some(self.organization_id.to_string().into_bytes()),
            ),
            (
                key::POLICY_KEY,
                Some(hex::encode(self.policy_key).into_bytes()),
            ),
        ] {
            vault.set_setting(key, value.as_deref())?;
        }
        vault.set_setting(
            key::DEVICE_TOKEN,
            Some(self.token.expose_secret().as_bytes()),
        )?;
        Ok(())
    }
}

/// The release file's name, in the vault's directory.
pub const RELEASE_FILE: &str = "control.json";
const RELEASE_FORMAT: &str = "coffer-device-release/1";

/// What the release file holds: how to reach the server and the release
/// token, before anything is unlocked.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct ReleaseFile {
    format: String,
    server: String,
    pin_sha256: Option<String>,
    ca_cert: Option<String>,
    pub device_id: i64,
    pub release_token: WireSecret,
    /// The held policy refuses debuggers: refused before the next unlock
    /// runs its KDF, not only after it (a hint: the policy itself is
    /// checked after every unlock anyway).
    #[serde(default)]
    pub refuse_debugger: bool,
}

impl ReleaseFile {
    pub(crate) fn new(server: &Server, device_id: i64, release_token: WireSecret) -> Self {
        ReleaseFile {
            format: RELEASE_FORMAT.into(),
            server: server.url().to_owned(),
            pin_sha256: match server.trust() {
                Trust::Pin(pin) => Some(hex::encode(pin)),
                _ => None,
            },
            ca_cert: match server.trust() {
                Trust::Ca(pem) => Some(String::from_utf8_lossy(pem).into_owned()),
                _ => None,
            },
            device_id,
            release_token,
            refuse_debugger: false,
        }
    }

    pub(crate) fn server(&self) -> Result<Server> {
        let trust = match (&self.pin_sha256, &self.ca_cert) {
            (Some(pin), _) => Trust::parse_pin(pin)?,
            (None, Some(pem)) => Trust::Ca(pem.clone().into_bytes()),
            (None, None) => Trust::System,
        };
        Server::new(&self.server, trust)
    }

    /// Writes the file atomically, 0600.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        let failed = |e: std::io::Error| {
            Error::Device(coffer_device::Error::Io {
                op: "writing the release file",
                path: dir.join(RELEASE_FILE),
                source: e,
            })
        };
        let text = Zeroizing::new(
            serde_json::to_vec(self)
                .map_err(|_| Error::DamagedReleaseFile("cannot encode".into()))?,
        );
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

    /// The file of the vault in `dir`, if there is one.
    pub(crate) fn read(dir: &Path) -> Result<Option<ReleaseFile>> {
        let text = match std::fs::read(dir.join(RELEASE_FILE)) {
            Ok(text) => Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::DamagedReleaseFile(e.kind().to_string())),
        };
        if text.len() > 256 * 1024 {
            return Err(Error::DamagedReleaseFile("it is too large".into()));
        }
        let file: ReleaseFile = serde_json::from_slice(&text)
            .map_err(|_| Error::DamagedReleaseFile("it is not its JSON: enroll again".into()))?;
        if file.format != RELEASE_FORMAT {
            return Err(Error::DamagedReleaseFile(format!(
                "it has the unknown format {:?}",
                crate::transport::bounded(&file.format, 64)
            )));
        }
        file.server()?;
        Ok(Some(file))
    }
}
