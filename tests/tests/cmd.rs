//! frp's command line without a config file, end to end: frps from flags alone
//! (`-p`, `-t`, `--vhost_http_port`, … in both `--a_b` and `--a-b` spellings) and frpc's quick
//! subcommands `tcp|udp|http|https|tcpmux|stcp|sudp` and the `stcp|sudp visitor` subcommands,
//! with bytes through each proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const TOKEN: &str = "cmd-e2e";
const WAIT: Duration = Duration::from_secs(10);

/// frps from flags only, on 127.0.0.1, with the vhost ports; returns it.
fn flag_frps(env: &Env, bind: u16, vhttp: u16, vhttps: u16, extra: &[&str]) -> Proc {
    let (bind_s, vhttp_s, vhttps_s) = (bind.to_string(), vhttp.to_string(), vhttps.to_string());
    let mut args = vec![
        "-t",
        TOKEN,
        "-p",
        &bind_s,
        "--bind_addr",
        "127.0.0.1",
        "--proxy-bind-addr",
        "127.0.0.1",
        "--vhost-http-port",
        &vhttp_s,
        "--vhost_https_port",
        &vhttps_s,
    ];
    args.extend_from_slice(extra);
    let p = Proc::spawn("frps", &bin("frps"), &args, env.path());
    p.wait_log("start frps success", WAIT);
    p
}

/// `frpc <args> -s 127.0.0.1 -P <bind> -t TOKEN`.
fn quick(env: &Env, name: &str, bind: u16, args: &[&str]) -> Proc {
    let bind_s = bind.to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["-s", "127.0.0.1", "-P", &bind_s, "-t", TOKEN]);
    Proc::spawn(name, &bin("frpc"), &all, env.path())
}

/// A minimal HTTP backend answering every request with `body`.
async fn http_backend(body: &'static str) -> u16 {
    tcp_service(move |mut s| async move {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
    })
    .await
}

/// GET / with `Host: host` on the vhost port until it is not 404; returns the response.
async fn http_get_eventually(port: u16, host: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp).await;
        if resp.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TLS ClientHello for `sni`, as a browser would open an https proxy with.
