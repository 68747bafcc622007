//! TLS for `coffer serve`: rustls with the ring provider, from certificate
//! and key files, or a development certificate (self-signed, made once and
//! kept, so that its fingerprint stays the same for the clients that pin it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// How the server carries its traffic.
#[derive(Debug, Clone, Default)]
pub enum TlsSetting {
    /// Plain HTTP (loopback only, unless forced).
    #[default]
    Off,
    /// A PEM certificate chain and its PEM private key.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// A self-signed certificate for localhost, made on first use and kept
    /// in `dir` (`dev-tls-cert.pem`, `dev-tls-key.pem`).
    Dev {
        /// Where the certificate and key are kept.
        dir: PathBuf,
    },
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("cannot use {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    /// The key file holds no usable private key.
    #[error("no usable private key in {0}")]
    NoKey(PathBuf),
    /// rustls refused the certificate and key, or the development
    /// certificate could not be made.
    #[error("TLS setup failed: {0}")]
    Setup(String),
    /// The development certificate's key is readable or writable by other
    /// users of the host.
    #[error(
        "{path} is open to other users of this host (mode {mode:04o}); \
         `chmod 600 {path}` and start again"
    )]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// A ready TLS acceptor and the certificate's fingerprint.
#[derive(Clone)]
pub struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    /// SHA-256 of the leaf certificate (DER), as `AB:CD:…`: what clients pin.
    pub fingerprint: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::File {
        path: path.to_owned(),
        source,
    })
}

/// The SHA-256 fingerprint of a DER certificate, `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Loads what `setting` asks for; `None` for plain HTTP.
pub fn load(setting: &TlsSetting) -> Result<Option<Tls>, TlsError> {
    let (cert_pem, key_pem, cert_path, key_path) = match setting {
        TlsSetting::Off => return Ok(None),
        TlsSetting::Files { cert, key } => (read(cert)?, read(key)?, cert.clone(), key.clone()),
        TlsSetting::Dev { dir } => {
            let (cert, key) = dev_certificate(dir)?;
            (cert, key, dir.join(DEV_CERT), dir.join(DEV_KEY))
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate(cert_path.clone()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| TlsError::NoCertificate(cert_path.clone()))?;
    let fingerprint = fingerprint(leaf.as_ref());
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey(key_path))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    }))
}

/// The development certificate's file in its directory.
pub const DEV_CERT: &str = "dev-tls-cert.pem";
const DEV_KEY: &str = "dev-tls-key.pem";

/// The development certificate in `dir`, made on first use.
fn dev_certificate(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let (cert_path, key_path) = (dir.join(DEV_CERT), dir.join(DEV_KEY));
    if cert_path.is_file() && key_path.is_file() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_path)
                .map_err(|source| TlsError::File {
                    path: key_path.clone(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(TlsError::KeyExposed {
                    path: key_path,
                    mode: mode & 0o7777,
                });
            }
        }
        return Ok((read(&cert_path)?, read(&key_path)?));
    }
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Setup(e.to_string()))?;
    let cert = made.cert.pem().into_bytes();
    let key = zeroize::Zeroizing::new(made.key_pair.serialize_pem().into_bytes());
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::File { path, source }
    };
    create_private_dir(dir).map_err(io(dir))?;
    write_private(&key_path, &key).map_err(io(&key_path))?;
    std::fs::write(&cert_path, &cert).map_err(io(&cert_path))?;
    Ok((cert, key.to_vec()))
}

/// Makes `dir` (and its missing parents) readable by its owner only; an
/// existing directory is left as it is.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
