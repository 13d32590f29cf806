//! kcp-go's forward error correction layer (`fec.go`), byte for byte, sans-IO.
//!
//! Every datagram of a session with FEC starts with a 6-byte header:
//!
//! ```text
//! | seqid u32 LE | type u16 LE (0xf1 data, 0xf2 parity) | ...
//! ```
//!
//! A data packet continues with `size u16 LE` (2 + the KCP bytes that follow) and the KCP
//! packet. Seqids count every packet; each run of `data + parity` seqids
//! (`seqid / (data + parity)`) is one shard group: slots `0..data` are data, the rest parity.
//! The Reed–Solomon shards of a group are the data packets from the size field on,
//! zero-padded to the longest; a parity packet carries one parity shard after its header.
//! Seqids wrap below `u32::MAX / total * total` (kcp-go's `paws`).
//!
//! As in kcp-go (v5.6.13 and later): the sender skips a group's parity (but still advances the
//! seqid past its slots) when the last two data packets were more than 500 ms apart; the
//! receiver groups shards by seqid, recovers missing data shards once any `data` shards of a
//! group are in, and forgets groups more than three groups older than the newest. A shard
//! whose type does not match its slot is not used for recovery (kcp-go would start its
//! parameter auto-tuner instead; frp always runs 10+3).
//!
//! The Reed–Solomon code is `reed-solomon-erasure`'s GF(2^8) codec, which builds the same
//! systematic Vandermonde-derived matrix as klauspost/reedsolomon (`buildMatrix`: Vandermonde
//! `v[r][c] = r^c`, times the inverse of its top square, polynomial 0x11d); the test
//! `parity_matches_independent_math` checks the parity bytes against that construction
//! done independently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reed_solomon_erasure::galois_8::ReedSolomon;

use super::core::timediff;

/// seqid + type.
pub const HEADER: usize = 6;
/// seqid + type + size: what precedes the KCP bytes in a data packet.
pub const HEADER_PLUS2: usize = 8;
pub const TYPE_DATA: u16 = 0xf1;
pub const TYPE_PARITY: u16 = 0xf2;
/// kcp-go's `maxFECEncodeLatency`: parity is skipped after a pause longer than this (ms).
const MAX_ENCODE_LATENCY: u32 = 500;
/// Shard groups kept behind the newest one.
const MAX_SHARD_SETS: i32 = 3;

/// The FEC shape (frp: 10 data, 3 parity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub data: usize,
    pub parity: usize,
}

impl Shape {
    pub const FRP: Shape = Shape {
        data: 10,
        parity: 3,
    };
    fn total(self) -> usize {
        self.data + self.parity
    }
    fn paws(self) -> u32 {
        u32::MAX / self.total() as u32 * self.total() as u32
    }
    /// The process-wide codec of this shape. Codecs are immutable apart from a cache of
    /// inverted matrices (behind its own lock), so every session shares one: a session that
    /// never sends or recovers a whole group (a half-open one) costs no codec at all, and the
    /// others do not each build their own matrices and 254-entry cache.
    fn codec(self) -> Arc<ReedSolomon> {
        static CODECS: Mutex<Vec<(Shape, Arc<ReedSolomon>)>> = Mutex::new(Vec::new());
        let mut codecs = CODECS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = codecs.iter().find(|(s, _)| *s == self) {
            return c.clone();
        }
        let c = Arc::new(ReedSolomon::new(self.data, self.parity).expect("valid FEC shape"));
        codecs.push((self, c.clone()));
        c
    }
}

/// The FEC type of a datagram, if it has a FEC header.
pub fn packet_type(datagram: &[u8]) -> Option<u16> {
    let t = u16::from_le_bytes(datagram.get(4..6)?.try_into().ok()?);
    matches!(t, TYPE_DATA | TYPE_PARITY).then_some(t)
}

fn seqid(p: &[u8]) -> u32 {
    u32::from_le_bytes([p[0], p[1], p[2], p[3]])
}

/// Adds FEC headers to outgoing packets and produces parity packets.
pub struct FecEncoder {
    shape: Shape,
    paws: u32,
    next: u32,
    /// Data shards of the current group (packet bytes from the size field on).
    shards: Vec<Vec<u8>>,
    ts_latest: Option<u32>,
    /// Fetched at the first parity computed.
    codec: Option<Arc<ReedSolomon>>,
}

impl FecEncoder {
    pub fn new(shape: Shape) -> FecEncoder {
        FecEncoder {
            shape,
            paws: shape.paws(),
            next: 0,
            shards: Vec::new(),
            ts_latest: None,
            codec: None,
        }
    }

