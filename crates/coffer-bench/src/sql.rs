//! Rows 1 and 2: an app's SQL database against plain SQLite (the same
//! SQLite library, no key) and SQLCipher with its defaults (a passphrase
//! key: PBKDF2-HMAC-SHA512, 256 000 iterations; HMAC-SHA512 per page).

use std::path::PathBuf;
use std::time::Duration;

use coffer_device::{Capabilities, KdfAlgorithm, KdfParams, Passphrase, Space, UnlockedVault};
use rand_core::{OsRng, RngCore};
use rusqlite::Connection;

use crate::measure::{goal, ratio, time, Samples};
use crate::{Scale, Section};

const PASSPHRASE_KEY: &str = "PRAGMA key = 'correct horse battery staple';";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Coffer,
    Plain,
    PlainCofferSettings,
    SqlCipherDefaults,
}

const KINDS: [(Kind, &str); 4] = [
    (Kind::Plain, "plain SQLite (no encryption, its defaults)"),
    (
        Kind::PlainCofferSettings,
        "plain SQLite with coffer's settings (WAL, synchronous = FULL, secure_delete)",
    ),
    (
        Kind::SqlCipherDefaults,
        "SQLCipher defaults (passphrase key)",
    ),
    (Kind::Coffer, "coffer app database"),
];

/// The settings of coffer's databases (store/database.rs), without the key.
const COFFER_SETTINGS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
    PRAGMA temp_store = MEMORY; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;";

#[derive(Default, Clone)]
struct Times {
    open: Samples,
    insert: Samples,
    point: Samples,
    scan: Samples,
}

struct Bench {
    dir: PathBuf,
    vault: UnlockedVault,
}

impl Bench {
    /// Opens the database of `kind` (creating it when `name` is new).
    fn open(&mut self, kind: Kind, name: &str) -> (Connection, Duration) {
        match kind {
            Kind::Coffer => {
                if self.vault.app(name).is_err() {
                    self.vault.add_app(name, Capabilities::all()).unwrap();
                }
                let app = self.vault.app(name).unwrap();
                time(|| app.database().unwrap())
            }
            Kind::Plain | Kind::PlainCofferSettings | Kind::SqlCipherDefaults => {
                let path = self.dir.join(format!("{name}.db"));
                time(|| {
                    let c = Connection::open(&path).unwrap();
                    if kind == Kind::SqlCipherDefaults {
                        c.execute_batch(PASSPHRASE_KEY).unwrap();
                    }
                    if kind == Kind::PlainCofferSettings {
                        c.execute_batch(COFFER_SETTINGS).unwrap();
                    }
                    c.execute_batch("PRAGMA cache_size = -2048;").unwrap();
                    c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .unwrap();
                    c
                })
            }
        }
    }
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn one_round(bench: &mut Bench, kind: Kind, scale: &Scale, times: &mut Times) {
    let name = format!("t{:x}", OsRng.next_u64());
    let (conn, _) = bench.open(kind, &name);
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        .unwrap();
    let payload = "x".repeat(100);
    let ((), insert) = time(|| {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut stmt = tx
                .prepare("INSERT INTO t (id, payload) VALUES (?1, ?2)")
                .unwrap();
            for i in 0..scale.rows {
                stmt.execute(rusqlite::params![i, payload]).unwrap();
            }
        }
        tx.commit().unwrap();
    });
    times.insert.push(insert);
    drop(conn);

