//! TCP proxies end to end: real frps and frpc processes on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use e2e::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "e2e-token";

/// Brings up frps + frpc with one tcp proxy in front of an echo server; returns the processes
/// and the public port.
async fn tunnel(env: &Env, tcp_mux: bool, tls: bool, enc: bool) -> (Proc, Proc, u16) {
    tunnel_to(env, tcp_mux, tls, enc, echo_server().await)
}

/// Brings up frps + frpc with one tcp proxy in front of the service on port `local`.
fn tunnel_to(env: &Env, tcp_mux: bool, tls: bool, enc: bool, local: u16) -> (Proc, Proc, u16) {
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\ntransport.tcpMux = {tcp_mux}\nlog.level = \"debug\""),
    );
    let frpc = env.frpc(
        "frpc",
        &frpc_tcp_config(bind, TOKEN, tcp_mux, tls, enc, local, remote),
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
    (frps, frpc, remote)
}

async fn check_matrix(tcp_mux: bool, tls: bool, enc: bool) {
    let env = Env::new();
    let (frps, frpc, remote) = tunnel(&env, tcp_mux, tls, enc).await;
    frpc.wait_log(
        "login to server success, get run id [",
        Duration::from_secs(1),
    );
    frps.wait_log(
        "new proxy [echo] type [tcp] success",
        Duration::from_secs(5),
    );
    // Small, large, and compressible payloads through the same proxy.
    for (i, data) in [
        b"hello frp".to_vec(),
        pattern(300_000, 7),
        vec![b'a'; 200_000],
    ]
    .iter()
    .enumerate()
    {
        let got = tokio::time::timeout(Duration::from_secs(20), roundtrip(remote, data))
            .await
            .unwrap_or_else(|_| panic!("payload {i} timed out"))
            .unwrap();
        assert_eq!(got.len(), data.len(), "payload {i} length");
        assert!(got == *data, "payload {i} corrupted");
    }
}

macro_rules! matrix {
    ($($name:ident: $mux:expr, $tls:expr, $enc:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            check_matrix($mux, $tls, $enc).await;
        }
    )*};
}

matrix! {
    matrix_mux_tls_enc: true, true, true;
    matrix_mux_tls_plain: true, true, false;
    matrix_mux_notls_enc: true, false, true;
    matrix_mux_notls_plain: true, false, false;
    matrix_nomux_tls_enc: false, true, true;
    matrix_nomux_tls_plain: false, true, false;
    matrix_nomux_notls_enc: false, false, true;
    matrix_nomux_notls_plain: false, false, false;
}

