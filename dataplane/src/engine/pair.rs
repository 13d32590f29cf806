//! The readiness-driven state machine of one pair on a core thread.
//!
//! Both core engines (epoll and io_uring) feed it the same thing: "this socket may be readable
//! / writable now" (edge-triggered). It performs non-blocking syscalls until one of them says
//! `EAGAIN`, then waits for the next edge. The semantics are those of the tokio relay (see
//! [`crate::relay`]):
//!
//! - one chunk in flight per direction: a direction reads again only once everything it read
//!   before has been written (bytes in a pipe, or a buffer of transformed output);
//! - EOF on a side → `shutdown(SHUT_WR)` of the other once the direction has drained; the
//!   other direction keeps going;
//! - any error → the pair is closed at once;
//! - the prefix of a side goes through that side's inbound chain (and the other side's
//!   outbound chain) before anything read from the socket;
//! - a side's `initial_write` is the first thing written to it (it starts as the pending
//!   output of the direction writing there);
//! - with a rate limiter, a direction takes tokens before each read and reads at most what it
//!   was granted; without tokens it parks and reports when to be woken ([`PairState::wake_at`]),
//!   and the core arms a timer.
//!
//! A direction with no transforms splices socket → pipe → socket with a pipe from the core's
//! pool; with transforms (or when the pool has no pipe) it copies through the core's shared
//! read buffer. Nothing is allocated per pair while it is idle: the pipe goes back to the pool
//! and the leftover-output buffer is freed as soon as the source has nothing more to read.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use super::CoreSide;
use super::core::CoreStats;
use super::pipes::{Pipe, PipePool};
use crate::limit::{Grant, RateLimiter};
use crate::relay::{ConnGuard, Counters, RelayError, RelayOutcome, SideId};
use crate::sys;
use crate::transform::{Transform, finish_chain, run_chain, run_chain_mut};

/// Read size of a direction without transforms that copies (pool miss).
pub(crate) const COPY_READ_PLAIN: usize = 64 * 1024;
/// Read size of a direction with transforms: Go frp's copy size; it also caps how much a
/// decompressing chain can expand one read into.
pub(crate) const COPY_READ_TRANSFORMED: usize = 16 * 1024;
/// A splice moving less than this turns a bulk direction back to copying.
const SMALL_SPLICE: usize = 16 * 1024;
/// Chunks one direction may move per turn before letting other pairs run.
const BUDGET: u32 = 16;

/// What a core shares with every pair it drives.
pub(crate) struct CoreCx<'a> {
    pub pool: &'a mut PipePool,
    pub stats: &'a CoreStats,
    /// The read buffer (COPY_READ_PLAIN bytes), shared by every pair of the core.
    pub buf: &'a mut [u8],
    pub plain: &'a mut Vec<u8>,
    pub wire: &'a mut Vec<u8>,
}

/// A socket and what we know of its readiness.
pub(crate) struct Conn {
    pub fd: OwnedFd,
    pub readable: bool,
    pub writable: bool,
    /// An event reported hang-up or error (EOF may be waiting behind the data): a short read
    /// no longer proves the socket drained.
    pub hup: bool,
}

/// One direction: reads from `from`'s socket, writes to the other one.
///
/// Kept small, as every pair a core owns sits in its slab for its whole life, mostly idle
/// (see [`PairState`]): what only some directions have is boxed in `extra`.
struct Dir {
    from: SideId,
    /// The flow is bulk: a copy read filled the whole buffer, and no splice since moved less
    /// than `SMALL_SPLICE`. Bulk flows splice, the others copy (see `pump`).
    bulk: bool,
    eof: bool,
    done: bool,
    /// Bytes sitting in `pipe` (at most its capacity, which `F_SETPIPE_SZ` keeps within an
    /// `i32`).
    in_pipe: u32,
    pipe: Option<Pipe>,
    /// Output of the copy path not yet written (empty, and unallocated, most of the time).
    pending: Vec<u8>,
    sent: usize,
    /// Plaintext length of the chunk in `pending`, counted once it is all written.
    pending_plain: u64,
    total: u64,
    /// Read-ahead bytes and transform chains; `None` for a plain direction, and once the
    /// read-ahead bytes of a direction without transforms are forwarded.
    extra: Option<Box<DirExtra>>,
}

