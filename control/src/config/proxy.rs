//! `[[proxies]]` and `[[visitors]]` (frp's `v1.ProxyConfigurer` / `v1.VisitorConfigurer`),
//! with client plugins.
//!
//! One flat struct per list holds the keys of every type; which keys a type accepts is
//! checked separately in strict mode (see `load::check_type_keys`), as frp's per-type
//! structs do.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::common::{BandwidthQuantity, HeaderOperations, NameValue, empty_or, port, yes};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// All values, in frp's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// frp's name for it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            /// Parses frp's name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| {
                    serde::de::Error::custom(format!(concat!("unknown ", $what, ": {}"), s))
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// A proxy's `type`.
    ProxyType, "proxy type" {
        Tcp => "tcp",
        Udp => "udp",
        Http => "http",
        Https => "https",
        Tcpmux => "tcpmux",
        Stcp => "stcp",
        Sudp => "sudp",
        Xtcp => "xtcp",
    }
);

string_enum!(
    /// A visitor's `type`.
    VisitorType, "visitor type" {
        Stcp => "stcp",
        Sudp => "sudp",
        Xtcp => "xtcp",
    }
);

string_enum!(
    /// A proxy plugin's `type`.
    ClientPluginType, "plugin type" {
        Http2Https => "http2https",
        HttpProxy => "http_proxy",
        Https2Http => "https2http",
        Https2Https => "https2https",
        Http2Http => "http2http",
        Socks5 => "socks5",
        StaticFile => "static_file",
        UnixDomainSocket => "unix_domain_socket",
        Tls2Raw => "tls2raw",
        VirtualNet => "virtual_net",
    }
);

string_enum!(
    /// A visitor plugin's `type`.
    VisitorPluginType, "visitor plugin type" {
        VirtualNet => "virtual_net",
    }
);

/// A proxy's `transport`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyTransport {
    pub use_encryption: bool,
    pub use_compression: bool,
    /// "1MB", "512KB"; unset = unlimited.
    pub bandwidth_limit: BandwidthQuantity,
    /// "client" (default) or "server".
    pub bandwidth_limit_mode: String,
    /// "", "v1" or "v2".
    pub proxy_protocol_version: String,
}

/// A proxy's `loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LoadBalancerConfig {
    pub group: String,
    pub group_key: String,
}

/// A proxy's `healthCheck`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HealthCheckConfig {
    /// "" (off), "tcp" or "http".
    #[serde(rename = "type")]
    pub check_type: String,
    /// Default 3.
    pub timeout_seconds: i64,
    /// Default 1.
    pub max_failed: i64,
    /// Default 10.
    pub interval_seconds: i64,
    /// Required for "http".
    pub path: String,
    #[serde(rename = "httpHeaders")]
    pub http_headers: Vec<NameValue>,
}

/// `natTraversal` of xtcp proxies and visitors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NatTraversalConfig {
    pub disable_assisted_addrs: bool,
}

/// A proxy's `plugin`: its `type` and the options of every plugin type (each type reads its
/// own; strict mode rejects options foreign to the type, as frp does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientPluginConfig {
    #[serde(rename = "type")]
    pub plugin_type: ClientPluginType,
    /// http2https, http2http, https2http, https2https, tls2raw.
    #[serde(default)]
    pub local_addr: String,
    /// http2https, http2http, https2http, https2https.
    #[serde(default)]
    pub host_header_rewrite: String,
    /// http2https, http2http, https2http, https2https.
    #[serde(default)]
    pub request_headers: HeaderOperations,
    /// https2http, https2https; default true.
    #[serde(default = "yes", rename = "enableHTTP2")]
    pub enable_http2: bool,
    /// https2http, https2https, tls2raw.
    #[serde(default)]
    pub crt_path: String,
    /// https2http, https2https, tls2raw.
    #[serde(default)]
    pub key_path: String,
    /// http_proxy, static_file.
    #[serde(default)]
    pub http_user: String,
    /// http_proxy, static_file.
    #[serde(default)]
    pub http_password: String,
    /// socks5.
    #[serde(default)]
    pub username: String,
    /// socks5.
    #[serde(default)]
    pub password: String,
    /// static_file.
    #[serde(default)]
    pub local_path: String,
    /// static_file.
    #[serde(default)]
    pub strip_prefix: String,
    /// unix_domain_socket.
    #[serde(default)]
    pub unix_path: String,
}