fn client_hello(sni: &str) -> Vec<u8> {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut c = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

/// `echo_exact` retried until the route or listener is there.
async fn echo_eventually(port: u16, data: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), echo_exact(port, data)).await {
            Ok(Ok(got)) => return got,
            _ if Instant::now() > deadline => panic!("no echo on port {port}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_frps_with_quick_tcp_udp_http_https() {
    let env = Env::new();
    let (bind, vhttp, vhttps) = (free_port(), free_port(), free_port());
    let (tcp_remote, udp_remote) = (free_port(), free_port());
    let allowed = format!("{tcp_remote},{udp_remote}");
    let _frps = flag_frps(
        &env,
        bind,
        vhttp,
        vhttps,
        &["--allow-ports", &allowed, "--log_level", "debug"],
    );
    let echo = echo_server().await.to_string();
    let uecho = udp_echo_server().await.to_string();
    let web = http_backend("quick-http").await.to_string();
    let (tr, ur) = (tcp_remote.to_string(), udp_remote.to_string());

    let tcp = quick(
        &env,
        "frpc-tcp",
        bind,
        &[
            "tcp", "-n", "qtcp", "-l", &echo, "-r", &tr, "-u", "alice", "--ue", "--uc",
        ],
    );
    let udp = quick(
        &env,
        "frpc-udp",
        bind,
        &[
            "udp",
            "--proxy-name",
            "qudp",
            "--local-port",
            &uecho,
            "--remote_port",
            &ur,
        ],
    );
    let http = quick(
        &env,
        "frpc-http",
        bind,
        &[
            "http",
            "-n",
            "qhttp",
            "-l",
            &web,
            "--custom-domain",
            "quick.example.com",
        ],
    );
    let https = quick(
        &env,
        "frpc-https",
        bind,
        &[
            "https",
            "-n",
            "qhttps",
            "-l",
            &echo,
            "-d",
            "tls.example.com,tls2.example.com",
        ],
    );
    tcp.wait_log("[qtcp] start proxy success", WAIT);
    udp.wait_log("[qudp] start proxy success", WAIT);
    http.wait_log("[qhttp] start proxy success", WAIT);
    https.wait_log("[qhttps] start proxy success", WAIT);

    let data = pattern(100_000, 7);
    assert_eq!(echo_eventually(tcp_remote, &data).await, data);

    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        udp_probe(&sock, udp_remote, b"quick udp", WAIT).await,
        b"quick udp"
    );

    let resp = http_get_eventually(vhttp, "quick.example.com").await;
    assert!(resp.ends_with("\r\n\r\nquick-http"), "{resp}");

    // The https proxy routes by SNI and passes TLS through: the echo service returns the
    // ClientHello itself, for either custom domain.
    for sni in ["tls.example.com", "tls2.example.com"] {
        let hello = client_hello(sni);
        assert_eq!(echo_eventually(vhttps, &hello).await, hello, "{sni}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_frps_refuses_ports_outside_allow_ports() {
    let env = Env::new();
    let (bind, allowed, other) = (free_port(), free_port(), free_port());
    let allowed_s = allowed.to_string();
    let _frps = flag_frps(
        &env,
        bind,
        free_port(),
        free_port(),
        &["--allow_ports", &allowed_s],
    );
    let echo = echo_server().await.to_string();
    let other_s = other.to_string();
    let frpc = quick(
        &env,
        "frpc",
        bind,
        &["tcp", "-n", "outside", "-l", &echo, "-r", &other_s],
    );
    frpc.wait_log("port not allowed", WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_tcpmux_stcp_sudp_and_visitors() {
    let env = Env::new();
    let (bind, mport) = (free_port(), free_port());
    // tcpmuxHTTPConnectPort has no frps flag: this frps reads a file.
    let _frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\ntcpmuxHTTPConnectPort = {mport}\n"),
    );
    let echo = echo_server().await.to_string();
    let uecho = udp_echo_server().await.to_string();
    let (vis_tcp, vis_udp) = (free_port(), free_port());
    let (vt, vu) = (vis_tcp.to_string(), vis_udp.to_string());

    let mux = quick(
        &env,
        "frpc-mux",
        bind,
        &[
            "tcpmux",
            "-n",
            "qmux",
            "--mux",
            "httpconnect",
            "-l",
            &echo,
            "-d",
            "mux.example.com",
        ],
    );
    let stcp = quick(
        &env,
        "frpc-stcp",
        bind,
        &[
            "stcp",
            "-n",
            "qstcp",
            "--sk",
            "s3cret",
            "-l",
            &echo,
            "-u",
            "bob",
            "--allow_users",
            "*",
        ],
    );
    let stcp_v = quick(
        &env,
        "frpc-stcp-v",
        bind,
        &[
            "stcp",
            "visitor",
            "-n",
            "qstcp-v",
            "--server_name",
            "qstcp",
            "--sk",
            "s3cret",
            "--server-user",
            "bob",
            "--bind-addr",
            "127.0.0.1",
            "--bind_port",
            &vt,
        ],
    );
    let sudp = quick(
        &env,
        "frpc-sudp",
        bind,
        &["sudp", "-n", "qsudp", "--sk", "u5", "-l", &uecho],
    );
    let sudp_v = quick(
        &env,
        "frpc-sudp-v",
        bind,
        &[
            "sudp",
            "visitor",
            "--visitor-name",
            "qsudp-v",
            "--server-name",
            "qsudp",
            "--sk",
            "u5",
            "--bind_port",
            &vu,
        ],
    );
    mux.wait_log("[qmux] start proxy success", WAIT);
    stcp.wait_log("[qstcp] start proxy success", WAIT);
    sudp.wait_log("[qsudp] start proxy success", WAIT);
    stcp_v.wait_log("start visitor success", WAIT);
    sudp_v.wait_log("start visitor success", WAIT);

    // tcpmux: CONNECT, then bytes through the tunnel.
    let mut s = TcpStream::connect(("127.0.0.1", mport)).await.unwrap();
    s.write_all(b"CONNECT mux.example.com:80 HTTP/1.1\r\nHost: mux.example.com:80\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await.expect("CONNECT response");
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let data = pattern(30_000, 2);
    assert_eq!(echo_exact_on(s, &data).await.unwrap(), data);

    let data = pattern(60_000, 4);
    assert_eq!(echo_eventually(vis_tcp, &data).await, data);

    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        udp_probe(&sock, vis_udp, b"sudp quick", WAIT).await,
        b"sudp quick"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_flag_errors() {
    let env = Env::new();
    let run = |args: &[&str]| {
        std::process::Command::new(bin("frpc"))
            .args(args)
            .current_dir(env.path())
            .output()
            .unwrap()
    };
    // frp's validation of the quick proxy, printed on stdout, exit 1.
    let out = run(&["http", "-n", "h", "-l", "80"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("subdomain and custom domains should not be both empty"),
        "{out:?}"
    );
    let out = run(&[
        "stcp",
        "visitor",
        "-n",
        "v",
        "--sk",
        "k",
        "--server_name",
        "s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bind port is required"),
        "{out:?}"
    );
    let out = run(&["tcp", "-n", "t", "--metadatas", "novalue"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("must be formatted as key=value"),
        "{out:?}"
    );
    // xtcp is served now: its visitor is validated like frp's (no bind port).
    let out = run(&[
        "xtcp",
        "visitor",
        "-n",
        "v",
        "--sk",
        "k",
        "--server_name",
        "s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bind port is required"),
        "{out:?}"
    );
    // frps: a flag value out of range, in frp's words.
    let out = std::process::Command::new(bin("frps"))
        .args(["-p", "70000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bindPort: port number 70000 must be in the range 0..65535\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dir_runs_one_frpc_per_file() {
    let env = Env::new();
    let bind = free_port();
    let _frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let echo = echo_server().await;
    let (r1, r2) = (free_port(), free_port());
    let dir = env.path().join("confs");
    std::fs::create_dir_all(dir.join("more")).unwrap();
    let conf = |name: &str, remote: u16| {
        format!(
            "serverAddr = \"127.0.0.1\"\nserverPort = {bind}\nauth.token = \"{TOKEN}\"\n\
             [[proxies]]\nname = \"{name}\"\ntype = \"tcp\"\nlocalPort = {echo}\nremotePort = {remote}\n"
        )
    };
    std::fs::write(dir.join("a.toml"), conf("dir-a", r1)).unwrap();
    std::fs::write(dir.join("more/b.toml"), conf("dir-b", r2)).unwrap();
    std::fs::write(dir.join("broken.toml"), "serverPort = \"x\"\n").unwrap();
    let frpc = Proc::spawn(
        "frpc",
        &bin("frpc"),
        &["--config_dir", dir.to_str().unwrap()],
        env.path(),
    );
    frpc.wait_log("[dir-a] start proxy success", WAIT);
    frpc.wait_log("[dir-b] start proxy success", WAIT);
    frpc.wait_log("frpc service error for config file [", WAIT);
    assert!(
        frpc.log_text().contains("broken.toml]"),
        "{}",
        frpc.log_text()
    );
    for remote in [r1, r2] {
        let data = pattern(20_000, u64::from(remote));
        assert_eq!(echo_eventually(remote, &data).await, data);
    }
}

#[test]
fn verify_refusals_name_their_line() {
    let env = Env::new();
    let verify = |bin_name: &str, file: &str, text: &str| {
        let path = env.write(file, text);
        let out = std::process::Command::new(bin(bin_name))
            .args(["verify", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!stdout.contains("syntax is ok"), "{stdout}");
        (path, stdout)
    };
    // frp's e2e "frpc invalid": transport.protocol = "invalid".
    let (path, out) = verify(
        "frpc",
        "c.toml",
        "serverAddr = \"0.0.0.0\"\nserverPort = 7000\ntransport.protocol = \"invalid\"\n",
    );
    assert_eq!(
        out,
        format!(
            "{}: line 3: invalid transport.protocol, optional values are [tcp kcp quic websocket wss]\n",
            path.display()
        )
    );
    let (path, out) = verify(
        "frpc",
        "p.yaml",
        "proxies:\n  - name: web\n    type: http\n    localPort: 80\n",
    );
    assert_eq!(
        out,
        format!(
            "{}: line 2: proxy web: subdomain and custom domains should not be both empty\n",
            path.display()
        )
    );
    // frp's e2e "frps invalid": bindPort = 70000 (a decode error, with line and column).
    let (_, out) = verify(
        "frps",
        "s.toml",
        "bindAddr = \"0.0.0.0\"\nbindPort = 70000\n",
    );
    assert!(out.contains("line 2") && out.contains("70000"), "{out}");
    let (path, out) = verify("frps", "s2.toml", "log.level = \"loud\"\n");
    assert_eq!(
        out,
        format!(
            "{}: line 1: invalid log level, optional values are [trace debug info warn error]\n",
            path.display()
        )
    );
}
