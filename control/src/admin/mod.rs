//! frpc's admin API on `webServer` (spec §14.7, frp's `client/api_router.go`):
//!
//! | endpoint | |
//! |---|---|
//! | `GET /healthz` | 200, no auth |
//! | `GET`/`POST /api/reload[?strictConfig=true]` | re-read the config file, apply its proxies |
//! | `POST /api/stop` | graceful stop (CloseProxy for all, 100 ms, exit 0) |
//! | `GET /api/status` | proxies by type |
//! | `GET`/`PUT /api/config` | the config file's raw text |
//! | `GET /api/proxy/{name}/config`, `GET /api/visitor/{name}/config` | a proxy's or visitor's config as it runs (else the store's) |
//! | `/api/store/proxies[/{name}]`, `/api/store/visitors[/{name}]` | with `store.path`: see [`store_api`] |
//!
//! Everything but `/healthz` needs Basic auth when `webServer.user`/`password` are set.
//! Errors are frp's `{"Code":n,"Msg":"…"}` with status n.
//!
//! [`api_client`] is the other end, used by `frpc reload|status|stop`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::info;

use crate::client::store::ConfigSources;
use crate::client::{Client, ProxyStatus};
use crate::config::{self, ClientConfig, ConfigFormat, WebServerConfig};
use crate::web::{self, Body};

pub mod api_client;
pub mod store_api;

pub use crate::web::WebError;

/// One proxy in `/api/status` (frp's `ProxyStatusResp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatusResp {
    pub name: String,
    #[serde(rename = "type")]
    pub proxy_type: String,
    pub status: String,
    pub err: String,
    pub local_addr: String,
    pub plugin: String,
    pub remote_addr: String,
    /// "store" for a proxy of the store (frp omits it otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// `/api/status`: proxy type → proxies sorted by name.
pub type StatusResp = BTreeMap<String, Vec<ProxyStatusResp>>;

/// frp's proxy types in the order `frpc status` prints them.
pub const STATUS_TYPE_ORDER: [&str; 8] = [
    "tcp", "udp", "tcpmux", "http", "https", "stcp", "sudp", "xtcp",
];

/// The running admin server's view of frpc.
struct Admin {
    client: Arc<Client>,
    /// The config file frpc was started with; reload and `/api/config` use it (empty when
    /// the proxies came from the command line).
    config_path: PathBuf,
    /// `--strict_config` of the running frpc (used to check a PUT config).
    strict: bool,
    user: String,
    password: String,
    stop: Arc<Notify>,
    /// The config file's proxies and the store's; frp's `reloadMu` (a reload or a store
    /// change at a time).
    sources: std::sync::Mutex<ConfigSources>,
    /// `store.path` is set: the `/api/store/*` routes exist.
    store_enabled: bool,
}

/// frpc's admin server, bound and ready to run.
pub struct AdminServer {
    listener: web::Listener,
    admin: Arc<Admin>,
}

