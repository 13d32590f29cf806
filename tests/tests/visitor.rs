//! Secret proxies and their visitors, end to end (spec §10.1, §10.2): an owner frpc registers
//! an `stcp`/`sudp` proxy, a second frpc runs the visitor, frps admits the visitor connection
//! (sign key, allowUsers) and joins it with a work connection of the owner.

use std::time::Duration;

use e2e::*;
use tokio::net::UdpSocket;

const TOKEN: &str = "e2e-token";

/// The common part of a frpc config.
fn common(bind: u16, user: &str, tcp_mux: bool, wire: &str) -> String {
    format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {bind}
user = "{user}"
auth.token = "{TOKEN}"
transport.tcpMux = {tcp_mux}
transport.wireProtocol = "{wire}"
log.level = "debug"
"#
    )
}

/// An owner's secret proxy `secret` of `ty` to 127.0.0.1:local.
fn owner_proxy(ty: &str, sk: &str, local: u16, enc: bool, allow: &str) -> String {
    format!(
        r#"
[[proxies]]
name = "secret"
type = "{ty}"
secretKey = "{sk}"
localIP = "127.0.0.1"
localPort = {local}
transport.useEncryption = {enc}
transport.useCompression = {enc}
{allow}
"#
    )
}

/// A visitor of `server_user`'s proxy `secret`, listening on 127.0.0.1:port.
fn visitor(ty: &str, sk: &str, server_user: &str, port: u16, enc: bool) -> String {
    format!(
        r#"
[[visitors]]
name = "visit"
type = "{ty}"
serverUser = "{server_user}"
serverName = "secret"
secretKey = "{sk}"
bindAddr = "127.0.0.1"
bindPort = {port}
transport.useEncryption = {enc}
transport.useCompression = {enc}
"#
    )
}

struct Case {
    tcp_mux: bool,
    owner_wire: &'static str,
    visitor_wire: &'static str,
    owner_enc: bool,
    visitor_enc: bool,
}

