//! http, https and tcpmux (vhost) proxies end to end: real frps and frpc processes, curl as the
//! user, small hyper / tokio-rustls / tungstenite backends on 127.0.0.1.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

const TOKEN: &str = "vhost-token";
const WAIT: Duration = Duration::from_secs(15);

// --- backends -----------------------------------------------------------------------------------

/// The body of a backend's answer: who answered, the how-many-th request on its connection,
/// the request line and every request header (lowercase names).
fn describe(name: &str, nth: usize, req: &Request<Incoming>) -> String {
    let mut s = format!(
        "backend={name}\nconn-request={nth}\nmethod={}\npath={}\n",
        req.method(),
        req.uri()
    );
    for (k, v) in req.headers() {
        s.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
    }
    s
}

/// Answers one request: a WebSocket upgrade becomes an echo server, anything else gets
/// [`describe`] as text with `x-backend: name`.
fn answer(name: &'static str, nth: usize, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let is_ws = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_ws {
        let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let up = on_upgrade.await.expect("backend upgrade");
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(up),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() || m.is_binary() {
                    let reply = match m {
                        Message::Text(t) => Message::text(format!("{name} echo: {t}")),
                        other => other,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                } else if m.is_close() {
                    break;
                }
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", derive_accept_key(&key))
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let body = describe(name, nth, &req);
    Response::builder()
        .header("x-backend", name)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Serves HTTP/1.1 (keep-alive, upgrades) on one accepted stream.
async fn serve_http<S>(name: &'static str, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let count = Arc::new(AtomicUsize::new(0));
    let svc = hyper::service::service_fn(move |req| {
        let nth = count.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, Infallible>(answer(name, nth, req)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

/// A plain HTTP backend; returns its port.
async fn http_backend(name: &'static str) -> u16 {
    tcp_service(move |s| serve_http(name, s)).await
}

/// An HTTPS backend with its own self-signed certificate for `host`; returns its port and the
/// certificate (PEM).
async fn https_backend(name: &'static str, host: &str) -> (u16, String) {
    let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let pem = ck.cert.pem();
    let port = tcp_service(move |s| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(tls) = acceptor.accept(s).await {
                serve_http(name, tls).await;
            }
        }
    })
    .await;
    (port, pem)
}

// --- helpers --------------------------------------------------------------------------------------

struct Curl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs curl with a 10 s limit.
async fn curl(args: &[&str]) -> Curl {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("run curl");
    Curl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `curl -i` against the vhost with a Host header; returns (status, the whole response).
async fn get(port: u16, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let host_h = format!("Host: {host}");
    let mut args = vec!["-i", "-H", host_h.as_str()];
    args.extend_from_slice(extra);
    args.push(&url);
    let r = curl(&args).await;
    assert_eq!(r.code, Some(0), "curl {args:?} failed: {}", r.stderr);
    let status = r
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, r.stdout)
}

/// Retries until `host` answers with something other than 404 (routes appear asynchronously).
async fn wait_route(port: u16, host: &str, path: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, text) = get(port, host, path, &[]).await;
        if status != 404 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host}{path} still 404 after {WAIT:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn frpc_head(server_port: u16) -> String {
    format!(
        "serverAddr = \"127.0.0.1\"\nserverPort = {server_port}\nauth.token = \"{TOKEN}\"\nlog.level = \"debug\"\n"
    )
}

/// frps with `TOKEN`, an HTTP vhost port and the `extra` lines, both ports free; returns
/// (frps, its bind port, the vhost port).
fn frps_with_vhost(env: &Env, extra: &str) -> (Proc, u16, u16) {
    let bind = free_port();
    let vport = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\nvhostHTTPPort = {vport}\n{extra}"),
    );
    (frps, bind, vport)
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

// --- http -----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routing_rewrite_auth_websocket_and_keepalive() {
    let env = Env::new();
    let page = env.write("404.html", "<h1>custom not found page</h1>\n");
    let (_frps, bind, vport) = frps_with_vhost(
        &env,
        &format!(
            "subDomainHost = \"example.test\"\ncustom404Page = \"{}\"\nlog.level = \"debug\"",
            page.display()
        ),
    );
    let a = http_backend("A").await;
    let b = http_backend("B").await;
    let c = http_backend("C").await;
    let d = http_backend("D").await;
    let e = http_backend("E").await;
    let f = http_backend("F").await;
    let g = http_backend("G").await;
    let h = http_backend("H").await;
    let cfg = format!(
        r#"{head}
[[proxies]]
name = "a"
type = "http"
localPort = {a}
customDomains = ["a.example.com"]
hostHeaderRewrite = "rewritten.internal"
requestHeaders.set.x-from-where = "frp"
responseHeaders.set.x-resp = "yes"
transport.useEncryption = true
transport.useCompression = true

[[proxies]]
name = "b"
type = "http"
localPort = {b}
customDomains = ["b.example.com"]

[[proxies]]
name = "sub"
type = "http"
localPort = {c}
subdomain = "sub"

[[proxies]]
name = "wild"
type = "http"
localPort = {d}
customDomains = ["*.wild.com"]

[[proxies]]
name = "loc-api"
type = "http"
localPort = {e}
customDomains = ["loc.example.com"]
locations = ["/api"]

[[proxies]]
name = "loc-root"
type = "http"
localPort = {f}
customDomains = ["loc.example.com"]
locations = ["/"]

[[proxies]]
name = "loc-v2"
type = "http"
localPort = {g}
customDomains = ["loc.example.com"]
locations = ["/api/v2"]

[[proxies]]
name = "auth"
type = "http"
localPort = {h}
customDomains = ["auth.example.com"]
httpUser = "u"
httpPassword = "p"
"#,
        head = frpc_head(bind)
    );
    let frpc = env.frpc("frpc", &cfg);
    for name in [
        "a", "b", "sub", "wild", "loc-api", "loc-root", "loc-v2", "auth",
    ] {
        frpc.wait_log(&format!("[{name}] start proxy success"), WAIT);
    }
    wait_route(vport, "a.example.com", "/").await;

    // Two domains, two backends; rewriting and headers on the encrypted+compressed proxy.
    let (st, text) = get(
        vport,
        "a.example.com",
        "/x?y=1",
        &["-H", "X-Forwarded-For: 1.2.3.4"],
    )
    .await;
    assert_eq!(st, 200, "{text}");
    let t = lower(&text);
    assert!(t.contains("backend=a\n"), "{text}");
    assert!(t.contains("path=/x?y=1\n"), "{text}");
    assert!(t.contains("\nhost: rewritten.internal\n"), "{text}");
    assert!(t.contains("\nx-from-where: frp\n"), "{text}");
    assert!(
        t.contains("\nx-forwarded-for: 1.2.3.4, 127.0.0.1\n"),
        "{text}"
    );
    assert!(t.contains("\nx-forwarded-host: a.example.com\n"), "{text}");
    assert!(t.contains("\nx-forwarded-proto: http\n"), "{text}");
    assert!(t.contains("\r\nx-resp: yes\r\n"), "response header: {text}");
    let (st, text) = get(vport, "B.Example.com.:8080", "/", &[]).await;
    assert_eq!(st, 200);
    let t = lower(&text);
    assert!(t.contains("backend=b\n"), "{text}");
    assert!(
        t.contains("\nhost: b.example.com.:8080\n"),
        "host kept: {text}"
    );
    assert!(t.contains("\nx-forwarded-for: 127.0.0.1\n"), "{text}");
    assert!(!t.contains("x-resp"), "{text}");

    // Subdomain and wildcards (with walk-up).
    for (host, want) in [
        ("sub.example.test", "backend=C"),
        ("x.wild.com", "backend=D"),
        ("y.z.wild.com", "backend=D"),
    ] {
        let (st, text) = get(vport, host, "/", &[]).await;
        assert_eq!(st, 200, "{host}: {text}");
        assert!(text.contains(want), "{host}: {text}");
    }

    // Locations: the longest matching prefix wins.
    for (path, want) in [
        ("/api/v2/users", "backend=G"),
        ("/api/v1", "backend=E"),
        ("/apix", "backend=E"),
        ("/index.html", "backend=F"),
    ] {
        let (st, text) = get(vport, "loc.example.com", path, &[]).await;
        assert_eq!(st, 200, "{path}: {text}");
        assert!(text.contains(want), "{path}: want {want}: {text}");
    }

    // Basic auth.
    let (st, text) = get(vport, "auth.example.com", "/", &[]).await;
    assert_eq!(st, 401, "{text}");
    assert!(
        lower(&text).contains("www-authenticate: basic realm=\"restricted\""),
        "{text}"
    );
    let (st, _) = get(vport, "auth.example.com", "/", &["-u", "u:wrong"]).await;
    assert_eq!(st, 401);
    let (st, text) = get(vport, "auth.example.com", "/", &["-u", "u:p"]).await;
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("backend=H"), "{text}");
    // Proxy-style request: 407 and Proxy-Authenticate.
    let proxy = format!("http://127.0.0.1:{vport}");
    let r = curl(&["-i", "-x", &proxy, "http://auth.example.com/"]).await;
    assert!(r.stdout.starts_with("HTTP/1.1 407"), "{}", r.stdout);
    assert!(
        lower(&r.stdout).contains("proxy-authenticate: basic realm=\"restricted\""),
        "{}",
        r.stdout
    );
    let r = curl(&["-i", "-x", &proxy, "-U", "u:p", "http://auth.example.com/"]).await;
    assert!(r.stdout.starts_with("HTTP/1.1 200"), "{}", r.stdout);
    assert!(r.stdout.contains("backend=H"), "{}", r.stdout);

    // Unknown host: 404 with the custom page.
    let (st, text) = get(vport, "nobody.example.org", "/", &[]).await;
    assert_eq!(st, 404);
    assert!(text.contains("<h1>custom not found page</h1>"), "{text}");

    // Keep-alive towards the client: two requests, one connection.
    let url = format!("http://127.0.0.1:{vport}/one");
    let url2 = format!("http://127.0.0.1:{vport}/two");
    let r = curl(&["-v", "-H", "Host: b.example.com", &url, &url2]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("Re-using existing connection"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("path=/one") && r.stdout.contains("path=/two"),
        "{}",
        r.stdout
    );
    // Keep-alive towards frpc: sequential requests end up on a reused upstream connection.
    // The upstream connection goes back to the pool from a task of its own: retry a while.
    let mut reused = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reused && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, text) = get(vport, "b.example.com", "/", &[]).await;
        if !text.contains("conn-request=1\n") {
            reused = true;
            break;
        }
    }
    assert!(reused, "no upstream connection was reused");

    // HTTP/2 with prior knowledge.
    let r = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: b.example.com",
        &format!("http://127.0.0.1:{vport}/h2"),
    ])
    .await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("backend=B"), "{}", r.stdout);

    // WebSocket through the vhost, on the plain and on the encrypted+compressed proxy.
    for (host, name) in [("b.example.com", "B"), ("a.example.com", "A")] {
        let tcp = TcpStream::connect(("127.0.0.1", vport)).await.unwrap();
        let url = format!("ws://{host}/ws");
        let (mut ws, resp) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .unwrap_or_else(|e| panic!("websocket handshake via {host}: {e}"));
        assert_eq!(resp.status(), 101);
        for i in 0..3 {
            ws.send(Message::text(format!("hello {i}"))).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("websocket echo timed out")
                .unwrap()
                .unwrap();
            assert_eq!(
                got.into_text().unwrap().as_str(),
                format!("{name} echo: hello {i}")
            );
        }
        let big = vec![7u8; 300_000];
        ws.send(Message::binary(big.clone())).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_data().as_ref(), &big[..]);
        ws.close(None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_group_of_two_clients_round_robin_and_failover() {
    let env = Env::new();
    let (_frps, bind, vport) = frps_with_vhost(&env, "log.level = \"debug\"");
    let group_cfg = |name: &str, port: u16, key: &str| {
        format!(
            r#"{head}
[[proxies]]
name = "{name}"
type = "http"
localPort = {port}
customDomains = ["g.example.com"]
loadBalancer.group = "web"
loadBalancer.groupKey = "{key}"
"#,
            head = frpc_head(bind)
        )
    };
    let one = http_backend("ONE").await;
    let two = http_backend("TWO").await;
    let mut c1 = env.frpc("frpc1", &group_cfg("g1", one, "secret"));
    c1.wait_log("[g1] start proxy success", WAIT);
    let c2 = env.frpc("frpc2", &group_cfg("g2", two, "secret"));
    c2.wait_log("[g2] start proxy success", WAIT);
    let bad = env.frpc("frpc3", &group_cfg("g3", two, "wrong"));
    bad.wait_log("[g3] start error: group auth failed", WAIT);

    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let (st, text) = get(vport, "g.example.com", "/", &[]).await;
        assert_eq!(st, 200, "{text}");
        seen.insert(if text.contains("backend=ONE") { 1 } else { 2 });
    }
    assert_eq!(seen.len(), 2, "both group members must get requests");

    c1.kill();
    // Once frps notices, every request goes to the remaining member.
    let deadline = Instant::now() + WAIT;
    let mut streak = 0;
    while streak < 6 {
        let (st, text) = get(vport, "g.example.com", "/", &[]).await;
        if st == 200 && text.contains("backend=TWO") {
            streak += 1;
        } else {
            streak = 0;
        }
        assert!(Instant::now() < deadline, "group did not fail over: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_registration_errors_match_frp() {
    let env = Env::new();
    let (_frps, bind, _vport) = frps_with_vhost(&env, "subDomainHost = \"example.test\"");
    let backend = http_backend("X").await;
    // The http-error-v1-nomux capture's case, a route conflict, a bad subdomain.
    let frpc = env.frpc(
        "frpc",
        &format!(
            r#"{head}
[[proxies]]
name = "web"
type = "http"
localPort = {backend}
customDomains = ["www.example.test"]
subdomain = "app"

[[proxies]]
name = "first"
type = "http"
localPort = {backend}
customDomains = ["dup.example.com"]

[[proxies]]
name = "badsub"
type = "http"
localPort = {backend}
subdomain = "a.b"
"#,
            head = frpc_head(bind)
        ),
    );
    frpc.wait_log(
        "[web] start error: custom domain [www.example.test] should not belong to subdomain host [example.test]",
        WAIT,
    );
    frpc.wait_log(
        "[badsub] start error: '.' and '*' are not supported in subdomain",
        WAIT,
    );
    frpc.wait_log("[first] start proxy success", WAIT);
    let dup = env.frpc(
        "frpc-dup",
        &format!(
            r#"{head}
[[proxies]]
name = "second"
type = "http"
localPort = {backend}
customDomains = ["DUP.example.com"]
"#,
            head = frpc_head(bind)
        ),
    );
    dup.wait_log("[second] start error: router config conflict", WAIT);

    // No vhostHTTPPort / vhostHTTPSPort / tcpmuxHTTPConnectPort on this frps.
    let bind2 = free_port();
    let _frps2 = env.frps("frps2", bind2, &format!("auth.token = \"{TOKEN}\""));
    let frpc2 = env.frpc(
        "frpc2",
        &format!(
            r#"{head}
[[proxies]]
name = "h"
type = "http"
localPort = {backend}
customDomains = ["a.example.com"]

[[proxies]]
name = "s"
type = "https"
localPort = {backend}
customDomains = ["a.example.com"]

[[proxies]]
name = "m"
type = "tcpmux"
multiplexer = "httpconnect"
localPort = {backend}
customDomains = ["a.example.com"]
"#,
            head = frpc_head(bind2)
        ),
    );
    frpc2.wait_log(
        "[h] start error: type [http] not supported when vhost http port is not set",
        WAIT,
    );
    frpc2.wait_log(
        "[s] start error: type [https] not supported when vhost https port is not set",
        WAIT,
    );
    frpc2.wait_log(
        "[m] start error: tcpmux with multiplexer httpconnect not supported because this feature is not enabled in server",
        WAIT,
    );
}

/// A backend that takes big request heads (up to 4 MiB, 5000 fields) and answers how many
/// header fields and header bytes it got; counts the requests it answered.
async fn big_head_backend(seen: Arc<AtomicUsize>) -> u16 {
    tcp_service(move |s| {
        let seen = seen.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                seen.fetch_add(1, Ordering::SeqCst);
                let bytes: usize = req
                    .headers()
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len())
                    .sum();
                let body = format!("fields={} bytes={bytes}", req.headers().len());
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .max_buf_size(4 << 20)
                .max_headers(5000)
                .serve_connection(TokioIo::new(s), svc)
                .await;
        }
    })
    .await
}

