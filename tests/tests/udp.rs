//! udp proxies end to end: real frps and frpc processes on 127.0.0.1, a UDP echo service
//! behind frpc, several user sockets in front of frps.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const TOKEN: &str = "e2e-udp";
const USERS: usize = 5;
const PER_USER: usize = 40;

/// frpc's `transport.wireProtocol`.
#[derive(Clone, Copy, Debug)]
enum Wire {
    V1,
    V2,
}

impl Wire {
    fn as_str(self) -> &'static str {
        match self {
            Wire::V1 => "v1",
            Wire::V2 => "v2",
        }
    }
}

fn frpc_udp_config(
    server_port: u16,
    tcp_mux: bool,
    enc: bool,
    local_port: u16,
    remote_port: u16,
) -> String {
    frpc_udp_config_wire(server_port, tcp_mux, enc, local_port, remote_port, Wire::V1)
}

fn frpc_udp_config_wire(
    server_port: u16,
    tcp_mux: bool,
    enc: bool,
    local_port: u16,
    remote_port: u16,
    wire: Wire,
) -> String {
    let wire = wire.as_str();
    format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {server_port}
auth.token = "{TOKEN}"
transport.tcpMux = {tcp_mux}
transport.tls.enable = false
transport.wireProtocol = "{wire}"
log.level = "debug"

[[proxies]]
name = "dns"
type = "udp"
localIP = "127.0.0.1"
localPort = {local_port}
remotePort = {remote_port}
transport.useEncryption = {enc}
transport.useCompression = {enc}
"#
    )
}

/// The datagram user `u` sends as its `seq`-th: its identity, then padding that differs in
/// length so that replies cannot be matched by size alone.
fn datagram(u: usize, seq: usize) -> Vec<u8> {
    let mut d = format!("user{u}-seq{seq}-").into_bytes();
    d.extend(pattern(
        50 + (u * 97 + seq * 13) % 900,
        (u * 1000 + seq) as u64,
    ));
    d
}

async fn echo_through_tunnel(tcp_mux: bool, enc: bool) {
    echo_through_tunnel_wire(tcp_mux, enc, Wire::V1).await;
}

/// Both directions of every connection through a TCP relay to `target`: (client → server,
/// server → client), each the concatenation over all connections.
type Recorded = Arc<Mutex<(Vec<u8>, Vec<u8>)>>;

/// A recording TCP relay in front of `target`; returns its port.
async fn recording_relay(target: u16) -> (u16, Recorded) {
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        rec: Recorded,
        c2s: bool,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let mut r = rec.lock().unwrap();
            if c2s { &mut r.0 } else { &mut r.1 }.extend_from_slice(&buf[..n]);
        }
        let _ = to.shutdown().await;
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let rec: Recorded = Arc::default();
    let rec2 = rec.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, rec2.clone(), true));
            tokio::spawn(pump(sr, cw, rec2.clone(), false));
        }
    });
    (port, rec)
}

/// Checks that every UDPPacket (`{"c":"…`) in `bytes` is framed as `wire` says (spec §3.1:
/// `'u'`, i64 length; §3.2: frame type 16, flags 0, u32 length, type ID 13) and that there
/// is at least one.
fn assert_udp_packet_framing(bytes: &[u8], wire: Wire, dir: &str) {
    let needle = br#"{"c":""#;
    let mut found = 0;
    for at in
        (0..bytes.len().saturating_sub(needle.len())).filter(|&i| bytes[i..].starts_with(needle))
    {
        found += 1;
        match wire {
            Wire::V1 => assert!(
                at >= 9 && bytes[at - 9] == b'u' && bytes[at - 8..at - 2] == [0; 6],
                "{dir}: UDPPacket at {at} is not a v1 message: {:02x?}",
                &bytes[at.saturating_sub(10)..at]
            ),
            Wire::V2 => assert!(
                at >= 10
                    && bytes[at - 10..at - 6] == [0x00, 0x10, 0x00, 0x00]
                    && bytes[at - 2..at] == [0x00, 0x0d],
                "{dir}: UDPPacket at {at} is not a v2 message frame: {:02x?}",
                &bytes[at.saturating_sub(10)..at]
            ),
        }
    }
    assert!(found > 0, "{dir}: no UDPPacket seen");
}

