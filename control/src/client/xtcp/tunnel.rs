//! The P2P session over a punched UDP socket, as frp runs it: QUIC (the default; the proxy
//! owner is the QUIC server, the visitor the client, ALPN `"frp"`, a certificate generated on
//! the spot and not verified) or KCP (conversation 1 on both sides, frp's KCP settings with
//! 1024/1024 windows) carrying yamux (owner = server; keepalive 10 s, 6 MiB windows). Every
//! user connection of the visitor is one stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::kcp;
use crate::transport::Conn;
use crate::transport::quic::{ALPN, QuicParams, QuicStream};
use crate::yamux;

/// How long the owner waits for the visitor's QUIC connection after the punch.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the visitor's QUIC handshake may take (quic-go's default handshake timeout).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent streams the owner grants the visitor at most: `maxIncomingStreams` (frp's
/// default 100000) as quinn would hold state for every one of them up front.
const MAX_STREAMS: u64 = 1024;
/// yamux keepalive on the KCP session (frp: 10 s).
const YAMUX_KEEPALIVE_SECS: i64 = 10;

/// Why a real frp (Go) visitor cannot reach us over QUIC: it names the peer `ip:port` in the
/// TLS server name, which rustls refuses as an illegal SNI.
pub const SNI_HINT: &str = " (a real frp visitor sends the peer's ip:port as TLS server name, which this frpc's TLS refuses: use protocol = \"kcp\" on that visitor)";

/// A session error, in frp's words where it has them.
pub type TunnelError = String;

/// The visitor's end of a P2P session.
pub enum Tunnel {
    Quic {
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
    },
    Kcp {
        session: yamux::Session,
        _incoming: yamux::Incoming,
    },
}

impl Tunnel {
    /// A new stream to the owner (frp's `OpenConn`).
    pub async fn open(&self) -> Result<Conn, TunnelError> {
        match self {
            Tunnel::Quic { conn, .. } => {
                let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                Ok(Conn::Boxed(Box::new(QuicStream::new(
                    send,
                    recv,
                    conn.clone(),
                ))))
            }
            Tunnel::Kcp { session, .. } => session
                .open_stream()
                .await
                .map(Conn::Yamux)
                .map_err(|e| e.to_string()),
        }
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Tunnel::Quic { conn, .. } => conn.close_reason().is_some(),
            Tunnel::Kcp { session, .. } => session.is_closed(),
        }
    }

    pub fn close(&self) {
        match self {
            Tunnel::Quic { endpoint, conn } => {
                conn.close(0u32.into(), b"");
                endpoint.close(0u32.into(), b"");
            }
            Tunnel::Kcp { session, .. } => session.close(),
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.close();
    }
}

fn endpoint(
    sock: UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, TunnelError> {
    let std_sock = sock.into_std().map_err(|e| e.to_string())?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        std_sock,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| e.to_string())
}

/// Visitor: the QUIC client on the punched socket.
pub async fn dial_quic(
    sock: UdpSocket,
    raddr: SocketAddr,
    params: &QuicParams,
) -> Result<Tunnel, TunnelError> {
    let mut tls = (*crate::tls::client_config("", "", "")
        .map_err(|e| format!("create tls config error: {e}"))?)
    .clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(params.transport(0).map_err(|e| e.to_string())?);
    let endpoint = endpoint(sock, None)?;
    let connecting = endpoint
        .connect_with(cfg, raddr, &raddr.ip().to_string())
        .map_err(|e| format!("dial quic error: {e}"))?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(Tunnel::Quic { endpoint, conn }),
        Ok(Err(e)) => Err(format!("dial quic error: {e}")),
        Err(_) => Err("dial quic error: timeout: handshake did not complete in time".into()),
    }
}

/// Visitor: KCP (conversation 1) + yamux client on the punched socket.
pub async fn dial_kcp(sock: UdpSocket, raddr: SocketAddr) -> Result<Tunnel, TunnelError> {
    sock.connect(raddr)
        .await
        .map_err(|e| format!("dial udp error: {e}"))?;
    let stream = kcp::over_connected(sock, raddr, 1, kcp::session::Role::Server);
    let (session, incoming) = yamux::session(
        stream,
        yamux::Config::frp(YAMUX_KEEPALIVE_SECS),
        yamux::Mode::Client,
    );
    Ok(Tunnel::Kcp {
        session,
        _incoming: incoming,
    })
}

