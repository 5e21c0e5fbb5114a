//! What the agent does from start to end: check its configuration, open its `/ping`
//! listener, start the startup scripts, then keep the link to the gateway.

use tracing::{info, warn, Instrument};

use super::config::AgentConfig;
use super::connect::Connector;
use super::ping::PingListener;
use super::report::AgentFacts;
use super::session::{keep_linked, RunError};
use super::startup::StartupScripts;
use super::status::LinkStatus;

/// Runs the agent until a permanent error.
pub async fn run(config: AgentConfig) -> Result<(), RunError> {
    // A configuration that cannot work stops the agent before any script runs.
    let connector = Connector::new(&config)?;
    let status = LinkStatus::new();
    let facts = AgentFacts {
        endpoint: config.endpoint.clone(),
        services: connector.services.clone(),
    };
    start_ping(&config, status.clone(), facts).await;

    // The scripts run in their own task, so the link comes up without waiting for
    // them. A script may install software for minutes, or never return; a link that
    // waited would leave the space unreachable all that time, and the health check,
    // which passes only while linked, would have the scheduler restart the space
    // (and so the scripts) over and over.
    tokio::spawn(StartupScripts::new(&config).run().in_current_span());

    keep_linked(config, connector, status, stop_signal()).await
}

/// SIGTERM (the scheduler stopping the space) or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot watch for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Keeps the link only, with no `/ping` listener and no startup scripts: for harnesses
/// such as `loadtest` that run many agents in one process. Runs until a permanent error.
pub async fn run_link_only(config: AgentConfig) -> Result<(), RunError> {
    let connector = Connector::new(&config)?;
    keep_linked(config, connector, LinkStatus::new(), std::future::pending()).await
}

/// Opens the `/ping` and `/status` listener. If it cannot, the agent links anyway:
/// users can reach the space, and the scheduler's failing check says what is wrong.
async fn start_ping(config: &AgentConfig, status: LinkStatus, facts: AgentFacts) {
    let listener = match PingListener::bind(config.ping_listen).await {
        Ok(listener) => listener,
        Err(e) => return warn!(error = %e, "no /ping listener; health checks will fail"),
    };
    match listener.local_addr() {
        Ok(addr) => info!(%addr, "serving /ping and /status over HTTPS"),
        Err(e) => warn!(error = %e, "cannot read the /ping listener's address"),
    }
    tokio::spawn(listener.serve(status, facts).in_current_span());
}
