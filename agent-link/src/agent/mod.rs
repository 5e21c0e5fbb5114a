//! The agent daemon that runs inside a space: it keeps one link to the gateway and
//! connects each stream the gateway opens to a port on the space's loopback interface.

mod backoff;
mod config;
mod connect;
mod serve;
mod session;

pub use backoff::Backoff;
pub use config::{AgentConfig, ConfigError, TransportMode};
pub use session::{run, RunError};
