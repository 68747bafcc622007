//! Command-line syntax: every flag, its environment variable and its help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other error (I/O, unexpected)
  2  bad arguments or input (usage, invalid name, no passphrase given)
  3  wrong passphrase or recovery key (nothing was unlocked)
  4  no such vault
  5  vault header corrupt, tampered with, of an unknown version, or asking
     for more KDF work than allowed (nothing was unlocked)
  6  a vault or app of that name already exists
  7  slot change refused (no such slot, name taken, all 16 in use, last slot)
  8  vault busy: another coffer process is changing it (or holds it open
     while you rotate)
  9  not found: no such app, key, record or file
 10  denied: the app's capabilities (or a temporary key) do not allow this
 11  conflict: the record changed since the version the change was based on
 12  the vault has been wiped
 13  locked out after too many failed attempts: use a recovery or temporary key
 14  too soon after failed attempts: wait and try again
 15  the audit log fails its check (entries edited, deleted, reordered, cut)
 16  refused: a debugger is tracing coffer and --refuse-debugger is set
 17  the control plane's certificate is not the one pinned (or not signed by
     the given CA): nothing was sent to it
 18  the organization's policy needs a check-in first (offline too long):
     run 'coffer check-in'
 19  'coffer conflicts': records are in conflict (resolve them)
 20  'coffer verify --deep' found damage, missing or leftover files
 130, 143, 129  stopped by SIGINT, SIGTERM or SIGHUP (after removing any
     partial plaintext of 'files get --out')

Secrets for scripts:
  COFFER_PASSPHRASE        passphrase that opens the vault (init: the new vault's)
  COFFER_NEW_PASSPHRASE    passphrase of a slot being added
  COFFER_RECOVERY_KEY      recovery or temporary key, with --recovery
  --passphrase-file, --new-passphrase-file, --recovery-key-file read the first
  line of a file instead. Environment variables are visible to other processes
  of the same user (/proc/PID/environ) and easily land in shell history: prefer
  the no-echo prompt, or files readable only by you.";

/// coffer keeps an organization's data encrypted on devices that get lost,
/// stolen, shared and taken offline.
///
/// A space (a directory) holds one vault per organization. A vault's random
/// key is wrapped in up to 16 key slots: one per user passphrase, plus
/// recovery keys.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, after_long_help = EXIT_CODES_HELP, after_help = "Run 'coffer --help' for exit codes and script variables; 'coffer demo' for a guided tour.")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The space directory [default: coffer under your data directory]
    #[arg(long, env = "COFFER_SPACE", global = true, value_name = "DIR")]
    pub space: Option<PathBuf>,
    /// The vault (one per organization)
    #[arg(
        long,
        env = "COFFER_VAULT",
        global = true,
        default_value = "default",
        value_name = "NAME"
    )]
    pub vault: String,
    /// Print results as JSON (errors too, on stderr)
    #[arg(long, global = true)]
    pub json: bool,
    /// Read the passphrase that opens the vault from the first line of FILE
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the passphrase of a new slot from the first line of FILE
    #[arg(long, global = true, value_name = "FILE")]
    pub new_passphrase_file: Option<PathBuf>,
    /// Open the vault with a recovery key instead of a passphrase
    #[arg(long, global = true)]
    pub recovery: bool,
    /// Refuse to unlock while a debugger traces coffer (Linux: TracerPid)
    #[arg(long, global = true, env = "COFFER_REFUSE_DEBUGGER")]
    pub refuse_debugger: bool,
    /// Read the recovery key from FILE (implies --recovery)
    #[arg(long, global = true, value_name = "FILE")]
    pub recovery_key_file: Option<PathBuf>,
}

