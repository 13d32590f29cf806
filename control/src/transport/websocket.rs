//! frp's websocket transport (spec §2.1, §2.2): the client handshake `GET /~!frp` and the
//! server upgrade, and [`WsStream`], which carries a byte stream in websocket frames the way
//! golang.org/x/net/websocket does: every write is one **binary** frame (frp ≥ 0.70), and
//! reads take the payload of binary, text and continuation frames as bytes.
//!
//! frp before 0.70 sends its tunnel (yamux, TLS) in **text** frames that are not UTF-8, in
//! both directions. RFC 6455 peers (tungstenite, fastwebsockets) reject those, so the data
//! phase is framed here, on tungstenite's sans-IO [`FrameHeader`] parser and formatter: a data
//! frame's payload is passed through as it arrives (no per-message buffering, no size limit),
//! pings are answered, and a Close frame is answered and read as EOF.
//!
//! A websocket has no half-close: shutting the write side down sends the Close frame, which
//! ends both directions once the peer answers it. Go frp behaves the same (its `io.Join`
//! closes both connections on the first EOF).

use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// frp's websocket path.
pub const FRP_WEBSOCKET_PATH: &str = "/~!frp";

/// Largest handshake head (request or response line plus headers) we read.
const MAX_HEAD: usize = 16 * 1024;
/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;
/// Largest payload of one frame we write; a longer write is split by the caller's next write.
const MAX_WRITE_FRAME: usize = 64 * 1024;
/// How much a read asks the socket for (64 KiB: against 16 KiB, ~5 % more throughput and
/// ~4 % less CPU per byte through frp's websocket transport in two interleaved bench.sh runs).
const READ_CHUNK: usize = 64 * 1024;
/// Write-buffer capacity kept between writes; a larger one (a bulk write) is given back once
/// written, so an idle connection holds no buffer.
const IDLE_KEEP: usize = 4 * 1024;

fn bad_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads an HTTP head (up to and including the blank line) and returns it with whatever
/// followed it in the same reads.
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    what: &str,
) -> io::Result<(Vec<u8>, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4).to_vec();
            return Ok((head, buf));
        }
        if buf.len() >= MAX_HEAD {
            return Err(bad_data(format!("{what} headers exceed {MAX_HEAD} bytes")));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed during the {what}"),
            ));
        }
    }
}

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// frpc: the websocket client handshake over `io`. `host` is the Host header (`serverAddr:
/// serverPort` for websocket, the TLS server name for wss); Origin is `http://<host>`, as Go
/// sends them.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    host: &str,
) -> io::Result<WsStream<S>> {
    let key = generate_key();
    let request = format!(
        "GET {FRP_WEBSOCKET_PATH} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nOrigin: http://{host}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    let (head, rest) = read_head(&mut io, "websocket handshake response").await?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(bad_data("websocket handshake: truncated response"));
        }
        Err(e) => return Err(bad_data(format!("websocket handshake: bad response: {e}"))),
    }
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(bad_data(format!(
            "websocket handshake: server answered {code} {}",
            resp.reason.unwrap_or("")
        )));
    }
    if !has_token(header(resp.headers, "Upgrade"), "websocket") {
        return Err(bad_data(
            "websocket handshake: response lacks Upgrade: websocket",
        ));
    }
    if header(resp.headers, "Sec-WebSocket-Accept")
        != Some(derive_accept_key(key.as_bytes()).as_str())
    {
        return Err(bad_data("websocket handshake: wrong Sec-WebSocket-Accept"));
    }
    Ok(WsStream::new(io, true, rest))
}

/// Writes a plain HTTP error answer (Go's wording) and returns the error to report.
async fn refuse<S: AsyncWrite + Unpin>(
    io: &mut S,
    status: &str,
    body: &str,
    why: String,
) -> io::Error {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = io.write_all(resp.as_bytes()).await;
    let _ = io.shutdown().await;
    bad_data(format!("websocket upgrade: {why}"))
}

