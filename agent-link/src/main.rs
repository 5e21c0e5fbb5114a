//! `agent-link`: runs inside a space and links it to the gateway.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use agent_link::agent::{run, AgentConfig, RunError};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = AgentConfig::parse();
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent stopped");
            match e {
                RunError::Rejected { .. } => std::process::ExitCode::from(3),
                _ => std::process::ExitCode::from(2),
            }
        }
    }
}
