//! The sans-IO yamux session: one [`Connection`] per multiplexed socket. It parses bytes handed
//! to [`Connection::handle_input`], queues frames for [`Connection::poll_transmit`], reports
//! what changed through [`Connection::poll_event`], and keeps time only through
//! [`Connection::handle_timeout`]. It never touches a socket or reads a clock.
//!
//! Semantics follow hashicorp/yamux (as forked by fatedier/yamux), with two deliberate
//! differences that a Go peer cannot observe except as "faster": incoming streams are ACKed
//! as soon as their SYN arrives (Go ACKs lazily on `Accept`, and a Go opener gives up after
//! 75 s without an ACK), and a stream the application dropped behaves like a closed TCP
//! socket: released with unread data, or receiving data afterwards, it answers RST (Go keeps
//! buffering into the dead stream until the window is full, then stalls the writer until its
//! 5-minute close timeout).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::frame::*;
use super::{Config, Mode, YamuxError};

/// Stop accepting stream writes while this much is already queued for the socket; the writers
/// are told (`StreamWritable`) once the driver takes the queue.
const TRANSMIT_HIGH_WATER: usize = 512 * 1024;
/// Largest Data frame we emit, so that streams sharing the socket interleave.
const MAX_DATA_FRAME: usize = 64 * 1024;
/// Payloads at least this large are kept as slices of the socket chunk they came in (see
/// [`Connection::handle_input_bytes`]); smaller ones are copied.
const ZERO_COPY_MIN: usize = 8 * 1024;
/// A stream that already has data buffered (its reader lags) keeps a payload as a slice only
/// when the payload is at least this fraction of its chunk: a slice pins its whole chunk, so
/// what a stream pins stays within this many times what it buffers (itself bounded by the
/// receive window).
const PIN_RATIO: usize = 8;

/// The transmit buffer a session that only sends small frames (control messages) grows to.
const SMALL_TRANSMIT: usize = 1024;

/// `stream_read_chunk` hands out a first chunk of at least this size as it is; smaller pieces
/// are copied out together (a write per small piece costs more than copying it).
const COALESCE_BELOW: usize = 4 * 1024;

/// What [`Connection::stream_read_chunk`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Received bytes as they are held (a slice of a socket chunk, not copied).
    Chunk(Bytes),
    /// This many bytes were copied into the caller's buffer.
    Copied(usize),
}

/// The bytes received for a stream and not yet read, as the chunks they came in. Empty, it
/// holds no memory.
#[derive(Debug, Default)]
struct RecvBuf {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl RecvBuf {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.chunks.push_back(data);
        }
    }

    /// The first chunk without copying when it is large (at most `buf.len()` bytes of it),
    /// else as much as fits copied into `buf`: a write per small piece would cost more than
    /// the copy.
    fn take_or_read(&mut self, buf: &mut [u8]) -> Received {
        match self.chunks.front_mut() {
            Some(first) if first.len() >= COALESCE_BELOW.min(buf.len()) => {
                let chunk = if first.len() > buf.len() {
                    first.split_to(buf.len())
                } else {
                    self.chunks.pop_front().expect("a first chunk")
                };
                self.len -= chunk.len();
                self.release_if_empty();
                Received::Chunk(chunk)
            }
            _ => Received::Copied(self.read(buf)),
        }
    }

    /// Copies out as much as fits into `buf`.
    fn read(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len()
            && let Some(first) = self.chunks.front_mut()
        {
            let m = (buf.len() - n).min(first.len());
            buf[n..n + m].copy_from_slice(&first[..m]);
            first.advance(m);
            n += m;
            if first.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.len -= n;
        self.release_if_empty();
        n
    }

    fn release_if_empty(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            self.chunks = VecDeque::new();
        }
    }
}

/// Something the driver (or a test) should react to. Events are notifications; the state they
/// announce is read back through the `stream_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream; take it with [`Connection::accept_stream`].
    IncomingStream(u32),
    /// The peer ACKed a stream we opened.
    StreamEstablished(u32),
    /// Data, EOF or an error can be read from the stream.
    StreamReadable(u32),
    /// The stream's send window grew, transmit room freed up, or the stream errored.
    StreamWritable(u32),
    /// The peer half-closed the stream (FIN).
    StreamFinished(u32),
    /// The stream was reset (by the peer, or locally).
    StreamReset(u32),
    /// A slot for opening a stream became free ([`Connection::open_stream`] returned `None`).
    OpenReady,
    /// The peer answered a ping sent with [`Connection::send_ping`].
    PingAck(u32),
    /// The peer sent a normal GoAway: no new streams can be opened.
    GoAway(u32),
    /// The peer opened a stream while `accept_backlog` streams waited to be accepted: it was
    /// reset (the driver logs it, within a line budget: a burst can refuse thousands).
    BacklogExceeded(u32),
    /// The session is over; [`Connection::close_reason`] says why.
    Closed,
}

#[derive(Debug)]
struct StreamState {
    /// Outgoing stream still waiting for its ACK (counted in `inflight_syn`).
    syn_inflight: bool,
    recv_buf: RecvBuf,
    /// How many more bytes the peer may send us.
    recv_window: u32,
    /// How many more bytes we may send the peer.
    send_window: u32,
    local_fin: bool,
    remote_fin: bool,
    /// The peer's FIN closed the stream both ways (a Go peer, see `peer_half_closes`).
    peer_closed: bool,
    reset: bool,
    /// The application let go of the stream: data arriving now resets it.
    released: bool,
    /// Listed in `Connection::tx_blocked`.
    tx_blocked: bool,
    /// The peer considers the stream gone (both FINs, or a RST): its frames are ignored now.
    wire_done: bool,
}

impl StreamState {
    fn new(outgoing: bool) -> Self {
        StreamState {
            syn_inflight: outgoing,
            recv_buf: RecvBuf::default(),
            recv_window: INITIAL_STREAM_WINDOW,
            send_window: INITIAL_STREAM_WINDOW,
            local_fin: false,
            remote_fin: false,
            peer_closed: false,
            reset: false,
            released: false,
            tx_blocked: false,
            wire_done: false,
        }
    }
}

/// Payload of the Data frame being received.
#[derive(Debug)]
struct Payload {
    stream_id: u32,
    remaining: u32,
    /// For a stream we no longer track: skip the bytes.
    discard: bool,
}

#[derive(Debug)]
struct Keepalive {
    interval: Duration,
    next_ping: Instant,
    /// The keepalive ping awaiting its answer: (opaque id, deadline).
    outstanding: Option<(u32, Instant)>,
    next_id: u32,
}

/// One yamux session, without I/O.
#[derive(Debug)]
pub struct Connection {
    mode: Mode,
    accept_backlog: usize,
    max_window: u32,
    ping_timeout: Duration,
    next_stream_id: u32,
    streams: HashMap<u32, StreamState>,
    accept_queue: VecDeque<u32>,
    inflight_syn: usize,
    header_buf: [u8; HEADER_LEN],
    header_len: usize,
    payload: Option<Payload>,
    out: BytesMut,
    /// A written transmit buffer kept for reuse.
    spare: Option<BytesMut>,
    /// Streams refused for lack of transmit room, told when the queue is taken.
    tx_blocked: Vec<u32>,
    events: VecDeque<Event>,
    closed: Option<YamuxError>,
    local_go_away: bool,
    remote_go_away: bool,
    reject_incoming: bool,
    keepalive: Option<Keepalive>,
    /// The peer announced (with [`HALF_CLOSE_HELLO`]) that its FIN is a half-close. Without
    /// that (a Go peer), a FIN means the peer closed the stream for good: writes to it fail.
    peer_half_closes: bool,
}

