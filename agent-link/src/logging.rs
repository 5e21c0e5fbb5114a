//! Logging set-up shared by the `agent-link` and `gateway` binaries.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the span fields, for log collectors.
    Json,
}

/// Logs to standard error as text, filtered by `RUST_LOG` (default `info`).
pub fn init() {
    init_with(LogFormat::Text);
}

/// Logs to standard error in `format`, filtered by `RUST_LOG` (default `info`), with
/// colour only when standard error is a terminal so that log files stay plain text.
pub fn init_with(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            builder
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
        }
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
