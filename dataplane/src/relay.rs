//! The hand-off API between control plane and data plane, and the relay loop.
//!
//! # Semantics of a relayed pair
//! - Two directions, a→b and b→a. Each reads from one endpoint (starting with that side's
//!   `prefix`), runs the bytes through the reading side's `inbound` chain and then the writing
//!   side's `outbound` chain, and writes all of the result before reading again
//!   (backpressure: one chunk in flight per direction, never more).
//! - Clean EOF from a side half-closes the other endpoint (`shutdown()` of its write half) and
//!   the other direction keeps running until it ends too; then both endpoints are closed.
//!   This is deliberately kinder than frp's `io.Join`, which closes both on the first EOF
//!   (spec §8 item 8): a Go peer still sees the same bytes, and half-closing clients (e.g.
//!   `nc -N`, HTTP/1.0 request-then-shutdown) keep working.
//! - Any error (read, write, [`TransformError`]) closes both endpoints at once; a
//!   [`ChunkRead`] endpoint (a yamux stream) is aborted ([`ChunkRead::abort`], RST), so the
//!   far end learns of the failure instead of seeing a half-close.
//! - An idle direction holds no buffer: reads go into a per-thread scratch buffer and are
//!   written at once; only bytes the writer does not take right away are copied into a
//!   per-direction buffer, which is freed once written.
//! - A side's `initial_write` goes to that endpoint first, untransformed, before anything
//!   relayed (a PROXY protocol header for the local service).
//! - With a [`RateLimiter`] on the pair, each direction takes tokens before every read and
//!   reads at most what it was granted (one limiter, both directions); out of tokens, the
//!   direction sleeps until enough have accrued.
//!
//! [`relay`] runs a pair as one future on a tokio runtime. The [`Engine`] uses it for pairs with
//! a `Stream` side and for [`EngineKind::Tokio`](crate::EngineKind::Tokio); plain TCP pairs run
//! on the engine's core threads (see [`crate::engine`]) with the same semantics.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::limit::{Grant, RateLimiter};
use crate::transform::{Transform, TransformError, run_chain};

/// Any byte stream the relay can drive: a TLS stream, a yamux stream, a test duplex.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The stream as `Any`, for a caller that looks for a type it can do more with (a TLS
    /// stream over a bare TCP socket becomes an [`Endpoint::Tls`]).
    fn as_any(&self) -> &dyn std::any::Any;
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// A TLS session over a bare TCP socket, which a core can carry as the socket and
/// two transforms instead of leaving the pair on tokio.
pub trait SplitTls: AsyncStream {
    /// Takes the stream apart (synchronously: what it still owes the socket comes along).
    fn into_parts(self: Box<Self>) -> TlsParts;
}

/// A TLS stream taken apart: over its TCP socket for a core ([`SplitTls`]), or over any
/// transport for a caller that moves the records itself.
pub struct TlsParts<IO = tokio::net::TcpStream> {
    /// The transport.
    pub io: IO,
    /// Plaintext the layer already opened and nobody read yet: it comes after the side's
    /// `prefix` and before anything `open` yields.
    pub opened: Bytes,
    /// Wire bytes the layer owes the socket (a server's session tickets, a KeyUpdate
    /// answer): written before anything `seal` makes.
    pub owed: Bytes,
    /// Wire bytes → plaintext (decrypts records; works in place on the core's buffer).
    pub open: Box<dyn Transform>,
    /// Plaintext → wire bytes (its `finish` closes the layer: TLS close_notify).
    pub seal: Box<dyn Transform>,
}

/// What a [`ChunkRead`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Bytes as the reader held them (not copied); empty is EOF.
    Bytes(Bytes),
    /// This many bytes were copied into the caller's buffer; 0 is EOF.
    Copied(usize),
}

