//! Relay tests over real 127.0.0.1 sockets (and in-memory duplex streams where a precise
//! buffer bound is wanted).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::*;

use crate::testutil::*;

#[tokio::test]
async fn bytes_both_ways_with_prefixes() {
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    let mut a = tcp_side(ra);
    a.prefix = Bytes::from_static(b"prefix-a|");
    let mut b = tcp_side(rb);
    b.prefix = Bytes::from_static(b"prefix-b|");
    let relay = tokio::spawn(relay(Pair {
        a,
        b,
        counters: None,
        limiter: None,
    }));

    ca.write_all(b"hello from a").await.unwrap();
    ca.shutdown().await.unwrap();
    cb.write_all(b"hello from b").await.unwrap();
    cb.shutdown().await.unwrap();
    assert_eq!(read_all(&mut cb).await, b"prefix-a|hello from a");
    assert_eq!(read_all(&mut ca).await, b"prefix-b|hello from b");

    let outcome = relay.await.unwrap();
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!((outcome.a_to_b, outcome.b_to_a), (21, 21));
}

#[tokio::test]
async fn half_close_keeps_the_reply_flowing() {
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    let relay = tokio::spawn(relay(tcp_pair_of(ra, rb)));

    // The client sends its whole request, then half-closes.
    let request = pattern(300_000, 1);
    ca.write_all(&request).await.unwrap();
    ca.shutdown().await.unwrap();

    // The server sees the full request and then EOF (the half-close propagated)...
    assert_eq!(read_all(&mut cb).await, request);
    // ...and only then answers, at length, through the still-open reverse direction.
    let reply = pattern(2 << 20, 2);
    let writer = tokio::spawn(async move {
        cb.write_all(&reply).await.unwrap();
        cb.shutdown().await.unwrap();
        cb
    });
    assert_eq!(read_all(&mut ca).await, pattern(2 << 20, 2));
    drop(writer.await.unwrap());

    let outcome = relay.await.unwrap();
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.first_ended, SideId::A);
    assert_eq!(outcome.a_to_b, 300_000);
    assert_eq!(outcome.b_to_a, 2 << 20);
}

#[tokio::test]
async fn transform_error_closes_both_ends() {
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    let mut a = tcp_side(ra);
    a.inbound.push(Box::new(Poison));
    let relay = tokio::spawn(relay(Pair {
        a,
        b: tcp_side(rb),
        counters: None,
        limiter: None,
    }));

    ca.write_all(b"fine").await.unwrap();
    let mut got = [0u8; 4];
    cb.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"fine");
    // Neither test end closes anything: only the relay can end these reads.
    ca.write_all(&[0xee, 1, 2, 3]).await.unwrap();
    assert_eq!(read_all(&mut cb).await, b"", "b closed without more data");
    assert_eq!(read_all(&mut ca).await, b"", "a closed too");

    let outcome = relay.await.unwrap();
    assert!(
        matches!(
            outcome.error,
            Some(RelayError::Transform {
                side: SideId::A,
                ..
            })
        ),
        "{:?}",
        outcome.error
    );
    assert_eq!(outcome.first_ended, SideId::A);
}

