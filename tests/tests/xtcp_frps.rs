//! xtcp through our frps: frps introduces an xtcp proxy and its visitor (the NAT hole
//! controller, `control/src/server/nathole`), and the two frpc then talk directly, over a
//! path punched with the help of a STUN server (`e2e::stun`).
//!
//! With real frp (`FRP_GO_BIN_DIR`): a real frpc owning the proxy and a real frpc visiting
//! it, over QUIC and KCP; the bytes are shown not to pass through frps by stopping frps and
//! opening another connection over the same tunnel. Without it: raw clients speak the
//! NatHole messages to our frps — the whole transaction, and forged or flooding input.

use std::time::Duration;

use control::handshake::{Role, client_login, enable_control_encryption};
use control::msg::{
    Login, Message, NatHoleClient, NatHoleReport, NatHoleResp, NatHoleVisitor, NewProxy,
    NewWorkConn,
};
use control::msgconn::MsgConn;
use control::wire_v2::{BootstrapInfo, WireVersion};
use e2e::stun::{StunMode, StunServer};
use e2e::*;
use tokio::net::TcpStream;

const TOKEN: &str = "xtcp-token";
const SK: &str = "p2p-secret";

fn frpc_common(bind: u16, stun: &StunServer, wire: &str) -> String {
    let wire = if wire.is_empty() {
        String::new()
    } else {
        format!("transport.wireProtocol = \"{wire}\"\n")
    };
    format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {bind}
auth.token = "{TOKEN}"
natHoleStunServer = "{}"
log.level = "debug"
{wire}"#,
        stun.addr()
    )
}

fn owner_cfg(bind: u16, stun: &StunServer, local: u16) -> String {
    owner_cfg_wire(bind, stun, local, "")
}

fn owner_cfg_wire(bind: u16, stun: &StunServer, local: u16, wire: &str) -> String {
    format!(
        r#"{}
[[proxies]]
name = "p2p"
type = "xtcp"
secretKey = "{SK}"
localIP = "127.0.0.1"
localPort = {local}
"#,
        frpc_common(bind, stun, wire)
    )
}

fn visitor_cfg(bind: u16, stun: &StunServer, port: u16, protocol: &str, sk: &str) -> String {
    visitor_cfg_wire(bind, stun, port, protocol, sk, "")
}

fn visitor_cfg_wire(
    bind: u16,
    stun: &StunServer,
    port: u16,
    protocol: &str,
    sk: &str,
    wire: &str,
) -> String {
    format!(
        r#"{}
[[visitors]]
name = "p2p-visitor"
type = "xtcp"
serverName = "p2p"
secretKey = "{sk}"
protocol = "{protocol}"
bindAddr = "127.0.0.1"
bindPort = {port}
"#,
        frpc_common(bind, stun, wire)
    )
}

/// The real frpc's version (`frpc -v`).
fn go_version(dir: &std::path::Path) -> (u32, u32, u32) {
    let out = std::process::Command::new(dir.join("frpc"))
        .arg("-v")
        .output()
        .expect("run the real frpc -v");
    let v = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches('v')
        .to_string();
    let n: Vec<u32> = v.split('.').filter_map(|p| p.parse().ok()).collect();
    assert_eq!(n.len(), 3, "frpc -v said {v:?}");
    (n[0], n[1], n[2])
}

/// Real frpc's NAT discovery (`frpc nathole discover`) against our STUN server: two mapped
/// addresses, the same one twice (no NAT on 127.0.0.1), classified as frp's EasyNAT.
#[test]
fn real_frpc_discovers_through_the_test_stun_server() {
    let Some(go) = go_bin_dir_or_skip("real_frpc_discovers_through_the_test_stun_server") else {
        return;
    };
    let stun = StunServer::start();
    let env = Env::new();
    let cfg = env.write(
        "c.toml",
        &format!("natHoleStunServer = \"{}\"\n", stun.addr()),
    );
    let out = std::process::Command::new(go.join("frpc"))
        .args(["nathole", "discover", "-c"])
        .arg(cfg)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("EasyNAT"), "{text}");
    assert!(text.contains("BehaviorNoChange"), "{text}");
    assert_eq!(stun.requests(), 2, "primary and OTHER-ADDRESS asked");
}

