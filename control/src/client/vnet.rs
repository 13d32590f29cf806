//! frpc's virtual network (`virtualNet.address`, feature gate `VirtualNet`; frp's
//! `pkg/vnet`): a TUN device holding the address, and IP packets carried between frpcs over
//! ordinary proxy/visitor connections.
//!
//! - **Framing** ([`read_message`], [`write_message`]): each packet is a 4-byte little-endian
//!   length, then that many bytes (1 ..= 1 MiB).
//! - **Visitor side** (the `virtual_net` visitor plugin, [`visitor_loop`]): the visitor keeps
//!   one connection to the proxy open and routes its `destinationIP` (a host route) to it
//!   (frp's client router, by destination).
//! - **Proxy side** (the `virtual_net` client plugin, [`Controller::serve_server_conn`]): each
//!   work connection is remembered for the source addresses of the packets that came in
//!   through it, and packets to those addresses go back out through it (frp's server router,
//!   by source).
//!
//! The [`Controller`] reads every packet the kernel routes to the TUN device and writes it to
//! the connection found by those two tables, the visitor routes first; packets with no route
//! are dropped. Packets that arrive on a connection are written to the TUN device.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, trace, warn};

/// Largest message frp accepts on a vnet connection.
pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// MTU of the TUN device (frp's `defaultMTU`).
const TUN_MTU: u16 = 1420;
/// frp's TUN device names: `utun0`, `utun1`, …
const BASE_TUN_NAME: &str = "utun";
/// Packets queued for one connection; more are dropped, as a full NIC queue drops them.
const CONN_QUEUE: usize = 512;

/// Why a vnet message could not be read or written (frp's texts).
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("read message length error: {0}")]
    ReadLength(std::io::Error),
    #[error("message length is 0")]
    Empty,
    #[error("message data length is 0")]
    EmptyData,
    #[error("message too large: {0} > {MAX_MESSAGE_SIZE}")]
    TooLarge(usize),
    #[error("read message data error: {0}")]
    ReadData(std::io::Error),
    #[error("write message error: {0}")]
    Write(std::io::Error),
}

/// Reads one framed message (frp's `ReadMessage`).
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, MessageError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .map_err(MessageError::ReadLength)?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 {
        return Err(MessageError::Empty);
    }
    if len > MAX_MESSAGE_SIZE {
        return Err(MessageError::TooLarge(len));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)
        .await
        .map_err(MessageError::ReadData)?;
    Ok(data)
}

/// Frames `data` (frp's `WriteMessage` layout) into `out`.
pub fn encode_message(data: &[u8], out: &mut Vec<u8>) -> Result<(), MessageError> {
    if data.is_empty() {
        return Err(MessageError::EmptyData);
    }
    if data.len() > MAX_MESSAGE_SIZE {
        return Err(MessageError::TooLarge(data.len()));
    }
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    Ok(())
}

/// Writes one framed message (frp's `WriteMessage`), without flushing.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
) -> Result<(), MessageError> {
    let mut buf = Vec::with_capacity(4 + data.len());
    encode_message(data, &mut buf)?;
    w.write_all(&buf).await.map_err(MessageError::Write)
}

/// The source and destination of an IPv4 or IPv6 packet; `None` for anything else (or a
/// header too short, as Go's `ipv4.ParseHeader`/`ipv6.ParseHeader` refuse it).
pub fn packet_addrs(p: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() < 20 || ihl < 20 || p.len() < ihl {
                return None;
            }
            let src: [u8; 4] = p[12..16].try_into().ok()?;
            let dst: [u8; 4] = p[16..20].try_into().ok()?;
            Some((src.into(), dst.into()))
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            Some((src.into(), dst.into()))
        }
        _ => None,
    }
}

/// An IP network (`addr/prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// A host route: /32 or /128.
    pub fn host(addr: IpAddr) -> IpNet {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        IpNet { addr, prefix }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Go's `net.ParseCIDR`: `ADDR/PREFIX`, the address itself kept (not masked), or
/// `invalid CIDR address: TEXT`.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let bad = || format!("invalid CIDR address: {text}");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok(IpNet { addr, prefix })
}

/// frp's `findNextTunName`: `utun` plus one more than the highest number in use.
fn next_tun_name() -> String {
    let max = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix(BASE_TUN_NAME)?
                        .parse::<i64>()
                        .ok()
                })
                .max()
                .unwrap_or(-1)
        })
        .unwrap_or(-1);
    format!("{BASE_TUN_NAME}{}", max + 1)
}

