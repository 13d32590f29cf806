//! The frpc runtime: logs in to frps with frp's retry schedule, registers proxies and keeps
//! them registered, answers ReqWorkConn by opening work connections, pairs each with a
//! connection to the local service and hands the pair to the data plane; reconnects when the
//! control connection dies (spec §4, §7.2, §8, §12, §13).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::{Engine, Pair, RateLimiter, Side};
use rand::RngExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, trace, warn};

use crate::auth;
use crate::config::{ClientConfig, ProxyConfig};
use crate::crypto::{self, CryptoKey};
use crate::handshake::{self, HandshakeError, Role};
use crate::msg::{CloseProxy, Login, Message, NewProxy, NewWorkConn, Ping};
use crate::msgconn::{MsgConn, MsgError};
use crate::proxy_protocol;
use crate::transport::{self, Conn, Connector, DialConfig, DialError};
use crate::wire_v2::WireVersion;

mod health;
pub(crate) mod plugin;
pub mod store;
mod udp;
mod visitor;
pub mod vnet;
pub mod xtcp;

mod handle;
pub use handle::{ProxyStatus, ReloadSummary};

/// Why frpc stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "login to the server failed: {0}. With loginFailExit enabled, no additional retries will be attempted"
    )]
    LoginFailed(String),
    #[error("invalid TLS settings: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Transport(#[from] transport::SetupError),
    /// `auth.tokenSource` could not be read, or the OIDC client could not be set up.
    #[error("{0}")]
    Auth(String),
    /// `virtualNet.address`: the TUN device could not be set up.
    #[error("{0}")]
    Vnet(String),
}

/// One login attempt failed.
#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("{0}")]
    Dial(#[from] DialError),
    #[error("{}", explain_msg_error(.0))]
    Msg(#[from] MsgError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Handshake(HandshakeError),
    /// No credential for the Login (OIDC token endpoint or token source failed).
    #[error("{0}")]
    Auth(String),
}

impl From<HandshakeError> for LoginError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Msg(m) => LoginError::Msg(m),
            other => LoginError::Handshake(other),
        }
    }
}

fn explain_msg_error(e: &MsgError) -> String {
    match e {
        MsgError::Codec(crate::msg::CodecError::UnknownType(0, _)) => format!(
            "{e}: frps answered with yamux frames; it has tcpMux on but this frpc has transport.tcpMux = false (transport.tcpMux must be the same on frpc and frps)"
        ),
        other => other.to_string(),
    }
}

/// Where a proxy stands (frp's proxy wrapper phases, `/api/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    New,
    WaitStart(Instant),
    StartError(Instant, String),
    Running {
        remote_addr: String,
    },
    /// The health check failed: the proxy was withdrawn (CloseProxy) until it passes again.
    CheckFailed,
}

struct ProxyRuntime {
    /// Shared with every work connection of the proxy (one Arc clone per connection, not a
    /// copy of the whole config).
    cfg: Arc<ProxyConfig>,
    wire_name: String,
    phase: Phase,
    /// `bandwidthLimitMode = "client"`: one limiter for all the proxy's work connections.
    limiter: Option<Arc<RateLimiter>>,
    /// Whether the health check passes; always true without one. Like frp, a checked proxy
    /// starts unhealthy and registers only after its first successful check.
    healthy: bool,
    /// The task serving a udp proxy's work connection (replaced by the next one).
    udp_work: Option<tokio::task::AbortHandle>,
    /// The tasks serving an sudp proxy's work connections, one per visitor connection.
    sudp_work: Vec<tokio::task::AbortHandle>,
    /// `plugin`: serves the work connections instead of a dial to localIP:localPort.
    plugin: Option<Arc<dyn plugin::Plugin>>,
}

