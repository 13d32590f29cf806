//! Replays the client side of real frp v0.70.0 sessions (../shared/interop) against our frps:
//! the captured Login, encrypted NewProxy messages (and with tcpMux, yamux frames) must
//! register the captured proxies on their captured remote ports.

use std::path::PathBuf;
use std::time::Duration;

use e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn capture(scenario: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/interop/frp-0.70.0")
        .join(scenario)
        .join("capture.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The c2s bytes of the first (control) connection.
fn control_client_bytes(cap: &serde_json::Value) -> Vec<u8> {
    let conn = &cap["connections"][0];
    let mut out = Vec::new();
    for ch in conn["chunks"].as_array().unwrap() {
        if ch["dir"] == "c2s" {
            out.extend(hex::decode(ch["hex"].as_str().unwrap()).unwrap());
        }
    }
    out
}

async fn replay(scenario: &str, tcp_mux: bool) {
    let cap = capture(scenario);
    assert_eq!(cap["token"], "12345678");
    let env = Env::new();
    let bind = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"12345678\"\ntransport.tcpMux = {tcp_mux}\nlog.level = \"debug\""),
    );
    let mut s = TcpStream::connect(("127.0.0.1", bind)).await.unwrap();
    s.write_all(&control_client_bytes(&cap)).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        (s, total)
    });
    frps.wait_log(
        "new proxy [enc] type [tcp] success",
        Duration::from_secs(10),
    );
    frps.wait_log(
        "new proxy [plain] type [tcp] success",
        Duration::from_secs(10),
    );
    assert!(
        is_listening(27110),
        "proxy enc must listen on its captured remote port 27110"
    );
    assert!(
        is_listening(27111),
        "proxy plain must listen on its captured remote port 27111"
    );
    let (s, answered) = reader.await.unwrap();
    assert!(answered > 0, "frps must answer the replayed login");
    drop(s);
    frps.wait_log("client exit success", Duration::from_secs(10));
    assert!(
        !is_listening(27110) && !is_listening(27111),
        "ports released after the replay ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_captured_v1_clients_register_their_proxies() {
    // One test for both: they need the same fixed ports 27110/27111.
    replay("tcp-v1-nomux", false).await;
    replay("tcp-v1-mux", true).await;
}
