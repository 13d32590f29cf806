//! `control::crypto`: AES-128-CFB (`useEncryption`, the control channel) and snappy framing
//! (`useCompression`) on 16 KiB chunks (frp's copy size, the relay's transformed read size) and
//! 64 KiB chunks, with incompressible (random) and compressible (log-like text) input.

use std::hint::black_box;
use std::time::Duration;

use control::crypto::{CfbDecryptor, CfbEncryptor, CryptoKey, SnappyDecoder, SnappyEncoder};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::Transform;
use frp_benches::{compressible_bytes, random_bytes};

const SIZES: [(usize, &str); 2] = [(16 * 1024, "16KiB"), (64 * 1024, "64KiB")];

fn inputs(len: usize) -> [(&'static str, Vec<u8>); 2] {
    [
        ("random", random_bytes(len, 42)),
        ("text", compressible_bytes(len)),
    ]
}

fn cfb(c: &mut Criterion) {
    let key = CryptoKey::derive(b"bench-token");
    let mut g = c.benchmark_group("cfb");
    for (len, size) in SIZES {
        // CFB cost does not depend on the bytes; random input only.
        let data = random_bytes(len, 42);
        g.throughput(Throughput::Bytes(len as u64));
        let mut enc = CfbEncryptor::new(&key);
        let mut out = Vec::with_capacity(len + 64);
        enc.transform(b"x", &mut out).unwrap(); // emit the IV once
        g.bench_function(BenchmarkId::new("encrypt", size), |b| {
            b.iter(|| {
                out.clear();
                enc.transform(black_box(&data), &mut out).unwrap();
                black_box(out.len())
            })
        });
        let mut dec = CfbDecryptor::new(&key);
        dec.transform(&[7u8; 16], &mut out).unwrap(); // the IV
        g.bench_function(BenchmarkId::new("decrypt", size), |b| {
            b.iter(|| {
                out.clear();
                dec.transform(black_box(&data), &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn snappy(c: &mut Criterion) {
    let mut g = c.benchmark_group("snappy");
    for (len, size) in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        for (kind, data) in inputs(len) {
            let mut enc = SnappyEncoder::new();
            let mut out = Vec::with_capacity(len * 2);
            g.bench_function(BenchmarkId::new(format!("encode/{kind}"), size), |b| {
                b.iter(|| {
                    out.clear();
                    enc.transform(black_box(&data), &mut out).unwrap();
                    black_box(out.len())
                })
            });
            // A framed stream: the first output carries the stream identifier, later ones are
            // plain chunks that decode on their own.
            let mut enc = SnappyEncoder::new();
            let mut first = Vec::new();
            enc.transform(&data, &mut first).unwrap();
            let mut chunk = Vec::new();
            enc.transform(&data, &mut chunk).unwrap();
            let mut dec = SnappyDecoder::new();
            dec.transform(&first, &mut out).unwrap();
            g.bench_function(BenchmarkId::new(format!("decode/{kind}"), size), |b| {
                b.iter(|| {
                    out.clear();
                    dec.transform(black_box(&chunk), &mut out).unwrap();
                    black_box(out.len())
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = cfb, snappy
}
criterion_main!(benches);