/// frps: completes the upgrade of a connection the sniffer found starting with `GET /~!frp`.
/// Any other path gets Go's 404.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> io::Result<WsStream<S>> {
    let (head, rest) = read_head(&mut io, "websocket upgrade request").await?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(&head);
    if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
        let why = format!("bad request head: {parsed:?}");
        return Err(refuse(&mut io, "400 Bad Request", "400 Bad Request", why).await);
    }
    let path = req.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    if path != FRP_WEBSOCKET_PATH {
        let why = format!("path {path:?} is not {FRP_WEBSOCKET_PATH}");
        return Err(refuse(&mut io, "404 Not Found", "404 page not found\n", why).await);
    }
    if req.method != Some("GET") {
        let why = format!("method {:?} is not GET", req.method.unwrap_or(""));
        return Err(refuse(&mut io, "405 Method Not Allowed", "", why).await);
    }
    let key = header(req.headers, "Sec-WebSocket-Key").unwrap_or("");
    if key.is_empty()
        || !has_token(header(req.headers, "Upgrade"), "websocket")
        || !has_token(header(req.headers, "Connection"), "upgrade")
        || header(req.headers, "Sec-WebSocket-Version") != Some("13")
    {
        let why = "not a websocket version 13 upgrade".to_string();
        return Err(refuse(&mut io, "400 Bad Request", "", why).await);
    }
    let accept = derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    io.write_all(resp.as_bytes()).await?;
    io.flush().await?;
    Ok(WsStream::new(io, false, rest))
}

/// XORs `data` with the 4-byte `mask`, `data[0]` being byte `offset` of the payload.
fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let m: [u8; 4] = std::array::from_fn(|i| mask[(offset + i) % 4]);
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// Appends one final frame; a client masks it with a fresh random key (RFC 6455 §5.3).
fn encode_frame(opcode: OpCode, payload: &[u8], masked: bool, out: &mut Vec<u8>) {
    let mask = masked.then(rand::random::<[u8; 4]>);
    let header = FrameHeader {
        is_final: true,
        opcode,
        mask,
        ..FrameHeader::default()
    };
    header
        .format(payload.len() as u64, out)
        .expect("writing to a Vec cannot fail");
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask, 0);
    }
}

/// What the frame reader found.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// Payload bytes of a data frame (binary, text or continuation), unmasked.
    Data(Bytes),
    /// A ping: answer with a pong carrying this payload.
    Ping(Bytes),
    /// A Close frame: the peer sends nothing more.
    Close,
}

/// Incoming websocket frames, sans-IO: feed bytes with [`FrameReader::buffer`], take events
/// with [`FrameReader::next_event`]. A data frame's payload is released as it arrives, so
/// nothing but one control frame (≤ 125 bytes) and one frame header is ever buffered beyond
/// what the caller has not taken yet.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
    /// Payload bytes of the current data frame still to come.
    data_left: u64,
    data_mask: Option<[u8; 4]>,
    data_offset: usize,
}

impl FrameReader {
    /// A reader that starts with `bytes` already received.
    pub fn with_bytes(bytes: BytesMut) -> Self {
        FrameReader {
            buf: bytes,
            ..Self::default()
        }
    }

    /// The receive buffer: append what the socket delivers.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Whether the stream is between frames (an EOF now loses nothing).
    pub fn at_frame_boundary(&self) -> bool {
        self.data_left == 0 && self.buf.is_empty()
    }

