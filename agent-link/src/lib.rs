//! The link between a space's agent and the gateway.
//!
//! - [`proto`]: the protocol as data, with no I/O: frames, control messages, the
//!   data-stream header and its answer.
//! - [`transport`]: the link over QUIC, and what the gateway and agent see of a link
//!   whatever carries it.
//! - [`heartbeat`]: when to ping and when a silent peer is dead, without I/O.
//! - [`io`]: reading and writing protocol messages on async streams.
//! - [`logging`]: the binaries' log set-up.
//! - [`net`]: name resolution.
//! - [`tls`]: certificate trust for the agent (CA file or pinned fingerprint).
//! - [`agent`]: the daemon that runs inside a space.

pub mod agent;
pub mod heartbeat;
pub mod io;
pub mod logging;
pub mod net;
pub mod proto;
pub mod tls;
pub mod transport;

#[cfg(test)]
mod test_io;
