//! Client plugins (`[proxies.plugin]`): each plugin frpc serves, end to end through real frps
//! and frpc processes, and the rule that a plugin (or other key) frpc cannot serve is refused
//! by `frpc verify` and at start, naming the proxy and the key.

use std::time::Duration;

use e2e::*;

/// Runs a binary until it exits (killed after 20 s); returns (exited with success, output).
fn run(program: &str, args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let mut p = Proc::spawn(program, &bin(program), args, dir);
    let status = p.wait_exit(Duration::from_secs(20));
    p.kill();
    (status.is_some_and(|s| s.success()), p.log_text())
}

/// A plugin type frpc does not serve, an xtcp proxy and a visitor plugin: `frpc verify` and
/// `frpc` refuse them, naming the proxy and the key, before trying the server.
#[test]
fn unsupported_plugins_and_keys_are_refused() {
    let env = Env::new();
    let port = free_port();
    let cases = [
        (
            "[[proxies]]\nname = \"ok\"\ntype = \"tcp\"\nlocalPort = 22\n\
             [[proxies]]\nname = \"tls\"\ntype = \"tcp\"\nremotePort = 6000\n\
             [proxies.plugin]\ntype = \"https2https\"\nlocalAddr = \"127.0.0.1:443\"\n",
            "proxy [tls]: plugin type \"https2https\" (key proxies[1].plugin.type) is not supported by this frpc yet",
        ),
        (
            "[[proxies]]\nname = \"p2p\"\ntype = \"xtcp\"\nsecretKey = \"k\"\nlocalPort = 22\n",
            "proxy [p2p]: proxy type \"xtcp\" (key proxies[0].type) is not supported by this frpc yet",
        ),
        (
            "[[visitors]]\nname = \"v\"\ntype = \"stcp\"\nserverName = \"s\"\nbindPort = -1\n\
             [visitors.plugin]\ntype = \"virtual_net\"\ndestinationIP = \"100.86.0.2\"\n",
            "visitor [v]: plugin type \"virtual_net\" (key visitors[0].plugin.type) is not supported by this frpc yet",
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let cfg = format!("serverAddr = \"127.0.0.1\"\nserverPort = {port}\n{body}");
        let path = env.write(&format!("c{i}.toml"), &cfg);
        let path = path.to_str().unwrap();
        for args in [&["verify", "-c", path][..], &["-c", path][..]] {
            let (ok, out) = run("frpc", args, env.path());
            assert!(!ok, "frpc {args:?} accepted:\n{body}\n{out}");
            assert!(
                out.contains(want),
                "frpc {args:?}: want {want:?}, got:\n{out}"
            );
            assert!(!out.contains("syntax is ok"), "{out}");
            assert!(!out.contains("login to the server"), "{out}");
            assert!(!out.contains("start proxy success"), "{out}");
        }
    }
}
