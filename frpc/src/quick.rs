//! frp's quick-start subcommands (`frpc tcp|udp|http|https …`): one proxy and the connection
//! settings from flags (frp's `RegisterClientCommonConfigFlags` / `RegisterProxyFlags` names),
//! turned into a config through the same loader as a file so frp's defaults apply.

use clap::{ArgAction, Args};
use control::config::{ClientConfig, ConfigFormat};
use serde_json::{Value, json};

/// Connection flags every quick subcommand takes.
#[derive(Args)]
pub struct CommonArgs {
    /// frp server's address (host, or host:port)
    #[arg(
        short = 's',
        long = "server_addr",
        alias = "server-addr",
        default_value = "127.0.0.1"
    )]
    server_addr: String,
    /// frp server's port
    #[arg(
        short = 'P',
        long = "server_port",
        alias = "server-port",
        default_value_t = 7000
    )]
    server_port: u16,
    /// tcp, kcp, quic, websocket, wss
    #[arg(short = 'p', long = "protocol", default_value = "tcp")]
    protocol: String,
    /// user
    #[arg(short = 'u', long = "user", default_value = "")]
    user: String,
    /// unique identifier for this frpc instance
    #[arg(long = "client-id", alias = "client_id", default_value = "")]
    client_id: String,
    /// auth token
    #[arg(short = 't', long = "token", default_value = "")]
    token: String,
    /// log level
    #[arg(long = "log_level", alias = "log-level", default_value = "info")]
    log_level: String,
    /// console or file path
    #[arg(long = "log_file", alias = "log-file", default_value = "console")]
    log_file: String,
    /// log file reversed days
    #[arg(long = "log_max_days", alias = "log-max-days", default_value_t = 3)]
    log_max_days: i64,
    /// disable log color in console
    #[arg(long = "disable_log_color", alias = "disable-log-color")]
    disable_log_color: bool,
    /// enable frpc tls
    #[arg(long = "tls_enable", alias = "tls-enable", default_value_t = true, action = ArgAction::Set)]
    tls_enable: bool,
    /// specify the custom server name of tls certificate
    #[arg(
        long = "tls_server_name",
        alias = "tls-server-name",
        default_value = ""
    )]
    tls_server_name: String,
    /// specify dns server instead of using system default one
    #[arg(long = "dns_server", alias = "dns-server", default_value = "")]
    dns_server: String,
}

/// Flags of every proxy.
#[derive(Args)]
pub struct ProxyArgs {
    /// proxy name
    #[arg(
        short = 'n',
        long = "proxy_name",
        alias = "proxy-name",
        default_value = ""
    )]
    proxy_name: String,
    /// local ip
    #[arg(
        short = 'i',
        long = "local_ip",
        alias = "local-ip",
        default_value = "127.0.0.1"
    )]
    local_ip: String,
    /// local port
    #[arg(
        short = 'l',
        long = "local_port",
        alias = "local-port",
        default_value_t = 0
    )]
    local_port: u16,
    /// use encryption
    #[arg(long = "ue")]
    use_encryption: bool,
    /// use compression
    #[arg(long = "uc")]
    use_compression: bool,
    /// bandwidth limit (e.g. 100KB or 1MB)
    #[arg(
        long = "bandwidth_limit",
        alias = "bandwidth-limit",
        default_value = ""
    )]
    bandwidth_limit: String,
    /// bandwidth limit mode
    #[arg(
        long = "bandwidth_limit_mode",
        alias = "bandwidth-limit-mode",
        default_value = "client"
    )]
    bandwidth_limit_mode: String,
}

/// `frpc tcp` / `frpc udp`.
#[derive(Args)]
pub struct TcpArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
    /// remote port
    #[arg(
        short = 'r',
        long = "remote_port",
        alias = "remote-port",
        default_value_t = 0
    )]
    remote_port: u16,
}

/// `frpc https`.
#[derive(Args)]
pub struct DomainArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
    /// custom domains
    #[arg(
        short = 'd',
        long = "custom_domain",
        alias = "custom-domain",
        value_delimiter = ','
    )]
    custom_domain: Vec<String>,
    /// sub domain
    #[arg(long = "sd", default_value = "")]
    subdomain: String,
}

/// `frpc http`.
#[derive(Args)]
pub struct HttpArgs {
    #[command(flatten)]
    domain: DomainArgs,
    /// locations
    #[arg(long = "locations", value_delimiter = ',')]
    locations: Vec<String>,
    /// http auth user
    #[arg(long = "http_user", alias = "http-user", default_value = "")]
    http_user: String,
    /// http auth password
    #[arg(long = "http_pwd", alias = "http-pwd", default_value = "")]
    http_pwd: String,
    /// host header rewrite
    #[arg(
        long = "host_header_rewrite",
        alias = "host-header-rewrite",
        default_value = ""
    )]
    host_header_rewrite: String,
}

pub fn tcp_config(ty: &str, a: &TcpArgs) -> anyhow::Result<ClientConfig> {
    let mut p = proxy(ty, &a.proxy);
    p["remotePort"] = json!(a.remote_port);
    build(&a.common, p)
}

pub fn https_config(a: &DomainArgs) -> anyhow::Result<ClientConfig> {
    let mut p = proxy("https", &a.proxy);
    domains(&mut p, a);
    build(&a.common, p)
}

pub fn http_config(a: &HttpArgs) -> anyhow::Result<ClientConfig> {
    let mut p = proxy("http", &a.domain.proxy);
    domains(&mut p, &a.domain);
    p["locations"] = json!(a.locations);
    p["httpUser"] = json!(a.http_user);
    p["httpPassword"] = json!(a.http_pwd);
    p["hostHeaderRewrite"] = json!(a.host_header_rewrite);
    build(&a.domain.common, p)
}

fn domains(p: &mut Value, a: &DomainArgs) {
    p["customDomains"] = json!(a.custom_domain);
    p["subdomain"] = json!(a.subdomain);
}

fn proxy(ty: &str, a: &ProxyArgs) -> Value {
    let mut transport = json!({
        "useEncryption": a.use_encryption,
        "useCompression": a.use_compression,
        "bandwidthLimitMode": a.bandwidth_limit_mode,
    });
    if !a.bandwidth_limit.is_empty() {
        transport["bandwidthLimit"] = json!(a.bandwidth_limit);
    }
    json!({
        "name": a.proxy_name,
        "type": ty,
        "localIP": a.local_ip,
        "localPort": a.local_port,
        "transport": transport,
    })
}

fn build(c: &CommonArgs, proxy: Value) -> anyhow::Result<ClientConfig> {
    // `-s host:port` is accepted too.
    let (server_addr, server_port) = match c.server_addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => {
            (h.to_string(), p.parse::<u16>()?)
        }
        _ => (c.server_addr.clone(), c.server_port),
    };
    let cfg = json!({
        "serverAddr": server_addr,
        "serverPort": server_port,
        "user": c.user,
        "clientID": c.client_id,
        "dnsServer": c.dns_server,
        "auth": {"token": c.token},
        "log": {
            "to": c.log_file,
            "level": c.log_level,
            "maxDays": c.log_max_days,
            "disablePrintColor": c.disable_log_color,
        },
        "transport": {
            "protocol": c.protocol,
            "tls": {"enable": c.tls_enable, "serverName": c.tls_server_name},
        },
        "proxies": [proxy],
    });
    Ok(control::config::client_config_from_str(
        &cfg.to_string(),
        ConfigFormat::Json,
        true,
    )?)
}
