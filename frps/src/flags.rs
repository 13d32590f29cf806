//! frps' config flags (frp's `RegisterServerConfigFlags`): the whole server config for a run
//! without `-c`. Each flag is accepted as `--a_b` and `--a-b`, as frp's cobra commands
//! normalise `_` to `-`. With `-c` they are ignored, as in frp.

use clap::{ArgAction, Args};
use control::config::{ConfigFormat, ServerConfig};
use serde_json::{Value, json};

/// The config flags; all global, so `frps verify` takes them too.
#[derive(Args, Debug)]
pub struct ServerFlags {
    /// bind address
    #[arg(
        long = "bind_addr",
        alias = "bind-addr",
        default_value = "0.0.0.0",
        global = true
    )]
    bind_addr: String,
    /// bind port
    #[arg(
        short = 'p',
        long = "bind_port",
        alias = "bind-port",
        default_value_t = 7000,
        global = true
    )]
    bind_port: i64,
    /// kcp bind udp port
    #[arg(
        long = "kcp_bind_port",
        alias = "kcp-bind-port",
        default_value_t = 0,
        global = true
    )]
    kcp_bind_port: i64,
    /// quic bind udp port
    #[arg(
        long = "quic_bind_port",
        alias = "quic-bind-port",
        default_value_t = 0,
        global = true
    )]
    quic_bind_port: i64,
    /// proxy bind address
    #[arg(
        long = "proxy_bind_addr",
        alias = "proxy-bind-addr",
        default_value = "0.0.0.0",
        global = true
    )]
    proxy_bind_addr: String,
    /// vhost http port
    #[arg(
        long = "vhost_http_port",
        alias = "vhost-http-port",
        default_value_t = 0,
        global = true
    )]
    vhost_http_port: i64,
    /// vhost https port
    #[arg(
        long = "vhost_https_port",
        alias = "vhost-https-port",
        default_value_t = 0,
        global = true
    )]
    vhost_https_port: i64,
    /// vhost http response header timeout
    #[arg(
        long = "vhost_http_timeout",
        alias = "vhost-http-timeout",
        default_value_t = 60,
        global = true
    )]
    vhost_http_timeout: i64,
    /// dashboard address
    #[arg(
        long = "dashboard_addr",
        alias = "dashboard-addr",
        default_value = "0.0.0.0",
        global = true
    )]
    dashboard_addr: String,
    /// dashboard port
    #[arg(
        long = "dashboard_port",
        alias = "dashboard-port",
        default_value_t = 0,
        global = true
    )]
    dashboard_port: i64,
    /// dashboard user
    #[arg(
        long = "dashboard_user",
        alias = "dashboard-user",
        default_value = "admin",
        global = true
    )]
    dashboard_user: String,
    /// dashboard password
    #[arg(
        long = "dashboard_pwd",
        alias = "dashboard-pwd",
        default_value = "admin",
        global = true
    )]
    dashboard_pwd: String,
    /// enable prometheus dashboard
    #[arg(long = "enable_prometheus", alias = "enable-prometheus", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value_t = false,
          action = ArgAction::Set, global = true)]
    enable_prometheus: bool,
    /// log file
    #[arg(
        long = "log_file",
        alias = "log-file",
        default_value = "console",
        global = true
    )]
    log_file: String,
    /// log level
    #[arg(
        long = "log_level",
        alias = "log-level",
        default_value = "info",
        global = true
    )]
    log_level: String,
    /// log max days
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
    /// auth token
    #[arg(short = 't', long = "token", default_value = "", global = true)]
    token: String,
    /// subdomain host
    #[arg(
        long = "subdomain_host",
        alias = "subdomain-host",
        default_value = "",
        global = true
    )]
    subdomain_host: String,
    /// allow ports
    #[arg(
        long = "allow_ports",
        alias = "allow-ports",
        default_value = "",
        global = true
    )]
    allow_ports: String,
    /// max ports per client
    #[arg(
        long = "max_ports_per_client",
        alias = "max-ports-per-client",
        default_value_t = 0,
        global = true
    )]
    max_ports_per_client: i64,
    /// frps tls only
    #[arg(long = "tls_only", alias = "tls-only", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value_t = false, action = ArgAction::Set,
          global = true)]
    tls_only: bool,
    /// dashboard tls cert file
    #[arg(
        long = "dashboard_tls_cert_file",
        alias = "dashboard-tls-cert-file",
        default_value = "",
        global = true
    )]
    dashboard_tls_cert_file: String,
    /// dashboard tls key file
    #[arg(
        long = "dashboard_tls_key_file",
        alias = "dashboard-tls-key-file",
        default_value = "",
        global = true
    )]
    dashboard_tls_key_file: String,
    /// if enable dashboard tls mode
    #[arg(
        long = "dashboard_tls_mode",
        alias = "dashboard-tls-mode",
        default_value = "false",
        global = true
    )]
    dashboard_tls_mode: String,
}

