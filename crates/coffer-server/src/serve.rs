//! `coffer serve`: check that the database's files are private, open the
//! storage, bring the schema up to date, issue the setup token of an empty
//! server, bind the listener, serve; on shutdown, drain and close.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand_core::RngCore;
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

use crate::api::{self, AppState};
use crate::blobs::BlobStorage;
use crate::files::FileLimits;
use crate::keys::{KeyError, Keyring, CHECK_CONTEXT, CHECK_PLAINTEXT};
use crate::listen::{check_listen, ListenError, Transport};
use crate::store::{AuditMac, Store, StoreError};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `postgres://…`, or a SQLite file (`sqlite://PATH` or a path).
    pub database_url: String,
    /// Serve plain HTTP off loopback (behind a TLS-terminating proxy only).
    pub force_plain: bool,
    /// How long a login session lasts.
    pub session_ttl: std::time::Duration,
    /// Brute-force limits on login.
    pub login_limits: crate::api::LoginLimits,
    /// TLS: off (loopback only), certificate files, or a development certificate.
    pub tls: crate::tls::TlsSetting,
    /// The master key (and, while rotating, the previous one).
    pub keys: std::sync::Arc<crate::keys::Keyring>,
    /// Put the audit trail of a database from before the master key under
    /// it as it stands (MAC every row). Only on the operator's word: a
    /// trail without MACs could have been rewritten by anyone with write
    /// access to the database, and adopting it would vouch for that.
    pub adopt_unkeyed_audit: bool,
    /// Proxies whose forwarding header names the client (`--trusted-proxy`);
    /// none by default: every client is its TCP peer.
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// On shutdown, how long requests in flight may take to finish before
    /// their connections are closed.
    pub shutdown_grace: Duration,
}

/// The default session lifetime: a working day.
pub const DEFAULT_SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The default shutdown grace period. `docker stop` waits 10 s before
/// SIGKILL, systemd 90 s, Kubernetes 30 s: the drain fits the shortest.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// The default retention of sync history (tombstones, change log, batch
/// answers): 180 days. An organization whose policy wipes devices offline
/// longer keeps it that long plus seven days.
pub const DEFAULT_SYNC_RETENTION: Duration = Duration::from_secs(180 * 86_400);

/// How often `coffer serve` compacts sync history (and once at start).
const COMPACTION_EVERY: Duration = Duration::from_secs(3600);

/// How long a TLS handshake may take: a slow-handshake attack must not
/// hold tasks forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listener configuration is refused.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The storage could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The master key does not open this database's sealed values.
    #[error("master key: {0}")]
    MasterKey(#[from] crate::keys::KeyError),
    /// The address could not be bound, or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A file of the SQLite database (the database, its `-wal`, `-shm` or
    /// `-journal`) is readable or writable by other users of the host: they
    /// could read the password hashes, the audit trail and the readings.
    #[error(
        "{path} is open to other users of this host (mode {mode:04o}); \
         make it private (`chmod 600 {path}`; the database's -wal and -shm files too) and start again"
    )]
    DatabaseFileExposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The SQLite database's directory is writable by other users of the
    /// host (and not sticky, as /tmp is): they could replace the database
    /// or its -wal file.
    #[error(
        "other users of this host can write to {path} (mode {mode:04o}), \
         the directory of the database, and so replace it; `chmod 700 {path}` (or keep the \
         database in a directory of its own) and start again"
    )]
    DatabaseDirectoryExposed {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The SQLite file a database URL names (as [`Store::open`] reads it), or
/// `None` for PostgreSQL, an in-memory database or a `file:` URI.
pub(crate) fn sqlite_path(database_url: &str) -> Option<PathBuf> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        return None;
    }
    let path = database_url
        .strip_prefix("sqlite://")
        .unwrap_or(database_url);
    if path.is_empty() || path == ":memory:" || path.starts_with("file:") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// The files SQLite keeps beside a database.
