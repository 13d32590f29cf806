//! Legacy INI: the same configs in all four formats, the key mapping, legacy defaults,
//! range sections, includes and errors.

use std::collections::HashMap;

use super::load::{client_from_text, server_from_text};
use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn ini_client(text: &str) -> Result<ClientConfig, ConfigError> {
    client_from_text("frpc.ini", text, ConfigFormat::Auto, true, &no_env)
}

fn ini_server(text: &str) -> Result<ServerConfig, ConfigError> {
    server_from_text("frps.ini", text, ConfigFormat::Auto, true, &no_env)
}

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("testdata/legacy/", $name))
    };
}

/// (file name, text, extension hint) of one config in every format.
fn formats(
    ini: &'static str,
    toml: &'static str,
    yaml: &'static str,
    json: &'static str,
) -> [(&'static str, &'static str, ConfigFormat); 4] {
    [
        ("ini", ini, ConfigFormat::Auto),
        ("toml", toml, ConfigFormat::Toml),
        ("yaml", yaml, ConfigFormat::Yaml),
        ("json", json, ConfigFormat::Json),
    ]
}

#[test]
fn frpc_same_in_ini_toml_yaml_json() {
    let cases = formats(
        fixture!("frpc.ini"),
        fixture!("frpc.toml"),
        fixture!("frpc.yaml"),
        fixture!("frpc.json"),
    );
    let loaded: Vec<(&str, ClientConfig)> = cases
        .iter()
        .map(|(name, text, hint)| {
            let cfg = client_from_text(name, text, *hint, true, &no_env)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            (*name, cfg)
        })
        .collect();
    let (_, ini) = &loaded[0];
    for (name, cfg) in &loaded[1..] {
        assert_eq!(ini, cfg, "frpc.ini and frpc.{name} differ");
    }

    // Spot checks, so that a mapping broken the same way in every fixture still fails.
    assert_eq!(ini.server_addr, "203.0.113.10");
    assert_eq!(ini.auth.additional_scopes, ["HeartBeats", "NewWorkConns"]);
    assert!(!ini.transport.tls.enable);
    assert_eq!(ini.web_server.port, 7400);
    assert_eq!(ini.web_server.password, "adminpw");
    assert_eq!(ini.log.to, "./frpc.log");
    assert_eq!(ini.log.max_days, 7);
    assert!(!ini.login_fail_exit);
    assert_eq!(ini.metadatas["env"], "prod");
    let names: Vec<&str> = ini.proxies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ssh",
            "web",
            "secure",
            "mux",
            "dns",
            "secret_ssh",
            "socks",
            "https2http"
        ]
    );
    let web = &ini.proxies[1];
    assert_eq!(web.custom_domains, ["www.example.com", "example.com"]);
    assert_eq!(web.http_password, "p");
    assert_eq!(web.request_headers.set["X-From-Where"], "frp");
    assert_eq!(web.health_check.path, "/status");
    assert_eq!(ini.proxies[0].transport.bandwidth_limit.bytes(), 1 << 20);
    let socks = ini.proxies[6].plugin.as_ref().unwrap();
    assert_eq!(
        (socks.username.as_str(), socks.password.as_str()),
        ("su", "sp")
    );
    let h2 = ini.proxies[7].plugin.as_ref().unwrap();
    assert_eq!(h2.request_headers.set["X-From-Where"], "frp");
    assert_eq!(ini.visitors[0].server_name, "secret_ssh");
    assert_eq!(ini.visitors[1].protocol, "quic");
    assert_eq!(ini.visitors[1].max_retries_an_hour, 8);
}

#[test]
fn frps_same_in_ini_toml_yaml_json() {
    let cases = formats(
        fixture!("frps.ini"),
        fixture!("frps.toml"),
        fixture!("frps.yaml"),
        fixture!("frps.json"),
    );
    let loaded: Vec<(&str, ServerConfig)> = cases
        .iter()
        .map(|(name, text, hint)| {
            let cfg = server_from_text(name, text, *hint, true, &no_env)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (*name, cfg)
        })
        .collect();
    let (_, ini) = &loaded[0];
    for (name, cfg) in &loaded[1..] {
        assert_eq!(ini, cfg, "frps.ini and frps.{name} differ");
    }
    assert_eq!(ini.allow_ports_str(), "2000-3000,3001,3003,4000-50000");
    assert!(ini.is_port_allowed(2500) && !ini.is_port_allowed(3002));
    assert!(ini.transport.tls.force);
    assert!(!ini.transport.tcp_mux);
    assert!(!ini.detailed_errors_to_client);
    assert_eq!(ini.web_server.port, 7500);
    assert_eq!(ini.http_plugins.len(), 2);
    assert_eq!(ini.http_plugins[1].ops, ["NewProxy", "CloseProxy"]);
    assert!(ini.http_plugins[1].tls_verify);
    assert_eq!(ini.auth.additional_scopes, ["HeartBeats"]);
}