    let (conn, open) = bench.open(kind, &name);
    times.open.push(open);
    let rows = u64::from(scale.rows);
    let mut seed = OsRng.next_u64() | 1;
    {
        let mut stmt = conn.prepare("SELECT payload FROM t WHERE id = ?1").unwrap();
        let ((), point) = time(|| {
            for _ in 0..scale.rows {
                let id = (xorshift(&mut seed) % rows) as i64;
                let p: String = stmt.query_row([id], |r| r.get(0)).unwrap();
                assert_eq!(p.len(), 100);
            }
        });
        times.point.push(point);
    }
    // 20 range scans of 5% of the rows each, at random places.
    let span = (rows / 20) as i64;
    let mut stmt = conn
        .prepare("SELECT count(*), sum(length(payload)) FROM t WHERE id BETWEEN ?1 AND ?2")
        .unwrap();
    let ((), scan) = time(|| {
        for _ in 0..20 {
            let start = (xorshift(&mut seed) % (rows - span as u64)) as i64;
            let (n, total): (i64, i64) = stmt
                .query_row([start, start + span - 1], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            assert_eq!((n, total), (span, span * 100));
        }
    });
    times.scan.push(scan);
}

pub(crate) fn run(scale: &Scale, only: Option<&str>) -> Vec<Section> {
    let dir = tempfile::tempdir().unwrap();
    let space = Space::new(dir.path().join("space"));
    let kdf = KdfParams::recommended_minimum(KdfAlgorithm::Argon2id);
    let vault = space
        .create_vault(
            "bench",
            "bench",
            &Passphrase::new("pw".into()).unwrap(),
            &kdf,
        )
        .unwrap();
    let mut bench = Bench {
        dir: dir.path().to_path_buf(),
        vault,
    };
    let mut times: Vec<Times> = vec![Times::default(); KINDS.len()];
    for _ in 0..scale.rounds {
        for (i, (kind, _)) in KINDS.iter().enumerate() {
            let label = match kind {
                Kind::Plain => "plain",
                Kind::PlainCofferSettings => "plain-settings",
                Kind::SqlCipherDefaults => "sqlcipher",
                Kind::Coffer => "coffer",
            };
            if only.is_none_or(|o| o == label) {
                one_round(&mut bench, *kind, scale, &mut times[i]);
            }
        }
    }
    let rows = scale.rows;
    let base = &times[0];
    let mut table = format!(
        "| configuration | {rows} inserts (1 txn) | {rows} random point reads | 20 range scans of 5% |\n|---|---|---|---|\n"
    );
    for (i, (_, name)) in KINDS.iter().enumerate() {
        let t = &times[i];
        let cell = |s: &Samples, b: &Samples| {
            format!("{} — {}", s.seconds(), ratio(s.median(), b.median()))
        };
        table.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            cell(&t.insert, &base.insert),
            cell(&t.point, &base.point),
            cell(&t.scan, &base.scan)
        ));
    }
    let coffer = &times[3];
    let insert_ratio = coffer.insert.median() / base.insert.median();
    let read_ratio = coffer.point.median() / base.point.median();
    let sql = Section {
        title: "SQL: coffer's app database vs plain SQLite vs SQLCipher's defaults".into(),
        setup: format!(
            "{rows} rows of 100 bytes; the point reads hit a database of about {} MiB through a 2 MiB page cache; {} interleaved rounds, median (spread) and ratio to plain SQLite. coffer's database is an app's, opened through the library (raw key, HMAC-SHA256, WAL, synchronous = FULL; docs/formats/stores.md).",
            u64::from(rows) * 130 / (1 << 20),
            scale.rounds
        ),
        table,
        goals: vec![
            goal("inserts", insert_ratio, 1.25),
            goal("random point reads", read_ratio, 1.6),
        ],
    };

    let mut table = "| open | time | ratio |\n|---|---|---|\n".to_owned();
    let sqlcipher = &times[2].open;
    table.push_str(&format!(
        "| SQLCipher with its passphrase key (PBKDF2, 256 000 iterations) | {} | 1.00× |\n",
        sqlcipher.seconds()
    ));
    table.push_str(&format!(
        "| coffer app database after unlock (raw 256-bit subkey) | {} | {} |\n",
        coffer.open.seconds(),
        ratio(coffer.open.median(), sqlcipher.median())
    ));
    table.push_str(&format!(
        "| plain SQLite | {} | {} |\n",
        base.open.seconds(),
        ratio(base.open.median(), sqlcipher.median())
    ));
    let open = Section {
        title: "Open cost: an app database after unlock vs SQLCipher's passphrase open".into(),
        setup: format!("Each open includes keying and the first read; {} rounds. The vault's own KDF runs once per unlock, not per database (see the unlock row).", scale.rounds),
        table,
        goals: Vec::new(),
    };
    vec![sql, open]
}
