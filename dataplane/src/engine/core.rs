//! A core thread: an event loop (epoll or io_uring readiness) over the pairs it owns, with a
//! timer heap for pairs throttled by a rate limiter (the wait for readiness ends at the
//! earliest timer: epoll's timeout, or io_uring_enter's EXT_ARG timeout).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::pair::{COPY_READ_PLAIN, CoreCx, Drive, PairState, Turn};
use super::pipes::PipePool;
use super::{CoreSide, EngineConfig, EngineStats};
use crate::limit::RateLimiter;
use crate::relay::Counters;
use crate::sys;
use crate::sys::uring::{Completion, Ring};

/// A pair on its way to a core.
pub(crate) struct Incoming {
    pub a: CoreSide,
    pub b: CoreSide,
    pub counters: Option<Arc<Counters>>,
    pub limiter: Option<Arc<RateLimiter>>,
}

/// Per-core counters, summed by `Engine::stats`.
#[derive(Debug, Default)]
pub(crate) struct CoreStats {
    pub pairs_started: AtomicU64,
    pub pairs_failed: AtomicU64,
    pub splice_bytes: AtomicU64,
    pub copy_bytes: AtomicU64,
    pub pipe_pool_misses: AtomicU64,
    pub pipes_created: AtomicU64,
    pub pipe_errors: AtomicU64,
    pub pipes_in_use: AtomicU64,
}

impl CoreStats {
    pub fn add_to(&self, s: &mut EngineStats) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.pairs_started += l(&self.pairs_started);
        s.pairs_failed += l(&self.pairs_failed);
        s.splice_bytes += l(&self.splice_bytes);
        s.copy_bytes += l(&self.copy_bytes);
        s.pipe_pool_misses += l(&self.pipe_pool_misses);
        s.pipes_created += l(&self.pipes_created);
        s.pipe_errors += l(&self.pipe_errors);
        s.pipes_in_use += l(&self.pipes_in_use);
    }
}

/// What the engine handle and a core share.
pub(crate) struct CoreShared {
    pub wake: OwnedFd,
    /// Pairs sent but not yet picked up.
    pub queued: AtomicUsize,
    /// Pairs the core owns.
    pub live: AtomicUsize,
    pub stats: CoreStats,
}

impl CoreShared {
    pub fn new(wake: OwnedFd) -> CoreShared {
        CoreShared {
            wake,
            queued: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            stats: CoreStats::default(),
        }
    }

    pub fn load(&self) -> usize {
        self.queued.load(Ordering::Relaxed) + self.live.load(Ordering::Relaxed)
    }
}

/// Event tokens: `gen:30 | slot:32 | side:1`, and one reserved value. A poll removal
/// completes with its target's token plus `REMOVAL` (bit 63, which no token sets).
const WAKE: u64 = u64::MAX;
const REMOVAL: u64 = 1 << 63;
const GEN_MASK: u32 = (1 << 30) - 1;

fn token(slot: u32, generation: u32, side: usize) -> u64 {
    (u64::from(generation & GEN_MASK) << 33) | (u64::from(slot) << 1) | side as u64
}

fn untoken(t: u64) -> (u32, u32, usize) {
    (
        (t >> 1) as u32,
        (t >> 33) as u32 & GEN_MASK,
        (t & 1) as usize,
    )
}

/// Edge-triggered interest in everything a relay needs.
const INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
const READ_BITS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const HUP_BITS: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const WRITE_BITS: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// A readiness report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub token: u64,
    pub events: u32,
    /// io_uring only: the multishot poll ended and must be armed again.
    pub rearm: bool,
}

/// The readiness source of a core.
pub(crate) enum Poller {
    Epoll {
        epoll: sys::Epoll,
        events: Vec<sys::Event>,
    },
    Uring {
        ring: Box<Ring>,
        completions: Vec<Completion>,
    },
}

impl Poller {
    pub fn epoll() -> io::Result<Poller> {
        Ok(Poller::Epoll {
            epoll: sys::Epoll::new()?,
            events: Vec::with_capacity(256),
        })
    }

