//! Replays the client side of real frp v0.70.0 sessions (../shared/interop) against our frps:
//! the captured Login, encrypted NewProxy messages (and with tcpMux, yamux frames) must
//! register the captured proxies on their captured remote ports.
//!
//! v2 sessions: the client's control bytes after LoginResp are AEAD records under keys derived
//! from *both* Hellos, so they only decrypt if our frps sends the very ServerHello the real
//! frps sent. The test gives frps the captured `serverRandom` through the test-only
//! `FRP_URING_TEST_ONLY_V2_SERVER_RANDOM` hook; frps must then (1) answer with a ServerHello
//! byte-identical to the captured one (same algorithm choice, same JSON) and (2) derive Go's
//! keys from that transcript and decrypt Go's records — otherwise no proxy gets registered.

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

/// The s2c bytes of the first (control) connection.
fn control_server_bytes(cap: &serde_json::Value) -> Vec<u8> {
    let conn = &cap["connections"][0];
    let mut out = Vec::new();
    for ch in conn["chunks"].as_array().unwrap() {
        if ch["dir"] == "s2c" {
            out.extend(hex::decode(ch["hex"].as_str().unwrap()).unwrap());
        }
    }
    out
}

/// The captured ServerHello payload (its JSON, exactly as sent) and its serverRandom, in hex.
/// (With tcpMux, Go's two writes put the frame header and the payload in separate yamux
/// frames, so only the payload is contiguous.)
fn captured_server_hello(cap: &serde_json::Value) -> (Vec<u8>, String) {
    let s2c = control_server_bytes(cap);
    let start = s2c
        .windows(12)
        .position(|w| w == br#"{"selected":"#)
        .expect("a ServerHello in the captured s2c bytes");
    let mut values =
        serde_json::Deserializer::from_slice(&s2c[start..]).into_iter::<serde_json::Value>();
    values.next().unwrap().expect("ServerHello JSON");
    let payload = s2c[start..start + values.byte_offset()].to_vec();
    let random = control::wire_v2::ServerHello::from_payload(&payload)
        .expect("captured ServerHello JSON")
        .selected
        .crypto
        .server_random;
    assert_eq!(random.len(), 32);
    (payload, hex::encode(random))
}

async fn replay(scenario: &str, tcp_mux: bool, v2: bool) {
    let cap = capture(scenario);
    assert_eq!(cap["token"], "12345678");
    let env = Env::new();
    let bind = free_port();
    let extra =
        format!("auth.token = \"12345678\"\ntransport.tcpMux = {tcp_mux}\nlog.level = \"debug\"");
    let hello = v2.then(|| captured_server_hello(&cap));
    let frps = match &hello {
        Some((_, random)) => env.frps_with_env(
            "frps",
            bind,
            &extra,
            &[("FRP_URING_TEST_ONLY_V2_SERVER_RANDOM", random.as_str())],
        ),
        None => env.frps("frps", bind, &extra),
    };
    let mut s = TcpStream::connect(("127.0.0.1", bind)).await.unwrap();
    s.write_all(&control_client_bytes(&cap)).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        (s, got)
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
    assert!(!answered.is_empty(), "frps must answer the replayed login");
    if let Some((payload, _)) = &hello {
        assert!(
            answered
                .windows(payload.len())
                .any(|w| w == payload.as_slice()),
            "frps' ServerHello must be byte-identical to the captured one"
        );
        frps.wait_log("wire protocol [v2]", Duration::from_secs(1));
    }
    drop(s);
    frps.wait_log("client exit success", Duration::from_secs(10));
    assert!(
        wait_port_closed(27110, Duration::from_secs(5))
            && wait_port_closed(27111, Duration::from_secs(5)),
        "ports released after the replay ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_captured_clients_register_their_proxies() {
    // One test for all: they need the same fixed ports 27110/27111.
    replay("tcp-v1-nomux", false, false).await;
    replay("tcp-v1-mux", true, false).await;
    replay("tcp-v2-nomux", false, true).await;
    replay("tcp-v2-mux", true, true).await;
}