impl AdminServer {
    /// Binds `webServer.addr:port`. `stop` is notified on `POST /api/stop`. `sources` are
    /// what `client` was started with (the config file and the store).
    pub async fn bind(
        cfg: &WebServerConfig,
        client: Arc<Client>,
        config_path: PathBuf,
        strict: bool,
        stop: Arc<Notify>,
        sources: ConfigSources,
    ) -> Result<AdminServer, WebError> {
        let listener = web::Listener::bind(cfg).await?;
        let store_enabled = sources.store.is_some();
        Ok(AdminServer {
            listener,
            admin: Arc::new(Admin {
                client,
                config_path,
                strict,
                user: cfg.user.clone(),
                password: cfg.password.clone(),
                stop,
                sources: std::sync::Mutex::new(sources),
                store_enabled,
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        let admin = self.admin;
        self.listener
            .serve("admin server", move |req| {
                let admin = admin.clone();
                async move { admin.handle(req).await }
            })
            .await
    }
}

impl Admin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return web::ok_empty();
        }
        if !web::authorized(&req, &self.user, &self.password) {
            return web::unauthorized().await;
        }
        let resp = match (&method, path.as_str()) {
            (&Method::GET | &Method::POST, "/api/reload") => self.reload(&req).await,
            (&Method::POST, "/api/stop") => self.stop(),
            (&Method::GET, "/api/status") => web::json(StatusCode::OK, &self.status()),
            (&Method::GET, "/api/config") => self.get_config(),
            (&Method::PUT, "/api/config") => self.put_config(req).await,
            (_, "/api/reload" | "/api/stop" | "/api/status" | "/api/config") => {
                web::text(StatusCode::METHOD_NOT_ALLOWED, "")
            }
            _ => match store_api::route(&req).filter(|_| self.store_enabled) {
                Some(route) => self.store(route, req).await,
                None => match store_api::config_route(&req) {
                    Some(route) => self.running_config(route, &method),
                    None => web::text(StatusCode::NOT_FOUND, "404 page not found\n"),
                },
            },
        };
        web::log_request(&method, &path, resp.status());
        resp
    }

    fn status(&self) -> StatusResp {
        let mut s = status_resp(self.client.server_addr(), &self.client.proxy_status());
        let sources = self.sources.lock().unwrap();
        for p in s.values_mut().flatten() {
            if sources.is_store_proxy_enabled(&p.name) {
                p.source = "store".into();
            }
        }
        s
    }

    async fn reload(&self, req: &Request<Incoming>) -> Response<Body> {
        // frp: non-strict unless the query says otherwise (`frpc reload` sends true).
        let strict = web::query(req)
            .get("strictConfig")
            .and_then(|v| parse_go_bool(v))
            .unwrap_or(false);
        if self.config_path.as_os_str().is_empty() {
            return web::error(
                StatusCode::BAD_REQUEST,
                "invalid argument: frpc has no config file path",
            );
        }
        let path = self.config_path.clone();
        let features = self.client.unsafe_features().clone();
        let loaded =
            tokio::task::spawn_blocking(move || load_and_validate(&path, strict, &features)).await;
        let cfg = match loaded {
            Ok(Ok(cfg)) => cfg,
            Ok(Err(msg)) => return web::error(StatusCode::BAD_REQUEST, &msg),
            Err(e) => return web::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        {
            // The store's proxies stay; a store entry still wins over a file entry.
            let mut sources = self.sources.lock().unwrap();
            sources.file = cfg;
            self.client.reload(&sources.merged());
        }
        info!("success reload conf");
        web::ok_empty()
    }

    fn stop(&self) -> Response<Body> {
        // Answer first, then stop (frp: `go GracefulClose(100ms)`).
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.notify_one();
        });
        web::ok_empty()
    }

    fn get_config(&self) -> Response<Body> {
        match std::fs::read(&self.config_path) {
            Ok(b) => web::text(StatusCode::OK, b),
            Err(e) => web::error(
                StatusCode::BAD_REQUEST,
                &format!("invalid argument: {}: {e}", self.config_path.display()),
            ),
        }
    }

    async fn put_config(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match web::read_body(req).await {
            Ok(b) => b,
            Err(e) => {
                return web::error(
                    StatusCode::BAD_REQUEST,
                    &format!("read request body error: {e}"),
                );
            }
        };
        if body.is_empty() {
            return web::error(StatusCode::BAD_REQUEST, "body can't be empty");
        }
        let Ok(text) = std::str::from_utf8(&body) else {
            return web::error(StatusCode::BAD_REQUEST, "config is not UTF-8 text");
        };
        // A file that would not load would break the next reload and restart: refuse it.
        let format = ConfigFormat::from_path(&self.config_path);
        let checked = config::client_config_from_str(text, format, self.strict)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                c.validate_for_run_with(self.client.unsafe_features())
                    .map_err(|e| e.0)
            });
        if let Err(msg) = checked {
            return web::error(StatusCode::BAD_REQUEST, &format!("invalid config: {msg}"));
        }
        match std::fs::write(&self.config_path, &body) {
            Ok(()) => web::ok_empty(),
            Err(e) => web::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("write {}: {e}", self.config_path.display()),
            ),
        }
    }
}