/// `coffer serve`'s MQTT delivery flags (docs/server.md, "MQTT").
#[derive(Debug, clap::Args)]
pub struct MqttFlags {
    /// Take data delivery over MQTT through this Mosquitto 2 broker
    /// (with its dynamic-security plugin), managing a client per
    /// device: mqtts://HOST:PORT, or mqtt://127.0.0.1:PORT on loopback
    #[arg(long, env = "COFFER_MQTT_BROKER", value_name = "URL")]
    pub mqtt_broker: Option<String>,
    /// Where devices reach the broker's TLS listener, HOST:PORT
    /// [default: the broker URL's]
    #[arg(
        long,
        env = "COFFER_MQTT_PUBLIC",
        value_name = "HOST:PORT",
        requires = "mqtt_broker"
    )]
    pub mqtt_public: Option<String>,
    /// The broker's TLS certificate (PEM), which devices pin [default:
    /// this server's own, from --tls-cert or --dev-tls]
    #[arg(
        long,
        env = "COFFER_MQTT_BROKER_CERT",
        value_name = "FILE",
        requires = "mqtt_broker"
    )]
    pub mqtt_broker_cert: Option<std::path::PathBuf>,
    /// The broker's dynamic-security admin user
    #[arg(
        long,
        env = "COFFER_MQTT_ADMIN_USER",
        default_value = "admin",
        value_name = "NAME"
    )]
    pub mqtt_admin_user: String,
    /// A file (mode 0600) holding the admin's password [default: the
    /// COFFER_MQTT_ADMIN_PASSWORD variable]
    #[arg(
        long,
        env = "COFFER_MQTT_ADMIN_PASSWORD_FILE",
        value_name = "FILE",
        requires = "mqtt_broker"
    )]
    pub mqtt_admin_password_file: Option<std::path::PathBuf>,
    /// This process's persistent ingest session on the broker: the same
    /// across restarts, one per server process [default:
    /// coffer-ingest-HOSTNAME]
    #[arg(
        long,
        env = "COFFER_MQTT_SESSION_ID",
        value_name = "ID",
        requires = "mqtt_broker"
    )]
    pub mqtt_session_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a vault with a first passphrase slot
    ///
    /// The KDF is calibrated on this machine so that one unlock takes about
    /// --kdf-time-ms, never below the OWASP minimum.
    Init(InitArgs),
    /// Show a vault's public header: id, format, slot kinds and KDF parameters
    ///
    /// Needs no passphrase. Slot names and dates are encrypted: see 'slot list'.
    Info,
    /// List the vaults in the space
    Vaults,
    /// Add, list or remove key slots
    #[command(subcommand)]
    Slot(SlotCommand),
    /// Set what happens after too many failed passphrase attempts in a row
    ///
    /// After --max failures: 'lock' makes passphrases refuse until a recovery
    /// or temporary key opens the vault; 'wipe' wipes it. From the fourth
    /// failure on, attempts also back off (1 s, 2 s, 4 s, … up to an hour).
    Lockout {
        /// Failures in a row before the action
        #[arg(long, required_unless_present = "off", value_parser = clap::value_parser!(u16).range(1..))]
        max: Option<u16>,
        /// What to do then
        #[arg(long, default_value = "lock", value_parser = ["lock", "wipe"])]
        then: String,
        /// No limit (back-off still applies)
        #[arg(long, conflicts_with = "max")]
        off: bool,
    },
    /// Wipe the vault: destroy every key slot, then delete all its data
    ///
    /// Crypto-erase first (the header is overwritten with random bytes and
    /// synced: nothing can be decrypted from then on), then every file is
    /// deleted. Needs no passphrase, but --yes (or typing the vault's name on
    /// a terminal). An interrupted wipe is finished by the next access.
    Wipe {
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// Add a temporary key: a random key that opens the vault until it
    /// expires (and, with --single-use, only once); printed once
    ///
    /// For handing a vault to someone for a limited time, or letting a user
    /// set a new passphrase ('coffer --recovery slot add', single-use keys
    /// only). Use it with --recovery. It cannot change key slots or lockout.
    /// Moving the clock back does not revive it once any unlock has seen a
    /// later time.
    TempKey {
        /// How long it stays valid, e.g. 30m, 24h, 7d
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: std::time::Duration,
        /// The first unlock with it removes it
        #[arg(long)]
        single_use: bool,
        /// Name of the new slot
        #[arg(long, default_value = "temporary")]
        name: String,
    },
    /// Change a passphrase: yours, or with --recovery any user's (--slot)
    ///
    /// Unlock with the current passphrase (or --recovery), then give the new
    /// one (COFFER_NEW_PASSPHRASE, --new-passphrase-file, or asked twice).
    /// Rewraps one slot: the same cost whatever the vault holds.
    Passwd {
        /// The slot to change [default: the slot that unlocks]
        #[arg(long)]
        slot: Option<String>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Rotate the vault key: re-encrypt every database and file under a new one
    ///
    /// Unlock with your passphrase (or --recovery): your slot is carried over
    /// to the new key. Every other slot is retired — its passphrase or key
    /// opened only the old key. Users come back through a new recovery key
    /// (--new-recovery-key), a single-use reset key each (--reset-keys), or a
    /// temporary key issued later. All or nothing: after a crash the vault
    /// opens under the old key or the new one, whole, and the next command
    /// finishes or discards the rotation.
    Rotate {
        /// Add a recovery slot (named "recovery" unless given) and print its key
        #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "recovery")]
        new_recovery_key: Option<String>,
        /// Give every retired passphrase slot a single-use reset key valid
        /// this long (e.g. 72h); its user runs 'coffer --recovery slot add NAME'
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        reset_keys: Option<std::time::Duration>,
        /// Do not ask before retiring the other slots (otherwise: type the
        /// vault's name on the terminal)
        #[arg(long)]
        yes: bool,
    },
    /// Back up or restore the control plane's SQLite database and files
    ///
    /// 'backup' copies the database while the server runs (SQLite's online
    /// backup: one consistent transaction), the sealed file pieces of the
    /// local blob directory, and the development certificate if there is
    /// one. It never copies the master key: keep that apart. 'restore'
    /// checks a backup against the master key (the copy is whole, the key is
    /// the database's, the audit trail verifies) before it writes anything,
    /// and never overwrites. PostgreSQL: use pg_dump (docs/server.md).
    #[command(subcommand)]
    Server(ServerCommand),
    /// Run the control plane: the HTTP API on SQLite (default) or PostgreSQL
    ///
    /// On its first start with an empty database it prints a one-time setup
    /// token: POST it to /v1/setup with the first organization, its owner and
    /// a password. Plain HTTP only on loopback: elsewhere give --tls-cert and
    /// --tls-key, or --dev-tls.
    Serve {
        /// Read settings from this TOML file: its keys are these flags'
        /// long names (listen = "0.0.0.0:8443", database-url = "…",
        /// trusted-proxy = ["10.0.0.1"], dev-tls = true). A flag on the
        /// command line wins over its environment variable, which wins over
        /// the file, which wins over the default
        #[arg(long, env = "COFFER_CONFIG", value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// postgres://USER@HOST/DB, or a SQLite file (sqlite://PATH or PATH)
        /// [default: server.db under coffer-server in your data directory]
        #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Serve plain HTTP on a non-loopback address (only behind a TLS proxy)
        #[arg(long, conflicts_with_all = ["tls_cert", "dev_tls"])]
        force_plain: bool,
        /// TLS certificate chain (PEM), with --tls-key
        #[arg(
            long,
            value_name = "FILE",
            requires = "tls_key",
            conflicts_with = "dev_tls"
        )]
        tls_cert: Option<std::path::PathBuf>,
        /// TLS private key (PEM), with --tls-cert
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
        /// TLS with a self-signed development certificate (made once, kept
        /// beside the default database); prints its SHA-256 fingerprint for
        /// clients to pin
        #[arg(long)]
        dev_tls: bool,
        /// The master key file (64 hex digits, mode 0600): seals the
        /// organizations' signing keys and the devices' escrow keys at rest.
        /// Keep it off the database's disk and back it up: without it they
        /// are lost. [default: master.key under coffer-server in your data
        /// directory, made on first start; or the hex key itself in
        /// COFFER_MASTER_KEY]
        #[arg(long, env = "COFFER_MASTER_KEY_FILE", value_name = "FILE")]
        master_key_file: Option<std::path::PathBuf>,
        /// Rotating the master key: the key file before, whose values are
        /// re-sealed under --master-key-file at start
        #[arg(long, value_name = "FILE")]
        previous_master_key_file: Option<std::path::PathBuf>,
        /// Put the audit trail of a database from before the master key
        /// under it as it stands (once, after an upgrade: without MACs, its
        /// rows could have been changed by anyone with database access)
        #[arg(long)]
        adopt_unkeyed_audit_trail: bool,
        /// A proxy (ADDR, or a network ADDR/PREFIX) whose forwarding header
        /// names the client; repeat for each. Behind a TLS proxy on the same
        /// host every client is the proxy's address, and one client's failed
        /// logins would lock out everyone: name the proxy here. The header is
        /// believed only from these addresses, and the client is the
        /// right-most address in it that is not one of them; a malformed
        /// header counts as the proxy's address. Nothing is trusted by
        /// default
        #[arg(long = "trusted-proxy", value_name = "ADDR[/PREFIX]")]
        trusted_proxies: Vec<coffer_server::client_addr::ProxyNetwork>,
        /// The header the trusted proxies write: x-forwarded-for (nginx,
        /// HAProxy, Caddy, Traefik) or forwarded (RFC 7239); only that one is
        /// read, since a proxy passes the other on from the client untouched
        #[arg(
            long,
            value_name = "HEADER",
            default_value = "x-forwarded-for",
            requires = "trusted_proxies"
        )]
        trusted_proxy_header: coffer_server::client_addr::ForwardedHeader,
        /// How long sync history is kept (deletions, change log, answers to
        /// pushes), e.g. 180d; an organization whose policy wipes offline
        /// devices later keeps it that long plus 7 days. A device offline
        /// longer starts its pull over (it keeps its own changes).
        #[arg(long, default_value = "180d", value_parser = humantime::parse_duration)]
        sync_retention: std::time::Duration,
        /// How the log on standard error is written: text for people (in
        /// colour only on a terminal), json for a log collector (one object
        /// a line). Its level: COFFER_LOG (e.g. debug, or
        /// info,coffer_server=debug)
        #[arg(long, env = "COFFER_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: crate::serve::LogFormat,
        /// Keep synced files (sealed) in this directory, made 0700
        /// [default: blobs under coffer-server in your data directory]
        #[arg(
            long,
            env = "COFFER_BLOB_DIR",
            value_name = "DIR",
            conflicts_with = "s3_bucket"
        )]
        blob_dir: Option<std::path::PathBuf>,
        /// Keep synced files (sealed) in this S3-compatible bucket, which
        /// must exist. Credentials from AWS_ACCESS_KEY_ID and
        /// AWS_SECRET_ACCESS_KEY, or --s3-credentials-file; never in a URL
        #[arg(long, env = "COFFER_S3_BUCKET", value_name = "NAME")]
        s3_bucket: Option<String>,
        /// The S3 service, https://HOST[:PORT] (plain http:// only to a
        /// loopback address) [default: AWS S3 of the region]
        #[arg(
            long,
            env = "COFFER_S3_ENDPOINT",
            value_name = "URL",
            requires = "s3_bucket"
        )]
        s3_endpoint: Option<String>,
        /// The bucket's region [default: us-east-1]
        #[arg(
            long,
            env = "COFFER_S3_REGION",
            value_name = "REGION",
            requires = "s3_bucket"
        )]
        s3_region: Option<String>,
        /// The S3 credentials in a file (mode 0600) of `key = value` lines:
        /// aws_access_key_id, aws_secret_access_key and optionally
        /// aws_session_token (an AWS credentials file of one profile)
        #[arg(
            long,
            env = "COFFER_S3_CREDENTIALS_FILE",
            value_name = "FILE",
            requires = "s3_bucket"
        )]
        s3_credentials_file: Option<std::path::PathBuf>,
        /// The largest file a device may upload, e.g. 2GiB (refused before
        /// a byte is sent)
        #[arg(long, default_value = "2GiB", value_name = "SIZE", value_parser = coffer_server::files::parse_size)]
        max_file_size: u64,
        /// Each organization's storage for files, its stored files and its
        /// unfinished uploads, e.g. 100GiB
        #[arg(long, default_value = "100GiB", value_name = "SIZE", value_parser = coffer_server::files::parse_size)]
        org_file_quota: u64,
        /// How long an unfinished upload waits for its next piece before it
        /// is dropped, e.g. 24h
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        upload_expiry: std::time::Duration,
        /// How many uploaded pieces the server holds in memory at once (each
        /// up to 8 MiB, about three copies while it is sealed); past them a
        /// piece waits 5 s, then is refused with 503 and Retry-After
        #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        max_concurrent_pieces: u16,
        #[command(flatten)]
        mqtt: Box<MqttFlags>,
    },
    /// Administer a control plane over its API (coffer serve)
    ///
    /// `coffer admin login` keeps the session token in a file readable only
    /// by you (coffer-admin/session under your data directory) until
    /// `coffer admin logout`. The password comes from COFFER_ADMIN_PASSWORD
    /// or a no-echo prompt.
    Admin(AdminArgs),
    /// The vault's local audit log: list it, or verify its chain
    ///
    /// Every security event (unlocks and failed attempts, slot and
    /// passphrase changes, temporary keys used, lockout settings, rotations,
    /// app exports) is appended, encrypted, in a MAC chain: an edited,
    /// deleted, reordered or truncated entry is detected. Failed attempts are
    /// logged by the next successful unlock (the log needs the vault key).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Add a recovery slot and print its key, once
    ///
    /// The key is 40 characters in groups of five with a checksum that
    /// catches typos. Store it offline: coffer cannot show it again.
    RecoveryKey {
        /// Name of the new slot
        #[arg(long, default_value = "recovery")]
        name: String,
    },
    /// Check that a passphrase (or --recovery key) opens the vault and that
    /// the whole header is authentic; with --deep, everything else too
    ///
    /// --deep reads the whole vault once: every page of every database
    /// (SQLCipher's page authentication and SQLite's integrity check), every
    /// chunk of every stored file, the audit chain, and the catalog against
    /// the files on disk (missing blobs, orphans, leftovers of interrupted
    /// writes). It changes nothing. Exit 20 when it finds a problem. Run it
    /// while no other coffer process writes to the vault.
    Verify {
        /// Read and check the whole vault, not only the header
        #[arg(long)]
        deep: bool,
    },
    /// Add or list apps (each with its own keys and encrypted database)
    #[command(subcommand)]
    App(AppCommand),
    /// Run one SQL statement on an app's encrypted database
    ///
    /// Prints the rows as a table (or --json), or the number of rows changed.
    Sql {
        /// The app
        app: String,
        /// One SQL statement
        query: String,
    },
    /// An app's key-value store
    #[command(subcommand)]
    Kv(KvCommand),
    /// An app's record store (JSON documents with versions)
    #[command(subcommand)]
    Records(RecordsCommand),
    /// An app's file store (large blobs, encrypted in 64 KiB chunks)
    #[command(subcommand)]
    Files(FilesCommand),
    /// Write a whole app (database and files) to one encrypted archive
    ///
    /// The archive has its own passphrase (COFFER_NEW_PASSPHRASE,
    /// --new-passphrase-file, or asked twice), stretched with Argon2id.
    Export {
        /// The app
        app: String,
        /// The archive to write
        #[arg(long, short)]
        out: std::path::PathBuf,
        /// Target time of the archive's key derivation, in milliseconds
        #[arg(long, default_value_t = 500, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=10_000))]
        kdf_time_ms: u64,
    },
    /// Import an app archive as a new app (all or nothing)
    ///
    /// The archive's passphrase is the second secret: COFFER_NEW_PASSPHRASE,
    /// --new-passphrase-file, or asked.
    Import {
        /// The archive to read
        archive: std::path::PathBuf,
        /// Name of the new app [default: the name in the archive]
        #[arg(long = "as", value_name = "NAME")]
        rename: Option<String>,
    },
    /// Enroll this vault with an organization's control plane
    ///
    /// Unlocks the vault (its data stays), spends a one-time enrollment code
    /// (--code, COFFER_ENROLL_CODE or a prompt) and keeps the device token,
    /// the server's URL and certificate pin and the organization's policy
    /// key in the vault's encrypted settings; adds an escrow slot whose key
    /// only the server keeps. Trust a self-signed server by the SHA-256
    /// fingerprint `coffer serve --dev-tls` prints (--pin-sha256), or a CA
    /// (--ca-cert).
    Enroll {
        /// The control plane's URL
        #[arg(long, env = "COFFER_SERVER", value_name = "URL")]
        server: String,
        /// The one-time enrollment code [default: COFFER_ENROLL_CODE, or a
        /// prompt]
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
        /// The device's name on the server [default: VAULT@HOSTNAME]
        #[arg(long)]
        name: Option<String>,
        /// Trust only the certificate with this SHA-256 (64 hex digits,
        /// colons allowed)
        #[arg(long, value_name = "FINGERPRINT", conflicts_with = "ca_cert")]
        pin_sha256: Option<String>,
        /// Trust this PEM certificate (a CA, or the server's own)
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<std::path::PathBuf>,
    },
    /// Log in on a shared device: online through the server, or offline
    ///
    /// Online (an enrolled vault, the server reachable): checks in first (a
    /// whole-device wipe order is carried out before anything else), then
    /// the server checks NAME's server password (COFFER_SERVER_PASSWORD or a
    /// prompt) and that NAME belongs to the device's organization, and
    /// releases the vault's escrow key; the vault opens through its escrow
    /// slot and NAME's own passphrase slot is added or renewed (the new
    /// passphrase from COFFER_NEW_PASSPHRASE or asked twice; the
    /// organization's policy rules apply). Offline: NAME's own slot opens
    /// the vault with their passphrase; without one, it needs one online
    /// login first.
    Login {
        /// The user (their name on the server, and their slot's name)
        #[arg(long)]
        user: String,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Deliver readings to the control plane, queued in the vault if offline
    ///
    /// FILE (or - for standard input) holds a JSON array of readings, a
    /// {"readings": [...]} object, or one reading per line, each
    /// {"at": UNIX_SECONDS, "name": "temp.c", "value": ANY}. They are
    /// queued as one batch in the vault's encrypted settings, then every
    /// queued batch is sent, oldest first; a lost connection is retried,
    /// and what cannot be sent waits for the next 'coffer deliver' (with no
    /// FILE, it only sends the queue). A retried batch is stored once.
    Deliver {
        /// The readings (JSON), or - for standard input
        file: Option<std::path::PathBuf>,
        /// Attempts per batch after a lost connection
        #[arg(long, default_value_t = 3)]
        retries: u32,
        /// Publish the batches to the organization's MQTT broker (QoS 1,
        /// TLS, the device's own topic) instead; what the broker cannot
        /// take goes over HTTP
        #[arg(long)]
        mqtt: bool,
    },
    /// Sync the records of the apps the organization's policy names, both ways
    ///
    /// One round: a check-in (wipe orders and a newer policy first), then
    /// for each app in the signed policy's sync list, every local change is
    /// pushed and the organization's changes are pulled to the end. Nothing
    /// is ever lost: a change the server cannot take as the record's latest
    /// is kept as a conflict on both sides ('coffer conflicts'); a pulled
    /// record never overwrites a local change not yet delivered; offline,
    /// everything waits for the next round. An app the policy no longer
    /// lists, or every app if the device is revoked, is crypto-erased as
    /// the organization says.
    Sync {
        #[command(subcommand)]
        command: Option<SyncCommand>,
    },
    /// List, show and resolve records in conflict (exit 19 while any)
    Conflicts {
        #[command(subcommand)]
        command: Option<ConflictsCommand>,
    },
    /// Check in with the control plane and do what it says
    ///
    /// Wipe orders first: a whole-device order crypto-erases the vault
    /// (exit 12), a one-user order removes that user's slot; each is then
    /// acknowledged. Then a newer signed policy is fetched and verified
    /// against the organization key pinned at enrollment: a bad signature, a
    /// policy for another organization or a downgrade is refused and the
    /// last good policy kept.
    CheckIn,
    /// Keep the vault unlocked: later commands run without the passphrase
    ///
    /// Unlocks once, then leaves an agent process holding the vault open
    /// (its key pinned in RAM, the process not dumpable), reachable only by
    /// your user through a socket in the vault's directory. It ends with
    /// 'coffer lock', after --for, after the policy's idle time without a
    /// command (15 min without a policy), when the vault is rotated or
    /// wiped, or when a check-in (on the policy's interval) carries out a
    /// wipe order. Commands given --recovery or a --passphrase-file unlock
    /// as usual, and so does 'coffer verify'.
    Unlock {
        /// End the session after this long at most, e.g. 8h
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        for_at_most: Option<std::time::Duration>,
        /// Check in at least this often (the policy's interval otherwise)
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        check_in_every: Option<std::time::Duration>,
    },
    /// End the unlock session of the vault ('coffer unlock')
    Lock,
    /// The unlock agent's own process (started by 'coffer unlock')
    #[command(name = "__unlock-agent", hide = true)]
    UnlockAgent {
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        for_at_most: Option<std::time::Duration>,
        #[arg(long, value_parser = humantime::parse_duration)]
        check_in_every: Option<std::time::Duration>,
    },
    /// Shell completions for coffer, on standard output
    ///
    /// Install (bash): `coffer completions bash > ~/.local/share/bash-completion/completions/coffer`;
    /// zsh: into a directory of your `fpath` as `_coffer`; fish:
    /// `~/.config/fish/completions/coffer.fish`.
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Man pages for coffer and each of its commands, written into DIR
    ///
    /// Install: `coffer man ~/.local/share/man/man1` (then `man coffer`,
    /// `man coffer-serve`, …).
    Man {
        /// Where to write the pages (made if missing)
        dir: std::path::PathBuf,
    },
    /// A guided walk through a throwaway space: create a vault, add a second
    /// user and a recovery key, unlock with each, and see tampering caught
    ///
    /// With --console: a throwaway control plane filled with sample data
    /// (people, devices, readings, policies, a sync conflict, a pending
    /// wipe), served on loopback until Ctrl-C, for trying the admin
    /// console in a browser.
    Demo {
        /// Keep the demo space (or the console demo's database) instead of
        /// deleting it
        #[arg(long)]
        keep: bool,
        /// Serve the admin console with sample data instead of the tour
        #[arg(long)]
        console: bool,
        /// Where the console demo listens (plain HTTP: loopback only)
        #[arg(
            long,
            default_value = "127.0.0.1:8080",
            value_name = "ADDR",
            requires = "console"
        )]
        listen: std::net::SocketAddr,
    },
}

