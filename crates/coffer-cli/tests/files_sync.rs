//! Files sync end to end, on a weak link: `coffer sync` on two devices
//! against a real `coffer serve --dev-tls` process, through a TCP proxy
//! that cuts the connection ten times each way while the test SIGKILLs the
//! device twice each way.
//!
//! A file of `COFFER_BIG_FILE_MIB` MiB (1024 by default: the issue's
//! gigabyte) goes up from one device and down to the other. In all at most
//! 1.1 times its size crosses the link each way, the bytes arrive exactly
//! (SHA-256), the server's resident memory stays under 100 MiB the whole
//! time, and the receiving device never shows a partial or corrupt file.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::proxy::{CuttingProxy, Watch};
use support::world::{ok, Device, World};

const MIB: u64 = 1024 * 1024;

/// `size` bytes of a deterministic, incompressible-looking stream, written
/// to `path`; their SHA-256.
fn write_big_file(path: &Path, size: u64) -> [u8; 32] {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hash = Sha256::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            // xorshift64*: fast, and no two blocks alike.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        file.write_all(&block[..n]).unwrap();
        hash.update(&block[..n]);
        left -= n as u64;
    }
    file.flush().unwrap();
    hash.finalize().into()
}

fn sha256_of(path: &Path) -> [u8; 32] {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash).unwrap();
    hash.finalize().into()
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// What one transfer under faults measured.
#[derive(Debug)]
struct Transfer {
    rounds: u32,
    kills: u32,
    cuts: u64,
    bytes: u64,
    max_server_rss: u64,
    elapsed: Duration,
}

/// Runs `coffer sync` on `device` until a round succeeds, SIGKILLing the
/// round that is running when the watched count of `proxy` passes each of
/// `kill_marks`, and checking `between` after every round that failed.
fn sync_through_faults(
    device: &Device,
    proxy: &CuttingProxy,
    watch: Watch,
    kill_marks: &[u64],
    server_pid: u32,
    between: &mut dyn FnMut(),
) -> Transfer {
    let started = Instant::now();
    eprintln!("the server's RSS before: {} MiB", rss(server_pid) / MIB);
    let count = || match watch {
        Watch::Up => proxy.up(),
        Watch::Down => proxy.down(),
    };
    let mut kills = 0u32;
    let mut rounds = 0u32;
    let mut max_rss = 0u64;
    loop {
        rounds += 1;
        assert!(rounds <= 60, "no round succeeded in 60 tries");
        let mut child: Child = device.command(&["sync"]).spawn().unwrap();
        let status = loop {
            max_rss = max_rss.max(rss(server_pid));
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if kill_marks
                .get(kills as usize)
                .is_some_and(|mark| count() >= *mark)
            {
                child.kill().unwrap();
                kills += 1;
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if status.success() {
            let out = child.wait_with_output().unwrap();
            let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            // A round that succeeds while kills are still due happens only
            // if the marks were set past the file: a test bug.
            assert!(
                kills as usize == kill_marks.len(),
                "the transfer ended before every kill: {report}"
            );
            return Transfer {
                rounds,
                kills,
                cuts: proxy.cuts(),
                bytes: count(),
                max_server_rss: max_rss,
                elapsed: started.elapsed(),
            };
        }
        between();
    }
}

#[test]
fn a_big_file_survives_ten_cuts_and_two_kills_each_way() {
    let size_mib: u64 = std::env::var("COFFER_BIG_FILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = size_mib * MIB;
    let world = World::new(&[]);
    let target = world.server.addr();
    // Ten cuts spread over the transfer, two kills between them.
    let marks = |n: u64| (1..=n).map(|i| size * i / (n + 1)).collect::<Vec<_>>();
    let kill_marks = [size * 35 / 100, size * 70 / 100];
    // The issue's bound: at most 1.1 times the file in all. Each of the
    // twelve interruptions costs at most the piece in flight (4 MiB), so a
    // small file (COFFER_BIG_FILE_MIB) is held to that instead.
    let allowance = (size / 10).max(14 * coffer_protocol::files::DEFAULT_PIECE_SIZE);

    let up = CuttingProxy::start(target, Watch::Up, marks(10));
    let a = world.device("tablet-a", "alice", &format!("https://{}", up.addr));
    let input = world.dir.path().join("recording.bin");
    let expected = write_big_file(&input, size);
    ok(a.run(&[
        "files",
        "put",
        "cases",
        "recording.bin",
        input.to_str().unwrap(),
    ]));
    std::fs::remove_file(&input).unwrap();
    ok(a.run(&[
        "records",
        "put",
        "cases",
        "visits",
        "v-1",
        r#"{"note": "the interview"}"#,
        "--file",
        "recording.bin",
    ]));
    let sent = sync_through_faults(
        &a,
        &up,
        Watch::Up,
        &kill_marks,
        world.server.pid(),
        &mut || {},
    );
    eprintln!("upload: {sent:?}, {:.1} s", sent.elapsed.as_secs_f64());
    assert!(sent.rounds > 2, "{sent:?}");
    world.verify(&a, "alice");
    assert_eq!(sent.kills, 2);
    assert!(sent.cuts >= 10, "only {} cuts: {sent:?}", sent.cuts);
    assert!(
        sent.bytes <= size + allowance,
        "{} bytes sent for a {size}-byte file",
        sent.bytes
    );
    assert!(
        sent.max_server_rss < 100 * MIB,
        "the server's RSS reached {} MiB",
        sent.max_server_rss / MIB
    );

    let down = CuttingProxy::start(target, Watch::Down, marks(10));
    let b = world.device("tablet-b", "bob", &format!("https://{}", down.addr));
    // Until the whole file arrived and matched, device B shows no file of
    // that name: never a partial or a corrupt one.
    let received = sync_through_faults(
        &b,
        &down,
        Watch::Down,
        &kill_marks,
        world.server.pid(),
        &mut || {
            assert!(
                b.file_names().is_empty(),
                "a file appeared before it was whole"
            )
        },
    );
    eprintln!(
        "download: {received:?}, {:.1} s",
        received.elapsed.as_secs_f64()
    );
    assert!(received.rounds > 2, "{received:?}");
    assert_eq!(received.kills, 2);
    assert!(
        received.cuts >= 10,
        "only {} cuts: {received:?}",
        received.cuts
    );
    assert!(
        received.bytes <= size + allowance,
        "{} bytes received for a {size}-byte file",
        received.bytes
    );
    assert!(
        received.max_server_rss < 100 * MIB,
        "the server's RSS reached {} MiB",
        received.max_server_rss / MIB
    );
    assert_eq!(b.file_names(), ["recording.bin"]);
    let output = world.dir.path().join("received.bin");
    ok(b.run(&[
        "files",
        "get",
        "cases",
        "recording.bin",
        "--out",
        output.to_str().unwrap(),
    ]));
    assert_eq!(sha256_of(&output), expected, "the received bytes differ");
    let record = ok(b.run(&["records", "get", "cases", "visits", "v-1"]));
    assert_eq!(record["body"]["note"], "the interview");
}