/// Writes `head` to the vhost (while reading, as a client whose request is refused midway
/// would) and returns the whole response up to the server's close.
async fn raw_exchange(port: u16, head: Vec<u8>) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&head).await;
        w
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, r.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no close within {WAIT:?}");
    drop(writer.await);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The vhost reads request heads as Go's `http.Server` in frps does: any number of header
/// fields (hyper's default stops at 100) within 1 MiB + 4096 bytes (hyper's default stops at
/// ~400 KiB), 431 past that; a request with two Host headers gets Go's 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_heads_have_go_limits() {
    let env = Env::new();
    let (_frps, bind, vport) = frps_with_vhost(&env, "");
    let seen = Arc::new(AtomicUsize::new(0));
    let backend = big_head_backend(seen.clone()).await;
    let _frpc = env.frpc(
        "frpc",
        &format!(
            "{head}\n[[proxies]]\nname = \"web\"\ntype = \"http\"\nlocalPort = {backend}\ncustomDomains = [\"big.test\"]\n",
            head = frpc_head(bind)
        ),
    );
    wait_route(vport, "big.test", "/").await;

    let request = |fields: &[(String, String)]| {
        let mut h = String::from("GET / HTTP/1.1\r\nHost: big.test\r\nConnection: close\r\n");
        for (k, v) in fields {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    };
    // 101 and 500 header fields reach the backend.
    for n in [101, 500] {
        let fields: Vec<_> = (0..n)
            .map(|i| (format!("X-Field-{i}"), format!("value-{i}")))
            .collect();
        let resp = raw_exchange(vport, request(&fields)).await;
        assert_eq!(status_of(&resp), 200, "{n} fields: {resp}");
        // frps adds X-Forwarded-For / X-Real-IP, and Accept-Encoding; the fields all arrive.
        let got: usize = resp
            .split("fields=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(got >= n + 2, "{n} fields sent, backend saw {got}: {resp}");
    }
    // A 1000 KiB head (past hyper's default buffer, within Go's 1 MiB) reaches the backend.
    let big = vec![("X-Big".to_string(), "b".repeat(1000 * 1024))];
    let resp = raw_exchange(vport, request(&big)).await;
    assert_eq!(status_of(&resp), 200, "{}", &resp[..resp.len().min(300)]);
    assert!(resp.contains("bytes="), "{resp}");

    // A head that has not ended after 1 MiB + 4096 bytes: 431, as Go answers, and the backend
    // never sees it.
    let before = seen.load(Ordering::SeqCst);
    let mut head = b"GET / HTTP/1.1\r\nHost: big.test\r\nX-Big: ".to_vec();
    head.resize((1 << 20) + 4096, b'b');
    let resp = raw_exchange(vport, head).await;
    assert_eq!(status_of(&resp), 431, "{resp}");

    // Two Host headers: Go's 400 and its text; the backend never sees it.
    let resp = raw_exchange(
        vport,
        b"GET / HTTP/1.1\r\nHost: big.test\r\nHost: big.test\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert!(
        resp.ends_with("\r\n\r\n400 Bad Request: too many Host headers"),
        "{resp}"
    );
    assert!(lower(&resp).contains("connection: close\r\n"), "{resp}");
    assert_eq!(seen.load(Ordering::SeqCst), before);
}

// --- https ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_routes_by_sni_without_terminating_tls() {
    let env = Env::new();
    let bind = free_port();
    let sport = free_port();
    let _frps = env.frps(
        "frps",
        bind,
        &format!("auth.token = \"{TOKEN}\"\nvhostHTTPSPort = {sport}\nlog.level = \"debug\""),
    );
    let (a, a_pem) = https_backend("TLS-A", "a.example.com").await;
    let (b, b_pem) = https_backend("TLS-B", "b.example.com").await;
    let a_ca = env.write("a.pem", &a_pem);
    let b_ca = env.write("b.pem", &b_pem);
    let frpc = env.frpc(
        "frpc",
        &format!(
            r#"{head}
[[proxies]]
name = "sa"
type = "https"
localPort = {a}
customDomains = ["a.example.com"]

[[proxies]]
name = "sb"
type = "https"
localPort = {b}
customDomains = ["b.example.com"]
transport.useEncryption = true
"#,
            head = frpc_head(bind)
        ),
    );
    frpc.wait_log("[sa] start proxy success", WAIT);
    frpc.wait_log("[sb] start proxy success", WAIT);
    for (host, want, ca) in [
        ("a.example.com", "TLS-A", &a_ca),
        ("b.example.com", "TLS-B", &b_ca),
    ] {
        let resolve = format!("{host}:{sport}:127.0.0.1");
        let url = format!("https://{host}:{sport}/");
        let r = curl(&["-k", "--resolve", &resolve, &url]).await;
        assert_eq!(r.code, Some(0), "{host}: {}", r.stderr);
        assert!(
            r.stdout.contains(&format!("backend={want}\n")),
            "{}",
            r.stdout
        );
        // Verified against the backend's own certificate: frps did not terminate TLS.
        let ca = ca.to_str().unwrap();
        let r = curl(&["--cacert", ca, "--resolve", &resolve, &url]).await;
        assert_eq!(r.code, Some(0), "{host} with its own CA: {}", r.stderr);
        assert!(
            r.stdout.contains(&format!("backend={want}\n")),
            "{}",
            r.stdout
        );
    }
    // The other backend's certificate does not verify: each name reached its own backend.
    let resolve = format!("a.example.com:{sport}:127.0.0.1");
    let r = curl(&[
        "--cacert",
        b_ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &format!("https://a.example.com:{sport}/"),
    ])
    .await;
    assert_ne!(r.code, Some(0), "{}", r.stdout);
    // Unknown name: the handshake fails.
    let resolve = format!("c.example.com:{sport}:127.0.0.1");
    let r = curl(&[
        "-k",
        "--resolve",
        &resolve,
        &format!("https://c.example.com:{sport}/"),
    ])
    .await;
    assert_ne!(r.code, Some(0), "unknown SNI must fail: {}", r.stdout);
}

