//! QUIC transport (spec §2.1): frps listens on `quicBindPort` (UDP), frpc dials
//! `serverAddr:serverPort` over UDP. TLS 1.3 inside QUIC with ALPN `"frp"`; no frp TLS layer,
//! no 0x17 byte, no yamux: every logical connection (control, work, visitor) is one
//! bidirectional stream, opened by frpc and accepted by frps. The wire v2 magic, when used,
//! starts each stream like any other logical connection.
//!
//! - frpc holds one QUIC connection per login session ([`QuicSession`]) and opens a stream per
//!   logical connection. Closing a stream stops reading (STOP_SENDING 0) and sends FIN, as
//!   quic-go's `CancelRead(0)` + `Close()` do.
//! - `transport.quic.{keepalivePeriod, maxIdleTimeout, maxIncomingStreams}` apply on both
//!   sides ([`QuicParams`]). A QUIC connection that goes silent for the idle timeout is lost;
//!   frpc then logs in again like after a lost tcpMux session.
//! - Certificates: frps serves `transport.tls.certFile/keyFile`, else a certificate generated
//!   at start-up (see [`crate::tls::self_signed`]: ECDSA P-256, where frp generates RSA-2048;
//!   frp clients accept either, since they skip verification unless `trustedCaFile` is set).
//!   With `transport.tls.trustedCaFile` frps requires client certificates, as frp does (it
//!   reuses its TLS listener's config). frpc verifies frps only when its own
//!   `transport.tls.trustedCaFile` is set (server name `tls.serverName`, else `serverAddr`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, IdleTimeout, RecvStream, SendStream, TransportConfig, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, warn};

use super::Conn;
use crate::config::QuicOptions;

/// The ALPN protocol frp negotiates on QUIC.
pub const ALPN: &[u8] = b"frp";

/// Something in the QUIC transport failed.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("QUIC needs TLS 1.3 with TLS13_AES_128_GCM_SHA256: {0}")]
    Crypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("invalid transport.quic.{name} = {value}: out of range")]
    Param { name: &'static str, value: i64 },
    #[error("listen on quic udp address {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("resolve {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("dial quic {addr}: {source}")]
    Dial { addr: String, source: io::Error },
    #[error("dial quic {addr}: {source}")]
    Connect {
        addr: String,
        source: quinn::ConnectError,
    },
    #[error("quic handshake with {addr}: {source}{}", cert_hint(.source))]
    Handshake {
        addr: String,
        source: quinn::ConnectionError,
    },
    #[error("dial quic {0}: i/o timeout")]
    Timeout(String),
    #[error("open quic stream: {0}")]
    Open(quinn::ConnectionError),
    #[error("transport.protocol = \"quic\" opens streams on its session, not new connections")]
    NoSession,
}

/// Points at the setting to check when the handshake failed on frps' certificate.
fn cert_hint(e: &quinn::ConnectionError) -> &'static str {
    match e {
        quinn::ConnectionError::TransportError(t) if t.reason.contains("certificate") => {
            " (frps' certificate was rejected: check transport.tls.trustedCaFile and transport.tls.serverName)"
        }
        _ => "",
    }
}

/// `transport.quic.*`, as frp hands them to quic-go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicParams {
    /// `keepalivePeriod` seconds; <= 0 disables keepalives.
    pub keepalive_secs: i64,
    /// `maxIdleTimeout` seconds; <= 0 means quic-go's default, 30.
    pub max_idle_secs: i64,
    /// `maxIncomingStreams`: concurrent bidirectional streams the peer may open; 0 means
    /// quic-go's default, 100; negative allows none.
    pub max_incoming_streams: i64,
}

impl QuicParams {
    pub fn from_config(q: &QuicOptions) -> QuicParams {
        QuicParams {
            keepalive_secs: q.keepalive_period,
            max_idle_secs: q.max_idle_timeout,
            max_incoming_streams: q.max_incoming_streams,
        }
    }

    /// `maxIncomingStreams` as a stream count.
    pub(crate) fn max_incoming(&self) -> u64 {
        match self.max_incoming_streams {
            0 => 100,
            n if n < 0 => 0,
            n => n as u64,
        }
    }

