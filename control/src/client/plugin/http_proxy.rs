//! `http_proxy` (`httpUser`, `httpPassword`): an HTTP forward proxy on each user connection,
//! as frp's `HTTPProxy`: `CONNECT host:port` tunnels (the pair then goes to the data plane),
//! other requests are forwarded (absolute-form URI) with hyper. With credentials set, a
//! request without the right `Proxy-Authorization: Basic …` gets `407` with
//! `Proxy-Authenticate: Basic`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::{ConnInfo, Plugin, Relay, UserConn};
use crate::config::ClientPluginConfig;
use crate::listen::os_error_text;
use crate::transport::websocket::Rewind;

/// frp's `httpProxyReadHeaderTimeout`.
const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest CONNECT request head read (Go's default 1 MiB + 4096).
const MAX_HEAD: usize = (1 << 20) + 4096;

/// `httpUser`/`httpPassword`; no check when both are empty.
#[derive(Clone, Default)]
pub(crate) struct BasicAuth {
    user: String,
    password: String,
}

impl BasicAuth {
    pub(crate) fn new(user: &str, password: &str) -> Self {
        BasicAuth {
            user: user.into(),
            password: password.into(),
        }
    }

    pub(crate) fn is_off(&self) -> bool {
        self.user.is_empty() && self.password.is_empty()
    }

    /// Whether an `Authorization`-style value (`Basic base64(user:password)`) carries the
    /// configured credentials (compared in constant time).
    pub(crate) fn accepts(&self, value: Option<&[u8]>) -> bool {
        if self.is_off() {
            return true;
        }
        let Some(value) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
            return false;
        };
        let Some((_, encoded)) = value.split_once(' ') else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return false;
        };
        let (u, p) = (&decoded[..colon], &decoded[colon + 1..]);
        bool::from(u.ct_eq(self.user.as_bytes())) & bool::from(p.ct_eq(self.password.as_bytes()))
    }
}

pub(crate) struct HttpProxy {
    auth: Arc<BasicAuth>,
}

impl HttpProxy {
    pub(crate) fn new(cfg: &ClientPluginConfig) -> Self {
        HttpProxy {
            auth: Arc::new(BasicAuth::new(&cfg.http_user, &cfg.http_password)),
        }
    }
}

impl Plugin for HttpProxy {
    fn name(&self) -> &'static str {
        "http_proxy"
    }

    fn handle(&self, user: UserConn, info: ConnInfo, relay: Relay) -> BoxFuture<'static, ()> {
        let auth = self.auth.clone();
        async move {
            let name = info.proxy.clone();
            let mut user = user;
            // The whole request head first (so that a malformed one is answered only after it
            // was read: no unread bytes turn the close into a reset that eats the answer).
            let mut head = Vec::new();
            let read_head = async {
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                    let n = user.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                Ok::<_, std::io::Error>(())
            };
            match tokio::time::timeout(READ_HEADER_TIMEOUT, read_head).await {
                Ok(Ok(())) if !head.is_empty() => {}
                _ => return,
            }
            if head.len() >= 7 && head[..7].eq_ignore_ascii_case(b"CONNECT") {
                connect(user, head, &auth, &name, relay).await;
                return;
            }
            let io = Rewind::new(head, user);
            let svc = hyper::service::service_fn(move |req| {
                let auth = auth.clone();
                async move { Ok::<_, Infallible>(forward(req, &auth).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_HEADER_TIMEOUT)
                .title_case_headers(true)
                .serve_connection(TokioIo::new(io), svc)
                .await;
            if let Err(e) = served {
                debug!("[{name}] http_proxy: {e}");
            }
        }
        .boxed()
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

/// Go's `http.Error` ([`super::go_error`]).
fn go_error(status: StatusCode, msg: &str) -> Response<Body> {
    super::go_error(status, msg).map(|b| b.map_err(|e| match e {}).boxed())
}

/// A plain (non-CONNECT) proxy request: checked, stripped of hop-by-hop and proxy headers
/// (frp's `removeProxyHeaders`), sent to the origin, its response streamed back.
async fn forward(mut req: Request<Incoming>, auth: &BasicAuth) -> Response<Body> {
    let creds = req.headers().get(header::PROXY_AUTHORIZATION);
    if !auth.accepts(creds.map(|v| v.as_bytes())) {
        if creds.is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut r = text(StatusCode::PROXY_AUTHENTICATION_REQUIRED, String::new());
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic"),
        );
        return r;
    }
    let uri = req.uri().clone();
    let scheme = uri.scheme_str().unwrap_or("");
    if scheme != "http" {
        return go_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("unsupported protocol scheme \"{scheme}\""),
        );
    }
    let Some(authority) = uri.authority() else {
        return go_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "http: no Host in request URL",
        );
    };
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    for h in [
        "Proxy-Connection",
        "Connection",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailers",
        "Transfer-Encoding",
        "Upgrade",
    ] {
        req.headers_mut().remove(h);
    }
    if !req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = path.parse().unwrap_or_default();
    let stream = match TcpStream::connect(&addr).await {
        Ok(s) => s,
        Err(e) => {
            return go_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("dial tcp {addr}: connect: {}", os_error_text(&e)),
            );
        }
    };
    let handshake = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(stream));
    let (mut sender, conn) = match handshake.await {
        Ok(x) => x,
        Err(e) => return go_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    tokio::spawn(conn);
    match sender.send_request(req).await {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(e) => go_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `CONNECT host:port`: the request head is read (frp reads it with Go's
/// `http.ReadRequest`), checked, the target dialed, `200 OK` sent and the pair handed to the
/// data plane with the bytes that followed the head.
async fn connect(
    mut user: UserConn,
    mut head: Vec<u8>,
    auth: &BasicAuth,
    name: &str,
    relay: Relay,
) {
    let read_head = async {
        let mut buf = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&head) {
                Ok(httparse::Status::Complete(n)) => {
                    let target = req.path.unwrap_or("").to_string();
                    let creds = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("Proxy-Authorization"))
                        .map(|h| h.value.to_vec());
                    return Ok((n, target, creds));
                }
                Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => return Err("request head too large".to_string()),
                Err(e) => return Err(format!("malformed CONNECT request: {e}")),
            }
            let n = user.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before the request head ended".into());
            }
            head.extend_from_slice(&buf[..n]);
        }
    };
    let (n, target, creds) = match tokio::time::timeout(READ_HEADER_TIMEOUT, read_head).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!("[{name}] http_proxy: {e}");
            let _ = user
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
                .await;
            let _ = user.shutdown().await;
            return;
        }
        Err(_) => return,
    };
    if !auth.accepts(creds.as_deref()) {
        if creds.is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = user
            .write_all(b"HTTP/1.1 407 Not authorized\r\nConnection: close\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n")
            .await;
        let _ = user.shutdown().await;
        return;
    }
    let remote = match TcpStream::connect(target.as_str()).await {
        Ok(s) => s,
        Err(e) => {
            debug!("[{name}] http_proxy: dial {target}: {e}");
            let _ = user
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
            let _ = user.shutdown().await;
            return;
        }
    };
    crate::transport::tune_tcp(&remote, 0);
    if user.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.is_err() {
        return;
    }
    let rest = BytesMut::from(&head[n..]);
    relay
        .join(user, dataplane::Endpoint::Tcp(remote), rest)
        .await;
}
