//! Client plugins (`[proxies.plugin]`, frp's `pkg/plugin/client`): instead of dialing
//! `localIP:localPort`, frpc hands each work connection of the proxy to its plugin, which serves
//! it (a SOCKS5 or HTTP proxy, a static file server, a unix socket, …).
//!
//! A plugin gets the user's connection as frpc's normal path would relay it: after the work
//! connection handshake, seen through the proxy's `useEncryption`/`useCompression` layers
//! ([`Layered`]), with the addresses of StartWorkConn and the PROXY protocol header frpc would
//! send to the local service ([`ConnInfo`], frp's `ConnectionInfo`). A plugin that ends up with
//! a byte stream to relay (the unix socket, a SOCKS5/HTTP CONNECT target) gives both to
//! [`Relay::join`]: the pair goes to the data plane like any other, with the layers' states and
//! the bytes already read, and no copy loop stays in tokio.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use dataplane::{Endpoint, Engine, Pair, RateLimiter, Side};
use futures_util::future::BoxFuture;
use tokio::io::AsyncWriteExt;

use crate::config::{ClientPluginConfig, ClientPluginType};
use crate::layered::{Layered, LayeredParts};
use crate::transport::Conn;

mod http_bridge;
mod http_proxy;
mod socks5;
mod static_file;
mod tls2raw;
mod unix_domain_socket;
mod virtual_net;

/// Go's `http.Error`: `msg` and a newline as text/plain, with `X-Content-Type-Options:
/// nosniff`; each HTTP plugin boxes the body into its own body type.
pub(crate) fn go_error(
    status: http::StatusCode,
    msg: &str,
) -> http::Response<http_body_util::Full<Bytes>> {
    use http::{HeaderValue, header};
    let mut r = http::Response::new(http_body_util::Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The user's connection as a plugin sees it: plaintext, through the proxy's layers.
pub(crate) type UserConn = Layered<Conn>;

/// What frpc knows about a user connection (frp's `ConnectionInfo`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnInfo {
    /// The proxy's name, for log lines (`[name] …`).
    pub proxy: String,
    /// The user's address, from StartWorkConn (none when frps sent none).
    #[allow(dead_code)]
    pub src: Option<SocketAddr>,
    /// The address the user connected to on frps.
    #[allow(dead_code)]
    pub dst: Option<SocketAddr>,
    /// The PROXY protocol header for the local service (`transport.proxyProtocolVersion`);
    /// empty when none.
    pub proxy_protocol_header: Bytes,
}

/// Hands a user connection and the stream it should be relayed to to the data plane.
#[derive(Clone)]
pub(crate) struct Relay {
    pub engine: Engine,
    pub limiter: Option<Arc<RateLimiter>>,
}

impl Relay {
    /// Relays `user` and `target` on the data plane. `to_target` goes to `target` first (e.g.
    /// a PROXY protocol header, then user bytes the plugin read but did not consume), then the
    /// plaintext `user`'s layers decoded but nobody read, then the rest of the user's bytes.
    pub async fn join(&self, mut user: UserConn, target: Endpoint, to_target: BytesMut) {
        // Bytes the plugin wrote (a SOCKS5 reply, "200 Connection established") go out first.
        if user.flush().await.is_err() {
            return;
        }
        let LayeredParts {
            io,
            raw_prefix,
            inbound,
            outbound,
            plaintext,
        } = user.into_parts();
        let mut first = to_target;
        first.extend_from_slice(&plaintext);
        self.engine.spawn(Pair {
            a: Side {
                endpoint: io.into_endpoint(),
                prefix: raw_prefix.into(),
                inbound,
                outbound,
                initial_write: Bytes::new(),
            },
            b: Side {
                initial_write: first.freeze(),
                ..Side::plain(target)
            },
            counters: None,
            limiter: self.limiter.clone(),
        });
    }
}

/// Go's HTTP servers' lingering close: after the last answer, the write side is shut and what
/// the user still sends is read and dropped for a while (Go's `rstAvoidanceDelay`), so that an
/// answer to a refused request (`400`, `431`) is not lost to a reset for unread bytes.
pub(crate) async fn linger_close<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
) {
    use tokio::io::AsyncReadExt;
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drain).await;
}

/// A client plugin: serves the user connections of one proxy (frp's `Plugin`).
pub(crate) trait Plugin: Send + Sync {
    /// frp's name of the plugin type (`handle by plugin: NAME`).
    fn name(&self) -> &'static str;

    /// Serves one user connection, until the plugin is done with it (handed to the data plane
    /// or closed).
    fn handle(&self, user: UserConn, info: ConnInfo, relay: Relay) -> BoxFuture<'static, ()>;
}

/// The plugin a proxy's `plugin` table asks for; `None` for a type this frpc does not serve
/// (`ClientConfig::check_supported` refuses those before frpc starts). `vnet`: frpc's virtual
/// network, for `virtual_net`.
pub(crate) fn create(
    cfg: &ClientPluginConfig,
    proxy: &str,
    vnet: Option<&Arc<crate::client::vnet::Controller>>,
) -> Option<Arc<dyn Plugin>> {
    match cfg.plugin_type {
        ClientPluginType::UnixDomainSocket => {
            Some(Arc::new(unix_domain_socket::UnixDomainSocket::new(cfg)))
        }
        ClientPluginType::HttpProxy => Some(Arc::new(http_proxy::HttpProxy::new(cfg))),
        ClientPluginType::Socks5 => Some(Arc::new(socks5::Socks5::new(cfg))),
        ClientPluginType::Http2Http
        | ClientPluginType::Http2Https
        | ClientPluginType::Https2Http
        | ClientPluginType::Https2Https => Some(Arc::new(http_bridge::HttpBridge::new(cfg, proxy))),
        ClientPluginType::Tls2Raw => Some(Arc::new(tls2raw::Tls2Raw::new(cfg, proxy))),
        ClientPluginType::StaticFile => Some(Arc::new(static_file::StaticFile::new(cfg))),
        ClientPluginType::VirtualNet => Some(Arc::new(virtual_net::VirtualNet::new(vnet.cloned()))),
    }
}