    fn seal(&mut self, p: &mut [u8], ty: u16) {
        p[..4].copy_from_slice(&self.next.to_le_bytes());
        p[4..6].copy_from_slice(&ty.to_le_bytes());
        self.next = (self.next + 1) % self.paws;
    }

    /// Fills in the header of `packet` (whose first [`HEADER_PLUS2`] bytes are reserved) and
    /// returns the parity packets to send after it, if it completes a group. `now` is in ms.
    pub fn encode(&mut self, packet: &mut [u8], now: u32) -> Vec<Vec<u8>> {
        assert!(packet.len() >= HEADER_PLUS2, "FEC headroom missing");
        self.seal(packet, TYPE_DATA);
        let size = (packet.len() - HEADER) as u16;
        packet[HEADER..HEADER_PLUS2].copy_from_slice(&size.to_le_bytes());
        self.shards.push(packet[HEADER..].to_vec());
        let continuous = self
            .ts_latest
            .is_some_and(|t| (timediff(now, t) as i64) < MAX_ENCODE_LATENCY as i64);
        self.ts_latest = Some(now);
        if self.shards.len() < self.shape.data {
            return Vec::new();
        }
        let mut shards = std::mem::take(&mut self.shards);
        if !continuous {
            self.next = (self.next + self.shape.parity as u32) % self.paws;
            return Vec::new();
        }
        let len = shards.iter().map(Vec::len).max().unwrap_or(0);
        for s in &mut shards {
            s.resize(len, 0);
        }
        let mut parity = vec![vec![0u8; len]; self.shape.parity];
        self.codec
            .get_or_insert_with(|| self.shape.codec())
            .encode_sep(&shards, &mut parity)
            .expect("equal shard sizes");
        parity
            .into_iter()
            .map(|p| {
                let mut pkt = vec![0u8; HEADER];
                self.seal(&mut pkt, TYPE_PARITY);
                pkt.extend_from_slice(&p);
                pkt
            })
            .collect()
    }
}

#[derive(Default)]
struct Group {
    shards: Vec<Option<Vec<u8>>>,
    count: usize,
    data: usize,
    /// Recovery was attempted (or not needed): later shards of this group are ignored.
    done: bool,
}

/// Collects shards and recovers lost data packets.
pub struct FecDecoder {
    shape: Shape,
    paws: u32,
    groups: HashMap<u32, Group>,
    newest: u32,
    /// Fetched at the first recovery.
    codec: Option<Arc<ReedSolomon>>,
}

impl FecDecoder {
    pub fn new(shape: Shape) -> FecDecoder {
        FecDecoder {
            shape,
            paws: shape.paws(),
            groups: HashMap::new(),
            newest: 0,
            codec: None,
        }
    }

    /// Number of shard groups held (for tests: it stays bounded).
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Takes one FEC packet (header included). Returns the recovered data shards: each
    /// starts with the size field (see [`recovered_kcp`]).
    pub fn decode(&mut self, pkt: &[u8]) -> Vec<Vec<u8>> {
        let Some(ty) = packet_type(pkt) else {
            return Vec::new();
        };
        let sid = seqid(pkt);
        if sid >= self.paws {
            return Vec::new();
        }
        let total = self.shape.total() as u32;
        let slot = (sid % total) as usize;
        let want = if slot < self.shape.data {
            TYPE_DATA
        } else {
            TYPE_PARITY
        };
        if ty != want || (ty == TYPE_DATA && pkt.len() < HEADER_PLUS2) {
            return Vec::new();
        }
        let id = sid / total;
        let mut recovered = Vec::new();
        let g = self.groups.entry(id).or_default();
        if !g.done {
            if g.shards.is_empty() {
                g.shards = vec![None; total as usize];
            }
            if g.shards[slot].is_none() {
                g.shards[slot] = Some(pkt[HEADER..].to_vec());
                g.count += 1;
                if ty == TYPE_DATA {
                    g.data += 1;
                }
                if g.count >= self.shape.data {
                    g.done = true;
                    let mut shards = std::mem::take(&mut g.shards);
                    if g.data < self.shape.data {
                        let codec = self.codec.get_or_insert_with(|| self.shape.codec());
                        recovered = recover(codec, self.shape, &mut shards);
                    }
                }
            }
        }
        if timediff(id.wrapping_mul(total), self.newest.wrapping_mul(total)) > 0 {
            self.newest = id;
        }
        let newest = self.newest.wrapping_mul(total);
        self.groups.retain(|gid, _| {
            timediff(newest, gid.wrapping_mul(total)) <= MAX_SHARD_SETS * total as i32
        });
        recovered
    }
}

