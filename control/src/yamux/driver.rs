//! The tokio driver: one task owns the socket and feeds the [`Connection`]; the handles
//! ([`Session`], [`Incoming`], [`Stream`]) share the core with it behind one mutex and are
//! woken from the core's events. Stream reads copy straight out of the core's per-stream
//! buffer, writes straight into its transmit queue; the task writes that queue to the socket
//! in one piece and reads the socket in 256 KiB chunks.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::connection::{Connection, Event};
use super::{Config, Mode, YamuxError};

const READ_CHUNK: usize = 256 * 1024;
/// Driver loop turns before it yields to other tasks.
const TURNS_PER_POLL: usize = 32;

/// Starts a yamux session over `io`: spawns the driver task (needs a tokio runtime).
pub fn session<T>(io: T, cfg: Config, mode: Mode) -> (Session, Incoming)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (closed_tx, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            conn: Connection::new(&cfg, mode, Instant::now().into_std()),
            read_wakers: HashMap::new(),
            write_wakers: HashMap::new(),
            accept_waker: None,
            open_wakers: Vec::new(),
            driver_waker: None,
            handles: 2,
        }),
        closed_tx,
    });
    let driver = Driver {
        io,
        shared: shared.clone(),
        read_buf: vec![0; READ_CHUNK],
        write_buf: None,
        need_flush: false,
        read_done: false,
        write_failed: false,
        write_stalled_since: None,
        write_timeout: cfg.connection_write_timeout,
        timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        timer_at: None,
        closing_deadline: None,
        shutting_down: false,
    };
    tokio::spawn(driver.run());
    (
        Session {
            shared: shared.clone(),
        },
        Incoming { shared },
    )
}

struct Shared {
    inner: Mutex<Inner>,
    closed_tx: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> Guard<'_> {
        Guard {
            inner: self.inner.lock().unwrap_or_else(|e| e.into_inner()),
            closed_tx: &self.closed_tx,
        }
    }
}

/// The locked core; dropping it delivers the core's events to the waiting handles.
struct Guard<'a> {
    inner: MutexGuard<'a, Inner>,
    closed_tx: &'a watch::Sender<bool>,
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
        self.inner.dispatch(self.closed_tx);
    }
}

struct Inner {
    conn: Connection,
    read_wakers: HashMap<u32, Waker>,
    write_wakers: HashMap<u32, Waker>,
    accept_waker: Option<Waker>,
    open_wakers: Vec<Waker>,
    driver_waker: Option<Waker>,
    /// Live Session clones + Incoming + Streams; at zero the session closes itself.
    handles: usize,
}

