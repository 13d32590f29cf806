//! `[[visitors]]`, frpc side (spec §10.1, §10.2): local entry points to another client's
//! `stcp`/`sudp` proxy through frps.
//!
//! Visitors live as long as a control session, like frp's visitor manager: started after
//! login, stopped when the session ends. One that cannot start (its port is taken) is retried
//! every 10 s. Each visitor connection is a new logical connection to frps (a tcpMux stream, a
//! QUIC stream or a new connection, with the v2 magic when the client speaks v2) that starts
//! with `NewVisitorConn{run_id, proxy_name, sign_key = md5(sk + ts), …}` and waits ≤ 10 s for
//! `NewVisitorConnResp`; after that its bytes are wrapped with the sk-keyed encryption and
//! compression the visitor asked for.
//!
//! - **stcp:** a TCP listener on `bindAddr:bindPort`; each accepted connection gets its own
//!   visitor connection, and the pair goes to the data plane.
//! - **sudp:** a UDP socket on `bindAddr:bindPort`; datagrams travel as `UDPPacket{c, r = the
//!   local user's address}` over one visitor connection, opened at the first datagram and again
//!   at the first datagram after it failed. A visitor connection silent for 60 s is dropped
//!   (the owner pings every 30 s).
//! - **plugin `virtual_net`** (stcp): besides the listener, if any (`bindPort = -1`: none),
//!   one visitor connection kept open for frpc's virtual network ([`super::vnet`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dataplane::{Engine, Pair, Side};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use crate::auth;
use crate::config::{VisitorConfig, VisitorType};
use crate::crypto::{self, CryptoKey};
use crate::msg::{Message, NewVisitorConn, UdpPacket};
use crate::msgconn::{MsgConn, MsgError, MsgReader, MsgWriter};
use crate::transport::{self, Conn, Connector};
use crate::wire_v2::WireVersion;

/// How often a visitor that failed to start is tried again (frp: 10 s).
const RETRY: Duration = Duration::from_secs(10);
/// How long frpc waits for NewVisitorConnResp.
const RESP_TIMEOUT: Duration = Duration::from_secs(10);
/// An sudp visitor connection without a message for this long is dropped.
const SUDP_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Queue depth between the sudp socket and its visitor connection (frp: 1024).
const QUEUE: usize = 1024;

/// What every visitor of one session shares.
#[derive(Clone)]
pub(crate) struct Session {
    pub connector: Connector,
    pub run_id: String,
    pub wire: WireVersion,
    /// Our `user` (the default owner of the target proxy).
    pub user: String,
    pub engine: Engine,
    /// `udpPacketSize`: the sudp read buffer.
    pub udp_packet_size: usize,
    /// `virtualNet.address`: frpc's virtual network, for the `virtual_net` plugin.
    pub vnet: Option<Arc<super::vnet::Controller>>,
    /// xtcp: NatHole requests over the control connection.
    pub nathole: Arc<super::xtcp::Transporter>,
    /// xtcp: `natHoleStunServer`.
    pub stun_server: String,
    /// xtcp: `transport.quic.*` for the P2P QUIC session.
    pub quic: crate::transport::quic::QuicParams,
    /// The running stcp/xtcp visitors' inboxes, for connections other visitors hand over
    /// (frp's `TransferConn`, xtcp's `fallbackTo`).
    pub inboxes: Inboxes,
}

/// Visitor name → where connections handed to it go.
pub(crate) type Inboxes = Arc<std::sync::Mutex<HashMap<String, mpsc::Sender<Conn>>>>;

/// Connections waiting for a visitor to take them.
const INBOX: usize = 64;

/// frp's `TransferConn`: hands `conn` to the visitor `name`.
/// On failure (no such visitor running, or its inbox full) the connection comes back.
pub(crate) fn transfer_conn(s: &Session, name: &str, conn: Conn) -> Result<(), Conn> {
    let tx = s.inboxes.lock().unwrap().get(name).cloned();
    match tx {
        Some(tx) => tx.try_send(conn).map_err(|e| match e {
            mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
        }),
        None => Err(conn),
    }
}

/// frp's `BuildTargetServerProxyName`: the owner's user prefix, `serverUser` overriding ours.
pub(crate) fn target_proxy_name(local_user: &str, server_user: &str, server_name: &str) -> String {
    let user = if server_user.is_empty() {
        local_user
    } else {
        server_user
    };
    if user.is_empty() {
        server_name.to_string()
    } else {
        format!("{user}.{server_name}")
    }
}

