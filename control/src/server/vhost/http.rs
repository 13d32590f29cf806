//! http proxies: a reverse proxy on `vhostHTTPPort` (spec §11.1), built on hyper.
//!
//! Clients speak HTTP/1.1 or cleartext HTTP/2 with prior knowledge. Each request is routed by
//! (host, path, Basic-auth user), checked against the route's `httpUser`/`httpPassword`,
//! rewritten the way frp's `httputil.ReverseProxy` does (hop-by-hop headers, `X-Forwarded-*`,
//! `hostHeaderRewrite`, `requestHeaders`), and sent as HTTP/1.1 over an upstream connection:
//! one frp work connection (StartWorkConn with the client's address, no destination, §8.1)
//! seen through the proxy's encryption/compression layers. Upstream connections are kept per
//! (route, proxy) — at most [`MAX_IDLE_PER_KEY`] idle, for at most [`IDLE_TIMEOUT`].
//!
//! Upgrades (WebSocket, …) and CONNECT tunnels are passed through: once the backend agrees
//! (101, or 2xx to CONNECT), both hyper connections are upgraded and bytes copied both ways.
//!
//! Failures: no route or no usable work connection or a broken upstream → 404 with frp's page
//! (or `custom404Page`); no response headers within `vhostHTTPTimeout` after the request was
//! sent → 504.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{Member, Route, Vhost, canonical_host, parse_basic_auth};
use crate::crypto;
use crate::layered::Layered;
use crate::msg::StartWorkConn;
use crate::server::State;
use crate::transport::{self, Conn};

/// Idle upstream connections kept per (route, proxy), like Go's `MaxIdleConnsPerHost`.
pub(crate) const MAX_IDLE_PER_KEY: usize = 5;
/// How long an idle upstream connection is kept.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client has to send a request's headers (Go's `ReadHeaderTimeout`).
const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// How many bytes of request line and headers are read before the request is answered 431:
/// Go's `http.Server` reads up to `MaxHeaderBytes` (frps leaves it at
/// `DefaultMaxHeaderBytes`, 1 MiB) plus 4096 bytes of slack.
const MAX_HEAD_BYTES: usize = (1 << 20) + 4096;
/// How many header fields a request may have. Go counts none (only bytes); hyper parses into
/// an array of this size, allocated for each request head (hyper's default is 100, far
/// fewer than browsers and proxies send through frp). Past a few thousand the allocation
/// costs more than the request, so this stays well above anything a client sends but below
/// what 1 MiB of tiny headers could hold.
const MAX_HEADERS: usize = 2048;

/// What the client gets back.
type RespBody = BoxBody<Bytes, hyper::Error>;
/// An upstream connection, seen by hyper's HTTP/1.1 client.
type Upstream = SendRequest<UpBody>;

type ServerBuilder = hyper_util::server::conn::auto::Builder<TokioExecutor>;

/// The HTTP server settings of the vhost (frp's `http.Server` with ReadHeaderTimeout 60 s
/// and Go's default header limit).
fn server_builder() -> Arc<ServerBuilder> {
    let mut builder = ServerBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .title_case_headers(true)
        .keep_alive(true);
    Arc::new(builder)
}

/// Accepts on `vhostHTTPPort` and serves each connection with hyper.
pub(crate) async fn serve(st: Arc<State>, l: TcpListener) {
    let builder = server_builder();
    let mut acceptor = crate::listen::Acceptor::new("");
    loop {
        let (tcp, remote) = super::accept(&l, &mut acceptor).await;
        tokio::spawn(serve_conn(st.clone(), builder.clone(), tcp, remote));
    }
}

/// Serves one HTTP connection that arrived on bindPort (vhostHTTPPort = bindPort).
pub(crate) async fn serve_shared(st: Arc<State>, tcp: TcpStream, remote: SocketAddr) {
    static BUILDER: std::sync::OnceLock<Arc<ServerBuilder>> = std::sync::OnceLock::new();
    let builder = BUILDER.get_or_init(server_builder).clone();
    let _ = tcp.set_nodelay(true);
    serve_conn(st, builder, tcp, remote).await;
}

