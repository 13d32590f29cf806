//! From sockets to *logical connections* (spec §2): frpc dials frps (TCP, the optional 0x17
//! byte, TLS, yamux), frps classifies what arrives on `bindPort` (sniffing, TLS detection).
//! Everything above this module sees a [`Conn`]: one control, work or visitor connection.
//!
//! Transports: `tcp`, `websocket`, `wss`, `kcp` and `quic` (client), plain/TLS/websocket on
//! `bindPort`, KCP on `kcpBindPort` and QUIC on `quicBindPort` (server; [`websocket`],
//! [`crate::kcp`], [`quic`]); frpc may reach frps through an HTTP(S) CONNECT, NTLM or SOCKS5
//! proxy ([`proxy`], [`ntlm`]) and from a chosen local address (both tcp/websocket only, as in
//! frp). A KCP session is not sniffed: it goes straight to TLS detection ([`accept_kcp`]), then
//! yamux when tcpMux is on, like a `bindPort` connection. A QUIC stream is a logical
//! connection by itself: no TLS layer of frp's, no yamux.

pub mod ntlm;
pub mod proxy;
pub mod quic;
pub mod websocket;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dataplane::{AsyncStream, Endpoint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::ClientConfig;
use crate::tls::{FRP_TLS_HEAD_BYTE, TLS_RECORD_BYTE};
use crate::yamux;
use proxy::ProxyUrl;

/// One logical connection: a bare TCP socket (the data plane may splice it) or any other
/// stream (TLS, a yamux stream).
pub enum Conn {
    Tcp(TcpStream),
    /// A yamux stream: handed to the data plane as halves whose reads copy nothing.
    Yamux(yamux::Stream),
    Boxed(Box<dyn AsyncStream>),
}

impl Conn {
    /// Hands the connection to the data plane.
    pub fn into_endpoint(self) -> Endpoint {
        match self {
            Conn::Tcp(s) => Endpoint::Tcp(s),
            Conn::Yamux(s) => {
                let (read, write) = s.into_halves();
                Endpoint::Halves {
                    read: Box::new(read),
                    write: Box::new(write),
                }
            }
            // TLS over a bare TCP socket is carried by a data-plane core (crate::tls::split).
            Conn::Boxed(s) => crate::tls::endpoint(s),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Yamux(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Boxed(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, b),
            Conn::Yamux(s) => Pin::new(s).poll_write(cx, b),
            Conn::Boxed(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Yamux(s) => Pin::new(s).poll_flush(cx),
            Conn::Boxed(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Yamux(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Boxed(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Sets TCP keepalive (`secs <= 0` leaves it off) and disables Nagle, as Go does by default.
pub fn tune_tcp(s: &TcpStream, keepalive_secs: i64) {
    let _ = s.set_nodelay(true);
    if keepalive_secs > 0 {
        let sock = socket2::SockRef::from(s);
        let ka = socket2::TcpKeepalive::new().with_time(Duration::from_secs(keepalive_secs as u64));
        let _ = sock.set_tcp_keepalive(&ka);
    }
}

// ---------------------------------------------------------------------------------------------
// frpc side

/// `transport.protocol` values frpc can dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP → [0x17] → [TLS].
    Tcp,
    /// TCP → websocket → [0x17] → [TLS].
    Websocket,
    /// TCP → TLS (always, no custom byte) → websocket.
    Wss,
    /// QUIC (UDP) with its own TLS; one stream per logical connection.
    Quic,
    /// KCP (UDP to `serverAddr:serverPort`) → [0x17] → [TLS].
    Kcp,
}

/// How frpc reaches frps, from `serverAddr`, `serverPort` and `transport.*`.
#[derive(Clone)]
pub struct DialConfig {
    pub server_addr: String,
    pub server_port: u16,
    pub protocol: Protocol,
    /// The websocket Host header (and Origin host): `serverAddr:serverPort` for websocket,
    /// the TLS server name for wss (Go's choice).
    pub ws_host: String,
    /// `transport.proxyURL`.
    pub proxy: Option<ProxyUrl>,
    /// `transport.connectServerLocalIP`.
    pub local_ip: Option<IpAddr>,
    pub dial_timeout: Duration,
    pub keepalive_secs: i64,
    /// TLS connector and the name to present, when `transport.tls.enable` (always for wss).
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Send 0x17 before the ClientHello (`disableCustomTLSFirstByte = false`).
    pub custom_tls_first_byte: bool,
    /// `transport.tcpMux` and its keepalive interval.
    pub tcp_mux: bool,
    pub tcp_mux_keepalive_secs: i64,
    /// The QUIC dialer, for `transport.protocol = "quic"` (tcpMux and the TLS layer above
    /// do not apply then).
    pub quic: Option<Arc<quic::QuicDialer>>,
}

/// Dialing frps failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Go's words: `dial tcp 127.0.0.1:7000: connect: connection refused`.
    #[error("dial tcp {addr}: {}", connect_error_text(.source))]
    Connect { addr: String, source: io::Error },
    #[error("dial tcp {0}: i/o timeout")]
    Timeout(String),
    #[error("tls handshake with {addr}: {source}")]
    Tls { addr: String, source: io::Error },
    #[error("open yamux stream: {0}")]
    Mux(String),
    #[error("dial {addr} through proxy {proxy}: {source}")]
    Proxy {
        addr: String,
        proxy: String,
        source: io::Error,
    },
    #[error("websocket connection to {addr}: {source}")]
    Websocket { addr: String, source: io::Error },
    #[error("{0}")]
    Quic(#[from] quic::QuicError),
    #[error("dial kcp {addr}: {source}")]
    Kcp { addr: String, source: io::Error },
}

/// A failed connect in Go's words (`connect: connection refused`); an error of our own
/// (no OS error code: resolution, `connectServerLocalIP`) as it is.
fn connect_error_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(_) => format!("connect: {}", crate::listen::os_error_text(e)),
        None => e.to_string(),
    }
}

/// frpc's transport settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "transport.protocol = \"{0}\" is not supported by this frpc build (use tcp, kcp, quic, websocket or wss)"
    )]
    UnsupportedProtocol(String),
    #[error("{0}")]
    Quic(#[from] quic::QuicError),
    #[error("{0}")]
    ProxyUrl(#[from] proxy::ProxyUrlError),
    #[error("invalid transport.connectServerLocalIP [{0}]: want an IP address")]
    LocalIp(String),
}

/// frp dials QUIC with its TLS client config (client certificate, trustedCaFile) only when
/// `transport.tls.enable`; otherwise with an unverifying one.
fn quic_dialer(cfg: &ClientConfig, server_name: &str) -> Result<quic::QuicDialer, SetupError> {
    let t = &cfg.transport;
    crate::tls::server_name(server_name)?;
    let tls = if t.tls.enable {
        crate::tls::client_config(&t.tls.cert_file, &t.tls.key_file, &t.tls.trusted_ca_file)?
    } else {
        crate::tls::client_config("", "", "")?
    };
    Ok(quic::QuicDialer::new(
        &cfg.server_addr,
        cfg.server_port,
        server_name,
        &tls,
        &quic::QuicParams::from_config(&t.quic),
        Duration::from_secs(t.dial_server_timeout.max(1) as u64),
    )?)
}

impl DialConfig {
    /// The dialing side of frpc's config: transport protocol, TLS, proxy, local address.
    pub fn from_client_config(cfg: &ClientConfig) -> Result<DialConfig, SetupError> {
        let t = &cfg.transport;
        let protocol = match t.protocol.as_str() {
            "" | "tcp" => Protocol::Tcp,
            "websocket" => Protocol::Websocket,
            "wss" => Protocol::Wss,
            "quic" => Protocol::Quic,
            "kcp" => Protocol::Kcp,
            other => return Err(SetupError::UnsupportedProtocol(other.to_string())),
        };
        let server_name = if t.tls.server_name.is_empty() {
            cfg.server_addr.clone()
        } else {
            t.tls.server_name.clone()
        };
        let quic = if protocol == Protocol::Quic {
            Some(Arc::new(quic_dialer(cfg, &server_name)?))
        } else {
            None
        };
        let tls = if protocol == Protocol::Quic {
            None
        } else if t.tls.enable || protocol == Protocol::Wss {
            let cc = crate::tls::client_config(
                &t.tls.cert_file,
                &t.tls.key_file,
                &t.tls.trusted_ca_file,
            )?;
            Some((cc, crate::tls::server_name(&server_name)?))
        } else {
            None
        };
        let local_ip = match t.connect_server_local_ip.as_str() {
            "" => None,
            ip => Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| SetupError::LocalIp(ip.to_string()))?,
            ),
        };
        let mut d = DialConfig {
            server_addr: cfg.server_addr.clone(),
            server_port: cfg.server_port,
            protocol,
            ws_host: String::new(),
            proxy: ProxyUrl::parse(&t.proxy_url)?,
            local_ip,
            dial_timeout: Duration::from_secs(t.dial_server_timeout.max(1) as u64),
            keepalive_secs: t.dial_server_keepalive,
            tls,
            custom_tls_first_byte: !t.tls.disable_custom_tls_first_byte,
            tcp_mux: t.tcp_mux,
            tcp_mux_keepalive_secs: t.tcp_mux_keepalive_interval,
            quic,
        };
        d.ws_host = match protocol {
            Protocol::Wss => server_name,
            _ => d.addr(),
        };
        Ok(d)
    }

    fn addr(&self) -> String {
        if self.server_addr.contains(':') && !self.server_addr.starts_with('[') {
            format!("[{}]:{}", self.server_addr, self.server_port)
        } else {
            format!("{}:{}", self.server_addr, self.server_port)
        }
    }

    /// A TCP connection to `addr` (from `connectServerLocalIP` when set).
    async fn connect_tcp(&self, addr: &str) -> io::Result<TcpStream> {
        let Some(local) = self.local_ip else {
            return TcpStream::connect(addr).await;
        };
        let mut last = io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!(
                "no {} address for {addr}",
                if local.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
        );
        for remote in tokio::net::lookup_host(addr).await? {
            if remote.is_ipv4() != local.is_ipv4() {
                continue;
            }
            let sock = if local.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(local, 0)).map_err(|e| {
                io::Error::new(e.kind(), format!("bind connectServerLocalIP {local}: {e}"))
            })?;
            match sock.connect(remote).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// TCP to frps, or to the proxy and through it to frps (TLS to an `https` proxy: then the
    /// connection is no longer a bare socket).
    async fn dial_tcp(&self) -> Result<Conn, DialError> {
        let addr = self.addr();
        let Some(proxy) = &self.proxy else {
            let tcp = match tokio::time::timeout(self.dial_timeout, self.connect_tcp(&addr)).await {
                Err(_) => return Err(DialError::Timeout(addr)),
                Ok(Err(e)) => return Err(DialError::Connect { addr, source: e }),
                Ok(Ok(s)) => s,
            };
            tune_tcp(&tcp, self.keepalive_secs);
            return Ok(Conn::Tcp(tcp));
        };
        let via = async {
            let tcp = self.connect_tcp(&proxy.addr).await?;
            tune_tcp(&tcp, self.keepalive_secs);
            proxy.tunnel(tcp, &self.server_addr, self.server_port).await
        };
        match tokio::time::timeout(self.dial_timeout, via).await {
            Err(_) => Err(DialError::Timeout(addr)),
            Ok(Err(e)) => Err(DialError::Proxy {
                addr,
                proxy: proxy.addr.clone(),
                source: e,
            }),
            Ok(Ok(s)) => Ok(s),
        }
    }

    /// The optional 0x17 byte and the TLS client handshake over `io`.
    async fn tls_over<S: AsyncStream>(
        &self,
        mut io: S,
        custom_byte: bool,
    ) -> Result<Conn, DialError> {
        let addr = self.addr();
        let Some((config, name)) = &self.tls else {
            return Ok(Conn::Boxed(Box::new(io)));
        };
        if custom_byte {
            io.write_all(&[FRP_TLS_HEAD_BYTE])
                .await
                .map_err(|e| DialError::Tls {
                    addr: addr.clone(),
                    source: e,
                })?;
        }
        let tls = tokio::time::timeout(
            self.dial_timeout,
            crate::tls::connect(io, config.clone(), name.clone()),
        )
        .await
        .map_err(|_| DialError::Timeout(addr.clone()))?
        .map_err(|e| DialError::Tls { addr, source: e })?;
        Ok(Conn::Boxed(Box::new(tls)))
    }

    async fn websocket_over<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
    ) -> Result<websocket::WsStream<S>, DialError> {
        let addr = self.addr();
        match tokio::time::timeout(self.dial_timeout, websocket::connect(io, &self.ws_host)).await {
            Err(_) => Err(DialError::Timeout(addr)),
            Ok(Err(e)) => Err(DialError::Websocket { addr, source: e }),
            Ok(Ok(ws)) => Ok(ws),
        }
    }

    /// One new transport connection, by `transport.protocol`: TCP (through the proxy, if
    /// any), then the websocket / first byte / TLS layers (spec §2.1).
    pub async fn dial(&self) -> Result<Conn, DialError> {
        match self.protocol {
            Protocol::Quic => return Err(quic::QuicError::NoSession.into()),
            Protocol::Kcp => return self.dial_kcp().await,
            _ => {}
        }
        let tcp = self.dial_tcp().await?;
        match self.protocol {
            Protocol::Tcp if self.tls.is_none() => Ok(tcp),
            Protocol::Tcp => self.tls_over(tcp, self.custom_tls_first_byte).await,
            Protocol::Websocket => {
                let ws = self.websocket_over(tcp).await?;
                self.tls_over(ws, self.custom_tls_first_byte).await
            }
            Protocol::Quic => unreachable!("handled above"),
            Protocol::Wss => {
                let Conn::Boxed(tls) = self.tls_over(tcp, false).await? else {
                    unreachable!("wss always has TLS");
                };
                Ok(Conn::Boxed(Box::new(self.websocket_over(tls).await?)))
            }
            Protocol::Kcp => unreachable!("dialed above"),
        }
    }

    /// KCP to `serverAddr:serverPort` (frps' `kcpBindPort`), then the first byte and TLS.
    /// frp dials KCP directly: no proxy, no `connectServerLocalIP`.
    async fn dial_kcp(&self) -> Result<Conn, DialError> {
        let addr = self.addr();
        let kcp = match tokio::time::timeout(self.dial_timeout, crate::kcp::dial(&addr, None)).await
        {
            Err(_) => return Err(DialError::Timeout(addr)),
            Ok(Err(e)) => return Err(DialError::Kcp { addr, source: e }),
            Ok(Ok(s)) => s,
        };
        self.tls_over(kcp, self.custom_tls_first_byte).await
    }

    /// Connects to frps: with tcpMux one session whose streams are the logical connections,
    /// without it a fresh transport connection each time. Returns the first logical
    /// connection (the control connection) too.
    pub async fn connect(&self) -> Result<(Connector, Conn), DialError> {
        if let Some(q) = &self.quic {
            let session = q.connect().await?;
            let control = match session.open().await {
                Ok(s) => s,
                Err(e) => {
                    session.close();
                    return Err(e.into());
                }
            };
            return Ok((Connector::Quic(session), Conn::Boxed(Box::new(control))));
        }
        let first = self.dial().await?;
        if !self.tcp_mux {
            return Ok((Connector::Direct(Arc::new(self.clone())), first));
        }
        let (session, mut incoming) = yamux::session(
            first,
            yamux::Config::frp(self.tcp_mux_keepalive_secs),
            yamux::Mode::Client,
        );
        // frps never opens streams towards frpc; anything it tries is dropped.
        tokio::spawn(async move { while incoming.accept().await.is_some() {} });
        let control = session
            .open_stream()
            .await
            .map_err(|e| DialError::Mux(e.to_string()))?;
        Ok((Connector::Mux(session), Conn::Boxed(Box::new(control))))
    }
}

/// Opens further logical connections (work, visitor) to the frps frpc is logged in to.
#[derive(Clone)]
pub enum Connector {
    Mux(yamux::Session),
    Direct(Arc<DialConfig>),
    Quic(quic::QuicSession),
    /// An frpc inside frps (the SSH tunnel gateway's, frp's `virtual.Client`): each logical
    /// connection is an in-memory stream frps serves like an accepted one.
    InProcess(InProcessDialer),
}

/// Makes one logical connection to the frps of the same process (see
/// [`Connector::InProcess`]).
pub type InProcessDialer = Arc<dyn Fn() -> Conn + Send + Sync>;

impl Connector {
    pub async fn open(&self) -> Result<Conn, DialError> {
        match self {
            Connector::Mux(s) => {
                let st = s
                    .open_stream()
                    .await
                    .map_err(|e| DialError::Mux(e.to_string()))?;
                Ok(Conn::Yamux(st))
            }
            Connector::Direct(d) => d.dial().await,
            Connector::Quic(q) => Ok(Conn::Boxed(Box::new(q.open().await?))),
            Connector::InProcess(d) => Ok(d()),
        }
    }

    /// After [`Connector::close`], before the process exits: lets a QUIC connection's close
    /// reach frps (up to `limit`). Nothing to wait for with TCP.
    pub async fn flush_close(&self, limit: Duration) {
        if let Connector::Quic(q) = self {
            q.flush_close(limit).await;
        }
    }

    /// Tears the whole session down (tcpMux, QUIC); a no-op for direct connections.
    pub fn close(&self) {
        match self {
            Connector::Mux(s) => s.close(),
            Connector::Quic(q) => q.close(),
            Connector::Direct(_) | Connector::InProcess(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// frps side

/// What frps found on a new `bindPort` connection (spec §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// `GET /~!frp`: frp's websocket transport.
    Websocket,
    /// 0x16 or 0x17 first: TLS (the 0x17 byte is to be consumed).
    Tls { custom_byte: bool },
    /// Anything else: plain frp.
    Plain,
}

/// frp's websocket prefix, also the number of bytes frps wants before deciding.
pub const WEBSOCKET_PREFIX: &[u8; 10] = b"GET /~!frp";

/// Classifies a connection by its first bytes without consuming them (MSG_PEEK), so a plain
/// connection stays a bare socket. Waits for up to `deadline` for the bytes it needs: only a
/// connection starting with `G` needs all 10.
pub async fn sniff(s: &TcpStream, deadline: Duration) -> io::Result<Sniffed> {
    let fut = async {
        let mut buf = [0u8; 10];
        loop {
            let n = s.peek(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before sending anything",
                ));
            }
            match buf[0] {
                FRP_TLS_HEAD_BYTE => return Ok(Sniffed::Tls { custom_byte: true }),
                TLS_RECORD_BYTE => return Ok(Sniffed::Tls { custom_byte: false }),
                b'G' if n < WEBSOCKET_PREFIX.len() && WEBSOCKET_PREFIX.starts_with(&buf[..n]) => {
                    // Partial websocket prefix: wait for the rest. peek() returns at once while
                    // data is pending, so poll gently.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ if &buf[..n] == WEBSOCKET_PREFIX => return Ok(Sniffed::Websocket),
                _ => return Ok(Sniffed::Plain),
            }
        }
    };
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no data within 10s",
        )),
    }
}

/// frps' view of its TLS settings.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// `transport.tls.force`: refuse plain connections.
    pub force: bool,
}

/// Why a `bindPort` connection was refused before it reached frp's message layer.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("sniff first bytes: {0}")]
    Sniff(io::Error),
    #[error("non-TLS connection received on a TlsOnly server")]
    TlsRequired,
    #[error("tls handshake: {0}")]
    Tls(io::Error),
    #[error("websocket: {0}")]
    Websocket(io::Error),
}