#[test]
fn legacy_defaults() {
    // frps: the legacy dashboard default address is 0.0.0.0, v1's is 127.0.0.1.
    let s = ini_server("[common]\ndashboard_port = 7500\n").unwrap();
    assert_eq!(s.web_server.addr, "0.0.0.0");
    let v1 = server_from_text(
        "frps.toml",
        "webServer.port = 7500",
        ConfigFormat::Toml,
        true,
        &no_env,
    )
    .unwrap();
    assert_eq!(v1.web_server.addr, "127.0.0.1");
    // Everything else is v1's default.
    let mut s = ini_server("[common]\n").unwrap();
    s.web_server.addr = "127.0.0.1".into();
    assert_eq!(s, ServerConfig::default());

    // frpc: an empty [common] is v1's defaults (tls_enable, tcp_mux, login_fail_exit true).
    let c = ini_client("[common]\n").unwrap();
    assert_eq!(c, ClientConfig::default());
    assert!(c.transport.tls.enable && c.transport.tls.disable_custom_tls_first_byte);
    assert!(c.login_fail_exit && c.transport.tcp_mux);
    assert_eq!(c.log.to, "console");

    // A proxy without `type` is tcp; proxy and visitor defaults.
    let c = ini_client(
        "[common]\n[p]\nlocal_port = 22\n[v]\nrole = visitor\ntype = xtcp\nserver_name = p\nmax_retries_an_hour = -3\n",
    )
    .unwrap();
    let p = &c.proxies[0];
    assert_eq!(p.proxy_type, ProxyType::Tcp);
    assert_eq!(p.local_ip, "127.0.0.1");
    assert_eq!(p.transport.bandwidth_limit_mode, "client");
    let v = &c.visitors[0];
    assert_eq!(v.bind_addr, "127.0.0.1");
    assert_eq!(
        (
            v.protocol.as_str(),
            v.max_retries_an_hour,
            v.min_retry_interval,
            v.fallback_timeout_ms
        ),
        ("quic", 8, 90, 1000)
    );
}

#[test]
fn unknown_keys_and_unparsable_values_ignored_like_frp() {
    // frp's go-ini MapTo ignores unknown keys, and keeps the default for a value that does
    // not parse as the field's type; strict mode does not apply to INI.
    let c = ini_client(
        "[common]\nserver_port = seven\nlogin_fail_exit = perhaps\nno_such_key = 1\n[ssh]\ntype = tcp\nlocal_port = 22\nremote_port = 6000\nbogus = x\ncustom_domains = ignored.example.com\n",
    )
    .unwrap();
    assert_eq!(c.server_port, 7000);
    assert!(c.login_fail_exit);
    assert!(c.proxies[0].custom_domains.is_empty(), "not a tcp key");
    // Go's ParseInt base 0: hex and octal.
    let c = ini_client("[common]\nserver_port = 0x1B58\nadmin_port = 017\n").unwrap();
    assert_eq!((c.server_port, c.web_server.port), (7000, 15));
}

#[test]
fn range_sections_expand() {
    let c = ini_client(
        "[common]\n[range:game]\ntype = udp\nlocal_ip = 10.0.0.2\nlocal_port = 6010-6012,6015\nremote_port = 7010-7013\nuse_encryption = true\n[after]\nlocal_port = 1\n",
    )
    .unwrap();
    let got: Vec<(&str, ProxyType, u16, u16, bool)> = c
        .proxies
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.proxy_type,
                p.local_port,
                p.remote_port,
                p.transport.use_encryption,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("after", ProxyType::Tcp, 1, 0, false),
            ("game_0", ProxyType::Udp, 6010, 7010, true),
            ("game_1", ProxyType::Udp, 6011, 7011, true),
            ("game_2", ProxyType::Udp, 6012, 7012, true),
            ("game_3", ProxyType::Udp, 6015, 7013, true),
        ]
    );
    assert!(c.proxies[1..].iter().all(|p| p.local_ip == "10.0.0.2"));

    let e = ini_client("[common]\n[range:x]\nlocal_port = 1-3\nremote_port = 5-6\n").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("section [range:x]")
            && msg.contains("`remote_port`")
            && msg.contains("line 4")
            && msg.contains("should be same"),
        "{msg}"
    );
    let msg =
        ini_client("[common]\n[range:x]\nlocal_port = 0-9223372036854775807\nremote_port = 1\n")
            .unwrap_err()
            .to_string();
    assert!(
        msg.contains("`local_port`") && msg.contains("0..65535"),
        "{msg}"
    );
    let msg = ini_client("[common]\n[range:x]\nlocal_port = 1-3\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("remote_port is empty"), "{msg}");
}

