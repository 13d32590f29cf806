//! The registry of proxies: every registered proxy by its (global) wire name, the TCP and UDP
//! port managers and the tcp load-balancing groups. Registration picks the proxy kind's
//! `start` (tcp, udp, http/https/tcpmux, stcp/sudp), which returns what it set up as
//! [`Started`]; closing undoes exactly that ([`Proxies::release`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dataplane::{Counters, RateLimiter};
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::control::Control;
use super::hooks::CloseProxyContent;
use super::ports::PortManager;
use super::{State, tcp, udp, vhost, visitor, xtcp};
use crate::config::ServerConfig;
use crate::msg::{CloseProxy, NewProxy};

struct ProxyEntry {
    run_id: String,
    info: Arc<ProxyInfo>,
    started: Option<Started>,
}

/// Registered proxies by wire name — global across clients, as in frp — and the ports they
/// hold.
pub(crate) struct Proxies {
    entries: Mutex<HashMap<String, ProxyEntry>>,
    pub(crate) ports: Mutex<PortManager>,
    /// UDP ports of udp proxies (frp keeps separate TCP and UDP port managers).
    pub(crate) udp_ports: Mutex<PortManager>,
    /// tcp load-balancing groups by name.
    pub(crate) tcp_groups: Mutex<HashMap<String, Arc<tcp::TcpGroup>>>,
}

impl Proxies {
    pub(crate) fn new(cfg: &ServerConfig) -> Proxies {
        Proxies {
            entries: Mutex::new(HashMap::new()),
            ports: Mutex::new(PortManager::new(cfg)),
            udp_ports: Mutex::new(PortManager::new(cfg)),
            tcp_groups: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.entries.lock().unwrap().contains_key(name)
    }

    /// The owner's run id and the proxy registered as `name`.
    pub(crate) fn get(&self, name: &str) -> Option<(String, Arc<ProxyInfo>)> {
        self.entries
            .lock()
            .unwrap()
            .get(name)
            .map(|e| (e.run_id.clone(), e.info.clone()))
    }

    /// Records a started proxy of `ctl`; gives `started` back when the name was taken
    /// meanwhile (a concurrent registration).
    fn insert(&self, ctl: &Control, info: Arc<ProxyInfo>, started: Started) -> Result<(), Started> {
        let mut entries = self.entries.lock().unwrap();
        if entries.contains_key(&info.name) {
            return Err(started);
        }
        ctl.proxies.lock().unwrap().insert(info.name.clone());
        entries.insert(
            info.name.clone(),
            ProxyEntry {
                run_id: ctl.run_id.clone(),
                info,
                started: Some(started),
            },
        );
        Ok(())
    }

    /// Removes `name` if `ctl` owns it.
    fn take(&self, ctl: &Control, name: &str) -> Option<ProxyEntry> {
        let mut entries = self.entries.lock().unwrap();
        match entries.get(name) {
            Some(e) if e.run_id == ctl.run_id => entries.remove(name),
            _ => None,
        }
    }

    /// Undoes what a proxy type's start function set up: stops its tasks, frees its port.
    ///
    /// Waits for the aborted tasks to be dropped, so that the proxy's listener or UDP socket is
    /// closed when this returns: frp closes a proxy's listener before it logs "close proxy" or
    /// "client exit success", and a port handed back to the port manager must be free to bind.
    pub(crate) async fn release(&self, ctl: &Control, mut started: Started) {
        stop_tasks(std::mem::take(&mut started.tasks)).await;
        if let Some(p) = started.port {
            self.ports.lock().unwrap().release(p);
            let mut used = ctl.ports_used.lock().unwrap();
            *used = used.saturating_sub(1);
        }
        if let Some(f) = started.on_close.take() {
            f().await;
        }
    }
}

impl State {
    pub(super) async fn register_proxy(
        self: &Arc<Self>,
        ctl: &Arc<Control>,
        np: &NewProxy,
    ) -> Result<String, String> {
        let ty = proxy_type(np).to_string();
        // frp's NewProxyConfigurerFromMsg: the type must be known and the proxy must pass the
        // server-side validation before anything else is looked at.
        if !matches!(
            ty.as_str(),
            "tcp" | "udp" | "tcpmux" | "http" | "https" | "stcp" | "xtcp" | "sudp"
        ) {
            return Err(format!("unknown proxy type: {ty}"));
        }
        crate::config::validate_annotations(&np.annotations)?;
        if self.proxies.contains(&np.proxy_name) {
            return Err(format!("proxy [{}] already exists", np.proxy_name));
        }
        let info = Arc::new(ProxyInfo {
            name: np.proxy_name.clone(),
            proxy_type: ty.clone(),
            use_encryption: np.use_encryption,
            use_compression: np.use_compression,
            counters: Arc::new(Counters::default()),
            limiter: server_limiter(np),
            msg: np.clone(),
        });
        let started = match ty.as_str() {
            "tcp" => tcp::start(self, ctl, &info).await?,
            "http" => vhost::register(self, ctl, &info, vhost::Kind::Http)?,
            "https" => vhost::register(self, ctl, &info, vhost::Kind::Https)?,
            "tcpmux" => vhost::register(self, ctl, &info, vhost::Kind::TcpMux)?,
            "udp" => udp::start(self, ctl, &info).await?,
            "stcp" | "sudp" => visitor::start(ctl, &info),
            "xtcp" => xtcp::start(self, ctl, &info)?,
            other => {
                return Err(format!(
                    "proxy type [{other}] is not supported by this frps build yet"
                ));
            }
        };

        let remote_addr = started.remote_addr.clone();
        let counters = info.counters.clone();
        // A concurrent registration may have taken the name while this one started.
        if let Err(started) = self.proxies.insert(ctl, info, started) {
            self.proxies.release(ctl, started).await;
            return Err(format!("proxy [{}] already exists", np.proxy_name));
        }
        let user = &ctl.user;
        self.stats
            .on_proxy_start(np, &ty, &counters, user, &ctl.client_id);
        Ok(remote_addr)
    }

