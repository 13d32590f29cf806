//! The registry of logged-in clients: one [`Control`] per frpc session, found by run id, with
//! its message queue ([`Outbox`]) and its work-connection pool ([`WorkPool`]).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;

use super::hooks::UserInfo;
use crate::msg::{Login, Message, ReqWorkConn};
use crate::transport::Conn;
use crate::wire_v2::WireVersion;

/// One logged-in frpc.
pub(crate) struct Control {
    pub(crate) run_id: String,
    /// From the Login (as server plugins left it): what the session needs after logging in.
    pub(crate) user: String,
    pub(crate) client_id: String,
    metas: BTreeMap<String, String>,
    pub(crate) remote: SocketAddr,
    /// The wire protocol of this client's control connection. Its work connections speak the
    /// same one (checked when they arrive): frame StartWorkConn, and the UDPPacket/Ping
    /// messages of UDP work connections (frp >= 0.69.1), with
    /// `MsgConn::with_version(conn, ctl.wire)`.
    pub(crate) wire: WireVersion,
    /// Messages for frpc, written out by the control's task.
    pub(crate) msg_tx: Outbox,
    /// Work connections parked for this client's proxies.
    pub(crate) pool: WorkPool,
    /// Proxies this client registered (wire names).
    pub(crate) proxies: Mutex<HashSet<String>>,
    pub(crate) ports_used: Mutex<usize>,
    /// When the client logged in, on tokio's clock: `last_ping` counts from here.
    logged_in: tokio::time::Instant,
    /// Milliseconds from `logged_in` to the last valid Ping (0: none yet).
    last_ping: AtomicU64,
    /// Why the session was told to end ([`EndReason`] as a number; 0: it was not).
    end_reason: AtomicU8,
    /// Fired when the session is told to end ([`Control::end`]) and once it has cleaned up
    /// ([`Control::set_done`]); the waiters look at `end_reason` and `finished`.
    signal: Notify,
    finished: AtomicBool,
}

impl Control {
    pub(crate) fn new(
        run_id: String,
        login: &Login,
        remote: SocketAddr,
        wire: WireVersion,
        pool_count: usize,
    ) -> Control {
        Control {
            pool: WorkPool::new(pool_count),
            run_id,
            user: login.user.clone(),
            client_id: login.client_id.clone(),
            metas: login.metas.clone(),
            remote,
            wire,
            msg_tx: Outbox::default(),
            proxies: Mutex::new(HashSet::new()),
            ports_used: Mutex::new(0),
            logged_in: tokio::time::Instant::now(),
            last_ping: AtomicU64::new(0),
            end_reason: AtomicU8::new(0),
            signal: Notify::new(),
            finished: AtomicBool::new(false),
        }
    }

    /// Who this client is, for server plugins.
    pub(crate) fn user_info(&self) -> UserInfo {
        UserInfo {
            user: self.user.clone(),
            metas: self.metas.clone(),
            run_id: self.run_id.clone(),
        }
    }

    /// A parked work connection, or a new one asked of frpc (see [`WorkPool::get`]).
    pub(crate) async fn work_conn(&self, timeout: Duration) -> Result<Conn, String> {
        self.pool.get(&self.msg_tx, timeout).await
    }

    /// A valid Ping arrived: the heartbeat deadline moves.
    pub(crate) fn pinged(&self) {
        let ms = self.logged_in.elapsed().as_millis() as u64;
        self.last_ping.store(ms, Ordering::Relaxed);
    }

