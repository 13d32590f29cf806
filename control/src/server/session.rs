//! A client's session on frps: Login (auth, run id, the control's message loop), the control
//! messages (NewProxy, CloseProxy, Ping) and the work connections that join its pool.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use rand::RngExt;
use tokio::io::{ReadHalf, WriteHalf};
use tracing::{debug, info, warn};

use super::State;
use super::control::{Control, EndReason, Outbox};
use super::hooks::{LoginContent, NewProxyContent, NewWorkConnContent, Op, PingContent};
use super::proxies::proxy_type;
use crate::handshake::{self, Role};
use crate::msg::{
    Login, LoginResp, Message, NewProxyResp, NewWorkConn, Pong, ReqWorkConn, StartWorkConn,
};
use crate::msgconn::{MsgConn, MsgError, MsgReader, MsgWriter};
use crate::transport::Conn;
use crate::wire_v2::CryptoContext;

/// A client that logged in: its control and the two halves of its control connection. The
/// control's task reads messages from one and writes `ctl.msg_tx`'s queue to the other.
struct LoggedIn {
    ctl: Arc<Control>,
    reader: MsgReader<ReadHalf<Conn>>,
    writer: MsgWriter<WriteHalf<Conn>>,
}

impl State {
    /// A control connection from its Login to the client's exit. Only the message loop and
    /// the queue's writer stay in the returned future for the client's lifetime: logging in
    /// (with the Login and the connection it consumes) and cleaning up are boxed, so the
    /// control's task holds a few hundred bytes, not its largest step's state (thousands of
    /// clients stay connected).
    pub(super) fn handle_login(
        self: Arc<Self>,
        mc: MsgConn<Conn>,
        login: Login,
        remote: SocketAddr,
        crypto: Option<CryptoContext>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let log_in = Box::pin(self.clone().log_in(mc, login, remote, crypto));
        Box::pin(async move {
            let Some(LoggedIn {
                ctl,
                mut reader,
                writer,
            }) = log_in.await
            else {
                return;
            };
            // One task reads and writes: the writer runs beside the message loop (which may
            // wait on a full queue while the writer empties it) and never ends it.
            let reason = tokio::select! {
                reason = self.control_loop(&ctl, &mut reader) => reason,
                never = write_queue(&ctl.msg_tx, writer) => match never {},
            };
            info!(
                "[{}] control from {} closed: {reason}",
                ctl.run_id, ctl.remote
            );
            ctl.msg_tx.close();
            Box::pin(self.cleanup_control(&ctl)).await;
            // The control connection is closed before the exit is reported, as frp does:
            // the writer's half went with the select above, the reader's goes here.
            drop(reader);
            info!("[{}] client exit success", ctl.run_id);
        })
    }

    /// Login: plugins, auth, run id, registration, LoginResp, the writer task. `None` when
    /// the login was refused or the answer could not be written.
    async fn log_in(
        self: Arc<Self>,
        mut mc: MsgConn<Conn>,
        login: Login,
        remote: SocketAddr,
        crypto: Option<CryptoContext>,
    ) -> Option<LoggedIn> {
        // Server plugins see the Login first and may rewrite or refuse it (frp's order).
        let login = match self.login_hooks(login, remote).await {
            Ok(login) => login,
            Err(reason) => {
                self.refuse_login(&mut mc, remote, reason).await;
                return None;
            }
        };
        info!(
            "client login info: ip [{remote}] version [{}] hostname [{}] os [{}] arch [{}] wire protocol [{}]",
            login.version,
            login.hostname,
            login.os,
            login.arch,
            mc.version()
        );
        let checked = match handshake::check_control_crypto(mc.version(), crypto.as_ref()) {
            Ok(()) => self.auth.verify_login(&login).await,
            Err(e) => Err(e.to_string()),
        }
        .and_then(|()| self.check_login(&login));
        if let Err(reason) = checked {
            self.refuse_login(&mut mc, remote, reason).await;
            return None;
        }
        let run_id = if login.run_id.is_empty() {
            new_run_id()
        } else {
            login.run_id.clone()
        };

        // A client logging in again with its run id replaces its old session: tear that one
        // down completely (ports released) before the new one starts.
        let old = self.controls.get(&run_id);
        if let Some(old) = old {
            info!("[{run_id}] replacing the previous session of this client");
            old.end(EndReason::Replaced);
            let _ = tokio::time::timeout(Duration::from_secs(5), old.wait_done()).await;
        }

        let max_pool = self.cfg.transport.max_pool_count.max(0) as usize;
        let pool_count = (login.pool_count.max(0) as usize).min(max_pool);
        let ctl = Arc::new(Control::new(
            run_id.clone(),
            &login,
            remote,
            mc.version(),
            pool_count,
        ));

        // Registered before LoginResp goes out, as frp does: the client may open visitor and
        // work connections naming its run id the moment it reads the answer.
        self.controls.insert(ctl.clone());
        let resp = LoginResp {
            version: crate::FRP_VERSION.into(),
            run_id: run_id.clone(),
            error: String::new(),
        };
        if let Err(e) = mc.write_msg(&resp.into()).await {
            warn!("[{run_id}] write LoginResp: {e}");
            self.controls.remove(&ctl);
            return None;
        }
        let enabled = handshake::enable_control_encryption(
            &mut mc,
            crypto.as_ref(),
            &self.token,
            &self.key,
            Role::Server,
        );
        if let Err(e) = enabled {
            warn!("[{run_id}] control connection: {e}");
            self.controls.remove(&ctl);
            return None;
        }
        self.stats
            .on_login(&run_id, &login, remote, ctl.wire.as_str());
        info!("[{run_id}] client login success, pool count {pool_count}");

        let (reader, writer) = mc.split();
        Some(LoggedIn {
            ctl,
            reader,
            writer,
        })
    }

