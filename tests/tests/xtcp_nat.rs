//! xtcp across real NATs: frps and a STUN server in a "public" namespace, the proxy's frpc and
//! the visitor's frpc each in a private namespace behind a NAT namespace of its own
//! (tests/src/netns.rs). Two cone-like sites punch through to each other and the bytes do not
//! pass through frps; two symmetric sites cannot, and the visitor falls back to stcp. With
//! `FRP_GO_BIN_DIR`, real frp takes each role in turn (frps, the proxy's frpc, the visitor's
//! frpc) in the same topology, over QUIC and KCP.
//!
//! Where namespaces cannot be built, each test prints `skipping TEST: REASON`
//! (`E2E_REQUIRE_NETNS=1` makes that a failure).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::netns::{Nat, Ns, PUBLIC_IP, Site, Topology};
use e2e::stun::{StunMode, StunServer};
use e2e::*;

const FRPS_PORT: u16 = 7000;
const TOKEN: &str = "xtcp-nat";
const SK: &str = "p2p-secret";

/// Which binary plays each role.
struct Roles {
    frps: PathBuf,
    owner: PathBuf,
    visitor: PathBuf,
}

impl Roles {
    fn ours() -> Roles {
        Roles {
            frps: bin("frps"),
            owner: bin("frpc"),
            visitor: bin("frpc"),
        }
    }
}

/// frps and the STUN server in the public namespace.
struct Public {
    frps: Proc,
    stun: StunServer,
}

fn start_public(t: &Topology, env: &Env, frps: &Path) -> Public {
    let stun = t
        .public
        .enter(|| StunServer::start_with(IpAddr::V4(PUBLIC_IP), StunMode::Normal));
    let cfg = env.write(
        "frps.toml",
        &format!(
            "bindAddr = \"0.0.0.0\"\nbindPort = {FRPS_PORT}\nauth.token = \"{TOKEN}\"\n\
             log.level = \"debug\"\n{}",
            engine_table()
        ),
    );
    let frps = t.public.spawn(
        "frps",
        frps,
        &["-c", cfg.to_str().unwrap()],
        env.path(),
        &[],
    );
    frps.wait_log("frps tcp listen on", Duration::from_secs(10));
    Public { frps, stun }
}

fn common(stun: &StunServer) -> String {
    format!(
        "serverAddr = \"{PUBLIC_IP}\"\nserverPort = {FRPS_PORT}\nauth.token = \"{TOKEN}\"\n\
         natHoleStunServer = \"{}\"\nlog.level = \"debug\"\n",
        stun.addr()
    )
}

/// An echo service on 127.0.0.1 inside `ns`; returns its port.
async fn echo_in(ns: &Ns) -> u16 {
    let l = ns
        .tcp_listener(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("echo listener");
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            });
        }
    });
    port
}

/// The proxy side: an xtcp proxy (and an stcp one for fallbacks) in front of the echo service.
fn owner_cfg(stun: &StunServer, echo: u16) -> String {
    format!(
        "{}\n[[proxies]]\nname = \"p2p\"\ntype = \"xtcp\"\nsecretKey = \"{SK}\"\n\
         localIP = \"127.0.0.1\"\nlocalPort = {echo}\n\n\
         [[proxies]]\nname = \"relay\"\ntype = \"stcp\"\nsecretKey = \"{SK}\"\n\
         localIP = \"127.0.0.1\"\nlocalPort = {echo}\n",
        common(stun)
    )
}

/// An xtcp visitor of `p2p` on `port` over `protocol`, with `extra` keys.
fn xtcp_visitor(name: &str, port: u16, protocol: &str, extra: &str) -> String {
    format!(
        "\n[[visitors]]\nname = \"{name}\"\ntype = \"xtcp\"\nserverName = \"p2p\"\n\
         secretKey = \"{SK}\"\nbindAddr = \"127.0.0.1\"\nbindPort = {port}\n\
         protocol = \"{protocol}\"\n{extra}"
    )
}

