//! tcpMux framing: two sans-IO yamux cores (`control::yamux::Connection`, client and server)
//! paired in memory. Each iteration writes 64 KiB on each stream of the client, hands the
//! client's transmit queue to the server, reads everything out of the server's streams and
//! feeds the server's window updates back: framing, parsing, window accounting and the
//! copies, with no sockets and no driver.

use std::hint::black_box;
use std::time::{Duration, Instant};

use control::yamux::{Config, Connection, Mode};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use frp_benches::random_bytes;

const WRITE: usize = 64 * 1024;

struct Pair {
    client: Connection,
    server: Connection,
    streams: Vec<(u32, u32)>,
    read_buf: Vec<u8>,
}

impl Pair {
    fn new(streams: usize) -> Pair {
        let cfg = Config::frp(0);
        let now = Instant::now();
        let mut p = Pair {
            client: Connection::new(&cfg, Mode::Client, now),
            server: Connection::new(&cfg, Mode::Server, now),
            streams: Vec::new(),
            read_buf: vec![0; WRITE],
        };
        let ids: Vec<u32> = (0..streams)
            .map(|_| p.client.open_stream().unwrap().unwrap())
            .collect();
        p.shuttle();
        for id in ids {
            let accepted = p.server.accept_stream().expect("stream accepted");
            p.streams.push((id, accepted));
        }
        p.shuttle();
        p
    }

    /// Moves queued frames both ways until both cores are quiet, reading (and dropping) all
    /// stream data on the server.
    fn shuttle(&mut self) -> usize {
        let mut read = 0;
        loop {
            let mut moved = false;
            while let Some(buf) = self.client.poll_transmit() {
                self.server.handle_input(&buf).unwrap();
                self.client.recycle_transmit(buf);
                moved = true;
            }
            for &(_, sid) in &self.streams {
                while let Some(n) = self.server.stream_read(sid, &mut self.read_buf).unwrap() {
                    if n == 0 {
                        break;
                    }
                    read += n;
                }
            }
            while let Some(buf) = self.server.poll_transmit() {
                self.client.handle_input(&buf).unwrap();
                self.server.recycle_transmit(buf);
                moved = true;
            }
            while self.client.poll_event().is_some() {}
            while self.server.poll_event().is_some() {}
            if !moved {
                return read;
            }
        }
    }

    /// Writes `data` on every stream and delivers it all.
    fn round(&mut self, data: &[u8]) -> usize {
        let mut read = 0;
        for i in 0..self.streams.len() {
            let cid = self.streams[i].0;
            let mut off = 0;
            while off < data.len() {
                let n = self.client.stream_write(cid, &data[off..]).unwrap();
                off += n;
                if n == 0 || off < data.len() {
                    read += self.shuttle();
                }
            }
        }
        read + self.shuttle()
    }
}

fn yamux(c: &mut Criterion) {
    let data = random_bytes(WRITE, 9);
    let mut g = c.benchmark_group("yamux_core");
    for streams in [1usize, 8] {
        g.throughput(Throughput::Bytes((WRITE * streams) as u64));
        let mut pair = Pair::new(streams);
        g.bench_function(
            BenchmarkId::new("64KiB_writes", format!("{streams}_streams")),
            |b| {
                b.iter(|| {
                    let read = pair.round(black_box(&data));
                    assert_eq!(read, WRITE * streams);
                    read
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = yamux
}
criterion_main!(benches);