// --- vhost ports shared with bindPort ------------------------------------------------------------

/// vhostHTTPPort = vhostHTTPSPort = bindPort (a common frp set-up, e.g. all on 443/80): frps
/// tells users' HTTP (method prefix) and TLS (0x16) from frpc's connections, which then use
/// TLS with the custom 0x17 first byte, the websocket transport (`GET /~!frp`, not HTTP) or
/// plain TCP. frps used to refuse to start with this config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_ports_shared_with_bind_port() {
    let env = Env::new();
    let bind = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!(
            "auth.token = \"{TOKEN}\"\nvhostHTTPPort = {bind}\nvhostHTTPSPort = {bind}\nlog.level = \"debug\""
        ),
    );
    frps.wait_log("(shared with bindPort)", WAIT);
    let web = http_backend("WEB").await;
    let (tls, tls_pem) = https_backend("TLS", "s.example.com").await;
    let tls_ca = env.write("s.pem", &tls_pem);
    let echo = echo_server().await;
    let mut remotes = Vec::new();
    let mut clients = Vec::new();
    for (i, transport) in [
        "transport.tls.disableCustomTLSFirstByte = false",
        "transport.protocol = \"websocket\"",
        "transport.tls.enable = false",
    ]
    .iter()
    .enumerate()
    {
        let remote = free_port();
        remotes.push(remote);
        let frpc = env.frpc(
            &format!("frpc{i}"),
            &format!(
                r#"{head}{transport}

[[proxies]]
name = "echo{i}"
type = "tcp"
localPort = {echo}
remotePort = {remote}
{vhosts}"#,
                head = frpc_head(bind),
                vhosts = if i == 0 {
                    format!(
                        r#"
[[proxies]]
name = "web"
type = "http"
localPort = {web}
customDomains = ["w.example.com"]

[[proxies]]
name = "tls"
type = "https"
localPort = {tls}
customDomains = ["s.example.com"]
"#
                    )
                } else {
                    String::new()
                }
            ),
        );
        frpc.wait_log(&format!("[echo{i}] start proxy success"), WAIT);
        clients.push(frpc);
    }
    clients[0].wait_log("[web] start proxy success", WAIT);
    clients[0].wait_log("[tls] start proxy success", WAIT);
    for remote in remotes {
        let data = pattern(100_000, remote as u64);
        assert_eq!(
            roundtrip_eventually(remote, &data, WAIT).await,
            data,
            "tcp proxy on {remote}"
        );
    }
    wait_route(bind, "w.example.com", "/").await;
    let (st, text) = get(bind, "w.example.com", "/p", &[]).await;
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("backend=WEB\n"), "{text}");
    let resolve = format!("s.example.com:{bind}:127.0.0.1");
    let r = curl(&[
        "--cacert",
        tls_ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &format!("https://s.example.com:{bind}/"),
    ])
    .await;
    assert_eq!(r.code, Some(0), "https on bindPort: {}", r.stderr);
    assert!(r.stdout.contains("backend=TLS\n"), "{}", r.stdout);
}