    /// quinn's transport settings, granting the peer `incoming` concurrent bidirectional
    /// streams. Like quic-go, the keepalive period is capped at half the idle timeout, so an
    /// enabled keepalive always keeps an idle connection open.
    pub(crate) fn transport(&self, incoming: u64) -> Result<Arc<TransportConfig>, QuicError> {
        let idle = Duration::from_secs(if self.max_idle_secs > 0 {
            self.max_idle_secs as u64
        } else {
            30
        });
        let idle_timeout = IdleTimeout::try_from(idle).map_err(|_| QuicError::Param {
            name: "maxIdleTimeout",
            value: self.max_idle_secs,
        })?;
        let streams = VarInt::from_u64(incoming).map_err(|_| QuicError::Param {
            name: "maxIncomingStreams",
            value: self.max_incoming_streams,
        })?;
        let mut t = TransportConfig::default();
        t.max_idle_timeout(Some(idle_timeout))
            .max_concurrent_bidi_streams(streams)
            // frp never uses unidirectional streams.
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .keep_alive_interval(
                (self.keepalive_secs > 0)
                    .then(|| Duration::from_secs(self.keepalive_secs as u64).min(idle / 2)),
            );
        Ok(Arc::new(t))
    }
}

// ---------------------------------------------------------------------------------------------
// streams

/// One bidirectional QUIC stream as a byte stream: a logical connection. It holds its
/// connection, so the connection lives at least as long as any of its streams.
pub struct QuicStream {
    send: SendStream,
    recv: RecvStream,
    conn: Connection,
    finished: bool,
    /// frps: its connection's count of open streams (see [`StreamCredit`]).
    open: Option<Arc<AtomicU64>>,
}

impl QuicStream {
    pub(crate) fn new(send: SendStream, recv: RecvStream, conn: Connection) -> QuicStream {
        QuicStream {
            send,
            recv,
            conn,
            finished: false,
            open: None,
        }
    }

    /// The peer's UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match me.recv.poll_read_buf(cx, buf) {
            Poll::Ready(Err(quinn::ReadError::ConnectionLost(e))) => Poll::Ready(Err(lost(e))),
            other => other.map_err(Into::into),
        }
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match SendStream::poll_write(Pin::new(&mut self.get_mut().send), cx, b) {
            Poll::Ready(Err(quinn::WriteError::ConnectionLost(e))) => Poll::Ready(Err(lost(e))),
            other => other.map_err(Into::into),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    /// Sends FIN once; later calls succeed without doing anything.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.finished {
            return Poll::Ready(Ok(()));
        }
        me.finished = true;
        match me.send.finish() {
            Ok(()) => Poll::Ready(Ok(())),
            Err(quinn::ClosedStream { .. }) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "quic stream already closed",
            ))),
        }
    }
}

