//! `transport.proxyURL` (spec §2.1): frpc reaches frps through an HTTP CONNECT or SOCKS5
//! proxy (tcp and websocket transports only). The tunnel is set up on the bare TCP socket, so
//! what comes back is still a `TcpStream` (the data plane may splice it).
//!
//! - `http://[user:pass@]host:port`: `CONNECT serverAddr:serverPort` with
//!   `Proxy-Authorization: Basic …` when credentials are given; any status but 200 fails.
//! - `socks5://[user:pass@]host:port`: RFC 1928, username/password auth (RFC 1929) when
//!   credentials are given; the target is sent as a domain name unless it is an IP literal.
//! - `https://` and `ntlm://` (supported by Go frpc) are refused with a clear error.

use std::io;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest CONNECT response head we accept.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// The proxy's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Http,
    Socks5,
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
    #[error(
        "transport.proxyURL scheme [{0}] is not supported by this frpc build (use http or socks5)"
    )]
    Unsupported(String),
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
            "socks5" => ProxyKind::Socks5,
            "https" | "ntlm" => return Err(ProxyUrlError::Unsupported(scheme.to_string())),
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

    /// Asks the proxy, already connected on `tcp`, for a tunnel to `host:port`.
    pub async fn tunnel(&self, tcp: TcpStream, host: &str, port: u16) -> io::Result<TcpStream> {
        match self.kind {
            ProxyKind::Http => http_connect(tcp, host, port, self.auth.as_ref()).await,
            ProxyKind::Socks5 => {
                let target = (host.trim_start_matches('[').trim_end_matches(']'), port);
                let s = match &self.auth {
                    Some((user, pass)) => {
                        tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                            tcp, target, user, pass,
                        )
                        .await
                    }
                    None => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, target).await,
                }
                .map_err(|e| io::Error::other(format!("socks5 proxy: {e}")))?;
                Ok(s.into_inner())
            }
        }
    }
}

/// `host:port` with IPv6 brackets, as in a CONNECT request line.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn http_connect(
    mut tcp: TcpStream,
    host: &str,
    port: u16,
    auth: Option<&(String, String)>,
) -> io::Result<TcpStream> {
    let target = authority(host, port);
    let mut req =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: Mozilla/5.0\r\n");
    if let Some((user, pass)) = auth {
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Proxy-Authorization: Basic {cred}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;

    // Byte by byte up to the end of the head: nothing after it may be consumed (frps' bytes
    // never come before we speak, but a proxy may pipeline them).
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(io::Error::other("http proxy: response head too large"));
        }
        let b = tcp.read_u8().await.map_err(|e| {
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
    match resp.code {
        Some(200) => Ok(tcp),
        code => Err(io::Error::other(format!(
            "DialTcpByHttpProxy error, StatusCode [{}]",
            code.unwrap_or(0)
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
        assert_eq!(p.auth, None);
        assert!(
            ProxyUrl::parse("ntlm://u:p@h:1")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(matches!(
            ProxyUrl::parse("https://h:1"),
            Err(ProxyUrlError::Unsupported(_))
        ));
        assert!(matches!(
            ProxyUrl::parse("ftp://h:1"),
            Err(ProxyUrlError::UnknownScheme(_))
        ));
        let e = ProxyUrl::parse("http://user:secret@hostonly").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(ProxyUrl::parse("127.0.0.1:8080").is_err());
    }

    #[tokio::test]
    async fn http_connect_sends_credentials_and_checks_the_status() {
        for (status, ok) in [(200, true), (407, false)] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let proxy = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut req = Vec::new();
                while !req.ends_with(b"\r\n\r\n") {
                    req.push(s.read_u8().await.unwrap());
                }
                s.write_all(format!("HTTP/1.1 {status} X\r\n\r\nafter").as_bytes())
                    .await
                    .unwrap();
                String::from_utf8(req).unwrap()
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
}
