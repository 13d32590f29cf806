//! What frpc's admin API needs from a running [`Client`]: a status snapshot of its proxies
//! and a hot reload of the proxy list (spec §14.7). Connection settings never change at run
//! time; only the proxies do.

use std::collections::HashMap;

use tracing::info;

use super::{Client, Phase, ProxyRuntime};
use crate::config::ClientConfig;
use crate::msg::CloseProxy;

/// One proxy as `/api/status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStatus {
    pub name: String,
    pub proxy_type: String,
    /// frp's phase name: "new", "wait start", "start error", "running", "check failed",
    /// "closed".
    pub status: &'static str,
    pub err: String,
    /// Empty for plugin proxies without a local port.
    pub local_addr: String,
    /// Plugin type, empty when none.
    pub plugin: String,
    /// frps' NewProxyResp.remote_addr once running (":6000" for tcp/udp, URLs for http).
    pub remote_addr: String,
}

/// What a reload changed (proxy names, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// The proxies a config makes frpc run, keyed by name, all in phase `new`.
pub(super) fn proxy_runtimes(
    cfg: &ClientConfig,
    vnet: Option<&std::sync::Arc<super::vnet::Controller>>,
) -> HashMap<String, ProxyRuntime> {
    let mut proxies = HashMap::new();
    for p in cfg.active_proxies() {
        let wire_name = if cfg.user.is_empty() {
            p.name.clone()
        } else {
            format!("{}.{}", cfg.user, p.name)
        };
        // `bandwidthLimitMode = "client"` (the default): frpc enforces the limit.
        let limit = p.transport.bandwidth_limit.bytes();
        let limiter = (limit > 0 && p.transport.bandwidth_limit_mode != "server")
            .then(|| std::sync::Arc::new(dataplane::RateLimiter::new(limit as u64)));
        proxies.insert(
            p.name.clone(),
            ProxyRuntime {
                cfg: std::sync::Arc::new(p.clone()),
                wire_name,
                phase: Phase::New,
                limiter,
                healthy: !super::health::enabled(p),
                udp_work: None,
                sudp_work: Vec::new(),
                plugin: p
                    .plugin
                    .as_ref()
                    .and_then(|c| super::plugin::create(c, &p.name, vnet)),
            },
        );
    }
    proxies
}

impl Phase {
    /// frp's name for the phase (`client/proxy/proxy_wrapper.go`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::New => "new",
            Phase::WaitStart(_) => "wait start",
            Phase::StartError(..) => "start error",
            Phase::Running { .. } => "running",
            Phase::CheckFailed => "check failed",
        }
    }
}

impl Client {
    /// `serverAddr` as configured (frp prefixes tcp/udp remote addresses with it).
    pub fn server_addr(&self) -> &str {
        &self.cfg.server_addr
    }

    /// The config of the proxy `name` as it runs (completed with defaults).
    pub fn proxy_config(&self, name: &str) -> Option<crate::config::ProxyConfig> {
        let proxies = self.proxies.lock().unwrap();
        proxies.get(name).map(|p| p.cfg.as_ref().clone())
    }

    /// The config of the visitor `name` as it runs.
    pub fn visitor_config(&self, name: &str) -> Option<crate::config::VisitorConfig> {
        self.visitors.lock().unwrap().config(name).cloned()
    }