async fn serve_conn(
    st: Arc<State>,
    builder: Arc<ServerBuilder>,
    tcp: TcpStream,
    remote: SocketAddr,
) {
    let svc = hyper::service::service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(handle(st, remote, req).await) }
    });
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
        .await
    {
        debug!("http connection from {remote}: {e}");
    }
}

/// Where a request goes, as frp works it out before proxying.
struct Routing {
    /// `req.Host` in Go terms: the absolute URI's authority, else the Host header.
    host_raw: String,
    /// The request is in absolute form (an HTTP proxy request) — or a CONNECT.
    proxy_form: bool,
    route: Option<Arc<Route>>,
}

fn route_request(vhost: &Vhost, req: &Request<Incoming>) -> Routing {
    let h2 = req.version() == Version::HTTP_2;
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let proxy_form = !h2 && authority.is_some();
    let host_raw = authority
        .or_else(|| header_str(req.headers(), header::HOST).map(str::to_string))
        .unwrap_or_default();
    let host = canonical_host(&host_raw);
    let path = decode_path(req.uri().path());
    let user = route_user(req.headers(), proxy_form);
    let route = vhost
        .http
        .lock()
        .unwrap()
        .lookup(&host, &path, &user)
        .cloned();
    Routing {
        host_raw,
        proxy_form,
        route,
    }
}

/// The user a request is routed by: from `Proxy-Authorization` for proxy-form requests
/// (falling back to `Authorization`, as frp does), else from `Authorization`.
fn route_user(h: &HeaderMap, proxy_form: bool) -> String {
    let basic = |name| header_str(h, name).and_then(parse_basic_auth);
    let creds = if proxy_form {
        basic(header::PROXY_AUTHORIZATION).or_else(|| basic(header::AUTHORIZATION))
    } else {
        basic(header::AUTHORIZATION)
    };
    creds.map(|(u, _)| u).unwrap_or_default()
}

/// frp's `checkRouteAuthByRequest` (no fallback to `Authorization` for proxy-form requests).
fn authorized(route: &Route, h: &HeaderMap, proxy_form: bool) -> bool {
    if !route.needs_auth() {
        return true;
    }
    let name = if proxy_form {
        header::PROXY_AUTHORIZATION
    } else {
        header::AUTHORIZATION
    };
    match header_str(h, name).and_then(parse_basic_auth) {
        Some((u, p)) => u == route.cfg.http_user && p == route.cfg.http_pwd,
        None => false,
    }
}

async fn handle(st: Arc<State>, remote: SocketAddr, req: Request<Incoming>) -> Response<RespBody> {
    // Go's server refuses a request with several Host headers before any handler runs.
    if req.version() < Version::HTTP_2 && req.headers().get_all(header::HOST).iter().count() > 1 {
        return bad_request("too many Host headers");
    }
    let vhost = &st.vhost;
    let routing = route_request(vhost, &req);
    if let Some(route) = &routing.route
        && !authorized(route, req.headers(), routing.proxy_form)
    {
        return unauthorized(routing.proxy_form);
    }
    let Some(route) = routing.route.clone() else {
        debug!(
            "http request for host [{}] path [{}]: no route found",
            routing.host_raw,
            req.uri().path()
        );
        return not_found(vhost).await;
    };
    let Some(member) = route.pick() else {
        return not_found(vhost).await;
    };
    let host = routing.host_raw.clone();
    match forward(&st, &route, &member, remote, routing, req).await {
        Ok(resp) => resp,
        Err(Failure::Timeout) => {
            warn!("do http proxy request [host: {host}] error: timeout awaiting response headers");
            status_only(StatusCode::GATEWAY_TIMEOUT)
        }
        Err(Failure::Other(e)) => {
            warn!("do http proxy request [host: {host}] error: {e}");
            not_found(vhost).await
        }
    }
}

enum Failure {
    Timeout,
    Other(String),
}