/// A running frpc.
pub struct Client {
    cfg: ClientConfig,
    /// Fills the credentials of Login, Ping and NewWorkConn (`auth.*`).
    auth: Arc<auth::ClientAuth>,
    /// `--allow-unsafe`: applied to configs the admin API reloads.
    unsafe_features: crate::config::UnsafeFeatures,
    key: CryptoKey,
    dial: DialConfig,
    /// `transport.wireProtocol`: every logical connection (control, work) speaks it.
    wire: WireVersion,
    engine: Engine,
    run_id: Mutex<String>,
    proxies: Arc<Mutex<HashMap<String, ProxyRuntime>>>,
    /// The live control session's message queue (admin API reloads send through it).
    session_tx: Mutex<Option<mpsc::Sender<Message>>>,
    /// `[[visitors]]`: started with each session, updated by reloads.
    visitors: Mutex<visitor::Manager>,
    /// Set for an frpc inside frps (the SSH tunnel gateway's): logical connections are made
    /// in memory instead of dialing `serverAddr`.
    in_process: Option<transport::InProcessDialer>,
    /// `virtualNet.address`: the virtual network (its TUN device opens when frpc runs).
    vnet: Option<Arc<vnet::Controller>>,
    /// xtcp: NatHole requests out on the live control connection, NatHoleResp back.
    nathole: Arc<xtcp::Transporter>,
    /// Woken whenever a NewProxyResp settles a proxy's phase (see [`WAIT_START_GRACE`]).
    proxy_settled: tokio::sync::Notify,
}

/// How long a work connection for a proxy still waiting for its NewProxyResp is held. frps
/// may send StartWorkConn on a work connection before the NewProxyResp it queued on the
/// control connection reaches us (a user connected the moment the proxy's port opened); frp
/// closes such a connection, we let it through once the proxy is running.
const WAIT_START_GRACE: Duration = Duration::from_secs(2);

struct Session {
    connector: Connector,
    mc: MsgConn<Conn>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// frp's "fast backoff": double with up to 10% jitter, capped.
fn backoff_next(prev: Duration, cap: Duration) -> Duration {
    let base = if prev.is_zero() {
        Duration::from_secs(2)
    } else {
        prev * 2
    };
    let jitter = rand::rng().random_range(0.0..0.1);
    base.mul_f64(1.0 + jitter).min(cap)
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let engine = Engine::new(cfg.dataplane.engine_config());
        Client::with_engine(cfg, engine)
    }

    fn with_engine(cfg: ClientConfig, engine: Engine) -> Result<Client, ClientError> {
        let dial = DialConfig::from_client_config(&cfg)?;
        let wire = WireVersion::from_config(&cfg.transport.wire_protocol).unwrap_or_default();
        let vnet = (!cfg.virtual_net.address.is_empty())
            .then(|| vnet::Controller::new(&cfg.virtual_net.address));
        let proxies = handle::proxy_runtimes(&cfg, vnet.as_ref());
        let auth = auth::ClientAuth::build(&cfg.auth).map_err(ClientError::Auth)?;
        Ok(Client {
            key: CryptoKey::derive(auth.token().as_bytes()),
            auth: Arc::new(auth),
            unsafe_features: Default::default(),
            dial,
            wire,
            engine,
            run_id: Mutex::new(String::new()),
            proxies: Arc::new(Mutex::new(proxies)),
            session_tx: Mutex::new(None),
            visitors: Mutex::new(visitor::Manager::new(cfg.active_visitors())),
            cfg,
            in_process: None,
            vnet,
            nathole: Arc::new(xtcp::Transporter::default()),
            proxy_settled: tokio::sync::Notify::new(),
        })
    }

    /// An frpc inside frps (frp's `virtual.Client`): `dial` makes its logical connections,
    /// `handler` serves the work connections of proxy `name` instead of a dial to the local
    /// service (frp's `HandleWorkConnCb`), and frps' data plane relays them.
    pub(crate) fn in_process(
        cfg: ClientConfig,
        engine: Engine,
        dial: transport::InProcessDialer,
        name: &str,
        handler: Arc<dyn plugin::Plugin>,
    ) -> Result<Client, ClientError> {
        let mut c = Client::with_engine(cfg, engine)?;
        c.in_process = Some(dial);
        if let Some(p) = c.proxies.lock().unwrap().get_mut(name) {
            p.plugin = Some(handler);
        }
        Ok(c)
    }

    /// Sets the features `--allow-unsafe` enabled (checked again on admin API reloads).
    pub fn with_unsafe_features(mut self, features: crate::config::UnsafeFeatures) -> Self {
        self.unsafe_features = features;
        self
    }

