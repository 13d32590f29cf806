//! Snappy **framing format** streams (spec §6.3), byte-compatible with golang/snappy v0.0.4's
//! unbuffered `NewWriter` and its `NewReader`.
//!
//! Chunk layout: `type(1) | len(3, LE) | body(len)`. Data chunks carry a masked CRC-32C of the
//! uncompressed bytes as the first 4 body bytes. The block compression itself is `snap::raw`;
//! only the framing lives here.

use dataplane::{Transform, TransformError};

/// The stream identifier chunk every framed stream starts with: `ff 06 00 00 "sNaPpY"`.
pub const STREAM_IDENTIFIER: [u8; 10] = *b"\xff\x06\x00\x00sNaPpY";

/// Largest uncompressed block per data chunk.
pub const MAX_BLOCK_SIZE: usize = 65536;

const CHECKSUM_LEN: usize = 4;
const HEADER_LEN: usize = 4;

/// Largest chunk body golang/snappy's reader accepts, for any chunk type: the worst-case
/// compressed size of a full block (`32 + n + n/6` = 76490) plus the checksum.
pub const MAX_CHUNK_LEN: usize = 32 + MAX_BLOCK_SIZE + MAX_BLOCK_SIZE / 6 + CHECKSUM_LEN;

const CHUNK_COMPRESSED: u8 = 0x00;
const CHUNK_UNCOMPRESSED: u8 = 0x01;
const CHUNK_PADDING: u8 = 0xfe;
const CHUNK_STREAM_ID: u8 = 0xff;
const STREAM_ID_BODY: &[u8] = b"sNaPpY";

/// The framing format's CRC: CRC-32C of the uncompressed data, rotated and offset so that a
/// CRC of data containing CRCs stays well distributed.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn corrupt(what: &str) -> TransformError {
    TransformError(format!("snappy: corrupt input: {what}"))
}

/// Compresses into the framing format, one or more chunks per `transform` call and nothing held
/// back (golang/snappy's unbuffered writer; interactive protocols depend on it).
pub struct SnappyEncoder {
    encoder: snap::raw::Encoder,
    wrote_stream_id: bool,
}

impl SnappyEncoder {
    pub fn new() -> Self {
        SnappyEncoder {
            encoder: snap::raw::Encoder::new(),
            wrote_stream_id: false,
        }
    }
}

impl Default for SnappyEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Transform for SnappyEncoder {
    fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        if input.is_empty() {
            // Go's writer emits nothing, not even the stream identifier, for an empty write.
            return Ok(());
        }
        if !self.wrote_stream_id {
            self.wrote_stream_id = true;
            out.extend_from_slice(&STREAM_IDENTIFIER);
        }
        for block in input.chunks(MAX_BLOCK_SIZE) {
            let n = block.len();
            let header_at = out.len();
            out.extend_from_slice(&[0; HEADER_LEN]);
            out.extend_from_slice(&masked_crc(block).to_le_bytes());
            let data_at = out.len();
            out.resize(data_at + snap::raw::max_compress_len(n), 0);
            let compressed = self
                .encoder
                .compress(block, &mut out[data_at..])
                .map_err(|e| TransformError(format!("snappy: compress: {e}")))?;
            // Go keeps the compressed form only when it saves at least 1/8.
            let chunk_type = if compressed < n - n / 8 {
                out.truncate(data_at + compressed);
                CHUNK_COMPRESSED
            } else {
                out.truncate(data_at);
                out.extend_from_slice(block);
                CHUNK_UNCOMPRESSED
            };
            let body_len = (out.len() - data_at + CHECKSUM_LEN) as u32;
            out[header_at] = chunk_type;
            out[header_at + 1..header_at + HEADER_LEN]
                .copy_from_slice(&body_len.to_le_bytes()[..3]);
        }
        Ok(())
    }
}

/// Where the decoder is inside the chunk stream.
enum DecodeState {
    /// Reading a chunk header; `have` bytes of it are in `header`.
    Header,
    /// Collecting the body of a data or stream-identifier chunk.
    Body { chunk_type: u8, len: usize },
    /// Discarding the rest of a skippable or padding chunk (never buffered).
    Skip { remaining: usize },
    /// A previous call failed; the stream cannot be resynchronised.
    Failed,
}

/// Decodes the framing format from arbitrarily split input.
///
/// Memory is bounded: at most one chunk body ([`MAX_CHUNK_LEN`]) is buffered, and only when a
/// chunk arrives split across calls; whole chunks are decoded straight from the input.
pub struct SnappyDecoder {
    decoder: snap::raw::Decoder,
    state: DecodeState,
    header: [u8; HEADER_LEN],
    header_len: usize,
    body: Vec<u8>,
    seen_stream_id: bool,
}

