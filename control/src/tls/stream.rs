//! A TLS stream over rustls' unbuffered (sans-IO) API that holds no buffer while idle.
//!
//! frps keeps one TLS connection per frpc (tcpMux) and, without tcpMux, one per work
//! connection; almost all of them are idle almost all of the time. rustls' buffered
//! `ServerConnection` keeps its 4 KiB receive buffer after any read, and tokio-rustls adds
//! its own state on top; at thousands of clients that was the largest part of a client's
//! memory in frps. Here the connection owns only rustls' session state and three buffers
//! that exist only while they hold bytes:
//!
//! * `rx`: ciphertext read and not yet processed (a record cut by the socket read, or records
//!   behind one the caller had no room for); released when a read finds nothing more;
//! * `plain`: decrypted bytes that did not fit the caller's buffer;
//! * `tx`: ciphertext accepted from the caller (or a handshake / alert / KeyUpdate message)
//!   and not yet written to the socket. Everything in it goes out, in order, before anything
//!   newer is encrypted.
//!
//! Semantics are those of tokio-rustls, but for one: a TCP end without close_notify reads as
//! the end of the stream, as Go's crypto/tls (frp) reads it (`io.EOF`), not as an error
//! whose text points at rustls' manual; `poll_shutdown` sends close_notify, then shuts the socket's
//! write side, and reading goes on. A peer's TLS 1.3 KeyUpdate is answered (rustls queues the
//! answer; it leaves on the next read or write). A fatal error is sticky and its alert is
//! sent where the socket takes it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
    WriteTraffic,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest TLS record on the wire: 2^14 bytes of payload plus TLS 1.2's worst-case
/// expansion (RFC 5246 §6.2.3) and the 5-byte header. A read reserves room for one.
const MAX_RECORD: usize = 16384 + 2048 + 5;
/// What one `poll_write` encrypts at most (four full records): bounds `tx`.
const MAX_WRITE: usize = 4 * 16384;
/// Room reserved per record when sizing `tx` for an encryption (header, tag, padding); rustls
/// answers with the exact size when it needs more.
const RECORD_OVERHEAD: usize = 64;
/// A written chunk at least this big marks the stream as moving bulk data: `tx` keeps its
/// capacity between writes until the stream goes idle.
const BULK_WRITE: usize = 8 * 1024;

/// One end of a TLS session in rustls' unbuffered API: the client or the server.
pub trait TlsSide: Send + Unpin + 'static {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &rustls::CommonState;
}

impl TlsSide for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &rustls::CommonState {
        self
    }
}

impl TlsSide for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &rustls::CommonState {
        self
    }
}

/// frps' end of a TLS connection.
pub type ServerTlsStream<IO> = TlsStream<IO, UnbufferedServerConnection>;
/// frpc's end of a TLS connection.
pub type ClientTlsStream<IO> = TlsStream<IO, UnbufferedClientConnection>;

/// Completes a server handshake on `io` (the ClientHello may already be in `io`'s first
/// bytes: nothing is consumed before it).
pub async fn accept<IO>(
    io: IO,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<ServerTlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
    TlsStream::new(io, conn).handshake().await
}

/// Completes a client handshake on `io`, presenting and verifying `name`.
pub async fn connect<IO>(
    io: IO,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<ClientTlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedClientConnection::new(config, name).map_err(invalid_data)?;
    TlsStream::new(io, conn).handshake().await
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A TLS session over `IO` (see the module documentation).
pub struct TlsStream<IO, S> {
    io: IO,
    conn: S,
    rx: BytesMut,
    /// `rx` may hold records not yet processed.
    rx_fresh: bool,
    plain: Vec<u8>,
    plain_pos: usize,
    tx: Outgoing,
    /// The last chunk written was big: keep `tx`'s capacity until the stream goes idle.
    tx_bulk: bool,
    /// The peer's close_notify, or the transport's end, was read.
    read_eof: bool,
    /// close_notify is queued (the write side is closed).
    close_queued: bool,
    /// A fatal TLS error; every later read and write reports it. Boxed: 64 bytes inline in
    /// every connection for what almost none has.
    failed: Option<Box<rustls::Error>>,
    /// The reader parked on the socket, woken when a write decrypts data for it.
    read_waker: Option<Waker>,
}

/// What a caller of [`process`] wants from the session.
#[derive(Clone, Copy)]
pub(super) enum Want<'a> {
    /// Decrypted data (or more ciphertext to get it).
    Read,
    /// Encrypt this (the session must be ready to send application data).
    Write(&'a [u8]),
    /// Queue close_notify.
    Close,
    /// Drive the handshake.
    Handshake,
}

/// Where [`process`] stopped.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    /// Decrypted bytes were delivered.
    Data,
    /// More ciphertext is needed (for reading, or to finish the handshake).
    NeedData,
    /// Application data may be sent (and nothing more can be read from what is here).
    Ready,
    /// `Want::Write`/`Want::Close` was carried out.
    Done,
    /// The peer sent close_notify.
    PeerClosed,
    /// Both sides sent close_notify.
    Closed,
}

