//! udp proxies, frpc side (spec §9): the one work connection frps keeps per udp proxy carries
//! `UDPPacket{c, r}` messages, framed in `transport.wireProtocol` (v2 frames for a v2 client,
//! as frp >= 0.69.1 does) inside the proxy's CFB/snappy layers.
//!
//! For each user address `r` frpc keeps a *mapping*: a UDP socket connected to the local
//! service, created by the first datagram from `r` (which carries the PROXY protocol header
//! when one is configured) and closed after 30 s without traffic in either direction. What the
//! service answers on a mapping goes back as `UDPPacket{c, r}`. The writer sends `Ping{}`
//! every 30 s so that frps' 60 s read deadline does not fire on a quiet proxy. The reply queue
//! holds 1024 messages and drops when full, like frp's channels.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::RateLimiter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, trace, warn};

use crate::crypto::TransformChain;
use crate::msg::{Message, Ping, UdpPacket};
use crate::msgconn::{MsgReader, MsgWriter};
use crate::proxy_protocol;
use crate::transport::Conn;
use crate::wire_v2::WireVersion;

/// Depth of the reply queue (frp: 1024).
const QUEUE: usize = 1024;
/// A mapping without traffic for this long is closed.
const MAPPING_IDLE: Duration = Duration::from_secs(30);
/// Ping interval on the work connection.
const PING_INTERVAL: Duration = Duration::from_secs(30);

/// What the udp runtime needs to know about its proxy.
pub(crate) struct UdpProxy {
    pub name: String,
    /// The local service.
    pub local: SocketAddr,
    /// `transport.proxyProtocolVersion` ("" = none).
    pub proxy_protocol: String,
    /// Read buffer for replies (frpc `udpPacketSize`).
    pub packet_size: usize,
    /// The framing of the work connection (`transport.wireProtocol`).
    pub wire: WireVersion,
    /// `bandwidthLimitMode = "client"`: charged per message, both directions.
    pub limiter: Option<Arc<RateLimiter>>,
}

/// One user address's socket to the local service.
struct Mapping {
    sock: UdpSocket,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: AtomicU64,
    epoch: Instant,
}

impl Mapping {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_deadline(&self) -> tokio::time::Instant {
        let last = self.epoch + Duration::from_millis(self.last.load(Ordering::Relaxed));
        tokio::time::Instant::from_std(last + MAPPING_IDLE)
    }
}

type Mappings = Arc<Mutex<HashMap<SocketAddr, Arc<Mapping>>>>;

/// Serves one work connection until it fails or the task is aborted (a newer work connection
/// for the same proxy replaces it). `rest` holds wire bytes read past StartWorkConn.
pub(crate) async fn serve(
    proxy: UdpProxy,
    work: Conn,
    rest: Vec<u8>,
    inbound: TransformChain,
    outbound: TransformChain,
) {
    let name = proxy.name.clone();
    info!("[{name}] incoming a new work connection for udp proxy");
    let (r, w) = tokio::io::split(work);
    let reader = match MsgReader::with_layers(r, proxy.wire, inbound, &rest) {
        Ok(r) => r,
        Err(e) => {
            warn!("[{name}] udp work connection: {e}");
            return;
        }
    };
    let writer = MsgWriter::with_layers(w, proxy.wire, outbound);
    let (send_tx, send_rx) = mpsc::channel::<UdpPacket>(QUEUE);
    let proxy = Arc::new(proxy);
    tokio::select! {
        reason = from_work(reader, proxy.clone(), send_tx) => {
            warn!("[{name}] read from workConn for udp error: {reason}");
        }
        reason = to_work(writer, send_rx, proxy.limiter.clone()) => {
            warn!("[{name}] udp work write error: {reason}");
        }
    }
    // Dropping the futures aborted every mapping task and closed their sockets.
}