/// A read half that can hand out the bytes it has buffered without copying them (a yamux
/// stream's receive buffer): the relay writes them straight to the other side.
pub trait ChunkRead: Send + Unpin + 'static {
    /// At most `buf.len()` (> 0) buffered bytes: handed out as held, or copied into `buf`
    /// (the reader chooses: e.g. small pieces are better joined by a copy). `Pending` (with
    /// the waker registered) while nothing is buffered.
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<Chunk>>;

    /// The task this reader's bytes come from, if it will run relays itself (see
    /// [`RelayHost`]); `None` (the default): the relay gets a task of its own.
    fn relay_host(&self) -> Option<Arc<dyn RelayHost>> {
        None
    }

    /// The relay is ending on an error: abort the stream (a yamux stream sends RST) rather
    /// than close it normally, so that the peer ends its side at once instead of reading a
    /// half-close. The default does nothing: dropping the halves closes the stream.
    fn abort(&mut self) {}
}

/// A relay as a future: what [`RelayHost::host`] runs.
pub type HostedRelay = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A task that can run relays inside itself, e.g. the task driving a yamux session: the
/// relays of its streams then move bytes between the session and their sockets without a
/// wake-up crossing tasks (or threads) on every chunk, and the frames they queue are written
/// in the same turn.
pub trait RelayHost: Send + Sync {
    /// Takes `relay` to run it to completion, or hands it back when the host has ended (the
    /// caller then spawns it on its own).
    fn host(&self, relay: HostedRelay) -> Result<(), HostedRelay>;
}

/// The write half that goes with a [`ChunkRead`].
pub trait AsyncWriteHalf: AsyncWrite + Send + Unpin + 'static {
    /// A writer with a send queue of its own (a tcpMux stream) reads at most `max` bytes with
    /// `read` straight into that queue, saving the relay's copy through its buffer; `read`
    /// gets the room and says how many bytes it put there (0: its end). `None`: this writer
    /// has no such queue, or cannot take bytes now (the relay then reads into its buffer and
    /// writes as usual, which also waits for the writer).
    fn poll_write_from(
        &mut self,
        _cx: &mut Context<'_>,
        _max: usize,
        _read: &mut ReadInto<'_>,
    ) -> Option<Filled> {
        None
    }
}

/// A read from the other side of a relay into a writer's queue, for
/// [`AsyncWriteHalf::poll_write_from`].
pub type ReadInto<'a> =
    dyn FnMut(&mut Context<'_>, &mut dyn BufMut) -> Poll<io::Result<usize>> + 'a;

/// What [`AsyncWriteHalf::poll_write_from`] did.
#[derive(Debug)]
pub enum Filled {
    /// This many bytes were read straight into the writer's queue (more than 0).
    Moved(usize),
    /// The reader is at its end; nothing was queued.
    Eof,
    /// The reader has nothing now (the task is woken when it has).
    ReaderPending,
    ReadError(io::Error),
}

/// One end of a pair.
pub enum Endpoint {
    /// A plain TCP socket: the engine may move its bytes without copying them (splice).
    Tcp(tokio::net::TcpStream),
    /// Anything else (TLS, yamux stream, …): bytes are copied.
    Stream(Box<dyn AsyncStream>),
    /// Independently owned halves, the read half handing out its buffered bytes (a yamux
    /// stream): one copy less than [`Endpoint::Stream`], and no lock between the halves.
    Halves {
        read: Box<dyn ChunkRead>,
        write: Box<dyn AsyncWriteHalf>,
    },
    /// TLS over a bare TCP socket: carried by a core when the other side can be (its records
    /// opened and sealed there), else relayed on tokio like [`Endpoint::Stream`].
    Tls(Box<dyn SplitTls>),
}

/// One side of a pair: the endpoint, the bytes already read from it, and the transforms that
/// apply to bytes read from it (`inbound`, e.g. decrypt then decompress) and to bytes written
/// to it (`outbound`, e.g. compress then encrypt).
pub struct Side {
    pub endpoint: Endpoint,
    /// Bytes the control plane already read from this endpoint, still in wire form (they go
    /// through `inbound` first, like any other bytes read from it).
    pub prefix: Bytes,
    pub inbound: Vec<Box<dyn Transform>>,
    pub outbound: Vec<Box<dyn Transform>>,
    /// Wire bytes written to this endpoint before anything relayed to it, untransformed and
    /// not counted (e.g. the PROXY protocol header frpc sends to the local service).
    pub initial_write: Bytes,
}

impl Side {
    /// A side with no pending bytes and no transforms.
    pub fn plain(endpoint: Endpoint) -> Self {
        Side {
            endpoint,
            prefix: Bytes::new(),
            inbound: Vec::new(),
            outbound: Vec::new(),
            initial_write: Bytes::new(),
        }
    }
}

/// Byte counters shared with the control plane (metrics, dashboard). Updated with relaxed
/// atomics once per chunk, never per byte.
#[derive(Debug, Default)]
pub struct Counters {
    /// Plaintext bytes read from side `a` and delivered to side `b`.
    pub a_to_b: AtomicU64,
    /// Plaintext bytes read from side `b` and delivered to side `a`.
    pub b_to_a: AtomicU64,
    /// Pairs using these counters that are being relayed right now (frp's "current
    /// connections"); maintained by [`ConnGuard`].
    pub conns: AtomicU64,
}

/// Counts one pair in [`Counters::conns`] from its start until it is dropped, whichever
/// driver (core thread or tokio task) runs it.
pub(crate) struct ConnGuard(Arc<Counters>);

impl ConnGuard {
    pub(crate) fn new(counters: &Arc<Counters>) -> ConnGuard {
        counters.conns.fetch_add(1, Ordering::Relaxed);
        ConnGuard(counters.clone())
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.0
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A matched pair of endpoints handed to the data plane.
pub struct Pair {
    pub a: Side,
    pub b: Side,
    pub counters: Option<Arc<Counters>>,
    /// The proxy's bandwidth limiter, shared by all its pairs and both directions; bytes are
    /// counted as read from each side (before its inbound chain).
    pub limiter: Option<Arc<RateLimiter>>,
}

pub use crate::engine::{Engine, EngineConfig};

/// Names a side of a [`Pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideId {
    A,
    B,
}

impl SideId {
    pub(crate) fn other(self) -> SideId {
        match self {
            SideId::A => SideId::B,
            SideId::B => SideId::A,
        }
    }
}

impl fmt::Display for SideId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SideId::A => "a",
            SideId::B => "b",
        })
    }
}

