//! Timing helpers: interleaved rounds, medians with their spread, ratios,
//! and peak memory (this process's, or a child's through GNU time).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Several measurements of one thing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples(pub(crate) Vec<f64>);

impl Samples {
    pub(crate) fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64());
    }

    /// The median.
    pub(crate) fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// (max − min) / median, in percent.
    pub(crate) fn spread(&self) -> f64 {
        let lo = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (hi - lo) / self.median() * 100.0
    }

    /// "0.123 s (±4%)", or in ms or µs when short.
    pub(crate) fn seconds(&self) -> String {
        let m = self.median();
        let value = if m >= 0.1 {
            format!("{m:.3} s")
        } else if m >= 0.001 {
            format!("{:.2} ms", m * 1e3)
        } else {
            format!("{:.0} µs", m * 1e6)
        };
        format!("{value} (±{:.0}%)", self.spread())
    }

    /// Throughput of `bytes` per median run, "812 MB/s".
    pub(crate) fn throughput(&self, bytes: u64) -> String {
        format!("{:.0} MB/s", bytes as f64 / self.median() / 1e6)
    }
}

/// Times one run of `f`.
pub(crate) fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}

/// `a / b` as "1.23×".
pub(crate) fn ratio(a: f64, b: f64) -> String {
    let r = a / b;
    if r < 0.01 {
        // Far below 1: "1/816×" reads better than "0.00×".
        format!("1/{:.0}×", b / a)
    } else {
        format!("{r:.2}×")
    }
}

/// Resets this process's peak RSS (Linux: `/proc/self/clear_refs`), so that
/// [`peak_rss_kib`] then reports the peak of what follows.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak RSS since the last reset, in KiB (Linux).
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// This process's resident set now, in KiB (Linux).
pub(crate) fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Runs `program args…` under GNU time; returns its duration and peak RSS
/// in KiB (None if /usr/bin/time is missing). Panics if the command fails:
/// a benchmark of a failed command means nothing.
pub(crate) fn run_child(program: &Path, args: &[&std::ffi::OsStr]) -> (Duration, Option<u64>) {
    let gnu_time = Path::new("/usr/bin/time");
    let report = tempfile::NamedTempFile::new().ok();
    let mut command = match (&report, gnu_time.exists()) {
        (Some(report), true) => {
            let mut c = Command::new(gnu_time);
            c.arg("-f")
                .arg("%M")
                .arg("-o")
                .arg(report.path())
                .arg(program);
            c
        }
        _ => Command::new(program),
    };
    command.args(args);
    let (status, elapsed) = time(|| command.status());
    match status {
        Ok(s) if s.success() => {}
        other => panic!("{} failed: {other:?}", program.display()),
    }
    let rss = report
        .and_then(|r| std::fs::read_to_string(r.path()).ok())
        .and_then(|t| t.trim().lines().last()?.trim().parse().ok());
    (elapsed, rss)
}

/// "8 MiB", or "n/a".
pub(crate) fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{} MiB", k.div_ceil(1024)))
}

/// A "lower is better" goal: "inserts: 1.31× the reference, goal ≤ 1.25×:
/// missed by 5%".
pub(crate) fn goal(what: &str, measured: f64, limit: f64) -> String {
    if measured <= limit {
        format!("{what}: {measured:.2}× the reference, goal ≤ {limit}×: met")
    } else {
        format!(
            "{what}: {measured:.2}× the reference, goal ≤ {limit}×: missed by {:.0}%",
            (measured / limit - 1.0) * 100.0
        )
    }
}

/// A "higher is better" goal on a share: "put: 91% of raw AEAD, goal ≥ 85%: met".
pub(crate) fn goal_at_least(what: &str, measured: f64, floor: f64) -> String {
    let verdict = if measured >= floor {
        "met".to_owned()
    } else {
        format!("missed by {:.0} points", (floor - measured) * 100.0)
    };
    format!(
        "{what}: {:.0}%, goal ≥ {:.0}%: {verdict}",
        measured * 100.0,
        floor * 100.0
    )
}
