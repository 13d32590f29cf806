//! Legacy INI configs (`frps.ini` / `frpc.ini` with a `[common]` section), read the way
//! frp's `pkg/config/legacy` does and converted to the v1 structs as its `conversion.go`
//! does, so that old files keep working unchanged:
//! - the file is rendered as a template first (`{{ .Envs.NAME }}`);
//! - `[common]` holds the client or server settings under their old snake_case names;
//!   unknown keys are ignored (frp's legacy loader has no strict mode), and so are values
//!   that do not parse as the key's type (go-ini's `MapTo` keeps the default) — except
//!   values no v1 field can hold (a port above 65535, a bad `bandwidth_limit`,
//!   `allow_ports`), which are errors naming the section and key;
//! - frpc: every other section is a proxy, or a visitor with `role = visitor`; a
//!   `[range:NAME]` section with `local_port = 6000-6002` / `remote_port = 7000-7002`
//!   becomes proxies `NAME_0`, `NAME_1`, …; `includes` files add sections; `start` drops
//!   the sections it does not list;
//! - frps: `[plugin.NAME]` sections are `httpPlugins`.
//!
//! Legacy defaults that differ from v1 are kept: frps' dashboard (`webServer.addr`)
//! listens on 0.0.0.0. (`tls_enable` defaults to true in legacy INI too, since frp 0.50.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::client::ClientConfig;
use super::common::{BandwidthQuantity, PortsRange, TlsConfig};
use super::ini::{
    DEFAULT_SECTION, IniFile, IniKey, IniSection, parse_bool, parse_go_int, split_list,
};
use super::load::{Envs, glob_match, read};
use super::proxy::{
    ClientPluginConfig, ClientPluginType, ProxyConfig, ProxyType, VisitorConfig, VisitorType,
};
use super::server::{HttpPluginOptions, ServerConfig};
use super::{ConfigError, template};

/// What frps and frpc print when they load a legacy INI file (frp's exact text).
pub const DEPRECATION_WARNING: &str = "WARNING: ini format is deprecated and the support will be removed in the future, please use yaml/json/toml format instead!";

/// frp's `DetectLegacyINIFormat`: the raw (unrendered) text parses as INI with go-ini's
/// default options and has a `[common]` section.
pub(crate) fn is_legacy_ini(raw: &str) -> bool {
    IniFile::parse(raw, false).is_ok_and(|f| f.section("common").is_some())
}

/// For a text that is not legacy INI by [`is_legacy_ini`] but has a `[common]` header and
/// is not TOML either: the INI syntax error, so that a broken `frpc.ini` is reported as INI
/// (frp would report whatever its TOML/YAML parsers make of it).
pub(crate) fn broken_ini(file: &str, raw: &str) -> Option<ConfigError> {
    let has_common = raw.lines().any(|l| l.trim() == "[common]");
    if !has_common || toml::from_str::<toml::Table>(raw).is_ok() {
        return None;
    }
    let e = IniFile::parse(raw, false).err()?;
    Some(syntax_error(&Sources::one(file), e))
}

/// Which file, and which line of it, each line of a concatenated text came from.
struct Sources {
    /// (first line in the concatenation, 1-based; file label), in order.
    parts: Vec<(usize, String)>,
}

impl Sources {
    fn one(file: &str) -> Self {
        Self {
            parts: vec![(1, file.to_owned())],
        }
    }

    fn locate(&self, line: usize) -> (String, usize) {
        let (start, file) = self
            .parts
            .iter()
            .rev()
            .find(|(start, _)| *start <= line)
            .unwrap_or(&self.parts[0]);
        (file.clone(), line + 1 - start)
    }
}

struct Ctx<'a> {
    ini: &'a IniFile,
    sources: &'a Sources,
}

/// One section being converted, with go-ini's lookups.
struct Sec<'a> {
    ctx: &'a Ctx<'a>,
    sec: &'a IniSection,
}