#[derive(Debug, Args)]
pub struct KdfArgs {
    /// Key-derivation function of the new passphrase slot
    #[arg(long, default_value = "argon2id", value_parser = ["argon2id", "pbkdf2-sha256", "scrypt"])]
    pub kdf: String,
    /// Target time of one key derivation, in milliseconds (calibrated on
    /// this machine; never below the OWASP minimum parameters)
    #[arg(long, default_value_t = 500, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub kdf_time_ms: u64,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Name of the first slot (the user) [default: $USER, else "owner"]
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Debug, Subcommand)]
pub enum SlotCommand {
    /// Add a passphrase slot for another user of this device
    ///
    /// Unlocks with an existing passphrase (or --recovery), then asks for the
    /// new user's passphrase (COFFER_NEW_PASSPHRASE or --new-passphrase-file).
    Add {
        /// The new slot's name (the user)
        name: String,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// List key slots with names, kinds, KDF parameters and dates (unlocks)
    List,
    /// Remove a key slot (unlocks). The last slot cannot be removed.
    Remove {
        /// Name of the slot to remove
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Add an app
    Add {
        /// The app's name (a-z 0-9 . _ -)
        name: String,
        /// Comma-separated capabilities: sql, kv, records, files, export
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "sql,kv,records,files,export"
        )]
        allow: Vec<String>,
    },
    /// List the apps with their capabilities
    Ls,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a value (raw bytes on stdout; --json gives text or hex)
    Get {
        /// The app
        app: String,
        /// The key
        key: String,
    },
    /// Set a value, from the argument, or from stdin when VALUE is '-'
    Put {
        /// The app
        app: String,
        /// The key
        key: String,
        /// The value ('-' reads stdin)
        value: String,
    },
    /// Delete a key
    Rm {
        /// The app
        app: String,
        /// The key
        key: String,
    },
    /// List keys, optionally those starting with PREFIX
    Ls {
        /// The app
        app: String,
        /// Only keys starting with this
        #[arg(default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// What waits, what is in conflict or refused, per app (no network)
    Status,
}

/// Which side of a conflict wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Keep {
    /// This device's state
    Local,
    /// The server's head
    Server,
}

