//! The unlock agent (`coffer unlock`): a process that holds one vault open
//! so that later commands skip the KDF, as ssh-agent holds keys.
//!
//! The agent listens on a Unix socket inside the vault's directory (0700,
//! so only its owner can reach it) and checks every connection's peer
//! credentials: a process of another user is refused before it is read.
//! A client asks for the session key ([`coffer_device::SessionKey`]) and
//! opens the vault with it ([`coffer_device::Vault::reopen`]): no KDF, no
//! attempt counted. The agent ends — the key zeroized, the socket removed —
//! when asked (`coffer lock`), when its time is up, after the policy's idle
//! time without a request, when its key no longer opens the vault (another
//! process rotated or wiped it), or when a check-in carries out a wipe
//! order. It checks in on the policy's interval while it runs.
//!
//! The wire format is in docs/formats/unlock-agent.md: a 4-byte big-endian
//! length, then that many bytes of JSON, one request and one answer per
//! connection.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use coffer_device::{SessionKey, UnlockedVault, Vault};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Agent, Error, Result};

/// The socket's name in the vault's directory.
pub const SOCKET: &str = ".unlock-agent.sock";
/// The wire format's version.
pub const VERSION: u32 = 1;
/// The largest frame either side reads.
pub const MAX_FRAME: u32 = 4096;
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest the agent waits without looking at its clocks.
const TICK_MAX: Duration = Duration::from_secs(1);
/// The idle time when no policy sets one.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(15 * 60);

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// The session key.
    Key,
    /// End the session now.
    Lock,
    /// How long the session has left (no key).
    Status,
}

/// A request: `{"v": 1, "op": "key"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// [`VERSION`].
    pub v: u32,
    /// What is asked.
    pub op: Op,
}

/// An answer. `key` (64 hex digits) and `slot` answer [`Op::Key`];
/// `error` says why a request was refused.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// [`VERSION`].
    pub v: u32,
    /// The session key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The slot that opened the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<usize>,
    /// That slot's fingerprint (SHA-256 of it as stored), hex: a session
    /// is the slot's, not the index's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Seconds until the session ends by itself (the sooner of its time and
    /// its idle time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_in: Option<u64>,
    /// Why the request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(key) = self.key.as_mut() {
            zeroize::Zeroize::zeroize(key);
        }
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("v", &self.v)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("slot", &self.slot)
            .field("fingerprint", &self.fingerprint)
            .field("ends_in", &self.ends_in)
            .field("error", &self.error)
            .finish()
    }
}

fn answer() -> Answer {
    Answer {
        v: VERSION,
        key: None,
        slot: None,
        fingerprint: None,
        ends_in: None,
        error: None,
    }
}

fn bad(what: impl Into<String>) -> Error {
    Error::UnlockAgent(what.into())
}

/// Writes one frame.
fn write_frame(stream: &mut UnixStream, body: &[u8]) -> Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= MAX_FRAME)
        .ok_or_else(|| bad("a frame over 4 KiB"))?;
    stream
        .write_all(&len.to_be_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| bad(format!("cannot write to the agent's socket: {e}")))
}

/// Reads one frame, at most [`MAX_FRAME`] bytes.
fn read_frame(stream: &mut UnixStream) -> Result<Zeroizing<Vec<u8>>> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .map_err(|e| bad(format!("cannot read from the agent's socket: {e}")))?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(bad(format!("a frame of {len} bytes (at most {MAX_FRAME})")));
    }
    let mut body = Zeroizing::new(vec![0u8; len as usize]);
    stream
        .read_exact(&mut body)
        .map_err(|e| bad(format!("cannot read from the agent's socket: {e}")))?;
    Ok(body)
}

/// The socket of `vault`'s agent.
pub fn socket_path(vault: &Vault) -> PathBuf {
    vault.path().join(SOCKET)
}

/// How an agent's session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// `coffer lock`.
    Locked,
    /// Its time (`--for`) ran out.
    TimeUp,
    /// No request for the idle time.
    Idle,
    /// Its key no longer opens the vault (rotated or wiped elsewhere).
    KeyStale,
    /// A check-in carried out a wipe order: the vault is erased.
    Wiped,
}

