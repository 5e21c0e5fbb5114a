//! Messages on the control stream, the first stream the agent opens on a link.

use bytes::BytesMut;

use super::frame;
use super::wire::{Reader, Writer};
use super::DecodeError;

/// The most services one agent may declare; far above any real space, and it bounds
/// the work a `Hello` can cause.
pub const MAX_SERVICES: usize = 256;

const HELLO: u8 = 0x01;
const WELCOME: u8 = 0x02;
const REJECT: u8 = 0x03;
const PING: u8 = 0x04;
const PONG: u8 = 0x05;
const SERVICES_UPDATE: u8 = 0x06;
const GO_AWAY: u8 = 0x07;

/// What a space's service speaks, which decides how the gateway routes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// Raw TCP (SSH, databases): reached through the websocket TCP routes.
    Tcp,
    /// Plain HTTP: reached through `USER--SPACE--PORT.DOMAIN`.
    Http,
    /// HTTPS inside the space; the gateway does not look inside.
    Https,
    /// The VNC web service (page and websocket): `USER--SPACE--vnc.DOMAIN`.
    Vnc,
}

impl ServiceKind {
    fn to_wire(self) -> u8 {
        match self {
            Self::Tcp => 0,
            Self::Http => 1,
            Self::Https => 2,
            Self::Vnc => 3,
        }
    }

    fn from_wire(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => Self::Tcp,
            1 => Self::Http,
            2 => Self::Https,
            3 => Self::Vnc,
            other => {
                return Err(DecodeError::InvalidValue {
                    field: "service kind",
                    value: other.into(),
                })
            }
        })
    }

    /// The lower-case name used in logs, configuration and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Https => "https",
            Self::Vnc => "vnc",
        }
    }
}

/// One service an agent offers: a local port and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// A short name (`ssh`, `code-server`, `vnc`, `http`).
    pub name: String,
    /// The port on the space's loopback interface.
    pub port: u16,
    /// What the port speaks.
    pub kind: ServiceKind,
    /// An HTTP port anyone may reach by URL, without a user token.
    pub public: bool,
}

/// Why the gateway refused a registration; each has a text a person can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The token is malformed, not an agent token, or not signed by this deployment.
    BadToken,
    /// The token has expired or is not yet valid.
    ExpiredToken,
    /// The agent speaks a protocol version the gateway does not.
    Version,
    /// The `Hello` was malformed or arrived too late.
    Protocol,
    /// The gateway is draining or at its link limit.
    Unavailable,
    /// The token's validity starts later (the clocks disagree, or it was minted for later).
    NotYetValid,
    /// Another live agent, which took this space over from this one, holds it: this
    /// agent stands by and tries again later.
    Standby,
}

impl RejectReason {
    fn to_wire(self) -> u8 {
        match self {
            Self::BadToken => 1,
            Self::ExpiredToken => 2,
            Self::Version => 3,
            Self::Protocol => 4,
            Self::Unavailable => 5,
            Self::NotYetValid => 6,
            Self::Standby => 7,
        }
    }

    fn from_wire(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => Self::BadToken,
            2 => Self::ExpiredToken,
            3 => Self::Version,
            4 => Self::Protocol,
            5 => Self::Unavailable,
            6 => Self::NotYetValid,
            7 => Self::Standby,
            other => {
                return Err(DecodeError::InvalidValue {
                    field: "reject reason",
                    value: other.into(),
                })
            }
        })
    }

    /// Whether retrying with the same token and build can ever succeed.
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::BadToken | Self::ExpiredToken | Self::Version)
    }
}

/// A message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Agent to gateway, first: who it is and what it offers.
    Hello {
        /// The agent's [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
        version: u16,
        /// The agent build, for logs.
        agent_version: String,
        /// The signed agent token; the space's identity comes only from its claims.
        token: String,
        /// The services the space offers.
        services: Vec<Service>,
        /// A random number the agent process picks once at start, so that the gateway
        /// can tell the same agent on a new link from a second agent with the same
        /// token. 0: not given (the `Hello` ends before it).
        instance: u64,
    },
    /// Gateway to agent: registered.
    Welcome {
        /// The gateway's protocol version.
        version: u16,
        /// Identifies this registration in both sides' logs.
        session: u64,
        /// How often the agent should ping, in milliseconds.
        ping_interval_ms: u32,
    },
    /// Gateway to agent: not registered, and why.
    Reject {
        /// The class of failure.
        reason: RejectReason,
        /// A sentence for the space's owner.
        message: String,
    },
    /// Either side: liveness probe; the peer answers `Pong` with the same nonce.
    Ping {
        /// Echoed in the `Pong`.
        nonce: u64,
    },
    /// Either side: answer to `Ping`.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
    },
    /// Agent to gateway: the services changed.
    ServicesUpdate {
        /// The full new list.
        services: Vec<Service>,
    },
    /// Gateway to agent: this link is ending (drain or replacement); reconnect.
    GoAway {
        /// Why, for logs.
        reason: String,
    },
}