/// Work connection → local service, creating mappings as user addresses appear.
async fn from_work<R: AsyncRead + Unpin>(
    mut reader: MsgReader<R>,
    proxy: Arc<UdpProxy>,
    replies: mpsc::Sender<UdpPacket>,
) -> String {
    let mappings: Mappings = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = JoinSet::new();
    let epoch = Instant::now();
    let mut charged = reader.wire_bytes();
    loop {
        // Reap finished mapping tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let msg = match reader.read_msg().await {
            Ok(m) => m,
            Err(e) => return e.to_string(),
        };
        let pkt = match msg {
            Message::UdpPacket(p) => p,
            other => {
                debug!(
                    "[{}] ignoring {} on the udp work connection",
                    proxy.name,
                    other.name()
                );
                continue;
            }
        };
        if let Some(l) = &proxy.limiter {
            // Charged as frp does: the bytes read from the work connection.
            let read = reader.wire_bytes();
            let wait = l.reserve((read - charged) as usize);
            charged = read;
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let Some(user) = pkt.remote_addr.as_ref().and_then(|a| a.to_socket_addr()) else {
            debug!("[{}] UDPPacket without a usable address", proxy.name);
            continue;
        };
        trace!(
            "[{}] get udp package from workConn, len: {}",
            proxy.name,
            pkt.content.len()
        );
        let existing = mappings.lock().unwrap().get(&user).cloned();
        let (mapping, new) = match existing {
            Some(m) => (m, false),
            None => match open_mapping(&proxy, epoch).await {
                Ok(m) => {
                    mappings.lock().unwrap().insert(user, m.clone());
                    (m, true)
                }
                Err(e) => {
                    warn!(
                        "[{}] connect to local udp service [{}]: {e}",
                        proxy.name, proxy.local
                    );
                    continue;
                }
            },
        };
        let mut datagram = pkt.content;
        if new && !proxy.proxy_protocol.is_empty() {
            match proxy_protocol::header(
                &proxy.proxy_protocol,
                user,
                proxy.local,
                proxy_protocol::Transport::Datagram,
            ) {
                Ok(mut h) => {
                    h.extend_from_slice(&datagram);
                    datagram = h;
                }
                Err(e) => warn!("[{}] {e}", proxy.name),
            }
        }
        mapping.touch();
        // (`try_send` would fail on a socket whose writability tokio has not seen yet.)
        if let Err(e) = mapping.sock.send(&datagram).await {
            trace!("[{}] udp write to local service: {e}", proxy.name);
        }
        if new {
            tasks.spawn(replies_of(
                user,
                mapping,
                mappings.clone(),
                replies.clone(),
                proxy.clone(),
            ));
        }
    }
}

async fn open_mapping(proxy: &UdpProxy, epoch: Instant) -> std::io::Result<Arc<Mapping>> {
    let bind: SocketAddr = if proxy.local.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(proxy.local).await?;
    let m = Mapping {
        sock,
        last: AtomicU64::new(0),
        epoch,
    };
    m.touch();
    Ok(Arc::new(m))
}

/// Local service → reply queue for one mapping, until it idles out or the socket fails (e.g.
/// ICMP port unreachable); then the mapping is forgotten and the next datagram opens a new one.
async fn replies_of(
    user: SocketAddr,
    mapping: Arc<Mapping>,
    mappings: Mappings,
    replies: mpsc::Sender<UdpPacket>,
    proxy: Arc<UdpProxy>,
) {
    let mut buf = vec![0u8; proxy.packet_size];
    loop {
        let deadline = mapping.idle_deadline();
        match tokio::time::timeout_at(deadline, mapping.sock.recv(&mut buf)).await {
            Err(_) => {
                if mapping.idle_deadline() <= tokio::time::Instant::now() {
                    trace!("[{}] udp mapping for {user} idle; closed", proxy.name);
                    break;
                }
            }
            Ok(Err(e)) => {
                debug!("[{}] udp mapping for {user}: {e}", proxy.name);
                break;
            }
            Ok(Ok(n)) => {
                mapping.touch();
                if n > proxy.wire.max_udp_datagram() {
                    debug!(
                        "[{}] udp reply of {n} bytes for {user} does not fit a UDPPacket message (max {} bytes); dropped",
                        proxy.name,
                        proxy.wire.max_udp_datagram()
                    );
                    continue;
                }
                let pkt = UdpPacket::for_remote(&buf[..n], user);
                if replies.try_send(pkt).is_err() {
                    trace!("[{}] udp reply queue full; dropped", proxy.name);
                }
            }
        }
    }
    let mut map = mappings.lock().unwrap();
    if map.get(&user).is_some_and(|m| Arc::ptr_eq(m, &mapping)) {
        map.remove(&user);
    }
}

/// Reply queue and pings → work connection.
async fn to_work<W: AsyncWrite + Unpin>(
    mut writer: MsgWriter<W>,
    mut rx: mpsc::Receiver<UdpPacket>,
    limiter: Option<Arc<RateLimiter>>,
) -> String {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        let msg = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => Message::UdpPacket(p),
                None => return "proxy closed".into(),
            },
            _ = ping.tick() => Message::Ping(Ping::default()),
        };
        match writer.write_msg(&msg).await {
            Ok(n) => {
                if let Some(l) = &limiter {
                    let wait = l.reserve(n);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            Err(e) => return e.to_string(),
        }
    }
}
