//! Opening a stream to a port in a space: the header, and the agent's one answer.

use std::time::Duration;

use agent_link::io::{read_frame, write_frames, ReadError};
use agent_link::proto::{
    ClientAddr, RefuseReason, RequestId, StreamAnswer, StreamClass, StreamOpen,
};
use agent_link::transport::DataStream;
use bytes::BytesMut;

use crate::registry::Entry;

/// How long the agent has to answer a stream header. Connecting to a local port is
/// fast; a slow answer means the link or the agent is in trouble.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a stream could not be opened; each maps to what the user is told.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The agent refused: the port is not offered, or nothing listens on it.
    #[error("the space refused the connection: {message}")]
    Refused {
        /// The agent's class of refusal.
        reason: RefuseReason,
        /// The agent's explanation.
        message: String,
    },
    /// The link failed while opening the stream.
    #[error("the space's link failed: {0}")]
    Link(String),
    /// The agent did not answer in time.
    #[error("the space's agent did not answer in time")]
    Timeout,
    /// The agent's answer was not a valid message.
    #[error("the space's agent answered with a malformed message: {0}")]
    Protocol(String),
}

/// Opens a stream to `port` in the space behind `entry` and waits for the agent's
/// answer. On success the stream is ready for payload in both directions.
pub async fn open_stream(
    entry: &Entry,
    port: u16,
    client: ClientAddr,
    class: StreamClass,
) -> Result<(DataStream, RequestId), OpenError> {
    let request_id = RequestId(fastrand::u64(..));
    let mut stream = entry
        .link
        .open()
        .await
        .map_err(|e| OpenError::Link(e.to_string()))?;
    stream.set_class(class);

    let mut header = BytesMut::with_capacity(64);
    StreamOpen {
        port,
        client,
        request_id,
        class,
    }
    .encode(&mut header);
    write_frames(&mut stream.send, &header)
        .await
        .map_err(|e| OpenError::Link(e.to_string()))?;

    let body = match tokio::time::timeout(ANSWER_TIMEOUT, read_frame(&mut stream.recv)).await {
        Err(_) => return Err(OpenError::Timeout),
        Ok(Err(ReadError::Decode(e))) => return Err(OpenError::Protocol(e.to_string())),
        Ok(Err(e)) => return Err(OpenError::Link(e.to_string())),
        Ok(Ok(None)) => return Err(OpenError::Link("stream closed before the answer".into())),
        Ok(Ok(Some(body))) => body,
    };
    match StreamAnswer::decode(&body).map_err(|e| OpenError::Protocol(e.to_string()))? {
        StreamAnswer::Ok => Ok((stream, request_id)),
        StreamAnswer::Refused { reason, message } => Err(OpenError::Refused { reason, message }),
    }
}