#[test]
fn headers_map_to_request_headers() {
    let c = ini_client(
        "[common]\n[web]\ntype = http\nlocal_port = 80\nheader_X-From-Where = frp\nheader_Host = h\n[t]\ntype = tcp\nheader_X = ignored\n[h2]\ntype = http\nplugin = http2https\nplugin_local_addr = 127.0.0.1:443\nplugin_header_X-A = a\nheader_X-B = b\n",
    )
    .unwrap();
    let set = &c.proxies[0].request_headers.set;
    assert_eq!(set.len(), 2);
    assert_eq!(set["X-From-Where"], "frp");
    assert_eq!(set["Host"], "h");
    assert!(c.proxies[1].request_headers.set.is_empty());
    let h2 = &c.proxies[2];
    assert_eq!(h2.request_headers.set["X-B"], "b");
    let plugin = h2.plugin.as_ref().unwrap();
    assert_eq!(plugin.plugin_type, ClientPluginType::Http2Https);
    assert_eq!(plugin.local_addr, "127.0.0.1:443");
    assert_eq!(plugin.request_headers.set.len(), 1);
    assert_eq!(plugin.request_headers.set["X-A"], "a");
}

#[test]
fn plugin_params_use_frp_legacy_names() {
    let c = ini_client(
        "[common]\n[hp]\ntype = tcp\nplugin = http_proxy\nplugin_http_user = u\nplugin_http_passwd = p\n[sf]\ntype = tcp\nplugin = static_file\nplugin_local_path = /srv\nplugin_strip_prefix = static\n[uds]\ntype = tcp\nplugin = unix_domain_socket\nplugin_unix_path = /var/run/docker.sock\n",
    )
    .unwrap();
    let p = |i: usize| c.proxies[i].plugin.clone().unwrap();
    assert_eq!(
        (p(0).http_user, p(0).http_password),
        ("u".into(), "p".into())
    );
    assert_eq!(
        (p(1).local_path, p(1).strip_prefix),
        ("/srv".into(), "static".into())
    );
    assert_eq!(p(2).unix_path, "/var/run/docker.sock");
}

#[test]
fn start_drops_unlisted_sections() {
    let c = ini_client(
        "[common]\nstart = a, v\n[a]\nlocal_port = 1\n[b]\nlocal_port = 2\nbandwidth_limit = broken\n[v]\nrole = visitor\ntype = stcp\n[w]\nrole = visitor\ntype = stcp\n",
    )
    .unwrap();
    assert_eq!(c.start, ["a", "v"]);
    assert_eq!(c.proxies.len(), 1);
    assert_eq!(c.visitors.len(), 1);
    assert_eq!(c.visitors[0].name, "v");
}

#[test]
fn templates_render_in_ini() {
    let envs: HashMap<&str, &str> = [("FRP_SERVER", "10.1.2.3"), ("FRP_PORT", "6001")].into();
    let lookup = |k: &str| envs.get(k).map(|v| v.to_string());
    let c = client_from_text(
        "frpc.ini",
        "[common]\nserver_addr = {{ .Envs.FRP_SERVER }}\n[ssh]\nlocal_port = 22\nremote_port = {{ .Envs.FRP_PORT }}\n",
        ConfigFormat::Auto,
        true,
        &lookup,
    )
    .unwrap();
    assert_eq!(c.server_addr, "10.1.2.3");
    assert_eq!(c.proxies[0].remote_port, 6001);
}

