//! The tokio driver: one task owns the socket and feeds the [`Connection`]; the handles
//! ([`Session`], [`Incoming`], [`Stream`]) share the core with it behind one mutex and are
//! woken from the core's events. Stream reads copy straight out of the core's per-stream
//! buffer, writes straight into its transmit queue; the task writes that queue to the socket
//! in one piece and reads the socket in 256 KiB chunks, which it hands to the core as `Bytes`
//! (large payloads reach their stream without a copy).

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use dataplane::HostedRelay;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;

use super::connection::{Connection, Event, Received};
use super::{Config, Mode, YamuxError};

const READ_CHUNK: usize = 256 * 1024;
/// The first reads' size: a session that has only seen a handshake's worth of bytes (or a
/// peer that never logs in) holds this much, not [`READ_CHUNK`]. A read that fills it
/// switches the session to `READ_CHUNK` until it goes quiet.
const FIRST_READ: usize = 4 * 1024;
/// Read buffers kept for reuse while streams still hold slices of them.
const RETIRED_READ_BUFS: usize = 3;
/// Quiet time after which the session frees its reusable buffers.
const SHRINK_AFTER: Duration = Duration::from_secs(5);
/// Driver loop turns before it yields to other tasks.
const TURNS_PER_POLL: usize = 32;
/// Rounds over the woken hosted relays per turn before the driver yields.
const RELAY_ROUNDS: usize = 4;

/// Starts a yamux session over `io`: spawns the driver task (needs a tokio runtime).
pub fn session<T>(io: T, cfg: Config, mode: Mode) -> (Session, Incoming)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            conn: Connection::new(&cfg, mode, Instant::now().into_std()),
            read_wakers: HashMap::new(),
            write_wakers: HashMap::new(),
            accept_waker: None,
            open_wakers: Vec::new(),
            driver_waker: None,
            driver_polling: false,
            driver_woken: false,
            hosted: Vec::new(),
            serving: None,
            driver_gone: false,
            handles: 2,
        }),
        closed: Closed::default(),
    });
    let relay_wake = Arc::new(RelayWake::default());
    let driver = Driver {
        io: Some(io),
        shared: shared.clone(),
        read_buf: BytesMut::new(),
        bulk_reads: false,
        retired: Vec::new(),
        write_buf: None,
        need_flush: false,
        read_done: false,
        write_failed: false,
        write_stalled_since: None,
        write_timeout_ms: cfg
            .connection_write_timeout
            .as_millis()
            .try_into()
            .unwrap_or(u32::MAX),
        timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        closing_deadline: None,
        shutting_down: false,
        shut: false,
        shrink_at: None,
        relays: None,
        serving: None,
        relay_wake,
        socket_done: false,
    };
    tokio::spawn(driver);
    (
        Session {
            shared: shared.clone(),
        },
        Incoming { shared },
    )
}

struct Shared {
    inner: Mutex<Inner>,
    closed: Closed,
}

/// Set once the session has ended; [`Session::closed`] waits for it. (A watch channel cost
/// ~340 bytes per session; this is a flag and a `Notify`.)
#[derive(Default)]
struct Closed {
    set: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Closed {
    fn set(&self) {
        self.set.store(true, SeqCst);
        self.notify.notify_waiters();
    }

    fn is_set(&self) -> bool {
        self.set.load(SeqCst)
    }

    async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            if self.is_set() {
                return;
            }
            n.await;
        }
    }
}

impl Shared {
    fn lock(&self) -> Guard<'_> {
        Guard {
            inner: self.inner.lock().unwrap_or_else(|e| e.into_inner()),
            closed: &self.closed,
        }
    }
}

/// The locked core; dropping it delivers the core's events to the waiting handles.
struct Guard<'a> {
    inner: MutexGuard<'a, Inner>,
    closed: &'a Closed,
}

impl std::ops::Deref for Guard<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.inner.dispatch(self.closed);
    }
}

struct Inner {
    conn: Connection,
    read_wakers: HashMap<u32, Waker>,
    write_wakers: HashMap<u32, Waker>,
    accept_waker: Option<Waker>,
    open_wakers: Vec<Waker>,
    driver_waker: Option<Waker>,
    /// The driver is inside its poll (it looks at the core again before it sleeps): the core's
    /// events then set `driver_woken` instead of waking the task, which would only poll it
    /// once more for nothing.
    driver_polling: bool,
    driver_woken: bool,
    /// Relays handed to the driver ([`dataplane::RelayHost`]), not yet adopted by it.
    hosted: Vec<HostedRelay>,
    /// An acceptor handed to the driver ([`Incoming::serve`]), not yet adopted by it.
    serving: Option<Serving>,
    /// The driver task has ended: relays are not taken any more.
    driver_gone: bool,
    /// Live Session clones + Incoming + Streams; at zero the session closes itself.
    handles: usize,
}

impl Inner {
    fn dispatch(&mut self, closed: &Closed) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::IncomingStream(_) => wake(self.accept_waker.take()),
                Event::StreamReadable(id) | Event::StreamFinished(id) => {
                    wake(self.read_wakers.remove(&id))
                }
                Event::StreamWritable(id) => wake(self.write_wakers.remove(&id)),
                Event::StreamReset(id) => {
                    wake(self.read_wakers.remove(&id));
                    wake(self.write_wakers.remove(&id));
                }
                Event::OpenReady => self.open_wakers.drain(..).for_each(Waker::wake),
                Event::StreamEstablished(_) | Event::PingAck(_) | Event::GoAway(_) => {}
                Event::BacklogExceeded(_) => {
                    static BACKLOG: crate::log::LineBudget = crate::log::LineBudget::new(5);
                    crate::warn_limited!(BACKLOG, "yamux: backlog exceeded, forcing stream reset")
                }
                Event::Closed => {
                    match self.conn.close_reason() {
                        Some(e) if !e.is_normal_close() => {
                            // A peer can end sessions at will (frps: one per KCP datagram).
                            static ENDED: crate::log::LineBudget = crate::log::LineBudget::new(20);
                            crate::warn_limited!(ENDED, "yamux session ended error={e}")
                        }
                        e => tracing::debug!(error = ?e, "yamux session ended"),
                    }
                    self.read_wakers.drain().for_each(|(_, w)| w.wake());
                    self.write_wakers.drain().for_each(|(_, w)| w.wake());
                    self.open_wakers.drain(..).for_each(Waker::wake);
                    wake(self.accept_waker.take());
                    closed.set();
                }
            }
        }
        if self.conn.has_transmit() || self.conn.is_closed() {
            self.wake_driver();
        }
    }

    fn wake_driver(&mut self) {
        if self.driver_polling {
            self.driver_woken = true;
        } else if let Some(w) = &self.driver_waker {
            w.wake_by_ref();
        }
    }

    fn release_handle(&mut self) {
        self.handles -= 1;
        if self.handles == 0 {
            self.conn.close();
        }
    }
}

