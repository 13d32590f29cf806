//! Config validation as frp does it: `frpc`/`frpc verify` and `frps`/`frps verify` refuse
//! what frp's `validation` package refuses (frp's words, on stdout, exit status 1), and frps
//! refuses a `NewProxy` that frp's server-side checks refuse, with frp's error in
//! `NewProxyResp`.

use std::collections::BTreeMap;
use std::time::Duration;

use control::handshake::{Role, client_login, enable_control_encryption};
use control::msg::{Login, Message, NewProxy};
use control::msgconn::MsgConn;
use control::wire_v2::{BootstrapInfo, WireVersion};
use e2e::*;

/// Runs a binary until it exits (killed after 20 s: a binary that does not validate may run
/// on); returns (exited with success, stdout + stderr).
fn run(program: &str, args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let mut p = Proc::spawn(program, &bin(program), args, dir);
    let status = p.wait_exit(Duration::from_secs(20));
    p.kill();
    (status.is_some_and(|s| s.success()), p.log_text())
}

/// An frpc config (frps port `server_port`) plus `proxies`.
fn frpc_cfg(server_port: u16, proxies: &str) -> String {
    format!("serverAddr = \"127.0.0.1\"\nserverPort = {server_port}\n{proxies}")
}

/// Each case: what frp refuses at `frpc verify` and at frpc's start, in frp's words. frpc
/// must exit 1 before it tries the server (nothing listens on the server port: an frpc that
/// did not validate would log a login failure instead).
#[test]
fn frpc_refuses_what_frp_refuses() {
    let env = Env::new();
    let port = free_port();
    let cases = [
        (
            "[[proxies]]\nname = \"web\"\ntype = \"http\"\nlocalPort = 80\n",
            "proxy web: subdomain and custom domains should not be both empty",
        ),
        (
            "[[proxies]]\nname = \"sec\"\ntype = \"https\"\nlocalPort = 443\n",
            "proxy sec: subdomain and custom domains should not be both empty",
        ),
        (
            "[[proxies]]\nname = \"mux\"\ntype = \"tcpmux\"\nsubdomain = \"a\"\nlocalPort = 80\n",
            "proxy mux: not support multiplexer: ",
        ),
        (
            "[[proxies]]\nname = \"hc\"\ntype = \"tcp\"\nlocalPort = 22\nhealthCheck.type = \"http\"\n",
            "proxy hc: health check path should not be empty",
        ),
        (
            "[[proxies]]\nname = \"pp\"\ntype = \"tcp\"\nlocalPort = 22\ntransport.proxyProtocolVersion = \"v3\"\n",
            "proxy pp: not support proxy protocol version: v3",
        ),
        (
            "[[proxies]]\nname = \"uds\"\ntype = \"tcp\"\n[proxies.plugin]\ntype = \"unix_domain_socket\"\n",
            "proxy uds: plugin unix_domain_socket: unixPath is required",
        ),
        (
            "[[visitors]]\nname = \"v\"\ntype = \"stcp\"\nbindPort = 9000\n",
            "visitor v: server name is required",
        ),
        (
            "log.level = \"loud\"\n",
            "invalid log level, optional values are [trace debug info warn error]",
        ),
    ];
    for (i, (proxies, want)) in cases.iter().enumerate() {
        let path = env.write(&format!("c{i}.toml"), &frpc_cfg(port, proxies));
        let path = path.to_str().unwrap();
        let (ok, out) = run("frpc", &["verify", "-c", path], env.path());
        assert!(!ok, "frpc verify accepted:\n{proxies}\n{out}");
        assert!(
            out.contains(want),
            "frpc verify: want {want:?}, got:\n{out}"
        );
        assert!(!out.contains("syntax is ok"), "{out}");
        let (ok, out) = run("frpc", &["-c", path], env.path());
        assert!(!ok, "frpc started with:\n{proxies}\n{out}");
        assert!(out.contains(want), "frpc: want {want:?}, got:\n{out}");
        assert!(
            !out.contains("login to the server"),
            "frpc tried the server before validating:\n{out}"
        );
    }
    // A disabled proxy is not validated (frp filters before it validates).
    let path = env.write(
        "ok.toml",
        &frpc_cfg(
            port,
            "[[proxies]]\nname = \"web\"\ntype = \"http\"\nlocalPort = 80\nenabled = false\n",
        ),
    );
    let (ok, out) = run(
        "frpc",
        &["verify", "-c", path.to_str().unwrap()],
        env.path(),
    );
    assert!(ok && out.contains("syntax is ok"), "{out}");
}