/// One `[[proxies]]` entry. Type-specific keys are defaulted for the types without them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub proxy_type: ProxyType,
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub transport: ProxyTransport,
    #[serde(default)]
    pub metadatas: BTreeMap<String, String>,
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// Default "127.0.0.1".
    #[serde(default, rename = "localIP")]
    pub local_ip: String,
    #[serde(default, deserialize_with = "port")]
    pub local_port: u16,
    /// When set, `local_ip`/`local_port` are not used.
    #[serde(default)]
    pub plugin: Option<ClientPluginConfig>,

    /// tcp, udp: the port frps listens on (0 = frps picks one).
    #[serde(default, deserialize_with = "port")]
    pub remote_port: u16,

    /// http, https, tcpmux.
    #[serde(default)]
    pub custom_domains: Vec<String>,
    /// http, https, tcpmux.
    #[serde(default)]
    pub subdomain: String,
    /// http.
    #[serde(default)]
    pub locations: Vec<String>,
    /// http, tcpmux.
    #[serde(default, rename = "httpUser")]
    pub http_user: String,
    /// http, tcpmux.
    #[serde(default, rename = "httpPassword")]
    pub http_password: String,
    /// http.
    #[serde(default)]
    pub host_header_rewrite: String,
    /// http.
    #[serde(default)]
    pub request_headers: HeaderOperations,
    /// http.
    #[serde(default)]
    pub response_headers: HeaderOperations,
    /// http, tcpmux.
    #[serde(default, rename = "routeByHTTPUser")]
    pub route_by_http_user: String,
    /// tcpmux: "httpconnect".
    #[serde(default)]
    pub multiplexer: String,

    /// stcp, sudp, xtcp.
    #[serde(default)]
    pub secret_key: String,
    /// stcp, sudp, xtcp: users allowed to visit ("*" = all); empty = same user only.
    #[serde(default)]
    pub allow_users: Vec<String>,
    /// xtcp.
    #[serde(default)]
    pub nat_traversal: Option<NatTraversalConfig>,
}

impl ProxyConfig {
    /// A proxy with only `name` and `type` set, completed with frp's defaults.
    pub fn new(name: impl Into<String>, proxy_type: ProxyType) -> Self {
        let mut p = Self {
            name: name.into(),
            proxy_type,
            enabled: true,
            annotations: BTreeMap::new(),
            transport: ProxyTransport::default(),
            metadatas: BTreeMap::new(),
            load_balancer: LoadBalancerConfig::default(),
            health_check: HealthCheckConfig::default(),
            local_ip: String::new(),
            local_port: 0,
            plugin: None,
            remote_port: 0,
            custom_domains: Vec::new(),
            subdomain: String::new(),
            locations: Vec::new(),
            http_user: String::new(),
            http_password: String::new(),
            host_header_rewrite: String::new(),
            request_headers: HeaderOperations::default(),
            response_headers: HeaderOperations::default(),
            route_by_http_user: String::new(),
            multiplexer: String::new(),
            secret_key: String::new(),
            allow_users: Vec::new(),
            nat_traversal: None,
        };
        p.complete();
        p
    }

    /// frp's `ProxyBaseConfig.Complete()`, plus the health-check defaults frpc's checker
    /// applies to values <= 0.
    pub(crate) fn complete(&mut self) {
        empty_or(&mut self.local_ip, "127.0.0.1".into());
        empty_or(&mut self.transport.bandwidth_limit_mode, "client".into());
        let hc = &mut self.health_check;
        if hc.interval_seconds <= 0 {
            hc.interval_seconds = 10;
        }
        if hc.timeout_seconds <= 0 {
            hc.timeout_seconds = 3;
        }
        if hc.max_failed <= 0 {
            hc.max_failed = 1;
        }
    }
}

/// A visitor's `transport`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VisitorTransport {
    pub use_encryption: bool,
    pub use_compression: bool,
}

/// A visitor's `plugin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VisitorPluginConfig {
    #[serde(rename = "type")]
    pub plugin_type: VisitorPluginType,
    /// virtual_net.
    #[serde(default, rename = "destinationIP")]
    pub destination_ip: String,
}

/// One `[[visitors]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VisitorConfig {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub visitor_type: VisitorType,
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub transport: VisitorTransport,
    #[serde(default)]
    pub secret_key: String,
    /// The proxy owner's `user` (empty = ours).
    #[serde(default)]
    pub server_user: String,
    /// The proxy's name.
    #[serde(default)]
    pub server_name: String,
    /// Default "127.0.0.1".
    #[serde(default)]
    pub bind_addr: String,
    /// Negative = no local listener (only reachable through other visitors / plugins).
    #[serde(default)]
    pub bind_port: i64,
    #[serde(default)]
    pub plugin: Option<VisitorPluginConfig>,

    /// xtcp: "quic" (default) or "kcp".
    #[serde(default)]
    pub protocol: String,
    /// xtcp.
    #[serde(default)]
    pub keep_tunnel_open: bool,
    /// xtcp; default 8.
    #[serde(default)]
    pub max_retries_an_hour: i64,
    /// xtcp, seconds; default 90.
    #[serde(default)]
    pub min_retry_interval: i64,
    /// xtcp: name of a visitor to fall back to.
    #[serde(default)]
    pub fallback_to: String,
    /// xtcp; default 1000.
    #[serde(default)]
    pub fallback_timeout_ms: i64,
    /// xtcp.
    #[serde(default)]
    pub nat_traversal: Option<NatTraversalConfig>,
}