/// Sniffs and, where needed, completes TLS on an accepted `bindPort` connection.
pub async fn accept_transport(
    mut tcp: TcpStream,
    tls: &ServerTls,
    deadline: Duration,
) -> Result<Conn, AcceptError> {
    match sniff(&tcp, deadline).await.map_err(AcceptError::Sniff)? {
        Sniffed::Websocket => {
            let ws = tokio::time::timeout(deadline, websocket::accept(tcp))
                .await
                .map_err(|_| AcceptError::Websocket(io::ErrorKind::TimedOut.into()))?
                .map_err(AcceptError::Websocket)?;
            detect_tls(ws, tls, deadline).await
        }
        Sniffed::Plain if tls.force => Err(AcceptError::TlsRequired),
        Sniffed::Plain => Ok(Conn::Tcp(tcp)),
        Sniffed::Tls { custom_byte } => {
            if custom_byte {
                let mut b = [0u8; 1];
                tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut b)
                    .await
                    .map_err(AcceptError::Tls)?;
            }
            let s = tokio::time::timeout(deadline, crate::tls::accept(tcp, tls.config.clone()))
                .await
                .map_err(|_| AcceptError::Tls(io::ErrorKind::TimedOut.into()))?
                .map_err(AcceptError::Tls)?;
            Ok(Conn::Boxed(Box::new(s)))
        }
    }
}

