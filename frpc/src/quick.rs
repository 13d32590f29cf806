//! frp's quick-start subcommands (`frpc tcp|udp|http|https|tcpmux|stcp|sudp|xtcp …` and
//! `frpc stcp|sudp|xtcp visitor …`): one proxy or visitor and the connection settings from
//! flags (frp's `RegisterClientCommonConfigFlags` / `RegisterProxyFlags` /
//! `RegisterVisitorFlags`), turned into a config through the same loader as a file so frp's
//! defaults apply. Every flag is accepted as `--a_b` and `--a-b`, as frp's cobra commands
//! normalise `_` to `-`.

use std::collections::BTreeMap;

use clap::{ArgAction, Args, Subcommand};
use control::config::{ClientConfig, ConfigFormat};
use serde_json::{Value, json};

/// Connection flags of every quick subcommand (persistent in frp: a `visitor` subcommand
/// takes them too).
#[derive(Args)]
pub struct CommonArgs {
    /// frp server's address
    #[arg(
        short = 's',
        long = "server_addr",
        alias = "server-addr",
        default_value = "127.0.0.1",
        global = true
    )]
    server_addr: String,
    /// frp server's port
    #[arg(
        short = 'P',
        long = "server_port",
        alias = "server-port",
        default_value_t = 7000,
        global = true
    )]
    server_port: i64,
    /// optional values are [tcp kcp quic websocket wss]
    #[arg(short = 'p', long = "protocol", default_value = "tcp", global = true)]
    protocol: String,
    /// user
    #[arg(short = 'u', long = "user", default_value = "", global = true)]
    user: String,
    /// unique identifier for this frpc instance
    #[arg(
        long = "client-id",
        alias = "client_id",
        default_value = "",
        global = true
    )]
    client_id: String,
    /// auth token
    #[arg(short = 't', long = "token", default_value = "", global = true)]
    token: String,
    /// log level
    #[arg(
        long = "log_level",
        alias = "log-level",
        default_value = "info",
        global = true
    )]
    log_level: String,
    /// console or file path
    #[arg(
        long = "log_file",
        alias = "log-file",
        default_value = "console",
        global = true
    )]
    log_file: String,
    /// log file reversed days
    #[arg(
        long = "log_max_days",
        alias = "log-max-days",
        default_value_t = 3,
        global = true
    )]
    log_max_days: i64,
    /// disable log color in console
    #[arg(long = "disable_log_color", alias = "disable-log-color", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value_t = false,
          action = ArgAction::Set, global = true)]
    disable_log_color: bool,
    /// enable frpc tls
    #[arg(long = "tls_enable", alias = "tls-enable", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value_t = true, action = ArgAction::Set,
          global = true)]
    tls_enable: bool,
    /// specify the custom server name of tls certificate
    #[arg(
        long = "tls_server_name",
        alias = "tls-server-name",
        default_value = "",
        global = true
    )]
    tls_server_name: String,
    /// specify dns server instead of using system default one
    #[arg(
        long = "dns_server",
        alias = "dns-server",
        default_value = "",
        global = true
    )]
    dns_server: String,
}

/// Flags of every proxy (frp's `registerProxyBaseConfigFlags`).
#[derive(Args)]
pub struct BaseArgs {
    /// proxy name
    #[arg(
        short = 'n',
        long = "proxy_name",
        alias = "proxy-name",
        default_value = ""
    )]
    proxy_name: String,
    /// metadata key-value pairs (e.g., key1=value1,key2=value2)
    #[arg(long = "metadatas", value_delimiter = ',')]
    metadatas: Vec<String>,
    /// annotation key-value pairs (e.g., key1=value1,key2=value2)
    #[arg(long = "annotations", value_delimiter = ',')]
    annotations: Vec<String>,
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
    local_port: i64,
    #[command(flatten)]
    wire: WireArgs,
    /// bandwidth limit mode
    #[arg(
        long = "bandwidth_limit_mode",
        alias = "bandwidth-limit-mode",
        default_value = "client"
    )]
    bandwidth_limit_mode: String,
    /// bandwidth limit (e.g. 100KB or 1MB)
    #[arg(
        long = "bandwidth_limit",
        alias = "bandwidth-limit",
        default_value = ""
    )]
    bandwidth_limit: String,
}

