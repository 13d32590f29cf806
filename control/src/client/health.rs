//! Health checks of local services (`healthCheck`, frp's `client/health`): every
//! `intervalSeconds` a check with a `timeoutSeconds` deadline —
//!
//! - `tcp`: connect to `localIP:localPort`;
//! - `http`: `GET http://localIP:localPort{path}` with `httpHeaders` (hyper's HTTP/1 client);
//!   a 2xx status is healthy.
//!
//! A monitor starts unhealthy; the first success reports "healthy" (the proxy registers), and
//! `maxFailed` consecutive failures after that report "unhealthy" (the proxy is withdrawn with
//! CloseProxy). Reports go to the control session, which owns the proxy phases. Log lines are
//! frp's.
//!
//! Difference from frp: frp never resets its failure counter after a success, so once a proxy
//! has failed `maxFailed` times in its life, a single later failure withdraws it again; here the
//! count is of *consecutive* failures, as documented for `maxFailed`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, trace, warn};

use crate::config::ProxyConfig;

/// Whether `p` has a health check (frp: a type and a local port).
pub(crate) fn enabled(p: &ProxyConfig) -> bool {
    !p.health_check.check_type.is_empty() && p.local_port > 0
}

/// A status change of one proxy's check: (proxy name, healthy).
pub(crate) type Report = (String, bool);

/// What to check.
#[derive(Debug, Clone)]
enum Check {
    Tcp {
        addr: String,
    },
    Http {
        addr: String,
        path: String,
        headers: Vec<(String, String)>,
    },
}

/// Starts the monitor of `p` (which must be [`enabled`]). It runs until the handle is aborted.
pub(crate) fn spawn(p: &ProxyConfig, reports: mpsc::Sender<Report>) -> JoinHandle<()> {
    let hc = &p.health_check;
    let addr = super::join_host_port(&p.local_ip, p.local_port);
    let check = if hc.check_type == "http" {
        let path = if hc.path.starts_with('/') {
            hc.path.clone()
        } else {
            format!("/{}", hc.path)
        };
        Check::Http {
            addr,
            path,
            headers: hc
                .http_headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    } else {
        Check::Tcp { addr }
    };
    let monitor = Monitor {
        name: p.name.clone(),
        check,
        interval: Duration::from_secs(hc.interval_seconds.max(1) as u64),
        timeout: Duration::from_secs(hc.timeout_seconds.max(1) as u64),
        max_failed: hc.max_failed.max(1) as u64,
    };
    tokio::spawn(monitor.run(reports))
}

struct Monitor {
    name: String,
    check: Check,
    interval: Duration,
    timeout: Duration,
    max_failed: u64,
}

impl Monitor {
    async fn run(self, reports: mpsc::Sender<Report>) {
        let name = &self.name;
        let mut ok = false;
        let mut failed = 0u64;
        loop {
            let result = match tokio::time::timeout(self.timeout, check(&self.check)).await {
                Ok(r) => r,
                Err(_) => Err("i/o timeout".to_string()),
            };
            match result {
                Ok(()) => {
                    trace!("[{name}] do one health check success");
                    failed = 0;
                    if !ok {
                        info!("[{name}] health check status change to success");
                        ok = true;
                        if reports.send((name.clone(), true)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    warn!("[{name}] do one health check failed: {e}");
                    failed += 1;
                    if ok && failed >= self.max_failed {
                        warn!("[{name}] health check status change to failed");
                        ok = false;
                        if reports.send((name.clone(), false)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

async fn check(c: &Check) -> Result<(), String> {
    match c {
        Check::Tcp { addr } => TcpStream::connect(addr.as_str())
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {addr}: {e}")),
        Check::Http {
            addr,
            path,
            headers,
        } => http_check(addr, path, headers).await,
    }
}

async fn http_check(addr: &str, path: &str, headers: &[(String, String)]) -> Result<(), String> {
    let url = format!("http://{addr}{path}");
    let err = |e: &dyn std::fmt::Display| format!("Get \"{url}\": {e}");
    let tcp = TcpStream::connect(addr).await.map_err(|e| err(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| err(&e))?;
    let conn = tokio::spawn(conn);
    // Go: Host is the address unless a "Host" header overrides it; other headers as given
    // (a later one with the same name wins, like http.Header.Set).
    let host = headers
        .iter()
        .rev()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map_or(addr, |(_, v)| v.as_str());
    let mut req = Request::get(path).header(hyper::header::HOST, host);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("host") {
            continue;
        }
        if let Some(h) = req.headers_mut() {
            let name =
                hyper::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| err(&e))?;
            let value = hyper::header::HeaderValue::from_str(value).map_err(|e| err(&e))?;
            h.insert(name, value);
        }
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| err(&e))?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| err(&e))?;
        let status = resp.status();
        resp.into_body().collect().await.map_err(|e| err(&e))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "do http health check, StatusCode is [{}] not 2xx",
                status.as_u16()
            ))
        }
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server answering `status`; returns its port and what it received.
    async fn http_once(status: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8(req).unwrap()
        });
        (port, task)
    }

    #[tokio::test]
    async fn http_2xx_is_healthy_and_sends_path_host_and_headers() {
        let (port, got) = http_once("204 No Content").await;
        let addr = format!("127.0.0.1:{port}");
        let headers = vec![("X-Probe".to_string(), "frp".to_string())];
        http_check(&addr, "/healthz?x=1", &headers).await.unwrap();
        let req = got.await.unwrap().to_ascii_lowercase();
        assert!(req.starts_with("get /healthz?x=1 http/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{req}"
        );
        assert!(req.contains("x-probe: frp\r\n"), "{req}");
    }

    #[tokio::test]
    async fn http_non_2xx_fails_with_frps_text() {
        let (port, _got) = http_once("500 Internal Server Error").await;
        let e = http_check(&format!("127.0.0.1:{port}"), "/", &[])
            .await
            .unwrap_err();
        assert_eq!(e, "do http health check, StatusCode is [500] not 2xx");
    }

    #[tokio::test]
    async fn host_header_overrides_the_address() {
        let (port, got) = http_once("200 OK").await;
        let headers = vec![("Host".to_string(), "example.test".to_string())];
        http_check(&format!("127.0.0.1:{port}"), "/", &headers)
            .await
            .unwrap();
        let req = got.await.unwrap().to_ascii_lowercase();
        assert!(req.contains("host: example.test\r\n"), "{req}");
    }

    #[tokio::test]
    async fn tcp_check_needs_a_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        check(&Check::Tcp { addr: addr.clone() }).await.unwrap();
        drop(l);
        assert!(check(&Check::Tcp { addr }).await.is_err());
    }
}