    /// The control's messages until the client leaves, goes silent past heartbeatTimeout (the
    /// server's heartbeat check ends it: see [`super::control::Controls::end_silent`]), or is
    /// replaced; returns why it ended.
    async fn control_loop(
        self: &Arc<Self>,
        ctl: &Arc<Control>,
        reader: &mut MsgReader<ReadHalf<Conn>>,
    ) -> String {
        // frpc's pool, asked for up front (with the writer running: the queue may fill).
        for _ in 0..ctl.pool.count {
            let _ = ctl.msg_tx.send(Box::new(ReqWorkConn {}.into())).await;
        }
        loop {
            // The message leaves the select boxed: the select's output and the message would
            // otherwise take ~0.5 KB each in this long-lived future while `dispatch` runs.
            let m = tokio::select! {
                r = reader.read_msg() => match r {
                    Ok(m) => Box::new(m),
                    Err(MsgError::Closed) => break "client closed the control connection".into(),
                    Err(e) => break format!("control connection error: {e}"),
                },
                reason = ctl.ended() => break reason.into(),
            };
            Box::pin(self.dispatch(ctl, *m)).await;
        }
    }

    async fn login_hooks(&self, login: Login, remote: SocketAddr) -> Result<Login, String> {
        if !self.hooks.has(Op::Login) {
            return Ok(login);
        }
        let content = LoginContent {
            login,
            client_address: remote.to_string(),
        };
        Ok(self.hooks.login(content).await?.login)
    }

    async fn refuse_login(&self, mc: &mut MsgConn<Conn>, remote: SocketAddr, reason: String) {
        warn!("login from {remote} refused: {reason}");
        let error = if self.cfg.detailed_errors_to_client {
            reason
        } else {
            "invalid Login".into()
        };
        let resp = LoginResp {
            version: crate::FRP_VERSION.into(),
            run_id: String::new(),
            error,
        };
        let _ = mc.write_msg(&resp.into()).await;
    }

    fn check_login(&self, login: &Login) -> Result<(), String> {
        if self.controls.client_id_online(login) {
            return Err(format!(
                "client_id [{}] for user [{}] is already online",
                login.client_id, login.user
            ));
        }
        Ok(())
    }

