//! The session of an unlocked vault: the vault key in memory, the vault's
//! shared data lock, and when it all ends.
//!
//! A session ends — the key is zeroized (it lives in a zeroizing, mlock'ed
//! box), the data lock released, an ephemeral vault's directory deleted —
//! on [`crate::UnlockedVault::lock`], when it has been idle longer than its
//! timeout, or when the vault is dropped. An idle session is locked by a
//! watchdog thread on time, not only at the next call: a device left alone
//! does not keep the key in memory. The watchdog holds a weak reference, so
//! it never keeps a session alive.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::fsio::FileLock;
use crate::secret::{Key256, VaultKey};

pub(crate) struct Session {
    state: Mutex<State>,
}

struct State {
    key: Option<VaultKey>,
    data_lock: Option<FileLock>,
    last_used: Instant,
    idle_timeout: Option<Duration>,
    /// Bumped by every new timeout: an older watchdog then retires.
    watchdog: u64,
    /// An ephemeral vault's directory, deleted when the session ends.
    ephemeral_root: Option<PathBuf>,
    /// Long operations under way (a rotation): the session is not idle.
    busy: u32,
}

/// Marks the session busy (not idle) until dropped.
pub(crate) struct Busy<'a>(&'a Session);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.busy = state.busy.saturating_sub(1);
        state.last_used = Instant::now();
    }
}

/// The vault key, borrowed while the session's state is held: nothing can
/// lock the session under a caller that is using the key.
pub(crate) struct KeyGuard<'a>(MutexGuard<'a, State>);

impl Deref for KeyGuard<'_> {
    type Target = VaultKey;

    fn deref(&self) -> &VaultKey {
        // A guard is only handed out by `Session::key`, after it checked
        // that the key is there, and the key cannot go while it is held.
        self.0
            .key
            .as_ref()
            .unwrap_or_else(|| unreachable!("a KeyGuard exists only while the key does"))
    }
}

impl Session {
    pub(crate) fn start(key: VaultKey, data_lock: FileLock) -> Arc<Session> {
        Arc::new(Session {
            state: Mutex::new(State {
                key: Some(key),
                data_lock: Some(data_lock),
                last_used: Instant::now(),
                idle_timeout: None,
                watchdog: 0,
                ephemeral_root: None,
                busy: 0,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the state was held leaves it consistent (every
        // change is one assignment): go on with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key, counting as activity; [`Error::SessionLocked`] once locked.
    pub(crate) fn key(&self) -> Result<KeyGuard<'_>> {
        let mut state = self.state();
        if state.expired() {
            state.close();
        }
        if state.key.is_none() {
            return Err(Error::SessionLocked);
        }
        state.last_used = Instant::now();
        Ok(KeyGuard(state))
    }

    /// A copy of the key, for slow work (a KDF) that must not hold the
    /// session's state: it is pinned and zeroized like the original.
    pub(crate) fn key_copy(&self) -> Result<VaultKey> {
        let guard = self.key()?;
        let key: &VaultKey = &guard;
        let copy = Key256::fill_with(|out| {
            out.copy_from_slice(key.0.expose_secret());
            Ok::<(), std::convert::Infallible>(())
        });
        match copy {
            Ok(copy) => Ok(VaultKey(copy)),
            Err(never) => match never {},
        }
    }

    /// The session is busy until the guard drops: the idle timeout waits.
    pub(crate) fn busy(&self) -> Busy<'_> {
        self.state().busy += 1;
        Busy(self)
    }

    pub(crate) fn is_locked(&self) -> bool {
        let mut state = self.state();
        if state.expired() {
            state.close();
        }
        state.key.is_none()
    }

    pub(crate) fn lock(&self) {
        self.state().close();
    }

    /// Rotation: the new key replaces the old one (which is zeroized).
    pub(crate) fn replace_key(&self, key: VaultKey) -> Result<()> {
        let mut state = self.state();
        if state.key.is_none() {
            return Err(Error::SessionLocked);
        }
        state.key = Some(key);
        Ok(())
    }

    /// Gives up the shared data lock (rotation takes it exclusively).
    pub(crate) fn release_data_lock(&self) {
        self.state().data_lock = None;
    }

    pub(crate) fn hold_data_lock(&self, lock: FileLock) {
        let mut state = self.state();
        if state.key.is_some() {
            state.data_lock = Some(lock);
        }
    }

    /// Makes the session delete `root` when it ends.
    pub(crate) fn set_ephemeral(&self, root: PathBuf) {
        self.state().ephemeral_root = Some(root);
    }

    pub(crate) fn set_idle_timeout(this: &Arc<Session>, timeout: Option<Duration>) {
        let generation = {
            let mut state = this.state();
            state.idle_timeout = timeout;
            state.last_used = Instant::now();
            state.watchdog += 1;
            state.watchdog
        };
        if timeout.is_some() {
            let session = Arc::downgrade(this);
            // If no thread can be started, the timeout still holds at the
            // next call (`key` checks it); only the on-time lock is lost.
            let _ = std::thread::Builder::new()
                .name("coffer-idle-lock".into())
                .spawn(move || watchdog(session, generation));
        }
    }
}

impl State {
    fn expired(&self) -> bool {
        self.busy == 0
            && self
                .idle_timeout
                .is_some_and(|timeout| self.last_used.elapsed() >= timeout)
    }

    fn close(&mut self) {
        // Dropping the key zeroizes it.
        self.key = None;
        self.data_lock = None;
        if let Some(root) = self.ephemeral_root.take() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.state().close();
    }
}

/// Sleeps until the session's idle deadline, and locks it if nothing used
/// the key meanwhile; retires when the session ends or gets a new timeout.
fn watchdog(session: Weak<Session>, generation: u64) {
    loop {
        let wait = {
            let Some(session) = session.upgrade() else {
                return;
            };
            let mut state = session.state();
            let Some(timeout) = state.idle_timeout else {
                return;
            };
            if state.watchdog != generation || state.key.is_none() {
                return;
            }
            let idle = state.last_used.elapsed();
            if state.expired() {
                state.close();
                return;
            }
            // Busy past the deadline: look again after a while.
            timeout.saturating_sub(idle).max(Duration::from_millis(100))
        };
        std::thread::sleep(wait);
    }
}
