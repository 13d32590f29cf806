//! Wire protocol v2 and the other ways frpc reaches frps, end to end: v1/v2 × tcpMux × TLS,
//! websocket, wss (behind a TLS-terminating proxy, as frp requires), one frps serving v1 and
//! v2 clients at once, HTTP CONNECT, HTTPS CONNECT, NTLM and SOCKS5 proxies with credentials,
//! connectServerLocalIP, QUIC (v1/v2, restarts, garbage, silent streams), KCP
//! (`kcpBindPort`, `transport.protocol = "kcp"`: v1/v2 × tcpMux × TLS, garbage datagrams, a
//! killed client) and the clear refusal of an unknown transport.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use e2e::*;
use http_body_util::Empty;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "e2e-token";

/// frpc config lines for the common section, before `frpc_tcp_config`'s.
fn frpc_cfg(
    server_port: u16,
    extra: &str,
    tcp_mux: bool,
    tls: bool,
    enc: bool,
    local: u16,
    remote: u16,
) -> String {
    format!(
        "{extra}\n{}",
        frpc_tcp_config(server_port, TOKEN, tcp_mux, tls, enc, local, remote)
    )
}

fn frps_extra(tcp_mux: bool) -> String {
    format!("auth.token = \"{TOKEN}\"\ntransport.tcpMux = {tcp_mux}\nlog.level = \"debug\"")
}

/// Sends `data` and reads the echo back without half-closing first: a websocket cannot carry
/// a half-close (closing it ends both directions, as frp's own join does on the first EOF).
async fn echo_exact(port: u16, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut r, mut w) = s.into_split();
    let owned = data.to_vec();
    let writer = tokio::spawn(async move { w.write_all(&owned).await.map(|()| w) });
    let mut got = vec![0u8; data.len()];
    r.read_exact(&mut got).await?;
    writer.await.unwrap()?;
    Ok(got)
}

/// Small, large and compressible payloads through the proxy on `remote`.
async fn check_payloads(remote: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r =
            tokio::time::timeout(Duration::from_secs(2), echo_exact(remote, b"hello frp")).await;
        if matches!(&r, Ok(Ok(got)) if got == b"hello frp") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no working tunnel: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, data) in [pattern(300_000, 3), vec![b'z'; 100_000]]
        .iter()
        .enumerate()
    {
        let got = tokio::time::timeout(Duration::from_secs(20), echo_exact(remote, data))
            .await
            .unwrap_or_else(|_| panic!("payload {i} timed out"))
            .unwrap();
        let bad = got.iter().zip(data.iter()).position(|(a, b)| a != b);
        assert!(
            bad.is_none() && got.len() == data.len(),
            "payload {i} corrupted: {} of {} bytes back, first difference at {bad:?}",
            got.len(),
            data.len()
        );
    }
}

/// frps + frpc (with `extra` transport lines) + one tcp proxy; checks traffic and which wire
/// protocol frps saw.
async fn tunnel_case(extra: &str, wire: &str, tcp_mux: bool, tls: bool, enc: bool) {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps("frps", bind, &frps_extra(tcp_mux));
    let frpc = env.frpc(
        "frpc",
        &frpc_cfg(bind, extra, tcp_mux, tls, enc, echo, remote),
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
    frps.wait_log(&format!("wire protocol [{wire}]"), Duration::from_secs(1));
    check_payloads(remote).await;
}

macro_rules! cases_quic {
    ($($name:ident: $extra:expr, $wire:expr, $enc:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            quic_case($extra, $wire, $enc).await;
        }
    )*};
}

macro_rules! cases {
    ($($name:ident: $extra:expr, $wire:expr, $mux:expr, $tls:expr, $enc:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            tunnel_case($extra, $wire, $mux, $tls, $enc).await;
        }
    )*};
}

const V2: &str = "transport.wireProtocol = \"v2\"";
const WS_V1: &str = "transport.protocol = \"websocket\"";
const WS_V2: &str = "transport.protocol = \"websocket\"\ntransport.wireProtocol = \"v2\"";

cases! {
    v2_mux_tls_enc: V2, "v2", true, true, true;
    v2_mux_notls_plain: V2, "v2", true, false, false;
    v2_nomux_tls_plain: V2, "v2", false, true, false;
    v2_nomux_notls_enc: V2, "v2", false, false, true;
    websocket_mux_tls_v1: WS_V1, "v1", true, true, false;
    websocket_nomux_notls_v2: WS_V2, "v2", false, false, true;
    websocket_nomux_custom_tls_byte_v1:
        "transport.protocol = \"websocket\"\ntransport.tls.disableCustomTLSFirstByte = false",
        "v1", false, true, false;
}

