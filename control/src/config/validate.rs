//! frp's `validation` package: checks run by `frps verify` / `frpc verify` and at startup,
//! with frp's wording.

use std::collections::BTreeMap;

use super::client::ClientConfig;
use super::common::{LogConfig, PortsRange, ValueSource, WebServerConfig};
use super::proxy::{ClientPluginType, ProxyConfig, ProxyType, VisitorConfig, VisitorType};
use super::server::ServerConfig;

/// A failed validation: frp's message(s), several joined by newlines like Go's `errors.Join`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

const LOG_LEVELS: &str = "[trace debug info warn error]";
const AUTH_METHODS: &str = "[token oidc]";
const AUTH_SCOPES: &str = "[HeartBeats NewWorkConns]";
const HTTP_PLUGIN_OPS: &[&str] = &[
    "Login",
    "NewProxy",
    "CloseProxy",
    "Ping",
    "NewWorkConn",
    "NewUserConn",
];

/// `--allow-unsafe TokenSourceExec`: run `auth.tokenSource` / `auth.oidc.tokenSource` commands.
pub const TOKEN_SOURCE_EXEC: &str = "TokenSourceExec";
/// The unsafe features frps and frpc know (`--allow-unsafe` help text).
pub const UNSAFE_FEATURES: &[&str] = &[TOKEN_SOURCE_EXEC];

/// The features enabled with `--allow-unsafe` (frp's `security.UnsafeFeatures`). Names are not
/// checked, as in frp: an unknown one enables nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsafeFeatures(std::collections::BTreeSet<String>);

impl UnsafeFeatures {
    pub fn new<S: Into<String>>(allowed: impl IntoIterator<Item = S>) -> Self {
        Self(allowed.into_iter().map(Into::into).collect())
    }

    pub fn is_enabled(&self, feature: &str) -> bool {
        self.0.contains(feature)
    }

    /// frp's `ValidateUnsafeFeature`.
    fn check(&self, feature: &str) -> Result<(), String> {
        if self.is_enabled(feature) {
            Ok(())
        } else {
            Err(format!(
                "unsafe feature \"{feature}\" is not enabled. To enable it, ensure it is allowed in the configuration or command line flags"
            ))
        }
    }
}

#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, e: impl Into<String>) {
        self.0.push(e.into());
    }
    fn check(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.push(e);
        }
    }
    fn finish(self) -> Result<(), ValidationError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError(self.0.join("\n")))
        }
    }
}

fn validate_auth(
    errs: &mut Errors,
    unsafe_features: &UnsafeFeatures,
    method: &str,
    scopes: &[String],
    token: &str,
    src: Option<&ValueSource>,
) {
    if !matches!(method, "token" | "oidc") {
        errs.push(format!(
            "invalid auth method, optional values are {AUTH_METHODS}"
        ));
    }
    if !scopes
        .iter()
        .all(|s| matches!(s.as_str(), "HeartBeats" | "NewWorkConns"))
    {
        errs.push(format!(
            "invalid auth additional scopes, optional values are {AUTH_SCOPES}"
        ));
    }
    if !token.is_empty() && src.is_some() {
        errs.push("cannot specify both auth.token and auth.tokenSource");
    }
    if let Some(src) = src {
        validate_source(errs, unsafe_features, src, "auth.tokenSource");
    }
}

/// frp's checks of a `tokenSource`: `exec` needs `--allow-unsafe TokenSourceExec`.
fn validate_source(
    errs: &mut Errors,
    unsafe_features: &UnsafeFeatures,
    src: &ValueSource,
    key: &str,
) {
    if src.source_type == "exec" {
        errs.check(unsafe_features.check(TOKEN_SOURCE_EXEC));
    }
    if let Err(e) = src.validate() {
        errs.push(format!("invalid {key}: {e}"));
    }
}