/// Why a relay closed both endpoints early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("read from side {side} failed: {source}")]
    Read { side: SideId, source: io::Error },
    #[error("write to side {side} failed: {source}")]
    Write { side: SideId, source: io::Error },
    #[error("bytes read from side {side} rejected by a transform: {source}")]
    Transform {
        side: SideId,
        source: TransformError,
    },
}

impl RelayError {
    /// The side whose failure (or whose bad bytes) ended the relay.
    pub fn side(&self) -> SideId {
        match self {
            RelayError::Read { side, .. }
            | RelayError::Write { side, .. }
            | RelayError::Transform { side, .. } => *side,
        }
    }
}

/// How a relay ended.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Plaintext bytes (after side a's inbound transforms) delivered to side b.
    pub a_to_b: u64,
    /// Plaintext bytes (after side b's inbound transforms) delivered to side a.
    pub b_to_a: u64,
    /// The side that ended first: the one that sent EOF first, or the one that failed.
    pub first_ended: SideId,
    /// The error that closed both endpoints, if any; `None` means both directions ended
    /// with a clean EOF.
    pub error: Option<RelayError>,
}

impl RelayOutcome {
    /// Logs how a pair ended (debug level).
    pub(crate) fn log(&self) {
        match &self.error {
            None => tracing::debug!(
                a_to_b = self.a_to_b,
                b_to_a = self.b_to_a,
                first_ended = %self.first_ended,
                "relay finished"
            ),
            Some(error) => tracing::debug!(
                a_to_b = self.a_to_b,
                b_to_a = self.b_to_a,
                %error,
                "relay closed on error"
            ),
        }
    }
}

/// With a rate limiter: the grant an idle direction waits for data with (a read that fills it
/// makes the direction busy, and busy directions ask for full reads).
const IDLE_READ: usize = 2 * 1024;
/// Read size of a direction without transforms (into the thread's scratch buffer).
const BUSY_READ_PLAIN: usize = 64 * 1024;
/// Read size of a direction with transforms: Go frp's own copy size, and it caps how much
/// a decompressing chain can expand one read into.
const BUSY_READ_TRANSFORMED: usize = 16 * 1024;
/// Transform output buffers above this capacity are released when a direction goes idle.
const KEEP_WHEN_IDLE: usize = 4 * 1024;