impl<'a> Sec<'a> {
    fn key(&self, name: &str) -> Option<&'a IniKey> {
        self.ctx.ini.get(self.sec, name)
    }

    /// The value, "" when missing.
    fn string(&self, name: &str) -> String {
        self.key(name).map(|k| k.value.clone()).unwrap_or_default()
    }

    /// go-ini keeps a string field's default when the value is empty.
    fn string_or(&self, name: &str, default: &str) -> String {
        match self.key(name) {
            Some(k) if !k.value.is_empty() => k.value.clone(),
            _ => default.to_owned(),
        }
    }

    /// go-ini's `MapTo` on an int: a value that does not parse keeps the default.
    fn int_or(&self, name: &str, default: i64) -> i64 {
        self.key(name)
            .and_then(|k| parse_go_int(&k.value))
            .unwrap_or(default)
    }

    fn int(&self, name: &str) -> i64 {
        self.int_or(name, 0)
    }

    fn bool_or(&self, name: &str, default: bool) -> bool {
        self.key(name)
            .and_then(|k| parse_bool(&k.value))
            .unwrap_or(default)
    }

    fn bool(&self, name: &str) -> bool {
        self.bool_or(name, false)
    }

    /// An int port; outside 0..=65535 is an error (frp's v1 validation rejects it too).
    fn port(&self, name: &str) -> Result<u16, ConfigError> {
        let v = self.int(name);
        u16::try_from(v).map_err(|_| {
            self.err(
                Some(name),
                format!("port number {v} must be in the range 0..65535"),
            )
        })
    }

    /// go-ini's `Strings(",")`; empty keeps the default (empty).
    fn list(&self, name: &str) -> Vec<String> {
        self.key(name)
            .map(|k| split_list(&k.value))
            .unwrap_or_default()
    }

    /// frp's `GetMapWithoutPrefix(section.KeysHash(), prefix)`: the section's own keys.
    fn map_without_prefix(&self, prefix: &str) -> BTreeMap<String, String> {
        self.sec
            .with_prefix(prefix)
            .map(|(k, v)| (k.to_owned(), v.value.clone()))
            .collect()
    }

    /// An error at `key` (its line) or at the section header.
    fn err(&self, key: Option<&str>, message: impl Into<String>) -> ConfigError {
        let line = key
            .and_then(|k| self.key(k))
            .map_or(self.sec.line, |k| k.line);
        let (file, line) = self.ctx.sources.locate(line.max(1));
        ConfigError::Ini {
            file,
            line: Some(line),
            section: Some(self.sec.name.clone()),
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }
}

fn syntax_error(sources: &Sources, e: super::ini::IniError) -> ConfigError {
    let (file, line) = sources.locate(e.line);
    ConfigError::Ini {
        file,
        line: Some(line),
        section: None,
        key: None,
        message: e.message,
    }
}

fn render(file: &str, raw: &str, envs: Envs<'_>) -> Result<String, ConfigError> {
    template::render(raw, envs).map_err(|e| ConfigError::Template {
        file: file.to_owned(),
        line: e.line,
        message: e.message,
    })
}

fn common<'a>(ctx: &'a Ctx<'a>, file: &str) -> Result<Sec<'a>, ConfigError> {
    match ctx.ini.section("common") {
        Some(sec) => Ok(Sec { ctx, sec }),
        None => Err(ConfigError::Ini {
            file: file.to_owned(),
            line: None,
            section: None,
            key: None,
            message: "invalid configuration file, not found [common] section".into(),
        }),
    }
}

fn auth_scopes(s: &Sec<'_>) -> Vec<String> {
    let mut scopes = Vec::new();
    if s.bool("authenticate_heartbeats") {
        scopes.push("HeartBeats".to_owned());
    }
    if s.bool("authenticate_new_work_conns") {
        scopes.push("NewWorkConns".to_owned());
    }
    scopes
}

// ---- frps ----

