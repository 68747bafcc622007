//! TLS: a development certificate, kept across restarts (same fingerprint),
//! trusted by a client that pins it and refused by one that does not.

#![allow(clippy::unwrap_used)]

use coffer_server::{LoginLimits, ServeConfig, Server, TlsSetting, DEFAULT_SESSION_TTL};

async fn start(
    dir: &std::path::Path,
    listen: &str,
) -> (String, String, tokio::sync::oneshot::Sender<()>) {
    let server = Server::bind(&ServeConfig {
        listen: listen.parse().unwrap(),
        database_url: format!("sqlite://{}", dir.join("server.db").display()),
        force_plain: false,
        session_ttl: DEFAULT_SESSION_TTL,
        login_limits: LoginLimits::default(),
        tls: TlsSetting::Dev {
            dir: dir.join("tls"),
        },
        keys: coffer_server::testing::keyring(),
        adopt_unkeyed_audit: false,
        trusted_proxies: Default::default(),
        shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
    })
    .await
    .unwrap();
    let port = server.local_addr().unwrap().port();
    let fingerprint = server.tls_fingerprint().unwrap().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (format!("https://localhost:{port}"), fingerprint, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tls_serves_https_to_a_client_that_pins_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (base, fingerprint, stop) = start(dir.path(), "127.0.0.1:0").await;
    let pem = std::fs::read(dir.path().join("tls/dev-tls-cert.pem")).unwrap();

    // The printed fingerprint is the certificate's.
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(fingerprint, coffer_server::tls::fingerprint(der.as_ref()));
    assert_eq!(fingerprint.len(), 32 * 3 - 1);

    let pinned = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let health: serde_json::Value = pinned
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    // A client that does not trust this certificate is refused.
    let stranger = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(stranger
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
    // Plain HTTP to the TLS port gets nothing either.
    let plain = base.replace("https://", "http://");
    let answered = reqwest::get(format!("{plain}/healthz"))
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(!answered);
    let _ = stop.send(());

    // A restart keeps the certificate: pinned clients keep working.
    let (_, again, stop) = start(dir.path(), "127.0.0.1:0").await;
    assert_eq!(again, fingerprint);
    let _ = stop.send(());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls/dev-tls-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_may_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, stop) = start(dir.path(), "0.0.0.0:0").await;
    let _ = stop.send(());
}
