//! SQL benchmark: coffer's app database against plain SQLite and SQLCipher
//! with its defaults, side by side in one run, interleaved, several rounds.
//!
//! `cargo bench -p coffer-device --bench sql [-- --quick]` prints a markdown
//! table (median seconds, spread, ratio to plain SQLite). Used to choose the
//! SQLCipher settings in docs/formats/stores.md; docs/benchmarks.md quotes it.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use rusqlite::Connection;

struct Config {
    name: &'static str,
    /// Statements run right after opening (keying and settings).
    setup: &'static str,
}

const RAW_KEY: &str =
    "PRAGMA key = \"x'2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c'\";";

fn configs() -> Vec<Config> {
    vec![
        Config { name: "plain SQLite (no encryption)", setup: "" },
        Config {
            name: "SQLCipher defaults (passphrase key)",
            setup: "PRAGMA key = 'correct horse battery staple';",
        },
        Config { name: "SQLCipher, raw key, defaults", setup: RAW_KEY },
        Config {
            name: "raw key, memory security off",
            setup: concat!("PRAGMA key = \"x'2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c'\";", " PRAGMA cipher_memory_security = OFF;"),
        },
        Config {
            name: "raw key, HMAC-SHA256, memory security off",
            setup: concat!("PRAGMA key = \"x'2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c'\";", " PRAGMA cipher_memory_security = OFF; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;"),
        },
        Config {
            name: "raw key, HMAC-SHA1, memory security off",
            setup: concat!("PRAGMA key = \"x'2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c'\";", " PRAGMA cipher_memory_security = OFF; PRAGMA cipher_hmac_algorithm = HMAC_SHA1;"),
        },
        Config {
            name: "coffer: raw key, HMAC-SHA256, memory security off, WAL",
            setup: concat!("PRAGMA key = \"x'2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c'\";", " PRAGMA cipher_memory_security = OFF; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;", " PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY; PRAGMA secure_delete = ON;"),
        },
    ]
}

struct Times {
    open: Duration,
    insert: Duration,
    point: Duration,
    scan: Duration,
}

fn run(config: &Config, dir: &Path, rows: u32, reads: u32) -> Times {
    let path = dir.join(format!("{:x}.db", OsRng.next_u64()));
    let open = |p: &Path| {
        let started = Instant::now();
        let c = Connection::open(p).unwrap();
        if !config.setup.is_empty() {
            c.execute_batch(config.setup).unwrap();
        }
        c.execute_batch("PRAGMA cache_size = -2048;").unwrap();
        c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();
        (c, started.elapsed())
    };
    let (conn, _) = open(&path);
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        .unwrap();
    let payload = "x".repeat(100);
    let started = Instant::now();
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut stmt = tx
            .prepare("INSERT INTO t (id, payload) VALUES (?1, ?2)")
            .unwrap();
        for i in 0..rows {
            stmt.execute(rusqlite::params![i, payload]).unwrap();
        }
    }
    tx.commit().unwrap();
    let insert = started.elapsed();
    drop(conn);

    let (conn, open_time) = open(&path);
    let mut stmt = conn.prepare("SELECT payload FROM t WHERE id = ?1").unwrap();
    let mut seed = OsRng.next_u64() | 1;
    let started = Instant::now();
    for _ in 0..reads {
        // xorshift: cheap, and the same cost for every configuration.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let id = (seed % u64::from(rows)) as i64;
        let p: String = stmt.query_row([id], |r| r.get(0)).unwrap();
        assert_eq!(p.len(), 100);
    }
    let point = started.elapsed();
    drop(stmt);
    let started = Instant::now();
    let total: i64 = conn
        .query_row("SELECT sum(length(payload)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, i64::from(rows) * 100);
    let scan = started.elapsed();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Times {
        open: open_time,
        insert,
        point,
        scan,
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let m = v[v.len() / 2];
    let spread = (v[v.len() - 1] - v[0]) / m * 100.0;
    (m, spread)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rows, reads, rounds) = if quick {
        (50_000, 50_000, 3)
    } else {
        (100_000, 100_000, 5)
    };
    let dir = tempfile::tempdir().unwrap();
    let configs = configs();
    let mut results: Vec<Vec<Times>> = configs.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, c) in configs.iter().enumerate() {
            results[i].push(run(c, dir.path(), rows, reads));
        }
    }
    let metric = |i: usize, f: &dyn Fn(&Times) -> Duration| {
        median(results[i].iter().map(|t| f(t).as_secs_f64()).collect())
    };
    println!("SQL: {rows} rows of 100 bytes, {reads} random point reads, 2 MiB page cache, {rounds} interleaved rounds; median (spread) and ratio to plain SQLite\n");
    println!("| configuration | open | {rows} inserts (1 txn) | {reads} point reads | full scan |");
    println!("|---|---|---|---|---|");
    let metrics: [&dyn Fn(&Times) -> Duration; 4] =
        [&|t| t.open, &|t| t.insert, &|t| t.point, &|t| t.scan];
    let base: Vec<f64> = metrics.iter().map(|m| metric(0, *m).0).collect();
    for (i, c) in configs.iter().enumerate() {
        let cells: Vec<String> = metrics
            .iter()
            .enumerate()
            .map(|(k, m)| {
                let (med, spread) = metric(i, *m);
                let ratio = if k == 0 {
                    String::new()
                } else {
                    format!(" — {:.2}×", med / base[k])
                };
                format!("{:.4} s (±{spread:.0}%){ratio}", med)
            })
            .collect();
        println!("| {} | {} |", c.name, cells.join(" | "));
    }
}