/// frp's `UnmarshalServerConfFromIni` + `Convert_ServerCommonConf_To_v1` (not completed).
pub(crate) fn server_from_ini(
    file: &str,
    raw: &str,
    envs: Envs<'_>,
) -> Result<ServerConfig, ConfigError> {
    let text = render(file, raw, envs)?;
    let sources = Sources::one(file);
    let ini = IniFile::parse(&text, true).map_err(|e| syntax_error(&sources, e))?;
    let ctx = Ctx {
        ini: &ini,
        sources: &sources,
    };
    let s = common(&ctx, file)?;
    let mut c = ServerConfig::unset();

    c.auth.method = s.string_or("authentication_method", "token");
    c.auth.additional_scopes = auth_scopes(&s);
    c.auth.token = s.string("token");
    c.auth.oidc.issuer = s.string("oidc_issuer");
    c.auth.oidc.audience = s.string("oidc_audience");
    c.auth.oidc.skip_expiry_check = s.bool("oidc_skip_expiry_check");
    c.auth.oidc.skip_issuer_check = s.bool("oidc_skip_issuer_check");

    c.bind_addr = s.string("bind_addr");
    c.bind_port = s.port("bind_port")?;
    c.kcp_bind_port = s.port("kcp_bind_port")?;
    c.quic_bind_port = s.port("quic_bind_port")?;
    c.transport.quic.keepalive_period = s.int("quic_keepalive_period");
    c.transport.quic.max_idle_timeout = s.int("quic_max_idle_timeout");
    c.transport.quic.max_incoming_streams = s.int("quic_max_incoming_streams");

    c.proxy_bind_addr = s.string("proxy_bind_addr");
    c.vhost_http_port = s.port("vhost_http_port")?;
    c.vhost_https_port = s.port("vhost_https_port")?;
    c.tcpmux_http_connect_port = s.port("tcpmux_httpconnect_port")?;
    c.tcpmux_passthrough = s.bool("tcpmux_passthrough");
    c.vhost_http_timeout = s.int("vhost_http_timeout");

    // Legacy default: the dashboard listens on every address.
    c.web_server.addr = s.string_or("dashboard_addr", "0.0.0.0");
    c.web_server.port = s.port("dashboard_port")?;
    c.web_server.user = s.string("dashboard_user");
    c.web_server.password = s.string("dashboard_pwd");
    c.web_server.assets_dir = s.string("assets_dir");
    if s.bool("dashboard_tls_mode") {
        c.web_server.tls = Some(TlsConfig {
            cert_file: s.string("dashboard_tls_cert_file"),
            key_file: s.string("dashboard_tls_key_file"),
            ..TlsConfig::default()
        });
        // As in frp's conversion, pprof_enable only carries over with dashboard TLS.
        c.web_server.pprof_enable = s.bool("pprof_enable");
    }
    c.enable_prometheus = s.bool("enable_prometheus");

    c.log.to = s.string_or("log_file", "console");
    c.log.level = s.string("log_level");
    c.log.max_days = s.int("log_max_days");
    c.log.disable_print_color = s.bool("disable_log_color");

    c.detailed_errors_to_client = s.bool_or("detailed_errors_to_client", true);
    c.sub_domain_host = s.string("subdomain_host");
    c.custom_404_page = s.string("custom_404_page");
    c.user_conn_timeout = s.int("user_conn_timeout");
    c.udp_packet_size = s.int("udp_packet_size");
    c.nathole_analysis_data_reserve_hours = s.int("nat_hole_analysis_data_reserve_hours");

    c.transport.tcp_mux = s.bool_or("tcp_mux", true);
    c.transport.tcp_mux_keepalive_interval = s.int("tcp_mux_keepalive_interval");
    c.transport.tcp_keepalive = s.int("tcp_keepalive");
    c.transport.max_pool_count = s.int("max_pool_count");
    c.transport.heartbeat_timeout = s.int("heartbeat_timeout");
    c.transport.tls.force = s.bool("tls_only");
    c.transport.tls.cert_file = s.string("tls_cert_file");
    c.transport.tls.key_file = s.string("tls_key_file");
    c.transport.tls.trusted_ca_file = s.string("tls_trusted_ca_file");

    c.max_ports_per_client = s.int("max_ports_per_client");
    let allow = s.string("allow_ports");
    if !allow.is_empty() {
        // frp ignores a parse error here, which silently allows every port; refuse instead.
        c.allow_ports = parse_ports_ranges(&allow)
            .map_err(|e| s.err(Some("allow_ports"), format!("{allow:?}: {e}")))?;
    }

    for sec in &ini.sections {
        let Some(name) = sec.name.strip_prefix("plugin.") else {
            continue;
        };
        let p = Sec { ctx: &ctx, sec };
        let opt = HttpPluginOptions {
            name: name.trim().to_owned(),
            addr: p.string("addr"),
            path: p.string("path"),
            ops: p.list("ops"),
            tls_verify: p.bool("tlsVerify"),
        };
        // frp keeps them in a map by name.
        match c.http_plugins.iter_mut().find(|o| o.name == opt.name) {
            Some(o) => *o = opt,
            None => c.http_plugins.push(opt),
        }
    }
    Ok(c)
}

