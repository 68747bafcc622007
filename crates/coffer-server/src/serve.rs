//! `coffer serve`: open the storage, bring the schema up to date, issue the
//! setup token of an empty server, bind the listener, serve.

use std::future::Future;
use std::net::SocketAddr;

use rand_core::RngCore;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::api::{self, AppState};
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
}

/// The default session lifetime: a working day.
pub const DEFAULT_SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

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

/// A server, bound and ready to run.
pub struct Server {
    listener: TcpListener,
    state: AppState,
    setup_token: Option<Zeroizing<String>>,
    tls: Option<crate::tls::Tls>,
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
            },
            setup_token,
            tls,
        })
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

    /// The storage backend in use.
    pub fn backend(&self) -> &'static str {
        self.state.store.backend()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let app = api::router(self.state);
        let Some(tls) = self.tls else {
            axum::serve(
                self.listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await?;
            return Ok(());
        };
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            let acceptor = tls.acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A failed handshake (a client that does not trust or pin
                // this certificate, say) ends that connection only; so does
                // one that does not finish in time (a slow-handshake attack
                // must not hold tasks forever).
                let handshake = acceptor.accept(tcp);
                let Ok(Ok(stream)) =
                    tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await
                else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        let app = app.clone();
                        async move {
                            use tower::ServiceExt;
                            app.oneshot(req.map(axum::body::Body::new)).await
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    }
}
