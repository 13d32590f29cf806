//! The small HTTP/1.1 client the OIDC requests use (token endpoint, discovery, JWKS): Go's
//! `http.Client` as frp sets it up, over hyper's connection API and rustls.
//!
//! - Proxies: `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY` from the environment (Go's
//!   `ProxyFromEnvironment`: never for loopback destinations), or one configured proxy URL for
//!   every destination (Go's `http.ProxyURL`). `http://` / `https://` proxies get absolute-form
//!   requests for `http://` destinations and a `CONNECT` tunnel for `https://` ones; `socks5://`
//!   and `socks5h://` proxies a SOCKS5 tunnel (the proxy resolves names, as with Go). Tunnels and
//!   the proxy URL's parsing are hyper-util's.
//! - Redirects: at most 10, as Go's client; 301/302/303 turn a POST into a GET without body,
//!   307/308 repeat the request; `Authorization` is dropped when the host changes.
//! - One connection per request (no pool: a token is fetched at most once per login or
//!   heartbeat, keys only on rotation).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Go's `http.Client` limit on redirects.
const MAX_REDIRECTS: usize = 10;

/// A byte stream of any kind (TCP, TLS over TCP, TLS over a tunnel).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type BoxStream = Box<dyn Stream>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where requests go through.
enum Proxy {
    /// Go's `ProxyFromEnvironment`.
    Env(Matcher),
    /// Go's `http.ProxyURL`: every request.
    All(Intercept),
    None,
}

/// An HTTP client for OIDC requests (cheap to share; no connection state).
pub struct HttpClient {
    tls: TlsConnector,
    proxy: Box<Proxy>,
    timeout: Duration,
}