impl Connection {
    /// A new session. `now` anchors the keepalive schedule.
    pub fn new(cfg: &Config, mode: Mode, now: Instant) -> Self {
        let mut out = BytesMut::new();
        put_header(&mut out, TYPE_PING, FLAG_SYN, 0, HALF_CLOSE_HELLO);
        Connection {
            mode,
            accept_backlog: cfg.accept_backlog.max(1),
            // Go refuses a MaxStreamWindowSize below the initial window.
            max_window: cfg.max_stream_window.max(INITIAL_STREAM_WINDOW),
            ping_timeout: cfg.connection_write_timeout,
            next_stream_id: match mode {
                Mode::Client => 1,
                Mode::Server => 2,
            },
            streams: HashMap::new(),
            accept_queue: VecDeque::new(),
            inflight_syn: 0,
            header_buf: [0; HEADER_LEN],
            header_len: 0,
            payload: None,
            out,
            spare: None,
            tx_blocked: Vec::new(),
            events: VecDeque::new(),
            closed: None,
            local_go_away: false,
            remote_go_away: false,
            reject_incoming: false,
            keepalive: cfg.keepalive_interval.map(|interval| Keepalive {
                interval,
                next_ping: now + interval,
                outstanding: None,
                next_id: 0,
            }),
            peer_half_closes: false,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<&YamuxError> {
        self.closed.as_ref()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Streams the session still tracks (including released ones draining the peer's data).
    pub fn num_streams(&self) -> usize {
        self.streams.len()
    }

    /// The next thing that changed.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Every frame queued so far, coalesced into one buffer.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        for id in self.tx_blocked.drain(..) {
            if let Some(st) = self.streams.get_mut(&id) {
                st.tx_blocked = false;
            }
            self.events.push_back(Event::StreamWritable(id));
        }
        let spare = self.spare.take().unwrap_or_default();
        Some(std::mem::replace(&mut self.out, spare).freeze())
    }

    /// Hands back a buffer from [`Connection::poll_transmit`] once written, so the next
    /// frames reuse its memory instead of allocating. Only bulk buffers are kept: a small
    /// one (a control message's) is cheaper to make again than to hold in every idle
    /// session until it goes quiet.
    pub fn recycle_transmit(&mut self, buf: Bytes) {
        let Ok(mut m) = buf.try_into_mut() else {
            return;
        };
        if m.capacity() < ZERO_COPY_MIN {
            return;
        }
        m.clear();
        if m.capacity() > self.out.capacity() {
            m.extend_from_slice(&self.out);
            self.out = m;
        } else if self
            .spare
            .as_ref()
            .is_none_or(|s| s.capacity() < m.capacity())
        {
            self.spare = Some(m);
        }
    }

    /// Frees buffer memory kept for reuse; for the driver to call when the session goes quiet,
    /// so idle sessions hold no large buffers.
    pub fn shrink_buffers(&mut self) {
        self.spare = None;
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
        for st in self.streams.values_mut() {
            if st.recv_buf.is_empty() {
                st.recv_buf = RecvBuf::default();
            }
        }
    }

    pub fn has_transmit(&self) -> bool {
        !self.out.is_empty()
    }

    /// When [`Connection::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let ka = self.keepalive.as_ref()?;
        Some(match ka.outstanding {
            Some((_, deadline)) => deadline,
            None => ka.next_ping,
        })
    }

    /// Runs the keepalive: sends a ping when due, ends the session when one went unanswered
    /// for `connection_write_timeout` (like Go, one keepalive ping is in flight at a time).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        let Some(ka) = self.keepalive.as_mut() else {
            return;
        };
        match ka.outstanding {
            Some((_, deadline)) => {
                if now >= deadline {
                    self.fail(YamuxError::KeepaliveTimeout, None);
                }
            }
            None => {
                if now >= ka.next_ping {
                    let id = ka.next_id;
                    ka.next_id = ka.next_id.wrapping_add(1);
                    ka.outstanding = Some((id, now + self.ping_timeout));
                    ka.next_ping = now + ka.interval;
                    put_header(&mut self.out, TYPE_PING, FLAG_SYN, 0, id);
                }
            }
        }
    }

    /// Sends a ping; its answer shows up as [`Event::PingAck`].
    pub fn send_ping(&mut self, opaque: u32) {
        if self.closed.is_none() {
            put_header(&mut self.out, TYPE_PING, FLAG_SYN, 0, opaque);
        }
    }

    /// Sends a GoAway with `code`; from now on incoming streams are refused (RST).
    pub fn go_away(&mut self, code: u32) {
        if self.closed.is_none() {
            self.local_go_away = true;
            put_header(&mut self.out, TYPE_GO_AWAY, 0, 0, code);
        }
    }

    /// Refuse (RST) incoming streams from now on, including those not yet accepted: nobody
    /// will accept them.
    pub fn reject_incoming(&mut self) {
        self.reject_incoming = true;
        while let Some(id) = self.accept_queue.pop_front() {
            self.stream_reset(id);
            self.stream_release(id);
        }
    }

    /// Ends the session normally: sends GoAway(normal); streams then fail with "session closed".
    /// The driver should flush [`Connection::poll_transmit`] and close the socket.
    pub fn close(&mut self) {
        if self.closed.is_none() {
            put_header(&mut self.out, TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL);
            self.set_closed(YamuxError::SessionClosed);
        }
    }

    /// The socket reached EOF.
    pub fn handle_eof(&mut self) {
        if self.closed.is_none() {
            self.set_closed(YamuxError::ConnectionEof);
        }
    }

    /// The socket failed (read or write error, write stall).
    pub fn handle_error(&mut self, err: YamuxError) {
        if self.closed.is_none() {
            self.set_closed(err);
        }
    }

    fn set_closed(&mut self, err: YamuxError) {
        self.closed = Some(err);
        self.events.push_back(Event::Closed);
    }

    /// Protocol violation: GoAway(code) when given, then the session is over.
    fn fail(&mut self, err: YamuxError, go_away: Option<u32>) {
        if self.closed.is_some() {
            return;
        }
        if let Some(code) = go_away {
            self.local_go_away = true;
            put_header(&mut self.out, TYPE_GO_AWAY, 0, 0, code);
        }
        self.set_closed(err);
    }

    // ---------------------------------------------------------------- streams, local side

    /// Opens a stream: queues WindowUpdate+SYN advertising the full window. `Ok(None)` while
    /// `accept_backlog` opened streams still await their ACK (Go blocks there too); retry on
    /// [`Event::OpenReady`].
    pub fn open_stream(&mut self) -> Result<Option<u32>, YamuxError> {
        if let Some(err) = &self.closed {
            return Err(err.clone());
        }
        if self.remote_go_away {
            return Err(YamuxError::RemoteGoAway);
        }
        if self.inflight_syn >= self.accept_backlog {
            return Ok(None);
        }
        let id = self.next_stream_id;
        if id >= u32::MAX - 1 {
            return Err(YamuxError::StreamsExhausted);
        }
        self.next_stream_id += 2;
        let mut st = StreamState::new(true);
        let delta = self.max_window - st.recv_window;
        st.recv_window += delta;
        put_header(&mut self.out, TYPE_WINDOW_UPDATE, FLAG_SYN, id, delta);
        self.streams.insert(id, st);
        self.inflight_syn += 1;
        Ok(Some(id))
    }

    /// The next incoming stream (already ACKed on the wire).
    pub fn accept_stream(&mut self) -> Option<u32> {
        self.accept_queue.pop_front()
    }

    /// Reads buffered data. `Ok(Some(n))` with n > 0: data; `Ok(Some(0))`: EOF (the peer
    /// half-closed and everything was read); `Ok(None)`: nothing yet, wait for
    /// [`Event::StreamReadable`].
    pub fn stream_read(&mut self, id: u32, buf: &mut [u8]) -> Result<Option<usize>, YamuxError> {
        self.stream_consume(id, |rb| rb.read(buf), 0)
    }

    /// [`Connection::stream_read`] that avoids the copy for large pieces: up to `buf.len()`
    /// (> 0) buffered bytes, either handed out as they are held (a large received chunk) or
    /// copied into `buf` (small pieces, joined). `Ok(Some(Copied(0)))`: EOF.
    pub fn stream_read_chunk(
        &mut self,
        id: u32,
        buf: &mut [u8],
    ) -> Result<Option<Received>, YamuxError> {
        self.stream_consume(id, |rb| rb.take_or_read(buf), Received::Copied(0))
    }

    /// Takes buffered bytes with `take` (and credits the window), or says EOF (`eof`), error,
    /// or nothing yet (`None`).
    fn stream_consume<T>(
        &mut self,
        id: u32,
        take: impl FnOnce(&mut RecvBuf) -> T,
        eof: T,
    ) -> Result<Option<T>, YamuxError> {
        let max_window = self.max_window;
        let inflight = self.inflight(id);
        let Some(st) = self.streams.get_mut(&id) else {
            return Err(YamuxError::UnknownStream(id));
        };
        if st.reset {
            return Err(YamuxError::StreamReset);
        }
        if !st.recv_buf.is_empty() {
            let got = take(&mut st.recv_buf);
            if self.closed.is_none() && !st.wire_done {
                credit_window(&mut self.out, id, st, max_window, inflight);
            }
            return Ok(Some(got));
        }
        if st.remote_fin {
            return Ok(Some(eof));
        }
        if let Some(err) = &self.closed {
            return Err(err.clone());
        }
        Ok(None)
    }

    /// Bytes buffered for reading.
    pub fn stream_buffered(&self, id: u32) -> usize {
        self.streams.get(&id).map_or(0, |s| s.recv_buf.len())
    }

    /// What the peer still lets us send on the stream.
    pub fn stream_send_window(&self, id: u32) -> u32 {
        self.streams.get(&id).map_or(0, |s| s.send_window)
    }

    /// Queues as much of `data` as the peer's window and the transmit queue allow. `Ok(0)` for
    /// a non-empty `data` means "blocked": wait for [`Event::StreamWritable`].
    pub fn stream_write(&mut self, id: u32, data: &[u8]) -> Result<usize, YamuxError> {
        let st = sendable(&self.closed, &mut self.streams, id)?;
        let mut written = 0;
        while written < data.len() && st.send_window > 0 && self.out.len() < TRANSMIT_HIGH_WATER {
            let n = (data.len() - written)
                .min(st.send_window as usize)
                .min(MAX_DATA_FRAME);
            reserve_frame(&mut self.out, n);
            put_header(&mut self.out, TYPE_DATA, 0, id, n as u32);
            self.out.extend_from_slice(&data[written..written + n]);
            st.send_window -= n as u32;
            written += n;
        }
        if written == 0 && !data.is_empty() && st.send_window > 0 && !st.tx_blocked {
            st.tx_blocked = true;
            self.tx_blocked.push(id);
        }
        Ok(written)
    }

    /// Queues one Data frame whose payload `fill` puts straight into the transmit queue (a
    /// socket read: no copy through a buffer of the caller's). `fill` gets room for at most
    /// `max` bytes (less when the peer's window or the frame size is smaller); what it puts
    /// there is sent, and its result is passed back with the count. `Ok(None)`: the stream
    /// cannot take data now (`fill` is not called): wait for [`Event::StreamWritable`].
    pub fn stream_write_with<R>(
        &mut self,
        id: u32,
        max: usize,
        fill: impl FnOnce(&mut dyn BufMut) -> R,
    ) -> Result<Option<(usize, R)>, YamuxError> {
        let st = sendable(&self.closed, &mut self.streams, id)?;
        if st.send_window == 0 || self.out.len() >= TRANSMIT_HIGH_WATER || max == 0 {
            if st.send_window > 0 && max > 0 && !st.tx_blocked {
                st.tx_blocked = true;
                self.tx_blocked.push(id);
            }
            return Ok(None);
        }
        let n = max.min(st.send_window as usize).min(MAX_DATA_FRAME);
        reserve_frame(&mut self.out, n);
        let start = self.out.len();
        put_header(&mut self.out, TYPE_DATA, 0, id, 0);
        let r = fill(&mut (&mut self.out).limit(n));
        let k = self.out.len() - start - HEADER_LEN;
        if k == 0 {
            self.out.truncate(start);
        } else {
            // The length field is the header's last four bytes.
            self.out[start + HEADER_LEN - 4..start + HEADER_LEN]
                .copy_from_slice(&(k as u32).to_be_bytes());
            st.send_window -= k as u32;
        }
        Ok(Some((k, r)))
    }

    /// Half-closes the stream (FIN, sent as a WindowUpdate with zero delta like Go). Idempotent.
    pub fn stream_close(&mut self, id: u32) -> Result<(), YamuxError> {
        if self.closed.is_some() {
            return Ok(());
        }
        let Some(st) = self.streams.get_mut(&id) else {
            return Err(YamuxError::UnknownStream(id));
        };
        if st.reset || st.local_fin {
            return Ok(());
        }
        st.local_fin = true;
        put_header(&mut self.out, TYPE_WINDOW_UPDATE, FLAG_FIN, id, 0);
        if st.remote_fin {
            self.wire_done(id);
        }
        Ok(())
    }

    /// Aborts the stream (RST): both directions fail from now on.
    pub fn stream_reset(&mut self, id: u32) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        if st.reset {
            return;
        }
        st.reset = true;
        st.recv_buf = RecvBuf::default();
        if self.closed.is_none() && !st.wire_done {
            put_header(&mut self.out, TYPE_WINDOW_UPDATE, FLAG_RST, id, 0);
        }
        self.events.push_back(Event::StreamReset(id));
        self.events.push_back(Event::StreamReadable(id));
        self.events.push_back(Event::StreamWritable(id));
        self.wire_done(id);
    }

    /// The application no longer holds the stream, as `close()` of a TCP socket: FIN if not
    /// yet sent, or RST when data it never read is buffered (the peer learns that what it sent
    /// was not taken). Data arriving after the release resets the stream too (see `deliver`),
    /// so a peer that keeps sending is stopped instead of streaming into nothing.
    pub fn stream_release(&mut self, id: u32) {
        let closed = self.closed.is_some();
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.released = true;
        if closed || st.wire_done {
            // A Data payload for it may still be arriving: `deliver` forgets it afterwards.
            if closed || self.payload.as_ref().is_none_or(|p| p.stream_id != id) {
                self.remove(id);
            }
            return;
        }
        if !st.recv_buf.is_empty() {
            return self.stream_reset(id);
        }
        if !st.local_fin && !st.reset {
            st.local_fin = true;
            put_header(&mut self.out, TYPE_WINDOW_UPDATE, FLAG_FIN, id, 0);
        }
        if st.remote_fin {
            self.wire_done(id);
        }
    }

    /// Marks the stream gone on the wire; forgets it if the application is done with it too.
    fn wire_done(&mut self, id: u32) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.wire_done = true;
        if st.syn_inflight {
            st.syn_inflight = false;
            self.inflight_syn -= 1;
            self.events.push_back(Event::OpenReady);
        }
        if st.released {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u32) {
        if let Some(st) = self.streams.remove(&id)
            && st.syn_inflight
        {
            self.inflight_syn -= 1;
            self.events.push_back(Event::OpenReady);
        }
    }

    // ---------------------------------------------------------------- input

    /// Feeds bytes read from the socket; split points are arbitrary. Errors end the session
    /// (the GoAway to send is queued); the same error is kept in [`Connection::close_reason`].
    pub fn handle_input(&mut self, input: &[u8]) -> Result<(), YamuxError> {
        self.handle_input_from(input, None)
    }

    /// [`Connection::handle_input`] for a chunk the caller owns as [`Bytes`]: large Data
    /// payloads are handed to their stream as slices of it instead of being copied.
    pub fn handle_input_bytes(&mut self, input: &Bytes) -> Result<(), YamuxError> {
        self.handle_input_from(input, Some(input))
    }

    /// `owner`, when given, holds exactly the bytes of `input`.
    fn handle_input_from(
        &mut self,
        mut input: &[u8],
        owner: Option<&Bytes>,
    ) -> Result<(), YamuxError> {
        while !input.is_empty() {
            if let Some(err) = &self.closed {
                return Err(err.clone());
            }
            if let Some(p) = &mut self.payload {
                let n = (p.remaining as usize).min(input.len());
                let (id, discard) = (p.stream_id, p.discard);
                p.remaining -= n as u32;
                if p.remaining == 0 {
                    self.payload = None;
                }
                if !discard {
                    self.deliver(id, &input[..n], owner);
                }
                input = &input[n..];
                continue;
            }
            let hdr = if self.header_len == 0 && input.len() >= HEADER_LEN {
                let (h, rest) = input.split_at(HEADER_LEN);
                input = rest;
                Header::decode(h.try_into().expect("12 bytes"))
            } else {
                let n = (HEADER_LEN - self.header_len).min(input.len());
                self.header_buf[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
                self.header_len += n;
                input = &input[n..];
                if self.header_len < HEADER_LEN {
                    break;
                }
                self.header_len = 0;
                Header::decode(&self.header_buf)
            };
            self.handle_header(hdr);
        }
        match &self.closed {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    fn handle_header(&mut self, hdr: Header) {
        if hdr.version != PROTO_VERSION {
            return self.fail(
                YamuxError::InvalidVersion(hdr.version),
                Some(GO_AWAY_PROTOCOL_ERROR),
            );
        }
        match hdr.typ {
            TYPE_DATA | TYPE_WINDOW_UPDATE => self.handle_stream_frame(hdr),
            TYPE_PING => self.handle_ping(hdr),
            TYPE_GO_AWAY => self.handle_go_away(hdr.length),
            t => self.fail(
                YamuxError::InvalidMessageType(t),
                Some(GO_AWAY_PROTOCOL_ERROR),
            ),
        }
    }

    fn handle_ping(&mut self, hdr: Header) {
        if hdr.has(FLAG_SYN) {
            if hdr.length == HALF_CLOSE_HELLO {
                self.peer_half_closes = true;
            }
            put_header(&mut self.out, TYPE_PING, FLAG_ACK, 0, hdr.length);
            return;
        }
        if hdr.length == HALF_CLOSE_HELLO {
            return; // the answer to our hello
        }
        if let Some(ka) = &mut self.keepalive
            && let Some((id, _)) = ka.outstanding
            && id == hdr.length
        {
            ka.outstanding = None;
            return;
        }
        self.events.push_back(Event::PingAck(hdr.length));
    }

    fn handle_go_away(&mut self, code: u32) {
        match code {
            GO_AWAY_NORMAL => {
                self.remote_go_away = true;
                self.events.push_back(Event::GoAway(code));
                // Openers waiting for a slot must learn that none will come.
                self.events.push_back(Event::OpenReady);
            }
            GO_AWAY_PROTOCOL_ERROR => self.fail(YamuxError::RemoteProtocolError, None),
            GO_AWAY_INTERNAL_ERROR => self.fail(YamuxError::RemoteInternalError, None),
            other => self.fail(YamuxError::UnexpectedGoAway(other), None),
        }
    }

    fn handle_stream_frame(&mut self, hdr: Header) {
        let id = hdr.stream_id;
        if hdr.has(FLAG_SYN) {
            self.incoming_stream(id);
            if self.closed.is_some() {
                return;
            }
        }
        let is_data = hdr.typ == TYPE_DATA;
        let Some(st) = self.streams.get_mut(&id).filter(|s| !s.wire_done) else {
            // A stream we reset, refused or finished: Go drops such frames too.
            if is_data && hdr.length > 0 {
                tracing::debug!(
                    stream = id,
                    len = hdr.length,
                    "yamux: discarding data for unknown stream"
                );
                self.payload = Some(Payload {
                    stream_id: id,
                    remaining: hdr.length,
                    discard: true,
                });
            }
            return;
        };

        if hdr.has(FLAG_ACK) && st.syn_inflight {
            st.syn_inflight = false;
            self.inflight_syn -= 1;
            self.events.push_back(Event::StreamEstablished(id));
            self.events.push_back(Event::OpenReady);
        }
        let mut finished = false;
        if hdr.has(FLAG_FIN) {
            if st.remote_fin {
                return self.fail(YamuxError::UnexpectedFin(id), Some(GO_AWAY_PROTOCOL_ERROR));
            }
            st.remote_fin = true;
            // A Go peer's FIN is a full close: it will not read what we still send, and
            // would only stall our writer once its window is full (then reset the stream 5
            // minutes later). Fail our writes now, as frp's join closes both ends.
            st.peer_closed = !self.peer_half_closes;
            if st.peer_closed {
                self.events.push_back(Event::StreamWritable(id));
            }
            finished = st.local_fin;
            self.events.push_back(Event::StreamFinished(id));
            self.events.push_back(Event::StreamReadable(id));
        }
        if hdr.has(FLAG_RST) {
            st.reset = true;
            st.recv_buf = RecvBuf::default();
            finished = true;
            self.events.push_back(Event::StreamReset(id));
            self.events.push_back(Event::StreamReadable(id));
            self.events.push_back(Event::StreamWritable(id));
        }

        if is_data {
            if hdr.length > 0 {
                if hdr.length > st.recv_window {
                    let err = YamuxError::RecvWindowExceeded {
                        stream: id,
                        window: st.recv_window,
                        len: hdr.length,
                    };
                    return self.fail(err, Some(GO_AWAY_PROTOCOL_ERROR));
                }
                st.recv_window -= hdr.length;
                self.payload = Some(Payload {
                    stream_id: id,
                    remaining: hdr.length,
                    discard: false,
                });
            }
        } else if hdr.length > 0 {
            st.send_window = st.send_window.saturating_add(hdr.length);
            self.events.push_back(Event::StreamWritable(id));
        }
        if finished {
            // Keep the entry (the payload of this frame, if any, is still delivered to it);
            // further frames for the id are ignored.
            let released = st.released;
            st.wire_done = true;
            if st.syn_inflight {
                st.syn_inflight = false;
                self.inflight_syn -= 1;
                self.events.push_back(Event::OpenReady);
            }
            if released && self.payload.is_none() {
                self.streams.remove(&id);
            }
        }
    }

    fn incoming_stream(&mut self, id: u32) {
        if self.local_go_away || self.reject_incoming {
            put_header(&mut self.out, TYPE_WINDOW_UPDATE, FLAG_RST, id, 0);
            return;
        }
        if self.streams.contains_key(&id) {
            return self.fail(
                YamuxError::DuplicateStream(id),
                Some(GO_AWAY_PROTOCOL_ERROR),
            );
        }
        if self.accept_queue.len() >= self.accept_backlog {
            put_header(&mut self.out, TYPE_WINDOW_UPDATE, FLAG_RST, id, 0);
            self.events.push_back(Event::BacklogExceeded(id));
            return;
        }
        let mut st = StreamState::new(false);
        // ACK right away with the full window, instead of on accept like Go.
        let delta = self.max_window - st.recv_window;
        st.recv_window += delta;
        put_header(&mut self.out, TYPE_WINDOW_UPDATE, FLAG_ACK, id, delta);
        self.streams.insert(id, st);
        self.accept_queue.push_back(id);
        self.events.push_back(Event::IncomingStream(id));
    }

    /// Bytes of the Data frame being received for stream `id` that have not arrived yet.
    fn inflight(&self, id: u32) -> u32 {
        match &self.payload {
            Some(p) if p.stream_id == id && !p.discard => p.remaining,
            _ => 0,
        }
    }

    /// Payload bytes of the current Data frame for stream `id`.
    fn deliver(&mut self, id: u32, data: &[u8], owner: Option<&Bytes>) {
        let done = self.payload.is_none();
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        if st.reset || (st.released && st.wire_done) {
            // Data riding on a RST frame (Go buffers it but its reads fail), or on the FIN
            // of a stream we already released: nobody reads it.
        } else if st.released {
            // Nobody will read it: like TCP, answer data for a closed stream with a reset.
            // (The reset forgets the released stream; the rest of this payload is skipped.)
            return self.stream_reset(id);
        } else {
            // A large payload of a chunk read from the socket is kept as a slice of it (no
            // copy) when the stream has nothing else buffered, i.e. its reader keeps up, or
            // when it is a large part of its chunk ([`PIN_RATIO`]); a lagging stream copies
            // small parts, so it never pins many chunks for a few bytes each. (Copying every
            // payload of a bulk stream whose writer is a little behind cost ~5 % of a tcpMux
            // tunnel's CPU: the copy plus page faults on the fresh allocations.)
            match owner {
                Some(chunk)
                    if data.len() >= ZERO_COPY_MIN
                        && (st.recv_buf.is_empty() || data.len() * PIN_RATIO >= chunk.len()) =>
                {
                    st.recv_buf.push(chunk.slice_ref(data))
                }
                _ => st.recv_buf.push(Bytes::copy_from_slice(data)),
            }
            self.events.push_back(Event::StreamReadable(id));
        }
        if done && st.wire_done && st.released {
            self.streams.remove(&id);
        }
    }
}

/// The state of stream `id` if it may still send data, else why not.
fn sendable<'a>(
    closed: &Option<YamuxError>,
    streams: &'a mut HashMap<u32, StreamState>,
    id: u32,
) -> Result<&'a mut StreamState, YamuxError> {
    if let Some(err) = closed {
        return Err(err.clone());
    }
    let Some(st) = streams.get_mut(&id) else {
        return Err(YamuxError::UnknownStream(id));
    };
    if st.reset {
        return Err(YamuxError::StreamReset);
    }
    if st.local_fin {
        return Err(YamuxError::StreamClosed);
    }
    if st.peer_closed {
        return Err(YamuxError::PeerClosed);
    }
    Ok(st)
}

