//! Where the bytes of synced files live (docs/server.md, "File storage"):
//! a local directory (the default) or an S3-compatible bucket, through the
//! `object_store` crate (no hand-written S3 signing). What is stored is
//! only sealed pieces ([`crate::blob_seal`]), one object each, named
//! `o<organization id>/<upload id>/<piece index, 8 digits>`: the pieces of
//! an upload are the blob it completes (no copy). The names carry an
//! organization id and a random upload id, never a file's name, hash or
//! content.
//!
//! A piece is durable before [`BlobStorage::put`] returns: on a local
//! directory it is written to a temporary file, synced, renamed into
//! place and the directory synced; on S3 a PUT is answered once stored.
//! Several `coffer serve` processes may share one bucket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use rand_core::RngCore;
use secrecy::{ExposeSecret, SecretString};

/// Why the blob storage failed or was refused. Never carries a credential,
/// an endpoint URL or an object's content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The configuration makes no sense (which rule, in fixed words).
    #[error("blob storage: {0}")]
    Config(&'static str),
    /// The S3 credentials file cannot be used.
    #[error("S3 credentials file {path}: {problem}")]
    CredentialsFile {
        /// The file.
        path: String,
        /// What is wrong with it (never a value from it).
        problem: String,
    },
    /// The local blob directory cannot be used.
    #[error("blob directory {path}: {problem}")]
    Directory {
        /// The directory.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No such object.
    #[error("the object is not in the blob storage")]
    NotFound,
    /// The storage failed an operation.
    #[error("blob storage failed while {op}: {message}")]
    Storage {
        /// What the server was doing.
        op: &'static str,
        /// The cause: the file system's words, or for S3 a bounded
        /// description ([`s3_error`]) — never the service's answer body.
        message: String,
    },
}

/// A local failure (the file system, a task): its own words.
fn storage_error(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> BlobError {
    move |e| BlobError::Storage {
        op,
        message: e.to_string(),
    }
}

/// An S3 failure, described in bounded words: what kind of failure, the
/// HTTP status and the S3 error code (`<Code>` of the answer) when there
/// are, how the connection failed when it did. Never the rest of the
/// answer's body — an AWS error body can quote the access key id, the
/// string to sign and the canonical request — nor a URL (with its query),
/// nor the object store's own wording, which carries both.
fn s3_error(op: &'static str) -> impl Fn(&object_store::Error) -> BlobError {
    move |e| BlobError::Storage {
        op,
        message: describe_s3_error(e),
    }
}

fn describe_s3_error(e: &object_store::Error) -> String {
    use object_store::Error as E;
    let kind = match e {
        E::NotFound { .. } => "not found",
        E::PermissionDenied { .. } => "permission denied",
        E::Unauthenticated { .. } => "not authenticated",
        E::Precondition { .. } => "precondition failed",
        E::AlreadyExists { .. } => "already exists",
        E::NotModified { .. } => "not modified",
        E::NotSupported { .. } | E::NotImplemented { .. } => "not supported",
        E::InvalidPath { .. } => "an invalid object name",
        E::UnknownConfigurationKey { .. } => "a configuration refused",
        _ => "the request failed",
    };
    let (mut status, mut code, mut transport) = (None, None, None);
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // The chain is short (object_store's error, the S3 client's, the
    // retry loop's, the HTTP client's): a bound all the same.
    for _ in 0..16 {
        let Some(cause) = at else { break };
        if let Some(http) = cause.downcast_ref::<object_store::client::HttpError>() {
            transport.get_or_insert(http.kind());
        }
        let text = cause.to_string();
        if status.is_none() {
            status = http_status_in(&text);
        }
        if code.is_none() {
            code = s3_code_in(&text);
        }
        at = cause.source();
    }
    let mut out = String::from(kind);
    if let Some(status) = status {
        out.push_str(&format!(", HTTP {status}"));
    }
    if let Some(code) = code {
        out.push_str(&format!(", S3 error {code}"));
    }
    if let Some(transport) = transport {
        let how = match transport {
            object_store::client::HttpErrorKind::Connect => "could not connect",
            object_store::client::HttpErrorKind::Request => "the request could not be sent",
            object_store::client::HttpErrorKind::Timeout => "timed out",
            object_store::client::HttpErrorKind::Interrupted => "the connection was cut",
            object_store::client::HttpErrorKind::Decode => "the answer could not be read",
            _ => "the HTTP client failed",
        };
        out.push_str(&format!(" ({how})"));
    }
    out
}

/// The status of object_store's "non-2xx status code: NNN" in `text`.
fn http_status_in(text: &str) -> Option<u16> {
    const MARK: &str = "status code: ";
    let at = text.find(MARK)? + MARK.len();
    let digits = text.get(at..at + 3)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|s| (100..600).contains(s))
}

/// The `<Code>` of an S3 error answer in `text`, if it looks like one: a
/// CamelCase word of letters and digits, at most 64 long, with a
/// lower-case letter in it (an access key id, upper-case and digits,
/// never passes).
fn s3_code_in(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = &text[start..start + len];
    let fits = (1..=64).contains(&code.len())
        && code.starts_with(|c: char| c.is_ascii_uppercase())
        && code.bytes().all(|b| b.is_ascii_alphanumeric())
        && code.bytes().any(|b| b.is_ascii_lowercase());
    fits.then(|| code.to_owned())
}

/// The name of one piece object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceName {
    org_id: i64,
    upload_id: String,
    index: u64,
}

