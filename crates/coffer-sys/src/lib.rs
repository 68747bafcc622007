//! Operating-system calls that Rust's standard library does not offer.
//!
//! Every other coffer crate forbids `unsafe`; the few FFI calls coffer needs
//! live in [`sys`] so that they can be reviewed in one sitting. The public
//! functions here are safe and report what they achieved instead of failing:
//! hardening is best effort on platforms that lack a facility, and the caller
//! decides whether a missing protection is acceptable.

mod sys;

/// What [`harden_process`] managed to switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// Core dumps are disabled (`RLIMIT_CORE` is 0).
    pub core_dumps_disabled: bool,
    /// The process is not dumpable: no core file, and other processes of the
    /// same user cannot `ptrace` it or read its memory through `/proc`.
    pub not_dumpable: bool,
}

/// Switches off core dumps and ptrace-ability of this process.
///
/// Called before any key material is derived, so that a crash or a curious
/// process of the same user cannot copy keys out of memory. On platforms
/// other than Linux this does nothing and says so in the result.
pub fn harden_process() -> Hardening {
    Hardening {
        core_dumps_disabled: sys::disable_core_dumps(),
        not_dumpable: sys::set_not_dumpable(),
    }
}

/// Whether another process of the same user could read this one's memory
/// or make it dump core (false once [`harden_process`] has run on Linux).
pub fn is_dumpable() -> bool {
    sys::is_dumpable()
}

/// Makes every allocation of 1 MiB or more a mapping of its own that goes
/// back to the system when freed (glibc: `M_MMAP_THRESHOLD`). For a
/// long-running server: by default glibc raises its threshold after the
/// first large free, and from then on serves large buffers (the server's
/// Argon2 memory, 4 MiB file pieces) from per-thread arenas that keep them
/// resident after use, so the resident size climbs with each worker thread
/// that once held one. Returns whether the setting took (false off glibc).
pub fn return_large_allocations_to_the_system() -> bool {
    sys::fix_mmap_threshold(1 << 20)
}

/// Pins the memory pages that hold `bytes` in RAM (`mlock`), so that the
/// secret they hold is never written to swap. Returns false where the
/// platform lacks `mlock` or the per-process limit (`RLIMIT_MEMLOCK`) is
/// reached: the caller degrades and says so.
///
/// The pages stay locked until the process exits: a page may hold several
/// secrets, and unlocking it for one would silently unlock the others.
pub fn lock_in_memory(bytes: &[u8]) -> bool {
    sys::lock_in_memory(bytes)
}

/// The PID of the process tracing this one (a debugger), if any.
///
/// Reads `TracerPid` from `/proc/self/status` on Linux; `None` elsewhere or
/// when no tracer is attached.
pub fn tracer_pid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("TracerPid:"))
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .filter(|pid| *pid != 0)
}

/// Whether the process at the other end of `socket` runs as this process's
/// user (the kernel's record of the peer, checked on each connection).
#[cfg(unix)]
pub fn peer_is_same_user(socket: &std::os::unix::net::UnixStream) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    Ok(sys::peer_uid(socket.as_raw_fd())? == sys::effective_uid())
}

/// This process's effective user id.
#[cfg(unix)]
pub fn effective_uid() -> u32 {
    sys::effective_uid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn hardening_takes_effect_on_linux() {
        assert!(is_dumpable(), "a test process starts dumpable");
        let h = harden_process();
        assert!(h.core_dumps_disabled);
        assert!(h.not_dumpable);
        assert!(!is_dumpable(), "PR_GET_DUMPABLE must now report 0");
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap();
        assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
        // No debugger is attached to the test run.
        assert_eq!(tracer_pid(), None);
    }

    #[test]
    #[cfg(unix)]
    fn a_socket_peer_of_this_process_is_the_same_user() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(peer_is_same_user(&a).unwrap());
        assert!(peer_is_same_user(&b).unwrap());
        // Not a socket: an error, never a yes.
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        assert!(sys::peer_uid(file.as_raw_fd()).is_err());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn locked_pages_show_in_the_process_status() {
        let locked = || -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmLck:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        };
        let before = locked();
        let secret = vec![7u8; 64 * 1024];
        assert!(lock_in_memory(&secret), "RLIMIT_MEMLOCK allows 64 KiB here");
        assert!(locked() >= before + 64, "VmLck grew by the buffer");
        assert!(lock_in_memory(&[]));
    }
}
