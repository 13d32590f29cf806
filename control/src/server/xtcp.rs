//! xtcp proxies, frps side (frp's `server/proxy/xtcp.go`): nothing to bind. The proxy is
//! registered with the NAT hole controller ([`super::nathole`]); for each visitor's session
//! the controller hands over a sid, which goes to the owner as `NatHoleSid` on a work
//! connection of its own (after the usual `StartWorkConn`), and the work connection is
//! closed. The rest happens on the control connections, and the data between the peers.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{Control, ProxyInfo, Started, State, on_close};
use crate::msg::{NatHoleSid, StartWorkConn};
use crate::msgconn::MsgConn;

/// Registers an xtcp proxy; closing it unregisters it and ends its sid deliveries.
pub(crate) fn start(
    st: &Arc<State>,
    ctl: &Arc<Control>,
    info: &Arc<ProxyInfo>,
) -> Result<Started, String> {
    // No allowUsers: only the owner's own user may visit.
    let allow_users = if info.msg.allow_users.is_empty() {
        vec![ctl.user.clone()]
    } else {
        info.msg.allow_users.clone()
    };
    let (listening, mut sids) =
        st.nathole
            .listen_client(&info.name, &info.msg.sk, allow_users, &ctl.run_id)?;
    let (st, ctl, info) = (st.clone(), ctl.clone(), info.clone());
    let task = tokio::spawn(async move {
        let mut sending = JoinSet::new();
        loop {
            tokio::select! {
                sid = sids.recv() => match sid {
                    Some(sid) => {
                        sending.spawn(send_sid(st.clone(), ctl.clone(), info.clone(), sid));
                    }
                    None => break,
                },
                Some(_) = sending.join_next(), if !sending.is_empty() => {}
            }
        }
        while sending.join_next().await.is_some() {}
    });
    Ok(Started {
        tasks: vec![task],
        on_close: on_close(move || drop(listening)),
        ..Default::default()
    })
}

/// One sid to the owner: a work connection, StartWorkConn, NatHoleSid, close.
async fn send_sid(st: Arc<State>, ctl: Arc<Control>, info: Arc<ProxyInfo>, sid: String) {
    let start = StartWorkConn {
        proxy_name: info.name.clone(),
        ..Default::default()
    };
    let (work, _) = match st.open_work_conn(&ctl, &info, &start).await {
        Ok(w) => w,
        Err(e) => {
            warn!("[{}] [{}] {e}", ctl.run_id, info.name);
            return;
        }
    };
    let mut mc = MsgConn::with_version(work, ctl.wire);
    let sent = mc
        .write_msg(
            &NatHoleSid {
                sid: sid.clone(),
                ..Default::default()
            }
            .into(),
        )
        .await;
    if let Err(e) = sent {
        warn!(
            "[{}] [{}] write nat hole sid package error, {e}",
            ctl.run_id, info.name
        );
        return;
    }
    debug!("[{}] [{}] nat hole sid [{sid}] sent", ctl.run_id, info.name);
    let (mut work, _) = mc.into_parts();
    let _ = work.shutdown().await;
}
