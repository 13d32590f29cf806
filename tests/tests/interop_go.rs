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
//! Tests are named `<direction>::<case>`: `real_frpc_our_frps` (a real frpc logs in to our
//! frps) and `our_frpc_real_frps`. Secret proxies mix both frpc implementations as owner and
//! visitor, through either frps (`visitors::*`). Not covered: QUIC and KCP transports, the
//! admin/dashboard APIs.
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

/// One test's directory plus where the real frp binaries are.
struct Lab {
    env: Env,
    go: PathBuf,
}

impl Lab {
    /// `None` (after a skip line) when `FRP_GO_BIN_DIR` is unset.
    fn new(test: &str) -> Option<Lab> {
        Some(Lab {
            go: go_bin_dir_or_skip(test)?,
            env: Env::new(),
        })
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

/// One tcp proxy from `client` through `server`.
async fn tcp_case(lab: &Lab, server: Imp, client: Imp, tr: Tr) {
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = lab.frps(server, "frps", bind, &frps_extra(tr.nomux, ""));
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}",
            client_common(bind, "", &tr, ""),
            port_proxy("tcp", "echo", echo, remote, tr.enc)
        ),
    );
    frpc.wait_log("[echo] start proxy success", WAIT);
    if server == Imp::Ours {
        frps.wait_log(&format!("wire protocol [{}]", tr.wire()), WAIT);
    }
    check_tcp(remote).await;
}

async fn udp_case(lab: &Lab, server: Imp, client: Imp, tr: Tr) {
    let echo = udp_echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let _frps = lab.frps(server, "frps", bind, &frps_extra(tr.nomux, ""));
    let frpc = lab.frpc(
        client,
        "frpc",
        &format!(
            "{}{}",
            client_common(bind, "", &tr, ""),
            port_proxy("udp", "dns", echo, remote, tr.enc)
        ),
    );
    frpc.wait_log("[dns] start proxy success", WAIT);
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
                        Bytes::from(format!("host={host} path={path}"))
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
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
    frpc.wait_log("[web] start proxy success", WAIT);
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
}

/// A real or our frpc stays logged in for ~40 s with heartbeats every 5 s (timeout 15 s on
/// both sides), with tcpMux on (yamux keepalive every 30 s as well) and off; traffic after.
async fn heartbeat_case(lab: &Lab, server: Imp, client: Imp, nomux: bool, name: &str) {
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = lab.frps(
        server,
        &format!("frps-{name}"),
        bind,
        &frps_extra(nomux, "transport.heartbeatTimeout = 15\n"),
    );
    let tr = Tr {
        nomux,
        ..Tr::default()
    };
    let frpc = lab.frpc(
        client,
        &format!("frpc-{name}"),
        &format!(
            "{}{}",
            client_common(
                bind,
                "",
                &tr,
                "transport.heartbeatInterval = 5\ntransport.heartbeatTimeout = 15\n"
            ),
            port_proxy("tcp", "echo", echo, remote, false)
        ),
    );
    frpc.wait_log("[echo] start proxy success", WAIT);
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

/// A frpc with the wrong token: it must print frp's message and exit 1 (loginFailExit).
async fn wrong_token_case(lab: &Lab, server: Imp, client: Imp) {
    let bind = free_port();
    let frps = lab.frps(server, "frps", bind, &frps_extra(false, ""));
    let cfg = client_common(bind, "", &Tr::default(), "").replace(TOKEN, "not-the-token");
    let mut frpc = lab.frpc(client, "frpc", &cfg);
    let st = frpc
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("frpc did not exit:\n{}", frpc.log_text()));
    assert_eq!(st.code(), Some(1), "exit status; log:\n{}", frpc.log_text());
    let log = frpc.log_text();
    assert!(
        log.contains(
            "login to the server failed: token in login doesn't match token from configuration. \
             With loginFailExit enabled, no additional retries will be attempted"
        ),
        "frpc log:\n{log}"
    );
    frps.wait_log(
        "token in login doesn't match token from configuration",
        Duration::from_secs(2),
    );
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
    udp_v1 => |lab, s, c| udp_case(&lab, s, c, D);
    udp_v2 => |lab, s, c| udp_case(&lab, s, c, Tr { v2: true, ..D });
    udp_v1_nomux_enc_comp => |lab, s, c| udp_case(&lab, s, c, Tr { nomux: true, enc: true, ..D });
    udp_v2_nomux_notls_enc_comp =>
        |lab, s, c| udp_case(&lab, s, c, Tr { v2: true, nomux: true, notls: true, enc: true, ..D });
    http_vhost => |lab, s, c| http_case(&lab, s, c);
    heartbeat_40s => |lab, s, c| async {
        tokio::join!(
            heartbeat_case(&lab, s, c, false, "mux"),
            heartbeat_case(&lab, s, c, true, "nomux"),
        );
    };
    wrong_token => |lab, s, c| wrong_token_case(&lab, s, c);
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
    owner.wait_log("[secret] start proxy success", WAIT);
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
