//! The registry of logged-in clients: one [`Control`] per frpc session, found by run id, with
//! its message queue and its work-connection pool ([`WorkPool`]).

use std::collections::{HashMap, HashSet};
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
/// each one taken is replaced by asking frpc for another.
pub(crate) struct WorkPool {
    /// How many frps asks for up front (the client's poolCount, capped by maxPoolCount).
    pub(crate) count: usize,
    req_tx: mpsc::Sender<Box<Message>>,
    work_tx: mpsc::Sender<Conn>,
    work_rx: tokio::sync::Mutex<mpsc::Receiver<Conn>>,
}

impl WorkPool {
    fn new(count: usize, req_tx: mpsc::Sender<Box<Message>>) -> WorkPool {
        let (work_tx, work_rx) = mpsc::channel(count + 10);
        WorkPool {
            count,
            req_tx,
            work_tx,
            work_rx: tokio::sync::Mutex::new(work_rx),
        }
    }

    /// Parks a work connection; `false` when the pool is full (the connection is dropped).
    pub(crate) fn park(&self, conn: Conn) -> bool {
        self.work_tx.try_send(conn).is_ok()
    }

    /// A parked work connection, or a new one requested from frpc (waiting up to `timeout`);
    /// either way one more is requested to refill the pool.
    pub(crate) async fn get(&self, timeout: Duration) -> Result<Conn, String> {
        let parked = {
            let mut rx = self.work_rx.lock().await;
            rx.try_recv().ok()
        };
        let conn = match parked {
            Some(c) => c,
            None => {
                self.req_tx
                    .send(Box::new(ReqWorkConn {}.into()))
                    .await
                    .map_err(|_| "control connection is closed".to_string())?;
                let wait = async {
                    let mut rx = self.work_rx.lock().await;
                    rx.recv().await
                };
                match tokio::time::timeout(timeout, wait).await {
                    Ok(Some(c)) => c,
                    Ok(None) => return Err("control connection is closed".into()),
                    Err(_) => return Err("timeout trying to get work connection".into()),
                }
            }
        };
        let _ = self.req_tx.try_send(Box::new(ReqWorkConn {}.into()));
        Ok(conn)
    }
}
