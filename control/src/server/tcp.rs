//! tcp proxies: a listener on `remotePort`; every accepted user connection is paired with a
//! work connection (spec §8).
//!
//! Load-balancing groups (`loadBalancer.group` / `groupKey`, spec §7.3): the first proxy of a
//! group binds the port; later ones with the same remote port and key join it, and each user
//! connection goes to a randomly chosen member. The port stays open until the last member
//! leaves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataplane::{Endpoint, Side};
use futures_util::future::BoxFuture;
use rand::RngExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::{Control, ProxyInfo, Started, State};
use crate::msg::StartWorkConn;
use crate::transport;

/// Binds the proxy's port and starts accepting users.
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
    if !np.group.is_empty() {
        return start_group(st, ctl, info);
    }
    if !(0..=65535).contains(&np.remote_port) {
        return Err("port not allowed".into());
    }
    let listener = acquire_port(st, &info.name, np.remote_port as u16).await?;
    *ctl.ports_used.lock().unwrap() += 1;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let started = Started {
        port: Some(port),
        remote_addr: format!(":{port}"),
        ..Default::default()
    };
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            st.proxies.release(ctl, started).await;
            return Err(e.to_string());
        }
    };
    info!(
        "[{}] [{}] tcp proxy listen port [{port}]",
        ctl.run_id, info.name
    );
    let task = tokio::spawn(accept_loop(st.clone(), listener, ctl.clone(), info.clone()));
    Ok(Started {
        tasks: vec![task],
        ..started
    })
}

/// Binds the port, giving a closing proxy's listener a moment to go. A proxy's own client
/// closes it (CloseProxy, logout) before it reads the next message, but a registration from
/// another client can arrive while that close is under way, and must not see "port
/// unavailable" for a port that is being freed.
async fn acquire_port(
    st: &Arc<State>,
    name: &str,
    port: u16,
) -> Result<std::net::TcpListener, String> {
    let mut attempts = 0;
    loop {
        let r = st.proxies.ports.lock().unwrap().acquire(name, port);
        match r {
            Err(e) if port != 0 && e == "port unavailable" && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

async fn accept_loop(
    st: Arc<State>,
    listener: TcpListener,
    ctl: Arc<Control>,
    info: Arc<ProxyInfo>,
) {
    let mut acceptor = crate::listen::Acceptor::new(format!("[{}] [{}] ", ctl.run_id, info.name));
    loop {
        let (user, remote) = acceptor.accept(&listener).await;
        let (st, ctl, info) = (st.clone(), ctl.clone(), info.clone());
        tokio::spawn(async move { handle_user(st, ctl, info, user, remote).await });
    }
}

/// A group member: registration id, its client, its proxy.
type GroupMember = (u64, Arc<Control>, Arc<ProxyInfo>);

/// A tcp load-balancing group: one port, several proxies.
pub(crate) struct TcpGroup {
    key: String,
    /// The remotePort the members asked for (0 = any); all must ask for the same.
    requested_port: i64,
    port: u16,
    members: Mutex<Vec<GroupMember>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

/// Joins (or creates) the proxy's group; errors are frp's.
fn start_group(
    st: &Arc<State>,
    ctl: &Arc<Control>,
    info: &Arc<ProxyInfo>,
) -> Result<Started, String> {
    let np = &info.msg;
    let id = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed);
    let member = (id, ctl.clone(), info.clone());
    let mut groups = st.proxies.tcp_groups.lock().unwrap();
    let group = match groups.get(&np.group) {
        Some(g) => {
            if g.requested_port != np.remote_port {
                return Err("group should have same remote port".into());
            }
            if g.key != np.group_key {
                return Err("group auth failed".into());
            }
            let mut members = g.members.lock().unwrap();
            if members.iter().any(|m| m.2.name == info.name) {
                return Err("group proxy repeated".into());
            }
            members.push(member);
            g.clone()
        }
        None => {
            if !(0..=65535).contains(&np.remote_port) {
                return Err("port not allowed".into());
            }
            let std_listener: std::net::TcpListener = st
                .proxies
                .ports
                .lock()
                .unwrap()
                .acquire(&info.name, np.remote_port as u16)?;
            let port = std_listener.local_addr().map(|a| a.port()).unwrap_or(0);
            let listener = match TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    st.proxies.ports.lock().unwrap().release(port);
                    return Err(e.to_string());
                }
            };
            let g = Arc::new(TcpGroup {
                key: np.group_key.clone(),
                requested_port: np.remote_port,
                port,
                members: Mutex::new(vec![member]),
                task: Mutex::new(None),
            });
            let task = tokio::spawn(group_accept_loop(st.clone(), listener, g.clone()));
            *g.task.lock().unwrap() = Some(task);
            groups.insert(np.group.clone(), g.clone());
            info!(
                "[{}] [{}] tcp group [{}] listen port [{port}]",
                ctl.run_id, info.name, np.group
            );
            g
        }
    };
    drop(groups);
    *ctl.ports_used.lock().unwrap() += 1;
    let (weak, ctl2, name) = (Arc::downgrade(st), ctl.clone(), np.group.clone());
    let port = group.port;
    // The last member out stops the group's listener and frees its port once the listener
    // is closed.
    let leave = move || -> BoxFuture<'static, ()> {
        {
            let mut used = ctl2.ports_used.lock().unwrap();
            *used = used.saturating_sub(1);
        }
        let Some(st) = weak.upgrade() else {
            return Box::pin(std::future::ready(()));
        };
        let task = {
            let mut groups = st.proxies.tcp_groups.lock().unwrap();
            let empty = {
                let mut members = group.members.lock().unwrap();
                members.retain(|m| m.0 != id);
                members.is_empty()
            };
            if !empty {
                return Box::pin(std::future::ready(()));
            }
            if groups.get(&name).is_some_and(|g| Arc::ptr_eq(g, &group)) {
                groups.remove(&name);
            }
            group.task.lock().unwrap().take()
        };
        Box::pin(async move {
            super::proxies::stop_tasks(task.into_iter().collect()).await;
            st.proxies.ports.lock().unwrap().release(port);
        })
    };
    Ok(Started {
        remote_addr: format!(":{port}"),
        on_close: Some(Box::new(leave)),
        ..Default::default()
    })
}

