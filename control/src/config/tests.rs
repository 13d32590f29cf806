use std::collections::HashMap;
use std::path::PathBuf;

use super::load::{client_from_text, glob_match, server_from_text};
use super::*;

const INTEROP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/interop/frp-0.70.0"
);

fn interop(case: &str, file: &str) -> PathBuf {
    PathBuf::from(INTEROP).join(case).join(file)
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn server(text: &str, format: ConfigFormat) -> Result<ServerConfig, ConfigError> {
    server_from_text("frps.test", text, format, true, &no_env)
}

fn client(text: &str, format: ConfigFormat) -> Result<ClientConfig, ConfigError> {
    client_from_text("frpc.test", text, format, true, &no_env)
}

fn client_err(text: &str) -> String {
    match client(text, ConfigFormat::Toml) {
        Ok(c) => match c.validate() {
            Ok(()) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

// ---- the interop configs ----

#[test]
fn every_interop_config_loads_and_validates() {
    let mut n = 0;
    for case in std::fs::read_dir(INTEROP).expect("interop dir") {
        let case = case.unwrap().path();
        for entry in std::fs::read_dir(&case).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == "frps.toml" {
                verify_server(&path, true).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            } else if name.ends_with(".toml") {
                verify_client(&path, true).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
    }
    assert!(n >= 21, "only {n} interop configs found");
}

#[test]
fn interop_tcp_mux_values() {
    let s = load_server_config(&interop("tcp-v1-mux", "frps.toml"), true).unwrap();
    assert_eq!(s.bind_addr, "127.0.0.1");
    assert_eq!(s.bind_port, 27100);
    assert_eq!(s.proxy_bind_addr, "127.0.0.1");
    assert_eq!(s.auth.token, "12345678");
    assert_eq!(s.auth.method, "token");
    assert!(s.transport.tcp_mux);
    assert_eq!(s.transport.heartbeat_timeout, -1);

    let c = load_client_config(&interop("tcp-v1-mux", "frpc.toml"), true).unwrap();
    assert_eq!(c.server_addr, "127.0.0.1");
    assert_eq!(c.server_port, 27101);
    assert_eq!(c.auth.token, "12345678");
    assert!(c.login_fail_exit);
    assert!(c.transport.tcp_mux);
    assert!(!c.transport.tls.enable);
    assert_eq!(c.transport.wire_protocol, "v1");
    assert_eq!(c.transport.pool_count, 1);
    assert_eq!(
        (
            c.transport.heartbeat_interval,
            c.transport.heartbeat_timeout
        ),
        (-1, -1)
    );
    assert_eq!(c.proxies.len(), 2);
    let (enc, plain) = (&c.proxies[0], &c.proxies[1]);
    assert_eq!((enc.name.as_str(), enc.proxy_type), ("enc", ProxyType::Tcp));
    assert_eq!(enc.local_ip, "127.0.0.1");
    assert_eq!((enc.local_port, enc.remote_port), (27102, 27110));
    assert!(enc.transport.use_encryption && enc.transport.use_compression);
    assert_eq!(plain.name, "plain");
    assert_eq!(plain.remote_port, 27111);
    assert!(!plain.transport.use_encryption && !plain.transport.use_compression);
    assert!(plain.enabled);
}

#[test]
fn interop_v2_nomux_and_auth_scopes() {
    let c = load_client_config(&interop("tcp-v2-nomux", "frpc.toml"), true).unwrap();
    assert_eq!(c.transport.wire_protocol, "v2");
    assert!(!c.transport.tcp_mux);
    assert_eq!(
        (
            c.transport.heartbeat_interval,
            c.transport.heartbeat_timeout
        ),
        (30, 90)
    );
    let s = load_server_config(&interop("tcp-v2-nomux", "frps.toml"), true).unwrap();
    assert!(!s.transport.tcp_mux);
    assert_eq!(s.transport.heartbeat_timeout, 90);

    let c = load_client_config(&interop("auth-scopes-v1-nomux", "frpc.toml"), true).unwrap();
    assert_eq!(c.auth.additional_scopes, ["HeartBeats", "NewWorkConns"]);
    assert_eq!(
        (
            c.transport.heartbeat_interval,
            c.transport.heartbeat_timeout
        ),
        (1, 90)
    );
    let s = load_server_config(&interop("auth-scopes-v1-nomux", "frps.toml"), true).unwrap();
    assert_eq!(s.auth.additional_scopes, ["HeartBeats", "NewWorkConns"]);
}

#[test]
fn interop_http_udp_stcp() {
    let s = load_server_config(&interop("http-v1-nomux", "frps.toml"), true).unwrap();
    assert_eq!(s.vhost_http_port, 27115);
    assert_eq!(s.sub_domain_host, "example.test");
    let c = load_client_config(&interop("http-v1-nomux", "frpc.toml"), true).unwrap();
    let web = &c.proxies[0];
    assert_eq!(web.proxy_type, ProxyType::Http);
    assert_eq!(web.custom_domains, ["www.other.test"]);
    assert_eq!(web.subdomain, "app");
    assert_eq!(web.locations, ["/", "/api"]);
    assert_eq!(web.host_header_rewrite, "backend.internal");
    assert_eq!(web.request_headers.set["x-from-where"], "frp");
    s.validate_proxy(web).unwrap();

    let c = load_client_config(&interop("udp-v1-nomux", "frpc.toml"), true).unwrap();
    assert_eq!(c.proxies[0].proxy_type, ProxyType::Udp);
    assert_eq!(c.proxies[0].name, "dns");
    assert_eq!(c.proxies[0].remote_port, 27110);

    let c = load_client_config(&interop("stcp-v1-nomux", "frpc.toml"), true).unwrap();
    assert_eq!(c.proxies[0].proxy_type, ProxyType::Stcp);
    assert_eq!(c.proxies[0].secret_key, "abcdefg");
    let v = load_client_config(&interop("stcp-v1-nomux", "visitor.toml"), true).unwrap();
    let vis = &v.visitors[0];
    assert_eq!(vis.name, "secret-visitor");
    assert_eq!(vis.visitor_type, VisitorType::Stcp);
    assert_eq!(vis.server_name, "secret");
    assert_eq!(vis.secret_key, "abcdefg");
    assert_eq!(
        (vis.bind_addr.as_str(), vis.bind_port),
        ("127.0.0.1", 27117)
    );
}

// ---- defaults ----

#[test]
fn empty_server_gets_frp_defaults() {
    let s = server("", ConfigFormat::Toml).unwrap();
    assert_eq!(s, ServerConfig::default());
    assert_eq!(s.bind_addr, "0.0.0.0");
    assert_eq!(s.bind_port, 7000);
    assert_eq!(s.proxy_bind_addr, "0.0.0.0");
    assert_eq!(s.kcp_bind_port, 0);
    assert!(s.transport.tcp_mux);
    assert_eq!(s.transport.tcp_mux_keepalive_interval, 30);
    assert_eq!(s.transport.tcp_keepalive, 7200);
    assert_eq!(s.transport.max_pool_count, 5);
    assert_eq!(s.transport.heartbeat_timeout, -1);
    assert_eq!(
        (
            s.transport.quic.keepalive_period,
            s.transport.quic.max_idle_timeout,
            s.transport.quic.max_incoming_streams
        ),
        (10, 30, 100_000)
    );
    assert!(!s.transport.tls.force);
    assert_eq!(s.user_conn_timeout, 10);
    assert_eq!(s.udp_packet_size, 1500);
    assert_eq!(s.vhost_http_timeout, 60);
    assert_eq!(s.nathole_analysis_data_reserve_hours, 168);
    assert!(s.detailed_errors_to_client);
    assert_eq!(s.max_ports_per_client, 0);
    assert_eq!(s.auth.method, "token");
    assert_eq!(
        (s.log.to.as_str(), s.log.level.as_str(), s.log.max_days),
        ("console", "info", 3)
    );
    assert_eq!(s.web_server.addr, "127.0.0.1");
    assert_eq!(s.web_server.port, 0);
    assert_eq!(
        s.ssh_tunnel_gateway.auto_gen_private_key_path,
        "./.autogen_ssh_key"
    );
    assert!(s.allow_ports.is_empty() && s.is_port_allowed(1));
    assert_eq!(s.dataplane, DataplaneConfig::default());
    assert_eq!(s.dataplane.engine, DataplaneEngine::Auto);
    assert_eq!((s.dataplane.threads, s.dataplane.pipe_pool_size), (0, 64));
    s.validate().unwrap();
}

#[test]
fn empty_client_gets_frp_defaults() {
    let c = client("", ConfigFormat::Toml).unwrap();
    assert_eq!(c, ClientConfig::default());
    assert_eq!(c.server_addr, "0.0.0.0");
    assert_eq!(c.server_port, 7000);
    assert!(c.login_fail_exit);
    assert_eq!(c.nat_hole_stun_server, "stun.easyvoip.com:3478");
    assert_eq!(c.udp_packet_size, 1500);
    let t = &c.transport;
    assert_eq!(t.protocol, "tcp");
    assert_eq!(t.wire_protocol, "v1");
    assert_eq!(t.pool_count, 1);
    assert!(t.tcp_mux);
    assert_eq!(t.tcp_mux_keepalive_interval, 30);
    assert_eq!((t.heartbeat_interval, t.heartbeat_timeout), (-1, -1));
    assert!(t.tls.enable && t.tls.disable_custom_tls_first_byte);
    assert_eq!((t.dial_server_timeout, t.dial_server_keepalive), (10, 7200));
    assert_eq!(t.quic.max_incoming_streams, 100_000);
    assert_eq!(c.auth.method, "token");
    assert_eq!(c.log.level, "info");
    assert!(c.proxies.is_empty() && c.visitors.is_empty());
    c.validate().unwrap();
}

#[test]
fn heartbeat_defaults_follow_tcp_mux() {
    let c = client("transport.tcpMux = false", ConfigFormat::Toml).unwrap();
    assert!(!c.transport.tcp_mux);
    assert_eq!(
        (
            c.transport.heartbeat_interval,
            c.transport.heartbeat_timeout
        ),
        (30, 90)
    );
    let s = server("transport.tcpMux = false", ConfigFormat::Toml).unwrap();
    assert_eq!(s.transport.heartbeat_timeout, 90);

    // Explicit values are kept in both modes.
    let c = client(
        "transport.heartbeatInterval = 5\ntransport.heartbeatTimeout = -1",
        ConfigFormat::Toml,
    )
    .unwrap();
    assert_eq!(
        (
            c.transport.heartbeat_interval,
            c.transport.heartbeat_timeout
        ),
        (5, -1)
    );
    let s = server(
        "transport.tcpMux = false\ntransport.heartbeatTimeout = -1",
        ConfigFormat::Toml,
    )
    .unwrap();
    assert_eq!(s.transport.heartbeat_timeout, -1);
}

#[test]
fn explicit_zero_is_unset_as_in_frp() {
    // frp's `util.EmptyOr` cannot tell 0 from unset: an explicit 0 gets the default.
    let c = client(
        "transport.tcpMux = false\ntransport.heartbeatTimeout = 0\ntransport.heartbeatInterval = 0",
        ConfigFormat::Toml,
    )
    .unwrap();
    assert_eq!(
        (
            c.transport.heartbeat_interval,
            c.transport.heartbeat_timeout
        ),
        (30, 90)
    );
    let s = server(
        "transport.heartbeatTimeout = 0\nbindPort = 0",
        ConfigFormat::Toml,
    )
    .unwrap();
    assert_eq!(s.transport.heartbeat_timeout, -1);
    assert_eq!(s.bind_port, 7000);
    // Pointer-bools keep an explicit false.
    let c = client(
        "loginFailExit = false\ntransport.tls.enable = false\ntransport.tls.disableCustomTLSFirstByte = false",
        ConfigFormat::Toml,
    )
    .unwrap();
    assert!(!c.login_fail_exit && !c.transport.tls.enable);
    assert!(!c.transport.tls.disable_custom_tls_first_byte);
    let s = server("detailedErrorsToClient = false", ConfigFormat::Toml).unwrap();
    assert!(!s.detailed_errors_to_client);
}

#[test]
fn proxy_and_visitor_defaults() {
    let c = client(
        r#"
[[proxies]]
name = "a"
type = "tcp"
localPort = 22
healthCheck.type = "tcp"

[[proxies]]
name = "off"
type = "tcp"
enabled = false

[[visitors]]
name = "x"
type = "xtcp"
serverName = "a"
bindPort = -1
"#,
        ConfigFormat::Toml,
    )
    .unwrap();
    let p = &c.proxies[0];
    assert_eq!(p.local_ip, "127.0.0.1");
    assert!(p.enabled);
    assert_eq!(p.transport.bandwidth_limit_mode, "client");
    assert!(p.transport.bandwidth_limit.is_unlimited());
    let hc = &p.health_check;
    assert_eq!(
        (hc.timeout_seconds, hc.max_failed, hc.interval_seconds),
        (3, 1, 10)
    );
    assert!(!c.proxies[1].enabled);
    assert_eq!(
        c.active_proxies()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    let v = &c.visitors[0];
    assert_eq!(v.bind_addr, "127.0.0.1");
    assert_eq!(v.bind_port, -1);
    assert_eq!(v.protocol, "quic");
    assert_eq!(
        (
            v.max_retries_an_hour,
            v.min_retry_interval,
            v.fallback_timeout_ms
        ),
        (8, 90, 1000)
    );
    c.validate().unwrap();
}

#[test]
fn start_filters_active_proxies() {
    let c = client(
        "start = [\"b\"]\n[[proxies]]\nname = \"a\"\ntype = \"tcp\"\n[[proxies]]\nname = \"b\"\ntype = \"udp\"\n",
        ConfigFormat::Toml,
    )
    .unwrap();
    let active: Vec<_> = c.active_proxies().map(|p| p.name.clone()).collect();
    assert_eq!(active, ["b"]);
}

// ---- formats ----

const FULL_TOML: &str = r#"
serverAddr = "frps.example.com"
serverPort = 7001
user = "alice"
clientID = "c1"
metadatas.env = "prod"
auth.method = "token"
auth.token = "secret"
auth.additionalScopes = ["HeartBeats"]
transport.protocol = "wss"
transport.tcpMux = false
transport.poolCount = 3
transport.tls.serverName = "frps.internal"
log.level = "debug"
webServer.port = 7400
featureGates = { VirtualNet = true }

[dataplane]
threads = 4
engine = "io_uring"
pipePoolSize = 128

[[proxies]]
name = "ssh"
type = "tcp"
localPort = 22
remotePort = 6000
transport.bandwidthLimit = "1.5MB"
transport.bandwidthLimitMode = "server"
loadBalancer.group = "g"
loadBalancer.groupKey = "k"
annotations = { "frp.io/owner" = "ops" }

[[proxies]]
name = "web"
type = "http"
customDomains = ["a.example.com"]
httpUser = "u"
httpPassword = "p"
routeByHTTPUser = "u"
responseHeaders.set.x-served-by = "frp"
healthCheck = { type = "http", path = "/health", httpHeaders = [{ name = "h", value = "v" }] }
[proxies.plugin]
type = "https2http"
localAddr = "127.0.0.1:8080"
crtPath = "./c.crt"
keyPath = "./c.key"

[[visitors]]
name = "v"
type = "stcp"
serverName = "ssh"
serverUser = "bob"
secretKey = "sk"
bindPort = 9000
transport.useEncryption = true
"#;

const FULL_YAML: &str = r#"
serverAddr: frps.example.com
serverPort: 7001
user: alice
clientID: c1
metadatas:
  env: prod
auth:
  method: token
  token: secret
  additionalScopes: [HeartBeats]
transport:
  protocol: wss
  tcpMux: false
  poolCount: 3
  tls:
    serverName: frps.internal
log:
  level: debug
webServer:
  port: 7400
featureGates:
  VirtualNet: true
dataplane:
  threads: 4
  engine: io_uring
  pipePoolSize: 128
proxies:
  - name: ssh
    type: tcp
    localPort: 22
    remotePort: 6000
    transport:
      bandwidthLimit: 1.5MB
      bandwidthLimitMode: server
    loadBalancer:
      group: g
      groupKey: k
    annotations:
      frp.io/owner: ops
  - name: web
    type: http
    customDomains: [a.example.com]
    httpUser: u
    httpPassword: p
    routeByHTTPUser: u
    responseHeaders:
      set:
        x-served-by: frp
    healthCheck:
      type: http
      path: /health
      httpHeaders:
        - name: h
          value: v
    plugin:
      type: https2http
      localAddr: 127.0.0.1:8080
      crtPath: ./c.crt
      keyPath: ./c.key
visitors:
  - name: v
    type: stcp
    serverName: ssh
    serverUser: bob
    secretKey: sk
    bindPort: 9000
    transport:
      useEncryption: true
"#;

const FULL_JSON: &str = r#"{
  "serverAddr": "frps.example.com", "serverPort": 7001, "user": "alice", "clientID": "c1",
  "metadatas": {"env": "prod"},
  "auth": {"method": "token", "token": "secret", "additionalScopes": ["HeartBeats"]},
  "transport": {"protocol": "wss", "tcpMux": false, "poolCount": 3, "tls": {"serverName": "frps.internal"}},
  "log": {"level": "debug"}, "webServer": {"port": 7400}, "featureGates": {"VirtualNet": true},
  "dataplane": {"threads": 4, "engine": "io_uring", "pipePoolSize": 128},
  "proxies": [
    {"name": "ssh", "type": "tcp", "localPort": 22, "remotePort": 6000,
     "transport": {"bandwidthLimit": "1.5MB", "bandwidthLimitMode": "server"},
     "loadBalancer": {"group": "g", "groupKey": "k"}, "annotations": {"frp.io/owner": "ops"}},
    {"name": "web", "type": "http", "customDomains": ["a.example.com"], "httpUser": "u",
     "httpPassword": "p", "routeByHTTPUser": "u", "responseHeaders": {"set": {"x-served-by": "frp"}},
     "healthCheck": {"type": "http", "path": "/health", "httpHeaders": [{"name": "h", "value": "v"}]},
     "plugin": {"type": "https2http", "localAddr": "127.0.0.1:8080", "crtPath": "./c.crt", "keyPath": "./c.key"}}
  ],
  "visitors": [
    {"name": "v", "type": "stcp", "serverName": "ssh", "serverUser": "bob", "secretKey": "sk",
     "bindPort": 9000, "transport": {"useEncryption": true}}
  ]
}"#;

#[test]
fn toml_yaml_json_give_equal_structs() {
    let t = client(FULL_TOML, ConfigFormat::Toml).unwrap_or_else(|e| panic!("{e}"));
    let y = client(FULL_YAML, ConfigFormat::Yaml).unwrap_or_else(|e| panic!("{e}"));
    let j = client(FULL_JSON, ConfigFormat::Json).unwrap_or_else(|e| panic!("{e}"));
    // Detection without a hint lands on the same result.
    let y2 = client(FULL_YAML, ConfigFormat::Auto).unwrap();
    let j2 = client(FULL_JSON, ConfigFormat::Auto).unwrap();
    assert_eq!(t, y);
    assert_eq!(t, j);
    assert_eq!(y, y2);
    assert_eq!(j, j2);

    assert_eq!(t.server_addr, "frps.example.com");
    assert_eq!(t.client_id, "c1");
    assert_eq!(t.metadatas["env"], "prod");
    assert_eq!(t.transport.protocol, "wss");
    assert_eq!(t.transport.heartbeat_interval, 30);
    assert_eq!(t.transport.tls.server_name, "frps.internal");
    assert_eq!(t.web_server.port, 7400);
    assert_eq!(t.feature_gates.get("VirtualNet"), Some(&true));
    assert_eq!(t.dataplane.engine, DataplaneEngine::IoUring);
    assert_eq!((t.dataplane.threads, t.dataplane.pipe_pool_size), (4, 128));
    let ssh = &t.proxies[0];
    assert_eq!(ssh.transport.bandwidth_limit.bytes(), 1_572_864);
    assert_eq!(ssh.transport.bandwidth_limit.as_str(), "1.5MB");
    assert_eq!(ssh.transport.bandwidth_limit_mode, "server");
    assert_eq!(
        (
            ssh.load_balancer.group.as_str(),
            ssh.load_balancer.group_key.as_str()
        ),
        ("g", "k")
    );
    let web = &t.proxies[1];
    assert_eq!(web.route_by_http_user, "u");
    assert_eq!(web.response_headers.set["x-served-by"], "frp");
    assert_eq!(web.health_check.http_headers[0].value, "v");
    let plugin = web.plugin.as_ref().unwrap();
    assert_eq!(plugin.plugin_type, ClientPluginType::Https2Http);
    assert_eq!(plugin.local_addr, "127.0.0.1:8080");
    assert!(plugin.enable_http2);
    assert_eq!(t.visitors[0].server_user, "bob");
    assert!(t.visitors[0].transport.use_encryption);
    t.validate().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn yaml_merge_keys_and_dot_keys() {
    let y = r#"
.base: &base
  type: tcp
  localIP: 10.0.0.1
proxies:
  - <<: *base
    name: a
    localPort: 80
"#;
    let c = client(y, ConfigFormat::Yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.proxies[0].proxy_type, ProxyType::Tcp);
    assert_eq!(c.proxies[0].local_ip, "10.0.0.1");
}

#[test]
fn server_allow_ports_and_full_keys() {
    let s = server(
        r#"
bindPort = 7000
kcpBindPort = 7000
quicBindPort = 7002
vhostHTTPPort = 80
vhostHTTPSPort = 443
vhostHTTPTimeout = 30
tcpmuxHTTPConnectPort = 1337
tcpmuxPassthrough = true
custom404Page = "/404.html"
allowPorts = [{ start = 2000, end = 3000 }, { single = 3001 }]
maxPortsPerClient = 10
natholeAnalysisDataReserveHours = 24
enablePrometheus = true
auth.oidc.issuer = "https://issuer"
auth.oidc.skipExpiryCheck = true
transport.tls.force = true
transport.tls.certFile = "s.crt"
transport.tls.keyFile = "s.key"
transport.tls.trustedCaFile = "ca.crt"
transport.quic.maxIncomingStreams = 10
webServer = { addr = "0.0.0.0", port = 7500, user = "admin", password = "pw", tls = { certFile = "w.crt", keyFile = "w.key" } }
sshTunnelGateway.bindPort = 2200
log = { to = "/var/log/frps.log", level = "warn", maxDays = 7, disablePrintColor = true }

[[httpPlugins]]
name = "user-manager"
addr = "127.0.0.1:9000"
path = "/handler"
ops = ["Login", "NewProxy"]
tlsVerify = true

[dataplane]
engine = "epoll"
"#,
        ConfigFormat::Toml,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.allow_ports.len(), 2);
    assert_eq!(s.allow_ports_str(), "2000-3000,3001");
    assert!(s.is_port_allowed(2500) && s.is_port_allowed(3001) && !s.is_port_allowed(3002));
    assert_eq!(s.tcpmux_http_connect_port, 1337);
    assert_eq!(s.custom_404_page, "/404.html");
    assert_eq!(s.transport.quic.max_incoming_streams, 10);
    assert_eq!(s.transport.quic.keepalive_period, 10);
    assert_eq!(s.http_plugins[0].ops, ["Login", "NewProxy"]);
    assert_eq!(s.web_server.tls.as_ref().unwrap().key_file, "w.key");
    assert_eq!(s.log.max_days, 7);
    assert_eq!(s.dataplane.engine, DataplaneEngine::Epoll);
    s.validate().unwrap_or_else(|e| panic!("{e}"));

    // trustedCaFile forces TLS.
    let s = server("transport.tls.trustedCaFile = \"ca\"", ConfigFormat::Toml).unwrap();
    assert!(s.transport.tls.force);
}

// ---- strict mode ----

#[test]
fn strict_unknown_key_names_key_and_line() {
    let text = "serverPort = 7000\n\n[[proxies]]\nname = \"a\"\ntype = \"tcp\"\n\n[[proxies]]\nname = \"b\"\ntype = \"tcp\"\nlocalPotr = 80\n";
    let e = client(text, ConfigFormat::Toml).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("localPotr"), "{msg}");
    assert!(msg.contains("line 10"), "{msg}");
    assert!(msg.contains("frpc.test"), "{msg}");
    assert!(msg.contains("proxies[1].localPotr"), "{msg}");
    assert_eq!(e.line(), Some(10));
    // Non-strict: ignored.
    let c = client_from_text("f", text, ConfigFormat::Toml, false, &no_env).unwrap();
    assert_eq!(c.proxies.len(), 2);
}

#[test]
fn strict_unknown_nested_key() {
    let e = server(
        "bindPort = 7000\ntransport.tcpMuxx = true\n",
        ConfigFormat::Toml,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("transport.tcpMuxx") && msg.contains("line 2"),
        "{msg}"
    );

    let e = server(
        "bindPort: 7000\nlog:\n  level: info\n  colour: true\n",
        ConfigFormat::Yaml,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("log.colour") && msg.contains("line 4"),
        "{msg}"
    );

    let e = server(
        "{\n  \"bindPort\": 7000,\n  \"bogus\": 1\n}",
        ConfigFormat::Json,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bogus") && msg.contains("line 3"), "{msg}");

    server_from_text("f", "{\"bogus\": 1}", ConfigFormat::Json, false, &no_env).unwrap();
    server_from_text("f", "bogus: 1", ConfigFormat::Yaml, false, &no_env).unwrap();
}

#[test]
fn strict_rejects_keys_of_another_proxy_type() {
    let text =
        "[[proxies]]\nname = \"a\"\ntype = \"tcp\"\nlocalPort = 1\ncustomDomains = [\"x.com\"]\n";
    let e = client(text, ConfigFormat::Toml).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("customDomains") && msg.contains("tcp proxy") && msg.contains("line 5"),
        "{msg}"
    );
    let c = client_from_text("f", text, ConfigFormat::Toml, false, &no_env).unwrap();
    assert_eq!(c.proxies[0].custom_domains, ["x.com"]);

    let text = "[[proxies]]\nname = \"a\"\ntype = \"tcp\"\n[proxies.plugin]\ntype = \"socks5\"\nlocalAddr = \"x\"\n";
    let msg = client(text, ConfigFormat::Toml).unwrap_err().to_string();
    assert!(
        msg.contains("localAddr") && msg.contains("plugin socks5"),
        "{msg}"
    );

    let text = "[[visitors]]\nname = \"v\"\ntype = \"stcp\"\nkeepTunnelOpen = true\n";
    let msg = client(text, ConfigFormat::Toml).unwrap_err().to_string();
    assert!(
        msg.contains("keepTunnelOpen") && msg.contains("stcp visitor"),
        "{msg}"
    );
}

/// Every format decodes through one JSON value: a type error names the key, its line (and
/// for TOML the value's column, as the TOML decoder's spans did), with serde's words.
#[test]
fn type_errors_in_every_format() {
    let cases = [
        (
            "bindAddr = \"x\"\n[webServer]\nport = \"seven\"\n",
            ConfigFormat::Toml,
            "line 3, column 8",
        ),
        (
            "{\n  \"bindAddr\": \"x\",\n  \"webServer\": {\"port\": \"seven\"}\n}\n",
            ConfigFormat::Json,
            "line 3",
        ),
        (
            "bindAddr: x\nwebServer:\n  port: seven\n",
            ConfigFormat::Yaml,
            "line 3",
        ),
    ];
    for (text, format, at) in cases {
        let msg = server(text, format).unwrap_err().to_string();
        assert!(
            msg.contains(at)
                && msg.contains("webServer.port")
                && msg.contains("invalid type: string \"seven\", expected i64"),
            "{format:?}: {msg}"
        );
    }
    assert_eq!(
        super::load::toml_value_column("a = { b = 1, port=7 }", "port"),
        Some(19)
    );
    assert_eq!(
        super::load::toml_value_column("tls.enable =  x", "enable"),
        Some(15)
    );
    assert_eq!(
        super::load::toml_value_column("\"port\" = 1", "port"),
        Some(10)
    );
    assert_eq!(super::load::toml_value_column("portx", "port"), None);
}

#[test]
fn type_errors_name_key_and_line() {
    let e = server(
        "bindAddr = \"x\"\nbindPort = \"seven\"\n",
        ConfigFormat::Toml,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("bindPort") && msg.contains("line 2, column"),
        "{msg}"
    );
}

#[test]
fn toml_syntax_error_has_position() {
    let e = server("bindPort = 7000\nbindAddr = \n", ConfigFormat::Toml).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { line: Some(2), .. }), "{e}");
}

// ---- templates ----

#[test]
fn template_envs_substituted() {
    let envs: HashMap<&str, &str> = [("FRP_TEST_PORT", "7123"), ("FRP_TOKEN", "t0k")].into();
    let lookup = |k: &str| envs.get(k).map(|v| v.to_string());
    let text = "bindPort = {{ .Envs.FRP_TEST_PORT }}\nauth.token = \"{{.Envs.FRP_TOKEN}}\"\n# {{/* a comment */}}\nsubDomainHost = \"{{ index .Envs \"FRP_TOKEN\" }}\"\n";
    let s = server_from_text("f", text, ConfigFormat::Toml, true, &lookup).unwrap();
    assert_eq!(s.bind_port, 7123);
    assert_eq!(s.auth.token, "t0k");
    assert_eq!(s.sub_domain_host, "t0k");
}

#[test]
fn template_missing_env_renders_no_value_like_go() {
    let s = server_from_text(
        "f",
        "auth.token = \"{{ .Envs.FRP_SURELY_MISSING }}\"\nsubDomainHost = \"{{ index .Envs \"NOPE\" }}\"",
        ConfigFormat::Toml,
        true,
        &no_env,
    )
    .unwrap();
    assert_eq!(s.auth.token, "<no value>");
    assert_eq!(s.sub_domain_host, "");
    // As a number it is a parse error on that line.
    let e = server_from_text(
        "f",
        "bindAddr = \"a\"\nbindPort = {{ .Envs.FRP_SURELY_MISSING }}",
        ConfigFormat::Toml,
        true,
        &no_env,
    )
    .unwrap_err();
    assert_eq!(e.line(), Some(2), "{e}");
}

#[test]
fn template_range_ports() {
    let text = r#"
{{- range $_, $v := parseNumberRangePair "6000-6002,6010" "7000-7002,7010" }}
[[proxies]]
name = "tcp-{{ $v.First }}"
type = "tcp"
localPort = {{ $v.First }}
remotePort = {{ $v.Second }}
{{- end }}
{{ range parseNumberRange "1-2" }}
[[visitors]]
name = "v{{ . }}"
type = "stcp"
serverName = "s"
bindPort = {{ . }}
{{ end }}
"#;
    let c = client_from_text("f", text, ConfigFormat::Toml, true, &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<_> = c
        .proxies
        .iter()
        .map(|p| (p.name.clone(), p.local_port, p.remote_port))
        .collect();
    assert_eq!(
        got,
        [
            ("tcp-6000".to_string(), 6000, 7000),
            ("tcp-6001".to_string(), 6001, 7001),
            ("tcp-6002".to_string(), 6002, 7002),
            ("tcp-6010".to_string(), 6010, 7010),
        ]
    );
    assert_eq!(c.visitors.len(), 2);
    assert_eq!(c.visitors[1].bind_port, 2);
}

#[test]
fn template_unsupported_construct_names_line() {
    let e = server_from_text(
        "f",
        "bindPort = 7000\n\n{{ if .Envs.X }}a{{ end }}\n",
        ConfigFormat::Toml,
        true,
        &no_env,
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::Template { line: 3, .. }), "{e}");
    assert!(e.to_string().contains("line 3"), "{e}");
    let e = server_from_text(
        "f",
        "a\n{{ .Envs.X | printf }}",
        ConfigFormat::Toml,
        true,
        &no_env,
    )
    .unwrap_err();
    assert_eq!(e.line(), Some(2), "{e}");
    let e = server_from_text("f", "{{ .Envs.X ", ConfigFormat::Toml, true, &no_env).unwrap_err();
    assert!(e.to_string().contains("unclosed"), "{e}");
}

// ---- validation ----

#[test]
fn duplicate_proxy_names_rejected() {
    let text =
        "[[proxies]]\nname = \"a\"\ntype = \"tcp\"\n[[proxies]]\nname = \"a\"\ntype = \"udp\"\n";
    let msg = client_err(text);
    assert!(msg.contains("proxy name [a] is duplicated"), "{msg}");
    let text = "[[visitors]]\nname = \"v\"\ntype = \"stcp\"\n[[visitors]]\nname = \"v\"\ntype = \"stcp\"\n";
    let msg = client_err(text);
    assert!(msg.contains("visitor name [v] is duplicated"), "{msg}");
}

#[test]
fn bad_remote_port_rejected() {
    let text = "[[proxies]]\nname = \"a\"\ntype = \"tcp\"\nremotePort = 70000\n";
    let msg = client_err(text);
    assert!(
        msg.contains("remotePort")
            && msg.contains("port number 70000 must be in the range 0..65535"),
        "{msg}"
    );
    assert!(msg.contains("line 4"), "{msg}");
    let msg = client_err("[[proxies]]\nname = \"a\"\ntype = \"tcp\"\nremotePort = -1\n");
    assert!(msg.contains("port number -1"), "{msg}");
}

#[test]
fn bad_bandwidth_limit_rejected() {
    let msg = client_err(
        "[[proxies]]\nname = \"a\"\ntype = \"tcp\"\ntransport.bandwidthLimit = \"10MBps\"\n",
    );
    assert!(
        msg.contains("bandwidthLimit") && msg.contains("unit not support"),
        "{msg}"
    );
    let msg = client_err(
        "[[proxies]]\nname = \"a\"\ntype = \"tcp\"\ntransport.bandwidthLimit = \"abcKB\"\n",
    );
    assert!(msg.contains("bandwidthLimit"), "{msg}");
    let msg = client_err(
        "[[proxies]]\nname = \"a\"\ntype = \"tcp\"\ntransport.bandwidthLimitMode = \"both\"\n",
    );
    assert_eq!(
        msg,
        "proxy a: bandwidth limit mode should be client or server"
    );
    assert_eq!(
        BandwidthQuantity::parse(" 512KB ").unwrap().bytes(),
        524_288
    );
    assert_eq!(BandwidthQuantity::parse("1MB").unwrap().bytes(), 1_048_576);
}

#[test]
fn bad_log_level_rejected() {
    let s = server("log.level = \"verbose\"", ConfigFormat::Toml).unwrap();
    let msg = s.validate().unwrap_err().to_string();
    assert_eq!(
        msg,
        "invalid log level, optional values are [trace debug info warn error]"
    );
    let msg = client_err("log.level = \"loud\"");
    assert!(msg.contains("invalid log level"), "{msg}");
}

#[test]
fn unknown_proxy_type_rejected() {
    let e = client(
        "[[proxies]]\nname = \"a\"\ntype = \"ftp\"\n",
        ConfigFormat::Toml,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("unknown proxy type: ftp") && msg.contains("line 3"),
        "{msg}"
    );
    let msg = client_err("[[visitors]]\nname = \"a\"\ntype = \"tcp\"\n");
    assert!(msg.contains("unknown visitor type: tcp"), "{msg}");
    let msg = client_err("[[proxies]]\nname = \"a\"\ntype = \"tcp\"\nplugin.type = \"ftp\"\n");
    assert!(msg.contains("unknown plugin type: ftp"), "{msg}");
}

#[test]
fn server_validation_messages() {
    let s = server(
        "auth.method = \"ldap\"\nauth.additionalScopes = [\"Pings\"]\ntransport.tls.certFile = \"a\"\nallowPorts = [{ start = 3000, end = 2000 }]",
        ConfigFormat::Toml,
    )
    .unwrap();
    let msg = s.validate().unwrap_err().to_string();
    assert!(
        msg.contains("invalid auth method, optional values are [token oidc]"),
        "{msg}"
    );
    assert!(msg.contains("invalid auth additional scopes"), "{msg}");
    assert!(msg.contains("certFile and transport.tls.keyFile"), "{msg}");
    assert!(msg.contains("allowPorts"), "{msg}");
    assert_eq!(msg.lines().count(), 4, "{msg}");

    let msg = server("bindPort = 65536", ConfigFormat::Toml)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bindPort") && msg.contains("65536"), "{msg}");
}

#[test]
fn client_validation_messages() {
    let msg = client_err("transport.protocol = \"udp\"");
    assert!(
        msg.contains(
            "invalid transport.protocol, optional values are [tcp kcp quic websocket wss]"
        ),
        "{msg}"
    );
    let msg = client_err("transport.wireProtocol = \"v3\"");
    assert!(msg.contains("invalid transport.wireProtocol"), "{msg}");
    let msg = client_err("transport.heartbeatInterval = 60\ntransport.heartbeatTimeout = 30");
    assert!(
        msg.contains("heartbeat timeout should not less than heartbeat interval"),
        "{msg}"
    );
    let msg = client_err("[[proxies]]\nname = \"w\"\ntype = \"http\"\nlocalPort = 80\n");
    assert_eq!(
        msg,
        "proxy w: subdomain and custom domains should not be both empty"
    );
    let msg = client_err("[[proxies]]\nname = \"m\"\ntype = \"tcpmux\"\nsubdomain = \"a\"\n");
    assert_eq!(msg, "proxy m: not support multiplexer: ");
    let msg = client_err("[[proxies]]\nname = \"h\"\ntype = \"tcp\"\nhealthCheck.type = \"udp\"\n");
    assert_eq!(msg, "proxy h: not support health check type: udp");
    let msg =
        client_err("[[proxies]]\nname = \"h\"\ntype = \"tcp\"\nhealthCheck.type = \"http\"\n");
    assert_eq!(msg, "proxy h: health check path should not be empty");
    let msg = client_err("[[proxies]]\ntype = \"tcp\"\n");
    assert!(msg.contains("name should not be empty"), "{msg}");
    let msg = client_err(
        "[[proxies]]\nname = \"p\"\ntype = \"tcp\"\nplugin.type = \"unix_domain_socket\"\n",
    );
    assert_eq!(
        msg,
        "proxy p: plugin unix_domain_socket: unixPath is required"
    );
    let msg = client_err("[[visitors]]\nname = \"v\"\ntype = \"stcp\"\nbindPort = 1\n");
    assert_eq!(msg, "visitor v: server name is required");
    let msg = client_err(
        "[[visitors]]\nname = \"v\"\ntype = \"xtcp\"\nserverName = \"s\"\nbindPort = 1\nprotocol = \"tcp\"\n",
    );
    assert_eq!(msg, "visitor v: protocol should be kcp or quic");
    let msg = client_err("auth.method = \"oidc\"");
    assert!(msg.contains("auth.oidc.clientID is required"), "{msg}");
    // A disabled proxy is not validated (frp filters before validating).
    client_from_text(
        "f",
        "[[proxies]]\nname = \"w\"\ntype = \"http\"\nenabled = false\n",
        ConfigFormat::Toml,
        true,
        &no_env,
    )
    .unwrap()
    .validate()
    .unwrap();
}

#[test]
fn server_side_proxy_checks() {
    let s = server("subDomainHost = \"example.com\"", ConfigFormat::Toml).unwrap();
    let mut p = ProxyConfig::new("w", ProxyType::Http);
    p.subdomain = "a".into();
    assert!(
        s.validate_proxy(&p)
            .unwrap_err()
            .0
            .contains("vhost http port is not set")
    );
    let s = server(
        "subDomainHost = \"example.com\"\nvhostHTTPPort = 80",
        ConfigFormat::Toml,
    )
    .unwrap();
    s.validate_proxy(&p).unwrap();
    p.custom_domains = vec!["x.example.com".into()];
    assert!(
        s.validate_proxy(&p)
            .unwrap_err()
            .0
            .contains("should not belong to subdomain host")
    );
}

// ---- legacy INI, includes, files ----

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("frp-uring-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn includes_append_proxies_and_visitors() {
    let dir = temp_dir("includes");
    std::fs::write(
        dir.join("b.toml"),
        "[[proxies]]\nname = \"b\"\ntype = \"tcp\"\nremotePort = 2\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "proxies:\n  - name: a\n    type: udp\nvisitors:\n  - name: v\n    type: sudp\n    serverName: x\n    bindPort: 5\n",
    )
    .unwrap();
    std::fs::write(dir.join("skip.txt"), "garbage = [").unwrap();
    let main = dir.join("frpc.toml");
    std::fs::write(
        &main,
        format!(
            "includes = [\"{0}/*.toml\", \"{0}/*.yaml\"]\n[[proxies]]\nname = \"main\"\ntype = \"tcp\"\n",
            dir.join("confd").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("confd")).unwrap();
    std::fs::rename(dir.join("b.toml"), dir.join("confd/b.toml")).unwrap();
    std::fs::rename(dir.join("a.yaml"), dir.join("confd/a.yaml")).unwrap();
    std::fs::rename(dir.join("skip.txt"), dir.join("confd/skip.txt")).unwrap();

    let c = load_client_config(&main, true).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = c.proxies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["main", "b", "a"]);
    assert_eq!(c.proxies[2].local_ip, "127.0.0.1");
    assert_eq!(c.visitors[0].name, "v");
    verify_client(&main, true).unwrap();

    // A duplicate across files is caught; an error inside an include names that file.
    std::fs::write(
        dir.join("confd/c.toml"),
        "[[proxies]]\nname = \"main\"\ntype = \"tcp\"\n",
    )
    .unwrap();
    let msg = load_client_config(&main, true).unwrap_err().to_string();
    assert!(msg.contains("proxy name [main] is duplicated"), "{msg}");
    std::fs::write(
        dir.join("confd/c.toml"),
        "[[proxies]]\nname = \"c\"\ntype = \"tcp\"\nbogus = 1\n",
    )
    .unwrap();
    let msg = load_client_config(&main, true).unwrap_err().to_string();
    assert!(
        msg.contains("c.toml") && msg.contains("bogus") && msg.contains("line 4"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_format_by_extension_and_verify_message() {
    let dir = temp_dir("files");
    let y = dir.join("frps.yml");
    std::fs::write(&y, "bindPort: 7100\ntransport:\n  tcpMux: false\n").unwrap();
    let s = load_server_config(&y, true).unwrap();
    assert_eq!((s.bind_port, s.transport.heartbeat_timeout), (7100, 90));
    let j = dir.join("frps.json");
    std::fs::write(&j, "{\"bindPort\": 7200}").unwrap();
    assert_eq!(load_server_config(&j, true).unwrap().bind_port, 7200);
    let n = dir.join("frps");
    std::fs::write(&n, "bindPort = 7300").unwrap();
    assert_eq!(load_server_config(&n, true).unwrap().bind_port, 7300);
    verify_server(&n, true).unwrap();
    assert_eq!(
        verify_ok_message("frps", &n),
        format!("frps: the configuration file {} syntax is ok", n.display())
    );
    let missing = dir.join("nope.toml");
    let msg = load_server_config(&missing, true).unwrap_err().to_string();
    assert!(msg.contains("nope.toml"), "{msg}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "log.level = \"x\"").unwrap();
    let msg = verify_server(&bad, true).unwrap_err().to_string();
    assert!(
        msg.contains("bad.toml") && msg.contains("invalid log level"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn glob_matches_like_go() {
    assert!(glob_match("*.toml", "a.toml"));
    assert!(!glob_match("*.toml", "a.yaml"));
    assert!(glob_match("proxy-?.ini", "proxy-1.ini"));
    assert!(glob_match("[a-c]*", "beta"));
    assert!(!glob_match("[^a-c]*", "beta"));
    assert!(glob_match("*", "anything"));
}

#[test]
fn proxy_type_names() {
    let names: Vec<_> = ProxyType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(
        names,
        [
            "tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp"
        ]
    );
    assert_eq!(ProxyType::parse("xtcp"), Some(ProxyType::Xtcp));
}

#[test]
fn errors_in_later_list_elements_name_their_own_line() {
    // (text, format, line, key path): the key also appears in an earlier element, so a
    // search for the key alone would name the wrong line.
    let cases: &[(&str, ConfigFormat, usize, &str)] = &[
        (
            "proxies:\n  - name: a\n    type: http\n    localPort: 1\n    customDomains: [x]\n  - name: b\n    type: tcp\n    localPort: 2\n    customDomains: [y]\n",
            ConfigFormat::Yaml,
            9,
            "proxies[1].customDomains",
        ),
        (
            "proxies:\n- name: a\n  type: tcp\n  localPort: 1\n# comment\n\n- name: b\n  type: tcp\n  localPort: abc\nvisitors: []\n",
            ConfigFormat::Yaml,
            9,
            "proxies[1].localPort",
        ),
        (
            "{\n \"proxies\": [\n  {\"name\": \"a\", \"type\": \"http\",\n   \"customDomains\": [\"x\"]},\n  {\"name\": \"b[\", \"type\": \"tcp\",\n   \"customDomains\": [\"y\"]}\n ]\n}\n",
            ConfigFormat::Json,
            6,
            "proxies[1].customDomains",
        ),
        (
            "visitors:\n  - name: a\n    type: stcp\n    bindPort: 1\n  - name: b\n    type: stcp\n    bindPort: x\n",
            ConfigFormat::Yaml,
            7,
            "visitors[1].bindPort",
        ),
    ];
    for (text, format, line, key) in cases {
        let e = client(text, *format).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.line(), Some(*line), "{msg}");
        assert!(msg.contains(key) && msg.contains("frpc.test"), "{msg}");
    }
}

/// A key frp accepts but this frpc does not serve is refused by `check_supported`, naming the
/// proxy or visitor and the key; a plugin that is served is not.
#[test]
fn unsupported_keys_are_refused_with_their_key() {
    let unsupported = |text: &str| -> String {
        let c = client(text, ConfigFormat::Toml).unwrap();
        c.validate().unwrap();
        c.check_supported().unwrap_err().to_string()
    };
    for t in ClientPluginType::ALL {
        let opts = match t {
            ClientPluginType::Http2Https
            | ClientPluginType::Https2Http
            | ClientPluginType::Https2Https
            | ClientPluginType::Tls2Raw => "localAddr = \"127.0.0.1:1\"\n",
            ClientPluginType::StaticFile => "localPath = \"/tmp\"\n",
            ClientPluginType::UnixDomainSocket => "unixPath = \"/tmp/s\"\n",
            _ => "",
        };
        let text = format!(
            "[[proxies]]\nname = \"ok\"\ntype = \"tcp\"\nlocalPort = 1\n[[proxies]]\nname = \"socks\"\ntype = \"tcp\"\n[proxies.plugin]\ntype = \"{t}\"\n{opts}"
        );
        let c = client(&text, ConfigFormat::Toml).unwrap();
        c.validate().unwrap();
        match c.check_supported() {
            Ok(()) => assert!(t.implemented(), "{t} accepted"),
            Err(e) => {
                assert!(!t.implemented(), "{t} refused: {e}");
                assert_eq!(
                    e.to_string(),
                    format!(
                        "proxy [socks]: plugin type \"{t}\" (key proxies[1].plugin.type) is not supported by this frpc yet"
                    )
                );
            }
        }
    }
    // xtcp proxies and visitors are served now: not refused.
    for text in [
        "[[proxies]]\nname = \"p2p\"\ntype = \"xtcp\"\nlocalPort = 22\n",
        "[[visitors]]\nname = \"v\"\ntype = \"xtcp\"\nserverName = \"s\"\nbindPort = 1\nprotocol = \"kcp\"\nkeepTunnelOpen = true\nfallbackTo = \"f\"\n",
    ] {
        client(text, ConfigFormat::Toml)
            .unwrap()
            .validate_for_run()
            .unwrap();
    }
    // virtual_net is served: the visitor plugin and virtualNet.address (behind its gate).
    client(
        "featureGates = { VirtualNet = true }\nvirtualNet.address = \"100.86.0.1/24\"\n[[visitors]]\nname = \"v\"\ntype = \"stcp\"\nserverName = \"s\"\nbindPort = -1\nplugin.type = \"virtual_net\"\nplugin.destinationIP = \"100.86.0.2\"\n",
        ConfigFormat::Toml,
    )
    .unwrap()
    .validate_for_run()
    .unwrap();
    let msg = unsupported("store.path = \"/tmp/store.json\"\nwebServer.pprofEnable = true\n");
    assert!(!msg.contains("store.path"), "{msg}");
    assert!(msg.contains("(key webServer.pprofEnable)"), "{msg}");
    // OIDC and token sources are served now: not refused.
    for text in [
        "auth.tokenSource.type = \"file\"\nauth.tokenSource.file.path = \"/t\"\n",
        "auth.method = \"oidc\"\nauth.oidc.clientID = \"c\"\nauth.oidc.tokenEndpointURL = \"http://127.0.0.1:1/token\"\n",
    ] {
        client(text, ConfigFormat::Toml)
            .unwrap()
            .validate_for_run()
            .unwrap();
    }
    // A disabled proxy is not checked.
    let c = client(
        "[[proxies]]\nname = \"p2p\"\ntype = \"tcp\"\nenabled = false\nlocalPort = 1\n[proxies.plugin]\ntype = \"virtual_net\"\n",
        ConfigFormat::Toml,
    )
    .unwrap();
    c.validate_for_run().unwrap();
}

/// A TLS plugin whose crtPath/keyPath do not load is refused before anything starts (frp fails
/// that proxy's start); without them a certificate is generated, as frp does.
#[test]
fn tls_plugin_certificates_that_do_not_load_are_refused() {
    let cfg = |crt: &str, key: &str| {
        let text = format!(
            "[[proxies]]\nname = \"web\"\ntype = \"https\"\ncustomDomains = [\"a.example.com\"]\n[proxies.plugin]\ntype = \"https2http\"\nlocalAddr = \"127.0.0.1:1\"\ncrtPath = \"{crt}\"\nkeyPath = \"{key}\"\n"
        );
        let c = client(&text, ConfigFormat::Toml).unwrap();
        c.validate().unwrap();
        c.check_supported()
    };
    let garbage =
        std::env::temp_dir().join(format!("frp-uring-garbage-{}.pem", std::process::id()));
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.to_str().unwrap().to_string();
    let garbage = garbage.as_str();
    for (crt, key) in [
        ("/nonexistent/server.crt", "/nonexistent/server.key"),
        (garbage, garbage),
    ] {
        let e = cfg(crt, key).unwrap_err().to_string();
        assert!(
            e.starts_with("proxy [web]: plugin https2http (keys proxies[0].plugin.crtPath, proxies[0].plugin.keyPath): gen TLS config error: "),
            "{e}"
        );
    }
    cfg("", "").unwrap();
    let _ = std::fs::remove_file(garbage);
}

/// `exec` token sources need `--allow-unsafe TokenSourceExec` (frp's message), on both sides and
/// for `auth.oidc.tokenSource`; bad sources get frp's validation messages.
#[test]
fn exec_token_sources_need_the_unsafe_flag() {
    use crate::config::UnsafeFeatures;
    let refused = "unsafe feature \"TokenSourceExec\" is not enabled. To enable it, ensure it is allowed in the configuration or command line flags";
    let allowed = UnsafeFeatures::new(["TokenSourceExec"]);
    let exec = "auth.tokenSource.type = \"exec\"\nauth.tokenSource.exec.command = \"/bin/echo\"\n";
    let s = server(exec, ConfigFormat::Toml).unwrap();
    assert_eq!(s.validate().unwrap_err().to_string(), refused);
    s.validate_with(&allowed).unwrap();
    let c = client(exec, ConfigFormat::Toml).unwrap();
    assert_eq!(c.validate_for_run().unwrap_err().to_string(), refused);
    c.validate_for_run_with(&allowed).unwrap();
    // An unknown name enables nothing.
    assert!(c.validate_with(&UnsafeFeatures::new(["Other"])).is_err());
    let oidc = "auth.method = \"oidc\"\nauth.oidc.tokenSource.type = \"exec\"\nauth.oidc.tokenSource.exec.command = \"/bin/echo\"\n";
    let c = client(oidc, ConfigFormat::Toml).unwrap();
    assert_eq!(c.validate().unwrap_err().to_string(), refused);
    c.validate_with(&allowed).unwrap();
    // Both a token and a source; an empty path; an exec source without its table.
    let s = server(
        "auth.token = \"t\"\nauth.tokenSource.type = \"file\"\nauth.tokenSource.file.path = \"\"\n",
        ConfigFormat::Toml,
    )
    .unwrap();
    assert_eq!(
        s.validate().unwrap_err().to_string(),
        "cannot specify both auth.token and auth.tokenSource\ninvalid auth.tokenSource: file path cannot be empty"
    );
    let s = server("auth.tokenSource.type = \"exec\"\n", ConfigFormat::Toml).unwrap();
    assert_eq!(
        s.validate_with(&allowed).unwrap_err().to_string(),
        "invalid auth.tokenSource: exec configuration is required when type is 'exec'"
    );
}

// ---- keys in any case, as Go's JSON decoder matches them ----

#[test]
fn keys_match_case_insensitively_in_toml_yaml_and_json() {
    let toml = r#"
SubDomainHost = "example.com"
VHOSTHTTPPORT = 8080
[Transport.TLS]
Force = true
"#;
    let yaml =
        "subdomainhost: example.com\nVhostHTTPPort: 8080\ntransport:\n  tls:\n    FORCE: true\n";
    let json = r#"{"subdomainHost": "example.com", "vhostHttpPort": 8080,
                   "TRANSPORT": {"Tls": {"force": true}}}"#;
    for (text, format) in [
        (toml, ConfigFormat::Toml),
        (yaml, ConfigFormat::Yaml),
        (json, ConfigFormat::Json),
    ] {
        let c = server(text, format).unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(c.sub_domain_host, "example.com", "{format}");
        assert_eq!(c.vhost_http_port, 8080, "{format}");
        assert!(c.transport.tls.force, "{format}");
    }
    // Proxies: base keys, type-specific keys and nested tables in any case.
    let c = client(
        r#"
ServerPort = 7001
[[Proxies]]
Name = "web"
TYPE = "http"
LocalPort = 80
SubDomain = "foo"
CustomDomains = ["a.example.com"]
Transport.UseEncryption = true
"#,
        ConfigFormat::Toml,
    )
    .unwrap();
    assert_eq!(c.server_port, 7001);
    let p = &c.proxies[0];
    assert_eq!((p.name.as_str(), p.proxy_type), ("web", ProxyType::Http));
    assert_eq!((p.local_port, p.subdomain.as_str()), (80, "foo"));
    assert_eq!(p.custom_domains, ["a.example.com"]);
    assert!(p.transport.use_encryption);
}

#[test]
fn unknown_keys_are_still_refused_with_their_line_next_to_case_variants() {
    for (text, format, line) in [
        (
            "SubDomainHost = \"example.com\"\nnoSuchKey = 1\n",
            ConfigFormat::Toml,
            2,
        ),
        (
            "SubDomainHost: example.com\nnoSuchKey: 1\n",
            ConfigFormat::Yaml,
            2,
        ),
        (
            "{\"SubDomainHost\": \"example.com\",\n \"noSuchKey\": 1}",
            ConfigFormat::Json,
            2,
        ),
    ] {
        let e = server(text, format).unwrap_err();
        assert_eq!(e.line(), Some(line), "{format}: {e}");
        assert!(e.to_string().contains("noSuchKey"), "{e}");
    }
    // A key of another proxy type, in another case, is still another type's key.
    let e = client(
        "[[proxies]]\nname = \"t\"\ntype = \"tcp\"\nlocalPort = 22\nCustomDomains = [\"x\"]\n",
        ConfigFormat::Toml,
    )
    .unwrap_err();
    assert_eq!(e.line(), Some(5), "{e}");
    assert!(e.to_string().contains("customDomains"), "{e}");
    // Type errors under a folded key name the key's line too.
    let e = server(
        "SubDomainHost = \"x\"\nBindPort = \"seven\"\n",
        ConfigFormat::Toml,
    )
    .unwrap_err();
    assert_eq!(e.line(), Some(2), "{e}");
}

#[test]
fn two_spellings_of_one_key_resolve_as_in_frp() {
    // TOML and YAML reach Go's decoder through a Go map re-encoded as JSON: keys sorted
    // byte-wise, so "subDomainHost" (lower case 'd') comes last and wins, whatever the order
    // in the file.
    let c = server(
        "subDomainHost = \"lower\"\nSubDomainHost = \"upper\"\n",
        ConfigFormat::Toml,
    )
    .unwrap();
    assert_eq!(c.sub_domain_host, "lower");
    let c = server(
        "subDomainHost: lower\nSubDomainHost: upper\n",
        ConfigFormat::Yaml,
    )
    .unwrap();
    assert_eq!(c.sub_domain_host, "lower");
    // JSON is decoded as written: the later member wins, and two objects for one struct merge.
    let c = server(
        r#"{"subDomainHost": "first", "SubDomainHost": "second",
            "transport": {"tls": {"force": true}}, "Transport": {"maxPoolCount": 9}}"#,
        ConfigFormat::Json,
    )
    .unwrap();
    assert_eq!(c.sub_domain_host, "second");
    assert!(c.transport.tls.force);
    assert_eq!(c.transport.max_pool_count, 9);
}
