//! The agent daemon that runs inside a space: it keeps one link to the gateway and
//! connects each stream the gateway opens to a port on the space's loopback interface.
//! It also serves an HTTPS `/ping` and `/status` for the scheduler and runs the
//! space's startup scripts.

mod account;
mod backoff;
mod config;
mod connect;
mod daemon;
mod ping;
mod report;
mod serve;
mod session;
mod startup;
mod status;

pub use backoff::Backoff;
pub use config::{AgentConfig, ConfigError, TransportMode};
pub use daemon::{run, run_link_only};
pub use session::RunError;