/// Relays `pair` until both directions end (see the module docs for the semantics) and reports
/// how it went. Dropping the future closes both endpoints.
pub fn relay(pair: Pair) -> Relay {
    let Pair {
        a,
        b,
        counters,
        limiter,
    } = pair;
    let live = counters.as_ref().map(ConnGuard::new);
    let (a_read, a_write) = split(a.endpoint);
    let (b_read, b_write) = split(b.endpoint);
    let a_to_b = Direction::new(
        SideId::A,
        a_read,
        a.prefix,
        b.initial_write,
        limiter.clone(),
        Forwarder::new(SideId::A, b_write, a.inbound, b.outbound, counters.clone()),
    );
    let b_to_a = Direction::new(
        SideId::B,
        b_read,
        b.prefix,
        a.initial_write,
        limiter,
        Forwarder::new(SideId::B, a_write, b.inbound, a.outbound, counters),
    );
    Relay {
        dirs: [a_to_b, b_to_a],
        ends: [None, None],
        _live: live,
    }
}

/// The future of a relayed pair (see [`relay`]): both directions inline, one allocation per
/// pair when spawned, and no read buffer while idle.
///
/// Its size sets its task's: a tokio task cell is the future plus ~104 bytes, rounded up to
/// 128 (x86_64). Up to 408 bytes a relay on tokio (a TLS work connection without tcpMux)
/// takes a 512-byte cell, past it 640.
pub struct Relay {
    dirs: [Direction; 2],
    ends: [Option<DirectionEnd>; 2],
    /// Keeps the pair counted in `counters.conns` until the relay is dropped.
    _live: Option<ConnGuard>,
}

impl Future for Relay {
    type Output = RelayOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayOutcome> {
        let this = self.get_mut();
        for i in 0..2 {
            if this.ends[i].is_none()
                && let Poll::Ready(result) = this.dirs[i].poll_run(cx)
            {
                let first = this.ends.iter().all(Option::is_none);
                this.ends[i] = Some(DirectionEnd {
                    ended_by: match &result {
                        Ok(()) => this.dirs[i].from,
                        Err(error) => error.side(),
                    },
                    first,
                    error: result.err().map(Box::new),
                });
            }
        }
        let failed = this
            .ends
            .iter()
            .any(|end| end.as_ref().is_some_and(|e| e.error.is_some()));
        if !failed && this.ends.iter().any(Option::is_none) {
            return Poll::Pending;
        }
        // Whatever direction is still running is dropped with the relay and its endpoint
        // halves: on an error that closes both ends at once (streams that can say "abort"
        // are told so first); otherwise both are already done.
        if failed {
            for dir in &mut this.dirs {
                if let ReadEnd::Chunk(r) = &mut dir.reader {
                    r.abort();
                }
            }
        }
        let ends = std::mem::take(&mut this.ends);
        // A direction's bytes: what it delivered by the time it ended (or the relay did).
        let [a_to_b, b_to_a] = [0, 1].map(|i| {
            if ends[i].is_some() {
                this.dirs[i].fwd.total
            } else {
                0
            }
        });
        let first_ended = ends
            .iter()
            .flatten()
            .find(|e| e.first)
            .map_or(SideId::A, |e| e.ended_by);
        let error = ends
            .into_iter()
            .flatten()
            .find_map(|end| end.error)
            .map(|e| *e);
        Poll::Ready(RelayOutcome {
            a_to_b,
            b_to_a,
            first_ended,
            error,
        })
    }
}

/// The read half of an endpoint. Plain TCP is split without a lock.
enum ReadEnd {
    Tcp(OwnedReadHalf),
    Stream(ReadHalf<Box<dyn AsyncStream>>),
    Chunk(Box<dyn ChunkRead>),
}

/// The write half of an endpoint.
enum WriteEnd {
    Tcp(OwnedWriteHalf),
    Stream(WriteHalf<Box<dyn AsyncStream>>),
    Half(Box<dyn AsyncWriteHalf>),
}

