//! The tokio driver of [`Session`]: one task per session moves datagrams between the
//! socket and the session and runs its timer; [`KcpStream`] reads and writes the session's
//! byte stream; [`KcpListener`] demultiplexes one UDP socket into sessions as kcp-go's
//! `Listener` does (by remote address, a new session on the first push of a new
//! conversation).

use std::collections::{HashMap, VecDeque};
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
/// Half-open sessions (the peer has not yet acknowledged anything we sent) kept per
/// listener; a new one beyond this evicts the oldest. One datagram from a spoofed source
/// opens a session, so without a cap a flood of them holds unbounded state. A legitimate
/// client proves itself within a round trip of frps' first reply (its TLS ServerHello, yamux
/// window update or LoginResp), so it is only evicted by a flood of more than this many
/// opens within that round trip.
pub const MAX_HALF_OPEN: usize = 1024;

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
    /// Datagrams the listener received for this session, not yet input (listener sessions).
    inbox: VecDeque<Vec<u8>>,
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
    /// The listener put a datagram into `inbox`.
    arrived: Notify,
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
                inbox: VecDeque::new(),
            }),
            kick: Notify::new(),
            arrived: Notify::new(),
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
    /// The listener's demultiplexer (frps), through [`State::inbox`].
    Listener,
}