    pub fn uring() -> io::Result<Poller> {
        let mut ring = Ring::new(1024)?;
        if !ring.supports_engine_ops()?
            || !ring.supports_multishot_poll()?
            || !ring.supports_wait_timeout()
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        }
        Ok(Poller::Uring {
            ring: Box::new(ring),
            completions: Vec::with_capacity(256),
        })
    }

    fn register(&mut self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        match self {
            Poller::Epoll { epoll, .. } => epoll.add(fd, INTEREST, token),
            Poller::Uring { ring, .. } => ring.push_poll(fd, INTEREST, true, token),
        }
    }

    /// Stops reporting `token`'s fd. Must happen before the fd is closed with io_uring: an
    /// armed poll holds a reference to the socket, which would stay open (no FIN, no RST)
    /// until the poll goes away. A removal answered EALREADY is repeated (see `wait`).
    fn deregister(&mut self, token: u64) -> io::Result<()> {
        match self {
            // Closing the fd removes it from the epoll set (the engine never dups them).
            Poller::Epoll { .. } => Ok(()),
            Poller::Uring { ring, .. } => ring.push_poll_remove(token, token | REMOVAL),
        }
    }

    /// Waits for readiness up to `timeout` (`None`: no limit; zero: only collects what is
    /// there).
    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<()> {
        out.clear();
        match self {
            Poller::Epoll { epoll, events } => {
                // epoll counts milliseconds: round up, so a timer never wakes us early and
                // spins.
                let timeout = timeout.map(|t| {
                    let ms = t.as_nanos().div_ceil(1_000_000);
                    Duration::from_millis(ms.min(u64::MAX as u128) as u64)
                });
                epoll.wait(events, timeout)?;
                out.extend(events.iter().map(|e| Ready {
                    token: e.token,
                    events: e.events,
                    rearm: false,
                }));
            }
            Poller::Uring { ring, completions } => {
                match timeout {
                    None => ring.submit_and_wait(1)?,
                    Some(t) if t.is_zero() => ring.submit_and_wait(0)?,
                    Some(t) => ring.submit_and_wait_timeout(1, t)?,
                }
                ring.reap(completions);
                for c in completions.iter() {
                    if c.user_data != WAKE && c.user_data & REMOVAL != 0 {
                        // EALREADY: the poll was posting an event just then, and a multishot
                        // poll stays armed (holding its socket open) after such a removal:
                        // ask again, which the next submission does once that event is out.
                        if c.result == -libc::EALREADY {
                            let target = c.user_data & !REMOVAL;
                            ring.push_poll_remove(target, c.user_data)?;
                        }
                        continue;
                    }
                    if c.result == -libc::ECANCELED {
                        continue;
                    }
                    // A failed poll (e.g. -ENOMEM) is reported as "try everything": the
                    // syscalls will tell what is wrong.
                    let events = if c.result < 0 {
                        READ_BITS | WRITE_BITS
                    } else {
                        c.result as u32
                    };
                    out.push(Ready {
                        token: c.user_data,
                        events,
                        rearm: !c.more,
                    });
                }
            }
        }
        Ok(())
    }

    /// Submits queued requests (poll removals) without waiting.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Poller::Epoll { .. } => Ok(()),
            Poller::Uring { ring, .. } => ring.submit_and_wait(0),
        }
    }
}

struct Slot {
    generation: u32,
    pair: Option<PairState>,
}

/// Slots per chunk of a core's slab.
const CHUNK: usize = 64;

/// A core's slots, in fixed chunks of [`CHUNK`]: growing never moves the pairs already there
/// nor doubles the allocation, so a core holds at most one partly used chunk beyond its
/// busiest moment (a `Vec<Slot>` kept up to twice the slots needed, and its reallocations
/// raised glibc's mmap and trim thresholds).
#[derive(Default)]
struct Slots {
    chunks: Vec<Box<[Slot]>>,
    len: usize,
}