/// Reed–Solomon recovery of the missing data shards of one group.
fn recover(codec: &ReedSolomon, shape: Shape, shards: &mut [Option<Vec<u8>>]) -> Vec<Vec<u8>> {
    let len = shards.iter().flatten().map(Vec::len).max().unwrap_or(0);
    let missing: Vec<usize> = (0..shape.data).filter(|&i| shards[i].is_none()).collect();
    for s in shards.iter_mut().flatten() {
        s.resize(len, 0);
    }
    if codec.reconstruct_data(shards).is_err() {
        return Vec::new();
    }
    missing
        .into_iter()
        .filter_map(|i| shards[i].take())
        .collect()
}

/// The KCP packet inside a recovered data shard: `size` (u16 LE, counting itself) must be
/// within the shard, as kcp-go checks.
pub fn recovered_kcp(shard: &[u8]) -> Option<&[u8]> {
    let sz = u16::from_le_bytes(shard.get(..2)?.try_into().ok()?) as usize;
    (2..=shard.len()).contains(&sz).then(|| &shard[2..sz])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data packet as the session builds it: 8 reserved bytes, then `kcp`.
    fn data_pkt(kcp: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_PLUS2];
        p.extend_from_slice(kcp);
        p
    }

    /// 10 data packets of different sizes, encoded continuously: 13 packets.
    fn group(enc: &mut FecEncoder, seed: u8) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut kcps = Vec::new();
        let mut wire = Vec::new();
        for i in 0..10u8 {
            let kcp: Vec<u8> = (0..(30 + 17 * i as usize))
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i ^ seed))
                .collect();
            let mut p = data_pkt(&kcp);
            let parity = enc.encode(&mut p, 1000 + i as u32);
            wire.push(p);
            wire.extend(parity);
            kcps.push(kcp);
        }
        (kcps, wire)
    }

    #[test]
    fn header_layout() {
        let mut enc = FecEncoder::new(Shape::FRP);
        let (_, wire) = group(&mut enc, 0);
        assert_eq!(wire.len(), 13);
        for (i, p) in wire.iter().enumerate() {
            assert_eq!(seqid(p), i as u32);
            let ty = if i < 10 { TYPE_DATA } else { TYPE_PARITY };
            assert_eq!(packet_type(p), Some(ty));
        }
        // size = 2 + kcp bytes.
        assert_eq!(u16::from_le_bytes([wire[0][6], wire[0][7]]), 32);
        assert_eq!(wire[0][..6], [0, 0, 0, 0, 0xf1, 0]);
        // Parity is as long as the longest data shard.
        assert_eq!(wire[10].len(), HEADER + 2 + 30 + 17 * 9);
    }

    #[test]
    fn any_three_losses_are_recovered() {
        let mut enc = FecEncoder::new(Shape::FRP);
        let (kcps, wire) = group(&mut enc, 5);
        let mut cases = 0;
        for a in 0..13 {
            for b in a..13 {
                for c in b..13 {
                    let lost = [a, b, c];
                    let mut dec = FecDecoder::new(Shape::FRP);
                    let mut got: Vec<Vec<u8>> = Vec::new();
                    for (i, p) in wire.iter().enumerate() {
                        if lost.contains(&i) {
                            continue;
                        }
                        if i < 10 {
                            got.push(p[HEADER_PLUS2..].to_vec());
                        }
                        for r in dec.decode(p) {
                            got.push(recovered_kcp(&r).expect("size field").to_vec());
                        }
                    }
                    got.sort();
                    let mut want = kcps.clone();
                    want.sort();
                    assert_eq!(got, want, "lost {lost:?}");
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 455);
    }

    #[test]
    fn four_losses_are_not_recovered_and_duplicates_ignored() {
        let mut enc = FecEncoder::new(Shape::FRP);
        let (_, wire) = group(&mut enc, 1);
        let mut dec = FecDecoder::new(Shape::FRP);
        let mut n = 0;
        for p in &wire[4..] {
            n += dec.decode(p).len();
            n += dec.decode(p).len();
        }
        assert_eq!(n, 0);
    }

    #[test]
    fn parity_skipped_after_a_pause_keeps_slots() {
        let mut enc = FecEncoder::new(Shape::FRP);
        for i in 0..10u32 {
            let mut p = data_pkt(b"abc");
            assert!(enc.encode(&mut p, i * 1000).is_empty());
        }
        let mut p = data_pkt(b"abc");
        enc.encode(&mut p, 100_000);
        assert_eq!(
            seqid(&p),
            13,
            "the next group starts after the parity slots"
        );
    }

    #[test]
    fn old_groups_are_forgotten() {
        let mut dec = FecDecoder::new(Shape::FRP);
        for g in 0..100u32 {
            let mut p = data_pkt(b"abcdef");
            p[..4].copy_from_slice(&(g * 13).to_le_bytes());
            p[4..6].copy_from_slice(&TYPE_DATA.to_le_bytes());
            dec.decode(&p);
            assert!(dec.groups() <= 4, "{}", dec.groups());
        }
        // Wrong type for the slot: not used.
        let mut p = data_pkt(b"abcdef");
        p[..4].copy_from_slice(&11u32.to_le_bytes());
        p[4..6].copy_from_slice(&TYPE_DATA.to_le_bytes());
        assert!(dec.decode(&p).is_empty());
    }

    // --- Independent Reed–Solomon arithmetic, for the parity test vector -------------------

    /// GF(2^8) multiplication by shift-and-add over x^8+x^4+x^3+x^2+1 (0x11d): no tables.
    fn gmul(mut a: u8, mut b: u8) -> u8 {
        let mut p = 0u8;
        while b != 0 {
            if b & 1 != 0 {
                p ^= a;
            }
            let hi = a & 0x80;
            a <<= 1;
            if hi != 0 {
                a ^= 0x1d;
            }
            b >>= 1;
        }
        p
    }

    fn gpow(a: u8, n: usize) -> u8 {
        (0..n).fold(1u8, |acc, _| gmul(acc, a))
    }

    fn ginv(a: u8) -> u8 {
        (1..=255u8).find(|&x| gmul(a, x) == 1).expect("nonzero")
    }

    /// klauspost's buildMatrix(data, total), derived from its definition: Vandermonde rows
    /// `r^c` (0^0 = 1), times the inverse of the top data×data square (Gauss–Jordan).
    fn klauspost_matrix(data: usize, total: usize) -> Vec<Vec<u8>> {
        let vm: Vec<Vec<u8>> = (0..total)
            .map(|r| (0..data).map(|c| gpow(r as u8, c)).collect())
            .collect();
        // Invert the top square: [top | I] → [I | top^-1].
        let mut aug: Vec<Vec<u8>> = (0..data)
            .map(|r| {
                let mut row = vm[r].clone();
                row.extend((0..data).map(|c| u8::from(c == r)));
                row
            })
            .collect();
        for col in 0..data {
            let piv = (col..data).find(|&r| aug[r][col] != 0).expect("invertible");
            aug.swap(col, piv);
            let inv = ginv(aug[col][col]);
            for x in aug[col].iter_mut() {
                *x = gmul(*x, inv);
            }
            for r in 0..data {
                if r != col && aug[r][col] != 0 {
                    let f = aug[r][col];
                    let pivot_row = aug[col].clone();
                    for (x, p) in aug[r].iter_mut().zip(pivot_row) {
                        *x ^= gmul(f, p);
                    }
                }
            }
        }
        let top_inv: Vec<Vec<u8>> = aug.iter().map(|r| r[data..].to_vec()).collect();
        vm.iter()
            .map(|row| {
                (0..data)
                    .map(|c| (0..data).fold(0u8, |acc, k| acc ^ gmul(row[k], top_inv[k][c])))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn parity_matches_independent_math() {
        let m = klauspost_matrix(10, 13);
        for (r, row) in m.iter().take(10).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                assert_eq!(v, u8::from(r == c), "systematic top");
            }
        }
        // Known shards: shard i, byte j = i*16 + j + 1.
        let data: Vec<Vec<u8>> = (0..10u8)
            .map(|i| (0..8u8).map(|j| i * 16 + j + 1).collect())
            .collect();
        let want: Vec<Vec<u8>> = (10..13)
            .map(|r| {
                (0..8)
                    .map(|j| (0..10).fold(0u8, |acc, i| acc ^ gmul(m[r][i], data[i][j])))
                    .collect()
            })
            .collect();
        let mut parity = vec![vec![0u8; 8]; 3];
        Shape::FRP.codec().encode_sep(&data, &mut parity).unwrap();
        assert_eq!(parity, want);
        // Pinned so a change in either derivation shows: the first parity row of
        // klauspost's 10+3 matrix.
        assert_eq!(
            m[10],
            [0x81, 0x96, 0xaf, 0xb8, 0xd2, 0xc4, 0xfe, 0xe8, 0x03, 0x02],
            "{:02x?}",
            m[10]
        );
    }
}