impl PieceName {
    /// The piece `index` of upload `upload_id` (32 lower-case hex digits)
    /// of organization `org_id`.
    pub fn new(org_id: i64, upload_id: &str, index: u64) -> Result<PieceName, BlobError> {
        if org_id <= 0 || !coffer_protocol::files::is_upload_id(upload_id) {
            return Err(BlobError::Config(
                "an object name needs an organization and an upload id",
            ));
        }
        Ok(PieceName {
            org_id,
            upload_id: upload_id.to_owned(),
            index,
        })
    }

    /// `o<org>/<upload>/<index:08>`.
    pub fn as_str(&self) -> String {
        format!("o{}/{}/{:08}", self.org_id, self.upload_id, self.index)
    }

    /// `o<org>/<upload>/`: every piece of the upload.
    pub fn upload_prefix(&self) -> String {
        format!("o{}/{}/", self.org_id, self.upload_id)
    }
}

/// `o<org>/<upload>/`: every piece of one upload.
pub fn upload_prefix(org_id: i64, upload_id: &str) -> Result<String, BlobError> {
    PieceName::new(org_id, upload_id, 0).map(|p| p.upload_prefix())
}

/// `o<org>/`: every object of one organization.
pub fn org_prefix(org_id: i64) -> String {
    format!("o{org_id}/")
}

/// Whether `prefix` is one this server deletes: `o<org>/` or
/// `o<org>/<upload id>/` (anything else — an empty prefix above all, which
/// would be the whole bucket — is refused).
fn valid_prefix(prefix: &str) -> bool {
    let Some(rest) = prefix.strip_prefix('o') else {
        return false;
    };
    let mut parts = rest.split('/');
    let org_ok = parts.next().is_some_and(|org| {
        !org.is_empty()
            && org.len() <= 19
            && org.bytes().all(|b| b.is_ascii_digit())
            && !org.starts_with('0')
    });
    let rest: Vec<&str> = parts.collect();
    org_ok
        && match rest.as_slice() {
            [""] => true,
            [upload, ""] => coffer_protocol::files::is_upload_id(upload),
            _ => false,
        }
}

/// S3 credentials: an access key id and a secret key (and, for temporary
/// credentials, a session token). Never `Debug`, `Clone` or logged; zeroed
/// when dropped (object_store keeps its own copy for signing).
pub struct S3Credentials {
    access_key_id: SecretString,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3Credentials(..)")
    }
}