    /// How long the client has not pinged (since its login if it never did), at `now`.
    pub(crate) fn silent_for(&self, now: tokio::time::Instant) -> Duration {
        let last = self.logged_in + Duration::from_millis(self.last_ping.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// Tells the session to end for `reason` (the first reason given is kept).
    pub(crate) fn end(&self, reason: EndReason) {
        let _ =
            self.end_reason
                .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.signal.notify_waiters();
    }

    /// Resolves once [`Control::end`] was called, with the reason given, in frp's words.
    pub(crate) async fn ended(&self) -> &'static str {
        self.signalled(|| match self.end_reason.load(Ordering::SeqCst) {
            0 => None,
            r if r == EndReason::HeartbeatTimeout as u8 => Some("heartbeat timeout"),
            _ => Some("replaced by a new login with the same run id"),
        })
        .await
    }

    /// Marks the session as cleaned up, waking [`Control::wait_done`].
    pub(crate) fn set_done(&self) {
        self.finished.store(true, Ordering::SeqCst);
        self.signal.notify_waiters();
    }

    pub(crate) async fn wait_done(&self) {
        self.signalled(|| self.finished.load(Ordering::SeqCst).then_some(()))
            .await
    }

    /// Waits on `signal` until `check` has an answer (registered before each look, so a
    /// signal in between is not missed).
    async fn signalled<T>(&self, check: impl Fn() -> Option<T>) -> T {
        loop {
            let n = self.signal.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if let Some(v) = check() {
                return v;
            }
            n.await;
        }
    }
}

/// Why a session was told to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum EndReason {
    /// A new login with the same run id replaces it.
    Replaced = 1,
    /// No Ping for `heartbeatTimeout`.
    HeartbeatTimeout = 2,
}

/// Logged-in clients by run id: a set of controls keyed by their own run id (a map would
/// keep a second copy of every run id).
#[derive(Default)]
pub(crate) struct Controls {
    by_run_id: Mutex<HashSet<ByRunId>>,
}

/// A control in [`Controls`], hashed and compared as its run id (so `&str` finds it).
struct ByRunId(Arc<Control>);

impl std::borrow::Borrow<str> for ByRunId {
    fn borrow(&self) -> &str {
        &self.0.run_id
    }
}

impl std::hash::Hash for ByRunId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes: `Borrow` requires it.
        self.0.run_id.as_str().hash(state)
    }
}

impl PartialEq for ByRunId {
    fn eq(&self, other: &Self) -> bool {
        self.0.run_id == other.0.run_id
    }
}

impl Eq for ByRunId {}

impl Controls {
    pub(crate) fn get(&self, run_id: &str) -> Option<Arc<Control>> {
        self.by_run_id
            .lock()
            .unwrap()
            .get(run_id)
            .map(|c| c.0.clone())
    }

    /// Registers `ctl`, replacing a control with the same run id.
    pub(crate) fn insert(&self, ctl: Arc<Control>) {
        self.by_run_id.lock().unwrap().replace(ByRunId(ctl));
    }

    /// Removes `ctl`, unless a newer session with its run id has replaced it.
    pub(crate) fn remove(&self, ctl: &Arc<Control>) {
        let mut set = self.by_run_id.lock().unwrap();
        if set
            .get(ctl.run_id.as_str())
            .is_some_and(|c| Arc::ptr_eq(&c.0, ctl))
        {
            set.remove(ctl.run_id.as_str());
        }
    }

    /// Ends every session whose client has not pinged for `timeout` (frp's heartbeat check,
    /// one pass for all clients instead of a timer per client); returns how many.
    pub(crate) fn end_silent(&self, timeout: Duration) -> usize {
        let now = tokio::time::Instant::now();
        let silent: Vec<Arc<Control>> = self
            .by_run_id
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0.silent_for(now) > timeout)
            .map(|c| c.0.clone())
            .collect();
        for c in &silent {
            c.end(EndReason::HeartbeatTimeout);
        }
        silent.len()
    }

    /// Whether another session of `login`'s user holds its client id.
    pub(crate) fn client_id_online(&self, login: &Login) -> bool {
        !login.client_id.is_empty()
            && self.by_run_id.lock().unwrap().iter().any(|ByRunId(c)| {
                c.client_id == login.client_id && c.user == login.user && c.run_id != login.run_id
            })
    }
}

/// Why a message could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The queue holds [`Outbox::capacity`] messages.
    Full,
    /// The control connection is gone.
    Closed,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SendError::Full => "control queue is full",
            SendError::Closed => "control connection is closed",
        })
    }
}

/// A control's queue of messages for frpc: many senders (the message loop, the work pool,
/// the NAT hole controller), one writer, bounded as frp's (100 messages).
///
/// A mutex around a `VecDeque` and two [`Notify`]s instead of tokio's channel, whose shared
/// state (cache-padded) and first block of 32 slots cost ~0.8 KB per connected client before
/// a message is sent; an idle outbox holds no buffer.
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    /// Woken when the writer takes a message or the outbox closes (full senders wait here).
    room: Notify,
}