/// frp's `NewPortsRangeSliceFromString`: "2000-3000,3001".
fn parse_ports_ranges(s: &str) -> Result<Vec<PortsRange>, String> {
    let num = |t: &str| -> Result<u16, String> {
        let t = t.trim();
        let v: i64 = t
            .parse()
            .map_err(|_| format!("range number is invalid, {t:?} is not a number"))?;
        u16::try_from(v).map_err(|_| format!("port number {v} must be in the range 0..65535"))
    };
    s.trim()
        .split(',')
        .map(|part| {
            let nums: Vec<&str> = part.split('-').collect();
            match nums.as_slice() {
                [single] => Ok(PortsRange {
                    single: num(single)?,
                    ..PortsRange::default()
                }),
                [lo, hi] => {
                    let (start, end) = (num(lo)?, num(hi)?);
                    if end < start {
                        return Err("range number is invalid".into());
                    }
                    Ok(PortsRange {
                        start,
                        end,
                        ..PortsRange::default()
                    })
                }
                _ => Err("range number is invalid".into()),
            }
        })
        .collect()
}

/// frp's `util.ParseRangeNumbers` for ports: "6000-6002,6005" → every number.
fn parse_range_numbers(s: &str) -> Result<Vec<i64>, String> {
    let mut out = Vec::new();
    for part in s.trim().split(',') {
        let nums: Vec<&str> = part.split('-').collect();
        // Ports: bounded, so that a huge range cannot exhaust memory.
        let num = |t: &str| -> Result<i64, String> {
            let v: i64 = t
                .trim()
                .parse()
                .map_err(|_| format!("range number is invalid, {:?} is not a number", t.trim()))?;
            if !(0..=65535).contains(&v) {
                return Err(format!("port number {v} must be in the range 0..65535"));
            }
            Ok(v)
        };
        match nums.as_slice() {
            [single] => out.push(num(single)?),
            [lo, hi] => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                if hi < lo {
                    return Err("range number is invalid".into());
                }
                out.extend(lo..=hi);
            }
            _ => return Err("range number is invalid".into()),
        }
    }
    Ok(out)
}

// ---- frpc ----