type ConnId = u64;

/// Where packets for a connection go: its writer's queue.
#[derive(Clone)]
struct ConnTx {
    id: ConnId,
    tx: mpsc::Sender<Bytes>,
}

#[derive(Default)]
struct Routes {
    /// Visitor plugins: name → (destinations, connection).
    client: HashMap<String, (Vec<IpNet>, ConnTx)>,
    /// Proxy side: source address seen on a connection → that connection.
    server: HashMap<IpAddr, ConnTx>,
}

/// How a connection takes part in routing.
pub enum ConnRole {
    /// A visitor's connection: packets to `routes` go through it.
    Client { name: String, routes: Vec<IpNet> },
    /// A proxy's work connection: replies to the sources seen on it go through it.
    Server,
}

/// frp's vnet `Controller`: the TUN device and the two routing tables. Made when the config
/// has `virtualNet.address`; [`Controller::init`] opens the device when frpc starts.
pub struct Controller {
    address: String,
    tun: OnceLock<Arc<tun_rs::AsyncDevice>>,
    routes: Mutex<Routes>,
    next_id: AtomicU64,
}

impl Controller {
    pub fn new(address: &str) -> Arc<Controller> {
        Arc::new(Controller {
            address: address.to_string(),
            tun: OnceLock::new(),
            routes: Mutex::new(Routes::default()),
            next_id: AtomicU64::new(1),
        })
    }

    /// Opens the TUN device (frp's `Init`): named `utunN`, MTU 1420, holding
    /// `virtualNet.address` with the route to its network, up. Errors are frp's
    /// (`invalid CIDR address: …`, `failed to create TUN device '…': …`), the latter saying
    /// what the device needs.
    pub fn init(&self) -> Result<String, String> {
        let net = parse_cidr(&self.address)?;
        let name = next_tun_name();
        let builder = tun_rs::DeviceBuilder::new().name(&name).mtu(TUN_MTU);
        let builder = match net.addr {
            IpAddr::V4(a) => builder.ipv4(a, net.prefix, None),
            IpAddr::V6(a) => builder.ipv6(a, net.prefix),
        };
        let dev = builder.build_async().map_err(|e| {
            format!(
                "failed to create TUN device '{name}': {e} (virtualNet needs /dev/net/tun and CAP_NET_ADMIN)"
            )
        })?;
        let actual = dev.name().unwrap_or(name);
        let _ = self.tun.set(Arc::new(dev));
        Ok(actual)
    }

    /// Reads packets from the TUN device and routes them, until the device fails (frp's
    /// `Run`). Does nothing before [`Controller::init`].
    pub async fn run(self: Arc<Self>) {
        let Some(tun) = self.tun.get().cloned() else {
            return;
        };
        let mut buf = vec![0u8; 65536];
        loop {
            match tun.recv(&mut buf).await {
                Ok(0) => continue,
                Ok(n) => self.route(&buf[..n]),
                Err(e) => {
                    warn!("vnet read from tun error: {e}");
                    return;
                }
            }
        }
    }

    /// Sends a packet read from the TUN device to its connection.
    fn route(&self, p: &[u8]) {
        let Some((src, dst)) = packet_addrs(p) else {
            trace!("unknown packet, discarded({})", p.len());
            return;
        };
        let target = {
            let routes = self.routes.lock().unwrap();
            routes
                .client
                .values()
                .find(|(nets, _)| nets.iter().any(|n| n.contains(dst)))
                .map(|(_, c)| c.clone())
                .or_else(|| routes.server.get(&dst).cloned())
        };
        match target {
            Some(c) => {
                if c.tx.try_send(Bytes::copy_from_slice(p)).is_err() {
                    trace!("vnet: queue of connection full, packet to {dst} dropped");
                }
            }
            None => trace!("no route found for packet from {src} to {dst}"),
        }
    }

