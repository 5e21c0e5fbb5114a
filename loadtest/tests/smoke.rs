//! The load test runs end to end on a small scale: each user workload, through the
//! gateway on both transports and directly, with no errors and a JSON report whose
//! numbers hang together. It guards the instrument; the measurements themselves are
//! taken by hand (docs/performance.md), never asserted here.

// A failed unwrap in a test is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

/// The debug gateway next to this test's binary, built first when `cargo test -p
/// loadtest` ran without it (the workspace build in `scripts/test` makes it).
fn gateway_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_loadtest"));
    let gateway = bin.with_file_name("gateway");
    if !gateway.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-p", "gateway", "--bin", "gateway"])
            .status()
            .unwrap();
        assert!(built.success(), "cargo build -p gateway failed");
    }
    assert!(gateway.exists(), "{} is missing", gateway.display());
    gateway
}

fn run(workload: &str, extra: &[&str]) -> serde_json::Value {
    let gateway = gateway_bin();
    let dir =
        std::env::temp_dir().join(format!("loadtest-smoke-{}-{workload}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--workload", workload, "--direct", "--duration", "2"])
        .args(["--gateway-bin", gateway.to_str().unwrap()])
        .args(["--json", json.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadtest {workload}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    report
}

/// Every path ran, measured something and saw no error; gateway paths have ratios.
fn check(report: &serde_json::Value) {
    let rows = report["rows"].as_array().unwrap();
    let paths: Vec<&str> = rows.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["direct", "gateway/quic", "gateway/tcp"],
        "{report:#}"
    );
    for row in rows {
        let summary = &row["summary"];
        assert!(summary["count"].as_u64().unwrap() > 0, "{row:#}");
        assert_eq!(summary["errors"].as_u64().unwrap(), 0, "{row:#}");
        let (p50, p99) = (
            summary["p50_ms"].as_f64().unwrap(),
            summary["p99_ms"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p99, "{row:#}");
        if row["path"] != "direct" {
            assert!(row["ratio"]["p50"].as_f64().unwrap() > 0.0, "{row:#}");
        }
    }
}

#[test]
fn desktop_frames_arrive_on_every_path() {
    let report = run("desktop", &["--frame-size", "4KiB", "--fps", "30"]);
    check(&report);
}

#[test]
fn keystrokes_requests_and_downloads_complete_on_every_path() {
    check(&run("interactive", &[]));
    check(&run("http", &["--concurrency", "2"]));
    check(&run("bulk", &["--bulk-size", "4MiB"]));
}

#[test]
fn mixed_measures_the_frames_beside_a_download_against_the_frames_alone() {
    let report = run(
        "mixed",
        &["--frame-size", "4KiB", "--fps", "30", "--bulk-size", "4MiB"],
    );
    check(&report);
    for row in report["rows"].as_array().unwrap() {
        let (alone, bulk) = (&row["alone"], &row["bulk"]);
        assert!(alone["count"].as_u64().unwrap() > 0, "{row:#}");
        assert_eq!(alone["errors"].as_u64().unwrap(), 0, "{row:#}");
        assert!(bulk["count"].as_u64().unwrap() > 0, "{row:#}");
        assert_eq!(bulk["errors"].as_u64().unwrap(), 0, "{row:#}");
        let beside = row["summary"]["p99_ms"].as_f64().unwrap();
        let ratio = row["beside_alone"]["p99"].as_f64().unwrap();
        let want = beside / alone["p99_ms"].as_f64().unwrap();
        assert!((ratio - want).abs() < 1e-9 * want.max(1.0), "{row:#}");
    }
}

/// Guards against `--delay` doing nothing: every keystroke's round trip, direct and
/// through the gateway, crosses the delayed link once each way, so none can be shorter
/// than the delay. A lower bound only; how much longer depends on the machine. Needs
/// root, as the lossy mode does: without it the run fails and says so.
#[test]
fn a_delay_holds_every_round_trip_to_at_least_the_delay() {
    let report = run(
        "interactive",
        &[
            "--transport",
            "tcp",
            "--loss",
            "0",
            "--rate",
            "100",
            "--delay",
            "40",
        ],
    );
    let rows = report["rows"].as_array().unwrap();
    let paths: Vec<&str> = rows.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["direct", "gateway/tcp"], "{report:#}");
    for row in rows {
        let summary = &row["summary"];
        assert!(summary["count"].as_u64().unwrap() > 0, "{row:#}");
        assert_eq!(summary["errors"].as_u64().unwrap(), 0, "{row:#}");
        let p50 = summary["p50_ms"].as_f64().unwrap();
        assert!(
            p50 >= 40.0,
            "p50 {p50} ms under a 40 ms round trip: {row:#}"
        );
    }

    // The namespace and both TUN devices are gone once the run has ended.
    let notes = report["notes"].to_string();
    let ns = notes
        .split_whitespace()
        .find(|w| w.starts_with("loadtest-"))
        .unwrap_or_else(|| panic!("no namespace named in {notes}"));
    let pid = ns.trim_start_matches("loadtest-");
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(ns),
        "{ns} left behind"
    );
    let link = Command::new("ip")
        .args(["link", "show", &format!("lta{pid}")])
        .output()
        .unwrap();
    assert!(!link.status.success(), "lta{pid} left behind");
}
