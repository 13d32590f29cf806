//! frpc configuration (`frpc.toml`), frp's `v1.ClientConfig`.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::common::{
    DataplaneConfig, LogConfig, QuicOptions, ValueSource, WebServerConfig, empty_or, port,
};
use super::proxy::{ProxyConfig, VisitorConfig};

/// frpc configuration: the common part plus `[[proxies]]` and `[[visitors]]` (those of
/// `includes` files appended). After loading, frp's `Complete()` defaults are applied to the
/// common part and to every proxy and visitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default = "ClientConfig::unset", rename_all = "camelCase")]
pub struct ClientConfig {
    /// frp's `APIMetadata.version` (accepted, unused).
    pub version: String,
    pub auth: AuthClientConfig,
    /// Proxy-name prefix: proxies register as "{user}.{name}".
    pub user: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// Default "0.0.0.0".
    pub server_addr: String,
    /// Default 7000.
    #[serde(deserialize_with = "port")]
    pub server_port: u16,
    /// Default "stun.easyvoip.com:3478".
    #[serde(rename = "natHoleStunServer")]
    pub nat_hole_stun_server: String,
    #[serde(rename = "dnsServer")]
    pub dns_server: String,
    /// Default true: the first failed login ends frpc.
    pub login_fail_exit: bool,
    /// Allow-list of proxy/visitor names; empty = all.
    pub start: Vec<String>,
    pub log: LogConfig,
    pub web_server: WebServerConfig,
    pub transport: ClientTransportConfig,
    pub virtual_net: VirtualNetConfig,
    pub feature_gates: BTreeMap<String, bool>,
    /// Default 1500.
    #[serde(rename = "udpPacketSize")]
    pub udp_packet_size: i64,
    pub metadatas: BTreeMap<String, String>,
    /// Globs of extra files whose `[[proxies]]` / `[[visitors]]` are appended.
    pub includes: Vec<String>,
    pub store: StoreConfig,
    /// frp-uring's own `[dataplane]` table.
    pub dataplane: DataplaneConfig,
    pub proxies: Vec<ProxyConfig>,
    pub visitors: Vec<VisitorConfig>,
}

impl Default for ClientConfig {
    /// frp's defaults: an empty `frpc.toml`.
    fn default() -> Self {
        let mut c = Self::unset();
        c.complete();
        c
    }
}

impl ClientConfig {
    pub(crate) fn unset() -> Self {
        Self {
            version: String::new(),
            auth: AuthClientConfig::default(),
            user: String::new(),
            client_id: String::new(),
            server_addr: String::new(),
            server_port: 0,
            nat_hole_stun_server: String::new(),
            dns_server: String::new(),
            login_fail_exit: true,
            start: Vec::new(),
            log: LogConfig::default(),
            web_server: WebServerConfig::default(),
            transport: ClientTransportConfig::default(),
            virtual_net: VirtualNetConfig::default(),
            feature_gates: BTreeMap::new(),
            udp_packet_size: 0,
            metadatas: BTreeMap::new(),
            includes: Vec::new(),
            store: StoreConfig::default(),
            dataplane: DataplaneConfig::default(),
            proxies: Vec::new(),
            visitors: Vec::new(),
        }
    }

    /// frp's `ClientCommonConfig.Complete()` plus every proxy's and visitor's `Complete()`.
    pub(crate) fn complete(&mut self) {
        empty_or(&mut self.server_addr, "0.0.0.0".into());
        empty_or(&mut self.server_port, 7000);
        empty_or(
            &mut self.nat_hole_stun_server,
            "stun.easyvoip.com:3478".into(),
        );
        empty_or(&mut self.auth.method, "token".into());
        self.log.complete();
        self.transport.complete();
        self.web_server.complete();
        empty_or(&mut self.udp_packet_size, 1500);
        for p in &mut self.proxies {
            p.complete();
        }
        for v in &mut self.visitors {
            v.complete();
        }
    }

    /// The proxies frpc starts: `enabled` and, when `start` is non-empty, listed there
    /// (frp's `FilterClientConfigurers`).
    pub fn active_proxies(&self) -> impl Iterator<Item = &ProxyConfig> {
        let start: HashSet<&str> = self.start.iter().map(String::as_str).collect();
        self.proxies
            .iter()
            .filter(move |p| p.enabled && (start.is_empty() || start.contains(p.name.as_str())))
    }

