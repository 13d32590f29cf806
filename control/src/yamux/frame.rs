//! The yamux v0 frame header: `ver(1)=0 | type(1) | flags(2) | streamID(4) | length(4)`, big
//! endian. For Data frames `length` is the payload size, for WindowUpdate the window delta, for
//! Ping the opaque value and for GoAway the error code.

use bytes::{BufMut, BytesMut};

pub(crate) const HEADER_LEN: usize = 12;
pub(crate) const PROTO_VERSION: u8 = 0;

pub(crate) const TYPE_DATA: u8 = 0;
pub(crate) const TYPE_WINDOW_UPDATE: u8 = 1;
pub(crate) const TYPE_PING: u8 = 2;
pub(crate) const TYPE_GO_AWAY: u8 = 3;

pub(crate) const FLAG_SYN: u16 = 1;
pub(crate) const FLAG_ACK: u16 = 2;
pub(crate) const FLAG_FIN: u16 = 4;
pub(crate) const FLAG_RST: u16 = 8;

/// GoAway codes.
pub const GO_AWAY_NORMAL: u32 = 0;
pub const GO_AWAY_PROTOCOL_ERROR: u32 = 1;
pub const GO_AWAY_INTERNAL_ERROR: u32 = 2;

/// Every stream starts with this window in both directions (a protocol constant).
pub const INITIAL_STREAM_WINDOW: u32 = 256 * 1024;
/// The opaque value of the ping frp-uring sends first on every session ("frpu"): a peer that
/// sends it half-closes streams (FIN, then keeps reading). A Go peer answers it like any
/// ping and never sends it: its FIN (`Stream.Close`) means it reads no more either.
pub(crate) const HALF_CLOSE_HELLO: u32 = 0x6672_7075;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u8,
    pub typ: u8,
    pub flags: u16,
    pub stream_id: u32,
    pub length: u32,
}

impl Header {
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            version: b[0],
            typ: b[1],
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag == flag
    }
}

/// Appends one header to `out`.
pub(crate) fn put_header(out: &mut BytesMut, typ: u8, flags: u16, stream_id: u32, length: u32) {
    out.reserve(HEADER_LEN);
    out.put_u8(PROTO_VERSION);
    out.put_u8(typ);
    out.put_u16(flags);
    out.put_u32(stream_id);
    out.put_u32(length);
}