/// Echoes `data` through the visitor's port from inside `ns`, retrying while the tunnel is
/// being made (up to 60 s).
async fn echo_via(ns: &Ns, port: u16, data: &[u8]) -> Vec<u8> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = tokio::time::timeout(Duration::from_secs(25), async {
            let s = ns.tcp_connect(addr).await?;
            echo_exact_on(s, data).await
        })
        .await;
        match r {
            Ok(Ok(got)) if got.len() == data.len() => return got,
            _ if tokio::time::Instant::now() > deadline => {
                panic!("no echo through the visitor on port {port}: {r:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn spawn_frpc(site: &Site, env: &Env, program: &Path, name: &str, cfg: &str) -> Proc {
    let path = env.write(&format!("{name}.toml"), cfg);
    site.host.spawn(
        name,
        program,
        &["-c", path.to_str().unwrap()],
        env.path(),
        &[],
    )
}

/// An xtcp pair between two cone sites over each of `protocols`: `mib` MiB echoed (so that
/// much each way, hash-checked) per protocol, frps' own I/O moving less than a tenth of it.
async fn cone_pair(t: &Topology, roles: &Roles, protocols: &[&str], mib: usize) {
    let (owner_site, visitor_site) = (&t.cone, &t.extra[0]);
    let env = Env::new();
    let public = start_public(t, &env, &roles.frps);
    let echo = echo_in(&owner_site.host).await;
    let owner = spawn_frpc(
        owner_site,
        &env,
        &roles.owner,
        "owner",
        &owner_cfg(&public.stun, echo),
    );
    owner.wait_log("[p2p] start proxy success", Duration::from_secs(10));
    let mut cfg = common(&public.stun);
    for (i, protocol) in protocols.iter().enumerate() {
        cfg += &xtcp_visitor(&format!("v-{protocol}"), 9000 + i as u16, protocol, "");
    }
    let visitor = spawn_frpc(visitor_site, &env, &roles.visitor, "visitor", &cfg);
    visitor.wait_log("start visitor success", Duration::from_secs(10));

    for (i, protocol) in protocols.iter().enumerate() {
        let port = 9000 + i as u16;
        // The first connection makes the tunnel.
        let hello = pattern(64 * 1024, 1);
        assert!(echo_via(&visitor_site.host, port, &hello).await == hello);
        let before = public.frps.tcp_bytes_on_port(FRPS_PORT);
        let data = pattern(mib << 20, 2 + i as u64);
        let got = echo_via(&visitor_site.host, port, &data).await;
        assert!(got == data, "{protocol}: echo mismatch");
        let moved = public.frps.tcp_bytes_on_port(FRPS_PORT) - before;
        assert!(
            moved < (mib << 20) as u64 / 10,
            "{protocol}: frps moved {moved} bytes while {mib} MiB crossed the tunnel each way"
        );
    }
    let (v, o) = (visitor.log_text(), owner.log_text());
    assert!(
        v.contains("establishing nat hole connection successful"),
        "visitor log:\n{v}"
    );
    assert!(
        o.contains("establishing nat hole connection successful"),
        "owner log:\n{o}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xtcp_between_two_cone_sites_over_quic_and_kcp() {
    let Some(t) = Topology::build_with_or_skip(
        "xtcp_between_two_cone_sites_over_quic_and_kcp",
        &[Nat::Cone],
    ) else {
        return;
    };
    cone_pair(&t, &Roles::ours(), &["quic", "kcp"], 10).await;
}

/// Both sites behind symmetric NATs: no hole can be punched, and the xtcp visitor hands its
/// connections to the stcp visitor named in `fallbackTo` after `fallbackTimeoutMs`; the bytes
/// then pass through frps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xtcp_between_two_symmetric_sites_falls_back_to_stcp() {
    let Some(t) = Topology::build_with_or_skip(
        "xtcp_between_two_symmetric_sites_falls_back_to_stcp",
        &[Nat::Symmetric],
    ) else {
        return;
    };
    let (owner_site, visitor_site) = (&t.symmetric, &t.extra[0]);
    let env = Env::new();
    let public = start_public(&t, &env, &bin("frps"));
    let echo = echo_in(&owner_site.host).await;
    let owner = spawn_frpc(
        owner_site,
        &env,
        &bin("frpc"),
        "owner",
        &owner_cfg(&public.stun, echo),
    );
    owner.wait_log("[relay] start proxy success", Duration::from_secs(10));
    let cfg = format!(
        "{}\n[[visitors]]\nname = \"relay-v\"\ntype = \"stcp\"\nserverName = \"relay\"\n\
         secretKey = \"{SK}\"\nbindPort = -1\n{}",
        common(&public.stun),
        xtcp_visitor(
            "p2p-v",
            9000,
            "quic",
            "fallbackTo = \"relay-v\"\nfallbackTimeoutMs = 1000\n"
        )
    );
    let visitor = spawn_frpc(visitor_site, &env, &bin("frpc"), "visitor", &cfg);
    visitor.wait_log("start visitor success", Duration::from_secs(10));

    let before = public.frps.tcp_bytes_on_port(FRPS_PORT);
    let data = pattern(2 << 20, 3);
    let got = echo_via(&visitor_site.host, 9000, &data).await;
    assert!(got == data, "echo mismatch through the fallback");
    let moved = public.frps.tcp_bytes_on_port(FRPS_PORT) - before;
    assert!(
        moved >= 2 * (2 << 20),
        "the fallback goes through frps, which moved only {moved} bytes"
    );
    let v = visitor.log_text();
    assert!(
        !v.contains("establishing nat hole connection successful"),
        "two symmetric NATs were punched through?\n{v}"
    );
}

/// Real frp in each role in turn, ours in the others, between two cone sites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xtcp_interop_with_real_frp_in_every_role() {
    let Some(go) = go_bin_dir_or_skip("xtcp_interop_with_real_frp_in_every_role") else {
        return;
    };
    let (gs, gc) = (go.join("frps"), go.join("frpc"));
    // A real visitor reaches our owner over KCP only: Go's QUIC client names the peer's
    // `ip:port` as TLS server name, which rustls 0.23 refuses (README, xtcp).
    let cases = [
        (
            "real frps",
            gs.clone(),
            bin("frpc"),
            bin("frpc"),
            &["quic", "kcp"][..],
        ),
        (
            "real frpc owner",
            bin("frps"),
            gc.clone(),
            bin("frpc"),
            &["quic", "kcp"],
        ),
        (
            "real frpc visitor",
            bin("frps"),
            bin("frpc"),
            gc.clone(),
            &["kcp"],
        ),
        (
            "real frpc pair",
            bin("frps"),
            gc.clone(),
            gc.clone(),
            &["quic", "kcp"],
        ),
    ];
    for (what, frps, owner, visitor, protocols) in cases {
        eprintln!("xtcp interop: {what}");
        let Some(t) =
            Topology::build_with_or_skip("xtcp_interop_with_real_frp_in_every_role", &[Nat::Cone])
        else {
            return;
        };
        let roles = Roles {
            frps,
            owner,
            visitor,
        };
        cone_pair(&t, &roles, protocols, 1).await;
    }
}
