//! What frps and frpc print about ordinary failures reads as frp's: a busy port is named once,
//! in Go's words; a peer that drops a TLS connection without close_notify is an ordinary
//! disconnect, not a pointer into a library's manual.

use std::time::Duration;

use e2e::*;

const WAIT: Duration = Duration::from_secs(15);

/// Runs frps with `cfg` (it must fail to start) and returns its output.
fn frps_start_failure(env: &Env, name: &str, cfg: &str) -> String {
    let path = env.write(&format!("{name}.toml"), &format!("{cfg}{}", engine_table()));
    let mut p = Proc::spawn(
        name,
        &bin("frps"),
        &["-c", path.to_str().unwrap()],
        env.path(),
    );
    let status = p.wait_exit(WAIT);
    let out = p.log_text();
    assert!(
        status.is_some_and(|s| s.code() == Some(1)),
        "{name}: {status:?}\n{out}"
    );
    out
}

/// The port's owner, how Go words the failure, and that it is said once, without Rust's
/// `(os error 98)` and without the cause repeated.
fn assert_named_once(out: &str, line: &str) {
    assert_eq!(
        out.matches(line).count(),
        1,
        "want {line:?} once in:\n{out}"
    );
    assert_eq!(
        out.to_ascii_lowercase()
            .matches("address already in use")
            .count(),
        1,
        "{out}"
    );
    assert!(!out.contains("os error"), "{out}");
}

#[test]
fn a_busy_port_is_named_once_in_frps_words() {
    let env = Env::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let head = "bindAddr = \"127.0.0.1\"\nproxyBindAddr = \"127.0.0.1\"\n";

    let out = frps_start_failure(&env, "bind", &format!("{head}bindPort = {port}\n"));
    assert_named_once(
        &out,
        &format!(
            "create server listener error, listen tcp 127.0.0.1:{port}: bind: address already in use"
        ),
    );

    let free = free_port();
    let out = frps_start_failure(
        &env,
        "vhost",
        &format!("{head}bindPort = {free}\nvhostHTTPPort = {port}\n"),
    );
    assert_named_once(
        &out,
        &format!(
            "create vhost http listener error, listen tcp 127.0.0.1:{port}: bind: address already in use"
        ),
    );

    let free = free_port();
    let out = frps_start_failure(
        &env,
        "dashboard",
        &format!(
            "{head}bindPort = {free}\nwebServer.addr = \"127.0.0.1\"\nwebServer.port = {port}\n"
        ),
    );
    assert_named_once(
        &out,
        &format!("listen tcp 127.0.0.1:{port}: bind: address already in use"),
    );
    drop(busy);
}

/// A TLS (and tcpMux) session whose peer goes away without a TLS close_notify — a killed
/// frpc, then a killed frps — is logged as a closed connection, with no rustls manual URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_peer_gone_without_close_notify_is_an_ordinary_disconnect() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let mut frps = env.frps(
        "frps",
        bind,
        "auth.token = \"t\"\ntransport.tcpMux = true\nlog.level = \"debug\"\n",
    );
    let cfg = frpc_tcp_config(bind, "t", true, true, false, echo, free_port());
    let mut frpc = env.frpc("frpc", &cfg);
    frpc.wait_log("[echo] start proxy success", WAIT);
    frpc.kill();
    frps.wait_log("client exit success", WAIT);

    let frpc2 = env.frpc("frpc2", &cfg);
    frpc2.wait_log("[echo] start proxy success", WAIT);
    frps.kill();
    frpc2.wait_log("try to reconnect to server", WAIT);

    for (name, log) in [("frps", frps.log_text()), ("frpc", frpc2.log_text())] {
        assert!(
            !log.contains("docs.rs") && !log.contains("close_notify"),
            "{name} logs a library's words for an ordinary disconnect:\n{log}"
        );
    }
}
