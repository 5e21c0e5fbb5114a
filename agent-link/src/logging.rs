//! Logging set-up shared by the `agent-link` and `gateway` binaries.

use tracing_subscriber::EnvFilter;

/// Logs to standard error, filtered by `RUST_LOG` (default `info`), with colour only
/// when standard error is a terminal so that log files stay plain text.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
