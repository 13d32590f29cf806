//! frps configuration (`frps.toml`), frp's `v1.ServerConfig`.

use serde::{Deserialize, Serialize};

use super::common::{
    DataplaneConfig, LogConfig, PortsRange, QuicOptions, ValueSource, WebServerConfig, empty_or,
    port, yes,
};

/// frps configuration. Field names are frp's keys in snake_case; nested tables are nested
/// structs. After loading, every default of frp's `Complete()` has been applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default = "ServerConfig::unset", rename_all = "camelCase")]
pub struct ServerConfig {
    /// frp's `APIMetadata.version` (accepted, unused).
    pub version: String,
    pub auth: AuthServerConfig,
    /// Default "0.0.0.0".
    pub bind_addr: String,
    /// Control port; default 7000.
    #[serde(deserialize_with = "port")]
    pub bind_port: u16,
    /// KCP (UDP) port; 0 = off.
    #[serde(deserialize_with = "port")]
    pub kcp_bind_port: u16,
    /// QUIC (UDP) port; 0 = off.
    #[serde(deserialize_with = "port")]
    pub quic_bind_port: u16,
    /// Where proxy ports bind; default = `bind_addr`.
    pub proxy_bind_addr: String,
    #[serde(rename = "vhostHTTPPort", deserialize_with = "port")]
    pub vhost_http_port: u16,
    /// Seconds; default 60.
    #[serde(rename = "vhostHTTPTimeout")]
    pub vhost_http_timeout: i64,
    #[serde(rename = "vhostHTTPSPort", deserialize_with = "port")]
    pub vhost_https_port: u16,
    #[serde(rename = "tcpmuxHTTPConnectPort", deserialize_with = "port")]
    pub tcpmux_http_connect_port: u16,
    #[serde(rename = "tcpmuxPassthrough")]
    pub tcpmux_passthrough: bool,
    pub sub_domain_host: String,
    #[serde(rename = "custom404Page")]
    pub custom_404_page: String,
    pub ssh_tunnel_gateway: SshTunnelGateway,
    pub web_server: WebServerConfig,
    pub enable_prometheus: bool,
    pub log: LogConfig,
    pub transport: ServerTransportConfig,
    /// Default true.
    #[serde(default = "yes")]
    pub detailed_errors_to_client: bool,
    /// 0 = unlimited.
    pub max_ports_per_client: i64,
    /// Seconds to wait for a work connection; default 10.
    pub user_conn_timeout: i64,
    /// Default 1500.
    #[serde(rename = "udpPacketSize")]
    pub udp_packet_size: i64,
    /// Default 168.
    #[serde(rename = "natholeAnalysisDataReserveHours")]
    pub nathole_analysis_data_reserve_hours: i64,
    /// Empty = every port allowed.
    pub allow_ports: Vec<PortsRange>,
    #[serde(rename = "httpPlugins")]
    pub http_plugins: Vec<HttpPluginOptions>,
    /// frp-uring's own `[dataplane]` table.
    pub dataplane: DataplaneConfig,
}

impl Default for ServerConfig {
    /// frp's defaults: an empty `frps.toml`.
    fn default() -> Self {
        let mut c = Self::unset();
        c.complete();
        c
    }
}

impl ServerConfig {
    /// Every field at Go's zero value ("unset"), pointer-bools at their default.
    pub(crate) fn unset() -> Self {
        Self {
            version: String::new(),
            auth: AuthServerConfig::default(),
            bind_addr: String::new(),
            bind_port: 0,
            kcp_bind_port: 0,
            quic_bind_port: 0,
            proxy_bind_addr: String::new(),
            vhost_http_port: 0,
            vhost_http_timeout: 0,
            vhost_https_port: 0,
            tcpmux_http_connect_port: 0,
            tcpmux_passthrough: false,
            sub_domain_host: String::new(),
            custom_404_page: String::new(),
            ssh_tunnel_gateway: SshTunnelGateway::default(),
            web_server: WebServerConfig::default(),
            enable_prometheus: false,
            log: LogConfig::default(),
            transport: ServerTransportConfig::default(),
            detailed_errors_to_client: true,
            max_ports_per_client: 0,
            user_conn_timeout: 0,
            udp_packet_size: 0,
            nathole_analysis_data_reserve_hours: 0,
            allow_ports: Vec::new(),
            http_plugins: Vec::new(),
            dataplane: DataplaneConfig::default(),
        }
    }