/// frp's visitor manager: the visitors the config wants, and those running in the current
/// session. Visitors start with a session and stop with it; a reload stops removed and changed
/// visitors and starts added and changed ones at once (frp's `UpdateAll`).
#[derive(Default)]
pub(crate) struct Manager {
    wanted: Vec<VisitorConfig>,
    session: Option<Session>,
    running: Vec<(VisitorConfig, JoinHandle<()>)>,
    /// Stopped visitors' tasks, aborted but perhaps not dropped yet: the next visitors started
    /// wait for them, so that a visitor restarted on the same port (a reload that changes it, a
    /// new session) finds its old listener closed, as frp closes it before starting the new.
    stopping: Vec<JoinHandle<()>>,
}

impl Manager {
    pub(crate) fn new<'a>(visitors: impl Iterator<Item = &'a VisitorConfig>) -> Manager {
        Manager {
            wanted: visitors.cloned().collect(),
            ..Manager::default()
        }
    }

    /// The config of the wanted visitor `name`.
    pub(crate) fn config(&self, name: &str) -> Option<&VisitorConfig> {
        self.wanted.iter().find(|v| v.name == name)
    }

    /// A session began: start every wanted visitor in it.
    pub(crate) fn start_session(&mut self, s: Session) {
        self.stop_session();
        self.session = Some(s);
        let wanted = self.wanted.clone();
        self.start(&wanted);
    }

    /// The session ended: stop every visitor.
    pub(crate) fn stop_session(&mut self) {
        self.session = None;
        self.stopping.retain(|t| !t.is_finished());
        for (_, t) in self.running.drain(..) {
            t.abort();
            self.stopping.push(t);
        }
    }

    /// Applies a reloaded config's visitors; returns (added, changed, removed) names.
    pub(crate) fn reload<'a>(
        &mut self,
        visitors: impl Iterator<Item = &'a VisitorConfig>,
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        let new: Vec<VisitorConfig> = visitors.cloned().collect();
        let (mut added, mut changed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        for old in &self.wanted {
            match new.iter().find(|v| v.name == old.name) {
                Some(v) if v == old => {}
                Some(_) => changed.push(old.name.clone()),
                None => removed.push(old.name.clone()),
            }
        }
        for v in &new {
            if !self.wanted.iter().any(|o| o.name == v.name) {
                added.push(v.name.clone());
            }
        }
        let gone: Vec<&String> = changed.iter().chain(&removed).collect();
        let (stop, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|(v, _)| gone.contains(&&v.name));
        self.running = keep;
        self.stopping.retain(|t| !t.is_finished());
        for (_, t) in stop {
            t.abort();
            self.stopping.push(t);
        }
        if !removed.is_empty() {
            info!("visitor removed: [{}]", removed.join(" "));
        }
        let start: Vec<VisitorConfig> = new
            .iter()
            .filter(|v| added.contains(&v.name) || changed.contains(&v.name))
            .cloned()
            .collect();
        self.wanted = new;
        self.start(&start);
        (added, changed, removed)
    }

    fn start(&mut self, visitors: &[VisitorConfig]) {
        let Some(s) = &self.session else {
            return;
        };
        if visitors.is_empty() {
            return;
        }
        let stopped = stopped(std::mem::take(&mut self.stopping));
        for v in visitors {
            let (s2, v2, stopped) = (s.clone(), Arc::new(v.clone()), stopped.clone());
            let task = tokio::spawn(async move {
                stopped.await;
                run(s2, v2).await
            });
            self.running.push((v.clone(), task));
        }
        let names: Vec<&str> = visitors.iter().map(|v| v.name.as_str()).collect();
        info!("[{}] visitor added: [{}]", s.run_id, names.join(" "));
    }

    /// Names of the visitors running now (tests).
    #[cfg(test)]
    fn running_names(&self) -> Vec<String> {
        self.running.iter().map(|(v, _)| v.name.clone()).collect()
    }
}

/// Resolves once every one of `tasks` (already aborted) has been dropped, with its sockets.
fn stopped(tasks: Vec<JoinHandle<()>>) -> Shared<BoxFuture<'static, ()>> {
    async move {
        for t in tasks {
            let _ = t.await;
        }
    }
    .boxed()
    .shared()
}

/// One visitor: its plugin, if any, beside its listener.
async fn run(s: Session, v: Arc<VisitorConfig>) {
    match plugin(&s, &v) {
        Ok(Some(p)) => {
            tokio::join!(p, serve(s, v));
        }
        Ok(None) => serve(s, v).await,
        // frp does not start such a visitor, and tries again every 10 s.
        Err(e) => loop {
            warn!("[{}] [{}] new visitor error: {e}", s.run_id, v.name);
            tokio::time::sleep(RETRY).await;
            info!("[{}] try to start visitor [{}]", s.run_id, v.name);
        },
    }
}

