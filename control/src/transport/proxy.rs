//! `transport.proxyURL` (spec §2.1): frpc reaches frps through a proxy (tcp and websocket
//! transports only), as golib's `net/dial` does for Go frpc.
//!
//! - `http://[user:pass@]host:port`: `CONNECT serverAddr:serverPort` with
//!   `Proxy-Authorization: Basic …` when credentials are given; any status but 200 fails.
//! - `https://[user:pass@]host:port`: the same CONNECT inside TLS to the proxy. Like golib
//!   (which gets no proxy TLS config from frpc, so Go's defaults apply) the proxy's certificate
//!   is verified against the system roots, with the proxy's host as server name; there is no
//!   switch to skip that. The system roots are read as Go reads them on Linux: `SSL_CERT_FILE`
//!   / `SSL_CERT_DIR`, else the distribution's bundle.
//! - `socks5://[user:pass@]host:port`: RFC 1928, username/password auth (RFC 1929) when
//!   credentials are given; the target is sent as a domain name unless it is an IP literal.
//! - `ntlm://[DOMAIN\user:pass@]host:port` (the backslash may be written `%5C`): CONNECT with
//!   NTLM authentication on one connection, as golib with go-ntlmssp does: the first CONNECT
//!   carries `Proxy-Authorization: Negotiate <NEGOTIATE>`; a 407 whose `Proxy-Authenticate` is
//!   `Negotiate <CHALLENGE>` (or `NTLM <CHALLENGE>`, which Go ignores) is answered by a second
//!   CONNECT with the NTLMv2 AUTHENTICATE message ([`super::ntlm`]). Without credentials it is
//!   a plain CONNECT.
//!
//! `http` and `socks5` hand back the bare TCP socket (the data plane may splice it); `https`
//! hands back the TLS stream.

use std::io;
use std::sync::OnceLock;

use base64::Engine;
use rand::RngExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Conn;
use super::ntlm;

/// Largest CONNECT response head we accept.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Largest 407 body we read past to reuse the connection for the NTLM handshake.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The proxy's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Http,
    Https,
    Socks5,
    Ntlm,
}

/// A parsed `transport.proxyURL`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub kind: ProxyKind,
    /// `host:port` of the proxy.
    pub addr: String,
    /// User name and password (percent-decoded).
    pub auth: Option<(String, String)>,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyUrl")
            .field("kind", &self.kind)
            .field("addr", &self.addr)
            .field("auth", &self.auth.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// A `transport.proxyURL` frpc cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    #[error("invalid transport.proxyURL [{0}]: want scheme://[user:password@]host:port")]
    Malformed(String),
    #[error("invalid transport.proxyURL: ProxyType must be http, https, socks5 or ntlm, not [{0}]")]
    UnknownScheme(String),
}