fn sqlite_companions(path: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [with("-wal"), with("-shm"), with("-journal")]
}

/// The rule for a SQLite database's files (docs/server.md, "Running it"):
/// the database and its -wal, -shm and -journal files must give other
/// users nothing (no group or other bits: refused otherwise, with the
/// `chmod` that fixes it); its directory must not be writable by others
/// unless sticky (refused otherwise), and is warned about if others can
/// list it. What does not exist yet is made private by
/// [`Store::open`]: the directory 0700, the file 0600 (SQLite gives its
/// -wal and -shm files the database's mode).
#[cfg(unix)]
fn check_sqlite_permissions(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).ok().map(|m| m.permissions().mode());
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    if let Some(bits) = mode(&dir) {
        let sticky = bits & 0o1000 != 0;
        if bits & 0o022 != 0 && !sticky {
            return Err(ServeError::DatabaseDirectoryExposed {
                path: dir,
                mode: bits & 0o7777,
            });
        }
        if bits & 0o077 != 0 {
            tracing::warn!(
                directory = %dir.display(),
                mode = format!("{:04o}", bits & 0o7777),
                "other users of this host can list the database's directory (the files themselves are private); `chmod 700` it, or keep the database in a directory of its own"
            );
        }
    }
    let [wal, shm, journal] = sqlite_companions(path);
    for file in [path.to_owned(), wal, shm, journal] {
        if let Some(bits) = mode(&file) {
            if bits & 0o077 != 0 {
                return Err(ServeError::DatabaseFileExposed {
                    path: file,
                    mode: bits & 0o7777,
                });
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_sqlite_permissions(_path: &Path) -> Result<(), ServeError> {
    Ok(())
}

/// Checks that the database is under this server's master key, and puts
/// it there: a new database (or one from before the master key) gets its
/// check and every audit row its MAC; with a previous key (a rotation),
/// every value and audit MAC still under the previous key moves to the new
/// one, at every such start, so that what processes still running with the
/// old key wrote meanwhile is moved too. Without a previous key, a database
/// holding anything under another key is refused: destroying the old key
/// too early loses nothing. The check is compared and swapped, so two
/// processes with different keys cannot both adopt a database.
async fn adopt_master_key(
    store: &Store,
    keys: &Keyring,
    adopt_unkeyed_audit: bool,
) -> Result<(), ServeError> {
    for _ in 0..5 {
        if adopt_once(store, keys, adopt_unkeyed_audit).await? {
            return Ok(());
        }
    }
    Err(ServeError::Io(std::io::Error::other(
        "the master key check keeps changing under this server: another process is adopting the database with another key",
    )))
}

/// One attempt; false if another process changed the check meanwhile.
async fn adopt_once(
    store: &Store,
    keys: &Keyring,
    adopt_unkeyed_audit: bool,
) -> Result<bool, ServeError> {
    let check = store.master_key_check().await?;
    let (mut resealed, mut macs) = (Vec::new(), Vec::new());
    match &check {
        Some(check) => {
            if *keys.open(CHECK_CONTEXT, check)? != *CHECK_PLAINTEXT {
                return Err(KeyError::Tampered.into());
            }
            if !keys.has_previous() {
                // No sealed value may be left under another key: it would
                // be lost. Audit MACs under another key (rows an old
                // process wrote, or forged ones) are only reported: the
                // trail's check shows them, and refusing to start on them
                // would let anyone who can write one row stop the server.
                if store
                    .sealed_values()
                    .await?
                    .iter()
                    .any(|v| !keys.is_current(&v.sealed))
                {
                    return Err(KeyError::Stale.into());
                }
                let current = keys.current().id();
                let foreign = store.foreign_audit_macs(&format!("{current}:")).await?;
                if foreign > 0 {
                    tracing::warn!(
                        rows = foreign,
                        "audit rows carry a MAC under another master key: if a rotation is not finished, start once more with the previous key; otherwise they were forged"
                    );
                }
                return Ok(true);
            }
            for value in store.sealed_values().await? {
                if keys.is_current(&value.sealed) {
                    continue;
                }
                let context = value.kind.context(value.id);
                let plain = keys.open(&context, &value.sealed)?;
                let new = keys.seal(&context, &plain)?;
                resealed.push((value, new));
            }
            for row in store.audit_rows().await? {
                if let Some(new) = row
                    .mac
                    .as_deref()
                    .and_then(|mac| keys.audit_remac(&row.hash, mac))
                {
                    macs.push(AuditMac {
                        id: row.id,
                        old: row.mac,
                        new,
                    });
                }
            }
            if resealed.is_empty() && macs.is_empty() && keys.is_current(check) {
                return Ok(true);
            }
        }
        None => {
            // Never under a key: a new database, or one from before the
            // master key. A database that holds sealed values or MACs but no
            // check has had its check deleted: adopting it would launder
            // whatever was done to the trail. A trail without MACs is
            // adopted only on the operator's word.
            let rows = store.audit_rows().await?;
            if !store.sealed_values().await?.is_empty() || rows.iter().any(|r| r.mac.is_some()) {
                return Err(KeyError::Tampered.into());
            }
            if !rows.is_empty() && !adopt_unkeyed_audit {
                return Err(KeyError::UnkeyedAudit { rows: rows.len() }.into());
            }
            macs = rows
                .iter()
                .map(|row| AuditMac {
                    id: row.id,
                    old: None,
                    new: keys.audit_mac(&row.hash),
                })
                .collect();
        }
    }
    let (values, rows) = (resealed.len(), macs.len());
    let new_check = keys.seal(CHECK_CONTEXT, CHECK_PLAINTEXT)?;
    if !store
        .reseal(resealed, macs, check.as_deref(), &new_check)
        .await?
    {
        return Ok(false);
    }
    tracing::info!(
        key_id = %keys.current().id(),
        values,
        audit_rows = rows,
        "database put under this master key"
    );
    Ok(true)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Compacts sync history now and then every hour, until aborted; and
/// collects the files' garbage (expired uploads, blobs no record has
/// referenced for the retention, their objects).
/// Runs until `stop` turns true, and then only to the end of the pass in
/// progress: a pass aborted half way would leave its blocking database work
/// running after the server closed its store (on SQLite, a connection
/// closed late removes the WAL under whoever opens the database next).
async fn compact_hourly(
    store: Store,
    retention: Duration,
    storage: Option<BlobStorage>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    loop {
        if *stop.borrow() {
            return;
        }
        match store.compact_sync(now(), secs).await {
            Ok(done) => tracing::info!(
                tombstones = done.tombstones,
                changes = done.changes,
                batches = done.batches,
                "sync history compacted"
            ),
            Err(e) => tracing::warn!(error = %e, "sync compaction failed; trying again in an hour"),
        }
        if let Some(storage) = &storage {
            match crate::files::collect_garbage(&store, storage, now(), secs).await {
                Ok(done) => tracing::info!(
                    uploads_expired = done.uploads_expired,
                    uploads_forgotten = done.uploads_forgotten,
                    blobs = done.blobs,
                    prefixes = done.prefixes,
                    "files collected"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "files garbage collection failed; trying again in an hour")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(COMPACTION_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A server, bound and ready to run.
pub struct Server {
    listener: TcpListener,
    state: AppState,
    setup_token: Option<Zeroizing<String>>,
    tls: Option<crate::tls::Tls>,
    shutdown_grace: Duration,
    sqlite_path: Option<PathBuf>,
    sync_retention: Duration,
    blob_storage: Option<BlobStorage>,
    file_limits: FileLimits,
    mqtt: Option<crate::mqtt::MqttConfig>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("store", &self.state.store)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the storage and binds the listener. On a server with no
    /// organization yet, draws a new one-time setup token (replacing any
    /// earlier one) for [`Server::setup_token`] to show once.
    pub async fn bind(config: &ServeConfig) -> Result<Server, ServeError> {
        let tls = crate::tls::load(&config.tls)?;
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Plain
        };
        check_listen(config.listen, transport, config.force_plain)?;
        let sqlite_path = sqlite_path(&config.database_url);
        if let Some(path) = &sqlite_path {
            check_sqlite_permissions(path)?;
        }
        let store = Store::open(&config.database_url).await?;
        adopt_master_key(&store, &config.keys, config.adopt_unkeyed_audit).await?;
        let setup_token = if store.is_bootstrapped().await? {
            None
        } else {
            let mut bytes = [0u8; 24];
            rand_core::OsRng
                .try_fill_bytes(&mut bytes)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let token = Zeroizing::new(hex::encode(bytes));
            if store.replace_setup_token(&api::token_hash(&token)).await? {
                Some(token)
            } else {
                None
            }
        };
        let listener = TcpListener::bind(config.listen).await?;
        let decoy = api::new_token().map_err(|_| std::io::Error::other("no randomness"))?;
        let decoy_hash = tokio::task::spawn_blocking(move || api::hash_password(&decoy))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .map_err(|_| std::io::Error::other("cannot hash"))?;
        Ok(Server {
            listener,
            state: AppState {
                store,
                session_ttl: config.session_ttl,
                decoy_hash: std::sync::Arc::new(decoy_hash),
                login_limits: config.login_limits,
                metrics: crate::metrics::Metrics::default(),
                keys: std::sync::Arc::clone(&config.keys),
                trusted_proxies: config.trusted_proxies.clone(),
                data_keys: Default::default(),
                files: Default::default(),
                mqtt: None,
            },
            setup_token,
            tls,
            shutdown_grace: config.shutdown_grace,
            sqlite_path,
            sync_retention: DEFAULT_SYNC_RETENTION,
            blob_storage: None,
            file_limits: FileLimits::default(),
            mqtt: None,
        })
    }

    /// Takes data delivery over MQTT through the broker `config` names,
    /// managing its clients (docs/server.md, "MQTT"). Without it,
    /// `POST /v1/device/mqtt` answers 404 `mqtt_not_configured`.
    pub fn with_mqtt(mut self, config: crate::mqtt::MqttConfig) -> Server {
        self.mqtt = Some(config);
        self
    }

    /// Keeps synced files' bytes in `storage` (`--blob-dir`, or
    /// `--s3-bucket`). Without it, the file endpoints answer 503.
    pub fn with_blob_storage(mut self, storage: BlobStorage) -> Server {
        self.blob_storage = Some(storage);
        self
    }

    /// Takes files of at most `bytes` (`--max-file-size`; default
    /// [`crate::files::DEFAULT_MAX_FILE_SIZE`]), refused at their
    /// declaration, before a byte is sent.
    pub fn with_max_file_size(mut self, bytes: u64) -> Server {
        self.file_limits.max_file_size = bytes;
        self
    }

    /// Gives each organization `bytes` of files (`--org-file-quota`;
    /// default [`crate::files::DEFAULT_ORG_FILE_QUOTA`]): its stored files
    /// and unfinished uploads; a declaration past it is refused.
    pub fn with_org_file_quota(mut self, bytes: u64) -> Server {
        self.file_limits.org_quota = bytes;
        self
    }

    /// Drops an unfinished upload this long after its declaration or its
    /// last piece (`--upload-expiry`; default
    /// [`crate::files::DEFAULT_UPLOAD_EXPIRY`]).
    pub fn with_upload_expiry(mut self, expiry: Duration) -> Server {
        self.file_limits.upload_expiry = expiry;
        self
    }

    /// Announces pieces of `bytes` (default
    /// [`coffer_protocol::files::DEFAULT_PIECE_SIZE`]), brought within the
    /// protocol's bounds (64 KiB to 8 MiB). What a cut connection costs at
    /// most to send again, and what one request holds in memory.
    pub fn with_piece_size(mut self, bytes: u64) -> Server {
        self.file_limits.piece_size = bytes;
        self
    }

    /// Takes in at most `n` piece bodies at once (default
    /// [`crate::files::DEFAULT_MAX_CONCURRENT_PIECES`]; at least 1): each
    /// holds about three pieces' worth of memory while it is read, sealed
    /// and written. A piece past them waits for its turn up to
    /// [`Server::with_piece_queue_wait`], then is answered `503` with
    /// `Retry-After`.
    pub fn with_max_concurrent_pieces(mut self, n: usize) -> Server {
        self.file_limits.max_concurrent_pieces = n;
        self
    }

    /// How long a piece waits for its turn (default
    /// [`crate::files::DEFAULT_PIECE_QUEUE_WAIT`]).
    pub fn with_piece_queue_wait(mut self, wait: Duration) -> Server {
        self.file_limits.piece_queue_wait = wait;
        self
    }

    /// Holds an upload's lease this long (default
    /// [`crate::files::DEFAULT_UPLOAD_LEASE`]; whole seconds, at least 2),
    /// renewed every quarter of it while a whole file is read back. Shorter
    /// only for tests: a piece's write must end within it.
    pub fn with_upload_lease(mut self, lease: Duration) -> Server {
        self.file_limits.upload_lease = lease;
        self
    }

    /// Keeps sync history (tombstones, change log, batch answers) this
    /// long instead of [`DEFAULT_SYNC_RETENTION`] (`--sync-retention`).
    pub fn with_sync_retention(mut self, retention: Duration) -> Server {
        self.sync_retention = retention;
        self
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The setup token of a server not yet set up: to be shown once.
    pub fn setup_token(&self) -> Option<&str> {
        self.setup_token.as_deref().map(String::as_str)
    }

    /// The SHA-256 fingerprint of the TLS certificate (what clients pin),
    /// when serving TLS.
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.fingerprint.as_str())
    }

    /// Takes the setup token (the demo spends it on its sample data).
    pub(crate) fn take_setup_token(&mut self) -> Option<coffer_protocol::WireSecret> {
        self.setup_token
            .take()
            .map(|t| coffer_protocol::WireSecret::new(t.to_string()))
    }

    /// The API's state, for in-process requests before the server runs.
    pub(crate) fn state(&self) -> &AppState {
        &self.state
    }

    /// The storage backend in use.
    pub fn backend(&self) -> &'static str {
        self.state.store.backend()
    }

    /// Serves until `shutdown` completes; then drains: stops accepting,
    /// lets the requests in flight finish (for up to the shutdown grace
    /// period; then their connections are closed), and closes the storage.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            listener,
            mut state,
            tls,
            shutdown_grace,
            sqlite_path,
            sync_retention,
            blob_storage,
            file_limits,
            mqtt,
            ..
        } = self;
        state.files =
            std::sync::Arc::new(crate::files::Files::new(blob_storage.clone(), file_limits));
        let (stop_mqtt, mqtt_stopped) = tokio::sync::watch::channel(false);
        let mut mqtt_tasks = Vec::new();
        if let Some(config) = mqtt {
            let mqtt = crate::mqtt::Mqtt::start(config, mqtt_stopped.clone())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            state.mqtt = Some(std::sync::Arc::clone(&mqtt));
            mqtt_tasks = mqtt.run(state.clone(), mqtt_stopped);
        }
        let store = state.store.clone();
        let (stop_compaction, compaction_stopped) = tokio::sync::watch::channel(false);
        let compaction = tokio::spawn(compact_hourly(
            store.clone(),
            sync_retention,
            blob_storage,
            compaction_stopped,
        ));
        let metrics = state.metrics.clone();
        let app = crate::console::with_console(
            api::router(state),
            std::sync::Arc::new(crate::console::sessions::Sessions::default()),
            tls.is_some(),
            metrics,
        );
        let acceptor = tls.map(|t| t.acceptor);
        let (draining, drain) = tokio::sync::watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                // Finished connections are reaped as they end.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        connections.spawn(connection(
                            tcp,
                            peer,
                            acceptor.clone(),
                            app.clone(),
                            drain.clone(),
                        ));
                    }
                    Err(e) => {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        let _ = stop_compaction.send(true);
        tracing::info!(
            connections = connections.len(),
            grace_secs = shutdown_grace.as_secs_f64(),
            "shutting down: no new connections; draining the requests in flight"
        );
        // Every connection finishes the request it is in and closes.
        let _ = draining.send(true);
        let drained = tokio::time::timeout(shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if drained {
            tracing::info!("drained: every request in flight has been answered");
        } else {
            tracing::warn!(
                connections = connections.len(),
                "the grace period is over: closing the connections still open"
            );
            connections.shutdown().await;
        }
        drop(app);
        // The message being stored is stored (or left to the broker)
        // before the store closes.
        let _ = stop_mqtt.send(true);
        for task in mqtt_tasks {
            let _ = task.await;
        }
        // The pass in progress ends before the store closes.
        let _ = compaction.await;
        close_store(store, sqlite_path.as_deref()).await;
        Ok(())
    }
}

/// Anything a connection can run over: a TCP stream, or TLS over one.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Serves one connection (after its TLS handshake, if any) until it ends,
/// or, once `drain` turns true, until it has finished the request it is in.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let stream: Box<dyn Io> = match acceptor {
        None => Box::new(tcp),
        Some(acceptor) => {
            // A failed handshake (a client that does not trust or pin this
            // certificate, say) ends that connection only; so does one that
            // does not finish in time, or is not finished when draining.
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => Box::new(stream),
                    _ => return,
                },
                _ = drain.wait_for(|d| *d) => return,
            }
        }
    };
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let app = app.clone();
            async move {
                use tower::ServiceExt;
                app.oneshot(req.map(axum::body::Body::new)).await
            }
        });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // With a timer, a client that is slow to send its request headers is
    // dropped (after hyper's 30 s): it cannot hold a connection, or the
    // drain, for ever.
    builder.http1().timer(hyper_util::rt::TokioTimer::new());
    let serving = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut serving = std::pin::pin!(serving);
    tokio::select! {
        _ = serving.as_mut() => return,
        _ = drain.wait_for(|d| *d) => {}
    }
    // HTTP/1.1: the request in progress is answered, then the connection
    // closes; HTTP/2: GOAWAY, the streams open are answered.
    serving.as_mut().graceful_shutdown();
    let _ = serving.await;
}

/// Closes the storage once every request is done: the last handle to the
/// SQLite connection is dropped (on a blocking thread: closing checkpoints
/// the WAL into the database and removes the -wal and -shm files), or the
/// PostgreSQL pool's (its connections are closed).
async fn close_store(store: Store, sqlite_path: Option<&Path>) {
    let backend = store.backend();
    if tokio::task::spawn_blocking(move || drop(store))
        .await
        .is_err()
    {
        tracing::warn!(backend, "closing the storage failed");
        return;
    }
    // Let the PostgreSQL connection tasks see their clients go and say goodbye.
    tokio::task::yield_now().await;
    let wal_left = sqlite_path
        .map(|p| sqlite_companions(p)[0].clone())
        .and_then(|wal| std::fs::metadata(wal).ok())
        .is_some_and(|m| m.len() > 0);
    if wal_left {
        // Another connection (another process, or a request cut at the end
        // of the grace period and still finishing) holds the database:
        // SQLite checkpoints the WAL when the last one closes.
        tracing::info!(backend, "storage closed; the WAL is still in use elsewhere");
    } else {
        tracing::info!(backend, "storage closed");
    }
}
