//! Length-prefixed frames: `u32` big-endian length, then that many bytes.

use bytes::{Buf, BufMut, BytesMut};

use super::wire::Writer;
use super::DecodeError;

/// The largest frame body either side accepts (64 KiB). Control messages are small;
/// the bound keeps a misbehaving peer from making us buffer without limit.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

const LEN_PREFIX: usize = 4;

/// Validates a length prefix and returns the body length it announces.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLarge(len));
    }
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    Ok(len)
}

/// Builds one frame in `out`: reserves the prefix, lets `body` write the message type
/// and fields, then fills in the length.
pub(crate) fn encode(out: &mut BytesMut, body: impl FnOnce(&mut Writer<'_>)) {
    let start = out.len();
    out.put_u32(0);
    body(&mut Writer::new(out));
    let len = out.len() - start - LEN_PREFIX;
    debug_assert!(
        len <= MAX_FRAME_LEN,
        "encoded frame of {len} bytes exceeds the limit"
    );
    out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
}

/// Splits whole frames off a buffer that a reader keeps appending to.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    _private: (),
}

impl FrameDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the next whole frame body, or `None` when `buf` does not yet hold one.
    /// A bad length prefix is reported as soon as the four bytes are there, before the
    /// body is waited for.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, DecodeError> {
        if buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = frame_len([buf[0], buf[1], buf[2], buf[3]])?;
        if buf.len() < LEN_PREFIX + len {
            buf.reserve(LEN_PREFIX + len - buf.len());
            return Ok(None);
        }
        buf.advance(LEN_PREFIX);
        Ok(Some(buf.split_to(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_waits_for_a_whole_frame() {
        let mut buf = BytesMut::new();
        encode(&mut buf, |w| w.bytes(b"hello"));
        let mut partial = BytesMut::from(&buf[..6]);
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.decode(&mut partial), Ok(None));
        partial.extend_from_slice(&buf[6..]);
        assert_eq!(
            dec.decode(&mut partial).unwrap().unwrap().as_ref(),
            b"hello"
        );
        assert!(partial.is_empty());
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32 + 1);
        assert_eq!(
            FrameDecoder::new().decode(&mut buf),
            Err(DecodeError::FrameTooLarge(MAX_FRAME_LEN + 1))
        );
    }

    #[test]
    fn zero_length_frame_is_an_error() {
        assert_eq!(frame_len([0; 4]), Err(DecodeError::EmptyFrame));
    }
}
