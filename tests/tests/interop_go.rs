//! Interop with real frp (fatedier/frp, Go): a real frpc against our frps, and our frpc
//! against a real frps, in frp's default configuration (tcpMux on, TLS on) and the others.
//!
//! Opt-in: the tests run when env `FRP_GO_BIN_DIR` names a directory holding real `frps` and
//! `frpc` (the layout of frp's release tarballs, e.g. `frp_0.70.0_linux_amd64`); otherwise
//! each prints one skip line and passes.
//!
//! ```text
//! FRP_GO_BIN_DIR=/path/to/frp_0.70.0_linux_amd64 cargo test -p e2e --test interop_go
//! ```
//!
//! Any real frp from 0.52 on works: [`Lab`] reads its version (`frps -v`); tests that use
//! wire protocol v2 skip before 0.69, and older log texts and exit codes are expected where
//! frp changed them.
//!
//! Tests are named `<direction>::<case>`: `real_frpc_our_frps` (a real frpc logs in to our
//! frps) and `our_frpc_real_frps`. Secret proxies mix both frpc implementations as owner and
//! visitor, through either frps (`visitors::*`). Not covered: the admin/dashboard APIs; xtcp
//! has its own files (`xtcp.rs`, `xtcp_client.rs`).
//!
//! Traffic goes through [`echo_exact`] (no half-close): frp's join ends both directions on
//! the first EOF, so a half-closed echo through a real frp hop can lose its tail.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const TOKEN: &str = "interop-token";
const WAIT: Duration = Duration::from_secs(15);

/// Which implementation plays a role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Imp {
    Ours,
    Go,
}

/// One test's directory plus where the real frp binaries are, and their version.
struct Lab {
    env: Env,
    go: PathBuf,
    version: (u32, u32, u32),
}

/// The first real frp with wire protocol v2.
const V2_SINCE: (u32, u32, u32) = (0, 69, 0);

/// What `frps -v` of the real frp prints, e.g. `0.52.3`.
fn go_version(dir: &std::path::Path) -> (u32, u32, u32) {
    let out = std::process::Command::new(dir.join("frps"))
        .arg("-v")
        .output()
        .expect("run the real frps -v");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .trim()
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(a)), Some(Some(b)), Some(Some(c))) => (a, b, c),
        _ => panic!("cannot read the real frp's version from {text:?}"),
    }
}

impl Lab {
    /// `None` (after a skip line) when `FRP_GO_BIN_DIR` is unset, or when `test` uses wire
    /// protocol v2 (its name says `v2`) and the real frp predates it.
    fn new(test: &str) -> Option<Lab> {
        let go = go_bin_dir_or_skip(test)?;
        let version = go_version(&go);
        if test.contains("v2") && version < V2_SINCE {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipping {test}: real frp {version:?} has no wire protocol v2 (since {V2_SINCE:?})"
            );
            return None;
        }
        Some(Lab {
            go,
            version,
            env: Env::new(),
        })
    }

    fn has_v2(&self) -> bool {
        self.version >= V2_SINCE
    }

    /// frpc's "start proxy success" line for `proxy`. A real frpc before 0.68 logs the name
    /// frps answers with, user prefix included (`[alice.secret]`): with such a peer, the line
    /// is matched from the name on.
    fn started(&self, proxy: &str) -> String {
        format!("{} start proxy success", self.proxy_tag(proxy))
    }

    /// How frpc's proxy lines begin: `[name]`, or from `name]` on with a real frpc before 0.68
    /// (see [`Lab::started`]).
    fn proxy_tag(&self, proxy: &str) -> String {
        if self.version < (0, 68, 0) {
            format!("{proxy}]")
        } else {
            format!("[{proxy}]")
        }
    }

    fn frps(&self, imp: Imp, name: &str, port: u16, extra: &str) -> Proc {
        match imp {
            Imp::Ours => self.env.frps(name, port, extra),
            Imp::Go => self.env.go_frps(&self.go, name, port, extra),
        }
    }

    fn frpc(&self, imp: Imp, name: &str, cfg: &str) -> Proc {
        match imp {
            Imp::Ours => self.env.frpc(name, cfg),
            Imp::Go => self.env.go_frpc(&self.go, name, cfg),
        }
    }
}

// --- configs ------------------------------------------------------------------------------------

/// A client transport; `Default` is frp's default (tcp, tcpMux on, TLS on, wire v1), and
/// only the keys that differ from it are written, so the default case is a config without
/// any transport key.
#[derive(Clone, Copy, Default)]
struct Tr {
    nomux: bool,
    notls: bool,
    v2: bool,
    websocket: bool,
    custom_tls_byte: bool,
    enc: bool,
    /// `transport.protocol = "quic"` / `"kcp"`: frps gets quicBindPort / kcpBindPort and
    /// frpc dials it ([`transport_ports`]).
    quic: bool,
    kcp: bool,
}

impl Tr {
    fn client_lines(&self) -> String {
        let mut s = String::new();
        if self.nomux {
            s += "transport.tcpMux = false\n";
        }
        if self.notls {
            s += "transport.tls.enable = false\n";
        }
        if self.custom_tls_byte {
            s += "transport.tls.disableCustomTLSFirstByte = false\n";
        }
        if self.v2 {
            s += "transport.wireProtocol = \"v2\"\n";
        }
        if self.websocket {
            s += "transport.protocol = \"websocket\"\n";
        }
        if self.quic {
            s += "transport.protocol = \"quic\"\n";
        }
        if self.kcp {
            s += "transport.protocol = \"kcp\"\n";
        }
        s
    }

    fn wire(&self) -> &'static str {
        if self.v2 { "v2" } else { "v1" }
    }
}

/// frps lines: the token, and tcpMux when it is off.
fn frps_extra(nomux: bool, more: &str) -> String {
    let mux = if nomux {
        "transport.tcpMux = false\n"
    } else {
        ""
    };
    format!("auth.token = \"{TOKEN}\"\nlog.level = \"debug\"\n{mux}{more}")
}

/// For a QUIC or KCP client transport: frps's `quicBindPort`/`kcpBindPort` line and the
/// UDP port frpc dials (frp's `serverPort` is that port); else no line and `bind`.
fn transport_ports(tr: &Tr, bind: u16) -> (String, u16) {
    if tr.quic || tr.kcp {
        let p = free_port();
        let key = if tr.quic {
            "quicBindPort"
        } else {
            "kcpBindPort"
        };
        // KCP without tcpMux: kcp-go closes a session without sending the ACKs it still
        // owes, so the peer retransmits, and the retransmission (any packet from an address
        // with no session) makes kcp-go's listener accept a phantom session that never
        // delivers a byte. Real frps checks each accepted connection's first byte in its
        // accept loop (10 s timeout), so it takes no work connection for 10 s and users
        // waiting for one hit userConnTimeout (10 s) and are reset. Real frpc v0.70 against
        // real frps v0.70 does this too (about 1 run in 10 of `check_tcp` under CPU load), so
        // users here wait longer instead of failing on frps's stall.
        let wait = if tr.kcp && tr.nomux {
            "userConnTimeout = 30\n"
        } else {
            ""
        };
        (format!("{key} = {p}\n{wait}"), p)
    } else {
        (String::new(), bind)
    }
}