/// The environment variables [`S3Credentials::from_env`] reads (the AWS
/// tools' own names).
pub const S3_ENV: [&str; 3] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

impl S3Credentials {
    /// Credentials from their values.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> S3Credentials {
        S3Credentials {
            access_key_id: SecretString::from(access_key_id.into()),
            secret_access_key: SecretString::from(secret_access_key.into()),
            session_token: None,
        }
    }

    fn checked(self) -> Result<S3Credentials, &'static str> {
        let printable =
            |s: &str| !s.is_empty() && s.len() <= 1024 && s.bytes().all(|b| b.is_ascii_graphic());
        if !printable(self.access_key_id.expose_secret())
            || !printable(self.secret_access_key.expose_secret())
            || !self
                .session_token
                .as_ref()
                .is_none_or(|t| printable(t.expose_secret()))
        {
            return Err("an access key id, secret key or session token is empty, too long or not printable ASCII");
        }
        Ok(self)
    }

    /// From `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
    /// `AWS_SESSION_TOKEN` if set).
    pub fn from_env() -> Result<S3Credentials, BlobError> {
        let var = |name: &str| std::env::var(name).ok().map(zeroize::Zeroizing::new);
        let (Some(id), Some(secret)) = (var(S3_ENV[0]), var(S3_ENV[1])) else {
            return Err(BlobError::Config(
                "S3 needs credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or --s3-credentials-file",
            ));
        };
        let mut credentials = S3Credentials::new(id.as_str(), secret.as_str());
        credentials.session_token = var(S3_ENV[2]).map(|t| SecretString::from(t.to_string()));
        credentials.checked().map_err(BlobError::Config)
    }

    /// From a file of `key = value` lines — `aws_access_key_id`,
    /// `aws_secret_access_key` and optionally `aws_session_token`, as in
    /// an AWS credentials file (one profile: `[section]` lines, blank
    /// lines and `#` or `;` comments are skipped). The file must be
    /// private to its owner (no group or other permission bits), like the
    /// master key.
    pub fn from_file(path: &Path) -> Result<S3Credentials, BlobError> {
        let refused = |problem: String| BlobError::CredentialsFile {
            path: path.display().to_string(),
            problem,
        };
        let text = crate::private_file::read(path, 64 * 1024, "a credentials file (64 KiB)")
            .map_err(refused)?;
        parse_credentials(&text).map_err(|problem| refused(problem.to_owned()))
    }
}

/// The credentials of a credentials file's text; the problem in fixed
/// words (never a line of it: a line holds a secret).
fn parse_credentials(text: &str) -> Result<S3Credentials, String> {
    let (mut id, mut secret, mut token) = (None, None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) || line.starts_with('[') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {} is not `key = value`", n + 1));
        };
        let slot = match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => &mut id,
            "aws_secret_access_key" => &mut secret,
            "aws_session_token" => &mut token,
            _ => {
                return Err(format!(
                    "line {}: the keys are aws_access_key_id, aws_secret_access_key and aws_session_token",
                    n + 1
                ))
            }
        };
        if slot.is_some() {
            return Err(format!(
                "line {}: a key given twice (one profile per file)",
                n + 1
            ));
        }
        *slot = Some(SecretString::from(value.trim().to_owned()));
    }
    let (Some(access_key_id), Some(secret_access_key)) = (id, secret) else {
        return Err("it needs aws_access_key_id and aws_secret_access_key".into());
    };
    S3Credentials {
        access_key_id,
        secret_access_key,
        session_token: token,
    }
    .checked()
    .map_err(str::to_owned)
}

/// An S3-compatible bucket.
pub struct S3Config {
    /// The bucket (it must exist).
    pub bucket: String,
    /// The service's URL, `https://host[:port]` (plain `http://` only to a
    /// loopback address); `None`: AWS S3 of the region.
    pub endpoint: Option<String>,
    /// The region (AWS's default, `us-east-1`, suits most other services).
    pub region: String,
    /// The credentials.
    pub credentials: S3Credentials,
}

