//! Websocket frames from a client, read the way the SSH and TCP routes read them: the
//! server side of a tokio-tungstenite `WebSocketStream` with the gateway's limits
//! (1 MiB per message and per frame, `gateway/src/front/ws.rs`), over an in-memory
//! stream whose reads are the input and whose writes (pongs, close replies) vanish.
//! Reading goes on until an error or the end of the input; it must never panic, and
//! run with `-malloc_limit_mb` it must never allocate far beyond the limits.

#![no_main]

use std::sync::OnceLock;

use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use tokio::runtime::{Builder, Runtime};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// The gateway's `MAX_MESSAGE`, which it uses for both limits.
const MAX_MESSAGE: usize = 1 << 20;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(read_all(data));
});

async fn read_all(data: &[u8]) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let io = tokio::io::join(data, tokio::io::sink());
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    while let Some(Ok(msg)) = ws.next().await {
        assert!(msg.len() <= MAX_MESSAGE, "message of {} bytes", msg.len());
    }
}