/// Runs one session until it ends; `on_proven` runs once the peer first acknowledges our
/// data ([`Session::proven`]), `on_exit` runs last.
async fn drive(
    shared: Arc<Shared>,
    sock: Arc<UdpSocket>,
    remote: SocketAddr,
    source: Source,
    on_proven: impl FnOnce(),
    on_exit: impl FnOnce(),
) {
    let mut on_proven = Some(on_proven);
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
            r = recv(&sock, &shared, &source, &mut buf) => {
                let mut st = shared.lock();
                match r {
                    Ok(n) => {
                        let now = shared.now();
                        match source {
                            Source::Socket => {
                                st.sess.input(&buf[..n], now);
                            }
                            Source::Listener => {
                                while let Some(p) = st.inbox.pop_front() {
                                    st.sess.input(&p, now);
                                }
                                // A burst's queue is not kept.
                                if st.inbox.capacity() > 16 {
                                    st.inbox = VecDeque::new();
                                }
                            }
                        }
                        st.wake();
                        if st.sess.proven()
                            && let Some(f) = on_proven.take()
                        {
                            drop(st);
                            f();
                        }
                    }
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

/// The next datagram: its length in `buf` (socket), or word that the listener queued some
/// in the session's inbox (listener; the listener ends the session through
/// [`State::fail`] when it goes).
async fn recv(
    sock: &UdpSocket,
    shared: &Shared,
    source: &Source,
    buf: &mut [u8],
) -> io::Result<usize> {
    match source {
        Source::Socket => sock.recv(buf).await,
        Source::Listener => {
            shared.arrived.notified().await;
            Ok(0)
        }
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
    over_connected(sock, remote, conv, Role::Client)
}

/// A KCP session on `sock`, already connected to `remote`, with conversation `conv` and the
/// windows of `role`: what frp's xtcp runs on a punched socket (`kcp.NewConn3(1, …)`, windows
/// 1024/1024 on both sides). Nothing is sent until the first write.
pub fn over_connected(sock: UdpSocket, remote: SocketAddr, conv: u32, role: Role) -> KcpStream {
    tune(&sock);
    let local = sock
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let shared = Shared::new(Session::new(conv, role));
    let sock = Arc::new(sock);
    tokio::spawn(drive(
        shared.clone(),
        sock,
        remote,
        Source::Socket,
        || {},
        || {},
    ));
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
    shared: Arc<Shared>,
    /// The peer has not acknowledged anything yet.
    half_open: bool,
}

struct Sessions {
    map: HashMap<SocketAddr, Entry>,
    next_id: u64,
    /// Entries of `map` with `half_open`.
    half_open: usize,
    max_half_open: usize,
    /// Sessions in the order they were opened, oldest first, for eviction. Entries that are
    /// gone or no longer half-open are skipped (and pruned when they pile up).
    order: VecDeque<(SocketAddr, u64)>,
    /// Half-open sessions evicted so far.
    evicted: u64,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions {
            map: HashMap::new(),
            next_id: 0,
            half_open: 0,
            max_half_open: MAX_HALF_OPEN,
            order: VecDeque::new(),
            evicted: 0,
        }
    }
}

impl Sessions {
    fn insert(&mut self, from: SocketAddr, e: Entry) {
        self.half_open += usize::from(e.half_open);
        self.order.push_back((from, e.id));
        if let Some(old) = self.map.insert(from, e) {
            self.half_open -= usize::from(old.half_open);
        }
        if self.order.len() > 2 * self.max_half_open + 64 {
            let map = &self.map;
            self.order
                .retain(|(a, id)| map.get(a).is_some_and(|e| e.id == *id && e.half_open));
        }
    }

    /// Removes `from`'s session if it is still session `id` (any, with `None`).
    fn remove(&mut self, from: &SocketAddr, id: Option<u64>) -> Option<Entry> {
        if id.is_some_and(|id| self.map.get(from).is_none_or(|e| e.id != id)) {
            return None;
        }
        let e = self.map.remove(from)?;
        self.half_open -= usize::from(e.half_open);
        Some(e)
    }

    fn proven(&mut self, from: &SocketAddr, id: u64) {
        if let Some(e) = self.map.get_mut(from)
            && e.id == id
            && e.half_open
        {
            e.half_open = false;
            self.half_open -= 1;
        }
    }

    /// Ends the oldest half-open session. Its stream fails at once, so whoever holds it (a
    /// TLS or first-message wait) lets go.
    fn evict_oldest(&mut self) {
        while let Some((from, id)) = self.order.pop_front() {
            if !self
                .map
                .get(&from)
                .is_some_and(|e| e.id == id && e.half_open)
            {
                continue;
            }
            let e = self.remove(&from, Some(id)).expect("checked above");
            end(
                &e,
                io::ErrorKind::ConnectionAborted,
                format!("kcp session with {from} evicted: too many half-open sessions"),
            );
            self.evicted += 1;
            return;
        }
    }
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

    /// Sessions whose peer has not acknowledged anything yet.
    pub fn half_open_count(&self) -> usize {
        lock_map(&self.sessions).half_open
    }

    /// Half-open sessions evicted to make room for newer ones so far.
    pub fn evicted_count(&self) -> u64 {
        lock_map(&self.sessions).evicted
    }

    /// Changes the cap on half-open sessions ([`MAX_HALF_OPEN`]; at least 1).
    pub fn set_max_half_open(&self, n: usize) {
        lock_map(&self.sessions).max_half_open = n.max(1);
    }
}

impl Drop for KcpListener {
    fn drop(&mut self) {
        self.task.abort();
        for (_, e) in lock_map(&self.sessions).map.drain() {
            end(
                &e,
                io::ErrorKind::ConnectionAborted,
                "kcp listener closed".into(),
            );
        }
    }
}

/// Ends a session the listener let go of: its stream fails, its driver stops.
fn end(e: &Entry, kind: io::ErrorKind, msg: String) {
    e.shared.lock().fail(kind, msg);
    e.shared.kick.notify_one();
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
                let mut st = e.shared.lock();
                if st.inbox.len() < SESSION_QUEUE {
                    st.inbox.push_back(pkt.to_vec());
                }
                drop(st);
                e.shared.arrived.notify_one();
                continue;
            }
            if !matches!(kind, Kind::Data { opens: true, .. }) {
                continue;
            }
            // A new conversation from the same address replaces the old session.
            if let Some(old) = s.remove(&from, None) {
                end(
                    &old,
                    io::ErrorKind::ConnectionReset,
                    format!("kcp session with {from} replaced by a new conversation"),
                );
            }
        }
        let Kind::Data { conv, opens: true } = kind else {
            continue;
        };
        let Ok(permit) = accept_tx.try_reserve() else {
            continue; // backlog full (or nobody accepts any more)
        };
        while s.half_open >= s.max_half_open {
            s.evict_oldest();
        }
        let id = s.next_id;
        s.next_id += 1;
        let mut sess = Session::new(conv, Role::Server);
        sess.input(pkt, 0);
        let shared = Shared::new(sess);
        let entry = Entry {
            conv,
            id,
            shared: shared.clone(),
            half_open: true,
        };
        s.insert(from, entry);
        drop(s);
        let map = sessions.clone();
        let on_proven = move || lock_map(&map).proven(&from, id);
        let map = sessions.clone();
        let on_exit = move || {
            lock_map(&map).remove(&from, Some(id));
        };
        tokio::spawn(drive(
            shared.clone(),
            sock.clone(),
            from,
            Source::Listener,
            on_proven,
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

    /// Sends one open (a client's first 38-byte write) from each of `socks`, in order.
    fn send_opens(socks: &[std::net::UdpSocket], to: SocketAddr, conv0: u32) {
        for (i, s) in socks.iter().enumerate() {
            let p = crate::kcp::session::tests::open_datagram(conv0 + i as u32, 38);
            s.send_to(&p, to).unwrap();
        }
    }

    fn sockets(n: usize) -> Vec<std::net::UdpSocket> {
        (0..n)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect()
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A flood of opens from many source addresses keeps at most the cap of half-open
    /// sessions: the oldest go first (their streams fail at once), the newest stay, and a
    /// session whose peer answered is never evicted.
    #[tokio::test]
    async fn half_open_sessions_are_capped_oldest_evicted() {
        let mut l = KcpListener::bind("127.0.0.1:0").await.unwrap();
        l.set_max_half_open(8);
        let addr = l.local_addr();
        let mut real = dial(&addr.to_string(), None).await.unwrap();
        real.write_all(b"ping").await.unwrap();
        let mut s = l.accept().await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(b"pong").await.unwrap();
        real.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        wait_until("the real client's ack", || l.half_open_count() == 0).await;

        let socks = sockets(20);
        send_opens(&socks, addr, 1000);
        let mut accepted = Vec::new();
        for _ in 0..20 {
            accepted.push(l.accept().await.unwrap());
        }
        wait_until("20 sessions opened", || {
            l.evicted_count() == 12 && l.half_open_count() == 8
        })
        .await;
        assert_eq!(l.session_count(), 9);
        for (i, mut st) in accepted.into_iter().enumerate() {
            assert_eq!(st.peer_addr(), socks[i].local_addr().unwrap());
            let mut buf = [0u8; 64];
            assert_eq!(st.read(&mut buf).await.unwrap(), 38, "its first write");
            let r = tokio::time::timeout(Duration::from_millis(50), st.read(&mut buf)).await;
            if i < 12 {
                let e = r.expect("an evicted session fails at once").unwrap_err();
                assert!(e.to_string().contains("evicted"), "{e}");
            } else {
                assert!(r.is_err(), "session {i} should still wait: {r:?}");
            }
        }
        // The proven session is untouched.
        real.write_all(b"more").await.unwrap();
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"more");
    }

    /// What a half-open session costs on the listener (its session, task, queue, map entry,
    /// and the stream an application holds), measured with the counting test allocator.
    #[tokio::test]
    async fn half_open_sessions_cost_little() {
        const N: usize = 200;
        let mut l = KcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr();
        let socks = sockets(N);
        let before = crate::test_alloc::live_bytes();
        send_opens(&socks, addr, 5000);
        let mut accepted = Vec::new();
        for _ in 0..N {
            accepted.push(l.accept().await.unwrap());
        }
        // Let every driver run its first flush (the ack goes out).
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let per = (crate::test_alloc::live_bytes() - before) / N as i64;
        println!("{per} bytes per half-open session");
        assert_eq!(l.half_open_count(), N);
        assert!(per < 4096, "{per} bytes per half-open session");
        drop(accepted);
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
