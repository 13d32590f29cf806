//! Tables shared by frps and frpc: log, webServer, TLS file sets, QUIC options, auth token
//! sources, header operations, `allowPorts` ranges, bandwidth quantities and our own
//! `[dataplane]` table.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// frp's `util.EmptyOr`: a zero value means "unset" and takes the fallback.
pub(crate) fn empty_or<T: Default + PartialEq>(v: &mut T, fallback: T) {
    if *v == T::default() {
        *v = fallback;
    }
}

pub(crate) fn yes() -> bool {
    true
}

/// Ports are Go `int`s in frp; out-of-range values are rejected with frp's wording.
pub(crate) fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = i64::deserialize(d)?;
    u16::try_from(v).map_err(|_| {
        serde::de::Error::custom(format!("port number {v} must be in the range 0..65535"))
    })
}

/// `log`: destination, level and rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LogConfig {
    /// "console" (default) or a file path.
    pub to: String,
    /// trace, debug, info (default), warn or error.
    pub level: String,
    /// Days of rotated log files kept (default 3).
    pub max_days: i64,
    pub disable_print_color: bool,
}

impl LogConfig {
    pub(crate) fn complete(&mut self) {
        empty_or(&mut self.to, "console".into());
        empty_or(&mut self.level, "info".into());
        empty_or(&mut self.max_days, 3);
    }
}

/// `tls` file set (`certFile`, `keyFile`, `trustedCaFile`, `serverName`), as used by `webServer.tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub server_name: String,
}

/// `webServer`: frps dashboard / frpc admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WebServerConfig {
    /// Default "127.0.0.1".
    pub addr: String,
    /// 0 = not started.
    #[serde(deserialize_with = "port")]
    pub port: u16,
    pub user: String,
    pub password: String,
    pub assets_dir: String,
    pub pprof_enable: bool,
    /// HTTPS when present (both files then required).
    pub tls: Option<TlsConfig>,
}

impl WebServerConfig {
    pub(crate) fn complete(&mut self) {
        empty_or(&mut self.addr, "127.0.0.1".into());
    }
}

/// `transport.quic`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct QuicOptions {
    /// Seconds, default 10.
    pub keepalive_period: i64,
    /// Seconds, default 30.
    pub max_idle_timeout: i64,
    /// Default 100000.
    pub max_incoming_streams: i64,
}

impl QuicOptions {
    pub(crate) fn complete(&mut self) {
        empty_or(&mut self.keepalive_period, 10);
        empty_or(&mut self.max_idle_timeout, 30);
        empty_or(&mut self.max_incoming_streams, 100_000);
    }
}

/// `auth.tokenSource` / `auth.oidc.tokenSource`: a dynamic secret (`type` = file | exec).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ValueSource {
    #[serde(rename = "type")]
    pub source_type: String,
    pub file: Option<FileSource>,
    pub exec: Option<ExecSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FileSource {
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ExecSource {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<NameValue>,
}

/// A `{name, value}` pair (`healthCheck.httpHeaders`, `tokenSource.exec.env`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

impl ValueSource {
    /// frp's `ValueSource.Validate`.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self.source_type.as_str() {
            "file" if self.file.is_none() => {
                Err("file configuration is required when type is 'file'".into())
            }
            "exec" if self.exec.is_none() => {
                Err("exec configuration is required when type is 'exec'".into())
            }
            "file" => match &self.file {
                Some(f) if f.path.is_empty() => Err("file path cannot be empty".into()),
                _ => Ok(()),
            },
            "exec" => {
                let Some(e) = &self.exec else { return Ok(()) };
                if e.command.is_empty() {
                    return Err("exec command cannot be empty".into());
                }
                for env in &e.env {
                    if env.name.is_empty() {
                        return Err("exec env name cannot be empty".into());
                    }
                    if env.name.contains('=') {
                        return Err("exec env name cannot contain '='".into());
                    }
                }
                Ok(())
            }
            t => Err(format!(
                "unsupported value source type: {t} (only 'file' and 'exec' are supported)"
            )),
        }
    }
}

/// `requestHeaders` / `responseHeaders`: `set.<Header> = value`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeaderOperations {
    pub set: BTreeMap<String, String>,
}