/// What only some directions have: bytes the control plane read ahead, transforms.
struct DirExtra {
    prefix: Bytes,
    /// The reading side's inbound chain.
    inbound: Vec<Box<dyn Transform>>,
    /// The writing side's outbound chain.
    outbound: Vec<Box<dyn Transform>>,
    /// `inbound[0]` opens the records of a TLS side: the prefix, already opened,
    /// skips it.
    opens: bool,
    /// How much one read takes: 64 KiB without transforms or where the only ones are TLS
    /// layers (a record never grows when opened), else Go frp's 16 KiB (decompression
    /// expands).
    read_size: usize,
    /// The chains' `finish` output was queued (the source reached EOF).
    finished: bool,
}

/// A rate-limited pair's limiter and wake-ups, boxed in its [`PairState`] (most pairs have
/// no limit).
struct Limit {
    limiter: Arc<RateLimiter>,
    /// Per direction (a→b, b→a): out of tokens, run again at this instant.
    wake_at: [Option<Instant>; 2],
    /// The deadline of the timer the core armed for this pair, if any.
    timer: Option<Instant>,
}

/// A direction's view of its pair's [`Limit`] while it runs.
struct DirLimit<'a> {
    limiter: &'a RateLimiter,
    wake_at: &'a mut Option<Instant>,
}

impl DirLimit<'_> {
    /// The most the next read may take, `None` when the limiter has no tokens now
    /// (`wake_at` is then set).
    fn grant(&mut self, want: usize) -> Option<usize> {
        match self.limiter.acquire(want) {
            Grant::Bytes(n) => Some(n),
            Grant::Wait(d) => {
                *self.wake_at = Some(Instant::now() + d);
                None
            }
        }
    }
}