/// frp's `ParseClientConfig` + conversion (not completed): `[common]`, `includes`, range
/// sections, proxies and visitors.
pub(crate) fn client_from_ini(
    file: &str,
    raw: &str,
    envs: Envs<'_>,
) -> Result<ClientConfig, ConfigError> {
    let main = render(file, raw, envs)?;
    let main_sources = Sources::one(file);
    let main_ini = IniFile::parse(&main, true).map_err(|e| syntax_error(&main_sources, e))?;
    let main_ctx = Ctx {
        ini: &main_ini,
        sources: &main_sources,
    };
    let mut c = client_common(&common(&main_ctx, file)?)?;

    // frp appends every included file (rendered) to the text and parses it all again.
    let mut text = main.clone();
    let mut sources = Sources::one(file);
    for pattern in &c.includes {
        for inc in include_files(file, pattern)? {
            let label = inc.display().to_string();
            let inc_raw = read(&inc)?;
            let inc_text = render(&label, &inc_raw, envs)?;
            text.push('\n');
            sources
                .parts
                .push((text.matches('\n').count() + 1, label.clone()));
            text.push_str(&inc_text);
            text.push('\n');
        }
    }
    let mut ini = IniFile::parse(&text, true).map_err(|e| syntax_error(&sources, e))?;
    expand_ranges(&mut ini, &sources)?;

    let ctx = Ctx {
        ini: &ini,
        sources: &sources,
    };
    for sec in &ini.sections {
        let name = sec.name.as_str();
        if name == DEFAULT_SECTION || name == "common" || name.starts_with("range:") {
            continue;
        }
        if !c.start.is_empty() && !c.start.iter().any(|s| s == name) {
            continue;
        }
        let s = Sec { ctx: &ctx, sec };
        match s.string("role").as_str() {
            "" | "server" => c.proxies.push(proxy(&s)?),
            "visitor" => c.visitors.push(visitor(&s)?),
            _ => {
                return Err(s.err(
                    Some("role"),
                    format!("proxy {name} role should be 'server' or 'visitor'"),
                ));
            }
        }
    }
    Ok(c)
}

