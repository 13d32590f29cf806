//! Quick throughput harness for `dataplane/README.md` (no criterion): one bulk flow of
//! `--mib` MiB (default 1024) over loopback through each engine and path, against direct
//! loopback (client → server, no relay) measured in the same run.
//!
//! ```text
//! cargo run --release -p dataplane --example throughput -- [--mib 1024] [--reps 3] [--only NAME]
//! ```
//!
//! Every mode reports wall-clock Gbit/s and process CPU seconds (user + system, getrusage) per
//! GB moved; the client and the sink run in this process too, so the relay's own cost is the
//! difference to the direct row. Besides the engines, three single-flow io_uring relays
//! compare the ways io_uring can move the bytes, with the same structure for each:
//! readiness (poll) then `splice(2)`, `IORING_OP_SPLICE`, and `IORING_OP_RECV`/`SEND` copies.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use dataplane::sys::{self, uring::Ring};
use dataplane::{Endpoint, Engine, EngineConfig, EngineKind, Pair, Side};

const CHUNK: usize = 1 << 20;

struct Sample {
    secs: f64,
    cpu: f64,
}

fn cpu_now() -> f64 {
    let (u, s) = sys::process_cpu_time().expect("getrusage");
    (u + s).as_secs_f64()
}

fn connected() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// Writes `total` bytes to `to` and closes it.
fn source(mut to: TcpStream, total: u64) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let buf = vec![0x5au8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            to.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        to.shutdown(std::net::Shutdown::Write).unwrap();
    })
}

/// Reads `from` to EOF and returns the byte count.
fn sink(mut from: TcpStream) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            match from.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("sink: {e}"),
            }
        }
    })
}

/// Times one flow: `relay` gets (the relay's end of the client connection, the relay's end of
/// the sink connection) and must move everything and return when done (or return at once and
/// leave it to a background engine).
fn measure(total: u64, relay: impl FnOnce(TcpStream, TcpStream)) -> Sample {
    let (client, relay_a) = connected();
    let (relay_b, server) = connected();
    let cpu0 = cpu_now();
    let t0 = Instant::now();
    let s = sink(server);
    let c = source(client, total);
    relay(relay_a, relay_b);
    c.join().unwrap();
    let got = s.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_now() - cpu0;
    assert_eq!(got, total, "bytes lost");
    Sample { secs, cpu }
}

fn direct(total: u64) -> Sample {
    let (client, server) = connected();
    let cpu0 = cpu_now();
    let t0 = Instant::now();
    let s = sink(server);
    let c = source(client, total);
    c.join().unwrap();
    assert_eq!(s.join().unwrap(), total);
    Sample {
        secs: t0.elapsed().as_secs_f64(),
        cpu: cpu_now() - cpu0,
    }
}

fn engine_flow(total: u64, engine: &Engine, rt: &tokio::runtime::Runtime) -> Sample {
    measure(total, |a, b| {
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let _guard = rt.enter();
        let a = tokio::net::TcpStream::from_std(a).unwrap();
        let b = tokio::net::TcpStream::from_std(b).unwrap();
        engine.spawn(Pair {
            a: Side::plain(Endpoint::Tcp(a)),
            b: Side::plain(Endpoint::Tcp(b)),
            counters: None,
            limiter: None,
        });
    })
}

fn retry_eagain<T>(mut f: impl FnMut() -> io::Result<T>, wait: impl Fn()) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(),
            r => return r,
        }
    }
}

fn complete(ring: &mut Ring, out: &mut Vec<sys::uring::Completion>) -> i32 {
    loop {
        ring.submit_and_wait(1).unwrap();
        ring.reap(out);
        if let Some(c) = out.first() {
            return c.result;
        }
    }
}

fn check(res: i32) -> usize {
    assert!(
        res >= 0,
        "io_uring op failed: {}",
        io::Error::from_raw_os_error(-res)
    );
    res as usize
}

/// io_uring readiness (one-shot poll) then non-blocking `splice(2)` until EAGAIN: the engine's
/// strategy, reduced to one direction.
fn uring_poll_splice(src: TcpStream, dst: TcpStream, pipe_size: usize) {
    src.set_nonblocking(true).unwrap();
    dst.set_nonblocking(true).unwrap();
    let mut ring = Ring::new(8).unwrap();
    let mut out = Vec::new();
    let (r, w) = sys::pipe().unwrap();
    let cap = sys::set_pipe_size(w.as_fd(), pipe_size).unwrap();
    let mut poll = |ring: &mut Ring, fd: BorrowedFd<'_>, ev: i32| {
        ring.push_poll(fd, ev as u32, false, 1).unwrap();
        check(complete(ring, &mut out));
    };
    loop {
        let n = match sys::splice(src.as_fd(), w.as_fd(), cap) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                poll(&mut ring, src.as_fd(), libc::EPOLLIN);
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let mut left = n;
        while left > 0 {
            match sys::splice(r.as_fd(), dst.as_fd(), left) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll(&mut ring, dst.as_fd(), libc::EPOLLOUT)
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    sys::shutdown_write(dst.as_fd()).unwrap();
}

/// `IORING_OP_SPLICE` both hops (blocking sockets: the kernel's io-wq worker waits).
fn uring_op_splice(src: TcpStream, dst: TcpStream, pipe_size: usize) {
    let mut ring = Ring::new(8).unwrap();
    let mut out = Vec::new();
    let (r, w) = sys::pipe().unwrap();
    let cap = sys::set_pipe_size(w.as_fd(), pipe_size).unwrap();
    // The pipe must block too, or io-wq hands back EAGAIN instead of waiting.
    sys::set_nonblocking(r.as_fd(), false).unwrap();
    sys::set_nonblocking(w.as_fd(), false).unwrap();
    loop {
        ring.push_splice(src.as_fd(), w.as_fd(), cap as u32, 1)
            .unwrap();
        let n = check(complete(&mut ring, &mut out));
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            ring.push_splice(r.as_fd(), dst.as_fd(), left as u32, 2)
                .unwrap();
            left -= check(complete(&mut ring, &mut out));
        }
    }
    sys::shutdown_write(dst.as_fd()).unwrap();
}