fn split(endpoint: Endpoint) -> (ReadEnd, WriteEnd) {
    match endpoint {
        Endpoint::Tcp(tcp) => {
            let (r, w) = tcp.into_split();
            (ReadEnd::Tcp(r), WriteEnd::Tcp(w))
        }
        Endpoint::Stream(stream) => {
            let (r, w) = tokio::io::split(stream);
            (ReadEnd::Stream(r), WriteEnd::Stream(w))
        }
        Endpoint::Halves { read, write } => (ReadEnd::Chunk(read), WriteEnd::Half(write)),
        Endpoint::Tls(stream) => split(Endpoint::Stream(stream)),
    }
}

impl AsyncRead for ReadEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadEnd::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadEnd::Stream(r) => Pin::new(r).poll_read(cx, buf),
            ReadEnd::Chunk(_) if buf.remaining() == 0 => Poll::Ready(Ok(())),
            ReadEnd::Chunk(r) => {
                let dst = buf.initialize_unfilled();
                match r.poll_read_chunk(cx, dst) {
                    Poll::Ready(Ok(Chunk::Bytes(b))) => {
                        dst[..b.len()].copy_from_slice(&b);
                        buf.advance(b.len());
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Ok(Chunk::Copied(n))) => {
                        buf.advance(n);
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for WriteEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteEnd::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteEnd::Stream(w) => Pin::new(w).poll_write(cx, buf),
            WriteEnd::Half(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteEnd::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteEnd::Stream(w) => Pin::new(w).poll_flush(cx),
            WriteEnd::Half(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteEnd::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteEnd::Stream(w) => Pin::new(w).poll_shutdown(cx),
            WriteEnd::Half(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// How one direction ended.
struct DirectionEnd {
    ended_by: SideId,
    /// It ended before the other direction.
    first: bool,
    /// Boxed: this sits in every relay's state.
    error: Option<Box<RelayError>>,
}

/// One direction of a pair: reads from `from`, forwards to the other side. A hand-written
/// state machine (not an async fn), so that its idle state is just this struct.
struct Direction {
    from: SideId,
    reader: ReadEnd,
    limiter: Option<Arc<RateLimiter>>,
    fwd: Forwarder,
    stage: Stage,
    /// The last read filled its grant (with a limiter: ask for full reads).
    busy: bool,
}

/// What a direction writes before relaying: the writing side's `initial_write`, then the
/// reading side's `prefix` (boxed: most pairs have neither, and a pair lives long).
struct Opening {
    initial: Bytes,
    /// Bytes the reading side's message reader read ahead (what is left of them): charged to
    /// the limiter like a read, then forwarded.
    prefix: Bytes,
    /// Out of tokens for the prefix until this fires.
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
}

enum Stage {
    /// The opening, if any, not written yet.
    Start(Option<Box<Opening>>),
    /// Relaying.
    Pump,
    /// Out of tokens until the timer fires.
    Throttled(Pin<Box<tokio::time::Sleep>>),
    /// EOF read: half-closing the writer.
    Finish,
}

impl Direction {
    fn new(
        from: SideId,
        reader: ReadEnd,
        prefix: Bytes,
        initial: Bytes,
        limiter: Option<Arc<RateLimiter>>,
        fwd: Forwarder,
    ) -> Direction {
        let opening = (!initial.is_empty() || !prefix.is_empty()).then(|| {
            Box::new(Opening {
                initial,
                prefix,
                throttle: None,
            })
        });
        Direction {
            from,
            reader,
            limiter,
            fwd,
            stage: Stage::Start(opening),
            busy: false,
        }
    }

    /// Runs the direction until EOF has been propagated (`Ok`) or something failed.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        loop {
            match &mut self.stage {
                Stage::Start(opening) => {
                    let Some(o) = opening else {
                        self.stage = Stage::Pump;
                        continue;
                    };
                    // The initial write goes first, uncounted and untransformed.
                    if !o.initial.is_empty() {
                        let initial = std::mem::take(&mut o.initial);
                        self.fwd.queue_raw(&initial);
                    }
                    if let Some(t) = &mut o.throttle {
                        if t.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        o.throttle = None;
                    }
                    ready!(self.fwd.poll_drain(cx))?;
                    if o.prefix.is_empty() {
                        self.stage = Stage::Pump;
                        continue;
                    }
                    // Bytes read ahead are bytes read: they take tokens like any read (frp
                    // reads its work connection without read-ahead, so all of them pass its
                    // limiter).
                    let n = match &self.limiter {
                        None => o.prefix.len(),
                        Some(l) => match l.acquire(o.prefix.len()) {
                            Grant::Bytes(n) => n,
                            Grant::Wait(d) => {
                                o.throttle = Some(Box::pin(tokio::time::sleep(d)));
                                continue;
                            }
                        },
                    };
                    let chunk = o.prefix.split_to(n);
                    self.fwd.forward_now(cx, &chunk, None)?;
                }
                Stage::Throttled(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.stage = Stage::Pump;
                }
                Stage::Finish => {
                    let to = self.from.other();
                    return Pin::new(&mut self.fwd.writer)
                        .poll_shutdown(cx)
                        .map_err(|source| RelayError::Write { side: to, source });
                }
                Stage::Pump => {
                    // One chunk in flight: what the writer did not take yet goes first.
                    ready!(self.fwd.poll_drain(cx))?;
                    let read_size = if self.fwd.transforms() {
                        BUSY_READ_TRANSFORMED
                    } else {
                        BUSY_READ_PLAIN
                    };
                    let cap = match &self.limiter {
                        None => read_size,
                        // An idle direction asks for a small grant; tokens are given back
                        // at once if nothing is read, so none are held while waiting.
                        Some(l) => match l.acquire(if self.busy { read_size } else { IDLE_READ }) {
                            Grant::Bytes(n) => n,
                            Grant::Wait(d) => {
                                self.stage = Stage::Throttled(Box::pin(tokio::time::sleep(d)));
                                continue;
                            }
                        },
                    };
                    let r = self.poll_read_forward(cx, cap);
                    let used = match &r {
                        Poll::Ready(Ok(n)) => *n,
                        _ => 0,
                    };
                    self.refund(cap, used);
                    let Poll::Ready(r) = r else {
                        // Idle: keep no buffer (a busy direction keeps `pending`'s memory).
                        self.fwd.release_idle_buffers();
                        return Poll::Pending;
                    };
                    let n = r?;
                    if n == 0 {
                        self.stage = Stage::Finish;
                    } else {
                        self.busy = n == cap;
                    }
                }
            }
        }
    }

    /// Reads at most `cap` bytes into the thread's scratch buffer and forwards them at once;
    /// `Ready(Ok(0))` is EOF. Pending means nothing was read: no buffer is held meanwhile.
    fn poll_read_forward(
        &mut self,
        cx: &mut Context<'_>,
        cap: usize,
    ) -> Poll<Result<usize, RelayError>> {
        let from = self.from;
        if let Some(filled) = self.poll_move(cx, cap) {
            return match filled {
                Filled::Moved(n) => {
                    self.fwd.need_flush = true;
                    self.fwd.count(n as u64);
                    Poll::Ready(Ok(n))
                }
                Filled::Eof => Poll::Ready(Ok(0)),
                Filled::ReaderPending => Poll::Pending,
                Filled::ReadError(source) => {
                    Poll::Ready(Err(RelayError::Read { side: from, source }))
                }
            };
        }
        SCRATCH.with(|scratch| {
            let mut own;
            let mut guard;
            let buf: &mut [u8] = match scratch.try_borrow_mut() {
                Ok(g) => {
                    guard = g;
                    &mut guard[..cap]
                }
                // Not reachable (nothing polled from here reads into it), but never panic.
                Err(_) => {
                    own = vec![0u8; cap];
                    &mut own
                }
            };
            if let ReadEnd::Chunk(reader) = &mut self.reader {
                // A large chunk goes out from the reader's own buffer, without another copy.
                let n = match reader.poll_read_chunk(cx, buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(source)) => {
                        return Poll::Ready(Err(RelayError::Read { side: from, source }));
                    }
                    Poll::Ready(Ok(Chunk::Bytes(b))) => {
                        if !b.is_empty() {
                            self.fwd.forward_now(cx, &b, Some(&b))?;
                        }
                        b.len()
                    }
                    Poll::Ready(Ok(Chunk::Copied(n))) => {
                        if n > 0 {
                            self.fwd.forward_now(cx, &buf[..n], None)?;
                        }
                        n
                    }
                };
                return Poll::Ready(Ok(n));
            }
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut self.reader).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(source)) => {
                    Poll::Ready(Err(RelayError::Read { side: from, source }))
                }
                Poll::Ready(Ok(())) => {
                    let data = rb.filled();
                    if !data.is_empty() {
                        self.fwd.forward_now(cx, data, None)?;
                    }
                    Poll::Ready(Ok(data.len()))
                }
            }
        })
    }
}

