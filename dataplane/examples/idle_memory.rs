//! Measures the memory an idle relayed pair costs, for `dataplane/README.md`.
//!
//! ```text
//! cargo run --release -p dataplane --example idle_memory -- [--pairs 10000] [--engine epoll]
//! ```
//!
//! Opens `--pairs` pairs of loopback connections (4 sockets per pair: two client ends, the
//! two ends the relay owns), sends a few bytes through each (so every pair has been active
//! once), lets them go idle and reports the process RSS growth per pair: once for handing the
//! pairs to the engine (the engine's own cost), once for the whole setup (sockets' user-space
//! objects included). Kernel socket memory is not in RSS and is not counted.

use std::time::Duration;

use dataplane::sys;
use dataplane::{Endpoint, Engine, EngineConfig, EngineKind, Pair, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn rss() -> f64 {
    sys::rss_bytes().expect("rss") as f64
}

async fn pair_of(l: &TcpListener) -> (TcpStream, TcpStream) {
    let addr = l.local_addr().unwrap();
    let (c, a) = tokio::join!(TcpStream::connect(addr), l.accept());
    (c.unwrap(), a.unwrap().0)
}

fn main() {
    let mut pairs = 10_000usize;
    let mut kind = EngineKind::Auto;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pairs" => pairs = args.next().unwrap().parse().unwrap(),
            "--engine" => {
                kind = match args.next().unwrap().as_str() {
                    "epoll" => EngineKind::Epoll,
                    "io_uring" => EngineKind::IoUring,
                    "tokio" => EngineKind::Tokio,
                    _ => EngineKind::Auto,
                }
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let engine = Engine::new(EngineConfig {
            threads: 2,
            engine: kind,
            ..EngineConfig::default()
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rss0 = rss();
        let mut clients = Vec::with_capacity(pairs);
        let mut relay_ends = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            let (ca, ra) = pair_of(&l).await;
            let (cb, rb) = pair_of(&l).await;
            clients.push((ca, cb));
            relay_ends.push((ra, rb));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss1 = rss();
        for (ra, rb) in relay_ends {
            engine.spawn(Pair {
                a: Side::plain(Endpoint::Tcp(ra)),
                b: Side::plain(Endpoint::Tcp(rb)),
                counters: None,
                limiter: None,
            });
        }
        // One round trip through every pair, then silence.
        for (ca, cb) in &mut clients {
            ca.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            cb.read_exact(&mut got).await.unwrap();
            cb.write_all(b"pong").await.unwrap();
            ca.read_exact(&mut got).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss2 = rss();
        let s = engine.stats();
        println!(
            "engine {}: {pairs} idle pairs ({} on cores, {} pipes in use)",
            engine.kind(),
            s.pairs_live,
            s.pipes_in_use
        );
        println!(
            "RSS: start {:.1} MiB, sockets set up {:.1} MiB, pairs handed over and idle {:.1} MiB",
            rss0 / 1048576.0,
            rss1 / 1048576.0,
            rss2 / 1048576.0
        );
        println!(
            "per idle pair: engine {:.0} B, overall (incl. the 4 sockets' user-space objects) {:.0} B",
            (rss2 - rss1) / pairs as f64,
            (rss2 - rss0) / pairs as f64
        );
        drop(clients);
    });
}