/// The visitor's plugin as a task to run beside it (frp starts it with stcp and xtcp
/// visitors; sudp ones ignore it), or frp's error for its options.
fn plugin(s: &Session, v: &Arc<VisitorConfig>) -> Result<Option<BoxFuture<'static, ()>>, String> {
    let Some(p) = &v.plugin else {
        return Ok(None);
    };
    // virtual_net is the only visitor plugin type.
    let destination = super::vnet::parse_destination(&p.destination_ip)?;
    if !matches!(v.visitor_type, VisitorType::Stcp | VisitorType::Xtcp) {
        return Ok(None);
    }
    let Some(vnet) = s.vnet.clone() else {
        warn!(
            "[{}] virtual_net plugin: virtualNet.address is not set, so it does nothing",
            v.name
        );
        return Ok(None);
    };
    let (name, run_id) = (v.name.clone(), s.run_id.clone());
    let (s, v) = (s.clone(), v.clone());
    let dial = move || {
        let (s, v) = (s.clone(), v.clone());
        async move {
            if v.visitor_type == VisitorType::Xtcp {
                return xtcp_plugin_conn(&s, &v.name).await;
            }
            let (conn, rest) = dial(&s, &v).await.inspect_err(|e| {
                warn!("[{}] dialRawVisitorConn error: {e}", v.name);
            })?;
            let (inbound, outbound) = layers(&v);
            let conn = crate::layered::Layered::new(conn, rest, inbound, outbound);
            Ok(Box::new(conn) as Box<dyn super::vnet::VnetConn>)
        }
        .boxed()
    };
    Ok(Some(
        async move { super::vnet::visitor_loop(vnet, &run_id, name, destination, dial).await }
            .boxed(),
    ))
}

/// A connection for an xtcp visitor's plugin: one end of an in-memory pipe whose other end
/// the visitor takes as if a user had connected to it (frp hands its plugin's connections to
/// the visitor's internal listener), so the tunnel, its fallback and layers apply as for users.
async fn xtcp_plugin_conn(
    s: &Session,
    name: &str,
) -> Result<Box<dyn super::vnet::VnetConn>, String> {
    let (ours, visitor_end) = tokio::io::duplex(PLUGIN_PIPE);
    let mut conn = Conn::Boxed(Box::new(visitor_end));
    // The plugin starts beside the visitor: give its inbox a moment to open.
    for _ in 0..100 {
        match transfer_conn(s, name, conn) {
            Ok(()) => return Ok(Box::new(ours)),
            Err(back) => conn = back,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("visitor [{name}] not found"))
}

/// Buffer of the in-memory pipe between an xtcp visitor and its plugin.
const PLUGIN_PIPE: usize = 64 * 1024;

/// The visitor's listener: bind (retrying every 10 s), then serve.
async fn serve(s: Session, v: Arc<VisitorConfig>) {
    let name = &v.name;
    let addr = join_host_port(&v.bind_addr, v.bind_port);
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(RETRY).await;
            info!("[{}] try to start visitor [{name}]", s.run_id);
        }
        first = false;
        let started = match v.visitor_type {
            // bindPort <= 0: reachable only through other visitors (fallbackTo).
            VisitorType::Stcp | VisitorType::Xtcp if v.bind_port <= 0 => Ok(Bound::None),
            // bindPort < 0: no listener; reachable only through its plugin.
            _ if v.bind_port <= 0 => {
                info!("[{}] [{name}] start visitor success", s.run_id);
                return std::future::pending().await;
            }
            VisitorType::Stcp | VisitorType::Xtcp => {
                crate::listen::bind(&addr).await.map(Bound::Tcp)
            }
            // frp: "listen udp port ADDR error: listen udp ADDR: bind: …".
            VisitorType::Sudp => UdpSocket::bind(&addr).await.map(Bound::Udp).map_err(|e| {
                let text = crate::listen::os_error_text(&e);
                std::io::Error::new(
                    e.kind(),
                    format!("listen udp port {addr} error: listen udp {addr}: bind: {text}"),
                )
            }),
        };
        match started {
            Err(e) => warn!("[{}] [{name}] start error: {e}", s.run_id),
            Ok(bound @ (Bound::Tcp(_) | Bound::None)) => {
                let l = match bound {
                    Bound::Tcp(l) => Some(l),
                    _ => None,
                };
                let (tx, rx) = mpsc::channel(INBOX);
                s.inboxes.lock().unwrap().insert(name.clone(), tx);
                info!("[{}] [{name}] start visitor success", s.run_id);
                if v.visitor_type == VisitorType::Xtcp {
                    return super::xtcp::visitor::serve(s, v, l, rx).await;
                }
                return serve_stcp(s, v, l, rx).await;
            }
            Ok(Bound::Udp(u)) => {
                info!(
                    "[{}] [{name}] sudp start to work, listen on {addr}",
                    s.run_id
                );
                info!("[{}] [{name}] start visitor success", s.run_id);
                return serve_sudp(s, v, u).await;
            }
        }
    }
}

enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
    /// No listener of its own (bindPort <= 0).
    None,
}

fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Opens a visitor connection to frps and completes the NewVisitorConn exchange. Returns the
/// connection and the wire bytes read past the response.
async fn dial(s: &Session, v: &VisitorConfig) -> Result<(Conn, Vec<u8>), String> {
    let conn = s
        .connector
        .open()
        .await
        .map_err(|e| format!("connect to server error: {e}"))?;
    let mut mc = MsgConn::client(conn, s.wire);
    let now = chrono::Utc::now().timestamp();
    let m = NewVisitorConn {
        run_id: s.run_id.clone(),
        proxy_name: target_proxy_name(&s.user, &v.server_user, &v.server_name),
        sign_key: auth::sign_key(&v.secret_key, now),
        timestamp: now,
        use_encryption: v.transport.use_encryption,
        use_compression: v.transport.use_compression,
    };
    mc.write_msg(&m.into())
        .await
        .map_err(|e| format!("send newVisitorConnMsg to server error: {e}"))?;
    match mc.read_msg_timeout(RESP_TIMEOUT).await {
        Ok(Message::NewVisitorConnResp(r)) if r.error.is_empty() => Ok(mc.into_parts()),
        Ok(Message::NewVisitorConnResp(r)) => {
            Err(format!("start new visitor connection error: {}", r.error))
        }
        Ok(other) => Err(format!(
            "read newVisitorConnRespMsg error: unexpected message {}",
            other.name()
        )),
        Err(e) => Err(format!("read newVisitorConnRespMsg error: {e}")),
    }
}

/// The sk-keyed layers of a visitor connection.
pub(crate) fn layers(v: &VisitorConfig) -> (crypto::TransformChain, crypto::TransformChain) {
    let key = CryptoKey::derive(v.secret_key.as_bytes());
    crypto::work_conn_layers(
        Some(&key),
        v.transport.use_encryption,
        v.transport.use_compression,
    )
}

async fn serve_stcp(
    s: Session,
    v: Arc<VisitorConfig>,
    l: Option<TcpListener>,
    mut internal: mpsc::Receiver<Conn>,
) {
    let mut acceptor = crate::listen::Acceptor::new(format!("[{}] ", v.name));
    loop {
        let (user, from) = match &l {
            Some(l) => tokio::select! {
                (c, from) = acceptor.accept(l) => {
                    transport::tune_tcp(&c, 0);
                    (Conn::Tcp(c), from.to_string())
                }
                c = internal.recv() => match c {
                    Some(c) => (c, "another visitor".to_string()),
                    None => return,
                },
            },
            None => match internal.recv().await {
                Some(c) => (c, "another visitor".to_string()),
                None => return,
            },
        };
        let (s, v) = (s.clone(), v.clone());
        tokio::spawn(async move {
            debug!("[{}] get a new stcp user connection from {from}", v.name);
            let (conn, rest) = match dial(&s, &v).await {
                Ok(c) => c,
                Err(e) => {
                    warn!("[{}] dialRawVisitorConn error: {e}", v.name);
                    return;
                }
            };
            let (inbound, outbound) = layers(&v);
            s.engine.spawn(Pair {
                a: Side::plain(user.into_endpoint()),
                b: Side {
                    endpoint: conn.into_endpoint(),
                    prefix: rest.into(),
                    inbound,
                    outbound,
                    initial_write: Default::default(),
                },
                counters: None,
                limiter: None,
            });
        });
    }
}