    /// Carries packets between `conn` and the TUN device until `conn` ends; `role` says how
    /// it is routed. Its routes are removed when it ends.
    pub async fn serve_conn<S>(&self, conn: S, role: ConnRole)
    where
        S: AsyncRead + AsyncWrite + Send,
    {
        let Some(tun) = self.tun.get().cloned() else {
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Bytes>(CONN_QUEUE);
        let me = ConnTx { id, tx };
        let server = matches!(role, ConnRole::Server);
        if let ConnRole::Client { name, routes } = role {
            self.routes
                .lock()
                .unwrap()
                .client
                .insert(name, (routes, me.clone()));
        }
        let (mut r, mut w) = tokio::io::split(conn);
        let writer = async {
            let mut buf = Vec::new();
            while let Some(p) = rx.recv().await {
                buf.clear();
                encode_message(&p, &mut buf)?;
                // Whatever else is queued goes out in the same write.
                while buf.len() < 64 * 1024
                    && let Ok(p) = rx.try_recv()
                {
                    encode_message(&p, &mut buf)?;
                }
                w.write_all(&buf).await.map_err(MessageError::Write)?;
                w.flush().await.map_err(MessageError::Write)?;
            }
            Ok::<(), MessageError>(())
        };
        let reader = async {
            loop {
                let data = match read_message(&mut r).await {
                    Ok(d) => d,
                    Err(e) => return e,
                };
                match packet_addrs(&data) {
                    Some((src, _)) if server => {
                        let mut routes = self.routes.lock().unwrap();
                        if routes.server.get(&src).is_none_or(|c| c.id != id) {
                            routes.server.insert(src, me.clone());
                        }
                    }
                    Some(_) => {}
                    None if server => {}
                    None => {
                        trace!("unknown packet, discarded({})", data.len());
                        continue;
                    }
                }
                if let Err(e) = tun.send(&data).await {
                    let side = if server { "server" } else { "client" };
                    warn!("{side} write tun error: {e}");
                }
            }
        };
        let side = if server { "server" } else { "client" };
        tokio::select! {
            e = reader => warn!("{side} read error: {e}"),
            r = writer => if let Err(e) = r {
                warn!("write to {side} target conn error: {e}");
            },
        }
        let mut routes = self.routes.lock().unwrap();
        routes.client.retain(|_, (_, c)| c.id != id);
        routes.server.retain(|_, c| c.id != id);
    }

    /// Removes visitor `name`'s routes (frp's `UnregisterClientRoute`).
    pub fn unregister_client_route(&self, name: &str) {
        self.routes.lock().unwrap().client.remove(name);
    }

    /// The visitor routes and the proxy-side source addresses now known (tests, logs).
    pub fn route_counts(&self) -> (usize, usize) {
        let r = self.routes.lock().unwrap();
        (r.client.len(), r.server.len())
    }
}

/// A connection the visitor plugin routes packets over.
pub trait VnetConn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> VnetConn for T {}

/// Go's `%v` of a whole number of seconds (`10s`, `1m0s`, `5m0s`).
fn go_secs(s: u64) -> String {
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The `virtual_net` visitor plugin (frp's `pkg/plugin/visitor/virtual_net.go`): keeps one
/// connection to the proxy open through `dial` (the visitor's own way of reaching it) and
/// routes `destination` over it. After a connection ends it waits 10 s, after a failed dial
/// 60 s doubling up to 5 min, then dials again. Runs until dropped. `run_id`: the session's,
/// for the log lines' prefix (`[run id] [visitor] …`, as frp's).
pub async fn visitor_loop<D>(
    vnet: Arc<Controller>,
    run_id: &str,
    name: String,
    destination: IpAddr,
    dial: D,
) where
    D: Fn() -> BoxFuture<'static, Result<Box<dyn VnetConn>, String>>,
{
    let routes = vec![IpNet::host(destination)];
    let px = format!("[{run_id}] [{name}]");
    info!(
        "{px} starting VirtualNetPlugin for visitor [{name}], attempting to register routes for {}",
        routes[0]
    );
    // Unregisters the route however the loop ends (the visitor stopped: its task dropped).
    struct Unregister(Arc<Controller>, String);
    impl Drop for Unregister {
        fn drop(&mut self) {
            self.0.unregister_client_route(&self.1);
        }
    }
    let _unregister = Unregister(vnet.clone(), name.clone());
    let mut consecutive_errors: u32 = 0;
    loop {
        info!("{px} attempting to register client route for visitor [{name}]");
        let delay = match dial().await {
            Ok(conn) => {
                info!(
                    "{px} successfully registered client route for visitor [{name}]. Starting connection handler with CloseNotifyConn."
                );
                vnet.serve_conn(
                    conn,
                    ConnRole::Client {
                        name: name.clone(),
                        routes: routes.clone(),
                    },
                )
                .await;
                if consecutive_errors > 0 {
                    info!(
                        "{px} connection closed normally for visitor [{name}], resetting error counter (was {consecutive_errors})"
                    );
                    consecutive_errors = 0;
                } else {
                    info!("{px} connection closed normally for visitor [{name}]");
                }
                10
            }
            Err(e) => {
                consecutive_errors += 1;
                warn!(
                    "{px} connection closed with error for visitor [{name}] (consecutive errors: {consecutive_errors}): {e}"
                );
                (60u64 << (consecutive_errors - 1).min(3)).min(300)
            }
        };
        info!(
            "{px} waiting {} before attempting reconnection for visitor [{name}]...",
            go_secs(delay)
        );
        tokio::time::sleep(Duration::from_secs(delay)).await;
        info!("{px} re-establishing virtual connection for visitor [{name}]...");
    }
}

/// Parses a visitor plugin's `destinationIP` (frp's errors).
pub fn parse_destination(ip: &str) -> Result<IpAddr, String> {
    if ip.is_empty() {
        return Err("destinationIP is required".into());
    }
    ip.parse()
        .map_err(|_| format!("invalid destination IP address [{ip}]"))
}

/// Logs that a connection of a proxy with the `virtual_net` plugin was dropped because
/// frpc has no virtual network.
pub(crate) fn no_controller(proxy: &str) {
    debug!("[{proxy}] virtual_net: no virtualNet.address configured; connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(data: &[u8]) -> Vec<u8> {
        let (mut a, mut b) = tokio::io::duplex(4 * MAX_MESSAGE_SIZE);
        write_message(&mut a, data).await.unwrap();
        read_message(&mut b).await.unwrap()
    }

    #[tokio::test]
    async fn framing_is_a_little_endian_length_then_the_bytes() {
        let mut out = Vec::new();
        encode_message(&[0xaa, 0xbb, 0xcc], &mut out).unwrap();
        assert_eq!(out, [3, 0, 0, 0, 0xaa, 0xbb, 0xcc]);
        let mut out = Vec::new();
        encode_message(&vec![7u8; 0x0102], &mut out).unwrap();
        assert_eq!(&out[..4], [0x02, 0x01, 0, 0]);
        assert_eq!(roundtrip(b"x").await, b"x");
        let big = vec![9u8; MAX_MESSAGE_SIZE];
        assert_eq!(roundtrip(&big).await, big);
    }

    #[tokio::test]
    async fn empty_and_oversized_messages_are_refused_both_ways() {
        let mut out = Vec::new();
        assert_eq!(
            encode_message(&[], &mut out).unwrap_err().to_string(),
            "message data length is 0"
        );
        assert_eq!(
            encode_message(&vec![0u8; MAX_MESSAGE_SIZE + 1], &mut out)
                .unwrap_err()
                .to_string(),
            "message too large: 1048577 > 1048576"
        );
        assert!(out.is_empty());
        let mut zero: &[u8] = &[0, 0, 0, 0, 1];
        assert_eq!(
            read_message(&mut zero).await.unwrap_err().to_string(),
            "message length is 0"
        );
        // A huge length is refused before anything is allocated or read.
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            read_message(&mut huge).await.unwrap_err().to_string(),
            "message too large: 4294967295 > 1048576"
        );
        let mut over: &[u8] = &[0x01, 0x00, 0x10, 0x00];
        assert!(matches!(
            read_message(&mut over).await,
            Err(MessageError::TooLarge(0x100001))
        ));
    }

    #[tokio::test]
    async fn truncated_messages_are_errors_not_hangs() {
        let mut short_len: &[u8] = &[5, 0];
        let e = read_message(&mut short_len).await.unwrap_err().to_string();
        assert!(e.starts_with("read message length error: "), "{e}");
        let mut short_data: &[u8] = &[5, 0, 0, 0, 1, 2];
        let e = read_message(&mut short_data).await.unwrap_err().to_string();
        assert!(e.starts_with("read message data error: "), "{e}");
        // Two messages back to back come out one by one.
        let mut two: &[u8] = &[1, 0, 0, 0, 7, 2, 0, 0, 0, 8, 9];
        assert_eq!(read_message(&mut two).await.unwrap(), [7]);
        assert_eq!(read_message(&mut two).await.unwrap(), [8, 9]);
        assert!(read_message(&mut two).await.is_err());
    }

    #[test]
    fn packet_addresses_come_from_the_ip_header() {
        let mut v4 = vec![0u8; 28];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[100, 86, 0, 2]);
        v4[16..20].copy_from_slice(&[100, 86, 0, 1]);
        assert_eq!(
            packet_addrs(&v4),
            Some(([100, 86, 0, 2].into(), [100, 86, 0, 1].into()))
        );
        // IHL below 5 words, or beyond the packet: refused like Go's ParseHeader.
        v4[0] = 0x44;
        assert_eq!(packet_addrs(&v4), None);
        v4[0] = 0x4f;
        assert_eq!(packet_addrs(&v4), None);
        assert_eq!(packet_addrs(&v4[..19]), None);
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        v6[23] = 2;
        v6[39] = 1;
        let (s, d) = packet_addrs(&v6).unwrap();
        assert_eq!(s, "::2".parse::<IpAddr>().unwrap());
        assert_eq!(d, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(packet_addrs(&v6[..39]), None);
        assert_eq!(packet_addrs(&[]), None);
        assert_eq!(packet_addrs(&[0x10; 40]), None);
    }

    #[test]
    fn cidrs_parse_like_go_and_contain_their_hosts() {
        let n = parse_cidr("100.86.0.1/24").unwrap();
        assert_eq!(n.addr, "100.86.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(n.prefix, 24);
        assert!(n.contains("100.86.0.200".parse().unwrap()));
        assert!(!n.contains("100.86.1.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let h = IpNet::host("100.86.0.1".parse().unwrap());
        assert!(h.contains("100.86.0.1".parse().unwrap()));
        assert!(!h.contains("100.86.0.2".parse().unwrap()));
        assert_eq!(h.to_string(), "100.86.0.1/32");
        let all = parse_cidr("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6 = parse_cidr("fd00::1/64").unwrap();
        assert!(v6.contains("fd00::ffff".parse().unwrap()));
        assert!(!v6.contains("fd01::1".parse().unwrap()));
        for bad in [
            "100.86.0.1",
            "100.86.0.1/33",
            "100.86.0.300/24",
            "x/24",
            "100.86.0.1/",
            "100.86.0.1/+8",
            "fd00::1/129",
        ] {
            assert_eq!(
                parse_cidr(bad).unwrap_err(),
                format!("invalid CIDR address: {bad}")
            );
        }
    }

    #[test]
    fn destinations_and_backoff_follow_frp() {
        assert_eq!(
            parse_destination("").unwrap_err(),
            "destinationIP is required"
        );
        assert_eq!(
            parse_destination("100.86.0.300").unwrap_err(),
            "invalid destination IP address [100.86.0.300]"
        );
        assert_eq!(
            parse_destination("100.86.0.1").unwrap(),
            "100.86.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(go_secs(10), "10s");
        assert_eq!(go_secs(60), "1m0s");
        assert_eq!(go_secs(300), "5m0s");
        let delays: Vec<u64> = (1u32..=6)
            .map(|n| (60u64 << (n - 1).min(3)).min(300))
            .collect();
        assert_eq!(delays, [60, 120, 240, 300, 300, 300]);
    }

    /// Packets from a proxy-side connection teach the controller where their sources are;
    /// packets read from the device go to the visitor whose route holds their destination,
    /// else to the connection their destination was seen on; routes go with their connection.
    #[test]
    fn routing_tables_follow_frp() {
        let c = Controller::new("100.86.0.1/24");
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        {
            let mut r = c.routes.lock().unwrap();
            r.client.insert(
                "v".into(),
                (
                    vec![IpNet::host("100.86.0.9".parse().unwrap())],
                    ConnTx { id: 1, tx: tx1 },
                ),
            );
            r.server
                .insert("100.86.0.2".parse().unwrap(), ConnTx { id: 2, tx: tx2 });
        }
        let packet = |dst: [u8; 4]| {
            let mut p = vec![0u8; 20];
            p[0] = 0x45;
            p[12..16].copy_from_slice(&[100, 86, 0, 1]);
            p[16..20].copy_from_slice(&dst);
            p
        };
        c.route(&packet([100, 86, 0, 9]));
        c.route(&packet([100, 86, 0, 2]));
        c.route(&packet([100, 86, 0, 3]));
        c.route(b"garbage");
        assert_eq!(rx1.try_recv().unwrap()[16..20], [100, 86, 0, 9]);
        assert!(rx1.try_recv().is_err());
        assert_eq!(rx2.try_recv().unwrap()[16..20], [100, 86, 0, 2]);
        assert!(rx2.try_recv().is_err());
        c.unregister_client_route("v");
        assert_eq!(c.route_counts(), (0, 1));
    }
}
