//! Legacy INI configs end to end: frps and frpc started from `frps.ini` / `frpc.ini` (the
//! format of frp before 0.52) move bytes through tcp proxies, print frp's deprecation
//! warning, and pass `verify`.

use std::process::Command;
use std::time::Duration;

use e2e::*;

const WARNING: &str = "WARNING: ini format is deprecated and the support will be removed in the future, please use yaml/json/toml format instead!";

fn frps_ini(bind: u16) -> String {
    format!(
        "[common]\nbind_addr = 127.0.0.1\nbind_port = {bind}\nproxy_bind_addr = 127.0.0.1\ntoken = ini-token\nlog_file = ./frps-file.log\nlog_level = debug\nlog_max_days = 2\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frps_and_frpc_from_legacy_ini() {
    let env = Env::new();
    let echo = echo_server().await;
    let bind = free_port();
    let (remote, r0, r1) = (free_port(), free_port(), free_port());

    let frps_cfg = env.write("frps.ini", &frps_ini(bind));
    let frps = Proc::spawn(
        "frps",
        &bin("frps"),
        &["-c", frps_cfg.to_str().unwrap()],
        env.path(),
    );
    // log_file: the server logs to ./frps-file.log, the warning goes to stdout first.
    let file_log = env.path().join("frps-file.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&file_log).is_ok_and(|t| t.contains("start frps success")) {
        assert!(
            std::time::Instant::now() < deadline,
            "frps did not log to {}; stdout:\n{}",
            file_log.display(),
            frps.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        frps.log_text().matches(WARNING).count(),
        1,
        "{}",
        frps.log_text()
    );

    let frpc_cfg = env.write(
        "frpc.ini",
        &format!(
            "# an frpc.ini of the 0.4x era\n[common]\nserver_addr = 127.0.0.1\nserver_port = {bind}\ntoken = {{{{ .Envs.FRP_E2E_TOKEN }}}}\nlog_level = debug\nunknown_old_key = ignored\n\n[echo]\ntype = tcp\nlocal_ip = 127.0.0.1\nlocal_port = {echo}\nremote_port = {remote}\nuse_encryption = true\nuse_compression = true\n\n[range:more]\ntype = tcp\nlocal_port = {echo},{echo}\nremote_port = {r0},{r1}\n"
        ),
    );
    // The token comes from the environment through the template (`env` execs frpc).
    let frpc_bin = bin("frpc");
    let frpc = Proc::spawn(
        "frpc",
        std::path::Path::new("/usr/bin/env"),
        &[
            "FRP_E2E_TOKEN=ini-token",
            frpc_bin.to_str().unwrap(),
            "-c",
            frpc_cfg.to_str().unwrap(),
        ],
        env.path(),
    );
    for name in ["echo", "more_0", "more_1"] {
        frpc.wait_log(
            &format!("[{name}] start proxy success"),
            Duration::from_secs(10),
        );
    }
    assert_eq!(frpc.log_text().matches(WARNING).count(), 1);
    assert!(
        frpc.log_text().find(WARNING) < frpc.log_text().find("login to server success"),
        "the warning comes before the logs"
    );

    for (i, port) in [remote, r0, r1].into_iter().enumerate() {
        let data = pattern(100_000 + i, i as u64);
        let got = tokio::time::timeout(Duration::from_secs(20), roundtrip(port, &data))
            .await
            .unwrap_or_else(|_| panic!("port {port} timed out"))
            .unwrap();
        assert!(got == data, "payload through port {port} corrupted");
    }
    let server_log = std::fs::read_to_string(&file_log).unwrap();
    for name in ["echo", "more_0", "more_1"] {
        assert!(
            server_log.contains(&format!("new proxy [{name}] type [tcp] success")),
            "{server_log}"
        );
    }
    assert!(
        !frps.log_text().contains("new proxy ["),
        "frps logs to its file only"
    );
}

#[test]
fn verify_legacy_ini_prints_syntax_ok() {
    let env = Env::new();
    let frps_cfg = env.write("legacy.ini", &frps_ini(7000));
    let out = Command::new(bin("frps"))
        .args(["verify", "-c", frps_cfg.to_str().unwrap()])
        .current_dir(env.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "frps: the configuration file {} syntax is ok",
            frps_cfg.display()
        )),
        "{stdout}"
    );

    let frpc_cfg = env.write(
        "frpc.ini",
        "[common]\nserver_port = 7000\n[ssh]\nlocal_port = 22\nremote_port = 6000\n",
    );
    let out = Command::new(bin("frpc"))
        .args(["verify", "-c", frpc_cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("syntax is ok"), "{stdout}");

    // A broken legacy file: the error names the section and key, exit status 1.
    let bad = env.write(
        "bad.ini",
        "[common]\nserver_port = 7000\n[ssh]\nremote_port = 6000\nbandwidth_limit = 10XB\n",
    );
    let out = Command::new(bin("frpc"))
        .args(["verify", "-c", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("line 5")
            && stdout.contains("section [ssh]")
            && stdout.contains("bandwidth_limit"),
        "{stdout}"
    );
}
