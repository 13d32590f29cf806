//! frps' virtual hosts (spec §11): http, https and tcpmux proxies share one public port per
//! kind and are told apart by host name (plus path and HTTP user for http).
//!
//! # Layout
//! - [`router`]: the (domain, location, routeByHTTPUser) table and frp's lookup order.
//! - this module: what the three kinds share — validation of a NewProxy's domains (§7.3),
//!   registration of a proxy's routes with load-balancing groups, `remote_addr`, the vhost
//!   listeners, and small HTTP helpers (canonical host, Basic auth, the 404 page).
//! - [`http`]: the reverse proxy on `vhostHTTPPort` (hyper), with its upstream pool.
//! - [`https`]: SNI routing on `vhostHTTPSPort` (rustls' ClientHello parser, no termination).
//! - [`tcpmux`]: HTTP CONNECT routing on `tcpmuxHTTPConnectPort`.
//!
//! A route's payload is a [`Route`]: its settings (from the proxy that created it) and its
//! members. A proxy without `loadBalancer.group` is the only member of its routes; proxies of
//! one group with the right `groupKey` join the same routes and are picked round robin.

pub(crate) mod http;
pub(crate) mod https;
pub(crate) mod router;
pub(crate) mod tcpmux;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::net::TcpListener;
use tracing::info;

use super::{Control, ProxyInfo, StartError, Started, State, join_host_port};
use crate::config::ServerConfig;
use router::Router;

/// How long https and tcpmux wait for the ClientHello / CONNECT request (frp's vhost muxer
/// read timeout).
pub(crate) const MUX_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// frp's built-in 404 page, byte for byte (it is what users of frp see).
pub(crate) const NOT_FOUND_PAGE: &str = r#"<!DOCTYPE html>
<html>
<head>
<title>Not Found</title>
<style>
    body {
        width: 35em;
        margin: 0 auto;
        font-family: Tahoma, Verdana, Arial, sans-serif;
    }
</style>
</head>
<body>
<h1>The page you requested was not found.</h1>
<p>Sorry, the page you are looking for is currently unavailable.<br/>
Please try again later.</p>
<p>The server is powered by <a href="https://github.com/fatedier/frp">frp</a>.</p>
<p><em>Faithfully yours, frp.</em></p>
</body>
</html>
"#;

/// Which vhost a proxy type lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Http,
    Https,
    TcpMux,
}

/// The vhost state shared by the listeners and the proxies.
pub(crate) struct Vhost {
    pub(crate) http: Mutex<Router<Arc<Route>>>,
    pub(crate) https: Mutex<Router<Arc<Route>>>,
    pub(crate) tcpmux: Mutex<Router<Arc<Route>>>,
    /// Idle upstream HTTP connections (work connections speaking HTTP/1.1).
    pub(crate) pool: http::UpstreamPool,
    next_member: AtomicU64,
    /// `vhostHTTPPort`, `vhostHTTPSPort`, `tcpmuxHTTPConnectPort` as bound (0 = off).
    pub(crate) http_port: u16,
    pub(crate) https_port: u16,
    pub(crate) tcpmux_port: u16,
    /// vhostHTTPPort / vhostHTTPSPort is bindPort (on the same address): those connections
    /// arrive on bindPort and are told apart by their first bytes ([`shared_port_kind`]).
    pub(crate) http_on_bind_port: bool,
    pub(crate) https_on_bind_port: bool,
    custom_404_page: String,
}

impl Vhost {
    fn table(&self, kind: Kind) -> &Mutex<Router<Arc<Route>>> {
        match kind {
            Kind::Http => &self.http,
            Kind::Https => &self.https,
            Kind::TcpMux => &self.tcpmux,
        }
    }

    fn port(&self, kind: Kind) -> u16 {
        match kind {
            Kind::Http => self.http_port,
            Kind::Https => self.https_port,
            Kind::TcpMux => self.tcpmux_port,
        }
    }

