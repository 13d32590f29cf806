//! The KCP ARQ state machine as kcp-go v5 runs it, sans-IO: the caller passes the time (a
//! millisecond counter that may wrap) into [`Kcp::input`] and [`Kcp::flush`] and collects
//! the packets to send with [`Kcp::pop_output`].
//!
//! Written here rather than taken from the `kcp` crate: that crate ports the C `ikcp`, not
//! kcp-go (whose ack filtering, early retransmit, `regular` input from FEC recovery and
//! ack-only flush frp's peers run), writes through an `io::Write` callback with no room for
//! the FEC header in front of each packet, and does not expose the dead-link state the tokio
//! driver needs to end a session. This core is small, fuzzed through
//! [`super::session::Session`], and its behaviour is kept to kcp-go's (`kcp.go`), including
//! the window rules a kcp-go peer relies on.
//!
//! Only stream mode is read correctly: [`Kcp::recv`] returns bytes across segment
//! boundaries, ignoring `frg` (frp always runs kcp-go in stream mode).

use std::collections::VecDeque;

use super::segment::{
    CMD_ACK, CMD_PUSH, CMD_WASK, CMD_WINS, Header, OVERHEAD, SegmentError, segments,
};

const RTO_NDL: u32 = 30;
const RTO_MIN: u32 = 100;
const RTO_DEF: u32 = 200;
const RTO_MAX: u32 = 60_000;
const ASK_SEND: u32 = 1;
const ASK_TELL: u32 = 2;
const WND_SND: u32 = 32;
const WND_RCV: u32 = 32;
const MTU_DEF: u32 = 1400;
const INTERVAL: u32 = 100;
/// Retransmissions of one segment after which the link is considered dead.
pub const DEADLINK: u32 = 20;
const THRESH_INIT: u32 = 2;
const THRESH_MIN: u32 = 2;
const PROBE_INIT: u32 = 7000;
const PROBE_LIMIT: u32 = 120_000;

/// `later - earlier` on the wrapping 32-bit clock / sequence space.
pub fn timediff(later: u32, earlier: u32) -> i32 {
    later.wrapping_sub(earlier) as i32
}

struct SndSeg {
    sn: u32,
    ts: u32,
    xmit: u32,
    rto: u32,
    resendts: u32,
    fastack: u32,
    acked: bool,
    data: Vec<u8>,
}

struct RcvSeg {
    sn: u32,
    data: Vec<u8>,
}

/// One KCP conversation.
pub struct Kcp {
    conv: u32,
    mtu: u32,
    mss: u32,
    dead: bool,
    snd_una: u32,
    snd_nxt: u32,
    rcv_nxt: u32,
    ssthresh: u32,
    rx_rttvar: i32,
    rx_srtt: i32,
    rx_rto: u32,
    rx_minrto: u32,
    snd_wnd: u32,
    rcv_wnd: u32,
    rmt_wnd: u32,
    cwnd: u32,
    probe: u32,
    interval: u32,
    nodelay: bool,
    ts_probe: u32,
    probe_wait: u32,
    dead_link: u32,
    incr: u32,
    fastresend: u32,
    nocwnd: bool,
    stream: bool,
    /// The peer acknowledged a segment we sent (it receives at its address).
    peer_acked: bool,
    snd_queue: VecDeque<Vec<u8>>,
    snd_buf: VecDeque<SndSeg>,
    rcv_buf: VecDeque<RcvSeg>,
    rcv_queue: VecDeque<Vec<u8>>,
    /// Bytes of `rcv_queue[0]` already read.
    rcv_off: usize,
    acklist: Vec<(u32, u32)>,
    /// Zero bytes reserved at the front of every output packet (for the FEC header).
    headroom: usize,
    out: VecDeque<Vec<u8>>,
}

/// Collects segments into packets of at most `mtu` bytes (plus headroom).
struct Emitter {
    headroom: usize,
    mtu: usize,
    cur: Vec<u8>,
    done: Vec<Vec<u8>>,
}