impl<IO, S> TlsStream<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: TlsSide,
{
    fn new(io: IO, conn: S) -> Self {
        TlsStream {
            io,
            conn,
            rx: BytesMut::new(),
            rx_fresh: false,
            plain: Vec::new(),
            plain_pos: 0,
            tx: Outgoing::default(),
            tx_bulk: false,
            read_eof: false,
            close_queued: false,
            failed: None,
            read_waker: None,
        }
    }

    /// The transport under the session.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The session's state (protocol version, cipher suite, peer certificates).
    pub fn session(&self) -> &rustls::CommonState {
        self.conn.common()
    }

    async fn handshake(mut self) -> io::Result<Self> {
        loop {
            let r = self.step(None, Want::Handshake);
            let done = r.is_ok() && !self.conn.common().is_handshaking();
            if self.tx.pending() {
                let flushed = std::future::poll_fn(|cx| self.poll_flush_tx(cx)).await;
                // Once the handshake is done, what is left (a server's session tickets) may
                // fail to go out without failing the session: a client may write and leave
                // before it arrives. A later write reports the error.
                if !done {
                    flushed?;
                }
            }
            if done {
                // The client's first data may have come with its last handshake flight.
                self.rx_fresh = !self.rx.is_empty();
                self.read_eof = matches!(r, Ok(Step::PeerClosed | Step::Closed));
                return Ok(self);
            }
            match r {
                Err(e) => {
                    self.fail(e.clone());
                    // The alert (if any) is in `tx` now: best effort, the caller's deadline
                    // bounds it.
                    let _ = std::future::poll_fn(|cx| self.poll_flush_tx(cx)).await;
                    return Err(invalid_data(e));
                }
                Ok(Step::Data) => continue,
                Ok(Step::PeerClosed | Step::Closed) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "tls handshake: the peer closed the session",
                    ));
                }
                Ok(_) => {
                    self.rx.reserve(MAX_RECORD);
                    let n = std::future::poll_fn(|cx| {
                        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rx)
                    })
                    .await?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tls handshake eof",
                        ));
                    }
                    self.rx_fresh = true;
                }
            }
        }
    }

    /// Runs the session over the unprocessed ciphertext in `rx` (see [`process`]); decrypted
    /// bytes go to `out` first and what does not fit into `plain`.
    fn step(
        &mut self,
        out: Option<&mut ReadBuf<'_>>,
        want: Want<'_>,
    ) -> Result<Step, rustls::Error> {
        let (result, off) = process(
            &mut self.conn,
            &mut self.rx[..],
            &mut self.tx,
            Sink::Read(out, &mut self.plain),
            want,
        );
        self.rx.advance(off);
        result
    }

    /// Opens every complete record already read, so that at most part of one is left
    /// unprocessed. False where the session cannot be taken apart: it failed, or is closing.
    pub(super) fn open_all(&mut self) -> bool {
        if self.failed.is_some() || self.close_queued || self.read_eof {
            return false;
        }
        loop {
            match self.step(None, Want::Read) {
                Ok(Step::Data) => {}
                Ok(Step::PeerClosed | Step::Closed) => {
                    self.read_eof = true;
                    return false;
                }
                Ok(_) => return true,
                Err(e) => {
                    self.fail(e);
                    return false;
                }
            }
        }
    }

    /// The session taken apart (after [`TlsStream::open_all`]): the transport, rustls' state,
    /// the ciphertext not yet processed, the plaintext not yet read, the ciphertext not yet
    /// written.
    pub(super) fn into_raw(self) -> (IO, S, Vec<u8>, Bytes, Bytes) {
        let opened = if self.plain_pos < self.plain.len() {
            Bytes::from(self.plain).slice(self.plain_pos..)
        } else {
            Bytes::new()
        };
        let owed = Bytes::copy_from_slice(self.tx.pending_bytes());
        (self.io, self.conn, self.rx.to_vec(), opened, owed)
    }

    /// Records a fatal error and queues the alerts rustls has for the peer.
    fn fail(&mut self, e: rustls::Error) {
        if self.failed.is_some() {
            return;
        }
        self.failed = Some(Box::new(e));
        // rustls hands out a queued fatal alert before it looks at `rx` again (where the bad
        // record still is: processing it twice would fail twice). It keeps positions into
        // that buffer, so it must be the same one.
        let status = self.conn.process(&mut self.rx[..]);
        if let Ok(ConnectionState::EncodeTlsData(mut enc)) = status.state {
            let _ = self.tx.append(
                |buf| enc.encode(buf),
                |err| match err {
                    EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                        Some(*required_size)
                    }
                    _ => None,
                },
            );
        }
        self.rx = BytesMut::new();
    }

    fn failed_error(&self) -> Option<io::Error> {
        self.failed.as_deref().cloned().map(invalid_data)
    }

    /// Writes `tx` out. Ready once it is empty.
    fn poll_flush_tx(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx.pos < self.tx.end {
            let chunk = &self.tx.buf[self.tx.pos..self.tx.end];
            match ready!(Pin::new(&mut self.io).poll_write(cx, chunk)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.tx.pos += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.tx_bulk {
            // Keeps the (initialised) buffer for the next chunk: no allocation, no zeroing.
            self.tx.pos = 0;
            self.tx.end = 0;
        } else {
            self.tx.release();
        }
        Poll::Ready(Ok(()))
    }

    /// Hands out decrypted bytes kept from an earlier record.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.plain_pos >= self.plain.len() {
            return false;
        }
        let n = buf.remaining().min(self.plain.len() - self.plain_pos);
        buf.put_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        true
    }

    /// The session moves on from a write or a shutdown: data it decrypts on the way, or the
    /// peer's close_notify, is the reader's.
    fn wake_reader(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
    }

    /// Carries out `want` (a write or close_notify), first taking the session past whatever
    /// it has to deliver to the reader.
    fn step_to_send(&mut self, want: Want<'_>) -> io::Result<()> {
        // Data, PeerClosed: at most once per record in `rx` or once in all.
        loop {
            match self.step(None, want) {
                Ok(Step::Done) => return Ok(()),
                Ok(Step::Data) => self.wake_reader(),
                Ok(Step::PeerClosed) => {
                    self.read_eof = true;
                    self.wake_reader();
                }
                Ok(Step::Closed) => return Err(io::ErrorKind::BrokenPipe.into()),
                Ok(Step::NeedData | Step::Ready) => {
                    return Err(io::Error::other("tls: the session cannot send yet"));
                }
                Err(e) => {
                    self.fail(e.clone());
                    self.wake_reader();
                    return Err(invalid_data(e));
                }
            }
        }
    }
}