/// Makes room in the transmit queue for a Data frame with `n` bytes of payload.
fn reserve_frame(out: &mut BytesMut, n: usize) {
    if out.capacity() - out.len() < HEADER_LEN + n {
        // Bulk writes: one allocation for a whole batch, not a doubling series. Small ones
        // (control messages) only what they need: a batch-sized buffer for every session that
        // sent a message would be ~0.5 MiB each, and the allocator keeps the pages such
        // buffers touched.
        out.reserve(if n >= ZERO_COPY_MIN || out.len() >= ZERO_COPY_MIN {
            TRANSMIT_HIGH_WATER + MAX_DATA_FRAME + HEADER_LEN
        } else {
            (HEADER_LEN + n).max(SMALL_TRANSMIT)
        });
    }
}

/// Go's `sendWindowUpdate`: give back what the application consumed once it is at least half
/// the maximum window.
///
/// `inflight` is the part of the current Data frame for this stream that has not arrived yet:
/// it was taken from `recv_window` when the frame header came, so it must not be credited
/// again (a frame split across reads would otherwise over-credit the peer's window).
fn credit_window(
    out: &mut BytesMut,
    id: u32,
    st: &mut StreamState,
    max_window: u32,
    inflight: u32,
) {
    let used = (st.recv_buf.len() as u32).saturating_add(inflight);
    let delta = max_window
        .saturating_sub(used)
        .saturating_sub(st.recv_window);
    if delta < max_window / 2 {
        return;
    }
    st.recv_window += delta;
    put_header(out, TYPE_WINDOW_UPDATE, 0, id, delta);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// Deterministic xorshift, so failures replay.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn no_keepalive() -> Config {
        Config::frp(0)
    }

    /// Two cores that have exchanged their hellos (both half-close).
    fn pair(cfg_client: &Config, cfg_server: &Config) -> (Connection, Connection, Instant) {
        let now = Instant::now();
        let mut c = Connection::new(cfg_client, Mode::Client, now);
        let mut s = Connection::new(cfg_server, Mode::Server, now);
        for _ in 0..2 {
            let (to_s, to_c) = (transmit(&mut c), transmit(&mut s));
            s.handle_input(&to_s).unwrap();
            c.handle_input(&to_c).unwrap();
        }
        assert!(c.peer_half_closes && s.peer_half_closes);
        assert!(events(&mut c).is_empty() && events(&mut s).is_empty());
        (c, s, now)
    }

    /// A core whose hello has been taken from its transmit queue, facing a Go peer (which
    /// never sends one).
    fn fresh(cfg: &Config, mode: Mode, now: Instant) -> Connection {
        let mut c = Connection::new(cfg, mode, now);
        assert_eq!(transmit(&mut c), h("00 02 0001 00000000 66727075"));
        c
    }

    fn transmit(c: &mut Connection) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(b) = c.poll_transmit() {
            v.extend_from_slice(&b);
        }
        v
    }

    fn events(c: &mut Connection) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    /// Feeds `bytes` in random pieces.
    fn feed(c: &mut Connection, bytes: &[u8], rng: &mut Rng) -> Result<(), YamuxError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(40_000));
            c.handle_input(&rest[..n])?;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Moves frames both ways until both sides are quiet.
    fn pump(a: &mut Connection, b: &mut Connection, rng: &mut Rng) {
        loop {
            let ab = transmit(a);
            let ba = transmit(b);
            if ab.is_empty() && ba.is_empty() {
                return;
            }
            let _ = feed(b, &ab, rng);
            let _ = feed(a, &ba, rng);
        }
    }

    /// Reads what is buffered; `true` if EOF was reached.
    fn read_available(c: &mut Connection, id: u32, out: &mut Vec<u8>) -> bool {
        let mut buf = [0u8; 7000];
        loop {
            match c.stream_read(id, &mut buf).unwrap() {
                Some(0) => return true,
                Some(n) => out.extend_from_slice(&buf[..n]),
                None => return false,
            }
        }
    }

    fn pattern(seed: u32, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8 ^ (i >> 11) as u8)
            .collect()
    }

    /// Regression: a Data frame whose payload arrives in pieces, read by the application
    /// between the pieces, must not be credited twice (the window accounting used to
    /// underflow, and the peer was granted ~4 GiB of window and then overran us).
    #[test]
    fn partial_payloads_read_mid_frame_keep_the_window_exact() {
        let cfg = no_keepalive();
        let (mut c, mut s, _) = pair(&cfg, &cfg);
        let mut rng = Rng(7);
        let id = c.open_stream().unwrap().unwrap();
        pump(&mut c, &mut s, &mut rng);
        assert_eq!(s.accept_stream(), Some(id));
        let data = pattern(3, 20 * MIB);
        let (mut sent, mut got) = (0, Vec::new());
        while got.len() < data.len() {
            if sent < data.len() {
                sent += c.stream_write(id, &data[sent..]).unwrap();
            }
            let wire = transmit(&mut c);
            // Small pieces, and a short read after every piece: credits happen mid-frame
            // while part of the buffer is still unread.
            let mut small = vec![0u8; 1 + rng.below(1500)];
            for piece in wire.chunks(1000 + rng.below(3000)) {
                s.handle_input(piece).expect("no window violation");
                if let Some(n) = s.stream_read(id, &mut small).unwrap() {
                    got.extend_from_slice(&small[..n]);
                }
                let back = transmit(&mut s);
                c.handle_input(&back).unwrap();
                assert!(
                    c.stream_send_window(id) <= cfg.max_stream_window,
                    "peer granted more than the maximum window"
                );
            }
            if wire.is_empty() {
                // Sender blocked on the window or done: let the reader catch up.
                read_available(&mut s, id, &mut got);
                let back = transmit(&mut s);
                c.handle_input(&back).unwrap();
            }
        }
        assert!(got == data, "payload corrupted");
    }

    // ------------------------------------------------------------ byte-exact frames

    /// Large payloads of a chunk handed over as `Bytes` reach an up-to-date stream as slices of
    /// that chunk (no copy); a stream that still holds unread bytes gets a copy instead, so a
    /// lagging reader never pins more than one chunk. Small payloads are always copied.
    /// Small writes (control messages) queue in a small buffer; a bulk write gets the batch
    /// buffer at once. Thousands of idle sessions must not each keep half a MiB.
    #[test]
    fn small_writes_keep_the_transmit_buffer_small() {
        let cfg = no_keepalive();
        let (mut c, mut s, _) = pair(&cfg, &cfg);
        let id = c.open_stream().unwrap().unwrap();
        s.handle_input(&transmit(&mut c)).unwrap();
        c.handle_input(&transmit(&mut s)).unwrap();
        assert_eq!(c.stream_write(id, &[7; 300]).unwrap(), 300);
        assert!(
            c.out.capacity() <= 4 * SMALL_TRANSMIT,
            "{}",
            c.out.capacity()
        );
        // Once written, the small buffer is not kept for the next message.
        let small = c.poll_transmit().unwrap();
        c.recycle_transmit(small);
        assert_eq!((c.out.capacity(), c.spare.is_none()), (0, true));
        assert_eq!(c.stream_write(id, &[7; 64 * 1024]).unwrap(), 64 * 1024);
        assert!(c.out.capacity() >= TRANSMIT_HIGH_WATER);
        // A bulk buffer is.
        let bulk = c.poll_transmit().unwrap();
        c.recycle_transmit(bulk);
        assert!(
            c.out.capacity() + c.spare.as_ref().map_or(0, |s| s.capacity()) >= TRANSMIT_HIGH_WATER
        );
    }

    #[test]
    fn large_payloads_are_sliced_unless_a_lagging_stream_would_pin_a_chunk_for_little() {
        let cfg = no_keepalive();
        let (mut client, mut server, _) = pair(&cfg, &cfg);
        let id = client.open_stream().unwrap().unwrap();
        server.handle_input(&transmit(&mut client)).unwrap();
        assert_eq!(server.accept_stream(), Some(id));
        let frame = |payload: &[u8]| {
            let mut b = BytesMut::new();
            put_header(&mut b, TYPE_DATA, 0, id, payload.len() as u32);
            b.extend_from_slice(payload);
            b.freeze()
        };
        let within = |chunk: &Bytes, part: &Bytes| {
            let r = chunk.as_ptr_range();
            r.contains(&part.as_ptr())
        };
        let (p1, p2, p3) = (
            pattern(1, ZERO_COPY_MIN),
            pattern(2, ZERO_COPY_MIN + 5),
            pattern(3, 100),
        );
        let big = pattern(4, PIN_RATIO * (ZERO_COPY_MIN + 5));
        let c1 = frame(&p1);
        server.handle_input_bytes(&c1).unwrap();
        // One chunk: a payload under 1/PIN_RATIO of it, then one over.
        let c2 = [frame(&p2), frame(&big)].concat().into();
        server.handle_input_bytes(&c2).unwrap();
        {
            let rb = &server.streams[&id].recv_buf;
            assert!(
                within(&c1, &rb.chunks[0]),
                "an up-to-date stream gets a slice"
            );
            assert!(
                !within(&c2, &rb.chunks[1]),
                "a lagging stream copies a small part of a chunk"
            );
            assert!(within(&c2, &rb.chunks[2]), "and slices a large part of one");
        }
        let mut got = vec![0u8; p1.len() + p2.len() + big.len()];
        let mut n = 0;
        while n < got.len() {
            n += server.stream_read(id, &mut got[n..]).unwrap().unwrap();
        }
        assert!(got == [&p1[..], &p2[..], &big[..]].concat());
        let c3 = frame(&p3);
        server.handle_input_bytes(&c3).unwrap();
        assert!(
            !within(&c3, &server.streams[&id].recv_buf.chunks[0]),
            "small payloads are copied"
        );
        let mut small = vec![0u8; 200];
        let n = server.stream_read(id, &mut small).unwrap().unwrap();
        assert_eq!(&small[..n], &p3[..]);
        assert!(server.streams[&id].recv_buf.is_empty());
    }

    /// `stream_read_chunk` hands out a large buffered chunk itself (at most the buffer's size
    /// of it), copies small pieces out together, credits the window like `stream_read`, and
    /// says EOF with `Copied(0)`.
    #[test]
    fn read_chunk_slices_large_chunks_and_copies_small_ones() {
        let cfg = no_keepalive();
        let (mut client, mut server, _) = pair(&cfg, &cfg);
        let id = client.open_stream().unwrap().unwrap();
        server.handle_input(&transmit(&mut client)).unwrap();
        assert_eq!(server.accept_stream(), Some(id));
        let mut buf = vec![0u8; 64 * 1024];
        assert_eq!(server.stream_read_chunk(id, &mut buf).unwrap(), None);
        let big = pattern(9, COALESCE_BELOW.max(ZERO_COPY_MIN) + 1000);
        let small = [pattern(10, 100), pattern(11, 200)];
        let mut wire = BytesMut::new();
        for p in [&big, &small[0], &small[1]] {
            put_header(&mut wire, TYPE_DATA, 0, id, p.len() as u32);
            wire.extend_from_slice(p);
        }
        put_header(&mut wire, TYPE_WINDOW_UPDATE, FLAG_FIN, id, 0);
        let wire = wire.freeze();
        server.handle_input_bytes(&wire).unwrap();
        let Received::Chunk(first) = server.stream_read_chunk(id, &mut buf).unwrap().unwrap()
        else {
            panic!("a large chunk is handed out as it is");
        };
        assert!(wire.as_ptr_range().contains(&first.as_ptr()), "not a slice");
        assert!(first[..] == big[..]);
        let got = server.stream_read_chunk(id, &mut buf).unwrap().unwrap();
        assert_eq!(
            got,
            Received::Copied(300),
            "small pieces are copied out together"
        );
        assert!(buf[..100] == small[0][..] && buf[100..300] == small[1][..]);
        assert_eq!(
            server.stream_read_chunk(id, &mut buf).unwrap(),
            Some(Received::Copied(0))
        );
    }

    #[test]
    fn open_stream_sends_syn_like_go() {
        let mut c = fresh(&no_keepalive(), Mode::Client, Instant::now());
        assert_eq!(c.open_stream().unwrap(), Some(1));
        assert_eq!(transmit(&mut c), h("00 01 0001 00000001 005c0000"));
        assert_eq!(c.open_stream().unwrap(), Some(3));
        assert_eq!(transmit(&mut c), h("00 01 0001 00000003 005c0000"));
        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        assert_eq!(s.open_stream().unwrap(), Some(2));
        assert_eq!(transmit(&mut s), h("00 01 0001 00000002 005c0000"));
    }

    #[test]
    fn incoming_stream_is_acked_at_once() {
        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        s.handle_input(&h("00 01 0001 00000001 005c0000")).unwrap();
        // ACKed before anybody accepts it.
        assert_eq!(transmit(&mut s), h("00 01 0002 00000001 005c0000"));
        assert_eq!(events(&mut s)[0], Event::IncomingStream(1));
        assert_eq!(s.accept_stream(), Some(1));
        assert_eq!(s.accept_stream(), None);
        assert_eq!(s.stream_send_window(1), 6 * MIB as u32);
    }

    #[test]
    fn syn_on_data_frame_carries_payload() {
        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        s.handle_input(&h("00 00 0001 00000001 00000003 616263"))
            .unwrap();
        assert_eq!(transmit(&mut s), h("00 01 0002 00000001 005c0000"));
        assert_eq!(s.accept_stream(), Some(1));
        let mut got = Vec::new();
        assert!(!read_available(&mut s, 1, &mut got));
        assert_eq!(got, b"abc");
    }

    #[test]
    fn fin_is_a_zero_window_update() {
        let mut c = fresh(&no_keepalive(), Mode::Client, Instant::now());
        let id = c.open_stream().unwrap().unwrap();
        transmit(&mut c);
        c.stream_close(id).unwrap();
        assert_eq!(transmit(&mut c), h("00 01 0004 00000001 00000000"));
        c.stream_close(id).unwrap();
        assert_eq!(transmit(&mut c), b"");
        assert_eq!(c.stream_write(id, b"x"), Err(YamuxError::StreamClosed));
    }

    #[test]
    fn ping_is_answered_with_same_opaque() {
        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        s.handle_input(&h("00 02 0001 00000000 0000abcd")).unwrap();
        assert_eq!(transmit(&mut s), h("00 02 0002 00000000 0000abcd"));
        assert!(!s.is_closed());
    }

    #[test]
    fn keepalive_pings_then_times_out() {
        let cfg = Config::frp(30);
        let t0 = Instant::now();
        let mut c = fresh(&cfg, Mode::Client, t0);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        c.handle_timeout(t0 + Duration::from_secs(29));
        assert_eq!(transmit(&mut c), b"");
        c.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(transmit(&mut c), h("00 02 0001 00000000 00000000"));
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(40)));
        c.handle_timeout(t0 + Duration::from_millis(39_999));
        assert!(!c.is_closed());
        c.handle_timeout(t0 + Duration::from_secs(40));
        assert_eq!(c.close_reason(), Some(&YamuxError::KeepaliveTimeout));
        assert_eq!(
            c.close_reason().unwrap().to_string(),
            "yamux: keepalive timeout"
        );
        assert_eq!(c.open_stream(), Err(YamuxError::KeepaliveTimeout));
    }

    #[test]
    fn keepalive_answered_keeps_session_alive() {
        let cfg = Config::frp(30);
        let (mut c, mut s, t0) = pair(&cfg, &no_keepalive());
        let mut rng = Rng(7);
        c.handle_timeout(t0 + Duration::from_secs(30));
        pump(&mut c, &mut s, &mut rng);
        c.handle_timeout(t0 + Duration::from_secs(45));
        assert!(!c.is_closed());
        // Answered pings are not reported as user pings.
        assert!(
            !events(&mut c)
                .iter()
                .any(|e| matches!(e, Event::PingAck(_)))
        );
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        c.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(transmit(&mut c), h("00 02 0001 00000000 00000001"));
    }

    #[test]
    fn user_ping_is_acked() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        c.send_ping(0x1234);
        pump(&mut c, &mut s, &mut Rng(3));
        assert_eq!(events(&mut c), vec![Event::PingAck(0x1234)]);
    }

    // ------------------------------------------------------------ paired cores

    #[test]
    fn data_both_ways_with_random_splits() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let ids: Vec<u32> = (0..4).map(|_| c.open_stream().unwrap().unwrap()).collect();
        assert_eq!(ids, vec![1, 3, 5, 7]);
        pump(&mut c, &mut s, &mut rng);
        let accepted: Vec<u32> = std::iter::from_fn(|| s.accept_stream()).collect();
        assert_eq!(accepted, ids);
        for &id in &ids {
            assert_eq!(c.stream_send_window(id), 6 * MIB as u32);
        }

        let len = 700_000;
        let up: Vec<Vec<u8>> = ids.iter().map(|&id| pattern(id, len)).collect();
        let down: Vec<Vec<u8>> = ids.iter().map(|&id| pattern(id + 100, len)).collect();
        let mut sent_up = vec![0; ids.len()];
        let mut sent_down = vec![0; ids.len()];
        let mut got_up = vec![Vec::new(); ids.len()];
        let mut got_down = vec![Vec::new(); ids.len()];
        for _ in 0..10_000 {
            for (i, &id) in ids.iter().enumerate() {
                let chunk = 1 + rng.below(90_000);
                let end = (sent_up[i] + chunk).min(len);
                sent_up[i] += c.stream_write(id, &up[i][sent_up[i]..end]).unwrap();
                let end = (sent_down[i] + chunk).min(len);
                sent_down[i] += s.stream_write(id, &down[i][sent_down[i]..end]).unwrap();
            }
            pump(&mut c, &mut s, &mut rng);
            for (i, &id) in ids.iter().enumerate() {
                read_available(&mut s, id, &mut got_up[i]);
                read_available(&mut c, id, &mut got_down[i]);
            }
            if got_up.iter().chain(&got_down).all(|g| g.len() == len) {
                break;
            }
        }
        assert_eq!(got_up, up);
        assert_eq!(got_down, down);
    }

    #[test]
    fn fin_from_a_go_peer_closes_both_ways_and_ours_only_half() {
        // A Go peer never sends the hello: its FIN (Stream.Close) means it reads no more.
        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        s.handle_input(&h("00 01 0001 00000001 00000000")).unwrap();
        let id = s.accept_stream().unwrap();
        s.handle_input(&h("00 01 0004 00000001 00000000")).unwrap();
        assert_eq!(s.stream_read(id, &mut [0; 8]), Ok(Some(0)));
        assert_eq!(s.stream_write(id, b"more"), Err(YamuxError::PeerClosed));
        // A peer that sent the hello half-closes: we may still answer.
        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        s.handle_input(&h("00 02 0001 00000000 66727075")).unwrap();
        assert_eq!(transmit(&mut s), h("00 02 0002 00000000 66727075"));
        s.handle_input(&h(
            "00 01 0001 00000001 00000000 00 01 0004 00000001 00000000",
        ))
        .unwrap();
        let id = s.accept_stream().unwrap();
        assert_eq!(s.stream_read(id, &mut [0; 8]), Ok(Some(0)));
        assert_eq!(s.stream_write(id, b"reply"), Ok(5));
    }

    #[test]
    fn half_close_then_full_close() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let mut rng = Rng(11);
        let id = c.open_stream().unwrap().unwrap();
        c.stream_write(id, b"hello").unwrap();
        c.stream_close(id).unwrap();
        pump(&mut c, &mut s, &mut rng);
        assert_eq!(s.accept_stream(), Some(id));
        let mut got = Vec::new();
        assert!(read_available(&mut s, id, &mut got), "EOF after the data");
        assert_eq!(got, b"hello");
        assert!(events(&mut s).contains(&Event::StreamFinished(id)));
        // The other direction still works.
        assert_eq!(s.stream_write(id, b"world"), Ok(5));
        pump(&mut c, &mut s, &mut rng);
        let mut got = Vec::new();
        assert!(!read_available(&mut c, id, &mut got));
        assert_eq!(got, b"world");
        s.stream_close(id).unwrap();
        pump(&mut c, &mut s, &mut rng);
        assert!(read_available(&mut c, id, &mut got));
        // Both FINs seen: streams go once the application lets go.
        c.stream_release(id);
        s.stream_release(id);
        pump(&mut c, &mut s, &mut rng);
        assert_eq!((c.num_streams(), s.num_streams()), (0, 0));
        assert!(!c.is_closed() && !s.is_closed());
    }

    #[test]
    fn reset_fails_reads_and_writes() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let mut rng = Rng(5);
        let id = c.open_stream().unwrap().unwrap();
        c.stream_write(id, b"lost").unwrap();
        pump(&mut c, &mut s, &mut rng);
        s.accept_stream();
        c.stream_reset(id);
        assert_eq!(transmit(&mut c), h("00 01 0008 00000001 00000000"));
        s.handle_input(&h("00 01 0008 00000001 00000000")).unwrap();
        assert!(events(&mut s).contains(&Event::StreamReset(id)));
        assert_eq!(s.stream_read(id, &mut [0; 8]), Err(YamuxError::StreamReset));
        assert_eq!(s.stream_write(id, b"x"), Err(YamuxError::StreamReset));
        assert_eq!(c.stream_write(id, b"x"), Err(YamuxError::StreamReset));
        s.stream_release(id);
        c.stream_release(id);
        assert_eq!((c.num_streams(), s.num_streams()), (0, 0));
        // Late data for the reset stream is skipped, not fatal.
        s.handle_input(&h("00 00 0000 00000001 00000002 6869"))
            .unwrap();
        assert!(!s.is_closed());
    }

    /// `stream_write_with` sends exactly what `fill` put (one frame, its header's length
    /// patched), takes it from the window like `stream_write`, queues nothing when `fill`
    /// puts nothing, and does not call `fill` when the window is empty.
    #[test]
    fn write_with_sends_what_fill_put_within_the_window() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let mut rng = Rng(7);
        let id = c.open_stream().unwrap().unwrap();
        pump(&mut c, &mut s, &mut rng);
        s.accept_stream();
        let data = pattern(2, 8 * MIB);
        let mut sent = 0;
        let mut room = Vec::new();
        loop {
            let max = 100_000;
            let r = c
                .stream_write_with(id, max, |buf| {
                    room.push(buf.remaining_mut());
                    let n = buf.remaining_mut().min(data.len() - sent).min(70_000);
                    buf.put_slice(&data[sent..sent + n]);
                    n
                })
                .unwrap();
            let Some((k, put)) = r else { break };
            assert_eq!(k, put);
            sent += k;
            pump(&mut c, &mut s, &mut rng);
        }
        assert_eq!(sent, 6 * MIB, "exactly the window");
        assert_eq!(c.stream_send_window(id), 0);
        let empty = c.stream_write_with(id, 1, |_| panic!("fill called with an empty window"));
        assert_eq!(empty.unwrap(), None::<(usize, ())>);
        assert!(room.iter().all(|&r| r <= MAX_DATA_FRAME), "{room:?}");
        let mut got = Vec::new();
        read_available(&mut s, id, &mut got);
        assert!(got == data[..6 * MIB], "bytes lost or reordered");
        // Nothing put: nothing queued.
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let id = c.open_stream().unwrap().unwrap();
        pump(&mut c, &mut s, &mut rng);
        let before = c.stream_send_window(id);
        assert_eq!(c.stream_write_with(id, 10, |_| ()).unwrap(), Some((0, ())));
        assert_eq!(c.stream_send_window(id), before);
        assert_eq!(transmit(&mut c), b"");
    }

    #[test]
    fn window_exhaustion_blocks_until_reader_consumes() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let mut rng = Rng(99);
        let id = c.open_stream().unwrap().unwrap();
        pump(&mut c, &mut s, &mut rng);
        s.accept_stream();
        let data = pattern(1, 8 * MIB);
        let mut sent = 0;
        loop {
            let n = c.stream_write(id, &data[sent..]).unwrap();
            sent += n;
            pump(&mut c, &mut s, &mut rng);
            if n == 0 {
                break;
            }
        }
        // Exactly the 6 MiB window went out, nothing more is accepted without reads.
        assert_eq!(sent, 6 * MIB);
        assert_eq!(c.stream_send_window(id), 0);
        assert_eq!(s.stream_buffered(id), 6 * MIB);
        events(&mut c);

        // Consuming just under half the window sends no update...
        let mut got = vec![0; 3 * MIB - 1];
        assert_eq!(s.stream_read(id, &mut got), Ok(Some(3 * MIB - 1)));
        assert_eq!(transmit(&mut s), b"");
        // ...one more byte does.
        let mut one = [0u8];
        assert_eq!(s.stream_read(id, &mut one), Ok(Some(1)));
        got.push(one[0]);
        assert_eq!(transmit(&mut s), h("00 01 0000 00000001 00300000"));
        c.handle_input(&h("00 01 0000 00000001 00300000")).unwrap();
        assert!(events(&mut c).contains(&Event::StreamWritable(id)));
        assert_eq!(c.stream_send_window(id), 3 * MIB as u32);

        while got.len() < data.len() {
            sent += c.stream_write(id, &data[sent..]).unwrap();
            pump(&mut c, &mut s, &mut rng);
            read_available(&mut s, id, &mut got);
        }
        assert_eq!(got, data);
    }

    #[test]
    fn transmit_queue_is_bounded() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let id = c.open_stream().unwrap().unwrap();
        pump(&mut c, &mut s, &mut Rng(4));
        events(&mut c);
        let data = vec![3u8; 4 * MIB];
        let queued = c.stream_write(id, &data).unwrap();
        assert!((TRANSMIT_HIGH_WATER..TRANSMIT_HIGH_WATER + MAX_DATA_FRAME).contains(&queued));
        // The window is not the limit here, the unsent queue is.
        assert_eq!(c.stream_write(id, &data[queued..]), Ok(0));
        assert!(events(&mut c).is_empty());
        let out = c.poll_transmit().unwrap();
        assert_eq!(
            out.len(),
            queued + queued.div_ceil(MAX_DATA_FRAME) * HEADER_LEN
        );
        assert_eq!(events(&mut c), vec![Event::StreamWritable(id)]);
        assert!(c.stream_write(id, &data[queued..]).unwrap() > 0);
    }

    #[test]
    fn exceeding_receive_window_kills_session() {
        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        s.handle_input(&h("00 01 0001 00000001 005c0000")).unwrap();
        transmit(&mut s);
        // 4 MiB fits in the 6 MiB window...
        let mut frame = h("00 00 0000 00000001 00400000");
        frame.resize(12 + 4 * MIB, 7);
        s.handle_input(&frame).unwrap();
        // ...another 4 MiB does not.
        let err = s
            .handle_input(&h("00 00 0000 00000001 00400000"))
            .unwrap_err();
        assert_eq!(
            err,
            YamuxError::RecvWindowExceeded {
                stream: 1,
                window: 2 * MIB as u32,
                len: 4 * MIB as u32
            }
        );
        assert!(
            err.to_string()
                .starts_with("yamux: peer exceeded stream receive window")
        );
        assert_eq!(transmit(&mut s), h("00 03 0000 00000000 00000001"));
        assert!(s.is_closed());
        assert!(events(&mut s).contains(&Event::Closed));
        // Buffered data is still readable, then the session error.
        let mut buf = vec![0; 5 * MIB];
        assert_eq!(s.stream_read(1, &mut buf), Ok(Some(4 * MIB)));
        assert_eq!(s.stream_read(1, &mut buf), Err(err));
    }

    #[test]
    fn bad_version_or_type_is_a_protocol_error() {
        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        let err = s
            .handle_input(&h("07 00 0000 00000001 00000000"))
            .unwrap_err();
        assert_eq!(err.to_string(), "yamux: protocol error: invalid version 7");
        assert_eq!(transmit(&mut s), h("00 03 0000 00000000 00000001"));

        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        let err = s
            .handle_input(&h("00 04 0000 00000000 00000000"))
            .unwrap_err();
        assert_eq!(err, YamuxError::InvalidMessageType(4));
        assert_eq!(transmit(&mut s), h("00 03 0000 00000000 00000001"));
    }

    #[test]
    fn duplicate_syn_and_double_fin_are_protocol_errors() {
        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        s.handle_input(&h("00 01 0001 00000001 005c0000")).unwrap();
        let err = s
            .handle_input(&h("00 01 0001 00000001 005c0000"))
            .unwrap_err();
        assert_eq!(err, YamuxError::DuplicateStream(1));

        let mut s = fresh(&no_keepalive(), Mode::Server, Instant::now());
        s.handle_input(&h(
            "00 01 0001 00000001 005c0000 00 01 0004 00000001 00000000",
        ))
        .unwrap();
        let err = s
            .handle_input(&h("00 01 0004 00000001 00000000"))
            .unwrap_err();
        assert_eq!(err, YamuxError::UnexpectedFin(1));
    }

    #[test]
    fn remote_go_away_codes() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let mut rng = Rng(1);
        let id = c.open_stream().unwrap().unwrap();
        pump(&mut c, &mut s, &mut rng);
        s.accept_stream();
        s.go_away(GO_AWAY_NORMAL);
        assert_eq!(transmit(&mut s), h("00 03 0000 00000000 00000000"));
        c.handle_input(&h("00 03 0000 00000000 00000000")).unwrap();
        assert!(events(&mut c).contains(&Event::GoAway(0)));
        assert_eq!(c.open_stream(), Err(YamuxError::RemoteGoAway));
        // The existing stream carries on.
        c.stream_write(id, b"still here").unwrap();
        pump(&mut c, &mut s, &mut rng);
        let mut got = Vec::new();
        read_available(&mut s, id, &mut got);
        assert_eq!(got, b"still here");
        // A stream opened towards the side that sent GoAway is refused.
        s.handle_input(&h("00 01 0001 00000009 005c0000")).unwrap();
        assert_eq!(transmit(&mut s), h("00 01 0008 00000009 00000000"));

        let mut c = fresh(&no_keepalive(), Mode::Client, Instant::now());
        let err = c
            .handle_input(&h("00 03 0000 00000000 00000001"))
            .unwrap_err();
        assert_eq!(err, YamuxError::RemoteProtocolError);
    }

    #[test]
    fn backlog_overflow_resets_new_streams() {
        let cfg_server = Config {
            accept_backlog: 2,
            ..no_keepalive()
        };
        let (mut c, mut s, _) = pair(&no_keepalive(), &cfg_server);
        let mut rng = Rng(42);
        let ids: Vec<u32> = (0..3).map(|_| c.open_stream().unwrap().unwrap()).collect();
        assert_eq!(transmit(&mut c).len(), 36);
        for id in &ids {
            s.handle_input(&h(&format!("00 01 0001 {id:08x} 005c0000")))
                .unwrap();
        }
        assert_eq!(
            transmit(&mut s),
            h(
                "00 01 0002 00000001 005c0000 00 01 0002 00000003 005c0000 00 01 0008 00000005 00000000"
            )
        );
        assert!(events(&mut s).contains(&Event::BacklogExceeded(5)));
        c.handle_input(&h("00 01 0002 00000001 005c0000 00 01 0002 00000003 005c0000 00 01 0008 00000005 00000000")).unwrap();
        assert_eq!(c.stream_read(5, &mut [0; 4]), Err(YamuxError::StreamReset));
        assert_eq!(c.stream_write(1, b"ok"), Ok(2));
        pump(&mut c, &mut s, &mut rng);
        assert_eq!(s.accept_stream(), Some(1));
        assert_eq!(s.accept_stream(), Some(3));
        assert_eq!(s.accept_stream(), None);
        // Once accepted, there is room again.
        s.handle_input(&h("00 01 0001 00000007 005c0000")).unwrap();
        assert_eq!(transmit(&mut s), h("00 01 0002 00000007 005c0000"));
    }

    #[test]
    fn unacked_opens_are_bounded_by_backlog() {
        let cfg = Config {
            accept_backlog: 2,
            ..no_keepalive()
        };
        let (mut c, mut s, _) = pair(&cfg, &no_keepalive());
        assert_eq!(c.open_stream(), Ok(Some(1)));
        assert_eq!(c.open_stream(), Ok(Some(3)));
        assert_eq!(c.open_stream(), Ok(None));
        pump(&mut c, &mut s, &mut Rng(2));
        let ev = events(&mut c);
        assert!(ev.contains(&Event::StreamEstablished(1)) && ev.contains(&Event::OpenReady));
        assert_eq!(c.open_stream(), Ok(Some(5)));
    }

    #[test]
    fn released_with_unread_data_the_stream_is_reset() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let mut rng = Rng(77);
        let id = c.open_stream().unwrap().unwrap();
        pump(&mut c, &mut s, &mut rng);
        s.accept_stream();
        c.stream_write(id, &[1; 1000]).unwrap();
        pump(&mut c, &mut s, &mut rng);
        // The application drops it with data unread: RST, as a TCP close() does.
        s.stream_release(id);
        assert_eq!(transmit(&mut s), h("00 01 0008 00000001 00000000"));
        assert_eq!(s.num_streams(), 0);
        c.handle_input(&h("00 01 0008 00000001 00000000")).unwrap();
        assert_eq!(
            c.stream_read(id, &mut [0; 10]),
            Err(YamuxError::StreamReset)
        );
        assert_eq!(c.stream_write(id, b"more"), Err(YamuxError::StreamReset));
        assert!(!s.is_closed());
    }

    #[test]
    fn data_for_a_released_stream_resets_it_instead_of_being_credited() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let mut rng = Rng(78);
        let id = c.open_stream().unwrap().unwrap();
        pump(&mut c, &mut s, &mut rng);
        s.accept_stream();
        // Everything read, then the application drops it: a plain FIN.
        s.stream_release(id);
        assert_eq!(transmit(&mut s), h("00 01 0004 00000001 00000000"));
        c.handle_input(&h("00 01 0004 00000001 00000000")).unwrap();
        let mut got = Vec::new();
        assert!(read_available(&mut c, id, &mut got), "the FIN reads as EOF");
        // The peer takes it for a half-close and keeps writing: the first data answers RST,
        // the writer fails, and nothing of it was credited.
        let data = vec![9u8; 20 * MIB];
        let mut sent = 0;
        let err = loop {
            match c.stream_write(id, &data[sent..]) {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
            pump(&mut c, &mut s, &mut rng);
            assert!(sent < 2 * MIB, "the writer went on after {sent} bytes");
        };
        assert_eq!(err, YamuxError::StreamReset);
        assert_eq!(s.num_streams(), 0);
        assert_eq!(c.num_streams(), 1, "kept until the application releases it");
        c.stream_release(id);
        assert_eq!(c.num_streams(), 0);
        assert!(!s.is_closed() && !c.is_closed());
    }

    #[test]
    fn released_after_both_fins_leaves_quietly() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let mut rng = Rng(79);
        let id = c.open_stream().unwrap().unwrap();
        pump(&mut c, &mut s, &mut rng);
        s.accept_stream();
        c.stream_write(id, b"request").unwrap();
        c.stream_close(id).unwrap();
        pump(&mut c, &mut s, &mut rng);
        let mut got = Vec::new();
        assert!(read_available(&mut s, id, &mut got));
        assert_eq!(got, b"request");
        s.stream_write(id, b"reply").unwrap();
        s.stream_release(id);
        pump(&mut c, &mut s, &mut rng);
        let mut got = Vec::new();
        assert!(
            read_available(&mut c, id, &mut got),
            "reply then EOF, no reset"
        );
        assert_eq!(got, b"reply");
        c.stream_release(id);
        pump(&mut c, &mut s, &mut rng);
        assert_eq!((c.num_streams(), s.num_streams()), (0, 0));
    }

    #[test]
    fn close_sends_go_away_and_fails_streams() {
        let (mut c, mut s, _) = pair(&no_keepalive(), &no_keepalive());
        let id = c.open_stream().unwrap().unwrap();
        pump(&mut c, &mut s, &mut Rng(8));
        c.close();
        assert_eq!(transmit(&mut c), h("00 03 0000 00000000 00000000"));
        assert_eq!(
            c.stream_read(id, &mut [0; 4]),
            Err(YamuxError::SessionClosed)
        );
        assert_eq!(c.stream_write(id, b"x"), Err(YamuxError::SessionClosed));
        s.handle_eof();
        assert_eq!(s.accept_stream(), Some(id));
        assert_eq!(
            s.stream_read(id, &mut [0; 4]),
            Err(YamuxError::ConnectionEof)
        );
    }

    // ------------------------------------------------------------ real Go capture

    struct Frame {
        typ: u8,
        flags: u16,
        id: u32,
        len: u32,
        payload: Vec<u8>,
    }

    /// An independent, trivial frame walker for the captured bytes.
    fn walk(bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = &bytes[i..i + 12];
            let len = u32::from_be_bytes(b[8..12].try_into().unwrap());
            let plen = if b[1] == 0 { len as usize } else { 0 };
            frames.push(Frame {
                typ: b[1],
                flags: u16::from_be_bytes([b[2], b[3]]),
                id: u32::from_be_bytes(b[4..8].try_into().unwrap()),
                len,
                payload: bytes[i + 12..i + 12 + plen].to_vec(),
            });
            i += 12 + plen;
        }
        frames
    }

    fn check_capture(path: &str, first_byte: &[u8]) {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let cap: serde_json::Value = serde_json::from_str(&text).unwrap();
        let chunks = cap["connections"][0]["chunks"].as_array().unwrap();
        let dir = |d: &str| -> Vec<Vec<u8>> {
            chunks
                .iter()
                .filter(|c| c["dir"] == d)
                .map(|c| hex::decode(c["hex"].as_str().unwrap()).unwrap())
                .collect()
        };
        let (c2s, s2c) = (dir("c2s"), dir("s2c"));
        let (c2s_all, s2c_all) = (c2s.concat(), s2c.concat());
        let (c2s_frames, s2c_frames) = (walk(&c2s_all), walk(&s2c_all));

        let syn_ids: Vec<u32> = c2s_frames
            .iter()
            .filter(|f| f.flags & FLAG_SYN != 0)
            .map(|f| f.id)
            .collect();
        assert!(syn_ids.len() >= 2 && syn_ids[0] == 1, "{syn_ids:?}");
        let expected = |frames: &[Frame], id: u32| -> Vec<u8> {
            frames
                .iter()
                .filter(|f| f.typ == 0 && f.id == id)
                .flat_map(|f| f.payload.clone())
                .collect()
        };
        let fin = |frames: &[Frame], id: u32| {
            frames.iter().any(|f| f.id == id && f.flags & FLAG_FIN != 0)
        };

        // frps side: the Go client's bytes, chunk by chunk as captured.
        let now = Instant::now();
        let mut server = fresh(&no_keepalive(), Mode::Server, now);
        let mut server_out = Vec::new();
        for chunk in &c2s {
            server.handle_input(chunk).unwrap();
            server_out.extend(transmit(&mut server));
        }
        let accepted: Vec<u32> = std::iter::from_fn(|| server.accept_stream()).collect();
        assert_eq!(accepted, syn_ids);
        // Our ACKs are byte-identical to the ones Go's frps sent.
        let go_acks: Vec<u8> = s2c_frames
            .iter()
            .filter(|f| f.flags & FLAG_ACK != 0 && f.typ == 1)
            .flat_map(|f| {
                let mut v = vec![0, f.typ];
                v.extend(f.flags.to_be_bytes());
                v.extend(f.id.to_be_bytes());
                v.extend(f.len.to_be_bytes());
                v
            })
            .collect();
        let our_acks: Vec<u8> = syn_ids
            .iter()
            .flat_map(|id| h(&format!("00 01 0002 {id:08x} 005c0000")))
            .collect();
        assert_eq!(go_acks, our_acks);
        assert_eq!(server_out, our_acks, "the server sends exactly the ACKs");
        for &id in &syn_ids {
            let mut got = Vec::new();
            let eof = read_available(&mut server, id, &mut got);
            assert_eq!(got, expected(&c2s_frames, id), "c2s stream {id}");
            assert_eq!(eof, fin(&c2s_frames, id), "c2s stream {id} FIN");
        }
        assert!(expected(&c2s_frames, 1).starts_with(first_byte));

        // frpc side: open the same streams, then feed the Go server's bytes.
        let mut client = fresh(&no_keepalive(), Mode::Client, now);
        for _ in &syn_ids {
            client.open_stream().unwrap().unwrap();
        }
        let syns: Vec<u8> = syn_ids
            .iter()
            .flat_map(|id| h(&format!("00 01 0001 {id:08x} 005c0000")))
            .collect();
        assert_eq!(transmit(&mut client), syns);
        for chunk in &s2c {
            client.handle_input(chunk).unwrap();
        }
        let ev = events(&mut client);
        for &id in &syn_ids {
            assert!(ev.contains(&Event::StreamEstablished(id)));
            let mut got = Vec::new();
            let eof = read_available(&mut client, id, &mut got);
            assert_eq!(got, expected(&s2c_frames, id), "s2c stream {id}");
            assert_eq!(eof, fin(&s2c_frames, id), "s2c stream {id} FIN");
        }
        assert!(!client.is_closed() && !server.is_closed());

        // Same bytes, split at random points.
        let mut rng = Rng(0xfeed);
        let mut server = fresh(&no_keepalive(), Mode::Server, now);
        feed(&mut server, &c2s_all, &mut rng).unwrap();
        for &id in &syn_ids {
            let mut got = Vec::new();
            read_available(&mut server, id, &mut got);
            assert_eq!(got, expected(&c2s_frames, id));
        }
    }

    #[test]
    fn decodes_real_go_capture_v1() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/interop/frp-0.70.0/tcp-v1-mux/capture.json"
        );
        // Stream 1 starts with the v1 Login message (type 'o').
        check_capture(path, b"o");
    }

    #[test]
    fn decodes_real_go_capture_v2() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/interop/frp-0.70.0/tcp-v2-mux/capture.json"
        );
        // Every v2 logical connection starts with the 7-byte magic.
        check_capture(path, b"FRP\0\x02\r\n");
    }
}
