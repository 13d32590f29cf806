//! The HTTP bridge plugins (`localAddr`, `hostHeaderRewrite`, `requestHeaders.set`), as frp's
//! `httputil.ReverseProxy` based ones: each user connection is served as HTTP (`http2http`,
//! `http2https`) or HTTPS (`https2http`, `https2https`: `crtPath`/`keyPath` or a generated
//! self-signed certificate, HTTP/2 when `enableHTTP2`), and every request is forwarded with
//! hyper to `localAddr` over HTTP/1.1, in plain text (`*2http`) or TLS without verification
//! (`*2https`, as frp's `InsecureSkipVerify`).
//!
//! Headers as frp's `Rewrite` leaves them: hop-by-hop headers and `X-Forwarded-*` are dropped;
//! `http2https` passes on the user's `X-Forwarded-For`/`-Host`/`-Proto`; `https2http` and
//! `https2https` append the user's address (from StartWorkConn) to `X-Forwarded-For` and set
//! `X-Forwarded-Host` and `X-Forwarded-Proto: https`; the `Host` stays the user's unless
//! `hostHeaderRewrite` is set; `requestHeaders.set` last. Over HTTPS, a request whose `Host`
//! is not the TLS server name gets `421`. A failed forward gets `502` and frp's
//! `http: proxy error: …` warning.

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

use super::static_file::MAX_HEAD;
use super::{ConnInfo, Plugin, Relay, UserConn};
use crate::config::{ClientPluginConfig, ClientPluginType};
use crate::listen::os_error_text;

/// frp's `httpBridgeReadHeaderTimeout`.
const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

struct Inner {
    name: &'static str,
    kind: ClientPluginType,
    local_addr: String,
    host_rewrite: Option<HeaderValue>,
    set: Vec<(HeaderName, HeaderValue)>,
    /// The user side's TLS (https2*); the error frp's plugin creation would report.
    accept: Option<Result<TlsAcceptor, String>>,
    /// The local side's TLS (*2https).
    connect: Option<TlsConnector>,
}

pub(crate) struct HttpBridge {
    inner: Arc<Inner>,
}

impl HttpBridge {
    pub(crate) fn new(cfg: &ClientPluginConfig, proxy: &str) -> Self {
        let kind = cfg.plugin_type;
        let name = match kind {
            ClientPluginType::Http2Http => "http2http",
            ClientPluginType::Http2Https => "http2https",
            ClientPluginType::Https2Http => "https2http",
            _ => "https2https",
        };
        let https_in = matches!(
            kind,
            ClientPluginType::Https2Http | ClientPluginType::Https2Https
        );
        let https_out = matches!(
            kind,
            ClientPluginType::Http2Https | ClientPluginType::Https2Https
        );
        let accept = https_in.then(|| {
            let r = crate::tls::server_config(&cfg.crt_path, &cfg.key_path, "")
                .map(|c| {
                    let mut c = Arc::unwrap_or_clone(c);
                    c.alpn_protocols = if cfg.enable_http2 {
                        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
                    } else {
                        vec![b"http/1.1".to_vec()]
                    };
                    TlsAcceptor::from(Arc::new(c))
                })
                .map_err(|e| format!("gen TLS config error: {e}"));
            if let Err(e) = &r {
                warn!("[{proxy}] {e}");
            }
            r
        });
        let connect = https_out
            .then(|| crate::tls::client_config("", "", "").ok())
            .flatten()
            .map(TlsConnector::from);
        let set = cfg
            .request_headers
            .set
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        HttpBridge {
            inner: Arc::new(Inner {
                name,
                kind,
                local_addr: cfg.local_addr.clone(),
                host_rewrite: (!cfg.host_header_rewrite.is_empty())
                    .then(|| HeaderValue::from_str(&cfg.host_header_rewrite).ok())
                    .flatten(),
                set,
                accept,
                connect,
            }),
        }
    }
}

/// What a request's forward needs to know about its connection.
struct ConnCtx {
    inner: Arc<Inner>,
    proxy: String,
    /// The address `X-Forwarded-For` gets (https2*): the user's, from StartWorkConn.
    client_ip: Option<IpAddr>,
    /// The TLS server name the user asked for (https2*).
    sni: Option<String>,
    /// Idle connections to localAddr, reused by the next request.
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

impl Plugin for HttpBridge {
    fn name(&self) -> &'static str {
        self.inner.name
    }

