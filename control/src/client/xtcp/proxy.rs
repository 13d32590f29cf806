//! The xtcp proxy owner (frp's `XTCPProxy.InWorkConn`): frps hands it a work connection that
//! carries `NatHoleSid`; it prepares (STUN), sends `NatHoleClient`, gets frps' plan, punches,
//! reports the outcome (`NatHoleReport`) and then serves the visitor's P2P session, each
//! stream as a connection to the local service (or the plugin), with the proxy's
//! `useEncryption` / `useCompression` keyed by its `secretKey`. The work connection stays
//! open for as long as the session lives, as in frp.

use std::sync::Arc;

use dataplane::RateLimiter;
use tracing::{error, info, trace, warn};

use super::{EXCHANGE_TIMEOUT, exchange_info, log_resp, punch, tunnel};
use crate::client::{Client, plugin};
use crate::config::ProxyConfig;
use crate::crypto::CryptoKey;
use crate::msg::{Message, NatHoleClient, NatHoleReport, StartWorkConn};
use crate::msgconn::MsgConn;
use crate::transport::Conn;
use crate::transport::quic::QuicParams;

/// How long the owner waits for NatHoleSid on the work connection.
const SID_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Client {
    pub(in crate::client) async fn xtcp_work(
        self: Arc<Self>,
        name: String,
        cfg: Arc<ProxyConfig>,
        limiter: Option<Arc<RateLimiter>>,
        proxy_plugin: Option<Arc<dyn plugin::Plugin>>,
        start: StartWorkConn,
        mut mc: MsgConn<Conn>,
    ) {
        let tag = format!("[{name}] ");
        // frps sends it right after StartWorkConn; frp waits without a limit.
        let sid = match mc.read_msg_timeout(SID_TIMEOUT).await {
            Ok(Message::NatHoleSid(m)) => m,
            Ok(other) => {
                error!(
                    "{tag}xtcp read from workConn error: unexpected message {}",
                    other.name()
                );
                return;
            }
            Err(e) => {
                error!("{tag}xtcp read from workConn error: {e}");
                return;
            }
        };
        let Some(prepared) = super::prepare_logged(
            &tag,
            &self.cfg.nat_hole_stun_server,
            cfg.nat_traversal.as_ref(),
        )
        .await
        else {
            return;
        };
        let tid = punch::new_transaction_id();
        let wire_name = if self.cfg.user.is_empty() {
            name.clone()
        } else {
            format!("{}.{name}", self.cfg.user)
        };
        let m = NatHoleClient {
            transaction_id: tid.clone(),
            proxy_name: wire_name,
            sid: sid.sid.clone(),
            mapped_addrs: prepared.addrs.clone(),
            assisted_addrs: prepared.assisted.clone(),
        };
        trace!("{tag}nathole exchange info start");
        let resp = match exchange_info(&self.nathole, &tid, m.into(), EXCHANGE_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => {
                warn!("{tag}nathole exchange info error: {e}");
                return;
            }
        };
        log_resp(&tag, &resp);
        let key = CryptoKey::derive(cfg.secret_key.as_bytes());
        let (sock, raddr) = match punch::make_hole(prepared.sock, &resp, &key, &tag).await {
            Ok(r) => r,
            Err(e) => {
                warn!("{tag}make hole error: {e}");
                let _ = self.nathole.send(
                    NatHoleReport {
                        sid: resp.sid.clone(),
                        success: false,
                    }
                    .into(),
                );
                return;
            }
        };
        info!(
            "{tag}establishing nat hole connection successful, sid [{}], remoteAddr [{raddr}]",
            resp.sid
        );
        let _ = self.nathole.send(
            NatHoleReport {
                sid: resp.sid.clone(),
                success: true,
            }
            .into(),
        );
        let start = Arc::new(start);
        let handle = |c: Conn| {
            let (me, name, cfg, limiter, proxy_plugin, start, key) = (
                self.clone(),
                name.clone(),
                cfg.clone(),
                limiter.clone(),
                proxy_plugin.clone(),
                start.clone(),
                key.clone(),
            );
            tokio::spawn(async move {
                me.serve_tcp_work(
                    &name,
                    &cfg,
                    limiter,
                    proxy_plugin,
                    &start,
                    c,
                    Vec::new(),
                    &key,
                )
                .await
            });
        };
        let r = if resp.protocol == "kcp" {
            tunnel::serve_kcp(sock, raddr, &tag, handle).await
        } else {
            let params = QuicParams::from_config(&self.cfg.transport.quic);
            tunnel::serve_quic(sock, raddr, &params, &tag, handle).await
        };
        if let Err(e) = r {
            warn!("{tag}{e}");
        }
        drop(mc);
    }
}