impl Direction {
    /// TCP into a writer with its own queue, untransformed: the socket is read straight into
    /// the queue (see [`AsyncWriteHalf::poll_write_from`]). `None`: not this case.
    fn poll_move(&mut self, cx: &mut Context<'_>, cap: usize) -> Option<Filled> {
        if self.fwd.transforms() {
            return None;
        }
        let (ReadEnd::Tcp(reader), WriteEnd::Half(writer)) =
            (&mut self.reader, &mut self.fwd.writer)
        else {
            return None;
        };
        let mut read = |cx: &mut Context<'_>, mut buf: &mut dyn BufMut| loop {
            ready!(reader.as_ref().poll_read_ready(cx))?;
            match reader.try_read_buf(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        };
        writer.poll_write_from(cx, cap, &mut read)
    }
}

thread_local! {
    /// The read buffer of every relay direction polled on this thread. A direction reads into
    /// it and writes at once; only what the writer does not take right away is copied out
    /// (into the direction's `pending`), so an idle direction holds no buffer at all.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; BUSY_READ_PLAIN].into_boxed_slice());
}

impl Direction {
    /// Gives back the part of a grant of `granted` bytes that a read of `used` did not use.
    fn refund(&self, granted: usize, used: usize) {
        if let Some(l) = &self.limiter {
            l.refund(granted.saturating_sub(used));
        }
    }
}

