//! The registry of logged-in clients: one [`Control`] per frpc session, found by run id, with
//! its message queue and its work-connection pool ([`WorkPool`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::hooks::UserInfo;
use crate::msg::{Login, Message, ReqWorkConn};
use crate::transport::Conn;
use crate::wire_v2::WireVersion;

/// One logged-in frpc.
pub(crate) struct Control {
    pub(crate) run_id: String,
    pub(crate) login: Login,
    pub(crate) remote: SocketAddr,
    /// The wire protocol of this client's control connection. Its work connections speak the
    /// same one (checked when they arrive): frame StartWorkConn, and the UDPPacket/Ping
    /// messages of UDP work connections (frp >= 0.69.1), with
    /// `MsgConn::with_version(conn, ctl.wire)`.
    pub(crate) wire: WireVersion,
    /// Boxed: tokio's channel allocates its slots 32 at a time, and a `Message` is several
    /// hundred bytes (16 KiB per connected client unboxed).
    pub(crate) msg_tx: mpsc::Sender<Box<Message>>,
    /// Work connections parked for this client's proxies.
    pub(crate) pool: WorkPool,
    /// Proxies this client registered (wire names).
    pub(crate) proxies: Mutex<HashSet<String>>,
    pub(crate) ports_used: Mutex<usize>,
    /// Fired to make the session end (replaced by a new login with the same run id).
    pub(crate) kill: Notify,
    /// Fired once the session has fully cleaned up.
    done: Notify,
    finished: AtomicBool,
}

impl Control {
    pub(crate) fn new(
        run_id: String,
        login: Login,
        remote: SocketAddr,
        wire: WireVersion,
        msg_tx: mpsc::Sender<Box<Message>>,
        pool_count: usize,
    ) -> Control {
        Control {
            pool: WorkPool::new(pool_count, msg_tx.clone()),
            run_id,
            login,
            remote,
            wire,
            msg_tx,
            proxies: Mutex::new(HashSet::new()),
            ports_used: Mutex::new(0),
            kill: Notify::new(),
            done: Notify::new(),
            finished: AtomicBool::new(false),
        }
    }

    /// Who this client is, for server plugins.
    pub(crate) fn user_info(&self) -> UserInfo {
        UserInfo::of(&self.login, &self.run_id)
    }

    /// Marks the session as cleaned up, waking [`Control::wait_done`].
    pub(crate) fn set_done(&self) {
        self.finished.store(true, Ordering::SeqCst);
        self.done.notify_waiters();
    }

    pub(crate) async fn wait_done(&self) {
        loop {
            let n = self.done.notified();
            if self.finished.load(Ordering::SeqCst) {
                return;
            }
            n.await;
        }
    }
}

/// Logged-in clients by run id.
#[derive(Default)]
pub(crate) struct Controls {
    by_run_id: Mutex<HashMap<String, Arc<Control>>>,
}

impl Controls {
    pub(crate) fn get(&self, run_id: &str) -> Option<Arc<Control>> {
        self.by_run_id.lock().unwrap().get(run_id).cloned()
    }

    pub(crate) fn insert(&self, ctl: Arc<Control>) {
        self.by_run_id
            .lock()
            .unwrap()
            .insert(ctl.run_id.clone(), ctl);
    }

    /// Removes `ctl`, unless a newer session with its run id has replaced it.
    pub(crate) fn remove(&self, ctl: &Arc<Control>) {
        let mut map = self.by_run_id.lock().unwrap();
        if map.get(&ctl.run_id).is_some_and(|c| Arc::ptr_eq(c, ctl)) {
            map.remove(&ctl.run_id);
        }
    }

    /// Whether another session of `login`'s user holds its client id.
    pub(crate) fn client_id_online(&self, login: &Login) -> bool {
        !login.client_id.is_empty()
            && self.by_run_id.lock().unwrap().values().any(|c| {
                c.login.client_id == login.client_id
                    && c.login.user == login.user
                    && c.run_id != login.run_id
            })
    }
}