async fn hundred_connections(tcp_mux: bool, tls: bool, enc: bool) {
    let env = Env::new();
    let (_frps, _frpc, remote) = tunnel(&env, tcp_mux, tls, enc).await;
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        tasks.push(tokio::spawn(async move {
            let data = pattern(1 << 20, i);
            let want = Sha256::digest(&data);
            let got = roundtrip(remote, &data).await.expect("roundtrip");
            assert_eq!(got.len(), data.len(), "connection {i}: length");
            assert_eq!(Sha256::digest(&got), want, "connection {i}: hash");
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("100 × 1 MiB timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_1mib_connections_default_mode() {
    hundred_connections(true, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_1mib_connections_nomux_encrypted() {
    hundred_connections(false, false, true).await;
}

/// Byte `i` of the endless download below: position-dependent, so a lost, repeated or
/// reordered piece shows.
fn download_byte(i: u64) -> u8 {
    (i % 251) as u8 ^ (i >> 16) as u8
}

/// A local service: a connection that starts with `D` gets an endless download (how far it
/// got in `sent`), one that starts with `d` the same download unreported, and any other
/// first byte an echo of everything after it.
async fn download_or_echo_service(sent: Arc<AtomicU64>) -> u16 {
    tcp_service(move |mut s| {
        let sent = sent.clone();
        async move {
            let mut cmd = [0u8; 1];
            if s.read_exact(&mut cmd).await.is_err() {
                return;
            }
            if cmd[0] == b'D' || cmd[0] == b'd' {
                let mut buf = vec![0u8; 64 * 1024];
                let mut pos = 0u64;
                loop {
                    for (k, b) in buf.iter_mut().enumerate() {
                        *b = download_byte(pos + k as u64);
                    }
                    if s.write_all(&buf).await.is_err() {
                        return;
                    }
                    pos += buf.len() as u64;
                    if cmd[0] == b'D' {
                        sent.store(pos, SeqCst);
                    }
                }
            }
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    })
    .await
}

/// Reads `len` bytes of a download at offset `from` and checks each one.
async fn read_download(s: &mut TcpStream, from: u64, len: u64, what: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = from;
    while pos < from + len {
        let want = buf.len().min((from + len - pos) as usize);
        let n = s.read(&mut buf[..want]).await.expect("read the download");
        assert!(n > 0, "{what}: the download ended at byte {pos}");
        for (k, &b) in buf[..n].iter().enumerate() {
            let at = pos + k as u64;
            assert_eq!(b, download_byte(at), "{what}: byte {at} of the download");
        }
        pos += n as u64;
    }
}

/// tcpMux: a user who stops reading a download holds that stream back all the way to the
/// local service (bounded: the service's writes stop), while other streams of the same
/// session — an upload-and-echo and a second download — go on; when the user reads again,
/// every byte comes, in order.
async fn a_stalled_stream_leaves_its_session_free(tls: bool) {
    let env = Env::new();
    let sent = Arc::new(AtomicU64::new(0));
    let local = download_or_echo_service(sent.clone()).await;
    let (_frps, _frpc, remote) = tunnel_to(&env, true, tls, false, local);

    let mut stalled = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
    stalled.write_all(b"D").await.unwrap();
    // Held back: the service's progress stops (for 1 s) somewhere, within 30 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = (0, tokio::time::Instant::now());
    let held_at = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(SeqCst);
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        } else if now > 0 && last.1.elapsed() >= Duration::from_secs(1) {
            eprintln!("download held back after {now} bytes");
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tunnel kept taking an unread download ({now} bytes): no backpressure"
        );
    };

    let others = async {
        let data = pattern(1 << 20, 5);
        let mut echo = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
        let (mut r, mut w) = echo.split();
        let send = async {
            w.write_all(b"E").await.unwrap();
            w.write_all(&data).await.unwrap();
        };
        let mut got = vec![0u8; data.len()];
        let recv = r.read_exact(&mut got);
        let ((), n) = tokio::join!(send, recv);
        n.unwrap();
        assert!(
            got == data,
            "the echo beside a stalled stream came back wrong"
        );

        let mut second = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
        second.write_all(b"d").await.unwrap();
        read_download(&mut second, 0, 8 << 20, "a second download").await;
    };
    tokio::time::timeout(Duration::from_secs(30), others)
        .await
        .expect("streams beside a stalled one stalled too");
    assert_eq!(
        sent.load(SeqCst),
        held_at,
        "the stalled download moved while nobody read it"
    );

    tokio::time::timeout(
        Duration::from_secs(60),
        read_download(&mut stalled, 0, held_at + (4 << 20), "the stalled download"),
    )
    .await
    .expect("the stalled download did not resume");
    assert!(sent.load(SeqCst) > held_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_leaves_its_session_free_default_mode() {
    a_stalled_stream_leaves_its_session_free(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_leaves_its_session_free_without_tls() {
    a_stalled_stream_leaves_its_session_free(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_with_login_fail_exit_exits_nonzero() {
    let env = Env::new();
    let bind = free_port();
    let frps = env.frps("frps", bind, "auth.token = \"right\"");
    let mut frpc = env.frpc(
        "frpc",
        &frpc_tcp_config(bind, "wrong", true, true, false, 1, free_port()),
    );
    let status = frpc
        .wait_exit(Duration::from_secs(15))
        .expect("frpc should exit");
    assert!(!status.success(), "frpc must exit non-zero");
    let log = frpc.log_text();
    assert!(
        log.contains("token in login doesn't match token from configuration"),
        "{log}"
    );
    assert!(log.contains("login to the server failed"), "{log}");
    frps.wait_log("token in login doesn't match", Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_without_login_fail_exit_keeps_retrying() {
    let env = Env::new();
    let bind = free_port();
    let _frps = env.frps(
        "frps",
        bind,
        "auth.token = \"right\"\ntransport.tcpMux = false",
    );
    let cfg = format!(
        "loginFailExit = false\n{}",
        frpc_tcp_config(bind, "wrong", false, false, false, 1, free_port())
    );
    let mut frpc = env.frpc("frpc", &cfg);
    frpc.wait_log(
        "token in login doesn't match token from configuration",
        Duration::from_secs(10),
    );
    frpc.wait_log_n("try to connect to server", 2, Duration::from_secs(10));
    assert!(
        frpc.wait_exit(Duration::from_millis(500)).is_none(),
        "frpc must keep retrying"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frps_restart_frpc_reconnects() {
    for tcp_mux in [true, false] {
        let env = Env::new();
        let echo = echo_server().await;
        let bind = free_port();
        let remote = free_port();
        let extra = format!("auth.token = \"{TOKEN}\"\ntransport.tcpMux = {tcp_mux}");
        let mut frps = env.frps("frps", bind, &extra);
        let frpc = env.frpc(
            "frpc",
            &frpc_tcp_config(bind, TOKEN, tcp_mux, true, false, echo, remote),
        );
        frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
        roundtrip_eventually(remote, b"before restart", Duration::from_secs(5)).await;

        frps.kill();
        let _frps2 = env.frps("frps2", bind, &extra);
        frpc.wait_log_n("[echo] start proxy success", 2, Duration::from_secs(30));
        frpc.wait_log("try to reconnect to server", Duration::from_secs(1));
        roundtrip_eventually(remote, b"after restart", Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_control_connection_frees_its_ports() {
    for tcp_mux in [true, false] {
        let env = Env::new();
        let echo = echo_server().await;
        let bind = free_port();
        let remote = free_port();
        let frps = env.frps(
            "frps",
            bind,
            &format!("auth.token = \"{TOKEN}\"\ntransport.tcpMux = {tcp_mux}"),
        );
        let mut frpc = env.frpc(
            "frpc",
            &frpc_tcp_config(bind, TOKEN, tcp_mux, false, false, echo, remote),
        );
        frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
        assert!(is_listening(remote));
        frpc.kill();
        frps.wait_log("client exit success", Duration::from_secs(10));
        assert!(
            wait_port_closed(remote, Duration::from_secs(5)),
            "port {remote} still open after its client died"
        );
        std::net::TcpListener::bind(("127.0.0.1", remote)).expect("port must be free again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_sends_close_proxy() {
    let env = Env::new();
    let (frps, mut frpc, remote) = tunnel(&env, true, true, false).await;
    frpc.signal(15);
    let st = frpc
        .wait_exit(Duration::from_secs(5))
        .expect("frpc exits on SIGTERM");
    assert!(st.success(), "graceful stop exits 0");
    frps.wait_log("close proxy [echo] success", Duration::from_secs(5));
    assert!(wait_port_closed(remote, Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_conflicts_and_allow_ports_are_refused_with_frp_errors() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let allowed = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\nallowPorts = [{{ single = {allowed} }}]"),
    );
    let not_allowed = free_port();
    let cfg = format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {bind}
auth.token = "{TOKEN}"

[[proxies]]
name = "ok"
type = "tcp"
localPort = {echo}
remotePort = {allowed}

[[proxies]]
name = "denied"
type = "tcp"
localPort = {echo}
remotePort = {not_allowed}
"#
    );
    let frpc = env.frpc("frpc", &cfg);
    frpc.wait_log("[ok] start proxy success", Duration::from_secs(10));
    frpc.wait_log(
        "[denied] start error: port not allowed",
        Duration::from_secs(10),
    );
    frps.wait_log(
        "new proxy [denied] type [tcp] error: port not allowed",
        Duration::from_secs(2),
    );

    // A second client asking for the same name is refused.
    let frpc2 = env.frpc("frpc2", &cfg);
    frpc2.wait_log(
        "[ok] start error: proxy [ok] already exists",
        Duration::from_secs(10),
    );
    roundtrip_eventually(
        allowed,
        b"still served by the first client",
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mux_mismatch_is_explained() {
    let env = Env::new();
    let bind = free_port();
    let frps = env.frps("frps", bind, "transport.tcpMux = true");
    let mut frpc = env.frpc(
        "frpc",
        &frpc_tcp_config(bind, "", false, false, false, 1, free_port()),
    );
    let st = frpc
        .wait_exit(Duration::from_secs(15))
        .expect("frpc should exit");
    assert!(!st.success());
    let log = frpc.log_text();
    assert!(
        log.contains("transport.tcpMux must be the same on frpc and frps"),
        "{log}"
    );
    drop(frps);

    let bind = free_port();
    let frps = env.frps("frps2", bind, "transport.tcpMux = false");
    let _frpc = env.frpc(
        "frpc2",
        &frpc_tcp_config(bind, "", true, false, false, 1, free_port()),
    );
    frps.wait_log(
        "transport.tcpMux must be the same on frpc and frps",
        Duration::from_secs(15),
    );
}

/// A TCP service that greets every connection with `name` and closes; returns its port.
async fn greeter(name: &'static str) -> u16 {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// Who answers on the public port (empty if nobody).
async fn who(port: u16) -> String {
    use tokio::io::AsyncReadExt;
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let mut got = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_group_shares_one_port_and_survives_a_member_leaving() {
    let env = Env::new();
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let cfg = |name: &str, local: u16, key: &str, port: u16| {
        format!(
            r#"serverAddr = "127.0.0.1"
serverPort = {bind}
auth.token = "{TOKEN}"

[[proxies]]
name = "{name}"
type = "tcp"
localPort = {local}
remotePort = {port}
loadBalancer.group = "tg"
loadBalancer.groupKey = "{key}"
"#
        )
    };
    let one = greeter("ONE").await;
    let two = greeter("TWO").await;
    let mut c1 = env.frpc("frpc1", &cfg("t1", one, "k", remote));
    c1.wait_log("[t1] start proxy success", Duration::from_secs(10));
    let mut c2 = env.frpc("frpc2", &cfg("t2", two, "k", remote));
    c2.wait_log("[t2] start proxy success", Duration::from_secs(10));
    let c3 = env.frpc("frpc3", &cfg("t3", two, "wrong", remote));
    c3.wait_log(
        "[t3] start error: group auth failed",
        Duration::from_secs(10),
    );
    let c4 = env.frpc("frpc4", &cfg("t4", two, "k", free_port()));
    c4.wait_log(
        "[t4] start error: group should have same remote port",
        Duration::from_secs(10),
    );

    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let w = who(remote).await;
        assert!(w == "ONE" || w == "TWO", "unexpected answer {w:?}");
        seen.insert(w);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "connections must reach both members");

    c1.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut streak = 0;
    while streak < 8 {
        if who(remote).await == "TWO" {
            streak += 1;
        } else {
            streak = 0;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the remaining member did not take over the port"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The last member leaves: by the time frps says so, the group's listener is closed and its
    // port can be bound again (frp closes the listener first).
    c2.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while frps.log_text().matches("client exit success").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "frps did not log the second client's exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(
        std::net::TcpListener::bind(("127.0.0.1", remote))
            .expect("the group's port is free once its last member has left"),
    );
    // A new group on the same port starts at once.
    let c5 = env.frpc("frpc5", &cfg("t5", one, "k", remote));
    c5.wait_log("[t5] start proxy success", Duration::from_secs(10));
    assert_eq!(who(remote).await, "ONE");
}
