//! `tls2raw` (`localAddr`, `crtPath`, `keyPath`): terminates the user's TLS (the configured
//! certificate, or a generated self-signed one) and relays the plaintext to `localAddr`,
//! after the PROXY protocol header when the proxy sends one (frp's `TLS2RawPlugin`).

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

use super::{ConnInfo, Plugin, Relay, UserConn};
use crate::config::ClientPluginConfig;
use crate::listen::os_error_text;

pub(crate) struct Tls2Raw {
    local_addr: Arc<String>,
    /// The TLS config, or the error frp's plugin creation would report.
    acceptor: Result<TlsAcceptor, String>,
}

impl Tls2Raw {
    pub(crate) fn new(cfg: &ClientPluginConfig, proxy: &str) -> Self {
        let acceptor = crate::tls::server_config(&cfg.crt_path, &cfg.key_path, "")
            .map(TlsAcceptor::from)
            .map_err(|e| e.to_string());
        if let Err(e) = &acceptor {
            warn!("[{proxy}] tls2raw: {e}");
        }
        Tls2Raw {
            local_addr: Arc::new(cfg.local_addr.clone()),
            acceptor,
        }
    }
}

impl Plugin for Tls2Raw {
    fn name(&self) -> &'static str {
        "tls2raw"
    }

    fn handle(&self, user: UserConn, info: ConnInfo, _relay: Relay) -> BoxFuture<'static, ()> {
        let acceptor = self.acceptor.clone();
        let addr = self.local_addr.clone();
        async move {
            let name = &info.proxy;
            let acceptor = match acceptor {
                Ok(a) => a,
                Err(e) => {
                    warn!("[{name}] tls handshake error: {e}");
                    return;
                }
            };
            let mut tls = match acceptor.accept(user).await {
                Ok(t) => t,
                Err(e) => {
                    warn!("[{name}] tls handshake error: {e}");
                    return;
                }
            };
            let mut local = match TcpStream::connect(addr.as_str()).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(
                        "[{name}] dial to local addr error: dial tcp {addr}: connect: {}",
                        os_error_text(&e)
                    );
                    let _ = tls.shutdown().await;
                    return;
                }
            };
            crate::transport::tune_tcp(&local, 0);
            if !info.proxy_protocol_header.is_empty()
                && let Err(e) = local.write_all(&info.proxy_protocol_header).await
            {
                warn!("[{name}] tls2raw write proxy protocol header to local conn error: {e}");
                let _ = tls.shutdown().await;
                return;
            }
            // The user's side is TLS in this process: relayed here, not on the data plane.
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut local).await;
        }
        .boxed()
    }
}
