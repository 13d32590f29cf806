//! A client of frpc's admin API (frp's `pkg/sdk/client`), used by `frpc reload|status|stop`:
//! plain HTTP to `webServer.addr:port`, Basic auth when a user or password is set, any status
//! but 200 an error ("api status code [N]").

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::StatusResp;
use crate::config::WebServerConfig;

/// Why an admin API call failed; the messages read like frp's.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} \"{url}\": {reason}")]
    Transport {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{method} \"{url}\": context deadline exceeded")]
    Timeout { method: Method, url: String },
    #[error("api status code [{}]", .status.as_u16())]
    Status { status: StatusCode, body: Bytes },
    #[error("unmarshal http response error: {0}")]
    Decode(String),
}

/// frpc's admin API at one address.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// host:port
    addr: String,
    user: String,
    password: String,
    timeout: Duration,
}

impl AdminClient {
    /// The admin API of a frpc configured with `web` (`addr` 0.0.0.0 or empty means this host).
    pub fn new(web: &WebServerConfig, timeout: Duration) -> AdminClient {
        let host = match web.addr.as_str() {
            "" | "0.0.0.0" => "127.0.0.1",
            "::" => "::1",
            h => h,
        };
        let addr = if host.contains(':') {
            format!("[{host}]:{}", web.port)
        } else {
            format!("{host}:{}", web.port)
        };
        AdminClient {
            addr,
            user: web.user.clone(),
            password: web.password.clone(),
            timeout,
        }
    }

    /// One request; the status and body, whatever the status.
    pub async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let url = format!("http://{}{path_and_query}", self.addr);
        let go_method = go_method_name(&method);
        let transport = |reason: String| ApiError::Transport {
            method: go_method.clone(),
            url: url.clone(),
            reason,
        };
        let call = async {
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| transport(format!("dial tcp {}: {}", self.addr, go_io_error(&e))))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| transport(e.to_string()))?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path_and_query)
                .header(header::HOST, &self.addr);
            if !self.user.is_empty() || !self.password.is_empty() {
                req = req.header(
                    header::AUTHORIZATION,
                    crate::web::basic_auth_header(&self.user, &self.password),
                );
            }
            let req = req
                .body(Full::new(body.unwrap_or_default()))
                .map_err(|e| transport(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| transport(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            Ok((status, bytes))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout {
                method: go_method,
                url,
            }),
        }
    }

    /// A request that must answer 200; its body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, ApiError> {
        let (status, body) = self.raw(method, path, body).await?;
        if status != StatusCode::OK {
            return Err(ApiError::Status { status, body });
        }
        Ok(body)
    }

    /// `GET /api/reload` (with `?strictConfig=true` in strict mode, as frp sends it).
    pub async fn reload(&self, strict: bool) -> Result<(), ApiError> {
        let path = if strict {
            "/api/reload?strictConfig=true"
        } else {
            "/api/reload"
        };
        self.call(Method::GET, path, None).await.map(drop)
    }

    /// `POST /api/stop`.
    pub async fn stop(&self) -> Result<(), ApiError> {
        self.call(Method::POST, "/api/stop", None).await.map(drop)
    }

    /// `GET /api/status`.
    pub async fn status(&self) -> Result<StatusResp, ApiError> {
        let body = self.call(Method::GET, "/api/status", None).await?;
        serde_json::from_slice(&body)
            .map_err(|_| ApiError::Decode(String::from_utf8_lossy(&body).trim().to_string()))
    }

    /// `GET /api/config`.
    pub async fn get_config(&self) -> Result<String, ApiError> {
        let body = self.call(Method::GET, "/api/config", None).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `PUT /api/config`.
    pub async fn put_config(&self, text: &str) -> Result<(), ApiError> {
        self.call(
            Method::PUT,
            "/api/config",
            Some(Bytes::copy_from_slice(text.as_bytes())),
        )
        .await
        .map(drop)
    }
}

/// An I/O error worded like Go's net errors ("connect: connection refused").
fn go_io_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connect: connection refused".into(),
        TimedOut => "i/o timeout".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_lowercase(),
                None => s,
            }
        }
    }
}

/// Go prints methods capitalised only at the start ("Get", "Post") in client errors.
fn go_method_name(m: &Method) -> Method {
    let s = m.as_str();
    let mut t = s[..1].to_string();
    t.push_str(&s[1..].to_ascii_lowercase());
    Method::from_bytes(t.as_bytes()).unwrap_or_else(|_| m.clone())
}

/// Go's `time.ParseDuration` for the CLI's `--api-timeout`: "30s", "1m30s", "500ms", "1.5h".
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("time: invalid duration \"{s}\"");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("30").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("5x").is_err());
    }

    #[test]
    fn method_names_as_go_prints_them() {
        assert_eq!(go_method_name(&Method::GET).as_str(), "Get");
        assert_eq!(go_method_name(&Method::POST).as_str(), "Post");
    }
}
