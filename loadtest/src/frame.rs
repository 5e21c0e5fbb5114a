//! A desktop frame on the wire: one websocket binary message holding a header (magic,
//! sequence number, send time, length) and a payload whose every byte is predictable
//! from the sequence number, so that a viewer can tell a whole frame from a corrupt one.

/// `LTFR`.
const MAGIC: u32 = 0x4c54_4652;
/// Magic, sequence, send time, length.
pub const HEADER: usize = 4 + 8 + 8 + 4;

/// Fills `buf` (at least [`HEADER`] bytes) as frame `seq`, stamped `sent_ns`.
pub fn fill(buf: &mut [u8], seq: u64, sent_ns: u64) {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&MAGIC.to_be_bytes());
    buf[4..12].copy_from_slice(&seq.to_be_bytes());
    buf[12..20].copy_from_slice(&sent_ns.to_be_bytes());
    buf[20..24].copy_from_slice(&len.to_be_bytes());
    for (i, b) in buf[HEADER..].iter_mut().enumerate() {
        *b = pattern(seq, i);
    }
}

/// Stamps an already filled frame with its send time.
pub fn stamp(buf: &mut [u8], sent_ns: u64) {
    buf[12..20].copy_from_slice(&sent_ns.to_be_bytes());
}

/// What a received frame says, if it is whole and intact.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub seq: u64,
    pub sent_ns: u64,
}

/// Checks a received message: `Err` says what is wrong with it.
pub fn check(buf: &[u8], expected_len: usize) -> Result<Received, String> {
    if buf.len() != expected_len || buf.len() < HEADER {
        return Err(format!(
            "frame of {} bytes, expected {expected_len}",
            buf.len()
        ));
    }
    let word = |r: std::ops::Range<usize>| buf[r].iter().fold(0u64, |a, &b| (a << 8) | b as u64);
    if word(0..4) as u32 != MAGIC || word(20..24) as usize != buf.len() {
        return Err("frame header is corrupt".to_owned());
    }
    let seq = word(4..12);
    let bad = buf[HEADER..]
        .iter()
        .enumerate()
        .any(|(i, &b)| b != pattern(seq, i));
    if bad {
        return Err(format!("frame {seq} payload is corrupt"));
    }
    Ok(Received {
        seq,
        sent_ns: word(12..20),
    })
}

fn pattern(seq: u64, i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(seq as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_frame_checks_and_a_flipped_byte_does_not() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 7, 123);
        let got = check(&buf, 4096).unwrap();
        assert_eq!((got.seq, got.sent_ns), (7, 123));
        buf[3000] ^= 1;
        assert!(check(&buf, 4096).is_err());
        assert!(check(&buf[..100], 4096).is_err());
    }
}