/// Where [`process`] puts decrypted bytes.
pub(super) enum Sink<'a, 'b> {
    /// A reader's buffer (if any), then `keep` for what does not fit (kept bytes go first
    /// next time).
    Read(Option<&'a mut ReadBuf<'b>>, &'a mut Vec<u8>),
    /// All of it, appended (a data-plane core's output buffer).
    Append(&'a mut Vec<u8>),
}

impl Sink<'_, '_> {
    fn deliver(&mut self, payload: &[u8]) {
        match self {
            Sink::Append(out) => out.extend_from_slice(payload),
            Sink::Read(out, keep) => {
                let mut rest = payload;
                if let Some(out) = out.as_deref_mut()
                    && keep.is_empty()
                {
                    let n = out.remaining().min(rest.len());
                    out.put_slice(&rest[..n]);
                    rest = &rest[n..];
                }
                keep.extend_from_slice(rest);
            }
        }
    }
}

/// Runs a session over `incoming` (ciphertext not yet processed, in place) until it delivers
/// data, needs more, or has done what `want` asks. Handshake records, alerts and KeyUpdate
/// answers rustls produces on the way are appended to `tx`, decrypted bytes go to `sink`.
/// Returns where it stopped and how many bytes of `incoming` are done with (to discard: what
/// is left must be passed again, at the start, next time).
pub(super) fn process<S: TlsSide>(
    conn: &mut S,
    incoming: &mut [u8],
    tx: &mut Outgoing,
    mut sink: Sink<'_, '_>,
    want: Want<'_>,
) -> (Result<Step, rustls::Error>, usize) {
    let mut off = 0;
    let result = loop {
        let status = conn.process(&mut incoming[off..]);
        let mut discard = status.discard;
        let next = match status.state {
            Err(e) => Err(e),
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                let mut res = Ok(Some(Step::Data));
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) => {
                            discard += rec.discard;
                            sink.deliver(rec.payload);
                        }
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                res
            }
            Ok(ConnectionState::EncodeTlsData(mut e)) => tx
                .append(
                    |buf| e.encode(buf),
                    |err| match err {
                        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                            Some(*required_size)
                        }
                        _ => None,
                    },
                )
                .map(|()| None),
            Ok(ConnectionState::TransmitTlsData(t)) => {
                // Queued in `tx`, which is written out before anything newer.
                t.done();
                Ok(None)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Some(Step::NeedData)),
            Ok(ConnectionState::WriteTraffic(mut w)) => match want {
                Want::Write(data) => encrypt(&mut w, data, tx).map(|()| Some(Step::Done)),
                Want::Close => tx
                    .append(|buf| w.queue_close_notify(buf), encrypt_size)
                    .map(|()| Some(Step::Done)),
                Want::Read | Want::Handshake => Ok(Some(Step::Ready)),
            },
            Ok(ConnectionState::PeerClosed) => Ok(Some(Step::PeerClosed)),
            Ok(ConnectionState::Closed) => Ok(Some(Step::Closed)),
            Ok(_) => Err(rustls::Error::General("unexpected TLS early data".into())),
        };
        off += discard;
        match next {
            Err(e) => break Err(e),
            Ok(Some(step)) => break Ok(step),
            Ok(None) => {}
        }
    };
    (result, off)
}