/// How long an agent keeps the vault open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// At most this long in all (`None`: until locked or idle).
    pub for_at_most: Option<Duration>,
    /// Ends after this long without a request.
    pub idle: Duration,
    /// Checks in this often (an enrolled vault only).
    pub check_in_every: Option<Duration>,
}

impl Limits {
    /// The limits `vault`'s policy sets (its idle lock and check-in
    /// interval; the defaults when it has none), the check-in no rarer than
    /// `check_in_every` and the session no longer than `for_at_most`.
    pub fn from_policy(
        vault: &UnlockedVault,
        for_at_most: Option<Duration>,
        check_in_every: Option<Duration>,
    ) -> Result<Limits> {
        let policy = crate::policy::held_policy(vault)?;
        let idle = policy
            .as_ref()
            .map(|p| p.rules.idle_lock_secs)
            .filter(|s| *s > 0)
            .map_or(DEFAULT_IDLE, |s| Duration::from_secs(u64::from(s)));
        let enrolled = vault
            .setting(crate::enrollment::key::DEVICE_TOKEN)?
            .is_some();
        let policy_interval = policy
            .as_ref()
            .map(|p| Duration::from_secs(u64::from(p.rules.check_in_secs)));
        // At most once a second, whatever was asked.
        let check_in_every = check_in_every.map(|c| c.max(Duration::from_secs(1)));
        let check_in_every = match (enrolled, policy_interval, check_in_every) {
            (false, _, _) => None,
            (true, Some(p), Some(c)) => Some(p.min(c)),
            (true, p, c) => p.or(c).or(Some(Duration::from_secs(3600))),
        };
        Ok(Limits {
            for_at_most,
            idle,
            check_in_every,
        })
    }
}

/// The lock file an agent holds for its whole life: one agent per vault.
pub const LOCK: &str = ".unlock-agent.lock";

/// An agent's socket, bound under the vault's agent lock.
pub struct Bound {
    listener: UnixListener,
    /// Held (exclusively) until the agent ends.
    _lock: std::fs::File,
}

/// Binds the agent's socket for `vault` under its agent lock: refused when
/// another agent holds the lock; a socket a dead agent left is replaced
/// (only a socket: nothing else at that path is removed).
pub fn bind(vault: &Vault) -> Result<Bound> {
    let path = socket_path(vault);
    let lock_path = vault.path().join(LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| bad(format!("cannot open {}: {e}", lock_path.display())))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(bad(format!(
                "vault '{}' is already unlocked by an agent ('coffer lock' ends it)",
                vault.name()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(bad(format!("cannot lock {}: {e}", lock_path.display())))
        }
    }
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let _ = std::fs::remove_file(&path);
        }
        Ok(_) => {
            return Err(bad(format!(
                "{} is in the way and is not a socket: remove it",
                path.display()
            )))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| bad(format!("cannot listen on {}: {e}", path.display())))?;
    Ok(Bound {
        listener,
        _lock: lock,
    })
}

/// The agent's work: serves `vault` on `listener` until one of [`Ended`].
/// The socket file is removed when it returns.
pub fn serve(agent: &Agent, vault: UnlockedVault, bound: Bound, limits: Limits) -> Result<Ended> {
    let Bound { listener, _lock } = bound;
    let handle = vault.vault().clone();
    let path = socket_path(&handle);
    // Connections are accepted on a thread of their own (a blocking accept
    // answers at once) and handed over; this thread waits for the next one
    // or the next deadline, whichever comes first.
    let (tx, rx) = std::sync::mpsc::channel();
    let accepting = listener
        .try_clone()
        .map_err(|e| bad(format!("cannot listen on {}: {e}", path.display())))?;
    std::thread::spawn(move || {
        for stream in accepting.incoming() {
            if tx.send(stream).is_err() {
                break;
            }
        }
    });
    let ended = serving(agent, vault, &rx, limits);
    drop(rx);
    // Wake the accepting thread (it then finds nobody to hand to), then
    // take the socket away.
    let _ = UnixStream::connect(&path);
    drop(listener);
    // Still under the agent lock: the socket is this agent's own.
    let _ = std::fs::remove_file(&path);
    drop(_lock);
    ended
}

type Incoming = std::sync::mpsc::Receiver<std::io::Result<UnixStream>>;