/// The common part of a frpc config.
fn client_common(server_port: u16, user: &str, tr: &Tr, more: &str) -> String {
    format!(
        "serverAddr = \"127.0.0.1\"\nserverPort = {server_port}\nuser = \"{user}\"\n\
         auth.token = \"{TOKEN}\"\nlog.level = \"debug\"\n{}{more}",
        tr.client_lines()
    )
}

/// A `tcp` or `udp` proxy `name` to 127.0.0.1:local on remote.
fn port_proxy(ty: &str, name: &str, local: u16, remote: u16, enc: bool) -> String {
    format!(
        r#"
[[proxies]]
name = "{name}"
type = "{ty}"
localIP = "127.0.0.1"
localPort = {local}
remotePort = {remote}
transport.useEncryption = {enc}
transport.useCompression = {enc}
"#
    )
}

// --- traffic ------------------------------------------------------------------------------------

/// Waits until a small echo comes back through `port`.
async fn wait_tunnel(port: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(3), echo_exact(port, b"hello frp")).await;
        if matches!(&r, Ok(Ok(got)) if got == b"hello frp") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no working tunnel on {port}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Echo of `data` through `port`, checked by SHA-256.
async fn echo_checked(port: u16, data: &[u8], what: &str) {
    let got = tokio::time::timeout(Duration::from_secs(60), echo_exact(port, data))
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        hex::encode(Sha256::digest(&got)),
        hex::encode(Sha256::digest(data)),
        "{what}: {} of {} bytes back, first difference at {:?}",
        got.len(),
        data.len(),
        got.iter().zip(data).position(|(a, b)| a != b)
    );
}

/// Small, 1 MiB random, and 8 concurrent connections through the tcp tunnel on `port`.
async fn check_tcp(port: u16) {
    wait_tunnel(port).await;
    let seed: u64 = rand::random();
    echo_checked(
        port,
        &pattern(1 << 20, seed),
        &format!("1 MiB (seed {seed})"),
    )
    .await;
    let mut joins = Vec::new();
    for i in 0..8u64 {
        joins.push(tokio::spawn(async move {
            let data = pattern(128 * 1024 + i as usize * 1000, seed ^ i);
            echo_checked(port, &data, &format!("concurrent #{i}")).await;
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
}

/// `users` sockets each send `per_user` datagrams to `port`, interleaved; each must get all
/// of its own back, intact, and no one else's.
async fn check_udp(port: u16, users: usize, per_user: usize) {
    let mut socks = Vec::new();
    for u in 0..users {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let probe = format!("probe{u}");
        let got = udp_probe(&s, port, probe.as_bytes(), WAIT).await;
        assert_eq!(got, probe.as_bytes());
        socks.push(s);
    }
    // Drain late duplicate probe replies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = vec![0u8; 65536];
    for s in &socks {
        while s.try_recv(&mut buf).is_ok() {}
    }
    let datagram = |u: usize, seq: usize| {
        let mut d = format!("user{u}-seq{seq}-").into_bytes();
        d.extend(pattern(
            30 + (u * 97 + seq * 13) % 1200,
            (u * 1000 + seq) as u64,
        ));
        d
    };
    for seq in 0..per_user {
        for (u, s) in socks.iter().enumerate() {
            s.send_to(&datagram(u, seq), ("127.0.0.1", port))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for (u, s) in socks.iter().enumerate() {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < per_user {
            let n = tokio::time::timeout(Duration::from_secs(10), s.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("user {u}: {} of {per_user} replies", seen.len()))
                .unwrap();
            let reply = &buf[..n];
            if reply.starts_with(b"probe") {
                continue;
            }
            let seq = (0..per_user)
                .find(|&q| reply == datagram(u, q).as_slice())
                .unwrap_or_else(|| {
                    panic!(
                        "user {u}: unexpected reply {:?}",
                        String::from_utf8_lossy(&reply[..reply.len().min(24)])
                    )
                });
            seen.insert(seq);
        }
    }
}

// --- cases --------------------------------------------------------------------------------------

/// frps (`server`) and frpc (`client`) over `tr`, with one `kind` proxy `name` from a fresh
/// remote port to the local service on `local`; returns both and the remote port once frpc
/// has started the proxy.
fn one_proxy(
    lab: &Lab,
    server: Imp,
    client: Imp,
    tr: &Tr,
    kind: &str,
    name: &str,
    local: u16,
) -> (Proc, Proc, u16) {
    let bind = free_port();
    let remote = free_port();
    let (more, server_port) = transport_ports(tr, bind);
    let frps = lab.frps(server, "frps", bind, &frps_extra(tr.nomux, &more));
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}",
            client_common(server_port, "", tr, ""),
            port_proxy(kind, name, local, remote, tr.enc)
        ),
    );
    frpc.wait_log(&lab.started(name), WAIT);
    (frps, frpc, remote)
}

/// One tcp proxy from `client` through `server`.
async fn tcp_case(lab: &Lab, server: Imp, client: Imp, tr: Tr) {
    let echo = echo_server().await;
    let (frps, _frpc, remote) = one_proxy(lab, server, client, &tr, "tcp", "echo", echo);
    if server == Imp::Ours {
        frps.wait_log(&format!("wire protocol [{}]", tr.wire()), WAIT);
    }
    check_tcp(remote).await;
}

async fn udp_case(lab: &Lab, server: Imp, client: Imp, tr: Tr) {
    let echo = udp_echo_server().await;
    let (_frps, _frpc, remote) = one_proxy(lab, server, client, &tr, "udp", "dns", echo);
    check_udp(remote, 3, 25).await;
}

/// An HTTP backend: GET answers `host=<Host> path=<path>`, anything else echoes the body.
async fn http_backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let path = req.uri().path().to_string();
                    let body = if req.method() == hyper::Method::GET {
                        let mut s = format!("host={host} path={path}");
                        if let Some(v) = req.headers().get("x-from") {
                            s += &format!(" x-from={}", v.to_str().unwrap_or("?"));
                        }
                        Bytes::from(s)
                    } else {
                        req.into_body().collect().await.unwrap().to_bytes()
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

/// One HTTP/1.1 request (`Connection: close`) to 127.0.0.1:port; returns (status line, body).
async fn http_request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    body: &[u8],
) -> (String, Vec<u8>) {
    http_request_h(port, method, host, path, "", body).await
}

/// [`http_request`] with extra header lines (each ending in `\r\n`).
async fn http_request_h(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut resp))
        .await
        .expect("http response timed out")
        .unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&resp)));
    let status = String::from_utf8_lossy(&resp[..resp.iter().position(|&b| b == b'\r').unwrap()])
        .into_owned();
    (status, resp[split + 4..].to_vec())
}