/// One `allowPorts` entry: `{start, end}` or `{single}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortsRange {
    #[serde(deserialize_with = "port")]
    pub start: u16,
    #[serde(deserialize_with = "port")]
    pub end: u16,
    #[serde(deserialize_with = "port")]
    pub single: u16,
}

impl PortsRange {
    /// Whether `port` is allowed by this entry.
    pub fn contains(&self, port: u16) -> bool {
        if self.single > 0 {
            port == self.single
        } else {
            self.start <= port && port <= self.end
        }
    }
}

impl fmt::Display for PortsRange {
    /// frp's `allowPortsStr` form: `3001` or `2000-3000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.single > 0 {
            write!(f, "{}", self.single)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// `transport.bandwidthLimit`: "1MB", "512KB", "1.5MB"; empty = unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BandwidthQuantity {
    text: String,
    bytes: i64,
}

impl BandwidthQuantity {
    /// Parses frp's syntax: a float followed by `MB` or `KB` (1024-based), surrounding
    /// whitespace ignored; "" is "no limit".
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::default());
        }
        let (num, base) = if let Some(n) = s.strip_suffix("MB") {
            (n, 1024.0 * 1024.0)
        } else if let Some(n) = s.strip_suffix("KB") {
            (n, 1024.0)
        } else {
            return Err("unit not support".into());
        };
        let f: f64 = num
            .parse()
            .map_err(|_| format!("strconv.ParseFloat: parsing {num:?}: invalid syntax"))?;
        Ok(Self {
            text: s.to_owned(),
            // Go's int64(float64) truncation.
            bytes: (f * base) as i64,
        })
    }

    /// Bytes per second; 0 = unlimited.
    pub fn bytes(&self) -> i64 {
        self.bytes
    }

    /// The text as written (what frpc sends in `NewProxy.bandwidth_limit`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_unlimited(&self) -> bool {
        self.bytes == 0
    }
}

impl<'de> Deserialize<'de> for BandwidthQuantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        Self::parse(&s).map_err(|e| serde::de::Error::custom(format!("bandwidthLimit {s:?}: {e}")))
    }
}

impl Serialize for BandwidthQuantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Which relay engine the data plane uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataplaneEngine {
    /// io_uring when the kernel supports it, epoll otherwise.
    #[default]
    Auto,
    IoUring,
    Epoll,
    /// The portable tokio relay (no splice, no thread-per-core): a baseline for comparisons.
    Tokio,
}

impl DataplaneEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
            Self::Tokio => "tokio",
        }
    }
}

/// `[dataplane]` — frp-uring's own table (frp itself would reject it), same in frps and frpc.
///
/// ```toml
/// [dataplane]
/// threads = 0          # relay threads; 0 = one per CPU
/// engine = "auto"      # "auto" | "io_uring" | "epoll" | "tokio"
/// pipePoolSize = 64    # spliced pipes kept per core; 0 disables splice
/// pipeSize = 1048576   # bytes asked of each pipe (F_SETPIPE_SZ)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataplaneConfig {
    /// Number of relay threads (one core each); 0 = one per CPU. Default 0.
    pub threads: usize,
    /// Relay engine: "auto" (default; io_uring if available, else epoll), "io_uring", "epoll".
    pub engine: DataplaneEngine,
    /// Pipes kept in each core's splice pipe pool; 0 disables splice. Default 64.
    pub pipe_pool_size: usize,
    /// Capacity asked of each pipe in bytes. Default 1 MiB. Unprivileged processes share
    /// `pipe-user-pages-soft` (16 MiB by default): lower it for many concurrent bulk flows.
    pub pipe_size: usize,
}

impl DataplaneConfig {
    /// The data-plane engine settings this table describes.
    pub fn engine_config(&self) -> dataplane::EngineConfig {
        dataplane::EngineConfig {
            threads: self.threads,
            engine: match self.engine {
                DataplaneEngine::Auto => dataplane::EngineKind::Auto,
                DataplaneEngine::IoUring => dataplane::EngineKind::IoUring,
                DataplaneEngine::Epoll => dataplane::EngineKind::Epoll,
                DataplaneEngine::Tokio => dataplane::EngineKind::Tokio,
            },
            pipe_pool_size: self.pipe_pool_size,
            pipe_size: self.pipe_size,
        }
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            engine: DataplaneEngine::Auto,
            pipe_pool_size: 64,
            pipe_size: 1 << 20,
        }
    }
}
