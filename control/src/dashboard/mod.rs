//! frps' dashboard on `webServer` (spec §14.8, frp's `server/api_router.go`): the JSON API
//! frp's dashboard uses, a web page of our own at `/`, and Prometheus `/metrics` when
//! `enablePrometheus = true`.
//!
//! | endpoint | |
//! |---|---|
//! | `GET /healthz` | 200, no auth |
//! | `GET /api/serverinfo` | ports, limits, today's traffic, connections, clients, proxies per type |
//! | `GET /api/proxy/{type}` | `{"proxies":[…]}` online and offline proxies of a type |
//! | `GET /api/proxy/{type}/{name}`, `GET /api/proxies/{name}` | one proxy |
//! | `GET /api/traffic/{name}` | 7 days of in/out bytes, today first |
//! | `GET /api/clients[?user=&clientId=&runId=&status=]`, `GET /api/clients/{key}` | clients |
//! | `DELETE /api/proxies?status=offline` | forget offline proxies |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /`, `/static/` | the dashboard page |
//!
//! Everything but `/healthz` needs Basic auth when `webServer.user`/`password` are set.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;
use tracing::info;

use crate::config::ServerConfig;
use crate::web::{self, Body};

pub mod metrics;
pub mod stats;

pub use stats::Stats;
pub use web::WebError;

/// The dashboard page: HTML, CSS and JS in one file, no external assets.
const PAGE: &str = include_str!("page.html");

/// `/api/serverinfo` (frp's `ServerInfoResp`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerInfo<'a> {
    version: &'a str,
    bind_port: u16,
    #[serde(rename = "vhostHTTPPort")]
    vhost_http_port: u16,
    #[serde(rename = "vhostHTTPSPort")]
    vhost_https_port: u16,
    #[serde(rename = "tcpmuxHTTPConnectPort")]
    tcpmux_http_connect_port: u16,
    #[serde(rename = "kcpBindPort")]
    kcp_bind_port: u16,
    #[serde(rename = "quicBindPort")]
    quic_bind_port: u16,
    subdomain_host: &'a str,
    max_pool_count: i64,
    max_ports_per_client: i64,
    heartbeat_timeout: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    allow_ports_str: String,
    #[serde(rename = "tlsForce", skip_serializing_if = "std::ops::Not::not")]
    tls_force: bool,
    total_traffic_in: u64,
    total_traffic_out: u64,
    cur_conns: u64,
    client_counts: i64,
    #[serde(rename = "proxyTypeCount")]
    proxy_type_counts: std::collections::BTreeMap<String, i64>,
}

/// frps' dashboard, bound and ready to run.
pub struct Dashboard {
    listener: web::Listener,
    cfg: Arc<ServerConfig>,
    stats: Arc<Stats>,
}