async fn echo_through_tunnel_wire(tcp_mux: bool, enc: bool, wire: Wire) {
    let env = Env::new();
    let echo = udp_echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\ntransport.tcpMux = {tcp_mux}\nlog.level = \"debug\""),
    );
    // Without tcpMux and encryption the work connection's messages are readable on the wire:
    // frpc goes through a recording relay and the framing is checked below.
    let (server_port, recorded) = if !tcp_mux && !enc {
        let (port, rec) = recording_relay(bind).await;
        (port, Some(rec))
    } else {
        (bind, None)
    };
    let frpc = env.frpc(
        "frpc",
        &frpc_udp_config_wire(server_port, tcp_mux, enc, echo, remote, wire),
    );
    frpc.wait_log("[dns] start proxy success", Duration::from_secs(10));
    frps.wait_log(
        &format!("wire protocol [{}]", wire.as_str()),
        Duration::from_secs(1),
    );
    frps.wait_log("new proxy [dns] type [udp] success", Duration::from_secs(5));
    frps.wait_log("udp proxy listen port [", Duration::from_secs(1));

    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let got = udp_probe(&probe, remote, b"probe", Duration::from_secs(10)).await;
    assert_eq!(got, b"probe");
    frpc.wait_log(
        "incoming a new work connection for udp proxy",
        Duration::from_secs(1),
    );

    let mut users = Vec::new();
    for _ in 0..USERS {
        users.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let ports: BTreeSet<u16> = users
        .iter()
        .map(|u| u.local_addr().unwrap().port())
        .collect();
    assert_eq!(ports.len(), USERS, "distinct source addresses");

    // Interleaved: in each round every user sends its next datagram, and the round's replies
    // are read before the next one starts. UDP has no flow control: a burst larger than a
    // socket's receive buffer is dropped by the kernel whenever frps, frpc or the echo service
    // is descheduled for a moment (a loaded CI machine), so the test keeps at most one datagram
    // per user in flight; the users' datagrams still cross the tunnel together.
    let mut buf = vec![0u8; 4096];
    for seq in 0..PER_USER {
        for (u, sock) in users.iter().enumerate() {
            sock.send_to(&datagram(u, seq), ("127.0.0.1", remote))
                .await
                .unwrap();
        }
        for (u, sock) in users.iter().enumerate() {
            let n = match tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf)).await {
                Ok(r) => r.unwrap(),
                Err(_) => panic!(
                    "user {u}: no reply to seq {seq} (tcpMux={tcp_mux}, enc={enc}, wire={wire:?})"
                ),
            };
            let reply = &buf[..n];
            let prefix = format!("user{u}-seq");
            assert!(
                reply.starts_with(prefix.as_bytes()),
                "user {u} got someone else's reply: {:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(20)])
            );
            assert_eq!(
                reply,
                datagram(u, seq),
                "user {u} seq {seq}: the reply to its own datagram, intact"
            );
        }
    }
    // Nothing extra arrives.
    let mut buf = [0u8; 64];
    for sock in &users {
        assert!(
            tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf))
                .await
                .is_err(),
            "an unexpected extra datagram"
        );
    }
    if let Some(rec) = recorded {
        let (c2s, s2c) = rec.lock().unwrap().clone();
        assert_udp_packet_framing(&s2c, wire, "frps -> frpc");
        assert_udp_packet_framing(&c2s, wire, "frpc -> frps");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_mux_plain() {
    echo_through_tunnel(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_mux_encrypted_compressed() {
    echo_through_tunnel(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_nomux_plain() {
    echo_through_tunnel(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_nomux_encrypted_compressed() {
    echo_through_tunnel(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_v2_mux_plain() {
    echo_through_tunnel_wire(true, false, Wire::V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_v2_mux_encrypted_compressed() {
    echo_through_tunnel_wire(true, true, Wire::V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_v2_nomux_plain() {
    echo_through_tunnel_wire(false, false, Wire::V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_v2_nomux_encrypted_compressed() {
    echo_through_tunnel_wire(false, true, Wire::V2).await;
}

/// Datagrams larger than a v1 UDPPacket can carry (7400 B) but within a v2 frame travel both
/// ways over a v2 session; over v1 they are dropped by frps instead of breaking the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_large_datagrams_need_v2() {
    for wire in [Wire::V2, Wire::V1] {
        let env = Env::new();
        let echo = udp_echo_server().await;
        let bind = free_port();
        let remote = free_port();
        let frps = env.frps(
            "frps",
            bind,
            &format!("auth.token = \"{TOKEN}\"\nudpPacketSize = 65535\nlog.level = \"debug\""),
        );
        let cfg = frpc_udp_config_wire(bind, true, true, echo, remote, wire)
            .replace("log.level", "udpPacketSize = 65535\nlog.level");
        let frpc = env.frpc("frpc", &cfg);
        frpc.wait_log("[dns] start proxy success", Duration::from_secs(10));
        frps.wait_log("new proxy [dns] type [udp] success", Duration::from_secs(5));
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(
            udp_probe(&probe, remote, b"small", Duration::from_secs(10)).await,
            b"small"
        );
        // A fresh socket: late replies to the repeated probe do not get in the way.
        let user = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let big = pattern(20000, 7);
        user.send_to(&big, ("127.0.0.1", remote)).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let got = tokio::time::timeout(Duration::from_secs(3), user.recv(&mut buf)).await;
        match wire {
            Wire::V2 => {
                let n = got.expect("a 20000-byte datagram over v2").unwrap();
                assert_eq!(n, big.len());
                assert!(buf[..n] == big[..], "large datagram intact");
            }
            Wire::V1 => {
                assert!(got.is_err(), "v1 cannot carry 20000 bytes in one message");
                frps.wait_log("does not fit a UDPPacket message", Duration::from_secs(1));
                // The tunnel still works.
                assert_eq!(
                    udp_probe(&user, remote, b"after", Duration::from_secs(5)).await,
                    b"after"
                );
            }
        }
    }
}

/// frps takes a new work connection when the old one dies: restarting frpc (a new client with
/// the same config) brings the udp tunnel back, and closing the client frees the UDP port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_port_is_released_and_reacquired() {
    let env = Env::new();
    let echo = udp_echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let mut frpc = env.frpc("frpc", &frpc_udp_config(bind, true, false, echo, remote));
    frpc.wait_log("[dns] start proxy success", Duration::from_secs(10));
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp_probe(&probe, remote, b"one", Duration::from_secs(10)).await;
    assert!(
        std::net::UdpSocket::bind(("127.0.0.1", remote)).is_err(),
        "frps holds the UDP port"
    );
    frpc.kill();
    frps.wait_log("client exit success", Duration::from_secs(10));
    std::net::UdpSocket::bind(("127.0.0.1", remote)).expect("UDP port free again");

    let frpc2 = env.frpc("frpc2", &frpc_udp_config(bind, true, false, echo, remote));
    frpc2.wait_log("[dns] start proxy success", Duration::from_secs(10));
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let got = udp_probe(&probe, remote, b"two", Duration::from_secs(10)).await;
    assert_eq!(got, b"two");
}
