//! Secret proxies, frps side (spec §10.1, §10.2): `stcp` and `sudp` proxies have no public
//! port; visitors reach them by name with `NewVisitorConn` on a logical connection of their
//! own frpc's session.
//!
//! A visitor connection is admitted when the sign key matches the proxy's `sk` (plain
//! compare, as frp) and the visitor's user is in the proxy's `allowUsers` (`*` = anyone;
//! empty = the owner's own user). frps answers `NewVisitorConnResp` before any proxied byte,
//! terminates the visitor leg's sk-keyed encryption/compression (the flags the visitor sent)
//! and joins it with a work connection of the owner, like a tcp user connection. For `sudp`
//! between clients of different wire protocols the UDPPacket messages are decoded and
//! re-encoded instead ([`bridge_sudp`]), as frp ≥ 0.69.1 does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dataplane::Side;
use tracing::{debug, info, warn};

use super::{Control, ProxyInfo, Started, State};
use crate::auth;
use crate::crypto::{self, CryptoKey};
use crate::msg::{Message, NewVisitorConn, NewVisitorConnResp};
use crate::msgconn::{MsgConn, MsgReader, MsgWriter};
use crate::transport::Conn;
use crate::wire_v2::WireVersion;

/// Registers an stcp/sudp proxy: nothing to bind, it is found by name in the proxy table.
pub(crate) fn start(ctl: &Control, info: &ProxyInfo) -> Started {
    info!(
        "[{}] [{}] {} proxy custom listen success",
        ctl.run_id, info.name, info.proxy_type
    );
    Started::default()
}

/// Why a visitor connection was refused (frp's texts).
fn admit(st: &State, v: &NewVisitorConn) -> Result<(Arc<Control>, Arc<ProxyInfo>), String> {
    // The visitor's user is the user of the control whose run id it sent ("" without one).
    let visitor_user = if v.run_id.is_empty() {
        String::new()
    } else {
        match st.controls.get(&v.run_id) {
            Some(c) => c.user.clone(),
            None => return Err(format!("no client control found for run id [{}]", v.run_id)),
        }
    };
    let (owner_run_id, info) = match st.proxies.get(&v.proxy_name) {
        Some((run_id, info)) if matches!(info.proxy_type.as_str(), "stcp" | "sudp") => {
            (run_id, info)
        }
        _ => {
            return Err(format!(
                "custom listener for [{}] doesn't exist",
                v.proxy_name
            ));
        }
    };
    if !auth::verify_sign_key(&info.msg.sk, v.timestamp, &v.sign_key) {
        return Err(format!(
            "visitor connection of [{}] auth failed",
            v.proxy_name
        ));
    }
    let owner = st.controls.get(&owner_run_id);
    let Some(owner) = owner else {
        return Err(format!(
            "custom listener for [{}] doesn't exist",
            v.proxy_name
        ));
    };
    let allowed = if info.msg.allow_users.is_empty() {
        visitor_user == owner.user
    } else {
        info.msg
            .allow_users
            .iter()
            .any(|u| u == "*" || *u == visitor_user)
    };
    if !allowed {
        return Err(format!(
            "visitor connection of [{}] user [{visitor_user}] not allowed",
            v.proxy_name
        ));
    }
    Ok((owner, info))
}

