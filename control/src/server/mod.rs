//! The frps runtime: accepts on `bindPort`, logs clients in, registers their proxies, keeps
//! each client's work-connection pool, pairs user connections with work connections and hands
//! the pairs to the data plane (spec §4, §7, §8, §12).
//!
//! Shape: one [`Server`] owning shared state; per accepted transport connection a task that
//! sniffs it, completes TLS and, with tcpMux, accepts yamux streams; per logical connection a
//! task that reads the first message and becomes a control session, a work connection (parked
//! in its control's pool) or a visitor connection.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::{Counters, Engine, Pair, RateLimiter, Side};
use futures_util::future::BoxFuture;
use rand::RngExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::auth;
use crate::config::ServerConfig;
use crate::crypto::{self, CryptoKey};
use crate::handshake::{self, Role};
use crate::msg::{
    CodecError, Login, LoginResp, Message, NewProxy, NewProxyResp, NewWorkConn, Pong, ReqWorkConn,
    StartWorkConn,
};
use crate::msgconn::{MsgConn, MsgError};
use crate::transport::{self, Conn, ServerTls};
use crate::wire_v2::{CryptoContext, WireVersion};
use crate::yamux;

mod ports;
mod ssh_gateway;
mod tcp;
mod udp;
mod vhost;
mod visitor;
use ports::PortManager;

/// How long frps waits for the first bytes and the first message of a connection.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Queue depth of a control's writer (frp uses 100).
const CONTROL_QUEUE: usize = 100;

/// Which auth scopes frps verifies beyond Login (`auth.additionalScopes`).
#[derive(Debug, Clone, Copy, Default)]
struct Scopes {
    heartbeats: bool,
    new_work_conns: bool,
}

/// A running frps.
pub struct Server {
    state: Arc<State>,
    listener: TcpListener,
    /// `kcpBindPort`'s listener and address, when set.
    kcp: Option<(crate::kcp::KcpListener, String)>,
    vhost_listeners: vhost::Listeners,
    /// `quicBindPort`, when set.
    quic: Option<transport::quic::QuicListener>,
    /// `sshTunnelGateway.bindPort`, when set.
    ssh: Option<ssh_gateway::Gateway>,
}

/// Aborts a spawned task when dropped (ties a listener's task to [`Server::run`]).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct State {
    cfg: ServerConfig,
    token: String,
    key: CryptoKey,
    scopes: Scopes,
    tls: ServerTls,
    engine: Engine,
    /// Logged-in clients by run id.
    controls: Mutex<HashMap<String, Arc<Control>>>,
    /// Registered proxies by wire name — global across clients, as in frp.
    proxies: Mutex<HashMap<String, ProxyEntry>>,
    ports: Mutex<PortManager>,
    /// http/https/tcpmux routing and the vhost listeners' shared state.
    vhost: Arc<vhost::Vhost>,
    /// tcp load-balancing groups by name.
    tcp_groups: Mutex<HashMap<String, Arc<tcp::TcpGroup>>>,
    /// UDP ports of udp proxies (frp keeps separate TCP and UDP port managers).
    udp_ports: Mutex<PortManager>,
    /// Clients, proxies and traffic for the dashboard and `/metrics`.
    stats: Arc<crate::dashboard::Stats>,
}

struct ProxyEntry {
    run_id: String,
    info: Arc<ProxyInfo>,
    started: Option<Started>,
}

