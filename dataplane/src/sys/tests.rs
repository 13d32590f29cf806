//! Unit tests of each wrapper against the real kernel.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

use super::*;

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

fn would_block<T: std::fmt::Debug>(r: io::Result<T>) -> bool {
    matches!(r, Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[test]
fn eventfd_counts_and_drains() {
    let fd = eventfd().unwrap();
    assert_eq!(
        eventfd_drain(fd.as_fd()).unwrap(),
        0,
        "fresh eventfd reads as empty"
    );
    eventfd_signal(fd.as_fd()).unwrap();
    eventfd_signal(fd.as_fd()).unwrap();
    assert_eq!(eventfd_drain(fd.as_fd()).unwrap(), 2);
    assert_eq!(eventfd_drain(fd.as_fd()).unwrap(), 0);
}

#[test]
fn epoll_reports_edges_with_tokens() {
    let ep = Epoll::new().unwrap();
    let fd = eventfd().unwrap();
    let et = (libc::EPOLLIN | libc::EPOLLET) as u32;
    ep.add(fd.as_fd(), et, 42).unwrap();
    let mut out = Vec::with_capacity(8);
    ep.wait(&mut out, Some(Duration::ZERO)).unwrap();
    assert!(out.is_empty(), "nothing ready yet: {out:?}");
    eventfd_signal(fd.as_fd()).unwrap();
    ep.wait(&mut out, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].token, 42);
    assert!(out[0].events & libc::EPOLLIN as u32 != 0);
    // Edge-triggered: no new event until a new edge.
    ep.wait(&mut out, Some(Duration::ZERO)).unwrap();
    assert!(out.is_empty());
    ep.delete(fd.as_fd()).unwrap();
    eventfd_signal(fd.as_fd()).unwrap();
    ep.wait(&mut out, Some(Duration::ZERO)).unwrap();
    assert!(out.is_empty(), "deleted fd still reported");
    assert!(ep.add(fd.as_fd(), et, 1).is_ok());
    assert!(ep.add(fd.as_fd(), et, 1).is_err(), "double add is EEXIST");
}

#[test]
fn pipe_is_nonblocking_and_resizable() {
    let (r, w) = pipe().unwrap();
    let (r2, w2) = pipe().unwrap();
    assert!(
        would_block(splice(r.as_fd(), w2.as_fd(), 8)),
        "an empty non-blocking pipe would block"
    );
    let got = set_pipe_size(w.as_fd(), 256 * 1024).unwrap();
    assert!(got >= 256 * 1024, "{got}");
    assert_eq!(pipe_size(r.as_fd()).unwrap(), got);
    drop((r2, w));
}

#[test]
fn set_pipe_size_fails_below_the_pipes_contents() {
    let (a, b) = tcp_pair();
    let (r, w) = pipe().unwrap();
    set_pipe_size(w.as_fd(), 64 * 1024).unwrap();
    (&a).write_all(&[7u8; 32 * 1024]).unwrap();
    let mut moved = 0;
    while moved < 32 * 1024 {
        match splice(b.as_fd(), w.as_fd(), 64 * 1024) {
            Ok(n) => moved += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    let err = set_pipe_size(w.as_fd(), 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
    drop(r);
}

#[test]
fn splice_moves_socket_to_pipe_to_socket_and_reports_eof() {
    let (a_client, a_relay) = tcp_pair();
    let (b_relay, mut b_client) = tcp_pair();
    a_relay.set_nonblocking(true).unwrap();
    b_relay.set_nonblocking(true).unwrap();
    let (r, w) = pipe().unwrap();
    assert!(
        would_block(splice(a_relay.as_fd(), w.as_fd(), 4096)),
        "no data yet"
    );
    (&a_client).write_all(b"spliced bytes").unwrap();
    let n = loop {
        match splice(a_relay.as_fd(), w.as_fd(), 4096) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(n, 13);
    assert_eq!(splice(r.as_fd(), b_relay.as_fd(), n).unwrap(), 13);
    let mut got = [0u8; 13];
    b_client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"spliced bytes");
    a_client.shutdown(std::net::Shutdown::Write).unwrap();
    let eof = loop {
        match splice(a_relay.as_fd(), w.as_fd(), 4096) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(eof, 0, "EOF");
}

#[test]
fn recv_send_shutdown() {
    let (mut client, relay) = tcp_pair();
    relay.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert!(would_block(recv(relay.as_fd(), &mut buf)));
    assert_eq!(send(relay.as_fd(), b"hi").unwrap(), 2);
    let mut got = [0u8; 2];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hi");
    client.write_all(b"yo").unwrap();
    let n = loop {
        match recv(relay.as_fd(), &mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(&buf[..n], b"yo");
    // Half-close: the client reads EOF and can still send.
    shutdown_write(relay.as_fd()).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    client.write_all(b"still").unwrap();
}

#[test]
fn send_to_a_reset_peer_fails_without_sigpipe() {
    let (client, relay) = tcp_pair();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    std::thread::sleep(Duration::from_millis(50));
    // The first send may still be accepted; the reset surfaces on a following one.
    let mut failed = false;
    for _ in 0..100 {
        if send(relay.as_fd(), &[0; 1024]).is_err() {
            failed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(failed, "send to a reset peer never failed");
}

#[test]
fn nonblocking_flag_toggles() {
    let (_c, s) = tcp_pair();
    set_nonblocking(s.as_fd(), true).unwrap();
    let mut buf = [0u8; 1];
    assert!(would_block(recv(s.as_fd(), &mut buf)));
    set_nonblocking(s.as_fd(), false).unwrap();
    set_nonblocking(s.as_fd(), true).unwrap();
    assert!(would_block(recv(s.as_fd(), &mut buf)));
}

#[test]
fn sigpipe_can_be_blocked_on_a_thread() {
    std::thread::spawn(|| {
        block_sigpipe().unwrap();
        // SAFETY: reads the calling thread's mask into a live local.
        let blocked = unsafe {
            let mut cur: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
            libc::sigismember(&cur, libc::SIGPIPE)
        };
        assert_eq!(blocked, 1);
    })
    .join()
    .unwrap();
}

#[test]
fn process_stats_are_plausible() {
    let (u0, s0) = process_cpu_time().unwrap();
    let mut x = 0u64;
    for i in 0..20_000_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    std::hint::black_box(x);
    let (u1, s1) = process_cpu_time().unwrap();
    assert!(u1 + s1 > u0 + s0, "CPU time did not advance");
    let rss = rss_bytes().unwrap();
    assert!(rss > 1 << 20 && rss < 1 << 40, "{rss}");
}

#[test]
fn sysctl_parsing() {
    assert_eq!(parse_sysctl("0\n"), Some(0));
    assert_eq!(parse_sysctl("2"), Some(2));
    assert_eq!(parse_sysctl("x"), None);
    // On this machine the file either exists with a number or does not exist.
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        assert_eq!(io_uring_disabled_sysctl(), parse_sysctl(&text));
    } else {
        assert_eq!(io_uring_disabled_sysctl(), None);
    }
}

mod ring {
    use super::*;
    use crate::sys::uring::{Completion, Ring, SetupLevel};

    fn ring_or_skip() -> Option<Ring> {
        match Ring::new(16) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("SKIPPED: io_uring_setup failed here ({e}); ring wrapper not tested");
                None
            }
        }
    }

    fn wait_for(ring: &mut Ring, user_data: u64) -> Completion {
        let mut out = Vec::new();
        for _ in 0..1000 {
            ring.submit_and_wait(1).unwrap();
            ring.reap(&mut out);
            if let Some(c) = out.iter().find(|c| c.user_data == user_data) {
                return *c;
            }
        }
        panic!("no completion for {user_data}");
    }

    #[test]
    fn wait_with_a_timeout_returns_after_it_without_completions() {
        let Some(mut ring) = ring_or_skip() else {
            return;
        };
        if !ring.supports_wait_timeout() {
            eprintln!("SKIPPED: no IORING_FEAT_EXT_ARG (Linux < 5.11)");
            return;
        }
        let t = std::time::Instant::now();
        ring.submit_and_wait_timeout(1, Duration::from_millis(30))
            .unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(25), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let mut out = Vec::new();
        ring.reap(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    fn kernel_version() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = v.next().unwrap().parse().unwrap();
        let minor: u32 = v.next().unwrap().parse().unwrap();
        (major, minor)
    }

    #[test]
    fn setup_uses_the_cheapest_task_work_mode_the_kernel_has() {
        let Some(ring) = ring_or_skip() else { return };
        let expected = match kernel_version() {
            v if v >= (6, 1) => SetupLevel::Deferred,
            v if v >= (5, 19) => SetupLevel::Cooperative,
            _ => SetupLevel::Plain,
        };
        assert_eq!(ring.level(), expected);
    }

    /// With deferred task work, a completion becomes visible only through an enter that asks
    /// for events; the non-blocking `submit_and_wait(0)` the cores use between turns must still
    /// bring it in (the kernel raises `IORING_SQ_TASKRUN`, the wrapper then asks).
    #[test]
    fn non_blocking_reap_sees_completions_on_every_setup_level() {
        for level in [
            SetupLevel::Deferred,
            SetupLevel::Cooperative,
            SetupLevel::Plain,
        ] {
            let mut ring = match Ring::with_level(16, level) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("SKIPPED level {level:?}: {e}");
                    continue;
                }
            };
            let fd = eventfd().unwrap();
            ring.push_poll(fd.as_fd(), libc::EPOLLIN as u32, false, 5)
                .unwrap();
            ring.submit_and_wait(0).unwrap();
            eventfd_signal(fd.as_fd()).unwrap();
            let mut out = Vec::new();
            let mut seen = None;
            for _ in 0..10_000 {
                ring.submit_and_wait(0).unwrap();
                ring.reap(&mut out);
                seen = out.iter().find(|c| c.user_data == 5).copied();
                if seen.is_some() {
                    break;
                }
                std::thread::yield_now();
            }
            let c = seen.unwrap_or_else(|| panic!("{level:?}: completion never reaped"));
            assert!(
                c.result > 0 && c.result as u32 & libc::EPOLLIN as u32 != 0,
                "{c:?}"
            );
        }
    }

    #[test]
    fn probe_knows_poll() {
        let Some(ring) = ring_or_skip() else { return };
        assert!(ring.supports_engine_ops().unwrap());
    }

    #[test]
    fn multishot_probe_leaves_the_ring_clean() {
        let Some(mut ring) = ring_or_skip() else {
            return;
        };
        // Multishot polls arrived in Linux 5.13.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = v.next().unwrap().parse().unwrap();
        let minor: u32 = v.next().unwrap().parse().unwrap();
        let expected = (major, minor) >= (5, 13);
        assert_eq!(ring.supports_multishot_poll().unwrap(), expected);
        assert_eq!(
            ring.supports_multishot_poll().unwrap(),
            expected,
            "repeatable"
        );
        let mut out = Vec::new();
        ring.submit_and_wait(0).unwrap();
        ring.reap(&mut out);
        assert!(out.is_empty(), "stray completions: {out:?}");
    }

    #[test]
    fn multishot_poll_fires_per_edge_and_is_removable() {
        let Some(mut ring) = ring_or_skip() else {
            return;
        };
        let fd = eventfd().unwrap();
        let ev = (libc::EPOLLIN | libc::EPOLLET) as u32;
        ring.push_poll(fd.as_fd(), ev, true, 7).unwrap();
        eventfd_signal(fd.as_fd()).unwrap();
        let c = wait_for(&mut ring, 7);
        assert!(c.result > 0 && c.result as u32 & libc::EPOLLIN as u32 != 0);
        assert!(c.more, "multishot stays armed");
        eventfd_drain(fd.as_fd()).unwrap();
        eventfd_signal(fd.as_fd()).unwrap();
        let c = wait_for(&mut ring, 7);
        assert!(c.more);
        ring.push_poll_remove(7, 8).unwrap();
        let mut out = Vec::new();
        let mut removed = false;
        let mut cancelled = false;
        for _ in 0..100 {
            ring.submit_and_wait(1).unwrap();
            ring.reap(&mut out);
            for c in &out {
                if c.user_data == 8 {
                    assert_eq!(c.result, 0);
                    removed = true;
                }
                if c.user_data == 7 && !c.more {
                    assert_eq!(c.result, -libc::ECANCELED);
                    cancelled = true;
                }
            }
            if removed && cancelled {
                break;
            }
        }
        assert!(removed && cancelled);
    }

    #[test]
    fn op_splice_and_recv_send() {
        let Some(mut ring) = ring_or_skip() else {
            return;
        };
        let (mut a_client, a_relay) = tcp_pair();
        let (b_relay, mut b_client) = tcp_pair();
        let (r, w) = pipe().unwrap();
        a_client.write_all(b"through the ring").unwrap();
        ring.push_splice(a_relay.as_fd(), w.as_fd(), 4096, 1)
            .unwrap();
        let c = wait_for(&mut ring, 1);
        assert_eq!(c.result, 16);
        ring.push_splice(r.as_fd(), b_relay.as_fd(), 16, 2).unwrap();
        assert_eq!(wait_for(&mut ring, 2).result, 16);
        let mut got = [0u8; 16];
        b_client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"through the ring");

        b_client.write_all(b"copied").unwrap();
        let mut buf = vec![0u8; 64];
        // SAFETY: `buf` lives until the completion is reaped by `wait_for` below.
        unsafe { ring.push_recv(b_relay.as_fd(), &mut buf, 3).unwrap() };
        let n = wait_for(&mut ring, 3).result;
        assert_eq!(n, 6);
        // SAFETY: `buf` lives until the completion is reaped by `wait_for` below.
        unsafe { ring.push_send(a_relay.as_fd(), &buf[..6], 4).unwrap() };
        assert_eq!(wait_for(&mut ring, 4).result, 6);
        let mut got = [0u8; 6];
        a_client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"copied");
    }
}
