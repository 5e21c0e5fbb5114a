//! `loadtest`: simulated agents and users against a gateway.
//!
//! Not built yet: the workloads (desktop frames, interactive echo, HTTP, bulk, idle
//! links, reconnect storms) and their side-by-side comparison with a direct connection
//! are the next piece of work. Until then this binary says so and fails, so that no
//! script mistakes it for a measurement.

fn main() -> std::process::ExitCode {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("loadtest: no workload is implemented yet; see docs/performance.md");
    }
    std::process::ExitCode::from(2)
}