impl Emitter {
    fn new(headroom: usize, mtu: u32) -> Emitter {
        Emitter {
            headroom,
            mtu: mtu as usize,
            cur: vec![0; headroom],
            done: Vec::new(),
        }
    }
    fn make_space(&mut self, space: usize) {
        if self.cur.len() - self.headroom + space > self.mtu {
            self.flush_buffer();
        }
    }
    fn flush_buffer(&mut self) {
        if self.cur.len() > self.headroom {
            let next = vec![0; self.headroom];
            self.done.push(std::mem::replace(&mut self.cur, next));
        }
    }
}

impl Kcp {
    /// A conversation with kcp-go's defaults (message mode, 32/32 windows, MTU 1400,
    /// interval 100 ms, no nodelay).
    pub fn new(conv: u32) -> Kcp {
        Kcp {
            conv,
            mtu: MTU_DEF,
            mss: MTU_DEF - OVERHEAD as u32,
            dead: false,
            snd_una: 0,
            snd_nxt: 0,
            rcv_nxt: 0,
            ssthresh: THRESH_INIT,
            rx_rttvar: 0,
            rx_srtt: 0,
            rx_rto: RTO_DEF,
            rx_minrto: RTO_MIN,
            snd_wnd: WND_SND,
            rcv_wnd: WND_RCV,
            rmt_wnd: WND_RCV,
            cwnd: 0,
            probe: 0,
            interval: INTERVAL,
            nodelay: false,
            ts_probe: 0,
            probe_wait: 0,
            dead_link: DEADLINK,
            incr: 0,
            fastresend: 0,
            nocwnd: false,
            stream: false,
            peer_acked: false,
            snd_queue: VecDeque::new(),
            snd_buf: VecDeque::new(),
            rcv_buf: VecDeque::new(),
            rcv_queue: VecDeque::new(),
            rcv_off: 0,
            acklist: Vec::new(),
            headroom: 0,
            out: VecDeque::new(),
        }
    }

    pub fn conv(&self) -> u32 {
        self.conv
    }

    /// The largest KCP packet (segments only, without headroom). Ignored below 50.
    pub fn set_mtu(&mut self, mtu: u32) {
        if mtu >= 50 {
            self.mtu = mtu;
            self.mss = mtu - OVERHEAD as u32;
        }
    }

    /// Bytes reserved (zeroed) in front of each output packet.
    pub fn set_headroom(&mut self, n: usize) {
        self.headroom = n;
    }

    /// kcp-go's `NoDelay(nodelay, interval, resend, nc)`.
    pub fn set_nodelay(&mut self, nodelay: bool, interval: u32, resend: u32, nc: bool) {
        self.nodelay = nodelay;
        self.rx_minrto = if nodelay { RTO_NDL } else { RTO_MIN };
        self.interval = interval.clamp(10, 5000);
        self.fastresend = resend;
        self.nocwnd = nc;
    }

    /// kcp-go's `WndSize(sndwnd, rcvwnd)` (0 leaves a value unchanged).
    pub fn set_wndsize(&mut self, snd: u32, rcv: u32) {
        if snd > 0 {
            self.snd_wnd = snd;
        }
        if rcv > 0 {
            self.rcv_wnd = rcv;
        }
    }

    pub fn set_stream(&mut self, stream: bool) {
        self.stream = stream;
    }

    pub fn mss(&self) -> usize {
        self.mss as usize
    }
    pub fn snd_wnd(&self) -> u32 {
        self.snd_wnd
    }
    pub fn rmt_wnd(&self) -> u32 {
        self.rmt_wnd
    }
    pub fn rx_rto(&self) -> u32 {
        self.rx_rto
    }
    pub fn interval(&self) -> u32 {
        self.interval
    }

    /// Segments queued or in flight (kcp-go's `WaitSnd`).
    pub fn wait_snd(&self) -> usize {
        self.snd_buf.len() + self.snd_queue.len()
    }