struct Queue {
    msgs: VecDeque<Box<Message>>,
    closed: bool,
    /// The writer, waiting for a message (it polls: no future of its own to keep).
    writer: Option<Waker>,
}

/// A client's side of its control connection, as the NAT hole controller holds it (frp's
/// `MessageTransporter`): the client's [`Control`], whose queue it is (one allocation per
/// client, not two), or a bare [`Outbox`] in tests.
pub(crate) trait ToClient: Send + Sync {
    fn outbox(&self) -> &Outbox;
}

impl ToClient for Outbox {
    fn outbox(&self) -> &Outbox {
        self
    }
}

impl ToClient for Control {
    fn outbox(&self) -> &Outbox {
        &self.msg_tx
    }
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox {
            queue: Mutex::new(Queue {
                msgs: VecDeque::new(),
                closed: false,
                writer: None,
            }),
            room: Notify::new(),
        }
    }
}

impl Outbox {
    #[cfg(test)]
    pub(crate) fn new() -> Arc<Outbox> {
        Arc::new(Outbox::default())
    }

    /// How many messages wait at most (frp's control queue depth).
    pub(crate) fn capacity(&self) -> usize {
        super::CONTROL_QUEUE
    }

    fn push(&self, m: Box<Message>) -> Result<(), (SendError, Box<Message>)> {
        let writer = {
            let mut q = self.queue.lock().unwrap();
            if q.closed {
                return Err((SendError::Closed, m));
            }
            if q.msgs.len() >= self.capacity() {
                return Err((SendError::Full, m));
            }
            q.msgs.push_back(m);
            q.writer.take()
        };
        if let Some(w) = writer {
            w.wake();
        }
        Ok(())
    }

    /// Queues `m` unless the queue is full or closed.
    pub(crate) fn try_send(&self, m: Box<Message>) -> Result<(), SendError> {
        self.push(m).map_err(|(e, _)| e)
    }

    /// Queues `m`, waiting for room while the queue is full; fails once it is closed.
    pub(crate) async fn send(&self, mut m: Box<Message>) -> Result<(), SendError> {
        loop {
            // Registered before trying, so room made in between still wakes this sender (a
            // wake-up a dropped sender received passes on to the next one).
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.push(m) {
                Ok(()) => return Ok(()),
                Err((SendError::Closed, _)) => return Err(SendError::Closed),
                Err((SendError::Full, back)) => m = back,
            }
            room.await;
        }
    }

    /// [`Outbox::send`], giving up after `timeout` (the message is dropped).
    pub(crate) async fn send_timeout(
        &self,
        m: Box<Message>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        match tokio::time::timeout(timeout, self.send(m)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Full),
        }
    }

    /// The next message, if one is queued.
    #[cfg(test)]
    pub(crate) fn try_recv(&self) -> Option<Box<Message>> {
        match self.poll_recv(None) {
            Poll::Ready(m) => m,
            Poll::Pending => None,
        }
    }

    /// The next message; `Ready(None)` once the outbox is closed. With `cx`, `Pending`
    /// registers the task to be woken by the next message. One reader.
    pub(crate) fn poll_recv(&self, cx: Option<&Context<'_>>) -> Poll<Option<Box<Message>>> {
        let m = {
            let mut q = self.queue.lock().unwrap();
            let m = q.msgs.pop_front();
            if q.msgs.is_empty() {
                // An idle control keeps no buffer from its last burst.
                q.msgs.shrink_to_fit();
            }
            match (&m, cx) {
                (Some(_), _) => {}
                (None, _) if q.closed => return Poll::Ready(None),
                (None, Some(cx)) => {
                    if !q.writer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        q.writer = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                (None, None) => return Poll::Pending,
            }
            m
        };
        self.room.notify_one();
        Poll::Ready(m)
    }

    /// The next message, waiting for one; `None` once the outbox is closed. One reader.
    #[cfg(test)]
    pub(crate) async fn recv(&self) -> Option<Box<Message>> {
        std::future::poll_fn(|cx| self.poll_recv(Some(cx))).await
    }

    /// Closes the queue: what waits is dropped, senders fail from now on.
    pub(crate) fn close(&self) {
        let (dropped, writer) = {
            let mut q = self.queue.lock().unwrap();
            q.closed = true;
            (std::mem::take(&mut q.msgs), q.writer.take())
        };
        drop(dropped);
        self.room.notify_waiters();
        if let Some(w) = writer {
            w.wake();
        }
    }
}

