//! `coffer serve`: the control plane in the foreground, until SIGINT
//! (Ctrl-C) or SIGTERM (systemd, container runtimes): then it drains the
//! requests in flight and closes the database.

use std::net::SocketAddr;

use coffer_server::{ServeConfig, Server};

use crate::cli::Global;
use crate::commands::Report;
use crate::exit::CliError;

/// The TLS the command line asked for.
pub enum Tls {
    Off,
    Files(std::path::PathBuf, std::path::PathBuf),
    Dev,
}

/// The server's own directory: the default database, the master key, the
/// development certificate. Made readable by its owner only (0700); the
/// server refuses database files in it that others can read.
pub(crate) fn server_dir() -> Result<std::path::PathBuf, CliError> {
    let dir = dirs::data_dir()
        .map(|d| d.join("coffer-server"))
        .ok_or_else(|| {
            CliError::usage("no data directory known for this user: pass --database-url")
        })?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(&dir)
        .map_err(|e| CliError::other(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// `coffer demo --console`: a control plane on a new SQLite database in a
/// temporary directory, under a new master key, filled with sample data
/// through its own API, served on loopback until SIGINT or SIGTERM.
pub fn demo_console(global: &Global, listen: SocketAddr, keep: bool) -> Result<Report, CliError> {
    let dir = tempfile::Builder::new()
        .prefix("coffer-console-demo-")
        .tempdir()
        .map_err(|e| CliError::other(format!("cannot create a temporary directory: {e}")))?;
    // The key is kept beside the database (private to this user), so that
    // a database kept with --keep can be served again.
    let key_file = dir.path().join("master.key");
    let (master, _) = coffer_server::keys::MasterKey::load_or_create(&key_file)
        .map_err(|e| CliError::other(format!("cannot make a master key: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the async runtime: {e}")))?;
    let database = dir.path().join("server.db");
    runtime.block_on(async {
        let stop = stop_signal()?;
        let mut server = Server::bind(&ServeConfig {
            listen,
            database_url: format!("sqlite://{}", database.display()),
            force_plain: false,
            session_ttl: coffer_server::DEFAULT_SESSION_TTL,
            login_limits: coffer_server::LoginLimits::default(),
            tls: coffer_server::TlsSetting::Off,
            keys: std::sync::Arc::new(coffer_server::keys::Keyring::new(master, None)),
            adopt_unkeyed_audit: false,
            trusted_proxies: Default::default(),
            shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
        })
        .await
        .map_err(|e| CliError::usage(format!("cannot start the demo server: {e}")))?;
        let login = server
            .seed_demo()
            .await
            .map_err(|e| CliError::other(e.to_string()))?;
        let addr = server
            .local_addr()
            .map_err(|e| CliError::other(e.to_string()))?;
        let console = format!("http://{addr}/console");
        // A throwaway account on a throwaway server: its password is
        // shown, or no one could sign in.
        let password = secrecy::ExposeSecret::expose_secret(&login.password).to_owned();
        if global.json {
            println!(
                "{}",
                serde_json::json!({
                    "console": console,
                    "user": login.user,
                    "password": password,
                    "organization_id": login.organization_id,
                    "database": database.display().to_string(),
                })
            );
        } else {
            println!(
                "coffer demo: the admin console with sample data ({}) at\n\n    {console}\n\n\
                 Sign in as {} with the password {password}\n\
                 (a throwaway server: its database is {}{}).\n\
                 Press Ctrl-C to stop.",
                coffer_server::demo::DEMO_ORGANIZATION,
                login.user,
                database.display(),
                if keep {
                    ", kept"
                } else {
                    ", deleted at the end"
                },
            );
        }
        server
            .run(stop)
            .await
            .map_err(|e| CliError::other(format!("the demo server stopped: {e}")))
    })?;
    let kept = keep.then(|| dir.keep());
    Ok(Report {
        json: serde_json::json!({"stopped": true, "kept": kept}),
        text: match &kept {
            Some(path) => format!(
                "coffer demo: stopped; the database and its master key are kept in {0}: \
                 serve them again with\n\n    COFFER_MASTER_KEY_FILE={0}/master.key coffer serve \
                 --listen 127.0.0.1:8080 --database-url sqlite://{0}/server.db",
                path.display()
            ),
            None => "coffer demo: stopped".into(),
        },
    })
}

/// Completes at the first SIGINT or SIGTERM. The handlers are installed
/// when this is called, not when it is first awaited: a signal that comes
/// before the server runs must not kill the process the default way.
fn stop_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static, CliError> {
    let failed = |e: std::io::Error| CliError::other(format!("cannot handle signals: {e}"));
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(failed)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(failed)?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = failed;
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

pub(crate) fn default_database_url() -> Result<String, CliError> {
    Ok(format!(
        "sqlite://{}",
        server_dir()?.join("server.db").display()
    ))
}

/// What `coffer serve` was asked for.
pub struct Options<'a> {
    pub listen: SocketAddr,
    pub database_url: Option<&'a str>,
    pub force_plain: bool,
    pub tls: Tls,
    /// MQTT delivery's broker, when `--mqtt-broker` is given.
    pub mqtt: Option<coffer_server::mqtt::MqttSettings<'a>>,
    pub master_key_file: Option<&'a std::path::Path>,
    pub previous_master_key_file: Option<&'a std::path::Path>,
    pub adopt_unkeyed_audit: bool,
    pub trusted_proxies: coffer_server::client_addr::TrustedProxies,
    pub sync_retention: std::time::Duration,
    pub files: FileOptions<'a>,
    pub log_format: LogFormat,
}

/// How `coffer serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people; colour only when standard error is a terminal.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// The log's level when COFFER_LOG does not say: info, but for the
/// PostgreSQL driver's notices at every start ("relation already exists,
/// skipping" from the idempotent migrations), which say nothing wrong.
const DEFAULT_LOG_LEVEL: &str = "info,tokio_postgres=warn";

/// Starts the log on standard error (once per process).
fn start_log(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_LEVEL));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Where synced files go, and their limits.
pub struct FileOptions<'a> {
    pub blob_dir: Option<&'a std::path::Path>,
    pub s3_bucket: Option<&'a str>,
    pub s3_endpoint: Option<&'a str>,
    pub s3_region: Option<&'a str>,
    pub s3_credentials_file: Option<&'a std::path::Path>,
    pub max_file_size: u64,
    pub org_file_quota: u64,
    pub upload_expiry: std::time::Duration,
    pub max_concurrent_pieces: usize,
}

/// The blob storage the options name: the S3 bucket, else the directory,
/// else `blobs` in the server's directory.
fn blob_storage(files: &FileOptions<'_>) -> Result<coffer_server::blobs::BlobStorage, CliError> {
    use coffer_server::blobs::{BlobStorage, S3Config, S3Credentials, DEFAULT_S3_REGION};
    let refused = |e: coffer_server::blobs::BlobError| {
        CliError::usage(format!("cannot start the server: {e}"))
    };
    match (files.s3_bucket, files.blob_dir) {
        (Some(bucket), _) => {
            let credentials = match files.s3_credentials_file {
                Some(path) => S3Credentials::from_file(path),
                None => S3Credentials::from_env(),
            }
            .map_err(refused)?;
            BlobStorage::s3(S3Config {
                bucket: bucket.to_owned(),
                endpoint: files.s3_endpoint.map(str::to_owned),
                region: files.s3_region.unwrap_or(DEFAULT_S3_REGION).to_owned(),
                credentials,
            })
            .map_err(refused)
        }
        (None, Some(dir)) => BlobStorage::local(dir).map_err(refused),
        (None, None) => BlobStorage::local(server_dir()?.join("blobs")).map_err(refused),
    }
}

/// The master key (made on first start at the default path), and the
/// previous one while rotating; and the key file if it was made now.
fn keyring(
    options: &Options<'_>,
) -> Result<(coffer_server::keys::Keyring, Option<std::path::PathBuf>), CliError> {
    use coffer_server::keys::{Keyring, MasterKey};
    let failed = |e: coffer_server::keys::KeyError| CliError::usage(e.to_string());
    let from_env = std::env::var("COFFER_MASTER_KEY")
        .ok()
        .map(zeroize::Zeroizing::new);
    let mut made = None;
    let current = match (options.master_key_file, from_env) {
        (Some(path), _) => MasterKey::load(path).map_err(failed)?,
        (None, Some(text)) => MasterKey::from_hex(&text).map_err(failed)?,
        (None, None) => {
            let path = server_dir()?.join("master.key");
            let (key, created) = MasterKey::load_or_create(&path).map_err(failed)?;
            // In the log (its format, its collector), not beside it.
            if created {
                tracing::warn!(
                    path = %path.display(),
                    "made a new master key: back it up"
                );
                made = Some(path);
            }
            tracing::warn!(
                "the master key is in the default place, beside the default database: a copy of that directory holds both. For production, keep it elsewhere (--master-key-file)"
            );
            key
        }
    };
    let previous = options
        .previous_master_key_file
        .map(MasterKey::load)
        .transpose()
        .map_err(failed)?;
    Ok((Keyring::new(current, previous), made))
}

pub fn run(global: &Global, options: Options<'_>) -> Result<Report, CliError> {
    // Before the first large buffer: a server's memory stays flat only if
    // its Argon2 buffers and file pieces go back to the system after use
    // (docs/benchmarks.md, files sync).
    let _ = coffer_sys::return_large_allocations_to_the_system();
    // Logs on stderr; COFFER_LOG=debug for more. Requests are never logged
    // with their query strings or headers (they could carry credentials).
    start_log(options.log_format);
    let (keys, made_key) = keyring(&options)?;
    let keys = std::sync::Arc::new(keys);
    let Options {
        listen,
        database_url,
        force_plain,
        tls,
        adopt_unkeyed_audit,
        trusted_proxies,
        sync_retention,
        files,
        mqtt,
        ..
    } = options;
    let storage = blob_storage(&files)?;
    let database_url = match database_url {
        Some(url) => url.to_owned(),
        None => default_database_url()?,
    };
    let tls_setting = match tls {
        Tls::Off => coffer_server::TlsSetting::Off,
        Tls::Files(cert, key) => coffer_server::TlsSetting::Files { cert, key },
        Tls::Dev => coffer_server::TlsSetting::Dev { dir: server_dir()? },
    };
    // Clients trust the development certificate by this file.
    let dev_cert = match &tls_setting {
        coffer_server::TlsSetting::Dev { dir } => Some(dir.join(coffer_server::tls::DEV_CERT)),
        _ => None,
    };
    // Checked before anything starts; the development certificate is
    // made by the bind below, so it is read after it.
    let mqtt_settings = mqtt;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let stop = stop_signal()?;
        // A bucket that is not there, or credentials it refuses, stop the
        // start (not the first upload).
        storage
            .probe()
            .await
            .map_err(|e| CliError::usage(format!("cannot start the server: {e}")))?;
        let blob_kind = storage.kind();
        let server = Server::bind(&ServeConfig {
            listen,
            database_url,
            force_plain,
            session_ttl: coffer_server::DEFAULT_SESSION_TTL,
            login_limits: coffer_server::LoginLimits::default(),
            tls: tls_setting.clone(),
            keys,
            adopt_unkeyed_audit,
            trusted_proxies,
            shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
        })
        .await
        .map(|server| {
            server
                .with_sync_retention(sync_retention)
                .with_blob_storage(storage)
                .with_max_file_size(files.max_file_size)
                .with_org_file_quota(files.org_file_quota)
                .with_upload_expiry(files.upload_expiry)
                .with_max_concurrent_pieces(files.max_concurrent_pieces)
        })
        .and_then(|server| match &mqtt_settings {
            None => Ok(server),
            Some(settings) => coffer_server::mqtt::MqttConfig::from_settings(settings, &tls_setting)
                .map(|config| server.with_mqtt(config))
                .map_err(|e| coffer_server::serve::ServeError::Io(std::io::Error::other(e.to_string()))),
        })
        .map_err(|e| {
            // A key made for a database that turned out to be under another
            // one is of no use: do not leave it behind to confuse.
            // Only when the key was refused: once the database has been
            // put under it (a later step failed: the port, say), it is the
            // database's key and must stay.
            if matches!(e, coffer_server::serve::ServeError::MasterKey(_)) {
                if let Some(path) = &made_key {
                    let _ = std::fs::remove_file(path);
                }
            }
            CliError::usage(format!("cannot start the server: {e}"))
        })?;
        let addr = server
            .local_addr()
            .map_err(|e| CliError::other(e.to_string()))?;
        let scheme = if server.tls_fingerprint().is_some() { "https" } else { "http" };
        if global.json {
            println!(
                "{}",
                serde_json::json!({
                    "listening": format!("{scheme}://{addr}"),
                    "storage": server.backend(),
                    "blob_storage": blob_kind,
                    "tls_sha256": server.tls_fingerprint(),
                    "console": format!("{scheme}://{addr}/console"),
                    "setup_token": server.setup_token(),
                })
            );
        } else {
            println!("coffer serve: listening on {scheme}://{addr} (storage: {})", server.backend());
            if let Some(fingerprint) = server.tls_fingerprint() {
                println!("TLS certificate SHA-256 (pin it in clients): {fingerprint}");
            }
            println!("Admin console: {scheme}://{addr}/console");
            if let Some(token) = server.setup_token() {
                // The CLI asks for the token and the password (twice): none
                // of them goes on a command line or into a shell history.
                let ca = match &dev_cert {
                    Some(path) => format!(" --ca-cert {}", path.display()),
                    None => String::new(),
                };
                println!(
                    "\nThis server has no organization yet. One-time setup token (shown once; a restart replaces it):\n\n    {token}\n\n\
                     Set up the first organization and its owner (it asks for the token, then the owner's password twice):\n\n    \
                     coffer admin --server {scheme}://{addr}{ca} setup --organization Acme --owner alice\n"
                );
            }
        }
        server
            .run(stop)
            .await
            .map_err(|e| CliError::other(format!("the server stopped: {e}")))
    })?;
    Ok(Report {
        json: serde_json::json!({"stopped": true}),
        text: "coffer serve: stopped".into(),
    })
}
