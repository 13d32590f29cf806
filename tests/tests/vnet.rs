//! virtual_net (feature gate `VirtualNet`): two frpcs in two private namespaces behind their
//! own NATs (tests/src/netns.rs), each with its TUN device, frps in the public namespace; the
//! proxy side runs an stcp proxy with the `virtual_net` plugin, the visitor side an stcp
//! visitor with the `virtual_net` visitor plugin. Ping and a hash-checked TCP transfer cross
//! the virtual subnet; configs frp refuses are refused with frp's words; a TUN device that
//! cannot be made stops frpc with an error naming it. With `FRP_GO_BIN_DIR`, real frpc
//! v0.70.0 takes one side and ours the other.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::netns::{Ns, PUBLIC_IP, Topology};
use e2e::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_VIP: Ipv4Addr = Ipv4Addr::new(100, 86, 0, 1);
const VISITOR_VIP: Ipv4Addr = Ipv4Addr::new(100, 86, 0, 2);

/// A virtual subnet: the proxy side's address, the visitor side's, the prefix length.
#[derive(Clone, Copy)]
struct Subnet {
    server: IpAddr,
    visitor: IpAddr,
    prefix: u8,
}

const V4: Subnet = Subnet {
    server: IpAddr::V4(SERVER_VIP),
    visitor: IpAddr::V4(VISITOR_VIP),
    prefix: 24,
};

const V6: Subnet = Subnet {
    server: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x86, 0, 0, 0, 0, 0, 1)),
    visitor: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x86, 0, 0, 0, 0, 0, 2)),
    prefix: 64,
};
const FRPS_PORT: u16 = 7000;

fn frps_in(ns: &Ns, env: &Env, program: &Path) -> Proc {
    let cfg = env.write(
        "frps.toml",
        &format!(
            "bindAddr = \"0.0.0.0\"\nbindPort = {FRPS_PORT}\nauth.token = \"vt\"\n{}",
            engine_table()
        ),
    );
    let p = ns.spawn(
        "frps",
        program,
        &["-c", cfg.to_str().unwrap()],
        env.path(),
        &[],
    );
    p.wait_log("start frps success", Duration::from_secs(10));
    p
}

fn common(vip: IpAddr, prefix: u8) -> String {
    format!(
        "serverAddr = \"{PUBLIC_IP}\"\nserverPort = {FRPS_PORT}\nauth.token = \"vt\"\n\
         log.level = \"debug\"\nfeatureGates = {{ VirtualNet = true }}\n\
         virtualNet.address = \"{vip}/{prefix}\"\n"
    )
}

/// The proxy side: an stcp proxy served by the virtual_net plugin.
fn server_cfg_for(net: &Subnet) -> String {
    format!(
        "{}\n[[proxies]]\nname = \"vnet-server\"\ntype = \"stcp\"\nsecretKey = \"vsk\"\n\
         [proxies.plugin]\ntype = \"virtual_net\"\n",
        common(net.server, net.prefix)
    )
}

/// The visitor side: an stcp visitor without a listener, its virtual_net plugin routing the
/// proxy side's virtual address.
fn visitor_cfg_for(net: &Subnet) -> String {
    format!(
        "{}\n[[visitors]]\nname = \"vnet-visitor\"\ntype = \"stcp\"\nserverName = \"vnet-server\"\n\
         secretKey = \"vsk\"\nbindPort = -1\n\
         [visitors.plugin]\ntype = \"virtual_net\"\ndestinationIP = \"{}\"\n",
        common(net.visitor, net.prefix),
        net.server
    )
}

fn frpc_in(ns: &Ns, env: &Env, name: &str, program: &Path, cfg: &str) -> Proc {
    // Ours runs on the data-plane engine the suite asks for; real frpc knows no such table.
    let cfg = if program == bin("frpc") {
        format!("{cfg}{}", engine_table())
    } else {
        cfg.to_string()
    };
    let path = env.write(&format!("{name}.toml"), &cfg);
    ns.spawn(
        name,
        program,
        &["-c", path.to_str().unwrap()],
        env.path(),
        &[],
    )
}