/// TLS detection on an accepted KCP session (spec §2.3; KCP is not sniffed).
pub async fn accept_kcp(
    s: crate::kcp::KcpStream,
    tls: &ServerTls,
    deadline: Duration,
) -> Result<Conn, AcceptError> {
    detect_tls(s, tls, deadline).await
}

/// TLS detection on a stream that cannot be peeked (a websocket, a KCP session): reads the
/// first byte and puts it back unless it is frp's 0x17 (spec §2.3).
async fn detect_tls<S: AsyncStream>(
    mut io: S,
    tls: &ServerTls,
    deadline: Duration,
) -> Result<Conn, AcceptError> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(deadline, io.read_exact(&mut b)).await {
        Err(_) => {
            return Err(AcceptError::Sniff(io::Error::new(
                io::ErrorKind::TimedOut,
                "no data within 10s",
            )));
        }
        Ok(Err(e)) => return Err(AcceptError::Sniff(e)),
        Ok(Ok(_)) => {}
    }
    let (is_tls, replay) = match b[0] {
        FRP_TLS_HEAD_BYTE => (true, Vec::new()),
        TLS_RECORD_BYTE => (true, vec![TLS_RECORD_BYTE]),
        other => (false, vec![other]),
    };
    let io = websocket::Rewind::new(replay, io);
    if !is_tls {
        if tls.force {
            return Err(AcceptError::TlsRequired);
        }
        return Ok(Conn::Boxed(Box::new(io)));
    }
    let s = tokio::time::timeout(deadline, crate::tls::accept(io, tls.config.clone()))
        .await
        .map_err(|_| AcceptError::Tls(io::ErrorKind::TimedOut.into()))?
        .map_err(AcceptError::Tls)?;
    Ok(Conn::Boxed(Box::new(s)))
}