async fn http_case(lab: &Lab, server: Imp, client: Imp) {
    let backend = http_backend().await;
    let bind = free_port();
    let vhost = free_port();
    let _frps = lab.frps(
        server,
        "frps",
        bind,
        &frps_extra(false, &format!("vhostHTTPPort = {vhost}\n")),
    );
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            r#"{}
[[proxies]]
name = "web"
type = "http"
localIP = "127.0.0.1"
localPort = {backend}
customDomains = ["app.interop.test"]
"#,
            client_common(bind, "", &Tr::default(), "")
        ),
    );
    frpc.wait_log(&lab.started("web"), WAIT);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http_request(vhost, "GET", "app.interop.test", "/hello", b"").await;
        if status.contains(" 200") {
            assert_eq!(
                String::from_utf8_lossy(&body),
                "host=app.interop.test path=/hello"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no route: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A body both ways, and an unknown domain.
    let data = pattern(256 * 1024, 5);
    let (status, body) = http_request(vhost, "POST", "app.interop.test", "/up", &data).await;
    assert!(status.contains(" 200"), "{status}");
    assert_eq!(Sha256::digest(&body), Sha256::digest(&data), "POST echo");
    let (status, _) = http_request(vhost, "GET", "other.interop.test", "/", b"").await;
    assert!(status.contains(" 404"), "unknown domain: {status}");
    // Keep-alive: several requests on one connection.
    let mut s = TcpStream::connect(("127.0.0.1", vhost)).await.unwrap();
    for i in 0..5 {
        s.write_all(format!("GET /k{i} HTTP/1.1\r\nHost: app.interop.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let want = format!("host=app.interop.test path=/k{i}");
        let mut got = Vec::new();
        while !(got.ends_with(want.as_bytes()) && got.windows(4).any(|w| w == b"\r\n\r\n")) {
            let mut b = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
                .await
                .unwrap_or_else(|_| panic!("keep-alive request {i}: {got:?}"))
                .unwrap();
            assert!(n > 0, "keep-alive request {i}: closed after {got:?}");
            got.extend_from_slice(&b[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{i}: {got:?}");
    }
}

/// One tcp load-balancing group on frps with a real and our frpc as members: both get
/// connections, and the port stays when one member leaves.
async fn mixed_group_case(lab: &Lab, server: Imp) {
    let bind = free_port();
    let remote = free_port();
    let _frps = lab.frps(server, "frps", bind, &frps_extra(false, ""));
    let mut members = Vec::new();
    for (i, imp) in [Imp::Go, Imp::Ours].into_iter().enumerate() {
        // Each member's service answers with its name.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = l.local_addr().unwrap().port();
        let name = format!("{imp:?}");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        let frpc = lab.frpc(
            imp,
            &format!("frpc-{imp:?}"),
            &format!(
                "{}{}loadBalancer.group = \"g\"\nloadBalancer.groupKey = \"k\"\n",
                client_common(bind, &format!("u{i}"), &D, ""),
                port_proxy("tcp", "member", local, remote, false)
            ),
        );
        frpc.wait_log(&lab.started("member"), WAIT);
        members.push(frpc);
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut got))
            .await
            .expect("group member answer")
            .unwrap();
        seen.insert(got);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["Go", "Ours"],
        "both members serve"
    );
    // The real member leaves: ours keeps the port.
    members[0].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut got))
            .await
            .expect("group member answer")
            .unwrap();
        assert_eq!(got, "Ours");
    }
}

/// A real or our frpc stays logged in for ~40 s with heartbeats every 5 s (timeout 15 s on
/// both sides), with tcpMux on (yamux keepalive every 30 s as well) and off; traffic after.
///
/// With `defaults`, no heartbeat settings at all (frp's default: tcpMux on, application
/// heartbeats off, liveness by yamux keepalive every 30 s with a 10 s reply timeout).
async fn heartbeat_case(lab: &Lab, server: Imp, client: Imp, tr: Tr, defaults: bool, name: &str) {
    let nomux = tr.nomux;
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let (more, server_port) = transport_ports(&tr, bind);
    let frps = lab.frps(
        server,
        &format!("frps-{name}"),
        bind,
        &frps_extra(
            nomux,
            &if defaults {
                more
            } else {
                format!("{more}transport.heartbeatTimeout = 15\n")
            },
        ),
    );
    let frpc = lab.frpc(
        client,
        &format!("frpc-{name}"),
        &format!(
            "{}{}",
            client_common(
                server_port,
                "",
                &tr,
                if defaults {
                    ""
                } else {
                    "transport.heartbeatInterval = 5\ntransport.heartbeatTimeout = 15\n"
                }
            ),
            port_proxy("tcp", "echo", echo, remote, false)
        ),
    );
    frpc.wait_log(&lab.started("echo"), WAIT);
    wait_tunnel(remote).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    echo_checked(remote, &pattern(50_000, 1), "after 20 s").await;
    tokio::time::sleep(Duration::from_secs(22)).await;
    echo_checked(remote, &pattern(200_000, 2), "after 42 s").await;
    let clog = frpc.log_text();
    assert_eq!(
        clog.matches("login to server success").count(),
        1,
        "frpc logged in again (nomux={nomux}):\n{clog}"
    );
    for (who, log) in [("frps", frps.log_text()), ("frpc", clog)] {
        for bad in ["heartbeat timeout", "keepalive timeout"] {
            assert!(
                !log.contains(bad),
                "{who} logged {bad:?} (nomux={nomux}):\n{log}"
            );
        }
    }
}

/// A frpc with the wrong token: it must print frp's message and exit 1 (loginFailExit;
/// a real frpc before 0.53 exits 0).
async fn wrong_token_case(lab: &Lab, server: Imp, client: Imp) {
    let bind = free_port();
    let frps = lab.frps(server, "frps", bind, &frps_extra(false, ""));
    let cfg = client_common(bind, "", &Tr::default(), "").replace(TOKEN, "not-the-token");
    let mut frpc = lab.frpc(client, "frpc", &cfg);
    let st = frpc
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("frpc did not exit:\n{}", frpc.log_text()));
    let log = frpc.log_text();
    if client == Imp::Go && lab.version < (0, 53, 0) {
        // frpc before 0.53 logs the bare error and exits 0.
        assert_eq!(st.code(), Some(0), "exit status; log:\n{log}");
        assert!(
            log.contains(
                "login to server failed: token in login doesn't match token from configuration"
            ),
            "frpc log:\n{log}"
        );
    } else {
        assert_eq!(st.code(), Some(1), "exit status; log:\n{log}");
        assert!(
            log.contains(
            "login to the server failed: token in login doesn't match token from configuration. \
             With loginFailExit enabled, no additional retries will be attempted"
            ),
            "frpc log:\n{log}"
        );
    }
    frps.wait_log(
        "token in login doesn't match token from configuration",
        Duration::from_secs(2),
    );
}

