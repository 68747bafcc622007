//! Process hardening while vaults are unlocked (Linux; elsewhere the calls
//! report that they did nothing, and [`status`] says so).
//!
//! - Before the first unlock: core dumps off (`RLIMIT_CORE` 0) and the
//!   process marked not dumpable (`PR_SET_DUMPABLE` 0), so that neither a
//!   crash nor another process of the same user can copy keys out of memory.
//! - Every key (vault key, subkeys, slot KEKs) is born in a page pinned
//!   with `mlock`, so that it never reaches swap. When `RLIMIT_MEMLOCK` runs
//!   out, keys live on unpinned and [`status`] counts them: degrade, and say so.
//! - A vault set to refuse debuggers ([`crate::Vault::refuse_under_debugger`])
//!   will not unlock while `/proc/self/status` names a tracer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

static HARDENED: OnceLock<coffer_sys::Hardening> = OnceLock::new();
static KEYS_LOCKED: AtomicUsize = AtomicUsize::new(0);
static KEYS_NOT_LOCKED: AtomicUsize = AtomicUsize::new(0);

/// What protects the keys of this process right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HardeningStatus {
    /// Core dumps are off (set by the first unlock).
    pub core_dumps_disabled: bool,
    /// The process cannot be dumped or read through /proc by its peers.
    pub not_dumpable: bool,
    /// Keys created in pinned (mlock'ed) memory so far.
    pub keys_locked: usize,
    /// Keys that could not be pinned (limit reached, or no mlock here).
    pub keys_not_locked: usize,
    /// The PID of a debugger tracing this process, if any.
    pub tracer_pid: Option<u32>,
}

/// The hardening in effect.
pub fn status() -> HardeningStatus {
    let hardened = HARDENED.get();
    HardeningStatus {
        core_dumps_disabled: hardened.is_some_and(|h| h.core_dumps_disabled),
        not_dumpable: hardened.is_some_and(|h| h.not_dumpable) && !coffer_sys::is_dumpable(),
        keys_locked: KEYS_LOCKED.load(Ordering::Relaxed),
        keys_not_locked: KEYS_NOT_LOCKED.load(Ordering::Relaxed),
        tracer_pid: coffer_sys::tracer_pid(),
    }
}

/// Runs before any key of a vault is derived: hardens the process (once)
/// and, if asked to, refuses to go on under a debugger.
pub(crate) fn before_unlock(refuse_tracer: bool) -> Result<()> {
    HARDENED.get_or_init(coffer_sys::harden_process);
    if refuse_tracer {
        if let Some(pid) = coffer_sys::tracer_pid() {
            return Err(Error::DebuggerAttached { pid });
        }
    }
    Ok(())
}

/// Pins a new key's memory.
pub(crate) fn pin(bytes: &[u8]) {
    let counter = if coffer_sys::lock_in_memory(bytes) {
        &KEYS_LOCKED
    } else {
        &KEYS_NOT_LOCKED
    };
    counter.fetch_add(1, Ordering::Relaxed);
}