/// A TLS-terminating reverse proxy in front of `backend` (what frp needs for wss); returns
/// its port and how many connections it forwarded.
async fn tls_terminator(backend: u16) -> (u16, Arc<Mutex<usize>>) {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(control::tls::server_config("", "", "").unwrap());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", backend)).await else {
                    return;
                };
                *c.lock().unwrap() += 1;
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_a_tls_terminating_proxy() {
    for (tcp_mux, wire) in [(true, "v2"), (false, "v1")] {
        let env = Env::new();
        let echo = echo_server().await;
        let bind = free_port();
        let remote = free_port();
        let frps = env.frps("frps", bind, &frps_extra(tcp_mux));
        let (front, forwarded) = tls_terminator(bind).await;
        let extra = format!("transport.protocol = \"wss\"\ntransport.wireProtocol = \"{wire}\"");
        // tls.enable = false: wss has its own TLS layer below the websocket regardless.
        let frpc = env.frpc(
            "frpc",
            &frpc_cfg(front, &extra, tcp_mux, false, false, echo, remote),
        );
        frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
        frps.wait_log(&format!("wire protocol [{wire}]"), Duration::from_secs(1));
        check_payloads(remote).await;
        assert!(*forwarded.lock().unwrap() >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frps_serves_v1_and_v2_clients_at_once() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let (r1, r2) = (free_port(), free_port());
    let frps = env.frps("frps", bind, &frps_extra(true));
    let c1 = env.frpc("frpc-v1", &frpc_cfg(bind, "", true, true, true, echo, r1));
    let c2 = env.frpc(
        "frpc-v2",
        &frpc_cfg(bind, V2, true, true, true, echo, r2)
            .replace("name = \"echo\"", "name = \"echo2\""),
    );
    c1.wait_log("[echo] start proxy success", Duration::from_secs(10));
    c2.wait_log("[echo2] start proxy success", Duration::from_secs(10));
    frps.wait_log("wire protocol [v1]", Duration::from_secs(1));
    frps.wait_log("wire protocol [v2]", Duration::from_secs(1));
    tokio::join!(check_payloads(r1), check_payloads(r2));
}

// ------------------------------------------------------------------------ proxies

const USER: &str = "alice";
const PASS: &str = "s3cret";
/// `Basic base64("alice:s3cret")`.
const BASIC: &str = "Basic YWxpY2U6czNjcmV0";

/// An HTTP CONNECT proxy (hyper) requiring alice's credentials; returns its port and the
/// targets it tunnelled to.
async fn http_connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    connect_proxy(None).await
}

/// [`http_connect_proxy`], inside TLS when `tls` is given (an `https://` proxy).
async fn connect_proxy(tls: Option<tokio_rustls::TlsAcceptor>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen2.clone();
            let tls = tls.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let mut resp = Response::new(Empty::<Bytes>::new());
                    if req.method() != Method::CONNECT {
                        *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                        return Ok::<_, std::convert::Infallible>(resp);
                    }
                    let auth = req.headers().get("proxy-authorization");
                    if auth.and_then(|v| v.to_str().ok()) != Some(BASIC) {
                        *resp.status_mut() = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
                        return Ok(resp);
                    }
                    let target = req
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    seen.lock().unwrap().push(target.clone());
                    tokio::spawn(async move {
                        let Ok(up) = hyper::upgrade::on(req).await else {
                            return;
                        };
                        let Ok(mut backend) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let mut up = TokioIo::new(up);
                        let _ = tokio::io::copy_bidirectional(&mut up, &mut backend).await;
                    });
                    Ok(resp)
                }
            });
            tokio::spawn(async move {
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http
                            .serve_connection(TokioIo::new(s), svc)
                            .with_upgrades()
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(s) = acceptor.accept(s).await else {
                            return;
                        };
                        let _ = http
                            .serve_connection(TokioIo::new(s), svc)
                            .with_upgrades()
                            .await;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// A SOCKS5 proxy (RFC 1928/1929) that only accepts username/password auth as alice; returns
/// its port and the targets it connected to.
async fn socks5_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    async fn serve(mut s: TcpStream, seen: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
        let mut hdr = [0u8; 2];
        s.read_exact(&mut hdr).await?;
        let mut methods = vec![0u8; hdr[1] as usize];
        s.read_exact(&mut methods).await?;
        if hdr[0] != 5 || !methods.contains(&2) {
            s.write_all(&[5, 0xff]).await?;
            return Ok(());
        }
        s.write_all(&[5, 2]).await?;
        let ver_ulen = [s.read_u8().await?, s.read_u8().await?];
        let mut user = vec![0u8; ver_ulen[1] as usize];
        s.read_exact(&mut user).await?;
        let mut pass = vec![0u8; s.read_u8().await? as usize];
        s.read_exact(&mut pass).await?;
        if user != USER.as_bytes() || pass != PASS.as_bytes() {
            s.write_all(&[1, 1]).await?;
            return Ok(());
        }
        s.write_all(&[1, 0]).await?;
        let mut req = [0u8; 4];
        s.read_exact(&mut req).await?;
        let host = match req[3] {
            1 => {
                let mut a = [0u8; 4];
                s.read_exact(&mut a).await?;
                std::net::Ipv4Addr::from(a).to_string()
            }
            3 => {
                let mut name = vec![0u8; s.read_u8().await? as usize];
                s.read_exact(&mut name).await?;
                String::from_utf8_lossy(&name).into_owned()
            }
            _ => return Ok(()),
        };
        let port = s.read_u16().await?;
        let target = format!("{host}:{port}");
        seen.lock().unwrap().push(target.clone());
        let mut backend = TcpStream::connect(&target).await?;
        s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
        tokio::io::copy_bidirectional(&mut s, &mut backend).await?;
        Ok(())
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, seen2.clone()));
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_http_connect_proxy_with_credentials() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps("frps", bind, &frps_extra(false));
    let (proxy, seen) = http_connect_proxy().await;
    // Without tcpMux every work connection is a new dial through the proxy too.
    let extra = format!("{V2}\ntransport.proxyURL = \"http://{USER}:{PASS}@127.0.0.1:{proxy}\"");
    let frpc = env.frpc(
        "frpc",
        &frpc_cfg(bind, &extra, false, true, false, echo, remote),
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
    check_payloads(remote).await;
    frps.wait_log("wire protocol [v2]", Duration::from_secs(1));
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 2,
        "control and work connections via the proxy: {seen:?}"
    );
    assert!(
        seen.iter().all(|t| *t == format!("127.0.0.1:{bind}")),
        "{seen:?}"
    );

    // Wrong password: the proxy answers 407 and frpc gives up (loginFailExit).
    let extra = format!("transport.proxyURL = \"http://{USER}:wrong@127.0.0.1:{proxy}\"");
    let mut bad = env.frpc(
        "frpc-bad",
        &frpc_cfg(bind, &extra, true, true, false, echo, free_port()),
    );
    let st = bad.wait_exit(Duration::from_secs(15)).expect("frpc exits");
    assert!(!st.success());
    let log = bad.log_text();
    assert!(log.contains("StatusCode [407]"), "{log}");
}