/// The backend closes first (after sending 300 KB), and the user closes first: each close
/// reaches the other end.
async fn close_case(lab: &Lab, server: Imp, client: Imp) {
    let data = pattern(300_000, 77);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let sent = data.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut s, _)) = l.accept().await {
            n += 1;
            if n % 2 == 1 {
                // Talks first and closes.
                let _ = s.write_all(&sent).await;
                drop(s);
            } else {
                // Reads until the user's close arrives and reports how much came.
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got).await;
                    let _ = tx.send(got.len());
                });
            }
        }
    });
    let bind = free_port();
    let remote = free_port();
    let _frps = lab.frps(server, "frps", bind, &frps_extra(false, ""));
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}",
            client_common(bind, "", &D, ""),
            port_proxy("tcp", "talker", local, remote, false)
        ),
    );
    frpc.wait_log(&lab.started("talker"), WAIT);
    for round in 0..3 {
        // Odd: the backend talks and closes; the user reads to EOF.
        let mut s = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no EOF after the backend closed"))
            .unwrap();
        assert_eq!(got.len(), data.len(), "round {round}");
        assert!(got == data, "round {round}: data differs");
        // Even: the user sends 10 KB and closes; the backend must see EOF.
        let mut s = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
        s.write_all(&pattern(10_000, round)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(s);
        let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the backend never saw the user's close"))
            .unwrap();
        assert_eq!(n, 10_000, "round {round}: bytes before the close");
    }
}

/// Closes in the middle of a bulk transfer reach the far side promptly (frp's join closes
/// both ends on the first EOF or error): the user leaves a download, and the service that
/// streams it must have its writes fail; the service closes during an upload, and the user's
/// writes must fail. Before, our frpc behind a real frps kept streaming into Go's window
/// until Go's 5-minute stream close timeout.
async fn abandon_case(lab: &Lab, server: Imp, client: Imp, tr: Tr) {
    const CHUNK: usize = 64 * 1024;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut s, _)) = l.accept().await {
            n += 1;
            let tx = tx.clone();
            tokio::spawn(async move {
                if n % 2 == 1 {
                    // Streams until its write fails.
                    let buf = vec![0x5a; CHUNK];
                    while s.write_all(&buf).await.is_ok() {}
                    let _ = tx.send(());
                } else {
                    // Takes one chunk of an upload and closes.
                    let mut buf = vec![0; CHUNK];
                    let _ = s.read_exact(&mut buf).await;
                }
            });
        }
    });
    let (_frps, _frpc, remote) = one_proxy(lab, server, client, &tr, "tcp", "bulk", local);
    for round in 0..2 {
        let mut user = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
        let mut buf = vec![0; CHUNK];
        tokio::time::timeout(WAIT, user.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no data through the tunnel"))
            .unwrap();
        drop(user);
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: the service still streams 5 s after the user left")
            })
            .unwrap();
        let mut user = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
        let buf = vec![0x33; CHUNK];
        tokio::time::timeout(Duration::from_secs(10), async {
            while user.write_all(&buf).await.is_ok() {}
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: the user still uploads into a closed service"));
    }
}

/// 40 connections at once with a work-connection pool of 5, and 16 MiB through an
/// encrypted, compressed proxy.
async fn load_case(lab: &Lab, server: Imp, client: Imp) {
    let echo = echo_server().await;
    let bind = free_port();
    let (remote, remote_enc) = (free_port(), free_port());
    let _frps = lab.frps(
        server,
        "frps",
        bind,
        &frps_extra(false, "transport.maxPoolCount = 5\n"),
    );
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}{}",
            client_common(bind, "", &D, "transport.poolCount = 5\n"),
            port_proxy("tcp", "echo", echo, remote, false),
            port_proxy("tcp", "echo-enc", echo, remote_enc, true)
        ),
    );
    frpc.wait_log(&lab.started("echo"), WAIT);
    frpc.wait_log(&lab.started("echo-enc"), WAIT);
    wait_tunnel(remote).await;
    let mut joins = Vec::new();
    for i in 0..40u64 {
        joins.push(tokio::spawn(async move {
            let d = pattern(32 * 1024 + i as usize * 7, 1000 + i);
            echo_checked(remote, &d, &format!("connection {i}")).await;
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    wait_tunnel(remote_enc).await;
    let seed: u64 = rand::random();
    echo_checked(
        remote_enc,
        &pattern(16 << 20, seed),
        &format!("16 MiB (seed {seed})"),
    )
    .await;
}

/// `auth.additionalScopes` (token in Ping and NewWorkConn), heartbeats every second: stays
/// logged in and carries traffic; and an empty token on both sides.
async fn auth_case(lab: &Lab, server: Imp, client: Imp) {
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let scopes = "auth.additionalScopes = [\"HeartBeats\", \"NewWorkConns\"]\n";
    let frps = lab.frps(server, "frps", bind, &frps_extra(false, scopes));
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}",
            client_common(
                bind,
                "",
                &D,
                &format!(
                    "{scopes}transport.heartbeatInterval = 1\ntransport.heartbeatTimeout = 10\n"
                )
            ),
            port_proxy("tcp", "echo", echo, remote, false)
        ),
    );
    frpc.wait_log(&lab.started("echo"), WAIT);
    check_tcp(remote).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_tunnel(remote).await;
    assert_eq!(
        frpc.log_text().matches("login to server success").count(),
        1
    );
    let slog = frps.log_text();
    assert!(!slog.contains("doesn't match"), "frps:\n{slog}");

    // No token anywhere (the control channel is still encrypted, with an empty key).
    let bind = free_port();
    let _frps = lab.frps(server, "frps-notoken", bind, "log.level = \"debug\"\n");
    let tries = [("v1", D), ("v2", Tr { v2: true, ..D })];
    for (name, tr) in tries.into_iter().filter(|(_, tr)| !tr.v2 || lab.has_v2()) {
        let remote = free_port();
        let cfg = format!(
            "{}{}",
            client_common(bind, "", &tr, ""),
            port_proxy("tcp", name, echo, remote, false)
        )
        .replace(&format!("auth.token = \"{TOKEN}\"\n"), "");
        let frpc = lab.frpc(client, &format!("frpc-notoken-{name}"), &cfg);
        frpc.wait_log(&lab.started(name), WAIT);
        check_tcp(remote).await;
    }
}

/// frps refuses proxies: a port outside `allowPorts`, a port in use. frpc logs frp's
/// `[name] start error: <reason>` and keeps the good proxy.
async fn port_error_case(lab: &Lab, server: Imp, client: Imp) {
    let echo = echo_server().await;
    let bind = free_port();
    let (good, busy, banned) = (free_port(), free_port(), free_port());
    let _holder = std::net::TcpListener::bind(("127.0.0.1", busy)).unwrap();
    let allow = format!("allowPorts = [{{ single = {good} }}, {{ single = {busy} }}]\n");
    let _frps = lab.frps(server, "frps", bind, &frps_extra(false, &allow));
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}{}{}",
            client_common(bind, "", &D, ""),
            port_proxy("tcp", "good", echo, good, false),
            port_proxy("tcp", "busy", echo, busy, false),
            port_proxy("tcp", "banned", echo, banned, false)
        ),
    );
    frpc.wait_log(&lab.started("good"), WAIT);
    frpc.wait_log("[busy] start error: port unavailable", WAIT);
    frpc.wait_log("[banned] start error: port not allowed", WAIT);
    wait_tunnel(good).await;
}

