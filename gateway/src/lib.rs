//! The space gateway.
//!
//! - [`config`]: settings, their defaults, and where they come from.
//! - [`keys`] and [`auth`]: the deployment's Ed25519 key pair and the tokens it signs.
//! - [`certs`]: certificates for the front door and the agent listener.
//! - [`metrics`]: the Prometheus metrics; [`admin`]: the admin listener.
//! - [`registry`]: which spaces have a live link, and the link itself.
//! - [`agents`]: the agent listener: handshake, registration, the control loop.
//! - [`open`]: opening a stream to a space's port through its link.
//! - [`idle`]: closing relayed connections that move no bytes.
//! - [`front`]: the public front door: routing, authorization, HTTP and websockets.
//! - [`connect`]: the client mode used as OpenSSH's `ProxyCommand`.
//! - [`server`]: starting and running all of the above.

pub mod admin;
pub mod agents;
pub mod auth;
pub mod certs;
pub mod config;
pub mod connect;
pub mod front;
pub mod idle;
pub mod keys;
pub mod metrics;
pub mod open;
pub mod ratelimit;
pub mod registry;
pub mod server;
pub mod stall;
