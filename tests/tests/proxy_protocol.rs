//! `transport.proxyProtocolVersion` end to end: the local service parses the PROXY header
//! frpc writes (with the `ppp` crate) and must see the real user address.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::*;
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

const TOKEN: &str = "e2e-pp";

/// (source, destination) of a parsed header; `None` for UNKNOWN/LOCAL.
fn addrs(h: &HeaderResult<'_>) -> Option<(SocketAddr, SocketAddr)> {
    match h {
        HeaderResult::V1(Ok(h)) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            ppp::v1::Addresses::Tcp6(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            ppp::v1::Addresses::Unknown => None,
        },
        HeaderResult::V2(Ok(h)) => match h.addresses {
            ppp::v2::Addresses::IPv4(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            ppp::v2::Addresses::IPv6(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            _ => None,
        },
        _ => None,
    }
}

/// What the backend saw on one connection: the header's version, its addresses, and the
/// payload that followed.
#[derive(Debug)]
struct Seen {
    version: u8,
    addrs: Option<(SocketAddr, SocketAddr)>,
}

/// A TCP backend that requires a PROXY header, reports it, then echoes the rest.
async fn pp_echo_server() -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (seen, len) = loop {
                    let h = HeaderResult::parse(&buf);
                    if h.is_complete() {
                        let len = match &h {
                            HeaderResult::V1(Ok(h)) => h.header.len(),
                            HeaderResult::V2(Ok(h)) => h.len(),
                            other => panic!("bad PROXY header {other:?}: {buf:?}"),
                        };
                        let version = if matches!(h, HeaderResult::V1(_)) {
                            1
                        } else {
                            2
                        };
                        break (
                            Seen {
                                version,
                                addrs: addrs(&h),
                            },
                            len,
                        );
                    }
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "EOF before a complete PROXY header: {buf:?}");
                    buf.extend_from_slice(&chunk[..n]);
                };
                let _ = tx.send(seen);
                s.write_all(&buf[len..]).await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (port, rx)
}

fn frpc_config(bind: u16, ty: &str, local: u16, remote: u16, version: &str) -> String {
    frpc_config_mux(bind, ty, local, remote, version, true)
}

fn frpc_config_mux(
    bind: u16,
    ty: &str,
    local: u16,
    remote: u16,
    version: &str,
    tcp_mux: bool,
) -> String {
    format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {bind}
auth.token = "{TOKEN}"
transport.tcpMux = {tcp_mux}

[[proxies]]
name = "pp"
type = "{ty}"
localIP = "127.0.0.1"
localPort = {local}
remotePort = {remote}
transport.proxyProtocolVersion = "{version}"
"#
    )
}

/// With tcpMux off the frpc pair is two plain TCP sockets (the io_uring/epoll cores write the
/// header); with it on, the tokio relay does.
async fn tcp_header(version: &str, want: u8, tcp_mux: bool) {
    let env = Env::new();
    let (local, mut seen) = pp_echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let _frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\ntransport.tcpMux = {tcp_mux}"),
    );
    let frpc = env.frpc(
        "frpc",
        &frpc_config_mux(bind, "tcp", local, remote, version, tcp_mux),
    );
    frpc.wait_log("[pp] start proxy success", Duration::from_secs(10));

    let mut user = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
    let user_addr = user.local_addr().unwrap();
    let data = pattern(100_000, 3);
    user.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(10), user.read_exact(&mut back))
        .await
        .expect("echo after the header")
        .unwrap();
    assert!(back == data, "payload intact after the header");

    let s = seen.recv().await.unwrap();
    assert_eq!(s.version, want);
    let (src, dst) = s.addrs.expect("TCP4 addresses");
    assert_eq!(src, user_addr, "the real user address");
    assert_eq!(
        dst,
        SocketAddr::from(([127, 0, 0, 1], remote)),
        "frps' socket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_protocol_v1() {
    tcp_header("v1", 1, true).await;
    tcp_header("v1", 1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_protocol_v2() {
    tcp_header("v2", 2, true).await;
    tcp_header("v2", 2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_proxy_protocol_v2_on_the_first_datagram_only() {
    let env = Env::new();
    // A UDP backend that reports (had a header, source, payload) and echoes the payload.
    let backend = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = backend.local_addr().unwrap().port();
    let (tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = backend.recv_from(&mut buf).await {
            let d = &buf[..n];
            let (src, payload) = match ppp::v2::Header::try_from(d) {
                Ok(h) => {
                    assert_eq!(h.protocol, ppp::v2::Protocol::Datagram);
                    let src = addrs(&HeaderResult::V2(Ok(h.clone()))).map(|a| a.0);
                    (src, d[h.len()..].to_vec())
                }
                Err(_) => (None, d.to_vec()),
            };
            let _ = backend.send_to(&payload, from).await;
            let _ = tx.send((src, payload));
        }
    });
    let bind = free_port();
    let remote = free_port();
    let _frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let frpc = env.frpc("frpc", &frpc_config(bind, "udp", local, remote, "v2"));
    frpc.wait_log("[pp] start proxy success", Duration::from_secs(10));

    let user = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let user_addr = user.local_addr().unwrap();
    let first = udp_probe(&user, remote, b"first", Duration::from_secs(10)).await;
    assert_eq!(first, b"first", "the reply carries no header");
    let (src, payload) = seen.recv().await.unwrap();
    assert_eq!(src, Some(user_addr), "v2 header with the user's address");
    assert_eq!(payload, b"first");
    // Probes that went unanswered while the tunnel came up count as "first" too; skip them.
    while let Ok((_, p)) = seen.try_recv() {
        assert_eq!(p, b"first");
    }
    let mut buf = [0u8; 64];
    while tokio::time::timeout(Duration::from_millis(200), user.recv(&mut buf))
        .await
        .is_ok()
    {}

    user.send_to(b"second", ("127.0.0.1", remote))
        .await
        .unwrap();
    // A late unanswered "first" probe can still be on its way: skip it.
    let (src, payload) = loop {
        let (src, payload) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the second datagram reaches the backend")
            .unwrap();
        if payload != b"first" {
            break (src, payload);
        }
    };
    assert_eq!(src, None, "no header on later datagrams of the mapping");
    assert_eq!(payload, b"second");
}
