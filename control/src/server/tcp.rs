//! tcp proxies: a listener on `remotePort`; every accepted user connection is paired with a
//! work connection (spec §8).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dataplane::{Endpoint, Side};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

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
    if !(0..=65535).contains(&np.remote_port) {
        return Err("port not allowed".into());
    }
    let listener: std::net::TcpListener = st
        .ports
        .lock()
        .unwrap()
        .acquire(&info.name, np.remote_port as u16)?;
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
            st.release(ctl, started);
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

async fn accept_loop(
    st: Arc<State>,
    listener: TcpListener,
    ctl: Arc<Control>,
    info: Arc<ProxyInfo>,
) {
    loop {
        match listener.accept().await {
            Ok((user, remote)) => {
                let (st, ctl, info) = (st.clone(), ctl.clone(), info.clone());
                tokio::spawn(async move { handle_user(st, ctl, info, user, remote).await });
            }
            Err(e) => {
                warn!("[{}] [{}] accept: {e}", ctl.run_id, info.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
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