impl Slots {
    fn len(&self) -> usize {
        self.len
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut Slot> {
        if i >= self.len {
            return None;
        }
        Some(&mut self.chunks[i / CHUNK][i % CHUNK])
    }

    /// Adds an empty slot; returns its index.
    fn push(&mut self) -> usize {
        if self.len == self.chunks.len() * CHUNK {
            let chunk = (0..CHUNK)
                .map(|_| Slot {
                    generation: 0,
                    pair: None,
                })
                .collect();
            self.chunks.push(chunk);
        }
        self.len += 1;
        self.len - 1
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;

    fn index(&self, i: usize) -> &Slot {
        assert!(i < self.len, "slot {i} out of {}", self.len);
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    fn index_mut(&mut self, i: usize) -> &mut Slot {
        self.get_mut(i)
            .unwrap_or_else(|| panic!("slot {i} out of range"))
    }
}

fn live_pair(slots: &mut Slots, slot: u32, generation: u32) -> Option<&mut PairState> {
    let s = slots.get_mut(slot as usize)?;
    if s.generation & GEN_MASK != generation {
        return None;
    }
    s.pair.as_mut()
}

pub(crate) struct Core {
    poller: Poller,
    rx: mpsc::Receiver<Incoming>,
    shared: Arc<CoreShared>,
    pool: PipePool,
    slots: Slots,
    free: Vec<u32>,
    run_queue: Vec<(u32, u32)>,
    /// Throttled pairs: (deadline, slot, generation), earliest first.
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    buf: Box<[u8]>,
    plain: Vec<u8>,
    wire: Vec<u8>,
    disconnected: bool,
}

impl Core {
    pub fn new(
        poller: Poller,
        rx: mpsc::Receiver<Incoming>,
        shared: Arc<CoreShared>,
        cfg: &EngineConfig,
    ) -> Core {
        Core {
            poller,
            rx,
            shared,
            pool: PipePool::new(cfg.pipe_pool_size, cfg.pipe_size),
            slots: Slots::default(),
            free: Vec::new(),
            run_queue: Vec::new(),
            timers: BinaryHeap::new(),
            buf: vec![0u8; COPY_READ_PLAIN].into_boxed_slice(),
            plain: Vec::new(),
            wire: Vec::new(),
            disconnected: false,
        }
    }

    pub fn run(mut self) {
        if let Err(e) = sys::block_sigpipe() {
            tracing::warn!(error = %e, "dataplane: cannot block SIGPIPE on a core thread");
        }
        if let Err(e) = self.main_loop() {
            tracing::error!(error = %e, "dataplane: core thread failed; its pairs are closed");
        }
        // Close whatever is left.
        for i in 0..self.slots.len() {
            if let Some(mut pair) = self.slots[i].pair.take() {
                let mut cx = CoreCx {
                    pool: &mut self.pool,
                    stats: &self.shared.stats,
                    buf: &mut self.buf,
                    plain: &mut self.plain,
                    wire: &mut self.wire,
                };
                pair.abort(&mut cx);
            }
        }
    }

    fn main_loop(&mut self) -> io::Result<()> {
        self.poller.register(self.shared.wake.as_fd(), WAKE)?;
        let mut ready = Vec::with_capacity(256);
        loop {
            let timeout = if !self.run_queue.is_empty() {
                Some(Duration::ZERO)
            } else {
                self.timers
                    .peek()
                    .map(|Reverse((at, _, _))| at.saturating_duration_since(Instant::now()))
            };
            self.poller.wait(timeout, &mut ready)?;
            for r in &ready {
                if r.token == WAKE {
                    if r.rearm {
                        self.poller.register(self.shared.wake.as_fd(), WAKE)?;
                    }
                    sys::eventfd_drain(self.shared.wake.as_fd())?;
                    self.accept_new();
                    continue;
                }
                let (slot, generation, side) = untoken(r.token);
                let Some(pair) = live_pair(&mut self.slots, slot, generation) else {
                    continue; // a closed pair's late event
                };
                let conn = &mut pair.conns[side];
                if r.events & READ_BITS != 0 {
                    conn.readable = true;
                }
                if r.events & HUP_BITS != 0 {
                    conn.hup = true;
                }
                if r.events & WRITE_BITS != 0 {
                    conn.writable = true;
                }
                if r.rearm {
                    self.poller.register(conn.fd.as_fd(), r.token)?;
                }
                self.drive(slot, generation);
            }
            self.fire_timers();
            let queue = std::mem::take(&mut self.run_queue);
            for (slot, generation) in queue {
                if let Some(pair) = live_pair(&mut self.slots, slot, generation) {
                    pair.queued = false;
                    self.drive(slot, generation);
                }
            }
            if self.disconnected && self.shared.live.load(Ordering::Relaxed) == 0 {
                self.poller.flush()?;
                return Ok(());
            }
        }
    }

    /// Drives the pairs whose timer is due.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, slot, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(pair) = live_pair(&mut self.slots, slot, generation) else {
                continue; // the pair is gone
            };
            if pair.timer() != Some(at) {
                continue; // superseded by an earlier timer
            }
            pair.set_timer(None);
            self.drive(slot, generation);
        }
    }