    /// The next event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> io::Result<Option<WsEvent>> {
        loop {
            if self.data_left > 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = self
                    .buf
                    .len()
                    .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                let mut chunk = self.buf.split_to(n);
                if self.buf.is_empty() {
                    // Let the chunk take the whole allocation with it: an idle reader holds
                    // no buffer.
                    self.buf = BytesMut::new();
                }
                if let Some(mask) = self.data_mask {
                    apply_mask(&mut chunk, mask, self.data_offset);
                }
                self.data_left -= n as u64;
                self.data_offset = (self.data_offset + n) % 4;
                return Ok(Some(WsEvent::Data(chunk.freeze())));
            }
            let mut cursor = Cursor::new(&self.buf[..]);
            let parsed = FrameHeader::parse(&mut cursor)
                .map_err(|e| bad_data(format!("websocket frame: {e}")))?;
            let Some((header, len)) = parsed else {
                return Ok(None);
            };
            let header_len = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(bad_data("websocket frame: reserved bits set"));
            }
            match header.opcode {
                OpCode::Data(Data::Continue | Data::Text | Data::Binary) => {
                    self.buf.advance(header_len);
                    self.data_left = len;
                    self.data_mask = header.mask;
                    self.data_offset = 0;
                }
                OpCode::Control(control) => {
                    if len > MAX_CONTROL_PAYLOAD || !header.is_final {
                        return Err(bad_data(format!(
                            "websocket frame: control frame of {len} bytes{}",
                            if header.is_final { "" } else { ", fragmented" }
                        )));
                    }
                    let total = header_len + len as usize;
                    if self.buf.len() < total {
                        return Ok(None);
                    }
                    self.buf.advance(header_len);
                    let mut payload = self.buf.split_to(len as usize);
                    if let Some(mask) = header.mask {
                        apply_mask(&mut payload, mask, 0);
                    }
                    match control {
                        Control::Ping => return Ok(Some(WsEvent::Ping(payload.freeze()))),
                        Control::Close => return Ok(Some(WsEvent::Close)),
                        Control::Pong => {}
                        Control::Reserved(op) => {
                            return Err(bad_data(format!("websocket frame: opcode {op}")));
                        }
                    }
                }
                OpCode::Data(Data::Reserved(op)) => {
                    return Err(bad_data(format!("websocket frame: opcode {op}")));
                }
            }
        }
    }
}

/// A websocket connection as a byte stream. See the module docs.
pub struct WsStream<S> {
    io: S,
    /// Client side: frames we send are masked.
    client: bool,
    reader: FrameReader,
    /// Payload of the last data frame, partly read.
    pending: Bytes,
    read_eof: bool,
    /// Encoded frames not yet written to `io`, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    close_sent: bool,
}

