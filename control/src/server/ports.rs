//! Port allocation for tcp and udp proxies (spec §7.3). frps keeps one [`PortManager`] per
//! protocol, as frp does (`TCPPortManager`, `UDPPortManager`).

use std::collections::{HashMap, HashSet};

use rand::RngExt;

use super::join_host_port;
use crate::config::ServerConfig;

/// A socket a [`PortManager`] binds: a TCP listener or a UDP socket (non-blocking).
pub(crate) trait PortSocket: Sized {
    fn bind_port(addr: &str) -> std::io::Result<Self>;
    fn port(&self) -> std::io::Result<u16>;
}

impl PortSocket for std::net::TcpListener {
    fn bind_port(addr: &str) -> std::io::Result<Self> {
        crate::listen::bind_std(addr)
    }
    fn port(&self) -> std::io::Result<u16> {
        Ok(self.local_addr()?.port())
    }
}

impl PortSocket for std::net::UdpSocket {
    fn bind_port(addr: &str) -> std::io::Result<Self> {
        let s = std::net::UdpSocket::bind(addr)?;
        s.set_nonblocking(true)?;
        Ok(s)
    }
    fn port(&self) -> std::io::Result<u16> {
        Ok(self.local_addr()?.port())
    }
}

/// Port allocation for one protocol (spec §7.3): `allowPorts`, ports in use, and the port a
/// proxy name had last (so a reconnecting client asking for "any port" gets the same one).
pub(crate) struct PortManager {
    bind_addr: String,
    /// Inclusive ranges; empty = every port.
    allowed: Vec<(u16, u16)>,
    used: HashSet<u16>,
    last_port: HashMap<String, u16>,
}

impl PortManager {
    pub(crate) fn new(cfg: &ServerConfig) -> Self {
        let allowed = cfg
            .allow_ports
            .iter()
            .filter_map(|r| {
                if r.single > 0 {
                    Some((r.single, r.single))
                } else if r.start > 0 || r.end > 0 {
                    Some((r.start, r.end))
                } else {
                    None
                }
            })
            .collect();
        PortManager {
            bind_addr: cfg.proxy_bind_addr.clone(),
            allowed,
            used: HashSet::new(),
            last_port: HashMap::new(),
        }
    }

    fn is_allowed(&self, port: u16) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|&(a, b)| a <= port && port <= b)
    }

    fn bind<S: PortSocket>(&self, port: u16) -> std::io::Result<S> {
        S::bind_port(&join_host_port(&self.bind_addr, port))
    }

    /// Binds the proxy's port: `port`, or with 0 a free allowed one.
    pub(crate) fn acquire<S: PortSocket>(&mut self, name: &str, port: u16) -> Result<S, String> {
        let l: S = if port != 0 {
            if !self.is_allowed(port) {
                return Err("port not allowed".into());
            }
            if self.used.contains(&port) {
                return Err("port already used".into());
            }
            self.bind(port)
                .map_err(|_| "port unavailable".to_string())?
        } else {
            self.acquire_any(name)?
        };
        let got = l.port().map_err(|e| e.to_string())?;
        self.used.insert(got);
        self.last_port.insert(name.to_string(), got);
        Ok(l)
    }

    fn acquire_any<S: PortSocket>(&self, name: &str) -> Result<S, String> {
        if let Some(&p) = self.last_port.get(name)
            && !self.used.contains(&p)
            && self.is_allowed(p)
            && let Ok(l) = self.bind(p)
        {
            return Ok(l);
        }
        if self.allowed.is_empty() {
            // The kernel knows best which port is free.
            return self.bind(0).map_err(|_| "no available port".to_string());
        }
        let total: u32 = self.allowed.iter().map(|&(a, b)| (b - a) as u32 + 1).sum();
        let mut rng = rand::rng();
        for _ in 0..20 {
            let mut k = rng.random_range(0..total);
            let mut port = 0u16;
            for &(a, b) in &self.allowed {
                let n = (b - a) as u32 + 1;
                if k < n {
                    port = a + k as u16;
                    break;
                }
                k -= n;
            }
            if port == 0 || self.used.contains(&port) {
                continue;
            }
            if let Ok(l) = self.bind(port) {
                return Ok(l);
            }
        }
        Err("no available port".into())
    }

    pub(crate) fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}