    fn accept_new(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(incoming) => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    self.add(incoming);
                }
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.disconnected = true;
                    return;
                }
            }
        }
    }

    fn add(&mut self, incoming: Incoming) {
        let Incoming {
            a,
            b,
            counters,
            limiter,
        } = incoming;
        let pair = PairState::new(a, b, counters, limiter);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => self.slots.push() as u32,
        };
        let generation = self.slots[slot as usize].generation & GEN_MASK;
        for side in 0..2 {
            if let Err(e) = self
                .poller
                .register(pair.conns[side].fd.as_fd(), token(slot, generation, side))
            {
                tracing::warn!(error = %e, "dataplane: cannot watch a socket; pair closed");
                if side == 1 {
                    let _ = self.poller.deregister(token(slot, generation, 0));
                    let _ = self.poller.flush();
                }
                self.free.push(slot);
                return;
            }
        }
        self.slots[slot as usize].pair = Some(pair);
        self.shared.live.fetch_add(1, Ordering::Relaxed);
        self.shared
            .stats
            .pairs_started
            .fetch_add(1, Ordering::Relaxed);
        // Readiness of both sockets arrives as the first events of their registration.
    }

    fn drive(&mut self, slot: u32, generation: u32) {
        let s = &mut self.slots[slot as usize];
        let pair = s.pair.as_mut().expect("live pair");
        let mut cx = CoreCx {
            pool: &mut self.pool,
            stats: &self.shared.stats,
            buf: &mut self.buf,
            plain: &mut self.plain,
            wire: &mut self.wire,
        };
        match pair.drive(&mut cx) {
            Drive::Running(turn) => {
                if turn == Turn::Yield && !pair.queued {
                    pair.queued = true;
                    self.run_queue.push((slot, generation));
                }
                // Out of tokens: wake the pair when enough have accrued (one timer per pair,
                // the earliest wins).
                if let Some(at) = pair.wake_at()
                    && pair.timer().is_none_or(|t| at < t)
                {
                    pair.set_timer(Some(at));
                    self.timers.push(Reverse((at, slot, generation)));
                }
            }
            Drive::Finished(outcome) => {
                if outcome.error.is_some() {
                    self.shared
                        .stats
                        .pairs_failed
                        .fetch_add(1, Ordering::Relaxed);
                }
                outcome.log();
                let pair = s.pair.take().expect("live pair");
                s.generation = s.generation.wrapping_add(1);
                for side in 0..2 {
                    if let Err(e) = self.poller.deregister(token(slot, generation, side)) {
                        tracing::warn!(error = %e, "dataplane: cannot stop watching a socket");
                    }
                }
                if let Err(e) = self.poller.flush() {
                    tracing::warn!(error = %e, "dataplane: cannot submit poll removals");
                }
                // Dropping the pair closes both sockets.
                drop(pair);
                self.free.push(slot);
                self.shared.live.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_collide_with_reserved_values() {
        for (slot, generation, side) in [(0, 0, 0), (1, 2, 1), (u32::MAX >> 1, GEN_MASK, 1)] {
            let t = token(slot, generation, side);
            assert_ne!(t, WAKE);
            assert_eq!(t & REMOVAL, 0);
            assert_eq!(untoken(t), (slot, generation, side));
        }
        // Generations wrap within the mask.
        assert_eq!(untoken(token(3, GEN_MASK + 1, 0)).1, 0);
    }

    /// An idle pair costs its slab slot and nothing else: the slot stays small. It was 432
    /// bytes before the rare parts (read-ahead bytes, transforms, rate limit) were boxed,
    /// which with two pairs per tunneled connection (frps and frpc) was a third of the idle
    /// RSS per connection (`dataplane/README.md`, "Idle memory per pair").
    #[test]
    fn idle_pair_slot_is_small() {
        let size = std::mem::size_of::<Slot>();
        eprintln!("slot: {size} bytes");
        assert!(size <= 224, "a pair's slab slot is {size} bytes");
    }
}