    /// The 404 body: the `custom404Page` file (read on every use, as frp does) or frp's page.
    pub(crate) async fn not_found_page(&self) -> Vec<u8> {
        if !self.custom_404_page.is_empty() {
            match tokio::fs::read(&self.custom_404_page).await {
                Ok(b) => return b,
                Err(e) => tracing::warn!("read custom 404 page error: {e}"),
            }
        }
        NOT_FOUND_PAGE.as_bytes().to_vec()
    }
}

/// The vhost listeners bound at start-up, run by [`Listeners::spawn`].
#[derive(Default)]
pub(crate) struct Listeners {
    http: Option<TcpListener>,
    https: Option<TcpListener>,
    tcpmux: Option<TcpListener>,
    /// `proxyBindAddr:vhostHTTPPort` when that is bindPort (served from bindPort), for the log.
    http_shared: Option<String>,
    https_shared: Option<String>,
}

/// Whether a vhost `port` is bindPort itself. As frp (server/service.go `httpMuxOn`), only
/// when bindAddr and proxyBindAddr are the same string; otherwise the port is bound on its
/// own (and fails if that address is taken).
fn on_bind_port(cfg: &ServerConfig, port: u16) -> bool {
    port != 0 && port == cfg.bind_port && cfg.bind_addr == cfg.proxy_bind_addr
}

/// Binds the configured vhost ports on `proxyBindAddr` and builds the shared state.
pub(crate) async fn bind(cfg: &ServerConfig) -> Result<(Arc<Vhost>, Listeners), StartError> {
    async fn listen(
        cfg: &ServerConfig,
        port: u16,
        error: fn(std::io::Error) -> StartError,
    ) -> Result<Option<TcpListener>, StartError> {
        if port == 0 || on_bind_port(cfg, port) {
            return Ok(None);
        }
        let addr = join_host_port(&cfg.proxy_bind_addr, port);
        crate::listen::bind(&addr).await.map(Some).map_err(error)
    }
    let shared = |port| on_bind_port(cfg, port).then(|| join_host_port(&cfg.bind_addr, port));
    let listeners = Listeners {
        // frp's words: "create vhost http listener error, …" for vhostHTTPPort, "create
        // server listener error, …" for the other two.
        http: listen(cfg, cfg.vhost_http_port, StartError::VhostHttp).await?,
        https: listen(cfg, cfg.vhost_https_port, StartError::Listen).await?,
        tcpmux: listen(cfg, cfg.tcpmux_http_connect_port, StartError::Listen).await?,
        http_shared: shared(cfg.vhost_http_port),
        https_shared: shared(cfg.vhost_https_port),
    };
    let bound = |l: &Option<TcpListener>, port| {
        if on_bind_port(cfg, port) {
            return port;
        }
        l.as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
            .unwrap_or(0)
    };
    let vhost = Vhost {
        http: Mutex::default(),
        https: Mutex::default(),
        tcpmux: Mutex::default(),
        pool: http::UpstreamPool::default(),
        next_member: AtomicU64::new(1),
        http_port: bound(&listeners.http, cfg.vhost_http_port),
        https_port: bound(&listeners.https, cfg.vhost_https_port),
        tcpmux_port: bound(&listeners.tcpmux, cfg.tcpmux_http_connect_port),
        http_on_bind_port: on_bind_port(cfg, cfg.vhost_http_port),
        https_on_bind_port: on_bind_port(cfg, cfg.vhost_https_port),
        custom_404_page: cfg.custom_404_page.clone(),
    };
    Ok((Arc::new(vhost), listeners))
}

/// A connection on bindPort that belongs to a vhost sharing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedKind {
    Http,
    Https,
}

/// The first 3 bytes golib's `HTTPMatchFunc` takes for an HTTP request.
const HTTP_METHOD_PREFIXES: [&[u8; 3]; 9] = [
    b"GET", b"HEA", b"POS", b"PUT", b"DEL", b"CON", b"OPT", b"TRA", b"PAT",
];

