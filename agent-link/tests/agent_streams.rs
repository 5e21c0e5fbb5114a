//! The real `agent-link` binary against a gateway played by this test, which can send
//! what a well-behaved gateway never does: headers for ports the space does not offer,
//! and garbage. The agent must refuse each with a reason and keep serving.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent_link::io::{read_frame, send_control, write_frames, ControlReader};
use agent_link::proto::{
    ClientAddr, ControlMessage, RefuseReason, RequestId, StreamAnswer, StreamClass, StreamOpen,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Kills the agent when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn answer(
    conn: &quinn::Connection,
    header: &[u8],
) -> (StreamAnswer, quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    write_frames(&mut send, header).await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (StreamAnswer::decode(&body).unwrap(), send, recv)
}

fn open(port: u16) -> BytesMut {
    let mut buf = BytesMut::new();
    let client = ClientAddr("192.0.2.7:5555".parse().unwrap());
    StreamOpen {
        port,
        client,
        request_id: RequestId(1),
        class: StreamClass::Bulk,
    }
    .encode(&mut buf);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_ports_it_does_not_offer_and_garbage_and_keeps_serving() {
    // A service in the space: echoes one line back.
    let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_port = service.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = service.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let _ = tcp.write_all(&buf[..n]).await;
            });
        }
    });

    // The pretend gateway: a self-signed certificate the agent pins.
    let (endpoint, fingerprint) = support::gateway_endpoint();
    let port = endpoint.local_addr().unwrap().port();

    let _agent = Killed(
        Command::new(env!("CARGO_BIN_EXE_agent-link"))
            .env_clear()
            .env("KNOT_AGENT_ENDPOINT", format!("127.0.0.1:{port}"))
            .env("KNOT_AGENT_GATEWAY_FINGERPRINT", &fingerprint)
            .env("KNOT_AGENT_TOKEN", "not-checked-by-this-gateway")
            .env("KNOT_AGENT_TRANSPORT", "quic")
            .env("KNOT_HTTP_PORT", service_port.to_string())
            .env("KNOT_AGENT_PING_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Registration, as a gateway does it.
    let incoming = tokio::time::timeout(Duration::from_secs(20), endpoint.accept())
        .await
        .unwrap()
        .unwrap();
    let conn = incoming.await.unwrap();
    let (mut control_send, control_recv) = conn.accept_bi().await.unwrap();
    let mut control = ControlReader::new(control_recv);
    assert!(matches!(
        control.next().await.unwrap(),
        Some(ControlMessage::Hello { .. })
    ));
    let welcome = ControlMessage::Welcome {
        version: 1,
        session: 1,
        ping_interval_ms: 5000,
    };
    send_control(&mut control_send, &welcome).await.unwrap();
    let control_task = tokio::spawn(async move {
        // Answer pings so that the agent keeps the link.
        while let Ok(Some(msg)) = control.next().await {
            if let ControlMessage::Ping { nonce } = msg {
                send_control(&mut control_send, &ControlMessage::Pong { nonce })
                    .await
                    .unwrap();
            }
        }
    });

    // A port the space does not offer: refused with the reason, nothing connected.
    let (refused, ..) = answer(&conn, &open(22)).await;
    assert!(
        matches!(
            &refused,
            StreamAnswer::Refused { reason: RefuseReason::PortNotOffered, message }
                if message.contains("22")
        ),
        "{refused:?}"
    );

    // Garbage instead of a header: refused as a bad header.
    let (garbage, ..) = answer(&conn, b"\x00\x00\x00\x05\x10GET / HTTP/1.1\r\n\r\n").await;
    assert!(
        matches!(
            garbage,
            StreamAnswer::Refused {
                reason: RefuseReason::BadHeader,
                ..
            }
        ),
        "{garbage:?}"
    );

    // The agent still serves the port it offers, on the same link.
    let (ok, mut send, mut recv) = answer(&conn, &open(service_port)).await;
    assert_eq!(ok, StreamAnswer::Ok);
    send.write_all(b"still here\n").await.unwrap();
    send.finish().unwrap();
    let mut echoed = Vec::new();
    AsyncReadExt::read_to_end(&mut recv, &mut echoed)
        .await
        .unwrap();
    assert_eq!(echoed, b"still here\n");
    control_task.abort();
}
