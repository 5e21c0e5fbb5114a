//! The header that starts every data stream, and the agent's one answer to it.
//!
//! The gateway opens a stream per user connection and writes a [`StreamOpen`]; the
//! agent replies with exactly one [`StreamAnswer`] before any payload. After `Ok` the
//! stream carries raw bytes both ways.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BytesMut;

use super::frame;
use super::wire::{Reader, Writer};
use super::DecodeError;

const OPEN: u8 = 0x10;
const OK: u8 = 0x11;
const REFUSED: u8 = 0x12;

/// The address of the user's client as the gateway saw it, passed to the space for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Ties a stream's log lines on the gateway and on the agent together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How urgently a stream's bytes should be sent relative to others on the same link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamClass {
    /// Keystrokes and screen updates (SSH, VNC): sent first.
    Interactive,
    /// Everything else (HTTP, generic TCP).
    Bulk,
}

/// Gateway to agent: connect this stream to a local port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOpen {
    /// The port on the space's loopback interface.
    pub port: u16,
    /// The user's address.
    pub client: ClientAddr,
    /// Correlates logs.
    pub request_id: RequestId,
    /// Scheduling class.
    pub class: StreamClass,
}

/// Why the agent refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The port is not among the services the agent offers.
    PortNotOffered,
    /// Nothing accepted the connection on that port.
    ConnectionRefused,
    /// Connecting failed otherwise (timeout, resources).
    ConnectFailed,
    /// The header could not be read.
    BadHeader,
}

impl RefuseReason {
    fn to_wire(self) -> u8 {
        match self {
            Self::PortNotOffered => 1,
            Self::ConnectionRefused => 2,
            Self::ConnectFailed => 3,
            Self::BadHeader => 4,
        }
    }

    fn from_wire(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => Self::PortNotOffered,
            2 => Self::ConnectionRefused,
            3 => Self::ConnectFailed,
            4 => Self::BadHeader,
            other => {
                return Err(DecodeError::InvalidValue {
                    field: "refuse reason",
                    value: other.into(),
                })
            }
        })
    }
}

/// Agent to gateway: the one answer to a [`StreamOpen`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAnswer {
    /// Connected; raw bytes follow.
    Ok,
    /// Not connected; the stream ends.
    Refused {
        /// The class of failure.
        reason: RefuseReason,
        /// Detail for the user (the OS error, the port).
        message: String,
    },
}

impl StreamOpen {
    /// Appends this header as one frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        frame::encode(out, |w| {
            w.u8(OPEN);
            w.u16(self.port);
            encode_addr(w, self.client.0);
            w.u64(self.request_id.0);
            w.u8(match self.class {
                StreamClass::Interactive => 0,
                StreamClass::Bulk => 1,
            });
        });
    }

    /// Decodes one frame body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        match r.u8().map_err(|_| DecodeError::EmptyFrame)? {
            OPEN => {}
            other => return Err(DecodeError::UnknownType(other)),
        }
        let open = Self {
            port: r.u16()?,
            client: ClientAddr(decode_addr(&mut r)?),
            request_id: RequestId(r.u64()?),
            class: match r.u8()? {
                0 => StreamClass::Interactive,
                1 => StreamClass::Bulk,
                v => {
                    return Err(DecodeError::InvalidValue {
                        field: "stream class",
                        value: v.into(),
                    })
                }
            },
        };
        r.finish()?;
        Ok(open)
    }
}

impl StreamAnswer {
    /// Appends this answer as one frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        frame::encode(out, |w| match self {
            Self::Ok => w.u8(OK),
            Self::Refused { reason, message } => {
                w.u8(REFUSED);
                w.u8(reason.to_wire());
                w.str(message);
            }
        });
    }

    /// Decodes one frame body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let answer = match r.u8().map_err(|_| DecodeError::EmptyFrame)? {
            OK => Self::Ok,
            REFUSED => Self::Refused {
                reason: RefuseReason::from_wire(r.u8()?)?,
                message: r.str()?,
            },
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(answer)
    }
}

fn encode_addr(w: &mut Writer<'_>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            w.u8(4);
            w.bytes(&ip.octets());
        }
        IpAddr::V6(ip) => {
            w.u8(6);
            w.bytes(&ip.octets());
        }
    }
    w.u16(addr.port());
}

fn decode_addr(r: &mut Reader<'_>) -> Result<SocketAddr, DecodeError> {
    let ip = match r.u8()? {
        4 => {
            let b = r.bytes(4)?;
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(r.bytes(16)?);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        v => {
            return Err(DecodeError::InvalidValue {
                field: "address family",
                value: v.into(),
            })
        }
    };
    Ok(SocketAddr::new(ip, r.u16()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::FrameDecoder;

    fn body(encode: impl FnOnce(&mut BytesMut)) -> BytesMut {
        let mut buf = BytesMut::new();
        encode(&mut buf);
        FrameDecoder::new().decode(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn header_round_trips_for_both_address_families() {
        for addr in ["192.0.2.1:4000", "[2001:db8::1]:443"] {
            let open = StreamOpen {
                port: 22,
                client: ClientAddr(addr.parse().unwrap()),
                request_id: RequestId(42),
                class: StreamClass::Interactive,
            };
            assert_eq!(StreamOpen::decode(&body(|b| open.encode(b))).unwrap(), open);
        }
    }

    #[test]
    fn answers_round_trip() {
        for answer in [
            StreamAnswer::Ok,
            StreamAnswer::Refused {
                reason: RefuseReason::PortNotOffered,
                message: "port 9".into(),
            },
        ] {
            assert_eq!(
                StreamAnswer::decode(&body(|b| answer.encode(b))).unwrap(),
                answer
            );
        }
    }

    #[test]
    fn a_control_message_is_not_a_stream_header() {
        assert_eq!(
            StreamOpen::decode(&[0x04]),
            Err(DecodeError::UnknownType(0x04))
        );
    }
}