/// http vhost routing features carried in NewProxy: subdomain, locations, basic auth,
/// host header rewrite, request headers.
async fn http_features_case(lab: &Lab, server: Imp, client: Imp) {
    let backend = http_backend().await;
    let bind = free_port();
    let vhost = free_port();
    let _frps = lab.frps(
        server,
        "frps",
        bind,
        &frps_extra(
            false,
            &format!("vhostHTTPPort = {vhost}\nsubDomainHost = \"interop.test\"\n"),
        ),
    );
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            r#"{}
[[proxies]]
name = "api"
type = "http"
localIP = "127.0.0.1"
localPort = {backend}
subdomain = "sub"
locations = ["/api"]
httpUser = "u"
httpPassword = "p"
hostHeaderRewrite = "rewritten.local"
requestHeaders.set.x-from = "frp"
"#,
            client_common(bind, "", &D, "")
        ),
    );
    frpc.wait_log(&lab.started("api"), WAIT);
    let auth = format!(
        "Authorization: Basic {}\r\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "u:p")
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) =
            http_request_h(vhost, "GET", "sub.interop.test", "/api/x", &auth, b"").await;
        if status.contains(" 200") {
            assert_eq!(
                String::from_utf8_lossy(&body),
                "host=rewritten.local path=/api/x x-from=frp"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no route: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = http_request(vhost, "GET", "sub.interop.test", "/api/x", b"").await;
    assert!(status.contains(" 401"), "without credentials: {status}");
    let (status, _) = http_request_h(vhost, "GET", "sub.interop.test", "/other", &auth, b"").await;
    assert!(status.contains(" 404"), "outside locations: {status}");
}

/// A tcpmux (`httpconnect`) proxy: CONNECT host:port through tcpmuxHTTPConnectPort, then echo.
async fn tcpmux_case(lab: &Lab, server: Imp, client: Imp) {
    let echo = echo_server().await;
    let bind = free_port();
    let mux = free_port();
    let _frps = lab.frps(
        server,
        "frps",
        bind,
        &frps_extra(false, &format!("tcpmuxHTTPConnectPort = {mux}\n")),
    );
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            r#"{}
[[proxies]]
name = "tm"
type = "tcpmux"
multiplexer = "httpconnect"
localIP = "127.0.0.1"
localPort = {echo}
customDomains = ["tm.interop.test"]
"#,
            client_common(bind, "", &D, "")
        ),
    );
    frpc.wait_log(&lab.started("tm"), WAIT);
    let data = pattern(200_000, 3);
    let mut s = TcpStream::connect(("127.0.0.1", mux)).await.unwrap();
    s.write_all(b"CONNECT tm.interop.test:80 HTTP/1.1\r\nHost: tm.interop.test:80\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("CONNECT response timed out")
            .unwrap();
        assert_eq!(
            n,
            1,
            "EOF in CONNECT response: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    let got = tokio::time::timeout(Duration::from_secs(20), echo_exact_on(s, &data))
        .await
        .expect("tcpmux echo timed out")
        .unwrap();
    assert!(got == data, "tcpmux echo differs");
}

/// Verified TLS both ways: frps presents a certificate for `frps.interop.test` signed by a
/// test CA and requires client certificates (trustedCaFile); frpc verifies the server
/// (trustedCaFile + serverName) and presents its own.
async fn mtls_case(lab: &Lab, server: Imp, client: Imp) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf = |names: Vec<String>, eku| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (srv_cert, srv_key) = leaf(
        vec!["frps.interop.test".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (cli_cert, cli_key) = leaf(vec!["frpc".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let d = lab.env.path();
    lab.env.write("ca.pem", &ca_cert.pem());
    lab.env.write("server.crt", &srv_cert);
    lab.env.write("server.key", &srv_key);
    lab.env.write("client.crt", &cli_cert);
    lab.env.write("client.key", &cli_key);
    let p = |f: &str| d.join(f).display().to_string();

    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let _frps = lab.frps(
        server,
        "frps",
        bind,
        &frps_extra(
            false,
            &format!(
                "transport.tls.certFile = \"{}\"\ntransport.tls.keyFile = \"{}\"\n\
                 transport.tls.trustedCaFile = \"{}\"\n",
                p("server.crt"),
                p("server.key"),
                p("ca.pem")
            ),
        ),
    );
    let tls = format!(
        "transport.tls.certFile = \"{}\"\ntransport.tls.keyFile = \"{}\"\n\
         transport.tls.trustedCaFile = \"{}\"\ntransport.tls.serverName = \"frps.interop.test\"\n",
        p("client.crt"),
        p("client.key"),
        p("ca.pem")
    );
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}",
            client_common(bind, "", &D, &tls),
            port_proxy("tcp", "echo", echo, remote, false)
        ),
    );
    frpc.wait_log(&lab.started("echo"), WAIT);
    check_tcp(remote).await;

    // A frpc expecting another server name must not log in.
    let mut bad = lab.frpc(
        client,
        "frpc-badname",
        &client_common(
            bind,
            "",
            &D,
            &tls.replace("frps.interop.test", "other.test"),
        ),
    );
    assert!(
        bad.wait_exit(Duration::from_secs(15)).is_some(),
        "frpc with the wrong serverName did not give up:\n{}",
        bad.log_text()
    );
    assert!(!bad.log_text().contains("login to server success"));
}

/// frpc logs in again after frps restarts (same port) and its proxy works again.
async fn reconnect_case(lab: &Lab, server: Imp, client: Imp) {
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let mut frps = lab.frps(server, "frps", bind, &frps_extra(false, ""));
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}",
            client_common(bind, "", &D, ""),
            port_proxy("tcp", "echo", echo, remote, false)
        ),
    );
    frpc.wait_log(&lab.started("echo"), WAIT);
    wait_tunnel(remote).await;
    frps.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _frps2 = lab.frps(server, "frps2", bind, &frps_extra(false, ""));
    frpc.wait_log_n("login to server success", 2, Duration::from_secs(40));
    frpc.wait_log_n(&lab.started("echo"), 2, WAIT);
    check_tcp(remote).await;
}

/// `transport.proxyProtocolVersion = "v1"`: the PROXY header frpc writes carries the user's
/// address and the proxy's public address, which frps sends in StartWorkConn.
async fn proxy_protocol_case(lab: &Lab, server: Imp, client: Imp) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                // Reply with the PROXY line, then echo.
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while !line.ends_with(b"\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    line.push(b[0]);
                }
                let _ = s.write_all(&line).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let bind = free_port();
    let remote = free_port();
    let _frps = lab.frps(server, "frps", bind, &frps_extra(false, ""));
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}transport.proxyProtocolVersion = \"v1\"\n",
            client_common(bind, "", &D, ""),
            port_proxy("tcp", "pp", local, remote, false)
        ),
    );
    frpc.wait_log(&lab.started("pp"), WAIT);
    let mut s = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
    let me = s.local_addr().unwrap().port();
    s.write_all(b"ping").await.unwrap();
    let want = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {me} {remote}\r\nping");
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("PROXY header timed out")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// `bandwidthLimitMode = "server"`: frps enforces the proxy's limit (both directions share
/// it in frp): 400 KB echoed at 200 KB/s takes seconds.
async fn bandwidth_case(lab: &Lab, server: Imp, client: Imp) {
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let _frps = lab.frps(server, "frps", bind, &frps_extra(false, ""));
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}transport.bandwidthLimit = \"200KB\"\ntransport.bandwidthLimitMode = \"server\"\n",
            client_common(bind, "", &D, ""),
            port_proxy("tcp", "slow", echo, remote, false)
        ),
    );
    frpc.wait_log(&lab.started("slow"), WAIT);
    wait_tunnel(remote).await;
    let t = Instant::now();
    echo_checked(remote, &pattern(400 * 1024, 8), "limited").await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "400 KB echoed in {took:?}: no server-side limit"
    );
}