impl ProxyUrl {
    /// Parses a proxy URL; `Ok(None)` for the empty string (no proxy).
    pub fn parse(url: &str) -> Result<Option<ProxyUrl>, ProxyUrlError> {
        if url.is_empty() {
            return Ok(None);
        }
        let malformed = || ProxyUrlError::Malformed(redact(url));
        let (scheme, rest) = url.split_once("://").ok_or_else(malformed)?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "http" => ProxyKind::Http,
            "https" => ProxyKind::Https,
            "socks5" => ProxyKind::Socks5,
            "ntlm" => ProxyKind::Ntlm,
            other => return Err(ProxyUrlError::UnknownScheme(other.to_string())),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let auth = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            (percent_decode(user), percent_decode(pass))
        });
        let port_ok = host_port
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(malformed());
        }
        Ok(Some(ProxyUrl {
            kind,
            addr: host_port.to_string(),
            auth,
        }))
    }

    /// The proxy's host, without port or IPv6 brackets (the TLS server name for `https`).
    pub fn host(&self) -> &str {
        let host = self
            .addr
            .rsplit_once(':')
            .map_or(self.addr.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Asks the proxy, already connected on `tcp`, for a tunnel to `host:port`.
    pub async fn tunnel(&self, tcp: TcpStream, host: &str, port: u16) -> io::Result<Conn> {
        let tls = match self.kind {
            ProxyKind::Https => Some(https_proxy_connector()?),
            _ => None,
        };
        self.tunnel_with(tcp, host, port, tls).await
    }

    /// [`ProxyUrl::tunnel`] with the TLS connector for an `https` proxy given.
    async fn tunnel_with(
        &self,
        tcp: TcpStream,
        host: &str,
        port: u16,
        tls: Option<tokio_rustls::TlsConnector>,
    ) -> io::Result<Conn> {
        let auth = self.auth.as_ref();
        match self.kind {
            ProxyKind::Http => {
                let mut tcp = tcp;
                http_connect(&mut tcp, host, port, auth).await?;
                Ok(Conn::Tcp(tcp))
            }
            ProxyKind::Https => {
                let connector =
                    tls.ok_or_else(|| io::Error::other("https proxy: no TLS config"))?;
                let name = crate::tls::server_name(self.host()).map_err(io::Error::other)?;
                let mut s = connector.connect(name, tcp).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("TLS handshake with HTTPS proxy: {e}"))
                })?;
                http_connect(&mut s, host, port, auth).await?;
                Ok(Conn::Boxed(Box::new(s)))
            }
            ProxyKind::Ntlm => {
                let mut tcp = tcp;
                ntlm_connect(&mut tcp, host, port, auth).await?;
                Ok(Conn::Tcp(tcp))
            }
            ProxyKind::Socks5 => {
                let target = (host.trim_start_matches('[').trim_end_matches(']'), port);
                let s = match auth {
                    Some((user, pass)) => {
                        tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                            tcp, target, user, pass,
                        )
                        .await
                    }
                    None => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, target).await,
                }
                .map_err(|e| io::Error::other(format!("socks5 proxy: {e}")))?;
                Ok(Conn::Tcp(s.into_inner()))
            }
        }
    }
}

/// The TLS connector for `https` proxies, built once: the system roots (see the module doc).
fn https_proxy_connector() -> io::Result<tokio_rustls::TlsConnector> {
    static CONNECTOR: OnceLock<Result<tokio_rustls::TlsConnector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            crate::tls::system_roots_client_config()
                .map(tokio_rustls::TlsConnector::from)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| io::Error::other(format!("https proxy: {e}")))
}

/// `host:port` with IPv6 brackets, as in a CONNECT request line.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A CONNECT request head with an optional `Proxy-Authorization` value.
fn connect_request(target: &str, authorization: Option<&str>) -> String {
    let mut req =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: Mozilla/5.0\r\n");
    if let Some(a) = authorization {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// A proxy's response head: the status and the headers (names lower-cased).
struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
}

impl ResponseHead {
    fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a response head byte by byte up to its empty line: nothing after it may be consumed
/// (frps' bytes never come before we speak, but a proxy may pipeline them).
async fn read_response_head<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<ResponseHead> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(io::Error::other("http proxy: response head too large"));
        }
        let b = io.read_u8().await.map_err(|e| {
            io::Error::new(e.kind(), format!("http proxy closed before answering: {e}"))
        })?;
        head.push(b);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => unreachable!("head ends with an empty line"),
        Err(e) => return Err(io::Error::other(format!("http proxy: bad response: {e}"))),
    }
    Ok(ResponseHead {
        status: resp.code.unwrap_or(0),
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect(),
    })
}

/// Reads past the body of a non-2xx response (Content-Length or chunked), so that the next
/// request can go out on the same connection, as Go's `resp.Body.Close()` does.
async fn skip_body<S: AsyncRead + Unpin>(io: &mut S, head: &ResponseHead) -> io::Result<()> {
    let too_large = || io::Error::other("http proxy: response body too large");
    let chunked = head
        .header("transfer-encoding")
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut total = 0usize;
        loop {
            let line = read_line(io).await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::other("http proxy: bad chunk size"))?;
            total += size;
            if total > MAX_RESPONSE_BODY {
                return Err(too_large());
            }
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_line(io).await?.is_empty() {}
                return Ok(());
            }
            discard(io, size + 2).await?;
        }
    }
    let len = match head.header("content-length").next() {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| io::Error::other("http proxy: bad Content-Length"))?,
        None => 0,
    };
    if len > MAX_RESPONSE_BODY {
        return Err(too_large());
    }
    discard(io, len).await
}