/// A response with its body read (up to the caller's limit).
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl HttpClient {
    /// `proxy_env`: proxies from the environment; else `proxy_url` (empty: none).
    pub fn new(
        tls: rustls::ClientConfig,
        proxy_env: bool,
        proxy_url: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let proxy = if proxy_env {
            let env = |names: [&str; 2]| {
                names
                    .iter()
                    .find_map(|n| std::env::var(n).ok())
                    .unwrap_or_default()
            };
            Proxy::Env(
                Matcher::builder()
                    .http(env(["HTTP_PROXY", "http_proxy"]))
                    .https(env(["HTTPS_PROXY", "https_proxy"]))
                    .no(env(["NO_PROXY", "no_proxy"]))
                    .build(),
            )
        } else if proxy_url.is_empty() {
            Proxy::None
        } else {
            let bad = |why: &str| format!("failed to parse OIDC proxy URL {proxy_url:?}: {why}");
            let uri: Uri = proxy_url.parse().map_err(|e| bad(&format!("{e}")))?;
            if let Some(s) = uri.scheme_str()
                && !matches!(s, "http" | "https" | "socks5" | "socks5h")
            {
                return Err(bad(&format!("unsupported proxy scheme {s:?}")));
            }
            let probe = Uri::from_static("http://probe/");
            let intercept = Matcher::builder()
                .all(proxy_url.to_owned())
                .build()
                .intercept(&probe)
                .ok_or_else(|| bad("no proxy host"))?;
            Proxy::All(intercept)
        };
        Ok(Self {
            tls: TlsConnector::from(Arc::new(tls)),
            proxy: Box::new(proxy),
            timeout,
        })
    }

    /// Sends a request (following redirects) and reads at most `limit` bytes of the answer's
    /// body (Go's `io.LimitReader`: the rest is left unread). Errors read as Go's `*url.Error`:
    /// `Get "URL": cause`.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<(HeaderValue, Bytes)>,
        limit: usize,
    ) -> Result<Response, String> {
        let verb = go_method(&method);
        match tokio::time::timeout(self.timeout, self.follow(method, url, headers, body, limit))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{verb} {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        }
    }

    async fn follow(
        &self,
        mut method: Method,
        url: &str,
        mut headers: HeaderMap,
        mut body: Option<(HeaderValue, Bytes)>,
        limit: usize,
    ) -> Result<Response, String> {
        let mut url = url.to_owned();
        let mut redirects = 0;
        loop {
            let fail = |m: &Method, u: &str, e: &dyn std::fmt::Display| {
                format!("{} {u:?}: {e}", go_method(m))
            };
            let uri: Uri = url.parse().map_err(|e| fail(&method, &url, &e))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                let e = format!(
                    "unsupported protocol scheme {:?}",
                    uri.scheme_str().unwrap_or_default()
                );
                return Err(fail(&method, &url, &e));
            }
            let resp = self
                .send(&method, &uri, &headers, body.as_ref(), limit)
                .await
                .map_err(|e| fail(&method, &url, &error_chain(&*e)))?;
            let keep_method = match resp.status.as_u16() {
                301..=303 => false,
                307 | 308 => true,
                _ => return Ok(resp),
            };
            let Some(location) = resp
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Ok(resp);
            };
            let next = resolve(&uri, location);
            redirects += 1;
            if redirects >= MAX_REDIRECTS {
                return Err(fail(
                    &method,
                    &next,
                    &format!("stopped after {MAX_REDIRECTS} redirects"),
                ));
            }
            if !keep_method && method != Method::GET && method != Method::HEAD {
                method = Method::GET;
                body = None;
            }
            let next_host = next.parse::<Uri>().ok().and_then(|u| {
                u.authority()
                    .map(|a| a.host().to_ascii_lowercase())
                    .map(|h| h.trim_matches(['[', ']']).to_owned())
            });
            if next_host.as_deref() != Some(host_of(&uri).to_ascii_lowercase().as_str()) {
                headers.remove(header::AUTHORIZATION);
            }
            url = next;
        }
    }

    /// One exchange on a fresh connection.
    async fn send(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Option<&(HeaderValue, Bytes)>,
        limit: usize,
    ) -> Result<Response, BoxError> {
        let https = uri.scheme_str() == Some("https");
        let intercept = match &*self.proxy {
            Proxy::Env(m) if !is_loopback(host_of(uri)) => m.intercept(uri),
            Proxy::All(i) => Some(i.clone()),
            _ => None,
        };
        let mut req = http::Request::builder().method(method.clone());
        let mut absolute_form = false;
        let io: BoxStream = match &intercept {
            None => self.connect(uri).await?,
            Some(p) if matches!(p.uri().scheme_str(), Some("socks5" | "socks5h")) => {
                // Go's SOCKS5 dialer hands the host name to the proxy for both schemes.
                let mut socks = SocksV5::new(p.uri().clone(), ProxyConnector(self.tls.clone()));
                if let Some((user, pass)) = p.raw_auth() {
                    socks = socks.with_auth(user.to_owned(), pass.to_owned());
                }
                let tunnel = call(socks, uri.clone()).await?.into_inner();
                self.over_tls(uri, https, tunnel).await?
            }
            Some(p) if https => {
                let mut tunnel = Tunnel::new(p.uri().clone(), ProxyConnector(self.tls.clone()));
                if let Some(auth) = p.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let tunnel = call(tunnel, uri.clone()).await?.into_inner();
                self.over_tls(uri, true, tunnel).await?
            }
            Some(p) => {
                if let Some(auth) = p.basic_auth() {
                    req = req.header(header::PROXY_AUTHORIZATION, auth.clone());
                }
                absolute_form = true;
                self.connect(p.uri()).await?
            }
        };
        let target = if absolute_form {
            uri.to_string()
        } else {
            uri.path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned())
        };
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        req = req.uri(target).header(header::HOST, authority);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                req = req.header(header::CONTENT_TYPE, content_type.clone());
                bytes.clone()
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(payload))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        let driver = tokio::spawn(conn);
        let resp = sender.send_request(req).await?;
        let (parts, mut incoming) = resp.into_parts();
        let mut body = Vec::new();
        while body.len() < limit {
            let Some(frame) = incoming.frame().await else {
                break;
            };
            if let Ok(data) = frame?.into_data() {
                let room = limit - body.len();
                body.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        driver.abort();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// A direct connection to `uri`'s host: TCP, and TLS for `https`.
    async fn connect(&self, uri: &Uri) -> Result<BoxStream, BoxError> {
        let tcp = tcp_connect(uri).await?;
        self.over_tls(uri, uri.scheme_str() == Some("https"), Box::new(tcp))
            .await
    }

    async fn over_tls(&self, uri: &Uri, tls: bool, io: BoxStream) -> Result<BoxStream, BoxError> {
        if !tls {
            return Ok(io);
        }
        tls_over(&self.tls, uri, io).await
    }
}

async fn tls_over(tls: &TlsConnector, uri: &Uri, io: BoxStream) -> Result<BoxStream, BoxError> {
    let name = rustls::pki_types::ServerName::try_from(host_of(uri).to_owned())?;
    Ok(Box::new(tls.connect(name, io).await?))
}

async fn tcp_connect(uri: &Uri) -> std::io::Result<TcpStream> {
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        Some("socks5" | "socks5h") => 1080,
        _ => 80,
    });
    let host = host_of(uri);
    // Go's dialer words: `dial tcp 127.0.0.1:1: connect: connection refused`.
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| {
        let text = match e.raw_os_error() {
            Some(_) if host.contains(':') => format!(
                "dial tcp [{host}]:{port}: connect: {}",
                crate::listen::os_error_text(&e)
            ),
            Some(_) => format!(
                "dial tcp {host}:{port}: connect: {}",
                crate::listen::os_error_text(&e)
            ),
            None => format!("dial tcp: lookup {host}: {e}"),
        };
        std::io::Error::new(e.kind(), text)
    })?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Connects to a proxy (TLS for an `https://` proxy), for hyper-util's tunnels.