/// Classifies a new bindPort connection when a vhost shares bindPort, by its first bytes
/// without consuming them, in frp's rule order (spec §2.2): `GET /~!frp` is frp's
/// websocket (not HTTP); then an HTTP method prefix goes to the HTTP vhost and a 0x16 TLS
/// record to the HTTPS vhost; anything else (and EOF or silence, which the frp path then
/// reports) is frp's. `None` at once when no vhost shares bindPort.
pub(crate) async fn shared_port_kind(
    vhost: &Vhost,
    tcp: &tokio::net::TcpStream,
    deadline: std::time::Duration,
) -> Option<SharedKind> {
    if !vhost.http_on_bind_port && !vhost.https_on_bind_port {
        return None;
    }
    let ws = crate::transport::WEBSOCKET_PREFIX;
    let decide = async {
        let mut buf = [0u8; 10];
        loop {
            let n = tcp.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            let b = &buf[..n];
            if b[0] == 0x16 {
                return vhost.https_on_bind_port.then_some(SharedKind::Https);
            }
            if !vhost.http_on_bind_port {
                return None;
            }
            if n < 3 {
                // Not yet a whole method prefix (frpc's 0x17 byte may come alone).
                if !HTTP_METHOD_PREFIXES.iter().any(|m| m.starts_with(b)) {
                    return None;
                }
            } else if !HTTP_METHOD_PREFIXES.iter().any(|m| &b[..3] == *m) {
                return None;
            } else if n >= ws.len() || !ws.starts_with(b) {
                // A method, and not frp's websocket (checked first, as in frp).
                return (b != ws).then_some(SharedKind::Http);
            }
            // peek() returns at once while data is pending: poll gently.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(deadline, decide).await.ok().flatten()
}

impl Listeners {
    /// Starts the accept loops.
    pub(crate) fn spawn(self, st: &Arc<State>) {
        if let Some(l) = self.http {
            info!("http service listen on {}", addr_of(&l));
            tokio::spawn(http::serve(st.clone(), l));
            tokio::spawn(http::reap_idle(st.vhost.clone()));
        }
        if let Some(addr) = self.http_shared {
            info!("http service listen on {addr} (shared with bindPort)");
            tokio::spawn(http::reap_idle(st.vhost.clone()));
        }
        if let Some(l) = self.https {
            info!("https service listen on {}", addr_of(&l));
            tokio::spawn(https::serve(st.clone(), l));
        }
        if let Some(addr) = self.https_shared {
            info!("https service listen on {addr} (shared with bindPort)");
        }
        if let Some(l) = self.tcpmux {
            info!("tcpmux httpconnect multiplexer listen on {}", addr_of(&l));
            tokio::spawn(tcpmux::serve(st.clone(), l));
        }
    }
}

fn addr_of(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// Accept-loop helper: backs off on errors such as EMFILE instead of spinning.
pub(crate) async fn accept(
    l: &TcpListener,
    acceptor: &mut crate::listen::Acceptor,
) -> (tokio::net::TcpStream, SocketAddr) {
    let c = acceptor.accept(l).await;
    let _ = c.0.set_nodelay(true);
    c
}

// --- routes and members -----------------------------------------------------------------------

/// The per-route settings, taken from the proxy that created the route.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteConfig {
    pub domain: String,
    pub location: String,
    pub route_user: String,
    pub http_user: String,
    pub http_pwd: String,
    pub host_header_rewrite: String,
    pub headers: BTreeMap<String, String>,
    pub response_headers: BTreeMap<String, String>,
}

/// A routing-table entry: its settings and the proxies serving it.
pub(crate) struct Route {
    pub cfg: RouteConfig,
    group: String,
    group_key: String,
    members: Mutex<Vec<Member>>,
    next: AtomicUsize,
}

impl Route {
    /// The next member, round robin.
    pub(crate) fn pick(&self) -> Option<Member> {
        let members = self.members.lock().unwrap();
        if members.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % members.len();
        Some(members[i].clone())
    }

    /// Whether the route needs Basic credentials.
    pub(crate) fn needs_auth(&self) -> bool {
        !self.cfg.http_user.is_empty() || !self.cfg.http_pwd.is_empty()
    }
}

/// One proxy serving a route.
#[derive(Clone)]
pub(crate) struct Member {
    /// Unique per registration (keys the upstream pool).
    pub id: u64,
    pub ctl: Arc<Control>,
    pub info: Arc<ProxyInfo>,
}

/// Checks a NewProxy's domain settings against frps' config (frp's
/// `validateDomainConfigForServer`) and returns its domains: each non-empty custom domain, then
/// `subdomain.subDomainHost`.
fn domains(np: &crate::msg::NewProxy, cfg: &ServerConfig) -> Result<Vec<String>, String> {
    let sdh = &cfg.sub_domain_host;
    for d in &np.custom_domains {
        if !sdh.is_empty()
            && sdh.split('.').count() < d.split('.').count()
            && d.ends_with(&format!(".{sdh}"))
        {
            return Err(format!(
                "custom domain [{d}] should not belong to subdomain host [{sdh}]"
            ));
        }
    }
    if !np.subdomain.is_empty() {
        if sdh.is_empty() {
            return Err(
                "subdomain is not supported because this feature is not enabled in server".into(),
            );
        }
        if np.subdomain.contains('.') || np.subdomain.contains('*') {
            return Err("'.' and '*' are not supported in subdomain".into());
        }
    }
    let mut out: Vec<String> = np
        .custom_domains
        .iter()
        .filter(|d| !d.is_empty())
        .cloned()
        .collect();
    if !np.subdomain.is_empty() {
        out.push(format!("{}.{sdh}", np.subdomain));
    }
    Ok(out)
}

/// frp's `CanonicalAddr`: the port is left out for 80 and 443.
fn canonical_addr(host: &str, port: u16) -> String {
    if port == 80 || port == 443 {
        host.to_string()
    } else {
        join_host_port(host, port)
    }
}

/// NewProxyResp.remote_addr: one `domain[:port]` per route (so a domain repeats once per
/// location, as in frp), comma-joined.
fn remote_addr(domains: &[String], locations: usize, port: u16) -> String {
    let mut addrs = Vec::with_capacity(domains.len() * locations);
    for d in domains {
        for _ in 0..locations {
            addrs.push(canonical_addr(d, port));
        }
    }
    addrs.join(",")
}

/// Registers a vhost proxy: validates it, adds its routes (joining groups), and returns what
/// undoes that. `remote_addr` lists one `domain[:port]` per route, comma-joined, as frp does.
pub(crate) fn register(
    st: &Arc<State>,
    ctl: &Arc<Control>,
    info: &Arc<ProxyInfo>,
    kind: Kind,
) -> Result<Started, String> {
    let np = &info.msg;
    let vhost = st.vhost.clone();
    let port = vhost.port(kind);
    match kind {
        Kind::Http if port == 0 => {
            return Err("type [http] not supported when vhost http port is not set".into());
        }
        Kind::Https if port == 0 => {
            return Err("type [https] not supported when vhost https port is not set".into());
        }
        Kind::TcpMux if np.multiplexer != "httpconnect" => {
            return Err(format!("unknown multiplexer [{}]", np.multiplexer));
        }
        Kind::TcpMux if port == 0 => {
            return Err("tcpmux with multiplexer httpconnect not supported because this feature is not enabled in server".into());
        }
        _ => {}
    }
    let domains = domains(np, &st.cfg)?;
    let locations: Vec<String> = if kind == Kind::Http && !np.locations.is_empty() {
        np.locations.clone()
    } else {
        vec![String::new()]
    };
    let route_user = if kind == Kind::Https {
        String::new()
    } else {
        np.route_by_http_user.clone()
    };
    let member = Member {
        id: vhost.next_member.fetch_add(1, Ordering::Relaxed),
        ctl: ctl.clone(),
        info: info.clone(),
    };
    let mut added: Vec<(String, String)> = Vec::new();
    let undo = {
        let vhost = vhost.clone();
        let route_user = route_user.clone();
        let id = member.id;
        move |added: &[(String, String)]| {
            for (d, l) in added {
                unregister(&vhost, kind, d, l, &route_user, id);
            }
            if kind == Kind::Http {
                vhost.pool.forget_member(id);
            }
        }
    };
    for domain in &domains {
        for location in &locations {
            let cfg = RouteConfig {
                domain: domain.clone(),
                location: location.clone(),
                route_user: route_user.clone(),
                http_user: np.http_user.clone(),
                http_pwd: np.http_pwd.clone(),
                host_header_rewrite: np.host_header_rewrite.clone(),
                headers: np.headers.clone(),
                response_headers: np.response_headers.clone(),
            };
            if let Err(e) = join_route(&vhost, kind, cfg, &np.group, &np.group_key, &member) {
                undo(&added);
                return Err(e);
            }
            added.push((domain.clone(), location.clone()));
            match kind {
                Kind::Http => info!(
                    "[{}] [{}] http proxy listen for host [{domain}] location [{location}] group [{}], routeByHTTPUser [{route_user}]",
                    ctl.run_id, info.name, np.group
                ),
                Kind::Https => info!(
                    "[{}] [{}] https proxy listen for host [{domain}] group [{}]",
                    ctl.run_id, info.name, np.group
                ),
                Kind::TcpMux => info!(
                    "[{}] [{}] tcpmux httpconnect multiplexer listens for host [{domain}], group [{}] routeByHTTPUser [{route_user}]",
                    ctl.run_id, info.name, np.group
                ),
            }
        }
    }
    Ok(Started {
        remote_addr: remote_addr(&domains, locations.len(), port),
        on_close: super::on_close(move || undo(&added)),
        ..Default::default()
    })
}

/// Adds `member` to the route for `cfg`'s key: a new route, or an existing one of the same
/// group with the same key. Errors are frp's.
fn join_route(
    vhost: &Vhost,
    kind: Kind,
    cfg: RouteConfig,
    group: &str,
    group_key: &str,
    member: &Member,
) -> Result<(), String> {
    let mut table = vhost.table(kind).lock().unwrap();
    if let Some(route) = table.get_exact(&cfg.domain, &cfg.location, &cfg.route_user) {
        if group.is_empty() || route.group != group {
            return Err(router::RouterConflict.to_string());
        }
        if route.group_key != group_key {
            return Err("group auth failed".into());
        }
        let mut members = route.members.lock().unwrap();
        if members.iter().any(|m| m.info.name == member.info.name) {
            return Err("group proxy repeated".into());
        }
        members.push(member.clone());
        return Ok(());
    }
    let (domain, location, user) = (
        cfg.domain.clone(),
        cfg.location.clone(),
        cfg.route_user.clone(),
    );
    let route = Route {
        cfg,
        group: group.to_string(),
        group_key: group_key.to_string(),
        members: Mutex::new(vec![member.clone()]),
        next: AtomicUsize::new(0),
    };
    table
        .add(&domain, &location, &user, Arc::new(route))
        .map_err(|e| e.to_string())
}

/// Removes member `id` from a route; the route goes when its last member does.
fn unregister(vhost: &Vhost, kind: Kind, domain: &str, location: &str, user: &str, id: u64) {
    let mut table = vhost.table(kind).lock().unwrap();
    let Some(route) = table.get_exact(domain, location, user) else {
        return;
    };
    let empty = {
        let mut members = route.members.lock().unwrap();
        members.retain(|m| m.id != id);
        members.is_empty()
    };
    if empty {
        table.remove(domain, location, user);
    }
}

// --- HTTP helpers --------------------------------------------------------------------------------

/// frp's `CanonicalHost`: lowercase, port stripped, trailing dot removed.
pub(crate) fn canonical_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    let colons = host.matches(':').count();
    let has_port = colons == 1 || (host.starts_with('[') && host.contains("]:"));
    let host = if has_port {
        match host.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => host,
        }
    } else {
        host
    };
    host.strip_suffix('.').map(str::to_string).unwrap_or(host)
}