#[test]
fn includes_add_ini_sections() {
    let dir = std::env::temp_dir().join(format!("frp-uring-legacy-inc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("b.ini"), "[b]\nlocal_port = 2\n").unwrap();
    std::fs::write(dir.join("a.ini"), "[a]\nlocal_port = 1\n").unwrap();
    std::fs::write(
        dir.join("c.ini"),
        "[c]\nlocal_port = 3\nbandwidth_limit = 9XB\n",
    )
    .unwrap();
    std::fs::write(dir.join("skip.txt"), "[skip]\n").unwrap();
    let text = format!(
        "[common]\nincludes = {0}/a.ini,{0}/b.*\n[main]\nlocal_port = 9\n",
        dir.display()
    );
    let c = ini_client(&text).unwrap();
    let names: Vec<&str> = c.proxies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["main", "a", "b"]);

    // An error in an included file names that file and its own line.
    let text = format!("[common]\nincludes = {}/c.ini\n", dir.display());
    let msg = ini_client(&text).unwrap_err().to_string();
    assert!(
        msg.contains("c.ini: ini line 3, section [c], key `bandwidth_limit`"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_name_section_key_and_line() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[common]\n[ssh]\ntype = tcp\nbandwidth_limit = 1GB\n",
            &["frpc.ini: ini line 4", "section [ssh]", "`bandwidth_limit`"],
        ),
        (
            "[common]\n[ssh]\nremote_port = 70000\n",
            &["line 3", "section [ssh]", "`remote_port`", "0..65535"],
        ),
        (
            "[common]\n[ssh]\ntype = tpc\n",
            &["section [ssh]", "`type`", "invalid type [tpc]"],
        ),
        (
            "[common]\n[v]\nrole = visiter\n",
            &[
                "section [v]",
                "`role`",
                "role should be 'server' or 'visitor'",
            ],
        ),
        (
            "[common]\n[v]\nrole = visitor\n",
            &["section [v]", "type shouldn't be empty"],
        ),
        (
            "[common]\nheartbeat_interval = 30\nheartbeat_timeout = 10\n",
            &["section [common]", "`heartbeat_timeout`", "line 3"],
        ),
        (
            "[common]\nprotocol = udp\n",
            &["`protocol`", "invalid protocol"],
        ),
        (
            "[common]\n[ssh\n",
            &["frpc.ini: ini line 2", "unclosed section"],
        ),
        ("[common]\n[p]\nplugin = nope\n", &["`plugin`", "nope"]),
    ];
    for (text, wants) in cases {
        let e = ini_client(text).unwrap_err();
        assert!(matches!(e, ConfigError::Ini { .. }), "{e}");
        let msg = e.to_string();
        for w in *wants {
            assert!(msg.contains(w), "{text:?}: {msg:?} lacks {w:?}");
        }
    }
    let msg = ini_server("[common]\nallow_ports = 2000-3000,\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("section [common]") && msg.contains("`allow_ports`") && msg.contains("line 2"),
        "{msg}"
    );
    let msg = ini_server("[common]\nbind_port = 99999\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`bind_port`"), "{msg}");
}

#[test]
fn legacy_detection_like_frp() {
    assert!(is_legacy_ini("[common]\nserver_addr = x\n"));
    assert!(is_legacy_ini("# c\n[common] # trailing\nflag_free = 1\n"));
    assert!(!is_legacy_ini(
        "serverAddr = \"x\"\n[[proxies]]\nname = \"a\"\n"
    ));
    assert!(!is_legacy_ini("[ssh]\ntype = tcp\n"));
    // go-ini's default options reject a line without `=` / `:`, so a TOML file that
    // happens to have a [common] table but a multi-line array is not INI.
    assert!(!is_legacy_ini("[common]\nx = [\n  1,\n]\n"));
    // Sections are case-sensitive.
    assert!(!is_legacy_ini("[Common]\nx = 1\n"));
}

#[test]
fn legacy_files_load_and_verify() {
    let dir = std::env::temp_dir().join(format!("frp-uring-legacy-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let frps = dir.join("frps.ini");
    std::fs::write(&frps, fixture!("frps.ini")).unwrap();
    verify_server(&frps, true).unwrap_or_else(|e| panic!("{e}"));
    let frpc = dir.join("frpc.ini");
    std::fs::write(&frpc, fixture!("frpc.ini")).unwrap();
    verify_client(&frpc, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(load_client_config(&frpc, true).unwrap().proxies.len(), 8);
    let _ = std::fs::remove_dir_all(&dir);
}