impl VisitorConfig {
    /// frp's `VisitorBaseConfig.Complete()` (and `XTCPVisitorConfig.Complete()` for xtcp).
    pub(crate) fn complete(&mut self) {
        empty_or(&mut self.bind_addr, "127.0.0.1".into());
        if self.visitor_type == VisitorType::Xtcp {
            empty_or(&mut self.protocol, "quic".into());
            empty_or(&mut self.max_retries_an_hour, 8);
            empty_or(&mut self.min_retry_interval, 90);
            empty_or(&mut self.fallback_timeout_ms, 1000);
        }
    }
}

/// Keys every proxy type accepts.
const PROXY_BASE_KEYS: &[&str] = &[
    "name",
    "type",
    "enabled",
    "annotations",
    "transport",
    "metadatas",
    "loadBalancer",
    "healthCheck",
    "localIP",
    "localPort",
    "plugin",
];

impl ProxyType {
    /// The keys only some types accept, for this type.
    pub(crate) fn specific_keys(self) -> &'static [&'static str] {
        match self {
            Self::Tcp | Self::Udp => &["remotePort"],
            Self::Http => &[
                "customDomains",
                "subdomain",
                "locations",
                "httpUser",
                "httpPassword",
                "hostHeaderRewrite",
                "requestHeaders",
                "responseHeaders",
                "routeByHTTPUser",
            ],
            Self::Https => &["customDomains", "subdomain"],
            Self::Tcpmux => &[
                "customDomains",
                "subdomain",
                "httpUser",
                "httpPassword",
                "routeByHTTPUser",
                "multiplexer",
            ],
            Self::Stcp | Self::Sudp => &["secretKey", "allowUsers"],
            Self::Xtcp => &["secretKey", "allowUsers", "natTraversal"],
        }
    }

    pub(crate) fn accepts_key(self, key: &str) -> bool {
        PROXY_BASE_KEYS.contains(&key) || self.specific_keys().contains(&key)
    }
}

impl VisitorType {
    pub(crate) fn accepts_key(self, key: &str) -> bool {
        const XTCP_ONLY: &[&str] = &[
            "protocol",
            "keepTunnelOpen",
            "maxRetriesAnHour",
            "minRetryInterval",
            "fallbackTo",
            "fallbackTimeoutMs",
            "natTraversal",
        ];
        self == Self::Xtcp || !XTCP_ONLY.contains(&key)
    }
}

impl ClientPluginType {
    /// The plugin types this frpc serves; the others are refused by `frpc verify` and at
    /// start (see `ClientConfig::check_supported`).
    pub const IMPLEMENTED: &'static [ClientPluginType] = &[
        Self::UnixDomainSocket,
        Self::Socks5,
        Self::HttpProxy,
        Self::StaticFile,
        Self::Http2Http,
        Self::Https2Http,
        Self::Http2Https,
        Self::Https2Https,
        Self::Tls2Raw,
        Self::VirtualNet,
    ];

    /// Whether this frpc serves the plugin.
    pub fn implemented(self) -> bool {
        Self::IMPLEMENTED.contains(&self)
    }

    pub(crate) fn accepts_key(self, key: &str) -> bool {
        let keys: &[&str] = match self {
            Self::Http2Https | Self::Http2Http => {
                &["localAddr", "hostHeaderRewrite", "requestHeaders"]
            }
            Self::Https2Http | Self::Https2Https => &[
                "localAddr",
                "hostHeaderRewrite",
                "requestHeaders",
                "enableHTTP2",
                "crtPath",
                "keyPath",
            ],
            Self::HttpProxy => &["httpUser", "httpPassword"],
            Self::Socks5 => &["username", "password"],
            Self::StaticFile => &["localPath", "stripPrefix", "httpUser", "httpPassword"],
            Self::UnixDomainSocket => &["unixPath"],
            Self::Tls2Raw => &["localAddr", "crtPath", "keyPath"],
            Self::VirtualNet => &[],
        };
        key == "type" || keys.contains(&key)
    }
}