impl ControlMessage {
    /// Appends this message as one frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        frame::encode(out, |w| self.encode_body(w));
    }

    fn encode_body(&self, w: &mut Writer<'_>) {
        match self {
            Self::Hello {
                version,
                agent_version,
                token,
                services,
                instance,
            } => {
                w.u8(HELLO);
                w.u16(*version);
                w.str(agent_version);
                w.str(token);
                encode_services(w, services);
                // Left out when unknown, so that a `Hello` without one re-encodes as it was.
                if *instance != 0 {
                    w.u64(*instance);
                }
            }
            Self::Welcome {
                version,
                session,
                ping_interval_ms,
            } => {
                w.u8(WELCOME);
                w.u16(*version);
                w.u64(*session);
                w.u32(*ping_interval_ms);
            }
            Self::Reject { reason, message } => {
                w.u8(REJECT);
                w.u8(reason.to_wire());
                w.str(message);
            }
            Self::Ping { nonce } => {
                w.u8(PING);
                w.u64(*nonce);
            }
            Self::Pong { nonce } => {
                w.u8(PONG);
                w.u64(*nonce);
            }
            Self::ServicesUpdate { services } => {
                w.u8(SERVICES_UPDATE);
                encode_services(w, services);
            }
            Self::GoAway { reason } => {
                w.u8(GO_AWAY);
                w.str(reason);
            }
        }
    }

    /// Decodes one frame body (as returned by the frame decoder).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match r.u8().map_err(|_| DecodeError::EmptyFrame)? {
            HELLO => Self::Hello {
                version: r.u16()?,
                agent_version: r.str()?,
                token: r.str()?,
                services: decode_services(&mut r)?,
                instance: if r.is_empty() { 0 } else { r.u64()? },
            },
            WELCOME => Self::Welcome {
                version: r.u16()?,
                session: r.u64()?,
                ping_interval_ms: r.u32()?,
            },
            REJECT => Self::Reject {
                reason: RejectReason::from_wire(r.u8()?)?,
                message: r.str()?,
            },
            PING => Self::Ping { nonce: r.u64()? },
            PONG => Self::Pong { nonce: r.u64()? },
            SERVICES_UPDATE => Self::ServicesUpdate {
                services: decode_services(&mut r)?,
            },
            GO_AWAY => Self::GoAway { reason: r.str()? },
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

fn encode_services(w: &mut Writer<'_>, services: &[Service]) {
    let n = services.len().min(MAX_SERVICES);
    w.u16(n as u16);
    for s in &services[..n] {
        w.str(&s.name);
        w.u16(s.port);
        w.u8(s.kind.to_wire());
        w.bool(s.public);
    }
}

fn decode_services(r: &mut Reader<'_>) -> Result<Vec<Service>, DecodeError> {
    let n = r.u16()? as usize;
    if n > MAX_SERVICES {
        return Err(DecodeError::InvalidValue {
            field: "service count",
            value: n as u64,
        });
    }
    (0..n)
        .map(|_| {
            Ok(Service {
                name: r.str()?,
                port: r.u16()?,
                kind: ServiceKind::from_wire(r.u8()?)?,
                public: r.bool()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::FrameDecoder;

    fn round_trip(msg: ControlMessage) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let body = FrameDecoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(ControlMessage::decode(&body).unwrap(), msg);
    }

    #[test]
    fn every_message_survives_encoding() {
        let services = vec![
            Service {
                name: "ssh".into(),
                port: 22,
                kind: ServiceKind::Tcp,
                public: false,
            },
            Service {
                name: "web".into(),
                port: 8080,
                kind: ServiceKind::Http,
                public: true,
            },
        ];
        round_trip(ControlMessage::Hello {
            version: 1,
            agent_version: "0.1.0".into(),
            token: "a.b.c".into(),
            services: services.clone(),
            instance: 0x0123_4567_89ab_cdef,
        });
        round_trip(ControlMessage::Welcome {
            version: 1,
            session: 7,
            ping_interval_ms: 5000,
        });
        round_trip(ControlMessage::Reject {
            reason: RejectReason::ExpiredToken,
            message: "expired".into(),
        });
        round_trip(ControlMessage::Ping { nonce: u64::MAX });
        round_trip(ControlMessage::Pong { nonce: 0 });
        round_trip(ControlMessage::ServicesUpdate { services });
        round_trip(ControlMessage::GoAway {
            reason: "draining".into(),
        });
    }

    #[test]
    fn unknown_type_and_trailing_bytes_are_errors() {
        assert_eq!(
            ControlMessage::decode(&[0x7f]),
            Err(DecodeError::UnknownType(0x7f))
        );
        assert_eq!(
            ControlMessage::decode(&[PING, 0, 0, 0, 0, 0, 0, 0, 1, 9]),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            ControlMessage::decode(&[PING, 0, 0]),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn invalid_enum_values_are_errors() {
        let err = ControlMessage::decode(&[REJECT, 99, 0, 0]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::InvalidValue {
                field: "reject reason",
                value: 99
            }
        );
    }

    #[test]
    fn a_hello_without_an_instance_decodes_with_zero() {
        let mut full = BytesMut::new();
        ControlMessage::Hello {
            version: 1,
            agent_version: "0.1.0".into(),
            token: "a.b.c".into(),
            services: Vec::new(),
            instance: 9,
        }
        .encode(&mut full);
        // The body without its last eight bytes, as an agent without instances sends.
        let body = &full[4..full.len() - 8];
        match ControlMessage::decode(body).unwrap() {
            ControlMessage::Hello { instance, .. } => assert_eq!(instance, 0),
            other => panic!("{other:?}"),
        }
        // A partial instance is malformed, not zero.
        assert!(ControlMessage::decode(&full[4..full.len() - 3]).is_err());
    }
}
