//! Test support (feature `test-support`): a throwaway PostgreSQL server
//! from Debian's packages, in a temporary directory on a free loopback
//! port, stopped when dropped. Used by the server's tests and the
//! benchmark. PostgreSQL
//! refuses to run as root, so under root its tools run as `postgres`
//! through runuser. Missing binaries fail the test: CI installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway PostgreSQL server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

#[allow(clippy::expect_used)]
fn binaries() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|b| b.join("initdb").is_file());
    versions.sort();
    versions.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql: \
         install Debian's postgresql package (.ci/run does)",
    )
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[allow(clippy::unwrap_used)]
fn run(tool: &Path, args: &[&str]) {
    if let Err(e) = try_run(tool, args) {
        panic!("{e}");
    }
}

/// Runs a PostgreSQL tool (as `postgres` when root); the failure as text.
#[allow(clippy::unwrap_used)]
fn try_run(tool: &Path, args: &[&str]) -> Result<(), String> {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    };
    // The postgres user may not enter the caller's directory.
    let out = command.current_dir("/").args(args).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            tool.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Postgres {
    /// Starts one (panics with a clear message when the binaries are missing).
    #[allow(clippy::unwrap_used, clippy::expect_used)]
    pub fn start() -> Postgres {
        let bin = binaries();
        let dir = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The postgres user must reach its data directory inside.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }

        let data = dir.path().join("data");
        let data_s = data.to_str().unwrap();
        run(
            &bin.join("initdb"),
            &[
                "-D",
                data_s,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let log = dir.path().join("postgres.log");
        // A free port can be taken by another test between our look and
        // the server's bind: try another one.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                dir.path().display()
            );
            match try_run(
                &bin.join("pg_ctl"),
                &[
                    "-D",
                    data_s,
                    "-l",
                    log.to_str().unwrap(),
                    "-o",
                    &options,
                    "-w",
                    "start",
                ],
            ) {
                Ok(()) => return Postgres { dir, bin, port },
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "PostgreSQL did not start: {}\n{}",
            failures.join("\n"),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The server's data directory (tests read its raw files).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// A new, empty database; returns its URL.
    #[allow(clippy::unwrap_used)]
    pub async fn database(&self, name: &str) -> String {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = command
            .args([
                "-D",
                data.to_str().unwrap_or(""),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

/// The master key every test server of this process uses (tests that
/// restart a server on one database need the same key each time).
pub fn keyring() -> std::sync::Arc<crate::keys::Keyring> {
    static KEYRING: std::sync::OnceLock<std::sync::Arc<crate::keys::Keyring>> =
        std::sync::OnceLock::new();
    KEYRING
        .get_or_init(|| {
            std::sync::Arc::new(crate::keys::Keyring::new(
                crate::keys::MasterKey::from_bytes(&[0x42; 32]),
                None,
            ))
        })
        .clone()
}

/// A running S3-compatible server for the files tests: the real `s3s-fs`
/// (crates.io: `cargo install s3s-fs --version 0.14.1 --features binary
/// --locked`), not a mock, on a free loopback port, storing in a temporary
/// directory, one bucket made. Killed when dropped. A missing binary fails
/// the test (CI installs it).
pub struct S3Server {
    dir: tempfile::TempDir,
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The bucket made for the test.
    pub bucket: String,
    /// The access key id it accepts.
    pub access_key: String,
    secret_key: String,
}

/// Where the `s3s-fs` binary is: `COFFER_S3S_FS`, else on `PATH`, else
/// where .ci/run installs it (`~/.cache/coffer-tools/bin`).
fn s3s_fs_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("COFFER_S3S_FS") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    let home = std::env::var_os("HOME").map(PathBuf::from);
    on_path.or_else(|| {
        [
            home.unwrap_or_else(|| PathBuf::from("/root")),
            PathBuf::from("/root"),
        ]
        .into_iter()
        .map(|h| h.join(".cache/coffer-tools/bin/s3s-fs"))
        .find(|p| p.is_file())
    })
}

impl S3Server {
    /// Starts one with the bucket `bucket` (panics, saying how to install
    /// it, when `s3s-fs` is missing).
    #[allow(clippy::unwrap_used, clippy::expect_used)]
    pub fn start(bucket: &str) -> S3Server {
        let bin = s3s_fs_binary().unwrap_or_else(|| {
            panic!(
                "the S3-compatible test server s3s-fs is not installed: \
                 `cargo install s3s-fs --version 0.14.1 --features binary --locked` \
                 (or set COFFER_S3S_FS to its path); .ci/run installs it"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let access_key = "coffer-test".to_owned();
        let secret_key = {
            use rand_core::RngCore;
            let mut bytes = [0u8; 16];
            rand_core::OsRng.fill_bytes(&mut bytes);
            hex::encode(bytes)
        };
        let mut failures = Vec::new();
        // A free port can be taken between our look and its bind: another.
        for attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log =
                std::fs::File::create(dir.path().join(format!("s3s-fs-{attempt}.log"))).unwrap();
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(&root)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("s3s-fs could not be started");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    failures.push(format!("s3s-fs exited: {status}"));
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server {
                        dir,
                        child,
                        port,
                        bucket: bucket.to_owned(),
                        access_key,
                        secret_key,
                    };
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push("s3s-fs did not answer in 15 s".into());
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        panic!("s3s-fs did not start: {}", failures.join("; "));
    }

    /// The secret key it accepts (for tests that check it leaks nowhere).
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Its URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory it stores in (the bucket is a directory in it): tests
    /// read the raw objects there.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Blob storage on its bucket.
    #[allow(clippy::expect_used)]
    pub fn storage(&self) -> crate::blobs::BlobStorage {
        crate::blobs::BlobStorage::s3(crate::blobs::S3Config {
            bucket: self.bucket.clone(),
            endpoint: Some(self.endpoint()),
            region: crate::blobs::DEFAULT_S3_REGION.to_owned(),
            credentials: crate::blobs::S3Credentials::new(&self.access_key, &self.secret_key),
        })
        .expect("an S3 configuration for s3s-fs")
    }

    /// The credentials file for `--s3-credentials-file` (mode 0600), in
    /// its temporary directory.
    #[allow(clippy::unwrap_used)]
    pub fn credentials_file(&self) -> PathBuf {
        let path = self.dir.path().join("s3-credentials");
        std::fs::write(
            &path,
            format!(
                "aws_access_key_id = {}\naws_secret_access_key = {}\n",
                self.access_key, self.secret_key
            ),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        path
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running Mosquitto 2 broker for the MQTT tests: the real one (Debian's
/// `mosquitto` package, which .ci/run installs), with its dynamic-security
/// plugin, one TLS listener on a free loopback port (a self-signed
/// certificate for localhost and 127.0.0.1), persistence on, and an admin
/// user made with `mosquitto_ctrl dynsec init`. Stopped when dropped.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
    /// Its certificate, PEM.
    pub certificate_pem: String,
    admin_password: String,
}

/// Where a Mosquitto program is: `COFFER_MOSQUITTO_DIR/NAME`, else
/// Debian's places.
fn mosquitto_program(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("COFFER_MOSQUITTO_DIR") {
        return PathBuf::from(dir).join(name);
    }
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Debian's dynamic-security plugin.
fn dynsec_plugin() -> PathBuf {
    [
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .unwrap_or_else(|| PathBuf::from("mosquitto_dynamic_security.so"))
}

impl Mosquitto {
    /// Starts one (panics, saying how to install it, when Mosquitto is
    /// missing).
    #[allow(clippy::unwrap_used, clippy::expect_used)]
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let certificate_pem = made.cert.pem();
        std::fs::write(dir.path().join("broker.crt"), &certificate_pem).unwrap();
        std::fs::write(dir.path().join("broker.key"), made.key_pair.serialize_pem()).unwrap();
        let admin_password = {
            use rand_core::RngCore;
            let mut bytes = [0u8; 16];
            rand_core::OsRng.fill_bytes(&mut bytes);
            hex::encode(bytes)
        };
        let init = Command::new(mosquitto_program("mosquitto_ctrl"))
            .args(["dynsec", "init"])
            .arg(dir.path().join("dynsec.json"))
            .args(["admin", &admin_password])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "mosquitto_ctrl could not be run ({e}): install Debian's `mosquitto` package \
                     (.ci/run does), or set COFFER_MOSQUITTO_DIR"
                )
            });
        assert!(init.status.success(), "mosquitto_ctrl dynsec init failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut broker = Mosquitto {
            dir,
            child: None,
            port,
            certificate_pem,
            admin_password,
        };
        broker.write_config();
        broker.launch();
        broker
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let config = format!(
            "# coffer's MQTT tests\n\
             user root\n\
             per_listener_settings false\n\
             allow_anonymous false\n\
             persistence true\n\
             persistence_location {d}/\n\
             max_packet_size 2097152\n\
             max_queued_messages 100000\n\
             max_inflight_messages 100\n\
             retain_available false\n\
             log_dest file {d}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             plugin {plugin}\n\
             plugin_opt_config_file {d}/dynsec.json\n\
             listener {port} 127.0.0.1\n\
             certfile {d}/broker.crt\n\
             keyfile {d}/broker.key\n",
            plugin = dynsec_plugin().display(),
            port = self.port,
        );
        #[allow(clippy::unwrap_used)]
        std::fs::write(self.dir.path().join("mosquitto.conf"), config).unwrap();
    }

    #[allow(clippy::unwrap_used, clippy::expect_used)]
    fn launch(&mut self) {
        let child = Command::new(mosquitto_program("mosquitto"))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto could not be started: install Debian's `mosquitto` package");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "mosquitto exited ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("mosquitto.log"))
                        .unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not listen in 15 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
    }

    /// Stops it as an operator would (SIGTERM: it saves its persistent
    /// state, the messages queued for sessions among it) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Stops it and starts it again on the same port, with what it saved.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The control plane's configuration for it, with the ingest session
    /// `session_id`.
    pub fn config(&self, session_id: &str) -> crate::mqtt::MqttConfig {
        crate::mqtt::MqttConfig {
            broker: crate::mqtt::BrokerAddress {
                host: "127.0.0.1".into(),
                port: self.port,
                tls: true,
            },
            public_host: "127.0.0.1".into(),
            public_port: self.port,
            certificate_pem: self.certificate_pem.clone().into_bytes(),
            admin_user: "admin".into(),
            admin_password: std::sync::Arc::new(secrecy::SecretString::from(
                self.admin_password.clone(),
            )),
            session_id: session_id.into(),
        }
    }

    /// TLS settings for a client of the broker (a test device): its
    /// certificate as the one trust anchor.
    #[allow(clippy::unwrap_used)]
    pub fn client_tls(&self) -> std::sync::Arc<rustls::ClientConfig> {
        crate::mqtt::client_tls(self.certificate_pem.as_bytes()).unwrap()
    }

    /// Options for a test device's connection to the broker as `user`
    /// with `password` and `client_id`, over TLS.
    pub fn device_options(
        &self,
        client_id: &str,
        user: &str,
        password: &str,
    ) -> rumqttc::MqttOptions {
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", self.port);
        options.set_credentials(user, password);
        options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(self.client_tls()),
        ));
        options
    }

    /// The admin's password (for `--mqtt-admin-password-file` tests).
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Publishes each payload QoS 1 on `topic` and waits (at most `patience`
/// for each event) for every PUBACK. The publishing runs on a task of its
/// own: the client's request channel is bounded and drained only while
/// the event loop is polled.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub async fn publish_all(
    client: &rumqttc::AsyncClient,
    events: &mut rumqttc::EventLoop,
    topic: &str,
    payloads: Vec<Vec<u8>>,
    patience: std::time::Duration,
) {
    use rumqttc::{Event, Packet, QoS};
    let n = payloads.len();
    let publisher = client.clone();
    let topic = topic.to_owned();
    let publishing = tokio::spawn(async move {
        for p in payloads {
            publisher
                .publish(&topic, QoS::AtLeastOnce, false, p)
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(patience, events.poll())
            .await
            .expect("the broker acknowledges")
            .expect("the broker keeps the connection")
        {
            Event::Incoming(Packet::PubAck(_)) => acked += 1,
            _ => continue,
        }
    }
    publishing.await.unwrap();
}