    fn handle(&self, user: UserConn, info: ConnInfo, _relay: Relay) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        async move {
            let mut ctx = ConnCtx {
                inner: inner.clone(),
                proxy: info.proxy.clone(),
                client_ip: info.src.map(|a| a.ip()),
                sni: None,
                idle: Mutex::new(Vec::new()),
            };
            match &inner.accept {
                None => serve(user, false, ctx).await,
                Some(Err(e)) => debug!("[{}] {e}", info.proxy),
                Some(Ok(acceptor)) => {
                    let tls = match acceptor.accept(user).await {
                        Ok(t) => t,
                        Err(e) => {
                            debug!("[{}] {}: TLS handshake error: {e}", info.proxy, inner.name);
                            return;
                        }
                    };
                    let (_, conn) = tls.get_ref();
                    ctx.sni = conn.server_name().map(str::to_string);
                    let h2 = conn.alpn_protocol() == Some(b"h2");
                    serve(tls, h2, ctx).await;
                }
            }
        }
        .boxed()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S, h2: bool, ctx: ConnCtx) {
    let ctx = Arc::new(ctx);
    let proxy = ctx.proxy.clone();
    let name = ctx.inner.name;
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(forward(req, &ctx).await) }
    });
    // By value: an upgrade (WebSocket) takes the connection over.
    let io = TokioIo::new(LingerOnDrop(Some(io)));
    let served = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD as u32)
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(READ_HEADER_TIMEOUT)
            .title_case_headers(true)
            .max_buf_size(MAX_HEAD)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = served {
        debug!("[{proxy}] {name}: {e}");
    }
}

/// The user's connection as hyper holds it: once dropped (served, or at the end of an
/// upgraded session), it is closed as [`super::linger_close`] closes it, so that an answer
/// written just before (a 431 with request bytes still unread) is not lost to a reset.
struct LingerOnDrop<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(Option<S>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> LingerOnDrop<S> {
    fn io(&mut self) -> Pin<&mut S> {
        Pin::new(self.0.as_mut().expect("held until dropped"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for LingerOnDrop<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().io().poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for LingerOnDrop<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().io().poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().io().poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().io().poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for LingerOnDrop<S> {
    fn drop(&mut self) {
        if let Some(mut io) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { super::linger_close(&mut io).await });
        }
    }
}

/// The protocol a request asks to switch to (`Connection: Upgrade` and `Upgrade: X`), which
/// Go's reverse proxy passes on (WebSocket through https2http, e.g. frp's wss transport).
fn upgrade_of(h: &HeaderMap) -> Option<HeaderValue> {
    let asked = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asked.then(|| h.get(header::UPGRADE).cloned()).flatten()
}

/// Marks `h` as switching to `proto` (after the hop-by-hop headers were removed).
fn set_upgrade(h: &mut HeaderMap, proto: HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, proto);
}

type Body = BoxBody<Bytes, hyper::Error>;

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

/// Go's `httpguts`-style host canonicalisation (frp's `CanonicalHost`): lower case, no port,
/// no trailing dot.
fn canonical_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    let colons = host.matches(':').count();
    let host = if colons == 1 || (host.starts_with('[') && host.contains("]:")) {
        match host.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => host,
        }
    } else {
        host
    };
    host.trim_end_matches('.').to_string()
}

