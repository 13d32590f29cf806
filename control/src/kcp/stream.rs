//! The tokio driver of [`Session`]: one task per session moves datagrams between the
//! socket and the session and runs its timer; [`KcpStream`] reads and writes the session's
//! byte stream; [`KcpListener`] demultiplexes one UDP socket into sessions as kcp-go's
//! `Listener` does (by remote address, a new session on the first push of a new
//! conversation).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::debug;

use super::session::{Kind, MAX_DATAGRAM, Role, Session, classify};

/// How long a dropped stream keeps its session to get queued data acknowledged.
pub const LINGER: Duration = Duration::from_secs(10);
/// frp's socket buffers (`SetReadBuffer`/`SetWriteBuffer(4194304)`).
const SOCKET_BUFFER: usize = 4 << 20;
/// kcp-go's accept backlog: new sessions are not created while this many wait.
const ACCEPT_BACKLOG: usize = 128;
/// Datagrams queued from the listener to one session before they are dropped.
const SESSION_QUEUE: usize = 1024;

struct State {
    sess: Session,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// The stream was dropped.
    dropped: bool,
    /// `poll_shutdown` was called: no more writes.
    write_shut: bool,
    /// The session is over; reads and writes fail with this.
    error: Option<(io::ErrorKind, String)>,
}

impl State {
    fn wake(&mut self) {
        let over = self.error.is_some();
        if (over || self.sess.readable())
            && let Some(w) = self.read_waker.take()
        {
            w.wake();
        }
        if (over || self.sess.can_send())
            && let Some(w) = self.write_waker.take()
        {
            w.wake();
        }
    }

    fn fail(&mut self, kind: io::ErrorKind, msg: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some((kind, msg.into()));
        }
        self.wake();
    }
}

struct Shared {
    state: Mutex<State>,
    /// Asks the driver to flush now (window full, shutdown, drop).
    kick: Notify,
    epoch: Instant,
}

impl Shared {
    fn new(sess: Session) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                sess,
                read_waker: None,
                write_waker: None,
                dropped: false,
                write_shut: false,
                error: None,
            }),
            kick: Notify::new(),
            epoch: Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session clock: milliseconds since the session started (wraps after 49 days, as
    /// KCP's clock does).
    fn now(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }
}

/// One KCP session's byte stream. Dropping it ends the session (after [`LINGER`] at most).
pub struct KcpStream {
    shared: Arc<Shared>,
    conv: u32,
    local: SocketAddr,
    remote: SocketAddr,
}

impl KcpStream {
    pub fn conv(&self) -> u32 {
        self.conv
    }
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    pub fn peer_addr(&self) -> SocketAddr {
        self.remote
    }
    /// KCP packets this session recovered from FEC parity.
    pub fn fec_recovered(&self) -> u64 {
        self.shared.lock().sess.fec_recovered()
    }
}

impl Drop for KcpStream {
    fn drop(&mut self) {
        self.shared.lock().dropped = true;
        self.shared.kick.notify_one();
    }
}

