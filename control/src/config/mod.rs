//! frps.toml / frpc.toml: frp v0.52+ configuration in TOML, YAML or JSON.
//!
//! Loading follows frp's `pkg/config/load.go`:
//! 1. a file with a `[common]` section is legacy INI: read and converted as frp's
//!    `pkg/config/legacy` does (the key mapping is in `legacy.rs`), then
//!    completed like a v1 file; loading one from a file prints frp's deprecation warning;
//! 2. the file is rendered as a Go template (`{{ .Envs.NAME }}`, `parseNumberRange`, …;
//!    see [`template`]);
//! 3. it is TOML if it parses as TOML; otherwise (unless its extension says TOML) JSON if it
//!    starts with `{`, else YAML (merge keys applied, top-level `.keys` dropped);
//! 4. in strict mode (frp's default, `--strict_config`) an unknown key — including a key of
//!    another proxy type — is an error naming the key, file and line;
//! 5. frp's `Complete()` defaults fill unset (zero) values; `includes` files add proxies
//!    and visitors; duplicate proxy / visitor names are rejected.
//!
//! Validation (`frps verify`, `frpc verify`, startup) is separate: [`ServerConfig::validate`],
//! [`ClientConfig::validate`], or [`verify_server`] / [`verify_client`] for both steps.
//!
//! Rust field names are frp's keys in snake_case, nested the same way: `transport.tcpMux`
//! is `cfg.transport.tcp_mux`.

mod client;
mod common;
mod fold;
mod ini;
mod legacy;
mod load;
mod locate;
mod proxy;
mod server;
pub mod template;
mod validate;

#[cfg(test)]
mod legacy_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

pub use client::{
    AuthClientConfig, AuthOidcClientConfig, ClientConfig, ClientTransportConfig, StoreConfig,
    TlsClientConfig, VirtualNetConfig,
};
pub use common::{
    BandwidthQuantity, DataplaneConfig, DataplaneEngine, ExecSource, FileSource, HeaderOperations,
    LogConfig, NameValue, PortsRange, QuicOptions, TlsConfig, ValueSource, WebServerConfig,
};
pub use legacy::DEPRECATION_WARNING;
pub use locate::with_lines as validation_with_lines;
pub use proxy::{
    ClientPluginConfig, ClientPluginType, HealthCheckConfig, LoadBalancerConfig,
    NatTraversalConfig, ProxyConfig, ProxyTransport, ProxyType, VisitorConfig, VisitorPluginConfig,
    VisitorPluginType, VisitorTransport, VisitorType,
};
pub use server::{
    AuthOidcServerConfig, AuthServerConfig, HttpPluginOptions, ServerConfig, ServerTransportConfig,
    SshTunnelGateway, TlsServerConfig,
};
pub use validate::{
    TOKEN_SOURCE_EXEC, UNSAFE_FEATURES, UnsafeFeatures, ValidationError, validate_annotations,
    validate_proxy, validate_visitor,
};

/// The file label used in errors for configs given as text.
const INLINE: &str = "<inline config>";

/// A config text's format, or the hint given by a file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigFormat {
    Toml,
    Yaml,
    Json,
    /// No hint: detect as frp does.
    Auto,
}

impl ConfigFormat {
    /// frp's `detectFormatFromPath`: `.toml`, `.yaml`/`.yml`, `.json`, else [`Self::Auto`].
    pub fn from_path(path: &Path) -> Self {
        match path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .as_deref()
        {
            Some("toml") => Self::Toml,
            Some("yaml" | "yml") => Self::Yaml,
            Some("json") => Self::Json,
            _ => Self::Auto,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Toml => "toml",
            Self::Yaml => "yaml",
            Self::Json => "json",
            Self::Auto => "auto",
        }
    }
}

impl fmt::Display for ConfigFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a config could not be loaded or is invalid. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A legacy INI file's syntax error, or a value no v1 field can hold; names the section
    /// and key when there is one.
    #[error("{}", fmt_ini(file, *line, section.as_deref(), key.as_deref(), message))]
    Ini {
        file: String,
        /// 1-based.
        line: Option<usize>,
        section: Option<String>,
        key: Option<String>,
        message: String,
    },
    #[error("{file}: line {line}: template: {message}")]
    Template {
        file: String,
        line: usize,
        message: String,
    },
    /// Syntax, type or unknown-key error, with the position and key path when known.
    #[error("{}", fmt_parse(file, *format, *line, *column, key.as_deref(), message))]
    Parse {
        file: String,
        format: ConfigFormat,
        /// 1-based.
        line: Option<usize>,
        /// 1-based.
        column: Option<usize>,
        /// Key path, e.g. `proxies[1].transport.useEncryption`.
        key: Option<String>,
        message: String,
    },
    #[error("{file}: load additional config from {included} error: {source}")]
    Include {
        file: String,
        included: String,
        source: Box<ConfigError>,
    },
    /// A config that parsed but fails frp's checks.
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

