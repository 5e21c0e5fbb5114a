//! `agent-link`: runs inside a space and links it to the gateway.

use clap::Parser;

use agent_link::agent::{run, AgentConfig, RunError};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    agent_link::logging::init();
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
