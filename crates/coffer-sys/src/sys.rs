//! The FFI calls themselves. Each `unsafe` block says why it is sound.
//!
//! `unsafe` is allowed in this module only: the crate denies it everywhere
//! else and all other coffer crates forbid it outright.
#![allow(unsafe_code)]

/// Sets the soft and hard core-file size limits to 0.
#[cfg(target_os = "linux")]
pub(crate) fn disable_core_dumps() -> bool {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `setrlimit` reads the `rlimit` struct we pass by reference and
    // keeps no pointer to it; RLIMIT_CORE is a valid resource constant.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    rc == 0
}

/// Marks the process not dumpable (no core file, no ptrace by same-uid peers).
#[cfg(target_os = "linux")]
pub(crate) fn set_not_dumpable() -> bool {
    // SAFETY: PR_SET_DUMPABLE takes one integer argument and touches no memory
    // of ours; the unused variadic arguments are passed as 0 as prctl(2) asks.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    rc == 0
}

/// Whether the process is currently dumpable (PR_GET_DUMPABLE).
#[cfg(target_os = "linux")]
pub(crate) fn is_dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no argument and returns the flag; the
    // unused variadic arguments are passed as 0 as prctl(2) asks.
    let rc = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    rc != 0
}

/// Fixes glibc's mmap threshold at `bytes` (which also stops it from
/// rising after each free).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn fix_mmap_threshold(bytes: i32) -> bool {
    // SAFETY: mallopt takes two integers and touches no memory of ours;
    // M_MMAP_THRESHOLD is a parameter glibc documents (mallopt(3)).
    let rc = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) };
    rc == 1
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn fix_mmap_threshold(_bytes: i32) -> bool {
    false
}

/// Pins the pages holding `bytes` in RAM (mlock), so that they never reach
/// swap. Fails when RLIMIT_MEMLOCK is exhausted.
#[cfg(unix)]
pub(crate) fn lock_in_memory(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    // SAFETY: mlock neither reads nor writes the range; it only pins the
    // pages that hold it. The pointer and length come from a live slice, so
    // the range is mapped memory of this process.
    let rc = unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) };
    rc == 0
}

#[cfg(not(unix))]
pub(crate) fn lock_in_memory(_bytes: &[u8]) -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn is_dumpable() -> bool {
    true
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn disable_core_dumps() -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn set_not_dumpable() -> bool {
    false
}

/// The user id of the process at the other end of the Unix socket `fd`
/// (SO_PEERCRED: what the kernel recorded at connect, not what the peer
/// claims).
#[cfg(target_os = "linux")]
pub(crate) fn peer_uid(fd: std::os::fd::RawFd) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and
    // `fd` is a socket the caller owns for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cred.uid)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// [`peer_uid`] where the platform has `getpeereid`.
#[cfg(all(unix, not(target_os = "linux")))]
pub(crate) fn peer_uid(fd: std::os::fd::RawFd) -> std::io::Result<u32> {
    let (mut uid, mut gid) = (0, 0);
    // SAFETY: both out-pointers are valid for writes; `fd` is the caller's.
    let rc = unsafe { libc::getpeereid(fd, &mut uid, &mut gid) };
    if rc == 0 {
        Ok(uid)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// This process's effective user id.
#[cfg(unix)]
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