impl dataplane::RelayHost for Shared {
    fn host(&self, relay: HostedRelay) -> Result<(), HostedRelay> {
        let mut g = self.lock();
        if g.driver_gone {
            return Err(relay);
        }
        g.hosted.push(relay);
        g.wake_driver();
        Ok(())
    }
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// A handle on the session: opens streams, closes the session. Clones share it; the session
/// closes itself once every Session, the Incoming and every Stream are dropped.
pub struct Session {
    shared: Arc<Shared>,
}

impl Clone for Session {
    fn clone(&self) -> Self {
        self.shared.lock().handles += 1;
        Session {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.lock().release_handle();
    }
}

impl Session {
    /// Opens a stream (sends its SYN right away). Waits while `accept_backlog` opened streams
    /// are still unacknowledged; fails once the session is over or the peer sent GoAway.
    pub async fn open_stream(&self) -> Result<Stream, YamuxError> {
        poll_fn(|cx| {
            let mut g = self.shared.lock();
            match g.conn.open_stream() {
                Ok(Some(id)) => {
                    g.handles += 1;
                    Poll::Ready(Ok(Stream {
                        id,
                        shared: self.shared.clone(),
                    }))
                }
                Ok(None) => {
                    g.open_wakers.push(cx.waker().clone());
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }

    /// Sends GoAway and shuts the socket once what is queued has been written; every stream
    /// then fails and [`Incoming::accept`] returns `None`.
    pub fn close(&self) {
        self.shared.lock().conn.close();
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_set()
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<YamuxError> {
        self.shared.lock().conn.close_reason().cloned()
    }

    /// Resolves when the session ends, for any reason.
    pub async fn closed(&self) {
        self.shared.closed.wait().await;
    }
}

/// Streams the peer opens.
pub struct Incoming {
    shared: Arc<Shared>,
}

impl Incoming {
    /// The next stream the peer opened; `None` once the session is over.
    pub async fn accept(&mut self) -> Option<Stream> {
        poll_fn(|cx| self.poll_accept(Some(cx))).await
    }

    /// [`Incoming::accept`] without waiting; with `cx`, `Pending` registers the task to be
    /// woken by the next stream.
    fn poll_accept(&mut self, cx: Option<&Context<'_>>) -> Poll<Option<Stream>> {
        let mut g = self.shared.lock();
        if g.conn.is_closed() {
            return Poll::Ready(None);
        }
        match g.conn.accept_stream() {
            Some(id) => {
                g.handles += 1;
                Poll::Ready(Some(Stream {
                    id,
                    shared: self.shared.clone(),
                }))
            }
            None => {
                if let Some(cx) = cx {
                    set_waker(&mut g.accept_waker, cx);
                }
                Poll::Pending
            }
        }
    }

    /// Hands the streams the peer opens from now on to `acceptor`, called inside the task
    /// that drives the session: no task of its own waits in [`Incoming::accept`] (a server
    /// keeps one session per connected client). Both come back when that task has ended.
    pub fn serve(self, acceptor: Box<dyn Acceptor>) -> Result<(), (Incoming, Box<dyn Acceptor>)> {
        let shared = self.shared.clone();
        let mut g = shared.lock();
        if g.driver_gone {
            drop(g);
            return Err((self, acceptor));
        }
        g.serving = Some(Serving {
            incoming: self,
            acceptor,
        });
        g.wake_driver();
        Ok(())
    }
}

/// Takes the streams a peer opens, from inside the session's driver task (see
/// [`Incoming::serve`]). Its methods must not block.
pub trait Acceptor: Send + 'static {
    /// A stream the peer opened.
    fn stream(&mut self, stream: Stream);
    /// The session is over (`reason`: why, when it did not end normally); no stream follows.
    fn closed(&mut self, reason: Option<&YamuxError>);
}

/// An acceptor with the session's [`Incoming`] it serves.
struct Serving {
    incoming: Incoming,
    acceptor: Box<dyn Acceptor>,
}

impl Drop for Incoming {
    /// Nobody accepts any more: the peer's new streams are reset.
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        g.conn.reject_incoming();
        g.release_handle();
    }
}

/// One yamux stream. Shutdown sends FIN (half-close); dropping it closes it as `close()` closes
/// a TCP socket: FIN, or RST if received data was left unread or more data arrives later.
pub struct Stream {
    id: u32,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).finish()
    }
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Aborts the stream (RST).
    pub fn reset(&self) {
        self.shared.lock().conn.stream_reset(self.id);
    }
}

impl Stream {
    /// Splits the stream for [`dataplane::Endpoint::Halves`]: a read half that hands out the
    /// received bytes without copying them, and the stream itself as the write half (dropping
    /// it releases the stream, as always; the read half then fails).
    pub fn into_halves(self) -> (StreamReadHalf, Stream) {
        (
            StreamReadHalf {
                id: self.id,
                shared: self.shared.clone(),
            },
            self,
        )
    }
}

/// The read half of a [`Stream`] (see [`Stream::into_halves`]).
pub struct StreamReadHalf {
    id: u32,
    shared: Arc<Shared>,
}

impl dataplane::ChunkRead for StreamReadHalf {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<dataplane::relay::Chunk>> {
        let id = self.id;
        let mut g = self.shared.lock();
        match g.conn.stream_read_chunk(id, buf) {
            Ok(Some(Received::Chunk(b))) => Poll::Ready(Ok(dataplane::relay::Chunk::Bytes(b))),
            Ok(Some(Received::Copied(n))) => Poll::Ready(Ok(dataplane::relay::Chunk::Copied(n))),
            Ok(None) => {
                g.read_wakers.insert(id, cx.waker().clone());
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    /// Relays of a session's streams run inside its driver task.
    fn relay_host(&self) -> Option<Arc<dyn dataplane::RelayHost>> {
        Some(self.shared.clone())
    }

    /// A relay that fails resets the stream (RST): the peer's relay then closes its socket,
    /// where a FIN would only half-close it.
    fn abort(&mut self) {
        self.shared.lock().conn.stream_reset(self.id);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        g.conn.stream_release(self.id);
        g.read_wakers.remove(&self.id);
        g.write_wakers.remove(&self.id);
        g.release_handle();
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut g = self.shared.lock();
        // Only zero-initialise as much of the caller's buffer as there is data for.
        let want = buf.remaining().min(g.conn.stream_buffered(id));
        match g.conn.stream_read(id, buf.initialize_unfilled_to(want)) {
            Ok(Some(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Ok(None) => {
                g.read_wakers.insert(id, cx.waker().clone());
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let mut g = self.shared.lock();
        match g.conn.stream_write(id, data) {
            Ok(0) if !data.is_empty() => {
                g.write_wakers.insert(id, cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Accepted bytes are already queued for the socket, in order.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let r = self.shared.lock().conn.stream_close(id);
        Poll::Ready(r.map_err(Into::into))
    }
}

impl dataplane::AsyncWriteHalf for Stream {
    /// The relay's socket read goes straight into the session's transmit queue as one Data
    /// frame (no copy through the relay's buffer).
    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        read: &mut dataplane::ReadInto<'_>,
    ) -> Option<dataplane::Filled> {
        use dataplane::Filled;
        let id = self.id;
        let mut g = self.shared.lock();
        // A stream that cannot take data now (window, queue, or an error) is left to the
        // relay's own path, which reads first: the reader's end or error is seen at once, and
        // a write error only counts when there is something to write.
        match g.conn.stream_write_with(id, max, |buf| read(cx, buf)) {
            Err(_) | Ok(None) => None,
            Ok(Some((n, _))) if n > 0 => Some(Filled::Moved(n)),
            Ok(Some((_, Poll::Pending))) => Some(Filled::ReaderPending),
            Ok(Some((_, Poll::Ready(Ok(_))))) => Some(Filled::Eof),
            Ok(Some((_, Poll::Ready(Err(e))))) => Some(Filled::ReadError(e)),
        }
    }
}

/// The task that owns the socket.
struct Driver<T> {
    /// The session's socket; `None` once finished with (`socket_done`).
    io: Option<T>,
    shared: Arc<Shared>,
    /// Room for the next socket read; each read is split off and frozen into the chunk given
    /// to the core (its memory comes back here once the streams have read their slices).
    read_buf: BytesMut,
    /// Reads go into `read_buf` in [`READ_CHUNK`]s once a read filled its room; before that
    /// (and again once the session went quiet) they take [`FIRST_READ`] bytes at most, through
    /// the stack.
    bulk_reads: bool,
    /// Earlier read buffers still shared with streams' slices, kept to be reclaimed once the
    /// slices are gone (at most `RETIRED_READ_BUFS`; freed when the session goes quiet).
    retired: Vec<BytesMut>,
    /// Frames taken from the core, and how much of them is written.
    write_buf: Option<(Bytes, usize)>,
    need_flush: bool,
    read_done: bool,
    write_failed: bool,
    write_stalled_since: Option<Instant>,
    /// `connection_write_timeout` in milliseconds (a `Duration` would take 16 bytes: the
    /// driver's size decides its task's, in steps of 128 bytes).
    write_timeout_ms: u32,
    timer: Pin<Box<Sleep>>,
    /// Once the session is over: how long we still try to flush and shut the socket.
    closing_deadline: Option<Instant>,
    shutting_down: bool,
    /// Our FIN (or TLS close_notify) is out; the socket lingers until the peer's EOF.
    shut: bool,
    /// When to free the core's reusable buffers if no byte is written until then.
    shrink_at: Option<Instant>,
    /// The relays of this session's streams that run inside this task (see
    /// [`dataplane::RelayHost`]). They outlive the socket: once it is shut, the task goes on
    /// until they have written what they hold and ended.
    /// `None` while there is none (most sessions of idle clients).
    relays: Option<FuturesUnordered<HostedRelay>>,
    /// Where the streams the peer opens go, once [`Incoming::serve`] handed them here.
    serving: Option<Serving>,
    relay_wake: Arc<RelayWake>,
    /// The socket is finished with (flushed and shut, or failed).
    socket_done: bool,
}

/// The driver is its task's future itself (an `async fn run(mut self)` would keep two copies
/// of the driver in the task: the argument and the moved-from local).
impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().drive(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms.into())
    }

    fn io(&mut self) -> Pin<&mut T> {
        Pin::new(self.io.as_mut().expect("socket in use until socket_done"))
    }

    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut g = self.shared.lock();
            set_waker(&mut g.driver_waker, cx);
            g.driver_polling = true;
        }
        self.relay_wake.polling.store(true, SeqCst);
        for _ in 0..TURNS_PER_POLL {
            // Relays first: the frames they queue go out with this turn's write.
            self.poll_relays(cx);
            if self.socket_done {
                self.serve_incoming();
                if self.relays.is_none() {
                    return Poll::Ready(());
                }
                if self.may_sleep() {
                    return Poll::Pending;
                }
                continue;
            }
            let mut progress = self.poll_write(cx);
            progress |= self.poll_read(cx);
            self.serve_incoming();

            let now = Instant::now();
            let (closed, mut deadline) = {
                let g = self.shared.lock();
                let core = g.conn.poll_timeout().map(Instant::from_std);
                (g.conn.is_closed(), core)
            };
            if closed {
                let done_at = *self
                    .closing_deadline
                    .get_or_insert(now + self.write_timeout());
                let flushed = self.write_buf.is_none() && !self.shared.lock().conn.has_transmit();
                if flushed || self.write_failed || now >= done_at {
                    if !self.shutting_down {
                        self.shutting_down = true;
                        self.write_buf = None;
                    }
                    // TLS may need to write close_notify; bounded by the same deadline.
                    if !self.shut {
                        match self.io().poll_shutdown(cx) {
                            Poll::Pending if now < done_at && !self.write_failed => {}
                            Poll::Ready(Ok(())) if now < done_at && !self.write_failed => {
                                self.shut = true;
                            }
                            _ => {
                                self.finish_socket();
                                continue;
                            }
                        }
                    }
                    // Lingering close: with our FIN out, read (and drop) what the peer still
                    // sends until its EOF. Closing at once would answer its late frames (a
                    // window update, a ping) with a RST, and a RST makes the peer's kernel
                    // throw away what it has received from us and not yet read: the tail of
                    // our streams' data.
                    if self.shut && (self.read_done || now >= done_at || self.poll_drain(cx)) {
                        // Closed now, not when the hosted relays are done.
                        self.finish_socket();
                        continue;
                    }
                }
                deadline = Some(done_at);
            } else if let Some(at) = self.shrink_at {
                if now >= at {
                    self.shrink_at = None;
                    self.retired = Vec::new();
                    self.bulk_reads = false;
                    self.read_buf = BytesMut::new();
                    self.shared.lock().conn.shrink_buffers();
                } else {
                    deadline = Some(deadline.map_or(at, |d| d.min(at)));
                }
            }
            if !closed && let Some(since) = self.write_stalled_since {
                let stall_at = since + self.write_timeout();
                deadline = Some(deadline.map_or(stall_at, |d| d.min(stall_at)));
                if now >= stall_at {
                    self.shared
                        .lock()
                        .conn
                        .handle_error(YamuxError::WriteTimeout);
                    continue;
                }
            }
            if let Some(d) = deadline {
                if now >= d {
                    if !closed {
                        self.shared.lock().conn.handle_timeout(now.into_std());
                    }
                    continue;
                }
                if self.timer.deadline() != d {
                    self.timer.as_mut().reset(d);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            if !progress && self.may_sleep() {
                return Poll::Pending;
            }
        }
        self.shared.lock().driver_polling = false;
        self.relay_wake.polling.store(false, SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Adopts newly hosted relays and runs those that were woken.
    ///
    /// `FuturesUnordered` wakes its task after each round over its futures (so that a busy
    /// set cannot starve the executor). Here that wake-up, like a relay woken by this very
    /// task's reads, only sets `relay_wake.woken` while the driver polls (see `poll`): the
    /// driver takes another round or turn instead of being polled again for nothing.
    fn poll_relays(&mut self, cx: &mut Context<'_>) {
        let (new, serving) = {
            let mut g = self.shared.lock();
            (std::mem::take(&mut g.hosted), g.serving.take())
        };
        if serving.is_some() {
            self.serving = serving;
        }
        if !new.is_empty() {
            self.relays
                .get_or_insert_with(FuturesUnordered::new)
                .extend(new);
        }
        let Some(relays) = &mut self.relays else {
            return;
        };
        self.relay_wake.task.register(cx.waker());
        let relay_waker = Waker::from(self.relay_wake.clone());
        let mut relay_cx = Context::from_waker(&relay_waker);
        let mut rounds = 0;
        loop {
            self.relay_wake.woken.store(false, SeqCst);
            match relays.poll_next_unpin(&mut relay_cx) {
                // A relay ended; more may be ready (their wake-ups are already spent), so
                // poll again: this ends, as every such answer removes a relay.
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) => {
                    // None left: the set's own allocations go too.
                    self.relays = None;
                    return;
                }
                Poll::Pending if !self.relay_wake.woken.load(SeqCst) => return,
                Poll::Pending => {
                    rounds += 1;
                    if rounds == RELAY_ROUNDS {
                        // Still woken: the end of the turn sees `woken` and goes on.
                        return;
                    }
                }
            }
        }
    }

    /// Hands the streams the peer opened to the acceptor, if one serves them; tells it when
    /// the session is over (and lets it go).
    fn serve_incoming(&mut self) {
        let Some(serving) = &mut self.serving else {
            return;
        };
        loop {
            match serving.incoming.poll_accept(None) {
                Poll::Ready(Some(stream)) => serving.acceptor.stream(stream),
                Poll::Ready(None) => {
                    let reason = self.shared.lock().conn.close_reason().cloned();
                    let mut serving = self.serving.take().expect("serving");
                    serving.acceptor.closed(reason.as_ref());
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    /// Whether something asked for the driver during its poll; if not, it is marked as not
    /// polling (wake-ups from now on wake the task).
    fn may_sleep(&mut self) -> bool {
        let mut g = self.shared.lock();
        if std::mem::take(&mut g.driver_woken) || self.relay_wake.woken.swap(false, SeqCst) {
            return false;
        }
        g.driver_polling = false;
        self.relay_wake.polling.store(false, SeqCst);
        // A relay woken from another thread just before `polling` was cleared.
        if self.relay_wake.woken.swap(false, SeqCst) {
            g.driver_polling = true;
            self.relay_wake.polling.store(true, SeqCst);
            return false;
        }
        true
    }

    /// Writes queued frames until the socket would block. Returns whether anything moved.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.write_failed && !self.shutting_down {
            if self.write_buf.is_none() {
                self.write_buf = self.shared.lock().conn.poll_transmit().map(|b| (b, 0));
            }
            let Some((buf, written)) = self.write_buf.as_mut() else {
                break;
            };
            match Pin::new(self.io.as_mut().expect("socket in use"))
                .poll_write(cx, &buf[*written..])
            {
                Poll::Ready(Ok(n)) if n > 0 => {
                    *written += n;
                    if *written == buf.len() {
                        let (buf, _) = self.write_buf.take().expect("just written");
                        self.shared.lock().conn.recycle_transmit(buf);
                    }
                    self.need_flush = true;
                    self.write_stalled_since = None;
                    self.shrink_at = Some(Instant::now() + SHRINK_AFTER);
                    progress = true;
                }
                Poll::Ready(Ok(_)) => {
                    self.write_failed(&io::Error::from(io::ErrorKind::WriteZero));
                    return true;
                }
                Poll::Ready(Err(e)) => {
                    self.write_failed(&e);
                    return true;
                }
                Poll::Pending => {
                    self.write_stalled_since.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        if self.need_flush && !self.write_failed {
            match self.io().poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(e)) => {
                    self.write_failed(&e);
                    return true;
                }
                Poll::Pending => {}
            }
        }
        progress
    }

    /// Closes the socket; the task goes on while hosted relays run.
    fn finish_socket(&mut self) {
        self.io = None;
        self.socket_done = true;
    }

    /// Reads and drops what the peer sends after our FIN. True once its EOF (or an error)
    /// came: the socket can be closed without a RST.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> bool {
        let mut scratch = [0u8; 4096];
        for _ in 0..16 {
            let mut buf = ReadBuf::new(&mut scratch);
            match self.io().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return true,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return true,
                Poll::Pending => return false,
            }
        }
        // A peer still sending: yield to the other tasks, come back (the deadline bounds it).
        cx.waker().wake_by_ref();
        false
    }

    fn write_failed(&mut self, e: &io::Error) {
        self.write_failed = true;
        self.write_buf = None;
        self.shared.lock().conn.handle_error(YamuxError::io(e));
    }

    /// Reads one chunk from the socket into the core. Returns whether anything moved.
    ///
    /// Until a read fills [`FIRST_READ`], reads go through a buffer on the stack and reach the
    /// core copied at their exact size, so a quiet session (an idle client's control: a
    /// heartbeat now and then) holds no read buffer between reads. A read that fills it
    /// switches to [`READ_CHUNK`]-sized buffers of the session's own, whose slices streams
    /// keep without a copy, until the session goes quiet again.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.read_done || self.shared.lock().conn.is_closed() {
            return false;
        }
        let io = Pin::new(self.io.as_mut().expect("socket in use"));
        let (read, room) = if !self.bulk_reads {
            let mut stack = [MaybeUninit::<u8>::uninit(); FIRST_READ];
            let mut buf = ReadBuf::uninit(&mut stack);
            let read = match io.poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Bytes::copy_from_slice(buf.filled()))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
            (read, FIRST_READ)
        } else {
            if self.read_buf.capacity() < READ_CHUNK / 4 {
                next_read_buf(&mut self.read_buf, &mut self.retired, READ_CHUNK);
            }
            let room = self.read_buf.capacity() - self.read_buf.len();
            let read = match tokio_util::io::poll_read_buf(io, cx, &mut self.read_buf) {
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(self.read_buf.split().freeze())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
            (read, room)
        };
        match read {
            Poll::Ready(Ok(chunk)) => {
                let mut g = self.shared.lock();
                if chunk.is_empty() {
                    self.read_done = true;
                    g.conn.handle_eof();
                } else {
                    if chunk.len() == room {
                        // More is probably waiting: read in big chunks from now on.
                        self.bulk_reads = true;
                    }
                    // A protocol error closes the core, which the loop then notices.
                    let _ = g.conn.handle_input_bytes(&chunk);
                }
                true
            }
            Poll::Ready(Err(e)) => {
                self.read_done = true;
                self.shared.lock().conn.handle_error(YamuxError::io(&e));
                true
            }
            Poll::Pending => false,
        }
    }
}

/// The waker the driver gives its hosted relays: forwards to the driver task, except while
/// the driver is polling them itself (it then only notes the wake-up, see
/// `Driver::poll_relays`).
#[derive(Default)]
struct RelayWake {
    task: AtomicWaker,
    polling: AtomicBool,
    woken: AtomicBool,
}

impl Wake for RelayWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(SeqCst) {
            self.woken.store(true, SeqCst);
        } else {
            self.task.wake();
        }
    }
}

/// Makes room for the next socket read in `buf`: its own memory if no stream holds a slice of
/// it any more, else a retired buffer whose slices are all gone, else a new one; the buffer
/// given up is retired. Reusing memory matters: a fresh 256 KiB allocation costs a page fault
/// per 4 KiB touched.
fn next_read_buf(buf: &mut BytesMut, retired: &mut Vec<BytesMut>, size: usize) {
    if buf.try_reclaim(size) {
        return;
    }
    let fresh = match retired.iter_mut().position(|b| b.try_reclaim(size)) {
        Some(i) => retired.swap_remove(i),
        None => BytesMut::with_capacity(size),
    };
    let old = std::mem::replace(buf, fresh);
    if retired.len() < RETIRED_READ_BUFS {
        retired.push(old);
    }
}

impl<T> Drop for Driver<T> {
    /// The task is gone (finished, or the runtime shut down): nobody may wait on it.
    fn drop(&mut self) {
        let orphans = {
            let mut g = self.shared.lock();
            g.conn.handle_error(YamuxError::SessionClosed);
            g.driver_gone = true;
            (std::mem::take(&mut g.hosted), g.serving.take())
        };
        // Dropped outside the lock (their streams take it, and a handed-over `Incoming` holds
        // the session); `relays` and `serving` go after this.
        drop(orphans);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const MIB: usize = 1024 * 1024;

    fn pattern(seed: u32, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    async fn sessions() -> ((Session, Incoming), (Session, Incoming)) {
        let (c, s) = tcp_pair().await;
        (
            session(c, Config::frp(30), Mode::Client),
            session(s, Config::frp(30), Mode::Server),
        )
    }

    /// The driver is its task's future: a tokio task cell is the future plus 104 bytes of
    /// header and trailer, rounded up to 128 (x86_64). Up to 280 bytes the cell of every
    /// session's driver (one per connected client in frps) takes 384 bytes, past it 512.
    #[test]
    fn the_driver_fits_a_384_byte_task_cell() {
        let size = std::mem::size_of::<Driver<crate::transport::Conn>>();
        assert!(size <= 280, "Driver is {size} bytes");
    }

    /// An acceptor that echoes every stream (in a task of its own) and reports what it saw.
    struct EchoAcceptor {
        events: tokio::sync::mpsc::UnboundedSender<String>,
    }

    impl Acceptor for EchoAcceptor {
        fn stream(&mut self, stream: Stream) {
            let _ = self.events.send(format!("stream {}", stream.id));
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }

        fn closed(&mut self, reason: Option<&YamuxError>) {
            let _ = self.events.send(format!(
                "closed {}",
                reason.is_some_and(|e| !e.is_normal_close())
            ));
        }
    }

    /// Streams a peer opens reach the acceptor handed to the driver, in order; the end of the
    /// session is reported once, and the session's memory (the acceptor holds its
    /// `Incoming`) goes with the driver.
    #[tokio::test]
    async fn served_streams_reach_the_acceptor_inside_the_driver() {
        let ((client, _client_in), (server, server_in)) = sessions().await;
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        assert!(
            server_in
                .serve(Box::new(EchoAcceptor { events: tx }))
                .is_ok()
        );
        for i in 0..3u32 {
            let stream = client.open_stream().await.unwrap();
            let got = exchange(stream, pattern(i, 100_000)).await;
            assert_eq!(got, pattern(i, 100_000), "stream {i} echoed");
        }
        for id in [1, 3, 5] {
            assert_eq!(events.recv().await.unwrap(), format!("stream {id}"));
        }
        let weak = Arc::downgrade(&server.shared);
        drop(server);
        client.close();
        assert_eq!(events.recv().await.unwrap(), "closed false");
        assert!(
            events.recv().await.is_none(),
            "the acceptor is dropped after the end"
        );
        // Nothing holds the server's session any more (no cycle through the acceptor).
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while weak.strong_count() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the server session was not freed");
    }

    /// Once the driver is gone, `serve` hands the acceptor back.
    #[tokio::test]
    async fn serve_after_the_driver_ended_hands_everything_back() {
        let ((client, _client_in), (server, server_in)) = sessions().await;
        client.close();
        server.closed().await;
        let gone = async {
            while !server.shared.lock().driver_gone {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), gone)
            .await
            .unwrap();
        let (tx, _events) = tokio::sync::mpsc::unbounded_channel();
        let (mut incoming, _acceptor) = server_in
            .serve(Box::new(EchoAcceptor { events: tx }))
            .expect_err("handed back");
        assert!(incoming.accept().await.is_none());
    }

    /// Sends `ours` and reads everything the peer sends, concurrently.
    async fn exchange(stream: Stream, ours: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(stream);
        let writer = async move {
            // Odd-sized writes, to cross frame boundaries.
            for chunk in ours.chunks(50_000 + 7) {
                w.write_all(chunk).await.unwrap();
            }
            w.shutdown().await.unwrap();
        };
        let reader = async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        };
        tokio::join!(writer, reader).1
    }

    /// A stream relayed as `Endpoint::Halves` (reads hand out the received chunks) against a
    /// TCP socket: every byte both ways, EOF propagated as a half-close each way, and the
    /// relay ends cleanly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_halves_relay_both_ways_with_half_close() {
        let ((client, _client_in), (_server, mut server_in)) = sessions().await;
        let opened = client.open_stream().await.unwrap();
        let accepted = server_in.accept().await.unwrap();
        let (mut user, relay_tcp) = tcp_pair().await;
        let relay = tokio::spawn(dataplane::relay::relay(stream_tcp_pair(
            accepted, relay_tcp,
        )));
        let (up, down) = (pattern(1, 3 * MIB + 5), pattern(2, 2 * MIB + 3));
        let (down2, up2) = (down.clone(), up.clone());
        let stream_side = tokio::spawn(async move { exchange(opened, up2).await });
        let (mut ur, mut uw) = user.split();
        let (_, got_up) = tokio::join!(
            async {
                uw.write_all(&down2).await.unwrap();
                uw.shutdown().await.unwrap();
            },
            async {
                let mut got = Vec::new();
                ur.read_to_end(&mut got).await.unwrap();
                got
            }
        );
        assert!(got_up == up, "stream → tcp corrupted");
        assert!(stream_side.await.unwrap() == down, "tcp → stream corrupted");
        let outcome = tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("relay did not end")
            .unwrap();
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(
            (outcome.a_to_b, outcome.b_to_a),
            (up.len() as u64, down.len() as u64)
        );
    }

    type RelayDone = tokio::sync::oneshot::Receiver<dataplane::relay::RelayOutcome>;

    /// The pair `Engine::spawn` gets for a yamux stream (side a) and a TCP socket (side b).
    fn stream_tcp_pair(stream: Stream, tcp: TcpStream) -> dataplane::Pair {
        use dataplane::{Endpoint, Pair, Side};
        let (read, write) = stream.into_halves();
        Pair {
            a: Side::plain(Endpoint::Halves {
                read: Box::new(read),
                write: Box::new(write),
            }),
            b: Side::plain(Endpoint::Tcp(tcp)),
            counters: None,
            limiter: None,
        }
    }

    /// Hands a relay between `stream` and `tcp` to the driver of the stream's session, as
    /// `Engine::spawn` does; the receiver gets the relay's outcome.
    fn host_relay(stream: Stream, tcp: TcpStream) -> RelayDone {
        let pair = stream_tcp_pair(stream, tcp);
        let dataplane::Endpoint::Halves { read, .. } = &pair.a.endpoint else {
            unreachable!("stream_tcp_pair puts the stream's halves on side a")
        };
        let host = read.relay_host().expect("streams offer their driver");
        let relay = dataplane::relay::relay(pair);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let relay: HostedRelay = Box::pin(async move {
            let _ = tx.send(relay.await);
        });
        assert!(host.host(relay).is_ok(), "a live driver takes relays");
        rx
    }

    /// A relay hosted by the session's driver ([`dataplane::RelayHost`]) moves every byte,
    /// and keeps running after the session's socket is finished: here it still holds most of
    /// the stream's data (the user side does not read yet, through small socket buffers)
    /// when the peer closes the session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hosted_relay_outlives_the_session_socket() {
        let ((client, _client_in), (server, mut server_in)) = sessions().await;
        let mut opened = client.open_stream().await.unwrap();
        let accepted = server_in.accept().await.unwrap();
        // User side: tiny buffers, so the relay cannot hand its bytes to the kernel at once.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let (user, relay_tcp) = tokio::join!(sock.connect(l.local_addr().unwrap()), l.accept());
        let (mut user, relay_tcp) = (user.unwrap(), relay_tcp.unwrap().0);
        socket2::SockRef::from(&relay_tcp)
            .set_send_buffer_size(4096)
            .unwrap();
        let done_rx = host_relay(accepted, relay_tcp);

        let data = pattern(3, 200 * 1024);
        opened.write_all(&data).await.unwrap();
        opened.shutdown().await.unwrap();
        drop(opened);
        client.close();
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), server.closed())
            .await
            .expect("session did not end");
        // Time for the server's driver to shut its socket.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), user.read_to_end(&mut got))
            .await
            .expect("user side did not get EOF")
            .unwrap();
        assert!(got == data, "got {} of {} bytes", got.len(), data.len());
        // The other direction ends with the user's EOF (its stream is gone with the session).
        drop(user);
        let outcome = tokio::time::timeout(Duration::from_secs(10), done_rx)
            .await
            .expect("relay did not end")
            .unwrap();
        assert_eq!(outcome.a_to_b, data.len() as u64);
    }

    /// Many hosted relays ending at once (every user hangs up together) leave the driver
    /// serving: the relays still queued as ready after one ended are polled too, and a new
    /// stream relays as before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hosted_relays_ending_together_leave_the_driver_serving() {
        let ((client, _client_in), (_server, mut server_in)) = sessions().await;
        async fn hosted(
            client: &Session,
            server_in: &mut Incoming,
        ) -> (Stream, TcpStream, RelayDone) {
            let opened = client.open_stream().await.unwrap();
            let accepted = server_in.accept().await.unwrap();
            let (user, relay_tcp) = tcp_pair().await;
            (opened, user, host_relay(accepted, relay_tcp))
        }
        let mut all = Vec::new();
        for _ in 0..200 {
            all.push(hosted(&client, &mut server_in).await);
        }
        let mut ended = Vec::new();
        for (opened, user, done) in all {
            drop((opened, user));
            ended.push(done);
        }
        for done in ended {
            tokio::time::timeout(Duration::from_secs(10), done)
                .await
                .expect("a relay did not end")
                .unwrap();
        }
        let (mut opened, mut user, _done) = hosted(&client, &mut server_in).await;
        opened.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), user.read_exact(&mut got))
            .await
            .expect("the driver stopped relaying")
            .unwrap();
        assert_eq!(&got, b"ping");
    }