/// Sends `data` through the visitor's port and reads it back, retrying while the hole is
/// punched (frp's visitor waits for its tunnel up to 20 s per connection).
async fn echo_through(port: u16, data: &[u8]) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = tokio::time::timeout(Duration::from_secs(25), echo_exact(port, data)).await;
        match r {
            Ok(Ok(got)) if got.len() == data.len() => return got,
            _ if tokio::time::Instant::now() > deadline => {
                panic!("no echo through the xtcp visitor on port {port}: {r:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Real frpc (owner) + real frpc (visitor) through our frps: the punched path carries the
/// bytes both ways, and keeps carrying them with frps gone.
async fn real_pair(protocol: &str, wire: &str) {
    let suffix = if wire.is_empty() {
        String::new()
    } else {
        format!("_wire_{wire}")
    };
    let Some(go) = go_bin_dir_or_skip(&format!("real_frpc_pair_over_{protocol}{suffix}")) else {
        return;
    };
    if wire == "v2" && go_version(&go) < (0, 69, 0) {
        eprintln!("skipping the wire v2 xtcp pair: real frp before 0.69 has no wire protocol v2");
        return;
    }
    let stun = StunServer::start();
    let echo = echo_server().await;
    let env = Env::new();
    let bind = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\nlog.level = \"debug\"\n"),
    );
    let owner = env.go_frpc(&go, "owner", &owner_cfg_wire(bind, &stun, echo, wire));
    owner.wait_log("[p2p] start proxy success", Duration::from_secs(10));
    frps.wait_log(
        "new proxy [p2p] type [xtcp] success",
        Duration::from_secs(5),
    );
    let vport = free_port();
    let visitor = env.go_frpc(
        &go,
        "visitor",
        &visitor_cfg_wire(bind, &stun, vport, protocol, SK, wire),
    );
    visitor.wait_log("start visitor success", Duration::from_secs(10));

    let data = pattern(512 * 1024, 7);
    assert!(echo_through(vport, &data).await == data, "echo mismatch");
    visitor.wait_log(
        "establishing nat hole connection successful",
        Duration::from_secs(5),
    );
    owner.wait_log(
        "establishing nat hole connection successful",
        Duration::from_secs(5),
    );
    frps.wait_log("report make hole success: true", Duration::from_secs(5));
    let v_log = visitor.log_text();
    assert!(v_log.contains(&format!("protocol [{protocol}]")), "{v_log}");
    assert!(
        v_log.contains("nat type: EasyNAT, behavior: BehaviorNoChange"),
        "{v_log}"
    );
    assert!(stun.requests() >= 4, "both sides asked the STUN server");
    if wire == "v2" {
        let log = frps.log_text();
        assert_eq!(log.matches("wire protocol [v2]").count(), 2, "{log}");
    }

    // Not through frps: 4 MiB more over the tunnel moves far fewer bytes over frps'
    // connections (the frpc tcpMux sessions that would carry a relay), and with frps frozen
    // (SIGSTOP) a new connection still gets through.
    let io_before = frps.tcp_bytes_on_port(bind);
    let data = pattern(4 << 20, 8);
    assert!(echo_through(vport, &data).await == data, "echo mismatch");
    let io_after = frps.tcp_bytes_on_port(bind);
    assert!(
        io_after - io_before < 512 * 1024,
        "frps moved {} bytes while 8 MiB crossed the tunnel",
        io_after - io_before
    );
    frps.signal(19); // SIGSTOP
    let data = pattern(256 * 1024, 9);
    let got = tokio::time::timeout(Duration::from_secs(20), echo_exact(vport, &data)).await;
    frps.signal(18); // SIGCONT
    let got = got
        .expect("echo in time with frps frozen")
        .expect("echo with frps frozen");
    assert!(got == data, "echo mismatch with frps frozen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_frpc_pair_over_quic() {
    real_pair("quic", "").await;
}

/// The NatHoleSid on the owner's work connection framed in wire protocol v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_frpc_pair_over_quic_wire_v2() {
    real_pair("quic", "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_frpc_pair_over_kcp() {
    real_pair("kcp", "").await;
}

/// A visitor with the wrong secret key, and one for a proxy that does not exist, get frps'
/// errors from real frpc's point of view; the proxy's close unregisters it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_frpc_refusals() {
    let Some(go) = go_bin_dir_or_skip("real_frpc_refusals") else {
        return;
    };
    let stun = StunServer::start();
    let env = Env::new();
    let bind = free_port();
    let frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\"\n"));
    let mut owner = env.go_frpc(&go, "owner", &owner_cfg(bind, &stun, free_port()));
    owner.wait_log("[p2p] start proxy success", Duration::from_secs(10));

    let vport = free_port();
    let visitor = env.go_frpc(
        &go,
        "bad-sk",
        &visitor_cfg(bind, &stun, vport, "quic", "nope"),
    );
    visitor.wait_log("start visitor success", Duration::from_secs(10));
    let _ = tokio::time::timeout(Duration::from_secs(10), echo_exact(vport, b"x")).await;
    visitor.wait_log(
        "nathole exchange info error: natHoleRespMsg get error info: xtcp connection of [p2p] auth failed",
        Duration::from_secs(10),
    );
    frps.wait_log(
        "handle visitorMsg error: xtcp connection of [p2p] auth failed",
        Duration::from_secs(5),
    );

    // The owner leaves: its proxy is gone for visitors.
    owner.kill();
    frps.wait_log("client exit success", Duration::from_secs(10));
    let vport = free_port();
    let visitor = env.go_frpc(&go, "late", &visitor_cfg(bind, &stun, vport, "quic", SK));
    visitor.wait_log("start visitor success", Duration::from_secs(10));
    let _ = tokio::time::timeout(Duration::from_secs(10), echo_exact(vport, b"x")).await;
    visitor.wait_log(
        "nathole precheck error: xtcp server for [p2p] doesn't exist",
        Duration::from_secs(10),
    );
}

