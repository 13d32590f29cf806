//! udp proxies (spec §9): a UDP socket on `remotePort`. Every datagram a user sends travels to
//! frpc as `UDPPacket{c, r}` over one long-lived work connection; frpc's replies come back the
//! same way and leave with `send_to(r)`. The messages are framed in the wire protocol of the
//! client's control connection (v2 frames for a v2 client, as frp >= 0.69.1 does), inside the
//! proxy's CFB/snappy layers.
//!
//! Tasks per proxy: one reads the public socket into a bounded queue (1024, drops when full,
//! as frp); one owns the work connection — it takes a connection from the pool 500 ms after
//! registration (StartWorkConn without addresses), sends the queue's packets over it, writes
//! the replies to the users, and takes a new one whenever the connection fails or stays silent
//! for 60 s (frpc pings every 30 s), retrying every second while none can be had.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dataplane::RateLimiter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, trace, warn};

use super::{Control, ProxyInfo, Started, State};
use crate::crypto;
use crate::msg::{Message, StartWorkConn, UdpPacket};
use crate::msgconn::{MsgConn, MsgReader, MsgWriter};

/// Depth of the user → work connection queue (frp: 1024).
const QUEUE: usize = 1024;
/// frp waits this long after registration before taking the work connection, so that
/// NewProxyResp reaches frpc first.
const FIRST_WORK_CONN_DELAY: Duration = Duration::from_millis(500);
/// Pause between attempts to get a work connection.
const RETRY: Duration = Duration::from_secs(1);
/// Read deadline per message on the work connection (frpc pings every 30 s).
const WORK_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds the proxy's UDP port and starts its tasks.
pub(crate) async fn start(
    st: &Arc<State>,
    ctl: &Arc<Control>,
    info: &Arc<ProxyInfo>,
) -> Result<Started, String> {
    let np = &info.msg;
    let max_ports = st.cfg.max_ports_per_client;
    if max_ports > 0 && *ctl.ports_used.lock().unwrap() as i64 >= max_ports {
        return Err("exceed the max_ports_per_client".into());
    }
    if !(0..=65535).contains(&np.remote_port) {
        return Err("port not allowed".into());
    }
    let sock: std::net::UdpSocket = st
        .proxies
        .udp_ports
        .lock()
        .unwrap()
        .acquire(&info.name, np.remote_port as u16)?;
    *ctl.ports_used.lock().unwrap() += 1;
    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    // The UDP port is released here rather than through `Started::port` (which is a TCP port).
    let release = {
        let (st, ctl) = (st.clone(), ctl.clone());
        move || {
            st.proxies.udp_ports.lock().unwrap().release(port);
            let mut used = ctl.ports_used.lock().unwrap();
            *used = used.saturating_sub(1);
        }
    };
    let sock = match UdpSocket::from_std(sock) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            release();
            return Err(e.to_string());
        }
    };
    info!(
        "[{}] [{}] udp proxy listen port [{port}]",
        ctl.run_id, info.name
    );
    let (tx, rx) = mpsc::channel(QUEUE);
    let packet_size = st.cfg.udp_packet_size.clamp(1, 65535) as usize;
    let max_datagram = ctl.wire.max_udp_datagram();
    let users = tokio::spawn(read_users(
        sock.clone(),
        tx,
        packet_size,
        max_datagram,
        info.clone(),
    ));
    let work = tokio::spawn(work_loop(st.clone(), ctl.clone(), info.clone(), sock, rx));
    Ok(Started {
        tasks: vec![users, work],
        port: None,
        remote_addr: format!(":{port}"),
        on_close: super::on_close(release),
    })
}