async fn serve_sudp(s: Session, v: Arc<VisitorConfig>, sock: UdpSocket) {
    let (tx, mut rx) = mpsc::channel::<UdpPacket>(QUEUE);
    // User datagrams → queue. It runs in the visitor's own task (not a spawned one), so the
    // socket is closed as soon as the visitor task is dropped: a restarted visitor can bind
    // the same port at once.
    let read_users = async {
        let mut buf = vec![0u8; s.udp_packet_size.max(1)];
        loop {
            match sock.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    let pkt = UdpPacket::for_remote(&buf[..n], from);
                    if tx.try_send(pkt).is_err() {
                        trace!("[{}] sudp queue full; datagram dropped", v.name);
                    }
                }
                Err(e) => debug!("[{}] sudp recv: {e}", v.name),
            }
        }
    };
    // One visitor connection at a time, opened by the first datagram waiting for it.
    let work = async {
        while let Some(first) = rx.recv().await {
            let (conn, rest) = match dial(&s, &v).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(
                        "[{}] newVisitorConn to frps error: {e}, try to reconnect",
                        v.name
                    );
                    continue;
                }
            };
            match sudp_worker(&s, &v, &sock, conn, rest, first, &mut rx).await {
                Ok(()) => {}
                Err(e) => warn!("[{}] sudp worker: {e}", v.name),
            }
            info!("[{}] sudp worker is closed", v.name);
        }
    };
    tokio::select! {
        _ = read_users => {}
        _ = work => {}
    }
}

/// Moves datagrams over one visitor connection until it fails.
async fn sudp_worker(
    s: &Session,
    v: &VisitorConfig,
    sock: &UdpSocket,
    conn: Conn,
    rest: Vec<u8>,
    first: UdpPacket,
    rx: &mut mpsc::Receiver<UdpPacket>,
) -> Result<(), MsgError> {
    let (inbound, outbound) = layers(v);
    let (r, w) = tokio::io::split(conn);
    let mut reader = MsgReader::with_layers(r, s.wire, inbound, &rest)?;
    let mut writer = MsgWriter::with_layers(w, s.wire, outbound);
    writer.write_msg(&first.into()).await?;
    let from_frps = async {
        loop {
            let m = match tokio::time::timeout(SUDP_READ_TIMEOUT, reader.read_msg()).await {
                Ok(m) => m?,
                Err(_) => return Err(MsgError::Io(std::io::ErrorKind::TimedOut.into())),
            };
            match m {
                Message::UdpPacket(p) => {
                    if let Some(to) = p.remote_addr.as_ref().and_then(|a| a.to_socket_addr()) {
                        let _ = sock.send_to(&p.content, to).await;
                    }
                }
                Message::Ping(_) => trace!("[{}] sudp visitor got a ping", v.name),
                other => debug!("[{}] sudp visitor: ignoring {}", v.name, other.name()),
            }
        }
    };
    let to_frps = async {
        while let Some(p) = rx.recv().await {
            writer.write_msg(&p.into()).await?;
        }
        Ok::<(), MsgError>(())
    };
    tokio::select! {
        r = from_frps => r,
        r = to_frps => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visitors(toml: &str) -> Vec<VisitorConfig> {
        let text = format!("serverAddr = \"127.0.0.1\"\nserverPort = 1\n{toml}");
        crate::config::client_config_from_str(&text, crate::config::ConfigFormat::Toml, true)
            .unwrap()
            .visitors
    }

    fn stcp(name: &str, port: u16) -> String {
        format!(
            "[[visitors]]\nname = \"{name}\"\ntype = \"stcp\"\nserverName = \"s\"\nsecretKey = \"k\"\nbindPort = {port}\n"
        )
    }

    #[test]
    fn reload_diffs_visitors_by_name_and_config() {
        let before = visitors(&format!(
            "{}{}{}",
            stcp("keep", 1),
            stcp("change", 2),
            stcp("gone", 3)
        ));
        let mut m = Manager::new(before.iter());
        let after = visitors(&format!(
            "{}{}{}",
            stcp("keep", 1),
            stcp("change", 5),
            stcp("new", 4)
        ));
        let (added, changed, removed) = m.reload(after.iter());
        assert_eq!(added, ["new"]);
        assert_eq!(changed, ["change"]);
        assert_eq!(removed, ["gone"]);
        // No session: nothing runs until one starts.
        assert!(m.running_names().is_empty());
        assert_eq!(m.wanted, after);
    }

    #[test]
    fn target_names_follow_frp() {
        assert_eq!(target_proxy_name("", "", "db"), "db");
        assert_eq!(target_proxy_name("alice", "", "db"), "alice.db");
        assert_eq!(target_proxy_name("alice", "bob", "db"), "bob.db");
        assert_eq!(target_proxy_name("", "bob", "db"), "bob.db");
    }
}