impl<S> WsStream<S> {
    fn new(io: S, client: bool, received: BytesMut) -> Self {
        WsStream {
            io,
            client,
            reader: FrameReader::with_bytes(received),
            pending: Bytes::new(),
            read_eof: false,
            out: Vec::new(),
            out_pos: 0,
            close_sent: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Writes queued frames; `Ready(Ok)` once all are out.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(crate::layered::poll_write_from(
            &mut self.io,
            cx,
            &self.out,
            &mut self.out_pos
        ))?;
        if self.out.capacity() > IDLE_KEEP {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    fn queue(&mut self, opcode: OpCode, payload: &[u8]) {
        encode_frame(opcode, payload, self.client, &mut self.out);
    }

    fn queue_close(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            let code: u16 = CloseCode::Normal.into();
            self.queue(OpCode::Control(Control::Close), &code.to_be_bytes());
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                if this.pending.is_empty() {
                    // Release the read buffer it shared.
                    this.pending = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            match this.reader.next_event()? {
                Some(WsEvent::Data(b)) => this.pending = b,
                Some(WsEvent::Ping(p)) => {
                    // Answered only when nothing is waiting to go out, so a peer that pings
                    // without reading cannot grow our buffer (RFC 6455 §5.5.3 lets an endpoint
                    // answer only the most recent of several pings).
                    if !this.close_sent && this.out_pos == this.out.len() {
                        this.queue(OpCode::Control(Control::Pong), &p);
                    }
                    // Best effort now; the rest goes with the next write or flush.
                    if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                Some(WsEvent::Close) => {
                    this.read_eof = true;
                    this.queue_close();
                    if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                None => {
                    let rb = this.reader.buffer();
                    rb.reserve(READ_CHUNK);
                    let n = ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut this.io),
                        cx,
                        rb
                    ))?;
                    if n == 0 {
                        if !this.reader.at_frame_boundary() {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "websocket: connection closed inside a frame",
                            )));
                        }
                        this.read_eof = true;
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // One frame in flight at most: backpressure comes from the socket.
        ready!(this.poll_write_out(cx))?;
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(MAX_WRITE_FRAME);
        this.queue(OpCode::Data(Data::Binary), &buf[..n]);
        // Push it towards the socket now; what does not fit goes with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_close();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// A stream with bytes put back in front of it (the TLS-detection byte frps read from a
/// websocket connection, the request head a client plugin peeked at).
pub struct Rewind<S> {
    prefix: Bytes,
    io: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: impl Into<Bytes>, io: S) -> Self {
        Rewind {
            prefix: prefix.into(),
            io,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    #[tokio::test]
    async fn handshake_and_bytes_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut s = accept(b).await.unwrap();
            let mut got = vec![0u8; 11];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(b"pong").await.unwrap();
            s.flush().await.unwrap();
            got
        });
        let mut c = connect(a, "127.0.0.1:7000").await.unwrap();
        c.write_all(b"hello ").await.unwrap();
        c.write_all(b"world").await.unwrap();
        c.flush().await.unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        assert_eq!(server.await.unwrap(), b"hello world");
    }

    /// Reads the HTTP head `b` receives, answers it with a 101 for its key, and returns it.
    async fn answer_101(b: &mut tokio::io::DuplexStream, extra: &[u8]) -> String {
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n") {
            req.push(b.read_u8().await.unwrap());
        }
        let req = String::from_utf8(req).unwrap();
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let accept = derive_accept_key(key.as_bytes());
        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        resp.extend_from_slice(extra);
        b.write_all(&resp).await.unwrap();
        req
    }

    /// What goes on the wire: Go's request shape, and one masked binary frame per write.
    #[tokio::test]
    async fn client_request_and_frames_look_like_go() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let client = tokio::spawn(async move {
            let mut c = connect(a, "example.com:7000").await.unwrap();
            c.write_all(b"\x00\xffbin").await.unwrap();
            c.flush().await.unwrap();
            c
        });
        let req = answer_101(&mut b, b"").await;
        assert!(req.starts_with("GET /~!frp HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Host: example.com:7000\r\n"), "{req}");
        assert!(req.contains("Origin: http://example.com:7000\r\n"), "{req}");
        let _c = client.await.unwrap();
        let mut head = [0u8; 2];
        b.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x82, "FIN + binary");
        assert_eq!(head[1], 0x80 | 5, "masked, 5 bytes");
        let mut rest = [0u8; 9];
        b.read_exact(&mut rest).await.unwrap();
        let (mask, data) = rest.split_at(4);
        let plain: Vec<u8> = data
            .iter()
            .zip(mask.iter().cycle())
            .map(|(d, m)| d ^ m)
            .collect();
        assert_eq!(plain, b"\x00\xffbin");
    }

