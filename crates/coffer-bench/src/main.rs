//! `coffer-bench`: every benchmark row of coffer against its reference, in
//! one run, interleaved, several rounds; prints a markdown report and writes
//! it to docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p coffer-bench -- [--quick | --smoke] [--out FILE]
//! ```
//!
//! Absolute times drift on shared machines: read the ratios, which compare
//! runs made side by side. What the numbers mean, and what limits the rows
//! that miss their goal (from profiles), is in docs/benchmark-analysis.md,
//! which the report links to.

// A benchmark, like a test: any failure is a bug to see at once, and a
// panic with the error is the right report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cut_proxy;
mod files;
mod files_sync;
mod lifecycle;
mod measure;
mod mqtt_delivery;
mod server;
mod sql;
mod sync;

use std::path::PathBuf;

use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "coffer-bench",
    about = "Benchmark coffer against its references and write docs/benchmarks.md"
)]
struct Args {
    /// A few minutes instead of the full run: smaller data, 3 rounds
    #[arg(long)]
    quick: bool,
    /// Seconds, with tiny data: checks that every row runs (CI), numbers meaningless
    #[arg(long, conflicts_with = "quick")]
    smoke: bool,
    /// Run only these parts (sql, files, lifecycle, server, sync, files-sync, mqtt-delivery), e.g. under a profiler
    #[arg(long, value_delimiter = ',', value_name = "PARTS")]
    only: Vec<String>,
    /// SQL rows: run only this configuration (plain, sqlcipher, coffer), to
    /// profile it alone; the report then has no ratios worth reading
    #[arg(long, value_name = "CONFIG")]
    sql_only: Option<String>,
    /// Where to write the report ("-": nowhere, print only)
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
}

/// How much work each row does.
#[derive(Debug, Clone)]
pub(crate) struct Scale {
    pub(crate) name: &'static str,
    pub(crate) rows: u32,
    pub(crate) file_bytes: u64,
    pub(crate) random_reads: u32,
    pub(crate) rounds: usize,
    pub(crate) server_requests: usize,
    /// Records in the feed the sync rows pull.
    pub(crate) sync_records: u64,
    /// Local changes the sync push row delivers.
    pub(crate) sync_changes: u64,
    /// The file the files sync rows move up and down.
    pub(crate) files_sync_bytes: u64,
}

/// One part of the report.
pub(crate) struct Section {
    pub(crate) title: String,
    pub(crate) setup: String,
    pub(crate) table: String,
    pub(crate) goals: Vec<String>,
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    format!("{model}, {cores} cores, {}", date.trim())
}

fn main() {
    // The sync rows run their devices as this binary again (not an option
    // for people: it is not in --help).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(sync::CHILD) {
        sync::child(&argv[2..]);
        return;
    }
    if argv.get(1).map(String::as_str) == Some(files_sync::CHILD) {
        files_sync::child(&argv[2..]);
        return;
    }
    let args = Args::parse();
    let scale = if args.smoke {
        Scale {
            name: "--smoke",
            rows: 2_000,
            file_bytes: 4 << 20,
            random_reads: 200,
            rounds: 1,
            server_requests: 300,
            sync_records: 2_000,
            sync_changes: 1_000,
            files_sync_bytes: 4 << 20,
        }
    } else if args.quick {
        Scale {
            name: "--quick",
            rows: 50_000,
            file_bytes: 256 << 20,
            random_reads: 5_000,
            rounds: 3,
            server_requests: 5_000,
            sync_records: 100_000,
            sync_changes: 20_000,
            files_sync_bytes: 256 << 20,
        }
    } else {
        Scale {
            name: "full",
            rows: 100_000,
            file_bytes: 1 << 30,
            random_reads: 20_000,
            rounds: 5,
            server_requests: 20_000,
            sync_records: 1_000_000,
            sync_changes: 100_000,
            files_sync_bytes: 1 << 30,
        }
    };
    let wanted = |part: &str| args.only.is_empty() || args.only.iter().any(|o| o == part);
    let mut sections = Vec::new();
    if wanted("sql") {
        eprintln!("SQL rows…");
        sections.extend(sql::run(&scale, args.sql_only.as_deref()));
    }
    if wanted("files") {
        eprintln!("files…");
        sections.extend(files::run(&scale));
    }
    if wanted("lifecycle") {
        eprintln!("unlock and rotation…");
        sections.extend(lifecycle::run(&scale));
    }
    if wanted("server") {
        eprintln!("server…");
        sections.extend(server::run(&scale));
    }
    if wanted("sync") {
        eprintln!("record sync…");
        sections.extend(sync::run(&scale));
    }
    if wanted("files-sync") {
        eprintln!("files sync…");
        sections.extend(files_sync::run(&scale));
    }
    if wanted("mqtt-delivery") {
        eprintln!("MQTT delivery…");
        sections.extend(mqtt_delivery::run(&scale));
    }

    let command = match scale.name {
        "full" => "cargo run --release -p coffer-bench".to_owned(),
        mode => format!("cargo run --release -p coffer-bench -- {mode}"),
    };
    let mut report = format!(
        "# Benchmarks\n\nGenerated by `{command}` on {}.\nEach row runs coffer and its reference side by side in one run, interleaved; medians with their spread (max − min over median), and ratios. Absolute times drift on this shared machine from run to run: compare the ratios.\n\n",
        machine()
    );
    for s in &sections {
        report.push_str(&format!("## {}\n\n{}\n\n{}\n", s.title, s.setup, s.table));
        if !s.goals.is_empty() {
            report.push_str("\nGoals:\n\n");
            for g in &s.goals {
                report.push_str(&format!("- {g}\n"));
            }
        }
        report.push('\n');
    }
    report.push_str("## What limits the rows that miss a goal\n\nFrom profiles (perf) of these runs: [benchmark-analysis.md](benchmark-analysis.md).\n");
    print!("{report}");
    if args.out.as_os_str() != "-" {
        if let Err(e) = std::fs::write(&args.out, &report) {
            eprintln!("cannot write {}: {e}", args.out.display());
            std::process::exit(1);
        }
        eprintln!("wrote {}", args.out.display());
    }
}
