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
}