/// The transforms of a direction and their output buffers.
struct Chains {
    /// The reading side's inbound chain (wire → plaintext).
    inbound: Vec<Box<dyn Transform>>,
    /// The writing side's outbound chain (plaintext → wire).
    outbound: Vec<Box<dyn Transform>>,
    plain: Vec<u8>,
    wire: Vec<u8>,
}

/// The writing end of a direction with its transform chains and counters.
struct Forwarder {
    /// The side the bytes are read from; the writer belongs to the other one.
    from: SideId,
    writer: WriteEnd,
    /// The transform chains, boxed: most pairs have none.
    chains: Option<Box<Chains>>,
    /// Wire bytes of the last chunk that the writer did not take at once (empty, and
    /// unallocated, while the writer keeps up), and how much of them is written.
    pending: Vec<u8>,
    sent: usize,
    /// An untransformed remainder of a reader's own chunk (see [`ChunkRead`]), not copied.
    pending_chunk: Bytes,
    /// Plaintext length of the chunk in `pending`/`pending_chunk`, counted once it is all
    /// written.
    pending_plain: u64,
    need_flush: bool,
    /// Counts into `a_to_b` or `b_to_a` (by `from`).
    counters: Option<Arc<Counters>>,
    total: u64,
}

impl Forwarder {
    fn new(
        from: SideId,
        writer: WriteEnd,
        inbound: Vec<Box<dyn Transform>>,
        outbound: Vec<Box<dyn Transform>>,
        counters: Option<Arc<Counters>>,
    ) -> Self {
        Forwarder {
            from,
            writer,
            chains: (!inbound.is_empty() || !outbound.is_empty()).then(|| {
                Box::new(Chains {
                    inbound,
                    outbound,
                    plain: Vec::new(),
                    wire: Vec::new(),
                })
            }),
            pending: Vec::new(),
            sent: 0,
            pending_chunk: Bytes::new(),
            pending_plain: 0,
            need_flush: false,
            counters,
            total: 0,
        }
    }

    fn transforms(&self) -> bool {
        self.chains.is_some()
    }