/// Parked work connections, oldest first. The first one has a slot of its own: frpc's
/// default poolCount is 1, and a `VecDeque` would allocate room for four.
#[derive(Default)]
struct Parked {
    first: Option<Conn>,
    more: VecDeque<Conn>,
}

impl Parked {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    fn push(&mut self, conn: Conn) {
        if self.first.is_none() && self.more.is_empty() {
            self.first = Some(conn);
        } else {
            self.more.push_back(conn);
        }
    }

    fn pop(&mut self) -> Option<Conn> {
        let conn = self.first.take().or_else(|| self.more.pop_front());
        if self.more.is_empty() {
            // A burst of parked connections leaves no buffer behind.
            self.more.shrink_to_fit();
        }
        conn
    }
}

/// A client's pool of work connections (spec §8 step 5): frpc keeps `pool_count` parked;
/// each one taken is replaced by asking frpc for another. Holds no allocation while empty
/// (most clients run frp's default poolCount = 0).
pub(crate) struct WorkPool {
    /// How many frps asks for up front (the client's poolCount, capped by maxPoolCount).
    pub(crate) count: usize,
    parked: Mutex<Parked>,
    /// One permit per connection parked, for the users waiting in [`WorkPool::get`].
    arrived: Notify,
}

impl WorkPool {
    fn new(count: usize) -> WorkPool {
        WorkPool {
            count,
            parked: Mutex::new(Parked::default()),
            arrived: Notify::new(),
        }
    }

    /// At most this many connections are parked (frpc's pool plus a few that crossed a
    /// refill request); more are dropped.
    fn capacity(&self) -> usize {
        self.count + 10
    }

    /// Parks a work connection; `false` when the pool is full (the connection is dropped).
    pub(crate) fn park(&self, conn: Conn) -> bool {
        {
            let mut parked = self.parked.lock().unwrap();
            if parked.len() >= self.capacity() {
                return false;
            }
            parked.push(conn);
        }
        self.arrived.notify_one();
        true
    }

    fn take(&self) -> Option<Conn> {
        self.parked.lock().unwrap().pop()
    }

