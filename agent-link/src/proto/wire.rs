//! Primitive encodings shared by every message: big-endian integers, strings with a
//! 16-bit length, and lists with a 16-bit count.

use bytes::{BufMut, BytesMut};

use super::DecodeError;

/// Reads primitives from one message body; every read checks the remaining length.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::InvalidValue {
                field: "bool",
                value: other.into(),
            }),
        }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        self.take(n)
    }

    pub(crate) fn str(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Whether every byte has been read: for a field that a message may end before.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Every message must be consumed exactly: trailing bytes mean the peer and we
    /// disagree about the layout, which is a protocol error rather than something to skip.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Writes primitives into a frame being built.
#[derive(Debug)]
pub(crate) struct Writer<'a> {
    buf: &'a mut BytesMut,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut BytesMut) -> Self {
        Self { buf }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.put_u16(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.put_u32(v);
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.put_u64(v);
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.buf.put_u8(v.into());
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.buf.put_slice(v);
    }

    /// Strings longer than 65535 bytes cannot be sent; callers bound their inputs
    /// (names, reasons, tokens) far below that, so this truncates at a char boundary
    /// rather than failing an encode that has no error path.
    pub(crate) fn str(&mut self, v: &str) {
        let mut end = v.len().min(u16::MAX as usize);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.buf.put_slice(&v.as_bytes()[..end]);
    }
}