/// Pings `ip` from `ns` until a reply comes (the tunnel is up) or 30 s pass.
fn ping_eventually(ns: &Ns, ip: impl Into<IpAddr>) {
    let ip = ip.into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ns.ping(ip) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("no ping reply from {ip}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A TCP echo service in `ns` for `ip` (its TUN address); returns `ip` and its port. It
/// listens on every address of `ip`'s family (a fresh IPv6 address may still be tentative).
fn echo_in(ns: &Ns, ip: impl Into<IpAddr>) -> SocketAddr {
    let ip = ip.into();
    let any: IpAddr = if ip.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let l = ns.tcp_listener(SocketAddr::new(any, 0)).unwrap();
    let addr = SocketAddr::new(ip, l.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `len` pseudo-random bytes from `ns` to the echo service at `to` and checks the
/// SHA-256 of what comes back.
async fn transfer_checked(ns: &Ns, to: SocketAddr, len: usize) {
    let data = pattern(len, 16);
    let want = Sha256::digest(&data);
    let s = tokio::time::timeout(Duration::from_secs(10), ns.tcp_connect(to))
        .await
        .expect("connect across the virtual network timed out")
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w
    });
    let mut got = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(60), r.read_exact(&mut got))
        .await
        .expect("transfer across the virtual network timed out")
        .unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(Sha256::digest(&got), want, "bytes changed on the way");
}

/// Both frpcs' sides for `server_bin`/`visitor_bin` (ours or real frp's): ping both ways
/// and 4 MiB echoed across the virtual subnet `net`, hash-checked.
async fn ping_and_transfer(test: &str, net: &Subnet, server_bin: &Path, visitor_bin: &Path) {
    let Some(t) = Topology::build_or_skip(test) else {
        return;
    };
    let env = Env::new();
    let _frps = frps_in(&t.public, &env, &bin("frps"));
    let server = frpc_in(
        &t.cone.host,
        &env,
        "frpc-server",
        server_bin,
        &server_cfg_for(net),
    );
    server.wait_log("start proxy success", Duration::from_secs(20));
    // The visitor connects once the proxy is up (frp waits a minute after a failed dial).
    let visitor = frpc_in(
        &t.symmetric.host,
        &env,
        "frpc-visitor",
        visitor_bin,
        &visitor_cfg_for(net),
    );
    visitor.wait_log(
        "successfully registered client route for visitor [vnet-visitor]",
        Duration::from_secs(20),
    );
    ping_eventually(&t.symmetric.host, net.server);
    // The proxy side learned where the visitor's address is from its packets: it can reach
    // the visitor side too.
    t.cone.host.ping(net.visitor).unwrap();
    let echo = echo_in(&t.cone.host, net.server);
    transfer_checked(&t.symmetric.host, echo, 4 << 20).await;
    // And the other way round, to a service on the visitor side.
    let echo = echo_in(&t.symmetric.host, net.visitor);
    transfer_checked(&t.cone.host, echo, 1 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_tcp_cross_the_virtual_network_over_stcp() {
    let frpc = bin("frpc");
    ping_and_transfer(
        "ping_and_tcp_cross_the_virtual_network_over_stcp",
        &V4,
        &frpc,
        &frpc,
    )
    .await;
}

/// The same on an IPv6 virtual subnet (`virtualNet.address = "fd00:86::1/64"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_virtual_network() {
    let frpc = bin("frpc");
    ping_and_transfer("ipv6_virtual_network", &V6, &frpc, &frpc).await;
}

/// The proxy side's frpc dies and comes back: the visitor's connection ends, the plugin
/// waits 10 s (frp's delay after a connection that ended without error) and connects again,
/// and the virtual network works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_reconnects_after_the_proxy_side_restarts() {
    let Some(t) = Topology::build_or_skip("visitor_reconnects_after_the_proxy_side_restarts")
    else {
        return;
    };
    let env = Env::new();
    let _frps = frps_in(&t.public, &env, &bin("frps"));
    let mut server = frpc_in(
        &t.cone.host,
        &env,
        "frpc-server",
        &bin("frpc"),
        &server_cfg_for(&V4),
    );
    server.wait_log("start proxy success", Duration::from_secs(20));
    let visitor = frpc_in(
        &t.symmetric.host,
        &env,
        "frpc-visitor",
        &bin("frpc"),
        &visitor_cfg_for(&V4),
    );
    visitor.wait_log(
        "successfully registered client route",
        Duration::from_secs(20),
    );
    ping_eventually(&t.symmetric.host, SERVER_VIP);
    server.kill();
    visitor.wait_log(
        "connection closed normally for visitor [vnet-visitor]",
        Duration::from_secs(20),
    );
    visitor.wait_log(
        "waiting 10s before attempting reconnection",
        Duration::from_secs(5),
    );
    assert!(t.symmetric.host.ping(SERVER_VIP).is_err());
    let server = frpc_in(
        &t.cone.host,
        &env,
        "frpc-server2",
        &bin("frpc"),
        &server_cfg_for(&V4),
    );
    server.wait_log("start proxy success", Duration::from_secs(20));
    visitor.wait_log_n(
        "successfully registered client route",
        2,
        Duration::from_secs(30),
    );
    ping_eventually(&t.symmetric.host, SERVER_VIP);
    let echo = echo_in(&t.cone.host, SERVER_VIP);
    transfer_checked(&t.symmetric.host, echo, 256 << 10).await;
}

/// Without its visitor the proxy side has no route to anything: the virtual network is only
/// what the plugins carry (a ping from the proxy side to the visitor's address fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_without_a_visitor() {
    let Some(t) = Topology::build_or_skip("no_route_without_a_visitor") else {
        return;
    };
    let env = Env::new();
    let _frps = frps_in(&t.public, &env, &bin("frps"));
    let server = frpc_in(
        &t.cone.host,
        &env,
        "frpc-server",
        &bin("frpc"),
        &server_cfg_for(&V4),
    );
    server.wait_log("start proxy success", Duration::from_secs(20));
    server.wait_log(
        "virtual network controller start...",
        Duration::from_secs(5),
    );
    // The device holds its address: pinging it locally works.
    t.cone.host.ping(SERVER_VIP).unwrap();
    assert!(t.cone.host.ping(VISITOR_VIP).is_err());
}

