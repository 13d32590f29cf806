//! frps' SSH tunnel gateway (`sshTunnelGateway`) with the system's OpenSSH client:
//! `ssh -R :80:127.0.0.1:PORT v0@frps -p SSHPORT tcp|http … [flags]` gets a proxy whose
//! connections reach PORT through the ssh client; the proxy goes with the ssh session. Keys
//! are made by ssh-keygen in the test's directory; `-F /dev/null` keeps the user's ssh config
//! out. Skipped (with a line saying so) when `ssh` or `ssh-keygen` is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(15);

fn have_openssh(test: &str) -> bool {
    let ok = |prog: &str, arg: &str| {
        std::process::Command::new(prog)
            .arg(arg)
            .stdin(std::process::Stdio::null())
            .output()
            .is_ok()
    };
    if ok("ssh", "-V") && ok("ssh-keygen", "-?") {
        return true;
    }
    println!("SKIPPED {test}: no ssh/ssh-keygen on PATH (apt-get install -y openssh-client)");
    false
}

/// An Ed25519 key pair in the test's directory; returns the private key's path (the public
/// key is next to it, `.pub`).
fn keygen(env: &Env, name: &str, comment: &str) -> PathBuf {
    let path = env.path().join(name);
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen");
    assert!(st.success(), "ssh-keygen failed");
    path
}

/// frps with the gateway on `ssh_port` (its host key kept in the test's directory).
fn frps(env: &Env, ssh_port: u16, extra: &str) -> Proc {
    let key = env.path().join("host_key");
    let p = env.frps(
        "frps",
        free_port(),
        &format!(
            "sshTunnelGateway.bindPort = {ssh_port}\nsshTunnelGateway.autoGenPrivateKeyPath = \"{}\"\n{extra}",
            key.display()
        ),
    );
    p.wait_log("frps sshTunnelGateway listen on port", WAIT);
    p
}

/// `ssh -R :80:127.0.0.1:{local} v0@127.0.0.1 -p {ssh_port} {command…}`, output in its log.
fn ssh(
    env: &Env,
    name: &str,
    ssh_port: u16,
    key: Option<&Path>,
    local: u16,
    command: &[&str],
) -> Proc {
    let port = ssh_port.to_string();
    let forward = format!(":80:127.0.0.1:{local}");
    let mut args: Vec<&str> = vec![
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-p",
        &port,
        "-R",
        &forward,
    ];
    if let Some(k) = key {
        args.extend(["-i", k.to_str().unwrap()]);
    }
    args.push("v0@127.0.0.1");
    args.extend(command);
    Proc::spawn(name, Path::new("ssh"), &args, env.path())
}

