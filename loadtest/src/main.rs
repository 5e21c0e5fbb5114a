//! `loadtest`: simulated agents and users against a gateway, each workload measured
//! through the gateway (per link transport) and straight to the same sources, in one
//! run, reported as latency percentiles, rates and ratios to the direct path.
//!
//! See docs/performance.md for the scenarios and how to run them.

// A command-line tool: its results table goes to standard output.
#![allow(clippy::print_stdout)]

mod cli;
mod client;
mod clock;
mod delay;
mod frame;
mod gateway;
mod lossy;
mod plot;
mod procstat;
mod progress;
mod report;
mod run;
mod sources;
mod spaces;
mod stats;
mod workload;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The in-process agents log to standard error only when asked (RUST_LOG).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let result = if cli.space_side {
        runtime.block_on(lossy::space_side(cli))
    } else {
        // Ctrl-C, SIGTERM or SIGHUP drops the run, and with it the gateway process, its
        // data directory and the namespace.
        runtime.block_on(async {
            tokio::select! {
                r = run::main(cli) => r,
                signal = stop_signal() => Err(anyhow::anyhow!("interrupted by {signal}")),
            }
        })
    };
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("loadtest: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The first of SIGINT, SIGTERM and SIGHUP, by name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}