/// quinn says only "connection lost"; keep the reason (timed out, closed by peer, reset).
fn lost(e: quinn::ConnectionError) -> io::Error {
    let kind = match e {
        quinn::ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        quinn::ConnectionError::LocallyClosed => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::ConnectionReset,
    };
    io::Error::new(kind, format!("quic connection lost: {e}"))
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

// Dropping a QuicStream drops its halves: quinn then stops the receive side (code 0) unless
// everything was read, and finishes the send side unless it was finished or reset, i.e.
// frp's CancelRead(0) + Close().

// ---------------------------------------------------------------------------------------------
// frps side

/// The stream credit frps grants a new QUIC connection at first.
const INITIAL_STREAM_CREDIT: u64 = 256;

/// `maxIncomingStreams` in steps. quinn keeps state for every stream the peer may open (frp's
/// default of 100000 would cost megabytes per connection up front, where quic-go allocates
/// lazily), so frps starts with [`INITIAL_STREAM_CREDIT`] and doubles the grant, up to the
/// configured maximum, whenever more than half of it is in use.
struct StreamCredit {
    max: u64,
    granted: u64,
    open: Arc<AtomicU64>,
}

impl StreamCredit {
    fn new(max: u64) -> StreamCredit {
        StreamCredit {
            max,
            granted: max.min(INITIAL_STREAM_CREDIT),
            open: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts a newly accepted stream; raises the grant when needed.
    fn accepted(&mut self, conn: &Connection, stream: &mut QuicStream) {
        let n = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        stream.open = Some(self.open.clone());
        if n * 2 > self.granted && self.granted < self.max {
            self.granted = (self.granted * 2).min(self.max);
            if let Ok(v) = VarInt::from_u64(self.granted) {
                conn.set_max_concurrent_bi_streams(v);
            }
        }
    }
}

/// QUIC handshakes one listener runs at once before it asks new clients to prove their
/// address first: beyond this, a connection attempt from an address not yet validated gets a
/// Retry (stateless: a flood from spoofed sources costs nothing, a real client comes back at
/// once with the token), and beyond twice this every new attempt is dropped.
pub const MAX_HANDSHAKES: usize = 256;

/// frps' QUIC listener on `quicBindPort`.
pub struct QuicListener {
    endpoint: quinn::Endpoint,
    /// `maxIncomingStreams`.
    max_streams: u64,
    max_handshakes: usize,
    /// Handshakes in progress.
    handshakes: Arc<AtomicUsize>,
    /// Connection attempts answered with a Retry or dropped because of `max_handshakes`.
    deferred: Arc<AtomicU64>,
}

/// One handshake in progress, counted until dropped.
struct HandshakeSlot(Arc<AtomicUsize>);

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl QuicListener {
    /// Binds `addr` (host:port) over UDP. `tls` is frps' TLS config (certificate, and client
    /// verification when `trustedCaFile` is set); ALPN `"frp"` is added here.
    pub fn bind(
        addr: &str,
        tls: &rustls::ServerConfig,
        params: &QuicParams,
    ) -> Result<QuicListener, QuicError> {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        // QUIC allows 0 or u32::MAX; frp does not use 0-RTT.
        tls.max_early_data_size = 0;
        let crypto = QuicServerConfig::try_from(Arc::new(tls))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let max_streams = params.max_incoming();
        cfg.transport_config(params.transport(max_streams.min(INITIAL_STREAM_CREDIT))?);
        let listen_err = |source| QuicError::Listen {
            addr: addr.to_string(),
            source,
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(listen_err)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(cfg),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(listen_err)?;
        Ok(QuicListener {
            endpoint,
            max_streams,
            max_handshakes: MAX_HANDSHAKES,
            handshakes: Arc::default(),
            deferred: Arc::default(),
        })
    }

    /// Changes [`MAX_HANDSHAKES`] (at least 1).
    pub fn set_max_handshakes(&mut self, n: usize) {
        self.max_handshakes = n.max(1);
    }

    /// Admits a connection attempt, or answers it with a Retry or drops it when too many
    /// handshakes run; `None` when not admitted.
    fn admit(&self, incoming: quinn::Incoming) -> Option<(quinn::Incoming, HandshakeSlot)> {
        let busy = self.handshakes.load(Ordering::SeqCst);
        if busy >= self.max_handshakes {
            if !incoming.remote_address_validated() && incoming.may_retry() {
                self.deferred.fetch_add(1, Ordering::SeqCst);
                let _ = incoming.retry();
                return None;
            }
            if busy >= 2 * self.max_handshakes {
                self.deferred.fetch_add(1, Ordering::SeqCst);
                incoming.ignore();
                return None;
            }
        }
        self.handshakes.fetch_add(1, Ordering::SeqCst);
        Some((incoming, HandshakeSlot(self.handshakes.clone())))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Accepts QUIC connections until the task is dropped and hands every bidirectional
    /// stream to `handle` as a logical connection. A connection that opens no stream within
    /// `first_stream_timeout` is closed (as a tcpMux session would be).
    pub async fn serve<F, Fut>(self, first_stream_timeout: Duration, handle: F)
    where
        F: Fn(Conn, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else {
                        warn!("quic listener for incoming connections from client closed");
                        return;
                    };
                    let Some((incoming, slot)) = self.admit(incoming) else {
                        continue;
                    };
                    let credit = StreamCredit::new(self.max_streams);
                    tasks.spawn(serve_connection(incoming, slot, credit, first_stream_timeout, handle.clone()));
                }
                // Reap finished connection tasks.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }
}

async fn serve_connection<F, Fut>(
    incoming: quinn::Incoming,
    slot: HandshakeSlot,
    mut credit: StreamCredit,
    first_stream_timeout: Duration,
    handle: F,
) where
    F: Fn(Conn, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let remote = incoming.remote_address();
    // A handshake gets as long as a connection gets for its first stream (quinn's own limit
    // is the idle timeout, 30 s by default).
    let handshake = tokio::time::timeout(first_stream_timeout, incoming.into_future()).await;
    drop(slot);
    let conn = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            crate::warn_limited!(
                crate::log::PEER_REFUSALS,
                "quic connection from {remote} closed: handshake: {e}"
            );
            return;
        }
        Err(_) => {
            crate::warn_limited!(
                crate::log::PEER_REFUSALS,
                "quic connection from {remote} closed: handshake: not done within {first_stream_timeout:?}"
            );
            return;
        }
    };
    let first = match tokio::time::timeout(first_stream_timeout, conn.accept_bi()).await {
        Ok(r) => r,
        Err(_) => {
            conn.close(VarInt::from_u32(0), b"");
            crate::warn_limited!(
                crate::log::PEER_REFUSALS,
                "quic connection from {remote} closed: no stream opened within {first_stream_timeout:?}"
            );
            return;
        }
    };
    let mut next = first;
    loop {
        match next {
            Ok((send, recv)) => {
                let mut stream = QuicStream::new(send, recv, conn.clone());
                credit.accepted(&conn, &mut stream);
                tokio::spawn(handle(Conn::Boxed(Box::new(stream)), remote));
            }
            Err(e) => {
                debug!("accept new quic stream from {remote} error: {e}");
                conn.close(VarInt::from_u32(0), b"");
                return;
            }
        }
        next = conn.accept_bi().await;
    }
}

// ---------------------------------------------------------------------------------------------
// frpc side

/// How frpc reaches frps over QUIC.
pub struct QuicDialer {
    config: quinn::ClientConfig,
    server_addr: String,
    server_port: u16,
    server_name: String,
    timeout: Duration,
}

impl QuicDialer {
    /// `tls` is frpc's TLS client config (verifying only with `trustedCaFile`); ALPN `"frp"`
    /// is added here. `server_name` is `tls.serverName` or `serverAddr`.
    pub fn new(
        server_addr: &str,
        server_port: u16,
        server_name: &str,
        tls: &rustls::ClientConfig,
        params: &QuicParams,
        timeout: Duration,
    ) -> Result<QuicDialer, QuicError> {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(Arc::new(tls))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        // frps never opens streams towards frpc (frp's client never accepts any), and quinn
        // keeps state for every stream it allows: grant none.
        config.transport_config(params.transport(0)?);
        Ok(QuicDialer {
            config,
            server_addr: server_addr.to_string(),
            server_port,
            server_name: server_name.to_string(),
            timeout,
        })
    }

    fn addr(&self) -> String {
        if self.server_addr.contains(':') && !self.server_addr.starts_with('[') {
            format!("[{}]:{}", self.server_addr, self.server_port)
        } else {
            format!("{}:{}", self.server_addr, self.server_port)
        }
    }

    /// A new QUIC connection to frps, from a new UDP socket (like quic-go's `DialAddr`).
    pub async fn connect(&self) -> Result<QuicSession, QuicError> {
        let addr = self.addr();
        match tokio::time::timeout(self.timeout, self.connect_inner(&addr)).await {
            Ok(r) => r,
            Err(_) => Err(QuicError::Timeout(addr)),
        }
    }

    async fn connect_inner(&self, addr: &str) -> Result<QuicSession, QuicError> {
        let remote = tokio::net::lookup_host(addr)
            .await
            .and_then(|mut it| {
                it.next().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "no address for the host")
                })
            })
            .map_err(|source| QuicError::Resolve {
                addr: addr.to_string(),
                source,
            })?;
        let local: SocketAddr = if remote.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(local).map_err(|source| QuicError::Dial {
            addr: addr.to_string(),
            source,
        })?;
        let connecting = endpoint
            .connect_with(self.config.clone(), remote, &self.server_name)
            .map_err(|source| QuicError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let conn = connecting.await.map_err(|source| QuicError::Handshake {
            addr: addr.to_string(),
            source,
        })?;
        Ok(QuicSession { conn, endpoint })
    }
}

/// frpc's QUIC connection to frps for one login session.
#[derive(Clone)]
pub struct QuicSession {
    conn: Connection,
    endpoint: quinn::Endpoint,
}

impl QuicSession {
    /// A new logical connection: a new bidirectional stream (frps sees it with the first
    /// bytes written, and the client always speaks first).
    pub async fn open(&self) -> Result<QuicStream, QuicError> {
        let (send, recv) = self.conn.open_bi().await.map_err(QuicError::Open)?;
        Ok(QuicStream::new(send, recv, self.conn.clone()))
    }

    /// Closes the connection and with it every stream.
    pub fn close(&self) {
        self.conn.close(VarInt::from_u32(0), b"");
        self.endpoint.close(VarInt::from_u32(0), b"");
    }

    /// After [`QuicSession::close`]: gives quinn up to `limit` to tell frps (CONNECTION_CLOSE),
    /// for a process about to exit. Without it frps would only notice after its idle timeout.
    pub async fn flush_close(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.endpoint.wait_idle()).await;
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<quinn::ConnectionError> {
        self.conn.close_reason()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PARAMS: QuicParams = QuicParams {
        keepalive_secs: 10,
        max_idle_secs: 30,
        max_incoming_streams: 100_000,
    };

    /// An echo server over QUIC on 127.0.0.1 (every stream echoes until FIN).
    fn echo_listener(tls: &rustls::ServerConfig) -> SocketAddr {
        echo_listener_with(tls, &PARAMS)
    }

    fn echo_listener_with(tls: &rustls::ServerConfig, params: &QuicParams) -> SocketAddr {
        let l = QuicListener::bind("127.0.0.1:0", tls, params).unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(l.serve(Duration::from_secs(10), |conn, _| async move {
            let (mut r, mut w) = tokio::io::split(conn);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }));
        addr
    }

    fn dialer(port: u16, name: &str, tls: &rustls::ClientConfig) -> QuicDialer {
        QuicDialer::new(
            "127.0.0.1",
            port,
            name,
            tls,
            &PARAMS,
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn insecure_client() -> Arc<rustls::ClientConfig> {
        crate::tls::client_config("", "", "").unwrap()
    }

    /// A session to the QUIC listener on 127.0.0.1:`port`, trusting any certificate.
    async fn connect_insecure(port: u16) -> QuicSession {
        dialer(port, "127.0.0.1", &insecure_client())
            .connect()
            .await
            .unwrap()
    }

    async fn echo(s: &QuicSession, data: &[u8]) -> Vec<u8> {
        let mut st = s.open().await.unwrap();
        st.write_all(data).await.unwrap();
        st.shutdown().await.unwrap();
        let mut got = Vec::new();
        st.read_to_end(&mut got).await.unwrap();
        got
    }

    /// A flood of connection attempts that never finish their handshake (a relay passes the
    /// clients' packets to frps and drops every answer, as for spoofed sources) holds at most
    /// the cap of handshakes; the rest get a Retry. A real client still connects meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_open_handshakes_are_capped_and_real_clients_get_through() {
        const CAP: usize = 8;
        const FLOOD: usize = 40;
        let tls = crate::tls::server_config("", "", "").unwrap();
        let mut l = QuicListener::bind("127.0.0.1:0", &tls, &PARAMS).unwrap();
        l.set_max_handshakes(CAP);
        let addr = l.local_addr().unwrap();
        let server = l.endpoint.clone();
        let deferred = l.deferred.clone();
        tokio::spawn(l.serve(Duration::from_secs(10), |conn, _| async move {
            let (mut r, mut w) = tokio::io::split(conn);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }));
        // The one-way relay.
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = front.local_addr().unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(addr).await.unwrap();
        let forwarded = Arc::new(AtomicUsize::new(0));
        let fw = forwarded.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, _)) = front.recv_from(&mut buf).await {
                let _ = back.send(&buf[..n]).await;
                fw.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut flood = Vec::new();
        for _ in 0..FLOOD {
            flood.push(tokio::spawn(async move {
                let d = QuicDialer::new(
                    "127.0.0.1",
                    relay.port(),
                    "127.0.0.1",
                    &insecure_client(),
                    &PARAMS,
                    Duration::from_secs(30),
                )
                .unwrap();
                let _ = d.connect().await;
            }));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let open = server.open_connections();
            assert!(open <= CAP, "{open} handshakes held (cap {CAP})");
            if deferred.load(Ordering::SeqCst) >= (FLOOD - CAP) as u64 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {FLOOD} attempts deferred, {open} open, {} datagrams relayed",
                deferred.load(Ordering::SeqCst),
                forwarded.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The first CAP were admitted (and stay stuck in their handshakes), the rest deferred
        // (a client's retransmitted Initial may be deferred again).
        assert!(server.open_connections() <= CAP);
        // A real client is asked to retry and comes back validated.
        let s = connect_insecure(addr.port()).await;
        assert_eq!(echo(&s, b"through the flood").await, b"through the flood");
        s.close();
        for f in flood {
            f.abort();
        }
    }

    #[tokio::test]
    async fn stream_echo_over_self_signed_cert() {
        let tls = crate::tls::server_config("", "", "").unwrap();
        let addr = echo_listener(&tls);
        let s = connect_insecure(addr.port()).await;
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
        assert_eq!(echo(&s, &data).await, data);
        // The ALPN frp requires was negotiated.
        let hd = s.conn.handshake_data().unwrap();
        let hd = hd
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap();
        assert_eq!(hd.protocol.as_deref(), Some(ALPN));
        s.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_streams_on_one_connection() {
        let tls = crate::tls::server_config("", "", "").unwrap();
        let addr = echo_listener(&tls);
        let s = connect_insecure(addr.port()).await;
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let data = format!("stream {i} ").repeat(i as usize + 1).into_bytes();
                assert_eq!(echo(&s, &data).await, data, "stream {i}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(s.close_reason().is_none());
    }

    /// `n` streams opened and kept open at the same time, each echoing its own bytes.
    async fn hold_streams(s: &QuicSession, n: usize) -> Vec<QuicStream> {
        let mut held = Vec::new();
        for i in 0..n {
            let mut st = tokio::time::timeout(Duration::from_secs(5), s.open())
                .await
                .unwrap_or_else(|_| panic!("stream {i} not granted"))
                .unwrap();
            st.write_all(&(i as u32).to_be_bytes()).await.unwrap();
            held.push(st);
        }
        for (i, st) in held.iter_mut().enumerate() {
            let mut b = [0u8; 4];
            st.read_exact(&mut b).await.unwrap();
            assert_eq!(u32::from_be_bytes(b), i as u32);
        }
        held
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_credit_grows_up_to_max_incoming_streams() {
        let tls = crate::tls::server_config("", "", "").unwrap();
        let addr = echo_listener(&tls);
        let s = connect_insecure(addr.port()).await;
        // Far beyond the initial grant, all open at once.
        let held = hold_streams(&s, 4 * INITIAL_STREAM_CREDIT as usize).await;
        assert_eq!(held.len(), 1024);
        s.close();
    }

    #[tokio::test]
    async fn max_incoming_streams_caps_concurrent_streams() {
        let tls = crate::tls::server_config("", "", "").unwrap();
        let params = QuicParams {
            max_incoming_streams: 5,
            ..PARAMS
        };
        let addr = echo_listener_with(&tls, &params);
        let s = connect_insecure(addr.port()).await;
        let mut held = hold_streams(&s, 5).await;
        let sixth = tokio::time::timeout(Duration::from_millis(500), s.open()).await;
        assert!(sixth.is_err(), "a 6th concurrent stream was granted");
        // One stream ends: its credit comes back.
        let mut first = held.remove(0);
        first.shutdown().await.unwrap();
        let mut rest = Vec::new();
        first.read_to_end(&mut rest).await.unwrap();
        drop(first);
        let sixth = tokio::time::timeout(Duration::from_secs(5), s.open()).await;
        assert!(matches!(sixth, Ok(Ok(_))), "credit not returned");
        s.close();
    }

    #[tokio::test]
    async fn connection_that_opens_no_stream_is_closed() {
        let tls = crate::tls::server_config("", "", "").unwrap();
        let l = QuicListener::bind("127.0.0.1:0", &tls, &PARAMS).unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(l.serve(Duration::from_millis(300), |_, _| async {}));
        let s = connect_insecure(addr.port()).await;
        let r = tokio::time::timeout(Duration::from_secs(5), s.conn.closed())
            .await
            .expect("frps closes a connection that opens no stream");
        assert!(
            matches!(r, quinn::ConnectionError::ApplicationClosed(_)),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn generated_certificate_is_self_signed_ecdsa() {
        let (certs, key) = crate::tls::self_signed().unwrap();
        assert_eq!(certs.len(), 1);
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
        assert_eq!(signer.algorithm(), rustls::SignatureAlgorithm::ECDSA);
        // Two start-ups, two different certificates.
        let (again, _) = crate::tls::self_signed().unwrap();
        assert_ne!(certs[0], again[0]);
        // The client sees the generated certificate.
        let tls = crate::tls::server_config("", "", "").unwrap();
        let addr = echo_listener(&tls);
        let s = connect_insecure(addr.port()).await;
        let peer = s.conn.peer_identity().unwrap();
        let peer = peer
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .unwrap();
        assert_eq!(peer.len(), 1);
        s.close();
    }

    /// A CA and a server certificate for `name` signed by it, as PEM files in `dir`.
    fn write_ca_and_cert(dir: &std::path::Path, tag: &str, name: &str) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{tag} test CA"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let p = |f: &str| {
            dir.join(format!("{tag}-{f}"))
                .to_string_lossy()
                .into_owned()
        };
        let (ca_path, cert_path, key_path) = (p("ca.pem"), p("cert.pem"), p("key.pem"));
        std::fs::write(&ca_path, ca.pem()).unwrap();
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (ca_path, cert_path, key_path)
    }

    #[tokio::test]
    async fn trusted_ca_file_verifies_the_server() {
        let dir = std::env::temp_dir().join(format!("frp-quic-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, cert, key) = write_ca_and_cert(&dir, "good", "frps.example");
        let (other_ca, _, _) = write_ca_and_cert(&dir, "other", "frps.example");
        let tls = crate::tls::server_config(&cert, &key, "").unwrap();
        let addr = echo_listener(&tls);

        // The right CA and name: verified, works.
        let good = crate::tls::client_config("", "", &ca).unwrap();
        let s = dialer(addr.port(), "frps.example", &good)
            .connect()
            .await
            .unwrap();
        assert_eq!(echo(&s, b"verified").await, b"verified");
        s.close();

        // Another CA: refused, and the error says why.
        let bad = crate::tls::client_config("", "", &other_ca).unwrap();
        let err = dialer(addr.port(), "frps.example", &bad)
            .connect()
            .await
            .err()
            .expect("a certificate from an unknown CA is refused");
        let msg = err.to_string();
        assert!(matches!(err, QuicError::Handshake { .. }), "{msg}");
        assert!(msg.contains("UnknownIssuer"), "{msg}");
        assert!(msg.contains("transport.tls.trustedCaFile"), "{msg}");

        // The right CA but another name: refused too.
        let err = dialer(addr.port(), "other.example", &good)
            .connect()
            .await
            .err()
            .expect("a name the certificate does not cover is refused");
        assert!(err.to_string().contains("not valid for name"), "{err}");

        // Without trustedCaFile anything goes (frp's InsecureSkipVerify).
        let s = dialer(addr.port(), "whatever", &insecure_client())
            .connect()
            .await
            .unwrap();
        assert_eq!(echo(&s, b"insecure").await, b"insecure");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn wrong_alpn_is_refused() {
        let tls = crate::tls::server_config("", "", "").unwrap();
        let addr = echo_listener(&tls);
        let mut client = (*insecure_client()).clone();
        client.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = QuicClientConfig::try_from(Arc::new(client)).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let r = endpoint
            .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), addr, "x")
            .unwrap()
            .await;
        assert!(r.is_err(), "a client without ALPN frp is refused");
    }

    #[tokio::test]
    async fn unreachable_server_times_out() {
        // A bound UDP socket that never answers.
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = QuicDialer::new(
            "127.0.0.1",
            sink.local_addr().unwrap().port(),
            "127.0.0.1",
            &insecure_client(),
            &PARAMS,
            Duration::from_millis(300),
        )
        .unwrap();
        let err = d.connect().await.err().unwrap();
        assert!(matches!(err, QuicError::Timeout(_)), "{err}");
    }

    #[test]
    fn params_follow_quic_go_defaults() {
        let p = QuicParams::from_config(&QuicOptions {
            keepalive_period: 0,
            max_idle_timeout: 0,
            max_incoming_streams: 0,
        });
        assert_eq!(p.max_incoming(), 100);
        assert!(p.transport(p.max_incoming()).is_ok());
        let p = QuicParams {
            keepalive_secs: 10,
            max_idle_secs: i64::MAX / 1000,
            max_incoming_streams: 1,
        };
        assert!(matches!(
            p.transport(1),
            Err(QuicError::Param {
                name: "maxIdleTimeout",
                ..
            })
        ));
    }
}
