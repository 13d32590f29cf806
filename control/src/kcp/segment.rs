//! The KCP segment header as kcp-go puts it on the wire (24 bytes, little endian):
//!
//! ```text
//! | conv u32 | cmd u8 | frg u8 | wnd u16 | ts u32 | sn u32 | una u32 | len u32 | data[len] |
//! ```
//!
//! One datagram (after the FEC header, when FEC is on) carries one or more segments back to
//! back. `cmd` is one of [`CMD_PUSH`], [`CMD_ACK`], [`CMD_WASK`], [`CMD_WINS`].

/// Bytes in a segment header.
pub const OVERHEAD: usize = 24;
/// Offset of `sn` in the header (kcp-go's `IKCP_SN_OFFSET`).
pub const SN_OFFSET: usize = 12;

/// Data.
pub const CMD_PUSH: u8 = 81;
/// Acknowledgement of one `sn` (echoing its `ts`).
pub const CMD_ACK: u8 = 82;
/// Window probe: "tell me your window".
pub const CMD_WASK: u8 = 83;
/// Window size announcement.
pub const CMD_WINS: u8 = 84;

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub conv: u32,
    pub cmd: u8,
    pub frg: u8,
    pub wnd: u16,
    pub ts: u32,
    pub sn: u32,
    pub una: u32,
    pub len: u32,
}

/// A datagram's segments could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("kcp packet shorter than a segment header")]
    Short,
    #[error("kcp segment for conversation {0:#x}, not ours")]
    Conv(u32),
    #[error("kcp segment length {len} exceeds the {left} bytes left")]
    Truncated { len: u32, left: usize },
    #[error("unknown kcp command {0}")]
    Cmd(u8),
}

impl Header {
    /// Appends the 24 header bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.conv.to_le_bytes());
        out.push(self.cmd);
        out.push(self.frg);
        out.extend_from_slice(&self.wnd.to_le_bytes());
        out.extend_from_slice(&self.ts.to_le_bytes());
        out.extend_from_slice(&self.sn.to_le_bytes());
        out.extend_from_slice(&self.una.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
    }

    /// Reads a header from the first 24 bytes of `b` (`None` if shorter). The command is
    /// not checked here.
    pub fn decode(b: &[u8]) -> Option<Header> {
        let b: &[u8; OVERHEAD] = b.get(..OVERHEAD)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(Header {
            conv: u32_at(0),
            cmd: b[4],
            frg: b[5],
            wnd: u16::from_le_bytes([b[6], b[7]]),
            ts: u32_at(8),
            sn: u32_at(12),
            una: u32_at(16),
            len: u32_at(20),
        })
    }
}

/// Iterates over the segments of one KCP packet: `(header, data)` pairs, stopping at the
/// first error (which it yields). Trailing bytes shorter than a header are ignored, as
/// kcp-go does.
pub struct Segments<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// The segments of `packet` (see [`Segments`]).
pub fn segments(packet: &[u8]) -> Segments<'_> {
    Segments {
        rest: packet,
        failed: false,
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = Result<(Header, &'a [u8]), SegmentError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let h = Header::decode(self.rest)?;
        let body = &self.rest[OVERHEAD..];
        let r = if body.len() < h.len as usize {
            Err(SegmentError::Truncated {
                len: h.len,
                left: body.len(),
            })
        } else if !matches!(h.cmd, CMD_PUSH | CMD_ACK | CMD_WASK | CMD_WINS) {
            Err(SegmentError::Cmd(h.cmd))
        } else {
            let (data, rest) = body.split_at(h.len as usize);
            self.rest = rest;
            Ok((h, data))
        };
        self.failed = r.is_err();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_layout() {
        let h = Header {
            conv: 0x0102_0304,
            cmd: CMD_PUSH,
            frg: 7,
            wnd: 0x0a0b,
            ts: 0x1112_1314,
            sn: 0x2122_2324,
            una: 0x3132_3334,
            len: 3,
        };
        let mut b = Vec::new();
        h.encode(&mut b);
        assert_eq!(
            b,
            [
                4, 3, 2, 1, 81, 7, 0x0b, 0x0a, 0x14, 0x13, 0x12, 0x11, 0x24, 0x23, 0x22, 0x21,
                0x34, 0x33, 0x32, 0x31, 3, 0, 0, 0
            ]
        );
        assert_eq!(Header::decode(&b), Some(h));
        assert_eq!(Header::decode(&b[..23]), None);
        assert_eq!(
            u32::from_le_bytes(b[SN_OFFSET..16].try_into().unwrap()),
            h.sn
        );
    }

    #[test]
    fn segments_split_and_reject() {
        let mut p = Vec::new();
        let mut h = Header {
            conv: 9,
            cmd: CMD_PUSH,
            len: 2,
            ..Header::default()
        };
        h.encode(&mut p);
        p.extend_from_slice(b"hi");
        h.cmd = CMD_ACK;
        h.len = 0;
        h.sn = 5;
        h.encode(&mut p);
        p.extend_from_slice(&[1, 2, 3]); // trailing junk shorter than a header: ignored
        let got: Vec<_> = segments(&p).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, b"hi");
        assert_eq!(got[1].0.sn, 5);

        let mut bad = Vec::new();
        Header {
            cmd: 99,
            ..Header::default()
        }
        .encode(&mut bad);
        assert_eq!(segments(&bad).next(), Some(Err(SegmentError::Cmd(99))));
        let mut short = Vec::new();
        Header {
            cmd: CMD_PUSH,
            len: 10,
            ..Header::default()
        }
        .encode(&mut short);
        short.push(0);
        assert!(matches!(
            segments(&short).next(),
            Some(Err(SegmentError::Truncated { len: 10, left: 1 }))
        ));
    }
}
