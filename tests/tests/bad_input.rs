//! Garbage, oversized frames, truncation and silence on frps' bindPort: each such connection is
//! closed with a logged reason, and frps keeps serving the well-behaved client.

use std::time::Duration;

use e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "bad-input";

/// Connects, sends `bytes` (optionally half-closing), and waits until frps closes on us.
/// Returns our local address as frps logs it.
async fn poke(port: u16, bytes: &[u8], half_close: bool) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let me = s.local_addr().unwrap().to_string();
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut sink = Vec::new();
    // frps must close the connection itself (EOF or reset), not hang.
    let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut sink)).await;
    assert!(r.is_ok(), "frps did not close the connection from {me}");
    me
}

async fn serve_while_attacked(tcp_mux: bool) {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let mut frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\ntransport.tcpMux = {tcp_mux}"),
    );
    let frpc = env.frpc(
        "frpc",
        &frpc_tcp_config(bind, TOKEN, tcp_mux, true, false, echo, remote),
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));

    // Silence first: it takes the longest, the others run meanwhile.
    let silent = tokio::spawn(async move { poke(bind, b"", false).await });

    let random = pattern(4096, 99);
    let a = poke(bind, &random, false).await;
    let mut huge = vec![b'o'];
    huge.extend_from_slice(&(1i64 << 40).to_be_bytes());
    let b = poke(bind, &huge, false).await;
    let mut truncated = vec![b'o'];
    truncated.extend_from_slice(&100i64.to_be_bytes());
    truncated.extend_from_slice(b"{\"version\":");
    let c = poke(bind, &truncated, true).await;

    // The honest client is unaffected.
    roundtrip_eventually(remote, b"still alive", Duration::from_secs(5)).await;

    let d = silent.await.unwrap();
    // frps closes a connection before it logs why: wait for each line.
    for who in [&a, &b, &c, &d] {
        frps.wait_log(&format!("from {who}"), Duration::from_secs(5));
    }
    if !tcp_mux {
        frps.wait_log(
            &format!("connection from {b} closed: message length exceed the limit"),
            Duration::from_secs(1),
        );
        frps.wait_log(
            &format!("connection from {c} closed:"),
            Duration::from_secs(1),
        );
    }
    frps.wait_log(
        &format!("connection from {d} closed: sniff first bytes: no data within 10s"),
        Duration::from_secs(1),
    );
    roundtrip_eventually(
        remote,
        b"still alive after all of it",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        frps.wait_exit(Duration::from_millis(10)).is_none(),
        "frps must still run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_without_tcp_mux() {
    serve_while_attacked(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_with_tcp_mux() {
    serve_while_attacked(true).await;
}