fn validate_log(c: &LogConfig) -> Result<(), String> {
    if matches!(
        c.level.as_str(),
        "trace" | "debug" | "info" | "warn" | "error"
    ) {
        Ok(())
    } else {
        Err(format!(
            "invalid log level, optional values are {LOG_LEVELS}"
        ))
    }
}

fn validate_web_server(c: &WebServerConfig) -> Result<(), String> {
    if let Some(tls) = &c.tls {
        if tls.cert_file.is_empty() {
            return Err("tls.certFile must be specified when tls is enabled".into());
        }
        if tls.key_file.is_empty() {
            return Err("tls.keyFile must be specified when tls is enabled".into());
        }
    }
    Ok(())
}

fn validate_allow_port(r: &PortsRange) -> Result<(), String> {
    let ok = if r.single > 0 {
        r.start == 0 && r.end == 0
    } else {
        r.start > 0 && r.start <= r.end
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "allowPorts: invalid entry {{start = {}, end = {}, single = {}}}: use {{single = N}} or {{start = A, end = B}} with 0 < A <= B",
            r.start, r.end, r.single
        ))
    }
}

impl ServerConfig {
    /// frp's `ValidateServerConfig`, plus `allowPorts` entries and the TLS cert/key pair,
    /// with no unsafe feature enabled.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_with(&UnsafeFeatures::default())
    }

    /// [`Self::validate`] with the features enabled by `--allow-unsafe`.
    pub fn validate_with(&self, unsafe_features: &UnsafeFeatures) -> Result<(), ValidationError> {
        let mut errs = Errors::default();
        validate_auth(
            &mut errs,
            unsafe_features,
            &self.auth.method,
            &self.auth.additional_scopes,
            &self.auth.token,
            self.auth.token_source.as_ref(),
        );
        errs.check(validate_log(&self.log));
        errs.check(validate_web_server(&self.web_server));
        for r in &self.allow_ports {
            errs.check(validate_allow_port(r));
        }
        let tls = &self.transport.tls;
        if tls.cert_file.is_empty() != tls.key_file.is_empty() {
            errs.push(
                "transport.tls.certFile and transport.tls.keyFile must be specified together",
            );
        }
        for p in &self.http_plugins {
            if !p
                .ops
                .iter()
                .all(|op| HTTP_PLUGIN_OPS.contains(&op.as_str()))
            {
                errs.push(format!(
                    "invalid http plugin ops, optional values are [{}]",
                    HTTP_PLUGIN_OPS.join(" ")
                ));
            }
        }
        errs.finish()
    }

    /// frp's `ValidateProxyConfigurerForServer`: what frps checks on a `NewProxy`.
    pub fn validate_proxy(&self, p: &ProxyConfig) -> Result<(), ValidationError> {
        let domains = |p: &ProxyConfig| -> Result<(), String> {
            for d in &p.custom_domains {
                let host = &self.sub_domain_host;
                if !host.is_empty()
                    && host.split('.').count() < d.split('.').count()
                    && d.ends_with(&format!(".{host}"))
                {
                    return Err(format!(
                        "custom domain [{d}] should not belong to subdomain host [{host}]"
                    ));
                }
            }
            if !p.subdomain.is_empty() {
                if self.sub_domain_host.is_empty() {
                    return Err(
                        "subdomain is not supported because this feature is not enabled in server"
                            .into(),
                    );
                }
                if p.subdomain.contains(['.', '*']) {
                    return Err("'.' and '*' are not supported in subdomain".into());
                }
            }
            Ok(())
        };
        let r = match p.proxy_type {
            ProxyType::Http if self.vhost_http_port == 0 => {
                Err("type [http] not supported when vhost http port is not set".into())
            }
            ProxyType::Https if self.vhost_https_port == 0 => {
                Err("type [https] not supported when vhost https port is not set".into())
            }
            ProxyType::Tcpmux
                if p.multiplexer == "httpconnect" && self.tcpmux_http_connect_port == 0 =>
            {
                Err("tcpmux with multiplexer httpconnect not supported because this feature is not enabled in server".into())
            }
            ProxyType::Http | ProxyType::Https | ProxyType::Tcpmux => domains(p),
            _ => Ok(()),
        };
        r.map_err(ValidationError)
    }
}

