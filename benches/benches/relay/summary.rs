//! The closing table: criterion's estimates from this run beside the allocation counts.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::count::Count;

/// A frame size, a path's name, and what was counted there.
pub type Case = (usize, &'static str, Count);

/// Criterion's estimate per case from this run (the middle of its `time:` line), beside
/// the ratio to direct and the allocation count. Cases that criterion skipped (a
/// filter) show no time.
pub fn print_summary(counts: &[Case], started: SystemTime) {
    let dir = criterion_dir();
    println!("\nround trip per frame; ratio of throughput to direct; heap allocations");
    println!(
        "{:<12} {:<7} {:>10} {:>10} {:>7} {:>12}",
        "frame", "path", "time", "MiB/s", "ratio", "allocs/frame"
    );
    let mut direct = None;
    for (size, path, count) in counts {
        let group = format!("echo_{}KiB", size >> 10);
        let time = estimate_ns(&dir.join(&group).join(path), started);
        if *path == "direct" {
            direct = time;
        }
        let (time, rate, ratio) = match (time, direct) {
            (Some(ns), Some(d)) => (
                format!("{:.1} µs", ns / 1e3),
                format!("{:.0}", *size as f64 / (1 << 20) as f64 / (ns / 1e9)),
                format!("{:.2}", d / ns),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{group:<12} {path:<7} {time:>10} {rate:>10} {ratio:>7} {:>12.1}",
            count.allocations
        );
    }
}

/// Where criterion keeps its results: as criterion itself finds it, short of asking
/// `cargo metadata` (the workspace's `target/`).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

/// Criterion's time per iteration, in nanoseconds, if it wrote one in this run: the
/// slope of time over iterations, else the mean, as criterion itself reports.
fn estimate_ns(case: &Path, started: SystemTime) -> Option<f64> {
    let file = case.join("new/estimates.json");
    let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok()?;
    if modified < started {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    let slope = estimates["slope"]["point_estimate"].as_f64();
    slope.or_else(|| estimates["mean"]["point_estimate"].as_f64())
}