impl SnappyDecoder {
    pub fn new() -> Self {
        SnappyDecoder {
            decoder: snap::raw::Decoder::new(),
            state: DecodeState::Header,
            header: [0; HEADER_LEN],
            header_len: 0,
            body: Vec::new(),
            seen_stream_id: false,
        }
    }

    /// Validates a complete header and picks the next state.
    fn start_chunk(&mut self) -> Result<DecodeState, TransformError> {
        let chunk_type = self.header[0];
        let len = usize::from(self.header[1])
            | usize::from(self.header[2]) << 8
            | usize::from(self.header[3]) << 16;
        if !self.seen_stream_id && chunk_type != CHUNK_STREAM_ID {
            return Err(corrupt("stream does not start with the stream identifier"));
        }
        if len > MAX_CHUNK_LEN {
            return Err(TransformError(format!(
                "snappy: unsupported input: chunk of {len} bytes (max {MAX_CHUNK_LEN})"
            )));
        }
        Ok(match chunk_type {
            CHUNK_COMPRESSED | CHUNK_UNCOMPRESSED => {
                if len < CHECKSUM_LEN {
                    return Err(corrupt("data chunk shorter than its checksum"));
                }
                if chunk_type == CHUNK_UNCOMPRESSED && len - CHECKSUM_LEN > MAX_BLOCK_SIZE {
                    return Err(corrupt("uncompressed chunk larger than 65536 bytes"));
                }
                DecodeState::Body { chunk_type, len }
            }
            CHUNK_STREAM_ID => {
                if len != STREAM_ID_BODY.len() {
                    return Err(corrupt("bad stream identifier length"));
                }
                DecodeState::Body { chunk_type, len }
            }
            0x02..=0x7f => {
                return Err(TransformError(format!(
                    "snappy: unsupported input: reserved unskippable chunk type {chunk_type:#04x}"
                )));
            }
            // 0x80..=0xfd reserved skippable, 0xfe padding.
            _ => {
                debug_assert!((0x80..=CHUNK_PADDING).contains(&chunk_type));
                DecodeState::Skip { remaining: len }
            }
        })
    }

