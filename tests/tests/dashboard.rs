//! frps' dashboard end to end: the JSON API and `/metrics` against the bytes a test sends
//! through a real frps/frpc pair, and the web page in headless Chromium.

use std::time::{Duration, Instant};

use control::admin::api_client::AdminClient;
use control::config::WebServerConfig;
use e2e::*;
use http::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "dash-e2e";
const USER: &str = "admin";
const PASSWORD: &str = "dash-pw";

struct Setup {
    env: Env,
    frps: Proc,
    frpc: Proc,
    bind: u16,
    dash: u16,
    remote: u16,
}

/// frps with the dashboard (and Prometheus when `prometheus`), frpc with one tcp proxy
/// "echo" in front of an echo server.
async fn setup(prometheus: bool) -> Setup {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let dash = free_port();
    let remote = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!(
            "auth.token = \"{TOKEN}\"\nwebServer.addr = \"127.0.0.1\"\nwebServer.port = {dash}\n\
             webServer.user = \"{USER}\"\nwebServer.password = \"{PASSWORD}\"\n\
             enablePrometheus = {prometheus}\n"
        ),
    );
    let mut cfg = frpc_tcp_config(bind, TOKEN, true, true, false, echo, remote);
    cfg = cfg.replace(
        "log.level = \"debug\"",
        "log.level = \"debug\"\nclientID = \"laptop\"",
    );
    let frpc = env.frpc("frpc", &cfg);
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
    Setup {
        env,
        frps,
        frpc,
        bind,
        dash,
        remote,
    }
}

fn client(port: u16, user: &str, password: &str) -> AdminClient {
    AdminClient::new(
        &WebServerConfig {
            addr: "127.0.0.1".into(),
            port,
            user: user.into(),
            password: password.into(),
            ..Default::default()
        },
        Duration::from_secs(10),
    )
}