/// One logged-in frpc.
pub(crate) struct Control {
    run_id: String,
    login: Login,
    remote: SocketAddr,
    /// The wire protocol of this client's control connection. Its work connections speak the
    /// same one (checked when they arrive): frame StartWorkConn, and the UDPPacket/Ping
    /// messages of UDP work connections (frp >= 0.69.1), with
    /// `MsgConn::with_version(conn, ctl.wire)`.
    pub(crate) wire: WireVersion,
    pool_count: usize,
    /// Boxed: tokio's channel allocates its slots 32 at a time, and a `Message` is several
    /// hundred bytes (16 KiB per connected client unboxed).
    msg_tx: mpsc::Sender<Box<Message>>,
    work_tx: mpsc::Sender<Conn>,
    work_rx: tokio::sync::Mutex<mpsc::Receiver<Conn>>,
    /// Proxies this client registered (wire names).
    proxies: Mutex<HashSet<String>>,
    ports_used: Mutex<usize>,
    /// Fired to make the session end (replaced by a new login with the same run id).
    kill: Notify,
    /// Fired once the session has fully cleaned up.
    done: Notify,
    finished: std::sync::atomic::AtomicBool,
}

impl Server {
    /// Binds `bindAddr:bindPort` and prepares everything that can fail at start-up.
    pub async fn bind(cfg: ServerConfig) -> Result<Server, StartError> {
        let tls_cfg = crate::tls::server_config(
            &cfg.transport.tls.cert_file,
            &cfg.transport.tls.key_file,
            &cfg.transport.tls.trusted_ca_file,
        )?;
        let force = cfg.transport.tls.force || !cfg.transport.tls.trusted_ca_file.is_empty();
        let bind = join_host_port(&cfg.bind_addr, cfg.bind_port);
        let listener = crate::listen::bind(&bind)
            .await
            .map_err(StartError::Listen)?;
        handshake::warn_test_hooks();
        let kcp = if cfg.kcp_bind_port > 0 {
            let addr = join_host_port(&cfg.bind_addr, cfg.kcp_bind_port);
            let l = crate::kcp::KcpListener::bind(&addr)
                .await
                .map_err(|e| StartError::Kcp {
                    addr: addr.clone(),
                    error: format!(
                        "listen udp {addr}: bind: {}",
                        crate::listen::os_error_text(&e)
                    ),
                })?;
            Some((l, addr))
        } else {
            None
        };
        let quic = match cfg.quic_bind_port {
            0 => None,
            port => Some(transport::quic::QuicListener::bind(
                &join_host_port(&cfg.bind_addr, port),
                &tls_cfg,
                &transport::quic::QuicParams::from_config(&cfg.transport.quic),
            )?),
        };
        let scopes = Scopes {
            heartbeats: cfg
                .auth
                .additional_scopes
                .iter()
                .any(|s| s.as_str() == "HeartBeats"),
            new_work_conns: cfg
                .auth
                .additional_scopes
                .iter()
                .any(|s| s.as_str() == "NewWorkConns"),
        };
        let ssh = match cfg.ssh_tunnel_gateway.bind_port {
            0 => None,
            _ => Some(
                ssh_gateway::Gateway::bind(&cfg.ssh_tunnel_gateway, &cfg.bind_addr)
                    .await
                    .map_err(StartError::SshGateway)?,
            ),
        };
        let token = cfg.auth.token.clone();
        let ports = PortManager::new(&cfg);
        let (vhost, vhost_listeners) = vhost::bind(&cfg).await?;
        let state = Arc::new(State {
            key: CryptoKey::derive(token.as_bytes()),
            token,
            scopes,
            tls: ServerTls {
                acceptor: tokio_rustls::TlsAcceptor::from(tls_cfg),
                force,
            },
            engine: Engine::new(cfg.dataplane.engine_config()),
            controls: Mutex::new(HashMap::new()),
            proxies: Mutex::new(HashMap::new()),
            ports: Mutex::new(ports),
            vhost,
            tcp_groups: Mutex::new(HashMap::new()),
            udp_ports: Mutex::new(PortManager::new(&cfg)),
            stats: Arc::new(crate::dashboard::Stats::new()),
            cfg,
        });
        Ok(Server {
            state,
            listener,
            kcp,
            vhost_listeners,
            quic,
            ssh,
        })
    }