    /// Handles one control message.
    async fn dispatch(self: &Arc<Self>, ctl: &Arc<Control>, m: Message) {
        match m {
            Message::NewProxy(np) => {
                // Server plugins may rewrite or refuse the proxy before it is registered.
                let (np, registered) = if self.hooks.has(Op::NewProxy) {
                    let content = NewProxyContent {
                        user: ctl.user_info(),
                        new_proxy: np,
                    };
                    match self.hooks.new_proxy(content.clone()).await {
                        Ok(c) => {
                            let r = self.register_proxy(ctl, &c.new_proxy).await;
                            (c.new_proxy, r)
                        }
                        Err(e) => (content.new_proxy, Err(e)),
                    }
                } else {
                    let r = self.register_proxy(ctl, &np).await;
                    (np, r)
                };
                let resp = match registered {
                    Ok(remote_addr) => {
                        info!(
                            "[{}] new proxy [{}] type [{}] success",
                            ctl.run_id,
                            np.proxy_name,
                            proxy_type(&np)
                        );
                        NewProxyResp {
                            proxy_name: np.proxy_name,
                            remote_addr,
                            error: String::new(),
                        }
                    }
                    Err(e) => {
                        warn!(
                            "[{}] new proxy [{}] type [{}] error: {e}",
                            ctl.run_id,
                            np.proxy_name,
                            proxy_type(&np)
                        );
                        let error = if self.cfg.detailed_errors_to_client {
                            e
                        } else {
                            format!("new proxy [{}] error", np.proxy_name)
                        };
                        NewProxyResp {
                            proxy_name: np.proxy_name,
                            remote_addr: String::new(),
                            error,
                        }
                    }
                };
                let _ = ctl.msg_tx.send(Box::new(resp.into())).await;
            }
            Message::CloseProxy(cp) => {
                let owned = ctl.proxies.lock().unwrap().remove(&cp.proxy_name);
                if owned {
                    self.close_proxy(ctl, &cp.proxy_name).await;
                    info!("[{}] close proxy [{}] success", ctl.run_id, cp.proxy_name);
                }
            }
            Message::Ping(p) => {
                let p = if self.hooks.has(Op::Ping) {
                    let content = PingContent {
                        user: ctl.user_info(),
                        ping: p,
                    };
                    match self.hooks.ping(content).await {
                        Ok(c) => c.ping,
                        Err(e) => {
                            warn!("[{}] received invalid ping: {e}", ctl.run_id);
                            let error = if self.cfg.detailed_errors_to_client {
                                e
                            } else {
                                "invalid ping".to_string()
                            };
                            let _ = ctl.msg_tx.send(Box::new(Pong { error }.into())).await;
                            return;
                        }
                    }
                } else {
                    p
                };
                if let Err(error) = self.auth.verify_ping(&p).await {
                    warn!("[{}] invalid ping: {error}", ctl.run_id);
                    let _ = ctl.msg_tx.send(Box::new(Pong { error }.into())).await;
                    return;
                }
                ctl.pinged();
                let _ = ctl.msg_tx.send(Box::new(Pong::default().into())).await;
            }
            Message::NatHoleVisitor(m) => {
                self.nathole.handle_visitor(m, nathole_peer(ctl));
            }
            Message::NatHoleClient(m) => {
                self.nathole.handle_client(m, &nathole_peer(ctl));
            }
            Message::NatHoleReport(m) => {
                self.nathole.handle_report(m, &nathole_peer(ctl));
            }
            other => {
                debug!("[{}] ignoring control message {}", ctl.run_id, other.name());
            }
        }
    }

    async fn cleanup_control(&self, ctl: &Arc<Control>) {
        let names: Vec<String> = ctl.proxies.lock().unwrap().drain().collect();
        for name in names {
            self.close_proxy(ctl, &name).await;
        }
        self.controls.remove(ctl);
        self.stats.on_logout(&ctl.run_id, &ctl.user, &ctl.client_id);
        ctl.set_done();
    }