#[tokio::test]
async fn reset_from_one_side_closes_the_other() {
    let (ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    let relay = tokio::spawn(relay(tcp_pair_of(ra, rb)));
    // An abortive close (RST) of a is an error, not an EOF: b is closed, not half-closed.
    ca.set_zero_linger().unwrap();
    drop(ca);
    assert_eq!(read_all(&mut cb).await, b"");
    let outcome = timeout(HANG_GUARD, relay).await.expect("hang").unwrap();
    assert!(
        matches!(
            outcome.error,
            Some(RelayError::Read {
                side: SideId::A,
                ..
            })
        ),
        "{:?}",
        outcome.error
    );
    // b's own direction was torn down as well, so b is closed, not half-closed.
    // The first write after the close draws a RST; a later one fails.
    timeout(HANG_GUARD, async {
        while cb.write_all(&[0; 1024]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("b's socket is still open");
}

#[tokio::test]
async fn transforms_apply_in_chain_order_both_ways() {
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    let mut a = tcp_side(ra);
    a.prefix = Bytes::from_static(&[1, 2, 3]);
    a.inbound = vec![Box::new(Xor(0x5a)), Box::new(Add(1))];
    a.outbound = vec![Box::new(Xor(0x44))];
    let mut b = tcp_side(rb);
    b.inbound = vec![Box::new(Add(7)), Box::new(Xor(0x33))];
    b.outbound = vec![Box::new(Add(2))];
    let relay = tokio::spawn(relay(Pair {
        a,
        b,
        counters: None,
        limiter: None,
    }));

    let sent_a = pattern(100_000, 3);
    let sent_b = pattern(100_000, 4);
    let (wa, wb) = (sent_a.clone(), sent_b.clone());
    let (mut ca_r, mut ca_w) = ca.split();
    let (mut cb_r, mut cb_w) = cb.split();
    let (_, _, got_b, got_a) = tokio::join!(
        async {
            ca_w.write_all(&wa).await.unwrap();
            ca_w.shutdown().await.unwrap();
        },
        async {
            cb_w.write_all(&wb).await.unwrap();
            cb_w.shutdown().await.unwrap();
        },
        read_all(&mut cb_r),
        read_all(&mut ca_r),
    );
    let expect_b: Vec<u8> = [1, 2, 3]
        .iter()
        .chain(&sent_a)
        .map(|x| (x ^ 0x5a).wrapping_add(1).wrapping_add(2))
        .collect();
    let expect_a: Vec<u8> = sent_b
        .iter()
        .map(|y| (y.wrapping_add(7) ^ 0x33) ^ 0x44)
        .collect();
    assert_eq!(got_b, expect_b);
    assert_eq!(got_a, expect_a);
    assert!(relay.await.unwrap().error.is_none());
}

#[tokio::test]
async fn counters_count_plaintext_after_inbound() {
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    let mut a = tcp_side(ra);
    a.inbound.push(Box::new(KeepEven::default()));
    let mut b = tcp_side(rb);
    b.outbound.push(Box::new(Xor(0xff)));
    let counters = Arc::new(Counters::default());
    let relay = tokio::spawn(relay(Pair {
        a,
        b,
        counters: Some(counters.clone()),
        limiter: None,
    }));

    let sent = pattern(250_001, 5);
    ca.write_all(&sent).await.unwrap();
    ca.shutdown().await.unwrap();
    cb.write_all(b"ack").await.unwrap();
    cb.shutdown().await.unwrap();
    let got = read_all(&mut cb).await;
    assert_eq!(read_all(&mut ca).await, b"ack");
    let expect: Vec<u8> = sent.iter().step_by(2).map(|b| b ^ 0xff).collect();
    assert_eq!(got, expect);

    let outcome = relay.await.unwrap();
    assert_eq!(counters.a_to_b.load(Ordering::Relaxed), 125_001);
    assert_eq!(counters.b_to_a.load(Ordering::Relaxed), 3);
    assert_eq!((outcome.a_to_b, outcome.b_to_a), (125_001, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_pairs_of_one_mib_each_way() {
    const PAIRS: u64 = 100;
    const SIZE: usize = 1 << 20;
    let engine = Engine::new(EngineConfig::default());
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
            let (mut ca_r, mut ca_w) = ca.into_split();
            let (mut cb_r, mut cb_w) = cb.into_split();
            let (_, _, at_b, at_a) = tokio::join!(
                async {
                    ca_w.write_all(&pattern(SIZE, 2 * i)).await.unwrap();
                    ca_w.shutdown().await.unwrap();
                },
                async {
                    cb_w.write_all(&pattern(SIZE, 2 * i + 1)).await.unwrap();
                    cb_w.shutdown().await.unwrap();
                },
                read_all(&mut cb_r),
                read_all(&mut ca_r),
            );
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
}

#[tokio::test]
async fn tcp_and_stream_endpoints_mix() {
    let (mut client, relay_a) = tokio::io::duplex(8 * 1024);
    let (mut cb, rb) = tcp_pair().await;
    let relay = tokio::spawn(relay(Pair {
        a: stream_side(relay_a),
        b: tcp_side(rb),
        counters: None,
        limiter: None,
    }));
    let sent = pattern(500_000, 6);
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut cb_r, mut cb_w) = cb.split();
    let (_, _, at_b, at_client) = tokio::join!(
        async {
            client_w.write_all(&sent).await.unwrap();
            client_w.shutdown().await.unwrap();
        },
        async {
            cb_w.write_all(b"pong").await.unwrap();
            cb_w.shutdown().await.unwrap();
        },
        read_all(&mut cb_r),
        read_all(&mut client_r),
    );
    assert!(at_b == sent);
    assert_eq!(at_client, b"pong");
    client = client_r.unsplit(client_w);
    drop(client);
    assert!(relay.await.unwrap().error.is_none());
}

/// A consumer that stops reading must stall the producer, with at most one chunk held by the
/// relay. Duplex pipes make every buffer on the path exactly known.
#[tokio::test]
async fn stalled_reader_blocks_the_writer_with_bounded_buffering() {
    const PIPE: usize = 4096;
    let (mut producer, relay_a) = tokio::io::duplex(PIPE);
    let (relay_b, mut consumer) = tokio::io::duplex(PIPE);
    let relay = tokio::spawn(relay(Pair {
        a: stream_side(relay_a),
        b: stream_side(relay_b),
        counters: None,
        limiter: None,
    }));

    // Write until a write makes no progress; 64 MiB would go through if nothing pushed back.
    let chunk = pattern(16 * 1024, 7);
    let mut written = 0usize;
    let mut sent = Vec::new();
    let mut stalled = false;
    while written < 64 << 20 {
        match timeout(Duration::from_millis(300), producer.write(&chunk[..])).await {
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
        "the producer never blocked: the relay buffers without bound"
    );
    // Two pipes plus one in-flight read buffer of the relay.
    let bound = 2 * PIPE + BUSY_READ_PLAIN;
    assert!(written <= bound, "{written} bytes accepted, bound {bound}");

    // Nothing was lost or reordered while stalled.
    producer.shutdown().await.unwrap();
    let got = read_all(&mut consumer).await;
    assert_eq!(got.len(), written);
    assert!(got == sent, "bytes lost or reordered");
    drop(consumer);
    drop(producer);
    relay.await.unwrap();
}

/// The same over TCP with small socket buffers: the kernel's buffers are fuzzier, so the bound
/// is loose, but an unbounded relay would swallow everything.
#[tokio::test]
async fn stalled_tcp_reader_blocks_the_writer() {
    let (mut ca, ra) = tcp_pair().await;
    let (mut cb, rb) = tcp_pair().await;
    for s in [&ca, &ra, &rb, &cb] {
        let sock = socket2::SockRef::from(s);
        sock.set_send_buffer_size(32 * 1024).unwrap();
        sock.set_recv_buffer_size(32 * 1024).unwrap();
    }
    let relay = tokio::spawn(relay(tcp_pair_of(ra, rb)));

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
    assert!(
        written < 8 << 20,
        "{written} bytes accepted before blocking"
    );

    ca.shutdown().await.unwrap();
    let got = read_all(&mut cb).await;
    assert_eq!(got.len(), written);
    assert!(got == sent, "bytes lost or reordered");
    drop(cb);
    drop(ca);
    relay.await.unwrap();
}

/// An idle pair holds its relay future and nothing else (the large buffers exist only while
/// bytes flow), so the future's size is the idle cost per pair.
#[tokio::test]
async fn idle_pair_state_is_small() {
    let (_ca, ra) = tcp_pair().await;
    let (_cb, rb) = tcp_pair().await;
    let fut = relay(tcp_pair_of(ra, rb));
    // No read buffer inside (reads go to the thread's scratch buffer), no boxed futures: the
    // idle state of a pair is this one value.
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 512, "relay state is {size} bytes");
}

impl crate::AsyncWriteHalf for tokio::io::Sink {}

/// A `ChunkRead` that hands out its chunks as they are, then EOF.
struct Chunks(std::collections::VecDeque<Bytes>);

impl ChunkRead for Chunks {
    fn poll_read_chunk(
        &mut self,
        _cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<Chunk>> {
        std::task::Poll::Ready(Ok(match self.0.front_mut() {
            None => Chunk::Copied(0),
            Some(c) if c.len() > buf.len() => Chunk::Bytes(c.split_to(buf.len())),
            Some(_) => Chunk::Bytes(self.0.pop_front().unwrap()),
        }))
    }
}

/// Chunks handed out by a `ChunkRead` reach a slow writer whole and in order: what the writer
/// does not take at once waits as a slice of the chunk, and the next chunk is taken only after.
#[tokio::test]
async fn chunk_reader_to_a_slow_writer() {
    let chunks: Vec<Bytes> = (0..20u64)
        .map(|i| Bytes::from(pattern(10_000 + 7_000 * i as usize, i)))
        .collect();
    let sent: Vec<u8> = chunks.concat();
    let (relay_b, mut consumer) = tokio::io::duplex(1024);
    let relay = tokio::spawn(relay(Pair {
        a: Side::plain(Endpoint::Halves {
            read: Box::new(Chunks(chunks.into())),
            write: Box::new(tokio::io::sink()),
        }),
        b: stream_side(relay_b),
        counters: None,
        limiter: None,
    }));
    let got = read_all(&mut consumer).await;
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "bytes lost or reordered");
    drop(consumer);
    let outcome = relay.await.unwrap();
    assert_eq!(outcome.a_to_b, sent.len() as u64);
}

/// A `ChunkRead` that hands out one chunk, then EOF, and records whether it was aborted.
struct Aborts(Option<Bytes>, Arc<std::sync::atomic::AtomicBool>);

impl ChunkRead for Aborts {
    fn poll_read_chunk(
        &mut self,
        _cx: &mut std::task::Context<'_>,
        _buf: &mut [u8],
    ) -> std::task::Poll<io::Result<Chunk>> {
        std::task::Poll::Ready(Ok(match self.0.take() {
            Some(b) => Chunk::Bytes(b),
            None => Chunk::Copied(0),
        }))
    }

    fn abort(&mut self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A relay that fails aborts its `ChunkRead` endpoints (a yamux stream sends RST, so the far
/// end closes instead of reading a half-close); one that ends cleanly does not.
#[tokio::test]
async fn an_error_aborts_chunk_readers_and_a_clean_end_does_not() {
    for fail in [true, false] {
        let aborted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (mut user, relay_b) = tcp_pair().await;
        let relay = tokio::spawn(relay(Pair {
            a: Side::plain(Endpoint::Halves {
                read: Box::new(Aborts(Some(Bytes::from_static(b"hello")), aborted.clone())),
                write: Box::new(tokio::io::sink()),
            }),
            b: tcp_side(relay_b),
            counters: None,
            limiter: None,
        }));
        let mut got = Vec::new();
        user.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        if fail {
            // A zero-linger close resets the connection: the relay's read from it fails.
            user.set_zero_linger().unwrap();
        } else {
            user.shutdown().await.unwrap();
        }
        drop(user);
        let outcome = timeout(HANG_GUARD, relay).await.expect("hang").unwrap();
        assert_eq!(outcome.error.is_some(), fail, "{outcome:?}");
        assert_eq!(aborted.load(std::sync::atomic::Ordering::SeqCst), fail);
    }
}

/// A relay on tokio is a task cell of its own: up to 408 bytes it takes 512 (see [`Relay`]).
#[test]
fn a_relay_fits_a_512_byte_task_cell() {
    let size = std::mem::size_of::<Relay>();
    assert!(size <= 408, "Relay is {size} bytes");
}