fn encrypt_size(err: &EncryptError) -> Option<usize> {
    match err {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

/// Encrypts `data` (records of at most 2^14 bytes) onto the end of `tx`.
fn encrypt<D>(
    w: &mut WriteTraffic<'_, D>,
    data: &[u8],
    tx: &mut Outgoing,
) -> Result<(), rustls::Error> {
    let estimate = data.len() + (data.len() / 16384 + 1) * RECORD_OVERHEAD;
    tx.append_sized(estimate, |buf| w.encrypt(data, buf), encrypt_size)
}

/// Ciphertext waiting for the socket: `buf[pos..end]`. `buf` stays initialised up to its
/// length, so a stream moving bulk data encrypts into the same memory every time.
#[derive(Default)]
pub(super) struct Outgoing {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl Outgoing {
    /// Appends to what `v` holds.
    pub(super) fn after(v: Vec<u8>) -> Outgoing {
        Outgoing {
            pos: 0,
            end: v.len(),
            buf: v,
        }
    }

    /// Everything in the buffer up to `end` (for [`Outgoing::after`]'s caller).
    pub(super) fn into_vec(mut self) -> Vec<u8> {
        self.buf.truncate(self.end);
        self.buf
    }

    pub(super) fn pending_bytes(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    pub(super) fn pending(&self) -> bool {
        self.pos < self.end
    }

    /// Gives the memory back (nothing may be pending).
    pub(super) fn release(&mut self) {
        *self = Outgoing::default();
    }

    /// Runs `write` on free room after `end`, growing it to the size the error names.
    fn append<E: std::fmt::Display>(
        &mut self,
        write: impl FnMut(&mut [u8]) -> Result<usize, E>,
        needs: impl Fn(&E) -> Option<usize>,
    ) -> Result<(), rustls::Error> {
        self.append_sized(512, write, needs)
    }

    fn append_sized<E: std::fmt::Display>(
        &mut self,
        mut room: usize,
        mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
        needs: impl Fn(&E) -> Option<usize>,
    ) -> Result<(), rustls::Error> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        loop {
            if self.buf.len() < self.end + room {
                self.buf.resize(self.end + room, 0);
            }
            match write(&mut self.buf[self.end..self.end + room]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) => match needs(&e) {
                    Some(n) if n > room => room = n,
                    _ => return Err(rustls::Error::General(e.to_string())),
                },
            }
        }
    }
}

impl<IO, S> AsyncRead for TlsStream<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: TlsSide,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.tx.pending() {
            // Handshake leftovers, a KeyUpdate answer: on their way whenever the socket
            // takes them (a failure shows on the next write).
            let _ = this.poll_flush_tx(cx);
        }
        // Fills the caller's buffer with as many records as are here (the yamux driver takes
        // each read as one chunk), touching the socket only while nothing was delivered.
        let start = buf.filled().len();
        loop {
            if this.take_plain(buf) {
                return Poll::Ready(Ok(()));
            }
            let delivered = buf.filled().len() > start;
            if let Some(e) = this.failed_error() {
                // What was decrypted before the error first; the error on the next read.
                return Poll::Ready(if delivered { Ok(()) } else { Err(e) });
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            if this.rx_fresh {
                this.rx_fresh = false;
                let r = this.step(Some(buf), Want::Read);
                if this.tx.pending() {
                    // A KeyUpdate answer or an alert: sent as far as the socket takes it now,
                    // the rest with the next write.
                    if let Poll::Ready(Err(e)) = this.poll_flush_tx(cx) {
                        tracing::debug!("tls: write while reading: {e}");
                    }
                }
                match r {
                    Ok(Step::Data) => {
                        this.rx_fresh = true;
                        if buf.remaining() == 0 || this.plain_pos < this.plain.len() {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Ok(Step::PeerClosed | Step::Closed) => this.read_eof = true,
                    Ok(_) => {}
                    Err(e) => {
                        this.fail(e);
                        let _ = this.poll_flush_tx(cx);
                    }
                }
                continue;
            }
            if delivered {
                return Poll::Ready(Ok(()));
            }
            if this.rx.capacity() - this.rx.len() < MAX_RECORD / 2 {
                this.rx.reserve(MAX_RECORD);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.rx) {
                // The transport ended, with or without close_notify: the end of the stream,
                // as Go reads it. A record cut short is dropped; frp's framing above notices.
                Poll::Ready(Ok(0)) => this.read_eof = true,
                Poll::Ready(Ok(_)) => this.rx_fresh = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Idle: keep no buffer that holds nothing.
                    if this.rx.is_empty() {
                        this.rx = BytesMut::new();
                    }
                    if !this.tx.pending() {
                        this.tx.release();
                        this.tx_bulk = false;
                    }
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<IO, S> AsyncWrite for TlsStream<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: TlsSide,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.failed_error() {
            return Poll::Ready(Err(e));
        }
        if this.close_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_flush_tx(cx))?;
        let data = &data[..data.len().min(MAX_WRITE)];
        this.tx_bulk = data.len() >= BULK_WRITE;
        this.step_to_send(Want::Write(data))?;
        // Sent as far as the socket takes it now; the rest before the next write.
        if let Poll::Ready(Err(e)) = this.poll_flush_tx(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_tx(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued && this.failed.is_none() {
            this.close_queued = true;
            // A session that cannot send close_notify any more just closes its transport.
            let _ = this.step_to_send(Want::Close);
        }
        ready!(this.poll_flush_tx(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{client_config, server_config, server_name};
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn cfgs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        (
            server_config("", "", "").unwrap(),
            client_config("", "", "").unwrap(),
        )
    }

    fn tls12_client() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = crate::tls::AcceptAnyServerCert(provider.signature_verification_algorithms);
        let c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Arc::new(c)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Writes `data` and reads as much back through `s` while writing; returns what was read.
    async fn echo_through<S: AsyncRead + AsyncWrite + Unpin>(s: S, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(s);
        let n = data.len();
        let writer = async move {
            for chunk in data.chunks(7919) {
                w.write_all(chunk).await.unwrap();
            }
            w.shutdown().await.unwrap();
            w
        };
        let reader = async move {
            let mut got = vec![0u8; n];
            r.read_exact(&mut got).await.unwrap();
            got
        };
        let (_w, got) = tokio::join!(writer, reader);
        got
    }

    async fn echo_server<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
        let (mut r, mut w) = tokio::io::split(s);
        let mut buf = vec![0u8; 3000];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).await.unwrap();
            w.flush().await.unwrap();
        }
        // The peer may be gone already (it stops reading once it has its bytes back).
        let _ = w.shutdown().await;
    }

    fn duplex() -> (DuplexStream, DuplexStream) {
        tokio::io::duplex(64 * 1024)
    }

    #[tokio::test]
    async fn ours_to_ours_moves_data_both_ways() {
        let (scfg, ccfg) = cfgs();
        let (a, b) = duplex();
        let srv = tokio::spawn(async move { echo_server(accept(b, scfg).await.unwrap()).await });
        let c = connect(a, ccfg, server_name("127.0.0.1").unwrap())
            .await
            .unwrap();
        assert_eq!(
            c.session().protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let data = pattern(3 << 20, 7);
        let got = echo_through(c, data.clone()).await;
        assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
        srv.await.unwrap();
    }

    /// tokio-rustls (rustls' buffered API) at the other end, as the reference, both roles and
    /// both protocol versions.
    #[tokio::test]
    async fn interoperates_with_buffered_rustls() {
        for tls12 in [false, true] {
            let (scfg, ccfg) = cfgs();
            let ccfg = if tls12 { tls12_client() } else { ccfg };
            // Our server, their client.
            let (a, b) = duplex();
            let srv =
                tokio::spawn(
                    async move { echo_server(accept(b, scfg.clone()).await.unwrap()).await },
                );
            let c = tokio_rustls::TlsConnector::from(ccfg.clone())
                .connect(server_name("127.0.0.1").unwrap(), a)
                .await
                .unwrap();
            let data = pattern(1 << 20, 1);
            assert_eq!(echo_through(c, data.clone()).await, data);
            srv.await.unwrap();
            // Their server, our client.
            let (scfg, _) = cfgs();
            let (a, b) = duplex();
            let srv = tokio::spawn(async move {
                echo_server(
                    tokio_rustls::TlsAcceptor::from(scfg)
                        .accept(b)
                        .await
                        .unwrap(),
                )
                .await
            });
            let c = connect(a, ccfg, server_name("localhost").unwrap())
                .await
                .unwrap();
            let want = if tls12 {
                rustls::ProtocolVersion::TLSv1_2
            } else {
                rustls::ProtocolVersion::TLSv1_3
            };
            assert_eq!(c.session().protocol_version(), Some(want));
            let data = pattern(1 << 20, 2);
            assert_eq!(echo_through(c, data.clone()).await, data);
            srv.await.unwrap();
        }
    }

    /// tokio-rustls' client over `io`, handshake done (the peer our streams are checked against).
    async fn tokio_rustls_client(
        ccfg: Arc<rustls::ClientConfig>,
        io: tokio::io::DuplexStream,
    ) -> tokio_rustls::client::TlsStream<tokio::io::DuplexStream> {
        tokio_rustls::TlsConnector::from(ccfg)
            .connect(server_name("127.0.0.1").unwrap(), io)
            .await
            .unwrap()
    }

    /// The peer updates its keys mid-stream (TLS 1.3 KeyUpdate, asking for ours too): data
    /// keeps flowing both ways, so our answer went out and both sides switched keys.
    #[tokio::test]
    async fn key_update_from_the_peer_mid_stream() {
        let (scfg, ccfg) = cfgs();
        let (a, b) = duplex();
        let srv = tokio::spawn(async move { echo_server(accept(b, scfg).await.unwrap()).await });
        let mut c = tokio_rustls_client(ccfg, a).await;
        let mut buf = vec![0u8; 5];
        for round in 0..3u8 {
            c.write_all(b"hello").await.unwrap();
            c.flush().await.unwrap();
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello", "round {round}");
            c.get_mut().1.refresh_traffic_keys().unwrap();
        }
        let data = pattern(256 << 10, 9);
        assert_eq!(echo_through(c, data.clone()).await, data);
        srv.await.unwrap();
    }

    /// Reads into tiny buffers: a record's rest is kept and handed out in order.
    #[tokio::test]
    async fn small_reads_get_every_byte_in_order() {
        let (scfg, ccfg) = cfgs();
        let (a, b) = duplex();
        let data = pattern(100_000, 3);
        let sent = data.clone();
        let srv = tokio::spawn(async move {
            let mut s = accept(b, scfg).await.unwrap();
            s.write_all(&sent).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let mut c = connect(a, ccfg, server_name("127.0.0.1").unwrap())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut one = [0u8; 3];
        loop {
            let n = c.read(&mut one).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&one[..n]);
        }
        assert_eq!(got, data);
        srv.await.unwrap();
    }

    /// close_notify from the peer ends reading; our shutdown sends close_notify (their side
    /// reads a clean end) and half-closes: the other direction still flows.
    #[tokio::test]
    async fn shutdown_sends_close_notify_and_keeps_reading() {
        let (scfg, ccfg) = cfgs();
        let (a, b) = duplex();
        let srv = tokio::spawn(async move {
            let mut s = tokio_rustls::TlsAcceptor::from(scfg)
                .accept(b)
                .await
                .unwrap();
            let mut got = Vec::new();
            // A clean end: rustls' buffered API reports a missing close_notify as an error.
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(b"reply after your close").await.unwrap();
            s.shutdown().await.unwrap();
            got
        });
        let mut c = connect(a, ccfg, server_name("127.0.0.1").unwrap())
            .await
            .unwrap();
        c.write_all(b"request").await.unwrap();
        c.shutdown().await.unwrap();
        assert!(
            c.write_all(b"more").await.is_err(),
            "writing after shutdown"
        );
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after your close");
        assert_eq!(srv.await.unwrap(), b"request");
    }

    /// The transport ends without close_notify: the data, then the end of the stream (Go's
    /// reading), not rustls' error text.
    #[tokio::test]
    async fn transport_end_without_close_notify_reads_as_eof() {
        let (scfg, ccfg) = cfgs();
        let (a, b) = duplex();
        let cli = tokio::spawn(async move {
            let mut c = tokio_rustls_client(ccfg, a).await;
            c.write_all(b"hi").await.unwrap();
            c.flush().await.unwrap();
            drop(c.into_inner().0);
        });
        let mut s = accept(b, scfg).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        cli.await.unwrap();
    }

    /// Garbage instead of a ClientHello, and garbage after a handshake: an error naming TLS,
    /// no panic; the server's alert reaches a TLS peer.
    #[tokio::test]
    async fn garbage_is_an_error() {
        let (scfg, ccfg) = cfgs();
        let (mut a, b) = duplex();
        a.write_all(&[0x18, 0x03, 0x01, 0x00, 0x01, 0x00])
            .await
            .unwrap();
        let err = accept(b, scfg.clone())
            .await
            .err()
            .expect("garbage accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let mut alert = Vec::new();
        a.read_to_end(&mut alert).await.unwrap();
        assert_eq!(alert.first(), Some(&0x15), "an alert record: {alert:?}");

        // After the handshake: bytes that are no record.
        let (a, b) = duplex();
        let srv = tokio::spawn(async move {
            let mut s = accept(b, scfg).await.unwrap();
            s.write_all(b"k").await.unwrap();
            let mut buf = [0u8; 64];
            let e1 = s.read(&mut buf).await.unwrap_err();
            // Sticky: the next read says the same, writes too.
            let e2 = s.read(&mut buf).await.unwrap_err();
            let e3 = s.write_all(b"x").await.unwrap_err();
            (e1.to_string(), e2.to_string(), e3.to_string())
        });
        let mut c = tokio_rustls_client(ccfg, a).await;
        // The server's handshake is over once it wrote.
        let mut k = [0u8; 1];
        c.read_exact(&mut k).await.unwrap();
        let (mut tcp, _) = c.into_inner();
        tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20])
            .await
            .unwrap();
        tcp.write_all(&[0xab; 0x20]).await.unwrap();
        let (e1, e2, e3) = srv.await.unwrap();
        assert!(e1.contains("decrypt") || e1.contains("Decrypt"), "{e1}");
        assert_eq!(e1, e2);
        assert_eq!(e1, e3);
    }

    /// A client certificate the server's CA did not sign, or a server the client cannot
    /// verify: rustls' reason on both sides.
    #[tokio::test]
    async fn verification_failure_names_the_reason() {
        // Another self-signed certificate than the one the server generates for itself.
        let (certs, _key) = crate::tls::self_signed().unwrap();
        let ca = std::env::temp_dir().join(format!("frpu-tls-stream-{}.pem", std::process::id()));
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                certs[0].as_ref()
            )
        );
        std::fs::write(&ca, pem).unwrap();
        // The client trusts a CA that did not sign the server's fresh self-signed cert.
        let ccfg = client_config("", "", ca.to_str().unwrap()).unwrap();
        let _ = std::fs::remove_file(&ca);
        let (scfg, _) = cfgs();
        let (a, b) = duplex();
        let srv = tokio::spawn(async move { accept(b, scfg).await.err().map(|e| e.to_string()) });
        let err = connect(a, ccfg, server_name("frp-uring").unwrap())
            .await
            .err()
            .expect("verified");
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
        let server_err = srv.await.unwrap().expect("server handshake succeeded");
        assert!(server_err.contains("alert"), "{server_err}");
    }

    /// What an idle session holds after some traffic: rustls' state and nothing else, well
    /// under what the buffered API keeps (its 4 KiB receive buffer and more).
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_session_holds_no_buffers() {
        const N: usize = 20;
        let (scfg, ccfg) = cfgs();
        // Handshakes allocate and free a lot: measure sessions that exist, after traffic,
        // on one thread (both ends), ours against tokio-rustls.
        async fn ours(scfg: &Arc<rustls::ServerConfig>, ccfg: &Arc<rustls::ClientConfig>) -> i64 {
            let before = crate::test_alloc::live_bytes();
            let mut keep = Vec::new();
            for _ in 0..N {
                let (a, b) = tokio::io::duplex(1024);
                let (s, c) = tokio::join!(
                    accept(b, scfg.clone()),
                    connect(a, ccfg.clone(), server_name("127.0.0.1").unwrap())
                );
                let (mut s, mut c) = (s.unwrap(), c.unwrap());
                ping(&mut s, &mut c).await;
                keep.push((s, c));
            }
            let per = (crate::test_alloc::live_bytes() - before) / N as i64;
            drop(keep);
            per
        }
        async fn buffered(
            scfg: &Arc<rustls::ServerConfig>,
            ccfg: &Arc<rustls::ClientConfig>,
        ) -> i64 {
            let before = crate::test_alloc::live_bytes();
            let mut keep = Vec::new();
            for _ in 0..N {
                let (a, b) = tokio::io::duplex(1024);
                let acc = tokio_rustls::TlsAcceptor::from(scfg.clone());
                let con = tokio_rustls::TlsConnector::from(ccfg.clone());
                let (s, c) = tokio::join!(
                    acc.accept(b),
                    con.connect(server_name("127.0.0.1").unwrap(), a)
                );
                let (mut s, mut c) = (s.unwrap(), c.unwrap());
                ping(&mut s, &mut c).await;
                keep.push((s, c));
            }
            let per = (crate::test_alloc::live_bytes() - before) / N as i64;
            drop(keep);
            per
        }
        async fn ping<A: AsyncRead + AsyncWrite + Unpin, B: AsyncRead + AsyncWrite + Unpin>(
            s: &mut A,
            c: &mut B,
        ) {
            let mut buf = [0u8; 12];
            for _ in 0..3 {
                c.write_all(&[1; 12]).await.unwrap();
                c.flush().await.unwrap();
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                s.flush().await.unwrap();
                c.read_exact(&mut buf).await.unwrap();
            }
            // Both readers parked (idle), as a session's driver leaves them.
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let mut b = [0u8; 1];
            let mut rb = ReadBuf::new(&mut b);
            assert!(Pin::new(&mut *s).poll_read(&mut cx, &mut rb).is_pending());
            assert!(Pin::new(&mut *c).poll_read(&mut cx, &mut rb).is_pending());
        }
        let lean = ours(&scfg, &ccfg).await;
        let old = buffered(&scfg, &ccfg).await;
        eprintln!(
            "idle session pair (server + client + 1 KiB duplex): ours {lean} B, tokio-rustls {old} B"
        );
        assert!(
            lean + 6 * 1024 <= old,
            "ours {lean} B, tokio-rustls {old} B"
        );
    }
}