async fn group_accept_loop(st: Arc<State>, listener: TcpListener, group: Arc<TcpGroup>) {
    let mut acceptor = crate::listen::Acceptor::new(format!("[tcp group port {}] ", group.port));
    loop {
        let (user, remote) = acceptor.accept(&listener).await;
        let picked = {
            let members = group.members.lock().unwrap();
            if members.is_empty() {
                None
            } else {
                let i = rand::rng().random_range(0..members.len());
                Some((members[i].1.clone(), members[i].2.clone()))
            }
        };
        if let Some((ctl, info)) = picked {
            tokio::spawn(handle_user(st.clone(), ctl, info, user, remote));
        }
    }
}

async fn handle_user(
    st: Arc<State>,
    ctl: Arc<Control>,
    info: Arc<ProxyInfo>,
    user: TcpStream,
    remote: SocketAddr,
) {
    let _ = user.set_nodelay(true);
    debug!(
        "[{}] [{}] get a user connection [{remote}]",
        ctl.run_id, info.name
    );
    if !st.admit_user(&ctl, &info, &remote).await {
        return;
    }
    let start = start_work_conn_for(&info.name, &remote, user.local_addr().ok());
    st.join_user_conn(ctl, info, Side::plain(Endpoint::Tcp(user)), start)
        .await;
}

/// StartWorkConn carrying the user's address and the frps socket address it reached.
pub(crate) fn start_work_conn_for(
    proxy_name: &str,
    remote: &SocketAddr,
    local: Option<SocketAddr>,
) -> StartWorkConn {
    let (src_addr, src_port) = transport::split_addr(remote);
    let (dst_addr, dst_port) = local.map(|a| transport::split_addr(&a)).unwrap_or_default();
    StartWorkConn {
        proxy_name: proxy_name.to_string(),
        src_addr,
        dst_addr,
        src_port,
        dst_port,
        error: String::new(),
    }
}