impl Dashboard {
    /// Binds `webServer.addr:port`.
    pub async fn bind(cfg: &ServerConfig, stats: Arc<Stats>) -> Result<Dashboard, WebError> {
        Ok(Dashboard {
            listener: web::Listener::bind(&cfg.web_server).await?,
            cfg: Arc::new(cfg.clone()),
            stats,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped; also reads the traffic counters every minute so each
    /// day's traffic lands in its own day.
    pub async fn run(self) {
        let sampler = {
            let stats = self.stats.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                let mut sweep = tokio::time::interval(Duration::from_secs(12 * 3600));
                loop {
                    tokio::select! {
                        _ = tick.tick() => stats.sample(),
                        _ = sweep.tick() => {
                            // frp forgets proxies offline for 7 days.
                            stats.clear_offline(chrono::Duration::days(7));
                        }
                    }
                }
            })
        };
        let (cfg, stats) = (self.cfg, self.stats);
        self.listener
            .serve("dashboard", move |req| {
                let (cfg, stats) = (cfg.clone(), stats.clone());
                async move { handle(&cfg, &stats, req).await }
            })
            .await;
        sampler.abort();
    }
}

async fn handle(cfg: &ServerConfig, stats: &Stats, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return web::ok_empty();
    }
    let web_cfg = &cfg.web_server;
    if !web::authorized(&req, &web_cfg.user, &web_cfg.password) {
        return web::unauthorized().await;
    }
    let seg = web::segments(&req);
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let q = web::query(&req);
    let get = method == Method::GET;
    let resp = match (seg.as_slice(), get) {
        (["metrics"], _) if cfg.enable_prometheus => match metrics::render(stats) {
            Ok(text) => {
                let mut r = web::text(StatusCode::OK, text);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(metrics::CONTENT_TYPE),
                );
                r
            }
            Err(e) => web::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        (["api", "serverinfo"], true) => web::json(StatusCode::OK, &server_info(cfg, stats)),
        (["api", "proxy", ty], true) => web::json(
            StatusCode::OK,
            &serde_json::json!({ "proxies": stats.proxies(Some(ty)) }),
        ),
        (["api", "proxy", ty, name], true) => match stats.proxy(name) {
            Some(p) if p.proxy_type == *ty => web::json(StatusCode::OK, &p),
            _ => web::error(StatusCode::NOT_FOUND, "no proxy info found"),
        },
        (["api", "proxies", name], true) => match stats.proxy(name) {
            Some(p) => web::json(StatusCode::OK, &p),
            None => web::error(StatusCode::NOT_FOUND, "no proxy info found"),
        },
        (["api", "traffic", name], true) => match stats.traffic(name) {
            Some(t) => web::json(StatusCode::OK, &t),
            None => web::error(StatusCode::NOT_FOUND, "no proxy info found"),
        },
        (["api", "clients"], true) => {
            let f = |k: &str| q.get(k).map(String::as_str);
            web::json(
                StatusCode::OK,
                &stats.clients(f("user"), f("clientId"), f("runId"), f("status")),
            )
        }
        (["api", "clients", key], true) => match stats.client(key) {
            Some(c) => web::json(StatusCode::OK, &c),
            None => web::error(StatusCode::NOT_FOUND, &format!("client {key} not found")),
        },
        (["api", "proxies"], false) if method == Method::DELETE => {
            if q.get("status").map(String::as_str) != Some("offline") {
                web::error(StatusCode::BAD_REQUEST, "status only support offline")
            } else {
                let (cleared, total) = stats.clear_offline(chrono::Duration::zero());
                info!("cleared [{cleared}] offline proxies, total [{total}] proxies");
                web::json(
                    StatusCode::OK,
                    &web::GeneralResponse {
                        code: 200,
                        msg: "success",
                    },
                )
            }
        }
        ([""] | ["static", ..] | ["index.html"], true) => {
            let mut r = web::text(StatusCode::OK, PAGE);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        (["api", ..] | [""] | ["static", ..], false) => {
            web::text(StatusCode::METHOD_NOT_ALLOWED, "")
        }
        _ => web::text(StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    web::log_request(&method, &path, resp.status());
    resp
}

fn server_info<'a>(cfg: &'a ServerConfig, stats: &Stats) -> ServerInfo<'a> {
    let s = stats.server();
    ServerInfo {
        version: crate::FRP_VERSION,
        bind_port: cfg.bind_port,
        vhost_http_port: cfg.vhost_http_port,
        vhost_https_port: cfg.vhost_https_port,
        tcpmux_http_connect_port: cfg.tcpmux_http_connect_port,
        kcp_bind_port: cfg.kcp_bind_port,
        quic_bind_port: cfg.quic_bind_port,
        subdomain_host: &cfg.sub_domain_host,
        max_pool_count: cfg.transport.max_pool_count,
        max_ports_per_client: cfg.max_ports_per_client,
        heartbeat_timeout: cfg.transport.heartbeat_timeout,
        allow_ports_str: allow_ports_str(cfg),
        tls_force: cfg.transport.tls.force,
        total_traffic_in: s.total_traffic_in,
        total_traffic_out: s.total_traffic_out,
        cur_conns: s.cur_conns,
        client_counts: s.client_counts,
        proxy_type_counts: s.proxy_type_counts,
    }
}

/// frp's `PortsRangeSlice.String()`: "2000-3000,3001".
fn allow_ports_str(cfg: &ServerConfig) -> String {
    cfg.allow_ports
        .iter()
        .filter_map(|r| {
            if r.single > 0 {
                Some(r.single.to_string())
            } else if r.start > 0 || r.end > 0 {
                Some(format!("{}-{}", r.start, r.end))
            } else {
                None
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigFormat, server_config_from_str};

    #[test]
    fn server_info_shape() {
        let cfg = server_config_from_str(
            "bindPort = 7001\nallowPorts = [{start = 2000, end = 3000}, {single = 3001}]\n",
            ConfigFormat::Toml,
            true,
        )
        .unwrap();
        let stats = Stats::new();
        let v = serde_json::to_value(server_info(&cfg, &stats)).unwrap();
        assert_eq!(v["bindPort"], 7001);
        assert_eq!(v["allowPortsStr"], "2000-3000,3001");
        assert_eq!(v["version"], crate::FRP_VERSION);
        assert_eq!(v["maxPoolCount"], 5);
        assert!(v.get("tlsForce").is_none());
        for k in [
            "vhostHTTPPort",
            "vhostHTTPSPort",
            "tcpmuxHTTPConnectPort",
            "kcpBindPort",
            "quicBindPort",
            "subdomainHost",
            "maxPortsPerClient",
            "heartbeatTimeout",
            "totalTrafficIn",
            "totalTrafficOut",
            "curConns",
            "clientCounts",
            "proxyTypeCount",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
    }

    #[test]
    fn page_is_self_contained() {
        // Nothing loaded from elsewhere: frps may run offline.
        for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
            assert!(!PAGE.contains(external), "page loads {external}…");
        }
        for api in [
            "/api/serverinfo",
            "/api/clients",
            "/api/proxy/",
            "/api/traffic/",
        ] {
            assert!(PAGE.contains(api), "page does not use {api}");
        }
    }
}