/// How a direction's turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Waiting for an edge (or finished).
    Parked,
    /// Out of budget while still able to progress: run again soon.
    Yield,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Dir {
    /// `opens`: the reading side is TLS (`inbound[0]` opens its records); `seals`: the
    /// writing side is (the last of `outbound` seals them).
    fn new(
        from: SideId,
        prefix: Bytes,
        (inbound, opens): (Vec<Box<dyn Transform>>, bool),
        (outbound, seals): (Vec<Box<dyn Transform>>, bool),
        initial_write: Bytes,
    ) -> Dir {
        let extra =
            (!prefix.is_empty() || !inbound.is_empty() || !outbound.is_empty()).then(|| {
                let layers_only =
                    inbound.len() == usize::from(opens) && outbound.len() == usize::from(seals);
                Box::new(DirExtra {
                    prefix,
                    inbound,
                    outbound,
                    opens,
                    read_size: if layers_only {
                        COPY_READ_PLAIN
                    } else {
                        COPY_READ_TRANSFORMED
                    },
                    finished: false,
                })
            });
        Dir {
            from,
            bulk: false,
            eof: false,
            done: false,
            in_pipe: 0,
            pipe: None,
            // Written (uncounted: pending_plain = 0) before anything else.
            pending: initial_write.to_vec(),
            sent: 0,
            pending_plain: 0,
            total: 0,
            extra,
        }
    }

    /// The most the next read may take: unlimited, or what the limiter grants. `None` when the
    /// limiter has no tokens now (its `wake_at` is then set).
    fn grant(limit: &mut Option<DirLimit<'_>>, want: usize) -> Option<usize> {
        match limit {
            None => Some(usize::MAX),
            Some(l) => l.grant(want),
        }
    }

    /// Gives back the unused part of a grant.
    fn refund(limit: &Option<DirLimit<'_>>, granted: usize, used: usize) {
        if let Some(l) = limit {
            l.limiter.refund(granted.saturating_sub(used));
        }
    }

    fn transforms(&self) -> bool {
        self.extra
            .as_ref()
            .is_some_and(|x| !x.inbound.is_empty() || !x.outbound.is_empty())
    }

    fn count(&mut self, n: u64, counter: Option<&AtomicU64>) {
        if n > 0 {
            self.total += n;
            if let Some(c) = counter {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Gives back what an idle direction does not need: the (empty) pipe, the output buffer.
    fn release(&mut self, cx: &mut CoreCx<'_>) {
        if self.in_pipe == 0
            && let Some(pipe) = self.pipe.take()
        {
            cx.pool.put(pipe, true, cx.stats);
        }
        if self.sent >= self.pending.len() && self.pending.capacity() > 0 {
            self.pending = Vec::new();
            self.sent = 0;
        }
    }

    /// Returns the pipe for good (the pair is closing).
    fn close(&mut self, cx: &mut CoreCx<'_>) {
        if let Some(pipe) = self.pipe.take() {
            cx.pool.put(pipe, self.in_pipe == 0, cx.stats);
        }
        self.in_pipe = 0;
    }

    /// Moves bytes until a syscall would block, the direction ends, or the budget runs out.
    fn pump(
        &mut self,
        src: &mut Conn,
        dst: &mut Conn,
        cx: &mut CoreCx<'_>,
        counter: Option<&AtomicU64>,
        mut limit: Option<DirLimit<'_>>,
    ) -> Result<Turn, RelayError> {
        let (from, to) = (self.from, self.from.other());
        let mut budget = BUDGET;
        if let Some(l) = &mut limit {
            *l.wake_at = None;
        }
        loop {
            if self.done {
                return Ok(Turn::Parked);
            }
            // 1. Whatever was read must be written before reading again.
            if self.in_pipe > 0 {
                if !dst.writable {
                    return Ok(Turn::Parked);
                }
                let pipe = self.pipe.as_ref().expect("bytes in a pipe we hold");
                match sys::splice(pipe.read.as_fd(), dst.fd.as_fd(), self.in_pipe as usize) {
                    Ok(n) => {
                        self.in_pipe -= n as u32;
                        cx.stats.splice_bytes.fetch_add(n as u64, Ordering::Relaxed);
                        self.count(n as u64, counter);
                    }
                    Err(e) if would_block(&e) => {
                        dst.writable = false;
                        return Ok(Turn::Parked);
                    }
                    Err(source) => return Err(RelayError::Write { side: to, source }),
                }
                continue;
            }
            if self.sent < self.pending.len() {
                if !dst.writable {
                    return Ok(Turn::Parked);
                }
                match sys::send(dst.fd.as_fd(), &self.pending[self.sent..]) {
                    Ok(n) => {
                        self.sent += n;
                        cx.stats.copy_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if would_block(&e) => {
                        dst.writable = false;
                        return Ok(Turn::Parked);
                    }
                    Err(source) => return Err(RelayError::Write { side: to, source }),
                }
                if self.sent == self.pending.len() {
                    self.pending.clear();
                    self.sent = 0;
                    let plain = std::mem::take(&mut self.pending_plain);
                    self.count(plain, counter);
                }
                continue;
            }
            // 2. Nothing in flight: end, or read the next chunk.
            if budget == 0 {
                return Ok(Turn::Yield);
            }
            budget -= 1;
            if let Some(extra) = &mut self.extra
                && !extra.prefix.is_empty()
            {
                // Bytes read ahead are bytes read: they take tokens like any read.
                let Some(granted) = Self::grant(&mut limit, extra.prefix.len()) else {
                    self.release(cx);
                    return Ok(Turn::Parked);
                };
                let chunk = extra.prefix.split_to(granted.min(extra.prefix.len()));
                if extra.prefix.is_empty() && extra.inbound.is_empty() && extra.outbound.is_empty()
                {
                    self.extra = None;
                }
                self.forward(
                    Input::Opened(&chunk),
                    dst,
                    cx.plain,
                    cx.wire,
                    cx.stats,
                    counter,
                )?;
                continue;
            }
            if self.eof
                && let Some(extra) = &mut self.extra
                && !extra.finished
            {
                // What closes the stream on the wire (TLS close_notify) before the FIN.
                extra.finished = true;
                let transform_err = |source| RelayError::Transform { side: from, source };
                let mut tail = Vec::new();
                finish_chain(&mut extra.inbound, &mut tail).map_err(transform_err)?;
                let mut wire = Vec::new();
                if !tail.is_empty() {
                    run_chain(&mut extra.outbound, &tail, &mut wire).map_err(transform_err)?;
                }
                finish_chain(&mut extra.outbound, &mut wire).map_err(transform_err)?;
                if !wire.is_empty() {
                    self.pending = wire;
                    self.sent = 0;
                    self.pending_plain = tail.len() as u64;
                }
                continue;
            }
            if self.eof {
                self.done = true;
                self.release(cx);
                sys::shutdown_write(dst.fd.as_fd())
                    .map_err(|source| RelayError::Write { side: to, source })?;
                return Ok(Turn::Parked);
            }
            if !src.readable {
                self.release(cx);
                return Ok(Turn::Parked);
            }
            let len = self.extra.as_ref().map_or(COPY_READ_PLAIN, |x| x.read_size);
            let Some(granted) = Self::grant(&mut limit, len) else {
                self.release(cx);
                return Ok(Turn::Parked);
            };
            // Small messages (request/response traffic) are copied: one recv and one send,
            // and a short read proves the socket drained, which saves the EAGAIN read that
            // a splice would need (and the pipe). A recv that fills the whole buffer makes the
            // direction bulk, and bulk is spliced until a splice moves little again.
            if self.bulk && !self.transforms() && cx.pool.enabled() {
                if self.pipe.is_none() {
                    self.pipe = cx.pool.take(cx.stats);
                }
                if let Some(pipe) = &self.pipe {
                    let r = sys::splice(src.fd.as_fd(), pipe.write.as_fd(), pipe.cap.min(granted));
                    Self::refund(&limit, granted, *r.as_ref().unwrap_or(&0));
                    match r {
                        Ok(0) => self.eof = true,
                        Ok(n) => {
                            // A splice moves at most the pipe's capacity (< 2^31).
                            self.in_pipe = n as u32;
                            if n < SMALL_SPLICE {
                                self.bulk = false;
                            }
                        }
                        Err(e) if would_block(&e) => src.readable = false,
                        Err(source) => return Err(RelayError::Read { side: from, source }),
                    }
                    continue;
                }
            }
            let len = len.min(cx.buf.len()).min(granted);
            let r = sys::recv(src.fd.as_fd(), &mut cx.buf[..len]);
            Self::refund(&limit, granted, *r.as_ref().unwrap_or(&0));
            match r {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    if n == len {
                        self.bulk = true;
                    } else if !src.hup {
                        // A stream socket's recv stops short only when its receive queue is
                        // empty; data arriving from now on raises a new edge.
                        src.readable = false;
                    }
                    let data = &mut cx.buf[..n];
                    self.forward(Input::Wire(data), dst, cx.plain, cx.wire, cx.stats, counter)?;
                }
                Err(e) if would_block(&e) => src.readable = false,
                Err(source) => return Err(RelayError::Read { side: from, source }),
            }
        }
    }

    /// Transforms one chunk and writes as much of it as the socket takes now; the rest waits
    /// in `pending` (the only per-pair buffer, and only while the writer is slow).
    fn forward(
        &mut self,
        data: Input<'_>,
        dst: &mut Conn,
        plain_buf: &mut Vec<u8>,
        wire_buf: &mut Vec<u8>,
        stats: &CoreStats,
        counter: Option<&AtomicU64>,
    ) -> Result<(), RelayError> {
        let (from, to) = (self.from, self.from.other());
        let transform_err = |source| RelayError::Transform { side: from, source };
        let (inbound, outbound) = match &mut self.extra {
            // Opened bytes skip the opener.
            Some(x) if x.opens && matches!(data, Input::Opened(_)) => {
                (&mut x.inbound[1..], &mut x.outbound[..])
            }
            Some(x) => (&mut x.inbound[..], &mut x.outbound[..]),
            None => (&mut [][..], &mut [][..]),
        };
        let plain: &[u8] = match data {
            Input::Wire(data) if inbound.is_empty() => data,
            Input::Opened(data) if inbound.is_empty() => data,
            Input::Wire(data) => {
                plain_buf.clear();
                run_chain_mut(inbound, data, plain_buf).map_err(transform_err)?;
                plain_buf
            }
            Input::Opened(data) => {
                plain_buf.clear();
                run_chain(inbound, data, plain_buf).map_err(transform_err)?;
                plain_buf
            }
        };
        let plain_len = plain.len() as u64;
        let wire: &[u8] = if outbound.is_empty() {
            plain
        } else {
            wire_buf.clear();
            run_chain(outbound, plain, wire_buf).map_err(transform_err)?;
            wire_buf
        };
        let mut off = 0;
        while dst.writable && off < wire.len() {
            match sys::send(dst.fd.as_fd(), &wire[off..]) {
                Ok(n) => {
                    off += n;
                    stats.copy_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if would_block(&e) => dst.writable = false,
                Err(source) => return Err(RelayError::Write { side: to, source }),
            }
        }
        if off == wire.len() {
            self.count(plain_len, counter);
        } else {
            self.pending.extend_from_slice(&wire[off..]);
            self.sent = 0;
            self.pending_plain = plain_len;
        }
        // Keep the core's scratch buffers from staying huge after an expanding transform.
        for buf in [plain_buf, wire_buf] {
            if buf.capacity() > 4 * COPY_READ_PLAIN {
                *buf = Vec::new();
            }
        }
        Ok(())
    }
}

/// A chunk for [`Dir::forward`].
enum Input<'a> {
    /// Read from the socket now: the first transform may work on it in place.
    Wire(&'a mut [u8]),
    /// Read ahead by the control plane, already opened if the side is TLS.
    Opened(&'a [u8]),
}

/// A pair owned by a core: one slot of the core's slab for the pair's whole life, so an idle
/// pair costs `size_of::<PairState>()` plus nothing else (no buffer, no pipe, no allocation
/// for a plain pair without limit; see `idle_pair_slot_is_small`).
pub(crate) struct PairState {
    pub conns: [Conn; 2],
    dirs: [Dir; 2],
    /// Keeps the pair counted in its counters' `conns` until the pair is dropped, and gives
    /// the directions their byte counters.
    live: Option<ConnGuard>,
    limit: Option<Box<Limit>>,
    first_ended: Option<SideId>,
    /// Already in the core's run queue.
    pub queued: bool,
}

/// Records which side ended first: the one that failed, or the first to send EOF.
fn note(
    first: &mut Option<SideId>,
    dir: &Dir,
    r: Result<Turn, RelayError>,
) -> Result<Turn, RelayError> {
    match &r {
        Err(e) => {
            first.get_or_insert(e.side());
        }
        Ok(_) if dir.eof => {
            first.get_or_insert(dir.from);
        }
        Ok(_) => {}
    }
    r
}

/// The result of driving a pair.
pub(crate) enum Drive {
    Running(Turn),
    Finished(RelayOutcome),
}

impl PairState {
    pub fn new(
        a: CoreSide,
        b: CoreSide,
        counters: Option<Arc<Counters>>,
        limiter: Option<Arc<RateLimiter>>,
    ) -> PairState {
        let CoreSide {
            fd: fa,
            prefix: pa,
            inbound: ia,
            outbound: oa,
            initial_write: wa,
            tls: la,
        } = a;
        let CoreSide {
            fd: fb,
            prefix: pb,
            inbound: ib,
            outbound: ob,
            initial_write: wb,
            tls: lb,
        } = b;
        let conn = |fd| Conn {
            fd,
            readable: false,
            writable: false,
            hup: false,
        };
        PairState {
            conns: [conn(fa), conn(fb)],
            dirs: [
                Dir::new(SideId::A, pa, (ia, la), (ob, lb), wb),
                Dir::new(SideId::B, pb, (ib, lb), (oa, la), wa),
            ],
            live: counters.as_ref().map(ConnGuard::new),
            limit: limiter.map(|limiter| {
                Box::new(Limit {
                    limiter,
                    wake_at: [None, None],
                    timer: None,
                })
            }),
            first_ended: None,
            queued: false,
        }
    }

    /// When a direction that ran out of tokens wants to run again (the earlier of the two).
    pub fn wake_at(&self) -> Option<Instant> {
        let l = self.limit.as_ref()?;
        match l.wake_at {
            [Some(x), Some(y)] => Some(x.min(y)),
            [x, y] => x.or(y),
        }
    }

    /// The deadline of the timer the core armed for this pair, if any (only a limited pair
    /// has timers).
    pub fn timer(&self) -> Option<Instant> {
        self.limit.as_ref().and_then(|l| l.timer)
    }

    pub fn set_timer(&mut self, at: Option<Instant>) {
        if let Some(l) = &mut self.limit {
            l.timer = at;
        }
    }

    /// Runs both directions as far as readiness allows.
    pub fn drive(&mut self, cx: &mut CoreCx<'_>) -> Drive {
        let counters = self.live.as_ref().map(ConnGuard::counters);
        let [a, b] = &mut self.conns;
        let [ab_dir, ba_dir] = &mut self.dirs;
        let (ab_limit, ba_limit) = match self.limit.as_deref_mut() {
            None => (None, None),
            Some(Limit {
                limiter,
                wake_at: [ab_wake, ba_wake],
                ..
            }) => {
                let limiter: &RateLimiter = limiter;
                (
                    Some(DirLimit {
                        limiter,
                        wake_at: ab_wake,
                    }),
                    Some(DirLimit {
                        limiter,
                        wake_at: ba_wake,
                    }),
                )
            }
        };
        let first = &mut self.first_ended;
        let ab = ab_dir.pump(a, b, cx, counters.map(|c| &c.a_to_b), ab_limit);
        let ab = note(first, ab_dir, ab);
        let turns = match ab {
            Err(e) => Err(e),
            Ok(t1) => {
                let r = ba_dir.pump(b, a, cx, counters.map(|c| &c.b_to_a), ba_limit);
                note(first, ba_dir, r).map(|t2| (t1, t2))
            }
        };
        match turns {
            Err(error) => Drive::Finished(self.finish(cx, Some(error))),
            Ok((t1, t2)) => {
                if self.dirs[0].done && self.dirs[1].done {
                    Drive::Finished(self.finish(cx, None))
                } else if t1 == Turn::Yield || t2 == Turn::Yield {
                    Drive::Running(Turn::Yield)
                } else {
                    Drive::Running(Turn::Parked)
                }
            }
        }
    }

    fn finish(&mut self, cx: &mut CoreCx<'_>, error: Option<RelayError>) -> RelayOutcome {
        for d in &mut self.dirs {
            d.close(cx);
        }
        RelayOutcome {
            a_to_b: self.dirs[0].total,
            b_to_a: self.dirs[1].total,
            first_ended: self.first_ended.unwrap_or(SideId::A),
            error,
        }
    }

    /// Called when the pair is torn down without finishing (core shutting down).
    pub fn abort(&mut self, cx: &mut CoreCx<'_>) {
        for d in &mut self.dirs {
            d.close(cx);
        }
    }
}