fn serving(
    agent: &Agent,
    vault: UnlockedVault,
    incoming: &Incoming,
    limits: Limits,
) -> Result<Ended> {
    let started = Instant::now();
    let mut last_request = Instant::now();
    let mut next_check_in = limits.check_in_every.map(|every| started + every);
    let key = vault.session_key()?;
    let handle = vault.vault().clone();
    // Only the key is kept between requests, not the open vault (which
    // holds the data lock): a rotation by the owner can go ahead, and
    // ends the session by changing the key.
    drop(vault);
    loop {
        let now = Instant::now();
        if limits.for_at_most.is_some_and(|d| now >= started + d) {
            return Ok(Ended::TimeUp);
        }
        if now >= last_request + limits.idle {
            return Ok(Ended::Idle);
        }
        if let (Some(due), Some(every)) = (next_check_in, limits.check_in_every) {
            if now >= due {
                next_check_in = Some(now + every);
                let open = match handle.reopen(&key) {
                    Ok(open) => open,
                    Err(_) => return Ok(Ended::KeyStale),
                };
                match agent.check_in(open) {
                    Ok(_) => {}
                    Err(Error::Wiped(_)) => return Ok(Ended::Wiped),
                    Err(Error::Device(coffer_device::Error::Wiped { .. })) => {
                        return Ok(Ended::Wiped)
                    }
                    // Offline, or the server refused: the session goes on;
                    // the next check-in tries again.
                    Err(_) => {}
                }
            }
        }
        // Until the soonest deadline: the session's end, its idle end, the
        // next check-in (a second at most, so a clock step is noticed).
        let mut wake = (last_request + limits.idle).min(now + TICK_MAX);
        if let Some(d) = limits.for_at_most {
            wake = wake.min(started + d);
        }
        if let Some(due) = next_check_in {
            wake = wake.min(due);
        }
        match incoming.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Ok(mut stream)) => {
                match handle_connection(&handle, &key, &mut stream, &limits, started, last_request)
                {
                    Outcome::Ended(ended) => return Ok(ended),
                    // Only a command's use of the session counts as
                    // activity: a status probe, a refused peer or a bad
                    // frame does not keep it open.
                    Outcome::GaveKey => last_request = Instant::now(),
                    Outcome::Answered => {}
                }
            }
            Ok(Err(_)) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(bad("the socket stopped accepting"));
            }
        }
    }
}

/// What one connection came to.
enum Outcome {
    /// The session ends.
    Ended(Ended),
    /// A command took the key.
    GaveKey,
    /// Anything else (a status, a refusal).
    Answered,
}

/// One connection: peer checked, one request read and answered.
fn handle_connection(
    handle: &Vault,
    key: &SessionKey,
    stream: &mut UnixStream,
    limits: &Limits,
    started: Instant,
    last_request: Instant,
) -> Outcome {
    // Another user's process gets nothing, not even an answer.
    if !coffer_sys::peer_is_same_user(stream).unwrap_or(false) {
        return Outcome::Answered;
    }
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let request = match read_frame(stream).and_then(|body| {
        serde_json::from_slice::<Request>(&body).map_err(|e| bad(format!("not a request: {e}")))
    }) {
        Ok(request) if request.v == VERSION => request,
        Ok(request) => {
            let mut refused = answer();
            refused.error = Some(format!(
                "version {} (this agent speaks {VERSION})",
                request.v
            ));
            send(stream, &refused);
            return Outcome::Answered;
        }
        Err(e) => {
            let mut refused = answer();
            refused.error = Some(e.to_string());
            send(stream, &refused);
            return Outcome::Answered;
        }
    };
    let now = Instant::now();
    let ends_in = |last: Instant| {
        let idle_end = last + limits.idle;
        let end = limits
            .for_at_most
            .map_or(idle_end, |d| idle_end.min(started + d));
        end.saturating_duration_since(now).as_secs()
    };
    match request.op {
        Op::Lock => {
            send(stream, &answer());
            Outcome::Ended(Ended::Locked)
        }
        Op::Status => {
            let mut status = answer();
            status.ends_in = Some(ends_in(last_request));
            send(stream, &status);
            Outcome::Answered
        }
        Op::Key => {
            // The key must still open the vault: a rotation or a wipe by
            // another process ends the session here.
            if handle.reopen(key).is_err() {
                let mut refused = answer();
                refused.error = Some(coffer_device::Error::SessionEnded.to_string());
                send(stream, &refused);
                return Outcome::Ended(Ended::KeyStale);
            }
            let mut given = answer();
            given.key = Some(hex::encode(key.expose_secret()));
            given.slot = Some(key.slot());
            given.fingerprint = Some(hex::encode(key.fingerprint()));
            given.ends_in = Some(ends_in(now));
            send(stream, &given);
            Outcome::GaveKey
        }
    }
}