    /// The visitors frpc starts (same rule as [`Self::active_proxies`]).
    pub fn active_visitors(&self) -> impl Iterator<Item = &VisitorConfig> {
        let start: HashSet<&str> = self.start.iter().map(String::as_str).collect();
        self.visitors
            .iter()
            .filter(move |v| v.enabled && (start.is_empty() || start.contains(v.name.as_str())))
    }
}

/// frpc `auth`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AuthClientConfig {
    /// "token" (default) or "oidc".
    pub method: String,
    /// "HeartBeats", "NewWorkConns".
    pub additional_scopes: Vec<String>,
    pub token: String,
    pub token_source: Option<ValueSource>,
    pub oidc: AuthOidcClientConfig,
}

/// frpc `auth.oidc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AuthOidcClientConfig {
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub client_secret: String,
    pub audience: String,
    pub scope: String,
    #[serde(rename = "tokenEndpointURL")]
    pub token_endpoint_url: String,
    pub additional_endpoint_params: BTreeMap<String, String>,
    pub trusted_ca_file: String,
    pub insecure_skip_verify: bool,
    #[serde(rename = "proxyURL")]
    pub proxy_url: String,
    pub token_source: Option<ValueSource>,
}

/// frpc `transport`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClientTransportConfig {
    /// tcp (default), kcp, quic, websocket, wss.
    pub protocol: String,
    /// v1 (default) or v2.
    pub wire_protocol: String,
    /// Seconds; default 10.
    pub dial_server_timeout: i64,
    /// Seconds; default 7200; negative disables.
    pub dial_server_keepalive: i64,
    #[serde(rename = "connectServerLocalIP")]
    pub connect_server_local_ip: String,
    /// Default: `$http_proxy` at load time.
    #[serde(rename = "proxyURL")]
    pub proxy_url: String,
    /// Work connections made in advance; default 1.
    pub pool_count: i64,
    /// yamux; default true.
    pub tcp_mux: bool,
    /// Seconds; default 30.
    pub tcp_mux_keepalive_interval: i64,
    pub quic: QuicOptions,
    /// Seconds; default −1 with tcpMux, else 30; negative disables.
    pub heartbeat_interval: i64,
    /// Seconds; default −1 with tcpMux, else 90; negative disables.
    pub heartbeat_timeout: i64,
    pub tls: TlsClientConfig,
}

impl Default for ClientTransportConfig {
    fn default() -> Self {
        Self {
            protocol: String::new(),
            wire_protocol: String::new(),
            dial_server_timeout: 0,
            dial_server_keepalive: 0,
            connect_server_local_ip: String::new(),
            proxy_url: String::new(),
            pool_count: 0,
            tcp_mux: true,
            tcp_mux_keepalive_interval: 0,
            quic: QuicOptions::default(),
            heartbeat_interval: 0,
            heartbeat_timeout: 0,
            tls: TlsClientConfig::default(),
        }
    }
}

impl ClientTransportConfig {
    fn complete(&mut self) {
        empty_or(&mut self.protocol, "tcp".into());
        empty_or(&mut self.wire_protocol, "v1".into());
        empty_or(&mut self.dial_server_timeout, 10);
        empty_or(&mut self.dial_server_keepalive, 7200);
        empty_or(
            &mut self.proxy_url,
            std::env::var("http_proxy").unwrap_or_default(),
        );
        empty_or(&mut self.pool_count, 1);
        empty_or(&mut self.tcp_mux_keepalive_interval, 30);
        // With yamux keepalives an application heartbeat is redundant.
        let (interval, timeout) = if self.tcp_mux { (-1, -1) } else { (30, 90) };
        empty_or(&mut self.heartbeat_interval, interval);
        empty_or(&mut self.heartbeat_timeout, timeout);
        self.quic.complete();
    }
}

/// frpc `transport.tls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TlsClientConfig {
    /// Default true.
    pub enable: bool,
    /// Default true: no 0x17 byte before the TLS ClientHello.
    #[serde(rename = "disableCustomTLSFirstByte")]
    pub disable_custom_tls_first_byte: bool,
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    /// Default: the server address.
    pub server_name: String,
}

impl Default for TlsClientConfig {
    fn default() -> Self {
        Self {
            enable: true,
            disable_custom_tls_first_byte: true,
            cert_file: String::new(),
            key_file: String::new(),
            trusted_ca_file: String::new(),
            server_name: String::new(),
        }
    }
}

/// frpc `virtualNet`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualNetConfig {
    /// CIDR, e.g. "100.86.0.1/24".
    pub address: String,
}

/// frpc `store`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StoreConfig {
    pub path: String,
}
