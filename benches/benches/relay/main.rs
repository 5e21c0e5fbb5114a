//! The relay core in one process: round-trip latency, throughput and heap allocations
//! per frame, through the gateway on each link transport and directly.
//!
//! Run with `cargo bench -p benches --bench relay`. This process runs, over loopback:
//!
//! - an echo source: it answers an HTTP/1.1 `Upgrade` request with `101`, then sends
//!   every byte back;
//! - the gateway (the `gateway` library's `server::run`, data in a temporary directory),
//!   reached through its plain-HTTP listener, so that the link and the relay are
//!   measured rather than the front door's TLS;
//! - two agents (`agent_link::agent::run`), one linked over QUIC, one over TLS/TCP with
//!   yamux, each offering the source as an HTTP port.
//!
//! A client opens one connection per path: straight to the source, or through the
//! gateway to `bench--TRANSPORT--PORT.gateway.localhost`. The gateway forwards the
//! upgrade, so after the `101` the bytes go through the raw relay (no websocket framing).
//! One iteration writes a frame of `SIZES` bytes and reads the whole echo back.
//!
//! After criterion has measured a case, the same connection relays `COUNTED_FRAMES`
//! more frames while a counting global allocator tallies every allocation in the
//! process (client, gateway, agents, source), and the bench prints the count per frame.
//! A closing table gives criterion's time per case, its ratio to direct and the count.
//!
//! The gateway prints its start-up banner to standard output, and handles SIGINT itself
//! (it drains): Ctrl-C stops the bench once the relayed connections fail.

// A benchmark measures wall time, prints its results, and fails loudly.
#![allow(clippy::disallowed_methods, clippy::print_stdout, clippy::unwrap_used)]

mod count;
mod echo;
mod space;
mod summary;

use std::path::Path;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput};
use gateway::auth::Grant;
use tokio::runtime::Runtime;

use crate::count::count_allocations;
use crate::echo::{serve_echo, Echo, Target};
use crate::space::start_gateway;
use crate::summary::{print_summary, Case};

/// Frame sizes: a small write, the relay's own 60 KiB buffer, and a large burst.
pub(crate) const SIZES: [usize; 3] = [4 << 10, 60 << 10, 256 << 10];
/// Frames relayed after criterion's run and before counting, so that buffers, flow
/// control windows and congestion state are in steady state.
pub(crate) const WARM_UP_FRAMES: usize = 50;
/// Frames whose allocations are counted, per case.
pub(crate) const COUNTED_FRAMES: usize = 200;
/// Criterion's samples per case (its minimum is 10).
const SAMPLES: usize = 10;
/// Criterion's measuring time per case, after `WARM_UP`.
const MEASURE: Duration = Duration::from_secs(3);
/// Criterion's warm-up time per case.
const WARM_UP: Duration = Duration::from_secs(1);
/// The spaces' owner; the spaces are named after their transport.
pub(crate) const USER: &str = "bench";
/// The gateway's default domain.
pub(crate) const DOMAIN: &str = "gateway.localhost";

fn main() {
    let started = SystemTime::now();
    // Logs only on request: a subscriber formats and allocates for every event.
    if std::env::var_os("RUST_LOG").is_some() {
        agent_link::logging::init();
    }
    // Gateway, agents and source share one runtime with a worker per core; the client
    // drives its connections from this thread.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let data = std::env::temp_dir().join(format!("bench-relay-{}", std::process::id()));
    let targets = start(&servers, &data);
    let mut paths: Vec<(&str, Echo)> = targets
        .iter()
        .map(|t| (t.name, client.block_on(Echo::open_when_linked(t))))
        .collect();

    let mut criterion = Criterion::default()
        .sample_size(SAMPLES)
        .measurement_time(MEASURE)
        .warm_up_time(WARM_UP)
        .configure_from_args();
    let counts = measure(&mut criterion, &client, &mut paths);
    criterion.final_summary();
    print_summary(&counts, started);
    let _ = std::fs::remove_dir_all(&data);
}

/// Starts the source, the gateway and one agent per transport on `servers`; returns
/// the paths to the source.
fn start(servers: &Runtime, data: &Path) -> [Target; 3] {
    let source = servers.block_on(serve_echo());
    let gateway = servers.block_on(start_gateway(data));
    for transport in ["quic", "tcp"] {
        let config = gateway.agent_config(transport, source, data);
        servers.spawn(agent_link::agent::run(config));
    }
    let token = gateway.minter.user(
        USER,
        vec![format!("{USER}--*")],
        Grant::ALL.to_vec(),
        Duration::from_secs(3600),
    );
    [
        Target::direct(source),
        Target::through("quic", gateway.plain, source, &token),
        Target::through("tcp", gateway.plain, source, &token),
    ]
}

/// Criterion's cases, one group per frame size, each followed by its allocation count.
fn measure(c: &mut Criterion, client: &Runtime, paths: &mut [(&'static str, Echo)]) -> Vec<Case> {
    let mut counts = Vec::new();
    for size in SIZES {
        let frame: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let group_name = format!("echo_{}KiB", size >> 10);
        let mut group = c.benchmark_group(&group_name);
        group.throughput(Throughput::Bytes(size as u64));
        for (name, echo) in paths.iter_mut() {
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| client.block_on(echo.timed(&frame, iters)))
            });
            let case = format!("{group_name}-{name}");
            let count = client.block_on(count_allocations(echo, &frame, &case));
            println!(
                "{group_name}/{name}: {:.1} allocations per frame ({} bytes per frame)",
                count.allocations, count.bytes
            );
            counts.push((size, *name, count));
        }
        group.finish();
    }
    counts
}