fn send(stream: &mut UnixStream, answer: &Answer) {
    // Written into a buffer that never grows (no stray copies of the key).
    let mut body = Zeroizing::new(Vec::with_capacity(MAX_FRAME as usize));
    if serde_json::to_writer(&mut *body, answer).is_ok() {
        let _ = write_frame(stream, &body);
    }
}

/// One request to `vault`'s agent; `None` when no agent answers.
fn ask(vault: &Vault, op: Op) -> Option<Answer> {
    let mut stream = UnixStream::connect(socket_path(vault)).ok()?;
    // The agent must be this user's too (not a socket someone planted).
    if !coffer_sys::peer_is_same_user(&stream).unwrap_or(false) {
        return None;
    }
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let body = serde_json::to_vec(&Request { v: VERSION, op }).ok()?;
    write_frame(&mut stream, &body).ok()?;
    let body = read_frame(&mut stream).ok()?;
    serde_json::from_slice::<Answer>(&body)
        .ok()
        .filter(|a| a.v == VERSION)
}

/// The session key from `vault`'s agent, if one runs and still opens it.
pub fn session_key(vault: &Vault) -> Option<SessionKey> {
    let answer = ask(vault, Op::Key)?;
    let hex_key = answer.key.as_deref()?;
    let mut bytes = Zeroizing::new([0u8; coffer_device::KEY_LEN]);
    hex::decode_to_slice(hex_key, &mut *bytes).ok()?;
    let mut fingerprint = [0u8; 32];
    hex::decode_to_slice(answer.fingerprint.as_deref()?, &mut fingerprint).ok()?;
    SessionKey::from_parts(*bytes, answer.slot?, fingerprint)
}

/// Ends `vault`'s agent; whether one was running.
pub fn lock(vault: &Vault) -> bool {
    ask(vault, Op::Lock).is_some_and(|a| a.error.is_none())
}

/// Seconds until `vault`'s agent ends by itself, if one runs.
pub fn status(vault: &Vault) -> Option<u64> {
    ask(vault, Op::Status)?.ends_in
}

impl Agent {
    /// Opens `vault` through its unlock agent, if one runs: no secret, no
    /// KDF; the policy's offline grace still holds. `None` when no agent
    /// answers (or its key no longer opens the vault): unlock as usual.
    pub fn unlock_through_agent(&self, vault: &Vault) -> Option<Result<UnlockedVault>> {
        let key = session_key(vault)?;
        let vault = self.guarded(vault);
        let opened = match vault.reopen(&key) {
            Ok(opened) => opened,
            Err(_) => return None,
        };
        Some(crate::policy::enforce_without_secret(opened, self.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/formats/unlock-agent.md, "Test vector".
    #[test]
    fn the_documented_frames() {
        let body = serde_json::to_vec(&Request {
            v: VERSION,
            op: Op::Key,
        })
        .unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        assert_eq!(
            hex::encode(&frame),
            "000000127b2276223a312c226f70223a226b6579227d"
        );
        let answer: Answer = serde_json::from_str(
            r#"{"v":1,"key":"0000000000000000000000000000000000000000000000000000000000000000","slot":0,"fingerprint":"0000000000000000000000000000000000000000000000000000000000000000","ends_in":899}"#,
        )
        .unwrap();
        assert_eq!((answer.slot, answer.ends_in), (Some(0), Some(899)));
        // The key never shows in Debug (the fingerprint, public, may).
        let mut keyed = answer;
        keyed.key = Some("ab".repeat(32));
        let shown = format!("{keyed:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        // Unknown fields and other versions' shapes are refused.
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"op":"key","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"op":"dump"}"#).is_err());
    }
}
