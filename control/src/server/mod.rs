//! The frps runtime: accepts on `bindPort`, logs clients in, registers their proxies, keeps
//! each client's work-connection pool, pairs user connections with work connections and hands
//! the pairs to the data plane (spec §4, §7, §8, §12).
//!
//! Shape: one [`Server`] owning shared state; per accepted transport connection a task that
//! sniffs it, completes TLS and, with tcpMux, accepts yamux streams; per logical connection a
//! task that reads the first message and becomes a control session, a work connection (parked
//! in its control's pool) or a visitor connection.
//!
//! Rooms: `control` (the registry of logged-in clients by run id, each with its message
//! queue and work-connection pool), `session` (Login, the control messages, work
//! connections), `proxies` (the registry of proxies, their ports and tcp groups; each kind's
//! `start` — `tcp`, `udp`, `vhost`, `visitor` — returns what it set up, undone on
//! close), [`hooks`] (the server plugins' chain). User connections flow from a proxy kind's
//! listener through `State::admit_user` (NewUserConn) to `State::join_user_conn` and the
//! data plane.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dataplane::{Engine, Pair, Side};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::auth;
use crate::config::ServerConfig;
use crate::crypto::{self, CryptoKey};
use crate::handshake;
use crate::msg::{CodecError, Message, StartWorkConn};
use crate::msgconn::{MsgConn, MsgError};
use crate::transport::{self, Conn, ServerTls};
use crate::yamux;

mod control;
pub mod hooks;
mod nathole;
mod ports;
mod proxies;
mod session;
mod ssh_gateway;
mod tcp;
mod udp;
mod vhost;
mod visitor;
mod xtcp;
pub(crate) use control::Control;
use control::Controls;
use proxies::Proxies;
pub(crate) use proxies::{ProxyInfo, Started, on_close};

/// How long frps waits for the first bytes and the first message of a connection.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Queue depth of a control's writer (frp uses 100).
pub(super) const CONTROL_QUEUE: usize = 100;

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
    /// Checks Login / Ping / NewWorkConn credentials (`auth.*`).
    auth: auth::ServerAuth,
    tls: ServerTls,
    engine: Engine,
    /// Logged-in clients by run id.
    controls: Controls,
    /// Registered proxies, their ports and groups.
    proxies: Proxies,
    /// http/https/tcpmux routing and the vhost listeners' shared state.
    vhost: Arc<vhost::Vhost>,
    /// The server plugins' chain (`httpPlugins`).
    hooks: hooks::Hooks,
    /// Clients, proxies and traffic for the dashboard and `/metrics`.
    stats: Arc<crate::dashboard::Stats>,
    /// xtcp: introduces visitors to proxies for NAT hole punching.
    nathole: Arc<nathole::Controller>,
}