/// A udp proxy left idle for 70 s (past frps's 60 s read deadline on the udp work
/// connection, which frpc's 30 s Pings keep alive) still answers, on the same work
/// connection.
async fn udp_idle_case(lab: &Lab, server: Imp, client: Imp, tr: Tr, tag: &str) {
    let echo = udp_echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = lab.frps(
        server,
        &format!("frps-{tag}"),
        bind,
        &frps_extra(tr.nomux, ""),
    );
    let frpc = lab.frpc(
        client,
        &format!("frpc-{tag}"),
        &format!(
            "{}{}",
            client_common(bind, "", &tr, ""),
            port_proxy("udp", "dns", echo, remote, tr.enc)
        ),
    );
    frpc.wait_log(&lab.started("dns"), WAIT);
    check_udp(remote, 2, 10).await;
    let work_conns = frpc.log_text().matches("work connection").count();
    tokio::time::sleep(Duration::from_secs(70)).await;
    // One datagram, one answer: no retries to hide a dead work connection.
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(b"after 70 s", ("127.0.0.1", remote))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no answer after 70 s idle\nfrps:\n{}\nfrpc:\n{}",
                frps.log_text(),
                frpc.log_text()
            )
        })
        .unwrap();
    assert_eq!(&buf[..n], b"after 70 s");
    assert_eq!(
        frpc.log_text().matches("work connection").count(),
        work_conns,
        "frpc took a new udp work connection while idle:\n{}",
        frpc.log_text()
    );
}

/// udp datagrams larger than v1 framing allows (v2 frames carry up to 64 KiB), with frps
/// `udpPacketSize` raised to match.
async fn udp_large_case(lab: &Lab, server: Imp, client: Imp) {
    let echo = udp_echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let _frps = lab.frps(
        server,
        "frps",
        bind,
        &frps_extra(false, "udpPacketSize = 20000\n"),
    );
    let tr = Tr { v2: true, ..D };
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}",
            client_common(bind, "", &tr, "udpPacketSize = 20000\n"),
            port_proxy("udp", "big", echo, remote, false)
        ),
    );
    frpc.wait_log(&lab.started("big"), WAIT);
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(udp_probe(&s, remote, b"probe", WAIT).await, b"probe");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = vec![0u8; 65536];
    while s.try_recv(&mut buf).is_ok() {}
    for len in [1400usize, 4000, 9000, 16000] {
        let d = pattern(len, len as u64);
        s.send_to(&d, ("127.0.0.1", remote)).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no reply to a {len}-byte datagram"))
            .unwrap();
        assert_eq!(n, len, "reply length");
        assert!(buf[..n] == d[..], "{len}-byte datagram differs");
    }
}

/// frps with vhostHTTPPort and vhostHTTPSPort on bindPort: frpc (TLS with the custom first
/// byte, as frp requires then) and HTTP users share one port.
async fn shared_port_case(lab: &Lab, server: Imp, client: Imp) {
    let backend = http_backend().await;
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let _frps = lab.frps(
        server,
        "frps",
        bind,
        &frps_extra(
            false,
            &format!("vhostHTTPPort = {bind}\nvhostHTTPSPort = {bind}\n"),
        ),
    );
    let tr = Tr {
        custom_tls_byte: true,
        ..D
    };
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            r#"{}{}
[[proxies]]
name = "web"
type = "http"
localIP = "127.0.0.1"
localPort = {backend}
customDomains = ["shared.interop.test"]
"#,
            client_common(bind, "", &tr, ""),
            port_proxy("tcp", "echo", echo, remote, true)
        ),
    );
    frpc.wait_log(&lab.started("web"), WAIT);
    frpc.wait_log(&lab.started("echo"), WAIT);
    check_tcp(remote).await;
    let (status, body) = http_request(bind, "GET", "shared.interop.test", "/s", b"").await;
    assert!(status.contains(" 200"), "{status}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "host=shared.interop.test path=/s"
    );
}

/// A frpc that goes away (SIGKILL, then SIGTERM) frees its proxy on frps: the next frpc
/// registers the same name and port at once (0.70 rejects a live duplicate name, which a
/// third frpc checks).
async fn frpc_replaced_case(lab: &Lab, server: Imp, client: Imp) {
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let _frps = lab.frps(server, "frps", bind, &frps_extra(false, ""));
    let cfg = format!(
        "{}{}",
        client_common(bind, "bob", &D, ""),
        port_proxy("tcp", "echo", echo, remote, false)
    );
    let mut first = lab.frpc(client, "frpc1", &cfg);
    first.wait_log(&lab.started("echo"), WAIT);
    wait_tunnel(remote).await;
    first.kill();
    let mut second = lab.frpc(client, "frpc2", &cfg);
    second.wait_log(&lab.started("echo"), WAIT);
    wait_tunnel(remote).await;
    // A duplicate while the second one is alive.
    let third = lab.frpc(client, "frpc3", &cfg);
    // frps names the proxy by its wire name, user prefix included.
    third.wait_log(
        &format!(
            "{} start error: proxy [bob.echo] already exists",
            lab.proxy_tag("echo")
        ),
        WAIT,
    );
    drop(third);
    second.signal(15);
    assert!(
        second.wait_exit(Duration::from_secs(10)).is_some(),
        "frpc did not stop on SIGTERM"
    );
    let fourth = lab.frpc(client, "frpc4", &cfg);
    fourth.wait_log(&lab.started("echo"), WAIT);
    wait_tunnel(remote).await;
}