/// Loads the config file as frpc would at start-up, with frp's validation.
fn load_and_validate(
    path: &std::path::Path,
    strict: bool,
    features: &config::UnsafeFeatures,
) -> Result<ClientConfig, String> {
    let cfg = config::load_client_config(path, strict).map_err(|e| e.to_string())?;
    cfg.validate_for_run_with(features).map_err(|e| e.0)?;
    Ok(cfg)
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// frp's `buildProxyStatusResp` for every proxy, grouped by type.
pub fn status_resp(server_addr: &str, proxies: &[ProxyStatus]) -> StatusResp {
    let mut out = StatusResp::new();
    for p in proxies {
        let mut remote_addr = String::new();
        if p.err.is_empty() {
            remote_addr = p.remote_addr.clone();
            if p.proxy_type == "tcp" || p.proxy_type == "udp" {
                remote_addr = format!("{server_addr}{remote_addr}");
            }
        }
        out.entry(p.proxy_type.clone())
            .or_default()
            .push(ProxyStatusResp {
                name: p.name.clone(),
                proxy_type: p.proxy_type.clone(),
                status: p.status.to_string(),
                err: p.err.clone(),
                local_addr: p.local_addr.clone(),
                plugin: p.plugin.clone(),
                remote_addr,
                source: String::new(),
            });
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

/// `frpc status` output: "Proxy Status...", then one table per proxy type in frp's order,
/// columns left-aligned and padded to the widest cell plus two spaces (rodaine/table).
pub fn format_status(status: &StatusResp) -> String {
    let mut out = String::from("Proxy Status...\n\n");
    for ty in STATUS_TYPE_ORDER {
        let Some(rows) = status.get(ty).filter(|r| !r.is_empty()) else {
            continue;
        };
        out.push_str(&ty.to_uppercase());
        out.push('\n');
        let header = [
            "Name",
            "Status",
            "LocalAddr",
            "Plugin",
            "RemoteAddr",
            "Error",
        ];
        let cells: Vec<[&str; 6]> = rows
            .iter()
            .map(|p| {
                [
                    p.name.as_str(),
                    p.status.as_str(),
                    p.local_addr.as_str(),
                    p.plugin.as_str(),
                    p.remote_addr.as_str(),
                    p.err.as_str(),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count() + 2);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count() + 2);
            }
        }
        for row in std::iter::once(&header).chain(cells.iter()) {
            for (w, c) in widths.iter().zip(row) {
                out.push_str(c);
                out.extend(std::iter::repeat_n(' ', w - c.chars().count()));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps(name: &str, ty: &str, status: &'static str, remote: &str, err: &str) -> ProxyStatus {
        ProxyStatus {
            name: name.into(),
            proxy_type: ty.into(),
            status,
            err: err.into(),
            local_addr: "127.0.0.1:22".into(),
            plugin: String::new(),
            remote_addr: remote.into(),
        }
    }

    #[test]
    fn status_json_matches_frp() {
        let s = status_resp(
            "example.com",
            &[
                ps("web", "http", "running", "http://a.example.com", ""),
                ps("ssh", "tcp", "running", ":6000", ""),
                ps("bad", "tcp", "start error", "", "port already used"),
            ],
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "http": [{"name":"web","type":"http","status":"running","err":"",
                          "local_addr":"127.0.0.1:22","plugin":"","remote_addr":"http://a.example.com"}],
                "tcp": [
                    {"name":"bad","type":"tcp","status":"start error","err":"port already used",
                     "local_addr":"127.0.0.1:22","plugin":"","remote_addr":""},
                    {"name":"ssh","type":"tcp","status":"running","err":"",
                     "local_addr":"127.0.0.1:22","plugin":"","remote_addr":"example.com:6000"}
                ]
            })
        );
    }

    #[test]
    fn status_table_like_frpc() {
        let s = status_resp(
            "1.2.3.4",
            &[
                ps("ssh", "tcp", "running", ":6000", ""),
                ps("web", "http", "wait start", "", ""),
            ],
        );
        let want = "Proxy Status...\n\n\
TCP\n\
Name  Status   LocalAddr     Plugin  RemoteAddr    Error  \n\
ssh   running  127.0.0.1:22          1.2.3.4:6000         \n\
\n\
HTTP\n\
Name  Status      LocalAddr     Plugin  RemoteAddr  Error  \n\
web   wait start  127.0.0.1:22                             \n\
\n";
        assert_eq!(format_status(&s), want);
    }

    #[test]
    fn go_bools() {
        assert_eq!(parse_go_bool("True"), Some(true));
        assert_eq!(parse_go_bool("0"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
    }
}