    /// The address frps listens on (useful with `bindPort = 0` in tests).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The statistics the dashboard serves (see [`crate::dashboard::Dashboard`]).
    pub fn stats(&self) -> Arc<crate::dashboard::Stats> {
        self.state.stats.clone()
    }

    /// Accepts connections until the task is dropped.
    pub async fn run(self) {
        self.vhost_listeners.spawn(&self.state);
        info!(
            "frps tcp listen on {}",
            self.listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        // The UDP listeners serve for as long as this future lives.
        let _quic = self.quic.map(|q| {
            info!(
                "frps quic listen on {}",
                q.local_addr().map(|a| a.to_string()).unwrap_or_default()
            );
            let st = self.state.clone();
            // Each QUIC stream is a logical connection: no sniffing, TLS check or yamux.
            AbortOnDrop(tokio::spawn(
                q.serve(FIRST_MESSAGE_TIMEOUT, move |conn, remote| {
                    st.clone().handle_logical(conn, remote)
                }),
            ))
        });
        let _ssh = self
            .ssh
            .map(|g| AbortOnDrop(tokio::spawn(g.serve(self.state.clone()))));
        let _kcp = self.kcp.map(|(l, addr)| {
            info!("frps kcp listen on udp {addr}");
            AbortOnDrop(tokio::spawn(self.state.clone().serve_kcp(l)))
        });
        info!("start frps success");
        let mut acceptor = crate::listen::Acceptor::new("");
        loop {
            let (tcp, remote) = acceptor.accept(&self.listener).await;
            let st = self.state.clone();
            tokio::spawn(async move { st.handle_transport(tcp, remote).await });
        }
    }
}

/// frps could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// frp: `create server listener error, listen tcp ADDR: bind: …` (the error carries
    /// Go's words, see [`crate::listen`]).
    #[error("create server listener error, {0}")]
    Listen(std::io::Error),
    #[error("create vhost http listener error, {0}")]
    VhostHttp(std::io::Error),
    #[error("listen on kcp udp address {addr} error: {error}")]
    Kcp { addr: String, error: String },
    #[error("{0}")]
    Quic(#[from] transport::quic::QuicError),
    #[error("create ssh gateway error: {0}")]
    SshGateway(String),
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl State {
    async fn handle_transport(self: Arc<Self>, tcp: TcpStream, remote: SocketAddr) {
        transport::tune_tcp(&tcp, self.cfg.transport.tcp_keepalive);
        // vhostHTTPPort / vhostHTTPSPort = bindPort: users' HTTP(S) arrives here too.
        match vhost::shared_port_kind(&self.vhost, &tcp, FIRST_MESSAGE_TIMEOUT).await {
            Some(vhost::SharedKind::Http) => {
                return Box::pin(vhost::http::serve_shared(self, tcp, remote)).await;
            }
            Some(vhost::SharedKind::Https) => {
                return Box::pin(vhost::https::handle(self, tcp, remote)).await;
            }
            None => {}
        }
        let accept = Box::pin(transport::accept_transport(
            tcp,
            &self.tls,
            FIRST_MESSAGE_TIMEOUT,
        ));
        let conn = match accept.await {
            Ok(c) => c,
            Err(e) => {
                crate::warn_limited!(
                    crate::log::PEER_REFUSALS,
                    "connection from {remote} closed: {e}"
                );
                return;
            }
        };
        self.handle_session(conn, remote).await;
    }

    /// Accepts KCP sessions: each goes through TLS detection, then on as a `bindPort`
    /// connection would.
    async fn serve_kcp(self: Arc<Self>, mut l: crate::kcp::KcpListener) {
        while let Ok(s) = l.accept().await {
            let st = self.clone();
            tokio::spawn(async move {
                let remote = s.peer_addr();
                match transport::accept_kcp(s, &st.tls, FIRST_MESSAGE_TIMEOUT).await {
                    Ok(conn) => st.handle_session(conn, remote).await,
                    Err(e) => crate::warn_limited!(
                        crate::log::PEER_REFUSALS,
                        "kcp connection from {remote} closed: {e}"
                    ),
                }
            });
        }
    }

    /// A transport connection after TLS: one logical connection, or a tcpMux session.
    async fn handle_session(self: Arc<Self>, conn: Conn, remote: SocketAddr) {
        if !self.cfg.transport.tcp_mux {
            Box::pin(self.handle_logical(conn, remote)).await;
            return;
        }
        let ycfg = yamux::Config::frp(self.cfg.transport.tcp_mux_keepalive_interval);
        let (session, mut incoming) = yamux::session(conn, ycfg, yamux::Mode::Server);
        // A session that never opens a stream (garbage shorter than a frame header, or
        // silence) must not hold the connection forever.
        let mut next = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, incoming.accept()).await {
            Ok(s) => s,
            Err(_) => {
                session.close();
                crate::warn_limited!(
                    crate::log::PEER_REFUSALS,
                    "connection from {remote} closed: no tcpMux stream opened within 10s"
                );
                return;
            }
        };
        while let Some(stream) = next {
            let st = self.clone();
            tokio::spawn(async move { st.handle_logical(Conn::Yamux(stream), remote).await });
            next = incoming.accept().await;
        }
        match session.close_reason() {
            Some(e) if !e.is_normal_close() => crate::warn_limited!(
                crate::log::PEER_REFUSALS,
                "tcpMux session from {remote} closed: {e}"
            ),
            _ => debug!("tcpMux session from {remote} closed"),
        }
    }

    async fn handle_logical(self: Arc<Self>, conn: Conn, remote: SocketAddr) {
        // The steps that are over once a connection is set up are boxed (here and in
        // `handle_transport`, `handle_login`): a task's future is as large as its largest
        // state, and a control's task lives as long as the client stays connected.
        let accepted = match Box::pin(handshake::server_accept(conn, FIRST_MESSAGE_TIMEOUT)).await {
            Ok(a) => a,
            Err(e) => {
                crate::warn_limited!(
                    crate::log::PEER_REFUSALS,
                    "connection from {remote} closed: {}",
                    first_message_error(&e)
                );
                return;
            }
        };
        let mc = accepted.conn;
        match accepted.first {
            Message::Login(login) => {
                Box::pin(self.handle_login(mc, login, remote, accepted.crypto)).await
            }
            Message::NewWorkConn(nwc) => Box::pin(self.handle_new_work_conn(mc, nwc, remote)).await,
            Message::NewVisitorConn(v) => Box::pin(self.handle_visitor_conn(mc, v, remote)).await,
            other => crate::warn_limited!(
                crate::log::PEER_REFUSALS,
                "connection from {remote} closed: unexpected first message {} (want Login, NewWorkConn or NewVisitorConn)",
                other.name()
            ),
        }
    }

    // --- login --------------------------------------------------------------------------------

    async fn handle_login(
        self: Arc<Self>,
        mut mc: MsgConn<Conn>,
        login: Login,
        remote: SocketAddr,
        crypto: Option<CryptoContext>,
    ) {
        info!(
            "client login info: ip [{remote}] version [{}] hostname [{}] os [{}] arch [{}] wire protocol [{}]",
            login.version,
            login.hostname,
            login.os,
            login.arch,
            mc.version()
        );
        let checked = handshake::check_control_crypto(mc.version(), crypto.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|()| self.check_login(&login));
        if let Err(reason) = checked {
            warn!("login from {remote} refused: {reason}");
            let error = if self.cfg.detailed_errors_to_client {
                reason
            } else {
                "invalid Login".into()
            };
            let resp = LoginResp {
                version: crate::FRP_VERSION.into(),
                run_id: String::new(),
                error,
            };
            let _ = mc.write_msg(&resp.into()).await;
            return;
        }
        let run_id = if login.run_id.is_empty() {
            new_run_id()
        } else {
            login.run_id.clone()
        };

        // A client logging in again with its run id replaces its old session: tear that one
        // down completely (ports released) before the new one starts.
        let old = self.controls.lock().unwrap().get(&run_id).cloned();
        if let Some(old) = old {
            info!("[{run_id}] replacing the previous session of this client");
            old.kill.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(5), old.wait_done()).await;
        }

        let max_pool = self.cfg.transport.max_pool_count.max(0) as usize;
        let pool_count = (login.pool_count.max(0) as usize).min(max_pool);
        let (msg_tx, msg_rx) = mpsc::channel(CONTROL_QUEUE);
        let (work_tx, work_rx) = mpsc::channel(pool_count + 10);
        let ctl = Arc::new(Control {
            run_id: run_id.clone(),
            login,
            remote,
            wire: mc.version(),
            pool_count,
            msg_tx,
            work_tx,
            work_rx: tokio::sync::Mutex::new(work_rx),
            proxies: Mutex::new(HashSet::new()),
            ports_used: Mutex::new(0),
            kill: Notify::new(),
            done: Notify::new(),
            finished: std::sync::atomic::AtomicBool::new(false),
        });

        let resp = LoginResp {
            version: crate::FRP_VERSION.into(),
            run_id: run_id.clone(),
            error: String::new(),
        };
        if let Err(e) = mc.write_msg(&resp.into()).await {
            warn!("[{run_id}] write LoginResp: {e}");
            return;
        }
        let enabled = handshake::enable_control_encryption(
            &mut mc,
            crypto.as_ref(),
            &self.token,
            &self.key,
            Role::Server,
        );
        if let Err(e) = enabled {
            warn!("[{run_id}] control connection: {e}");
            return;
        }
        self.controls
            .lock()
            .unwrap()
            .insert(run_id.clone(), ctl.clone());
        self.stats.on_login(&run_id, &ctl.login, remote, "v1");
        info!("[{run_id}] client login success, pool count {pool_count}");

        let (mut reader, mut writer) = mc.split();
        let writer_task = tokio::spawn(async move {
            let mut rx = msg_rx;
            while let Some(m) = rx.recv().await {
                if let Err(e) = writer.write_msg(&m).await {
                    debug!("control write: {e}");
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });
        for _ in 0..pool_count {
            let _ = ctl.msg_tx.send(Box::new(ReqWorkConn {}.into())).await;
        }

        let hb_timeout = self.cfg.transport.heartbeat_timeout;
        let mut last_ping = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let reason: String = loop {
            tokio::select! {
                r = reader.read_msg() => match r {
                    Ok(m) => {
                        if let Some(t) = Box::pin(self.dispatch(&ctl, m)).await {
                            last_ping = t;
                        }
                    }
                    Err(MsgError::Closed) => break "client closed the control connection".into(),
                    Err(e) => break format!("control connection error: {e}"),
                },
                _ = tick.tick() => {
                    if hb_timeout > 0 && last_ping.elapsed() > Duration::from_secs(hb_timeout as u64) {
                        break "heartbeat timeout".into();
                    }
                }
                _ = ctl.kill.notified() => break "replaced by a new login with the same run id".into(),
            }
        };
        info!("[{run_id}] control from {} closed: {reason}", ctl.remote);
        self.cleanup_control(&ctl).await;
        // The control connection is closed before the exit is reported, as frp does.
        stop_tasks(vec![writer_task]).await;
        drop(reader);
        info!("[{run_id}] client exit success");
    }

    fn check_login(&self, login: &Login) -> Result<(), String> {
        if self.cfg.auth.method.as_str() == "token"
            && !auth::verify_privilege_key(&self.token, login.timestamp, &login.privilege_key)
        {
            return Err("token in login doesn't match token from configuration".into());
        }
        if !login.client_id.is_empty() {
            let controls = self.controls.lock().unwrap();
            if controls.values().any(|c| {
                c.login.client_id == login.client_id
                    && c.login.user == login.user
                    && c.run_id != login.run_id
            }) {
                return Err(format!(
                    "client_id [{}] for user [{}] is already online",
                    login.client_id, login.user
                ));
            }
        }
        Ok(())
    }

    /// Handles one control message; returns the time of a valid Ping.
    async fn dispatch(self: &Arc<Self>, ctl: &Arc<Control>, m: Message) -> Option<Instant> {
        match m {
            Message::NewProxy(np) => {
                let resp = match self.register_proxy(ctl, &np).await {
                    Ok(remote_addr) => {
                        info!(
                            "[{}] new proxy [{}] type [{}] success",
                            ctl.run_id,
                            np.proxy_name,
                            proxy_type(&np)
                        );
                        NewProxyResp {
                            proxy_name: np.proxy_name,
                            remote_addr,
                            error: String::new(),
                        }
                    }
                    Err(e) => {
                        warn!(
                            "[{}] new proxy [{}] type [{}] error: {e}",
                            ctl.run_id,
                            np.proxy_name,
                            proxy_type(&np)
                        );
                        let error = if self.cfg.detailed_errors_to_client {
                            e
                        } else {
                            format!("new proxy [{}] error", np.proxy_name)
                        };
                        NewProxyResp {
                            proxy_name: np.proxy_name,
                            remote_addr: String::new(),
                            error,
                        }
                    }
                };
                let _ = ctl.msg_tx.send(Box::new(resp.into())).await;
                None
            }
            Message::CloseProxy(cp) => {
                let owned = ctl.proxies.lock().unwrap().remove(&cp.proxy_name);
                if owned {
                    self.close_proxy(ctl, &cp.proxy_name).await;
                    info!("[{}] close proxy [{}] success", ctl.run_id, cp.proxy_name);
                }
                None
            }
            Message::Ping(p) => {
                if self.scopes.heartbeats
                    && !auth::verify_privilege_key(&self.token, p.timestamp, &p.privilege_key)
                {
                    warn!(
                        "[{}] invalid ping: token in heartbeat doesn't match",
                        ctl.run_id
                    );
                    let error =
                        "token in heartbeat doesn't match token from configuration".to_string();
                    let _ = ctl.msg_tx.send(Box::new(Pong { error }.into())).await;
                    return None;
                }
                let _ = ctl.msg_tx.send(Box::new(Pong::default().into())).await;
                Some(Instant::now())
            }
            other => {
                debug!("[{}] ignoring control message {}", ctl.run_id, other.name());
                None
            }
        }
    }

    async fn cleanup_control(&self, ctl: &Arc<Control>) {
        let names: Vec<String> = ctl.proxies.lock().unwrap().drain().collect();
        for name in names {
            self.close_proxy(ctl, &name).await;
        }
        {
            let mut controls = self.controls.lock().unwrap();
            if controls
                .get(&ctl.run_id)
                .is_some_and(|c| Arc::ptr_eq(c, ctl))
            {
                controls.remove(&ctl.run_id);
            }
        }
        self.stats.on_logout(&ctl.run_id);
        ctl.finished
            .store(true, std::sync::atomic::Ordering::SeqCst);
        ctl.done.notify_waiters();
    }

    // --- proxies ------------------------------------------------------------------------------

    async fn register_proxy(
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
        if self.proxies.lock().unwrap().contains_key(&np.proxy_name) {
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
            other => {
                return Err(format!(
                    "proxy type [{other}] is not supported by this frps build yet"
                ));
            }
        };

        let remote_addr = started.remote_addr.clone();
        let counters = info.counters.clone();
        // A concurrent registration may have taken the name while this one started.
        let lost = {
            let mut proxies = self.proxies.lock().unwrap();
            if proxies.contains_key(&np.proxy_name) {
                Some(started)
            } else {
                proxies.insert(
                    np.proxy_name.clone(),
                    ProxyEntry {
                        run_id: ctl.run_id.clone(),
                        info,
                        started: Some(started),
                    },
                );
                ctl.proxies.lock().unwrap().insert(np.proxy_name.clone());
                None
            }
        };
        if let Some(started) = lost {
            self.release(ctl, started).await;
            return Err(format!("proxy [{}] already exists", np.proxy_name));
        }
        let user = &ctl.login.user;
        self.stats
            .on_proxy_start(np, &ty, &counters, user, &ctl.login.client_id);
        Ok(remote_addr)
    }

    /// Undoes what a proxy type's start function set up: stops its tasks, frees its port.
    ///
    /// Waits for the aborted tasks to be dropped, so that the proxy's listener or UDP socket is
    /// closed when this returns: frp closes a proxy's listener before it logs "close proxy" or
    /// "client exit success", and a port handed back to the port manager must be free to bind.
    async fn release(&self, ctl: &Control, mut started: Started) {
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

    async fn close_proxy(&self, ctl: &Control, name: &str) {
        let entry = {
            let mut proxies = self.proxies.lock().unwrap();
            match proxies.get(name) {
                Some(e) if e.run_id == ctl.run_id => proxies.remove(name),
                _ => None,
            }
        };
        if let Some(mut e) = entry {
            self.stats.on_proxy_close(name);
            if let Some(started) = e.started.take() {
                self.release(ctl, started).await;
            }
            debug!(
                "[{}] proxy [{name}] type [{}] closed",
                ctl.run_id, e.info.proxy_type
            );
        }
    }

    /// Pairs a user connection with a work connection of `ctl` (see [`State::open_work_conn`])
    /// and hands the pair to the data plane (spec §8 step 5).
    pub(crate) async fn join_user_conn(
        self: Arc<Self>,
        ctl: Arc<Control>,
        proxy: Arc<ProxyInfo>,
        user: Side,
        start: StartWorkConn,
    ) {
        let (work, rest) = match self.open_work_conn(&ctl, &proxy, &start).await {
            Ok(w) => w,
            Err(e) => {
                warn!("[{}] [{}] {e}", ctl.run_id, proxy.name);
                return;
            }
        };
        let (inbound, outbound) =
            crypto::work_conn_layers(Some(&self.key), proxy.use_encryption, proxy.use_compression);
        let pair = Pair {
            a: user,
            b: Side {
                endpoint: work.into_endpoint(),
                prefix: rest.into(),
                inbound,
                outbound,
                initial_write: Default::default(),
            },
            counters: Some(proxy.counters.clone()),
            limiter: proxy.limiter.clone(),
        };
        debug!(
            "[{}] [{}] join connections, user [{}:{}]",
            ctl.run_id, proxy.name, start.src_addr, start.src_port
        );
        self.engine.spawn(pair);
    }

    /// A work connection of `ctl` with `start` already written on it: takes one from the pool
    /// (or asks frpc for one) and sends StartWorkConn, retrying with another connection if that
    /// write fails (spec §8 step 5). Returns the connection and the bytes read past the last
    /// message, still in wire form (no encryption/compression layers applied).
    pub(crate) async fn open_work_conn(
        &self,
        ctl: &Control,
        proxy: &ProxyInfo,
        start: &StartWorkConn,
    ) -> Result<(Conn, Vec<u8>), String> {
        let timeout = Duration::from_secs(self.cfg.user_conn_timeout.max(1) as u64);
        for _attempt in 0..=ctl.pool_count {
            let work = ctl
                .get_work_conn(timeout)
                .await
                .map_err(|e| format!("failed to get work connection: {e}"))?;
            let mut mc = MsgConn::with_version(work, ctl.wire);
            if let Err(e) = mc.write_msg(&start.clone().into()).await {
                debug!(
                    "[{}] [{}] write StartWorkConn to a stale work connection: {e}",
                    ctl.run_id, proxy.name
                );
                continue;
            }
            return Ok(mc.into_parts());
        }
        Err(format!(
            "no usable work connection after {} attempts",
            ctl.pool_count + 1
        ))
    }

    // --- work connections ---------------------------------------------------------------------

    async fn handle_new_work_conn(
        self: Arc<Self>,
        mut mc: MsgConn<Conn>,
        nwc: NewWorkConn,
        remote: SocketAddr,
    ) {
        let ctl = self.controls.lock().unwrap().get(&nwc.run_id).cloned();
        let Some(ctl) = ctl else {
            warn!(
                "no client control found for run id [{}] (work connection from {remote})",
                nwc.run_id
            );
            return;
        };
        if mc.version() != ctl.wire {
            warn!(
                "[{}] work connection from {remote} speaks wire protocol {} but its control speaks {}; closed",
                ctl.run_id,
                mc.version(),
                ctl.wire
            );
            return;
        }
        if self.scopes.new_work_conns
            && !auth::verify_privilege_key(&self.token, nwc.timestamp, &nwc.privilege_key)
        {
            warn!(
                "[{}] invalid NewWorkConn from {remote}: token doesn't match",
                nwc.run_id
            );
            let error = if self.cfg.detailed_errors_to_client {
                "token in NewWorkConn doesn't match token from configuration".to_string()
            } else {
                "invalid NewWorkConn".to_string()
            };
            let _ = mc
                .write_msg(
                    &StartWorkConn {
                        error,
                        ..Default::default()
                    }
                    .into(),
                )
                .await;
            return;
        }
        let (conn, rest) = mc.into_parts();
        if !rest.is_empty() {
            warn!(
                "[{}] work connection sent {} unexpected bytes before StartWorkConn; closed",
                ctl.run_id,
                rest.len()
            );
            return;
        }
        if ctl.work_tx.try_send(conn).is_err() {
            debug!("[{}] work connection pool is full, discarding", ctl.run_id);
        }
    }
}

impl Control {
    async fn wait_done(&self) {
        loop {
            let n = self.done.notified();
            if self.finished.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            n.await;
        }
    }

    /// A parked work connection, or a new one requested from frpc (waiting up to `timeout`);
    /// either way one more is requested to refill the pool (spec §8 step 5).
    async fn get_work_conn(&self, timeout: Duration) -> Result<Conn, String> {
        let parked = {
            let mut rx = self.work_rx.lock().await;
            rx.try_recv().ok()
        };
        let conn = match parked {
            Some(c) => c,
            None => {
                self.msg_tx
                    .send(Box::new(ReqWorkConn {}.into()))
                    .await
                    .map_err(|_| "control connection is closed".to_string())?;
                let wait = async {
                    let mut rx = self.work_rx.lock().await;
                    rx.recv().await
                };
                match tokio::time::timeout(timeout, wait).await {
                    Ok(Some(c)) => c,
                    Ok(None) => return Err("control connection is closed".into()),
                    Err(_) => return Err("timeout trying to get work connection".into()),
                }
            }
        };
        let _ = self.msg_tx.try_send(Box::new(ReqWorkConn {}.into()));
        Ok(conn)
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

/// What a proxy type's start function set up, undone by [`State::release`].
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
async fn stop_tasks(tasks: Vec<JoinHandle<()>>) {
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        // An aborted task resolves to a cancellation error once its future is dropped.
        let _ = t.await;
    }
}

fn proxy_type(np: &NewProxy) -> &str {
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

fn new_run_id() -> String {
    let b: [u8; 8] = rand::rng().random();
    hex::encode(b)
}

fn first_message_error(e: &handshake::HandshakeError) -> String {
    let handshake::HandshakeError::Msg(e) = e else {
        return e.to_string();
    };
    match e {
        MsgError::Codec(CodecError::UnknownType(0, _)) => {
            "yamux frame on a plain connection: the client uses tcpMux but this frps has transport.tcpMux = false (transport.tcpMux must be the same on frpc and frps)".into()
        }
        MsgError::Timeout => "no complete first message within 10s".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