/// Runs frpc on `cfg` to its exit (20 s at most) with `wrap` before it (e.g. `setpriv`);
/// returns (exit success, output).
fn run_frpc(env: &Env, name: &str, cfg: &str, args: &[&str], wrap: &[&str]) -> (bool, String) {
    let path = env.write(&format!("{name}.toml"), cfg);
    let frpc = bin("frpc");
    let mut full: Vec<&str> = wrap.to_vec();
    full.push(frpc.to_str().unwrap());
    full.extend_from_slice(args);
    full.push("-c");
    full.push(path.to_str().unwrap());
    let mut p = Proc::spawn(name, Path::new(full[0]), &full[1..], env.path());
    let status = p.wait_exit(Duration::from_secs(20));
    p.kill();
    (status.is_some_and(|s| s.success()), p.log_text())
}

#[test]
fn bad_configs_are_refused_with_frps_words() {
    let env = Env::new();
    let port = free_port();
    let head = format!("serverAddr = \"127.0.0.1\"\nserverPort = {port}\nloginFailExit = false\n");
    // The gate off: refused by verify and at start, before anything runs.
    let no_gate = format!("{head}virtualNet.address = \"100.86.0.1/24\"\n");
    for args in [&["verify"][..], &[][..]] {
        let (ok, out) = run_frpc(&env, "no-gate", &no_gate, args, &[]);
        assert!(!ok, "{args:?}: accepted without the gate:\n{out}");
        assert!(
            out.contains("VirtualNet feature is not enabled; enable it by setting the appropriate feature gate flag"),
            "{args:?}: {out}"
        );
        assert!(!out.contains("syntax is ok"), "{out}");
    }
    // A gate frp does not know: `frpc` refuses it, `frpc verify` does not look (as frp's).
    let unknown = format!("{head}featureGates = {{ VirtualNet = true, Foo = true }}\n");
    let (ok, out) = run_frpc(&env, "gate-verify", &unknown, &["verify"], &[]);
    assert!(ok, "{out}");
    let (ok, out) = run_frpc(&env, "gate-run", &unknown, &[], &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("unrecognized feature gate: Foo"), "{out}");
    assert!(!out.contains("try to connect to server"), "{out}");
    // An address that is no CIDR: verify passes it (as frp's does), frpc stops at start with
    // Go's ParseCIDR error, before any login.
    let bad = format!(
        "{head}featureGates = {{ VirtualNet = true }}\nvirtualNet.address = \"100.86.0.1\"\n"
    );
    let (ok, out) = run_frpc(&env, "bad-verify", &bad, &["verify"], &[]);
    assert!(ok, "{out}");
    let (ok, out) = run_frpc(&env, "bad-addr", &bad, &[], &[]);
    assert!(!ok, "started with a bad address:\n{out}");
    assert!(
        out.contains("init virtual network controller error: invalid CIDR address: 100.86.0.1"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim() == "invalid CIDR address: 100.86.0.1"),
        "{out}"
    );
    assert!(!out.contains("try to connect to server"), "{out}");
}