    /// Decodes one complete chunk body, appending its data to `out`.
    fn finish_chunk(
        decoder: &mut snap::raw::Decoder,
        seen_stream_id: &mut bool,
        chunk_type: u8,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        if chunk_type == CHUNK_STREAM_ID {
            if body != STREAM_ID_BODY {
                return Err(corrupt("bad stream identifier"));
            }
            *seen_stream_id = true;
            return Ok(());
        }
        let (crc, data) = body.split_at(CHECKSUM_LEN);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let start = out.len();
        if chunk_type == CHUNK_UNCOMPRESSED {
            if masked_crc(data) != crc {
                return Err(corrupt("checksum mismatch"));
            }
            out.extend_from_slice(data);
            return Ok(());
        }
        let n = snap::raw::decompress_len(data).map_err(|e| corrupt(&e.to_string()))?;
        if n > MAX_BLOCK_SIZE {
            return Err(corrupt("compressed chunk decodes to more than 65536 bytes"));
        }
        out.resize(start + n, 0);
        let result = match decoder.decompress(data, &mut out[start..]) {
            Ok(got) if got == n => {
                if masked_crc(&out[start..]) == crc {
                    Ok(())
                } else {
                    Err(corrupt("checksum mismatch"))
                }
            }
            Ok(_) => Err(corrupt("decoded length mismatch")),
            Err(e) => Err(corrupt(&e.to_string())),
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn step(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        while !input.is_empty() {
            match self.state {
                DecodeState::Failed => return Err(corrupt("stream already failed")),
                DecodeState::Header => {
                    let n = (HEADER_LEN - self.header_len).min(input.len());
                    self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
                    self.header_len += n;
                    input = &input[n..];
                    if self.header_len == HEADER_LEN {
                        self.header_len = 0;
                        self.state = self.start_chunk()?;
                    }
                }
                DecodeState::Body { chunk_type, len } => {
                    if self.body.is_empty() && input.len() >= len {
                        // Fast path: the whole chunk is in this input.
                        let (body, rest) = input.split_at(len);
                        Self::finish_chunk(
                            &mut self.decoder,
                            &mut self.seen_stream_id,
                            chunk_type,
                            body,
                            out,
                        )?;
                        input = rest;
                        self.state = DecodeState::Header;
                        continue;
                    }
                    let n = (len - self.body.len()).min(input.len());
                    // Exact, so the buffer never grows past one chunk.
                    self.body.reserve_exact(len - self.body.len());
                    self.body.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.body.len() == len {
                        let body = std::mem::take(&mut self.body);
                        Self::finish_chunk(
                            &mut self.decoder,
                            &mut self.seen_stream_id,
                            chunk_type,
                            &body,
                            out,
                        )?;
                        self.state = DecodeState::Header;
                        // Keep the buffer while the stream is mid-flow; an idle stream (input
                        // ended on a chunk boundary) gives it back.
                        if !input.is_empty() {
                            self.body = body;
                            self.body.clear();
                        }
                    }
                }
                DecodeState::Skip { remaining } => {
                    let n = remaining.min(input.len());
                    input = &input[n..];
                    self.state = if remaining == n {
                        DecodeState::Header
                    } else {
                        DecodeState::Skip {
                            remaining: remaining - n,
                        }
                    };
                }
            }
        }
        // An empty skippable chunk ends with its header.
        if let DecodeState::Skip { remaining: 0 } = self.state {
            self.state = DecodeState::Header;
        }
        Ok(())
    }
}

impl Default for SnappyDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Transform for SnappyDecoder {
    fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        let result = self.step(input, out);
        if result.is_err() {
            self.state = DecodeState::Failed;
            self.body = Vec::new();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::{pseudo_random, random_splits};

    fn encode_all(parts: &[&[u8]]) -> Vec<u8> {
        let mut enc = SnappyEncoder::new();
        let mut out = Vec::new();
        for p in parts {
            enc.transform(p, &mut out).unwrap();
        }
        out
    }

    fn decode_all(parts: &[&[u8]]) -> Result<Vec<u8>, TransformError> {
        let mut dec = SnappyDecoder::new();
        let mut out = Vec::new();
        for p in parts {
            dec.transform(p, &mut out)?;
        }
        Ok(out)
    }

    fn compressible(n: usize) -> Vec<u8> {
        b"frp tunnels bytes; snappy squeezes the repetitive ones. "
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()
    }

    #[test]
    fn hello_world_vector() {
        assert_eq!(
            hex::encode(encode_all(&[b"hello", b"world"])),
            "ff060000734e61507059\
             01090000bb1f1c1968656c6c6f\
             010900002d4e1fa5776f726c64"
        );
    }

    #[test]
    fn empty_write_emits_nothing() {
        assert!(encode_all(&[b""]).is_empty());
        assert_eq!(decode_all(&[]).unwrap(), b"");
    }

    #[test]
    fn compressed_chunks_are_used_when_they_pay() {
        let data = compressible(10_000);
        let wire = encode_all(&[&data]);
        assert_eq!(wire[10], CHUNK_COMPRESSED);
        assert!(wire.len() < data.len() / 4);
        assert_eq!(decode_all(&[&wire]).unwrap(), data);
    }

    #[test]
    fn roundtrip_large_and_incompressible() {
        for data in [
            compressible(200_000),
            pseudo_random(200_000, 7),
            pseudo_random(MAX_BLOCK_SIZE, 8),
            pseudo_random(MAX_BLOCK_SIZE + 1, 9),
        ] {
            let wire = encode_all(&[&data]);
            // Every chunk holds at most one 64 KiB block.
            let mut at = STREAM_IDENTIFIER.len();
            let mut chunks = 0;
            while at < wire.len() {
                let len = usize::from(wire[at + 1])
                    | usize::from(wire[at + 2]) << 8
                    | usize::from(wire[at + 3]) << 16;
                assert!(len <= MAX_BLOCK_SIZE + CHECKSUM_LEN);
                at += HEADER_LEN + len;
                chunks += 1;
            }
            assert_eq!(chunks, data.len().div_ceil(MAX_BLOCK_SIZE));
            assert_eq!(decode_all(&[&wire]).unwrap(), data);
        }
        // Incompressible data goes out as uncompressed chunks.
        let wire = encode_all(&[&pseudo_random(1000, 3)]);
        assert_eq!(wire[10], CHUNK_UNCOMPRESSED);
    }

    #[test]
    fn chunk_split_invariance_both_ways() {
        let mut data = compressible(150_000);
        data.extend(pseudo_random(70_000, 11));
        let wire = encode_all(&[&data]);
        for (seed, max) in [(1, 1), (2, 13), (3, 1000), (4, 40_000), (5, 200_000)] {
            // Decoding any split of the wire gives the same bytes.
            assert_eq!(
                decode_all(&random_splits(&wire, seed, max)).unwrap(),
                data,
                "decode seed {seed}"
            );
            // Encoding splits the chunks differently, but decodes to the same stream.
            let rewire = encode_all(&random_splits(&data, seed + 100, max));
            assert_eq!(decode_all(&[&rewire]).unwrap(), data, "encode seed {seed}");
        }
    }

    #[test]
    fn corrupted_crc_is_an_error() {
        for data in [compressible(5000), b"hello".to_vec()] {
            let mut wire = encode_all(&[&data]);
            wire[14] ^= 1; // first checksum byte of the first data chunk
            let err = decode_all(&[&wire]).unwrap_err();
            assert!(err.0.contains("checksum"), "{err}");
            // Split delivery fails the same way, and the decoder stays failed.
            let mut dec = SnappyDecoder::new();
            let mut out = Vec::new();
            let mut failed = false;
            for b in &wire {
                if dec.transform(std::slice::from_ref(b), &mut out).is_err() {
                    failed = true;
                    break;
                }
            }
            assert!(failed);
            assert!(dec.transform(b"x", &mut out).is_err());
            assert!(out.is_empty());
        }
        // A corrupted payload byte is caught by the CRC as well.
        let mut wire = encode_all(&[b"hello"]);
        let last = wire.len() - 1;
        wire[last] ^= 0x20;
        assert!(decode_all(&[&wire]).is_err());
    }

    #[test]
    fn repeated_stream_identifier_skippable_and_padding_chunks() {
        let mut wire = encode_all(&[b"hello"]);
        wire.extend_from_slice(&STREAM_IDENTIFIER);
        wire.extend_from_slice(&[0x80, 3, 0, 0, 1, 2, 3]); // reserved skippable
        wire.extend_from_slice(&[CHUNK_PADDING, 2, 0, 0, 0, 0]);
        wire.extend_from_slice(&[0xfd, 0, 0, 0]); // empty skippable
        let mut more = SnappyEncoder::new();
        more.transform(b"world", &mut wire).unwrap(); // starts with its own identifier
        for max in [1, 3, 64] {
            assert_eq!(
                decode_all(&random_splits(&wire, 42, max)).unwrap(),
                b"helloworld"
            );
        }
    }

    #[test]
    fn rejects_malformed_streams() {
        let data_first = [
            0x01, 0x09, 0, 0, 0xbb, 0x1f, 0x1c, 0x19, b'h', b'e', b'l', b'l', b'o',
        ];
        assert!(decode_all(&[&data_first]).is_err(), "missing identifier");

        let mut reserved = STREAM_IDENTIFIER.to_vec();
        reserved.extend_from_slice(&[0x02, 1, 0, 0, 0]);
        assert!(decode_all(&[&reserved]).is_err(), "reserved unskippable");

        let mut oversized = STREAM_IDENTIFIER.to_vec();
        oversized.extend_from_slice(&[0x00, 0xff, 0xff, 0x01]); // 131071-byte chunk
        let err = decode_all(&[&oversized]).unwrap_err();
        assert!(err.0.contains("unsupported"), "{err}");

        let mut big_skippable = STREAM_IDENTIFIER.to_vec();
        big_skippable.extend_from_slice(&[0x80, 0xff, 0xff, 0xff]);
        assert!(
            decode_all(&[&big_skippable]).is_err(),
            "oversized skippable"
        );

        let mut big_uncompressed = STREAM_IDENTIFIER.to_vec();
        let len = (MAX_BLOCK_SIZE + CHECKSUM_LEN + 1) as u32;
        big_uncompressed.push(CHUNK_UNCOMPRESSED);
        big_uncompressed.extend_from_slice(&len.to_le_bytes()[..3]);
        assert!(decode_all(&[&big_uncompressed]).is_err());

        let mut short = STREAM_IDENTIFIER.to_vec();
        short.extend_from_slice(&[0x00, 3, 0, 0, 1, 2, 3]);
        assert!(
            decode_all(&[&short]).is_err(),
            "chunk shorter than checksum"
        );

        let bad_id = b"\xff\x06\x00\x00sNaPpZ";
        assert!(decode_all(&[bad_id]).is_err());

        let mut garbage = STREAM_IDENTIFIER.to_vec();
        garbage.extend_from_slice(&[0x00, 8, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode_all(&[&garbage]).is_err(), "undecodable snappy block");
    }

    #[test]
    fn buffered_partial_chunk_is_bounded_and_released() {
        let data = pseudo_random(MAX_BLOCK_SIZE, 5);
        let wire = encode_all(&[&data]);
        let mut dec = SnappyDecoder::new();
        let mut out = Vec::new();
        let (a, b) = wire.split_at(wire.len() / 2);
        dec.transform(a, &mut out).unwrap();
        assert!(dec.body.capacity() <= MAX_CHUNK_LEN);
        dec.transform(b, &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(dec.body.capacity(), 0, "idle decoder keeps no chunk buffer");
    }
}
