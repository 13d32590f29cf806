//! One KCP session as kcp-go's `UDPSession` runs it for frp, sans-IO: datagrams in
//! ([`Session::input`]), datagrams out ([`Session::poll_transmit`]), bytes in and out
//! ([`Session::send`], [`Session::recv`]) and a timer ([`Session::flush`]).
//!
//! The pipeline is kcp-go's with `block = nil` (no encryption, no CRC) and FEC on:
//! KCP output → FEC header (+ parity) → UDP, and UDP → FEC (recovery) → KCP input.

use super::core::Kcp;
use super::fec::{self, FecDecoder, FecEncoder, Shape};
use super::segment::{CMD_PUSH, OVERHEAD, segments};

/// frp's UDP payload limit (`SetMtu(1350)`; kcp-go takes its headers off it).
pub const MTU: u32 = 1350;
/// The largest datagram kcp-go reads (`mtuLimit`).
pub const MAX_DATAGRAM: usize = 1500;

/// Which side of frp's KCP transport (they differ only in window sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// frpc (`DialWithOptions`, windows 128/512).
    Client,
    /// frps (accepted by the listener, windows 1024/1024).
    Server,
}

/// KCP + FEC for one conversation, configured as frp configures kcp-go.
pub struct Session {
    kcp: Kcp,
    enc: FecEncoder,
    dec: FecDecoder,
    /// Parity packets waiting behind the data packet just returned.
    parity: Vec<Vec<u8>>,
    write_delay: bool,
    ack_nodelay: bool,
    /// KCP packets recovered by FEC and accepted.
    recovered: u64,
}

/// What the listener can tell about a datagram before it knows the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A parity packet: belongs to whatever session the address has.
    Parity,
    /// A KCP packet (with or without FEC data header) of conversation `conv`; `opens` when
    /// every segment parses and one of them is the first push (`sn` 0), which is what may
    /// start (or replace) a session.
    Data { conv: u32, opens: bool },
    /// Too short or otherwise unusable.
    Invalid,
}

/// Classifies a datagram arriving on the listener (kcp-go `Listener.packetInput`).
pub fn classify(datagram: &[u8]) -> Kind {
    if datagram.len() < OVERHEAD {
        return Kind::Invalid;
    }
    let kcp = match fec::packet_type(datagram) {
        Some(fec::TYPE_PARITY) => return Kind::Parity,
        Some(_) => match datagram.get(fec::HEADER_PLUS2..) {
            Some(k) if k.len() >= OVERHEAD => k,
            _ => return Kind::Invalid,
        },
        None => datagram,
    };
    let conv = u32::from_le_bytes([kcp[0], kcp[1], kcp[2], kcp[3]]);
    let mut opens = false;
    for s in segments(kcp) {
        match s {
            Ok((h, _)) if h.conv == conv => opens |= h.cmd == CMD_PUSH && h.sn == 0,
            _ => {
                opens = false;
                break;
            }
        }
    }
    Kind::Data { conv, opens }
}

impl Session {
    /// A session with frp's settings: stream mode, write delay, NoDelay(1, 20, 2, 1),
    /// MTU 1350, no ack-nodelay, FEC 10+3, and the role's windows.
    pub fn new(conv: u32, role: Role) -> Session {
        let mut kcp = Kcp::new(conv);
        kcp.set_stream(true);
        kcp.set_nodelay(true, 20, 2, true);
        kcp.set_mtu(MTU - fec::HEADER_PLUS2 as u32);
        kcp.set_headroom(fec::HEADER_PLUS2);
        match role {
            Role::Client => kcp.set_wndsize(128, 512),
            Role::Server => kcp.set_wndsize(1024, 1024),
        }
        Session {
            kcp,
            enc: FecEncoder::new(Shape::FRP),
            dec: FecDecoder::new(Shape::FRP),
            parity: Vec::new(),
            write_delay: true,
            ack_nodelay: false,
            recovered: 0,
        }
    }

    pub fn conv(&self) -> u32 {
        self.kcp.conv()
    }

    /// KCP packets recovered from parity so far.
    pub fn fec_recovered(&self) -> u64 {
        self.recovered
    }