    /// A snapshot of every proxy's phase, sorted by name.
    pub fn proxy_status(&self) -> Vec<ProxyStatus> {
        let proxies = self.proxies.lock().unwrap();
        let mut out: Vec<ProxyStatus> = proxies
            .values()
            .map(|p| {
                let (err, remote_addr) = match &p.phase {
                    Phase::StartError(_, e) => (e.clone(), String::new()),
                    Phase::Running { remote_addr } => (String::new(), remote_addr.clone()),
                    _ => (String::new(), String::new()),
                };
                let local_addr = if p.cfg.local_port != 0 {
                    format!("{}:{}", super::bracket(&p.cfg.local_ip), p.cfg.local_port)
                } else {
                    String::new()
                };
                ProxyStatus {
                    name: p.cfg.name.clone(),
                    proxy_type: p.cfg.proxy_type.as_str().to_string(),
                    status: p.phase.as_str(),
                    err,
                    local_addr,
                    plugin: p
                        .cfg
                        .plugin
                        .as_ref()
                        .map(|pl| pl.plugin_type.as_str().to_string())
                        .unwrap_or_default(),
                    remote_addr,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Applies the proxies of `new` (frp's `UpdateAllConfigurer`): proxies whose config is
    /// unchanged are left alone (their entry, phase and open connections stay); changed and
    /// removed ones are closed on frps (CloseProxy); changed and added ones are registered
    /// again right away. Everything else in `new` (server, auth, transport) is ignored.
    pub fn reload(&self, new: &ClientConfig) -> ReloadSummary {
        let mut wanted = proxy_runtimes(
            &ClientConfig {
                user: self.cfg.user.clone(),
                start: new.start.clone(),
                proxies: new.proxies.clone(),
                ..ClientConfig::default()
            },
            self.vnet.as_ref(),
        );
        let mut summary = ReloadSummary::default();
        let tx = self.session_tx.lock().unwrap().clone();
        {
            let mut proxies = self.proxies.lock().unwrap();
            let mut close = Vec::new();
            proxies.retain(|name, p| match wanted.get(name) {
                Some(w) if w.cfg == p.cfg => {
                    wanted.remove(name);
                    true
                }
                other => {
                    if other.is_some() {
                        summary.changed.push(name.clone());
                    } else {
                        summary.removed.push(name.clone());
                    }
                    close.push(p.wire_name.clone());
                    false
                }
            });
            if let Some(tx) = &tx {
                for proxy_name in close {
                    // The queue holds 100 messages; a full one means a stuck connection,
                    // which frps cleans up when it dies anyway.
                    let _ = tx.try_send(CloseProxy { proxy_name }.into());
                }
            }
            for (name, rt) in wanted {
                if !summary.changed.contains(&name) {
                    summary.added.push(name.clone());
                }
                proxies.insert(name, rt);
            }
        }
        summary.added.sort();
        summary.changed.sort();
        summary.removed.sort();
        for name in &summary.removed {
            info!("[{name}] proxy removed by reload");
        }
        if let Some(tx) = &tx {
            self.register_due_proxies(tx);
        }
        let visitors = ClientConfig {
            start: new.start.clone(),
            visitors: new.visitors.clone(),
            ..ClientConfig::default()
        };
        let (v_added, v_changed, v_removed) = self
            .visitors
            .lock()
            .unwrap()
            .reload(visitors.active_visitors());
        info!(
            "reload: {} proxies added, {} changed, {} removed; {} visitors added, {} changed, {} removed",
            summary.added.len(),
            summary.changed.len(),
            summary.removed.len(),
            v_added.len(),
            v_changed.len(),
            v_removed.len()
        );
        summary
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{ConfigFormat, client_config_from_str};

    fn cfg(proxies: &str) -> ClientConfig {
        let text = format!("serverAddr = \"127.0.0.1\"\nserverPort = 1\n{proxies}");
        client_config_from_str(&text, ConfigFormat::Toml, true).unwrap()
    }

    const A: &str =
        "[[proxies]]\nname = \"a\"\ntype = \"tcp\"\nlocalPort = 1\nremotePort = 10001\n";
    const B: &str =
        "[[proxies]]\nname = \"b\"\ntype = \"tcp\"\nlocalPort = 2\nremotePort = 10002\n";
    const B2: &str =
        "[[proxies]]\nname = \"b\"\ntype = \"tcp\"\nlocalPort = 3\nremotePort = 10002\n";
    const C: &str =
        "[[proxies]]\nname = \"c\"\ntype = \"tcp\"\nlocalPort = 4\nremotePort = 10003\n";

    #[tokio::test]
    async fn reload_diffs_proxies_and_keeps_untouched_entries() {
        let client = Arc::new(Client::new(cfg(&format!("{A}{B}{C}"))).unwrap());
        // Pretend `a` is running: an untouched proxy must keep its phase.
        client.proxies.lock().unwrap().get_mut("a").unwrap().phase = Phase::Running {
            remote_addr: ":10001".into(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        *client.session_tx.lock().unwrap() = Some(tx);

        let d = "[[proxies]]\nname = \"d\"\ntype = \"tcp\"\nlocalPort = 5\nremotePort = 10004\n";
        let s = client.reload(&cfg(&format!("{A}{B2}{d}")));
        assert_eq!(s.added, ["d"]);
        assert_eq!(s.changed, ["b"]);
        assert_eq!(s.removed, ["c"]);

        let status = client.proxy_status();
        let names: Vec<_> = status.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "d"]);
        assert_eq!(status[0].status, "running");
        assert_eq!(status[0].remote_addr, ":10001");
        assert_eq!(status[0].local_addr, "127.0.0.1:1");
        assert_eq!(status[1].local_addr, "127.0.0.1:3");
        assert_eq!(status[1].status, "wait start");

        // CloseProxy for b and c, then NewProxy for b and d; nothing for a.
        let mut closed = Vec::new();
        let mut opened = Vec::new();
        while let Ok(m) = rx.try_recv() {
            match m {
                crate::msg::Message::CloseProxy(c) => closed.push(c.proxy_name),
                crate::msg::Message::NewProxy(n) => opened.push(n.proxy_name),
                other => panic!("unexpected {}", other.name()),
            }
        }
        closed.sort();
        opened.sort();
        assert_eq!(closed, ["b", "c"]);
        assert_eq!(opened, ["b", "d"]);
    }

    #[tokio::test]
    async fn reload_keeps_the_user_prefix_and_honours_start() {
        let mut c = cfg(A);
        c.user = "u".into();
        let client = Client::new(c).unwrap();
        let mut new = cfg(&format!("{A}{B}"));
        new.user = "other".into();
        new.start = vec!["b".into()];
        let s = client.reload(&new);
        assert_eq!(
            (s.added, s.removed),
            (vec!["b".to_string()], vec!["a".to_string()])
        );
        let wire = client.proxies.lock().unwrap()["b"].wire_name.clone();
        assert_eq!(wire, "u.b");
    }
}