/// frp's `NewPortsRangeSliceFromString`: `1000-2000,3001` into `allowPorts` entries.
pub fn parse_ports_ranges(s: &str) -> Result<Vec<Value>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<i64>()
            .map_err(|e| format!("range number is invalid, {e}"))
    };
    let mut out = Vec::new();
    for part in s.trim().split(',') {
        let nums: Vec<&str> = part.split('-').collect();
        match nums.as_slice() {
            [single] => out.push(json!({ "single": num(single)? })),
            [lo, hi] => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                if hi < lo {
                    return Err("range number is invalid".into());
                }
                out.push(json!({ "start": lo, "end": hi }));
            }
            _ => return Err("range number is invalid".into()),
        }
    }
    Ok(out)
}

/// frp's `ValidatePort` wording for a port flag.
fn port(name: &str, v: i64) -> Result<i64, String> {
    if (0..=65535).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{name}: port number {v} must be in the range 0..65535"
        ))
    }
}

impl ServerFlags {
    /// The config these flags describe, completed with frp's defaults.
    pub fn to_config(&self) -> Result<ServerConfig, String> {
        let mut cfg = json!({
            "bindAddr": self.bind_addr,
            "bindPort": port("bindPort", self.bind_port)?,
            "kcpBindPort": port("kcpBindPort", self.kcp_bind_port)?,
            "quicBindPort": port("quicBindPort", self.quic_bind_port)?,
            "proxyBindAddr": self.proxy_bind_addr,
            "vhostHTTPPort": port("vhostHTTPPort", self.vhost_http_port)?,
            "vhostHTTPSPort": port("vhostHTTPSPort", self.vhost_https_port)?,
            "vhostHTTPTimeout": self.vhost_http_timeout,
            "webServer": {
                "addr": self.dashboard_addr,
                "port": port("webServer.port", self.dashboard_port)?,
                "user": self.dashboard_user,
                "password": self.dashboard_pwd,
            },
            "enablePrometheus": self.enable_prometheus,
            "log": {
                "to": self.log_file,
                "level": self.log_level,
                "maxDays": self.log_max_days,
                "disablePrintColor": self.disable_log_color,
            },
            "auth": {"token": self.token},
            "subDomainHost": self.subdomain_host,
            "maxPortsPerClient": self.max_ports_per_client,
            "transport": {"tls": {"force": self.tls_only}},
        });
        if !self.allow_ports.is_empty() {
            cfg["allowPorts"] =
                Value::Array(parse_ports_ranges(&self.allow_ports).map_err(|e| {
                    format!(
                        "invalid argument {:?} for \"--allow_ports\" flag: {e}",
                        self.allow_ports
                    )
                })?);
        }
        // frp's `--dashboard_tls_mode` never turns TLS on (its flag setter ignores the value),
        // so the two file flags have no effect either; they are accepted, as frp accepts them.
        let _ = (
            &self.dashboard_tls_mode,
            &self.dashboard_tls_cert_file,
            &self.dashboard_tls_key_file,
        );
        control::config::server_config_from_str(&cfg.to_string(), ConfigFormat::Json, true)
            .map_err(|e| format!("failed to complete server config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: ServerFlags,
    }

    fn cfg(args: &[&str]) -> ServerConfig {
        let mut v = vec!["frps"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().flags.to_config().unwrap()
    }

    #[test]
    fn defaults_are_frps_flag_defaults() {
        let c = cfg(&[]);
        assert_eq!((c.bind_addr.as_str(), c.bind_port), ("0.0.0.0", 7000));
        assert_eq!(c.web_server.user, "admin");
        assert_eq!(c.web_server.password, "admin");
        assert_eq!(c.vhost_http_timeout, 60);
        assert!(!c.transport.tls.force);
    }

    #[test]
    fn both_spellings_and_short_flags() {
        let c = cfg(&[
            "-p",
            "7100",
            "-t",
            "tok",
            "--vhost-http-port",
            "8080",
            "--vhost_https_port=8443",
            "--subdomain-host",
            "example.com",
            "--allow_ports",
            "1000-2000,3001",
            "--max-ports-per-client",
            "5",
            "--tls_only",
            "--dashboard-port",
            "7500",
            "--enable_prometheus=true",
            "--log-level",
            "debug",
            "--disable_log_color",
        ]);
        assert_eq!(c.bind_port, 7100);
        assert_eq!(c.auth.token, "tok");
        assert_eq!((c.vhost_http_port, c.vhost_https_port), (8080, 8443));
        assert_eq!(c.sub_domain_host, "example.com");
        assert_eq!(c.allow_ports.len(), 2);
        assert!(c.allow_ports[0].contains(1500) && c.allow_ports[1].contains(3001));
        assert!(!c.allow_ports[1].contains(3002));
        assert_eq!(c.max_ports_per_client, 5);
        assert!(c.transport.tls.force && c.enable_prometheus && c.log.disable_print_color);
        assert_eq!((c.web_server.port, c.log.level.as_str()), (7500, "debug"));
    }

    #[test]
    fn bad_values_are_refused_with_frps_words() {
        let parse = |args: &[&str]| {
            let mut v = vec!["frps"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v)
                .unwrap()
                .flags
                .to_config()
                .unwrap_err()
        };
        assert_eq!(
            parse(&["-p", "70000"]),
            "bindPort: port number 70000 must be in the range 0..65535"
        );
        assert!(parse(&["--allow_ports", "2000-1000"]).contains("range number is invalid"));
        assert!(parse(&["--allow_ports", "x"]).contains("range number is invalid"));
    }
}