/// Parses `Basic base64(user:password)` (scheme case-insensitive) into (user, password).
pub(crate) fn parse_basic_auth(value: &str) -> Option<(String, String)> {
    const PREFIX: &str = "basic ";
    if value.len() < PREFIX.len() || !value[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&value[PREFIX.len()..])
        .ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_host_like_frp() {
        assert_eq!(canonical_host("Example.COM:8080"), "example.com");
        assert_eq!(canonical_host("example.com."), "example.com");
        assert_eq!(canonical_host("example.com.:80"), "example.com");
        assert_eq!(canonical_host("[::1]:80"), "::1");
        assert_eq!(canonical_host("::1"), "::1");
        assert_eq!(canonical_host(""), "");
    }

    #[test]
    fn basic_auth() {
        assert_eq!(
            parse_basic_auth("Basic dXNlcjpwYTpzcw=="),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(
            parse_basic_auth("bAsIc dXNlcjpwYTpzcw==").map(|x| x.0),
            Some("user".into())
        );
        assert_eq!(parse_basic_auth("Bearer x"), None);
        assert_eq!(parse_basic_auth("Basic !!!"), None);
        assert_eq!(parse_basic_auth("Basic dXNlcg=="), None, "no colon");
    }

    #[test]
    fn domain_validation_messages() {
        let cfg = ServerConfig {
            sub_domain_host: "example.test".into(),
            ..Default::default()
        };
        let np = crate::msg::NewProxy {
            custom_domains: vec!["www.example.test".into()],
            subdomain: "app".into(),
            ..Default::default()
        };
        assert_eq!(
            domains(&np, &cfg).unwrap_err(),
            "custom domain [www.example.test] should not belong to subdomain host [example.test]"
        );
        let np = crate::msg::NewProxy {
            custom_domains: vec!["www.other.test".into(), "".into()],
            subdomain: "app".into(),
            ..Default::default()
        };
        assert_eq!(
            domains(&np, &cfg).unwrap(),
            vec!["www.other.test".to_string(), "app.example.test".to_string()]
        );
        // The subDomainHost itself is not "under" it.
        let np = crate::msg::NewProxy {
            custom_domains: vec!["example.test".into()],
            ..Default::default()
        };
        assert!(domains(&np, &cfg).is_ok());
        let np = crate::msg::NewProxy {
            subdomain: "a.b".into(),
            ..Default::default()
        };
        assert_eq!(
            domains(&np, &cfg).unwrap_err(),
            "'.' and '*' are not supported in subdomain"
        );
        let np = crate::msg::NewProxy {
            subdomain: "a".into(),
            ..Default::default()
        };
        assert_eq!(
            domains(&np, &ServerConfig::default()).unwrap_err(),
            "subdomain is not supported because this feature is not enabled in server"
        );
    }

    #[test]
    fn canonical_addrs() {
        assert_eq!(canonical_addr("a.example.com", 80), "a.example.com");
        assert_eq!(canonical_addr("a.example.com", 443), "a.example.com");
        assert_eq!(canonical_addr("a.example.com", 8080), "a.example.com:8080");
        // The http-v1-nomux capture: two domains, locations ["/", "/api"].
        let domains = ["www.other.test".to_string(), "app.example.test".to_string()];
        assert_eq!(
            remote_addr(&domains, 2, 27115),
            "www.other.test:27115,www.other.test:27115,app.example.test:27115,app.example.test:27115"
        );
        assert_eq!(remote_addr(&domains[..1], 1, 80), "www.other.test");
        assert_eq!(remote_addr(&[], 1, 80), "");
    }
}