    /// frp before 0.70 (golang.org/x/net/websocket's default) sends its binary tunnel in text
    /// frames: frps must take them as bytes even when they are not UTF-8 — the TLS record of
    /// a real frpc 0.52 starts with 0x17 0x16 0x03.
    #[tokio::test]
    async fn server_reads_non_utf8_text_frames_from_old_frpc() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut s = accept(b).await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let req = format!("ws://h:1{FRP_WEBSOCKET_PATH}");
        let (mut ws, _) = tokio_tungstenite::client_async(req, a).await.unwrap();
        // tungstenite only sends valid UTF-8 as Text: build the raw frames by hand.
        let mut frames = Vec::new();
        encode_frame(
            OpCode::Data(Data::Text),
            b"\x17\x16\x03\xff",
            true,
            &mut frames,
        );
        encode_frame(OpCode::Data(Data::Text), b"old frpc", true, &mut frames);
        ws.get_mut().write_all(&frames).await.unwrap();
        ws.close(None).await.unwrap();
        assert_eq!(server.await.unwrap(), b"\x17\x16\x03\xffold frpc");
    }

    /// The same from an old frps: our frpc reads non-UTF-8 text frames (unmasked, fragmented,
    /// and arriving in the same read as the 101 answer) as bytes.
    #[tokio::test]
    async fn client_reads_non_utf8_text_frames_from_old_frps() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let client = tokio::spawn(async move {
            let mut c = connect(a, "h:1").await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut frames = Vec::new();
        encode_frame(OpCode::Data(Data::Text), b"\x00\xfe", false, &mut frames);
        // A fragmented message: text without FIN, then a continuation.
        let first = frames.len();
        encode_frame(OpCode::Data(Data::Text), b"\xc3", false, &mut frames);
        frames[first] &= 0x7f;
        encode_frame(OpCode::Data(Data::Continue), b"(tail", false, &mut frames);
        encode_frame(
            OpCode::Control(Control::Close),
            &[3, 232],
            false,
            &mut frames,
        );
        answer_101(&mut b, &frames).await;
        assert_eq!(client.await.unwrap(), b"\x00\xfe\xc3(tail");
        // Our answer to the Close: a masked Close frame.
        let mut head = [0u8; 2];
        b.read_exact(&mut head).await.unwrap();
        assert_eq!(head, [0x88, 0x80 | 2]);
    }

    /// A standard websocket peer (tungstenite) reads our frames, gets a pong for its ping,
    /// and sees our Close on shutdown.
    #[tokio::test]
    async fn a_standard_client_sees_binary_frames_pongs_and_close() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut s = accept(b).await.unwrap();
            let mut got = [0u8; 3];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
            s.shutdown().await.unwrap();
            s
        });
        let req = format!("ws://h:1{FRP_WEBSOCKET_PATH}");
        let (mut ws, _) = tokio_tungstenite::client_async(req, a).await.unwrap();
        ws.send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .unwrap();
        ws.send(Message::Binary(Bytes::from_static(b"abc")))
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Some(m) = ws.next().await {
            match m.unwrap() {
                Message::Close(_) => {
                    seen.push("close".to_string());
                    break;
                }
                other => seen.push(format!("{other:?}")),
            }
        }
        assert_eq!(
            seen,
            [
                format!("{:?}", Message::Pong(Bytes::from_static(b"are you there"))),
                format!("{:?}", Message::Binary(Bytes::from_static(b"abc"))),
                "close".to_string(),
            ]
        );
        server.await.unwrap();
    }

    /// A large write goes out in frames of at most 64 KiB; a large incoming frame streams out
    /// in pieces as it arrives, without waiting for the whole frame.
    #[tokio::test]
    async fn large_payloads_stream_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let expect = data.clone();
        let server = tokio::spawn(async move {
            let mut s = accept(b).await.unwrap();
            let mut got = vec![0u8; expect.len()];
            s.read_exact(&mut got).await.unwrap();
            assert!(got == expect);
            s.write_all(&got).await.unwrap();
            s.flush().await.unwrap();
            s
        });
        let mut c = connect(a, "h:1").await.unwrap();
        c.write_all(&data).await.unwrap();
        c.flush().await.unwrap();
        let mut back = vec![0u8; data.len()];
        c.read_exact(&mut back).await.unwrap();
        assert!(back == data);
        let _s = server.await.unwrap();

        // One 300 000-byte frame, fed in 1000-byte pieces: every piece comes out at once.
        let mut wire = Vec::new();
        encode_frame(OpCode::Data(Data::Binary), &data, true, &mut wire);
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        for piece in wire.chunks(1000) {
            r.buffer().extend_from_slice(piece);
            while let Some(ev) = r.next_event().unwrap() {
                let WsEvent::Data(b) = ev else {
                    panic!("{ev:?}")
                };
                out.extend_from_slice(&b);
            }
            assert!(r.buffer().len() < 14, "buffered {}", r.buffer().len());
        }
        assert!(out == data);
        assert!(r.at_frame_boundary());
    }

    /// A peer that floods pings and never reads gets one pong queued at a time, not one per
    /// ping.
    #[tokio::test]
    async fn ping_flood_from_a_peer_that_does_not_read_stays_bounded() {
        let (mut a, b) = tokio::io::duplex(64);
        let server = tokio::spawn(async move {
            let mut s = accept(b).await.unwrap();
            let mut got = [0u8; 1];
            s.read_exact(&mut got).await.unwrap();
            s
        });
        a.write_all(
            b"GET /~!frp HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        read_head(&mut a, "101 answer").await.unwrap();
        let mut frames = Vec::new();
        for _ in 0..1000 {
            encode_frame(
                OpCode::Control(Control::Ping),
                b"are you there",
                true,
                &mut frames,
            );
        }
        encode_frame(OpCode::Data(Data::Binary), b"x", true, &mut frames);
        // Write everything without ever reading the pongs.
        a.write_all(&frames).await.unwrap();
        let s = server.await.unwrap();
        assert!(
            s.out.len() - s.out_pos <= 15,
            "{} bytes queued",
            s.out.len() - s.out_pos
        );
        drop(a);
    }

    /// After a bulk exchange, an idle stream holds no read or write buffer.
    #[tokio::test]
    async fn idle_streams_hold_no_buffers() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut s = accept(b).await.unwrap();
            let mut got = vec![0u8; 200_000];
            s.read_exact(&mut got).await.unwrap();
            s
        });
        let mut c = connect(a, "h:1").await.unwrap();
        c.write_all(&[7u8; 200_000]).await.unwrap();
        c.flush().await.unwrap();
        let s = server.await.unwrap();
        assert!(c.out.capacity() <= IDLE_KEEP, "{}", c.out.capacity());
        assert_eq!(s.reader.buf.capacity(), 0);
        assert!(s.pending.is_empty());
    }

    #[tokio::test]
    async fn bad_frames_and_handshakes_are_errors() {
        for (wire, want) in [
            (&b"\xc2\x00"[..], "reserved bits"),
            (b"\x83\x00", "opcode: 3"),
            (b"\x89\x7e\x00\x7e", "control frame of 126 bytes"),
            (b"\x09\x00", "fragmented"),
        ] {
            let mut r = FrameReader::with_bytes(BytesMut::from(wire));
            let e = r.next_event().unwrap_err();
            assert!(e.to_string().contains(want), "{e} for {wire:?}");
        }

        // EOF inside a frame is an error, not a short read.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let client = tokio::spawn(async move {
            let mut c = connect(a, "h:1").await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await
        });
        answer_101(&mut b, b"\x82\x05abc").await;
        drop(b);
        let e = client.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        // A wrong accept key or a refusal fails the client handshake.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let client = tokio::spawn(async move { connect(a, "h:1").await.err().unwrap() });
        read_head(&mut b, "request").await.unwrap();
        b.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n")
            .await
            .unwrap();
        assert!(
            client
                .await
                .unwrap()
                .to_string()
                .contains("Sec-WebSocket-Accept")
        );
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let client = tokio::spawn(async move { connect(a, "h:1").await.err().unwrap() });
        read_head(&mut b, "request").await.unwrap();
        b.write_all(b"HTTP/1.1 404 Not Found\r\n\r\n")
            .await
            .unwrap();
        assert!(client.await.unwrap().to_string().contains("404 Not Found"));
    }

    /// Sends `request` to `accept`; returns what came back and the error `accept` reported.
    async fn refused(request: &[u8]) -> (String, io::Error) {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move { accept(b).await.err().unwrap() });
        a.write_all(request).await.unwrap();
        let mut resp = String::new();
        a.read_to_string(&mut resp).await.unwrap();
        (resp, server.await.unwrap())
    }

    #[tokio::test]
    async fn server_refuses_other_paths_with_go_404_and_bad_upgrades_with_400() {
        let (resp, e) = refused(b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 404 Not Found\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\n404 page not found\n"), "{resp}");
        assert!(e.to_string().contains("\"/other\""));

        let (resp, e) = refused(b"GET /~!frp HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp}");
        assert!(e.to_string().contains("version 13"));

        // A head that never ends is cut at 16 KiB.
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move { accept(b).await.err().unwrap() });
        a.write_all(&[b'a'; MAX_HEAD + 10]).await.unwrap();
        assert!(server.await.unwrap().to_string().contains("exceed"));
    }

    #[test]
    fn mask_matches_the_bytewise_definition_at_every_offset() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..37u8).collect();
        for offset in 0..4 {
            let mut fast = data.clone();
            apply_mask(&mut fast, mask, offset);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[(offset + i) % 4])
                .collect();
            assert_eq!(fast, slow, "offset {offset}");
        }
    }

    #[tokio::test]
    async fn rewind_replays_its_prefix() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"rest").await.unwrap();
        drop(a);
        let mut r = Rewind::new(b"\x16".to_vec(), b);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"\x16rest");
    }
}
