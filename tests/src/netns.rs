//! Network-namespace topologies for tests that need more than 127.0.0.1: NAT traversal
//! (xtcp) and TUN devices (virtual_net).
//!
//! [`Topology::build`] creates, with `ip netns add` under names unique to this process, a
//! "public" namespace (a bridge standing in for the internet; run frps and a STUN server
//! there) and two private sites, each a host namespace behind a NAT namespace of its own:
//!
//! ```text
//!   cone host 10.200.1.2 ── 10.200.1.1 [cone NAT] 10.200.0.2 ─┐
//!                                                             br0 10.200.0.1, 10.200.0.100  (public)
//!   sym host  10.200.2.2 ── 10.200.2.1 [sym NAT]  10.200.0.3 ─┘
//! ```
//!
//! [`Topology::build_with`] adds more sites the same way (`10.200.3.2` behind `10.200.0.4`, …),
//! e.g. a second cone site so that two peers can punch through to each other.
//!
//! The cone NAT is plain `MASQUERADE` (Linux keeps the source port, so the mapping is
//! endpoint-independent in practice); the symmetric NAT is `MASQUERADE --random-fully`
//! (a fresh random port per connection, so per destination). The public namespace has no
//! route to the private ranges: only the NATs connect them. No namespace has a link to the
//! namespace the test runs in, so no traffic leaves the namespaces created here.
//!
//! Everything is torn down on drop (processes left in the namespaces are killed, then the
//! namespaces deleted, which removes their veths), also while unwinding from a panic;
//! namespaces left by a test process that died without unwinding are removed by the next
//! [`Topology::build`].
//!
//! Where the machine cannot do this (not root, no `ip`/`iptables`, no NAT in the kernel),
//! [`Topology::build`] returns a one-line reason and [`Topology::build_or_skip`] prints
//! `skipping TEST: REASON`; set `E2E_REQUIRE_NETNS=1` to turn that skip into a failure.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Proc;

/// Address of the public namespace (its bridge): where frps and STUN servers listen.
pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// A second address of the public namespace, for a second STUN destination.
pub const PUBLIC_IP2: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 100);

/// Hops of the simulated internet between the sites: a packet that leaves its site's NAT with
/// a TTL below this never reaches another site (frp punches with TTL 7 and 4).
pub const CORE_HOPS: u8 = 10;

/// Prefix of every namespace name this module creates (`fe2e<pid>x<n>-<role>`).
const PREFIX: &str = "fe2e";

/// A network namespace created by a [`Topology`], by name.
#[derive(Debug, Clone)]
pub struct Ns {
    name: String,
}

/// A private site: a host namespace behind its own NAT namespace.
#[derive(Debug)]
pub struct Site {
    /// The NAT namespace (router with the masquerade rule).
    pub nat: Ns,
    /// The private host behind it (run frpc here).
    pub host: Ns,
    /// The host's private address.
    pub host_ip: Ipv4Addr,
    /// The NAT's public address: what the public namespace sees as the site's source.
    pub wan_ip: Ipv4Addr,
}

/// The whole topology; see the module docs.
#[derive(Debug)]
pub struct Topology {
    pub public: Ns,
    /// Behind an endpoint-independent (cone-like) NAT.
    pub cone: Site,
    /// Behind a symmetric NAT (a new mapped port per destination).
    pub symmetric: Site,
    /// More sites, as asked for with [`Topology::build_with`] (10.200.3.2, 10.200.4.2, … behind
    /// 10.200.0.4, 10.200.0.5, …).
    pub extra: Vec<Site>,
    /// Which of `cone`, `symmetric`, `extra…` (in that order) have a symmetric NAT.
    kinds: Vec<Nat>,
    created: Vec<String>,
}

/// The kind of NAT in front of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Plain `MASQUERADE`: endpoint-independent mapping in practice.
    Cone,
    /// `MASQUERADE --random-fully`: a new mapped port per destination.
    Symmetric,
}

