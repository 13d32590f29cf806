//! The behavioural suite, run against every engine through `Engine::spawn` over real
//! 127.0.0.1 sockets, plus the engine-choice rules.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::*;
use crate::relay::{Counters, Pair};
use crate::testutil::*;

/// An engine of `kind` with two cores, or `None` (with a printed reason) when this machine
/// cannot run that kind.
fn engine_with(kind: EngineKind, tune: impl FnOnce(&mut EngineConfig)) -> Option<Engine> {
    let mut cfg = EngineConfig {
        threads: 2,
        engine: kind,
        ..EngineConfig::default()
    };
    tune(&mut cfg);
    let engine = Engine::new(cfg);
    if engine.kind() != kind {
        eprintln!(
            "SKIPPED: the {kind} engine is not available here (io_uring_setup failed or is \
             disabled; {} runs instead); this test did not run for {kind}",
            engine.kind()
        );
        return None;
    }
    Some(engine)
}

fn engine(kind: EngineKind) -> Option<Engine> {
    engine_with(kind, |_| {})
}

fn on_cores(kind: EngineKind) -> bool {
    kind != EngineKind::Tokio
}

/// Waits until the engine's core pairs are all gone (the relay closed them).
async fn wait_idle(engine: &Engine) -> EngineStats {
    timeout(HANG_GUARD, async {
        loop {
            let s = engine.stats();
            if s.pairs_live == 0 && s.pipes_in_use == 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("pairs never finished")
}

/// Sends `to_b` from a's client and `to_a` from b's client, half-closes both and returns what
/// each client received: (at b, at a).
async fn exchange(ca: TcpStream, cb: TcpStream, to_b: &[u8], to_a: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut ca_r, mut ca_w) = ca.into_split();
    let (mut cb_r, mut cb_w) = cb.into_split();
    let (_, _, at_b, at_a) = tokio::join!(
        async {
            ca_w.write_all(to_b).await.unwrap();
            ca_w.shutdown().await.unwrap();
        },
        async {
            cb_w.write_all(to_a).await.unwrap();
            cb_w.shutdown().await.unwrap();
        },
        read_all(&mut cb_r),
        read_all(&mut ca_r),
    );
    (at_b, at_a)
}

async fn bytes_both_ways_with_prefixes(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (ca, ra) = tcp_pair().await;
    let (cb, rb) = tcp_pair().await;
    let mut a = tcp_side(ra);
    a.prefix = Bytes::from_static(b"prefix-a|");
    let mut b = tcp_side(rb);
    b.prefix = Bytes::from_static(b"prefix-b|");
    let counters = Arc::new(Counters::default());
    engine.spawn(Pair {
        a,
        b,
        counters: Some(counters.clone()),
        limiter: None,
    });
    let (at_b, at_a) = exchange(ca, cb, b"hello from a", b"hello from b").await;
    assert_eq!(at_b, b"prefix-a|hello from a");
    assert_eq!(at_a, b"prefix-b|hello from b");
    assert_eq!(counters.a_to_b.load(Ordering::Relaxed), 21);
    assert_eq!(counters.b_to_a.load(Ordering::Relaxed), 21);
    if on_cores(kind) {
        let s = wait_idle(&engine).await;
        assert_eq!((s.pairs_started, s.pairs_failed), (1, 0));
    }
}

async fn conns_counts_live_pairs(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let counters = Arc::new(Counters::default());
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (ca, ra) = tcp_pair().await;
        let (cb, rb) = tcp_pair().await;
        engine.spawn(Pair {
            a: tcp_side(ra),
            b: tcp_side(rb),
            counters: Some(counters.clone()),
            limiter: None,
        });
        clients.push((ca, cb));
    }
    let conns = || counters.conns.load(Ordering::Relaxed);
    timeout(HANG_GUARD, async {
        while conns() != 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both pairs counted");
    for (ca, cb) in clients {
        exchange(ca, cb, b"x", b"y").await;
    }
    timeout(HANG_GUARD, async {
        while conns() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("finished pairs uncounted");
}

async fn half_close_keeps_the_reply_flowing(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    engine.spawn(tcp_pair_of(ra, rb));
    let request = pattern(300_000, 1);
    ca.write_all(&request).await.unwrap();
    ca.shutdown().await.unwrap();
    // b sees the whole request, then EOF: the half-close went through...
    assert_eq!(read_all(&mut cb).await, request);
    // ...and only then answers, at length, over the still-open reverse direction.
    let writer = tokio::spawn(async move {
        cb.write_all(&pattern(2 << 20, 2)).await.unwrap();
        cb.shutdown().await.unwrap();
        cb
    });
    assert!(
        read_all(&mut ca).await == pattern(2 << 20, 2),
        "reply corrupted"
    );
    drop(writer.await.unwrap());
    if on_cores(kind) {
        assert_eq!(wait_idle(&engine).await.pairs_failed, 0);
    }
}

async fn reset_from_one_side_closes_the_other(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    engine.spawn(tcp_pair_of(ra, rb));
    // Make sure the pair is running before the reset.
    cb.write_all(b"x").await.unwrap();
    let mut ca = ca;
    let mut one = [0u8; 1];
    ca.read_exact(&mut one).await.unwrap();
    ca.set_zero_linger().unwrap();
    drop(ca);
    // b is closed (EOF or reset), not half-closed: nothing arrives and writes start failing.
    assert_eq!(read_all(&mut cb).await, b"");
    timeout(HANG_GUARD, async {
        while cb.write_all(&[0; 1024]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("b's socket is still open");
    if on_cores(kind) {
        assert_eq!(wait_idle(&engine).await.pairs_failed, 1);
    }
}

/// Two pairs chained through one TCP connection, as frps and frpc relay a tunnel without
/// tcpMux: the user leaves in the middle of a bulk download, and the service that streams it
/// must have its writes fail (the close travels through both pairs).
async fn abandoned_download_through_two_pairs_closes_the_service(kind: EngineKind) {
    let Some(frps) = engine(kind) else { return };
    let Some(frpc) = engine(kind) else { return };
    for round in 0..5 {
        let (mut user, user_srv) = tcp_pair().await;
        let (work_frps, work_frpc) = tcp_pair().await;
        let (service, local) = tcp_pair().await;
        frps.spawn(tcp_pair_of(user_srv, work_frps));
        frpc.spawn(tcp_pair_of(work_frpc, local));
        let streamer = tokio::spawn(async move {
            let mut service = service;
            let chunk = vec![7u8; 64 * 1024];
            while service.write_all(&chunk).await.is_ok() {}
        });
        let mut buf = vec![0u8; 64 * 1024];
        user.read_exact(&mut buf).await.unwrap();
        drop(user);
        timeout(HANG_GUARD, streamer)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the service still streams into the tunnel"))
            .unwrap();
    }
}

async fn transform_error_closes_both_ends(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    let mut a = tcp_side(ra);
    a.inbound.push(Box::new(Poison));
    engine.spawn(Pair {
        a,
        b: tcp_side(rb),
        counters: None,
        limiter: None,
    });
    ca.write_all(b"fine").await.unwrap();
    let mut got = [0u8; 4];
    cb.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"fine");
    ca.write_all(&[0xee, 1, 2, 3]).await.unwrap();
    assert_eq!(read_all(&mut cb).await, b"", "b closed without more data");
    assert_eq!(read_all(&mut ca).await, b"", "a closed too");
    if on_cores(kind) {
        assert_eq!(wait_idle(&engine).await.pairs_failed, 1);
    }
}

async fn transforms_run_on_the_copy_path(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (ca, ra) = tcp_pair().await;
    let (cb, rb) = tcp_pair().await;
    let mut a = tcp_side(ra);
    a.prefix = Bytes::from_static(&[1, 2, 3]);
    a.inbound = vec![Box::new(Xor(0x5a)), Box::new(Add(1))];
    a.outbound = vec![Box::new(Xor(0x44))];
    let mut b = tcp_side(rb);
    b.inbound = vec![Box::new(Add(7)), Box::new(Xor(0x33))];
    b.outbound = vec![Box::new(Add(2))];
    engine.spawn(Pair {
        a,
        b,
        counters: None,
        limiter: None,
    });
    let sent_a = pattern(1 << 20, 3);
    let sent_b = pattern(1 << 20, 4);
    let (at_b, at_a) = exchange(ca, cb, &sent_a, &sent_b).await;
    let expect_b: Vec<u8> = [1, 2, 3]
        .iter()
        .chain(&sent_a)
        .map(|x| (x ^ 0x5a).wrapping_add(1).wrapping_add(2))
        .collect();
    let expect_a: Vec<u8> = sent_b
        .iter()
        .map(|y| (y.wrapping_add(7) ^ 0x33) ^ 0x44)
        .collect();
    assert!(at_b == expect_b, "a→b transformed wrong");
    assert!(at_a == expect_a, "b→a transformed wrong");
    if on_cores(kind) {
        let s = wait_idle(&engine).await;
        assert_eq!(s.splice_bytes, 0, "a transformed pair must not splice");
        assert_eq!(s.copy_bytes, 2 * (1 << 20) + 3);
        assert_eq!(s.pipes_created, 0);
    }
}

async fn plain_pairs_splice(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (ca, ra) = tcp_pair().await;
    let (cb, rb) = tcp_pair().await;
    let mut a = tcp_side(ra);
    a.prefix = Bytes::from_static(b"hdr");
    engine.spawn(Pair {
        a,
        b: tcp_side(rb),
        counters: None,
        limiter: None,
    });
    let (at_b, at_a) = exchange(ca, cb, &pattern(4 << 20, 5), &pattern(4 << 20, 6)).await;
    assert!(at_b[..3] == *b"hdr" && at_b[3..] == pattern(4 << 20, 5));
    assert!(at_a == pattern(4 << 20, 6));
    if on_cores(kind) {
        let s = wait_idle(&engine).await;
        // Each burst starts with one copy read (64 KiB at most), the bulk is spliced.
        assert_eq!(s.splice_bytes + s.copy_bytes, (8 << 20) + 3, "{s:?}");
        assert!(s.splice_bytes >= 4 << 20, "bulk must splice: {s:?}");
        assert!(s.pipes_created >= 1);
        assert_eq!(s.pipes_in_use, 0);
    }
}

/// Request/response traffic: every small message is copied (recv + send), no pipe is ever
/// taken, and the replies keep flowing although a short read ends each burst without an
/// EAGAIN read.
async fn small_messages_are_copied_without_pipes(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    engine.spawn(tcp_pair_of(ra, rb));
    let mut buf = [0u8; 64];
    for i in 0..200u32 {
        let req = format!("request {i}");
        ca.write_all(req.as_bytes()).await.unwrap();
        let n = timeout(HANG_GUARD, cb.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], req.as_bytes());
        let resp = format!("response {i}");
        cb.write_all(resp.as_bytes()).await.unwrap();
        let n = timeout(HANG_GUARD, ca.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], resp.as_bytes());
    }
    drop((ca, cb));
    if on_cores(kind) {
        let s = wait_idle(&engine).await;
        assert_eq!(s.splice_bytes, 0, "{s:?}");
        assert_eq!(s.pipes_created, 0, "{s:?}");
        assert!(s.copy_bytes > 0, "{s:?}");
    }
}

/// Data and FIN already queued together when the pair starts: the short read of the data must
/// not hide the EOF behind it (the hang-up edge was already reported).
async fn data_and_fin_arriving_together(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    for round in 0..20u64 {
        let (mut ca, ra) = tcp_pair().await;
        let (cb, rb) = tcp_pair().await;
        let msg = pattern(100 + round as usize, round);
        ca.write_all(&msg).await.unwrap();
        ca.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        engine.spawn(tcp_pair_of(ra, rb));
        let (mut cb_r, cb_w) = cb.into_split();
        let got = timeout(HANG_GUARD, read_all(&mut cb_r))
            .await
            .expect("EOF must follow the data");
        assert_eq!(got, msg);
        drop((ca, cb_w));
    }
}

async fn pool_exhaustion_falls_back_to_copying(kind: EngineKind) {
    let Some(engine) = engine_with(kind, |c| {
        c.threads = 1;
        c.pipe_pool_size = 1;
    }) else {
        return;
    };
    const PAIRS: u64 = 6;
    const SIZE: usize = 2 << 20;
    // Pair 0's reader stalls, so its a→b flow keeps the core's only pipe full.
    let (mut stalled_a, ra) = tcp_pair().await;
    let (mut stalled_b, rb) = tcp_pair().await;
    engine.spawn(tcp_pair_of(ra, rb));
    let big = pattern(16 << 20, 99);
    let writer = tokio::spawn(async move {
        stalled_a.write_all(&big).await.unwrap();
        stalled_a.shutdown().await.unwrap();
        stalled_a
    });
    if on_cores(kind) {
        timeout(HANG_GUARD, async {
            while engine.stats().pipes_in_use == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the stalled flow never took the pipe");
        // Let the stalled path fill up completely (the pipe then stays full).
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every other flow finds the pool empty and copies, and still delivers every byte.
    let mut tasks = Vec::new();
    for i in 0..PAIRS {
        let (ca, ra) = tcp_pair().await;
        let (cb, rb) = tcp_pair().await;
        engine.spawn(tcp_pair_of(ra, rb));
        tasks.push(tokio::spawn(async move {
            let (at_b, at_a) =
                exchange(ca, cb, &pattern(SIZE, 10 + i), &pattern(SIZE, 100 + i)).await;
            assert!(at_b == pattern(SIZE, 10 + i), "pair {i} a→b corrupted");
            assert!(at_a == pattern(SIZE, 100 + i), "pair {i} b→a corrupted");
        }));
    }
    for t in tasks {
        timeout(HANG_GUARD * 2, t).await.expect("hang").unwrap();
    }
    if on_cores(kind) {
        let s = engine.stats();
        assert_eq!(s.pipes_created, 1, "{s:?}");
        assert!(s.pipe_pool_misses >= 2 * PAIRS, "{s:?}");
        assert!(s.copy_bytes >= 2 * PAIRS * SIZE as u64, "{s:?}");
    }
    // The stalled flow resumes and is intact.
    let (mut sb_r, mut sb_w) = stalled_b.split();
    let (got, _) = tokio::join!(read_all(&mut sb_r), sb_w.shutdown());
    assert!(got == pattern(16 << 20, 99), "stalled flow corrupted");
    drop(writer.await.unwrap());
    if on_cores(kind) {
        let s = wait_idle(&engine).await;
        assert_eq!(s.pairs_failed, 0, "{s:?}");
    }
}

async fn no_pool_means_no_pipes(kind: EngineKind) {
    let Some(engine) = engine_with(kind, |c| c.pipe_pool_size = 0) else {
        return;
    };
    let (ca, ra) = tcp_pair().await;
    let (cb, rb) = tcp_pair().await;
    engine.spawn(tcp_pair_of(ra, rb));
    let (at_b, at_a) = exchange(ca, cb, &pattern(1 << 20, 7), b"ok").await;
    assert!(at_b == pattern(1 << 20, 7));
    assert_eq!(at_a, b"ok");
    if on_cores(kind) {
        let s = wait_idle(&engine).await;
        assert_eq!((s.splice_bytes, s.pipes_created), (0, 0));
        assert_eq!(s.copy_bytes, (1 << 20) + 2);
    }
}

async fn hundred_pairs_of_one_mib_each_way(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    const PAIRS: u64 = 100;
    const SIZE: usize = 1 << 20;
    let mut clients = Vec::new();
    for i in 0..PAIRS {
        let (ca, ra) = tcp_pair().await;
        let (cb, rb) = tcp_pair().await;
        let counters = Arc::new(Counters::default());
        engine.spawn(Pair {
            a: tcp_side(ra),
            b: tcp_side(rb),
            counters: Some(counters.clone()),
            limiter: None,
        });
        clients.push(tokio::spawn(async move {
            let (at_b, at_a) =
                exchange(ca, cb, &pattern(SIZE, 2 * i), &pattern(SIZE, 2 * i + 1)).await;
            assert!(at_b == pattern(SIZE, 2 * i), "pair {i}: a→b corrupted");
            assert!(at_a == pattern(SIZE, 2 * i + 1), "pair {i}: b→a corrupted");
            assert_eq!(counters.a_to_b.load(Ordering::Relaxed), SIZE as u64);
            assert_eq!(counters.b_to_a.load(Ordering::Relaxed), SIZE as u64);
        }));
    }
    for c in clients {
        timeout(Duration::from_secs(120), c)
            .await
            .expect("hang")
            .unwrap();
    }
    if on_cores(kind) {
        let s = wait_idle(&engine).await;
        assert_eq!(s.pairs_started, PAIRS);
        assert_eq!(s.pairs_failed, 0);
        assert_eq!(s.splice_bytes + s.copy_bytes, 2 * PAIRS * SIZE as u64);
    }
}

async fn stalled_reader_blocks_the_writer(kind: EngineKind) {
    let Some(engine) = engine_with(kind, |c| c.pipe_size = 64 * 1024) else {
        return;
    };
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    for s in [&ca, &ra, &rb, &cb] {
        let sock = socket2::SockRef::from(s);
        sock.set_send_buffer_size(32 * 1024).unwrap();
        sock.set_recv_buffer_size(32 * 1024).unwrap();
    }
    engine.spawn(tcp_pair_of(ra, rb));
    let chunk = pattern(64 * 1024, 8);
    let mut written = 0usize;
    let mut sent = Vec::new();
    let mut stalled = false;
    while written < 256 << 20 {
        match timeout(Duration::from_millis(500), ca.write(&chunk[..])).await {
            Ok(n) => {
                let n = n.unwrap();
                sent.extend_from_slice(&chunk[..n]);
                written += n;
            }
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    assert!(
        stalled,
        "the writer never blocked: the relay buffers without bound"
    );
    // Four small socket buffers (the kernel doubles and autotunes them) plus one chunk.
    assert!(
        written < 4 << 20,
        "{written} bytes accepted before blocking"
    );
    ca.shutdown().await.unwrap();
    let got = read_all(&mut cb).await;
    assert_eq!(got.len(), written);
    assert!(got == sent, "bytes lost or reordered");
}

async fn counters_count_plaintext_after_inbound(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (ca, ra) = tcp_pair().await;
    let (cb, rb) = tcp_pair().await;
    let mut a = tcp_side(ra);
    a.inbound.push(Box::new(KeepEven::default()));
    let mut b = tcp_side(rb);
    b.outbound.push(Box::new(Xor(0xff)));
    let counters = Arc::new(Counters::default());
    engine.spawn(Pair {
        a,
        b,
        counters: Some(counters.clone()),
        limiter: None,
    });
    let sent = pattern(250_001, 5);
    let (at_b, at_a) = exchange(ca, cb, &sent, b"ack").await;
    let expect: Vec<u8> = sent.iter().step_by(2).map(|b| b ^ 0xff).collect();
    assert_eq!(at_b, expect);
    assert_eq!(at_a, b"ack");
    if on_cores(kind) {
        wait_idle(&engine).await;
    }
    assert_eq!(counters.a_to_b.load(Ordering::Relaxed), 125_001);
    assert_eq!(counters.b_to_a.load(Ordering::Relaxed), 3);
}

async fn idle_pairs_hold_no_pipe(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let mut ends = Vec::new();
    for i in 0..20u64 {
        let (mut ca, ra) = tcp_pair().await;
        let (mut cb, rb) = tcp_pair().await;
        engine.spawn(tcp_pair_of(ra, rb));
        // A burst, then silence.
        let data = pattern(512 * 1024, i);
        let (_, got) = tokio::join!(ca.write_all(&data), async {
            let mut got = vec![0u8; data.len()];
            cb.read_exact(&mut got).await.unwrap();
            got
        });
        assert!(got == data);
        ends.push((ca, cb));
    }
    if on_cores(kind) {
        // The core gives the pipe back right after the last splice; allow it to get there.
        let mut s = engine.stats();
        for _ in 0..200 {
            if s.pipes_in_use == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            s = engine.stats();
        }
        assert_eq!(s.pairs_live, 20);
        assert!(
            s.pipes_created >= 1 && s.splice_bytes > 0,
            "bulk must splice: {s:?}"
        );
        assert_eq!(s.pipes_in_use, 0, "an idle pair kept its pipe: {s:?}");
    }
    drop(ends);
    if on_cores(kind) {
        wait_idle(&engine).await;
    }
}

async fn stream_sides_stay_on_tokio(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (client, relay_a) = tokio::io::duplex(8 * 1024);
    let (mut cb, rb) = tcp_pair().await;
    engine.spawn(Pair {
        a: stream_side(relay_a),
        b: tcp_side(rb),
        counters: None,
        limiter: None,
    });
    let (mut client_r, mut client_w) = tokio::io::split(client);
    client_w.write_all(b"ping").await.unwrap();
    client_w.shutdown().await.unwrap();
    assert_eq!(read_all(&mut cb).await, b"ping");
    cb.write_all(b"pong").await.unwrap();
    cb.shutdown().await.unwrap();
    assert_eq!(read_all(&mut client_r).await, b"pong");
    let s = engine.stats();
    assert_eq!((s.tokio_pairs, s.pairs_started), (1, 0));
}

async fn initial_write_goes_first_even_if_nothing_is_relayed(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    let mut b = tcp_side(rb);
    b.initial_write = Bytes::from_static(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n");
    // Transforms on a's side must not touch the initial bytes written to b.
    let mut a = tcp_side(ra);
    a.inbound.push(Box::new(Xor(0x55)));
    engine.spawn(Pair {
        a,
        b,
        counters: None,
        limiter: None,
    });
    // A server-speaks-first service gets the header before the user sent anything.
    let mut head = [0u8; 32];
    timeout(HANG_GUARD, cb.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n");
    let masked: Vec<u8> = b"data".iter().map(|b| b ^ 0x55).collect();
    let (at_b, at_a) = exchange(ca, cb, &masked, b"reply").await;
    assert_eq!(at_b, b"data");
    assert_eq!(at_a, b"reply");
}

/// Moves `to_b` and `to_a` at once through a pair limited to `rate` B/s with `burst`, and
/// checks the combined time against the token arithmetic: never faster (the limit holds,
/// both directions share it), and not much slower.
async fn limited_exchange(kind: EngineKind, rate: u64, burst: u64, to_b: usize, to_a: usize) {
    let Some(engine) = engine(kind) else { return };
    let (ca, ra) = tcp_pair().await;
    let (cb, rb) = tcp_pair().await;
    let limiter = Arc::new(crate::RateLimiter::with_burst(rate, burst));
    engine.spawn(Pair {
        a: tcp_side(ra),
        b: tcp_side(rb),
        counters: None,
        limiter: Some(limiter),
    });
    let (d1, d2) = (pattern(to_b, 1), pattern(to_a, 2));
    let t = std::time::Instant::now();
    let (at_b, at_a) = exchange(ca, cb, &d1, &d2).await;
    let took = t.elapsed().as_secs_f64();
    assert!(at_b == d1 && at_a == d2, "data intact");
    let want = (to_b + to_a) as f64 - burst as f64;
    let want = want / rate as f64;
    assert!(
        took >= want * 0.9,
        "{kind}: {took:.3}s, the limit allows no less than {want:.3}s"
    );
    // Generous: a loaded 2-core machine can stall this process longer than the burst lasts.
    assert!(
        took <= want * 3.0 + 1.0,
        "{kind}: {took:.3}s, expected about {want:.3}s"
    );
}

async fn rate_limit_holds_for_both_directions_together(kind: EngineKind) {
    // 2.5 MiB total at 4 MiB/s after a 0.5 MiB burst: 0.5 s.
    limited_exchange(kind, 4 << 20, 512 << 10, 1536 << 10, 1 << 20).await;
}

async fn rate_limit_holds_at_a_small_rate(kind: EngineKind) {
    // 12 KiB at 20 KiB/s after a 2 KiB burst: reads are capped far below the 64 KiB buffer.
    limited_exchange(kind, 20 << 10, 2 << 10, 12 << 10, 0).await;
}

/// Bytes a message reader read ahead (a side's `prefix`) are charged to the limiter like
/// any read: frp reads its work connections without read-ahead, so every user byte passes its
/// limiter. With 1 B/s and a 1000-byte bucket, a 600-byte prefix leaves at most 400 tokens
/// (plus the few accrued since); uncharged, the whole bucket would still be there.
async fn prefix_takes_tokens(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (_ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    let limiter = Arc::new(crate::RateLimiter::with_burst(1, 1000));
    let mut a = tcp_side(ra);
    a.prefix = Bytes::from(pattern(600, 3));
    engine.spawn(Pair {
        a,
        b: tcp_side(rb),
        counters: None,
        limiter: Some(limiter.clone()),
    });
    let mut got = vec![0u8; 600];
    timeout(HANG_GUARD, cb.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, pattern(600, 3));
    let left = match limiter.acquire(1000) {
        crate::limit::Grant::Bytes(n) => n,
        crate::limit::Grant::Wait(_) => 0,
    };
    assert!(
        left <= 410,
        "{kind}: {left} tokens left after a 600-byte prefix"
    );
}

/// A prefix larger than the bucket waits for tokens and then arrives whole, in order, before
/// the bytes read after it.
async fn prefix_beyond_the_bucket_arrives_after_waiting(kind: EngineKind) {
    let Some(engine) = engine(kind) else { return };
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    let limiter = Arc::new(crate::RateLimiter::with_burst(20_000, 1000));
    let mut a = tcp_side(ra);
    a.prefix = Bytes::from(pattern(3000, 5));
    engine.spawn(Pair {
        a,
        b: tcp_side(rb),
        counters: None,
        limiter: Some(limiter),
    });
    ca.write_all(b"after").await.unwrap();
    let mut got = vec![0u8; 3005];
    timeout(HANG_GUARD, cb.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let mut want = pattern(3000, 5);
    want.extend_from_slice(b"after");
    assert!(got == want, "{kind}: prefix then data, intact");
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::EngineKind::Epoll).await
                }
            )*
        }
        mod io_uring {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::EngineKind::IoUring).await
                }
            )*
        }
        mod tokio_relay {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::EngineKind::Tokio).await
                }
            )*
        }
    };
}

suite!(
    bytes_both_ways_with_prefixes,
    conns_counts_live_pairs,
    half_close_keeps_the_reply_flowing,
    reset_from_one_side_closes_the_other,
    abandoned_download_through_two_pairs_closes_the_service,
    transform_error_closes_both_ends,
    transforms_run_on_the_copy_path,
    plain_pairs_splice,
    small_messages_are_copied_without_pipes,
    data_and_fin_arriving_together,
    pool_exhaustion_falls_back_to_copying,
    no_pool_means_no_pipes,
    hundred_pairs_of_one_mib_each_way,
    stalled_reader_blocks_the_writer,
    counters_count_plaintext_after_inbound,
    idle_pairs_hold_no_pipe,
    stream_sides_stay_on_tokio,
    initial_write_goes_first_even_if_nothing_is_relayed,
    rate_limit_holds_for_both_directions_together,
    rate_limit_holds_at_a_small_rate,
    prefix_takes_tokens,
    prefix_beyond_the_bucket_arrives_after_waiting,
);

// ----- engine choice ----------------------------------------------------------------------

fn errno(n: i32) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(n))
}

#[test]
fn auto_uses_io_uring_when_it_works() {
    let c = choose_engine(EngineKind::Auto, Some(0), || Ok(()));
    assert_eq!(c.kind, EngineKind::IoUring);
    let c = choose_engine(EngineKind::Auto, None, || Ok(()));
    assert_eq!(c.kind, EngineKind::IoUring, "no sysctl file (kernel < 6.6)");
}

#[test]
fn auto_falls_back_to_epoll_on_enosys_eperm_and_other_errors() {
    let c = choose_engine(EngineKind::Auto, None, || errno(libc::ENOSYS));
    assert_eq!(c.kind, EngineKind::Epoll);
    assert!(c.reason.contains("ENOSYS"), "{}", c.reason);
    let c = choose_engine(EngineKind::Auto, Some(0), || errno(libc::EPERM));
    assert_eq!(c.kind, EngineKind::Epoll);
    assert!(c.reason.contains("EPERM"), "{}", c.reason);
    let c = choose_engine(EngineKind::Auto, Some(0), || errno(libc::ENOMEM));
    assert_eq!(c.kind, EngineKind::Epoll);
}

#[test]
fn disabled_sysctl_wins_without_probing() {
    for n in [1, 2] {
        let c = choose_engine(EngineKind::Auto, Some(n), || {
            panic!("must not probe when io_uring is disabled")
        });
        assert_eq!(c.kind, EngineKind::Epoll);
        assert!(c.reason.contains("io_uring_disabled"), "{}", c.reason);
    }
}

#[test]
fn configured_kinds() {
    let never = || -> io::Result<()> { panic!("no probe for an explicit non-io_uring engine") };
    assert_eq!(
        choose_engine(EngineKind::Epoll, Some(0), never).kind,
        EngineKind::Epoll
    );
    assert_eq!(
        choose_engine(EngineKind::Tokio, Some(0), never).kind,
        EngineKind::Tokio
    );
    // io_uring asked for but forbidden: epoll, with the reason.
    let c = choose_engine(EngineKind::IoUring, Some(0), || errno(libc::EPERM));
    assert_eq!(c.kind, EngineKind::Epoll);
    let c = choose_engine(EngineKind::IoUring, Some(2), || Ok(()));
    assert_eq!(c.kind, EngineKind::Epoll);
    assert_eq!(
        choose_engine(EngineKind::IoUring, Some(0), || Ok(())).kind,
        EngineKind::IoUring
    );
}

#[test]
fn engine_kind_is_never_auto_and_clones_share_the_cores() {
    let engine = Engine::new(EngineConfig {
        threads: 1,
        ..EngineConfig::default()
    });
    assert_ne!(engine.kind(), EngineKind::Auto);
    let clone = engine.clone();
    assert_eq!(clone.kind(), engine.kind());
    assert!(Arc::ptr_eq(&engine.inner, &clone.inner));
}

#[test]
fn default_config_matches_the_docs() {
    let c = EngineConfig::default();
    assert_eq!(c.threads, 0);
    assert_eq!(c.engine, EngineKind::Auto);
    assert_eq!(c.pipe_pool_size, 64);
}
