//! The link over QUIC (quinn). Every setting that differs from quinn's default is
//! chosen here, with the reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AckFrequencyConfig, Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};

/// UDP socket buffer size. With Linux's 208 KiB default, bursts from a fast sender
/// overflow the receive buffer and quinn loses 0.2 to 0.5% of packets even on loopback.
pub const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// The longest a peer should wait before acknowledging a packet.
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(5);

/// The transport knobs of a link, for whichever side sets them.
#[derive(Debug, Clone)]
pub struct LinkTuning {
    /// How many streams the peer may have open at once. On the agent this is the number
    /// of concurrent user connections into one space (quinn's default, 100, would stall
    /// the 101st SSH or HTTP connection); the gateway accepts only the control stream.
    pub peer_streams: u32,
    /// Keep-alive interval: idle links must not be dropped by NATs or the idle timeout.
    pub keep_alive: Duration,
    /// A link with no packet from the peer for this long is dead.
    pub idle_timeout: Duration,
    /// Bytes the peer may send on all streams together that this side has not read
    /// yet: the most a link can make this side hold when its readers stall. `None`
    /// leaves it unlimited, bounded only by the stream window times the streams.
    pub receive_window: Option<u64>,
}

/// Bytes one stream may have in flight or unread. 100 Mbit/s at 50 ms round trip
/// needs 625 kB; 2 MiB carries it to 160 ms, or 330 Mbit/s at 50 ms. The 8 MiB window
/// this replaced carried a download on loopback no faster (`loadtest -w bulk`).
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// The gateway's default [`LinkTuning::receive_window`]: 32 streams' windows.
pub const GATEWAY_RECEIVE_WINDOW: u64 = 64 * 1024 * 1024;

impl LinkTuning {
    /// The agent's side: the gateway opens one stream per user connection.
    pub fn agent() -> Self {
        Self {
            peer_streams: 4096,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            // What the space's own services leave unread stays in the space.
            receive_window: None,
        }
    }

    /// The gateway's side: agents open only the control stream.
    pub fn gateway() -> Self {
        Self {
            peer_streams: 4,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            receive_window: Some(GATEWAY_RECEIVE_WINDOW),
        }
    }

    fn transport(&self) -> TransportConfig {
        let mut t = TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.peer_streams));
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        // One stream must fill a fast link at a real round-trip time (STREAM_WINDOW).
        // Over the whole link, the gateway holds at most its receive window of what
        // users have not read yet, however many streams they stall, so that one
        // space cannot take the gateway's memory from the others. The price: when the
        // space's stalled streams fill it, the space's other streams wait too, pings
        // included, until the link is given up and made again (docs/performance.md).
        t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
        t.receive_window(
            self.receive_window
                .and_then(|w| VarInt::from_u64(w).ok())
                .unwrap_or(VarInt::MAX),
        );
        t.send_window(32 * 1024 * 1024);
        t.congestion_controller_factory(Arc::new(super::cc::CappedCubic::default()));
        // A lost packet with none sent after it (the end of a desktop frame, a
        // keystroke) is found only by the probe timeout, which waits out the peer's
        // longest acknowledgement delay: 25 ms by default. The peer is asked for 5 ms
        // instead (the acknowledgement-frequency extension; both ends are quinn).
        let mut acks = AckFrequencyConfig::default();
        acks.max_ack_delay(Some(MAX_ACK_DELAY));
        // As without the extension: a packet out of order is acknowledged at once, so
        // that the sender finds a loss in the middle of a frame as soon as it can.
        acks.reordering_threshold(VarInt::from_u32(1));
        t.ack_frequency_config(Some(acks));
        t.keep_alive_interval(Some(self.keep_alive));
        t.max_idle_timeout(Some(
            IdleTimeout::try_from(self.idle_timeout).expect("idle timeout below 2^62 ms"),
        ));
        t
    }
}

/// Binds a UDP socket with large buffers (falling back silently to what the kernel
/// allows: the limit is `net.core.rmem_max`).
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Bytes of the key that stateless-reset tokens are derived from.
pub const RESET_KEY_LEN: usize = 32;

/// A QUIC endpoint that accepts links, on `addr`.
///
/// `reset_key` derives the stateless-reset token of every connection ID the endpoint
/// issues. Kept across restarts, it lets a restarted gateway tell each agent at its
/// first packet that its link is gone, so the agent reconnects at once instead of
/// waiting out its silent-link limit; a key made afresh per process cannot.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    tuning: &LinkTuning,
    reset_key: &[u8; RESET_KEY_LEN],
) -> std::io::Result<Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(tuning.transport()));
    let socket = bind_udp(addr)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    // The connection IDs carry a check keyed per endpoint, by which packets for unknown
    // connections are told from noise; only those are answered with a reset. Its key
    // must survive a restart too, so it is derived from the reset key.
    let tag = ring::hmac::sign(&reset_key, b"connection id check");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut endpoint_config = EndpointConfig::new(Arc::new(reset_key));
    // quinn sends at most one reset per 20 ms by default: after a restart with 200
    // agents linked, most of their packets went unanswered and those agents waited for
    // their idle timeout. A reset is smaller than the packet that causes it, and the
    // connection-ID check keeps noise from causing any, so 1000 a second is safe.
    endpoint_config.min_reset_interval(Duration::from_millis(1));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Endpoint::new(endpoint_config, Some(config), socket, runtime)
}

/// A QUIC endpoint that dials links, bound to an ephemeral port of `peer`'s family.
pub fn client_endpoint(
    peer: SocketAddr,
    tls: rustls::ClientConfig,
    tuning: &LinkTuning,
) -> std::io::Result<Endpoint> {
    let bind: SocketAddr = if peer.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("literal address");
    let crypto = QuicClientConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(tuning.transport()));
    let socket = bind_udp(bind)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    let mut endpoint = Endpoint::new(EndpointConfig::default(), None, socket, runtime)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