/// frp's `getIncludeContents` for one pattern: files (not directories) of the pattern's
/// directory, relative to the working directory, whose name matches its last element, in
/// name order.
fn include_files(file: &str, pattern: &str) -> Result<Vec<PathBuf>, ConfigError> {
    let p = Path::new(pattern);
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let glob = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let entries = std::fs::read_dir(&dir).map_err(|e| ConfigError::Ini {
        file: file.to_owned(),
        line: None,
        section: Some("common".into()),
        key: Some("includes".into()),
        message: format!("include: directory of {pattern} not exist: {e}"),
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter(|e| glob_match(&glob, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// frp's `renderRangeProxyTemplates`: each `[range:NAME]` adds sections `NAME_0`, … (at the
/// end, merged into same-named ones) with every key copied and the ports set one by one.
fn expand_ranges(ini: &mut IniFile, sources: &Sources) -> Result<(), ConfigError> {
    let ranges: Vec<IniSection> = ini
        .sections
        .iter()
        .filter(|s| s.name.starts_with("range:"))
        .cloned()
        .collect();
    for range in &ranges {
        let (locals, remotes) = {
            let ctx = Ctx {
                ini: &*ini,
                sources,
            };
            let s = Sec {
                ctx: &ctx,
                sec: range,
            };
            let wrap = |key: Option<&str>, e: String| {
                s.err(
                    key,
                    format!("failed to render template for proxy {}: {e}", range.name),
                )
            };
            let (local, remote) = (s.string("local_port"), s.string("remote_port"));
            if local.is_empty() || remote.is_empty() {
                let key = if local.is_empty() {
                    "local_port"
                } else {
                    "remote_port"
                };
                return Err(wrap(Some(key), "local_port or remote_port is empty".into()));
            }
            let locals = parse_range_numbers(&local).map_err(|e| wrap(Some("local_port"), e))?;
            let remotes = parse_range_numbers(&remote).map_err(|e| wrap(Some("remote_port"), e))?;
            if locals.len() != remotes.len() {
                return Err(wrap(
                    Some("remote_port"),
                    "local ports number should be same with remote ports number".into(),
                ));
            }
            if locals.is_empty() {
                return Err(wrap(
                    Some("local_port"),
                    "local_port and remote_port is necessary".into(),
                ));
            }
            (locals, remotes)
        };
        let prefix = range.name["range:".len()..].trim();
        for (i, (l, r)) in locals.iter().zip(&remotes).enumerate() {
            let sec = ini.section_mut_or_new(&format!("{prefix}_{i}"), range.line);
            for k in &range.keys {
                sec.set(&k.name, &k.value, k.line);
            }
            let line = |name: &str| range.own(name).map_or(range.line, |k| k.line);
            sec.set("local_port", &l.to_string(), line("local_port"));
            sec.set("remote_port", &r.to_string(), line("remote_port"));
        }
    }
    Ok(())
}

/// frp's `ClientCommonConf` (defaults of `GetDefaultClientConf`) converted to v1, with
/// its `Validate()`.
fn client_common(s: &Sec<'_>) -> Result<ClientConfig, ConfigError> {
    let mut c = ClientConfig::unset();
    c.user = s.string("user");
    c.auth.method = s.string_or("authentication_method", "token");
    c.auth.additional_scopes = auth_scopes(s);
    c.auth.token = s.string("token");
    let o = &mut c.auth.oidc;
    o.client_id = s.string("oidc_client_id");
    o.client_secret = s.string("oidc_client_secret");
    o.audience = s.string("oidc_audience");
    o.scope = s.string("oidc_scope");
    o.token_endpoint_url = s.string("oidc_token_endpoint_url");
    o.additional_endpoint_params = s.map_without_prefix("oidc_additional_");

    c.server_addr = s.string("server_addr");
    c.server_port = s.port("server_port")?;
    c.nat_hole_stun_server = s.string("nat_hole_stun_server");
    let t = &mut c.transport;
    t.dial_server_timeout = s.int("dial_server_timeout");
    t.dial_server_keepalive = s.int("dial_server_keepalive");
    t.connect_server_local_ip = s.string("connect_server_local_ip");
    t.proxy_url = s.string("http_proxy");
    t.pool_count = s.int("pool_count");
    t.tcp_mux = s.bool_or("tcp_mux", true);
    t.tcp_mux_keepalive_interval = s.int("tcp_mux_keepalive_interval");
    t.protocol = s.string_or("protocol", "tcp");
    t.heartbeat_interval = s.int("heartbeat_interval");
    t.heartbeat_timeout = s.int("heartbeat_timeout");
    t.quic.keepalive_period = s.int("quic_keepalive_period");
    t.quic.max_idle_timeout = s.int("quic_max_idle_timeout");
    t.quic.max_incoming_streams = s.int("quic_max_incoming_streams");
    t.tls.enable = s.bool_or("tls_enable", true);
    t.tls.disable_custom_tls_first_byte = s.bool_or("disable_custom_tls_first_byte", true);
    t.tls.cert_file = s.string("tls_cert_file");
    t.tls.key_file = s.string("tls_key_file");
    t.tls.trusted_ca_file = s.string("tls_trusted_ca_file");
    t.tls.server_name = s.string("tls_server_name");

    c.log.to = s.string("log_file");
    c.log.level = s.string("log_level");
    c.log.max_days = s.int("log_max_days");
    c.log.disable_print_color = s.bool("disable_log_color");

    c.web_server.addr = s.string("admin_addr");
    c.web_server.port = s.port("admin_port")?;
    c.web_server.user = s.string("admin_user");
    c.web_server.password = s.string("admin_pwd");
    c.web_server.assets_dir = s.string("assets_dir");
    c.web_server.pprof_enable = s.bool("pprof_enable");

    c.dns_server = s.string("dns_server");
    c.login_fail_exit = s.bool_or("login_fail_exit", true);
    c.start = s.list("start");
    c.udp_packet_size = s.int("udp_packet_size");
    c.metadatas = s.map_without_prefix("meta_");
    c.includes = s.list("includes");

    // frp's ClientCommonConf.Validate().
    let t = &c.transport;
    if t.heartbeat_timeout > 0
        && t.heartbeat_interval > 0
        && t.heartbeat_timeout < t.heartbeat_interval
    {
        return Err(s.err(
            Some("heartbeat_timeout"),
            "parse config error: invalid heartbeat_timeout, heartbeat_timeout is less than heartbeat_interval",
        ));
    }
    if !["tcp", "kcp", "quic", "websocket", "wss"].contains(&t.protocol.as_str()) {
        return Err(s.err(Some("protocol"), "parse config error: invalid protocol"));
    }
    Ok(c)
}

/// A proxy section (`Convert_ProxyConf_To_v1`); not completed.
fn proxy(s: &Sec<'_>) -> Result<ProxyConfig, ConfigError> {
    let name = s.sec.name.as_str();
    let fail =
        |key: &str, e: String| s.err(Some(key), format!("failed to parse proxy {name}, err: {e}"));
    let ty = match s.string("type").as_str() {
        "" => ProxyType::Tcp,
        t => ProxyType::parse(t).ok_or_else(|| fail("type", format!("invalid type [{t}]")))?,
    };
    let mut p = ProxyConfig::new(name, ty);
    p.metadatas = s.map_without_prefix("meta_");
    p.transport.use_encryption = s.bool("use_encryption");
    p.transport.use_compression = s.bool("use_compression");
    p.transport.bandwidth_limit = BandwidthQuantity::parse(&s.string("bandwidth_limit"))
        .map_err(|e| fail("bandwidth_limit", e))?;
    p.transport.bandwidth_limit_mode = s.string("bandwidth_limit_mode");
    p.transport.proxy_protocol_version = s.string("proxy_protocol_version");
    p.load_balancer.group = s.string("group");
    p.load_balancer.group_key = s.string("group_key");
    p.health_check.check_type = s.string("health_check_type");
    p.health_check.timeout_seconds = s.int("health_check_timeout_s");
    p.health_check.max_failed = s.int("health_check_max_failed");
    p.health_check.interval_seconds = s.int("health_check_interval_s");
    p.health_check.path = s.string("health_check_url");
    p.local_ip = s.string("local_ip");
    p.local_port = s.port("local_port")?;
    p.plugin = plugin(s)?;

    match ty {
        ProxyType::Tcp | ProxyType::Udp => p.remote_port = s.port("remote_port")?,
        ProxyType::Http => {
            p.custom_domains = s.list("custom_domains");
            p.subdomain = s.string("subdomain");
            p.locations = s.list("locations");
            p.http_user = s.string("http_user");
            p.http_password = s.string("http_pwd");
            p.host_header_rewrite = s.string("host_header_rewrite");
            p.request_headers.set = s.map_without_prefix("header_");
            p.route_by_http_user = s.string("route_by_http_user");
        }
        ProxyType::Https => {
            p.custom_domains = s.list("custom_domains");
            p.subdomain = s.string("subdomain");
        }
        ProxyType::Tcpmux => {
            p.custom_domains = s.list("custom_domains");
            p.subdomain = s.string("subdomain");
            p.http_user = s.string("http_user");
            p.http_password = s.string("http_pwd");
            p.route_by_http_user = s.string("route_by_http_user");
            p.multiplexer = s.string("multiplexer");
        }
        ProxyType::Stcp | ProxyType::Sudp | ProxyType::Xtcp => {
            p.secret_key = s.string("sk");
            p.allow_users = s.list("allow_users");
        }
    }
    Ok(p)
}

/// `plugin = NAME` with its `plugin_*` parameters, as frp's conversion maps them.
fn plugin(s: &Sec<'_>) -> Result<Option<ClientPluginConfig>, ConfigError> {
    let name = s.string("plugin");
    if name.is_empty() {
        return Ok(None);
    }
    let ty = ClientPluginType::parse(&name).ok_or_else(|| {
        s.err(
            Some("plugin"),
            format!(
                "failed to parse proxy {}, err: unknown plugin type: {name}",
                s.sec.name
            ),
        )
    })?;
    let params: BTreeMap<String, String> = s
        .sec
        .with_prefix("plugin_")
        .map(|(k, v)| (k.to_owned(), v.value.clone()))
        .collect();
    let param = |k: &str| params.get(k).cloned().unwrap_or_default();
    let mut p = ClientPluginConfig {
        plugin_type: ty,
        local_addr: String::new(),
        host_header_rewrite: String::new(),
        request_headers: Default::default(),
        enable_http2: true,
        crt_path: String::new(),
        key_path: String::new(),
        http_user: String::new(),
        http_password: String::new(),
        username: String::new(),
        password: String::new(),
        local_path: String::new(),
        strip_prefix: String::new(),
        unix_path: String::new(),
    };
    let headers = || -> BTreeMap<String, String> {
        params
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("header_")
                    .filter(|h| !h.is_empty())
                    .map(|h| (h.to_owned(), v.clone()))
            })
            .collect()
    };
    match ty {
        ClientPluginType::Http2Https => {
            p.local_addr = param("local_addr");
            p.host_header_rewrite = param("host_header_rewrite");
            p.request_headers.set = headers();
        }
        ClientPluginType::HttpProxy => {
            p.http_user = param("http_user");
            p.http_password = param("http_passwd");
        }
        ClientPluginType::Https2Http | ClientPluginType::Https2Https => {
            p.local_addr = param("local_addr");
            p.host_header_rewrite = param("host_header_rewrite");
            p.request_headers.set = headers();
            p.crt_path = param("crt_path");
            p.key_path = param("key_path");
        }
        ClientPluginType::Socks5 => {
            p.username = param("user");
            p.password = param("passwd");
        }
        ClientPluginType::StaticFile => {
            p.local_path = param("local_path");
            p.strip_prefix = param("strip_prefix");
            p.http_user = param("http_user");
            p.http_password = param("http_passwd");
        }
        ClientPluginType::UnixDomainSocket => p.unix_path = param("unix_path"),
        // Newer than the INI format: frp's conversion sets only the type.
        ClientPluginType::Http2Http | ClientPluginType::Tls2Raw | ClientPluginType::VirtualNet => {}
    }
    Ok(Some(p))
}

/// A `role = visitor` section (`Convert_VisitorConf_To_v1` with the legacy defaults).
fn visitor(s: &Sec<'_>) -> Result<VisitorConfig, ConfigError> {
    let name = s.sec.name.as_str();
    let fail = |e: String| {
        s.err(
            Some("type"),
            format!("failed to parse visitor {name}, err: {e}"),
        )
    };
    let ty = match s.string("type").as_str() {
        "" => return Err(fail("type shouldn't be empty".into())),
        t => VisitorType::parse(t).ok_or_else(|| fail(format!("type [{t}] error")))?,
    };
    let positive_or = |k: &str, d: i64| match s.int(k) {
        v if v <= 0 => d,
        v => v,
    };
    let xtcp = ty == VisitorType::Xtcp;
    Ok(VisitorConfig {
        name: name.to_owned(),
        visitor_type: ty,
        enabled: true,
        transport: super::proxy::VisitorTransport {
            use_encryption: s.bool("use_encryption"),
            use_compression: s.bool("use_compression"),
        },
        secret_key: s.string("sk"),
        server_user: s.string("server_user"),
        server_name: s.string("server_name"),
        bind_addr: s.string_or("bind_addr", "127.0.0.1"),
        bind_port: s.int("bind_port"),
        plugin: None,
        protocol: if xtcp {
            s.string_or("protocol", "quic")
        } else {
            String::new()
        },
        keep_tunnel_open: xtcp && s.bool("keep_tunnel_open"),
        max_retries_an_hour: if xtcp {
            positive_or("max_retries_an_hour", 8)
        } else {
            0
        },
        min_retry_interval: if xtcp {
            positive_or("min_retry_interval", 90)
        } else {
            0
        },
        fallback_to: if xtcp {
            s.string("fallback_to")
        } else {
            String::new()
        },
        fallback_timeout_ms: if xtcp {
            positive_or("fallback_timeout_ms", 1000)
        } else {
            0
        },
        nat_traversal: None,
    })
}