    /// Feeds one received datagram. Malformed input is dropped (and reported, for
    /// counting); it never panics.
    pub fn input(&mut self, datagram: &[u8], now: u32) -> bool {
        match fec::packet_type(datagram) {
            Some(ty) => {
                if datagram.len() < fec::HEADER_PLUS2 {
                    return false;
                }
                let recovered = self.dec.decode(datagram);
                let mut ok = true;
                if ty == fec::TYPE_DATA {
                    ok = self
                        .kcp
                        .input(&datagram[fec::HEADER_PLUS2..], true, self.ack_nodelay, now)
                        .is_ok();
                }
                for r in &recovered {
                    if let Some(k) = fec::recovered_kcp(r)
                        && self.kcp.input(k, false, self.ack_nodelay, now).is_ok()
                    {
                        self.recovered += 1;
                    }
                }
                ok
            }
            None => self
                .kcp
                .input(datagram, true, self.ack_nodelay, now)
                .is_ok(),
        }
    }

    /// Whether the send window has room (kcp-go blocks `Write` otherwise).
    pub fn can_send(&self) -> bool {
        let w = self.kcp.wait_snd();
        w < self.kcp.snd_wnd() as usize && w < self.kcp.rmt_wnd() as usize
    }

    /// Queues up to `buf.len()` bytes if the window has room; returns how many (0: full).
    /// With write delay on (frp), they go out at the next [`Session::flush`] unless the
    /// window filled up, in which case [`Session::wants_flush`] says so.
    pub fn send(&mut self, buf: &[u8]) -> usize {
        if !self.can_send() || buf.is_empty() {
            return 0;
        }
        let room = (self.kcp.snd_wnd().min(self.kcp.rmt_wnd()) as usize)
            .saturating_sub(self.kcp.wait_snd())
            .max(1);
        let n = buf.len().min(room * self.kcp.mss());
        self.kcp.send(&buf[..n]);
        n
    }

    /// After [`Session::send`]: whether kcp-go would flush at once (window full, or write
    /// delay off).
    pub fn wants_flush(&self) -> bool {
        !self.write_delay || !self.can_send()
    }

    pub fn readable(&self) -> bool {
        self.kcp.readable()
    }

    pub fn recv(&mut self, buf: &mut [u8]) -> usize {
        self.kcp.recv(buf)
    }

    /// kcp-go's periodic `update`: flushes and returns the ms until the next one.
    pub fn flush(&mut self, now: u32) -> u32 {
        self.kcp.flush(now, false)
    }

    /// Segments not yet acknowledged or not yet sent.
    pub fn wait_snd(&self) -> usize {
        self.kcp.wait_snd()
    }

    /// Whether the peer acknowledged data we sent (see [`Kcp::peer_acked`]): until then a
    /// session on the listener is half-open.
    pub fn proven(&self) -> bool {
        self.kcp.peer_acked()
    }

    pub fn is_dead(&self) -> bool {
        self.kcp.is_dead()
    }