    pub(super) async fn close_proxy(&self, ctl: &Control, name: &str) {
        if let Some(mut e) = self.proxies.take(ctl, name) {
            self.stats.on_proxy_close(name);
            if let Some(started) = e.started.take() {
                self.proxies.release(ctl, started).await;
            }
            debug!(
                "[{}] proxy [{name}] type [{}] closed",
                ctl.run_id, e.info.proxy_type
            );
            self.hooks.close_proxy(CloseProxyContent {
                user: ctl.user_info(),
                close_proxy: CloseProxy {
                    proxy_name: name.to_string(),
                },
            });
        }
    }
}

/// A registered proxy as frps sees it.
pub(crate) struct ProxyInfo {
    /// Wire name (user-prefixed).
    pub name: String,
    pub proxy_type: String,
    pub use_encryption: bool,
    pub use_compression: bool,
    /// Traffic through this proxy (dashboard, metrics).
    pub counters: Arc<Counters>,
    /// `bandwidthLimitMode = "server"`: one limiter for all the proxy's traffic.
    pub limiter: Option<Arc<RateLimiter>>,
    /// The NewProxy message as received.
    pub msg: NewProxy,
}

/// What a proxy type's start function set up, undone by [`Proxies::release`].
#[derive(Default)]
pub(crate) struct Started {
    /// Tasks to abort (listeners, forwarders).
    pub tasks: Vec<JoinHandle<()>>,
    /// A port counted against `maxPortsPerClient` and released on close.
    pub port: Option<u16>,
    /// NewProxyResp.remote_addr.
    pub remote_addr: String,
    /// Extra clean-up (routes, group membership), run after `tasks` have stopped; closing
    /// is done when its future resolves.
    pub on_close: Option<OnClose>,
}

pub(crate) type OnClose = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// An [`OnClose`] for clean-up that is done when it returns.
pub(crate) fn on_close(f: impl FnOnce() + Send + 'static) -> Option<OnClose> {
    Some(Box::new(move || {
        f();
        Box::pin(std::future::ready(()))
    }))
}

/// Aborts `tasks` and returns once each has been dropped, with whatever sockets it owned.
/// (`JoinHandle::abort` alone only schedules the cancellation: the task's future, and its
/// listener, live on until a worker next polls it.)
pub(crate) async fn stop_tasks(tasks: Vec<JoinHandle<()>>) {
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        // An aborted task resolves to a cancellation error once its future is dropped.
        let _ = t.await;
    }
}

pub(super) fn proxy_type(np: &NewProxy) -> &str {
    if np.proxy_type.is_empty() {
        "tcp"
    } else {
        np.proxy_type.as_str()
    }
}

/// frps enforces `bandwidth_limit` only when frpc asked for `"server"` mode (spec §6.3);
/// rate = burst = the limit in bytes per second, as frp's `rate.NewLimiter(limit, limit)`.
fn server_limiter(np: &NewProxy) -> Option<Arc<RateLimiter>> {
    if np.bandwidth_limit_mode != "server" {
        return None;
    }
    match crate::config::BandwidthQuantity::parse(&np.bandwidth_limit) {
        Ok(q) if q.bytes() > 0 => Some(Arc::new(RateLimiter::new(q.bytes() as u64))),
        Ok(_) => None,
        Err(e) => {
            warn!(
                "proxy [{}]: bandwidth_limit {:?}: {e}; not limited",
                np.proxy_name, np.bandwidth_limit
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    /// A proxy's sockets are closed by the time `stop_tasks` returns, even while the runtime's
    /// workers are busy: the port can be bound again at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_tasks_returns_after_the_sockets_are_closed() {
        for _ in 0..20 {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            udp.set_nonblocking(true).unwrap();
            tcp.set_nonblocking(true).unwrap();
            let (udp_port, tcp_port) = (
                udp.local_addr().unwrap().port(),
                tcp.local_addr().unwrap().port(),
            );
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let holder = tokio::spawn(async move {
                let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
                let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
                let _ = ready_tx.send(());
                let mut buf = [0u8; 16];
                let _ = tokio::join!(udp.recv(&mut buf), tcp.accept());
            });
            ready_rx.await.unwrap();
            // Keep the other worker busy, so the cancelled task is not dropped by chance.
            let busy = tokio::spawn(async {
                let end = std::time::Instant::now() + Duration::from_millis(50);
                while std::time::Instant::now() < end {
                    std::hint::spin_loop();
                }
            });
            stop_tasks(vec![holder]).await;
            std::net::UdpSocket::bind(("127.0.0.1", udp_port)).expect("UDP port free");
            std::net::TcpListener::bind(("127.0.0.1", tcp_port)).expect("TCP port free");
            busy.await.unwrap();
        }
    }
}