/// `--ue` / `--uc` of a proxy or a visitor (its `transport.useEncryption|useCompression`).
#[derive(Args)]
pub struct WireArgs {
    /// use encryption
    #[arg(long = "ue", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false, action = ArgAction::Set)]
    use_encryption: bool,
    /// use compression
    #[arg(long = "uc", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false, action = ArgAction::Set)]
    use_compression: bool,
}

/// `--http_user` / `--http_pwd` of `frpc http` and `frpc tcpmux`.
#[derive(Args)]
pub struct HttpAuthArgs {
    /// http auth user
    #[arg(long = "http_user", alias = "http-user", default_value = "")]
    http_user: String,
    /// http auth password
    #[arg(long = "http_pwd", alias = "http-pwd", default_value = "")]
    http_pwd: String,
}

/// `customDomains` and `subdomain` (frp's `registerProxyDomainConfigFlags`).
#[derive(Args)]
pub struct DomainArgs {
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

/// `frpc tcp` / `frpc udp`.
#[derive(Args)]
pub struct TcpArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    base: BaseArgs,
    /// remote port
    #[arg(
        short = 'r',
        long = "remote_port",
        alias = "remote-port",
        default_value_t = 0
    )]
    remote_port: i64,
}

/// `frpc http`.
#[derive(Args)]
pub struct HttpArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    base: BaseArgs,
    #[command(flatten)]
    domain: DomainArgs,
    /// locations
    #[arg(long = "locations", value_delimiter = ',')]
    locations: Vec<String>,
    #[command(flatten)]
    http_auth: HttpAuthArgs,
    /// host header rewrite
    #[arg(
        long = "host_header_rewrite",
        alias = "host-header-rewrite",
        default_value = ""
    )]
    host_header_rewrite: String,
}

/// `frpc https`.
#[derive(Args)]
pub struct HttpsArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    base: BaseArgs,
    #[command(flatten)]
    domain: DomainArgs,
}

/// `frpc tcpmux`.
#[derive(Args)]
pub struct TcpmuxArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    base: BaseArgs,
    #[command(flatten)]
    domain: DomainArgs,
    /// multiplexer
    #[arg(long = "mux", default_value = "")]
    mux: String,
    #[command(flatten)]
    http_auth: HttpAuthArgs,
}

/// `frpc stcp|sudp|xtcp`: a proxy, or with `visitor` its visitor.
#[derive(Args)]
pub struct SecretArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    base: BaseArgs,
    /// secret key
    #[arg(long = "sk", default_value = "")]
    sk: String,
    /// allow visitor users
    #[arg(long = "allow_users", alias = "allow-users", value_delimiter = ',')]
    allow_users: Vec<String>,
    #[command(subcommand)]
    visitor: Option<VisitorCmd>,
}

#[derive(Subcommand)]
pub enum VisitorCmd {
    /// Run frpc with a single visitor
    Visitor(VisitorArgs),
}

/// Flags of `frpc stcp|sudp|xtcp visitor` (frp's `registerVisitorBaseConfigFlags`).
#[derive(Args)]
pub struct VisitorArgs {
    /// visitor name
    #[arg(
        short = 'n',
        long = "visitor_name",
        alias = "visitor-name",
        default_value = ""
    )]
    visitor_name: String,
    #[command(flatten)]
    wire: WireArgs,
    /// secret key
    #[arg(long = "sk", default_value = "")]
    sk: String,
    /// server name
    #[arg(long = "server_name", alias = "server-name", default_value = "")]
    server_name: String,
    /// server user
    #[arg(long = "server-user", alias = "server_user", default_value = "")]
    server_user: String,
    /// bind addr
    #[arg(long = "bind_addr", alias = "bind-addr", default_value = "")]
    bind_addr: String,
    /// bind port
    #[arg(long = "bind_port", alias = "bind-port", default_value_t = 0)]
    bind_port: i64,
}