impl State {
    /// A logical connection whose first message was `NewVisitorConn`.
    pub(crate) async fn handle_visitor_conn(
        self: Arc<Self>,
        mut mc: MsgConn<Conn>,
        v: NewVisitorConn,
        remote: SocketAddr,
    ) {
        let (owner, info) = match admit(&self, &v) {
            Ok(ok) => ok,
            Err(e) => {
                warn!("register visitor conn error: {e}");
                let error = if self.cfg.detailed_errors_to_client {
                    e
                } else {
                    "register visitor conn error".into()
                };
                let resp = NewVisitorConnResp {
                    proxy_name: v.proxy_name,
                    error,
                };
                let _ = mc.write_msg(&resp.into()).await;
                return;
            }
        };
        let resp = NewVisitorConnResp {
            proxy_name: v.proxy_name.clone(),
            error: String::new(),
        };
        if let Err(e) = mc.write_msg(&resp.into()).await {
            debug!("visitor connection from {remote}: write NewVisitorConnResp: {e}");
            return;
        }
        if !self.admit_user(&owner, &info, &remote).await {
            return;
        }
        let visitor_wire = mc.version();
        let key = CryptoKey::derive(info.msg.sk.as_bytes());
        let (inbound, outbound) =
            crypto::work_conn_layers(Some(&key), v.use_encryption, v.use_compression);
        let (conn, rest) = mc.into_parts();
        let start = super::tcp::start_work_conn_for(&info.name, &remote, self.local_bind_addr());
        debug!(
            "[{}] [{}] new visitor connection from {remote}",
            owner.run_id, info.name
        );
        if info.proxy_type == "sudp" && visitor_wire != owner.wire {
            info!(
                "[{}] [{}] bridge mixed SUDP payload codecs, proxy wireProtocol [{}], visitor wireProtocol [{}]",
                owner.run_id, info.name, owner.wire, visitor_wire
            );
            let visitor = VisitorLeg {
                conn,
                rest,
                inbound,
                outbound,
                wire: visitor_wire,
            };
            return self.bridge_sudp(owner, info, visitor, start).await;
        }
        let side = Side {
            endpoint: conn.into_endpoint(),
            prefix: rest.into(),
            inbound,
            outbound,
            initial_write: Default::default(),
        };
        self.join_user_conn(owner, info, side, start).await;
    }

    /// frps' own address for StartWorkConn's `dst` of visitor connections.
    fn local_bind_addr(&self) -> Option<SocketAddr> {
        format!("{}:{}", self.cfg.bind_addr, self.cfg.bind_port)
            .parse()
            .ok()
    }

    /// sudp between a v1 and a v2 client: UDPPacket both ways, Ping owner → visitor only.
    async fn bridge_sudp(
        self: Arc<Self>,
        owner: Arc<Control>,
        info: Arc<ProxyInfo>,
        visitor: VisitorLeg,
        start: crate::msg::StartWorkConn,
    ) {
        let (work, rest) = match self.open_work_conn(&owner, &info, &start).await {
            Ok(w) => w,
            Err(e) => {
                warn!("[{}] [{}] {e}", owner.run_id, info.name);
                return;
            }
        };
        let (w_in, w_out) =
            crypto::work_conn_layers(Some(&self.key), info.use_encryption, info.use_compression);
        let (wr, ww) = tokio::io::split(work);
        let (vr, vw) = tokio::io::split(visitor.conn);
        let (mut owner_r, mut owner_w, mut vis_r, mut vis_w) = match (
            MsgReader::with_layers(wr, owner.wire, w_in, &rest),
            MsgReader::with_layers(vr, visitor.wire, visitor.inbound, &visitor.rest),
        ) {
            (Ok(or), Ok(vr)) => (
                or,
                MsgWriter::with_layers(ww, owner.wire, w_out),
                vr,
                MsgWriter::with_layers(vw, visitor.wire, visitor.outbound),
            ),
            (Err(e), _) | (_, Err(e)) => {
                warn!("[{}] [{}] sudp bridge: {e}", owner.run_id, info.name);
                return;
            }
        };
        let counters = info.counters.clone();
        let to_visitor = async {
            loop {
                match owner_r.read_msg().await? {
                    m @ Message::UdpPacket(_) => {
                        if let Message::UdpPacket(p) = &m {
                            counters
                                .b_to_a
                                .fetch_add(p.content.len() as u64, Ordering::Relaxed);
                        }
                        vis_w.write_msg(&m).await?;
                    }
                    m @ Message::Ping(_) => {
                        vis_w.write_msg(&m).await?;
                    }
                    _ => {}
                }
            }
        };
        let to_owner = async {
            loop {
                if let Message::UdpPacket(p) = vis_r.read_msg().await? {
                    counters
                        .a_to_b
                        .fetch_add(p.content.len() as u64, Ordering::Relaxed);
                    owner_w.write_msg(&Message::UdpPacket(p)).await?;
                }
            }
        };
        let r: Result<(), crate::msgconn::MsgError> = tokio::select! {
            r = to_visitor => r,
            r = to_owner => r,
        };
        if let Err(e) = r {
            debug!("[{}] [{}] sudp bridge closed: {e}", owner.run_id, info.name);
        }
    }
}

/// The visitor side of an sudp bridge, its sk layers not yet applied.
struct VisitorLeg {
    conn: Conn,
    rest: Vec<u8>,
    inbound: crypto::TransformChain,
    outbound: crypto::TransformChain,
    wire: WireVersion,
}