/// A TCP relay to 127.0.0.1:target whose [`Relay::blackhole`] makes every current
/// connection go silent (the frpc side is closed, the frps side is kept open and unread),
/// as a dead network path would; later connections work again.
struct Relay {
    port: u16,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cut2 = cut.clone();
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                let Ok(s) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let mut rx = cut2.subscribe();
                let epoch = *rx.borrow_and_update();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = c.into_split();
                    let (mut sr, mut sw) = s.into_split();
                    let cut = {
                        let pump = async {
                            tokio::select! {
                                _ = tokio::io::copy(&mut cr, &mut sw) => {},
                                _ = tokio::io::copy(&mut sr, &mut cw) => {},
                            }
                        };
                        let wait = async {
                            let _ = rx.wait_for(|g| *g > epoch).await;
                        };
                        tokio::select! {
                            _ = pump => false,
                            _ = wait => true,
                        }
                    };
                    if cut {
                        // Close the frpc side; keep the frps side open and silent.
                        drop((cr, cw));
                        tokio::time::sleep(Duration::from_secs(120)).await;
                        drop((sr, sw));
                    }
                });
            }
        });
        Relay { port, cut }
    }

    fn blackhole(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

/// frpc loses its path to frps without frps noticing, logs in again with its run id, and
/// frps replaces the old control: the proxies register again and work.
///
/// Real frps v0.70.0 stalls in that replacement for good (each new login waits for the
/// control it replaced, which is itself stuck waiting; fixed in v0.70.1 by
/// fatedier/frp#5424 "prevent control replacement lifecycle leaks"), and a real frpc against
/// it never gets back in either. So against a real frps this only checks that frpc comes
/// back with its run id (frps logs "replaced by client [<run id>]").
async fn relogin_case(lab: &Lab, server: Imp, client: Imp) {
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = lab.frps(server, "frps", bind, &frps_extra(false, ""));
    let relay = Relay::start(bind).await;
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}",
            client_common(relay.port, "", &D, ""),
            port_proxy("tcp", "echo", echo, remote, false)
        ),
    );
    frpc.wait_log(&lab.started("echo"), WAIT);
    wait_tunnel(remote).await;
    let run_id = {
        let log = frpc.log_text();
        let i = log.find("get run id [").expect("run id logged") + "get run id [".len();
        log[i..i + log[i..].find(']').unwrap()].to_string()
    };
    relay.blackhole();
    if server == Imp::Go {
        // Real frps before 0.63 capitalises the line.
        let verb = if lab.version < (0, 63, 0) {
            "Replaced"
        } else {
            "replaced"
        };
        frps.wait_log(&format!("{verb} by client [{run_id}]"), WAIT);
        return;
    }
    // Our frps replaces the control at once.
    frpc.wait_log_n("login to server success", 2, Duration::from_secs(5));
    frpc.wait_log_n(&lab.started("echo"), 2, WAIT);
    check_tcp(remote).await;
    let log = frpc.log_text();
    assert_eq!(
        log.matches(&format!("get run id [{run_id}]")).count(),
        2,
        "the same run id:\n{log}"
    );
    assert!(!log.contains("already exists"), "frpc:\n{log}");
}

// --- tests, both directions ---------------------------------------------------------------------

/// `$name => |$lab, $server, $client| body;` becomes `real_frpc_our_frps::$name` (server
/// ours, client Go) and `our_frpc_real_frps::$name`.
macro_rules! both_directions {
    ($($name:ident => |$lab:ident, $s:ident, $c:ident| $body:expr;)*) => {
        mod real_frpc_our_frps {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some($lab) = Lab::new(concat!("real_frpc_our_frps::", stringify!($name)))
                    else {
                        return;
                    };
                    let ($s, $c) = (Imp::Ours, Imp::Go);
                    $body.await
                }
            )*
        }
        mod our_frpc_real_frps {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some($lab) = Lab::new(concat!("our_frpc_real_frps::", stringify!($name)))
                    else {
                        return;
                    };
                    let ($s, $c) = (Imp::Go, Imp::Ours);
                    $body.await
                }
            )*
        }
    };
}

const D: Tr = Tr {
    nomux: false,
    notls: false,
    v2: false,
    websocket: false,
    custom_tls_byte: false,
    enc: false,
    quic: false,
    kcp: false,
};

both_directions! {
    tcp_default_mux_tls => |lab, s, c| tcp_case(&lab, s, c, D);
    tcp_mux_notls => |lab, s, c| tcp_case(&lab, s, c, Tr { notls: true, ..D });
    tcp_nomux_tls => |lab, s, c| tcp_case(&lab, s, c, Tr { nomux: true, ..D });
    tcp_nomux_notls => |lab, s, c| tcp_case(&lab, s, c, Tr { nomux: true, notls: true, ..D });
    tcp_mux_tls_enc_comp => |lab, s, c| tcp_case(&lab, s, c, Tr { enc: true, ..D });
    tcp_nomux_notls_enc_comp =>
        |lab, s, c| tcp_case(&lab, s, c, Tr { nomux: true, notls: true, enc: true, ..D });
    tcp_custom_tls_first_byte => |lab, s, c| tcp_case(&lab, s, c, Tr { custom_tls_byte: true, ..D });
    tcp_v2_mux_tls => |lab, s, c| tcp_case(&lab, s, c, Tr { v2: true, ..D });
    tcp_v2_mux_tls_enc_comp => |lab, s, c| tcp_case(&lab, s, c, Tr { v2: true, enc: true, ..D });
    tcp_v2_nomux_notls_enc_comp => |lab, s, c|
        tcp_case(&lab, s, c, Tr { v2: true, nomux: true, notls: true, enc: true, ..D });
    websocket_mux_tls => |lab, s, c| tcp_case(&lab, s, c, Tr { websocket: true, ..D });
    websocket_v2_nomux_notls_enc_comp => |lab, s, c| tcp_case(
        &lab, s, c, Tr { websocket: true, v2: true, nomux: true, notls: true, enc: true, ..D });
    quic_v1 => |lab, s, c| tcp_case(&lab, s, c, Tr { quic: true, ..D });
    quic_v2_enc_comp => |lab, s, c| tcp_case(&lab, s, c, Tr { quic: true, v2: true, enc: true, ..D });
    kcp_mux_tls => |lab, s, c| tcp_case(&lab, s, c, Tr { kcp: true, ..D });
    kcp_v2_nomux_notls_enc_comp => |lab, s, c| tcp_case(
        &lab, s, c, Tr { kcp: true, v2: true, nomux: true, notls: true, enc: true, ..D });
    kcp_custom_tls_first_byte =>
        |lab, s, c| tcp_case(&lab, s, c, Tr { kcp: true, custom_tls_byte: true, ..D });
    udp_over_quic_v2 => |lab, s, c| udp_case(&lab, s, c, Tr { quic: true, v2: true, ..D });
    udp_over_kcp => |lab, s, c| udp_case(&lab, s, c, Tr { kcp: true, ..D });
    quic_kcp_idle_40s => |lab, s, c| async {
        tokio::join!(
            heartbeat_case(&lab, s, c, Tr { quic: true, ..D }, true, "quic"),
            heartbeat_case(&lab, s, c, Tr { kcp: true, ..D }, true, "kcp"),
        );
    };
    udp_v1 => |lab, s, c| udp_case(&lab, s, c, D);
    udp_v2 => |lab, s, c| udp_case(&lab, s, c, Tr { v2: true, ..D });
    udp_v1_nomux_enc_comp => |lab, s, c| udp_case(&lab, s, c, Tr { nomux: true, enc: true, ..D });
    udp_v2_nomux_notls_enc_comp =>
        |lab, s, c| udp_case(&lab, s, c, Tr { v2: true, nomux: true, notls: true, enc: true, ..D });
    http_vhost => |lab, s, c| http_case(&lab, s, c);
    heartbeat_40s => |lab, s, c| async {
        tokio::join!(
            heartbeat_case(&lab, s, c, D, false, "mux"),
            heartbeat_case(&lab, s, c, Tr { nomux: true, ..D }, false, "nomux"),
            heartbeat_case(&lab, s, c, D, true, "defaults"),
        );
    };
    wrong_token => |lab, s, c| wrong_token_case(&lab, s, c);
    tcp_close_propagation => |lab, s, c| close_case(&lab, s, c);
    tcp_abandoned_transfers_mux_tls => |lab, s, c| abandon_case(&lab, s, c, D);
    tcp_abandoned_transfers_nomux => |lab, s, c| abandon_case(&lab, s, c, Tr { nomux: true, ..D });
    tcp_load_pool_16mib => |lab, s, c| load_case(&lab, s, c);
    auth_scopes_and_empty_token => |lab, s, c| auth_case(&lab, s, c);
    proxy_start_errors => |lab, s, c| port_error_case(&lab, s, c);
    http_vhost_features => |lab, s, c| http_features_case(&lab, s, c);
    tcpmux_httpconnect => |lab, s, c| tcpmux_case(&lab, s, c);
    tls_verified_mutual => |lab, s, c| mtls_case(&lab, s, c);
    reconnect_after_frps_restart => |lab, s, c| reconnect_case(&lab, s, c);
    proxy_protocol_v1 => |lab, s, c| proxy_protocol_case(&lab, s, c);
    bandwidth_limit_server_mode => |lab, s, c| bandwidth_case(&lab, s, c);
    udp_idle_70s => |lab, s, c| async {
        tokio::join!(
            udp_idle_case(&lab, s, c, D, "v1-mux"),
            udp_idle_case(
                &lab, s, c, Tr { v2: lab.has_v2(), nomux: true, enc: true, ..D }, "v2-nomux"),
        );
    };
    udp_large_datagrams_v2 => |lab, s, c| udp_large_case(&lab, s, c);
    shared_bind_port_vhost => |lab, s, c| shared_port_case(&lab, s, c);
    frpc_gone_frees_proxy => |lab, s, c| frpc_replaced_case(&lab, s, c);
    relogin_same_run_id_after_dead_path => |lab, s, c| relogin_case(&lab, s, c);
}