/// Owner: serves QUIC on the punched socket. Accepts one connection, from `raddr` only, and
/// hands every stream to `handle` until the connection ends.
pub async fn serve_quic(
    sock: UdpSocket,
    raddr: SocketAddr,
    params: &QuicParams,
    tag: &str,
    handle: impl Fn(Conn),
) -> Result<(), TunnelError> {
    let server_tls = crate::tls::server_config("", "", "")
        .map_err(|e| format!("create tls config error: {e}"))?;
    let mut tls = (*server_tls).clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(
        params
            .transport(params.max_incoming().min(MAX_STREAMS))
            .map_err(|e| e.to_string())?,
    );
    let endpoint = endpoint(sock, Some(cfg))?;
    let conn = tokio::time::timeout(ACCEPT_TIMEOUT, async {
        loop {
            let Some(incoming) = endpoint.accept().await else {
                return Err("quic listener closed".to_string());
            };
            if incoming.remote_address() != raddr {
                debug!(
                    "{tag}refuse quic connection from {} (peer is {raddr})",
                    incoming.remote_address()
                );
                incoming.refuse();
                continue;
            }
            match incoming.await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    let hint = if e.to_string().contains("ServerNameMustContainOneHostName") {
                        SNI_HINT
                    } else {
                        ""
                    };
                    return Err(format!("quic accept connection error: {e}{hint}"));
                }
            }
        }
    })
    .await
    .map_err(|_| "quic accept connection error: timeout".to_string())??;
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => handle(Conn::Boxed(Box::new(QuicStream::new(
                send,
                recv,
                conn.clone(),
            )))),
            Err(e) => {
                debug!("{tag}quic accept stream error: {e}");
                conn.close(0u32.into(), b"");
                endpoint.close(0u32.into(), b"");
                return Ok(());
            }
        }
    }
}

/// Owner: KCP (conversation 1) + yamux server on the punched socket; every stream goes to
/// `handle` until the session ends.
pub async fn serve_kcp(
    sock: UdpSocket,
    raddr: SocketAddr,
    tag: &str,
    handle: impl Fn(Conn),
) -> Result<(), TunnelError> {
    sock.connect(raddr)
        .await
        .map_err(|e| format!("dial udp error: {e}"))?;
    let stream = kcp::over_connected(sock, raddr, 1, kcp::session::Role::Server);
    let (session, mut incoming) = yamux::session(
        stream,
        yamux::Config::frp(YAMUX_KEEPALIVE_SECS),
        yamux::Mode::Server,
    );
    while let Some(s) = incoming.accept().await {
        handle(Conn::Yamux(s));
    }
    match session.close_reason() {
        Some(e) if !e.is_normal_close() => warn!("{tag}accept connection error: {e}"),
        _ => {}
    }
    session.close();
    Ok(())
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

    async fn echo(c: Conn) {
        let (mut r, mut w) = tokio::io::split(c);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    }

    async fn round_trip(t: &Tunnel, data: &[u8]) -> Vec<u8> {
        let c = t.open().await.unwrap();
        let (mut r, mut w) = tokio::io::split(c);
        let data = data.to_vec();
        let writer = tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
            w
        });
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        drop(writer.await.unwrap());
        out
    }

    async fn pair() -> (UdpSocket, UdpSocket, SocketAddr, SocketAddr) {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        (a, b, aa, ba)
    }

    #[tokio::test]
    async fn quic_tunnel_carries_streams_both_ways() {
        let (owner, visitor, oa, va) = pair().await;
        tokio::spawn(async move {
            serve_quic(owner, va, &PARAMS, "", |c| {
                tokio::spawn(echo(c));
            })
            .await
        });
        let t = dial_quic(visitor, oa, &PARAMS).await.unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&t, &data).await, data);
        assert_eq!(round_trip(&t, b"second stream").await, b"second stream");
        assert!(!t.is_closed());
        t.close();
        assert!(t.is_closed());
    }

    #[tokio::test]
    async fn kcp_tunnel_carries_streams_both_ways() {
        let (owner, visitor, oa, va) = pair().await;
        tokio::spawn(async move {
            serve_kcp(owner, va, "", |c| {
                tokio::spawn(echo(c));
            })
            .await
        });
        let t = dial_kcp(visitor, oa).await.unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(round_trip(&t, &data).await, data);
        assert_eq!(round_trip(&t, b"second stream").await, b"second stream");
    }

    #[tokio::test]
    async fn quic_owner_refuses_strangers_and_gives_up() {
        let (owner, _visitor, _oa, va) = pair().await;
        tokio::time::pause();
        let r = serve_quic(owner, va, &PARAMS, "", |_| {});
        let r = tokio::time::timeout(ACCEPT_TIMEOUT * 2, r).await.unwrap();
        assert_eq!(r.unwrap_err(), "quic accept connection error: timeout");
    }
}