impl ClientConfig {
    /// frp's `ValidateAllClientConfig`: the common part (all errors, joined), then each
    /// proxy and visitor frpc would start (the first error, prefixed `proxy NAME:`), with no
    /// unsafe feature enabled.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_with(&UnsafeFeatures::default())
    }

    /// [`Self::validate`] with the features enabled by `--allow-unsafe`.
    pub fn validate_with(&self, unsafe_features: &UnsafeFeatures) -> Result<(), ValidationError> {
        let mut errs = Errors::default();
        if !self.virtual_net.address.is_empty()
            && self.feature_gates.get("VirtualNet") != Some(&true)
        {
            errs.push("VirtualNet feature is not enabled; enable it by setting the appropriate feature gate flag");
        }
        let auth = &self.auth;
        validate_auth(
            &mut errs,
            unsafe_features,
            &auth.method,
            &auth.additional_scopes,
            &auth.token,
            auth.token_source.as_ref(),
        );
        let oidc = &auth.oidc;
        if let Some(src) = &oidc.token_source {
            if !oidc.client_id.is_empty()
                || !oidc.client_secret.is_empty()
                || !oidc.audience.is_empty()
                || !oidc.scope.is_empty()
                || !oidc.token_endpoint_url.is_empty()
                || !oidc.additional_endpoint_params.is_empty()
                || !oidc.trusted_ca_file.is_empty()
                || oidc.insecure_skip_verify
                || !oidc.proxy_url.is_empty()
            {
                errs.push(
                    "cannot specify both auth.oidc.tokenSource and any other field of auth.oidc",
                );
            }
            validate_source(&mut errs, unsafe_features, src, "auth.oidc.tokenSource");
        } else if auth.method == "oidc" {
            let mut o = Vec::new();
            if oidc.client_id.is_empty() {
                o.push("auth.oidc.clientID is required".to_owned());
            }
            let url = &oidc.token_endpoint_url;
            if url.is_empty() {
                o.push("auth.oidc.tokenEndpointURL is required".to_owned());
            } else {
                match url.split_once("://") {
                    Some((_, rest)) if !rest.is_empty() && !rest.starts_with('/') => {
                        let scheme = url.split("://").next().unwrap_or_default();
                        if scheme != "http" && scheme != "https" {
                            o.push("auth.oidc.tokenEndpointURL must use http or https".to_owned());
                        }
                    }
                    _ => o.push(
                        "auth.oidc.tokenEndpointURL must be an absolute http or https URL"
                            .to_owned(),
                    ),
                }
            }
            if oidc.additional_endpoint_params.contains_key("scope") {
                o.push("auth.oidc.additionalEndpointParams.scope is not allowed; use auth.oidc.scope instead".to_owned());
            }
            if !oidc.audience.is_empty() && oidc.additional_endpoint_params.contains_key("audience")
            {
                o.push("cannot specify both auth.oidc.audience and auth.oidc.additionalEndpointParams.audience".to_owned());
            }
            if !o.is_empty() {
                errs.push(o.join("; "));
            }
        }
        errs.check(validate_log(&self.log));
        errs.check(validate_web_server(&self.web_server));
        let t = &self.transport;
        if t.heartbeat_timeout > 0
            && t.heartbeat_interval > 0
            && t.heartbeat_timeout < t.heartbeat_interval
        {
            errs.push("invalid transport.heartbeatTimeout, heartbeat timeout should not less than heartbeat interval");
        }
        if !matches!(
            t.protocol.as_str(),
            "tcp" | "kcp" | "quic" | "websocket" | "wss"
        ) {
            errs.push(
                "invalid transport.protocol, optional values are [tcp kcp quic websocket wss]",
            );
        }
        if !matches!(t.wire_protocol.as_str(), "v1" | "v2") {
            errs.push("invalid transport.wireProtocol, optional values are [v1 v2]");
        }
        errs.finish()?;

        for p in self.active_proxies() {
            validate_proxy(p).map_err(|e| ValidationError(format!("proxy {}: {e}", p.name)))?;
        }
        for v in self.active_visitors() {
            validate_visitor(v).map_err(|e| ValidationError(format!("visitor {}: {e}", v.name)))?;
        }
        Ok(())
    }

    /// The keys frp accepts that this frpc does not serve yet: a key we accept is a key we
    /// honour, so each one set is refused (by `frpc verify`, at start and on reload), naming
    /// the key and, for proxies and visitors, their name. All of them, one per line.
    pub fn check_supported(&self) -> Result<(), ValidationError> {
        let mut errs = Errors::default();
        let not_yet = |what: String, key: &str| -> String {
            format!("{what} (key {key}) is not supported by this frpc yet")
        };
        if !self.web_server.assets_dir.is_empty() {
            errs.push(not_yet(
                "serving the admin UI from a directory".into(),
                "webServer.assetsDir",
            ));
        }
        if self.web_server.pprof_enable {
            errs.push(not_yet("pprof".into(), "webServer.pprofEnable"));
        }
        let start: std::collections::HashSet<&str> =
            self.start.iter().map(String::as_str).collect();
        let active =
            |enabled: bool, name: &str| enabled && (start.is_empty() || start.contains(name));
        for (i, p) in self.proxies.iter().enumerate() {
            if !active(p.enabled, &p.name) {
                continue;
            }
            let name = &p.name;
            if let Some(plugin) = &p.plugin
                && !plugin.plugin_type.implemented()
            {
                errs.push(not_yet(
                    format!("proxy [{name}]: plugin type \"{}\"", plugin.plugin_type),
                    &format!("proxies[{i}].plugin.type"),
                ));
            }
            // frp fails such a proxy's start ("gen TLS config error"); we refuse it before
            // anything starts, rather than accept it and drop every connection.
            if let Some(plugin) = &p.plugin
                && !plugin.crt_path.is_empty()
                && !plugin.key_path.is_empty()
                && let Err(e) = crate::tls::server_config(&plugin.crt_path, &plugin.key_path, "")
            {
                errs.push(format!(
                    "proxy [{name}]: plugin {} (keys proxies[{i}].plugin.crtPath, \
                     proxies[{i}].plugin.keyPath): gen TLS config error: {e}",
                    plugin.plugin_type
                ));
            }
        }
        errs.finish()
    }

    /// frp's `featuregate.SetFromMap` as `frpc` (not `frpc verify`) runs it: every gate in
    /// `featureGates` must be one frp knows (`VirtualNet`, alpha, not locked).
    pub fn check_feature_gates(&self) -> Result<(), ValidationError> {
        match self.feature_gates.keys().find(|k| *k != "VirtualNet") {
            Some(k) => Err(ValidationError(format!("unrecognized feature gate: {k}"))),
            None => Ok(()),
        }
    }

    /// What frpc checks before it runs a config: frp's validation, then
    /// [`Self::check_supported`].
    pub fn validate_for_run(&self) -> Result<(), ValidationError> {
        self.validate_for_run_with(&UnsafeFeatures::default())
    }

    /// [`Self::validate_for_run`] with the features enabled by `--allow-unsafe`.
    pub fn validate_for_run_with(
        &self,
        unsafe_features: &UnsafeFeatures,
    ) -> Result<(), ValidationError> {
        self.validate_with(unsafe_features)?;
        self.check_supported()
    }

    /// frp's warnings (printed as `WARNING: …` by verify, not fatal).
    pub fn warnings(&self) -> Vec<String> {
        let tls = &self.transport.tls;
        if tls.enable {
            return Vec::new();
        }
        [
            ("transport.tls.certFile", &tls.cert_file),
            ("transport.tls.keyFile", &tls.key_file),
            ("transport.tls.trustedCaFile", &tls.trusted_ca_file),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| format!("{k} is invalid when transport.tls.enable is false"))
        .collect()
    }
}