/// STUN that fails: an owner whose STUN server is silent never sends its NatHoleClient, so
/// frps drops the session after frp's 10 s and the visitor's exchange times out; a visitor
/// whose STUN server answers garbage stops before asking frps. Nobody hangs, frps serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_frpc_with_failing_stun() {
    let Some(go) = go_bin_dir_or_skip("real_frpc_with_failing_stun") else {
        return;
    };
    let good = StunServer::start();
    let silent = StunServer::start_mode(StunMode::Silent);
    let garbage = StunServer::start_mode(StunMode::Garbage);
    let env = Env::new();
    let bind = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\nlog.level = \"debug\"\ntransport.tcpMux = false\n"),
    );
    let owner = env.go_frpc(&go, "owner", &no_mux(owner_cfg(bind, &silent, free_port())));
    owner.wait_log("[p2p] start proxy success", Duration::from_secs(10));

    let vport = free_port();
    let visitor = env.go_frpc(
        &go,
        "visitor",
        &no_mux(visitor_cfg(bind, &good, vport, "quic", SK)),
    );
    visitor.wait_log("start visitor success", Duration::from_secs(10));
    let _ = tokio::time::timeout(Duration::from_secs(8), echo_exact(vport, b"x")).await;
    owner.wait_log(
        "nathole prepare error: discover error: wait response from stun server timeout",
        Duration::from_secs(10),
    );
    visitor.wait_log("nathole exchange info error", Duration::from_secs(10));
    frps.wait_log(
        "wait for NatHoleClient message timeout, sid [",
        Duration::from_secs(15),
    );
    assert!(silent.requests() >= 1);

    let gport = free_port();
    let g = env.go_frpc(
        &go,
        "g-visitor",
        &no_mux(visitor_cfg(bind, &garbage, gport, "quic", SK)),
    );
    g.wait_log("start visitor success", Duration::from_secs(10));
    let _ = tokio::time::timeout(Duration::from_secs(8), echo_exact(gport, b"x")).await;
    g.wait_log(
        "nathole prepare error: discover error",
        Duration::from_secs(10),
    );
    assert!(garbage.requests() >= 1);
    // frps still introduces: the pre-check of a third visitor is answered.
    let (mut raw, _) = raw_login(bind, "").await;
    raw.write_msg(&visitor_msg("pre", "p2p", SK, true).into())
        .await
        .unwrap();
    assert_eq!(next(&mut raw, nathole_resp).await.error, "");
}