/// `IORING_OP_RECV` / `IORING_OP_SEND` through a 64 KiB buffer (blocking sockets: io_uring
/// arms its internal poll and completes when data/space is there).
fn uring_recv_send(src: TcpStream, dst: TcpStream) {
    let mut ring = Ring::new(8).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` outlives the request, which completes inside `complete`.
        unsafe { ring.push_recv(src.as_fd(), &mut buf, 1).unwrap() };
        let n = check(complete(&mut ring, &mut out));
        if n == 0 {
            break;
        }
        let mut off = 0;
        while off < n {
            // SAFETY: as above; the request completes before `buf` is touched again.
            unsafe { ring.push_send(dst.as_fd(), &buf[off..n], 2).unwrap() };
            off += check(complete(&mut ring, &mut out));
        }
    }
    sys::shutdown_write(dst.as_fd()).unwrap();
}

/// Same shape with plain blocking `read`/`write` and a 64 KiB buffer, one thread.
fn thread_copy(mut src: TcpStream, mut dst: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = retry_eagain(|| src.read(&mut buf), || {}).unwrap();
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).unwrap();
    }
    dst.shutdown(std::net::Shutdown::Write).unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut mib: u64 = 1024;
    let mut reps = 3;
    let mut only: Option<String> = None;
    let mut pipe_size = dataplane::engine::DEFAULT_PIPE_SIZE;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mib" => mib = args.next().unwrap().parse().unwrap(),
            "--reps" => reps = args.next().unwrap().parse().unwrap(),
            "--only" => only = args.next(),
            "--pipe-size" => pipe_size = args.next().unwrap().parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    let total = mib << 20;
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let engine = |kind, pool| {
        let e = Engine::new(EngineConfig {
            threads: 2,
            engine: kind,
            pipe_pool_size: pool,
            pipe_size,
        });
        assert_eq!(e.kind(), kind, "{kind} unavailable here");
        e
    };
    let epoll = engine(EngineKind::Epoll, 64);
    let epoll_copy = engine(EngineKind::Epoll, 0);
    let uring = engine(EngineKind::IoUring, 64);
    let uring_copy = engine(EngineKind::IoUring, 0);
    let tokio_engine = rt.block_on(async { engine(EngineKind::Tokio, 0) });

    type Mode<'a> = (&'a str, Box<dyn Fn() -> Sample + 'a>);
    let modes: Vec<Mode<'_>> = vec![
        ("direct loopback (no relay)", Box::new(|| direct(total))),
        (
            "engine epoll, splice",
            Box::new(|| engine_flow(total, &epoll, &rt)),
        ),
        (
            "engine epoll, copy",
            Box::new(|| engine_flow(total, &epoll_copy, &rt)),
        ),
        (
            "engine io_uring, splice",
            Box::new(|| engine_flow(total, &uring, &rt)),
        ),
        (
            "engine io_uring, copy",
            Box::new(|| engine_flow(total, &uring_copy, &rt)),
        ),
        (
            "engine tokio (old relay)",
            Box::new(|| engine_flow(total, &tokio_engine, &rt)),
        ),
        (
            "1-flow io_uring poll + splice(2)",
            Box::new(|| measure(total, |a, b| uring_poll_splice(a, b, pipe_size))),
        ),
        (
            "1-flow IORING_OP_SPLICE",
            Box::new(|| measure(total, |a, b| uring_op_splice(a, b, pipe_size))),
        ),
        (
            "1-flow IORING_OP_RECV/SEND",
            Box::new(|| measure(total, uring_recv_send)),
        ),
        (
            "1-flow blocking read/write thread",
            Box::new(|| measure(total, thread_copy)),
        ),
    ];
    println!(
        "{} MiB per flow, {} reps (median), pipe size {} KiB, {} CPUs",
        mib,
        reps,
        pipe_size / 1024,
        thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| mode | Gbit/s | vs direct | CPU s/GB | vs direct |\n|---|---:|---:|---:|---:|");
    let mut base: Option<(f64, f64)> = None;
    for (name, run) in &modes {
        if let Some(o) = &only
            && !name.contains(o.as_str())
            && !name.starts_with("direct")
        {
            continue;
        }
        let mut gbps = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..reps {
            let s = run();
            gbps.push(total as f64 * 8.0 / s.secs / 1e9);
            cpu.push(s.cpu / (total as f64 / 1e9));
            thread::sleep(Duration::from_millis(200));
        }
        let (g, c) = (median(gbps), median(cpu));
        let (bg, bc) = *base.get_or_insert((g, c));
        println!(
            "| {name} | {g:.1} | {:.2} | {c:.3} | {:.2} |",
            g / bg,
            c / bc
        );
    }
}