    /// A socket that records when it is dropped.
    struct DropFlag {
        inner: TcpStream,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.dropped.store(true, SeqCst);
        }
    }

    /// A session over `io` wrapped in a [`DropFlag`]; the flag tells when the driver closed it.
    fn flagged_session(io: TcpStream, mode: Mode) -> ((Session, Incoming), Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let io = DropFlag {
            inner: io,
            dropped: dropped.clone(),
        };
        (session(io, Config::frp(30), mode), dropped)
    }

    impl AsyncRead for DropFlag {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for DropFlag {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, data)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Closing a session is a lingering close: after GoAway and FIN the socket is read (and
    /// what comes dropped) until the peer's EOF, then closed. Closed at once, the socket would
    /// answer the peer's late frames with a RST, and the RST makes our kernel drop what it has
    /// not sent yet: here most of a stream's data, held back by the peer's small receive
    /// buffer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_lingers_until_the_peer_eof_and_loses_nothing() {
        let l = tokio::net::TcpSocket::new_v4().unwrap();
        l.set_recv_buffer_size(4096).unwrap();
        l.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = l.listen(1).unwrap();
        let c = tokio::net::TcpSocket::new_v4().unwrap();
        c.set_send_buffer_size(1 << 20).unwrap();
        let (c, peer) = tokio::join!(c.connect(l.local_addr().unwrap()), l.accept());
        let (c, mut peer) = (c.unwrap(), peer.unwrap().0);
        let ((client, _client_in), dropped) = flagged_session(c, Mode::Client);
        let mut opened = client.open_stream().await.unwrap();
        let data = pattern(4, 200 * 1024);
        opened.write_all(&data).await.unwrap();
        client.close();
        // The frames are in our kernel's send buffer by now, FIN after them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A frame the peer had in flight: a ping.
        peer.write_all(&[0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 7])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!dropped.load(SeqCst), "socket closed before the peer's EOF");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut got))
            .await
            .expect("no EOF after close")
            .expect("the session was reset");
        // SYN, the data frames, GoAway: more than the data itself.
        assert!(got.len() > data.len(), "{} bytes of frames", got.len());
        peer.shutdown().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !dropped.load(SeqCst) {
            assert!(
                Instant::now() < deadline,
                "socket not closed after the peer's EOF"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The session's socket is closed once the session is over, even while a hosted relay
    /// lingers (here: its stream got FIN, its user socket stays open and silent), and the
    /// relay still ends when its user does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_socket_is_closed_while_hosted_relays_linger() {
        let (c, s) = tcp_pair().await;
        let (client, _client_in) = session(c, Config::frp(30), Mode::Client);
        let ((_server, mut server_in), dropped) = flagged_session(s, Mode::Server);
        let mut opened = client.open_stream().await.unwrap();
        let accepted = server_in.accept().await.unwrap();
        let (user, relay_tcp) = tcp_pair().await;
        let mut done = host_relay(accepted, relay_tcp);
        opened.shutdown().await.unwrap();
        client.close();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dropped.load(SeqCst) {
            assert!(Instant::now() < deadline, "session socket still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            matches!(
                done.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            ),
            "the relay should still be waiting on its user"
        );
        drop(user);
        tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .expect("relay did not end")
            .unwrap();
        drop(opened);
    }

    /// Once the driver task has ended, relays are handed back (the engine then spawns them).
    #[tokio::test]
    async fn host_hands_relays_back_once_the_driver_is_gone() {
        let ((client, _client_in), (_server, mut server_in)) = sessions().await;
        let _opened = client.open_stream().await.unwrap();
        let (read, _write) = server_in.accept().await.unwrap().into_halves();
        let host = dataplane::ChunkRead::relay_host(&read).unwrap();
        client.close();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
            match host.host(Box::pin(async move {
                let _ = tx.send(());
            })) {
                Ok(()) => {
                    // Taken: the driver must run it (or drop it when it ends).
                    let _ = tokio::time::timeout(Duration::from_secs(5), &mut rx).await;
                }
                Err(_) => break,
            }
            assert!(Instant::now() < deadline, "driver never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Read buffers are reused once the streams dropped their slices: the same memory comes
    /// back instead of a fresh allocation.
    #[test]
    fn read_buffers_are_reclaimed_once_slices_are_gone() {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut retired = Vec::new();
        let first = buf.as_ptr();
        buf.extend_from_slice(&[1; READ_CHUNK]);
        let held = buf.split().freeze();
        // A stream still holds a slice: a new buffer, the old one retired.
        next_read_buf(&mut buf, &mut retired, READ_CHUNK);
        assert_ne!(buf.as_ptr(), first);
        assert_eq!(retired.len(), 1);
        buf.extend_from_slice(&[2; READ_CHUNK]);
        let second = buf.split().freeze();
        drop(held);
        // The first buffer is free again: it comes back from the retired list.
        next_read_buf(&mut buf, &mut retired, READ_CHUNK);
        assert_eq!(buf.as_ptr(), first);
        assert!(buf.capacity() >= READ_CHUNK);
        drop(second);
        // Nothing holds the current one: reclaimed in place.
        buf.extend_from_slice(&[3; 10]);
        drop(buf.split());
        next_read_buf(&mut buf, &mut retired, READ_CHUNK);
        assert_eq!(buf.as_ptr(), first);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fifty_streams_one_mib_each_way() {
        let ((client, _client_in), (_server, mut server_in)) = sessions().await;
        let server_task = tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..50 {
                let s = server_in.accept().await.expect("stream");
                tasks.push(tokio::spawn(async move {
                    let id = s.id();
                    let got = exchange(s, pattern(id + 1000, MIB)).await;
                    assert!(
                        got == pattern(id, MIB),
                        "server side of stream {id} corrupted"
                    );
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let s = client.open_stream().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let id = s.id();
                let got = exchange(s, pattern(id, MIB)).await;
                assert!(
                    got == pattern(id + 1000, MIB),
                    "client side of stream {id} corrupted"
                );
                id
            }));
        }
        let run = async {
            let mut ids = Vec::new();
            for t in tasks {
                ids.push(t.await.unwrap());
            }
            server_task.await.unwrap();
            ids
        };
        let ids = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("stalled");
        assert_eq!(ids, (0..50).map(|i| 2 * i + 1).collect::<Vec<u32>>());
        assert!(!client.is_closed());
    }

    #[tokio::test]
    async fn shutdown_gives_peer_eof() {
        let ((client, _ci), (_server, mut server_in)) = sessions().await;
        let mut s = client.open_stream().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut peer = server_in.accept().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // Half-close: the peer can still answer.
        peer.write_all(b"bye").await.unwrap();
        drop(peer);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        assert!(s.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn session_close_fails_streams_and_ends_accept() {
        let ((client, mut client_in), (server, mut server_in)) = sessions().await;
        let mut a = client.open_stream().await.unwrap();
        a.write_all(b"x").await.unwrap();
        let mut b = server_in.accept().await.unwrap();
        let mut one = [0u8];
        b.read_exact(&mut one).await.unwrap();

        let pending_read = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let r = b.read(&mut buf).await;
            (r.is_err(), b)
        });
        tokio::task::yield_now().await;
        client.close();
        assert!(client.is_closed());
        client.closed().await;
        assert!(client_in.accept().await.is_none());
        assert!(a.read(&mut [0u8; 4]).await.is_err());
        assert!(a.write_all(b"y").await.is_err());
        assert!(client.open_stream().await.is_err());

        let t = tokio::time::timeout(Duration::from_secs(5), async {
            server.closed().await;
            assert!(server_in.accept().await.is_none());
            pending_read.await.unwrap()
        });
        let (read_failed, mut b) = t.await.expect("server noticed the close");
        assert!(read_failed, "pending read must fail, not hang or EOF");
        assert!(b.write_all(b"z").await.is_err());
        assert!(server.is_closed());
    }

    #[tokio::test]
    async fn dropping_every_handle_closes_the_session() {
        let ((client, client_in), (server, _server_in)) = sessions().await;
        let s = client.open_stream().await.unwrap();
        drop(client_in);
        drop(client);
        assert!(!server.is_closed());
        drop(s);
        tokio::time::timeout(Duration::from_secs(5), server.closed())
            .await
            .expect("server saw the session end");
    }

    /// A Go frpc opening a stream gets the ACK before anybody calls `accept` (Go drops the
    /// session when the ACK takes 75 s), and a Go ping is answered.
    #[tokio::test]
    async fn raw_go_bytes_are_acked_and_ponged() {
        let (mut go, ours) = tokio::io::duplex(64 * 1024);
        let (_session, _incoming) = session(ours, Config::frp(30), Mode::Server);
        let mut ack = [0u8; 12];
        go.read_exact(&mut ack).await.unwrap();
        assert_eq!(
            hex::encode(ack),
            "000200010000000066727075",
            "our hello ping"
        );
        go.write_all(&hex::decode("0001000100000001005c0000").unwrap())
            .await
            .unwrap();
        go.read_exact(&mut ack).await.unwrap();
        assert_eq!(hex::encode(ack), "0001000200000001005c0000");
        go.write_all(&hex::decode("000200010000000000000005").unwrap())
            .await
            .unwrap();
        go.read_exact(&mut ack).await.unwrap();
        assert_eq!(hex::encode(ack), "000200020000000000000005");
    }

    /// A session that has only seen a handshake's worth of bytes holds no read buffer between
    /// reads, let alone a 256 KiB one (a flood of sessions that never log in, or thousands of
    /// idle clients, must not cost that each): 2 KiB in all, was 6.2 KiB with a 4 KiB buffer
    /// kept.
    #[tokio::test]
    async fn a_session_that_saw_few_bytes_holds_a_small_read_buffer() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let before = crate::test_alloc::live_bytes();
        let (_session, _incoming) = session(ours, Config::frp(0), Mode::Server);
        // A ping: read, and answered, so the driver has read it.
        peer.write_all(&hex::decode("000200010000000000000005").unwrap())
            .await
            .unwrap();
        let mut pong = [0u8; 12];
        peer.read_exact(&mut pong).await.unwrap();
        let cost = crate::test_alloc::live_bytes() - before;
        println!("a fresh yamux session holds {cost} bytes");
        assert!(cost < 4 * 1024, "a fresh session holds {cost} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_keepalive_ends_the_session() {
        let (mut mute_peer, ours) = tokio::io::duplex(64 * 1024);
        let cfg = Config {
            keepalive_interval: Some(Duration::from_secs(30)),
            ..Config::frp(30)
        };
        let (session, mut incoming) = session(ours, cfg, Mode::Client);
        // The peer reads our hello and keepalive pings but never answers.
        let mut ping = [0u8; 12];
        mute_peer.read_exact(&mut ping).await.unwrap();
        assert_eq!(hex::encode(ping), "000200010000000066727075");
        mute_peer.read_exact(&mut ping).await.unwrap();
        assert_eq!(hex::encode(ping), "000200010000000000000000");
        let started = Instant::now();
        session.closed().await;
        assert!(started.elapsed() >= Duration::from_secs(10));
        assert_eq!(session.close_reason(), Some(YamuxError::KeepaliveTimeout));
        assert!(incoming.accept().await.is_none());
        // The socket was shut: the peer sees EOF.
        let mut rest = Vec::new();
        mute_peer.read_to_end(&mut rest).await.unwrap();
    }

    #[tokio::test]
    async fn protocol_error_ends_the_session_with_go_away() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let (session, _incoming) = session(ours, Config::frp(0), Mode::Server);
        peer.write_all(&hex::decode("070000000000000100000000").unwrap())
            .await
            .unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(
            hex::encode(rest),
            "000200010000000066727075000300000000000000000001"
        );
        session.closed().await;
        assert_eq!(session.close_reason(), Some(YamuxError::InvalidVersion(7)));
    }
}
