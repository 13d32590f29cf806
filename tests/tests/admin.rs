//! frpc's admin API and `frpc reload|status|stop` end to end: real frps and frpc processes on
//! 127.0.0.1, the admin API called over HTTP and through the frpc binary.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use control::admin::{ProxyStatusResp, StatusResp};
use e2e::admin_api::{
    admin_client, admin_common_toml, banner_server, read_eventually, tcp_proxy_toml, wait_status,
};
use e2e::*;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "admin-e2e";
const USER: &str = "admin";
const PASSWORD: &str = "s3cret";

/// frpc's common section with the admin API on `admin_port`.
fn common(server_port: u16, admin_port: u16) -> String {
    admin_common_toml(server_port, TOKEN, admin_port, USER, PASSWORD)
}

/// Runs `frpc <args>` to completion.
fn frpc_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("frpc"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run frpc")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn proxy<'a>(s: &'a StatusResp, name: &str) -> Option<&'a ProxyStatusResp> {
    s.values().flatten().find(|p| p.name == name)
}

fn running(s: &StatusResp, names: &[&str]) -> bool {
    names
        .iter()
        .all(|n| proxy(s, n).is_some_and(|p| p.status == "running"))
}

async fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .expect("echo failed");
    assert_eq!(buf, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_changes_and_removes_proxies_and_keeps_untouched_ones() {
    let env = Env::new();
    let echo = echo_server().await;
    let second = banner_server(b"second service").await;
    let bind = free_port();
    let admin = free_port();
    let (r_keep, r_change, r_remove, r_add) = (free_port(), free_port(), free_port(), free_port());
    let frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\nlog.level = \"debug\""),
    );
    let before = format!(
        "{}{}{}{}",
        common(bind, admin),
        tcp_proxy_toml("keep", echo, r_keep),
        tcp_proxy_toml("change", echo, r_change),
        tcp_proxy_toml("remove", echo, r_remove),
    );
    let _frpc = env.frpc("frpc", &before);
    let api = admin_client(admin, USER, PASSWORD);
    wait_status(&api, "all proxies running", |s| {
        running(s, &["keep", "change", "remove"])
    })
    .await;

    // A long-lived connection through the proxy that the reload leaves alone.
    let mut held = TcpStream::connect(("127.0.0.1", r_keep)).await.unwrap();
    echo_once(&mut held, b"before reload").await;
    roundtrip_eventually(r_remove, b"still here", Duration::from_secs(5)).await;

    // Change `change` (another local service), drop `remove`, add `added`.
    let after = format!(
        "{}{}{}{}{}",
        common(bind, admin),
        tcp_proxy_toml("keep", echo, r_keep),
        tcp_proxy_toml("change", second, r_change),
        tcp_proxy_toml("added", echo, r_add),
        engine_table(),
    );
    let cfg_path = env.write("frpc.toml", &after);
    let out = frpc_cli(env.path(), &["reload", "-c", cfg_path.to_str().unwrap()]);
    assert!(out.status.success(), "frpc reload failed: {out:?}");
    assert_eq!(stdout(&out), "reload success\n");

    wait_status(&api, "reloaded proxies running", |s| {
        running(s, &["keep", "change", "added"]) && proxy(s, "remove").is_none()
    })
    .await;
    frps.wait_log("close proxy [remove] success", Duration::from_secs(5));
    frps.wait_log("close proxy [change] success", Duration::from_secs(5));
    read_eventually(r_change, b"second service").await;
    roundtrip_eventually(r_add, b"new proxy", Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_listening(r_remove) {
        assert!(Instant::now() < deadline, "removed proxy's port still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The untouched proxy was never closed or registered again, and its connection works.
    let log = frps.log_text();
    assert_eq!(
        log.matches("new proxy [keep] type [tcp] success").count(),
        1
    );
    assert_eq!(log.matches("close proxy [keep]").count(), 0);
    assert_eq!(
        log.matches("new proxy [change] type [tcp] success").count(),
        2
    );
    echo_once(&mut held, b"after reload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rejects_an_invalid_config_and_changes_nothing() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let admin = free_port();
    let remote = free_port();
    let _frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let good = format!(
        "{}{}",
        common(bind, admin),
        tcp_proxy_toml("echo", echo, remote)
    );
    let _frpc = env.frpc("frpc", &good);
    let api = admin_client(admin, USER, PASSWORD);
    wait_status(&api, "echo running", |s| running(s, &["echo"])).await;

    // Parses, but fails frp's validation: an http proxy needs a domain.
    let bad = format!("{good}\n[[proxies]]\nname = \"web\"\ntype = \"http\"\nlocalPort = {echo}\n");
    let path = env.write("frpc.toml", &bad);
    let out = frpc_cli(env.path(), &["reload", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stdout(&out), "api status code [400]\n");
    let (status, body) = api
        .raw(Method::GET, "/api/reload?strictConfig=true", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["Code"], 400);
    assert!(
        v["Msg"]
            .as_str()
            .unwrap()
            .contains("subdomain and custom domains"),
        "{v}"
    );
    let s = api.status().await.unwrap();
    assert!(proxy(&s, "web").is_none());
    assert!(running(&s, &["echo"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_and_api_status_list_running_proxies() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let admin = free_port();
    let (r1, r2) = (free_port(), free_port());
    let _frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let cfg = format!(
        "{}{}{}",
        common(bind, admin),
        tcp_proxy_toml("alpha", echo, r1),
        tcp_proxy_toml("beta", echo, r2)
    );
    let _frpc = env.frpc("frpc", &cfg);
    let api = admin_client(admin, USER, PASSWORD);
    wait_status(&api, "both running", |s| running(s, &["alpha", "beta"])).await;

    let s = api.status().await.unwrap();
    assert_eq!(s.keys().collect::<Vec<_>>(), ["tcp"]);
    let tcp = &s["tcp"];
    assert_eq!(
        tcp.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    assert_eq!(tcp[0].proxy_type, "tcp");
    assert_eq!(tcp[0].status, "running");
    assert_eq!(tcp[0].err, "");
    assert_eq!(tcp[0].local_addr, format!("127.0.0.1:{echo}"));
    assert_eq!(tcp[0].remote_addr, format!("127.0.0.1:{r1}"));
    assert_eq!(tcp[1].remote_addr, format!("127.0.0.1:{r2}"));

    let path = env.path().join("frpc.toml");
    let out = frpc_cli(env.path(), &["status", "-c", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Proxy Status...");
    assert_eq!(lines[2], "TCP");
    let header: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "Name",
            "Status",
            "LocalAddr",
            "Plugin",
            "RemoteAddr",
            "Error"
        ]
    );
    let row: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(
        row,
        [
            "alpha",
            "running",
            &format!("127.0.0.1:{echo}"),
            &format!("127.0.0.1:{r1}")
        ]
    );
    assert!(lines[5].starts_with("beta ") && lines[5].contains("running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_round_trip_healthz_and_basic_auth() {
    let env = Env::new();
    let bind = free_port();
    let admin = free_port();
    let _frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let cfg = format!(
        "{}{}",
        common(bind, admin),
        tcp_proxy_toml("echo", 1, free_port())
    );
    let frpc = env.frpc("frpc", &cfg);
    frpc.wait_log("admin server listen on", Duration::from_secs(10));
    let path = env.path().join("frpc.toml");
    let on_disk = std::fs::read_to_string(&path).unwrap();

    let api = admin_client(admin, USER, PASSWORD);
    assert_eq!(api.get_config().await.unwrap(), on_disk);
    let changed = format!("# edited through the admin API\n{on_disk}");
    api.put_config(&changed).await.unwrap();
    assert_eq!(api.get_config().await.unwrap(), changed);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), changed);

    // A config that does not load is refused and the file is left alone.
    let (status, body) = api
        .raw(Method::PUT, "/api/config", Some("serverPort = \"x".into()))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["Code"], 400);
    assert!(v["Msg"].as_str().unwrap().starts_with("invalid config"));
    let (status, _) = api
        .raw(Method::PUT, "/api/config", Some("".into()))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), changed);

    // /healthz needs no credentials; everything else does.
    let anon = admin_client(admin, "", "");
    assert_eq!(
        anon.raw(Method::GET, "/healthz", None).await.unwrap().0,
        StatusCode::OK
    );
    for (method, p) in [
        (Method::GET, "/api/status"),
        (Method::GET, "/api/config"),
        (Method::GET, "/api/reload"),
        (Method::POST, "/api/stop"),
    ] {
        let (status, _) = anon.raw(method.clone(), p, None).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {p}");
    }
    let wrong = admin_client(admin, USER, "wrong");
    assert_eq!(
        wrong.raw(Method::GET, "/api/status", None).await.unwrap().0,
        StatusCode::UNAUTHORIZED
    );
    // Still running: the unauthenticated stop did nothing.
    assert!(api.status().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_command_exits_frpc_zero_and_frps_closes_the_proxy() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let admin = free_port();
    let remote = free_port();
    let frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let cfg = format!(
        "{}{}",
        common(bind, admin),
        tcp_proxy_toml("echo", echo, remote)
    );
    let mut frpc = env.frpc("frpc", &cfg);
    wait_status(&admin_client(admin, USER, PASSWORD), "echo running", |s| {
        running(s, &["echo"])
    })
    .await;
    roundtrip_eventually(remote, b"hi", Duration::from_secs(5)).await;

    let path = env.path().join("frpc.toml");
    let out = frpc_cli(env.path(), &["stop", "-c", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "stop success\n");
    let status = frpc
        .wait_exit(Duration::from_secs(10))
        .expect("frpc did not exit after stop");
    assert_eq!(status.code(), Some(0));
    frps.wait_log("close proxy [echo] success", Duration::from_secs(5));
    assert!(wait_port_closed(remote, Duration::from_secs(5)));

    // Nothing listens any more: the CLI reports the dial error and exits 1.
    let out = frpc_cli(env.path(), &["status", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("connection refused"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_need_a_web_server_port() {
    let env = Env::new();
    let path = env.write(
        "frpc.toml",
        "serverAddr = \"127.0.0.1\"\nserverPort = 7000\n",
    );
    for cmd in ["reload", "status", "stop"] {
        let out = frpc_cli(env.path(), &[cmd, "-c", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert_eq!(
            stdout(&out),
            "web server port should be set if you want to use this feature\n"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_tcp_proxy_from_flags() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let _frps = env.frps("frps", bind, &format!("auth.token = \"{TOKEN}\""));
    let server = format!("127.0.0.1:{bind}");
    let (echo_s, remote_s) = (echo.to_string(), remote.to_string());
    let frpc = Proc::spawn(
        "frpc",
        &bin("frpc"),
        &[
            "tcp",
            "--server_addr",
            &server,
            "--token",
            TOKEN,
            "--local_port",
            &echo_s,
            "--remote_port",
            &remote_s,
            "--proxy_name",
            "quick",
        ],
        env.path(),
    );
    frpc.wait_log("[quick] start proxy success", Duration::from_secs(10));
    let data = pattern(50_000, 3);
    assert_eq!(
        roundtrip_eventually(remote, &data, Duration::from_secs(5)).await,
        data
    );
}
