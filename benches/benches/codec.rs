//! frp's v1 message codec: `type(1) | len(i64 BE) | JSON body`. Messages per second for the
//! messages a busy tunnel sends most: NewProxy (registration), StartWorkConn (one per user
//! connection) and Ping (heartbeat).

use std::hint::black_box;
use std::time::Duration;

use control::msg::{V1Decoder, encode_v1, encode_v1_into};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use frp_benches::typical_messages;

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("v1_codec");
    g.throughput(Throughput::Elements(1));
    for (name, msg) in typical_messages() {
        let mut out = Vec::with_capacity(1024);
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                encode_v1_into(black_box(&msg), &mut out);
                black_box(out.len())
            })
        });
        let frame = encode_v1(&msg);
        let mut dec = V1Decoder::new();
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                dec.feed(black_box(&frame));
                black_box(
                    dec.next_message()
                        .expect("valid frame")
                        .expect("whole frame"),
                )
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = codec
}
criterion_main!(benches);