/// Go's hop-by-hop headers, and those the `Connection` header names.
fn remove_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in [
        "Connection",
        "Proxy-Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Te",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    ] {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

async fn forward(mut req: Request<Incoming>, ctx: &ConnCtx) -> Response<Body> {
    let inner = &ctx.inner;
    let upgrade = upgrade_of(req.headers());
    let user_upgraded = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let in_host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    // frp's misdirected request check.
    if let Some(sni) = &ctx.sni {
        let sni = canonical_host(sni);
        if !sni.is_empty() && sni != canonical_host(&in_host) {
            return empty(StatusCode::MISDIRECTED_REQUEST);
        }
    }
    let (mut parts, body) = req.into_parts();
    let h = &mut parts.headers;
    let in_xff: Vec<HeaderValue> = h.get_all("X-Forwarded-For").iter().cloned().collect();
    remove_hop_by_hop(h);
    let kept: Vec<(&str, Vec<HeaderValue>)> = ["X-Forwarded-Host", "X-Forwarded-Proto"]
        .into_iter()
        .map(|n| (n, h.get_all(n).iter().cloned().collect()))
        .collect();
    for n in ["X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"] {
        h.remove(n);
    }
    match inner.kind {
        ClientPluginType::Http2Https => {
            for v in in_xff {
                h.append("X-Forwarded-For", v);
            }
            for (n, vs) in kept {
                for v in vs {
                    h.append(n, v);
                }
            }
        }
        ClientPluginType::Https2Http | ClientPluginType::Https2Https => {
            // Go's SetXForwarded after copying the user's X-Forwarded-For.
            if let Some(ip) = ctx.client_ip {
                let prior: Vec<&str> = in_xff.iter().filter_map(|v| v.to_str().ok()).collect();
                let xff = if prior.is_empty() {
                    ip.to_string()
                } else {
                    format!("{}, {ip}", prior.join(", "))
                };
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    h.insert("X-Forwarded-For", v);
                }
            } else {
                for v in in_xff {
                    h.append("X-Forwarded-For", v);
                }
            }
            if let Ok(v) = HeaderValue::from_str(&in_host) {
                h.insert("X-Forwarded-Host", v);
            }
            h.insert("X-Forwarded-Proto", HeaderValue::from_static("https"));
        }
        _ => {}
    }
    let host = match &inner.host_rewrite {
        Some(v) => Some(v.clone()),
        None => HeaderValue::from_str(&in_host).ok(),
    };
    if let Some(v) = host {
        h.insert(header::HOST, v);
    }
    for (k, v) in &inner.set {
        h.insert(k.clone(), v.clone());
    }
    if let Some(proto) = &upgrade {
        set_upgrade(h, proto.clone());
    }
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap_or_default();
    parts.version = Version::HTTP_11;
    let out = Request::from_parts(parts, body);

    let mut sender = match sender(ctx).await {
        Ok(s) => s,
        Err(e) => {
            warn!("[{}] http: proxy error: {e}", ctx.proxy);
            return empty(StatusCode::BAD_GATEWAY);
        }
    };
    match sender.send_request(out).await {
        Ok(mut resp) => {
            let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            let proto = upgrade_of(resp.headers());
            match (switched, user_upgraded, proto) {
                (true, Some(user), Some(proto)) => {
                    // The local service switched: from now on the two connections are one
                    // byte stream, until either side closes.
                    let local = hyper::upgrade::on(&mut resp);
                    let name = ctx.proxy.clone();
                    tokio::spawn(async move {
                        match tokio::try_join!(user, local) {
                            Ok((user, local)) => {
                                let (mut user, mut local) =
                                    (TokioIo::new(user), TokioIo::new(local));
                                let _ = tokio::io::copy_bidirectional(&mut user, &mut local).await;
                            }
                            Err(e) => debug!("[{name}] upgrade: {e}"),
                        }
                    });
                    remove_hop_by_hop(resp.headers_mut());
                    set_upgrade(resp.headers_mut(), proto);
                }
                _ => {
                    if !switched && let Ok(mut idle) = ctx.idle.lock() {
                        idle.push(sender);
                    }
                    remove_hop_by_hop(resp.headers_mut());
                }
            }
            resp.map(|b| b.boxed())
        }
        Err(e) => {
            warn!("[{}] http: proxy error: {e}", ctx.proxy);
            empty(StatusCode::BAD_GATEWAY)
        }
    }
}

/// An idle connection to localAddr, or a new one.
async fn sender(ctx: &ConnCtx) -> Result<SendRequest<Incoming>, String> {
    loop {
        let next = ctx.idle.lock().ok().and_then(|mut v| v.pop());
        match next {
            Some(s) if s.is_ready() => return Ok(s),
            Some(_) => continue,
            None => break,
        }
    }
    let addr = &ctx.inner.local_addr;
    let tcp = TcpStream::connect(addr.as_str())
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {}", os_error_text(&e)))?;
    crate::transport::tune_tcp(&tcp, 0);
    let builder = {
        let mut b = hyper::client::conn::http1::Builder::new();
        b.title_case_headers(true);
        b
    };
    match &ctx.inner.connect {
        Some(connector) => {
            let host = addr
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(addr)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = crate::tls::server_name(host).map_err(|e| e.to_string())?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            let (s, conn) = builder
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn.with_upgrades());
            Ok(s)
        }
        None => {
            let (s, conn) = builder
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn.with_upgrades());
            Ok(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_compare_as_frp_compares_them() {
        assert_eq!(canonical_host("Example.COM:443"), "example.com");
        assert_eq!(canonical_host("example.com."), "example.com");
        assert_eq!(canonical_host("[::1]:80"), "::1");
        assert_eq!(canonical_host("::1"), "::1");
    }
}