async fn read_line<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<String> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        if line.len() > MAX_RESPONSE_HEAD {
            return Err(io::Error::other("http proxy: line too long"));
        }
        line.push(io.read_u8().await?);
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

async fn discard<S: AsyncRead + Unpin>(io: &mut S, n: usize) -> io::Result<()> {
    let mut buf = vec![0u8; n];
    io.read_exact(&mut buf).await.map(|_| ())
}

/// Plain CONNECT with optional Basic credentials (golib `httpProxyAfterHook`).
async fn http_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    host: &str,
    port: u16,
    auth: Option<&(String, String)>,
) -> io::Result<()> {
    let target = authority(host, port);
    let basic = auth.map(|(user, pass)| {
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("Basic {cred}")
    });
    io.write_all(connect_request(&target, basic.as_deref()).as_bytes())
        .await?;
    let head = read_response_head(io).await?;
    match head.status {
        200 => Ok(()),
        code => Err(io::Error::other(format!(
            "DialTcpByHttpProxy error, StatusCode [{code}]"
        ))),
    }
}

/// CONNECT with NTLM authentication (golib `ntlmHTTPProxyAfterHook`).
async fn ntlm_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    host: &str,
    port: u16,
    auth: Option<&(String, String)>,
) -> io::Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let target = authority(host, port);
    let negotiate = auth.map(|_| format!("Negotiate {}", b64.encode(ntlm::negotiate_message())));
    io.write_all(connect_request(&target, negotiate.as_deref()).as_bytes())
        .await?;
    let mut head = read_response_head(io).await?;
    if let Some((user, pass)) = auth
        && head.status == 407
    {
        // Go looks only at "Negotiate"; an NTLM-only proxy answers "NTLM" and is served too.
        let challenge = head.header("proxy-authenticate").find_map(|v| {
            let (scheme, token) = v.split_once(' ')?;
            (scheme.eq_ignore_ascii_case("Negotiate") || scheme.eq_ignore_ascii_case("NTLM"))
                .then(|| (scheme.to_string(), token.trim().to_string()))
        });
        if let Some((scheme, token)) = challenge {
            let bytes = b64
                .decode(&token)
                .map_err(|e| io::Error::other(format!("ntlm proxy: bad challenge: {e}")))?;
            let challenge = ntlm::Challenge::parse(&bytes)
                .map_err(|e| io::Error::other(format!("ntlm proxy: {e}")))?;
            let msg = ntlm::authenticate_message(
                &challenge,
                user,
                pass,
                rand::rng().random(),
                ntlm::filetime_now(),
            )
            .map_err(|e| io::Error::other(format!("ntlm proxy: {e}")))?;
            skip_body(io, &head).await?;
            let authorization = format!("{scheme} {}", b64.encode(msg));
            io.write_all(connect_request(&target, Some(&authorization)).as_bytes())
                .await?;
            head = read_response_head(io).await?;
            if head.status == 407 || head.status == 403 {
                return Err(io::Error::other(format!(
                    "DialTcpByNTLMHttpProxy error, StatusCode [{}]: the proxy rejected NTLM authentication as [{user}]",
                    head.status
                )));
            }
        }
    }
    match head.status {
        200 => Ok(()),
        code => Err(io::Error::other(format!(
            "DialTcpByNTLMHttpProxy error, StatusCode [{code}]"
        ))),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frp_proxy_urls() {
        assert_eq!(ProxyUrl::parse("").unwrap(), None);
        let p = ProxyUrl::parse("http://u%40x:p%3Ass@127.0.0.1:3128")
            .unwrap()
            .unwrap();
        assert_eq!(p.kind, ProxyKind::Http);
        assert_eq!(p.addr, "127.0.0.1:3128");
        assert_eq!(p.auth, Some(("u@x".into(), "p:ss".into())));
        let p = ProxyUrl::parse("socks5://[::1]:1080/").unwrap().unwrap();
        assert_eq!(p.kind, ProxyKind::Socks5);
        assert_eq!(p.addr, "[::1]:1080");
        assert_eq!(p.host(), "::1");
        assert_eq!(p.auth, None);
        let p = ProxyUrl::parse("ntlm://CORP%5Calice:pw@h:1")
            .unwrap()
            .unwrap();
        assert_eq!(p.kind, ProxyKind::Ntlm);
        assert_eq!(p.auth, Some(("CORP\\alice".into(), "pw".into())));
        let p = ProxyUrl::parse("HTTPS://proxy.example:443")
            .unwrap()
            .unwrap();
        assert_eq!(p.kind, ProxyKind::Https);
        assert_eq!(p.host(), "proxy.example");
        assert!(matches!(
            ProxyUrl::parse("ftp://h:1"),
            Err(ProxyUrlError::UnknownScheme(_))
        ));
        let e = ProxyUrl::parse("http://user:secret@hostonly").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(ProxyUrl::parse("127.0.0.1:8080").is_err());
    }

    /// Reads one request head from a test proxy's client.
    async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> String {
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n") {
            req.push(s.read_u8().await.unwrap());
        }
        String::from_utf8(req).unwrap()
    }

    fn header_value<'a>(req: &'a str, name: &str) -> Option<&'a str> {
        req.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[tokio::test]
    async fn http_connect_sends_credentials_and_checks_the_status() {
        for (status, ok) in [(200, true), (407, false)] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let proxy = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let req = read_request(&mut s).await;
                s.write_all(format!("HTTP/1.1 {status} X\r\n\r\nafter").as_bytes())
                    .await
                    .unwrap();
                req
            });
            let p = ProxyUrl::parse(&format!("http://me:pw@{addr}"))
                .unwrap()
                .unwrap();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let r = p.tunnel(tcp, "frps.example", 7000).await;
            let req = proxy.await.unwrap();
            assert!(req.starts_with("CONNECT frps.example:7000 HTTP/1.1\r\n"));
            assert!(
                req.contains("Proxy-Authorization: Basic bWU6cHc=\r\n"),
                "{req}"
            );
            match r {
                Ok(mut s) => {
                    assert!(ok);
                    assert!(matches!(s, Conn::Tcp(_)), "http keeps the bare socket");
                    let mut rest = [0u8; 5];
                    s.read_exact(&mut rest).await.unwrap();
                    assert_eq!(&rest, b"after", "bytes after the head are not consumed");
                }
                Err(e) => {
                    assert!(!ok);
                    assert!(e.to_string().contains("StatusCode [407]"), "{e}");
                }
            }
        }
    }

    /// TLS to the proxy, verified against the given roots, then CONNECT inside it.
    #[tokio::test]
    async fn https_proxy_verifies_its_certificate() {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    continue;
                };
                let req = read_request(&mut tls).await;
                let status = if header_value(&req, "proxy-authorization") == Some("Basic bWU6cHc=")
                {
                    200
                } else {
                    407
                };
                tls.write_all(format!("HTTP/1.1 {status} X\r\n\r\nhello").as_bytes())
                    .await
                    .unwrap();
                tls.flush().await.unwrap();
            }
        });
        let connector = |roots: Option<&rustls::pki_types::CertificateDer<'static>>| {
            let mut store = rustls::RootCertStore::empty();
            if let Some(c) = roots {
                store.add(c.clone()).unwrap();
            }
            let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(store)
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        };

        let p = ProxyUrl::parse(&format!("https://me:pw@{addr}"))
            .unwrap()
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = p
            .tunnel_with(tcp, "frps.example", 7000, Some(connector(Some(&cert))))
            .await
            .unwrap();
        assert!(matches!(s, Conn::Boxed(_)));
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello", "the tunnel continues inside TLS");

        // An untrusted certificate fails the handshake.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = p
            .tunnel_with(tcp, "frps.example", 7000, Some(connector(None)))
            .await
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("TLS handshake with HTTPS proxy"),
            "{e}"
        );

        // Wrong credentials: the proxy's status.
        let p = ProxyUrl::parse(&format!("https://me:no@{addr}"))
            .unwrap()
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = p
            .tunnel_with(tcp, "frps.example", 7000, Some(connector(Some(&cert))))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("StatusCode [407]"), "{e}");
    }

    /// A minimal NTLM proxy on one connection: 407 with a challenge (and a body to skip), then
    /// 200 if the NTLMv2 proof matches `password`, else 407.
    async fn ntlm_proxy_once(
        l: tokio::net::TcpListener,
        password: &'static str,
        challenge_scheme: &'static str,
    ) -> (Vec<String>, Option<ntlm::Authenticate>) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let (mut s, _) = l.accept().await.unwrap();
        let first = read_request(&mut s).await;
        let nego = header_value(&first, "proxy-authorization")
            .unwrap()
            .to_string();
        assert_eq!(
            b64.decode(nego.strip_prefix("Negotiate ").unwrap())
                .unwrap(),
            ntlm::negotiate_message()
        );
        let server_challenge = [9u8, 8, 7, 6, 5, 4, 3, 2];
        let mut ti = vec![2, 0, 4, 0, b'D', 0, b'M', 0];
        ti.extend_from_slice(&[0, 0, 0, 0]);
        let mut ch = b"NTLMSSP\0\x02\0\0\0".to_vec();
        ch.extend_from_slice(&[0, 0, 0, 0, 48, 0, 0, 0]);
        ch.extend_from_slice(
            &(ntlm::FLAG_UNICODE | ntlm::FLAG_NTLM | ntlm::FLAG_TARGET_INFO).to_le_bytes(),
        );
        ch.extend_from_slice(&server_challenge);
        ch.extend_from_slice(&[0; 8]);
        ch.extend_from_slice(&(ti.len() as u16).to_le_bytes());
        ch.extend_from_slice(&(ti.len() as u16).to_le_bytes());
        ch.extend_from_slice(&48u32.to_le_bytes());
        ch.extend_from_slice(&ti);
        let body = "<html>auth required</html>";
        s.write_all(
            format!(
                "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=x\r\nProxy-Authenticate: {challenge_scheme} {}\r\nContent-Length: {}\r\n\r\n{body}",
                b64.encode(&ch),
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let second = read_request(&mut s).await;
        let token = header_value(&second, "proxy-authorization").unwrap();
        let token = token
            .strip_prefix(&format!("{challenge_scheme} "))
            .expect("answered in the challenge's scheme");
        let a = ntlm::Authenticate::parse(&b64.decode(token).unwrap()).unwrap();
        let key = ntlm::ntowf_v2(password, &a.user, &a.domain);
        let ok = ntlm::nt_proof_str(&key, &server_challenge, &a.nt_response[16..])
            == a.nt_response[..16];
        let status = if ok {
            "200 Connection established"
        } else {
            "407 Denied"
        };
        s.write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        (vec![first, second], Some(a))
    }

    #[tokio::test]
    async fn ntlm_connect_authenticates_with_ntlmv2() {
        for (scheme, pass, ok) in [
            ("Negotiate", "Pa55", true),
            ("NTLM", "Pa55", true),
            ("Negotiate", "wrong", false),
        ] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let proxy = tokio::spawn(ntlm_proxy_once(l, "Pa55", scheme));
            let p = ProxyUrl::parse(&format!("ntlm://CORP%5Cbob:{pass}@{addr}"))
                .unwrap()
                .unwrap();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let r = p.tunnel(tcp, "frps.example", 7000).await;
            let (reqs, a) = proxy.await.unwrap();
            assert!(
                reqs.iter()
                    .all(|r| r.starts_with("CONNECT frps.example:7000 HTTP/1.1\r\n"))
            );
            let a = a.unwrap();
            assert_eq!((a.user.as_str(), a.domain.as_str()), ("bob", "CORP"));
            match r {
                Ok(c) => {
                    assert!(ok, "{scheme} {pass}");
                    assert!(matches!(c, Conn::Tcp(_)));
                }
                Err(e) => {
                    assert!(!ok, "{scheme} {pass}: {e}");
                    let e = e.to_string();
                    assert!(e.contains("StatusCode [407]"), "{e}");
                    assert!(e.contains("CORP\\bob"), "{e}");
                }
            }
        }
    }

    #[tokio::test]
    async fn ntlm_without_credentials_is_a_plain_connect() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let proxy = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let req = read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 407 X\r\nProxy-Authenticate: Negotiate\r\n\r\n")
                .await
                .unwrap();
            req
        });
        let p = ProxyUrl::parse(&format!("ntlm://{addr}")).unwrap().unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = p.tunnel(tcp, "h", 1).await.err().unwrap();
        assert!(
            e.to_string()
                .contains("DialTcpByNTLMHttpProxy error, StatusCode [407]"),
            "{e}"
        );
        assert!(header_value(&proxy.await.unwrap(), "proxy-authorization").is_none());
    }
}