pub fn tcp_config(ty: &str, a: &TcpArgs) -> anyhow::Result<ClientConfig> {
    let mut p = proxy(ty, &a.base)?;
    p["remotePort"] = json!(a.remote_port);
    build(&a.common, Some(p), None)
}

pub fn http_config(a: &HttpArgs) -> anyhow::Result<ClientConfig> {
    let mut p = proxy("http", &a.base)?;
    domains(&mut p, &a.domain);
    p["locations"] = json!(a.locations);
    http_auth(&mut p, &a.http_auth);
    p["hostHeaderRewrite"] = json!(a.host_header_rewrite);
    build(&a.common, Some(p), None)
}

pub fn https_config(a: &HttpsArgs) -> anyhow::Result<ClientConfig> {
    let mut p = proxy("https", &a.base)?;
    domains(&mut p, &a.domain);
    build(&a.common, Some(p), None)
}

pub fn tcpmux_config(a: &TcpmuxArgs) -> anyhow::Result<ClientConfig> {
    let mut p = proxy("tcpmux", &a.base)?;
    domains(&mut p, &a.domain);
    p["multiplexer"] = json!(a.mux);
    http_auth(&mut p, &a.http_auth);
    build(&a.common, Some(p), None)
}

/// `frpc stcp|sudp|xtcp [visitor]`.
pub fn secret_config(ty: &str, a: &SecretArgs) -> anyhow::Result<ClientConfig> {
    if let Some(VisitorCmd::Visitor(v)) = &a.visitor {
        let visitor = json!({
            "name": v.visitor_name,
            "type": ty,
            "transport": {"useEncryption": v.wire.use_encryption, "useCompression": v.wire.use_compression},
            "secretKey": v.sk,
            "serverName": v.server_name,
            "serverUser": v.server_user,
            "bindAddr": v.bind_addr,
            "bindPort": v.bind_port,
        });
        return build(&a.common, None, Some(visitor));
    }
    let mut p = proxy(ty, &a.base)?;
    p["secretKey"] = json!(a.sk);
    p["allowUsers"] = json!(a.allow_users);
    build(&a.common, Some(p), None)
}

fn http_auth(p: &mut Value, a: &HttpAuthArgs) {
    p["httpUser"] = json!(a.http_user);
    p["httpPassword"] = json!(a.http_pwd);
}

fn domains(p: &mut Value, a: &DomainArgs) {
    p["customDomains"] = json!(a.custom_domain);
    p["subdomain"] = json!(a.subdomain);
}

/// pflag's `StringToString`: `k1=v1,k2=v2` (from one or several flags).
fn key_values(flag: &str, items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => anyhow::bail!(
                "invalid argument {kv:?} for \"--{flag}\" flag: {kv} must be formatted as key=value"
            ),
        })
        .collect()
}

fn proxy(ty: &str, a: &BaseArgs) -> anyhow::Result<Value> {
    let mut transport = json!({
        "useEncryption": a.wire.use_encryption,
        "useCompression": a.wire.use_compression,
        "bandwidthLimitMode": a.bandwidth_limit_mode,
    });
    if !a.bandwidth_limit.is_empty() {
        transport["bandwidthLimit"] = json!(a.bandwidth_limit);
    }
    Ok(json!({
        "name": a.proxy_name,
        "type": ty,
        "metadatas": key_values("metadatas", &a.metadatas)?,
        "annotations": key_values("annotations", &a.annotations)?,
        "localIP": a.local_ip,
        "localPort": a.local_port,
        "transport": transport,
    }))
}

fn build(
    c: &CommonArgs,
    proxy: Option<Value>,
    visitor: Option<Value>,
) -> anyhow::Result<ClientConfig> {
    // `-s host:port` is accepted too (frp would dial `host:port:7000`).
    let (server_addr, server_port) = match c.server_addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => {
            (h.to_string(), i64::from(p.parse::<u16>()?))
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
        "proxies": proxy.into_iter().collect::<Vec<_>>(),
        "visitors": visitor.into_iter().collect::<Vec<_>>(),
    });
    Ok(control::config::client_config_from_str(
        &cfg.to_string(),
        ConfigFormat::Json,
        true,
    )?)
}
