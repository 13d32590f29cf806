//! frps' SSH tunnel gateway (`sshTunnelGateway`, frp's `pkg/ssh`): an SSH server on its own
//! port where a user without frpc gets a proxy with the system's ssh client,
//!
//! ```text
//! ssh -R :80:127.0.0.1:8080 v0@frps-host -p 2200 tcp --remote-port 6000
//! ```
//!
//! The command is frp's quick-proxy syntax (`tcp|http|https|stcp|tcpmux` and their flags,
//! [`command`]). For each ssh connection frps runs an frpc of its own (frp's virtual client),
//! logged in over in-memory connections, whose proxy hands every user connection to the ssh
//! client as a `forwarded-tcpip` channel ([`tunnel`]). The proxy goes when the ssh connection
//! does. SSH itself is russh's.
//!
//! Authentication: with `authorizedKeysFile`, public keys listed there (a key's comment is
//! the frp user); without, anyone may connect and the command's `-t` token logs the proxy in.

mod command;
mod keys;
mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::info;

use super::State;
use crate::config::SshTunnelGateway;

/// The gateway's listener and settings, ready to serve.
pub(super) struct Gateway {
    listener: TcpListener,
    shared: Arc<tunnel::Shared>,
}

impl Gateway {
    /// Loads (or makes) the host key and binds `bindAddr:sshTunnelGateway.bindPort`; the error
    /// is frp's text after "create ssh gateway error: ".
    pub(super) async fn bind(cfg: &SshTunnelGateway, bind_addr: &str) -> Result<Gateway, String> {
        let key = keys::host_key(cfg)?;
        let config = russh::server::Config {
            keys: vec![key],
            methods: russh::MethodSet::from(
                &[russh::MethodKind::None, russh::MethodKind::PublicKey][..],
            ),
            // OpenSSH opens with a "none" attempt: refusing it need not be slow.
            auth_rejection_time_initial: Some(Duration::ZERO),
            // A tunnel lives as long as its client: idle is fine, a dead peer is not.
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        };
        let addr = super::join_host_port(bind_addr, cfg.bind_port);
        let listener = crate::listen::bind(&addr)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Gateway {
            listener,
            shared: Arc::new(tunnel::Shared {
                config: Arc::new(config),
                authorized_keys: (!cfg.authorized_keys_file.is_empty())
                    .then(|| cfg.authorized_keys_file.clone().into()),
            }),
        })
    }

    /// Accepts ssh connections until the task is dropped.
    pub(super) async fn serve(self, state: Arc<State>) {
        let port = self.listener.local_addr().map(|a| a.port()).unwrap_or(0);
        info!("frps sshTunnelGateway listen on port {port}");
        let mut acceptor = crate::listen::Acceptor::new("");
        loop {
            let (tcp, remote) = acceptor.accept(&self.listener).await;
            tokio::spawn(tunnel::serve(
                self.shared.clone(),
                state.clone(),
                tcp,
                remote,
            ));
        }
    }
}
