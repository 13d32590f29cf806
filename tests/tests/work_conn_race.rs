//! frps may send StartWorkConn on a work connection before the NewProxyResp it queued on the
//! control connection reaches frpc (a user connected the moment the proxy's port opened).
//! frpc holds such a work connection while the proxy waits for its NewProxyResp (up to 2 s)
//! and serves it once the proxy runs, instead of closing it. A scripted frps (raw protocol,
//! tcpMux and TLS off) forces that order.

use std::time::Duration;

use control::crypto::CryptoKey;
use control::handshake::{Role, enable_control_encryption, server_accept};
use control::msg::{LoginResp, Message, NewProxyResp, ReqWorkConn, StartWorkConn};
use control::msgconn::MsgConn;
use e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "race";

/// Reads control messages until one `want` accepts (frpc also sends Pings).
async fn next<T>(mc: &mut MsgConn<TcpStream>, want: impl Fn(Message) -> Option<T>) -> T {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), mc.read_msg())
            .await
            .expect("a message from frpc in time")
            .expect("read a message from frpc");
        if let Some(t) = want(m) {
            return t;
        }
    }
}

/// frps' NewProxyResp arrives `delay` after StartWorkConn; returns what the user got back
/// through the work connection (the local service echoes).
async fn start_work_conn_before_new_proxy_resp(delay: Duration) -> Vec<u8> {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let echo = echo_server().await;
    let env = Env::new();
    let frpc = env.frpc(
        "frpc",
        &format!(
            "serverAddr = \"127.0.0.1\"\nserverPort = {port}\nauth.token = \"{TOKEN}\"\n\
             transport.tcpMux = false\ntransport.tls.enable = false\nlog.level = \"debug\"\n\
             [[proxies]]\nname = \"p\"\ntype = \"tcp\"\nlocalPort = {echo}\nremotePort = 6000\n"
        ),
    );
    let (s, _) = l.accept().await.unwrap();
    let mut ctl = server_accept(s, Duration::from_secs(10)).await.unwrap();
    assert!(matches!(ctl.first, Message::Login(_)), "{:?}", ctl.first);
    ctl.conn
        .write_msg(
            &LoginResp {
                version: "0.70.0".into(),
                run_id: "race-run".into(),
                error: String::new(),
            }
            .into(),
        )
        .await
        .unwrap();
    enable_control_encryption(
        &mut ctl.conn,
        None,
        TOKEN,
        &CryptoKey::derive(TOKEN.as_bytes()),
        Role::Server,
    )
    .unwrap();
    let mut mc = ctl.conn;
    next(&mut mc, |m| matches!(m, Message::NewProxy(_)).then_some(())).await;
    // A user arrives before frps has answered NewProxy: ask for a work connection and hand
    // it the user at once.
    mc.write_msg(&ReqWorkConn {}.into()).await.unwrap();
    let (w, _) = tokio::time::timeout(Duration::from_secs(10), l.accept())
        .await
        .expect("frpc opens a work connection")
        .unwrap();
    let mut work = server_accept(w, Duration::from_secs(10)).await.unwrap();
    assert!(
        matches!(work.first, Message::NewWorkConn(_)),
        "{:?}",
        work.first
    );
    work.conn
        .write_msg(
            &StartWorkConn {
                proxy_name: "p".into(),
                src_addr: "127.0.0.1".into(),
                src_port: 40000,
                dst_addr: "127.0.0.1".into(),
                dst_port: 6000,
                error: String::new(),
            }
            .into(),
        )
        .await
        .unwrap();
    tokio::time::sleep(delay).await;
    mc.write_msg(
        &NewProxyResp {
            proxy_name: "p".into(),
            remote_addr: ":6000".into(),
            error: String::new(),
        }
        .into(),
    )
    .await
    .unwrap();
    frpc.wait_log("[p] start proxy success", Duration::from_secs(10));
    let (mut user, rest) = work.conn.into_parts();
    assert!(rest.is_empty());
    user.write_all(b"first user").await.unwrap();
    let mut got = vec![0u8; 10];
    let r = tokio::time::timeout(Duration::from_secs(10), user.read_exact(&mut got)).await;
    drop(mc);
    match r {
        Ok(Ok(_)) => got,
        _ => {
            eprintln!("frpc log:\n{}", frpc.log_text());
            Vec::new()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_work_conn_racing_new_proxy_resp_is_served() {
    let got = start_work_conn_before_new_proxy_resp(Duration::from_millis(300)).await;
    assert_eq!(
        got, b"first user",
        "the early work connection was not served"
    );
}