    pub(super) async fn handle_new_work_conn(
        self: Arc<Self>,
        mut mc: MsgConn<Conn>,
        nwc: NewWorkConn,
        remote: SocketAddr,
    ) {
        let ctl = self.controls.get(&nwc.run_id);
        let Some(ctl) = ctl else {
            warn!(
                "no client control found for run id [{}] (work connection from {remote})",
                nwc.run_id
            );
            return;
        };
        if mc.version() != ctl.wire {
            warn!(
                "[{}] work connection from {remote} speaks wire protocol {} but its control speaks {}; closed",
                ctl.run_id,
                mc.version(),
                ctl.wire
            );
            return;
        }
        let nwc = if self.hooks.has(Op::NewWorkConn) {
            let content = NewWorkConnContent {
                user: ctl.user_info(),
                new_work_conn: nwc,
            };
            match self.hooks.new_work_conn(content).await {
                Ok(c) => c.new_work_conn,
                Err(e) => {
                    warn!(
                        "[{}] invalid NewWorkConn with run id [{}]: {e}",
                        ctl.run_id, ctl.run_id
                    );
                    let error = if self.cfg.detailed_errors_to_client {
                        e
                    } else {
                        "invalid NewWorkConn".to_string()
                    };
                    let start = StartWorkConn {
                        error,
                        ..Default::default()
                    };
                    let _ = mc.write_msg(&start.into()).await;
                    return;
                }
            }
        } else {
            nwc
        };
        if let Err(reason) = self.auth.verify_new_work_conn(&nwc).await {
            warn!(
                "[{}] invalid NewWorkConn from {remote}: {reason}",
                nwc.run_id
            );
            let error = if self.cfg.detailed_errors_to_client {
                reason
            } else {
                "invalid NewWorkConn".to_string()
            };
            let _ = mc
                .write_msg(
                    &StartWorkConn {
                        error,
                        ..Default::default()
                    }
                    .into(),
                )
                .await;
            return;
        }
        let (conn, rest) = mc.into_parts();
        if !rest.is_empty() {
            warn!(
                "[{}] work connection sent {} unexpected bytes before StartWorkConn; closed",
                ctl.run_id,
                rest.len()
            );
            return;
        }
        if !ctl.pool.park(conn) {
            debug!("[{}] work connection pool is full, discarding", ctl.run_id);
        }
    }
}

/// The client of `ctl` as the NAT hole controller knows it.
fn nathole_peer(ctl: &Arc<Control>) -> super::nathole::Peer {
    super::nathole::Peer {
        run_id: ctl.run_id.clone(),
        user: ctl.user.clone(),
        tx: ctl.clone(),
    }
}

/// Writes the control's queued messages to frpc. Never returns: after a write error it closes
/// the queue (senders fail from then on) and waits; the message loop notices the broken
/// connection on its side and ends the session.
///
/// A poll loop over the writer rather than an async fn awaiting `recv` and `write_msg`: its
/// state is the writer and a position, not those futures (this runs for every connected
/// client's whole session).
fn write_queue(
    outbox: &Outbox,
    writer: MsgWriter<WriteHalf<Conn>>,
) -> impl Future<Output = std::convert::Infallible> + Send + '_ {
    let mut writer = writer;
    // Bytes of the message being written; `None` while waiting for one.
    let mut sending: Option<usize> = None;
    let mut failed = false;
    std::future::poll_fn(move |cx| {
        while !failed {
            if let Some(pos) = &mut sending {
                let sent = ready!(writer.poll_send(cx, pos));
                sending = None;
                if let Err(e) = sent {
                    debug!("control write: {e}");
                    failed = true;
                    outbox.close();
                    break;
                }
            }
            let Some(m) = ready!(outbox.poll_recv(Some(cx))) else {
                break;
            };
            match writer.start_msg(&m) {
                Ok(()) => sending = Some(0),
                Err(e) => {
                    debug!("control write: {e}");
                    failed = true;
                    outbox.close();
                }
            }
        }
        Poll::Pending
    })
}

fn new_run_id() -> String {
    let b: [u8; 8] = rand::rng().random();
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Pong;
    use tokio::io::AsyncReadExt;

    fn pong() -> Box<Message> {
        Box::new(Pong::default().into())
    }

    #[tokio::test]
    async fn the_writer_sends_queued_messages_in_order() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let (_r, w) = tokio::io::split(crate::transport::boxed(ours));
        let outbox = Outbox::new();
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move { match write_queue(&outbox, MsgWriter::new(w)).await {} }
        });
        for _ in 0..3 {
            outbox.send(pong()).await.unwrap();
        }
        let mut expected = Vec::new();
        for _ in 0..3 {
            crate::msg::encode_v1_into(&Pong::default().into(), &mut expected);
        }
        let mut got = vec![0; expected.len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        writer.abort();
    }

    #[tokio::test]
    async fn a_write_error_closes_the_queue() {
        let (ours, theirs) = tokio::io::duplex(1024);
        drop(theirs);
        let (_r, w) = tokio::io::split(crate::transport::boxed(ours));
        let outbox = Outbox::new();
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move { match write_queue(&outbox, MsgWriter::new(w)).await {} }
        });
        outbox.send(pong()).await.unwrap();
        // Senders fail once the writer has failed (none waits on a queue nobody empties).
        let closed = async {
            loop {
                if outbox.send(pong()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("the queue was not closed after the write failed");
        assert!(!writer.is_finished(), "the writer never ends the session");
        writer.abort();
    }
}