/// The region when none is given.
pub const DEFAULT_S3_REGION: &str = "us-east-1";

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Whether an S3 endpoint may be used, and whether it is plain HTTP: an
/// `http` or `https` URL with a host and nothing after it but `/`; no
/// user or password in it (credentials never go in a URL); plain HTTP only
/// to a loopback address.
fn check_endpoint(endpoint: &str) -> Result<bool, BlobError> {
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|_| BlobError::Config("the S3 endpoint is not a URL"))?;
    let plain = match uri.scheme_str() {
        Some("https") => false,
        Some("http") => true,
        _ => {
            return Err(BlobError::Config(
                "the S3 endpoint is an http:// or https:// URL",
            ))
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(BlobError::Config("the S3 endpoint names no host"));
    };
    if authority.as_str().contains('@') {
        return Err(BlobError::Config(
            "the S3 endpoint carries a user or password: credentials never go in a URL (use the environment or --s3-credentials-file)",
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(BlobError::Config(
            "the S3 endpoint is a scheme, a host and a port, with no path or query",
        ));
    }
    if plain {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(BlobError::Config(
                "plain http:// to the S3 endpoint only on loopback: use https://",
            ));
        }
    }
    Ok(plain)
}

fn check_bucket(bucket: &str) -> Result<(), BlobError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(BlobError::Config(
            "a bucket name is 3 to 63 lower-case letters, digits, dots and hyphens",
        ))
    }
}

fn check_region(region: &str) -> Result<(), BlobError> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BlobError::Config(
            "a region is lower-case letters, digits and hyphens",
        ))
    }
}

enum Backend {
    Local {
        root: PathBuf,
    },
    S3 {
        store: object_store::aws::AmazonS3,
        bucket: String,
    },
}

/// The blob storage: a local directory or an S3 bucket. Cheap to clone.
#[derive(Clone)]
pub struct BlobStorage {
    backend: Arc<Backend>,
    /// A pause before each read (tests of slow storage only).
    read_delay: Option<std::time::Duration>,
}

impl std::fmt::Debug for BlobStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.backend {
            Backend::Local { root } => write!(f, "BlobStorage(local {})", root.display()),
            Backend::S3 { bucket, .. } => write!(f, "BlobStorage(s3 bucket {bucket})"),
        }
    }
}

fn random_hex(n: usize) -> Result<String, BlobError> {
    let mut bytes = vec![0u8; n];
    rand_core::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| storage_error("drawing a temporary name")(&e))?;
    Ok(hex::encode(bytes))
}