    /// The features `--allow-unsafe` enabled.
    pub fn unsafe_features(&self) -> &crate::config::UnsafeFeatures {
        &self.unsafe_features
    }

    /// Runs until `shutdown` resolves (then stops gracefully: CloseProxy for every proxy,
    /// 100 ms, close) or the first login fails with `loginFailExit`.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ClientError> {
        tokio::pin!(shutdown);
        // frp opens the TUN device before anything else; frpc stops when it cannot.
        let _vnet_task = match &self.vnet {
            Some(v) => match v.init() {
                Ok(name) => {
                    info!("virtual network controller start...");
                    debug!(
                        "virtual network device {name} holds {}",
                        self.cfg.virtual_net.address
                    );
                    Some(AbortOnDrop(tokio::spawn(v.clone().run())))
                }
                Err(e) => {
                    tracing::error!("init virtual network controller error: {e}");
                    return Err(ClientError::Vnet(e));
                }
            },
            None => None,
        };
        // First login: frp's schedule, 10 s cap; loginFailExit ends frpc at the first failure.
        let mut delay = Duration::ZERO;
        let mut session = loop {
            info!("try to connect to server...");
            match self.login().await {
                Ok(s) => break s,
                Err(e) => {
                    if self.cfg.login_fail_exit {
                        return Err(ClientError::LoginFailed(e.to_string()));
                    }
                    delay = backoff_next(delay, Duration::from_secs(10));
                    warn!(
                        "connect to server error: {e}, wait {:?} for another retry",
                        delay
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = &mut shutdown => return Ok(()),
                    }
                }
            }
        };
        let mut recent_restarts: Vec<Instant> = Vec::new();
        let mut outer_delay = Duration::ZERO;
        loop {
            let started = Instant::now();
            let stopped = self.clone().run_session(session, &mut shutdown).await;
            if stopped {
                return Ok(());
            }
            // The control died. If sessions keep dying right after login, slow down.
            recent_restarts.retain(|t| t.elapsed() < Duration::from_secs(60));
            let pause = if started.elapsed() > Duration::from_secs(60) {
                outer_delay = Duration::ZERO;
                Duration::ZERO
            } else if recent_restarts.len() < 3 {
                Duration::from_millis(rand::rng().random_range(200..300))
            } else {
                outer_delay = backoff_next(outer_delay, Duration::from_secs(20));
                outer_delay
            };
            recent_restarts.push(Instant::now());
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = &mut shutdown => return Ok(()),
                }
            }
            let mut delay = Duration::ZERO;
            session = loop {
                info!("try to reconnect to server...");
                match self.login().await {
                    Ok(s) => break s,
                    Err(e) => {
                        delay = backoff_next(delay, Duration::from_secs(20));
                        warn!(
                            "reconnect to server error: {e}, wait {:?} for another retry",
                            delay
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = &mut shutdown => return Ok(()),
                        }
                    }
                }
            };
        }
    }

    async fn login(&self) -> Result<Session, LoginError> {
        let timestamp = unix_now();
        let mut login = Login {
            version: crate::FRP_VERSION.into(),
            hostname: hostname(),
            os: std::env::consts::OS.into(),
            arch: go_arch().into(),
            user: self.cfg.user.clone(),
            timestamp,
            run_id: self.run_id.lock().unwrap().clone(),
            client_id: self.cfg.client_id.clone(),
            metas: self.cfg.metadatas.clone().into_iter().collect(),
            pool_count: self.cfg.transport.pool_count,
            ..Default::default()
        };
        self.auth
            .set_login(&mut login)
            .await
            .map_err(LoginError::Auth)?;
        let (connector, conn) = match &self.in_process {
            Some(dial) => (Connector::InProcess(dial.clone()), dial()),
            None => self.dial.connect().await?,
        };
        let mut mc = MsgConn::client(conn, self.wire);
        let result = match handshake::client_login(&mut mc, login, self.bootstrap_info()).await {
            Ok((r, _)) if !r.error.is_empty() => Err(LoginError::Refused(r.error)),
            Ok(ok) => Ok(ok),
            Err(e) => Err(e.into()),
        };
        let (resp, crypto) = match result {
            Ok(r) => r,
            Err(e) => {
                connector.close();
                return Err(e);
            }
        };
        *self.run_id.lock().unwrap() = resp.run_id.clone();
        info!("login to server success, get run id [{}]", resp.run_id);
        let token = self.auth.token();
        handshake::enable_control_encryption(
            &mut mc,
            crypto.as_ref(),
            token,
            &self.key,
            Role::Client,
        )?;
        Ok(Session { connector, mc })
    }

    /// ClientHello.bootstrap (informational): how this frpc reaches frps.
    fn bootstrap_info(&self) -> crate::wire_v2::BootstrapInfo {
        let t = &self.cfg.transport;
        crate::wire_v2::BootstrapInfo {
            transport: t.protocol.clone(),
            tls: t.tls.enable || t.protocol == "wss" || t.protocol == "quic",
            tcp_mux: t.tcp_mux,
        }
    }

    /// Drives one control session. Returns true if frpc was asked to stop.
    async fn run_session(
        self: Arc<Self>,
        session: Session,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        let Session { connector, mc } = session;
        let run_id = self.run_id.lock().unwrap().clone();
        let (mut reader, mut writer) = mc.split();
        let (tx, mut rx) = mpsc::channel::<Message>(100);
        let writer_task = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if let Err(e) = writer.write_msg(&m).await {
                    debug!("control write: {e}");
                    break;
                }
            }
        });

        // Like frp's proxy wrappers (made anew per session): checked proxies start unhealthy
        // and register once their first check passes.
        let (health_tx, mut health_rx) = mpsc::channel::<health::Report>(16);
        let mut monitors = Vec::new();
        {
            let mut proxies = self.proxies.lock().unwrap();
            for p in proxies.values_mut() {
                p.phase = Phase::New;
                p.healthy = !health::enabled(&p.cfg);
                if health::enabled(&p.cfg) {
                    monitors.push(health::spawn(&p.cfg, health_tx.clone()));
                }
            }
        }
        drop(health_tx);
        *self.session_tx.lock().unwrap() = Some(tx.clone());
        self.nathole.set_sender(Some(tx.clone()));
        self.register_due_proxies(&tx);
        self.visitors
            .lock()
            .unwrap()
            .start_session(visitor::Session {
                connector: connector.clone(),
                run_id: run_id.clone(),
                wire: self.wire,
                user: self.cfg.user.clone(),
                engine: self.engine.clone(),
                udp_packet_size: self.cfg.udp_packet_size.clamp(1, 65535) as usize,
                vnet: self.vnet.clone(),
                nathole: self.nathole.clone(),
                stun_server: self.cfg.nat_hole_stun_server.clone(),
                quic: transport::quic::QuicParams::from_config(&self.cfg.transport.quic),
                inboxes: Default::default(),
            });

        let hb_interval = self.cfg.transport.heartbeat_interval;
        let hb_timeout = self.cfg.transport.heartbeat_timeout;
        let mut last_pong = Instant::now();
        let mut next_ping = if hb_interval > 0 {
            Some(Instant::now())
        } else {
            None
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut register_tick = tokio::time::interval(Duration::from_secs(3));
        register_tick.tick().await;

        let reason: Option<String> = loop {
            tokio::select! {
                r = reader.read_msg() => match r {
                    Ok(Message::ReqWorkConn(_)) => {
                        let me = self.clone();
                        let connector = connector.clone();
                        let run_id = run_id.clone();
                        tokio::spawn(async move { me.handle_work_conn(connector, run_id).await });
                    }
                    Ok(Message::NewProxyResp(resp)) => self.on_new_proxy_resp(resp),
                    Ok(Message::NatHoleResp(resp)) => {
                        let tid = resp.transaction_id.clone();
                        if !self.nathole.dispatch(resp) {
                            debug!("dispatch NatHoleResp message to related proxy error: no waiter for transaction [{tid}]");
                        }
                    }
                    Ok(Message::Pong(p)) => {
                        if !p.error.is_empty() {
                            break Some(format!("Pong message contains error: {}", p.error));
                        }
                        last_pong = Instant::now();
                        debug!("receive heartbeat from server");
                    }
                    Ok(other) => debug!("ignoring control message {}", other.name()),
                    Err(MsgError::Closed) => break Some("control connection closed by server".into()),
                    Err(e) => break Some(format!("control connection error: {e}")),
                },
                _ = tick.tick() => {
                    if let Some(at) = next_ping
                        && Instant::now() >= at
                    {
                        debug!("send heartbeat to server");
                        // A credential may take a round trip to the OIDC provider: off the
                        // control loop.
                        let (auth, tx) = (self.auth.clone(), tx.clone());
                        tokio::spawn(async move {
                            let mut ping = Ping::default();
                            match auth.set_ping(&mut ping).await {
                                Ok(()) => {
                                    let _ = tx.try_send(ping.into());
                                }
                                Err(e) => warn!(
                                    "error during ping authentication: {e}, skip sending ping message"
                                ),
                            }
                        });
                        next_ping = Some(at + Duration::from_secs(hb_interval as u64));
                    }
                    if hb_interval > 0 && hb_timeout > 0 && last_pong.elapsed() > Duration::from_secs(hb_timeout as u64) {
                        break Some("heartbeat timeout".into());
                    }
                }
                _ = register_tick.tick() => self.register_due_proxies(&tx),
                Some((name, healthy)) = health_rx.recv() => self.on_health(&name, healthy, &tx),
                _ = shutdown.as_mut() => break None,
            }
        };

        // Dropping the last sender lets the writer finish.
        *self.session_tx.lock().unwrap() = None;
        self.nathole.set_sender(None);
        let stopping = reason.is_none();
        match reason {
            Some(r) => warn!("[{run_id}] control closed: {r}"),
            None => {
                info!("[{run_id}] stopping: closing proxies");
                let names: Vec<String> = self
                    .proxies
                    .lock()
                    .unwrap()
                    .values()
                    .map(|p| p.wire_name.clone())
                    .collect();
                for proxy_name in names {
                    let _ = tx.send(CloseProxy { proxy_name }.into()).await;
                }
                drop(tx);
                let _ = tokio::time::timeout(Duration::from_millis(500), writer_task).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        connector.close();
        if stopping {
            connector.flush_close(Duration::from_millis(500)).await;
        }
        self.visitors.lock().unwrap().stop_session();
        for t in monitors {
            t.abort();
        }
        for p in self.proxies.lock().unwrap().values_mut() {
            p.phase = Phase::New;
            if let Some(w) = p.udp_work.take() {
                w.abort();
            }
            for w in p.sudp_work.drain(..) {
                w.abort();
            }
        }
        stopping
    }

    /// A health monitor changed its verdict (frp's statusNormal/statusFailed callbacks plus
    /// the wrapper's reaction): withdraw the proxy, or register it again.
    fn on_health(&self, name: &str, healthy: bool, tx: &mpsc::Sender<Message>) {
        {
            let mut proxies = self.proxies.lock().unwrap();
            let Some(p) = proxies.get_mut(name) else {
                return;
            };
            p.healthy = healthy;
            if healthy {
                info!("[{name}] health check success");
            } else {
                info!("[{name}] health check failed");
                if matches!(p.phase, Phase::Running { .. } | Phase::WaitStart(_)) {
                    let _ = tx.try_send(
                        CloseProxy {
                            proxy_name: p.wire_name.clone(),
                        }
                        .into(),
                    );
                    p.phase = Phase::CheckFailed;
                    if let Some(w) = p.udp_work.take() {
                        w.abort();
                    }
                }
            }
        }
        if healthy {
            self.register_due_proxies(tx);
        }
    }

    /// Sends NewProxy for proxies that are new, or waited too long for an answer (frp: 20 s in
    /// wait-start, 30 s after a start error).
    fn register_due_proxies(&self, tx: &mpsc::Sender<Message>) {
        let mut proxies = self.proxies.lock().unwrap();
        for p in proxies.values_mut() {
            if !p.healthy {
                continue;
            }
            let due = match &p.phase {
                Phase::New | Phase::CheckFailed => true,
                Phase::WaitStart(t) => t.elapsed() > Duration::from_secs(20),
                Phase::StartError(t, _) => t.elapsed() > Duration::from_secs(30),
                Phase::Running { .. } => false,
            };
            if due
                && tx
                    .try_send(new_proxy_msg(&p.cfg, &p.wire_name).into())
                    .is_ok()
            {
                p.phase = Phase::WaitStart(Instant::now());
            }
        }
    }

    fn on_new_proxy_resp(&self, resp: crate::msg::NewProxyResp) {
        let name = self.strip_user(&resp.proxy_name).to_string();
        let mut proxies = self.proxies.lock().unwrap();
        let Some(p) = proxies.get_mut(&name) else {
            debug!("NewProxyResp for unknown proxy [{name}]");
            return;
        };
        if !matches!(p.phase, Phase::WaitStart(_)) {
            return;
        }
        if resp.error.is_empty() {
            p.phase = Phase::Running {
                remote_addr: resp.remote_addr,
            };
            info!("[{name}] start proxy success");
        } else {
            warn!("[{name}] start error: {}", resp.error);
            p.phase = Phase::StartError(Instant::now(), resp.error);
        }
        self.proxy_settled.notify_waiters();
    }

    fn strip_user<'a>(&self, wire: &'a str) -> &'a str {
        if self.cfg.user.is_empty() {
            return wire;
        }
        wire.strip_prefix(&self.cfg.user)
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or(wire)
    }

    async fn handle_work_conn(self: Arc<Self>, connector: Connector, run_id: String) {
        let conn = match connector.open().await {
            Ok(c) => c,
            Err(e) => {
                warn!("start new connection to server error: {e}");
                return;
            }
        };
        let mut mc = MsgConn::client(conn, self.wire);
        let mut nwc = NewWorkConn {
            run_id,
            ..Default::default()
        };
        if let Err(e) = self.auth.set_new_work_conn(&mut nwc).await {
            warn!("error during NewWorkConn authentication: {e}");
            return;
        }
        if let Err(e) = mc.write_msg(&nwc.into()).await {
            warn!("write NewWorkConn to server error: {e}");
            return;
        }
        let start = match mc.read_msg().await {
            Ok(Message::StartWorkConn(s)) => s,
            Ok(other) => {
                warn!(
                    "work connection: unexpected message {} instead of StartWorkConn",
                    other.name()
                );
                return;
            }
            Err(MsgError::Closed) => return,
            Err(e) => {
                trace!("work connection closed before response StartWorkConn message: {e}");
                return;
            }
        };
        if !start.error.is_empty() {
            warn!("StartWorkConn contains error: {}", start.error);
            return;
        }
        let name = self.strip_user(&start.proxy_name).to_string();
        let deadline = tokio::time::Instant::now() + WAIT_START_GRACE;
        let (cfg, limiter, proxy_plugin) = loop {
            // Registered before the check, so a NewProxyResp between the two still wakes us.
            let settled = self.proxy_settled.notified();
            {
                let proxies = self.proxies.lock().unwrap();
                match proxies.get(&name) {
                    Some(p) if matches!(p.phase, Phase::Running { .. }) => {
                        break (p.cfg.clone(), p.limiter.clone(), p.plugin.clone());
                    }
                    Some(p)
                        if matches!(p.phase, Phase::WaitStart(_))
                            && tokio::time::Instant::now() < deadline => {}
                    _ => {
                        warn!("[{name}] work connection for a proxy that is not running; closed");
                        return;
                    }
                }
            }
            let _ = tokio::time::timeout_at(deadline, settled).await;
        };
        if matches!(
            cfg.proxy_type,
            crate::config::ProxyType::Udp | crate::config::ProxyType::Sudp
        ) {
            return self.start_udp_work(name, cfg, limiter, mc).await;
        }
        if cfg.proxy_type == crate::config::ProxyType::Xtcp {
            return self
                .xtcp_work(name, cfg, limiter, proxy_plugin, start, mc)
                .await;
        }
        let (work, rest) = mc.into_parts();
        let key = self.key.clone();
        self.serve_tcp_work(&name, &cfg, limiter, proxy_plugin, &start, work, rest, &key)
            .await;
    }

    /// One stream to the local service (or the proxy's plugin): a tcp-like work connection,
    /// or a stream of an xtcp P2P session. `key` keys `useEncryption` (the token's key, or
    /// the sk's for xtcp); `rest` holds wire bytes already read past the last message.
    #[allow(clippy::too_many_arguments)]
    async fn serve_tcp_work(
        &self,
        name: &str,
        cfg: &ProxyConfig,
        limiter: Option<Arc<RateLimiter>>,
        proxy_plugin: Option<Arc<dyn plugin::Plugin>>,
        start: &crate::msg::StartWorkConn,
        work: Conn,
        rest: Vec<u8>,
        key: &CryptoKey,
    ) {
        let name = name.to_string();
        // PROXY protocol header for the local service, sent before any relayed byte.
        let mut initial_write = bytes::Bytes::new();
        if !cfg.transport.proxy_protocol_version.is_empty()
            && !start.src_addr.is_empty()
            && start.src_port != 0
        {
            match start_addrs(start) {
                Some((src, dst)) => match proxy_protocol::header(
                    &cfg.transport.proxy_protocol_version,
                    src,
                    dst,
                    proxy_protocol::Transport::Stream,
                ) {
                    Ok(h) => initial_write = h.into(),
                    Err(e) => warn!("[{name}] {e}"),
                },
                None => warn!(
                    "[{name}] StartWorkConn addresses [{}:{}] / [{}:{}] unusable for the PROXY protocol header",
                    start.src_addr, start.src_port, start.dst_addr, start.dst_port
                ),
            }
        }
        if let Some(proxy_plugin) = proxy_plugin {
            // frp: the plugin handles the connection instead of a dial to the local service.
            let (inbound, outbound) = crypto::work_conn_layers(
                Some(key),
                cfg.transport.use_encryption,
                cfg.transport.use_compression,
            );
            let user = crate::layered::Layered::new(work, rest, inbound, outbound);
            let (src, dst) = match start_addrs(start) {
                Some((s, d)) if !start.src_addr.is_empty() && start.src_port != 0 => {
                    (Some(s), Some(d))
                }
                _ => (None, None),
            };
            let info = plugin::ConnInfo {
                proxy: name.clone(),
                src,
                dst,
                proxy_protocol_header: initial_write,
            };
            let relay = plugin::Relay {
                engine: self.engine.clone(),
                limiter,
            };
            debug!("[{name}] handle by plugin: {}", proxy_plugin.name());
            proxy_plugin.handle(user, info, relay).await;
            debug!("[{name}] handle by plugin finished");
            return;
        }
        let local_addr = format!("{}:{}", bracket(&cfg.local_ip), cfg.local_port);
        let local =
            match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&local_addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!("[{name}] connect to local service [{local_addr}] error: {e}");
                    return;
                }
                Err(_) => {
                    warn!("[{name}] connect to local service [{local_addr}] error: i/o timeout");
                    return;
                }
            };
        transport::tune_tcp(&local, 0);
        let (inbound, outbound) = crypto::work_conn_layers(
            Some(key),
            cfg.transport.use_encryption,
            cfg.transport.use_compression,
        );
        debug!(
            "[{name}] join connections, local [{local_addr}] user [{}:{}]",
            start.src_addr, start.src_port
        );
        self.engine.spawn(Pair {
            a: Side {
                endpoint: work.into_endpoint(),
                prefix: rest.into(),
                inbound,
                outbound,
                initial_write: bytes::Bytes::new(),
            },
            b: Side {
                initial_write,
                ..Side::plain(dataplane::Endpoint::Tcp(local))
            },
            counters: None,
            limiter,
        });
    }

    /// A udp proxy's work connection: served by its own task, which replaces (and so closes)
    /// the proxy's previous one.
    async fn start_udp_work(
        self: Arc<Self>,
        name: String,
        cfg: Arc<ProxyConfig>,
        limiter: Option<Arc<RateLimiter>>,
        mc: MsgConn<Conn>,
    ) {
        let local_addr = join_host_port(&cfg.local_ip, cfg.local_port);
        let local = match tokio::net::lookup_host(&local_addr).await {
            Ok(mut addrs) => addrs.next(),
            Err(e) => {
                warn!("[{name}] resolve local udp service [{local_addr}]: {e}");
                return;
            }
        };
        let Some(local) = local else {
            warn!("[{name}] resolve local udp service [{local_addr}]: no address");
            return;
        };
        let (work, rest) = mc.into_parts();
        let (inbound, outbound) = crypto::work_conn_layers(
            Some(&self.key),
            cfg.transport.use_encryption,
            cfg.transport.use_compression,
        );
        let proxy = udp::UdpProxy {
            name: name.clone(),
            local,
            proxy_protocol: cfg.transport.proxy_protocol_version.clone(),
            packet_size: self.cfg.udp_packet_size.clamp(1, 65535) as usize,
            wire: self.wire,
            limiter,
        };
        let task = tokio::spawn(udp::serve(proxy, work, rest, inbound, outbound));
        let mut proxies = self.proxies.lock().unwrap();
        match proxies.get_mut(&name) {
            // sudp: every visitor connection has its own work connection.
            Some(p)
                if matches!(p.phase, Phase::Running { .. })
                    && cfg.proxy_type == crate::config::ProxyType::Sudp =>
            {
                p.sudp_work.retain(|t| !t.is_finished());
                p.sudp_work.push(task.abort_handle());
            }
            Some(p) if matches!(p.phase, Phase::Running { .. }) => {
                if let Some(old) = p.udp_work.replace(task.abort_handle()) {
                    old.abort();
                }
            }
            _ => task.abort(),
        }
    }

    /// Proxy phases for status reporting.
    pub fn proxy_phases(&self) -> Vec<(String, Phase)> {
        self.proxies
            .lock()
            .unwrap()
            .iter()
            .map(|(n, p)| (n.clone(), p.phase.clone()))
            .collect()
    }
}