/// A self-signed certificate for 127.0.0.1: the TLS acceptor and the PEM to trust it with.
fn self_signed_for_localhost() -> (tokio_rustls::TlsAcceptor, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        ck.cert.pem(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_https_connect_proxy_with_credentials() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let _frps = env.frps("frps", bind, &frps_extra(false));
    let (acceptor, pem) = self_signed_for_localhost();
    let (proxy, seen) = connect_proxy(Some(acceptor)).await;
    // frpc trusts the proxy's certificate the way Go does: through the system roots, here
    // pointed at the test's certificate.
    let ca = env.write("proxy-ca.pem", &pem);
    let ssl_cert_file = [("SSL_CERT_FILE", ca.to_str().unwrap())];
    let extra = format!("transport.proxyURL = \"https://{USER}:{PASS}@127.0.0.1:{proxy}\"");
    let frpc = env.frpc_with_env(
        "frpc",
        &frpc_cfg(bind, &extra, false, true, true, echo, remote),
        &ssl_cert_file,
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
    check_payloads(remote).await;
    let got = seen.lock().unwrap().clone();
    assert!(got.len() >= 2, "control and work connections: {got:?}");
    assert!(
        got.iter().all(|t| *t == format!("127.0.0.1:{bind}")),
        "{got:?}"
    );

    // A proxy certificate frpc does not trust: the TLS handshake fails, naming the proxy.
    let (_, other_pem) = self_signed_for_localhost();
    let other = env.write("other-ca.pem", &other_pem);
    let mut bad = env.frpc_with_env(
        "frpc-untrusted",
        &frpc_cfg(bind, &extra, true, true, false, echo, free_port()),
        &[("SSL_CERT_FILE", other.to_str().unwrap())],
    );
    let st = bad.wait_exit(Duration::from_secs(15)).expect("frpc exits");
    assert!(!st.success());
    let log = bad.log_text();
    assert!(log.contains("TLS handshake with HTTPS proxy"), "{log}");
    assert!(
        log.contains(&format!("through proxy 127.0.0.1:{proxy}")),
        "{log}"
    );

    // Wrong password: 407 from inside the TLS session.
    let extra = format!("transport.proxyURL = \"https://{USER}:wrong@127.0.0.1:{proxy}\"");
    let mut bad = env.frpc_with_env(
        "frpc-bad",
        &frpc_cfg(bind, &extra, true, true, false, echo, free_port()),
        &ssl_cert_file,
    );
    let st = bad.wait_exit(Duration::from_secs(15)).expect("frpc exits");
    assert!(!st.success());
    assert!(
        bad.log_text().contains("StatusCode [407]"),
        "{}",
        bad.log_text()
    );
}

const NTLM_DOMAIN: &str = "CORP";
const NTLM_PASS: &str = "N7lm-pass";

/// Reads one request head (up to the empty line) from `s`.
async fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await?);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn request_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An HTTP CONNECT proxy that authenticates with NTLM on each connection, as a Windows proxy
/// does: NEGOTIATE → 407 with a fresh CHALLENGE (and a body) → AUTHENTICATE, whose NTLMv2
/// proof it recomputes from `CORP\alice`'s password. Returns its port and, per connection,
/// `Ok(target)` or `Err(why it refused)`.
async fn ntlm_proxy() -> (u16, Arc<Mutex<Vec<Result<String, String>>>>) {
    use base64::Engine;
    use control::transport::ntlm;
    async fn serve(mut s: TcpStream) -> Result<String, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let io = |e: std::io::Error| e.to_string();
        let first = read_head(&mut s).await.map_err(io)?;
        let nego = request_header(&first, "proxy-authorization")
            .and_then(|v| v.strip_prefix("Negotiate "))
            .ok_or("no NEGOTIATE")?;
        let nego = b64.decode(nego).map_err(|e| e.to_string())?;
        if nego.get(..12) != Some(b"NTLMSSP\0\x01\0\0\0".as_slice()) {
            return Err("not an NTLM NEGOTIATE".into());
        }
        let server_challenge: [u8; 8] = rand::random();
        // Target info: NbDomainName "CORP", a timestamp, EOL.
        let mut ti = vec![2, 0, 8, 0];
        ti.extend(NTLM_DOMAIN.encode_utf16().flat_map(u16::to_le_bytes));
        ti.extend_from_slice(&[7, 0, 8, 0]);
        ti.extend_from_slice(&0x01dc_0000_1234_5678u64.to_le_bytes());
        ti.extend_from_slice(&[0, 0, 0, 0]);
        let flags = ntlm::FLAG_UNICODE | ntlm::FLAG_NTLM | ntlm::FLAG_TARGET_INFO;
        let mut ch = b"NTLMSSP\0\x02\0\0\0".to_vec();
        ch.extend_from_slice(&[0, 0, 0, 0, 48, 0, 0, 0]);
        ch.extend_from_slice(&flags.to_le_bytes());
        ch.extend_from_slice(&server_challenge);
        ch.extend_from_slice(&[0; 8]);
        ch.extend_from_slice(&(ti.len() as u16).to_le_bytes());
        ch.extend_from_slice(&(ti.len() as u16).to_le_bytes());
        ch.extend_from_slice(&48u32.to_le_bytes());
        ch.extend_from_slice(&ti);
        let body = "NTLM authentication required";
        let resp = format!(
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate {}\r\nContent-Length: {}\r\n\r\n{body}",
            b64.encode(&ch),
            body.len()
        );
        s.write_all(resp.as_bytes()).await.map_err(io)?;

        let second = read_head(&mut s).await.map_err(io)?;
        let token = request_header(&second, "proxy-authorization")
            .and_then(|v| v.strip_prefix("Negotiate "))
            .ok_or("no AUTHENTICATE")?;
        let a = ntlm::Authenticate::parse(&b64.decode(token).map_err(|e| e.to_string())?)
            .ok_or("bad AUTHENTICATE")?;
        let key = ntlm::ntowf_v2(NTLM_PASS, &a.user, &a.domain);
        let proof_ok = a.nt_response.len() > 16
            && ntlm::nt_proof_str(&key, &server_challenge, &a.nt_response[16..])
                == a.nt_response[..16];
        // The blob echoes the challenge's timestamp and target info.
        let blob_ok = a.nt_response.get(24..32) == Some(&ti[16..24]);
        if !(proof_ok && blob_ok && a.user == USER && a.domain == NTLM_DOMAIN) {
            let _ = s
                .write_all(b"HTTP/1.1 407 Denied\r\nContent-Length: 0\r\n\r\n")
                .await;
            return Err(format!("denied {}\\{}", a.domain, a.user));
        }
        let target = second
            .split_whitespace()
            .nth(1)
            .ok_or("no target")?
            .to_string();
        let mut up = TcpStream::connect(&target).await.map_err(io)?;
        s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .map_err(io)?;
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
        });
        Ok(target)
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let r = serve(s).await;
                seen.lock().unwrap().push(r);
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_ntlm_proxy() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps("frps", bind, &frps_extra(false));
    let (proxy, seen) = ntlm_proxy().await;
    // DOMAIN\user, percent-encoded as Go's url.Parse wants it; v2 over no tcpMux, so the
    // control and every work connection authenticate separately.
    let extra = format!(
        "{V2}\ntransport.proxyURL = \"ntlm://{NTLM_DOMAIN}%5C{USER}:{NTLM_PASS}@127.0.0.1:{proxy}\""
    );
    let frpc = env.frpc(
        "frpc",
        &frpc_cfg(bind, &extra, false, true, true, echo, remote),
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
    check_payloads(remote).await;
    frps.wait_log("wire protocol [v2]", Duration::from_secs(1));
    let got = seen.lock().unwrap().clone();
    assert!(got.len() >= 2, "control and work connections: {got:?}");
    assert!(
        got.iter().all(|t| *t == Ok(format!("127.0.0.1:{bind}"))),
        "{got:?}"
    );

    // Wrong password: the proxy refuses the NTLMv2 response; frpc says which proxy and user.
    let extra =
        format!("transport.proxyURL = \"ntlm://{NTLM_DOMAIN}%5C{USER}:wrong@127.0.0.1:{proxy}\"");
    let mut bad = env.frpc(
        "frpc-bad",
        &frpc_cfg(bind, &extra, true, true, false, echo, free_port()),
    );
    let st = bad.wait_exit(Duration::from_secs(15)).expect("frpc exits");
    assert!(!st.success());
    let log = bad.log_text();
    assert!(
        log.contains(&format!("through proxy 127.0.0.1:{proxy}")),
        "{log}"
    );
    assert!(
        log.contains("DialTcpByNTLMHttpProxy error, StatusCode [407]"),
        "{log}"
    );
    assert!(
        log.contains(&format!("NTLM authentication as [{NTLM_DOMAIN}\\{USER}]")),
        "{log}"
    );
    assert!(
        seen.lock()
            .unwrap()
            .contains(&Err(format!("denied {NTLM_DOMAIN}\\{USER}"))),
        "the proxy saw and refused the bad response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_socks5_proxy_with_credentials() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let _frps = env.frps("frps", bind, &frps_extra(true));
    let (proxy, seen) = socks5_proxy().await;
    // websocket dialing goes through the proxy as well.
    let extra =
        format!("{WS_V2}\ntransport.proxyURL = \"socks5://{USER}:{PASS}@127.0.0.1:{proxy}\"");
    let frpc = env.frpc(
        "frpc",
        &frpc_cfg(bind, &extra, true, true, true, echo, remote),
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
    check_payloads(remote).await;
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![format!("127.0.0.1:{bind}")]
    );

    let extra = format!("transport.proxyURL = \"socks5://{USER}:nope@127.0.0.1:{proxy}\"");
    let mut bad = env.frpc(
        "frpc-bad",
        &frpc_cfg(bind, &extra, true, true, false, echo, free_port()),
    );
    let st = bad.wait_exit(Duration::from_secs(15)).expect("frpc exits");
    assert!(!st.success());
    assert!(
        bad.log_text().contains("socks5 proxy"),
        "{}",
        bad.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_server_local_ip_binds_the_source_address() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps("frps", bind, &frps_extra(false));
    let extra = "transport.connectServerLocalIP = \"127.0.0.1\"";
    let frpc = env.frpc(
        "frpc",
        &frpc_cfg(bind, extra, false, false, false, echo, remote),
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
    frps.wait_log("client login info: ip [127.0.0.1:", Duration::from_secs(1));
    check_payloads(remote).await;

    // An address this host does not have: the bind fails locally (nothing is sent).
    let extra = "transport.connectServerLocalIP = \"192.0.2.1\"";
    let mut bad = env.frpc(
        "frpc-bad",
        &frpc_cfg(bind, extra, false, false, false, echo, free_port()),
    );
    let st = bad.wait_exit(Duration::from_secs(15)).expect("frpc exits");
    assert!(!st.success());
    let log = bad.log_text();
    assert!(log.contains("bind connectServerLocalIP 192.0.2.1"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_transport_is_refused_clearly() {
    let env = Env::new();
    let extra = "transport.protocol = \"sctp\"";
    let mut frpc = env.frpc(
        "frpc-sctp",
        &frpc_cfg(free_port(), extra, true, true, false, 1, free_port()),
    );
    let st = frpc.wait_exit(Duration::from_secs(10)).expect("frpc exits");
    assert!(!st.success());
    // Refused by frp's validation, in its words, before anything starts.
    let log = frpc.log_text();
    assert!(
        log.contains(
            "invalid transport.protocol, optional values are [tcp kcp quic websocket wss]"
        ),
        "{log}"
    );
}

// ------------------------------------------------------------------------ QUIC

/// frps with a UDP transport port (`quicBindPort` / `kcpBindPort`) and frpc dialing it
/// (`serverPort` = that port, as in frp; nothing listens on TCP there), one tcp proxy to `echo`.
struct UdpTunnel {
    frps: Proc,
    frpc: Proc,
    /// frps' TCP `bindPort` and its UDP transport port.
    bind: u16,
    udp: u16,
    /// The tcp proxy's port on frps.
    remote: u16,
}

/// Starts the [`UdpTunnel`] for `proto` ("quic" or "kcp"); waits for frps' listen line and
/// the proxy.
#[allow(clippy::too_many_arguments)]
fn udp_tunnel(
    env: &Env,
    proto: &str,
    echo: u16,
    tcp_mux: bool,
    tls: bool,
    enc: bool,
    frps_more: &str,
    frpc_more: &str,
) -> UdpTunnel {
    let bind = free_port();
    let udp = free_port();
    let remote = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!(
            "{}
{proto}BindPort = {udp}
{frps_more}",
            frps_extra(tcp_mux)
        ),
    );
    let listen = match proto {
        "kcp" => format!("frps kcp listen on udp 127.0.0.1:{udp}"),
        _ => format!("frps {proto} listen on 127.0.0.1:{udp}"),
    };
    frps.wait_log(&listen, Duration::from_secs(1));
    let extra = format!("transport.protocol = \"{proto}\"\n{frpc_more}");
    let frpc = env.frpc(
        "frpc",
        &frpc_cfg(udp, &extra, tcp_mux, tls, enc, echo, remote),
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(15));
    UdpTunnel {
        frps,
        frpc,
        bind,
        udp,
        remote,
    }
}

fn quic_tunnel(env: &Env, echo: u16, frpc_extra: &str, enc: bool) -> UdpTunnel {
    udp_tunnel(env, "quic", echo, true, true, enc, "", frpc_extra)
}

async fn quic_case(frpc_extra: &str, wire: &str, enc: bool) {
    let env = Env::new();
    let echo = echo_server().await;
    let UdpTunnel {
        frps, frpc, remote, ..
    } = quic_tunnel(&env, echo, frpc_extra, enc);
    frps.wait_log(&format!("wire protocol [{wire}]"), Duration::from_secs(1));
    check_payloads(remote).await;
    // Many user connections at once: one QUIC stream each.
    let results = futures_util::future::join_all((0..32u64).map(|i| async move {
        let data = pattern(20_000 + i as usize * 1000, i);
        let got = tokio::time::timeout(Duration::from_secs(20), echo_exact(remote, &data)).await;
        (matches!(&got, Ok(Ok(g)) if *g == data), i)
    }))
    .await;
    for (ok, i) in results {
        assert!(ok, "concurrent connection {i} failed");
    }
    assert!(
        !frpc.log_text().contains("control closed"),
        "{}",
        frpc.log_text()
    );
}

cases_quic! {
    quic_v1_plain: "", "v1", false;
    quic_v1_encrypted_compressed: "", "v1", true;
    quic_v2_plain: V2, "v2", false;
    quic_v2_encrypted_compressed: V2, "v2", true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_frps_restart_frpc_reconnects() {
    let env = Env::new();
    let echo = echo_server().await;
    // A short idle timeout: a killed frps sends nothing, so frpc notices through QUIC's idle
    // timeout (frp's default is 30 s).
    let extra = "transport.quic.maxIdleTimeout = 2\ntransport.quic.keepalivePeriod = 1";
    let UdpTunnel {
        mut frps,
        frpc,
        bind,
        udp: quic,
        remote,
    } = quic_tunnel(&env, echo, extra, false);
    roundtrip_eventually(remote, b"before restart", Duration::from_secs(5)).await;

    frps.kill();
    let _frps2 = env.frps(
        "frps2",
        bind,
        &format!("{}\nquicBindPort = {quic}", frps_extra(true)),
    );
    frpc.wait_log("control closed", Duration::from_secs(15));
    frpc.wait_log_n("[echo] start proxy success", 2, Duration::from_secs(30));
    frpc.wait_log("try to reconnect to server", Duration::from_secs(1));
    roundtrip_eventually(remote, b"after restart", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_garbage_datagrams_do_not_disturb_a_live_tunnel() {
    let env = Env::new();
    let echo = echo_server().await;
    let UdpTunnel {
        frps,
        frpc,
        udp: quic,
        remote,
        ..
    } = quic_tunnel(&env, echo, "", true);
    check_payloads(remote).await;

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(("127.0.0.1", quic)).await.unwrap();
    for i in 0..2000u64 {
        let len = [1, 7, 21, 64, 1200, 1500][i as usize % 6];
        let mut d = pattern(len, i);
        match i % 4 {
            // Looks like a QUIC v1 Initial (long header) with garbage inside.
            0 if len > 5 => {
                d[0] = 0xc0;
                d[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
            // An unknown version: answered with Version Negotiation at most.
            1 if len > 5 => {
                d[0] = 0xc0;
                d[1..5].copy_from_slice(&0x1a2a_3a4au32.to_be_bytes());
            }
            // A short header for a connection that does not exist.
            2 => d[0] = 0x40 | (d[0] & 0x3f),
            _ => {}
        }
        let _ = sock.send(&d).await;
    }
    check_payloads(remote).await;
    assert!(
        !frpc.log_text().contains("control closed"),
        "{}",
        frpc.log_text()
    );
    assert_eq!(
        frps.log_text().matches("client login success").count(),
        1,
        "{}",
        frps.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_silent_stream_is_closed_after_the_first_message_timeout() {
    use control::transport::quic::{QuicDialer, QuicParams};
    let env = Env::new();
    let bind = free_port();
    let quic = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("{}\nquicBindPort = {quic}", frps_extra(true)),
    );
    let params = QuicParams {
        keepalive_secs: 1,
        max_idle_secs: 30,
        max_incoming_streams: 100,
    };
    let tls = control::tls::client_config("", "", "").unwrap();
    let dialer = QuicDialer::new(
        "127.0.0.1",
        quic,
        "127.0.0.1",
        &tls,
        &params,
        Duration::from_secs(5),
    )
    .unwrap();
    let session = dialer.connect().await.unwrap();
    let mut st = session.open().await.unwrap();
    // Part of a v1 message header, then nothing.
    st.write_all(b"o").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(20), st.read(&mut buf))
        .await
        .expect("frps closes the silent stream");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "closed after {waited:?}, before the timeout"
    );
    frps.wait_log(
        "closed: no complete first message within 10s",
        Duration::from_secs(1),
    );
    // The QUIC connection itself is still usable: a real login on a new stream works.
    let mut st2 = session.open().await.unwrap();
    st2.write_all(b"o\0\0\0\0\0\0\0\x02{}").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), st2.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(n)) if n > 0), "{r:?}");
    session.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_frpc_stop_tells_frps_at_once() {
    let env = Env::new();
    let echo = echo_server().await;
    let UdpTunnel {
        frps,
        mut frpc,
        remote,
        ..
    } = quic_tunnel(&env, echo, "", false);
    check_payloads(remote).await;
    frpc.signal(15);
    frpc.wait_exit(Duration::from_secs(5)).expect("frpc stops");
    // Well before frps' 30 s idle timeout: frpc closed the QUIC connection before exiting.
    frps.wait_log("client exit success", Duration::from_secs(10));
    assert!(
        wait_port_closed(remote, Duration::from_secs(5)),
        "proxy port still open"
    );
}

// ---------------------------------------------------------------------------------------------
// KCP

/// Starts frps (`kcpBindPort` + `frps_more`) and an frpc over KCP (`frpc_more`) with one tcp
/// proxy in front of a fresh echo server; waits for the proxy.
async fn kcp_tunnel(
    env: &Env,
    tcp_mux: bool,
    tls: bool,
    enc: bool,
    frps_more: &str,
    frpc_more: &str,
) -> UdpTunnel {
    let echo = echo_server().await;
    udp_tunnel(env, "kcp", echo, tcp_mux, tls, enc, frps_more, frpc_more)
}

async fn kcp_case(wire: &str, tcp_mux: bool, tls: bool, enc: bool, frpc_more: &str) {
    let env = Env::new();
    let more = if wire == "v2" {
        format!("{V2}\n{frpc_more}")
    } else {
        frpc_more.to_string()
    };
    let t = kcp_tunnel(&env, tcp_mux, tls, enc, "", &more).await;
    t.frps
        .wait_log(&format!("wire protocol [{wire}]"), Duration::from_secs(1));
    check_payloads(t.remote).await;
}

macro_rules! kcp_cases {
    ($($name:ident: $wire:expr, $mux:expr, $tls:expr, $enc:expr, $more:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            kcp_case($wire, $mux, $tls, $enc, $more).await;
        }
    )*};
}

kcp_cases! {
    kcp_mux_tls_v1: "v1", true, true, false, "";
    kcp_mux_notls_v1_enc: "v1", true, false, true, "";
    kcp_nomux_tls_v1: "v1", false, true, false, "";
    kcp_nomux_notls_v1: "v1", false, false, false, "";
    kcp_mux_tls_v2: "v2", true, true, false, "";
    kcp_mux_notls_v2: "v2", true, false, false, "";
    kcp_nomux_tls_v2_enc: "v2", false, true, true, "";
    kcp_nomux_notls_v2: "v2", false, false, false, "";
    kcp_mux_custom_tls_byte_v1: "v1", true, true, false,
        "transport.tls.disableCustomTLSFirstByte = false";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcp_plain_is_refused_when_tls_is_forced() {
    let env = Env::new();
    let bind = free_port();
    let kcp = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!(
            "{}\nkcpBindPort = {kcp}\ntransport.tls.force = true",
            frps_extra(true)
        ),
    );
    let _frpc = env.frpc(
        "frpc",
        &frpc_cfg(
            kcp,
            "transport.protocol = \"kcp\"",
            true,
            false,
            false,
            1,
            free_port(),
        ),
    );
    frps.wait_log(
        "non-TLS connection received on a TlsOnly server",
        Duration::from_secs(10),
    );
}

/// Datagrams from elsewhere cannot break into or disturb a live KCP tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcp_garbage_datagrams_do_not_disturb_a_live_tunnel() {
    let env = Env::new();
    let mut t = kcp_tunnel(&env, true, true, false, "", "").await;
    check_payloads(t.remote).await;
    let target = ("127.0.0.1", t.udp);
    let spam = tokio::spawn(async move {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let socks = [
            tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        ];
        for i in 0..3000u32 {
            let len = (rnd() % 1600) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            match i % 4 {
                // FEC data header + a KCP push with sn 0: opens a session that never
                // completes TLS detection.
                0 if len >= 32 => {
                    p[4..6].copy_from_slice(&0xf1u16.to_le_bytes());
                    p[12] = 81;
                    p[20..24].copy_from_slice(&0u32.to_le_bytes());
                    let body = (len - 32) as u32;
                    p[28..32].copy_from_slice(&body.to_le_bytes());
                }
                1 if len >= 6 => p[4..6].copy_from_slice(&0xf2u16.to_le_bytes()),
                _ => {}
            }
            let s = &socks[(i % 2) as usize];
            let _ = s.send_to(&p, target).await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    check_payloads(t.remote).await;
    spam.await.unwrap();
    check_payloads(t.remote).await;
    let log = t.frps.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(t.frps.wait_exit(Duration::ZERO).is_none(), "frps died");
}

/// A SIGKILLed frpc sends nothing more over KCP: frps notices through tcpMux keepalives or
/// heartbeats, as frp does, and frees the client's ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcp_killed_client_frees_its_ports() {
    for tcp_mux in [true, false] {
        let env = Env::new();
        let (frps_more, frpc_more) = if tcp_mux {
            ("transport.tcpMuxKeepaliveInterval = 1", "")
        } else {
            (
                "transport.heartbeatTimeout = 3",
                "transport.heartbeatInterval = 1\ntransport.heartbeatTimeout = 3",
            )
        };
        let mut t = kcp_tunnel(&env, tcp_mux, true, false, frps_more, frpc_more).await;
        assert!(is_listening(t.remote));
        t.frpc.kill();
        t.frps
            .wait_log("client exit success", Duration::from_secs(30));
        assert!(
            wait_port_closed(t.remote, Duration::from_secs(5)),
            "port {} still open after its client died",
            t.remote
        );
    }
}

/// frps' heartbeat deadline moves with every Ping: a client pinging every second outlives
/// `heartbeatTimeout = 2` many times over, and a silent one is dropped after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_deadline_moves_with_each_ping() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!("{}\ntransport.heartbeatTimeout = 2", frps_extra(false)),
    );
    let frpc = env.frpc(
        "frpc",
        &frpc_cfg(
            bind,
            "transport.heartbeatInterval = 1\ntransport.heartbeatTimeout = 30",
            false,
            false,
            false,
            echo,
            remote,
        ),
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(6)).await;
    check_payloads(remote).await;
    let log = frps.log_text();
    assert!(!log.contains("heartbeat timeout"), "{log}");
    // A client that stops pinging (frozen) is dropped 2 s after its last Ping.
    frpc.signal(19); // SIGSTOP
    frps.wait_log("heartbeat timeout", Duration::from_secs(10));
    frpc.signal(18); // SIGCONT
}