// --- tcpmux ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcpmux_http_connect_routes_and_checks_credentials() {
    let env = Env::new();
    let bind = free_port();
    let mport = free_port();
    let _frps = env.frps(
        "frps",
        bind,
        &format!(
            "auth.token = \"{TOKEN}\"\ntcpmuxHTTPConnectPort = {mport}\nlog.level = \"debug\""
        ),
    );
    let a = http_backend("MUX-A").await;
    let b = http_backend("MUX-B").await;
    let frpc = env.frpc(
        "frpc",
        &format!(
            r#"{head}
[[proxies]]
name = "ma"
type = "tcpmux"
multiplexer = "httpconnect"
localPort = {a}
customDomains = ["a.example.com"]

[[proxies]]
name = "mb"
type = "tcpmux"
multiplexer = "httpconnect"
localPort = {b}
customDomains = ["b.example.com"]
httpUser = "u"
httpPassword = "p"
transport.useCompression = true
"#,
            head = frpc_head(bind)
        ),
    );
    frpc.wait_log("[ma] start proxy success", WAIT);
    frpc.wait_log("[mb] start proxy success", WAIT);
    let proxy = format!("http://127.0.0.1:{mport}");
    let r = curl(&["-p", "-x", &proxy, "http://a.example.com/hello"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("backend=MUX-A\n"), "{}", r.stdout);
    assert!(r.stdout.contains("path=/hello\n"), "{}", r.stdout);
    let r = curl(&["-p", "-x", &proxy, "-U", "u:p", "http://b.example.com/"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("backend=MUX-B\n"), "{}", r.stdout);
    for creds in [&["-U", "u:wrong"][..], &[][..]] {
        let mut args = vec!["-p", "-x", &proxy, "-w", "%{http_connect}"];
        args.extend_from_slice(creds);
        args.push("http://b.example.com/");
        let r = curl(&args).await;
        assert_ne!(r.code, Some(0));
        assert!(
            r.stdout.ends_with("407"),
            "{creds:?}: {} {}",
            r.stdout,
            r.stderr
        );
    }
    let r = curl(&[
        "-p",
        "-x",
        &proxy,
        "-w",
        "%{http_connect}",
        "http://nobody.example.com/",
    ])
    .await;
    assert!(r.stdout.ends_with("404"), "{} {}", r.stdout, r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcpmux_passthrough_forwards_the_connect_request() {
    let env = Env::new();
    let bind = free_port();
    let mport = free_port();
    let _frps = env.frps(
        "frps",
        bind,
        &format!(
            "auth.token = \"{TOKEN}\"\ntcpmuxHTTPConnectPort = {mport}\ntcpmuxPassthrough = true"
        ),
    );
    // A raw backend: answers with what it received first.
    let port = tcp_service(|mut s| async move {
        let Some(got) = read_head(&mut s).await else {
            return;
        };
        let _ = s.write_all(b"backend saw: ").await;
        let _ = s.write_all(&got).await;
    })
    .await;
    let frpc = env.frpc(
        "frpc",
        &format!(
            r#"{head}
[[proxies]]
name = "pt"
type = "tcpmux"
multiplexer = "httpconnect"
localPort = {port}
customDomains = ["pt.example.com"]
"#,
            head = frpc_head(bind)
        ),
    );
    frpc.wait_log("[pt] start proxy success", WAIT);
    let mut s = TcpStream::connect(("127.0.0.1", mport)).await.unwrap();
    let req = b"CONNECT pt.example.com:443 HTTP/1.1\r\nHost: pt.example.com:443\r\n\r\n";
    s.write_all(req).await.unwrap();
    let mut want = b"backend saw: ".to_vec();
    want.extend_from_slice(req);
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("passthrough timed out")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "no 200 from frps, the CONNECT request reaches the backend"
    );
}