/// frp's `ValidateProxyConfigurerForClient`.
pub fn validate_proxy(p: &ProxyConfig) -> Result<(), String> {
    if p.name.is_empty() {
        return Err("name should not be empty".into());
    }
    validate_annotations(&p.annotations)?;
    if !matches!(
        p.transport.proxy_protocol_version.as_str(),
        "" | "v1" | "v2"
    ) {
        return Err(format!(
            "not support proxy protocol version: {}",
            p.transport.proxy_protocol_version
        ));
    }
    if !matches!(
        p.transport.bandwidth_limit_mode.as_str(),
        "client" | "server"
    ) {
        return Err("bandwidth limit mode should be client or server".into());
    }
    let hc = &p.health_check;
    if !matches!(hc.check_type.as_str(), "" | "tcp" | "http") {
        return Err(format!("not support health check type: {}", hc.check_type));
    }
    if hc.check_type == "http" && hc.path.is_empty() {
        return Err("health check path should not be empty".into());
    }
    if let Some(plugin) = &p.plugin {
        let required = match plugin.plugin_type {
            ClientPluginType::Http2Https
            | ClientPluginType::Https2Http
            | ClientPluginType::Https2Https
            | ClientPluginType::Tls2Raw => Some(("localAddr", &plugin.local_addr)),
            ClientPluginType::StaticFile => Some(("localPath", &plugin.local_path)),
            ClientPluginType::UnixDomainSocket => Some(("unixPath", &plugin.unix_path)),
            _ => None,
        };
        if let Some((key, value)) = required
            && value.is_empty()
        {
            return Err(format!("plugin {}: {key} is required", plugin.plugin_type));
        }
    }
    match p.proxy_type {
        ProxyType::Http | ProxyType::Https | ProxyType::Tcpmux => {
            if p.subdomain.is_empty() && p.custom_domains.is_empty() {
                return Err("subdomain and custom domains should not be both empty".into());
            }
            if p.proxy_type == ProxyType::Tcpmux && p.multiplexer != "httpconnect" {
                return Err(format!("not support multiplexer: {}", p.multiplexer));
            }
        }
        _ => {}
    }
    Ok(())
}