impl AsyncRead for KcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut st = self.shared.lock();
        let n = st.sess.recv(buf.initialize_unfilled());
        if n > 0 {
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        if let Some((kind, msg)) = &st.error {
            return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for KcpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        if let Some((kind, msg)) = &st.error {
            return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
        }
        if st.write_shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if b.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = st.sess.send(b);
        if n == 0 {
            st.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let kick = st.sess.wants_flush();
        drop(st);
        if kick {
            self.shared.kick.notify_one();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Write delay, as frp sets it: queued bytes go out at the next tick (<= 20 ms).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // KCP cannot half-close: stop writing, keep reading; the session ends on drop.
        self.shared.lock().write_shut = true;
        self.shared.kick.notify_one();
        Poll::Ready(Ok(()))
    }
}

/// Where a session's datagrams come from.
enum Source {
    /// A connected socket of its own (frpc).
    Socket,
    /// The listener's demultiplexer (frps).
    Listener(mpsc::Receiver<Vec<u8>>),
}

/// Runs one session until it ends; `on_exit` runs last.
async fn drive(
    shared: Arc<Shared>,
    sock: Arc<UdpSocket>,
    remote: SocketAddr,
    mut source: Source,
    on_exit: impl FnOnce(),
) {
    let connected = matches!(source, Source::Socket);
    let mut buf = if connected {
        vec![0u8; 65536]
    } else {
        Vec::new()
    };
    let mut next_flush = Instant::now();
    let mut linger_until: Option<Instant> = None;
    loop {
        let out: Vec<Vec<u8>> = {
            let mut st = shared.lock();
            let now = shared.now();
            std::iter::from_fn(|| st.sess.poll_transmit(now)).collect()
        };
        for p in out {
            let r = if connected {
                sock.send(&p).await
            } else {
                sock.send_to(&p, remote).await
            };
            if let Err(e) = r {
                // The listener's socket is shared: one unreachable peer must not end others.
                if connected {
                    shared
                        .lock()
                        .fail(e.kind(), format!("kcp send to {remote}: {e}"));
                }
                break;
            }
        }
        {
            let st = shared.lock();
            if st.error.is_some() {
                break;
            }
            if st.dropped {
                let until = *linger_until.get_or_insert_with(|| Instant::now() + LINGER);
                if st.sess.wait_snd() == 0 || Instant::now() >= until {
                    break;
                }
            }
        }
        tokio::select! {
            r = recv(&sock, &mut source, &mut buf) => {
                let mut st = shared.lock();
                match r {
                    Ok(Some(n)) => {
                        let now = shared.now();
                        match &mut source {
                            Source::Socket => {
                                st.sess.input(&buf[..n], now);
                            }
                            Source::Listener(rx) => {
                                // `recv` left the datagram in `buf`; take the rest queued.
                                st.sess.input(&buf, now);
                                while let Ok(p) = rx.try_recv() {
                                    st.sess.input(&p, now);
                                }
                            }
                        }
                        st.wake();
                    }
                    Ok(None) => st.fail(io::ErrorKind::ConnectionAborted, "kcp listener closed"),
                    Err(e) => st.fail(e.kind(), format!("kcp read from {remote}: {e}")),
                }
            }
            _ = shared.kick.notified() => {
                let mut st = shared.lock();
                let now = shared.now();
                st.sess.flush(now);
            }
            _ = tokio::time::sleep_until(next_flush) => {
                let mut st = shared.lock();
                let now = shared.now();
                let wait = st.sess.flush(now);
                next_flush = Instant::now() + Duration::from_millis(wait as u64);
                if st.sess.is_dead() {
                    st.fail(io::ErrorKind::TimedOut, format!("kcp session with {remote}: dead link"));
                }
                st.wake();
            }
        }
    }
    shared
        .lock()
        .fail(io::ErrorKind::NotConnected, "kcp session closed");
    on_exit();
}

/// The next datagram: its length in `buf` (socket) or moved into `buf` (listener);
/// `None` when the listener is gone.
async fn recv(
    sock: &UdpSocket,
    source: &mut Source,
    buf: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    match source {
        Source::Socket => sock.recv(buf).await.map(Some),
        Source::Listener(rx) => Ok(rx.recv().await.map(|p| {
            *buf = p;
            buf.len()
        })),
    }
}

fn tune(sock: &UdpSocket) {
    let s = socket2::SockRef::from(sock);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
}

/// Dials a KCP session to `addr` ("host:port") from a connected UDP socket (bound to
/// `local_ip`, if given), with a random conversation id as kcp-go's `DialWithOptions`.
/// Like UDP itself it succeeds without the peer answering; the first write finds out.
pub async fn dial(addr: &str, local_ip: Option<IpAddr>) -> io::Result<KcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("no address for {addr}"),
    );
    for remote in tokio::net::lookup_host(addr).await? {
        let local = match local_ip {
            Some(ip) if ip.is_ipv4() != remote.is_ipv4() => continue,
            Some(ip) => ip,
            None if remote.is_ipv4() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let sock = match UdpSocket::bind(SocketAddr::new(local, 0)).await {
            Ok(s) => s,
            Err(e) => {
                last = e;
                continue;
            }
        };
        if let Err(e) = sock.connect(remote).await {
            last = e;
            continue;
        }
        tune(&sock);
        return Ok(start_client(sock, remote, rand::random()));
    }
    Err(last)
}

fn start_client(sock: UdpSocket, remote: SocketAddr, conv: u32) -> KcpStream {
    let local = sock
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let shared = Shared::new(Session::new(conv, Role::Client));
    let sock = Arc::new(sock);
    tokio::spawn(drive(shared.clone(), sock, remote, Source::Socket, || {}));
    KcpStream {
        shared,
        conv,
        local,
        remote,
    }
}

struct Entry {
    conv: u32,
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
}

#[derive(Default)]
struct Sessions {
    map: HashMap<SocketAddr, Entry>,
    next_id: u64,
}

type SessionMap = Arc<Mutex<Sessions>>;

fn lock_map(m: &SessionMap) -> MutexGuard<'_, Sessions> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A UDP socket accepting KCP sessions (kcp-go `ListenWithOptions(addr, nil, 10, 3)`).
pub struct KcpListener {
    local: SocketAddr,
    accept_rx: mpsc::Receiver<KcpStream>,
    sessions: SessionMap,
    task: tokio::task::JoinHandle<()>,
}

impl KcpListener {
    pub async fn bind(addr: &str) -> io::Result<KcpListener> {
        let sock = UdpSocket::bind(addr).await?;
        tune(&sock);
        let local = sock.local_addr()?;
        let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_BACKLOG);
        let sessions = SessionMap::default();
        let task = tokio::spawn(demux(Arc::new(sock), local, sessions.clone(), accept_tx));
        Ok(KcpListener {
            local,
            accept_rx,
            sessions,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next new session.
    pub async fn accept(&mut self) -> io::Result<KcpStream> {
        self.accept_rx
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "kcp listener closed"))
    }

    /// Sessions alive on this socket (accepted or not yet).
    pub fn session_count(&self) -> usize {
        lock_map(&self.sessions).map.len()
    }
}

impl Drop for KcpListener {
    fn drop(&mut self) {
        self.task.abort();
        // Dropping the senders ends every session's driver.
        lock_map(&self.sessions).map.clear();
    }
}

async fn demux(
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    sessions: SessionMap,
    accept_tx: mpsc::Sender<KcpStream>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors and the like: nothing to do with the next datagram.
                debug!("kcp listener {local}: {e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        if n > MAX_DATAGRAM {
            continue;
        }
        let pkt = &buf[..n];
        let kind = classify(pkt);
        let mut s = lock_map(&sessions);
        if let Some(e) = s.map.get(&from) {
            let ours = match kind {
                Kind::Parity => true,
                Kind::Data { conv, .. } => conv == e.conv,
                Kind::Invalid => false,
            };
            if ours {
                let _ = e.tx.try_send(pkt.to_vec());
                continue;
            }
            if !matches!(kind, Kind::Data { opens: true, .. }) {
                continue;
            }
            // A new conversation from the same address replaces the old session.
            s.map.remove(&from);
        }
        let Kind::Data { conv, opens: true } = kind else {
            continue;
        };
        let Ok(permit) = accept_tx.try_reserve() else {
            continue; // backlog full (or nobody accepts any more)
        };
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let id = s.next_id;
        s.next_id += 1;
        s.map.insert(from, Entry { conv, id, tx });
        drop(s);
        let mut sess = Session::new(conv, Role::Server);
        sess.input(pkt, 0);
        let shared = Shared::new(sess);
        let map = sessions.clone();
        let on_exit = move || {
            let mut s = lock_map(&map);
            if s.map.get(&from).is_some_and(|e| e.id == id) {
                s.map.remove(&from);
            }
        };
        tokio::spawn(drive(
            shared.clone(),
            sock.clone(),
            from,
            Source::Listener(rx),
            on_exit,
        ));
        permit.send(KcpStream {
            shared,
            conv,
            local,
            remote: from,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_once(l: &mut KcpListener) {
        let mut s = l.accept().await.unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
    }

    #[tokio::test]
    async fn listener_demuxes_two_clients() {
        let mut l = KcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().to_string();
        let mut a = dial(&addr, None).await.unwrap();
        let mut b = dial(&addr, None).await.unwrap();
        assert_ne!(a.conv(), b.conv());
        a.write_all(b"from a").await.unwrap();
        echo_once(&mut l).await;
        b.write_all(b"from b, longer").await.unwrap();
        echo_once(&mut l).await;
        let mut got = [0u8; 6];
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from a");
        let mut got = [0u8; 14];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from b, longer");
        assert_eq!(l.session_count(), 2);

        // A big transfer on one does not disturb the other.
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let (mut ar, mut aw) = tokio::io::split(a);
        let d2 = data.clone();
        let w = tokio::spawn(async move {
            aw.write_all(&d2).await.unwrap();
            aw
        });
        let mut back = vec![0u8; data.len()];
        ar.read_exact(&mut back).await.unwrap();
        assert!(back == data);
        b.write_all(b"still").await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still");

        drop(ar.unsplit(w.await.unwrap()));
    }

    #[tokio::test]
    async fn dropped_server_stream_frees_its_session() {
        let mut l = KcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().to_string();
        let mut c = dial(&addr, None).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let s = l.accept().await.unwrap();
        assert_eq!(l.session_count(), 1);
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(2);
        while l.session_count() > 0 {
            assert!(Instant::now() < deadline, "session kept");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn garbage_does_not_open_sessions() {
        let mut l = KcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr();
        let g = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..200u32 {
            let mut p: Vec<u8> = (0..(i % 90) as usize)
                .map(|j| (j as u32 * i) as u8)
                .collect();
            if i % 3 == 0 && p.len() > 6 {
                p[4] = 0xf1;
                p[5] = 0;
            }
            g.send_to(&p, addr).await.unwrap();
        }
        let mut c = dial(&addr.to_string(), None).await.unwrap();
        c.write_all(b"ok").await.unwrap();
        let mut s = l.accept().await.unwrap();
        let mut got = [0u8; 2];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ok");
        assert_eq!(l.session_count(), 1);
    }

    #[tokio::test]
    async fn client_sees_an_unreachable_server() {
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let mut c = dial(&format!("127.0.0.1:{port}"), None).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await;
        assert!(matches!(r, Ok(Err(_))), "{r:?}");
    }

    /// A UDP relay to `target` that drops `loss`% of datagrams each way (deterministic).
    async fn lossy_relay(target: SocketAddr, loss: u64) -> SocketAddr {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(target).await.unwrap();
        let addr = front.local_addr().unwrap();
        let client = Arc::new(Mutex::new(None::<SocketAddr>));
        let drop_it = move |seed: &mut u64| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed % 100 < loss
        };
        let (f, b, c) = (front.clone(), back.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut seed = 7u64;
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *c.lock().unwrap() = Some(from);
                if !drop_it(&mut seed) {
                    let _ = b.send(&buf[..n]).await;
                }
            }
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut seed = 11u64;
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *client.lock().unwrap();
                if let Some(to) = to
                    && !drop_it(&mut seed)
                {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
        addr
    }

    fn pattern() -> Vec<u8> {
        (0..1u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Interop with a kcp-go echo server (frp's settings), through a 5% lossy relay:
    /// `KCP_GO_SERVER=127.0.0.1:PORT cargo test -p control kcp_go_server -- --ignored`.
    #[tokio::test]
    #[ignore = "needs a kcp-go echo server (KCP_GO_SERVER)"]
    async fn interop_kcp_go_server() {
        let target: SocketAddr = std::env::var("KCP_GO_SERVER").unwrap().parse().unwrap();
        let relay = lossy_relay(target, 5).await;
        let c = dial(&relay.to_string(), None).await.unwrap();
        let data = pattern();
        let (mut r, mut w) = tokio::io::split(c);
        let d = data.clone();
        let wt = tokio::spawn(async move {
            w.write_all(&d).await.unwrap();
            w
        });
        let mut got = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(60), r.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got == data, "corrupted");
        let c = r.unsplit(wt.await.unwrap());
        assert!(
            c.fec_recovered() > 0,
            "no packet recovered from kcp-go's parity"
        );
        println!("recovered from kcp-go parity: {}", c.fec_recovered());
    }

    /// Serves an echo for a kcp-go client for `KCP_RUST_SERVE_SECS`, through a 5% lossy
    /// relay whose address it prints.
    #[tokio::test]
    #[ignore = "for a kcp-go client (KCP_RUST_SERVE_SECS)"]
    async fn interop_serve_kcp_go_client() {
        let secs: u64 = std::env::var("KCP_RUST_SERVE_SECS")
            .unwrap()
            .parse()
            .unwrap();
        let mut l = KcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = lossy_relay(l.local_addr(), 5).await;
        println!("RELAY {relay}");
        let serve = async {
            loop {
                let s = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(s);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(secs), serve).await;
    }
}