    /// The next datagram to send, FEC-encoded.
    pub fn poll_transmit(&mut self, now: u32) -> Option<Vec<u8>> {
        if !self.parity.is_empty() {
            return Some(self.parity.remove(0));
        }
        let mut p = self.kcp.pop_output()?;
        self.parity = self.enc.encode(&mut p, now);
        Some(p)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic xorshift for the lossy channel.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    /// A one-way channel that drops, duplicates and reorders, with latency.
    struct Link {
        q: Vec<(u32, Vec<u8>)>,
        rng: Rng,
        loss: u64,
    }
    impl Link {
        fn push(&mut self, now: u32, p: Vec<u8>) {
            if self.rng.chance(self.loss) {
                return;
            }
            let delay = 10 + (self.rng.next() % 30) as u32; // reordering through jitter
            if self.rng.chance(3) {
                self.q.push((now + delay + 7, p.clone()));
            }
            self.q.push((now + delay, p));
        }
        fn due(&mut self, now: u32) -> Vec<Vec<u8>> {
            let (due, keep): (Vec<_>, Vec<_>) = self.q.drain(..).partition(|(t, _)| *t <= now);
            self.q = keep;
            due.into_iter().map(|(_, p)| p).collect()
        }
    }

    fn transfer(loss: u64, seed: u64) -> (Vec<u8>, Vec<u8>, u32, u64) {
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
        let mut a = Session::new(42, Role::Client);
        let mut b = Session::new(42, Role::Server);
        let mut ab = Link {
            q: Vec::new(),
            rng: Rng(seed),
            loss,
        };
        let mut ba = Link {
            q: Vec::new(),
            rng: Rng(seed ^ 0x9e37_79b9),
            loss,
        };
        let mut sent = 0;
        let mut got = Vec::new();
        let mut now = 0u32;
        let mut buf = vec![0u8; 65536];
        while got.len() < data.len() && now < 600_000 {
            while sent < data.len() {
                let n = a.send(&data[sent..(sent + 10_000).min(data.len())]);
                if n == 0 {
                    break;
                }
                sent += n;
            }
            if now.is_multiple_of(20) {
                a.flush(now);
                b.flush(now);
            }
            while let Some(p) = a.poll_transmit(now) {
                assert!(p.len() <= MTU as usize);
                ab.push(now, p);
            }
            while let Some(p) = b.poll_transmit(now) {
                ba.push(now, p);
            }
            for p in ab.due(now) {
                b.input(&p, now);
            }
            for p in ba.due(now) {
                a.input(&p, now);
            }
            loop {
                let n = b.recv(&mut buf);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            now += 1;
        }
        (data, got, now, b.fec_recovered())
    }

    #[test]
    fn one_mib_over_a_lossy_reordering_duplicating_link() {
        let (data, got, now, recovered) = transfer(5, 0x1234_5678);
        assert_eq!(got.len(), data.len(), "stalled at {now} ms");
        assert!(got == data, "corrupted");
        assert!(recovered > 0, "FEC never recovered a packet");
    }

    #[test]
    fn one_mib_over_a_clean_link() {
        let (data, got, _, _) = transfer(0, 99);
        assert!(got == data);
    }

    /// The first datagram of a client that wrote `n` bytes: what opens a session on frps.
    pub(crate) fn open_datagram(conv: u32, n: usize) -> Vec<u8> {
        let mut c = Session::new(conv, Role::Client);
        c.send(&vec![0u8; n]);
        c.flush(0);
        c.poll_transmit(0).unwrap()
    }

    /// A session that got one datagram holds little more than that datagram: no FEC codec,
    /// no preallocated shard buffers (a flood of opens costs what it carries).
    #[test]
    fn a_half_open_server_session_holds_almost_nothing() {
        let open = open_datagram(7, 38);
        assert_eq!(open.len(), 70);
        let before = crate::test_alloc::live_bytes();
        let mut s = Session::new(7, Role::Server);
        assert!(s.input(&open, 0));
        s.flush(20);
        let mut acks = 0;
        while s.poll_transmit(20).is_some() {
            acks += 1;
        }
        assert_eq!(acks, 1);
        assert!(!s.proven(), "nothing of ours was acknowledged");
        let cost = crate::test_alloc::live_bytes() - before;
        println!("a half-open session holds {cost} bytes");
        assert!(cost < 2048, "a half-open session holds {cost} bytes");
        let mut buf = [1u8; 64];
        assert_eq!(s.recv(&mut buf), 38);
    }

    #[test]
    fn a_session_is_proven_once_the_peer_acknowledges_our_data() {
        let mut c = Session::new(9, Role::Client);
        let mut s = Session::new(9, Role::Server);
        c.send(b"hello");
        c.flush(0);
        while let Some(p) = c.poll_transmit(0) {
            s.input(&p, 1);
        }
        s.send(b"world");
        s.flush(20);
        // Our ack of "hello" and "world" itself: nothing acknowledged by the client yet.
        while let Some(p) = s.poll_transmit(20) {
            c.input(&p, 21);
        }
        assert!(!s.proven());
        assert!(c.proven(), "the server acknowledged hello");
        c.flush(40);
        while let Some(p) = c.poll_transmit(40) {
            s.input(&p, 41);
        }
        assert!(s.proven());
    }

    #[test]
    fn classify_datagrams() {
        let mut s = Session::new(0xabcd, Role::Client);
        s.send(b"hello");
        s.flush(0);
        let p = s.poll_transmit(0).unwrap();
        assert_eq!(
            classify(&p),
            Kind::Data {
                conv: 0xabcd,
                opens: true
            }
        );
        assert_eq!(classify(&p[..20]), Kind::Invalid);
        let mut bad = p.clone();
        bad[fec::HEADER_PLUS2 + 4] = 99; // cmd
        assert_eq!(
            classify(&bad),
            Kind::Data {
                conv: 0xabcd,
                opens: false
            }
        );
        let mut parity = vec![0u8; 30];
        parity[4] = 0xf2;
        assert_eq!(classify(&parity), Kind::Parity);
    }
}