/// frp's `ValidateAnnotations`: keys are Kubernetes qualified names (`[prefix/]name`,
/// name ≤ 63 of `[A-Za-z0-9-_.]` starting and ending alphanumeric), total ≤ 256 KiB.
/// frps runs it on every `NewProxy` too (`validateProxyBaseConfigForServer`).
pub fn validate_annotations(annotations: &BTreeMap<String, String>) -> Result<(), String> {
    let mut total = 0;
    for (k, v) in annotations {
        total += k.len() + v.len();
        let lower = k.to_lowercase();
        let name = lower.rsplit_once('/').map_or(lower.as_str(), |(_, n)| n);
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "annotation key {k} is invalid: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
            ));
        }
    }
    if total > 256 * 1024 {
        return Err(format!(
            "annotations size {total} is larger than limit {}",
            256 * 1024
        ));
    }
    Ok(())
}

/// frp's `ValidateVisitorConfigurer`.
pub fn validate_visitor(v: &VisitorConfig) -> Result<(), String> {
    if v.name.is_empty() {
        return Err("name is required".into());
    }
    if v.server_name.is_empty() {
        return Err("server name is required".into());
    }
    if v.bind_port == 0 {
        return Err("bind port is required".into());
    }
    if v.visitor_type == VisitorType::Xtcp && !matches!(v.protocol.as_str(), "kcp" | "quic") {
        return Err("protocol should be kcp or quic".into());
    }
    Ok(())
}
