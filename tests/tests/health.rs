//! frpc health checks end to end: a failing local service withdraws its proxy from frps
//! (CloseProxy), a recovered one registers it again (NewProxy).

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use e2e::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const TOKEN: &str = "e2e-health";

/// A TCP echo service on `port` that stops when the handle is aborted (the listener closes).
async fn stoppable_echo(port: u16) -> tokio::task::JoinHandle<()> {
    // A previous, aborted instance releases the port when its task is dropped: retry briefly.
    let mut tries = 0;
    let l = loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    })
}

fn frpc_config(bind: u16, local: u16, remote: u16, health: &str) -> String {
    let head = frpc_proxy_config(bind, TOKEN, "log.level = \"debug\"", "svc", "tcp", local);
    format!("{head}remotePort = {remote}\n{health}\n")
}

async fn wait_listening(port: u16, want: bool, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while is_listening(port) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "port {port}: listening should be {want} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_check_withdraws_and_restores_the_proxy() {
    let env = Env::new();
    let local = free_port();
    let service = stoppable_echo(local).await;
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let health = "healthCheck.type = \"tcp\"\nhealthCheck.intervalSeconds = 1\nhealthCheck.timeoutSeconds = 1\nhealthCheck.maxFailed = 2";
    let frpc = env.frpc("frpc", &frpc_config(bind, local, remote, health));
    frpc.wait_log(
        "[svc] health check status change to success",
        Duration::from_secs(10),
    );
    frpc.wait_log("[svc] health check success", Duration::from_secs(10));
    frpc.wait_log("[svc] start proxy success", Duration::from_secs(5));
    roundtrip_eventually(remote, b"up", Duration::from_secs(5)).await;

    // The service goes away: after two failed checks frps no longer listens.
    service.abort();
    let _ = service.await;
    frpc.wait_log(
        "[svc] do one health check failed: dial tcp 127.0.0.1:",
        Duration::from_secs(5),
    );
    frpc.wait_log(
        "[svc] health check status change to failed",
        Duration::from_secs(5),
    );
    frpc.wait_log("[svc] health check failed", Duration::from_secs(10));
    frps.wait_log("close proxy [svc] success", Duration::from_secs(5));
    wait_listening(remote, false, Duration::from_secs(5)).await;
    assert_eq!(
        frpc.log_text()
            .matches("[svc] health check status change to failed")
            .count(),
        1
    );

    // Back: the proxy registers again and serves.
    let _service = stoppable_echo(local).await;
    frpc.wait_log_n(
        "[svc] health check status change to success",
        2,
        Duration::from_secs(10),
    );
    frpc.wait_log_n("[svc] start proxy success", 2, Duration::from_secs(10));
    frps.wait_log_n(
        "new proxy [svc] type [tcp] success",
        2,
        Duration::from_secs(5),
    );
    wait_listening(remote, true, Duration::from_secs(5)).await;
    roundtrip_eventually(remote, b"up again", Duration::from_secs(5)).await;
}

/// A local HTTP service whose status code the test sets; it reports each request head.
async fn http_service(
    status: Arc<AtomicU16>,
) -> (
    u16,
    mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<()>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (status, tx) = (status.clone(), tx.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let code = status.load(Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (port, rx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_needs_a_2xx_on_its_path() {
    let env = Env::new();
    let status = Arc::new(AtomicU16::new(500));
    let (local, mut requests, _svc) = http_service(status.clone()).await;
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let health = r#"healthCheck.type = "http"
healthCheck.path = "/status"
healthCheck.intervalSeconds = 1
healthCheck.timeoutSeconds = 2
healthCheck.httpHeaders = [{ name = "X-Check", value = "frpc" }]"#;
    let frpc = env.frpc("frpc", &frpc_config(bind, local, remote, health));

    // 500: checked, failing, never registered.
    frpc.wait_log_n(
        "[svc] do one health check failed: do http health check, StatusCode is [500] not 2xx",
        2,
        Duration::from_secs(10),
    );
    let head = requests.recv().await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("get /status http/1.1\r\n"), "{head}");
    assert!(head.contains("x-check: frpc\r\n"), "{head}");
    assert!(
        head.contains(&format!("host: 127.0.0.1:{local}\r\n")),
        "{head}"
    );
    assert!(!frpc.log_text().contains("[svc] start proxy success"));
    assert!(!frps.log_text().contains("new proxy [svc]"));
    assert!(!is_listening(remote));

    // 200: registered.
    status.store(200, Ordering::SeqCst);
    frpc.wait_log(
        "[svc] health check status change to success",
        Duration::from_secs(10),
    );
    frpc.wait_log("[svc] start proxy success", Duration::from_secs(10));
    frps.wait_log("new proxy [svc] type [tcp] success", Duration::from_secs(5));
    wait_listening(remote, true, Duration::from_secs(5)).await;

    // 500 again (maxFailed = 1 by default): withdrawn.
    status.store(500, Ordering::SeqCst);
    frpc.wait_log(
        "[svc] health check status change to failed",
        Duration::from_secs(10),
    );
    frps.wait_log("close proxy [svc] success", Duration::from_secs(5));
    wait_listening(remote, false, Duration::from_secs(5)).await;
}