/// Syncs a directory, so that the names in it (a rename, a new entry) are
/// durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Makes `dir` and its missing parents up to `root` (mode 0700), syncing
/// each parent whose entries changed.
fn make_dirs(root: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.is_dir() && at != root {
        missing.push(at.to_owned());
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    for new in missing.iter().rev() {
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        match builder.create(new) {
            Ok(()) => {}
            // Another request made it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if let Some(parent) = new.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

impl BlobStorage {
    /// A local directory (made, mode 0700, if missing). Refused if other
    /// users of the host can write to it: they could delete or swap
    /// pieces (which would not open, but the files would be lost).
    pub fn local(root: impl Into<PathBuf>) -> Result<BlobStorage, BlobError> {
        let root = root.into();
        let refused = |problem: String| BlobError::Directory {
            path: root.display().to_string(),
            problem,
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&root).map_err(|e| refused(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&root)
                .map_err(|e| refused(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o022 != 0 {
                return Err(refused(format!(
                    "other users of this host can write to it (mode {:04o}): `chmod 700` it",
                    mode & 0o7777
                )));
            }
        }
        Ok(BlobStorage::of(Backend::Local { root }))
    }

    /// An S3-compatible bucket (checked for sense here; reached only by
    /// [`BlobStorage::probe`] and the first use).
    pub fn s3(config: S3Config) -> Result<BlobStorage, BlobError> {
        check_bucket(&config.bucket)?;
        check_region(&config.region)?;
        let plain = config
            .endpoint
            .as_deref()
            .map(check_endpoint)
            .transpose()?
            .unwrap_or(false);
        // object_store's HTTP client (reqwest 0.13) takes its TLS crypto
        // from the process default: the server's own, ring. Already set
        // (by an earlier call, or by whoever embeds the server): kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let credentials = &config.credentials;
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(credentials.access_key_id.expose_secret())
            .with_secret_access_key(credentials.secret_access_key.expose_secret())
            // Path-style requests (`endpoint/bucket/key`): what every
            // S3-compatible service takes.
            .with_virtual_hosted_style_request(false)
            .with_allow_http(plain);
        if let Some(token) = &credentials.session_token {
            builder = builder.with_token(token.expose_secret());
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
        }
        // The builder's own errors may quote its configuration (never the
        // credentials, which it only signs with): say which step failed.
        let store = builder
            .build()
            .map_err(|_| BlobError::Config("the S3 configuration is refused by the S3 client"))?;
        Ok(BlobStorage::of(Backend::S3 {
            store,
            bucket: config.bucket,
        }))
    }

    fn of(backend: Backend) -> BlobStorage {
        BlobStorage {
            backend: Arc::new(backend),
            read_delay: None,
        }
    }

    /// The same storage, every read of a piece waiting `delay` first: for
    /// tests of what a slow storage does (a long read-back).
    #[doc(hidden)]
    pub fn slowed_for_tests(mut self, delay: std::time::Duration) -> BlobStorage {
        self.read_delay = Some(delay);
        self
    }

    /// "local" or "s3".
    pub fn kind(&self) -> &'static str {
        match &*self.backend {
            Backend::Local { .. } => "local",
            Backend::S3 { .. } => "s3",
        }
    }

    /// Checks that the storage answers (for S3: the bucket exists and the
    /// credentials may list it), so that a wrong configuration stops the
    /// server at start rather than at the first upload.
    pub async fn probe(&self) -> Result<(), BlobError> {
        match &*self.backend {
            Backend::Local { root } => std::fs::metadata(root)
                .map(|_| ())
                .map_err(|e| storage_error("reading the blob directory")(&e)),
            Backend::S3 { store, .. } => store
                .list_with_delimiter(Some(&object_store::path::Path::from("o0")))
                .await
                .map(|_| ())
                .map_err(|e| s3_error("listing the bucket")(&e)),
        }
    }

    /// Stores `bytes` as the object `name`, replacing any object of that
    /// name; durable when this returns. Dropped before it returns (a
    /// timeout), a write to a local directory does not land later: its
    /// file is renamed into place only if the caller still waits. (A PUT
    /// to S3 whose body was all sent may still be stored by the service.)
    pub async fn put(&self, name: &PieceName, bytes: Vec<u8>) -> Result<(), BlobError> {
        match &*self.backend {
            Backend::Local { root } => {
                /// Tells the blocking write, once dropped, that nobody waits.
                struct Waiting(Arc<std::sync::atomic::AtomicBool>);
                impl Drop for Waiting {
                    fn drop(&mut self) {
                        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let _waiting = Waiting(Arc::clone(&abandoned));
                let root = root.clone();
                let name = name.clone();
                tokio::task::spawn_blocking(move || put_local(&root, &name, &bytes, &abandoned))
                    .await
                    .map_err(|e| storage_error("writing a piece")(&e))?
            }
            Backend::S3 { store, .. } => store
                .put(&name.as_str().into(), bytes.into())
                .await
                .map(|_| ())
                .map_err(|e| s3_error("writing a piece")(&e)),
        }
    }

    /// The object `name` ([`BlobError::NotFound`] if there is none).
    pub async fn get(&self, name: &PieceName) -> Result<Vec<u8>, BlobError> {
        if let Some(delay) = self.read_delay {
            tokio::time::sleep(delay).await;
        }
        match &*self.backend {
            Backend::Local { root } => {
                let path = root.join(name.as_str());
                tokio::task::spawn_blocking(move || match std::fs::read(&path) {
                    Ok(bytes) => Ok(bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound),
                    Err(e) => Err(storage_error("reading a piece")(&e)),
                })
                .await
                .map_err(|e| storage_error("reading a piece")(&e))?
            }
            Backend::S3 { store, .. } => {
                let got = match store.get(&name.as_str().into()).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound),
                    Err(e) => return Err(s3_error("reading a piece")(&e)),
                };
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| s3_error("reading a piece")(&e))?;
                // One copy, into a buffer the piece is opened in place in.
                Ok(bytes.to_vec())
            }
        }
    }

    /// Deletes the object `name` (none there: nothing to do).
    pub async fn delete(&self, name: &PieceName) -> Result<(), BlobError> {
        match &*self.backend {
            Backend::Local { root } => {
                let path = root.join(name.as_str());
                tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(storage_error("deleting a piece")(&e)),
                })
                .await
                .map_err(|e| storage_error("deleting a piece")(&e))?
            }
            Backend::S3 { store, .. } => match store.delete(&name.as_str().into()).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(s3_error("deleting a piece")(&e)),
            },
        }
    }

    /// Deletes every object under `prefix` (`o<org>/<upload>/` or
    /// `o<org>/`; any other prefix is refused); returns how many there
    /// were (on a local directory: the directory's entries).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError> {
        if !valid_prefix(prefix) {
            return Err(BlobError::Config("not a prefix this server deletes"));
        }
        match &*self.backend {
            Backend::Local { root } => {
                let dir = root.join(prefix.trim_end_matches('/'));
                tokio::task::spawn_blocking(move || delete_local_dir(&dir))
                    .await
                    .map_err(|e| storage_error("deleting pieces")(&e))?
            }
            Backend::S3 { store, .. } => {
                let prefix = object_store::path::Path::from(prefix.trim_end_matches('/'));
                let listed = store
                    .list(Some(&prefix))
                    .map(|meta| meta.map(|m| m.location))
                    .boxed();
                let mut deleted = store.delete_stream(listed);
                let mut count = 0u64;
                while let Some(result) = deleted.next().await {
                    match result {
                        Ok(_) | Err(object_store::Error::NotFound { .. }) => count += 1,
                        Err(e) => return Err(s3_error("deleting pieces")(&e)),
                    }
                }
                Ok(count)
            }
        }
    }
}

