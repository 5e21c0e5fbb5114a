//! The link protocol without I/O: frames, control messages, and the data-stream header.
//!
//! Every message travels in one frame: a 32-bit big-endian length, then a one-byte
//! message type, then the body. A frame is at most [`MAX_FRAME_LEN`] bytes, so a peer
//! can never make the other side buffer more than that for one message. Decoding takes
//! bytes and returns a value or a [`DecodeError`]; nothing here touches a socket or a
//! clock, which is what lets the codec be fuzzed and tested on its own.

mod control;
mod frame;
mod stream;
mod wire;

pub use control::{ControlMessage, RejectReason, Service, ServiceKind};
pub use frame::{frame_len, FrameDecoder, MAX_FRAME_LEN};
pub use stream::{ClientAddr, RefuseReason, RequestId, StreamAnswer, StreamClass, StreamOpen};

/// The protocol version this build speaks; sent in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN protocol id of the link over QUIC.
pub const ALPN_QUIC: &[u8] = b"agent-link/1";

/// ALPN protocol id of the link over TLS/TCP with a multiplexer.
pub const ALPN_MUX: &[u8] = b"agent-link-mux/1";

/// Each way a peer's bytes can fail to be a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    FrameTooLarge(usize),
    /// A frame with no message type byte.
    #[error("empty frame")]
    EmptyFrame,
    /// The message type byte is not one this version knows in this context.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// The body ended before a field was complete.
    #[error("message truncated")]
    Truncated,
    /// The body has bytes after the last field.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// A string field is not UTF-8.
    #[error("string field is not valid UTF-8")]
    InvalidUtf8,
    /// An enumerated field has a value outside its range.
    #[error("invalid value {value} for {field}")]
    InvalidValue {
        /// The field's name.
        field: &'static str,
        /// The value received.
        value: u64,
    },
}