/// A visitor plugin without a destinationIP, or with one that is no IP, is not started, with
/// frp's error (and frpc keeps running).
#[test]
fn bad_visitor_plugin_options_are_frps_errors() {
    let env = Env::new();
    let port = free_port();
    let frps = env.frps("frps", port, "");
    for (i, (opt, want)) in [
        ("", "new visitor error: destinationIP is required"),
        (
            "destinationIP = \"100.86.0.300\"\n",
            "new visitor error: invalid destination IP address [100.86.0.300]",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = format!(
            "serverAddr = \"127.0.0.1\"\nserverPort = {port}\n\
             [[visitors]]\nname = \"v\"\ntype = \"stcp\"\nserverName = \"s\"\nsecretKey = \"k\"\n\
             bindPort = -1\n[visitors.plugin]\ntype = \"virtual_net\"\n{opt}"
        );
        let p = env.frpc(&format!("frpc{i}"), &cfg);
        p.wait_log(want, Duration::from_secs(10));
        assert!(!p.log_text().contains("start visitor success"));
    }
    drop(frps);
}

/// Where frpc may not make a TUN device (here: run without CAP_NET_ADMIN, dropped from the
/// bounding set when the tests run as root), it stops at start with an error naming the
/// device and what it needs.
#[test]
fn no_tun_permission_is_a_clear_error_at_start() {
    let env = Env::new();
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let wrap: &[&str] = if root {
        if std::process::Command::new("setpriv")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "skipping no_tun_permission_is_a_clear_error_at_start: no setpriv (util-linux)"
            );
            return;
        }
        &["setpriv", "--bounding-set=-net_admin"]
    } else {
        &[]
    };
    let cfg = format!(
        "serverAddr = \"127.0.0.1\"\nserverPort = {}\nfeatureGates = {{ VirtualNet = true }}\n\
         virtualNet.address = \"100.86.0.1/24\"\n",
        free_port()
    );
    let (ok, out) = run_frpc(&env, "no-tun", &cfg, &[], wrap);
    assert!(!ok, "{out}");
    assert!(
        out.contains("init virtual network controller error: failed to create TUN device 'utun"),
        "{out}"
    );
    assert!(
        out.contains("(virtualNet needs /dev/net/tun and CAP_NET_ADMIN)"),
        "{out}"
    );
    assert!(!out.contains("try to connect to server"), "{out}");
}

/// Real frpc v0.70.0 on one side, ours on the other, both ways (opt-in: FRP_GO_BIN_DIR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_real_frpc_both_ways() {
    let Some(go) = go_bin_dir_or_skip("interop_with_real_frpc_both_ways") else {
        return;
    };
    let (ours, theirs) = (bin("frpc"), go.join("frpc"));
    ping_and_transfer("interop: real frpc proxy side", &V4, &theirs, &ours).await;
    ping_and_transfer("interop: real frpc visitor side", &V4, &ours, &theirs).await;
}
