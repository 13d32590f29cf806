//! `unix_domain_socket` (`unixPath`): relays each user connection to a unix stream socket,
//! after the PROXY protocol header when the proxy sends one (frp's `UnixDomainSocketPlugin`).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::net::UnixStream;
use tracing::warn;

use super::{ConnInfo, Plugin, Relay, UserConn};
use crate::config::ClientPluginConfig;

pub(crate) struct UnixDomainSocket {
    path: Arc<PathBuf>,
}

impl UnixDomainSocket {
    pub(crate) fn new(cfg: &ClientPluginConfig) -> Self {
        UnixDomainSocket {
            path: Arc::new(PathBuf::from(&cfg.unix_path)),
        }
    }
}

impl Plugin for UnixDomainSocket {
    fn name(&self) -> &'static str {
        "unix_domain_socket"
    }

    fn handle(&self, user: UserConn, info: ConnInfo, relay: Relay) -> BoxFuture<'static, ()> {
        let path = self.path.clone();
        async move {
            let local = match UnixStream::connect(path.as_path()).await {
                Ok(s) => s,
                Err(e) => {
                    // frp: "dial to uds ADDR error: dial unix ADDR: connect: …".
                    let text = crate::listen::os_error_text(&e);
                    let p = path.display();
                    warn!(
                        "[{}] dial to uds {p} error: dial unix {p}: connect: {text}",
                        info.proxy
                    );
                    return;
                }
            };
            let first = BytesMut::from(&info.proxy_protocol_header[..]);
            relay
                .join(user, dataplane::Endpoint::Stream(Box::new(local)), first)
                .await;
        }
        .boxed()
    }
}