/// Public socket → queue. A full queue drops the datagram, like frp.
async fn read_users(
    sock: Arc<UdpSocket>,
    tx: mpsc::Sender<UdpPacket>,
    packet_size: usize,
    max_datagram: usize,
    info: Arc<ProxyInfo>,
) {
    let mut buf = vec![0u8; packet_size];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if n > max_datagram {
                    debug!(
                        "[{}] udp datagram of {n} bytes from {from} does not fit a UDPPacket message (max {max_datagram} bytes); dropped",
                        info.name
                    );
                    continue;
                }
                info.counters.a_to_b.fetch_add(n as u64, Ordering::Relaxed);
                let pkt = UdpPacket::for_remote(&buf[..n], from);
                if tx.try_send(pkt).is_err() {
                    trace!(
                        "[{}] udp queue full; datagram from {from} dropped",
                        info.name
                    );
                }
            }
            Err(e) => {
                // Nothing a user can send makes an unconnected socket fail for long; do not
                // spin if it does.
                debug!("[{}] udp read: {e}", info.name);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Keeps one work connection and moves the packets over it.
async fn work_loop(
    st: Arc<State>,
    ctl: Arc<Control>,
    info: Arc<ProxyInfo>,
    sock: Arc<UdpSocket>,
    mut rx: mpsc::Receiver<UdpPacket>,
) {
    tokio::time::sleep(FIRST_WORK_CONN_DELAY).await;
    let timeout = Duration::from_secs(st.cfg.user_conn_timeout.max(1) as u64);
    let v6 = sock.local_addr().is_ok_and(|a| a.is_ipv6());
    loop {
        let work = match ctl.work_conn(timeout).await {
            Ok(w) => w,
            Err(e) => {
                debug!(
                    "[{}] [{}] udp proxy: no work connection: {e}",
                    ctl.run_id, info.name
                );
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut mc = MsgConn::with_version(work, ctl.wire);
        let start = StartWorkConn {
            proxy_name: info.name.clone(),
            ..Default::default()
        };
        if let Err(e) = mc.write_msg(&start.into()).await {
            debug!(
                "[{}] [{}] write StartWorkConn to a stale work connection: {e}",
                ctl.run_id, info.name
            );
            continue;
        }
        let (work, rest) = mc.into_parts();
        let (inbound, outbound) =
            crypto::work_conn_layers(Some(&st.key), info.use_encryption, info.use_compression);
        let (r, w) = tokio::io::split(work);
        let mut reader = match MsgReader::with_layers(r, ctl.wire, inbound, &rest) {
            Ok(r) => r,
            Err(e) => {
                warn!("[{}] [{}] udp work connection: {e}", ctl.run_id, info.name);
                continue;
            }
        };
        let mut writer = MsgWriter::with_layers(w, ctl.wire, outbound);
        debug!(
            "[{}] [{}] udp proxy got its work connection",
            ctl.run_id, info.name
        );
        let reason = tokio::select! {
            r = to_users(&mut reader, &sock, v6, &info) => r,
            r = to_work(&mut writer, &mut rx, info.limiter.as_deref()) => r,
        };
        warn!(
            "[{}] [{}] read from workConn for udp error: {reason}; taking a new work connection",
            ctl.run_id, info.name
        );
    }
}

/// Work connection → users. Returns why the connection is unusable.
async fn to_users<R: AsyncRead + Unpin>(
    reader: &mut MsgReader<R>,
    sock: &UdpSocket,
    v6: bool,
    info: &ProxyInfo,
) -> String {
    let mut charged = reader.wire_bytes();
    loop {
        let msg = match tokio::time::timeout(WORK_READ_TIMEOUT, reader.read_msg()).await {
            Err(_) => return "no message within 60s".into(),
            Ok(Err(e)) => return e.to_string(),
            Ok(Ok(m)) => m,
        };
        if let Some(l) = &info.limiter {
            let read = reader.wire_bytes();
            throttle(l, (read - charged) as usize).await;
            charged = read;
        }
        match msg {
            Message::Ping(_) => trace!("[{}] udp work conn got a ping", info.name),
            Message::UdpPacket(p) => {
                let Some(to) = p.remote_addr.as_ref().and_then(|a| a.to_socket_addr()) else {
                    debug!("[{}] UDPPacket without a usable address", info.name);
                    continue;
                };
                info.counters
                    .b_to_a
                    .fetch_add(p.content.len() as u64, Ordering::Relaxed);
                if let Err(e) = sock.send_to(&p.content, for_socket(to, v6)).await {
                    debug!("[{}] udp write to {to}: {e}", info.name);
                }
            }
            other => debug!(
                "[{}] ignoring {} on a udp work connection",
                info.name,
                other.name()
            ),
        }
    }
}

/// Queue → work connection. Returns why it stopped.
async fn to_work<W: AsyncWrite + Unpin>(
    writer: &mut MsgWriter<W>,
    rx: &mut mpsc::Receiver<UdpPacket>,
    limiter: Option<&RateLimiter>,
) -> String {
    while let Some(p) = rx.recv().await {
        match writer.write_msg(&Message::UdpPacket(p)).await {
            Ok(n) => {
                if let Some(l) = limiter {
                    throttle(l, n).await;
                }
            }
            Err(e) => return e.to_string(),
        }
    }
    "proxy closed".into()
}

/// `bandwidthLimitMode = "server"`: charges `n` bytes of the work connection and waits as
/// long as the limiter says (Go's `WaitN`).
pub(crate) async fn throttle(l: &RateLimiter, n: usize) {
    let wait = l.reserve(n);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// An IPv4 destination for a dual-stack IPv6 socket must be written v4-mapped.
pub(crate) fn for_socket(to: SocketAddr, v6_socket: bool) -> SocketAddr {
    match to {
        SocketAddr::V4(v4) if v6_socket => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        other => other,
    }
}