async fn forward(
    st: &Arc<State>,
    route: &Route,
    member: &Member,
    remote: SocketAddr,
    routing: Routing,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Failure> {
    let connect = req.method() == Method::CONNECT;
    let client_version = req.version();
    let upgrade = if connect {
        None
    } else {
        upgrade_type(req.headers())
    };
    let client_upgrade = (connect || upgrade.is_some()).then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    if !connect {
        rewrite_request(
            &mut parts.headers,
            &route.cfg,
            &routing.host_raw,
            remote,
            upgrade.as_ref(),
        );
        parts.uri = upstream_uri(&parts.uri, routing.proxy_form);
    } else if !parts.headers.contains_key(header::HOST) {
        insert(&mut parts.headers, header::HOST, &routing.host_raw);
    }
    parts.version = Version::HTTP_11;
    let (body, sent) = UpBody::new(body);
    let up_req = Request::from_parts(parts, body);

    let key = PoolKey {
        member: member.id,
        route: format!(
            "{}\n{}\n{}",
            route.cfg.domain, route.cfg.location, route.cfg.route_user
        ),
    };
    let timeout = Duration::from_secs(st.cfg.vhost_http_timeout.max(1) as u64);
    let response_deadline = async {
        // The clock starts once the request body is sent (Go's ResponseHeaderTimeout).
        let _ = sent.await;
        tokio::time::sleep(timeout).await;
    };
    let (mut resp, mut sender) = tokio::select! {
        r = send(st, member, remote, &key, up_req) => r.map_err(Failure::Other)?,
        _ = response_deadline => return Err(Failure::Timeout),
    };

    let status = resp.status();
    let tunnel = status == StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success());
    if tunnel {
        let Some(client_upgrade) = client_upgrade else {
            return Err(Failure::Other(format!(
                "backend switched protocols with {status} though none was requested"
            )));
        };
        if !connect && upgrade_type(resp.headers()) != upgrade {
            return Err(Failure::Other(
                "backend switched to a protocol other than the requested one".into(),
            ));
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let name = member.info.name.clone();
        tokio::spawn(async move {
            let (c, u) = tokio::join!(client_upgrade, upstream_upgrade);
            match (c, u) {
                (Ok(c), Ok(u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        debug!("[{name}] upgraded connection: {e}");
                    }
                }
                (c, u) => debug!(
                    "[{name}] upgrade failed: client {:?}, upstream {:?}",
                    c.err(),
                    u.err()
                ),
            }
        });
    } else {
        strip_hop_by_hop(resp.headers_mut());
        // Back to the pool once the response is read to its end, if the connection survives.
        let pool = st.vhost.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.pool.put(key, sender);
            }
        });
    }
    for (k, v) in &route.cfg.response_headers {
        set_header(resp.headers_mut(), k, v);
    }
    // Framing towards the client is ours: answer in the client's HTTP version.
    *resp.version_mut() = client_version;
    Ok(resp.map(|b| b.boxed()))
}

/// Sends the request on an idle upstream connection of `key`, or a new one. A pooled
/// connection the backend closed meanwhile gives the request back unsent; it then goes on a
/// new connection (as Go's transport retries).
async fn send(
    st: &Arc<State>,
    member: &Member,
    remote: SocketAddr,
    key: &PoolKey,
    req: Request<UpBody>,
) -> Result<(Response<Incoming>, Upstream), String> {
    let mut req = req;
    if let Some(mut sender) = st.vhost.pool.take(key) {
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, sender)),
            Err(mut e) => match e.take_message() {
                Some(back) => {
                    debug!(
                        "[{}] idle upstream connection was closed: {}",
                        member.info.name,
                        e.error()
                    );
                    req = back;
                }
                None => return Err(e.into_error().to_string()),
            },
        }
    }
    let mut sender = connect_upstream(st, member, remote).await?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok((resp, sender))
}

