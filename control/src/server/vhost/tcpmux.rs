//! tcpmux proxies (`multiplexer = "httpconnect"`) on `tcpmuxHTTPConnectPort` (spec §11.3).
//!
//! The client opens a tunnel with `CONNECT host:port HTTP/1.1` (parsed with `httparse`: frps
//! needs the request's exact bytes for `tcpmuxPassthrough`). frps routes by host and the
//! `Proxy-Authorization` user, checks `httpUser`/`httpPassword` (407 on mismatch), answers
//! `HTTP/1.1 200 OK` — or, with `tcpmuxPassthrough`, forwards the CONNECT request itself — and
//! joins the raw streams. No route → 404 with frp's page.
//!
//! Differences from frp, both deliberate: the credentials are checked *before* the 200 is
//! written (frp writes the 200 first, then a 407), and bytes the client sent right behind the
//! CONNECT request are forwarded instead of dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use dataplane::{Endpoint, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use super::{MUX_READ_TIMEOUT, Vhost, canonical_host, parse_basic_auth};
use crate::server::State;
use crate::server::tcp::start_work_conn_for;

/// The most request-header bytes frps buffers.
const MAX_HEAD: usize = 64 * 1024;

pub(crate) async fn serve(st: Arc<State>, l: TcpListener) {
    let mut acceptor = crate::listen::Acceptor::new("");
    loop {
        let (tcp, remote) = super::accept(&l, &mut acceptor).await;
        tokio::spawn(handle(st.clone(), tcp, remote));
    }
}

async fn handle(st: Arc<State>, mut tcp: TcpStream, remote: SocketAddr) {
    let req = match tokio::time::timeout(MUX_READ_TIMEOUT, read_connect(&mut tcp)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!("get hostname from http connect request of {remote} error: {e}");
            return;
        }
        Err(_) => {
            debug!("get hostname from http connect request of {remote} error: timeout");
            return;
        }
    };
    let route = st
        .vhost
        .tcpmux
        .lock()
        .unwrap()
        .lookup(&req.host, "", &req.user)
        .cloned();
    let Some(route) = route else {
        debug!(
            "http connect request for host [{}] httpUser [{}] from {remote}: not found",
            req.host, req.user
        );
        let _ = tcp.write_all(&not_found_response(&st.vhost).await).await;
        let _ = tcp.shutdown().await;
        return;
    };
    if !route.cfg.http_user.is_empty()
        && (req.user != route.cfg.http_user || req.password != route.cfg.http_pwd)
    {
        debug!(
            "http connect request for host [{}] from {remote}: auth failed",
            req.host
        );
        let _ = tcp.write_all(PROXY_UNAUTHORIZED).await;
        let _ = tcp.shutdown().await;
        return;
    }
    let Some(member) = route.pick() else {
        let _ = tcp.write_all(&not_found_response(&st.vhost).await).await;
        return;
    };
    let prefix = if st.cfg.tcpmux_passthrough {
        req.bytes
    } else {
        if tcp.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.is_err() {
            return;
        }
        req.bytes[req.head_len..].to_vec()
    };
    debug!(
        "[{}] [{}] new tcpmux connection for host [{}] from {remote}",
        member.ctl.run_id, member.info.name, req.host
    );
    if !st.admit_user(&member.ctl, &member.info, &remote).await {
        return;
    }
    let start = start_work_conn_for(&member.info.name, &remote, tcp.local_addr().ok());
    let user = Side {
        prefix: Bytes::from(prefix),
        ..Side::plain(Endpoint::Tcp(tcp))
    };
    st.join_user_conn(member.ctl, member.info, user, start)
        .await;
}

/// frp's 407 for a CONNECT with wrong credentials.
const PROXY_UNAUTHORIZED: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\nProxy-Authenticate: Basic realm=\"Restricted\"\r\n\r\n";

/// frp's `NotFoundResponse` as Go writes it.
async fn not_found_response(vhost: &Vhost) -> Vec<u8> {
    let body = vhost.not_found_page().await;
    let mut out = format!(
        "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nContent-Type: text/html\r\nServer: frp/{}\r\n\r\n",
        body.len(),
        crate::FRP_VERSION
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// A parsed CONNECT request.
#[derive(Debug)]
pub(crate) struct ConnectRequest {
    /// Canonical host (lowercase, no port, no trailing dot).
    pub host: String,
    pub user: String,
    pub password: String,
    /// Everything read, the request head first.
    pub bytes: Vec<u8>,
    pub head_len: usize,
}

/// Reads and parses the request head; it must be a CONNECT.
pub(crate) async fn read_connect<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> io::Result<ConnectRequest> {
    let mut bytes = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request head too large",
                ));
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        if req.method != Some("CONNECT") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "connections to tcp vhost must be of method CONNECT",
            ));
        }
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        let target = req.path.unwrap_or("");
        // Authority form, as clients send it; Go falls back to the Host header otherwise.
        let host_raw = if target.starts_with('/') {
            header("Host").unwrap_or("")
        } else {
            target
        };
        let (user, password) = header("Proxy-Authorization")
            .and_then(parse_basic_auth)
            .unwrap_or_default();
        return Ok(ConnectRequest {
            host: canonical_host(host_raw),
            user,
            password,
            head_len,
            bytes,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_connect_with_credentials_and_trailing_bytes() {
        let raw = b"CONNECT A.Example.com:80 HTTP/1.1\r\nHost: a.example.com:80\r\nProxy-Authorization: Basic dTpw\r\n\r\nEXTRA";
        let mut r: &[u8] = raw;
        let req = read_connect(&mut r).await.unwrap();
        assert_eq!(req.host, "a.example.com");
        assert_eq!((req.user.as_str(), req.password.as_str()), ("u", "p"));
        assert_eq!(&req.bytes[req.head_len..], b"EXTRA");
        assert_eq!(req.bytes, raw);
    }

    #[tokio::test]
    async fn rejects_other_methods() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let e = read_connect(&mut r).await.unwrap_err();
        assert!(e.to_string().contains("must be of method CONNECT"));
    }
}
