//! Heap memory per idle agent link, per transport, in one process.
//!
//! Run with `cargo bench -p benches --bench idle`. This process runs, over loopback:
//!
//! - the gateway (the `gateway` library's `server::run`, data in a temporary
//!   directory), started by the relay bench's code (`relay/space.rs`), on a
//!   single-threaded runtime in its own thread;
//! - for each transport in turn (QUIC, then TLS/TCP with yamux), `IDLE_LINKS` agents
//!   (default 200), each `agent_link::agent::run_link_only` with its own token for its
//!   own space, on another single-threaded runtime in another thread.
//!
//! Once the gateway's admin `/metrics` counts every registration and the links have
//! idled 2 s, the bench prints the change in the live heap (bytes and blocks, from a
//! counting global allocator) divided by the number of links. The agents run in this
//! process, so the figure is gateway plus agent: a counting allocator cannot count a
//! child process. With `--features dhat-heap`, `dhat` writes a profile per transport
//! instead (`target/dhat/idle-{quic,tcp}.json`); its untrimmed backtraces end in
//! `gateway_thread` or `agents_thread`, which splits the two, and `dhat_sites.py`
//! (next to this file) sums the live bytes per side and per allocation site.
//!
//! The QUIC agents stay linked while the TCP links are measured: stopping them would
//! have the gateway free their state during the TCP window.

// A benchmark prints its results and fails loudly.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod admin;
mod heap;
#[path = "../relay/space.rs"]
mod space;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use agent_link::agent::AgentConfig;

use crate::heap::{Live, Window};
use crate::space::{start_gateway, Gateway};

/// The spaces' owner.
pub(crate) const USER: &str = "bench";
/// The gateway's default domain.
pub(crate) const DOMAIN: &str = "gateway.localhost";
/// Links per transport unless `IDLE_LINKS` says otherwise.
const DEFAULT_LINKS: u64 = 200;
/// How long the links idle, once all registered, before the heap is read.
const IDLE: Duration = Duration::from_secs(2);
/// Quiet time before a window starts, for the previous window's stragglers.
const SETTLE: Duration = Duration::from_secs(1);
/// Longest wait for all links of a transport to register.
const REGISTER_LIMIT: Duration = Duration::from_secs(300);
/// The HTTP port the agents offer; nothing listens there and no stream is opened.
const UNUSED_PORT: u16 = 9;

/// One transport's result.
struct Row {
    transport: &'static str,
    links: u64,
    before: Live,
    after: Live,
    register: Duration,
}

fn main() {
    // Logs only on request: a subscriber formats and allocates for every event.
    if std::env::var_os("RUST_LOG").is_some() {
        agent_link::logging::init();
    }
    let links: u64 = std::env::var("IDLE_LINKS")
        .map(|v| v.parse().expect("IDLE_LINKS: a number of links"))
        .unwrap_or(DEFAULT_LINKS);
    let data = std::env::temp_dir().join(format!("bench-idle-{}", std::process::id()));
    let (started, gateway) = mpsc::channel();
    let gateway_data = data.clone();
    std::thread::Builder::new()
        .name("gateway".into())
        .spawn(move || gateway_thread(&gateway_data, started))
        .unwrap();
    let gateway = gateway.recv().unwrap();
    // This thread polls the admin listener.
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = client.block_on(admin::wait_up(gateway.admin));

    let mut rows = Vec::new();
    for transport in ["quic", "tcp"] {
        let configs: Vec<AgentConfig> = (0..links)
            .map(|i| agent_config(&gateway, transport, i, &data))
            .collect();
        client.block_on(async { tokio::time::sleep(SETTLE).await });
        let base = client.block_on(admin::registrations(admin));
        let window = Window::start(transport);
        std::thread::Builder::new()
            .name(format!("agents-{transport}"))
            .spawn(move || agents_thread(configs))
            .unwrap();
        let register = client.block_on(admin::wait_registered(admin, base + links, REGISTER_LIMIT));
        client.block_on(async { tokio::time::sleep(IDLE).await });
        let before = window.before;
        let after = window.finish();
        let row = Row {
            transport,
            links,
            before,
            after,
            register,
        };
        print_row(&row);
        rows.push(row);
    }
    print_table(&rows);
    let _ = std::fs::remove_dir_all(&data);
    // The gateway and agent threads never return.
    std::process::exit(0);
}

/// An agent for its own space, `bench--idle-TRANSPORT-I`.
fn agent_config(gateway: &Gateway, transport: &str, i: u64, data: &Path) -> AgentConfig {
    let mut config = gateway.agent_config(transport, UNUSED_PORT, data);
    let space = format!("idle-{transport}-{i}");
    config.token = gateway
        .minter
        .agent(&format!("{USER}--{space}"), USER, &space, None);
    config
}

/// Runs the gateway on a single-threaded runtime, for good. Not inlined: its frame in
/// a backtrace marks an allocation as the gateway's.
#[inline(never)]
fn gateway_thread(data: &Path, started: mpsc::Sender<Gateway>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let gateway = start_gateway(data).await;
        started.send(gateway).unwrap();
        std::future::pending::<()>().await
    });
}

/// Runs the agents on a single-threaded runtime, for good. Not inlined: its frame in a
/// backtrace marks an allocation as the agents'.
#[inline(never)]
fn agents_thread(configs: Vec<AgentConfig>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for config in configs {
            tokio::spawn(async move {
                let error = agent_link::agent::run_link_only(config).await;
                panic!("an agent stopped: {error:?}");
            });
        }
        std::future::pending::<()>().await
    });
}

fn print_row(row: &Row) {
    let change = row.after - row.before;
    println!(
        "{}: {} links registered in {:.2} s; live heap {} -> {} bytes, {} -> {} blocks",
        row.transport,
        row.links,
        row.register.as_secs_f64(),
        row.before.bytes,
        row.after.bytes,
        row.before.blocks,
        row.after.blocks,
    );
    println!(
        "{}: per link {:.0} bytes ({:.1} KiB), {:.1} blocks (gateway + agent)",
        row.transport,
        change.bytes as f64 / row.links as f64,
        change.bytes as f64 / row.links as f64 / 1024.0,
        change.blocks as f64 / row.links as f64,
    );
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| transport | links | heap bytes per link | KiB per link | blocks per link |");
    println!("|---|---|---|---|---|");
    for row in rows {
        let change = row.after - row.before;
        let n = row.links as f64;
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} |",
            row.transport,
            row.links,
            change.bytes as f64 / n,
            change.bytes as f64 / n / 1024.0,
            change.blocks as f64 / n,
        );
    }
    if cfg!(feature = "dhat-heap") {
        println!();
        println!("Profiles in target/dhat/; per site and per side:");
        for row in rows {
            println!(
                "  python3 benches/benches/idle/dhat_sites.py target/dhat/idle-{}.json {}",
                row.transport, row.links
            );
        }
    }
}
