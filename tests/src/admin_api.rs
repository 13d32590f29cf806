//! Helpers for tests that drive frpc's admin API (`webServer.*`) over HTTP: a client, polling
//! `/api/status`, a TOML `[[proxies]]` entry, and a banner service to tell tunnels apart.

use std::time::{Duration, Instant};

use control::admin::StatusResp;
use control::admin::api_client::AdminClient;
use control::config::WebServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client of the admin API on 127.0.0.1:`admin_port` with basic auth `user`:`password`.
pub fn admin_client(admin_port: u16, user: &str, password: &str) -> AdminClient {
    AdminClient::new(
        &WebServerConfig {
            addr: "127.0.0.1".into(),
            port: admin_port,
            user: user.into(),
            password: password.into(),
            ..Default::default()
        },
        Duration::from_secs(10),
    )
}

/// frpc's common TOML: frps on 127.0.0.1:`server_port` with `token`, debug logs, and the admin
/// API on 127.0.0.1:`admin_port` with basic auth `user`:`password`.
pub fn admin_common_toml(
    server_port: u16,
    token: &str,
    admin_port: u16,
    user: &str,
    password: &str,
) -> String {
    format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {server_port}
auth.token = "{token}"
log.level = "debug"
webServer.addr = "127.0.0.1"
webServer.port = {admin_port}
webServer.user = "{user}"
webServer.password = "{password}"
"#
    )
}

/// A TOML `[[proxies]]` entry of type tcp from 127.0.0.1:`local_port` to `remote_port`.
pub fn tcp_proxy_toml(name: &str, local_port: u16, remote_port: u16) -> String {
    format!(
        "\n[[proxies]]\nname = \"{name}\"\ntype = \"tcp\"\nlocalIP = \"127.0.0.1\"\nlocalPort = {local_port}\nremotePort = {remote_port}\n"
    )
}

/// Polls `/api/status` until `pred` holds (or panics after 15 s with the last status).
pub async fn wait_status(api: &AdminClient, what: &str, pred: impl Fn(&StatusResp) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = api.status().await;
        if let Ok(s) = &s
            && pred(s)
        {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: not reached within 15s; last /api/status: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A service that greets every connection with `banner` and closes.
pub async fn banner_server(banner: &'static [u8]) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(banner).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// Reads what `port` sends until EOF, retrying until it is `want` (the tunnel may still be
/// starting or switching over).
pub async fn read_eventually(port: u16, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
            let mut got = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got)).await;
            if matches!(r, Ok(Ok(_))) && got == want {
                return;
            }
            last = Some(got);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "port {port} never answered {:?}; last: {:?}",
        String::from_utf8_lossy(want),
        last.map(|g| String::from_utf8_lossy(&g).into_owned())
    );
}
