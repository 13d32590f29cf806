//! Memory soak figures for frps: emulated clients logging in and leaving, then a burst of
//! short tunneled connections. Prints frps' RSS and fd count after each step.
//!
//! ```text
//! cargo build --release -p frps -p e2e --bins
//! target/release/soak [--clients 5000] [--rounds 5] [--proxies] [--burst 20000]
//!                     [--parallel 64] [--hold-ms 2000] [--settle-ms 3000]
//!                     [--frps target/release/frps | --pid PID --port PORT --token T]
//!                     [--frps-env NAME=VALUE]...
//! ```
//!
//! By default it starts `--frps` (ours, `target/release/frps`) on 127.0.0.1 with a generated
//! config; `--pid`/`--port` measure an frps already running (e.g. Go's) instead. `--burst N`
//! logs `--burst-clients` more clients in after the rounds, one tcp proxy each, and makes N
//! short connections through their tunnels (4 KiB echoed each, 256 at a time).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::soak::{self, Plan, Setup};

struct Args {
    clients: usize,
    rounds: usize,
    proxies: bool,
    burst: usize,
    burst_clients: usize,
    parallel: usize,
    hold: Duration,
    settle: Duration,
    frps: PathBuf,
    frps_env: Vec<(String, String)>,
    pid: Option<u32>,
    port: Option<u16>,
    token: String,
}

fn parse() -> Args {
    let mut a = Args {
        clients: 5000,
        rounds: 5,
        proxies: false,
        burst: 0,
        burst_clients: 100,
        parallel: 64,
        hold: Duration::from_millis(2000),
        settle: Duration::from_millis(3000),
        frps: PathBuf::from("target/release/frps"),
        frps_env: Vec::new(),
        pid: None,
        port: None,
        token: "soak".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--clients" => a.clients = v().parse().unwrap(),
            "--rounds" => a.rounds = v().parse().unwrap(),
            "--proxies" => a.proxies = true,
            "--burst" => a.burst = v().parse().unwrap(),
            "--burst-clients" => a.burst_clients = v().parse().unwrap(),
            "--parallel" => a.parallel = v().parse().unwrap(),
            "--hold-ms" => a.hold = Duration::from_millis(v().parse().unwrap()),
            "--settle-ms" => a.settle = Duration::from_millis(v().parse().unwrap()),
            "--frps" => a.frps = PathBuf::from(v()),
            "--frps-env" => {
                let kv = v();
                let (k, val) = kv.split_once('=').expect("--frps-env NAME=VALUE");
                a.frps_env.push((k.into(), val.into()));
            }
            "--pid" => a.pid = Some(v().parse().unwrap()),
            "--port" => a.port = Some(v().parse().unwrap()),
            "--token" => a.token = v(),
            other => {
                panic!("unknown argument {other} (see the doc comment in tests/src/bin/soak.rs)")
            }
        }
    }
    a
}

fn main() {
    let args = parse();
    println!("RLIMIT_NOFILE: {}", soak::raise_nofile());
    let env = e2e::Env::new();
    // Our frps, unless an existing one is named.
    let (_proc, pid, port) = match (args.pid, args.port) {
        (Some(pid), Some(port)) => (None, pid, port),
        (None, None) => {
            let frps = std::fs::canonicalize(&args.frps)
                .unwrap_or_else(|e| panic!("{}: {e}", args.frps.display()));
            let port = e2e::free_port();
            let cfg = format!(
                "bindAddr = \"127.0.0.1\"\nbindPort = {port}\nproxyBindAddr = \"127.0.0.1\"\nauth.token = \"{}\"\n",
                args.token
            );
            let path = env.write("frps.toml", &cfg);
            let envs: Vec<(&str, &str)> = args
                .frps_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let p = e2e::Proc::spawn_with_env(
                "frps",
                &frps,
                &["-c", path.to_str().unwrap()],
                env.path(),
                &envs,
            );
            p.wait_log("start frps success", Duration::from_secs(10));
            let pid = p.pid();
            (Some(p), pid, port)
        }
        _ => panic!("--pid and --port go together"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let setup = Arc::new(Setup::new(port, &args.token, ""));
        // Let frps finish starting (its threads, the first allocations) before the baseline.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let base_fds = soak::fd_count(pid);
        let ports: Vec<u16> = if args.proxies {
            (0..args.clients).map(|_| e2e::free_port()).collect()
        } else {
            Vec::new()
        };
        let plan = Plan {
            clients: args.clients,
            rounds: args.rounds,
            ports,
            parallel: args.parallel,
            hold: args.hold,
            settle: args.settle,
        };
        let rounds = soak::reconnect_rounds(&setup, pid, &plan, base_fds)
            .await
            .expect("reconnect rounds");
        let first = rounds.first().map_or(0, |r| r.after_kib);
        let worst = rounds.iter().map(|r| r.after_kib).max().unwrap_or(0);
        println!(
            "after-leave RSS: first round {:.1} MiB, highest {:.1} MiB ({:+.1} %)",
            first as f64 / 1024.0,
            worst as f64 / 1024.0,
            (worst as f64 / first.max(1) as f64 - 1.0) * 100.0
        );
        if args.burst > 0 {
            let n = args.burst_clients.max(1);
            let ports: Vec<u16> = (0..n).map(|_| e2e::free_port()).collect();
            let clients = soak::login_many(&setup, n, args.parallel, Some(&ports), "burst")
                .await
                .expect("burst clients");
            // The ports the proxies got (one taken meanwhile by another process is replaced).
            let ports: Vec<u16> = clients.iter().filter_map(|c| c.remote_port).collect();
            tokio::time::sleep(args.settle).await;
            let before = soak::rss_kib(pid);
            let fds_before = soak::fd_count(pid);
            let t = Instant::now();
            let sampling = Arc::new(std::sync::atomic::AtomicU64::new(before));
            let sampler = {
                let peak = sampling.clone();
                tokio::spawn(async move {
                    loop {
                        peak.fetch_max(soak::rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            };
            let failed = soak::tunnel_burst(&ports, args.burst, 256, 4096).await;
            let secs = t.elapsed().as_secs_f64();
            sampler.abort();
            let peak = sampling.load(std::sync::atomic::Ordering::Relaxed);
            let fds = soak::wait_fds(pid, fds_before, Duration::from_secs(30)).await;
            tokio::time::sleep(args.settle).await;
            let after = soak::rss_kib(pid);
            println!(
                "burst: {} tunneled connections through {n} clients in {secs:.1} s ({failed} failed); frps RSS before {:.1} MiB, peak {:.1} MiB, {:.1} s later {:.1} MiB; fds {fds_before} → {fds}",
                args.burst,
                before as f64 / 1024.0,
                peak as f64 / 1024.0,
                args.settle.as_secs_f64(),
                after as f64 / 1024.0,
            );
            drop(clients);
        }
    });
}