/// Opens a new upstream connection: a work connection of `member`, its layers, an HTTP/1.1
/// client handshake.
async fn connect_upstream(
    st: &Arc<State>,
    member: &Member,
    remote: SocketAddr,
) -> Result<Upstream, String> {
    let (src_addr, src_port) = transport::split_addr(&remote);
    let start = StartWorkConn {
        proxy_name: member.info.name.clone(),
        src_addr,
        src_port,
        ..Default::default()
    };
    let (conn, rest): (Conn, Vec<u8>) =
        st.open_work_conn(&member.ctl, &member.info, &start).await?;
    let (inbound, outbound) = crypto::work_conn_layers(
        Some(&st.key),
        member.info.use_encryption,
        member.info.use_compression,
    );
    // Traffic and current connections of http proxies count here (the data plane never
    // sees these connections).
    let io = crate::layered::Counted::new(
        Layered::new(conn, rest, inbound, outbound),
        member.info.counters.clone(),
    );
    // Response heads as Go's Transport reads them: no count limit (here MAX_HEADERS), up to
    // 10 MiB (`MaxResponseHeaderBytes` unset).
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .max_headers(MAX_HEADERS)
        .max_buf_size(10 << 20)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let name = member.info.name.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!("[{name}] upstream http connection: {e}");
        }
    });
    Ok(sender)
}

// --- request and response rewriting -------------------------------------------------------------

/// Hop-by-hop headers Go's reverse proxy removes in both directions.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in listed {
        h.remove(name.as_str());
    }
    for name in HOP_BY_HOP {
        h.remove(name);
    }
}

/// The protocol a request or response asks to switch to (`Connection: upgrade` + `Upgrade`).
fn upgrade_type(h: &HeaderMap) -> Option<HeaderValue> {
    let wants = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// The request rewriting of frp's `ReverseProxy.Rewrite` (spec §11.1).
fn rewrite_request(
    h: &mut HeaderMap,
    cfg: &super::RouteConfig,
    host_raw: &str,
    remote: SocketAddr,
    upgrade: Option<&HeaderValue>,
) {
    let te_trailers = h
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(h);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, u.clone());
    }
    // X-Forwarded-For: the incoming values, then the client's address.
    let prior: Vec<String> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let ip = remote.ip().to_string();
    let xff = if prior.is_empty() {
        ip
    } else {
        format!("{}, {ip}", prior.join(", "))
    };
    h.remove("forwarded");
    insert(h, HeaderName::from_static("x-forwarded-for"), &xff);
    insert(h, HeaderName::from_static("x-forwarded-host"), host_raw);
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    let host = if cfg.host_header_rewrite.is_empty() {
        host_raw
    } else {
        cfg.host_header_rewrite.as_str()
    };
    insert(h, header::HOST, host);
    for (k, v) in &cfg.headers {
        // Go writes the request's Host field, never a "Host" entry of the header map.
        if !k.eq_ignore_ascii_case("host") {
            set_header(h, k, v);
        }
    }
}

