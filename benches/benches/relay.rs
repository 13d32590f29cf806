//! Relay throughput over 127.0.0.1 sockets through `dataplane::Engine::spawn` (today: the
//! tokio relay), one direction, 4 MiB per iteration written in 64 KiB chunks. Same group, same
//! run: direct loopback (client → sink, no relay) is the baseline for
//! - `plain_1hop`: client → relay (TCP↔TCP) → sink;
//! - `plain_2hop`: two plain relays in a row (frps then frpc, as a tunnel has);
//! - `cfb_snappy_2hop`: the first relay compresses and encrypts (`useCompression` +
//!   `useEncryption` on the work connection), the second decrypts and decompresses; with random
//!   (incompressible) and log-like (compressible) payloads.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use frp_benches::{Hop, LoopbackPath, compressible_bytes, random_bytes};

const PER_ITER: usize = 4 * 1024 * 1024;

fn relay(c: &mut Criterion) {
    let random = random_bytes(64 * 1024, 5);
    let text = compressible_bytes(64 * 1024);
    let cases: [(&str, &[Hop], &[u8]); 6] = [
        ("direct", &[], &random),
        ("plain_1hop", &[Hop::Plain], &random),
        ("plain_2hop", &[Hop::Plain, Hop::Plain], &random),
        ("cfb_snappy_2hop", &[Hop::Encode, Hop::Decode], &random),
        ("cfb_snappy_2hop_text", &[Hop::Encode, Hop::Decode], &text),
        ("direct_text", &[], &text),
    ];
    let mut g = c.benchmark_group("relay_loopback");
    g.throughput(Throughput::Bytes(PER_ITER as u64));
    for (name, hops, chunk) in cases {
        let mut path = LoopbackPath::new(hops, None).expect("loopback path");
        g.bench_function(BenchmarkId::new(name, "4MiB"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    path.transfer(chunk, PER_ITER).expect("transfer");
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = relay
}
criterion_main!(benches);
