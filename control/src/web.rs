//! The `webServer` plumbing shared by frpc's admin API and frps' dashboard: binding (plain or
//! TLS), serving with hyper, frp's Basic auth middleware and its JSON responses
//! (`pkg/util/http`, `pkg/util/net/http.go`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::WebServerConfig;

/// Every response body of the web servers.
pub type Body = Full<Bytes>;

/// frp's `defaultReadTimeout`.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// frp delays a failed Basic auth by 200 ms (`SetAuthFailDelay`).
const AUTH_FAIL_DELAY: Duration = Duration::from_millis(200);
/// The largest request body accepted (a config file).
const MAX_BODY: usize = 16 << 20;

/// The web server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// Go's `net.Listen` error, as frp returns it (`listen tcp ADDR: bind: …`).
    #[error("{0}")]
    Listen(std::io::Error),
    #[error("webServer.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// A bound `webServer` listener (plain or TLS).
pub struct Listener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Listener {
    /// Binds `webServer.addr:port` (frp: a TLS listener when `webServer.tls` is set).
    pub async fn bind(cfg: &WebServerConfig) -> Result<Listener, WebError> {
        let addr = if cfg.addr.contains(':') {
            format!("[{}]:{}", cfg.addr, cfg.port)
        } else {
            format!("{}:{}", cfg.addr, cfg.port)
        };
        let tcp = crate::listen::bind(&addr).await.map_err(WebError::Listen)?;
        let tls = match &cfg.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                &t.cert_file,
                &t.key_file,
                "",
            )?)),
            None => None,
        };
        Ok(Listener { tcp, tls })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves HTTP/1.1 with `handler` until the task is dropped.
    pub async fn serve<F, Fut>(self, name: &'static str, handler: F)
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(READ_TIMEOUT);
        let builder = Arc::new(builder);
        let handler = Arc::new(handler);
        let mut acceptor = crate::listen::Acceptor::new(format!("[{name}] "));
        loop {
            let (tcp, remote) = acceptor.accept(&self.tcp).await;
            let (builder, handler, tls) = (builder.clone(), handler.clone(), self.tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let result = match tls {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(s) => builder.serve_connection(TokioIo::new(s), svc).await,
                        Err(e) => {
                            debug!("{name}: TLS handshake with {remote}: {e}");
                            return;
                        }
                    },
                    None => builder.serve_connection(TokioIo::new(tcp), svc).await,
                };
                if let Err(e) = result {
                    debug!("{name}: connection from {remote}: {e}");
                }
            });
        }
    }
}

/// frp's `HTTPAuthMiddleware`: no check when user and password are both empty, else Basic
/// credentials compared in constant time.
pub fn authorized<B>(req: &Request<B>, user: &str, password: &str) -> bool {
    if user.is_empty() && password.is_empty() {
        return true;
    }
    let Some((u, p)) = basic_credentials(req) else {
        return false;
    };
    let ok_user: bool = u.as_bytes().ct_eq(user.as_bytes()).into();
    let ok_pass: bool = p.as_bytes().ct_eq(password.as_bytes()).into();
    ok_user & ok_pass
}

fn basic_credentials<B>(req: &Request<B>) -> Option<(String, String)> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The `Authorization` header value for `user:password`.
pub fn basic_auth_header(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// 401 as frp sends it (after its 200 ms delay).
pub async fn unauthorized() -> Response<Body> {
    tokio::time::sleep(AUTH_FAIL_DELAY).await;
    let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Restricted\""),
    );
    r
}

/// A plain-text response (Go's `http.Error` shape when `body` ends with a newline).
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 200 with an empty body (frp's handlers that return nothing).
pub fn ok_empty() -> Response<Body> {
    Response::new(Full::new(Bytes::new()))
}

/// A JSON response, encoded like Go's `json.Encoder` (trailing newline).
pub fn json<T: Serialize + ?Sized>(status: StatusCode, v: &T) -> Response<Body> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// frp's `GeneralResponse` — its Go struct has no JSON tags, so the keys are `Code` and `Msg`.
#[derive(Debug, Serialize)]
pub struct GeneralResponse<'a> {
    #[serde(rename = "Code")]
    pub code: u16,
    #[serde(rename = "Msg")]
    pub msg: &'a str,
}

/// An API error: `{"Code":n,"Msg":"…"}` with status n.
pub fn error(status: StatusCode, msg: &str) -> Response<Body> {
    warn!("http response error: {msg}");
    json(
        status,
        &GeneralResponse {
            code: status.as_u16(),
            msg,
        },
    )
}

/// Reads a request body (up to 16 MiB).
pub async fn read_body(req: Request<Incoming>) -> Result<Bytes, String> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

/// The query string's parameters (last value wins; `+` and `%XX` decoded).
pub fn query<B>(req: &Request<B>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The path's segments after the leading `/`, percent-decoded.
pub fn segments<B>(req: &Request<B>) -> Vec<String> {
    req.uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Logs a request the way frp's `NewRequestLogger` does.
pub fn log_request(method: &Method, path: &str, status: StatusCode) {
    info!("http request: [{method} {path}] code [{}]", status.as_u16());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Eb+c"), "a.b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn basic_auth() {
        let req = Request::builder()
            .header(header::AUTHORIZATION, basic_auth_header("admin", "p:w"))
            .body(())
            .unwrap();
        assert!(authorized(&req, "admin", "p:w"));
        assert!(!authorized(&req, "admin", "p"));
        let anon = Request::builder().body(()).unwrap();
        assert!(!authorized(&anon, "admin", "p:w"));
        assert!(authorized(&anon, "", ""));
    }

    #[test]
    fn errors_use_go_field_names() {
        let r = error(StatusCode::BAD_REQUEST, "bad");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let v = serde_json::to_string(&GeneralResponse {
            code: 400,
            msg: "bad",
        })
        .unwrap();
        assert_eq!(v, r#"{"Code":400,"Msg":"bad"}"#);
    }
}