fn cmd_line(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs a command to completion; `Err` holds one line: the command and its stderr.
fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{}`: {e}", cmd_line(program, args)))?;
    if out.status.success() {
        Ok(out)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim().replace('\n', "; ");
        Err(format!(
            "`{}` failed ({}): {err}",
            cmd_line(program, args),
            out.status
        ))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Why namespaces cannot be built here, checked without creating anything; `None` when
/// the tools and privileges are there (the kernel is only known to cooperate once
/// [`Topology::build`] succeeded).
pub fn unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("network namespaces need Linux".into());
    }
    if !is_root() {
        return Some("network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)".into());
    }
    if !have("ip", "-V") {
        return Some("no `ip` command (install iproute2)".into());
    }
    if !have("iptables", "--version") {
        return Some("no `iptables` command (install iptables)".into());
    }
    if !have("nft", "--version") {
        return Some("no `nft` command (install nftables)".into());
    }
    None
}

impl Ns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `program args` in this namespace to completion (`ip netns exec`); `Err` is one
    /// line naming the command and its stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a `sh -c` script in this namespace to completion.
    pub fn sh(&self, script: &str) -> Result<Output, String> {
        self.exec("sh", &["-c", script])
    }

    /// Starts `program args` in this namespace as a [`Proc`] (output in `dir/<log_name>.log`,
    /// killed on drop). `ip netns exec` execs the program, so the child is the program itself.
    pub fn spawn(
        &self,
        log_name: &str,
        program: &Path,
        args: &[&str],
        dir: &Path,
        envs: &[(&str, &str)],
    ) -> Proc {
        let prog = program.to_str().expect("utf-8 program path");
        let mut full = vec!["netns", "exec", &self.name, prog];
        full.extend_from_slice(args);
        Proc::spawn_with_env(log_name, Path::new("ip"), &full, dir, envs)
    }

    /// Runs `f` on a fresh thread that has joined this namespace, and returns its result.
    /// Sockets created in `f` belong to the namespace for their whole life, whatever thread
    /// later uses them: create them here, use them anywhere (see [`Ns::tcp_listener`]).
    pub fn enter<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            });
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A tokio TCP listener bound in this namespace (call inside a tokio runtime).
    pub fn tcp_listener(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let l = self.enter(|| std::net::TcpListener::bind(addr))?;
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    }

    /// A tokio UDP socket bound in this namespace (call inside a tokio runtime).
    pub fn udp_socket(&self, addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let s = self.enter(|| std::net::UdpSocket::bind(addr))?;
        s.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(s)
    }

    /// A TCP connection from this namespace to `addr`.
    pub async fn tcp_connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let sock = self.enter(|| {
            if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
        })?;
        sock.connect(addr).await
    }

    /// A UDP service on `addr` in this namespace answering every datagram with the sender's
    /// address as text (`ip:port`): what a STUN binding response tells, without the codec.
    /// Runs until the runtime ends; returns the bound address.
    pub fn udp_reflector(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let s = self.udp_socket(addr)?;
        let local = s.local_addr()?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((_, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(from.to_string().as_bytes(), from).await;
            }
        });
        Ok(local)
    }

    /// Whether `ping -c 1` from this namespace reaches `ip` (IPv4 or IPv6) within 2 s.
    pub fn ping(&self, ip: impl Into<std::net::IpAddr>) -> Result<(), String> {
        self.exec(
            "ping",
            &["-n", "-c", "1", "-W", "2", &ip.into().to_string()],
        )
        .map(|_| ())
    }
}

/// The address a [`Ns::udp_reflector`] at `to` sees for `sock`, i.e. `sock`'s mapping on the
/// way there; retries for up to 5 s.
pub async fn mapped_addr(sock: &tokio::net::UdpSocket, to: SocketAddr) -> io::Result<SocketAddr> {
    let mut buf = vec![0u8; 256];
    for _ in 0..25 {
        sock.send_to(b"?", to).await?;
        if let Ok(r) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            sock.recv_from(&mut buf),
        )
        .await
        {
            let (n, from) = r?;
            if from == to {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                return text
                    .parse()
                    .map_err(|e| io::Error::other(format!("reflector said {text:?}: {e}")));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer from the reflector at {to}"),
    ))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills what still runs in namespace `name` and deletes it.
fn destroy(name: &str) {
    if let Ok(out) = run("ip", &["netns", "pids", name]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = run("ip", &["netns", "del", name]);
}

/// Deletes namespaces left by test processes of ours that are gone (killed without
/// unwinding, e.g. by a test timeout).
fn reap_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('x').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !pid_alive(pid)
        {
            destroy(&name);
        }
    }
}

impl Topology {
    /// Builds the topology, or says in one line why it cannot be built here.
    pub fn build() -> Result<Topology, String> {
        Self::build_with(&[])
    }

    /// [`Topology::build`] with `extra` more sites behind NATs of the given kinds (e.g. a
    /// second cone site for a pair of peers that can punch through to each other).
    pub fn build_with(extra: &[Nat]) -> Result<Topology, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        reap_stale();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let mut t = Topology {
            public: Ns {
                name: format!("{id}-pub"),
            },
            cone: Site {
                nat: Ns {
                    name: format!("{id}-cnat"),
                },
                host: Ns {
                    name: format!("{id}-chost"),
                },
                host_ip: Ipv4Addr::new(10, 200, 1, 2),
                wan_ip: Ipv4Addr::new(10, 200, 0, 2),
            },
            symmetric: Site {
                nat: Ns {
                    name: format!("{id}-snat"),
                },
                host: Ns {
                    name: format!("{id}-shost"),
                },
                host_ip: Ipv4Addr::new(10, 200, 2, 2),
                wan_ip: Ipv4Addr::new(10, 200, 0, 3),
            },
            extra: (3u8..)
                .zip(extra)
                .map(|(n, _)| Site {
                    nat: Ns {
                        name: format!("{id}-nat{n}"),
                    },
                    host: Ns {
                        name: format!("{id}-host{n}"),
                    },
                    host_ip: Ipv4Addr::new(10, 200, n, 2),
                    wan_ip: Ipv4Addr::new(10, 200, 0, n + 1),
                })
                .collect(),
            kinds: [Nat::Cone, Nat::Symmetric]
                .into_iter()
                .chain(extra.iter().copied())
                .collect(),
            created: Vec::new(),
        };
        // On error `t` is dropped here, which removes what was created so far.
        t.setup()
            .map_err(|e| format!("cannot build the namespace topology: {e}"))?;
        Ok(t)
    }

    /// [`Topology::build`] for a test: `None` after printing `skipping TEST: REASON` when it
    /// cannot be built; panics instead when `E2E_REQUIRE_NETNS=1` (CI on a capable machine).
    pub fn build_or_skip(test: &str) -> Option<Topology> {
        Self::build_with_or_skip(test, &[])
    }

    /// [`Topology::build_with`] for a test, skipping as [`Topology::build_or_skip`] does.
    pub fn build_with_or_skip(test: &str, extra: &[Nat]) -> Option<Topology> {
        match Self::build_with(extra) {
            Ok(t) => Some(t),
            Err(why) => {
                if std::env::var("E2E_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
                    panic!("{test}: E2E_REQUIRE_NETNS=1 but {why}");
                }
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "skipping {test}: {why}");
                None
            }
        }
    }

    /// The names of the namespaces created (for checks that they are gone after drop).
    pub fn namespace_names(&self) -> Vec<String> {
        self.created.clone()
    }

    fn add_ns(&mut self, ns: &Ns) -> Result<(), String> {
        run("ip", &["netns", "add", &ns.name])?;
        self.created.push(ns.name.clone());
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn setup(&mut self) -> Result<(), String> {
        let public = self.public.clone();
        self.add_ns(&public)?;
        let p = public.name.as_str();
        run("ip", &["-n", p, "link", "add", "br0", "type", "bridge"])?;
        run(
            "ip",
            &["-n", p, "addr", "add", "10.200.0.1/24", "dev", "br0"],
        )?;
        run(
            "ip",
            &["-n", p, "addr", "add", "10.200.0.100/24", "dev", "br0"],
        )?;
        run("ip", &["-n", p, "link", "set", "br0", "up"])?;
        // The internet between the sites: packets whose TTL would run out crossing it are
        // dropped here, before they reach the other site's NAT — what frp's low-TTL punch
        // packets count on (they open their own NAT's mapping without the other NAT seeing
        // them; a NAT that saw one would take the port for that flow and map the reply
        // elsewhere).
        public.exec("nft", &["add table bridge core"])?;
        public.exec(
            "nft",
            &["add chain bridge core forward { type filter hook forward priority 0; }"],
        )?;
        public.exec(
            "nft",
            &[&format!(
                "add rule bridge core forward ip ttl < {CORE_HOPS} drop"
            )],
        )?;
        let sites: Vec<_> = [&self.cone, &self.symmetric]
            .into_iter()
            .chain(&self.extra)
            .zip(&self.kinds)
            .zip(1u8..)
            .map(|((site, kind), subnet)| {
                (
                    site.nat.clone(),
                    site.host.clone(),
                    site.host_ip,
                    site.wan_ip,
                    match subnet {
                        1 => "cone".to_string(),
                        2 => "sym".to_string(),
                        n => format!("site{n}"),
                    },
                    subnet,
                    *kind == Nat::Symmetric,
                )
            })
            .collect();
        for (nat, host, host_ip, wan_ip, port_name, subnet, random) in sites {
            self.add_ns(&nat)?;
            self.add_ns(&host)?;
            let (n, h) = (nat.name.as_str(), host.name.as_str());
            // WAN: the NAT's `wan` on the public bridge.
            run(
                "ip",
                &[
                    "link", "add", "wan", "netns", n, "type", "veth", "peer", "name", &port_name,
                    "netns", p,
                ],
            )?;
            run("ip", &["-n", p, "link", "set", &port_name, "master", "br0"])?;
            run("ip", &["-n", p, "link", "set", &port_name, "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    n,
                    "addr",
                    "add",
                    &format!("{wan_ip}/24"),
                    "dev",
                    "wan",
                ],
            )?;
            run("ip", &["-n", n, "link", "set", "wan", "up"])?;
            // LAN: the NAT's `lan` to the host's `eth0`.
            run(
                "ip",
                &[
                    "link", "add", "lan", "netns", n, "type", "veth", "peer", "name", "eth0",
                    "netns", h,
                ],
            )?;
            let gw = format!("10.200.{subnet}.1");
            run(
                "ip",
                &["-n", n, "addr", "add", &format!("{gw}/24"), "dev", "lan"],
            )?;
            run("ip", &["-n", n, "link", "set", "lan", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    h,
                    "addr",
                    "add",
                    &format!("{host_ip}/24"),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", h, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", h, "route", "add", "default", "via", &gw])?;
            nat.sh("echo 1 > /proc/sys/net/ipv4/ip_forward")?;
            let mut rule = vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ];
            if random {
                rule.push("--random-fully");
            }
            nat.exec("iptables", &rule)?;
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            destroy(name);
        }
    }
}
