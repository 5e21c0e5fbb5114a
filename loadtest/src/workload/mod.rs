//! The workloads: what users do to their spaces, measured the same way on every path.

pub mod desktop;
pub mod fleet;
pub mod interactive;
pub mod web;

use std::time::Duration;

use serde::Serialize;

use crate::client::Via;
use crate::spaces::Space;
use crate::stats::Stats;

/// Which workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Frames pushed by a VNC-like source to a websocket viewer.
    Desktop,
    /// Keystroke echo over the SSH websocket.
    Interactive,
    /// Small HTTP requests with keep-alive, C at a time per space.
    Http,
    /// One large download after another per space.
    Bulk,
    /// Desktop and bulk in the same space at once, after the desktop alone for as long.
    Mixed,
    /// Idle agent links held open: memory per link, registration rate.
    Idle,
    /// Links re-registering after the gateway is killed and restarted.
    Storm,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Desktop => "desktop",
            Kind::Interactive => "interactive",
            Kind::Http => "http",
            Kind::Bulk => "bulk",
            Kind::Mixed => "mixed",
            Kind::Idle => "idle",
            Kind::Storm => "storm",
        }
    }

    /// What one measured operation is, for the table's heading.
    pub fn unit(self) -> &'static str {
        match self {
            Kind::Desktop | Kind::Mixed => "frame",
            Kind::Interactive => "keystroke",
            Kind::Http => "request",
            Kind::Bulk => "download",
            Kind::Idle | Kind::Storm => "link",
        }
    }

    /// The direct path's protocol stack, said in the output.
    pub fn direct_stack(self) -> &'static str {
        match self {
            Kind::Desktop | Kind::Mixed => "websocket over plain TCP to the source",
            Kind::Interactive => "raw TCP to the echo server (no websocket)",
            Kind::Http | Kind::Bulk => "HTTP/1.1 over plain TCP to the source",
            Kind::Idle | Kind::Storm => "none",
        }
    }
}

/// The knobs of the user workloads.
#[derive(Debug, Clone, Serialize)]
pub struct Opts {
    pub duration: Duration,
    pub fps: u32,
    pub frame_size: u32,
    pub keys_per_sec: u32,
    pub concurrency: usize,
    pub bulk_size: u64,
}

/// What one path measured.
#[derive(Debug)]
pub struct Measured {
    pub main: Stats,
    pub secs: f64,
    /// The bulk downloads beside the desktop in `mixed`.
    pub bulk: Option<(Stats, f64)>,
    /// `mixed`: the same desktop alone, just before, on the same path.
    pub alone: Option<(Stats, f64)>,
}

/// Runs a user workload on every space through `via`.
pub async fn run(kind: Kind, opts: &Opts, via: &Via, spaces: &[Space]) -> Measured {
    let o = || (opts.clone(), via.clone());
    let desktop = || each(spaces, |s| desktop::view(o().0, o().1, s));
    let bulk = || each(spaces, |s| web::downloads(o().0, o().1, s));
    // `mixed` first runs the desktop alone for as long, on the same path and spaces:
    // what a download does to the frames is measured against the same run.
    let alone = match kind {
        Kind::Mixed => Some(timed(desktop()).await),
        _ => None,
    };
    let ((main, secs), bulk) = match kind {
        Kind::Desktop => (timed(desktop()).await, None),
        Kind::Interactive => {
            let keys = each(spaces, |s| interactive::type_keys(o().0, o().1, s));
            (timed(keys).await, None)
        }
        Kind::Http => (
            timed(each(spaces, |s| web::requests(o().0, o().1, s))).await,
            None,
        ),
        Kind::Bulk => (timed(bulk()).await, None),
        Kind::Mixed => {
            let (desk, bulk) = tokio::join!(timed(desktop()), timed(bulk()));
            (desk, Some(bulk))
        }
        Kind::Idle | Kind::Storm => ((Stats::default(), 0.0), None),
    };
    Measured {
        main,
        secs,
        bulk,
        alone,
    }
}

/// The stats of `fut` and the seconds it took.
async fn timed(fut: impl std::future::Future<Output = Stats>) -> (Stats, f64) {
    let start = crate::clock::now_ns();
    let stats = fut.await;
    (stats, crate::clock::secs_since(start))
}

/// Runs `f` for every space at once, each in its own task, and merges the results.
async fn each<F, Fut>(spaces: &[Space], f: F) -> Stats
where
    F: Fn(Space) -> Fut,
    Fut: std::future::Future<Output = Stats> + Send + 'static,
{
    let tasks: Vec<_> = spaces.iter().map(|s| tokio::spawn(f(s.clone()))).collect();
    let mut all = Stats::default();
    for t in tasks {
        match t.await {
            Ok(stats) => all.merge(&stats),
            Err(e) => all.error(1, || format!("a user task failed: {e}")),
        }
    }
    all
}

/// Time allowed past the workload's duration for the last operations to finish.
pub const GRACE: Duration = Duration::from_secs(5);