async fn stcp_case(c: Case) {
    let env = Env::new();
    let bind = free_port();
    let _frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\ntransport.tcpMux = {}", c.tcp_mux),
    );
    let echo = echo_server().await;
    let owner = env.frpc(
        "owner",
        &format!(
            "{}{}",
            common(bind, "", c.tcp_mux, c.owner_wire),
            owner_proxy("stcp", "s3cret", echo, c.owner_enc, "")
        ),
    );
    owner.wait_log("[secret] start proxy success", Duration::from_secs(10));
    let port = free_port();
    let v = env.frpc(
        "visitor",
        &format!(
            "{}{}",
            common(bind, "", c.tcp_mux, c.visitor_wire),
            visitor("stcp", "s3cret", "", port, c.visitor_enc)
        ),
    );
    v.wait_log("start visitor success", Duration::from_secs(10));
    let data = pattern(300_000, 9);
    let got = roundtrip_eventually(port, &data, Duration::from_secs(10)).await;
    assert_eq!(got, data);
    // Several at once, each its own visitor connection.
    let mut joins = Vec::new();
    for i in 0..8 {
        joins.push(tokio::spawn(async move {
            let d = pattern(100_000 + i * 1000, i as u64);
            (roundtrip(port, &d).await.unwrap(), d)
        }));
    }
    for j in joins {
        let (got, want) = j.await.unwrap();
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stcp_mux_plain() {
    stcp_case(Case {
        tcp_mux: true,
        owner_wire: "v1",
        visitor_wire: "v1",
        owner_enc: false,
        visitor_enc: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stcp_nomux_both_legs_encrypted_and_compressed() {
    stcp_case(Case {
        tcp_mux: false,
        owner_wire: "v1",
        visitor_wire: "v1",
        owner_enc: true,
        visitor_enc: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stcp_v2_owner_v1_visitor_with_independent_layers() {
    stcp_case(Case {
        tcp_mux: true,
        owner_wire: "v2",
        visitor_wire: "v1",
        owner_enc: false,
        visitor_enc: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stcp_v2_on_both_sides() {
    stcp_case(Case {
        tcp_mux: true,
        owner_wire: "v2",
        visitor_wire: "v2",
        owner_enc: true,
        visitor_enc: false,
    })
    .await;
}

/// Starts frps, an owner (user `alice`, proxy `secret`, `allow` line) and a visitor (user
/// `visitor_user`, secret key `sk`); returns the visitor's port and the processes.
async fn acl_setup(env: &Env, allow: &str, visitor_user: &str, sk: &str) -> (u16, Vec<Proc>) {
    let bind = free_port();
    let frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let echo = echo_server().await;
    let owner = env.frpc(
        "owner",
        &format!(
            "{}{}",
            common(bind, "alice", true, "v1"),
            owner_proxy("stcp", "right", echo, false, allow)
        ),
    );
    owner.wait_log("[secret] start proxy success", Duration::from_secs(10));
    let port = free_port();
    let v = env.frpc(
        "visitor",
        &format!(
            "{}{}",
            common(bind, visitor_user, true, "v1"),
            visitor("stcp", sk, "alice", port, false)
        ),
    );
    v.wait_log("start visitor success", Duration::from_secs(10));
    (port, vec![frps, owner, v])
}

/// A connection to the visitor port that gets nothing back (frps refused the visitor).
async fn refused(port: u16) {
    let r = tokio::time::timeout(Duration::from_secs(10), roundtrip(port, b"hello")).await;
    match r {
        Ok(Ok(got)) => assert!(got.is_empty(), "refused visitor got {got:?}"),
        Ok(Err(_)) => {}
        Err(_) => panic!("refused visitor connection hung"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stcp_wrong_secret_key_is_refused() {
    let env = Env::new();
    let (port, procs) = acl_setup(&env, "allowUsers = [\"*\"]", "bob", "wrong").await;
    refused(port).await;
    procs[0].wait_log(
        "register visitor conn error: visitor connection of [alice.secret] auth failed",
        Duration::from_secs(5),
    );
    procs[2].wait_log(
        "start new visitor connection error: visitor connection of [alice.secret] auth failed",
        Duration::from_secs(5),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stcp_other_user_needs_allow_users() {
    let env = Env::new();
    let (port, procs) = acl_setup(&env, "", "bob", "right").await;
    refused(port).await;
    procs[0].wait_log(
        "visitor connection of [alice.secret] user [bob] not allowed",
        Duration::from_secs(5),
    );
    drop(procs);

    let env = Env::new();
    let (port, _procs) = acl_setup(&env, "allowUsers = [\"bob\"]", "bob", "right").await;
    let got = roundtrip_eventually(port, b"allowed", Duration::from_secs(10)).await;
    assert_eq!(got, b"allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stcp_owner_user_is_allowed_by_default() {
    let env = Env::new();
    let (port, _procs) = acl_setup(&env, "", "alice", "right").await;
    let got = roundtrip_eventually(port, b"same user", Duration::from_secs(10)).await;
    assert_eq!(got, b"same user");
}

async fn sudp_case(tcp_mux: bool, owner_wire: &str, visitor_wire: &str, enc: bool) {
    let env = Env::new();
    let bind = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\ntransport.tcpMux = {tcp_mux}\nlog.level = \"debug\""),
    );
    let echo = udp_echo_server().await;
    let owner = env.frpc(
        "owner",
        &format!(
            "{}{}",
            common(bind, "", tcp_mux, owner_wire),
            owner_proxy("sudp", "udp-sk", echo, enc, "")
        ),
    );
    owner.wait_log("[secret] start proxy success", Duration::from_secs(10));
    let port = free_port();
    let v = env.frpc(
        "visitor",
        &format!(
            "{}{}",
            common(bind, "", tcp_mux, visitor_wire),
            visitor("sudp", "udp-sk", "", port, enc)
        ),
    );
    v.wait_log("start visitor success", Duration::from_secs(10));
    // Two local users, interleaved; each gets only its own datagrams back.
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        udp_probe(&a, port, b"probe-a", Duration::from_secs(10)).await,
        b"probe-a"
    );
    for i in 0..30u32 {
        for (s, tag) in [(&a, b'a'), (&b, b'b')] {
            let mut d = vec![tag; 1000];
            d[..4].copy_from_slice(&i.to_be_bytes());
            s.send_to(&d, ("127.0.0.1", port)).await.unwrap();
            let mut buf = [0u8; 2000];
            let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
                .await
                .expect("sudp reply")
                .unwrap();
            assert_eq!(&buf[..n], &d[..]);
        }
    }
    if owner_wire != visitor_wire {
        frps.wait_log("bridge mixed SUDP payload codecs", Duration::from_secs(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sudp_mux_plain() {
    sudp_case(true, "v1", "v1", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sudp_nomux_encrypted_compressed() {
    sudp_case(false, "v1", "v1", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sudp_v2_on_both_sides() {
    sudp_case(true, "v2", "v2", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sudp_mixed_wire_protocols_are_bridged() {
    sudp_case(true, "v2", "v1", true).await;
    sudp_case(false, "v1", "v2", false).await;
}

/// frps, an owner frpc serving `ty` behind `secret` (secret key `sk`), and the config head of
/// a visitor frpc with an admin API for `frpc reload`.
async fn reload_setup(env: &Env, ty: &str, sk: &str, local: u16) -> (Proc, Proc, String) {
    let bind = free_port();
    let frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let owner = env.frpc(
        "owner",
        &format!(
            "{}{}",
            common(bind, "", true, "v1"),
            owner_proxy(ty, sk, local, false, "")
        ),
    );
    owner.wait_log("[secret] start proxy success", Duration::from_secs(10));
    let admin = free_port();
    let head = format!(
        "{}webServer.addr = \"127.0.0.1\"\nwebServer.port = {admin}\n",
        common(bind, "", true, "v1")
    );
    (frps, owner, head)
}

/// Writes the visitor frpc's config (as [`Env::frpc`] names it) and runs `frpc reload` on it.
fn reload_visitor(env: &Env, cfg: &str) {
    let path = env.write("visitor.toml", &format!("{cfg}{}", engine_table()));
    let out = std::process::Command::new(bin("frpc"))
        .args(["reload", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "frpc reload: {out:?}");
}

/// `frpc reload` starts an added visitor, moves a changed one and stops a removed one, without
/// a new login (frp's visitor manager `UpdateAll`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_changes_and_removes_visitors() {
    let env = Env::new();
    let echo = echo_server().await;
    let (_frps, _owner, head) = reload_setup(&env, "stcp", "sk", echo).await;
    let v = env.frpc("visitor", &head);
    v.wait_log("login to server success", Duration::from_secs(10));
    let reload = |cfg: String| reload_visitor(&env, &cfg);
    // Added.
    let p1 = free_port();
    reload(format!("{head}{}", visitor("stcp", "sk", "", p1, false)));
    v.wait_log("start visitor success", Duration::from_secs(10));
    assert_eq!(
        roundtrip_eventually(p1, b"added", Duration::from_secs(10)).await,
        b"added"
    );
    // Changed: another port; the old one closes.
    let p2 = free_port();
    reload(format!("{head}{}", visitor("stcp", "sk", "", p2, true)));
    assert_eq!(
        roundtrip_eventually(p2, b"changed", Duration::from_secs(10)).await,
        b"changed"
    );
    assert!(
        wait_port_closed(p1, Duration::from_secs(5)),
        "old visitor port still open"
    );
    // Changed on the same port, several times: the old listener is closed before the new
    // one binds, so the port is never "address in use" (frp closes the old visitor first).
    for (i, encrypted) in [false, true, false].into_iter().enumerate() {
        reload(format!(
            "{head}{}",
            visitor("stcp", "sk", "", p2, encrypted)
        ));
        let msg = format!("same port {i}");
        assert_eq!(
            roundtrip_eventually(p2, msg.as_bytes(), Duration::from_secs(10)).await,
            msg.as_bytes()
        );
    }
    assert!(
        !v.log_text().contains("start error"),
        "a visitor restarted on its own port failed to bind:\n{}",
        v.log_text()
    );
    // Removed.
    reload(head.clone());
    assert!(
        wait_port_closed(p2, Duration::from_secs(5)),
        "removed visitor still listening"
    );
    assert_eq!(v.log_text().matches("login to server success").count(), 1);
}

/// An sudp visitor changed by `frpc reload` on the same port comes back at once: its socket
/// is closed before the new one binds (the socket's reader runs in the visitor's own task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_an_sudp_visitor_on_its_own_port() {
    let env = Env::new();
    let echo = udp_echo_server().await;
    let (_frps, _owner, head) = reload_setup(&env, "sudp", "udp-sk", echo).await;
    let port = free_port();
    let v = env.frpc(
        "visitor",
        &format!("{head}{}", visitor("sudp", "udp-sk", "", port, false)),
    );
    v.wait_log("start visitor success", Duration::from_secs(10));
    let user = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        udp_probe(&user, port, b"first", Duration::from_secs(10)).await,
        b"first"
    );
    for (i, enc) in [true, false, true].into_iter().enumerate() {
        reload_visitor(
            &env,
            &format!("{head}{}", visitor("sudp", "udp-sk", "", port, enc)),
        );
        let msg = format!("after reload {i}");
        assert_eq!(
            udp_probe(&user, port, msg.as_bytes(), Duration::from_secs(10)).await,
            msg.as_bytes()
        );
        // Drain replies to earlier probes of this round.
        let mut buf = [0u8; 64];
        while tokio::time::timeout(Duration::from_millis(100), user.recv(&mut buf))
            .await
            .is_ok()
        {}
    }
    assert!(
        !v.log_text().contains("start error"),
        "an sudp visitor restarted on its own port failed to bind:\n{}",
        v.log_text()
    );
}