/// A frpc config with `transport.tcpMux = false` (a top-level key, so first).
fn no_mux(cfg: String) -> String {
    format!("transport.tcpMux = false\n{cfg}")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A raw client logged in over a plain v1 control connection: (control, run id).
async fn raw_login(port: u16, user: &str) -> (MsgConn<TcpStream>, String) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut mc = MsgConn::client(tcp, WireVersion::V1);
    let timestamp = unix_now();
    let login = Login {
        version: control::FRP_VERSION.into(),
        user: user.into(),
        privilege_key: control::auth::privilege_key(TOKEN, timestamp),
        timestamp,
        ..Default::default()
    };
    let (resp, crypto) = client_login(&mut mc, login, BootstrapInfo::default())
        .await
        .unwrap();
    assert_eq!(resp.error, "", "login refused");
    let key = control::crypto::CryptoKey::derive(TOKEN.as_bytes());
    enable_control_encryption(&mut mc, crypto.as_ref(), TOKEN, &key, Role::Client).unwrap();
    (mc, resp.run_id)
}

/// The next message `want` picks out of `mc` (others are skipped), within 15 s.
async fn next<T>(mc: &mut MsgConn<TcpStream>, want: impl Fn(Message) -> Option<T>) -> T {
    let wait = async {
        loop {
            if let Some(t) = want(mc.read_msg().await.expect("control open")) {
                return t;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .expect("message in time")
}

fn nathole_resp(m: Message) -> Option<NatHoleResp> {
    match m {
        Message::NatHoleResp(r) => Some(r),
        _ => None,
    }
}

fn visitor_msg(tid: &str, proxy: &str, sk: &str, pre_check: bool) -> NatHoleVisitor {
    let timestamp = unix_now();
    NatHoleVisitor {
        transaction_id: tid.into(),
        proxy_name: proxy.into(),
        pre_check,
        protocol: "quic".into(),
        sign_key: control::auth::sign_key(sk, timestamp),
        timestamp,
        mapped_addrs: vec!["203.0.113.7:4000".into(), "203.0.113.7:4000".into()],
        assisted_addrs: vec!["192.168.7.7:4000".into()],
    }
}

/// The NatHole transaction over real sockets with our frps, without frp: the owner gets the
/// sid on a work connection after StartWorkConn, both sides get their plans; then forged,
/// garbage and flooding input gets frp's errors (or is ignored) and frps keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nathole_transaction_and_bad_input_with_raw_clients() {
    let env = Env::new();
    let bind = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\nlog.level = \"debug\"\ntransport.tcpMux = false\n"),
    );
    let (mut owner, owner_id) = raw_login(bind, "u").await;
    let np = NewProxy {
        proxy_name: "u.p2p".into(),
        proxy_type: "xtcp".into(),
        sk: SK.into(),
        allow_users: vec!["v".into()],
        ..Default::default()
    };
    owner.write_msg(&np.into()).await.unwrap();
    let r = next(&mut owner, |m| match m {
        Message::NewProxyResp(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!((r.proxy_name.as_str(), r.error.as_str()), ("u.p2p", ""));

    let (mut visitor, _) = raw_login(bind, "v").await;
    // Pre-checks.
    for (proxy, want) in [
        ("u.p2p", ""),
        ("u.none", "xtcp server for [u.none] doesn't exist"),
    ] {
        let m = visitor_msg("pre", proxy, SK, true);
        visitor.write_msg(&m.into()).await.unwrap();
        let r = next(&mut visitor, nathole_resp).await;
        assert_eq!((r.transaction_id.as_str(), r.error.as_str()), ("pre", want));
    }
    let (mut stranger, stranger_id) = raw_login(bind, "w").await;
    stranger
        .write_msg(&visitor_msg("s", "u.p2p", SK, true).into())
        .await
        .unwrap();
    assert_eq!(
        next(&mut stranger, nathole_resp).await.error,
        "xtcp visitor user [w] not allowed for [u.p2p]"
    );
    // A wrong sign key.
    visitor
        .write_msg(&visitor_msg("bad", "u.p2p", "wrong", false).into())
        .await
        .unwrap();
    let r = next(&mut visitor, nathole_resp).await;
    assert_eq!(r.error, "xtcp connection of [u.p2p] auth failed");

    // The real thing: frps asks the owner for a work connection and sends the sid there.
    visitor
        .write_msg(&visitor_msg("vt", "u.p2p", SK, false).into())
        .await
        .unwrap();
    next(&mut owner, |m| {
        matches!(m, Message::ReqWorkConn(_)).then_some(())
    })
    .await;
    let work = TcpStream::connect(("127.0.0.1", bind)).await.unwrap();
    let mut work = MsgConn::client(work, WireVersion::V1);
    let nwc = NewWorkConn {
        run_id: owner_id.clone(),
        ..Default::default()
    };
    work.write_msg(&nwc.into()).await.unwrap();
    let start = next_on(&mut work).await;
    let Message::StartWorkConn(start) = start else {
        panic!("want StartWorkConn, got {start:?}")
    };
    assert_eq!(start.proxy_name, "u.p2p");
    let Message::NatHoleSid(sid) = next_on(&mut work).await else {
        panic!("want NatHoleSid")
    };
    let sid = sid.sid;
    assert!(!sid.is_empty());

    // A stranger's NatHoleClient for that sid is ignored; the owner's is taken.
    let forged = NatHoleClient {
        transaction_id: "forged".into(),
        proxy_name: "u.p2p".into(),
        sid: sid.clone(),
        mapped_addrs: vec!["198.51.100.1:1".into(), "198.51.100.1:1".into()],
        ..Default::default()
    };
    stranger.write_msg(&forged.into()).await.unwrap();
    let cm = NatHoleClient {
        transaction_id: "ct".into(),
        proxy_name: "u.p2p".into(),
        sid: sid.clone(),
        mapped_addrs: vec!["198.51.100.9:7000".into(), "198.51.100.9:7000".into()],
        assisted_addrs: vec!["10.9.9.9:7000".into()],
    };
    owner.write_msg(&cm.into()).await.unwrap();
    let v = next(&mut visitor, nathole_resp).await;
    let o = next(&mut owner, nathole_resp).await;
    assert_eq!((v.transaction_id.as_str(), v.error.as_str()), ("vt", ""));
    assert_eq!((o.transaction_id.as_str(), o.error.as_str()), ("ct", ""));
    assert_eq!(
        (v.sid.as_str(), o.sid.as_str()),
        (sid.as_str(), sid.as_str())
    );
    assert_eq!(v.candidate_addrs, vec!["198.51.100.9:7000".to_string()]);
    assert_eq!(o.candidate_addrs, vec!["203.0.113.7:4000".to_string()]);
    let roles = (
        v.detect_behavior.role.as_str(),
        o.detect_behavior.role.as_str(),
    );
    assert_eq!(roles, ("receiver", "sender"));
    assert_eq!(v.protocol, "quic");
    // Reports: the stranger's is refused, the owner's counted.
    let report = NatHoleReport {
        sid: sid.clone(),
        success: true,
    };
    stranger.write_msg(&report.clone().into()).await.unwrap();
    owner.write_msg(&report.into()).await.unwrap();
    frps.wait_log(
        &format!("sid [{sid}] report make hole success: true, mode 0, index 0"),
        Duration::from_secs(5),
    );
    let log = frps.log_text();
    assert!(
        log.contains(&format!(
            "[{stranger_id}] NatHoleClient for sid [{sid}] rejected: not from the owner of proxy [u.p2p]"
        )),
        "{log}"
    );
    assert!(log.contains("NatHoleReport for sid"), "{log}");

    // Garbage: unknown sids, addresses that are no addresses.
    let junk = NatHoleClient {
        sid: "12345".into(),
        mapped_addrs: vec!["::::".into(); 50],
        ..Default::default()
    };
    owner.write_msg(&junk.into()).await.unwrap();
    owner
        .write_msg(
            &NatHoleReport {
                sid: "nope".into(),
                success: true,
            }
            .into(),
        )
        .await
        .unwrap();
    let mut m = visitor_msg("g", "u.p2p", SK, false);
    m.mapped_addrs = vec![
        "not an address".into(),
        "1.2.3.4:99999999999999999999".into(),
    ];
    visitor.write_msg(&m.into()).await.unwrap();
    next(&mut owner, |m| {
        matches!(m, Message::ReqWorkConn(_)).then_some(())
    })
    .await;
    let work = TcpStream::connect(("127.0.0.1", bind)).await.unwrap();
    let mut work = MsgConn::client(work, WireVersion::V1);
    let nwc = NewWorkConn {
        run_id: owner_id.clone(),
        ..Default::default()
    };
    work.write_msg(&nwc.into()).await.unwrap();
    let _start = next_on(&mut work).await;
    let Message::NatHoleSid(sid) = next_on(&mut work).await else {
        panic!("want NatHoleSid")
    };
    let cm = NatHoleClient {
        transaction_id: "ct2".into(),
        sid: sid.sid,
        mapped_addrs: vec!["198.51.100.9:7000".into(), "198.51.100.9:7000".into()],
        ..Default::default()
    };
    owner.write_msg(&cm.into()).await.unwrap();
    let v = next(&mut visitor, nathole_resp).await;
    assert_eq!(
        v.error,
        "classify visitor nat feature error: address not an address: missing port in address"
    );
    let o = next(&mut owner, nathole_resp).await;
    assert_eq!(
        (o.transaction_id.as_str(), o.error.as_str()),
        ("ct2", v.error.as_str())
    );

    // A flood: the visitor's sessions are capped (the owner never opens the work
    // connections, so they all wait), the excess is refused at once.
    for i in 0..40 {
        let m = visitor_msg(&format!("f{i}"), "u.p2p", SK, false);
        visitor.write_msg(&m.into()).await.unwrap();
    }
    let r = next(&mut visitor, nathole_resp).await;
    assert!(
        r.error
            .starts_with("too many xtcp sessions in progress for this client"),
        "{r:?}"
    );
    // frps still serves everyone.
    stranger
        .write_msg(&visitor_msg("s2", "u.p2p", SK, true).into())
        .await
        .unwrap();
    assert_eq!(
        next(&mut stranger, nathole_resp).await.error,
        "xtcp visitor user [w] not allowed for [u.p2p]"
    );
    let log = frps.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

async fn next_on(mc: &mut MsgConn<TcpStream>) -> Message {
    tokio::time::timeout(Duration::from_secs(15), mc.read_msg())
        .await
        .expect("message in time")
        .expect("work connection open")
}