    /// frp's `ServerConfig.Complete()`: zero values take their defaults.
    pub(crate) fn complete(&mut self) {
        empty_or(&mut self.auth.method, "token".into());
        self.log.complete();
        self.transport.complete();
        self.web_server.complete();
        empty_or(
            &mut self.ssh_tunnel_gateway.auto_gen_private_key_path,
            "./.autogen_ssh_key".into(),
        );
        empty_or(&mut self.bind_addr, "0.0.0.0".into());
        empty_or(&mut self.bind_port, 7000);
        if self.proxy_bind_addr.is_empty() {
            self.proxy_bind_addr = self.bind_addr.clone();
        }
        empty_or(&mut self.vhost_http_timeout, 60);
        empty_or(&mut self.user_conn_timeout, 10);
        empty_or(&mut self.udp_packet_size, 1500);
        empty_or(&mut self.nathole_analysis_data_reserve_hours, 7 * 24);
    }

    /// Whether `port` may be used by a proxy (`allowPorts`; empty = all).
    pub fn is_port_allowed(&self, port: u16) -> bool {
        self.allow_ports.is_empty() || self.allow_ports.iter().any(|r| r.contains(port))
    }

    /// `allowPorts` as frp's dashboard shows it: "2000-3000,3001".
    pub fn allow_ports_str(&self) -> String {
        let v: Vec<String> = self.allow_ports.iter().map(ToString::to_string).collect();
        v.join(",")
    }
}

/// frps `auth`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AuthServerConfig {
    /// "token" (default) or "oidc".
    pub method: String,
    /// "HeartBeats", "NewWorkConns".
    pub additional_scopes: Vec<String>,
    pub token: String,
    pub token_source: Option<ValueSource>,
    pub oidc: AuthOidcServerConfig,
}

/// frps `auth.oidc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AuthOidcServerConfig {
    pub issuer: String,
    pub audience: String,
    pub skip_expiry_check: bool,
    pub skip_issuer_check: bool,
}

/// frps `transport`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerTransportConfig {
    /// yamux; default true.
    pub tcp_mux: bool,
    /// Seconds; default 30.
    pub tcp_mux_keepalive_interval: i64,
    /// Seconds; default 7200; negative disables.
    pub tcp_keepalive: i64,
    /// Default 5.
    pub max_pool_count: i64,
    /// Seconds; default −1 with tcpMux, else 90; negative disables.
    pub heartbeat_timeout: i64,
    pub quic: QuicOptions,
    pub tls: TlsServerConfig,
}

impl Default for ServerTransportConfig {
    fn default() -> Self {
        Self {
            tcp_mux: true,
            tcp_mux_keepalive_interval: 0,
            tcp_keepalive: 0,
            max_pool_count: 0,
            heartbeat_timeout: 0,
            quic: QuicOptions::default(),
            tls: TlsServerConfig::default(),
        }
    }
}

impl ServerTransportConfig {
    fn complete(&mut self) {
        empty_or(&mut self.tcp_mux_keepalive_interval, 30);
        empty_or(&mut self.tcp_keepalive, 7200);
        empty_or(&mut self.max_pool_count, 5);
        // With yamux keepalives an application heartbeat is redundant.
        empty_or(
            &mut self.heartbeat_timeout,
            if self.tcp_mux { -1 } else { 90 },
        );
        self.quic.complete();
        if !self.tls.trusted_ca_file.is_empty() {
            self.tls.force = true;
        }
    }
}

/// frps `transport.tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TlsServerConfig {
    /// Only accept TLS connections (set automatically when `trustedCaFile` is set).
    pub force: bool,
    pub cert_file: String,
    pub key_file: String,
    /// Client certificates must chain to this CA (mTLS).
    pub trusted_ca_file: String,
    pub server_name: String,
}

/// frps `sshTunnelGateway`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SshTunnelGateway {
    #[serde(deserialize_with = "port")]
    pub bind_port: u16,
    pub private_key_file: String,
    /// Default "./.autogen_ssh_key".
    pub auto_gen_private_key_path: String,
    pub authorized_keys_file: String,
}

/// One `[[httpPlugins]]` entry (frps server plugin).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpPluginOptions {
    pub name: String,
    pub addr: String,
    pub path: String,
    /// Login, NewProxy, CloseProxy, Ping, NewWorkConn, NewUserConn.
    pub ops: Vec<String>,
    pub tls_verify: bool,
}