fn fmt_parse(
    file: &str,
    format: ConfigFormat,
    line: Option<usize>,
    column: Option<usize>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut s = format!("{file}: {format}");
    match (line, column) {
        (Some(l), Some(c)) => s.push_str(&format!(" line {l}, column {c}")),
        (Some(l), None) => s.push_str(&format!(" line {l}")),
        _ => {}
    }
    if let Some(k) = key {
        s.push_str(&format!(", key `{k}`"));
    }
    s.push_str(": ");
    s.push_str(message);
    s
}

fn fmt_ini(
    file: &str,
    line: Option<usize>,
    section: Option<&str>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut s = format!("{file}: ini");
    if let Some(l) = line {
        s.push_str(&format!(" line {l}"));
    }
    if let Some(sec) = section {
        s.push_str(&format!(", section [{sec}]"));
    }
    if let Some(k) = key {
        s.push_str(&format!(", key `{k}`"));
    }
    s.push_str(": ");
    s.push_str(message);
    s
}

impl ConfigError {
    /// The 1-based line, when the error has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Parse { line, .. } => *line,
            Self::Template { line, .. } => Some(*line),
            Self::Ini { line, .. } => *line,
            Self::Include { source, .. } => source.line(),
            _ => None,
        }
    }
}

fn label(path: &Path) -> String {
    path.display().to_string()
}

/// Loads frps' config file (rendered, parsed, completed; not validated).
///
/// A legacy INI file is accepted (`strict` does not apply to it, as in frp); the first
/// one loaded in the process prints frp's [`DEPRECATION_WARNING`] to stdout, as frp does.
pub fn load_server_config(path: &Path, strict: bool) -> Result<ServerConfig, ConfigError> {
    let text = load::read(path)?;
    let cfg = load::server_from_text(
        &label(path),
        &text,
        ConfigFormat::from_path(path),
        strict,
        &load::process_env,
    )?;
    warn_if_legacy(&text);
    Ok(cfg)
}

/// Loads frpc's config file with its `includes` (rendered, parsed, completed; not
/// validated). Legacy INI as in [`load_server_config`].
pub fn load_client_config(path: &Path, strict: bool) -> Result<ClientConfig, ConfigError> {
    let text = load::read(path)?;
    let cfg = load::client_from_text(
        &label(path),
        &text,
        ConfigFormat::from_path(path),
        strict,
        &load::process_env,
    )?;
    warn_if_legacy(&text);
    Ok(cfg)
}

/// Whether `text` is a legacy INI config (frp's `DetectLegacyINIFormat`: it parses as INI
/// and has a `[common]` section).
pub fn is_legacy_ini(text: &str) -> bool {
    legacy::is_legacy_ini(text)
}

/// frp prints the warning before it starts logging, once per load; printing it once per
/// process keeps config reloads quiet.
fn warn_if_legacy(text: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if legacy::is_legacy_ini(text) {
        WARNED.call_once(|| println!("{DEPRECATION_WARNING}"));
    }
}

/// [`load_server_config`] for text; `format` is the hint a file extension would give.
pub fn server_config_from_str(
    text: &str,
    format: ConfigFormat,
    strict: bool,
) -> Result<ServerConfig, ConfigError> {
    load::server_from_text(INLINE, text, format, strict, &load::process_env)
}

/// [`load_client_config`] for text (`includes` are resolved against the working directory).
pub fn client_config_from_str(
    text: &str,
    format: ConfigFormat,
    strict: bool,
) -> Result<ClientConfig, ConfigError> {
    load::client_from_text(INLINE, text, format, strict, &load::process_env)
}

/// `frps verify`: load and validate.
pub fn verify_server(path: &Path, strict: bool) -> Result<(), ConfigError> {
    let cfg = load_server_config(path, strict)?;
    cfg.validate().map_err(|e| ConfigError::Invalid {
        file: label(path),
        message: validation_with_lines(path, &e.0),
    })
}

/// `frpc verify`: load and validate (warnings: [`ClientConfig::warnings`]).
pub fn verify_client(path: &Path, strict: bool) -> Result<(), ConfigError> {
    let cfg = load_client_config(path, strict)?;
    cfg.validate().map_err(|e| ConfigError::Invalid {
        file: label(path),
        message: validation_with_lines(path, &e.0),
    })
}

/// What `frps verify` / `frpc verify` print on success: `frps: the configuration file
/// <path> syntax is ok`. `program` is "frps" or "frpc".
pub fn verify_ok_message(program: &str, path: &Path) -> String {
    format!(
        "{program}: the configuration file {} syntax is ok",
        path.display()
    )
}