/// The upstream request target: origin-form, or the absolute URI of a proxy-form request.
fn upstream_uri(uri: &Uri, proxy_form: bool) -> Uri {
    if proxy_form {
        return uri.clone();
    }
    let pq = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

fn insert(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// `Header.Set` with a name and value from config; invalid ones are skipped.
fn set_header(h: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        h.insert(n, v);
    }
}

fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Go routes on `URL.Path`, which is percent-decoded.
fn decode_path(path: &str) -> String {
    if !path.contains('%') {
        return path.to_string();
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

// --- canned responses ---------------------------------------------------------------------------

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn status_only(status: StatusCode) -> Response<RespBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// 400 as Go's `http.Server` answers a request it cannot read (`badRequestError`), and the
/// connection is closed after it.
fn bad_request(why: &str) -> Response<RespBody> {
    let mut r = Response::new(full(format!("400 Bad Request: {why}")));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// 404 with frp's page (or `custom404Page`).
async fn not_found(vhost: &Vhost) -> Response<RespBody> {
    let mut r = Response::new(full(vhost.not_found_page().await));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// 401 (or 407 for proxy-form requests) as Go's `http.Error` writes it.
fn unauthorized(proxy_form: bool) -> Response<RespBody> {
    let (status, challenge) = if proxy_form {
        (
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            header::PROXY_AUTHENTICATE,
        )
    } else {
        (StatusCode::UNAUTHORIZED, header::WWW_AUTHENTICATE)
    };
    let text = format!("{}\n", status.canonical_reason().unwrap_or_default());
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        challenge,
        HeaderValue::from_static("Basic realm=\"Restricted\""),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    r
}

// --- upstream body and pool ---------------------------------------------------------------------

/// The request body sent upstream; tells when it has been sent in full.
pub(crate) struct UpBody {
    inner: Incoming,
    sent: Option<oneshot::Sender<()>>,
}

impl UpBody {
    /// The body, and a future that resolves once it has been sent (or dropped).
    fn new(inner: Incoming) -> (UpBody, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let sent = if inner.is_end_stream() {
            None // nothing to send: rx resolves at once
        } else {
            Some(tx)
        };
        (UpBody { inner, sent }, rx)
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if (r.is_none() || this.inner.is_end_stream())
            && let Some(tx) = this.sent.take()
        {
            let _ = tx.send(());
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Idle upstream connections by (route, proxy registration).
#[derive(Default)]
pub(crate) struct UpstreamPool {
    idle: Mutex<HashMap<PoolKey, Vec<(Upstream, Instant)>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    member: u64,
    route: String,
}

impl UpstreamPool {
    fn take(&self, key: &PoolKey) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.get_mut(key)?;
        let mut found = None;
        while let Some((s, since)) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && s.is_ready() {
                found = Some(s);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    fn put(&self, key: PoolKey, s: Upstream) {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push((s, Instant::now()));
        }
    }

    /// Drops the idle connections of a proxy registration that went away.
    pub(crate) fn forget_member(&self, member: u64) {
        self.idle.lock().unwrap().retain(|k, _| k.member != member);
    }

    fn reap(&self) {
        let mut idle = self.idle.lock().unwrap();
        for list in idle.values_mut() {
            list.retain(|(s, since)| since.elapsed() < IDLE_TIMEOUT && !s.is_closed());
        }
        idle.retain(|_, l| !l.is_empty());
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().values().map(Vec::len).sum()
    }
}

/// Closes upstream connections idle for longer than [`IDLE_TIMEOUT`].
pub(crate) async fn reap_idle(vhost: Arc<Vhost>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        vhost.pool.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoded_paths() {
        assert_eq!(decode_path("/api%2Fv1"), "/api/v1");
        assert_eq!(decode_path("/a%20b"), "/a b");
        assert_eq!(decode_path("/bad%zz"), "/bad%zz");
        assert_eq!(decode_path("/end%4"), "/end%4");
        assert_eq!(decode_path("/plain"), "/plain");
    }

    #[test]
    fn request_rewrite_like_go_reverse_proxy() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-drop"));
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        let cfg = super::super::RouteConfig {
            host_header_rewrite: "backend.internal".into(),
            headers: [("X-From-Where".to_string(), "frp".to_string())].into(),
            ..Default::default()
        };
        let remote: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        rewrite_request(&mut h, &cfg, "www.example.test:8080", remote, None);
        assert_eq!(h["host"], "backend.internal");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "www.example.test:8080");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-from-where"], "frp");
        assert_eq!(h["te"], "trailers");
        for gone in ["connection", "x-drop", "keep-alive", "proxy-authorization"] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
    }

    #[test]
    fn upgrade_headers_survive() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let up = upgrade_type(&h);
        assert_eq!(up, Some(HeaderValue::from_static("websocket")));
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        rewrite_request(&mut h, &Default::default(), "a", remote, up.as_ref());
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["host"], "a");
    }

    #[test]
    fn upstream_targets() {
        let u: Uri = "/p?q=1".parse().unwrap();
        assert_eq!(upstream_uri(&u, false), "/p?q=1");
        let u: Uri = "http://h.example/p".parse().unwrap();
        assert_eq!(upstream_uri(&u, true), "http://h.example/p");
        assert_eq!(upstream_uri(&u, false), "/p");
    }

    #[test]
    fn auth_responses() {
        let r = unauthorized(false);
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Basic realm=\"Restricted\""
        );
        let r = unauthorized(true);
        assert_eq!(r.status(), 407);
        assert_eq!(
            r.headers()["proxy-authenticate"],
            "Basic realm=\"Restricted\""
        );
    }

    #[test]
    fn empty_pool() {
        let p = UpstreamPool::default();
        let k = PoolKey {
            member: 1,
            route: "x".into(),
        };
        assert!(p.take(&k).is_none());
        p.reap();
        p.forget_member(1);
        assert_eq!(p.idle_count(), 0);
    }
}
