//! frp's websocket transport (spec §2.1, §2.2): the client handshake `GET /~!frp` and the
//! server upgrade, and [`WsStream`], which carries a byte stream in websocket messages the way
//! golang.org/x/net/websocket does: every write is one **binary** frame (frp ≥ 0.70), and
//! reads take the payload of binary *and* text frames (older frpc/frps send text) as bytes.
//!
//! A websocket has no half-close: shutting the write side down sends the Close frame, which
//! ends both directions once the peer answers it. Go frp behaves the same (its `io.Join`
//! closes both connections on the first EOF).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// frp's websocket path.
pub const FRP_WEBSOCKET_PATH: &str = "/~!frp";

fn config() -> WebSocketConfig {
    // Write every message out at once, as Go does (no batching until a flush).
    WebSocketConfig::default().write_buffer_size(0)
}

fn ws_err(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::BrokenPipe.into()
        }
        other => io::Error::other(other),
    }
}

/// frpc: the websocket client handshake over `io`. `host` is the Host header (`serverAddr:
/// serverPort` for websocket, the TLS server name for wss); Origin is `http://<host>`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    host: &str,
) -> io::Result<WsStream<S>> {
    let request = http::Request::builder()
        .method("GET")
        .uri(format!("ws://{host}{FRP_WEBSOCKET_PATH}"))
        .header("Host", host)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Key", generate_key())
        .header("Origin", format!("http://{host}"))
        .header("Sec-WebSocket-Version", "13")
        .body(())
        .map_err(io::Error::other)?;
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(request, io, Some(config()))
        .await
        .map_err(|e| io::Error::other(format!("websocket handshake: {e}")))?;
    Ok(WsStream::new(ws))
}

/// Only frp's path is upgraded; anything else gets Go's 404.
#[allow(clippy::result_large_err)] // the signature is tungstenite's callback type
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == FRP_WEBSOCKET_PATH {
        Ok(resp)
    } else {
        let mut not_found = ErrorResponse::new(Some("404 page not found".into()));
        *not_found.status_mut() = http::StatusCode::NOT_FOUND;
        Err(not_found)
    }
}

/// frps: completes the upgrade of a connection the sniffer found starting with `GET /~!frp`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> io::Result<WsStream<S>> {
    let ws = tokio_tungstenite::accept_hdr_async_with_config(io, check_path, Some(config()))
        .await
        .map_err(|e| io::Error::other(format!("websocket upgrade: {e}")))?;
    Ok(WsStream::new(ws))
}

/// A websocket connection as a byte stream. See the module docs.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// Payload of the last data frame, partly read.
    pending: Bytes,
    read_eof: bool,
}

impl<S> WsStream<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        WsStream {
            ws,
            pending: Bytes::new(),
            read_eof: false,
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
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => this.pending = b,
                Some(Ok(Message::Text(t))) => this.pending = Bytes::from(t),
                // Pings are answered by tungstenite; pongs and raw frames carry no data.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.read_eof = true,
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
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
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_err)?;
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_err)?;
        // Push it towards the socket now; what does not fit goes with the next write or flush.
        if let Poll::Ready(Err(e)) = Pin::new(&mut this.ws).poll_flush(cx) {
            return Poll::Ready(Err(ws_err(e)));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(ws_err)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().ws).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(ws_err(e))),
        }
    }
}

/// A stream with bytes put back in front of it (the TLS-detection byte frps read from a
/// websocket connection).
pub struct Rewind<S> {
    prefix: Bytes,
    io: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, io: S) -> Self {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n") {
            req.push(b.read_u8().await.unwrap());
        }
        let req = String::from_utf8(req).unwrap();
        assert!(req.starts_with("GET /~!frp HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Host: example.com:7000\r\n"), "{req}");
        assert!(req.contains("Origin: http://example.com:7000\r\n"), "{req}");
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        b.write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
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

    #[tokio::test]
    async fn server_reads_text_frames_and_refuses_other_paths() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut s = accept(b).await.unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            got
        });
        let req = format!("ws://h:1{FRP_WEBSOCKET_PATH}");
        let (mut ws, _) = tokio_tungstenite::client_async(req, a).await.unwrap();
        use futures_util::SinkExt;
        ws.send(Message::Text("old frpc".into())).await.unwrap();
        ws.close(None).await.unwrap();
        assert_eq!(server.await.unwrap(), "old frpc");

        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move { accept(b).await.is_err() });
        let r = tokio_tungstenite::client_async("ws://h:1/other", a).await;
        assert!(r.is_err());
        assert!(server.await.unwrap());
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