    /// Whether the peer has acknowledged data we sent: it has proved that it receives at the
    /// address it sends from, which a peer spoofing its source address cannot do.
    pub fn peer_acked(&self) -> bool {
        self.peer_acked
    }

    /// Whether a segment was retransmitted `dead_link` times (kcp-go's `state = -1`).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Queues bytes for sending: in stream mode they first fill up the last queued segment,
    /// then go into new segments of at most `mss` bytes. An empty buffer is ignored.
    pub fn send(&mut self, mut buf: &[u8]) {
        let mss = self.mss as usize;
        if self.stream
            && let Some(last) = self.snd_queue.back_mut()
            && last.len() < mss
        {
            let n = (mss - last.len()).min(buf.len());
            last.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
        }
        for chunk in buf.chunks(mss) {
            self.snd_queue.push_back(chunk.to_vec());
        }
    }

    /// Whether [`Kcp::recv`] would return data.
    pub fn readable(&self) -> bool {
        !self.rcv_queue.is_empty()
    }

    /// Reads received bytes in order (stream mode); 0 when none are ready.
    pub fn recv(&mut self, buf: &mut [u8]) -> usize {
        if self.rcv_queue.is_empty() || buf.is_empty() {
            return 0;
        }
        let fast_recover = self.rcv_queue.len() >= self.rcv_wnd as usize;
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = self.rcv_queue.front() else {
                break;
            };
            let avail = &front[self.rcv_off..];
            let k = avail.len().min(buf.len() - n);
            buf[n..n + k].copy_from_slice(&avail[..k]);
            n += k;
            self.rcv_off += k;
            if self.rcv_off == front.len() {
                self.rcv_queue.pop_front();
                self.rcv_off = 0;
            }
        }
        self.move_to_rcv_queue();
        if self.rcv_queue.len() < self.rcv_wnd as usize && fast_recover {
            // Tell the peer the window opened again.
            self.probe |= ASK_TELL;
        }
        n
    }

    fn move_to_rcv_queue(&mut self) {
        while let Some(seg) = self.rcv_buf.front() {
            if seg.sn == self.rcv_nxt && self.rcv_queue.len() < self.rcv_wnd as usize {
                let seg = self.rcv_buf.pop_front().expect("front exists");
                self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                if !seg.data.is_empty() {
                    self.rcv_queue.push_back(seg.data);
                }
            } else {
                break;
            }
        }
    }

    fn update_ack(&mut self, rtt: i32) {
        if self.rx_srtt == 0 {
            self.rx_srtt = rtt;
            self.rx_rttvar = rtt >> 1;
        } else {
            let mut delta = rtt - self.rx_srtt;
            self.rx_srtt += delta >> 3;
            if delta < 0 {
                delta = -delta;
            }
            if rtt < self.rx_srtt - self.rx_rttvar {
                self.rx_rttvar += (delta - self.rx_rttvar) >> 5;
            } else {
                self.rx_rttvar += (delta - self.rx_rttvar) >> 2;
            }
        }
        let rto =
            (self.rx_srtt as u32).wrapping_add(self.interval.max((self.rx_rttvar as u32) << 2));
        self.rx_rto = rto.clamp(self.rx_minrto, RTO_MAX);
    }

    fn shrink_buf(&mut self) {
        self.snd_una = match self.snd_buf.front() {
            Some(s) => s.sn,
            None => self.snd_nxt,
        };
    }

    fn parse_ack(&mut self, sn: u32) {
        if timediff(sn, self.snd_una) < 0 || timediff(sn, self.snd_nxt) >= 0 {
            return;
        }
        for seg in self.snd_buf.iter_mut() {
            if sn == seg.sn {
                // Freed now, removed once `una` passes it.
                seg.acked = true;
                self.peer_acked = true;
                seg.data = Vec::new();
                break;
            }
            if timediff(sn, seg.sn) < 0 {
                break;
            }
        }
    }

    fn parse_fastack(&mut self, sn: u32, ts: u32) {
        if timediff(sn, self.snd_una) < 0 || timediff(sn, self.snd_nxt) >= 0 {
            return;
        }
        for seg in self.snd_buf.iter_mut() {
            if timediff(sn, seg.sn) < 0 {
                break;
            } else if sn != seg.sn && timediff(seg.ts, ts) <= 0 {
                seg.fastack += 1;
            }
        }
    }

    fn parse_una(&mut self, una: u32) -> usize {
        let mut n = 0;
        while let Some(seg) = self.snd_buf.front() {
            if timediff(una, seg.sn) > 0 {
                self.snd_buf.pop_front();
                self.peer_acked = true;
                n += 1;
            } else {
                break;
            }
        }
        n
    }

    fn parse_data(&mut self, sn: u32, data: &[u8]) {
        if timediff(sn, self.rcv_nxt.wrapping_add(self.rcv_wnd)) >= 0
            || timediff(sn, self.rcv_nxt) < 0
        {
            return;
        }
        let mut insert = 0;
        let mut repeat = false;
        for (i, seg) in self.rcv_buf.iter().enumerate().rev() {
            if seg.sn == sn {
                repeat = true;
                break;
            }
            if timediff(sn, seg.sn) > 0 {
                insert = i + 1;
                break;
            }
        }
        if !repeat {
            self.rcv_buf.insert(
                insert,
                RcvSeg {
                    sn,
                    data: data.to_vec(),
                },
            );
        }
        self.move_to_rcv_queue();
    }

    /// Feeds one KCP packet (segments, no FEC header). `regular` is false for packets
    /// recovered by FEC: they neither update the remote window nor the RTT. Segments before
    /// an invalid one are kept, as in kcp-go.
    pub fn input(
        &mut self,
        data: &[u8],
        regular: bool,
        ack_nodelay: bool,
        now: u32,
    ) -> Result<(), SegmentError> {
        if data.len() < OVERHEAD {
            return Err(SegmentError::Short);
        }
        let prev_una = self.snd_una;
        let mut latest = None;
        let mut window_slides = false;
        let mut result = Ok(());
        for seg in segments(data) {
            let (h, body) = match seg {
                Ok(s) => s,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if h.conv != self.conv {
                result = Err(SegmentError::Conv(h.conv));
                break;
            }
            if regular {
                self.rmt_wnd = h.wnd as u32;
            }
            if self.parse_una(h.una) > 0 {
                window_slides = true;
            }
            self.shrink_buf();
            match h.cmd {
                CMD_ACK => {
                    self.parse_ack(h.sn);
                    self.parse_fastack(h.sn, h.ts);
                    latest = Some(h.ts);
                }
                CMD_PUSH if timediff(h.sn, self.rcv_nxt.wrapping_add(self.rcv_wnd)) < 0 => {
                    self.acklist.push((h.sn, h.ts));
                    self.parse_data(h.sn, body);
                }
                CMD_PUSH => {} // beyond the receive window: dropped, not acked
                CMD_WASK => self.probe |= ASK_TELL,
                _ => {} // CMD_WINS: the window was taken from the header above.
            }
        }
        if let Some(latest) = latest
            && regular
            && timediff(now, latest) >= 0
        {
            self.update_ack(timediff(now, latest));
        }
        if !self.nocwnd && timediff(self.snd_una, prev_una) > 0 && self.cwnd < self.rmt_wnd {
            let mss = self.mss;
            if self.cwnd < self.ssthresh {
                self.cwnd += 1;
                self.incr += mss;
            } else {
                if self.incr < mss {
                    self.incr = mss;
                }
                self.incr += (mss * mss) / self.incr + mss / 16;
                if (self.cwnd + 1) * mss <= self.incr {
                    self.cwnd = (self.incr + mss - 1) / mss.max(1);
                }
            }
            if self.cwnd > self.rmt_wnd {
                self.cwnd = self.rmt_wnd;
                self.incr = self.rmt_wnd * mss;
            }
        }
        if window_slides {
            self.flush(now, false);
        } else if !self.acklist.is_empty()
            && (ack_nodelay || self.acklist.len() >= self.mtu as usize / OVERHEAD)
        {
            // Acks go out at once when asked to, or when a packet's worth piled up.
            self.flush(now, true);
        }
        result
    }

    fn wnd_unused(&self) -> u16 {
        (self.rcv_wnd as usize).saturating_sub(self.rcv_queue.len()) as u16
    }

    /// Sends pending acks, window probes and (unless `ack_only`) new data and
    /// retransmissions. Returns the milliseconds until it wants to run again.
    pub fn flush(&mut self, now: u32, ack_only: bool) -> u32 {
        let mut em = Emitter::new(self.headroom, self.mtu);
        let mut h = Header {
            conv: self.conv,
            cmd: CMD_ACK,
            wnd: self.wnd_unused(),
            una: self.rcv_nxt,
            ..Header::default()
        };
        let n = self.acklist.len();
        for (i, &(sn, ts)) in self.acklist.iter().enumerate() {
            em.make_space(OVERHEAD);
            // Acks below rcv_nxt are covered by una; keep the last one for the RTT.
            if timediff(sn, self.rcv_nxt) >= 0 || i == n - 1 {
                h.sn = sn;
                h.ts = ts;
                h.encode(&mut em.cur);
            }
        }
        self.acklist.clear();
        if ack_only {
            em.flush_buffer();
            self.out.extend(em.done);
            return self.interval;
        }

        if self.rmt_wnd == 0 {
            if self.probe_wait == 0 {
                self.probe_wait = PROBE_INIT;
                self.ts_probe = now.wrapping_add(self.probe_wait);
            } else if timediff(now, self.ts_probe) >= 0 {
                self.probe_wait = self.probe_wait.max(PROBE_INIT);
                self.probe_wait += self.probe_wait / 2;
                self.probe_wait = self.probe_wait.min(PROBE_LIMIT);
                self.ts_probe = now.wrapping_add(self.probe_wait);
                self.probe |= ASK_SEND;
            }
        } else {
            self.ts_probe = 0;
            self.probe_wait = 0;
        }
        if self.probe & ASK_SEND != 0 {
            h.cmd = CMD_WASK;
            em.make_space(OVERHEAD);
            h.encode(&mut em.cur);
        }
        if self.probe & ASK_TELL != 0 {
            h.cmd = CMD_WINS;
            em.make_space(OVERHEAD);
            h.encode(&mut em.cur);
        }
        self.probe = 0;

        let mut cwnd = self.snd_wnd.min(self.rmt_wnd);
        if !self.nocwnd {
            cwnd = cwnd.min(self.cwnd);
        }
        let mut new_segs = 0;
        while timediff(self.snd_nxt, self.snd_una.wrapping_add(cwnd)) < 0 {
            let Some(data) = self.snd_queue.pop_front() else {
                break;
            };
            self.snd_buf.push_back(SndSeg {
                sn: self.snd_nxt,
                ts: 0,
                xmit: 0,
                rto: 0,
                resendts: 0,
                fastack: 0,
                acked: false,
                data,
            });
            self.snd_nxt = self.snd_nxt.wrapping_add(1);
            new_segs += 1;
        }

        let resent = if self.fastresend > 0 {
            self.fastresend
        } else {
            u32::MAX
        };
        let mut change = 0;
        let mut lost = 0;
        let mut minrto = self.interval as i32;
        let (wnd, una) = (h.wnd, h.una);
        for seg in self.snd_buf.iter_mut() {
            if seg.acked {
                continue;
            }
            let mut needsend = false;
            if seg.xmit == 0 {
                needsend = true;
                seg.rto = self.rx_rto;
                seg.resendts = now.wrapping_add(seg.rto);
            } else if seg.fastack >= resent || (seg.fastack > 0 && new_segs == 0) {
                // Fast retransmit, or early retransmit when nothing new goes out.
                needsend = true;
                seg.fastack = 0;
                seg.rto = self.rx_rto;
                seg.resendts = now.wrapping_add(seg.rto);
                change += 1;
            } else if timediff(now, seg.resendts) >= 0 {
                needsend = true;
                seg.rto = seg.rto.saturating_add(if self.nodelay {
                    self.rx_rto / 2
                } else {
                    self.rx_rto
                });
                seg.fastack = 0;
                seg.resendts = now.wrapping_add(seg.rto);
                lost += 1;
            }
            if needsend {
                seg.xmit += 1;
                seg.ts = now;
                em.make_space(OVERHEAD + seg.data.len());
                Header {
                    conv: self.conv,
                    cmd: CMD_PUSH,
                    frg: 0,
                    wnd,
                    ts: now,
                    sn: seg.sn,
                    una,
                    len: seg.data.len() as u32,
                }
                .encode(&mut em.cur);
                em.cur.extend_from_slice(&seg.data);
                if seg.xmit >= self.dead_link {
                    self.dead = true;
                }
            }
            let rto = timediff(seg.resendts, now);
            if rto > 0 && rto < minrto {
                minrto = rto;
            }
        }
        em.flush_buffer();
        self.out.extend(em.done);

        if !self.nocwnd {
            if change > 0 {
                let inflight = self.snd_nxt.wrapping_sub(self.snd_una);
                self.ssthresh = (inflight / 2).max(THRESH_MIN);
                self.cwnd = self.ssthresh.saturating_add(resent);
                self.incr = self.cwnd.saturating_mul(self.mss);
            }
            if lost > 0 {
                self.ssthresh = (cwnd / 2).max(THRESH_MIN);
                self.cwnd = 1;
                self.incr = self.mss;
            }
            if self.cwnd < 1 {
                self.cwnd = 1;
                self.incr = self.mss;
            }
        }
        minrto.max(1) as u32
    }

    /// The next packet to send (with `headroom` zero bytes in front).
    pub fn pop_output(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Kcp, Kcp) {
        let mk = || {
            let mut k = Kcp::new(7);
            k.set_stream(true);
            k.set_nodelay(true, 20, 2, true);
            k.set_wndsize(128, 128);
            k
        };
        (mk(), mk())
    }

    fn deliver(from: &mut Kcp, to: &mut Kcp, now: u32) -> usize {
        let mut n = 0;
        while let Some(p) = from.pop_output() {
            to.input(&p, true, false, now).unwrap();
            n += 1;
        }
        n
    }

    #[test]
    fn stream_mode_coalesces_and_acks() {
        let (mut a, mut b) = pair();
        a.send(b"hello ");
        a.send(b"world");
        assert_eq!(a.wait_snd(), 1, "stream mode fills the last segment");
        a.flush(0, false);
        assert_eq!(deliver(&mut a, &mut b, 5), 1);
        let mut buf = [0u8; 4];
        assert_eq!(b.recv(&mut buf), 4);
        assert_eq!(&buf, b"hell");
        let mut rest = [0u8; 64];
        assert_eq!(b.recv(&mut rest), 7);
        assert_eq!(&rest[..7], b"o world");
        b.flush(10, false);
        deliver(&mut b, &mut a, 15);
        assert_eq!(a.wait_snd(), 0, "acked");
        assert_eq!(a.rx_srtt, 15);
    }

    #[test]
    fn retransmits_then_dies() {
        let (mut a, _) = pair();
        a.send(b"x");
        let mut now = 0;
        for _ in 0..100_000 {
            now += a.flush(now, false);
            while a.pop_output().is_some() {}
            if a.is_dead() {
                break;
            }
        }
        assert!(a.is_dead());
    }

    #[test]
    fn foreign_conv_is_rejected() {
        let (mut a, _) = pair();
        let mut b = Kcp::new(8);
        b.send(b"x");
        b.flush(0, false); // the congestion window opens at the end of the first flush
        b.flush(1, false);
        let p = b.pop_output().unwrap();
        assert_eq!(a.input(&p, true, false, 0), Err(SegmentError::Conv(8)));
        assert!(!a.readable());
    }
}
