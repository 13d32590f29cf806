//! `socks5` (`username`, `password`): a SOCKS5 server (RFC 1928) on each user connection,
//! CONNECT only, with username/password authentication (RFC 1929) when either is set — then
//! it is the only method offered, as in frp (go-socks5 with static credentials). The protocol
//! is `fast-socks5`'s; frpc dials the target itself and hands the pair to the data plane.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fast_socks5::server::Socks5ServerProtocol;
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{ReplyError, Socks5Command};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tracing::debug;

use super::{ConnInfo, Plugin, Relay, UserConn};
use crate::config::ClientPluginConfig;

/// How long a client may take to authenticate and send its request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct Socks5 {
    /// (username, password) when authentication is on.
    credentials: Option<Arc<(String, String)>>,
}

impl Socks5 {
    pub(crate) fn new(cfg: &ClientPluginConfig) -> Self {
        let on = !cfg.username.is_empty() || !cfg.password.is_empty();
        Socks5 {
            credentials: on.then(|| Arc::new((cfg.username.clone(), cfg.password.clone()))),
        }
    }
}

/// The RFC 1928 reply for a failed connect (go-socks5's choice).
fn reply_for(e: &std::io::Error) -> ReplyError {
    let text = e.to_string();
    if e.kind() == std::io::ErrorKind::ConnectionRefused || text.contains("refused") {
        ReplyError::ConnectionRefused
    } else if text.contains("network is unreachable") {
        ReplyError::NetworkUnreachable
    } else {
        ReplyError::HostUnreachable
    }
}

impl Plugin for Socks5 {
    fn name(&self) -> &'static str {
        "socks5"
    }

    fn handle(&self, user: UserConn, info: ConnInfo, relay: Relay) -> BoxFuture<'static, ()> {
        let credentials = self.credentials.clone();
        async move {
            let name = info.proxy;
            let handshake = async {
                let proto = match &credentials {
                    None => Socks5ServerProtocol::accept_no_auth(user).await?,
                    Some(c) => {
                        let check = |u: String, p: String| {
                            bool::from(u.as_bytes().ct_eq(c.0.as_bytes()))
                                & bool::from(p.as_bytes().ct_eq(c.1.as_bytes()))
                        };
                        Socks5ServerProtocol::accept_password_auth(user, check)
                            .await?
                            .0
                    }
                };
                proto.read_command().await
            };
            let (proto, cmd, target) =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        debug!("[{name}] socks5: {e}");
                        return;
                    }
                    Err(_) => {
                        debug!("[{name}] socks5: handshake timeout");
                        return;
                    }
                };
            if cmd != Socks5Command::TCPConnect {
                debug!("[{name}] socks5: unsupported command {cmd:?}");
                let _ = proto.reply_error(&ReplyError::CommandNotSupported).await;
                return;
            }
            let dialed = match &target {
                TargetAddr::Ip(addr) => TcpStream::connect(addr).await,
                TargetAddr::Domain(host, port) => TcpStream::connect((host.as_str(), *port)).await,
            };
            let remote = match dialed {
                Ok(s) => s,
                Err(e) => {
                    debug!("[{name}] socks5: connect to {target}: {e}");
                    let _ = proto.reply_error(&reply_for(&e)).await;
                    return;
                }
            };
            crate::transport::tune_tcp(&remote, 0);
            let bound = match remote.local_addr() {
                Ok(a) => a,
                Err(_) => return,
            };
            let user = match proto.reply_success(bound).await {
                Ok(u) => u,
                Err(e) => {
                    debug!("[{name}] socks5: {e}");
                    return;
                }
            };
            relay
                .join(user, dataplane::Endpoint::Tcp(remote), BytesMut::new())
                .await;
        }
        .boxed()
    }
}