impl Server {
    /// Binds `bindAddr:bindPort` and prepares everything that can fail at start-up.
    pub async fn bind(cfg: ServerConfig) -> Result<Server, StartError> {
        // Before any listener: a token that cannot be read leaves no port open (as in frp).
        let auth = auth::ServerAuth::build(&cfg.auth)
            .await
            .map_err(StartError::Auth)?;
        let token = auth.token().to_owned();
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
        let ssh = match cfg.ssh_tunnel_gateway.bind_port {
            0 => None,
            _ => Some(
                ssh_gateway::Gateway::bind(&cfg.ssh_tunnel_gateway, &cfg.bind_addr)
                    .await
                    .map_err(StartError::SshGateway)?,
            ),
        };
        let (vhost, vhost_listeners) = vhost::bind(&cfg).await?;
        let state = Arc::new(State {
            key: CryptoKey::derive(token.as_bytes()),
            token,
            auth,
            tls: ServerTls {
                config: tls_cfg,
                force,
            },
            engine: Engine::new(cfg.dataplane.engine_config()),
            controls: Controls::default(),
            hooks: hooks::Hooks::from_config(&cfg),
            proxies: Proxies::new(&cfg),
            vhost,
            stats: Arc::new(crate::dashboard::Stats::new()),
            nathole: nathole::Controller::new(
                cfg.nathole_analysis_data_reserve_hours,
                nathole::Limits::default(),
            ),
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
        let _nathole = AbortOnDrop(tokio::spawn(self.state.nathole.clone().clean_worker()));
        let _heartbeats = (self.state.cfg.transport.heartbeat_timeout > 0).then(|| {
            let timeout = Duration::from_secs(self.state.cfg.transport.heartbeat_timeout as u64);
            AbortOnDrop(tokio::spawn(check_heartbeats(self.state.clone(), timeout)))
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
    /// `auth.tokenSource` could not be read, or OIDC discovery failed.
    #[error("{0}")]
    Auth(String),
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

/// Spawns the task of a logical connection. Not inline in the accept loop: an async fn
/// keeps room for a future it built and moved away as long as the loop runs.
fn spawn_logical(st: Arc<State>, conn: Conn, remote: SocketAddr) {
    tokio::spawn(st.handle_logical(conn, remote));
}

/// frp's heartbeat check: every second, the sessions of clients that sent no Ping for
/// `timeout` (counted from their login when they never did) end with "heartbeat timeout".
async fn check_heartbeats(st: Arc<State>, timeout: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        st.controls.end_silent(timeout);
    }
}

/// Serves the streams of a client's tcpMux session, each as a logical connection in a task of
/// its own; runs inside the session's driver task.
struct LogicalStreams {
    st: Arc<State>,
    remote: SocketAddr,
}

impl yamux::Acceptor for LogicalStreams {
    fn stream(&mut self, stream: yamux::Stream) {
        spawn_logical(self.st.clone(), Conn::Yamux(stream), self.remote);
    }

    fn closed(&mut self, reason: Option<&yamux::YamuxError>) {
        let remote = self.remote;
        match reason {
            Some(e) if !e.is_normal_close() => crate::warn_limited!(
                crate::log::PEER_REFUSALS,
                "tcpMux session from {remote} closed: {e}"
            ),
            _ => debug!("tcpMux session from {remote} closed"),
        }
    }
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
        // A task of its own: this one's future is sized for the vhost sniffing and the TLS
        // handshake and would stay that large for the session's life.
        tokio::spawn(self.handle_session(conn, remote));
    }

    /// Accepts KCP sessions: each goes through TLS detection, then on as a `bindPort`
    /// connection would.
    async fn serve_kcp(self: Arc<Self>, mut l: crate::kcp::KcpListener) {
        while let Ok(s) = l.accept().await {
            let st = self.clone();
            tokio::spawn(async move {
                let remote = s.peer_addr();
                match transport::accept_kcp(s, &st.tls, FIRST_MESSAGE_TIMEOUT).await {
                    Ok(conn) => drop(tokio::spawn(st.handle_session(conn, remote))),
                    Err(e) => crate::warn_limited!(
                        crate::log::PEER_REFUSALS,
                        "kcp connection from {remote} closed: {e}"
                    ),
                }
            });
        }
    }

    /// A transport connection after TLS: one logical connection, or a tcpMux session. A
    /// session's streams are accepted inside the task driving it (hosted there, as its relays
    /// are) once the first one opened: this task ends then, and a connected client costs no
    /// task for its accept loop.
    async fn handle_session(self: Arc<Self>, conn: Conn, remote: SocketAddr) {
        if !self.cfg.transport.tcp_mux {
            Box::pin(self.handle_logical(conn, remote)).await;
            return;
        }
        let ycfg = yamux::Config::frp(self.cfg.transport.tcp_mux_keepalive_interval);
        let (session, mut incoming) = yamux::session(conn, ycfg, yamux::Mode::Server);
        // A session that never opens a stream (garbage shorter than a frame header, or
        // silence) must not hold the connection forever.
        let first = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, incoming.accept()).await {
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
        use yamux::Acceptor as _;
        let mut streams = LogicalStreams { st: self, remote };
        let Some(first) = first else {
            streams.closed(session.close_reason().as_ref());
            return;
        };
        streams.stream(first);
        if let Err((mut incoming, mut streams)) = incoming.serve(Box::new(streams)) {
            // The driver has already ended (the session with it).
            while let Some(stream) = incoming.accept().await {
                streams.stream(stream);
            }
            streams.closed(session.close_reason().as_ref());
        }
    }

    /// Serves one logical connection: its first message decides what it is. A plain fn
    /// returning the future, with the handshake boxed at once: a control's task lives as long
    /// as its client, and an async fn's future keeps room for its arguments and every state
    /// it passes through (the handshake, the first message) for all that time.
    fn handle_logical(
        self: Arc<Self>,
        conn: Conn,
        remote: SocketAddr,
    ) -> impl Future<Output = ()> + Send {
        let accept = Box::pin(handshake::server_accept(conn, FIRST_MESSAGE_TIMEOUT));
        async move {
            let serve = match accept.await {
                Ok(accepted) => self.route(accepted, remote),
                Err(e) => {
                    crate::warn_limited!(
                        crate::log::PEER_REFUSALS,
                        "connection from {remote} closed: {}",
                        first_message_error(&e)
                    );
                    None
                }
            };
            if let Some(serve) = serve {
                serve.await
            }
        }
    }

    /// What serves a logical connection, by its first message (boxed: see
    /// [`State::handle_logical`]); `None` when it is none of Login, NewWorkConn and
    /// NewVisitorConn.
    fn route(
        self: Arc<Self>,
        accepted: handshake::Accepted<Conn>,
        remote: SocketAddr,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        let mc = accepted.conn;
        Some(match accepted.first {
            Message::Login(login) => self.handle_login(mc, login, remote, accepted.crypto),
            Message::NewWorkConn(nwc) => Box::pin(self.handle_new_work_conn(mc, nwc, remote)),
            Message::NewVisitorConn(v) => Box::pin(self.handle_visitor_conn(mc, v, remote)),
            other => {
                crate::warn_limited!(
                    crate::log::PEER_REFUSALS,
                    "connection from {remote} closed: unexpected first message {} (want Login, NewWorkConn or NewVisitorConn)",
                    other.name()
                );
                return None;
            }
        })
    }

    /// Asks the NewUserConn plugins about a user connection that reached `proxy` from
    /// `remote`; `false` when it is refused (the caller drops the connection).
    pub(crate) async fn admit_user(
        &self,
        ctl: &Control,
        proxy: &ProxyInfo,
        remote: &SocketAddr,
    ) -> bool {
        if !self.hooks.has(hooks::Op::NewUserConn) {
            return true;
        }
        let content = hooks::NewUserConnContent {
            user: ctl.user_info(),
            proxy_name: proxy.name.clone(),
            proxy_type: proxy.proxy_type.clone(),
            remote_addr: remote.to_string(),
        };
        match self.hooks.new_user_conn(content).await {
            Ok(_) => true,
            Err(e) => {
                warn!(
                    "[{}] [{}] the user conn [{remote}] was rejected, err:{e}",
                    ctl.run_id, proxy.name
                );
                false
            }
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
        for _attempt in 0..=ctl.pool.count {
            let work = ctl
                .work_conn(timeout)
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
            ctl.pool.count + 1
        ))
    }
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