fn put_local(
    root: &Path,
    name: &PieceName,
    bytes: &[u8],
    abandoned: &std::sync::atomic::AtomicBool,
) -> Result<(), BlobError> {
    use std::io::Write;
    let e = storage_error("writing a piece");
    let path = root.join(name.as_str());
    let dir = path
        .parent()
        .ok_or(BlobError::Config("a piece has a directory"))?;
    make_dirs(root, dir).map_err(|x| e(&x))?;
    let temporary = dir.join(format!(".{:08}.{}.tmp", name.index, random_hex(8)?));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if abandoned.load(std::sync::atomic::Ordering::SeqCst) {
            // The request gave up (and may have lost its lease to another
            // that wrote this piece since): landing now would replace it.
            return Err(std::io::Error::other(
                "the write took longer than its caller waited",
            ));
        }
        std::fs::rename(&temporary, &path)?;
        sync_dir(dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(|x| e(&x))
}

fn delete_local_dir(dir: &Path) -> Result<u64, BlobError> {
    let e = storage_error("deleting pieces");
    let count = match std::fs::read_dir(dir) {
        Ok(entries) => entries.count() as u64,
        Err(x) if x.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(x) => return Err(e(&x)),
    };
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(x) if x.kind() == std::io::ErrorKind::NotFound => {}
        Err(x) => return Err(e(&x)),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent).map_err(|x| e(&x))?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const UPLOAD: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn object_names_hold_ids_only() {
        let name = PieceName::new(7, UPLOAD, 3).unwrap();
        assert_eq!(name.as_str(), format!("o7/{UPLOAD}/00000003"));
        assert_eq!(name.upload_prefix(), format!("o7/{UPLOAD}/"));
        assert!(PieceName::new(7, "../etc", 0).is_err());
        assert!(PieceName::new(0, UPLOAD, 0).is_err());
        assert!(valid_prefix("o7/"));
        assert!(valid_prefix(&format!("o7/{UPLOAD}/")));
        for bad in [
            "",
            "/",
            "o/",
            "o07/",
            "o7",
            "o7/x/",
            "p7/",
            "o7/../",
            &format!("o7/{UPLOAD}/x/"),
        ] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn endpoints_carry_no_credentials_and_plain_http_stays_on_loopback() {
        assert!(!check_endpoint("https://s3.example.org").unwrap());
        assert!(!check_endpoint("https://s3.example.org:9000/").unwrap());
        assert!(check_endpoint("http://127.0.0.1:9000").unwrap());
        assert!(check_endpoint("http://[::1]:9000").unwrap());
        assert!(check_endpoint("http://localhost:9000").unwrap());
        for bad in [
            "http://s3.example.org",
            "http://10.0.0.1:9000",
            "https://key:secret@s3.example.org",
            "https://key@s3.example.org",
            "https://s3.example.org/bucket",
            "https://s3.example.org/?x=1",
            "ftp://s3.example.org",
            "s3.example.org",
            "",
        ] {
            let e = check_endpoint(bad).unwrap_err();
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn credentials_files_are_read_and_never_quoted() {
        let c = parse_credentials(
            "[default]\n# a comment\naws_access_key_id = AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY=wJalr/SECRET+key\n",
        )
        .unwrap();
        assert_eq!(c.access_key_id.expose_secret(), "AKIDEXAMPLE");
        assert_eq!(c.secret_access_key.expose_secret(), "wJalr/SECRET+key");
        assert!(c.session_token.is_none());
        assert_eq!(format!("{c:?}"), "S3Credentials(..)");
        for bad in [
            "aws_access_key_id = A\n",
            "aws_access_key_id = A\naws_secret_access_key SECRETVALUE\n",
            "aws_access_key_id = A\npassword = SECRETVALUE\n",
            "aws_access_key_id = A\naws_secret_access_key =\n",
            "aws_access_key_id = A\naws_secret_access_key = SECRETVALUE\naws_secret_access_key = B\n",
        ] {
            let e = parse_credentials(bad).unwrap_err();
            assert!(!e.contains("SECRETVALUE"), "{e}");
        }
    }

    #[test]
    fn s3_errors_are_described_without_their_body_or_url() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
            <Message>MARKER-message</Message><AWSAccessKeyId>AKIAMARKER0123456789</AWSAccessKeyId>\
            <StringToSign>MARKER-to-sign</StringToSign><CanonicalRequest>PUT /b/o1 MARKER-canonical\
            </CanonicalRequest></Error>";
        let text = format!(
            "Error performing PUT http://127.0.0.1:9000/b/o1/x?X-Amz-Credential=MARKER-query in 3ms \
             - Server returned non-2xx status code: 403 Forbidden: {body}"
        );
        let cause: Box<dyn std::error::Error + Send + Sync> = Box::new(std::io::Error::other(text));
        for e in [
            object_store::Error::Generic {
                store: "S3",
                source: cause,
            },
            object_store::Error::PermissionDenied {
                path: "o1/x".into(),
                source: Box::new(std::io::Error::other(format!(
                    "Server returned non-2xx status code: 403 Forbidden: {body}"
                ))),
            },
        ] {
            let message = s3_error("writing a piece")(&e).to_string();
            assert!(message.contains("HTTP 403"), "{message}");
            assert!(
                message.contains("S3 error SignatureDoesNotMatch"),
                "{message}"
            );
            for leak in ["MARKER", "AKIA", "127.0.0.1", "X-Amz", "PUT /"] {
                assert!(!message.contains(leak), "{message}");
            }
        }
        // A transport failure: how, never the URL the HTTP client names.
        let e = object_store::Error::Generic {
            store: "S3",
            source: Box::new(object_store::client::HttpError::new(
                object_store::client::HttpErrorKind::Connect,
                std::io::Error::other(
                    "error sending request for url (http://MARKER-host/?q=MARKER)",
                ),
            )),
        };
        let message = s3_error("reading a piece")(&e).to_string();
        assert!(message.contains("could not connect"), "{message}");
        assert!(!message.contains("MARKER"), "{message}");
        // A code that is not one (an access key id put in its place) is
        // left out; so is an endless one.
        assert_eq!(s3_code_in("<Code>AKIA0123456789ABCDEF</Code>"), None);
        assert_eq!(
            s3_code_in(&format!("<Code>A{}</Code>", "b".repeat(64))),
            None
        );
        assert_eq!(
            s3_code_in("<Code>NoSuchKey</Code>").as_deref(),
            Some("NoSuchKey")
        );
        assert_eq!(http_status_in("status code: 5x3"), None);
        assert_eq!(http_status_in("status code: 503 Slow Down"), Some(503));
    }

    #[test]
    fn buckets_and_regions_are_checked() {
        assert!(check_bucket("coffer-blobs").is_ok());
        for bad in ["ab", "Coffer", "-a-b", "a_b", &"a".repeat(64)] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
        assert!(check_region("eu-west-3").is_ok());
        assert!(check_region("eu west").is_err());
    }

    #[tokio::test]
    async fn a_local_directory_stores_replaces_and_deletes_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let storage = BlobStorage::local(dir.path().join("blobs")).unwrap();
        storage.probe().await.unwrap();
        let name = PieceName::new(2, UPLOAD, 0).unwrap();
        assert!(matches!(storage.get(&name).await, Err(BlobError::NotFound)));
        storage.put(&name, b"one".to_vec()).await.unwrap();
        storage.put(&name, b"two".to_vec()).await.unwrap();
        assert_eq!(storage.get(&name).await.unwrap(), b"two");
        let second = PieceName::new(2, UPLOAD, 1).unwrap();
        storage.put(&second, b"three".to_vec()).await.unwrap();
        // No temporary file is left behind.
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("blobs").join("o2").join(UPLOAD))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(entries.len(), 2, "{entries:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("blobs")), 0o700);
            assert_eq!(mode(&dir.path().join("blobs/o2")), 0o700);
        }
        assert!(storage.delete_prefix("").await.is_err());
        assert_eq!(
            storage.delete_prefix(&name.upload_prefix()).await.unwrap(),
            2
        );
        assert!(matches!(
            storage.get(&second).await,
            Err(BlobError::NotFound)
        ));
        assert_eq!(
            storage.delete_prefix(&name.upload_prefix()).await.unwrap(),
            0
        );
        storage.delete(&name).await.unwrap();
    }

    #[test]
    fn a_local_write_nobody_waits_for_does_not_land() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        std::fs::create_dir(&root).unwrap();
        let name = PieceName::new(2, UPLOAD, 0).unwrap();
        let waiting = std::sync::atomic::AtomicBool::new(false);
        put_local(&root, &name, b"first", &waiting).unwrap();
        let abandoned = std::sync::atomic::AtomicBool::new(true);
        assert!(put_local(&root, &name, b"late", &abandoned).is_err());
        assert_eq!(std::fs::read(root.join(name.as_str())).unwrap(), b"first");
        // No temporary file is left behind either.
        let entries = std::fs::read_dir(root.join("o2").join(UPLOAD))
            .unwrap()
            .count();
        assert_eq!(entries, 1);
    }
}