// --- secret proxies: real and our frpc as owner and visitor -------------------------------------

/// Roles and wire protocols for one secret-proxy case.
#[derive(Clone, Copy)]
struct Secret {
    server: Imp,
    owner: Imp,
    visitor: Imp,
    owner_v2: bool,
    visitor_v2: bool,
    owner_enc: bool,
    visitor_enc: bool,
}

/// frps, an owner frpc with a `ty` proxy "secret" to `local`, and a visitor frpc on the
/// returned port.
fn secret_setup(lab: &Lab, ty: &str, local: u16, c: Secret) -> (u16, Vec<Proc>) {
    let bind = free_port();
    let frps = lab.frps(c.server, "frps", bind, &frps_extra(false, ""));
    let tr = |v2| Tr { v2, ..D };
    let owner = lab.frpc(
        c.owner,
        "owner",
        &format!(
            r#"{}
[[proxies]]
name = "secret"
type = "{ty}"
secretKey = "s3cret"
localIP = "127.0.0.1"
localPort = {local}
transport.useEncryption = {enc}
transport.useCompression = {enc}
"#,
            client_common(bind, "alice", &tr(c.owner_v2), ""),
            enc = c.owner_enc
        ),
    );
    owner.wait_log(&lab.started("secret"), WAIT);
    let port = free_port();
    let visitor = lab.frpc(
        c.visitor,
        "visitor",
        &format!(
            r#"{}
[[visitors]]
name = "visit"
type = "{ty}"
serverUser = "alice"
serverName = "secret"
secretKey = "s3cret"
bindAddr = "127.0.0.1"
bindPort = {port}
transport.useEncryption = {enc}
transport.useCompression = {enc}
"#,
            client_common(bind, "alice", &tr(c.visitor_v2), ""),
            enc = c.visitor_enc
        ),
    );
    visitor.wait_log("start visitor success", WAIT);
    (port, vec![frps, owner, visitor])
}

async fn stcp_case(lab: &Lab, c: Secret) {
    let echo = echo_server().await;
    let (port, _procs) = secret_setup(lab, "stcp", echo, c);
    check_tcp(port).await;
}

async fn sudp_case(lab: &Lab, c: Secret) {
    let echo = udp_echo_server().await;
    let (port, _procs) = secret_setup(lab, "sudp", echo, c);
    check_udp(port, 2, 25).await;
}

macro_rules! secret_cases {
    ($($name:ident: $f:ident, $server:ident, $owner:ident $owner_v2:literal $owner_enc:literal,
       $visitor:ident $visitor_v2:literal $visitor_enc:literal;)*) => {
        mod visitors {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(lab) = Lab::new(concat!("visitors::", stringify!($name))) else {
                        return;
                    };
                    $f(&lab, Secret {
                        server: Imp::$server,
                        owner: Imp::$owner,
                        visitor: Imp::$visitor,
                        owner_v2: $owner_v2,
                        visitor_v2: $visitor_v2,
                        owner_enc: $owner_enc,
                        visitor_enc: $visitor_enc,
                    })
                    .await
                }
            )*
        }
    };
}

mod groups {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_group_real_and_our_frpc_on_our_frps() {
        let Some(lab) = Lab::new("groups::tcp_group_real_and_our_frpc_on_our_frps") else {
            return;
        };
        mixed_group_case(&lab, Imp::Ours).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_group_real_and_our_frpc_on_real_frps() {
        let Some(lab) = Lab::new("groups::tcp_group_real_and_our_frpc_on_real_frps") else {
            return;
        };
        mixed_group_case(&lab, Imp::Go).await;
    }
}

// name: case, frps, owner v2? enc?, visitor v2? enc?
secret_cases! {
    stcp_our_frps_real_owner_our_visitor: stcp_case, Ours, Go false true, Ours false false;
    stcp_our_frps_our_owner_real_visitor: stcp_case, Ours, Ours false false, Go false true;
    stcp_real_frps_real_owner_our_visitor: stcp_case, Go, Go false false, Ours false true;
    stcp_real_frps_our_owner_real_visitor: stcp_case, Go, Ours false true, Go false false;
    stcp_our_frps_v2_real_owner_v1_our_visitor: stcp_case, Ours, Go true true, Ours false true;
    stcp_real_frps_v2_our_owner_real_visitor: stcp_case, Go, Ours true false, Go true true;
    sudp_our_frps_real_owner_our_visitor: sudp_case, Ours, Go false false, Ours false false;
    sudp_our_frps_our_owner_real_visitor: sudp_case, Ours, Ours false true, Go false true;
    sudp_real_frps_real_owner_our_visitor: sudp_case, Go, Go false true, Ours false true;
    sudp_real_frps_our_owner_real_visitor: sudp_case, Go, Ours false false, Go false false;
    sudp_our_frps_v2_real_owner_v1_our_visitor: sudp_case, Ours, Go true false, Ours false false;
    sudp_our_frps_v1_our_owner_v2_real_visitor: sudp_case, Ours, Ours false true, Go true true;
    sudp_real_frps_v2_our_owner_v1_real_visitor: sudp_case, Go, Ours true true, Go false true;
    sudp_real_frps_v1_real_owner_v2_our_visitor: sudp_case, Go, Go false false, Ours true false;
}