#[derive(Clone)]
struct ProxyConnector(TlsConnector);

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = TokioIo<BoxStream>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, proxy: Uri) -> Self::Future {
        let tls = self.0.clone();
        Box::pin(async move {
            let tcp: BoxStream = Box::new(tcp_connect(&proxy).await?);
            let io = if proxy.scheme_str() == Some("https") {
                tls_over(&tls, &proxy, tcp).await?
            } else {
                tcp
            };
            Ok(TokioIo::new(io))
        })
    }
}

/// Runs a tunnel's handshake.
async fn call<S>(mut svc: S, dst: Uri) -> Result<S::Response, BoxError>
where
    S: tower_service::Service<Uri>,
    S::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    svc.call(dst).await.map_err(Into::into)
}

/// The host without IPv6 brackets.
fn host_of(uri: &Uri) -> &str {
    uri.host().unwrap_or_default().trim_matches(['[', ']'])
}

/// Go's `ProxyFromEnvironment` never proxies `localhost` and loopback addresses.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Go's `*url.Error` spells the method in title case (`Get`, `Post`).
fn go_method(m: &Method) -> String {
    let s = m.as_str();
    let mut out = s[..1].to_owned();
    out.push_str(&s[1..].to_ascii_lowercase());
    out
}

/// `location` resolved against the URL it came from (RFC 3986 reference resolution for the
/// forms servers send: absolute, scheme-relative, absolute path, relative path, query).
fn resolve(base: &Uri, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let scheme = base.scheme_str().unwrap_or("http");
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = if location.starts_with('/') {
        location.to_owned()
    } else if location.starts_with('?') {
        format!("{}{location}", base.path())
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    format!("{scheme}://{authority}{}", normalize(&path))
}

/// Removes `.` and `..` segments from a path (its query kept as is).
fn normalize(path: &str) -> String {
    let (p, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = p.split('/').skip(1).collect();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = format!("/{}", out.join("/"));
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    s
}

/// An error with its causes (hyper's and the tunnels' own texts are terse).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    /// A request head and its body (by `Content-Length`), as text.
    async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if r.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse().unwrap());
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.unwrap();
        head + &String::from_utf8(body).unwrap()
    }

    fn answer(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// A local HTTP server (or absolute-form proxy): logs each request, answers with `reply`
    /// of its request line.
    async fn server(reply: fn(&str) -> String) -> (u16, Log) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let log = Log::default();
        let seen = log.clone();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                let req = read_request(&mut c).await;
                let line = req.lines().next().unwrap_or_default().to_owned();
                seen.lock().unwrap().push(req);
                c.write_all(reply(&line).as_bytes()).await.unwrap();
            }
        });
        (port, log)
    }

    fn client(skip_verify: bool, proxy: &str) -> HttpClient {
        let tls = crate::tls::https_client_config("", skip_verify).unwrap();
        HttpClient::new(tls, false, proxy, Duration::from_secs(10)).unwrap()
    }

    fn form() -> Option<(HeaderValue, Bytes)> {
        Some((
            HeaderValue::from_static("application/x-www-form-urlencoded"),
            Bytes::from_static(b"a=1"),
        ))
    }

    /// 302 turns the POST into a GET without body, 307 repeats the request; relative
    /// locations resolve; the body is read up to the limit; an 11th redirect fails as Go's.
    #[tokio::test]
    async fn redirects_and_body_limit() {
        let (port, log) = server(|line| match line.split(' ').nth(1).unwrap() {
            "/a" => answer("302 Found", "location: b\r\n", ""),
            "/b" => answer("307 Temporary Redirect", "location: /c?x=1\r\n", ""),
            "/p" => answer("308 Permanent Redirect", "location: /c\r\n", ""),
            "/loop" => answer("302 Found", "location: /loop\r\n", ""),
            _ => answer("200 OK", "", &"z".repeat(1000)),
        })
        .await;
        let c = client(false, "");
        let url = format!("http://127.0.0.1:{port}/a");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eA=="),
        );
        let r = c
            .request(Method::POST, &url, h.clone(), form(), 10)
            .await
            .unwrap();
        assert_eq!((r.status, r.body), (StatusCode::OK, b"z".repeat(10)));
        let lines: Vec<String> = log.lock().unwrap().drain(..).collect();
        let first: Vec<&str> = lines.iter().map(|r| r.lines().next().unwrap()).collect();
        assert_eq!(
            first,
            ["POST /a HTTP/1.1", "GET /b HTTP/1.1", "GET /c?x=1 HTTP/1.1"]
        );
        assert!(lines[0].ends_with("a=1") && !lines[1].contains("a=1"));
        // Same host: the credentials stay.
        assert!(
            lines[2].contains("authorization: Basic eA=="),
            "{}",
            lines[2]
        );

        let url = format!("http://127.0.0.1:{port}/p");
        let r = c
            .request(Method::POST, &url, h, form(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(r.body.len(), 1000);
        let lines: Vec<String> = log.lock().unwrap().drain(..).collect();
        assert!(lines[1].starts_with("POST /c HTTP/1.1") && lines[1].ends_with("a=1"));

        let url = format!("http://127.0.0.1:{port}/loop");
        let e = c
            .request(Method::GET, &url, HeaderMap::new(), None, 10)
            .await
            .unwrap_err();
        assert_eq!(e, format!("Get {url:?}: stopped after 10 redirects"));
        // Nothing listening: Go's words for the request, the cause after them.
        let e = c
            .request(
                Method::POST,
                "http://127.0.0.1:1/t",
                HeaderMap::new(),
                None,
                10,
            )
            .await
            .unwrap_err();
        assert_eq!(
            e,
            "Post \"http://127.0.0.1:1/t\": dial tcp 127.0.0.1:1: connect: connection refused"
        );
    }

    /// `proxyURL` with an http destination: absolute-form request to the proxy, its
    /// credentials as `Proxy-Authorization`; the destination is never dialled.
    #[tokio::test]
    async fn http_proxy_gets_absolute_form() {
        let (port, log) = server(|_| answer("200 OK", "", "via proxy")).await;
        let c = client(false, &format!("http://user:pw@127.0.0.1:{port}"));
        let r = c
            .request(
                Method::GET,
                "http://dest.invalid:81/x?y",
                HeaderMap::new(),
                None,
                100,
            )
            .await
            .unwrap();
        assert_eq!(r.body, b"via proxy");
        let req = log.lock().unwrap()[0].clone();
        assert!(
            req.starts_with("GET http://dest.invalid:81/x?y HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("host: dest.invalid:81\r\n"), "{req}");
        // base64("user:pw")
        assert!(
            req.contains("proxy-authorization: Basic dXNlcjpwdw==\r\n"),
            "{req}"
        );
    }

    /// `proxyURL` with an https destination: a CONNECT tunnel, TLS inside it, verified
    /// unless insecureSkipVerify (the tunnel's end has a self-signed certificate).
    #[tokio::test]
    async fn https_through_connect_tunnel() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let log = Log::default();
        let seen = log.clone();
        let tls = tokio_rustls::TlsAcceptor::from(crate::tls::server_config("", "", "").unwrap());
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                let connect = read_request(&mut c).await;
                seen.lock().unwrap().push(connect);
                c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let Ok(mut c) = tls.accept(c).await else {
                    continue;
                };
                let req = read_request(&mut c).await;
                seen.lock().unwrap().push(req);
                c.write_all(answer("200 OK", "", "secret").as_bytes())
                    .await
                    .unwrap();
                let _ = c.shutdown().await;
            }
        });
        let proxy = format!("127.0.0.1:{port}");
        let r = client(true, &proxy)
            .request(
                Method::GET,
                "https://dest.invalid/keys",
                HeaderMap::new(),
                None,
                100,
            )
            .await
            .unwrap();
        assert_eq!(r.body, b"secret");
        let lines: Vec<String> = log.lock().unwrap().drain(..).collect();
        assert!(
            lines[0].starts_with("CONNECT dest.invalid:443 HTTP/1.1\r\n"),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("GET /keys HTTP/1.1\r\n"), "{lines:?}");
        let e = client(false, &proxy)
            .request(
                Method::GET,
                "https://dest.invalid/keys",
                HeaderMap::new(),
                None,
                100,
            )
            .await
            .unwrap_err();
        assert!(e.starts_with("Get \"https://dest.invalid/keys\": "), "{e}");
        assert!(e.contains("certificate"), "{e}");
    }

    #[test]
    fn redirect_locations() {
        let base: Uri = "http://a.example:8080/x/y/token?q=1".parse().unwrap();
        assert_eq!(resolve(&base, "https://b/z"), "https://b/z");
        assert_eq!(resolve(&base, "//b/z"), "http://b/z");
        assert_eq!(resolve(&base, "/z"), "http://a.example:8080/z");
        assert_eq!(resolve(&base, "z?k"), "http://a.example:8080/x/y/z?k");
        assert_eq!(resolve(&base, "../z"), "http://a.example:8080/x/z");
        assert_eq!(
            resolve(&base, "?k=2"),
            "http://a.example:8080/x/y/token?k=2"
        );
    }

    #[test]
    fn go_words() {
        assert_eq!(go_method(&Method::POST), "Post");
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("LocalHost"));
        assert!(!is_loopback("10.0.0.1"));
    }

    #[test]
    fn proxy_urls() {
        let tls = || crate::tls::https_client_config("", true).unwrap();
        let d = Duration::from_secs(1);
        for ok in [
            "http://p:3128",
            "p:3128",
            "https://u:pw@p",
            "socks5://p:1080",
            "socks5h://p",
        ] {
            assert!(HttpClient::new(tls(), false, ok, d).is_ok(), "{ok}");
        }
        for bad in ["ftp://p", "http://", "::"] {
            let Err(e) = HttpClient::new(tls(), false, bad, d) else {
                panic!("{bad} accepted");
            };
            assert!(
                e.starts_with(&format!("failed to parse OIDC proxy URL {bad:?}: ")),
                "{e}"
            );
        }
    }
}
