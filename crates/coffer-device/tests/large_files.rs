//! Large-file behaviour that is too slow for every test run: a 1 GiB file
//! stored and read back through the file store in constant memory.
//!
//! Run: `cargo test --release -p coffer-device --test large_files -- --ignored --nocapture`
//! (docs/benchmarks.md records the numbers). Peak memory is read from the
//! kernel (`VmHWM`), not timed, so a loaded machine cannot fail it.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::time::Instant;

use coffer_device::{Capabilities, KdfParams, Passphrase, Space};

const GIB: u64 = 1 << 30;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Yields `len` bytes of a fixed pattern without holding them.
struct Pattern {
    pos: u64,
    len: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = ((self.pos + i as u64) % 251) as u8;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "writes and reads 1 GiB; run by the benchmark (docs/benchmarks.md)"]
fn one_gib_file_in_constant_memory() {
    let dir = tempfile::tempdir().unwrap();
    let space = Space::new(dir.path().join("space"));
    let kdf = KdfParams::Argon2id {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let vault = space
        .create_vault(
            "acme",
            "alice",
            &Passphrase::new("pw".into()).unwrap(),
            &kdf,
        )
        .unwrap();
    vault.add_app("cam", Capabilities::all()).unwrap();
    let files = vault.app("cam").unwrap().files().unwrap();
    let before = peak_rss_kib();

    let started = Instant::now();
    let info = files
        .put(
            "big.bin",
            &mut Pattern { pos: 0, len: GIB },
            None,
            &mut |_| {},
        )
        .unwrap();
    let put = started.elapsed();
    assert_eq!(info.size, GIB);

    let started = Instant::now();
    let mut reader = files.open_file("big.bin").unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut expected = Pattern { pos: 0, len: GIB };
    let mut want = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        expected.read_exact(&mut want[..n]).unwrap();
        assert_eq!(buf[..n], want[..n], "at {total}");
        total += n as u64;
    }
    let get = started.elapsed();
    assert_eq!(total, GIB);
    let peak = peak_rss_kib();
    println!(
        "1 GiB file: put {:.2} s ({:.0} MB/s), get {:.2} s ({:.0} MB/s), peak RSS {} MiB (before: {} MiB)",
        put.as_secs_f64(),
        GIB as f64 / 1e6 / put.as_secs_f64(),
        get.as_secs_f64(),
        GIB as f64 / 1e6 / get.as_secs_f64(),
        peak / 1024,
        before / 1024
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB, limit {RSS_LIMIT_KIB} KiB"
    );
}
