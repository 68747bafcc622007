//! Rows 3 and 4: a large file through the file store, against the raw AEAD
//! (ring's AES-256-GCM over the same bytes in memory: the limit), `rage`
//! (age's Rust implementation) and a plain copy; then 4 KiB reads at random
//! offsets, against the same reads of the plain file.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use coffer_device::stream::{ChunkReader, ChunkWriter};
use coffer_device::{Capabilities, FileStore, KdfAlgorithm, KdfParams, Passphrase, Space, Subkey};
use rand_core::{OsRng, RngCore};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::measure::{mib, peak_rss_kib, ratio, reset_peak_rss, run_child, time, Samples};
use crate::{Scale, Section};

const CHUNK: usize = 64 * 1024;

/// Where `rage` is, if anywhere: on PATH or in cargo's bin directory.
fn find(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn write_random(path: &Path, bytes: u64) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        OsRng.fill_bytes(&mut buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

/// Encrypts then decrypts `data` in place, chunk by chunk, as the file
/// format does (one AES-256-GCM call per 64 KiB chunk).
fn raw_aead(data: &mut [u8]) -> (std::time::Duration, std::time::Duration) {
    let mut key_bytes = [0u8; 32];
    OsRng.fill_bytes(&mut key_bytes);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes).unwrap());
    let mut tags = Vec::with_capacity(data.len() / CHUNK + 1);
    let nonce = |i: usize| {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let ((), seal) = time(|| {
        for (i, chunk) in data.chunks_mut(CHUNK).enumerate() {
            tags.push(
                key.seal_in_place_separate_tag(nonce(i), Aad::empty(), chunk)
                    .unwrap(),
            );
        }
    });
    let ((), open) = time(|| {
        for (i, chunk) in data.chunks_mut(CHUNK).enumerate() {
            key.open_in_place_separate_tag(nonce(i), Aad::empty(), tags[i], chunk, 0..)
                .unwrap();
        }
    });
    (seal, open)
}

/// The file format alone, in memory: `ChunkWriter` from memory into a
/// buffer, `ChunkReader` from that buffer into another. What the file store
/// adds to the raw AEAD, without the disk.
fn stream_in_memory(data: &[u8]) -> (std::time::Duration, std::time::Duration) {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let key = Subkey::from_bytes(key);
    // Both buffers are touched before the clock starts, as the raw AEAD's
    // data is: page faults are not the format's cost.
    let sealed_len = 64 + data.len() + (data.len() / CHUNK + 1) * 16;
    let mut sealed = vec![1u8; sealed_len];
    let mut out = vec![1u8; data.len()];
    let (written, seal) = time(|| {
        let mut writer =
            ChunkWriter::new(&key, io::Cursor::new(&mut sealed[..]), &mut OsRng).unwrap();
        writer.write_all(data).unwrap();
        writer.finish().unwrap().position() as usize
    });
    let ((), open) = time(|| {
        let mut reader = ChunkReader::open(&key, io::Cursor::new(&sealed[..written])).unwrap();
        reader.read_exact(&mut out).unwrap();
    });
    assert!(out == data);
    (seal, open)
}

/// fsyncs `path`: the rows that write a file pay for durability as the
/// file store's put does.
fn fsync(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

#[derive(Default)]
struct Row {
    encrypt: Samples,
    decrypt: Samples,
    encrypt_rss: Option<u64>,
    decrypt_rss: Option<u64>,
}

pub(crate) fn run(scale: &Scale) -> Vec<Section> {
    let bytes = scale.file_bytes;
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.bin");
    write_random(&plain, bytes);

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
    vault.add_app("files", Capabilities::all()).unwrap();
    let store: FileStore = vault.app("files").unwrap().files().unwrap();

    let rage = find("rage");
    let rage_keygen = find("rage-keygen");
    let identity = dir.path().join("identity.txt");
    let recipient = match (&rage, &rage_keygen) {
        (Some(_), Some(keygen)) => {
            run_child(keygen, &["-o".as_ref(), identity.as_os_str()]);
            std::fs::read_to_string(&identity)
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("# public key: ").map(str::to_owned))
        }
        _ => None,
    };
    let cp = find("cp").unwrap_or_else(|| PathBuf::from("/bin/cp"));

    let (mut coffer, mut raw, mut age, mut copy, mut stream) = (
        Row::default(),
        Row::default(),
        Row::default(),
        Row::default(),
        Row::default(),
    );
    let out = dir.path().join("out.bin");
    let sealed = dir.path().join("sealed.age");
    for _ in 0..scale.rounds {
        // coffer: put (encrypt, write, fsync) and get (read, decrypt, write).
        reset_peak_rss();
        let ((), put) = time(|| {
            let mut input = File::open(&plain).unwrap();
            store.put("big", &mut input, None, &mut |_| {}).unwrap();
        });
        coffer.encrypt.push(put);
        coffer.encrypt_rss = peak_rss_kib();
        reset_peak_rss();
        let ((), get) = time(|| {
            let mut reader = store.open_file("big").unwrap();
            let mut output = BufWriter::with_capacity(256 * 1024, File::create(&out).unwrap());
            io::copy(&mut reader, &mut output).unwrap();
            output.flush().unwrap();
        });
        coffer.decrypt.push(get);
        coffer.decrypt_rss = peak_rss_kib();

        if let (Some(rage), Some(recipient)) = (&rage, &recipient) {
            let (enc, rss) = run_child(
                rage,
                &[
                    "-r".as_ref(),
                    recipient.as_ref(),
                    "-o".as_ref(),
                    sealed.as_os_str(),
                    plain.as_os_str(),
                ],
            );
            let ((), synced) = time(|| fsync(&sealed));
            age.encrypt.push(enc + synced);
            age.encrypt_rss = rss;
            let (dec, rss) = run_child(
                rage,
                &[
                    "-d".as_ref(),
                    "-i".as_ref(),
                    identity.as_os_str(),
                    "-o".as_ref(),
                    out.as_os_str(),
                    sealed.as_os_str(),
                ],
            );
            age.decrypt.push(dec);
            age.decrypt_rss = rss;
        }

        let (c, rss) = run_child(&cp, &[plain.as_os_str(), out.as_os_str()]);
        let ((), synced) = time(|| fsync(&out));
        copy.encrypt.push(c + synced);
        copy.encrypt_rss = rss;

        // The limit: the same primitive over the same bytes, in memory.
        let mut data = Vec::with_capacity(bytes as usize);
        File::open(&plain).unwrap().read_to_end(&mut data).unwrap();
        reset_peak_rss();
        let (seal, open) = stream_in_memory(&data);
        stream.encrypt.push(seal);
        stream.decrypt.push(open);
        let (seal, open) = raw_aead(&mut data);
        raw.encrypt.push(seal);
        raw.decrypt.push(open);
        drop(data);
    }

    let gib = bytes as f64 / (1u64 << 30) as f64;
    let mut table = "| path | encrypt (put) | decrypt (get) | share of raw AEAD (put / get) | peak RSS (put / get) |\n|---|---|---|---|---|\n".to_owned();
    let share = |r: &Row| {
        format!(
            "{:.0}% / {:.0}%",
            raw.encrypt.median() / r.encrypt.median() * 100.0,
            raw.decrypt.median() / r.decrypt.median() * 100.0
        )
    };
    table.push_str(&format!(
        "| raw AES-256-GCM in memory (ring, 64 KiB chunks): the limit | {} | {} | 100% / 100% | (the data itself) |\n",
        raw.encrypt.throughput(bytes),
        raw.decrypt.throughput(bytes)
    ));
    table.push_str(&format!(
        "| coffer's file format in memory (ChunkWriter, ChunkReader; no disk) | {} ({}) | {} ({}) | {} | |\n",
        stream.encrypt.throughput(bytes),
        stream.encrypt.seconds(),
        stream.decrypt.throughput(bytes),
        stream.decrypt.seconds(),
        share(&stream)
    ));
    table.push_str(&format!(
        "| coffer file store (from and to a file; put fsyncs) | {} ({}) | {} ({}) | {} | {} / {} |\n",
        coffer.encrypt.throughput(bytes),
        coffer.encrypt.seconds(),
        coffer.decrypt.throughput(bytes),
        coffer.decrypt.seconds(),
        share(&coffer),
        mib(coffer.encrypt_rss),
        mib(coffer.decrypt_rss)
    ));
    if recipient.is_some() {
        table.push_str(&format!(
            "| rage (X25519 recipient; ChaCha20-Poly1305, 64 KiB chunks; encrypt + fsync) | {} ({}) | {} ({}) | {} | {} / {} |\n",
            age.encrypt.throughput(bytes),
            age.encrypt.seconds(),
            age.decrypt.throughput(bytes),
            age.decrypt.seconds(),
            share(&age),
            mib(age.encrypt_rss),
            mib(age.decrypt_rss)
        ));
    } else {
        table
            .push_str("| rage | not installed here (`cargo install rage`): not measured | | | |\n");
    }
    table.push_str(&format!(
        "| plain copy (cp + fsync) | {} ({}) | | | {} |\n",
        copy.encrypt.throughput(bytes),
        copy.encrypt.seconds(),
        mib(copy.encrypt_rss)
    ));
    let mut goals = vec![
        crate::measure::goal_at_least(
            "file format in memory (encrypt), share of raw AEAD",
            raw.encrypt.median() / stream.encrypt.median(),
            0.85,
        ),
        crate::measure::goal_at_least(
            "file format in memory (decrypt), share of raw AEAD",
            raw.decrypt.median() / stream.decrypt.median(),
            0.85,
        ),
        crate::measure::goal_at_least(
            "file store put, share of raw AEAD",
            raw.encrypt.median() / coffer.encrypt.median(),
            0.85,
        ),
        crate::measure::goal_at_least(
            "file store get, share of raw AEAD",
            raw.decrypt.median() / coffer.decrypt.median(),
            0.85,
        ),
    ];
    if recipient.is_some() {
        goals.push(format!(
            "faster than rage: put {} rage's time, get {} (goal: below 1×)",
            ratio(coffer.encrypt.median(), age.encrypt.median()),
            ratio(coffer.decrypt.median(), age.decrypt.median())
        ));
    }
    let files = Section {
        title: format!("Files: {gib:.2} GiB through the file store"),
        setup: format!("One file of random bytes, {} rounds, median throughput (and time with its spread). Peak RSS: this process's (reset before each step) or the child's (GNU time).", scale.rounds),
        table,
        goals,
    };

    // Row 4: random 4 KiB reads.
    let plain_file = File::open(&plain).unwrap();
    let mut reader = store.open_file("big").unwrap();
    let mut buf = vec![0u8; 4096];
    let (mut enc, mut raw_reads) = (Samples::default(), Samples::default());
    let mut seed = OsRng.next_u64() | 1;
    let mut offset = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % (bytes - 4096)
    };
    for _ in 0..scale.rounds {
        let ((), t) = time(|| {
            for _ in 0..scale.random_reads {
                let o = offset();
                reader.read_at(o, &mut buf).unwrap();
            }
        });
        enc.push(t);
        let ((), t) = time(|| {
            for _ in 0..scale.random_reads {
                let o = offset();
                plain_file.read_exact_at(&mut buf, o).unwrap();
            }
        });
        raw_reads.push(t);
    }
    let ops = |s: &Samples| format!("{:.0} reads/s", f64::from(scale.random_reads) / s.median());
    let table = format!(
        "| file | 4 KiB reads at random offsets | ratio |\n|---|---|---|\n| plain file (pread) | {} | 1.00× |\n| coffer file store (ChunkReader::read_at: one 64 KiB chunk read and decrypted per read) | {} | {} of plain |\n",
        ops(&raw_reads),
        ops(&enc),
        ratio(raw_reads.median(), enc.median())
    );
    let random = Section {
        title: format!("Random access: 4 KiB reads in a {gib:.2} GiB encrypted file"),
        setup: format!(
            "{} reads per round, {} rounds, both files in the page cache.",
            scale.random_reads, scale.rounds
        ),
        table,
        goals: Vec::new(),
    };
    vec![files, random]
}