/// Formats a socket address the way frp logs and sends them (IP without brackets, port).
pub fn split_addr(a: &SocketAddr) -> (String, u16) {
    (a.ip().to_string(), a.port())
}

/// Wraps a connection in an `Arc`-free boxed stream (helper for tests and drivers).
pub fn boxed<S: AsyncStream>(s: S) -> Conn {
    Conn::Boxed(Box::new(s))
}

/// Shared handle type for TLS server configs.
pub type ServerTlsConfig = Arc<rustls::ServerConfig>;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn sniff_classifies_without_consuming() {
        for (first, want) in [
            (&b"o\0\0\0\0\0\0\0\x02{}"[..], Sniffed::Plain),
            (
                &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5][..],
                Sniffed::Tls { custom_byte: false },
            ),
            (&[0x17, 0x16, 3, 1][..], Sniffed::Tls { custom_byte: true }),
            (&b"GET /~!frp HTTP/1.1\r\n"[..], Sniffed::Websocket),
            (&b"GET / HTTP/1.1\r\n"[..], Sniffed::Plain),
        ] {
            let (mut c, mut s) = pair().await;
            c.write_all(first).await.unwrap();
            assert_eq!(sniff(&s, Duration::from_secs(2)).await.unwrap(), want);
            let mut got = vec![0u8; first.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(got, first);
        }
    }

    #[tokio::test]
    async fn sniff_waits_for_a_split_websocket_prefix() {
        let (mut c, s) = pair().await;
        c.write_all(b"GET /").await.unwrap();
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.write_all(b"~!frp").await.unwrap();
            c
        });
        assert_eq!(
            sniff(&s, Duration::from_secs(2)).await.unwrap(),
            Sniffed::Websocket
        );
        t.await.unwrap();
    }

    #[tokio::test]
    async fn sniff_times_out_on_silence() {
        let (_c, s) = pair().await;
        let e = sniff(&s, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn tls_force_rejects_plain() {
        let tls = ServerTls {
            config: crate::tls::server_config("", "", "").unwrap(),
            force: true,
        };
        let (mut c, s) = pair().await;
        c.write_all(b"o\0\0\0\0\0\0\0\x02{}").await.unwrap();
        let r = accept_transport(s, &tls, Duration::from_secs(2)).await;
        assert!(matches!(r, Err(AcceptError::TlsRequired)));
    }
}
