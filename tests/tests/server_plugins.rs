//! Server plugins (`[[httpPlugins]]`): frps asks an HTTP(S) service on Login, NewProxy,
//! CloseProxy, Ping, NewWorkConn and NewUserConn. A plugin server started by each test records
//! every request and answers as the test scripts it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use e2e::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const TOKEN: &str = "plugin-token";
const WAIT: Duration = Duration::from_secs(10);

/// One request as the plugin server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: String,
    reqid: String,
    content_type: String,
    body: Value,
}

impl Seen {
    fn op(&self) -> &str {
        self.body["op"].as_str().unwrap_or("")
    }
    fn content(&self) -> &Value {
        &self.body["content"]
    }
}

/// How the plugin server answers one request.
enum Answer {
    Json(Value),
    /// Status and raw body.
    Raw(u16, &'static str),
    /// Sleeps, then answers `unchange`.
    Sleep(Duration),
}

type Script = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// A plugin HTTP server on 127.0.0.1 (TLS with `tls`).
struct PluginServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted (keep-alive: fewer than requests).
    conns: Arc<AtomicUsize>,
}

impl PluginServer {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>, script: Script) -> PluginServer {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (seen2, conns2) = (seen.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let (seen, script, tls) = (seen2.clone(), script.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, script) = (seen.clone(), script.clone());
                        async move { Ok::<_, Infallible>(handle(req, &seen, &script).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(cfg) => {
                            let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await
                            else {
                                return;
                            };
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        PluginServer { port, seen, conns }
    }

    /// `host:port` of the plugin, as frps' `addr` takes it.
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn of_op(&self, op: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.op() == op).collect()
    }

    /// Waits until a request for `op` has arrived; returns the first.
    async fn wait_op(&self, op: &str) -> Seen {
        let end = std::time::Instant::now() + WAIT;
        loop {
            if let Some(s) = self.of_op(op).into_iter().next() {
                return s;
            }
            assert!(
                std::time::Instant::now() < end,
                "no {op} request; seen: {:?}",
                self.seen()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    script: &Script,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (reqid, content_type) = (header("x-frp-reqid"), header("content-type"));
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let s = Seen {
        path,
        query,
        reqid,
        content_type,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    seen.lock().unwrap().push(s.clone());
    let (status, body) = match script(&s) {
        Answer::Json(v) => (200, v.to_string()),
        Answer::Raw(status, body) => (status, body.to_string()),
        Answer::Sleep(d) => {
            tokio::time::sleep(d).await;
            (200, json!({"unchange": true}).to_string())
        }
    };
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn unchange() -> Answer {
    Answer::Json(json!({"reject": false, "unchange": true}))
}

fn reject(reason: &str) -> Answer {
    Answer::Json(json!({"reject": true, "reject_reason": reason}))
}

/// `content` with `edit` applied, as a changed answer.
fn change(s: &Seen, edit: impl FnOnce(&mut Value)) -> Answer {
    let mut c = s.content().clone();
    edit(&mut c);
    Answer::Json(json!({"unchange": false, "content": c}))
}

fn plugin_toml(name: &str, addr: &str, path: &str, ops: &[&str], tls_verify: bool) -> String {
    let ops = ops
        .iter()
        .map(|o| format!("\"{o}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[httpPlugins]]\nname = \"{name}\"\naddr = \"{addr}\"\npath = \"{path}\"\nops = [{ops}]\ntlsVerify = {tls_verify}\n"
    )
}

/// A frpc config with one tcp proxy `name` to `echo` on `remote`, plus `extra` top-level keys.
fn client(frps: u16, extra: &str, name: &str, echo: u16, remote: u16) -> String {
    format!(
        "{}remotePort = {remote}\n",
        frpc_proxy_config(
            frps,
            TOKEN,
            &format!("log.level = \"debug\"\n{extra}"),
            name,
            "tcp",
            echo
        )
    )
}

fn frps_toml(plugins: &str) -> String {
    format!("auth.token = \"{TOKEN}\"\nlog.level = \"debug\"\n{plugins}")
}

async fn echoes(port: u16) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), roundtrip(port, b"hello plugin")).await,
        Ok(Ok(v)) if v == b"hello plugin"
    )
}

/// Every op's request, field by field; keep-alive reuse of the plugin connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_op_sends_frps_request_shape() {
    let plugin = PluginServer::start(None, Arc::new(|_: &Seen| unchange())).await;
    let echo = echo_server().await;
    let env = Env::new();
    let (port, remote) = (free_port(), free_port());
    let addr = plugin.addr();
    let ops = [
        "Login",
        "NewProxy",
        "CloseProxy",
        "Ping",
        "NewWorkConn",
        "NewUserConn",
    ];
    let _frps = env.frps(
        "frps",
        port,
        &frps_toml(&plugin_toml("recorder", &addr, "/handler", &ops, false)),
    );
    let extra = "user = \"alice\"\nmetadatas.token = \"123\"\ntransport.heartbeatInterval = 1\n\
                 auth.additionalScopes = [\"HeartBeats\", \"NewWorkConns\"]\ntransport.poolCount = 1\n";
    let mut frpc = env.frpc("frpc", &client(port, extra, "echo", echo, remote));
    frpc.wait_log("start proxy success", WAIT);
    assert!(roundtrip_eventually(remote, b"x", WAIT).await == b"x");
    let ping = plugin.wait_op("Ping").await;
    frpc.kill();
    let close = plugin.wait_op("CloseProxy").await;

    let login = plugin.wait_op("Login").await;
    assert_eq!(login.path, "/handler");
    assert_eq!(login.query, "op=Login&version=0.1.0");
    assert_eq!(login.content_type, "application/json");
    assert!(!login.reqid.is_empty());
    assert_eq!(login.body["version"], "0.1.0");
    let c = login.content();
    assert_eq!(c["user"], "alice");
    assert_eq!(c["metas"], json!({"token": "123"}));
    assert_eq!(c["pool_count"], 1);
    assert_eq!(c["os"], "linux");
    assert!(c["privilege_key"].as_str().unwrap().len() == 32, "{c}");
    assert!(c["timestamp"].as_i64().unwrap() > 0);
    assert!(c["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(
        c["client_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let np = plugin.wait_op("NewProxy").await;
    let c = np.content();
    let run_id = c["user"]["run_id"].as_str().unwrap().to_string();
    assert!(!run_id.is_empty());
    assert_eq!(c["user"]["user"], "alice");
    assert_eq!(c["user"]["metas"], json!({"token": "123"}));
    assert_eq!(c["proxy_name"], "alice.echo");
    assert_eq!(c["proxy_type"], "tcp");
    assert_eq!(c["remote_port"], remote);

    let c = ping.content();
    assert_eq!(c["user"]["run_id"], run_id.as_str());
    assert_eq!(c["privilege_key"].as_str().unwrap().len(), 32);
    assert!(c["timestamp"].as_i64().unwrap() > 0);

    let c = plugin.wait_op("NewWorkConn").await.content().clone();
    assert_eq!(c["run_id"], run_id.as_str());
    assert_eq!(c["user"]["run_id"], run_id.as_str());
    assert_eq!(c["privilege_key"].as_str().unwrap().len(), 32);

    let c = plugin.wait_op("NewUserConn").await.content().clone();
    assert_eq!(c["user"]["user"], "alice");
    assert_eq!(c["user"]["run_id"], run_id.as_str());
    assert_eq!(c["proxy_name"], "alice.echo");
    assert_eq!(c["proxy_type"], "tcp");
    assert!(c["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"));

    let c = close.content();
    assert_eq!(c["proxy_name"], "alice.echo");
    assert_eq!(c["user"]["run_id"], run_id.as_str());

    // One kept-alive connection carries the requests (frps asks one at a time here).
    let (requests, conns) = (plugin.seen().len(), plugin.conns.load(Ordering::SeqCst));
    assert!(requests >= 6, "{requests}");
    assert!(
        conns < requests,
        "{conns} connections for {requests} requests"
    );
}

/// Login: rejected with the plugin's reason; a changed Login is what frps verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_reject_unchange_and_change() {
    let plugin = PluginServer::start(
        None,
        Arc::new(|s: &Seen| match s.content()["metas"]["token"].as_str() {
            Some("123") => unchange(),
            // A changed Login with a wrong privilege key: frps' own check refuses it.
            Some("mangle") => change(s, |c| c["privilege_key"] = json!("0000")),
            _ => reject("invalid meta token"),
        }),
    )
    .await;
    let echo = echo_server().await;
    let env = Env::new();
    let port = free_port();
    let addr = plugin.addr();
    let _frps = env.frps(
        "frps",
        port,
        &frps_toml(&plugin_toml("user-manager", &addr, "/h", &["Login"], false)),
    );
    let (r1, r2, r3) = (free_port(), free_port(), free_port());
    let ok = env.frpc(
        "ok",
        &client(port, "metadatas.token = \"123\"", "a", echo, r1),
    );
    let bad = env.frpc("bad", &client(port, "", "b", echo, r2));
    let mangled = env.frpc(
        "mangled",
        &client(port, "metadatas.token = \"mangle\"", "c", echo, r3),
    );
    ok.wait_log("start proxy success", WAIT);
    assert!(echoes(r1).await);
    bad.wait_log("invalid meta token", WAIT);
    mangled.wait_log(
        "token in login doesn't match token from configuration",
        WAIT,
    );
    assert!(!echoes(r2).await && !echoes(r3).await);
}

/// NewProxy: two plugins in order — the first changes remote_port, the second sees the change
/// and rejects one proxy by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_proxy_change_then_reject_in_order() {
    let moved_to = free_port();
    let plugin = PluginServer::start(
        None,
        Arc::new(move |s: &Seen| {
            let name = s.content()["proxy_name"].as_str().unwrap_or("");
            match (s.path.as_str(), name) {
                ("/first", "moved") => change(s, |c| c["remote_port"] = json!(moved_to)),
                ("/second", "refused") => reject("proxy name not allowed"),
                _ => unchange(),
            }
        }),
    )
    .await;
    let echo = echo_server().await;
    let env = Env::new();
    let port = free_port();
    let addr = plugin.addr();
    let plugins = plugin_toml("first", &addr, "/first", &["NewProxy"], false)
        + &plugin_toml("second", &addr, "/second", &["NewProxy"], false);
    let _frps = env.frps("frps", port, &frps_toml(&plugins));
    let asked = free_port();
    let moved = env.frpc("moved", &client(port, "", "moved", echo, asked));
    moved.wait_log("start proxy success", WAIT);
    assert!(echoes(moved_to).await);
    assert!(!is_listening(asked));
    let refused = env.frpc("refused", &client(port, "", "refused", echo, free_port()));
    refused.wait_log("proxy name not allowed", WAIT);
    // The second plugin saw the first one's change.
    let second: Vec<_> = plugin
        .of_op("NewProxy")
        .into_iter()
        .filter(|s| s.path == "/second" && s.content()["proxy_name"] == "moved")
        .collect();
    assert_eq!(second[0].content()["remote_port"], moved_to);
}

/// Ping, NewWorkConn and NewUserConn refused by a plugin; Ping and NewWorkConn changed so that
/// frps' own token check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_work_conn_and_user_conn_refusals() {
    let plugin = PluginServer::start(
        None,
        Arc::new(|s: &Seen| {
            let user = s.content()["user"]["user"]
                .as_str()
                .unwrap_or("")
                .to_string();
            match (s.op(), user.as_str()) {
                ("Ping", "ping-reject") => reject("ping refused by plugin"),
                ("Ping", "ping-change") => change(s, |c| c["privilege_key"] = json!("0000")),
                ("NewWorkConn", "work-reject") => reject("work refused by plugin"),
                ("NewWorkConn", "work-change") => change(s, |c| c["privilege_key"] = json!("0000")),
                ("NewUserConn", "user-reject") => reject("user refused by plugin"),
                _ => unchange(),
            }
        }),
    )
    .await;
    let echo = echo_server().await;
    let env = Env::new();
    let port = free_port();
    let addr = plugin.addr();
    let frps = env.frps(
        "frps",
        port,
        &frps_toml(&format!(
            "auth.additionalScopes = [\"HeartBeats\", \"NewWorkConns\"]\n{}",
            plugin_toml(
                "gate",
                &addr,
                "/",
                &["Ping", "NewWorkConn", "NewUserConn"],
                false
            )
        )),
    );
    let scopes = "transport.heartbeatInterval = 1\nauth.additionalScopes = [\"HeartBeats\", \"NewWorkConns\"]\ntransport.poolCount = 0\n";
    let mut remotes = Vec::new();
    let mut clients = Vec::new();
    for user in [
        "ping-reject",
        "ping-change",
        "work-reject",
        "work-change",
        "user-reject",
        "fine",
    ] {
        let r = free_port();
        let c = env.frpc(
            user,
            &client(port, &format!("user = \"{user}\"\n{scopes}"), "p", echo, r),
        );
        c.wait_log("start proxy success", WAIT);
        remotes.push(r);
        clients.push(c);
    }
    // Pong errors: frpc hears the reason.
    clients[0].wait_log("ping refused by plugin", WAIT);
    clients[1].wait_log(
        "token in heartbeat doesn't match token from configuration",
        WAIT,
    );
    frps.wait_log("received invalid ping: ping refused by plugin", WAIT);
    // No work connection is accepted, so users get nothing back.
    assert!(!echoes(remotes[2]).await);
    frps.wait_log("invalid NewWorkConn with run id", WAIT);
    assert!(!echoes(remotes[3]).await);
    assert!(!echoes(remotes[4]).await);
    frps.wait_log("was rejected, err:user refused by plugin", WAIT);
    assert!(echoes(remotes[5]).await);
}

/// https plugin addresses: no verification without tlsVerify; with it, a certificate the
/// system does not trust is refused, and one it trusts (SSL_CERT_FILE) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_plugin_with_and_without_tls_verify() {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let plugin = PluginServer::start(Some(Arc::new(tls)), Arc::new(|_: &Seen| unchange())).await;
    let echo = echo_server().await;
    let env = Env::new();
    let ca = env.write("plugin-ca.pem", &ck.cert.pem());
    let addr = format!("https://{}", plugin.addr());
    for (name, verify, envs) in [
        ("noverify", false, vec![]),
        (
            "untrusted",
            true,
            vec![("SSL_CERT_FILE", "/nonexistent.pem")],
        ),
        (
            "trusted",
            true,
            vec![("SSL_CERT_FILE", ca.to_str().unwrap())],
        ),
    ] {
        let port = free_port();
        let frps = env.frps_with_env(
            &format!("frps-{name}"),
            port,
            &frps_toml(&plugin_toml(name, &addr, "/h", &["NewUserConn"], verify)),
            &envs,
        );
        let remote = free_port();
        let frpc = env.frpc(
            &format!("frpc-{name}"),
            &client(port, "", "p", echo, remote),
        );
        frpc.wait_log("start proxy success", WAIT);
        let before = plugin.of_op("NewUserConn").len();
        let ok = echoes(remote).await;
        if name == "untrusted" {
            assert!(!ok, "{name}");
            frps.wait_log("send NewUserConn request to plugin [untrusted] error", WAIT);
            assert_eq!(plugin.of_op("NewUserConn").len(), before);
        } else {
            assert!(ok, "{name}");
            assert!(plugin.of_op("NewUserConn").len() > before);
        }
    }
}

/// A plugin that is down, one that sleeps past the timeout and one that answers garbage or an
/// error status: the client is told frp's error, frps logs the plugin's name, and other
/// clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_down_slow_or_garbage() {
    let plugin = PluginServer::start(
        None,
        Arc::new(
            |s: &Seen| match s.content()["proxy_name"].as_str().unwrap_or("") {
                "slow" => Answer::Sleep(Duration::from_secs(6)),
                "garbage" => Answer::Raw(200, "this is not json"),
                "status" => Answer::Raw(500, "{}"),
                _ => unchange(),
            },
        ),
    )
    .await;
    let echo = echo_server().await;
    let env = Env::new();
    let port = free_port();
    let addr = plugin.addr();
    let frps = env.frps_with_env(
        "frps",
        port,
        &frps_toml(&plugin_toml("flaky", &addr, "/", &["NewProxy"], false)),
        &[("FRP_URING_TEST_ONLY_PLUGIN_TIMEOUT_MS", "2000")],
    );
    let slow = env.frpc("slow", &client(port, "", "slow", echo, free_port()));
    plugin.wait_op("NewProxy").await;
    // While the slow plugin call is pending, another client is served.
    let fine_port = free_port();
    let fine = env.frpc("fine", &client(port, "", "fine", echo, fine_port));
    fine.wait_log("start proxy success", WAIT);
    assert!(echoes(fine_port).await);
    slow.wait_log("send NewProxy request to plugin error", WAIT);
    frps.wait_log("send NewProxy request to plugin [flaky] error", WAIT);
    for name in ["garbage", "status"] {
        let c = env.frpc(name, &client(port, "", name, echo, free_port()));
        c.wait_log("send NewProxy request to plugin error", WAIT);
    }
    frps.wait_log("do http request error code: 500", WAIT);
    frps.wait_log("invalid answer", WAIT);
    assert!(echoes(fine_port).await);

    // A plugin nobody listens for, on Login.
    let down = free_port();
    let port2 = free_port();
    let frps2 = env.frps(
        "frps-down",
        port2,
        &frps_toml(&plugin_toml(
            "down",
            &format!("127.0.0.1:{down}"),
            "/",
            &["Login"],
            false,
        )),
    );
    let c = env.frpc("down-client", &client(port2, "", "p", echo, free_port()));
    c.wait_log("send Login request to plugin error", WAIT);
    frps2.wait_log("send Login request to plugin [down] error", WAIT);
}