    /// Transforms one chunk read from side `from` and writes as much of it as the writer takes
    /// now; the rest waits in `pending` for [`Forwarder::poll_drain`]. Must not be called while
    /// `pending` holds bytes.
    ///
    /// `owner`, when given, holds exactly `data`: an untransformed remainder is then kept as a
    /// slice of it instead of being copied.
    fn forward_now(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        owner: Option<&Bytes>,
    ) -> Result<(), RelayError> {
        debug_assert!(self.sent >= self.pending.len() && self.pending_chunk.is_empty());
        let owner = owner.filter(|_| self.chains.is_none());
        let (from, to) = (self.from, self.from.other());
        let transform_err = |source| RelayError::Transform { side: from, source };
        let (plain_len, wire): (u64, &[u8]) = match self.chains.as_deref_mut() {
            None => (data.len() as u64, data),
            Some(Chains {
                inbound,
                outbound,
                plain,
                wire,
            }) => {
                let plain: &[u8] = if inbound.is_empty() {
                    data
                } else {
                    plain.clear();
                    run_chain(inbound, data, plain).map_err(transform_err)?;
                    plain
                };
                let plain_len = plain.len() as u64;
                let wire: &[u8] = if outbound.is_empty() {
                    plain
                } else {
                    wire.clear();
                    run_chain(outbound, plain, wire).map_err(transform_err)?;
                    wire
                };
                (plain_len, wire)
            }
        };
        let mut off = 0;
        while off < wire.len() {
            match Pin::new(&mut self.writer).poll_write(cx, &wire[off..]) {
                Poll::Ready(Ok(0)) => {
                    let source = io::Error::from(io::ErrorKind::WriteZero);
                    return Err(RelayError::Write { side: to, source });
                }
                Poll::Ready(Ok(n)) => off += n,
                Poll::Ready(Err(source)) => return Err(RelayError::Write { side: to, source }),
                Poll::Pending => break,
            }
        }
        self.need_flush |= off > 0;
        if off == wire.len() {
            self.count(plain_len);
        } else {
            match owner {
                Some(b) => self.pending_chunk = b.slice(off..),
                _ => {
                    self.pending.clear();
                    self.pending.extend_from_slice(&wire[off..]);
                    self.sent = 0;
                }
            }
            self.pending_plain = plain_len;
        }
        Ok(())
    }

    /// Writes what is pending, then flushes the writer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        let to = self.from.other();
        let write_err = |source| RelayError::Write { side: to, source };
        while self.sent < self.pending.len() {
            match Pin::new(&mut self.writer).poll_write(cx, &self.pending[self.sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(write_err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    self.sent += n;
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(write_err(e))),
                Poll::Pending => return Poll::Pending,
            }
            if self.sent == self.pending.len() {
                let plain = std::mem::take(&mut self.pending_plain);
                self.count(plain);
            }
        }
        while !self.pending_chunk.is_empty() {
            match Pin::new(&mut self.writer).poll_write(cx, &self.pending_chunk) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(write_err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    self.pending_chunk.advance(n);
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(write_err(e))),
                Poll::Pending => return Poll::Pending,
            }
            if self.pending_chunk.is_empty() {
                // Let go of the reader's chunk at once.
                self.pending_chunk = Bytes::new();
                let plain = std::mem::take(&mut self.pending_plain);
                self.count(plain);
            }
        }
        if self.need_flush {
            match Pin::new(&mut self.writer).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(write_err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn count(&mut self, plain_len: u64) {
        if plain_len > 0 {
            self.total += plain_len;
            if let Some(c) = &self.counters {
                let counter = match self.from {
                    SideId::A => &c.a_to_b,
                    SideId::B => &c.b_to_a,
                };
                counter.fetch_add(plain_len, Ordering::Relaxed);
            }
        }
    }

    /// Queues bytes to be written as they are (no transform, not counted) by `poll_drain`.
    fn queue_raw(&mut self, bytes: &[u8]) {
        self.pending.clear();
        self.pending.extend_from_slice(bytes);
        self.sent = 0;
        self.pending_plain = 0;
    }

    fn release_idle_buffers(&mut self) {
        if self.sent >= self.pending.len() && self.pending.capacity() > 0 {
            self.pending = Vec::new();
            self.sent = 0;
        }
        let Some(chains) = self.chains.as_deref_mut() else {
            return;
        };
        for buf in [&mut chains.plain, &mut chains.wire] {
            if buf.capacity() > KEEP_WHEN_IDLE {
                *buf = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests;