/// A local HTTP service answering every request with `body`.
async fn http_service(body: &'static str) -> u16 {
    tcp_service(move |mut s| async move {
        if read_head(&mut s).await.is_none() {
            return;
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
}

async fn http_get(port: u16, host: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A tcp proxy through `ssh -R`: frp's success text in the session, bytes both ways through
/// the proxy, and the proxy (its port) gone once the ssh client is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_through_ssh_r_and_gone_with_the_session() {
    if !have_openssh("tcp_proxy_through_ssh_r_and_gone_with_the_session") {
        return;
    }
    let env = Env::new();
    let ssh_port = free_port();
    let remote = free_port();
    let frps = frps(&env, ssh_port, "");
    let echo = echo_server().await;
    let mut client = ssh(
        &env,
        "ssh",
        ssh_port,
        None,
        echo,
        &["tcp", "--remote-port", &remote.to_string(), "-n", "echo"],
    );
    client.wait_log(&format!("RemoteAddress: :{remote}"), WAIT);
    let text = client.log_text();
    assert!(
        text.contains("frp (via SSH) (Ctrl+C to quit)")
            && text.contains("ProxyName: echo")
            && text.contains("Type: tcp"),
        "{text}"
    );
    let data = pattern(256 * 1024, 7);
    let got = tokio::time::timeout(WAIT, echo_exact(remote, &data))
        .await
        .expect("echo through the ssh tunnel timed out")
        .unwrap();
    assert!(got == data, "echo through the ssh tunnel differs");
    // Several connections at once, each its own forwarded channel.
    let mut tasks = Vec::new();
    for i in 0..4u64 {
        tasks.push(tokio::spawn(async move {
            let d = pattern(10_000, i);
            echo_exact(remote, &d).await.map(|g| g == d)
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap());
    }

    client.kill();
    frps.wait_log("proxy [echo] closed", WAIT);
    assert!(
        wait_port_closed(remote, WAIT),
        "the proxy still listens after the ssh session ended"
    );
}

/// An http proxy through `ssh -R` (vhostHTTPPort routes by Host to it). The host key is a
/// `privateKeyFile` in frp's own format for generated keys: PEM PKCS#1 RSA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_through_ssh_r() {
    if !have_openssh("http_proxy_through_ssh_r") {
        return;
    }
    let env = Env::new();
    let host_key = env.path().join("rsa_host_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f"])
        .arg(&host_key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    assert!(
        std::fs::read_to_string(&host_key)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    let ssh_port = free_port();
    let vhost = free_port();
    let _frps = frps(
        &env,
        ssh_port,
        &format!(
            "vhostHTTPPort = {vhost}\nsshTunnelGateway.privateKeyFile = \"{}\"\n",
            host_key.display()
        ),
    );
    let local = http_service("hello through ssh").await;
    let client = ssh(
        &env,
        "ssh",
        ssh_port,
        None,
        local,
        &["http", "--custom_domain", "test.example.com"],
    );
    client.wait_log("RemoteAddress:", WAIT);
    assert!(client.log_text().contains("Type: http"));
    // privateKeyFile wins: no key was generated.
    assert!(!env.path().join("host_key").exists());
    let resp = http_get(vhost, "test.example.com").await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("hello through ssh"),
        "{resp}"
    );
    // Another host is not routed to it.
    let other = http_get(vhost, "other.example.com").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

/// With `authorizedKeysFile`, a key that is not listed gets no session (and frps logs why);
/// a listed one does, as the user its comment names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_keys_admit_listed_keys_only() {
    if !have_openssh("authorized_keys_admit_listed_keys_only") {
        return;
    }
    let env = Env::new();
    let alice = keygen(&env, "alice", "alice");
    let mallory = keygen(&env, "mallory", "mallory");
    let listed = std::fs::read_to_string(alice.with_extension("pub")).unwrap();
    let authorized = env.write("authorized_keys", &listed);
    let ssh_port = free_port();
    let remote = free_port();
    let frps = frps(
        &env,
        ssh_port,
        &format!(
            "auth.token = \"frps-secret\"\nsshTunnelGateway.authorizedKeysFile = \"{}\"\n",
            authorized.display()
        ),
    );
    let echo = echo_server().await;
    let command = ["tcp", "-r", &remote.to_string()];

    let mut refused = ssh(
        &env,
        "ssh-mallory",
        ssh_port,
        Some(&mallory),
        echo,
        &command,
    );
    let status = refused
        .wait_exit(WAIT)
        .expect("ssh with an unknown key kept running");
    assert!(!status.success());
    let text = refused.log_text();
    assert!(text.contains("Permission denied"), "{text}");
    assert!(!text.contains("RemoteAddress"), "{text}");
    frps.wait_log("unknown public key for remoteAddr", WAIT);
    assert!(!is_listening(remote));

    // The listed key needs no token: the ssh login is the authentication.
    let admitted = ssh(&env, "ssh-alice", ssh_port, Some(&alice), echo, &command);
    admitted.wait_log(&format!("RemoteAddress: :{remote}"), WAIT);
    assert!(admitted.log_text().contains("User: alice"));
    let got = echo_exact(remote, b"ping").await.unwrap();
    assert_eq!(got, b"ping");
}

/// Without `authorizedKeysFile` anyone may connect, and the command's `-t` token must be
/// frps' token: a wrong one is told why, and the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flag_logs_in_without_authorized_keys() {
    if !have_openssh("token_flag_logs_in_without_authorized_keys") {
        return;
    }
    let env = Env::new();
    let ssh_port = free_port();
    let remote = free_port();
    let _frps = frps(&env, ssh_port, "auth.token = \"frps-secret\"\n");
    let echo = echo_server().await;
    let r = remote.to_string();

    let mut wrong = ssh(
        &env,
        "ssh-wrong",
        ssh_port,
        None,
        echo,
        &["tcp", "-r", &r, "-t", "nope"],
    );
    let status = wrong.wait_exit(WAIT).expect("ssh kept running");
    assert!(!status.success());
    let text = wrong.log_text();
    assert!(
        text.contains("login to the server failed") && text.contains("token"),
        "{text}"
    );

    let bad = ssh(&env, "ssh-bad", ssh_port, None, echo, &["udp", "-r", &r]);
    bad.wait_log(
        "invalid proxy type: udp, support types: [tcp http https tcpmux stcp]",
        WAIT,
    );

    let right = ssh(
        &env,
        "ssh-right",
        ssh_port,
        None,
        echo,
        &["tcp", "-r", &r, "--token=frps-secret"],
    );
    right.wait_log(&format!("RemoteAddress: :{remote}"), WAIT);
    assert_eq!(echo_exact(remote, b"ok").await.unwrap(), b"ok");
}

/// Reads until EOF or an error; true if that happened within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Garbage and a handshake that stops half-way are closed, each with a logged reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_half_handshakes_are_closed_with_a_reason() {
    let env = Env::new();
    let ssh_port = free_port();
    let frps = frps(&env, ssh_port, "");

    let mut garbage = TcpStream::connect(("127.0.0.1", ssh_port)).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut garbage, WAIT).await,
        "garbage not closed"
    );
    frps.wait_log("invalid SSH version string", WAIT);

    // A version line, then silence: the key exchange never happens.
    let mut half = TcpStream::connect(("127.0.0.1", ssh_port)).await.unwrap();
    half.write_all(b"SSH-2.0-OpenSSH_9.9\r\n").await.unwrap();
    assert!(
        closed_within(&mut half, Duration::from_secs(30)).await,
        "half-finished handshake not closed"
    );
    frps.wait_log("no successful ssh authentication within 10s", WAIT);
    let log = frps.log_text();
    assert_eq!(
        log.matches("ssh tunnel server run error: connection from 127.0.0.1:")
            .count(),
        2,
        "{log}"
    );
}

/// A `privateKeyFile` that cannot be read stops frps at start, with frp's words.
#[test]
fn unreadable_private_key_file_stops_frps() {
    let env = Env::new();
    let missing = env.path().join("missing_key");
    let cfg = env.write(
        "frps.toml",
        &format!(
            "bindAddr = \"127.0.0.1\"\nbindPort = {}\nsshTunnelGateway.bindPort = {}\nsshTunnelGateway.privateKeyFile = \"{}\"\n",
            free_port(),
            free_port(),
            missing.display()
        ),
    );
    let mut p = Proc::spawn(
        "frps",
        &bin("frps"),
        &["-c", cfg.to_str().unwrap()],
        env.path(),
    );
    let status = p.wait_exit(WAIT).expect("frps kept running");
    assert!(!status.success());
    let log = p.log_text();
    assert!(
        log.contains(&format!(
            "create ssh gateway error: open {}: no such file or directory",
            missing.display()
        )),
        "{log}"
    );
}