#[derive(Debug, Subcommand)]
pub enum ConflictsCommand {
    /// The records in conflict (exit 19 while any)
    List {
        /// Only this app
        #[arg(long)]
        app: Option<String>,
    },
    /// Base, local and server sides of one record, side by side
    Show {
        /// The app
        app: String,
        /// The collection
        collection: String,
        /// The record id
        id: String,
    },
    /// End a conflict here (delivered by the next 'coffer sync')
    Resolve {
        /// The app
        app: String,
        /// The collection
        collection: String,
        /// The record id
        id: String,
        /// Keep this side
        #[arg(long, value_enum)]
        keep: Option<Keep>,
        /// Or write this JSON body ('-' reads stdin)
        #[arg(long, value_name = "FILE")]
        body: Option<std::path::PathBuf>,
        /// Or delete the record
        #[arg(long)]
        delete: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Create or update a record with a JSON body ('-' reads stdin)
    Put {
        /// The app
        app: String,
        /// The collection
        collection: String,
        /// The record id
        id: String,
        /// The JSON body ('-' reads stdin)
        body: String,
        /// Only write if the record is at this version (0: must not exist)
        #[arg(long)]
        base_version: Option<u64>,
        /// Attach a stored file of the app at its current version
        /// (repeatable; without any, the record keeps the files it has)
        #[arg(long = "file", value_name = "NAME")]
        files: Vec<String>,
    },
    /// Print a record
    Get {
        /// The app
        app: String,
        /// The collection
        collection: String,
        /// The record id
        id: String,
    },
    /// Delete a record (kept as a tombstone for sync)
    Rm {
        /// The app
        app: String,
        /// The collection
        collection: String,
        /// The record id
        id: String,
        /// Only delete if the record is at this version
        #[arg(long)]
        base_version: Option<u64>,
    },
    /// List the live records of a collection
    Ls {
        /// The app
        app: String,
        /// The collection
        collection: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Store a file (from PATH, or stdin with '-'), replacing any previous
    /// version atomically
    Put {
        /// The app
        app: String,
        /// The name to store it under
        name: String,
        /// The file to read ('-' for stdin)
        path: std::path::PathBuf,
        /// Content type to record (e.g. image/jpeg)
        #[arg(long = "type")]
        content_type: Option<String>,
    },
    /// Write a stored file to PATH (default: stdout)
    Get {
        /// The app
        app: String,
        /// The stored name
        name: String,
        /// Where to write ('-' or absent: stdout). Absent, a terminal is
        /// refused (a stored file is usually binary); '-' writes anyway
        #[arg(long, short)]
        out: Option<std::path::PathBuf>,
    },
    /// Delete a stored file
    Rm {
        /// The app
        app: String,
        /// The stored name
        name: String,
    },
    /// List stored files with sizes and types
    Ls {
        /// The app
        app: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List the events (unlocks; the listing's own unlock is the last entry)
    List {
        /// Show only the last N events
        #[arg(long, value_name = "N")]
        last: Option<usize>,
    },
    /// Check the whole chain; exit code 15 if anything was tampered with
    Verify,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The server's URL [default: the one 'login' saved, else
    /// http://127.0.0.1:8443]
    #[arg(long, env = "COFFER_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Trust this PEM certificate for TLS (e.g. the server's --dev-tls one)
    /// [default: the one 'login' saved for that server]
    #[arg(long, env = "COFFER_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// A user of an organization, by id or by name.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct UserRef {
    /// The user's id
    #[arg(long)]
    pub user_id: Option<i64>,
    /// The user's name
    #[arg(long)]
    pub user: Option<String>,
}

/// Where a server on SQLite keeps its state (the defaults of `coffer serve`).
#[derive(Debug, Args)]
pub struct ServerFilesArgs {
    /// The SQLite database (sqlite://PATH or PATH) [default: server.db under
    /// coffer-server in your data directory]
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The local blob directory [default: blobs under coffer-server in your
    /// data directory]
    #[arg(
        long,
        env = "COFFER_BLOB_DIR",
        value_name = "DIR",
        conflicts_with = "blobs_in_s3"
    )]
    pub blob_dir: Option<std::path::PathBuf>,
    /// The server keeps files in S3: no local blob directory (back the
    /// bucket up with its own versioning or replication)
    #[arg(long)]
    pub blobs_in_s3: bool,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Copy the database (online), the file pieces and a development
    /// certificate into a new directory
    Backup {
        /// The new directory (made 0700; must not exist or be empty)
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        #[command(flatten)]
        files: ServerFilesArgs,
    },
    /// Check a backup with the master key, then put it in place (never over
    /// existing files); start 'coffer serve' on it afterwards
    Restore {
        /// The backup directory
        from: std::path::PathBuf,
        #[command(flatten)]
        files: ServerFilesArgs,
        /// The master key file the server ran with (or the hex key in
        /// COFFER_MASTER_KEY)
        #[arg(long, env = "COFFER_MASTER_KEY_FILE", value_name = "FILE")]
        master_key_file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Set up an empty server: the first organization and its owner, with
    /// the setup token the server printed (COFFER_SETUP_TOKEN or a prompt)
    /// and the owner's password (COFFER_ADMIN_PASSWORD or a prompt)
    Setup {
        /// The first organization's name
        #[arg(long)]
        organization: String,
        /// The owner's user name
        #[arg(long)]
        owner: String,
    },
    /// Change your own password (the current one, then the new one twice;
    /// COFFER_ADMIN_PASSWORD and COFFER_NEW_PASSPHRASE for scripts)
    Password,
    /// Log in (the session is kept for the next commands)
    Login {
        /// Your user name
        #[arg(long)]
        user: String,
    },
    /// End the session
    Logout,
    /// Who you are, and your organizations and roles
    Me,
    /// An organization's users, by name: id, role, whether disabled
    Users {
        /// The organization's id
        #[arg(long)]
        org: i64,
    },
    /// Add a user to an organization (the initial password from
    /// COFFER_NEW_PASSPHRASE or a prompt)
    AddUser {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The new user's name
        #[arg(long)]
        user: String,
        /// owner, admin, member or auditor
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Change a user's role
    SetRole {
        /// The organization's id
        #[arg(long)]
        org: i64,
        #[command(flatten)]
        who: UserRef,
        /// owner, admin, member or auditor
        #[arg(long)]
        role: String,
    },
    /// Remove a user from an organization
    RemoveUser {
        /// The organization's id
        #[arg(long)]
        org: i64,
        #[command(flatten)]
        who: UserRef,
    },
    /// A one-time enrollment code for a device
    EnrollCode {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// How long it stays valid, e.g. 1h, 2d (at most 7 days)
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        valid_for: std::time::Duration,
    },
    /// Devices: list, revoke, order or cancel a remote wipe
    #[command(subcommand)]
    Device(AdminDeviceCommand),
    /// Signed policies: publish a new version, show the latest
    #[command(subcommand)]
    Policy(AdminPolicyCommand),
    /// Data the devices delivered: query, or export as CSV or JSON
    #[command(subcommand)]
    Data(AdminDataCommand),
    /// Synced records: list, show (audited), export, resolve a conflict
    #[command(subcommand)]
    Records(AdminRecordsCommand),
    /// Local authors of devices whose records wait to be bound to a user
    #[command(subcommand)]
    Authors(AdminAuthorsCommand),
    /// Usage over a time range, per organization, user or device
    Usage {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// org, user or device
        #[arg(long, default_value = "org")]
        by: String,
        /// From (Unix seconds)
        #[arg(long)]
        from: Option<i64>,
        /// To (Unix seconds, exclusive)
        #[arg(long)]
        to: Option<i64>,
        /// Print CSV instead of a table
        #[arg(long)]
        csv: bool,
    },
    /// Disable a user of one organization (their sessions end)
    DisableUser {
        /// The organization's id
        #[arg(long)]
        org: i64,
        #[command(flatten)]
        who: UserRef,
    },
    /// Enable a disabled user again
    EnableUser {
        /// The organization's id
        #[arg(long)]
        org: i64,
        #[command(flatten)]
        who: UserRef,
    },
    /// The server's audit trail
    #[command(subcommand)]
    Audit(AdminAuditCommand),
    /// Organizations (the server's operators): create, list, show,
    /// suspend, resume, delete
    #[command(subcommand)]
    Org(AdminOrgCommand),
    /// The server's operators (operators): list, add, remove
    #[command(subcommand)]
    Operator(AdminOperatorCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminOperatorCommand {
    /// Who operates the server
    List,
    /// Make an enabled user an operator
    Add {
        /// The user's id
        user_id: i64,
    },
    /// Stop a user being an operator (never the last one)
    Remove {
        /// The user's id
        user_id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminOrgCommand {
    /// Create an organization and its first owner, a new user (the initial
    /// password from COFFER_NEW_PASSPHRASE or a prompt)
    Create {
        /// The organization's name
        #[arg(long)]
        name: String,
        /// The owner's user name
        #[arg(long)]
        owner: String,
    },
    /// Every organization: size and state, never contents
    List,
    /// One organization (operators, and its owners)
    Show {
        /// The organization's id
        org: i64,
    },
    /// Suspend an organization: its users and devices are refused at once
    /// (devices may still check in, to receive a wipe); nothing is deleted
    Suspend {
        /// The organization's id
        org: i64,
    },
    /// Resume a suspended organization
    Resume {
        /// The organization's id
        org: i64,
    },
    /// Delete a suspended organization and everything of it (its devices,
    /// keys, policies, data); its audit rows stay. Cannot be undone.
    Delete {
        /// The organization's id
        org: i64,
        /// The organization's name, typed again to confirm
        #[arg(long, value_name = "NAME")]
        confirm_name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminDeviceCommand {
    /// The organization's devices: last check-in, escrow, pending wipes
    List {
        /// The organization's id
        #[arg(long)]
        org: i64,
    },
    /// Revoke a device's token (its escrow key is deleted)
    Revoke {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The device's id
        device: i64,
    },
    /// Order a remote wipe: the whole device (its escrow key is deleted at
    /// once), or only one user's slot with --user; carried out at the
    /// device's next check-in
    Wipe {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The device's id
        device: i64,
        /// Only this user's slot
        #[arg(long)]
        user: Option<String>,
        /// Do not ask (otherwise: type the device's name on the terminal)
        #[arg(long)]
        yes: bool,
    },
    /// A device's wipe orders: pending, acknowledged or cancelled
    Wipes {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The device's id
        device: i64,
    },
    /// Cancel a pending wipe order
    CancelWipe {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The device's id
        device: i64,
        /// The order's id
        order: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminPolicyCommand {
    /// Sign and publish a policy version (above every published one)
    ///
    /// FILE holds the rules as JSON (docs/formats/policy.md); fields left
    /// out take their defaults, and the signed document holds them all.
    Publish {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The new version
        #[arg(long)]
        version: i64,
        /// The rules (JSON), or - for standard input
        file: PathBuf,
    },
    /// The latest policy, its signature checked against the organization's
    /// key
    Show {
        /// The organization's id
        #[arg(long)]
        org: i64,
    },
}

#[derive(Debug, Args)]
pub struct DataFilter {
    /// The organization's id
    #[arg(long)]
    pub org: i64,
    /// Only this device
    #[arg(long)]
    pub device: Option<i64>,
    /// Readings taken at or after (Unix seconds)
    #[arg(long)]
    pub from: Option<i64>,
    /// Readings taken before (Unix seconds)
    #[arg(long)]
    pub to: Option<i64>,
    /// Only this reading name
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AdminRecordsCommand {
    /// One page of records (no bodies); --conflicts or --provisional filter
    List {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// Only this app
        #[arg(long)]
        app: Option<String>,
        /// Only this collection
        #[arg(long)]
        collection: Option<String>,
        /// Only records in conflict
        #[arg(long)]
        conflicts: bool,
        /// Only records waiting for their author to be bound
        #[arg(long)]
        provisional: bool,
        /// The next_after of the previous page
        #[arg(long)]
        after: Option<String>,
        /// Most records
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// One record with its body and its conflict leaves (the read is audited)
    Show {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The app
        app: String,
        /// The collection
        collection: String,
        /// The record id
        id: String,
    },
    /// Write one of a record's files to PATH (the fetch is audited)
    File {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The app
        app: String,
        /// The collection
        collection: String,
        /// The record id
        id: String,
        /// The file's name, as the record references it
        name: String,
        /// Where to write it
        #[arg(long, short)]
        out: std::path::PathBuf,
    },
    /// Every record of an app with its body, as JSON or CSV (audited)
    Export {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The app
        #[arg(long)]
        app: String,
        /// json or csv
        #[arg(long, default_value = "json")]
        format: String,
        /// Write here instead of standard output
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// End a conflict: keep one side (a revision), or write a new body, or delete
    Resolve {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The app
        app: String,
        /// The collection
        collection: String,
        /// The record id
        id: String,
        /// Keep this revision's content (the head's or a leaf's)
        #[arg(long)]
        keep: Option<String>,
        /// Or this JSON body ('-' reads stdin)
        #[arg(long, value_name = "FILE")]
        body: Option<std::path::PathBuf>,
        /// Or delete the record
        #[arg(long)]
        delete: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminAuthorsCommand {
    /// The local authors whose records are provisional
    List {
        /// The organization's id
        #[arg(long)]
        org: i64,
    },
    /// Bind a device's local author to a user: their records are published
    Bind {
        /// The organization's id
        #[arg(long)]
        org: i64,
        /// The device
        #[arg(long)]
        device: i64,
        /// The author's name on the device (a slot name)
        #[arg(long)]
        author: String,
        /// The user they are
        #[arg(long)]
        user_id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminDataCommand {
    /// One page of readings (use --after with the printed next_after)
    Query {
        #[command(flatten)]
        filter: DataFilter,
        /// Rows after this id
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many rows
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Every matching reading, paged through, as CSV or JSON
    Export {
        #[command(flatten)]
        filter: DataFilter,
        /// csv or json
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
        /// Write here instead of standard output
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminAuditCommand {
    /// Check the chain (exit 15 if an edited, deleted or inserted row breaks
    /// it): the whole trail (the server's operators), or with --org as one
    /// organization's owners, admins and auditors see it
    Verify {
        /// Report on this organization's rows
        #[arg(long)]
        org: Option<i64>,
    },
}