/// A client's pool of work connections (spec §8 step 5): frpc keeps `pool_count` parked;
/// each one taken is replaced by asking frpc for another. Holds no allocation while empty
/// (most clients run frp's default poolCount = 0).
pub(crate) struct WorkPool {
    /// How many frps asks for up front (the client's poolCount, capped by maxPoolCount).
    pub(crate) count: usize,
    req_tx: mpsc::Sender<Box<Message>>,
    parked: Mutex<VecDeque<Conn>>,
    /// One permit per connection parked, for the users waiting in [`WorkPool::get`].
    arrived: Notify,
}

impl WorkPool {
    fn new(count: usize, req_tx: mpsc::Sender<Box<Message>>) -> WorkPool {
        WorkPool {
            count,
            req_tx,
            parked: Mutex::new(VecDeque::new()),
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
            parked.push_back(conn);
        }
        self.arrived.notify_one();
        true
    }

    fn take(&self) -> Option<Conn> {
        let mut parked = self.parked.lock().unwrap();
        let conn = parked.pop_front();
        if parked.is_empty() {
            // A burst of parked connections leaves no buffer behind.
            parked.shrink_to_fit();
        }
        conn
    }

    /// A parked work connection, or a new one requested from frpc (waiting up to `timeout`);
    /// either way one more is requested to refill the pool.
    pub(crate) async fn get(&self, timeout: Duration) -> Result<Conn, String> {
        let conn = match self.take() {
            Some(c) => c,
            None => {
                self.req_tx
                    .send(Box::new(ReqWorkConn {}.into()))
                    .await
                    .map_err(|_| "control connection is closed".to_string())?;
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
        let _ = self.req_tx.try_send(Box::new(ReqWorkConn {}.into()));
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
        let (tx, mut rx) = mpsc::channel(100);
        let pool = WorkPool::new(2, tx);
        assert!(pool.park(conn(1).await));
        assert!(pool.park(conn(2).await));
        assert_eq!(
            tag(pool.get(Duration::from_secs(1)).await.unwrap()).await,
            1
        );
        assert_eq!(
            tag(pool.get(Duration::from_secs(1)).await.unwrap()).await,
            2
        );
        // One refill request per connection taken.
        for _ in 0..2 {
            assert!(matches!(*rx.try_recv().unwrap(), Message::ReqWorkConn(_)));
        }
        assert!(rx.try_recv().is_err());
        // Emptied: no buffer kept.
        assert_eq!(pool.parked.lock().unwrap().capacity(), 0);
    }

    #[tokio::test]
    async fn a_full_pool_refuses_more() {
        let (tx, _rx) = mpsc::channel(100);
        let pool = WorkPool::new(1, tx);
        for i in 0..11 {
            assert!(pool.park(conn(i).await), "connection {i}");
        }
        assert!(!pool.park(conn(99).await));
    }

    #[tokio::test]
    async fn waiting_users_get_connections_parked_later() {
        let (tx, mut rx) = mpsc::channel(100);
        let pool = Arc::new(WorkPool::new(0, tx));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.get(Duration::from_secs(5)).await })
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
        let (tx, _rx) = mpsc::channel(100);
        let pool = WorkPool::new(0, tx);
        let e = pool.get(Duration::from_millis(50)).await.err().unwrap();
        assert_eq!(e, "timeout trying to get work connection");
        assert!(pool.park(conn(7).await));
        assert_eq!(
            tag(pool.get(Duration::from_secs(1)).await.unwrap()).await,
            7
        );
    }

    #[tokio::test]
    async fn a_closed_control_fails_the_request() {
        let (tx, rx) = mpsc::channel(100);
        drop(rx);
        let pool = WorkPool::new(0, tx);
        let e = pool.get(Duration::from_secs(1)).await.err().unwrap();
        assert_eq!(e, "control connection is closed");
    }
}
