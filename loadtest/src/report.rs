//! The results: one row per path (direct, then through the gateway on each transport),
//! each latency and rate also given as a ratio to the direct path, printed as a table
//! and written as JSON.

use serde::Serialize;

use crate::procstat::Usage;
use crate::stats::Summary;
use crate::workload::fleet::FleetFacts;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub workload: String,
    /// What one measured operation is: frame, keystroke, request, download, link.
    pub unit: String,
    pub settings: serde_json::Value,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// One path's results.
#[derive(Debug, Serialize)]
pub struct Row {
    /// `direct`, `gateway/quic` or `gateway/tcp`.
    pub path: String,
    /// The protocol stack the user's bytes cross on this path.
    pub stack: String,
    pub summary: Summary,
    /// This path over the direct path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Ratio>,
    /// `mixed`: the downloads that ran beside the desktop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk_ratio: Option<Ratio>,
    /// `mixed`: the desktop alone on this path, just before the download ran beside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alone: Option<Summary>,
    /// `mixed`: the frames beside the download over the frames alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beside_alone: Option<Ratio>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetFacts>,
    /// The gateway process while this path ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Usage>,
}

/// Gateway path over direct path: above 1 is slower for latencies, faster for rates.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub per_sec: f64,
    pub mib_per_sec: f64,
}

impl Ratio {
    pub fn of(path: &Summary, direct: &Summary) -> Self {
        let r = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        Self {
            p50: r(path.p50_ms, direct.p50_ms),
            p90: r(path.p90_ms, direct.p90_ms),
            p99: r(path.p99_ms, direct.p99_ms),
            p999: r(path.p999_ms, direct.p999_ms),
            max: r(path.max_ms, direct.max_ms),
            per_sec: r(path.per_sec, direct.per_sec),
            mib_per_sec: r(path.mib_per_sec, direct.mib_per_sec),
        }
    }
}

impl Report {
    /// Fills each gateway row's ratios from the direct row, if there is one.
    pub fn compare(&mut self) {
        let Some(direct) = self.rows.iter().find(|r| r.path == "direct") else {
            return;
        };
        let (main, bulk) = (direct.summary.clone(), direct.bulk.clone());
        for row in self.rows.iter_mut().filter(|r| r.path != "direct") {
            row.ratio = Some(Ratio::of(&row.summary, &main));
            if let (Some(b), Some(d)) = (&row.bulk, &bulk) {
                row.bulk_ratio = Some(Ratio::of(b, d));
            }
        }
    }

    /// The table for the terminal.
    pub fn table(&self) -> String {
        let has_direct = self.rows.iter().any(|r| r.path == "direct");
        let ratio = if has_direct {
            "; ratio = path / direct"
        } else {
            ""
        };
        let beside = if self.rows.iter().any(|r| r.alone.is_some()) {
            "; each path's first row: beside the downloads, `alone`: the same before them"
        } else {
            ""
        };
        let mut out = format!(
            "{} ({} latency in ms{ratio}{beside})\n",
            self.workload, self.unit
        );
        let header = format!(
            "{:<14} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>6}  {}",
            "path",
            "count",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "per s",
            "MiB/s",
            "errors",
            if has_direct {
                "ratio p50 / p99 / MiB/s"
            } else {
                ""
            }
        );
        out += header.trim_end();
        out.push('\n');
        for row in &self.rows {
            out += &line(&row.path, &row.summary, row.ratio.as_ref());
            if let Some(bulk) = &row.bulk {
                out += &line("  + bulk", bulk, row.bulk_ratio.as_ref());
            }
            if let Some(alone) = &row.alone {
                out += &line("  alone", alone, None);
            }
        }
        for row in &self.rows {
            out += &format!("  {}: {}\n", row.path, row.stack);
            if let Some(e) = &row.summary.first_error {
                out += &format!("    first error: {e}\n");
            }
            if let Some(f) = &row.fleet {
                out += &fleet_line(f);
            }
            if let Some(r) = &row.beside_alone {
                out += &format!(
                    "    frames beside the download / alone: p50 {:.2}, p99 {:.2}, p99.9 {:.2}\n",
                    r.p50, r.p99, r.p999
                );
            }
            if let Some(g) = &row.gateway {
                out += &format!(
                    "    gateway: {:.2} CPU s in {:.1} s ({:.0}% of a core), \
                     RSS {:.1} → {:.1} MiB (peak {:.1})\n",
                    g.cpu_secs,
                    g.wall_secs,
                    g.cpu_percent,
                    g.rss_start_mib,
                    g.rss_end_mib,
                    g.rss_peak_mib
                );
            }
        }
        for note in &self.notes {
            out += &format!("  note: {note}\n");
        }
        out
    }
}

fn line(path: &str, s: &Summary, ratio: Option<&Ratio>) -> String {
    let ratio = ratio.map_or(String::new(), |r| {
        format!("{:.2} / {:.2} / {:.2}", r.p50, r.p99, r.mib_per_sec)
    });
    format!(
        "{:<14} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.1} {:>8.1} {:>6}  {}\n",
        path,
        s.count,
        s.p50_ms,
        s.p90_ms,
        s.p99_ms,
        s.p999_ms,
        s.max_ms,
        s.per_sec,
        s.mib_per_sec,
        s.errors,
        ratio
    )
}

fn fleet_line(f: &FleetFacts) -> String {
    let mut out = format!(
        "    {} links, {:.0} registrations/s; gateway RSS {:.1} → {:.1} MiB",
        f.links, f.registrations_per_sec, f.rss_before_mib, f.rss_after_mib
    );
    if f.spread_secs.is_none() {
        out += &format!(", {:.1} KiB per link", f.kib_per_link);
    }
    if let (Some(spread), Some(down)) = (f.spread_secs, f.down_secs) {
        out += &format!("; down {down:.2} s, first to last back {spread:.2} s");
    }
    out + "\n"
}
