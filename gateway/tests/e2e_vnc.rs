//! The VNC desktop through `USER--SPACE--vnc.DOMAIN`: a websocket client reaches
//! websockify in front of x11vnc on Xvfb and speaks RFB (RFC 6143).

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use support::servers::VncDesktop;
use support::ws::{connect, ByteStream};
use support::{Agent, Gateway, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_gets_a_framebuffer_update_from_the_desktop_over_quic() {
    framebuffer_update(Transport::Quic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_gets_a_framebuffer_update_from_the_desktop_over_tcp() {
    framebuffer_update(Transport::Tcp).await
}

async fn framebuffer_update(transport: Transport) {
    let desktop = VncDesktop::start();
    let gw = Gateway::start();
    let _agent = Agent::start(
        &gw,
        transport,
        "alice",
        "desk",
        &[("KNOT_VNC_HTTP_PORT", desktop.websockify_port().to_string())],
    );
    let token = gw.user_token_for("alice", "alice--desk", "vnc");
    let url = format!(
        "wss://alice--desk--vnc.gateway.localhost:{}/websockify",
        gw.public_port
    );
    let ws = connect(&gw, &url, Some(&token), Some("binary"))
        .await
        .unwrap_or_else(|s| panic!("status {s}\n{}", gw.log()));
    let mut rfb = ByteStream::new(ws);

    // RFC 6143 section 7.1: version, then security; x11vnc -nopw offers None (1).
    assert_eq!(rfb.read_exact(12).await, b"RFB 003.008\n");
    rfb.write(b"RFB 003.008\n").await;
    let count = rfb.read_exact(1).await[0] as usize;
    assert!(count > 0, "the server refused the version");
    let types = rfb.read_exact(count).await;
    assert!(types.contains(&1), "security types {types:?} lack None");
    rfb.write(&[1]).await;
    assert_eq!(
        rfb.read_exact(4).await,
        [0, 0, 0, 0],
        "SecurityResult is OK"
    );

    // Section 7.3: ClientInit (shared), ServerInit with the framebuffer size.
    rfb.write(&[1]).await;
    let init = rfb.read_exact(24).await;
    let (width, height) = (
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    );
    assert_eq!((width, height), (1024, 768));
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    rfb.read_exact(name_len).await;

    // Section 7.5.3 / 7.6.1: a full update request is answered by a FramebufferUpdate.
    let mut request = vec![3, 0, 0, 0, 0, 0];
    request.extend_from_slice(&width.to_be_bytes());
    request.extend_from_slice(&height.to_be_bytes());
    rfb.write(&request).await;
    let header = rfb.read_exact(4).await;
    assert_eq!(header[0], 0, "message type FramebufferUpdate");
    assert!(
        u16::from_be_bytes([header[2], header[3]]) >= 1,
        "at least one rectangle"
    );
}