fn new_proxy_msg(p: &ProxyConfig, wire_name: &str) -> NewProxy {
    NewProxy {
        proxy_name: wire_name.to_string(),
        proxy_type: p.proxy_type.as_str().to_string(),
        use_encryption: p.transport.use_encryption,
        use_compression: p.transport.use_compression,
        bandwidth_limit: p.transport.bandwidth_limit.as_str().to_string(),
        bandwidth_limit_mode: if p.transport.bandwidth_limit_mode == "server" {
            "server".into()
        } else {
            String::new()
        },
        group: p.load_balancer.group.clone(),
        group_key: p.load_balancer.group_key.clone(),
        metas: p.metadatas.clone().into_iter().collect(),
        annotations: p.annotations.clone().into_iter().collect(),
        remote_port: p.remote_port as i64,
        custom_domains: p.custom_domains.clone(),
        subdomain: p.subdomain.clone(),
        locations: p.locations.clone(),
        http_user: p.http_user.clone(),
        http_pwd: p.http_password.clone(),
        host_header_rewrite: p.host_header_rewrite.clone(),
        headers: p.request_headers.set.clone().into_iter().collect(),
        response_headers: p.response_headers.set.clone().into_iter().collect(),
        route_by_http_user: p.route_by_http_user.clone(),
        sk: p.secret_key.clone(),
        allow_users: p.allow_users.clone(),
        multiplexer: p.multiplexer.clone(),
    }
}

/// `host:port`, with brackets around an IPv6 host.
fn join_host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", bracket(host))
}

/// The user's address and frps' socket address from StartWorkConn; an empty `dst_addr` is
/// 127.0.0.1, as in frp.
fn start_addrs(start: &crate::msg::StartWorkConn) -> Option<(SocketAddr, SocketAddr)> {
    let src_ip: std::net::IpAddr = start.src_addr.parse().ok()?;
    let dst_ip: std::net::IpAddr = if start.dst_addr.is_empty() {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        start.dst_addr.parse().ok()?
    };
    Some((
        SocketAddr::new(src_ip, start.src_port),
        SocketAddr::new(dst_ip, start.dst_port),
    ))
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// GOARCH spelling of the running architecture (frps logs it).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}