/// frps validates its config at `verify` and at start.
#[test]
fn frps_refuses_what_frp_refuses() {
    let env = Env::new();
    let cfg = format!(
        "bindAddr = \"127.0.0.1\"\nbindPort = {}\nauth.method = \"ldap\"\n",
        free_port()
    );
    let path = env.write("s.toml", &cfg);
    let path = path.to_str().unwrap();
    let want = "invalid auth method, optional values are [token oidc]";
    let (ok, out) = run("frps", &["verify", "-c", path], env.path());
    assert!(!ok && out.contains(want), "{out}");
    let (ok, out) = run("frps", &["-c", path], env.path());
    assert!(!ok && out.contains(want), "{out}");
    assert!(!out.contains("start frps success"), "{out}");
}

/// Logs in to frps over a plain v1 control connection and sends each NewProxy; returns the
/// error of each NewProxyResp.
async fn new_proxy_errors(port: u16, token: &str, proxies: Vec<NewProxy>) -> Vec<String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut mc = MsgConn::client(tcp, WireVersion::V1);
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let login = Login {
        version: control::FRP_VERSION.into(),
        privilege_key: control::auth::privilege_key(token, timestamp),
        timestamp,
        pool_count: 0,
        ..Default::default()
    };
    let (resp, crypto) = client_login(&mut mc, login, BootstrapInfo::default())
        .await
        .unwrap();
    assert_eq!(resp.error, "", "login refused");
    let key = control::crypto::CryptoKey::derive(token.as_bytes());
    enable_control_encryption(&mut mc, crypto.as_ref(), token, &key, Role::Client).unwrap();
    let mut errors = Vec::new();
    for np in proxies {
        let name = np.proxy_name.clone();
        mc.write_msg(&np.into()).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), mc.read_msg())
                .await
                .expect("NewProxyResp in time")
                .unwrap();
            if let Message::NewProxyResp(r) = m {
                assert_eq!(r.proxy_name, name);
                errors.push(r.error);
                break;
            }
        }
    }
    errors
}

/// frps checks what it is sent, whatever the client validated: frp's
/// `NewProxyConfigurerFromMsg` (a known type, the server-side validation) answers with frp's
/// error text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frps_refuses_a_new_proxy_frp_refuses() {
    let env = Env::new();
    let bind = free_port();
    let vhost = free_port();
    let _frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"t\"\ntransport.tcpMux = false\nvhostHTTPPort = {vhost}\n"),
    );
    let np = |name: &str, ty: &str| NewProxy {
        proxy_name: name.into(),
        proxy_type: ty.into(),
        ..Default::default()
    };
    let mut bad_annotation = np("ann", "tcp");
    bad_annotation.annotations = BTreeMap::from([("-bad".to_string(), "x".to_string())]);
    let mut subdomain = np("sub", "http");
    subdomain.subdomain = "a".into();
    let errors = new_proxy_errors(
        bind,
        "t",
        vec![
            np("odd", "socks"),
            bad_annotation,
            subdomain,
            np("sec", "https"),
        ],
    )
    .await;
    assert_eq!(errors[0], "unknown proxy type: socks");
    assert!(
        errors[1].starts_with("annotation key -bad is invalid: "),
        "{}",
        errors[1]
    );
    assert_eq!(
        errors[2],
        "subdomain is not supported because this feature is not enabled in server"
    );
    assert_eq!(
        errors[3],
        "type [https] not supported when vhost https port is not set"
    );
}