    /// A parked work connection, or a new one requested from frpc through `req_tx` (waiting
    /// up to `timeout`); either way one more is requested to refill the pool.
    pub(crate) async fn get(&self, req_tx: &Outbox, timeout: Duration) -> Result<Conn, String> {
        let conn = match self.take() {
            Some(c) => c,
            None => {
                req_tx
                    .send(Box::new(ReqWorkConn {}.into()))
                    .await
                    .map_err(|e| e.to_string())?;
                let wait = async {
                    loop {
                        // Registered before looking, so a connection parked in between
                        // still wakes this waiter (a permit a timed-out waiter received
                        // passes on to the next one when its `Notified` is dropped).
                        let arrived = self.arrived.notified();
                        tokio::pin!(arrived);
                        arrived.as_mut().enable();
                        if let Some(c) = self.take() {
                            return c;
                        }
                        arrived.await;
                    }
                };
                match tokio::time::timeout(timeout, wait).await {
                    Ok(c) => c,
                    Err(_) => return Err("timeout trying to get work connection".into()),
                }
            }
        };
        let _ = req_tx.try_send(Box::new(ReqWorkConn {}.into()));
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A work connection whose far end says `tag` on first read.
    async fn conn(tag: u8) -> Conn {
        let (ours, mut theirs) = tokio::io::duplex(64);
        theirs.write_all(&[tag]).await.unwrap();
        std::mem::forget(theirs);
        crate::transport::boxed(ours)
    }

    async fn tag(c: Conn) -> u8 {
        let Conn::Boxed(mut s) = c else {
            panic!("not the test's connection")
        };
        s.read_u8().await.unwrap()
    }

    #[tokio::test]
    async fn parked_connections_are_served_in_order_and_refilled() {
        let tx = Outbox::new();
        let rx = tx.clone();
        let pool = WorkPool::new(2);
        assert!(pool.park(conn(1).await));
        assert!(pool.park(conn(2).await));
        assert_eq!(
            tag(pool.get(&tx, Duration::from_secs(1)).await.unwrap()).await,
            1
        );
        assert_eq!(
            tag(pool.get(&tx, Duration::from_secs(1)).await.unwrap()).await,
            2
        );
        // One refill request per connection taken.
        for _ in 0..2 {
            assert!(matches!(*rx.try_recv().unwrap(), Message::ReqWorkConn(_)));
        }
        assert!(rx.try_recv().is_none());
        // Emptied: no buffer kept.
        assert_eq!(pool.parked.lock().unwrap().more.capacity(), 0);
    }

    #[tokio::test]
    async fn parking_stays_first_in_first_out_and_one_connection_allocates_nothing() {
        let tx = Outbox::new();
        let pool = WorkPool::new(3);
        assert!(pool.park(conn(1).await));
        assert_eq!(pool.parked.lock().unwrap().more.capacity(), 0);
        assert!(pool.park(conn(2).await));
        let get = || pool.get(&tx, Duration::from_secs(1));
        assert_eq!(tag(get().await.unwrap()).await, 1);
        assert!(pool.park(conn(3).await));
        assert_eq!(tag(get().await.unwrap()).await, 2);
        assert!(pool.park(conn(4).await));
        assert_eq!(tag(get().await.unwrap()).await, 3);
        assert_eq!(tag(get().await.unwrap()).await, 4);
        assert_eq!(pool.parked.lock().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn a_full_pool_refuses_more() {
        let pool = WorkPool::new(1);
        for i in 0..11 {
            assert!(pool.park(conn(i).await), "connection {i}");
        }
        assert!(!pool.park(conn(99).await));
    }

    #[tokio::test]
    async fn waiting_users_get_connections_parked_later() {
        let tx = Outbox::new();
        let rx = tx.clone();
        let pool = Arc::new(WorkPool::new(0));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (pool, tx) = (pool.clone(), tx.clone());
                tokio::spawn(async move { pool.get(&tx, Duration::from_secs(5)).await })
            })
            .collect();
        // Each waiter asked frpc for a connection.
        for _ in 0..3 {
            assert!(matches!(*rx.recv().await.unwrap(), Message::ReqWorkConn(_)));
        }
        for i in 0..3 {
            assert!(pool.park(conn(i).await));
        }
        let mut got = Vec::new();
        for w in waiters {
            got.push(tag(w.await.unwrap().unwrap()).await);
        }
        got.sort();
        assert_eq!(got, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_waiter_times_out_and_its_connection_serves_the_next() {
        let tx = Outbox::new();
        let pool = WorkPool::new(0);
        let e = pool
            .get(&tx, Duration::from_millis(50))
            .await
            .err()
            .unwrap();
        assert_eq!(e, "timeout trying to get work connection");
        assert!(pool.park(conn(7).await));
        assert_eq!(
            tag(pool.get(&tx, Duration::from_secs(1)).await.unwrap()).await,
            7
        );
    }

    #[tokio::test]
    async fn a_closed_control_fails_the_request() {
        let tx = Outbox::new();
        tx.close();
        let pool = WorkPool::new(0);
        let e = pool.get(&tx, Duration::from_secs(1)).await.err().unwrap();
        assert_eq!(e, "control connection is closed");
    }

    fn pong(error: &str) -> Box<Message> {
        Box::new(
            crate::msg::Pong {
                error: error.into(),
            }
            .into(),
        )
    }

    fn pong_error(m: Box<Message>) -> String {
        match *m {
            Message::Pong(p) => p.error,
            other => panic!("expected a Pong, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn outbox_delivers_in_order_and_keeps_no_buffer_when_drained() {
        let out = Outbox::new();
        for i in 0..10 {
            out.send(pong(&i.to_string())).await.unwrap();
        }
        assert!(out.queue.lock().unwrap().msgs.capacity() >= 10);
        for i in 0..10 {
            assert_eq!(pong_error(out.recv().await.unwrap()), i.to_string());
        }
        assert_eq!(out.queue.lock().unwrap().msgs.capacity(), 0);
        assert!(out.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_try_send_and_holds_send_until_room() {
        let out = Outbox::new();
        for _ in 0..out.capacity() {
            out.try_send(pong("")).unwrap();
        }
        assert_eq!(out.try_send(pong("x")), Err(SendError::Full));
        let sender = {
            let out = out.clone();
            tokio::spawn(async move { out.send(pong("late")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sender.is_finished(), "sent into a full queue");
        out.recv().await.unwrap();
        sender.await.unwrap().unwrap();
        let mut last = String::new();
        while let Some(m) = out.try_recv() {
            last = pong_error(m);
        }
        assert_eq!(last, "late");
        // A full queue times out.
        for _ in 0..out.capacity() {
            out.try_send(pong("")).unwrap();
        }
        let e = out.send_timeout(pong("t"), Duration::from_millis(20)).await;
        assert_eq!(e, Err(SendError::Full));
    }

    #[tokio::test]
    async fn closing_the_outbox_fails_waiting_senders_and_ends_the_reader() {
        let out = Outbox::new();
        for _ in 0..out.capacity() {
            out.try_send(pong("")).unwrap();
        }
        let sender = {
            let out = out.clone();
            tokio::spawn(async move { out.send(pong("late")).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        out.close();
        assert_eq!(sender.await.unwrap(), Err(SendError::Closed));
        assert!(out.recv().await.is_none(), "queued messages are dropped");
        assert_eq!(out.try_send(pong("")), Err(SendError::Closed));
        assert_eq!(
            SendError::Closed.to_string(),
            "control connection is closed"
        );

        // A reader waiting on an empty outbox ends when it closes.
        let out = Outbox::new();
        let reader = {
            let out = out.clone();
            tokio::spawn(async move { out.recv().await.is_none() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        out.close();
        assert!(reader.await.unwrap());
    }

    fn control(run_id: &str) -> Arc<Control> {
        Arc::new(Control::new(
            run_id.into(),
            &Login::default(),
            "127.0.0.1:1".parse().unwrap(),
            WireVersion::V1,
            0,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn silent_clients_end_with_heartbeat_timeout_and_pings_keep_them() {
        let controls = Controls::default();
        let (quiet, pinging) = (control("quiet"), control("pinging"));
        controls.insert(quiet.clone());
        controls.insert(pinging.clone());
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            pinging.pinged();
            assert_eq!(controls.end_silent(Duration::from_secs(3)), 0);
        }
        // 3.5 s since the login without a Ping: past the 3 s timeout.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(controls.end_silent(Duration::from_secs(3)), 1);
        assert_eq!(quiet.ended().await, "heartbeat timeout");
        let still = tokio::time::timeout(Duration::from_millis(10), pinging.ended()).await;
        assert!(still.is_err(), "a pinging client was ended");
    }

    #[test]
    fn controls_are_found_by_run_id_and_a_replaced_one_is_not_removed() {
        let controls = Controls::default();
        let (old, new) = (control("r1"), control("r1"));
        controls.insert(old.clone());
        assert!(Arc::ptr_eq(&controls.get("r1").unwrap(), &old));
        controls.insert(new.clone());
        assert!(Arc::ptr_eq(&controls.get("r1").unwrap(), &new));
        controls.remove(&old);
        assert!(Arc::ptr_eq(&controls.get("r1").unwrap(), &new));
        controls.remove(&new);
        assert!(controls.get("r1").is_none());
    }

    #[tokio::test]
    async fn the_first_reason_to_end_is_kept() {
        let c = control("c");
        c.end(EndReason::Replaced);
        c.end(EndReason::HeartbeatTimeout);
        assert_eq!(
            c.ended().await,
            "replaced by a new login with the same run id"
        );
    }

    /// Thousands of clients stay connected: a field added to `Control` is paid per client.
    #[test]
    fn a_control_stays_small() {
        assert!(
            std::mem::size_of::<Control>() <= 480,
            "Control is {} bytes",
            std::mem::size_of::<Control>()
        );
    }
}