async fn get_json(api: &AdminClient, path: &str) -> (StatusCode, Value) {
    let (status, body) = api.raw(Method::GET, path, None).await.unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

/// Polls `path` until `pred` holds on its JSON; returns that JSON.
async fn json_eventually(api: &AdminClient, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = get_json(api, path).await;
        if status == StatusCode::OK && pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: last answer {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SENT: usize = 300_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_api_reports_the_traffic_sent() {
    let s = setup(false).await;
    let api = client(s.dash, USER, PASSWORD);
    let data = pattern(SENT, 11);
    assert_eq!(
        roundtrip_eventually(s.remote, &data, Duration::from_secs(10)).await,
        data
    );
    let n = SENT as u64;

    // frp counts in = user → frpc, out = frpc → user; the echo makes both N.
    let v = json_eventually(&api, "/api/proxy/tcp", |v| {
        v["proxies"][0]["todayTrafficIn"] == n && v["proxies"][0]["todayTrafficOut"] == n
    })
    .await;
    let p = &v["proxies"][0];
    assert_eq!(v["proxies"].as_array().unwrap().len(), 1);
    assert_eq!(p["name"], "echo");
    assert_eq!(p["status"], "online");
    assert_eq!(p["clientID"], "laptop");
    assert_eq!(p["conf"]["remotePort"], s.remote);
    assert_eq!(p["conf"]["type"], "tcp");
    assert_ne!(p["lastStartTime"], "");
    assert_eq!(p["lastCloseTime"], "");

    let (status, t) = get_json(&api, "/api/traffic/echo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t["name"], "echo");
    let ins = t["trafficIn"].as_array().unwrap();
    let outs = t["trafficOut"].as_array().unwrap();
    assert_eq!((ins.len(), outs.len()), (7, 7));
    // Today first, as frp lists them.
    assert_eq!((ins[0].as_u64(), outs[0].as_u64()), (Some(n), Some(n)));
    assert!(ins[1..].iter().all(|x| x == 0));

    for path in ["/api/proxy/tcp/echo", "/api/proxies/echo"] {
        let (status, p) = get_json(&api, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(
            (p["name"].as_str(), p["todayTrafficIn"].as_u64()),
            (Some("echo"), Some(n))
        );
    }
    for path in [
        "/api/proxy/http/echo",
        "/api/proxies/nope",
        "/api/traffic/nope",
    ] {
        let (status, v) = get_json(&api, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            v,
            serde_json::json!({"Code": 404, "Msg": "no proxy info found"})
        );
    }
    let (_, empty) = get_json(&api, "/api/proxy/udp").await;
    assert_eq!(empty, serde_json::json!({"proxies": []}));

    let (status, info) = get_json(&api, "/api/serverinfo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["bindPort"], s.bind);
    assert_eq!(info["version"], control::FRP_VERSION);
    assert_eq!(info["clientCounts"], 1);
    assert_eq!(info["proxyTypeCount"]["tcp"], 1);
    assert_eq!(info["maxPoolCount"], 5);
    assert!(info["totalTrafficIn"].as_u64().unwrap() >= n);
    assert!(info["totalTrafficOut"].as_u64().unwrap() >= n);

    let (_, clients) = get_json(&api, "/api/clients").await;
    let list = clients.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let c = &list[0];
    assert_eq!(
        (c["key"].as_str(), c["clientID"].as_str()),
        (Some("laptop"), Some("laptop"))
    );
    assert_eq!(c["online"], true);
    assert_eq!(c["clientIP"], "127.0.0.1");
    assert_eq!(c["version"], control::FRP_VERSION);
    assert!(c["runID"].as_str().is_some_and(|r| !r.is_empty()));
    let (status, one) = get_json(&api, "/api/clients/laptop").await;
    assert_eq!((status, &one), (StatusCode::OK, c));
    let (status, _) = get_json(&api, "/api/clients/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A connection held open shows in curConns.
    let mut held = TcpStream::connect(("127.0.0.1", s.remote)).await.unwrap();
    held.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).await.unwrap();
    json_eventually(&api, "/api/serverinfo", |v| v["curConns"] == 1).await;
    json_eventually(&api, "/api/proxies/echo", |v| v["curConns"] == 1).await;
    drop(held);
    json_eventually(&api, "/api/proxies/echo", |v| v["curConns"] == 0).await;

    // Auth: /healthz open, the API closed without credentials.
    let anon = client(s.dash, "", "");
    assert_eq!(
        anon.raw(Method::GET, "/healthz", None).await.unwrap().0,
        StatusCode::OK
    );
    assert_eq!(
        anon.raw(Method::GET, "/api/serverinfo", None)
            .await
            .unwrap()
            .0,
        StatusCode::UNAUTHORIZED
    );
    // No Prometheus unless enabled.
    assert_eq!(
        api.raw(Method::GET, "/metrics", None).await.unwrap().0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_proxies_are_remembered_until_deleted() {
    let mut s = setup(false).await;
    let api = client(s.dash, USER, PASSWORD);
    s.frpc.kill();
    s.frps
        .wait_log("client exit success", Duration::from_secs(10));
    let v = json_eventually(&api, "/api/proxy/tcp", |v| {
        v["proxies"][0]["status"] == "offline"
    })
    .await;
    let p = &v["proxies"][0];
    assert_eq!(p["name"], "echo");
    assert!(p["conf"].is_null());
    assert_ne!(p["lastCloseTime"], "");
    let (_, clients) = get_json(&api, "/api/clients").await;
    assert_eq!(
        clients[0]["online"], false,
        "a client with a clientID stays, offline"
    );
    assert!(clients[0]["disconnectedAt"].as_i64().unwrap() > 0);

    let (status, body) = api
        .raw(Method::DELETE, "/api/proxies?status=online", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
    let (status, body) = api
        .raw(Method::DELETE, "/api/proxies?status=offline", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, serde_json::json!({"Code": 200, "Msg": "success"}));
    let (_, v) = get_json(&api, "/api/proxy/tcp").await;
    assert_eq!(v, serde_json::json!({"proxies": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_parse_and_match_the_traffic_sent() {
    let s = setup(true).await;
    let api = client(s.dash, USER, PASSWORD);
    let data = pattern(SENT, 12);
    roundtrip_eventually(s.remote, &data, Duration::from_secs(10)).await;
    let mut held = TcpStream::connect(("127.0.0.1", s.remote)).await.unwrap();
    held.write_all(b"y").await.unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let want_bytes = (SENT + 1) as f64;
    loop {
        let (status, body) = api.raw(Method::GET, "/metrics", None).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("exposition format parses");
        let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
        };
        let echo = [("name", "echo"), ("type", "tcp")];
        let got = (
            value("frp_server_traffic_in", &echo),
            value("frp_server_traffic_out", &echo),
            value("frp_server_connection_counts", &echo),
            value("frp_server_client_counts", &[]),
            value("frp_server_proxy_counts", &[("type", "tcp")]),
            value("frp_server_proxy_counts_detailed", &echo),
        );
        let want = (
            Some(want_bytes),
            Some(want_bytes),
            Some(1.0),
            Some(1.0),
            Some(1.0),
            Some(1.0),
        );
        if got == want {
            assert!(matches!(
                scrape
                    .samples
                    .iter()
                    .find(|s| s.metric == "frp_server_traffic_in")
                    .unwrap()
                    .value,
                prometheus_parse::Value::Counter(_)
            ));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics {got:?} != {want:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
}

/// The dashboard page in headless Chromium shows the running proxy once its JS has run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_page_renders_proxies_in_headless_chromium() {
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        println!(
            "SKIPPED dashboard_page_renders_proxies_in_headless_chromium: no chromium on PATH \
             (apt-get install -y chromium)"
        );
        return;
    };
    let s = setup(false).await;
    let api = client(s.dash, USER, PASSWORD);
    roundtrip_eventually(s.remote, b"some traffic", Duration::from_secs(10)).await;
    // The page itself comes from frps, behind the same auth.
    let (status, page) = api.raw(Method::GET, "/", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page).contains("frps dashboard"));

    let url = format!("http://{USER}:{PASSWORD}@127.0.0.1:{}/", s.dash);
    let profile = s.env.path().join("chromium-profile");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                &format!("--user-data-dir={}", profile.display()),
                "--virtual-time-budget=5000",
                "--dump-dom",
                &url,
            ])
            .output()
    })
    .await
    .unwrap()
    .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-name=\"echo\""),
        "the proxy table has no row for echo; chromium stderr:\n{}\nDOM:\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("laptop"), "the clients table lacks the client");
    assert!(dom.contains("<svg"), "no traffic chart drawn");
    assert!(
        !dom.contains("id=\"error\" style=\"display: block;\""),
        "the page shows an API error:\n{dom}"
    );
}

/// An http proxy's traffic counts too (frps' HTTP vhost talks to frpc itself; the data plane
/// never sees those connections): a 200 kB POST in, its echo out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_traffic_is_counted() {
    let env = Env::new();
    // A local HTTP service that echoes the request body.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(body)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let (bind, vport, dash) = (free_port(), free_port(), free_port());
    let _frps = env.frps(
        "frps",
        bind,
        &format!(
            "auth.token = \"{TOKEN}\"\nvhostHTTPPort = {vport}\nwebServer.addr = \"127.0.0.1\"\n\
             webServer.port = {dash}\nwebServer.user = \"{USER}\"\nwebServer.password = \"{PASSWORD}\"\n"
        ),
    );
    let frpc = env.frpc(
        "frpc",
        &format!(
            "serverAddr = \"127.0.0.1\"\nserverPort = {bind}\nauth.token = \"{TOKEN}\"\n\n\
             [[proxies]]\nname = \"web\"\ntype = \"http\"\nlocalPort = {local}\n\
             customDomains = [\"web.test\"]\n"
        ),
    );
    frpc.wait_log("[web] start proxy success", Duration::from_secs(10));
    let body = pattern(200_000, 5);
    let path = env.write("body.bin", "");
    std::fs::write(&path, &body).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            "-H",
            "Host: web.test",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", path.display()))
        .arg(format!("http://127.0.0.1:{vport}/echo"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 200000");
    let api = client(dash, USER, PASSWORD);
    let v = json_eventually(&api, "/api/proxy/http", |v| {
        v["proxies"][0]["todayTrafficIn"].as_u64() > Some(200_000)
            && v["proxies"][0]["todayTrafficOut"].as_u64() > Some(200_000)
    })
    .await;
    // Headers on top of the bodies, but not much more.
    let t_in = v["proxies"][0]["todayTrafficIn"].as_u64().unwrap();
    assert!(t_in < 201_000, "{v}");
}

/// `/api/clients` reports each client's wire protocol, as frps v0.70 does (frp's e2e
/// `[Feature: WireProtocol] reports client wire protocol`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_report_their_wire_protocol() {
    let env = Env::new();
    let echo = echo_server().await;
    let (bind, dash) = (free_port(), free_port());
    let _frps = env.frps(
        "frps",
        bind,
        &format!(
            "auth.token = \"{TOKEN}\"\nwebServer.addr = \"127.0.0.1\"\nwebServer.port = {dash}\n\
             webServer.user = \"{USER}\"\nwebServer.password = \"{PASSWORD}\"\n"
        ),
    );
    let mut clients = Vec::new();
    for wire in ["v1", "v2"] {
        let cfg = frpc_proxy_config(
            bind,
            TOKEN,
            &format!("clientID = \"wire-{wire}\"\ntransport.wireProtocol = \"{wire}\""),
            &format!("p-{wire}"),
            "tcp",
            echo,
        );
        let frpc = env.frpc(
            &format!("frpc-{wire}"),
            &format!("{cfg}remotePort = {}\n", free_port()),
        );
        frpc.wait_log(
            &format!("[p-{wire}] start proxy success"),
            Duration::from_secs(10),
        );
        clients.push(frpc);
    }
    let api = client(dash, USER, PASSWORD);
    let v = json_eventually(&api, "/api/clients", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    for c in v.as_array().unwrap() {
        let id = c["clientID"].as_str().unwrap();
        assert_eq!(c["wireProtocol"].as_str(), id.strip_prefix("wire-"), "{c}");
    }
}