impl Inner {
    fn dispatch(&mut self, closed_tx: &watch::Sender<bool>) {
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
                Event::Closed => {
                    match self.conn.close_reason() {
                        Some(e) if !e.is_normal_close() => {
                            tracing::warn!(error = %e, "yamux session ended")
                        }
                        e => tracing::debug!(error = ?e, "yamux session ended"),
                    }
                    self.read_wakers.drain().for_each(|(_, w)| w.wake());
                    self.write_wakers.drain().for_each(|(_, w)| w.wake());
                    self.open_wakers.drain(..).for_each(Waker::wake);
                    wake(self.accept_waker.take());
                    closed_tx.send_replace(true);
                }
            }
        }
        if (self.conn.has_transmit() || self.conn.is_closed())
            && let Some(w) = &self.driver_waker
        {
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
        *self.shared.closed_tx.borrow()
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<YamuxError> {
        self.shared.lock().conn.close_reason().cloned()
    }

    /// Resolves when the session ends, for any reason.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed_tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Streams the peer opens.
pub struct Incoming {
    shared: Arc<Shared>,
}

impl Incoming {
    /// The next stream the peer opened; `None` once the session is over.
    pub async fn accept(&mut self) -> Option<Stream> {
        poll_fn(|cx| {
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
                    set_waker(&mut g.accept_waker, cx);
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for Incoming {
    /// Nobody accepts any more: the peer's new streams are reset.
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        g.conn.reject_incoming();
        g.release_handle();
    }
}

/// One yamux stream. Shutdown sends FIN (half-close); dropping it without shutdown sends FIN
/// too, and the session keeps draining the peer's data for it until the peer finishes.
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
        match g.conn.stream_read(id, buf.initialize_unfilled()) {
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

/// The task that owns the socket.
struct Driver<T> {
    io: T,
    shared: Arc<Shared>,
    read_buf: Vec<u8>,
    /// Frames taken from the core, partly written.
    write_buf: Option<Bytes>,
    need_flush: bool,
    read_done: bool,
    write_failed: bool,
    write_stalled_since: Option<Instant>,
    write_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    /// Once the session is over: how long we still try to flush and shut the socket.
    closing_deadline: Option<Instant>,
    shutting_down: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    async fn run(mut self) {
        poll_fn(|cx| self.poll(cx)).await;
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        set_waker(&mut self.shared.lock().driver_waker, cx);
        for _ in 0..TURNS_PER_POLL {
            let mut progress = self.poll_write(cx);
            progress |= self.poll_read(cx);

            let now = Instant::now();
            let (closed, mut deadline) = {
                let g = self.shared.lock();
                let core = g.conn.poll_timeout().map(Instant::from_std);
                (g.conn.is_closed(), core)
            };
            if closed {
                let done_at = *self
                    .closing_deadline
                    .get_or_insert(now + self.write_timeout);
                let flushed = self.write_buf.is_none() && !self.shared.lock().conn.has_transmit();
                if flushed || self.write_failed || now >= done_at {
                    if !self.shutting_down {
                        self.shutting_down = true;
                        self.write_buf = None;
                    }
                    // TLS may need to write close_notify; bounded by the same deadline.
                    match Pin::new(&mut self.io).poll_shutdown(cx) {
                        Poll::Pending if now < done_at && !self.write_failed => {}
                        _ => return Poll::Ready(()),
                    }
                }
                deadline = Some(done_at);
            } else if let Some(since) = self.write_stalled_since {
                let stall_at = since + self.write_timeout;
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
                if self.timer_at != Some(d) {
                    self.timer.as_mut().reset(d);
                    self.timer_at = Some(d);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes queued frames until the socket would block. Returns whether anything moved.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.write_failed && !self.shutting_down {
            if self.write_buf.is_none() {
                self.write_buf = self.shared.lock().conn.poll_transmit();
            }
            let Some(buf) = self.write_buf.as_mut() else {
                break;
            };
            match Pin::new(&mut self.io).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    buf.advance(n);
                    if buf.is_empty() {
                        self.write_buf = None;
                    }
                    self.need_flush = true;
                    self.write_stalled_since = None;
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
            match Pin::new(&mut self.io).poll_flush(cx) {
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

    fn write_failed(&mut self, e: &io::Error) {
        self.write_failed = true;
        self.write_buf = None;
        self.shared.lock().conn.handle_error(YamuxError::io(e));
    }

    /// Reads one chunk from the socket into the core. Returns whether anything moved.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.read_done || self.shared.lock().conn.is_closed() {
            return false;
        }
        let mut rb = ReadBuf::new(&mut self.read_buf);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                let mut g = self.shared.lock();
                if n == 0 {
                    self.read_done = true;
                    g.conn.handle_eof();
                } else {
                    // A protocol error closes the core, which the loop then notices.
                    let _ = g.conn.handle_input(&self.read_buf[..n]);
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

impl<T> Drop for Driver<T> {
    /// The task is gone (finished, or the runtime shut down): nobody may wait on it.
    fn drop(&mut self) {
        self.shared
            .lock()
            .conn
            .handle_error(YamuxError::SessionClosed);
    }
}
